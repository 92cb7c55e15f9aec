"""Pools, add, concat: fast == reference in every mode, and each checked against its definition."""

from fractions import Fraction

import numpy as np
import pytest

from hwsim import fixedpoint as fp
from hwsim import ops
from hwsim.errors import HwsimError
from tests.core import cref
from tests.core.test_fixedpoint import round_fraction

MODES = list(fp.ROUNDING_MODES)
POOLS = [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (1, 1), (1, 1, 1, 1)), ((3, 2), (2, 1), (1, 0, 0, 1)),
         ((2, 3), (3, 2), (0, 1, 1, 1))]


@pytest.mark.parametrize("kernel,stride,padding", POOLS)
def test_max_pool_fast_equals_reference_and_definition(kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (2, 3, 7, 8))
    y = ops.max_pool2d(x, kernel, stride, padding, pad_value=-128)
    np.testing.assert_array_equal(y, ops.max_pool2d(x, kernel, stride, padding, -128, impl="reference"))
    if padding == (0, 0, 0, 0) and kernel == stride == (2, 2):
        np.testing.assert_array_equal(y, x[:, :, :6, :8].reshape(2, 3, 3, 2, 4, 2).max(axis=(3, 5)))
    # padding really holds pad_value: a pad value above every input wins at the borders
    if any(padding):
        assert (ops.max_pool2d(x, kernel, stride, padding, pad_value=500) == 500).any()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel,stride,padding", POOLS)
def test_avg_pool_fast_equals_reference(mode, kernel, stride, padding):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 3, 7, 8))
    y = ops.avg_pool2d(x, kernel, stride, padding, zero_point=100, rounding=mode, seed=5)
    np.testing.assert_array_equal(y, ops.avg_pool2d(x, kernel, stride, padding, 100, mode, seed=5, impl="reference"))
    g = ops.global_avg_pool(x, 100, mode, seed=5)
    np.testing.assert_array_equal(g, ops.global_avg_pool(x, 100, mode, seed=5, impl="reference"))


@pytest.mark.parametrize("mode", [m for m in MODES if m != "stochastic"])
def test_avg_pool_is_rounded_exact_mean_with_zero_point_padding(mode):
    x = np.arange(2 * 5 * 5).reshape(1, 2, 5, 5) * 7 % 23
    y = ops.avg_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1), zero_point=4, rounding=mode)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=4)
    for c, i, j in np.ndindex(2, 3, 3):
        s = int((xp[0, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3] - 4).sum())
        assert y[0, c, i, j] == 4 + round_fraction(Fraction(s, 9), mode)
    g = ops.global_avg_pool(x, 4, mode)
    assert g.tolist() == [[4 + round_fraction(Fraction(int((x[0, c] - 4).sum()), 25), mode) for c in range(2)]]


def _add_cfgs():
    out = [("float32", dict(rounding=r)) for r in MODES] + [("float32", dict(zero_point="before"))]
    out += [("fixed", dict()), ("fixed", dict(fixed_rounding="single", fixed_ties=("half_up", "half_up"))),
            ("fixed", dict(fixed_rounding="single", multiplier_bits=15))]
    out += [("pow2", dict(rounding=r)) for r in MODES]
    return out


@pytest.mark.parametrize("mode,kw", _add_cfgs(), ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_add_fast_equals_reference(mode, kw):
    rng = np.random.default_rng(2)
    cfg = ops.Requant(mode=mode, seed=3, **kw)
    if mode == "pow2":
        sa, sb, sy = 2.0**-4, 2.0**-6, 2.0**-5
    else:
        sa, sb, sy = 0.031, 0.0127, 0.047
    a = rng.integers(-128, 128, (2, 3, 4, 5))
    b = rng.integers(-128, 128, (1, 3, 1, 5))  # broadcasts
    kwargs = dict(a_scale=sa, a_zero_point=-3, b_scale=sb, b_zero_point=9, y_scale=sy, y_zero_point=-1, qmin=-128,
                  qmax=127, cfg=cfg)
    y, c = ops.add(a, b, **kwargs)
    yr, cr = ops.add(a, b, impl="reference", **kwargs)
    np.testing.assert_array_equal(y, yr)
    assert c == cr and y.shape == (2, 3, 4, 5)
    if mode == "float32" or (mode == "fixed" and not kw):  # PyTorch x86 / LiteRT optimized vector loops
        y2, _ = ops.add(a, b, vector_width=16, **kwargs)
        np.testing.assert_array_equal(y2, ops.add(a, b, vector_width=16, impl="reference", **kwargs)[0])
    real = ((a + 3) * sa + (b - 9) * sb) / sy - 1
    assert np.all(np.abs(np.clip(real, -128, 127) - y) <= 1.0 + 1e-6)  # tier 1: within one LSB


def _round_to_f32(fr: Fraction) -> np.float32:
    c = np.float32(float(fr))
    cands = [c, np.nextafter(c, np.float32(np.inf)), np.nextafter(c, np.float32(-np.inf))]
    best = min(cands, key=lambda v: (abs(Fraction(float(v)) - fr), int(np.array(v).view(np.int32)) & 1))
    return best


def test_float_add_dequantization_is_a_true_fused_multiply_add():
    rng = np.random.default_rng(3)
    for _ in range(20):
        sa, za = float(np.float32(rng.uniform(0.001, 0.2))), int(rng.integers(0, 256))
        p = ops.add_params(sa, za, 0.1, 0, 0.1, 0, ops.Requant())
        a = np.arange(256)
        got = (np.float64(p.a_scale) * a + np.float64(p.a_premul)).astype(np.float32)
        exp = [_round_to_f32(Fraction(float(p.a_scale)) * int(v) + Fraction(float(p.a_premul))) for v in a]
        assert got.tolist() == [float(e) for e in exp]


def test_fixed_add_is_tflites_int8_add():
    rng = np.random.default_rng(4)
    cfg = ops.Requant(mode="fixed")
    sa, sb, sy, za, zb, zy = 0.05, 0.02, 0.06, -5, 7, 3
    p = ops.add_params(sa, za, sb, zb, sy, zy, cfg)
    a, b = rng.integers(-128, 128, 300), rng.integers(-128, 128, 300)
    y, _ = ops.add(a, b, a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy,
                   qmin=-128, qmax=127, cfg=cfg)
    exp = []
    for va, vb in zip(a, b):  # TFLite reference_ops AddElementwise (int8), transcribed
        s1 = cref.mbqm_double((int(va) - za) * (1 << 20), *p.a_mult)
        s2 = cref.mbqm_double((int(vb) - zb) * (1 << 20), *p.b_mult)
        exp.append(min(127, max(-128, cref.mbqm_double(s1 + s2, *p.y_mult) + zy)))
    assert y.tolist() == exp
    tm = 2 * float(np.float32(max(sa, sb)))
    assert p.a_mult == fp.quantize_multiplier(float(np.float32(sa)) / tm)
    assert p.y_mult == fp.quantize_multiplier(tm / ((1 << 20) * float(np.float32(sy))))


@pytest.mark.parametrize("mode", [m for m in MODES if m != "stochastic"])
def test_pow2_add_is_the_rounded_exact_sum(mode):
    cfg = ops.Requant(mode="pow2", rounding=mode)
    a, b = np.arange(-64, 64), np.arange(63, -65, -1) * 3 % 101
    for ea, eb, ey in ((-4, -6, -5), (-3, -3, -1), (-5, -2, -7)):
        y, _ = ops.add(a, b, a_scale=2.0**ea, a_zero_point=2, b_scale=2.0**eb, b_zero_point=-1, y_scale=2.0**ey,
                       y_zero_point=4, qmin=-(2**20), qmax=2**20, cfg=cfg)
        exp = [4 + round_fraction((Fraction(int(x) - 2) * Fraction(2) ** ea + Fraction(int(z) + 1) * Fraction(2) ** eb)
                                  / Fraction(2) ** ey, mode) for x, z in zip(a, b)]
        assert y.tolist() == exp


@pytest.mark.parametrize("mode", ["float32", "fixed", "pow2"])
def test_concat_requantizes_each_input_and_is_identity_on_the_same_grid(mode):
    rng = np.random.default_rng(5)
    cfg = ops.Requant(mode=mode, rounding="stochastic" if mode == "pow2" else "half_even", seed=2)
    xs = [rng.integers(-128, 128, (2, c, 3, 3)) for c in (2, 3, 1)]
    scales = [2.0**-4, 2.0**-5, 2.0**-3] if mode == "pow2" else [0.05, 0.031, 0.08]
    zps = [0, 3, -2]
    y, c = ops.concat(xs, scales, zps, scales[0], zps[0], -128, 127, cfg)
    yr, cr = ops.concat(xs, scales, zps, scales[0], zps[0], -128, 127, cfg, impl="reference")
    np.testing.assert_array_equal(y, yr)
    assert c == cr and y.shape == (2, 6, 3, 3)
    np.testing.assert_array_equal(y[:, :2], xs[0])  # same grid: untouched
    p = ops.make_requant_params(1.0, scales[1], scales[0], cfg)
    idx = np.arange(y.size).reshape(y.shape)[:, 2:5]
    np.testing.assert_array_equal(y[:, 2:5], ops.requantize(xs[1] - 3, p, cfg, 0, -128, 127, index=idx)[0])
    with pytest.raises(HwsimError, match="concatenate"):
        ops.concat([xs[0], np.zeros((2, 1, 4, 3), np.int64)], scales[:2], zps[:2], 0.1, 0, -128, 127, cfg)


def test_pool_and_add_errors():
    x = np.zeros((1, 1, 3, 3), np.int64)
    with pytest.raises(HwsimError, match="larger than"):
        ops.max_pool2d(x, 4, 1)
    with pytest.raises(HwsimError, match="rounding mode"):
        ops.avg_pool2d(x, 2, 2, rounding="nearest")
    with pytest.raises(HwsimError, match="broadcast"):
        ops.add(np.zeros(3), np.zeros(4), a_scale=1, a_zero_point=0, b_scale=1, b_zero_point=0, y_scale=1,
                y_zero_point=0, qmin=0, qmax=1)
    with pytest.raises(HwsimError, match="vector_width"):
        ops.add(np.zeros(3), np.zeros(3), a_scale=1, a_zero_point=0, b_scale=1, b_zero_point=0, y_scale=1,
                y_zero_point=0, qmin=0, qmax=1, cfg=ops.Requant(mode="pow2"), vector_width=8)
    with pytest.raises(HwsimError, match="vector_width"):
        ops.add(np.zeros(3), np.zeros(3), a_scale=1, a_zero_point=0, b_scale=1, b_zero_point=0, y_scale=1,
                y_zero_point=0, qmin=0, qmax=1, cfg=ops.Requant(mode="fixed", fixed_rounding="single"), vector_width=8)


@pytest.mark.parametrize("op", ["avg_pool2d", "global_avg_pool", "add_float32", "add_pow2", "concat"])
def test_index_offset_makes_stochastic_draws_batch_independent(op):
    """Running images [k:] with index_offset = k * per-image size == slicing the whole run; fast == reference."""
    rng = np.random.default_rng(21)
    x = rng.integers(-60, 60, (5, 3, 6, 6))
    x2 = rng.integers(-60, 60, (5, 3, 6, 6))

    def run(lo, impl):
        xs, x2s = x[lo:], x2[lo:]
        if op == "avg_pool2d":
            return ops.avg_pool2d(xs, 3, 2, (1, 1, 1, 1), 2, "stochastic", seed=7, impl=impl,
                                  index_offset=lo * 3 * 3 * 3)
        if op == "global_avg_pool":
            return ops.global_avg_pool(xs, 2, "stochastic", seed=7, impl=impl, index_offset=lo * 3)
        if op == "concat":
            return ops.concat([xs, x2s], [0.03, 0.05], [1, -2], 0.07, 0, -128, 127,
                              ops.Requant(rounding="stochastic", seed=7), impl=impl, index_offset=lo * 216)[0]
        mode = op.split("_")[1]
        sc = (2.0**-4, 2.0**-5, 2.0**-3) if mode == "pow2" else (0.03, 0.05, 0.07)
        return ops.add(xs, x2s, a_scale=sc[0], a_zero_point=0, b_scale=sc[1], b_zero_point=0, y_scale=sc[2],
                       y_zero_point=0, qmin=-128, qmax=127, cfg=ops.Requant(mode=mode, rounding="stochastic", seed=7),
                       impl=impl, index_offset=lo * 108)[0]

    whole = run(0, "fast")
    np.testing.assert_array_equal(run(0, "reference"), whole)
    for lo in (1, 3):
        np.testing.assert_array_equal(run(lo, "fast"), whole[lo:])
        np.testing.assert_array_equal(run(lo, "reference"), whole[lo:])
