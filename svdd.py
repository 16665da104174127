"""Deep SVDD: map the normal data into the smallest hypersphere around a fixed centre c.

Ruff, Vandermeulen, Goernitz, Deecke, Siddiqui, Binder, Mueller, Kloft, "Deep One-Class Classification",
ICML 2018 (PMLR vol. 80). The network phi is the pretrained autoencoder's encoder (ae.py).

Equations (numbered as in the paper)

  (3) soft-boundary:  min_{R,W}  R^2 + 1/(nu n) sum_i max(0, ||phi(x_i; W) - c||^2 - R^2)
                                 + lambda/2 sum_l ||W^l||_F^2
  (4) one-class:      min_W      1/n sum_i ||phi(x_i; W) - c||^2 + lambda/2 sum_l ||W^l||_F^2
  (5) anomaly score:  s(x) = ||phi(x; W*) - c||^2   (soft-boundary: minus R^2)   higher = more anomalous

  The weight-decay term lambda/2 sum ||W||^2 is the optimiser's `weight_decay` (PyTorch adds
  weight_decay * W to the gradient, the gradient of weight_decay/2 ||W||^2), as in the reference code.

Symbols

    paper      code      shape
    phi(x;W)   phi(x)    (B, D)   D = rep_dim (32 MNIST, 128 CIFAR-10)
    c          c         (D,)     fixed centre, the mean initial output (init_center)
    R          R         scalar   radius (soft-boundary only)
    nu         nu        scalar   in (0, 1]: bounds the fraction of training points outside the sphere

Why it does not collapse (Sec. 3.3): c is fixed and not trained (Prop. 1: training c gives W = 0, c = phi
of anything); phi has no bias terms (Prop. 2) and no bounded activations (Prop. 3), see ae.py.

nu-property (Prop. 4): nu is an upper bound on the fraction of training points strictly outside the
sphere and a lower bound on the fraction on or outside it. `radius_from_quantile` picks R so that this
holds exactly on the training set at each update.

Deviations from the reference code
  * R is set once per epoch (after `warmup` epochs of training with R = 0), to the (1 - nu)-quantile of
    the distances of the whole training set in eval mode. The PyTorch port takes the quantile over each
    mini-batch (noisy: with nu = 0.01 and 200 images it rests on the two largest distances of a batch);
    the paper solves a line search every 5 epochs. Per epoch over the whole set makes Prop. 4 hold
    exactly after each update, at the cost of one extra forward pass over the training set per epoch.
  * Coordinates of c that are exactly zero are set to +eps (the reference leaves an exact zero at zero).

Read next: ocnn.py, the other objective on the same encoder; run.py wires both.
"""
import math
import time

import torch

import ae as ae_lib
import training


@torch.no_grad()
def init_center(phi, x, eps=0.1, batch_size=500):
    """c = mean_i phi(x_i) over the training set (eval mode); every |c_j| < eps is pushed to +-eps, keeping its
    sign (an exact 0 to +eps). Returns c, (D,)."""
    # A coordinate near zero is matched trivially by zero weights into that unit, so it is pushed away from
    # zero. An exact zero has no sign: +eps (any fixed choice works; a fixed one keeps runs deterministic).
    c = ae_lib.encode(phi, x, batch_size).mean(dim=0)                  # (D,)
    small = c.abs() < eps
    c[small & (c < 0)] = -eps
    c[small & (c >= 0)] = eps                                           # includes c_j == 0 exactly
    return c


def sq_dist(z, c):
    """||z_i - c||^2 for each row: (B, D), (D,) -> (B,)."""
    return ((z - c) ** 2).sum(dim=1)


def one_class_loss(dist2):
    """Eq. (4) without weight decay: 1/n sum_i ||phi(x_i) - c||^2, given dist2 = ||phi(x_i) - c||^2."""
    return dist2.mean()                                                 # mean squared distance to c


def soft_boundary_loss(dist2, R, nu):
    """Eq. (3) without weight decay: R^2 + 1/(nu n) sum_i max(0, ||phi(x_i) - c||^2 - R^2)."""
    volume = R ** 2                                                     # R^2: the sphere's size
    penalty = torch.clamp(dist2 - R ** 2, min=0).mean() / nu            # 1/(nu n) sum of slack
    return volume + penalty


def radius_from_quantile(dist, nu):
    """R = the (1 - nu)-quantile of the distances (a tensor), chosen so that Prop. 4 holds exactly on them:
    frac(d > R) <= nu <= frac(d >= R). Returns a Python float."""
    # With k = ceil(nu n) and d_(1) <= ... <= d_(n), R = d_(n-k+1): then at most k - 1 < nu n points have
    # d > R (upper bound) and at least k >= nu n points have d >= R (lower bound).
    n = dist.numel()
    k = max(1, math.ceil(nu * n - 1e-9))                                # guard 0.1 * 6000 = 600.0000001
    return torch.kthvalue(dist.flatten().cpu(), n - k + 1).values.item()


def train_svdd(phi, x, *, weight_decay, objective="svdd", nu=0.1, epochs=150, lr=1e-4, milestones=(50,),
               batch_size=200, warmup=10, seed=0, verbose=True, checkpoint=None):
    """Train phi (already holding the pretrained encoder's weights) on eq. (4) or eq. (3).

    objective: 'svdd', one-class Deep SVDD (eq. 4), or 'soft-svdd', soft-boundary Deep SVDD (eq. 3). Returns (c, R, history); R = 0 for
    one-class. History per epoch: loss, lr, seconds; soft-boundary adds R and frac_out (fraction of
    training points with distance > R after the epoch's R update; Prop. 4 bounds it by nu).
    checkpoint: a training.Checkpoint to save the state at epoch ends and resume from, or None. The defaults
    are run.py's; weight_decay has none (run.py's depends on the data set and --settings).
    """
    if objective not in ("svdd", "soft-svdd"):
        raise ValueError(f"unknown Deep SVDD objective {objective!r}: 'svdd' or 'soft-svdd'")
    stage = objective
    phi.to(x.device)
    c = init_center(phi, x)                                             # fixed from here on (Prop. 1)
    R = 0.0
    optimizer, scheduler = training.adam_with_milestones(phi.parameters(), lr, weight_decay, milestones)
    generator = torch.Generator().manual_seed(seed)
    state = dict(phi=phi, optimizer=optimizer, scheduler=scheduler, generator=generator)
    checkpoint = checkpoint or training.NoCheckpoint()
    history, saved = checkpoint.restore(**state)
    if saved is not None:
        c, R = saved["c"].to(x.device), saved["R"]
    norm_0 = training.weight_norm(phi)                                  # the divergence check's yardstick
    for epoch in range(len(history) + 1, epochs + 1):
        start, total = time.perf_counter(), 0.0
        phi.train()
        for idx in training.batches(len(x), batch_size, generator):
            idx = idx.to(x.device)
            dist2 = sq_dist(phi(x[idx]), c)                             # (B,) ||phi(x_i) - c||^2
            if objective == "svdd":
                loss = one_class_loss(dist2)
            else:
                loss = soft_boundary_loss(dist2, R, nu)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()                                             # weight decay: in the optimiser
            optimizer.step()
            total += loss.item() * len(idx)
        record = {"epoch": epoch, "loss": training.check_diverged(total / len(x), stage, epoch, [phi], norm_0),
                  "lr": optimizer.param_groups[0]["lr"]}
        scheduler.step()
        if objective == "soft-svdd":
            dist = sq_dist(ae_lib.encode(phi, x), c).sqrt()             # (n,) distances, eval mode
            if epoch >= warmup:                                         # R stays 0 during warm-up
                R = radius_from_quantile(dist, nu)
            record.update(R=R, frac_out=(dist > R).float().mean().item())
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        checkpoint.save(history, epochs, {"c": c, "R": R}, **state)
        if verbose:
            training.print_epoch(stage, record, epochs)
    return c, R, history


def svdd_scores(phi, c, x, R=0.0, batch_size=500):
    """Eq. (5): s(x) = ||phi(x) - c||^2 - R^2 (R = 0 for one-class), (N,); higher = more anomalous."""
    return sq_dist(ae_lib.encode(phi, x, batch_size), c) - R ** 2
