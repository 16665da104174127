"""The shallow one-class baselines of Deep SVDD's Table 1: PCA, Gaussian KDE, OC-SVM and Isolation Forest.

Ruff et al., "Deep One-Class Classification", ICML 2018, Sec. 4.1 and Table 1. Every score here is higher =
more anomalous, as everywhere in this codebase.

How the paper's code (lukasruff/Deep-SVDD: src/kde.py, src/svm.py, src/isoForest.py, src/scripts/) ran them,
all with scikit-learn: pixels / 255, GCN only where a script passes `--gcn 1`, min-max with the training
set's min and max, PCA keeping 95 % of the variance only where it passes `--pca 1`; the training set cut to
a multiple of 200 by a random subset. KDE: a Gaussian KernelDensity, bandwidth by 5-fold GridSearchCV over
2^linspace(-4.5, 5, 20), score -log density. OC-SVM: rbf, gamma over 2^-10..2^-1 picked by the AUROC on a
random 10 % of the test set, the other 90 % scored. Isolation Forest: 100 trees, max_samples 256.

Equations (labels are this file's; the papers are named beside each)

  (P1) PCA: S = 1/(n-1) sum_i (x_i - mu)(x_i - mu)^T = V diag(lam) V^T, lam_1 >= ... >= lam_d;
       keep the smallest k with sum_{j<=k} lam_j / sum_j lam_j >= variance;  z = (x - mu) V_k.
  (K1) Gaussian KDE (Parzen 1962), bandwidth h, n training points in d dimensions:
       log p(x) = logsumexp_i(-||x - x_i||^2 / (2 h^2)) - log n - (d/2) log(2 pi h^2);  score -log p(x).
  (K2) bandwidth by k-fold cross-validation, folds F_1..F_k (contiguous, no shuffling):
       h* = argmax_h sum_f sum_{x in F_f} log p_h(x | the training points outside F_f).
  (O1) OC-SVM (Schoelkopf, Platt, Shawe-Taylor, Smola, Williamson, "Estimating the support of a
       high-dimensional distribution", Neural Computation 2001), primal:
       min_{w, xi, rho} 1/2 ||w||^2 + 1/(nu n) sum_i xi_i - rho   s.t.  <w, Phi(x_i)> >= rho - xi_i, xi_i >= 0.
  (O2) its dual, with K_ij = k(x_i, x_j) = exp(-gamma ||x_i - x_j||^2) and C = 1/(nu n):
       min_a 1/2 a^T K a   s.t.  0 <= a_i <= C,  sum_i a_i = 1.
  (O3) KKT, with G = K a:  a_i = 0 -> G_i >= rho;  0 < a_i < C -> G_i = rho;  a_i = C -> G_i <= rho.
       rho = mean of G_i over the margin support vectors 0 < a_i < C.
  (O4) score s(x) = rho - sum_i a_i k(x_i, x)  (> 0: outside the estimated support).
  (I1) Isolation Forest (Liu, Ting, Zhou, "Isolation Forest", ICDM 2008), average path length of an
       unsuccessful search in a binary search tree of n points:
       c(n) = 2 H(n-1) - 2 (n-1)/n,  H(i) = ln(i) + 0.5772156649;  c(2) = 1, c(1) = 0.
  (I2) path length h(x) = edges from the root to x's external node + c(size of that node);
       score s(x) = 2^(-E[h(x)] / c(psi)) in (0, 1), the expectation over the trees.

Symbols

    paper        code          shape / type
    x_i          x_train       (n, d)  float64 (images are flattened)
    h            h             float (or a grid of them)
    a            a             (n,)    OC-SVM dual variables, a = alpha / (nu n) of libsvm's scaling
    K a          Ka (G)        (n,)    the dual's gradient
    rho          rho           float
    nu           nu            (0, 1]  upper bound on the outlier fraction, lower bound on the SV fraction
    gamma        gamma         float   RBF width: k(x, y) = exp(-gamma ||x - y||^2)
    psi          psi           int     subsample size of each isolation tree

OC-SVM and kernel SVDD (Tax & Duin, "Support vector data description", Machine Learning 2004). SVDD's dual is
max_a sum_i a_i k(x_i, x_i) - a^T K a, s.t. sum a = 1, 0 <= a_i <= C. With an RBF kernel k(x, x) = 1, so the
first term is the constant 1 and SVDD is (O2) with C = 1/(nu n): the same a. The centre is c = sum_i a_i
Phi(x_i); on a margin SV, R^2 = ||Phi(x_k) - c||^2 = 1 - 2 rho + a^T K a, and ||Phi(x) - c||^2 - R^2 =
2 (rho - sum_i a_i k(x_i, x)) = 2 s(x): the sphere and the hyperplane rank every point alike. Deep SVDD
(svdd.py) keeps the sphere and replaces the fixed feature map Phi of a kernel by a learnt network phi(x; W).

The solver, and why. SMO (Platt 1998) with the maximal-violating-pair rule (Keerthi et al. 2001) inside
a decomposition (working sets of `working_set` points, as SVMlight, Joachims 1999). A full kernel matrix
of an MNIST class (6,000 x 6,000 on 784 pixels, ~28 G multiply-adds) costs seconds here, and projected or
Frank-Wolfe methods need many passes over it; yet only the support vectors (about nu n) and the points near
the margin move. So each outer step takes the `working_set`/2 points that most want to grow and the
`working_set`/2 that most want to shrink, computes the kernel rows it lacks in ONE matrix product, caches
them, solves that small problem by SMO, and updates G. Stop when the KKT gap
max_{a_i > 0} G_i - min_{a_i < C} G_i <= eps / (nu n): libsvm solves (O2) scaled by nu n (alpha = nu n a,
0 <= alpha_i <= 1, sum alpha = nu n), so its gradient is nu n G and its default eps = 1e-3 becomes
eps / (nu n) here; the a, rho and support vectors are libsvm's to that tolerance. results/README.md,
section 6 ("The shallow detectors against scikit-learn"), measures it against scikit-learn's OneClassSVM
on MNIST digit 0 (results/sklearn_shallow.py): the support vectors, rho, and the seconds to fit and score.

Deviations and choices
  * KDE is exact: a log-sum-exp over every training point. The paper's code used scikit-learn's tree-based
    KernelDensity, which on these inputs is hundreds of nats off (results/README.md, section 6, measures it
    with results/sklearn_shallow.py), so Table 1's KDE column is not what this gives.
  * Kernel rows are computed and cached in float32 (libsvm's cache holds floats too); G and a are float64.
  * Start: the first floor(nu n) points at C and one at the remainder, as libsvm; data order matters only
    within the tolerance.
  * Isolation Forest draws the split feature uniformly among the features that vary in the node (as
    scikit-learn; the paper does not say what a constant feature does); a node whose points are all equal
    is an external node. psi = min(256, n).
  * PCA keeps the smallest k whose share is >= variance (scikit-learn's PCA(0.95) asks for > variance;
    they differ only on an exact tie).
  * gamma's default, `gamma_from_data(x, 'scale')` = 1 / (d Var(x)), looks at the training data only; the
    paper's code instead picks gamma by the AUROC on 10 % of the labelled test set
    (`ocsvm_gamma_by_test_auroc`, named for what it looks at). Why 'scale': see `gamma_from_data`.

Read next: svdd.py (the sphere again, around a learnt map), evaluate.py (the AUROC of these scores).
"""
import math
import time

import numpy as np
import torch

import evaluate

EULER = 0.5772156649                                                   # Euler's constant in H(i), (I1)
KDE_BANDWIDTHS = tuple(2.0 ** np.linspace(-4.5, 5, 20))               # the paper code's grid for (K2)
OCSVM_GAMMAS = tuple(2.0 ** np.linspace(-10, -1, 10))                 # the paper code's gamma grid


class ShallowError(ValueError):
    """A bad value given to a shallow detector, or an OC-SVM that did not converge; says what to do."""


def _flat(x):
    """(n, ...) tensor or array -> (n, d) float64 tensor."""
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    return x.reshape(len(x), -1).to(torch.float64)


def sq_dists(x, y):
    """||x_i - y_j||^2 for all pairs: (n, d), (m, d) -> (n, m), by ||x||^2 + ||y||^2 - 2 x.y, clamped at 0."""
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * (x @ y.T)   # (n, m)
    return d2.clamp_min_(0)                                                   # rounding can dip below 0


def _row_chunks(n, m, entries=2 ** 20):
    """Slices of range(n) so that a (chunk, m) block holds about `entries` numbers (8 MB in float64)."""
    step = max(1, entries // max(m, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


# ---------------------------------------------------------------------------------------------------
# PCA
# ---------------------------------------------------------------------------------------------------

def pca_fit(x_train, variance=0.95):
    """(P1) on the training set only: returns (mu (d,), V_k (d, k)), k the smallest reaching `variance`."""
    if not 0 < variance <= 1:
        raise ShallowError(f"PCA variance must be a fraction in (0, 1], got {variance}; 0.95 keeps 95 %.")
    x = _flat(x_train)                                                  # (n, d)
    mu = x.mean(0)                                                      # (d,)
    S = (x - mu).T @ (x - mu) / max(len(x) - 1, 1)                      # (d, d) sample covariance
    lam, V = torch.linalg.eigh(S)                                       # ascending eigenvalues
    lam, V = lam.flip(0).clamp_min(0), V.flip(1)                        # (d,), (d, d) largest first
    share = lam.cumsum(0) / lam.sum()                                   # (d,) explained-variance share
    k = min(int((share < variance).sum()) + 1, len(lam))                # smallest k with share >= variance
    return mu, V[:, :k]


def pca_apply(x, mu, V):
    """z = (x - mu) V_k: (n, ...) -> (n, k), with the TRAINING mean and components."""
    return (_flat(x) - mu) @ V


# ---------------------------------------------------------------------------------------------------
# KDE
# ---------------------------------------------------------------------------------------------------

def kde_log_density(x, x_train, h):
    """(K1) log p_h(x) for each row of x: (n,) for one h, (len(h), n) for a grid (distances shared).

    Exact: log-sum-exp over every training point in float64, in chunks of test rows (bounded memory).
    """
    hs = torch.as_tensor(h, dtype=torch.float64).reshape(-1)            # (m,) bandwidths
    if hs.numel() == 0:
        raise ShallowError("the KDE bandwidth grid is empty; pass at least one bandwidth h > 0.")
    if not bool(((hs > 0) & hs.isfinite()).all()):
        raise ShallowError(f"KDE bandwidths must be finite and > 0, got {hs.tolist()}; use e.g. "
                           f"shallow.KDE_BANDWIDTHS.")
    x, xt = _flat(x), _flat(x_train)                                    # (N, d), (n, d)
    n, d = xt.shape
    out = torch.empty(len(hs), len(x), dtype=torch.float64)             # (m, N)
    for rows in _row_chunks(len(x), n):
        d2 = sq_dists(x[rows], xt)                                      # (chunk, n) ||x - x_i||^2
        for j, hj in enumerate(hs):
            out[j, rows] = log_kernel_mean(d2, float(hj), d, n)
    return out[0] if torch.as_tensor(h).dim() == 0 else out


def log_kernel_mean(d2, h, d, n):
    """log( 1/n sum_i N(x; x_i, h^2 I) ) for each row of d2 = ||x - x_i||^2, (rows, m) -> (rows,).

    N(x; x_i, h^2 I) = (2 pi h^2)^(-d/2) exp(-||x - x_i||^2 / 2h^2); the sum by log-sum-exp, exact where every
    exp underflows; an infinite distance adds 0. n: the count the mean divides by (m, or less for leave-one-out).
    """
    log_normalizer = (d / 2) * math.log(2 * math.pi) + d * math.log(h)  # log (2 pi h^2)^(d/2), h^2 may underflow
    return torch.logsumexp(-d2 / (2 * h ** 2), dim=1) - math.log(n) - log_normalizer


def kde_scores(x, x_train, h):
    """(K1) score s(x) = -log p_h(x), (N,); higher = more anomalous."""
    return -kde_log_density(x, x_train, float(h))


def kde_loo_log_density(x_train, h):
    """Leave one out: log p_h(x_i) without x_i's own kernel, for each training point, (n,):

        log p_h^(-i)(x_i) = log( 1/(n-1) sum_{j != i} N(x_i; x_j, h^2 I) )

    The in-sample (K1) counts exp(0) = 1 for x_i itself, which in many dimensions outweighs all the other
    kernels, so a threshold from in-sample scores flags nearly every unseen point. Left out, each training
    point is scored as an unseen one would be. Log-sum-exp in float64, in chunks, as kde_log_density.
    """
    xt = _flat(x_train)                                                 # (n, d)
    n, d = xt.shape
    out = torch.empty(n, dtype=torch.float64)                           # (n,)
    for rows in _row_chunks(n, n):
        d2 = sq_dists(xt[rows], xt)                                     # (chunk, n) ||x_i - x_j||^2
        own = torch.arange(rows.start, rows.stop)                       # (chunk,) the i of each row
        d2[own - rows.start, own] = math.inf                            # j = i left out: exp(-inf) = 0
        out[rows] = log_kernel_mean(d2, h, d, n - 1)                    # the mean over the n - 1 others
    return out


def contiguous_folds(n, k):
    """k folds of range(n) in order, the first n % k folds one longer (KFold, no shuffling): list of slices."""
    sizes = [n // k + (1 if f < n % k else 0) for f in range(k)]
    starts = np.cumsum([0] + sizes)
    return [slice(int(starts[f]), int(starts[f + 1])) for f in range(k)]


def kde_cv_bandwidth(x_train, bandwidths=KDE_BANDWIDTHS, folds=5):
    """(K2): the bandwidth with the largest total held-out log-likelihood; returns (h*, {h: total}).

    Ties go to the first bandwidth of the grid.
    """
    x = _flat(x_train)
    if not 2 <= folds <= len(x):
        raise ShallowError(f"KDE cross-validation needs 2 <= folds <= n = {len(x)}, got {folds}.")
    hs = torch.as_tensor(bandwidths, dtype=torch.float64).reshape(-1)
    total = torch.zeros(len(hs), dtype=torch.float64)                   # (m,)
    for fold in contiguous_folds(len(x), folds):
        keep = torch.ones(len(x), dtype=torch.bool)
        keep[fold] = False                                              # train on the other folds
        total += kde_log_density(x[fold], x[keep], hs).sum(1)           # held-out log-likelihood
    best = int(total.argmax())                                          # first of equal maxima
    return float(hs[best]), {float(h): float(t) for h, t in zip(hs, total)}


# ---------------------------------------------------------------------------------------------------
# OC-SVM
# ---------------------------------------------------------------------------------------------------

def rbf_kernel(x, y, gamma):
    """k(x_i, y_j) = exp(-gamma ||x_i - y_j||^2): (n, d), (m, d) -> (n, m), in x's dtype."""
    return torch.exp(-gamma * sq_dists(x, y))


def gamma_from_data(x_train, rule="scale", sample=2000, seed=0):
    """A gamma from the training data alone (no labels).

    'scale':  gamma = 1 / (d Var(x)), Var over all n d entries: for centred features (PCA codes) and
              independent x, y, gamma E||x - y||^2 = 2, whatever the features' scale.
    'median': gamma = 1 / median_{i != j} ||x_i - x_j||^2, over a seeded subsample of `sample` points.
    'max':    gamma = 1 / max_{i, j} ||x_i - x_j||^2, exact (the paper code's rule without a grid search).
    Why 'scale' is the default: it was the best of the three on each digit measured, and it needs no
    subsample (results/README.md, section 7, "Which label-free gamma", measures the three rules against the
    paper's grid). A narrow kernel makes nearly every point a support vector and the score a Parzen
    density; no label-free rule here finds that, which is what the test-label search of the paper's code
    gains.
    """
    x = _flat(x_train)
    n, d = x.shape
    if rule == "scale":
        v = float(x.var(unbiased=False))
        return 1.0 / (d * v) if v > 0 else 1.0
    if rule == "median":
        idx = np.random.default_rng(seed).permutation(n)[:sample]
        xs = x[torch.from_numpy(idx)]
        d2 = sq_dists(xs, xs)                                           # (s, s)
        off = d2[~torch.eye(len(xs), dtype=torch.bool)]                 # i != j
        med = float(off.median()) if off.numel() else 0.0
        return 1.0 / med if med > 0 else 1.0
    if rule == "max":
        big = max(float(sq_dists(x[rows], x).max()) for rows in _row_chunks(n, n))
        return 1.0 / big if big > 0 else 1.0
    raise ShallowError(f"unknown gamma rule {rule!r}: use 'scale', 'median' or 'max'.")


class _KernelRows:
    """Rows K[i, :] of the n x n kernel matrix, computed in blocks (one matrix product) and cached.

    The cache holds at most cache_mb megabytes; when full, rows of points with a_i = 0 (inside the support,
    the least likely to be asked for again) are dropped first.
    """

    def __init__(self, x, gamma, dtype, cache_mb):
        self.x, self.gamma = x.to(dtype), gamma                         # (n, d)
        n = len(x)
        cap = max(1, min(n, int(cache_mb * 2 ** 20) // (n * self.x.element_size())))
        self.rows = torch.empty(cap, n, dtype=dtype)                    # (cap, n) the cached rows
        self.slot = torch.full((n,), -1, dtype=torch.long)              # (n,) point -> its row, -1: none
        self.owner = torch.full((cap,), -1, dtype=torch.long)           # (cap,) row -> its point, -1: free

    def get(self, idx, a):
        """Rows for the points idx (int64 tensor): returns their slots (len(idx),); computes what is missing."""
        need = idx[self.slot[idx] < 0]
        free = torch.nonzero(self.owner < 0).flatten()
        if len(need) > len(free):                                       # evict rows of points with a_i = 0
            drop = self.owner[(self.owner >= 0)]
            drop = drop[torch.from_numpy(a[drop.numpy()] == 0) & ~torch.isin(drop, idx)]
            self.owner[self.slot[drop]] = -1
            self.slot[drop] = -1
            free = torch.nonzero(self.owner < 0).flatten()
            if len(need) > len(free):
                raise ShallowError(f"the OC-SVM kernel cache ({len(self.rows)} rows) cannot hold the support "
                                   "vectors and the working set; raise cache_mb or lower working_set.")
        if len(need):
            s = free[:len(need)]
            self.rows[s] = rbf_kernel(self.x[need], self.x, self.gamma)  # (len(need), n) one matrix product
            self.slot[need], self.owner[s] = s, need
        return self.slot[idx]


def _smo(Q, g, a, C, tol, max_steps):
    """SMO on one working set (O2 restricted to it), in place: Q (q, q), g = (K a)_W (q,), a (q,).

    Each step takes the maximal violating pair, i = argmax_{a_i > 0} g_i and j = argmin_{a_j < C} g_j,
    and moves mass t from a_i to a_j. Along that line the objective changes by -t (g_i - g_j) + t^2 eta / 2
    with eta = K_ii + K_jj - 2 K_ij = ||Phi(x_i) - Phi(x_j)||^2, so
        t = min((g_i - g_j) / eta, a_i, C - a_j),   and then g <- g + t (K_:j - K_:i).
    Stops when g_i - g_j <= tol (O3 holds to tol on the set). Returns the number of steps taken.
    """
    diag = Q.diagonal().copy()                                          # (q,) K_ii
    for step in range(max_steps):
        i = int(np.where(a > 0, g, -np.inf).argmax())                   # can shrink, largest gradient
        j = int(np.where(a < C, g, np.inf).argmin())                    # can grow, smallest gradient
        gap = g[i] - g[j]
        if gap <= tol:
            return step
        eta = max(diag[i] + diag[j] - 2 * Q[i, j], 1e-12)               # curvature along e_j - e_i
        t = min(gap / eta, a[i], C - a[j])                              # minimiser, inside the box
        a[i] = 0.0 if t == a[i] else a[i] - t                           # a bound is hit exactly
        a[j] = C if t == C - a[j] else a[j] + t
        g += t * (Q[j] - Q[i])                                          # K symmetric: row = column
    return max_steps


def ocsvm_fit(x_train, nu=0.1, gamma=None, eps=1e-3, working_set=1024, max_iter=1_000_000,
              cache_mb=1024, dtype=torch.float32):
    """Solve (O2) by SMO in working sets (see the module docstring); rho by (O3).

    gamma: None -> gamma_from_data(x_train, 'scale'). eps: libsvm's tolerance; the KKT gap here stops at
    eps / (nu n). max_iter: SMO steps over all working sets; ShallowError past it.
    Returns a dict: a (n,) and Ka (n,) numpy float64, rho, x_sv (s, d) and a_sv (s,) float64 tensors,
    gamma, nu, C, tol, gap, steps, dtype.
    """
    if not 0 < nu <= 1:
        raise ShallowError(f"OC-SVM nu must be in (0, 1], got {nu}; 0.1 bounds the outliers by 10 %.")
    x = _flat(x_train)
    n = len(x)
    gamma = gamma_from_data(x) if gamma is None else gamma
    if not 0 < gamma < torch.finfo(dtype).max:                          # the kernel is computed in dtype
        raise ShallowError(f"OC-SVM gamma must be > 0 and below {torch.finfo(dtype).max:.3g} (the kernel's "
                           f"{dtype}), got {gamma}; try shallow.gamma_from_data(x_train).")
    C = 1.0 / (nu * n)                                                  # box of (O2)
    tol = eps / (nu * n)                                                # libsvm's eps on our scale
    a = np.zeros(n)                                                     # (n,) feasible start, sum a = 1
    k = min(int(math.floor(nu * n)), n)
    a[:k] = C
    if k < n:
        a[k] = 1.0 - k * C                                              # < C since k = floor(nu n)
    K = _KernelRows(x, gamma, dtype, cache_mb)
    nz = torch.from_numpy(np.flatnonzero(a))
    G = (torch.from_numpy(a[nz.numpy()]).to(dtype) @ K.rows[K.get(nz, a)]).double().numpy()  # (n,) K a
    steps, half = 0, max(1, working_set // 2)
    while True:
        up, low = np.flatnonzero(a < C), np.flatnonzero(a > 0)          # can grow / can shrink
        gap = G[low].max() - G[up].min() if len(up) and len(low) else 0.0   # KKT gap of (O3)
        if gap <= tol:
            break
        if steps >= max_iter:
            raise ShallowError(f"the OC-SVM did not converge in max_iter = {max_iter} SMO steps (KKT gap "
                               f"{gap:.3g} > {tol:.3g}); raise max_iter or eps.")
        grow = up[np.argsort(G[up], kind="stable")[:half]]              # most want to grow: smallest G
        shrink = low[np.argsort(-G[low], kind="stable")[:half]]         # most want to shrink: largest G
        W = np.unique(np.concatenate([grow, shrink]))                   # (q,) the working set
        s = K.get(torch.from_numpy(W), a)                               # (q,) cache slots
        Q = K.rows[s[:, None], torch.from_numpy(W)[None, :]].double().numpy()   # (q, q) K_WW
        aW, gW = a[W].copy(), G[W].copy()
        steps += _smo(Q, gW, aW, C, tol, max_iter - steps)
        delta = aW - a[W]                                               # (q,)
        moved = np.flatnonzero(delta)
        G += (torch.from_numpy(delta[moved]).to(dtype) @ K.rows[s[torch.from_numpy(moved)]]).double().numpy()
        a[W] = aW
    rho = ocsvm_rho(a, G, C)
    if not (math.isfinite(rho) and np.isfinite(G).all()):
        raise ShallowError(f"the OC-SVM's solution is not finite (gamma {gamma:g}); try a smaller gamma, or "
                           f"shallow.gamma_from_data(x_train).")
    sv = torch.from_numpy(np.flatnonzero(a > 0))
    return dict(a=a, Ka=G, rho=rho, x_sv=x[sv], a_sv=torch.from_numpy(a[sv.numpy()]), gamma=float(gamma),
                nu=nu, C=C, tol=tol, gap=float(gap), steps=steps, dtype=dtype)


def ocsvm_rho(a, Ka, C):
    """(O3) rho from the KKT conditions of the solved dual, given a (n,), K a (n,) (numpy float64) and the box C;
    returns a Python float."""
    # (K a)_i = rho on every margin support vector (0 < a_i < C): their mean, for stability. Without one, any
    # rho between max (K a)_i over a_i = C and min (K a)_i over a_i = 0 satisfies the KKT conditions: the midpoint.
    free = (a > 0) & (a < C)
    if free.any():
        return float(Ka[free].mean())
    bounds = [Ka[a >= C].max()] if (a >= C).any() else []
    bounds += [Ka[a <= 0].min()] if (a <= 0).any() else []
    return float(np.mean(bounds))


def ocsvm_scores(x, model):
    """(O4) s(x) = rho - sum_i a_i k(x_i, x), (N,); higher = more anomalous (> 0: outside the support).

    scikit-learn's decision_function is sum alpha_i k - rho in libsvm's scaling, -nu n times this score.
    """
    x = _flat(x).to(model["dtype"])
    x_sv = model["x_sv"].to(model["dtype"])
    out = torch.empty(len(x), dtype=torch.float64)
    for rows in _row_chunks(len(x), len(x_sv)):
        k = rbf_kernel(x[rows], x_sv, model["gamma"]).double()          # (chunk, s)
        out[rows] = model["rho"] - k @ model["a_sv"]                    # rho - sum_i a_i k(x_i, x)
    return out


def ocsvm_gamma_by_test_auroc(x_train, x_test, y_test, nu=0.1, gammas=OCSVM_GAMMAS, holdout=0.1, seed=0,
                              **fit_kw):
    """THIS LOOKS AT TEST LABELS: the paper code's gamma selection, for reproducing Table 1 only.

    A random `holdout` share of the test set (numpy Generator(seed), redrawn until both parts hold both
    labels) picks gamma by its AUROC (first of equal maxima); the rest is scored with that model. Returns
    a dict: gamma, model, auroc_by_gamma, holdout_index, eval_index, scores (of x_test[eval_index]).
    """
    y = np.asarray(y_test)
    n = len(y)
    m = int(holdout * n)
    if not 0 < holdout < 1 or not 2 <= m <= n - 2:
        raise ShallowError(f"holdout must leave at least 2 test points on each side, got {holdout} of {n}.")
    if len(gammas) == 0:
        raise ShallowError("the OC-SVM gamma grid is empty; pass at least one gamma > 0.")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        perm = rng.permutation(n)
        hold, rest = perm[:m], perm[m:]
        if len(np.unique(y[hold])) == 2 and len(np.unique(y[rest])) == 2:
            break
    else:
        raise ShallowError("no holdout split with both labels on both sides in 1000 draws; raise holdout.")
    x_test = _flat(x_test)
    best, models, aurocs = None, {}, {}
    for g in gammas:
        models[g] = ocsvm_fit(x_train, nu, g, **fit_kw)
        aurocs[g] = evaluate.auroc(y[hold], ocsvm_scores(x_test[torch.from_numpy(hold)], models[g]).numpy())
        if best is None or aurocs[g] > aurocs[best]:
            best = g
    scores = ocsvm_scores(x_test[torch.from_numpy(rest)], models[best])
    return dict(gamma=float(best), model=models[best], auroc_by_gamma=aurocs, holdout_index=hold,
                eval_index=rest, scores=scores)


# ---------------------------------------------------------------------------------------------------
# Isolation Forest
# ---------------------------------------------------------------------------------------------------

def c_factor(n):
    """(I1) c(n) = 2 H(n-1) - 2 (n-1)/n with H(i) = ln(i) + 0.5772156649; c(2) = 1; c(n) = 0 for n <= 1."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    big = n > 2
    out[big] = 2 * (np.log(n[big] - 1) + EULER) - 2 * (n[big] - 1) / n[big]
    out[n == 2] = 1.0
    return out if out.ndim else float(out)


def iforest_fit(x_train, n_trees=100, psi=256, seed=0):
    """Grow `n_trees` isolation trees on subsamples of psi points (without replacement), all trees at once.

    Each tree is a heap of 2^(L+1) - 1 nodes (children of node k: 2k+1, 2k+2), L = ceil(log2 psi) the
    height limit. Level by level, every node with 2 or more distinct points gets a random feature among
    those that vary in it and a split p uniform in [min, max); x < p goes left. seed: an int or a numpy
    Generator (same seed, same forest). Returns a dict: the (T, nodes) arrays feature, threshold, size
    (subsample points reaching the node) and leaf, and psi and height L.
    """
    x = _flat(x_train).numpy()
    n, d = x.shape
    psi = min(psi, n)
    if psi < 2 or n_trees < 1:
        raise ShallowError(f"Isolation Forest needs psi >= 2 points and n_trees >= 1, got {psi}, {n_trees}.")
    rng = np.random.default_rng(seed)
    L = math.ceil(math.log2(psi))                                       # height limit
    m = 2 ** (L + 1) - 1                                                # nodes per tree
    feature = np.zeros((n_trees, m), dtype=np.int64)
    threshold = np.zeros((n_trees, m))
    size = np.zeros((n_trees, m), dtype=np.int64)                       # subsample points in each node
    leaf = np.ones((n_trees, m), dtype=bool)                            # external until split
    pts = np.concatenate([rng.choice(n, psi, replace=False) for _ in range(n_trees)])   # (T psi,)
    key = np.repeat(np.arange(n_trees) * m, psi)                        # (T psi,) flat node id: tree*m + node
    for level in range(L + 1):
        order = np.argsort(key, kind="stable")
        pts, key = pts[order], key[order]                               # points grouped by node
        nodes, start, count = np.unique(key, return_index=True, return_counts=True)
        size.flat[nodes] = count
        if level == L:
            break                                                       # height limit: all external
        f, lo, hi, ok = _split_features(x, pts, nodes, start, count, rng)
        split = ok & (count > 1)                                        # nodes that get a split
        feature.flat[nodes[split]] = f[split]
        threshold.flat[nodes[split]] = lo[split] + rng.random(split.sum()) * (hi[split] - lo[split])
        leaf.flat[nodes[split]] = False
        go = np.repeat(split, count)                                    # (points,) those that move down
        pts, key = pts[go], key[go]
        tree0 = key - key % m                                           # tree * m
        local = key % m
        right = x[pts, feature.flat[key]] >= threshold.flat[key]
        key = tree0 + 2 * local + 1 + right                             # child id
    return dict(feature=feature, threshold=threshold, size=size, leaf=leaf, psi=psi, height=L)


def _split_features(x, pts, nodes, start, count, rng, rounds=32):
    """For each node a feature drawn uniformly among those that vary over its points, and its min, max.

    Rejection: draw a feature per node, keep it where min < max, redraw the rest. After `rounds` draws
    the few nodes left are settled exactly from all their features (equal points: ok = False).
    """
    k = len(nodes)
    f = np.zeros(k, dtype=np.int64)
    lo, hi = np.zeros(k), np.zeros(k)
    ok = np.zeros(k, dtype=bool)
    pending = count > 1                                                 # (k,) nodes still to draw for
    node_of = np.repeat(np.arange(k), count)                            # (points,) index into nodes
    d = x.shape[1]
    for _ in range(rounds):
        todo = np.flatnonzero(pending)
        if not len(todo):
            return f, lo, hi, ok
        f[todo] = rng.integers(d, size=len(todo))
        sel = pending[node_of]                                          # points of pending nodes, grouped
        v = x[pts[sel], f[node_of[sel]]]
        starts = np.cumsum(count[todo]) - count[todo]                   # group starts within v
        lo[todo], hi[todo] = np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts)
        good = todo[hi[todo] > lo[todo]]
        ok[good], pending[good] = True, False
    for j in np.flatnonzero(pending):                                   # exact for the rest
        xs = x[pts[start[j]:start[j] + count[j]]]                       # (count, d)
        varying = np.flatnonzero(xs.max(0) > xs.min(0))
        if len(varying):
            f[j] = varying[rng.integers(len(varying))]
            lo[j], hi[j], ok[j] = xs[:, f[j]].min(), xs[:, f[j]].max(), True
    return f, lo, hi, ok


def iforest_path_length(x, forest):
    """(I2) E[h(x)] over the trees, (N,): all points walk down all trees at once, one level per step.

    An external node is its own child with threshold +inf, so every walk takes `height` steps, no masks.
    """
    x = _flat(x).numpy()
    T, m = forest["feature"].shape
    leaf = forest["leaf"].ravel()                                       # (T m,)
    node = np.arange(T * m)
    child = np.where(leaf, node, node - node % m + 2 * (node % m) + 1)  # left child; right = left + 1
    threshold = np.where(leaf, np.inf, forest["threshold"].ravel())     # never go right at a leaf
    feature = forest["feature"].ravel()
    depth = np.floor(np.log2(node % m + 1))                             # (T m,) edges from the root
    h_end = depth + c_factor(forest["size"].ravel())                    # (T m,) h(x) if x ends there
    out = np.empty(len(x))
    for rows in _row_chunks(len(x), T):
        xr = x[rows]                                                    # (chunk, d)
        base = np.arange(len(xr))[:, None] * x.shape[1]                 # (chunk, 1) row offsets in xr
        key = np.tile(np.arange(T) * m, (len(xr), 1))                   # (chunk, T) each tree's root
        for _ in range(forest["height"]):
            f = feature[key]
            key = child[key] + (xr.ravel()[base + f] >= threshold[key])  # left child, or right
        out[rows] = h_end[key].mean(1)                                  # mean over trees of (I2)'s h
    return out


def iforest_scores(x, forest):
    """(I2) s(x) = 2^(-E[h(x)] / c(psi)) in (0, 1), (N,); higher = more anomalous."""
    return torch.from_numpy(2.0 ** (-iforest_path_length(x, forest) / c_factor(forest["psi"])))


# ---------------------------------------------------------------------------------------------------
# One call each (run.py)
# ---------------------------------------------------------------------------------------------------

def fit(detector, x_train, *, pca=0.0, nu=0.1, bandwidth=None, gamma="scale", trees=100, psi=256, seed=0,
        x_test=None, y_test=None):
    """Fit 'kde', 'ocsvm' or 'iforest' on x_train, after PCA keeping the share `pca` of its variance (0: none).

    Returns (model, info): model holds tensors and numbers only, so that model.pt reads back with
    torch.load(weights_only=True), and `score` scores with it; info says what was chosen (bandwidth, gamma,
    PCA dimensions, support vectors, fit seconds). gamma: a number, 'scale' (gamma_from_data) or 'test-auroc'
    (ocsvm_gamma_by_test_auroc on x_test, y_test: info['eval_index'] lists the test points left to score).
    """
    start = time.perf_counter()
    x, model, info = _flat(x_train), {}, {}
    if not bool(x.isfinite().all()):
        raise ShallowError("the training input of the shallow detector holds NaN or infinite values; check the "
                           "data or the representation it comes from.")
    if pca:
        mu, V = pca_fit(x, pca)                                         # (P1) on the training set only
        model["pca"] = {"mu": mu, "V": V}
        x, info["pca_dims"] = pca_apply(x, mu, V), V.shape[1]
    if detector == "kde":
        h = float(bandwidth) if bandwidth is not None else kde_cv_bandwidth(x)[0]   # (K2)
        model.update(x_train=x, h=h)
        info["bandwidth"] = h
    elif detector == "ocsvm":
        if gamma == "test-auroc":                                       # LOOKS AT TEST LABELS (Table 1's protocol)
            chosen = ocsvm_gamma_by_test_auroc(x, _project(model, x_test), y_test, nu=nu, seed=seed)
            svm = chosen["model"]
            info.update(eval_index=chosen["eval_index"].tolist(), holdout_test_indices=chosen["holdout_index"].tolist(),
                        auroc_by_gamma={f"{g:g}": a for g, a in chosen["auroc_by_gamma"].items()})
        else:
            svm = ocsvm_fit(x, nu, gamma_from_data(x) if gamma == "scale" else float(gamma))
        model.update(x_sv=svm["x_sv"], a_sv=svm["a_sv"], rho=svm["rho"], gamma=svm["gamma"])
        info.update(gamma=svm["gamma"], n_support=len(svm["a_sv"]), rho=svm["rho"])
    elif detector == "iforest":
        forest = iforest_fit(x, trees, psi, seed)
        model.update({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in forest.items()})
    else:
        raise ShallowError(f"unknown shallow detector {detector!r}: kde, ocsvm or iforest.")
    info["fit_seconds"] = time.perf_counter() - start
    return model, info


def _project(model, x):
    """x flattened, and projected on the training PCA where the model has one."""
    x = _flat(x)
    return pca_apply(x, model["pca"]["mu"], model["pca"]["V"]) if "pca" in model else x


def score(detector, model, x):
    """The scores (higher = more anomalous), (N,) float64, of x under a model that `fit` returned.

    ShallowError where a score is NaN or infinite (a bandwidth or gamma that over- or underflows)."""
    x = _project(model, x)
    if detector == "kde":
        return _finite(detector, kde_scores(x, model["x_train"], model["h"]))
    if detector == "ocsvm":
        return _finite(detector, ocsvm_scores(x, dict(model, dtype=torch.float32)))
    forest = {k: v.numpy() if torch.is_tensor(v) else v for k, v in model.items() if k != "pca"}
    return _finite(detector, iforest_scores(x, forest))


def train_scores(detector, model, x_train):
    """The training set's scores for the decision threshold (their (1 - level)-quantile), (n,) float64.

    Out of sample where `score` is optimistic: the KDE's are leave-one-out (kde_loo_log_density), since its
    in-sample density counts each point's own kernel; the OC-SVM's and the Isolation Forest's are their plain
    scores. x_train: the very set that `fit` was given (the KDE scores the copy it holds).
    """
    if detector != "kde":
        return score(detector, model, x_train)
    if len(x_train) != len(model["x_train"]):
        raise ShallowError(f"train_scores needs the KDE's own training set ({len(model['x_train'])} points), "
                           f"got {len(x_train)}; score other points with shallow.score.")
    if len(model["x_train"]) < 2:
        raise ShallowError(f"leave-one-out KDE scores need at least 2 training points, got "
                           f"{len(model['x_train'])}.")
    return _finite(detector, -kde_loo_log_density(model["x_train"], model["h"]))


_ADVICE = {"kde": "choose another bandwidth, or let cross-validation choose it",
           "ocsvm": "choose a smaller gamma, or 'scale'",
           "iforest": "check the input for NaN or infinite values"}


def _finite(detector, s):
    """s, or ShallowError where a score is NaN or infinite (it would reach the metrics and the plots)."""
    if not bool(s.isfinite().all()):
        raise ShallowError(f"{int((~s.isfinite()).sum())} of the {len(s)} {detector} scores are not finite; "
                           f"{_ADVICE[detector]}.")
    return s
