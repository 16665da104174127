"""Training plumbing shared by every stage (ae.py, rcae.py, geom.py, svdd.py, ocnn.py): no method here.

  batches(n, batch_size, generator)   the mini-batches of an epoch: index slices of a seeded permutation
  adam_with_milestones(...)           Adam + lr x0.1 after each milestone epoch, as the reference code
  check_finite(loss, stage, epoch)    stop with a clear message when a loss becomes NaN or infinite
  check_diverged(...), weight_norm    ... or a weight does, or the weights blow up (raise Diverged)
  print_epoch(stage, record, epochs)  the one progress line per epoch
  Checkpoint, NoCheckpoint            save a training loop's state at epoch ends and resume from it (or not)
  train_loop(...)                     the whole loop of a stage that trains one module on one loss (AE, geom)
  seed_all(seed), banner(text)        one seed for torch and numpy; the line that opens a stage

Why checkpoints: a CIFAR-10 run at the reference schedule takes over an hour on a small CPU. A loop saves
its whole state (weights, optimiser, lr schedule, the batch order's generator, history and the stage's own
quantities such as RCAE's N or OC-NN's r) at the end of an epoch, atomically, at most every `seconds`;
started again, the loop restores it and continues from the next epoch. Training is deterministic given
that state, so a resumed run ends with the same weights as an uninterrupted one (a test kills a run and
checks it). Where the files go: folders.py.

Read next: ae.py, the first training loop that uses these.
"""
import math
import os
import time

import numpy as np
import torch

import folders


def batches(n, batch_size, generator):
    """Yield int64 index tensors: a torch.randperm(n) from a CPU generator, cut into batch_size chunks.

    The last chunk may be shorter; a last chunk of ONE index joins the chunk before it (201 images at 200: one
    batch of 201), since BatchNorm cannot train on a batch of one image. Every other n gives plain slices.
    """
    perm = torch.randperm(n, generator=generator)  # (n,) on the CPU; index any device's tensors with it
    starts = list(range(0, n, batch_size))
    if batch_size > 1 and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()                               # a lone last index joins the batch before it
    for start, stop in zip(starts, starts[1:] + [n]):
        yield perm[start:stop]


def adam_with_milestones(params, lr, weight_decay, milestones):
    """Adam + MultiStepLR(gamma=0.1), stepped once per epoch, as in the reference code."""
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=0.1)
    return optimizer, scheduler


class Diverged(RuntimeError):
    """Training went wrong: the loss or a weight became NaN or infinite, or the weights blew up; says where."""


def check_finite(loss, stage, epoch):
    """The epoch's loss, or Diverged where it is NaN or infinite."""
    if not math.isfinite(loss):
        raise Diverged(f"{stage}: the loss became {loss} at epoch {epoch}; "
                       f"try a smaller learning rate or check the input data")
    return loss


GROWTH = 1e4  # the weights' norm may grow this many times over its start (at least 1) before we call it diverged


def weight_norm(*modules):
    """||theta||_2 over every parameter of the modules, a float: the yardstick of `check_diverged`."""
    return math.sqrt(float(sum(p.detach().double().pow(2).sum() for m in modules for p in m.parameters())))


def check_diverged(loss, stage, epoch, modules, norm_0):
    """After each epoch, BEFORE the checkpoint is saved: the epoch's loss, or Diverged naming stage and epoch.

    Three checks: the loss is finite (check_finite); every weight and buffer (BatchNorm's running statistics)
    of the trained modules is finite (a last step can break them while the loss it followed was finite); and
    the weights' norm is at most GROWTH * max(norm_0, 1), norm_0 = weight_norm(*modules) before the first
    epoch. Adam moves each weight by about lr per step, so at a working lr the norm stays near its start,
    while a runaway lr multiplies it by orders of magnitude in one epoch (results/README.md, section 8, has
    the figures). The loss is no yardstick: an autoencoder's is bounded (sigmoid outputs) and OC-NN's can be
    negative.
    """
    check_finite(loss, stage, epoch)
    tensors = [(n, t) for m in modules for n, t in [*m.named_parameters(), *m.named_buffers()]
               if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all()):
        name = next(n for n, t in tensors if not bool(torch.isfinite(t).all()))
        raise Diverged(f"{stage}: the weights ({name}) became NaN or infinite at epoch {epoch} while the loss "
                       f"was still {loss:.4g}: training diverged; try a smaller learning rate")
    norm = weight_norm(*modules)
    if norm > GROWTH * max(norm_0, 1.0):
        raise Diverged(f"{stage}: the weights' norm grew from {norm_0:.3g} to {norm:.3g} by epoch {epoch} "
                       f"(loss {loss:.4g}): training diverged; try a smaller learning rate")
    return loss


def print_epoch(stage, record, epochs):
    """One progress line: epoch, loss, the stage's own quantities, lr, seconds."""
    extra = "".join(f"  {k} {v:.4g}" for k, v in record.items()
                    if k not in ("epoch", "loss", "lr", "seconds") and isinstance(v, (int, float)))
    print(f"[{stage}] epoch {record['epoch']:>3}/{epochs}  loss {record['loss']:.6g}{extra}"
          f"  lr {record['lr']:.1e}  {record['seconds']:.2f}s", flush=True)

class Checkpoint:
    """A training loop's state in one file: saved at epoch ends, restored when the loop starts again.

    parts: named objects with state_dict() / load_state_dict() (modules, optimisers, schedulers) or a
    torch.Generator (get_state / set_state). extra: the loop's own values (tensors, numbers). A save is
    written whole (folders.save_torch); `seconds` is the least time between two saves (0: every epoch); the last
    epoch of a stage is always saved. clock: a Clock, told at every epoch end (the run's seconds).
    """

    def __init__(self, path, seconds=60.0, clock=None):
        self.path, self.seconds, self.clock, self.last = path, seconds, clock, time.monotonic()

    def restore(self, **parts):
        """Load the saved state into parts; returns (history, extra), or ([], None) when nothing is saved."""
        saved = folders.load_torch(self.path, "checkpoint", "the stage starts from its first epoch")
        if saved is None:
            return [], None
        for name, part in parts.items():
            state = saved.get("parts", {}).get(name)
            load = part.set_state if isinstance(part, torch.Generator) else part.load_state_dict
            folders.load_state(self.path, lambda: load(state))
        print(f"resuming from {self.path} after epoch {len(saved['history'])}", flush=True)
        return saved["history"], saved["extra"]

    def save(self, history, epochs, extra=None, **parts):
        """Save after the epoch that `history` ends with, if `seconds` have passed or it is the last one."""
        if self.clock is not None:
            self.clock.note()
        if time.monotonic() - self.last < self.seconds and len(history) < epochs:
            return
        state = {name: part.get_state() if isinstance(part, torch.Generator) else part.state_dict()
                 for name, part in parts.items()}
        folders.save_torch({"parts": state, "history": history, "extra": extra}, self.path)
        self.last = time.monotonic()

    def remove(self):
        """The stage's result is saved elsewhere: the checkpoint is no longer needed."""
        if os.path.exists(self.path):
            os.remove(self.path)


class NoCheckpoint:
    """The default: nothing is saved or restored."""

    def restore(self, **parts):
        return [], None

    def save(self, history, epochs, extra=None, **parts):
        pass

    def remove(self):
        pass


def train_loop(stage, model, epochs, one_epoch, *, lr, weight_decay, milestones, seed, verbose, checkpoint,
               name="model"):
    """The loop of a stage that trains one module on one loss (ae.py, geom.py): Adam with milestones, a
    seeded batch order, the resume from `checkpoint` (its part `name`), the divergence check before each save,
    one line per epoch. one_epoch(optimizer, generator) runs an epoch and returns its mean loss. Returns the
    history [{epoch, loss, lr, seconds}, ...]."""
    optimizer, scheduler = adam_with_milestones(model.parameters(), lr, weight_decay, milestones)
    generator = torch.Generator().manual_seed(seed)
    state = {name: model, "optimizer": optimizer, "scheduler": scheduler, "generator": generator}
    checkpoint = checkpoint or NoCheckpoint()
    history, _ = checkpoint.restore(**state)
    norm_0 = weight_norm(model)                                       # the divergence check's yardstick
    for epoch in range(len(history) + 1, epochs + 1):
        start = time.perf_counter()
        loss = one_epoch(optimizer, generator)
        record = {"epoch": epoch, "loss": check_diverged(loss, stage, epoch, [model], norm_0),
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        scheduler.step()
        history.append(record)
        checkpoint.save(history, epochs, **state)
        if verbose:
            print_epoch(stage, record, epochs)
    return history


def seed_all(seed):
    """One seed for torch and numpy: the weights' start, the pollution draw (data.py draws its own)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def banner(text):
    """The line that opens a stage on the console."""
    print(f"\n=== {text} ===", flush=True)
