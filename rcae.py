"""Robust Convolutional Autoencoder (RCAE): data = what the autoencoder reconstructs + a sparse part N.

Chalapathy, Menon, Chawla, "Robust, Deep and Inductive Anomaly Detection", ECML-PKDD 2017,
arXiv:1704.06743. Robust PCA's idea with a deep autoencoder in place of the
low-rank part: a few training images (outliers, pollution) need not be reconstructed, because a sparse
matrix N may take up what the autoencoder cannot.

Objective (the paper's eq. for RCAE):

    min_{theta, N}  ||X - N - AE_theta(X)||_F^2  +  mu/2 ||theta||^2  +  lambda ||N||_1

Alternating optimisation, T outer iterations, starting from N = 0:
    (a) theta-step: E epochs of Adam on rcae_loss, 1/B sum_i ||X_i - N_i - AE(X_i)||^2 over each batch, N fixed
        (ae.train_epoch runs the batches); mu/2 ||theta||^2 is the optimiser's weight decay;
    (b) N-step, in closed form: N <- S_{lambda/2}(X - AE_theta(X)), elementwise,
        with the soft threshold  S_t(b) = sign(b) * max(|b| - t, 0).
        Why lambda/2: for one entry, min_n (b - n)^2 + lambda |n| has the solution S_{lambda/2}(b)
        (set the subgradient 2(n - b) + lambda sign(n) to zero), the proximal operator of the l1 norm.

Limits: lambda -> infinity keeps N = 0 and RCAE is the plain autoencoder; lambda = 0 lets N absorb the
whole residual X - AE(X). The anomaly score on test images is the reconstruction error ||x - AE(x)||^2
(ae.reconstruction_scores): N exists only for training images, so the method stays inductive.

Symbols

    paper        code        shape
    X            x           (n, C, H, W)   training images (preprocessed)
    N            N           (n, C, H, W)   sparse part, one entry per pixel of each training image
    lambda       lam         scalar         l1 weight; the threshold is lam / 2
    T, E         outer_iters, epochs_per_iter

Deviations
  * The seed lab ran one outer iteration, so N never fed back into training; here T >= 1 is a parameter
    (default 5 in run.py) and one Adam optimiser and one lr schedule run through all T * E epochs, so that
    with N = 0 RCAE is exactly the autoencoder trained for T * E epochs (a test checks the weights).
  * AE(X) in the N-step is computed in eval mode (BatchNorm running statistics), as it is at test time.

Read next: svdd.py or ocnn.py, which start from this autoencoder's encoder.
"""
import time

import torch

import ae as ae_lib
import training


def soft_threshold(x, t):
    """S_t(x) = sign(x) * max(|x| - t, 0): the proximal operator of t * ||.||_1 (elementwise)."""
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0)


def rcae_loss(x_hat, x, N):
    """(a) the theta-step's loss of a batch: 1/B sum_i ||X_i - N_i - AE(X_i)||^2 (N fixed; x_hat = AE(X))."""
    return ae_lib.reconstruction_error(x_hat, x - N).mean()           # the AE reconstructs X - N, not X


def n_step(ae, x, lam):
    """(b) N <- S_{lam/2}(X - AE(X)), the closed-form minimiser over N; returns (N, residual X - AE(X))."""
    residual = x - ae_lib.reconstruct(ae, x)                          # (n, C, H, W)  X - AE(X)
    return soft_threshold(residual, lam / 2), residual                # sparse: only large residuals survive


def train_rcae(ae, x, *, epochs_per_iter, weight_decay, milestones, lam=0.1, outer_iters=5, lr=1e-4,
               batch_size=200, seed=0, verbose=True, stage="pretrain rcae", checkpoint=None):
    """Alternate E autoencoder epochs on X - N with the N-step N <- S_{lam/2}(X - AE(X)), T times.

    Returns (ae, N, history); history has one record per epoch ({epoch, loss, lr, seconds} as the AE),
    and the record that closes each outer iteration adds the N-step's figures: `outer` (t), `recon`
    (mean_i ||X_i - AE(X_i)||^2), `objective` (mean_i ||X_i - N_i - AE(X_i)||^2 + lam ||N_i||_1),
    `N_l1` (||N||_1 over the whole training set), `N_l1_per_image` and `N_nonzero` (fraction of
    non-zero entries of N). checkpoint: a training.Checkpoint (saves N too), or None. epochs_per_iter,
    weight_decay and milestones have no default: run.py's depend on the data set and --settings.
    """
    ae.to(x.device)
    N = torch.zeros_like(x)                                           # start with no outliers
    epochs = outer_iters * epochs_per_iter
    optimizer, scheduler = training.adam_with_milestones(ae.parameters(), lr, weight_decay, milestones)
    generator = torch.Generator().manual_seed(seed)
    state = dict(ae=ae, optimizer=optimizer, scheduler=scheduler, generator=generator)
    checkpoint = checkpoint or training.NoCheckpoint()
    history, saved = checkpoint.restore(**state)
    if saved is not None:
        N = saved["N"].to(x.device)
    norm_0 = training.weight_norm(ae)                                 # the divergence check's yardstick
    for epoch in range(len(history) + 1, epochs + 1):
        start = time.perf_counter()
        # (a) theta-step: the autoencoder learns to reconstruct X - N, the part that is not outlier.
        loss = ae_lib.train_epoch(ae, x, lambda x_hat, idx: rcae_loss(x_hat, x[idx], N[idx]), optimizer,
                                  generator, batch_size)
        record = {"epoch": epoch, "loss": training.check_diverged(loss, stage, epoch, [ae], norm_0),
                  "lr": optimizer.param_groups[0]["lr"]}
        scheduler.step()
        if epoch % epochs_per_iter == 0:
            # (b) N-step: the closed-form minimiser of ||X - AE(X) - N||^2 + lam ||N||_1 over N.
            N, residual = n_step(ae, x, lam)
            n_l1 = N.abs().sum().item()
            record.update(
                outer=epoch // epochs_per_iter,
                recon=(residual ** 2).flatten(1).sum(1).mean().item(),
                objective=(((residual - N) ** 2).flatten(1).sum(1).mean().item() + lam * n_l1 / len(x)),
                N_l1=n_l1, N_l1_per_image=n_l1 / len(x),
                N_nonzero=(N != 0).float().mean().item())
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        checkpoint.save(history, epochs, {"N": N}, **state)
        if verbose:
            training.print_epoch(stage, record, epochs)
    return ae, N, history


def n_mass_per_image(N):
    """||N_i||_1 for each training image, (n,): where RCAE put the outliers."""
    return N.abs().flatten(1).sum(dim=1)
