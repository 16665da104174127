"""One command from data to plots: pretrain -> one-class objective -> scores -> metrics and a run folder.

    python run.py --objective svdd                       # MNIST, normal class 0, Deep SVDD (one-class)
    python run.py --objective ocnn --joint --pretrain rcae --pollution-rate 0.05
    python run.py --objective svdd --normal-class all --seeds 0 1 2      # a resumable sweep + summary

Every default lives in `Config` below; the flags are made from its fields. Fields left at None take the
reference value of the chosen dataset (Deep-SVDD-PyTorch README, the OC-NN paper; `DATASET_DEFAULTS`). This is the only
file that knows every other one: data.py -> ae.py | rcae.py -> svdd.py | ocnn.py -> evaluate.py.

Run folder: <out>/<time>-<dataset>-<class>-<pretrain>-<objective>/ with config.json, history.json,
scores.csv (test index, label, score), model.pt, plots/ and, written last and atomically, metrics.json:
a folder without metrics.json is an unfinished run. A sweep (--normal-class all or 0,2,5, and/or --seeds ...)
writes its runs into <out>/sweep-<dataset>-<pretrain>-<objective>-<hash of the settings>/ under fixed
names, skips those that finished when started again, and writes summary.csv and summary.md.
Pretrained autoencoders are cached in <out>/ae-cache/, keyed on the data, the pretraining settings and
the seed, so a comparison of objectives pretrains once.
"""
import argparse
import csv
import dataclasses
import datetime
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

import ae
import data
import evaluate
import ocnn
import rcae
import svdd

OBJECTIVES = ("svdd", "soft-svdd", "ocnn", "ae")

# Reference settings that differ between the datasets (Deep-SVDD-PyTorch README; the OC-NN seed lab).
DATASET_DEFAULTS = {
    "mnist": dict(rep_dim=32, ae_epochs=150, ae_milestones=[50], ae_weight_decay=0.5e-3, ocnn_nu=0.01),
    "cifar10": dict(rep_dim=128, ae_epochs=350, ae_milestones=[250], ae_weight_decay=0.5e-6, ocnn_nu=0.1),
}


def opt(default, help, factory=False):
    """A Config field with its --help text (factory: default is a function that makes it, for lists)."""
    if factory:
        return dataclasses.field(default_factory=default, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class Config:
    # what to run
    dataset: str = opt("mnist", "mnist | cifar10")
    normal_class: str = opt("0", "0..9, 'all' (a sweep over the ten classes) or a list such as 0,2,5")
    pretrain: str = opt("ae", "ae | rcae: the representation (stage 1)")
    objective: str = opt("svdd", "svdd (one-class) | soft-svdd | ocnn | ae (DCAE: reconstruction error)")
    nu: float = opt(None, "soft-svdd / ocnn: None = 0.1 for SVDD, 0.01 MNIST / 0.1 CIFAR for OC-NN")
    pollution_rate: float = opt(0.0, "fraction of anomalies mixed into the training set")
    seed: int = opt(0, "seeds torch, numpy, the batch order and the pollution draw")
    seeds: list = opt(None, "several seeds: a sweep, e.g. --seeds 0 1 2")
    rep_dim: int = opt(None, "None = 32 MNIST / 128 CIFAR-10")
    batch_size: int = opt(200, "mini-batch size of every stage")
    # stage 1: autoencoder pretraining (DCAE), and RCAE's sparse part
    ae_epochs: int = opt(None, "None = 150 MNIST / 350 CIFAR-10")
    ae_lr: float = opt(1e-4, "Adam learning rate of the autoencoder")
    ae_milestones: list = opt(None, "lr x0.1 after these epochs; None = [50] / [250]")
    ae_weight_decay: float = opt(None, "None = 0.5e-3 MNIST / 0.5e-6 CIFAR-10")
    rcae_lambda: float = opt(0.1, "l1 weight of N; threshold lambda/2")
    rcae_iters: int = opt(5, "outer iterations T; each runs ae_epochs / T epochs")
    ae_init: str = opt("default", "default (PyTorch's random init) | dict: the first convolution's filters "
                                  "from a dictionary of image patches (the Theano code's --weight_dict_init) | "
                                  "theano: Glorot-uniform weights (ae.glorot_init), then dict")
    bn_affine: bool = opt(False, "BatchNorm with a learned scale and shift, as the paper's Theano code (a "
                                 "shift is a bias, which Deep SVDD's Prop. 2 excludes; the PyTorch port has none)")
    # stage 2a: Deep SVDD
    svdd_epochs: int = opt(150, "Deep SVDD epochs")
    svdd_lr: float = opt(1e-4, "Deep SVDD Adam learning rate")
    svdd_milestones: list = opt(lambda: [50], "Deep SVDD lr x0.1 after these epochs", factory=True)
    svdd_weight_decay: float = opt(0.5e-6, "Deep SVDD weight decay (lambda/2 of eq. 3-4)")
    svdd_warmup: int = opt(10, "soft-svdd: epochs with R = 0 before R is set")
    # stage 2b: OC-NN
    ocnn_epochs: int = opt(250, "OC-NN epochs")
    ocnn_lr: float = opt(1e-4, "OC-NN head learning rate")
    ocnn_lr_drop: int = opt(100, "head lr x0.1 after this epoch")
    ocnn_hidden: int = opt(32, "OC-NN hidden units (rows of V)")
    ocnn_activation: str = opt("linear", "linear | sigmoid | relu | tanh")
    joint: bool = opt(False, "OC-NN: train the encoder too (else z-only: encoder frozen)")
    encoder_lr: float = opt(1e-5, "OC-NN joint: the encoder's learning rate")
    encoder_weight_decay: float = opt(1e-5, "OC-NN joint: the encoder's weight decay")
    # plumbing
    device: str = opt("auto", "auto | cpu | cuda")
    data_root: str = opt("data", "where the data sets are read, and downloaded when missing")
    out: str = opt("runs", "where run folders, sweeps and the autoencoder cache go")
    quiet: bool = opt(False, "no per-epoch lines")


CHOICES = {"dataset": ("mnist", "cifar10"), "pretrain": ("ae", "rcae"), "objective": OBJECTIVES,
           "device": ("auto", "cpu", "cuda"), "ae_init": ("default", "dict", "theano"),
           "ocnn_activation": tuple(ocnn.ACTIVATIONS)}
TYPES = {"nu": float, "rep_dim": int, "ae_epochs": int, "ae_weight_decay": float,
         "seeds": int, "ae_milestones": int, "svdd_milestones": int, "normal_class": str}


class UserError(Exception):
    """A problem the user can fix: printed as one sentence, exit status 2."""


def make_parser():
    """argparse flags generated from Config's fields: ae_lr -> --ae-lr, bool -> a switch, list -> nargs."""
    parser = argparse.ArgumentParser(description="Deep one-class anomaly detection: Deep SVDD and OC-NN.")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif f.type is list:
            parser.add_argument(flag, type=TYPES[f.name], nargs="*", default=None, help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=TYPES.get(f.name, f.type), choices=CHOICES.get(f.name),
                                default=None, help=f"{f.metadata['help']} (default: {f.default})")
    return parser


def resolve(cfg):
    """Fill the dataset's reference values into fields left at None and check every value."""
    d = DATASET_DEFAULTS[cfg.dataset]
    for key in ("rep_dim", "ae_epochs", "ae_milestones", "ae_weight_decay"):
        if getattr(cfg, key) is None:
            setattr(cfg, key, d[key])
    if cfg.nu is None:
        cfg.nu = d["ocnn_nu"] if cfg.objective == "ocnn" else 0.1
    if not 0 < cfg.nu <= 1:
        raise UserError(f"--nu must lie in (0, 1], got {cfg.nu}.")
    if not 0 <= cfg.pollution_rate < 1:
        raise UserError(f"--pollution-rate must lie in [0, 1), got {cfg.pollution_rate}.")
    parts = cfg.normal_class.split(",")
    if cfg.normal_class != "all" and not all(p.isdigit() and 0 <= int(p) <= 9 for p in parts):
        raise UserError(f"--normal-class must be 0..9, 'all' or a list such as 0,2,5, got {cfg.normal_class!r}.")
    for key in ("batch_size", "ae_epochs", "svdd_epochs", "ocnn_epochs", "rcae_iters", "rep_dim"):
        if getattr(cfg, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(cfg, key)}.")
    if cfg.rep_dim % 16:
        raise UserError(f"--rep-dim must be a multiple of 16 (the decoder views z as rep_dim/16 x 4 x 4).")
    if cfg.pretrain == "rcae" and cfg.ae_epochs % cfg.rcae_iters:
        raise UserError(f"--ae-epochs ({cfg.ae_epochs}) must be a multiple of --rcae-iters ({cfg.rcae_iters}).")
    if cfg.rcae_lambda < 0:
        raise UserError(f"--rcae-lambda must be >= 0, got {cfg.rcae_lambda}.")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch finds no CUDA device; use --device cpu.")
    return cfg


def pick_device(choice):
    if choice != "auto":
        return torch.device(choice)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device} (auto: {'a CUDA device was found' if device.type == 'cuda' else 'no CUDA device'})")
    return device


def banner(text):
    print(f"\n=== {text} ===", flush=True)


# Fields added after sweeps had been run: hashed only when they differ from these values, so the folders
# and cached autoencoders made before they existed keep their names.
HASHED_WHEN_SET = {"ae_init": "default", "bn_affine": False}


def settings_key(cfg, fields):
    """A short hash of the named config fields: equal settings -> equal key."""
    blob = json.dumps({k: getattr(cfg, k) for k in fields
                       if k not in HASHED_WHEN_SET or getattr(cfg, k) != HASHED_WHEN_SET[k]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


PRETRAIN_FIELDS = ("dataset", "pollution_rate", "seed", "rep_dim", "batch_size", "pretrain", "ae_epochs",
                   "ae_lr", "ae_milestones", "ae_weight_decay", "rcae_lambda", "rcae_iters", "ae_init",
                   "bn_affine")


def pretrain(cfg, d, device):
    """Stage 1: the autoencoder (or RCAE), from the cache when the same data, settings and seed came before.

    Returns (autoencoder, history, extra) where extra holds RCAE's per-image ||N_i||_1 figures.
    """
    fields = [f for f in PRETRAIN_FIELDS if cfg.pretrain == "rcae" or not f.startswith("rcae_")]
    key = settings_key(cfg, fields) + f"-class{d.normal_class}"
    path = os.path.join(cfg.out, "ae-cache", f"{cfg.dataset}-{cfg.pretrain}-{key}.pt")
    seed_all(cfg.seed)                                                # weight init depends on the seed only
    model = ae.build_autoencoder(cfg.dataset, cfg.rep_dim, cfg.bn_affine).to(device)
    banner(f"stage 1: pretraining ({cfg.pretrain}) on {len(d.x_train)} training images")
    if os.path.exists(path):
        saved = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(saved["ae"])
        print(f"reusing the pretrained autoencoder {path}")
        return model, saved["history"], saved["extra"]
    if cfg.ae_init == "theano":
        ae.glorot_init(model)
    if cfg.ae_init in ("dict", "theano"):                             # before any training, RCAE's too
        with torch.no_grad():
            conv1 = model.encoder.conv1
            conv1.weight.copy_(ae.dictionary_filters(d.x_train, conv1.out_channels, conv1.kernel_size[0],
                                                     seed=cfg.seed))
    kw = dict(lr=cfg.ae_lr, weight_decay=cfg.ae_weight_decay, milestones=cfg.ae_milestones,
              batch_size=cfg.batch_size, seed=cfg.seed, verbose=not cfg.quiet)
    extra = {}
    if cfg.pretrain == "ae":
        history = ae.train_autoencoder(model, d.x_train, epochs=cfg.ae_epochs, **kw)
    else:
        _, N, history = rcae.train_rcae(model, d.x_train, lam=cfg.rcae_lambda, outer_iters=cfg.rcae_iters,
                                        epochs_per_iter=cfg.ae_epochs // cfg.rcae_iters, **kw)
        mass = rcae.n_mass_per_image(N).cpu()                         # (n,) ||N_i||_1
        extra["N_l1_per_image_normal"] = mass[~d.polluted.cpu()].mean().item()
        if d.polluted.any():
            extra["N_l1_per_image_polluted"] = mass[d.polluted.cpu()].mean().item()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"ae": to_cpu(model.state_dict()), "history": history,
                "extra": extra}, path + ".tmp")
    os.replace(path + ".tmp", path)                                   # whole files only
    return model, history, extra


def one_class(cfg, d, model):
    """Stage 2: the objective on the pretrained encoder. Returns (test scores, history, state to save)."""
    seed_all(cfg.seed)                                                # same start with or without the cache
    kw = dict(batch_size=cfg.batch_size, seed=cfg.seed, verbose=not cfg.quiet)
    if cfg.objective == "ae":
        banner("stage 2: none (DCAE baseline: the score is the reconstruction error)")
        return ae.reconstruction_scores(model, d.x_test), [], {}
    phi = ae.encoder_copy(model)                                      # the AE itself stays untouched
    if cfg.objective in ("svdd", "soft-svdd"):
        objective = "one-class" if cfg.objective == "svdd" else "soft-boundary"
        banner(f"stage 2: Deep SVDD ({objective}, nu={cfg.nu})")
        c, R, history = svdd.train_svdd(phi, d.x_train, objective=objective, nu=cfg.nu, epochs=cfg.svdd_epochs,
                                        lr=cfg.svdd_lr, weight_decay=cfg.svdd_weight_decay,
                                        milestones=cfg.svdd_milestones, warmup=cfg.svdd_warmup, **kw)
        return svdd.svdd_scores(phi, c, d.x_test, R), history, {"phi": phi.state_dict(), "c": c, "R": R}
    banner(f"stage 2: OC-NN ({'joint' if cfg.joint else 'z-only'}, nu={cfg.nu})")
    head, r, history = ocnn.train_ocnn(phi, d.x_train, joint=cfg.joint, nu=cfg.nu, epochs=cfg.ocnn_epochs,
                                       lr=cfg.ocnn_lr, lr_drop_epoch=cfg.ocnn_lr_drop, encoder_lr=cfg.encoder_lr,
                                       encoder_weight_decay=cfg.encoder_weight_decay, hidden=cfg.ocnn_hidden,
                                       activation=cfg.ocnn_activation, **kw)
    return ocnn.ocnn_scores(phi, head, r, d.x_test), history, {"phi": phi.state_dict(),
                                                               "head": head.state_dict(), "r": r}


def to_cpu(v):
    """A tensor, or a dict of them (a state dict), moved to the CPU for saving; anything else as it is."""
    if isinstance(v, dict):
        return {k: to_cpu(t) for k, t in v.items()}
    return v.cpu() if torch.is_tensor(v) else v


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


def write_json(path, obj):
    """Write JSON to a temporary name, then rename: the file is whole or absent."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def run_one(cfg, run_dir, device):
    """One experiment (one normal class, one seed) into run_dir. Returns the metrics dict."""
    start = time.perf_counter()
    seed_all(cfg.seed)
    d = load_split(cfg, int(cfg.normal_class), device)
    os.makedirs(os.path.join(run_dir, "plots"), exist_ok=True)
    write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(cfg))
    model, pre_history, extra = pretrain(cfg, d, device)
    scores, history, state = one_class(cfg, d, model)

    labels, scores = d.y_test.cpu().numpy(), scores.cpu().numpy()
    stages = {f"pretrain ({cfg.pretrain})": pre_history, cfg.objective: history}
    write_json(os.path.join(run_dir, "history.json"), stages)
    with open(os.path.join(run_dir, "scores.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["test_index", "label", "score"])
        w.writerows((i, int(y), f"{s:.9g}") for i, (y, s) in enumerate(zip(labels, scores)))
    if d.polluted.any():
        write_json(os.path.join(run_dir, "pollution.json"),
                   {"polluted_train_indices": d.train_index[d.polluted].tolist()})
    torch.save({"config": dataclasses.asdict(cfg), "ae": to_cpu(model.state_dict()),
                **{k: to_cpu(v) for k, v in state.items()}}, os.path.join(run_dir, "model.pt"))

    metrics = evaluate.summarize(labels, scores)
    plots = os.path.join(run_dir, "plots")
    method = {"svdd": "one-class Deep SVDD", "soft-svdd": "soft-boundary Deep SVDD", "ae": "reconstruction error",
              "ocnn": f"OC-NN {'joint' if cfg.joint else 'z-only'}"}[cfg.objective]
    name = f"{cfg.dataset} class {d.normal_class}: {cfg.pretrain.upper()} + {method}"
    evaluate.plot_history(stages, os.path.join(plots, "training.png"))
    evaluate.plot_score_hist(labels, scores, os.path.join(plots, "score_hist.png"), title=name)
    evaluate.plot_roc_pr(labels, scores, os.path.join(plots, "roc_pr.png"), title=name)
    evaluate.plot_extremes(d.x_test.cpu().numpy(), scores, labels, os.path.join(plots, "extremes.png"),
                           title=name)
    metrics.update(extra, normal_class=d.normal_class, seed=cfg.seed, n_train=len(d.x_train),
                   scale=list(d.scale), device=str(device), seconds=round(time.perf_counter() - start, 2))
    write_json(os.path.join(run_dir, "metrics.json"), metrics)        # last: marks the run finished
    print(f"\nAUROC {100 * metrics['auroc']:.2f}  AP {100 * metrics['average_precision']:.2f}  "
          f"({name}, seed {cfg.seed}, {metrics['seconds']:.0f}s) -> {run_dir}")
    return metrics


def load_split(cfg, normal_class, device):
    """The one-class data; downloads the dataset into --data-root first when its files are missing."""
    args = (cfg.dataset, normal_class, cfg.pollution_rate, cfg.seed, cfg.data_root, device)
    try:
        return data.one_class_split(*args)
    except data.MissingData:
        print(f"{cfg.dataset} not found under {cfg.data_root}/: downloading it there")
        data.download(cfg.dataset, cfg.data_root)
        return data.one_class_split(*args)


def classes_of(cfg):
    """--normal-class as a list of ints: 'all' -> 0..9, '0,2,5' -> [0, 2, 5], '3' -> [3]."""
    return list(range(10)) if cfg.normal_class == "all" else [int(p) for p in cfg.normal_class.split(",")]


def sweep_folder(cfg):
    """<out>/sweep-<dataset>-<method>-<hash>: the hash covers every setting except the class and the seed,
    so the same command with more classes or seeds fills the same folder."""
    skip = {"normal_class", "seed", "seeds", "device", "out", "quiet", "data_root"}
    key = settings_key(cfg, [f.name for f in dataclasses.fields(cfg) if f.name not in skip])
    return os.path.join(cfg.out, f"sweep-{cfg.dataset}-{method_name(cfg).replace('+', '-')}-{key}")


def run_folder(cfg, k, s):
    """The folder of class k, seed s inside the sweep folder."""
    return os.path.join(sweep_folder(cfg), f"class{k}-seed{s}-{method_name(cfg).replace('+', '-')}")


def sweep(cfg, device):
    """Every (class, seed) pair into fixed folder names; finished runs are skipped; then the summary."""
    seeds = cfg.seeds or [cfg.seed]
    folder = sweep_folder(cfg)
    rows = []
    for k in classes_of(cfg):
        for s in seeds:
            run_dir = run_folder(cfg, k, s)
            done = os.path.join(run_dir, "metrics.json")
            if os.path.exists(done):
                print(f"skipping {run_dir}: finished before")
                with open(done) as f:
                    rows.append(json.load(f))
                continue
            banner(f"sweep run: class {k}, seed {s}")
            rows.append(run_one(dataclasses.replace(cfg, normal_class=str(k), seed=s), run_dir, device))
    write_summary(folder, rows, cfg)
    return rows


def method_name(cfg):
    """e.g. 'ae+svdd', 'rcae+ocnn-joint': the representation and the objective of a run."""
    return f"{cfg.pretrain}+{cfg.objective}" + ("-joint" if cfg.objective == "ocnn" and cfg.joint else "")


def stage_epochs(cfg):
    """e.g. 'ae 150 / svdd 150': the epochs of both stages, as the results tables report them."""
    second = {"svdd": f" / svdd {cfg.svdd_epochs}", "soft-svdd": f" / svdd {cfg.svdd_epochs}",
              "ocnn": f" / ocnn {cfg.ocnn_epochs}", "ae": ""}[cfg.objective]
    return f"{cfg.pretrain} {cfg.ae_epochs}{second}"


def write_summary(folder, rows, cfg):
    """summary.csv (one row per class) and summary.md: AUROC mean +- std over seeds, mean over classes.

    std is the population standard deviation over the seeds (numpy's default). seconds is the mean wall
    time of a run; a run whose autoencoder came from the cache did not pay for pretraining.
    """
    by_class = {}
    for m in rows:
        by_class.setdefault(m["normal_class"], []).append(m)
    table = []
    for k, ms in sorted(by_class.items()):
        a = 100 * np.array([m["auroc"] for m in ms])
        table.append({"dataset": cfg.dataset, "normal_class": k, "method": method_name(cfg),
                      "auroc_mean": round(a.mean(), 2), "auroc_std": round(a.std(), 2), "n_seeds": len(ms),
                      "seeds": " ".join(str(m["seed"]) for m in ms), "epochs": stage_epochs(cfg),
                      "pollution_rate": cfg.pollution_rate, "device": ms[0]["device"],
                      "seconds_mean": round(np.mean([m["seconds"] for m in ms]), 1)})
    with open(os.path.join(folder, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    lines = [f"{cfg.dataset}, {method_name(cfg)}, epochs {stage_epochs(cfg)}", "",
             "| normal class | AUROC % (mean +- std) | seeds |", "|---|---|---|"]
    lines += [f"| {t['normal_class']} | {t['auroc_mean']:.2f} +- {t['auroc_std']:.2f} | {t['n_seeds']} |"
              for t in table]
    lines.append(f"| mean | {np.mean([t['auroc_mean'] for t in table]):.2f} | |")
    with open(os.path.join(folder, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines) + f"\nsummary written to {folder}")


def parse_config(argv=None):
    """Flags -> a resolved Config (raises UserError on a bad value)."""
    args = make_parser().parse_args(argv)
    return resolve(Config(**{k: v for k, v in vars(args).items() if v is not None and v is not False}))


def main(argv=None):
    """Parse flags into a Config, then run once or sweep. Returns the metrics (list for a sweep)."""
    try:
        cfg = parse_config(argv)
        print("config:", json.dumps(dataclasses.asdict(cfg)))
        device = pick_device(cfg.device)
        if len(classes_of(cfg)) > 1 or cfg.seeds:
            return sweep(cfg, device)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = os.path.join(cfg.out, f"{stamp}-{cfg.dataset}-{cfg.normal_class}-{cfg.pretrain}-{cfg.objective}")
        return run_one(cfg, run_dir, device)
    except (UserError, data.DataError, ae.NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UserError) else 1)


if __name__ == "__main__":
    main()
