"""Whole networks quantized by onnxruntime.quantization.quantize_static, imported with their own scales kept
(hwsim.given) and run by hwsim under the engine's default profile: every output element identical to ONNX
Runtime's (CPU EP, one thread), graph optimizations on (ORT_ENABLE_ALL: QDQ fused into QLinear kernels) and
off (ORT_DISABLE_ALL: the model as written). Then the same integers under other profiles, and every
constraint a profile cannot meet refused in one line."""

from __future__ import annotations

import json
import logging
import platform
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ortq = pytest.importorskip("onnxruntime.quantization")
torch = pytest.importorskip("torch")

from hwsim.compile import Float32DivisionGrid, Grid, compile_model  # noqa: E402
from hwsim.errors import HwsimError  # noqa: E402
from hwsim.execute import run_quantized  # noqa: E402
from hwsim.given import given_of  # noqa: E402
from hwsim.graph import load_model, save_model  # noqa: E402
from hwsim.importers import import_model  # noqa: E402
from hwsim.profile import load_profile  # noqa: E402
from tests.engines import cpu_flags  # noqa: E402

LEVELS = ("ORT_ENABLE_ALL", "ORT_DISABLE_ALL")
# as tests/test_onnx_export.py: full-range int8 weights on CPUs without VNNI go through u8s8 kernels that
# saturate int16 pair sums (vpmaddubsw), not modelled; QLinearAdd is modelled for MLAS's AVX2/FMA kernel
_FLAGS = cpu_flags()
ENGINE = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64")
    or not ({"avx2", "fma"} <= _FLAGS and _FLAGS & {"avx512_vnni", "avx_vnni", "amx_int8"}),
    reason="ONNX Runtime's MLAS arithmetic modelled on x86-64 with AVX2/FMA and VNNI")


class _Reader(ortq.CalibrationDataReader):
    def __init__(self, x):
        self.it = iter([{"x": x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.it, None)


def _bundled_torch(name):
    """A bundled .hwsim model as its torch module (frontends.pytorch.models), weights loaded by name."""
    from frontends.pytorch.models import build_model

    g = load_model(f"hwsim/models/{name}.hwsim")
    m = build_model(g.metadata["arch"], 10, g.inputs[0].shape[0])
    sd = {}
    for k, v in g.tensors.items():
        mod, role = k.rsplit(".", 1)
        sd[mod.replace("_", ".") + "." + role] = torch.from_numpy(v)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return m.eval(), g.inputs[0]


RANDOM_NETS = ("resnet8", "efficientnet")  # built with torch, random weights and BN statistics (not bundled)


def _random_net(arch):
    """A ResNet-shaped net (hwsim's ResNet-8: conv-BN-ReLU stem, residual blocks with 1x1 shortcuts, global
    pool, linear) or an EfficientNet-style one (MBConv: SiLU = x * Sigmoid(x), squeeze-excite with a sigmoid
    gate) with random BN statistics, as torch.onnx.export writes it."""
    from frontends.pytorch.models import build_model

    torch.manual_seed(0)
    m = build_model(arch, 10, 3).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_var.uniform_(0.5, 2.0)
                mod.running_mean.uniform_(-0.2, 0.2)
    return m, (3, 16, 16), (0.0,), (1.0,)


def _resnet(tmp=None):
    """The ResNet-8 of :func:`_random_net` (tests/importers/test_torch_int8.py uses it)."""
    return _random_net("resnet8")


def _export(m, shape, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.randn(1, *shape), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "N"}}, opset_version=13)
    return str(path)


def _images(net, n, seed):
    """Inputs as the model sees them (normalised): real test images for the bundled models, uniform pixels else."""
    if net in RANDOM_NETS:
        return np.random.default_rng(seed).random((n, 3, 16, 16), dtype=np.float32)
    from hwsim.data import load_dataset

    ds = load_dataset("default")
    _, spec = _bundled_torch(net)
    x = ds.x_test[seed * n:(seed + 1) * n].astype(np.float32)
    m, s = np.float32(spec.mean[0]), np.float32(spec.std[0])
    return ((x - m) / s).astype(np.float32)


def quantizer(tmp):
    """(net, format, per_channel[, activation type]) -> (int8 ONNX path, mean, std): the net exported to ``tmp``
    and quantized by quantize_static (uint8 activations unless asked, int8 weights, 16 calibration images),
    each on first use."""
    cache = {}

    def get(net, fmt, per_channel, act="QUInt8"):
        if (net, "float") not in cache:
            if net in RANDOM_NETS:
                m, shape, mean, std = _random_net(net)
            else:
                m, spec = _bundled_torch(net)
                shape, mean, std = spec.shape, spec.mean, spec.std
            cache[(net, "float")] = (_export(m, shape, tmp / f"{net}.onnx"), mean, std)
        key = (net, fmt, per_channel, act)
        if key not in cache:
            src, mean, std = cache[(net, "float")]
            dst = tmp / f"{net}_{fmt}_{per_channel}_{act}.onnx"
            logging.getLogger().setLevel(logging.ERROR)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ortq.quantize_static(src, str(dst), _Reader(_images(net, 16, 9)), per_channel=per_channel,
                                     quant_format=getattr(ortq.QuantFormat, fmt),
                                     activation_type=getattr(ortq.QuantType, act), weight_type=ortq.QuantType.QInt8)
            cache[key] = (str(dst), mean, std)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    return quantizer(tmp_path_factory.mktemp("given_net"))


def ort_outputs(path, x, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 32]})[0] for i in range(0, len(x), 32)])


def hwsim_outputs(path, mean, std, x, profile=None, settings=None):
    g = import_model(path, mean, std)
    prof = load_profile(profile or given_of(g).profile, settings)
    qg = compile_model(g, prof, None)
    return run_quantized(qg, x).logits, qg


CASES = [(net, fmt, pc) for net in ("smallcnn_robust", "resnet8") for fmt in ("QOperator", "QDQ") for pc in (False, True)]
CASES += [(net, fmt, pc) for net in ("mobilenetv2", "mobilenetv3", "efficientnet") for fmt in ("QOperator", "QDQ")
          for pc in (False, True)]


@ENGINE
@pytest.mark.parametrize("net,fmt,per_channel,level", [c + (lv,) for c in CASES for lv in LEVELS
                                                         if not (c[1] == "QDQ" and lv == "ORT_DISABLE_ALL")])
def test_whole_network_equals_onnxruntime(quantized, net, fmt, per_channel, level):
    """hwsim under the model's default profile (int8-onnxruntime) == ONNX Runtime, every output element
    (the dequantized logits: equal floats are equal integers on one grid). QOperator runs the QLinear
    kernels at both levels; QDQ with optimizations on is fused into them (QDQ off: the next test).
    MobileNetV3 (bundled weights): HardSigmoid has no int8 kernel, so quantize_static leaves DequantizeLinear ->
    HardSigmoid -> QuantizeLinear (float32, both layouts), then QLinearMul for x * hardsigmoid(x) and the SE gate;
    EfficientNet-style: QLinearSigmoid + QLinearMul (SiLU, SE gate), QLinearGlobalAveragePool."""
    path, mean, std = quantized(net, fmt, per_channel)
    x = _images(net, 48, 1)
    ours, qg = hwsim_outputs(path, mean, std, x)
    assert qg.recipe == "given" and qg.profile.name == "int8-onnxruntime"
    assert np.array_equal(ours, ort_outputs(path, x, level))


@ENGINE
@pytest.mark.parametrize("level", LEVELS)
def test_int8_activations_take_the_s8_engine_profile(quantized, level):
    """quantize_static with activation_type QInt8 (QOperator): signed grids, so the import's default profile
    is int8-onnxruntime-s8, equal to ONNX Runtime at both levels; int8-onnxruntime (uint8 activations) is
    refused in one line."""
    path, mean, std = quantized("resnet8", "QOperator", True, "QInt8")
    x = _images("resnet8", 48, 1)
    ours, qg = hwsim_outputs(path, mean, std, x)
    assert qg.profile.name == "int8-onnxruntime-s8"
    assert np.array_equal(ours, ort_outputs(path, x, level))
    with pytest.raises(HwsimError, match="given as int8 .-128, 127. but the profile asks for unsigned"):
        hwsim_outputs(path, mean, std, x, "int8-onnxruntime")


QDQ_OFF = [(net, pc) for net in ("smallcnn_robust", "resnet8", "mobilenetv2", "mobilenetv3", "efficientnet")
           for pc in (False, True)]


@ENGINE
@pytest.mark.parametrize("net,per_channel", QDQ_OFF)
def test_qdq_without_optimizations_equals_the_float_path_profile(quantized, net, per_channel):
    """QDQ under ORT_DISABLE_ALL runs the model as written: DequantizeLinear -> float32 op (MLAS) ->
    QuantizeLinear. The profile int8-onnxruntime-qdq-float (hwsim/mlas.py) gives every output element of ORT's own
    run on 256 inputs (ORT fed batches of 32; Gemm rows >= 2 on both sides), and of the independent test oracle
    tests/importers/onnxnets.ort_float_path on the first 16 (the oracle is slow: numpy loops). The imported
    model's default stays int8-onnxruntime (optimizations on: the fused integers)."""
    from tests.importers.onnxnets import ort_float_path

    path, mean, std = quantized(net, "QDQ", per_channel)
    x = _images(net, 256, 1)
    ours, qg = hwsim_outputs(path, mean, std, x, "int8-onnxruntime-qdq-float")
    assert qg.recipe == "given" and given_of(qg.model).profile == "int8-onnxruntime"
    unfused = ort_outputs(path, x, "ORT_DISABLE_ALL")
    assert np.array_equal(ours, unfused)
    assert np.array_equal(ort_float_path(path, x[:16]), ours[:16])


@ENGINE
def test_qdq_fused_and_unfused_differ_and_each_profile_gives_its_own(quantized):
    """On ResNet-8 (per-channel) the two ORT settings differ on a few outputs; int8-onnxruntime (the import's
    default) gives the fused integers (optimizations on), int8-onnxruntime-qdq-float the float path (off), each
    not the other's."""
    path, mean, std = quantized("resnet8", "QDQ", True)
    x = _images("resnet8", 256, 1)
    fused, unfused = ort_outputs(path, x, "ORT_ENABLE_ALL"), ort_outputs(path, x, "ORT_DISABLE_ALL")
    assert 0 < np.count_nonzero(unfused != fused) < fused.size // 10
    default, _ = hwsim_outputs(path, mean, std, x)
    floatpath, _ = hwsim_outputs(path, mean, std, x, "int8-onnxruntime-qdq-float")
    assert np.array_equal(default, fused) and np.array_equal(floatpath, unfused)


@ENGINE
def test_qdq_float_path_of_a_batch_of_one_is_the_batch_of_one(quantized):
    """ORT's float Gemm takes another MLAS kernel for one row (8 lanes, not the FMA chain): ORT's float path
    depends on the batches it is fed. hwsim's linear sees the executor's batch as its rows, so hwsim with
    batch_size = 1 equals ORT fed one image at a time, and batch_size = 32 equals ORT fed batches of 32."""
    path, mean, std = quantized("resnet8", "QDQ", True)
    x = _images("resnet8", 48, 2)
    g = import_model(path, mean, std)
    qg = compile_model(g, load_profile("int8-onnxruntime-qdq-float"), None)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    ones = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    assert np.array_equal(run_quantized(qg, x, batch_size=1).logits, ones)
    assert np.array_equal(run_quantized(qg, x, batch_size=32).logits, ort_outputs(path, x, "ORT_DISABLE_ALL"))


# ----------------------------------------------------------------------------- the stored form
def test_import_save_load_keeps_the_given_quantization(quantized, tmp_path):
    path, mean, std = quantized("smallcnn_robust", "QOperator", True)
    g = import_model(path, mean, std)
    save_model(g, tmp_path / "m.hwsim")
    h = load_model(tmp_path / "m.hwsim")
    a, b = given_of(g), given_of(h)
    assert b is not None and a.digest() == b.digest() and b.profile == "int8-onnxruntime"
    assert h.metadata["default_profile"] == "int8-onnxruntime" and h.metadata["quantized"] == "qoperator"
    x = _images("smallcnn_robust", 16, 2)
    prof = load_profile("int8-onnxruntime")
    assert np.array_equal(run_quantized(compile_model(g, prof, None), x).logits,
                          run_quantized(compile_model(h, prof, None), x).logits)
    # a bundled (float) model still loads without any given quantization
    assert given_of(load_model("hwsim/models/smallcnn_robust.hwsim")) is None


# ----------------------------------------------------------------------------- the input's QuantizeLinear
def test_input_quantizer_divides_in_float32_as_onnx():
    """ONNX QuantizeLinear computes fl32(x / s), then rounds half to even: activations.input_division =
    "float32" (int8-onnxruntime) equals ONNX Runtime's QuantizeLinear on inputs chosen near ties, where
    hwsim's float64 division (the default, every other profile) differs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    s = np.float32(0.012700649909675121)
    k = rng.integers(-120, 120, 20000).astype(np.float32)
    x = ((k + np.float32(0.5)) * s).astype(np.float32)  # near k + 1/2 steps: the float32 quotient ties
    x = np.nextafter(x, np.where(rng.random(x.size) < 0.5, -np.inf, np.inf).astype(np.float32)).astype(np.float32)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    g = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
                          [helper.make_tensor_value_info("y", TensorProto.INT8, [x.size])],
                          [numpy_helper.from_array(np.array(s, np.float32), "s"),
                           numpy_helper.from_array(np.array(3, np.int8), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0].astype(np.int64)
    grid = Grid(float(s), 3, -128, 127, 8, True)
    assert np.array_equal(Float32DivisionGrid(**grid.to_json()).quantize(x), want)
    assert np.count_nonzero(grid.quantize(x) != want) > 100  # the float64 division: the neighbouring option
    assert load_profile("int8-onnxruntime").activations.input_division == "float32"
    assert load_profile("int8-fbgemm").activations.input_division == "float64"


# ----------------------------------------------------------------------------- what a profile cannot hold
@pytest.mark.parametrize("profile,settings,says", [
    ("int8-onnxruntime", {"weights.scale": "pow2"}, "not powers of two but weights.scale = 'pow2'"),
    ("int8-onnxruntime", {"activations.scale": "pow2"}, "not a power of two, but activations.scale = 'pow2'"),
    ("int8-onnxruntime", {"weights.bits": "4"}, "4-bit weight grid is [-8, 7]"),
    ("int8-onnxruntime", {"weights.granularity": "per_tensor"}, "per-channel given weight scales"),
    ("int8-onnxruntime", {"activations.signed": "true"}, "given as uint8 [0, 255] but the profile asks for signed"),
    ("int8-onnxruntime", {"activations.symmetric": "true"}, "activations.symmetric = true"),
    ("int8-pytorch", {}, "bias.form = 'float32'"),
    ("w4-fp", {}, "weight-only"),
])
def test_a_profile_the_given_numbers_cannot_meet_is_one_line(quantized, profile, settings, says):
    path, mean, std = quantized("smallcnn_robust", "QOperator", True)
    g = import_model(path, mean, std)
    with pytest.raises(HwsimError) as e:
        compile_model(g, load_profile(profile, settings), None)
    msg = str(e.value)
    assert says in msg and "\n" not in msg
    assert "ranges=calibrate" in msg or profile == "int8-pytorch"  # a float bias: no re-quantization helps


# ----------------------------------------------------------------------------- pools with their own output grid
@pytest.mark.parametrize("rounding", ["half_even", "half_away", "floor", "trunc", "stochastic"])
def test_average_pools_with_an_own_output_grid_fast_equals_reference(rounding):
    """quantize_static gives GlobalAveragePool its own output grid: z_y + round(S * s / (s_y * N)) (form
    "exact": that rational rounded once; equal grids: the plain integer mean) and ONNX Runtime's float32
    forms with s_y, z_y; fast == reference bit for bit, and the exact form is the real mean within 1/2 LSB."""
    from fractions import Fraction

    from hwsim import ops

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (3, 4, 7, 7)).astype(np.int64)
    grid = dict(zero_point=17, rounding=rounding, seed=3, scale=0.05396612733602524, out_scale=0.01481823343783617,
                out_zero_point=9)
    for form in ("exact", "float32_multiplier"):
        a = ops.global_avg_pool(x, form=form, **grid)
        assert np.array_equal(a, ops.global_avg_pool(x, form=form, impl="reference", **grid))
    for form in ("exact", "float32_dequantize"):
        a = ops.avg_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1), form=form, **grid)
        assert np.array_equal(a, ops.avg_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1), form=form, impl="reference", **grid))
    exact = ops.global_avg_pool(x, form="exact", **grid)
    real = [(sum(int(v) - 17 for v in x[n, c].ravel()) * Fraction(float(np.float32(grid["scale"])))
             / (Fraction(float(np.float32(grid["out_scale"]))) * 49)) for n, c in np.ndindex(3, 4)]
    assert all(abs(Fraction(int(e) - 9) - r) <= (1 if rounding in ("floor", "trunc", "stochastic") else Fraction(1, 2))
               for e, r in zip(exact.ravel(), real))
    same = dict(grid, out_scale=grid["scale"], out_zero_point=17)
    plain = {k: v for k, v in grid.items() if not k.startswith("out_")}
    assert np.array_equal(ops.global_avg_pool(x, **same), ops.global_avg_pool(x, **plain))


# ----------------------------------------------------------------------------- the command line
@ENGINE
def test_cli_import_then_run_reproduces_onnxruntime_and_reruns_other_hardware(quantized, tmp_path):
    """`hwsim import q.onnx -o m.hwsim`, then `hwsim run -m m.hwsim` with no -p: the engine's profile, and the
    accuracy ONNX Runtime's own outputs give; -p int8-acc16-sat and --set accumulator.bits=16 re-run the same
    integers (given recipe) with overflow events; -m q.onnx works directly."""
    import json

    from hwsim.data import load_dataset
    from tests.importers.test_cli_import import invoke

    path, mean, std = quantized("smallcnn_robust", "QOperator", False)
    out = tmp_path / "m.hwsim"
    r = invoke("import", path, "-o", out, "--mean", mean[0], "--std", std[0])
    assert r.exit_code == 0 and "given qoperator quantization kept" in r.output and "int8-onnxruntime" in r.output
    ds = load_dataset("default")
    from hwsim.data import balanced_prefix

    idx = balanced_prefix(ds.y_test, 64)  # the images `--limit 64` evaluates (every class in proportion)
    _, spec = _bundled_torch("smallcnn_robust")
    x = ((ds.x_test[idx].astype(np.float32) - np.float32(spec.mean[0])) / np.float32(spec.std[0])).astype(np.float32)
    want = float(np.mean(ort_outputs(path, x, "ORT_ENABLE_ALL").argmax(1) == ds.y_test[idx]))
    res = {}
    for args in ((), ("-p", "int8-acc16-sat"), ("--set", "accumulator.bits=16")):
        r = invoke("run", "-m", out, "--limit", 64, "--json", *args)
        assert r.exit_code == 0, r.output
        res[args] = json.loads(r.output)
    base = res[()]
    assert base["profile"] == "int8-onnxruntime" and base["recipe"] == "given" and base["sim_accuracy"] == want
    assert base["overflow_events"] == 0
    for args in (("-p", "int8-acc16-sat"), ("--set", "accumulator.bits=16")):
        assert res[args]["recipe"] == "given" and res[args]["overflow_events"] > 0
    r = invoke("run", "-m", path, "--limit", 8, "--json")  # the .onnx itself (mean 0, std 1 as documented)
    assert r.exit_code == 0 and json.loads(r.output)["profile"] == "int8-onnxruntime"
    r = invoke("inspect", "-m", out, "--json")  # the given quantization as its summary in JSON reports
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["metadata"]["given"]["integer_layers"] == 4


def test_cli_bad_given_inputs_are_one_line(quantized, tmp_path):
    import zipfile

    from tests.importers.test_cli_import import invoke, one_line_error

    one_line_error(invoke("run", "-m", "smallcnn_robust", "--limit", 4, "--set", "ranges=given"),
                   "ranges = 'given' but the model has no given quantization")
    one_line_error(invoke("run", "-m", "smallcnn_robust", "--limit", 4, "--set", "ranges=kept"),
                   "'ranges'", "'auto', 'calibrate', 'given'")
    path, mean, std = quantized("smallcnn_robust", "QOperator", True)
    one_line_error(invoke("run", "-m", path, "--limit", 4, "-p", "int4-pow2"), "int4-pow2", "ranges=calibrate")
    r = invoke("run", "-m", path, "--limit", 4, "-p", "int4-pow2", "--set", "ranges=calibrate", "--json")
    assert r.exit_code == 0, r.output  # re-quantizing the dequantized model, asked for explicitly
    good = tmp_path / "m.hwsim"
    assert invoke("import", path, "-o", good).exit_code == 0
    members = {}
    with zipfile.ZipFile(good) as z:
        for n in z.namelist():
            members[n] = z.read(n)
    assert {"given.json", "given.npz"} <= set(members)

    def write(name, drop=(), **repl):
        p = tmp_path / name
        with zipfile.ZipFile(p, "w") as z:
            for n, b in members.items():
                if n not in drop:
                    z.writestr(n, repl.get(n.replace(".", "_"), b))
        return p

    one_line_error(invoke("run", "-m", write("a.hwsim", drop=("given.npz",)), "--limit", 2), "without its pair")
    doc = json.loads(members["given.json"])
    doc["version"] = 2
    one_line_error(invoke("run", "-m", write("b.hwsim", given_json=json.dumps(doc).encode()), "--limit", 2),
                   "given.json", "unsupported version 2")
    doc = json.loads(members["given.json"])
    t = next(iter(doc["grids"]))
    doc["grids"][t]["zero_point"] = 300
    one_line_error(invoke("run", "-m", write("c.hwsim", given_json=json.dumps(doc).encode()), "--limit", 2),
                   f"grids[{t!r}].zero_point 300")
    one_line_error(invoke("run", "-m", write("d.hwsim", given_npz=members["given.npz"][:100]), "--limit", 2),
                   "given.npz")


@ENGINE
@pytest.mark.parametrize("net,fmt,act", [("mobilenetv2", "QDQ", "QUInt8"), ("mobilenetv3", "QOperator", "QUInt8"),
                                         ("resnet8", "QOperator", "QInt8")])
def test_imported_integers_export_back_to_onnx_runtime(quantized, net, fmt, act):
    """import -> compile under the model's engine profile (int8-onnxruntime; -s8 for int8 activations) -> hwsim's
    export in both layouts (float input, its own QuantizeLinear) -> ONNX Runtime with optimizations on: the same
    outputs as hwsim (pools' own output grids, MobileNetV3's hardsigmoid tables as Gather, QLinearMul)."""
    from hwsim.onnx_export import to_onnx

    path, mean, std = quantized(net, fmt, True, act)
    x = _images(net, 32, 3)
    ours, qg = hwsim_outputs(path, mean, std, x)
    assert qg.profile.name == ("int8-onnxruntime-s8" if act == "QInt8" else "int8-onnxruntime")
    for layout in ("qoperator",) if act == "QInt8" else ("qoperator", "qdq"):  # int8 QDQ: refused (semantics §11)
        proto = to_onnx(qg, float_input=True, format=layout)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
        assert np.array_equal(out[qg.output_name + "::dequantized"].reshape(ours.shape), ours), layout


def test_mutated_int8_files_import_or_give_one_line(quantized, tmp_path):
    """Seeded byte flips and truncations of both layouts through the whole import (parse, float shadow,
    float importer, given numbers): a validated graph or one HwsimError line, never another exception."""
    paths = [quantized("resnet8", fmt, True)[0] for fmt in ("QDQ", "QOperator")]
    seeds = [open(p, "rb").read() for p in paths]
    rng = np.random.default_rng(4)
    outcomes = set()
    for case in range(60):
        buf = bytearray(seeds[case % 2])
        if case % 3:
            for _ in range(rng.integers(1, 6)):
                buf[rng.integers(0, len(buf))] = rng.integers(0, 256)
        else:
            buf = buf[:rng.integers(0, len(buf))]
        p = tmp_path / f"m{case}.onnx"
        p.write_bytes(bytes(buf))
        try:
            g = import_model(p)
            outcomes.add("model" if given_of(g) is not None else "float")
        except HwsimError as e:
            assert "\n" not in str(e)
            outcomes.add("error")
    assert "error" in outcomes


@ENGINE
@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_a_flatten_before_the_first_quantize_linear(tmp_path, fmt):
    """Flatten -> Gemm -> Relu -> Gemm (onnx.helper): the model quantizes its input after the Flatten; hwsim
    quantizes the image on that grid (a value-moving op commutes with the quantizer) and equals ONNX Runtime."""
    from onnx import helper

    from tests.importers.onnxnets import model, rand, save

    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["a"], name="fc1", transB=1),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    m = model(nodes, {"w1": rand(rng, 12, 48), "b1": rand(rng, 12), "w2": rand(rng, 12, 5), "b2": rand(rng, 5)},
              ("N", 3, 4, 4))
    x = rng.random((64, 3, 4, 4), dtype=np.float32)
    dst = tmp_path / "q.onnx"
    logging.getLogger().setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ortq.quantize_static(save(m, tmp_path / "f.onnx"), str(dst), _Reader(x[:16]), per_channel=True,
                             quant_format=getattr(ortq.QuantFormat, fmt))
    ours, _ = hwsim_outputs(str(dst), None, None, x)
    for level in LEVELS:
        assert np.array_equal(ours, ort_outputs(str(dst), x, level))
