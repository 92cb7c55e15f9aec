"""Large data: npz members and folders of .npy shards stream a slice at a time and equal in-memory data."""

from __future__ import annotations

import numpy as np
import pytest

from hwsim import experiments as ex
from hwsim.data import LazyImages, _Part, load_dataset
from hwsim.errors import HwsimError
from hwsim.profile import load_profile
from tests.scaleout.conftest import MODEL, invoke, without_timing


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, mnist):
    """The same images as: stored npz, compressed npz, npz of (x, y), a folder of shards, and NHWC floats."""
    xtr, ytr, xte, yte = mnist
    d = tmp_path_factory.mktemp("layouts")
    np.savez(d / "stored.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    np.savez_compressed(d / "packed.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    np.savez(d / "xy.npz", x=np.concatenate([xtr, xte]), y=np.concatenate([ytr, yte]))
    shards = d / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate([(0, 100), (100, 103), (103, 256)]):  # uneven; the middle one big-endian float
        np.save(shards / f"x_test.{i:03d}.npy", xte[a:b] if i != 1 else (xte[a:b] / np.float32(255)).astype(">f4"))
        np.save(shards / f"y_test.{i:03d}.npy", yte[a:b])
    np.save(shards / "x_train.npy", xtr)
    np.save(shards / "y_train.npy", ytr)
    f32 = d / "float_nhwc.npz"
    np.savez(f32, x_train=(xtr[..., None] / np.float32(255)).astype(np.float32), y_train=ytr,
             x_test=(xte[..., None] / np.float32(255)).astype(np.float32), y_test=yte)
    return {"stored": f"npz:{d / 'stored.npz'}", "packed": f"npz:{d / 'packed.npz'}", "xy": f"npz:{d / 'xy.npz'}",
            "shards": f"npy:{shards}", "float": f"npz:{f32}"}


@pytest.mark.parametrize("kind", ["stored", "packed", "xy", "shards", "float"])
def test_streamed_data_equals_in_memory_data(layouts, kind):
    eager = load_dataset(layouts[kind])
    lazy = load_dataset(layouts[kind], stream=True)
    assert isinstance(lazy.x_test, LazyImages) and isinstance(lazy.x_train, LazyImages)
    for a, b in (("x_train", "y_train"), ("x_test", "y_test")):
        xe, xl = getattr(eager, a), getattr(lazy, a)
        assert xl.shape == xe.shape and len(xl) == len(xe)
        assert np.array_equal(getattr(lazy, b), getattr(eager, b))
        assert np.array_equal(xl[:], xe)
        assert np.array_equal(xl[5:37], xe[5:37])
        idx = np.array([37, 3, 99, 3, 0, -1])
        assert np.array_equal(xl[idx], xe[idx])
        assert np.array_equal(xl.view_rows(90, 120)[8:12], xe[98:102])
        with pytest.raises(IndexError):
            xl[np.array([len(xe)])]
    if kind != "xy":  # the (x, y) layout is split; the others must equal the stored-npz data too
        ref = load_dataset(layouts["stored"])
        assert np.array_equal(eager.x_test, ref.x_test) and np.array_equal(eager.x_train, ref.x_train)


def test_a_shard_reads_only_its_own_rows(layouts, monkeypatch):
    lazy = load_dataset(layouts["stored"], stream=True).x_test
    seen = []
    real = _Part.read

    def spy(self, local):
        seen.append((int(local.min()), int(local.max()), len(local)))
        return real(self, local)

    monkeypatch.setattr(_Part, "read", spy)
    lazy.view_rows(64, 128)[0:32]
    assert seen == [(64, 95, 32)]


def test_sweep_on_streamed_data_equals_the_in_memory_run(layouts, tmp_path):
    """Every layout streamed through a 2-worker sharded sweep gives the rows of the in-memory run."""
    ctx = ex.load_context(MODEL, layouts["stored"], 96, 32)  # in memory (stream=False)
    assert isinstance(ctx.x_test, np.ndarray)
    profiles = ("int8-stochastic", "w4-fp")
    ref = [ex.run_profile(ctx, load_profile(p), 32) for p in profiles]
    from hwsim.report import sweep_csv

    want = without_timing(sweep_csv(ref))
    for kind in ("stored", "shards", "packed"):
        out = tmp_path / f"{kind}.csv"
        args = ["sweep", "-m", MODEL, "-d", layouts[kind], "--limit", "96", "--batch-size", "32", "-q", "-o", out]
        for p in profiles:
            args += ["-p", p]
        if kind == "stored":
            args += ["--workers", "2", "--shard-size", "32"]
        res = invoke(*args)
        assert res.exit_code == 0, res.output
        got = without_timing(out.read_text())
        assert got == want.replace(layouts["stored"], layouts[kind]), kind


def test_bad_streamed_files_are_one_line_errors(tmp_path, mnist):
    xtr, ytr, xte, yte = mnist
    d = tmp_path / "bad"
    d.mkdir()
    np.save(d / "x_test.000.npy", xte[:10])
    np.save(d / "y_test.000.npy", yte[:10])
    np.save(d / "x_test.001.npy", xte[10:20])  # no y_test.001.npy
    np.save(d / "x_train.npy", xtr[:10])
    np.save(d / "y_train.npy", ytr[:10])
    with pytest.raises(HwsimError, match=r"x_test and y_test shards differ \(suffix '001'"):
        load_dataset(f"npy:{d}", stream=True)
    np.save(d / "y_test.001.npy", yte[10:19])
    with pytest.raises(HwsimError, match=r"y_test.001.npy: \(9,\) labels for 10 images"):
        load_dataset(f"npy:{d}", stream=True)
    np.save(d / "y_test.001.npy", yte[10:20])
    (d / "x_test.001.npy").write_bytes((d / "x_test.001.npy").read_bytes()[:-5])  # truncated
    with pytest.raises(HwsimError, match=r"x_test.001.npy: .npy shape \(10, 28, 28\) of uint8 needs 7840 bytes"):
        load_dataset(f"npy:{d}", stream=True)
    bad = np.full((10, 28, 28), 0.5, np.float32)
    bad[7, 3, 3] = 1.5  # out of [0, 1]: found when its slice is read, and named
    np.save(d / "x_test.001.npy", bad)
    lazy = load_dataset(f"npy:{d}", stream=True).x_test
    assert lazy[:10].shape == (10, 1, 28, 28)
    with pytest.raises(HwsimError, match=r"x_test.001.npy rows 0..9: float images must lie in \[0, 1\]"):
        lazy[10:20]
    res = invoke("sweep", "-p", "w4a4", "-d", f"npy:{d}", "-q")
    assert res.exit_code != 0 and res.output.count("\n") == 1 and "float images must lie in [0, 1]" in res.output
    res = invoke("sweep", "-p", "w4a4", "-d", f"npy:{tmp_path / 'missing'}", "-q")
    assert res.exit_code != 0 and "does not exist" in res.output
