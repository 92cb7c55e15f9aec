"""hwsim compare: fake-quant mirror vs simulator, and forced effects reported on the right layer."""

import numpy as np
import pytest

pytest.importorskip("torch")

from hwsim.compare import compare  # noqa: E402
from hwsim.compile import compile_model  # noqa: E402
from hwsim.errors import HwsimError  # noqa: E402
from hwsim.execute import accuracy, run_quantized  # noqa: E402
from hwsim.experiments import Context  # noqa: E402
from hwsim.floatref import run_float  # noqa: E402
from hwsim.profile import Override, load_profile  # noqa: E402
from tests.nets import images, tiny_cnn  # noqa: E402


def _ctx(g, n=64, seed=31):
    x = images(n, seed=seed)
    fl = run_float(g, x)
    y = np.argmax(fl, 1)  # labels: the float model's own predictions
    return Context(g, "tiny", None, "synthetic", x, y, fl, accuracy(fl, y))


def _with_override(profile, match, **settings):
    ov = Override(match, None, tuple(sorted(settings.items())))
    import dataclasses

    return dataclasses.replace(profile, overrides=profile.overrides + (ov,))


@pytest.fixture(scope="module")
def net():
    return tiny_cnn(seed=5, channels=6, classes=5)


def test_expressible_profile_matches_fake_quant(net):
    """int8, 32-bit accumulator, float32 requant, half_even: same predictions, <= 1 LSB, explained."""
    ctx = _ctx(net, 128)
    qg = compile_model(net, load_profile("int8-fbgemm"), images(64, seed=2))
    r = compare(ctx, qg)
    assert r.prediction_agreement == 1.0
    assert r.first_divergent_layer is None and r.first_causal_layer is None
    for d in r.layers:
        assert d.max_lsb <= 1, d
        assert d.overflow_events == 0
        if d.max_lsb:
            assert d.cause, d
            assert "propagated" in d.cause or "near a tie" in d.cause, d.cause


@pytest.mark.parametrize("settings, layer, cause", [
    ({"accumulator.bits": 10, "accumulator.overflow": "saturate"}, "conv3", "accumulator saturate at 10 bits"),
    ({"accumulator.bits": 10, "accumulator.overflow": "wrap"}, "conv3", "accumulator wrap at 10 bits"),
    ({"accumulator.partial_bits": 8, "accumulator.rows": 2}, "conv3", "partial-sum overflow"),
    ({"requant.rounding": "trunc"}, "conv3", "requant rounding trunc"),
])
def test_forced_effect_reported_on_the_right_layer(net, settings, layer, cause):
    base = load_profile("int8-fbgemm")
    prof = _with_override(base, layer, **settings)
    ctx = _ctx(net, 64)
    qg = compile_model(net, prof, images(64, seed=2))
    r = compare(ctx, qg)
    by = {d.name: d for d in r.layers}
    assert by[layer].max_lsb > 0 and cause in by[layer].cause, by[layer]
    if "accumulator" in cause:  # a narrow accumulator is a cause of its own, not propagated noise
        assert r.first_causal_layer == layer and by[layer].isolated_max_lsb > 1
    for upstream in ("conv1", "dw"):
        assert by[upstream].max_lsb <= 1 and cause not in by[upstream].cause


@pytest.mark.parametrize("name, cause", [
    ("int8-tflite", "fixed-point requant (double rounding"),
    ("int8-pow2", "shift requant rounding half_up"),
])
def test_requant_effects_fake_quant_cannot_express(net, name, cause):
    ctx = _ctx(net, 64)
    qg = compile_model(net, load_profile(name), images(64, seed=2))
    r = compare(ctx, qg)
    assert any(cause in d.cause for d in r.layers if d.max_lsb > 0), [(d.name, d.max_lsb, d.cause) for d in r.layers]


def test_mirror_equals_simulator_logits_for_weight_path(net):
    """Sanity: with an exact accumulator and float32 requant the two chains agree closely end to end."""
    ctx = _ctx(net, 32)
    qg = compile_model(net, load_profile("int8-fbgemm"), images(64, seed=2))
    from frontends.pytorch.fakequant import mirror_codes

    fq, _ = mirror_codes(qg, ctx.x_test)
    sim = run_quantized(qg, ctx.x_test).logits
    assert np.max(np.abs(fq - sim)) <= 2 * qg.grids[qg.output_name].scale + 1e-6


@pytest.mark.slow
def test_bundled_mobilenetv2_tie_rule_is_the_whole_fake_quant_gap():
    """int4-pow2 shifts round half up; QAT fake-quant (torch.round) rounds half to even. On the bundled
    MobileNetV2 that tie rule alone separates fake-quant from the integers; the mirror with the
    profile's rounding agrees with the simulator."""
    from frontends.pytorch.fakequant import mirror_codes
    from hwsim.execute import run_quantized
    from hwsim.experiments import compile_for, load_context

    ctx = load_context("mobilenetv2", "default", limit=300)
    qg = compile_for(ctx, load_profile("int4-pow2"))
    sim = np.argmax(run_quantized(qg, ctx.x_test).logits, 1)
    even = np.argmax(mirror_codes(qg, ctx.x_test)[0], 1)
    prof = np.argmax(mirror_codes(qg, ctx.x_test, rounding="profile")[0], 1)
    assert np.mean(prof == sim) >= 0.99
    assert np.mean(even == sim) <= 0.95
    r = compare(ctx, qg)
    assert r.first_causal_layer is None  # every > 1 LSB difference is accumulated 1-LSB tie noise
    assert all("shift requant rounding half_up" in d.cause for d in r.layers
               if d.max_lsb and d.kind in ("conv", "depthwise", "linear") and "propagated" not in d.cause)


def test_fq_rounding_profile_removes_the_tie_rule_cause(net):
    """With the mirror rounding like the hardware (half_up shifts), int8-pow2 differences are no longer
    attributed to the shift rounding, and the CLI shows which rounding the mirror used."""
    from click.testing import CliRunner

    from hwsim.cli import cli

    ctx = _ctx(net, 64)
    qg = compile_model(net, load_profile("int8-pow2"), images(64, seed=2))
    even, prof = compare(ctx, qg), compare(ctx, qg, fq_rounding="profile")
    assert any("shift requant rounding half_up" in d.cause for d in even.layers)
    assert not any("shift requant rounding" in d.cause for d in prof.layers)
    assert sum(d.frac_diff for d in prof.layers) < sum(d.frac_diff for d in even.layers)
    with pytest.raises(HwsimError, match="fake-quant rounding 'nearest'"):
        compare(ctx, qg, fq_rounding="nearest")
    res = CliRunner().invoke(cli, ["compare", "-m", "mobilenetv2", "-p", "int4-pow2", "--limit", "20", "-q",
                                   "--fq-rounding", "profile"])
    assert res.exit_code == 0 and "rounding: the profile's own mode" in res.output, res.output


def test_float_bias_form_is_mirrored(net):
    """bias.form = float32 (fbgemm): the mirror adds the same float bias; still <= 1 LSB, same predictions."""
    ctx = _ctx(net, 64)
    qg = compile_model(net, load_profile("int8-fbgemm", {"bias.form": "float32"}), images(64, seed=2))
    assert all(not lay.bias_q.any() and lay.requant_params.bias_term is not None for lay in qg.mac_layers)
    r = compare(ctx, qg)
    assert r.prediction_agreement == 1.0 and max(d.max_lsb for d in r.layers) <= 1
    with pytest.raises(HwsimError, match="bias.form = 'float32' needs requant.mode = 'float32'"):
        compile_model(net, load_profile("int8-tflite", {"bias.form": "float32"}), images(16))


def test_a_float_path_mac_layer_is_explained_as_float_accumulation(net):
    """Under ORT's QDQ float path (requant.mac_form = float32_mlas) a conv has no integer accumulator or requant
    multiplier: a difference it makes on its own is named as float32 accumulation, not as acc*M rounding."""
    from hwsim.compare import _cause
    from hwsim.execute import LayerStats

    qg = compile_model(net, load_profile("int8-onnxruntime-qdq-float"), images(64, seed=2))
    lay = next(lay for lay in qg.layers if lay.op == "conv2d")
    cause = _cause(qg, lay, {}, 1, LayerStats(lay.name, lay.op, "mac"))
    assert cause.startswith("float32 accumulation (float32_mlas") and "acc·M" not in cause
    qg = compile_model(net, load_profile("int8-onnxruntime"), images(64, seed=2))
    assert not _cause(qg, next(lay for lay in qg.layers if lay.op == "conv2d"), None, 0, None).startswith("float32 acc")
