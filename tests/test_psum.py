"""The Brevitas #524 scenario: 16-bit partial sums feeding a 32-bit accumulator, on the bundled model.

"How can I simulate a 16-bit partial sum and a 32-bit accumulator?" — the executor must count the
partial-sum events on exactly the layers where they happen (checked layer by layer against the
numpy reference op fed the same integer inputs), none on the 32-bit accumulator, and agree with the
static certificate: a layer whose partial-sum headroom is >= 0 cannot have an event.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hwsim import ops
from hwsim.cli import cli
from hwsim.execute import _new_stats, run_layer
from hwsim.experiments import compile_for, load_context
from hwsim.profile import load_profile

N = 48


@pytest.fixture(scope="module")
def psum_run():
    ctx = load_context(None, "default", limit=N)
    qg = compile_for(ctx, load_profile("int8-psum16"))
    x = ctx.x_test
    env = {qg.input_name: qg.grids[qg.input_name].quantize(x)}
    stats = _new_stats(qg)
    inputs = {}
    for lay, st in zip(qg.layers, stats):
        inputs[lay.name] = env[lay.inputs[0]]
        run_layer(qg, lay, env, st, "fast")
    return qg, stats, inputs


def _reference_events(qg, lay, x):
    gx = qg.grids[lay.inputs[0]]
    if lay.op == "conv2d":
        a = lay.attrs
        _, st = ops.conv2d(x, lay.w_q, lay.bias_q, x_zero_point=gx.zero_point, w_zero_point=lay.w_zero_point,
                           stride=tuple(a["stride"]), padding=tuple(a["padding"]), dilation=tuple(a["dilation"]),
                           groups=a["groups"], acc=lay.accumulator, impl="reference")
    else:
        _, st = ops.linear(x.reshape(len(x), -1), lay.w_q, lay.bias_q, x_zero_point=gx.zero_point,
                           w_zero_point=lay.w_zero_point, acc=lay.accumulator, impl="reference")
    return int(st.partial_events), int(st.acc_events)


@pytest.mark.slow
def test_partial_sum_events_on_the_right_layers(psum_run):
    qg, stats, inputs = psum_run
    macs = [(lay, st) for lay, st in zip(qg.layers, stats) if lay.op in ("conv2d", "linear")]
    assert macs
    for lay, st in macs:
        assert lay.accumulator.partial_bits == 16 and lay.accumulator.bits == 32
        ref_p, ref_a = _reference_events(qg, lay, inputs[lay.name])
        assert (st.partial_events, st.acc_events) == (ref_p, ref_a), lay.name
        assert st.acc_events == 0, f"{lay.name}: the 32-bit accumulator is certified and must not overflow"
        assert lay.certificate.headroom_bits is not None and min(lay.certificate.headroom_bits) >= 0
        if st.partial_events:
            # events only where the certificate said a chunk sum can leave 16 bits
            assert min(lay.certificate.partial_headroom_bits) < 0, lay.name
    # on real MNIST images every conv layer's uint8 x int8 chunk sums leave int16
    hit = {lay.name for lay, st in macs if st.partial_events}
    assert {lay.name for lay, _ in macs if lay.op == "conv2d"} <= hit


def test_certified_partial_stage_has_no_events(psum_run):
    """Same model with 24-bit partial sums: every layer certified, zero events, logits unchanged vs unbounded."""
    ctx = load_context(None, "default", limit=N)
    wide = compile_for(ctx, load_profile("int8-psum16", {"accumulator.partial_bits": "24"}))
    none = compile_for(ctx, load_profile("int8-psum16", {"accumulator.partial_bits": "none"}))
    for lay in wide.layers:
        if lay.certificate is not None:
            assert lay.certificate.certified and min(lay.certificate.partial_headroom_bits) >= 0
    from hwsim.execute import run_quantized
    a, b = run_quantized(wide, ctx.x_test), run_quantized(none, ctx.x_test)
    assert sum(s.partial_events + s.acc_events for s in a.layers) == 0
    np.testing.assert_array_equal(a.logits, b.logits)


def test_cli_reports_partial_events_per_layer():
    res = CliRunner().invoke(cli, ["run", "--profile", "int8-psum16", "--limit", str(N), "--json", "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    layers = {lay["name"]: lay for lay in doc["layers"]}
    assert any(lay["partial_events"] > 0 for lay in layers.values())
    for lay in layers.values():
        if lay.get("certified") is not None:
            assert lay["acc_events"] == 0
            assert lay["partial_headroom_bits"] is not None
            if lay["partial_events"]:
                assert lay["partial_headroom_bits"] < 0 and lay["certified"] is False


def test_run_json_reports_min_partial_bits_only_with_a_partial_sum_stage():
    import json

    from click.testing import CliRunner

    from hwsim.cli import cli

    def layers(*args):
        r = CliRunner().invoke(cli, ["run", "--limit", "8", "--json", "-q", *args])
        assert r.exit_code == 0, r.output
        return [x for x in json.loads(r.output)["layers"] if x["op"] in ("conv2d", "linear")]

    assert all(x["min_partial_bits"] is None for x in layers("-p", "int8-tflite"))
    assert all(x["min_partial_bits"] is not None for x in layers("-p", "int8-psum16"))
