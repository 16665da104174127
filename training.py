"""Training and saving plumbing shared by every stage (ae.py, rcae.py, svdd.py, ocnn.py, run.py): no method here.

  batches(n, batch_size, generator)   the mini-batches of an epoch: index slices of a seeded permutation
  adam_with_milestones(...)           Adam + lr x0.1 after each milestone epoch, as the reference code
  check_finite(loss, stage, epoch)    stop with a clear message when a loss becomes NaN or infinite
  print_epoch(stage, record, epochs)  the one progress line per epoch
  Checkpoint                          save a training loop's state at epoch ends and resume from it
  save_torch, write_json              every file written whole or not at all (a temporary name, then rename)
  load_torch, read_json               a saved file read back; a corrupt one is moved aside, said in one line
  Lock                                one process at a time in a run folder or on a cache entry
  Clock                               the wall seconds a run costs, over every process that worked on it

Why checkpoints: a CIFAR-10 run at the reference schedule takes over an hour on a small CPU. A loop saves
its whole state (weights, optimiser, lr schedule, the batch order's generator, history and the stage's own
quantities such as RCAE's N or OC-NN's r) at the end of an epoch, atomically, at most every `seconds`;
started again, the loop restores it and continues from the next epoch. Training is deterministic given
that state, so a resumed run ends with the same weights as an uninterrupted one (a test kills a run and
checks it).

Read next: ae.py, the first training loop that uses these.
"""
import contextlib
import json
import math
import os
import time
import warnings

import torch

try:
    import fcntl                                                      # POSIX advisory locks (Lock)
except ImportError:                                                   # Windows: nothing is locked
    fcntl = None


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
    written whole (save_torch); `seconds` is the least time between two saves (0: every epoch); the last
    epoch of a stage is always saved. clock: a Clock, told at every epoch end (the run's seconds).
    """

    def __init__(self, path, seconds=60.0, clock=None):
        self.path, self.seconds, self.clock, self.last = path, seconds, clock, time.monotonic()

    def restore(self, **parts):
        """Load the saved state into parts; returns (history, extra), or ([], None) when nothing is saved."""
        saved = load_torch(self.path, "checkpoint", "the stage starts from its first epoch")
        if saved is None:
            return [], None
        for name, part in parts.items():
            if isinstance(part, torch.Generator):
                part.set_state(saved["parts"][name])
            else:
                part.load_state_dict(saved["parts"][name])
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
        save_torch({"parts": state, "history": history, "extra": extra}, self.path)
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


# ---------------------------------------------------------------------------------------------------
# Saved files: whole or absent, checked when read back, one process at a time
# ---------------------------------------------------------------------------------------------------

class SaveError(Exception):
    """A file could not be written (a full disk, a read-only folder): the message names it."""


def write_whole(path, write):
    """write(tmp), then rename tmp over path: a reader sees the old file or the new one, never half of one.
    A failed write (a full disk) removes the temporary file and raises SaveError naming `path`."""
    tmp = f"{path}.{os.getpid()}.tmp"                                 # one per process: no two writers share it
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:                              # torch.save reports ENOSPC as RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise SaveError(f"could not write {path} ({getattr(e, 'strerror', None) or e}); free some disk space "
                        f"or make the folder writable, then run the same command again: it resumes from the "
                        f"last saved state") from None


def save_torch(obj, path):
    """torch.save(obj, path), written whole or not at all."""
    write_whole(path, lambda tmp: torch.save(obj, tmp))


def write_json(path, obj):
    """JSON to path, written whole or not at all."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    write_whole(path, write)


def _set_aside(path, what, then, error):
    """Rename a corrupt file to <path>.corrupt and say so in one line; the caller carries on without it."""
    os.replace(path, path + ".corrupt")
    print(f"warning: the {what} {path} is unreadable ({error}); moved aside to {path}.corrupt, {then}",
          flush=True)


def load_torch(path, what, then):
    """torch.load(path, weights_only=True), or None where the file is absent or corrupt (moved aside, said).

    weights_only: tensors, numbers, strings and containers only, so a tampered file cannot run code; a file
    that needs more is treated as corrupt, never loaded unsafely. then: what happens instead (the message).
    """
    if not os.path.exists(path):
        return None
    try:
        with warnings.catch_warnings():                               # torch's own notes on a foreign pickle
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                                            # cut off, garbled, or not a torch file
        _set_aside(path, what, then, type(e).__name__)
        return None


def read_json(path, what, then):
    """json.load(path), or None where the file is absent or corrupt (moved aside, said in one line)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:                                # ValueError: cut-off or garbled JSON
        _set_aside(path, what, then, type(e).__name__)
        return None


class Busy(Exception):
    """Another process holds the lock."""


class Lock:
    """An advisory lock on the file `path` (fcntl.flock), held while a process trains in a run folder or
    pretrains a cache entry. The operating system drops it when the process ends, kill -9 included, so no
    stale lock is left behind. wait=False: raise Busy at once when another process holds it; wait=True:
    say so in one line and wait for it. Where fcntl is missing (Windows) nothing is locked.
    """

    def __init__(self, path, wait=False):
        self.path, self.wait, self.file = path, wait, None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.file = open(self.path, "a")                              # the lock file itself stays
        if fcntl is None:
            return self
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self.wait:
                self.file.close()
                raise Busy(self.path) from None
            print(f"waiting for the other process that holds {self.path}", flush=True)
            fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.file.close()                                             # closing the file releases the lock


class Clock:
    """The wall seconds a run has cost, summed over every process that worked on it.

    <path> holds the total up to the last epoch end of the processes before this one (note() writes it;
    every Checkpoint given this clock calls it at each epoch end); total() adds this process's time.
    """

    def __init__(self, path):
        self.path, self.start = path, time.perf_counter()
        saved = read_json(path, "run time record", "counting from 0 s")
        self.before = float(saved.get("seconds", 0.0)) if isinstance(saved, dict) else 0.0

    def total(self):
        return self.before + time.perf_counter() - self.start

    def note(self):
        write_json(self.path, {"seconds": self.total()})
