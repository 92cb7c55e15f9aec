"""compile + execute: folding, golden integers, fast == reference, weight-only, dead channels."""

import numpy as np
import pytest

from hwsim import ops
from hwsim.compile import _float_graph, compile_model, fold_graph
from hwsim.execute import run_integer, run_quantized, weight_only_graph
from hwsim.floatref import run_float
from hwsim.graph import GraphBuilder
from hwsim.profile import builtin_names, load_profile
from tests.nets import images, tiny_cnn


def test_fold_keeps_the_float_function():
    g = tiny_cnn()
    x = images()
    folded, dead = fold_graph(g, "fold")
    assert not dead
    assert not any(n.op in ("batchnorm", "relu", "relu6") for n in folded.nodes)
    np.testing.assert_allclose(run_float(_float_graph(folded), x), run_float(g, x), rtol=1e-4, atol=1e-4)


def test_dead_bn_channel_detected_zeroed_and_float_predictions_unchanged():
    g = tiny_cnn(dead_channel=True)
    x = images(64)
    folded, dead = fold_graph(g, "fold")
    assert [(d["layer"], d["channel"]) for d in dead] == [("dw", 1)]
    w = folded.tensors[next(n for n in folded.nodes if n.name == "dw").params["weight"]]
    assert not w[1].any()
    ref, new = run_float(g, x), run_float(_float_graph(folded), x)
    np.testing.assert_array_equal(np.argmax(ref, 1), np.argmax(new, 1))
    np.testing.assert_allclose(new, ref, rtol=1e-4, atol=1e-4)
    qg = compile_model(g, load_profile("int8-per-tensor"), x)
    assert qg.dead_channels and "dead BatchNorm" in qg.notes[0]


@pytest.mark.parametrize("name", builtin_names())
def test_executor_fast_equals_reference_for_every_builtin_profile(name):
    g = tiny_cnn(seed=3)
    x = images(8, seed=4)
    qg = compile_model(g, load_profile(name), images(32, seed=5))
    if qg.weight_only:
        pytest.skip("weight-only: float path")
    fast, ref = run_integer(qg, x, "fast"), run_integer(qg, x, "reference")
    assert fast.keys() == ref.keys()
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k], err_msg=f"{name}: tensor {k}")


def test_whole_network_equals_a_chain_of_reference_ops():
    """Logits of the executor == the same layers called one by one through hwsim.ops (reference)."""
    g = tiny_cnn(seed=7)
    x = images(6, seed=8)
    prof = load_profile("int8-tflite")
    qg = compile_model(g, prof, images(32, seed=9))
    G = qg.grids
    L = {lay.name: lay for lay in qg.layers}

    def mac(name, xq):
        lay = L[name]
        gx, gy = G[lay.inputs[0]], G[lay.output]
        if lay.op == "conv2d":
            acc, _ = ops.conv2d(xq, lay.w_q, lay.bias_q, x_zero_point=gx.zero_point, w_zero_point=lay.w_zero_point,
                                stride=tuple(lay.attrs["stride"]), padding=tuple(lay.attrs["padding"]),
                                dilation=tuple(lay.attrs["dilation"]), groups=lay.attrs["groups"],
                                acc=lay.accumulator, impl="reference")
        else:
            acc, _ = ops.linear(xq.reshape(len(xq), -1), lay.w_q, lay.bias_q, x_zero_point=gx.zero_point,
                                w_zero_point=lay.w_zero_point, acc=lay.accumulator, impl="reference")
        params = ops.make_requant_params(gx.scale, lay.w_scale, gy.scale, lay.requant)
        y, _ = ops.requantize(acc, params, lay.requant, gy.zero_point, *lay.clamp, channel_axis=1)
        return y

    xq = G["input"].quantize(x)
    h1 = mac("conv1", xq)
    h2 = mac("dw", h1)
    h3 = mac("conv3", h2)
    ga, gb, gy = G[L["add"].inputs[0]], G[L["add"].inputs[1]], G[L["add"].output]
    s, _ = ops.add(h3, h1, a_scale=ga.scale, a_zero_point=ga.zero_point, b_scale=gb.scale, b_zero_point=gb.zero_point,
                   y_scale=gy.scale, y_zero_point=gy.zero_point, qmin=L["add"].clamp[0], qmax=L["add"].clamp[1],
                   cfg=L["add"].requant)
    p = ops.max_pool2d(s, (2, 2), (2, 2), (0, 0, 0, 0), gy.qmin)
    gp = ops.global_avg_pool(p, gy.zero_point, prof.requant.rounding).reshape(len(x), -1)
    logits_q = mac("fc", gp)
    out = run_quantized(qg, x, batch_size=4, keep_tensors=False)
    np.testing.assert_array_equal(G[qg.output_name].dequantize(logits_q), out.logits)


def test_golden_hand_computed_linear_layer():
    """One linear layer under a pow2 profile; every integer computed by hand below."""
    b = GraphBuilder(input_shape=(1, 1, 2), mean=(0.0,), std=(1.0,))
    h = b.flatten("flat", "input")
    w = np.array([[0.5, -0.25], [0.125, 0.5]], np.float32)
    h = b.linear("fc", h, w, bias=np.array([0.25, -0.125], np.float32))
    g = b.build(outputs=[h])
    prof = load_profile("int8-pow2", {"weights.granularity": "per_tensor", "weights.pow2_rounding": "ceil",
                                      "activations.pow2_rounding": "ceil"})
    calib = np.array([[[[1.0, -1.0]]], [[[-0.5, 0.5]]]], np.float32)
    qg = compile_model(g, prof, calib)
    # input range |x| <= 1 -> 1/127 -> ceil to 2^-6; weights |w| <= 0.5 -> 0.5/127 -> 2^-7
    assert qg.grids["input"].scale == 2.0**-6 and qg.grids["input"].zero_point == 0
    lay = qg.layer("fc")
    np.testing.assert_array_equal(lay.w_scale, [2.0**-7, 2.0**-7])
    np.testing.assert_array_equal(lay.w_q, [[64, -32], [16, 64]])
    np.testing.assert_array_equal(lay.bias_q, [0.25 * 2**13, -0.125 * 2**13])  # s_b = 2^-13
    # output calibration: y = xW^T + b on calib -> [1.0, -0.5] and [-0.25, 0.1875]; |y| <= 1 -> 2^-6
    assert qg.grids["fc"].scale == 2.0**-6
    x = np.array([[[[0.75, 0.3]]]], np.float32)
    xq = np.array([48, 19])  # 0.75 * 64 = 48, 0.3 * 64 = 19.2 -> 19
    acc = np.array([2048 + 48 * 64 + 19 * -32, -1024 + 48 * 16 + 19 * 64])  # [4512, 960]
    # requant: shift right by 13 - 6 = 7, round half up: 4512 / 128 = 35.25 -> 35; 960 / 128 = 7.5 -> 8
    expect = np.array([[35, 8]])
    env = run_integer(qg, x)
    np.testing.assert_array_equal(env["input"].reshape(-1), xq)
    assert acc.tolist() == [4512, 960]
    np.testing.assert_array_equal(env["fc"], expect)


def test_weight_only_logits_equal_float32_math_on_dequantized_weights():
    g = tiny_cnn(seed=11)
    x = images(8, seed=12)
    qg = compile_model(g, load_profile("w4-fp"), images(32, seed=13))
    out = run_quantized(qg, x)
    # independent: dequantize every weight by hand and run the folded float graph
    fg = _float_graph(qg.model)
    tensors = dict(fg.tensors)
    for lay in qg.mac_layers:
        node = next(n for n in qg.model.nodes if n.name == lay.name)
        zp = np.broadcast_to(np.asarray(lay.w_zero_point), (lay.w_q.shape[0],))
        shp = (-1,) + (1,) * (lay.w_q.ndim - 1)
        tensors[node.params["weight"]] = ((lay.w_q - zp.reshape(shp)) * lay.w_scale.reshape(shp)).astype(np.float32)
        assert len(np.unique(lay.w_q)) <= 16
    fg.tensors.update(tensors)
    np.testing.assert_array_equal(out.logits, run_float(fg, x))
    assert weight_only_graph(qg) is not None


def test_batchnorm_scale_mode_absorbs_bn_into_the_multiplier():
    g = tiny_cnn(seed=21)
    # a negative gamma flips that channel's integer weights so the multiplier stays positive
    g.tensors["bn1.weight"][0] = -abs(g.tensors["bn1.weight"][0])
    x = images(32, seed=22)
    # per-tensor weights: per-channel quantization is invariant to the per-channel BN factor,
    # so only a per-tensor grid tells "quantize W, scale the multiplier" from "quantize γ·W/σ"
    q_fold = compile_model(g, load_profile("int8-per-tensor"), x)
    q_scale = compile_model(g, load_profile("int8-per-tensor", {"batchnorm": "scale"}), x)
    lf, ls = q_fold.layer("conv1"), q_scale.layer("conv1")
    assert np.all(ls.w_scale > 0)
    # scale mode quantizes the unfolded weights: its integer weights differ from the folded ones
    assert not np.array_equal(lf.w_q, ls.w_q)
    unf = g.tensors["conv1.weight"]
    # the dequantized weights still represent the folded weights γ·W/√(σ²+ε) (WP eq. 41)
    f = g.tensors["bn1.weight"] / np.sqrt(g.tensors["bn1.running_var"] + 1e-5)
    folded = unf * f[:, None, None, None]
    err = np.abs(ls.w_float - folded).max(axis=(1, 2, 3))
    assert np.all(err <= 0.5 * ls.w_scale + 1e-6)
    assert np.sign(ls.w_q[0].ravel() @ unf[0].ravel()) < 0  # flipped channel
    a = np.argmax(run_quantized(q_fold, x).logits, 1)
    b = np.argmax(run_quantized(q_scale, x).logits, 1)
    assert np.mean(a == b) > 0.8


@pytest.mark.parametrize("name", ["int8-stochastic", "int4-pow2"])
def test_stochastic_rounding_is_independent_of_the_batch_size(name):
    """Draws depend on (layer seed, image number, position): the same logits for any --batch-size."""
    g = tiny_cnn(seed=13)  # conv, depthwise, add, global average pool, linear
    x = images(23, seed=14)
    prof = load_profile(name, {"requant.rounding": "stochastic", "requant.seed": "5"})
    qg = compile_model(g, prof, images(32, seed=15))
    whole = run_quantized(qg, x, batch_size=64).logits
    for bs in (1, 5, 8):
        np.testing.assert_array_equal(run_quantized(qg, x, batch_size=bs).logits, whole)
    np.testing.assert_array_equal(run_quantized(qg, x, batch_size=5, impl="reference").logits, whole)
    # layers draw independently: per-layer seeds differ
    seeds = [lay.rounding_seed for lay in qg.layers]
    assert len(set(seeds)) == len(seeds)
    # a different seed changes the draws (the property is not vacuous)
    other = compile_model(g, load_profile(name, {"requant.rounding": "stochastic", "requant.seed": "6"}),
                          images(32, seed=15))
    assert not np.array_equal(run_quantized(other, x).logits, whole)


def test_onnxruntime_pool_form_is_used_by_the_executor():
    g = tiny_cnn(seed=16)
    x = images(12, seed=17)
    exact = compile_model(g, load_profile("int8-fbgemm", {"requant.add_form": "ratio_fma"}), images(32, seed=18))
    ort = compile_model(g, load_profile("int8-onnxruntime"), images(32, seed=18))
    gap = next(lay for lay in ort.layers if lay.op == "global_avgpool")
    env = run_integer(ort, x)
    xin = env[gap.inputs[0]]
    gx = ort.grids[gap.inputs[0]]
    want = ops.global_avg_pool(xin, gx.zero_point, form="float32_multiplier", scale=gx.scale)
    np.testing.assert_array_equal(env[gap.output].reshape(want.shape), want)
    np.testing.assert_array_equal(run_integer(ort, x, "reference")[gap.output], env[gap.output])
    assert exact.profile.requant.pool_form == "exact"


def test_conv_bn_without_activation_feeding_an_add_and_a_final_linear_bn():
    """ResNet's conv-bn -> add and a linear -> bn output: folded nodes produce the BN tensor names."""
    rng = np.random.default_rng(0)
    f = np.float32
    b = GraphBuilder(input_shape=(1, 6, 6), mean=(0.5,), std=(0.25,))
    h = b.conv2d("c1", "input", rng.normal(0, .5, (3, 1, 3, 3)).astype(f), padding=1)
    h = b.batchnorm("bn1", h, rng.uniform(0.5, 1.5, 3).astype(f), rng.normal(0, .1, 3).astype(f),
                    rng.normal(0, .1, 3).astype(f), rng.uniform(0.5, 2, 3).astype(f))
    h2 = b.conv2d("c2", h, rng.normal(0, .5, (3, 3, 1, 1)).astype(f))
    h = b.add("add", h2, h)
    h = b.flatten("fl", h)
    h = b.linear("fc", h, rng.normal(0, .5, (2, 108)).astype(f))
    h = b.batchnorm("bn2", h, np.full(2, 2, f), np.zeros(2, f), np.zeros(2, f), np.ones(2, f))
    g = b.build(outputs=[h])
    x = rng.normal(0, 1, (16, 1, 6, 6)).astype(f)
    folded, _ = fold_graph(g)
    assert [n.op for n in folded.nodes] == ["conv2d", "conv2d", "add", "flatten", "linear"]
    np.testing.assert_allclose(run_float(_float_graph(folded), x), run_float(g, x), rtol=1e-4, atol=1e-4)
    qg = compile_model(g, load_profile("int8-fbgemm"), x)
    fast, ref = run_integer(qg, x, "fast"), run_integer(qg, x, "reference")
    np.testing.assert_array_equal(fast[qg.output_name], ref[qg.output_name])
    assert np.mean(np.argmax(run_quantized(qg, x).logits, 1) == np.argmax(run_float(g, x), 1)) >= 0.9
