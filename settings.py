"""What a run is: its settings (Config), the methods and the settings each uses, the presets, the checks, the
flags, and the one way a command ends on an error. run.py, sweep.py and score.py read their flags here.

The methods, one name each: the flag, the run folder's and the CSVs' `method` (<representation>+<objective>),
the prose of the plots, and the file that holds the loss:

    --pretrain ae                the autoencoder (reconstruction)             ae.py
    --pretrain rcae              the robust autoencoder: X = L + N            rcae.py
    --pretrain geom              transformation prediction (GEOM)             geom.py
    --objective svdd             one-class Deep SVDD                          svdd.py
    --objective soft-svdd        soft-boundary Deep SVDD                      svdd.py
    --objective ocnn             OC-NN z-only (the encoder frozen)            ocnn.py
    --objective ocnn-joint       OC-NN joint (the encoder trained too)        ocnn.py
    --objective own              the representation's own score (no stage 2): the reconstruction error
                                 (ae.py), or GEOM's score of the transformations (geom.py)
    --objective kde|ocsvm|iforest  a shallow detector on pixels or codes     shallow.py

A shallow detector on pixels has no representation: its method is pixels+kde. Each entry of REPRESENTATIONS
and OBJECTIVES below says which settings it uses; the rest serve every run. Only used settings key a run
(the stage-1 cache, a sweep folder, the resume match), and a flag given to a run that does not use it gets a
one-line warning.

Read next: run.py, the experiment that takes a Config.
"""
import argparse
import dataclasses
import math
import os
import sys
import typing

import torch

import ae
import data
import folders
import geom
import ocnn
import shallow
import training


@dataclasses.dataclass(frozen=True)
class Method:
    prose: str                                                        # the plots' and summaries' name
    uses: tuple = ()                                                  # the Config fields it reads
    after: tuple = ()                                                 # a representation's, applied after the
    #                  trained network is read from the cache: in the run's key, not the cache's


AE = ("ae_epochs", "ae_lr", "ae_milestones", "ae_weight_decay", "ae_init")
REPRESENTATIONS = {
    "ae": Method("the autoencoder", AE),
    "rcae": Method("the robust autoencoder", AE + ("rcae_lambda", "rcae_iters")),
    "geom": Method("transformation prediction", ("geom_transforms", "geom_epochs", "geom_lr", "geom_weight_decay",
                                                 "geom_milestones", "geom_flip", "geom_all_copies"),
                   after=("geom_precise_bn",)),
}
STAGE1 = ("pretrain", "rep_dim", "width", "bn_affine", "batch_size")          # every representation's
SVDD = ("svdd_epochs", "svdd_lr", "svdd_milestones", "svdd_weight_decay")
OCNN = ("ocnn_epochs", "ocnn_lr", "ocnn_lr_drop", "ocnn_hidden", "ocnn_activation", "ocnn_normalize", "ocnn_clip",
        "nu")
SHALLOW = ("features", "pca")
OBJECTIVES = {
    "svdd": Method("one-class Deep SVDD", SVDD),
    "soft-svdd": Method("soft-boundary Deep SVDD", SVDD + ("svdd_warmup", "nu")),
    "ocnn": Method("OC-NN z-only", OCNN),
    "ocnn-joint": Method("OC-NN joint", OCNN + ("encoder_lr", "encoder_weight_decay", "encoder_lr_drop")),
    "own": Method("the representation's own score"),
    "kde": Method("KDE", SHALLOW + ("kde_bandwidth",)),
    "ocsvm": Method("OC-SVM", SHALLOW + ("ocsvm_gamma", "nu")),
    "iforest": Method("Isolation Forest", SHALLOW + ("iforest_trees", "iforest_samples")),
}

# The values of the fields left at None, per network and --settings. "paper": the settings measured closest
# to the Deep SVDD paper's Table 1; on MNIST those of the paper's own (Theano) code: Glorot + dictionary
# start, BatchNorm with a learned scale and shift, a constant autoencoder lr, weight decays 1e-3 / 1e-6
# (results/README.md, "MNIST reproduction"). "port": the PyTorch port's (Deep-SVDD-PyTorch README). On
# CIFAR-10 the Theano code's settings measured worse than the port's (results/README.md, section 4.2), so
# both names give the port's.
PORT = {
    "mnist": dict(rep_dim=32, ae_epochs=150, ae_milestones=[50], ae_weight_decay=0.5e-3, svdd_weight_decay=0.5e-6,
                  ae_init="default", bn_affine=False, batch_size=200, geom_transforms="geom", geom_epochs=25,
                  geom_weight_decay=1e-6, geom_precise_bn=False),
    "cifar10": dict(rep_dim=128, ae_epochs=350, ae_milestones=[250], ae_weight_decay=0.5e-6,
                    svdd_weight_decay=0.5e-6, ae_init="default", bn_affine=False, batch_size=200,
                    geom_transforms="rot", geom_epochs=60, geom_weight_decay=5e-4, geom_precise_bn=False),
}
PRESETS = {
    ("mnist", "paper"): dict(PORT["mnist"], ae_init="theano", bn_affine=True, ae_milestones=[],
                             ae_weight_decay=1e-3, svdd_weight_decay=1e-6),
    ("mnist", "port"): PORT["mnist"],
    ("cifar10", "paper"): PORT["cifar10"],
    ("cifar10", "port"): PORT["cifar10"],
}
# The geom_* fields above are the settings measured best per network (results/README.md 9.1: GEOM's 72 on MNIST;
# 9.2 and 9.4: on CIFAR-10 the four rotations, 60 epochs, weight decay 5e-4). A run on transformation prediction
# also takes, under either --settings, BatchNorm without a learned shift (Deep SVDD's Prop. 2), and on CIFAR-10
# the batches of 64 it was measured with, for every stage of the run, and precise BN (off in PORT: what the
# other runs, and those saved before it existed, ran with).
GEOM = {"mnist": dict(bn_affine=False), "cifar10": dict(bn_affine=False, batch_size=64, geom_precise_bn=True)}


class UserError(Exception):
    """A problem the user can fix: printed as one sentence, exit status 2."""


# Valid values of a field: `what` for the reader and the error message, `test` to check one.
Valid = typing.NamedTuple("Valid", [("what", str), ("test", typing.Callable)])


def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def number(text):
    """float(text) if it is a finite number, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def between(lo, hi, lo_open=False, hi_open=False):
    what = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return Valid(what, lambda v: finite(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi))


def one_of(*choices):
    return Valid(" | ".join(choices), lambda v: v in choices)


POSITIVE = Valid("a finite number > 0", lambda v: finite(v) and v > 0)
NONNEG = Valid("a finite number >= 0", lambda v: finite(v) and v >= 0)
COUNT = Valid("an integer >= 1", lambda v: v >= 1)
EPOCHS = Valid("epoch numbers >= 1 (none: a constant lr)", lambda v: all(e >= 1 for e in v))
SWITCH = Valid("on or off", lambda v: v in (True, False))


def opt(default, help, valid=None):
    """A Config field: its default, its --help text and its valid values (None: any value of its type)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, "valid": valid})
    return dataclasses.field(default=default, metadata={"help": help, "valid": valid})


@dataclasses.dataclass
class Config:
    # data
    dataset: str = opt("mnist", "the data set; folder: --data-root DIR with DIR/train/<class>/, DIR/test/<class>/",
                       one_of("mnist", "cifar10", "folder"))
    normal_class: int = opt(0, "the normal class: 0..9 or a folder's class by name; several joined by + (1+7, "
                               "cat+dog) make one normal class of their union (sweep.py runs several experiments)",
                            Valid("a class index, or a tuple of them", lambda v: all(
                                type(k) is int and k >= 0 for k in data.normal_classes(v))))
    pollution_rate: float = opt(0.0, "fraction of anomalies mixed into the training set", between(0, 1, hi_open=True))
    calibration: float = opt(0.0, "fraction of the training images held out, never trained on, whose scores set "
                                  "the decision threshold (0: the training images' own, the papers' protocol)",
                             between(0, 1, hi_open=True))
    scaling: str = opt("class", "class = GCN, then min-max with the training set's two constants (the papers); "
                                "minmax = the same without GCN; image = each image min-max scaled alone (the "
                                "seed lab's)", one_of("class", "minmax", "image"))
    seed: int = opt(0, "seeds torch, numpy, the batch order and the pollution draw",
                    Valid("an integer in [0, 2^32)", lambda v: 0 <= v < 2 ** 32))
    data_root: str = opt("data", "where the data sets are read, and downloaded when missing",
                         Valid("a folder name", lambda v: v != ""))
    # stage 1: the representation
    pretrain: str = opt("ae", "the representation (stage 1)", one_of(*REPRESENTATIONS))
    settings: str = opt("paper", "fills the fields left at None: paper = closest to Deep SVDD's Table 1 "
                                 "(MNIST: the Theano code's settings), port = Deep-SVDD-PyTorch's",
                        one_of("paper", "port"))
    rep_dim: int = opt(None, "code size; None = 32 MNIST / 128 CIFAR-10",
                       Valid("a multiple of 16 (the decoder views z as rep_dim/16 x 4 x 4)",
                             lambda v: v >= 16 and v % 16 == 0))
    width: int = opt(1, "every convolution's channels x this (1: the papers' LeNet-type networks; 2: twice the "
                        "channels, about four times the compute)", COUNT)
    batch_size: int = opt(None, "mini-batch size of every stage; None = 200 (64 with --pretrain geom on CIFAR-10)",
                          COUNT)
    ae_epochs: int = opt(None, "None = 150 MNIST / 350 CIFAR-10", COUNT)
    ae_lr: float = opt(1e-4, "Adam learning rate of the autoencoder", POSITIVE)
    ae_milestones: list[int] = opt(None, "lr x0.1 after these epochs; None = paper: none (MNIST), [250] "
                                         "(CIFAR-10); port: [50] / [250]", EPOCHS)
    ae_weight_decay: float = opt(None, "None = paper: 1e-3 MNIST; port: 0.5e-3 MNIST; 0.5e-6 CIFAR-10", NONNEG)
    ae_init: str = opt(None, "None = paper: theano (MNIST); port: default. default: PyTorch's init; dict: "
                             "the first convolution from a dictionary of image patches (the Theano code's "
                             "--weight_dict_init); theano: Glorot-uniform, then dict (ae.initialize)",
                       one_of(*ae.INITS))
    bn_affine: bool = opt(None, "BatchNorm learns a scale and shift (a bias, which Deep SVDD's Prop. 2 "
                                "excludes); None = paper: on (MNIST, as the Theano code); port: off; geom: off",
                      SWITCH)
    rcae_lambda: float = opt(0.1, "RCAE: l1 weight of N; threshold lambda/2", NONNEG)
    rcae_iters: int = opt(5, "RCAE: outer iterations T; each runs ae_epochs / T epochs", COUNT)
    geom_transforms: str = opt(None, "geom: the transformations to tell apart: rot (4 quarter turns), rot-flip "
                                     "(8), geom (GEOM's 72: x flips and +-8 px shifts); None = geom MNIST / rot "
                                     "CIFAR-10", one_of(*geom.TRANSFORMS))
    geom_epochs: int = opt(None, "geom: epochs, each one random transformation of every training image; None = "
                                 "25 MNIST / 60 CIFAR-10", COUNT)
    geom_lr: float = opt(1e-3, "geom: Adam learning rate (GEOM's)", POSITIVE)
    geom_milestones: list[int] = opt([], "geom: lr x0.1 after these epochs", EPOCHS)
    geom_weight_decay: float = opt(None, "geom: weight decay; None = 1e-6 MNIST / 5e-4 CIFAR-10", NONNEG)
    geom_flip: bool = opt(False, "geom: each training image flipped left-right at random before its transformation "
                                 "(Hendrycks et al.'s augmentation); not with a set that predicts flips", SWITCH)
    geom_all_copies: bool = opt(False, "geom: a step shows all K transformed copies of each image of the batch "
                                       "(GEOM's way: an epoch is K n image-passes), not one drawn at random", SWITCH)
    geom_precise_bn: bool = opt(None, "geom: BatchNorm's running statistics recomputed for the trained network "
                                      "in one pass over the training images (precise BN), not the moving "
                                      "averages of its last steps; None = on CIFAR-10's network, off MNIST's", SWITCH)
    # stage 2: the objective
    objective: str = opt("svdd", "stage 2 on the representation: " + ", ".join(f"{name} = {m.prose}" for name, m in
                                                                            OBJECTIVES.items()), one_of(*OBJECTIVES))
    nu: float = opt(0.1, "soft-svdd / ocnn / ocsvm: the fraction of training points allowed beyond R / below r",
                    between(0, 1, lo_open=True))
    flag_rate: float = opt(0.1, "the objectives without nu: the fraction of training (with --calibration: "
                                "held-out) images beyond the decision threshold (their (1 - flag_rate)-quantile)",
                           between(0, 1, lo_open=True, hi_open=True))
    svdd_epochs: int = opt(150, "Deep SVDD epochs", COUNT)
    svdd_lr: float = opt(1e-4, "Deep SVDD Adam learning rate", POSITIVE)
    svdd_milestones: list[int] = opt([50], "Deep SVDD lr x0.1 after these epochs", EPOCHS)
    svdd_weight_decay: float = opt(None, "lambda/2 of eq. 3-4; None = paper: 1e-6 MNIST; port: 0.5e-6", NONNEG)
    svdd_warmup: int = opt(10, "soft-svdd: epochs with R = 0 before R is set (below --svdd-epochs)",
                           Valid("an integer >= 0", lambda v: v >= 0))
    ocnn_epochs: int = opt(250, "OC-NN epochs", COUNT)
    ocnn_lr: float = opt(1e-4, "OC-NN head learning rate", POSITIVE)
    ocnn_lr_drop: int = opt(100, "head lr x0.1 after this epoch", COUNT)
    ocnn_hidden: int = opt(32, "OC-NN hidden units (rows of V)", COUNT)
    ocnn_activation: str = opt("linear", "g of the hidden layer", one_of(*ocnn.ACTIVATIONS))
    ocnn_normalize: bool = opt(True, "OC-NN: the head sees z / ||z||, which bounds the objective (ocnn.py); "
                                     "--no-ocnn-normalize: the paper's plain objective", SWITCH)
    ocnn_clip: float = opt(None, "OC-NN: the largest gradient norm of a step; None = 0.5 with unit codes, 0 (no "
                                 "clipping) with raw codes", NONNEG)
    encoder_lr: float = opt(1e-4, "ocnn-joint: the encoder's learning rate", POSITIVE)
    encoder_weight_decay: float = opt(1e-5, "ocnn-joint: the encoder's weight decay", NONNEG)
    encoder_lr_drop: bool = opt(True, "ocnn-joint: the encoder's lr drops x0.1 with the head's; "
                                      "--no-encoder-lr-drop keeps it (the seed lab's code)", SWITCH)
    features: str = opt("pixels", "kde / ocsvm / iforest: on the preprocessed pixels, or on the codes of the "
                                  "representation (the same cache as the deep objectives)", one_of("pixels", "codes"))
    pca: float = opt(0.0, "kde / ocsvm / iforest: keep this fraction of the training variance by PCA first "
                          "(0: no PCA)", between(0, 1))
    kde_bandwidth: float = opt(None, "KDE bandwidth h; None = 5-fold cross-validated over the paper code's "
                                     "grid 2^linspace(-4.5, 5, 20)",
                               Valid("a finite number > 0", lambda v: v is None or (finite(v) and v > 0)))
    ocsvm_gamma: str = opt("scale", "OC-SVM RBF gamma: a number; scale = 1 / (d Var(x)) from the training data; "
                                    "test-auroc = the paper code's grid search on 10 %% of the LABELLED TEST set "
                                    "(the other 90 %% scored)",
                           Valid("a number > 0, scale or test-auroc", lambda v: v in ("scale", "test-auroc") or
                                 (number(v) is not None and number(v) > 0)))
    iforest_trees: int = opt(100, "Isolation Forest: trees", COUNT)
    iforest_samples: int = opt(256, "Isolation Forest: subsample size psi of each tree", COUNT)
    # run: where and how, not what (not part of a run's identity)
    device: str = opt("auto", "auto picks CUDA when present", one_of("auto", "cpu", "cuda"))
    out: str = opt("runs", "where run folders, sweeps and the stage-1 cache go",
                   Valid("a folder name", lambda v: v != ""))
    checkpoint_seconds: float = opt(60.0, "save the training state at the first epoch end after this many "
                                          "seconds (0: every epoch); a run started again resumes from it", NONNEG)
    quiet: bool = opt(False, "no per-epoch lines")


GROUPS = {"dataset": "data", "pretrain": "stage 1: the representation", "objective": "stage 2: the objective",
          "device": "run"}                                            # the first field of each --help group
PLUMBING = ("data_root", "settings", "device", "out", "checkpoint_seconds", "quiet")  # the data: by its identity
# Fields added after runs were saved, with the value those runs ran with: in a key only when set to another
# value, so that those runs resolve
LATER = {"calibration": 0.0, "geom_flip": False, "geom_all_copies": False, "width": 1, "geom_precise_bn": False}


def has_stage1(cfg):
    """Every objective but a shallow detector on pixels trains on a representation."""
    return cfg.objective not in ("kde", "ocsvm", "iforest") or cfg.features == "codes"


def uses_nu(cfg):
    """Whether the objective has a nu (R^2, r, rho are set by it)."""
    return "nu" in OBJECTIVES[cfg.objective].uses


def decision_level(cfg):
    """The fraction of the training (or held-out) images the decision flags: nu where the objective has one,
    else flag_rate."""
    return cfg.nu if uses_nu(cfg) else cfg.flag_rate


def used_names(cfg, stage1_only=False):
    """The fields this run uses; stage1_only: those that make its representation."""
    names = ["dataset", "normal_class", "pollution_rate", "calibration", "scaling", "seed"]
    if has_stage1(cfg):
        rep = REPRESENTATIONS[cfg.pretrain]
        names += STAGE1 + rep.uses + (() if stage1_only else rep.after)
    if not stage1_only:
        names += OBJECTIVES[cfg.objective].uses + ("objective", "nu" if uses_nu(cfg) else "flag_rate")
    return names


def used_settings(cfg, stage1_only=False):
    """{field: value} of the settings this run uses (the key of what it saves; stage1_only: the cache's key); a
    field of LATER only when set, so that what was saved before it existed keeps its key."""
    names = used_names(cfg, stage1_only)
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.name in names and not (f.name in LATER and getattr(cfg, f.name) == LATER[f.name])}


def later_defaults():
    """{field: value} of LATER: what a run folder saved before such a field existed ran with."""
    return dict(LATER)


def method_name(cfg):
    """e.g. 'ae+svdd', 'rcae+ocnn-joint', 'pixels+kde': the representation and the objective."""
    return f"{cfg.pretrain if has_stage1(cfg) else 'pixels'}+{cfg.objective}"


def class_name(cfg):
    """A folder's normal class by its name ('cat', or 'cat+dog' for several); None for MNIST and CIFAR-10 (their
    classes are numbers here)."""
    if cfg.dataset != "folder":
        return None
    return "+".join(data.folder_classes(cfg.data_root)[k] for k in data.normal_classes(cfg.normal_class))


def class_tag(k, name):
    """The class as folders and titles show it: '7', '1+7' for several, or '7-three' for a folder's class named
    three."""
    number = "+".join(map(str, data.normal_classes(k)))
    return f"{number}-{name}" if name not in (None, number) else number


def run_name(cfg):
    """A run folder's name after its time stamp: <dataset>-<class>-<method>, e.g. mnist-0-ae+svdd."""
    return f"{cfg.dataset}-{class_tag(cfg.normal_class, class_name(cfg))}-{method_name(cfg)}"


def run_title(cfg, name):
    """The plots' and the console's title of a run, e.g. 'mnist class 0: ae+svdd (one-class Deep SVDD)'."""
    return f"{cfg.dataset} class {class_tag(cfg.normal_class, name)}: {method_name(cfg)} " \
           f"({OBJECTIVES[cfg.objective].prose})"


def network(cfg):
    """Which of ae.py's networks: MNIST's for 1x28x28 images (a greyscale folder too), else CIFAR-10's."""
    if cfg.dataset != "folder":
        return cfg.dataset
    return "mnist" if data.folder_facts(cfg.data_root)["channels"] == 1 else "cifar10"


# ---------------------------------------------------------------------------------------------------
# Flags -> a checked Config
# ---------------------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message):
        """argparse's own errors (unknown flag, a value that is not a number) in one line, exit status 2."""
        self.exit(2, f"error: {message} (python {self.prog} --help lists the flags)\n")


def class_of(dataset, root, text):
    """--normal-class as an index: a folder's class by its name (data.class_index), else 0..9; several joined by
    + (1+7, cat+dog) as their sorted tuple, whose union is the normal class."""
    if dataset == "folder" and text in data.folder_classes(root):   # an exact name wins, even 'all' or 'a,b'
        return data.class_index(root, text)
    if "+" in text:
        ks = [class_of(dataset, root, part) for part in text.split("+")]
        n = len(data.folder_classes(root)) if dataset == "folder" else 10
        if len(set(ks)) < len(ks) or len(ks) >= n:
            raise UserError(f"--normal-class {text} must name distinct classes and leave at least one of the {n} "
                            f"to be the anomalies.")
        return tuple(sorted(ks))
    if text == "all" or "," in text:
        raise UserError(f"--normal-class {text} is not one class; python sweep.py --normal-class {text} runs several.")
    if dataset == "folder":
        return data.class_index(root, text)
    if not (text.isascii() and text.isdigit() and int(text) <= 9):
        raise UserError(f"--normal-class must be 0..9 for {dataset}, got {text!r}.")
    return int(text)


def make_parser(prog="run.py", skip=()):
    """argparse flags made from Config's fields (ae_lr -> --ae-lr, bool -> a switch, list -> nargs), in GROUPS."""
    parser = Parser(prog=prog, allow_abbrev=False, description="One experiment of deep one-class anomaly detection: "
                    "a representation (stage 1), an objective on it (stage 2), scores, a decision, plots.")
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
        elif typing.get_origin(f.type) is list:
            group.add_argument(flag, type=typing.get_args(f.type)[0], nargs="*", default=None, help=text)
        else:
            group.add_argument(flag, type=str if f.name == "normal_class" else f.type, default=None, help=text)
    return parser


def make_config(given):
    """A checked Config from the flags given ({field: value}): the fields left at None from PRESETS (and GEOM), every
    value against its Valid, one warning line per given flag the run does not use."""
    cfg = Config(**given)
    try:                                                              # a folder's problems are the user's to fix
        if isinstance(cfg.normal_class, str):                         # from the command line: index or name
            cfg.normal_class = class_of(cfg.dataset, cfg.data_root, cfg.normal_class)
        elif isinstance(cfg.normal_class, list):                      # several, from a config.json
            cfg.normal_class = tuple(cfg.normal_class)
        known = cfg.dataset in ("mnist", "cifar10") or (cfg.dataset == "folder" and cfg.data_root)
        preset = PRESETS.get((network(cfg), cfg.settings), {}) if known else {}
        if known and cfg.pretrain == "geom":
            preset = {**preset, **GEOM[network(cfg)]}
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
    if has_stage1(cfg) and cfg.pretrain == "rcae" and cfg.ae_epochs % cfg.rcae_iters:
        raise UserError(f"--ae-epochs ({cfg.ae_epochs}) must be a multiple of --rcae-iters ({cfg.rcae_iters}).")
    if has_stage1(cfg) and cfg.pretrain == "geom" and cfg.geom_flip and geom.predicts_flips(cfg.geom_transforms):
        raise UserError(f"--geom-flip flips images at random, so the set {cfg.geom_transforms} cannot ask which flip "
                        f"was applied; use it with --geom-transforms rot.")
    if cfg.objective == "soft-svdd" and cfg.svdd_warmup >= cfg.svdd_epochs:
        raise UserError(f"--svdd-warmup ({cfg.svdd_warmup}) must be below --svdd-epochs ({cfg.svdd_epochs}): "
                        f"R is set only after the warm-up.")
    used = set(used_names(cfg)) | set(PLUMBING)
    for name in given:
        if name not in used:
            print(f"warning: --{name.replace('_', '-')} does nothing in a {method_name(cfg)} run", flush=True)
    return cfg


def parse_config(argv=None):
    """run.py's flags -> a checked Config (raises UserError on a bad value)."""
    args = make_parser().parse_args(argv)
    return make_config({k: v for k, v in vars(args).items() if v is not None})


# ---------------------------------------------------------------------------------------------------
# Where it runs, and how a command ends
# ---------------------------------------------------------------------------------------------------

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


def pick_device(choice):
    """--device as a torch.device; cuda without a CUDA device is the user's to fix."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch finds no CUDA device; use --device cpu.")
    if choice != "auto":
        return torch.device(choice)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device} (auto: {'a CUDA device was found' if device.type == 'cuda' else 'no CUDA device'})")
    return device


def cli(body):
    """Run body() as a command: the errors a user can cause end in one line and a non-zero exit status."""
    try:
        return body()
    except KeyboardInterrupt:
        print("\ninterrupted: the training state saved at the last checkpoint is kept; the same command "
              "resumes from it", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:                                           # `python run.py | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        print("error: the output pipe was closed, so the command stopped; run the same command again to "
              "resume it", file=sys.stderr)
        sys.exit(1)
    except folders.Busy as e:
        print(f"error: another process is training in {os.path.dirname(str(e))}; wait for it to finish, or "
              f"use another --out", file=sys.stderr)
        sys.exit(2)
    except (UserError, shallow.ShallowError, data.DataError, training.Diverged, folders.SaveError, folders.Stale) as e:
        print(f"error: {e}", file=sys.stderr)                        # the user's to fix (2), or to run again (1)
        sys.exit(2 if isinstance(e, (UserError, shallow.ShallowError)) or getattr(e, "user", False) else 1)
    except NotImplementedError as e:                                  # the student edition (exercises.py)
        if not str(e).startswith("exercise "):
            raise
        print(f"not written yet: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:                                              # what no check above foresaw
        print(f"error: {e.filename or 'a file'}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
