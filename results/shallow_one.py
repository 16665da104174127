"""One fit and one scoring of a shallow detector, by this code or by scikit-learn, as a whole process:
the unit that `farm-bench` times side by side (results/README.md, section 6).

    python results/shallow_one.py ours ocsvm          # shallow.py
    <env>/bin/python results/shallow_one.py sklearn ocsvm     # scikit-learn (its venv: sklearn_shallow.py)

Both sides read the same inputs and do the same work around the detector: MNIST digit 0, pixels / 255, no
GCN, PCA 95 % (shallow.pca_fit on the 5,923 training images: 116 dimensions), the 10,000 test images; then
  kde      5-fold cross-validated bandwidth over the paper code's grid (scikit-learn: GridSearchCV over
           KernelDensity), then the test scores at it
  ocsvm    nu 0.1, gamma 2^-7 (OneClassSVM), the test scores
  iforest  100 trees, 256 samples, seed 0 (IsolationForest), the test scores
and print the test AUROC, so that a run that fails or scores wrongly shows.
"""
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import evaluate  # noqa: E402
import shallow  # noqa: E402


def inputs():
    d = data.one_class_split("mnist", 0, root=os.path.join(ROOT, "data"), scaling="minmax")
    mu, V = shallow.pca_fit(d.x_train, 0.95)
    return shallow.pca_apply(d.x_train, mu, V), shallow.pca_apply(d.x_test, mu, V), d.y_test.numpy()


def ours(method, x, x_test):
    model, _ = shallow.fit(method, x, gamma=2.0 ** -7, seed=0)
    return shallow.score(method, model, x_test).numpy()


def sklearn(method, x, x_test):
    x, x_test = x.numpy(), x_test.numpy()
    if method == "kde":
        from sklearn.model_selection import GridSearchCV
        from sklearn.neighbors import KernelDensity
        grid = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": list(shallow.KDE_BANDWIDTHS)}, cv=5)
        return -grid.fit(x).best_estimator_.score_samples(x_test)
    if method == "ocsvm":
        from sklearn.svm import OneClassSVM
        return -OneClassSVM(kernel="rbf", nu=0.1, gamma=2.0 ** -7).fit(x).decision_function(x_test)
    from sklearn.ensemble import IsolationForest
    return -IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(x).score_samples(x_test)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("ours", "sklearn") or sys.argv[2] not in ("kde", "ocsvm", "iforest"):
        sys.exit("usage: shallow_one.py ours|sklearn kde|ocsvm|iforest")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    x, x_test, y = inputs()
    scores = (ours if sys.argv[1] == "ours" else sklearn)(sys.argv[2], x, x_test)
    print(f"{sys.argv[1]} {sys.argv[2]}: AUROC {100 * evaluate.auroc(y, np.asarray(scores, np.float64)):.2f}")
