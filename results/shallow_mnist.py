"""The shallow baselines of shallow.py on real MNIST: AUROC (%) and seconds, one normal digit at a time.

    python results/shallow_mnist.py                 # digit 0: KDE, OC-SVM (gamma 2^-7 and the default), IF
    python results/shallow_mnist.py 0 1 2 --gammas  # also OC-SVM at each label-free gamma rule and the grid
    python results/shallow_mnist.py 0 --holdout 3   # also the paper code's gamma search on test labels, seeds 0-2

Protocol (the MNIST KDE / OC-SVM scripts of the paper's code, lukasruff/Deep-SVDD src/scripts/mnist_kde.sh and
mnist_ocsvm.sh, which pass no --gcn; without its cut of the training set to a multiple of 200): pixels / 255,
no GCN; PCA keeping 95 % of the variance, fitted on the normal digit's training images; test = the 10,000
official test images, label 1 = any other digit. KDE: bandwidth by 5-fold CV over shallow.KDE_BANDWIDTHS.
OC-SVM: nu 0.1. IF: 100 trees, psi 256, seed 0 (on the same PCA codes; the paper's IF script used GCN
instead). Seconds are wall time with the torch threads the machine has (set OMP_NUM_THREADS=1 for one);
nothing else should run meanwhile.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import evaluate  # noqa: E402
import shallow  # noqa: E402


def mnist_codes(digit, root, pca=True):
    """PCA-95 % codes (or the pixels) of the digit's training images and of the test set, labels (1 = other)."""
    x, y = data.load_mnist(root, True)
    xt, yt = data.load_mnist(root, False)
    x_train = torch.from_numpy(x[y == digit].reshape(-1, 784) / 255.0)   # (n, 784) float64
    x_test = torch.from_numpy(xt.reshape(-1, 784) / 255.0)              # (10000, 784)
    if not pca:
        return x_train, x_test, (yt != digit).astype(np.int64), 0.0
    start = time.perf_counter()
    mu, V = shallow.pca_fit(x_train, 0.95)
    z_train, z_test = shallow.pca_apply(x_train, mu, V), shallow.pca_apply(x_test, mu, V)
    return z_train, z_test, (yt != digit).astype(np.int64), time.perf_counter() - start


def timed(fit, score):
    """(scores, fit seconds, score seconds)."""
    start = time.perf_counter()
    model = fit()
    mid = time.perf_counter()
    s = score(model)
    return np.asarray(s), mid - start, time.perf_counter() - mid


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("digits", nargs="*", type=int, default=[0])
    p.add_argument("--gammas", action="store_true", help="also every gamma rule and the paper's grid")
    p.add_argument("--holdout", type=int, default=0, metavar="SEEDS",
                   help="also pick gamma by the AUROC on 10 %% of the test set (LOOKS AT TEST LABELS), seeds 0..")
    p.add_argument("--data-root", default=os.path.join(ROOT, "data"))
    args = p.parse_args(argv)
    print(f"torch threads {torch.get_num_threads()}")
    for digit in args.digits:
        z, zt, yt, pca_s = mnist_codes(digit, args.data_root)
        print(f"digit {digit}: {len(z)} training images, PCA 95 % -> {z.shape[1]} dims ({pca_s:.2f} s)")
        start = time.perf_counter()
        h, _ = shallow.kde_cv_bandwidth(z)
        cv_s = time.perf_counter() - start
        s, _, score_s = timed(lambda: None, lambda _: shallow.kde_scores(zt, z, h))
        print(f"  KDE      h {h:.4g} (5-fold CV {cv_s:.2f} s)  AUROC {100 * evaluate.auroc(yt, s):.2f}  "
              f"score {score_s:.2f} s")
        gammas = [("2^-7", 2.0 ** -7), ("scale", shallow.gamma_from_data(z, "scale"))]
        if args.gammas:
            gammas += [(r, shallow.gamma_from_data(z, r)) for r in ("median", "max")]
            gammas += [(f"2^{int(np.log2(g))}", g) for g in shallow.OCSVM_GAMMAS if g != 2.0 ** -7]
        for name, g in gammas:
            fitted = []
            s, fit_s, score_s = timed(lambda: fitted.append(shallow.ocsvm_fit(z, 0.1, g)) or fitted[0],
                                      lambda m: shallow.ocsvm_scores(zt, m))
            print(f"  OC-SVM   gamma {name} = {g:.4g}  AUROC {100 * evaluate.auroc(yt, s):.2f}  "
                  f"fit {fit_s:.2f} s  score {score_s:.2f} s  SVs {len(fitted[0]['a_sv'])}")
        for seed in range(args.holdout):
            start = time.perf_counter()
            r = shallow.ocsvm_gamma_by_test_auroc(z, zt, yt, 0.1, seed=seed)
            print(f"  OC-SVM   gamma by test AUROC, seed {seed}: 2^{int(np.log2(r['gamma']))}  AUROC on the other "
                  f"90 % {100 * evaluate.auroc(yt[r['eval_index']], r['scores'].numpy()):.2f}  "
                  f"({time.perf_counter() - start:.1f} s for the grid)")
        s, fit_s, score_s = timed(lambda: shallow.iforest_fit(z, seed=0), lambda f: shallow.iforest_scores(zt, f))
        print(f"  IF       seed 0  AUROC {100 * evaluate.auroc(yt, s):.2f}  fit {fit_s:.2f} s  "
              f"score {score_s:.2f} s", flush=True)


if __name__ == "__main__":
    main()
