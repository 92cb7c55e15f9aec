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
