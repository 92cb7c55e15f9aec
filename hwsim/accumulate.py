"""Order-dependent accumulators at int8 GEMM speed (docs/semantics.md, section 10; issue 18).

Where the accumulator (or the partial-sum register) saturates or wraps, the result depends on the
order of the chunk adds. How often that matters was measured on ResNet-18 @ 3x32x32 (random weights,
calibrated int8 grids): under int8-acc16-sat 19-99% of the output elements of every conv saturate
and every position has one, so no screen can skip work there; under w4a4-acc12 (a 12-bit accumulator
saturating after every MAC) most layers have 0-4% of their elements near the limits, two have ~50%.

- on a CPU with AVX-512 VNNI (:func:`hwsim.simd.vnni`), chunks of R >= 2 products whose bounded stages (P
  register, A accumulator; saturating or wrapping) have at most 30 bits, with int8 weights
  (:func:`run_vnni_chunks`, :func:`run_vnni_fused`): :func:`vnni_chunks` makes every chunk sum in registers
  with VPDPBUSD and applies the stages right behind it, 8 positions x 16 channels at a time, 70-130 GMAC/s on
  one core (the int8 chunk GEMMs below ran whole networks at about 10). The fused route continues into the
  layer's requant epilogue.
- chunks of R >= 8 products (:func:`run_int8_chunks`): every chunk sum of a block of positions by one
  ``torch._int_mm`` (int8 x int8 -> int32, exact) into a reused buffer, then one vectorized pass
  (:func:`chunk_stage_f32` / :func:`chunk_stage_i64`) applies the P-bit register and the A-bit
  accumulator to all elements, chunk after chunk in k order: exactly the sequential model of
  :func:`hwsim.kernels.accumulate_rows` (the contract), without its per-position product loops. The
  columns come from an offset table (:func:`im2col_offsets`). Blocks are whole images; where they are
  fewer than the worker threads (ResNet-18 @ 32's layer3 / layer4 at batch 128: one block), each worker
  takes its own part of the output channels (:func:`channel_parts`). Without torch, or where the
  operands leave int8, chunks of <= 16 products into a saturating accumulator without a P stage
  (int8-acc16-sat's) run :func:`fused_chunks_f32`: one numba pass per block of positions, products
  read straight from the padded input, chunk sums in registers, float32 where this batch's bounds prove
  every value an integer below 2^24 (see :func:`run_fused_f32` for what it measured against the int8
  chunk GEMMs).
- short chunks (R = 1: saturation after every MAC; :func:`run_int8_blocks`): blocks of 64 products
  are summed exactly (int8 GEMM) and bounded (sum |w||x|, a second int8 GEMM); :func:`block_stage`
  adds the exact block sum wherever the bound shows no stage can act on this element and runs the
  sequential model on the block elsewhere. A layer where most positions need it falls back to the
  caller's model kernel (decided on the first sample).

Blocks of samples run on hwsim's worker threads (torch single-threaded in each: OpenMP's thread count is
per thread, see :func:`hwsim.kernels.torch_one_thread_init`; the numba kernels serial and releasing the
GIL: no OpenMP pools spinning against each other). Without torch, apart from the fused kernel's shape,
the callers keep the float BLAS chunk sums / model kernels of hwsim.kernels.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hwsim.simd import vadd, vbcast, vclamp, vcount_ne, vdp, vload, vsplat, vstore, vwrap

MODE_NONE, MODE_WRAP, MODE_SAT = 0, 1, 2  # = hwsim.kernels' codes


# ----------------------------------------------------------------------------- positions and products as offsets
def input_offsets(xshape: tuple, geom: np.ndarray, K: int) -> np.ndarray:
    """int64 [K]: where product k of a position reads the padded input [N, Cin, Hp, Wp] (flattened), relative to
    the position's base (:func:`position_bases`); contract order k = (ci * KH + a) * KW + b, so the input value
    is x[n, ci, oh * sh + a * dh, ow * sw + b * dw]."""
    _, Cin, Hp, Wp = (int(v) for v in xshape)
    kh, kw, dh, dw = int(geom[0]), int(geom[1]), int(geom[4]), int(geom[5])
    ci, r = np.divmod(np.arange(K, dtype=np.int64), kh * kw)
    a, b = np.divmod(r, kw)
    return ci * (Hp * Wp) + a * (dh * Wp) + b * dw


def position_bases(N: int, xshape: tuple, geom: np.ndarray) -> np.ndarray:
    """int64 [N * L]: the flat index of x[n, 0, oh * sh, ow * sw] for output position q = n * L + oh * Wo + ow."""
    _, Cin, Hp, Wp = (int(v) for v in xshape)
    sh, sw, Ho, Wo = int(geom[2]), int(geom[3]), int(geom[6]), int(geom[7])
    n, l = np.divmod(np.arange(N * Ho * Wo, dtype=np.int64), Ho * Wo)
    oh, ow = np.divmod(l, Wo)
    return n * (Cin * Hp * Wp) + oh * (sh * Wp) + ow * sw


@njit(cache=True, nogil=True)
def im2col_offsets(xf, bases, q0, offs, out):
    """out[i, k] = xf[bases[q0 + i] + offs[k]]: position-major columns of positions q0.. (the products of each in
    contract order, what :func:`hwsim.kernels.im2col_positions` gives) by a precomputed offset table: 3x faster
    than indexing the 4-d input per product (layer1 of ResNet-18 @ 32, batch 128: 5.1 -> 1.7 ms CPU). Serial, nogil."""
    K = offs.shape[0]
    for i in range(out.shape[0]):
        b = bases[q0 + i]
        for k in range(K):
            out[i, k] = xf[b + offs[k]]


# ----------------------------------------------------------------------------- chunks: one fused float32 kernel
@njit(cache=True, nogil=True)
def fused_chunks_f32(xf, offs, wc, bias0, lo, hi, bases, q0, q1, L, acc, cnt, out):
    """The MAC-array model of :func:`hwsim.kernels.accumulate_rows` for positions q0..q1-1 of one conv group with
    chunks of R <= 16 products, no P stage and a saturating A stage (int8-acc16-sat's accumulator), chunk
    sums and the stage fused in one pass in float32; returns the acc events.

    xf: the padded input x - z_x flattened (float32 holding integers); chunk c of position q sums
    xf[bases[q] + offs[c, j]] * wc[c, j, m] over j < 16 (slots past R have weight 0, offset 0); then, chunk
    after chunk in k order, acc = clamp(acc + chunk sum, lo, hi), starting from bias0 (the bias after the
    A stage). Exact: the caller proved every product, every partial sum of a chunk and acc + chunk sum to be
    integers below 2^24 in magnitude, so every float32 multiply and add here -- in any order, fused into an
    FMA or not -- gives the exact integer (compiled without fastmath, the project's rule for integer code). Two
    positions at a time share each weight load; each sums its 16 products in
    two chains of 8 FMAs in registers (no chunk-sum buffer); the channel loop m is vectorized (8 lanes).
    acc: scratch [q1 - q0 + 1, M] (the last row takes an odd block's missing partner); cnt: scratch [3, M],
    events per channel of the first / second position / scratch row (float32 keeps the loop at 8 lanes;
    exact while (q1 - q0) * C < 2^24, the caller's block size); out[n, m, l] (n, l = divmod(q, L)) receives
    the results. Serial, releasing the GIL.
    """
    C, _, M = wc.shape
    nq = q1 - q0
    for i in range(nq + 1):
        for m in range(M):
            acc[i, m] = bias0[m]
    cnt[:] = 0
    for c in range(C):
        o = offs[c]
        w = wc[c]
        for i in range(0, nq, 2):
            ba = bases[q0 + i]
            rb = i + 1 if i + 1 < nq else nq  # past the block's end: the scratch row
            bb = bases[q0 + rb] if rb < nq else ba
            eb = 1 if rb < nq else 2  # event row (2: the scratch row's, not counted)
            a0 = xf[ba + o[0]]; a1 = xf[ba + o[1]]; a2 = xf[ba + o[2]]; a3 = xf[ba + o[3]]
            a4 = xf[ba + o[4]]; a5 = xf[ba + o[5]]; a6 = xf[ba + o[6]]; a7 = xf[ba + o[7]]
            a8 = xf[ba + o[8]]; a9 = xf[ba + o[9]]; a10 = xf[ba + o[10]]; a11 = xf[ba + o[11]]
            a12 = xf[ba + o[12]]; a13 = xf[ba + o[13]]; a14 = xf[ba + o[14]]; a15 = xf[ba + o[15]]
            b0 = xf[bb + o[0]]; b1 = xf[bb + o[1]]; b2 = xf[bb + o[2]]; b3 = xf[bb + o[3]]
            b4 = xf[bb + o[4]]; b5 = xf[bb + o[5]]; b6 = xf[bb + o[6]]; b7 = xf[bb + o[7]]
            b8 = xf[bb + o[8]]; b9 = xf[bb + o[9]]; b10 = xf[bb + o[10]]; b11 = xf[bb + o[11]]
            b12 = xf[bb + o[12]]; b13 = xf[bb + o[13]]; b14 = xf[bb + o[14]]; b15 = xf[bb + o[15]]
            for m in range(M):
                w0 = w[0, m]; w1 = w[1, m]; w2 = w[2, m]; w3 = w[3, m]
                w4 = w[4, m]; w5 = w[5, m]; w6 = w[6, m]; w7 = w[7, m]
                w8 = w[8, m]; w9 = w[9, m]; w10 = w[10, m]; w11 = w[11, m]
                w12 = w[12, m]; w13 = w[13, m]; w14 = w[14, m]; w15 = w[15, m]
                ta = a0 * w0 + a1 * w1 + a2 * w2 + a3 * w3 + a4 * w4 + a5 * w5 + a6 * w6 + a7 * w7
                ua = a8 * w8 + a9 * w9 + a10 * w10 + a11 * w11 + a12 * w12 + a13 * w13 + a14 * w14 + a15 * w15
                va = acc[i, m] + (ta + ua)
                ca = min(max(va, lo), hi)
                cnt[0, m] += np.float32(1.0) if ca != va else np.float32(0.0)
                acc[i, m] = ca
                tb = b0 * w0 + b1 * w1 + b2 * w2 + b3 * w3 + b4 * w4 + b5 * w5 + b6 * w6 + b7 * w7
                ub = b8 * w8 + b9 * w9 + b10 * w10 + b11 * w11 + b12 * w12 + b13 * w13 + b14 * w14 + b15 * w15
                vb = acc[rb, m] + (tb + ub)
                cb = min(max(vb, lo), hi)
                cnt[eb, m] += np.float32(1.0) if cb != vb else np.float32(0.0)
                acc[rb, m] = cb
    for i in range(nq):
        n = (q0 + i) // L
        l = q0 + i - n * L
        for m in range(M):
            out[n, m, l] = np.int64(acc[i, m])
    ae = np.int64(0)
    for m in range(M):
        ae += np.int64(cnt[0, m]) + np.int64(cnt[1, m])
    return ae


FUSED = True  # the fused float32 kernel where the int8 chunk GEMMs cannot run (off: the BLAS chunk sums, tests)
FUSED_TILE = 128 << 10  # bytes of float32 accumulators of one block of positions (stay in L2 across the chunks)
EXACT_F32 = 1 << 24  # float32 holds every integer below this exactly


def fused_chunk_weights(plan, xshape: tuple, geom: np.ndarray):
    """(wc float32 [C, 16, M], offs int64 [C, 16], max over chunks and channels of sum |w - z_w| over the chunk,
    max |w - z_w|) of a one-group conv plan with chunks of R <= 16 on a padded input of shape xshape
    [N, Cin, Hp, Wp]: product k sits in chunk k // R at slot k % R, reading the input at
    :func:`input_offsets` [k]; empty slots have weight 0 and offset 0. Made once per input shape, kept in
    plan.cache."""
    key = ("fused",) + tuple(int(v) for v in xshape[1:])
    if key not in plan.cache:
        wk = plan.w_kernel  # [K, M] w - z_w
        K, M = wk.shape
        R = int(plan.spec[4])
        C = -(-K // R)
        k = np.arange(K, dtype=np.int64)
        wabs = np.abs(wk.astype(np.int64))
        wmax = int(wabs.max(initial=0))
        wc = np.zeros((C, 16, M), np.float32)
        wc[k // R, k % R] = wk if wmax < EXACT_F32 else 0  # (not used when it is not exact)
        offs = np.zeros((C, 16), np.int64)
        offs[k // R, k % R] = input_offsets(xshape, geom, K)
        wpad = np.zeros((C * R, M), np.int64)
        wpad[:K] = wabs
        chunk = int(wpad.reshape(C, R, M).sum(axis=1).max(initial=0))
        plan.cache[key] = (wc, offs, chunk, wmax)
    return plan.cache[key]


def run_fused_f32(plan, xp: np.ndarray, geom: np.ndarray, N: int, L: int, K: int, out: np.ndarray):
    """The MAC-array model of one conv group by :func:`fused_chunks_f32` (no chunk-sum buffer, no im2col);
    (pe, ae), or None (the caller's paths run) unless: chunks of 2..16 products, no P stage, a saturating A
    stage of at most 23 bits, and float32 proven exact for this batch -- with xmax = max |x - z_x| of the
    batch, every product and partial sum of a chunk is at most cmax = xmax * (max chunk sum of |w - z_w|),
    and |acc + chunk sum| <= 2^(A-1) + cmax; both below 2^24.

    Measured (ResNet-18 @ 32 convs, batch 128, one thread, CPU time): 12-24 GMAC/s, 1.8x the BLAS chunk sums
    of the no-torch path on the whole network (int8-acc16-sat 196 -> 360 img/s), 0.8-1.0x the int8 chunk
    GEMMs (torch._int_mm at K = 16 with VNNI, then the stage pass), so it runs where those cannot. The other
    accumulator shapes (P stage, wrapping, chunks > 16) kept a scalar loop here (too many store streams for
    LLVM's runtime alias checks) and ran slower than the model kernel: they are not taken.
    """
    from hwsim import kernels as _k

    spec = plan.spec
    a_bits, a_mode, _, p_mode, R = (int(v) for v in spec[:5])
    if (not FUSED or a_mode != MODE_SAT or p_mode != MODE_NONE or not 2 <= R <= 16 or a_bits > 23 or xp.ndim != 4
            or N == 0 or xp.shape[1] * int(geom[0]) * int(geom[1]) != K):
        return None
    wc, offs, wchunk, wmax = fused_chunk_weights(plan, xp.shape, geom)
    C, _, M = wc.shape
    xmax = max(abs(int(xp.min())), abs(int(xp.max())))
    cmax = wchunk * xmax
    if not (wmax < EXACT_F32 and xmax < EXACT_F32 and (1 << (a_bits - 1)) + cmax < EXACT_F32):
        return None
    b0, bev = _bias_in_acc(plan.bias, spec)
    xf = np.ascontiguousarray(xp, dtype=np.float32).reshape(-1)  # exact: integers below 2^24
    bases = position_bases(N, xp.shape, geom)
    lo, hi = np.float32(-(1 << (a_bits - 1))), np.float32((1 << (a_bits - 1)) - 1)
    b0f = b0.astype(np.float32)  # exact: inside the A range
    PB = int(max(2, min(N * L, FUSED_TILE // (4 * M), (EXACT_F32 - 1) // C - 1)))  # events per channel < 2^24
    blocks = [(q0, min(N * L, q0 + PB)) for q0 in range(0, N * L, PB)]
    workers = max(1, min(_k.workers(), len(blocks)))

    def work(part):
        acc = np.empty((PB + 1, M), np.float32)
        cnt = np.empty((3, M), np.float32)
        return sum(int(fused_chunks_f32(xf, offs, wc, b0f, lo, hi, bases, q0, q1, L, acc, cnt, out)) for q0, q1 in part)

    res = _k._in_workers(work, [blocks[i::workers] for i in range(workers)])
    return 0, sum(res) + bev * N * L


# ----------------------------------------------------------------------------- chunks on VNNI: one fused int8 kernel
VNNI_TILE = 8  # positions per register tile of vnni_chunks (8 x 2 accumulators, weights, bounds: 20 of 32 zmm)
VNNI_COLS_BYTES = 256 << 10  # columns of one block of positions (uint8; stay in L2 while every channel runs)


@njit(cache=True, nogil=True, inline="always")
def _vstage(v, mode, lo, hi, mask):
    """A register stage on 16 lanes: saturate into [lo, hi], wrap (lo = -2^(b-1), mask = 2^b - 1), or nothing."""
    if mode == MODE_SAT:
        return vclamp(v, lo, hi)
    if mode == MODE_WRAP:
        return vwrap(v, lo, mask)
    return v


@njit(cache=True, nogil=True)
def vnni_chunks(cols, nq, KQ, wq, MB, corr, b0, C, G, stages, mb0, mb1, res, Mp):
    """The MAC-array model of :func:`hwsim.kernels.accumulate_rows` for chunks of R products on nq positions and the
    channels of 16-channel blocks mb0..mb1-1, every chunk sum made by VPDPBUSD (:mod:`hwsim.simd`); returns
    (partial events, acc events) (elements x chunks where a stage changed the value).

    cols: int32 view of uint8 columns [nq, C, 4G]: chunk c of position q in bytes 4G c .. 4G c + 4G - 1, slot j
    holding x_k - o (0..255; slots past R hold anything: their weights are 0) for k = c R + j; KQ = C * G int32
    words per position. wq: int32 view of int8 weights [C, G, MB, 16, 4]: wq[c, g, mb, l] holds the four
    weights w[c R + 4g + t, 16 mb + l], t < 4 (0 past R or K, and for channels >= M). corr [C, Mp]: o * (sum of
    chunk c's weights) per channel, so that the chunk sum of the contract is S = dp + corr; b0 [Mp]: the bias
    after the A stage. stages int64 [8]: A mode, lo, hi, mask, P mode, lo, hi, mask (MODE_* codes; lo = -2^(b-1),
    hi = -lo - 1, mask = 2^b - 1). Per chunk, in k order (the contract, docs/semantics.md section 10):
    t = P(S), v = acc + t, acc = A(v); events where P(S) != S, A(v) != v. Without a P stage, acc + corr + the
    products are summed in one register (S is never needed alone). Exact: the caller proves every partial sum
    of every lane inside int32 (:func:`_vnni_bounds`). res [nq, Mp] (flat) receives the accumulators.
    Positions in register tiles of VNNI_TILE = 8 (each weight load feeds eight positions; 1.2-1.45x the tile of
    four on ResNet-18 @ 32's conv shapes), the rest one at a time. Serial, releasing the GIL."""
    am, alo, ahi, amask = stages[0], vsplat(stages[1]), vsplat(stages[2]), vsplat(stages[3])
    pm, plo, phi, pmask = stages[4], vsplat(stages[5]), vsplat(stages[6]), vsplat(stages[7])
    pe = np.int64(0)
    ae = np.int64(0)
    q = 0
    while q + 8 <= nq:
        x0 = q * KQ
        for mb in range(mb0, mb1):
            a0 = vload(b0, mb * 16)
            a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
            for c in range(C):
                cv = vload(corr, c * Mp + mb * 16)
                if pm == MODE_NONE:  # acc + corr + products in one register
                    s0, s1, s2, s3 = vadd(a0, cv), vadd(a1, cv), vadd(a2, cv), vadd(a3, cv)
                    s4, s5, s6, s7 = vadd(a4, cv), vadd(a5, cv), vadd(a6, cv), vadd(a7, cv)
                else:
                    s0, s1, s2, s3, s4, s5, s6, s7 = cv, cv, cv, cv, cv, cv, cv, cv
                wb = (c * G * MB + mb) * 16
                xb = x0 + c * G
                for g in range(G):
                    w = vload(wq, wb + g * MB * 16)
                    s0 = vdp(s0, vbcast(cols, xb + g), w)
                    s1 = vdp(s1, vbcast(cols, xb + g + KQ), w)
                    s2 = vdp(s2, vbcast(cols, xb + g + 2 * KQ), w)
                    s3 = vdp(s3, vbcast(cols, xb + g + 3 * KQ), w)
                    s4 = vdp(s4, vbcast(cols, xb + g + 4 * KQ), w)
                    s5 = vdp(s5, vbcast(cols, xb + g + 5 * KQ), w)
                    s6 = vdp(s6, vbcast(cols, xb + g + 6 * KQ), w)
                    s7 = vdp(s7, vbcast(cols, xb + g + 7 * KQ), w)
                if pm != MODE_NONE:
                    t0, t1, t2, t3 = (_vstage(s0, pm, plo, phi, pmask), _vstage(s1, pm, plo, phi, pmask),
                                      _vstage(s2, pm, plo, phi, pmask), _vstage(s3, pm, plo, phi, pmask))
                    t4, t5, t6, t7 = (_vstage(s4, pm, plo, phi, pmask), _vstage(s5, pm, plo, phi, pmask),
                                      _vstage(s6, pm, plo, phi, pmask), _vstage(s7, pm, plo, phi, pmask))
                    pe += (vcount_ne(t0, s0) + vcount_ne(t1, s1) + vcount_ne(t2, s2) + vcount_ne(t3, s3)
                           + vcount_ne(t4, s4) + vcount_ne(t5, s5) + vcount_ne(t6, s6) + vcount_ne(t7, s7))
                    s0, s1, s2, s3 = vadd(a0, t0), vadd(a1, t1), vadd(a2, t2), vadd(a3, t3)
                    s4, s5, s6, s7 = vadd(a4, t4), vadd(a5, t5), vadd(a6, t6), vadd(a7, t7)
                if am == MODE_NONE:
                    a0, a1, a2, a3, a4, a5, a6, a7 = s0, s1, s2, s3, s4, s5, s6, s7
                    continue
                a0, a1, a2, a3 = (_vstage(s0, am, alo, ahi, amask), _vstage(s1, am, alo, ahi, amask),
                                  _vstage(s2, am, alo, ahi, amask), _vstage(s3, am, alo, ahi, amask))
                a4, a5, a6, a7 = (_vstage(s4, am, alo, ahi, amask), _vstage(s5, am, alo, ahi, amask),
                                  _vstage(s6, am, alo, ahi, amask), _vstage(s7, am, alo, ahi, amask))
                ae += (vcount_ne(a0, s0) + vcount_ne(a1, s1) + vcount_ne(a2, s2) + vcount_ne(a3, s3)
                       + vcount_ne(a4, s4) + vcount_ne(a5, s5) + vcount_ne(a6, s6) + vcount_ne(a7, s7))
            r = q * Mp + mb * 16
            vstore(res, r, a0)
            vstore(res, r + Mp, a1)
            vstore(res, r + 2 * Mp, a2)
            vstore(res, r + 3 * Mp, a3)
            vstore(res, r + 4 * Mp, a4)
            vstore(res, r + 5 * Mp, a5)
            vstore(res, r + 6 * Mp, a6)
            vstore(res, r + 7 * Mp, a7)
        q += 8
    while q < nq:
        x0 = q * KQ
        for mb in range(mb0, mb1):
            a0 = vload(b0, mb * 16)
            for c in range(C):
                cv = vload(corr, c * Mp + mb * 16)
                s0 = vadd(a0, cv) if pm == MODE_NONE else cv
                wb = (c * G * MB + mb) * 16
                for g in range(G):
                    s0 = vdp(s0, vbcast(cols, x0 + c * G + g), vload(wq, wb + g * MB * 16))
                if pm != MODE_NONE:
                    t0 = _vstage(s0, pm, plo, phi, pmask)
                    pe += vcount_ne(t0, s0)
                    s0 = vadd(a0, t0)
                a0 = _vstage(s0, am, alo, ahi, amask)
                ae += vcount_ne(a0, s0)
            vstore(res, q * Mp + mb * 16, a0)
        q += 1
    return pe, ae


def _stages(spec) -> np.ndarray:
    """:func:`vnni_chunks`' stages array of a plan's spec (a_bits, a_mode, p_bits, p_mode)."""
    out = np.zeros(8, np.int64)
    for i, (bits, mode) in enumerate(((int(spec[0]), int(spec[1])), (int(spec[2]), int(spec[3])))):
        if mode != MODE_NONE:
            lo = -(1 << (bits - 1))
            out[4 * i:4 * i + 4] = (mode, lo, -lo - 1, (1 << bits) - 1)
    return out


def _vnni_bounds(plan, spec, o: int, xabs: int, wchunk: int, wtot: int, C: int) -> bool:
    """Every lane of :func:`vnni_chunks` stays inside int32 for this batch (o: the input offset, xabs: max |x - z_x|,
    wchunk / wtot: max over channels of a chunk's / all of sum |w - z_w|): a chunk's partial sums are at most
    (|o| + 255) wchunk; the accumulator at most 2^(A-1) with an A stage, else |b| + (C 2^(P-1) with a P stage, else
    wtot xabs); without a P stage the register holds both at once."""
    a_bits, a_mode, p_bits, p_mode = (int(v) for v in spec[:4])
    chunk = (abs(o) + 255) * wchunk
    if a_mode != MODE_NONE:
        acc = 1 << (a_bits - 1)
    else:
        if "bias_abs_max" not in plan.cache:
            plan.cache["bias_abs_max"] = int(np.abs(plan.bias).max(initial=0))
        acc = plan.cache["bias_abs_max"] + min(C << (p_bits - 1) if p_mode != MODE_NONE else wtot * xabs,
                                                          wtot * xabs)
    if p_mode == MODE_NONE:
        return acc + chunk < 1 << 31
    return chunk < 1 << 31 and acc + (1 << (p_bits - 1)) < 1 << 31


@njit(cache=True, nogil=True)
def value_range(xf):
    """(min, max) of a flat integer array, 0 included (padding pixels)."""
    lo = np.int64(0)
    hi = np.int64(0)
    for i in range(xf.size):
        v = np.int64(xf[i])
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


@njit(cache=True, nogil=True)
def shift_u8(xf, o, out):
    """out[i] = xf[i] - o as uint8 (the caller checked 0 <= xf - o <= 255)."""
    for i in range(xf.size):
        out[i] = np.uint8(np.int64(xf[i]) - o)


@njit(cache=True, nogil=True)
def finish_positions(res, Mp, q0, nq, L, m0, m1, out):
    """out[n, m, l] = res[q - q0, m] for positions q0..q0+nq-1 (n, l = divmod(q, L)) and channels m0..m1-1."""
    for i in range(nq):
        n = (q0 + i) // L
        l = q0 + i - n * L
        r = i * Mp
        for m in range(m0, m1):
            out[n, m, l] = np.int64(res[r + m])


def vnni_chunk_weights(plan, xshape: tuple, geom: np.ndarray):
    """(wq int32 [C * G * MB * 16], wsum int64 [C, Mp], max over chunks and channels of the chunk's sum |w|, max over
    channels of sum |w|, slot offsets int64 [C * 4G], C, G, MB) of a one-group plan whose w - z_w fits int8, for :func:`vnni_chunks`
    on a padded input of shape xshape; None when the weights leave int8. Made once per input shape, kept in
    plan.cache."""
    key = ("vnni",) + tuple(int(v) for v in xshape[1:])
    if key not in plan.cache:
        wk = plan.w_kernel  # [K, M] w - z_w
        K, M = wk.shape
        R = int(plan.spec[4])
        got = None
        if K > 0 and M > 0 and R >= 2 and int(wk.min()) >= -128 and int(wk.max()) <= 127:
            C, G, MB = -(-K // R), -(-R // 4), -(-M // 16)
            Mp = MB * 16
            k = np.arange(K, dtype=np.int64)
            wp = np.zeros((C, 4 * G, Mp), np.int64)
            wp[k // R, k % R, :M] = wk
            wq = np.ascontiguousarray(wp.reshape(C, G, 4, MB, 16).transpose(0, 1, 3, 4, 2)).astype(np.int8)
            wchunk = int(np.abs(wp).sum(axis=1).max(initial=0))
            offs = np.zeros((C, 4 * G), np.int64)  # empty slots read offset 0 (a valid pixel; weight 0)
            offs[k // R, k % R] = input_offsets(xshape, geom, K)
            wtot = int(np.abs(wp).sum(axis=(0, 1)).max(initial=0))
            got = (wq.reshape(-1).view(np.int32), wp.sum(axis=1), wchunk, wtot, offs.reshape(-1), C, G, MB)
        plan.cache[key] = got
    return plan.cache[key]


def vnni_ok(plan) -> bool:
    """:func:`run_vnni_chunks` may take this plan's layer (the CPU; an order-dependent accumulator whose bounded
    stages have at most 30 bits; int8 weights; the input's range and the int32 bounds are checked per batch)."""
    from hwsim import simd

    ok = plan.cache.get("vnni_plan_ok")  # what depends on the plan alone, once (~20 us a call)
    if ok is None:
        a_bits, a_mode, p_bits, p_mode, R = (int(v) for v in plan.spec[:5])
        wk = plan.w_kernel
        ok = plan.cache["vnni_plan_ok"] = bool(
            R >= 2 and (a_mode == MODE_NONE or a_bits <= 30) and (p_mode == MODE_NONE or p_bits <= 30)
            and (a_mode != MODE_NONE or p_mode != MODE_NONE)
            and wk.size > 0 and -128 <= int(wk.min()) and int(wk.max()) <= 127)
    return ok and simd.vnni()


def run_vnni_chunks(plan, xp: np.ndarray, geom: np.ndarray, N: int, L: int, K: int, out: np.ndarray):
    """The MAC-array model of one conv group by :func:`vnni_chunks` (chunk sums by VPDPBUSD in registers, no
    chunk-sum buffer); (pe, ae), or None (the caller's paths run) unless: the CPU has AVX-512 VNNI
    (:func:`hwsim.simd.vnni`) and the accumulator :func:`vnni_ok` takes, w - z_w in int8, the batch's padded
    input within 256 consecutive integers (x - o in 0..255, o its minimum with 0), and every lane provably
    inside int32 (:func:`_vnni_bounds`).

    Work: blocks of consecutive positions whose uint8 columns fit VNNI_COLS_BYTES, each block's channels split
    in 16-channel blocks over the worker threads where the blocks alone are too few to share out (deep layers).
    Measured (Xeon family 6 model 207, one thread, the kernel alone, chunks of 16, ResNet-18 @ 32 conv shapes at
    batch 128, tiles of 8): 99-130 GMAC/s, 37-72 on layer4 (P = 128 positions, K = 4608, M = 512); the int8 chunk GEMMs
    (torch._int_mm at K = 16) with the stage pass ran the whole network at about 10.
    """
    from hwsim import kernels as _k

    spec = plan.spec
    if N == 0 or xp.ndim != 4 or xp.shape[1] * int(geom[0]) * int(geom[1]) != K or not vnni_ok(plan):
        return None
    got = vnni_chunk_weights(plan, xp.shape, geom)
    if got is None:
        return None
    wq, wsum, wchunk, wtot, offs, C, G, MB = got
    xp = np.ascontiguousarray(xp)
    xf = xp.reshape(-1)
    lo, hi = (int(v) for v in value_range(xf))
    o = lo  # x - o in 0..hi - lo
    if hi - o > 255 or not _vnni_bounds(plan, spec, o, max(-lo, hi), wchunk, wtot, C):
        return None
    xu = np.empty(xf.size, np.uint8)
    shift_u8(xf, o, xu)
    M = plan.w_kernel.shape[1]
    Mp = MB * 16
    corr = _vnni_corr(plan, wsum, o)
    b0p, bev, stages = _vnni_consts(plan, spec, M, Mp)
    KQ = C * G
    bases = _positions(plan, xp.shape, geom, N, K)[1]
    Q = N * L
    PB = max(VNNI_TILE, (VNNI_COLS_BYTES // (4 * KQ)) // VNNI_TILE * VNNI_TILE)
    blocks = [(q0, min(PB, Q - q0)) for q0 in range(0, Q, PB)]
    nw = _k.workers()
    nparts = max(1, min(MB, -(-2 * nw // len(blocks)))) if len(blocks) < 2 * nw else 1
    parts = [(MB * i // nparts, MB * (i + 1) // nparts) for i in range(nparts)]
    tasks = [(b, p) for b in blocks for p in parts if p[1] > p[0]]

    def work(mine):
        cols = np.empty(PB * KQ, np.int32)
        res = np.empty(PB * Mp, np.int32)
        pe = ae = 0
        for (q0, nq), (mb0, mb1) in mine:
            c8 = cols[:nq * KQ].view(np.uint8).reshape(nq, 4 * KQ)
            im2col_offsets(xu, bases, q0, offs, c8)
            p1, a1 = vnni_chunks(cols, nq, KQ, wq, MB, corr, b0p, C, G, stages, mb0, mb1, res, Mp)
            pe, ae = pe + int(p1), ae + int(a1)
            finish_positions(res, Mp, q0, nq, L, mb0 * 16, min(M, mb1 * 16), out)
        return pe, ae

    nt = max(1, min(nw, len(tasks)))
    res = _k._in_workers(work, [tasks[i::nt] for i in range(nt)])
    return sum(r[0] for r in res), sum(r[1] for r in res) + bev * N * L


@njit(cache=True, nogil=True)
def pad_u8(x, shift, fill, pt, pl, n0, n1, out):
    """out[n, c, pt + i, pl + j] = x[n, c, i, j] - shift as uint8, every other pixel ``fill``, images n0..n1-1 (the
    caller checked 0 <= x - shift <= 255 and 0 <= fill <= 255)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Hp, Wp = out.shape[2], out.shape[3]
    f = np.uint8(fill)
    for n in range(n0, n1):  # fill, then the interior: 1.1-2x a row-by-row form on small planes
        for c in range(C):
            for i in range(Hp):
                for j in range(Wp):
                    out[n, c, i, j] = f
            for i in range(H):
                for j in range(W):
                    out[n, c, pt + i, pl + j] = np.uint8(np.int64(x[n, c, i, j]) - shift)


@njit(cache=True, nogil=True)
def res_to_ct(res, Mp, nq, c0, m0, m1, ct):
    """ct[m - m0, c0 + i] = res[i * Mp + m] (position-major accumulators to the epilogue's channel-major block)."""
    for m in range(m0, m1):
        r = ct[m - m0]
        for i in range(nq):
            r[c0 + i] = res[i * Mp + m]


def _epilogue_part(epi, m0: int, m1: int):
    """The epilogue of channels m0..m1-1 (its per-channel arrays sliced)."""
    import dataclasses

    cut = {f: getattr(epi, f)[m0:m1] for f in ("q", "shift", "mult", "bias", "pre") if getattr(epi, f) is not None}
    return dataclasses.replace(epi, **cut)


def _vnni_consts(plan, spec, M: int, Mp: int):
    """(the bias in the accumulator padded to Mp int32 lanes (inside int32: _vnni_bounds), its events per position,
    the stage spec) of a plan, made once (plan.cache; ~50 us a call that was per batch and layer)."""
    got = plan.cache.get("vnni_consts")
    if got is None:
        b0, bev = _bias_in_acc(plan.bias, spec)
        b0p = np.zeros(Mp, np.int32)
        b0p[:M] = b0
        got = plan.cache["vnni_consts"] = (b0p, bev, _stages(spec))
    return got


def _vnni_corr(plan, wsum: np.ndarray, o: int) -> np.ndarray:
    """o * sum_chunk d as int32 (exact: |o| * wchunk < 2^31, _vnni_bounds), kept for the last input offset o
    (a layer's batches mostly share it; ~50 us a call for a deep layer's [chunks, channels]). One tuple: a batch
    worker reads the pair another one wrote whole."""
    got = plan.cache.get("vnni_corr")
    if got is None or got[0] != o:
        got = plan.cache["vnni_corr"] = (o, np.ascontiguousarray((wsum * o).astype(np.int32).reshape(-1)))
    return got[1]


def run_vnni_fused(plan, x: np.ndarray, zx: int, geom: np.ndarray, pad, epi, out: np.ndarray):
    """A one-group conv (or linear as a 1x1 conv) under a chunked accumulator straight from its input codes x
    [N, C, H, W] to its requantized, clamped output ``out`` [N, M, L] (narrow dtype): :func:`vnni_chunks` with the
    layer's fused epilogue (:class:`hwsim.kernels.Epilogue`, the requant of the general path bit for bit) behind
    it, no int64 accumulators between. Returns (clipped, partial events, acc events), or None where :func:`run_vnni_chunks`'s
    conditions fail for this batch (the caller runs the general path).

    Per block of whole images (and, where the blocks are fewer than the workers, per 16-channel part): the input
    padded as uint8 x - z_x - o (padding -o), columns of position sub-blocks of VNNI_COLS_BYTES, the kernel, its
    accumulators into an int32 [channels, positions] block, the epilogue on the block."""
    from hwsim import kernels as _k

    N = x.shape[0]
    KH, KW, Ho, Wo = int(geom[0]), int(geom[1]), int(geom[6]), int(geom[7])
    L, K = Ho * Wo, x.shape[1] * KH * KW
    if N == 0 or not vnni_ok(plan) or plan.w_kernel.shape[0] != K:
        return None
    spec = plan.spec
    x = np.ascontiguousarray(x)
    xmin, xmax = (int(v) for v in value_range(x.reshape(-1)))  # 0 included
    lo, hi = min(xmin - zx, 0), max(xmax - zx, 0)  # of x - z_x, padding (0) included
    o = lo
    Hp, Wp = x.shape[2] + pad[0] + pad[1], x.shape[3] + pad[2] + pad[3]
    pshape = (N, x.shape[1], Hp, Wp)
    got = vnni_chunk_weights(plan, pshape, geom)
    if got is None:
        return None
    wq, wsum, wchunk, wtot, offs, C, G, MB = got
    if hi - o > 255 or not _vnni_bounds(plan, spec, o, max(-lo, hi), wchunk, wtot, C):
        return None
    M = plan.w_kernel.shape[1]
    Mp = MB * 16
    corr = _vnni_corr(plan, wsum, o)
    b0p, bev, stages = _vnni_consts(plan, spec, M, Mp)
    KQ = C * G
    bases = _positions(plan, pshape, geom, N, K)[1]
    nw = _k.workers()
    xu = np.empty(pshape, np.uint8)
    step = -(-N // nw)
    _k._in_workers(lambda r: pad_u8(x, zx + o, -o, int(pad[0]), int(pad[2]), r[0], r[1], xu),
                   [(n0, min(N, n0 + step)) for n0 in range(0, N, step)])
    xf = xu.reshape(-1)
    nb = int(max(1, min(-(-N // nw), _k.GEMM_BLOCK_BYTES // max(1, 4 * L * M))))
    blocks = [(n0, min(nb, N - n0)) for n0 in range(0, N, nb)]
    nparts = max(1, min(MB, nw // len(blocks))) if len(blocks) < nw else 1
    parts = [(MB * i // nparts, MB * (i + 1) // nparts) for i in range(nparts)]
    tasks = [(b, p) for b in blocks for p in parts if p[1] > p[0]]
    PB = max(VNNI_TILE, (VNNI_COLS_BYTES // (4 * KQ)) // VNNI_TILE * VNNI_TILE)
    zero = np.zeros(M, np.int64)
    epis = {p: (epi if p == (0, MB) else _epilogue_part(epi, p[0] * 16, min(M, p[1] * 16))) for p in parts}

    def work(mine):
        cols = np.empty(PB * KQ, np.int32)
        res = np.empty(PB * Mp, np.int32)
        ct = None
        pe = ae = clipped = 0
        for (n0, b), (mb0, mb1) in mine:
            m0, m1 = mb0 * 16, min(M, mb1 * 16)
            if ct is None or ct.shape[0] < m1 - m0:
                ct = np.empty((m1 - m0, nb * L), np.int32)
            for q0 in range(n0 * L, (n0 + b) * L, PB):
                nq = min(PB, (n0 + b) * L - q0)
                im2col_offsets(xf, bases, q0, offs, cols[:nq * KQ].view(np.uint8).reshape(nq, 4 * KQ))
                p1, a1 = vnni_chunks(cols, nq, KQ, wq, MB, corr, b0p, C, G, stages, mb0, mb1, res, Mp)
                pe, ae = pe + int(p1), ae + int(a1)
                res_to_ct(res, Mp, nq, q0 - n0 * L, m0, m1, ct)
            dst = out if (m0, m1) == (0, M) else out[:, m0:m1]
            clipped += epis[(mb0, mb1)].run(ct[:m1 - m0, :b * L], n0, zero[m0:m1], dst)
        return clipped, pe, ae

    nt = max(1, min(nw, len(tasks)))
    res = _k._in_workers(work, [tasks[i::nt] for i in range(nt)])
    return sum(r[0] for r in res), sum(r[1] for r in res), sum(r[2] for r in res) + bev * N * L


# ----------------------------------------------------------------------------- chunks of R >= 8: int8 chunk GEMMs
@njit(cache=True, nogil=True)
def chunk_stage_i64(S, corr, ci, spec, acc):
    """One chunk (ci) of the MAC-array model on a block of positions: v = S[p, m] + corr[ci, m] (the exact chunk
    sum), the P-bit partial register on v, then acc[p, m] += v under the A-bit policy (spec as in
    :func:`hwsim.kernels.accumulate_rows`; int64 arithmetic, |values| < 2^62 by the plan). Returns
    (partial events, acc events). Serial, releasing the GIL; each stage is one vectorizable loop."""
    Pb, M = S.shape
    corr = corr[ci]
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
def chunk_stage_f32(S, corr, ci, lo, hi, acc, cnt):
    """:func:`chunk_stage_i64` for the common case of no P stage and a saturating A stage, in float32:
    acc[p, m] = clamp(acc[p, m] + (S[p, m] + corr[ci, m]), lo, hi); cnt[m] += 1 where the clamp changed the
    value. Exact where the plan proved every value below 2^24 (chunk sums, accumulator plus one chunk;
    the caller keeps cnt below 2^24). Serial, releasing the GIL."""
    Pb, M = S.shape
    corr = corr[ci]
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
    """out[i, m, l] = acc[i*L + l, m] (position-major block to the channel-major output); few positions per
    image (L < 8): row by row (contiguous reads; 2-9x faster at L = 4 / 1), else channel by channel."""
    if L < 8:
        for i in range(out.shape[0]):
            for l in range(L):
                for m in range(acc.shape[1]):
                    out[i, m, l] = np.int64(acc[i * L + l, m])
        return
    for i in range(out.shape[0]):
        for m in range(acc.shape[1]):
            for l in range(L):
                out[i, m, l] = np.int64(acc[i * L + l, m])


STAGE_BYTES = 512 << 10  # one chunk's int32 sums of a block of positions (kept in L2 for the stage pass)
PART_MIN_M = 32  # channels of one worker's part at least when a layer's channels are split over the workers
PART_ALIGN = 16  # part boundaries on multiples of this many channels where the parts stay that large


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


def channel_parts(M: int, parts: int) -> list[tuple[int, int]]:
    """[m0, m1) of ``parts`` near-equal consecutive channel ranges covering 0..M (none empty: at most M parts),
    their boundaries on multiples of PART_ALIGN where every part keeps at least PART_ALIGN channels."""
    parts = max(1, min(parts, M))
    unit = PART_ALIGN if M >= parts * PART_ALIGN else 1
    units = -(-M // unit)
    cuts = [min(M, (units * i // parts) * unit) for i in range(parts + 1)]
    cuts[-1] = M
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def _part_weights(plan, w8, m0: int, m1: int):
    """The chunk weights of channels m0..m1-1 (column slices of the column-major [R, M] views: no copy), once
    per plan and part."""
    if (m0, m1) == (0, w8[0].shape[1]):
        return w8
    key = ("i8part", m0, m1)
    if key not in plan.cache:
        plan.cache[key] = [w[:, m0:m1] for w in w8]
    return plan.cache[key]


@njit(cache=True, nogil=True)
def int8_and_range(xf, out):
    """out[i] = xf[i] as int8 (wrapping: valid only where the returned range lies in [-128, 127]) and (min, max)
    of the flat integer-valued array xf, in one pass (int64 compares: vectorized where xf is float64)."""
    lo = np.int64(0)
    hi = np.int64(0)
    if xf.size:
        lo = np.int64(xf[0])
        hi = lo
    for i in range(xf.size):
        v = np.int64(xf[i])
        lo = min(lo, v)
        hi = max(hi, v)
        out[i] = np.int8(v & 255)
    return lo, hi


def _positions(plan, xshape: tuple, geom: np.ndarray, N: int, K: int):
    """(input offsets [K], position bases [N * L]) of this input shape, kept in plan.cache (one entry)."""
    key = (tuple(xshape), N, np.asarray(geom).tobytes())
    got = plan.cache.get("i8pos")
    if got is None or got[0] != key:
        got = (key, input_offsets(xshape, geom, K), position_bases(N, xshape, geom))
        plan.cache["i8pos"] = got
    return got[1], got[2]


def run_int8_chunks(plan, xp: np.ndarray, geom: np.ndarray, N: int, L: int, K: int, out: np.ndarray):
    """The MAC-array model of one conv group with its exact chunk sums from int8 GEMMs; (pe, ae) or None.

    Chunk c of position p: S = sum_{k in c} w_k (xp_k - off) by ``torch._int_mm`` (int8 operands, int32
    sums: |S| <= R * 128 * 128 < 2^31), plus off * sum_{k in c} w_k (exact int64) = sum_{k in c} w_k xp_k,
    the chunk sum of the contract; then :func:`chunk_stage_i64` applies the P and A stages in k order.
    None (the caller falls back) without torch, when w - z_w or xp - off (padding included) leaves int8.

    Work: blocks of whole images (one chunk's int32 sums of a block fit STAGE_BYTES). Where the blocks are
    fewer than the worker threads (deep layers: few positions per image, many channels; ResNet-18 @ 32's
    layer3 / layer4 are one block of 128 images), each block's channels are split in parts of at least
    PART_MIN_M: the block's columns are made once, and each worker runs the chunk GEMMs and stages of its
    own channels (column slices of the weights, its own sums and accumulators). Channels are independent in
    the model, so every split gives the same integers and events.
    """
    from hwsim import kernels as _k

    mm = _k.int_mm()
    R = int(plan.spec[4])
    wts = int8_chunk_weights(plan) if mm is not None and R >= 2 else None
    if wts is None or N == 0:
        return run_fused_f32(plan, xp, geom, N, L, K, out)
    xp = np.ascontiguousarray(xp)
    xp8 = np.empty(xp.shape, np.int8)
    lo, hi = (int(v) for v in int8_and_range(xp.reshape(-1), xp8.reshape(-1)))
    lo, hi = min(0, lo), max(0, hi)  # padding pixels are 0
    off = 0 if (lo >= -128 and hi <= 127) else lo + 128
    if hi - off > 127:
        return run_fused_f32(plan, xp, geom, N, L, K, out)
    if off:
        np.subtract(xp, off, out=xp8, casting="unsafe")  # exact: integers in [-128, 127] (checked above)
    w8, wsum = wts
    import torch

    C, M = wsum.shape
    Kp = C * R
    corr = wsum * off  # [C, M] int64, exact: |off| < 2^31, |sum w| < 2^31 * K
    spec = plan.spec
    b0, bev = _bias_in_acc(plan.bias, spec)
    nb = int(max(1, min(N, (STAGE_BYTES // (4 * M)) // max(1, L))))
    blocks = [(n0, min(nb, N - n0)) for n0 in range(0, N, nb)]
    nw = _k.workers()
    parts = channel_parts(M, min(nw // len(blocks), M // PART_MIN_M)) if len(blocks) < nw else [(0, M)]

    # float32 stage: no P stage, saturating A stage, every value below 2^24 (the plan's float32 proof;
    # corr = off * chunk column sum is the difference of two such chunk sums)
    f32 = (plan.w_f32 is not None and spec[3] == MODE_NONE and spec[1] == MODE_SAT
           and int(np.abs(corr).max(initial=0)) < 1 << 24 and nb * L * C < 1 << 24)
    a_bits = int(spec[0]) if spec[1] != MODE_NONE else 2
    lo_f, hi_f = np.float32(-(1 << (a_bits - 1))), np.float32((1 << (a_bits - 1)) - 1)

    offs, bases = _positions(plan, xp.shape, geom, N, K)
    xf8 = xp8.reshape(-1)

    def columns(n0, b, buf=None):
        cols = np.zeros((nb * L, Kp), np.int8) if buf is None else buf  # columns K.. stay 0 (weights 0 too)
        im2col_offsets(xf8, bases, n0 * L, offs, cols[:b * L, :K])
        return cols

    shared = None
    if len(parts) > 1:  # every part of a block reads the same columns: made once, here
        shared = [torch.from_numpy(columns(n0, b)) for n0, b in blocks]
    tasks = [(i, j) for i in range(len(blocks)) for j in range(len(parts))]

    def work(mine):
        Mw = max(parts[j][1] - parts[j][0] for _, j in mine)
        S = torch.empty(nb * L * Mw, dtype=torch.int32)  # reused: a fresh output per GEMM costs as much as the GEMM
        acc = np.empty(nb * L * Mw, np.float32 if f32 else np.int64)
        cnt = np.zeros(Mw, np.float32)
        own = None
        pe = ae = 0
        for i, j in mine:
            n0, b = blocks[i]
            m0, m1 = parts[j]
            Pb, Mj = b * L, m1 - m0
            if shared is None:
                own = columns(n0, b, own)
                ct = torch.from_numpy(own)
            else:
                ct = shared[i]
            xs = ct[:Pb].split(R, dim=1)  # the C chunks' columns (views)
            ws = _part_weights(plan, w8, m0, m1)
            Sj = S[:Pb * Mj].view(Pb, Mj)
            Sn = Sj.numpy()
            a = acc[:Pb * Mj].reshape(Pb, Mj)
            init_acc(b0[m0:m1], a)
            if f32:
                cf = np.ascontiguousarray(corr[:, m0:m1], dtype=np.float32)
                cj = cnt[:Mj]
                cj[:] = 0  # at most Pb * C < 2^24 events per channel and block: exact in float32
                for c in range(C):
                    mm(xs[c], ws[c], out=Sj)
                    chunk_stage_f32(Sn, cf, c, lo_f, hi_f, a, cj)
                ae += int(cj.astype(np.int64).sum())
            else:
                cc = np.ascontiguousarray(corr[:, m0:m1])
                for c in range(C):
                    mm(xs[c], ws[c], out=Sj)
                    p1, a1 = chunk_stage_i64(Sn, cc, c, spec, a)
                    pe, ae = pe + p1, ae + a1
            finish_acc(a, L, out[n0:n0 + b, m0:m1])
        return pe, ae

    nt = max(1, min(nw, len(tasks)))
    with _k._torch_one_thread():
        res = _k._in_workers(work, [tasks[i::nt] for i in range(nt)])
    return sum(r[0] for r in res), sum(r[1] for r in res) + bev * N * L


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


# ----------------------------------------------------------------------------- short chunks: exact blocks, model where needed
BLOCK_MACS = 64  # products per screened block (a multiple of R)
BLOCK_SWITCH = 0.2  # above this fraction of (position, block) pairs needing the model on most channels
# (measured on the first sample), the screen does not pay: the caller's model kernel runs instead


@njit(cache=True, nogil=True)
def block_stage(E, A, corr, cols, off, k0, w, wT, spec, acc, s):
    """One block of Bk = cols.shape[1] products (chunks of R = spec[4]) for a block of positions.

    Element (p, m) with running accumulator a: the block's products sum to e = E[p, m] + corr[m]
    exactly and every partial sum inside the block (so every chunk sum, and every running value
    minus a) lies within +-d, d = A[p, m] = sum |w| |x| over the block. When a +- d fits the A-bit
    range and d fits the P-bit register, no stage can change a value: acc = a + e, no event, the same
    as the sequential model. Otherwise the sequential model runs on the block, chunk by chunk (chunk
    sums from x = cols[p, k] + off and the int64 weights), P then A stage, in k order: element by
    element (wT [M, Kp]) when few channels of the position need it, else for every channel of the
    position at once, vectorized over channels (w [Kp, M]; for a safe channel it gives a + e too).
    s: int64 scratch [M]. Returns (partial events, acc events, positions that ran the vectorized
    model). Serial, releasing the GIL.
    """
    Pb, M = E.shape
    heavy = 0
    Bk = cols.shape[1]
    a_bits, a_mode, p_bits, p_mode, R = spec[0], spec[1], spec[2], spec[3], spec[4]
    big = np.int64(1) << 62
    a_lo = -(np.int64(1) << (a_bits - 1)) if a_mode != MODE_NONE else -big
    a_hi = -a_lo - 1 if a_mode != MODE_NONE else big
    a_mask = (np.int64(1) << a_bits) - 1 if a_mode != MODE_NONE else np.int64(0)
    p_lo = -(np.int64(1) << (p_bits - 1)) if p_mode != MODE_NONE else -big
    p_hi = -p_lo - 1 if p_mode != MODE_NONE else big
    p_mask = (np.int64(1) << p_bits) - 1 if p_mode != MODE_NONE else np.int64(0)
    pe = np.int64(0)
    ae = np.int64(0)
    for p in range(Pb):
        nr = 0
        for m in range(M):
            a = acc[p, m]
            d = np.int64(A[p, m])
            nr += not (a + d <= a_hi and a - d >= a_lo and d <= p_hi)
        if nr == 0:
            for m in range(M):
                acc[p, m] += np.int64(E[p, m]) + corr[m]
            continue
        if nr * 8 > M:  # many channels: the model on the whole position, vectorized over channels
            heavy += 1
            for c0 in range(0, Bk, R):
                for m in range(M):
                    s[m] = 0
                for k in range(c0, c0 + R):
                    xv = np.int64(cols[p, k]) + off
                    if xv != 0:
                        for m in range(M):
                            s[m] += xv * w[k0 + k, m]
                if p_mode == MODE_SAT:
                    for m in range(M):
                        c = min(max(s[m], p_lo), p_hi)
                        pe += np.int64(c != s[m])
                        s[m] = c
                elif p_mode == MODE_WRAP:
                    for m in range(M):
                        c = ((s[m] - p_lo) & p_mask) + p_lo
                        pe += np.int64(c != s[m])
                        s[m] = c
                if a_mode == MODE_SAT:
                    for m in range(M):
                        v = acc[p, m] + s[m]
                        c = min(max(v, a_lo), a_hi)
                        ae += np.int64(c != v)
                        acc[p, m] = c
                elif a_mode == MODE_WRAP:
                    for m in range(M):
                        v = acc[p, m] + s[m]
                        c = ((v - a_lo) & a_mask) + a_lo
                        ae += np.int64(c != v)
                        acc[p, m] = c
                else:
                    for m in range(M):
                        acc[p, m] += s[m]
            continue
        for m in range(M):  # few channels: element by element
            a = acc[p, m]
            d = np.int64(A[p, m])
            if a + d <= a_hi and a - d >= a_lo and d <= p_hi:
                acc[p, m] = a + (np.int64(E[p, m]) + corr[m])
                continue
            for c0 in range(0, Bk, R):
                t = np.int64(0)
                for k in range(c0, c0 + R):
                    t += (np.int64(cols[p, k]) + off) * wT[m, k0 + k]
                if p_mode == MODE_SAT:
                    c = min(max(t, p_lo), p_hi)
                    pe += np.int64(c != t)
                    t = c
                elif p_mode == MODE_WRAP:
                    c = ((t - p_lo) & p_mask) + p_lo
                    pe += np.int64(c != t)
                    t = c
                v = a + t
                if a_mode == MODE_SAT:
                    a = min(max(v, a_lo), a_hi)
                elif a_mode == MODE_WRAP:
                    a = ((v - a_lo) & a_mask) + a_lo
                else:
                    a = v
                ae += np.int64(a != v)
            acc[p, m] = a
    return pe, ae, heavy


def int8_block_weights(plan, Bk: int):
    """(torch int8 w - z_w and |w - z_w| per block of Bk rows [Bk, M] (column-major views), per-block column
    sums int64 [Cb, M], w - z_w int64 [Cb * Bk, M] and its transpose) for a one-group plan whose |w - z_w| <= 127; None
    otherwise. Made once, kept in plan.cache."""
    key = ("i8blocks", Bk)
    if key not in plan.cache:
        wk = plan.w_kernel
        K, M = wk.shape
        if K == 0 or M == 0 or int(np.abs(wk).max()) > 127:
            plan.cache[key] = None
        else:
            import torch

            Cb = -(-K // Bk)
            wp = np.zeros((Cb * Bk, M), np.int64)
            wp[:K] = wk
            w3 = wp.reshape(Cb, Bk, M)

            def t8(a):
                return torch.from_numpy(np.ascontiguousarray(a.T).astype(np.int8)).t()

            plan.cache[key] = ([t8(w3[c]) for c in range(Cb)], [t8(np.abs(w3[c])) for c in range(Cb)],
                               w3.sum(axis=1), wp, np.ascontiguousarray(wp.T))
    return plan.cache[key]


def run_int8_blocks(plan, xp: np.ndarray, geom: np.ndarray, N: int, L: int, K: int, out: np.ndarray):
    """The MAC-array model of one conv group with short chunks (R < Bk), screened per element and block;
    (pe, ae) or None (without torch, or when x - z_x or w - z_w leaves [-127, 127]).

    Per block of Bk products: exact sums E = sum w (x - off) by ``torch._int_mm`` plus off * sum w, and
    bounds A = sum |w| |x - z_x| by a second int8 GEMM; :func:`block_stage` adds E where the bound shows
    no stage can act and runs the sequential model on the element's block elsewhere. Exact: E and A are
    integers below 2^31 (Bk * 127 * 128), the rest int64 under the plan's 2^62 bound.
    """
    from hwsim import kernels as _k

    mm = _k.int_mm()
    R = int(plan.spec[4])
    if mm is None or R > BLOCK_MACS:
        return None
    if N == 0:
        return 0, 0
    Bk = R * max(1, BLOCK_MACS // R)
    wts = int8_block_weights(plan, Bk)
    if wts is None:
        return None
    w8, wa8, wsum, wp, wpT = wts
    lo, hi = (min(0, int(xp.min())), max(0, int(xp.max()))) if xp.size else (0, 0)  # padding pixels are 0
    if lo < -127 or hi > 127:
        return None
    import torch

    off = 0
    Cb, M = wsum.shape
    Kp = Cb * Bk
    corr = wsum * off
    spec = plan.spec
    b0, bev = _bias_in_acc(plan.bias, spec)
    xp8 = np.empty(xp.shape, np.int8)
    np.subtract(xp, off, out=xp8, casting="unsafe")  # exact: integers in [-127, 127] (checked above)
    xa8 = np.abs(xp8)
    nb = int(max(1, min(N, (STAGE_BYTES // (4 * M)) // max(1, L))))

    offs, bases, xf8, xfa8 = input_offsets(xp.shape, geom, K), position_bases(N, xp.shape, geom), xp8.reshape(-1), xa8.reshape(-1)

    def work(part):
        cols = np.zeros((nb, L, Kp), np.int8)  # columns K.. stay 0 (their weights are 0 too)
        cola = np.zeros((nb, L, Kp), np.int8)
        ct, cat = torch.from_numpy(cols.reshape(nb * L, Kp)), torch.from_numpy(cola.reshape(nb * L, Kp))
        E = torch.empty((nb * L, M), dtype=torch.int32)
        A = torch.empty((nb * L, M), dtype=torch.int32)
        En, An = E.numpy(), A.numpy()
        acc = np.empty((nb * L, M), np.int64)
        s = np.empty(M, np.int64)
        cols2 = cols.reshape(nb * L, Kp)
        pe = ae = heavy = 0
        for n0, b in part:
            Pb = b * L
            im2col_offsets(xf8, bases, n0 * L, offs, cols2[:Pb, :K])
            im2col_offsets(xfa8, bases, n0 * L, offs, cola.reshape(nb * L, Kp)[:Pb, :K])
            a = acc[:Pb]
            init_acc(b0, a)
            for c in range(Cb):
                mm(ct[:Pb, c * Bk:(c + 1) * Bk], w8[c], out=E[:Pb])
                mm(cat[:Pb, c * Bk:(c + 1) * Bk], wa8[c], out=A[:Pb])
                p1, a1, h1 = block_stage(En[:Pb], An[:Pb], corr[c], cols2[:Pb, c * Bk:(c + 1) * Bk], off, c * Bk, wp,
                                         wpT, spec, a, s)
                pe, ae, heavy = pe + p1, ae + a1, heavy + h1
            finish_acc(a, L, out[n0:n0 + b])
            ae += bev * Pb
        return pe, ae, heavy

    with _k._torch_one_thread():
        pe, ae, heavy = work([(0, 1)])  # the first sample decides whether the screen pays
        if heavy > BLOCK_SWITCH * L * Cb:
            return None
        blocks = [(n0, min(nb, N - n0)) for n0 in range(1, N, nb)]
        workers = max(1, min(_k.numba.get_num_threads(), len(blocks)))
        res = _k._in_workers(work, [blocks[i::workers] for i in range(workers)]) if blocks else []
    return pe + sum(r[0] for r in res), ae + sum(r[1] for r in res)
