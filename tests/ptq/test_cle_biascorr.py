"""CLE (WP eq. 20-22), high-bias absorption (eq. 23-24), bias correction (eq. 27, 28, Banner), replace_weights."""

import numpy as np
import pytest

from hwsim.compile import _float_graph, calibrate, compile_model, fold_graph
from hwsim.errors import HwsimError
from hwsim.execute import run_integer, run_quantized
from hwsim.floatref import run_float
from hwsim.graph import GraphBuilder
from hwsim.profile import load_profile
from hwsim.ptq import bn_stats, cle, replace_weights
from hwsim.ptq.biascorr import analytic_input_mean, correct_biases
from tests.nets import images


def chain_net(seed=0, c=6, beta_shift=0.0, relu6=False):
    """conv-bn-relu -> depthwise-bn-relu -> 1x1 conv-bn-relu -> gap -> linear, with unbalanced channels."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,))

    def bn(name, h, n):
        gamma = rng.uniform(0.2, 1.5, n) * rng.choice([0.05, 1, 8], n)  # unbalanced channel ranges
        return b.batchnorm(name, h, gamma.astype(np.float32), (rng.normal(0, 0.3, n) + beta_shift).astype(np.float32),
                           rng.normal(0, 0.1, n).astype(np.float32), rng.uniform(0.5, 2, n).astype(np.float32))

    act = b.relu6 if relu6 else b.relu
    h = b.conv2d("conv1", "input", rng.normal(0, 0.5, (c, 1, 3, 3)).astype(np.float32), padding=1)
    h = act("r1", bn("bn1", h, c))
    h = b.conv2d("dw", h, rng.normal(0, 0.5, (c, 1, 3, 3)).astype(np.float32), padding=1, groups=c)
    h = act("r2", bn("bn2", h, c))
    h = b.conv2d("pw", h, rng.normal(0, 0.3, (8, c, 1, 1)).astype(np.float32))
    h = b.relu("r3", bn("bn3", h, 8))
    h = b.global_avgpool("gap", h)
    h = b.flatten("flat", h)
    h = b.linear("fc", h, rng.normal(0, 0.5, (3, 8)).astype(np.float32), bias=np.zeros(3, np.float32))
    return b.build(outputs=[h])


def _float_all(folded, x):
    return run_float(_float_graph(folded), x, return_all=True)


def test_cle_leaves_float_outputs_unchanged_and_equalizes_ranges():
    g = chain_net()
    x = images(8, seed=4)
    folded, _ = fold_graph(g)
    before = _float_all(folded, x)
    eq = cle.clone_graph(folded)
    bn = bn_stats(g)
    notes = cle.equalize(eq, bn)
    assert "2 conv pair(s) equalized" in notes[-1]
    after = _float_all(eq, x)
    out = folded.outputs[0]
    np.testing.assert_allclose(after[out], before[out], rtol=1e-5, atol=1e-5 * np.abs(before[out]).max())
    for t in ("r1", "r2"):  # the equalized intermediate tensors change (per channel), the next layer's do not
        assert not np.allclose(after[t], before[t])
    np.testing.assert_allclose(after["r3"], before["r3"], rtol=1e-5, atol=1e-5 * np.abs(before["r3"]).max())
    # WP eq. 22: after equalization r1_i = r2_i = sqrt(r1_i r2_i) for the last pair (dw -> pw) exactly,
    # and the whole chain has converged for the first pair
    by = {n.name: n for n in eq.nodes}
    w_dw, w_pw = eq.param(by["dw"], "weight"), eq.param(by["pw"], "weight")
    r1 = np.abs(w_dw).reshape(w_dw.shape[0], -1).max(1)
    r2 = np.abs(w_pw).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    w1 = eq.param(by["conv1"], "weight")
    np.testing.assert_allclose(np.abs(w1).reshape(6, -1).max(1), np.abs(w_dw).reshape(6, -1).max(1), rtol=1e-4)
    # the BN statistics followed the scaling: conv1's output is ~ N(β/s, (γ/s)²)
    b0 = bn_stats(g)
    s = b0["conv1"]["beta"] / bn["conv1"]["beta"]
    np.testing.assert_allclose(b0["conv1"]["gamma"] / bn["conv1"]["gamma"], s, rtol=1e-9)
    # the original folded graph is untouched
    np.testing.assert_array_equal(_float_all(folded, x)[out], before[out])


def test_cle_skips_relu6_pairs_unless_asked():
    g = chain_net(relu6=True)
    folded, _ = fold_graph(g)
    eq = cle.clone_graph(folded)
    notes = cle.equalize(eq, bn_stats(g))
    assert "0 conv pair(s) equalized" in notes[-1] and "2 ReLU6 pair(s) left alone" in notes[-1]
    eq2 = cle.clone_graph(folded)
    notes = cle.equalize(eq2, bn_stats(g), relu6="relu")
    assert "ReLU6 replaced by ReLU" in notes[0]


def test_high_bias_absorption_is_exact_where_the_relu_is_active():
    g = chain_net(beta_shift=4.0)  # large β: c = max(0, β − 3γ) > 0 on many channels
    x = images(16, seed=5)
    folded, _ = fold_graph(g)
    bn = bn_stats(g)
    ab = cle.clone_graph(folded)
    notes = cle.absorb_high_bias(ab, bn)
    assert "1 pair(s)" in notes[0] and "1 skipped" in notes[0]  # dw -> pw absorbed; conv1 -> dw is padded
    c = np.maximum(0, bn_stats(g)["dw"]["beta"] - 3 * np.abs(bn_stats(g)["dw"]["gamma"]))
    assert c.any()
    before, after = _float_all(folded, x), _float_all(ab, x)
    pre = before["r2::pre"]  # the dw layer's pre-activation
    active = np.all(pre >= c.reshape(1, -1, 1, 1), axis=1)  # all channels active at this pixel (1x1 conv2)
    assert active.sum() > 50
    y0, y1 = before["r3::pre"], after["r3::pre"]
    m = np.broadcast_to(active[:, None], y0.shape)
    np.testing.assert_allclose(y1[m], y0[m], rtol=1e-5, atol=1e-5 * np.abs(y0).max())
    # and the absorbed layer's activation range per channel shrank by c
    mx0, mx1 = before["r2"].max(axis=(0, 2, 3)), after["r2"].max(axis=(0, 2, 3))
    np.testing.assert_allclose(mx1, np.maximum(mx0 - c, 0), rtol=1e-5, atol=1e-4)


def _shift(qg, calib, name):
    """Mean output shift per channel of layer ``name`` from weight quantization, on float inputs."""
    from hwsim.ptq.biascorr import _channel_mean, _float_weight, _layer_out

    lay = qg.layer(name)
    x = calib[lay.inputs[0]]
    w = _float_weight(qg, lay)
    yq = _layer_out(lay, x, lay.w_float.astype(np.float64)) + lay.b_float.reshape((1, -1) + (1,) * (x.ndim - 2))
    y = _layer_out(lay, x, w) + qg.model.param(next(n for n in qg.model.nodes if n.name == name), "bias").reshape(
        (1, -1) + (1,) * (x.ndim - 2))
    return _channel_mean(yq - y)


def test_empirical_bias_correction_removes_the_mean_shift():
    g = chain_net(seed=1)
    x = images(64, seed=6)
    p = load_profile("w3-fp")  # weight-only: the shift is the weight error alone
    qg = compile_model(g, p, x)
    folded, _ = fold_graph(g)
    calib = calibrate(folded, x)
    before = {n: np.abs(_shift(qg, calib, n)).max() for n in ("conv1", "dw", "pw", "fc")}
    correct_biases(qg, calib, "empirical", bn_stats(g))
    after = {n: np.abs(_shift(qg, calib, n)).max() for n in ("conv1", "dw", "pw", "fc")}
    assert max(before.values()) > 1e-2
    for n in before:
        assert after[n] <= 1e-4 * max(before[n], 1e-3), n


def gaussian_net(seed=0, n_img=400):
    """conv1 (1x1, on Gaussian inputs) -> BN with the data's true statistics -> relu -> 1x1 conv2."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n_img, 3, 4, 4)).astype(np.float32)
    w1 = rng.normal(0, 0.7, (5, 3, 1, 1)).astype(np.float32)
    pre = np.einsum("oi,nihw->nohw", w1[:, :, 0, 0], x)
    mu, var = pre.mean(axis=(0, 2, 3)), pre.var(axis=(0, 2, 3))
    b = GraphBuilder(input_shape=(3, 4, 4), mean=(0.0,) * 3, std=(1.0,) * 3)
    h = b.conv2d("conv1", "input", w1)
    h = b.batchnorm("bn1", h, rng.uniform(0.5, 1.5, 5).astype(np.float32), rng.normal(0.3, 0.5, 5).astype(np.float32),
                    mu.astype(np.float32), (var - 1e-6).astype(np.float32), eps=1e-6)
    h = b.relu("r1", h)
    h = b.conv2d("conv2", h, rng.normal(0.2, 0.5, (4, 5, 1, 1)).astype(np.float32), bias=np.zeros(4, np.float32))
    return b.build(outputs=[h]), x


def test_analytic_bias_correction_agrees_with_empirical_on_gaussian_preactivations():
    g, x = gaussian_net()
    p = load_profile("w2-fp")
    folded, _ = fold_graph(g)
    calib = calibrate(folded, x)
    bn = bn_stats(g)
    q_emp, q_ana = compile_model(g, p, x), compile_model(g, p, x)
    b0 = q_emp.layer("conv2").b_float.copy()
    correct_biases(q_emp, calib, "empirical", bn)
    notes = correct_biases(q_ana, calib, "analytic", bn)
    assert "conv1" in notes[1]  # the first layer's input has no BN statistics
    d_emp = q_emp.layer("conv2").b_float - b0
    d_ana = q_ana.layer("conv2").b_float - b0
    assert np.abs(d_emp).max() > 1e-2
    np.testing.assert_allclose(d_ana, d_emp, rtol=0.05, atol=0.02 * np.abs(d_emp).max())
    # E[relu(z)] from BN equals the data's mean of the ReLU output
    ex = analytic_input_mean(q_ana, q_ana.layer("conv2"), bn)
    np.testing.assert_allclose(ex, calib["r1"].mean(axis=(0, 2, 3)), rtol=0.03)


def test_banner_bias_correction_matches_weight_moments_and_removes_the_shift():
    rng = np.random.default_rng(0)
    b = GraphBuilder(input_shape=(40, 1, 1), mean=(0.0,) * 40, std=(1.0,) * 40)
    w = (rng.laplace(0.05, 0.3, (6, 40)) * rng.uniform(0.5, 2, (6, 1))).astype(np.float32)
    h = b.linear("fc", b.flatten("flat", "input"), w, bias=np.zeros(6, np.float32))
    g = b.build(outputs=[h])
    x = rng.normal(0.7, 1.0, (500, 40, 1, 1)).astype(np.float32)  # i.i.d. features with a non-zero mean
    p = load_profile("w3-fp")
    qg = compile_model(g, p, x)
    folded, _ = fold_graph(g)
    calib = calibrate(folded, x)
    shift0 = _shift(qg, calib, "fc")
    correct_biases(qg, calib, "banner", {})
    lay = qg.layer("fc")
    np.testing.assert_allclose(lay.w_float.std(axis=1), w.std(axis=1), rtol=1e-5)  # std matched via the scale
    shift1 = _shift(qg, calib, "fc")
    assert np.abs(shift1).max() < 0.1 * np.abs(shift0).max()


@pytest.mark.parametrize("profile", ["int8-tflite", "w4a4", "int8-fbgemm", "w4-fp"])
def test_replace_weights_recomputes_everything(profile):
    g = chain_net(seed=2)
    x = images(16, seed=7)
    p = load_profile(profile)
    qg = compile_model(g, p, x)
    ref = compile_model(g, p, x)
    rng = np.random.default_rng(0)
    new = {}
    for lay in qg.mac_layers:
        new[lay.name] = rng.integers(lay.w_qmin, lay.w_qmax + 1, lay.w_q.shape)
    bias = {lay.name: rng.normal(0, 0.1, lay.w_q.shape[0]) for lay in qg.mac_layers}
    replace_weights(qg, new, biases=bias)
    for lay in qg.mac_layers:
        r = ref.layer(lay.name)
        np.testing.assert_array_equal(lay.w_q, new[lay.name])
        zp = np.broadcast_to(np.asarray(lay.w_zero_point), (lay.w_q.shape[0],)).reshape((-1,) + (1,) * (lay.w_q.ndim - 1))
        np.testing.assert_allclose(lay.w_float, (new[lay.name] - zp) * lay.w_scale.reshape(zp.shape), rtol=1e-6)
        np.testing.assert_array_equal(lay.w_scale, r.w_scale)  # same grid
        if not qg.weight_only:
            assert lay.certificate is not None
            if p.bias.form != "float32":
                s = qg.grids[lay.inputs[0]].scale * lay.w_scale
                assert np.all(np.abs(lay.bias_q - bias[lay.name] / s) <= 0.5 + 1e-9)
    if not qg.weight_only:
        fast, refi = run_integer(qg, x, "fast"), run_integer(qg, x, "reference")
        for k in fast:
            np.testing.assert_array_equal(fast[k], refi[k])
    # the same weights installed again give the original graph back bit for bit
    back = compile_model(g, p, x)
    replace_weights(back, {lay.name: lay.w_q for lay in ref.mac_layers},
                    biases={lay.name: lay.b_float for lay in ref.mac_layers})
    np.testing.assert_array_equal(run_quantized(back, x).logits, run_quantized(ref, x).logits)


def test_replace_weights_rejects_bad_input():
    g = chain_net()
    qg = compile_model(g, load_profile("w4a4"), images(4))
    lay = qg.layer("dw")
    with pytest.raises(HwsimError, match="'nope', which is not a conv2d/linear"):
        replace_weights(qg, {"nope": lay.w_q})
    with pytest.raises(HwsimError, match="leave the grid"):
        replace_weights(qg, {"dw": lay.w_q * 0 + lay.w_qmax + 1})
    with pytest.raises(HwsimError, match="must be integers of shape"):
        replace_weights(qg, {"dw": lay.w_q.astype(np.float32)})
    with pytest.raises(HwsimError, match="finite"):
        replace_weights(qg, biases={"dw": np.full(6, np.nan)})


def test_bn_recipe_sets_activation_grids_from_the_bn_parameters():
    from hwsim.compile import int_grid, scale_zero_point
    from hwsim.ptq.ranges import bn_range

    g = chain_net(seed=3)
    p = load_profile("int8-per-tensor")
    qg = compile_model(g, p, images(8), recipe="bn")
    st = bn_stats(g)
    fmt = p.activations
    qmin, qmax = int_grid(fmt, fmt.bits)
    for layer, tensor in (("conv1", "r1"), ("dw", "r2"), ("pw", "r3")):
        lo, hi = bn_range(st[layer]["gamma"], st[layer]["beta"], "relu")  # WP eq. 18-19, α = 6
        s, z = scale_zero_point(lo, hi, fmt, qmin, qmax)
        assert (qg.grids[tensor].scale, qg.grids[tensor].zero_point) == (float(s), int(z))
    assert any(n.startswith("bn ranges: ") and "input" in n for n in qg.notes)


def test_calibrate_fills_one_array_per_tensor_batch_by_batch():
    """calibrate over several batches (the last one partial) == each batch's float pass concatenated, value for
    value, float32, one C-contiguous array per tensor; a single batch is that batch's own arrays."""
    g = chain_net(seed=2)
    folded, _ = fold_graph(g)
    x = images(23, seed=4)
    fg = _float_graph(folded)
    parts = [run_float(fg, x[i:i + 8], return_all=True) for i in range(0, 23, 8)]
    got = calibrate(folded, x, batch_size=8)
    assert set(got) == set(parts[0])
    for k, v in got.items():
        want = np.concatenate([np.asarray(p[k], np.float32) for p in parts])
        assert v.dtype == np.float32 and v.flags.c_contiguous and v.shape == want.shape, k
        np.testing.assert_array_equal(v, want, err_msg=k)
    one = calibrate(folded, x[:8], batch_size=8)
    for k, v in one.items():
        np.testing.assert_array_equal(v, np.asarray(parts[0][k], np.float32), err_msg=k)
