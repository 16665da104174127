"""OC-NN: a one-class SVM's hyperplane objective, written for a neural network head on the encoder.

Chalapathy, Menon, Chawla, "Anomaly Detection using One-Class Neural Networks", arXiv:1802.06360
The one-class SVM separates the data from the origin with a hyperplane at
offset r; OC-NN puts that objective on top of a pretrained encoder (ae.py), with one hidden layer V.

Equations

    network:    y_hat(x) = < w, g(V z) >,   z = phi(x)        (no bias terms anywhere)
    objective:  min_{w,V,r}  1/2 ||w||_2^2 + 1/2 ||V||_F^2 + 1/nu * 1/N sum_n max(0, r - y_hat_n) - r
    r-step:     r <- the nu-quantile of {y_hat_n} over the training set (the paper's Theorem: then a
                fraction nu of the training points lie below r); r starts at the nu-quantile of the
                initial outputs and is updated after every epoch of gradient steps on w, V (and phi).
    decision:   y_hat(x) - r >= 0 means normal
    score:      s(x) = r - y_hat(x)      higher = more anomalous; AUROC always from this continuous
                score, never from its sign.

Symbols

    paper    code              shape
    z        z = encoder(x)    (B, D)       D = rep_dim
    V        head.V.weight     (h, D)       h = hidden (32)
    g        head.g            elementwise: linear (default, best in the paper), sigmoid, relu, tanh
    w        head.w.weight     (1, h)
    r        r                 scalar       the hyperplane's offset
    nu       nu                scalar       in (0, 1]: the fraction of training points below r

Two regimes
  * z-only: the encoder is frozen; z = phi(x) is computed once in eval mode, only w and V learn.
  * joint: the encoder trains too, at its own (small) learning rate and weight decay; the paper does not
    freeze it. The regulariser 1/2 ||w||^2 + 1/2 ||V||^2 covers the head only.

A property worth seeing (results/README.md, section 2.3, measures it): with the linear g and raw codes the
objective is unbounded below. Scaling w and V by t scales y_hat, r and the hinge term by t^2, and the
regulariser by t^2 as well, so the loss is t^2 (1/2||w||^2 + 1/2||V||^2 - [r - 1/nu mean max(0, r - y_hat)]);
the bracket is the mean of the lowest nu-fraction of y_hat. Once some direction u = V^T w keeps that low tail
above ||u||, which happens whenever the codes z lie far from the origin, gradient descent grows w and V for
ever: r climbs epoch after epoch while the direction of u, the only thing the ranking r - y_hat depends on,
settles. In joint mode the encoder can also grow the codes themselves, which lowers the loss without learning
anything about the normal class. A bounded g (sigmoid, tanh) caps y_hat by ||w||_1.

Two options against it. Both are on by default (train_ocnn's defaults are run.py's), with nu 0.1 and
encoder lr 1e-4, the settings measured best (results/README.md, section 2.1); both off
(normalize=False, clip=0.0; run.py --no-ocnn-normalize) is the paper's plain objective.

  normalize (codes on the unit sphere), as the seed lab's joint mode:
      z_bar = z / max(||z||_2, eps),  eps = 1e-8;    y_hat = <w, g(V z_bar)>
    in training, in the r-step and in scoring alike. Why it bounds the objective (linear g, u = V^T w):
      y_hat = <u, z_bar> <= ||u|| <= ||w|| ||V||_F <= 1/2 ||w||^2 + 1/2 ||V||_F^2,
    and r, a quantile of the head's own outputs, is at most their maximum, so
      loss = 1/2 ||w||^2 + 1/2 ||V||_F^2 - r + hinge >= hinge >= 0:
    neither a larger head nor larger codes can take the loss below 0 (EXERCISES.md lets you check it).
    Where the bound is reached: at u = 0 (y_hat = r = 0). Write u = t a with ||a|| = 1 and the head at its
    cheapest (reg = ||u|| = t); then loss = t (1 - [r' - 1/nu mean max(0, r' - cos(z, a))]), r' the
    nu-quantile of the cosines, and the bracket is below 1 unless every code points exactly along a. So
    gradient descent shrinks the head (results/README.md, section 2.1, measures it) and what is learnt is
    the direction a: on the unit sphere {z_bar : <u, z_bar> >= r} is a spherical cap around a, and the
    score r - t cos(z, a) ranks images by their angle to a. In joint mode the encoder lowers the bracket by
    turning the normal codes towards a: a Deep SVDD on the sphere with a learnt centre direction. (Adam's
    step does not scale with the gradient, so training goes on while t shrinks.) What it costs: the length
    of z is thrown away (an anomaly whose code points the normal way but is longer or shorter looks
    normal), a code near 0 gets an arbitrary direction, and the hyperplane's offset r carries no scale.
  clip (gradient-norm clipping), as the seed lab (0.5 on MNIST, 1.0 on CIFAR-10):
      g <- g * min(1, clip / ||g||_2)   over every trained parameter (head, and encoder in joint mode),
    before each Adam step. With nu = 0.01 the hinge weighs the few points below r by 1/nu = 100, so one
    batch can carry a gradient a hundred times the usual; clipping caps that step. Adam divides by a running
    gradient scale, so it changes only steps whose gradient is large next to the recent ones.
  Why nu matters for the gradient: the hinge term's gradient comes only from the training images below r,
  the lowest nu-fraction of the outputs. At nu 0.01 those are the ~1% oddest images of the class, and the
  learnt direction follows them; nu 0.1 averages over more (results/README.md, section 2.1, measures it).

Deviations and pitfalls avoided
  * The authors' public code scores a hypersphere distance, not this objective, and an earlier version
    of the paper computed AUROC from sign-binarised scores; here the objective above and the continuous
    score r - y_hat.
  * r is the exact nu-quantile in the sense of `update_r`'s docstring; one lr schedule (x0.1 at
    `lr_drop_epoch`) applies to the head and, in joint mode, to the encoder (`encoder_lr_drop=False`: the
    encoder's lr stays, as in the seed lab's code).

Read next: run.py, which compares this with svdd.py on the same pretrained encoder.
"""
import math
import time

import torch
import torch.nn as nn

import ae as ae_lib
import training

ACTIVATIONS = {"linear": nn.Identity, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


class OCNN(nn.Module):
    """The head: y_hat = <w, g(V z)>, no bias terms; with normalize, z / ||z|| in place of z."""

    def __init__(self, rep_dim, hidden=32, activation="linear", normalize=True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown OC-NN activation {activation!r}: one of {sorted(ACTIVATIONS)}")
        self.V = nn.Linear(rep_dim, hidden, bias=False)
        self.g = ACTIVATIONS[activation]()
        self.w = nn.Linear(hidden, 1, bias=False)
        self.normalize = normalize

    def forward(self, z):                                             # (B, D)
        if self.normalize:
            z = unit_codes(z)
        return self.w(self.g(self.V(z))).squeeze(1)                   # (B,)  y_hat


def unit_codes(z, eps=1e-8):
    """z_bar = z / max(||z||, eps) for each row, (B, D) -> (B, D): the codes on the unit sphere."""
    return z / z.norm(dim=1, keepdim=True).clamp(min=eps)


def ocnn_loss(y_hat, r, head, nu):
    """1/2 ||w||^2 + 1/2 ||V||_F^2 + 1/nu * mean(max(0, r - y_hat)) - r   (squared norms)."""
    reg_w = 0.5 * head.w.weight.pow(2).sum()                          # 1/2 ||w||_2^2
    reg_V = 0.5 * head.V.weight.pow(2).sum()                          # 1/2 ||V||_F^2
    hinge = torch.clamp(r - y_hat, min=0).mean() / nu                 # 1/nu * 1/N sum max(0, r - y_hat)
    return reg_w + reg_V + hinge - r                                  # - r: push the hyperplane out


def update_r(y_hat, nu):
    """r = the nu-quantile of y_hat (a tensor), chosen so that nu is attained exactly on these outputs:
    frac(y_hat < r) <= nu <= frac(y_hat <= r). Returns a Python float."""
    # With k = ceil(nu N) and y_(1) <= ... <= y_(N), r = y_(k): at most k - 1 < nu N outputs lie strictly
    # below r, and at least k >= nu N lie on or below it.
    n = y_hat.numel()
    k = max(1, math.ceil(nu * n - 1e-9))                              # guard 0.1 * 6000 = 600.0000001
    return torch.kthvalue(y_hat.flatten().cpu(), k).values.item()


@torch.no_grad()
def head_outputs(encoder, head, x=None, z=None, batch_size=500):
    """y_hat for a whole data set in eval mode, from images x (through the encoder) or from codes z."""
    head.eval()
    z = ae_lib.encode(encoder, x, batch_size) if z is None else z     # (N, D)
    return head(z)                                                    # (N,)


def train_ocnn(encoder, x, *, joint=False, nu=0.1, epochs=250, lr=1e-4, lr_drop_epoch=100,
               encoder_lr=1e-4, encoder_weight_decay=1e-5, hidden=32, activation="linear",
               encoder_lr_drop=True, normalize=True, clip=0.5, batch_size=200, seed=0, verbose=True,
               checkpoint=None):
    """Train the OC-NN head (and, if `joint`, the encoder, in place) on the objective above.

    Returns (head, r, history); history per epoch: loss, r, frac_below (fraction of training outputs
    strictly below r after the r-step; at most nu by construction), lr, seconds. In z-only mode the
    encoder is left untouched (eval mode, no gradient, no BatchNorm statistics update).
    normalize: the head sees z / ||z|| (module docstring); clip: the largest gradient norm of a step (0: none).
    encoder_lr_drop: in joint mode the encoder's lr drops x0.1 at `lr_drop_epoch` with the head's (else it stays).
    checkpoint: a training.Checkpoint to save the state at epoch ends and resume from, or None.
    The defaults are run.py's (unit codes, clip 0.5, nu 0.1, encoder lr 1e-4); the paper's plain objective is
    normalize=False, clip=0.0 (with nu 0.01 and encoder lr 1e-5 as the seed lab ran it).
    """
    stage = "ocnn joint" if joint else "ocnn z-only"
    encoder.to(x.device)
    head = OCNN(encoder.rep_dim, hidden, activation, normalize).to(x.device)
    z_all = None if joint else ae_lib.encode(encoder, x)               # z-only: z computed once, (n, D)
    groups = [{"params": head.parameters(), "lr": lr, "weight_decay": 0.0}]  # ||w||, ||V|| are in the loss
    if joint:
        groups.append({"params": encoder.parameters(), "lr": encoder_lr,
                       "weight_decay": encoder_weight_decay})
    optimizer = torch.optim.Adam(groups)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[lr_drop_epoch], gamma=0.1)
    r = update_r(head_outputs(encoder, head, x, z_all), nu)            # r from the initial outputs
    generator = torch.Generator().manual_seed(seed)
    state = dict(head=head, encoder=encoder, optimizer=optimizer, scheduler=scheduler, generator=generator)
    checkpoint = checkpoint or training.NoCheckpoint()
    history, saved = checkpoint.restore(**state)
    if saved is not None:
        r = saved["r"]
    norm_0 = training.weight_norm(head, encoder)                      # the divergence check's yardstick
    for epoch in range(len(history) + 1, epochs + 1):
        start, total = time.perf_counter(), 0.0
        head.train()
        if joint:
            encoder.train()
        for idx in training.batches(len(x), batch_size, generator):
            idx = idx.to(x.device)
            z = encoder(x[idx]) if joint else z_all[idx]               # (B, D)
            loss = ocnn_loss(head(z), r, head, nu)                     # (a) gradient step, r fixed
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(trained, clip)
            optimizer.step()
            total += loss.item() * len(idx)
        y_hat = head_outputs(encoder, head, x, z_all)                  # (n,) eval mode
        r = update_r(y_hat, nu)                                        # (b) r-step: nu-quantile
        loss = training.check_diverged(total / len(x), stage, epoch, [head, encoder], norm_0)  # before saving
        record = {"epoch": epoch, "loss": loss, "r": r,
                  "frac_below": (y_hat < r).float().mean().item(), "lr": optimizer.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - start}
        scheduler.step()
        if joint and not encoder_lr_drop:
            optimizer.param_groups[1]["lr"] = encoder_lr               # only the head's lr drops
        history.append(record)
        checkpoint.save(history, epochs, {"r": r}, **state)
        if verbose:
            training.print_epoch(stage, record, epochs)
    return head, r, history


def ocnn_scores(encoder, head, r, x, batch_size=500):
    """s(x) = r - y_hat(x), (N,); higher = more anomalous."""
    return r - head_outputs(encoder, head, x, batch_size=batch_size)
