"""Integer fixed-point primitives: the vocabulary every hwsim op is written in.

Each primitive is named after its exact behaviour (tie rule and overflow included) and carries
a one-line contract. Array versions take and return ``int64`` numpy arrays (scalars broadcast);
``*_i64`` functions are ``numba.njit`` scalar versions for the kernels. The arithmetic contract
these implement is written down in ``docs/semantics.md``.

Rounding modes (names exactly): ``half_even``, ``half_away`` (ties away from zero),
``half_up`` (ties toward +inf), ``floor``, ``trunc`` (toward zero), ``stochastic`` (seeded,
counter-based: see :func:`stochastic_hash`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from hwsim.errors import HwsimError

ROUNDING_MODES = ("half_even", "half_away", "half_up", "floor", "trunc", "stochastic")
TIE_RULES = ("half_even", "half_away", "half_up")  # tie rules of one fixed-point rounding step
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio (splitmix64 increment)
MAX_SHIFT = 62  # rounding shifts are defined for 0 <= n <= 62 (2^n fits int64 with a spare bit)

_U64 = np.uint64


def check_mode(mode: str, allowed=ROUNDING_MODES, what: str = "rounding mode") -> str:
    """Return ``mode`` if it is one of ``allowed``, else raise HwsimError naming it."""
    if mode not in allowed:
        raise HwsimError(f"invalid {what} {mode!r}: allowed {', '.join(allowed)}")
    return mode


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


# ----------------------------------------------------------------------------- ranges, wrap, saturate
def int_range(bits: int, signed: bool = True, narrow: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of a ``bits``-bit integer grid; ``narrow`` drops -2^(bits-1) (signed only)."""
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 64:
        raise HwsimError(f"invalid bit width {bits!r}: allowed an integer 1..64")
    if signed:
        return -(1 << (bits - 1)) + (1 if narrow else 0), (1 << (bits - 1)) - 1
    if bits > 63:
        raise HwsimError(f"invalid bit width {bits} for an unsigned grid: allowed 1..63")
    return 0, (1 << bits) - 1


def wrap(x, bits: int, signed: bool = True) -> np.ndarray:
    """Two's-complement wrap of int64 ``x`` into ``bits`` bits (x mod 2^bits); bits=64 signed is identity."""
    x = _i64(x)
    lo, hi = int_range(bits, signed)
    if signed and bits == 64:
        return x.copy()
    m = np.int64((1 << bits) - 1) if bits < 64 else np.int64(-1)
    r = np.bitwise_and(x, m)  # low bits, in [0, 2^bits)
    if signed:
        r = np.where(r > hi, r - np.int64(1 << (bits - 1)) - np.int64(1 << (bits - 1)), r)
    return r.astype(np.int64)


def saturate(x, bits: int, signed: bool = True) -> np.ndarray:
    """Clamp int64 ``x`` to the ``bits``-bit grid [int_range(bits, signed)] (no wrap, no rounding)."""
    lo, hi = int_range(bits, signed)
    return np.clip(_i64(x), lo, hi)


def wrapping_add(x, y, bits: int) -> np.ndarray:
    """x + y computed exactly, then wrapped to ``bits`` signed bits (|x|, |y| < 2^62)."""
    return wrap(_i64(x) + _i64(y), bits)


def saturating_add(x, y, bits: int) -> np.ndarray:
    """x + y computed exactly, then clamped to ``bits`` signed bits (|x|, |y| < 2^62)."""
    return saturate(_i64(x) + _i64(y), bits)


@numba.njit(cache=True)
def wrap_i64(x, bits):
    """Scalar two's-complement wrap of int64 ``x`` into ``bits`` signed bits (1 <= bits <= 64)."""
    if bits >= 64:
        return x
    m = np.int64(1) << bits
    r = x & (m - 1)
    if r >= (m >> 1):
        r -= m
    return r


@numba.njit(cache=True)
def saturate_i64(x, lo, hi):
    """Scalar clamp of int64 ``x`` to [lo, hi]."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


# ----------------------------------------------------------------------------- stochastic rounding hash
def splitmix64(z) -> np.ndarray:
    """splitmix64 finaliser of uint64 ``z`` (Steele et al.; z += golden, two xor-shift-multiplies), mod 2^64."""
    z = np.asarray(z, dtype=_U64) + _U64(GOLDEN)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def stochastic_hash(index, seed: int) -> np.ndarray:
    """Random uint64 of element ``index`` (flat C-order index in the output): splitmix64(seed ^ (index * golden))."""
    idx = np.asarray(index, dtype=np.int64).astype(_U64)
    with np.errstate(over="ignore"):
        return splitmix64(_U64(int(seed) & 0xFFFFFFFFFFFFFFFF) ^ (idx * _U64(GOLDEN)))


def _flat_index(shape) -> np.ndarray:
    return np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)


# ----------------------------------------------------------------------------- rounding shifts
def _check_shift(n) -> np.ndarray:
    n = _i64(n)
    if n.size and (n.min() < 0 or n.max() > MAX_SHIFT):
        raise HwsimError(f"invalid shift {n.min() if n.min() < 0 else n.max()}: allowed 0..{MAX_SHIFT}")
    return n


def _round_up_on_tie(q: np.ndarray, tie: str) -> np.ndarray:
    """For a tie at q + 1/2 (q = floor): True where the tie rule rounds up to q + 1."""
    if tie == "half_up":
        return np.ones(q.shape, dtype=bool)
    if tie == "half_away":
        return q >= 0  # q + 1/2 > 0  <=>  q >= 0
    if tie == "half_even":
        return (q & 1) == 1
    raise HwsimError(f"invalid tie rule {tie!r}: allowed {', '.join(TIE_RULES)}")


def _floor_shift_parts(x, n):
    x, n = np.broadcast_arrays(_i64(x), _check_shift(n))
    q = x >> n
    r = x - (q << n)  # remainder in [0, 2^n)
    return x, n, q, r


def _round_nearest_from_parts(q, r, den, tie):
    twice = r << 1  # r < den <= 2^62, so 2r < 2^63
    up = (twice > den) | ((twice == den) & _round_up_on_tie(q, tie))
    return q + up


def shift_right_round_half_even(x, n) -> np.ndarray:
    """round(x / 2^n), ties to even; exact for int64 x, 0 <= n <= 62 (like ARM URSHR only on non-ties)."""
    x, n, q, r = _floor_shift_parts(x, n)
    return _round_nearest_from_parts(q, r, np.int64(1) << n, "half_even")


def shift_right_round_half_away(x, n) -> np.ndarray:
    """round(x / 2^n), ties away from zero; exact for int64 x, 0 <= n <= 62 (gemmlowp RoundingDivideByPOT)."""
    x, n, q, r = _floor_shift_parts(x, n)
    return _round_nearest_from_parts(q, r, np.int64(1) << n, "half_away")


def shift_right_round_half_up(x, n) -> np.ndarray:
    """round(x / 2^n), ties toward +inf = (x + 2^(n-1)) >> n without overflow (ARM SRSHR / VRSHR)."""
    x, n, q, r = _floor_shift_parts(x, n)
    return _round_nearest_from_parts(q, r, np.int64(1) << n, "half_up")


def shift_right_floor(x, n) -> np.ndarray:
    """floor(x / 2^n) = arithmetic shift right x >> n; 0 <= n <= 62."""
    x, n, q, r = _floor_shift_parts(x, n)
    return q


def shift_right_trunc(x, n) -> np.ndarray:
    """trunc(x / 2^n), toward zero (C integer division by 2^n); 0 <= n <= 62."""
    x, n, q, r = _floor_shift_parts(x, n)
    return q + ((x < 0) & (r != 0))


def shift_right_round_stochastic(x, n, seed: int = 0, index=None) -> np.ndarray:
    """floor((x + (h & (2^n - 1))) / 2^n) with h = stochastic_hash(index, seed); index defaults to the flat C-order index."""
    x, n, q, r = _floor_shift_parts(x, n)
    if index is None:
        index = _flat_index(x.shape)
    h = stochastic_hash(np.broadcast_to(_i64(index), x.shape), seed)
    mask = ((np.int64(1) << n) - 1).astype(_U64)
    t = (h & mask).astype(np.int64)  # < 2^n <= 2^62
    return q + ((r + t) >> n)  # r + t < 2^63: no overflow


def shift_right_round(x, n, mode: str, seed: int = 0, index=None) -> np.ndarray:
    """x / 2^n rounded with ``mode`` (one of ROUNDING_MODES), exact for int64 x and 0 <= n <= 62."""
    check_mode(mode)
    if mode == "stochastic":
        return shift_right_round_stochastic(x, n, seed, index)
    if mode == "floor":
        return shift_right_floor(x, n)
    if mode == "trunc":
        return shift_right_trunc(x, n)
    x, n, q, r = _floor_shift_parts(x, n)
    return _round_nearest_from_parts(q, r, np.int64(1) << n, mode)


def divide_round(num, den, mode: str, seed: int = 0, index=None) -> np.ndarray:
    """num / den rounded with ``mode``, exact rational rounding for int64 num, 0 < den < 2^38.

    stochastic: floor(num/den + u), u = (h >> 40) * 2^-24, i.e. q + [(h >> 40) * den >= (den - r) * 2^24].
    """
    check_mode(mode)
    num, den = np.broadcast_arrays(_i64(num), _i64(den))
    if den.size and (den.min() <= 0 or den.max() >= (1 << 38)):
        raise HwsimError(f"invalid divisor {int(den.min() if den.min() <= 0 else den.max())}: allowed 1..2^38-1")
    q = np.floor_divide(num, den)
    r = num - q * den  # in [0, den)
    if mode == "floor":
        return q
    if mode == "trunc":
        return q + ((num < 0) & (r != 0))
    if mode == "stochastic":
        if index is None:
            index = _flat_index(num.shape)
        u24 = (stochastic_hash(np.broadcast_to(_i64(index), num.shape), seed) >> _U64(40)).astype(np.int64)
        return q + (u24 * den >= ((den - r) << 24))
    return _round_nearest_from_parts(q, r, den, mode)


def round_float(v, mode: str, seed: int = 0, index=None) -> np.ndarray:
    """Round float ``v`` (float32/64) to int64 with ``mode``, evaluated exactly in float64; |v| is clipped to 2^62 first.

    stochastic: floor(fl64(v + u)), u = (h >> 40) * 2^-24 (h = stochastic_hash(index, seed)).
    """
    check_mode(mode)
    v = np.clip(np.asarray(v, dtype=np.float64), -(2.0**62), 2.0**62)
    if mode == "half_even":
        r = np.rint(v)
    elif mode == "half_away":
        r = np.copysign(np.floor(np.abs(v) + 0.5), v)  # |v| + 0.5 exact in float64 for float32 v
    elif mode == "half_up":
        r = np.floor(v + 0.5)
    elif mode == "floor":
        r = np.floor(v)
    elif mode == "trunc":
        r = np.trunc(v)
    else:
        if index is None:
            index = _flat_index(v.shape)
        u = (stochastic_hash(np.broadcast_to(_i64(index), v.shape), seed) >> _U64(40)).astype(np.float64) * 2.0**-24
        r = np.floor(v + u)
    return r.astype(np.int64)


# ----------------------------------------------------------------------------- gemmlowp / TFLite fixed point
def _round_shift_int(v: int, n: int, tie: str) -> int:
    """Python-int version of round(v / 2^n) with a tie rule (n may be negative: exact left shift)."""
    if n <= 0:
        return v << (-n)
    q, r = v >> n, v - ((v >> n) << n)
    half = 1 << (n - 1)
    if r > half:
        return q + 1
    if r < half:
        return q
    up = {"half_up": True, "half_away": q >= 0, "half_even": (q & 1) == 1}[tie]
    return q + int(up)


def _mul_round_shift(x, q, n, tie: str) -> np.ndarray:
    """round_tie(x * q / 2^n) exactly, for int64 x, 0 <= q <= 2^31, integer n (n < 0: exact left shift).

    Elements with |x| <= 2^31 (|x * q| <= 2^62) are vectorized; the rest use Python integers.
    The caller saturates; results outside int64 are clipped to +-2^62 here.
    """
    x, q, n = np.broadcast_arrays(_i64(x), _i64(q), _i64(n))
    out = np.empty(x.shape, dtype=np.int64)
    small = (np.abs(x) <= (1 << 31)) & (n >= 0) & (n <= MAX_SHIFT)
    if small.all():
        return shift_right_round(x * q, n, tie)
    if small.any():
        out[small] = shift_right_round(x[small] * q[small], n[small], tie)
    big = np.flatnonzero(~small.ravel())
    xf, qf, nf, of = x.ravel(), q.ravel(), n.ravel(), out.reshape(-1)
    for i in big:
        v = _round_shift_int(int(xf[i]) * int(qf[i]), int(nf[i]), tie)
        of[i] = min(max(v, -(1 << 62)), 1 << 62)
    return out


def saturating_rounding_doubling_high_mul(a, b, tie: str = "half_up") -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 a, b: round(a*b / 2^31), saturated to int32.

    Equivalent to ARM NEON VQRDMULH. gemmlowp's tie rule is half_up (toward +inf: its nudge
    1 - 2^30 for negative products plus C truncation sends -0.5 to 0); the only saturating case
    is a == b == INT32_MIN (result 2^31 -> INT32_MAX).
    """
    a, b = _i64(a), _i64(b)
    for name, v in (("a", a), ("b", b)):
        if v.size and (v.min() < INT32_MIN or v.max() > INT32_MAX):
            raise HwsimError(f"saturating_rounding_doubling_high_mul: {name} outside int32")
    return np.clip(shift_right_round(a * b, 31, check_mode(tie, TIE_RULES, "tie rule")), INT32_MIN, INT32_MAX)


def rounding_divide_by_pot(x, exponent, tie: str = "half_away") -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: round(x / 2^exponent), ties away from zero by default; 0 <= exponent <= 31."""
    e = _i64(exponent)
    if e.size and (e.min() < 0 or e.max() > 31):
        raise HwsimError(f"rounding_divide_by_pot: exponent {int(e.min())}..{int(e.max())} outside 0..31")
    return shift_right_round(x, e, check_mode(tie, TIE_RULES, "tie rule"))


GEMMLOWP_TIES = ("half_up", "half_away")  # (SaturatingRoundingDoublingHighMul, RoundingDivideByPOT)


def multiply_by_quantized_multiplier(x, q, shift, rounding: str = "double",
                                     ties: tuple[str, str] = GEMMLOWP_TIES) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier: x * q * 2^(shift-31), rounded, result in int32.

    ``double`` (gemmlowp path): RoundingDivideByPOT(SRDHM(x * 2^max(shift,0), q), max(-shift,0)),
    step ties ``ties[0]`` / ``ties[1]``. ``single`` (TFLITE_SINGLE_ROUNDING): one rounding of
    x*q / 2^(31-shift) with tie ``ties[1]`` (TFLite: half_up), saturated to int32.
    Defined for any int64 x: x * 2^shift is exact (TFLite's int32 x << shift would overflow), and
    the high-mul saturates to int32 — identical to TFLite whenever x * 2^max(shift,0) fits int32.
    Valid q: 0 <= q <= 2^31-1; shift: -62..31 (double: right shift <= 31).
    """
    check_mode(rounding, ("double", "single"), "fixed_rounding")
    t0 = check_mode(ties[0], TIE_RULES, "tie rule")
    t1 = check_mode(ties[1], TIE_RULES, "tie rule")
    x, q, shift = np.broadcast_arrays(_i64(x), _i64(q), _i64(shift))
    if q.size and (q.min() < 0 or q.max() > INT32_MAX):
        raise HwsimError("multiply_by_quantized_multiplier: quantized multiplier outside 0..2^31-1")
    if rounding == "single":
        return np.clip(_mul_round_shift(x, q, 31 - shift, t1), INT32_MIN, INT32_MAX)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    if right.size and right.max() > 31:
        raise HwsimError(f"multiply_by_quantized_multiplier: right shift {int(right.max())} > 31 (double rounding)")
    if left.size and left.max() > 31:
        raise HwsimError(f"multiply_by_quantized_multiplier: left shift {int(left.max())} > 31")
    # x * 2^left exactly; |x * 2^left| >= 2^62 saturates the high-mul for every q >= 1, so clip there
    lim = np.int64(1) << (62 - left)
    xl = np.clip(x, -lim, lim) << left
    hi = np.clip(_mul_round_shift(xl, q, 31, t0), INT32_MIN, INT32_MAX)  # SRDHM
    return shift_right_round(hi, right, t1)  # RoundingDivideByPOT


def multiply_by_quantized_multiplier_15(x, q15, shift, tie: str = "half_up") -> np.ndarray:
    """TOSA RESCALE scale32=false (apply_scale_16): round(x * q15 / 2^(15-shift)), one rounding, ties half_up; saturated to int32.

    q15 is a Q15 multiplier in [2^14, 2^15) (or 0); the real multiplier is q15 * 2^(shift-15).
    """
    t = check_mode(tie, TIE_RULES, "tie rule")
    x, q15, shift = np.broadcast_arrays(_i64(x), _i64(q15), _i64(shift))
    if q15.size and (q15.min() < 0 or q15.max() >= (1 << 15)):
        raise HwsimError("multiply_by_quantized_multiplier_15: multiplier outside 0..2^15-1")
    return np.clip(_mul_round_shift(x, q15, 15 - shift, t), INT32_MIN, INT32_MAX)


def _round_half_away_float(v: float) -> int:
    f = math.floor(v)
    return int(f) + (1 if v - f >= 0.5 else 0)  # v - f is exact for |v| < 2^52


def _quantize_multiplier_bits(real: float, frac_bits: int, min_shift: int) -> tuple[int, int]:
    real = float(real)
    if not math.isfinite(real) or real < 0:
        raise HwsimError(f"invalid requantization multiplier {real!r}: allowed a finite value >= 0")
    if real == 0.0:
        return 0, 0
    mant, shift = math.frexp(real)  # real = mant * 2^shift, mant in [0.5, 1)
    q = _round_half_away_float(mant * (1 << frac_bits))  # TfLiteRound = std::round (half away)
    if q == (1 << frac_bits):  # mantissa rounded up to 1.0
        q //= 2
        shift += 1
    if shift < min_shift:  # everything would be shifted out: flush to zero
        return 0, 0
    return q, shift


def quantize_multiplier(real: float, single_rounding: bool = False) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real ~= q31 * 2^(shift-31), q31 in [2^30, 2^31) (Q31 mantissa), or (0, 0).

    frexp, mantissa * 2^31 rounded half away, q == 2^31 -> (2^30, shift+1), shift < -31 -> (0, 0)
    (tiny multipliers flush to zero); with ``single_rounding`` (TFLITE_SINGLE_ROUNDING) shift > 30
    saturates to (2^31-1, 30).
    """
    q, shift = _quantize_multiplier_bits(real, 31, -31)
    if single_rounding and shift > 30:
        return INT32_MAX, 30
    return q, shift


def quantize_multiplier_15(real: float) -> tuple[int, int]:
    """Q15 analogue for TOSA scale32=false: real ~= q15 * 2^(shift-15), q15 in [2^14, 2^15), or (0, 0).

    Same frexp/round-half-away/carry rule as quantize_multiplier; TOSA's total right shift 15 - shift
    must be <= 62, so shift < -47 flushes to (0, 0).
    """
    return _quantize_multiplier_bits(real, 15, -47)


def pow2_exponent(s: float, what: str = "scale") -> int:
    """e with s == 2^e exactly (float s > 0), else HwsimError."""
    s = float(s)
    if not (math.isfinite(s) and s > 0):
        raise HwsimError(f"invalid {what} {s!r}: pow2 requantization needs a positive power of two")
    mant, e = math.frexp(s)
    if mant != 0.5:
        raise HwsimError(f"invalid {what} {s!r}: pow2 requantization needs an exact power of two")
    return e - 1
