"""conv2d / linear accumulation: kernels == reference exactly, accumulator-model properties, boundaries."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim import fixedpoint as fp
from hwsim import kernels, ops
from hwsim.errors import HwsimError

ROWS = [1, 3, 4, 16, None]  # issue 2: 1, 3, 16, whole K; issue 10: 1, 4, 16, whole K
PBITS = [8, 12, 16, None]
ABITS = [16, 24, 32, None]
POL = ["wrap", "saturate"]
ACC_GRID = [ops.Accumulator(bits=a, overflow=ao, rows=r, partial_bits=p, partial_overflow=po)
            for r, p, a, ao, po in itertools.product(ROWS, PBITS, ABITS, POL, POL)
            if not (a is None and ao == "saturate") and not (p is None and po == "saturate")]


def _acc_id(a):
    return f"R{a.rows}-P{a.partial_bits}{a.partial_overflow[0]}-A{a.bits}{a.overflow[0]}"


def _operands(rng, n, m, k, wbits, xbits, x_signed=False):
    wlo, whi = fp.int_range(wbits, True)
    xlo, xhi = fp.int_range(xbits, x_signed)
    w = rng.integers(wlo, whi + 1, (m, k))
    x = rng.integers(xlo, xhi + 1, (n, k))
    x[0] = (xlo + xhi) // 2  # a row near the zero point: provably safe, takes the BLAS path
    x[-1, : k // 2] = xhi  # an extreme row
    return x, w, (xlo + xhi + 1) // 2


def _same(a, b):
    (va, sa), (vb, sb) = a, b
    np.testing.assert_array_equal(va, vb)
    assert (sa.partial_events, sa.acc_events) == (sb.partial_events, sb.acc_events)


@pytest.mark.parametrize("acc", ACC_GRID, ids=_acc_id)
def test_linear_fast_equals_reference_over_the_accumulator_grid(acc):
    rng = np.random.default_rng(abs(hash(_acc_id(acc))) % 2**32)
    for wbits, xbits in ((8, 8), (16, 12)):
        x, w, zx = _operands(rng, 4, 9, 40, wbits, xbits)
        b = rng.integers(-(2**20), 2**20, 9)
        zw = rng.integers(-3, 4, 9)
        kw = dict(x_zero_point=zx, w_zero_point=zw, acc=acc)
        _same(ops.linear(x, w, b, **kw), ops.linear(x, w, b, impl="reference", **kw))


CONV_CASES = [
    dict(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1, cin=3, cout=8, k=3),
    dict(stride=(2, 1), padding=(0, 2, 1, 0), dilation=(1, 1), groups=1, cin=4, cout=9, k=3),
    dict(stride=(1, 2), padding=(2, 2, 2, 2), dilation=(2, 1), groups=2, cin=4, cout=16, k=3),
    dict(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=6, cin=6, cout=6, k=3),  # depthwise
    dict(stride=(2, 2), padding=(1, 0, 1, 0), dilation=(1, 1), groups=4, cin=4, cout=8, k=2),  # depthwise x2
    dict(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, cin=5, cout=3, k=1),
]
CONV_ACCS = [ops.Accumulator(), ops.Accumulator(bits=None), ops.Accumulator(bits=16, overflow="wrap"),
             ops.Accumulator(bits=16, overflow="saturate", rows=1),
             ops.Accumulator(bits=18, overflow="saturate", rows=3, partial_bits=12, partial_overflow="wrap"),
             ops.Accumulator(bits=None, rows=16, partial_bits=14, partial_overflow="saturate"),
             ops.Accumulator(bits=24, overflow="wrap", rows=16, partial_bits=16)]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"s{c['stride']}p{c['padding']}d{c['dilation']}g{c['groups']}")
@pytest.mark.parametrize("acc", CONV_ACCS, ids=_acc_id)
def test_conv2d_fast_equals_reference(case, acc):
    rng = np.random.default_rng(7)
    c = case
    x = rng.integers(0, 256, (2, c["cin"], 7, 6))
    x[1, :, :3] = 128  # a region at the zero point
    w = rng.integers(-128, 128, (c["cout"], c["cin"] // c["groups"], c["k"], c["k"]))
    b = rng.integers(-(2**17), 2**17, c["cout"])
    kw = dict(x_zero_point=128, w_zero_point=rng.integers(-2, 3, c["cout"]), stride=c["stride"],
              padding=c["padding"], dilation=c["dilation"], groups=c["groups"], acc=acc)
    _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 12, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_bit_widths_and_zero_points(bits, symmetric):
    rng = np.random.default_rng(bits)
    lo, hi = fp.int_range(bits, True, narrow=symmetric)
    x = rng.integers(lo, hi + 1, (2, 3, 5, 5))
    w = rng.integers(lo, hi + 1, (4, 3, 3, 3))
    zx = 0 if symmetric else int(rng.integers(lo, hi + 1))
    zw = 0 if symmetric else rng.integers(lo // 2, hi // 2 + 1, 4)
    a_bits = max(8, 2 * bits + 2)  # narrow enough to overflow sometimes
    for acc in (ops.Accumulator(bits=a_bits, overflow="saturate", rows=4),
                ops.Accumulator(bits=a_bits, overflow="wrap", partial_bits=a_bits - 2, rows=9)):
        kw = dict(x_zero_point=zx, w_zero_point=zw, padding=1, acc=acc)
        _same(ops.conv2d(x, w, None, **kw), ops.conv2d(x, w, None, impl="reference", **kw))


def test_boundary_inputs_integer_extremes_and_powers_of_two():
    x = np.array([[-32768, 32767, -32768, 32767, 0, 1, -1, 255, 256, -2]] * 3)
    x[1] = 32767
    x[2] = -32768
    w = np.array([[-32768] * 10, [32767] * 10, [1, -1] * 5, [2**14 - 2, 2**14 + 2] * 5])
    biases = [np.array([2**15 - 2, 2**15 + 2, -(2**15) - 1, 2**23]), np.array([2**31 - 1, -(2**31), 2**31 + 2, 0]),
              np.array([-(2**40), 2**40, 3, -3])]
    for b in biases:
        for acc in (ops.Accumulator(bits=16, rows=2), ops.Accumulator(bits=32, overflow="wrap"),
                    ops.Accumulator(bits=24, rows=3, partial_bits=16, partial_overflow="wrap"),
                    ops.Accumulator(bits=None, rows=1, partial_bits=31), ops.Accumulator(bits=40)):
            _same(ops.linear(x, w, b, acc=acc), ops.linear(x, w, b, acc=acc, impl="reference"))


def test_reduction_longer_than_2_to_16():
    rng = np.random.default_rng(0)
    K = (1 << 16) + 4465
    x = rng.integers(-128, 128, (1, K))
    w = rng.integers(-128, 128, (2, K))
    w[1] = np.where(x[0] >= 0, 127, -128)  # every product positive: the running sum only grows
    for acc in (ops.Accumulator(bits=16, rows=16), ops.Accumulator(bits=32, overflow="wrap", rows=None),
                ops.Accumulator(bits=24, overflow="wrap", rows=64, partial_bits=16)):
        fast, ref = ops.linear(x, w, None, acc=acc), ops.linear(x, w, None, acc=acc, impl="reference")
        _same(fast, ref)
    exact = int((w[1].astype(object) * x[0].astype(object)).sum())
    out, st_ = ops.linear(x, w, None, acc=ops.Accumulator(bits=None))
    assert out[0, 1] == exact and exact > 2**24


PATHS = {"float32-screened": dict(RISKY_SWITCH=1.0), "float32-kernel": dict(RISKY_SWITCH=0.0),
         "float64-screened": dict(EXACT_F32=0, RISKY_SWITCH=1.0), "float64-kernel": dict(EXACT_F32=0, RISKY_SWITCH=0.0),
         "int64": dict(EXACT_F32=0, EXACT_F64=0)}


@pytest.mark.parametrize("path", list(PATHS))
def test_every_fast_path_matches_reference(path, monkeypatch):
    """Force each fast path: exact float32/float64 BLAS with per-position screening, the model kernel
    everywhere, and the int64 kernel (normally chosen only for huge bounds)."""
    for name, value in PATHS[path].items():
        monkeypatch.setattr(kernels, name, value)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 4, 6, 6))
    x[1] = 100 + rng.integers(-3, 4, (4, 6, 6))  # a sample whose positions are safe
    w = rng.integers(-128, 128, (8, 4, 3, 3))
    b = rng.integers(-5000, 5000, 8)
    for acc in (ops.Accumulator(), ops.Accumulator(bits=16, rows=4), ops.Accumulator(bits=17, overflow="wrap"),
                ops.Accumulator(bits=None, rows=9, partial_bits=13, partial_overflow="wrap"),
                ops.Accumulator(bits=20, rows=1, partial_bits=14)):
        for groups in (1, 2):
            kw = dict(x_zero_point=100, padding=1, acc=acc, groups=groups)
            ww = w[:, : 4 // groups]
            _same(ops.conv2d(x, ww, b, **kw), ops.conv2d(x, ww, b, impl="reference", **kw))
        xl, wl = x.reshape(3, -1)[:, :36], w.reshape(8, -1)
        _same(ops.linear(xl, wl, b, x_zero_point=100, acc=acc),
              ops.linear(xl, wl, b, x_zero_point=100, acc=acc, impl="reference"))


def _brute_force_in_range(x, w, b, zx, acc):
    """True iff, for every element, the exact running value after each chunk (and the bias) fits A and every chunk fits P."""
    d = (x[:, None, :] - zx) * w[None, :, :]  # [N, M, K] exact products
    K = d.shape[2]
    R = acc.rows or K
    ends = list(range(R, K, R)) + [K]
    starts = [0] + ends[:-1]
    chunks = np.stack([d[:, :, s:e].sum(axis=2) for s, e in zip(starts, ends)], axis=2)
    running = b[None, :, None] + np.cumsum(chunks, axis=2)
    ok = True
    if acc.bits is not None:
        lo, hi = fp.int_range(acc.bits)
        ok &= bool(((running >= lo) & (running <= hi)).all() and ((b >= lo) & (b <= hi)).all())
    if acc.partial_bits is not None:
        lo, hi = fp.int_range(acc.partial_bits)
        ok &= bool(((chunks >= lo) & (chunks <= hi)).all())
    return ok, b[None, :] + d.sum(axis=2)


acc_strategy = st.builds(ops.Accumulator, bits=st.sampled_from([None, 10, 12, 16, 20]),
                         overflow=st.sampled_from(POL), rows=st.sampled_from([None, 1, 2, 3, 5, 16]),
                         partial_bits=st.sampled_from([None, 8, 10, 14]), partial_overflow=st.sampled_from(POL))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(acc=acc_strategy, n=st.integers(1, 4), m=st.integers(1, 9), k=st.integers(1, 30),
       xbits=st.integers(2, 8), wbits=st.integers(2, 8), seed=st.integers(0, 2**16), bias_scale=st.sampled_from([0, 100, 5000]))
def test_accumulator_properties(acc, n, m, k, xbits, wbits, seed, bias_scale):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**xbits, (n, k))
    w = rng.integers(-(2 ** (wbits - 1)), 2 ** (wbits - 1), (m, k))
    b = rng.integers(-bias_scale, bias_scale + 1, m)
    zx = int(rng.integers(0, 2**xbits))
    out, st_ = ops.linear(x, w, b, x_zero_point=zx, acc=acc)
    in_range, exact = _brute_force_in_range(x, w, b, zx, acc)
    # events are zero exactly when every running value (and chunk) stays in range
    assert (st_.partial_events + st_.acc_events == 0) == in_range
    if acc.bits is not None:
        lo, hi = fp.int_range(acc.bits)
        assert out.min() >= lo and out.max() <= hi
    if acc.partial_bits is None and acc.bits is not None and acc.overflow == "wrap":
        np.testing.assert_array_equal(out, fp.wrap(exact, acc.bits))  # wrap is order independent
    if acc.partial_bits is None and acc.bits is None:
        np.testing.assert_array_equal(out, exact)
    if in_range:
        np.testing.assert_array_equal(out, exact)
    ref = ops.linear(x, w, b, x_zero_point=zx, acc=acc, impl="reference")
    _same((out, st_), ref)


def test_accumulator_and_op_errors():
    with pytest.raises(HwsimError, match="accumulator.bits"):
        ops.Accumulator(bits=1)
    with pytest.raises(HwsimError, match="accumulator.rows"):
        ops.Accumulator(rows=0)
    with pytest.raises(HwsimError, match="accumulator.overflow"):
        ops.Accumulator(overflow="clip")
    x = np.zeros((1, 4, 5, 5), np.int64)
    with pytest.raises(HwsimError, match="groups"):
        ops.conv2d(x, np.zeros((4, 3, 3, 3), np.int64), groups=2)
    with pytest.raises(HwsimError, match="larger than"):
        ops.conv2d(x, np.zeros((1, 4, 7, 7), np.int64))
    with pytest.raises(HwsimError, match="w_zero_point"):
        ops.conv2d(x, np.zeros((2, 4, 3, 3), np.int64), w_zero_point=[1, 2, 3])
    with pytest.raises(HwsimError, match="integer array"):
        ops.linear(np.full((1, 3), 0.5), np.zeros((2, 3), np.int64))
    with pytest.raises(HwsimError, match="impl"):
        ops.linear(np.zeros((1, 3), np.int64), np.zeros((2, 3), np.int64), impl="gpu")
    with pytest.raises(HwsimError, match="too large"):
        ops.linear(np.full((1, 4), 2**30), np.full((1, 4), 2**30), acc=ops.Accumulator(bits=16))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(acc=acc_strategy, g=st.sampled_from([1, 2, 3]), cin_g=st.integers(1, 3), mult=st.integers(1, 9),
       k=st.tuples(st.integers(1, 3), st.integers(1, 3)), s=st.tuples(st.integers(1, 2), st.integers(1, 3)),
       d=st.tuples(st.integers(1, 2), st.integers(1, 2)), pad=st.tuples(*[st.integers(0, 2)] * 4),
       seed=st.integers(0, 2**16))
def test_conv2d_geometry_property(acc, g, cin_g, mult, k, s, d, pad, seed):
    """Random geometry (groups, strides, dilation, asymmetric padding): fast == reference."""
    rng = np.random.default_rng(seed)
    H, W = 4 + rng.integers(0, 4), 4 + rng.integers(0, 4)
    if (H + pad[0] + pad[1] - d[0] * (k[0] - 1) - 1) < 0 or (W + pad[2] + pad[3] - d[1] * (k[1] - 1) - 1) < 0:
        return
    x = rng.integers(0, 16, (2, g * cin_g, H, W))
    w = rng.integers(-8, 8, (g * mult, cin_g, k[0], k[1]))
    b = rng.integers(-300, 300, g * mult)
    kw = dict(x_zero_point=int(rng.integers(0, 16)), w_zero_point=rng.integers(-1, 2, g * mult), stride=s,
              padding=pad, dilation=d, groups=g, acc=acc)
    _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))
