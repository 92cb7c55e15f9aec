"""Requantization: fast == reference in every mode, definitions, option differences, errors."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim import fixedpoint as fp
from hwsim import ops
from hwsim.errors import HwsimError
from tests.core import cref

F32_ROUNDINGS = list(fp.ROUNDING_MODES)
CONFIGS = (
    [("float32", dict(rounding=r)) for r in F32_ROUNDINGS]
    + [("float32", dict(rounding="half_even", zero_point="before")),
       ("float32", dict(rounding="half_even", multiplier_order="fused")),
       ("fixed", dict(fixed_rounding="double")),
       ("fixed", dict(fixed_rounding="double", fixed_ties=("half_away", "half_away"))),
       ("fixed", dict(fixed_rounding="double", fixed_ties=("half_even", "half_up"))),
       ("fixed", dict(fixed_rounding="single", fixed_ties=("half_up", "half_up"))),
       ("fixed", dict(fixed_rounding="single", fixed_ties=("half_up", "half_even"))),
       ("fixed", dict(fixed_rounding="single", multiplier_bits=15, fixed_ties=("half_up", "half_up")))]
    + [("pow2", dict(rounding=r)) for r in F32_ROUNDINGS]
)


def _ids(c):
    return c[0] + "-" + "-".join(f"{v}" for v in c[1].values())


def _scales(mode, rng, channels):
    if mode == "pow2":
        return 2.0 ** -int(rng.integers(2, 6)), 2.0 ** -rng.integers(3, 9, channels).astype(float), \
            2.0 ** -int(rng.integers(0, 4))
    return float(rng.uniform(0.01, 0.1)), rng.uniform(0.001, 0.02, channels), float(rng.uniform(0.02, 0.3))


def _accs(rng, shape):
    acc = rng.integers(-60000, 60000, shape)
    flat = acc.reshape(-1)
    edge = np.array([0, 1, -1, 2**31 - 1, -(2**31), 2**20, -(2**20) - 1, 2**24 + 1, -(2**24) - 3, 12345])
    flat[: edge.size] = edge[: flat.size]
    return acc


@pytest.mark.parametrize("mode,kw", CONFIGS, ids=[_ids(c) for c in CONFIGS])
@pytest.mark.parametrize("channels", [1, 5])
def test_fast_requantize_equals_reference(mode, kw, channels):
    rng = np.random.default_rng(hash((mode, tuple(kw.values()), channels)) % 2**32)
    cfg = ops.Requant(mode=mode, seed=11, **kw)
    s_x, s_w, s_y = _scales(mode, rng, channels)
    p = ops.make_requant_params(s_x, s_w, s_y, cfg)
    acc = _accs(rng, (3, 5, 4, 3))
    for z_y, lo, hi in ((3, -128, 127), (-7, -8, 7), (130, 0, 255)):
        y, clipped = ops.requantize(acc, p, cfg, z_y, lo, hi)
        yr, cr = ops.requantize(acc, p, cfg, z_y, lo, hi, impl="reference")
        np.testing.assert_array_equal(y, yr)
        assert clipped == cr and y.min() >= lo and y.max() <= hi
        wide, _ = ops.requantize(acc, p, cfg, z_y, -(2**40), 2**40)
        assert clipped == int(np.count_nonzero((wide < lo) | (wide > hi)))
    # channel_axis: the same numbers laid out channels-last
    y1, _ = ops.requantize(acc, p, cfg, 0, -(2**31), 2**31)
    if kw.get("rounding") != "stochastic":  # (stochastic draws depend on the flat index, i.e. the layout)
        y2, _ = ops.requantize(np.moveaxis(acc, 1, -1), p, cfg, 0, -(2**31), 2**31, channel_axis=-1)
        np.testing.assert_array_equal(np.moveaxis(y1, 1, -1), y2)


@pytest.mark.parametrize("mode,kw", [c for c in CONFIGS if c[1].get("rounding") != "stochastic"],
                         ids=[_ids(c) for c in CONFIGS if c[1].get("rounding") != "stochastic"])
def test_requantize_is_within_one_lsb_of_real_math(mode, kw):
    """Tier 1: every mode lands within its rounding error of acc * s_x * s_w / s_y."""
    rng = np.random.default_rng(3)
    cfg = ops.Requant(mode=mode, **kw)
    s_x, s_w, s_y = _scales(mode, rng, 4)
    p = ops.make_requant_params(s_x, s_w, s_y, cfg)
    acc = rng.integers(-(2**20), 2**20, (50, 4))
    y, _ = ops.requantize(acc, p, cfg, 0, -(2**40), 2**40)
    real = acc * (np.float32(s_x) * s_w.astype(np.float32).astype(np.float64) / np.float32(s_y))
    tol = 1.0 if kw.get("rounding") in ("floor", "trunc") else 0.5
    tol += {31: 2**-20, 15: 2**-13}[kw.get("multiplier_bits", 31)] * np.abs(real).max() + 1e-3
    assert np.abs(y - real).max() <= tol


def test_fixed_requant_is_tflite_and_tosa_exactly():
    rng = np.random.default_rng(5)
    s_w = rng.uniform(0.001, 0.02, 3)
    acc = _accs(rng, (40, 3))
    for cfg, fn in ((ops.Requant(mode="fixed"), cref.mbqm_double),
                    (ops.Requant(mode="fixed", fixed_rounding="single", fixed_ties=("half_up", "half_up")),
                     cref.mbqm_single)):
        p = ops.make_requant_params(0.05, s_w, 0.1, cfg)
        y, _ = ops.requantize(acc, p, cfg, 5, -(2**40), 2**40)
        exp = [[fn(int(a), int(p.q[c]), int(p.shift[c])) + 5 for c, a in enumerate(row)] for row in acc]
        assert y.tolist() == exp
    cfg = ops.Requant(mode="fixed", fixed_rounding="single", multiplier_bits=15)
    p = ops.make_requant_params(0.05, s_w, 0.1, cfg)
    y, _ = ops.requantize(acc, p, cfg, 0, -(2**40), 2**40)
    exp = [[cref.apply_scale_16(int(a), int(p.q[c]), 15 - int(p.shift[c])) for c, a in enumerate(row)] for row in acc]
    assert y.tolist() == exp


def test_multiplier_order_sequential_vs_fused_differ_and_are_what_they_say():
    rng = np.random.default_rng(0)
    seq, fus = ops.Requant(), ops.Requant(multiplier_order="fused")
    found = 0
    for _ in range(300):
        s_x, s_w, s_y = (float(np.float32(v)) for v in rng.uniform([0.005, 0.001, 0.01], [0.05, 0.01, 0.05]))
        ps, pf = ops.make_requant_params(s_x, s_w, s_y, seq), ops.make_requant_params(s_x, s_w, s_y, fus)
        f32 = np.float32
        assert ps.multiplier[0] == (f32(s_x) * f32(s_w)) / f32(s_y)
        assert pf.multiplier[0] == f32(s_x * s_w / s_y)
        if ps.multiplier[0] == pf.multiplier[0]:
            continue
        acc = np.arange(-20000, 20000).reshape(-1, 1)
        ys, _ = ops.requantize(acc, ps, seq, 0, -(2**31), 2**31)
        yf, _ = ops.requantize(acc, pf, fus, 0, -(2**31), 2**31)
        found += int((ys != yf).sum())
    assert found > 0  # near ties the two orders give different integers


def test_zero_point_before_rounding_changes_ties_when_z_is_odd():
    s_x, s_w, s_y = 0.25, 0.5, 0.25  # M = 0.5: every odd accumulator is a tie
    acc = np.arange(-9, 10).reshape(-1, 1)
    after, before = ops.Requant(zero_point="after"), ops.Requant(zero_point="before")
    for z in (0, 3, 4):
        ya, _ = ops.requantize(acc, ops.make_requant_params(s_x, s_w, s_y, after), after, z, -99, 99)
        yb, _ = ops.requantize(acc, ops.make_requant_params(s_x, s_w, s_y, before), before, z, -99, 99)
        assert ya.ravel().tolist() == [round_half_even(Fraction(int(a), 2)) + z for a in acc.ravel()]
        assert yb.ravel().tolist() == [round_half_even(Fraction(int(a), 2) + z) for a in acc.ravel()]
        assert (ya == yb).all() == (z % 2 == 0)


def round_half_even(f: Fraction) -> int:
    return round(f)  # Python's round on Fractions is half-even


def test_pow2_requant_is_a_rounding_shift_and_rejects_other_scales():
    cfg = ops.Requant(mode="pow2", rounding="half_up")
    p = ops.make_requant_params(2**-4, np.array([2**-6, 2**-3]), 2**-5, cfg)
    assert p.shift.tolist() == [5, 2]
    acc = np.arange(-70, 70).reshape(-1, 2)
    y, _ = ops.requantize(acc, p, cfg, 1, -(2**31), 2**31)
    np.testing.assert_array_equal(y[:, 0], fp.shift_right_round_half_up(acc[:, 0], 5) + 1)
    np.testing.assert_array_equal(y[:, 1], fp.shift_right_round_half_up(acc[:, 1], 2) + 1)
    up = ops.make_requant_params(2**-1, 2**-1, 2**-4, cfg)  # M = 4: exact left shift
    assert up.shift.tolist() == [-2]
    y, _ = ops.requantize(acc, up, cfg, 0, -(2**31), 2**31)
    np.testing.assert_array_equal(y, acc * 4)
    with pytest.raises(HwsimError, match="power of two"):
        ops.make_requant_params(0.3, 2**-4, 2**-2, cfg)


def test_float_bias_term_is_fbgemms_float_bias():
    cfg = ops.Requant()
    b = np.array([0.3, -1.7], dtype=np.float32)
    p = ops.make_requant_params(0.02, np.array([0.004, 0.003]), 0.1, cfg, bias=b)
    f32 = np.float32
    assert p.bias_term.tolist() == (b / (f32(0.02) * np.array([0.004, 0.003], f32))).tolist()
    acc = np.array([[100, -200], [7, 8]])
    y, _ = ops.requantize(acc, p, cfg, 0, -999, 999)
    exp = np.rint((acc.astype(f32) + p.bias_term) * p.multiplier)
    np.testing.assert_array_equal(y, exp)
    with pytest.raises(HwsimError, match="float bias"):
        ops.make_requant_params(0.02, 0.004, 0.1, ops.Requant(mode="fixed"), bias=b)


def test_stochastic_requant_depends_on_element_index_not_order():
    cfg = ops.Requant(rounding="stochastic", seed=4)
    p = ops.make_requant_params(0.1, 0.1, 0.04, cfg)  # M = 0.25
    acc = np.full((200, 1), 3)  # 0.75 each
    y, _ = ops.requantize(acc, p, cfg, 0, -9, 9)
    assert set(np.unique(y)) == {0, 1} and 0.6 < y.mean() < 0.9
    perm = np.random.default_rng(0).permutation(200)
    y2, _ = ops.requantize(acc[perm], p, cfg, 0, -9, 9, index=perm.reshape(-1, 1))
    np.testing.assert_array_equal(y2, y[perm])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=12), st.integers(2, 16), st.booleans(),
       st.sampled_from([c for c in CONFIGS]))
def test_requantized_outputs_are_inside_the_grid(accs, bits, signed, conf):
    mode, kw = conf
    cfg = ops.Requant(mode=mode, **kw)
    rng = np.random.default_rng(bits)
    s_x, s_w, s_y = _scales(mode, rng, 1)
    lo, hi = fp.int_range(bits, signed)
    y, c = ops.requantize(np.array(accs).reshape(-1, 1), ops.make_requant_params(s_x, s_w, s_y, cfg), cfg,
                          (lo + hi) // 2, lo, hi)
    assert y.min() >= lo and y.max() <= hi and 0 <= c <= len(accs)


def test_requant_config_errors_name_the_key():
    with pytest.raises(HwsimError, match="requant.mode"):
        ops.Requant(mode="float16")
    with pytest.raises(HwsimError, match="requant.rounding"):
        ops.Requant(rounding="nearest")
    with pytest.raises(HwsimError, match="fixed_ties"):
        ops.Requant(fixed_ties=("half_up",))
    with pytest.raises(HwsimError, match="multiplier_bits = 15"):
        ops.Requant(mode="fixed", multiplier_bits=15, fixed_rounding="double")
    with pytest.raises(HwsimError, match="multiplier_order"):
        ops.Requant(multiplier_order="random")
    cfg = ops.Requant()
    with pytest.raises(HwsimError, match="s_y"):
        ops.make_requant_params(0.1, 0.1, 0.0, cfg)
    p = ops.make_requant_params(0.1, np.array([0.1, 0.2]), 0.1, cfg)
    with pytest.raises(HwsimError, match="per-channel"):
        ops.requantize(np.zeros((2, 3)), p, cfg, 0, -1, 1)
    with pytest.raises(HwsimError, match="made for mode"):
        ops.requantize(np.zeros((2, 2)), p, ops.Requant(mode="fixed"), 0, -1, 1)


# ----------------------------------------------------------------------------- numba fixed-point kernel
_TIES = [(a, b) for a in fp.TIE_RULES for b in fp.TIE_RULES]


def _fixed_boundary_accs():
    vals = [0, 1, -1, 2**31 - 1, -2**31, 2**31, -2**31 - 1, 2**40 + 3, -(2**40) - 3, 2**62, -(2**62), 2**63 - 1,
            -(2**63)]
    for p in (8, 15, 16, 24, 30, 31):
        vals += [2**p + d for d in (-2, -1, 0, 1, 2)] + [-(2**p) + d for d in (-2, -1, 0, 1, 2)]
    return np.array(vals, dtype=np.int64)


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("ties", _TIES, ids=lambda t: "-".join(t))
def test_numba_fixed_kernel_equals_the_definition_on_boundaries(rounding, ties):
    """kernels.requant_fixed (the fast path) == fixedpoint.multiply_by_quantized_multiplier, incl. ties and extremes."""
    from hwsim import kernels

    rng = np.random.default_rng(11)
    # per-channel (q, shift): extremes of the Q31 range, a multiplier that rounded up to 2^31 (-> 2^30, shift+1)
    qs = np.array([2**30, 2**31 - 1, 2**30 + 1, 1518500250, 0, 1], dtype=np.int64)
    shifts = np.array([-31, 0, 31 if rounding == "double" else 30, -7, 3, -1], dtype=np.int64)
    accs = _fixed_boundary_accs()
    if rounding == "single":
        accs = accs[np.abs(accs.astype(object)) <= 2**31].astype(np.int64)
    ties_rich = (rng.integers(-2**20, 2**20, 64) << 10) | (1 << 9)  # exact halves after shifts of 10
    x = np.concatenate([accs, ties_rich, rng.integers(-2**33, 2**33, 64)])
    if rounding == "single":
        x = np.clip(x, -(2**31), 2**31)
    acc = np.broadcast_to(x[:, None], (len(x), len(qs))).copy()
    want = fp.multiply_by_quantized_multiplier(acc, qs[None, :], shifts[None, :], rounding, ties)
    out = np.empty((len(x), len(qs), 1), np.int64)
    kernels.requant_fixed(acc.reshape(len(x), len(qs), 1), qs, shifts, rounding == "single",
                          kernels.TIE_CODE[ties[0]], kernels.TIE_CODE[ties[1]], out)
    np.testing.assert_array_equal(out.reshape(acc.shape), want)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(-(2**45), 2**45), min_size=1, max_size=30), st.integers(2**30, 2**31 - 1),
       st.integers(-31, 30), st.sampled_from(["double", "single"]), st.sampled_from(_TIES))
def test_numba_fixed_kernel_property(xs, q, shift, rounding, ties):
    from hwsim import kernels

    x = np.array(xs, dtype=np.int64)
    if rounding == "single":
        x = np.clip(x, -(2**31), 2**31)
    want = fp.multiply_by_quantized_multiplier(x, q, shift, rounding, ties)
    out = np.empty((1, 1, len(x)), np.int64)
    kernels.requant_fixed(x.reshape(1, 1, -1), np.array([q]), np.array([shift]), rounding == "single",
                          kernels.TIE_CODE[ties[0]], kernels.TIE_CODE[ties[1]], out)
    np.testing.assert_array_equal(out.ravel(), want)


@pytest.mark.parametrize("rounding", ["half_even", "half_away", "half_up", "floor", "trunc"])
@pytest.mark.parametrize("zero_point", ["after", "before"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_numba_float32_kernel_equals_the_numpy_definition(rounding, zero_point, with_bias):
    """ops' float32 fast path (kernels.requant_float32) == the float32 numpy formula, on ties, int32/int64
    extremes (float32 overflow to inf, clipped) and per-channel multipliers; and == the reference."""
    rng = np.random.default_rng(5)
    C = 6
    mult = np.array([0.5, 0.25, 1.0, 2.0**-20, 3.0e30, 0.0123], np.float32)
    bias = rng.normal(0, 50, C).astype(np.float32) if with_bias else None
    vals = np.concatenate([np.arange(-40, 40), [2**31 - 1, -2**31, 2**40, -(2**40), 2**62, -(2**62)],
                           rng.integers(-2**24, 2**24, 60)]).astype(np.int64)
    acc = np.broadcast_to(vals[:, None, None], (len(vals), C, 3)).copy()
    params = ops.RequantParams(mode="float32", real=mult.astype(np.float64), multiplier=mult, bias_term=bias)
    cfg = ops.Requant(mode="float32", rounding=rounding, zero_point=zero_point)
    z = 3
    got, _ = ops.requantize(acc, params, cfg, z, -2**40, 2**40)
    fa = acc.astype(np.float32)
    with np.errstate(over="ignore"):
        if bias is not None:
            fa = fa + bias[None, :, None]
        v = fa * mult[None, :, None]
        want = (fp.round_float(v + np.float32(z), rounding) if zero_point == "before"
                else fp.round_float(v, rounding) + z)
    np.testing.assert_array_equal(got, np.clip(want, -2**40, 2**40))
    small = acc[:12, :, :1]
    np.testing.assert_array_equal(ops.requantize(small, params, cfg, z, -2**40, 2**40)[0],
                                  ops.requantize(small, params, cfg, z, -2**40, 2**40, impl="reference")[0])


@pytest.mark.parametrize("rounding", ["half_even", "half_away", "half_up", "floor", "trunc"])
def test_numba_shift_kernel_equals_the_definition(rounding):
    """ops' pow2 fast path (kernels.requant_shift) == fixedpoint.shift_right_round / exact left shifts,
    on ties (±k·2^(n-1)), int64 extremes and per-channel shifts from -62 to 62."""
    rng = np.random.default_rng(6)
    shifts = np.array([0, 1, 2, 5, 31, 62, -1, -7, -62], np.int64)
    base = [0, 1, -1, 2**62, -(2**62), 2**63 - 1, -(2**63)] + list(rng.integers(-2**40, 2**40, 40))
    ties = [k * 2**4 + 2**3 for k in range(-6, 6)]  # exact halves for n = 4
    vals = np.array(base + ties, dtype=np.int64)
    for n in shifts:
        acc = vals.reshape(-1, 1)
        params = ops.RequantParams(mode="pow2", real=np.array([2.0 ** -int(n)]), shift=np.array([n]))
        got, _ = ops.requantize(acc, params, ops.Requant(mode="pow2", rounding=rounding), 0, -2**63, 2**63 - 1)
        if n >= 0:
            want = fp.shift_right_round(acc, n, rounding)
        else:
            k = min(-int(n), 62)
            want = np.clip(acc, -(1 << (62 - k)), 1 << (62 - k)) << k
        np.testing.assert_array_equal(got, want, err_msg=f"shift {n}")
    acc = rng.integers(-2**20, 2**20, (3, len(shifts), 4))
    params = ops.RequantParams(mode="pow2", real=2.0 ** -shifts.astype(float), shift=shifts)
    cfg = ops.Requant(mode="pow2", rounding=rounding)
    # output grid well inside +-2^62 (left shifts beyond it are clipped there before the zero point)
    np.testing.assert_array_equal(ops.requantize(acc, params, cfg, 2, -2**40, 2**40)[0],
                                  ops.requantize(acc, params, cfg, 2, -2**40, 2**40, impl="reference")[0])
