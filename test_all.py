"""The test suite: one property per test, named in a comment. `python -m pytest -q` runs it all.

Order: helpers and fixtures; the math and properties (evaluate.py, svdd.py, ocnn.py, rcae.py, ae.py, fast_ops.py,
training.py); data.py (loaders, preprocessing and the split, download); end to end on real data (MNIST, and the
CIFAR-10 JPEG copy in `../shared/data` where it exists); run.py (the CLI and resuming); the CUDA path (skipped
without a GPU); the EXERCISES.md checks and the ablations.
"""
import contextlib
import csv
import dataclasses
import errno
import functools
import gzip
import hashlib
import http.server
import importlib.util
import inspect
import itertools
import io
import json
import math
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import ae
import data
import evaluate
import exercises
import fast_ops
import folders
import geom
import ocnn
import rcae
import run
import score
import settings
import shallow
import svdd
import sweep
import training

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")  # the shipped MNIST .gz files live in data/mnist/
CIFAR_JPEG_TAR = os.path.join(HERE, "..", "shared", "data", "cifar10-jpeg", "cifar10_jpeg.tar")

sys.path.insert(0, os.path.join(HERE, "results", "ablations"))
import ablations  # noqa: E402  (results/ablations/ablations.py)


# ---------------------------------------------------------------------------------------------------
# Helpers and fixtures
# ---------------------------------------------------------------------------------------------------

# Hand example with a tie between an anomaly and a normal at 0.8.
HAND_Y = [1, 0, 1, 1, 0]
HAND_S = [0.9, 0.8, 0.8, 0.5, 0.1]

# Short runs at the PyTorch port's settings: the default MNIST start learns a patch dictionary first
# (seconds per run), which the tests of the run mechanics do not need.
SHORT = ["--settings", "port", "--ae-epochs", "2", "--quiet"]
FAST = SHORT + ["--svdd-epochs", "2", "--ocnn-epochs", "2", "--batch-size", "16", "--svdd-warmup", "1"]

NUMERIC = [f for f in dataclasses.fields(settings.Config) if f.type in (int, float)]
ZERO_OK = {"normal_class", "pollution_rate", "calibration", "seed", "pca", "ae_weight_decay", "svdd_weight_decay",
           "encoder_weight_decay",
           "geom_weight_decay", "rcae_lambda",
           "svdd_warmup", "checkpoint_seconds", "ocnn_clip"}     # the numeric fields where 0 means something

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (run on a GPU machine)")

KILLER = """
import os, signal, sys
sys.path.insert(0, {here!r})
import run, training
limit, seen, batches = int(sys.argv[1]), [0], training.batches

def counted(*args):                                 # SIGKILL at the limit-th mini-batch: no cleanup at all
    for idx in batches(*args):
        seen[0] += 1
        if seen[0] == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        yield idx

training.batches = counted
run.main(sys.argv[2:])
"""


def _images(n=64, seed=0, shape=(1, 28, 28)):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


class _Identity(nn.Module):
    """A stand-in phi whose output is its input: phi(x) = x, rep_dim = x's width."""

    def __init__(self, rep_dim=None):
        super().__init__()
        self.rep_dim = rep_dim

    def forward(self, x):
        return x


class _Stopped(Exception):
    """Raised by a test in place of a kill, after an epoch's checkpoint was saved."""


def _pairwise_auroc(y, s):
    """Oracle, eq. (1) of evaluate.py over all anomaly-normal pairs, O(n^2)."""
    d = s[y == 1][:, None] - s[y == 0][None, :]              # (n_1, n_0) score differences
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def _tied_sample(seed, n=300):
    """Integer scores in 0..5 (many ties), about 30% anomalies that score a little higher on average."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = np.clip(rng.integers(0, 5, n) + y * rng.integers(0, 2, n), 0, 5).astype(float)
    return y, s


def _small_scored_set(n_normal=12, n_anomalous=8):
    y = np.r_[np.zeros(n_normal, int), np.ones(n_anomalous, int)]
    return y, np.random.default_rng(0).random(y.size) + y


def _assert_png_and_closed(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []


def _idx_bytes(arr, magic):
    """An IDX file: big-endian magic, one int32 per dimension, then the uint8 values."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return magic.to_bytes(4, "big") + dims + arr.astype(np.uint8).tobytes()


def _write(path, payload, gz):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open(path + ".gz", "wb") if gz else open(path, "wb")) as f:
        f.write(payload)


def _tiny_mnist(root, n_train=200, n_test=50, size=(6, 5), high=256, squares=False, gz=True, seed=0):
    """A synthetic MNIST under root/mnist, labels 0..9 in turn, pixels drawn from 0..high-1; with squares=True
    (28x28 images) class k also gets a bright square at rows 2k..2k+7, columns 4..11, so that it can be learnt.
    Returns the four arrays: train images, train labels, test images, test labels."""
    rng = np.random.default_rng(seed)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10  # (n,)
        x = rng.integers(0, high, size=(n, *size)).astype(np.uint8)
        if squares:
            for i, k in enumerate(y):
                x[i, 2 * k:2 * k + 8, 4:12] = 255
        _write(os.path.join(root, "mnist", f"{prefix}-images-idx3-ubyte"), _idx_bytes(x, 2051), gz)
        _write(os.path.join(root, "mnist", f"{prefix}-labels-idx1-ubyte"), _idx_bytes(y, 2049), gz)
        out += [x, y]
    return out


def _tiny_cifar_arrays(n, seed):
    """n images whose red, green, blue planes are constant 10*k+1, 10*k+2, 10*k+3 (k = image index)."""
    x = np.zeros((n, 3072), np.uint8)
    for k in range(n):
        x[k] = np.repeat([10 * k + 1, 10 * k + 2, 10 * k + 3], 1024)  # R plane, G plane, B plane
    return x, list(np.random.default_rng(seed).integers(0, 10, size=n).tolist())


def _tiny_cifar_pickles(folder, n=4):
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(data.CIFAR_BATCHES[True] + data.CIFAR_BATCHES[False]):
        x, y = _tiny_cifar_arrays(n, seed=i)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": b"tiny"}, f, protocol=4)


def _tiny_cifar_bins(folder, n=4):
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(data.CIFAR_BATCHES[True] + data.CIFAR_BATCHES[False]):
        x, y = _tiny_cifar_arrays(n, seed=i)
        records = np.concatenate([np.array(y, np.uint8)[:, None], x], axis=1)  # (n, 1 + 3072)
        records.tofile(os.path.join(folder, name + ".bin"))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _CutHandler(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends 10, closes: a transfer cut short."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve(folder=None, handler=None):
    """An HTTP server on 127.0.0.1 in a background thread; yields its base URL."""
    handler = handler or functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port_url():
    with socket.socket() as s:  # bind to a free port, then close it: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def _md5(payload):
    return hashlib.md5(payload).hexdigest()


def _targz(path, members):
    """Write a .tar.gz of (TarInfo, bytes or None) pairs."""
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            info.size = len(payload) if payload is not None else 0
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)


def _data_id(cfg):
    return folders.data_identity(cfg.dataset, cfg.data_root)


def _mnist_subset(n_train=600, n_test=1000):
    d = data.one_class_split("mnist", 0, root=DATA)
    return d.x_train[:n_train], d.x_test[:n_test], d.y_test[:n_test].numpy()


@pytest.fixture(scope="session")
def cifar_root():
    """Root with real CIFAR-10 batches (JPEG copy), built once into <repo>/.cache/cifar10; else skip."""
    if not os.path.isfile(CIFAR_JPEG_TAR):
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR_JPEG_TAR}")
    pytest.importorskip("PIL", reason="building the CIFAR-10 batches from JPEG needs Pillow")
    root = os.path.join(HERE, ".cache")
    if not os.path.isfile(os.path.join(root, "cifar10", "cifar-10-batches-py", "test_batch")):
        part = os.path.join(root, "cifar10.part")  # build aside, rename when whole
        shutil.rmtree(part, ignore_errors=True)
        script = os.path.join(os.path.dirname(CIFAR_JPEG_TAR), "to_cifar_batches.py")
        subprocess.run([sys.executable, script, part, "--tar", CIFAR_JPEG_TAR], check=True,
                       stdout=subprocess.DEVNULL)
        os.replace(part, os.path.join(root, "cifar10"))
    return root


@pytest.fixture(scope="session")
def convert():
    """The CIFAR-10 JPEG copy's own converter (to_cifar_batches.py: its decoder and names); else skip."""
    if not os.path.isfile(CIFAR_JPEG_TAR):
        pytest.skip(f"real CIFAR-10 JPEG copy not found at {CIFAR_JPEG_TAR}")
    spec = importlib.util.spec_from_file_location(
        "to_cifar_batches", os.path.join(os.path.dirname(CIFAR_JPEG_TAR), "to_cifar_batches.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def no_plots(request, monkeypatch):
    """A run's plots take most of a short run's time (matplotlib): the tests of what runs do skip them; the
    tests marked `plots` draw them."""
    if "plots" not in request.keywords:
        monkeypatch.setattr(evaluate, "plot_run", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A synthetic MNIST of 300 train and 200 test 28x28 images whose classes can be learnt (for run.py)."""
    root = str(tmp_path_factory.mktemp("tinydata"))
    _tiny_mnist(root, n_train=300, n_test=200, size=(28, 28), high=60, squares=True)
    return root



def _blob(n=40, d=2, seed=0):
    """n points of a standard normal in d dimensions, float64 tensor."""
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)))


def _kkt_violations(model, x, tol):
    """(O3) checked with an exact float64 kernel: the largest violation of each condition."""
    a, C, rho = model["a"], model["C"], model["rho"]
    Ka = (shallow.rbf_kernel(x, x, model["gamma"]).numpy() @ a)
    zero, free, full = a <= 0, (a > 0) & (a < C), a >= C
    return {"a=0: Ka >= rho": max(0.0, (rho - tol - Ka[zero]).max(initial=0.0)),
            "0<a<C: Ka = rho": max(0.0, (np.abs(Ka[free] - rho) - tol).max(initial=0.0)),
            "a=C: Ka <= rho": max(0.0, (Ka[full] - rho - tol).max(initial=0.0))}


def _project(v, C):
    """Euclidean projection onto {0 <= a <= C, sum a = 1}: a = clip(v - lam, 0, C), lam exact.

    sum_i clip(v_i - lam, 0, C) falls piecewise linearly in lam, with kinks at v_i and v_i - C.
    """
    kinks = np.sort(np.r_[v, v - C])                                      # (2n,)
    sums = np.clip(v[None, :] - kinks[:, None], 0, C).sum(1)              # (2n,) falling
    k = np.flatnonzero(sums >= 1)[-1]                                     # last kink with sum >= 1
    lo, hi = kinks[k], kinks[min(k + 1, len(kinks) - 1)]
    s_lo, s_hi = sums[k], sums[min(k + 1, len(kinks) - 1)]
    lam = lo if s_lo == s_hi else lo + (s_lo - 1) * (hi - lo) / (s_lo - s_hi)
    return np.clip(v - lam, 0, C)


def _dual_objective(a, K):
    """(O2)'s objective 1/2 a^T K a."""
    a = np.asarray(a, np.float64)
    return float(0.5 * a @ np.asarray(K, np.float64) @ a)


def _projected_gradient(K, C, steps=2000):
    """Oracle for (O2): projected gradient with step 1 / lambda_max(K), from the uniform a = 1/n."""
    a, lr = np.full(len(K), 1.0 / len(K)), 1.0 / np.linalg.eigvalsh(K).max()
    for _ in range(steps):
        a = _project(a - lr * (K @ a), C)
    return a


DIGITS = (2, 5, 7)  # the folder's classes '2', '5', '7' -> labels 0, 1, 2


def _digits(train, per_class=5):
    """The first `per_class` real MNIST images of each digit in DIGITS: {digit: [(idx index, (28, 28) uint8)]}."""
    x, y = data.load_mnist(DATA, train)
    return {d: [(int(i), x[i]) for i in np.flatnonzero(y == d)[:per_class]] for d in DIGITS}


def _digit_folder(root, per_class=5):
    """Write the digits as 8-bit greyscale PNGs root/{train,test}/<digit>/<idx index>.png; return root."""
    for split, train in (("train", True), ("test", False)):
        for d, images in _digits(train, per_class).items():
            os.makedirs(os.path.join(root, split, str(d)), exist_ok=True)
            for i, img in images:
                Image.fromarray(img, "L").save(os.path.join(root, split, str(d), f"{i:05d}.png"))
    return str(root)


def _expected(train, per_class=5):
    """What the folder loader must return for _digit_folder: the IDX pixels, labels = position in DIGITS."""
    items = [(label, img) for label, d in enumerate(DIGITS) for _, img in _digits(train, per_class)[d]]
    return np.stack([img for _, img in items]), np.array([label for label, _ in items], np.int64)


def _write_idx(root, train, x, y):
    """x uint8 (N, 28, 28), y labels -> raw IDX files under root/mnist/, as data.load_mnist reads them."""
    prefix = "train" if train else "t10k"
    os.makedirs(os.path.join(root, "mnist"), exist_ok=True)
    for name, magic, arr in ((f"{prefix}-images-idx3-ubyte", 2051, x), (f"{prefix}-labels-idx1-ubyte", 2049, y)):
        arr = np.ascontiguousarray(arr, np.uint8)
        header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in arr.shape)
        with open(os.path.join(root, "mnist", name), "wb") as f:
            f.write(header + arr.tobytes())


def _png(path, array, mode):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path)


# ---------------------------------------------------------------------------------------------------
# evaluate.py: AUROC against the pairwise definition, and the other metrics
# ---------------------------------------------------------------------------------------------------

def test_eval_auroc_matches_pairwise_definition_with_ties():
    # property: rank-based AUROC == the O(n^2) pair count, ties counting one half
    for seed in range(5):
        y, s = _tied_sample(seed)
        assert evaluate.auroc(y, s) == pytest.approx(_pairwise_auroc(y, s), abs=1e-12)


def test_eval_auroc_hand_example():
    # property: worked example; anomalies {.9,.8,.5} vs normals {.8,.1}: pairs won 1+1, .5+1, 0+1 -> 4.5/6
    assert evaluate.auroc(HAND_Y, HAND_S) == pytest.approx(0.75)


def test_eval_auroc_perfect_separation_is_1():
    # property: every anomaly above every normal -> 1
    assert evaluate.auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0


def test_eval_auroc_reversed_is_0():
    # property: every anomaly below every normal (a flipped score sign) -> 0
    assert evaluate.auroc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0


def test_eval_auroc_all_tied_is_half():
    # property: a constant score cannot rank -> 0.5
    assert evaluate.auroc([0, 1, 0, 1, 1], [3.0] * 5) == 0.5


def test_eval_check_single_class_raises():
    # property: AUROC is undefined with one class, and says so
    with pytest.raises(ValueError, match="both normal"):
        evaluate.auroc([0, 0, 0], [0.1, 0.2, 0.3])


def test_eval_check_nan_raises():
    # property: a NaN score is an error, not a silently wrong rank
    with pytest.raises(ValueError, match="NaN"):
        evaluate.auroc([0, 1, 0], [0.1, np.nan, 0.3])


def test_eval_check_length_mismatch_raises():
    # property: labels and scores must pair up
    with pytest.raises(ValueError, match="same length"):
        evaluate.auroc([0, 1, 0], [0.1, 0.2])


def test_eval_check_rejects_labels_other_than_0_1():
    # property: labels are 0 (normal) / 1 (anomaly) only, e.g. not raw class ids
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        evaluate.auroc([0, 1, 2], [0.1, 0.2, 0.3])


def test_eval_roc_trapezoid_area_equals_auroc():
    # property: trapezoid area under roc_curve == auroc (ties are diagonal steps)
    for seed in range(5):
        y, s = _tied_sample(seed)
        fpr, tpr, _ = evaluate.roc_curve(y, s)
        area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
        assert area == pytest.approx(evaluate.auroc(y, s), abs=1e-12)


def test_eval_roc_curve_one_point_per_distinct_score():
    # property: starts at (0, 0), ends at (1, 1), thresholds strictly decreasing, one point per distinct score
    fpr, tpr, t = evaluate.roc_curve(HAND_Y, HAND_S)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(t) < 0) and len(t) == 1 + len(set(HAND_S))


def test_eval_average_precision_hand_example():
    # property: worked example of AP = sum_k (R_k - R_{k-1}) P_k, the tie at 0.8 being one threshold:
    #   t=0.9: TP=1 FP=0 -> P=1,   R=1/3
    #   t=0.8: TP=2 FP=1 -> P=2/3, R=2/3
    #   t=0.5: TP=3 FP=1 -> P=3/4, R=1
    #   t=0.1: TP=3 FP=2 -> P=3/5, R=1   (recall does not grow: adds 0)
    #   AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4 = 12/36 + 8/36 + 9/36 = 29/36
    assert evaluate.average_precision(HAND_Y, HAND_S) == pytest.approx(29 / 36)


def test_eval_average_precision_perfect_ranking_is_1():
    # property: all anomalies ranked above all normals -> AP = 1
    assert evaluate.average_precision([0, 1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8, 0.3]) == pytest.approx(1.0)


def test_eval_average_precision_ignores_order_within_ties():
    # property: tied scores form one threshold, so shuffling the input does not change AP
    y, s = _tied_sample(0)
    perm = np.random.default_rng(1).permutation(len(y))
    assert evaluate.average_precision(y[perm], s[perm]) == pytest.approx(evaluate.average_precision(y, s))


def test_eval_summarize_counts_and_metrics():
    # property: summarize reports the same numbers as the metric functions, plus the class counts
    m = evaluate.summarize(HAND_Y, HAND_S)
    assert m == {"auroc": pytest.approx(0.75), "average_precision": pytest.approx(29 / 36),
                 "n_normal": 2, "n_anomalous": 3}


# ---------------------------------------------------------------------------------------------------
# evaluate.py: the plots
# ---------------------------------------------------------------------------------------------------

def test_eval_plot_history_writes_png(tmp_path):
    # property: plot_history writes a PNG (parent folders created), skips empty stages, closes its figure
    histories = {"svdd": [{"epoch": e, "loss": 2 / e, "lr": 1e-3, "R": 0.1 * e} for e in (1, 2, 3)], "empty": []}
    _assert_png_and_closed(evaluate.plot_history(histories, tmp_path / "a" / "b" / "history.png"))


def test_eval_plot_score_hist_writes_png(tmp_path):
    # property: plot_score_hist writes a PNG and closes its figure
    y, s = _small_scored_set()
    _assert_png_and_closed(evaluate.plot_score_hist(y, s, tmp_path / "hist.png", title="t"))


def test_eval_plot_roc_pr_writes_png(tmp_path):
    # property: plot_roc_pr writes a PNG and closes its figure
    y, s = _small_scored_set()
    _assert_png_and_closed(evaluate.plot_roc_pr(y, s, tmp_path / "roc_pr.png"))


def test_eval_plot_extremes_writes_png_gray(tmp_path):
    # property: plot_extremes writes a PNG for 1-channel images in any range and closes its figure
    y, s = _small_scored_set()
    images = np.random.default_rng(1).normal(size=(y.size, 1, 5, 5))      # min-maxed per image for display
    _assert_png_and_closed(evaluate.plot_extremes(images, s, y, tmp_path / "gray.png", k=3))


def test_eval_plot_extremes_writes_png_rgb(tmp_path):
    # property: plot_extremes writes a PNG for 3-channel (C, H, W) images and closes its figure
    y, s = _small_scored_set()
    images = np.random.default_rng(1).normal(size=(y.size, 3, 5, 5))
    _assert_png_and_closed(evaluate.plot_extremes(images, s, y, tmp_path / "rgb.png", k=2))


# ---------------------------------------------------------------------------------------------------
# svdd.py: the center, the losses, the propositions
# ---------------------------------------------------------------------------------------------------

def test_svdd_center_rule_hand_values():
    # property: c = mean phi(x); |c_j| < 0.1 becomes +-0.1 keeping its sign, an exact 0 becomes +0.1
    z = torch.tensor([[0.10, -0.10, 0.0, 1.0, -0.2, 0.03],
                      [0.00, 0.00, 0.0, 0.0, -0.4, -0.13]])     # means: .05 -.05 0 .5 -.3 -.05
    c = svdd.init_center(_Identity(), z)
    assert torch.allclose(c, torch.tensor([0.1, -0.1, 0.1, 0.5, -0.3, -0.1]))


def test_svdd_phi_has_no_bias_and_unbounded_output():
    # property: phi has no bias and no bounded output (Prop. 2 and 3): outputs grow with the input
    phi = ae.build_encoder("mnist")
    assert all("bias" not in n for n, _ in phi.named_parameters())
    phi.eval()
    with torch.no_grad():
        small, large = phi(_images(4)).abs().max(), phi(1000 * _images(4)).abs().max()
    assert large > 100 * small


def test_svdd_one_class_loss_hand_value():
    # property: eq. (4) without weight decay is the mean squared distance
    assert svdd.one_class_loss(torch.tensor([1.0, 4.0, 9.0, 16.0])).item() == pytest.approx(7.5)


def test_svdd_soft_boundary_loss_hand_value():
    # property: eq. (3) is R^2 + mean slack / nu; R = 2: slack max(0, d - 4) = 0, 0, 5, 12 -> mean 4.25;
    # / nu 0.5 = 8.5; + R^2 4 = 12.5
    assert svdd.soft_boundary_loss(torch.tensor([1.0, 4.0, 9.0, 16.0]), 2.0, 0.5).item() == pytest.approx(12.5)


@pytest.mark.parametrize("nu", [0.01, 0.1, 0.33, 1.0])
def test_svdd_radius_satisfies_nu_property(nu):
    # property (Prop. 4): frac(d > R) <= nu <= frac(d >= R), also with ties
    d = torch.randint(0, 20, (997,), generator=torch.Generator().manual_seed(1)).float()
    R = svdd.radius_from_quantile(d, nu)
    assert (d > R).float().mean() <= nu <= (d >= R).float().mean()


@pytest.mark.parametrize("objective", ["svdd", "soft-svdd"])
def test_svdd_training_moves_weights_and_scores_vary(objective):
    # property (collapse guard): training changes phi's parameters and the scores are not constant
    torch.manual_seed(0)
    phi = ae.build_encoder("mnist")
    before = [p.detach().clone() for p in phi.parameters()]
    x = _images(60)
    c, R, hist = svdd.train_svdd(phi, x, objective=objective, epochs=3, warmup=1, lr=1e-3, weight_decay=0.5e-6,
                                 batch_size=20, verbose=False)
    assert all(not torch.equal(a, b) for a, b in zip(before, phi.parameters()))
    assert svdd.svdd_scores(phi, c, _images(30, seed=2), R).std() > 1e-6


def test_svdd_soft_boundary_nu_property_after_training():
    # property (Prop. 4) after soft-boundary training: at most about nu of the training points lie outside
    torch.manual_seed(0)
    phi, x, nu = ae.build_encoder("mnist"), _images(100), 0.1
    c, R, hist = svdd.train_svdd(phi, x, objective="soft-svdd", nu=nu, epochs=4, warmup=2, lr=1e-3,
                                 weight_decay=0.5e-6, batch_size=25, verbose=False)
    dist = svdd.svdd_scores(phi, c, x).sqrt()
    assert R > 0 and (dist > R).float().mean() <= nu
    assert hist[-1]["frac_out"] <= nu


def test_svdd_score_sign():
    # property: a point farther from c scores higher; soft-boundary subtracts R^2
    c = torch.tensor([1.0, 1.0])
    x = torch.tensor([[1.0, 1.5], [4.0, 5.0]])
    s = svdd.svdd_scores(_Identity(), c, x, R=0.5)
    assert torch.allclose(s, torch.tensor([0.25 - 0.25, 25.0 - 0.25]))


# ---------------------------------------------------------------------------------------------------
# ocnn.py: the loss, r, the options
# ---------------------------------------------------------------------------------------------------

def test_ocnn_loss_hand_values():
    # property: 1/2||w||^2 + 1/2||V||_F^2 + 1/nu mean max(0, r - y) - r, by hand
    head = ocnn.OCNN(rep_dim=2, hidden=2, normalize=False)
    with torch.no_grad():
        head.V.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))     # ||V||_F^2 = 5
        head.w.weight.copy_(torch.tensor([[1.0, -1.0]]))                # ||w||^2 = 2
    y = head(torch.tensor([[1.0, 1.0], [3.0, 0.0]]))                    # V z = (1,2),(3,0) -> y = -1, 3
    assert torch.allclose(y, torch.tensor([-1.0, 3.0]))
    # r = 1: hinge max(0, 2), max(0, -2) -> mean 1; / nu 0.5 = 2; total 1 + 2.5 + 2 - 1 = 4.5
    assert ocnn.ocnn_loss(y, 1.0, head, 0.5).item() == pytest.approx(4.5)


def test_ocnn_head_has_no_bias():
    # property: V and w carry no bias
    for act in ocnn.ACTIVATIONS:
        assert [n for n, _ in ocnn.OCNN(8, activation=act).named_parameters()] == ["V.weight", "w.weight"]


@pytest.mark.parametrize("nu", [0.01, 0.1, 0.5])
def test_ocnn_r_is_the_nu_quantile(nu):
    # property: after an r update, frac(y < r) <= nu <= frac(y <= r), ties included
    y = torch.randint(-10, 10, (1001,), generator=torch.Generator().manual_seed(2)).float()
    r = ocnn.update_r(y, nu)
    assert (y < r).float().mean() <= nu <= (y <= r).float().mean()


def test_ocnn_z_only_freezes_encoder_and_joint_trains_it():
    # property: z-only leaves every encoder parameter and buffer unchanged; joint changes them
    x = _images(40)
    for joint in (False, True):
        torch.manual_seed(0)
        enc = ae.build_encoder("mnist")
        before = {k: v.clone() for k, v in enc.state_dict().items()}
        head, r, hist = ocnn.train_ocnn(enc, x, joint=joint, nu=0.1, epochs=2, encoder_lr=1e-3, normalize=False,
                                        clip=0.0, batch_size=20, verbose=False)
        changed = [not torch.equal(before[k], v) for k, v in enc.state_dict().items()]
        assert any(changed) if joint else not any(changed)
        assert hist[-1]["frac_below"] <= 0.1


def test_ocnn_unit_codes_ignore_the_code_length():
    # property: with normalize, the head sees z / ||z||: scaling a code by any t > 0 leaves y_hat as it was
    torch.manual_seed(0)
    head, z = ocnn.OCNN(8, hidden=4, normalize=True), torch.randn(20, 8)
    t = torch.rand(20, 1) * 100 + 0.01
    assert torch.allclose(head(t * z), head(z), atol=1e-5)
    assert torch.allclose(head(z), head.w(head.V(z / z.norm(dim=1, keepdim=True))).squeeze(1))


def test_ocnn_clip_caps_every_step_gradient_norm(monkeypatch):
    # property: with clip c, the gradient that reaches each Adam step (head and encoder together) has norm
    # <= c; without it, the same run's gradients are larger
    norms = []
    step = torch.optim.Adam.step

    def recording_step(self, *a, **kw):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    x = _images(40)
    for clip in (0.0, 1e-3):
        norms.clear()
        torch.manual_seed(0)
        ocnn.train_ocnn(ae.build_encoder("mnist"), x, joint=True, nu=0.1, epochs=2, clip=clip, normalize=False,
                        batch_size=20, verbose=False)
        if clip:
            assert len(norms) == 4 and max(norms) <= clip * (1 + 1e-4)
        else:
            assert min(norms) > 1e-2


def test_ocnn_encoder_lr_drop_off_drops_only_the_head_lr(monkeypatch):
    # property: after the drop epoch the head's lr is x0.1; the encoder's is x0.1 too by default, and stays
    # at encoder_lr with encoder_lr_drop=False (the seed lab's schedule)
    lrs = []
    step = torch.optim.Adam.step

    def recording_step(self, *a, **kw):
        lrs.append(tuple(g["lr"] for g in self.param_groups))
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    for drop, encoder_after in ((True, 1e-4), (False, 1e-3)):
        lrs.clear()
        torch.manual_seed(0)
        ocnn.train_ocnn(ae.build_encoder("mnist"), _images(20), joint=True, nu=0.1, epochs=2, lr=1e-2,
                        lr_drop_epoch=1, encoder_lr=1e-3, encoder_lr_drop=drop, normalize=False, clip=0.0,
                        batch_size=20, verbose=False)
        assert lrs[0] == (1e-2, 1e-3)
        assert lrs[1] == pytest.approx((1e-3, encoder_after))


def test_ocnn_score_sign():
    # property: s = r - y_hat, so a lower output scores as more anomalous
    head = ocnn.OCNN(rep_dim=2, hidden=2, normalize=False)
    with torch.no_grad():
        head.V.weight.copy_(torch.eye(2))
        head.w.weight.copy_(torch.tensor([[1.0, 1.0]]))
    s = ocnn.ocnn_scores(_Identity(), head, 1.0, torch.tensor([[2.0, 2.0], [0.0, -1.0]]))
    assert torch.allclose(s, torch.tensor([1.0 - 4.0, 1.0 + 1.0]))


# ---------------------------------------------------------------------------------------------------
# rcae.py: the soft threshold and the limits of lambda
# ---------------------------------------------------------------------------------------------------

def test_rcae_soft_threshold_hand_values():
    # property: S_1(b) = sign(b) max(|b| - 1, 0), by hand
    b = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5])
    assert torch.equal(rcae.soft_threshold(b, 1.0), torch.tensor([-2.0, 0, 0, 0, 0, 0, 1.5]))


def test_rcae_huge_lambda_is_the_plain_autoencoder():
    # property: lambda -> infinity keeps N = 0, and RCAE trains exactly like the AE (same seed, same weights)
    x = _images(40)
    torch.manual_seed(0)
    plain = ae.build_autoencoder("mnist")
    ae.train_autoencoder(plain, x, epochs=4, batch_size=16, weight_decay=0.5e-3, milestones=(2,), verbose=False)
    torch.manual_seed(0)
    robust, N, hist = rcae.train_rcae(ae.build_autoencoder("mnist"), x, lam=1e9, outer_iters=2, epochs_per_iter=2,
                                      batch_size=16, weight_decay=0.5e-3, milestones=(2,), verbose=False)
    assert torch.count_nonzero(N) == 0 and hist[-1]["N_nonzero"] == 0
    for (name, a), b in zip(plain.state_dict().items(), robust.state_dict().values()):
        assert torch.equal(a, b), name


def test_rcae_zero_lambda_absorbs_the_whole_residual():
    # property: lambda = 0 makes N = X - AE(X) exactly
    torch.manual_seed(0)
    x = _images(20)
    model, N, _ = rcae.train_rcae(ae.build_autoencoder("mnist"), x, lam=0.0, outer_iters=1, epochs_per_iter=1,
                                  batch_size=10, weight_decay=0.5e-3, milestones=(50,), verbose=False)
    assert torch.equal(N, x - ae.reconstruct(model, x))


def test_rcae_history_records_each_outer_iteration():
    # property: every outer iteration logs the reconstruction loss, ||N||_1 and N's non-zero fraction
    torch.manual_seed(0)
    _, N, hist = rcae.train_rcae(ae.build_autoencoder("mnist"), _images(20), lam=0.5, outer_iters=3,
                                 epochs_per_iter=1, batch_size=10, weight_decay=0.5e-3, milestones=(50,),
                                 verbose=False)
    outer = [h for h in hist if "outer" in h]
    assert [h["outer"] for h in outer] == [1, 2, 3]
    assert outer[-1]["N_l1"] == pytest.approx(N.abs().sum().item(), rel=1e-5)
    assert 0 <= outer[-1]["N_nonzero"] <= 1 and outer[-1]["recon"] > 0


# ---------------------------------------------------------------------------------------------------
# ae.py: the networks, their initializations and scores
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset,shape,rep_dim", [("mnist", (1, 28, 28), 32), ("cifar10", (3, 32, 32), 128)])
def test_ae_shapes(dataset, shape, rep_dim):
    # property: the AE reconstructs the input's shape; the encoder alone returns z (B, rep_dim)
    model = ae.build_autoencoder(dataset)
    x = _images(4, shape=shape)
    assert model(x).shape == x.shape
    assert model.encoder(x).shape == (4, rep_dim)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_ae_has_no_bias(dataset):
    # property: not one parameter named or shaped like a bias (Deep SVDD Prop. 2)
    for name, p in ae.build_autoencoder(dataset).named_parameters():
        assert "bias" not in name and p.dim() >= 2, name


def test_ae_encoder_state_loads_into_phi():
    # property: the encoder's state dict, BN running statistics included, loads into a stand-alone phi
    torch.manual_seed(0)
    model = ae.build_autoencoder("mnist")
    ae.train_autoencoder(model, _images(40), epochs=1, batch_size=20, weight_decay=0.5e-3, milestones=(50,),
                         verbose=False)
    assert "bn1.running_mean" in model.encoder.state_dict()
    phi = ae.build_encoder("mnist")
    phi.load_state_dict(model.encoder.state_dict())                  # strict: every key matches
    x = _images(8, seed=1)
    assert torch.equal(ae.encode(phi, x), ae.encode(model.encoder, x))
    assert torch.equal(ae.encode(ae.encoder_copy(model), x), ae.encode(phi, x))


def test_ae_affine_batchnorm_state_carries_into_phi():
    # property: with --bn-affine the BatchNorm scale and shift are parameters, and phi starts from the AE's
    torch.manual_seed(0)
    model = ae.build_autoencoder("mnist", bn_affine=True)
    ae.train_autoencoder(model, _images(40), epochs=1, batch_size=20, weight_decay=0.5e-3, milestones=(50,),
                         verbose=False)
    shift = model.encoder.bn1.bias
    assert shift is not None and shift.abs().sum() > 0               # it trained away from 0
    phi = ae.encoder_copy(model)
    assert phi.bn_affine and torch.equal(phi.bn1.bias, shift)
    x = _images(8, seed=1)
    assert torch.equal(ae.encode(phi, x), ae.encode(model.encoder, x))
    with pytest.raises(RuntimeError):                                 # a plain phi has no place for them
        ae.build_encoder("mnist").load_state_dict(model.encoder.state_dict())


def test_ae_glorot_init_draws_from_the_glorot_range():
    # property: glorot_init draws each weight uniformly from +-gain * sqrt(6 / (fan_in + fan_out))
    torch.manual_seed(0)
    model = ae.build_autoencoder("mnist")
    ae.glorot_init(model)
    gain = (2 / (1 + ae.LRELU_SLOPE ** 2)) ** 0.5
    for w, fans, g in [(model.encoder.conv2.weight, 8 * 25 + 4 * 25, gain),
                       (model.decoder.deconv2.weight, 4 * 25 + 8 * 25, gain),
                       (model.encoder.fc.weight, 196 + 32, 1.0)]:
        bound = g * (6 / fans) ** 0.5
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        assert abs(w.std().item() - bound / 3 ** 0.5) < 0.1 * bound  # uniform: std = bound / sqrt(3)


def test_ae_dictionary_filters_survive_identical_atoms():
    # property: images that are blank but for one small square (many identical patches, so atoms coded
    # identically) still give finite unit-norm filters instead of a singular solve
    x = torch.zeros(50, 1, 28, 28)
    x[:, :, 10:14, 10:14] = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    D = ae.dictionary_filters(x, 8, 5, iters=3)
    assert D.shape == (8, 1, 5, 5) and torch.isfinite(D).all()
    assert torch.allclose(D.flatten(1).norm(dim=1), torch.ones(8), atol=1e-5)


def test_ae_dictionary_filters_code_mnist_patches_better_than_random_atoms():
    # property: the learned atoms (unit norm) reach a lower lasso objective on held-out MNIST patches than
    # random unit-norm atoms, the same number of them
    x = data.one_class_split("mnist", 2, root=DATA).x_train
    W = ae.dictionary_filters(x[:1000], 8, 5, iters=10, n_patches=5000)
    assert W.shape == (8, 1, 5, 5) and torch.allclose(W.flatten(1).norm(dim=1), torch.ones(8))
    P = ae.image_patches(x[1000:], 5, n_images=50, seed=1)

    def lasso(D):
        A = ae.sparse_code(P, D, 1.0)
        return 0.5 * (P - A @ D).square().sum() + A.abs().sum()
    random_atoms = nn.functional.normalize(torch.randn(8, 25, generator=torch.Generator().manual_seed(0)), dim=1)
    assert lasso(W.flatten(1)) < 0.8 * lasso(random_atoms)


def test_ae_reconstruction_scores_are_per_sample_squared_error():
    # property: s(x) = sum over C,H,W of (x - ae(x))^2, one value per image
    torch.manual_seed(0)
    model = ae.build_autoencoder("mnist")
    x = _images(5)
    expected = ((ae.reconstruct(model, x) - x) ** 2).sum(dim=(1, 2, 3))
    assert torch.allclose(ae.reconstruction_scores(model, x, batch_size=2), expected)


def test_ae_reconstruction_error_hand_values():
    # property: ||x - x_hat||^2 summed over C, H, W, one value per image: 2 images of 2 x 1 x 2 pixels
    x = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[3.0, -4.0]]]])     # (2, 2, 1, 2)
    assert torch.equal(ae.reconstruction_error(torch.zeros_like(x), x), torch.tensor([5.0, 25.0]))


# ---------------------------------------------------------------------------------------------------
# fast_ops.py: the fast ops equal the plain ones
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset,shape", [("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_ae_fused_upsample_equals_plain_layers(dataset, shape, monkeypatch):
    # property: the fast up2_deconv gives the outputs and gradients of deconv(up2(x)) within float tolerance
    torch.manual_seed(0)
    model, x = ae.build_autoencoder(dataset), _images(4, shape=shape)
    results = []
    for fused in (True, False):
        monkeypatch.setattr(fast_ops, "UPSAMPLE", fused)
        model.zero_grad()
        y = model(x)
        y.pow(2).sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    (y1, g1), (y0, g0) = results
    assert torch.allclose(y1, y0, atol=1e-5)
    assert all((a - b).abs().max() <= 1e-4 * b.abs().max() for a, b in zip(g1, g0))   # float rounding only


def test_fast_ops_plain_switch_gives_the_same_network_and_restores_itself():
    # property: inside fast_ops.plain_ops() the networks run on F.max_pool2d and deconv(up2(x)), with the
    # same outputs (float rounding aside), and the fast ops are back afterwards
    torch.manual_seed(0)
    model, x = ae.build_autoencoder("mnist").eval(), _images(4)
    with torch.no_grad():
        fast = model(x)
        with fast_ops.plain_ops():
            assert not fast_ops.POOL and not fast_ops.UPSAMPLE
            plain = model(x)
    assert fast_ops.POOL and fast_ops.UPSAMPLE and torch.allclose(fast, plain, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 8, 28, 28), (3, 4, 7, 7)])
def test_ae_max_pool2_equals_max_pool2d(shape):
    # property: fast_ops.max_pool2 gives exactly F.max_pool2d(x, 2), with and without autograd, ties and odd
    # sizes too
    x = torch.randn(shape)
    x[:, :, :4, :4] = 0.5                                              # exact ties, as on MNIST's background
    with torch.no_grad():
        assert torch.equal(fast_ops.max_pool2(x), torch.nn.functional.max_pool2d(x, 2))
    xr = x.clone().requires_grad_()
    assert torch.equal(fast_ops.max_pool2(xr), torch.nn.functional.max_pool2d(x, 2))


@pytest.mark.parametrize("shape", [(3, 8, 28, 28), (3, 4, 14, 14), (3, 4, 7, 7)])
def test_ae_max_pool2_gradient_goes_where_max_pool2d_sends_it(shape):
    # property: with autograd, fast_ops.max_pool2's gradient equals F.max_pool2d's exactly: each window's gradient
    # on its first maximum in row-major order, also where two, three or four corners tie
    x = torch.randint(0, 3, shape).float()                             # small integers: many ties
    x[0] = torch.randn(shape[1:])                                      # and one image without ties
    g = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    grads = []
    for pool in (fast_ops.max_pool2, lambda t: torch.nn.functional.max_pool2d(t, 2)):
        xr = x.clone().requires_grad_()
        pool(xr).backward(g)
        grads.append(xr.grad)
    assert torch.equal(grads[0], grads[1])


# ---------------------------------------------------------------------------------------------------
# training.py: batches and checkpoints
# ---------------------------------------------------------------------------------------------------

def test_training_batches_cover_each_index_once():
    # property: the batches are int64 chunks of batch_size (last shorter) covering 0..n-1 exactly once
    chunks = list(training.batches(10, 4, torch.Generator().manual_seed(0)))
    assert [len(c) for c in chunks] == [4, 4, 2] and all(c.dtype == torch.int64 for c in chunks)
    assert sorted(torch.cat(chunks).tolist()) == list(range(10))


@pytest.mark.parametrize("stage", ["rcae", "soft-svdd", "ocnn-joint"])
def test_training_loops_resume_from_a_checkpoint_to_the_uninterrupted_result(stage, tmp_path, monkeypatch):
    # property: stopped after epoch 2 of 4 and started again on its checkpoint, each loop ends with the
    # weights and its own quantities (RCAE's N, R, OC-NN's r) of a run that was never stopped
    x = _images(64)

    def train(checkpoint):
        torch.manual_seed(0)
        model = ae.build_autoencoder("mnist")
        kw = dict(batch_size=16, seed=0, checkpoint=checkpoint)
        if stage == "rcae":
            _, N, _ = rcae.train_rcae(model, x, lam=0.1, outer_iters=2, epochs_per_iter=2, weight_decay=0.5e-3,
                                      milestones=(50,), **kw)
            return list(model.state_dict().values()) + [N]
        phi = ae.encoder_copy(model)
        if stage == "soft-svdd":
            c, R, _ = svdd.train_svdd(phi, x, objective="soft-svdd", epochs=4, warmup=1, weight_decay=0.5e-6,
                                      **kw)
            return list(phi.state_dict().values()) + [c, torch.tensor(R)]
        head, r, _ = ocnn.train_ocnn(phi, x, joint=True, epochs=4, lr_drop_epoch=2, **kw)
        return list(phi.state_dict().values()) + list(head.state_dict().values()) + [torch.tensor(r)]

    def stop_after_epoch_2(name, record, epochs):
        if record["epoch"] == 2:
            raise _Stopped

    whole = train(None)
    checkpoint = lambda: training.Checkpoint(str(tmp_path / "state.pt"), seconds=0)
    monkeypatch.setattr(training, "print_epoch", stop_after_epoch_2)
    with pytest.raises(_Stopped):
        train(checkpoint())
    monkeypatch.setattr(training, "print_epoch", lambda *a: None)
    resumed = train(checkpoint())
    assert len(resumed) == len(whole) and all(torch.equal(a, b) for a, b in zip(resumed, whole))


# ---------------------------------------------------------------------------------------------------
# shallow.py: PCA, KDE, OC-SVM, Isolation Forest
# ---------------------------------------------------------------------------------------------------

def test_pca_keeps_smallest_k_reaching_variance():
    # property: k is the smallest number of components whose eigenvalue share reaches the fraction
    x = _blob(50, 6) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    lam = np.sort(np.linalg.eigvalsh(np.cov(x.numpy().T)))[::-1]           # oracle: numpy's covariance
    share = np.cumsum(lam) / lam.sum()
    for v in (0.3, 0.6, 0.9, 0.95, 0.99, 1.0):
        expected = next(k + 1 for k in range(6) if share[k] >= v - 1e-12)
        mu, V = shallow.pca_fit(x, v)
        assert V.shape == (6, expected)
        assert torch.allclose(V.T @ V, torch.eye(expected, dtype=torch.float64), atol=1e-10)


def test_pca_is_fitted_on_training_data_only():
    # property: test data is centred with the TRAINING mean, not its own
    x = _blob(30, 4)
    mu, V = shallow.pca_fit(x, 0.9)
    z_train = shallow.pca_apply(x, mu, V)
    shift = torch.tensor([10.0, -3.0, 2.0, 1.0], dtype=torch.float64)
    z_moved = shallow.pca_apply(x + shift, mu, V)
    assert torch.allclose(z_train.mean(0), torch.zeros(V.shape[1], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z_moved, z_train + shift @ V, atol=1e-10)


def test_pca_flattens_images():
    # property: (n, C, H, W) inputs are flattened to (n, C H W)
    x = _blob(20, 12).reshape(20, 1, 3, 4)
    mu, V = shallow.pca_fit(x, 1.0)
    assert mu.shape == (12,) and shallow.pca_apply(x, mu, V).shape == (20, V.shape[1])


def test_kde_of_one_training_point_is_the_gaussian_density():
    # property: with n = 1, (K1) is log N(x; x_1, h^2 I) exactly
    x1 = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    x = _blob(5, 3)
    h = 0.7
    sq = ((x - x1) ** 2).sum(1)
    expected = -sq / (2 * h ** 2) - 1.5 * math.log(2 * math.pi * h ** 2)
    assert torch.allclose(shallow.kde_log_density(x, x1, h), expected, atol=1e-12)


def test_kde_equals_the_brute_force_sum():
    # property: (K1) equals log(1/n sum_i prod_j N(x_j; x_ij, h^2)) summed by hand
    xt, x = _blob(4, 2, seed=1).numpy(), _blob(3, 2, seed=2).numpy()
    for h in (0.3, 1.0, 2.5):
        for p, got in zip(x, shallow.kde_log_density(x, xt, h)):
            dens = sum(math.prod(math.exp(-(p[j] - q[j]) ** 2 / (2 * h * h)) / math.sqrt(2 * math.pi * h * h)
                                 for j in range(2)) for q in xt) / len(xt)
            assert abs(float(got) - math.log(dens)) < 1e-10


def test_kde_far_point_stays_finite():
    # property: the log-sum-exp is exact where the density underflows (no -inf, no tree bounds)
    got = shallow.kde_log_density(torch.tensor([[1e3, 0.0]]), _blob(10), 0.05)
    assert torch.isfinite(got).all() and got.item() < -1e7


def test_contiguous_folds_are_kfold_without_shuffling():
    # property: folds in order, the first n % k one longer, covering range(n) once
    folds = shallow.contiguous_folds(11, 3)
    assert [(f.start, f.stop) for f in folds] == [(0, 4), (4, 8), (8, 11)]


def test_kde_cv_picks_the_brute_force_choice():
    # property: (K2) equals the held-out log-likelihood summed by loops over folds and points
    x = _blob(13, 2, seed=3).numpy()
    grid = [0.1, 0.3, 0.6, 1.2, 3.0]
    best, totals = shallow.kde_cv_bandwidth(x, grid, folds=3)
    brute = {}
    for h in grid:
        total = 0.0
        for fold in shallow.contiguous_folds(len(x), 3):
            held = range(fold.start, fold.stop)
            rest = [i for i in range(len(x)) if i not in held]
            for i in held:
                dens = sum(math.exp(-((x[i] - x[j]) ** 2).sum() / (2 * h * h)) for j in rest)
                total += math.log(dens / len(rest) / (2 * math.pi * h * h))
        brute[h] = total
    assert best == max(grid, key=lambda h: brute[h])
    assert all(abs(totals[h] - brute[h]) < 1e-8 for h in grid)


def test_ocsvm_nu_property():
    # property: outliers (score > tol, i.e. a_i = C) <= nu <= support vectors (a_i > 0), on the training set
    x = _blob(60)
    for nu in (0.05, 0.2, 0.5):
        model = shallow.ocsvm_fit(x, nu, 0.5, dtype=torch.float64)
        s = shallow.ocsvm_scores(x, model).numpy()
        assert (s > model["tol"]).mean() <= nu <= (model["a"] > 0).mean()


def test_ocsvm_kkt_conditions_at_convergence():
    # property: (O3) and the constraints of (O2) hold to the tolerance, with small working sets and a small cache
    x = _blob(50)
    model = shallow.ocsvm_fit(x, 0.2, 0.5, working_set=6, cache_mb=0.01, dtype=torch.float64)
    a = model["a"]
    assert abs(a.sum() - 1) < 1e-12 and a.min() >= 0 and a.max() <= model["C"]
    assert all(v <= 1e-9 for v in _kkt_violations(model, x, model["tol"]).values())


def test_ocsvm_square_gives_the_symmetric_solution():
    # property: the 4 corners of a square get a_i = 1/4, and the scores are symmetric under x -> -x
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    model = shallow.ocsvm_fit(x, 0.5, 0.3, eps=1e-9, dtype=torch.float64)   # starts at (1/2, 1/2, 0, 0)
    assert np.allclose(model["a"], 0.25, atol=1e-8)
    p = _blob(5)
    assert torch.allclose(shallow.ocsvm_scores(p, model), shallow.ocsvm_scores(-p, model), atol=1e-8)


def test_ocsvm_dual_objective_no_worse_than_projected_gradient():
    # property: SMO's 1/2 a^T K a is at most the oracle's (plus rounding)
    x = _blob(20, 3, seed=4)
    model = shallow.ocsvm_fit(x, 0.3, 0.4, eps=1e-8, dtype=torch.float64)
    K = shallow.rbf_kernel(x, x, 0.4).numpy()
    oracle = _projected_gradient(K, model["C"])
    assert _dual_objective(model["a"], K) <= _dual_objective(oracle, K) + 1e-12
    assert np.abs(model["a"] - oracle).max() < 1e-6                        # and it is the same minimiser


def test_ocsvm_working_set_size_does_not_change_the_solution():
    # property: the decomposition (sets of 4) reaches the one-set solution's objective and support vectors
    x = _blob(40, seed=5)
    small = shallow.ocsvm_fit(x, 0.2, 1.0, eps=1e-9, working_set=4, dtype=torch.float64)
    whole = shallow.ocsvm_fit(x, 0.2, 1.0, eps=1e-9, working_set=1000, dtype=torch.float64)
    K = shallow.rbf_kernel(x, x, 1.0).numpy()
    assert abs(_dual_objective(small["a"], K) - _dual_objective(whole["a"], K)) < 1e-10
    assert np.array_equal(small["a"] > 1e-9, whole["a"] > 1e-9)


def test_ocsvm_kernel_svdd_view():
    # property: with an RBF kernel the margin SVs lie on SVDD's sphere, R^2 = 1 - 2 rho + a^T K a
    x = _blob(30, seed=6)
    model = shallow.ocsvm_fit(x, 0.1, 0.5, eps=1e-9, dtype=torch.float64)
    a, K = model["a"], shallow.rbf_kernel(x, x, 0.5).numpy()
    dist2 = 1 - 2 * K @ a + a @ K @ a                                      # ||Phi(x_i) - c||^2, c = sum a Phi
    free = (a > 0) & (a < model["C"])
    assert free.any() and np.allclose(dist2[free], 1 - 2 * model["rho"] + a @ K @ a, atol=1e-8)


def test_gamma_from_data_rules():
    # property: 'scale' = 1 / (d Var x), 'max' = 1 / max pairwise squared distance (by loops)
    x = _blob(7, 3, seed=7)
    assert abs(shallow.gamma_from_data(x, "scale") - 1 / (3 * x.numpy().var())) < 1e-12
    big = max(((p - q) ** 2).sum() for p, q in itertools.product(x.numpy(), repeat=2))
    assert abs(shallow.gamma_from_data(x, "max") - 1 / big) < 1e-12


def test_gamma_by_test_auroc_same_seed_same_result():
    # property: the holdout is drawn from the seed: same seed, same split, gamma and scores
    x_train, x_test = _blob(30, seed=8), torch.cat([_blob(15, seed=9), _blob(15, seed=10) + 3])
    y = np.r_[np.zeros(15, int), np.ones(15, int)]
    r1, r2 = (shallow.ocsvm_gamma_by_test_auroc(x_train, x_test, y, 0.1, (0.1, 1.0), 0.3, seed=1)
              for _ in range(2))
    assert np.array_equal(r1["holdout_index"], r2["holdout_index"]) and r1["gamma"] == r2["gamma"]
    assert torch.equal(r1["scores"], r2["scores"])
    assert set(y[r1["holdout_index"]]) == {0, 1} and len(r1["eval_index"]) == 21


def test_iforest_c_factor_closed_form():
    # property: c(1) = 0, c(2) = 1, c(n) = 2 (ln(n-1) + gamma_E) - 2 (n-1)/n, within 1/(n-1) of exact harmonics
    assert shallow.c_factor(1) == 0 and shallow.c_factor(2) == 1
    for n in range(3, 12):
        assert abs(shallow.c_factor(n) - (2 * (math.log(n - 1) + 0.5772156649) - 2 * (n - 1) / n)) < 1e-12
        exact = 2 * sum(1 / i for i in range(1, n)) - 2 * (n - 1) / n
        assert abs(shallow.c_factor(n) - exact) < 1 / (n - 1)


def test_iforest_scores_in_unit_interval():
    # property: s = 2^(-E h / c(psi)) lies in (0, 1)
    x = _blob(100, 3)
    s = shallow.iforest_scores(x, shallow.iforest_fit(x, 20, 32, seed=0))
    assert bool(((s > 0) & (s < 1)).all())


def test_iforest_same_seed_same_scores():
    # property: the forest is drawn from the seed alone
    x = _blob(80, 3)
    s1, s2, s3 = (shallow.iforest_scores(x, shallow.iforest_fit(x, 10, 32, seed=k)) for k in (5, 5, 6))
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)


def test_iforest_tree_sizes_add_up():
    # property: each split node's points go to its two children; the root holds psi points
    x = np.r_[_blob(60, 2).numpy(), np.zeros((5, 2))]                      # with duplicates: unsplittable nodes
    f = shallow.iforest_fit(x, 5, 40, seed=1)
    size, leaf = f["size"], f["leaf"]
    assert (size[:, 0] == 40).all()
    k = np.flatnonzero(~leaf[0])
    assert np.array_equal(size[:, 2 * k + 1][0] + size[:, 2 * k + 2][0], size[0, k])


def test_iforest_vectorised_walk_equals_a_plain_walk():
    # property: (I2)'s all-at-once walk equals one point, one tree at a time
    x = _blob(50, 3)
    f = shallow.iforest_fit(x, 4, 16, seed=2)
    q = _blob(6, 3, seed=9).numpy()
    expected = []
    for p in q:
        h = []
        for t in range(4):
            k = 0
            while not f["leaf"][t, k]:
                k = 2 * k + 1 + int(p[f["feature"][t, k]] >= f["threshold"][t, k])
            h.append(math.floor(math.log2(k + 1)) + shallow.c_factor(f["size"][t, k]))
        expected.append(sum(h) / 4)
    assert np.allclose(shallow.iforest_path_length(q, f), expected, atol=1e-12)


def test_far_outlier_scores_above_the_cluster_for_every_detector():
    # property: higher = more anomalous, for KDE, OC-SVM and Isolation Forest
    x = _blob(40)
    q = torch.cat([x[:10], torch.tensor([[8.0, 8.0]], dtype=torch.float64)])
    scores = {"kde": shallow.kde_scores(q, x, 0.5),
              "ocsvm": shallow.ocsvm_scores(q, shallow.ocsvm_fit(x, 0.1, 0.5)),
              "iforest": shallow.iforest_scores(q, shallow.iforest_fit(x, 50, 32, seed=0))}
    for name, s in scores.items():
        assert s[-1] > s[:-1].max(), name


@pytest.mark.parametrize("bad", [
    lambda: shallow.kde_log_density(_blob(3), _blob(3), []),               # empty bandwidth grid
    lambda: shallow.kde_cv_bandwidth(_blob(6), [], folds=2),
    lambda: shallow.kde_scores(_blob(3), _blob(3), 0.0),                   # non-positive bandwidth
    lambda: shallow.kde_cv_bandwidth(_blob(6), [1.0, -1.0], folds=2),
    lambda: shallow.kde_cv_bandwidth(_blob(6), [1.0], folds=1),            # too few folds
    lambda: shallow.ocsvm_fit(_blob(10), 0.1, 0.0),                        # non-positive gamma
    lambda: shallow.ocsvm_fit(_blob(10), 0.0, 1.0),                        # nu outside (0, 1]
    lambda: shallow.ocsvm_fit(_blob(10), 1.5, 1.0),
    lambda: shallow.ocsvm_fit(_blob(30), 0.2, 1.0, max_iter=1),            # does not converge
    lambda: shallow.gamma_from_data(_blob(10), "mean"),                    # unknown rule
    lambda: shallow.pca_fit(_blob(10), 0.0),                               # variance outside (0, 1]
    lambda: shallow.pca_fit(_blob(10), 1.2),
    lambda: shallow.iforest_fit(_blob(1), 10, 256),                        # one point cannot be isolated
])
def test_shallow_bad_values_raise_the_module_error(bad):
    # property: every bad value ends in ShallowError (a ValueError) with a sentence saying what to do
    with pytest.raises(shallow.ShallowError) as info:
        bad()
    assert isinstance(info.value, ValueError) and str(info.value).endswith(".")


# ---------------------------------------------------------------------------------------------------
# data.py: the MNIST loader
# ---------------------------------------------------------------------------------------------------

def test_data_mnist_real_shapes_and_dtypes():
    # property: the shipped MNIST loads as uint8 (N, 28, 28) and int64 (N,), 60000 train / 10000 test
    for train, n in ((True, 60000), (False, 10000)):
        x, y = data.load_mnist(DATA, train)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64


def test_data_mnist_real_label_counts():
    # property: the per-digit counts are MNIST's published ones (5923 zeros in train)
    _, y = data.load_mnist(DATA, True)
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    _, y = data.load_mnist(DATA, False)
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_data_idx_gzip_and_raw_read_alike(tmp_path):
    # property: the same IDX content reads the same gzipped or raw; shape comes from the header
    x, y, _, _ = _tiny_mnist(str(tmp_path / "gz"), gz=True)
    _tiny_mnist(str(tmp_path / "raw"), gz=False)
    for root in (tmp_path / "gz", tmp_path / "raw"):
        xs, ys = data.load_mnist(str(root), True)
        assert xs.shape == (200, 6, 5) and np.array_equal(xs, x) and np.array_equal(ys, y)


def test_data_loaders_return_fresh_copies(tmp_path):
    # property: changing a returned array does not change what the next call (served from the cache) returns
    _tiny_mnist(str(tmp_path))
    x, _ = data.load_mnist(str(tmp_path), True)
    x[:] = 0
    assert data.load_mnist(str(tmp_path), True)[0].any()


def test_data_idx_gzip_preferred_over_raw(tmp_path):
    # property: when both exist, the .gz file is the one read
    x, _, _, _ = _tiny_mnist(str(tmp_path), gz=True)
    _write(str(tmp_path / "mnist" / "train-images-idx3-ubyte"), _idx_bytes(255 - x, 2051), gz=False)
    assert np.array_equal(data.load_mnist(str(tmp_path), True)[0], x)


def test_data_idx_truncated_file_names_it(tmp_path):
    # property: an image file shorter than its header announces raises DataError naming the file
    x, _, _, _ = _tiny_mnist(str(tmp_path))
    path = str(tmp_path / "mnist" / "train-images-idx3-ubyte")
    _write(path, _idx_bytes(x, 2051)[:-7], gz=True)
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz.*truncated"):
        data.load_mnist(str(tmp_path), True)


def test_data_idx_bad_magic(tmp_path):
    # property: a label file with the image magic number is refused
    _, y, _, _ = _tiny_mnist(str(tmp_path))
    wrong = _idx_bytes(y, 2049).replace((2049).to_bytes(4, "big"), (2051).to_bytes(4, "big"), 1)
    _write(str(tmp_path / "mnist" / "train-labels-idx1-ubyte"), wrong, gz=True)
    with pytest.raises(data.DataError, match="magic number 2049"):
        data.load_mnist(str(tmp_path), True)


def test_data_idx_corrupt_gzip_stream(tmp_path):
    # property: a gzip stream cut in the middle raises DataError, not EOFError
    _tiny_mnist(str(tmp_path))
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz"):
        data.load_mnist(str(tmp_path), True)


def test_data_idx_count_mismatch(tmp_path):
    # property: images and labels that disagree in count are refused
    _, y, _, _ = _tiny_mnist(str(tmp_path))
    _write(str(tmp_path / "mnist" / "train-labels-idx1-ubyte"), _idx_bytes(y[:-1], 2049), gz=True)
    with pytest.raises(data.DataError, match="200 images but .* 199 labels"):
        data.load_mnist(str(tmp_path), True)


def test_data_mnist_missing_files_say_where(tmp_path):
    # property: missing files give one message naming the files, the folder and download()
    with pytest.raises(data.DataError) as e:
        data.load_mnist(str(tmp_path), False)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert os.path.join(str(tmp_path), "mnist") in msg and "download('mnist'" in msg


# ---------------------------------------------------------------------------------------------------
# data.py: preprocessing and the one-class split
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, lo, hi", [(0, -0.8826567065619495, 9.001545489292527),
                                       (1, -0.6661464580883915, 20.108062262467364)])
def test_data_mnist_scale_constants_match_reference(k, lo, hi):
    # property: min/max after GCN of the real class-k training set equal the reference code's constants
    got = data.one_class_split("mnist", k, root=DATA).scale
    assert abs(got[0] - lo) < 1e-6 and abs(got[1] - hi) < 1e-6, got


def test_data_per_image_scaling_spans_each_image_alone(tmp_path):
    # property: scaling='image' maps every train and test image to exactly [0, 1] on its own; a bad name fails
    _tiny_mnist(str(tmp_path))
    d = data.one_class_split("mnist", 4, root=str(tmp_path), scaling="image")
    for x in (d.x_train, d.x_test):
        flat = x.flatten(1)
        assert torch.all(flat.amin(1) == 0.0) and torch.allclose(flat.amax(1), torch.ones(len(x)))
    with pytest.raises(ValueError, match="scaling must be 'class', 'minmax' or 'image'"):
        data.one_class_split("mnist", 4, root=str(tmp_path), scaling="pixel")


def test_data_minmax_scaling_is_the_class_scaling_without_gcn(tmp_path):
    # property: scaling='minmax' is pixels / 255, then the min-max with the training set's two constants
    x, y, _, _ = _tiny_mnist(str(tmp_path))
    d = data.one_class_split("mnist", 4, root=str(tmp_path), scaling="minmax")
    raw = torch.tensor(x[y == 4], dtype=torch.float64).unsqueeze(1) / 255
    lo, hi = raw.min().item(), raw.max().item()
    assert d.scale == (lo, hi) and torch.equal(d.x_train, ((raw - lo) / (hi - lo)).float())


def test_data_split_layout_and_unit_interval(tmp_path):
    # property: train/test are float32 (N, 1, H, W); the train set spans exactly [0, 1]
    _tiny_mnist(str(tmp_path))
    d = data.one_class_split("mnist", 4, root=str(tmp_path))
    assert d.x_train.shape == (20, 1, 6, 5) and d.x_test.shape == (50, 1, 6, 5)
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.x_train.min().item() == 0.0 and abs(d.x_train.max().item() - 1.0) < 1e-6


def test_data_pollution_fraction_and_origin(tmp_path):
    # property: anomalies make a fraction p of train (to rounding), come from other classes, are marked
    _, y, _, _ = _tiny_mnist(str(tmp_path))
    p = 0.3
    d = data.one_class_split("mnist", 2, pollution_rate=p, seed=1, root=str(tmp_path))
    k = int(d.polluted.sum())
    assert abs(k - p * 20 / (1 - p)) <= 0.5 and len(d.train_index) == 20 + k
    labels = y[d.train_index.numpy()]
    assert np.all(labels[d.polluted.numpy()] != 2) and np.all(labels[~d.polluted.numpy()] == 2)
    assert len(set(d.train_index.tolist())) == 20 + k  # drawn without replacement


def test_data_pollution_seed_reproducible(tmp_path):
    # property: the same seed gives the same split, another seed another polluted set
    _tiny_mnist(str(tmp_path))
    split = functools.partial(data.one_class_split, "mnist", 5, 0.2, root=str(tmp_path))
    a, b, c = split(seed=3), split(seed=3), split(seed=4)
    assert torch.equal(a.train_index, b.train_index) and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.train_index[a.polluted], c.train_index[c.polluted])


def test_data_calibration_holds_out_images_never_trained_on(tmp_path):
    # property: --calibration q holds out round(q n) of the (polluted) training images, disjoint from those
    # trained on, together the whole set of q = 0; the min-max constants come from the trained-on images only
    _tiny_mnist(str(tmp_path))
    split = functools.partial(data.one_class_split, "mnist", 2, 0.2, seed=0, root=str(tmp_path))
    whole, d = split(), split(calibration=0.25)
    n = len(whole.train_index)
    assert len(d.cal_index) == round(0.25 * n) == len(d.x_cal) and len(d.train_index) == n - len(d.cal_index)
    assert sorted(d.train_index.tolist() + d.cal_index.tolist()) == sorted(whole.train_index.tolist())
    held_polluted = set(d.cal_index[d.cal_polluted].tolist()) | set(d.train_index[d.polluted].tolist())
    assert held_polluted == set(whole.train_index[whole.polluted].tolist())
    assert d.x_train.min().item() == 0.0 and abs(d.x_train.max().item() - 1.0) < 1e-6
    assert d.scale != whole.scale and (d.x_cal.min() < 0 or d.x_cal.max() > 1)   # an extreme image held out
    assert len(whole.x_cal) == 0 and torch.equal(whole.train_index, data.one_class_split(
        "mnist", 2, 0.2, seed=0, root=str(tmp_path)).train_index)          # q = 0: the papers' split
    for q in (-0.1, 1.0, 0.01):                                             # 0.01 of 25 holds out none
        with pytest.raises(ValueError, match="calibration"):
            split(calibration=q)


def test_data_y_test_marks_other_classes(tmp_path):
    # property: y_test is 1 exactly where the test class differs from the normal class
    _, _, _, y_te = _tiny_mnist(str(tmp_path))
    d = data.one_class_split("mnist", 7, root=str(tmp_path))
    assert torch.equal(d.test_classes, torch.from_numpy(y_te))
    assert torch.equal(d.y_test, (d.test_classes != 7).long()) and d.y_test.dtype == torch.int64


@pytest.mark.parametrize("kwargs", [dict(normal_class=10), dict(normal_class=-1), dict(normal_class=1.5),
                                    dict(normal_class=0, pollution_rate=1.0),
                                    dict(normal_class=0, pollution_rate=-0.1),
                                    dict(normal_class=0, pollution_rate=0.99)])
def test_data_split_bad_arguments_raise_valueerror(tmp_path, kwargs):
    # property: a class outside 0..9 or a rate outside [0, 1) (or needing too many anomalies) is a ValueError
    _tiny_mnist(str(tmp_path))
    with pytest.raises(ValueError):
        data.one_class_split("mnist", root=str(tmp_path), **kwargs)


def test_data_gcn_l1_zero_mean_unit_mean_abs():
    # property: after gcn_l1 each image has mean 0 and mean |x| 1
    x = torch.rand(5, 3, 4, 4, dtype=torch.float64) * torch.arange(1, 6, dtype=torch.float64).view(5, 1, 1, 1)
    z = data.gcn_l1(x)
    assert z.shape == x.shape
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.abs().mean(dim=(1, 2, 3)), torch.ones(5, dtype=torch.float64))


def test_data_gcn_l1_worked_example():
    # property: [0, 1, 2, 5] -> mean 2, centred [-2, -1, 0, 3], mean |.| 1.5 -> [-4/3, -2/3, 0, 2]; constant -> 0
    z = data.gcn_l1(torch.tensor([[[0., 1.], [2., 5.]], [[3., 3.], [3., 3.]]]))
    assert torch.allclose(z[0].flatten(), torch.tensor([-4 / 3, -2 / 3, 0., 2.]))
    assert torch.equal(z[1], torch.zeros(2, 2))


# ---------------------------------------------------------------------------------------------------
# data.py: the CIFAR-10 loader
# ---------------------------------------------------------------------------------------------------

def test_data_cifar_pickles_channel_first(tmp_path):
    # property: official pickles read as uint8 (N, 3, 32, 32), rows split R, G, B planes; labels int64
    _tiny_cifar_pickles(str(tmp_path / "cifar10" / "cifar-10-batches-py"))
    x, y = data._cifar_arrays(str(tmp_path), True)
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8 and y.shape == (20,) and y.dtype == np.int64
    assert x[1, 0].max() == x[1, 0].min() == 11 and x[1, 2].min() == 13  # image 1: R 11, B 13
    assert y[:4].tolist() == _tiny_cifar_arrays(4, seed=0)[1]
    assert data._cifar_arrays(str(tmp_path), False)[0].shape == (4, 3, 32, 32)


def test_data_cifar_binary_records(tmp_path):
    # property: the binary layout reads to the same arrays as the pickles
    _tiny_cifar_bins(str(tmp_path / "bin" / "cifar10" / "cifar-10-batches-bin"))
    _tiny_cifar_pickles(str(tmp_path / "py" / "cifar10" / "cifar-10-batches-py"))
    for train in (True, False):
        xb, yb = data._cifar_arrays(str(tmp_path / "bin"), train)
        xp, yp = data._cifar_arrays(str(tmp_path / "py"), train)
        assert np.array_equal(xb, xp) and np.array_equal(yb, yp)


def test_data_cifar_binary_bad_size(tmp_path):
    # property: a .bin file that is not whole 3073-byte records is refused
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    _tiny_cifar_bins(str(folder))
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-1])
    with pytest.raises(data.DataError, match="test_batch.bin.*3073"):
        data._cifar_arrays(str(tmp_path), False)


def test_data_cifar_unpickler_refuses_code(tmp_path):
    # property: a pickle that would call os.system is refused and nothing runs
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    _tiny_cifar_pickles(str(folder))
    marker = tmp_path / "pwned"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": []}, f, protocol=4)
    with pytest.raises(data.DataError, match="refusing to unpickle .*system from .*test_batch"):
        data._cifar_arrays(str(tmp_path), False)
    assert not marker.exists()


def test_data_cifar_unpickler_admits_numpy1_and_numpy2_names():
    # property: the official files' NumPy 1 name and the NumPy 2 one resolve to the same array rebuilder
    u = data._NumpyOnlyUnpickler(io.BytesIO(b""), "x")
    assert u.find_class("numpy.core.multiarray", "_reconstruct") is u.find_class("numpy._core.multiarray",
                                                                                  "_reconstruct")
    assert u.find_class("numpy", "ndarray") is np.ndarray and u.find_class("numpy", "dtype") is np.dtype


def test_data_cifar_split_layout(tmp_path):
    # property: the CIFAR split is float32 (n, 3, 32, 32) holding only the normal class
    _tiny_cifar_pickles(str(tmp_path / "cifar10" / "cifar-10-batches-py"))
    x, y = data._cifar_arrays(str(tmp_path), True)
    k = int(y[0])
    d = data.one_class_split("cifar10", k, root=str(tmp_path))
    assert d.x_train.shape == (int((y == k).sum()), 3, 32, 32) and d.x_train.dtype == torch.float32
    assert d.x_test.shape == (4, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------
# data.py: a folder of the user's own images
# ---------------------------------------------------------------------------------------------------

def test_folder_png_digits_equal_the_idx_pixels_and_labels(tmp_path):
    # property: real MNIST digits written as PNG read back byte-exact, class by class, labels = sorted position
    root = _digit_folder(tmp_path)
    for train in (True, False):
        x, y = data.load_folder(root, train)
        x_idx, y_idx = _expected(train)
        assert x.dtype == np.uint8 and x.shape == (15, 28, 28) and y.dtype == np.int64
        assert np.array_equal(x, x_idx) and np.array_equal(y, y_idx)


def test_folder_one_class_split_equals_the_same_split_from_idx_files(tmp_path):
    # property: "folder" runs the very protocol of "mnist" (GCN-l1, min-max, pollution, y_test) on its arrays
    root = _digit_folder(tmp_path / "folder")
    idx_root = str(tmp_path / "idx")
    for train in (True, False):
        _write_idx(idx_root, train, *_expected(train))
    for scaling in ("class", "image"):
        a = data.one_class_split("folder", 1, 0.2, seed=3, root=root, scaling=scaling)
        b = data.one_class_split("mnist", 1, 0.2, seed=3, root=idx_root, scaling=scaling)
        assert a.polluted.sum() > 0 and a.scale == b.scale and a.normal_class == b.normal_class == 1
        for field in ("x_train", "x_test", "y_test", "test_classes", "train_index", "polluted"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_folder_normal_class_bound_is_the_number_of_classes(tmp_path):
    # property: with 3 class folders the normal class is 0..2; 3 is a ValueError naming the classes
    root = _digit_folder(tmp_path, per_class=2)
    assert data.one_class_split("folder", 2, root=root).normal_class == 2
    with pytest.raises(ValueError, match=r"0\.\.2 \(the classes 2, 5, 7: "):
        data.one_class_split("folder", 3, root=root)


def test_folder_classes_sorted_and_class_index_takes_a_name(tmp_path):
    # property: classes are the sorted folder names; a number is read as a name, never as a position; unknown -> names
    root = _digit_folder(tmp_path, per_class=1)
    assert data.folder_classes(root) == ["2", "5", "7"]
    assert data.class_index(root, "5") == 1 and data.class_index(root, 7) == 2  # names, a number as one
    for bad in ("3", 3, "0", 0, "cat", -1, True):  # 0 is not the first class here: refused
        with pytest.raises(data.DataError, match="the classes are 2, 5, 7"):
            data.class_index(root, bad)


def test_folder_facts_without_resizing(tmp_path):
    # property: 28x28 greyscale files are not resized, and the facts say so
    root = _digit_folder(tmp_path, per_class=2)
    assert data.folder_facts(root) == {"classes": ["2", "5", "7"], "channels": 1, "size": (28, 28),
                                       "resized_from": None, "interpolation": None, "modes": ["L"],
                                       "n_train": 6, "n_test": 6}


def test_folder_resizes_56_to_28_bilinear_and_reports_it(tmp_path):
    # property: 56x56 greyscale images become 28x28 by Pillow's BILINEAR resize, and the facts say so
    digits = {d: img for d, img in zip(DIGITS, _expected(True, 1)[0])}
    for split in ("train", "test"):
        for d, img in digits.items():
            _png(str(tmp_path / split / str(d) / "a.png"), np.kron(img, np.ones((2, 2), np.uint8)), "L")
    x, _ = data.load_folder(str(tmp_path), True)
    assert x.shape == (3, 28, 28)
    big = Image.open(tmp_path / "train" / "2" / "a.png")
    assert np.array_equal(x[0], np.asarray(big.resize((28, 28), Image.BILINEAR)))
    facts = data.folder_facts(str(tmp_path))
    assert facts["resized_from"] == (56, 56) and facts["interpolation"] == "bilinear" and facts["size"] == (28, 28)


def test_folder_rgb_png_is_channel_first_and_exact(tmp_path):
    # property: an RGB PNG gives (N, 3, 32, 32) with its R, G, B planes byte-exact (three digits as planes)
    planes = np.pad(_expected(True, 1)[0], ((0, 0), (2, 2), (2, 2)))  # digits 2, 5, 7 padded to 32x32
    rgb = np.stack([planes, planes[::-1], 255 - planes])  # (3 images, 3 planes, 32, 32)
    for split in ("train", "test"):
        for k, name in enumerate(("a", "b", "c")):
            _png(str(tmp_path / split / name / "0.png"), rgb[k].transpose(1, 2, 0), "RGB")
    x, y = data.load_folder(str(tmp_path), False)
    assert x.shape == (3, 3, 32, 32) and np.array_equal(x, rgb) and y.tolist() == [0, 1, 2]
    assert data.folder_facts(str(tmp_path))["channels"] == 3


def test_folder_extensions_any_case_hidden_and_other_files_skipped(tmp_path):
    # property: .PNG and .Jpeg count (JPEG as Pillow decodes it); '._x.png', notes.txt, a stray file do not
    root = _digit_folder(tmp_path, per_class=1)
    first = sorted(os.listdir(os.path.join(root, "train", "5")))[0]
    Image.open(os.path.join(root, "train", "5", first)).save(os.path.join(root, "train", "5", "z.Jpeg"))
    os.rename(os.path.join(root, "train", "5", first), os.path.join(root, "train", "5", "y.PNG"))
    for junk in ("train/5/._y.png", "train/5/notes.txt", "train/README.txt"):
        (tmp_path / junk).write_bytes(b"not an image")
    os.makedirs(tmp_path / "train" / ".cache")  # a hidden folder is no class
    x, y = data.load_folder(root, True)
    jpeg = np.asarray(Image.open(os.path.join(root, "train", "5", "z.Jpeg")))
    assert len(x) == 4 and y.tolist() == [0, 1, 1, 2] and np.array_equal(x[2], jpeg)
    assert np.array_equal(x[1], _expected(True, 1)[0][1])  # y.PNG: the PNG digit, exact


def test_folder_cache_returns_copies_and_rereads_a_replaced_file(tmp_path):
    # property: the cache hands out fresh copies, and a file replaced on disk (size/mtime) is read again
    root = _digit_folder(tmp_path, per_class=1)
    x, _ = data.load_folder(root, True)
    x[:] = 0
    assert data.load_folder(root, True)[0].any()
    path = os.path.join(root, "train", "2", sorted(os.listdir(os.path.join(root, "train", "2")))[0])
    _png(path, np.full((28, 28), 9, np.uint8), "L")
    assert (data.load_folder(root, True)[0][0] == 9).all()


def test_folder_fingerprint_covers_names_and_bytes_not_the_location(tmp_path):
    # property: the same files elsewhere give the same fingerprint; a renamed file or a changed byte another
    a, b = _digit_folder(tmp_path / "a", per_class=1), _digit_folder(tmp_path / "b", per_class=1)
    assert data.fingerprint("folder", a) == data.fingerprint("folder", b)
    folder = os.path.join(b, "test", "7")
    name = os.listdir(folder)[0]
    os.rename(os.path.join(folder, name), os.path.join(folder, "renamed.png"))
    renamed = data.fingerprint("folder", b)
    assert renamed != data.fingerprint("folder", a)
    _png(os.path.join(folder, "renamed.png"), np.zeros((28, 28), np.uint8), "L")
    assert data.fingerprint("folder", b) not in (renamed, data.fingerprint("folder", a))


def test_folder_without_train_folder(tmp_path):
    # property: no train/ folder -> DataError saying where the images go
    os.makedirs(tmp_path / "test" / "a")
    with pytest.raises(data.DataError, match=r"no .*train folder: put the images in .*train.*<class>"):
        data.load_folder(str(tmp_path), True)


def test_folder_class_missing_from_test(tmp_path):
    # property: a class folder in train/ but not in test/ -> DataError naming it
    root = _digit_folder(tmp_path, per_class=1)
    os.rename(os.path.join(root, "test", "5"), os.path.join(root, "test", ".hidden"))
    with pytest.raises(data.DataError, match=r"train.5 has no counterpart in .*test"):
        data.load_folder(root, True)


def test_folder_empty_class_folder(tmp_path):
    # property: a class folder with no image file -> DataError naming the folder
    root = _digit_folder(tmp_path, per_class=1)
    folder = os.path.join(root, "test", "7")
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    (tmp_path / "test" / "7" / "notes.txt").write_text("no image here")
    with pytest.raises(data.DataError, match=r"test.7 holds no \.png, \.jpg or \.jpeg file"):
        data.folder_classes(root)


def test_folder_truncated_png_is_named(tmp_path):
    # property: a PNG cut in half is decoded whole, fails, and the message names the file
    root = _digit_folder(tmp_path, per_class=2)
    path = os.path.join(root, "test", "5", sorted(os.listdir(os.path.join(root, "test", "5")))[1])
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:len(raw) // 2])
    with pytest.raises(data.DataError, match=re.escape(f"{path} is not a readable PNG or JPEG image")):
        data.load_folder(root, False)


def test_folder_mixed_sizes_name_both_files(tmp_path):
    # property: one 30x30 image among 28x28 ones -> DataError naming the first image and the odd one
    root = _digit_folder(tmp_path, per_class=1)
    odd = os.path.join(root, "test", "7", "odd.png")
    _png(odd, np.zeros((30, 30), np.uint8), "L")
    first = os.path.join(root, "train", "2", sorted(os.listdir(os.path.join(root, "train", "2")))[0])
    with pytest.raises(data.DataError, match=re.escape(f"{first} is 28x28 but {odd} is 30x30")):
        data.load_folder(root, True)


def test_folder_mixed_channels_name_both_files(tmp_path):
    # property: one RGB image among greyscale ones -> DataError naming a file of each kind
    root = _digit_folder(tmp_path, per_class=1)
    odd = os.path.join(root, "train", "5", "odd.png")
    _png(odd, np.zeros((28, 28, 3), np.uint8), "RGB")
    first = os.path.join(root, "train", "2", sorted(os.listdir(os.path.join(root, "train", "2")))[0])
    message = f"{first} is greyscale (mode L) but {odd} is colour (mode RGB)"
    with pytest.raises(data.DataError, match=re.escape(message)):
        data.load_folder(root, True)


def test_folder_one_test_class_only(tmp_path):
    # property: fewer than two classes in test/ -> DataError asking for more
    root = _digit_folder(tmp_path, per_class=1)
    for d in ("5", "7"):
        for split in ("train", "test"):
            for name in os.listdir(os.path.join(root, split, d)):
                os.remove(os.path.join(root, split, d, name))
            os.rmdir(os.path.join(root, split, d))
    with pytest.raises(data.DataError, match=r"holds 1 class folder.* needs at least two"):
        data.one_class_split("folder", 0, root=root)


@pytest.mark.slow
def test_folder_cifar10_jpegs_equal_the_batch_conversion(tmp_path, convert):
    # property: 20 train + 20 test JPEGs per class read as to_cifar_batches.py decodes them (byte-identical)
    expected = {"train": [], "test": []}  # (label, 3072 pixels) in path order, as the batches hold them
    with tarfile.open(CIFAR_JPEG_TAR) as tar:
        for member in tar:
            m = convert.NAME_RE.match(member.name)
            if member.isfile() and m and int(m.group(3)) < 20:
                raw = tar.extractfile(member).read()
                os.makedirs(tmp_path / m.group(1) / m.group(2), exist_ok=True)
                (tmp_path / member.name).write_bytes(raw)
                expected[m.group(1)].append((member.name, convert.LABEL_NAMES.index(m.group(2)),
                                             convert.decode(raw)))
    assert data.folder_classes(str(tmp_path)) == list(convert.LABEL_NAMES)  # sorted names = CIFAR labels
    for split, train in (("train", True), ("test", False)):
        items = sorted(expected[split])
        x, y = data.load_folder(str(tmp_path), train)
        assert x.shape == (200, 3, 32, 32) and x.dtype == np.uint8
        assert np.array_equal(x.reshape(200, 3072), np.stack([p for _, _, p in items]))
        assert y.tolist() == [label for _, label, _ in items]
    assert data.folder_facts(str(tmp_path))["resized_from"] is None


# ---------------------------------------------------------------------------------------------------
# data.py: download
# ---------------------------------------------------------------------------------------------------

def test_data_download_fetches_and_verifies_mnist(tmp_path):
    # property: the four official files are fetched from a mirror, verified, and then load
    served = tmp_path / "served"
    shutil.copytree(os.path.join(DATA, "mnist"), served)
    with _serve(served) as url:
        data.download("mnist", str(tmp_path / "root"), mirrors=[url])
    assert sorted(os.listdir(tmp_path / "root" / "mnist")) == sorted(data.MNIST_FILES)
    assert data.load_mnist(str(tmp_path / "root"), False)[0].shape == (10000, 28, 28)


def test_data_download_skips_verified_files(tmp_path):
    # property: files already present with the published MD5 are not fetched again
    shutil.copytree(os.path.join(DATA, "mnist"), tmp_path / "mnist")
    data.download("mnist", str(tmp_path), mirrors=[_closed_port_url()])  # would fail if it tried


def test_data_download_falls_back_to_next_mirror(tmp_path, monkeypatch):
    # property: a dead first mirror is skipped and the next one serves the file
    payload = b"tiny file"
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "a.gz").write_bytes(payload)
    monkeypatch.setattr(data, "MNIST_FILES", {"a.gz": _md5(payload)})
    with _serve(tmp_path / "served") as url:
        data.download("mnist", str(tmp_path / "root"), mirrors=[_closed_port_url(), url])
    assert (tmp_path / "root" / "mnist" / "a.gz").read_bytes() == payload


def test_data_download_wrong_checksum_refused(tmp_path, monkeypatch):
    # property: a file whose MD5 differs is refused: DataError, no final file, no .part file
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "a.gz").write_bytes(b"tampered")
    monkeypatch.setattr(data, "MNIST_FILES", {"a.gz": _md5(b"original")})
    with _serve(tmp_path / "served") as url, pytest.raises(data.DataError, match="MD5"):
        data.download("mnist", str(tmp_path / "root"), mirrors=[url])
    assert not (tmp_path / "root" / "mnist").exists()  # no file, no folder left


def test_data_download_truncated_transfer_refused(tmp_path, monkeypatch):
    # property: fewer bytes than Content-Length is refused even if the MD5 of what came matches
    monkeypatch.setattr(data, "MNIST_FILES", {"a.gz": _md5(b"0123456789")})
    with _serve(handler=_CutHandler) as url, pytest.raises(data.DataError, match="10 of 1000 bytes"):
        data.download("mnist", str(tmp_path / "root"), mirrors=[url])
    assert not (tmp_path / "root" / "mnist").exists()  # no file, no folder left


def test_data_download_no_server_says_what_to_put_where(tmp_path):
    # property: with every mirror down the message names the missing files, the folder and the URLs
    url = _closed_port_url()
    with pytest.raises(data.DataError) as e:
        data.download("mnist", str(tmp_path), mirrors=[url], timeout=5)
    msg = str(e.value)
    assert all(name in msg for name in data.MNIST_FILES)
    assert os.path.join(str(tmp_path), "mnist") in msg and url + "train-images-idx3-ubyte.gz" in msg


def test_data_download_cifar_extracts_batches(tmp_path, monkeypatch):
    # property: a verified archive is extracted to <root>/cifar10/cifar-10-batches-py and then loads
    _tiny_cifar_pickles(str(tmp_path / "src" / "cifar-10-batches-py"))
    (tmp_path / "served").mkdir()
    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(data, "CIFAR_FILES", {archive.name: _md5(archive.read_bytes())})
    with _serve(tmp_path / "served") as url:
        data.download("cifar10", str(tmp_path / "root"), mirrors=[url])
    assert data._cifar_arrays(str(tmp_path / "root"), True)[0].shape == (20, 3, 32, 32)


@pytest.mark.parametrize("bad", ["escape", "symlink"])
def test_data_download_tar_refuses_unsafe_members(tmp_path, monkeypatch, bad):
    # property: a tar member '../evil' or a symlink is refused before anything is written
    info = tarfile.TarInfo("cifar-10-batches-py/link" if bad == "symlink" else "../evil")
    if bad == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    safe = tarfile.TarInfo("cifar-10-batches-py/test_batch")
    (tmp_path / "served").mkdir()
    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    _targz(archive, [(safe, b"x"), (info, None if bad == "symlink" else b"evil")])
    monkeypatch.setattr(data, "CIFAR_FILES", {archive.name: _md5(archive.read_bytes())})
    with _serve(tmp_path / "served") as url, pytest.raises(data.DataError, match="refusing to extract"):
        data.download("cifar10", str(tmp_path / "root"), mirrors=[url])
    assert sorted(os.listdir(tmp_path / "root" / "cifar10")) == [archive.name]  # nothing extracted
    assert not (tmp_path / "root" / "evil").exists() and not (tmp_path / "evil").exists()


# ---------------------------------------------------------------------------------------------------
# End to end on real data: MNIST training, CIFAR-10 (JPEG copy)
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ae_real_mnist_training_lowers_loss_and_detects():
    # end-to-end, real MNIST: a short training run lowers the loss and its score ranks anomalies higher
    d = data.one_class_split("mnist", 0, root=DATA)
    torch.manual_seed(0)
    model = ae.build_autoencoder("mnist")
    hist = ae.train_autoencoder(model, d.x_train[:2000], epochs=5, lr=1e-3, weight_decay=0.5e-3, milestones=(50,),
                                verbose=False)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    scores = ae.reconstruction_scores(model, d.x_test[:3000])
    assert evaluate.auroc(d.y_test[:3000].numpy(), scores.numpy()) > 0.75


@pytest.mark.slow
def test_data_cifar_real_end_to_end(cifar_root):
    # property (end-to-end, ~5 s): real CIFAR-10 shapes, class counts, and the airplane constants (loosely)
    x, y = data._cifar_arrays(cifar_root, True)
    assert x.shape == (50000, 3, 32, 32) and np.bincount(y).tolist() == [5000] * 10
    x, y = data._cifar_arrays(cifar_root, False)
    assert x.shape == (10000, 3, 32, 32) and np.bincount(y).tolist() == [1000] * 10
    lo, hi = data.one_class_split("cifar10", 0, root=cifar_root).scale
    print(f"CIFAR-10 airplane (JPEG copy): min {lo}, max {hi}; reference -28.94083453598571, 13.802961825439636")
    # JPEG (q75) smooths single-pixel outliers, and the min is one dark pixel on a near-flat image (measured
    # on this copy: -22.81, 21% off), while the max lands within 1% (13.72); hence the loose bounds
    assert abs(lo - -28.94083453598571) < 0.3 * 28.94083453598571
    assert abs(hi - 13.802961825439636) < 0.1 * 13.802961825439636


# ---------------------------------------------------------------------------------------------------
# run.py and sweep.py: the command line, sweeps and resuming
# ---------------------------------------------------------------------------------------------------

@pytest.mark.plots
def test_run_end_to_end_writes_every_output(tiny_root, tmp_path):
    # property: one run writes every output file and a valid metrics.json, last
    m = run.main(["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "soft-svdd"] + FAST)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name != "cache"]
    for name in ["config.json", "history.json", "scores.csv", "model.pt", "metrics.json",
                 "plots/training.png", "plots/score_hist.png", "plots/roc_pr.png", "plots/extremes.png",
                 "plots/codes.png"]:
        assert (run_dir / name).stat().st_size > 0, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["auroc"] <= 1 and metrics["auroc"] == m["auroc"]
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    assert {"config", "stage1", "phi", "c", "R"} <= set(saved)
    assert len((run_dir / "scores.csv").read_text().splitlines()) == 201
    assert not list(run_dir.glob("*.tmp")) and not (run_dir / "seconds.json").exists()


def test_run_same_seed_same_scores(tiny_root, tmp_path):
    # property: the same seed gives the same scores (with and without the autoencoder cache)
    args = ["--data-root", tiny_root, "--objective", "ocnn-joint"] + FAST
    a = run.main(args + ["--out", str(tmp_path / "a")])
    b = run.main(args + ["--out", str(tmp_path / "a")])              # pretraining now from the cache
    c = run.main(args + ["--out", str(tmp_path / "c")])              # fresh pretraining
    assert a["auroc"] == b["auroc"] == c["auroc"]
    scores = [sorted((tmp_path / o).glob("*/scores.csv"))[0].read_text() for o in ("a", "c")]
    assert scores[0] == scores[1]


def test_run_model_functions_default_to_the_cli_defaults():
    # property: a model function called from Python without a setting gets run.py's default for it (on MNIST's
    # autoencoder), and takes no default where run.py's depends on the data set (epochs, weight decay, milestones)
    defaults = dataclasses.asdict(settings.parse_config([]))
    cli = {(svdd.train_svdd, "nu"): "nu", (svdd.train_svdd, "epochs"): "svdd_epochs",
           (svdd.train_svdd, "lr"): "svdd_lr", (svdd.train_svdd, "milestones"): "svdd_milestones",
           (svdd.train_svdd, "warmup"): "svdd_warmup", (svdd.train_svdd, "batch_size"): "batch_size",
           (ocnn.train_ocnn, "nu"): "nu", (ocnn.train_ocnn, "epochs"): "ocnn_epochs", (ocnn.train_ocnn, "lr"): "ocnn_lr",
           (ocnn.train_ocnn, "lr_drop_epoch"): "ocnn_lr_drop", (ocnn.train_ocnn, "encoder_lr"): "encoder_lr",
           (ocnn.train_ocnn, "encoder_weight_decay"): "encoder_weight_decay",
           (ocnn.train_ocnn, "encoder_lr_drop"): "encoder_lr_drop", (ocnn.train_ocnn, "hidden"): "ocnn_hidden",
           (ocnn.train_ocnn, "activation"): "ocnn_activation", (ocnn.train_ocnn, "normalize"): "ocnn_normalize",
           (ae.train_autoencoder, "lr"): "ae_lr",
           (rcae.train_rcae, "lam"): "rcae_lambda", (rcae.train_rcae, "outer_iters"): "rcae_iters",
           (rcae.train_rcae, "lr"): "ae_lr"}
    for (fn, param), field in cli.items():
        default = inspect.signature(fn).parameters[param].default
        assert list(default) == defaults[field] if isinstance(default, tuple) else default == defaults[field], \
            (fn.__name__, param)
    assert inspect.signature(ocnn.train_ocnn).parameters["clip"].default == settings.parse_config(["--objective",
                                                                                              "ocnn"]).ocnn_clip
    for fn, params in ((ae.train_autoencoder, ("epochs", "weight_decay", "milestones")),
                       (rcae.train_rcae, ("epochs_per_iter", "weight_decay", "milestones")),
                       (svdd.train_svdd, ("weight_decay",))):
        assert all(inspect.signature(fn).parameters[p].default is inspect.Parameter.empty for p in params)


def test_sweep_resumes_and_summarizes(tiny_root, tmp_path, capsys):
    # property: a sweep writes a summary, and started again it skips the finished runs
    args = ["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "own",
            "--normal-class", "all", "--seeds", "0"] + SHORT + ["--batch-size", "64"]
    first = sweep.main(args)
    (folder,) = tmp_path.glob("sweep-*")
    assert len(first) == 10 and (folder / "summary.csv").exists() and (folder / "summary.md").exists()
    capsys.readouterr()
    again = sweep.main(args)
    assert capsys.readouterr().out.count("skipping") == 10
    assert [m["auroc"] for m in again] == [m["auroc"] for m in first]


def test_sweep_of_a_shallow_detector_writes_its_summary(tiny_root, tmp_path):
    # property: a sweep of a shallow detector on pixels (no stage 1) summarizes like the deep ones
    rows = sweep.main(["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "iforest",
                       "--normal-class", "1,2", "--seeds", "0", "1", "--quiet"])
    (summary,) = tmp_path.glob("sweep-mnist-pixels+iforest-*/summary.csv")
    table = list(csv.DictReader(open(summary)))
    assert len(rows) == 4 and [r["normal_class"] for r in table] == ["1", "2"]
    assert {r["epochs"] for r in table} == {"none (pixels)"} and {r["n_seeds"] for r in table} == {"2"}


def test_sweep_summary_reports_the_normal_test_images_flagged(tiny_root, tmp_path):
    # property: summary.csv gives per class the mean over seeds of the % of normal test images the decision flags
    rows = sweep.main(["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "iforest",
                       "--normal-class", "1,2", "--seeds", "0", "1", "--quiet"])
    (summary,) = tmp_path.glob("sweep-*/summary.csv")
    got = [float(r["normal_test_flagged_mean"]) for r in csv.DictReader(open(summary))]
    want = [round(100 * np.mean([m["normal_test_flagged"] for m in rows[i:i + 2]]), 2) for i in (0, 2)]
    assert got == want and len(set(m["normal_test_flagged"] for m in rows)) > 1


def test_sweep_skips_a_run_another_sweep_finished_after_the_listing(tmp_path, monkeypatch):
    # property: two sweeps on one folder never train a run twice: one listed as pending but finished by the
    # other process before its turn comes is read back, under the run's lock, not retrained
    folder = tmp_path / "class0-seed0-pixels+iforest"
    folder.mkdir()
    folders.write_json(str(folder / "metrics.json"), {"auroc": 0.75, "normal_class": 0})
    monkeypatch.setattr(run, "load_data", lambda *a: pytest.fail("a finished run was trained again"))
    cfg = settings.Config(objective="iforest")
    assert sweep.run_here(cfg, str(folder), "cpu", {}) == {"auroc": 0.75, "normal_class": 0}


def test_sweep_class_list_runs_exactly_those_classes(tiny_root, tmp_path):
    # property: --normal-class 3,5 runs classes 3 and 5 and nothing else, into the same sweep folder as 'all'
    args = ["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "own", "--normal-class", "3,5",
            "--seeds", "0"] + SHORT + ["--batch-size", "64"]
    rows = sweep.main(args)
    assert [m["normal_class"] for m in rows] == [3, 5]
    assert sorted(p.name for p in tmp_path.glob("sweep-*/class*")) == ["class3-seed0-ae+own", "class5-seed0-ae+own"]
    assert sweep_folder(args) == sweep_folder([a if a != "3,5" else "all" for a in args])


def test_run_ae_init_dict_sets_conv1_in_its_own_folder(tiny_root, tmp_path, monkeypatch):
    # property: --ae-init dict puts the dictionary atoms into conv1 before training; each init and BatchNorm
    # choice gets a sweep folder of its own
    base = ["--data-root", tiny_root, "--out", str(tmp_path), "--normal-class", "3", "--seeds", "0"]
    folders = {sweep_folder(base + ["--settings", "port"] + flags)
               for flags in ([], ["--ae-init", "dict"], ["--ae-init", "theano"], ["--bn-affine"])}
    assert len(folders) == 4
    seen = []
    monkeypatch.setattr(ae, "dictionary_filters", lambda x, n, k, seed: seen.append(seed) or torch.ones(n, 1, k, k))
    monkeypatch.setattr(ae, "train_autoencoder", lambda model, *a, **kw: [])
    d = data.one_class_split("mnist", 3, root=tiny_root)
    cfg = settings.parse_config(["--data-root", tiny_root, "--out", str(tmp_path), "--ae-init", "dict", "--seed", "4"])
    model, _, _ = run.stage1(cfg, d, "mnist", torch.device("cpu"), _data_id(cfg), None)
    assert seen == [4] and torch.equal(model.encoder.conv1.weight, torch.ones(8, 1, 5, 5))


def sweep_folder(argv):
    """The sweep folder of sweep.py's flags."""
    cfg = sweep.parse(argv)[0]
    return sweep.sweep_folder(cfg, _data_id(cfg))


def test_sweep_folder_hashes_only_the_settings_the_method_uses():
    # property: an OC-NN option moves OC-NN sweeps to a new folder and leaves Deep SVDD's and the DCAE's where
    # they were; a Deep SVDD setting does not move OC-NN's
    def folder(*flags):
        return sweep_folder(["--seeds", "0", *flags])
    for objective in ("svdd", "soft-svdd", "own"):
        assert folder("--objective", objective) == folder("--objective", objective, "--ocnn-clip", "0.5",
                                                          "--ocnn-normalize", "--encoder-lr", "1e-3")
    assert folder("--objective", "ocnn") != folder("--objective", "ocnn", "--ocnn-clip", "1")
    assert folder("--objective", "ocnn") == folder("--objective", "ocnn", "--svdd-epochs", "3")
    assert folder("--objective", "svdd") != folder("--objective", "svdd", "--svdd-epochs", "3")
    assert folder("--objective", "ocnn-joint", "--no-encoder-lr-drop") != folder("--objective", "ocnn-joint")
    assert folder("--objective", "svdd", "--scaling", "image") != folder("--objective", "svdd", "--scaling", "class")
    assert folder("--objective", "svdd") == folder("--objective", "svdd", "--nu", "0.3")   # svdd has no nu


def test_run_ae_cache_keyed_on_the_scaling_and_the_pretraining_only(tmp_path):
    # property: an autoencoder trained on per-image scaled data is never reused for the default scaling;
    # the objective and its settings do not move the entry (the objectives share their autoencoders)
    def path(*flags):
        cfg = settings.parse_config(["--out", str(tmp_path), *flags])
        return folders.cache_path(cfg.out, cfg.dataset, cfg.pretrain, cfg.normal_class,
                                  settings.used_settings(cfg, stage1_only=True), _data_id(cfg))
    assert path("--scaling", "image") != path() != path("--pretrain", "rcae")
    assert path() == path("--objective", "ocnn-joint", "--nu", "0.3") == path("--svdd-epochs", "7")
    assert path("--pretrain", "rcae") != path("--pretrain", "rcae", "--rcae-lambda", "0.2")
    assert path() == path("--rcae-lambda", "0.2")                    # the plain autoencoder has no lambda


def test_run_geom_cache_keyed_on_every_setting_of_transformation_prediction(tmp_path):
    # property: each setting of the transformation prediction moves its cache entry; the autoencoders'
    # settings and the objective's do not (every objective shares one trained predictor)
    def path(*flags):
        cfg = settings.parse_config(["--out", str(tmp_path), "--pretrain", "geom", *flags])
        return folders.cache_path(cfg.out, cfg.dataset, cfg.pretrain, cfg.normal_class,
                                  settings.used_settings(cfg, stage1_only=True), _data_id(cfg))
    changed = [["--geom-transforms", "rot"], ["--geom-epochs", "3"], ["--geom-lr", "0.01"],
               ["--geom-weight-decay", "0"], ["--geom-milestones", "2"], ["--rep-dim", "64"], ["--bn-affine"],
               ["--batch-size", "64"], ["--seed", "1"], ["--normal-class", "2"]]
    assert len({path(), *(path(*flags) for flags in changed)}) == len(changed) + 1
    assert path() == path("--ae-epochs", "3", "--ae-init", "dict") == path("--objective", "kde", "--features", "codes")
    rot = ["--geom-transforms", "rot"]
    later = [["--geom-flip"], ["--geom-all-copies"], ["--calibration", "0.1"], ["--width", "2"]]
    assert len({path(*rot), *(path(*rot, *flags) for flags in later)}) == len(later) + 1
    run_key = lambda *flags: settings.used_settings(settings.parse_config(["--pretrain", "geom", *flags]))
    assert path("--geom-precise-bn") == path() and run_key("--geom-precise-bn") != run_key()  # on the cached network
    assert "geom_precise_bn" not in run_key("--dataset", "cifar10", "--no-geom-precise-bn")  # the runs saved before it
    tested = {flags[0][2:].replace("-", "_") for flags in changed + later + [["--geom-precise-bn"]]}
    assert {f.name for f in dataclasses.fields(settings.Config) if f.name.startswith("geom_")} <= tested  # a new one too


def test_run_ocnn_defaults_and_the_plain_objective_one_flag_away():
    # property: the OC-NN defaults are unit codes with clipping 0.5; --no-ocnn-normalize alone gives the
    # paper's plain objective (raw codes, no clipping); an explicit --ocnn-clip wins in both cases
    cfg = settings.parse_config(["--objective", "ocnn"])
    assert (cfg.ocnn_normalize, cfg.ocnn_clip, cfg.nu) == (True, 0.5, 0.1)
    assert (lambda c: (c.ocnn_normalize, c.ocnn_clip))(settings.parse_config(["--no-ocnn-normalize"])) == (False, 0.0)
    assert settings.parse_config(["--no-ocnn-normalize", "--ocnn-clip", "2"]).ocnn_clip == 2.0
    assert settings.parse_config(["--ocnn-clip", "0"]).ocnn_clip == 0.0


def test_run_settings_presets_fill_only_unset_fields():
    # property: MNIST's default preset is the Theano code's settings, --settings port the PyTorch port's,
    # an explicit flag wins over either, and CIFAR-10 gets the port's under both names
    keys = ("ae_init", "bn_affine", "ae_milestones", "ae_weight_decay", "svdd_weight_decay")
    get = lambda argv: tuple(getattr(settings.parse_config(argv), k) for k in keys)
    assert get([]) == ("theano", True, [], 1e-3, 1e-6)
    assert get(["--settings", "port"]) == ("default", False, [50], 0.5e-3, 0.5e-6)
    assert get(["--no-bn-affine", "--ae-milestones", "50"]) == ("theano", False, [50], 1e-3, 1e-6)
    assert get(["--dataset", "cifar10"]) == get(["--dataset", "cifar10", "--settings", "port"]) == \
        ("default", False, [250], 0.5e-6, 0.5e-6)


def test_run_geom_defaults_are_the_measured_settings():
    # property: transformation prediction takes, per network and under either --settings, the settings its results
    # were measured with (MNIST: the 72, no learned BatchNorm shift; CIFAR-10: rotations, 60 epochs, weight decay
    # 5e-4, batches of 64, precise BN), an explicit flag wins, and the autoencoder's runs keep batches of 200
    keys = ("geom_transforms", "geom_epochs", "geom_weight_decay", "bn_affine", "batch_size", "geom_precise_bn")
    get = lambda argv: tuple(getattr(settings.parse_config(["--pretrain", "geom", *argv]), k) for k in keys)
    assert get([]) == get(["--settings", "port"]) == ("geom", 25, 1e-6, False, 200, False)
    assert get(["--dataset", "cifar10"]) == ("rot", 60, 5e-4, False, 64, True)
    assert get(["--dataset", "cifar10", "--batch-size", "200", "--bn-affine", "--no-geom-precise-bn"]) == \
        ("rot", 60, 5e-4, True, 200, False)
    assert settings.parse_config(["--dataset", "cifar10"]).batch_size == 200
    assert settings.parse_config(["--dataset", "cifar10"]).geom_precise_bn is False  # as saved runs: they resume


@pytest.mark.parametrize("argv,message", [
    (["--objective", "kmeans"], "--objective must be svdd | soft-svdd | ocnn | ocnn-joint | own"),
    (["--nu", "0"], "--nu must be a number in (0, 1]"),
    (["--nu", "1.5"], "--nu must be a number in (0, 1]"),
    (["--normal-class", "10"], "--normal-class must be 0..9"),
    (["--normal-class", "0,2"], "python sweep.py --normal-class 0,2 runs several"),
    (["--normal-class", "\u00b2"], "--normal-class must be 0..9"),
    (["--pollution-rate", "1"], "--pollution-rate must be a number in [0, 1)"),
    (["--seed", "4294967296"], "--seed must be an integer in [0, 2^32)"),
    (["--objective", "soft-svdd", "--svdd-epochs", "5", "--svdd-warmup", "5"], "--svdd-warmup (5) must be below"),
    (["--out", ""], "--out must be a folder name"),
    (["--data-root", ""], "--data-root must be a folder name"),
])
def test_run_bad_flag_exits_nonzero_with_message(argv, message, capsys):
    # property: a bad flag value ends in a one-sentence message and a non-zero exit, before any work
    with pytest.raises(SystemExit) as e:
        run.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
@pytest.mark.parametrize("name", [f.name for f in NUMERIC])
def test_run_every_numeric_flag_refuses_bad_values(name, value, capsys, tmp_path, monkeypatch):
    # property: no numeric flag takes a negative, NaN or infinite value, and 0 only where it means something;
    # a refusal is one line naming the flag and exit status 2, before any work
    flag = "--" + name.replace("_", "-")
    if value == "0" and name in ZERO_OK:
        assert getattr(settings.parse_config([flag, value]), name) == 0
        return
    monkeypatch.setattr(run, "run_experiment", lambda *a: pytest.fail(f"{flag} {value} was not refused"))
    with pytest.raises(SystemExit) as e:
        run.main([flag, value, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and flag in err, err


@pytest.mark.parametrize("argv", [["--seeds"], ["--svdd-milestones", "-5"], ["--ae-milestones", "0"],
                                  ["--seeds", "1", "-2"], ["--normal-class", "1,x"], ["--rep-dim", "24"],
                                  ["--jobs", "0"], ["--seeds", "4294967296"]])
def test_sweep_bad_list_and_format_values_refused(argv, capsys):
    # property: list flags check every element; a bare --seeds is no sweep but an error
    with pytest.raises(SystemExit) as e:
        sweep.main(argv)
    assert e.value.code == 2 and argv[0] in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--normal-class", "0,0"], "--normal-class names 0 more than once"),
    (["--normal-class", "3,1,3"], "--normal-class names 3 more than once"),
    (["--seeds", "0", "0", "--jobs", "2"], "--seeds names 0 more than once"),
    (["--seed", "1", "--seeds", "0", "2"], "sweep.py takes its seeds as --seeds"),
])
def test_sweep_refuses_a_class_or_seed_twice_and_a_lone_seed(argv, message, capsys):
    # property: the same run named twice is refused (it would count twice in the summary, or two processes
    # would write one folder); --seed beside --seeds is refused, not ignored
    with pytest.raises(SystemExit) as e:
        sweep.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_run_bare_milestones_mean_a_constant_lr():
    # property: --ae-milestones with no value is valid: no lr drop (the Theano code's constant AE lr)
    assert settings.parse_config(["--settings", "port", "--ae-milestones"]).ae_milestones == []


@pytest.mark.parametrize("argv,flags", [
    (["--objective", "svdd", "--encoder-lr", "1e-3", "--nu", "0.5"], ["--encoder-lr", "--nu"]),
    (["--objective", "ocnn", "--encoder-lr", "1e-3", "--svdd-epochs", "3"], ["--encoder-lr", "--svdd-epochs"]),
    (["--objective", "svdd", "--svdd-warmup", "500"], ["--svdd-warmup"]),
    (["--rcae-iters", "3"], ["--rcae-iters"]),
    (["--geom-flip", "--width", "1", "--calibration", "0"], ["--geom-flip"]),   # width, calibration: every run's
    (["--geom-precise-bn"], ["--geom-precise-bn"]),
])
def test_run_flags_that_do_nothing_are_warned_about_in_one_line_each(argv, flags, capsys):
    # property: a flag the chosen objective or representation does not use gets one warning line
    settings.parse_config(argv)
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert sorted(w.split()[1] for w in warnings) == sorted(flags)
    assert all("does nothing in a" in w for w in warnings)
    settings.parse_config(["--objective", "soft-svdd", "--nu", "0.5", "--svdd-warmup", "3"])
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--geom-flip", "--geom-all-copies"])
def test_run_passes_each_transformation_prediction_flag_to_its_training(tiny_root, tmp_path, flag):
    # property: the flag reaches geom.train_geom: one epoch with it gives other scores than one without
    args = ["--data-root", tiny_root, "--pretrain", "geom", "--geom-transforms", "rot", "--geom-epochs", "1",
            "--objective", "own", "--batch-size", "16", "--quiet"]
    scores = [_scores_csv(next((tmp_path / out).glob("*-mnist-0-*")))[1] for out, extra in (("a", []), ("b", [flag]))
              if run.main(args + ["--out", str(tmp_path / out)] + extra)]
    assert not np.allclose(*scores)


@pytest.mark.parametrize("objective", ["svdd", "soft-svdd", "ocnn", "ocnn-joint", "kde", "ocsvm", "iforest"])
def test_run_every_objective_runs_on_transformation_prediction(tiny_root, tmp_path, objective):
    # property: each objective starts from the trained predictor's encoder (or reads its codes) and finishes
    codes = ["--features", "codes"] if objective in ("kde", "ocsvm", "iforest") else []
    run.main(["--data-root", tiny_root, "--out", str(tmp_path)] + FAST + ["--pretrain", "geom", "--geom-transforms",
             "rot", "--geom-epochs", "1", "--objective", objective, *codes])
    (run_dir,) = tmp_path.glob(f"*-mnist-0-geom+{objective}")
    assert 0 <= json.loads((run_dir / "metrics.json").read_text())["auroc"] <= 1


def test_run_precise_bn_rescores_the_cached_network(tiny_root, tmp_path, capsys):
    # property: --geom-precise-bn reaches the trained network without training it again: the second run reads
    # the first one's cache and scores otherwise
    args = ["--data-root", tiny_root, "--out", str(tmp_path), "--pretrain", "geom", "--geom-transforms", "rot",
            "--geom-epochs", "1", "--objective", "own", "--batch-size", "16", "--quiet"]
    run.main(args)
    run.main(args + ["--geom-precise-bn"])
    assert "reusing the trained representation" in capsys.readouterr().out
    scores = [_scores_csv(d)[1] for d in sorted(tmp_path.glob("*-mnist-0-*"))]
    assert len(scores) == 2 and not np.allclose(*scores)


def test_run_banner_shows_nu_only_where_it_is_used(tiny_root, tmp_path, capsys):
    # property: the one-class Deep SVDD banner names no nu (it has none); the soft-boundary one does
    run.main(["--data-root", tiny_root, "--out", str(tmp_path)] + FAST)
    assert "stage 2: one-class Deep SVDD ===" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# run.py and sweep.py: what is saved can be trusted
# ---------------------------------------------------------------------------------------------------

def _other_labels_root(tmp_path):
    """The tiny MNIST with its training labels moved by one: the same files but one, other data."""
    root = str(tmp_path / "other")
    x, y, _, _ = _tiny_mnist(root, n_train=300, n_test=200, size=(28, 28), high=60, squares=True)
    _write(os.path.join(root, "mnist", "train-labels-idx1-ubyte"), _idx_bytes((y + 1) % 10, 2049), True)
    return root


def test_run_other_data_is_never_passed_off_as_these(tiny_root, tmp_path, capsys):
    # property: the data (root and fingerprint) keys the autoencoder cache, the sweep folder and the resume
    # match: other data under another --data-root is trained on afresh, never answered from the first's
    other = _other_labels_root(tmp_path)
    out = ["--out", str(tmp_path / "runs"), "--objective", "own", "--normal-class", "3"] + SHORT
    run.main(["--data-root", tiny_root] + out)
    capsys.readouterr()
    run.main(["--data-root", other] + out)
    assert "reusing the trained representation" not in capsys.readouterr().out
    assert len(list((tmp_path / "runs" / "cache").glob("*-class3.pt"))) == 2
    sweep.main(["--data-root", tiny_root] + out)
    capsys.readouterr()
    sweep.main(["--data-root", other] + out)
    assert "skipping" not in capsys.readouterr().out and len(list((tmp_path / "runs").glob("sweep-*"))) == 2
    first = sorted((tmp_path / "runs").glob("*-mnist-3-ae+own"))[0]       # the first data's single run
    (first / "metrics.json").unlink()                                # now unfinished
    ids = {root: _data_id(settings.parse_config(["--data-root", root] + out)) for root in (tiny_root, other)}
    def unfinished(root):
        cfg = settings.parse_config(["--data-root", root] + out)
        return folders.unfinished_run(cfg.out, settings.run_name(cfg), {**settings.used_settings(cfg), **ids[root]})
    assert unfinished(tiny_root) == str(first) and unfinished(other) is None


def _finished_run(tiny_root, out, *flags):
    args = ["--data-root", tiny_root, "--out", str(out), "--normal-class", "3"] + FAST + list(flags)
    metrics = run.main(args)
    (run_dir,) = [p for p in out.glob("*-mnist-3-*") if p.is_dir()]
    return args, metrics, run_dir


@pytest.mark.parametrize("which,damage", [("cache", "cut"), ("cache", "code"), ("partial", "garbled"),
                                          ("checkpoint", "cut")])
def test_run_a_corrupt_saved_file_is_moved_aside_and_rebuilt(tiny_root, tmp_path, capsys, which, damage):
    # property: a cut-off, garbled or code-carrying cache entry, pretraining checkpoint or run checkpoint is
    # moved aside with one line naming it, rebuilt, and the run ends as an uninterrupted one; never a hint to
    # load it unsafely
    args, metrics, run_dir = _finished_run(tiny_root, tmp_path)
    (cache,) = (tmp_path / "cache").glob("*-class3.pt")
    path = {"cache": cache, "partial": cache.with_name(cache.stem + "-partial.pt"),
            "checkpoint": run_dir / "checkpoint.pt"}[which]
    good = cache.read_bytes()
    if which == "partial":
        cache.unlink()
    if which != "cache":
        (run_dir / "metrics.json").unlink()                           # an unfinished run that resumes
    marker = tmp_path / "pwned"
    path.write_bytes({"cut": good[:len(good) // 2], "garbled": b"\x00garbage" * 50,
                      "code": pickle.dumps(_Evil(marker))}[damage])
    capsys.readouterr()
    again = run.main(args)
    out = capsys.readouterr().out
    assert f"{path} is unreadable" in out and f"moved aside to {path}.corrupt" in out and "weights_only" not in out
    assert again["auroc"] == metrics["auroc"] and (path.parent / (path.name + ".corrupt")).exists()
    assert not marker.exists()                                        # the pickled code never ran


def test_run_a_cut_off_config_of_an_unfinished_run_blocks_nothing(tiny_root, tmp_path, capsys):
    # property: an unfinished run folder whose config.json is unreadable is not resumed (said in one line)
    # and blocks no run of the same dataset, class and objective
    stale = tmp_path / "20000101-000000-mnist-3-ae+svdd"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text('{"dataset": "mni')
    metrics = run.main(["--data-root", tiny_root, "--out", str(tmp_path), "--normal-class", "3"] + FAST)
    assert "that folder is not resumed" in capsys.readouterr().out and 0 <= metrics["auroc"] <= 1
    assert len(list(tmp_path.glob("*-mnist-3-ae+svdd/metrics.json"))) == 1 and not (stale / "metrics.json").exists()


def test_run_a_second_process_in_a_run_folder_is_refused(tiny_root, tmp_path, capsys):
    # property: the same command started while a process trains in the unfinished run folder says so and
    # exits 2, touching nothing; a sweep leaves that run to its owner and writes no partial summary
    args, _, run_dir = _finished_run(tiny_root, tmp_path)
    (run_dir / "metrics.json").unlink()
    before = sorted(p.name for p in run_dir.iterdir())
    with folders.Lock(str(run_dir / ".lock")):                       # as the other process would hold it
        with pytest.raises(SystemExit) as e:
            run.main(args)
        assert e.value.code == 2 and f"another process is training in {run_dir}" in capsys.readouterr().err
        assert sorted(p.name for p in run_dir.iterdir()) == before
        flags = ["--data-root", tiny_root, "--out", str(tmp_path / "s"), "--normal-class", "3,4"] + FAST
        cfg = sweep.parse(flags)[0]
        held = sweep.run_folder(cfg, _data_id(cfg), 3, 0)
        with folders.Lock(os.path.join(held, ".lock")):
            rows = sweep.main(flags)
    assert rows[0] is None and rows[1] is not None
    assert "summary not written: 1 run(s) are in use" in capsys.readouterr().out
    assert not list((tmp_path / "s").glob("sweep-*/summary.csv"))


def test_run_disk_full_on_model_pt_leaves_no_half_file_and_resumes(tiny_root, tmp_path, monkeypatch, capsys):
    # property: a write that fails half-way (a full disk, simulated by a torch.save that writes part of the
    # file, then raises ENOSPC) leaves no model.pt and no temporary file, ends in one line naming the file
    # (exit 1), and the same command then finishes the run
    real_save = torch.save

    def full_disk(obj, path, *a, **kw):
        if "model.pt" in str(path):
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **kw)
    monkeypatch.setattr(training.torch, "save", full_disk)
    args = ["--data-root", tiny_root, "--out", str(tmp_path), "--normal-class", "3"] + FAST
    with pytest.raises(SystemExit) as e:
        run.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "model.pt (the disk is full" in err
    (run_dir,) = tmp_path.glob("*-mnist-3-*")
    assert not (run_dir / "model.pt").exists() and not list(run_dir.glob("*.tmp"))
    assert not (run_dir / "metrics.json").exists()
    monkeypatch.setattr(training.torch, "save", real_save)
    assert run.main(args)["auroc"] >= 0 and (run_dir / "model.pt").exists()


@pytest.mark.parametrize("setup,argv,message,code", [
    (lambda p: (p / "file").write_text("x"), ["--out", "{p}/file"], "--out {p}/file: cannot make a folder there", 2),
    (lambda p: (p / "file").write_text("x"), ["--data-root", "{p}/file"], "--data-root {p}/file is a file", 2),
    (lambda p: (p / "cache").write_text("x"), ["--out", "{p}"], "{p}/cache: File exists", 1),
    (lambda p: None, ["--pollution-rate", "0.95"], "pollution_rate 0.95 needs", 2),
])
def test_run_file_system_and_data_problems_end_in_one_sentence(tiny_root, tmp_path, capsys, setup, argv, message,
                                                               code):
    # property: --out on a file, --data-root a file, a cache/ that cannot be made (before any training),
    # a pollution rate the data cannot meet: one line, a non-zero exit, no traceback
    setup(tmp_path)
    argv = [a.replace("{p}", str(tmp_path)) for a in argv]
    base = ["--data-root", tiny_root, "--out", str(tmp_path / "runs")] + FAST
    with pytest.raises(SystemExit) as e:
        run.main(base + argv)
    captured = capsys.readouterr()
    assert e.value.code == code and captured.err.count("\n") == 1, captured.err
    assert message.replace("{p}", str(tmp_path)) in captured.err and "[pretrain" not in captured.out


def test_run_ctrl_c_says_in_one_line_that_the_same_command_resumes(tiny_root, tmp_path, monkeypatch, capsys):
    # property: Ctrl-C ends in one line (no traceback) that says the same command resumes, exit status 130
    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(svdd, "train_svdd", interrupted)
    with pytest.raises(SystemExit) as e:
        run.main(["--data-root", tiny_root, "--out", str(tmp_path)] + FAST)
    err = capsys.readouterr().err
    assert e.value.code == 130 and err.strip().count("\n") == 0 and "the same command resumes" in err


def test_run_resumed_seconds_count_every_process(tiny_root, tmp_path, monkeypatch):
    # property: a run whose first process pretrained (the cache entry written) and then stopped counts that
    # pretraining in its seconds when a second process finishes it from the cache
    real = svdd.train_svdd
    monkeypatch.setattr(svdd, "train_svdd", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    args = ["--data-root", tiny_root, "--out", str(tmp_path), "--normal-class", "3"] + FAST
    with pytest.raises(SystemExit):
        run.main(args)
    monkeypatch.setattr(svdd, "train_svdd", real)
    metrics = run.main(args)
    (run_dir,) = tmp_path.glob("*-mnist-3-*")
    pretrain = json.loads((run_dir / "history.json").read_text())["stage 1 (ae)"]
    assert metrics["seconds_before_resume"] >= sum(r["seconds"] for r in pretrain) > 0
    assert metrics["seconds"] > metrics["seconds_before_resume"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads a process's children from /proc (Linux)")
def test_sweep_workers_end_when_their_parent_is_killed(tiny_root, tmp_path):
    # property: kill -9 of a --jobs 2 sweep's parent leaves no worker running on (each watches its parent)
    args = ["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "own", "--normal-class", "1,2",
            "--jobs", "2", "--settings", "port", "--ae-epochs", "500", "--quiet"]
    parent = subprocess.Popen([sys.executable, os.path.join(HERE, "sweep.py")] + args, cwd=HERE,
                              env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL)
    children = f"/proc/{parent.pid}/task/{parent.pid}/children"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(tmp_path.glob("sweep-*/class*/console.log"))) < 2:
        time.sleep(0.2)                                               # both workers have begun a run
    workers = [int(p) for p in open(children).read().split()]
    assert len(workers) >= 2
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(os.path.exists(f"/proc/{w}") and
                                         open(f"/proc/{w}/stat").read().split()[2] != "Z" for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}") and open(f"/proc/{w}/stat").read().split()[2] != "Z"]


# ---------------------------------------------------------------------------------------------------
# run.py: the decision, score.py, your own images, the shallow detectors
# ---------------------------------------------------------------------------------------------------

def _scores_csv(run_dir):
    rows = list(csv.DictReader(open(run_dir / "scores.csv")))
    return np.array([int(r["label"]) for r in rows]), np.array([float(r["score"]) for r in rows]), \
        np.array([int(r["flagged"]) for r in rows])


def test_evaluate_quantile_threshold_has_the_nu_property():
    # property: fewer than level n training scores lie above t, at least level n at or above it
    s = np.random.default_rng(0).normal(size=997)
    for level in (0.01, 0.05, 0.1, 0.5):
        t = evaluate.quantile_threshold(s, level)
        assert (s > t).mean() < level <= (s >= t).mean()
    assert evaluate.quantile_threshold([1.0, 2.0, 3.0, 4.0], 0.25) == 4.0   # k = 1: the largest


def test_evaluate_decision_hand_example():
    # property: precision, recall and F1 of flagging s > t, counted by hand
    y, s = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.9, 0.8, 0.2, 0.7])
    d = evaluate.decision(y, s, 0.5)                                 # flagged: 0.9 (FP), 0.8, 0.7 (TP)
    assert (d["precision"], d["recall"], d["test_flagged"]) == (2 / 3, 2 / 3, 0.6) and abs(d["f1"] - 2 / 3) < 1e-12


@pytest.mark.parametrize("objective", ["soft-svdd", "ocnn"])
def test_run_threshold_is_R2_or_r_by_construction(tiny_root, tmp_path, objective):
    # property: for soft-boundary Deep SVDD and OC-NN the (1 - nu)-quantile of the training scores is R^2 (r):
    # 0 in score units, where the objective put its boundary; the training fraction flagged is below nu
    m = run.main(["--data-root", tiny_root, "--out", str(tmp_path), "--objective", objective] + FAST)
    (run_dir,) = tmp_path.glob("*-mnist-0-*")
    R2 = torch.load(run_dir / "model.pt", weights_only=True).get("R", 0.0) ** 2
    assert abs(m["threshold"]) <= 1e-6 * max(1.0, R2) and m["threshold_level"] == 0.1
    assert m["train_flagged"] < 0.1


def test_run_decision_fields_match_scores_csv(tiny_root, tmp_path):
    # property: scores.csv's flagged column is score > threshold, and metrics.json's precision, recall and F1
    # are those of these flags; the threshold is the (1 - flag_rate)-quantile of the training scores
    m = run.main(["--data-root", tiny_root, "--out", str(tmp_path), "--flag-rate", "0.2"] + FAST)
    (run_dir,) = tmp_path.glob("*-mnist-0-*")
    y, s, flagged = _scores_csv(run_dir)
    assert (flagged == (s > m["threshold"])).all() and m["threshold_level"] == 0.2 and m["train_flagged"] < 0.2
    tp = int((flagged & (y == 1)).sum())
    assert m["precision"] == tp / flagged.sum() and m["recall"] == tp / (y == 1).sum()


def test_run_calibration_sets_the_threshold_on_the_held_out_images(tiny_root, tmp_path):
    # property: with --calibration the threshold is the (1 - level)-quantile of the held-out images' scores
    # (their flagged fraction is at most the level), the run trains on the others, and the cache key moves
    args = ["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "kde", "--kde-bandwidth", "1",
            "--calibration", "0.4"]
    m = run.main(args)
    d = data.one_class_split("mnist", 0, root=tiny_root, calibration=0.4)
    detector, _ = shallow.fit("kde", d.x_train.flatten(1).double(), bandwidth=1.0)
    want = evaluate.quantile_threshold(shallow.score("kde", detector, d.x_cal.flatten(1).double()).numpy(), 0.1)
    assert m["n_train"] == len(d.x_train) == 18 and abs(m["threshold"] - want) < 1e-9 * abs(want)
    assert "calibration_flagged" in m and "train_flagged" not in m
    cfg = settings.parse_config(args)
    assert settings.used_settings(cfg)["calibration"] == 0.4
    assert "calibration" not in settings.used_settings(settings.parse_config(args[:-2]))  # 0: keys as before
    with pytest.raises(SystemExit) as stop:                          # 3 held out cannot set a 10 % threshold
        run.main(args[:-1] + ["0.1"])
    assert stop.value.code == 2


def test_run_resumes_only_a_run_of_the_same_later_settings(tmp_path):
    # property: a plain run does not resume an unfinished folder saved with --width 2 (unset, the later settings
    # are not in the key), and does resume one saved before such a setting existed, read at its default
    later = settings.later_defaults()
    want = lambda *flags: {**settings.used_settings(settings.parse_config(list(flags))), "data_fingerprint": "x",
                           **{k: getattr(settings.parse_config(list(flags)), k) for k in later}}
    for stamp, saved in (("20260101-000001", want("--width", "2")), ("20260101-000000", want())):
        os.makedirs(tmp_path / f"{stamp}-run")
        folders.write_json(str(tmp_path / f"{stamp}-run" / "config.json"),
                           {k: v for k, v in saved.items() if stamp.endswith("1") or k not in later})
    assert folders.unfinished_run(str(tmp_path), "run", want(), later).endswith("000000-run")
    assert folders.unfinished_run(str(tmp_path), "run", want("--width", "2"), later).endswith("000001-run")


def test_run_warns_when_the_threshold_flags_far_more_unseen_images_than_asked():
    # property: the warning fires only beyond four binomial standard deviations of the level
    assert run.optimistic(0.217, 0.1, 1000) and not run.optimistic(0.129, 0.1, 1000)
    assert not run.optimistic(0.3, 0.1, 10) and not run.optimistic(0.5, 0.1, 0)


@pytest.mark.parametrize("method", [["--objective", "ocnn"],
                                    ["--pretrain", "geom", "--geom-transforms", "rot", "--geom-epochs", "1"],
                                    ["--pretrain", "geom", "--geom-transforms", "rot", "--geom-epochs", "1",
                                     "--geom-precise-bn", "--objective", "svdd"]])
def test_score_py_gives_the_runs_own_scores_to_its_test_images(tiny_root, tmp_path, method):
    # property: the test images saved as PNG and scored by score.py with the run folder get the scores and
    # flags of their rows in the run's scores.csv (same model, preprocessing constants and threshold), for an
    # autoencoder's run and for transformation prediction's own score and codes
    run.main(["--data-root", tiny_root, "--out", str(tmp_path / "runs")] + FAST + method)
    (run_dir,) = (tmp_path / "runs").glob("*-mnist-0-*")
    x, _ = data.load_mnist(tiny_root, False)
    for i in range(12):
        _png(str(tmp_path / "new" / f"{i:02d}.png"), x[i], "L")
    score.main([str(run_dir), str(tmp_path / "new"), "--out", str(tmp_path / "scored.csv")])
    rows = list(csv.DictReader(open(tmp_path / "scored.csv")))
    _, s, flagged = _scores_csv(run_dir)
    assert [os.path.basename(r["path"]) for r in rows] == [f"{i:02d}.png" for i in range(12)]
    assert np.allclose([float(r["score"]) for r in rows], s[:12], rtol=1e-5, atol=1e-7)
    assert [int(r["flagged"]) for r in rows] == flagged[:12].tolist()


def test_score_py_refuses_images_of_another_kind(tiny_root, tmp_path, capsys):
    # property: a colour or a differently sized image is refused in one sentence, exit 2, nothing written
    run.main(["--data-root", tiny_root, "--out", str(tmp_path / "runs"), "--objective", "own"] + FAST)
    (run_dir,) = (tmp_path / "runs").glob("*-mnist-0-*")
    _png(str(tmp_path / "rgb.png"), np.zeros((32, 32, 3), np.uint8), "RGB")
    with pytest.raises(SystemExit) as e:
        score.main([str(run_dir), str(tmp_path / "rgb.png"), "--out", str(tmp_path / "scored.csv")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "28x28 greyscale" in err
    assert not (tmp_path / "scored.csv").exists()


def _mnist_as_folder(root, out):
    """The tiny MNIST written as a folder of PNGs, file names the IDX index: same images, same order per class."""
    for split, train in (("train", True), ("test", False)):
        x, y = data.load_mnist(root, train)
        for i, (img, k) in enumerate(zip(x, y)):
            _png(os.path.join(out, split, str(k), f"{i:05d}.png"), img, "L")
    return out


def test_run_folder_of_pngs_scores_as_the_idx_files(tiny_root, tmp_path):
    # property: --dataset folder on the tiny MNIST written as PNGs (class folders 0..9) trains on the same
    # images in the same order and gives the AUROC of --dataset mnist; --normal-class takes the folder's name
    folder = _mnist_as_folder(tiny_root, str(tmp_path / "pngs"))
    flags = ["--out", str(tmp_path / "runs"), "--normal-class", "3", "--objective", "svdd"] + FAST
    idx = run.main(["--data-root", tiny_root] + flags)
    png = run.main(["--data-root", folder, "--dataset", "folder"] + flags)
    assert png["auroc"] == idx["auroc"] and png["n_train"] == idx["n_train"]
    (run_dir,) = (tmp_path / "runs").glob("*-folder-3-*")
    assert json.loads((run_dir / "config.json").read_text())["folder"]["classes"] == [str(k) for k in range(10)]


def test_sweep_folder_classes_by_name_and_all(tiny_root, tmp_path):
    # property: sweep.py takes a folder's class names, and 'all' means every class folder
    folder = str(tmp_path / "pngs")
    for split in ("train", "test"):
        for k, name in enumerate(("cat", "dog", "fox")):
            for i in range(4):
                _png(os.path.join(folder, split, name, f"{i}.png"), np.full((28, 28), 40 * k + 10 * i, np.uint8), "L")
    cfg, classes, _, _ = sweep.parse(["--dataset", "folder", "--data-root", folder, "--normal-class", "fox,cat"])
    assert classes == [2, 0] and sweep.parse(["--dataset", "folder", "--data-root", folder,
                                              "--normal-class", "all"])[1] == [0, 1, 2]


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "folder", "--data-root", "{p}/none"], "there is no {p}/none/train folder"),
    (["--dataset", "folder", "--data-root", "{p}/pngs", "--normal-class", "wolf"], "'wolf' is not a class"),
])
def test_run_folder_bad_input_one_sentence_exit_2(tmp_path, capsys, argv, message):
    # property: a folder without train/, or an unknown class name: one sentence, exit status 2
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            _png(str(tmp_path / "pngs" / split / name / "0.png"), np.zeros((28, 28), np.uint8), "L")
    with pytest.raises(SystemExit) as e:
        run.main([a.replace("{p}", str(tmp_path)) for a in argv] + ["--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message.replace("{p}", str(tmp_path)) in err, err


# ---------------------------------------------------------------------------------------------------
# geom.py: the transformations, the network, the own score
# ---------------------------------------------------------------------------------------------------

def test_geom_four_quarter_turns_are_the_identity():
    # property: T_1 applied four times gives the image back, exactly
    x = torch.rand(3, 2, 9, 9)
    y = x
    for _ in range(4):
        y = geom.transform(y, 1, "rot")
    assert torch.equal(y, x)


@pytest.mark.parametrize("name", ["rot", "rot-flip", "geom"])
def test_geom_kth_copy_carries_label_k_and_equals_transform(name):
    # property: in transform_batch, the k-th block of B images is transform(x, k) and carries label k
    x = torch.rand(3, 1, 12, 12)
    images, labels = geom.transform_batch(x, name)
    K = len(geom.TRANSFORMS[name])
    assert images.shape == (K * 3, 1, 12, 12) and labels.shape == (K * 3,)
    for k in range(K):
        assert torch.equal(images[3 * k:3 * k + 3], geom.transform(x, k, name))
        assert labels[3 * k:3 * k + 3].tolist() == [k, k, k]


def test_geom_transform_each_applies_the_drawn_transformation_per_image():
    # property: transform_each(x, labels) row i equals transform(x_i, labels_i)
    x, labels = torch.rand(5, 1, 10, 10), torch.tensor([0, 71, 5, 5, 40])
    out = geom.transform_each(x, labels, "geom")
    for i, k in enumerate(labels.tolist()):
        assert torch.equal(out[i:i + 1], geom.transform(x[i:i + 1], k, "geom"))


def test_geom_random_flip_mirrors_the_drawn_images_only_and_refuses_a_set_that_predicts_flips():
    # property: random_flip mirrors image i exactly where the seeded draw is below 1/2, leaves the rest; a set
    # with flip labels refuses the augmentation (its labels would be blurred), in geom.py and as a flag
    x = torch.rand(64, 3, 8, 8)
    out = geom.random_flip(x, torch.Generator().manual_seed(5))
    drawn = torch.rand(64, generator=torch.Generator().manual_seed(5)) < 0.5
    assert torch.equal(out[drawn], x[drawn].flip(-1)) and torch.equal(out[~drawn], x[~drawn]) and 0 < drawn.sum() < 64
    for name in ("rot-flip", "geom"):
        with pytest.raises(ValueError, match="predicts flips"):
            geom.train_geom(geom.build_geom("mnist", name), torch.rand(4, 1, 28, 28), transforms=name, epochs=1,
                            lr=1e-3, weight_decay=0, milestones=(), flip=True)
        with pytest.raises(settings.UserError, match="--geom-flip"):
            settings.parse_config(["--pretrain", "geom", "--geom-transforms", name, "--geom-flip"])


def test_geom_shift_keeps_the_size_and_moves_interior_content_by_8():
    # property: out[i, j] = x[i + dy, j + dx] inside the image; the shape is unchanged
    x = torch.rand(2, 3, 28, 28)
    out = geom.shift(x, 8, -8)
    assert out.shape == x.shape
    assert torch.equal(out[..., 5, 12], x[..., 13, 4])


def test_geom_shift_border_is_scipys_half_sample_reflection():
    # property: a shift of 2 on [0 1 2 3 4] gives [2 3 4 4 3] (scipy.ndimage 'reflect', GEOM's Keras border)
    x = torch.arange(5.0).view(1, 1, 1, 5)
    assert geom.shift(x, 0, 2).flatten().tolist() == [2, 3, 4, 4, 3]
    assert geom.shift(x, 0, -2).flatten().tolist() == [1, 0, 0, 1, 2]


@pytest.mark.parametrize("name,K", [("rot", 4), ("rot-flip", 8), ("geom", 72)])
def test_geom_sets_have_K_distinct_transformations(name, K):
    # property: no two transformations of a set give the same random image
    x = torch.rand(1, 1, 28, 28)
    assert len(geom.TRANSFORMS[name]) == K
    images, _ = geom.transform_batch(x, name)
    assert len({tuple(im.flatten().tolist()) for im in images}) == K


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_geom_encoder_has_no_bias_and_loads_into_phi(dataset):
    # property: Deep SVDD's Prop. 2 holds for the encoder (no bias anywhere); its state dict loads into phi
    model = geom.build_geom(dataset, "rot")
    assert not any("bias" in n for n, _ in model.encoder.named_parameters())
    assert all(getattr(m, "bias", None) is None for m in model.encoder.modules())
    phi = ae.build_encoder(dataset)
    phi.load_state_dict(model.encoder.state_dict())
    x = torch.rand(4, *((1, 28, 28) if dataset == "mnist" else (3, 32, 32)))
    z = model.encoder.eval()(x)                                 # (4, rep_dim)
    assert torch.equal(phi.eval()(x), z) and torch.equal(ae.encoder_copy(model).eval()(x), z)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_width_multiplies_every_convolutions_channels_and_keeps_the_code(dataset):
    # property: --width 2 doubles each (de)convolution's channels, the code keeps rep_dim, no bias enters, and
    # the stand-alone phi that Deep SVDD trains is the same width and gives the same codes
    one, two = (ae.build_autoencoder(dataset, width=w) for w in (1, 2))
    convs = lambda m: [l.out_channels for l in m.modules() if isinstance(l, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [2 * c for c in convs(one)[:-1]] == convs(two)[:-1] and convs(one)[-1] == convs(two)[-1]
    assert all(getattr(m, "bias", None) is None for m in two.encoder.modules())
    x = torch.rand(3, *((1, 28, 28) if dataset == "mnist" else (3, 32, 32)))
    z = two.encoder.eval()(x)
    assert z.shape == one.encoder.eval()(x).shape and two.eval()(x).shape == x.shape
    assert torch.equal(ae.encoder_copy(two).eval()(x), z)
    assert geom.build_geom(dataset, "rot", width=2).encoder.conv1.out_channels == convs(two)[0]


def _tiny_run(seed):
    torch.manual_seed(seed)                                     # the network's initial weights
    model = geom.build_geom("mnist", "rot-flip")
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    geom.train_geom(model, x, transforms="rot-flip", epochs=1, lr=1e-3, weight_decay=1e-6, milestones=(),
                    batch_size=32, seed=seed, verbose=False)
    return geom.geom_scores(model, x[:16], "rot-flip")


def test_geom_same_seed_same_scores():
    # property: training and scoring are deterministic given the seed
    assert torch.equal(_tiny_run(0), _tiny_run(0))


def test_geom_resumed_training_equals_uninterrupted(tmp_path):
    # property: 1 epoch, a checkpoint, 1 more epoch ends with the same weights as 2 epochs at once
    import training
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    kw = dict(transforms="geom", lr=1e-3, weight_decay=1e-6, milestones=(1,), batch_size=16, verbose=False)
    torch.manual_seed(0)
    a = geom.build_geom("mnist", "geom")
    geom.train_geom(a, x, epochs=2, **kw)
    torch.manual_seed(0)
    b = geom.build_geom("mnist", "geom")
    ckpt = training.Checkpoint(str(tmp_path / "ckpt.pt"), seconds=0)
    geom.train_geom(b, x, epochs=1, checkpoint=ckpt, **kw)
    c = geom.build_geom("mnist", "geom")
    history = geom.train_geom(c, x, epochs=2, checkpoint=ckpt, **kw)
    assert len(history) == 2
    for (name, p), q in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.equal(p, q), name


def test_geom_precise_bn_sets_each_statistic_to_the_average_over_the_pass():
    # property: precise BN drops the stale running statistics for the plain average, over the pass's batches
    # (drawn as in training), of the first BatchNorm's batch mean and (unbiased) variance; the momentum is
    # given back
    torch.manual_seed(0)
    model = geom.build_geom("mnist", "rot")
    bn = model.encoder.bn1
    bn.running_mean.fill_(5.0), bn.running_var.fill_(100.0)
    x = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    geom.precise_bn(model, x, "rot", batch_size=12, seed=7)
    g, means, variances = torch.Generator().manual_seed(7), [], []
    for idx in training.batches(24, 12, g):
        h = model.encoder.conv1(geom.transform_random(x[idx], "rot", g)[0])    # (12, C, H, W) bn1's input
        means.append(h.mean((0, 2, 3))), variances.append(h.transpose(0, 1).flatten(1).var(1))
    assert torch.allclose(bn.running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert torch.allclose(bn.running_var, (variances[0] + variances[1]) / 2, rtol=1e-4)
    assert bn.momentum == 0.1 and not model.training


def test_geom_own_score_is_higher_for_another_digit():
    # property: trained on upright 7s, the score is higher on 0s (nearly half-turn symmetric) than on the 7s it
    # trained on and on held-out 7s
    if not os.path.isdir(os.path.join(HERE, "data", "mnist")):
        pytest.skip("MNIST not found under data/mnist")
    x, y = data.load_mnist(os.path.join(HERE, "data"), False)
    x = torch.from_numpy(x).float().unsqueeze(1) / 255          # (N, 1, 28, 28)
    sevens, zeros = x[torch.from_numpy(y == 7)], x[torch.from_numpy(y == 0)]
    torch.manual_seed(0)
    model = geom.build_geom("mnist", "rot")
    geom.train_geom(model, sevens[:300], transforms="rot", epochs=4, lr=1e-3, weight_decay=1e-6, milestones=(),
                    batch_size=50, verbose=False)
    s_trained, s_normal = geom.geom_scores(model, sevens[:300], "rot"), geom.geom_scores(model, sevens[300:500], "rot")
    s_other = geom.geom_scores(model, zeros[:200], "rot")
    assert s_other.mean() > s_normal.mean() and s_other.mean() > s_trained.mean()


# ---------------------------------------------------------------------------------------------------
# Faults a user found in the model files, data.py and shallow.py
# ---------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------
# shallow.py: out-of-sample training scores, finite scores
# ---------------------------------------------------------------------------------------------------

def test_shallow_kde_threshold_from_train_scores_flags_the_level_of_unseen_points():
    # property: a KDE threshold from shallow.train_scores (leave one out) at level 0.1 flags about 10 % of
    # held-out points of the same distribution; one from the in-sample scores flags far more
    rng = np.random.default_rng(0)
    x, held = torch.from_numpy(rng.standard_normal((200, 10))), torch.from_numpy(rng.standard_normal((1000, 10)))
    model, _ = shallow.fit("kde", x)
    s = shallow.score("kde", model, held).numpy()
    loo = evaluate.quantile_threshold(shallow.train_scores("kde", model, x).numpy(), 0.1)
    in_sample = evaluate.quantile_threshold(shallow.score("kde", model, x).numpy(), 0.1)
    assert 0.03 <= (s > loo).mean() <= 0.25
    assert (s > in_sample).mean() > 0.5


def test_shallow_kde_leave_one_out_equals_the_brute_force_sum():
    # property: train_scores of a KDE = -log(1/(n-1) sum_{j != i} N(x_i; x_j, h^2 I)), summed term by term
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0]], dtype=torch.float64)
    h, (n, d) = 0.7, x.shape
    model, _ = shallow.fit("kde", x, bandwidth=h)
    brute = [-math.log(sum(math.exp(-float(((x[i] - x[j]) ** 2).sum()) / (2 * h ** 2))
                           / (2 * math.pi * h ** 2) ** (d / 2) for j in range(n) if j != i) / (n - 1))
             for i in range(n)]
    assert torch.allclose(shallow.train_scores("kde", model, x), torch.tensor(brute, dtype=torch.float64))


def test_shallow_ocsvm_gamma_too_large_for_the_kernel_is_a_shallow_error():
    # property: a gamma whose kernel is not finite (1e300 overflows float32) stops the fit with ShallowError
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((30, 3)))
    with pytest.raises(shallow.ShallowError, match="gamma"):
        model, _ = shallow.fit("ocsvm", x, gamma=1e300)
        shallow.score("ocsvm", model, x)


def test_shallow_non_finite_scores_are_a_shallow_error():
    # property: a KDE whose scores overflow (a bandwidth of 1e-200) raises ShallowError, never returns inf
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((30, 3)))
    model, _ = shallow.fit("kde", x, bandwidth=1e-200)
    with pytest.raises(shallow.ShallowError, match="not finite"):
        shallow.score("kde", model, x + 1)


# ---------------------------------------------------------------------------------------------------
# training.py: batches, divergence
# ---------------------------------------------------------------------------------------------------

def test_training_batches_lone_last_index_joins_the_batch_before():
    # property: batches are the plain batch_size slices of the permutation, except that a last chunk of one
    # index joins the chunk before it (201 at 200: one batch of 201)
    for n, size in [(201, 200), (9, 4), (10, 4), (8, 4), (3, 5), (1, 4), (7, 1), (400, 200)]:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        plain = [perm[i:i + size] for i in range(0, n, size)]
        if len(plain) > 1 and len(plain[-1]) == 1 and size > 1:
            plain = plain[:-2] + [torch.cat(plain[-2:])]
        got = list(training.batches(n, size, torch.Generator().manual_seed(n)))
        assert len(got) == len(plain) and all(torch.equal(a, b) for a, b in zip(got, plain)), (n, size)


def test_training_cifar_autoencoder_trains_when_one_image_is_left_over():
    # property: 3 colour images at batch size 2 train (no BatchNorm1d batch of one)
    torch.manual_seed(0)
    hist = ae.train_autoencoder(ae.build_autoencoder("cifar10", 16), torch.rand(3, 3, 32, 32), epochs=1,
                                weight_decay=0.0, milestones=(), batch_size=2, verbose=False)
    assert len(hist) == 1


def _poison_after_each_step(monkeypatch):
    """Adam's step, then the first trained tensor set to NaN: the weights break while the loss was finite."""
    step = torch.optim.Adam.step

    def poisoned(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return out
    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)


@pytest.mark.parametrize("loop", ["pretrain ae", "pretrain rcae", "svdd", "ocnn z-only"])
def test_training_loops_stop_on_nan_weights_before_the_checkpoint(loop, tmp_path, monkeypatch):
    # property: weights that turn NaN in the epoch's last step (its loss still finite) raise Diverged naming the
    # stage and the epoch, and no checkpoint of the broken state is written
    torch.manual_seed(0)
    x, model = torch.rand(4, 1, 28, 28), ae.build_autoencoder("mnist", 16)
    phi = ae.encoder_copy(model)
    checkpoint = training.Checkpoint(str(tmp_path / "checkpoint.pt"), seconds=0)
    kw = dict(batch_size=200, verbose=False, checkpoint=checkpoint)
    train = {"pretrain ae": lambda: ae.train_autoencoder(model, x, epochs=1, weight_decay=0.0, milestones=(), **kw),
             "pretrain rcae": lambda: rcae.train_rcae(model, x, epochs_per_iter=1, outer_iters=1, weight_decay=0.0,
                                                      milestones=(), **kw),
             "svdd": lambda: svdd.train_svdd(phi, x, weight_decay=0.0, epochs=1, **kw),
             "ocnn z-only": lambda: ocnn.train_ocnn(phi, x, epochs=1, hidden=4, **kw)}[loop]
    _poison_after_each_step(monkeypatch)
    with pytest.raises(training.Diverged, match=f"{loop}: .*epoch 1"):
        train()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_training_svdd_huge_learning_rate_raises_diverged():
    # property: lr 1e10 on a tiny Deep SVDD run (finite but exploded weights) raises Diverged naming the stage
    torch.manual_seed(0)
    phi = ae.build_encoder("mnist", 16)
    with pytest.raises(training.Diverged, match="svdd: .*learning rate"):
        svdd.train_svdd(phi, torch.rand(8, 1, 28, 28), weight_decay=0.0, epochs=1, lr=1e10, verbose=False)


# ---------------------------------------------------------------------------------------------------
# data.py: file names, constant images, class names, download
# ---------------------------------------------------------------------------------------------------

def _png_bytes(array, mode="L"):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder(root, classes, images, names=None):
    """root/{train,test}/<class>/<name>.png for each class: images[k] (uint8 arrays) of class k."""
    for split in ("train", "test"):
        for c, imgs in zip(classes, images):
            folder = os.path.join(os.fsencode(str(root)), split.encode(), c.encode())
            os.makedirs(folder, exist_ok=True)
            for i, img in enumerate(imgs):
                name = names[i] if names else f"{i}.png".encode()
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(_png_bytes(img))
    return str(root)


def test_data_fingerprint_takes_a_file_name_that_is_not_utf8(tmp_path):
    # property: a folder holding the file b"\xff.png" (not UTF-8) is fingerprinted, and the name counts
    img = np.arange(16, dtype=np.uint8).reshape(4, 4)
    a = _folder(tmp_path / "a", ["x", "y"], [[img], [img.T]], names=[b"\xff.png"])
    b = _folder(tmp_path / "b", ["x", "y"], [[img], [img.T]], names=[b"\xfe.png"])
    assert os.fsdecode(b"\xff.png") in os.listdir(os.path.join(a, "train", "x"))
    fa, fb = data.fingerprint("folder", a), data.fingerprint("folder", b)
    assert len(fa) == 16 and fa != fb


def test_data_gcn_l1_maps_a_constant_image_to_exact_zeros():
    # property: a constant image (whose mean rounds off the constant) maps to zeros, not to +-1
    for value in (0.1, 0.3, 0.7, 7 / 255, 100 / 255):
        for shape in ((1, 1, 28, 28), (1, 3, 32, 32)):
            assert torch.equal(data.gcn_l1(torch.full(shape, value, dtype=torch.float64)),
                               torch.zeros(shape, dtype=torch.float64)), (value, shape)


@pytest.mark.parametrize("scaling", ["class", "image", "minmax"])
def test_data_split_refuses_a_constant_training_set(tmp_path, scaling):
    # property: a normal class whose training images are all one constant after preprocessing is a DataError
    # (min-max scaling would divide by max - min = 0), not NaN or a silent run
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 28, 28)).astype(np.uint8)
    y = np.arange(20) % 2
    x[y == 0] = 77  # class 0: every image the same constant grey
    for train in (True, False):
        _write_idx(str(tmp_path), train, x, y)
    with pytest.raises(data.DataError, match="constant"):
        data.one_class_split("mnist", 0, root=str(tmp_path), scaling=scaling)


def test_data_folder_of_1x1_images_is_refused(tmp_path):
    # property: 1x1 images (constant once resized) are a DataError under the default scaling, not a silent run
    rng = np.random.default_rng(0)
    imgs = [[rng.integers(0, 256, size=(1, 1)).astype(np.uint8) for _ in range(4)] for _ in range(2)]
    root = _folder(tmp_path, ["a", "b"], imgs)
    with pytest.raises(data.DataError, match="constant"):
        data.one_class_split("folder", 0, root=root)


def test_data_class_index_refuses_an_index_when_classes_are_words(tmp_path):
    # property: with classes named in words, a name is taken and an index (3 or "3") is refused listing the
    # names; with classes named 0..n-1 the number is the name and the index at once
    words = _folder(tmp_path / "w", ["nine", "one", "three", "two"], [[np.zeros((2, 2), np.uint8)]] * 4)
    assert data.class_index(words, "three") == 2
    for bad in (3, "3"):
        with pytest.raises(data.DataError, match="nine, one, three, two"):
            data.class_index(words, bad)
    digits = _folder(tmp_path / "d", ["0", "1", "2"], [[np.zeros((2, 2), np.uint8)]] * 3)
    assert data.class_index(digits, 1) == 1 and data.class_index(digits, "2") == 2


def test_data_download_failure_removes_its_folder_and_names_the_md5(tmp_path):
    # property: a failed CIFAR-10 download leaves no folder behind, and the message names the file, the
    # folder to put it in, and the MD5 to check a copy against
    root = tmp_path / "root"
    with _serve(handler=_CutHandler) as url, pytest.raises(data.DataError) as e:
        data.download("cifar10", str(root), mirrors=[url])
    (name, md5), = data.CIFAR_FILES.items()
    msg = str(e.value)
    assert name in msg and md5 in msg and os.path.join(str(root), "cifar10") in msg
    assert not (root / "cifar10").exists() and not root.exists()


# ---------------------------------------------------------------------------------------------------
# What a run prints and saves holds: the faults a user found
# ---------------------------------------------------------------------------------------------------

def test_run_kde_threshold_flags_about_the_level_of_the_normal_test_images(tiny_root, tmp_path, capsys):
    # property: the KDE's threshold comes from leave-one-out training scores, so it flags about --flag-rate of
    # the normal test images (its in-sample scores flagged all of them), and the console says how many
    m = run.main(["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "kde", "--normal-class", "3"])
    assert m["normal_test_flagged"] < 0.4 and m["train_flagged"] <= 0.1
    assert f"{100 * m['normal_test_flagged']:.1f}% of the normal test images" in capsys.readouterr().out


def _class_folder(root, names, n=12, seed=0):
    """A greyscale folder data set, classes `names`, n train and n test images each, every class its own
    brightness (learnable), as root/{train,test}/<name>/<i>.png."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for k, name in enumerate(names):
            for i in range(n):
                img = np.clip(rng.normal(40 + 50 * k, 20, (28, 28)), 0, 255).astype(np.uint8)
                _png(os.path.join(root, split, name, f"{i}.png"), img, "L")
    return str(root)


def test_score_py_needs_the_run_folder_alone(tmp_path, capsys):
    # property: a finished folder run scores new images with the training folder moved away and its
    # config.json edited by hand (model.pt alone is read), and gives them the run's own scores
    root = _class_folder(tmp_path / "pngs", ["cat", "dog"])
    run.main(["--dataset", "folder", "--data-root", root, "--out", str(tmp_path / "runs"), "--normal-class", "dog",
              "--objective", "svdd"] + FAST)
    (run_dir,) = (tmp_path / "runs").glob("*-folder-1-dog-ae+svdd")
    shutil.copytree(os.path.join(root, "test"), tmp_path / "new")
    shutil.move(root, tmp_path / "moved")
    config = json.loads((run_dir / "config.json").read_text())
    config.pop("network")
    (run_dir / "config.json").write_text(json.dumps(dict(config, rep_dim=64)))
    scores = score.main([str(run_dir), str(tmp_path / "new"), "--out", str(tmp_path / "scored.csv")])
    _, s, _ = _scores_csv(run_dir)
    assert np.allclose(sorted(scores), sorted(s), rtol=1e-5, atol=1e-7)


def test_score_py_refuses_a_damaged_model_without_changing_it(tiny_root, tmp_path, capsys):
    # property: a damaged model.pt is refused in one sentence (exit 2) and left where and as it is
    run.main(["--data-root", tiny_root, "--out", str(tmp_path / "runs"), "--objective", "own"] + FAST)
    (run_dir,) = (tmp_path / "runs").glob("*-mnist-0-*")
    (run_dir / "model.pt").write_bytes(b"not a model")
    _png(str(tmp_path / "new" / "0.png"), np.zeros((28, 28), np.uint8), "L")
    with pytest.raises(SystemExit) as e:
        score.main([str(run_dir), str(tmp_path / "new"), "--out", str(tmp_path / "scored.csv")])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    assert (run_dir / "model.pt").read_bytes() == b"not a model" and not list(run_dir.glob("*.corrupt"))


@pytest.mark.parametrize("case", ["out is a folder", "read-only", "cuda"])
def test_score_py_user_mistakes_exit_2_in_one_sentence(tiny_root, tmp_path, capsys, monkeypatch, case):
    # property: --out a folder, --out on a read-only file system, --device cuda without CUDA: exit 2, one line
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    run.main(["--data-root", tiny_root, "--out", str(tmp_path / "runs"), "--objective", "own"] + FAST)
    (run_dir,) = (tmp_path / "runs").glob("*-mnist-0-*")
    _png(str(tmp_path / "new" / "0.png"), np.zeros((28, 28), np.uint8), "L")
    out = {"out is a folder": str(tmp_path / "new")}.get(case, str(tmp_path / "scored.csv"))
    if case == "read-only":
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(SystemExit) as e:
        score.main([str(run_dir), str(tmp_path / "new"), "--out", out] + (["--device", "cuda"] if case == "cuda" else []))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "disk" not in err, err


def test_cli_a_closed_output_pipe_ends_in_one_line():
    # property: `python run.py ... | head -1`: the reader leaves; one line on stderr, exit 1, no traceback
    code = "import settings; settings.cli(lambda: [print('x' * 1000, flush=True) for _ in range(10 ** 6)])"
    p = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == 1 and "pipe" in err and "Traceback" not in err and err.count("\n") == 1, err


def test_run_folder_classes_are_shown_by_their_names(tmp_path, capsys):
    # property: a folder's class is named wherever its index is: the run folder, the console, config.json,
    # metrics.json and a sweep's summary; a class named "all" is chosen by its name
    root = _class_folder(tmp_path / "pngs", ["all", "dog"])
    flags = ["--dataset", "folder", "--data-root", root, "--out", str(tmp_path / "runs"), "--objective", "kde"]
    m = run.main(flags + ["--normal-class", "all"])
    (run_dir,) = (tmp_path / "runs").glob("*-folder-0-all-pixels+kde")
    assert m["normal_class_name"] == "all" and "class 0-all" in capsys.readouterr().out
    assert json.loads((run_dir / "config.json").read_text())["normal_class_name"] == "all"
    sweep.main(flags + ["--normal-class", "dog"])
    (summary,) = (tmp_path / "runs").glob("sweep-*/summary.md")
    assert "| 1-dog |" in summary.read_text()


# ---------------------------------------------------------------------------------------------------
# Several classes as one normal class
# ---------------------------------------------------------------------------------------------------

def test_data_several_normal_classes_count_label_and_scale_as_their_union():
    # property: MNIST 1+7: the training set holds every training image of 1 and of 7 (the sum of the two
    # counts), the test labels are 0 exactly on test 1s and 7s, and lo, hi are the union's: the min of the two
    # classes' lo and the max of their hi
    one, seven = (data.one_class_split("mnist", k, root=DATA) for k in (1, 7))
    both = data.one_class_split("mnist", (1, 7), root=DATA)
    assert len(both.x_train) == len(one.x_train) + len(seven.x_train) and both.normal_class == (1, 7)
    assert torch.equal(both.y_test, (~torch.isin(both.test_classes, torch.tensor([1, 7]))).long())
    assert both.scale == (min(one.scale[0], seven.scale[0]), max(one.scale[1], seven.scale[1]))
    assert set(both.test_classes[both.y_test == 0].tolist()) == {1, 7}


def test_data_several_normal_classes_draw_the_pollution_from_the_others():
    # property: with pollution, the injected images all come from the classes outside the normal set, and make
    # the asked fraction of the union's training set
    x_all, y_all = data.load_mnist(DATA, True)
    d = data.one_class_split("mnist", (3, 5, 8), pollution_rate=0.1, root=DATA)
    injected = y_all[d.train_index[d.polluted].numpy()]
    assert not np.isin(injected, [3, 5, 8]).any() and d.polluted.float().mean().item() == pytest.approx(0.1, abs=1e-3)
    assert np.isin(y_all[d.train_index[~d.polluted].numpy()], [3, 5, 8]).all()


def test_exercise_one_sphere_pays_for_two_modes_on_pixels():
    # property (exercise 12): on pixels, one sphere around the mean image (phi = identity) loses more to the
    # exact KDE (fixed h) when the normal class is 1+7 than when it is 1 or 7 alone, in the mean over the
    # anomaly classes of the per-class AUROC: the centre lies between the two modes, where no normal image is
    gaps = {}
    for normal in (1, 7, (1, 7)):
        d = data.one_class_split("mnist", normal, root=DATA, scaling="minmax")
        x, xt, classes, y = d.x_train[::10].flatten(1).double(), d.x_test[:2000].flatten(1).double(), \
            d.test_classes[:2000], d.y_test[:2000]
        per_class = lambda s: np.mean(list(evaluate.auroc_per_class(classes.numpy(), y.numpy(), s.numpy()).values()))
        gaps[normal] = per_class(shallow.kde_scores(xt, x, 0.15)) - per_class(((xt - x.mean(0)) ** 2).sum(1))
    assert gaps[1, 7] > max(gaps[1], gaps[7]) + 0.03, gaps


def test_eval_auroc_per_class_hand_values():
    # property: each anomaly class against the normal images alone; normal {.1, .4}, class 3 {.5, .2}, class 5
    # {.9}: class 3 wins 2 + 1 of 4 pairs -> 0.75, class 5 wins 2 of 2 -> 1.0; normal classes get no entry
    got = evaluate.auroc_per_class(np.array([1, 7, 3, 3, 5]), np.array([0, 0, 1, 1, 1]),
                                   np.array([0.1, 0.4, 0.5, 0.2, 0.9]))
    assert got == {3: 0.75, 5: 1.0}


def test_run_several_normal_classes_are_one_set_in_any_order_and_named_everywhere(tmp_path, capsys):
    # property: --normal-class 7+1 and 1+7 are the same set (sorted), named 1+7 in the run folder, the console,
    # metrics.json and a sweep's summary; a folder's classes by name (dog+all); a repeated or every class exits 2
    root = _class_folder(tmp_path / "pngs", ["all", "cat", "dog"])
    flags = ["--dataset", "folder", "--data-root", root, "--out", str(tmp_path / "runs"), "--objective", "kde"]
    m = run.main(flags + ["--normal-class", "dog+all"])
    (run_dir,) = (tmp_path / "runs").glob("*-folder-0+2-all+dog-pixels+kde")
    assert m["normal_class"] == (0, 2) and m["n_train"] == 24 and "class 0+2-all+dog" in capsys.readouterr().out
    assert json.loads((run_dir / "metrics.json").read_text())["normal_class"] == [0, 2]
    sweep.main(flags + ["--normal-class", "all+dog,cat"])
    (summary,) = (tmp_path / "runs").glob("sweep-*/summary.md")
    assert "| 0+2-all+dog |" in summary.read_text() and "| 1-cat |" in summary.read_text()
    for bad in ("cat+cat", "all+cat+dog"):
        with pytest.raises(SystemExit) as e:
            run.main(flags + ["--normal-class", bad])
        assert e.value.code == 2


def test_run_batch_size_above_the_training_set_is_said(tiny_root, tmp_path, capsys):
    # property: a batch larger than the training set (one step an epoch) gets a one-line warning
    run.main(["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "own", "--batch-size", "500"] + SHORT)
    assert "warning: --batch-size 500 is above the 30 training images" in capsys.readouterr().out


@pytest.mark.parametrize("flags,stage", [(["--ae-lr", "1e10"], "ae"), (["--svdd-lr", "1e10"], "svdd")])
def test_run_divergence_stops_the_stage_and_caches_nothing(tiny_root, tmp_path, capsys, flags, stage):
    # property: a stage whose weights blow up stops there, named, exit 1; no cache entry, no finished run
    with pytest.raises(SystemExit) as e:
        run.main(["--data-root", tiny_root, "--out", str(tmp_path)] + FAST + flags)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and stage in err, err
    if stage == "ae":
        assert not list((tmp_path / "cache").glob("*-class0.pt"))
    assert not list(tmp_path.glob("*/metrics.json"))


def test_run_a_cache_entry_of_another_network_is_set_aside_in_one_line(tiny_root, tmp_path, capsys):
    # property: a cached representation that reads but holds another network's state (another version of the
    # code) ends the run in one line, exit 1, moved aside; the same command then trains afresh
    args = ["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "own", "--normal-class", "3"] + SHORT
    run.main(args)
    (cache,) = (tmp_path / "cache").glob("*-class3.pt")
    torch.save({"stage1": {"conv": torch.zeros(2)}, "history": [], "extra": {}}, cache)
    with pytest.raises(SystemExit) as e:
        run.main(args)
    assert e.value.code == 1 and capsys.readouterr().err.count("\n") == 1 and cache.with_suffix(".pt.corrupt").exists()
    assert run.main(args)["auroc"] > 0


def test_run_non_finite_scores_never_finish_a_run(tiny_root, tmp_path, capsys):
    # property: an OC-SVM gamma so large that every kernel value underflows: one line, no metrics.json
    with pytest.raises(SystemExit) as e:
        run.main(["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "ocsvm", "--ocsvm-gamma", "1e300"])
    assert e.value.code in (1, 2) and capsys.readouterr().err.count("\n") == 1
    assert not list(tmp_path.glob("*/metrics.json"))


@pytest.mark.slow
def test_run_cifar10_jpeg_folder_layout_scores_as_the_batches(tmp_path, convert):
    # property (end to end, real data): JPEGs of the CIFAR-10 copy in its own train/<class>/ test/<class>/
    # layout, read as a folder data set, give the AUROC that the batch loader gives for the same images (the
    # official batch format, written with the copy's own decoder): airplane's first 600 training images, one
    # of every other class, 60 test images a class; an order-free detector (KDE, a fixed bandwidth), as the
    # two loaders list the images in another order
    rows = {"train": [], "test": []}
    with tarfile.open(CIFAR_JPEG_TAR) as tar:
        for member in tar:
            m = convert.NAME_RE.match(member.name)
            if m and (int(m.group(3)) < 60 if m.group(1) == "test" else
                      int(m.group(3)) < (600 if m.group(2) == "airplane" else 1)):
                raw = tar.extractfile(member).read()
                (tmp_path / "jpeg" / m.group(1) / m.group(2)).mkdir(parents=True, exist_ok=True)
                (tmp_path / "jpeg" / member.name).write_bytes(raw)
                rows[m.group(1)].append((convert.decode(raw), convert.LABEL_NAMES.index(m.group(2))))
    batches = tmp_path / "batches" / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name, part in zip(data.CIFAR_BATCHES[True] + data.CIFAR_BATCHES[False],
                          [rows["train"][i::5] for i in range(5)] + [rows["test"]]):
        with open(batches / name, "wb") as f:
            pickle.dump({b"data": np.stack([x for x, _ in part]), b"labels": [k for _, k in part]}, f)
    flags = ["--out", str(tmp_path / "runs"), "--objective", "kde", "--kde-bandwidth", "8", "--quiet"]
    from_batches = run.main(["--dataset", "cifar10", "--data-root", str(tmp_path / "batches")] + flags)
    from_jpegs = run.main(["--dataset", "folder", "--data-root", str(tmp_path / "jpeg")] + flags)
    assert abs(from_jpegs["auroc"] - from_batches["auroc"]) < 1e-9 and from_jpegs["n_train"] == 600
    assert from_jpegs["scale"] == from_batches["scale"]


@pytest.mark.parametrize("flags", [["--objective", "kde"], ["--objective", "ocsvm", "--pca", "0.9"],
                                   ["--objective", "iforest"], ["--objective", "kde", "--features", "codes"],
                                   ["--objective", "ocsvm", "--ocsvm-gamma", "test-auroc"]])
def test_run_shallow_detectors_write_a_whole_run_folder(tiny_root, tmp_path, flags):
    # property: a shallow detector on pixels or codes writes the run folder of every objective, learns the
    # tiny classes (AUROC well above chance), and its saved model gives back the same test scores; the
    # paper code's test-auroc gamma scores only the 90 % of the test set it did not look at
    m = run.main(["--data-root", tiny_root, "--out", str(tmp_path), "--normal-class", "3"] + FAST + flags)
    (run_dir,) = tmp_path.glob("*-mnist-3-*")
    assert run_dir.name.endswith(("pixels+", "ae+")[flags[-1] == "codes"] + flags[1]) and m["auroc"] > 0.6
    _, _, score_fn, _, _, _ = score.load_run(str(run_dir), torch.device("cpu"))     # from model.pt alone
    d = data.one_class_split("mnist", 3, root=tiny_root)
    _, s, _ = _scores_csv(run_dir)
    assert np.allclose(score_fn(d.x_test).numpy(), s, rtol=1e-6)
    assert m["n_test_scored"] == (180 if "test-auroc" in flags else 200)


@pytest.mark.parametrize("argv,message", [
    (["--objective", "ocsvm", "--nu", "0"], "--nu must be a number in (0, 1]"),
    (["--objective", "kde", "--kde-bandwidth", "0"], "--kde-bandwidth must be a finite number > 0"),
    (["--objective", "ocsvm", "--ocsvm-gamma", "big"], "--ocsvm-gamma must be a number > 0, scale or test-auroc"),
    (["--objective", "iforest", "--pca", "1.5"], "--pca must be a number in [0, 1]"),
])
def test_run_shallow_bad_values_one_sentence_exit_2(argv, message, capsys):
    # property: a shallow detector's bad setting is refused in one line, exit 2, before any work
    with pytest.raises(SystemExit) as e:
        run.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_run_ocsvm_that_does_not_converge_says_so(tiny_root, tmp_path, monkeypatch, capsys):
    # property: an OC-SVM that stops before the KKT tolerance ends in one sentence and exit 2
    real = shallow.ocsvm_fit
    monkeypatch.setattr(shallow, "ocsvm_fit", lambda *a, **kw: real(*a, **kw, max_iter=1))
    with pytest.raises(SystemExit) as e:
        run.main(["--data-root", tiny_root, "--out", str(tmp_path), "--objective", "ocsvm"] + FAST)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "did not converge" in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_run_killed_twice_resumes_to_the_same_weights_and_auroc(tiny_root, tmp_path):
    # property: a run killed in pretraining and again in Deep SVDD, started again with the same command each
    # time, ends with the weights, scores and AUROC of an uninterrupted run, leaves no checkpoint behind, and
    # counts in its seconds the epochs saved before the kill
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER.format(here=HERE))
    args = ["--data-root", tiny_root, "--settings", "port", "--normal-class", "3", "--ae-epochs", "6",
            "--svdd-epochs", "6", "--batch-size", "16", "--checkpoint-seconds", "0", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    call = lambda limit, out: subprocess.run([sys.executable, str(killer), str(limit)] + args + ["--out", str(out)],
                                             env=env, capture_output=True, text=True)
    call(0, tmp_path / "whole")                                     # 30 images: 2 batches per epoch
    assert call(7, tmp_path / "cut").returncode == -9               # in AE epoch 4
    assert list((tmp_path / "cut" / "cache").glob("*-partial.pt"))
    assert call(11, tmp_path / "cut").returncode == -9              # AE epochs 4-6, then in Deep SVDD epoch 3
    (run_dir,) = (tmp_path / "cut").glob("*-mnist-3-ae+svdd")
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.json").exists()
    assert "continuing the unfinished run" in call(0, tmp_path / "cut").stdout
    (whole,) = (tmp_path / "whole").glob("*-mnist-3-ae+svdd")
    assert (run_dir / "scores.csv").read_text() == (whole / "scores.csv").read_text()
    a, b = (torch.load(d / "model.pt", weights_only=True) for d in (run_dir, whole))
    assert all(torch.equal(a["phi"][k], b["phi"][k]) for k in b["phi"]) and torch.equal(a["c"], b["c"])
    metrics = lambda d: json.loads((d / "metrics.json").read_text())
    assert metrics(run_dir)["auroc"] == metrics(whole)["auroc"]
    assert metrics(whole)["seconds_before_resume"] == 0
    assert 0 < metrics(run_dir)["seconds_before_resume"] < metrics(run_dir)["seconds"]   # saved before the kill
    assert not list((tmp_path / "cut").rglob("*checkpoint.pt")) + list((tmp_path / "cut").rglob("*-partial.pt"))


@pytest.mark.slow
def test_sweep_jobs_give_the_summary_of_one_job(tiny_root, tmp_path):
    # property: --jobs 2 runs a sweep's (class, seed) pairs in two processes, each in its own folder, and
    # writes the summary one job writes (the seconds aside)
    args = ["--data-root", tiny_root, "--objective", "svdd", "--settings", "port", "--normal-class", "1,2",
            "--seeds", "0", "1"] + SHORT + ["--svdd-epochs", "2", "--batch-size", "64"]
    one = sweep.main(args + ["--out", str(tmp_path / "one")])
    two = sweep.main(args + ["--out", str(tmp_path / "two"), "--jobs", "2"])
    assert [m["auroc"] for m in two] == [m["auroc"] for m in one]
    drop_seconds = lambda p: [r[:-1] for r in csv.reader(open(next(p.glob("sweep-*/summary.csv"))))]
    assert drop_seconds(tmp_path / "two") == drop_seconds(tmp_path / "one")
    assert len(list((tmp_path / "two").glob("sweep-*/class*/console.log"))) == 4


def test_run_missing_data_without_network_says_where(tmp_path, monkeypatch, capsys):
    # property: missing data and a failed download end in a clear message and exit status 1
    def no_network(name, root):
        raise data.DataError(f"could not download {name}: no network; put the files in {root}/mnist/")
    monkeypatch.setattr(run.data, "download", no_network)
    with pytest.raises(SystemExit) as e:
        run.main(["--data-root", str(tmp_path / "empty"), "--out", str(tmp_path)] + FAST)
    assert e.value.code == 1 and "mnist" in capsys.readouterr().err


def test_run_nan_loss_names_stage_and_epoch(tiny_root, tmp_path, monkeypatch, capsys):
    # property: a NaN loss stops the run with a message naming the stage and the epoch, exit status 1
    monkeypatch.setattr(ae, "reconstruction_error", lambda x_hat, x: (x_hat - x).sum((1, 2, 3)) * float("nan"))
    with pytest.raises(SystemExit) as e:
        run.main(["--data-root", tiny_root, "--out", str(tmp_path)] + FAST)
    err = capsys.readouterr().err
    assert e.value.code == 1 and "pretrain ae" in err and "epoch 1" in err
    assert not list(tmp_path.glob("*/metrics.json"))                 # no result passed off as whole


# ---------------------------------------------------------------------------------------------------
# The CUDA path (a GPU machine only)
# ---------------------------------------------------------------------------------------------------
# These skip on a machine without a CUDA device; `bash .ci/gpu-check` runs them, with bench.py, on one.
# Tolerances allow for TF32, which PyTorch uses for convolutions on recent GPUs by default.

@needs_cuda
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_cuda_same_weights_same_codes_and_scores_as_cpu(dataset):
    # property: the same weights give the same codes, reconstructions and scores on CUDA as on the CPU
    torch.manual_seed(0)
    model = ae.build_autoencoder(dataset).eval()
    phi = ae.encoder_copy(model)
    x = torch.rand(300, *((1, 28, 28) if dataset == "mnist" else (3, 32, 32)))
    c = svdd.init_center(phi, x)
    cpu = (ae.encode(phi, x), ae.reconstruction_scores(model, x), svdd.svdd_scores(phi, c, x))
    model.cuda()
    phi.cuda()
    xg, cg = x.cuda(), c.cuda()
    gpu = (ae.encode(phi, xg), ae.reconstruction_scores(model, xg), svdd.svdd_scores(phi, cg, xg))
    for a, b in zip(cpu, gpu):
        assert b.is_cuda
        torch.testing.assert_close(b.cpu(), a, rtol=1e-2, atol=1e-3)


@needs_cuda
@pytest.mark.parametrize("flags", [["--objective", "ocnn-joint"],
                                   ["--objective", "svdd", "--pretrain", "rcae", "--rcae-iters", "2",
                                    "--pollution-rate", "0.1"]])
def test_cuda_run_end_to_end_close_to_cpu(tiny_root, tmp_path, flags):
    # property: a whole run on --device cuda works, says so in metrics.json, and lands where the CPU run does
    args = ["--data-root", tiny_root] + flags + FAST
    m_cpu = run.main(args + ["--out", str(tmp_path / "cpu"), "--device", "cpu"])
    m_gpu = run.main(args + ["--out", str(tmp_path / "gpu"), "--device", "cuda"])
    (metrics,) = (tmp_path / "gpu").glob("*/metrics.json")
    assert json.loads(metrics.read_text())["device"].startswith("cuda")
    assert abs(m_gpu["auroc"] - m_cpu["auroc"]) < 0.02


# ---------------------------------------------------------------------------------------------------
# EXERCISES.md checks and the ablations
# ---------------------------------------------------------------------------------------------------

def test_exercise_collapse_bias_in_last_layer():
    # property (Deep SVDD Prop. 2): with a bias in phi's last layer, W = 0 and b = c is a perfect optimum
    # of the one-class loss - zero on every image - and its scores cannot tell anomalies apart
    x, xt, yt = _mnist_subset()
    torch.manual_seed(0)
    phi = ae.build_encoder("mnist")
    phi.fc = nn.Linear(phi.fc.in_features, phi.rep_dim, bias=True)     # the flaw: a bias term
    c = svdd.init_center(phi, x)
    trained_loss = svdd.one_class_loss(svdd.svdd_scores(phi, c, x)).item()
    with torch.no_grad():
        phi.fc.weight.zero_()
        phi.fc.bias.copy_(c)                                          # phi(x) = c for every x
    scores = svdd.svdd_scores(phi, c, xt)
    assert svdd.one_class_loss(svdd.svdd_scores(phi, c, x)).item() == 0.0 < trained_loss
    assert torch.all(scores == 0) and evaluate.auroc(yt, scores.numpy()) == 0.5


def test_exercise_collapse_affine_batchnorm_shift():
    # property (Prop. 2 again): a learned BatchNorm shift (--bn-affine, as the Theano code) is a bias too:
    # with every convolution weight 0, BN outputs its shift whatever the image, and the last layer can then
    # map that constant onto any c: loss 0 on every image, every score 0
    x, xt, yt = _mnist_subset()
    torch.manual_seed(0)
    phi = ae.build_encoder("mnist", bn_affine=True)
    c = svdd.init_center(phi, x)                                      # the usual c, |c_j| >= 0.1
    with torch.no_grad():
        phi.conv1.weight.zero_()
        phi.conv2.weight.zero_()
        phi.bn2.bias.uniform_(0.5, 1.0)                              # the shift of the last BN
        v = ae.lrelu(phi.bn2.bias).repeat_interleave(7 * 7)         # (196,) the input of fc, any image
        phi.fc.weight.copy_(torch.outer(c, v) / v.dot(v))            # fc(v) = c
    scores = svdd.svdd_scores(phi, c, xt)
    assert svdd.one_class_loss(svdd.svdd_scores(phi, c, x)).item() < 1e-10
    assert torch.all(scores < 1e-10) and evaluate.auroc(yt, scores.numpy()) == 0.5


def test_exercise_collapse_trained_center():
    # property (Deep SVDD Prop. 1): if c were trained with W, the bias-free net's W = 0, c = 0 reaches loss 0;
    # with c fixed away from 0 (init_center's |c_j| >= 0.1), zero weights cost ||c||^2 instead
    x, _, _ = _mnist_subset()
    torch.manual_seed(0)
    phi = ae.build_encoder("mnist")
    c = svdd.init_center(phi, x)
    with torch.no_grad():
        phi.fc.weight.zero_()                                         # phi(x) = 0 for every x
    assert svdd.svdd_scores(phi, torch.zeros_like(c), x).mean().item() == 0.0   # the loss, eq. (4)
    fixed = svdd.svdd_scores(phi, c, x).mean().item()
    assert fixed == pytest.approx(c.pow(2).sum().item()) and fixed >= 0.1 ** 2 * phi.rep_dim


@pytest.mark.parametrize("activation", ["linear", "sigmoid"])
def test_exercise_ocnn_linear_objective_is_unbounded(activation):
    # property: with linear g, scaling (w, V) by t and r by t^2 scales the whole OC-NN loss by t^2, so a
    # negative loss runs to -inf as t grows; with a sigmoid g, |y_hat| <= ||w||_1 whatever z is
    torch.manual_seed(0)
    head, z, nu, t = ocnn.OCNN(8, hidden=4, activation=activation, normalize=False), torch.randn(50, 8) + 3.0, 0.1, 10.0
    r = ocnn.update_r(head(z).detach(), nu)
    base = ocnn.ocnn_loss(head(z), r, head, nu).item()
    with torch.no_grad():
        head.V.weight.mul_(t)
        head.w.weight.mul_(t)
    scaled = ocnn.ocnn_loss(head(z), r * t ** 2, head, nu).item()
    if activation == "linear":
        assert scaled == pytest.approx(t ** 2 * base, rel=1e-4)
    else:                                                             # bounded: |y_hat| <= ||w||_1 for any z
        assert head(1e3 * z).abs().max().item() <= head.w.weight.abs().sum().item() + 1e-4


def test_exercise_ocnn_joint_growing_codes_lowers_the_loss():
    # property (exercise 7): with the head fixed, codes scaled by t scale y_hat and r by t, so the loss is
    # reg + t * (hinge / nu - r), linear in t; where the lowest nu-fraction of outputs is positive it falls
    # with t, so a joint encoder, which pays only weight decay, can lower the loss by growing its codes
    torch.manual_seed(0)
    head, z, nu = ocnn.OCNN(8, hidden=4, normalize=False), torch.randn(500, 8) * 0.3 + 2.0, 0.1
    with torch.no_grad():
        head.V.weight.fill_(0.1)
        head.w.weight.fill_(0.5)                                      # y_hat = 0.2 * sum(z) > 0 here
    losses = []
    for t in (1.0, 2.0, 3.0):
        y_hat = head(t * z)
        losses.append(ocnn.ocnn_loss(y_hat, ocnn.update_r(y_hat.detach(), nu), head, nu).item())
    assert losses[1] - losses[0] < -0.5
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], rel=1e-4)


def test_exercise_ocnn_linear_head_scores_by_the_direction_u():
    # property (exercise 7): with linear g, y_hat = <w, V z> = <u, z>, u = V^T w: two heads with the same u
    # give every image the same score, and s(z) = r - <u, z> is a hyperplane's signed distance times ||u||
    torch.manual_seed(0)
    a, b, z = ocnn.OCNN(6, hidden=3, normalize=False), ocnn.OCNN(6, hidden=4, normalize=False), torch.randn(30, 6)
    u = a.w.weight @ a.V.weight                                       # (1, 6)
    with torch.no_grad():
        b.V.weight.copy_(torch.cat([u, torch.zeros(3, 6)]))            # another head with the same u
        b.w.weight.copy_(torch.tensor([[1.0, 5.0, -2.0, 0.5]]))
    s = ocnn.ocnn_scores(_Identity(), a, 0.3, z)
    assert torch.allclose(s, ocnn.ocnn_scores(_Identity(), b, 0.3, z), atol=1e-5)
    assert torch.allclose(s, 0.3 - z @ u.squeeze(0), atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_exercise_ocnn_unit_codes_bound_the_loss(scale):
    # property (exercise 8): with unit codes and linear g, y_hat = <u, z/||z||> <= ||u|| <= ||w|| ||V||_F, so
    # with r a quantile of the outputs the loss is >= 0, however large the head or the codes grow; the same
    # head on raw codes goes far below 0
    torch.manual_seed(0)
    z, nu = torch.randn(500, 8) * 0.3 + 2.0, 0.1
    for normalize in (True, False):
        head = ocnn.OCNN(8, hidden=4, normalize=normalize)
        with torch.no_grad():
            head.V.weight.fill_(0.1 * scale)
            head.w.weight.fill_(0.5 * scale)                          # y_hat > 0 on these codes
        y_hat = head(scale * z)
        u = (head.w.weight @ head.V.weight).norm()
        loss = ocnn.ocnn_loss(y_hat, ocnn.update_r(y_hat.detach(), nu), head, nu).item()
        if normalize:
            assert y_hat.max() <= u + 1e-4 and loss >= 0
        elif scale > 1:
            assert loss < -1e3


def test_exercise_kernel_sphere_and_ocsvm_rank_alike_on_real_digits():
    # property (exercise 9): with an RBF kernel, kernel SVDD's ||Phi(x) - c||^2 - R^2 is twice the OC-SVM
    # score s(x) on every test image (so the AUROCs are equal); real MNIST, digit 0, PCA 95 %
    d = data.one_class_split("mnist", 0, root=DATA, scaling="minmax")
    x_train, x_test, y = d.x_train[:600].flatten(1).double(), d.x_test[:500].flatten(1).double(), d.y_test[:500]
    mu, V = shallow.pca_fit(x_train, 0.95)
    z_train, z_test = shallow.pca_apply(x_train, mu, V), shallow.pca_apply(x_test, mu, V)
    model = shallow.ocsvm_fit(z_train, 0.1, shallow.gamma_from_data(z_train), eps=1e-9, dtype=torch.float64)
    a = torch.from_numpy(model["a"])
    aKa = a @ shallow.rbf_kernel(z_train, z_train, model["gamma"]) @ a
    dist2 = 1 - 2 * shallow.rbf_kernel(z_test, z_train, model["gamma"]) @ a + aKa   # ||Phi(x) - c||^2
    R2 = 1 - 2 * model["rho"] + aKa
    s = shallow.ocsvm_scores(z_test, dict(model, dtype=torch.float64))
    assert torch.allclose(dist2 - R2, 2 * s, atol=1e-9)
    assert evaluate.auroc(y.numpy(), dist2.numpy()) == evaluate.auroc(y.numpy(), s.numpy())
    on_margin = (a > 0) & (a < model["C"])                            # the margin SVs lie on the sphere: R^2
    train_dist2 = 1 - 2 * shallow.rbf_kernel(z_train, z_train, model["gamma"]) @ a + aKa
    assert on_margin.any() and torch.allclose(train_dist2[on_margin], R2.expand(int(on_margin.sum())), atol=1e-8)


def test_ablations_every_variant_parses_and_shared_runs_share_folders():
    # property: each ablation variant is a valid sweep.py command with its question's classes and seeds, and
    # only the variants that two questions share (such as OC-NN joint at encoder lr 1e-5) resolve to one sweep
    # folder, so they are trained once
    folders = {}
    for question, (_, variants) in ablations.QUESTIONS.items():
        for series, x, flags in variants:
            cfg, classes, seeds, _ = sweep.parse(ablations.variant_argv("mnist", flags, question))
            assert classes == ([0, 1, 2] if question in ablations.OWN_BASES else [0, 2, 5]) and seeds == [0, 1, 2]
            folders[(question, series, x)] = sweep.sweep_folder(cfg, _data_id(cfg))
    shared = [(("objective", "same AE", "OC-NN joint (50 ep)"), ("encoder-lr", "OC-NN plain, 50 epochs", 1e-5)),
              (("objective", "same AE", "OC-NN z-only"), ("nu", "OC-NN z-only plain", 0.01)),
              (("objective", "same AE", "OC-NN joint, defaults (50 ep)"),
               ("encoder-lr", "OC-NN defaults, 50 epochs", 1e-4)),
              (("objective", "same AE", "OC-NN z-only, defaults"), ("nu", "OC-NN z-only, defaults", 0.1))]
    assert all(folders[a] == folders[b] for a, b in shared)
    assert len(set(folders.values())) == len(folders) - len(shared)
    plain = {x: flags for _, x, flags in ablations.QUESTIONS["objective"][1]}["OC-NN z-only"]
    assert [sweep.parse(ablations.variant_argv(d, plain))[0].nu for d in ("mnist", "cifar10")] == [0.01, 0.1]


def test_ablations_report_keeps_recorded_rows_of_variants_not_rerun(tmp_path):
    # property: a report keeps the CSV rows of variants with no finished run on this machine (x back in its
    # QUESTIONS type), drops those a fresh run replaces and those of variants no longer defined
    path = tmp_path / "mnist-nu.csv"
    path.write_text("series,x,normal_class,n_seeds,seeds,auroc_mean,auroc_std,seconds_mean\n"
                    "OC-NN z-only plain,0.05,2,3,0 1 2,61.5,4.0,9.0\n"
                    "OC-NN z-only plain,0.05,5,3,0 1 2,70.0,2.0,9.0\n"
                    "a series since removed,0.05,2,3,0 1 2,50.0,1.0,9.0\n")
    fresh = [{"series": "OC-NN z-only plain", "x": 0.05, "normal_class": 5, "auroc_mean": 71.0}]
    kept = ablations.kept_rows("nu", str(path), fresh)
    assert kept == [{"series": "OC-NN z-only plain", "x": 0.05, "normal_class": 2, "n_seeds": 3, "seeds": "0 1 2",
                     "auroc_mean": 61.5, "auroc_std": 4.0, "seconds_mean": 9.0}]


def test_exercise_geom_a_half_turn_symmetric_image_has_a_score_floor():
    # property: if T_2(x) = x (x looks the same turned by 180 degrees), the network sees the same input for
    # labels 0 and 2 (and 1 and 3), so p(0 | x) + p(2 | x) <= 1 and s(x) >= 2 log 4, whatever it learnt;
    # an image without the symmetry has no floor (a trained network drives its score towards 0)
    torch.manual_seed(0)
    model = geom.build_geom("mnist", "rot")
    x = _images(8)
    symmetric = (x + torch.rot90(x, 2, dims=(2, 3))) / 2                 # T_2(x) = x exactly
    geom.train_geom(model, x, transforms="rot", epochs=30, lr=1e-2, weight_decay=0, milestones=[], batch_size=8,
                    verbose=False)
    assert (geom.geom_scores(model, symmetric, "rot") >= 2 * math.log(4) - 1e-4).all()
    assert geom.geom_scores(model, x, "rot").mean() < 2 * math.log(4)


def test_exercises_name_existing_checks_functions_and_sections():
    # property: every exercise's checks are tests of this file, its functions exist, and EXERCISES.md has its
    # section, in order, naming its functions and its check command
    text = open(os.path.join(HERE, "EXERCISES.md")).read()
    sections = re.findall(r"^## (\d+)\. (.+)$", text, re.M)
    assert [int(n) for n, _ in sections] == list(exercises.EXERCISES)
    for (n, heading), ex in zip(sections, exercises.EXERCISES.values()):
        assert heading.startswith(ex.title) and f"python exercises.py check {n}" in text
        assert all(f"`{q}`" in heading or q.split(".", 1)[1] in heading for q in ex.functions), heading
        assert all(callable(globals().get(name)) for name in ex.checks), ex.checks
        for q in ex.functions:
            module, *path = q.split(".")
            assert callable(functools.reduce(getattr, path, importlib.import_module(module))), q


def test_exercises_stub_keeps_signature_and_docstring_and_names_the_exercise():
    # property: each stubbed function compiles, keeps its signature and docstring, and raises at once with
    # "exercise N" (decorators kept)
    for n, ex in exercises.EXERCISES.items():
        for q in ex.functions:
            module = importlib.import_module(q.split(".")[0])
            original = getattr(module, q.split(".")[1])
            namespace = {"__name__": "student_" + module.__name__}
            exec(compile(exercises.stub(inspect.getsource(module), q, n), q, "exec"), namespace)
            stubbed = namespace[q.split(".")[1]]
            assert inspect.signature(stubbed) == inspect.signature(original) and stubbed.__doc__ == original.__doc__
            with pytest.raises(NotImplementedError, match=f"^exercise {n}: write {q} "):
                stubbed(*[None] * len(inspect.signature(original).parameters))


def test_exercises_a_tie_aware_auroc_by_another_route_passes_exercise_1(monkeypatch):
    # property: the checks test the number, not our route: an O(n^2) pair count passes exercise 1's checks
    def pairs(y, s):
        wins = (s[y == 1][:, None] > s[y == 0][None, :]) + 0.5 * (s[y == 1][:, None] == s[y == 0][None, :])
        return float(wins.mean())
    monkeypatch.setattr(evaluate, "rank_auroc", pairs)
    for name in exercises.EXERCISES[1].checks:
        globals()[name]()


def test_exercises_unknown_number_or_existing_folder_is_a_user_error(tmp_path):
    # property: an exercise number past the last and a student edition into an existing folder exit 2 with one
    # sentence
    for args in (["check", str(max(exercises.EXERCISES) + 1)], ["student", str(tmp_path)], ["check", "one"]):
        p = subprocess.run([sys.executable, os.path.join(HERE, "exercises.py"), *args], capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, args


def test_exercises_student_edition_run_stops_at_the_first_missing_exercise(tmp_path):
    # property: in the student edition `python run.py --objective svdd` ends in one line naming the first
    # exercise it reaches (the autoencoder's reconstruction score), exit 1, no traceback
    dest = exercises.student(str(tmp_path / "student"))
    p = subprocess.run([sys.executable, "run.py", "--objective", "svdd", "--quiet"], cwd=dest, capture_output=True,
                       text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == [f"not written yet: {exercises.message(2, 'ae.reconstruction_error')}"]


@pytest.mark.slow
def test_exercises_each_check_fails_on_its_stub_and_passes_with_the_ones_before(tmp_path):
    # property: in the student edition with exercises k+1.. stubbed, every check of exercise k passes and
    # every check of exercise k+1 fails on its own stub: each exercise needs only itself and the ones before
    last = max(exercises.EXERCISES)
    def start(k):
        dest = exercises.student(str(tmp_path / f"solved-{k}"), range(k + 1, last + 1))
        numbers = [str(n) for n in (k, k + 1) if n in exercises.EXERCISES]
        return subprocess.Popen([sys.executable, "exercises.py", "check", *numbers], cwd=dest, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    outputs, pending = {}, list(range(last + 1))
    while pending:
        running = {k: start(k) for k in pending[:2]}
        outputs.update({k: p.communicate()[0] for k, p in running.items()})
        pending = pending[2:]
    for k, out in outputs.items():
        blocks = dict(re.findall(r"^exercise (\d+): .*\n((?:  .*\n)*)", out, re.M))
        for n, want in ((k, "pass"), (k + 1, "FAILED")):
            if n in exercises.EXERCISES:
                lines = [l.split()[0] for l in blocks[str(n)].splitlines()[:-1]]
                assert len(lines) >= len(exercises.EXERCISES[n].checks) and set(lines) == {want}, (k, n, out)
                if want == "FAILED":
                    assert blocks[str(n)].count(f"not written yet (exercise {n})") == len(lines), out


