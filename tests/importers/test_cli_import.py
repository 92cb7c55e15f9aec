"""`hwsim import` and `-m model.onnx` on every command; every bad input is one line, nonzero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from tests.conftest import invoke  # noqa: E402,F401  (the one CLI runner the tests share)
from hwsim.floatref import normalize, run_float  # noqa: E402
from hwsim.graph import load_model  # noqa: E402
from hwsim.importers.onnx import import_onnx  # noqa: E402
from tests.importers.onnxnets import model, ort_run, rand, save  # noqa: E402


def one_line_error(res, *fragments):
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and len(res.output.strip().splitlines()) == 1, res.output
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


def digits_net(rng, in_shape=("N", 1, 8, 8), c=4, classes=10):
    """conv-relu-gap-flatten-gemm on 1x8x8 images, 10 classes."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc")]
    return model(nodes, {"w": rand(rng, c, in_shape[1], 3, 3, scale=1.0), "b": rand(rng, c),
                         "fw": rand(rng, classes, c, scale=1.0), "fb": rand(rng, classes)}, in_shape)


@pytest.fixture(scope="module")
def onnx8(tmp_path_factory):
    return save(digits_net(np.random.default_rng(0)), tmp_path_factory.mktemp("o") / "net.onnx")


# ----------------------------------------------------------------------------- what works
def test_import_writes_a_model_with_the_normalisation(onnx8, tmp_path):
    out = tmp_path / "net.hwsim"
    res = invoke("import", onnx8, "-o", out, "--mean", "0.1307", "--std", "0.3081")
    assert res.exit_code == 0, res.output
    assert f"wrote {out}: 5 nodes" in res.output
    g = load_model(out)
    assert g.inputs[0].shape == (1, 8, 8) and g.inputs[0].mean == (0.1307,) and g.inputs[0].std == (0.3081,)
    assert [n.op for n in g.nodes] == ["conv2d", "relu", "global_avgpool", "flatten", "linear"]
    # the model sees (pixels - mean) / std: the .hwsim file's float forward equals ONNX Runtime on that
    pixels = np.random.default_rng(1).random((6, 1, 8, 8), dtype=np.float32)
    x = normalize(g, pixels)
    np.testing.assert_allclose(run_float(g, x), ort_run(onnx.load(onnx8), x), rtol=1e-5, atol=1e-5)


def test_run_and_inspect_take_an_onnx_model_directly(onnx8, data8, tmp_path):
    res = invoke("run", "-m", onnx8, "-d", data8, "-p", "int8-tflite", "--json", "-q")
    assert res.exit_code == 0, res.output
    via_file = tmp_path / "same.hwsim"
    assert invoke("import", onnx8, "-o", via_file).exit_code == 0
    res2 = invoke("run", "-m", via_file, "-d", data8, "-p", "int8-tflite", "--json", "-q")
    import json

    a, b = json.loads(res.stdout), json.loads(res2.stdout)
    assert a["images"] == 20 and a["model"] == onnx8
    for k in ("float_accuracy", "sim_accuracy", "agreement_with_float", "overflow_events"):
        assert a[k] == b[k], k  # the same graph, whether imported on the fly or from the file
    res = invoke("inspect", "-m", onnx8)
    assert res.exit_code == 0 and "source=onnx" in res.output, res.output


@pytest.mark.parametrize("cmd,extra", [
    ("sweep", ("-p", "int8-tflite", "-p", "int4-pow2", "--limit", "5")),
    ("compare", ("--limit", "5")),
    ("golden", ("--n", "2", "-o", "{tmp}/golden")),
    ("export-onnx", ("-o", "{tmp}/q.onnx")),
])
def test_every_model_command_takes_an_onnx_model(onnx8, data8, tmp_path, cmd, extra):
    res = invoke(cmd, "-m", onnx8, "-d", data8, "-q", *(e.format(tmp=tmp_path) for e in extra))
    assert res.exit_code == 0, res.output


def test_input_shape_option_for_a_dynamic_model(tmp_path, data8):
    p = save(digits_net(np.random.default_rng(2), ("N", 1, "H", "W")), tmp_path / "dyn.onnx")
    one_line_error(invoke("import", p, "-o", tmp_path / "a.hwsim"), "dynamic shape ['N', 1, 'H', 'W']",
                   "--input-shape C,H,W")
    one_line_error(invoke("run", "-m", p, "-d", data8, "-q"), "dynamic shape", "--input-shape")
    res = invoke("import", p, "-o", tmp_path / "a.hwsim", "--input-shape", "1,8,8")
    assert res.exit_code == 0, res.output
    assert load_model(tmp_path / "a.hwsim").inputs[0].shape == (1, 8, 8)


# ----------------------------------------------------------------------------- bad inputs
def test_unsupported_op_names_node_and_op(tmp_path):
    nodes = [helper.make_node("LeakyRelu", ["x"], ["y"], name="act1", alpha=0.1)]
    p = save(model(nodes, {}), tmp_path / "leaky.onnx")
    one_line_error(invoke("import", p, "-o", tmp_path / "o.hwsim"),
                   "node 'act1' (op LeakyRelu): not supported by the hwsim importer (supported: Add, AveragePool")


def test_truncated_onnx_files(onnx8, tmp_path):
    raw = open(onnx8, "rb").read()
    for cut in (1, 12, len(raw) // 3, len(raw) // 2, len(raw) - 40, len(raw) - 1):
        p = tmp_path / f"cut{cut}.onnx"
        p.write_bytes(raw[:cut])
        one_line_error(invoke("import", p, "-o", tmp_path / "o.hwsim"), f"{p}: not a valid ONNX model")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    one_line_error(invoke("import", empty, "-o", tmp_path / "o.hwsim"), "not a valid ONNX model")


def test_non_constant_weights(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "x"], ["y"], name="selfconv")]
    p = save(model(nodes, {}, (1, 1, 3, 3)), tmp_path / "w.onnx")
    one_line_error(invoke("import", p, "-o", tmp_path / "o.hwsim"),
                   "node 'selfconv' (op Conv): weight 'x' is not a constant")


@pytest.mark.parametrize("opts,msg", [
    (("--mean", "0.1,0.2"), "--mean 0.1,0.2: 2 values, but the model has 1 input channel(s) (give 1 value or 1)"),
    (("--std", "0.5,0.5,0.5"), "--std 0.5,0.5,0.5: 3 values"),
    (("--std", "0"), "--std 0: every std must be > 0"),
    (("--mean", "a"), "--mean 'a': give comma-separated numbers"),
    (("--std", "nan"), "--std 'nan': give finite numbers"),
    (("--input-shape", "1,8"), "--input-shape '1,8': give the per-sample input shape as 3 positive integers"),
    (("--input-shape", "1,8,9"), "input 'x' has the fixed shape ['N', 1, 8, 8] (W = 8, not 9)"),
])
def test_bad_normalisation_and_shape_options(onnx8, tmp_path, opts, msg):
    one_line_error(invoke("import", onnx8, "-o", tmp_path / "o.hwsim", *opts), msg)


def test_external_data_refused(tmp_path):
    m = digits_net(np.random.default_rng(3))
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    one_line_error(invoke("import", tmp_path / "ext.onnx", "-o", tmp_path / "o.hwsim"),
                   "tensor 'w' is stored as external data")


@pytest.mark.parametrize("build,msg", [
    (lambda rng: model([helper.make_node("Relu", ["x"], ["y"])], {}, opset=12), "ONNX opset 12 (hwsim imports opset 13"),
    (lambda rng: model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")],
                       {"lo": np.array(-1, np.float32), "hi": np.array(1, np.float32)}),
     "node 'clip' (op Clip): Clip(min=-1.0, max=1.0) (hwsim has relu = Clip(0, inf) and relu6"),
    (lambda rng: model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "c"], ["y"], name="add")],
                       {"c": rand(rng, 3, 1, 1)}), "node 'add' (op Add): adds a constant that is not the bias"),
    (lambda rng: model([helper.make_node("Mul", ["x", "c"], ["y"], name="scale")], {"c": np.array(2, np.float32)}),
     "node 'scale' (op Mul): multiplies by a constant"),
    (lambda rng: model([helper.make_node("Reshape", ["x", "t"], ["y"], name="rs")], {"t": np.array([-1, 8], np.int64)}),
     "node 'rs' (op Reshape): target shape [-1, 8]"),
    (lambda rng: model([helper.make_node("Concat", ["x", "x"], ["y"], name="cat", axis=2)], {}),
     "node 'cat' (op Concat): axis 2 (hwsim concatenates channels"),
    (lambda rng: model([helper.make_node("Relu", ["x"], ["y"])], {}, in_shape=("N", 8)),
     "input 'x': shape ['N', 8] (hwsim models take images (N, C, H, W)"),
    (lambda rng: model([helper.make_node("Identity", ["x"], ["y"])], {}),
     "output 'y' is a constant or the input itself"),
])
def test_refused_models(tmp_path, build, msg):
    p = save(build(np.random.default_rng(4)), tmp_path / "bad.onnx")
    one_line_error(invoke("import", p, "-o", tmp_path / "o.hwsim"), msg)


def test_a_relu_only_model_is_one_node(tmp_path):
    """(the refused case above is the *input* as output; a single op is a model)"""
    m = model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])], {})
    g = import_onnx(save(m, tmp_path / "r.onnx"))
    assert [n.op for n in g.nodes] == ["relu"] and g.outputs == [g.nodes[0].name]


def test_other_files_say_what_they_are(tmp_path, data8):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"PK\x03\x04 not really")
    one_line_error(invoke("run", "-m", pt, "-d", data8), "a PyTorch checkpoint is not a model file",
                   "--model-def module:factory --weights model.pt")
    tfl = tmp_path / "model.tflite"
    tfl.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40)
    one_line_error(invoke("inspect", "-m", tfl), "model.tflite: a LiteRT flatbuffer without a subgraph")
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\xff\xfe garbage")
    one_line_error(invoke("import", junk, "-o", tmp_path / "o.hwsim"), "not a model file hwsim reads (supported: .hwsim, .onnx")
    one_line_error(invoke("run", "-m", tmp_path / "missing.onnx", "-d", data8), "missing.onnx: no such file")
    one_line_error(invoke("import", tmp_path / "missing.onnx", "-o", tmp_path / "o.hwsim"), "no such file")


def test_output_checked_before_work(onnx8, tmp_path):
    one_line_error(invoke("import", onnx8, "-o", tmp_path / "o.onnx"), "unsupported extension '.onnx' (allowed: .hwsim)")
    one_line_error(invoke("import", onnx8, "-o", tmp_path / "nodir" / "o.hwsim"), "does not exist")


BOOT = r"""
import sys
class _NoOnnx:
    def find_spec(self, name, path=None, target=None):
        if name == "onnx" or name.startswith("onnx."):
            raise ModuleNotFoundError("No module named 'onnx'", name="onnx")
        return None
sys.meta_path.insert(0, _NoOnnx())
import hwsim, hwsim.cli, hwsim.experiments, hwsim.importers
assert not any(m == "onnx" or m.startswith("onnx.") for m in sys.modules), "importing hwsim imported onnx"
from hwsim.cli import main
sys.argv = ["hwsim"] + sys.argv[1:]
main()
"""


def test_import_and_run_need_no_torch(onnx8, tmp_path):
    from tests.test_no_torch import BOOT as NO_TORCH

    out = tmp_path / "o.hwsim"
    r = subprocess.run([sys.executable, "-c", NO_TORCH, "import", onnx8, "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and out.exists(), r.stderr


def test_without_onnx_hwsim_imports_and_import_says_what_to_install(onnx8, tmp_path):
    r = subprocess.run([sys.executable, "-c", BOOT, "import", onnx8, "-o", str(tmp_path / "o.hwsim")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "needs the onnx package: pip install 'hwsim[onnx]'" in err[0], err[0]


# ----------------------------------------------------------------------------- malformed files (found by fuzzing)
def _edited(tmp_path, fn):
    m = digits_net(np.random.default_rng(0))
    fn(m)
    return save(m, tmp_path / "edited.onnx")


def test_malformed_fields_are_one_line(tmp_path):
    def dims_lie(m):  # an initializer whose dims do not match its data (onnx.checker lets it through)
        t = next(t for t in m.graph.initializer if t.name == "fb")
        t.dims[:] = [3]  # fewer values than stored: onnx.checker and shape inference accept it

    def input_type(m):  # an element type no TensorProto.DataType names
        m.graph.input[0].type.tensor_type.elem_type = 75

    def auto_pad_bytes(m):  # a string attribute that is not UTF-8
        m.graph.node[0].attribute.append(helper.make_attribute("auto_pad", b"\xe6\x01"))

    for fn, msg in ((dims_lie, "tensor 'fb' (dims [3]): unreadable"), (input_type, "element type unknown (75)"),
                    (auto_pad_bytes, "auto_pad")):
        one_line_error(invoke("import", _edited(tmp_path, fn), "-o", tmp_path / "o.hwsim"), msg)


def test_byte_flips_give_a_model_or_one_line(tmp_path):
    """Seeded mutations of a valid file: every outcome is a model or an HwsimError (never another exception)."""
    from hwsim.errors import HwsimError

    raw = open(save(digits_net(np.random.default_rng(0)), tmp_path / "seed.onnx"), "rb").read()
    rng = np.random.default_rng(1)
    outcomes = {"ok": 0, "refused": 0}
    for case in range(300):
        buf = bytearray(raw)
        for _ in range(rng.integers(1, 6)):
            buf[rng.integers(0, len(buf))] = rng.integers(0, 256)
        p = tmp_path / "m.onnx"
        p.write_bytes(bytes(buf))
        try:
            import_onnx(p)
            outcomes["ok"] += 1
        except HwsimError as e:
            assert "\n" not in str(e), (case, str(e))
            outcomes["refused"] += 1
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0
