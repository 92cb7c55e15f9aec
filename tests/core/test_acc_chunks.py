"""The order-dependent accumulator paths (hwsim.accumulate): fast == reference bit for bit, events included.

Every position of a conv group through the MAC-array model, its chunk sums from int8 GEMMs
(torch._int_mm, int64 or float32 stage), exact int8 blocks screened per element for short chunks
(R < 8, R = 1: saturation after every MAC), BLAS float32 chunk sums without torch, or the integer
model kernel (operands too wide for either); each test checks the path it means was taken.
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hwsim import accumulate, kernels, ops


def _same(a, b):
    (va, sa), (vb, sb) = a, b
    np.testing.assert_array_equal(va, vb)
    assert (sa.partial_events, sa.acc_events) == (sb.partial_events, sb.acc_events)


def _spy(monkeypatch, module, names):
    calls = {n: 0 for n in names}
    for n in names:
        real = getattr(module, n)

        def spy(*a, _real=real, _n=n, **k):
            calls[_n] += 1
            return _real(*a, **k)

        monkeypatch.setattr(module, n, spy)
    return calls


@pytest.fixture(autouse=True)
def no_vnni(monkeypatch):
    """The paths of this file, as on a CPU without AVX-512 VNNI: tests/core/test_vnni.py covers that kernel."""
    monkeypatch.setenv("HWSIM_VNNI", "0")


@pytest.fixture
def no_int_mm(monkeypatch):
    monkeypatch.setattr(kernels, "_INT_MM", False)  # as without torch: the float32 fused kernel runs


def _conv_case(rng, n=2, cin=6, cout=16, k=3, xhi=256):
    x = rng.integers(0, xhi, (n, cin, 7, 7))
    x[0, :, :3] = xhi - 1  # the largest inputs
    w = rng.integers(-128, 128, (cout, cin, k, k))
    w[1] = 127
    b = rng.integers(-3000, 3000, cout)
    b[0] = 5000  # a bias outside a 12/13-bit accumulator: bias events
    return x, w, b


CHUNK_ACCS = [ops.Accumulator(bits=a, overflow=ao, rows=r, partial_bits=p, partial_overflow=po)
              for a, ao in ((12, "saturate"), (13, "wrap"), (16, "saturate"), (None, "wrap"))
              for r in (8, 16, 24) for p, po in ((None, "saturate"), (10, "wrap"), (11, "saturate"))
              if not (a is None and p is None)]


def _acc_id(a):
    return f"A{a.bits}{a.overflow[0]}-R{a.rows}-P{a.partial_bits}{a.partial_overflow[0]}"


@pytest.mark.parametrize("acc", CHUNK_ACCS, ids=_acc_id)
def test_int8_chunk_gemms_equal_reference(acc, monkeypatch):
    """K = 54 in chunks of 8 / 16 / 24 (none divides it), padding, stride, bias events: int8 chunk GEMMs."""
    if kernels.int_mm() is None:
        pytest.skip("torch._int_mm unavailable")
    calls = _spy(monkeypatch, accumulate, ["chunk_stage_i64", "chunk_stage_f32"])
    x, w, b = _conv_case(np.random.default_rng(9))
    kw = dict(x_zero_point=0, padding=(1, 0, 2, 1), stride=(1, 2), acc=acc)
    _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))
    assert calls["chunk_stage_i64"] + calls["chunk_stage_f32"] > 0
    if acc.partial_bits is None and acc.overflow == "saturate":
        assert calls["chunk_stage_f32"] > 0  # the float32 stage is exact for these widths
    else:
        assert calls["chunk_stage_f32"] == 0


@pytest.mark.parametrize("acc", CHUNK_ACCS, ids=_acc_id)
@pytest.mark.parametrize("path", ["fused", "blas"])
def test_float32_chunk_sums_without_int_mm_equal_reference(acc, path, no_int_mm, monkeypatch):
    """Without torch._int_mm: the fused float32 kernel for chunks of <= 16 into a saturating accumulator
    without a P stage, the BLAS chunk sums and the float32 chunk-level model for the rest, or for all with
    the fused kernel switched off."""
    if path == "blas":
        monkeypatch.setattr(accumulate, "FUSED", False)
    blas = _spy(monkeypatch, kernels, ["accumulate_chunks_f32"])
    fused = _spy(monkeypatch, accumulate, ["fused_chunks_f32"])
    x, w, b = _conv_case(np.random.default_rng(9))
    kw = dict(x_zero_point=0, padding=(1, 0, 2, 1), stride=(1, 2), acc=acc)
    _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))
    takes = path == "fused" and acc.overflow == "saturate" and acc.partial_bits is None and acc.rows <= 16
    assert (fused["fused_chunks_f32"] > 0, blas["accumulate_chunks_f32"] > 0) == (takes, not takes)


SHORT_ACCS = [ops.Accumulator(bits=a, overflow=ao, rows=r, partial_bits=p, partial_overflow=po)
              for r in (1, 2, 3) for a, ao in ((10, "saturate"), (11, "wrap"), (None, "wrap"))
              for p, po in ((None, "saturate"), (7, "saturate"), (8, "wrap"))
              if not (a is None and p is None) and not (r == 1 and p is not None)]


@pytest.mark.parametrize("acc", SHORT_ACCS, ids=_acc_id)
@pytest.mark.parametrize("spread", ["few", "many"])
def test_int8_blocks_equal_reference(acc, spread, monkeypatch):
    """Short chunks (R = 1, 2, 3; K = 144, not a multiple of the 64-product block): the exact block sums
    where the bound allows, the sequential model element by element ("few" channels near the limits)
    or vectorized over the channels of a position ("many"); then the same layer with the first-sample
    switch forced to the caller's model kernel."""
    if kernels.int_mm() is None:
        pytest.skip("torch._int_mm unavailable")
    rng = np.random.default_rng(11)
    x = rng.integers(0, 16, (3, 16, 5, 5))  # 4-bit activations, z_x = 8
    w = rng.integers(-8, 8, (16, 16, 3, 3))
    if spread == "many":
        w[:12] = rng.integers(5, 8, (12, 16, 3, 3))
        x[:, :, :2] = 15
    else:
        w[0] = 7  # one channel far out
        x[1] = 8 + rng.integers(-1, 2, (16, 5, 5))  # a sample near the zero point: every block safe
    b = rng.integers(-200, 200, 16)
    b[3] = 600  # a bias outside a 10-bit accumulator
    kw = dict(x_zero_point=8, padding=(1, 1, 0, 2), stride=(2, 1), acc=acc)
    ref = ops.conv2d(x, w, b, impl="reference", **kw)
    monkeypatch.setattr(accumulate, "BLOCK_SWITCH", 1.0)
    calls = _spy(monkeypatch, accumulate, ["block_stage"])
    _same(ops.conv2d(x, w, b, **kw), ref)
    assert calls["block_stage"] > 0
    monkeypatch.setattr(accumulate, "BLOCK_SWITCH", -1.0)
    calls = _spy(monkeypatch, kernels, ["_run_kernel"])
    _same(ops.conv2d(x, w, b, **kw), ref)
    assert calls["_run_kernel"] > 0


def test_wide_activations_fall_back_to_the_integer_model(monkeypatch):
    """int8 weights but 12-bit activations (x - z_x leaves int8) in chunks of 64 (float32 not exact):
    the chunked path hands over to the integer model kernel on every position."""
    if kernels.int_mm() is None:
        pytest.skip("torch._int_mm unavailable")
    calls = _spy(monkeypatch, kernels, ["_run_kernel", "_run_chunked"])
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4096, (2, 16, 5, 5))
    w = rng.integers(-128, 128, (9, 16, 3, 3))
    b = rng.integers(-(2**20), 2**20, 9)
    acc = ops.Accumulator(bits=24, overflow="saturate", rows=64, partial_bits=20, partial_overflow="saturate")
    kw = dict(x_zero_point=2048, padding=1, acc=acc)
    _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))
    assert calls["_run_chunked"] > 0 and calls["_run_kernel"] > 0


@pytest.mark.parametrize("path", ["int8", "fused", "float32", "int8-R1"])
@pytest.mark.parametrize("bits", [12, 16])
def test_saturation_exactly_at_the_limits(path, bits, monkeypatch, threads):
    """Running sums that land exactly on +-(2^(b-1)) - {0, 1} and one past: events only where the value
    leaves the range; batch 1 and threads 1 / 2; the int8 chunk GEMMs, the fused float32 kernel, the BLAS
    float32 chunk sums, the int8 blocks of R = 1."""
    if path in ("fused", "float32"):
        monkeypatch.setattr(kernels, "_INT_MM", False)
        monkeypatch.setattr(accumulate, "FUSED", path == "fused")
    elif kernels.int_mm() is None:
        pytest.skip("torch._int_mm unavailable")
    hi = (1 << (bits - 1)) - 1
    K, M, R = 40, 12, 1 if path == "int8-R1" else 16  # chunks 16, 16, 8 (or every MAC)
    w = np.zeros((M, K, 1, 1), np.int64)
    w[:, :16] = 1  # first chunk: sum of x[0:16]
    w[:, 16:32] = -1  # second chunk: minus the sum of x[16:32]
    x = np.zeros((1, K, 1, 1), np.int64)
    xhi = 127 if path == "int8-R1" else 255  # the short-chunk path takes |x - z_x| <= 127
    first = min(xhi * 16, hi)
    x[0, :16, 0, 0] = first // 16
    x[0, :first % 16, 0, 0] += 1  # sum of the first 16 products = first
    x[0, 16:32, 0, 0] = xhi
    x[0, 32:, 0, 0] = 7
    # bias so that channel m's first running value is hi - 1, hi, hi + 1, ... (events from m = 2 on)
    b = np.array([hi - first - 1 + m for m in range(M)])
    b[6:] = -b[6:] - 2 * first - 10  # negative side: low limit crossings after the second chunk
    acc = ops.Accumulator(bits=bits, overflow="saturate", rows=R)
    monkeypatch.setattr(accumulate, "BLOCK_SWITCH", 1.0)
    fast = ops.conv2d(x, w, b, x_zero_point=0, acc=acc)
    _same(fast, ops.conv2d(x, w, b, x_zero_point=0, acc=acc, impl="reference"))
    assert fast[1].acc_events > 0
    assert (fast[0] == hi).any() or (fast[0] == -hi - 1).any()


def test_certified_accumulator_stage_is_skipped_partial_events_still_counted(monkeypatch):
    """int8-psum16's shape of accumulator (P = 16 saturating, A = 32 saturating, R = 64): the A stage
    is certified (no checks, no events), the partial-sum stage still saturates and counts."""
    rng = np.random.default_rng(5)
    x = rng.integers(200, 256, (3, 16, 5, 5))
    w = rng.integers(100, 128, (32, 16, 3, 3))
    acc = ops.Accumulator(bits=32, overflow="saturate", rows=64, partial_bits=16, partial_overflow="saturate")
    plan = kernels.conv_plan(w, None, 0, np.zeros(32, np.int64), (1, 1), (1, 1, 1, 1), (1, 1), 1, acc, 0, 255)
    assert plan.groups[0].spec[1] == kernels.MODE_NONE and plan.groups[0].a_hi is None
    kw = dict(x_zero_point=0, padding=1, acc=acc)
    fast = ops.conv2d(x, w, None, **kw)
    _same(fast, ops.conv2d(x, w, None, impl="reference", **kw))
    assert fast[1].partial_events > 0 and fast[1].acc_events == 0


def test_groups_keep_their_own_paths(monkeypatch):
    """Grouped and depthwise convs are not chunked (one group only): same integers as the reference."""
    calls = _spy(monkeypatch, kernels, ["_run_chunked"])
    rng = np.random.default_rng(2)
    acc = ops.Accumulator(bits=14, overflow="saturate", rows=8)
    for groups, cout in ((2, 16), (8, 8)):
        x = rng.integers(0, 256, (2, 8, 6, 6))
        w = rng.integers(-128, 128, (cout, 8 // groups, 3, 3))
        kw = dict(x_zero_point=0, padding=1, groups=groups, acc=acc)
        _same(ops.conv2d(x, w, None, **kw), ops.conv2d(x, w, None, impl="reference", **kw))
    assert calls["_run_chunked"] == 0


@pytest.mark.parametrize("groups,cout", [(2, 16), (4, 4)])
def test_groups_with_and_without_a_certified_accumulator(groups, cout):
    """Group 0's weights are tiny (its accumulator stage is certified, planned unbounded), the other
    groups saturate: the groups run in one model-kernel call and must keep the A checks."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (2, 8, 5, 5))
    w = rng.integers(-128, 128, (cout, 8 // groups, 3, 3))
    w[: cout // groups] = rng.integers(-1, 2, (cout // groups, 8 // groups, 3, 3))
    acc = ops.Accumulator(bits=16, overflow="saturate", rows=4)
    plan = kernels.conv_plan(w, None, 0, np.zeros(cout, np.int64), (1, 1), (1, 1, 1, 1), (1, 1), groups, acc, 0, 255)
    assert plan.groups[0].spec[1] == kernels.MODE_NONE and plan.groups[-1].spec[1] == kernels.MODE_SAT
    kw = dict(x_zero_point=0, padding=1, groups=groups, acc=acc)
    fast = ops.conv2d(x, w, None, **kw)
    _same(fast, ops.conv2d(x, w, None, impl="reference", **kw))
    assert fast[1].acc_events > 0


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.data())
def test_chunked_model_property(data):
    """Random shapes, chunk sizes, widths, policies, zero points and batch sizes: fast == reference."""
    d = data.draw
    acc = ops.Accumulator(bits=d(st.sampled_from([None, 11, 14, 16, 20])), overflow=d(st.sampled_from(["wrap", "saturate"])),
                          rows=d(st.sampled_from([8, 12, 16, 32])), partial_bits=d(st.sampled_from([None, 9, 12, 16])),
                          partial_overflow=d(st.sampled_from(["wrap", "saturate"])))
    if acc.bits is None and acc.partial_bits is None:
        return
    seed = d(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n, cin, cout, k = d(st.integers(1, 3)), d(st.integers(1, 8)), d(st.integers(8, 20)), d(st.sampled_from([1, 3]))
    zx = d(st.sampled_from([0, 3, 128, 255]))
    x = rng.integers(0, 256, (n, cin, 5, 4))
    w = rng.integers(-128, 128, (cout, cin, k, k))
    b = rng.integers(-(2**14), 2**14, cout) if d(st.booleans()) else None
    kw = dict(x_zero_point=zx, w_zero_point=rng.integers(-2, 3, cout) if d(st.booleans()) else 0,
              padding=d(st.sampled_from([0, 1, (0, 2, 1, 0)])), stride=d(st.sampled_from([1, 2])), acc=acc)
    _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))


@pytest.mark.parametrize("R", [1, 4, 16])
@pytest.mark.parametrize("bits", [10, 16])
def test_running_sum_ending_exactly_on_the_limits(R, bits, monkeypatch):
    """All products of a channel share one sign, so the screen's bound equals the final running value:
    channels ending at 2^(b-1) - 1 (no event), 2^(b-1) (one event, on the last chunk), and the same on
    the negative side; int8 blocks (R < 8) / int8 chunk GEMMs (R = 16) and the fallback without torch."""
    monkeypatch.setattr(accumulate, "BLOCK_SWITCH", 1.0)
    hi = (1 << (bits - 1)) - 1
    K, M = 40, 64  # 8 channels at the limits, 56 far from them (the element-by-element model)
    w = np.ones((M, K, 1, 1), np.int64)
    w[6:12] = -1
    x = np.full((2, K, 1, 1), 3, np.int64)  # every running value grows by 3 per product: sum 120
    b = np.zeros(M, np.int64)
    b[:12] = [hi - 120 - 1 + m for m in range(6)] + [-hi - 1 + 120 + 1 - m for m in range(6)]
    acc = ops.Accumulator(bits=bits, overflow="saturate", rows=R)
    ref = ops.conv2d(x, w, b, x_zero_point=0, acc=acc, impl="reference")
    assert ref[1].acc_events > 0 and (ref[0] == hi).any() and (ref[0] == -hi - 1).any()
    real = kernels._INT_MM
    for torch_mm, fused in ((True, True), (False, True), (False, False)):
        monkeypatch.setattr(kernels, "_INT_MM", real if torch_mm else False)
        monkeypatch.setattr(accumulate, "FUSED", fused)
        _same(ops.conv2d(x, w, b, x_zero_point=0, acc=acc), ref)


# ----------------------------------------------------------------------------- the fused float32 kernel
def _profile_chunk_accs():
    """The chunked accumulator settings of the built-in profiles (R >= 2 products per chunk)."""
    from hwsim.profile import builtin_names, load_profile

    seen = {}
    for name in builtin_names():
        a = load_profile(name).accumulator
        if a.rows is not None and a.rows >= 2:
            seen[(a.bits, a.overflow, a.rows, a.partial_bits, a.partial_overflow)] = name
    return [pytest.param(ops.Accumulator(bits=k[0], overflow=k[1], rows=k[2], partial_bits=k[3], partial_overflow=k[4]),
                         id=n) for k, n in sorted(seen.items(), key=lambda kv: kv[1])]


PROFILE_CHUNK_ACCS = _profile_chunk_accs()


def test_the_built_in_chunked_profiles_are_covered():
    """int8-acc16-sat (A16 saturating, R 16) and int8-psum16 (P16 saturating per 64, A32) are among them."""
    ids = {p.id for p in PROFILE_CHUNK_ACCS}
    assert {"int8-acc16-sat", "int8-psum16"} <= ids


@pytest.mark.parametrize("acc", PROFILE_CHUNK_ACCS)
@pytest.mark.parametrize("torch_mm", [True, False], ids=["int8", "fused"])
@pytest.mark.parametrize("shape", [(3, 16, 7, 5, 3, 2), (2, 40, 6, 6, 3, 1), (1, 7, 5, 5, 1, 1)],
                         ids=["K144", "K360", "K7"])
def test_built_in_profiles_chunked_equal_reference(acc, torch_mm, shape, monkeypatch, threads):
    """Every built-in chunked accumulator, int8 chunk GEMMs and the fused kernel, threads 1 / 2: K = 144 (9
    chunks of 16, 2.25 of 64), K = 360 (22.5 chunks of 16, 5.6 of 64), an odd number of positions (the
    scratch row of the last pair) and K = 7 < R (not chunked: the other kernels); strong inputs so that
    both stages act."""
    if torch_mm and kernels.int_mm() is None:
        pytest.skip("torch._int_mm unavailable")
    if not torch_mm:
        monkeypatch.setattr(kernels, "_INT_MM", False)
    calls = _spy(monkeypatch, accumulate, ["fused_chunks_f32", "chunk_stage_f32", "chunk_stage_i64"])
    n, cin, h, w_, k, s = shape
    rng = np.random.default_rng(cin)
    x = rng.integers(0, 256, (n, cin, h, w_))
    x[0, :, :2] = 255
    w = rng.integers(-128, 128, (24, cin, k, k))
    w[:6] = rng.integers(90, 128, (6, cin, k, k))  # channels that run into the upper limits
    w[6:10] = -rng.integers(90, 129, (4, cin, k, k))  # ... and the lower ones
    b = rng.integers(-20000, 20000, 24)
    kw = dict(x_zero_point=3, padding=(1, 0, 2, 1), stride=s, acc=acc)
    fast, ref = ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw)
    _same(fast, ref)
    chunked = cin * k * k > acc.rows
    fused_shape = acc.partial_bits is None and acc.rows <= 16  # int8-acc16-sat's, not int8-psum16's
    assert (calls["fused_chunks_f32"] > 0) == (chunked and not torch_mm and fused_shape)
    assert (calls["chunk_stage_f32"] + calls["chunk_stage_i64"] > 0) == (chunked and torch_mm)
    if chunked:
        assert ref[1].acc_events + ref[1].partial_events > 0


@pytest.mark.parametrize("tile", [8, 40, 1 << 20])
def test_fused_blocks_of_odd_and_even_sizes(tile, no_int_mm, monkeypatch, threads):
    """Blocks of 1, 3, ... positions (the tile in bytes / 4M channels, at least 2; 35 positions in all): the
    pairs, the odd block's scratch row, the block edges and the split over threads change nothing."""
    monkeypatch.setattr(accumulate, "FUSED_TILE", tile * 4 * 9)
    calls = _spy(monkeypatch, accumulate, ["fused_chunks_f32"])
    rng = np.random.default_rng(tile)
    x = rng.integers(0, 256, (5, 6, 7, 1))  # 7 positions per sample
    w = rng.integers(-128, 128, (9, 6, 3, 1))
    b = rng.integers(-30000, 30000, 9)
    acc = ops.Accumulator(bits=16, overflow="saturate", rows=16)
    kw = dict(x_zero_point=0, padding=(1, 1, 0, 0), acc=acc)
    _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))
    assert calls["fused_chunks_f32"] > 0


def test_fused_kernel_not_exact_in_float32_hands_over(no_int_mm, monkeypatch):
    """16-bit activations in chunks of 16 into a 16-bit saturating accumulator: a chunk sum can reach
    16 * 2^15 * 128 = 2^26, so float32 is not proven exact; the fused kernel must not run and the integer
    model gives the reference's integers."""
    calls = _spy(monkeypatch, accumulate, ["fused_chunks_f32"])
    rng = np.random.default_rng(8)
    x = rng.integers(0, 1 << 16, (2, 8, 4, 4))
    w = rng.integers(-128, 128, (9, 8, 3, 3))
    acc = ops.Accumulator(bits=16, overflow="saturate", rows=16)
    kw = dict(x_zero_point=1 << 15, padding=1, acc=acc)
    _same(ops.conv2d(x, w, None, **kw), ops.conv2d(x, w, None, impl="reference", **kw))
    assert calls["fused_chunks_f32"] == 0


def test_im2col_offsets_equal_im2col_positions():
    """The offset-table im2col gives kernels.im2col_positions' columns: stride, dilation, padding, 7x7."""
    rng = np.random.default_rng(1)
    for cin, H, W, kh, kw, sh, sw, dh, dw in [(3, 12, 11, 7, 7, 2, 2, 1, 1), (5, 9, 8, 3, 2, 1, 2, 2, 1)]:
        xp = rng.integers(-128, 128, (3, cin, H, W)).astype(np.int8)
        Ho, Wo = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
        geom = np.array([kh, kw, sh, sw, dh, dw, Ho, Wo], np.int64)
        K = cin * kh * kw
        want = np.empty((3, Ho * Wo, K), np.int8)
        kernels.im2col_positions(xp, 0, geom, want)
        got = np.empty((3 * Ho * Wo, K), np.int8)
        accumulate.im2col_offsets(xp.reshape(-1), accumulate.position_bases(3, xp.shape, geom), 0,
                                  accumulate.input_offsets(xp.shape, geom, K), got)
        np.testing.assert_array_equal(got, want.reshape(-1, K))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.data())
def test_fused_model_property(data):
    """Random shapes, chunk sizes (8..16, chunks not dividing K), accumulator widths up to 23 bits, zero points,
    batch sizes, strides and dilations through the fused float32 kernel (no torch): fast == reference."""
    d = data.draw
    acc = ops.Accumulator(bits=d(st.sampled_from([9, 11, 14, 16, 20, 23])), overflow="saturate",
                          rows=d(st.sampled_from([8, 11, 16])))
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    n, cin, cout, k = d(st.integers(1, 3)), d(st.integers(1, 8)), d(st.integers(1, 20)), d(st.sampled_from([1, 2, 3]))
    x = rng.integers(0, 256, (n, cin, 6, 5))
    w = rng.integers(-128, 128, (cout, cin, k, k))
    b = rng.integers(-(2**14), 2**14, cout) if d(st.booleans()) else None
    kw = dict(x_zero_point=d(st.sampled_from([0, 3, 128, 255])), acc=acc,
              w_zero_point=rng.integers(-2, 3, cout) if d(st.booleans()) else 0,
              padding=d(st.sampled_from([0, 1, (0, 2, 1, 0)])), stride=d(st.sampled_from([1, 2])),
              dilation=d(st.sampled_from([1, (2, 1)])))
    calls = [0]
    real = accumulate.fused_chunks_f32

    def spy(*a):
        calls[0] += 1
        return real(*a)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "_INT_MM", False)
        mp.setattr(accumulate, "fused_chunks_f32", spy)
        fast = ops.conv2d(x, w, b, **kw)
    _same(fast, ops.conv2d(x, w, b, impl="reference", **kw))
    if fast[1].acc_events and cin * k * k > acc.rows and cout >= kernels.PLANE_MAX_M:
        assert calls[0] > 0  # a chunked layer whose accumulator acts went through the fused kernel


# ----------------------------------------------------------------------------- int8 chunk GEMMs: channel parts per worker
@pytest.mark.parametrize("M", [1, 2, 15, 16, 17, 31, 32, 33, 64, 100, 512])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7])
def test_channel_parts_cover_every_channel_once(M, parts):
    """Consecutive, non-empty ranges covering 0..M exactly once; min(parts, M) of them; near-equal; on
    multiples of PART_ALIGN wherever every part keeps at least PART_ALIGN channels."""
    got = accumulate.channel_parts(M, parts)
    assert len(got) == min(parts, M)
    assert got[0][0] == 0 and got[-1][1] == M
    assert all(a < b for a, b in got) and all(got[i][1] == got[i + 1][0] for i in range(len(got) - 1))
    sizes = [b - a for a, b in got]
    if M >= len(got) * accumulate.PART_ALIGN:
        assert all(a % accumulate.PART_ALIGN == 0 for a, _ in got)
        assert max(sizes) - min(sizes) <= accumulate.PART_ALIGN
    else:
        assert max(sizes) - min(sizes) <= 1


def _spy_parts(monkeypatch):
    """The channel counts of the output slices run_int8_chunks finishes (one per block and part)."""
    seen = []
    real = accumulate.finish_acc

    def spy(acc, L, out):
        seen.append(out.shape[1])
        return real(acc, L, out)

    monkeypatch.setattr(accumulate, "finish_acc", spy)
    return seen


@pytest.mark.parametrize("acc", PROFILE_CHUNK_ACCS + [pytest.param(a, id=_acc_id(a)) for a in CHUNK_ACCS[::5]])
@pytest.mark.parametrize("cout", [8, 9, 24, 37])
@pytest.mark.parametrize("part_min", [1, 5])
def test_int8_chunks_split_by_channels_equal_reference(acc, cout, part_min, monkeypatch, threads):
    """One block of images (STAGE_BYTES large) and 2 workers: the block's channels split in parts (M odd, parts
    not multiples of 16, M below two parts of PART_MIN_M: none), columns made once, each part its own sums and
    accumulators: the same integers and events as the reference; at 1 thread no split. (Fewer channels than
    workers never reach this path: M < PLANE_MAX_M runs the position-vectorized kernel; channel_parts itself
    is tested for M < parts above.)"""
    if kernels.int_mm() is None:
        pytest.skip("torch._int_mm unavailable")
    monkeypatch.setattr(accumulate, "PART_MIN_M", part_min)
    widths = _spy_parts(monkeypatch)
    rng = np.random.default_rng(cout)
    x = rng.integers(0, 256, (3, 9, 5, 6))
    x[0, :, :2] = 255
    w = rng.integers(-128, 128, (cout, 9, 3, 3))
    w[: (cout + 3) // 4] = rng.integers(90, 128, ((cout + 3) // 4, 9, 3, 3))  # channels that hit the upper limit
    b = rng.integers(-20000, 20000, cout)
    kw = dict(x_zero_point=3, padding=(1, 0, 2, 1), stride=(1, 2), acc=acc)
    fast, ref = ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw)
    _same(fast, ref)
    assert ref[1].acc_events + ref[1].partial_events > 0
    split = threads == 2 and cout >= 2 * part_min
    assert widths and (max(widths) < cout) == split
    assert sum(widths) == cout  # one block: every channel finished once


@pytest.mark.parametrize("stage_kb", [1, 4, 1 << 10])
def test_int8_chunks_blocks_and_parts_equal_reference(stage_kb, monkeypatch, threads):
    """Block sizes from one image (many blocks: no split) to the whole batch (one block: split over the
    workers), int8-acc16-sat's accumulator, 5 images of odd size."""
    if kernels.int_mm() is None:
        pytest.skip("torch._int_mm unavailable")
    monkeypatch.setattr(accumulate, "STAGE_BYTES", stage_kb << 10)
    monkeypatch.setattr(accumulate, "PART_MIN_M", 8)
    widths = _spy_parts(monkeypatch)
    acc = ops.Accumulator(bits=16, overflow="saturate", rows=16)
    rng = np.random.default_rng(stage_kb)
    x = rng.integers(0, 256, (5, 16, 5, 3))
    w = rng.integers(-128, 128, (40, 16, 3, 3))
    w[:8] = 127
    kw = dict(x_zero_point=0, padding=1, acc=acc)
    fast, ref = ops.conv2d(x, w, None, **kw), ops.conv2d(x, w, None, impl="reference", **kw)
    _same(fast, ref)
    assert ref[1].acc_events > 0
    assert (max(widths) < 40) == (threads == 2 and stage_kb == 1 << 10)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.data())
def test_int8_chunks_split_property(data):
    """Random shapes, chunk sizes, accumulators (P and A stages, wrap and saturate), zero points, block sizes and
    part sizes at 2 threads: fast == reference, events included."""
    if kernels.int_mm() is None:
        return
    d = data.draw
    acc = ops.Accumulator(bits=d(st.sampled_from([None, 11, 16, 20])), overflow=d(st.sampled_from(["wrap", "saturate"])),
                          rows=d(st.sampled_from([8, 16, 24])), partial_bits=d(st.sampled_from([None, 10, 16])),
                          partial_overflow=d(st.sampled_from(["wrap", "saturate"])))
    if acc.bits is None and acc.partial_bits is None:
        return
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    n, cin, cout, k = d(st.integers(1, 4)), d(st.integers(2, 8)), d(st.integers(8, 40)), d(st.sampled_from([1, 3]))
    x = rng.integers(0, 256, (n, cin, 5, 4))
    w = rng.integers(-128, 128, (cout, cin, k, k))
    b = rng.integers(-(2**14), 2**14, cout) if d(st.booleans()) else None
    kw = dict(x_zero_point=d(st.sampled_from([0, 3, 128, 255])), acc=acc,
              w_zero_point=rng.integers(-2, 3, cout) if d(st.booleans()) else 0,
              padding=d(st.sampled_from([0, 1, (0, 2, 1, 0)])), stride=d(st.sampled_from([1, 2])))
    prev = kernels.numba.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(accumulate, "STAGE_BYTES", d(st.sampled_from([1 << 10, 8 << 10, 1 << 20])))
        mp.setattr(accumulate, "PART_MIN_M", d(st.sampled_from([1, 3, 8, 32])))
        kernels.set_threads(2)
        try:
            fast = ops.conv2d(x, w, b, **kw)
        finally:
            kernels.set_threads(prev)
    _same(fast, ops.conv2d(x, w, b, impl="reference", **kw))


@pytest.mark.parametrize("acc", PROFILE_CHUNK_ACCS)
@pytest.mark.parametrize("n,k,m", [(7, 300, 40), (1, 70, 9), (33, 512, 100)])
@pytest.mark.parametrize("torch_mm", [True, False], ids=["int8", "no-torch"])
def test_linear_runs_the_int8_chunks(acc, n, k, m, torch_mm, monkeypatch, threads):
    """A linear layer with a chunked order-dependent accumulator goes through the conv's chunked paths as a 1x1
    conv (one position per sample; before: the sequential model kernel): fast == reference, events too; without
    torch._int_mm the same route ends in the fused float32 kernel (int8-acc16-sat)."""
    if torch_mm and kernels.int_mm() is None:
        pytest.skip("torch._int_mm unavailable")
    if not torch_mm:
        monkeypatch.setattr(kernels, "_INT_MM", False)
    calls = _spy(monkeypatch, accumulate, ["run_int8_chunks", "fused_chunks_f32", "chunk_stage_f32",
                                           "chunk_stage_i64"])
    blas = _spy(monkeypatch, kernels, ["accumulate_chunks_f32"])
    monkeypatch.setattr(accumulate, "PART_MIN_M", 4)
    rng = np.random.default_rng(n * k)
    x = rng.integers(0, 256, (n, k))
    w = rng.integers(-128, 128, (m, k))
    w[:3] = 127
    b = rng.integers(-20000, 20000, m)
    kw = dict(x_zero_point=3, acc=acc)
    fast, ref = ops.linear(x, w, b, **kw), ops.linear(x, w, b, impl="reference", **kw)
    _same(fast, ref)
    assert ref[1].acc_events + ref[1].partial_events > 0
    gemm = calls["chunk_stage_f32"] + calls["chunk_stage_i64"] > 0
    fused_shape = acc.partial_bits is None and acc.rows <= 16
    # without torch, int8-psum16's 32-bit accumulator has no float32 chunk model: the model kernel, as for conv2d
    assert calls["run_int8_chunks"] == int(torch_mm or fused_shape)
    assert (gemm, calls["fused_chunks_f32"] > 0, blas["accumulate_chunks_f32"]) == (
        torch_mm, not torch_mm and fused_shape, 0)


def test_workers_run_torch_single_threaded(threads):
    """OpenMP's thread count is per thread: hwsim's worker threads (inside _torch_one_thread) must set theirs to
    1, or every torch._int_mm in a worker runs an OpenMP team of all cores (2-100x slower on 2 cores)."""
    torch = pytest.importorskip("torch")
    import os
    import re

    if (os.cpu_count() or 1) < 2 or "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("needs OpenMP torch and 2 cores")

    def omp(_):
        info = torch.__config__.parallel_info()
        return int(re.search(r"omp_get_max_threads\(\) : (\d+)", info).group(1))

    with kernels._torch_one_thread():
        got = kernels._in_workers(omp, [0, 1])
    assert got == [1, 1]


def test_risky_decision_kept_per_plan(monkeypatch):
    """A plan whose first batch screened risky (most positions may saturate) keeps that decision: the next
    batches skip the screen and run the chunked model, even a batch the screen would pass to BLAS + rerun;
    every batch == reference (both paths are exact)."""
    screens = _spy(monkeypatch, kernels, ["_screen"])
    chunked = _spy(monkeypatch, kernels, ["_run_chunked"])
    acc = ops.Accumulator(bits=16, overflow="saturate", rows=16)
    rng = np.random.default_rng(5)
    w = rng.integers(-128, 128, (16, 8, 3, 3))
    w[:8] = 127
    zw = np.zeros(16, np.int64)
    loud = rng.integers(0, 256, (2, 8, 6, 6))
    quiet = rng.integers(0, 3, (2, 8, 6, 6))  # bounds far below 2^15: the screen alone would say BLAS
    plan = kernels.conv_plan(w, None, 0, zw, (1, 1), (1, 1, 1, 1), (1, 1), 1, acc, 0, 255)
    for x in (loud, quiet, loud):
        fast = kernels.conv2d_accumulate(x, w, None, 0, zw, (1, 1), (1, 1, 1, 1), (1, 1), 1, acc, plan)
        ref = ops.conv2d(x, w, None, padding=1, acc=acc, impl="reference")
        np.testing.assert_array_equal(fast[0], ref[0])
        assert (fast[1], fast[2]) == (ref[1].partial_events, ref[1].acc_events)
    assert screens["_screen"] == 1 and chunked["_run_chunked"] == 3
    fresh = kernels.conv_plan(w, None, 0, zw, (1, 1), (1, 1, 1, 1), (1, 1), 1, acc, 0, 255)
    kernels.conv2d_accumulate(quiet, w, None, 0, zw, (1, 1), (1, 1, 1, 1), (1, 1), 1, acc, fresh)
    assert screens["_screen"] == 2 and chunked["_run_chunked"] == 3  # a fresh plan screens: BLAS + rerun


def test_worker_threads_kept_and_resized(threads):
    """_in_workers keeps its threads between calls (starting them per layer cost milliseconds) and makes a new
    pool when the thread count changes; results in order."""
    import threading

    def who(p):
        return p, threading.get_ident()

    a = kernels._in_workers(who, list(range(6)))
    b = kernels._in_workers(who, list(range(6)))
    assert [p for p, _ in a] == [p for p, _ in b] == list(range(6))
    if threads == 1:
        assert {t for _, t in a + b} == {threading.get_ident()}
        return
    pool = kernels._POOL[1]
    assert {t for _, t in a + b} <= {th.ident for th in pool._threads}
    kernels.set_threads(1)
    try:
        assert kernels._in_workers(who, [0, 1]) == [(0, threading.get_ident()), (1, threading.get_ident())]
    finally:
        kernels.set_threads(threads)
    kernels._in_workers(who, [0, 1])
    assert kernels._POOL[1] is pool  # the same size again: the same threads



# ----------------------------------------------------------------------------- depthwise convs under chunks
# (profile, settings): one chunk of 16 / 64 rows per 3x3 channel (int8-acc16-sat, -wrap, int8-psum16's P stage), and
# several: rows 4 (chunks of 4, 4, 1 taps) saturating / wrapping, rows 2 with a P stage, a chunk per MAC
DW_CASES = [("int8-acc16-sat", {}), ("int8-acc16-wrap", {}), ("int8-psum16", {}),
            ("int8-acc16-sat", {"accumulator.rows": 1, "accumulator.bits": 13}),
            ("int8-acc16-sat", {"accumulator.rows": 4, "accumulator.bits": 13}),
            ("int8-acc16-wrap", {"accumulator.rows": 4, "accumulator.bits": 12}),
            ("int8-psum16", {"accumulator.rows": 2, "accumulator.partial_bits": 10, "accumulator.bits": 14})]


@pytest.mark.parametrize("profile,settings", DW_CASES, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k.split('.')[1]}={x}" for k, x in v.items()) or "-")
@pytest.mark.parametrize("bs,threads_", [(5, 1), (5, 2), (1, 2)])
def test_depthwise_chunk_route_equals_reference(profile, settings, bs, threads_, monkeypatch):
    """A depthwise conv under an order-dependent accumulator takes ops.mac's fused route (kernels.depthwise_staged_run:
    one chunk per channel, exact tap sums then A(A(b) + P(S)); several chunks, kernels.depthwise_chunks: the chunks
    of R taps in tap order with A(acc + P(S_j)) after each; the fused epilogue) == the reference executor, logits and
    every counter, in one and two batch workers; the events show the stages act, and the one-chunk form on the
    several-chunk cases (one stage on the whole sum) gives other accumulators."""
    from hwsim.compile import compile_model
    from hwsim.execute import run_quantized
    from hwsim.profile import load_profile
    from tests.nets import images, tiny_cnn

    prof = load_profile(profile)
    qg = compile_model(tiny_cnn(seed=3, channels=20), prof.with_settings(settings) if settings else prof,
                       images(32, seed=5))
    x = images(5, seed=4)
    x[0] *= 6
    ref = run_quantized(qg, x, batch_size=5, impl="reference")
    calls = {"n": 0, "chunks": 0}
    real, real_chunks = kernels.depthwise_staged_run, kernels.depthwise_chunks

    def counted(*a):
        got = real(*a)
        calls["n"] += got is not None
        return got

    def chunks(*a):
        calls["chunks"] += 1
        return real_chunks(*a)

    monkeypatch.setattr(kernels, "depthwise_staged_run", counted)
    monkeypatch.setattr(kernels, "depthwise_chunks", chunks)
    prev = kernels.numba.get_num_threads()
    try:
        kernels.set_threads(threads_)
        got = run_quantized(qg, x, batch_size=bs, threads=threads_)
    finally:
        kernels.set_threads(prev)
    np.testing.assert_array_equal(got.logits, ref.logits)
    assert [s.to_json() for s in got.layers] == [s.to_json() for s in ref.layers]
    lay = qg.layer("dw")
    dw = next(s for s, la in zip(ref.layers, qg.layers) if la.name == "dw")
    rows = lay.accumulator.rows or 1 << 30  # unbounded: one chunk
    assert calls["n"] == -(-5 // bs)
    assert (calls["chunks"] > 0) == (rows < 9)
    if profile == "int8-acc16-sat" or settings:
        assert dw.acc_events + dw.partial_events > 0  # the stages act on this layer
    if rows < 9:  # the one-chunk model on the same layer: other integers, or (wrapping) other events
        spec = ops.get("conv2d")
        plan = spec.planned(lay, qg.grids[lay.inputs[0]])[3]
        d = plan.dw_stage
        xin = run_quantized(qg, x, batch_size=5, impl="reference", keep_tensors=True).tensors[lay.inputs[0]]
        geom, pad = spec.gemm_shape(lay, xin, plan)[1:3]
        L, _, _, (sh, sw, Ho, Hq, Wq) = kernels._dw_blocks(xin, geom, pad)
        wk = d.w.astype(np.int32)
        one = np.empty((xin.shape[1], 5 * L), np.int32)
        assert kernels.depthwise_acc(xin, 0, plan.zx, plan.lo, plan.hi, wk, geom, pad[0], pad[2],
                                     np.empty(sh * sw * Hq * Wq, np.int32), np.empty(Ho * Wq, np.int32), one)
        several = np.empty_like(one)
        ok, pe, ae = real_chunks(xin, 0, plan.zx, plan.lo, plan.hi, wk, geom, pad[0], pad[2], rows, d.b0, d.spec,
                                 np.empty(sh * sw * Hq * Wq, np.int32), np.empty(Ho * Wq, np.int32),
                                 np.empty(Ho * Wq, np.int64), several)
        p1, a1 = kernels.depthwise_stage(one, d.b0, d.spec)
        assert ok and (pe, ae) != (0, 0)
        if lay.accumulator.overflow == "saturate":
            assert not np.array_equal(one, several)
        else:  # wrapping once or after every chunk: the same residues, not the same events
            assert (p1, a1) != (pe, ae)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.data())
def test_depthwise_chunks_property(data):
    """kernels.depthwise_staged_run (one chunk: exact sums then the stage; several: depthwise_chunks) == the
    reference conv (ops.conv2d, impl="reference"): accumulators and both event counts, over kernel sizes 1-5,
    strides 1-3, dilations 1-2, asymmetric padding, rows 1 to beyond the taps, saturating / wrapping A and P
    stages, zero points, batch 1-3 and one or two workers."""
    d = data.draw
    k = (d(st.integers(1, 5)), d(st.integers(1, 5)))
    stride, dil = (d(st.integers(1, 3)), d(st.integers(1, 3))), (d(st.integers(1, 2)), d(st.integers(1, 2)))
    pad = tuple(d(st.integers(0, 2)) for _ in range(4))
    H, W = d(st.integers(max(1, (k[0] - 1) * dil[0] + 1 - pad[0] - pad[1]), 9)), \
        d(st.integers(max(1, (k[1] - 1) * dil[1] + 1 - pad[2] - pad[3]), 9))
    acc = ops.Accumulator(bits=d(st.integers(9, 16)), overflow=d(st.sampled_from(["wrap", "saturate"])),
                          rows=d(st.integers(1, k[0] * k[1] + 2)), partial_bits=d(st.sampled_from([None, 8, 11])),
                          partial_overflow=d(st.sampled_from(["wrap", "saturate"])))
    C, N, zx = d(st.integers(1, 5)), d(st.integers(1, 3)), d(st.integers(-20, 20))
    rng = np.random.default_rng(d(st.integers(0, 2**16)))
    x = rng.integers(-128, 128, (N, C, H, W))
    w = rng.integers(-127, 128, (C, 1, *k))
    b = rng.integers(-3000, 3000, C)
    plan = kernels.conv_plan(w, b, zx, np.zeros(C, np.int64), stride, pad, dil, C, acc, -128, 127)
    assume(plan.depthwise is None and plan.dw_stage is not None)  # events possible, the chunked route planned
    geom = np.array([k[0], k[1], stride[0], stride[1], dil[0], dil[1],
                     (H + pad[0] + pad[1] - (k[0] - 1) * dil[0] - 1) // stride[0] + 1,
                     (W + pad[2] + pad[3] - (k[1] - 1) * dil[1] - 1) // stride[1] + 1], np.int64)
    ref, st_ref = ops.conv2d(x, w, b, x_zero_point=zx, stride=stride, padding=pad, dilation=dil, groups=C, acc=acc,
                             impl="reference")
    # an identity epilogue: fl32(acc * 1) is exact (|acc| < 2^24), no clamp
    epi = kernels.Epilogue(kind="float32", zy=0, lo=-(1 << 40), hi=1 << 40, qmin=-(1 << 40), qmax=1 << 40,
                           count_low=False, mult=np.ones(C, np.float32), bias=np.zeros(C, np.float32),
                           pre=np.ones(C, np.float32))
    prev = kernels.numba.get_num_threads()
    try:
        kernels.set_threads(d(st.integers(1, 2)))
        out = np.empty((N, C, int(geom[6] * geom[7])), np.int64)
        got = kernels.depthwise_staged_run(x, plan, geom, pad, out, epi)
    finally:
        kernels.set_threads(prev)
    assert got is not None
    np.testing.assert_array_equal(out.reshape(ref.shape), ref)
    assert (got[1], got[2]) == (st_ref.partial_events, st_ref.acc_events)
