"""Run Deep-SVDD-PyTorch (lukasruff/Deep-SVDD-PyTorch, commit 1901612) on this project's CIFAR-10 batches.

Its code asks for an older torchvision than the torch this project uses: this script makes the few
adjustments that this needs, without editing its files, then runs its `src/main.py` with the arguments
given. Pass `--lr_milestone` and `--ae_lr_milestone` explicitly: today's click rejects their defaults.

    # a separate environment: this project's torch, plus what the reference code imports
    python -m venv --system-site-packages <env> && <env>/bin/pip install --no-deps torchvision==0.28.0
    <env>/bin/pip install scikit-learn click
    <env>/bin/python results/port_cifar10.py <Deep-SVDD-PyTorch>/src cifar10 cifar10_LeNet <log folder> \
        data/cifar10 --objective one-class --normal_class 7 --seed 0 --device cpu ...   # its own flags

The adjustments, none of which touches training or scoring:
  - torchvision's compiled operators are not loaded (the registry's wheel is built for CUDA; the reference
    code uses only the pure-Python datasets and transforms);
  - the MD5 checks are skipped: batches written from another copy (the JPEG copy) have other checksums;
    nothing is downloaded;
  - batches whose dictionary keys are bytes (as `to_cifar_batches.py` writes them) are read with str keys,
    as the original archive's are;
  - `train_data` / `train_labels` / `test_data` / `test_labels`, the names the reference code reads, point
    to today's `data` / `targets`.
"""
import os
import pickle
import runpy
import sys
import types


class _StrKeys:
    """pickle as torchvision's CIFAR-10 loader calls it, returning dictionaries with str keys."""
    @staticmethod
    def load(f, **kwargs):
        entry = pickle.load(f, **kwargs)
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def adjust_torchvision():
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    try:
        import torchvision.datasets.cifar as cifar
    except ImportError as e:
        sys.exit(f"port_cifar10.py needs torchvision, scikit-learn and click beside torch ({e}); see its docstring")
    cifar.pickle = _StrKeys
    cifar.check_integrity = lambda *args, **kwargs: True
    cifar.CIFAR10._check_integrity = lambda self: True
    cifar.CIFAR10.download = lambda self: None
    for old, new in [("train_data", "data"), ("test_data", "data"), ("train_labels", "targets"),
                     ("test_labels", "targets")]:
        setattr(cifar.CIFAR10, old, property(lambda self, name=new: getattr(self, name)))


if __name__ == "__main__":
    if len(sys.argv) < 2 or not os.path.isfile(os.path.join(sys.argv[1], "main.py")):
        sys.exit("usage: port_cifar10.py <Deep-SVDD-PyTorch>/src <its main.py arguments>: no main.py in that folder")
    adjust_torchvision()
    src = os.path.abspath(sys.argv[1])
    sys.path.insert(0, src)
    sys.argv = ["main.py"] + sys.argv[2:]
    runpy.run_path(os.path.join(src, "main.py"), run_name="__main__")
