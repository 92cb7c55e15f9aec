"""Certificates vs brute force over every input of small grids; exact integers for huge reductions."""

import itertools

import numpy as np
import pytest

from hwsim import certify, ops
from hwsim.errors import HwsimError

CONFIGS = [ops.Accumulator(bits=a, overflow=o, rows=r, partial_bits=p, partial_overflow=po)
           for a, o, r, p, po in [(8, "saturate", None, None, "saturate"), (7, "wrap", 1, None, "saturate"),
                                  (9, "saturate", 2, 6, "wrap"), (10, "wrap", 1, 7, "saturate"),
                                  (None, "saturate", 2, 7, "saturate"), (6, "saturate", 3, 5, "saturate")]]


def _all_inputs(K, lo, hi):
    return np.array(list(itertools.product(range(lo, hi + 1), repeat=K)), dtype=np.int64)


def _brute_running(x, w, b, zx, zw, rows):
    """Exact running values after the bias and each chunk, and the chunk sums: [N, M, chunks]."""
    d = (x[:, None, :] - zx) * (w - zw[:, None])[None]
    K = d.shape[2]
    R = rows or K
    ends = list(range(R, K, R)) + [K]
    starts = [0] + ends[:-1]
    chunks = np.stack([d[:, :, s:e].sum(axis=2) for s, e in zip(starts, ends)], axis=2)
    run = np.concatenate([np.broadcast_to(b[None, :, None], (x.shape[0], w.shape[0], 1)),
                          b[None, :, None] + np.cumsum(chunks, axis=2)], axis=2)
    return run, chunks


@pytest.mark.parametrize("acc", CONFIGS, ids=lambda a: f"A{a.bits}{a.overflow[0]}-R{a.rows}-P{a.partial_bits}")
@pytest.mark.parametrize("grid", [(0, 7, 0), (-4, 3, 0), (0, 7, 3), (-3, 3, 0)], ids=lambda g: f"x{g[0]}..{g[1]}z{g[2]}")
def test_certificate_against_every_input(acc, grid):
    lo, hi, zx = grid
    X = _all_inputs(3, lo, hi)  # every input vector of a K = 3 layer on a 3-bit grid
    rng = np.random.default_rng(lo + 10 * hi + zx)
    seen = {True: 0, False: 0}
    for trial in range(12):
        M = 4
        w = rng.integers(-8, 8, (M, 3))
        zw = rng.integers(-1, 2, M) if trial % 3 == 0 else np.zeros(M, np.int64)
        b = rng.integers(-20, 21, M) * (trial % 4)
        cert = certify.certify_linear(w, b, zw, lo, hi, zx, acc)
        run, chunks = _brute_running(X, w, b, zx, zw, acc.rows)
        # tight worst cases equal the brute-force extremes, per channel
        assert cert.max_abs_acc == [int(np.abs(run[:, c]).max()) for c in range(M)]
        assert cert.acc_range == [(int(run[:, c].min()), int(run[:, c].max())) for c in range(M)]
        assert cert.max_abs_partial == [int(np.abs(chunks[:, c]).max()) for c in range(M)]
        assert all(l1 >= int(np.abs(run[:, c, -1]).max()) for c, l1 in enumerate(cert.l1_bound))
        if lo - zx == -(hi - zx):
            assert cert.l1_bound == [int(np.abs(run[:, c, -1]).max()) for c in range(M)]  # symmetric range: tight
        _, st = ops.linear(X, w, b, x_zero_point=zx, w_zero_point=zw, acc=acc)
        events = st.acc_events + st.partial_events
        assert cert.certified == (events == 0)  # certified: never; uncertified: brute force finds an input
        seen[cert.certified] += 1
        # the minimum widths are exactly the boundary
        a_min = cert.layer_min_acc_bits
        p_min = cert.layer_min_partial_bits
        at = ops.Accumulator(bits=max(a_min, 2), overflow=acc.overflow, rows=acc.rows, partial_bits=max(p_min, 2))
        assert ops.linear(X, w, b, x_zero_point=zx, w_zero_point=zw, acc=at)[1].acc_events == 0
        if a_min > 2:
            below = ops.Accumulator(bits=a_min - 1, overflow=acc.overflow, rows=acc.rows, partial_bits=None)
            assert ops.linear(X, w, b, x_zero_point=zx, w_zero_point=zw, acc=below)[1].acc_events > 0
            assert not certify.certify_linear(w, b, zw, lo, hi, zx, below).certified
        if acc.bits is not None:
            assert cert.headroom_bits == [acc.bits - m for m in cert.min_acc_bits]
    assert seen[True] + seen[False] == 12


def test_signed_bits_for():
    assert certify.signed_bits_for(-128, 127) == 8
    assert certify.signed_bits_for(-129, 0) == 9
    assert certify.signed_bits_for(0, 128) == 9
    assert certify.signed_bits_for(0, 0) == 1


def test_exact_for_reductions_beyond_2_to_20():
    K = (1 << 20) + 7
    w = np.full((1, K), 32767, dtype=np.int64)
    w[0, ::3] = -32768
    lo, hi = -(2**20), 2**20 - 1
    cert = certify.certify_linear(w, [3], -32768, lo, hi, 0, ops.Accumulator(bits=None, rows=1000))
    d = [int(v) + 32768 for v in w[0]]
    exact_hi = 3 + sum(max(v * lo, v * hi) for v in d)
    exact_lo = 3 + sum(min(v * lo, v * hi) for v in d)
    assert cert.acc_range[0] == (exact_lo, exact_hi)
    assert exact_hi > 2**53 and -exact_lo > 2**53  # beyond float64's integers
    assert cert.l1_bound[0] == 3 + sum(d) * 2**20
    assert cert.min_acc_bits[0] == max(exact_hi.bit_length() + 1, (-exact_lo - 1).bit_length() + 1)


def test_sums_beyond_int64_use_python_integers():
    w = np.full((2, 6), 2**31 - 1, dtype=np.int64)
    cert = certify.certify_linear(w, None, 0, -(2**31) + 1, 2**31 - 1, 0, ops.Accumulator(bits=64, rows=2))
    big = 6 * (2**31 - 1) ** 2
    assert cert.max_abs_acc == [big, big] and big > 2**63
    assert cert.min_acc_bits == [big.bit_length() + 1] * 2 and not cert.certified
    assert cert.max_abs_partial == [2 * (2**31 - 1) ** 2] * 2


def test_conv_certificate_flattens_in_canonical_order_and_covers_padding():
    rng = np.random.default_rng(0)
    w = rng.integers(-8, 8, (3, 2, 3, 3))
    acc = ops.Accumulator(bits=10, rows=4)
    c1 = certify.certify_conv2d(w, None, 0, 5, 9, 0, acc)  # zero point outside the reach: widened to contain it
    c2 = certify.certify_linear(w.reshape(3, -1), None, 0, 0, 9, 0, acc)
    assert c1.acc_range == c2.acc_range
    with pytest.raises(HwsimError, match="x_min"):
        certify.certify_linear(w.reshape(3, -1), None, 0, 9, 0, 0, acc)
    with pytest.raises(HwsimError, match="w_zero_point"):
        certify.certify_linear(w.reshape(3, -1), None, [1, 2], 0, 9, 0, acc)


def test_certified_conv_layer_never_overflows_on_random_inputs():
    rng = np.random.default_rng(1)
    w = rng.integers(-20, 20, (4, 3, 3, 3))
    b = rng.integers(-100, 100, 4)
    acc = ops.Accumulator(bits=16, rows=9, partial_bits=12)
    cert = certify.certify_conv2d(w, b, 0, 0, 15, 3, acc)
    x = rng.integers(0, 16, (4, 3, 8, 8))
    x[0] = 15
    _, st = ops.conv2d(x, w, b, x_zero_point=3, padding=1, acc=acc)
    assert cert.certified and st.acc_events == st.partial_events == 0
    out, _ = ops.conv2d(x, w, b, x_zero_point=3, padding=1, acc=ops.Accumulator(bits=None))
    assert np.abs(out).max() <= max(cert.max_abs_acc)
