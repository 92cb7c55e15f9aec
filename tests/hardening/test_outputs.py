"""Output files are the user's: the umask decides their mode (not mkstemp's 0600), written atomically."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from hwsim.cli import cli
from hwsim.graph import save_model
from hwsim.safeio import atomic_write, check_output, current_umask
from tests.nets import tiny_cnn


@pytest.fixture()
def umask027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_atomic_write_gets_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        atomic_write(tmp_path / "a.txt", "hello")
        atomic_write(tmp_path / "b.bin", b"\x00\x01")
        atomic_write(tmp_path / "c.bin", lambda fh: fh.write(b"x"))
        ref = tmp_path / "ref.txt"
        ref.write_text("plain open()")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.bin", "c.bin"):
        assert mode(tmp_path / name) == 0o666 & ~mask == mode(ref), name
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_cli_outputs_and_model_files_get_the_umask(tmp_path, umask027):
    model = tmp_path / "m.hwsim"
    save_model(tiny_cnn(seed=0, classes=10), model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 10)
    res = CliRunner().invoke(cli, ["run", "-m", str(model), "-d", f"npz:{tmp_path / 'd.npz'}", "-q",
                                   "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["images"] > 0
    assert mode(model) == 0o640
    assert mode(tmp_path / "r.json") == 0o640


def test_failed_write_leaves_nothing(tmp_path):
    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "keep.txt", boom)
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_check_output_accepts_a_writable_new_file(tmp_path):
    assert check_output(tmp_path / "x.json", "--out", (".json",)) == tmp_path / "x.json"
    assert check_output(None) is None
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


def test_golden_directory_and_files_get_the_umask(tmp_path, umask027):
    model = tmp_path / "m.hwsim"
    save_model(tiny_cnn(seed=0, classes=10), model)
    x = np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 10)
    out = tmp_path / "golden"
    res = CliRunner().invoke(cli, ["golden", "-m", str(model), "-d", f"npz:{tmp_path / 'd.npz'}", "-q", "--n", "2",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert mode(out) == 0o750  # not mkdtemp's 0700
    assert mode(out / "manifest.json") == 0o640
