"""Is Table 1's KDE column what scikit-learn's KernelDensity gives under the paper code's protocol?

    <env>/bin/python results/sklearn_kde_table1.py [digits ...]      # the venv of sklearn_shallow.py
    <env>/bin/python results/sklearn_kde_table1.py --no-pca 2         # the 784 pixels themselves

For each MNIST digit, the Deep SVDD code's KDE pipeline (lukasruff/Deep-SVDD, src/kde.py run by
src/scripts/mnist_kde.sh, which passes no --gcn): pixels / 255, no GCN, PCA 95 % fitted on the training images
(shallow.pca_fit, as sklearn's PCA(0.95) up to ties), the bandwidth by GridSearchCV(cv=5) over
logspace(-4.5, 5, 20, base=2) on the total held-out log-likelihood, score = -log density of the 10,000 test
images. The same inputs then go through shallow.py's exact KDE at the bandwidth each code chose. Prints, per
digit, both bandwidths and AUROCs (%), and the mean; Table 1's KDE column beside it. scikit-learn is never a
dependency of the project: this script runs in its own venv.
"""
import os
import sys

import numpy as np

try:
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity
except ImportError:
    sys.exit("results/sklearn_kde_table1.py needs scikit-learn, which this python lacks: set up the venv that "
             "results/sklearn_shallow.py describes and run it with <env>/bin/python.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import evaluate  # noqa: E402
import shallow  # noqa: E402

PAPER_KDE = [97.1, 98.9, 79.0, 86.2, 87.9, 73.8, 87.6, 91.4, 79.2, 88.2]   # Table 1, MNIST, KDE


def main(digits, pca=True):
    print("| digit | sklearn h | sklearn AUROC | exact KDE at sklearn's h | exact KDE, its own CV h | paper |")
    print("|---|---|---|---|---|---|")
    rows = []
    for k in digits:
        d = data.one_class_split("mnist", k, root=os.path.join(ROOT, "data"), scaling="minmax")
        if pca:
            mu, V = shallow.pca_fit(d.x_train, 0.95)
            x, x_test = shallow.pca_apply(d.x_train, mu, V), shallow.pca_apply(d.x_test, mu, V)
        else:
            x, x_test = d.x_train.flatten(1).double(), d.x_test.flatten(1).double()
        y = d.y_test.numpy()
        grid = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": list(shallow.KDE_BANDWIDTHS)}, cv=5)
        grid.fit(x.numpy())
        h_sk = grid.best_params_["bandwidth"]
        auc_sk = 100 * evaluate.auroc(y, -grid.best_estimator_.score_samples(x_test.numpy()))
        auc_exact_sk = 100 * evaluate.auroc(y, shallow.kde_scores(x_test, x, h_sk).numpy())
        h = shallow.kde_cv_bandwidth(x)[0]
        auc_exact = 100 * evaluate.auroc(y, shallow.kde_scores(x_test, x, h).numpy())
        rows.append((auc_sk, auc_exact_sk, auc_exact, PAPER_KDE[k]))
        print(f"| {k} | {h_sk:.4g} | {auc_sk:.2f} | {auc_exact_sk:.2f} | {auc_exact:.2f} (h {h:.4g}) | "
              f"{PAPER_KDE[k]} |", flush=True)
    means = np.mean(rows, axis=0)
    print(f"| mean | | {means[0]:.2f} | {means[1]:.2f} | {means[2]:.2f} | {means[3]:.2f} |")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--no-pca"]
    main([int(a) for a in args] or list(range(10)), pca="--no-pca" not in sys.argv)
