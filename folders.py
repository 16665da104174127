"""Where results live: run folders, the stage-1 cache, resuming, locks, and files written whole.

    <out>/<time>-<dataset>-<class>-<method>/   config.json, history.json, scores.csv, model.pt, plots/ and,
                                               last, metrics.json: a folder without it is unfinished
    <out>/cache/<dataset>-<pretrain>-<key>-class<k>.pt   trained representations, shared by objectives

Everything saved is keyed by what changes its content: the settings the run uses (settings.used_settings)
and its data (the root and data.fingerprint of its files). Every file is written whole or not at all (a
temporary name, then a rename); a corrupt one read back is moved aside and said in one line, never loaded
unsafely. Interrupted (Ctrl-C, a kill, a full disk), the same command finds the newest unfinished folder of
the same settings and data and resumes it; a process trains in a run folder alone (Lock).

Read next: training.py (the checkpoints of the training loops) or run.py (who calls these).
"""
import contextlib
import csv
import datetime
import errno
import glob
import hashlib
import json
import os
import time
import warnings

import torch

import data

try:
    import fcntl                                                      # POSIX advisory locks (Lock)
except ImportError:                                                   # Windows: nothing is locked
    fcntl = None


# ---------------------------------------------------------------------------------------------------
# Files: whole or absent, checked when read back
# ---------------------------------------------------------------------------------------------------

class SaveError(Exception):
    """A file could not be written: the message names it and why. user: a path the user chose is unwritable
    (exit status 2); a full disk is not (1)."""

    def __init__(self, message, user=False):
        super().__init__(message)
        self.user = user


def write_whole(path, write):
    """write(tmp), then rename tmp over path: a reader sees the old file or the new one, never half of one.
    A failed write removes the temporary file and raises SaveError naming `path`."""
    tmp = f"{path}.{os.getpid()}.tmp"                                 # one per process: no two writers share it
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:                              # torch.save reports ENOSPC as RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e)
        what = "the disk is full: free some space" if full else \
            f"{getattr(e, 'strerror', None) or e}: choose a path where this user can write"
        raise SaveError(f"could not write {path} ({what})", user=not full) from None


def save_torch(obj, path):
    """torch.save(obj, path), written whole or not at all, every tensor moved to the CPU first."""
    write_whole(path, lambda tmp: torch.save(to_cpu(obj), tmp))


def to_cpu(v):
    """Tensors, alone or in dicts, lists and tuples (state dicts, histories), on the CPU; anything else as it is."""
    if isinstance(v, dict):
        return {k: to_cpu(t) for k, t in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(to_cpu(t) for t in v)
    return v.cpu() if torch.is_tensor(v) else v


def write_json(path, obj):
    """JSON to path, written whole or not at all."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    write_whole(path, write)


def _unreadable(path, what, then, error, set_aside):
    """Say in one line that a file is unreadable; set_aside: rename it to <path>.corrupt, so it is rebuilt."""
    if set_aside:
        os.replace(path, path + ".corrupt")
    aside = f"moved aside to {path}.corrupt, " if set_aside else ""
    print(f"warning: the {what} {path} is unreadable ({error}); {aside}{then}", flush=True)


def load_torch(path, what, then, set_aside=True):
    """torch.load(path, weights_only=True), or None where the file is absent or corrupt (said in one line).

    weights_only: tensors, numbers, strings and containers only, so a tampered file cannot run code; a file
    that needs more is treated as corrupt, never loaded unsafely. then: what happens instead (the message).
    set_aside=False for a reader that must not change what it reads (score.py).
    """
    if not os.path.exists(path):
        return None
    try:
        with warnings.catch_warnings():                               # torch's own notes on a foreign pickle
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                                            # cut off, garbled, or not a torch file
        _unreadable(path, what, then, type(e).__name__, set_aside)
        return None


def read_json(path, what, then, set_aside=True):
    """json.load(path), or None where the file is absent or corrupt (said in one line, as load_torch)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:                                # ValueError: cut-off or garbled JSON
        _unreadable(path, what, then, type(e).__name__, set_aside)
        return None


def write_scores(path, labels, scores, threshold):
    """scores.csv: test index, label (1 = anomaly), score (higher = more anomalous), flagged (score above the
    threshold), written whole."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["test_index", "label", "score", "flagged"])
            w.writerows((i, int(y), f"{s:.9g}", int(s > threshold)) for i, (y, s) in enumerate(zip(labels, scores)))
    write_whole(path, write)


# ---------------------------------------------------------------------------------------------------
# One process at a time, and the seconds a run costs
# ---------------------------------------------------------------------------------------------------

class Busy(Exception):
    """Another process holds the lock."""


class Stale(Exception):
    """A saved file reads, but holds another network's state (another version of the code wrote it)."""


def load_state(path, load):
    """load(), a load_state_dict of what the file at path holds; a state of another shape moves the file aside
    and raises Stale, since the part may be half loaded: the same command then starts afresh."""
    try:
        load()
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        os.replace(path, path + ".corrupt")
        raise Stale(f"{path} holds another network's state ({type(e).__name__}); moved aside to {path}.corrupt: "
                    f"run the same command again to train afresh") from None


class Lock:
    """An advisory lock on the file `path` (fcntl.flock), held while a process trains in a run folder or
    trains a cache entry. The operating system drops it when the process ends, kill -9 included, so no
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
    every training.Checkpoint given this clock calls it at each epoch end); total() adds this process's time.
    """

    def __init__(self, path):
        self.path, self.start = path, time.perf_counter()
        saved = read_json(path, "run time record", "counting from 0 s")
        self.before = float(saved.get("seconds", 0.0)) if isinstance(saved, dict) else 0.0

    def total(self):
        return self.before + time.perf_counter() - self.start

    def note(self):
        write_json(self.path, {"seconds": self.total()})

    def remove(self):
        """The run is finished: its seconds are in metrics.json."""
        if os.path.exists(self.path):
            os.remove(self.path)


# ---------------------------------------------------------------------------------------------------
# Run folders, the cache, resuming
# ---------------------------------------------------------------------------------------------------

def key_of(*parts):
    """A short hash of JSON-able parts: equal settings and data -> equal key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def data_identity(dataset, root, download=True):
    """What data a run reads: the root and the fingerprint of its files. Downloads the data set when missing
    (download=False: data.MissingData instead)."""
    try:
        fingerprint = data.fingerprint(dataset, root)
    except data.MissingData:
        if not download:
            raise
        print(f"{dataset} not found under {os.path.abspath(root)}: downloading it there")
        data.download(dataset, root)
        fingerprint = data.fingerprint(dataset, root)
    return {"data_path": os.path.abspath(root), "data_fingerprint": fingerprint}


def finished_metrics(run_dir):
    """The metrics of the finished run in run_dir (its metrics.json), else None."""
    return read_json(os.path.join(run_dir, "metrics.json"), "metrics of a finished run", "it runs again")


def unfinished_run(out, name, want, defaults=None):
    """The newest run folder <out>/*-<name> without metrics.json whose config.json holds `want`, or None; a key
    of `defaults` that a config.json lacks (saved before it existed) reads as its default."""
    defaults = defaults or {}
    for run_dir in sorted(glob.glob(os.path.join(glob.escape(out), f"*-{glob.escape(name)}")), reverse=True):
        if os.path.exists(os.path.join(run_dir, "metrics.json")):
            continue
        saved = read_json(os.path.join(run_dir, "config.json"), "config of an unfinished run",
                          "that folder is not resumed")
        if isinstance(saved, dict) and {k: saved.get(k, defaults.get(k)) for k in want} == want:
            return run_dir
    return None


def new_run_folder(out, name):
    """<out>/<time>-<name>, made here (<time>.2, .3, ... when one began in the same second)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100):
        with contextlib.suppress(FileExistsError):
            run_dir = os.path.join(out, f"{stamp}{'' if n == 1 else f'.{n}'}-{name}")
            os.makedirs(run_dir)
            return run_dir
    raise SaveError(f"could not make a new run folder in {out}: 99 began in the second {stamp}", user=True)


def cache_path(out, dataset, pretrain, class_tag, stage1_settings, data_id):
    """<out>/cache/<dataset>-<pretrain>-<key>-class<k>.pt: the key covers the data and the stage-1 settings."""
    key = key_of(stage1_settings, data_id)
    return os.path.join(out, "cache", f"{dataset}-{pretrain}-{key}-class{class_tag}.pt")


def cached(path, model, train):
    """The stage-1 cache: load model's state from path, or train(partial) -> {history, extra, ...} (partial: the
    path of its checkpoint), then save it whole with the state. Returns the saved dict. One process trains an
    entry; another that needs it waits for it, then reuses it."""
    with Lock(path + ".lock", wait=True):
        saved = load_torch(path, "cached representation", "it is trained again")
        if saved is not None:
            load_state(path, lambda: model.load_state_dict(saved.get("stage1")))
            print(f"reusing the trained representation {path}")
            return saved
        partial = path[:-len(".pt")] + "-partial.pt"
        saved = {**train(partial), "stage1": model.state_dict()}
        save_torch(saved, path)
        if os.path.exists(partial):                                   # the finished entry replaces it
            os.remove(partial)
    return saved
