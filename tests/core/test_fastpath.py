"""The faster exact paths (docs/semantics.md section 10): the int8 GEMM with int32 accumulation
(torch._int_mm), per-layer plans made once, the numba element-wise add kernels — each bit-identical
to the reference, zero tolerance, and each shown to be the path actually taken."""

import importlib

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim import fixedpoint as fp
from hwsim import kernels, ops
from hwsim.compile import compile_model
from hwsim.execute import _new_stats, run_integer, run_layer
from hwsim.profile import builtin_names, load_profile
from tests.nets import images, tiny_cnn

HAS_INT_MM = kernels.int_mm() is not None
needs_int_mm = pytest.mark.skipif(not HAS_INT_MM, reason="torch._int_mm not available")

mul_mod = importlib.import_module("hwsim.ops.mul")  # the module (hwsim.ops.mul the name is its function)


@pytest.fixture
def mm_calls(monkeypatch):
    """Counts the int8 GEMM calls (the test then knows which path ran)."""
    calls = []
    real = kernels.int_mm()

    def counting(a, b):
        calls.append(tuple(a.shape))
        return real(a, b)

    monkeypatch.setattr(kernels, "_INT_MM", counting)
    return calls


def _same(a, b):
    (va, sa), (vb, sb) = a, b
    np.testing.assert_array_equal(va, vb)
    assert (sa.partial_events, sa.acc_events) == (sb.partial_events, sb.acc_events)


# (x range, x zero point, w range, w zero point): uint8 / int8 activations, offsets inside and outside
# int8, asymmetric weights that still fit int8 after subtracting z_w
GRIDS = [((0, 255), 128, (-127, 127), 0),   # fbgemm-like: x - z_x fits int8
         ((0, 255), 3, (-128, 127), 0),     # uint8, z_x far from the middle: offset o = 128 + correction
         ((-128, 127), -100, (-127, 127), 0),  # int8 asymmetric (TFLite): offset o = 0
         ((-128, 127), 0, (-8, 7), 0),      # symmetric int8 x int4
         ((0, 255), 0, (0, 255), 128),      # uint8 weights with z_w = 128: w - z_w in [-128, 127]
         ((5, 40), 17, (-3, 3), 1)]         # narrow grids, asymmetric weights


CONVS = [dict(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), cin=3, cout=8, k=3),
         dict(stride=(2, 1), padding=(0, 2, 1, 0), dilation=(1, 1), cin=4, cout=9, k=3),
         dict(stride=(1, 2), padding=(2, 2, 2, 2), dilation=(2, 1), cin=5, cout=16, k=3),
         dict(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), cin=5, cout=3, k=1),
         dict(stride=(2, 2), padding=(3, 3, 3, 3), dilation=(1, 1), cin=3, cout=12, k=7),
         dict(stride=(1, 1), padding=(2, 1, 2, 2), dilation=(2, 2), cin=3, cout=5, k=3),  # kw runs of C per row
         dict(stride=(1, 3), padding=(1, 1, 0, 2), dilation=(1, 2), cin=1, cout=4, k=3)]


def _conv_operands(rng, grid, case, n=3, hw=9):
    (xlo, xhi), zx, (wlo, whi), zw = grid
    x = rng.integers(xlo, xhi + 1, (n, case["cin"], hw, hw))
    x[0, :, :2] = xlo  # boundary rows: both ends of the input grid
    x[-1, :, -2:] = xhi
    w = rng.integers(wlo, whi + 1, (case["cout"], case["cin"], case["k"], case["k"]))
    w[0] = wlo if wlo - zw >= -128 else zw - 128  # an extreme filter
    b = rng.integers(-(2**20), 2**20, case["cout"])
    return x, w, b, zx, zw


@needs_int_mm
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("case", CONVS, ids=lambda c: f"s{c['stride']}p{c['padding']}d{c['dilation']}k{c['k']}")
def test_int8_gemm_conv_equals_reference(grid, case, mm_calls):
    rng = np.random.default_rng(7)
    x, w, b, zx, zw = _conv_operands(rng, grid, case)
    kw = dict(x_zero_point=zx, w_zero_point=zw, stride=case["stride"], padding=case["padding"],
              dilation=case["dilation"], acc=ops.Accumulator(bits=32))
    _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))
    assert mm_calls, "the int8 GEMM path was not taken"


@needs_int_mm
@pytest.mark.parametrize("grid", GRIDS)
def test_int8_gemm_linear_equals_reference(grid, mm_calls):
    rng = np.random.default_rng(8)
    (xlo, xhi), zx, (wlo, whi), zw = grid
    x = rng.integers(xlo, xhi + 1, (37, 300))
    x[0], x[1] = xlo, xhi
    w = rng.integers(wlo, whi + 1, (10, 300))
    b = rng.integers(-(2**20), 2**20, 10)
    kw = dict(x_zero_point=zx, w_zero_point=zw, acc=ops.Accumulator(bits=32))
    _same(ops.linear(x, w, b, **kw), ops.linear(x, w, b, impl="reference", **kw))
    assert mm_calls


@needs_int_mm
def test_int8_gemm_at_the_int32_limit_and_beyond(mm_calls):
    """All-extreme operands: the int32 bound decides; just below 2^31 uses the GEMM, above it does not."""
    k = 2**31 // (128 * 128)  # 131072 products of 2^14: 2^31 exactly
    x = np.full((2, k - 1), -128)
    w = np.full((3, k - 1), -128)
    acc = ops.Accumulator(bits=None)
    _same(ops.linear(x, w, None, acc=acc), ops.linear(x, w, None, acc=acc, impl="reference"))
    assert mm_calls
    mm_calls.clear()
    x, w = np.full((2, k), -128), np.full((3, k), -128)
    out, _ = ops.linear(x, w, None, acc=acc)
    assert (out == 2**31).all() and not mm_calls  # the sum does not fit int32: float BLAS instead


def test_not_taken_where_events_are_possible_or_operands_too_wide(mm_calls):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 8, 6, 6))
    w = rng.integers(-128, 128, (8, 8, 3, 3))
    _same(ops.conv2d(x, w, None, x_zero_point=0, padding=1, acc=ops.Accumulator(bits=16, rows=4)),
          ops.conv2d(x, w, None, x_zero_point=0, padding=1, acc=ops.Accumulator(bits=16, rows=4), impl="reference"))
    w16 = rng.integers(-300, 300, (8, 8, 3, 3))  # w - z_w outside int8
    _same(ops.conv2d(x, w16, None, padding=1), ops.conv2d(x, w16, None, padding=1, impl="reference"))
    x1 = rng.integers(0, 256, (2, 1, 6, 6))  # K = 1: torch's _int_mm is wrong there, never used
    _same(ops.conv2d(x1, w[:, :1, :1, :1], None), ops.conv2d(x1, w[:, :1, :1, :1], None, impl="reference"))
    assert not mm_calls


@needs_int_mm
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_int8_gemm_property(data):
    """Random grids, zero points, shapes, paddings: fast == reference (events 0 on both)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    xbits = data.draw(st.integers(2, 8))
    xsigned = data.draw(st.booleans())
    xlo, xhi = fp.int_range(xbits, xsigned)
    zx = data.draw(st.integers(xlo, xhi))
    wlo, whi = fp.int_range(data.draw(st.integers(2, 8)), True)
    cin, cout, k = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 12)), data.draw(st.integers(1, 3))
    pad = tuple(data.draw(st.integers(0, 2)) for _ in range(4))
    stride = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    dilation = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    x = rng.integers(xlo, xhi + 1, (data.draw(st.integers(1, 3)), cin, 5 + 2 * k, 6 + 2 * k))
    w = rng.integers(wlo, whi + 1, (cout, cin, k, k))
    b = rng.integers(-1000, 1000, cout)
    kw = dict(x_zero_point=zx, stride=stride, padding=pad, dilation=dilation, acc=ops.Accumulator(bits=32))
    _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))


def test_fallback_without_int_mm_equals_reference(monkeypatch):
    """HWSIM_INT_MM=0 / no torch: the exact float-BLAS path (today's) gives the same integers."""
    monkeypatch.setattr(kernels, "_INT_MM", False)
    rng = np.random.default_rng(2)
    for grid in GRIDS:
        x, w, b, zx, zw = _conv_operands(rng, grid, CONVS[0])
        kw = dict(x_zero_point=zx, w_zero_point=zw, padding=1)
        _same(ops.conv2d(x, w, b, **kw), ops.conv2d(x, w, b, impl="reference", **kw))


# ----------------------------------------------------------------------------- plans made once
def test_plan_made_once_per_layer_and_renewed_when_weights_change(monkeypatch):
    g = tiny_cnn(seed=3)
    qg = compile_model(g, load_profile("int8-tflite"), images(32, seed=5))
    made = []
    real = kernels.conv_plan
    monkeypatch.setattr(kernels, "conv_plan", lambda *a, **k: made.append(1) or real(*a, **k))
    x = images(8, seed=4)
    first = run_integer(qg, x)
    n_conv = sum(lay.op == "conv2d" for lay in qg.layers)
    assert len(made) == n_conv
    run_integer(qg, x)
    assert len(made) == n_conv  # second batch: cached plans
    lay = next(lay for lay in qg.layers if lay.op == "conv2d")
    lay.w_q = -lay.w_q  # a new weight array: a new plan, and the new weights are used
    fast, ref = run_integer(qg, x), run_integer(qg, x, "reference")
    assert len(made) == n_conv + 1
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k])
    assert any((fast[k] != first[k]).any() for k in fast)


def test_batch_outside_the_planned_range_is_replanned():
    """A plan made for a narrow input range still gives exact results on wider data (replanned)."""
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (8, 4, 3, 3))
    zw = np.zeros(8, np.int64)
    acc = ops.Accumulator(bits=32)
    plan = kernels.conv_plan(w, None, 0, zw, (1, 1), (1, 1, 1, 1), (1, 1), 1, acc, 0, 3)
    x = rng.integers(-128, 128, (2, 4, 5, 5))
    out, pe, ae = kernels.conv2d_accumulate(x, w, None, 0, zw, (1, 1), (1, 1, 1, 1), (1, 1), 1, acc, plan=plan)
    ref, _ = ops.conv2d(x, w, None, padding=1, acc=acc, impl="reference")
    np.testing.assert_array_equal(out, ref)
    assert (pe, ae) == (0, 0)


@pytest.mark.parametrize("name", builtin_names())
def test_narrow_dtypes_between_layers_give_the_same_integers(name):
    """The executor keeps activations in the narrowest dtype of their grid; every tensor == reference."""
    g = tiny_cnn(seed=3)
    qg = compile_model(g, load_profile(name), images(32, seed=5))
    if qg.weight_only:
        pytest.skip("weight-only: float path")
    x = images(6, seed=4)
    env, ref = {qg.input_name: qg.grids[qg.input_name].quantize(x)}, run_integer(qg, x, "reference")
    for lay, st in zip(qg.layers, _new_stats(qg)):
        run_layer(qg, lay, env, st, "fast", narrow=True)
        gy = qg.grids.get(lay.output)
        if lay.op in ("conv2d", "linear", "add") and gy.qmax - gy.qmin <= 255:
            assert env[lay.output].dtype.itemsize == 1, (lay.name, env[lay.output].dtype)
    for k in ref:
        np.testing.assert_array_equal(env[k], ref[k], err_msg=f"{name}: tensor {k}")
        assert run_integer(qg, x)[k].dtype == np.int64  # callers get int64


# ----------------------------------------------------------------------------- add kernels
ADD_CFGS = ([ops.Requant(mode="fixed", fixed_rounding=r, fixed_ties=t) for r in ("double", "single")
             for t in (("half_up", "half_away"), ("half_even", "half_even"), ("half_away", "half_up"))]
            + [ops.Requant(mode="float32", rounding=m, zero_point=z)
               for m in ("half_even", "half_away", "half_up", "floor", "trunc") for z in ("after", "before")]
            + [ops.Requant(mode="float32", add_form="ratio_fma", rounding=m)
               for m in ("half_even", "half_away", "half_up", "floor", "trunc")])


# ratio_fma's reference is plain Python (140 us a pair): its rounding variants besides half_even take 16-26 s each
# (pyproject's slow marker: CI runs them in its second step)
ADD_PARAMS = [pytest.param(c, marks=pytest.mark.slow) if c.add_form == "ratio_fma" and c.rounding != "half_even" else c
              for c in ADD_CFGS]


@pytest.mark.parametrize("cfg", ADD_PARAMS, ids=lambda c: f"{c.mode}-{c.fixed_rounding}-{c.fixed_ties}-{c.rounding}-"
                                                            f"{c.zero_point}-{c.add_form}")
def test_add_kernels_equal_reference(cfg):
    rng = np.random.default_rng(4)
    ramp = np.arange(-128, 128)
    a = np.stack(np.meshgrid(ramp, ramp)).reshape(2, 1, 256, 256)[0]  # every pair of int8 values
    b = np.stack(np.meshgrid(ramp, ramp)).reshape(2, 1, 256, 256)[1]
    scale_sets = ((0.02, 0.03, 0.05, 3, -7, 1), (0.5, 0.25, 0.5, 0, 0, 0),
                  (0.0171, 0.0093, 0.0311, -128, 127, -5), (2.0**-4, 2.0**-5, 2.0**-3, 1, 2, 3))
    if cfg.add_form == "ratio_fma" and cfg.rounding != "half_even":
        # its reference is plain Python (140 us a pair): every pair on all four scale sets for half_even, and for
        # the other roundings the two sets whose binary scales make halfway cases (where roundings differ)
        scale_sets = scale_sets[1::2]
    for sa, sb, sy, za, zb, zy in scale_sets:
        kw = dict(a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy,
                  qmin=-128, qmax=127, cfg=cfg)
        y, c = ops.add(a, b, **kw)
        yr, cr = ops.add(a, b, impl="reference", **kw)
        np.testing.assert_array_equal(y, yr)
        assert c == cr
    bb = rng.integers(-128, 128, (1, 1, 256))  # broadcasting
    kw["b_zero_point"] = 0
    np.testing.assert_array_equal(ops.add(a, bb, **kw)[0], ops.add(a, bb, impl="reference", **kw)[0])


def test_add_fixed_kernel_outside_its_domain_falls_back():
    """single rounding with |x << 20| > 2^31 (16-bit inputs): the numpy path, still == reference."""
    cfg = ops.Requant(mode="fixed", fixed_rounding="single")
    a = np.array([[-30000, 30000, 5, 0]])
    b = np.array([[12000, -32768, 7, 1]])
    kw = dict(a_scale=0.001, a_zero_point=0, b_scale=0.002, b_zero_point=0, y_scale=0.004, y_zero_point=0,
              qmin=-(2**15), qmax=2**15 - 1, cfg=cfg)
    assert not kernels.add_fixed(a.reshape(-1), b.reshape(-1), 0, 0, 0, 20, 1 << 30, 0, 1 << 30, 0, 1 << 30, 0,
                                 True, 2, 2, np.empty(4, np.int64))
    np.testing.assert_array_equal(ops.add(a, b, **kw)[0], ops.add(a, b, impl="reference", **kw)[0])


def test_fma_kernel_equals_fma_f32_near_ties():
    """kernels._fma_f32 == ops.fma_f32 on random and on constructed halfway cases (e != 0)."""
    from numba import njit

    @njit
    def fma_all(x, r, z, out):
        for i in range(x.shape[0]):
            out[i] = kernels._fma_f32(x[i], r[i], z[i])

    rng = np.random.default_rng(6)
    n = 20000
    x = rng.integers(-(2**28), 2**28, n)
    r = rng.uniform(-2, 2, n).astype(np.float32)
    z = rng.uniform(-1e4, 1e4, n).astype(np.float32)
    # exact float32 ties hidden by float64 rounding: x odd with 25 bits, r = 2^j, so x*r lies halfway
    # between two float32 numbers; z = +-2^(j-30) is below half a float64 ulp of it (lost, e = z != 0)
    h = n // 2
    j = rng.integers(-30, 10, h)
    x[:h] = (rng.integers(2**23, 2**24, h) * 2 + 1) * rng.choice([-1, 1], h)
    r[:h] = (2.0 ** j).astype(np.float32)
    z[:h] = (rng.choice([-1.0, 1.0], h) * 2.0 ** (j - 30)).astype(np.float32)
    naive = (x * r.astype(np.float64) + z.astype(np.float64)).astype(np.float32)
    expected = ops.fma_f32(x, r, z)
    assert (expected[:h] != naive[:h]).sum() > h // 4  # the ties are real: double rounding differs
    out = np.empty(n, np.float32)
    fma_all(x, r, z, out)
    np.testing.assert_array_equal(out, expected)


# ----------------------------------------------------------------------------- fused epilogue (int8 GEMM)
EPI_CFGS = ([ops.Requant(mode="fixed", fixed_rounding=r, fixed_ties=t) for r in ("double", "single")
             for t in (("half_up", "half_away"), ("half_even", "half_even"), ("half_away", "half_up"))]
            + [ops.Requant(mode="float32", rounding=m, zero_point=z, multiplier_order=o)
               for m in ("half_even", "half_away", "half_up", "floor", "trunc") for z in ("after", "before")
               for o in ("sequential", "fused")])


def _epilogue_case(rng, M=5, nb=3, L=7):
    """int32 GEMM results at the extremes and around ties (accumulators of every parity), per-channel adds."""
    ct = rng.integers(-(2**31), 2**31, (M, nb * L), dtype=np.int64)
    ct[:, :L] = rng.integers(-300, 300, (M, L))  # small values: exact halves under the power-of-two multipliers
    ct[0, -2:] = (-(2**31), 2**31 - 1)
    add = np.array([0, -1, 1, 2**20, -(2**20)], np.int64)[:M]
    ct = np.clip(ct, -(2**31) - add[:, None], 2**31 - 1 - add[:, None])  # |acc| <= 2^31 (single rounding's domain)
    ct[1, 0], ct[2, 0] = -(2**31) + 1, 2**31 - 1  # acc = -2^31, 2^31: the ends of single rounding's domain
    return ct.astype(np.int32), add


@pytest.mark.parametrize("cfg", EPI_CFGS, ids=lambda c: f"{c.mode}-{c.fixed_rounding}-{c.fixed_ties}-{c.rounding}-"
                                                            f"{c.zero_point}-{c.multiplier_order}")
@pytest.mark.parametrize("scales", [(0.5, [1.0], 1.0), (0.02, [0.25, 0.5, 0.125, 1.0, 0.75], 0.01),
                                    (0.0173, [0.0031, 0.012, 0.0007, 0.02, 0.0099], 0.211),
                                    (2.0, [3.0, 1.5, 4.0, 1.25, 2.5], 0.5)])  # multipliers > 1: left shifts
def test_fused_epilogue_equals_reference_requant_and_clamp(cfg, scales):
    """kernels.Epilogue (requant + zero point + clamp + clip count in one pass from the int32 products, narrow
    output) == ops.requantize(reference) then the executor's clamp and count, every value, every channel."""
    rng = np.random.default_rng(7)
    ct, add = _epilogue_case(rng)
    M, nb, L = ct.shape[0], 3, 7
    acc = (ct.astype(np.int64) + add[:, None]).reshape(M, nb, L).transpose(1, 0, 2)  # [nb, M, L]
    sx, sw, sy = scales
    params = ops.make_requant_params(sx, np.array(sw * (M if len(sw) == 1 else 1))[:M], sy, cfg)
    variants = [params]
    if cfg.mode == "float32":  # fbgemm's float bias and oneDNN's pre-scale + bias
        variants += [ops.make_requant_params(sx, np.array(sw * (M if len(sw) == 1 else 1))[:M], sy, cfg,
                                             bias=rng.normal(0, 3, M)),
                     ops.core.make_onednn_requant_params(sx, np.array(sw * (M if len(sw) == 1 else 1))[:M], sy,
                                                         bias=rng.normal(0, 3, M))]
    acc_max = int(np.abs(acc).max())
    for p in variants:
        for zy, (lo, hi), (qmin, qmax), count_low, dt in ((-128, (-128, 127), (-128, 127), True, np.int8),
                                                          (3, (3, 127), (-128, 127), False, np.int8),  # fused ReLU
                                                          (0, (0, 255), (0, 255), True, np.uint8),
                                                          (255, (0, 255), (0, 255), True, np.int64)):
            y, _ = ops.requantize(acc, p, cfg, zy, -(2**62), 2**62, channel_axis=1, impl="reference")
            want = np.clip(y, lo, hi)
            count = int(np.count_nonzero(y > qmax)) + (int(np.count_nonzero(y < qmin)) if count_low else 0)
            for bound in (acc_max, 2**40):  # the proven bound; a larger one (double rounding's general kernel)
                epi = ops.core.fused_epilogue(p, cfg, zy, lo, hi, qmin, qmax, count_low, M, bound)
                if bound > 2**31 and cfg.fixed_rounding == "single" and cfg.mode == "fixed":
                    assert epi is None
                    continue
                assert epi is not None
                out = np.empty((nb, M, L), dt)
                got = epi.run(ct, 0, add, out)
                np.testing.assert_array_equal(out, want)
                assert got == count


def test_fused_epilogue_not_made_outside_its_domain():
    cfg = ops.Requant(mode="fixed", fixed_rounding="single")
    p = ops.make_requant_params(0.02, [0.5], 0.01, cfg)
    assert ops.core.fused_epilogue(p, cfg, 0, -128, 127, -128, 127, True, 4, 2**31) is not None
    assert ops.core.fused_epilogue(p, cfg, 0, -128, 127, -128, 127, True, 4, 2**31 + 1) is None  # single: |acc| > 2^31
    for cfg in (ops.Requant(mode="float32", rounding="stochastic"), ops.Requant(mode="pow2"),
                ops.Requant(mode="fixed", fixed_rounding="single", multiplier_bits=15)):
        p = ops.make_requant_params(0.5, [0.25], 1.0, cfg)
        assert ops.core.fused_epilogue(p, cfg, 0, -128, 127, -128, 127, True, 4, 100) is None


@needs_int_mm
@pytest.mark.parametrize("name", ["int8-tflite", "int8-onnxruntime", "int8-pytorch"])
def test_fused_layers_taken_and_equal_reference(name, mm_calls):
    """In a network the conv/linear layers whose plan is the int8 GEMM run the fused epilogue (no int64
    accumulator tensor), the adds run their table; every tensor and counter == reference."""
    g = tiny_cnn(seed=3)
    qg = compile_model(g, load_profile(name), images(32, seed=5))
    x = images(5, seed=4)
    ref = run_integer(qg, x, "reference")
    env, stats = {qg.input_name: qg.grids[qg.input_name].quantize(x)}, _new_stats(qg)
    fused = []
    for lay, st in zip(qg.layers, stats):
        spec = ops.get(lay.op)
        if lay.op in ("conv2d", "linear"):
            fused.append(spec.fused(lay, env[lay.inputs[0]], qg.grids[lay.inputs[0]], qg.grids[lay.output], True)
                         is not None)
        if lay.op == "add":
            assert spec.table(qg, lay) is not None
        run_layer(qg, lay, env, st, "fast", narrow=True)
        np.testing.assert_array_equal(env[lay.output], ref[lay.output], err_msg=lay.name)
    assert any(fused) and mm_calls


# ----------------------------------------------------------------------------- add by table
@pytest.mark.parametrize("cfg", ADD_CFGS + [ops.Requant(mode="pow2", rounding=m) for m in ("half_even", "floor")],
                         ids=lambda c: f"{c.mode}-{c.fixed_rounding}-{c.fixed_ties}-{c.rounding}-{c.zero_point}-"
                                       f"{c.add_form}")
def test_add_table_equals_reference_on_every_pair(cfg):
    """The add layer's table (every pair of its input grids' values, fused clamp and count) == the reference
    add on all 65,536 pairs, with the layer's ReLU clamp and with narrow/int64 outputs."""
    qg = compile_model(tiny_cnn(seed=3), load_profile("int8-pow2" if cfg.mode == "pow2" else "int8-tflite"),
                       images(32, seed=5))
    lay = next(lay for lay in qg.layers if lay.op == "add")
    ga, gb = qg.grids[lay.inputs[0]], qg.grids[lay.inputs[1]]
    lay.requant = cfg
    a = np.repeat(np.arange(ga.qmin, ga.qmax + 1), gb.qmax - gb.qmin + 1).reshape(1, 1, -1, 4)
    b = np.tile(np.arange(gb.qmin, gb.qmax + 1), ga.qmax - ga.qmin + 1).reshape(1, 1, -1, 4)
    env = {lay.inputs[0]: a.astype(kernels.narrow_dtype(ga.qmin, ga.qmax)),
           lay.inputs[1]: b.astype(kernels.narrow_dtype(gb.qmin, gb.qmax))}
    spec = ops.get("add")
    assert spec.table(qg, lay) is not None
    for clamp in (lay.clamp, (qg.grids[lay.output].zero_point, lay.clamp[1])):
        lay.clamp = clamp
        for narrow in (True, False):
            stf, str_ = _new_stats(qg)[0], _new_stats(qg)[0]
            y, c = spec.execute(qg, lay, dict(env), stf, "fast", 0, narrow)
            wide = {k: v.astype(np.int64) for k, v in env.items()}
            yr, cr = spec.execute(qg, lay, wide, str_, "reference", 0, narrow)
            np.testing.assert_array_equal(y, yr)
            assert c == cr and (y.dtype.itemsize == 1) == narrow


def test_add_table_out_of_range_input_falls_back():
    """A value outside the table (not on the input grid) is not looked up: the kernel path, == reference."""
    qg = compile_model(tiny_cnn(seed=3), load_profile("int8-tflite"), images(32, seed=5))
    lay = next(lay for lay in qg.layers if lay.op == "add")
    spec = ops.get("add")
    a = np.full((1, 4, 2, 2), 5, np.int64)
    a[0, 0, 0, 0] = 1000  # beyond int8
    env = {lay.inputs[0]: a, lay.inputs[1]: np.zeros((1, 4, 2, 2), np.int64)}
    assert spec.fused(qg, lay, env[lay.inputs[0]], env[lay.inputs[1]], False) is None
    st = _new_stats(qg)[0]
    y, c = spec.execute(qg, lay, dict(env), st, "fast", 0, False)
    yr, cr = spec.execute(qg, lay, dict(env), st, "reference", 0, False)
    np.testing.assert_array_equal(y, yr)
    assert c == cr


# ----------------------------------------------------------------------------- threads across the network
@pytest.mark.parametrize("name", builtin_names())
def test_batch_split_over_threads_equals_one_thread_and_reference(name):
    """run_quantized with 2 threads (each batch split into contiguous parts, every layer of a part in its own
    thread; non-thread-safe layers under the lock) == 1 thread == reference: logits and every counter, for
    batches of 1, 2 and odd sizes (stochastic rounding keeps run-wide indices)."""
    from hwsim.execute import run_quantized

    qg = compile_model(tiny_cnn(seed=3), load_profile(name), images(32, seed=5))
    if qg.weight_only:
        pytest.skip("weight-only: float path")
    x = images(7, seed=4)
    prev = numba.get_num_threads()
    try:
        kernels.set_threads(2)
        ref = run_quantized(qg, x, batch_size=7, impl="reference")
        for bs in (1, 2, 5):
            for threads in (1, 2):
                got = run_quantized(qg, x, batch_size=bs, threads=threads)
                np.testing.assert_array_equal(got.logits, ref.logits, err_msg=f"{name} batch {bs} threads {threads}")
                assert [s.to_json() for s in got.layers] == [s.to_json() for s in ref.layers]
    finally:
        kernels.set_threads(prev)


def test_serial_mode_kernels_equal_parallel():
    """The serial twins (batch workers) of max_pool, clamp_count and the table kernel == the parallel ones."""
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (3, 5, 9, 7)).astype(np.int8)
    y = rng.integers(-300, 300, 10001)
    table = rng.integers(-500, 500, 256 * 256).astype(np.int32)
    a, b = rng.integers(-128, 128, 10001).astype(np.int8), rng.integers(-128, 128, 10001).astype(np.int8)
    res = []
    for on in (False, True):
        with kernels.serial_mode(on):
            assert kernels.serial() == on
            mp = np.empty((3, 5, 4, 4), np.int8)
            kernels.max_pool(x, 3, 3, 2, 2, 1, 1, -128, mp)
            cl = np.empty(y.size, np.int8)
            c1 = kernels.clamp_count(y, -128, 127, -128, 127, True, cl)
            tb = np.empty(a.size, np.int16)
            c2 = kernels.table2(a, b, -128, -128, 256, 256, table, -200, 200, -128, 127, False, tb)
            res.append((mp, cl, c1, tb, c2))
    for u, v in zip(*res):
        np.testing.assert_array_equal(u, v)
    assert res[0][2] == int(np.count_nonzero((y > 127) | (y < -128)))
    assert not kernels.serial()


@pytest.mark.parametrize("cfg", [ops.Requant(mode="fixed"), ops.Requant(mode="float32", zero_point="before"),
                                 ops.Requant(mode="float32", rounding="half_away")], ids=lambda c: c.mode + c.zero_point)
def test_serial_twins_of_mul_and_ort_float_path_equal_parallel(cfg):
    """ops.mul's fused kernel and ORT's float-path (de)quantizers (hwsim.mlas) in a batch worker (serial twins)
    == the parallel kernels == the reference, on every int8 pair and a broadcast (squeeze-excite) shape."""
    from hwsim import mlas

    ramp = np.arange(-128, 128, dtype=np.int8)
    a, b = np.meshgrid(ramp, ramp)
    a, b = a.reshape(2, 128, 16, 16), b.reshape(2, 128, 16, 16)
    kw = dict(a_scale=0.05, a_zero_point=3, b_scale=0.02, b_zero_point=-2, y_scale=0.07, y_zero_point=1,
              qmin=-128, qmax=127, cfg=cfg)
    got = []
    for on in (False, True):
        with kernels.serial_mode(on):
            spy = []
            real_ser, real_par = mul_mod._mul_ser, mul_mod._mul_par
            try:
                mul_mod._mul_ser = lambda *x: (spy.append("ser"), real_ser(*x))[1]
                mul_mod._mul_par = lambda *x: (spy.append("par"), real_par(*x))[1]
                y = ops.mul(a, b, **kw)
                se = ops.mul(a, b[:, :, :1, :1], **kw)
            finally:
                mul_mod._mul_ser, mul_mod._mul_par = real_ser, real_par
            assert spy == ["ser" if on else "par"] * 2
            d = mlas.dequantize(a, 0.05, 3)
            q = mlas.quantize(d * np.float32(1.7), 0.07, 1)
            got.append((y, se, d, q))
    for u, v in zip(*got):
        for s, t in zip(u if isinstance(u, tuple) else (u,), v if isinstance(v, tuple) else (v,)):
            np.testing.assert_array_equal(s, t)
    np.testing.assert_array_equal(got[0][0][0], ops.mul(a, b, impl="reference", **kw)[0])
    assert not kernels.serial()


@pytest.mark.parametrize("case", [dict(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), k=3),
                                  dict(stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1), k=3),
                                  dict(stride=(2, 1), padding=(0, 2, 1, 0), dilation=(2, 1), k=3),
                                  dict(stride=(1, 1), padding=(2, 2, 2, 2), dilation=(1, 1), k=5),
                                  # the stride-phase planes (kernels.depthwise_acc): strides 2-3, width dilation
                                  dict(stride=(2, 2), padding=(2, 2, 2, 2), dilation=(1, 1), k=5),
                                  dict(stride=(1, 3), padding=(0, 1, 2, 0), dilation=(1, 2), k=3),
                                  dict(stride=(3, 2), padding=(2, 0, 0, 3), dilation=(2, 3), k=3),
                                  # stride 2 in width (the pair loop, kernels._dw_phases_w2) at odd widths
                                  dict(stride=(2, 2), padding=(1, 0, 1, 0), dilation=(1, 1), k=3, w=7),
                                  dict(stride=(1, 2), padding=(0, 0, 0, 1), dilation=(1, 1), k=3, w=9)],
                         ids=lambda c: f"s{c['stride']}p{c['padding']}d{c['dilation']}k{c['k']}")
@pytest.mark.parametrize("grid", GRIDS)
def test_exact_depthwise_kernel_equals_reference(grid, case):
    """An exact depthwise conv runs the direct kernel (kernels.depthwise_run) == the reference, batch 1 and 3,
    workers 1 and 2; a batch outside the planned range is replanned."""
    rng = np.random.default_rng(11)
    (xlo, xhi), zx, (wlo, whi), zw = grid
    C = 6
    x = rng.integers(xlo, xhi + 1, (3, C, 9, case.get("w", 8)))
    x[0, :, :2], x[-1, :, -2:] = xlo, xhi
    w = rng.integers(wlo, whi + 1, (C, 1, case["k"], case["k"]))
    b = rng.integers(-(2**20), 2**20, C)
    kw = dict(x_zero_point=zx, w_zero_point=zw, stride=case["stride"], padding=case["padding"],
              dilation=case["dilation"], groups=C, acc=ops.Accumulator(bits=32))
    plan = kernels.conv_plan(w, b, zx, np.full(C, zw), case["stride"], case["padding"], case["dilation"], C,
                             ops.Accumulator(bits=32), xlo, xhi)
    assert plan.depthwise is not None
    prev = numba.get_num_threads()
    try:
        for threads in (1, 2):
            kernels.set_threads(threads)
            for xs in (x[:1], x):
                _same(ops.conv2d(xs, w, b, **kw), ops.conv2d(xs, w, b, impl="reference", **kw))
                out, pe, ae = kernels.conv2d_accumulate(xs, w, b, zx, np.full(C, zw), case["stride"], case["padding"],
                                                        case["dilation"], C, ops.Accumulator(bits=32), plan=plan)
                np.testing.assert_array_equal(out, ops.conv2d(xs, w, b, impl="reference", **kw)[0])
        for col in (0, -1):  # outside the plan's range (first column, last: an odd width's tail): planned again
            wide = x.copy()
            wide[1, 0, 3, col] = xhi + 1000
            out, _, _ = kernels.conv2d_accumulate(wide, w, b, zx, np.full(C, zw), case["stride"], case["padding"],
                                                  case["dilation"], C, ops.Accumulator(bits=32), plan=plan)
            np.testing.assert_array_equal(out, ops.conv2d(wide, w, b, impl="reference", **kw)[0])
    finally:
        kernels.set_threads(prev)


def test_depthwise_phase_planes_and_range_check_at_every_column():
    """kernels._dw_phases (both depthwise routes' input step) == the zero-padded plane x - z_x split into its stride
    phases, built with numpy, over widths odd and even, left paddings 0-2, strides 1-3 (2 in width: the pair loop,
    kernels._dw_phases_w2), narrow and int64 inputs; and a value just outside [lo, hi] in any row and column is
    reported (the caller then plans again)."""
    rng = np.random.default_rng(5)
    for dt, (lo, hi) in ((np.uint8, (3, 250)), (np.int64, (-100, 90))):
        for W in (6, 7):
            for pl in (0, 1, 2):
                for sh, sw in ((1, 1), (2, 2), (1, 2), (2, 3), (3, 1)):
                    H, pt, zx = 5, 1, 7
                    x = rng.integers(lo, hi + 1, (2, 3, H, W)).astype(dt)
                    Ho, Wo = (pt + H + 1 - 3) // sh + 1, (pl + W + 1 - 3) // sw + 1
                    geom = np.array([3, 3, sh, sw, 1, 1, Ho, Wo], np.int64)
                    _, _, _, (_, _, _, Hq, Wq) = kernels._dw_blocks(x, geom, (pt, 1, pl, 1))
                    plane = Hq * Wq
                    padded = np.zeros((Hq * sh + sh, Wq * sw + sw), np.int64)
                    padded[pt:pt + H, pl:pl + W] = x[1, 2].astype(np.int64) - zx
                    want = np.concatenate([padded[p::sh][:Hq, :][:, q::sw][:, :Wq].ravel()
                                           for p in range(sh) for q in range(sw)])
                    phases = np.full(sh * sw * plane, 99, np.int32)
                    assert not kernels._dw_phases(x, 1, 2, zx, lo, hi, pt, pl, sh, sw, plane, Wq, phases)
                    np.testing.assert_array_equal(phases, want, err_msg=f"{dt} W{W} pl{pl} s{sh}{sw}")
                    for r in (0, H - 1):
                        for col in range(W):
                            for v in (lo - 1, hi + 1):
                                bad = x.copy()
                                bad[1, 2, r, col] = v
                                assert kernels._dw_phases(bad, 1, 2, zx, lo, hi, pt, pl, sh, sw, plane, Wq, phases), \
                                    (dt, W, pl, sh, sw, r, col, v)


def test_depthwise_kernel_not_taken_where_events_are_possible():
    w = np.full((4, 1, 3, 3), 127)
    plan = kernels.conv_plan(w, None, 0, np.zeros(4, np.int64), (1, 1), (1, 1, 1, 1), (1, 1), 4,
                             ops.Accumulator(bits=12, overflow="saturate"), -128, 127)
    assert plan.depthwise is None  # 9 * 127 * 128 > 2^11: the MAC-array model runs


@pytest.mark.parametrize("pad_value", [-128, 0, 100])
def test_max_pool_kernel_equals_reference_at_the_padding(pad_value):
    """kernels.max_pool (clipped windows) == the reference where the padding value exceeds the pixels, at
    asymmetric padding, stride > kernel and odd sizes, parallel and serial."""
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 50, (2, 3, 7, 6))
    for kernel, stride, padding in (((3, 3), (2, 2), (1, 1, 1, 1)), ((2, 3), (3, 1), (1, 0, 2, 1)),
                                    ((1, 1), (2, 2), (0, 0, 0, 0)), ((3, 2), (1, 2), (2, 2, 1, 1))):
        want = ops.max_pool2d(x, kernel, stride, padding, pad_value, impl="reference")
        for on in (False, True):
            with kernels.serial_mode(on):
                np.testing.assert_array_equal(ops.max_pool2d(x, kernel, stride, padding, pad_value), want)
