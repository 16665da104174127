"""The representation x objective matrix: every objective on every representation, at one budget per data set.

    OMP_NUM_THREADS=1 python results/matrix.py run mnist geom 0 1 2   # a lane: every objective on one representation
    python results/matrix.py commands mnist geom 0 1 2                # the same, as sweep.py commands
    OMP_NUM_THREADS=1 python results/matrix.py run cifar10 geom 0 --normal-class 0,1,2,3,4   # half the classes
    python results/matrix.py table                                    # what has finished: CSVs, table, heatmaps

A lane runs the seven sweeps of one representation (resumable: started again, a sweep skips its finished runs,
and the representation is trained once per class and seed, then read from the cache by every objective).
Budget (the hybrid runs' of results/README.md, section 7.1): the autoencoders 10 epochs (CIFAR-10: lr x0.1
after 8), transformation prediction with BatchNorm without a learned shift (MNIST: its defaults, the 72
transformations for 25 epochs; CIFAR-10: CIFAR10_GEOM below, with precise BN), one-class and soft-boundary Deep SVDD
10 epochs (R set after 2), OC-NN joint 50 (head lr x0.1 after 20), the shallow detectors on the codes at
their defaults.

`table` reads the run folders under runs/matrix-<dataset>/ and writes results/<dataset>-matrix-runs.csv (one
row per finished run), results/<dataset>-matrix.csv (per cell: the mean over the ten classes of the AUROC
averaged over seeds 0..m-1, per row the most seeds, up to SEEDS, that every cell of the row with seed 0
finished has; a cell without seed 0 finished shows its count of runs) and results/<dataset>-matrix.png.
"""
import csv
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402  (the repository's data.py, folders.py and sweep.py)
import folders  # noqa: E402
import sweep  # noqa: E402

REPRESENTATIONS = ["ae", "rcae", "geom"]
OBJECTIVES = {"own": [], "kde": ["--features", "codes"], "svdd": ["--svdd-epochs", "10"],
              "soft-svdd": ["--svdd-epochs", "10", "--svdd-warmup", "2"], "ocsvm": ["--features", "codes"],
              "iforest": ["--features", "codes"], "ocnn-joint": ["--ocnn-epochs", "50", "--ocnn-lr-drop", "20"]}
SEEDS = {"mnist": 3, "cifar10": 1}  # the matrix's seeds, at most: MNIST 0-2, CIFAR-10 0 (its seed 1: README 9.4)
SETS = {"rot": "(4 rotations)", "rot-flip": "(4 rotations x 2 flips)", "geom": "(GEOM's 72)"}
NAMES = {"own": "own score", "kde": "KDE on codes", "svdd": "one-class Deep SVDD", "soft-svdd": "soft-boundary Deep SVDD",
         "ocsvm": "OC-SVM on codes", "iforest": "IF on codes", "ocnn-joint": "OC-NN joint"}


# CIFAR-10's transformation prediction: the four rotations, trained longer with stronger weight decay and smaller
# batches (results/README.md 9.2; the 72 at these settings tie on AUROC for 18x the scoring's forward passes,
# 9.4), BatchNorm's statistics recomputed once trained (precise BN, 9.4). run.py's CIFAR-10 defaults since
# (settings.PORT, settings.GEOM); written out, with --no-bn-affine, so the matrix's commands stay what was measured.
CIFAR10_GEOM = ["--geom-transforms", "rot", "--geom-epochs", "60", "--geom-weight-decay", "5e-4", "--batch-size", "64",
                "--geom-precise-bn"]


def argv(dataset, rep, seeds, objective):
    """The sweep.py flags of one cell."""
    flags = ["--dataset", dataset, "--normal-class", "all", "--seeds", *map(str, seeds), "--pretrain", rep, "--quiet",
             "--out", os.path.join("runs", f"matrix-{dataset}"), "--objective", objective, *OBJECTIVES[objective]]
    if rep == "geom":                                                 # no learned shift: Deep SVDD's Prop. 2
        return flags + ["--no-bn-affine"] + (CIFAR10_GEOM if dataset == "cifar10" else [])
    return flags + ["--ae-epochs", "10"] + (["--ae-milestones", "8"] if dataset == "cifar10" else [])


def named(seeds):
    """[0] -> 'seed 0', [0, 1, 2] -> 'seeds 0-2'."""
    return f"seed{'s' if len(seeds) > 1 else ''} {seeds[0]}{f'-{seeds[-1]}' if len(seeds) > 1 else ''}" if seeds \
        else "running"


def runs(dataset, rep, objective, seeds=(0, 1, 2)):
    """{(class, seed): its metrics.json} of the finished runs of one cell."""
    cfg, classes, seeds, _ = sweep.parse(argv(dataset, rep, seeds, objective))
    try:
        data_id = folders.data_identity(dataset, cfg.data_root, download=False)
    except data.MissingData:                                          # no such data here: no runs either
        return {}
    out = {}
    for k in classes:
        for s in seeds:
            path = os.path.join(ROOT, sweep.run_folder(cfg, data_id, k, s), "metrics.json")
            if os.path.exists(path):
                with open(path) as f:
                    out[k, s] = json.load(f)
    return out


def hybrid(dataset, objective):
    """{class: AUROC %} of the hybrid runs (results/README.md, 7.1: this budget, the autoencoder only; MNIST the
    mean over seeds 0-2, CIFAR-10 seed 0; CIFAR-10's OC-NN joint from 4.1), or {} where there are none."""
    name = f"{dataset}-hybrid-{'ae' if objective == 'own' else objective}.csv"
    if (dataset, objective) == ("cifar10", "ocnn-joint"):            # section 4.1's run: the same settings, seed 0
        name = "cifar10-budget-ae-ocnn-joint-defaults.csv"
    path = os.path.join(ROOT, "results", name)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {int(r["normal_class"]): float(r["auroc_mean"]) for r in csv.DictReader(f)}


def table(dataset):
    """The matrix of one data set: CSVs and heatmap; returns {(rep, objective): mean AUROC or None}."""
    cells = {(r, o): runs(dataset, r, o) for r in REPRESENTATIONS for o in OBJECTIVES}
    if not any(cells.values()) and not hybrid(dataset, "own"):
        return {}
    finished = lambda c, m: all((k, s) in c for k in range(10) for s in range(m))   # seeds 0..m-1, every class
    seeds = {}                         # per row: the most seeds that every cell of the row with one seed done has
    for r in REPRESENTATIONS:
        done = [cells[r, o] for o in OBJECTIVES if finished(cells[r, o], 1)]
        seeds[r] = list(range(max((m for m in range(1, SEEDS[dataset] + 1) if all(finished(c, m) for c in done)),
                                  default=0) if done else 0))
    with open(os.path.join(ROOT, "results", f"{dataset}-matrix-runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "representation", "objective", "normal_class", "seed", "auroc",
                    "normal_test_flagged"])                           # % of the unseen normal images over the threshold
        w.writerows([dataset, r, o, k, s, f"{100 * m['auroc']:.2f}", f"{100 * m['normal_test_flagged']:.2f}"]
                    for (r, o), c in cells.items() for (k, s), m in sorted(c.items()))
    means, flagged, source = {}, {}, {}
    for (r, o), c in cells.items():
        runs_used = [(k, s) for k in range(10) for s in seeds[r]] if finished(c, 1) else []  # else: its progress
        per_class = [np.mean([100 * c[k, s]["auroc"] for s in seeds[r]]) for k in range(10)] if runs_used else []
        flagged[r, o] = np.mean([100 * c[run]["normal_test_flagged"] for run in runs_used]) if runs_used else None
        source[r, o] = f"runs, {named(seeds[r])}" if per_class else ""
        if not per_class and r == "ae" and len(hybrid(dataset, o)) == 10:
            per_class = list(hybrid(dataset, o).values())
            source[r, o] = "section 4.1's run (results/README.md)" if (dataset, o) == ("cifar10", "ocnn-joint") \
                else "the hybrid runs (results/README.md 7.1)"
        means[r, o] = float(np.mean(per_class)) if per_class else None
    with open(os.path.join(ROOT, "results", f"{dataset}-matrix.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "representation", "objective", "auroc_mean", "normal_test_flagged_mean", "from",
                    "runs_finished_here"])
        w.writerows([dataset, r, o, "" if m is None else f"{m:.2f}",
                     "" if flagged[r, o] is None else f"{flagged[r, o]:.2f}", source[r, o], len(cells[r, o])]
                    for (r, o), m in means.items())
    plot(dataset, means, cells, seeds, source)
    return means


def plot(dataset, means, cells, seeds, source):
    """A heatmap of the mean AUROC: rows = representation (labelled with their seeds), columns = objective; a
    cell not finished shows how many of its runs are."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = np.array([[np.nan if means[r, o] is None else means[r, o] for o in OBJECTIVES] for r in REPRESENTATIONS])
    fig, ax = plt.subplots(figsize=(10, 3.2))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, r in enumerate(REPRESENTATIONS):
        for j, o in enumerate(OBJECTIVES):
            text = f"{grid[i, j]:.2f}" if not np.isnan(grid[i, j]) else f"{len(cells[r, o])} runs\nso far"
            dark = not np.isnan(grid[i, j]) and grid[i, j] < np.nanmean(grid)
            ax.text(j, i, text, ha="center", va="center", color="w" if dark else "k", fontsize=9)
    ax.set_xticks(range(len(OBJECTIVES)), [NAMES[o] for o in OBJECTIVES], rotation=20, ha="right")
    hybrid = any("hybrid" in source["ae", o] for o in OBJECTIVES)
    ae_label = f"AE (7.1's runs,\n{'seeds 0-2' if dataset == 'mnist' else 'seed 0'})" if hybrid else \
        f"AE ({named(seeds['ae'])})"
    geom = sweep.parse(argv(dataset, "geom", [0], "own"))[0]
    geom_label = "transformation prediction\n" + SETS[geom.geom_transforms] + \
        (", precise BN" if geom.geom_precise_bn else "") + f", {named(seeds['geom'])}"
    ax.set_yticks(range(len(REPRESENTATIONS)), [ae_label, f"RCAE ({named(seeds['rcae'])})", geom_label])
    ocnn = " (AE's OC-NN joint: 4.1's run)" if "4.1" in source["ae", "ocnn-joint"] else ""
    ax.set_title(f"{dataset}: mean AUROC % over the ten classes, each row over the seeds it names{ocnn}", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "results", f"{dataset}-matrix.png"), dpi=110)
    plt.close(fig)


def main(args):
    if args[:1] == ["table"]:
        for dataset in ("mnist", "cifar10"):
            means = table(dataset)
            for r in REPRESENTATIONS:
                print(dataset, r, " ".join(f"{o} {'-' if means.get((r, o)) is None else f'{means[r, o]:.2f}'}"
                                           for o in OBJECTIVES) if means else "nothing finished")
        return
    what, dataset, rep, *seeds = args
    classes = seeds[seeds.index("--normal-class") + 1] if "--normal-class" in seeds else "all"
    seeds = seeds[:seeds.index("--normal-class")] if "--normal-class" in seeds else seeds
    for objective in OBJECTIVES:
        flags = argv(dataset, rep, seeds, objective)
        flags[flags.index("--normal-class") + 1] = classes
        if what == "commands":
            print("python sweep.py " + " ".join(flags))
        else:
            sweep.main(flags)


if __name__ == "__main__":
    main(sys.argv[1:])
