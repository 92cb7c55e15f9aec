"""The VNNI kernel of order-dependent accumulators (hwsim.accumulate.vnni_chunks, hwsim.simd): fast == reference
bit for bit, events included, and each test shows the kernel ran (or did not, where it must not).

Runs where the CPU has AVX-512 VNNI (hwsim.simd.vnni()); elsewhere skipped, and tests/core/test_acc_chunks.py
covers the paths such a CPU takes (it runs them with HWSIM_VNNI=0 here too).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from hwsim import accumulate, kernels, ops, simd
from hwsim.simd import vadd, vbcast, vclamp, vcount_ne, vdp, vload, vsplat, vstore, vwrap

pytestmark = pytest.mark.skipif(not simd.vnni(), reason="no AVX-512 VNNI on this CPU")


def _same(a, b):
    (va, sa), (vb, sb) = a, b
    np.testing.assert_array_equal(va, vb)
    assert (sa.partial_events, sa.acc_events) == (sb.partial_events, sb.acc_events)


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls of accumulate.vnni_chunks (the driver reads it from the module)."""
    calls = {"n": 0}
    real = accumulate.vnni_chunks

    def counted(*a):
        calls["n"] += 1
        return real(*a)

    monkeypatch.setattr(accumulate, "vnni_chunks", counted)
    return calls


# ----------------------------------------------------------------------------- the intrinsics
@njit
def _ops(a, b, c, lo, hi, out):
    va, vb, vc = vload(a, 0), vload(b, 0), vload(c, 0)
    vstore(out, 0, vdp(va, vb, vc))
    vstore(out, 16, vclamp(va, vsplat(lo), vsplat(hi)))
    vstore(out, 32, vwrap(va, vsplat(-128), vsplat(255)))
    vstore(out, 48, vadd(va, vbcast(b, 3)))
    return vcount_ne(va, vclamp(va, vsplat(lo), vsplat(hi)))


def test_intrinsics_equal_numpy():
    """VPDPBUSD = acc + sum of four u8 x s8 products per lane (extreme bytes 0 / 255 x -128 / 127 included, the
    wrap at 32 bits), clamp, 8-bit wrap, broadcast and the changed-lane count, against int64 numpy."""
    rng = np.random.default_rng(0)
    for trial in range(50):
        a = rng.integers(-2**31, 2**31, 16).astype(np.int32) if trial % 2 else rng.integers(-300, 300, 16).astype(np.int32)
        bu = rng.choice(np.array([0, 1, 127, 128, 254, 255], np.uint8), 64) if trial < 10 else \
            rng.integers(0, 256, 64).astype(np.uint8)
        cs = rng.choice(np.array([-128, -127, -1, 0, 1, 127], np.int8), 64) if trial < 10 else \
            rng.integers(-128, 128, 64).astype(np.int8)
        lo, hi = sorted(int(v) for v in rng.integers(-400, 400, 2))
        out = np.empty(64, np.int32)
        n = _ops(a, bu.view(np.int32), cs.view(np.int32), lo, hi, out)
        dot = a.astype(np.int64) + (bu.astype(np.int64) * cs.astype(np.int64)).reshape(16, 4).sum(axis=1)
        np.testing.assert_array_equal(out[:16], ((dot + 2**31) % 2**32 - 2**31).astype(np.int32))
        np.testing.assert_array_equal(out[16:32], np.clip(a, lo, hi))
        np.testing.assert_array_equal(out[32:48], ((a.astype(np.int64) + 128) % 256 - 128).astype(np.int32))
        b32 = bu.view(np.int32)
        np.testing.assert_array_equal(out[48:], (a.astype(np.int64) + b32[3] + 2**31) % 2**32 - 2**31)
        assert n == int(np.count_nonzero(np.clip(a, lo, hi) != a))
    # signed x signed would differ: the operand order matters (u8 first)
    a = np.zeros(16, np.int32)
    bu = np.full(64, 200, np.uint8)
    cs = np.full(64, -3, np.int8)
    out = np.empty(64, np.int32)
    _ops(a, bu.view(np.int32), cs.view(np.int32), 0, 0, out)
    assert (out[:16] == 4 * 200 * -3).all() and 4 * (200 - 256) * -3 != 4 * 200 * -3


# ----------------------------------------------------------------------------- convs against the reference
VNNI_ACCS = ([ops.Accumulator(bits=a, overflow=o, rows=r) for a, o in ((12, "saturate"), (13, "wrap"), (16, "saturate"),
                                                                     (16, "wrap"), (20, "saturate"))
              for r in (2, 5, 8, 16, 24)]
             + [ops.Accumulator(bits=a, overflow=o, rows=r, partial_bits=p, partial_overflow=po)
                for a, o, p, po in ((16, "saturate", 12, "saturate"), (14, "wrap", 11, "wrap"), (None, "wrap", 12, "saturate"),
                                    (None, "wrap", 10, "wrap"), (32, "saturate", 13, "saturate"))
                for r in (5, 16, 24)])


def _acc_id(a):
    return f"A{a.bits}{a.overflow[0]}-R{a.rows}" + (f"-P{a.partial_bits}{a.partial_overflow[0]}" if a.partial_bits else "")


def _case(rng, n=3, cin=6, cout=21, k=3, h=7, w=6):
    x = rng.integers(0, 256, (n, cin, h, w))
    x[0, :, :3] = 255
    wt = rng.integers(-128, 128, (cout, cin, k, k))
    wt[1] = 127
    wt[2] = -128
    b = rng.integers(-3000, 3000, cout)
    b[0] = 5000  # outside a 12/13-bit accumulator: bias events
    return x, wt, b


@pytest.mark.parametrize("acc", VNNI_ACCS, ids=_acc_id)
def test_conv_equals_reference(acc, spy, threads):
    """K = 54 in chunks of 2 .. 24 (R not a multiple of 4, none dividing K), 21 channels (two 16-channel
    blocks, the second mostly padding), 3 x 4 x 3 positions (not a multiple of the 4-position tile), padding,
    stride, x_zero_point 3: VNNI == reference, and the same layer without VNNI == reference too."""
    x, w, b = _case(np.random.default_rng(acc.rows))
    kw = dict(x_zero_point=3, padding=(1, 0, 2, 1), stride=(2, 1), acc=acc)
    ref = ops.conv2d(x, w, b, impl="reference", **kw)
    fast = ops.conv2d(x, w, b, **kw)
    _same(fast, ref)
    assert spy["n"] > 0
    # the stages act: a plain sum, or the other policy of the stage that acts, would differ
    assert ref[1].acc_events + ref[1].partial_events > 0
    plain = ops.conv2d(x, w, b, impl="reference", x_zero_point=3, padding=(1, 0, 2, 1), stride=(2, 1))
    assert not np.array_equal(plain[0], ref[0])
    flip = {"saturate": "wrap", "wrap": "saturate"}
    if ref[1].partial_events:
        other = ops.Accumulator(bits=acc.bits, overflow=acc.overflow, rows=acc.rows, partial_bits=acc.partial_bits,
                                partial_overflow=flip[acc.partial_overflow])
    else:
        other = ops.Accumulator(bits=acc.bits, overflow=flip[acc.overflow], rows=acc.rows)
    assert not np.array_equal(ops.conv2d(x, w, b, impl="reference", **{**kw, "acc": other})[0], ref[0])


def test_off_switch_and_paths_it_does_not_take(spy, monkeypatch):
    """HWSIM_VNNI=0 turns it off; a stage over 30 bits (A or P), weights outside int8 and inputs spanning more
    than 256 values run the other paths (still == reference)."""
    x, w, b = _case(np.random.default_rng(1))
    base = ops.Accumulator(bits=16, overflow="saturate", rows=16)
    cases = [(base, x, w, "env"),
             (ops.Accumulator(bits=None, overflow="saturate", rows=16, partial_bits=31, partial_overflow="wrap"), x, w, ""),
             (ops.Accumulator(bits=31, overflow="saturate", rows=16), x, w, ""),
             (base, x, w * 2, ""),
             (base, x * 2, w, "")]
    for acc, xx, ww, env in cases:
        if env:
            monkeypatch.setenv("HWSIM_VNNI", "0")
        kw = dict(x_zero_point=0, padding=1, acc=acc)
        before = spy["n"]
        _same(ops.conv2d(xx, ww, b, **kw), ops.conv2d(xx, ww, b, impl="reference", **kw))
        assert spy["n"] == before, (acc, env)
        monkeypatch.delenv("HWSIM_VNNI", raising=False)
    kw = dict(x_zero_point=0, padding=1, acc=base)
    _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))
    assert spy["n"] > 0


@pytest.mark.parametrize("bits", [12, 16])
def test_saturation_exactly_at_the_limits(bits, spy, threads):
    """Running sums landing exactly on 2^(b-1) - 1 - {1, 0} and one past, on both sides: events only where the
    value leaves the range (batch 1: one position, the one-position tail of the kernel)."""
    hi = (1 << (bits - 1)) - 1
    K, M = 40, 12
    w = np.zeros((M, K, 1, 1), np.int64)
    w[:, :16] = 1
    w[:, 16:32] = -1
    x = np.zeros((1, K, 1, 1), np.int64)
    first = min(255 * 16, hi)
    x[0, :16, 0, 0] = first // 16
    x[0, :first % 16, 0, 0] += 1
    x[0, 16:32, 0, 0] = 255
    x[0, 32:, 0, 0] = 7
    b = np.array([hi - first - 1 + m for m in range(M)])
    b[6:] = -b[6:] - 2 * first - 10
    acc = ops.Accumulator(bits=bits, overflow="saturate", rows=16)
    fast = ops.conv2d(x, w, b, x_zero_point=0, acc=acc)
    _same(fast, ops.conv2d(x, w, b, x_zero_point=0, acc=acc, impl="reference"))
    assert spy["n"] > 0 and fast[1].acc_events > 0
    assert (fast[0] == hi).any() or (fast[0] == -hi - 1).any()


def test_linear_and_deep_layers_split_channels(spy, threads, monkeypatch):
    """A linear layer (one position per sample) and a deep conv (few positions, 512 channels): the channels
    are split in 16-channel blocks over the workers; events and integers as the reference."""
    rng = np.random.default_rng(3)
    acc = ops.Accumulator(bits=16, overflow="saturate", rows=16)
    x = rng.integers(-128, 128, (5, 300))
    w = rng.integers(-128, 128, (70, 300))
    b = rng.integers(-500, 500, 70)
    kw = dict(x_zero_point=0, acc=acc)
    _same(ops.linear(x, w, b, **kw), ops.linear(x, w, b, impl="reference", **kw))
    assert spy["n"] > 0
    xc = rng.integers(0, 256, (2, 64, 2, 2))
    wc = rng.integers(-128, 128, (512, 64, 3, 3))
    kw = dict(x_zero_point=128, padding=1, acc=acc)
    n = spy["n"]
    _same(ops.conv2d(xc, wc, None, **kw), ops.conv2d(xc, wc, None, impl="reference", **kw))
    assert spy["n"] - n >= (2 * threads if threads > 1 else 1)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.data())
def test_property(data):
    """Random shapes, chunk sizes, widths, policies, zero points, padding, stride and thread counts."""
    d = data.draw
    acc = ops.Accumulator(bits=d(st.sampled_from([None, 9, 11, 14, 16, 20, 30])),
                          overflow=d(st.sampled_from(["wrap", "saturate"])), rows=d(st.sampled_from([2, 3, 4, 7, 8, 16, 32])),
                          partial_bits=d(st.sampled_from([None, None, 8, 10, 13, 16])),
                          partial_overflow=d(st.sampled_from(["wrap", "saturate"])))
    if acc.bits is None and acc.partial_bits is None:
        return
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    n, cin, cout, k = d(st.integers(1, 5)), d(st.integers(1, 9)), d(st.integers(1, 40)), d(st.sampled_from([1, 2, 3]))
    zx = d(st.sampled_from([0, 3, 128, 255]))
    x = rng.integers(0, 256, (n, cin, d(st.integers(3, 7)), d(st.integers(3, 6))))
    w = rng.integers(-128, 128, (cout, cin, k, k))
    b = rng.integers(-(2**14), 2**14, cout) if d(st.booleans()) else None
    kw = dict(x_zero_point=zx, w_zero_point=rng.integers(-2, 3, cout) if d(st.booleans()) else 0,
              padding=d(st.sampled_from([0, 1, (0, 2, 1, 0)])), stride=d(st.sampled_from([1, 2])), acc=acc)
    prev = kernels.numba.get_num_threads()
    kernels.set_threads(d(st.sampled_from([1, 2])))
    try:
        _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))
    finally:
        kernels.set_threads(prev)


# ----------------------------------------------------------------------------- whole networks: the fused route
@pytest.mark.parametrize("bs,threads_", [(5, 1), (5, 2), (1, 2), (2, 2)])
def test_network_fused_route_equals_reference(bs, threads_, monkeypatch):
    """int8-acc16-sat on a 20-channel tiny CNN (3x3 conv of 9 products: one chunk; 1x1 conv and linear of 20:
    two chunks): ops.mac's fused route (accumulate.run_vnni_fused: the VNNI kernel + the fused epilogue, narrow
    output, layers split over the batch workers) == the reference executor, logits and every counter; and the
    same with HWSIM_VNNI=0 (the general path), where the route is not taken."""
    from hwsim.compile import compile_model
    from hwsim.execute import run_quantized
    from hwsim.profile import load_profile
    from tests.nets import images, tiny_cnn

    qg = compile_model(tiny_cnn(seed=3, channels=20), load_profile("int8-acc16-sat"), images(32, seed=5))
    x = images(5, seed=4)
    x[0] *= 6  # large inputs: the accumulators saturate
    ref = run_quantized(qg, x, batch_size=5, impl="reference")
    assert sum(s.acc_events for s in ref.layers) > 0
    calls = {"n": 0}
    real = accumulate.run_vnni_fused

    def counted(*a):
        got = real(*a)
        calls["n"] += got is not None
        return got

    monkeypatch.setattr(accumulate, "run_vnni_fused", counted)
    prev = kernels.numba.get_num_threads()
    try:
        kernels.set_threads(threads_)
        for env, routed in (("1", True), ("0", False)):
            monkeypatch.setenv("HWSIM_VNNI", env)
            calls["n"] = 0
            got = run_quantized(qg, x, batch_size=bs, threads=threads_)
            np.testing.assert_array_equal(got.logits, ref.logits)
            assert [s.to_json() for s in got.layers] == [s.to_json() for s in ref.layers]
            assert (calls["n"] >= 3 * -(-5 // bs)) if routed else calls["n"] == 0
    finally:
        kernels.set_threads(prev)
