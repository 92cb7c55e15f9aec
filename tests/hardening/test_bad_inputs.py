"""The bad-input matrix (issue 15): every kind of bad model file, profile, data file, output path and
option through the CLI: one line on stderr naming the file/key/value and what is allowed, a nonzero
exit, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hwsim.graph import save_model
from tests.hardening import forge
from tests.nets import tiny_cnn
from tests.conftest import invoke  # noqa: E402,F401  (the one CLI runner the tests share)


@pytest.fixture(scope="module")
def model8(tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / "tiny.hwsim"
    save_model(tiny_cnn(seed=0, classes=10), p)
    return p


def listing(d: Path) -> list:
    return sorted((p.relative_to(d), p.stat().st_size) for p in d.rglob("*"))


def one_line_error(res, *fragments) -> str:
    """Nonzero exit, no traceback, exactly one 'Error:' line containing every fragment."""
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1, res.output
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


def run_model(path, data8, *fragments, workdir=None):
    before = listing(workdir) if workdir else None
    msg = one_line_error(invoke("run", "-m", path, "-d", data8, "-q", "-o", Path(path).with_suffix(".json")),
                         str(path), *fragments)
    assert not Path(path).with_suffix(".json").exists()
    if workdir:
        assert listing(workdir) == before
    return msg


# ----------------------------------------------------------------------------- model files
def test_npy_header_tokenizer_error(model8, data8, tmp_path):
    # numpy's own header parser dies with an uncaught tokenize error on this text
    bad = forge.npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (10, 4), ")
    p = forge.model_with(model8, tmp_path / "tok.hwsim", tensor_members={"fc.weight.npy": bad})
    run_model(p, data8, "fc.weight.npy", "unreadable .npy header")


@pytest.mark.parametrize("shape", ["(10**12,)", "(1000000, 1000000)", "(4611686018427387904, 4)"])
def test_npy_header_declaring_huge_shape_is_refused_before_allocation(model8, data8, tmp_path, shape):
    shape_text = str(eval(shape))  # noqa: S307 (a literal of ours)
    bad = forge.npy_with_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}", b"\0" * 16)
    p = forge.model_with(model8, tmp_path / "huge.hwsim", tensor_members={"fc.weight.npy": bad})
    run_model(p, data8, "fc.weight.npy", "needs", "the member holds 16")


@pytest.mark.parametrize("descr, fragment", [("|O", "without pickle"), ("<c8", "allowed: float"), ("V4", "allowed: float")])
def test_npy_odd_dtypes(model8, data8, tmp_path, descr, fragment):
    bad = forge.npy_with_header(f"{{'descr': '{descr}', 'fortran_order': False, 'shape': (10, 4), }}", b"\0" * 160)
    p = forge.model_with(model8, tmp_path / "dt.hwsim", tensor_members={"fc.weight.npy": bad})
    run_model(p, data8, "fc.weight.npy", fragment)


def test_member_declaring_gigabytes_is_refused_before_reading(model8, data8, tmp_path):
    p = tmp_path / "bomb.hwsim"
    forge.write_zip(p, forge.members(model8), deflate=("graph.json",))
    forge.declare_size(p, "tensors.npz", 0xF0000000)  # 3.75 GiB declared
    run_model(p, data8, "tensors.npz", "declares 3.8 GiB", "at most 1.0 GiB")


def test_decompression_bomb_stops_at_the_limit(model8, tmp_path, monkeypatch):
    """A real bomb (8 MiB of zeros deflated to ~8 KiB) against a 1 MiB limit: refused, never inflated."""
    from hwsim import safeio
    from hwsim.errors import HwsimError
    from hwsim.graph import load_model

    ms = forge.members(model8)
    ms["graph.json"] = b" " * (8 << 20)
    p = forge.write_zip(tmp_path / "bomb.hwsim", ms, deflate=("graph.json",))
    assert p.stat().st_size < 200_000
    monkeypatch.setattr(safeio, "MAX_MEMBER_BYTES", 1 << 20)
    monkeypatch.setattr(safeio, "MAX_JSON_BYTES", 1 << 20)
    with pytest.raises(HwsimError, match=r"bomb\.hwsim: member 'graph\.json' declares 8\.0 MiB \(allowed at most 1\.0 MiB"):
        load_model(p)
    # and a member whose declared size is small but whose stream inflates further is cut at the declared size
    forge.declare_size(p, "graph.json", 100)
    with pytest.raises(HwsimError, match=r"bomb\.hwsim: (corrupt or truncated member 'graph\.json'|.*graph\.json)"):
        load_model(p)


@pytest.mark.parametrize("edit, fragments", [
    (lambda d: forge.node(d, "bn1")["attrs"].update(eps=10**30), ["integer", "2^53"]),
    (lambda d: forge.node(d, "bn1")["attrs"].update(eps="1e400"), ["attr 'eps'"]),
    (lambda d: d["inputs"][0].update(mean=[1e39]), ["mean", "float32"]),
    (lambda d: d["inputs"][0].update(std=[1e-50]), ["std", "positive"]),
    (lambda d: forge.node(d, "bn1")["attrs"].update(eps=1e-50), ["attr 'eps'", "float32"]),
], ids=["eps-int-too-big", "eps-string", "mean-over-float32", "std-underflows", "eps-underflows"])
def test_json_numbers_out_of_range(model8, data8, tmp_path, edit, fragments):
    p = forge.model_with(model8, tmp_path / "num.hwsim", edit)
    run_model(p, data8, *fragments)


def test_json_number_overflowing_a_double(model8, data8, tmp_path):
    raw = forge.members(model8)["graph.json"].replace(b'"eps": 1e-05', b'"eps": 1e400', 1)
    assert b"1e400" in raw
    p = forge.model_with(model8, tmp_path / "inf.hwsim", raw_graph=raw)
    run_model(p, data8, "graph.json", "nodes[1] ('bn1').attrs.eps = inf", "finite")


@pytest.mark.parametrize("attr, value, fragment", [
    ("padding", [10**6] * 4, "each at most 16384"),
    ("padding", [10**30] * 4, "within +-2^53"),
    ("stride", [10**6, 10**6], "each at most 16384"),
    ("stride", [10**30, 1], "within +-2^53"),
    ("dilation", [10**12, 10**12], "each at most 16384"),
    ("padding", [3, 3, 3, 3], "exceeds the dilated kernel extent 3x3 minus 1"),
    ("groups", 10**9, "at most 65536"),
])
def test_conv_attrs_bounded(model8, data8, tmp_path, attr, value, fragment):
    p = forge.model_with(model8, tmp_path / "attr.hwsim", lambda d: forge.node(d, "conv1")["attrs"].update({attr: value}))
    run_model(p, data8, "conv1", attr, fragment)


def test_pool_kernel_bounded(model8, data8, tmp_path):
    p = forge.model_with(model8, tmp_path / "pool.hwsim",
                         lambda d: forge.node(d, "pool")["attrs"].update(kernel=[10**9, 10**9]))
    run_model(p, data8, "pool", "kernel", "at most 16384")


def test_input_shape_bounded(model8, data8, tmp_path):
    p = forge.model_with(model8, tmp_path / "in.hwsim", lambda d: d["inputs"][0].update(shape=[1, 10**6, 10**6]))
    run_model(p, data8, "shape", "H and W <= 16384")


@pytest.mark.parametrize("shape", [(4, 1, 0, 3), (0, 1, 3, 3)])
def test_zero_size_kernel_refused_at_validation(model8, data8, tmp_path, shape):
    p = forge.model_with(model8, tmp_path / "zero.hwsim", tensor_members={"conv1.weight.npy": forge.npy(np.zeros(shape, np.float32))})
    run_model(p, data8, "conv1", "zero-size")


def test_negative_batchnorm_variance(model8, data8, tmp_path):
    var = np.array([1.0, -0.5, 1.0, 1.0], np.float32)
    p = forge.model_with(model8, tmp_path / "var.hwsim", tensor_members={"bn1.running_var.npy": forge.npy(var)})
    run_model(p, data8, "bn1", "'bn1.running_var'", "-0.5", "channel 1", ">= 0")


def test_batchnorm_scale_overflowing_float32(model8, data8, tmp_path):
    gamma = np.full(4, 3e38, np.float32)
    var = np.zeros(4, np.float32)
    p = forge.model_with(model8, tmp_path / "bn.hwsim", lambda d: forge.node(d, "bn1")["attrs"].update(eps=1e-30),
                         tensor_members={"bn1.weight.npy": forge.npy(gamma)})
    forge.write_zip(tmp_path / "bn2.hwsim", {**forge.members(p), "tensors.npz": forge.npz_of(
        {**forge.tensors_of(p), "bn1.running_var.npy": forge.npy(var)})})
    run_model(tmp_path / "bn2.hwsim", data8, "bn1", "overflow float32", "folded BatchNorm scale")


@pytest.mark.parametrize("value", [np.inf, np.float32(np.nan)])
def test_non_finite_tensor_names_file_and_tensor(model8, data8, tmp_path, value):
    w = np.ones((10, 4), np.float32)
    w[2, 1] = value
    p = forge.model_with(model8, tmp_path / "nf.hwsim", tensor_members={"fc.weight.npy": forge.npy(w)})
    run_model(p, data8, "'fc.weight'", "NaN or Inf")


def test_float64_tensor_refused(model8, data8, tmp_path):
    p = forge.model_with(model8, tmp_path / "f64.hwsim", tensor_members={"fc.weight.npy": forge.npy(np.ones((10, 4)))})
    run_model(p, data8, "'fc.weight'", "float32")


def test_duplicate_zip_member(model8, data8, tmp_path):
    p = tmp_path / "dup.hwsim"
    ms = forge.members(model8)
    with pytest.warns(UserWarning):
        with zipfile.ZipFile(p, "w") as zf:
            for k, v in ms.items():
                zf.writestr(k, v)
            zf.writestr("graph.json", ms["graph.json"])
    run_model(p, data8, "duplicate member 'graph.json'")


@pytest.mark.parametrize("cmd", ["run", "compare", "golden", "export-onnx", "inspect"])
def test_model_path_too_long(cmd, data8, tmp_path):
    out = [] if cmd == "inspect" else ["-o", tmp_path / ("g" if cmd == "golden" else "o.onnx" if cmd == "export-onnx" else "o.json")]
    one_line_error(invoke(cmd, "-m", "x" * 5000 + ".hwsim", "-d", data8, *out), "--model xxx", "unusable path")


# ----------------------------------------------------------------------------- profiles
def test_non_utf8_profile(tmp_path):
    p = tmp_path / "latin.toml"
    p.write_bytes('extends = "int8-tflite"\ndescription = "Zürich"\n'.encode("latin1"))
    one_line_error(invoke("profiles", "show", p), str(p), "not UTF-8", "0xfc")


def test_non_utf8_profile_in_a_real_process(tmp_path):
    """The same through a fresh interpreter: stderr is one line, no traceback, exit 1."""
    p = tmp_path / "latin.toml"
    p.write_bytes(b'description = "\xff"\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run([sys.executable, "-m", "hwsim.cli", "profiles", "show", str(p)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("Error: ") and "not UTF-8" in r.stderr and str(p) in r.stderr


def test_extends_is_relative_to_the_profile_file(tmp_path, monkeypatch):
    d = tmp_path / "profiles"
    (d / "base").mkdir(parents=True)
    (d / "base" / "parent.toml").write_text('extends = "int8-tflite"\n[accumulator]\nbits = 20\n')
    (d / "child.toml").write_text('extends = "base/parent.toml"\n[accumulator]\noverflow = "saturate"\n')
    monkeypatch.chdir(tmp_path)  # neither the profile's directory nor the parent's
    res = invoke("profiles", "show", d / "child.toml", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["accumulator"]["bits"] == 20 and got["accumulator"]["overflow"] == "saturate"
    # a missing parent names the resolved path
    (d / "orphan.toml").write_text('extends = "nope.toml"\n')
    one_line_error(invoke("profiles", "show", d / "orphan.toml"), str(d / "nope.toml"), "not found")


def test_user_profile_does_not_inherit_the_parents_description(tmp_path):
    from hwsim.profile import load_profile

    p = tmp_path / "acc16.toml"
    p.write_text('extends = "int8-tflite"\n[accumulator]\nbits = 16\noverflow = "saturate"\n')
    prof = load_profile(str(p))
    parent = load_profile("int8-tflite")
    assert prof.description != parent.description
    assert prof.description == "extends int8-tflite; accumulator.bits=16, accumulator.overflow=saturate"
    res = invoke("profiles", "show", p, "--json")
    assert json.loads(res.output)["description"] == prof.description
    # --set says what it changed, too
    s = load_profile("int8-tflite", {"accumulator.bits": "16"})
    assert s.description.endswith("[changed by --set: accumulator.bits=16]")


def test_int8_pytorch_summary_differs_from_int8_fbgemm():
    from hwsim.profile import load_profile

    a, b = load_profile("int8-pytorch").describe(), load_profile("int8-fbgemm").describe()
    assert a != b and "bias:float32" in a


def test_first_layer_bits_profile_spelling(tmp_path):
    from hwsim.profile import SCHEMA, load_profile, profile_toml

    p = load_profile("w4a4", {"first_layer.bits": "profile"})
    old = load_profile("w4a4", {"first_layer.bits": "unbounded"})
    assert p.first_layer.bits is None and old.first_layer.bits is None
    assert 'bits = "profile"' in profile_toml(p) and '"profile"' in SCHEMA["first_layer.bits"].describe()
    f = tmp_path / "p.toml"
    f.write_text(profile_toml(p))
    assert load_profile(str(f)) == p
    one_line_error(invoke("profiles", "show", "w4a4", "--set", "first_layer.bits=same"),
                   "'first_layer.bits'", 'or "profile"')


@pytest.mark.parametrize("text, fragments", [
    ('extends = "a"\n' * 1 + "[weights]\nbits = nan\n", ["weights.bits", "nan"]),
    ("[activations]\npercentile = inf\n", ["activations.percentile", "inf"]),
    ("[weights]\nstep_scale = nan\n", ["weights.step_scale", "nan"]),
    ('extends = 7\n', ["'extends' must be a profile name or path"]),
    ("[weights]\nbits = 1979-05-27\n", ["weights.bits"]),
    ('extends = "' + "a" * 5000 + '.toml"\n', ["profile"]),
])
def test_bad_profile_values(tmp_path, text, fragments):
    p = tmp_path / "bad.toml"
    p.write_text(text.replace('extends = "a"\n', ""))
    one_line_error(invoke("profiles", "show", p), *fragments)


def test_extends_cycle_and_depth(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    one_line_error(invoke("profiles", "show", tmp_path / "a.toml"), "cycle")


# ----------------------------------------------------------------------------- data
def _npz(tmp_path, **arrays) -> str:
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return f"npz:{p}"


def test_uint64_labels_above_2_63_refused(model8, tmp_path):
    x = np.zeros((20, 8, 8), np.uint8)
    y = (np.arange(20) % 10).astype(np.uint64)
    y[3] = np.uint64(2**63 + 5)
    spec = _npz(tmp_path, x=x, y=y)
    one_line_error(invoke("run", "-m", model8, "-d", spec, "-q"), "d.npz", "label 9223372036854775813", "out of range")


def test_npz_data_header_declaring_huge_shape(model8, tmp_path):
    p = tmp_path / "h.npz"
    p.write_bytes(forge.npz_of({"x.npy": forge.npy_with_header(f"{{'descr': '|u1', 'fortran_order': False, 'shape': {(10**9, 10**9, 1)}, }}", b"\0" * 64),
                                "y.npy": forge.npy(np.zeros(10, np.int64))}))
    one_line_error(invoke("run", "-m", model8, "-d", f"npz:{p}", "-q"), "h.npz", "x.npy", "needs", "holds 64")


def test_npz_data_non_finite_and_out_of_range_images(model8, tmp_path):
    x = np.zeros((20, 8, 8), np.float32)
    x[0, 0, 0] = np.nan
    one_line_error(invoke("run", "-m", model8, "-d", _npz(tmp_path, x=x, y=np.arange(20) % 10), "-q"), "NaN or Inf")


# ----------------------------------------------------------------------------- outputs
OUTPUT_COMMANDS = {
    "run": lambda m, d, out: ["run", "-m", m, "-d", d, "-q", "-o", out],
    "sweep": lambda m, d, out: ["sweep", "-p", "int8-tflite", "-m", m, "-d", d, "-q", "-o", out],
    "compare": lambda m, d, out: ["compare", "-m", m, "-d", d, "-q", "-o", out],
    "export-onnx": lambda m, d, out: ["export-onnx", "-m", m, "-d", d, "-o", out],
    "export": lambda m, d, out: ["export", "ckpt.pt", "-o", out],
    "train": lambda m, d, out: ["train", "-d", d, "--epochs", "1", "-q", "-o", out],
    "train --export": lambda m, d, out: ["train", "-d", d, "--epochs", "1", "-q", "--export", out],
}
SUFFIX = {"run": ".json", "sweep": ".csv", "compare": ".json", "export-onnx": ".onnx", "export": ".hwsim",
          "train": ".pt", "train --export": ".hwsim"}


@pytest.fixture()
def readonly_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    yield d
    d.chmod(0o755)


@pytest.mark.parametrize("cmd", list(OUTPUT_COMMANDS))
@pytest.mark.parametrize("where", ["missing-dir", "read-only-dir", "a-directory", "read-only-file", "proc"])
def test_unwritable_outputs_fail_before_any_work(cmd, where, model8, data8, tmp_path, readonly_dir):
    name = "out" + SUFFIX[cmd]
    if where == "missing-dir":
        out, frag = tmp_path / "no" / "such" / name, "does not exist"
    elif where == "read-only-dir":
        out, frag = readonly_dir / name, "read-only"
    elif where == "a-directory":
        out, frag = tmp_path / "adir", "is a directory"
        out.mkdir()
    elif where == "read-only-file":
        out, frag = tmp_path / name, "read-only"
        out.write_text("keep")
        out.chmod(0o444)
    else:
        out, frag = Path("/proc") / name, "/proc"
    before = listing(tmp_path)
    res = invoke(*OUTPUT_COMMANDS[cmd](model8, data8, out))
    one_line_error(res, str(out), frag)
    assert listing(tmp_path) == before  # nothing written, nothing removed
    assert "test accuracy" not in res.output and "wrote" not in res.output  # no work was done
    if where == "read-only-file":
        assert out.read_text() == "keep"


@pytest.mark.parametrize("where", ["missing-dir", "read-only-dir", "a-file"])
def test_golden_output_dir_checked_first(where, model8, data8, tmp_path, readonly_dir):
    if where == "missing-dir":
        out, frag = tmp_path / "no" / "g", "does not exist"
    elif where == "read-only-dir":
        out, frag = readonly_dir / "g", "read-only"
    else:
        out, frag = tmp_path / "f", "not an empty directory"
        out.write_text("x")
    before = listing(tmp_path)
    one_line_error(invoke("golden", "-m", model8, "-d", data8, "-q", "-o", out), str(out), frag)
    assert listing(tmp_path) == before


def test_compare_leaves_no_partial_output(model8, data8, tmp_path, readonly_dir):
    """--out writable but --plot not: refused up front, the JSON is not written either."""
    out = tmp_path / "c.json"
    one_line_error(invoke("compare", "-m", model8, "-d", data8, "-q", "-o", out, "--plot", readonly_dir / "c.png"),
                   "--plot", "read-only")
    assert not out.exists()
    one_line_error(invoke("compare", "-m", model8, "-d", data8, "-q", "-o", out, "--plot", tmp_path / "c.pdf"),
                   "--plot", "'.pdf'", ".png")
    assert not out.exists()


def test_sweep_plot_unwritable_refused_before_the_sweep(model8, data8, tmp_path):
    out = tmp_path / "s.csv"
    one_line_error(invoke("sweep", "-p", "int8-tflite", "-m", model8, "-d", data8, "-q", "-o", out,
                          "--plot", tmp_path / "no" / "s.png"), "--plot", "does not exist")
    assert not out.exists()


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("args, fragment", [
    (["run", "--batch-size", "0"], "--batch-size"),
    (["run", "--batch-size", "-1"], "--batch-size"),
    (["compare", "--batch-size", "0"], "--batch-size"),
    (["sweep", "-p", "w4a4", "--batch-size", "0"], "--batch-size"),
    (["run", "--limit", "0"], "--limit"),
    (["golden", "--n", "0", "-o", "g"], "--n"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--weight-decay", "-1"], "--weight-decay"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--kure", "nan"], "--kure"),
])
def test_option_ranges(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke(*args), fragment)
    assert list(tmp_path.iterdir()) == []


def test_golden_n_above_the_test_split(model8, data8, tmp_path):
    out = tmp_path / "g"
    one_line_error(invoke("golden", "-m", model8, "-d", data8, "-q", "--n", "100000", "-o", out),
                   "--n 100000", "only 20 test images", "1..20")
    assert not out.exists()


def test_inspect_model_given_twice(model8, tmp_path):
    one_line_error(invoke("inspect", model8, "-m", tmp_path / "other.hwsim"), "given twice")
    one_line_error(invoke("inspect", model8, "--set", "accumulator.bits=16"), "--set", "--profile")


def test_float_model_overflowing_float32_on_the_data(data8, tmp_path):
    """Finite float32 weights that pass the loader, but whose float run overflows on real data."""
    g = tiny_cnn(seed=0, classes=10)
    for k in list(g.tensors):
        if k.endswith("weight") and g.tensors[k].ndim > 1:
            g.tensors[k] = (g.tensors[k] * np.float32(1e30)).astype(np.float32)
    p = tmp_path / "big.hwsim"
    save_model(g, p)
    run_model(p, data8, "overflow float32", workdir=tmp_path)
