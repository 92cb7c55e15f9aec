"""AdaRound / AdaQuant: every layer's output MSE below nearest rounding, integers on the existing grid,
seeded determinism, fast == reference on the installed integers, and the float mode of the mirror."""

import copy

import numpy as np
import pytest
import torch

from frontends.pytorch.adaround import (adaquant_weights, adaround_weights, beta_schedule, install_weights,
                                        rectified_sigmoid, rectified_sigmoid_inverse, rounding_regularizer)
from frontends.pytorch.fakequant import FakeQuantModel, _activation, linear_forward
from hwsim.compile import compile_model
from hwsim.data import calibration_subset
from hwsim.errors import HwsimError
from hwsim.execute import run_integer
from hwsim.experiments import load_context
from hwsim.floatref import normalize, run_float
from hwsim.profile import load_profile

ITERS = 120


@pytest.fixture(scope="module")
def ctx():
    return load_context("smallcnn_baseline", limit=64)


@pytest.fixture(scope="module")
def calib(ctx):
    return normalize(ctx.graph, calibration_subset(ctx.data, 128, seed=0))


@pytest.fixture(scope="module")
def qg3(ctx, calib):
    return compile_model(ctx.graph, load_profile("w3a3"), calib)


@pytest.fixture(scope="module")
def rounded(qg3, calib):
    torch.manual_seed(0)
    return adaround_weights(qg3, calib, iters=ITERS, seed=1)


def test_rectified_sigmoid_regularizer_and_schedule():
    v = torch.linspace(-20, 20, 401, dtype=torch.float64)
    h = rectified_sigmoid(v)
    assert float(h.min()) == 0.0 and float(h.max()) == 1.0  # the stretch reaches 0 and 1 exactly
    assert bool((h[1:] >= h[:-1]).all())
    r = torch.tensor([0.0, 0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(rectified_sigmoid(rectified_sigmoid_inverse(r)), r)
    # f_reg (WP eq. 34): 0 for h in {0, 1}, 1 per element at h = 0.5
    assert float(rounding_regularizer(torch.tensor([0.0, 1.0]), 2.0)) == 0.0
    assert float(rounding_regularizer(torch.tensor([0.5, 0.5]), 20.0)) == 2.0
    assert beta_schedule(0, 100, (20.0, 2.0), 0.2) is None and beta_schedule(19, 100, (20.0, 2.0), 0.2) is None
    assert beta_schedule(20, 100, (20.0, 2.0), 0.2) == 20.0
    assert beta_schedule(60, 100, (20.0, 2.0), 0.2) == pytest.approx(11.0)
    assert beta_schedule(100, 100, (20.0, 2.0), 0.2) == pytest.approx(2.0)


def test_float_mode_of_the_mirror_is_the_float_network(ctx, qg3):
    x = ctx.x_test[:16]
    fm = FakeQuantModel(qg3, float_activations=True, float_weights=True)
    assert fm.batchnorm == "fold"  # the mirror says how it handles BN (the profile's batchnorm)
    np.testing.assert_allclose(fm(torch.from_numpy(x)).numpy(), run_float(ctx.graph, x), rtol=1e-4, atol=1e-4)


def _layer_mse(qg, calib, weights):
    """Independent oracle: per layer, WP eq. 35's error ‖f_a(W x + b) − f_a(W̃ x̂ + b̂)‖² / n with x̂ from the
    mirror of ``qg`` with ``weights`` installed, for W̃ = nearest rounding (qg's own) and W̃ = ``weights``."""
    q2 = copy.deepcopy(qg)
    install_weights(q2, weights)
    mirror = FakeQuantModel(q2, float_activations=qg.weight_only)
    floatm = FakeQuantModel(qg, float_activations=True, float_weights=True)
    near = FakeQuantModel(qg, float_activations=qg.weight_only)
    x = torch.from_numpy(calib)
    _, env_q = mirror(x, return_tensors=True)
    _, env_f = floatm(x, return_tensors=True)
    out = {}
    for lay in qg.mac_layers:
        xq, xf = env_q[lay.inputs[0]], env_f[lay.inputs[0]]
        wf, bf = floatm.weights[lay.name]
        tgt = _activation(linear_forward(lay, xf, wf, bf), lay.activation)
        errs = []
        for m in (near, mirror):
            w, b = m.weights[lay.name]
            errs.append(float(((_activation(linear_forward(lay, xq, w, b), lay.activation) - tgt) ** 2).mean()))
        out[lay.name] = errs
    return out


def test_adaround_lowers_every_layers_output_mse(qg3, calib, rounded):
    mse = _layer_mse(qg3, calib, rounded)
    assert set(mse) == {lay.name for lay in qg3.mac_layers}
    for name, (nearest, ada) in mse.items():
        assert ada < nearest, (name, nearest, ada)


def test_adaround_integers_are_on_the_grid_floor_or_ceil(qg3, rounded):
    nodes = {n.name: n for n in qg3.model.nodes}
    changed = 0
    for lay in qg3.mac_layers:
        w_q = rounded[lay.name]
        assert w_q.dtype == np.int64 and w_q.shape == lay.w_q.shape
        assert w_q.min() >= lay.w_qmin and w_q.max() <= lay.w_qmax
        w = qg3.model.param(nodes[lay.name], "weight").astype(np.float64)
        shp = (-1,) + (1,) * (w.ndim - 1)
        base = np.floor(w / lay.w_scale.reshape(shp)) + np.broadcast_to(np.asarray(lay.w_zero_point), (w.shape[0],)).reshape(shp)
        lo, hi = np.clip(base, lay.w_qmin, lay.w_qmax), np.clip(base + 1, lay.w_qmin, lay.w_qmax)
        assert np.all((w_q == lo) | (w_q == hi)), lay.name
        changed += int((w_q != lay.w_q).sum())
    assert changed > 0  # it did choose differently from nearest rounding somewhere


def test_adaround_is_deterministic_for_a_seed(qg3, calib, rounded):
    torch.manual_seed(123)  # the global RNG plays no part
    again = adaround_weights(qg3, calib, iters=ITERS, seed=1)
    for k in rounded:
        np.testing.assert_array_equal(again[k], rounded[k])


def test_installed_integers_run_fast_equals_reference(ctx, qg3, rounded):
    q2 = copy.deepcopy(qg3)
    install_weights(q2, rounded)
    fast, ref = run_integer(q2, ctx.x_test[:2], "fast"), run_integer(q2, ctx.x_test[:2], "reference")
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k], err_msg=k)


def test_adaround_weight_only_profile_and_progress(ctx, calib):
    qg = compile_model(ctx.graph, load_profile("w3-fp"), calib)
    seen = []
    w = adaround_weights(qg, calib[:64], iters=40, progress=lambda *a: seen.append(a))
    assert [s[0] for s in seen] == [lay.name for lay in qg.mac_layers]
    assert [s[1:3] for s in seen] == [(i, len(qg.mac_layers)) for i in range(len(qg.mac_layers))]
    assert all(np.isfinite(s[3]) and s[3] >= 0 for s in seen)
    for lay in qg.mac_layers:
        assert lay.w_qmin <= w[lay.name].min() and w[lay.name].max() <= lay.w_qmax


def test_adaquant_lowers_every_layers_preactivation_mse(qg3, calib):
    res = adaquant_weights(qg3, calib, iters=ITERS, seed=0)
    q2 = copy.deepcopy(qg3)
    install_weights(q2, res)
    floatm = FakeQuantModel(qg3, float_activations=True, float_weights=True)
    near, new = FakeQuantModel(qg3), FakeQuantModel(q2)
    x = torch.from_numpy(calib)
    _, env_q = new(x, return_tensors=True)
    _, env_f = floatm(x, return_tensors=True)
    for lay in qg3.mac_layers:
        w_q, b = res[lay.name]
        assert w_q.dtype == np.int64 and lay.w_qmin <= w_q.min() and w_q.max() <= lay.w_qmax
        assert b.dtype == np.float32 and b.shape == (w_q.shape[0],)
        tgt = linear_forward(lay, env_f[lay.inputs[0]], *floatm.weights[lay.name])
        e = [float(((linear_forward(lay, env_q[lay.inputs[0]], *m.weights[lay.name]) - tgt) ** 2).mean())
             for m in (near, new)]
        assert e[1] < e[0], (lay.name, e)


def test_bad_arguments_are_one_line_errors(qg3, calib):
    with pytest.raises(HwsimError, match="iters"):
        adaround_weights(qg3, calib, iters=0)
    with pytest.raises(HwsimError, match="calib_images"):
        adaround_weights(qg3, calib.astype(np.int64))
    with pytest.raises(HwsimError, match="target"):
        adaquant_weights(qg3, calib, target="other")
    with pytest.raises(HwsimError, match="QuantizedGraph"):
        adaround_weights("model.hwsim", calib)
