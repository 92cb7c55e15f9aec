"""Quantized element-wise mul (hwsim.ops.mul): fast == reference; PyTorch, ONNX Runtime, LiteRT agreement."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim import fixedpoint as fp
from hwsim import ops
from hwsim.errors import HwsimError
from hwsim.ops.mul import mul

f32 = np.float32
CONFIGS = {
    **{f"float32_{r}": ops.Requant(rounding=r) for r in fp.ROUNDING_MODES},
    "float32_zp_before": ops.Requant(zero_point="before"),
    "fixed_double": ops.Requant(mode="fixed"),
    "fixed_ruy": ops.Requant(mode="fixed", fixed_ties=("half_up", "half_up")),
    "fixed_single": ops.Requant(mode="fixed", fixed_rounding="single", fixed_ties=("half_up", "half_up")),
    "fixed_q15": ops.Requant(mode="fixed", fixed_rounding="single", multiplier_bits=15),
    "fixed_f32product": ops.Requant(mode="fixed", fixed_product="float32"),
    **{f"pow2_{r}": ops.Requant(mode="pow2", rounding=r) for r in fp.ROUNDING_MODES},
}
SHAPES = [((2, 3, 4, 5), (2, 3, 1, 1)), ((1, 2, 3, 3), (1, 2, 3, 3)), ((2, 3, 1, 1), (2, 3, 4, 4)), ((5,), ())]


def _kw(cfg, rng, bits, signed):
    lo, hi = fp.int_range(bits, signed)
    if cfg.mode == "pow2":
        sa, sb, sy = (2.0 ** -int(rng.integers(0, 8)) for _ in range(3))
    else:
        sa, sb, sy = (float(f32(rng.uniform(0.01, 1.0))) for _ in range(3))
    za, zb, zy = (int(rng.integers(lo, hi + 1)) for _ in range(3))
    return lo, hi, dict(a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy,
                        qmin=lo, qmax=hi, cfg=cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_equals_reference_every_mode_width_and_grid(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    for bits in range(2, 9):
        for signed in (True, False):
            for sa_shape, sb_shape in SHAPES:
                lo, hi, kw = _kw(cfg, rng, bits, signed)
                a = rng.integers(lo, hi + 1, sa_shape)
                b = rng.integers(lo, hi + 1, sb_shape)
                a.reshape(-1)[:3] = [lo, hi, kw["a_zero_point"]][: a.size]  # boundary inputs
                for mult in ("inverse", "requant"):
                    yf, cf = mul(a, b, multiplier=mult, index_offset=7, **kw)
                    yr, cr = mul(a, b, multiplier=mult, impl="reference", index_offset=7, **kw)
                    assert np.array_equal(yf, yr) and cf == cr, (bits, signed, sa_shape, mult)
                    assert yf.shape == np.broadcast_shapes(sa_shape, sb_shape)


def test_exact_products_on_power_of_two_grids():
    # s_a s_b / s_y = 1: y = clamp(p + z_y) exactly in every mode
    a = np.arange(-8, 8).reshape(1, 16, 1, 1)
    b = np.arange(-8, 8).reshape(1, 1, 1, 16)
    for cfg in (ops.Requant(), ops.Requant(mode="fixed"), ops.Requant(mode="pow2")):
        y, c = mul(a, b, a_scale=0.5, a_zero_point=0, b_scale=0.25, b_zero_point=0, y_scale=0.125, y_zero_point=3,
                   qmin=-128, qmax=127, cfg=cfg)
        assert np.array_equal(y, np.clip(a * b + 3, -128, 127)) and c == 0


def test_rounding_modes_differ_on_ties():
    a = np.arange(-64, 64)
    outs = {r: mul(a, np.array([1]), a_scale=0.5, a_zero_point=0, b_scale=1.0, b_zero_point=0, y_scale=1.0,
                   y_zero_point=0, qmin=-128, qmax=127, cfg=ops.Requant(mode="pow2", rounding=r))[0]
            for r in ("half_even", "half_away", "half_up", "floor", "trunc")}
    keys = list(outs)
    assert all(not np.array_equal(outs[p], outs[q]) for i, p in enumerate(keys) for q in keys[i + 1:])
    assert np.array_equal(outs["half_even"], np.rint(a / 2))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(CONFIGS)), st.integers(2, 8), st.booleans(), st.data())
def test_property_in_bounds_commutative_and_fast_is_reference(name, bits, signed, data):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    lo, hi, kw = _kw(cfg, rng, bits, signed)
    a = rng.integers(lo, hi + 1, (1, 3, 2, 2))
    b = rng.integers(lo, hi + 1, (1, 3, 1, 1))
    y, _ = mul(a, b, **kw)
    assert y.min() >= lo and y.max() <= hi
    assert np.array_equal(y, mul(a, b, impl="reference", **kw)[0])
    sw = dict(kw, a_scale=kw["b_scale"], b_scale=kw["a_scale"], a_zero_point=kw["b_zero_point"],
              b_zero_point=kw["a_zero_point"])
    if cfg.rounding != "stochastic":
        assert np.array_equal(y, mul(b, a, **sw)[0])  # a*b == b*a, scales exchanged


def test_bad_input_one_line_errors():
    kw = dict(a_scale=0.1, a_zero_point=0, b_scale=0.1, b_zero_point=0, y_scale=0.1, y_zero_point=0,
              qmin=-128, qmax=127)
    with pytest.raises(HwsimError, match="do not broadcast"):
        mul(np.zeros((2, 3), np.int64), np.zeros((4,), np.int64), **kw)
    with pytest.raises(HwsimError, match="dtype"):
        mul(np.zeros(3), np.zeros(3, np.int64), **kw)
    with pytest.raises(HwsimError, match="mul multiplier"):
        mul(np.zeros(3, np.int64), np.zeros(3, np.int64), multiplier="fused", **kw)
    with pytest.raises(HwsimError, match="power of two"):
        mul(np.zeros(3, np.int64), np.zeros(3, np.int64), cfg=ops.Requant(mode="pow2"), **kw)


def test_squeeze_excite_speed_comparable_to_add():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (8, 64, 28, 28))
    g = rng.integers(-128, 128, (8, 64, 1, 1))
    kw = dict(a_scale=0.02, a_zero_point=3, b_scale=1 / 256, b_zero_point=-128, y_scale=0.02, y_zero_point=1,
              qmin=-128, qmax=127)
    times = {}
    for name, fn, args in (("mul", mul, (x, g)), ("add", ops.add, (x, x))):
        for cfg in (ops.Requant(), ops.Requant(mode="fixed")):
            fn(*args, **kw, cfg=cfg)
            t0 = time.perf_counter()
            fn(*args, **kw, cfg=cfg)
            times[name, cfg.mode] = time.perf_counter() - t0
    for mode in ("float32", "fixed"):
        assert times["mul", mode] < 4 * times["add", mode] + 0.05, times


# ----------------------------------------------------------------------------- engines
def _torch_mul(a, sa, za, b, sb, zb, sy, zy, signed):
    torch = pytest.importorskip("torch")
    td = torch.int8 if signed else torch.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qa = torch._make_per_tensor_quantized_tensor(torch.tensor(a, dtype=td), sa, za)
        qb = torch._make_per_tensor_quantized_tensor(torch.tensor(b, dtype=td), sb, zb)
        return torch.ops.quantized.mul(qa, qb, sy, zy).int_repr().numpy().astype(np.int64)


def _multiplier_targets(rng, draws=3000):
    """Scales where PyTorch's M = fl32(fl32(s_a s_b) fl32(1/s_y)) differs from fl32(fl32(s_a s_b) / s_y), with
    the products p (of int8 values, zero points 0) that round differently under the two multipliers."""
    prods = np.unique(np.arange(-128, 128)[:, None] * np.arange(-128, 128)[None, :])
    for _ in range(draws):
        sa, sb, sy = (f32(rng.uniform(lo, hi)) for lo, hi in ((0.01, 0.1), (0.01, 0.1), (0.005, 0.05)))
        m_inv, m_div = f32(f32(sa * sb) * f32(f32(1) / sy)), f32(f32(sa * sb) / sy)
        if m_inv == m_div:
            continue
        p = prods[(np.rint(prods.astype(f32) * m_inv) != np.rint(prods.astype(f32) * m_div))
                  & (np.abs(prods * float(m_inv)) < 120)]
        if p.size:
            yield float(sa), float(sb), float(sy), p


def test_torch_quantized_mul_identical_and_multiplier_order_matters():
    rng = np.random.default_rng(11)
    total, mism = 0, {"inverse": 0, "requant": 0, "fixed": 0}
    cases = []
    for i in range(40):  # random squeeze-excite and same-shape products, qint8 and quint8
        signed = bool(i % 2)
        lo, hi = (-128, 127) if signed else (0, 255)
        sa_shape, sb_shape = SHAPES[i % 2]
        a, b = rng.integers(lo, hi + 1, sa_shape), rng.integers(lo, hi + 1, sb_shape)
        sc = [float(f32(rng.uniform(0.005, 0.1))) if i % 4 < 2 else 2.0 ** -int(rng.integers(2, 7)) for _ in "abc"]
        cases.append((a, b, sc, [int(rng.integers(lo, hi + 1)) for _ in "abc"], signed))
    for k, (sa, sb, sy, p) in zip(range(20), _multiplier_targets(rng)):
        for v in p[:8]:
            d = [x for x in range(1, 128) if v % x == 0 and -128 <= v // x <= 127][0]
            cases.append((np.array([d]), np.array([v // d]), [sa, sb, sy], [0, 0, 0], True))
    for a, b, (sa, sb, sy), (za, zb, zy), signed in cases:
        lo, hi = (-128, 127) if signed else (0, 255)
        yt = _torch_mul(a, sa, za, b, sb, zb, sy, zy, signed)
        kw = dict(a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy, qmin=lo,
                  qmax=hi)
        for m in ("inverse", "requant"):
            mism[m] += int(np.count_nonzero(mul(a, b, multiplier=m, **kw)[0] != yt))
        mism["fixed"] += int(np.count_nonzero(mul(a, b, cfg=ops.Requant(mode="fixed"), **kw)[0] != yt))
        total += yt.size
    assert mism["inverse"] == 0, mism
    assert mism["requant"] > 0 and mism["fixed"] > 0, mism


def _ort_qlinearmul(a, sa, za, b, sb, zb, sy, zy, signed):
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from tests.engines import ort_session

    T = TensorProto.INT8 if signed else TensorProto.UINT8
    node = helper.make_node("QLinearMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"],
                            domain="com.microsoft")
    inits = ([helper.make_tensor(k, TensorProto.FLOAT, [], [v]) for k, v in (("as", sa), ("bs", sb), ("ys", sy))]
             + [helper.make_tensor(k, T, [], [v]) for k, v in (("az", za), ("bz", zb), ("yz", zy))])
    shape = list(np.broadcast_shapes(a.shape, b.shape))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", T, list(a.shape)),
                                        helper.make_tensor_value_info("b", T, list(b.shape))],
                          [helper.make_tensor_value_info("y", T, shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    dt = np.int8 if signed else np.uint8
    return ort_session(m, False).run(None, {"a": a.astype(dt), "b": b.astype(dt)})[0].astype(np.int64)


def test_onnxruntime_qlinearmul_identical_zero_point_before_rounding():
    from tests.engines import cpu_flags

    if "sse2" not in cpu_flags():
        pytest.skip("MLAS QLinearMul modelled on its SSE2 kernel (x86-64)")
    rng = np.random.default_rng(12)
    ort_cfg = ops.Requant(zero_point="before")
    mism = {"ort": 0, "zp_after": 0, "inverse": 0}
    for i in range(40):
        signed = bool(i % 2)
        lo, hi = (-128, 127) if signed else (0, 255)
        sa_shape, sb_shape = SHAPES[(i // 2) % 3]
        a, b = rng.integers(lo, hi + 1, sa_shape), rng.integers(lo, hi + 1, sb_shape)
        sa, sb, sy = (2.0 ** -int(rng.integers(2, 7)) if i % 4 < 2 else float(f32(rng.uniform(0.005, 0.1)))
                      for _ in range(3))
        za, zb, zy = (int(rng.integers(lo, hi + 1)) for _ in range(3))
        kw = dict(a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy, qmin=lo,
                  qmax=hi)
        ye = _ort_qlinearmul(a, sa, za, b, sb, zb, sy, zy, signed)
        mism["ort"] += int(np.count_nonzero(mul(a, b, cfg=ort_cfg, multiplier="requant", **kw)[0] != ye))
        mism["zp_after"] += int(np.count_nonzero(mul(a, b, multiplier="requant", **kw)[0] != ye))
        mism["inverse"] += int(np.count_nonzero(mul(a, b, cfg=ort_cfg, **kw)[0] != ye))
    assert mism["ort"] == 0, mism
    assert mism["zp_after"] > 0, mism


def _tfl_mul(a, sa, za, b, sb, zb, sy, zy, resolver):
    pytest.importorskip("ai_edge_litert.interpreter")
    from tests.core.test_litert_engine import BO, BOpt, _i8, build_model, run, tflite

    def options(bld):
        tflite.MulOptionsStart(bld)
        tflite.MulOptionsAddFusedActivationFunction(bld, 0)
        return tflite.MulOptionsEnd(bld)
    at, bt = a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    tensors = [_i8(at.shape, sa, za), _i8(bt.shape, sb, zb), _i8(np.broadcast_shapes(at.shape, bt.shape), sy, zy)]
    return run(build_model(tensors, BO.MUL, [0, 1], [2], BOpt.MulOptions, options, [0, 1]), resolver,
               at, bt).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("resolver", ["reference", "optimized"])
def test_litert_mul_identical_gemmlowp(resolver):
    rng = np.random.default_rng(13)
    names = ("fixed_double", "fixed_ruy", "fixed_single", "float32_half_even")
    mism = dict.fromkeys(names, 0)
    for i in range(30):
        sa_shape, sb_shape = SHAPES[i % 3]
        a, b = rng.integers(-128, 128, sa_shape), rng.integers(-128, 128, sb_shape)
        while True:  # |M p + z_y| < 2^15: LiteRT's optimized kernel narrows through int16 beyond that
            sa, sb, sy = (2.0 ** -int(rng.integers(2, 8)) if i % 2 else float(f32(rng.uniform(0.005, 0.1)))
                          for _ in range(3))
            if sa * sb / sy * 256 * 256 < 2**14:
                break
        za, zb, zy = (int(rng.integers(-128, 128)) for _ in range(3))
        ye = _tfl_mul(a, sa, za, b, sb, zb, sy, zy, resolver)
        kw = dict(a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy,
                  qmin=-128, qmax=127)
        for n in names:
            mism[n] += int(np.count_nonzero(mul(a, b, cfg=CONFIGS[n], multiplier="requant", **kw)[0] != ye))
    assert mism["fixed_double"] == 0, mism
    assert all(mism[n] > 0 for n in names[1:]), mism
