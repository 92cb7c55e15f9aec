"""Fast kernels for conv/linear accumulation, bit-exact to ``hwsim.reference`` (docs/semantics.md, section 10).

- :func:`im2col` / :func:`im2col_serial` (numba) lay a block of samples out as columns
  ``cols[n, k, position]`` of x - z_x, k in canonical order (input channel, kernel row, kernel
  column); padding pixels are 0.
- :func:`accumulate_rows` / :func:`accumulate_rows_f32` (numba, parallel over positions) are
  the MAC-array model itself: chunks of R products summed exactly, the P-bit partial register,
  the A-bit accumulator and the event counters, one output position (all groups and channels)
  at a time. The float32 variant is used only where every value it holds is provably < 2^24.
- Exact BLAS: when every partial sum of sum_k |w_k - z_w| |x_k - z_x| is provably < 2^24
  (float32) or < 2^53 (float64), a float matmul of the integer operands is exact in any order.
  A layer whose per-channel static bound fits the accumulator is one such matmul. Otherwise a
  position whose data bound |b| + sum_k |w_k - z_w| |x_k - z_x| fits cannot overflow either;
  :func:`risky_positions` screens the first sample to choose between "BLAS everywhere + model
  kernel on risky positions" and "model kernel everywhere".

Module-level njit functions write into caller-allocated arrays; cache=True, no fastmath.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from hwsim import accumulate as _acc
from hwsim.errors import HwsimError

try:  # optional: pins BLAS to one thread inside hwsim calls (installed with scikit-learn, which mlxtend needs)
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - correctness never depends on it, only speed
    ThreadpoolController = None

if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
    # numba's OpenMP layer shares libgomp with torch (loaded first) and its idle threads spin between
    # parallel regions, taking the cores of hwsim's own worker threads (int8 GEMMs, BLAS blocks): 2.5-6x
    # slower whole networks on 2 busy cores. The workqueue layer's threads sleep. hwsim never calls a
    # parallel kernel from two threads at once (workers run the serial nogil kernels only), which
    # workqueue requires. A user's NUMBA_THREADING_LAYER is kept.
    numba.config.THREADING_LAYER = "workqueue"

MODE_NONE, MODE_WRAP, MODE_SAT = 0, 1, 2
_POLICY = {"wrap": MODE_WRAP, "saturate": MODE_SAT}
BLOCK_BYTES = 6 << 20  # im2col block budget (a reused, cache-friendly buffer)
EXACT_F32 = 1 << 24
EXACT_F64 = 1 << 53
INT64_LIMIT = 1 << 62  # |bias| + sum |w||x| must stay below this (int64 simulation with a spare bit)


# ----------------------------------------------------------------------------- numba kernels
@njit(parallel=True, cache=True)
def pad_shift(x, zx, pt, pl, out):
    """out[n, c, pt + i, pl + j] = x[n, c, i, j] - zx; the caller zeroes ``out`` (padding pixels hold z_x)."""
    N, C, H, W = x.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        for i in range(H):
            for j in range(W):
                out[n, c, pt + i, pl + j] = x[n, c, i, j] - zx


@njit(cache=True, nogil=True, inline="always")
def _im2col_channel(xp, n0, i, c, geom, out):
    """The rows of input channel c of sample n0 + i: out[i, (c*kh + a)*kw + b, oh*Wo + ow]."""
    kh, kw, sh, sw, dh, dw, Ho, Wo = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7]
    for a in range(kh):
        for b in range(kw):
            k = (c * kh + a) * kw + b
            for oh in range(Ho):
                ih = oh * sh + a * dh
                base = oh * Wo
                for ow in range(Wo):
                    out[i, k, base + ow] = xp[n0 + i, c, ih, ow * sw + b * dw]


@njit(parallel=True, cache=True)
def im2col(xp, n0, geom, out):
    """out[i, (c*kh + a)*kw + b, oh*Wo + ow] = xp[n0+i, c, oh*sh + a*dh, ow*sw + b*dw] (k in canonical order).

    ``xp`` is the input minus its zero point, already padded with zeros; geom = (kh, kw, sh, sw, dh, dw, Ho, Wo).
    """
    C = xp.shape[1]
    nb = out.shape[0]
    for t in prange(nb * C):
        i = t // C
        _im2col_channel(xp, n0, i, t - i * C, geom, out)


@njit(parallel=True, cache=True)
def im2col_positions(xp, n0, geom, out):
    """Position-major :func:`im2col`: out[i, oh*Wo + ow, k] (contiguous in k, what the model kernel reads)."""
    kh, kw, sh, sw, dh, dw, Ho, Wo = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7]
    C = xp.shape[1]
    nb = out.shape[0]
    for t in prange(nb * Ho):
        i = t // Ho
        oh = t - i * Ho
        for ow in range(Wo):
            row = oh * Wo + ow
            for c in range(C):
                for a in range(kh):
                    ih = oh * sh + a * dh
                    for b in range(kw):
                        out[i, row, (c * kh + a) * kw + b] = xp[n0 + i, c, ih, ow * sw + b * dw]


@njit(cache=True, nogil=True)
def im2col_positions_serial(xp, n0, geom, out):
    """Single-threaded :func:`im2col_positions`, releasing the GIL (hwsim's own worker threads)."""
    kh, kw, sh, sw, dh, dw, Ho, Wo = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7]
    C = xp.shape[1]
    for i in range(out.shape[0]):
        for oh in range(Ho):
            for ow in range(Wo):
                row = oh * Wo + ow
                for c in range(C):
                    for a in range(kh):
                        ih = oh * sh + a * dh
                        for b in range(kw):
                            out[i, row, (c * kh + a) * kw + b] = xp[n0 + i, c, ih, ow * sw + b * dw]


@njit(cache=True, nogil=True)
def im2col_serial(xp, n0, geom, out):
    """Single-threaded :func:`im2col`, releasing the GIL (run in hwsim's own worker threads beside BLAS calls)."""
    for i in range(out.shape[0]):
        for c in range(xp.shape[1]):
            _im2col_channel(xp, n0, i, c, geom, out)


@njit(parallel=True, cache=True)
def accumulate_rows(cols, k0, wT, bias, rows_sel, spec, acc_buf, out, events):
    """MAC-array model for output positions p = rows_sel[j] (n = p // L, l = p % L), all groups and channels.

    out[n, g*M + m, l] = accumulation of bias[g*M + m] + sum_k cols[n, k0 + g*K + k, l] * wT[g, k, m]
    with wT [G, K, M]; spec = (a_bits, a_mode, p_bits, p_mode, R), mode 0 = unbounded, 1 = wrap,
    2 = saturate (bits <= 62). Chunks of R consecutive k are summed exactly in wT's dtype and the
    running accumulator is kept in acc_buf's dtype (the caller proves neither can overflow);
    events[j] = (partial events, acc events) of position rows_sel[j].
    """
    G, K, M = wT.shape
    L = cols.shape[2]
    a_bits, a_mode, p_bits, p_mode, R = spec[0], spec[1], spec[2], spec[3], spec[4]
    if a_mode == MODE_NONE:
        a_bits = 62
    if p_mode == MODE_NONE:
        p_bits = 62
    a_lo = -(np.int64(1) << (a_bits - 1))
    a_hi = -a_lo - 1
    a_mask = (np.int64(1) << a_bits) - 1
    p_lo = -(np.int64(1) << (p_bits - 1))
    p_hi = -p_lo - 1
    p_mask = (np.int64(1) << p_bits) - 1
    npos = rows_sel.shape[0]
    nchunk = min(npos, 256)
    for t in prange(nchunk):
        acc = np.empty(M, acc_buf.dtype)  # per-chunk scratch, reused for every position of the chunk
        s = np.empty(M, wT.dtype)
        for j in range(t * npos // nchunk, (t + 1) * npos // nchunk):
            p = rows_sel[j]
            n = p // L
            l = p - n * L
            pe = np.int64(0)
            ae = np.int64(0)
            for g in range(G):
                kg = k0 + g * K
                for m in range(M):
                    b = bias[g * M + m]
                    if a_mode != MODE_NONE and (b < a_lo or b > a_hi):
                        ae += 1
                        if a_mode == MODE_WRAP:
                            b = ((b - a_lo) & a_mask) + a_lo
                        else:
                            b = min(max(b, a_lo), a_hi)
                    acc[m] = b
                if R == 1 and p_mode == MODE_NONE and a_mode == MODE_SAT:
                    # saturation after every MAC, fused into one pass over the channels
                    for k in range(K):
                        xv = np.int64(cols[n, kg + k, l])
                        if xv != 0:
                            for m in range(M):
                                v = acc[m] + xv * wT[g, k, m]
                                c = min(max(v, a_lo), a_hi)
                                ae += np.int64(c != v)  # clamping changed v <=> v left the range
                                acc[m] = c
                else:
                    for c0 in range(0, K, R):
                        for m in range(M):
                            s[m] = 0
                        for k in range(c0, min(c0 + R, K)):
                            xv = np.int64(cols[n, kg + k, l])
                            if xv != 0:
                                for m in range(M):
                                    s[m] += xv * wT[g, k, m]
                        if p_mode == MODE_WRAP:
                            for m in range(M):
                                v = np.int64(s[m])
                                c = ((v - p_lo) & p_mask) + p_lo
                                pe += np.int64(c != v)
                                s[m] = c
                        elif p_mode == MODE_SAT:
                            for m in range(M):
                                v = np.int64(s[m])
                                c = min(max(v, p_lo), p_hi)
                                pe += np.int64(c != v)
                                s[m] = c
                        if a_mode == MODE_NONE:
                            for m in range(M):
                                acc[m] += s[m]
                        elif a_mode == MODE_WRAP:
                            for m in range(M):
                                v = acc[m] + s[m]
                                c = ((v - a_lo) & a_mask) + a_lo
                                ae += np.int64(c != v)
                                acc[m] = c
                        else:
                            for m in range(M):
                                v = acc[m] + s[m]
                                c = min(max(v, a_lo), a_hi)
                                ae += np.int64(c != v)
                                acc[m] = c
                for m in range(M):
                    out[n, g * M + m, l] = acc[m]
            events[j, 0] = pe
            events[j, 1] = ae


@njit(parallel=True, cache=True)
def accumulate_rows_f32(cols, k0, wT, bias, rows_sel, spec, out, events):
    """:func:`accumulate_rows` in float32 arithmetic (16 SIMD lanes), for problems where that is exact.

    Preconditions (checked by the caller): every integer the model holds -- products, chunk sums,
    the running accumulator plus one chunk, wrap intermediates -- is below 2^24 in magnitude, so
    every float32 add, multiply, min/max and floor here is exact integer arithmetic. cols and wT
    are float32 holding integers; wrapping is v - 2^bits * floor((v - lo) / 2^bits).
    """
    G, K, M = wT.shape
    L = cols.shape[2]
    a_bits, a_mode, p_bits, p_mode, R = spec[0], spec[1], spec[2], spec[3], spec[4]
    if a_mode == MODE_NONE:
        a_bits = 30
    if p_mode == MODE_NONE:
        p_bits = 30
    a_lo_i = -(np.int64(1) << (a_bits - 1))
    a_hi_i = -a_lo_i - 1
    a_lo = np.float32(a_lo_i)  # exact: a_bits <= 24 whenever a_mode != MODE_NONE
    a_hi = np.float32(a_hi_i)
    a_mod = np.float32(2.0) ** np.float32(a_bits)
    a_inv = np.float32(1.0) / a_mod
    p_lo = np.float32(-(np.int64(1) << (p_bits - 1)))
    p_hi = np.float32((np.int64(1) << (p_bits - 1)) - 1)
    p_mod = np.float32(2.0) ** np.float32(p_bits)
    p_inv = np.float32(1.0) / p_mod
    npos = rows_sel.shape[0]
    nchunk = min(npos, 256)
    for t in prange(nchunk):
        acc = np.empty(M, np.float32)  # per-chunk scratch, reused for every position of the chunk
        s = np.empty(M, np.float32)
        pcnt = np.empty(M, np.float32)  # event counts <= K < 2^24 per group: exact in float32 (faster SIMD)
        acnt = np.empty(M, np.float32)
        for j in range(t * npos // nchunk, (t + 1) * npos // nchunk):
            p = rows_sel[j]
            n = p // L
            l = p - n * L
            pe = np.int64(0)
            ae = np.int64(0)
            for g in range(G):
                kg = k0 + g * K
                for m in range(M):
                    pcnt[m] = 0
                    acnt[m] = 0
                    b = bias[g * M + m]
                    if a_mode != MODE_NONE and (b < a_lo_i or b > a_hi_i):
                        ae += 1
                        if a_mode == MODE_WRAP:
                            b = ((b - a_lo_i) & ((np.int64(1) << a_bits) - 1)) + a_lo_i
                        else:
                            b = min(max(b, a_lo_i), a_hi_i)
                    acc[m] = np.float32(b)
                if R == 1 and p_mode == MODE_NONE and a_mode == MODE_SAT:
                    # saturation after every MAC; k unrolled by 4 so acc/acnt stay in registers across 4 MACs
                    # (the same sequence of clamps; x = 0 adds 0 to an in-range value: no event, no branch)
                    K4 = K - K % 4
                    for k in range(0, K4, 4):
                        x0 = cols[n, kg + k, l]
                        x1 = cols[n, kg + k + 1, l]
                        x2 = cols[n, kg + k + 2, l]
                        x3 = cols[n, kg + k + 3, l]
                        for m in range(M):
                            a = acc[m]
                            e = acnt[m]
                            v = a + x0 * wT[g, k, m]
                            a = min(max(v, a_lo), a_hi)
                            e += np.float32(1.0) if a != v else np.float32(0.0)  # clamping changed v <=> left range
                            v = a + x1 * wT[g, k + 1, m]
                            a = min(max(v, a_lo), a_hi)
                            e += np.float32(1.0) if a != v else np.float32(0.0)
                            v = a + x2 * wT[g, k + 2, m]
                            a = min(max(v, a_lo), a_hi)
                            e += np.float32(1.0) if a != v else np.float32(0.0)
                            v = a + x3 * wT[g, k + 3, m]
                            a = min(max(v, a_lo), a_hi)
                            e += np.float32(1.0) if a != v else np.float32(0.0)
                            acc[m] = a
                            acnt[m] = e
                    for k in range(K4, K):
                        xv = cols[n, kg + k, l]
                        for m in range(M):
                            v = acc[m] + xv * wT[g, k, m]
                            c = min(max(v, a_lo), a_hi)
                            acnt[m] += np.float32(1.0) if c != v else np.float32(0.0)
                            acc[m] = c
                else:
                    for c0 in range(0, K, R):
                        for m in range(M):
                            s[m] = 0
                        c1 = min(c0 + R, K)
                        c4 = c1 - (c1 - c0) % 4
                        # the chunk sum is exact in any order (every partial sum <= the chunk's |.|-bound
                        # < 2^24): 4 products per pass keep s[m] in a register
                        for k in range(c0, c4, 4):
                            x0 = cols[n, kg + k, l]
                            x1 = cols[n, kg + k + 1, l]
                            x2 = cols[n, kg + k + 2, l]
                            x3 = cols[n, kg + k + 3, l]
                            for m in range(M):
                                s[m] += ((x0 * wT[g, k, m] + x1 * wT[g, k + 1, m])
                                         + (x2 * wT[g, k + 2, m] + x3 * wT[g, k + 3, m]))
                        for k in range(c4, c1):
                            xv = cols[n, kg + k, l]
                            for m in range(M):
                                s[m] += xv * wT[g, k, m]
                        if p_mode == MODE_WRAP:
                            for m in range(M):
                                v = s[m]
                                c = v - p_mod * np.floor((v - p_lo) * p_inv)
                                pcnt[m] += (np.float32(1.0) if c != v else np.float32(0.0))
                                s[m] = c
                        elif p_mode == MODE_SAT:
                            for m in range(M):
                                v = s[m]
                                c = min(max(v, p_lo), p_hi)
                                pcnt[m] += (np.float32(1.0) if c != v else np.float32(0.0))
                                s[m] = c
                        if a_mode == MODE_NONE:
                            for m in range(M):
                                acc[m] += s[m]
                        elif a_mode == MODE_WRAP:
                            for m in range(M):
                                v = acc[m] + s[m]
                                c = v - a_mod * np.floor((v - a_lo) * a_inv)
                                acnt[m] += (np.float32(1.0) if c != v else np.float32(0.0))
                                acc[m] = c
                        else:
                            for m in range(M):
                                v = acc[m] + s[m]
                                c = min(max(v, a_lo), a_hi)
                                acnt[m] += (np.float32(1.0) if c != v else np.float32(0.0))
                                acc[m] = c
                for m in range(M):
                    out[n, g * M + m, l] = np.int64(acc[m])
                    pe += np.int64(pcnt[m])
                    ae += np.int64(acnt[m])
            events[j, 0] = pe
            events[j, 1] = ae


@njit(parallel=True, cache=True)
def accumulate_chunks_f32(S, bias, spec, L, out, events):
    """The MAC-array model from exact chunk sums: S[c, p, m] = sum of chunk c's R products of position
    p = i*L + l (float32 holding integers), out[i, m, l], events[p] = (partial events, acc events).

    The chunk loop of :func:`accumulate_rows_f32` (P-bit register, then the A-bit accumulator,
    chunk by chunk in k order) with the products already summed, under the same preconditions
    (every value below 2^24: float32 arithmetic is exact integer arithmetic). One group.
    """
    C, P, M = S.shape
    a_bits, a_mode, p_bits, p_mode = spec[0], spec[1], spec[2], spec[3]
    if a_mode == MODE_NONE:
        a_bits = 30
    if p_mode == MODE_NONE:
        p_bits = 30
    a_lo_i = -(np.int64(1) << (a_bits - 1))
    a_hi_i = -a_lo_i - 1
    a_lo = np.float32(a_lo_i)
    a_hi = np.float32(a_hi_i)
    a_mod = np.float32(2.0) ** np.float32(a_bits)
    a_inv = np.float32(1.0) / a_mod
    p_lo = np.float32(-(np.int64(1) << (p_bits - 1)))
    p_hi = np.float32((np.int64(1) << (p_bits - 1)) - 1)
    p_mod = np.float32(2.0) ** np.float32(p_bits)
    p_inv = np.float32(1.0) / p_mod
    nchunk = min(P, 256)
    for t in prange(nchunk):
        acc = np.empty(M, np.float32)
        b0 = np.empty(M, np.float32)
        pcnt = np.empty(M, np.float32)
        acnt = np.empty(M, np.float32)
        bev = np.int64(0)  # bias events per position (bias outside the accumulator)
        for m in range(M):
            b = bias[m]
            if a_mode != MODE_NONE and (b < a_lo_i or b > a_hi_i):
                bev += 1
                if a_mode == MODE_WRAP:
                    b = ((b - a_lo_i) & ((np.int64(1) << a_bits) - 1)) + a_lo_i
                else:
                    b = min(max(b, a_lo_i), a_hi_i)
            b0[m] = np.float32(b)
        for p in range(t * P // nchunk, (t + 1) * P // nchunk):
            i = p // L
            l = p - i * L
            for m in range(M):
                acc[m] = b0[m]
                pcnt[m] = 0
                acnt[m] = 0
            for c in range(C):
                if p_mode == MODE_WRAP:
                    for m in range(M):
                        v = S[c, p, m]
                        w = v - p_mod * np.floor((v - p_lo) * p_inv)
                        pcnt[m] += np.float32(1.0) if w != v else np.float32(0.0)
                        v = acc[m] + w
                        if a_mode == MODE_WRAP:
                            w = v - a_mod * np.floor((v - a_lo) * a_inv)
                        elif a_mode == MODE_SAT:
                            w = min(max(v, a_lo), a_hi)
                        else:
                            w = v
                        acnt[m] += np.float32(1.0) if w != v else np.float32(0.0)
                        acc[m] = w
                elif p_mode == MODE_SAT:
                    for m in range(M):
                        v = S[c, p, m]
                        w = min(max(v, p_lo), p_hi)
                        pcnt[m] += np.float32(1.0) if w != v else np.float32(0.0)
                        v = acc[m] + w
                        if a_mode == MODE_WRAP:
                            w = v - a_mod * np.floor((v - a_lo) * a_inv)
                        elif a_mode == MODE_SAT:
                            w = min(max(v, a_lo), a_hi)
                        else:
                            w = v
                        acnt[m] += np.float32(1.0) if w != v else np.float32(0.0)
                        acc[m] = w
                elif a_mode == MODE_SAT:
                    for m in range(M):
                        v = acc[m] + S[c, p, m]
                        w = min(max(v, a_lo), a_hi)
                        acnt[m] += np.float32(1.0) if w != v else np.float32(0.0)
                        acc[m] = w
                elif a_mode == MODE_WRAP:
                    for m in range(M):
                        v = acc[m] + S[c, p, m]
                        w = v - a_mod * np.floor((v - a_lo) * a_inv)
                        acnt[m] += np.float32(1.0) if w != v else np.float32(0.0)
                        acc[m] = w
                else:
                    for m in range(M):
                        acc[m] += S[c, p, m]
            pe = np.int64(0)
            ae = bev
            for m in range(M):
                out[i, m, l] = np.int64(acc[m])
                pe += np.int64(pcnt[m])
                ae += np.int64(acnt[m])
            events[p, 0] = pe
            events[p, 1] = ae


@njit(parallel=True, cache=True)
def accumulate_planes(cols, k0, wT, bias, spec, lims, out, events):
    """The MAC-array model vectorized over positions: one (sample, group, channel) plane at a time.

    Same semantics as :func:`accumulate_rows` (out[n, g*M + m, l], every position l < L of every
    sample), for few output channels per group (depthwise convs). Arithmetic runs in lims' dtype
    (float32 where the caller proved it exact, else int64); lims = (a_lo, a_hi, a_mod, p_lo, p_hi,
    p_mod) in that dtype; wrapping is v - mod * ((v - lo) // mod). events[t] = (partial events,
    acc events) of plane t = (n * G + g) * M + m.
    """
    G, K, M = wT.shape
    nb = cols.shape[0]
    L = cols.shape[2]
    a_bits, a_mode, p_mode, R = spec[0], spec[1], spec[3], spec[4]
    a_lo, a_hi, a_mod, p_lo, p_hi, p_mod = lims[0], lims[1], lims[2], lims[3], lims[4], lims[5]
    a_lo_i = -(np.int64(1) << (min(a_bits, 62) - 1)) if a_mode != MODE_NONE else np.int64(0)
    a_hi_i = -a_lo_i - 1
    for t in prange(nb * G * M):
        n = t // (G * M)
        g = (t - n * G * M) // M
        m = t - n * G * M - g * M
        acc = np.empty(L, lims.dtype)
        s = np.empty(L, lims.dtype)
        pe = np.int64(0)
        ae = np.int64(0)
        b = bias[g * M + m]
        if a_mode != MODE_NONE and (b < a_lo_i or b > a_hi_i):
            ae += L  # one event per output position
            if a_mode == MODE_WRAP:
                b = ((b - a_lo_i) & ((np.int64(1) << a_bits) - 1)) + a_lo_i
            else:
                b = min(max(b, a_lo_i), a_hi_i)
        for l in range(L):
            acc[l] = b
        kg = k0 + g * K
        if R == 1 and p_mode == MODE_NONE and a_mode == MODE_SAT:
            for k in range(K):
                wv = wT[g, k, m]
                if wv != 0:
                    for l in range(L):
                        v = acc[l] + wv * cols[n, kg + k, l]
                        c = min(max(v, a_lo), a_hi)
                        ae += np.int64(c != v)
                        acc[l] = c
        else:
            for c0 in range(0, K, R):
                for l in range(L):
                    s[l] = 0
                for k in range(c0, min(c0 + R, K)):
                    wv = wT[g, k, m]
                    if wv != 0:
                        for l in range(L):
                            s[l] += wv * cols[n, kg + k, l]
                if p_mode == MODE_WRAP:
                    for l in range(L):
                        v = s[l]
                        c = v - p_mod * ((v - p_lo) // p_mod)
                        pe += np.int64(c != v)
                        s[l] = c
                elif p_mode == MODE_SAT:
                    for l in range(L):
                        v = s[l]
                        c = min(max(v, p_lo), p_hi)
                        pe += np.int64(c != v)
                        s[l] = c
                if a_mode == MODE_NONE:
                    for l in range(L):
                        acc[l] += s[l]
                elif a_mode == MODE_WRAP:
                    for l in range(L):
                        v = acc[l] + s[l]
                        c = v - a_mod * ((v - a_lo) // a_mod)
                        ae += np.int64(c != v)
                        acc[l] = c
                else:
                    for l in range(L):
                        v = acc[l] + s[l]
                        c = min(max(v, a_lo), a_hi)
                        ae += np.int64(c != v)
                        acc[l] = c
        for l in range(L):
            out[n, g * M + m, l] = np.int64(acc[l])
        events[t, 0] = pe
        events[t, 1] = ae


@njit(parallel=True, cache=True)
def risky_positions(cols, k0, wabsT, babs, a_thr, p_thr, mask):
    """mask[p] = any_m (babs[m] + d[m] > a_thr or d[m] > p_thr), d[m] = sum_k |cols[n, k0+k, l]| wabsT[k, m], p < mask.size.

    d is summed in wabsT's float dtype, exact because the caller proves every partial sum is below
    2^24 (float32) or 2^53 (float64); the comparisons are done in int64.
    """
    K = wabsT.shape[0]
    M = wabsT.shape[1]
    L = cols.shape[2]
    for p in prange(mask.shape[0]):
        n = p // L
        l = p - n * L
        d = np.zeros(M, wabsT.dtype)
        for k in range(K):
            xv = abs(cols[n, k0 + k, l])
            if xv != 0:
                for m in range(M):
                    d[m] += xv * wabsT[k, m]
        r = False
        for m in range(M):
            di = np.int64(d[m])
            if babs[m] + di > a_thr or di > p_thr:
                r = True
        mask[p] = r


# ----------------------------------------------------------------------------- planning (exact Python ints)
@dataclass
class _Plan:
    """What one GEMM problem (a linear layer, or one conv group) needs, decided from weights and max |x - z_x|."""

    w_kernel: np.ndarray  # [K, M] w - z_w, int32 when every chunk sum fits int32, else int64 (the product is int64)
    acc_dtype: type  # running accumulator buffer of the integer kernel: int32 when its values provably fit
    w_f32: np.ndarray | None  # float32 [K, M] when the float32 kernel is exact (else None: integer kernel)
    w_f: np.ndarray | None  # float [M, K] for the exact BLAS product
    wabs_f: np.ndarray | None  # float [M, K] |w - z_w| for the per-element data bound
    bias: np.ndarray  # int64 [M]
    spec: np.ndarray  # int64 [5] for the model kernels
    blas: type | None  # np.float32 / np.float64 / None (no exact BLAS product)
    layer_exact: bool  # the static bound fits: no element can overflow
    a_hi: int | None
    p_hi: int | None
    kernel_only: bool  # tiny (depthwise-like) or huge problems: the model kernel runs on every position
    cache: dict = field(default_factory=dict)  # derived weight layouts, made on first use (screen, chunks)


def _plan(wd: np.ndarray, bias: np.ndarray | None, xmax: int, acc) -> _Plan:
    M, K = wd.shape
    b = np.zeros(M, np.int64) if bias is None else bias.astype(np.int64)
    wabs = np.abs(wd)
    if wabs.size and int(wabs.max()) >= 1 << 31:
        raise HwsimError("weights minus zero point exceed 2^31 in magnitude: not an integer grid hwsim simulates")
    colsum = [int(v) for v in wabs.sum(axis=1)]  # per output channel, exact
    bmax = int(np.abs(b).max()) if M else 0
    bound = [abs(int(bb)) + c * xmax for bb, c in zip(b, colsum)]
    gsum = max(colsum, default=0) * xmax  # every partial sum of sum_k |w||x| of any element is <= gsum
    if max(bound, default=0) >= INT64_LIMIT or gsum + bmax >= INT64_LIMIT:
        raise HwsimError(f"layer too large for the int64 simulator: |bias| + sum|w||x| = {max(bound)} >= 2^62")
    R = acc.rows if acc.rows is not None else max(K, 1)
    R = min(R, max(K, 1))
    pad = (-K) % R
    wpad = np.concatenate([wabs, np.zeros((M, pad), np.int64)], axis=1) if pad else wabs
    chunk = [int(v) * xmax for v in wpad.reshape(M, -1, R).sum(axis=2).max(axis=1)] if M else [0]
    cmax = max(chunk, default=0)
    a_hi = None if acc.bits is None or acc.bits >= 63 else (1 << (acc.bits - 1)) - 1
    p_hi = None if acc.partial_bits is None or acc.partial_bits >= 63 else (1 << (acc.partial_bits - 1)) - 1
    if p_hi is not None and cmax <= p_hi:
        p_hi = None  # no chunk sum can leave the partial register: it is exact
    layer_exact = (a_hi is None or max(bound, default=0) <= a_hi) and p_hi is None
    blas = np.float32 if gsum < EXACT_F32 else (np.float64 if gsum < EXACT_F64 else None)
    kernel_only = blas is None or M < 8
    spec = np.array([acc.bits or 0, MODE_NONE if a_hi is None else _POLICY[acc.overflow],
                     acc.partial_bits or 0, MODE_NONE if p_hi is None else _POLICY[acc.partial_overflow], R],
                    dtype=np.int64)
    # float32 model kernel: exact when every value it holds stays below 2^24 (see accumulate_rows_f32)
    p_cfg = None if acc.partial_bits is None or acc.partial_bits >= 63 else 1 << (acc.partial_bits - 1)
    f32_ok = (K < EXACT_F32  # the float32 kernels also count events per channel in float32
              and cmax < EXACT_F32 and gsum + bmax < EXACT_F64 and (p_cfg is None or p_cfg + cmax < EXACT_F32)
              and (a_hi + 1 + cmax < EXACT_F32 if a_hi is not None else gsum + bmax < EXACT_F32))
    small_acc = (a_hi is not None and a_hi < (1 << 31)) or gsum + bmax < (1 << 31)
    if a_hi is not None and max(bound, default=0) <= a_hi:
        # the accumulator stage is certified (no value can leave it; the bounds above stay valid): the
        # kernels skip its checks and the screens look at the partial-sum stage only
        a_hi = None
        spec[1] = MODE_NONE
    return _Plan(w_kernel=np.ascontiguousarray(wd.T).astype(np.int32 if cmax < (1 << 31) else np.int64),
                 acc_dtype=np.int32 if small_acc else np.int64,
                 w_f32=np.ascontiguousarray(wd.T).astype(np.float32) if f32_ok else None,
                 w_f=None if blas is None else wd.astype(blas), wabs_f=None if blas is None else wabs.astype(blas),
                 bias=b, spec=spec, blas=blas, layer_exact=layer_exact, a_hi=a_hi, p_hi=p_hi,
                 kernel_only=kernel_only)


PLANE_MAX_M = 8  # groups with fewer output channels run the position-vectorized model kernel


def _merged_spec(plans: list[_Plan]) -> np.ndarray:
    spec = plans[0].spec.copy()
    bounded_p = [q.spec for q in plans if q.spec[3] != MODE_NONE]
    if bounded_p:  # same accumulator config for every group; only some may need the P checks
        spec[2], spec[3] = bounded_p[0][2], bounded_p[0][3]
    bounded_a = [q.spec for q in plans if q.spec[1] != MODE_NONE]
    if bounded_a:  # likewise the A checks (a group whose A stage is certified cannot trigger them)
        spec[0], spec[1] = bounded_a[0][0], bounded_a[0][1]
    return spec


def _run_planes(plans: list[_Plan], cols: np.ndarray, k0: int, out: np.ndarray) -> tuple[int, int]:
    """The position-vectorized model kernel on every position of cols [nb, k, L] (contiguous in L)."""
    spec = _merged_spec(plans)
    bias = np.concatenate([q.bias for q in plans])
    G, M = len(plans), plans[0].bias.size
    if all(q.w_f32 is not None for q in plans):
        w, dt = np.stack([q.w_f32 for q in plans]), np.float32
        if cols.dtype != np.float32:
            cols, k0 = cols[:, k0:k0 + w.shape[0] * w.shape[1], :].astype(np.float32), 0
    else:
        w, dt = np.stack([q.w_kernel for q in plans]).astype(np.int64), np.int64
        if cols.dtype.kind == "f":
            cols, k0 = cols[:, k0:k0 + w.shape[0] * w.shape[1], :].astype(np.int64), 0
    a_bits = int(spec[0]) if spec[1] != MODE_NONE else 30
    p_bits = int(spec[2]) if spec[3] != MODE_NONE else 30
    lims = np.array([-(1 << (a_bits - 1)), (1 << (a_bits - 1)) - 1, 1 << a_bits,
                     -(1 << (p_bits - 1)), (1 << (p_bits - 1)) - 1, 1 << p_bits], dtype=dt)
    ev = np.zeros((cols.shape[0] * G * M, 2), np.int64)
    accumulate_planes(cols, k0, w, bias, spec, lims, out, ev)
    return int(ev[:, 0].sum()), int(ev[:, 1].sum())


def _run_kernel(plans: list[_Plan], cols: np.ndarray, k0: int, rows: np.ndarray, out: np.ndarray) -> tuple[int, int]:
    """The model kernel for consecutive groups ``plans`` (group i reads cols[:, k0 + i*K ...] and writes
    out[:, i*M ...]) on positions ``rows``; returns (partial events, acc events)."""
    if rows.size == 0:
        return 0, 0
    ev = np.zeros((rows.size, 2), np.int64)
    spec = _merged_spec(plans)
    bias = np.concatenate([q.bias for q in plans])
    if all(q.w_f32 is not None for q in plans):
        w = np.stack([q.w_f32 for q in plans])
        if cols.dtype != np.float32:
            cols, k0 = np.ascontiguousarray(cols[:, k0:k0 + w.shape[0] * w.shape[1], :]).astype(np.float32), 0
        accumulate_rows_f32(cols, k0, w, bias, rows, spec, out, ev)
    else:
        wide = any(q.w_kernel.dtype == np.int64 for q in plans)
        w = np.stack([q.w_kernel for q in plans]).astype(np.int64 if wide else np.int32)
        acc_dt = np.int64 if any(q.acc_dtype == np.int64 for q in plans) else np.int32
        accumulate_rows(cols, k0, w, bias, rows, spec, np.zeros(1, acc_dt), out, ev)
    return int(ev[:, 0].sum()), int(ev[:, 1].sum())


def _run_blas(plan: _Plan, cols: np.ndarray, k0: int, out: np.ndarray, scratch: dict) -> tuple[int, int]:
    """Exact BLAS product for every position, the model kernel for positions that might overflow; (pe, ae)."""
    nb, _, L = cols.shape
    M, K = plan.w_f.shape
    cf = cols[:, k0:k0 + K, :]
    if cf.dtype != plan.blas:
        cf = cf.astype(plan.blas)
    key = (plan.blas, nb, M, L)
    if key not in scratch:
        scratch[key] = np.empty((nb, M, L), plan.blas)
    out[...] = np.matmul(plan.w_f, cf, out=scratch[key])  # exact: every partial sum < 2^24 (f32) / 2^53 (f64)
    out += plan.bias[None, :, None]
    if plan.layer_exact:
        return 0, 0
    d = np.matmul(plan.wabs_f, np.abs(cf), out=scratch[key]).astype(np.int64)  # sum_k |w||x|, exact
    risky = np.zeros((nb, L), dtype=bool)
    if plan.a_hi is not None:
        risky |= ((d + np.abs(plan.bias)[None, :, None]) > plan.a_hi).any(axis=1)
    if plan.p_hi is not None:
        risky |= (d > plan.p_hi).any(axis=1)
    rows = np.flatnonzero(risky).astype(np.int64)  # flat positions n * L + l
    return _run_kernel([plan], cols, k0, rows, out)


def _risky(plan: _Plan, cols: np.ndarray, k0: int, npos: int) -> bool:
    """More than RISKY_SWITCH of the first ``npos`` positions might overflow (:func:`_screen`): the model kernel
    (or the chunked paths) beats BLAS + rerun. Once true for a plan, kept (plan.cache): a layer whose
    accumulators act on most positions of one batch does on the next (every path is exact; the screen cost
    26 ms of 450 per batch on ResNet-18 @ 32 under int8-acc16-sat)."""
    if not plan.cache.get("risky") and _screen(plan, cols, k0, npos).mean() > RISKY_SWITCH:
        plan.cache["risky"] = True
    return bool(plan.cache.get("risky"))


def _screen(plan: _Plan, cols: np.ndarray, k0: int, npos: int) -> np.ndarray:
    """Boolean mask of the first ``npos`` positions whose data bound might overflow (numba, no BLAS)."""
    mask = np.zeros(npos, dtype=bool)
    a_thr = plan.a_hi if plan.a_hi is not None else INT64_LIMIT
    p_thr = plan.p_hi if plan.p_hi is not None else INT64_LIMIT
    if "wabsT" not in plan.cache:
        plan.cache["wabsT"] = np.ascontiguousarray(plan.wabs_f.T)
    risky_positions(cols, k0, plan.cache["wabsT"], np.abs(plan.bias), a_thr, p_thr, mask)
    return mask


def _range(x: np.ndarray, zx: int) -> tuple[int, int]:
    """(min, max) of an integer batch ((z_x, z_x) when empty)."""
    if x.size == 0:
        return zx, zx
    return int(x.min()), int(x.max())


def _xmax(lo: int, hi: int, zx: int) -> int:
    """max |x - z_x| over inputs in [lo, hi] (padding pixels hold z_x and add 0)."""
    v = max(abs(lo - zx), abs(hi - zx))
    if v >= 1 << 31:
        raise HwsimError(f"activations minus zero point reach {v}: allowed |x - z_x| < 2^31")
    return v


# ----------------------------------------------------------------------------- int8 GEMM (torch._int_mm)
INT8_BLOCK = 8 << 20  # int8 im2col block budget (bytes)
_INT_MM = None  # None: not probed yet; False: unavailable; else torch._int_mm


def int_mm():
    """``torch._int_mm`` (int8 x int8 -> int32 products with int32 accumulation) or None.

    None when torch is not importable, when HWSIM_INT_MM=0 is set (the exact float-BLAS path then
    runs), or when the function fails a self-test at the operand extremes (so a library that
    saturated or narrowed its pair sums could never be used).
    """
    global _INT_MM
    if _INT_MM is None:
        _INT_MM = False
        if os.environ.get("HWSIM_INT_MM", "1") != "0":
            try:
                import torch

                f = torch._int_mm
                ok = True
                for va, vb in ((-128, -128), (127, -128), (-128, 127)):
                    for m, k, n in ((1, 1, 1), (33, 1027, 9), (70, 4608, 64)):
                        a = torch.full((m, k), va, dtype=torch.int8)
                        b = torch.full((n, k), vb, dtype=torch.int8).t()  # the column-major layout used below
                        ok = ok and bool((f(a, b) == va * vb * k).all())
                rng = np.random.default_rng(0)
                for m, k, n in ((5, 2, 3), (17, 3, 12), (64, 27, 16), (3, 576, 64)):
                    a8 = rng.integers(-128, 128, (m, k)).astype(np.int8)
                    w8 = rng.integers(-128, 128, (n, k)).astype(np.int8)
                    c = f(torch.from_numpy(a8), torch.from_numpy(w8).t()).numpy()
                    ok = ok and bool((c == a8.astype(np.int64) @ w8.astype(np.int64).T).all())
                _INT_MM = f if ok else False
            except Exception:  # noqa: BLE001 - any failure means: use the exact float path
                _INT_MM = False
    return _INT_MM or None


@dataclass
class _Int8Gemm:
    """acc = add[m] + sum_k w8[m, k] * (x_k - o) with int32 accumulation, proven exact (docs/semantics.md 10).

    sum_k (w - z_w)(x - z_x) = sum_k (w - z_w)(x - o) + (o - z_x) sum_k (w - z_w); ``add`` = bias +
    (o - z_x) * rowsum, exact in int64; every partial sum of the int32 part is at most
    max_m sum_k |w - z_w| * max|x - o| < 2^31. The plan is made only where no event is possible, so the
    exact sum is independent of the order of k: conv weights are stored in the order of
    :func:`im2col_hwc` (kernel row, kernel column, input channel), which reads contiguous channel runs.
    """

    w8: object  # torch int8 [M, K] row-major (conv: k = (kernel row, kernel column, input channel))
    offset: int  # o: the GEMM reads x - o as int8
    pad_value: int  # z_x - o: the padding pixels
    add: np.ndarray  # int64 [M]
    acc_max: int  # max over channels and inputs in the plan range of |acc| (exact Python int)


def _int8_gemm(wd: np.ndarray, bias: np.ndarray | None, zx: int, lo: int, hi: int, padded: bool,
               plans: list, chw: tuple | None = None) -> _Int8Gemm | None:
    """The int8 GEMM form of a problem whose every group is exact (no event possible), or None.

    ``chw`` = (C, KH, KW) of a conv's weights [M, C*KH*KW]: stored in (KH, KW, C) order (im2col_hwc)."""
    if not plans or not all(p.layer_exact for p in plans) or int_mm() is None:
        return None
    if wd.shape[1] < 2 or wd.min() < -128 or wd.max() > 127 or hi - lo > 255:
        return None  # K = 1: torch 2.x's CPU _int_mm returns garbage for [m, 1] x [1, n > 1]
    o = zx if (lo - zx >= -128 and hi - zx <= 127) else lo + 128  # x - o in [-128, 127]
    pad_value = zx - o
    if padded and not -128 <= pad_value <= 127:
        return None
    xm = max(abs(lo - o), abs(hi - o), abs(pad_value) if padded else 0)
    rows = np.abs(wd).sum(axis=1)
    if int(rows.max()) * xm >= 1 << 31:
        return None
    import torch

    b = np.zeros(wd.shape[0], np.int64) if bias is None else bias.astype(np.int64)
    add = b + (o - zx) * wd.sum(axis=1)
    acc_max = max(abs(int(a)) + int(r) * max(abs(lo - zx), abs(hi - zx)) for a, r in zip(b, rows))
    w8 = wd.astype(np.int8)
    if chw is not None:
        w8 = w8.reshape(wd.shape[0], *chw).transpose(0, 2, 3, 1).reshape(wd.shape[0], -1)
    return _Int8Gemm(torch.from_numpy(np.ascontiguousarray(w8)), o, pad_value, add, acc_max)


@contextlib.contextmanager
def _torch_one_thread():
    """torch runs single-threaded inside hwsim's int8 GEMMs, which hwsim spreads over its own worker
    threads: torch's OpenMP threads spinning beside numba's (another OpenMP runtime) on the same cores
    made whole networks 5-7x slower on 2 cores. The caller's setting is restored afterwards. No-op while
    torch is not imported (no torch GEMM can run then)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    prev = torch.get_num_threads()
    if prev != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if prev != 1:
            torch.set_num_threads(prev)


_LOCAL = threading.local()


def serial() -> bool:
    """True inside :func:`serial_mode`: this thread is one of hwsim's batch workers (execute.run_quantized),
    so kernels run single-threaded here (numba's parallel kernels may not be entered from two threads at once)."""
    return getattr(_LOCAL, "serial", False)


@contextlib.contextmanager
def serial_mode(on: bool = True):
    """Context: kernels called from this thread run single-threaded (serial nogil numba twins, no pools);
    ``on = False``: the usual parallel kernels again (one thread at a time: execute's lock)."""
    prev = serial()
    _LOCAL.serial = on
    try:
        yield
    finally:
        _LOCAL.serial = prev


PARALLEL_LOCK = threading.Lock()  # held by a batch worker while it runs the parallel kernels (execute)


@contextlib.contextmanager
def exclusive():
    """Context for code that may use the parallel kernels: inside :func:`serial_mode` (a batch worker) it takes
    PARALLEL_LOCK and leaves serial mode (numba's parallel kernels may not be entered from two threads at once);
    elsewhere a no-op."""
    if not serial():
        yield
        return
    with PARALLEL_LOCK, serial_mode(False):
        yield


def workers() -> int:
    """Worker threads a kernel may use here: numba.get_num_threads(), 1 inside :func:`serial_mode`."""
    return 1 if serial() else max(1, numba.get_num_threads())


def _in_workers(fn, parts: list) -> list:
    """fn over ``parts`` on :func:`workers` threads (the work must release the GIL)."""
    n = min(workers(), len(parts))
    if n <= 1:
        return [fn(p) for p in parts]
    global _POOL
    if _POOL is None or _POOL[0] != (os.getpid(), n):  # one pool per process and size (threads started per
        _POOL = ((os.getpid(), n), ThreadPoolExecutor(n, initializer=torch_one_thread_init))  # call: ms a layer)
    return list(_POOL[1].map(fn, parts))


_POOL = None  # ((pid, threads), the worker threads of _in_workers): kept, as hwsim kernels run on every layer
_BATCH_POOL = None  # ((pid, threads), execute's batch workers)


def batch_pool(n: int) -> ThreadPoolExecutor:
    """The batch workers of :func:`hwsim.execute.run_quantized` (torch one-threaded in each), kept for the process
    like :func:`_in_workers`' pool and apart from it (a batch worker may run a layer's own worker threads): a fresh
    pool per call started its second part up to 7 ms late (ResNet-18 @ 32, batch 128: a 50 ms batch)."""
    global _BATCH_POOL
    if _BATCH_POOL is None or _BATCH_POOL[0] != (os.getpid(), n):
        if _BATCH_POOL is not None and _BATCH_POOL[0][0] == os.getpid():
            _BATCH_POOL[1].shutdown(wait=False)
        _BATCH_POOL = ((os.getpid(), n), ThreadPoolExecutor(n, initializer=torch_one_thread_init))
    return _BATCH_POOL[1]


def torch_one_thread_init():
    """Initializer of hwsim's worker threads: torch single-threaded there (their work runs inside
    :func:`_torch_one_thread`, or without torch). OpenMP's thread count is per thread: a fresh thread starts
    at the core count, so every torch._int_mm (oneDNN) in a worker ran an OpenMP team of all cores: 2-100x
    slower on the 2-core machine (issue 18)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@njit(cache=True, nogil=True)
def pad_hwc(x, n0, o, lo, hi, pt, pl, pad_value, out):
    """out[i, pt + r, pl + s, c] = x[n0 + i, c, r, s] - o as int8, padding pixels = pad_value (channels last);
    returns False when a value lies outside [lo, hi] (the range the plan assumed; out is then not to be used).

    Row by row: the C x W input row is read contiguously (range check and offset, branch-free: vectorized)
    into a small staging block, then transposed into the channels-last row (2-3x faster than scattering each
    input element to its channels-last place)."""
    nb, Hp, Wp, C = out.shape
    H, W = x.shape[2], x.shape[3]
    pv = np.int8(pad_value)
    tmp = np.empty((C, W), np.int8)
    bad = False
    for i in range(nb):
        for r in range(Hp):
            inside = pt <= r < pt + H
            for s in range(Wp):
                if not inside or s < pl or s >= pl + W:
                    for c in range(C):
                        out[i, r, s, c] = pv
        for h in range(H):
            for c in range(C):
                for w in range(W):
                    v = x[n0 + i, c, h, w]
                    bad |= (v < lo) | (v > hi)
                    tmp[c, w] = np.int8(v - o)
            for w in range(W):
                for c in range(C):
                    out[i, pt + h, pl + w, c] = tmp[c, w]
    return not bad


@njit(cache=True, nogil=True)
def _im2col_rows(x1, Hp, WpC, geom, C, out1, K):
    """:func:`im2col_hwc` on flat views x1 = xp [nb*Hp*Wp*C], out1 = out [nb*L*K]: at dilation 1 in width one
    kernel row's kw*C values are one contiguous run of the input row (one copy), else kw runs of C. Unsigned
    flat indices: no negative-index wraparound check and no slice per run (a 3-channel stem's runs are 9-21
    bytes: 1.2-1.3x faster than slices)."""
    kh, kw, sh, sw, dh, dw, Ho, Wo = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7]
    nb = out1.shape[0] // (Ho * Wo * K)
    run = np.uint64(kw * C if dw == 1 else C)
    nrun = 1 if dw == 1 else kw
    for i in range(nb):
        for oh in range(Ho):
            for ow in range(Wo):
                row = (i * Ho + oh) * Wo + ow
                for a in range(kh):
                    r = i * Hp + oh * sh + a * dh
                    for b in range(nrun):
                        s0 = np.uint64(r * WpC + (ow * sw + b * dw) * C)
                        d0 = np.uint64(row * K + (a * kw + b) * C)
                        for j in range(run):
                            out1[d0 + j] = x1[s0 + j]


def im2col_hwc(xp, geom, out):
    """out[i, oh*Wo + ow, (a*kw + b)*C + c] = xp[i, oh*sh + a*dh, ow*sw + b*dw, c]: contiguous channel runs of
    a channels-last padded input (C-contiguous xp [nb, Hp, Wp, C] and out [nb, L, K]); geom = (kh, kw, sh, sw,
    dh, dw, Ho, Wo). Releases the GIL."""
    nb, Hp, Wp, C = xp.shape
    if not (xp.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("im2col_hwc: xp and out must be C-contiguous")
    _im2col_rows(xp.reshape(-1), Hp, Wp * C, geom, C, out.reshape(-1), out.shape[2])


@njit(cache=True, nogil=True)
def epilogue_wide(ct, n0, add, out):
    """out[n0 + i, m, l] = ct[m, i*L + l] + add[m]: the GEMM's accumulators, channel-major. out int64, or int32
    where the plan proves |acc| < 2^31 (acc_dtype): the int64 sum stored modulo 2^32 is then the exact value."""
    nb, L = ct.shape[1] // out.shape[2], out.shape[2]
    for m in range(ct.shape[0]):
        a = add[m]
        for i in range(nb):
            src = ct[m, i * L:(i + 1) * L]  # slices indexed from 0: no negative-index check, vectorized
            dst = out[n0 + i, m]
            for l in range(L):
                dst[l] = np.int64(src[l]) + a


@njit(cache=True, inline="always")
def _mbqm_small(x, qc, sc, single, tie0, tie1):
    """:func:`_mbqm` where |x| <= 2^31 and sc <= 0 (no left shift): x * qc is exact in int64 (|x q| < 2^62), so the
    high multiply is one product, and no int32 saturation can occur (|x q / 2^31| < 2^31): the same integers."""
    p = x * qc
    if single:
        n = 31 - sc
        fl = p >> n
        rem = p - (fl << n)
        if _round_up(fl, rem, n, tie1):
            fl += 1
        return fl
    hi = p >> 31
    rem = p - (hi << 31)
    if _round_up(hi, rem, 31, tie0):
        hi += 1
    right = -sc
    fl = hi >> right
    rem = hi - (fl << right)
    if _round_up(fl, rem, right, tie1):
        fl += 1
    return fl


@njit(cache=True, nogil=True, inline="always")
def _epi_fixed_channel(ct, n0, m, a, qc, sc, single, small, tie0, tie1, zy, lo, hi, qmin, qmax, count_low, out):
    """Channel m of :func:`epilogue_fixed` (inlined with constant ``single`` and ``small``: no branch left in the
    loop)."""
    nb, L = ct.shape[1] // out.shape[2], out.shape[2]
    c = np.int64(0)
    for i in range(nb):
        src = ct[m, i * L:(i + 1) * L]  # slices indexed from 0: no negative-index check, vectorized
        dst = out[n0 + i, m]
        for l in range(L):
            x = np.int64(src[l]) + a
            if small:
                v = _mbqm_small(x, qc, sc, single, tie0, tie1) + zy
            else:
                v = _mbqm(x, qc, sc, single, tie0, tie1) + zy
            c += np.int64(v > qmax) + np.int64(count_low and v < qmin)
            dst[l] = min(max(v, lo), hi)
    return c


@njit(cache=True, nogil=True)
def epilogue_fixed(ct, n0, add, q, shift, single, small, tie0, tie1, zy, lo, hi, qmin, qmax, count_low, out):
    """Fixed-point requant, zero point, clamp and clip count in one pass over the GEMM result ct [M, nb*L]:
    v = MBQM(ct[m, i*L + l] + add[m], q[m], shift[m]) + zy (:func:`_mbqm`, the arithmetic of requant_fixed);
    out[n0 + i, m, l] = clamp(v, lo, hi) in out's (narrow) dtype; returns #(v > qmax) + count_low * #(v < qmin)
    (registry.clamp_counted's count). The caller keeps single rounding to |acc| <= 2^31; ``small`` (every
    |acc| <= 2^31 and shift <= 0, proven by the plan): :func:`_mbqm_small`."""
    c = np.int64(0)
    for m in range(ct.shape[0]):
        a, qc, sc = add[m], np.int64(q[m]), np.int64(shift[m])
        if small and single:
            c += _epi_fixed_channel(ct, n0, m, a, qc, sc, True, True, tie0, tie1, zy, lo, hi, qmin, qmax, count_low,
                                    out)
        elif small:
            c += _epi_fixed_channel(ct, n0, m, a, qc, sc, False, True, tie0, tie1, zy, lo, hi, qmin, qmax, count_low,
                                    out)
        elif single:
            c += _epi_fixed_channel(ct, n0, m, a, qc, sc, True, False, tie0, tie1, zy, lo, hi, qmin, qmax, count_low,
                                    out)
        else:
            c += _epi_fixed_channel(ct, n0, m, a, qc, sc, False, False, tie0, tie1, zy, lo, hi, qmin, qmax,
                                    count_low, out)
    return c


@njit(cache=True, nogil=True, inline="always")
def _epi_f32_channel(ct, n0, m, a, mm, b, p, zb, z_after, mode, lo, hi, qmin, qmax, count_low, out):
    """Channel m of :func:`epilogue_float32` (inlined with a constant rounding ``mode``)."""
    nb, L = ct.shape[1] // out.shape[2], out.shape[2]
    c = np.int64(0)
    for i in range(nb):
        src = ct[m, i * L:(i + 1) * L]  # slices indexed from 0: no negative-index check, vectorized
        dst = out[n0 + i, m]
        for l in range(L):
            fa = np.float32(np.float32(np.float32(np.int64(src[l]) + a) * p) + b)
            v = np.float32(np.float32(fa * mm) + zb)
            y = _round_f64(np.float64(v), mode) + z_after
            c += np.int64(y > qmax) + np.int64(count_low and y < qmin)
            dst[l] = min(max(y, lo), hi)
    return c


@njit(cache=True, inline="always")
def _round_f32(v, mode):
    """_round_f64(float64(v), mode) for a float32 v, in float32 (exact: v - trunc(v) and v - floor(v) are exact,
    so the ties are decided on the true fraction); an integer-valued float32 (inf stays inf, no 2^62 clip: the
    callers compare and clamp against small integer bounds before converting)."""
    if mode == 0:
        return np.rint(v)
    if mode == 1:
        t = np.trunc(v)
        f = v - t
        if f >= np.float32(0.5):
            t += np.float32(1)
        elif f <= np.float32(-0.5):
            t -= np.float32(1)
        return t
    if mode == 2:
        fl = np.floor(v)
        return fl + np.float32(1) if v - fl >= np.float32(0.5) else fl
    if mode == 3:
        return np.floor(v)
    return np.trunc(v)


@njit(cache=True, nogil=True, inline="always")
def _epi_f32_lanes(ct, n0, m, a, mm, b, p, zb, z_after, mode, lo, hi, qmin, qmax, count_low, out, rows):
    """Channel m of :func:`epilogue_float32` in 32-bit lanes (twice the vector width of int64/float64), for a plan
    proving |acc| < 2^31 (Epilogue.lanes32): int32(ct + a) wraps to the exact accumulator (|acc| < 2^31), whose
    float32 value is that of the int64; the rounding in float32 (:func:`_round_f32`); y = r + z_after compared
    and clamped as r against the bounds minus z_after (small integers, exact in float32), converted after the
    clamp. The same integers as :func:`_epi_f32_channel`. The clip count: the row loop keeps each rounded value in
    ``rows`` and only flags a clip; a row with one is counted by a second loop over ``rows`` (an int64 count in the
    row loop halved its speed: numba widens the sum, and the loop ran in half as many lanes)."""
    nb, L = ct.shape[1] // out.shape[2], out.shape[2]
    qh = np.float32(qmax - z_after)
    ql = np.float32(qmin - z_after) if count_low else np.float32(-np.inf)  # r < -inf: never
    fh, fl = np.float32(hi - z_after), np.float32(lo - z_after)
    za = np.int32(z_after)
    c = np.int64(0)
    for i in range(nb):
        src = ct[m, i * L:(i + 1) * L]
        dst = out[n0 + i, m]
        hit = False
        for l in range(L):
            x = np.int32(np.int64(src[l]) + a)
            fa = np.float32(np.float32(np.float32(x) * p) + b)
            v = np.float32(np.float32(fa * mm) + zb)
            r = _round_f32(v, mode)
            rows[l] = r
            hit |= (r > qh) | (r < ql)  # a flag, not a count, in the vectorized loop (an int64 sum halved it)
            dst[l] = np.int32(min(max(r, fl), fh)) + za
        if hit:  # count this row's clipped values from the rounded results kept in `rows`
            for l in range(L):
                c += (rows[l] > qh) | (rows[l] < ql)
    return c


@njit(cache=True, nogil=True)
def epilogue_float32(ct, n0, add, mult, bias, has_bias, pre, has_pre, z_before, zy, mode, lo, hi, qmin, qmax,
                     count_low, out, lanes32=False):
    """float32 requant (the arithmetic of :func:`requant_float32`), zero point, clamp and clip count in one pass
    over the GEMM result ct [M, nb*L]; see :func:`epilogue_fixed` for out and the count.

    Branch-free form of the optional steps: without a pre-scale fa * 1 == fa, without a bias fa + 0 == fa,
    without z_before v + 0 == v (float32 operations exact on these operands, up to the sign of a zero, which
    no rounding mode turns into a different integer).
    """
    zb = np.float32(zy) if z_before else np.float32(0)
    z_after = 0 if z_before else zy
    rows = np.empty(out.shape[2] if lanes32 else 0, np.float32)  # one output row's rounded values (_epi_f32_lanes)
    c = np.int64(0)
    for m in range(ct.shape[0]):
        a, mm = add[m], mult[m]
        b = bias[m] if has_bias else np.float32(0)
        p = pre[m] if has_pre else np.float32(1)
        if lanes32:
            if mode == 0:
                c += _epi_f32_lanes(ct, n0, m, a, mm, b, p, zb, z_after, 0, lo, hi, qmin, qmax, count_low, out, rows)
            elif mode == 1:
                c += _epi_f32_lanes(ct, n0, m, a, mm, b, p, zb, z_after, 1, lo, hi, qmin, qmax, count_low, out, rows)
            elif mode == 2:
                c += _epi_f32_lanes(ct, n0, m, a, mm, b, p, zb, z_after, 2, lo, hi, qmin, qmax, count_low, out, rows)
            elif mode == 3:
                c += _epi_f32_lanes(ct, n0, m, a, mm, b, p, zb, z_after, 3, lo, hi, qmin, qmax, count_low, out, rows)
            else:
                c += _epi_f32_lanes(ct, n0, m, a, mm, b, p, zb, z_after, 4, lo, hi, qmin, qmax, count_low, out, rows)
        elif mode == 0:
            c += _epi_f32_channel(ct, n0, m, a, mm, b, p, zb, z_after, 0, lo, hi, qmin, qmax, count_low, out)
        elif mode == 1:
            c += _epi_f32_channel(ct, n0, m, a, mm, b, p, zb, z_after, 1, lo, hi, qmin, qmax, count_low, out)
        elif mode == 2:
            c += _epi_f32_channel(ct, n0, m, a, mm, b, p, zb, z_after, 2, lo, hi, qmin, qmax, count_low, out)
        elif mode == 3:
            c += _epi_f32_channel(ct, n0, m, a, mm, b, p, zb, z_after, 3, lo, hi, qmin, qmax, count_low, out)
        else:
            c += _epi_f32_channel(ct, n0, m, a, mm, b, p, zb, z_after, 4, lo, hi, qmin, qmax, count_low, out)
    return c


@dataclass
class Epilogue:
    """Requantization + zero point + clamp + clip count fused behind the int8 GEMM (made once per layer by
    ops.core.fused_epilogue). kind "fixed": q, shift (int64 [M]), single, tie0, tie1; "float32": mult, bias,
    pre (float32 [M]), has_bias, has_pre, z_before, mode (ROUND_CODE)."""

    kind: str
    zy: int
    lo: int
    hi: int
    qmin: int
    qmax: int
    count_low: bool
    q: np.ndarray | None = None
    shift: np.ndarray | None = None
    single: bool = False
    small: bool = False  # fixed: every |acc| <= 2^31 and every shift <= 0 (kernels._mbqm_small)
    tie0: int = 0
    tie1: int = 0
    mult: np.ndarray | None = None
    bias: np.ndarray | None = None
    pre: np.ndarray | None = None
    has_bias: bool = False
    has_pre: bool = False
    z_before: bool = False
    mode: int = 0
    lanes32: bool = False  # float32: 32-bit lanes (kernels._epi_f32_lanes), where ops.core.fused_epilogue proves it

    def run(self, ct, n0, add, out) -> int:
        if self.kind == "fixed":
            return int(epilogue_fixed(ct, n0, add, self.q, self.shift, self.single, self.small, self.tie0, self.tie1,
                                      self.zy,
                                      self.lo, self.hi, self.qmin, self.qmax, self.count_low, out))
        return int(epilogue_float32(ct, n0, add, self.mult, self.bias, self.has_bias, self.pre, self.has_pre,
                                    self.z_before, self.zy, self.mode, self.lo, self.hi, self.qmin, self.qmax,
                                    self.count_low, out, self.lanes32))


GEMM_BLOCK_BYTES = 1 << 19  # int8 im2col / int32 result per block and worker (cache-sized; GEMM as fast from 1k rows)


def gemm_int8(x, plan, geom: np.ndarray, pad, out, epi: Epilogue | None = None) -> int | None:
    """The int8 GEMM layer (groups = 1, exact) on x [N, C, H, W] (linear: [N, K, 1, 1]) into out [N, M, L].

    Per block of images, in :func:`workers` threads (each step releases the GIL): :func:`pad_hwc` (x - o,
    channels last, padded), :func:`im2col_hwc` (skipped for 1x1 kernels at stride 1 without padding),
    ``int_mm(w8 [M, K], cols^T)`` -> int32 [M, nb*L], then ``epi`` (requant + clamp + count into a narrow
    out) or, without one, the int64 accumulators (:func:`epilogue_wide`). Returns the clipped count (0
    without ``epi``), or None when x leaves the plan's range (out is then incomplete).
    """
    import torch

    g = plan.gemm
    N, C, H, W = x.shape
    KH, KW, sh, sw, dh, dw, Ho, Wo = (int(v) for v in geom)
    L, M, K = Ho * Wo, g.w8.shape[0], g.w8.shape[1]
    Hp, Wp = H + pad[0] + pad[1], W + pad[2] + pad[3]
    direct = KH == 1 and KW == 1 and sh == 1 and sw == 1 and not any(pad)
    n_workers = min(workers(), N)
    # a block's int8 im2col (L*K bytes per image) and its int32 GEMM result (4*L*M, read again by the epilogue)
    # both cache-sized: a 1x1 expansion conv (K 16, M 64, L 1024) ran 6x slower with 64 images' 16 MB result
    nb = int(max(1, min(-(-N // n_workers), GEMM_BLOCK_BYTES // max(1, L * max(K, 4 * M)))))
    blocks = [(n0, min(nb, N - n0)) for n0 in range(0, N, nb)]
    mm = int_mm()
    x = np.ascontiguousarray(x)

    def work(part):
        xp_buf = np.empty((nb, Hp, Wp, C), np.int8)
        cols_buf = None if direct else np.empty((nb, L, K), np.int8)
        clipped = 0
        for n0, b in part:
            xp = xp_buf[:b]
            if not pad_hwc(x, n0, g.offset, plan.lo, plan.hi, pad[0], pad[2], g.pad_value, xp):
                return None
            if direct:
                cols = xp.reshape(b * L, K)
            else:
                cols = cols_buf[:b]
                im2col_hwc(xp, geom, cols)
                cols = cols.reshape(b * L, K)
            ct = mm(g.w8, torch.from_numpy(cols).t()).numpy()  # [M, b*L] int32, exact (plan bound)
            if epi is None:
                epilogue_wide(ct, n0, g.add, out)
            else:
                clipped += epi.run(ct, n0, g.add, out)
        return clipped

    with _torch_one_thread():
        res = _in_workers(work, [blocks[i::n_workers] for i in range(n_workers)])
    return None if any(r is None for r in res) else sum(res)


@dataclass
class GemmPlan:
    """Everything a conv/linear call needs that depends on weights, accumulator and input range only.

    Made once per layer by :func:`conv_plan` / :func:`linear_plan` (the executor caches it on the
    layer); valid for any batch whose values lie in [lo, hi] (checked on every call: a batch outside
    it is planned again from its own range, which changes speed only).
    """

    lo: int
    hi: int
    zx: int
    groups: list  # one _Plan per group
    gemm: _Int8Gemm | None
    geometry: tuple | None = None  # conv: (stride, pad, dilation, groups)
    depthwise: "_Depthwise | None" = None  # an exact depthwise conv: the direct kernel (depthwise_run)
    dw_stage: "_DepthwiseStage | None" = None  # a depthwise conv of one chunk per channel (depthwise_staged_run)


def linear_plan(w, bias, zx, zw, acc, lo: int, hi: int) -> GemmPlan:
    """Plan of a linear layer for inputs in [lo, hi]."""
    wd = w - zw[:, None]
    plans = [_plan(wd, bias, _xmax(lo, hi, zx), acc)]
    return GemmPlan(lo, hi, zx, plans, _int8_gemm(wd, bias, zx, lo, hi, False, plans))


def conv_plan(w, bias, zx, zw, stride, pad, dilation, groups, acc, lo: int, hi: int) -> GemmPlan:
    """Plan of a conv2d layer for inputs in [lo, hi] (per group bounds; the int8 GEMM when groups = 1)."""
    Cout = w.shape[0]
    Mg = Cout // groups
    wd = (w - zw[:, None, None, None]).reshape(Cout, -1)
    xmax = _xmax(lo, hi, zx)
    plans = [_plan(wd[g * Mg:(g + 1) * Mg], None if bias is None else bias[g * Mg:(g + 1) * Mg], xmax, acc)
             for g in range(groups)]
    gemm = _int8_gemm(wd, bias, zx, lo, hi, any(pad), plans, tuple(w.shape[1:])) if groups == 1 else None
    dw = None
    if groups > 1 and groups == Cout and w.shape[1] == 1 and all(p.layer_exact for p in plans):
        b = np.zeros(Cout, np.int64) if bias is None else bias.astype(np.int64)
        rows = np.abs(wd).sum(axis=1)
        dw = _Depthwise(np.ascontiguousarray(wd.astype(np.int64)), b,
                        max(abs(int(v)) + int(r) * xmax for v, r in zip(b, rows)), int(rows.max()) * xmax)
    plan = GemmPlan(lo, hi, zx, plans, gemm, (tuple(stride), tuple(pad), tuple(dilation), int(groups)), dw)
    if groups > 1 and groups == Cout and w.shape[1] == 1 and dw is None:
        plan.dw_stage = _depthwise_stage_plan(wd, plans, xmax)
    return plan


@dataclass
class _DepthwiseStage:
    """A depthwise conv under an order-dependent accumulator of R rows. One chunk per channel (R >= kernel
    taps): acc = A(A(b) + P(S)), S the exact tap sum (depthwise_acc), so the chunk model is one stage pass over
    the exact sums (:func:`depthwise_stage`). Several (R < taps, a 5x5 depthwise under 16 rows): the chunks of R
    taps in tap order, acc = A(acc + P(S_j)) after each, fused into the tap loop (:func:`depthwise_chunks`). Every
    chunk sum and accumulator fits int32 (checked when planned)."""

    w: np.ndarray  # int64 [C, kh*kw]: w - z_w
    b0: np.ndarray  # int64 [C]: the bias after the A stage
    bias_events: int  # channels whose bias leaves the A stage (events at every position)
    spec: np.ndarray  # int64 [C, 4]: a_bits, a_mode, p_bits, p_mode of each channel's plan
    sum_max: int  # max over channels of sum |w - z_w| * max |x - z_x|
    rows: int = 0  # R: taps per chunk (>= the taps: one chunk)


def _depthwise_stage_plan(wd: np.ndarray, plans: list, xmax: int) -> "_DepthwiseStage | None":
    """The :class:`_DepthwiseStage` of a depthwise conv (one plan per channel), or None where a value could leave
    int32 (a chunk sum: |S| <= sum |w - z_w| * max |x - z_x|; the accumulator: an A stage of at most 32 bits, or
    |b| + that bound, as |P(S)| <= |S|) or the channels' chunk rows differ."""
    rows = np.abs(wd).sum(axis=1)
    sum_max = int(rows.max(initial=0)) * xmax
    if sum_max >= 1 << 31:
        return None
    b0 = np.zeros(len(plans), np.int64)
    spec = np.zeros((len(plans), 4), np.int64)
    bev = 0
    rows_R = {int(p.spec[4]) for p in plans}  # R >= 1 (unbounded rows: the taps)
    if len(rows_R) != 1:
        return None
    for c, p in enumerate(plans):
        a_bits, a_mode, p_bits, p_mode = (int(v) for v in p.spec[:4])
        if a_mode != MODE_NONE and a_bits > 32:
            return None
        b = int(p.bias[0])
        if a_mode == MODE_NONE and abs(b) + int(rows[c]) * xmax >= 1 << 31:
            return None
        bb, ev = _acc._bias_in_acc(p.bias, p.spec)
        b0[c], bev = int(bb[0]), bev + ev
        spec[c] = (a_bits, a_mode, p_bits, p_mode)
    return _DepthwiseStage(np.ascontiguousarray(wd.astype(np.int64)), b0, bev, spec, sum_max, rows_R.pop())


@njit(cache=True, nogil=True)
def depthwise_stage(ct, b0, spec):
    """ct[c, j] = A(b0[c] + P(ct[c, j])) in place (ct holds exact one-chunk sums; spec[c] = a_bits, a_mode,
    p_bits, p_mode as accumulate_rows' codes): the MAC-array model of one chunk (docs/semantics.md section 10).
    Returns (partial events, acc events). int64 arithmetic; the results fit ct's dtype (the plan's check)."""
    pe = np.int64(0)
    ae = np.int64(0)
    for c in range(ct.shape[0]):
        a_bits, a_mode, p_bits, p_mode = spec[c, 0], spec[c, 1], spec[c, 2], spec[c, 3]
        row = ct[c]
        b = b0[c]
        a_lo = -(np.int64(1) << (a_bits - 1)) if a_mode != MODE_NONE else np.int64(0)
        a_hi = -a_lo - 1
        if p_mode == MODE_NONE and a_mode == MODE_SAT:  # int8-acc16-sat's: one vectorized loop
            for j in range(row.shape[0]):
                v = b + np.int64(row[j])
                r = min(max(v, a_lo), a_hi)
                ae += np.int64(r != v)
                row[j] = r
            continue
        for j in range(row.shape[0]):
            v = np.int64(row[j])
            t = _stage_value(v, p_mode, p_bits)
            pe += np.int64(t != v)
            v = b + t
            r = _stage_value(v, a_mode, a_bits)
            ae += np.int64(r != v)
            row[j] = r
    return pe, ae


@njit(cache=True, nogil=True, inline="always")
def _stage_value(v, mode, bits):
    """One register stage on an int64 value: saturate into, or wrap into, ``bits`` bits (MODE_SAT / MODE_WRAP), or
    nothing (MODE_NONE)."""
    if mode == MODE_SAT:
        lo = -(np.int64(1) << (bits - 1))
        return min(max(v, lo), -lo - 1)
    if mode == MODE_WRAP:
        lo = -(np.int64(1) << (bits - 1))
        return ((v - lo) & ((np.int64(1) << bits) - 1)) + lo
    return v


def depthwise_staged_run(x, plan: GemmPlan, geom: np.ndarray, pad, out, epi: "Epilogue"):
    """:func:`depthwise_run` for ``plan.dw_stage``: per block of images the accumulators (one chunk: the exact tap
    sums, depthwise_acc, then :func:`depthwise_stage`; several: :func:`depthwise_chunks`), then ``epi`` (bias
    already in the accumulator). Returns (clipped, partial events, acc events), or None when x leaves the plan's
    range."""
    d = plan.dw_stage
    N, C = x.shape[0], x.shape[1]
    x = np.ascontiguousarray(x)
    L, n_workers, blocks, (sh, sw, Ho, Hq, Wq) = _dw_blocks(x, geom, pad)
    wk = d.w.astype(np.int32)  # every partial sum of the taps < 2^31 (the plan's check)
    zero = np.zeros(C, np.int64)
    one_chunk = d.rows >= wk.shape[1]

    def work(part):
        clipped = pe = ae = 0
        phases = np.empty(sh * sw * Hq * Wq, np.int32)
        acc = np.empty(Ho * Wq, np.int32)
        acc64 = None if one_chunk else np.empty(Ho * Wq, np.int64)
        for n0, b in part:
            ct = np.empty((C, b * L), np.int32)
            if one_chunk:
                if not depthwise_acc(x, n0, plan.zx, plan.lo, plan.hi, wk, geom, pad[0], pad[2], phases, acc, ct):
                    return None
                p1, a1 = depthwise_stage(ct, d.b0, d.spec)
            else:
                ok, p1, a1 = depthwise_chunks(x, n0, plan.zx, plan.lo, plan.hi, wk, geom, pad[0], pad[2], d.rows, d.b0,
                                              d.spec, phases, acc, acc64, ct)
                if not ok:
                    return None
            pe, ae = pe + int(p1), ae + int(a1)
            clipped += epi.run(ct, n0, zero, out)
        return clipped, pe, ae

    res = _in_workers(work, [blocks[i::n_workers] for i in range(n_workers)])
    if any(r is None for r in res):
        return None
    return sum(r[0] for r in res), sum(r[1] for r in res), sum(r[2] for r in res) + d.bias_events * N * L


@dataclass
class _Depthwise:
    """An exact depthwise conv (one filter per channel, no event possible: every group's plan is layer_exact)."""

    w: np.ndarray  # int64 [C, kh*kw]: w - z_w
    add: np.ndarray  # int64 [C]: the bias
    acc_max: int  # max |acc| over inputs in the plan range (exact Python int)
    sum_max: int  # max over channels of sum |w - z_w| * max |x - z_x|: bounds every partial sum of the taps


@njit(cache=True, nogil=True)
def depthwise_acc(x, n0, zx, lo, hi, w, geom, pt, pl, phases, acc, ct):
    """ct[c, i*L + oh*Wo + ow] = sum_(a, b) w[c, a*kw + b] * (x[n0 + i, c, ih, iw] - zx), ih = oh*sh + a*dh - pt,
    iw = ow*sw + b*dw - pl; padding pixels hold z_x and add 0. An exact plan (no event), so the order of the sum
    is free. int32 phases/acc/w/ct only where the plan proves every partial sum < 2^31 (the products and sums
    are then exact in int32), else int64. Returns False when an input lies outside [lo, hi] (ct then not to be
    used).

    Per (image, channel): the zero-padded plane x - z_x is split into sh*sw stride phases (flat ``phases``,
    each plane Hq x Wq, one spare row), phase (p, q) holding padded pixels (r*sh + p, s*sw + q): every tap then
    reads one phase plane at stride 1, so each tap is one long contiguous multiply-add over the Ho x Wq output
    rows (``acc``, flat: vectorized), of which the first Wo columns of each row are the outputs."""
    kh, kw, sh, sw, dh, dw, Ho, Wo = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7]
    C, L = ct.shape[0], Ho * Wo
    nb = ct.shape[1] // L
    plane = phases.shape[0] // (sh * sw)
    Wq = acc.shape[0] // Ho
    n = Ho * Wq
    zero = phases[0] * 0
    bad = False
    for i in range(nb):
        for c in range(C):
            bad |= _dw_phases(x, n0 + i, c, zx, lo, hi, pt, pl, sh, sw, plane, Wq, phases)
            for t in range(n):
                acc[t] = zero
            for a in range(kh):
                ra = a * dh
                for b in range(kw):
                    cb = b * dw
                    wv = w[c, a * kw + b]
                    off = ((ra % sh) * sw + cb % sw) * plane + (ra // sh) * Wq + cb // sw
                    src = phases[off:off + n]
                    for t in range(n):
                        acc[t] += wv * src[t]
            base = i * L
            for oh in range(Ho):
                d = ct[c, base + oh * Wo:base + (oh + 1) * Wo]
                a_row = acc[oh * Wq:oh * Wq + Wo]
                for ow in range(Wo):
                    d[ow] = a_row[ow]
    return not bad


@njit(cache=True, nogil=True)
def _dw_phases_w2(x, n, c, zx, lo, hi, pt, pl, sh, plane, Wq, phases):
    """:func:`_dw_phases` at stride 2 in width: input column s sits at padded column s + pl, so 2k goes to phase
    pl % 2 and 2k + 1 to the other; both in one loop over the pairs of a row (an interleaved load: vectorized,
    1.6x the strided slice per phase). A function of its own, one call per plane: inlined into depthwise_acc it
    slowed the stride-1 taps 1.4x."""
    H, W = x.shape[2], x.shape[3]
    bad = False
    zero = phases[0] * 0
    for t in range(phases.shape[0]):
        phases[t] = zero
    half = W // 2
    for r in range(H):
        pr = r + pt
        row0 = ((pr % sh) * 2 * plane) + (pr // sh) * Wq
        d_even = row0 + (pl % 2) * plane + pl // 2
        d_odd = row0 + (1 - pl % 2) * plane + (pl + 1) // 2
        xrow = x[n, c, r]
        de = phases[d_even:d_even + half]
        do = phases[d_odd:d_odd + half]
        for k in range(half):
            v0 = xrow[2 * k]
            v1 = xrow[2 * k + 1]
            bad |= (v0 < lo) | (v0 > hi) | (v1 < lo) | (v1 > hi)
            de[k] = v0 - zx
            do[k] = v1 - zx
        if W % 2 == 1:
            v = xrow[W - 1]
            bad |= (v < lo) | (v > hi)
            phases[d_even + half] = v - zx
    return bad


@njit(cache=True, nogil=True, inline="always")
def _dw_phases(x, n, c, zx, lo, hi, pt, pl, sh, sw, plane, Wq, phases):
    """The zero-padded plane x[n, c] - z_x split into its sh*sw stride phases (depthwise_acc's layout); returns
    whether an input lies outside [lo, hi]."""
    if sw == 2:
        return _dw_phases_w2(x, n, c, zx, lo, hi, pt, pl, sh, plane, Wq, phases)
    H, W = x.shape[2], x.shape[3]
    bad = False
    zero = phases[0] * 0
    for t in range(phases.shape[0]):
        phases[t] = zero
    for r in range(H):
        pr = r + pt
        row0 = ((pr % sh) * sw * plane) + (pr // sh) * Wq
        if sw == 1:
            dst = phases[row0 + pl:row0 + pl + W]
            src = x[n, c, r]
            for s in range(W):
                v = src[s]
                bad |= (v < lo) | (v > hi)
                dst[s] = v - zx
        else:
            for q in range(sw):  # column phase q: input columns s0, s0 + sw, ... (contiguous in the plane)
                s0 = (q - pl) % sw
                if s0 >= W:
                    continue
                cnt = (W - s0 + sw - 1) // sw
                d0 = row0 + q * plane + (s0 + pl) // sw
                dst = phases[d0:d0 + cnt]
                src = x[n, c, r, s0::sw]
                for s in range(cnt):
                    v = src[s]
                    bad |= (v < lo) | (v > hi)
                    dst[s] = v - zx
    return bad


@njit(cache=True, nogil=True)
def depthwise_chunks(x, n0, zx, lo, hi, w, geom, pt, pl, R, b0, spec, phases, cacc, acc, ct):
    """The MAC-array model of a depthwise conv with several chunks per output (docs/semantics.md section 10):
    per output of channel c, acc = b0[c] (the bias after the A stage), then for each chunk j of R taps in tap
    order (k = a*kw + b, padding pixels adding 0): t = P(S_j), acc = A(acc + t); ct = acc. S_j by depthwise_acc's
    stride-phase planes, one contiguous multiply-add per tap over the Ho x Wq rows (``cacc``, int32: the plan's
    bound), the stages on the Ho x Wo outputs only (int64 ``acc``; spec[c] = a_bits, a_mode, p_bits, p_mode).
    Returns (every input inside [lo, hi], partial events, acc events)."""
    kh, kw, sh, sw, dh, dw, Ho, Wo = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7]
    C, L = ct.shape[0], Ho * Wo
    K = kh * kw
    nb = ct.shape[1] // L
    plane = phases.shape[0] // (sh * sw)
    Wq = cacc.shape[0] // Ho
    n = Ho * Wq
    bad = False
    pe = np.int64(0)
    ae = np.int64(0)
    for i in range(nb):
        for c in range(C):
            bad |= _dw_phases(x, n0 + i, c, zx, lo, hi, pt, pl, sh, sw, plane, Wq, phases)
            a_bits, a_mode, p_bits, p_mode = spec[c, 0], spec[c, 1], spec[c, 2], spec[c, 3]
            for t in range(n):
                acc[t] = b0[c]
            for k0 in range(0, K, R):
                for t in range(n):
                    cacc[t] = 0
                for k in range(k0, min(K, k0 + R)):
                    a = k // kw
                    b = k - a * kw
                    ra, cb = a * dh, b * dw
                    wv = w[c, k]
                    off = ((ra % sh) * sw + cb % sw) * plane + (ra // sh) * Wq + cb // sw
                    src = phases[off:off + n]
                    for t in range(n):
                        cacc[t] += wv * src[t]
                for oh in range(Ho):
                    for ow in range(Wo):
                        t = oh * Wq + ow
                        v = np.int64(cacc[t])
                        s = _stage_value(v, p_mode, p_bits)
                        pe += np.int64(s != v)
                        v = acc[t] + s
                        r = _stage_value(v, a_mode, a_bits)
                        ae += np.int64(r != v)
                        acc[t] = r
            base = i * L
            for oh in range(Ho):
                for ow in range(Wo):
                    ct[c, base + oh * Wo + ow] = acc[oh * Wq + ow]
    return not bad, pe, ae


DW_BLOCK_BYTES = 1 << 18  # accumulators per depthwise block (cache-sized: the epilogue reads them again)


def _dw_blocks(x: np.ndarray, geom: np.ndarray, pad):
    """(L, workers, blocks of images [(n0, b)], (sh, sw, Ho, Hq, Wq): the stride-phase buffers' shape) of a
    depthwise conv on x [N, C, H, W]: blocks whose accumulators fit DW_BLOCK_BYTES, one per worker at least."""
    N, C, H, W = x.shape
    KH, KW, sh, sw, dh, dw, Ho, Wo = (int(v) for v in geom)
    L = Ho * Wo
    n_workers = min(workers(), N)
    nb = int(max(1, min(-(-N // n_workers), DW_BLOCK_BYTES // max(1, C * L * 4))))
    Hp = max((Ho - 1) * sh + (KH - 1) * dh + 1, pad[0] + H)
    Wp = max((Wo - 1) * sw + (KW - 1) * dw + 1, pad[2] + W)
    Hq, Wq = -(-Hp // sh) + 1, -(-Wp // sw)  # a spare row: the tap loops also fill the Wq - Wo unused columns
    return L, n_workers, [(n0, min(nb, N - n0)) for n0 in range(0, N, nb)], (sh, sw, Ho, Hq, Wq)


def depthwise_run(x, plan: GemmPlan, geom: np.ndarray, pad, out, epi: "Epilogue | None" = None) -> int | None:
    """The exact depthwise conv of ``plan.depthwise`` on x [N, C, H, W] into out [N, C, L], by blocks of images in
    :func:`workers` threads: :func:`depthwise_acc` then ``epi`` (fused requant + clamp + count, narrow out) or,
    without one, the accumulators (out's dtype). Returns the clipped count (0 without ``epi``), or None when x
    leaves the plan's range."""
    d = plan.depthwise
    C = x.shape[1]
    x = np.ascontiguousarray(x)
    L, n_workers, blocks, (sh, sw, Ho, Hq, Wq) = _dw_blocks(x, geom, pad)
    dt = np.int32 if d.sum_max < 1 << 31 else np.int64  # every partial sum of the taps < 2^31: int32 is exact
    wk = d.w.astype(dt)

    def work(part):
        clipped = 0
        phases = np.empty(sh * sw * Hq * Wq, dt)
        acc = np.empty(Ho * Wq, dt)
        for n0, b in part:
            ct = np.empty((C, b * L), dt)
            if not depthwise_acc(x, n0, plan.zx, plan.lo, plan.hi, wk, geom, pad[0], pad[2], phases, acc, ct):
                return None
            if epi is None:
                epilogue_wide(ct, n0, d.add, out)
            else:
                clipped += epi.run(ct, n0, d.add, out)
        return clipped

    res = _in_workers(work, [blocks[i::n_workers] for i in range(n_workers)])
    return None if any(r is None for r in res) else sum(res)


def _wide(x: np.ndarray) -> np.ndarray:
    """x as int64 for the general (model-kernel / BLAS) paths, which compute x - z_x in x's dtype: the exact
    paths read narrow codes (ops.core._int_codes) as they are."""
    return x if x.dtype == np.int64 else x.astype(np.int64)


def _fits(plan: GemmPlan, x: np.ndarray) -> bool:
    lo, hi = _range(x, plan.zx)
    return plan.lo <= lo and hi <= plan.hi


# ----------------------------------------------------------------------------- drivers
RISKY_SWITCH = 0.25  # above this fraction of positions needing the model kernel, skip BLAS screening


_LINEAR_GEOM = np.array([1, 1, 1, 1, 1, 1, 1, 1], np.int64)  # a linear layer is a 1x1 conv on [N, K, 1, 1]


def linear_accumulate(x, w, bias, zx, zw, acc, plan: GemmPlan | None = None):
    """Fast linear: (out [N, M], partial events, acc events), int32 where the int8 GEMM's plan proves every
    |acc| < 2^31 (:func:`acc_dtype`), else int64. ``plan``: from :func:`linear_plan`."""
    N, K = x.shape
    M = w.shape[0]
    if plan is None or not _fits(plan, x):
        plan = linear_plan(w, bias, zx, zw, acc, *_range(x, zx))
    if plan.gemm is not None and N:
        out = _exact_accumulators(x.reshape(N, K, 1, 1), plan, _LINEAR_GEOM, (0, 0, 0, 0), (N, M, 1))
        if out is not None:
            return out.reshape(N, M), 0, 0
    x = _wide(x)
    plan = plan.groups[0]
    dt = plan.blas if not plan.kernel_only else (np.float32 if plan.w_f32 is not None else np.int32)
    cols = np.ascontiguousarray((x - zx).T.astype(dt))[None]  # [1, K, N]
    out = np.empty((1, M, N), np.int64)
    if M < PLANE_MAX_M and (plan.kernel_only or not plan.layer_exact):
        pe, ae = _run_planes([plan], cols, 0, out)  # few outputs: vectorize over the batch
    elif plan.kernel_only or (not plan.layer_exact and _risky(plan, cols, 0, N)):
        if _chunked_ok([plan]):  # as a 1x1 conv of one position per sample: the chunked paths of conv2d
            out = np.empty((N, M, 1), np.int64)
            pe, ae = _run_chunked(plan, (x - zx).reshape(N, K, 1, 1), _LINEAR_GEOM, N, 1, K, out)
            return out.reshape(N, M), pe, ae
        pe, ae = _run_kernel([plan], cols, 0, np.arange(N, dtype=np.int64), out)
    else:
        with _blas_one_thread():
            pe, ae = _run_blas(plan, cols, 0, out, {})
    return np.ascontiguousarray(out[0].T), pe, ae


_TPC = None


def _blas_one_thread():
    """Context: BLAS runs single-threaded (hwsim parallelizes itself; multi-threaded BLAS interleaved
    with numba threads, or on a loaded machine, spins and can be 10x slower). No-op without threadpoolctl."""
    global _TPC
    if ThreadpoolController is None:
        return contextlib.nullcontext()
    if _TPC is None:
        _TPC = ThreadpoolController()
    return _TPC.limit(limits=1, user_api="blas")


CHUNK_MIN_R = 8  # chunks of at least this many products: chunk sums by BLAS, then the chunk-level model
CHUNK_BYTES = 24 << 20  # budget of one block of chunk sums (float32)


def _chunked_ok(plans: list[_Plan]) -> bool:
    """One group, more than one chunk, and an exact form of the chunked model: int8 operands for the
    int8 GEMMs (:func:`hwsim.accumulate.run_int8_chunks` for chunks of >= CHUNK_MIN_R products,
    :func:`hwsim.accumulate.run_int8_blocks` for shorter ones), or chunks of >= CHUNK_MIN_R products and a
    float32 model proven exact (BLAS chunk sums, :func:`accumulate_chunks_f32`)."""
    if len(plans) != 1:
        return False
    p = plans[0]
    R, K = int(p.spec[4]), p.w_kernel.shape[0]
    if R >= K:
        return False
    if _acc.vnni_ok(p):
        return True
    if R < CHUNK_MIN_R:
        return int_mm() is not None and _acc.int8_block_weights(p, R * max(1, _acc.BLOCK_MACS // R)) is not None
    return p.w_f32 is not None or (int_mm() is not None and _acc.int8_chunk_weights(p) is not None)


def _run_chunked(plan: _Plan, xp: np.ndarray, geom: np.ndarray, N: int, L: int, K: int, out: np.ndarray):
    """Every position of one group through the MAC-array model, chunk sums computed exactly.

    The VNNI kernel where the CPU, the accumulator and the operands allow (:func:`hwsim.accumulate.run_vnni_chunks`),
    else int8 GEMMs where operands fit (:func:`hwsim.accumulate.run_int8_chunks`; short chunks:
    :func:`hwsim.accumulate.run_int8_blocks`), else float32 BLAS chunk sums and
    :func:`accumulate_chunks_f32` where the plan proved float32 exact, else the model kernel on every position.
    """
    R = int(plan.spec[4])
    res = _acc.run_vnni_chunks(plan, xp, geom, N, L, K, out)
    if res is None:
        res = (_acc.run_int8_blocks if R < CHUNK_MIN_R else _acc.run_int8_chunks)(plan, xp, geom, N, L, K, out)
    if res is not None:
        return res
    if plan.w_f32 is None or R < CHUNK_MIN_R:
        nb = int(max(1, min(N, BLOCK_BYTES // max(1, L * K * 4))))
        cols_buf = np.empty((nb, L, K), xp.dtype if xp.dtype != np.float64 else np.int64)
        pe = ae = 0
        for n0 in range(0, N, nb):
            b = min(nb, N - n0)
            im2col_positions(xp, n0, geom, cols_buf[:b])
            p1, a1 = _run_kernel([plan], cols_buf[:b].transpose(0, 2, 1), 0, np.arange(b * L, dtype=np.int64),
                                 out[n0:n0 + b])
            pe, ae = pe + p1, ae + a1
        return pe, ae
    # no torch: chunk sums of blocks of samples from one batched float32 matmul (exact: every partial sum
    # of a chunk sum is below 2^24), then accumulate_chunks_f32 runs the P/A stages chunk by chunk
    M = plan.w_f32.shape[1]
    C = -(-K // R)
    if "chunks" not in plan.cache:
        w3 = np.zeros((C * R, M), np.float32)
        w3[:K] = plan.w_f32
        plan.cache["chunks"] = w3.reshape(C, R, M)
    w3 = plan.cache["chunks"]
    nb = int(max(1, min(N, CHUNK_BYTES // max(1, C * L * M * 4))))
    cols_buf = np.zeros((nb, L, C * R), np.float32)  # columns K.. stay 0: the last chunk's missing products
    pe = ae = 0
    with _blas_one_thread():
        for n0 in range(0, N, nb):
            b = min(nb, N - n0)
            cols = cols_buf[:b]
            im2col_positions(xp, n0, geom, cols)  # exact: integers below 2^24 (xp may be float64)
            S = np.matmul(cols.reshape(b * L, C, R).transpose(1, 0, 2), w3)  # [C, b*L, M] exact chunk sums
            ev = np.zeros((b * L, 2), np.int64)
            accumulate_chunks_f32(S, plan.bias, plan.spec, L, out[n0:n0 + b], ev)
            pe, ae = pe + int(ev[:, 0].sum()), ae + int(ev[:, 1].sum())
    return pe, ae


def acc_dtype(acc_max: int):
    """The accumulator dtype of an exact plan: int32 where the plan proves every |acc| <= acc_max < 2^31
    (ratio (a) of benchmarks/kernels.py: writing int64 accumulators cost more than the int8 GEMM), else int64."""
    return np.int32 if acc_max < 1 << 31 else np.int64


def _exact_accumulators(x, plan: GemmPlan, geom: np.ndarray, pad, shape):
    """The accumulators [N, M, L] of an exact plan (int8 GEMM or depthwise kernel) in :func:`acc_dtype`, or None
    where the plan has neither or x leaves its range."""
    src = plan.gemm if plan.gemm is not None else plan.depthwise
    if src is None:
        return None
    out = np.empty(shape, acc_dtype(src.acc_max))
    run = gemm_int8 if plan.gemm is not None else depthwise_run
    return out if run(x, plan, geom, pad, out) is not None else None


def conv2d_accumulate(x, w, bias, zx, zw, stride, pad, dilation, groups, acc, plan: GemmPlan | None = None):
    """Fast conv2d: (out [N, Cout, Ho, Wo], partial events, acc events). ``plan``: from :func:`conv_plan`.

    out is int32 where an exact plan (int8 GEMM, depthwise kernel) proves every |acc| < 2^31
    (:func:`acc_dtype`), else int64: the same integers either way.

    A layer that cannot overflow, with int8-sized operands, is one int8 GEMM with int32
    accumulation (:func:`int_mm`) plus exact int64 correction terms.

    Per group: a group whose static bound fits is exact BLAS products only (single-threaded BLAS
    on blocks of samples, spread over numba.get_num_threads() worker threads). Otherwise the
    data bound of the first sample is computed (numba) and, if more than RISKY_SWITCH of its
    positions might overflow, every sample runs the model kernel (numba-parallel over positions);
    else BLAS computes every position and the model kernel reruns those that might overflow.
    """
    N, Cin, H, W = x.shape
    Cout, Cin_g, KH, KW = w.shape
    Ho = (H + pad[0] + pad[1] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    Wo = (W + pad[2] + pad[3] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    L, Kg, Mg, Ktot = Ho * Wo, Cin_g * KH * KW, Cout // groups, Cin * KH * KW
    geom = np.array([KH, KW, stride[0], stride[1], dilation[0], dilation[1], Ho, Wo], np.int64)
    if plan is not None and N:
        out = _exact_accumulators(x, plan, geom, pad, (N, Cout, L))
        if out is not None:
            return out.reshape(N, Cout, Ho, Wo), 0, 0
    if plan is None or not _fits(plan, x):
        plan = conv_plan(w, bias, zx, zw, stride, pad, dilation, groups, acc, *_range(x, zx))
        out = _exact_accumulators(x, plan, geom, pad, (N, Cout, L)) if N else None
        if out is not None:
            return out.reshape(N, Cout, Ho, Wo), 0, 0
    x = _wide(x)
    out = np.empty((N, Cout, L), np.int64)
    plans = plan.groups
    blas_types = [p.blas for p in plans if not p.kernel_only]
    if blas_types:
        dt = np.float64 if np.float64 in blas_types else np.float32
    else:
        dt = np.float32 if all(p.w_f32 is not None for p in plans) else np.int32
    xp = np.zeros((N, Cin, H + pad[0] + pad[1], W + pad[2] + pad[3]), dt)  # padding holds z_x: x - z_x = 0
    pad_shift(np.ascontiguousarray(x), zx, pad[0], pad[2], xp)
    nb = int(max(1, min(N, BLOCK_BYTES // max(1, L * Ktot * np.dtype(dt).itemsize))))
    blocks = [(n0, min(nb, N - n0)) for n0 in range(0, N, nb)]

    use_blas = [not p.kernel_only and not p.cache.get("risky") for p in plans]
    if any(u and not p.layer_exact for u, p in zip(use_blas, plans)):
        first = np.empty((1, Ktot, L), dt)
        im2col(xp, 0, geom, first)
        for g, plan in enumerate(plans):  # screen the first sample: is BLAS + rerun worth it?
            if use_blas[g] and not plan.layer_exact and _risky(plan, first, g * Kg, L):
                use_blas[g] = False
    blas_g = [g for g in range(groups) if use_blas[g]]
    kern_g = [g for g in range(groups) if not use_blas[g]]
    pe = ae = 0
    with _blas_one_thread():
        if blas_g and all(plans[g].layer_exact for g in blas_g):
            # exact products only: blocks in parallel worker threads (BLAS and im2col release the GIL)
            workers = max(1, min(numba.get_num_threads(), len(blocks)))

            def work(part):
                cols_buf, scratch = np.empty((nb, Ktot, L), dt), {}
                for n0, b in part:
                    cols = cols_buf[:b]
                    im2col_serial(xp, n0, geom, cols)
                    for g in blas_g:
                        _run_blas(plans[g], cols, g * Kg, out[n0:n0 + b, g * Mg:(g + 1) * Mg, :], scratch)

            if workers == 1:
                work(blocks)
            else:
                with ThreadPoolExecutor(workers) as ex:
                    list(ex.map(work, [blocks[i::workers] for i in range(workers)]))
        elif blas_g:
            cols_buf, scratch = np.empty((nb, Ktot, L), dt), {}
            for n0, b in blocks:
                cols = cols_buf[:b]
                im2col_serial(xp, n0, geom, cols)
                for g in blas_g:
                    p1, a1 = _run_blas(plans[g], cols, g * Kg, out[n0:n0 + b, g * Mg:(g + 1) * Mg, :], scratch)
                    pe, ae = pe + p1, ae + a1
    if kern_g and Mg < PLANE_MAX_M:  # few channels per group (depthwise): vectorize over positions
        cols_buf = np.empty((nb, Ktot, L), dt)
        for n0, b in blocks:
            im2col(xp, n0, geom, cols_buf[:b])
            if len(kern_g) == groups:
                p1, a1 = _run_planes(plans, cols_buf[:b], 0, out[n0:n0 + b])
                pe, ae = pe + p1, ae + a1
                continue
            for g in kern_g:
                p1, a1 = _run_planes([plans[g]], cols_buf[:b], g * Kg, out[n0:n0 + b, g * Mg:(g + 1) * Mg, :])
                pe, ae = pe + p1, ae + a1
    elif kern_g and _chunked_ok(plans):
        pe, ae = _run_chunked(plans[0], xp, geom, N, L, Ktot, out)
    elif kern_g:
        cols_buf = np.empty((nb, L, Ktot), dt)
        for n0, b in blocks:
            im2col_positions(xp, n0, geom, cols_buf[:b])
            cols = cols_buf[:b].transpose(0, 2, 1)  # indexed [n, k, position], contiguous in k
            positions = np.arange(b * L, dtype=np.int64)
            if len(kern_g) == groups:  # every group in the model kernel: one call (depthwise convs)
                p1, a1 = _run_kernel(plans, cols, 0, positions, out[n0:n0 + b])
                pe, ae = pe + p1, ae + a1
                continue
            for g in kern_g:
                p1, a1 = _run_kernel([plans[g]], cols, g * Kg, positions, out[n0:n0 + b, g * Mg:(g + 1) * Mg, :])
                pe, ae = pe + p1, ae + a1
    return out.reshape(N, Cout, Ho, Wo), pe, ae


def set_threads(n: int) -> None:
    """Numba threads for the kernels (BLAS threads are the BLAS library's own setting)."""
    numba.set_num_threads(int(n))


@njit(cache=True, inline="always")
def _fma_f32(x, r, z):
    """fl32(x * r + z) rounded once, half even (a float32 FMA): ops.fma_f32 for one value, |x| < 2^29.

    The float64 sum s carries its exact error e (TwoSum); fl32(s) differs from the correctly rounded
    result only when s lies exactly halfway between two float32 numbers and e != 0.
    """
    p = np.float64(x) * np.float64(r)
    zd = np.float64(z)
    s = p + zd
    t = s - p
    e = (p - (s - t)) + (zd - t)
    y = np.float32(s)
    yd = np.float64(y)
    if yd != s and e != 0:
        other = np.float32(np.nextafter(y, np.float32(np.inf) if s > yd else np.float32(-np.inf)))
        if (yd + np.float64(other)) * 0.5 == s:
            y = max(y, other) if e > 0 else min(y, other)
    return y


@intrinsic
def fma32(typingctx, a, b, c):
    """fl32(a * b + c) rounded once (IEEE fusedMultiplyAdd on float32 operands): LLVM's ``llvm.fma.f32``, the
    CPU's FMA instruction (vfmadd, vectorized with the loop), libm's ``fmaf`` on a CPU without one -- fused on
    every target, unlike ``llvm.fmuladd``. Its arguments must already be float32 (an integer |x| <= 2^24 converts
    exactly; :func:`_fma_f32` covers larger ones). Bit for bit :func:`_fma_f32` on float32 operands (NaN aside)
    except just below the overflow midpoint 2^128 - 2^103, where this gives +-FLT_MAX and the emulation +-inf
    (tests/core/test_exact_speed.py: random bit patterns, halfway cases at every exponent, subnormals, inf)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _quantize_fma_range(x, inv, z, qmin, qmax, out, i0, i1):
    """out[i] = clip(int64(rint(fl32(x[i] * inv + z))), qmin, qmax) for i in [i0, i1): the float32 FMA
    (:func:`fma32`; x is float32; just below the overflow midpoint it gives +-FLT_MAX where compile.fma_f32
    gives +-inf: qmin either way). int64(r) as numpy's astype on x86
    (compile.TorchQuantizeGrid): NaN and |r| >= 2^63 give INT64_MIN, so qmin after the clip."""
    for i in range(i0, i1):
        r = np.rint(fma32(x[i], inv, z))
        if not (abs(r) < 9.223372036854775808e18):  # NaN, +-inf, out of int64 range: cvttsd2si's INT64_MIN
            out[i] = qmin
        else:
            out[i] = min(max(np.int64(r), qmin), qmax)


@njit(parallel=True, cache=True)
def _quantize_fma_par(x, inv, z, qmin, qmax, out):
    n = x.shape[0]
    step = 1 << 14
    for b in prange((n + step - 1) // step):
        _quantize_fma_range(x, inv, z, qmin, qmax, out, b * step, min(n, (b + 1) * step))


@njit(cache=True, nogil=True)
def _quantize_fma_ser(x, inv, z, qmin, qmax, out):
    _quantize_fma_range(x, inv, z, qmin, qmax, out, 0, x.shape[0])


def quantize_fma(x, inv, z, qmin: int, qmax: int) -> np.ndarray:
    """PyTorch's x86 input quantizer in one numba pass (compile.TorchQuantizeGrid): int64
    clip(rint(fl32(fma(x, inv, z))), qmin, qmax) for float32 x (any shape), float32 inv = fl32(1 / scale) and
    z = float32 zero point; bit for bit the numpy form rint(compile.fma_f32(x, inv, z)).astype(int64) clipped
    (tests/core/test_fastpath2.py). Parallel, single-threaded inside :func:`serial_mode`."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty(x.shape, np.int64)
    (_quantize_fma_ser if serial() else _quantize_fma_par)(x.reshape(-1), np.float32(inv), np.float32(z), int(qmin),
                                                            int(qmax), out.reshape(-1))
    return out


@njit(cache=True, nogil=True, inline="always")
def _add_ratio_fma_loop(p, q, rp, rq, k, mode, small, out, i0, i1):
    if small:  # |p|, |q| <= 2^24: exact in float32, the CPU's FMA (10x the TwoSum form on int8 operands)
        for i in range(i0, i1):
            inner = fma32(np.float32(q[i]), rq, k)
            out[i] = _round_f64(np.float64(fma32(np.float32(p[i]), rp, inner)), mode)
    else:
        for i in range(i0, i1):
            inner = _fma_f32(np.int64(q[i]), rq, k)
            out[i] = _round_f64(np.float64(_fma_f32(np.int64(p[i]), rp, inner)), mode)


@njit(cache=True, nogil=True, inline="always")
def _add_ratio_fma_range(p, q, rp, rq, k, mode, small, out, i0, i1):
    """Elements i0..i1 of :func:`add_ratio_fma`: one loop per rounding mode, each with its mode a constant (the
    loop then vectorizes: 2x the loop that dispatches per element)."""
    if mode == 0:
        _add_ratio_fma_loop(p, q, rp, rq, k, 0, small, out, i0, i1)
    elif mode == 1:
        _add_ratio_fma_loop(p, q, rp, rq, k, 1, small, out, i0, i1)
    elif mode == 2:
        _add_ratio_fma_loop(p, q, rp, rq, k, 2, small, out, i0, i1)
    elif mode == 3:
        _add_ratio_fma_loop(p, q, rp, rq, k, 3, small, out, i0, i1)
    else:
        _add_ratio_fma_loop(p, q, rp, rq, k, 4, small, out, i0, i1)


@njit(parallel=True, cache=True)
def _add_ratio_fma_par(p, q, rp, rq, k, mode, small, out):
    n = p.shape[0]
    nt = (n + ADD_BLOCK - 1) // ADD_BLOCK
    for t in prange(nt):  # per-block slices, as _table2_par
        s, e = t * ADD_BLOCK, min(n, (t + 1) * ADD_BLOCK)
        _add_ratio_fma_range(p[s:e], q[s:e], rp, rq, k, mode, small, out[s:e], 0, e - s)


@njit(cache=True, nogil=True)
def _add_ratio_fma_ser(p, q, rp, rq, k, mode, small, out):
    _add_ratio_fma_range(p, q, rp, rq, k, mode, small, out, 0, p.shape[0])


def add_ratio_fma(p, q, rp, rq, k, mode, out, small: bool | None = None) -> None:
    """ONNX Runtime QLinearAdd (MLAS AVX2) on flat arrays: out = round(fma(p, r_p, fma(q, r_q, K))),
    ROUND_CODE ``mode`` (docs/semantics.md section 7; ops.add's ratio_fma form; |p|, |q| < 2^29). ``small``:
    |p|, |q| < 2^24 (the float32 conversion exact: the CPU's FMA; None = from the dtypes, else the float64
    TwoSum form :func:`_fma_f32`). Parallel; single-threaded inside :func:`serial_mode` or at one numba thread."""
    if small is None:
        small = all(np.iinfo(a.dtype).bits <= 16 for a in (p, q))
    f = _add_ratio_fma_ser if workers() == 1 else _add_ratio_fma_par
    f(p, q, np.float32(rp), np.float32(rq), np.float32(k), int(mode), bool(small), out)


# ----------------------------------------------------------------------------- pools
@njit(cache=True, nogil=True, inline="always")
def _max_pool_planes(xf, p0, p1, H, W, kh, kw, sh, sw, pt, pl, pv, of, Ho, Wo):
    """Planes p0..p1 of :func:`max_pool` on flat C-order x [P, H, W] and out [P, Ho, Wo]: each output row is the
    column-wise max of its window's rows inside the input (contiguous, vectorized), max pv if the window's rows
    reach into the padding, written into a row buffer whose padding columns hold pv; then each output is the
    max of kw neighbours in that buffer. So out = the max over the window with padding pixels = pv, and a
    window wholly in the padding gives pv (:func:`hwsim.reference.max_pool2d`). The buffer has pv's type:
    x's dtype where pv fits it, else int64 (:func:`max_pool`)."""
    Wp = (Wo - 1) * sw + kw  # the padded columns the windows cover
    row = np.full(Wp, pv)
    wn = max(0, min(W, Wp - pl))  # input columns inside them
    rv = row[pl:pl + wn]
    for p in range(p0, p1):
        for i in range(Ho):
            h0 = i * sh - pt
            ha, hb = max(h0, 0), min(h0 + kh, H)
            ob = (p * Ho + i) * Wo
            dst = of[ob:ob + Wo]
            if ha >= hb:  # the window's rows all in the padding
                for j in range(Wo):
                    dst[j] = pv
                continue
            src = xf[(p * H + ha) * W:(p * H + ha) * W + wn]
            for w in range(wn):
                rv[w] = src[w]
            for h in range(ha + 1, hb):
                src = xf[(p * H + h) * W:(p * H + h) * W + wn]
                for w in range(wn):
                    rv[w] = max(rv[w], src[w])
            if hb - ha < kh:  # padding rows in every window of this output row
                for w in range(wn):
                    rv[w] = max(rv[w], pv)
            if kw == 3:  # the common widths unrolled (3.5x faster rows than the loop over b)
                for j in range(Wo):
                    win = row[j * sw:j * sw + 3]
                    dst[j] = max(max(win[0], win[1]), win[2])
            elif kw == 2:
                for j in range(Wo):
                    win = row[j * sw:j * sw + 2]
                    dst[j] = max(win[0], win[1])
            else:
                for j in range(Wo):
                    win = row[j * sw:j * sw + kw]
                    m = win[0]
                    for b in range(1, kw):
                        m = max(m, win[b])
                    dst[j] = m


MAX_POOL_TASK = 1 << 16  # input elements per parallel task of the max pool (whole planes)


@njit(parallel=True, cache=True)
def _max_pool_par(xf, P, H, W, kh, kw, sh, sw, pt, pl, pv, of, Ho, Wo):
    per = max(1, MAX_POOL_TASK // max(1, H * W))
    for t in prange((P + per - 1) // per):
        _max_pool_planes(xf, t * per, min(P, (t + 1) * per), H, W, kh, kw, sh, sw, pt, pl, pv, of, Ho, Wo)


@njit(cache=True, nogil=True)
def _max_pool_ser(xf, P, H, W, kh, kw, sh, sw, pt, pl, pv, of, Ho, Wo):
    _max_pool_planes(xf, 0, P, H, W, kh, kw, sh, sw, pt, pl, pv, of, Ho, Wo)


def max_pool(x, kh, kw, sh, sw, pt, pl, pad_value, out) -> None:
    """out[n, c, i, j] = max over the window at (i*sh - pt, j*sw - pl) of x, padding pixels = pad_value
    (docs/semantics.md section 6; ops.max_pool2d); out's shape gives the windows (any that reach past the
    bottom/right edge are padded too). out may have x's dtype (pad_value must fit it). The kernel works in x's
    dtype where pad_value fits it, else in int64. Parallel over planes; single-threaded inside :func:`serial_mode`
    or at one numba thread."""
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    if N * C * Ho * Wo == 0:
        return
    x = np.ascontiguousarray(x if x.dtype != np.uint64 else x.view(np.int64))  # uint64: as the int64 it wraps to
    info = np.iinfo(x.dtype)
    pv = x.dtype.type(pad_value) if info.min <= pad_value <= info.max else np.int64(pad_value)
    of = out.reshape(-1) if out.flags.c_contiguous else np.empty(out.size, out.dtype)
    f = _max_pool_ser if workers() == 1 else _max_pool_par
    f(x.reshape(-1), N * C, H, W, int(kh), int(kw), int(sh), int(sw), int(pt), int(pl), pv, of, Ho, Wo)
    if not out.flags.c_contiguous:
        out[...] = of.reshape(out.shape)


# ----------------------------------------------------------------------------- output clamp
NARROW_DTYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32)
# their ranges once: np.iinfo costs ~3 us a call, narrow_dtype runs per layer and batch
_NARROW_RANGES = tuple((int(np.iinfo(dt).min), int(np.iinfo(dt).max), dt) for dt in NARROW_DTYPES)


def narrow_dtype(lo: int, hi: int):
    """The narrowest integer dtype holding [lo, hi] (int64 if none is narrower)."""
    for dmin, dmax, dt in _NARROW_RANGES:
        if dmin <= lo and hi <= dmax:
            return dt
    return np.int64


@njit(cache=True, nogil=True, inline="always")
def _clamp_count_range(y, lo, hi, qmin, qmax, count_low, out, i0, i1):
    c = np.int64(0)
    for i in range(i0, i1):
        v = y[i]
        c += np.int64(v > qmax) + np.int64(count_low and v < qmin)
        out[i] = min(max(v, lo), hi)
    return c


@njit(parallel=True, cache=True)
def _clamp_count_par(y, lo, hi, qmin, qmax, count_low, out):
    n = y.shape[0]
    nt = (n + ADD_BLOCK - 1) // ADD_BLOCK
    cnt = np.zeros(nt, np.int64)
    for t in prange(nt):
        cnt[t] = _clamp_count_range(y, lo, hi, qmin, qmax, count_low, out, t * ADD_BLOCK, min(n, (t + 1) * ADD_BLOCK))
    return cnt.sum()


@njit(cache=True, nogil=True)
def _clamp_count_ser(y, lo, hi, qmin, qmax, count_low, out):
    return _clamp_count_range(y, lo, hi, qmin, qmax, count_low, out, 0, y.shape[0])


def clamp_count(y, lo, hi, qmin, qmax, count_low, out) -> int:
    """out = clamp(y, lo, hi) (out may be a narrower dtype holding [lo, hi]); returns the number of
    values above qmax plus, when count_low, below qmin (flat arrays; one pass; single-threaded inside
    :func:`serial_mode`)."""
    return int((_clamp_count_ser if serial() else _clamp_count_par)(y, lo, hi, qmin, qmax, count_low, out))


# ----------------------------------------------------------------------------- fixed-point requantization
# tie codes of one rounding step (fixedpoint.TIE_RULES order)
TIE_CODE = {"half_even": 0, "half_away": 1, "half_up": 2}
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


@njit(cache=True, inline="always")
def _round_up(fl, rem, n, tie):
    """Whether floor fl (value fl + rem / 2^n, 0 <= rem < 2^n) rounds up to fl + 1 under the tie code.

    Branch-free apart from n == 0 (loop-invariant in the kernels), so the loops vectorize.
    """
    if n == 0:
        return False
    half = np.int64(1) << (n - 1)
    tie_up = (tie == 2) | ((tie == 1) & (fl >= 0)) | ((tie == 0) & ((fl & 1) == 1))
    return (rem > half) | ((rem == half) & tie_up)


@njit(cache=True, inline="always")
def _mul_round_31(x, q, tie):
    """round_tie(x * q / 2^31) exactly for |x| <= 2^62, 0 <= q < 2^31 (x = a*2^31 + b splits the product)."""
    a = x >> 31
    b = x - (a << 31)  # 0 <= b < 2^31
    bq = b * q  # < 2^62
    fq = bq >> 31
    rem = bq - (fq << 31)
    fl = a * q + fq  # |a| <= 2^31, q < 2^31: no overflow
    if _round_up(fl, rem, 31, tie):
        fl += 1
    return fl


@njit(cache=True, inline="always")
def _mbqm(x, qc, sc, single, tie0, tie1):
    """fixedpoint.multiply_by_quantized_multiplier of one int64 x with Q31 (qc, sc), 31-bit multiplier.

    double: RoundingDivideByPOT(SRDHM(x * 2^max(sc,0), qc), max(-sc,0)) with ties (tie0, tie1), the
    high-mul clamped to int32; single: round(x * qc / 2^(31 - sc)) with tie1, clamped to int32
    (the callers keep 0 <= qc < 2^31, -31 <= sc <= 31 and, for single, |x| <= 2^31).
    """
    if single:
        n = 31 - sc  # 0 <= n <= 62, |x * qc| <= 2^62
        p = x * qc
        fl = p >> n
        rem = p - (fl << n)
        if _round_up(fl, rem, n, tie1):
            fl += 1
    else:
        left = sc if sc > 0 else 0
        right = -sc if sc < 0 else 0
        lim = np.int64(1) << (62 - left)
        xc = min(max(x, -lim), lim) << left
        hi = _mul_round_31(xc, qc, tie0)
        hi = min(max(hi, _I32_MIN), _I32_MAX)
        fl = hi >> right
        rem = hi - (fl << right)
        if _round_up(fl, rem, right, tie1):
            fl += 1
    return min(max(fl, _I32_MIN), _I32_MAX)


@njit(parallel=True, cache=True)
def requant_fixed(acc, q, shift, single, tie0, tie1, out):
    """Fixed-point requantization of acc[o, c, i] (int64) with per-channel Q31 (q[c], shift[c]) into out.

    Per element :func:`_mbqm`. Semantics: fixedpoint.multiply_by_quantized_multiplier (the callers
    check shift ranges and, for single rounding, |acc| <= 2^31).
    """
    O, C, I = acc.shape
    for t in prange(O * C):
        o = t // C
        c = t - o * C
        qc = np.int64(q[c])
        sc = np.int64(shift[c])
        for i in range(I):
            out[o, c, i] = _mbqm(acc[o, c, i], qc, sc, single, tie0, tie1)


ADD_BLOCK = 4096  # elements per parallel task of the element-wise add kernels


@njit(cache=True)
def _add_fixed_block(a, b, za, zb, zy, left, qa, sa, qb, sb, qy, sy, single, tie0, tie1, out, i0, i1):
    """Elements i0..i1 of :func:`add_fixed`; False if single rounding meets |x| > 2^31 (not written)."""
    lim = np.int64(1) << 31
    if single:
        for i in range(i0, i1):
            xa = (np.int64(a[i]) - za) << left
            xb = (np.int64(b[i]) - zb) << left
            if abs(xa) > lim or abs(xb) > lim:
                return False
            s = _mbqm(xa, qa, sa, True, tie0, tie1) + _mbqm(xb, qb, sb, True, tie0, tie1)
            if abs(s) > lim:
                return False
            out[i] = _mbqm(s, qy, sy, True, tie0, tie1) + zy
        return True
    for i in range(i0, i1):  # double rounding is defined for every int64 x
        xa = (np.int64(a[i]) - za) << left
        xb = (np.int64(b[i]) - zb) << left
        s = _mbqm(xa, qa, sa, False, tie0, tie1) + _mbqm(xb, qb, sb, False, tie0, tie1)
        out[i] = _mbqm(s, qy, sy, False, tie0, tie1) + zy
    return True


@njit(parallel=True, cache=True)
def add_fixed(a, b, za, zb, zy, left, qa, sa, qb, sb, qy, sy, single, tie0, tie1, out):
    """TFLite int8 ADD on flat arrays: out = MBQM(MBQM((a - za) << left, qa, sa) + MBQM((b - zb) << left, qb, sb),
    qy, sy) + zy, each MBQM by :func:`_mbqm` (docs/semantics.md section 7, "fixed"; ops.add's numpy form).

    Returns False (out then incomplete) when single rounding meets a value with |x| > 2^31, outside
    the kernel's domain: the caller then runs the numpy path.
    """
    n = a.shape[0]
    nt = (n + ADD_BLOCK - 1) // ADD_BLOCK
    ok = np.ones(nt, np.bool_)
    for t in prange(nt):
        ok[t] = _add_fixed_block(a, b, za, zb, zy, left, qa, sa, qb, sb, qy, sy, single, tie0, tie1, out,
                                 t * ADD_BLOCK, min(n, (t + 1) * ADD_BLOCK))
    return ok.all()


ADD_TABLE_MAX = 1 << 17  # entries of an element-wise table: two 8-bit (or 8 x 9-bit) grids


@njit(cache=True, nogil=True, inline="always")
def _table2_range(a, b, amin, bmin, na, nbv, tc, ev, check, out, i0, i1):
    """Elements i0..i1 of :func:`table2` by its derived tables; -1 when ``check`` finds an input outside the
    table (the index is clamped into it meanwhile, so memory stays in bounds; out then incomplete). Without
    ``check`` (the dtypes fit the table) a pure lookup."""
    c = np.int64(0)
    if check:
        una, unb = np.uint64(na), np.uint64(nbv)
        bad = np.uint64(0)
        for i in range(i0, i1):
            ia = np.uint64(np.int64(a[i]) - amin)  # below amin: wraps above 2^63, so one unsigned compare
            ib = np.uint64(np.int64(b[i]) - bmin)
            bad |= np.uint64(ia >= una) | np.uint64(ib >= unb)
            k = min(ia, una - np.uint64(1)) * unb + min(ib, unb - np.uint64(1))
            out[i] = tc[k]
            c += ev[k]
        return np.int64(-1) if bad else c
    amin32, bmin32, nb32 = np.int32(amin), np.int32(bmin), np.uint32(nbv)  # a table covers 16-bit dtypes at most
    for i in range(i0, i1):  # 32-bit index arithmetic: 1.5x the int64 form
        k = np.uint32(np.int32(a[i]) - amin32) * nb32 + np.uint32(np.int32(b[i]) - bmin32)
        out[i] = tc[k]
        c += ev[k]
    return c


@njit(parallel=True, cache=True)
def _table2_par(a, b, amin, bmin, na, nbv, tc, ev, check, out):
    n = a.shape[0]
    nt = (n + ADD_BLOCK - 1) // ADD_BLOCK
    cnt = np.zeros(nt, np.int64)
    for t in prange(nt):  # per-block slices: numba's parallel loop indexes whole arrays 1.7x slower
        s, e = t * ADD_BLOCK, min(n, (t + 1) * ADD_BLOCK)
        cnt[t] = _table2_range(a[s:e], b[s:e], amin, bmin, na, nbv, tc, ev, check, out[s:e], 0, e - s)
    return np.int64(-1) if cnt.min() < 0 else cnt.sum()


@njit(cache=True, nogil=True)
def _table2_ser(a, b, amin, bmin, na, nbv, tc, ev, check, out):
    return _table2_range(a, b, amin, bmin, na, nbv, tc, ev, check, out, 0, a.shape[0])


def table2_derived(table, lo: int, hi: int, qmin: int, qmax: int, count_low: bool, dtype) -> tuple:
    """The two tables :func:`table2` reads, made once per layer (ops.add caches them): the clamped table
    min(max(v, lo), hi) cast to ``dtype`` (out's: a narrow dtype wraps as a store into out would; int32 for a
    wider out where the clamped values fit) and the uint8 event table (v > qmax) + count_low * (v < qmin) of the
    unclamped v."""
    v = np.asarray(table).astype(np.int64)
    c = np.minimum(np.maximum(v, np.int64(lo)), np.int64(hi))
    dt = np.dtype(dtype)
    if dt.itemsize > 4 and c.size and -(1 << 31) <= int(c.min()) and int(c.max()) < 1 << 31:
        dt = np.dtype(np.int32)  # half the cache lines of an int64 table; widened by the store
    ev = (v > qmax).astype(np.uint8)
    if count_low:
        ev += (v < qmin).astype(np.uint8)
    return c.astype(dt), ev


def _table_covers(x: np.ndarray, xmin: int, n: int) -> bool:
    """Every value of x's dtype lies in [xmin, xmin + n) (no range check needed)."""
    info = np.iinfo(x.dtype)
    return xmin <= int(info.min) and int(info.max) < xmin + n


def table2(a, b, amin: int, bmin: int, na: int, nbv: int, table, lo: int, hi: int, qmin: int, qmax: int,
           count_low: bool, out, derived: tuple | None = None) -> int | None:
    """An element-wise op of two integer inputs by its table (flat arrays): v = table[(a - amin) * nbv + (b - bmin)],
    out = clamp(v, lo, hi) (out's dtype may be narrow), returns #(v > qmax) + count_low * #(v < qmin)
    (registry.clamp_counted's count), or None when an input lies outside the table. ops.add builds the table
    from its own kernels over every pair of grid values (exact by construction). ``derived``:
    :func:`table2_derived` of (table, lo, hi, qmin, qmax, count_low, out.dtype), made here if None; the kernel
    is a lookup in those two, with no range check where the input dtypes fit the table (int8 codes on an
    8-bit grid)."""
    for x in (a, b):
        if x.dtype == np.uint64 and x.size and int(x.max()) >= 1 << 63:
            return None  # outside any table; below 2^63 uint64 reads as int64 in the kernel
    if derived is None:
        derived = table2_derived(table, lo, hi, qmin, qmax, count_low, out.dtype)
    tc, ev = derived
    check = not (_table_covers(a, amin, na) and _table_covers(b, bmin, nbv))
    f = _table2_ser if workers() == 1 else _table2_par  # (numba's parallel loop on one thread: 1.7x slower)
    c = int(f(a, b, int(amin), int(bmin), int(na), int(nbv), tc, ev, check, out))
    return None if c < 0 else c


@njit(cache=True, inline="always")
def _round_f64(d, mode):
    """fixedpoint.round_float of one float64 value for ROUND_CODE modes (no stochastic); |d| clipped to 2^62."""
    d = min(max(d, -_CLIP62), _CLIP62)
    if mode == 0:
        r = np.rint(d)
    elif mode == 1:
        r = np.floor(abs(d) + 0.5)
        if d < 0:
            r = -r
    elif mode == 2:
        r = np.floor(d + 0.5)
    elif mode == 3:
        r = np.floor(d)
    else:
        r = np.trunc(d)
    return np.int64(r)


@njit(parallel=True, cache=True)
def add_float32(a, b, sa, pa, sb, pb, inv, zy, z_before, mode, out):
    """PyTorch x86 quantized add (vector body) on flat arrays, docs/semantics.md section 7 "float32":
    da = fl32(s_a * a + premul_a) (exact in float64, one rounding = the FMA), c = fl32(da + db),
    v = fl32(c * inv_y); out = round(fl32(v + z_y)) (z_before) or round(v) + z_y; ROUND_CODE ``mode``."""
    n = a.shape[0]
    nt = (n + ADD_BLOCK - 1) // ADD_BLOCK
    zf = np.float32(zy)
    for t in prange(nt):
        for i in range(t * ADD_BLOCK, min(n, (t + 1) * ADD_BLOCK)):
            da = np.float32(sa * np.float64(a[i]) + pa)
            db = np.float32(sb * np.float64(b[i]) + pb)
            v = np.float32(np.float32(da + db) * inv)
            if z_before:
                out[i] = _round_f64(np.float64(np.float32(v + zf)), mode)
            else:
                out[i] = _round_f64(np.float64(v), mode) + zy


# ----------------------------------------------------------------------------- float32 requantization
# rounding codes of requant_float32 (fixedpoint.ROUNDING_MODES without stochastic)
ROUND_CODE = {"half_even": 0, "half_away": 1, "half_up": 2, "floor": 3, "trunc": 4}
_CLIP62 = float(2 ** 62)


@njit(cache=True, inline="always")
def _requant_f32_row(acc, o, c, m, b, has_bias, z_before, zf, z_after, mode, out, p, has_pre):
    """One (o, c) row of :func:`requant_float32` with a compile-time-known rounding ``mode`` branch per row."""
    for i in range(acc.shape[2]):
        fa = np.float32(acc[o, c, i])
        if has_pre:
            fa = np.float32(fa * p)
        if has_bias:
            fa = np.float32(fa + b)
        v = np.float32(fa * m)
        if z_before:
            v = np.float32(v + zf)
        out[o, c, i] = _round_f64(np.float64(v), mode) + z_after


@njit(parallel=True, cache=True)
def requant_float32(acc, mult, bias_term, has_bias, z_before, z_y, mode, out, pre, has_pre):
    """float32 requantization of acc[o, c, i] (int64) with per-channel float32 M[c] into out (int64).

    fa = f32(acc); fa = f32(fa * pre[c]) if has_pre (oneDNN's dequantization); fa = f32(fa + b[c]) if has_bias; v = f32(fa * M[c]); v = f32(v + f32(z_y)) if
    z_before; r = round(v) in ``mode`` (exact in float64, |v| clipped to 2^62); + z_y when not
    z_before. Semantics: ops._requantize_fast / fixedpoint.round_float (the callers pass no
    stochastic mode). No clamping here: the caller clamps and counts.
    """
    O, C, I = acc.shape
    zf = np.float32(z_y)
    z_after = 0 if z_before else z_y
    for t in prange(O * C):
        o = t // C
        c = t - o * C
        m = mult[c]
        b = bias_term[c]
        p = pre[c]
        if mode == 0:  # one loop per mode: the rounding branch leaves the inner loop
            _requant_f32_row(acc, o, c, m, b, has_bias, z_before, zf, z_after, 0, out, p, has_pre)
        elif mode == 1:
            _requant_f32_row(acc, o, c, m, b, has_bias, z_before, zf, z_after, 1, out, p, has_pre)
        elif mode == 2:
            _requant_f32_row(acc, o, c, m, b, has_bias, z_before, zf, z_after, 2, out, p, has_pre)
        elif mode == 3:
            _requant_f32_row(acc, o, c, m, b, has_bias, z_before, zf, z_after, 3, out, p, has_pre)
        else:
            _requant_f32_row(acc, o, c, m, b, has_bias, z_before, zf, z_after, 4, out, p, has_pre)


# ----------------------------------------------------------------------------- shift (pow2) requantization
@njit(parallel=True, cache=True)
def requant_shift(acc, shift, mode, out):
    """acc[o, c, i] / 2^shift[c] rounded with ``mode`` (ROUND_CODE, no stochastic) for 0 <= shift <= 62;
    shift < 0: exact left shift of acc clipped to +-2^62 (ops._shift_left_exact). Semantics:
    fixedpoint.shift_right_round (floor quotient q = x >> n, remainder r = x - (q << n))."""
    O, C, I = acc.shape
    for t in prange(O * C):
        o = t // C
        c = t - o * C
        n = shift[c]
        for i in range(I):
            x = acc[o, c, i]
            if n < 0:
                k = min(-n, 62)
                lim = np.int64(1) << (62 - k)
                out[o, c, i] = min(max(x, -lim), lim) << k
                continue
            q = x >> n
            r = x - (q << n)
            if mode == 3:  # floor
                out[o, c, i] = q
            elif mode == 4:  # trunc
                out[o, c, i] = q + (1 if (x < 0 and r != 0) else 0)
            else:  # nearest: tie code 0 half_even, 1 half_away, 2 half_up (= ROUND_CODE of those modes)
                out[o, c, i] = q + (1 if _round_up(q, r, n, mode) else 0)
