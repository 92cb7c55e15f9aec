"""fixedpoint primitives: exact definitions (Fractions), gemmlowp/TFLite/TOSA transcriptions, edge cases."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim import fixedpoint as fp
from hwsim.errors import HwsimError
from tests.core import cref

MODES = [m for m in fp.ROUNDING_MODES if m != "stochastic"]


def boundary_ints(limit_bits=40):
    """Powers of two +-2, their negatives, zero and the int32 extremes."""
    v = {0, 1, -1, cref.INT32_MIN, cref.INT32_MAX, cref.INT32_MIN + 1, cref.INT32_MAX - 1}
    for e in range(limit_bits):
        for d in (-2, -1, 0, 1, 2):
            v |= {2**e + d, -(2**e) + d}
    return np.array(sorted(v), dtype=np.int64)


def round_fraction(f: Fraction, mode: str) -> int:
    fl = math.floor(f)
    frac = f - fl
    if mode == "floor" or frac == 0:
        return fl
    if mode == "trunc":
        return fl + 1 if f < 0 else fl
    if frac != Fraction(1, 2):
        return fl + (1 if frac > Fraction(1, 2) else 0)
    up = {"half_up": True, "half_away": f > 0, "half_even": fl % 2 == 1}[mode]
    return fl + (1 if up else 0)


@pytest.mark.parametrize("mode", MODES)
def test_shift_right_round_matches_exact_rational_rounding(mode):
    x = boundary_ints(45)
    for n in (0, 1, 2, 3, 7, 15, 16, 31, 40, 62):
        got = fp.shift_right_round(x, n, mode)
        exp = [round_fraction(Fraction(int(v), 2**n), mode) for v in x]
        assert got.tolist() == exp, (mode, n)


@pytest.mark.parametrize("mode", MODES)
def test_named_shift_helpers_agree_with_the_dispatcher(mode):
    fn = {"half_even": fp.shift_right_round_half_even, "half_away": fp.shift_right_round_half_away,
          "half_up": fp.shift_right_round_half_up, "floor": fp.shift_right_floor, "trunc": fp.shift_right_trunc}[mode]
    x = np.arange(-40, 41)
    np.testing.assert_array_equal(fn(x, 3), fp.shift_right_round(x, 3, mode))
    # ties specifically: x = +-(2k+1) * 2^(n-1)
    ties = np.array([-5, -3, -1, 1, 3, 5]) * 4
    exp = {"half_even": [-2, -2, 0, 0, 2, 2], "half_away": [-3, -2, -1, 1, 2, 3], "half_up": [-2, -1, 0, 1, 2, 3],
           "floor": [-3, -2, -1, 0, 1, 2], "trunc": [-2, -1, 0, 0, 1, 2]}[mode]
    assert fn(ties, 3).tolist() == exp


@pytest.mark.parametrize("mode", MODES)
def test_divide_round_is_exact_rational_rounding(mode):
    rng = np.random.default_rng(1)
    num = np.concatenate([boundary_ints(40), rng.integers(-(2**40), 2**40, 300)])
    for den in (1, 2, 3, 7, 9, 49, 1024, 12345, 2**37 + 1):
        got = fp.divide_round(num, den, mode)
        assert got.tolist() == [round_fraction(Fraction(int(v), den), mode) for v in num], (mode, den)


@pytest.mark.parametrize("mode", MODES)
def test_round_float_is_exact(mode):
    vals = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.50000006, 3.0, -7.25, 1e7 + 0.5, -(2.0**23) - 0.5,
                     2.0**30, -0.0], dtype=np.float64)
    got = fp.round_float(vals, mode)
    assert got.tolist() == [round_fraction(Fraction(float(v)), mode) for v in vals]


def test_stochastic_rounding_is_seeded_counter_based_and_unbiased():
    x = np.full(20000, 5, dtype=np.int64)  # 5 / 4 = 1.25
    a = fp.shift_right_round(x, 2, "stochastic", seed=7)
    assert np.array_equal(a, fp.shift_right_round(x, 2, "stochastic", seed=7))
    assert not np.array_equal(a, fp.shift_right_round(x, 2, "stochastic", seed=8))
    assert set(np.unique(a)) == {1, 2} and abs(a.mean() - 1.25) < 0.02
    # the draw of element i depends only on (seed, i): a permuted evaluation order gives the same values
    idx = np.random.default_rng(0).permutation(x.size)
    b = fp.shift_right_round(x[idx], 2, "stochastic", seed=7, index=idx)
    np.testing.assert_array_equal(b, a[idx])
    d = fp.divide_round(np.full(20000, 10), 3, "stochastic", seed=3)  # 3.333
    assert set(np.unique(d)) == {3, 4} and abs(d.mean() - 10 / 3) < 0.02
    f = fp.round_float(np.full(20000, -2.75), "stochastic", seed=1)
    assert set(np.unique(f)) == {-3, -2} and abs(f.mean() + 2.75) < 0.02
    # exact values never move
    np.testing.assert_array_equal(fp.shift_right_round(np.arange(-64, 64) * 8, 3, "stochastic", 5), np.arange(-64, 64))


def test_stochastic_hash_is_splitmix64():
    # splitmix64 reference vector: state 0 -> first output 0xE220A8397B1DCDAF
    assert int(fp.splitmix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
    from hwsim.reference import stochastic_hash_int
    idx = np.array([0, 1, 2, 12345, 2**40])
    assert fp.stochastic_hash(idx, 99).tolist() == [stochastic_hash_int(int(i), 99) for i in idx]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=20), st.integers(2, 63), st.booleans())
def test_wrap_and_saturate_land_in_the_grid(xs, bits, signed):
    if not signed and bits > 62:
        bits = 62
    lo, hi = fp.int_range(bits, signed)
    x = np.array(xs, dtype=np.int64)
    w, s = fp.wrap(x, bits, signed), fp.saturate(x, bits, signed)
    assert ((w >= lo) & (w <= hi)).all() and ((s >= lo) & (s <= hi)).all()
    assert all((int(a) - int(b)) % (1 << bits) == 0 for a, b in zip(w, x))  # congruent mod 2^bits
    assert s.tolist() == [min(max(v, lo), hi) for v in xs]
    if signed and bits <= 62:
        assert [fp.wrap_i64(np.int64(v), bits) for v in xs] == w.tolist()


def test_int_range_and_errors():
    assert fp.int_range(8) == (-128, 127)
    assert fp.int_range(8, narrow=True) == (-127, 127)
    assert fp.int_range(4, signed=False) == (0, 15)
    with pytest.raises(HwsimError, match="bit width"):
        fp.int_range(0)
    with pytest.raises(HwsimError, match="rounding mode 'nearest'"):
        fp.shift_right_round(np.array([1]), 1, "nearest")
    with pytest.raises(HwsimError, match="shift"):
        fp.shift_right_round(np.array([1]), 63, "floor")
    with pytest.raises(HwsimError, match="divisor"):
        fp.divide_round(np.array([1]), 0, "floor")


# ----------------------------------------------------------------------------- gemmlowp / TFLite / TOSA
def _int32_samples(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    edge = boundary_ints(31)
    edge = edge[(edge >= cref.INT32_MIN) & (edge <= cref.INT32_MAX)]
    return np.concatenate([edge, rng.integers(cref.INT32_MIN, cref.INT32_MAX + 1, n)])


def test_srdhm_equals_gemmlowp_transcription_including_int32_min_squared():
    a = _int32_samples(4000, 1)
    b = np.concatenate([_int32_samples(4000, 2)[: a.size - 3], [cref.INT32_MIN, 2**30, 2**30]])
    a[-3:] = [cref.INT32_MIN, -1, -3]  # INT32_MIN^2 saturates; -0.5 and -1.5 are ties
    got = fp.saturating_rounding_doubling_high_mul(a, b)
    assert got.tolist() == [cref.srdhm(int(x), int(y)) for x, y in zip(a, b)]
    assert got[-3:].tolist() == [cref.INT32_MAX, 0, -1]  # gemmlowp ties go toward +inf
    # a different tie rule is a different primitive
    assert fp.saturating_rounding_doubling_high_mul(np.array([-1, -3]), 2**30, tie="half_away").tolist() == [-1, -2]


def test_rounding_divide_by_pot_equals_gemmlowp_transcription():
    x = _int32_samples(3000, 3)
    for e in range(32):
        assert fp.rounding_divide_by_pot(x, e).tolist() == [cref.rdbpot(int(v), e) for v in x]
    assert fp.rounding_divide_by_pot(np.array([-12, -4, 4, 12]), 3).tolist() == [-2, -1, 1, 2]  # ties away


def test_multiply_by_quantized_multiplier_double_and_single_equal_tflite():
    rng = np.random.default_rng(4)
    for real in (0.75, 0.5, 0.001234, 1.9, 3.5e-7, 0.9999999999, 2**-20, 0.3333333):
        q, shift = fp.quantize_multiplier(real)
        lim = 2**31 >> max(shift, 0)
        x = np.concatenate([rng.integers(-lim, lim, 2000), [-lim, lim - 1, 0, 1, -1]])
        got_d = fp.multiply_by_quantized_multiplier(x, q, shift, "double")
        assert got_d.tolist() == [cref.mbqm_double(int(v), q, shift) for v in x], real
        qs, ss = fp.quantize_multiplier(real, single_rounding=True)
        got_s = fp.multiply_by_quantized_multiplier(x, qs, ss, "single", ties=("half_up", "half_up"))
        assert got_s.tolist() == [cref.mbqm_single(int(v), qs, ss) for v in x], real
        # tier 1: both within one LSB of the real product
        assert np.all(np.abs(got_d - x * real) <= 1.0 + 1e-6 * np.abs(x * real))


def test_single_and_double_rounding_differ_on_double_rounding_cases():
    # x * 2^30 / 2^31 = x/2 first, then /2^2: x = 3 -> 1.5 -> 2 (half_up) -> 0.5 -> 1 (away); single: 0.375 -> 0
    q, shift = 1 << 30, -2  # M = 0.5 * 2^-2 = 0.125
    x = np.array([3, -3, 5, 12, -12])
    d = fp.multiply_by_quantized_multiplier(x, q, shift, "double")
    s = fp.multiply_by_quantized_multiplier(x, q, shift, "single", ties=("half_up", "half_up"))
    assert d.tolist() == [cref.mbqm_double(int(v), q, shift) for v in x] == [1, 0, 1, 2, -2]
    assert s.tolist() == [cref.mbqm_single(int(v), q, shift) for v in x] == [0, 0, 1, 2, -1]
    # tie rule of step 2: -12/8 = -1.5 -> -2 (half_away, gemmlowp) vs -1 (half_up) vs -2 (half_even)
    assert fp.multiply_by_quantized_multiplier(np.array([-12]), q, shift, ties=("half_up", "half_up")).tolist() == [-1]
    assert fp.multiply_by_quantized_multiplier(np.array([-12]), q, shift, ties=("half_up", "half_even")).tolist() == [-2]


def test_quantize_multiplier_matches_tflite_at_its_edges():
    cases = [1.0, 0.5, 0.25, 1 - 2**-33, 1 - 2**-40, 2**-31, 2**-32, 2**-31 * 0.9, 1e-12, 0.0, 0.7, 1.5, 123.456,
             2**31 * 1.0, 0.1, 3 * 2**-33, (2**31 - 0.5) / 2**31, (2**31 - 0.5000001) / 2**31]
    for m in cases:
        assert fp.quantize_multiplier(m) == cref.quantize_multiplier(m), m
        assert fp.quantize_multiplier(m, True) == cref.quantize_multiplier(m, True), m
    assert fp.quantize_multiplier(1 - 2**-40) == (2**30, 1)  # mantissa rounds up to 2^31
    assert fp.quantize_multiplier(2**-33) == (0, 0)  # tiny multipliers flush to zero
    assert fp.quantize_multiplier(2**-32) == (2**30, -31)
    assert fp.quantize_multiplier(2**40, single_rounding=True) == (cref.INT32_MAX, 30)
    rng = np.random.default_rng(5)
    for m in 10.0 ** rng.uniform(-9, 1, 300):
        q, s = fp.quantize_multiplier(m)
        assert 2**30 <= q < 2**31 and abs(q * 2.0 ** (s - 31) - m) <= m * 2**-31
    with pytest.raises(HwsimError, match="multiplier"):
        fp.quantize_multiplier(-0.5)


def test_15_bit_multiplier_equals_tosa_apply_scale_16():
    rng = np.random.default_rng(6)
    for real in (0.75, 0.001234, 0.3, 1.5, 2**-20):
        q15, shift = fp.quantize_multiplier_15(real)
        assert 2**14 <= q15 < 2**15 and abs(q15 * 2.0 ** (shift - 15) - real) <= real * 2**-15
        x = np.concatenate([rng.integers(-(2**24), 2**24, 2000), [0, 1, -1]])
        got = fp.multiply_by_quantized_multiplier_15(x, q15, shift)
        assert got.tolist() == [cref.apply_scale_16(int(v), q15, 15 - shift) for v in x]
    assert fp.quantize_multiplier_15(1 - 2**-20) == (2**14, 1)
    assert fp.quantize_multiplier_15(2**-49) == (0, 0)


def test_fixed_multiply_beyond_int32_is_exact_then_saturated():
    x = np.array([2**40, -(2**40), 2**33 + 5, -(2**45) - 3, 2**61])
    for real in (2**-15, 1e-9, 0.7):
        q, s = fp.quantize_multiplier(real)
        d = fp.multiply_by_quantized_multiplier(x, q, s, "double")
        exp = []
        for v in x:
            hi = max(min(round_fraction(Fraction(int(v) * q, 2**31), "half_up"), cref.INT32_MAX), cref.INT32_MIN)
            exp.append(round_fraction(Fraction(hi, 2 ** max(-s, 0)), "half_away"))
        assert d.tolist() == exp
        sg = fp.multiply_by_quantized_multiplier(x, q, s, "single", ("half_up", "half_up"))
        exp = [max(min(round_fraction(Fraction(int(v) * q, 2 ** (31 - s)), "half_up"), cref.INT32_MAX), cref.INT32_MIN)
               for v in x]
        assert sg.tolist() == exp


def test_pow2_exponent():
    assert fp.pow2_exponent(0.125) == -3 and fp.pow2_exponent(4.0) == 2
    with pytest.raises(HwsimError, match="power of two"):
        fp.pow2_exponent(0.3)
