"""Real data in, one-class tensors out: MNIST, CIFAR-10 or a folder of images under Deep SVDD's protocol.

Ruff et al., *Deep One-Class Classification*, ICML 2018, Sec. 4.2 (the protocol that OC-NN and RCAE
reuse). One experiment per normal class k in 0..9:

- train: every official training image of class k (MNIST about 6,000, CIFAR-10 5,000). With a pollution
  rate p > 0 we add k_p = round(p * n / (1 - p)) training images of the other classes, drawn uniformly
  without replacement with `numpy.random.default_rng(seed)`, so that they make a fraction p of the train
  set (about p of each part when some are held out for calibration, below). Order: the normal images, then
  the injected anomalies, each in official-index order; `train_index` and `polluted` say which is which
  (training draws batches by `randperm`, so order is moot).
- calibration: with a fraction q > 0, round(q * (n + k_p)) of those images, drawn at random (after the
  pollution, from `default_rng(seed + 1)`), are held out as `x_cal`: never trained on, not in the min-max
  constants, scored only to set the decision threshold, so that it flags on unseen images the fraction
  asked (run.py). q = 0 (the papers' protocol) holds out nothing.
- test: the whole official test set (10,000 images); y = 1 for any other class (anomaly), 0 for class k.
- preprocessing, per image over all C*H*W values:
      x <- x / 255                                     pixels in [0, 1]
      x <- (x - mean(x)) / mean(|x - mean(x)|)         global contrast normalisation, l1 scale (gcn_l1)
      x <- (x - lo) / (hi - lo)                        min-max, lo/hi = min/max over ALL train pixels
  lo and hi come from the (possibly polluted) training set -- a learner cannot tell which images are
  anomalies -- and the same two constants scale the test set, so test anomalies may leave [0, 1].
  GCN and the constants are computed in float64, then the tensors are cast to float32: float64 reproduces
  the reference code's hard-coded constants (MNIST class 1: hi = 20.108062262467364) to 1e-15, float32
  misses hi by 5e-6.
  scaling='minmax' skips the GCN step (pixels / 255, then the min-max): the Deep SVDD code's MNIST KDE and
  OC-SVM baselines (shallow.py), whose scripts pass no --gcn.
  scaling='image' is the seed lab's preprocessing instead (its OC-NN figures used it): each image min-max
  scaled to [0, 1] on its own, x <- (x - min(x)) / (max(x) - min(x)). Any GCN before it cancels (an
  affine map of each image with a positive scale), and no constant is shared between images.
  A training set that is one constant after preprocessing (a blank class, or images too small to vary, such
  as 1x1) is refused with DataError: there is nothing to learn, and the min-max would divide by zero.

Image layout. The loaders return the files' bytes as numpy uint8, channel axis first where there is one:
MNIST (N, 28, 28) (really (N, rows, cols) from the IDX header), CIFAR-10 (N, 3, 32, 32); labels int64 (N,).
`one_class_split` returns torch float32 (N, C, H, W) for both (MNIST gets C = 1) on the requested device.

On disk (`root` defaults to the project's data/):
    <root>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]    IDX files, .gz preferred if both
    <root>/cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch}   official pickles, or else
    <root>/cifar10/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin   records: 1 label + 3072 pixels
`load_mnist` reads any IDX data (Fashion-MNIST too). Pickles go through a restricted unpickler that
admits only the numpy names an array needs, so a tampered batch file cannot run code. `download(name,
root)` fetches the official archives over urllib, checks their MD5, and renames only whole, verified
files into place. Every problem a user can cause ends in `DataError`, one sentence saying what to do.

A folder of your own images (dataset 'folder', `root` = the folder itself), the layout image tools use:
    <root>/train/<class>/*.png|*.jpg|*.jpeg      the extension in any case; names starting with '.' and
    <root>/test/<class>/*.png|*.jpg|*.jpeg       other files are skipped; class folders are not recursed
The class names sorted (as Python sorts strings) give the labels 0, 1, ... (`folder_classes(root)`);
`class_index(root, 'cat')` turns a class's folder name into its label (a number is read as a name, so an
index is taken only where the folders are named 0..n-1). Strict on purpose:
train/ and test/ must hold the same class folders, each with at least one image, and at least two of them.
`load_folder(root, train)` reads class by class, file names sorted, and is cached per process by every
file's (path, size, mtime); `fingerprint('folder', root)` hashes each file's path under root and its bytes.
- Decoding: Pillow, which matplotlib requires and reads every image through (matplotlib.image.imread);
  called directly it gives the stored uint8 values, where imread turns a PNG into floats in [0, 1].
  Each file is decoded whole (`load`), so a truncated one is caught and named. EXIF orientation is
  not applied: the pixels as stored.
- Greyscale or colour is the file's Pillow mode, not its content: '1', 'L', 'LA' are greyscale -> uint8
  (N, 28, 28) like MNIST; 'RGB', 'RGBA', 'P' (palette) are colour -> (N, 3, 32, 32) like CIFAR-10 (alpha is
  dropped, a palette expanded). An RGB file with three equal channels is colour (matplotlib's imsave
  writes RGBA even for a grey image). Other modes (16-bit, CMYK, ...) are refused.
- Size: every image (train and test) must share one kind and one size, else DataError naming the first
  image and one that differs. Images not 28x28 (grey) or 32x32 (colour) are resized to it, aspect ratio
  not kept, with Pillow's BILINEAR filter: when shrinking, Pillow widens it to the scale factor (an
  antialiased triangle filter, like torchvision's default Resize), and having no negative lobes, unlike
  LANCZOS, it adds no ringing halos around sharp strokes that would shift the min-max constants.
  `folder_facts(root)` reports it: {'classes', 'channels', 'size', 'resized_from': (h, w) or None,
  'interpolation': 'bilinear' or None, 'modes', 'n_train', 'n_test'}.
- The protocol is the one above with the folder's classes: train = the normal class's training images
  (plus pollution from the other classes' training images), test = all test images, y = 1 for any
  other class.

Read next: ae.py (the autoencoders that are pretrained on `x_train`).
"""
import dataclasses
import functools
import gzip
import hashlib
import http.client
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib

import numpy as np
import torch
from PIL import Image  # Pillow: matplotlib reads images through it and requires it (since 3.3)

MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"]
MNIST_FILES = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",  # published MD5 sums
               "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
               "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
               "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
CIFAR_MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
CIFAR_FILES = {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
CIFAR_BATCHES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}


class DataError(Exception):
    """Missing, corrupt or unverifiable data; the message says what to do."""


class MissingData(DataError):
    """The data set's files are not on disk (run.py then calls `download`)."""


# ---------------------------------------------------------------------------------------------------
# MNIST (IDX files)
# ---------------------------------------------------------------------------------------------------

def _file_key(path):
    """(path, size, mtime): the cache key, so a file replaced on disk is read again."""
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def _read_idx(path, magic):
    """One IDX file -> uint8 array shaped as its header says (the format: yann.lecun.com/exdb/mnist)."""
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut stream an EOFError
        raise DataError(f"{path} is not a readable (gzip) file ({e}); download it again.") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:  # 2051 = 0x0803: uint8, 3 dims
        raise DataError(f"{path} does not start with the IDX magic number {magic}; it is not an IDX "
                        f"{'image' if magic == 2051 else 'label'} file.")
    ndim = magic & 0xFF  # the last magic byte counts the dimensions
    header = 4 + 4 * ndim  # magic, then one big-endian int32 per dimension
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; download it again.")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path} holds {len(raw)} bytes but its header {dims} announces {expected} "
                        f"(truncated or corrupt); download it again.")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=4)
def _mnist_cached(images_key, labels_key):  # keyed by (path, size, mtime): a replaced file is re-read
    x = _read_idx(images_key[0], 2051)  # (N, rows, cols)
    y = _read_idx(labels_key[0], 2049).astype(np.int64)  # (N,)
    if len(x) != len(y):
        raise DataError(f"{images_key[0]} holds {len(x)} images but {labels_key[0]} holds {len(y)} "
                        f"labels; the two files do not belong together.")
    x.setflags(write=False)  # shared by every caller in this process: read-only
    y.setflags(write=False)
    return x, y


def _mnist_paths(root, train):
    """The two IDX files of one split (gzipped preferred), or MissingData saying what to put where."""
    folder = os.path.join(root, "mnist")
    prefix = "train" if train else "t10k"
    paths, missing = [], []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        found = [p for p in (os.path.join(folder, stem + ".gz"), os.path.join(folder, stem))
                 if os.path.isfile(p)]
        paths += found[:1]
        missing += [] if found else [stem + ".gz"]
    if missing:
        raise MissingData(f"MNIST files missing: put {', '.join(missing)} (gzipped or raw) in {folder}/, "
                          f"or run data.download('mnist', {root!r}) to fetch them.")
    return paths


def _mnist_arrays(root, train):
    """Read the two files once per process."""
    return _mnist_cached(*map(_file_key, _mnist_paths(root, train)))


def load_mnist(root, train=True):
    """IDX images and labels under <root>/mnist/ -> uint8 (N, rows, cols), int64 (N,). Fresh copies."""
    x, y = _mnist_arrays(root, train)
    return x.copy(), y.copy()


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 (pickles or binary records)
# ---------------------------------------------------------------------------------------------------

try:  # numpy's array rebuilder lives in numpy._core under NumPy 2, numpy.core under NumPy 1
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
_PICKLE_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,  # official files (NumPy 1)
                   ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,  # written under NumPy 2
                   ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the four names a pickled ndarray needs; all else is refused."""

    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")  # Python 2 str (the official files) -> bytes
        self.path = path

    def find_class(self, module, name):  # every global a pickle names passes here, before any call
        if (module, name) in _PICKLE_ALLOWED:
            return _PICKLE_ALLOWED[(module, name)]
        raise DataError(f"refusing to unpickle {module}.{name} from {self.path}: a CIFAR-10 batch holds "
                        f"only numpy arrays and lists, so this file is not one (tampered?).")


def _read_cifar_pickle(path):
    """One official batch: a dict with b'data' uint8 (N, 3072) and b'labels' (N ints)."""
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # any other failure of a malformed stream: UnpicklingError, EOFError, ...
        raise DataError(f"{path} is not a readable CIFAR-10 pickle ({e!r}); download it again.") from None
    x = batch.get(b"data") if isinstance(batch, dict) else None
    y = np.asarray(batch.get(b"labels", []) if isinstance(batch, dict) else [])
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072
            and y.shape == (len(x),) and y.dtype.kind in "iu"):  # labels: N integers
        raise DataError(f"{path} is not a CIFAR-10 batch: expected b'data' uint8 (N, 3072) and N b'labels'.")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)  # rows are R plane, G plane, B plane


def _read_cifar_bin(path):
    """One binary batch: records of 1 label byte and 3072 pixel bytes (R, G, B planes, row-major)."""
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise DataError(f"{path} holds {raw.size} bytes, not a whole number of 3073-byte records "
                        f"(1 label + 3072 pixels); download it again.")
    records = raw.reshape(-1, 3073)  # (N, 1 + 3 * 32 * 32)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


@functools.lru_cache(maxsize=4)
def _cifar_cached(keys, binary):  # keys: _file_key of each batch file, in batch order
    parts = [(_read_cifar_bin if binary else _read_cifar_pickle)(key[0]) for key in keys]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"labels outside 0..9 in {os.path.dirname(keys[0][0])}; the files are corrupt.")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _cifar_paths(root, train):
    """The batch files of one split: the official pickles if their folder exists, else the binary records."""
    folder = os.path.join(root, "cifar10", "cifar-10-batches-py")
    binary = not os.path.isdir(folder)
    if binary:
        folder = os.path.join(root, "cifar10", "cifar-10-batches-bin")
    names = [n + ".bin" if binary else n for n in CIFAR_BATCHES[train]]
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise MissingData(f"CIFAR-10 files missing: put {', '.join(missing)} in {folder}/ (extract the "
                          f"official archive into {os.path.join(root, 'cifar10')}/), or run "
                          f"data.download('cifar10', {root!r}).")
    return [os.path.join(folder, n) for n in names]


def _cifar_arrays(root, train):
    """CIFAR-10 batches under <root>/cifar10/ -> uint8 (N, 3, 32, 32), int64 (N,), read once per process
    (read-only arrays, shared by every caller)."""
    paths = _cifar_paths(root, train)
    return _cifar_cached(tuple(map(_file_key, paths)), paths[0].endswith(".bin"))


# ---------------------------------------------------------------------------------------------------
# A folder of the user's own images
# ---------------------------------------------------------------------------------------------------

FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg")  # compared lower-cased: .PNG, .JPG and .Jpeg count too
FOLDER_MODES = {"1": 1, "L": 1, "LA": 1, "P": 3, "RGB": 3, "RGBA": 3}  # Pillow mode -> channels
FOLDER_SIZE = {1: (28, 28), 3: (32, 32)}  # channels -> (H, W): MNIST's and CIFAR-10's
FOLDER_INTERPOLATION = "bilinear"  # Pillow's BILINEAR: antialiased when shrinking, no ringing (see above)
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR  # Image.Resampling since Pillow 9.1


def _visible(folder, keep):
    """The entries of `folder` that `keep(path)` accepts, sorted; names starting with '.' are skipped."""
    return sorted(n for n in os.listdir(folder) if not n.startswith(".") and keep(os.path.join(folder, n)))


def _is_image_file(path):
    return os.path.splitext(path)[1].lower() in FOLDER_EXTENSIONS and os.path.isfile(path)


def _folder_listing(root):
    """The checked layout: (classes, {True: [(label, path), ...], False: [...]}), files in reading order."""
    split_dirs = {True: os.path.join(root, "train"), False: os.path.join(root, "test")}
    for d in split_dirs.values():
        if not os.path.isdir(d):
            raise DataError(f"there is no {d} folder: put the images in "
                            f"{os.path.join(root, 'train', '<class>', '')} and "
                            f"{os.path.join(root, 'test', '<class>', '')} (PNG or JPEG).")
    names = {train: _visible(d, os.path.isdir) for train, d in split_dirs.items()}
    if len(names[False]) < 2:
        raise DataError(f"{split_dirs[False]} holds {len(names[False])} class folder(s) {names[False]}, but "
                        f"a one-class experiment needs at least two (one normal, the others anomalies); "
                        f"add more.")
    for a, b in ((True, False), (False, True)):
        missing = [c for c in names[a] if c not in names[b]]
        if missing:
            raise DataError(f"the class folder {os.path.join(split_dirs[a], missing[0])} has no counterpart "
                            f"in {split_dirs[b]}; both splits must hold the same classes, so add it there or "
                            f"remove it.")
    classes = names[True]  # sorted: the class index is the position in this list
    files = {}
    for train, d in split_dirs.items():
        files[train] = []
        for label, c in enumerate(classes):
            images = _visible(os.path.join(d, c), _is_image_file)
            if not images:
                raise DataError(f"the class folder {os.path.join(d, c)} holds no .png, .jpg or .jpeg file; put "
                                f"images of class {c!r} in it, or remove the class from both splits.")
            files[train] += [(label, os.path.join(d, c, n)) for n in images]
    return classes, files


def _read_image(path, ref):
    """One image file -> (mode, (h, w), uint8 array (h, w) or (3, h, w), resized to its kind's size).

    ref: (path, mode, size) of the data set's first image, which this one must match in kind and size (None
    for the first image itself). The whole file is decoded (`load`), so a truncated one fails here, named.
    """
    try:
        with Image.open(path) as img:  # reads the header only: mode and size
            mode, size = img.mode, (img.height, img.width)
            if mode not in FOLDER_MODES:
                raise DataError(f"{path} has Pillow mode {mode!r}, which is neither 8-bit greyscale nor RGB; "
                                f"save it as an 8-bit greyscale or RGB PNG or JPEG.")
            channels = FOLDER_MODES[mode]
            if ref is not None and FOLDER_MODES[ref[1]] != channels:
                kinds = {1: "greyscale", 3: "colour"}
                raise DataError(f"{ref[0]} is {kinds[FOLDER_MODES[ref[1]]]} (mode {ref[1]}) but {path} is "
                                f"{kinds[channels]} (mode {mode}); save all the images as greyscale or all as "
                                f"colour.")
            if ref is not None and ref[2] != size:
                raise DataError(f"{ref[0]} is {ref[2][0]}x{ref[2][1]} but {path} is {size[0]}x{size[1]} "
                                f"(height x width); give all the images one size.")
            img.load()  # decode every pixel now: a truncated or corrupt file raises here
            img = img.convert("L" if channels == 1 else "RGB")  # drops alpha, expands a palette
            if size != FOLDER_SIZE[channels]:
                img = img.resize(FOLDER_SIZE[channels][::-1], _BILINEAR)  # Pillow sizes are (width, height)
            pixels = np.asarray(img)  # (H, W) or (H, W, 3) uint8
    except DataError:
        raise
    except Exception as e:  # Pillow's many failures of a malformed file: OSError, SyntaxError, ValueError, ...
        raise DataError(f"{path} is not a readable PNG or JPEG image ({e}); replace or remove it.") from None
    return mode, size, (pixels if channels == 1 else pixels.transpose(2, 0, 1))


@functools.lru_cache(maxsize=2)
def _folder_cached(classes, train_files, test_files):  # files: ((label, _file_key), ...), in reading order
    ref, modes, out = None, set(), []
    for files in (train_files, test_files):
        x, y = None, np.array([label for label, _ in files], np.int64)
        for i, (_, key) in enumerate(files):
            mode, size, pixels = _read_image(key[0], ref)
            if ref is None:
                ref = (key[0], mode, size)  # every later image must match the first
            if x is None:
                x = np.empty((len(files),) + pixels.shape, np.uint8)
            x[i] = pixels
            modes.add(mode)
        x.setflags(write=False)
        y.setflags(write=False)
        out += [x, y]
    channels = FOLDER_MODES[ref[1]]
    resized = ref[2] != FOLDER_SIZE[channels]
    facts = {"classes": list(classes), "channels": channels, "size": FOLDER_SIZE[channels],
             "resized_from": ref[2] if resized else None,
             "interpolation": FOLDER_INTERPOLATION if resized else None,
             "modes": sorted(modes), "n_train": len(train_files), "n_test": len(test_files)}
    return (*out, facts)


def _folder_read(root):
    """List and check the folder (every time: cheap), decode its images once per process."""
    classes, files = _folder_listing(root)
    keyed = [tuple((label, _file_key(path)) for label, path in files[train]) for train in (True, False)]
    return _folder_cached(tuple(classes), *keyed)


def _folder_arrays(root, train):
    x_tr, y_tr, x_te, y_te, _ = _folder_read(root)
    return (x_tr, y_tr) if train else (x_te, y_te)


def _folder_paths(root, train):
    return [path for _, path in _folder_listing(root)[1][train]]


def load_folder(root, train=True):
    """Images under <root>/train/<class>/ (or test/) -> uint8 (N, 28, 28) or (N, 3, 32, 32), int64 (N,).

    Read class by class, file names sorted; label = the class's index in `folder_classes(root)`. Both splits
    are read together the first time (they must agree in kind and size), then served from the cache as fresh
    copies. `folder_facts(root)` says what the reading did (channels, resizing).
    """
    x, y = _folder_arrays(root, train)
    return x.copy(), y.copy()


def folder_facts(root):
    """What reading the folder found and did, for the console and the run's config:

    {'classes': sorted names, 'channels': 1 or 3, 'size': (H, W) returned, 'resized_from': the files' (h, w)
    or None, 'interpolation': 'bilinear' or None (when nothing was resized), 'modes': Pillow modes seen,
    'n_train': int, 'n_test': int}
    """
    facts = _folder_read(root)[4]
    return dict(facts, classes=list(facts["classes"]), modes=list(facts["modes"]))


def folder_classes(root):
    """The class names of the folder, sorted (as Python sorts strings): position = class index."""
    return _folder_listing(root)[0]


def class_index(root, name):
    """A class of the folder, given by its name ('cat', or '3' and 3 for a folder named 3) -> its index.

    A class is named, never counted: a number is read as a name (folders '2', '5', '7': 5 and '5' are class
    1, and 0 is refused). Only where the folders are named 0..n-1 is the number also the position, so an
    index is taken exactly where it cannot be misread. Anything else: DataError listing the class names.
    The name of class k: folder_classes(root)[k].
    """
    classes = folder_classes(root)
    if isinstance(name, (str, int, np.integer)) and not isinstance(name, bool) and str(name) in classes:
        return classes.index(str(name))
    raise DataError(f"{name!r} is not a class of {root}; the classes are {', '.join(classes)}: give one by "
                    f"its folder name (a number counts as a name, not as a position in this list).")


# ---------------------------------------------------------------------------------------------------
# What the data is: its files' fingerprint
# ---------------------------------------------------------------------------------------------------

_PATHS = {"mnist": _mnist_paths, "cifar10": _cifar_paths, "folder": _folder_paths}


@functools.lru_cache(maxsize=32)
def _sha256(key):  # key: _file_key(path), so a replaced file is hashed again
    h = hashlib.sha256()
    with open(key[0], "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(dataset, root):
    """A short SHA-256 over the names and bytes of every file `dataset` is read from under `root`.

    run.py keys what it saves by it (autoencoder cache, sweep folders, the resume match) beside the settings,
    so that a run on other data never passes for one on these. Each file is hashed once per process
    (results/README.md, section 6, measures what it costs). MissingData if the files are not there.
    """
    h = hashlib.sha256()
    for path in _PATHS[dataset](root, True) + _PATHS[dataset](root, False):
        # a folder's files are named by their path under root ('train/cat/0001.png'): the class is in it
        name = os.path.relpath(path, root).replace(os.sep, "/") if dataset == "folder" \
            else os.path.basename(path)
        h.update(os.fsencode(name) + f" {_sha256(_file_key(path))}\n".encode())  # fsencode: any file name
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------------

def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url, dest, md5, timeout):
    """Download url to dest via dest.part; rename only a whole file with the right MD5. None or a reason."""
    part = dest + ".part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            announced = response.headers.get("Content-Length")
            h, n = hashlib.md5(), 0
            for chunk in iter(lambda: response.read(1 << 16), b""):
                f.write(chunk)
                h.update(chunk)
                n += len(chunk)
        if announced is not None and n != int(announced):  # read(amt) ends quietly on a cut connection
            return f"{url}: got {n} of {announced} bytes"
        if h.hexdigest() != md5:
            return f"{url}: MD5 {h.hexdigest()} is not the published {md5}"
        os.replace(part, dest)  # atomic: dest is either absent or whole and verified
        return None
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, timeouts, IncompleteRead
        return f"{url}: {e}"
    finally:
        if os.path.exists(part):
            os.remove(part)


def _fetch_all(files, folder, mirrors, timeout):
    """Fetch each {name: md5} not already present and verified; DataError naming what is still missing, where
    to put it and its MD5. On failure the folders this call made are removed again where they are empty."""
    made, d = [], os.path.abspath(folder)
    while not os.path.exists(d):  # the folders makedirs will create, deepest first
        made, d = made + [d], os.path.dirname(d)
    os.makedirs(folder, exist_ok=True)
    failed, reasons = [], []
    for name, md5 in files.items():
        dest = os.path.join(folder, name)
        if os.path.isfile(dest) and _md5(dest) == md5:
            continue  # present and verified
        tries = []
        for base in mirrors:  # in order, until one gives a whole, verified file
            tries.append(_fetch(base.rstrip("/") + "/" + name, dest, md5, timeout))
            if tries[-1] is None:
                break
        else:
            failed.append(name)
            reasons += tries
    if failed:
        for d in made:  # leave no empty folder behind (verified files stay, and are not fetched again)
            try:
                os.rmdir(d)
            except OSError:  # not empty
                break
        listed = ", ".join(f"{name} (MD5 {files[name]})" for name in failed)
        raise DataError(f"could not download {listed}; place {'them' if len(failed) > 1 else 'it'} by hand in "
                        f"{folder}/ (check a copy with md5sum: the sum must match) and run again. "
                        f"Tried: {'; '.join(reasons)}.")


def _safe_extract(archive, folder):
    """Extract a tar into folder after checking every member: no links, devices, or escaping paths."""
    top = os.path.realpath(folder)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()  # read the whole index before writing anything
            for m in members:
                target = os.path.realpath(os.path.join(top, m.name))  # '..' and absolute names resolved
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"refusing to extract {m.name} from {archive}: links and devices "
                                    f"are not allowed.")
                if os.path.commonpath([top, target]) != top:
                    raise DataError(f"refusing to extract {m.name} from {archive}: it would land "
                                    f"outside {folder}.")
            safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 2nd line of defence
            tar.extractall(top, members, **safety)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{archive} is not a readable tar archive ({e}); delete it and run again.") from None


def download(name, root, mirrors=None, timeout=30):
    """Fetch MNIST (4 .gz files to <root>/mnist/) or CIFAR-10 (to <root>/cifar10/cifar-10-batches-py/).

    mirrors: base URLs tried in order, the file name is appended (default MNIST_MIRRORS or CIFAR_MIRRORS);
    a test may point them at a local server. Files already present with the published MD5 are skipped;
    the CIFAR-10 archive is kept beside the extracted batches and not extracted again once they exist.
    """
    if name == "mnist":
        _fetch_all(MNIST_FILES, os.path.join(root, "mnist"), mirrors or MNIST_MIRRORS, timeout)
        return
    if name != "cifar10":
        raise ValueError(f"download knows 'mnist' and 'cifar10', not {name!r}.")
    folder = os.path.join(root, "cifar10")
    batches = os.path.join(folder, "cifar-10-batches-py")
    if all(os.path.isfile(os.path.join(batches, n)) for n in CIFAR_BATCHES[True] + CIFAR_BATCHES[False]):
        return  # already extracted
    _fetch_all(CIFAR_FILES, folder, mirrors or CIFAR_MIRRORS, timeout)
    scratch = tempfile.mkdtemp(prefix=".extract-", dir=folder)  # extract aside, then rename in one step
    try:
        _safe_extract(os.path.join(folder, next(iter(CIFAR_FILES))), scratch)
        os.replace(os.path.join(scratch, "cifar-10-batches-py"), batches)
    except OSError as e:  # no such folder in the archive, or an incomplete one in the way
        raise DataError(f"could not put the extracted batches at {batches} ({e}); remove any "
                        f"incomplete folder there and run again.") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Preprocessing and the one-class split
# ---------------------------------------------------------------------------------------------------

def gcn_l1(x):
    """Global contrast normalisation with the l1 scale, per image over all C*H*W values (D of them):

        x_hat = (x - mu) / s,   mu = (1/D) sum_j x_j,   s = (1/D) sum_j |x_j - mu|

    x: float tensor (N, ...) -> same shape and dtype. (Theano's code divides by the l1 norm D*s instead;
    the min-max scaling that follows cancels the factor D.) A constant image maps to zeros, not NaN.
    """
    dims = tuple(range(1, x.dim()))  # every axis but the batch axis
    constant = x.amax(dim=dims, keepdim=True) == x.amin(dim=dims, keepdim=True)  # (N, 1, ...)
    x = x - x.mean(dim=dims, keepdim=True)  # (N, ...) centred: mu = 0
    s = x.abs().mean(dim=dims, keepdim=True)  # (N, 1, ...) mean absolute deviation
    x = x.div_(s.clamp_min(torch.finfo(x.dtype).tiny))  # 0 / tiny = 0 where the centring is exact
    return x.masked_fill_(constant, 0.0)  # a constant image: mean(x) may round off it, leaving +-1; set 0


@dataclasses.dataclass
class OneClassData:
    x_train: torch.Tensor       # (n, C, H, W) float32, min-max scaled to [0, 1]
    x_test: torch.Tensor        # (10000, C, H, W) float32 (a folder: n_test), scaled with the train constants
    y_test: torch.Tensor        # (10000,) int64, 1 = anomaly (another class), 0 = normal
    test_classes: torch.Tensor  # (10000,) int64, the original labels 0..9 (a folder: its class indices)
    train_index: torch.Tensor   # (n,) int64, indices into the official training set, in x_train order
    polluted: torch.Tensor      # (n,) bool, True for the injected anomalies
    x_cal: torch.Tensor         # (m, C, H, W) float32: the calibration images held out (m = 0 without)
    cal_index: torch.Tensor     # (m,) int64, their indices into the official training set
    cal_polluted: torch.Tensor  # (m,) bool, True for the injected anomalies among them
    scale: tuple                # (lo, hi): min and max of the training pixels after GCN; (0, 1) per image
    dataset: str
    normal_class: object        # k, or a tuple of classes whose union is normal


_ARRAYS = {"mnist": _mnist_arrays, "cifar10": _cifar_arrays, "folder": _folder_arrays}


def _to_float64(x):
    """uint8 (N, H, W) or (N, C, H, W) -> float64 tensor (N, C, H, W) in [0, 1]."""
    x = torch.tensor(x, dtype=torch.float64) / 255  # a copy: the cached arrays stay untouched
    return x.unsqueeze(1) if x.dim() == 3 else x  # MNIST gets its channel axis C = 1


def minmax_per_image(x):
    """Each image scaled to [0, 1] by its own min and max; a constant image maps to zeros, not NaN."""
    dims = tuple(range(1, x.dim()))
    lo = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - lo
    return (x - lo).div_(span.clamp_min(torch.finfo(x.dtype).tiny))


def _normalize(x, scaling):
    """Before the min-max: GCN (class), each image's own min-max (image), or nothing (minmax)."""
    return gcn_l1(x) if scaling == "class" else minmax_per_image(x) if scaling == "image" else x


def preprocess(images, scaling, scale):
    """uint8 images (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W): what one_class_split does to the test set,
    with a run's two training constants scale = (lo, hi) (metrics.json): for new images (score.py)."""
    lo, hi = scale
    return ((_normalize(_to_float64(images), scaling) - lo) / (hi - lo)).to(torch.float32)


def read_images(paths):
    """Image files (PNG or JPEG) -> (uint8 (N, H, W) or (N, 3, H, W), channels, (h, w) of the files), decoded
    and resized as the folder data set's are; DataError naming two files that differ in kind or size."""
    ref, out = None, []
    for path in paths:
        mode, size, pixels = _read_image(path, ref)
        ref = ref or (path, mode, size)
        out.append(pixels)
    if not out:
        raise DataError("no image to read: give PNG or JPEG files, or folders that hold some.")
    return np.stack(out), FOLDER_MODES[ref[1]], ref[2]


def normal_classes(normal_class):
    """The normal classes as a tuple: (k,) for one class k; several (a list or tuple) sorted."""
    return tuple(sorted(normal_class)) if isinstance(normal_class, (list, tuple)) else (normal_class,)


def normal_mask(labels, normal_class):
    """True where a label is one of the normal classes (k, or a tuple of them): labels (N,) int -> (N,) bool."""
    return np.isin(labels, normal_classes(normal_class))


def one_class_split(dataset, normal_class, pollution_rate=0.0, seed=0, root="data", device="cpu",
                    scaling="class", calibration=0.0):
    """Deep SVDD's one-class experiment for `normal_class`, optionally polluted (see the module docstring).

    normal_class: one class k, or a tuple of classes: their union is the normal class (training images, GCN
    and min-max constants), every other class an anomaly, pollution drawn from those others.

    scaling: 'class' (the paper's GCN + min-max with the training set's two constants), 'minmax' (the same
    min-max without GCN: the Deep SVDD code's shallow baselines where it passes no --gcn) or 'image' (the seed
    lab's per-image min-max).

    calibration: the fraction of those training images held out as x_cal (see the module docstring).
    """
    if dataset not in _ARRAYS:
        raise ValueError(f"dataset must be one of {sorted(_ARRAYS)}, not {dataset!r}.")
    if scaling not in ("class", "minmax", "image"):
        raise ValueError(f"scaling must be 'class', 'minmax' or 'image', not {scaling!r}.")
    classes = folder_classes(root) if dataset == "folder" else range(10)  # a folder: its sorted class names
    ks = normal_classes(normal_class)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < len(classes)
                     for k in ks):
        names = f" (the classes {', '.join(classes)}: data.class_index maps a name to its index)" \
            if dataset == "folder" else ""
        raise ValueError(f"normal_class must be an integer class label in 0..{len(classes) - 1}{names}, or a "
                         f"tuple of them, not {normal_class!r}.")
    if len(set(ks)) < len(ks) or len(ks) == len(classes):
        raise ValueError(f"the normal classes {normal_class!r} must be distinct and leave at least one class to be "
                         f"the anomalies.")
    if not 0 <= pollution_rate < 1:
        raise ValueError(f"pollution_rate is the anomalies' share of the train set, so it must lie in "
                         f"[0, 1), not {pollution_rate!r}.")
    x_all, y_all = _ARRAYS[dataset](root, True)  # read-only, cached
    x_te, y_te = _ARRAYS[dataset](root, False)
    is_normal = normal_mask(y_all, ks)
    normal = np.flatnonzero(is_normal)  # official training indices of the normal classes
    others = np.flatnonzero(~is_normal)
    k_p = round(pollution_rate * len(normal) / (1 - pollution_rate))  # k_p / (n + k_p) = p, to rounding
    if k_p > len(others):
        raise ValueError(f"pollution_rate {pollution_rate} needs {k_p} anomalies but the other classes "
                         f"have only {len(others)} training images; use a smaller rate.")
    rng = np.random.default_rng(seed)
    injected = np.sort(rng.choice(others, size=k_p, replace=False))  # uniform, without replacement
    train_index = np.concatenate([normal, injected])  # normal first, then the anomalies
    polluted = np.arange(len(train_index)) >= len(normal)
    if not 0 <= calibration < 1:
        raise ValueError(f"calibration is the share of the training images held out, so it must lie in [0, 1), "
                         f"not {calibration!r}.")
    m = round(calibration * len(train_index))
    if calibration > 0 and not 0 < m < len(train_index):
        raise ValueError(f"calibration {calibration} of {len(train_index)} training images holds out {m}: "
                         f"both the held-out and the trained-on images need at least one.")
    held = np.zeros(len(train_index), bool)
    held[np.random.default_rng(seed + 1).choice(len(train_index), size=m, replace=False)] = True
    cal_index, cal_polluted = train_index[held], polluted[held]
    train_index, polluted = train_index[~held], polluted[~held]

    x_train = _normalize(_to_float64(x_all[train_index]), scaling)  # (n, C, H, W) float64
    x_cal = _normalize(_to_float64(x_all[cal_index]), scaling)
    x_test = _normalize(_to_float64(x_te), scaling)  # (10000, C, H, W) float64
    if x_train.min() == x_train.max():  # nothing to learn, and the min-max below would divide by 0
        raise DataError(f"every training image of class {'+'.join(str(classes[k]) for k in ks)} is the same "
                        f"constant after the {scaling!r} preprocessing (blank images, or images too small to vary, "
                        f"such as 1x1), so there is nothing to learn; use images whose pixels vary.")
    if scaling == "image":
        lo, hi = 0.0, 1.0  # no shared constants: (0, 1) leaves the images as they are below
    else:
        lo, hi = x_train.min().item(), x_train.max().item()  # over ALL pixels of the train set
    dev = torch.device(device)
    return OneClassData(
        x_train=((x_train - lo) / (hi - lo)).to(dev, torch.float32),
        x_test=((x_test - lo) / (hi - lo)).to(dev, torch.float32),  # same constants: may leave [0, 1]
        x_cal=((x_cal - lo) / (hi - lo)).to(dev, torch.float32),
        cal_index=torch.from_numpy(cal_index.astype(np.int64)).to(dev),
        cal_polluted=torch.from_numpy(cal_polluted).to(dev),
        y_test=torch.from_numpy((~normal_mask(y_te, ks)).astype(np.int64)).to(dev),
        test_classes=torch.from_numpy(y_te.copy()).to(dev),
        train_index=torch.from_numpy(train_index.astype(np.int64)).to(dev),
        polluted=torch.from_numpy(polluted).to(dev),
        scale=(lo, hi), dataset=dataset, normal_class=int(ks[0]) if len(ks) == 1 else ks)
