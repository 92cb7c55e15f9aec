"""The shared integer core below the ops: accumulator model, input checks, requantization.

Every op module (conv2d.py, linear.py, pool.py, add.py, concat.py, ...) builds on these; nothing
here knows an op name. The fixed-point primitives are :mod:`hwsim.fixedpoint`, the numba kernels
:mod:`hwsim.kernels`, the readable references :mod:`hwsim.reference`.
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


_CODE_DTYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32)


def _int_codes(a, name: str) -> np.ndarray:
    """:func:`_int_array` except that integer arrays of at most 32 bits keep their dtype (no int64 copy): the
    fast kernels read int8/uint8 activation codes as they are (the values are the same)."""
    arr = np.asarray(a)
    return arr if arr.dtype in _CODE_DTYPES else _int_array(arr, name)


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



def conv_output_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int = 1) -> int:
    """Output length of a convolution/pool along one axis (floor mode)."""
    return (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


# ----------------------------------------------------------------------------- requantization
REQUANT_MODES = ("float32", "fixed", "pow2")
ADD_FORMS = ("dequantize", "ratio_fma", "xnnpack", "onednn_sum", "float32")  # float32: ORT's QDQ float path (hwsim.mlas)


@dataclass(frozen=True)
class Requant:
    """How an int accumulator becomes an output integer: y = clamp(round(acc * M) + z_y, qmin, qmax).

    ``fixed_ties`` = (tie of SaturatingRoundingDoublingHighMul, tie of RoundingDivideByPOT); gemmlowp
    itself uses ("half_up", "half_away"). ``single`` rounding and the 15-bit multiplier round once,
    with ``fixed_ties[1]``. ``multiplier_order`` = "sequential" is what PyTorch's fbgemm engine does
    (and ONNX Runtime's QLinearConv / QLinearMatMul). ``add_form`` (float32 :func:`add` only):
    "dequantize" = PyTorch's x86 ``quantized::add``, "ratio_fma" = ONNX Runtime's QLinearAdd (MLAS
    AVX2 kernel; ``zero_point`` does not apply to it: z_y is inside the rounded sum); "xnnpack" = XNNPACK's
    qs8 add (20-bit fixed-point multipliers, in any ``mode``: :func:`hwsim.ops.add.xnnpack_add_params`);
    "onednn_sum" = oneDNN's convolution with a sum post-op (torch.compile x86 int8, :func:`hwsim.ops.add.onednn_sum`).
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

    float32: ``multiplier`` (float32 M) and optional ``bias_term`` (float32, fbgemm float bias) and
    ``pre_scale`` (float32, oneDNN: f32(acc) * pre_scale[c] before the bias, :func:`make_onednn_requant_params`),
    ``src_scale`` (float32 scalar, oneDNN's sequential scales: f32(acc) * src_scale before ``pre_scale``);
    fixed: ``q`` (Q31 or Q15 multiplier) and ``shift`` (real = q * 2^(shift - multiplier_bits));
    pow2: ``shift`` = n with M = 2^-n (n < 0: exact left shift). ``real`` = M in float64 (reports).
    """

    mode: str
    real: np.ndarray
    multiplier: np.ndarray | None = None
    q: np.ndarray | None = None
    shift: np.ndarray | None = None
    bias_term: np.ndarray | None = None
    pre_scale: np.ndarray | None = None
    src_scale: np.float32 | None = None

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


def make_onednn_requant_params(s_x: float, s_w, s_y: float, bias=None, form: str = "onednn") -> RequantParams:
    """oneDNN's int8 convolution as PyTorch's x86 engine calls it (profile key ``bias.form = "onednn"``):
    y = round_half_even(fl32(fl32(fl32(fl32(acc) * S[c]) + b[c]) * D) + z_y), z_y added in float32 before the
    rounding (``requant.zero_point = "before"``), with S[c] = fl32(s_x' * s_w[c]) and the scales as they reach
    oneDNN: PyTorch passes reciprocals (aten/src/ATen/native/quantized/cpu/qconv.cpp,
    PackedConvWeightsOnednn::apply_impl: ``src_scales = 1.0/input_scale``, ``inv_output_scale = 1.0/output_scale``)
    that ideep inverts again, s_x' = fl32(1/fl32(1/s_x)); the weight scales arrive as given; the destination
    multiplier D = fl32(1/fl32(1/fl32(1/s_y))) (oneDNN multiplies by the inverse of its dst scale). Measured
    against torch 2.13 (tests/importers/test_torch_int8.py); the s_y reciprocal chain is the one consistent
    with the source, data did not separate it from fl32(1/s_y).

    torch.compile's x86 int8 lowering (pt2e models) calls oneDNN directly (``torch.ops.onednn.qconv_pointwise`` /
    ``qlinear_pointwise``) with the scales as given, and oneDNN's kernels then differ by implementation (measured
    against torch 2.13 op by op, tests/importers/test_pt2e.py, the implementation named by ONEDNN_VERBOSE):
    ``form = "onednn_combined"``: fl32(fl32(acc) * fl32(s_x * s_w[c])) + b (the AMX kernels: brg_conv_fwd /
    brgconv_1x1 / brg_matmul on avx10_1_512_amx); ``form = "onednn_sequential"``: the scales one after the other,
    fl32(fl32(fl32(acc) * s_x) * s_w[c]) + b (the non-AMX kernels: brdgmm_dw depthwise, small brg_matmul on
    avx10_1_512); both then times D with the zero point before rounding.

    ``form = "onednn_vnni"``: PyTorch's x86 engine (as ``"onednn"``, the reciprocal chain s_x') on a CPU whose oneDNN
    runs the non-AMX kernels (AVX512-VNNI without AMX: brg_conv_fwd / brgconv_1x1 / brdgmm_dw on avx512_core_vnni,
    jit_1x1 / jit_dw on avx512_core): the scales one after the other, fl32(fl32(fl32(acc) * s_x') * s_w[c]) + b, then
    as ``"onednn"``. Measured against torch 2.13 layer by layer on such a CPU (every oneDNN conv of ResNet-8, the
    bundled MobileNetV2 and SmallCNN; ``"onednn"`` differed on 1 and 3 of 262,144 outputs of two ResNet-8 convs)."""
    s_x, s_w, s_y = _scales(s_x, s_w, s_y)
    f32 = np.float32
    one = f32(1)
    fx = one / (one / f32(s_x))
    d = one / (one / (one / f32(s_y)))
    src = None
    if form == "onednn_sequential":
        pre, src = s_w.astype(f32).copy(), f32(s_x)
    elif form == "onednn_vnni":
        pre, src = s_w.astype(f32).copy(), fx
    elif form == "onednn_combined":
        pre = (f32(s_x) * s_w.astype(f32)).astype(f32)
    else:
        pre = (fx * s_w.astype(f32)).astype(f32)
    c = pre.size
    b = np.zeros(c, f32) if bias is None else np.broadcast_to(np.asarray(bias, np.float64).reshape(-1).astype(f32), (c,))
    real = f32(s_x).astype(np.float64) * s_w.astype(f32).astype(np.float64) / np.float64(f32(s_y))
    return RequantParams("float32", real, multiplier=np.full(c, d, f32), bias_term=b.astype(f32).copy(),
                         pre_scale=pre, src_scale=src)


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
    has_pre = params.pre_scale is not None
    pre = (np.broadcast_to(np.asarray(params.pre_scale, np.float32).reshape(-1), (C,)).copy() if has_pre
           else np.ones(C, np.float32))
    kernels.requant_float32(a3, mult, bias, has_bias, cfg.zero_point == "before", int(z_y),
                            kernels.ROUND_CODE[cfg.rounding], out, pre, has_pre)
    return out.reshape(acc.shape)


def _requantize_fast(acc, params: RequantParams, cfg: Requant, z_y: int, channel_axis: int, index):
    if acc.dtype != np.int64:  # int32 accumulators of an exact plan (kernels.acc_dtype): the same integers
        acc = acc.astype(np.int64)
    nd = acc.ndim
    if params.channels > 1 and (nd == 0 or acc.shape[channel_axis] != params.channels):
        raise HwsimError(f"requantize: {params.channels} per-channel multipliers but accumulator shape {acc.shape} "
                         f"(channel axis {channel_axis})")
    if (cfg.mode == "float32" and cfg.rounding != "stochastic" and acc.ndim and acc.size
            and params.src_scale is None):  # the kernel has no src_scale step: numpy below
        return _float32_requant_kernel(acc, params, cfg, z_y, channel_axis)
    if cfg.mode == "float32":
        fa = acc.astype(np.float32)
        with np.errstate(over="ignore"):
            if params.src_scale is not None:
                fa = fa * np.float32(params.src_scale)
            if params.pre_scale is not None:
                fa = fa * _per_channel(params.pre_scale, nd, channel_axis)
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


def fused_epilogue(params: RequantParams, cfg: Requant, z_y: int, lo: int, hi: int, qmin: int, qmax: int,
                   count_low: bool, channels: int, acc_max: int):
    """The requantization of :func:`_requantize_fast` + zero point + the executor's clamp and clip count
    (registry.clamp_counted) as one kernels.Epilogue behind the int8 GEMM, or None where it does not apply.

    Applies to "fixed" with the 31-bit multiplier in the Q31 kernel's domain (:func:`_fixed_q31_fast`; single
    rounding needs every accumulator |acc| <= ``acc_max`` <= 2^31, proven by the plan) and to "float32"
    without stochastic rounding (:func:`_float32_requant_kernel`). Made once per layer (ops.mac caches it).
    """
    from hwsim import kernels

    if params.channels not in (1, channels):
        return None
    common = dict(zy=int(z_y), lo=int(lo), hi=int(hi), qmin=int(qmin), qmax=int(qmax), count_low=bool(count_low))

    def per(v, dt):
        return np.ascontiguousarray(np.broadcast_to(np.asarray(v, dt).reshape(-1), (channels,)))

    if cfg.mode == "fixed" and cfg.multiplier_bits == 31:
        q, sh = np.asarray(params.q, np.int64), np.asarray(params.shift, np.int64)
        single = cfg.fixed_rounding == "single"
        if q.min() < 0 or q.max() > fp.INT32_MAX or sh.max() > 31 or sh.min() < -31 or (single and acc_max > 1 << 31):
            return None
        return kernels.Epilogue("fixed", q=per(q, np.int64), shift=per(sh, np.int64), single=single,
                                small=acc_max <= 1 << 31 and int(sh.max()) <= 0,
                                tie0=kernels.TIE_CODE[cfg.fixed_ties[0]], tie1=kernels.TIE_CODE[cfg.fixed_ties[1]],
                                **common)
    if cfg.mode == "float32" and cfg.rounding != "stochastic" and params.src_scale is None:  # oneDNN's sequential
        has_bias, has_pre = params.bias_term is not None, params.pre_scale is not None  # scales: numpy's path
        mult = per(params.multiplier, np.float32)
        bias = per(params.bias_term if has_bias else 0, np.float32)
        pre = per(params.pre_scale if has_pre else 1, np.float32)
        # 32-bit lanes (kernels._epi_f32_lanes): |acc| < 2^31 (int32 holds it), the integer bounds small enough to
        # be exact in float32 (|.| < 2^24), and no NaN possible (finite constants; |acc * pre| < 2^31 * 1e29 cannot
        # overflow to inf, so fa is finite and fa * M + z is a finite number or +-inf, never NaN)
        bounds = (int(z_y), int(lo), int(hi), int(qmin), int(qmax))
        lanes32 = bool(acc_max < 1 << 31 and max(abs(v) for v in bounds) < 1 << 23
                       and all(np.isfinite(a).all() for a in (mult, bias, pre)) and float(np.abs(pre).max()) < 1e29)
        return kernels.Epilogue("float32", mult=mult, bias=bias, pre=pre, has_bias=has_bias,
                                has_pre=has_pre, z_before=cfg.zero_point == "before",
                                mode=kernels.ROUND_CODE[cfg.rounding], lanes32=lanes32, **common)
    return None


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
