"""Session 6 fast paths (#18), each bit-identical to the reference and shown to be the path taken:
int32 accumulators out of an exact plan, narrow activation codes read as they are, the im2col / padding
kernels at width dilation, the depthwise kernel and the vectorised float32 epilogue, and the input
quantizer kernel."""

import numpy as np
import pytest

from hwsim import kernels, ops

HAS_INT_MM = kernels.int_mm() is not None
needs_int_mm = pytest.mark.skipif(not HAS_INT_MM, reason="torch._int_mm not available")


def _same_values(fast, ref):
    (vf, sf), (vr, sr) = fast, ref
    np.testing.assert_array_equal(vf, vr)
    assert vr.dtype == np.int64
    assert (sf.partial_events, sf.acc_events) == (sr.partial_events, sr.acc_events)


@needs_int_mm
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_conv_accumulators_int32_where_the_plan_proves_it(dtype):
    """An exact int8-GEMM conv returns int32 accumulators (|acc| < 2^31 proven), from any integer code dtype,
    equal to the reference (int64); the same conv under a 16-bit saturating accumulator stays int64."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 16, 7, 9)).astype(dtype)
    x[0, 0, 0, :2] = (0, 255)
    w = rng.integers(-128, 128, (24, 16, 3, 3))
    b = rng.integers(-(2**24), 2**24, 24)
    for dil in ((1, 1), (1, 2), (2, 3)):  # width dilation > 1: im2col's per-tap runs
        kw = dict(x_zero_point=128, padding=(1, 2, 2, 1), dilation=dil, stride=(1, 2), acc=ops.Accumulator(bits=32))
        fast = ops.conv2d(x, w, b, **kw)
        assert fast[0].dtype == np.int32
        _same_values(fast, ops.conv2d(x.astype(np.int64), w, b, impl="reference", **kw))
    kw["acc"] = ops.Accumulator(bits=16, rows=8)
    fast = ops.conv2d(x, w, b, **kw)
    assert fast[0].dtype == np.int64 and fast[1].acc_events > 0
    _same_values(fast, ops.conv2d(x, w, b, impl="reference", **kw))


@needs_int_mm
def test_int32_accumulators_at_the_limit():
    """acc_max = 2^31 - 1: int32 out holding the extreme value exactly; acc_max = 2^31 (a 48-bit
    accumulator, still exact): int64 out. Both equal the reference."""
    x = np.array([[255, 255], [0, 0], [255, 0]], np.uint8)
    w = np.array([[1, 1], [-1, -1]])
    acc = ops.Accumulator(bits=48)
    for bias, dt in (([2**31 - 1 - 510, -(2**31) + 511], np.int32), ([2**31 - 510, -(2**31) + 511], np.int64)):
        b = np.array(bias)
        plan = kernels.linear_plan(w, b, 0, np.zeros(2, np.int64), acc, 0, 255)
        assert plan.gemm is not None and kernels.acc_dtype(plan.gemm.acc_max) == dt
        fast = ops.linear(x, w, b, acc=acc)
        assert fast[0].dtype == dt
        _same_values(fast, ops.linear(x, w, b, acc=acc, impl="reference"))
        assert fast[0].max() == int(bias[0]) + 510 and fast[0].min() == -(2**31) + 1  # the extremes, exactly


def test_depthwise_accumulators_int32():
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (2, 5, 8, 8)).astype(np.int8)
    w = rng.integers(-127, 128, (5, 1, 3, 3))
    kw = dict(x_zero_point=-3, padding=1, groups=5, acc=ops.Accumulator(bits=32))
    fast = ops.conv2d(x, w, None, **kw)
    assert fast[0].dtype == np.int32
    _same_values(fast, ops.conv2d(x, w, None, impl="reference", **kw))


def test_narrow_codes_on_the_general_path():
    """Codes kept narrow (uint8) reach the model kernels / float BLAS widened: x - z_x is not wrapped in uint8."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (2, 4, 6, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, (6, 4, 3, 3))
    for acc in (ops.Accumulator(bits=16, rows=4), ops.Accumulator(bits=None)):
        kw = dict(x_zero_point=200, padding=1, acc=acc)
        _same_values(ops.conv2d(x, w, None, **kw), ops.conv2d(x, w, None, impl="reference", **kw))
        xl = x.reshape(2, -1)
        wl = rng.integers(-128, 128, (6, xl.shape[1]))
        _same_values(ops.linear(xl, wl, None, x_zero_point=200, acc=acc),
                     ops.linear(xl, wl, None, x_zero_point=200, acc=acc, impl="reference"))


def test_requantize_accepts_int32_accumulators():
    """The requant of int32 accumulators (the fast path's) == that of the same values in int64, every mode."""
    rng = np.random.default_rng(6)
    acc = rng.integers(-(2**31), 2**31, (3, 4, 50))
    acc[0, 0, :2] = (-(2**31), 2**31 - 1)
    for cfg in (ops.Requant(mode="float32"), ops.Requant(mode="fixed"), ops.Requant(mode="pow2"),
                ops.Requant(mode="fixed", multiplier_bits=15, fixed_rounding="single")):
        scales = (2.0**-3, [2.0**-9, 2.0**-7, 2.0**-12, 2.0**-5], 0.5) if cfg.mode == "pow2" else \
            (0.02, [0.001, 0.002, 0.0003, 0.004], 0.5)
        params = ops.make_requant_params(*scales, cfg)
        want = ops.requantize(acc, params, cfg, 3, -128, 127)
        got = ops.requantize(acc.astype(np.int32), params, cfg, 3, -128, 127)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1]
        y = ops.core._requantize_fast(acc.astype(np.int32), params, cfg, 3, 1, None)
        np.testing.assert_array_equal(y, ops.core._requantize_fast(acc, params, cfg, 3, 1, None))


# ----------------------------------------------------------------------------- float32 epilogue in 32-bit lanes
F32_CFGS = [ops.Requant(mode="float32", rounding=m, zero_point=z, multiplier_order=o)
            for m in ("half_even", "half_away", "half_up", "floor", "trunc") for z in ("after", "before")
            for o in ("sequential", "fused")]


@pytest.mark.parametrize("cfg", F32_CFGS, ids=lambda c: f"{c.rounding}-{c.zero_point}-{c.multiplier_order}")
@pytest.mark.parametrize("scales", [(0.5, [1.0], 1.0), (0.02, [0.25, 0.5, 0.125, 1.0, 0.75], 0.01),
                                    (0.0173, [0.0031, 0.012, 0.0007, 0.02, 0.0099], 0.211),
                                    (2.0, [3.0, 1.5, 4.0, 1.25, 2.5], 0.5)])
def test_float32_epilogue_lanes32_equals_reference(cfg, scales):
    """The float32 epilogue in 32-bit lanes (taken where |acc| < 2^31 is proven) == the reference requant + clamp +
    count: accumulators at +-(2^31 - 1), exact halves, adds beyond int32 (int32(ct + add) wraps to acc)."""
    rng = np.random.default_rng(9)
    M, nb, L = 5, 3, 37
    add = np.array([0, -1, 2**31 + 5, -(2**31) - 7, 2**20], np.int64)
    acc = rng.integers(-(2**31) + 1, 2**31, (M, nb * L), dtype=np.int64)
    acc[:, :L] = rng.integers(-300, 300, (M, L))  # exact halves under the power-of-two multipliers
    acc[:, L:L + 40 // 2] = rng.integers(-(2**25), 2**25, (M, 20))
    acc[:, -2:] = (-(2**31) + 1, 2**31 - 1)
    ct = np.empty((M, nb * L), np.int32)
    for m in range(M):  # int32 GEMM results whose sum with add[m] is acc (each |ct| < 2^31)
        ct[m] = np.clip(acc[m] - add[m], -(2**31), 2**31 - 1)
    acc = ct.astype(np.int64) + add[:, None]
    assert np.abs(acc).max() < 2**31
    acc3 = acc.reshape(M, nb, L).transpose(1, 0, 2)
    sx, sw, sy = scales
    swv = np.array(sw * (M if len(sw) == 1 else 1))[:M]
    variants = [ops.make_requant_params(sx, swv, sy, cfg),
                ops.make_requant_params(sx, swv, sy, cfg, bias=rng.normal(0, 3, M)),
                ops.core.make_onednn_requant_params(sx, swv, sy, bias=rng.normal(0, 3, M))]
    for p in variants:
        for zy, (lo, hi), (qmin, qmax), count_low, dt in ((-128, (-128, 127), (-128, 127), True, np.int8),
                                                          (3, (3, 127), (-128, 127), False, np.int8),
                                                          (0, (0, 255), (0, 255), True, np.uint8),
                                                          (255, (0, 255), (0, 255), True, np.int32)):
            y, _ = ops.requantize(acc3, p, cfg, zy, -(2**62), 2**62, channel_axis=1, impl="reference")
            want = np.clip(y, lo, hi)
            count = int(np.count_nonzero(y > qmax)) + (int(np.count_nonzero(y < qmin)) if count_low else 0)
            epi = ops.core.fused_epilogue(p, cfg, zy, lo, hi, qmin, qmax, count_low, M, int(np.abs(acc).max()))
            assert epi.lanes32
            out = np.empty((nb, M, L), dt)
            got = epi.run(ct, 0, add, out)
            np.testing.assert_array_equal(out, want)
            assert got == count
    assert not ops.core.fused_epilogue(variants[0], cfg, 0, 0, 255, 0, 255, True, M, 2**31).lanes32


@pytest.mark.parametrize("cfg", F32_CFGS[::3], ids=lambda c: f"{c.rounding}-{c.zero_point}-{c.multiplier_order}")
def test_float32_epilogue_lanes32_counts_rows_with_and_without_clips(cfg):
    """The 32-bit-lane epilogue flags a row with a clipped value and counts only such rows (kernels._epi_f32_lanes):
    rows that clip nowhere, once above qmax, once below qmin (counted or not: count_low), at both ends, everywhere,
    and values at the bounds themselves (no clip) == the reference requant + clamp + count, row by row."""
    M, nb, L = 3, 8, 41
    rng = np.random.default_rng(12)
    sx, sw, sy = 0.5, np.array([1.0, 0.5, 0.25]), 1.0  # multipliers 0.5, 0.25, 0.125: exact
    p = ops.make_requant_params(sx, sw, sy, cfg)
    mult = sx * sw / sy
    add = np.zeros(M, np.int64)
    for zy, (lo, hi), (qmin, qmax), count_low, dt in ((-128, (-128, 127), (-128, 127), True, np.int8),
                                                      (-128, (-128, 127), (-128, 127), False, np.int8),
                                                      (0, (0, 255), (0, 255), True, np.uint8),
                                                      (3, (3, 127), (-128, 127), False, np.int8)):
        acc = np.empty((M, nb, L), np.int64)
        for m in range(M):
            inside = np.floor(np.array([qmin - zy + 1, qmax - zy - 1]) / mult[m]).astype(np.int64)
            acc[m] = rng.integers(inside[0], inside[1], (nb, L))  # row 0: no clip anywhere
            top, bottom = int((qmax - zy + 4) / mult[m]), int((qmin - zy - 4) / mult[m])
            acc[m, 1, 7] = top  # one value above qmax
            acc[m, 2, 0] = bottom  # one below qmin (counted only with count_low)
            acc[m, 3, [0, L - 1]] = (bottom, top)  # both ends of the row
            acc[m, 4] = top  # every value
            acc[m, 5, :3] = np.array([qmax - zy, qmin - zy, 0]) / mult[m]  # exactly at the bounds: no clip
            acc[m, 6, -1] = top * 1000  # far above
        ct = acc.reshape(M, nb * L).astype(np.int32)
        y, _ = ops.requantize(acc.transpose(1, 0, 2), p, cfg, zy, -(2**62), 2**62, channel_axis=1,
                              impl="reference")
        epi = ops.core.fused_epilogue(p, cfg, zy, lo, hi, qmin, qmax, count_low, M, int(np.abs(acc).max()))
        assert epi.lanes32
        out = np.empty((nb, M, L), dt)
        got = epi.run(ct, 0, add, out)
        np.testing.assert_array_equal(out, np.clip(y, lo, hi))
        high, low = y > qmax, y < qmin
        assert got == int(high.sum()) + (int(low.sum()) if count_low else 0)
        assert not (high | low)[0].any() and high[1].any() and low[2].any()  # the rows are what they claim
        for i in range(nb):  # each row alone (n0 = its place in out): its own count
            one = np.empty((1, M, L), dt)
            c = epi.run(np.ascontiguousarray(acc[:, i].astype(np.int32)), 0, add, one)
            assert c == int(high[i].sum()) + (int(low[i].sum()) if count_low else 0)
            np.testing.assert_array_equal(one[0], out[i])


# ----------------------------------------------------------------------------- PyTorch's input quantizer
def _torch_quantize_numpy(x, scale, zp, qmin, qmax):
    """compile.TorchQuantizeGrid.quantize's numpy form (before the kernel): the reference."""
    from hwsim.compile import fma_f32

    x = np.asarray(x, np.float32)
    inv = np.float32(1.0) / np.float32(scale)
    q = np.rint(fma_f32(x, inv, np.float32(zp))).astype(np.int64)
    return np.clip(q, qmin, qmax)


@pytest.mark.parametrize("scale, zp, qmin, qmax", [(0.0173, 128, 0, 255), (0.1, -3, -128, 127),
                                                   (2.0**-7, 0, -128, 127), (3.1e-5, 77, 0, 255)])
def test_torch_input_quantizer_kernel_equals_numpy(scale, zp, qmin, qmax):
    """kernels.quantize_fma (one numba pass) == the numpy FMA emulation on random inputs, on the halfway points
    of x * fl32(1/s) + z (where fl32(fl64(.)) double-rounds), at the clip ends and on non-finite / huge inputs;
    parallel and serial. The FMA's single rounding matters here: the two-rounding form differs."""
    from hwsim import kernels
    from hwsim.compile import TorchQuantizeGrid

    rng = np.random.default_rng(12)
    inv = np.float32(1.0) / np.float32(scale)
    k = rng.integers(-400, 400, 20000)
    halves = ((k + 0.5 - zp) / np.float64(inv)).astype(np.float32)  # near exact .5 after the FMA
    nb = np.concatenate([np.nextafter(halves, np.float32(np.inf)), np.nextafter(halves, np.float32(-np.inf))])
    x = np.concatenate([rng.normal(0, 3, 50000).astype(np.float32) * np.float32(scale * 60), halves, nb,
                        np.array([np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-45, -0.0, 0.0], np.float32)])
    want = _torch_quantize_numpy(x, scale, zp, qmin, qmax)
    two_roundings = np.clip(np.rint((x * inv).astype(np.float32) + np.float32(zp)).astype(np.int64), qmin, qmax)
    if scale != 2.0**-7:  # (a power-of-two scale multiplies exactly: one rounding either way)
        assert (two_roundings != want).sum() > 0  # the neighbouring form (multiply, round, add) is not it
    grid = TorchQuantizeGrid(scale, zp, qmin, qmax, 8, qmin < 0)
    for on in (False, True):
        with kernels.serial_mode(on):
            got = grid.quantize(x.reshape(2, -1) if x.size % 2 == 0 else x)
            np.testing.assert_array_equal(got.reshape(-1), want)
            assert got.dtype == np.int64
    np.testing.assert_array_equal(grid.quantize(x.astype(np.float64)), want)  # float64 in: rounded to float32 first


def test_depthwise_int64_taps_where_int32_cannot_hold_them():
    """Weights so large that a partial sum of the taps may pass 2^31: the depthwise kernel runs in int64 (exact
    plan, unbounded accumulator) and returns int64 accumulators, equal to the reference."""
    rng = np.random.default_rng(13)
    x = rng.integers(0, 256, (2, 3, 7, 6)).astype(np.uint8)
    w = rng.integers(-(2**22), 2**22, (3, 1, 3, 3))
    w[0] = 2**22  # 9 * 2^22 * 255 > 2^31
    kw = dict(x_zero_point=0, padding=(1, 0, 2, 1), stride=(2, 1), groups=3, acc=ops.Accumulator(bits=None))
    plan = kernels.conv_plan(w, None, 0, np.zeros(3, np.int64), (2, 1), (1, 0, 2, 1), (1, 1), 3,
                             ops.Accumulator(bits=None), 0, 255)
    assert plan.depthwise is not None and plan.depthwise.sum_max >= 2**31
    fast = ops.conv2d(x, w, None, **kw)
    assert fast[0].dtype == np.int64 and np.abs(fast[0]).max() >= 2**31
    _same_values(fast, ops.conv2d(x, w, None, impl="reference", **kw))
