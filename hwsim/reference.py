"""The spec: plain, slow, readable loops for every hwsim op (Python integers; never optimized).

``hwsim.kernels`` (and the vectorized parts of ``hwsim.ops``) must match these bit for bit; the
tests say so with zero tolerance. Keep test shapes small: every MAC is a Python operation.
Semantics in words: ``docs/semantics.md``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from hwsim.fixedpoint import GOLDEN, INT32_MAX, INT32_MIN

_M64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- scalar helpers (Python ints)
def _wrap(v: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return ((v + half) % (1 << bits)) - half


def _apply(v: int, bits: int | None, policy: str) -> tuple[int, int]:
    """(v after the overflow policy, 1 if v was outside the signed ``bits`` range else 0)."""
    if bits is None:
        return v, 0
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if lo <= v <= hi:
        return v, 0
    if policy == "wrap":
        return _wrap(v, bits), 1
    return min(max(v, lo), hi), 1


def splitmix64_int(z: int) -> int:
    z = (z + GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def stochastic_hash_int(index: int, seed: int) -> int:
    return splitmix64_int((seed & _M64) ^ ((index * GOLDEN) & _M64))


def _tie_up(q: int, tie: str) -> bool:
    return {"half_up": True, "half_away": q >= 0, "half_even": q % 2 == 1}[tie]


def divide_round_int(num: int, den: int, mode: str, seed: int = 0, index: int = 0) -> int:
    """num / den (den > 0) rounded with ``mode``; exact rational arithmetic on Python ints."""
    q, r = divmod(num, den)  # floor division, 0 <= r < den
    if mode == "floor" or r == 0:
        return q
    if mode == "trunc":
        return q + 1 if num < 0 else q
    if mode == "stochastic":
        u24 = stochastic_hash_int(index, seed) >> 40
        return q + 1 if u24 * den >= (den - r) << 24 else q
    if 2 * r > den:
        return q + 1
    if 2 * r < den:
        return q
    return q + 1 if _tie_up(q, mode) else q


def shift_round_int(x: int, n: int, mode: str, seed: int = 0, index: int = 0) -> int:
    """x / 2^n rounded with ``mode`` (n >= 0); stochastic adds the low n bits of the hash."""
    if mode == "stochastic":
        return (x + (stochastic_hash_int(index, seed) & ((1 << n) - 1))) >> n
    return divide_round_int(x, 1 << n, mode)


def round_float_int(v: float, mode: str, seed: int = 0, index: int = 0) -> int:
    """Round a float (exactly representable in float64) with ``mode``; stochastic: floor(fl64(v + u))."""
    v = min(max(float(v), -(2.0**62)), 2.0**62)
    if mode == "stochastic":
        u = (stochastic_hash_int(index, seed) >> 40) * 2.0**-24
        return math.floor(v + u)
    f = math.floor(v)
    frac = v - f  # exact
    if mode == "floor" or frac == 0:
        return f
    if mode == "trunc":
        return f + 1 if v < 0 else f
    if frac > 0.5:
        return f + 1
    if frac < 0.5:
        return f
    return f + 1 if _tie_up(f, mode) else f


def round_to_f32(v: Fraction) -> np.float32:
    """The float32 nearest to the exact rational v, ties to even (v within the float32 range)."""
    c = np.float32(float(v))  # float(Fraction) rounds correctly to float64: c is within one float32 step
    cands = (c, np.nextafter(c, np.float32(np.inf)), np.nextafter(c, np.float32(-np.inf)))
    return min(cands, key=lambda f: (abs(Fraction(float(f)) - v), int(np.array(f).view(np.uint32)) & 1))


def fma_f32_int(x: int, r, z) -> np.float32:
    """fl32(x*r + z) with one rounding (a float32 FMA), exact rational arithmetic."""
    return round_to_f32(Fraction(int(x)) * Fraction(float(r)) + Fraction(float(z)))


def sat32(v: int) -> int:
    return min(max(v, INT32_MIN), INT32_MAX)


def fixed_multiply_int(x: int, q: int, shift: int, multiplier_bits: int, rounding: str,
                       ties: tuple[str, str]) -> int:
    """x * q * 2^(shift - multiplier_bits), the gemmlowp/TFLite/TOSA way (see fixedpoint.multiply_by_quantized_multiplier)."""
    if multiplier_bits == 15 or rounding == "single":
        n = multiplier_bits - shift
        v = x * q << -n if n <= 0 else divide_round_int(x * q, 1 << n, ties[1])
        return sat32(v)
    left, right = max(shift, 0), max(-shift, 0)
    hi = sat32(divide_round_int((x << left) * q, 1 << 31, ties[0]))  # SaturatingRoundingDoublingHighMul
    return divide_round_int(hi, 1 << right, ties[1])  # RoundingDivideByPOT


# ----------------------------------------------------------------------------- accumulation (the MAC-array model)
def accumulate(bias: int, terms: list[tuple[int, int]], acc) -> tuple[int, int, int]:
    """One output element: (value, partial_events, acc_events).

    acc = bias (policy + one acc event if outside A bits); the reduction in canonical order is cut
    into chunks of ``acc.rows`` consecutive k; each chunk sum is exact; if outside P bits it is
    wrapped/saturated (one partial event); acc += chunk; if outside A bits: wrap/saturate (one acc event).
    """
    pe = ae = 0
    a, e = _apply(int(bias), acc.bits, acc.overflow)
    ae += e
    rows = acc.rows or max(len(terms), 1)
    for c0 in range(0, len(terms), rows):
        s = sum(w * x for w, x in terms[c0:c0 + rows])  # the adder tree: exact
        s, e = _apply(s, acc.partial_bits, acc.partial_overflow)
        pe += e
        a, e = _apply(a + s, acc.bits, acc.overflow)
        ae += e
    return a, pe, ae


def linear(x_q, w_q, bias_q, x_zero_point, w_zero_point, acc):
    """acc[n, m] = accumulate(bias[m], [(w[m,k] - zw[m], x[n,k] - zx) for k]); returns (out, pe, ae)."""
    N, K = x_q.shape
    M = w_q.shape[0]
    zw = np.broadcast_to(np.asarray(w_zero_point, dtype=np.int64), (M,))
    out = np.zeros((N, M), dtype=np.int64)
    pe = ae = 0
    for n in range(N):
        for m in range(M):
            b = 0 if bias_q is None else int(bias_q[m])
            terms = [(int(w_q[m, k]) - int(zw[m]), int(x_q[n, k]) - int(x_zero_point)) for k in range(K)]
            out[n, m], p, a = accumulate(b, terms, acc)
            pe, ae = pe + p, ae + a
    return out, pe, ae


def conv2d(x_q, w_q, bias_q, x_zero_point, w_zero_point, stride, padding, dilation, groups, acc):
    """Direct convolution; k runs over (input channel of the group, kernel row, kernel column).

    Padding pixels hold the activation zero point (x - z_x = 0) but still occupy their k slot.
    """
    N, Cin, H, W = x_q.shape
    Cout, Cin_g, KH, KW = w_q.shape
    sh, sw = stride
    pt, pb, pl, pr = padding
    dh, dw = dilation
    Ho = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    Wo = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
    Mg = Cout // groups
    zx = int(x_zero_point)
    zw = np.broadcast_to(np.asarray(w_zero_point, dtype=np.int64), (Cout,))
    out = np.zeros((N, Cout, Ho, Wo), dtype=np.int64)
    pe = ae = 0
    for n in range(N):
        for co in range(Cout):
            g = co // Mg
            b = 0 if bias_q is None else int(bias_q[co])
            for oh in range(Ho):
                for ow in range(Wo):
                    terms = []
                    for ci in range(Cin_g):
                        for i in range(KH):
                            for j in range(KW):
                                ih, iw = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                                xv = int(x_q[n, g * Cin_g + ci, ih, iw]) if 0 <= ih < H and 0 <= iw < W else zx
                                terms.append((int(w_q[co, ci, i, j]) - int(zw[co]), xv - zx))
                    out[n, co, oh, ow], p, a = accumulate(b, terms, acc)
                    pe, ae = pe + p, ae + a
    return out, pe, ae


# ----------------------------------------------------------------------------- requantization
def requantize(acc, params, cfg, z_y, qmin, qmax, channel_axis=1, index=None):
    """Element by element: y = clamp(round(acc * M[c]) + z_y, qmin, qmax); returns (y, clipped)."""
    acc = np.asarray(acc, dtype=np.int64)
    y = np.zeros(acc.shape, dtype=np.int64)
    clipped = 0
    f32 = np.float32
    for pos in np.ndindex(*acc.shape):
        flat = int(np.ravel_multi_index(pos, acc.shape)) if index is None else int(index[pos])
        c = pos[channel_axis] if (acc.ndim and params.channels > 1) else 0
        a = int(acc[pos])
        if cfg.mode == "float32":
            with np.errstate(over="ignore"):
                fa = f32(a)
                if params.src_scale is not None:
                    fa = f32(fa * f32(params.src_scale))
                if params.pre_scale is not None:
                    fa = f32(fa * params.pre_scale[c])
                if params.bias_term is not None:
                    fa = f32(fa + params.bias_term[c])
                v = f32(fa * params.multiplier[c])
                if cfg.zero_point == "before":
                    v = f32(v + f32(z_y))
            r = round_float_int(float(v), cfg.rounding, cfg.seed, flat)
            r = r if cfg.zero_point == "before" else r + int(z_y)
        elif cfg.mode == "fixed":
            r = fixed_multiply_int(a, int(params.q[c]), int(params.shift[c]), cfg.multiplier_bits,
                                   cfg.fixed_rounding, cfg.fixed_ties) + int(z_y)
        else:
            n = int(params.shift[c])
            r = (a << -n if n < 0 else shift_round_int(a, n, cfg.rounding, cfg.seed, flat)) + int(z_y)
        if r < qmin or r > qmax:
            clipped += 1
        y[pos] = min(max(r, qmin), qmax)
    return y, clipped


# ----------------------------------------------------------------------------- pools
def max_pool2d(x_q, kernel, stride, padding, pad_value):
    """out = max over the window; padding pixels hold ``pad_value``."""
    N, C, H, W = x_q.shape
    kh, kw = kernel
    sh, sw = stride
    pt, pb, pl, pr = padding
    Ho, Wo = (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1
    out = np.zeros((N, C, Ho, Wo), dtype=np.int64)
    for n, c, oh, ow in np.ndindex(N, C, Ho, Wo):
        best = None
        for i in range(kh):
            for j in range(kw):
                ih, iw = oh * sh - pt + i, ow * sw - pl + j
                v = int(x_q[n, c, ih, iw]) if 0 <= ih < H and 0 <= iw < W else int(pad_value)
                best = v if best is None else max(best, v)
        out[n, c, oh, ow] = best
    return out


def _pool_ratio(count: int, scale, out_scale) -> Fraction:
    """s / (s_y * count) exactly (float32 scales are dyadic rationals); 1 / count on one grid."""
    if out_scale is None:
        return Fraction(1, count)
    return Fraction(float(np.float32(scale))) / (Fraction(float(np.float32(out_scale))) * count)


def avg_pool2d(x_q, kernel, stride, padding, zero_point, rounding, seed=0, index_offset=0, scale=None,
               out_scale=None, out_zero_point=None):
    """out = z + divide_round(sum(x - z), kh*kw) (count_include_pad: padding holds z).

    Stochastic draws use index index_offset + flat C-order output index. An output grid of its own
    (``out_scale``, ``out_zero_point``; ``scale`` the input's): z_y + round(sum(x - z) * s / (s_y * kh*kw)),
    the rational rounded once.
    """
    N, C, H, W = x_q.shape
    kh, kw = kernel
    sh, sw = stride
    pt, pb, pl, pr = padding
    Ho, Wo = (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1
    z = int(zero_point)
    zy = z if out_zero_point is None else int(out_zero_point)
    ratio = _pool_ratio(kh * kw, scale, out_scale)
    out = np.zeros((N, C, Ho, Wo), dtype=np.int64)
    for pos in np.ndindex(N, C, Ho, Wo):
        n, c, oh, ow = pos
        s = 0
        for i in range(kh):
            for j in range(kw):
                ih, iw = oh * sh - pt + i, ow * sw - pl + j
                if 0 <= ih < H and 0 <= iw < W:
                    s += int(x_q[n, c, ih, iw]) - z
        flat = index_offset + int(np.ravel_multi_index(pos, out.shape))
        out[pos] = zy + divide_round_int(s * ratio.numerator, ratio.denominator, rounding, seed, flat)
    return out


def avg_pool2d_float(x_q, kernel, stride, padding, zero_point, rounding, seed, form, scale, index_offset=0,
                     out_scale=None, out_zero_point=None):
    """The float32 pool forms (ops.avg_pool2d ``form``), exact rational arithmetic, one float32 rounding per step.

    float32_multiplier: z_y + round(fl32(fl32(S) * M)), S = sum(x - z), M = fl32(s / fl32(s_y * fl32(kh*kw)));
    float32_dequantize: acc = 0; acc = fl32(acc + fl32(s (x - z))) over the real window pixels row by row;
    round(fl32(fl32(fl32(acc / kh*kw) / s_y) + z_y)). The output grid (s_y, z_y) is the input's unless
    ``out_scale`` / ``out_zero_point`` give another (an imported model's own output grid).
    """
    N, C, H, W = x_q.shape
    kh, kw = kernel
    sh, sw = stride
    pt, pb, pl, pr = padding
    Ho, Wo = (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1
    z, s, count = int(zero_point), Fraction(float(scale)), kh * kw
    sy = s if out_scale is None else Fraction(float(np.float32(out_scale)))
    zy = z if out_zero_point is None else int(out_zero_point)
    m = Fraction(float(round_to_f32(s / Fraction(float(round_to_f32(sy * count))))))
    out = np.zeros((N, C, Ho, Wo), dtype=np.int64)
    for pos in np.ndindex(N, C, Ho, Wo):
        n, c, oh, ow = pos
        total, acc = 0, Fraction(0)
        for i in range(kh):
            for j in range(kw):
                ih, iw = oh * sh - pt + i, ow * sw - pl + j
                if 0 <= ih < H and 0 <= iw < W:
                    d = int(x_q[n, c, ih, iw]) - z
                    total += d
                    acc = Fraction(float(round_to_f32(acc + Fraction(float(round_to_f32(s * d))))))
        flat = index_offset + int(np.ravel_multi_index(pos, out.shape))
        if form == "float32_multiplier":
            v = round_to_f32(Fraction(float(round_to_f32(Fraction(total)))) * m)
            out[pos] = zy + round_float_int(float(v), rounding, seed, flat)
        elif form == "inductor":  # times the float32 value of the double 1/s_y; z_y after rounding
            avg = Fraction(float(round_to_f32(acc / count)))
            v = round_to_f32(avg * Fraction(float(np.float32(1.0 / float(sy)))))
            out[pos] = zy + round_float_int(float(v), rounding, seed, flat)
        else:
            avg = Fraction(float(round_to_f32(acc / count)))
            v = round_to_f32(Fraction(float(round_to_f32(avg / sy))) + zy)
            out[pos] = round_float_int(float(v), rounding, seed, flat)
    return out


def global_avg_pool(x_q, zero_point, rounding, seed=0, index_offset=0, scale=None, out_scale=None,
                    out_zero_point=None):
    """out[n, c] = z + divide_round(sum_hw(x - z), H*W); stochastic index index_offset + n*C + c; an own
    output grid as :func:`avg_pool2d`."""
    N, C, H, W = x_q.shape
    z = int(zero_point)
    zy = z if out_zero_point is None else int(out_zero_point)
    ratio = _pool_ratio(H * W, scale, out_scale)
    out = np.zeros((N, C), dtype=np.int64)
    for n, c in np.ndindex(N, C):
        s = sum(int(v) - z for v in x_q[n, c].ravel())
        out[n, c] = zy + divide_round_int(s * ratio.numerator, ratio.denominator, rounding, seed,
                                          index_offset + n * C + c)
    return out


# ----------------------------------------------------------------------------- add
def add(a_q, b_q, p, cfg, qmin, qmax, tail=0, swap=False, vector_body=0, index_offset=0):
    """Element-wise add with the parameters ``p`` from ops.add_params; returns (y, clipped).

    float32: the last ``tail`` elements (C order) follow PyTorch's scalar path (ops.add ``vector_width``).
    float32 with add_form "ratio_fma" (ONNX Runtime QLinearAdd): ``swap`` exchanges the operand roles.
    fixed: the first ``vector_body`` elements follow TFLite's vector loop (ops.add ``vector_width``).
    """
    a_q, b_q = np.broadcast_arrays(np.asarray(a_q, np.int64), np.asarray(b_q, np.int64))
    y = np.zeros(a_q.shape, dtype=np.int64)
    clipped = 0
    f32 = np.float32
    for pos in np.ndindex(*a_q.shape):
        a, b = int(a_q[pos]), int(b_q[pos])
        flat = int(np.ravel_multi_index(pos, a_q.shape))
        vflat = flat  # position in the vector/scalar loops (tail, vector_body)
        flat += index_offset  # stochastic draw index
        if cfg.mode == "float32" and cfg.add_form == "ratio_fma":
            # ONNX Runtime QLinearAdd (MLAS AVX2): ratios r = fl32(s / s_y); zero points folded into K;
            # y = round(fma(P, r_P, fma(Q, r_Q, K))), K = fl32(z_y - fma(r_P, z_P, fl32(r_Q z_Q)))
            P, rp, zp, Q, rq, zq = a, p.a_ratio, p.a_zero_point, b, p.b_ratio, p.b_zero_point
            if swap:
                P, rp, zp, Q, rq, zq = Q, rq, zq, P, rp, zp
            k = f32(f32(p.y_zero_point) - fma_f32_int(zp, rp, f32(f32(rq) * f32(zq))))
            v = fma_f32_int(P, rp, fma_f32_int(Q, rq, k))
            r = round_float_int(float(v), cfg.rounding, cfg.seed, flat)
        elif cfg.mode == "float32" and vflat >= a_q.size - tail:
            # PyTorch's scalar path: da = fl32((a - z_a) * s_a); round(fl32(fl32(c * fl32(1/s_y)) + z_y))
            da = f32((a - p.a_zero_point) * float(p.a_scale))
            db = f32((b - p.b_zero_point) * float(p.b_scale))
            v = f32(f32(da + db) * p.inv_y_scale)
            r = round_float_int(float(f32(v + f32(p.y_zero_point))), cfg.rounding, cfg.seed, flat)
        elif cfg.mode == "float32":
            # PyTorch quantized add (x86): da = fma(s_a, a, -fl32(s_a*z_a)); c = da + db; round(c * fl32(1/s_y)) + z_y
            da = f32(float(p.a_scale) * a + float(p.a_premul))  # exact in float64, one rounding = fma
            db = f32(float(p.b_scale) * b + float(p.b_premul))
            c = f32(da + db)
            v = f32(c * p.inv_y_scale)
            if cfg.zero_point == "before":
                r = round_float_int(float(f32(v + f32(p.y_zero_point))), cfg.rounding, cfg.seed, flat)
            else:
                r = round_float_int(float(v), cfg.rounding, cfg.seed, flat) + p.y_zero_point
        elif cfg.mode == "fixed":
            # TFLite int8 ADD: inputs shifted left by 20, rescaled to 2*max(s_a, s_b), summed, rescaled to s_y
            def mul(x, qs):
                return fixed_multiply_int(x, qs[0], qs[1], cfg.multiplier_bits, cfg.fixed_rounding, cfg.fixed_ties)
            def vin(x, qs):  # TFLite's vector loop: SRDHM(x << (20 + shift), q), one rounding
                n = p.left_shift + qs[1]
                return fixed_multiply_int(x << n if n >= 0 else x >> -n, qs[0], 0, 31, "double", cfg.fixed_ties)
            if vflat < vector_body:
                sa, sb = vin(a - p.a_zero_point, p.a_mult), vin(b - p.b_zero_point, p.b_mult)
            else:
                sa = mul((a - p.a_zero_point) << p.left_shift, p.a_mult)
                sb = mul((b - p.b_zero_point) << p.left_shift, p.b_mult)
            r = mul(sa + sb, p.y_mult) + p.y_zero_point
        else:
            # pow2: exact sum on the finer grid 2^e0, then one rounding shift to 2^ey
            e0 = min(p.a_exp, p.b_exp)
            s = ((a - p.a_zero_point) << (p.a_exp - e0)) + ((b - p.b_zero_point) << (p.b_exp - e0))
            n = p.y_exp - e0
            r = (s << -n if n < 0 else shift_round_int(s, n, cfg.rounding, cfg.seed, flat)) + p.y_zero_point
        if r < qmin or r > qmax:
            clipped += 1
        y[pos] = min(max(r, qmin), qmax)
    return y, clipped
