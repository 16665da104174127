"""Many experiments: run.py's one experiment for every (normal class, seed), then a summary.

    python sweep.py --objective svdd --normal-class all --seeds 0 1 2 3 4 --jobs 2
    python sweep.py --dataset cifar10 --objective own --normal-class 0,6,7 --ae-epochs 10 --ae-milestones 8

--normal-class (one class, a list such as 0,2,5, or all), --seeds and --jobs are this file's; every other
flag is run.py's and goes to its Config as it is. The runs go to fixed folders,

    <out>/sweep-<dataset>-<method>-<key>/class<k>-seed<s>-<method>/     (each one a run.py run folder)

where <key> hashes the settings the method uses and the data (settings.used_settings, folders.data_identity), so
the same command with more classes or seeds fills the same folder. Started again, a sweep skips the runs
that finished and resumes the interrupted ones; two sweeps on one folder share its runs (each skips the
ones the other holds or has finished). When every run is done it writes summary.csv and
summary.md: AUROC mean +- std over the seeds per class, and the mean over classes.

--jobs N runs the pending runs in N processes, the CPU threads split between them, each run's console in
its folder's console.log. A worker ends when its parent dies (even by kill -9); Ctrl-C stops them all.
"""
import argparse
import contextlib
import csv
import dataclasses
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import torch

import data
import folders
import run
import settings
import training
from settings import UserError


def classes_of(dataset, root, given):
    """The class indices of --normal-class: a folder's class by its exact name (even 'all' or 'a,b'); 'all' ->
    every class of the data set; else a list such as 0,2,5 or 1+7,4+9, each one as settings.class_of reads it."""
    try:
        if dataset == "folder" and given in data.folder_classes(root):
            return [data.class_index(root, given)]
        if given == "all":
            return list(range(len(data.folder_classes(root)) if dataset == "folder" else 10))
        return [settings.class_of(dataset, root, text) for text in given.split(",")]
    except data.DataError as e:
        raise UserError(str(e)) from None


def make_parser():
    """run.py's flags, with one class and one seed replaced by lists, and --jobs."""
    parser = settings.make_parser(prog="sweep.py", skip=("normal_class", "seed"))
    parser.description = "Many experiments of run.py: classes x seeds, resumable, with a summary."
    group = parser.add_argument_group("sweep")
    group.add_argument("--normal-class", default="0",
                       help="the normal classes: one, a list such as 0,2,5, or all; a normal class made of several "
                            "joins them by + (1+7,4+9) (default: 0)")
    group.add_argument("--seeds", type=int, nargs="+", default=[0], help="one or more seeds (default: 0)")
    group.add_argument("--seed", type=int, help=argparse.SUPPRESS)   # run.py's; refused here with a reason
    group.add_argument("--jobs", type=int, default=1,
                       help="the pending runs in this many processes, the CPU threads split between them")
    return parser


def parse(argv=None):
    """sweep.py's flags -> (a checked Config of the first run, classes, seeds, jobs); UserError if bad."""
    args = vars(make_parser().parse_args(argv))
    given_classes, seeds, jobs = args.pop("normal_class"), args.pop("seeds"), args.pop("jobs")
    default = settings.Config()                                       # run.py's defaults, where a flag is absent
    classes = classes_of(args["dataset"] or default.dataset, args["data_root"] or default.data_root, given_classes)
    if args.pop("seed") is not None:
        raise UserError("sweep.py takes its seeds as --seeds (one or more); --seed is run.py's.")
    for flag, values in (("--normal-class", classes), ("--seeds", seeds)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise UserError(f"{flag} names {', '.join(map(str, twice))} more than once; name each once.")
    bad = [s for s in seeds if not 0 <= s < 2 ** 32]
    if bad or jobs < 1:
        raise UserError(f"--seeds must be integers in [0, 2^32), got {bad[0]}." if bad else
                            f"--jobs must be an integer >= 1, got {jobs}.")
    given = {k: v for k, v in args.items() if v is not None}
    return settings.make_config({**given, "normal_class": classes[0], "seed": seeds[0]}), classes, seeds, jobs


def sweep_folder(cfg, data_id):
    """<out>/sweep-<dataset>-<method>-<key>: the key covers the settings the method uses but the class and the
    seed, and the data, so the same command with more classes or seeds fills the same folder."""
    used = {k: v for k, v in settings.used_settings(cfg).items() if k not in ("normal_class", "seed")}
    return os.path.join(cfg.out, f"sweep-{cfg.dataset}-{settings.method_name(cfg)}-{folders.key_of(used, data_id)}")


def run_folder(cfg, data_id, k, s):
    """The folder of class k, seed s inside the sweep folder (a folder's class: class<k>-<name>)."""
    tag = settings.class_tag(k, settings.class_name(dataclasses.replace(cfg, normal_class=k)))
    return os.path.join(sweep_folder(cfg, data_id), f"class{tag}-seed{s}-{settings.method_name(cfg)}")


def sweep(cfg, classes, seeds, jobs, device, data_id):
    """Every (class, seed) pair into its folder, then the summary. Returns the metrics in class, seed order
    (None for a run that another process holds)."""
    pairs = [(k, s) for k in classes for s in seeds]
    tasks, rows = {}, {}
    for k, s in pairs:
        folder = run_folder(cfg, data_id, k, s)
        done = folders.finished_metrics(folder)
        if done is not None:
            print(f"skipping {folder}: finished before")
            rows[k, s] = done
        else:
            tasks[k, s] = (dataclasses.replace(cfg, normal_class=k, seed=s), folder, str(device), data_id)
    if jobs == 1:
        for (k, s), task in tasks.items():
            training.banner(f"sweep run: class {settings.class_tag(k, None)}, seed {s}")
            rows[k, s] = run_here(*task)
    elif tasks:
        jobs = min(jobs, len(tasks))
        threads = max(1, torch.get_num_threads() // jobs)
        print(f"{len(tasks)} runs in {jobs} processes of {threads} thread(s) each", flush=True)
        context = multiprocessing.get_context("spawn")         # a fresh interpreter per process
        with context.Pool(jobs, initializer=worker_start, initargs=(threads, os.getpid())) as pool:
            for (k, s), metrics in pool.imap_unordered(run_logged, tasks.items()):
                rows[k, s] = metrics                                  # an error in a worker is raised here
                if metrics is not None:
                    print(f"class {k}, seed {s}: AUROC {100 * metrics['auroc']:.2f} ({metrics['seconds']:.0f}s)",
                          flush=True)
    busy = [p for p in pairs if rows[p] is None]
    if busy:
        print(f"summary not written: {len(busy)} run(s) are in use by another process (e.g. class {busy[0][0]}, "
              f"seed {busy[0][1]}); run the same command again when they are done")
    else:
        write_summary(sweep_folder(cfg, data_id), [rows[p] for p in pairs], cfg)
    return [rows[p] for p in pairs]


def run_here(cfg, folder, device, data_id):
    """run.run_experiment in this process; None if another process trains in that folder."""
    try:
        return run.run_experiment(cfg, folder, torch.device(device), data_id)
    except folders.Busy:
        print(f"skipping {folder}: another process is training in it")
        return None


def run_logged(item):
    """run_here in a worker process, its console output into <run folder>/console.log."""
    pair, (cfg, folder, device, data_id) = item
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "console.log"), "a") as log, contextlib.redirect_stdout(log):
        return pair, run_here(cfg, folder, device, data_id)


def worker_start(threads, parent):
    """A worker's start: its share of the threads, Ctrl-C left to the parent, and an end when the parent ends."""
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)                      # the parent stops the pool on Ctrl-C
    threading.Thread(target=exit_with, args=(parent,), daemon=True).start()


def exit_with(parent):
    """Exit this process once its parent is gone (it then has another parent): nothing runs on unwatched."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)                                                       # the run's checkpoints stay for a resume


def stage_epochs(cfg):
    """e.g. 'ae 150 / svdd 150', 'ae 10', 'none (pixels)': the epochs of both stages, as the tables report them."""
    epochs = cfg.geom_epochs if cfg.pretrain == "geom" else cfg.ae_epochs
    first = f"{cfg.pretrain} {epochs}" if settings.has_stage1(cfg) else "none (pixels)"
    second = {"svdd": f" / svdd {cfg.svdd_epochs}", "soft-svdd": f" / svdd {cfg.svdd_epochs}",
              "ocnn": f" / ocnn {cfg.ocnn_epochs}", "ocnn-joint": f" / ocnn {cfg.ocnn_epochs}"}.get(cfg.objective, "")
    return first + second


def write_summary(folder, rows, cfg):
    """summary.csv (one row per class) and summary.md: AUROC mean +- std over seeds, mean over classes.

    std is the population standard deviation over the seeds (numpy's default). normal_test_flagged_mean: the
    mean % of the normal test images the decision flags (empty where a run predates it). seconds is the mean wall
    time of a run over every process that worked on it; a run whose representation came from the cache did
    not pay for training it.
    """
    by_class = {}
    for m in rows:
        by_class.setdefault(data.normal_classes(m["normal_class"]), []).append(m)
    table = []
    for k, ms in sorted(by_class.items()):
        a = 100 * np.array([m["auroc"] for m in ms])
        flagged = [m.get("normal_test_flagged") for m in ms]
        table.append({"dataset": cfg.dataset, "normal_class": settings.class_tag(k, None), "normal_class_name": ms[0].get("normal_class_name"),
                      "method": settings.method_name(cfg),
                      "auroc_mean": round(a.mean(), 2), "auroc_std": round(a.std(), 2),
                      "normal_test_flagged_mean": "" if None in flagged else round(100 * np.mean(flagged), 2),
                      "n_seeds": len(ms),
                      "seeds": " ".join(str(m["seed"]) for m in ms), "epochs": stage_epochs(cfg),
                      "pollution_rate": cfg.pollution_rate, "device": ms[0]["device"],
                      "seconds_mean": round(np.mean([m["seconds"] for m in ms]), 1)})
    lines = [f"{cfg.dataset}, {settings.method_name(cfg)}, epochs {stage_epochs(cfg)}", "",
             "| normal class | AUROC % (mean +- std) | seeds |", "|---|---|---|"]
    lines += [f"| {settings.class_tag(t['normal_class'], t['normal_class_name'])} | {t['auroc_mean']:.2f} +- "
              f"{t['auroc_std']:.2f} | {t['n_seeds']} |"
              for t in table]
    lines.append(f"| mean | {np.mean([t['auroc_mean'] for t in table]):.2f} | |")
    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)

    def write_md(tmp):
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
    folders.write_whole(os.path.join(folder, "summary.csv"), write_csv)
    folders.write_whole(os.path.join(folder, "summary.md"), write_md)
    print("\n" + "\n".join(lines) + f"\nsummary written to {folder}")


def main(argv=None):
    """Parse the flags, then run every (class, seed) pair not finished yet. Returns the list of metrics."""
    def body():
        cfg, classes, seeds, jobs = parse(argv)
        settings.check_folders(cfg)
        device = settings.pick_device(cfg.device)
        return sweep(cfg, classes, seeds, jobs, device, folders.data_identity(cfg.dataset, cfg.data_root))
    return settings.cli(body)


if __name__ == "__main__":
    main()
