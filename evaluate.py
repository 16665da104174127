"""NumPy metrics and matplotlib plots for one-class anomaly detection.

Read this after a model file (svdd.py, ocnn.py, ae.py, rcae.py, geom.py): run.py scores the test set with the
trained model, then calls `summarize` (-> metrics.json) and `plot_run` (-> plots/*.png) defined here.

Conventions, the same for every method in this codebase
-------------------------------------------------------
- labels y: 1 = anomaly (any class but the normal one), 0 = normal.
- scores s: higher = more anomalous, for every method (Deep SVDD: ||phi(x) - c||^2, minus R^2 for the
  soft-boundary objective; OC-NN: r - f(x); AE/RCAE: reconstruction error; geom: -sum_k log p(k | T_k(x))).
  A flipped score turns an AUROC a into 1 - a, so an AUROC well below 0.5 usually means a sign bug, not a
  bad model.
- A point is flagged as an anomaly at threshold t when s >= t on the ROC and PR curves, which sweep t over
  the scores; the decision a run stores flags s > t, t from the training scores (5), so that a training point
  exactly on Deep SVDD's sphere or OC-NN's hyperplane counts as normal, as in those papers.

Equations
---------
(1) AUROC: the probability that a random anomaly scores above a random normal point, ties counting half,
        AUROC = P(s_i > s_j) + 1/2 P(s_i = s_j),      i ~ anomalies, j ~ normals.
    Counting all n_1 * n_0 pairs is O(n^2). The Mann-Whitney U statistic gives the same number with one sort,
    O(n log n): rank all n scores ascending (1..n), give tied scores the mean of the ranks they span, and let
    R_1 be the sum of the anomalies' ranks; then
        U = R_1 - n_1 (n_1 + 1) / 2,      AUROC = U / (n_1 n_0).
(2) ROC curve, one point per distinct score t, from the highest down, after the point (0, 0) at t = +inf:
        TPR(t) = TP(t) / n_1,   FPR(t) = FP(t) / n_0,   TP(t) = #{anomalies with s >= t}, FP(t) = #{normals ...}.
    Its trapezoid area equals (1) exactly: a group of tied scores is one diagonal step, and the triangle under
    that step is the "ties count half".
(3) Precision and recall at the same thresholds:   P(t) = TP(t) / (TP(t) + FP(t)),   R(t) = TP(t) / n_1.
(4) Average precision, the step-wise area under the PR curve (as sklearn's average_precision_score), over the
    distinct thresholds t_1 > t_2 > ... > t_m, with R_0 = 0:
        AP = sum_k (R_k - R_{k-1}) P_k.
    AP = 1 for a perfect ranking; a random ranking gets about the base rate n_1 / n.
(5) Decision threshold from the n training scores at a level q (nu, or a flag rate): t = s_(n-k+1), k = ceil(q n),
    the (1 - q)-quantile; flagged = s > t.
(6) At t, on the test set: precision = TP / (TP + FP), recall = TP / n_1, F1 = 2 P R / (P + R).

Symbols
-------
| paper        | code                     | shape                                  |
| y            | labels                   | (n,) 0/1                               |
| s            | scores                   | (n,) float                             |
| n_1, n_0     | n_anomalous, n_normal    | int                                    |
| TP(t), FP(t) | tp, fp                   | (m,) one per distinct score, t falling |
| t            | thresholds               | (m,) strictly decreasing               |

References: Hanley & McNeil (1982), "The meaning and use of the area under a ROC curve"; Fawcett (2006),
"An introduction to ROC analysis". The most-normal / most-anomalous image grid is the figure of Ruff et al.
(2018), "Deep One-Class Classification", ICML.

Choices and deviations from sklearn
-----------------------------------
- No sklearn: these few lines are part of the lesson.
- precision_recall_curve returns one point per threshold, in the same order as roc_curve (thresholds falling,
  recall rising); sklearn reverses that order and appends a point (R = 0, P = 1) that has no threshold.
- roc_curve's first threshold is +inf, the point (0, 0) where nothing is flagged (as sklearn >= 1.3).
- Every metric raises ValueError when only one class is present, where sklearn warns and returns nan:
  a number there would hide a broken test split.
"""
import math
import os
from pathlib import Path

import numpy as np
import matplotlib
matplotlib.use("Agg")  # files only, no window: works on servers and in tests
import matplotlib.pyplot as plt


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------

def _check(labels, scores, name, both_classes=True):
    """Validate and convert: labels -> (n,) int64 of 0/1, scores -> (n,) float64, all finite."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"{name}: labels and scores must be 1-D, got shapes {y.shape} and {s.shape}.")
    if y.size != s.size:
        raise ValueError(f"{name}: labels and scores must have the same length, got {y.size} and {s.size}.")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(f"{name}: labels must be 0 (normal) or 1 (anomaly), found {np.unique(y[bad])[:5]}.")
    bad = ~np.isfinite(s)
    if bad.any():
        raise ValueError(f"{name}: {bad.sum()} of {s.size} scores are NaN or infinite (first at index "
                         f"{np.flatnonzero(bad)[0]}); check the training loss for divergence before scoring.")
    y = y.astype(np.int64)
    n_1 = int(y.sum())
    if both_classes and (n_1 == 0 or n_1 == y.size):
        raise ValueError(f"{name} needs both normal (0) and anomalous (1) labels, but the {y.size} labels "
                         f"hold {y.size - n_1} normal and {n_1} anomalous; it is undefined for one class.")
    return y, s


def auroc(labels, scores):
    """Area under the ROC curve, eq. (1): `_check` validates the input, `rank_auroc` computes the number."""
    y, s = _check(labels, scores, "auroc")
    return rank_auroc(y, s)


def rank_auroc(y, s):
    """Eq. (1) from ranks (Mann-Whitney U), O(n log n); y: (n,) int64 0/1 with both classes, s: (n,) float64."""
    n_1 = int(y.sum())
    n_0 = y.size - n_1
    order = np.argsort(s)                                     # (n,) ascending
    s_sorted = s[order]
    new = np.r_[True, s_sorted[1:] != s_sorted[:-1]]          # (n,) True where a run of equal scores starts
    start = np.flatnonzero(new)                               # (m,) 0-based first position of each run
    end = np.r_[start[1:], s.size]                            # (m,) one past its last position
    mean_rank = (start + 1 + end) / 2                         # (m,) mean of the 1-based ranks start+1 .. end
    ranks = mean_rank[np.cumsum(new) - 1]                     # (n,) rank of each sorted score, ties averaged
    R_1 = ranks[y[order] == 1].sum()                          # sum of the anomalies' ranks
    U = R_1 - n_1 * (n_1 + 1) / 2                             # pairs (anomaly above normal), ties as 1/2
    return float(U / (n_1 * n_0))


def auroc_per_class(classes, labels, scores):
    """{k: AUROC of the normal images against the anomalies of class k alone, a float} for each class k among
    the anomalies; numpy arrays classes: (n,) int, the original class of each image, labels: (n,) 0/1 (1 =
    anomaly), scores: (n,) float."""
    return {int(k): auroc(labels[(labels == 0) | (classes == k)], scores[(labels == 0) | (classes == k)])
            for k in np.unique(classes[labels == 1])}


def _counts(y, s):
    """TP(t) and FP(t) of eq. (2) at each distinct score t, highest first: (tp, fp, thresholds), each (m,)."""
    order = np.argsort(-s, kind="stable")                     # (n,) descending
    s_desc, y_desc = s[order], y[order]
    last = np.r_[s_desc[1:] != s_desc[:-1], True]             # (n,) True at the last member of each tie group
    tp = np.cumsum(y_desc)[last]                              # anomalies with s >= t
    fp = np.flatnonzero(last) + 1 - tp                        # everything with s >= t, minus the anomalies
    return tp, fp, s_desc[last]


def roc_curve(labels, scores):
    """ROC curve, eq. (2): (fpr, tpr, thresholds), from (0, 0) at t = +inf to (1, 1); tied scores are one point."""
    y, s = _check(labels, scores, "roc_curve")
    tp, fp, t = _counts(y, s)
    fpr = np.r_[0, fp] / fp[-1]                               # fp[-1] = n_0
    tpr = np.r_[0, tp] / tp[-1]                               # tp[-1] = n_1
    return fpr, tpr, np.r_[np.inf, t]


def precision_recall_curve(labels, scores):
    """Precision and recall, eq. (3): (precision, recall, thresholds), thresholds falling, recall rising."""
    y, s = _check(labels, scores, "precision_recall_curve")
    tp, fp, t = _counts(y, s)
    precision = tp / (tp + fp)                                # tp + fp >= 1: t is one of the scores
    recall = tp / tp[-1]
    return precision, recall, t


def average_precision(labels, scores):
    """Average precision, eq. (4): AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds, R_0 = 0."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.sum(np.diff(recall, prepend=0) * precision))


def summarize(labels, scores):
    """The numbers run.py writes to metrics.json."""
    y, _ = _check(labels, scores, "summarize")
    return {"auroc": auroc(labels, scores), "average_precision": average_precision(labels, scores),
            "n_normal": int((y == 0).sum()), "n_anomalous": int((y == 1).sum())}


def quantile_threshold(train_scores, level):
    """(5) The decision threshold: t = the (1 - level)-quantile of the training scores.

    With k = ceil(level n) and s_(1) <= ... <= s_(n), t = s_(n-k+1): fewer than level n training scores lie
    above t (those are flagged, s > t) and at least level n lie at or above it. This is the nu-property that
    soft-boundary Deep SVDD's R and OC-NN's r satisfy by construction with level = nu, so for them t = 0 in
    score units (s = d^2 - R^2, s = r - y_hat): the flag is "outside the sphere" / "below the hyperplane".
    Given held-out calibration scores instead (run.py --calibration), t is their quantile and need not be 0.
    """
    s = np.sort(np.asarray(train_scores, dtype=np.float64).ravel())
    if s.size == 0 or not 0 < level < 1 + 1e-12:
        raise ValueError(f"quantile_threshold: need training scores and a level in (0, 1], got {s.size} scores "
                         f"and level {level!r}.")
    k = max(1, math.ceil(level * s.size - 1e-9))                # guard 0.1 * 6000 = 600.0000001
    return float(s[s.size - k])


def decision(labels, scores, threshold):
    """(6) The flags s > t on a labelled set: precision TP / (TP + FP), recall TP / n_1, F1 their harmonic mean
    (0 where undefined), and the fraction of the set flagged."""
    y, s = _check(labels, scores, "decision", both_classes=False)
    flagged = s > threshold
    tp, fp = int((flagged & (y == 1)).sum()), int((flagged & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / max(1, int(y.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "test_flagged": float(flagged.mean())}


# ---------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------

def _save(fig, path):
    """Write one PNG (creating parent folders), close the figure, return path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")       # grow the canvas so no text is clipped
    plt.close(fig)
    return path


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def plot_history(histories, path):
    """Training curves: one row per stage ({name: [epoch dicts]}); loss first, then one panel per other key.

    The keys epoch, loss, lr and seconds are not plotted as panels; every other numeric key (R, r, frac_out,
    n_nonzero, ...) gets a panel of its own, because those quantities live on different scales.
    """
    stages = [(name, h) for name, h in histories.items() if h]
    if not stages:
        raise ValueError("plot_history: every stage history is empty; there is nothing to plot.")
    skip = {"epoch", "loss", "lr", "seconds", "outer", "N_l1"}  # N_l1: N_l1_per_image shows the same curve
    extras = {name: list(dict.fromkeys(k for e in h for k, v in e.items() if k not in skip and _is_number(v)))
              for name, h in stages}                          # keys in order of first appearance
    ncols = 1 + max(len(keys) for keys in extras.values())
    fig, axes = plt.subplots(len(stages), ncols, figsize=(4.6 * ncols, 3.3 * len(stages)), squeeze=False,
                             layout="constrained")
    for row, (name, h) in zip(axes, stages):
        epoch = np.array([e.get("epoch", i + 1) for i, e in enumerate(h)])
        for ax, key in zip(row, ["loss"] + extras[name]):
            v = np.array([e.get(key) if _is_number(e.get(key)) else np.nan for e in h], dtype=float)
            keep = np.isfinite(v)                             # a key logged only some epochs (RCAE's N-step)
            marker = "o" if keep.sum() <= 30 else None
            ax.plot(epoch[keep], v[keep], marker=marker, markersize=3,
                    color="tab:blue" if key == "loss" else "tab:orange")
            finite = v[keep]
            log = key == "loss" and finite.size > 0 and bool(np.all(finite > 0))
            if log:
                ax.set_yscale("log")
            ax.set(title=f"{name}: {key}", xlabel="epoch", ylabel=f"{key} (log scale)" if log else key)
            ax.grid(alpha=0.3)
        for ax in row[1 + len(extras[name]):]:
            ax.axis("off")                                    # this stage has fewer extra keys than the widest
    fig.suptitle("training history", fontsize=13)
    return _save(fig, path)


def plot_score_hist(labels, scores, path, title=""):
    """Overlaid histograms of normal and anomalous test scores (each group sums to 1), on shared bins."""
    y, s = _check(labels, scores, "plot_score_hist", both_classes=False)
    n_bins = int(np.clip(np.sqrt(s.size), 10, 60))
    # Distances span decades (most normals near 0, a long anomalous tail): then log-spaced bins on a log axis.
    log = bool(np.all(s > 0)) and np.percentile(s, 99) > 30 * np.percentile(s, 1)
    bins = np.geomspace(s.min(), s.max(), n_bins + 1) if log else np.histogram_bin_edges(s, bins=n_bins)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    if log:
        ax.set_xscale("log")
    for value, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        part = s[y == value]
        if part.size:
            ax.hist(part, bins=bins, weights=np.full(part.size, 1 / part.size), alpha=0.5, color=color,
                    edgecolor=color, label=f"{name} (n = {part.size})")
    ax.set(xlabel="anomaly score (higher = more anomalous)" + (", log scale" if log else ""),
           ylabel="fraction of the group per bin", title=title or "test scores by true label")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_roc_pr(labels, scores, path, title=""):
    """Two panels: the ROC curve with the chance diagonal, and the PR curve with the base rate."""
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    auc, ap = auroc(labels, scores), average_precision(labels, scores)
    base_rate = float(np.mean(np.asarray(labels) == 1))       # n_1 / n: precision of flagging everything
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(10.5, 4.8), layout="constrained")
    ax_roc.plot(fpr, tpr, color="tab:blue", label=f"ROC (AUROC = {auc:.4f})")
    ax_roc.plot([0, 1], [0, 1], "--", color="gray", label="chance (AUROC = 0.5)")
    ax_roc.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title="ROC curve",
               xlabel="false positive rate (normals flagged)", ylabel="true positive rate (anomalies caught)")
    # steps-pre from (0, P_1): precision P_k holds on (R_{k-1}, R_k], so the area under the steps is AP, eq. (4)
    ax_pr.step(np.r_[0, recall], np.r_[precision[0], precision], where="pre", color="tab:blue",
               label=f"PR (AP = {ap:.4f})")
    ax_pr.axhline(base_rate, ls="--", color="gray", label=f"base rate n_1/n = {base_rate:.3f}")
    ax_pr.set(xlim=(0, 1), ylim=(0, 1.01), title="precision-recall curve (anomaly = positive)",
              xlabel="recall (anomalies caught)", ylabel="precision (flagged that are anomalies)")
    ax_roc.legend(loc="lower right")                          # the ROC curve never enters that corner
    ax_pr.legend(loc="best")                                  # the PR curve can run anywhere
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _to_display(x):
    """(C, H, W) any range -> min-max scaled to [0, 1], as (H, W) for C = 1 or (H, W, 3) for C = 3."""
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)


def _mosaic(tiles, ncols, pad=2):
    """A list of (H, W) or (H, W, 3) images in [0, 1] -> one image of nrows x ncols tiles, white gaps."""
    h, w = tiles[0].shape[:2]
    nrows = math.ceil(len(tiles) / ncols)
    out = np.ones((nrows * (h + pad) - pad, ncols * (w + pad) - pad) + tiles[0].shape[2:])
    for j, tile in enumerate(tiles):
        r, c = divmod(j, ncols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tile
    return out


def plot_extremes(images, scores, labels, path, k=16, title=""):
    """The k most normal and k most anomalous NORMAL test images (label 0), each tile labelled with its score.

    This is the figure of Ruff et al. (2018): what the model finds atypical within the normal class itself.
    With fewer than 2k normal images the two grids share some images. Each grid is one mosaic image
    (one imshow, not one axes per tile), which keeps the figure quick to draw.
    """
    images = np.asarray(images, dtype=np.float64)
    y, s = _check(labels, scores, "plot_extremes", both_classes=False)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) != s.size:
        raise ValueError(f"plot_extremes: images must be (N, C, H, W) with C = 1 or 3 and N = {s.size} "
                         f"(the number of scores), got shape {images.shape}.")
    normal = np.flatnonzero(y == 0)
    if normal.size == 0:
        raise ValueError("plot_extremes: there are no normal (label 0) images to rank.")
    order = normal[np.argsort(s[normal], kind="stable")]      # normal images, lowest score first
    k = min(k, normal.size)
    groups = [(f"normal test images with the {k} lowest scores (most typical)", order[:k]),
              (f"normal test images with the {k} highest scores (least typical)", order[::-1][:k])]
    ncols = min(k, 8)
    nrows = math.ceil(k / ncols)
    h, w = images.shape[2:]
    pad = max(2, h // 3)                                      # room under each tile for its score
    fig, axes = plt.subplots(2, 1, figsize=(1.2 * ncols + 0.4, 2 * 1.35 * nrows + 1.0))
    for ax, (name, idx) in zip(axes, groups):
        ax.imshow(_mosaic([_to_display(images[i]) for i in idx], ncols, pad), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        for j, i in enumerate(idx):                           # the score under each tile
            r, c = divmod(j, ncols)
            ax.text(c * (w + pad) + w / 2, r * (h + pad) + h + pad / 2, f"{s[i]:.3g}", ha="center",
                    va="center", fontsize=7)
        ax.set_title(name, fontsize=10, fontweight="bold")
        ax.axis("off")
    every = f"every image here is a normal test image (label 0): {min(2 * k, normal.size)} of the {normal.size}"
    fig.suptitle(f"{title}\n{every}" if title else every, fontsize=10)
    fig.text(0.5, 0.005, "number under each image = its anomaly score", ha="center", fontsize=8)
    return _save(fig, path)


def plot_codes(codes, labels, scores, threshold, path, title="", center=None, R2=0.0, direction=None):
    """What the objective did to the representation: the test codes on their first two principal components
    (normal and anomalous in two colours; Deep SVDD's centre c and the threshold sphere, whose outline in any
    projection through c is a circle of its radius; OC-NN's direction u as an arrow), beside a histogram of
    the scores with the decision threshold.

    codes: (N, D); scores and threshold in score units (Deep SVDD: d^2 - R^2, so the sphere's radius is
    sqrt(threshold + R^2)); center (D,), direction (D,) or None.
    """
    z = np.asarray(codes, dtype=np.float64)
    y, s = _check(labels, scores, "plot_codes", both_classes=False)
    mean = z.mean(0)
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)       # principal directions of the test codes
    P = vt[:2].T if vt.shape[0] >= 2 else np.eye(z.shape[1], 2)   # (D, 2)
    xy = (z - mean) @ P
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    for value, name, color in ((1, "anomalous", "tab:red"), (0, "normal", "tab:blue")):  # the normal class on top
        part = xy[y == value]
        ax.scatter(part[:, 0], part[:, 1], s=4, alpha=0.35, color=color, label=f"{name} (n = {len(part)})")
    if center is not None:
        c = (np.asarray(center, dtype=np.float64) - mean) @ P
        ax.scatter(*c, marker="x", s=30, color="black", label="c")
        radius = math.sqrt(max(threshold + R2, 0.0))
        ax.add_patch(plt.Circle(c, radius, fill=False, ls="--", color="black", label="threshold sphere"))
    if direction is not None:
        u = np.asarray(direction, dtype=np.float64) @ P
        scale = np.abs(xy).max() / max(np.linalg.norm(u), 1e-12) / 2
        ax.annotate("", xy=u * scale, xytext=(0, 0), arrowprops=dict(arrowstyle="->", lw=2))
        ax.plot([], [], color="black", label="OC-NN direction u = V^T w")
    ax.set(xlabel="principal component 1 of the test codes", ylabel="principal component 2",
           title=title or "test codes")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=8, markerscale=1.5)
    bins = np.histogram_bin_edges(s, bins=int(np.clip(np.sqrt(s.size), 10, 60)))
    for value, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        part = s[y == value]
        if part.size:
            hx.hist(part, bins=bins, weights=np.full(part.size, 1 / part.size), alpha=0.5, color=color,
                    label=name)
    hx.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.4g} (flagged: above)")
    hx.set(xlabel="anomaly score", ylabel="fraction of the group per bin", title="test scores and the decision")
    hx.legend(fontsize=8)
    return _save(fig, path)


def plot_run(folder, title, stages, images, labels, scores, threshold, codes=None, **codes_view):
    """A run folder's plots/: training curves (where a stage has epochs), score histograms, ROC and PR curves,
    the extreme normal test images and, where the run has codes, codes.png (codes_view: plot_codes' centre,
    R2 or direction)."""
    os.makedirs(folder, exist_ok=True)
    if any(stages.values()):                                    # a shallow detector on pixels: no epochs
        plot_history(stages, os.path.join(folder, "training.png"))
    plot_score_hist(labels, scores, os.path.join(folder, "score_hist.png"), title=title)
    plot_roc_pr(labels, scores, os.path.join(folder, "roc_pr.png"), title=title)
    plot_extremes(images, scores, labels, os.path.join(folder, "extremes.png"), title=title)
    if codes is not None:
        plot_codes(codes, labels, scores, threshold, os.path.join(folder, "codes.png"), title=title, **codes_view)
