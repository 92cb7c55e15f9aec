"""hwsim.mlas (ONNX Runtime's QDQ float path, graph optimizations off) kernel by kernel: equal to the independent
test oracle (tests/importers/onnxnets.py: mlas_conv_f32, mlas_gemm_f32, mlas_global_avgpool_f32) and to ONNX
Runtime itself at ORT_DISABLE_ALL, op by op, on shapes that take every MLAS route (8-lane 1x1-output kernel,
four-at-a-time depthwise kernel, FMA chains in K blocks, Gemm's one-row kernel); the neighbouring orders
(float64 sums, one chain, numpy's float32 matmul) disagree; the FMA's one rounding at its boundary cases; the
profile keys and their one-line errors."""

from __future__ import annotations

import platform
from fractions import Fraction

import numpy as np
import pytest

from hwsim import mlas
from hwsim.errors import HwsimError
from hwsim.profile import load_profile
from tests.engines import cpu_flags

f32 = np.float32
_FLAGS = cpu_flags()
X86_FMA = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= _FLAGS,
                             reason="MLAS's float kernels modelled on x86-64 with AVX2/FMA")


def _ort(nodes, inits, x, in_shape):
    from tests.engines import ort_session
    from tests.importers.onnxnets import model

    return ort_session(model(nodes, inits, in_shape=in_shape), False).run(None, {"x": x})[0]


def _conv_ort(x, w, b, stride, pad, groups):
    from onnx import helper

    ins = ["x", "w"] + (["b"] if b is not None else [])
    inits = {"w": w} | ({"b": b} if b is not None else {})
    node = helper.make_node("Conv", ins, ["y"], strides=[stride] * 2, pads=[pad] * 4, group=groups)
    return _ort([node], inits, x, ("N",) + x.shape[1:])


# (C, H, M, k, stride, pad, groups): the routes of MlasConv (hwsim/mlas.py docstring)
CONVS = [
    (3, 8, 5, 3, 1, 1, 1),      # im2col, K = 27 < StrideK
    (8, 8, 8, 3, 2, 1, 8),      # depthwise: the M1 kernel, four at a time
    (16, 4, 32, 1, 1, 0, 1),    # pointwise: GemmDirect
    (19, 1, 7, 1, 1, 0, 1),     # pointwise on a 1x1 output: 8 lanes, 4 + 2 + 1 filters (K tail masked)
    (16, 1, 1, 1, 1, 0, 1),     # one filter on a 1x1 output
    (4, 3, 9, 3, 1, 0, 1),      # a 3x3 conv on a 1x1 output: 8 lanes
    (1, 4, 1, 4, 1, 0, 1),      # one filter, one input channel, 1x1 output: 8 lanes
    (2, 3, 1, 3, 1, 0, 1),      # one filter over two input channels, 1x1 output: the M1 kernel
    (8, 3, 8, 3, 1, 0, 8),      # depthwise on a 1x1 output: 8 lanes
    (16, 3, 40, 3, 1, 1, 1),    # more filters than output positions: one sgemm over all K
    (300, 6, 3, 3, 1, 1, 1),    # K = 2700: StrideK blocks
    (64, 2, 100, 3, 1, 1, 1),   # 2x2 output, K = 576 > StrideK, filters > positions
    (8, 4, 8, 1, 1, 0, 8),      # depthwise pointwise: the M1 kernel over all K
    (6, 5, 6, 3, 1, 1, 2),      # two groups of three filters
    (40, 9, 4, 5, 2, 2, 1),     # 5x5 stride 2
]


@pytest.mark.parametrize("c,h,m,k,stride,pad,groups", CONVS)
def test_conv_equals_the_oracle(c, h, m, k, stride, pad, groups):
    from tests.importers.onnxnets import mlas_conv_f32

    rng = np.random.default_rng(c * 100 + h)
    x = rng.standard_normal((3, c, h, h)).astype(f32)
    w = (rng.standard_normal((m, c // groups, k, k)) * 0.1).astype(f32)
    b = rng.standard_normal(m).astype(f32)
    got = mlas.conv2d(x, w, b, (stride, stride), (pad,) * 4, (1, 1), groups)
    assert np.array_equal(got, mlas_conv_f32(x, w, b, pad, stride, groups))


@X86_FMA
@pytest.mark.parametrize("c,h,m,k,stride,pad,groups", CONVS)
def test_conv_equals_onnxruntime(c, h, m, k, stride, pad, groups):
    """Every element == ORT's float Conv (optimizations off), with and without a bias."""
    rng = np.random.default_rng(c * 100 + h + 1)
    x = rng.standard_normal((2, c, h, h)).astype(f32)
    w = (rng.standard_normal((m, c // groups, k, k)) * 0.1).astype(f32)
    for b in (rng.standard_normal(m).astype(f32), None):
        got = mlas.conv2d(x, w, b, (stride, stride), (pad,) * 4, (1, 1), groups)
        assert np.array_equal(got, _conv_ort(x, w, b, stride, pad, groups))


@X86_FMA
@pytest.mark.parametrize("c,h,m,k,stride,pads,dil,groups", [
    (6, 9, 5, 3, 1, (1, 0, 2, 1), 2, 1), (8, 10, 8, 3, 2, (0, 1, 1, 0), 2, 8), (20, 7, 12, 3, 1, (2, 2, 2, 2), 3, 2),
    (5, 6, 3, 2, 1, (0, 1, 0, 1), 1, 1)])
def test_conv_with_dilation_and_asymmetric_pads_equals_onnxruntime(c, h, m, k, stride, pads, dil, groups):
    """im2col with dilation and asymmetric padding (hwsim pads are (top, bottom, left, right), ONNX's
    (top, left, bottom, right)): every element == ORT."""
    from onnx import helper

    rng = np.random.default_rng(c + h)
    x = rng.standard_normal((2, c, h, h)).astype(f32)
    w = (rng.standard_normal((m, c // groups, k, k)) * 0.1).astype(f32)
    b = rng.standard_normal(m).astype(f32)
    pt, pb, pl, pr = pads
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride] * 2, pads=[pt, pl, pb, pr],
                            dilations=[dil] * 2, group=groups)
    want = _ort([node], {"w": w, "b": b}, x, ("N", c, h, h))
    assert np.array_equal(mlas.conv2d(x, w, b, (stride, stride), pads, (dil, dil), groups), want)


@X86_FMA
def test_other_summation_orders_disagree_with_onnxruntime():
    """The neighbouring orders are wrong somewhere on the same cases: a float64 sum rounded once, numpy's float32
    conv (hwsim.floatref), one FMA chain over all K, and the 1x1-output route swapped (8 lanes <-> four at a
    time <-> FMA chain) each differ from ORT on some elements."""
    from hwsim.floatref import conv2d_float
    from tests.importers.onnxnets import mlas_m1_transpose_b, mlas_sgemm

    wrong = {"float64": 0, "float32 numpy": 0, "other 1x1 route": 0}
    for c, h, m, k, stride, pad, groups in CONVS:
        rng = np.random.default_rng(c * 100 + h + 1)
        x = rng.standard_normal((8, c, h, h)).astype(f32)
        w = (rng.standard_normal((m, c // groups, k, k)) * 0.1).astype(f32)
        want = _conv_ort(x, w, None, stride, pad, groups)
        args = ((stride, stride), (pad,) * 4, (1, 1), groups)
        wrong["float64"] += np.count_nonzero(
            conv2d_float(x.astype(np.float64), w.astype(np.float64), None, *args).astype(f32) != want)
        wrong["float32 numpy"] += np.count_nonzero(conv2d_float(x, w, None, *args) != want)
        if want.shape[2:] == (1, 1) and groups == 1:
            a, col = w.reshape(m, -1), np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))[:, :, :k, :k]
            col = col.reshape(len(x), -1).T
            # ORT: 8 lanes, except one filter over several channels (the M1 kernel); the swapped route
            other = mlas_m1_transpose_b(a, col) if m == 1 and c > 1 else mlas_sgemm(a, col, None)
            wrong["other 1x1 route"] += np.count_nonzero(other.reshape(want.shape) != want)
    assert all(v > 0 for v in wrong.values()), wrong


@X86_FMA
@pytest.mark.parametrize("k", [7, 100, 300, 1100])
def test_gemm_equals_onnxruntime_for_one_row_and_for_many(k):
    """ORT's float Gemm on a DequantizeLinear'd weight: rows >= 2 take the FMA kernel (K blocks of StrideK onto
    the bias), one row the 8-lane M1 transposed-B kernel; hwsim.mlas.gemm picks by its rows, as ORT does, so
    the same batches give the same floats, and each kernel applied to the other case differs (ORT's float path
    depends on the batching)."""
    from onnx import helper

    rng = np.random.default_rng(k)
    m = 37
    wq = rng.integers(-127, 128, (m, k)).astype(np.int8)
    bq = rng.integers(-50000, 50000, m).astype(np.int32)
    ws, bs = f32(0.01), f32(0.0003)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"]),
             helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"]),
             helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    inits = {"wq": wq, "ws": np.array(ws, f32), "bq": bq, "bs": np.array(bs, f32)}
    w, b = mlas.dequantize(wq, ws), mlas.dequantize(bq, bs)
    x = rng.standard_normal((16, k)).astype(f32)
    many = _ort(nodes, inits, x, ("N", k))
    one = np.concatenate([_ort(nodes, inits, x[i:i + 1], ("N", k)) for i in range(len(x))])
    assert np.array_equal(mlas.gemm(x, w, b), many)
    assert np.array_equal(np.concatenate([mlas.gemm(x[i:i + 1], w, b) for i in range(len(x))]), one)
    assert not np.array_equal(one, many)
    from hwsim.ops.add import fma_f32
    from tests.importers.onnxnets import mlas_gemm_f32

    assert np.array_equal(mlas_gemm_f32(x, w, b, True), many)
    if k > mlas.strides(m, k)[1]:  # several K blocks: one chain over all K is another order
        chain = np.zeros((len(x), m), f32)
        for i in range(k):
            chain = fma_f32(x[:, i:i + 1], w[:, i][None], chain)
        assert not np.array_equal((chain + b).astype(f32), many)


@X86_FMA
def test_global_average_pool_equals_onnxruntime_and_the_oracle():
    from onnx import helper

    from tests.importers.onnxnets import mlas_global_avgpool_f32

    rng = np.random.default_rng(5)
    for hw in (1, 2, 3, 5, 7, 16):
        x = (rng.standard_normal((4, 6, hw, hw)) * 10).astype(f32)
        want = _ort([helper.make_node("GlobalAveragePool", ["x"], ["y"])], {}, x, ("N", 6, hw, hw))
        got = mlas.global_avgpool(x)
        assert np.array_equal(got, want) and np.array_equal(got, mlas_global_avgpool_f32(x))
        if hw >= 5:
            assert not np.array_equal(x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(f32), want)


def _qdq_binary(op: str, sa, za, sb, zb, sy, zy):
    """ORT at ORT_DISABLE_ALL on DequantizeLinear(a), DequantizeLinear(b) -> Add / Mul -> QuantizeLinear, uint8,
    on every pair of codes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tests.engines import ort_session

    inits = [numpy_helper.from_array(np.asarray(v, d), n) for n, v, d in
             (("sa", sa, f32), ("za", za, np.uint8), ("sb", sb, f32), ("zb", zb, np.uint8), ("sy", sy, f32),
              ("zy", zy, np.uint8))]
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["da"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["db"]),
             helper.make_node(op, ["da", "db"], ["f"]), helper.make_node("QuantizeLinear", ["f", "sy", "zy"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.UINT8, [256 * 256]) for n in "ab"],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [256 * 256])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    a = np.repeat(np.arange(256, dtype=np.uint8), 256)
    b = np.tile(np.arange(256, dtype=np.uint8), 256)
    return a, b, ort_session(m, False).run(None, {"a": a, "b": b})[0].astype(np.int64)


def _kw(sa, za, sb, zb, sy, zy) -> dict:
    return dict(a_scale=f32(sa), a_zero_point=za, b_scale=f32(sb), b_zero_point=zb, y_scale=f32(sy),
                y_zero_point=zy, qmin=0, qmax=255)


@X86_FMA
@pytest.mark.parametrize("scales", [  # float32 scales where the forms part (a random search: 1 draw in 10)
    (0.08937124162912369, 199, 0.026457596570253372, 73, 0.01683269627392292, 205),
    (0.09817935526371002, 215, 0.0701264888048172, 176, 0.06679362803697586, 180),
    (0.08957606554031372, 12, 0.026579970493912697, 21, 0.06420277804136276, 96)])
def test_qdq_add_on_every_code_pair_equals_onnxruntime(scales):
    """The float Add (add_form "float32") on every pair of uint8 codes, saturation at 0 and 255 included, ==
    ORT's QDQ float path; QLinearAdd's ratio-FMA form (ORT with optimizations on) differs."""
    from hwsim import ops

    a, b, want = _qdq_binary("Add", *scales)
    y, _ = ops.add(a, b, cfg=ops.Requant(add_form="float32"), **_kw(*scales))
    assert np.array_equal(y, want) and (want.min() == 0 or want.max() == 255)  # saturating pairs included
    y, _ = ops.add(a, b, cfg=ops.Requant(add_form="ratio_fma"), **_kw(*scales))
    assert not np.array_equal(y, want)


@X86_FMA
@pytest.mark.parametrize("scales", [
    (0.006781679578125477, 94, 0.0041143568232655525, 1, 0.025670114904642105, 117),
    (0.04336847737431526, 164, 0.00437176413834095, 10, 0.016704384237527847, 215)])
def test_qdq_mul_on_every_code_pair_equals_onnxruntime(scales):
    """The float Mul (mul_form "float32") on every pair of uint8 codes == ORT's QDQ float path; QLinearMul's
    multiplier form (mul_form "onnxruntime") differs."""
    from hwsim import ops
    from hwsim.ops.mul import mul

    a, b, want = _qdq_binary("Mul", *scales)
    assert np.array_equal(np.clip(mlas.eltwise("mul", a, b, *scales), 0, 255), want)
    y, _ = mul(a, b, cfg=ops.Requant(multiplier_order="sequential", zero_point="before"), multiplier="requant",
               **_kw(*scales))
    assert not np.array_equal(y, want)


def _fma_exact(a, b, c) -> f32:
    """fl32(a * b + c) from the exact rational value (round half even)."""
    v = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    y = f32(float(v))  # float64 of v, then float32: may double-round; fix with the neighbours
    cands = [y, np.nextafter(y, f32(np.inf)), np.nextafter(y, f32(-np.inf))]
    def odd(t) -> int:  # the last significand bit: a tie goes to the even neighbour
        return int(np.frombuffer(f32(t).tobytes(), np.uint32)[0]) & 1

    return f32(min(cands, key=lambda t: (abs(Fraction(float(t)) - v), odd(t))))


def test_fma_rounds_once_at_the_double_rounding_cases():
    """_fma == the correctly rounded fl32(a*b + c), on random values and on constructed cases where the float64
    sum lands exactly halfway between two float32 values (a plain float64 sum rounded to float32 is then wrong)."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(3000).astype(f32) for _ in range(3))
    cases = list(zip(a, b, c))
    # halfway cases: a = 1 + 2^-23, b = 2^-24 (1 - 2^-23): a*b = 2^-24 - 2^-70 exactly; with c = 1 + 2^-23 the
    # float64 sum drops the 2^-70 and lands on the float32 midpoint 1 + 3 * 2^-24, whose tie goes up to the even
    # 1 + 2^-22, while the exact value lies below it (fl32 = 1 + 2^-23); likewise for -a*b (midpoint 1 + 2^-24)
    for e in range(-20, 21, 4):
        a1, b1, c1 = f32(1 + 2.0**-23), f32(2.0**(-24 + e) * (1 - 2.0**-23)), f32(2.0**e * (1 + 2.0**-23))
        cases += [(a1, b1, c1), (-a1, b1, c1), (a1, -b1, -c1), (-a1, -b1, -c1)]
    naive_wrong = 0
    for x, y, z in cases:
        want = _fma_exact(x, y, z)
        got = mlas._fma(np.float64(x), np.float64(y), np.float64(z))
        assert f32(got) == want, (x, y, z)
        naive_wrong += f32(np.float64(x) * np.float64(y) + np.float64(z)) != want
    assert naive_wrong > 0  # the boundary cases are real: one rounding of the float64 sum is not enough


def test_quantize_divides_and_rounds_half_even():
    """QuantizeLinear: round_half_even(fl32(y / s)) + z; multiplying by fl32(1 / s) instead differs somewhere."""
    s = f32(0.1)
    y = np.array([0.05, 0.15, 0.25, -0.25, 0.35], f32)
    q = mlas.quantize(y, s, 3)
    assert np.array_equal(q, np.rint((y / s).astype(f32)).astype(np.int64) + 3)
    differ = 0
    for s in (f32(0.1), f32(0.07), f32(0.013)):  # values near the ties, where the two quotients round apart
        y = (np.arange(-200, 200) + f32(0.5)).astype(f32) * s
        y = np.concatenate([y, np.nextafter(y, f32(np.inf)), np.nextafter(y, -f32(np.inf))])
        differ += np.count_nonzero(mlas.quantize(y, s, 0) != np.rint((y * (f32(1) / s)).astype(f32)).astype(np.int64))
    assert differ > 0
    assert np.array_equal(mlas.quantize(np.array([1e30, -1e30], f32), s, 0), [2**40, -(2**40)])  # then clamped


def test_profile_keys_and_one_line_errors():
    p = load_profile("int8-onnxruntime-qdq-float")
    r = p.requant
    assert (r.mac_form, r.add_form, r.mul_form, r.pool_form, r.activation_form) == (
        "float32_mlas", "float32", "float32", "float32_mlas", "onnxruntime")
    assert p.engine == "ONNX Runtime" and "float32_mlas" in p.describe()
    assert load_profile("int8-onnxruntime").requant.mac_form == "integer"
    for key, bad in (("requant.mac_form", "float64"), ("requant.add_form", "mlas"), ("requant.pool_form", "f32")):
        with pytest.raises(HwsimError) as e:
            load_profile("int8-onnxruntime", {key: bad})
        assert "\n" not in str(e.value) and key in str(e.value) and "allowed" in str(e.value)


def test_mac_float_path_on_a_calibrated_model_fast_equals_reference():
    """The float path is one implementation (fast and reference are the same code): on a calibrated net the
    profile runs, gives identical tensors for both impls, and differs from the integer profile somewhere."""
    from hwsim.compile import compile_model
    from hwsim.execute import run_integer
    from tests.nets import images, tiny_cnn

    g = tiny_cnn(seed=3)
    x = images(8, seed=4)
    qg = compile_model(g, load_profile("int8-onnxruntime-qdq-float"), images(32, seed=5))
    fast, ref = run_integer(qg, x, "fast"), run_integer(qg, x, "reference")
    for k in fast:
        assert np.array_equal(fast[k], ref[k]), k
    x = images(256, seed=4)
    fl = run_integer(qg, x)
    integer = run_integer(compile_model(g, load_profile("int8-onnxruntime"), images(32, seed=5)), x)
    assert np.count_nonzero(fl["gap"] != integer["gap"]) > 0 and any(
        np.count_nonzero(fl[k] != integer[k]) for k in fl if k.startswith("relu"))


def test_avgpool2d_under_the_float_pool_form_is_one_line():
    """MLAS's float AveragePool is not modelled: an avgpool2d layer under pool_form = "float32_mlas" stops with one
    line naming the key and the allowed values, before any arithmetic."""
    from hwsim.ops.pool import AvgPool2dSpec

    class _Layer:  # what AvgPool2dSpec.execute reads first
        name, profile = "pool", load_profile("int8-onnxruntime-qdq-float")

    with pytest.raises(HwsimError) as e:
        AvgPool2dSpec().execute(None, _Layer(), {}, None, "fast", 0, False)
    assert "\n" not in str(e.value) and "requant.pool_form" in str(e.value) and "allowed" in str(e.value)
