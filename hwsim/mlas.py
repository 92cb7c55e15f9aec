"""ONNX Runtime's QDQ float path: what ORT (CPU EP, x86-64 with AVX2/FMA, one intra-op thread) computes for a
QDQ model with graph optimizations off (ORT_DISABLE_ALL): every node as written, DequantizeLinear -> float32 op
(MLAS) -> QuantizeLinear. The profile ``int8-onnxruntime-qdq-float`` runs it (profile keys requant.mac_form =
"float32_mlas", add_form / mul_form = "float32", pool_form = "float32_mlas"; docs/semantics.md section 17).

Per node (kernel and file names of onnxruntime/core/mlas/lib and core/providers/cpu; every order below is checked
against ORT 1.32 op by op in tests/core/test_mlas.py, and the 1x1-output routes were found by measurement):

- DequantizeLinear: fl32(fl32(q - z) * s) (quantize_linear.cc: static_cast<float>(q - zp) * scale), the int32
  bias included (its scale fl32(s_x * s_w), as onnxruntime.quantization writes it);
- QuantizeLinear: round_half_even(fl32(y / s)) + z, saturated (MlasQuantizeLinear divides by the scale);
- Conv (conv.cc -> MlasConvPrepare / MlasConv, convolve.cpp), per group of filters, the bias added last
  (MlasActivation's bias add, fl32(y + b)):

  * a 1x1 output (N = 1), except one filter per group over two or more input channels: the GEMM with N = 1,
    which MLAS hands to MlasSgemmKernelM1TransposeBAvx (x86_64/SgemmKernelM1TransposeBAvx.S): products rounded
    (vmulps) and added into 8 lanes (lane k mod 8, the K tail zero-padded); filters four at a time reduce the lanes as
    (((l0 + l1) + l2) + l3) + (((l4 + l5) + l6) + l7), a remaining pair as ((l2 + l0) + (l6 + l4)) + ((l3 + l1)
    + (l7 + l5)), a last single filter as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7));
  * else (GemmDirect for other pointwise convs, ExpandThenGemm / ExpandThenGemmSegmented with im2col in
    (channel, kernel row, kernel column) order): K in blocks of StrideK (:func:`strides`, MlasSgemmOperation /
    MlasConvOperation); with two or more filters per group the FMA kernel (SgemmKernelFma3.S): per K block a
    chain fl32(fma(x_k, w_k, acc)) from 0, then C = fl32(acc + C) (the first block stores acc); with one filter
    per group (depthwise; M = 1) MlasSgemmKernelM1Avx (SgemmKernelM1Avx.S): products rounded, summed four at a
    time (((p0 + p1) + p2) + p3) and each group added to C, a tail pair (p0 + p1) + C, a last product p + C (its
    K blocks carry C and hold multiples of four: one pass over all K). Which route a 1x1 output takes (8 lanes
    for any filter count with one input channel per group, the M1 kernel for one filter over several input
    channels) is measured against ORT 1.32 (tests/core/test_mlas.py), not read;
- Gemm (gemm.cc ComputeGemm: the bias broadcast into Y, MlasGemm with beta = 1; B is a DequantizeLinear output,
  not prepacked): two or more rows: the FMA kernel's K blocks of StrideK (N = output features), each block's
  chain from 0 added onto C, which starts as the bias; **one row** (a batch of one image): the M1 transposed-B
  kernel above (rows four at a time over the output features), then fl32(sum + b). ORT's float path thus
  depends on the batch it is given; hwsim's linear sees the executor's batch as its rows, so the two agree for
  the same batches (measured, tests/core/test_mlas.py);
- GlobalAveragePool (pooling.cpp MlasPoolGlobalKernel<MLAS_AVERAGE_POOLING>): per channel four lanes (i mod 4)
  summed in float32, reduced (l0 + l2) + (l1 + l3), the tail added one by one, then fl32(sum / (H * W));
- Add, Mul: fl32(a + b), fl32(a * b) on the dequantized operands (element-wise, no FMA).

Exactness: each float32 operation is one rounding: sums and products of float32 values are computed in float64
and rounded once to float32 (correct for +, *, / as float64 has more than 2 * 24 + 2 bits); an FMA is the
exact float64 product (24 + 24 bits), the float64 sum with its exact error (TwoSum), and one rounding to
float32 corrected at the one case where that double rounding differs (a float64 sum exactly halfway between
two float32 values with a nonzero error). numba without fastmath: no contraction of a*b + c into an FMA.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

STRIDE = 128  # MLAS_SGEMM_STRIDEN = MLAS_SGEMM_STRIDEK (mlasi.h)
FORM = "float32_mlas"  # requant.mac_form / requant.pool_form value
ELTWISE = "float32"  # requant.add_form / requant.mul_form value
# reduction trees of the M1 transposed-B kernel (by a filter's place among the filters of its group)
TREE_FOUR, TREE_TWO, TREE_ONE = 0, 1, 2
_MAGIC = 1.5 * 2.0**52  # (v + M) - M rounds a float64 |v| < 2^51 to an integer, half even


@njit(cache=True)
def strides(n: int, k: int) -> tuple[int, int]:
    """(StrideN, StrideK) of MlasSgemmOperation / MlasConvOperation for N columns and K: the N stride grows
    (K stride halves) while K is small, the K stride grows (N stride halves, not below 16) while N is small."""
    sn, sk = STRIDE, STRIDE
    if n >= k:
        while sk // 2 >= k:
            sn, sk = sn * 2, sk // 2
    else:
        while sn > 16 and sn // 2 >= n:
            sn, sk = sn // 2, sk * 2
    return sn, sk


# ----------------------------------------------------------------------------- float32 steps (numba)
@njit(cache=True)
def _r(v):
    """float64 -> the float32 value it rounds to (half even), kept as float64."""
    return np.float64(np.float32(v))


@njit(cache=True)
def _fma(a, b, c):
    """fl32(a * b + c) rounded once, for float32 values a, b, c held as float64 (module docstring)."""
    p = a * b  # exact: 24 + 24 significant bits
    s = p + c
    yd = np.float64(np.float32(s))
    d = s - yd  # exact (|d| <= half a float32 ulp of s)
    # s is halfway between two float32 values iff d != 0 and o = yd + 2d (exact) is the other one: the only case
    # where the rounding of s to float32 may differ from that of the exact p + c
    o = yd + 2.0 * d
    t = s - p
    e = (p - (s - t)) + (c - t)  # TwoSum: s + e == p + c exactly (e = 0: a true tie, float32(s) rounded it)
    mid = (d != 0.0) & (np.float64(np.float32(o)) == o) & (e != 0.0)
    r = max(yd, o) if e > 0.0 else min(yd, o)
    return r if mid else yd  # selects, no branches: the filters' loop of _chain_blocks vectorizes


@njit(cache=True)
def _chain_blocks(col, wt, m0, fc, k, sk, c, has_c, acc):
    """The FMA kernel for filters [m0, m0 + fc) (wt [K, M]) over all K in blocks of sk: per block a chain
    fl32(fma(x_k, w_k, acc)) from 0, then C = fl32(acc + C) (C[j] starts as given where has_c, else the first
    block's acc). The filters' chains are independent (the inner loop), so they overlap in the CPU."""
    for s in range(0, k, sk):
        acc[:fc] = 0.0
        for i in range(s, min(k, s + sk)):
            xi = col[i]
            for j in range(fc):
                acc[j] = _fma(xi, wt[i, m0 + j], acc[j])
        for j in range(fc):
            c[j] = _r(acc[j] + c[j]) if has_c else acc[j]
        has_c = True


@njit(cache=True)
def _m1(col, w, k, bk):
    """MlasSgemmKernelM1Avx over K in blocks of bk (C carried over): rounded products, four at a time."""
    acc = 0.0
    for s in range(0, k, bk):
        e = min(k, s + bk)
        i = s
        while e - i >= 4:
            g = _r(_r(_r(col[i] * w[i]) + _r(col[i + 1] * w[i + 1])) + _r(col[i + 2] * w[i + 2]))
            g = _r(g + _r(col[i + 3] * w[i + 3]))
            acc = _r(g + acc)
            i += 4
        if (e - i) & 2:
            acc = _r(_r(_r(col[i] * w[i]) + _r(col[i + 1] * w[i + 1])) + acc)
            i += 2
        if (e - i) & 1:
            acc = _r(_r(col[i] * w[i]) + acc)
    return acc


@njit(cache=True)
def _m1t(col, w, k, tree):
    """MlasSgemmKernelM1TransposeBAvx for one output: 8 lanes of rounded products, reduced by ``tree``."""
    kk = (k + 7) // 8 * 8
    lanes = np.zeros(8)
    for i in range(kk):
        p = _r(col[i] * w[i]) if i < k else 0.0
        lanes[i % 8] = _r(lanes[i % 8] + p)
    l0, l1, l2, l3, l4, l5, l6, l7 = lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], lanes[5], lanes[6], lanes[7]
    if tree == TREE_FOUR:
        return _r(_r(_r(_r(l0 + l1) + l2) + l3) + _r(_r(_r(l4 + l5) + l6) + l7))
    if tree == TREE_TWO:
        return _r(_r(_r(l2 + l0) + _r(l6 + l4)) + _r(_r(l3 + l1) + _r(l7 + l5)))
    return _r(_r(_r(l0 + l1) + _r(l2 + l3)) + _r(_r(l4 + l5) + _r(l6 + l7)))


@njit(cache=True)
def _tree(j, m):
    """The M1 transposed-B reduction tree of row j of m rows: four at a time, then a pair, then one."""
    rows4 = m // 4 * 4
    if j < rows4:
        return TREE_FOUR
    if j < rows4 + ((m - rows4) & 2):
        return TREE_TWO
    return TREE_ONE


@njit(cache=True, parallel=True)
def _conv_kernel(x, w, wt, b, has_b, sh, sw, pt, pl, dh, dw, groups, kh, kw, ho, wo, out):
    """out[n, m, oy, ox] (float32) of ORT's float Conv: x float64 [N, C, H, W] (float32 values), w float64
    [M, K] (filters as im2col rows) and wt its transpose [K, M], b float64 [M]."""
    n_img, c_in, h, wd = x.shape
    m_all = w.shape[0]
    fc = m_all // groups
    cg = c_in // groups
    k = cg * kh * kw
    size = ho * wo
    sk = strides(size, k)[1]
    # a 1x1 output takes the 8-lane transposed-B kernel, except one filter per group over several input channels
    # (the M1 kernel); the M1 kernel's K blocks carry C over and are multiples of 4: one pass over all K
    m1t = size == 1 and not (fc == 1 and cg > 1)
    for n in prange(n_img):
        col = np.empty(k)
        acc = np.empty(fc)
        cbuf = np.empty(fc)
        for g in range(groups):
            for oy in range(ho):
                for ox in range(wo):
                    i = 0
                    for c in range(cg):
                        for ky in range(kh):
                            iy = oy * sh - pt + ky * dh
                            for kx in range(kw):
                                ix = ox * sw - pl + kx * dw
                                if 0 <= iy < h and 0 <= ix < wd:
                                    col[i] = x[n, g * cg + c, iy, ix]
                                else:
                                    col[i] = 0.0
                                i += 1
                    if not m1t and fc > 1:
                        _chain_blocks(col, wt, g * fc, fc, k, sk, cbuf, False, acc)
                    for j in range(fc):
                        m = g * fc + j
                        if m1t:
                            r = _m1t(col, w[m], k, _tree(j, fc))
                        elif fc == 1:
                            r = _m1(col, w[m], k, k)
                        else:
                            r = cbuf[j]
                        if has_b:
                            r = _r(r + b[m])
                        out[n, m, oy, ox] = r


@njit(cache=True, parallel=True)
def _gemm_kernel(x, w, wt, b, has_b, out):
    """out[n, m] (float32) of ORT's float Gemm: x float64 [N, K], w float64 [M, K] and its transpose wt,
    b float64 [M]."""
    rows, k = x.shape
    m_all = w.shape[0]
    sk = strides(m_all, k)[1]
    for n in prange(rows):
        if rows == 1:
            for m in range(m_all):
                r = _m1t(x[n], w[m], k, _tree(m, m_all))
                out[n, m] = _r(r + b[m]) if has_b else r
        else:
            c = b.copy()
            _chain_blocks(x[n], wt, 0, m_all, k, sk, c, has_b, np.empty(m_all))
            for m in range(m_all):
                out[n, m] = c[m]


@njit(cache=True)
def _global_avgpool_kernel(x, out):  # serial: the pool may run in execute's batch workers (thread_safe)
    """out[n, c] = MlasPoolGlobalKernel average of x[n, c, :] (float64 holding float32 values)."""
    n_img, ch, hw = x.shape
    for n in range(n_img):
        for c in range(ch):
            a0 = a1 = a2 = a3 = 0.0
            i = 0
            while hw - i >= 4:
                a0 = _r(a0 + x[n, c, i])
                a1 = _r(a1 + x[n, c, i + 1])
                a2 = _r(a2 + x[n, c, i + 2])
                a3 = _r(a3 + x[n, c, i + 3])
                i += 4
            r = _r(_r(a0 + a2) + _r(a1 + a3))
            while i < hw:
                r = _r(r + x[n, c, i])
                i += 1
            out[n, c] = _r(r / hw)


# ----------------------------------------------------------------------------- the ops on float32 arrays
def _f64(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, np.float32), dtype=np.float64)


def conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1) -> np.ndarray:
    """ORT's float32 Conv (x [N, C, H, W], w [M, C/groups, kh, kw], b [M] or None; float32) -> [N, M, Ho, Wo]."""
    from hwsim.ops.core import conv_output_size

    x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = stride, padding, dilation
    kh, kw = w.shape[2], w.shape[3]
    ho = conv_output_size(x.shape[2], kh, sh, pt, pb, dh)
    wo = conv_output_size(x.shape[3], kw, sw, pl, pr, dw)
    out = np.empty((x.shape[0], w.shape[0], ho, wo), np.float32)
    bb = _f64(np.zeros(w.shape[0]) if b is None else b)
    w2 = _f64(w.reshape(w.shape[0], -1))
    _conv_kernel(_f64(x), w2, np.ascontiguousarray(w2.T), bb, b is not None, sh, sw, pt, pl, dh, dw, int(groups),
                 kh, kw, ho, wo, out)
    return out


def gemm(x, w, b=None) -> np.ndarray:
    """ORT's float32 Gemm y = x w^T + b (x [N, K], w [M, K], b [M] or None; float32) -> [N, M]; a single row
    takes the M1 transposed-B kernel (module docstring)."""
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    bb = _f64(np.zeros(w.shape[0]) if b is None else b)
    w2 = _f64(w)
    _gemm_kernel(_f64(x), w2, np.ascontiguousarray(w2.T), bb, b is not None, out)
    return out


def global_avgpool(x) -> np.ndarray:
    """ORT's float32 GlobalAveragePool: [N, C, H, W] -> [N, C, 1, 1]."""
    x = np.asarray(x, np.float32)
    out = np.empty(x.shape[:2], np.float32)
    _global_avgpool_kernel(_f64(x.reshape(x.shape[0], x.shape[1], -1)), out)
    return out.reshape(x.shape[0], x.shape[1], 1, 1)


@njit(cache=True, inline="always")
def _dequantize_range(q, z, s, out, i0, i1):
    for i in range(i0, i1):
        out[i] = np.float64(np.float32(q[i] - z)) * s  # rounded to float32 by the store


@njit(cache=True, inline="always")
def _quantize_range(y, s, z, out, i0, i1):
    for i in range(i0, i1):
        v = np.float64(np.float32(np.float64(y[i]) / s))  # fl32(y / s): one rounding (float64 quotient)
        v = min(max(v, -(2.0**40)), 2.0**40)
        out[i] = np.int64((v + _MAGIC) - _MAGIC) + z  # round half even (|v| <= 2^40 < 2^51)


_BLOCK = 1 << 14  # elements per parallel task


# each twice: parallel, and serial for execute's batch workers (kernels.serial_mode); separate functions, as numba's
# cache keys a compiled function by its Python function and signature, not by its parallel flag
@njit(cache=True, parallel=True)
def _dequantize_par(q, z, s, out):
    for t in prange((q.size + _BLOCK - 1) // _BLOCK):
        _dequantize_range(q, z, s, out, t * _BLOCK, min(q.size, (t + 1) * _BLOCK))


@njit(cache=True, nogil=True)
def _dequantize_ser(q, z, s, out):
    _dequantize_range(q, z, s, out, 0, q.size)


@njit(cache=True, parallel=True)
def _quantize_par(y, s, z, out):
    for t in prange((y.size + _BLOCK - 1) // _BLOCK):
        _quantize_range(y, s, z, out, t * _BLOCK, min(y.size, (t + 1) * _BLOCK))


@njit(cache=True, nogil=True)
def _quantize_ser(y, s, z, out):
    _quantize_range(y, s, z, out, 0, y.size)


def _dequantize_kernel(q, z, s, out):
    from hwsim import kernels

    (_dequantize_ser if kernels.serial() else _dequantize_par)(q, z, s, out)


def _quantize_kernel(y, s, z, out):
    from hwsim import kernels

    (_quantize_ser if kernels.serial() else _quantize_par)(y, s, z, out)


def dequantize(q, scale, zero_point=0, axis: int | None = None) -> np.ndarray:
    """DequantizeLinear: fl32(fl32(q - z) * s); per-channel scale / zero point along ``axis``."""
    q = np.asarray(q)
    s, z = np.asarray(scale, np.float32), np.asarray(zero_point, np.int64)
    if s.ndim == 0 and z.ndim == 0 and q.dtype.kind in "iu" and q.itemsize < 8:  # activations: one pass
        out = np.empty(q.shape, np.float32)
        _dequantize_kernel(np.ascontiguousarray(q).reshape(-1), int(z), np.float64(s), out.reshape(-1))
        return out
    q = q.astype(np.int64)
    if axis is not None and s.ndim == 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        s = s.reshape(shape)
        z = z.reshape(shape) if z.ndim == 1 else z
    return (q - z).astype(np.float32) * s


def quantize(y, scale, zero_point) -> np.ndarray:
    """QuantizeLinear before its saturation: round_half_even(fl32(y / s)) + z as int64 (values far outside any
    grid held at +-2^40; the caller clamps to the grid and counts)."""
    y = np.ascontiguousarray(y, np.float32)
    out = np.empty(y.shape, np.int64)
    _quantize_kernel(y.reshape(-1), np.float64(np.float32(scale)), int(zero_point), out.reshape(-1))
    return out


# ----------------------------------------------------------------------------- hwsim layers (the op hooks)
def wants(lay, key: str) -> bool:
    """Whether the layer's profile puts it on ORT's float path (requant.<key> = the float form)."""
    r = lay.profile.requant if lay.profile is not None else None
    value = getattr(r, key, None)
    return value == (FORM if key in ("mac_form", "pool_form") else ELTWISE)


def _mac_floats(lay, gx):
    """(w, b) float32 of a given-quantized conv2d / linear layer, made once (attribute ``mlas_floats``):
    DequantizeLinear of the integer weights (per-channel scales) and of the int32 bias at fl32(s_x * s_w)."""
    key = (id(lay.w_q), id(lay.bias_q), float(gx.scale))
    cached = getattr(lay, "mlas_floats", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    s_w = np.broadcast_to(np.asarray(lay.w_scale, np.float32), (lay.w_q.shape[0],))
    w = dequantize(lay.w_q, s_w, lay.w_zero_point, axis=0)
    b = None
    if lay.bias_q is not None:
        s_b = (np.float32(gx.scale) * s_w).astype(np.float32)
        b = dequantize(lay.bias_q, s_b, 0, axis=0)
    lay.mlas_floats = (key, (w, b))
    return w, b


def mac(lay, x, gx, gy) -> np.ndarray:
    """A conv2d / linear layer on ORT's float path: int64 output codes before the clamp."""
    w, b = _mac_floats(lay, gx)
    xd = dequantize(x, gx.scale, gx.zero_point)
    if lay.op == "linear":
        y = gemm(xd.reshape(xd.shape[0], -1), w, b)
    else:
        from hwsim.ops.core import _padding, _pair

        a = lay.attrs
        y = conv2d(xd, w, b, _pair(a.get("stride", 1), "stride"), _padding(a.get("padding", (0, 0, 0, 0))),
                   _pair(a.get("dilation", 1), "dilation"), int(a.get("groups", 1)))
    return quantize(y, gy.scale, gy.zero_point)


def eltwise(op: str, xa, xb, sa, za, sb, zb, sy, zy) -> np.ndarray:
    """Add / Mul on ORT's float path: Q(fl32(DQ(a) op DQ(b))) (numpy broadcasting), int64 before the clamp."""
    da, db = dequantize(xa, sa, za), dequantize(xb, sb, zb)
    return quantize(da + db if op == "add" else da * db, sy, zy)


def pool(x, gx, gy) -> np.ndarray:
    """GlobalAveragePool on ORT's float path, int64 before the clamp."""
    return quantize(global_avgpool(dequantize(x, gx.scale, gx.zero_point)), gy.scale, gy.zero_point)
