"""Quantized unary activations: sigmoid, hardsigmoid, hardswish, silu, tanh (docs/semantics.md, "Activations").

An activation on a <= 16-bit input grid is a lookup table over that grid:
``table[q - in_qmin] = clamp(out_zp + round(f(dequantize(q)) / out_scale), out_qmin, out_qmax)``
(:func:`build_table`), applied by :func:`apply_table` (numba gather; a 10^6-element tensor takes
milliseconds). How ``f(dequantize(q))`` and the rounding are evaluated is the ``form``:

- ``"exact"`` (default, hwsim's own semantics): the real number v = f(d) / fl32(s_out), d = fl32(s_in) * (q - z_in),
  rounded **correctly** with ``rounding`` (one of :data:`TABLE_ROUNDINGS`: every deterministic mode of
  hwsim.fixedpoint; ``stochastic`` is refused because a table entry is one integer per input value, not one draw
  per element). The reference (:func:`exact_value`) evaluates v in exact rationals (hardsigmoid, hardswish) or
  60-digit decimal arithmetic (sigmoid, silu, tanh: irrational except at d = 0, where it is exact); the fast
  path screens in float64 and re-evaluates the entries within 1e-9 of a rounding boundary that way. So a table
  does not depend on the platform's libm. hardsigmoid's alpha, beta: None or the float64 pair (1/6, 0.5) mean
  exactly 1/6 and 1/2 (PyTorch); other floats are taken as their exact binary values (ONNX's float32 0.2).
- ``"torch"``: PyTorch's quantized CPU kernels (aten/src/ATen/native/quantized/cpu/kernels/
  QuantizedOpKernels.cpp: qsigmoid_kernel, qtanh via dequantize/tanh/quantize, qhardsigmoid_kernel,
  qhardswish_kernel) in float32: see :func:`torch_values`; output round(fl32(y * fl32(1/s_out))) half
  even (Vectorized<qint>::quantize); scales are float32 numbers (PyTorch keeps an output scale given as a double:
  pass float32-representable scales, as hwsim stores them). PyTorch fixes the output grid of sigmoid and
  hardsigmoid (scale 1/256, zero point 0 for quint8, -128 for qint8) and of tanh (scale 2/256, zero point
  128 / 0): see :func:`torch_output_grid`.
- ``"tflite_lut"``: TFLite's int8 LOGISTIC / TANH table (tensorflow/lite/kernels/activations.cc,
  PopulateLookupTable): d = fl32(s_in * fl32(q - z_in)), f in float32, round(fl32(f * fl32(1/s_out)))
  half away (std::round).
- ``"onnxruntime"``: ONNX Runtime (x86-64): ``com.microsoft.QLinearSigmoid`` (contrib_ops/cpu/quantization/
  qlinear_lookup_table.cc QlinearBuildLookupTable + MLAS MlasComputeLogistic, its FMA3 kernel: Eigen's rational
  polynomial, see :func:`mlas_logistic`) and the QDQ float path DequantizeLinear -> Sigmoid / HardSigmoid /
  HardSwish -> QuantizeLinear: d = fl32(fl32(q - z) * s), f in float32 (:func:`onnxruntime_values`),
  y = round_half_even(fl32(f / s_out)) + z_out (MlasQuantizeLinear divides by the scale).
- ``"tflite_hardswish"``: TFLite's int8 HARD_SWISH fixed-point arithmetic (tensorflow/lite/kernels/
  internal/reference/hard_swish.h, HardSwish(const HardSwishParams&, ...); parameters from
  activations.cc HardSwishPrepare): :func:`tflite_hardswish_params`, :func:`tflite_hardswish_reference`.

Each form has an element-wise reference (:func:`activation_reference`: the definition evaluated per element,
no table) and the fast path (:func:`activation`: build the table once, gather); tests demand identity.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numba import njit

from hwsim import fixedpoint as fp
from hwsim import reference as ref
from hwsim.errors import HwsimError
from hwsim.ops.add import fma_f32  # noqa: F401  (one FMA for the whole package; re-exported)

ACTIVATIONS = ("sigmoid", "hardsigmoid", "hardswish", "silu", "tanh")
TABLE_ROUNDINGS = ("half_even", "half_away", "half_up", "floor", "trunc")
FORMS = ("exact", "torch", "tflite_lut", "tflite_hardswish", "onnxruntime")
HARDSIGMOID_TORCH = (1.0 / 6.0, 0.5)  # torch.nn.Hardsigmoid: relu6(x + 3) / 6
HARDSIGMOID_ONNX = (0.2, 0.5)  # ONNX HardSigmoid defaults
MAX_TABLE_BITS = 16  # tables up to 2^16 entries
_FORM_FUNCS = {"exact": ACTIVATIONS, "torch": ("sigmoid", "hardsigmoid", "hardswish", "tanh"),
               "tflite_lut": ("sigmoid", "tanh"), "tflite_hardswish": ("hardswish",),
               "onnxruntime": ("sigmoid", "hardsigmoid", "hardswish")}
f32 = np.float32


def _check(fn: str, form: str, rounding: str, alpha, beta) -> tuple[float, float]:
    fp.check_mode(fn, ACTIVATIONS, "activation")
    fp.check_mode(form, FORMS, "activation form")
    if fn not in _FORM_FUNCS[form]:
        raise HwsimError(f"activation form {form!r} does not implement {fn!r}: allowed "
                         + ", ".join(_FORM_FUNCS[form]))
    fp.check_mode(rounding, TABLE_ROUNDINGS, "activation table rounding (stochastic is per element, not a table)")
    a, b = HARDSIGMOID_TORCH if alpha is None else (float(alpha), float(beta if beta is not None else 0.5))
    if not (np.isfinite(a) and np.isfinite(b)):
        raise HwsimError(f"hardsigmoid alpha = {alpha!r}, beta = {beta!r}: allowed finite numbers")
    if fn in ("hardsigmoid", "hardswish") and form not in ("exact", "onnxruntime") and (a, b) != HARDSIGMOID_TORCH:
        raise HwsimError(f"activation form {form!r}: {fn} alpha = {a!r}, beta = {b!r}: allowed only "
                         "alpha = 1/6, beta = 0.5 (the engine's fixed definition)")
    if fn == "hardswish" and (a, b) != HARDSIGMOID_TORCH:
        raise HwsimError(f"hardswish alpha = {a!r}, beta = {b!r}: allowed only alpha = 1/6, beta = 0.5")
    return a, b


def _grid(name: str, scale, zp, qmin, qmax) -> tuple[float, int, int, int]:
    s = f32(scale) if isinstance(scale, (int, float, np.number)) else f32(np.nan)
    if not (np.isfinite(s) and s > 0):
        raise HwsimError(f"{name}_scale = {scale!r}: allowed a positive finite number")
    zp, qmin, qmax = int(zp), int(qmin), int(qmax)
    if qmin > qmax or (name == "in" and qmax - qmin >= (1 << MAX_TABLE_BITS)):
        raise HwsimError(f"{name} grid [{qmin}, {qmax}]: allowed qmin <= qmax"
                         + (f" and at most 2^{MAX_TABLE_BITS} values (one table entry each)" if name == "in" else ""))
    return float(s), zp, qmin, qmax


# ----------------------------------------------------------------------------- float definitions
def activation_float64(fn: str, x, alpha: float = 1.0 / 6.0, beta: float = 0.5) -> np.ndarray:
    """f(x) in float64: sigmoid 1/(1+e^-x), hardsigmoid clip(alpha*x+beta, 0, 1), hardswish x*relu6(x+3)/6,
    silu x*sigmoid(x), tanh. numpy's float64 exp/tanh (< 1 ulp, platform-dependent in the last bit): the
    "exact" form's screen, and the stand-in for float32 libm functions (see :func:`_exp_f32`)."""
    x = np.asarray(x, dtype=np.float64)
    if fn == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if fn == "hardsigmoid":
        return np.clip(alpha * x + beta, 0.0, 1.0)
    if fn == "hardswish":
        return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    if fn == "silu":
        return x / (1.0 + np.exp(-x))
    return np.tanh(x)


def _exp_f32(x32) -> np.ndarray:
    """expf as fl32(exp(x) in float64): a deterministic stand-in for a libm/Sleef expf (differs from a
    < 1-ulp expf only where that one is not correctly rounded)."""
    with np.errstate(over="ignore"):
        return np.exp(np.asarray(x32, np.float64)).astype(f32)


def torch_dequantize(fn: str, q, scale: float, zero_point: int) -> np.ndarray:
    """PyTorch's vectorized dequantize in each kernel: sigmoid (x - zp) * scale, i.e. fl32(fl32(q - z) * s);
    tanh, hardswish, hardsigmoid the premultiplied form fma(q, s, fl32(s * -z)) (Vectorized::dequantize with
    scale_neg_zp_premul)."""
    q = np.asarray(q, np.int64)
    s = f32(scale)
    if fn == "sigmoid":
        return (q - zero_point).astype(f32) * s
    premul = f32(s * f32(-zero_point))
    # s*q exact in float64 (24 x <= 17 bits), and so is + premul here: one rounding == the FMA
    return (np.float64(s) * q + np.float64(premul)).astype(f32)


def torch_values(fn: str, q, scale: float, zero_point: int) -> np.ndarray:
    """PyTorch's float32 y = f(dequantize(q)) of its quantized CPU kernels (vectorized path; QuantizedOpKernels.cpp).

    d = :func:`torch_dequantize`; sigmoid y = 1 / (1 + expf(-d)), one float32 rounding per op; tanh fl32(tanh(d));
    t = min(max(fl32(d + 3), 0), 6), hardswish fl32(fl32(d * t) / 6), hardsigmoid fl32(t / 6). expf / tanhf are
    fl32 of the float64 function (PyTorch's Sleef versions can differ in the last ulp).
    """
    d = torch_dequantize(fn, q, scale, zero_point)
    if fn in ("hardswish", "hardsigmoid"):
        t = np.minimum(np.maximum(d + f32(3), f32(0)), f32(6))
        return (d * t) / f32(6) if fn == "hardswish" else t / f32(6)
    if fn == "sigmoid":
        return f32(1) / (f32(1) + _exp_f32(-d))
    return np.tanh(d.astype(np.float64)).astype(f32)


def torch_output_grid(fn: str, dtype: str) -> tuple[float, int]:
    """(scale, zero_point) PyTorch forces on quantized sigmoid / hardsigmoid / tanh; dtype 'quint8' or 'qint8'."""
    fp.check_mode(dtype, ("quint8", "qint8"), "torch dtype")
    if fn in ("sigmoid", "hardsigmoid"):
        return 1.0 / 256.0, 0 if dtype == "quint8" else -128
    if fn == "tanh":
        return 2.0 / 256.0, 128 if dtype == "quint8" else 0
    raise HwsimError(f"torch_output_grid: {fn!r} takes its output grid from the caller: allowed sigmoid, "
                     "hardsigmoid, tanh")


def tflite_values(fn: str, q, scale: float, zero_point: int) -> np.ndarray:
    """TFLite PopulateLookupTable's float32 f(d): d = fl32(s * fl32(q - z)); sigmoid 1/(1+expf(-d)),
    tanh fl32(tanh(d))."""
    d = f32(scale) * (np.asarray(q, np.int64) - int(zero_point)).astype(f32)
    if fn == "sigmoid":
        return f32(1) / (f32(1) + _exp_f32(-d))
    return np.tanh(d.astype(np.float64)).astype(f32)


# MLAS logistic.cpp MlasLogisticConstants (Eigen's coefficients), as float32
_MLAS_ALPHA = tuple(f32(v) for v in (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                                     8.51377133304701e-03, 2.48287947061529e-01))
_MLAS_BETA = tuple(f32(v) for v in (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
                                    1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01))


def mlas_logistic(x) -> np.ndarray:
    """MLAS MlasComputeLogistic, FMA3 kernel (x86-64 with FMA): x clamped to [-18, 18], x2 = fl32(x*x),
    p = x * (((a9 x2 + a7) x2 + a5) x2 + a3) x2 + a1), q = ((((b10 x2 + b8) x2 + b6) x2 + b4) x2 + b2) x2 + b0,
    each multiply-add one FMA, y = clamp(fl32(fl32(p / q) + 0.5), 0, 1)."""
    x = np.clip(np.asarray(x, f32), f32(-18), f32(18))
    x2 = x * x
    p = fma_f32(x2, _MLAS_ALPHA[0], _MLAS_ALPHA[1])
    for a in _MLAS_ALPHA[2:]:
        p = fma_f32(p, x2, a)
    p = p * x
    q = fma_f32(x2, _MLAS_BETA[0], _MLAS_BETA[1])
    for b in _MLAS_BETA[2:]:
        q = fma_f32(q, x2, b)
    return np.clip(p / q + f32(0.5), f32(0), f32(1))


def onnxruntime_values(fn: str, q, scale: float, zero_point: int, alpha: float, beta: float) -> np.ndarray:
    """ONNX Runtime's float32 f(d), d = fl32(fl32(q - z) * s): sigmoid :func:`mlas_logistic`; HardSigmoid
    clamp(fl32(fl32(alpha * d) + beta), 0, 1) (activations.h, Eigen, no FMA); HardSwish = d * HardSigmoid(d)
    with alpha = fl32(1/6), beta = 0.5 (the ONNX function body)."""
    d = (np.asarray(q, np.int64) - int(zero_point)).astype(f32) * f32(scale)
    if fn == "sigmoid":
        return mlas_logistic(d)
    h = np.clip(f32(alpha) * d + f32(beta), f32(0), f32(1))
    return d * h if fn == "hardswish" else h


# ----------------------------------------------------------------------------- TFLite HARD_SWISH (fixed point)
@dataclass(frozen=True)
class HardSwishParams:
    """TFLite HardSwishParams (int8): int16 Q15 multipliers and exponents from HardSwishPrepare."""

    input_zero_point: int
    output_zero_point: int
    reluish_multiplier_fixedpoint_int16: int
    reluish_multiplier_exponent: int
    output_multiplier_fixedpoint_int16: int
    output_multiplier_exponent: int


def _downscale_int32_to_int16_multiplier(m: int) -> int:
    """TFLite DownScaleInt32ToInt16Multiplier: (m + 2^15) >> 16, saturating to 32767 near INT32_MAX."""
    if m >= fp.INT32_MAX - (1 << 15):
        return 32767
    return (m + (1 << 15)) >> 16


def tflite_hardswish_params(in_scale, in_zp, out_scale, out_zp) -> HardSwishParams:
    """activations.cc HardSwishPrepare: hires_input_scale = fl32(s_in / 128), reluish_scale = 3/32768,
    output multiplier fl32(hires / s_out), reluish multiplier fl32(hires / reluish_scale), each
    QuantizeMultiplier then downscaled to int16; the output exponent must be <= 0."""
    s_in, s_out = f32(in_scale), f32(out_scale)
    hires = f32(f32(1.0 / 128.0) * s_in)
    out_m = f32(hires / s_out)
    relu_m = f32(hires / f32(3.0 / 32768.0))
    qo, eo = fp.quantize_multiplier(float(out_m))
    qr, er = fp.quantize_multiplier(float(relu_m))
    if eo > 0:
        raise HwsimError(f"tflite_hardswish: output multiplier {float(out_m)!r} >= 1 (in_scale {float(s_in)!r}, "
                         f"out_scale {float(s_out)!r}): allowed in_scale / 128 < out_scale "
                         "(TFLite requires exponent <= 0)")
    return HardSwishParams(int(in_zp), int(out_zp), _downscale_int32_to_int16_multiplier(qr), er,
                           _downscale_int32_to_int16_multiplier(qo), eo)


def _srdhm16(a, b) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int16: round(a*b / 2^15) ties half_up, saturated (VQRDMULH.16)."""
    return np.clip(fp.shift_right_round(np.asarray(a, np.int64) * b, 15, "half_up"), -32768, 32767)


def _sat16(x) -> np.ndarray:
    return np.clip(x, -32768, 32767)


def tflite_hardswish_reference(x_q, p: HardSwishParams, qmin: int, qmax: int) -> np.ndarray:
    """reference_ops::HardSwish (quantized), element-wise in int64 numpy, int16 steps saturated as in TFLite."""
    x = np.asarray(x_q, np.int64)
    v = x - p.input_zero_point
    if v.size and np.abs(v).max() > 255:
        raise HwsimError("tflite_hardswish: |x - input_zero_point| > 255: allowed an 8-bit input grid")
    hires = v * 128  # fits int16 for |v| <= 255
    pre_out = _srdhm16(hires, p.output_multiplier_fixedpoint_int16)
    r = hires
    e = p.reluish_multiplier_exponent
    if e > 0:
        r = _sat16(r * (1 << (e - 1)))  # SaturatingLeftShift(v, e - 1)
    r = _srdhm16(r, p.reluish_multiplier_fixedpoint_int16)
    if e > 0:
        r = _sat16(r * 2)
    if e < 0:
        r = fp.shift_right_round(r, -e, "half_away")  # gemmlowp RoundingDivideByPOT
    r = (r + (1 << 15)) >> 1  # [-1, 1] -> [0, 1] in Q15
    prod = r * pre_out
    # SaturatingDoublingHighMul: C division by 2^15 (truncation toward zero); r >= 0 so no int16-min case
    pre = np.where(prod >= 0, prod >> 15, -((-prod) >> 15))
    y = fp.shift_right_round(pre, -p.output_multiplier_exponent, "half_away") + p.output_zero_point
    return np.clip(y, qmin, qmax)


# ----------------------------------------------------------------------------- the exact form
def _exact_params(alpha, beta) -> tuple[Fraction, Fraction]:
    """(alpha, beta) as rationals: the PyTorch definition (None, or the float64 pair (1/6, 0.5)) is exactly 1/6, 1/2;
    any other float is its exact binary value (an ONNX float32 attribute 0.2 stays fl32(0.2))."""
    if alpha is None or (float(alpha), float(beta if beta is not None else 0.5)) == HARDSIGMOID_TORCH:
        return Fraction(1, 6), Fraction(1, 2)
    return Fraction(float(alpha)), Fraction(float(beta if beta is not None else 0.5))


def exact_value(fn: str, d: Fraction, alpha: Fraction = Fraction(1, 6), beta: Fraction = Fraction(1, 2)) -> Fraction:
    """f(d) as a rational: exact for hardsigmoid / hardswish and at d = 0; otherwise within 10^-55 relative
    (decimal, 60 significant digits; d is a dyadic rational with < 60 digits, so it enters exactly)."""
    if fn == "hardsigmoid":
        return min(max(alpha * d + beta, Fraction(0)), Fraction(1))
    if fn == "hardswish":
        return d * min(max(d + 3, Fraction(0)), Fraction(6)) / 6
    if d == 0:
        return Fraction(1, 2) if fn == "sigmoid" else Fraction(0)
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        ctx.Emax, ctx.Emin = 10**6, -(10**6)
        x = decimal.Decimal(d.numerator) / decimal.Decimal(d.denominator)
        if fn == "sigmoid":
            v = 1 / (1 + (-x).exp())
        elif fn == "silu":
            v = x / (1 + (-x).exp())
        else:  # tanh = sign(x) (1 - e) / (1 + e), e = exp(-2|x|): no overflow
            e = (-2 * abs(x)).exp()
            v = (1 - e) / (1 + e) * (1 if x > 0 else -1)
    return Fraction(v)


def _exact_entry(fn, q: int, s_in: Fraction, zi: int, s_out: Fraction, alpha, beta, rounding: str) -> int:
    v = exact_value(fn, s_in * (q - zi), alpha, beta) / s_out
    return ref.divide_round_int(v.numerator, v.denominator, rounding)


def _exact_fast(fn, x, s_in, zi, s_out, alpha, beta, rounding) -> np.ndarray:
    """float64 screen, exact re-evaluation of the entries within 1e-9 of a rounding boundary (== the reference)."""
    fa, fb = (1.0 / 6.0, 0.5) if alpha is None else (float(alpha), float(beta if beta is not None else 0.5))
    with np.errstate(over="ignore"):
        v = activation_float64(fn, s_in * (x - zi).astype(np.float64), fa, fb) / s_out
    r = fp.round_float(v, rounding)
    frac = v - np.floor(v)
    boundary = 0.5 if rounding in ("half_even", "half_away", "half_up") else 0.0
    dist = np.abs(frac - boundary) if boundary else np.minimum(frac, 1.0 - frac)
    near = np.flatnonzero((dist <= 1e-9 * (1.0 + np.abs(v))).ravel())
    if near.size:
        a, b = _exact_params(alpha, beta)
        fs_in, fs_out = Fraction(s_in), Fraction(s_out)
        rf, xf = r.reshape(-1), x.reshape(-1)
        for i in near:
            rf[i] = _exact_entry(fn, int(xf[i]), fs_in, zi, fs_out, a, b, rounding)
    return r


# ----------------------------------------------------------------------------- the definition, element-wise
def activation_reference(x_q, fn: str, in_scale, in_zp, out_scale, out_zp, out_qmin, out_qmax,
                         rounding: str = "half_even", *, form: str = "exact", alpha=None, beta=None) -> np.ndarray:
    """The definition of each form evaluated per element (no table): int64 array shaped like ``x_q``.

    "exact": one rational / 60-digit evaluation per element (:func:`exact_value`), slow and obviously correct.
    """
    a, b = _check(fn, form, rounding, alpha, beta)
    x = np.asarray(x_q, np.int64)
    s_in, s_out = float(f32(in_scale)), float(f32(out_scale))
    zi, zo, lo, hi = int(in_zp), int(out_zp), int(out_qmin), int(out_qmax)
    if form == "exact":
        ea, eb = _exact_params(alpha, beta)
        fs_in, fs_out = Fraction(s_in), Fraction(s_out)
        r = np.array([_exact_entry(fn, int(v), fs_in, zi, fs_out, ea, eb, rounding) for v in x.reshape(-1)],
                     np.int64).reshape(x.shape)
    elif form == "torch":
        inv = f32(1.0 / np.float64(f32(out_scale)))
        r = fp.round_float(torch_values(fn, x, s_in, zi) * inv, "half_even")  # nearbyint / cvtps2dq
    elif form == "tflite_lut":
        inv = f32(f32(1) / f32(out_scale))
        r = fp.round_float(tflite_values(fn, x, s_in, zi) * inv, "half_away")  # std::round
    elif form == "onnxruntime":
        r = fp.round_float(onnxruntime_values(fn, x, s_in, zi, a, b) / f32(out_scale), "half_even")
    else:
        return tflite_hardswish_reference(x, tflite_hardswish_params(in_scale, zi, out_scale, zo), lo, hi)
    return np.clip(r + zo, lo, hi)


# ----------------------------------------------------------------------------- table: build and apply
def build_table(fn: str, in_scale, in_zp, in_qmin, in_qmax, out_scale, out_zp, out_qmin, out_qmax,
                rounding: str = "half_even", *, form: str = "exact", alpha=None, beta=None) -> np.ndarray:
    """int64 table of in_qmax - in_qmin + 1 entries: table[q - in_qmin] = the activation of q (``form``).

    ``rounding``: the profile's rounding for "exact" (each of :data:`TABLE_ROUNDINGS`); the engine forms
    have their own and ignore it (torch, onnxruntime: half_even, tflite_lut: half_away, tflite_hardswish:
    fixed point).
    ``alpha``, ``beta``: hardsigmoid's slope and offset (default PyTorch's 1/6, 0.5; ONNX uses 0.2, 0.5).
    """
    _, _, in_qmin, in_qmax = _grid("in", in_scale, in_zp, in_qmin, in_qmax)
    _grid("out", out_scale, out_zp, out_qmin, out_qmax)
    grid = np.arange(in_qmin, in_qmax + 1, dtype=np.int64)
    if form == "exact":
        _check(fn, form, rounding, alpha, beta)
        r = _exact_fast(fn, grid, float(f32(in_scale)), int(in_zp), float(f32(out_scale)), alpha, beta, rounding)
        return np.clip(r + int(out_zp), int(out_qmin), int(out_qmax))
    return activation_reference(grid, fn, in_scale, in_zp, out_scale, out_zp, out_qmin, out_qmax, rounding,
                                form=form, alpha=alpha, beta=beta)


@njit(cache=True, nogil=True)
def _gather(x, table, qmin, out):
    """out[i] = table[x[i] - qmin]; returns the number of x outside the table (those outputs are left 0)."""
    n = table.shape[0]
    bad = 0
    for i in range(x.shape[0]):
        k = x[i] - qmin
        if k < 0 or k >= n:
            bad += 1
            out[i] = 0
        else:
            out[i] = table[k]
    return bad


@njit(cache=True, nogil=True)
def _gather_clamped(x, table, counted, qmin, out):
    """out[i] = table[x[i] - qmin] (a clamped table in out's dtype), plus the number of counted entries read;
    returns (inputs outside the table, that count) (serial: execute's batch workers run it at once)."""
    n = table.shape[0]
    bad = 0
    c = 0
    for i in range(x.shape[0]):
        k = x[i] - qmin
        if k < 0 or k >= n:
            bad += 1
        else:
            out[i] = table[k]
            c += counted[k]
    return bad, c


def apply_table(x_q, table, in_qmin: int) -> np.ndarray:
    """y = table[x - in_qmin] (int64, shape of x); every x must lie on the table's input grid.

    numba gather over the flat array (any integer dtype is read as it is: no int64 copy of an int8 tensor).
    """
    x = np.asarray(x_q)
    if not np.issubdtype(x.dtype, np.integer):
        raise HwsimError(f"apply_table: x_q dtype {x.dtype}: allowed an integer array")
    t = np.ascontiguousarray(table, dtype=np.int64).reshape(-1)
    out = np.empty(x.size, np.int64)
    bad = _gather(np.ascontiguousarray(x).reshape(-1), t, np.int64(in_qmin), out)
    if bad:
        raise HwsimError(f"apply_table: {bad} inputs outside the table's grid [{int(in_qmin)}, "
                         f"{int(in_qmin) + t.size - 1}]")
    return out.reshape(x.shape)


def activation(x_q, fn: str, in_scale, in_zp, in_qmin, in_qmax, out_scale, out_zp, out_qmin, out_qmax,
               rounding: str = "half_even", *, form: str = "exact", alpha=None, beta=None,
               impl: str = "fast") -> np.ndarray:
    """Quantized activation ``fn`` of ``x_q`` (int64 result): fast = :func:`build_table` + :func:`apply_table`,
    reference = :func:`activation_reference` (per element). Inputs outside [in_qmin, in_qmax] are an error."""
    fp.check_mode(impl, ("fast", "reference"), "impl")
    x = np.asarray(x_q)
    if x.size and (int(x.min()) < int(in_qmin) or int(x.max()) > int(in_qmax)):
        raise HwsimError(f"activation: x_q outside the input grid [{int(in_qmin)}, {int(in_qmax)}]")
    if impl == "reference":
        _grid("in", in_scale, in_zp, in_qmin, in_qmax)
        _grid("out", out_scale, out_zp, out_qmin, out_qmax)
        return activation_reference(x, fn, in_scale, in_zp, out_scale, out_zp, out_qmin, out_qmax, rounding,
                                    form=form, alpha=alpha, beta=beta)
    table = build_table(fn, in_scale, in_zp, in_qmin, in_qmax, out_scale, out_zp, out_qmin, out_qmax, rounding,
                        form=form, alpha=alpha, beta=beta)
    return apply_table(x, table, int(in_qmin))


# ----------------------------------------------------------------------------- registry entries
from hwsim.ops.registry import WIDE, OpSpec, clamp_counted, register  # noqa: E402

# profile requant.activation_form -> the form each function takes (functions the engine has no kernel for
# take "exact": PyTorch has no quantized SiLU, TFLite no int8 HARD_SIGMOID / SiLU builtin, ORT no QLinear tanh)
ENGINE_FORMS = {
    "exact": {},
    "torch": {"sigmoid": "torch", "hardsigmoid": "torch", "hardswish": "torch", "tanh": "torch"},
    "tflite": {"sigmoid": "tflite_lut", "tanh": "tflite_lut", "hardswish": "tflite_hardswish"},
    "onnxruntime": {"sigmoid": "onnxruntime", "hardsigmoid": "onnxruntime", "hardswish": "onnxruntime"},
    # torch.compile's x86 int8 lowering: PyTorch's tables, and a hard-swish on a conv / linear output fused with it
    # (HardswishSpec, :func:`inductor_hardswish`)
    "inductor": {"sigmoid": "torch", "hardsigmoid": "torch", "hardswish": "torch", "tanh": "torch"},
}
# engines that fix the output grid of f (range [0, 1) or (-1, 1)): torch_output_grid, TFLite activations.cc
# (LOGISTIC int8: 1/256, -128; TANH int8: 1/128, 0); ONNX Runtime takes the output grid it is given
_FIXED_GRID = {("torch", "sigmoid"), ("torch", "hardsigmoid"), ("torch", "tanh"),
               ("tflite_lut", "sigmoid"), ("tflite_lut", "tanh")}


def layer_form(fn: str, requant_spec) -> str:
    """The table form of activation ``fn`` under a profile's ``requant`` section (activation_form)."""
    return ENGINE_FORMS[requant_spec.activation_form].get(fn, "exact")


def layer_rounding(requant_spec) -> str:
    """The exact tables' rounding: requant.activation_rounding, "requant" = requant.rounding (stochastic:
    half_even, one value per table entry)."""
    r = requant_spec.activation_rounding
    if r == "requant":
        r = requant_spec.rounding
    return "half_even" if r == "stochastic" else r


# the rounding each engine form has of its own (build_table ignores the profile's rounding for them)
_FORM_ROUNDING = {"torch": "half_even", "tflite_lut": "half_away", "onnxruntime": "half_even",
                  "tflite_hardswish": "fixed point"}


def table_rounding(form: str, requant_spec) -> str:
    """The rounding of a table in ``form``: the engine's own, or for "exact" :func:`layer_rounding`."""
    return _FORM_ROUNDING.get(form) or layer_rounding(requant_spec)


def engine_grid(fn: str, bits: int, signed: bool) -> tuple[float, int]:
    """(scale, zero point) of the fixed output grid: sigmoid / hardsigmoid 2^-bits with the zero point at the
    grid's low end (8 bits: 1/256, -128 int8 / 0 uint8), tanh 2^(1-bits) centred (1/128, 0 / 128)."""
    low = -(1 << (bits - 1)) if signed else 0
    if fn == "tanh":
        return 2.0 / (1 << bits), low + (1 << (bits - 1))
    return 1.0 / (1 << bits), low


class _TableSpec(OpSpec):
    """A unary activation run as a lookup table over its input grid, built once per layer at compile time."""

    kind = "activation"
    compared = True
    fn = ""

    def ab(self, attrs) -> tuple:
        return None, None

    def float_forward(self, node, graph, ins):
        a, b = self.ab(node.attrs)
        a, b = HARDSIGMOID_TORCH if a is None else (a, b)
        with np.errstate(over="ignore"):
            return activation_float64(self.fn, ins[0], a, b).astype(f32)

    def fixed_grid(self, lay, grid):
        if (self.form(lay, lay.profile.requant), self.fn) not in _FIXED_GRID:
            return None
        from hwsim.compile import Grid

        s, z = engine_grid(self.fn, grid.bits, grid.signed)
        return Grid(s, z, grid.qmin, grid.qmax, grid.bits, grid.signed)

    def form(self, lay, requant_spec) -> str:
        """The layer's table form (requant.activation_form); an engine whose kernel fixes hardsigmoid's alpha, beta
        (PyTorch: 1/6, 1/2) computes another alpha, beta as the exact form."""
        form = layer_form(self.fn, requant_spec)
        if form == "torch" and self.ab(lay.attrs)[0] is not None:
            return "exact"
        return form

    def compile(self, lay, node, cx):
        lay.form = self.form(lay, cx.prof.requant)
        if cx.weight_only:
            return
        gi, go = cx.grids[lay.inputs[0]], cx.grids[lay.output]
        a, b = self.ab(node.attrs)
        # unclamped entries: the executor clamps and counts the values beyond the grid (clamp_counted)
        lay.table = build_table(self.fn, gi.scale, gi.zero_point, gi.qmin, gi.qmax, go.scale, go.zero_point,
                                WIDE[0], WIDE[1], layer_rounding(cx.prof.requant), form=lay.form, alpha=a, beta=b)
        lay.table_qmin = gi.qmin

    def thread_safe(self, qg, lay) -> bool:
        """The table gather and the clamp (serial kernels, releasing the GIL) run in several of execute's batch
        workers at once; not a hard-swish fused with its MAC layer (activation_form 'inductor')."""
        return getattr(lay, "fused_mac", None) is None

    def clamped_table(self, lay, gy, narrow: bool):
        """(the table clamped to the layer's output range in the output dtype, per entry 1 where clamp_counted
        counts it: above the grid, or below it without a fused activation), made once per layer and setting."""
        from hwsim import kernels

        lo, hi = lay.clamp
        key = (lo, hi, int(gy.qmin), int(gy.qmax), lay.activation is None, narrow)
        got = getattr(lay, "fast_clamped_table", None)
        if got is None or got[0] != key or got[1] is not lay.table:
            t = np.asarray(lay.table, np.int64)
            counted = (t > gy.qmax) | ((t < gy.qmin) if lay.activation is None else False)
            dt = kernels.narrow_dtype(lo, hi) if narrow else np.int64
            got = (key, lay.table, np.clip(t, lo, hi).astype(dt), counted.astype(np.uint8))
            lay.fast_clamped_table = got
        return got[2], got[3]

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        x, gy = env[lay.inputs[0]], qg.grids[lay.output]
        if impl == "fast":
            t, counted = self.clamped_table(lay, gy, narrow)
            out = np.empty(x.shape, t.dtype)  # the lookup, clamp and count in one pass (== clamp_counted below)
            bad, clipped = _gather_clamped(np.ascontiguousarray(x).reshape(-1), t, counted, np.int64(lay.table_qmin),
                                           out.reshape(-1))
            if not bad:
                return out, int(clipped)
            y = apply_table(x, lay.table, lay.table_qmin)  # an input off the table: apply_table's error
        else:  # the form's definition on each distinct input value (no table), scattered back
            gi = qg.grids[lay.inputs[0]]
            a, b = self.ab(lay.attrs)
            u, inv = np.unique(np.asarray(x, np.int64), return_inverse=True)
            if u.size and (u[0] < gi.qmin or u[-1] > gi.qmax):
                raise HwsimError(f"layer '{lay.name}': input outside its grid [{gi.qmin}, {gi.qmax}]")
            v = activation_reference(u, self.fn, gi.scale, gi.zero_point, gy.scale, gy.zero_point, WIDE[0], WIDE[1],
                                     layer_rounding(lay.profile.requant), form=lay.form, alpha=a, beta=b)
            y = v[inv].reshape(x.shape)
        return clamp_counted(y, lay, gy, narrow)

    def golden_fields(self, lay, write_int):
        lo, hi = lay.clamp
        return {"function": self.fn, "form": lay.form, "rounding": table_rounding(lay.form, lay.profile.requant),
                "table_qmin": int(lay.table_qmin), "table": write_int("table", np.clip(lay.table, lo, hi))}

    def explain(self, qg, lay, codes, iso_diff, st, fq_rounding):
        """A table differs from fake-quant (float32 f on the same dequantized input, rounded half even) only
        through its entries' rounding: count the entries that differ."""
        gi, go = qg.grids[lay.inputs[0]], qg.grids[lay.output]
        a, b = self.ab(lay.attrs)
        a, b = HARDSIGMOID_TORCH if a is None else (a, b)
        q = np.arange(gi.qmin, gi.qmax + 1)
        with np.errstate(over="ignore"):
            fv = activation_float64(self.fn, gi.dequantize(q), a, b).astype(f32)
        lo, hi = lay.clamp
        fq = np.clip(np.rint(fv / f32(go.scale)) + go.zero_point, lo, hi)
        n = int(np.count_nonzero(fq != np.clip(lay.table, lo, hi)))
        return (f"{self.fn} table ({lay.form}, {table_rounding(lay.form, lay.profile.requant)}): {n} of {q.size} entries "
                "differ from fake-quant's round(f(d) / s) — the same input, only the table's rounding")

    def onnx_export(self, ex, lay):
        ex.table(lay)  # any form: Gather on the layer's own table (hwsim.onnx_export._Writer.table)


@register
class SigmoidSpec(_TableSpec):
    name = fn = "sigmoid"

    def onnx_export(self, ex, lay):
        if lay.form != "onnxruntime":
            return super().onnx_export(ex, lay)
        n = lay.name
        sx, zx = ex.grid(lay.inputs[0], n)
        sy, zy = ex.grid(lay.output, n)
        ex.node("QLinearSigmoid", [lay.inputs[0], sx, zx, sy, zy], [lay.output], n, ms=True)


@register
class HardsigmoidSpec(_TableSpec):
    name = fn = "hardsigmoid"
    optional_attrs = {"alpha": ("float", HARDSIGMOID_TORCH[0]), "beta": ("float", HARDSIGMOID_TORCH[1])}

    def ab(self, attrs):
        a, b = attrs.get("alpha", HARDSIGMOID_TORCH[0]), attrs.get("beta", HARDSIGMOID_TORCH[1])
        return (None, None) if (float(a), float(b)) == HARDSIGMOID_TORCH else (float(a), float(b))


# ----------------------------------------------------------------------------- torch.compile's fused float sections
# pt2e MobileNetV3 under torch.compile (x86, freezing): the arithmetic read from inductor's generated code and
# checked whole-network (scripts/pt2e_mobilenetv3_probe.py, 0 of 15,970,304 integers differ; docs/semantics.md 11)
def onednn_hardswish(v) -> np.ndarray:
    """oneDNN's eltwise_hardswish post-op (alpha 1/6, beta 1/2) on a conv's float32 output v (src/cpu/x64/
    jit_uni_eltwise_injector.cpp, hardswish_compute_vector_fwd: a multiply then an add, no FMA):
    h = fl32(v * clip(fl32(fl32(v * fl32(1/6)) + 1/2), 0, 1))."""
    v = np.asarray(v, f32)
    with np.errstate(over="ignore"):
        t = ((v * (f32(1) / f32(6))).astype(f32) + f32(0.5)).astype(f32)
        return (v * np.clip(t, f32(0), f32(1))).astype(f32)


def cpp_hardswish(v) -> np.ndarray:
    """Inductor's generated C++ hard-swish (cpp_fused_hardswish_quantize_per_tensor, on qlinear_pointwise's float32
    output): fl32(fl32(v * min(max(fl32(v + 3), 0), 6)) / 6)."""
    v = np.asarray(v, f32)
    with np.errstate(over="ignore"):
        r = np.minimum(np.maximum((v + f32(3)).astype(f32), f32(0)), f32(6))
        return ((v * r).astype(f32) / f32(6)).astype(f32)


def cpp_hardsigmoid(g) -> np.ndarray:
    """Inductor's generated hard-sigmoid (cpp_fused_hardsigmoid_mul_quantize_per_tensor): fl32(min(max(fl32(g + 3),
    0), 6) / 6) (a division: x fl32(1/6) differs, the probe's neighbour)."""
    g = np.asarray(g, f32)
    with np.errstate(over="ignore"):
        return (np.minimum(np.maximum((g + f32(3)).astype(f32), f32(0)), f32(6)) / f32(6)).astype(f32)


def onednn_uint8(h, y_scale, y_zero_point, rounding: str = "half_even") -> np.ndarray:
    """oneDNN's int8 destination on a float32 value: round(fl32(fl32(h * D) + z_y)), D = fl32(1/fl32(1/fl32(1/s_y)))
    (the destination multiplier of hwsim.ops.core.make_onednn_requant_params), zero point before rounding."""
    one = f32(1)
    d = one / (one / (one / f32(y_scale)))
    with np.errstate(over="ignore"):
        t = ((np.asarray(h, f32) * d).astype(f32) + f32(y_zero_point)).astype(f32)
    return fp.round_float(t, rounding, 0, None)


@register
class HardswishSpec(_TableSpec):
    """hardswish: the table (requant.activation_form). Under activation_form = "inductor", a hard-swish whose input
    is a conv2d / linear output read by nothing else is the fused float section torch.compile runs (``lay.fused_mac``
    = (MAC layer, "onednn" | "cpp")): the MAC layer's float output v recomputed from its accumulators
    (hwsim.ops.add.onednn_float), then a conv: oneDNN's hard-swish post-op (:func:`onednn_hardswish`) and its
    uint8 destination (:func:`onednn_uint8`), or, when a squeeze-excite mul reads the hard-swish in float
    (hwsim.ops.mul.float_read; inductor then asks oneDNN for a float output), the C++ quantize
    (hwsim.ops.add.cpp_quantize); a linear: the C++ hard-swish (:func:`cpp_hardswish`) and the C++ quantize."""

    name = fn = "hardswish"

    def compile(self, lay, node, cx):
        super().compile(lay, node, cx)
        lay.fused_mac = None
        if cx.prof.requant.activation_form == "inductor" and not cx.weight_only:
            from hwsim.ops.mul import float_read, sole_mac

            mac = sole_mac(node.inputs[0], cx)
            if mac is not None:
                cpp = mac.op == "linear" or float_read(lay.output, cx)
                lay.fused_mac = (mac.name, "cpp" if cpp else "onednn")

    def fused_value(self, qg, lay, env, impl) -> np.ndarray:
        """The float32 hard-swish torch.compile computes for this layer (``lay.fused_mac`` set)."""
        from hwsim.ops.add import mac_accumulators, onednn_float

        name, quant = lay.fused_mac
        mac = qg.layer(name)
        v = onednn_float(mac_accumulators(qg, name, env, impl), mac.requant_params,
                         f"layer {lay.name!r}: activation_form = 'inductor'")
        return cpp_hardswish(v) if mac.op == "linear" else onednn_hardswish(v)

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        if getattr(lay, "fused_mac", None) is None:
            return super().execute(qg, lay, env, st, impl, offset, narrow)
        from hwsim.ops.add import cpp_quantize

        gy, r = qg.grids[lay.output], layer_rounding(lay.profile.requant)
        h = self.fused_value(qg, lay, env, impl)
        y = cpp_quantize(h, gy.scale, gy.zero_point, r) if lay.fused_mac[1] == "cpp" else onednn_uint8(
            h, gy.scale, gy.zero_point, r)
        return clamp_counted(y, lay, gy, narrow)

    def onnx_export(self, ex, lay):
        if getattr(lay, "fused_mac", None) is not None:
            raise HwsimError(f"layer '{lay.name}': hardswish fused with MAC layer {lay.fused_mac[0]!r} "
                             "(activation_form 'inductor') has no ONNX form: allowed activation_form 'exact', 'torch', "
                             "'tflite' or 'onnxruntime'")
        return super().onnx_export(ex, lay)

    def golden_fields(self, lay, write_int):
        out = super().golden_fields(lay, write_int)
        if getattr(lay, "fused_mac", None) is not None:
            out["inductor_fused"] = {"mac": lay.fused_mac[0], "quantize": lay.fused_mac[1]}
        return out


@register
class SiluSpec(_TableSpec):
    name = fn = "silu"


@register
class TanhSpec(_TableSpec):
    name = fn = "tanh"
