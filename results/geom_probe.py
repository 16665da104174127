"""The transformation sets of geom.py compared at equal compute: "rot" (4), "rot-flip" (8), "geom" (72).

For each cell (data set, normal class, set, copies, seed 0) the geom network (geom.build_geom) is trained on
the normal class's training images (data.one_class_split, scaling "class") for a fixed number of
image-passes through the network, the same for every set of a data set, then three scores of the test set
give an AUROC (%) each:

    auroc_own        geom.geom_scores: s(x) = -sum_k log softmax(W phi(T_k(x)))_k
    auroc_kde        a Gaussian KDE on the codes phi(x) (shallow.fit("kde"): bandwidth by 5-fold CV)
    auroc_mean_code  ||phi(x) - mean_i phi(x_i)||^2, the distance to the mean training code

The command that wrote results/geom-transform-sets.csv (one thread; the cells below, in this order):

    cd <repo> && nohup python results/geom_probe.py --mnist-budget 150000 --cifar-budget 60000 \
        --cifar-test 2000 > results/geom-probe.log 2>&1 &

  1. MNIST digits 8, 1, 6, 3 x {rot, rot-flip, geom}, one random transformation per image and step
     (geom.py's way); the whole test set (10,000 images).
  2. CIFAR-10 classes airplane (0), cat (3), frog (6) x the three sets; a seeded, class-stratified subsample
     of --cifar-test test images (the n_test column): scoring is K forward passes per image, and 72 x
     10,000 passes of the CIFAR-10 network cost minutes on one thread.
  3. MNIST digits 8, 1, 6, 3 x {rot, rot-flip} with all K copies of each image in a step (copies = all),
     at the same budget: the measurement behind geom.py's choice. "geom" has none: one pass over the
     n K pairs (72 n, about 420,000 image-passes for a digit) is above the budget.

A budget of B image-passes gives round(B / n) epochs of one random transformation per image (round(B / (n K))
with all copies); the image_passes column holds the exact count. GEOM's own schedule is about 200 n
image-passes (ceil(200 / K) epochs over the n K pairs). Each finished cell appends one row (flushed); a cell
already in the CSV (same data set, class, set, copies and budget) is skipped, so a killed probe resumes
where it stopped, at the start of its unfinished cell.

    python results/geom_probe.py --measure      # seconds per 1000 image-passes, both networks, one thread

CIFAR-10 is read from <cifar-root>/cifar10/cifar-10-batches-py; the default root .cache is where test_all.py
builds the batches from the JPEG copy (shared/data/cifar10-jpeg, see its README: python
../shared/data/cifar10-jpeg/to_cifar_batches.py .cache/cifar10).
"""
import argparse
import csv
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import ae  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import geom  # noqa: E402
import shallow  # noqa: E402

SETS = ("rot", "rot-flip", "geom")
MNIST_DIGITS = (8, 1, 6, 3)
CIFAR_CLASSES = (0, 3, 6)  # airplane, cat, frog
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
COLUMNS = ["dataset", "normal_class", "transforms", "K", "copies", "budget", "epochs", "image_passes",
           "train_seconds", "seconds_per_epoch", "score_seconds", "n_test", "auroc_own", "auroc_kde",
           "auroc_mean_code", "lr", "weight_decay", "batch_size", "seed", "threads"]
KEY = ("dataset", "normal_class", "transforms", "copies", "budget")


def cells():
    """(dataset, normal class, set, copies) in the probe's order."""
    main = [("mnist", d, t, "one") for d in MNIST_DIGITS for t in SETS]
    main += [("cifar10", c, t, "one") for c in CIFAR_CLASSES for t in SETS]
    return main + [("mnist", d, t, "all") for d in MNIST_DIGITS for t in ("rot", "rot-flip")]


def stratified_subset(classes, n, seed=0):
    """n test indices, n / 10 per class, each class's drawn by a seeded permutation; all when n is 0."""
    if not n or n >= len(classes):
        return torch.arange(len(classes))
    g, per_class, out = torch.Generator().manual_seed(seed), n // 10, []
    for c in range(10):
        idx = torch.nonzero(classes == c).flatten()                       # this class's test indices
        out.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(out).sort().values


def done_keys(path):
    """The keys of the cells already in the CSV."""
    if not os.path.exists(path):
        return set()
    with open(path, newline="") as f:
        return {tuple(row[k] for k in KEY) for row in csv.DictReader(f)}


def append_row(path, row):
    """One row, the header first in a new file; flushed so that a killed probe keeps it."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def run_cell(d, name, copies, budget, args):
    """Train one geom network on d.x_train within `budget` image-passes, score the test subset: the CSV row."""
    n, K = len(d.x_train), len(geom.TRANSFORMS[name])
    per_epoch = n * (K if copies == "all" else 1)                         # image-passes in one epoch
    epochs = max(1, round(budget / per_epoch))
    torch.manual_seed(args.seed)                                          # the network's initial weights
    model = geom.build_geom(d.dataset, name)
    start = time.perf_counter()
    geom.train_geom(model, d.x_train, transforms=name, epochs=epochs, lr=args.lr, weight_decay=args.weight_decay,
                    milestones=(), batch_size=args.batch_size, seed=args.seed, stage=f"geom {name} {copies}",
                    all_copies=copies == "all", verbose=args.verbose)
    train_s = time.perf_counter() - start
    n_test = args.cifar_test if d.dataset == "cifar10" else args.mnist_test
    idx = stratified_subset(d.test_classes, n_test, args.seed)
    x_test, y_test = d.x_test[idx], d.y_test[idx].numpy()
    start = time.perf_counter()
    s_own = geom.geom_scores(model, x_test, name)                         # (N,) higher = more anomalous
    z_train, z_test = ae.encode(model.encoder, d.x_train), ae.encode(model.encoder, x_test)   # (n, D), (N, D)
    kde, _ = shallow.fit("kde", z_train)
    s_kde = shallow.score("kde", kde, z_test)
    s_mean = ((z_test - z_train.mean(0)) ** 2).sum(1)                     # distance to the mean code
    score_s = time.perf_counter() - start
    pct = lambda s: round(100 * evaluate.auroc(y_test, np.asarray(s)), 2)  # noqa: E731
    return {"dataset": d.dataset, "normal_class": d.normal_class, "transforms": name, "K": K, "copies": copies,
            "budget": budget, "epochs": epochs, "image_passes": epochs * per_epoch,
            "train_seconds": round(train_s, 1), "seconds_per_epoch": round(train_s / epochs, 2),
            "score_seconds": round(score_s, 1), "n_test": len(idx), "auroc_own": pct(s_own),
            "auroc_kde": pct(s_kde), "auroc_mean_code": pct(s_mean), "lr": args.lr,
            "weight_decay": args.weight_decay, "batch_size": args.batch_size, "seed": args.seed,
            "threads": torch.get_num_threads()}


def measure(args):
    """Seconds per 1000 image-passes on random images: training (one random transformation) and scoring."""
    for dataset, shape in SHAPES.items():
        x = torch.rand(2000, *shape, generator=torch.Generator().manual_seed(0))
        model = geom.build_geom(dataset, "geom")
        geom.train_geom(model, x[:200], transforms="geom", epochs=1, lr=1e-3, weight_decay=0, milestones=(),
                        verbose=False)                                    # warm-up
        start = time.perf_counter()
        geom.train_geom(model, x, transforms="geom", epochs=1, lr=1e-3, weight_decay=0, milestones=(),
                        verbose=False)
        train_s = (time.perf_counter() - start) / 2
        start = time.perf_counter()
        geom.geom_scores(model, x[:28], "geom")                           # 28 x 72 = 2016 passes
        score_s = (time.perf_counter() - start) / 2.016
        print(f"{dataset}: train {train_s:.3f} s, score {score_s:.3f} s per 1000 image-passes "
              f"({torch.get_num_threads()} thread)", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist-budget", type=int, default=150000, help="image-passes per MNIST cell")
    p.add_argument("--cifar-budget", type=int, default=60000, help="image-passes per CIFAR-10 cell")
    p.add_argument("--mnist-test", type=int, default=0, help="test images scored (0: all 10,000)")
    p.add_argument("--cifar-test", type=int, default=2000, help="test images scored, class-stratified (0: all)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mnist-root", default=os.path.join(ROOT, "data"))
    p.add_argument("--cifar-root", default=os.path.join(ROOT, ".cache"))
    p.add_argument("--out", default=os.path.join(ROOT, "results", "geom-transform-sets.csv"))
    p.add_argument("--only", default="", help="run only the cells of this data set (mnist or cifar10)")
    p.add_argument("--measure", action="store_true", help="print seconds per 1000 image-passes and stop")
    p.add_argument("--verbose", action="store_true", help="one line per epoch")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.measure:
        return measure(args)
    done, split = done_keys(args.out), None
    for dataset, k, name, copies in cells():
        budget = args.mnist_budget if dataset == "mnist" else args.cifar_budget
        if (args.only and dataset != args.only) or (dataset, str(k), name, copies, str(budget)) in done:
            continue
        if split is None or (split.dataset, split.normal_class) != (dataset, k):
            root = args.mnist_root if dataset == "mnist" else args.cifar_root
            split = data.one_class_split(dataset, k, 0.0, 0, root, "cpu", "class")
        row = run_cell(split, name, copies, budget, args)
        append_row(args.out, row)
        print(", ".join(f"{c} {row[c]}" for c in COLUMNS), flush=True)


if __name__ == "__main__":
    main()
