"""Bit-exact agreement with the TFLite runtime (LiteRT, ``ai-edge-litert``), its outputs are the truth.

Each model holds one int8 op; it is written in memory with flatbuffers and the ``tflite`` schema package
and run with LiteRT's builtin kernels, without delegates (XNNPACK requantizes its own way), one thread.

How hwsim reproduces LiteRT (docs/semantics.md, section 11):
- multipliers: M = s_x*s_w[c]/s_y in float64, then QuantizeMultiplier (hwsim default), except per-tensor
  FULLY_CONNECTED, which rounds s_x*s_w to float32 first (``Requant(fixed_product="float32")``);
- reference kernels (``OpResolverType.BUILTIN_REF``): CONV_2D, DEPTHWISE_CONV_2D and ADD are gemmlowp's
  double rounding, ``Requant(mode="fixed")`` with its defaults; FULLY_CONNECTED's reference kernel
  computes ``round(acc * M)`` in float64 (ties away), which hwsim does not model;
- optimized kernels on x86-64: CONV_2D and FULLY_CONNECTED run ruy's AVX2/AVX-512 kernels (or the custom
  GEMV), double rounding with both ties half_up: ``fixed_ties=("half_up", "half_up")``; DEPTHWISE_CONV_2D
  runs a NEON loop (NEON_2_SSE) on blocks of 8 output channels, same ties, and the remaining
  Cout mod 8 channels through the scalar gemmlowp code; ADD's vector loop covers the first n - n mod 16
  elements: ``ops.add(..., vector_width=16)``.
- the XNNPACK delegate (LiteRT's default resolver; section "XNNPACK" below): CONV_2D, DEPTHWISE_CONV_2D and
  FULLY_CONNECTED requantize in float32, ``Requant(mode="float32", rounding="half_even",
  multiplier_order="sequential")``; ADD is XNNPACK's 20-bit fixed point (``add_form="xnnpack"``); MEAN its float32
  form (``mean_hw(form="xnnpack")``); AVERAGE_POOL_2D stays on the built-in kernel;
- the float input's QUANTIZE differs per resolver (``activations.input_division``).
Tie-rich layers (power-of-two scales, small integers) make every rounding rule visible; each test also
checks that the neighbouring configurations disagree with LiteRT on its data.
"""

import platform

import numpy as np
import pytest

pytest.importorskip("flatbuffers")
tflite = pytest.importorskip("tflite")
litert = pytest.importorskip("ai_edge_litert.interpreter")

import flatbuffers  # noqa: E402
from tflite.BuiltinOperator import BuiltinOperator as BO  # noqa: E402
from tflite.BuiltinOptions import BuiltinOptions as BOpt  # noqa: E402
from tflite.TensorType import TensorType as TT  # noqa: E402

from hwsim import fixedpoint as fp  # noqa: E402
from hwsim import ops  # noqa: E402
from tests.engines import cpu_flags  # noqa: E402

f32 = np.float32
RELU, RELU6 = 1, 3  # tflite ActivationFunctionType
GEMMLOWP = ops.Requant(mode="fixed")  # ties ("half_up", "half_away")
RUY = ops.Requant(mode="fixed", fixed_ties=("half_up", "half_up"))
ALTERNATIVES = {"gemmlowp": GEMMLOWP, "ruy": RUY,
                "single_half_up": ops.Requant(mode="fixed", fixed_rounding="single", fixed_ties=("half_up",) * 2),
                "single_half_away": ops.Requant(mode="fixed", fixed_rounding="single", fixed_ties=("half_away",) * 2)}


# ruy's x86 kernels (AVX2, AVX-512) round as modelled; its portable C++ path rounds once, and ARM builds
# use other depthwise and add kernels: the optimized-kernel checks need an x86-64 CPU with AVX2
X86_AVX2 = platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma", "sse4_1"} <= cpu_flags()
needs_x86 = pytest.mark.skipif(not X86_AVX2, reason="LiteRT's optimized int8 kernels modelled on x86-64 with AVX2")
RESOLVERS = [pytest.param("optimized", marks=needs_x86), "reference"]


# ----------------------------------------------------------------------------- model building
def _table_vector(b, start, offsets):
    start(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def build_model(tensors, opcode, op_inputs, op_outputs, options_type, options_fn, graph_inputs) -> bytes:
    """One-operator TFLite model; tensors: dicts (shape, type, optional data, scale, zp, qdim)."""
    b = flatbuffers.Builder(1024)
    buffers = []
    for data in [None] + [t.get("data") for t in tensors]:  # buffer 0: the empty sentinel
        vec = None if data is None else b.CreateNumpyVector(np.ascontiguousarray(data).view(np.uint8).ravel())
        tflite.BufferStart(b)
        if vec is not None:
            tflite.BufferAddData(b, vec)
        buffers.append(tflite.BufferEnd(b))
    offs = []
    for i, t in enumerate(tensors):
        name = b.CreateString(f"t{i}")
        shape = b.CreateNumpyVector(np.asarray(t["shape"], np.int32))
        scale = b.CreateNumpyVector(np.asarray(t["scale"], np.float32).ravel())
        zp = b.CreateNumpyVector(np.asarray(t["zp"], np.int64).ravel())
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scale)
        tflite.QuantizationParametersAddZeroPoint(b, zp)
        tflite.QuantizationParametersAddQuantizedDimension(b, t.get("qdim", 0))
        quant = tflite.QuantizationParametersEnd(b)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, t["type"])
        tflite.TensorAddBuffer(b, i + 1)
        tflite.TensorAddName(b, name)
        tflite.TensorAddQuantization(b, quant)
        offs.append(tflite.TensorEnd(b))
    options = options_fn(b)
    ins, outs = (b.CreateNumpyVector(np.asarray(v, np.int32)) for v in (op_inputs, op_outputs))
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, ins)
    tflite.OperatorAddOutputs(b, outs)
    tflite.OperatorAddBuiltinOptionsType(b, options_type)
    tflite.OperatorAddBuiltinOptions(b, options)
    op = tflite.OperatorEnd(b)
    tensor_vec = _table_vector(b, tflite.SubGraphStartTensorsVector, offs)
    gin, gout = (b.CreateNumpyVector(np.asarray(v, np.int32)) for v in (graph_inputs, op_outputs))
    op_vec = _table_vector(b, tflite.SubGraphStartOperatorsVector, [op])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vec)
    tflite.SubGraphAddInputs(b, gin)
    tflite.SubGraphAddOutputs(b, gout)
    tflite.SubGraphAddOperators(b, op_vec)
    subgraph = tflite.SubGraphEnd(b)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, opcode)
    tflite.OperatorCodeAddBuiltinCode(b, opcode)
    tflite.OperatorCodeAddVersion(b, 1)
    code = tflite.OperatorCodeEnd(b)
    code_vec = _table_vector(b, tflite.ModelStartOperatorCodesVector, [code])
    sub_vec = _table_vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
    buf_vec = _table_vector(b, tflite.ModelStartBuffersVector, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, code_vec)
    tflite.ModelAddSubgraphs(b, sub_vec)
    tflite.ModelAddBuffers(b, buf_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def run(model: bytes, resolver: str, *inputs) -> np.ndarray:
    """The int8 output of ``model`` under one resolver: "reference" (BUILTIN_REF), "optimized" (built-ins without
    delegates) or "xnnpack" (BUILTIN: LiteRT's default, the XNNPACK delegate applied)."""
    kind = {"optimized": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "reference": "BUILTIN_REF", "xnnpack": "BUILTIN"}[resolver]
    if not hasattr(litert.OpResolverType, kind):
        pytest.skip(f"ai_edge_litert without OpResolverType.{kind}")
    it = litert.Interpreter(model_content=model, num_threads=1,
                            experimental_op_resolver_type=getattr(litert.OpResolverType, kind))
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), inputs):
        it.set_tensor(d["index"], np.asarray(x, d["dtype"]))
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).astype(np.int64)


def _i8(shape, scale, zp, data=None, qdim=0, type_=TT.INT8):
    t = dict(shape=list(shape), type=type_, scale=np.atleast_1d(scale), zp=np.atleast_1d(zp), qdim=qdim)
    if data is not None:
        t["data"] = np.asarray(data, np.int8 if type_ == TT.INT8 else np.int32)
    return t


def _bias(bias, sx, sw):
    sw = np.atleast_1d(np.asarray(sw, f32))
    return _i8([len(bias)], f32(sx) * sw, np.zeros(sw.size, np.int64), bias, type_=TT.INT32)


def tfl_fully_connected(x, sx, zx, w, sw, bias, sy, zy, act=0, resolver="optimized"):
    def options(b):
        tflite.FullyConnectedOptionsStart(b)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(b, act)
        return tflite.FullyConnectedOptionsEnd(b)
    sw = np.atleast_1d(sw)
    tensors = [_i8(x.shape, sx, zx), _i8(w.shape, sw, np.zeros(sw.size, np.int64), w), _bias(bias, sx, sw),
               _i8((x.shape[0], w.shape[0]), sy, zy)]
    model = build_model(tensors, BO.FULLY_CONNECTED, [0, 1, 2], [3], BOpt.FullyConnectedOptions, options, [0])
    return run(model, resolver, x)


def tfl_conv(x_nchw, sx, zx, w, sw, bias, sy, zy, stride, same, act=0, depthwise=False, resolver="optimized"):
    """x NCHW (hwsim layout), w [Cout, Cin/groups, kh, kw]; returns the output in NCHW."""
    x = x_nchw.transpose(0, 2, 3, 1)
    cout, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    wt = w.transpose(1, 2, 3, 0) if depthwise else w.transpose(0, 2, 3, 1)  # [1, kh, kw, Cout] / OHWI
    ho, wo = (_out(n, k, stride, same) for n, k in ((x.shape[1], kh), (x.shape[2], kw)))
    sw = np.atleast_1d(sw)

    def options(b):
        pre = "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions"
        getattr(tflite, pre + "Start")(b)
        getattr(tflite, pre + "AddPadding")(b, 0 if same else 1)  # Padding.SAME / VALID
        getattr(tflite, pre + "AddStrideH")(b, stride)
        getattr(tflite, pre + "AddStrideW")(b, stride)
        getattr(tflite, pre + "AddDilationHFactor")(b, 1)
        getattr(tflite, pre + "AddDilationWFactor")(b, 1)
        getattr(tflite, pre + "AddFusedActivationFunction")(b, act)
        if depthwise:
            tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, cout // x.shape[3])
        return getattr(tflite, pre + "End")(b)
    tensors = [_i8(x.shape, sx, zx), _i8(wt.shape, sw, np.zeros(sw.size, np.int64), wt, qdim=3 if depthwise else 0),
               _bias(bias, sx, sw), _i8((x.shape[0], ho, wo, cout), sy, zy)]
    opcode, otype = ((BO.DEPTHWISE_CONV_2D, BOpt.DepthwiseConv2DOptions) if depthwise
                     else (BO.CONV_2D, BOpt.Conv2DOptions))
    return run(build_model(tensors, opcode, [0, 1, 2], [3], otype, options, [0]), resolver, x).transpose(0, 3, 1, 2)


def tfl_add(a, sa, za, b, sb, zb, sy, zy, resolver="optimized"):
    def options(bld):
        tflite.AddOptionsStart(bld)
        tflite.AddOptionsAddFusedActivationFunction(bld, 0)
        return tflite.AddOptionsEnd(bld)
    tensors = [_i8(a.shape, sa, za), _i8(b.shape, sb, zb), _i8(a.shape, sy, zy)]
    return run(build_model(tensors, BO.ADD, [0, 1], [2], BOpt.AddOptions, options, [0, 1]), resolver, a, b)


# ----------------------------------------------------------------------------- hwsim side
def _out(n, k, s, same):
    return -(-n // s) if same else (n - k) // s + 1


def _same_pad(n, k, s):
    total = max((_out(n, k, s, True) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def act_range(act, sy, zy):
    """TFLite CalculateActivationRangeQuantized (int8): z_y + TfLiteRound(f / s_y) in float32."""
    def q(v):
        return zy + int(fp.round_float(f32(v) / f32(sy), "half_away"))
    lo, hi = -128, 127
    if act in (RELU, RELU6):
        lo = max(lo, q(0.0))
    if act == RELU6:
        hi = min(hi, q(6.0))
    return lo, hi


def hw_requant(acc, sx, sw, sy, zy, cfg, lo=-128, hi=127):
    return ops.requantize(acc, ops.make_requant_params(sx, np.atleast_1d(sw), sy, cfg), cfg, zy, lo, hi)[0]


def hw_depthwise_optimized(acc, sx, sw, sy, zy, lo, hi):
    """LiteRT x86 depthwise: channel blocks of 8 (NEON_2_SSE: VQRDMULH + VRSHL, ties half_up), rest gemmlowp."""
    cout = acc.shape[1]
    body = cout - cout % 8
    sw = np.broadcast_to(np.atleast_1d(sw), (cout,))
    parts = [hw_requant(acc[:, :body], sx, sw[:body], sy, zy, RUY, lo, hi)] if body else []
    if body < cout:
        parts.append(hw_requant(acc[:, body:], sx, sw[body:], sy, zy, GEMMLOWP, lo, hi))
    return np.concatenate(parts, axis=1)


def tie_scales(rng, cout, per_channel=True):
    """Power-of-two-like scales: M[c] = m * 2^-e, m in {1, 3/4, 5/4, 3/2}, e in 1..5 (ties are frequent)."""
    sx, c = 2.0 ** -int(rng.integers(2, 6)), int(rng.integers(4, 8))
    n = cout if per_channel else 1
    sw = rng.choice([1, 0.75, 1.25, 1.5, 1, 1], n) * 2.0 ** -(c + rng.integers(1, 6, n)).astype(float)
    return sx, sw, sx * 2.0**-c


def random_scales(rng, cout, per_channel=True):
    sx, sy = float(f32(rng.uniform(0.005, 0.05))), float(f32(rng.uniform(0.05, 0.5)))
    sw = rng.uniform(0.001, 0.02, cout if per_channel else 1).astype(f32).astype(np.float64)
    return sx, sw, sy


class Tally:
    """Counts, per alternative configuration, the outputs that differ from LiteRT."""

    def __init__(self):
        self.n, self.diff = 0, {k: 0 for k in ALTERNATIVES}

    def add(self, yt, fn):
        self.n += yt.size
        for k, cfg in ALTERNATIVES.items():
            self.diff[k] += int((fn(cfg) != yt).sum())

    def check_others_differ(self, matching):
        assert self.n > 0
        for k, d in self.diff.items():
            if k not in matching:
                assert d > 0, f"alternative {k} is not separated from the matching configuration by these cases"


# ----------------------------------------------------------------------------- CONV_2D
CONV = [dict(stride=s, same=same, act=act, per_channel=pc)
        for (s, same, act, pc) in ((1, True, 0, True), (2, True, RELU, True), (1, False, RELU6, True),
                                   (2, False, 0, True), (1, True, RELU6, False), (2, True, 0, False))]


@pytest.mark.parametrize("resolver", RESOLVERS)
@pytest.mark.parametrize("case", CONV, ids=lambda c: "s{stride}-{0}-act{act}-pc{per_channel}".format(
    "same" if c["same"] else "valid", **c))
def test_conv2d_identical(case, resolver):
    c = case
    rng = np.random.default_rng(c["stride"] * 100 + c["same"] * 10 + c["act"] + 7 * c["per_channel"])
    cfg = RUY if resolver == "optimized" else GEMMLOWP
    tally = Tally()
    for i in range(4):
        tie = i % 2 == 0
        cin, cout = int(rng.integers(1, 9)), int(rng.integers(1, 13))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        h, w_ = int(rng.integers(max(kh, 3), 10)), int(rng.integers(max(kw, 3), 10))
        if tie:
            sx, sw, sy = tie_scales(rng, cout, c["per_channel"])
            x, zx, wmax = rng.integers(-8, 9, (2, cin, h, w_)), int(rng.integers(-3, 4)), 5
        else:
            sx, sw, sy = random_scales(rng, cout, c["per_channel"])
            x, zx, wmax = rng.integers(-128, 128, (2, cin, h, w_)), int(rng.integers(-128, 128)), 127
        zy = int(rng.integers(-20, 21))
        w = rng.integers(-wmax, wmax + 1, (cout, cin, kh, kw))
        bias = rng.integers(-300, 301, cout)
        yt = tfl_conv(x, sx, zx, w, sw, bias, sy, zy, c["stride"], c["same"], c["act"], resolver=resolver)
        pad = _same_pad(h, kh, c["stride"]) + _same_pad(w_, kw, c["stride"]) if c["same"] else (0, 0, 0, 0)
        acc, _ = ops.conv2d(x, w, bias, x_zero_point=zx, stride=c["stride"], padding=pad)
        lo, hi = act_range(c["act"], sy, zy)
        assert acc.shape == yt.shape
        np.testing.assert_array_equal(hw_requant(acc, sx, sw, sy, zy, cfg, lo, hi), yt)
        tally.add(yt, lambda alt: hw_requant(acc, sx, sw, sy, zy, alt, lo, hi))
    if c["act"] == 0:
        tally.check_others_differ({"ruy" if resolver == "optimized" else "gemmlowp"})


# ----------------------------------------------------------------------------- DEPTHWISE_CONV_2D
@pytest.mark.parametrize("resolver", RESOLVERS)
@pytest.mark.parametrize("cin,mult", [(3, 1), (8, 1), (13, 1), (5, 2), (12, 2)])
def test_depthwise_conv2d_identical(cin, mult, resolver):
    rng = np.random.default_rng(cin * 10 + mult)
    cout = cin * mult
    tally = Tally()
    for i in range(4):
        tie = i % 2 == 0
        stride, same, act = int(rng.integers(1, 3)), bool(i < 2), (0, RELU6)[i % 2]
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        h, w_ = int(rng.integers(max(kh, 3), 9)), int(rng.integers(max(kw, 3), 9))
        if tie:
            sx, sw, sy = tie_scales(rng, cout)
            x, zx, wmax = rng.integers(-8, 9, (2, cin, h, w_)), int(rng.integers(-3, 4)), 5
        else:
            sx, sw, sy = random_scales(rng, cout)
            x, zx, wmax = rng.integers(-128, 128, (2, cin, h, w_)), int(rng.integers(-128, 128)), 127
        zy = int(rng.integers(-20, 21))
        w = rng.integers(-wmax, wmax + 1, (cout, 1, kh, kw))
        bias = rng.integers(-300, 301, cout)
        yt = tfl_conv(x, sx, zx, w, sw, bias, sy, zy, stride, same, act, depthwise=True, resolver=resolver)
        pad = _same_pad(h, kh, stride) + _same_pad(w_, kw, stride) if same else (0, 0, 0, 0)
        acc, _ = ops.conv2d(x, w, bias, x_zero_point=zx, stride=stride, padding=pad, groups=cin)
        lo, hi = act_range(act, sy, zy)
        if resolver == "optimized":
            y = hw_depthwise_optimized(acc, sx, sw, sy, zy, lo, hi)
        else:
            y = hw_requant(acc, sx, sw, sy, zy, GEMMLOWP, lo, hi)
        np.testing.assert_array_equal(y, yt)
        if act == 0:
            tally.add(yt, lambda alt: hw_requant(acc, sx, sw, sy, zy, alt, lo, hi))
    if resolver == "reference" or cout < 8:
        tally.check_others_differ({"gemmlowp"})
    elif cout % 8 == 0:
        tally.check_others_differ({"ruy"})
    else:  # both roundings occur: no single configuration fits every channel
        assert tally.diff["ruy"] > 0 and tally.diff["gemmlowp"] > 0


# ----------------------------------------------------------------------------- exhaustive tie sweep
SWEEP_M = [(1, 1), (1, 2), (1, 3), (1, 5), (3, 3), (5, 4), (3, 5), (1, 4), (7, 5), (1, 1), (3, 2), (1, 6)]  # M = m 2^-e


@pytest.mark.parametrize("resolver", RESOLVERS)
@pytest.mark.parametrize("op", ["conv2d", "depthwise", "fully_connected"])
def test_every_accumulator_in_a_window_identical(op, resolver):
    """acc = bias[c] + x, x = -128..127, one 1x1 filter of weight 1 per channel, M[c] = m 2^-e: every tie class."""
    if op == "fully_connected" and resolver == "reference":
        pytest.skip("LiteRT's reference FULLY_CONNECTED rounds in float64 (see the test below)")
    c = len(SWEEP_M)
    sx, sy = 2.0**-3, 2.0**-9
    sw = np.array([m * 2.0 ** -(e + 6) for m, e in SWEEP_M])  # M = s_x s_w / s_y = m 2^-e
    bias = np.arange(c) * 7 % 41 - 20
    ramp = np.arange(-128, 128)
    if op == "fully_connected":
        x, w = ramp.reshape(-1, 1), np.ones((c, 1), np.int64)
        yt = tfl_fully_connected(x, sx, 0, w, sw, bias, sy, 3, resolver=resolver)
        acc, _ = ops.linear(x, w, bias)
    else:
        dw = op == "depthwise"
        x = np.broadcast_to(ramp.reshape(1, 1, 16, 16), (1, c if dw else 1, 16, 16)).copy()
        w = np.ones((c, 1, 1, 1), np.int64)
        yt = tfl_conv(x, sx, 0, w, sw, bias, sy, 3, 1, True, depthwise=dw, resolver=resolver)
        acc, _ = ops.conv2d(x, w, bias, groups=c if dw else 1)
    assert np.abs(acc * (sx * sw / sy).reshape(1, -1, *[1] * (acc.ndim - 2))).max() < 120  # nothing clips
    if resolver == "reference":
        y, match = hw_requant(acc, sx, sw, sy, 3, GEMMLOWP), {"gemmlowp"}
    elif op == "depthwise":
        y, match = hw_depthwise_optimized(acc, sx, sw, sy, 3, -128, 127), set()
    else:
        y, match = hw_requant(acc, sx, sw, sy, 3, RUY), {"ruy"}
    np.testing.assert_array_equal(y, yt)
    for k, alt in ALTERNATIVES.items():
        if k not in match:
            assert (hw_requant(acc, sx, sw, sy, 3, alt) != yt).sum() >= 20, k


# ----------------------------------------------------------------------------- FULLY_CONNECTED
@pytest.mark.parametrize("per_channel", [False, True])
@needs_x86
def test_fully_connected_optimized_identical(per_channel):
    """ruy (batch > 1) and the custom GEMV (batch 1, K >= 8): double rounding, ties half_up, half_up."""
    rng = np.random.default_rng(40 + per_channel)
    cfg = ops.Requant(mode="fixed", fixed_ties=("half_up", "half_up"),
                      fixed_product="float64" if per_channel else "float32")
    tally = Tally()
    for i in range(8):
        tie = i % 2 == 0
        n, k, m = (1, 12, 9) if i < 2 else (int(rng.integers(lo, hi)) for lo, hi in ((2, 30), (1, 40), (1, 20)))
        if tie:
            sx, sw, sy = tie_scales(rng, m, per_channel)
            x, zx, wmax = rng.integers(-30, 31, (n, k)), int(rng.integers(-10, 11)), 20
        else:
            sx, sw, sy = random_scales(rng, m, per_channel)
            x, zx, wmax = rng.integers(-128, 128, (n, k)), int(rng.integers(-128, 128)), 127
        zy, act = int(rng.integers(-20, 21)), (0, RELU)[i % 4 == 3]
        w = rng.integers(-wmax, wmax + 1, (m, k))
        bias = rng.integers(-300, 301, m)
        yt = tfl_fully_connected(x, sx, zx, w, sw, bias, sy, zy, act)
        acc, _ = ops.linear(x, w, bias, x_zero_point=zx)
        lo, hi = act_range(act, sy, zy)
        np.testing.assert_array_equal(hw_requant(acc, sx, sw, sy, zy, cfg, lo, hi), yt)
        tally.add(yt, lambda alt: hw_requant(acc, sx, sw, sy, zy, alt, lo, hi))
    tally.check_others_differ({"ruy"})


@needs_x86
def test_fully_connected_per_tensor_multiplier_rounds_the_scale_product_to_float32():
    """TFLite GetQuantizedConvolutionMultipler: M = float(s_x * s_w) / s_y. With s_y = 2^j fl32(s_x s_w)
    that M is a power of two (exact ties) while the float64 product s_x s_w / s_y is not."""
    rng = np.random.default_rng(5)
    x = np.arange(-128, 128).reshape(-1, 1)
    f32_cfg = ops.Requant(mode="fixed", fixed_ties=("half_up", "half_up"), fixed_product="float32")
    f64_cfg = ops.Requant(mode="fixed", fixed_ties=("half_up", "half_up"))
    differ = 0
    for _ in range(12):
        sx, sw = float(f32(rng.uniform(0.005, 0.05))), float(f32(rng.uniform(0.001, 0.02)))
        sy = float(f32(f32(sx) * f32(sw)) * 2.0 ** int(rng.integers(0, 4)))
        bias = np.array([int(rng.integers(-100, 101))])
        yt = tfl_fully_connected(x, sx, 0, np.array([[1]]), sw, bias, sy, 0)
        acc = x + bias
        np.testing.assert_array_equal(hw_requant(acc, sx, sw, sy, 0, f32_cfg), yt)
        differ += int((hw_requant(acc, sx, sw, sy, 0, f64_cfg) != yt).sum())
    assert differ > 100


def test_fully_connected_reference_kernel_rounds_in_float64():
    """LiteRT's reference FULLY_CONNECTED is round(acc * (s_x*s_w/s_y in float64)), ties away: no Q31
    multiplier, so hwsim's fixed mode does not model it; recorded here as a known difference."""
    rng = np.random.default_rng(6)
    differ = 0
    for i in range(6):
        sx, sw, sy = tie_scales(rng, 1, False) if i % 2 == 0 else random_scales(rng, 1, False)
        x, w = rng.integers(-30, 31, (20, 16)), rng.integers(-20, 21, (5, 16))
        bias, zx, zy = rng.integers(-300, 301, 5), int(rng.integers(-10, 11)), int(rng.integers(-20, 21))
        yt = tfl_fully_connected(x, sx, zx, w, sw, bias, sy, zy, resolver="reference")
        acc, _ = ops.linear(x, w, bias, x_zero_point=zx)
        m = float(f32(sx)) * float(f32(sw[0])) / float(f32(sy))
        np.testing.assert_array_equal(np.clip(fp.round_float(acc * m, "half_away") + zy, -128, 127), yt)
        differ += int((hw_requant(acc, sx, sw, sy, zy, GEMMLOWP) != yt).sum())
    assert differ > 0


# ----------------------------------------------------------------------------- ADD
# (s_a, s_b, s_y) where the vector loop's single rounding and the scalar double rounding often differ
ADD_ADVERSARIAL = [(2.0**-5, (1 - 2.0**-21) * 2**-4, "b"), ((1 - 2.0**-21) * 2**-5, 2.0**-6, "a"),
                   ((1 - 2.0**-19) * 2**-5, 2.0**-4, "b")]


def _add_kw(sa, za, sb, zb, sy, zy, cfg=GEMMLOWP):
    return dict(a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy,
                qmin=-128, qmax=127, cfg=cfg)


@pytest.mark.parametrize("resolver", RESOLVERS)
def test_add_identical(resolver):
    rng = np.random.default_rng(8)
    vw = 16 if resolver == "optimized" else None
    tally_vec = tally_alt = 0
    for i in range(30):
        if i % 3 == 0:
            sa, sb, sy = (float(f32(rng.uniform(0.01, 0.1))) for _ in range(3))
        else:
            sa, sb = 2.0 ** -int(rng.integers(2, 7)), 2.0 ** -int(rng.integers(2, 7))
            sy = float(f32(max(sa, sb) * rng.choice([1, 0.75, 1.5, 2, 0.5, 1 - 2.0**-20])))
        za, zb, zy = (int(v) for v in rng.integers(-128, 128, 3))
        shape = (1, int(rng.integers(1, 6)), int(rng.integers(1, 9)), int(rng.integers(1, 40)))  # NHWC, odd tails
        a, b = rng.integers(-128, 128, shape), rng.integers(-128, 128, shape)
        yt = tfl_add(a, sa, za, b, sb, zb, sy, zy, resolver)
        kw = _add_kw(sa, za, sb, zb, sy, zy)
        y, _ = ops.add(a, b, vector_width=vw, **kw)
        np.testing.assert_array_equal(y, yt)
        np.testing.assert_array_equal(ops.add(a, b, vector_width=vw, impl="reference", **kw)[0], y)
        single = ops.add(a, b, **_add_kw(sa, za, sb, zb, sy, zy, ALTERNATIVES["single_half_up"]))[0]
        tally_alt += int((single != yt).sum())
    # adversarial pairs: the vector loop and the scalar loop disagree on them
    ga, gb = (v.ravel() for v in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128)))
    for sa, sb, which in ADD_ADVERSARIAL:
        sa, sb = float(f32(sa)), float(f32(sb))
        sy = sa if which == "a" else sb
        kw = _add_kw(sa, -3, sb, 5, sy, 7)
        hot = np.flatnonzero(ops.add(ga, gb, **kw)[0] != ops.add(ga, gb, vector_width=16, **kw)[0])
        assert hot.size > 50
        idx = np.concatenate([hot, rng.integers(0, ga.size, 16 * 8), hot[:13]])  # body + a 13-element tail
        a, b = ga[idx].reshape(1, 1, 1, -1), gb[idx].reshape(1, 1, 1, -1)
        yt = tfl_add(a, sa, -3, b, sb, 5, sy, 7, resolver)
        y, _ = ops.add(a, b, vector_width=vw, **kw)
        np.testing.assert_array_equal(y, yt)
        np.testing.assert_array_equal(ops.add(a, b, vector_width=vw, impl="reference", **kw)[0], y)
        other, _ = ops.add(a, b, vector_width=None if vw else 16, **kw)
        tally_vec += int((other != yt).sum())
    assert tally_vec > 100 and tally_alt > 0


# ----------------------------------------------------------------------------- XNNPACK (LiteRT's default delegate)
# XNNPACK (src/operators/convolution-nhwc.c, init_requantization_scale_*: input_scale * kernel_scale[c] /
# output_scale in float; qs8 gemm / dwconv "fp32" microkernels: fl32(acc) * scale, clamp, magic-number or cvtps
# rounding = half to even, then + z_y)
XNN = ops.Requant(mode="float32", rounding="half_even", multiplier_order="sequential")
XNN_ALTERNATIVES = {"xnnpack": XNN, "fused": ops.Requant(mode="float32", multiplier_order="fused"),
                    "half_away": ops.Requant(mode="float32", rounding="half_away"),
                    "zero_point_before": ops.Requant(mode="float32", zero_point="before"),
                    "gemmlowp": GEMMLOWP, "ruy": RUY}


@needs_x86
@pytest.mark.parametrize("op", ["conv2d", "depthwise", "fully_connected"])
def test_xnnpack_mac_layers_identical(op):
    rng = np.random.default_rng({"conv2d": 1, "depthwise": 2, "fully_connected": 3}[op])
    diff = dict.fromkeys(XNN_ALTERNATIVES, 0)
    for i in range(8):
        tie = i % 2 == 0
        cin = int(rng.integers(1, 9))
        cout = cin * int(rng.integers(1, 3)) if op == "depthwise" else int(rng.integers(1, 13))
        sx, sw, sy = tie_scales(rng, cout) if tie else random_scales(rng, cout)
        zx, zy, wmax = (int(rng.integers(-3, 4)), int(rng.integers(-19, 20)), 5) if tie else \
            (int(rng.integers(-128, 128)), int(rng.integers(-20, 21)), 127)
        bias = rng.integers(-300, 301, cout)
        if op == "fully_connected":
            x = rng.integers(-30, 31, (3, 4 * cin)) if tie else rng.integers(-128, 128, (3, 4 * cin))
            w = rng.integers(-wmax, wmax + 1, (cout, 4 * cin))
            yt = tfl_fully_connected(x, sx, zx, w, sw, bias, sy, zy, resolver="xnnpack")
            acc, _ = ops.linear(x, w, bias, x_zero_point=zx)
        else:
            kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
            h, w_ = int(rng.integers(max(kh, 3), 10)), int(rng.integers(max(kw, 3), 10))
            x = rng.integers(-8, 9, (1, cin, h, w_)) if tie else rng.integers(-128, 128, (1, cin, h, w_))
            w = rng.integers(-wmax, wmax + 1, (cout, 1 if op == "depthwise" else cin, kh, kw))
            yt = tfl_conv(x, sx, zx, w, sw, bias, sy, zy, 1, True, depthwise=op == "depthwise", resolver="xnnpack")
            acc, _ = ops.conv2d(x, w, bias, x_zero_point=zx, padding=_same_pad(h, kh, 1) + _same_pad(w_, kw, 1),
                                groups=cin if op == "depthwise" else 1)
        np.testing.assert_array_equal(hw_requant(acc, sx, sw, sy, zy, XNN), yt)
        for k, cfg in XNN_ALTERNATIVES.items():
            diff[k] += int((hw_requant(acc, sx, sw, sy, zy, cfg) != yt).sum())
    assert diff["xnnpack"] == 0 and all(diff[k] > 0 for k in ("half_away", "gemmlowp", "ruy")), diff


@needs_x86
def test_xnnpack_multiplier_is_sequential_float32():
    """s_y = 2^j fl32(s_x s_w): XNNPACK's float32 M = fl32(fl32(s_x s_w) / s_y) is exactly 2^-j (every odd acc
    at j = 1 is a tie, half to even) while fl32(s_x s_w / s_y) from the exact product is not; odd zero points
    separate z_y added after rounding from before."""
    rng = np.random.default_rng(11)
    x = np.arange(-128, 128).reshape(1, 1, 16, 16)
    diff = dict.fromkeys(XNN_ALTERNATIVES, 0)
    cases = 0
    while cases < 8:
        sx, sw = float(f32(rng.uniform(0.005, 0.05))), float(f32(rng.uniform(0.001, 0.02)))
        sy = float(f32(f32(sx) * f32(sw)) * 2.0 ** int(rng.integers(1, 3)))
        bias, zy = np.array([int(rng.integers(-100, 101))]), int(rng.integers(-10, 10)) * 2 + 1
        m = [ops.make_requant_params(sx, np.array([sw]), sy, XNN_ALTERNATIVES[k]).multiplier for k in ("xnnpack", "fused")]
        if m[0] == m[1] and cases % 2 == 0:
            continue  # half of the cases: scales whose two float32 multipliers differ by one ulp
        cases += 1
        yt = tfl_conv(x, sx, 0, np.ones((1, 1, 1, 1), np.int64), sw, bias, sy, zy, 1, True, resolver="xnnpack")
        acc = x + bias[0]
        np.testing.assert_array_equal(hw_requant(acc, sx, sw, sy, zy, XNN), yt)
        for k, cfg in XNN_ALTERNATIVES.items():
            diff[k] += int((hw_requant(acc, sx, sw, sy, zy, cfg) != yt).sum())
    assert diff["xnnpack"] == 0 and diff["fused"] > 0 and diff["zero_point_before"] > 0, diff


@needs_x86
def test_xnnpack_add_identical():
    """XNNPACK qs8 add (ops.xnnpack_add_params): every element, the same shapes and scales as test_add_identical;
    TFLite's scalar and vector ADD arithmetic disagree."""
    rng = np.random.default_rng(8)
    xnn_cfg = ops.Requant(mode="float32", add_form="xnnpack")
    other = vec = 0
    for i in range(30):
        if i % 3 == 0:
            sa, sb, sy = (float(f32(rng.uniform(0.01, 0.1))) for _ in range(3))
        else:
            sa, sb = 2.0 ** -int(rng.integers(2, 7)), 2.0 ** -int(rng.integers(2, 7))
            sy = float(f32(max(sa, sb) * rng.choice([1, 0.75, 1.5, 2, 0.5, 1 - 2.0**-20])))
        za, zb, zy = (int(v) for v in rng.integers(-128, 128, 3))
        shape = (1, int(rng.integers(1, 6)), int(rng.integers(1, 9)), int(rng.integers(1, 40)))
        a, b = rng.integers(-128, 128, shape), rng.integers(-128, 128, shape)
        yt = tfl_add(a, sa, za, b, sb, zb, sy, zy, "xnnpack")
        y, _ = ops.add(a, b, **_add_kw(sa, za, sb, zb, sy, zy, xnn_cfg))
        np.testing.assert_array_equal(y, yt)
        np.testing.assert_array_equal(ops.add(a, b, impl="reference", **_add_kw(sa, za, sb, zb, sy, zy, xnn_cfg))[0], y)
        other += int((ops.add(a, b, **_add_kw(sa, za, sb, zb, sy, zy))[0] != yt).sum())
        vec += int((ops.add(a, b, vector_width=16, **_add_kw(sa, za, sb, zb, sy, zy))[0] != yt).sum())
    assert other > 0 and vec > 0


def _tfl_mean(x_nhwc, si, zi, so, zo, resolver):
    from tflite.TensorType import TensorType

    def options(b):
        tflite.ReducerOptionsStart(b)
        tflite.ReducerOptionsAddKeepDims(b, True)
        return tflite.ReducerOptionsEnd(b)
    axes = dict(shape=[2], type=TensorType.INT32, scale=np.array([0.0]), zp=np.array([0]),
                data=np.array([1, 2], np.int32))
    tensors = [_i8(x_nhwc.shape, si, zi), axes, _i8((x_nhwc.shape[0], 1, 1, x_nhwc.shape[3]), so, zo)]
    return run(build_model(tensors, BO.MEAN, [0, 1], [2], BOpt.ReducerOptions, options, [0]), resolver,
               x_nhwc).transpose(0, 3, 1, 2)


@needs_x86
@pytest.mark.parametrize("resolver", ["optimized", "xnnpack"])
def test_mean_identical_wide_channels(resolver):
    """MEAN over H, W with C >= 16: the optimized kernel runs blocks of 16 channels with ties half_up / half_up
    (the rest gemmlowp: tflite_optimized); XNNPACK its float32 form. Power-of-two scales make ties frequent."""
    from hwsim.ops.reduce import mean_hw

    rng = np.random.default_rng(31)
    forms = ("tflite_optimized", "tflite_reference", "xnnpack", "exact")
    diff = dict.fromkeys(forms, 0)
    for i in range(30):
        c, hw = (6, 16, 24, 32, 40)[i % 5], int(rng.integers(2, 8))
        x = rng.integers(-128, 128, (1, c, hw, hw))
        if i % 2:
            si, so = float(f32(rng.uniform(0.01, 0.1))), float(f32(rng.uniform(0.005, 0.05)))
        else:
            si = 2.0 ** -int(rng.integers(3, 7))
            so = si * float(rng.choice([1, 0.5, 2, 0.25]))
        zi, zo = int(rng.integers(-128, 128)), int(rng.integers(-30, 30))
        yt = _tfl_mean(x.transpose(0, 2, 3, 1), si, zi, so, zo, resolver)
        for f in forms:
            y = mean_hw(x, si, zi, so, zo, -128, 127, "half_away", form=f)
            diff[f] += int((y != yt).sum())
            if f != "exact":
                np.testing.assert_array_equal(mean_hw(x, si, zi, so, zo, -128, 127, "half_away", form=f,
                                                      impl="reference"), y)
    want = "tflite_optimized" if resolver == "optimized" else "xnnpack"
    assert diff[want] == 0 and all(v > 0 for k, v in diff.items() if k != want), diff


@needs_x86
def test_xnnpack_average_pool_is_the_builtin_kernel():
    """XNNPACK has no int8 average pooling: LiteRT runs AVERAGE_POOL_2D with its built-in kernel under the
    default resolver too (raw sum over the taps inside the image, (acc +- n/2) / n: avgpool_form = "tflite")."""
    from hwsim.ops.reduce import avg_pool2d

    rng = np.random.default_rng(4)
    for i in range(12):
        c, h, k, st, same = int(rng.integers(1, 20)), int(rng.integers(3, 10)), int(rng.integers(2, 4)), \
            int(rng.integers(1, 3)), bool(i % 2)
        x = rng.integers(-128, 128, (1, h, h, c))
        s, z = float(f32(rng.uniform(0.01, 0.1))), int(rng.integers(-128, 128))
        ho = _out(h, k, st, same)

        def options(b):
            tflite.Pool2DOptionsStart(b)
            tflite.Pool2DOptionsAddPadding(b, 0 if same else 1)
            for f in ("StrideW", "StrideH"):
                getattr(tflite, "Pool2DOptionsAdd" + f)(b, st)
            for f in ("FilterWidth", "FilterHeight"):
                getattr(tflite, "Pool2DOptionsAdd" + f)(b, k)
            return tflite.Pool2DOptionsEnd(b)
        model = build_model([_i8(x.shape, s, z), _i8((1, ho, ho, c), s, z)], BO.AVERAGE_POOL_2D, [0], [1],
                            BOpt.Pool2DOptions, options, [0])
        yt = run(model, "xnnpack", x)
        np.testing.assert_array_equal(yt, run(model, "optimized", x))
        pad = _same_pad(h, k, st) * 2 if same else (0, 0, 0, 0)
        y = avg_pool2d(x.transpose(0, 3, 1, 2), (k, k), (st, st), pad, z, "half_away", count_include_pad=False,
                       form="raw_sum")
        np.testing.assert_array_equal(y.transpose(0, 2, 3, 1), yt)


# ----------------------------------------------------------------------------- QUANTIZE of the float input
@pytest.mark.parametrize("resolver", [pytest.param("optimized", marks=needs_x86), "reference",
                                      pytest.param("xnnpack", marks=needs_x86)])
def test_input_quantize_identical(resolver):
    """float32 -> int8 QUANTIZE on exact ties (k + 1/2) s and their float32 neighbours, lengths with and without
    a tail mod 8: each resolver == its ``activations.input_division`` grid (hwsim.compile.LITERT_QUANTIZE_GRIDS);
    the other forms (and hwsim's float64 default) disagree."""
    from tflite.TensorType import TensorType

    from hwsim.compile import LITERT_QUANTIZE_GRIDS, Grid

    rng = np.random.default_rng(17)
    forms = {**LITERT_QUANTIZE_GRIDS, "float64": Grid}
    want = {"reference": "tflite_reference", "optimized": "tflite_optimized", "xnnpack": "xnnpack"}[resolver]
    diff = dict.fromkeys(forms, 0)
    for i in range(24):
        s = float(f32(rng.uniform(0.003, 0.05))) if i % 2 else 2.0 ** -int(rng.integers(3, 8))
        z, n = int(rng.integers(-20, 20)), (48, 51, 37, 64)[i % 4]
        k = rng.integers(-100, 100, n)
        v = ((k + 0.5) * np.float64(s)).astype(f32)
        v = np.where(rng.random(n) < 0.3, np.nextafter(v, rng.choice([-np.inf, np.inf], n).astype(f32)), v).astype(f32)
        ft = dict(shape=[1, 1, 1, n], type=TensorType.FLOAT32, scale=np.zeros(0, f32), zp=np.zeros(0, np.int64))
        model = build_model([ft, _i8((1, 1, 1, n), s, z)], BO.QUANTIZE, [0], [1], 0, lambda b: 0, [0])
        yt = run(model, resolver, v.reshape(1, 1, 1, n)).reshape(1, n, 1, 1)
        for f, cls in forms.items():
            y = cls(s, z, -128, 127, 8, True).quantize(v.reshape(1, n, 1, 1))  # NCHW: n channels, 1x1
            diff[f] += int((y != yt).sum())
    assert diff[want] == 0 and all(d > 0 for f, d in diff.items() if f != want), diff


@needs_x86
def test_xnnpack_mul_identical():
    """MUL under the default resolver: XNNPACK's qs8 vmul "fp32" requantization, y = round_half_even(fl32(fl32(p) *
    fl32(fl32(s_a s_b) / s_y))) + z_y, p = (a - z_a)(b - z_b) (src/microparams-init.c,
    xnn_init_qs8_mul_minmax_scalar_params: product_scale / output_scale in float): ops.mul with the float32 requant
    multiplier (what int8-litert-xnnpack's mul_form = "requant" gives); gemmlowp's fixed MUL (the built-in kernels)
    disagrees. Same shapes and a squeeze-excitation broadcast. (PyTorch's inverse multiplier fl32(fl32(s_a s_b)
    fl32(1/s_y)) rarely differs from it and is not separated by these cases.)"""
    from hwsim.ops.mul import mul

    rng = np.random.default_rng(12)
    cfg = ops.Requant(mode="float32", rounding="half_even")
    diff = {"fixed": 0}
    for i in range(24):
        sa, sb = (float(f32(rng.uniform(0.01, 0.1))) for _ in range(2))
        sy = float(f32(f32(sa) * f32(sb) * rng.choice([1, 2, 0.5, 4]))) if i % 2 else float(f32(rng.uniform(0.001, 0.01)))
        za, zb, zy = (int(v) for v in rng.integers(-20, 20, 3))
        a = rng.integers(-128, 128, (1, 4, 5, 8))
        b = rng.integers(-128, 128, (1, 1, 1, 8) if i % 3 == 0 else (1, 4, 5, 8))

        def options(bld):
            tflite.MulOptionsStart(bld)
            tflite.MulOptionsAddFusedActivationFunction(bld, 0)
            return tflite.MulOptionsEnd(bld)
        model = build_model([_i8(a.shape, sa, za), _i8(b.shape, sb, zb), _i8(a.shape, sy, zy)], BO.MUL, [0, 1], [2],
                            BOpt.MulOptions, options, [0, 1])
        yt = run(model, "xnnpack", a, b).transpose(0, 3, 1, 2)
        kw = dict(a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy, qmin=-128,
                  qmax=127)
        at, bt = a.transpose(0, 3, 1, 2), b.transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(mul(at, bt, cfg=cfg, multiplier="requant", **kw)[0], yt)
        diff["fixed"] += int((mul(at, bt, cfg=GEMMLOWP, multiplier="requant", **kw)[0] != yt).sum())
    assert all(v > 0 for v in diff.values()), diff


@needs_x86
@pytest.mark.parametrize("fn", ["sigmoid", "hardswish"])
def test_xnnpack_logistic_and_hard_swish_are_the_builtin_tables(fn):
    """LOGISTIC and HARD_SWISH under the default resolver give the built-in kernels' integers (tflite_lut,
    tflite_hardswish) on every input code of random and power-of-two grids; hardswish's exact table disagrees."""
    from hwsim.ops.activation import build_table

    rng = np.random.default_rng(13)
    x = np.arange(-128, 128).reshape(1, 16, 16, 1)
    opcode, form = (BO.LOGISTIC, "tflite_lut") if fn == "sigmoid" else (BO.HARD_SWISH, "tflite_hardswish")
    exact_diff = 0
    for i in range(12):
        si = float(f32(rng.uniform(0.02, 0.2))) if i % 2 else 2.0 ** -int(rng.integers(3, 6))
        zi = int(rng.integers(-30, 30))
        so, zo = (1 / 256, -128) if fn == "sigmoid" else \
            (float(f32(rng.uniform(0.02, 0.1))) if i % 2 else 2.0 ** -int(rng.integers(3, 6)), int(rng.integers(-30, 10)))
        model = build_model([_i8(x.shape, si, zi), _i8(x.shape, so, zo)], opcode, [0], [1], 0, lambda b: 0, [0])
        yt = run(model, "xnnpack", x).ravel()
        np.testing.assert_array_equal(yt, run(model, "optimized", x).ravel())
        tab = np.clip(build_table(fn, si, zi, -128, 127, so, zo, -128, 127, form=form), -128, 127)
        np.testing.assert_array_equal(tab, yt)
        ex = np.clip(build_table(fn, si, zi, -128, 127, so, zo, -128, 127, "half_even", form="exact"), -128, 127)
        exact_diff += int((ex != yt).sum())
    assert fn == "sigmoid" or exact_diff > 0
