"""The loaders under mutation: seeded cases from scripts/fuzz.py (no crash, no hang, no MemoryError), the
.npy parser against numpy's writer, and a Hypothesis property: every file save_model writes loads back
identically."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwsim.errors import HwsimError
from hwsim.graph import GraphBuilder, load_model, save_model
from hwsim.safeio import parse_npy, read_npz

ROOT = Path(__file__).resolve().parents[2]


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("hwsim_fuzz", ROOT / "scripts" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hwsim_fuzz"] = mod
    spec.loader.exec_module(mod)
    return mod


fuzz = _fuzz_module()


@pytest.mark.parametrize("target, cases", [("model", 300), ("profile", 200), ("data", 150)])
def test_seeded_fuzz_cases_are_clean(target, cases):
    rep = fuzz.fuzz({target: cases}, seed=15, workers=0, time_limit=10.0)
    r = rep["targets"][target]
    assert r["crash"] == r["hang"] == r["memory"] == 0, r["crashes"]
    assert r["rejected"] + r["accepted"] == cases
    assert r["rejected"] > cases // 2 and r["accepted"] > 0  # the mutations reach both outcomes


def test_fuzz_cases_are_deterministic():
    assert fuzz.make_case("model", 3, 17) == fuzz.make_case("model", 3, 17)
    assert fuzz.make_case("profile", 3, 17) == fuzz.make_case("profile", 3, 17)
    assert fuzz.make_case("data", 3, 17) != fuzz.make_case("data", 3, 18)


def test_fuzz_reports_a_crash_as_a_crash(monkeypatch):
    """The classifier is not vacuous: a loader that raises something else than HwsimError is a crash."""
    import hwsim.graph

    def broken(path):
        raise KeyError("boom")

    monkeypatch.setattr(hwsim.graph, "load_model", broken)
    outcome, _, detail = fuzz.run_case("model", 0, 1)
    assert outcome == "crash" and "KeyError" in detail


def test_fuzz_script_pool_with_memory_limit():
    """The script itself, in a fresh process (its pool forks; this test process may hold threads): a worker
    pool under RLIMIT_AS, every target, exit status 0."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--cases", "60", "--workers", "2",
                        "--memory-mb", "1024", "--seed", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RLIMIT_AS 1024 MiB" in r.stdout
    for t in ("model", "profile", "data"):
        assert any(line.startswith(t) and line.split()[4:7] == ["0", "0", "0"] for line in r.stdout.splitlines()), r.stdout


# ----------------------------------------------------------------------------- .npy parser vs numpy
@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", "<f2", "|u1", "<i8", ">i2", "<u8"])
@pytest.mark.parametrize("shape, fortran", [((3, 4), False), ((3, 4), True), ((0,), False), ((), False), ((2, 1, 3, 1, 2), False)])
def test_parse_npy_matches_numpy(dtype, shape, fortran):
    a = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    if fortran:
        a = np.asfortranarray(a)
    b = io.BytesIO()
    np.lib.format.write_array(b, a, allow_pickle=False)
    got = parse_npy(b.getvalue(), "t")
    ref = np.load(io.BytesIO(b.getvalue()), allow_pickle=False)
    assert got.shape == ref.shape and got.dtype == ref.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, ref)
    assert got.flags.c_contiguous and got.flags.writeable


def test_parse_npy_refuses_kinds_not_asked_for():
    b = io.BytesIO()
    np.lib.format.write_array(b, np.zeros(3, np.int32))
    with pytest.raises(HwsimError, match=r"t: \.npy dtype '<i4' \(allowed: float arrays\)"):
        parse_npy(b.getvalue(), "t", kinds="f")


def test_read_npz_matches_numpy(tmp_path):
    p = tmp_path / "a.npz"
    arrays = {"x": np.arange(12, dtype=np.uint8).reshape(3, 4), "y": np.array([1, 2, 3], np.int64)}
    np.savez_compressed(p, **arrays)
    got = read_npz(p, str(p))
    assert sorted(got) == ["x", "y"]
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])


# ----------------------------------------------------------------------------- writer -> reader round trip
names = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="/\\"),
                min_size=1, max_size=12)
f32 = st.floats(min_value=-2.0**100, max_value=2.0**100, allow_nan=False, width=32)


@st.composite
def graphs(draw):
    """A random valid conv/bn/pool/linear graph with random names, sizes, attrs, weights and metadata."""
    c = draw(st.integers(1, 3))
    h = draw(st.integers(3, 9))
    w = draw(st.integers(3, 9))
    mean = draw(st.lists(f32, min_size=c, max_size=c))
    std = draw(st.lists(st.floats(2.0**-10, 2.0**10, width=32), min_size=c, max_size=c))
    b = GraphBuilder(input_shape=(c, h, w), mean=mean, std=std, input_name=draw(names))
    used = set()

    def name():
        n = draw(names.filter(lambda s: s not in used and s != b.inputs[0].name))
        used.add(n)
        return n

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = draw(st.integers(1, min(3, h, w)))
    dil = draw(st.integers(1, 2)) if k > 1 and 2 * (k - 1) + 1 <= min(h, w) else 1
    ext = dil * (k - 1) + 1
    pad = draw(st.integers(0, ext - 1))
    stride = draw(st.integers(1, 3))
    cout = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    x = b.conv2d(name(), b.inputs[0].name, rng.normal(0, scale, (cout, c, k, k)),
                 bias=rng.normal(0, 1, cout) if draw(st.booleans()) else None, stride=stride, padding=pad, dilation=dil)
    if draw(st.booleans()):
        x = b.batchnorm(name(), x, rng.uniform(0.1, 2, cout), rng.normal(0, 1, cout), rng.normal(0, 1, cout),
                        rng.uniform(0, 2, cout), eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])))
    x = draw(st.sampled_from([b.relu, b.relu6]))(name(), x)
    x = b.global_avgpool(name(), x)
    x = b.flatten(name(), x)
    x = b.linear(name(), x, rng.normal(0, 1, (draw(st.integers(1, 5)), cout)))
    meta = draw(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**53, 2**53), f32, st.text(max_size=8),
                                                               st.booleans(), st.none()), max_size=4))
    return b.build(metadata=meta)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(g=graphs())
def test_every_file_save_model_writes_loads_back_identically(g, tmp_path_factory):
    p = tmp_path_factory.mktemp("rt") / "g.hwsim"
    save_model(g, p)
    back = load_model(p)
    assert back.inputs == g.inputs and back.nodes == g.nodes and back.outputs == g.outputs
    assert back.metadata == g.metadata
    assert sorted(back.tensors) == sorted(g.tensors)
    for k in g.tensors:
        assert back.tensors[k].dtype == np.float32 and back.tensors[k].tobytes() == g.tensors[k].tobytes()
