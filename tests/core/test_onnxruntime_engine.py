"""Bit-exact agreement with ONNX Runtime's integer CPU kernels (MLAS), ORT's outputs are the truth.

How hwsim reproduces ONNX Runtime (docs/semantics.md, section 11):
- QLinearConv / QLinearMatMul: int32 accumulator holding the int32 bias (ORT adds it before the float
  conversion), then float32 requant with M = fl32(fl32(s_x*s_w)/s_y) ("sequential"), round half even,
  z_y added after rounding: the `ops.Requant()` defaults, bias via `bias_q` (no float bias);
- MatMulInteger / ConvInteger: the int32 outputs are `ops.linear` / `ops.conv2d` accumulators;
- com.microsoft QLinearAdd (MLAS AVX2 kernel): `ops.Requant(add_form="ratio_fma")`.
Models are built in memory with onnx.helper; sessions run single-threaded, graph optimizations off
(one test turns them on). Weights given as initializers take ORT's prepacked paths (including the
symmetric-weight kernels for int8 weights with zero point 0), weights given as graph inputs the plain
im2col + GEMM path; both are checked. int8 weights stay in [-64, 63]: non-VNNI AVX2 u8s8 kernels
saturate int16 pair sums (vpmaddubsw), which hwsim does not model (as in test_torch_engine.py).
"""

import platform

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from hwsim import ops  # noqa: E402
from hwsim import reference as ref  # noqa: E402
from hwsim.errors import HwsimError  # noqa: E402
from tests.engines import cpu_flags, multiplier_order_targets, ort_session  # noqa: E402

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="ONNX Runtime's MLAS arithmetic verified on x86-64 only")
f32 = np.float32
ONNX_TYPE = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}
GRID = {np.uint8: (0, 255), np.int8: (-128, 127)}


# ----------------------------------------------------------------------------- ORT side
def _run(nodes, inputs, feeds, inits, out_type, optimize=False, ms_domain=False):
    """Build a one-graph model in memory (output "y" of ``out_type``) and run it on the CPU EP, single-threaded."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, ONNX_TYPE[feeds[n].dtype.type],
                                                                         list(feeds[n].shape)) for n in inputs],
                              [helper.make_tensor_value_info("y", out_type, None)], inits)
    opsets = [helper.make_opsetid("", 13)] + ([helper.make_opsetid("com.microsoft", 1)] if ms_domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    sess = ort_session(model, optimize)
    return sess.run(None, {n: feeds[n] for n in inputs})[0].astype(np.int64)


def _t(name, v, dtype):
    return numpy_helper.from_array(np.asarray(v, dtype=dtype), name)


def _quant_inputs(x, sx, zx, w, sw, zw, sy, zy, bias, const_w):
    """(input names, feeds, initializers) of a QLinearConv / QLinearMatMul node; w already in ONNX layout."""
    xt, wt = x.dtype.type, w.dtype.type
    inits = [_t("sx", sx, f32), _t("zx", zx, xt), _t("sw", sw, f32), _t("zw", zw, wt), _t("sy", sy, f32),
             _t("zy", zy, xt)]
    feeds, graph_inputs = {"x": x}, ["x"]
    if const_w:
        inits.append(_t("w", w, wt))
    else:
        feeds["w"] = w
        graph_inputs.append("w")
    names = ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"]
    if bias is not None:
        inits.append(_t("b", bias, np.int32))
        names.append("b")
    return names, graph_inputs, feeds, inits


def ort_qlinearconv(x, sx, zx, w, sw, zw, sy, zy, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                    groups=1, const_w=True, optimize=False):
    """padding = (top, bottom, left, right) as in hwsim; ONNX pads = (top, left, bottom, right)."""
    names, gin, feeds, inits = _quant_inputs(x, sx, zx, w, sw, zw, sy, zy, bias, const_w)
    pt, pb, pl, pr = padding
    node = helper.make_node("QLinearConv", names, ["y"], strides=list(stride), pads=[pt, pl, pb, pr],
                            dilations=list(dilation), group=groups, kernel_shape=list(w.shape[2:]))
    return _run([node], gin, feeds, inits, ONNX_TYPE[x.dtype.type], optimize)


def ort_qlinearmatmul(x, sx, zx, w, sw, zw, sy, zy, const_w=True):
    """w is [N_out, K] as in hwsim; ONNX's B is its transpose, scales / zero points per output column."""
    names, gin, feeds, inits = _quant_inputs(x, sx, zx, np.ascontiguousarray(w.T), sw, zw, sy, zy, None, const_w)
    return _run([helper.make_node("QLinearMatMul", names, ["y"])], gin, feeds, inits, ONNX_TYPE[x.dtype.type])


def ort_integer_op(op, x, zx, w, zw, **attrs):
    inits = [_t("zx", zx, x.dtype.type), _t("zw", zw, w.dtype.type)]
    node = helper.make_node(op, ["x", "w", "zx", "zw"], ["y"], **attrs)
    return _run([node], ["x", "w"], {"x": x, "w": w}, inits, TensorProto.INT32)


def ort_qlinearadd(a, sa, za, b, sb, zb, sy, zy):
    t = a.dtype.type
    inits = [_t("sa", sa, f32), _t("za", za, t), _t("sb", sb, f32), _t("zb", zb, t), _t("sy", sy, f32), _t("zy", zy, t)]
    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"], domain="com.microsoft")
    return _run([node], ["a", "b"], {"a": a, "b": b}, inits, ONNX_TYPE[t], ms_domain=True)


# ----------------------------------------------------------------------------- hwsim side
def hwsim_qlinear(x, sx, zx, w, sw, zw, sy, zy, bias=None, cfg=ops.Requant(), **conv):
    """int32 bias into the accumulator, then requantize (ORT's QLinearConv / QLinearMatMul)."""
    zw = np.asarray(zw, np.int64).reshape(-1)
    if x.ndim == 4:
        acc, _ = ops.conv2d(x, w, bias, x_zero_point=int(zx), w_zero_point=zw, **conv)
    else:
        acc, _ = ops.linear(x, w, bias, x_zero_point=int(zx), w_zero_point=zw)
    p = ops.make_requant_params(float(sx), np.asarray(sw, np.float64).reshape(-1), float(sy), cfg)
    return ops.requantize(acc, p, cfg, int(zy), *GRID[x.dtype.type])[0]


def f32s(rng, lo, hi, n=None):
    return rng.uniform(lo, hi, n).astype(f32) if n else f32(rng.uniform(lo, hi))


def _weights(rng, shape, wtype, zw_kind):
    """(w, z_w): int8 weights in [-64, 63] (z_w = 0 for zw_kind 'zero', else small), uint8 weights full range."""
    if wtype is np.int8:
        w = rng.integers(-64, 64, shape).astype(np.int8)
        z = int(rng.integers(-6, 7)) if zw_kind != "zero" else 0
    else:
        w = rng.integers(0, 256, shape).astype(np.uint8)
        z = int(rng.integers(100, 156))
    return w, z


# ----------------------------------------------------------------------------- QLinearConv
CONV = [  # (name, act, wtype, per_channel, zw_kind, cin, cout, k, stride, padding, dilation, groups, bias)
    ("s8w-pt-pad1", np.uint8, np.int8, False, "zero", 8, 16, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    ("s8w-pc-s2-asym", np.uint8, np.int8, True, "zero", 6, 8, 3, (2, 2), (1, 0, 2, 1), (1, 1), 1, True),
    ("s8w-pc-s21-dil21-zw", np.uint8, np.int8, True, "tensor", 3, 5, 3, (2, 1), (0, 0, 0, 0), (2, 1), 1, True),
    ("s8w-pc-depthwise", np.uint8, np.int8, True, "zero", 8, 8, 3, (1, 1), (1, 1, 1, 1), (1, 1), 8, True),
    ("s8w-pt-depthwise-s2-asym", np.uint8, np.int8, False, "zero", 8, 8, 3, (2, 2), (0, 1, 1, 0), (1, 1), 8, False),
    ("s8w-pc-depthwise-mult2-zw", np.uint8, np.int8, True, "tensor", 4, 8, 3, (2, 2), (1, 1, 1, 1), (1, 1), 4, True),
    ("s8w-pc-g2-dil2", np.uint8, np.int8, True, "zero", 6, 4, 3, (1, 1), (2, 2, 2, 2), (2, 2), 2, True),
    ("s8w-pc-pointwise", np.uint8, np.int8, True, "zero", 16, 12, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    ("s8w-pt-5x5-s2", np.uint8, np.int8, False, "zero", 5, 7, 5, (2, 2), (2, 1, 2, 1), (1, 1), 1, True),
    ("u8w-pt", np.uint8, np.uint8, False, "tensor", 6, 8, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    ("u8w-pc-s2-asym", np.uint8, np.uint8, True, "tensor", 4, 6, 3, (2, 2), (0, 2, 1, 0), (1, 1), 2, True),
    ("u8w-pc-depthwise-dil2", np.uint8, np.uint8, True, "tensor", 6, 6, 3, (1, 1), (2, 2, 2, 2), (2, 2), 6, False),
    ("s8act-pc", np.int8, np.int8, True, "zero", 6, 8, 3, (1, 2), (1, 1, 0, 1), (1, 1), 1, True),
    ("s8act-pc-depthwise", np.int8, np.int8, True, "zero", 8, 8, 3, (2, 2), (1, 1, 1, 1), (1, 1), 8, True),
]


@pytest.mark.parametrize("case", CONV, ids=[c[0] for c in CONV])
def test_qlinearconv_random_layers_identical(case):
    name, act, wtype, pc, zw_kind, cin, cout, k, stride, padding, dilation, groups, with_bias = case
    rng = np.random.default_rng(sum(map(ord, name)))
    lo, hi = GRID[act]
    for draw in range(2):
        sx, sy = f32s(rng, 0.005, 0.05), f32s(rng, 0.02, 0.3)
        zx, zy = (int(v) for v in rng.integers(lo, hi + 1, 2))
        sw = f32s(rng, 0.001, 0.02, cout) if pc else f32s(rng, 0.001, 0.02)
        w, z = _weights(rng, (cout, cin // groups, k, k), wtype, zw_kind)
        zw = np.full(cout, z, wtype) if pc else wtype(z)  # ORT: per-channel weight zero points must be equal
        x = rng.integers(lo, hi + 1, (2, cin, 9, 8)).astype(act)
        bias = rng.integers(-2000, 2000, cout) if with_bias else None
        y = hwsim_qlinear(x, sx, zx, w, sw, zw, sy, zy, bias, stride=stride, padding=padding, dilation=dilation,
                          groups=groups)
        for const_w in (True, False):
            yo = ort_qlinearconv(x, sx, zx, w, sw, zw, sy, zy, bias, stride, padding, dilation, groups, const_w)
            assert y.shape == yo.shape
            np.testing.assert_array_equal(y, yo)


def test_qlinearconv_with_graph_optimizations_identical():
    """ORT_ENABLE_ALL rewrites QLinearConv (e.g. to the NHWC contrib op); the arithmetic stays the same."""
    rng = np.random.default_rng(11)
    for groups, cin, cout in ((1, 8, 16), (8, 8, 8)):
        sx, sy, sw = f32s(rng, 0.005, 0.05), f32s(rng, 0.02, 0.3), f32s(rng, 0.001, 0.02, cout)
        x = rng.integers(0, 256, (1, cin, 10, 10)).astype(np.uint8)
        w = rng.integers(-64, 64, (cout, cin // groups, 3, 3)).astype(np.int8)
        bias = rng.integers(-2000, 2000, cout)
        zw = np.zeros(cout, np.int8)
        yo = ort_qlinearconv(x, sx, 77, w, sw, zw, sy, 131, bias, (2, 2), (1, 1, 1, 1), groups=groups, optimize=True)
        y = hwsim_qlinear(x, sx, 77, w, sw, zw, sy, 131, bias, stride=2, padding=1, groups=groups)
        np.testing.assert_array_equal(y, yo)


# ----------------------------------------------------------------------------- QLinearMatMul / integer ops
@pytest.mark.parametrize("wtype", [np.int8, np.uint8], ids=["s8w", "u8w"])
@pytest.mark.parametrize("per_column", [False, True], ids=["per_tensor", "per_column"])
def test_qlinearmatmul_random_layers_identical(wtype, per_column):
    rng = np.random.default_rng(7 + per_column + 2 * (wtype is np.uint8))
    n_out, k = 12, 33
    for _ in range(3):
        sx, sy = f32s(rng, 0.005, 0.05), f32s(rng, 0.02, 0.3)
        zx, zy = (int(v) for v in rng.integers(0, 256, 2))
        sw = f32s(rng, 0.001, 0.02, n_out) if per_column else f32s(rng, 0.001, 0.02)
        w, _ = _weights(rng, (n_out, k), wtype, "tensor")
        # QLinearMatMul (unlike QLinearConv) allows a different weight zero point per output column
        zr = (-6, 7) if wtype is np.int8 else (100, 156)
        zw = rng.integers(*zr, n_out).astype(wtype) if per_column else wtype(rng.integers(*zr))
        x = rng.integers(0, 256, (7, k)).astype(np.uint8)
        y = hwsim_qlinear(x, sx, zx, w, sw, zw, sy, zy)
        for const_w in (True, False):
            np.testing.assert_array_equal(y, ort_qlinearmatmul(x, sx, zx, w, sw, zw, sy, zy, const_w))


def test_matmulinteger_and_convinteger_accumulators_identical():
    """The int32 outputs of ORT's integer ops are hwsim's accumulators (ORT wraps int32; nothing overflows here)."""
    rng = np.random.default_rng(5)
    for wtype in (np.int8, np.uint8):
        x = rng.integers(0, 256, (6, 40)).astype(np.uint8)
        w, zw = _weights(rng, (9, 40), wtype, "tensor")
        acc, _ = ops.linear(x, w, None, x_zero_point=131, w_zero_point=zw)
        np.testing.assert_array_equal(acc, ort_integer_op("MatMulInteger", x, np.uint8(131), np.ascontiguousarray(w.T),
                                                          wtype(zw)))
        xc = rng.integers(0, 256, (2, 4, 7, 9)).astype(np.uint8)
        wc, zc = _weights(rng, (6, 2, 3, 3), wtype, "tensor")
        accc, _ = ops.conv2d(xc, wc, None, x_zero_point=17, w_zero_point=zc, stride=(2, 1), padding=(1, 0, 2, 1),
                             dilation=(1, 2), groups=2)
        acco = ort_integer_op("ConvInteger", xc, np.uint8(17), wc, wtype(zc), strides=[2, 1], pads=[1, 2, 0, 1],
                              dilations=[1, 2], group=2)
        np.testing.assert_array_equal(accc, acco)


# ----------------------------------------------------------------------------- requant details
def test_exact_ties_frequent_and_zero_point_after_rounding():
    """Power-of-two scales make acc * M land on .5 for every odd acc; an odd z_y separates after/before."""
    rng = np.random.default_rng(3)
    sx, sy, zx, zy = f32(2.0**-4), f32(2.0**-9), 131, 77  # M = 2^-1 (and 2^0, 2^-2, 2^-3 per channel)
    for sw in (f32(2.0**-6), (2.0 ** -np.array([5, 6, 7, 6, 5, 8])).astype(f32)):
        x = rng.integers(121, 142, (2, 2, 7, 7)).astype(np.uint8)  # small |x - z_x|, |w| keep acc * M in the grid
        w = rng.integers(-8, 8, (6, 2, 3, 3)).astype(np.int8)
        bias = rng.integers(-20, 21, 6)
        zw = np.zeros(np.shape(sw), np.int8)
        acc, _ = ops.conv2d(x, w, bias, x_zero_point=zx, padding=1)
        m = np.broadcast_to(np.float64(sx) * sw / np.float64(sy), (6,)).reshape(1, -1, 1, 1)
        for const_w in (True, False):
            yo = ort_qlinearconv(x, sx, zx, w, sw, zw, sy, zy, bias, padding=(1, 1, 1, 1), const_w=const_w)
            ties = (np.abs(acc * m % 1 - 0.5) == 0) & (yo > 0) & (yo < 255)
            assert ties.mean() > 0.1  # ties are frequent
            np.testing.assert_array_equal(hwsim_qlinear(x, sx, zx, w, sw, zw, sy, zy, bias, padding=1), yo)
            for other in (ops.Requant(zero_point="before"), ops.Requant(rounding="half_away"),
                          ops.Requant(rounding="half_up")):
                assert (hwsim_qlinear(x, sx, zx, w, sw, zw, sy, zy, bias, cfg=other, padding=1) != yo).sum() > 0
    xl, wl = rng.integers(124, 133, (50, 17)).astype(np.uint8), rng.integers(-6, 7, (5, 17)).astype(np.int8)
    sx, sw, sy = f32(2.0**-4), f32(2.0**-7), f32(2.0**-10)  # M = 2^-1
    yo = ort_qlinearmatmul(xl, sx, 128, wl, sw, np.int8(0), sy, 129)
    acc, _ = ops.linear(xl, wl, None, x_zero_point=128)
    assert ((acc % 2 == 1) & (yo > 0) & (yo < 255)).mean() > 0.3
    np.testing.assert_array_equal(hwsim_qlinear(xl, sx, 128, wl, sw, 0, sy, 129), yo)
    assert (hwsim_qlinear(xl, sx, 128, wl, sw, 0, sy, 129, cfg=ops.Requant(zero_point="before")) != yo).any()


def test_multiplier_order_is_sequential_not_fused():
    """Targets where fl32(fl32(sx*sw)/sy) and fl32(sx*sw/sy) round differently: ORT follows 'sequential'."""
    rng = np.random.default_rng(1)
    n_targets = fused_wrong = 0
    for sx, sw, sy, x, w in multiplier_order_targets(rng):
        x, w = x.astype(np.uint8), w.astype(np.int8)
        yo = ort_qlinearmatmul(x, sx, 128, w, sw, np.int8(0), sy, 128)
        np.testing.assert_array_equal(hwsim_qlinear(x, sx, 128, w, sw, 0, sy, 128), yo)
        # the same accumulators through a 1x1 QLinearConv (positions along W)
        xc = np.ascontiguousarray(x.T.reshape(1, 2, 1, -1))
        yc = ort_qlinearconv(xc, sx, 128, w.reshape(1, 2, 1, 1), sw, np.int8(0), sy, 128)
        np.testing.assert_array_equal(yc.reshape(-1), yo.reshape(-1))
        yfused = hwsim_qlinear(x, sx, 128, w, sw, 0, sy, 128, cfg=ops.Requant(multiplier_order="fused"))
        n_targets += len(x)
        fused_wrong += int((yfused != yo).sum())
    assert n_targets >= 10 and fused_wrong == n_targets


# ----------------------------------------------------------------------------- QLinearAdd
ADD_SHAPES = [  # (a shape, b shape): equal, scalar b, scalar a, per-channel a / b, row broadcast, 1-element
    ((1, 3, 5, 37), (1, 3, 5, 37)), ((2, 3, 4, 9), ()), ((), (2, 3, 4, 9)), ((1, 3, 1, 1), (2, 3, 4, 5)),
    ((2, 3, 4, 5), (1, 3, 1, 1)), ((1, 1, 1, 7), (2, 3, 4, 7)), ((2, 3, 4, 1), (2, 3, 4, 6)),
    ((2, 1, 4, 5), (2, 3, 4, 5)),
    ((1,), (1,)), ((3, 1), (1, 1)), ((1, 1), (3, 1)), ((4,), (3, 1)),
]
ADD_OK = ({"avx2", "fma"} <= cpu_flags(), "QLinearAdd modelled for MLAS's AVX2/FMA kernel (CPU lacks avx2/fma)")


def _add_scales(rng, tie_rich):
    if tie_rich:
        sa, sb = 2.0 ** -int(rng.integers(3, 7)), 2.0 ** -int(rng.integers(3, 7))
        return f32(sa), f32(sb), f32(rng.choice([1, 3, 5, 0.75]) * 2.0 ** -int(rng.integers(2, 6)))
    return f32s(rng, 0.01, 0.1), f32s(rng, 0.01, 0.1), f32s(rng, 0.01, 0.1)


@pytest.mark.skipif(not ADD_OK[0], reason=ADD_OK[1])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("tie_rich", [False, True], ids=["random", "tie_rich"])
def test_qlinearadd_identical(dtype, tie_rich):
    rng = np.random.default_rng(20 + tie_rich + 2 * (dtype is np.int8))
    lo, hi = GRID[dtype]
    cfg = ops.Requant(add_form="ratio_fma")
    n = other_form = unswapped = 0
    for it in range((8 if tie_rich else 3) * len(ADD_SHAPES)):
        sha, shb = ADD_SHAPES[it % len(ADD_SHAPES)]
        sa, sb, sy = _add_scales(rng, tie_rich)
        za, zb, zy = (int(v) for v in rng.integers(lo, hi + 1, 3))
        a, b = rng.integers(lo, hi + 1, sha).astype(dtype), rng.integers(lo, hi + 1, shb).astype(dtype)
        yo = ort_qlinearadd(a, sa, za, b, sb, zb, sy, zy)
        kw = dict(a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy,
                  qmin=lo, qmax=hi)
        y, _ = ops.add(a, b, cfg=cfg, **kw)
        assert y.shape == yo.shape
        np.testing.assert_array_equal(y, yo)
        n += y.size
        other_form += int((ops.add(a, b, **kw)[0] != yo).sum())  # PyTorch's dequantize form
        if ops.ratio_fma_swaps(sha, shb):  # full-shape operands: ORT would not exchange them
            af, bf = (np.broadcast_to(v, yo.shape).copy() for v in (a, b))
            unswapped += int((ops.add(af, bf, cfg=cfg, **kw)[0] != yo).sum())
    assert n > 1000
    if tie_rich:  # the options are not cosmetic: both differences show up on ties
        assert other_form > 0 and unswapped > 0


def test_ratio_fma_add_fast_equals_reference():
    rng = np.random.default_rng(9)
    for rounding in ("half_even", "half_away", "floor", "stochastic"):
        cfg = ops.Requant(add_form="ratio_fma", rounding=rounding, seed=5)
        for sha, shb in ADD_SHAPES[:8]:
            sa, sb, sy = _add_scales(rng, rounding != "stochastic")
            a, b = rng.integers(-128, 128, sha), rng.integers(-128, 128, shb)
            kw = dict(a_scale=sa, a_zero_point=-3, b_scale=sb, b_zero_point=11, y_scale=sy, y_zero_point=-5,
                      qmin=-128, qmax=127, cfg=cfg)
            y, c = ops.add(a, b, **kw)
            yr, cr = ops.add(a, b, impl="reference", **kw)
            np.testing.assert_array_equal(y, yr)
            assert c == cr


def test_fma_f32_is_one_rounding_even_where_float64_double_rounds():
    """x*r + z lands within 2^-33 of a float32 midpoint: fl32(fl64(.)) double-rounds, fma_f32 must not."""
    xs, rs = [], []
    for x in range(3, 200001, 2):
        r = f32(2.0**-4 / x)
        d = x * float(r) - 2.0**-4  # exact: x * r has at most 42 significant bits
        if d != 0 and abs(d) < 2.0**-33:
            xs.append(x)
            rs.append(r)
        if len(xs) == 12:
            break
    x, r, z = np.array(xs), np.array(rs, f32), np.full(len(xs), 2.0**20, f32)
    exact = np.array([ref.fma_f32_int(int(a), b, c) for a, b, c in zip(x, r, z)], f32)
    naive = (x * r.astype(np.float64) + np.float64(2.0**20)).astype(f32)
    assert len(xs) == 12 and (naive != exact).any()
    np.testing.assert_array_equal(ops.fma_f32(x, r, z), exact)
    rng = np.random.default_rng(2)  # and in general, over wide exponent ranges
    x = rng.integers(-(2**28), 2**28, 3000)
    r = (rng.uniform(-2, 2, 3000) * 2.0 ** rng.integers(-60, 20, 3000)).astype(f32)
    z = (rng.uniform(-2, 2, 3000) * 2.0 ** rng.integers(-30, 30, 3000)).astype(f32)
    np.testing.assert_array_equal(ops.fma_f32(x, r, z),
                                  np.array([ref.fma_f32_int(int(a), b, c) for a, b, c in zip(x, r, z)], f32))


def test_ratio_fma_swap_rule_and_errors():
    assert not ops.ratio_fma_swaps((2, 3), (2, 3)) and not ops.ratio_fma_swaps((2, 3), ())
    assert ops.ratio_fma_swaps((), (2, 3)) and ops.ratio_fma_swaps((1, 3, 1, 1), (2, 3, 4, 5))
    assert ops.ratio_fma_swaps((1,), (1,)) and ops.ratio_fma_swaps((3, 1), ())
    assert not ops.ratio_fma_swaps((1, 1, 5), (4, 5)) and ops.ratio_fma_swaps((4, 1), (1, 4, 3))
    kw = dict(a_scale=0.1, a_zero_point=0, b_scale=0.1, b_zero_point=0, y_scale=0.1, y_zero_point=0, qmin=0, qmax=255)
    with pytest.raises(HwsimError, match="vector_width"):
        ops.add(np.zeros(3), np.zeros(3), cfg=ops.Requant(add_form="ratio_fma"), vector_width=8, **kw)
    with pytest.raises(HwsimError, match="2\\^29"):
        ops.add(np.array([2**30]), np.zeros(1), cfg=ops.Requant(add_form="ratio_fma"), **kw)
    with pytest.raises(HwsimError, match="add_form"):
        ops.Requant(add_form="onnxruntime")
