"""Given quantization: the scales, zero points, integer weights and biases onnxruntime.quantization writes,
read back from its QDQ and QOperator layouts (they must agree), recomputed from the float model, and
ONNX QuantizeLinear's rounding against ONNX Runtime."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ortq = pytest.importorskip("onnxruntime.quantization")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from hwsim.errors import HwsimError  # noqa: E402
from hwsim.importers.given import QuantParams, parse_given  # noqa: E402
from hwsim.importers.onnx import import_onnx  # noqa: E402
from tests.engines import ort_session  # noqa: E402
from tests.importers.onnxnets import mlas_conv_f32, mlas_strides, model, ort_float_path, rand, save  # noqa: E402

MAC = ("conv2d", "linear")


class _Reader(ortq.CalibrationDataReader):
    def __init__(self, shape, n=8, seed=0):
        rng = np.random.default_rng(seed)
        self.it = iter([{"x": rng.random((1, *shape), dtype=np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.it, None)


def _quantize(src, dst, shape, fmt, per_channel, act):
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's "consider pre-processing" advice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ortq.quantize_static(str(src), str(dst), _Reader(shape), quant_format=fmt, per_channel=per_channel,
                             activation_type=act, weight_type=ortq.QuantType.QInt8)
    return str(dst)


def _resnet8(tmp):
    from frontends.pytorch.models import build_model

    torch.manual_seed(0)
    m = build_model("resnet8", 10, 3).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_var.uniform_(0.5, 2.0)
                mod.running_mean.uniform_(-0.2, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.randn(1, 3, 16, 16), str(tmp / "r8.onnx"), dynamo=False, input_names=["x"],
                          opset_version=13)
    return tmp / "r8.onnx", (3, 16, 16)


def _matmul_net(tmp):
    """Flatten -> MatMul + Add (weights [in, out]) -> Relu -> Gemm transB = 0: the transposed layouts."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w1"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b1"], ["a"], name="bias"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc")]
    m = model(nodes, {"w1": rand(rng, 48, 12), "b1": rand(rng, 12), "w2": rand(rng, 12, 5), "b2": rand(rng, 5)},
              ("N", 3, 4, 4))
    return save(m, tmp / "mm.onnx"), (3, 4, 4)


NETS = {"resnet8": _resnet8, "matmul": _matmul_net}
VARIANTS = [(pc, act) for pc in (False, True) for act in ("QUInt8", "QInt8")]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """{(net, per_channel, act): (float path, {"qdq": path, "qoperator": path})}, built on first use."""
    tmp = tmp_path_factory.mktemp("q")
    cache = {}

    def get(net, per_channel, act):
        key = (net, per_channel, act)
        if key not in cache:
            src, shape = NETS[net](tmp) if (net, "src") not in cache else cache[(net, "src")]
            cache[(net, "src")] = (src, shape)
            out = {}
            for name, fmt in (("qdq", ortq.QuantFormat.QDQ), ("qoperator", ortq.QuantFormat.QOperator)):
                out[name] = _quantize(src, tmp / f"{net}_{name}_{per_channel}_{act}.onnx", shape, fmt, per_channel,
                                      getattr(ortq.QuantType, act))
            cache[key] = (str(src), out)
        return cache[key]

    return get


def _same(a: QuantParams | None, b: QuantParams | None):
    assert (a is None) == (b is None)
    if a is not None:
        assert a.dtype == b.dtype and a.axis == b.axis
        assert np.array_equal(a.scale, b.scale) and a.scale.dtype == b.scale.dtype == np.float32
        assert np.array_equal(a.zero_point, b.zero_point)


@pytest.mark.parametrize("per_channel,act", VARIANTS)
@pytest.mark.parametrize("net", sorted(NETS))
def test_qdq_and_qoperator_layouts_give_the_same_numbers(quantized, net, per_channel, act):
    _, paths = quantized(net, per_channel, act)
    qdq, qop = parse_given(paths["qdq"]), parse_given(paths["qoperator"])
    assert (qdq.format, qop.format) == ("qdq", "qoperator")
    _same(qdq.input, qop.input)
    assert qdq.input.dtype == ("uint8" if act == "QUInt8" else "int8")
    keep = ("conv2d", "linear", "add", "global_avgpool")
    a = [lay for lay in qdq.layers if lay.op in keep]
    b = [lay for lay in qop.layers if lay.op in keep]
    assert [x.op for x in a] == [x.op for x in b] and len(a) >= 3
    for x, y in zip(a, b):
        assert x.constants.keys() == y.constants.keys()
        for k, (i, j) in enumerate(zip(x.inputs, y.inputs)):
            if k not in x.constants:
                _same(i, j)
        # a constant operand (the Add after a MatMul): with int8 activations QDQ gives it an asymmetric
        # grid and QOperator a symmetric one (measured); both hold the same constant within a step
        for k, q in x.constants.items():
            fx, fy = x.inputs[k].dequantize(q), y.inputs[k].dequantize(y.constants[k])
            assert np.abs(fx - fy).max() <= max(float(x.inputs[k].scale), float(y.inputs[k].scale))
        _same(x.output, y.output)
        _same(x.weight_qparams, y.weight_qparams)
        if x.op in MAC:
            assert np.array_equal(x.weight, y.weight) and x.weight.dtype == np.int8
            assert (x.weight_qparams.axis == 0) == per_channel
            assert (x.bias is None) == (y.bias is None) == (x.onnx_op == "MatMul") == (y.onnx_op == "QLinearMatMul")
            if x.bias is not None:
                assert np.array_equal(x.bias, y.bias) and x.bias.dtype == np.int32


@pytest.mark.parametrize("per_channel,act", VARIANTS)
@pytest.mark.parametrize("net", sorted(NETS))
def test_given_integers_are_the_float_weights_on_the_given_grids(quantized, net, per_channel, act):
    """Recomputed from the float model: weight = QuantizeLinear(w_float; the parsed scale, zero point and
    axis, in hwsim's [out, in] layout) and bias = round(b / fl32(s_x * s_w)) in float64 (onnxruntime's
    quantize_bias_static); QDQ's bias scale is that product. The layouts and axes are read right."""
    src, paths = quantized(net, per_channel, act)
    g = import_onnx(src)
    floats = {n.name: n for n in g.nodes if n.op in MAC}
    for fmt in ("qdq", "qoperator"):
        layers = [lay for lay in parse_given(paths[fmt]).layers if lay.op in MAC]
        assert len(layers) == len(floats)
        for lay in layers:
            n = floats[lay.name.removesuffix("_quant")]  # QOperator names the QLinear node "<float node>_quant"
            w = g.param(n, "weight")
            assert lay.weight.shape == w.shape, (lay.name, n.name)
            assert np.array_equal(lay.weight_qparams.quantize(w), lay.weight), (fmt, lay.name)
            if lay.bias is None:  # quantize_static keeps a MatMul's Add separate: a uint8 operand of an add
                assert net == "matmul" and n.params.get("bias") and lay.onnx_op in ("MatMul", "QLinearMatMul")
                continue
            s = (lay.inputs[0].scale * lay.weight_qparams.scale).astype(np.float32)
            # onnxruntime/quantization/base_quantizer.py quantize_bias_static_impl: the float32 product as the
            # scale, the division in float64, round half to even (a float32 division gave 5 of 702 biases otherwise)
            b_q = np.rint(g.param(n, "bias").astype(np.float64) / s.astype(np.float64)).astype(np.int64)
            assert np.array_equal(b_q, lay.bias), (fmt, lay.name)
            if fmt == "qdq":
                assert np.array_equal(lay.bias_scale, np.broadcast_to(s, lay.bias_scale.shape))


def test_quantize_linear_divides_by_the_scale_as_onnxruntime_does(quantized):
    """QuantParams.quantize (x / scale, round half to even, saturate) equals ONNX Runtime's QuantizeLinear
    on the parsed input grid, ties included; multiplying by 1 / scale, or rounding ties away from zero,
    gives other integers on the same inputs."""
    import onnxruntime as ort

    _, paths = quantized("resnet8", False, "QUInt8")
    qp = parse_given(paths["qoperator"]).input
    s = np.float32(qp.scale)
    rng = np.random.default_rng(7)
    k = rng.integers(-40, 300, 200_000)
    ties = ((k + 0.5) * s.astype(np.float64)).astype(np.float32)  # near and at .5 after the division
    x = np.concatenate([ties, rng.uniform(-1, 2, 50_000).astype(np.float32)]).reshape(1, 1, 1, -1)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, x.shape)],
                          initializer=[numpy_helper.from_array(qp.scale, "s"), numpy_helper.from_array(qp.zero_point, "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(qp.quantize(x), ref.astype(np.int64))
    z = int(qp.zero_point)
    by_reciprocal = np.clip(np.rint(x * (np.float32(1) / s)).astype(np.int64) + z, 0, 255)
    half_away = np.clip((np.sign(x / s) * np.floor(np.abs(x / s) + 0.5)).astype(np.int64) + z, 0, 255)
    assert (by_reciprocal != ref).sum() > 0 and (half_away != ref).sum() > 0


def _edit(path, tmp, fn):
    m = onnx.load(path)
    fn(m)
    return save(m, tmp)


def test_per_axis_scales_on_an_axis_hwsim_does_not_support(quantized, tmp_path):
    _, paths = quantized("resnet8", True, "QUInt8")

    def weight_axis_1(m):
        for n in m.graph.node:
            if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized") and "Conv" in n.input[0]:
                for a in n.attribute:
                    if a.name == "axis":
                        a.i = 1
                return

    with pytest.raises(HwsimError) as e:
        parse_given(_edit(paths["qdq"], tmp_path / "axis1.onnx", weight_axis_1))
    msg = str(e.value)
    assert "per-axis scales on axis 1 (hwsim supports per-channel scales on a weight's output channel only: axis 0" in msg
    assert "\n" not in msg

    def per_channel_input(m):
        for t in m.graph.initializer:
            if t.name in ("x_scale", "x_zero_point"):
                a = numpy_helper.to_array(t)
                t.CopyFrom(numpy_helper.from_array(np.repeat(a.reshape(1), 3), t.name))

    for fmt in ("qdq", "qoperator"):
        with pytest.raises(HwsimError, match=r"tensor 'x': per-axis scales \(3 values\) on an activation"):
            parse_given(_edit(paths[fmt], tmp_path / f"pcin_{fmt}.onnx", per_channel_input))


def test_a_float_model_has_no_given_quantization(quantized):
    src, _ = quantized("matmul", False, "QUInt8")
    with pytest.raises(HwsimError, match="no quantized ops .* import it with hwsim import"):
        parse_given(src)


def test_an_int8_model_imports_with_its_quantization_and_the_float_importer_refuses_it(quantized):
    """``hwsim import`` keeps an int8 model's given quantization (hwsim.given; whole networks are checked in
    test_given_network.py); the float importer itself still refuses it in one line."""
    from hwsim.graph import load_model
    from tests.importers.test_cli_import import invoke, one_line_error

    _, paths = quantized("resnet8", False, "QUInt8")
    for fmt in ("qdq", "qoperator"):
        r = invoke("import", paths[fmt], "-o", paths[fmt] + ".hwsim")
        assert r.exit_code == 0 and f"given {fmt} quantization kept" in r.output, r.output
        assert load_model(paths[fmt] + ".hwsim").metadata["given"].source_format == fmt
        with pytest.raises(HwsimError, match="an int8 .QDQ / QOperator. model: hwsim imports float ONNX"):
            import_onnx(paths[fmt])


def test_mutated_int8_files_give_a_description_or_one_line(quantized, tmp_path):
    """Seeded byte flips, truncations and insertions of both layouts: parse_given returns or raises HwsimError."""
    _, paths = quantized("resnet8", True, "QUInt8")
    seeds = [open(paths[f], "rb").read() for f in ("qdq", "qoperator")]
    rng = np.random.default_rng(2)
    seen = set()
    for case in range(200):
        buf = bytearray(seeds[case % 2])
        kind = case % 3
        if kind == 0:
            for _ in range(rng.integers(1, 8)):
                buf[rng.integers(0, len(buf))] = rng.integers(0, 256)
        elif kind == 1:
            buf = buf[:rng.integers(0, len(buf))]
        else:
            i = rng.integers(0, len(buf))
            buf[i:i] = rng.integers(0, 256, rng.integers(1, 20)).astype(np.uint8).tobytes()
        p = tmp_path / "m.onnx"
        p.write_bytes(bytes(buf))
        try:
            parse_given(str(p))
            seen.add("ok")
        except HwsimError as e:
            assert "\n" not in str(e), (case, str(e))
            seen.add("refused")
    assert seen == {"ok", "refused"}


@pytest.mark.parametrize("lo,hi,expect", [(0.0, 6.0, "relu6"), (0.0, None, "relu"), (-1.0, 1.0, None)])
def test_qdq_clip_is_relu_relu6_or_refused(lo, hi, expect):
    s, z = np.array(0.05, np.float32), np.array(0, np.uint8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Clip", ["xd", "lo"] + (["hi"] if hi is not None else []), ["c"], name="clip"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"])]
    inits = {"s": s, "z": z, "lo": np.array(lo, np.float32)}
    if hi is not None:
        inits["hi"] = np.array(hi, np.float32)
    m = model(nodes, inits)
    if expect is None:
        with pytest.raises(HwsimError, match=r"node 'clip' \(op Clip\): Clip\(min=-1.0, max=1.0\)"):
            parse_given(m)
        return
    lay = parse_given(m).layer("clip")
    assert lay.op == expect and lay.onnx_op == "Clip"
    _same(lay.inputs[0], QuantParams(s, z, "uint8"))
    _same(lay.output, QuantParams(s, z, "uint8"))


def _gate_net(alpha=float(np.float32(1 / 6)), quantize_gate=True, gate_input_dq=True):
    """QOperator x * HardSigmoid(x) as quantize_static writes MobileNetV3's hard-swish at opset 13: the
    HardSigmoid (no int8 kernel in ONNX Runtime) runs in float between DequantizeLinear and QuantizeLinear, then
    QLinearMul(x, gate) on their grids."""
    sx, zx = np.array(0.04, np.float32), np.array(128, np.uint8)
    sg, zg = np.array(1 / 255, np.float32), np.array(0, np.uint8)
    sy, zy = np.array(0.021, np.float32), np.array(13, np.uint8)
    w, sw = np.eye(3, dtype=np.int8).reshape(3, 3, 1, 1), np.array(1.0, np.float32)  # a 1x1 identity conv first
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["x0"], name="qx"),
             helper.make_node("QLinearConv", ["x0", "sx", "zx", "w", "sw", "zw", "sx", "zx"], ["xq"], name="conv"),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="dqx"),
             helper.make_node("HardSigmoid", ["xd" if gate_input_dq else "x"], ["g"], name="gate", alpha=alpha),
             helper.make_node("QuantizeLinear", ["g", "sg", "zg"], ["gq"], name="qg"),
             helper.make_node("QLinearMul",
                              ["xq", "sx", "zx", "gq" if quantize_gate else "g", "sg", "zg", "sy", "zy"], ["yq"],
                              name="mul", domain="com.microsoft"),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"], name="dqy")]
    nodes = [n for n in nodes if quantize_gate or n.name != "qg"]
    inits = [numpy_helper.from_array(v, k) for k, v in dict(w=w, sw=sw, zw=np.array(0, np.int8), sx=sx, zx=zx, sg=sg, zg=zg, sy=sy, zy=zy).items()]
    g = helper.make_graph(nodes, "gate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m


def test_qoperator_float_sandwich_and_qlinearmul(tmp_path):
    """A float op between DequantizeLinear and QuantizeLinear in a QOperator model is a layer with both grids;
    the import keeps HardSigmoid and QLinearMul two ops (the float importer would fuse x * HardSigmoid(x) into
    hardswish, but the engine quantizes the gate in between); hwsim == ONNX Runtime on every input code."""
    import onnxruntime as ort

    from hwsim.compile import compile_model
    from hwsim.execute import run_quantized
    from hwsim.importers.given import import_given
    from hwsim.profile import load_profile

    m = _gate_net()
    gq = parse_given(m)
    lay = gq.layer("gate")
    assert lay.op == "hardsigmoid" and lay.onnx_op == "HardSigmoid"
    _same(lay.inputs[0], QuantParams(np.array(0.04, np.float32), np.array(128, np.uint8), "uint8"))
    _same(lay.output, QuantParams(np.array(1 / 255, np.float32), np.array(0, np.uint8), "uint8"))
    assert gq.layer("mul").op == "mul"
    p = save(m, tmp_path / "gate.onnx")
    g = import_given(p)
    assert [n.op for n in g.nodes] == ["conv2d", "hardsigmoid", "mul"]
    # every uint8 input code (x = (q - 128) * 0.04 lands exactly on the grid), three times over
    x = ((np.arange(256 * 3 * 64) % 256 - 128) * np.float32(0.04)).astype(np.float32).reshape(-1, 3, 8, 8)
    ours = run_quantized(compile_model(g, load_profile("int8-onnxruntime"), None), x).logits
    sess = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    assert np.array_equal(ours.reshape(want.shape), want)
    # the neighbouring option: hwsim's exact tables (correctly rounded hard-sigmoid) differ somewhere
    other = run_quantized(compile_model(g, load_profile("int8-onnxruntime", {"requant.activation_form": "exact"}),
                                        None), x)
    assert not np.array_equal(other.logits.reshape(want.shape), want)


@pytest.mark.parametrize("kw,says", [({"gate_input_dq": False}, "whose input is not a DequantizeLinear output"),
                                     ({"quantize_gate": False}, "its float output is not quantized")])
def test_qoperator_float_op_outside_a_sandwich_is_one_line(kw, says):
    with pytest.raises(HwsimError, match=says) as e:
        parse_given(_gate_net(**kw))
    assert "\n" not in str(e.value) and "node 'gate' (op HardSigmoid)" in str(e.value)


# ----------------------------------------------------------------------------- ORT's QDQ float path (not a profile)
@pytest.mark.parametrize("ci,co,k,hw,pad,stride,groups", [
    (16, 8, 3, 10, 1, 1, 1),     # dense 3x3: K = 144 in MLAS blocks of 128
    (48, 24, 3, 6, 1, 1, 1),     # K = 432, 36 positions: blocks of 512 -> one
    (8, 8, 3, 10, 1, 1, 8),      # depthwise 3x3: M = 1 per group (the M1 kernel)
    (12, 12, 5, 9, 2, 2, 12),    # depthwise 5x5 stride 2: K = 25
    (16, 24, 1, 8, 0, 1, 1),     # pointwise: GemmDirect
    (32, 96, 3, 4, 1, 2, 1),     # more filters than positions: ExpandThenGemm
    (37, 7, 1, 1, 0, 1, 1),      # a squeeze-excite conv on the pooled 1x1: N = 1 (4 + 2 + 1 filter rows, K tail 5)
])
def test_onnxruntime_qdq_float_conv_is_mlas_order(ci, co, k, hw, pad, stride, groups):
    """What ONNX Runtime runs for a QDQ Conv with graph optimizations off (the float path, not modelled by any
    hwsim profile yet): DequantizeLinear of the codes, weights and int32 bias, then MLAS's float conv. Its float32
    output equals :func:`mlas_conv_f32` bit for bit (depthwise: the M1 kernel's unfused 4-row groups; dense: FMA
    chains in MLAS's K blocks; the bias last), and neither a plain sequential sum nor one FMA chain over all K
    does where they differ from it (the orders tried before). docs/semantics.md section 11."""
    from hwsim.ops.add import fma_f32

    f32 = np.float32
    rng = np.random.default_rng(ci * co + k)
    xq = rng.integers(0, 256, (3, ci, hw, hw)).astype(np.uint8)
    sx, zx = f32(0.0173), 117
    wq = rng.integers(-127, 128, (co, ci // groups, k, k)).astype(np.int8)
    sw = rng.uniform(0.001, 0.01, co).astype(f32)
    bq = rng.integers(-5000, 5000, co).astype(np.int32)
    sb = (sx * sw).astype(f32)
    nodes = [helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["b"], axis=0),
             helper.make_node("Conv", ["x", "w", "b"], ["y"], group=groups, pads=[pad] * 4, strides=[stride] * 2,
                              kernel_shape=[k, k])]
    inits = [numpy_helper.from_array(v, n) for n, v in dict(
        sx=np.array(sx, f32), zx=np.array(zx, np.uint8), wq=wq, sw=sw, zw=np.zeros(co, np.int8), bq=bq, sb=sb,
        zb=np.zeros(co, np.int32)).items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", TensorProto.UINT8, list(xq.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    want = ort_session(m, optimize=False).run(None, {"xq": xq})[0]  # ORT's float path (optimizations off)
    x = ((xq.astype(np.int64) - zx).astype(f32) * sx).astype(f32)
    w = (wq.astype(f32) * sw.reshape(-1, 1, 1, 1)).astype(f32)
    b = (bq.astype(f32) * sb).astype(f32)
    assert np.array_equal(mlas_conv_f32(x, w, b, pad, stride, groups), want)
    # the neighbouring orders: one FMA chain over all K, a plain sequential float32 sum (bias last both)
    co_g = co // groups
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (hw + 2 * pad - k) // stride + 1
    fma_all = np.zeros(want.shape, f32)
    seq = np.zeros(want.shape, f32)
    for gi in range(groups):
        for cc in range(ci // groups):
            for ky in range(k):
                for kx in range(k):
                    col = xp[:, gi * (ci // groups) + cc, ky:ky + stride * ho:stride, kx:kx + stride * ho:stride]
                    wv = w[gi * co_g:(gi + 1) * co_g, cc, ky, kx].reshape(1, -1, 1, 1)
                    sl = slice(gi * co_g, (gi + 1) * co_g)
                    fma_all[:, sl] = fma_f32(col[:, None], wv, fma_all[:, sl])
                    seq[:, sl] = (seq[:, sl] + (col[:, None] * wv).astype(f32)).astype(f32)
    assert not np.array_equal((seq + b.reshape(1, -1, 1, 1)).astype(f32), want)
    kk = ci // groups * k * k
    if co_g == 1 or kk > mlas_strides(ho * ho, kk)[1]:  # one FMA chain is MLAS's order when K fits one block
        assert not np.array_equal((fma_all + b.reshape(1, -1, 1, 1)).astype(f32), want)


@pytest.mark.parametrize("batch", [32, 3, 1])
def test_onnxruntime_qdq_float_gemm_depends_on_the_batch(batch):
    """A QDQ Gemm (transB = 1) with optimizations off: ORT broadcasts the bias into Y and runs MlasGemm with
    beta = 1 (gemm.cc ComputeGemm) on the prepacked B. With two or more rows that is one FMA chain over K (here
    K = 400) onto the bias; with one row MLAS takes another kernel and the chain differs
    on most outputs — ORT's float path depends on how the inputs are batched (docs/semantics.md section 11)."""
    from hwsim.ops.add import fma_f32

    f32 = np.float32
    rng = np.random.default_rng(7)
    k, o = 400, 10
    xq = rng.integers(0, 256, (batch, k)).astype(np.uint8)
    sx, zx = f32(0.0173), 117
    wq = rng.integers(-127, 128, (o, k)).astype(np.int8)
    sw = rng.uniform(0.001, 0.01, o).astype(f32)
    bq = rng.integers(-5000, 5000, o).astype(np.int32)
    nodes = [helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["b"], axis=0),
             helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(v, n) for n, v in dict(
        sx=np.array(sx, f32), zx=np.array(zx, np.uint8), wq=wq, sw=sw, zw=np.zeros(o, np.int8), bq=bq,
        sb=(sx * sw).astype(f32), zb=np.zeros(o, np.int32)).items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [batch, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    want = ort_session(m, optimize=False).run(None, {"xq": xq})[0]  # ORT's float path (optimizations off)
    x = ((xq.astype(np.int64) - zx).astype(f32) * sx).astype(f32)
    w = (wq.astype(f32) * sw[:, None]).astype(f32)
    acc = np.zeros((batch, o), f32)
    for i in range(k):
        acc = fma_f32(x[:, i:i + 1], w[:, i][None], acc).astype(f32)
    chain = (acc + (bq.astype(f32) * (sx * sw).astype(f32)).astype(f32)).astype(f32)
    if batch > 1:
        assert np.array_equal(chain, want)
    else:
        assert np.count_nonzero(chain != want) > o // 2
