"""The exact int8 path's element-wise kernels (#18): the hardware float32 FMA (kernels.fma32) against the float64
TwoSum emulation and exact rationals, the ratio_fma add on both of its FMA forms, the max pool's padded-row kernel
and the table add's derived tables -- each bit for bit against its reference, serial and parallel."""

import contextlib
from fractions import Fraction

import numba
import numpy as np
import pytest
from numba import njit

from hwsim import kernels, ops
from hwsim import reference as ref

f32 = np.float32
FLT_MAX = float(np.finfo(f32).max)


@contextlib.contextmanager
def _serial(on: bool):
    """on: the serial kernels (kernels.serial_mode); off: the parallel ones, on two numba threads where there are
    two (the wrappers take the serial kernel on one thread)."""
    prev = numba.get_num_threads()
    try:
        if not on:
            numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        with kernels.serial_mode(on):
            yield
    finally:
        numba.set_num_threads(prev)


# ----------------------------------------------------------------------------- fma32
@njit(cache=True)
def _fma32_each(a, b, c, out):
    for i in range(a.shape[0]):
        out[i] = kernels.fma32(a[i], b[i], c[i])


@njit(cache=True)
def _twosum_each(a, b, c, out):
    for i in range(a.shape[0]):
        out[i] = kernels._fma_f32(a[i], b[i], c[i])


def _both(a, b, c):
    a, b, c = (np.ascontiguousarray(v, f32) for v in (a, b, c))
    hw, ts = np.empty(a.size, f32), np.empty(a.size, f32)
    _fma32_each(a, b, c, hw)
    _twosum_each(a, b, c, ts)
    return hw, ts


def _bits(x):
    return np.asarray(x, f32).view(np.uint32)


def _near_midpoints(rng, n):
    """(a, b, c): c a random float32 of exponent E (normal and subnormal), a*b = +-half an ulp of c, times
    (1 - 2^-46), 1 or (1 + 2^-22 + 2^-46): the exact sum lies just below, on, or above a float32 midpoint, and
    float64 rounds the first case onto the midpoint (the double rounding the TwoSum correction undoes)."""
    E = rng.integers(-126, 128, n)
    sub = rng.random(n) < 0.15  # subnormal c: ulp 2^-149
    mant = (rng.integers(0, 1 << 23, n) | (1 << 23)).astype(np.float64)
    c = np.where(sub, rng.integers(1, 1 << 23, n) * 2.0**-149, np.ldexp(mant, E - 23))
    c = np.where(rng.random(n) < 0.5, -c, c).astype(f32)
    half = np.where(sub, -150, E - 24)  # exponent of half an ulp of c
    ea = half // 2
    eb = half - ea
    kind = rng.integers(0, 3, n)  # below (1 - 2^-46), tie (exactly half), above
    ma = np.choose(kind, [1 + 2.0**-23, 1.0, 1 + 2.0**-23])
    mb = np.choose(kind, [1 - 2.0**-23, 1.0, 1 + 2.0**-23])
    a = np.ldexp(ma, ea).astype(f32)
    b = np.ldexp(mb, eb).astype(f32)
    a = np.where(rng.random(n) < 0.5, -a, a).astype(f32)
    return a, b, c


def test_fma32_is_the_correctly_rounded_fma():
    """kernels.fma32 (llvm.fma.f32, the CPU's vfmadd) == the float64 TwoSum form kernels._fma_f32 bit for bit
    (NaN aside) on random bit patterns (every exponent, subnormals, inf, NaN), random values, halfway cases
    above/on/below a float32 midpoint at every exponent and +-0; both == exact rationals on finite cases.
    The one difference: just below the overflow midpoint 2^128 - 2^103 the hardware gives FLT_MAX, the
    emulation inf (float64 lands on the midpoint, and the neighbour of inf is not found) -- both callers
    (quantize_fma: qmin; the ratio_fma add: clipped at 2^62) turn either into the same integer."""
    rng = np.random.default_rng(18)
    n = 200_000
    bits = rng.integers(0, 1 << 32, (3, n), dtype=np.uint64).astype(np.uint32).view(f32)
    vals = (rng.uniform(-2, 2, (3, n)) * 2.0 ** rng.integers(-80, 80, (3, n))).astype(f32)
    mid = _near_midpoints(rng, n)
    special = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, FLT_MAX, -FLT_MAX, 2.0**-149, -(2.0**-149),
                        2.0**-126, 2.0**24, 2.0**24 + 2, 0.5], f32)
    sa, sb, sc = np.meshgrid(special, special, special, indexing="ij")
    a = np.concatenate([bits[0], vals[0], mid[0], sa.ravel()])
    b = np.concatenate([bits[1], vals[1], mid[1], sb.ravel()])
    c = np.concatenate([bits[2], vals[2], mid[2], sc.ravel()])
    hw, ts = _both(a, b, c)
    nan = np.isnan(hw)
    np.testing.assert_array_equal(nan, np.isnan(ts))
    diff = ~nan & (_bits(hw) != _bits(ts))
    # the overflow midpoint: float64(a*b + c) == +-(2^128 - 2^103) exactly, the exact value just inside
    edge = np.abs(a.astype(np.float64) * b + c.astype(np.float64)) == 2.0**128 - 2.0**103
    assert not (diff & ~edge).any(), (a[diff & ~edge][:5], b[diff & ~edge][:5], c[diff & ~edge][:5])
    np.testing.assert_array_equal(np.abs(hw[diff]), f32(FLT_MAX))
    # the halfway cases really are the hard ones: float64 then float32 double-rounds on some of them
    naive = (mid[0].astype(np.float64) * mid[1] + mid[2]).astype(f32)
    assert (naive != hw[2 * n:3 * n]).sum() > 1000
    # exact rationals on a sample of the finite, in-range cases
    fin = np.flatnonzero(np.isfinite(hw) & (np.abs(hw) < FLT_MAX) & np.isfinite(a) & np.isfinite(b) & np.isfinite(c))
    pick = np.concatenate([rng.choice(fin[fin < 2 * n], 1500, replace=False),
                           rng.choice(fin[(fin >= 2 * n) & (fin < 3 * n)], 1500, replace=False)])
    for i in pick:
        want = ref.round_to_f32(Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i])))
        assert _bits(hw[i]) == _bits(want) or hw[i] == want == 0, (a[i], b[i], c[i], hw[i], want)


def test_fma32_overflow_midpoint():
    """The documented difference, pinned: FLT_MAX + (half its ulp)(1 - 2^-46) rounds to FLT_MAX."""
    a, b = f32(2.0**51 * (1 + 2.0**-23)), f32(2.0**52 * (1 - 2.0**-23))
    hw, ts = _both([a, -a], [b, b], [FLT_MAX, -FLT_MAX])
    np.testing.assert_array_equal(hw, [FLT_MAX, -FLT_MAX])
    np.testing.assert_array_equal(ts, [np.inf, -np.inf])


# ----------------------------------------------------------------------------- the ratio_fma add
ROUNDINGS = ("half_even", "half_away", "half_up", "floor", "trunc")
LIMIT = 2**24
EDGES = np.array([0, 1, -1, 2, -2, 127, -128, 255, 2**15 - 1, -(2**15), LIMIT - 2, -(LIMIT - 2), LIMIT - 1,
                  -(LIMIT - 1), LIMIT, -LIMIT], np.int64)


def _ratio_consts(sa, za, sb, zb, sy, zy):
    p = ops.add_params(sa, za, sb, zb, sy, zy, ops.Requant(add_form="ratio_fma"))
    k = ops.ratio_fma_constant(p.a_ratio, za, p.b_ratio, zb, zy)
    return f32(p.a_ratio), f32(p.b_ratio), f32(k)


SCALES = [(0.5, 0, 0.25, 0, 0.5, 0), (2.0**-4, 3, 2.0**-5, -7, 0.75 * 2.0**-3, 1), (0.0173, -3, 0.0091, 11, 0.0311, -5)]


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_ratio_fma_add_both_fma_forms_equal_reference(rounding):
    """ops.add's ratio_fma form (ONNX Runtime QLinearAdd) with operands at +-(2^24 - 1), +-2^24 and random
    int8/int16 values: the kernel's hardware-FMA form (small=True, |p|, |q| <= 2^24: exact in float32), its
    TwoSum form (small=False) and the plain-Python reference agree, serial and parallel; tie-rich binary scales."""
    rng = np.random.default_rng(24)
    ea, eb = np.meshgrid(EDGES, EDGES, indexing="ij")
    a = np.concatenate([ea.ravel(), rng.integers(-128, 128, 150), rng.integers(-(2**15), 2**15, 150),
                        rng.integers(-LIMIT, LIMIT + 1, 100)])
    b = np.concatenate([eb.ravel(), rng.integers(-128, 128, 150), rng.integers(-(2**15), 2**15, 150),
                        rng.integers(-LIMIT, LIMIT + 1, 100)])
    cfg = ops.Requant(add_form="ratio_fma", rounding=rounding)
    for sa, za, sb, zb, sy, zy in SCALES:
        kw = dict(a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy,
                  qmin=-(2**62), qmax=2**62, cfg=cfg)
        want, _ = ops.add(a, b, impl="reference", **kw)
        np.testing.assert_array_equal(ops.add(a, b, **kw)[0], want)
        rp, rq, k = _ratio_consts(sa, za, sb, zb, sy, zy)
        for small in (True, False):
            for on in (False, True):
                with _serial(on):
                    y = np.empty(a.size, np.int64)
                    kernels.add_ratio_fma(a, b, rp, rq, k, kernels.ROUND_CODE[rounding], y, small=small)
                    np.testing.assert_array_equal(y, want, err_msg=f"small={small} serial={on}")


@pytest.mark.slow  # ~50 s on a cold numba cache (int8 / int16 kernels x modes x forms x serial / parallel)
def test_ratio_fma_add_large_arrays_every_block():
    """Many parallel blocks (kernels.ADD_BLOCK): both FMA forms == the numpy FMA emulation (ops.fma_f32, itself
    pinned to the reference above and in test_onnxruntime_engine) on int8 and int16 operands, every rounding;
    beyond 2^24 (float32 no longer exact) only the TwoSum form is right and ops.add takes it."""
    from hwsim import fixedpoint as fp

    rng = np.random.default_rng(25)
    n = 5 * kernels.ADD_BLOCK + 17
    for dt in (np.int8, np.int16):
        info = np.iinfo(dt)
        a = rng.integers(info.min, int(info.max) + 1, n).astype(dt)
        b = rng.integers(info.min, int(info.max) + 1, n).astype(dt)
        for sa, za, sb, zb, sy, zy in SCALES:
            rp, rq, k = _ratio_consts(sa, za, sb, zb, sy, zy)
            v = ops.fma_f32(a.astype(np.int64), rp, ops.fma_f32(b.astype(np.int64), rq, k))
            for rounding in ROUNDINGS:
                want = fp.round_float(v, rounding, 0, None)
                for small in (None, True, False):
                    for on in (False, True):
                        with _serial(on):
                            y = np.empty(n, np.int64)
                            kernels.add_ratio_fma(a, b, rp, rq, k, kernels.ROUND_CODE[rounding], y, small=small)
                            np.testing.assert_array_equal(y, want)
    # 2^24 + 1 is not a float32: the hardware form would read 2^24 (ties to even); ops.add must not take it
    a = np.array([LIMIT + 1, -(LIMIT + 1), LIMIT + 3, 5], np.int64)
    b = np.array([1, 0, -(LIMIT + 1), LIMIT + 1], np.int64)
    rp, rq, k = _ratio_consts(1.0, 0, 1.0, 0, 1.0, 0)
    wrong = np.empty(4, np.int64)
    kernels.add_ratio_fma(a, b, rp, rq, k, 0, wrong, small=True)
    kw = dict(a_scale=1.0, a_zero_point=0, b_scale=1.0, b_zero_point=0, y_scale=1.0, y_zero_point=0,
              qmin=-(2**62), qmax=2**62, cfg=ops.Requant(add_form="ratio_fma"))
    want = ops.add(a, b, impl="reference", **kw)[0]
    assert (wrong != want).any()
    np.testing.assert_array_equal(ops.add(a, b, **kw)[0], want)


def test_ratio_fma_add_picks_the_fma_form_from_the_values(monkeypatch):
    """ops.add hands the kernel small=True exactly when |a|, |b| < 2^24 (int8 codes; int64 below the limit)."""
    seen = []
    real = kernels.add_ratio_fma

    def spy(*args, small=None):
        seen.append(small)
        return real(*args, small=small)

    monkeypatch.setattr(kernels, "add_ratio_fma", spy)
    kw = dict(a_scale=0.02, a_zero_point=0, b_scale=0.03, b_zero_point=0, y_scale=0.05, y_zero_point=0,
              qmin=-128, qmax=127, cfg=ops.Requant(add_form="ratio_fma"))
    for a, small in ((np.arange(-128, 128, dtype=np.int8), True), (np.arange(256) + (LIMIT - 256), True),
                     (np.arange(256) + (LIMIT - 255), False), (-np.arange(256) - (LIMIT - 255), False)):
        ops.add(a, np.ones(256, np.int64), **kw)
        assert seen.pop() is small


# ----------------------------------------------------------------------------- max pool
POOL_DTYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64)


def _pool_case(rng, dt):
    info = np.iinfo(dt)
    lo, hi = max(int(info.min), -5000), min(int(info.max), 5000)
    kh, kw = (int(v) for v in rng.integers(1, 6, 2))
    sh, sw = (int(v) for v in rng.integers(1, 5, 2))
    # padding up to kernel + 1 on each side: windows wholly in the padding, windows past the bottom/right edge
    pt, pb, pl, pr = (int(rng.integers(0, k + 2)) for k in (kh, kh, kw, kw))
    H, W = (int(v) for v in rng.integers(1, 9, 2))
    if H + pt + pb < kh or W + pl + pr < kw:
        pb, pr = pb + kh, pr + kw
    x = rng.integers(lo, hi + 1, (int(rng.integers(1, 3)), int(rng.integers(1, 4)), H, W)).astype(dt)
    pv = int(rng.choice([lo, info.min, 0 if lo <= 0 else lo, hi, hi + 1, lo - 1, -(10**6), 10**6]))
    return x, (kh, kw), (sh, sw), (pt, pb, pl, pr), pv


@pytest.mark.parametrize("dt", [d if d in (np.int8, np.int64) else pytest.param(d, marks=pytest.mark.slow)
                                for d in POOL_DTYPES], ids=lambda d: np.dtype(d).name)  # slow: 7-16 s each, cold
def test_max_pool_kernel_equals_reference_everywhere(dt):
    """kernels.max_pool (padded row buffer, vertical then horizontal max) == reference.max_pool2d on random
    geometries: kernels 1-5 (each horizontal branch), strides 1-4, paddings up to kernel + 1 (windows wholly
    in the padding, windows past the bottom/right edge), pad values inside, at and beyond the dtype's range
    (the int64 buffer); out in x's dtype where pad_value fits it, else int64; serial and parallel."""
    rng = np.random.default_rng(30 + POOL_DTYPES.index(dt))
    for _ in range(60):
        x, k, s, pad, pv = _pool_case(rng, dt)
        want = ref.max_pool2d(x, k, s, pad, pv)
        info = np.iinfo(dt)
        for odt in {np.int64, dt if info.min <= pv <= info.max else np.int64}:
            for on in (False, True):
                out = np.empty(want.shape, odt)
                with _serial(on):
                    kernels.max_pool(x, *k, *s, pad[0], pad[2], pv, out)
                np.testing.assert_array_equal(out, want, err_msg=f"{k} {s} {pad} pv={pv} out={np.dtype(odt)}")
        np.testing.assert_array_equal(ops.max_pool2d(x, k, s, pad, pv), want)


def test_max_pool_kernel_many_planes_and_strided_arrays():
    """Several parallel tasks (kernels.MAX_POOL_TASK), a non-contiguous x and out, an empty batch."""
    rng = np.random.default_rng(33)
    x = rng.integers(-128, 128, (3, 70, 20, 17)).astype(np.int8)
    assert x[0, :, 0].size * 20 * 3 > kernels.MAX_POOL_TASK
    for k, s, pad in (((3, 3), (2, 2), (1, 1, 1, 1)), ((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 4), (1, 3), (2, 0, 1, 3))):
        want = ref.max_pool2d(x[:1], k, s, pad, -128)
        for on in (False, True):
            with _serial(on):
                out = np.empty((3,) + want.shape[1:], np.int8)
                kernels.max_pool(x, *k, *s, pad[0], pad[2], -128, out)
                np.testing.assert_array_equal(out[:1], want)
                np.testing.assert_array_equal(out[1:], ref.max_pool2d(x[1:], k, s, pad, -128))
                xt = x.transpose(0, 1, 3, 2)  # a strided view
                outt = np.empty((3, want.shape[1], want.shape[3], want.shape[2]), np.int64).transpose(0, 1, 3, 2)
                kernels.max_pool(np.ascontiguousarray(xt).transpose(0, 1, 3, 2), *k, *s, pad[0], pad[2], -128, outt)
                np.testing.assert_array_equal(outt, out)
        np.testing.assert_array_equal(ops.max_pool2d(xt.transpose(0, 1, 3, 2)[:1], k, s, pad, -128), want)
    out = np.empty((0, 70, 10, 9), np.int8)
    kernels.max_pool(x[:0], 3, 3, 2, 2, 1, 1, -128, out)


# ----------------------------------------------------------------------------- the table add
def _table2_numpy(a, b, amin, bmin, na, nb, table, lo, hi, qmin, qmax, count_low, odt):
    """kernels.table2's definition: None when an input is off the table, else (clamp(v, lo, hi) cast to out's
    dtype, #(v > qmax) + count_low * #(v < qmin))."""
    ia = a.astype(object) - amin  # Python ints: no wrap at the int64 extremes
    ib = b.astype(object) - bmin
    if ((ia < 0) | (ia >= na) | (ib < 0) | (ib >= nb)).any():
        return None
    v = table.astype(np.int64)[(ia * nb + ib).astype(np.int64)]
    c = int(np.count_nonzero(v > qmax)) + (int(np.count_nonzero(v < qmin)) if count_low else 0)
    return np.minimum(np.maximum(v, lo), hi).astype(odt), c


TABLE_GRIDS = [(-128, 256, -128, 256), (0, 256, -128, 256), (-5, 40, 3, 30), (-300, 512, -200, 256)]


@pytest.mark.slow  # ~60 s on a cold numba cache (every input x output dtype pair is a compilation)
@pytest.mark.parametrize("grid", TABLE_GRIDS, ids=lambda g: f"a{g[0]}+{g[1]}-b{g[2]}+{g[3]}")
def test_table2_equals_its_definition(grid):
    """kernels.table2 (clamped table in out's dtype + uint8 event table; the pure lookup where the dtypes fit
    the table, else clamped indices and a bad flag) == its numpy definition: input dtypes inside and wider than
    the table, out dtypes narrow (wrapping where the clamp exceeds them, as a store would) and int64, both count
    rules, clamps inside/outside the grid; an input off the table anywhere (either end, either operand, the
    last element, a late parallel block, the int64 extremes) gives None; serial and parallel; derived tables
    passed or made inside."""
    amin, na, bmin, nb = grid
    rng = np.random.default_rng(40 + TABLE_GRIDS.index(grid))
    table = rng.integers(-400, 400, na * nb).astype(np.int32)
    table[:3] = (-(2**31), 2**31 - 1, 0)
    n = 3 * kernels.ADD_BLOCK + 5
    for adt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64):
        info = np.iinfo(adt)
        alo, ahi = max(amin, int(info.min)), min(amin + na - 1, int(info.max))
        blo, bhi = max(bmin, int(info.min)), min(bmin + nb - 1, int(info.max))
        if alo > ahi or blo > bhi:
            continue
        a = rng.integers(alo, ahi + 1, n).astype(adt)
        b = rng.integers(blo, bhi + 1, n).astype(adt)
        outs = [(np.int8, -128, 127, -128, 127, True), (np.int8, 0, 127, -128, 127, False),
                (np.int8, -200, 300, -100, 100, True)]  # the last wraps in int8, as a store would
        if adt in (np.int8, np.int64):  # (each dtype pair is a compilation: the other out dtypes on two inputs)
            outs += [(np.uint8, 0, 255, 0, 255, True), (np.int16, -200, 200, -128, 127, False),
                     (np.int64, -(2**62), 2**62, -128, 127, True), (np.int64, 5, 3, 0, 10, True)]  # lo > hi: hi
        for odt, lo, hi, qmin, qmax, count_low in outs:
            want = _table2_numpy(a, b, amin, bmin, na, nb, table, lo, hi, qmin, qmax, count_low, odt)
            der = kernels.table2_derived(table, lo, hi, qmin, qmax, count_low, odt)
            for on in (False, True):
                for d in (der, None):
                    with _serial(on):
                        out = np.zeros(n, odt)
                        c = kernels.table2(a, b, amin, bmin, na, nb, table, lo, hi, qmin, qmax, count_low, out, d)
                    assert c == want[1]
                    np.testing.assert_array_equal(out, want[0])
        # off the table: each end of each operand, at a few positions
        for which, pos in ((0, n - 1), (1, 0), (0, kernels.ADD_BLOCK * 2 + 7), (1, n - 1)):
            for v in (amin - 1 if which == 0 else bmin - 1, (amin + na) if which == 0 else (bmin + nb),
                      int(info.min), int(info.max)):
                if not info.min <= v <= info.max:
                    continue
                x = (a if which == 0 else b).copy()
                x[pos] = v
                aa, bb = (x, b) if which == 0 else (a, x)
                want = _table2_numpy(aa, bb, amin, bmin, na, nb, table, -128, 127, -128, 127, True, np.int8)
                for on in (False, True):
                    with _serial(on):
                        c = kernels.table2(aa, bb, amin, bmin, na, nb, table, -128, 127, -128, 127, True,
                                           np.empty(n, np.int8))
                    assert (c is None) == (want is None), (adt, which, pos, v)
                    if want is not None:
                        assert c == want[1]


def test_add_layer_derived_tables_cached_per_clamp():
    """ops.add's layer caches the derived tables next to its table (attribute fast_table_out): the same object
    while clamp, output grid, count rule and dtype stay, made again when the clamp changes; results == reference."""
    from hwsim.compile import compile_model
    from hwsim.execute import _new_stats
    from hwsim.profile import load_profile
    from tests.nets import images, tiny_cnn

    qg = compile_model(tiny_cnn(seed=3), load_profile("int8-onnxruntime"), images(32, seed=5))
    lay = next(lay for lay in qg.layers if lay.op == "add")
    spec = ops.get("add")
    ga, gb = qg.grids[lay.inputs[0]], qg.grids[lay.inputs[1]]
    rng = np.random.default_rng(7)
    xa = rng.integers(ga.qmin, ga.qmax + 1, (2, 4, 3, 3)).astype(kernels.narrow_dtype(ga.qmin, ga.qmax))
    xb = rng.integers(gb.qmin, gb.qmax + 1, (2, 4, 3, 3)).astype(kernels.narrow_dtype(gb.qmin, gb.qmax))
    env = {lay.inputs[0]: xa, lay.inputs[1]: xb}
    seen = []
    for clamp in (lay.clamp, lay.clamp, (lay.clamp[0] + 7, lay.clamp[1])):
        lay.clamp = clamp
        y, c = spec.fused(qg, lay, xa, xb, True)
        seen.append(lay.fast_table_out[2])
        yr, cr = spec.execute(qg, lay, {k: v.astype(np.int64) for k, v in env.items()}, _new_stats(qg)[0],
                              "reference", 0, True)
        np.testing.assert_array_equal(y, yr)
        assert c == cr
    assert seen[0] is seen[1] and seen[2] is not seen[1]
