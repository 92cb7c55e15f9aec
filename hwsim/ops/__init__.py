"""Public functional API: single-layer integer ops with explicit quantization parameters.

Every op has ``impl="fast"`` (default: numba kernels / exact BLAS / vectorized numpy) and
``impl="reference"`` (``hwsim.reference``, the spec); both give identical integers. Integer
arrays are int64 at the API. The arithmetic contract is in ``docs/semantics.md``.

- :class:`Accumulator` — the MAC-array accumulator model (A bits, chunk rows R, partial-sum P bits).
- :func:`conv2d`, :func:`linear` -> (int64 accumulators, :class:`AccStats`).
- :class:`Requant`, :func:`make_requant_params`, :func:`requantize` -> (y, clipped).
- :func:`max_pool2d`, :func:`avg_pool2d`, :func:`global_avg_pool`, :func:`add`, :func:`concat`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwsim import fixedpoint as fp
from hwsim import reference as ref
from hwsim.errors import HwsimError
from hwsim.fixedpoint import ROUNDING_MODES, TIE_RULES

IMPLS = ("fast", "reference")
OVERFLOW_POLICIES = ("wrap", "saturate")


def _check_impl(impl: str) -> str:
    return fp.check_mode(impl, IMPLS, "impl")


# ----------------------------------------------------------------------------- accumulator model
@dataclass(frozen=True)
class Accumulator:
    """MAC-array accumulator: A-bit accumulator, chunks of ``rows`` k summed exactly, optional P-bit partial register.

    ``None`` means unbounded (exact). Overflow policies: ``wrap`` (two's complement) or ``saturate``.
    """

    bits: int | None = 32
    overflow: str = "saturate"
    rows: int | None = None
    partial_bits: int | None = None
    partial_overflow: str = "saturate"

    def __post_init__(self):
        for name in ("bits", "partial_bits"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 2 <= v <= 64):
                raise HwsimError(f"accumulator.{name} = {v!r}: allowed an integer 2..64 or unbounded (None)")
        if self.rows is not None and (not isinstance(self.rows, (int, np.integer)) or isinstance(self.rows, bool)
                                      or self.rows < 1):
            raise HwsimError(f"accumulator.rows = {self.rows!r}: allowed an integer >= 1 or unbounded (None)")
        for name in ("overflow", "partial_overflow"):
            fp.check_mode(getattr(self, name), OVERFLOW_POLICIES, f"accumulator.{name}")

    @property
    def exact(self) -> bool:
        """True when nothing can ever overflow (A and P unbounded)."""
        return self.bits is None and self.partial_bits is None


@dataclass
class AccStats:
    """Events of one layer call, totals over all outputs: partial-sum (P) and accumulator (A) overflows."""

    partial_events: int = 0
    acc_events: int = 0

    def __add__(self, other: "AccStats") -> "AccStats":
        return AccStats(self.partial_events + other.partial_events, self.acc_events + other.acc_events)


# ----------------------------------------------------------------------------- input checks
def _int_array(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == np.int64:
        return arr  # no copy: the ops never write into their inputs
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise HwsimError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _pair(v, name: str) -> tuple[int, int]:
    t = tuple(int(a) for a in v) if isinstance(v, (tuple, list, np.ndarray)) else (int(v), int(v))
    if len(t) != 2 or min(t) < 1:
        raise HwsimError(f"{name} = {v!r}: allowed a positive int or a pair of positive ints")
    return t


def _padding(p) -> tuple[int, int, int, int]:
    if isinstance(p, (tuple, list, np.ndarray)):
        t = tuple(int(a) for a in p)
        if len(t) == 2:
            t = (t[0], t[0], t[1], t[1])
    else:
        t = (int(p),) * 4
    if len(t) != 4 or min(t) < 0:
        raise HwsimError(f"padding = {p!r}: allowed an int, (ph, pw) or (top, bottom, left, right), all >= 0")
    return t


def _w_zero_point(zw, cout: int) -> np.ndarray:
    z = np.asarray(zw, dtype=np.int64).reshape(-1)
    if z.size == 1:
        return np.full(cout, int(z[0]), dtype=np.int64)
    if z.size != cout:
        raise HwsimError(f"w_zero_point has {z.size} entries: allowed a scalar or one per output channel ({cout})")
    return z


def _bias(bias_q, cout: int) -> np.ndarray | None:
    if bias_q is None:
        return None
    b = _int_array(bias_q, "bias_q").reshape(-1)
    if b.size != cout:
        raise HwsimError(f"bias_q has {b.size} entries: allowed one per output channel ({cout})")
    return b


# ----------------------------------------------------------------------------- conv / linear
def linear(x_q, w_q, bias_q=None, *, x_zero_point=0, w_zero_point=0, acc: Accumulator = Accumulator(),
           impl: str = "fast") -> tuple[np.ndarray, AccStats]:
    """acc[n, m] = bias[m] + sum_k (w[m,k] - zw[m]) * (x[n,k] - zx) under the accumulator model; int64 [N, M]."""
    _check_impl(impl)
    x = _int_array(x_q, "x_q")
    w = _int_array(w_q, "w_q")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise HwsimError(f"linear: x_q {x.shape} and w_q {w.shape}: allowed x [N, K] and w [M, K]")
    zw = _w_zero_point(w_zero_point, w.shape[0])
    b = _bias(bias_q, w.shape[0])
    if impl == "reference":
        out, pe, ae = ref.linear(x, w, b, int(x_zero_point), zw, acc)
        return out, AccStats(pe, ae)
    from hwsim import kernels
    out, pe, ae = kernels.linear_accumulate(x, w, b, int(x_zero_point), zw, acc)
    return out, AccStats(pe, ae)


def conv_output_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int = 1) -> int:
    """Output length of a convolution/pool along one axis (floor mode)."""
    return (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


def conv2d(x_q, w_q, bias_q=None, *, x_zero_point=0, w_zero_point=0, stride=(1, 1), padding=(0, 0, 0, 0),
           dilation=(1, 1), groups: int = 1, acc: Accumulator = Accumulator(),
           impl: str = "fast") -> tuple[np.ndarray, AccStats]:
    """2-D convolution (NCHW, weights [Cout, Cin/groups, kh, kw]) under the accumulator model; int64 [N, Cout, Ho, Wo].

    k runs over (input channel of the group, kernel row, kernel column); padding pixels hold x_zero_point.
    """
    _check_impl(impl)
    x = _int_array(x_q, "x_q")
    w = _int_array(w_q, "w_q")
    stride, dilation, pad = _pair(stride, "stride"), _pair(dilation, "dilation"), _padding(padding)
    if x.ndim != 4 or w.ndim != 4:
        raise HwsimError(f"conv2d: x_q {x.shape}, w_q {w.shape}: allowed x [N, C, H, W] and w [Cout, Cin/groups, kh, kw]")
    groups = int(groups)
    if groups < 1 or x.shape[1] % groups or w.shape[0] % groups or w.shape[1] * groups != x.shape[1]:
        raise HwsimError(f"conv2d: groups = {groups} does not fit input channels {x.shape[1]} and weight {w.shape}")
    Ho = conv_output_size(x.shape[2], w.shape[2], stride[0], pad[0], pad[1], dilation[0])
    Wo = conv_output_size(x.shape[3], w.shape[3], stride[1], pad[2], pad[3], dilation[1])
    if Ho < 1 or Wo < 1:
        raise HwsimError(f"conv2d: kernel {w.shape[2:]} larger than the padded input {x.shape[2:]}")
    zw = _w_zero_point(w_zero_point, w.shape[0])
    b = _bias(bias_q, w.shape[0])
    if impl == "reference":
        out, pe, ae = ref.conv2d(x, w, b, int(x_zero_point), zw, stride, pad, dilation, groups, acc)
        return out, AccStats(pe, ae)
    from hwsim import kernels
    out, pe, ae = kernels.conv2d_accumulate(x, w, b, int(x_zero_point), zw, stride, pad, dilation, groups, acc)
    return out, AccStats(pe, ae)


# ----------------------------------------------------------------------------- requantization
REQUANT_MODES = ("float32", "fixed", "pow2")
ADD_FORMS = ("dequantize", "ratio_fma")


@dataclass(frozen=True)
class Requant:
    """How an int accumulator becomes an output integer: y = clamp(round(acc * M) + z_y, qmin, qmax).

    ``fixed_ties`` = (tie of SaturatingRoundingDoublingHighMul, tie of RoundingDivideByPOT); gemmlowp
    itself uses ("half_up", "half_away"). ``single`` rounding and the 15-bit multiplier round once,
    with ``fixed_ties[1]``. ``multiplier_order`` = "sequential" is what PyTorch's fbgemm engine does
    (and ONNX Runtime's QLinearConv / QLinearMatMul). ``add_form`` (float32 :func:`add` only):
    "dequantize" = PyTorch's x86 ``quantized::add``, "ratio_fma" = ONNX Runtime's QLinearAdd (MLAS
    AVX2 kernel; ``zero_point`` does not apply to it: z_y is inside the rounded sum).
    ``fixed_product`` (fixed mode, :func:`make_requant_params`): "float64" forms M = s_x*s_w/s_y in
    float64 (TFLite CONV_2D, DEPTHWISE_CONV_2D, per-channel FULLY_CONNECTED); "float32" rounds s_x*s_w
    to float32 first, M = fl32(s_x*s_w) / s_y in float64 (TFLite per-tensor FULLY_CONNECTED).
    """

    mode: str = "float32"
    rounding: str = "half_even"
    fixed_rounding: str = "double"
    fixed_ties: tuple = fp.GEMMLOWP_TIES
    multiplier_bits: int = 31
    zero_point: str = "after"
    multiplier_order: str = "sequential"
    seed: int = 0
    add_form: str = "dequantize"
    fixed_product: str = "float64"

    def __post_init__(self):
        fp.check_mode(self.mode, REQUANT_MODES, "requant.mode")
        fp.check_mode(self.rounding, ROUNDING_MODES, "requant.rounding")
        fp.check_mode(self.fixed_rounding, ("double", "single"), "requant.fixed_rounding")
        ties = tuple(self.fixed_ties)
        if len(ties) != 2 or any(t not in TIE_RULES for t in ties):
            raise HwsimError(f"requant.fixed_ties = {self.fixed_ties!r}: allowed two tie rules, each one of "
                             + ", ".join(TIE_RULES))
        object.__setattr__(self, "fixed_ties", ties)
        if self.multiplier_bits not in (31, 15):
            raise HwsimError(f"requant.multiplier_bits = {self.multiplier_bits!r}: allowed 31 or 15")
        if self.mode == "fixed" and self.multiplier_bits == 15 and self.fixed_rounding != "single":
            raise HwsimError("requant.multiplier_bits = 15 needs requant.fixed_rounding = 'single' "
                             "(TOSA RESCALE scale32=false rounds once)")
        fp.check_mode(self.zero_point, ("after", "before"), "requant.zero_point")
        fp.check_mode(self.multiplier_order, ("sequential", "fused"), "requant.multiplier_order")
        fp.check_mode(self.add_form, ADD_FORMS, "requant.add_form")
        fp.check_mode(self.fixed_product, ("float64", "float32"), "requant.fixed_product")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise HwsimError(f"requant.seed = {self.seed!r}: allowed an integer >= 0")


@dataclass(frozen=True)
class RequantParams:
    """Per-output-channel requantization constants (arrays of length ``channels``; 1 = per tensor).

    float32: ``multiplier`` (float32 M) and optional ``bias_term`` (float32, fbgemm float bias);
    fixed: ``q`` (Q31 or Q15 multiplier) and ``shift`` (real = q * 2^(shift - multiplier_bits));
    pow2: ``shift`` = n with M = 2^-n (n < 0: exact left shift). ``real`` = M in float64 (reports).
    """

    mode: str
    real: np.ndarray
    multiplier: np.ndarray | None = None
    q: np.ndarray | None = None
    shift: np.ndarray | None = None
    bias_term: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return int(self.real.size)


def _scales(s_x, s_w, s_y):
    s_w = np.asarray(s_w, dtype=np.float64).reshape(-1)
    for name, v in (("s_x", np.asarray(s_x, dtype=np.float64)), ("s_w", s_w), ("s_y", np.asarray(s_y, np.float64))):
        if v.size == 0 or not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise HwsimError(f"make_requant_params: {name} = {v!r}: allowed positive finite scales")
    return float(s_x), s_w, float(s_y)


def make_requant_params(s_x: float, s_w, s_y: float, cfg: Requant, bias=None) -> RequantParams:
    """Requant constants for M[c] = s_x * s_w[c] / s_y (s_w scalar or per output channel).

    Scales are taken as float32 numbers (as every engine stores them). float32 mode: M =
    fl32(fl32(s_x*s_w)/s_y) ("sequential", PyTorch/fbgemm) or fl32(s_x*s_w/s_y in float64) ("fused").
    fixed: quantize_multiplier(M in float64) (31 bits; TFLITE_SINGLE_ROUNDING saturation for
    "single") or quantize_multiplier_15; ``cfg.fixed_product = "float32"``: M = fl32(s_x*s_w) / s_y
    (TFLite per-tensor FULLY_CONNECTED). pow2: every scale must be an exact power of two.
    ``bias`` (float, per channel; float32 mode only) selects fbgemm's float-bias path: the
    accumulator then gets fl32(bias / fl32(s_x*s_w)) added in float32 before the multiply.
    """
    s_x, s_w, s_y = _scales(s_x, s_w, s_y)
    f32 = np.float32
    fx, fw, fy = f32(s_x), s_w.astype(f32), f32(s_y)
    real = fx.astype(np.float64) * fw.astype(np.float64) / np.float64(fy)
    if bias is not None and cfg.mode != "float32":
        raise HwsimError("make_requant_params: a float bias is only supported with requant.mode = 'float32'")
    if cfg.mode == "float32":
        if cfg.multiplier_order == "sequential":
            m = (fx * fw) / fy  # float32 * float32, then float32 / float32 (fbgemm GetQuantizationParams)
        else:
            m = real.astype(f32)
        bt = None
        if bias is not None:
            b = np.asarray(bias, dtype=np.float64).reshape(-1).astype(f32)
            if b.size != 1 and m.size != 1 and b.size != m.size:
                raise HwsimError(f"make_requant_params: bias has {b.size} entries but there are {m.size} weight scales")
            bt = b / (fx * fw)  # fbgemm: bias[j] / act_times_w_scale[j], in float32
            c = max(bt.size, m.size)
            m, bt, real = (np.broadcast_to(v, (c,)).copy() for v in (m, bt, real))
        return RequantParams("float32", real, multiplier=m.astype(f32), bias_term=None if bt is None else bt.astype(f32))
    if cfg.mode == "fixed":
        if cfg.fixed_product == "float32":  # TFLite GetQuantizedConvolutionMultipler: float(s_x * s_w) / s_y
            real = (fx * fw).astype(f32).astype(np.float64) / np.float64(fy)
        if cfg.multiplier_bits == 15:
            qs = [fp.quantize_multiplier_15(r) for r in real]
        else:
            qs = [fp.quantize_multiplier(r, single_rounding=cfg.fixed_rounding == "single") for r in real]
        return RequantParams("fixed", real, q=np.array([a for a, _ in qs], np.int64),
                             shift=np.array([b for _, b in qs], np.int64))
    ex = fp.pow2_exponent(s_x, "s_x")
    ey = fp.pow2_exponent(s_y, "s_y")
    ew = np.array([fp.pow2_exponent(v, "s_w") for v in s_w], dtype=np.int64)
    return RequantParams("pow2", real, shift=(ey - ex - ew).astype(np.int64))


def _per_channel(v: np.ndarray, ndim: int, channel_axis: int) -> np.ndarray:
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[channel_axis] = v.size
    return v.reshape(shape)


def _shift_left_exact(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """x * 2^n for n >= 0, clipped to +-2^62 (callers clamp to a grid afterwards)."""
    lim = np.int64(1) << (62 - np.minimum(n, 62))
    return np.clip(x, -lim, lim) << np.minimum(n, 62)


def _fixed_q31_fast(acc, params: RequantParams, cfg: Requant, channel_axis: int):
    """Q31 fixed-point multiply by the numba kernel (kernels.requant_fixed), or None outside its domain.

    Domain: valid Q31 multipliers, double: right shift <= 31 and left shift <= 31; single: total
    right shift 31 - shift in 0..62 and |acc| <= 2^31. fixedpoint.multiply_by_quantized_multiplier defines it.
    """
    if acc.ndim == 0 or acc.size == 0:
        return None
    from hwsim import kernels

    q = np.ascontiguousarray(params.q, dtype=np.int64).reshape(-1)
    sh = np.ascontiguousarray(params.shift, dtype=np.int64).reshape(-1)
    if q.min() < 0 or q.max() > fp.INT32_MAX:
        return None
    single = cfg.fixed_rounding == "single"
    if single:
        if sh.max() > 31 or sh.min() < -31 or max(-int(acc.min()), int(acc.max())) > (1 << 31):
            return None
    elif sh.max() > 31 or sh.min() < -31:
        return None
    C = acc.shape[channel_axis] if params.channels > 1 else 1
    if params.channels > 1:
        outer = int(np.prod(acc.shape[:channel_axis], dtype=np.int64))
        a3 = np.ascontiguousarray(acc).reshape(outer, C, -1)
    else:
        a3 = np.ascontiguousarray(acc).reshape(1, 1, -1)
        q, sh = q[:1], sh[:1]
    out = np.empty(a3.shape, np.int64)
    kernels.requant_fixed(a3, q, sh, single, kernels.TIE_CODE[cfg.fixed_ties[0]], kernels.TIE_CODE[cfg.fixed_ties[1]],
                          out)
    return out.reshape(acc.shape)


def _float32_requant_kernel(acc, params: RequantParams, cfg: Requant, z_y: int, channel_axis: int):
    """float32 requant by the numba kernel (kernels.requant_float32): same arithmetic as the numpy path."""
    from hwsim import kernels

    if params.channels > 1:
        C = acc.shape[channel_axis]
        a3 = np.ascontiguousarray(acc).reshape(int(np.prod(acc.shape[:channel_axis], dtype=np.int64)), C, -1)
    else:
        a3 = np.ascontiguousarray(acc).reshape(1, 1, -1)
    C = a3.shape[1]
    mult = np.broadcast_to(np.asarray(params.multiplier, np.float32).reshape(-1), (C,)).copy()
    has_bias = params.bias_term is not None
    bias = (np.broadcast_to(np.asarray(params.bias_term, np.float32).reshape(-1), (C,)).copy() if has_bias
            else np.zeros(C, np.float32))
    out = np.empty(a3.shape, np.int64)
    kernels.requant_float32(a3, mult, bias, has_bias, cfg.zero_point == "before", int(z_y),
                            kernels.ROUND_CODE[cfg.rounding], out)
    return out.reshape(acc.shape)


def _requantize_fast(acc, params: RequantParams, cfg: Requant, z_y: int, channel_axis: int, index):
    nd = acc.ndim
    if params.channels > 1 and (nd == 0 or acc.shape[channel_axis] != params.channels):
        raise HwsimError(f"requantize: {params.channels} per-channel multipliers but accumulator shape {acc.shape} "
                         f"(channel axis {channel_axis})")
    if cfg.mode == "float32" and cfg.rounding != "stochastic" and acc.ndim and acc.size:
        return _float32_requant_kernel(acc, params, cfg, z_y, channel_axis)
    if cfg.mode == "float32":
        fa = acc.astype(np.float32)
        with np.errstate(over="ignore"):
            if params.bias_term is not None:
                fa = fa + _per_channel(params.bias_term, nd, channel_axis)
            v = fa * _per_channel(params.multiplier, nd, channel_axis)
            if cfg.zero_point == "before":
                return fp.round_float(v + np.float32(z_y), cfg.rounding, cfg.seed, index)
        return fp.round_float(v, cfg.rounding, cfg.seed, index) + z_y
    if cfg.mode == "fixed":
        q = _per_channel(params.q, nd, channel_axis)
        s = _per_channel(params.shift, nd, channel_axis)
        if cfg.multiplier_bits == 15:
            y = fp.multiply_by_quantized_multiplier_15(acc, q, s, cfg.fixed_ties[1])
        else:
            y = _fixed_q31_fast(acc, params, cfg, channel_axis)
            if y is None:  # outside the kernel's domain: the exact numpy/Python-int path
                y = fp.multiply_by_quantized_multiplier(acc, q, s, cfg.fixed_rounding, cfg.fixed_ties)
        return y + z_y
    if cfg.rounding != "stochastic" and nd and acc.size and int(np.max(params.shift)) <= fp.MAX_SHIFT:
        from hwsim import kernels

        C = acc.shape[channel_axis] if params.channels > 1 else 1
        a3 = np.ascontiguousarray(acc).reshape(int(np.prod(acc.shape[:channel_axis], dtype=np.int64)) if C > 1
                                               else 1, C, -1)
        sh = np.broadcast_to(np.asarray(params.shift, np.int64).reshape(-1), (C,)).copy()
        out = np.empty(a3.shape, np.int64)
        kernels.requant_shift(a3, sh, kernels.ROUND_CODE[cfg.rounding], out)
        return out.reshape(acc.shape) + z_y
    n = np.broadcast_to(_per_channel(params.shift, nd, channel_axis), acc.shape)
    y = fp.shift_right_round(acc, np.maximum(n, 0), cfg.rounding, cfg.seed, index)
    if (n < 0).any():
        y = np.where(n < 0, _shift_left_exact(acc, np.maximum(-n, 0)), y)
    return y + z_y


def requantize(acc, params: RequantParams, cfg: Requant, z_y: int, qmin: int, qmax: int, channel_axis: int = 1,
               impl: str = "fast", index=None) -> tuple[np.ndarray, int]:
    """y = clamp(round(acc * M[c]) + z_y, qmin, qmax) in ``cfg.mode``; returns (y int64, number of clamped outputs).

    ``index`` (optional, same shape as acc): flat output indices for stochastic rounding (default C order).
    """
    _check_impl(impl)
    if params.mode != cfg.mode:
        raise HwsimError(f"requantize: params were made for mode {params.mode!r}, cfg says {cfg.mode!r}")
    acc = _int_array(acc, "acc")
    z_y, qmin, qmax = int(z_y), int(qmin), int(qmax)
    if qmin > qmax:
        raise HwsimError(f"requantize: qmin {qmin} > qmax {qmax}")
    if impl == "reference":
        return ref.requantize(acc, params, cfg, z_y, qmin, qmax, channel_axis, index)
    y = _requantize_fast(acc, params, cfg, z_y, channel_axis % max(acc.ndim, 1), index)
    clipped = int(np.count_nonzero((y < qmin) | (y > qmax)))
    return np.clip(y, qmin, qmax), clipped


# ----------------------------------------------------------------------------- pools
def _check_nchw(x, name="x_q") -> np.ndarray:
    x = _int_array(x, name)
    if x.ndim != 4:
        raise HwsimError(f"{name}: shape {x.shape}: allowed [N, C, H, W]")
    return x


def _pool_geometry(x, kernel, stride, padding):
    kernel, stride, pad = _pair(kernel, "kernel"), _pair(stride, "stride"), _padding(padding)
    Ho = conv_output_size(x.shape[2], kernel[0], stride[0], pad[0], pad[1])
    Wo = conv_output_size(x.shape[3], kernel[1], stride[1], pad[2], pad[3])
    if Ho < 1 or Wo < 1:
        raise HwsimError(f"pool: kernel {kernel} larger than the padded input {x.shape[2:]}")
    return kernel, stride, pad, Ho, Wo


def _windows(x, kernel, stride, pad, fill):
    """View [N, C, Ho, Wo, kh, kw] of the padded input (padding holds ``fill``)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(xp, kernel, axis=(2, 3))
    return win[:, :, ::stride[0], ::stride[1]]


def max_pool2d(x_q, kernel, stride, padding=(0, 0, 0, 0), pad_value: int = 0, impl: str = "fast") -> np.ndarray:
    """Max over each window; padding pixels hold ``pad_value`` (use the grid's qmin)."""
    _check_impl(impl)
    x = _check_nchw(x_q)
    kernel, stride, pad, Ho, Wo = _pool_geometry(x, kernel, stride, padding)
    if impl == "reference":
        return ref.max_pool2d(x, kernel, stride, pad, int(pad_value))
    from hwsim import kernels

    out = np.empty((x.shape[0], x.shape[1], Ho, Wo), np.int64)
    kernels.max_pool(x, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[2], int(pad_value), out)
    return out


POOL_FORMS = ("exact", "float32_multiplier", "float32_dequantize")


def onnxruntime_pool_form(op: str, kernel=None, padding=(0, 0, 0, 0), input_hw=None) -> str:
    """The pool ``form`` that is ONNX Runtime's arithmetic (MLAS, x86-64) for an average pool.

    QLinearGlobalAveragePool: "float32_multiplier". QLinearAveragePool: "float32_dequantize", except a
    window covering the whole unpadded plane, which ORT hands to the global kernel ("float32_multiplier").
    """
    if op == "global_avgpool":
        return "float32_multiplier"
    whole = _pair(kernel, "kernel") == tuple(int(v) for v in input_hw) and not any(_padding(padding))
    return "float32_multiplier" if whole else "float32_dequantize"


def pool_multiplier(scale: float, count: int) -> np.float32:
    """M = fl32(s / fl32(s * fl32(count))), s = fl32(scale): the "float32_multiplier" pool form's multiplier
    (MLAS QLinearGlobalAveragePool: ScaleInput / (ScaleOutput * ImageSize), equal input and output grids)."""
    s = np.float32(scale)
    return np.float32(s / np.float32(s * np.float32(count)))


def _pool_scale(form: str, scale) -> np.float32 | None:
    fp.check_mode(form, POOL_FORMS, "pool form")
    if form == "exact":
        return None
    s = np.float32(scale) if isinstance(scale, (int, float, np.number)) else np.float32(np.nan)
    if not (np.isfinite(s) and s > 0):
        raise HwsimError(f"pool form {form!r} needs the grid's scale: scale = {scale!r}: allowed a positive "
                         "finite number")
    return s


def _pool_index(shape, index_offset: int, rounding: str):
    """Stochastic draw indices: index_offset + flat C-order output index (None: the default, offset 0)."""
    if rounding != "stochastic" or not index_offset:
        return None
    return int(index_offset) + fp._flat_index(shape)


def _pool_float_forms(s, d_windows, count: int, form: str, s32, z: int, rounding: str, seed: int, index=None):
    """The float32 pool forms from the integer window sums ``s`` or the dequantized windows (lazy)."""
    f32 = np.float32
    if form == "float32_multiplier":
        return z + fp.round_float(s.astype(f32) * pool_multiplier(s32, count), rounding, seed, index)
    win = d_windows()  # [..., kh, kw] float32 dequantized values, padding 0.0
    acc = np.zeros(win.shape[:-2], f32)
    for i in range(win.shape[-2]):  # window order, one float32 rounding per addition
        for j in range(win.shape[-1]):
            acc += win[..., i, j]
    return fp.round_float((acc / f32(count)) / s32 + f32(z), rounding, seed, index)


def avg_pool2d(x_q, kernel, stride, padding=(0, 0, 0, 0), zero_point: int = 0, rounding: str = "half_even",
               seed: int = 0, impl: str = "fast", *, form: str = "exact", scale: float | None = None,
               index_offset: int = 0) -> np.ndarray:
    """out = z + divide_round(sum(x - z), kh*kw); count_include_pad (padding holds the zero point).

    Stochastic rounding draws with index ``index_offset`` + flat C-order output index (the executor
    passes the batch's first image times the per-image output size: results independent of batching).

    ``form`` (docs/semantics.md section 6; ``scale`` = the grid's scale, needed by both float forms):
    "float32_multiplier": out = z + round(fl32(fl32(sum(x - z)) * M)), M = :func:`pool_multiplier`;
    "float32_dequantize" (ONNX Runtime QLinearAveragePool): d = fl32(s (x - z)), summed in float32 in
    window order (row by row), out = round(fl32(fl32(fl32(sum / fl32(kh*kw)) / s) + z)).
    """
    _check_impl(impl)
    fp.check_mode(rounding)
    s32 = _pool_scale(form, scale)
    x = _check_nchw(x_q)
    kernel, stride, pad, Ho, Wo = _pool_geometry(x, kernel, stride, padding)
    z = int(zero_point)
    if impl == "reference":
        if form != "exact":
            return ref.avg_pool2d_float(x, kernel, stride, pad, z, rounding, seed, form, s32, index_offset)
        return ref.avg_pool2d(x, kernel, stride, pad, z, rounding, seed, index_offset)
    index = _pool_index((x.shape[0], x.shape[1], Ho, Wo), index_offset, rounding)
    if form == "float32_dequantize":
        s = None
    else:
        s = (_windows(x - z, kernel, stride, pad, 0)[:, :, :Ho, :Wo]).sum(axis=(4, 5))
    if form == "exact":
        return z + fp.divide_round(s, kernel[0] * kernel[1], rounding, seed, index)
    return _pool_float_forms(
        s, lambda: _windows(s32 * (x - z).astype(np.float32), kernel, stride, pad, 0)[:, :, :Ho, :Wo],
        kernel[0] * kernel[1], form, s32, z, rounding, seed, index)


def global_avg_pool(x_q, zero_point: int = 0, rounding: str = "half_even", seed: int = 0,
                    impl: str = "fast", *, form: str = "exact", scale: float | None = None,
                    index_offset: int = 0) -> np.ndarray:
    """out[n, c] = z + divide_round(sum_hw(x - z), H*W); int64 [N, C] (stochastic: as :func:`avg_pool2d`).

    ``form``: as :func:`avg_pool2d` with the window = the whole H x W plane; "float32_multiplier" is
    ONNX Runtime's QLinearGlobalAveragePool (MLAS, x86-64).
    """
    _check_impl(impl)
    fp.check_mode(rounding)
    s32 = _pool_scale(form, scale)
    x = _check_nchw(x_q)
    z = int(zero_point)
    if impl == "reference":
        if form != "exact":
            kernel = (x.shape[2], x.shape[3])
            return ref.avg_pool2d_float(x, kernel, kernel, (0, 0, 0, 0), z, rounding, seed, form,
                                        s32, index_offset).reshape(x.shape[:2])
        return ref.global_avg_pool(x, z, rounding, seed, index_offset)
    index = _pool_index(x.shape[:2], index_offset, rounding)
    s = (x - z).sum(axis=(2, 3))
    if form == "exact":
        return z + fp.divide_round(s, x.shape[2] * x.shape[3], rounding, seed, index)
    return _pool_float_forms(s, lambda: s32 * (x - z).astype(np.float32), x.shape[2] * x.shape[3], form, s32, z,
                             rounding, seed, index)


# ----------------------------------------------------------------------------- add
@dataclass(frozen=True)
class AddParams:
    """Constants of one quantized add (see :func:`add_params`)."""

    a_zero_point: int
    b_zero_point: int
    y_zero_point: int
    a_scale: float = 0.0  # float32 mode: float32 scales, premultiplied -s*z, 1/s_y
    b_scale: float = 0.0
    a_premul: float = 0.0
    b_premul: float = 0.0
    inv_y_scale: float = 0.0
    a_ratio: float = 0.0  # float32 mode, add_form "ratio_fma": fl32(s_a / s_y), fl32(s_b / s_y)
    b_ratio: float = 0.0
    left_shift: int = 20  # fixed mode (TFLite int8 ADD)
    a_mult: tuple = (0, 0)
    b_mult: tuple = (0, 0)
    y_mult: tuple = (0, 0)
    a_exp: int = 0  # pow2 mode
    b_exp: int = 0
    y_exp: int = 0


def add_params(a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point, cfg: Requant) -> AddParams:
    """Constants for add in ``cfg.mode``: float32 (PyTorch x86 quantized add), fixed (TFLite int8 ADD), pow2."""
    za, zb, zy = int(a_zero_point), int(b_zero_point), int(y_zero_point)
    _scales(a_scale, b_scale, y_scale)
    f32 = np.float32
    sa, sb, sy = f32(a_scale), f32(b_scale), f32(y_scale)
    if cfg.mode == "float32":
        return AddParams(za, zb, zy, a_scale=sa, b_scale=sb, a_premul=f32(sa * f32(-za)), b_premul=f32(sb * f32(-zb)),
                         inv_y_scale=f32(f32(1.0) / sy), a_ratio=f32(sa / sy), b_ratio=f32(sb / sy))
    if cfg.mode == "fixed":
        # TFLite add.cc (int8): twice_max_input_scale = 2 * max(s_a, s_b); multipliers in double
        twice_max = 2.0 * float(max(sa, sb))
        ra, rb = float(sa) / twice_max, float(sb) / twice_max
        ry = twice_max / ((1 << 20) * float(sy))
        if cfg.multiplier_bits == 15:
            qa, qb, qy = (fp.quantize_multiplier_15(r) for r in (ra, rb, ry))
        else:
            single = cfg.fixed_rounding == "single"
            qa, qb, qy = (fp.quantize_multiplier(r, single_rounding=single) for r in (ra, rb, ry))
        return AddParams(za, zb, zy, left_shift=20, a_mult=qa, b_mult=qb, y_mult=qy)
    return AddParams(za, zb, zy, a_exp=fp.pow2_exponent(a_scale, "a_scale"), b_exp=fp.pow2_exponent(b_scale, "b_scale"),
                     y_exp=fp.pow2_exponent(y_scale, "y_scale"))


def fma_f32(x, r, z) -> np.ndarray:
    """fl32(x * r + z) rounded once (half even), as a float32 FMA instruction computes it.

    x: integers with |x| < 2^29 (then x * r is exact in float64); r, z: float32 values (broadcast).
    The float64 sum s = fl64(x*r + z) carries its exact error e (TwoSum); fl32(s) differs from the
    correctly rounded result only when s is exactly halfway between two float32 numbers and e != 0.
    """
    p = np.asarray(x, dtype=np.int64).astype(np.float64) * np.asarray(r, dtype=np.float32).astype(np.float64)
    z = np.asarray(z, dtype=np.float32).astype(np.float64)
    s = p + z
    t = s - p
    e = (p - (s - t)) + (z - t)
    y = np.asarray(s.astype(np.float32))
    yd = y.astype(np.float64)
    other = np.nextafter(y, np.where(s > yd, np.float32(np.inf), np.float32(-np.inf)))
    fix = (yd != s) & ((yd + other.astype(np.float64)) * 0.5 == s) & (e != 0)
    return np.where(fix, np.where(e > 0, np.maximum(y, other), np.minimum(y, other)), y).astype(np.float32)


def ratio_fma_swaps(a_shape, b_shape) -> bool:
    """True when ONNX Runtime's broadcast loop hands input a to QLinearAdd as the per-span scalar.

    ORT then calls the MLAS kernel with the operands exchanged. Input a is that scalar when its
    extent along the innermost common axis (right-aligned) where either input exceeds 1 is 1 (the
    outermost common axis if there is none); when one input is 0-d: when a is 0-d or a's last axis is 1.
    """
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    m = min(len(a_shape), len(b_shape))
    if m == 0:
        return len(a_shape) == 0 or a_shape[-1] <= 1
    for i in range(1, m + 1):
        if max(a_shape[-i], b_shape[-i]) > 1 or i == m:
            return a_shape[-i] <= 1
    return False  # unreachable


def ratio_fma_constant(p_ratio, p_zero_point: int, q_ratio, q_zero_point: int, y_zero_point: int) -> np.float32:
    """ONNX Runtime QLinearAdd's folded zero points: K = fl32(z_y - fma(r_p, z_p, fl32(r_q * z_q)))."""
    f32 = np.float32
    inner = fma_f32(p_zero_point, p_ratio, f32(f32(q_ratio) * f32(q_zero_point)))
    return f32(f32(y_zero_point) - inner)


def _fixed_mul(x, qs, cfg: Requant):
    if cfg.multiplier_bits == 15:
        return fp.multiply_by_quantized_multiplier_15(x, qs[0], qs[1], cfg.fixed_ties[1])
    return fp.multiply_by_quantized_multiplier(x, qs[0], qs[1], cfg.fixed_rounding, cfg.fixed_ties)


def fixed_add_vector_input(x, left_shift: int, qs, tie: str = "half_up") -> np.ndarray:
    """One input of TFLite's vectorized int8 ADD loop (NEON; NEON_2_SSE on x86-64 builds).

    The input multiplier's (non-positive) shift is folded into the left shift: SRDHM(x << (left_shift
    + shift), q), one rounding with tie ``tie`` (VQRDMULH: half_up) and no RoundingDivideByPOT; a
    negative total shift is a truncating right shift (VSHL), i.e. floor. x: int32 after the shift.
    """
    n = int(left_shift) + int(qs[1])
    x = _int_array(x, "x")
    return fp.saturating_rounding_doubling_high_mul(x << n if n >= 0 else x >> -n, qs[0], tie)


def _max_abs(x: np.ndarray) -> int:
    """max |x| of a non-empty integer array without a temporary |x| array."""
    return max(-int(x.min()), int(x.max()))


def _add_kernel(a: np.ndarray, b: np.ndarray, p: AddParams, cfg: Requant) -> np.ndarray | None:
    """ops.add's float32 ("dequantize", no tail) and fixed (31-bit, scalar loop) forms by the numba
    kernels (kernels.add_float32 / kernels.add_fixed, same arithmetic); None outside their domain."""
    from hwsim import kernels

    if a.size == 0 or cfg.mode == "pow2":
        return None
    fa, fb = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
    out = np.empty(fa.size, np.int64)
    if cfg.mode == "float32":
        kernels.add_float32(fa, fb, np.float64(p.a_scale), np.float64(p.a_premul), np.float64(p.b_scale),
                            np.float64(p.b_premul), np.float32(p.inv_y_scale), p.y_zero_point,
                            cfg.zero_point == "before", kernels.ROUND_CODE[cfg.rounding], out)
        return out.reshape(a.shape)
    mults = (p.a_mult, p.b_mult, p.y_mult)
    if cfg.multiplier_bits != 31 or any(not (0 <= q <= fp.INT32_MAX and -31 <= sh <= 31) for q, sh in mults):
        return None
    (qa, sa), (qb, sb), (qy, sy) = ((int(q), int(sh)) for q, sh in mults)
    if not kernels.add_fixed(fa, fb, p.a_zero_point, p.b_zero_point, p.y_zero_point, p.left_shift, qa, sa, qb, sb,
                             qy, sy, cfg.fixed_rounding == "single", kernels.TIE_CODE[cfg.fixed_ties[0]],
                             kernels.TIE_CODE[cfg.fixed_ties[1]], out):
        return None
    return out.reshape(a.shape)


def add(a_q, b_q, *, a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point, qmin, qmax,
        cfg: Requant = Requant(), impl: str = "fast", vector_width: int | None = None,
        index_offset: int = 0) -> tuple[np.ndarray, int]:
    """Quantized element-wise add (numpy broadcasting); returns (y int64, number of clamped outputs).

    float32: da = fma(s_a, a, -fl32(s_a*z_a)) (float32), c = da + db, y = round(fl32(c * fl32(1/s_y))) + z_y
    (PyTorch x86 ``quantized::add``, its vectorized loop). ``vector_width`` = V reproduces PyTorch
    exactly: its last n mod V elements (C order; one TensorIterator chunk, n < 32768) take the scalar
    path: da = fl32((a - z_a) * s_a), y = round(fl32(fl32(c * fl32(1/s_y)) + z_y)) (zero point before
    rounding). V = 64 on AVX512 builds, 32 on AVX2. float32 with ``cfg.add_form = "ratio_fma"``
    (ONNX Runtime QLinearAdd, MLAS AVX2): r_a = fl32(s_a/s_y), r_b = fl32(s_b/s_y),
    K = fl32(z_y - fma(r_a, z_a, fl32(r_b*z_b))), y = round(fma(a, r_a, fma(b, r_b, K))), a and b
    exchanged when :func:`ratio_fma_swaps`. fixed: TFLite int8 ADD (inputs << 20, Q31
    rescale to 2*max(s_a, s_b), sum, rescale to s_y; TFLite's reference kernel and scalar loop).
    fixed with ``vector_width`` = V (TFLite's optimized kernel, V = 16, double rounding only): the
    first n - n mod V elements (C order, no broadcasting in TFLite) take its vector loop, whose input
    stages are :func:`fixed_add_vector_input` (one rounding, tie ``fixed_ties[0]``); the output stage
    and the last n mod V elements are as without it. pow2: exact sum on the finer grid, one rounding shift.
    """
    _check_impl(impl)
    a = a_in = _int_array(a_q, "a_q")
    b = b_in = _int_array(b_q, "b_q")
    ratio_fma = cfg.mode == "float32" and cfg.add_form == "ratio_fma"
    swap = ratio_fma and ratio_fma_swaps(a.shape, b.shape)
    try:
        a, b = np.broadcast_arrays(a, b)
    except ValueError:
        raise HwsimError(f"add: shapes {a.shape} and {b.shape} do not broadcast") from None
    p = add_params(a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point, cfg)
    qmin, qmax = int(qmin), int(qmax)
    fixed_vec = vector_width is not None and cfg.mode == "fixed"
    if vector_width is not None and ((cfg.mode != "float32" and not fixed_vec) or ratio_fma or int(vector_width) < 1):
        raise HwsimError(f"add: vector_width = {vector_width!r}: allowed a positive int, with requant.mode = "
                         "'float32' and add_form = 'dequantize', or requant.mode = 'fixed'")
    if fixed_vec and (cfg.fixed_rounding != "double" or cfg.multiplier_bits != 31):
        raise HwsimError("add: vector_width with requant.mode = 'fixed' needs fixed_rounding = 'double', "
                         "multiplier_bits = 31 (TFLite's vector loop)")
    if fixed_vec and a.size and max(np.abs(a - p.a_zero_point).max(), np.abs(b - p.b_zero_point).max()) >= 2**11:
        raise HwsimError("add: vector_width with requant.mode = 'fixed' needs |a - z_a|, |b - z_b| < 2^11")
    if ratio_fma and a.size and _max_abs(a_in) >= 2**29 or ratio_fma and b.size and _max_abs(b_in) >= 2**29:
        raise HwsimError("add: add_form = 'ratio_fma' needs |a|, |b| < 2^29")
    tail = 0 if vector_width is None else a.size % int(vector_width)
    body = a.size - tail if fixed_vec else 0
    if impl == "reference":
        return ref.add(a, b, p, cfg, qmin, qmax, tail, swap, vector_body=body, index_offset=index_offset)
    # stochastic draws: index_offset + flat C-order output index (None = offset 0, the default)
    idx = (index_offset + fp._flat_index(a.shape)) if (cfg.rounding == "stochastic" and index_offset) else None
    y = None
    if not ratio_fma and not body and not tail and not (cfg.mode == "float32" and cfg.rounding == "stochastic"):
        y = _add_kernel(a, b, p, cfg)
    if y is not None:
        pass  # the numba kernel's result (same arithmetic as the numpy forms below)
    elif ratio_fma:
        # ONNX Runtime MLAS QLinearAdd (AVX2): P takes the first FMA role, Q is folded in first
        (P, rp, zp), (Q, rq, zq) = (a, p.a_ratio, p.a_zero_point), (b, p.b_ratio, p.b_zero_point)
        if swap:
            (P, rp, zp), (Q, rq, zq) = (Q, rq, zq), (P, rp, zp)
        k = ratio_fma_constant(rp, zp, rq, zq, p.y_zero_point)
        if cfg.rounding != "stochastic" and P.size:  # the numba kernel: the same two FMAs per element
            from hwsim import kernels

            y = np.empty(P.size, np.int64)
            kernels.add_ratio_fma(np.ascontiguousarray(P).reshape(-1), np.ascontiguousarray(Q).reshape(-1),
                                  np.float32(rp), np.float32(rq), np.float32(k), kernels.ROUND_CODE[cfg.rounding], y)
            y = y.reshape(P.shape)
        else:
            y = fp.round_float(fma_f32(P, rp, fma_f32(Q, rq, k)), cfg.rounding, cfg.seed, idx)
    elif cfg.mode == "float32":
        f32 = np.float32
        # s*a is exact in float64 (24-bit x <= 17-bit) and s*a + premul too (both multiples of the
        # same power of two, < 2^45 apart): one rounding to float32 == the fused multiply-add
        da = (np.float64(p.a_scale) * a + np.float64(p.a_premul)).astype(f32)
        db = (np.float64(p.b_scale) * b + np.float64(p.b_premul)).astype(f32)
        v = (da + db) * f32(p.inv_y_scale)
        if cfg.zero_point == "before":
            y = fp.round_float(v + f32(p.y_zero_point), cfg.rounding, cfg.seed, idx)
        else:
            y = fp.round_float(v, cfg.rounding, cfg.seed, idx) + p.y_zero_point
        if tail:
            at, bt = a.reshape(-1)[-tail:], b.reshape(-1)[-tail:]
            da = ((at - p.a_zero_point) * np.float64(p.a_scale)).astype(f32)  # exact product, one rounding
            db = ((bt - p.b_zero_point) * np.float64(p.b_scale)).astype(f32)
            vt = ((da + db) * f32(p.inv_y_scale) + f32(p.y_zero_point)).astype(f32)
            y.reshape(-1)[-tail:] = fp.round_float(vt, cfg.rounding, cfg.seed,
                                                   index_offset + np.arange(a.size - tail, a.size))
    elif cfg.mode == "fixed":
        sa = _fixed_mul((a - p.a_zero_point) << p.left_shift, p.a_mult, cfg)
        sb = _fixed_mul((b - p.b_zero_point) << p.left_shift, p.b_mult, cfg)
        y = _fixed_mul(sa + sb, p.y_mult, cfg) + p.y_zero_point
        if body:  # TFLite's vector loop: input shifts folded into the left shift (one rounding)
            ab, bb = (a - p.a_zero_point).reshape(-1)[:body], (b - p.b_zero_point).reshape(-1)[:body]
            sv = (fixed_add_vector_input(ab, p.left_shift, p.a_mult, cfg.fixed_ties[0])
                  + fixed_add_vector_input(bb, p.left_shift, p.b_mult, cfg.fixed_ties[0]))
            y.reshape(-1)[:body] = _fixed_mul(sv, p.y_mult, cfg) + p.y_zero_point
    else:
        e0 = min(p.a_exp, p.b_exp)
        s = ((a - p.a_zero_point) << (p.a_exp - e0)) + ((b - p.b_zero_point) << (p.b_exp - e0))
        n = p.y_exp - e0
        y = (s << -n if n < 0 else fp.shift_right_round(s, n, cfg.rounding, cfg.seed, idx)) + p.y_zero_point
    clipped = int(np.count_nonzero((y < qmin) | (y > qmax)))
    return np.clip(y, qmin, qmax), clipped


# ----------------------------------------------------------------------------- concat
def concat(xs, scales, zero_points, y_scale, y_zero_point, qmin, qmax, cfg: Requant = Requant(), axis: int = 1,
           impl: str = "fast", index_offset: int = 0) -> tuple[np.ndarray, int]:
    """Concatenate along ``axis`` after requantizing each input to the output grid; returns (y, clipped).

    Input i is requantize(x_i - z_i, M = s_i / s_y) (exactly the identity when (s_i, z_i) == (s_y, z_y));
    stochastic rounding uses the flat index in the concatenated output.
    """
    _check_impl(impl)
    xs = [_int_array(x, f"xs[{i}]") for i, x in enumerate(xs)]
    if not xs or len(scales) != len(xs) or len(zero_points) != len(xs):
        raise HwsimError(f"concat: {len(xs)} inputs, {len(scales)} scales, {len(zero_points)} zero points")
    try:
        shape_out = np.concatenate([np.empty(x.shape, np.int8) for x in xs], axis=axis).shape
    except ValueError:
        raise HwsimError(f"concat: shapes {[x.shape for x in xs]} do not concatenate along axis {axis}") from None
    flat = index_offset + np.arange(int(np.prod(shape_out)), dtype=np.int64).reshape(shape_out)
    parts, clipped, off = [], 0, 0
    for x, s, z in zip(xs, scales, zero_points):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(off, off + x.shape[axis])
        off += x.shape[axis]
        if float(np.float32(s)) == float(np.float32(y_scale)) and int(z) == int(y_zero_point):
            y = x.copy()
            c = int(np.count_nonzero((y < qmin) | (y > qmax)))
            y = np.clip(y, qmin, qmax)
        else:
            params = make_requant_params(1.0, float(s), float(y_scale), cfg)
            y, c = requantize(x - int(z), params, cfg, int(y_zero_point), qmin, qmax, channel_axis=axis, impl=impl,
                              index=flat[tuple(sl)])
        parts.append(y)
        clipped += c
    return np.concatenate(parts, axis=axis), clipped
