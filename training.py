"""Training plumbing shared by every stage (ae.py, rcae.py, svdd.py, ocnn.py): nothing here is a method.

  batches(n, batch_size, generator)   the mini-batches of an epoch: index slices of a seeded permutation
  adam_with_milestones(...)           Adam + lr x0.1 after each milestone epoch, as the reference code
  check_finite(loss, stage, epoch)    stop with a clear message when a loss becomes NaN or infinite
  print_epoch(stage, record, epochs)  the one progress line per epoch
  Checkpoint                          save a training loop's state at epoch ends and resume from it

Why checkpoints: a CIFAR-10 run at the reference schedule takes over an hour on a small CPU. A loop saves
its whole state (weights, optimiser, lr schedule, the batch order's generator, history and the stage's own
quantities such as RCAE's N or OC-NN's r) at the end of an epoch, atomically, at most every `seconds`;
started again, the loop restores it and continues from the next epoch. Training is deterministic given
that state, so a resumed run ends with the same weights as an uninterrupted one (a test kills a run and
checks it).

Read next: ae.py, the first training loop that uses these.
"""
import math
import os
import time

import torch


def batches(n, batch_size, generator):
    """Yield int64 index tensors: a torch.randperm(n) from a CPU generator, cut into batch_size chunks."""
    perm = torch.randperm(n, generator=generator)  # (n,) on the CPU; index any device's tensors with it
    for start in range(0, n, batch_size):
        yield perm[start:start + batch_size]       # the last chunk may be shorter


def adam_with_milestones(params, lr, weight_decay, milestones):
    """Adam + MultiStepLR(gamma=0.1), stepped once per epoch, as in the reference code."""
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=0.1)
    return optimizer, scheduler


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite: training stops and says where."""


def check_finite(loss, stage, epoch):
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"{stage}: the loss became {loss} at epoch {epoch}; "
                            f"try a smaller learning rate or check the input data")
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
    written to a temporary name and renamed, so the file is always whole; `seconds` is the least time
    between two saves (0: every epoch); the last epoch of a stage is always saved.
    """

    def __init__(self, path, seconds=60.0):
        self.path, self.seconds, self.last = path, seconds, time.monotonic()

    def restore(self, **parts):
        """Load the saved state into parts; returns (history, extra), or ([], None) when nothing is saved."""
        if not os.path.exists(self.path):
            return [], None
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        for name, part in parts.items():
            if isinstance(part, torch.Generator):
                part.set_state(saved["parts"][name])
            else:
                part.load_state_dict(saved["parts"][name])
        print(f"resuming from {self.path} after epoch {len(saved['history'])}", flush=True)
        return saved["history"], saved["extra"]

    def save(self, history, epochs, extra=None, **parts):
        """Save after the epoch that `history` ends with, if `seconds` have passed or it is the last one."""
        if time.monotonic() - self.last < self.seconds and len(history) < epochs:
            return
        state = {name: part.get_state() if isinstance(part, torch.Generator) else part.state_dict()
                 for name, part in parts.items()}
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        torch.save({"parts": state, "history": history, "extra": extra}, self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)                     # whole files only
        self.last = time.monotonic()

    def remove(self):
        """The stage's result is saved elsewhere: the checkpoint is no longer needed."""
        if os.path.exists(self.path):
            os.remove(self.path)


def spent_seconds(*paths):
    """The epoch seconds an interrupted run already spent, summed from the histories its checkpoints hold
    (0 where none is saved): added to a resumed run's own wall time, its `seconds` count the whole run."""
    total = 0.0
    for path in paths:
        if os.path.exists(path):
            history = torch.load(path, map_location="cpu", weights_only=True)["history"]
            total += sum(record.get("seconds", 0.0) for record in history)
    return total


class NoCheckpoint:
    """The default: nothing is saved or restored."""

    def restore(self, **parts):
        return [], None

    def save(self, history, epochs, extra=None, **parts):
        pass

    def remove(self):
        pass
