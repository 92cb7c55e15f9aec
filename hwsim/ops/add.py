"""add: element-wise sum of two quantized tensors, requantized to the output grid.

The public op :func:`add` in its engine forms (PyTorch x86 ``quantized::add``, ONNX Runtime's
QLinearAdd, TFLite int8 ADD, pow2) and its registry entry :class:`AddSpec` (graph schema, float
reference, compile, execute, ONNX export). A following ReLU/ReLU6 is fused as the output clamp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwsim import fixedpoint as fp
from hwsim import reference as ref
from hwsim.errors import HwsimError
from hwsim.ops.core import Requant, _check_impl, _int_array, _scales
from hwsim.ops.registry import WIDE, OpSpec, clamp_counted, per_image, register


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

    x: integers with |x| < 2^29 or float32 values; r, z: float32 values (broadcast). Either way x * r is
    exact in float64 (29 + 24 or 24 + 24 significant bits). The float64 sum s = fl64(x*r + z) carries its
    exact error e (TwoSum); fl32(s) differs from the correctly rounded result only when s is exactly halfway
    between two float32 numbers and e != 0. (The one FMA of hwsim: QLinearAdd's ratio form here, MLAS's
    logistic polynomial in :mod:`hwsim.ops.activation`.)
    """
    x = np.asarray(x)
    xd = x.astype(np.float64) if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32).astype(np.float64)
    p = xd * np.asarray(r, dtype=np.float32).astype(np.float64)
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


def _abs_below(x: np.ndarray, bits: int) -> bool:
    """|x| < 2^bits everywhere: from the dtype where it decides (no pass over x), else from the values."""
    if not x.size:
        return True
    info = np.iinfo(x.dtype)
    return max(-int(info.min), int(info.max)) < 1 << bits or _max_abs(x) < 1 << bits


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


def xnnpack_add_params(a_scale, b_scale, y_scale) -> tuple[int, int, int]:
    """XNNPACK's qs8 add constants (src/microparams-init.c, xnn_init_qs8_add_minmax_scalar_params): float32 ratios
    r_a = fl32(s_a / s_y), r_b = fl32(s_b / s_y); shift = 20 - e with 2^e <= max(r_a, r_b) < 2^(e+1), in [12, 30];
    m = lrintf(r * 2^shift) (r * 2^shift is exact: an exponent change; lrintf rounds half to even). The kernel
    (qs8-vadd scalar / AVX2 mul32) computes y = ((2^(shift-1) + m_a (a - z_a) + m_b (b - z_b)) >> shift) + z_y: the
    fixed-point sum rounded half up (toward +inf). XNNPACK takes ratios in [2^-10, 2^8) only (its delegate leaves
    other ADDs to LiteRT's built-in kernel): a one-line error otherwise."""
    _scales(a_scale, b_scale, y_scale)
    f32 = np.float32
    ra, rb = f32(f32(a_scale) / f32(y_scale)), f32(f32(b_scale) / f32(y_scale))
    for name, r in (("s_a / s_y", ra), ("s_b / s_y", rb)):
        if not 2.0**-10 <= float(r) < 2.0**8:
            raise HwsimError(f"add: add_form = 'xnnpack': {name} = {float(r):.7g}, allowed [2^-10, 2^8) (XNNPACK's qs8 "
                             "add; LiteRT runs other ADDs with its built-in kernel)")
    e = int(np.frexp(max(ra, rb))[1]) - 1
    shift = 20 - e
    ma, mb = (int(np.rint(np.float64(r) * 2.0**shift)) for r in (ra, rb))
    return ma, mb, shift


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
    if cfg.add_form == "float32":  # ONNX Runtime's QDQ float path, any requant mode (hwsim.mlas; one form)
        from hwsim import mlas

        try:
            y = mlas.eltwise("add", a, b, a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point)
        except ValueError:
            raise HwsimError(f"add: shapes {a.shape} and {b.shape} do not broadcast") from None
        return np.clip(y, int(qmin), int(qmax)), int(np.count_nonzero((y < qmin) | (y > qmax)))
    if cfg.add_form == "xnnpack":  # its own integer arithmetic, in any requant mode (numpy int64: exact)
        if vector_width is not None:
            raise HwsimError("add: vector_width does not apply to add_form = 'xnnpack'")
        try:
            a, b = np.broadcast_arrays(a, b)
        except ValueError:
            raise HwsimError(f"add: shapes {a.shape} and {b.shape} do not broadcast") from None
        ma, mb, shift = xnnpack_add_params(a_scale, b_scale, y_scale)
        acc = (1 << (shift - 1)) + ma * (a - int(a_zero_point)) + mb * (b - int(b_zero_point))
        y = (acc >> shift) + int(y_zero_point)  # arithmetic shift: floor
        return np.clip(y, int(qmin), int(qmax)), int(np.count_nonzero((y < qmin) | (y > qmax)))
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
    if ratio_fma and not (_abs_below(a_in, 29) and _abs_below(b_in, 29)):
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
                                  np.float32(rp), np.float32(rq), np.float32(k), kernels.ROUND_CODE[cfg.rounding], y,
                                  small=_abs_below(a_in, 24) and _abs_below(b_in, 24))
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



def onednn_sum(acc, params, r_q, *, r_scale, r_zero_point, y_scale, y_zero_point, rounding: str = "half_even"):
    """A conv whose float output feeds an add, as torch.compile's x86 lowering of a pt2e model runs it
    (requant.add_form = "onednn_sum"), unclamped int64. Inductor fuses the add into the conv as oneDNN's sum
    post-op (torch/_inductor/fx_passes/quantization.py, _register_qconv_binary_fusion: the float-output pattern,
    the one it takes when the other operand's integers are read elsewhere too, which in a residual block they
    are): a generated C++ kernel dequantizes the other operand r, oneDNN's convolution (dst f32, no dst scale)
    adds it in its epilogue (src/cpu/x64/brgemm/jit_brgemm_kernel.cpp, store_accumulators_apply_post_ops and the
    sum_injector: sum scale 1, vaddps), and a generated kernel quantizes the float result:

        d = fl32(fl32(r - z_r) * s_r)                     (cpp_fused_dequantize_per_tensor)
        v = fl32(fl32(fl32(acc) * S[c]) + b[c]) + d       (the conv's scales and float bias, ``params``:
                                                           :func:`hwsim.ops.core.make_onednn_requant_params`)
        y = round_half_even(fl32(v * fl32(1/s_y))) + z_y  (cpp_fused_quantize_per_tensor; 1/s_y in double)

    ``acc``: the conv's int accumulators [N, C, ...]; a following ReLU (post-ops "sum" + "relu") is max(v, 0),
    the same integers as a clamp at z_y (what the caller applies). Measured against torch 2.13 (oneDNN 3.12)
    op by op, bit for bit on the float output (scripts/pt2e_conv_add_probe.py, tests/importers/test_pt2e.py)."""
    f32 = np.float32
    v = onednn_float(acc, params, "add: add_form = 'onednn_sum'")
    with np.errstate(over="ignore"):
        d = ((np.asarray(r_q).astype(f32) - f32(r_zero_point)) * f32(r_scale)).astype(f32)
        v = (v + d).astype(f32)
    return cpp_quantize(v, y_scale, y_zero_point, rounding)


def onednn_float(acc, params, what: str) -> np.ndarray:
    """The float32 output of a oneDNN conv / matmul with a float destination (torch.compile's x86 int8 lowering:
    ``qconv_pointwise`` / ``qlinear_pointwise`` with output scale 1.0, no post-op), v = fl32(fl32(fl32(acc) * S[c])
    + b[c]) (or the sequential scales, fl32(fl32(fl32(acc) * s_x) * s_w[c]) + b[c]): ``params`` the layer's oneDNN
    requant params (:func:`hwsim.ops.core.make_onednn_requant_params`), ``acc`` its accumulators [N, C, ...]. A
    consumer that needs a MAC layer's float value (the sum post-op here, the fused hard-swish and squeeze-excite
    forms of hwsim.ops.activation / hwsim.ops.mul) recomputes it from that layer's integers with this."""
    f32 = np.float32
    if params is None or params.mode != "float32" or params.pre_scale is None:
        raise HwsimError(f"{what} needs the MAC layer's oneDNN requant (bias.form = 'onednn', 'onednn_vnni', 'onednn_combined' or "
                         "'onednn_sequential')")
    acc = np.asarray(acc)
    shp = (1, -1) + (1,) * (acc.ndim - 2)
    with np.errstate(over="ignore"):
        v = acc.astype(f32)
        if params.src_scale is not None:
            v = v * f32(params.src_scale)
        v = (v * np.asarray(params.pre_scale, f32).reshape(shp)).astype(f32)
        return (v + np.asarray(params.bias_term, f32).reshape(shp)).astype(f32)


def cpp_quantize(v, y_scale, y_zero_point, rounding: str = "half_even") -> np.ndarray:
    """Inductor's generated quantize_per_tensor kernel on a float32 tensor (cpp_fused_quantize_per_tensor): the
    float32 literal of 1/s_y (1/s_y in double), y = round(fl32(v * fl32(1/s_y))) + z_y, zero point after rounding;
    unclamped int64."""
    with np.errstate(over="ignore"):
        t = (np.asarray(v, np.float32) * np.float32(1.0 / np.float64(np.float32(y_scale)))).astype(np.float32)
    return fp.round_float(t, rounding, 0, None) + int(y_zero_point)


def mac_accumulators(qg, name: str, env, impl: str) -> np.ndarray:
    """The accumulators of MAC layer ``name`` on its input in ``env`` (its own op's ``accumulate``, or the fast
    kernels under impl "fast"; the layer's events were counted when it ran)."""
    from hwsim import ops

    conv = qg.layer(name)
    spec, x, gx = ops.get(conv.op), env[conv.inputs[0]], qg.grids[conv.inputs[0]]
    if impl == "fast":
        from hwsim import kernels

        with kernels.exclusive():  # a batch worker: the layer's parallel kernels, one thread at a time
            return spec.fast(conv, x, gx)[0]
    return spec.accumulate(conv, x, gx, impl)[0]


@register
class AddSpec(OpSpec):
    name = "add"
    arity = 2
    kind = "add"
    fuses_activation = True
    compared = True

    def infer_shape(self, node, ins, p, fail, tag):
        if ins[0] != ins[1]:
            fail(f"{tag}: inputs {node.inputs[0]!r} {ins[0]} and {node.inputs[1]!r} {ins[1]} must have the same shape")
        return ins[0]

    def float_forward(self, node, graph, ins):
        return ins[0] + ins[1]

    def compile(self, lay, node, cx):
        lay.requant = cx.requant()
        lay.fused_sum = None
        if lay.requant.add_form == "onednn_sum":
            lay.fused_sum = self._fused_conv(lay, node, cx)

    @staticmethod
    def _fused_conv(lay, node, cx):
        """add_form = "onednn_sum": (operand index, conv layer name) of the operand that is a conv output the engine
        never quantized (oneDNN's sum post-op adds the other operand inside that conv's epilogue), or None (the add
        then computes as add_form "dequantize"). Such an operand is an imported pt2e graph's convention
        (frontends/pytorch/importers.py): a conv2d node whose only consumer is this add and whose output carries
        the add's own output grid."""
        prod = {o: n for n in cx.folded.nodes for o in n.outputs}
        gy = cx.grids[lay.output]
        found = []
        for i, t in enumerate(node.inputs[:2]):
            n = prod.get(t)
            users = [m for m in cx.folded.nodes if t in m.inputs]
            if (n is not None and n.op == "conv2d" and len(users) == 1 and t in cx.grids
                    and cx.grids[t] == gy):
                found.append((i, n.name))
        if len(found) > 1:
            raise HwsimError(f"layer {lay.name!r}: add_form = 'onednn_sum': both operands are conv outputs on the "
                             "add's grid (oneDNN fuses one of them; hwsim cannot tell which)")
        if found and lay.requant.rounding == "stochastic":
            raise HwsimError(f"layer {lay.name!r}: add_form = 'onednn_sum' with requant.rounding = 'stochastic' "
                             "(oneDNN rounds half even; allowed: a deterministic rounding)")
        return found[0] if found else None

    def table(self, qg, lay):
        """The layer's add as a table over every pair of input grid values, made once (attribute ``fast_table``):
        (a_min, b_min, n_a, n_b, int32 table of the unclamped output), or None where the output depends on
        more than the two values (stochastic rounding) or the table would be large (> kernels.ADD_TABLE_MAX).
        Its entries are :func:`add` itself on those pairs, so the table is exact by construction; ONNX
        Runtime's operand exchange (:func:`ratio_fma_swaps`) is checked per call (:meth:`fused`)."""
        from hwsim import kernels

        g = qg.grids
        ga, gb, gy, r = g[lay.inputs[0]], g[lay.inputs[1]], g[lay.output], lay.requant
        key = (r, ga.qmin, ga.qmax, ga.zero_point, ga.scale, gb.qmin, gb.qmax, gb.zero_point, gb.scale,
               gy.zero_point, gy.scale)
        cached = getattr(lay, "fast_table", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        na, nb = int(ga.qmax) - int(ga.qmin) + 1, int(gb.qmax) - int(gb.qmin) + 1
        t = None
        if na * nb <= kernels.ADD_TABLE_MAX and (r.rounding != "stochastic" or r.mode == "fixed"):
            av = np.repeat(np.arange(ga.qmin, ga.qmax + 1, dtype=np.int64), nb)
            bv = np.tile(np.arange(gb.qmin, gb.qmax + 1, dtype=np.int64), na)
            y, _ = add(av, bv, a_scale=ga.scale, a_zero_point=ga.zero_point, b_scale=gb.scale,
                       b_zero_point=gb.zero_point, y_scale=gy.scale, y_zero_point=gy.zero_point, qmin=WIDE[0],
                       qmax=WIDE[1], cfg=r)  # 1-D inputs of equal shape: no operand exchange (ratio_fma_swaps)
            if y.size and -(1 << 31) <= int(y.min()) and int(y.max()) < 1 << 31:
                t = (int(ga.qmin), int(gb.qmin), na, nb, y.astype(np.int32))
        lay.fast_table = (key, t)
        return t

    def thread_safe(self, qg, lay) -> bool:
        """Runs in several threads at once (execute's batch workers) when the table applies."""
        return getattr(lay, "fused_sum", None) is None and self.table(qg, lay) is not None

    def prepare(self, qg, lay) -> None:
        """Make the table and its derived tables for narrow outputs (execute's) now (compile time)."""
        from hwsim import kernels

        t = self.table(qg, lay)
        if t is not None and getattr(lay, "fused_sum", None) is None:
            self.derived(qg, lay, t, kernels.narrow_dtype(*lay.clamp))

    @staticmethod
    def derived(qg, lay, t, dtype) -> tuple:
        """kernels.table2_derived of the layer's table ``t`` for its clamp, output grid, count rule and the output
        dtype: the clamped table and the event table, made once (attribute ``fast_table_out``, made again when
        the table or any of these change)."""
        from hwsim import kernels

        gy = qg.grids[lay.output]
        lo, hi = lay.clamp
        key = (int(lo), int(hi), int(gy.qmin), int(gy.qmax), lay.activation is None, np.dtype(dtype).str)
        cached = getattr(lay, "fast_table_out", None)
        if cached is None or cached[0] is not t or cached[1] != key:
            cached = (t, key, kernels.table2_derived(t[4], lo, hi, gy.qmin, gy.qmax, lay.activation is None, dtype))
            lay.fast_table_out = cached
        return cached[2]

    def fused(self, qg, lay, xa, xb, narrow):
        """(y, clipped) by the table (kernels.table2: lookup, clamp and count in one pass), or None."""
        from hwsim import kernels

        t = self.table(qg, lay)
        if t is None or xa.shape != xb.shape or xa.size == 0:
            return None
        r = lay.requant
        if r.mode == "float32" and r.add_form == "ratio_fma" and ratio_fma_swaps(xa.shape, xb.shape):
            return None  # the table was made without the exchange
        gy = qg.grids[lay.output]
        lo, hi = lay.clamp
        out = np.empty(xa.shape, kernels.narrow_dtype(lo, hi) if narrow else np.int64)
        c = kernels.table2(np.ascontiguousarray(xa).reshape(-1), np.ascontiguousarray(xb).reshape(-1), t[0], t[1],
                           t[2], t[3], t[4], lo, hi, gy.qmin, gy.qmax, lay.activation is None, out.reshape(-1),
                           derived=self.derived(qg, lay, t, out.dtype))
        return None if c is None else (out, c)

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        g = qg.grids
        if getattr(lay, "fused_sum", None) is not None:
            return self._execute_sum(qg, lay, env, impl, narrow)
        ga, gb, gy = g[lay.inputs[0]], g[lay.inputs[1]], g[lay.output]
        xa, xb = env[lay.inputs[0]], env[lay.inputs[1]]
        vector = self._vector_width(lay)
        if impl == "fast":
            res = None if vector is not None else self.fused(qg, lay, xa, xb, narrow)  # the table is per element
            if res is not None:
                return res
            from hwsim import kernels

            with kernels.exclusive():  # a batch worker: the kernels below are parallel, one thread at a time
                return self._execute(qg, lay, xa, xb, ga, gb, gy, impl, offset, narrow)
        return self._execute(qg, lay, xa, xb, ga, gb, gy, impl, offset, narrow)

    def _execute_sum(self, qg, lay, env, impl, narrow):
        """add_form = "onednn_sum" with a fused conv operand: that conv's accumulators (its own op's
        ``accumulate``; its events were counted when it ran) through :func:`onednn_sum` with the other operand."""
        i, name = lay.fused_sum
        conv = qg.layer(name)
        r = lay.inputs[1 - i]
        gr, gy = qg.grids[r], qg.grids[lay.output]
        acc = mac_accumulators(qg, name, env, impl)
        y = onednn_sum(acc, conv.requant_params, env[r], r_scale=gr.scale, r_zero_point=gr.zero_point,
                       y_scale=gy.scale, y_zero_point=gy.zero_point, rounding=lay.requant.rounding)
        return clamp_counted(y, lay, gy, narrow)

    def golden_fields(self, lay, write_int) -> dict:
        """add_form = "onednn_sum" with a fused conv: which operand is that conv's accumulator (onednn_sum reads the
        conv's accumulators, scales and bias: its golden fields), else nothing extra."""
        fused = getattr(lay, "fused_sum", None)
        return {} if fused is None else {"onednn_sum": {"conv": fused[1], "operand": int(fused[0])}}

    @staticmethod
    def _vector_width(lay):
        """requant.add_vector_width (LiteRT's optimized ADD: a vector loop over the first n - n mod V values in
        NHWC order rounds otherwise than the scalar tail), in fixed mode only; else None."""
        v = getattr(lay.profile.requant, "add_vector_width", None) if lay.profile is not None else None
        return v if v is not None and lay.requant.mode == "fixed" else None

    def _execute(self, qg, lay, xa, xb, ga, gb, gy, impl, offset, narrow):
        kw = dict(a_scale=ga.scale, a_zero_point=ga.zero_point, b_scale=gb.scale, b_zero_point=gb.zero_point,
                  y_scale=gy.scale, y_zero_point=gy.zero_point, qmin=WIDE[0], qmax=WIDE[1], cfg=lay.requant)
        v = self._vector_width(lay)
        if v is not None:
            return clamp_counted(_nhwc_vector_add(xa, xb, v, impl, kw), lay, gy, narrow)
        y, _ = add(xa, xb, **kw, index_offset=offset * per_image(np.broadcast_shapes(xa.shape, xb.shape)))
        return clamp_counted(y, lay, gy, narrow)

    def onnx_export(self, ex, lay):
        n, r = lay.name, lay.requant
        if r.mode != "float32" or r.add_form != "ratio_fma" or r.rounding != "half_even":
            raise HwsimError(f"layer '{n}': add with requant mode {r.mode!r}, add_form {r.add_form!r}, rounding "
                             f"{r.rounding!r}; ONNX Runtime's QLinearAdd is mode 'float32', add_form 'ratio_fma', "
                             "rounding 'half_even' (profile int8-onnxruntime)")
        sa, za = ex.grid(lay.inputs[0], n)
        sb, zb = ex.grid(lay.inputs[1], n)
        sy, zy = ex.grid(lay.output, n)
        out, extra = ex.out_name(lay)
        ex.node("QLinearAdd", [lay.inputs[0], sa, za, lay.inputs[1], sb, zb, sy, zy], [out], n, ms=True)
        if extra:
            ex.clamp(lay, out, *extra)


def _nhwc_vector_add(xa, xb, v: int, impl: str, kw: dict) -> np.ndarray:
    """Profile key requant.add_vector_width = V: TFLite's optimized ADD on each image in NHWC order (LiteRT runs
    [1, H, W, C]): its vector loop covers the first n - n mod V elements, the scalar loop the rest (section 7)."""
    if xa.shape != xb.shape or xa.ndim not in (2, 4):
        raise HwsimError(f"add: requant.add_vector_width needs two operands of one shape [N, C(, H, W)], got "
                         f"{list(xa.shape)} and {list(xb.shape)}")
    nhwc = (lambda t: t.transpose(0, 2, 3, 1)) if xa.ndim == 4 else (lambda t: t)
    a, b = nhwc(xa), nhwc(xb)
    per = int(np.prod(a.shape[1:]))
    if per % v == 0:  # every element in the vector loop, whatever the batch
        y, _ = add(a, b, vector_width=v, impl=impl, **kw)
    else:
        y = np.concatenate([add(a[i:i + 1], b[i:i + 1], vector_width=v, impl=impl, **kw)[0] for i in range(len(a))])
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if xa.ndim == 4 else y