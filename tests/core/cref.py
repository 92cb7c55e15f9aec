"""Literal Python transcriptions of the C reference code hwsim models (test oracles, Python ints).

gemmlowp fixedpoint/fixedpoint.h (SaturatingRoundingDoublingHighMul, RoundingDivideByPOT),
TFLite common.h (MultiplyByQuantizedMultiplier, both builds), TFLite quantization_util.cc
(QuantizeMultiplier) and TOSA apply_scale_16. C semantics: '/' truncates toward zero,
'>>' on negative values is arithmetic, int32 arithmetic must not overflow (asserted).
"""

import math

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def srdhm(a: int, b: int) -> int:
    overflow = a == b == INT32_MIN
    ab_64 = a * b
    nudge = (1 << 30) if ab_64 >= 0 else (1 - (1 << 30))
    ab_x2_high32 = c_div(ab_64 + nudge, 1 << 31)
    return INT32_MAX if overflow else ab_x2_high32


def rdbpot(x: int, exponent: int) -> int:
    assert 0 <= exponent <= 31
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def mbqm_double(x: int, q: int, shift: int) -> int:
    left_shift = shift if shift > 0 else 0
    right_shift = 0 if shift > 0 else -shift
    xs = x * (1 << left_shift)
    assert INT32_MIN <= xs <= INT32_MAX
    return rdbpot(srdhm(xs, q), right_shift)


def mbqm_single(x: int, q: int, shift: int) -> int:
    assert q >= 0 and -31 <= shift <= 30
    total_shift = 31 - shift
    round_ = 1 << (total_shift - 1)
    result = (x * q + round_) >> total_shift
    assert INT32_MIN <= result <= INT32_MAX
    return result


def apply_scale_16(value: int, multiplier: int, shift: int) -> int:
    assert multiplier >= 0 and 2 <= shift <= 62
    round_ = 1 << (shift - 1)
    result = (value * multiplier + round_) >> shift
    assert INT32_MIN <= result <= INT32_MAX
    return result


def tflite_round(v: float) -> int:
    """std::round: half away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v)) if abs(v) < 2**52 else int(v)


def quantize_multiplier(m: float, single_rounding: bool = False) -> tuple[int, int]:
    if m == 0.0:
        return 0, 0
    q, shift = math.frexp(m)
    q_fixed = tflite_round(q * (1 << 31))
    assert q_fixed <= (1 << 31)
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    assert q_fixed <= INT32_MAX
    if shift < -31:
        shift, q_fixed = 0, 0
    if single_rounding and shift > 30:
        shift, q_fixed = 30, (1 << 31) - 1
    return q_fixed, shift
