"""One command from data to plots: pretrain -> one-class objective -> scores -> metrics and a run folder.

    python run.py --objective svdd                       # MNIST, normal class 0, Deep SVDD (one-class)
    python run.py --objective ocnn --joint --pretrain rcae --pollution-rate 0.05
    python run.py --objective svdd --normal-class all --seeds 0 1 2 --jobs 2   # a resumable sweep + summary
    python run.py --settings port                        # the PyTorch port's settings (Deep-SVDD-PyTorch)

Every default lives in `Config` below, with its valid values beside it (one check, `resolve`, enforces
them all); the flags are made from its fields. Fields left at None take the values of `--settings` for the
chosen dataset (`PRESETS`). This is the only file that knows every other one:
data.py -> ae.py | rcae.py -> svdd.py | ocnn.py -> evaluate.py.

Run folder: <out>/<time>-<dataset>-<class>-<pretrain>-<objective>/ with config.json, history.json,
scores.csv (test index, label, score), model.pt, plots/ and, written last and atomically, metrics.json:
a folder without metrics.json is an unfinished run. A sweep (--normal-class all or 0,2,5, and/or --seeds ...)
writes its runs into <out>/sweep-<dataset>-<pretrain>-<objective>-<hash of the settings>/ under fixed
names, skips those that finished when started again, and writes summary.csv and summary.md.
Pretrained autoencoders are cached in <out>/ae-cache/, keyed on the data, the pretraining settings and
the seed, so a comparison of objectives pretrains once.

Interrupted runs: every training loop saves its state at epoch ends (training.Checkpoint, at most every
--checkpoint-seconds): the autoencoder's beside its cache entry, the objective's in the run folder. The
same command started again resumes a sweep's runs, or the newest unfinished single run of the same
settings, from the last saved epoch, and ends with the weights of an uninterrupted run.
"""
import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import datetime
import glob
import hashlib
import json
import math
import multiprocessing
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
import training

OBJECTIVES = ("svdd", "soft-svdd", "ocnn", "ae")

# The values of the fields left at None, per dataset and --settings. "paper": the settings measured closest
# to the Deep SVDD paper's Table 1; on MNIST those of the paper's own (Theano) code: Glorot + dictionary
# start, BatchNorm with a learned scale and shift, a constant autoencoder lr, weight decays 1e-3 / 1e-6
# (results/README.md, "MNIST reproduction"). "port": the PyTorch port's (Deep-SVDD-PyTorch README). On
# CIFAR-10 the Theano code's settings measured worse than the port's (results/README.md, section 4.2), so
# both names give the port's.
PORT = {
    "mnist": dict(rep_dim=32, ae_epochs=150, ae_milestones=[50], ae_weight_decay=0.5e-3, svdd_weight_decay=0.5e-6,
                  ae_init="default", bn_affine=False),
    "cifar10": dict(rep_dim=128, ae_epochs=350, ae_milestones=[250], ae_weight_decay=0.5e-6,
                    svdd_weight_decay=0.5e-6, ae_init="default", bn_affine=False),
}
PRESETS = {
    ("mnist", "paper"): dict(PORT["mnist"], ae_init="theano", bn_affine=True, ae_milestones=[],
                             ae_weight_decay=1e-3, svdd_weight_decay=1e-6),
    ("mnist", "port"): PORT["mnist"],
    ("cifar10", "paper"): PORT["cifar10"],
    ("cifar10", "port"): PORT["cifar10"],
}


@dataclasses.dataclass(frozen=True)
class Valid:
    """The valid values of a field: `what` for the reader and the error message, `test` to check one."""
    what: str
    test: object


def finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


POSITIVE = Valid("a finite number > 0", lambda v: finite(v) and v > 0)
NONNEG = Valid("a finite number >= 0", lambda v: finite(v) and v >= 0)
COUNT = Valid("an integer >= 1", lambda v: v >= 1)
SEED = Valid("an integer >= 0", lambda v: v >= 0)
EPOCHS = Valid("epoch numbers >= 1 (none: a constant lr)", lambda v: all(e >= 1 for e in v))


def on_off(name):
    """A switch that can default to on: --<name> turns it on, --no-<name> off."""
    return Valid(f"on (--{name}) or off (--no-{name})", lambda v: v in (True, False))


def one_of(*choices):
    return Valid(" | ".join(choices), lambda v: v in choices)


def opt(default, help, valid=None, factory=False):
    """A Config field: its default, its --help text and its valid values (a Valid; None: any value of its type)."""
    meta = {"help": help, "valid": valid}
    if factory:
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Config:
    # what to run
    dataset: str = opt("mnist", "the data set", one_of("mnist", "cifar10"))
    normal_class: str = opt("0", "the normal class; 'all' or a list sweeps those classes",
                            Valid("0..9, 'all' or a list such as 0,2,5",
                                  lambda v: v == "all" or all(p.isdigit() and int(p) <= 9 for p in v.split(","))))
    pretrain: str = opt("ae", "the representation (stage 1)", one_of("ae", "rcae"))
    objective: str = opt("svdd", "one-class / soft-boundary Deep SVDD, OC-NN, or the DCAE reconstruction error",
                         one_of(*OBJECTIVES))
    settings: str = opt("paper", "fills the fields left at None: paper = closest to Deep SVDD's Table 1 "
                                 "(MNIST: the Theano code's settings), port = Deep-SVDD-PyTorch's",
                        one_of("paper", "port"))
    nu: float = opt(0.1, "soft-svdd / ocnn: the fraction of training points allowed beyond R / below r",
                    Valid("a number in (0, 1]", lambda v: finite(v) and 0 < v <= 1))
    pollution_rate: float = opt(0.0, "fraction of anomalies mixed into the training set",
                                Valid("a number in [0, 1)", lambda v: finite(v) and 0 <= v < 1))
    scaling: str = opt("class", "class = GCN, then min-max with the training set's two constants (the papers); "
                                "image = each image min-max scaled alone (the seed lab's)", one_of("class", "image"))
    seed: int = opt(0, "seeds torch, numpy, the batch order and the pollution draw", SEED)
    seeds: list = opt(None, "several seeds make a sweep, e.g. --seeds 0 1 2",
                      Valid("one or more integers >= 0", lambda v: len(v) > 0 and all(s >= 0 for s in v)))
    rep_dim: int = opt(None, "code size; None = 32 MNIST / 128 CIFAR-10",
                       Valid("a multiple of 16 (the decoder views z as rep_dim/16 x 4 x 4)",
                             lambda v: v >= 16 and v % 16 == 0))
    batch_size: int = opt(200, "mini-batch size of every stage", COUNT)
    # stage 1: autoencoder pretraining (DCAE), and RCAE's sparse part
    ae_epochs: int = opt(None, "None = 150 MNIST / 350 CIFAR-10", COUNT)
    ae_lr: float = opt(1e-4, "Adam learning rate of the autoencoder", POSITIVE)
    ae_milestones: list = opt(None, "lr x0.1 after these epochs; None = paper: none (MNIST), [250] "
                                    "(CIFAR-10); port: [50] / [250]", EPOCHS)
    ae_weight_decay: float = opt(None, "None = paper: 1e-3 MNIST; port: 0.5e-3 MNIST; 0.5e-6 CIFAR-10", NONNEG)
    rcae_lambda: float = opt(0.1, "l1 weight of N; threshold lambda/2", NONNEG)
    rcae_iters: int = opt(5, "outer iterations T; each runs ae_epochs / T epochs", COUNT)
    ae_init: str = opt(None, "None = paper: theano (MNIST); port: default. default: PyTorch's init; dict: "
                             "the first convolution from a dictionary of image patches (the Theano code's "
                             "--weight_dict_init); theano: Glorot-uniform (ae.glorot_init), then dict",
                       one_of("default", "dict", "theano"))
    bn_affine: bool = opt(None, "BatchNorm learns a scale and shift (a bias, which Deep SVDD's Prop. 2 "
                                "excludes); None = paper: on (MNIST, as the Theano code); port: off",
                          on_off("bn-affine"))
    # stage 2a: Deep SVDD
    svdd_epochs: int = opt(150, "Deep SVDD epochs", COUNT)
    svdd_lr: float = opt(1e-4, "Deep SVDD Adam learning rate", POSITIVE)
    svdd_milestones: list = opt(lambda: [50], "Deep SVDD lr x0.1 after these epochs", EPOCHS, factory=True)
    svdd_weight_decay: float = opt(None, "lambda/2 of eq. 3-4; None = paper: 1e-6 MNIST; port: 0.5e-6", NONNEG)
    svdd_warmup: int = opt(10, "soft-svdd: epochs with R = 0 before R is set", SEED)
    # stage 2b: OC-NN
    ocnn_epochs: int = opt(250, "OC-NN epochs", COUNT)
    ocnn_lr: float = opt(1e-4, "OC-NN head learning rate", POSITIVE)
    ocnn_lr_drop: int = opt(100, "head lr x0.1 after this epoch", COUNT)
    ocnn_hidden: int = opt(32, "OC-NN hidden units (rows of V)", COUNT)
    ocnn_activation: str = opt("linear", "g of the hidden layer", one_of(*ocnn.ACTIVATIONS))
    ocnn_normalize: bool = opt(True, "OC-NN: the head sees z / ||z||, which bounds the objective (ocnn.py); "
                                     "--no-ocnn-normalize: the paper's plain objective",
                               on_off("ocnn-normalize"))
    ocnn_clip: float = opt(None, "OC-NN: the largest gradient norm of a step; None = 0.5 with unit codes, 0 (no "
                                 "clipping) with raw codes", NONNEG)
    joint: bool = opt(False, "OC-NN: train the encoder too (else z-only: encoder frozen)")
    encoder_lr: float = opt(1e-4, "OC-NN joint: the encoder's learning rate", POSITIVE)
    encoder_weight_decay: float = opt(1e-5, "OC-NN joint: the encoder's weight decay", NONNEG)
    encoder_lr_drop: bool = opt(True, "OC-NN joint: the encoder's lr drops x0.1 with the head's; "
                                      "--no-encoder-lr-drop keeps it (the seed lab's code)",
                                on_off("encoder-lr-drop"))
    # plumbing: not part of a run's settings (not hashed into sweep folders or cache names)
    device: str = opt("auto", "auto picks CUDA when present", one_of("auto", "cpu", "cuda"))
    data_root: str = opt("data", "where the data sets are read, and downloaded when missing")
    out: str = opt("runs", "where run folders, sweeps and the autoencoder cache go")
    jobs: int = opt(1, "a sweep's runs in this many processes, the CPU threads split between them", COUNT)
    checkpoint_seconds: float = opt(60.0, "save the training state at the first epoch end after this many "
                                          "seconds (0: every epoch); a run started again resumes from it", NONNEG)
    quiet: bool = opt(False, "no per-epoch lines")


PLUMBING = ("device", "data_root", "out", "jobs", "checkpoint_seconds", "quiet")
TYPES = {"nu": float, "ocnn_clip": float,
         "rep_dim": int, "ae_epochs": int, "ae_weight_decay": float, "svdd_weight_decay": float,
         "ae_init": str, "seeds": int, "ae_milestones": int, "svdd_milestones": int, "normal_class": str}


class UserError(Exception):
    """A problem the user can fix: printed as one sentence, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """argparse's own errors (unknown flag, a value that is not a number) in one line, exit status 2."""
        self.exit(2, f"error: {message} (python run.py --help lists the flags)\n")


def make_parser():
    """argparse flags generated from Config's fields: ae_lr -> --ae-lr, bool -> a switch, list -> nargs."""
    parser = Parser(description="Deep one-class anomaly detection: Deep SVDD and OC-NN.")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        valid = f.metadata["valid"]
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        text = f"{f.metadata['help']} (default: {default}" + (f"; valid: {valid.what})" if valid else ")")
        if f.type is bool and f.default is not False:                 # a switch that can be on: --no-<flag> too
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.type is bool:
            parser.add_argument(flag, action="store_true", default=None, help=text)
        elif f.type is list:
            parser.add_argument(flag, type=TYPES[f.name], nargs="*", default=None, help=text)
        else:
            parser.add_argument(flag, type=TYPES.get(f.name, f.type), default=None, help=text)
    return parser


def resolve(cfg):
    """Fill the fields left at None from PRESETS, then check every field against its valid values."""
    if (cfg.dataset, cfg.settings) in PRESETS:
        preset = PRESETS[cfg.dataset, cfg.settings]
        for key in ("rep_dim", "ae_epochs", "ae_milestones", "ae_weight_decay", "svdd_weight_decay", "ae_init",
                    "bn_affine"):
            if getattr(cfg, key) is None:
                setattr(cfg, key, preset[key])
    if cfg.ocnn_clip is None:
        cfg.ocnn_clip = 0.5 if cfg.ocnn_normalize else 0.0
    for f in dataclasses.fields(cfg):                                 # the one check of every value
        value, valid = getattr(cfg, f.name), f.metadata["valid"]
        if valid is not None and not (value is None and f.name == "seeds") and not valid.test(value):
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            raise UserError(f"--{f.name.replace('_', '-')} must be {valid.what}, got {shown!r}.")
    if cfg.pretrain == "rcae" and cfg.ae_epochs % cfg.rcae_iters:
        raise UserError(f"--ae-epochs ({cfg.ae_epochs}) must be a multiple of --rcae-iters ({cfg.rcae_iters}).")
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


def settings_key(cfg, fields):
    """A short hash of the named config fields: equal settings -> equal key."""
    blob = json.dumps({k: getattr(cfg, k) for k in fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


PRETRAIN_FIELDS = ("dataset", "pollution_rate", "scaling", "seed", "rep_dim", "batch_size", "pretrain",
                   "ae_epochs", "ae_lr", "ae_milestones", "ae_weight_decay", "rcae_lambda", "rcae_iters",
                   "ae_init", "bn_affine")


def ae_cache_path(cfg, normal_class):
    """<out>/ae-cache/<dataset>-<pretrain>-<hash>-class<k>.pt: the hash covers the data and the pretraining."""
    fields = [f for f in PRETRAIN_FIELDS if (cfg.pretrain == "rcae" or not f.startswith("rcae_"))
              and not (f in LATER_FIELDS and getattr(cfg, f) == LATER_FIELDS[f])]  # as in sweep_folder
    key = settings_key(cfg, fields) + f"-class{normal_class}"
    return os.path.join(cfg.out, "ae-cache", f"{cfg.dataset}-{cfg.pretrain}-{key}.pt")


def partial_path(cache_path):
    """Where an unfinished pretraining saves its state, beside its cache entry."""
    return cache_path[:-len(".pt")] + "-partial.pt"


def pretrain(cfg, d, device):
    """Stage 1: the autoencoder (or RCAE), from the cache when the same data, settings and seed came before.

    Returns (autoencoder, history, extra) where extra holds RCAE's per-image ||N_i||_1 figures.
    """
    path = ae_cache_path(cfg, d.normal_class)
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
    checkpoint = training.Checkpoint(partial_path(path), cfg.checkpoint_seconds)
    kw = dict(lr=cfg.ae_lr, weight_decay=cfg.ae_weight_decay, milestones=cfg.ae_milestones,
              batch_size=cfg.batch_size, seed=cfg.seed, verbose=not cfg.quiet, checkpoint=checkpoint)
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
    checkpoint.remove()
    return model, history, extra


def one_class(cfg, d, model, checkpoint):
    """Stage 2: the objective on the pretrained encoder. Returns (test scores, history, state to save)."""
    seed_all(cfg.seed)                                                # same start with or without the cache
    kw = dict(batch_size=cfg.batch_size, seed=cfg.seed, verbose=not cfg.quiet, checkpoint=checkpoint)
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
                                       encoder_weight_decay=cfg.encoder_weight_decay,
                                       encoder_lr_drop=cfg.encoder_lr_drop, hidden=cfg.ocnn_hidden,
                                       activation=cfg.ocnn_activation, normalize=cfg.ocnn_normalize,
                                       clip=cfg.ocnn_clip, **kw)
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
    earlier = training.spent_seconds(partial_path(ae_cache_path(cfg, int(cfg.normal_class))),
                                     os.path.join(run_dir, "checkpoint.pt"))   # > 0: an interrupted run resumes
    seed_all(cfg.seed)
    d = load_split(cfg, int(cfg.normal_class), device)
    os.makedirs(os.path.join(run_dir, "plots"), exist_ok=True)
    write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(cfg))
    model, pre_history, extra = pretrain(cfg, d, device)
    checkpoint = training.Checkpoint(os.path.join(run_dir, "checkpoint.pt"), cfg.checkpoint_seconds)
    scores, history, state = one_class(cfg, d, model, checkpoint)

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
                   scale=list(d.scale), device=str(device), seconds=round(time.perf_counter() - start + earlier, 2),
                   seconds_before_resume=round(earlier, 2))
    write_json(os.path.join(run_dir, "metrics.json"), metrics)        # last: marks the run finished
    checkpoint.remove()
    print(f"\nAUROC {100 * metrics['auroc']:.2f}  AP {100 * metrics['average_precision']:.2f}  "
          f"({name}, seed {cfg.seed}, {metrics['seconds']:.0f}s) -> {run_dir}")
    return metrics


def load_split(cfg, normal_class, device):
    """The one-class data; downloads the dataset into --data-root first when its files are missing."""
    args = (cfg.dataset, normal_class, cfg.pollution_rate, cfg.seed, cfg.data_root, device, cfg.scaling)
    try:
        return data.one_class_split(*args)
    except data.MissingData:
        print(f"{cfg.dataset} not found under {cfg.data_root}/: downloading it there")
        data.download(cfg.dataset, cfg.data_root)
        return data.one_class_split(*args)


def classes_of(cfg):
    """--normal-class as a list of ints: 'all' -> 0..9, '0,2,5' -> [0, 2, 5], '3' -> [3]."""
    return list(range(10)) if cfg.normal_class == "all" else [int(p) for p in cfg.normal_class.split(",")]


OCNN_FIELDS = ("ocnn_epochs", "ocnn_lr", "ocnn_lr_drop", "ocnn_hidden", "ocnn_activation", "ocnn_normalize",
               "ocnn_clip", "joint", "encoder_lr", "encoder_weight_decay", "encoder_lr_drop")
# settings added after sweeps were filled: hashed into the sweep folder only when changed, so the folders
# of earlier sweeps keep their names
LATER_FIELDS = {"encoder_lr_drop": True, "scaling": "class"}
SVDD_FIELDS = ("svdd_epochs", "svdd_lr", "svdd_milestones", "svdd_weight_decay", "svdd_warmup")


def sweep_folder(cfg):
    """<out>/sweep-<dataset>-<method>-<hash>: the hash covers every setting the method uses except the class
    and the seed, so the same command with more classes or seeds fills the same folder (and a new OC-NN
    option leaves the folders of Deep SVDD sweeps where they were)."""
    skip = {"normal_class", "seed", "seeds", "settings", *PLUMBING}          # settings: its values are hashed
    if cfg.objective != "ocnn":
        skip |= set(OCNN_FIELDS)
    if "svdd" not in cfg.objective:
        skip |= set(SVDD_FIELDS)
    skip |= {name for name, default in LATER_FIELDS.items() if getattr(cfg, name) == default}
    key = settings_key(cfg, [f.name for f in dataclasses.fields(cfg) if f.name not in skip])
    return os.path.join(cfg.out, f"sweep-{cfg.dataset}-{method_name(cfg).replace('+', '-')}-{key}")


def run_folder(cfg, k, s):
    """The folder of class k, seed s inside the sweep folder."""
    return os.path.join(sweep_folder(cfg), f"class{k}-seed{s}-{method_name(cfg).replace('+', '-')}")


def sweep(cfg, device):
    """Every (class, seed) pair into fixed folder names, then the summary.

    Finished runs (metrics.json) are skipped; an unfinished one resumes from its checkpoints. With --jobs N
    the pending runs go to N processes with the CPU threads split between them; each run has its own
    folder (and its own cached autoencoder), and its console output goes to <run folder>/console.log.
    """
    folder = sweep_folder(cfg)
    pairs = [(k, s) for k in classes_of(cfg) for s in (cfg.seeds or [cfg.seed])]
    rows, pending = {}, []
    for k, s in pairs:
        done = os.path.join(run_folder(cfg, k, s), "metrics.json")
        if os.path.exists(done):
            print(f"skipping {run_folder(cfg, k, s)}: finished before")
            with open(done) as f:
                rows[k, s] = json.load(f)
        else:
            pending.append((k, s))
    if cfg.jobs == 1:
        for k, s in pending:
            banner(f"sweep run: class {k}, seed {s}")
            rows[k, s] = run_one(dataclasses.replace(cfg, normal_class=str(k), seed=s), run_folder(cfg, k, s),
                                 device)
    elif pending:
        jobs = min(cfg.jobs, len(pending))
        threads = max(1, torch.get_num_threads() // jobs)
        print(f"{len(pending)} runs in {jobs} processes of {threads} thread(s) each", flush=True)
        context = multiprocessing.get_context("spawn")                   # a fresh interpreter per process
        with concurrent.futures.ProcessPoolExecutor(jobs, context, initializer=torch.set_num_threads,
                                                    initargs=(threads,)) as pool:
            futures = {pool.submit(run_logged, dataclasses.replace(cfg, normal_class=str(k), seed=s),
                                   run_folder(cfg, k, s), str(device)): (k, s) for k, s in pending}
            for future in concurrent.futures.as_completed(futures):
                k, s = futures[future]
                if future.exception() is not None:                        # a failed run stops the sweep
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise future.exception()
                rows[k, s] = future.result()
                print(f"class {k}, seed {s}: AUROC {100 * rows[k, s]['auroc']:.2f} "
                      f"({rows[k, s]['seconds']:.0f}s)", flush=True)
    rows = [rows[p] for p in pairs]                                       # the order of one job
    write_summary(folder, rows, cfg)
    return rows


def run_logged(cfg, run_dir, device):
    """run_one in a worker process of a sweep, its console output into <run_dir>/console.log."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "console.log"), "a") as log, contextlib.redirect_stdout(log):
        return run_one(cfg, run_dir, torch.device(device))


def unfinished_run(cfg):
    """The newest single-run folder of these very settings that has no metrics.json yet, or None."""
    same = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in PLUMBING}
    for run_dir in sorted(glob.glob(os.path.join(cfg.out, f"*-{cfg.dataset}-{cfg.normal_class}-{cfg.pretrain}-"
                                                          f"{cfg.objective}")), reverse=True):
        config, done = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.json")
        if os.path.exists(config) and not os.path.exists(done):
            with open(config) as f:
                saved = {**LATER_FIELDS, **json.load(f)}                   # older folders lack later fields
                if {k: v for k, v in saved.items() if k not in PLUMBING} == same:
                    return run_dir
    return None


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
    time of a run (a resumed run's includes the epochs saved before it stopped); a run whose autoencoder came
    from the cache did not pay for pretraining.
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
    return resolve(Config(**{k: v for k, v in vars(args).items() if v is not None}))


def main(argv=None):
    """Parse flags into a Config, then run once or sweep. Returns the metrics (list for a sweep)."""
    try:
        cfg = parse_config(argv)
        print("config:", json.dumps(dataclasses.asdict(cfg)))
        device = pick_device(cfg.device)
        if len(classes_of(cfg)) > 1 or cfg.seeds:
            return sweep(cfg, device)
        run_dir = unfinished_run(cfg)                                     # an interrupted run continues
        if run_dir is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = os.path.join(cfg.out, f"{stamp}-{cfg.dataset}-{cfg.normal_class}-{cfg.pretrain}-"
                                            f"{cfg.objective}")
        else:
            print(f"continuing the unfinished run {run_dir}")
        return run_one(cfg, run_dir, device)
    except (UserError, data.DataError, training.NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UserError) else 1)


if __name__ == "__main__":
    main()
