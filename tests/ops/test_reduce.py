"""mean over H, W and avg_pool2d with count_include_pad=False (hwsim.ops.reduce): fast == reference, engines."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim import fixedpoint as fp
from hwsim import ops
from hwsim.errors import HwsimError
from hwsim.ops import reduce as R

f32 = np.float32


def _pool_cases(rng):
    for k, s, H in ((3, 1, 5), (3, 2, 6), (2, 2, 5), (3, 2, 7), (5, 1, 4)):
        p = max((-(-H // s) - 1) * s + k - H, 0)  # TFLite SAME
        yield (k, k), (s, s), (p // 2, p - p // 2, p // 2, p - p // 2), H


@pytest.mark.parametrize("form", R.POOL_FORMS)
def test_avg_pool_exclude_pad_fast_equals_reference(form):
    rng = np.random.default_rng(abs(hash(form)) % 2**32)
    roundings = fp.ROUNDING_MODES if form != "float32_dequantize" else ("half_even", "half_away", "floor")
    for bits in range(2, 9):
        for signed in (True, False):
            lo, hi = fp.int_range(bits, signed)
            for kernel, stride, pad, H in _pool_cases(rng):
                x = rng.integers(lo, hi + 1, (2, 3, H, H))
                x[0, 0, 0, :3] = [lo, hi, lo][:H]
                z = int(rng.integers(lo, hi + 1))
                for r in roundings:
                    kw = dict(count_include_pad=False, form=form, scale=float(f32(rng.uniform(0.01, 1))),
                              index_offset=5)
                    yf = R.avg_pool2d(x, kernel, stride, pad, z, r, 3, **kw)
                    yr = R.avg_pool2d(x, kernel, stride, pad, z, r, 3, impl="reference", **kw)
                    assert np.array_equal(yf, yr), (bits, signed, kernel, stride, pad, r)
                    if form != "float32_dequantize":
                        assert yf.min() >= lo and yf.max() <= hi


def test_valid_tap_counts_and_no_padding_equals_include_pad():
    c = R.valid_tap_counts(5, 5, (3, 3), (2, 2), (1, 1, 1, 1), 3, 3)
    assert c.tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]
    x = np.random.default_rng(0).integers(-128, 128, (1, 2, 6, 6))
    for r in ("half_even", "half_away", "floor"):
        assert np.array_equal(R.avg_pool2d(x, 3, 1, 0, 7, r, count_include_pad=False),
                              ops.avg_pool2d(x, 3, 1, (0, 0, 0, 0), 7, r))
    # with padding the divisor matters: a constant image keeps its value only without the padding taps
    xc = np.full((1, 1, 4, 4), 50)
    assert np.all(R.avg_pool2d(xc, 3, 1, (1, 1, 1, 1), 0, count_include_pad=False) == 50)
    assert R.avg_pool2d(xc, 3, 1, (1, 1, 1, 1), 0)[0, 0, 0, 0] == 22  # 200 / 9


def test_forms_differ_on_ties():
    # sums that are exact ties: "exact" and "raw_sum" disagree when z is odd (half_even) / signs differ
    x = np.array([[[[0, 1], [2, 3]]]])  # sum 6 over 4 -> 1.5
    z = 1
    e = R.avg_pool2d(x, 2, 2, 0, z, "half_even", count_include_pad=False)
    r = R.avg_pool2d(x, 2, 2, 0, z, "half_even", count_include_pad=False, form="raw_sum")
    assert (e.item(), r.item()) == (1, 2)  # 1 + rint(0.5) = 1; rint(1.5) = 2


def _mean_kw(rng, bits, signed, same):
    lo, hi = fp.int_range(bits, signed)
    zi = int(rng.integers(lo, hi + 1))
    si = float(f32(rng.uniform(0.01, 0.1)))
    zo, so = (zi, si) if same else (int(rng.integers(lo, hi + 1)), float(f32(rng.uniform(0.01, 0.1))))
    return lo, hi, zi, si, zo, so


@pytest.mark.parametrize("form", R.MEAN_FORMS)
def test_mean_fast_equals_reference(form):
    rng = np.random.default_rng(abs(hash(form)) % 2**32)
    roundings = fp.ROUNDING_MODES if form in ("exact", "raw_sum", "float32_multiplier") else ("half_even",)
    for bits in range(2, 9):
        for signed in (True, False):
            for same in (True, False) if form not in ("raw_sum", "float32_multiplier") else (True,):
                for H, W in ((1, 1), (3, 3), (4, 6), (7, 7)):
                    lo, hi, zi, si, zo, so = _mean_kw(rng, bits, signed, same)
                    x = rng.integers(lo, hi + 1, (2, 3, H, W))
                    for r in roundings:
                        kw = dict(form=form, index_offset=2, seed=1)
                        yf = R.mean_hw(x, si, zi, so, zo, lo, hi, r, **kw)
                        yr = R.mean_hw(x, si, zi, so, zo, lo, hi, r, impl="reference", **kw)
                        assert np.array_equal(yf, yr) and yf.shape == (2, 3, 1, 1), (bits, signed, same, H, W, r)


def test_mean_exact_is_global_avg_pool_and_requant():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, 4, 5, 5))
    assert np.array_equal(R.mean_hw(x, 0.05, 3, 0.05, 3, -128, 127)[..., 0, 0], ops.global_avg_pool(x, 3))
    # different grids, pow2: mean on the input grid, then an exact shift
    y = R.mean_hw(x, 2**-4, 0, 2**-5, 0, -128, 127, cfg=ops.Requant(mode="pow2"))
    assert np.array_equal(y[..., 0, 0], np.clip(2 * ops.global_avg_pool(x, 0), -128, 127))


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.integers(2, 8), st.booleans(), st.integers(1, 6), st.integers(1, 6), st.data())
def test_property_mean_of_constant_is_constant_and_in_bounds(bits, signed, H, W, data):
    lo, hi = fp.int_range(bits, signed)
    v = data.draw(st.integers(lo, hi))
    z = data.draw(st.integers(lo, hi))
    x = np.full((1, 2, H, W), v)
    for form in R.MEAN_FORMS:
        y = R.mean_hw(x, 0.03125, z, 0.03125, z, lo, hi, data.draw(st.sampled_from(("half_even", "half_away"))),
                      form=form)
        assert np.all(y == v), form
    r = data.draw(st.sampled_from(fp.ROUNDING_MODES))
    xr = np.random.default_rng(data.draw(st.integers(0, 99))).integers(lo, hi + 1, (1, 2, H + 2, W + 2))
    yp = R.avg_pool2d(xr, 3, 1, 1, z, r, count_include_pad=False)
    assert yp.shape == xr.shape and yp.min() >= xr.min() - 1 and yp.max() <= xr.max() + 1


def test_bad_input_one_line_errors():
    x = np.zeros((1, 1, 4, 4), np.int64)
    with pytest.raises(HwsimError, match="padding"):
        R.avg_pool2d(x, 2, 1, (2, 0, 0, 0), 0, count_include_pad=False)
    with pytest.raises(HwsimError, match="pool form"):
        R.avg_pool2d(x, 2, 1, 0, 0, count_include_pad=False, form="float32_multiplier")
    with pytest.raises(HwsimError, match="raw_sum"):
        R.avg_pool2d(x, 2, 1, 0, 0, form="raw_sum")
    with pytest.raises(HwsimError, match="keeps the input grid"):
        R.mean_hw(x, 0.1, 0, 0.2, 0, -128, 127, form="raw_sum")
    with pytest.raises(HwsimError, match="in_scale"):
        R.mean_hw(x, -1.0, 0, 0.2, 0, -128, 127)
    with pytest.raises(HwsimError, match="scale"):
        R.avg_pool2d(x, 2, 1, 0, 0, count_include_pad=False, form="float32_dequantize")


# ----------------------------------------------------------------------------- engines
def _torch_q(x, s, z, signed):
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._make_per_tensor_quantized_tensor(torch.tensor(x, dtype=torch.int8 if signed else torch.uint8),
                                                       s, z)


def _count(a, b):
    return int(np.count_nonzero(a != b))


@pytest.mark.parametrize("signed", [True, False])
def test_torch_quantized_mean_and_avg_pool_exclude_pad_identical(signed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(21)
    lo, hi = (-128, 127) if signed else (0, 255)
    mism = {"raw_sum": 0, "exact": 0, "raw_half_away": 0}
    for i in range(40):
        H = int(rng.integers(2, 8))
        x = rng.integers(lo, hi + 1, (2, 3, H, H))
        z = int(rng.integers(lo, hi + 1)) | 1  # odd zero points make the zero point's place visible
        s = float(f32(rng.uniform(0.01, 0.1)))
        qx = _torch_q(x, s, min(z, hi), signed)
        z = min(z, hi)
        ym = torch.mean(qx, dim=(2, 3), keepdim=True).int_repr().numpy().astype(np.int64)
        mism["raw_sum"] += _count(R.mean_hw(x, s, z, s, z, lo, hi, form="raw_sum"), ym)
        mism["exact"] += _count(R.mean_hw(x, s, z, s, z, lo, hi), ym)
        mism["raw_half_away"] += _count(R.mean_hw(x, s, z, s, z, lo, hi, "half_away", form="raw_sum"), ym)
        k, st_, p = 3, int(rng.integers(1, 3)), 1
        yp = torch.nn.functional.avg_pool2d(qx, k, st_, padding=p, count_include_pad=False)
        yp = yp.int_repr().numpy().astype(np.int64)
        mism["raw_sum"] += _count(R.avg_pool2d(x, k, st_, p, z, count_include_pad=False, form="raw_sum"), yp)
        mism["exact"] += _count(R.avg_pool2d(x, k, st_, p, z, count_include_pad=False), yp)
        mism["raw_half_away"] += _count(R.avg_pool2d(x, k, st_, p, z, "half_away", count_include_pad=False,
                                                     form="raw_sum"), yp)
    assert mism["raw_sum"] == 0, mism
    assert mism["exact"] > 0 and mism["raw_half_away"] > 0, mism


def _tflite():
    pytest.importorskip("ai_edge_litert.interpreter")
    from tests.core import test_litert_engine as T

    return T


@pytest.mark.parametrize("resolver", ["reference", "optimized"])
def test_litert_average_pool_same_padding_identical(resolver):
    T = _tflite()
    rng = np.random.default_rng(22)
    mism = {"raw_half_away": 0, "raw_half_even": 0, "exact_half_away": 0, "include_pad": 0}
    for i in range(30):
        kernel, stride, pad, H = list(_pool_cases(rng))[i % 5]
        x = rng.integers(-128, 128, (1, 3, H, H))
        z, s = int(rng.integers(-128, 128)), float(f32(rng.uniform(0.01, 0.1)))

        def options(b, k=kernel[0], st_=stride[0]):
            T.tflite.Pool2DOptionsStart(b)
            T.tflite.Pool2DOptionsAddPadding(b, 0)  # SAME
            for f in ("StrideW", "StrideH"):
                getattr(T.tflite, "Pool2DOptionsAdd" + f)(b, st_)
            for f in ("FilterWidth", "FilterHeight"):
                getattr(T.tflite, "Pool2DOptionsAdd" + f)(b, k)
            T.tflite.Pool2DOptionsAddFusedActivationFunction(b, 0)
            return T.tflite.Pool2DOptionsEnd(b)
        xt = x.transpose(0, 2, 3, 1)
        Ho = -(-H // stride[0])
        tensors = [T._i8(xt.shape, s, z), T._i8((1, Ho, Ho, 3), s, z)]
        ye = T.run(T.build_model(tensors, T.BO.AVERAGE_POOL_2D, [0], [1], T.BOpt.Pool2DOptions, options, [0]),
                   resolver, xt).transpose(0, 3, 1, 2)
        kw = dict(count_include_pad=False, form="raw_sum")
        mism["raw_half_away"] += _count(R.avg_pool2d(x, kernel, stride, pad, z, "half_away", **kw), ye)
        mism["raw_half_even"] += _count(R.avg_pool2d(x, kernel, stride, pad, z, "half_even", **kw), ye)
        mism["exact_half_away"] += _count(R.avg_pool2d(x, kernel, stride, pad, z, "half_away",
                                                       count_include_pad=False), ye)
        mism["include_pad"] += _count(R.avg_pool2d(x, kernel, stride, pad, z, "half_away"), ye)
    assert mism["raw_half_away"] == 0, mism
    assert all(v > 0 for k, v in mism.items() if k != "raw_half_away"), mism


@pytest.mark.parametrize("resolver", ["reference", "optimized"])
def test_litert_mean_identical(resolver):
    T = _tflite()
    rng = np.random.default_rng(23)
    forms = ("tflite_reference", "tflite_optimized", "exact")
    mism = dict.fromkeys(forms, 0)
    for i in range(40):
        H, W = ((7, 7), (4, 4), (3, 5), (2, 2))[i % 4]
        x = rng.integers(-128, 128, (2, 6, H, W))
        lo, hi, zi, si, zo, so = _mean_kw(rng, 8, True, i % 3 != 0)
        if i % 2:
            si = so = 2.0**-5

        def options(b):
            T.tflite.ReducerOptionsStart(b)
            T.tflite.ReducerOptionsAddKeepDims(b, True)
            return T.tflite.ReducerOptionsEnd(b)
        xt = x.transpose(0, 2, 3, 1)
        axes = dict(shape=[2], type=T.TT.INT32, scale=np.array([0.0]), zp=np.array([0]),
                    data=np.array([1, 2], np.int32))
        tensors = [T._i8(xt.shape, si, zi), axes, T._i8((2, 1, 1, 6), so, zo)]
        ye = T.run(T.build_model(tensors, T.BO.MEAN, [0, 1], [2], T.BOpt.ReducerOptions, options, [0]), resolver,
                   xt).transpose(0, 3, 1, 2)
        for f in forms:
            mism[f] += _count(R.mean_hw(x, si, zi, so, zo, -128, 127, "half_away", form=f), ye)
    want = "tflite_reference" if resolver == "reference" else "tflite_optimized"
    assert mism[want] == 0, mism
    assert all(v > 0 for k, v in mism.items() if k != want), mism


@pytest.mark.parametrize("signed", [True, False])
def test_onnxruntime_qlinearaveragepool_exclude_pad_identical(signed):
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from tests.engines import ort_session

    rng = np.random.default_rng(24)
    lo, hi = (-128, 127) if signed else (0, 255)
    T = TensorProto.INT8 if signed else TensorProto.UINT8
    mism = {"float32_dequantize": 0, "exact": 0, "raw_sum": 0, "include_pad": 0}
    for i in range(30):
        kernel, stride, pad, H = list(_pool_cases(rng))[i % 5]
        x = rng.integers(lo, hi + 1, (1, 3, H, H))
        z, s = int(rng.integers(lo, hi + 1)), float(f32(rng.uniform(0.01, 0.1)))
        node = helper.make_node("QLinearAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft",
                                kernel_shape=list(kernel), strides=list(stride),
                                pads=[pad[0], pad[2], pad[1], pad[3]], count_include_pad=0)
        inits = [helper.make_tensor("xs", TensorProto.FLOAT, [], [s]), helper.make_tensor("xz", T, [], [z]),
                 helper.make_tensor("ys", TensorProto.FLOAT, [], [s]), helper.make_tensor("yz", T, [], [z])]
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", T, list(x.shape))],
                              [helper.make_tensor_value_info("y", T, None)], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        ye = ort_session(m, False).run(None, {"x": x.astype(np.int8 if signed else np.uint8)})[0].astype(np.int64)
        for f in ("float32_dequantize", "exact", "raw_sum"):
            mism[f] += _count(np.clip(R.avg_pool2d(x, kernel, stride, pad, z, count_include_pad=False, form=f,
                                                   scale=s), lo, hi), ye)
        mism["include_pad"] += _count(np.clip(ops.avg_pool2d(x, kernel, stride, pad, z, form="float32_dequantize",
                                                             scale=s), lo, hi), ye)
    assert mism["float32_dequantize"] == 0, mism
    assert all(v > 0 for k, v in mism.items() if k != "float32_dequantize"), mism


@pytest.mark.parametrize("signed", [True, False])
def test_onnxruntime_qlinearglobalaveragepool_is_the_float32_multiplier_mean(signed):
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from tests.engines import ort_session

    rng = np.random.default_rng(25)
    lo, hi = (-128, 127) if signed else (0, 255)
    T = TensorProto.INT8 if signed else TensorProto.UINT8
    mism = {"float32_multiplier": 0, "exact": 0, "raw_sum": 0}
    for i in range(30):
        H, W = ((7, 7), (4, 4), (3, 5), (2, 6))[i % 4]
        x = rng.integers(lo, hi + 1, (2, 5, H, W))
        z, s = int(rng.integers(lo, hi + 1)), float(f32(rng.uniform(0.01, 0.1)))
        node = helper.make_node("QLinearGlobalAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"],
                                domain="com.microsoft", channels_last=0)
        inits = [helper.make_tensor("xs", TensorProto.FLOAT, [], [s]), helper.make_tensor("xz", T, [], [z]),
                 helper.make_tensor("ys", TensorProto.FLOAT, [], [s]), helper.make_tensor("yz", T, [], [z])]
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", T, list(x.shape))],
                              [helper.make_tensor_value_info("y", T, None)], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        ye = ort_session(m, False).run(None, {"x": x.astype(np.int8 if signed else np.uint8)})[0].astype(np.int64)
        for f in mism:
            mism[f] += _count(R.mean_hw(x, s, z, s, z, lo, hi, form=f), ye)
    assert mism["float32_multiplier"] == 0, mism
    assert mism["exact"] > 0 and mism["raw_sum"] > 0, mism
