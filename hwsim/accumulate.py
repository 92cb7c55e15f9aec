"""The order-dependent MAC-array model fused with its products (docs/semantics.md, section 10).

Where the accumulator (or the partial-sum register) saturates or wraps, the result depends on the
order of the chunk adds and every output element goes through the sequential model. For int8
networks under a 16-bit saturating accumulator nearly every element does (measured on ResNet-18 @
32x32, int8-acc16-sat: 19-99% of the elements of every conv saturate, 100% of the positions), so
screening cannot skip work there: the model itself has to run at GEMM-like speed.

:func:`chunk_model_f32` is that model as a register-tiled kernel: a tile of TP positions (rows of
a position-major column matrix) times a block of MB output channels; per chunk of R products the
chunk sums of the TP x MB outputs are formed in float32 (4 products per pass; every value below
2^24, so every float add and multiply is exact integer arithmetic and the order inside a chunk is
free), then the P-bit partial register and the A-bit accumulator are applied chunk by chunk, in k
order, exactly as :func:`hwsim.kernels.accumulate_rows` (the contract) does. R = 1 (saturation after
every MAC) runs the same tile with the clamp after each product. No chunk sums are written to memory
(the batched-matmul form wrote K/R x M floats per position and read them back: memory-bound).

``fastmath={"contract"}`` only lets LLVM fuse a multiply and an add into an FMA: both operands are
integers below 2^24 and the exact result is below 2^24, so the fused and the separate forms give the
same (exact) float.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

MODE_NONE, MODE_WRAP, MODE_SAT = 0, 1, 2  # = hwsim.kernels' codes
TP = 4  # positions per tile (x values held in registers, each weight load used TP times)
MB = 128  # output channels per block (the tile's chunk sums, accumulators and counts stay in L1)


@njit(cache=True, inline="always")
def _stage(v, lo, hi, mod, inv, mode):
    """One P- or A-stage on an exact float32 integer v: wrap (v - mod * floor((v - lo) / mod)) or saturate."""
    if mode == MODE_WRAP:
        return v - mod * np.floor((v - lo) * inv)
    if mode == MODE_SAT:
        return min(max(v, lo), hi)
    return v


@njit(parallel=True, cache=True, fastmath={"contract"})
def chunk_model_f32(cols, w, bias, spec, L, out, events):
    """MAC-array model of every position p < out.shape[0] * L of cols [P', Kp] (float32 integers,
    position-major, P' >= P rounded up to TP, columns past K zero) with weights w [Kp, M] (float32
    integers, rows past K zero; Kp a multiple of R): out[p // L, m, p % L] and, per tile t of TP
    positions, events[t] = (partial events, acc events).

    spec = (a_bits, a_mode, p_bits, p_mode, R) as in :func:`hwsim.kernels.accumulate_rows`.
    Preconditions (the caller's plan): every product, chunk sum, partial register value, accumulator
    value plus one chunk sum, and wrap intermediate is an integer below 2^24 in magnitude.
    """
    Kp, M = w.shape
    P = out.shape[0] * L
    a_bits, a_mode, p_bits, p_mode, R = spec[0], spec[1], spec[2], spec[3], spec[4]
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
    # the bias enters the accumulator first (one event per output element when it is outside A bits)
    b0 = np.empty(M, np.float32)
    bev = np.int64(0)
    for m in range(M):
        b = bias[m]
        if a_mode != MODE_NONE and (b < a_lo_i or b > a_hi_i):
            bev += 1
            if a_mode == MODE_WRAP:
                b = ((b - a_lo_i) & ((np.int64(1) << a_bits) - 1)) + a_lo_i
            else:
                b = min(max(b, a_lo_i), a_hi_i)
        b0[m] = np.float32(b)
    ntile = (P + TP - 1) // TP
    per_mac = R == 1 and p_mode == MODE_NONE
    for t in prange(ntile):
        p0 = t * TP
        np_ = min(TP, P - p0)
        acc = np.empty((TP, MB), np.float32)
        s = np.empty((TP, MB), np.float32)
        pc = np.zeros((TP, MB), np.float32)  # event counts <= Kp < 2^24: exact in float32
        ac = np.zeros((TP, MB), np.float32)
        for m0 in range(0, M, MB):
            mb = min(MB, M - m0)
            for i in range(TP):
                for j in range(mb):
                    acc[i, j] = b0[m0 + j]
            if per_mac:
                # saturation (or wrap) after every MAC, in k order; two MACs per pass
                K2 = Kp - Kp % 2
                for k in range(0, K2, 2):
                    for i in range(TP):
                        x0 = cols[p0 + i, k]
                        x1 = cols[p0 + i, k + 1]
                        for j in range(mb):
                            v = acc[i, j] + x0 * w[k, m0 + j]
                            c = _stage(v, a_lo, a_hi, a_mod, a_inv, a_mode)
                            e = np.float32(1.0) if c != v else np.float32(0.0)
                            v = c + x1 * w[k + 1, m0 + j]
                            c = _stage(v, a_lo, a_hi, a_mod, a_inv, a_mode)
                            e += np.float32(1.0) if c != v else np.float32(0.0)
                            acc[i, j] = c
                            ac[i, j] += e
                for k in range(K2, Kp):
                    for i in range(TP):
                        x0 = cols[p0 + i, k]
                        for j in range(mb):
                            v = acc[i, j] + x0 * w[k, m0 + j]
                            c = _stage(v, a_lo, a_hi, a_mod, a_inv, a_mode)
                            ac[i, j] += np.float32(1.0) if c != v else np.float32(0.0)
                            acc[i, j] = c
            else:
                for c0 in range(0, Kp, R):
                    c1 = c0 + R
                    c4 = c1 - R % 4
                    for i in range(TP):
                        for j in range(mb):
                            s[i, j] = 0
                    for k in range(c0, c4, 4):
                        for i in range(TP):
                            x0 = cols[p0 + i, k]
                            x1 = cols[p0 + i, k + 1]
                            x2 = cols[p0 + i, k + 2]
                            x3 = cols[p0 + i, k + 3]
                            for j in range(mb):
                                s[i, j] += ((x0 * w[k, m0 + j] + x1 * w[k + 1, m0 + j])
                                            + (x2 * w[k + 2, m0 + j] + x3 * w[k + 3, m0 + j]))
                    for k in range(c4, c1):
                        for i in range(TP):
                            x0 = cols[p0 + i, k]
                            for j in range(mb):
                                s[i, j] += x0 * w[k, m0 + j]
                    for i in range(TP):
                        for j in range(mb):
                            v = s[i, j]
                            c = _stage(v, p_lo, p_hi, p_mod, p_inv, p_mode)
                            pc[i, j] += np.float32(1.0) if c != v else np.float32(0.0)
                            v = acc[i, j] + c
                            c = _stage(v, a_lo, a_hi, a_mod, a_inv, a_mode)
                            ac[i, j] += np.float32(1.0) if c != v else np.float32(0.0)
                            acc[i, j] = c
            for i in range(np_):
                p = p0 + i
                n = p // L
                l = p - n * L
                for j in range(mb):
                    out[n, m0 + j, l] = np.int64(acc[i, j])
        pe = np.int64(0)
        ae = bev * np_
        for i in range(np_):
            for j in range(MB):
                pe += np.int64(pc[i, j])
                ae += np.int64(ac[i, j])
        events[t, 0] = pe
        events[t, 1] = ae


# ----------------------------------------------------------------------------- int8 chunk sums (torch._int_mm)
@njit(cache=True, nogil=True)
def im2col_chunks_i8(xp, n0, geom, off, R, out):
    """Chunk-major int8 columns: out[c, i*L + l, r] = xp[n0 + i, ...k...] - off for k = c*R + r < K
    (canonical k order: input channel, kernel row, kernel column), 0 for k >= K; the caller proved
    every xp - off (padding pixels included) lies in [-128, 127]. Serial, releasing the GIL."""
    kh, kw, sh, sw, dh, dw, Ho, Wo = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7]
    Cin = xp.shape[1]
    C = out.shape[0]
    nb = out.shape[1] // (Ho * Wo)
    K = Cin * kh * kw
    for i in range(nb):
        for oh in range(Ho):
            for ow in range(Wo):
                p = (i * Ho + oh) * Wo + ow
                for ci in range(Cin):
                    for a in range(kh):
                        ih = oh * sh + a * dh
                        for b in range(kw):
                            k = (ci * kh + a) * kw + b
                            c = k // R
                            out[c, p, k - c * R] = np.int8(np.int64(xp[n0 + i, ci, ih, ow * sw + b * dw]) - off)
                for k in range(K, C * R):
                    c = k // R
                    out[c, p, k - c * R] = 0


@njit(cache=True, nogil=True)
def chunk_stage_i64(S, corr, spec, acc):
    """One chunk of the MAC-array model on a block of positions: v = S[p, m] + corr[m] (the exact chunk
    sum), the P-bit partial register on v, then acc[p, m] += v under the A-bit policy (spec as in
    :func:`hwsim.kernels.accumulate_rows`; int64 arithmetic, |values| < 2^62 by the plan). Returns
    (partial events, acc events). Serial, releasing the GIL; each stage is one vectorizable loop."""
    Pb, M = S.shape
    a_bits, a_mode, p_bits, p_mode = spec[0], spec[1], spec[2], spec[3]
    pe = np.int64(0)
    ae = np.int64(0)
    if p_mode == MODE_NONE:
        if a_mode == MODE_SAT:
            a_lo = -(np.int64(1) << (a_bits - 1))
            a_hi = -a_lo - 1
            for p in range(Pb):
                for m in range(M):
                    v = acc[p, m] + (np.int64(S[p, m]) + corr[m])
                    c = min(max(v, a_lo), a_hi)
                    ae += np.int64(c != v)
                    acc[p, m] = c
            return pe, ae
        for p in range(Pb):
            for m in range(M):
                acc[p, m] += np.int64(S[p, m]) + corr[m]
    else:
        p_lo = -(np.int64(1) << (p_bits - 1))
        p_hi = -p_lo - 1
        p_mask = (np.int64(1) << p_bits) - 1
        for p in range(Pb):
            for m in range(M):
                v = np.int64(S[p, m]) + corr[m]
                if p_mode == MODE_SAT:
                    c = min(max(v, p_lo), p_hi)
                else:
                    c = ((v - p_lo) & p_mask) + p_lo
                pe += np.int64(c != v)
                acc[p, m] += c
    # the A stage after the chunk add (the plain add above is exact in int64)
    if a_mode == MODE_SAT:
        a_lo = -(np.int64(1) << (a_bits - 1))
        a_hi = -a_lo - 1
        for p in range(Pb):
            for m in range(M):
                v = acc[p, m]
                c = min(max(v, a_lo), a_hi)
                ae += np.int64(c != v)
                acc[p, m] = c
    elif a_mode == MODE_WRAP:
        a_lo = -(np.int64(1) << (a_bits - 1))
        a_mask = (np.int64(1) << a_bits) - 1
        for p in range(Pb):
            for m in range(M):
                v = acc[p, m]
                c = ((v - a_lo) & a_mask) + a_lo
                ae += np.int64(c != v)
                acc[p, m] = c
    return pe, ae


@njit(cache=True, nogil=True)
def chunk_stage_f32(S, corr, lo, hi, acc, cnt):
    """:func:`chunk_stage_i64` for the common case of no P stage and a saturating A stage, in float32:
    acc[p, m] = clamp(acc[p, m] + (S[p, m] + corr[m]), lo, hi); cnt[m] += 1 where the clamp changed the
    value. Exact where the plan proved every value below 2^24 (chunk sums, accumulator plus one chunk;
    the caller keeps cnt below 2^24). Serial, releasing the GIL."""
    Pb, M = S.shape
    for p in range(Pb):
        for m in range(M):
            v = acc[p, m] + (np.float32(S[p, m]) + corr[m])
            c = min(max(v, lo), hi)
            cnt[m] += np.float32(1.0) if c != v else np.float32(0.0)
            acc[p, m] = c


@njit(cache=True, nogil=True)
def init_acc(b0, acc):
    """acc[p, m] = b0[m] (the bias after the A stage)."""
    for p in range(acc.shape[0]):
        for m in range(acc.shape[1]):
            acc[p, m] = b0[m]


@njit(cache=True, nogil=True)
def finish_acc(acc, L, out):
    """out[i, m, l] = acc[i*L + l, m] (position-major block to the channel-major output)."""
    for i in range(out.shape[0]):
        for m in range(acc.shape[1]):
            for l in range(L):
                out[i, m, l] = np.int64(acc[i * L + l, m])


STAGE_BYTES = 512 << 10  # one chunk's int32 sums of a block of positions (kept in L2 for the stage pass)


def int8_chunk_weights(plan):
    """(per-chunk torch int8 weights [R, M] (column-major views), per-chunk column sums int64 [C, M]) of a
    one-group plan whose w - z_w fits int8, made once and kept in plan.cache; None when it does not fit."""
    if "i8" not in plan.cache:
        wk = plan.w_kernel  # [K, M] w - z_w
        K, M = wk.shape
        R = int(plan.spec[4])
        ok = K > 0 and M > 0 and 2 <= R and int(wk.min()) >= -128 and int(wk.max()) <= 127
        if not ok:
            plan.cache["i8"] = None
        else:
            import torch

            C = -(-K // R)
            wp = np.zeros((C * R, M), np.int64)
            wp[:K] = wk
            w3 = wp.reshape(C, R, M)
            # _int_mm runs fastest on a column-major [R, M]: the transpose of a contiguous [M, R]
            w8 = [torch.from_numpy(np.ascontiguousarray(w3[c].T).astype(np.int8)).t() for c in range(C)]
            plan.cache["i8"] = (w8, w3.sum(axis=1))
    return plan.cache["i8"]


def run_int8_chunks(plan, xp: np.ndarray, geom: np.ndarray, N: int, L: int, K: int, out: np.ndarray):
    """The MAC-array model of one conv group with its exact chunk sums from int8 GEMMs; (pe, ae) or None.

    Chunk c of position p: S = sum_{k in c} w_k (xp_k - off) by ``torch._int_mm`` (int8 operands, int32
    sums: |S| <= R * 128 * 128 < 2^31), plus off * sum_{k in c} w_k (exact int64) = sum_{k in c} w_k xp_k,
    the chunk sum of the contract; then :func:`chunk_stage_i64` applies the P and A stages in k order.
    None (the caller falls back) without torch, when w - z_w or xp - off (padding included) leaves int8.
    """
    from hwsim import kernels as _k

    mm = _k.int_mm()
    R = int(plan.spec[4])
    if mm is None or R < 2:
        return None
    wts = int8_chunk_weights(plan)
    if wts is None:
        return None
    w8, wsum = wts
    lo, hi = (min(0, int(xp.min())), max(0, int(xp.max()))) if xp.size else (0, 0)  # padding pixels are 0
    off = 0 if (lo >= -128 and hi <= 127) else lo + 128
    if hi - off > 127:
        return None
    import torch

    C, M = wsum.shape
    Kp = C * R
    corr = wsum * off  # [C, M] int64, exact: |off| < 2^31, |sum w| < 2^31 * K
    spec = plan.spec
    b0, bev = _bias_in_acc(plan.bias, spec)
    xp8 = np.empty(xp.shape, np.int8)
    np.subtract(xp, off, out=xp8, casting="unsafe")  # exact: integers in [-128, 127] (checked above)
    nb = int(max(1, min(N, (STAGE_BYTES // (4 * M)) // max(1, L))))
    blocks = [(n0, min(nb, N - n0)) for n0 in range(0, N, nb)]
    workers = max(1, min(_k.numba.get_num_threads(), len(blocks)))

    # float32 stage: no P stage, saturating A stage, every value below 2^24 (the plan's float32 proof;
    # corr = off * chunk column sum is the difference of two such chunk sums)
    f32 = (plan.w_f32 is not None and spec[3] == MODE_NONE and spec[1] == MODE_SAT
           and int(np.abs(corr).max(initial=0)) < 1 << 24 and nb * L * C < 1 << 24)
    corr_f = corr.astype(np.float32)
    a_bits = int(spec[0]) if spec[1] != MODE_NONE else 2
    lo_f, hi_f = np.float32(-(1 << (a_bits - 1))), np.float32((1 << (a_bits - 1)) - 1)

    def work(part):
        cols = np.zeros((nb, L, Kp), np.int8)  # columns K.. stay 0 (their weights are 0 too)
        ct = torch.from_numpy(cols.reshape(nb * L, Kp))
        S = torch.empty((nb * L, M), dtype=torch.int32)  # reused: a fresh output per GEMM costs as much as the GEMM
        Sn = S.numpy()
        acc = np.empty((nb * L, M), np.float32 if f32 else np.int64)
        cnt = np.zeros(M, np.float32)
        pe = ae = 0
        for n0, b in part:
            Pb = b * L
            _k.im2col_positions_serial(xp8, n0, geom, cols[:b])
            a = acc[:Pb]
            init_acc(b0, a)
            cnt[:] = 0  # at most Pb * C < 2^24 events per channel and block: exact in float32
            for c in range(C):
                mm(ct[:Pb, c * R:(c + 1) * R], w8[c], out=S[:Pb])
                if f32:
                    chunk_stage_f32(Sn[:Pb], corr_f[c], lo_f, hi_f, a, cnt)
                else:
                    p1, a1 = chunk_stage_i64(Sn[:Pb], corr[c], spec, a)
                    pe, ae = pe + p1, ae + a1
            finish_acc(a, L, out[n0:n0 + b])
            ae += bev * Pb + int(cnt.astype(np.int64).sum())
        return pe, ae

    with _k._torch_one_thread():
        res = _k._in_workers(work, [blocks[i::workers] for i in range(workers)])
    return sum(r[0] for r in res), sum(r[1] for r in res)


def _bias_in_acc(bias: np.ndarray, spec: np.ndarray) -> tuple[np.ndarray, int]:
    """(the bias after it enters the A-bit accumulator, events per position: channels whose bias is outside)."""
    b = bias.astype(np.int64)
    a_bits, a_mode = int(spec[0]), int(spec[1])
    if a_mode == MODE_NONE:
        return b, 0
    lo, hi = -(1 << (a_bits - 1)), (1 << (a_bits - 1)) - 1
    out_of = (b < lo) | (b > hi)
    if a_mode == MODE_WRAP:
        b = ((b - lo) & ((1 << a_bits) - 1)) + lo
    else:
        b = np.clip(b, lo, hi)
    return b, int(out_of.sum())
