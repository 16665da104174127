"""One experiment, top to bottom: Config -> data -> pretraining -> one-class objective -> scores -> run folder.

    python run.py --settings port --ae-epochs 10 --svdd-epochs 10   # MNIST digit 0 in about 20 s on a CPU
    python run.py --objective svdd                 # the same at the paper's settings (150 + 150 epochs)
    python run.py --objective ocnn --joint --pretrain rcae --pollution-rate 0.05

Many experiments (class lists, `all`, several seeds, parallel jobs, summaries): sweep.py, which calls
`run_experiment` below once per (class, seed). Read this file top to bottom: the settings (`Config`), the
science (`pretrain`, `one_class`), then what is saved. From here to any loss is one file: ae.py, rcae.py,
svdd.py or ocnn.py.

The methods, one name each: the flags, the name in folders and in the CSVs' `method` column, the prose:

    --objective svdd             <pretrain>+svdd         one-class Deep SVDD           svdd.py
    --objective soft-svdd        <pretrain>+soft-svdd    soft-boundary Deep SVDD       svdd.py
    --objective ocnn             <pretrain>+ocnn         OC-NN z-only (encoder frozen) ocnn.py
    --objective ocnn --joint     <pretrain>+ocnn-joint   OC-NN joint                   ocnn.py
    --objective ae               <pretrain>+ae           DCAE (reconstruction error)   ae.py
    --pretrain ae | rcae         the representation: the autoencoder (ae.py) or the robust one (rcae.py)

What is saved, each file written whole (training.save_torch, write_json), keyed by the settings the run
uses (`USES`) and by its data (the root and data.fingerprint of its files):

    <out>/<time>-<dataset>-<class>-<method>/   config.json, history.json, scores.csv, model.pt, plots/ and,
                                               last, metrics.json: a folder without it is unfinished
    <out>/ae-cache/<dataset>-<pretrain>-<key>-class<k>.pt   pretrained autoencoders, shared by objectives

Interrupted (Ctrl-C, a kill): the same command finds the newest unfinished folder of the same settings and
data and resumes it; each training loop continues from its last checkpoint (training.Checkpoint) to the
weights of an uninterrupted run. A process trains in a run folder alone (training.Lock).
"""
import argparse
import contextlib
import csv
import dataclasses
import datetime
import glob
import hashlib
import json
import math
import os
import sys

import numpy as np
import torch

import ae
import data
import evaluate
import ocnn
import rcae
import shallow
import svdd
import training

DEEP = ("svdd", "soft-svdd", "ocnn", "ae")
SHALLOW = ("kde", "ocsvm", "iforest")                                 # shallow.py: on pixels or on codes
NU_OBJECTIVES = ("soft-svdd", "ocnn", "ocsvm")                        # their threshold is set by nu

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


def _number(text):
    """float(text) if it is a finite number, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


POSITIVE = Valid("a finite number > 0", lambda v: finite(v) and v > 0)
NONNEG = Valid("a finite number >= 0", lambda v: finite(v) and v >= 0)
COUNT = Valid("an integer >= 1", lambda v: v >= 1)
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
    # data
    dataset: str = opt("mnist", "the data set; folder: --data-root DIR with DIR/train/<class>/, DIR/test/<class>/",
                       one_of("mnist", "cifar10", "folder"))
    normal_class: int = opt(0, "the normal class, an index (a folder's: its name too; sweep.py runs several)",
                            Valid("an index (0..9 for mnist and cifar10)", lambda v: isinstance(v, int) and v >= 0))
    pollution_rate: float = opt(0.0, "fraction of anomalies mixed into the training set",
                                Valid("a number in [0, 1)", lambda v: finite(v) and 0 <= v < 1))
    scaling: str = opt("class", "class = GCN, then min-max with the training set's two constants (the papers); "
                                "minmax = the same without GCN; image = each image min-max scaled alone (the "
                                "seed lab's)", one_of("class", "minmax", "image"))
    seed: int = opt(0, "seeds torch, numpy, the batch order and the pollution draw",
                    Valid("an integer in [0, 2^32)", lambda v: 0 <= v < 2 ** 32))
    data_root: str = opt("data", "where the data sets are read, and downloaded when missing",
                         Valid("a folder name", lambda v: v != ""))
    # pretraining (stage 1)
    pretrain: str = opt("ae", "the representation: the autoencoder or the robust one", one_of("ae", "rcae"))
    settings: str = opt("paper", "fills the fields left at None: paper = closest to Deep SVDD's Table 1 "
                                 "(MNIST: the Theano code's settings), port = Deep-SVDD-PyTorch's",
                        one_of("paper", "port"))
    rep_dim: int = opt(None, "code size; None = 32 MNIST / 128 CIFAR-10",
                       Valid("a multiple of 16 (the decoder views z as rep_dim/16 x 4 x 4)",
                             lambda v: v >= 16 and v % 16 == 0))
    batch_size: int = opt(200, "mini-batch size of every stage", COUNT)
    ae_epochs: int = opt(None, "None = 150 MNIST / 350 CIFAR-10", COUNT)
    ae_lr: float = opt(1e-4, "Adam learning rate of the autoencoder", POSITIVE)
    ae_milestones: list = opt(None, "lr x0.1 after these epochs; None = paper: none (MNIST), [250] "
                                    "(CIFAR-10); port: [50] / [250]", EPOCHS)
    ae_weight_decay: float = opt(None, "None = paper: 1e-3 MNIST; port: 0.5e-3 MNIST; 0.5e-6 CIFAR-10", NONNEG)
    ae_init: str = opt(None, "None = paper: theano (MNIST); port: default. default: PyTorch's init; dict: "
                             "the first convolution from a dictionary of image patches (the Theano code's "
                             "--weight_dict_init); theano: Glorot-uniform, then dict (ae.initialise)",
                       one_of(*ae.INITS))
    bn_affine: bool = opt(None, "BatchNorm learns a scale and shift (a bias, which Deep SVDD's Prop. 2 "
                                "excludes); None = paper: on (MNIST, as the Theano code); port: off",
                          on_off("bn-affine"))
    rcae_lambda: float = opt(0.1, "RCAE: l1 weight of N; threshold lambda/2", NONNEG)
    rcae_iters: int = opt(5, "RCAE: outer iterations T; each runs ae_epochs / T epochs", COUNT)
    # objective (stage 2)
    objective: str = opt("svdd", "one-class / soft-boundary Deep SVDD, OC-NN, the DCAE reconstruction error, "
                                 "or a shallow detector: KDE, OC-SVM, Isolation Forest", one_of(*DEEP, *SHALLOW))
    nu: float = opt(0.1, "soft-svdd / ocnn / ocsvm: the fraction of training points allowed beyond R / below r",
                    Valid("a number in (0, 1]", lambda v: finite(v) and 0 < v <= 1))
    flag_rate: float = opt(0.1, "the objectives without nu: the fraction of training images beyond the "
                                "decision threshold (their (1 - flag_rate)-quantile)",
                           Valid("a number in (0, 1)", lambda v: finite(v) and 0 < v < 1))
    svdd_epochs: int = opt(150, "Deep SVDD epochs", COUNT)
    svdd_lr: float = opt(1e-4, "Deep SVDD Adam learning rate", POSITIVE)
    svdd_milestones: list = opt(lambda: [50], "Deep SVDD lr x0.1 after these epochs", EPOCHS, factory=True)
    svdd_weight_decay: float = opt(None, "lambda/2 of eq. 3-4; None = paper: 1e-6 MNIST; port: 0.5e-6", NONNEG)
    svdd_warmup: int = opt(10, "soft-svdd: epochs with R = 0 before R is set (below --svdd-epochs)",
                           Valid("an integer >= 0", lambda v: v >= 0))
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
    features: str = opt("pixels", "kde / ocsvm / iforest: on the preprocessed pixels, or on the codes of the "
                                  "pretrained autoencoder (the same cache as the deep objectives)",
                        one_of("pixels", "codes"))
    pca: float = opt(0.0, "kde / ocsvm / iforest: keep this fraction of the training variance by PCA first "
                          "(0: no PCA)", Valid("a number in [0, 1]", lambda v: finite(v) and 0 <= v <= 1))
    kde_bandwidth: float = opt(None, "KDE bandwidth h; None = 5-fold cross-validated over the paper code's "
                                     "grid 2^linspace(-4.5, 5, 20)",
                              Valid("a finite number > 0", lambda v: v is None or (finite(v) and v > 0)))
    ocsvm_gamma: str = opt("scale", "OC-SVM RBF gamma: a number; scale = 1 / (d Var(x)) from the training data; "
                                    "test-auroc = the paper code's grid search on 10 %% of the LABELLED TEST set "
                                    "(the other 90 %% scored)",
                           Valid("a number > 0, scale or test-auroc", lambda v: v in ("scale", "test-auroc") or
                                 (_number(v) is not None and _number(v) > 0)))
    iforest_trees: int = opt(100, "Isolation Forest: trees", COUNT)
    iforest_samples: int = opt(256, "Isolation Forest: subsample size psi of each tree", COUNT)
    # run: where and how, not what (not part of a run's identity)
    device: str = opt("auto", "auto picks CUDA when present", one_of("auto", "cpu", "cuda"))
    out: str = opt("runs", "where run folders, sweeps and the autoencoder cache go",
                   Valid("a folder name", lambda v: v != ""))
    checkpoint_seconds: float = opt(60.0, "save the training state at the first epoch end after this many "
                                          "seconds (0: every epoch); a run started again resumes from it", NONNEG)
    quiet: bool = opt(False, "no per-epoch lines")


GROUPS = {"dataset": "data", "pretrain": "pretraining (stage 1)", "objective": "objective (stage 2)",
          "device": "run"}                                            # the first field of each --help group
PLUMBING = ("data_root", "device", "out", "checkpoint_seconds", "quiet")  # the data root counts by its identity
TYPES = {"nu": float, "ocnn_clip": float, "rep_dim": int, "ae_epochs": int, "ae_weight_decay": float,
         "svdd_weight_decay": float, "ae_init": str, "ae_milestones": int, "svdd_milestones": int}

# Which settings each choice uses; the rest serve every run. A flag given for a run that does not use it
# gets a one-line warning, and only used settings key a sweep folder, a cache entry and the resume match.
USES = [
    (("pretrain", "rep_dim", "ae_epochs", "ae_lr", "ae_milestones", "ae_weight_decay", "ae_init", "bn_affine"),
     "a deep objective or --features codes", lambda c: pretrains(c)),
    (("batch_size",), "a deep objective or --features codes", lambda c: pretrains(c)),
    (("rcae_lambda", "rcae_iters"), "--pretrain rcae", lambda c: pretrains(c) and c.pretrain == "rcae"),
    (("nu",), "--objective soft-svdd, ocnn or ocsvm", lambda c: c.objective in NU_OBJECTIVES),
    (("flag_rate",), "an objective without nu", lambda c: c.objective not in NU_OBJECTIVES),
    (("svdd_epochs", "svdd_lr", "svdd_milestones", "svdd_weight_decay"), "--objective svdd or soft-svdd",
     lambda c: c.objective in ("svdd", "soft-svdd")),
    (("svdd_warmup",), "--objective soft-svdd", lambda c: c.objective == "soft-svdd"),
    (("ocnn_epochs", "ocnn_lr", "ocnn_lr_drop", "ocnn_hidden", "ocnn_activation", "ocnn_normalize", "ocnn_clip",
      "joint"), "--objective ocnn", lambda c: c.objective == "ocnn"),
    (("encoder_lr", "encoder_weight_decay", "encoder_lr_drop"), "--objective ocnn --joint",
     lambda c: c.objective == "ocnn" and c.joint),
    (("features", "pca"), "--objective kde, ocsvm or iforest", lambda c: c.objective in SHALLOW),
    (("kde_bandwidth",), "--objective kde", lambda c: c.objective == "kde"),
    (("ocsvm_gamma",), "--objective ocsvm", lambda c: c.objective == "ocsvm"),
    (("iforest_trees", "iforest_samples"), "--objective iforest", lambda c: c.objective == "iforest"),
]
PRETRAIN_FIELDS = ("dataset", "normal_class", "pollution_rate", "scaling", "seed", "pretrain", "rep_dim",
                   "batch_size", "ae_epochs", "ae_lr", "ae_milestones", "ae_weight_decay", "ae_init", "bn_affine",
                   "rcae_lambda", "rcae_iters")                       # what the autoencoder depends on


def pretrains(cfg):
    """Does the run have a stage 1? Every deep objective does; a shallow detector only on codes."""
    return cfg.objective in DEEP or cfg.features == "codes"


def network(cfg):
    """Which of ae.py's networks (and PRESETS): a folder of greyscale images gets MNIST's, of colour CIFAR-10's."""
    if cfg.dataset != "folder":
        return cfg.dataset
    return "mnist" if data.folder_facts(cfg.data_root)["channels"] == 1 else "cifar10"


class UserError(Exception):
    """A problem the user can fix: printed as one sentence, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """argparse's own errors (unknown flag, a value that is not a number) in one line, exit status 2."""
        self.exit(2, f"error: {message} (python {self.prog} --help lists the flags)\n")


def one_class_arg(text):
    """--normal-class of run.py: one class (an index, or a folder's class name); a list or 'all' is sweep.py's."""
    if text == "all" or "," in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not one class (python sweep.py --normal-class {text} "
                                         f"runs several)")
    return text


def class_of(dataset, root, text):
    """--normal-class as an index: a folder's class by name or index (data.class_index), else 0..9."""
    if dataset == "folder":
        return data.class_index(root, text)
    if not (text.isascii() and text.isdigit() and int(text) <= 9):
        raise UserError(f"--normal-class must be 0..9 for {dataset}, got {text!r}.")
    return int(text)


def make_parser(prog="run.py", skip=()):
    """argparse flags made from Config's fields (ae_lr -> --ae-lr, bool -> a switch, list -> nargs), in GROUPS."""
    parser = Parser(prog=prog, allow_abbrev=False,
                    description="One experiment of deep one-class anomaly detection: Deep SVDD, OC-NN, DCAE.")
    group = None
    for f in dataclasses.fields(Config):
        group = parser.add_argument_group(GROUPS[f.name]) if f.name in GROUPS else group
        if f.name in skip:
            continue
        flag, valid = "--" + f.name.replace("_", "-"), f.metadata["valid"]
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        text = f"{f.metadata['help']} (default: {default}" + (f"; valid: {valid.what})" if valid else ")")
        if f.type is bool:                                            # on by default: --no-<flag> too
            action = argparse.BooleanOptionalAction if f.default is not False else "store_true"
            group.add_argument(flag, action=action, default=None, help=text)
        elif f.type is list:
            group.add_argument(flag, type=TYPES[f.name], nargs="*", default=None, help=text)
        else:
            kind = one_class_arg if f.name == "normal_class" else TYPES.get(f.name, f.type)
            group.add_argument(flag, type=kind, default=None, help=text)
    return parser


def make_config(given):
    """A checked Config from the flags given ({field: value}): the fields left at None from PRESETS, every
    value against its Valid, one warning line per given flag the run does not use (USES)."""
    cfg = Config(**given)
    try:                                                              # a folder's problems are the user's to fix
        if isinstance(cfg.normal_class, str) and cfg.data_root:       # from the command line: index or name
            cfg.normal_class = class_of(cfg.dataset, cfg.data_root, cfg.normal_class)
        known = cfg.dataset in ("mnist", "cifar10") or (cfg.dataset == "folder" and cfg.data_root)
        preset = PRESETS.get((network(cfg), cfg.settings), {}) if known else {}
    except data.DataError as e:
        raise UserError(str(e)) from None
    for key, value in preset.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    if cfg.ocnn_clip is None:
        cfg.ocnn_clip = 0.5 if cfg.ocnn_normalize else 0.0
    for f in dataclasses.fields(cfg):                                 # the one check of every value
        value, valid = getattr(cfg, f.name), f.metadata["valid"]
        if valid is not None and not valid.test(value):
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            raise UserError(f"--{f.name.replace('_', '-')} must be {valid.what}, got {shown!r}.")
    if cfg.pretrain == "rcae" and cfg.ae_epochs % cfg.rcae_iters:
        raise UserError(f"--ae-epochs ({cfg.ae_epochs}) must be a multiple of --rcae-iters ({cfg.rcae_iters}).")
    if cfg.objective == "soft-svdd" and cfg.svdd_warmup >= cfg.svdd_epochs:
        raise UserError(f"--svdd-warmup ({cfg.svdd_warmup}) must be below --svdd-epochs ({cfg.svdd_epochs}): "
                        f"R is set only after the warm-up.")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch finds no CUDA device; use --device cpu.")
    for fields, user, used in USES:
        for name in fields:
            if name in given and not used(cfg):
                print(f"warning: --{name.replace('_', '-')} does nothing here; it is used by {user}", flush=True)
    return cfg


def parse_config(argv=None):
    """run.py's flags -> a checked Config (raises UserError on a bad value)."""
    args = make_parser().parse_args(argv)
    return make_config({k: v for k, v in vars(args).items() if v is not None})


def used_settings(cfg, fields=None):
    """{field: value} of the settings (of `fields`, default all) that this run uses: not plumbing, not USES'
    fields of another objective or representation."""
    unused = {n for names, _, used in USES if not used(cfg) for n in names}
    names = fields or [f.name for f in dataclasses.fields(cfg)]
    return {n: getattr(cfg, n) for n in names if n not in unused and n not in PLUMBING and n != "settings"}


def key_of(*parts):
    """A short hash of JSON-able parts: equal settings and data -> equal key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def method_name(cfg):
    """e.g. 'ae+svdd', 'rcae+ocnn-joint', 'pixels+kde': the representation and the objective (the table above)."""
    representation = cfg.pretrain if pretrains(cfg) else "pixels"
    return f"{representation}+{cfg.objective}" + ("-joint" if cfg.objective == "ocnn" and cfg.joint else "")


def banner(text):
    print(f"\n=== {text} ===", flush=True)


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


# ---------------------------------------------------------------------------------------------------
# The experiment: data -> stage 1 -> stage 2 -> the score function
# ---------------------------------------------------------------------------------------------------

def data_identity(cfg):
    """What data a run reads: the root and the fingerprint of its files. Downloads the data set when missing."""
    try:
        fingerprint = data.fingerprint(cfg.dataset, cfg.data_root)
    except data.MissingData:
        print(f"{cfg.dataset} not found under {os.path.abspath(cfg.data_root)}: downloading it there")
        data.download(cfg.dataset, cfg.data_root)
        fingerprint = data.fingerprint(cfg.dataset, cfg.data_root)
    return {"data_path": os.path.abspath(cfg.data_root), "data_fingerprint": fingerprint}


def load_data(cfg, device):
    """The one-class split of data.py (the data are on disk: data_identity came first)."""
    try:
        return data.one_class_split(cfg.dataset, cfg.normal_class, cfg.pollution_rate, cfg.seed, cfg.data_root,
                                    device, cfg.scaling)
    except ValueError as e:                                           # a setting the data cannot meet
        raise UserError(str(e)) from None


def cache_path(cfg, data_id):
    """<out>/ae-cache/<dataset>-<pretrain>-<key>-class<k>.pt: the key covers the data and the pretraining."""
    key = key_of(used_settings(cfg, PRETRAIN_FIELDS), data_id)
    return os.path.join(cfg.out, "ae-cache", f"{cfg.dataset}-{cfg.pretrain}-{key}-class{cfg.normal_class}.pt")


def pretrain(cfg, d, device, data_id, clock):
    """Stage 1: the autoencoder (or RCAE), from the cache when the same data, settings and seed came before.

    Returns (autoencoder, history, extra) where extra holds RCAE's per-image ||N_i||_1 figures. One process
    pretrains a cache entry; another that needs it waits, then reuses it.
    """
    path = cache_path(cfg, data_id)
    seed_all(cfg.seed)                                                # weight init depends on the seed only
    model = ae.build_autoencoder(network(cfg), cfg.rep_dim, cfg.bn_affine).to(device)
    banner(f"stage 1: pretraining ({cfg.pretrain}) on {len(d.x_train)} training images")
    with training.Lock(path + ".lock", wait=True):
        saved = training.load_torch(path, "cached autoencoder", "it is trained again")
        if saved is not None:
            model.load_state_dict(saved["ae"])
            print(f"reusing the pretrained autoencoder {path}")
            return model, saved["history"], saved["extra"]
        ae.initialise(model, cfg.ae_init, d.x_train, cfg.seed)       # before any training, RCAE's too
        checkpoint = training.Checkpoint(path[:-len(".pt")] + "-partial.pt", cfg.checkpoint_seconds, clock)
        kw = dict(lr=cfg.ae_lr, weight_decay=cfg.ae_weight_decay, milestones=cfg.ae_milestones,
                  batch_size=cfg.batch_size, seed=cfg.seed, verbose=not cfg.quiet, checkpoint=checkpoint)
        extra = {}
        if cfg.pretrain == "ae":
            history = ae.train_autoencoder(model, d.x_train, epochs=cfg.ae_epochs, **kw)
        else:
            _, N, history = rcae.train_rcae(model, d.x_train, lam=cfg.rcae_lambda, outer_iters=cfg.rcae_iters,
                                            epochs_per_iter=cfg.ae_epochs // cfg.rcae_iters, **kw)
            mass = rcae.n_mass_per_image(N).cpu()                     # (n,) ||N_i||_1
            extra["N_l1_per_image_normal"] = mass[~d.polluted.cpu()].mean().item()
            if d.polluted.any():
                extra["N_l1_per_image_polluted"] = mass[d.polluted.cpu()].mean().item()
        training.save_torch({"ae": to_cpu(model.state_dict()), "history": history, "extra": extra}, path)
        checkpoint.remove()
    return model, history, extra


def one_class(cfg, d, model, checkpoint):
    """Stage 2: the objective on the pretrained encoder, or a shallow detector on pixels or codes.

    Returns (history, state, info): state holds what scores an image (model.pt saves it; `scorer` makes the
    score function of it), info the shallow detectors' chosen bandwidth or gamma.
    """
    seed_all(cfg.seed)                                                # same start with or without the cache
    kw = dict(batch_size=cfg.batch_size, seed=cfg.seed, verbose=not cfg.quiet, checkpoint=checkpoint)
    if cfg.objective == "ae":
        banner("stage 2: none (DCAE baseline: the score is the reconstruction error)")
        return [], {}, {}
    if cfg.objective in SHALLOW:
        banner(f"stage 2: {cfg.objective} on the {cfg.features} of {len(d.x_train)} training images")
        features = shallow_input(model)
        gamma = _number(cfg.ocsvm_gamma) or cfg.ocsvm_gamma
        test = (features(d.x_test), d.y_test.cpu().numpy()) if gamma == "test-auroc" else (None, None)
        detector, info = shallow.fit(cfg.objective, features(d.x_train), pca=cfg.pca, nu=cfg.nu,
                                     bandwidth=cfg.kde_bandwidth, gamma=gamma, trees=cfg.iforest_trees,
                                     psi=cfg.iforest_samples, seed=cfg.seed, x_test=test[0], y_test=test[1])
        return [], {"detector": detector}, info
    phi = ae.encoder_copy(model)                                      # the AE itself stays untouched
    if cfg.objective in ("svdd", "soft-svdd"):
        objective = "one-class" if cfg.objective == "svdd" else "soft-boundary"
        banner(f"stage 2: Deep SVDD ({objective}" + (f", nu={cfg.nu})" if cfg.objective == "soft-svdd" else ")"))
        c, R, history = svdd.train_svdd(phi, d.x_train, objective=objective, nu=cfg.nu, epochs=cfg.svdd_epochs,
                                        lr=cfg.svdd_lr, weight_decay=cfg.svdd_weight_decay,
                                        milestones=cfg.svdd_milestones, warmup=cfg.svdd_warmup, **kw)
        return history, {"phi": phi.state_dict(), "c": c, "R": R}, {}
    banner(f"stage 2: OC-NN ({'joint' if cfg.joint else 'z-only'}, nu={cfg.nu})")
    head, r, history = ocnn.train_ocnn(phi, d.x_train, joint=cfg.joint, nu=cfg.nu, epochs=cfg.ocnn_epochs,
                                       lr=cfg.ocnn_lr, lr_drop_epoch=cfg.ocnn_lr_drop, encoder_lr=cfg.encoder_lr,
                                       encoder_weight_decay=cfg.encoder_weight_decay,
                                       encoder_lr_drop=cfg.encoder_lr_drop, hidden=cfg.ocnn_hidden,
                                       activation=cfg.ocnn_activation, normalize=cfg.ocnn_normalize,
                                       clip=cfg.ocnn_clip, **kw)
    return history, {"phi": phi.state_dict(), "head": head.state_dict(), "r": r}, {}


def codes_of(model):
    """z = the autoencoder's encoder output, in eval mode: what a shallow detector on codes sees."""
    return lambda x: ae.encode(model.encoder, x)


def shallow_input(model):
    """x -> what a shallow detector sees, on the CPU: the autoencoder's codes, or (no model) the pixels."""
    return (lambda x: codes_of(model)(x).cpu()) if model is not None else (lambda x: x.flatten(1).cpu())


def scorer(cfg, state, device):
    """The score function s(x) (higher = more anomalous) of a trained run, from its state as model.pt holds it:
    the one path from images to scores, for the test set, the training set (the threshold) and score.py.

    Returns (score, view): view holds what codes.png draws: codes(x), what the objective sees of x (None on
    pixels), and Deep SVDD's centre c and R^2, or OC-NN's direction u = V^T w (linear g).
    """
    net, view, model = network(cfg), {"codes": None}, None
    if "ae" in state and (cfg.objective == "ae" or cfg.objective in SHALLOW):
        model = ae.build_autoencoder(net, cfg.rep_dim, cfg.bn_affine).to(device)
        model.load_state_dict(state["ae"])
        view["codes"] = codes_of(model)
    if cfg.objective == "ae":
        return (lambda x: ae.reconstruction_scores(model, x)), view
    if cfg.objective in SHALLOW:
        features = shallow_input(model)
        return (lambda x: shallow.score(cfg.objective, state["detector"], features(x))), view
    phi = ae.build_encoder(net, cfg.rep_dim, cfg.bn_affine).to(device)
    phi.load_state_dict(state["phi"])
    view["codes"] = lambda x: ae.encode(phi, x)
    if cfg.objective in ("svdd", "soft-svdd"):
        c, R = state["c"].to(device), state["R"]
        view.update(center=c, R2=R ** 2)
        return (lambda x: svdd.svdd_scores(phi, c, x, R)), view
    head = ocnn.OCNN(cfg.rep_dim, cfg.ocnn_hidden, cfg.ocnn_activation, cfg.ocnn_normalize).to(device)
    head.load_state_dict(state["head"])
    if cfg.ocnn_normalize:                                            # the head sees unit codes
        view["codes"] = lambda x: torch.nn.functional.normalize(ae.encode(phi, x), dim=1, eps=1e-8)
    if cfg.ocnn_activation == "linear":
        view["direction"] = (head.w.weight @ head.V.weight).squeeze(0).detach()   # (D,) u = V^T w
    return (lambda x: ocnn.ocnn_scores(phi, head, state["r"], x)), view


def to_cpu(v):
    """A tensor, or a dict of them (a state dict), moved to the CPU for saving; anything else as it is."""
    if isinstance(v, dict):
        return {k: to_cpu(t) for k, t in v.items()}
    return v.cpu() if torch.is_tensor(v) else v


# ---------------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------------

def finished_metrics(run_dir):
    """The metrics of the finished run in run_dir (its metrics.json), else None."""
    return training.read_json(os.path.join(run_dir, "metrics.json"), "metrics of a finished run", "it runs again")


def run_experiment(cfg, run_dir, device, data_id):
    """One experiment (one normal class, one seed) into run_dir, which it locks (training.Busy if another
    process trains there). Returns the metrics dict, also written, last, to metrics.json; a run that is
    finished already (another sweep on the same folder may finish it after this one listed it) is read back."""
    with training.Lock(os.path.join(run_dir, ".lock")):
        done = finished_metrics(run_dir)
        if done is not None:
            print(f"{run_dir}: finished by another process; its metrics are read back")
            return done
        clock = training.Clock(os.path.join(run_dir, "seconds.json"))  # > 0 s before: an interrupted run resumes
        seed_all(cfg.seed)
        d = load_data(cfg, device)
        facts = {"folder": data.folder_facts(cfg.data_root)} if cfg.dataset == "folder" else {}
        if facts and facts["folder"]["resized_from"]:
            print(f"resized every image from {facts['folder']['resized_from']} to {facts['folder']['size']} "
                  f"({facts['folder']['interpolation']} interpolation)")
        training.write_json(os.path.join(run_dir, "config.json"),
                            {**dataclasses.asdict(cfg), **data_id, "network": network(cfg), **facts})
        model, pre_history, extra = pretrain(cfg, d, device, data_id, clock) if pretrains(cfg) else (None, [], {})
        checkpoint = training.Checkpoint(os.path.join(run_dir, "checkpoint.pt"), cfg.checkpoint_seconds, clock)
        history, state, info = one_class(cfg, d, model, checkpoint)
        state = {"ae": model.state_dict(), **state} if model is not None else state
        score, view = scorer(cfg, state, device)

        labels, scores = d.y_test.cpu().numpy(), score(d.x_test).cpu().numpy()
        scored = np.asarray(info.pop("eval_index", np.arange(len(labels))))  # all but a gamma holdout
        level = cfg.nu if cfg.objective in NU_OBJECTIVES else cfg.flag_rate
        train_scores = score(d.x_train).cpu().numpy()
        threshold = evaluate.quantile_threshold(train_scores, level)  # the decision: flagged = s > threshold
        stages = {f"pretrain ({cfg.pretrain})": pre_history, cfg.objective: history}
        training.write_json(os.path.join(run_dir, "history.json"), stages)
        write_scores(os.path.join(run_dir, "scores.csv"), labels, scores, threshold)
        if d.polluted.any():
            training.write_json(os.path.join(run_dir, "pollution.json"),
                                {"polluted_train_indices": d.train_index[d.polluted].tolist()})
        training.save_torch({"config": dataclasses.asdict(cfg), "threshold": threshold, "scale": list(d.scale),
                             **to_cpu(state)}, os.path.join(run_dir, "model.pt"))
        name = plot_run(cfg, d, stages, labels, scores, view, threshold, os.path.join(run_dir, "plots"))
        metrics = evaluate.summarize(labels[scored], scores[scored])
        metrics.update(evaluate.decision(labels[scored], scores[scored], threshold), threshold=threshold,
                       threshold_level=level, train_flagged=float((train_scores > threshold).mean()))
        metrics.update(extra, **info, normal_class=d.normal_class, seed=cfg.seed, n_train=len(d.x_train),
                       n_test_scored=len(scored), scale=list(d.scale), device=str(device),
                       seconds=round(clock.total(), 2), seconds_before_resume=round(clock.before, 2))
        training.write_json(os.path.join(run_dir, "metrics.json"), metrics)  # last: marks the run finished
        checkpoint.remove()
        if os.path.exists(clock.path):                                # the seconds are in metrics.json now
            os.remove(clock.path)
    print(f"\nAUROC {100 * metrics['auroc']:.2f}  AP {100 * metrics['average_precision']:.2f}  at the threshold: "
          f"precision {100 * metrics['precision']:.1f} recall {100 * metrics['recall']:.1f} F1 {100 * metrics['f1']:.1f}"
          f" (train flagged {100 * metrics['train_flagged']:.1f}%)  ({name}, seed {cfg.seed}, {metrics['seconds']:.0f}s)"
          f" -> {run_dir}")
    return metrics


def write_scores(path, labels, scores, threshold):
    """scores.csv: test index, label (1 = anomaly), score (higher = more anomalous), flagged (score above the
    threshold), written whole."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["test_index", "label", "score", "flagged"])
            w.writerows((i, int(y), f"{s:.9g}", int(s > threshold)) for i, (y, s) in enumerate(zip(labels, scores)))
    training.write_whole(path, write)


METHOD_NAMES = {"svdd": "one-class Deep SVDD", "soft-svdd": "soft-boundary Deep SVDD", "ae": "reconstruction error",
                "kde": "KDE", "ocsvm": "OC-SVM", "iforest": "Isolation Forest"}


def plot_run(cfg, d, stages, labels, scores, view, threshold, folder):
    """plots/: training curves, score histograms, ROC and PR curves, the extreme normal test images, the codes."""
    method = METHOD_NAMES.get(cfg.objective) or f"OC-NN {'joint' if cfg.joint else 'z-only'}"
    name = f"{cfg.dataset} class {d.normal_class}: {method_name(cfg).split('+')[0].upper()} + {method}"
    os.makedirs(folder, exist_ok=True)
    if any(stages.values()):                                          # a shallow detector on pixels: no epochs
        evaluate.plot_history(stages, os.path.join(folder, "training.png"))
    evaluate.plot_score_hist(labels, scores, os.path.join(folder, "score_hist.png"), title=name)
    evaluate.plot_roc_pr(labels, scores, os.path.join(folder, "roc_pr.png"), title=name)
    evaluate.plot_extremes(d.x_test.cpu().numpy(), scores, labels, os.path.join(folder, "extremes.png"), title=name)
    if view["codes"] is not None:
        evaluate.plot_codes(view["codes"](d.x_test).cpu().numpy(), labels, scores, threshold,
                            os.path.join(folder, "codes.png"), title=name, center=to_numpy(view.get("center")),
                            R2=view.get("R2", 0.0), direction=to_numpy(view.get("direction")))
    return name


def to_numpy(t):
    return None if t is None else t.cpu().numpy()


def unfinished_run(cfg, data_id):
    """The newest run folder of these settings and this data without metrics.json, or None."""
    want = {**used_settings(cfg), **data_id}
    pattern = os.path.join(glob.escape(cfg.out), f"*-{cfg.dataset}-{cfg.normal_class}-{method_name(cfg)}")
    for run_dir in sorted(glob.glob(pattern), reverse=True):
        if os.path.exists(os.path.join(run_dir, "metrics.json")):
            continue
        saved = training.read_json(os.path.join(run_dir, "config.json"), "config of an unfinished run",
                                   "that folder is not resumed")
        if isinstance(saved, dict) and {k: saved.get(k) for k in want} == want:
            return run_dir
    return None


def new_run_folder(cfg):
    """<out>/<time>-<dataset>-<class>-<method>, made here (<time>.2, .3, ... when one began in the same second)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100):
        run_dir = os.path.join(cfg.out, f"{stamp}{'' if n == 1 else f'.{n}'}-{cfg.dataset}-{cfg.normal_class}-"
                                        f"{method_name(cfg)}")
        with contextlib.suppress(FileExistsError):
            os.makedirs(run_dir)
            return run_dir
    raise UserError(f"could not make a new run folder in {cfg.out}: 99 began in the second {stamp}.")


def pick_device(choice):
    if choice != "auto":
        return torch.device(choice)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device} (auto: {'a CUDA device was found' if device.type == 'cuda' else 'no CUDA device'})")
    return device


def check_folders(cfg):
    """--out must be a folder this process can write in, --data-root a folder (or not there yet)."""
    if os.path.exists(cfg.data_root) and not os.path.isdir(cfg.data_root):
        raise UserError(f"--data-root {cfg.data_root} is a file, not a folder.")
    try:
        os.makedirs(cfg.out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {cfg.out}: cannot make a folder there ({e.strerror}); choose another --out.") from None
    if not os.access(cfg.out, os.W_OK | os.X_OK):
        raise UserError(f"--out {cfg.out} is not writable; choose another --out.")


def cli(body):
    """Run body() as a command: the errors a user can cause end in one line and a non-zero exit status."""
    try:
        return body()
    except KeyboardInterrupt:
        print("\ninterrupted: the training state saved at the last checkpoint is kept; the same command "
              "resumes from it", file=sys.stderr)
        sys.exit(130)
    except training.Busy as e:
        print(f"error: another process is training in {os.path.dirname(str(e))}; wait for it to finish, or "
              f"use another --out", file=sys.stderr)
        sys.exit(2)
    except (UserError, shallow.ShallowError, data.DataError, training.NonFiniteLoss, training.SaveError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, (UserError, shallow.ShallowError)) else 1)
    except OSError as e:                                              # a folder that cannot be written, ...
        print(f"error: cannot write {e.filename} ({e.strerror or e}); fix that, then run the same command again: "
              f"it resumes", file=sys.stderr)
        sys.exit(1)


def main(argv=None):
    """Parse flags into a Config, then run one experiment (or continue an unfinished one). Returns its metrics."""
    def body():
        cfg = parse_config(argv)
        print("config:", json.dumps(dataclasses.asdict(cfg)))
        check_folders(cfg)
        device = pick_device(cfg.device)
        data_id = data_identity(cfg)
        run_dir = unfinished_run(cfg, data_id)                        # an interrupted run continues
        if run_dir is None:
            run_dir = new_run_folder(cfg)
        else:
            print(f"continuing the unfinished run {run_dir}")
        return run_experiment(cfg, run_dir, device, data_id)
    return cli(body)


if __name__ == "__main__":
    main()
