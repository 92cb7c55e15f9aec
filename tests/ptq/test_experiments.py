"""The recipe in the library API: compile_for, run_profile, plan_sweep (--vary ptq=...), sweep, compare."""

import numpy as np
import pytest

from hwsim import experiments as ex
from hwsim.errors import HwsimError
from hwsim.profile import load_profile


@pytest.fixture(scope="module")
def ctx():
    return ex.load_context("smallcnn_baseline", limit=40)


def test_plan_sweep_crosses_the_ptq_axis_with_the_profile_grid():
    plan = ex.plan_sweep(["w4a4", "int8-tflite"], False, ["ptq=minmax,aciq+bc", "accumulator.bits=16,32"], {})
    assert len(plan) == 8
    assert [(p.name, s, r.name) for p, s, r in plan][:2] == [
        ("w4a4", {"accumulator.bits": "16", "ptq": "minmax"}, "minmax"),
        ("w4a4", {"accumulator.bits": "16", "ptq": "aciq+bc"}, "aciq+bc")]
    plan = ex.plan_sweep(["w4a4"], False, [], {}, recipe="mse")
    assert [(s, r.name) for _, s, r in plan] == [({}, "mse")]
    assert ex.plan_sweep(["w4a4"], False, [], {})[0][2].is_profile


@pytest.mark.parametrize("vary, msg", [(["ptq=minmax,nosuch"], "unknown recipe 'nosuch'"),
                                       (["ptq=mse", "ptq=aciq"], "give the PTQ recipe once")])
def test_plan_sweep_rejects_bad_recipes_up_front(vary, msg):
    with pytest.raises(HwsimError, match=msg):
        ex.plan_sweep(["w4a4"], False, vary, {})


def test_run_profile_and_sweep_name_the_recipe(ctx):
    p = load_profile("w4a4")
    r0 = ex.run_profile(ctx, p)
    assert r0.recipe == "profile" and r0.to_json()["recipe"] == "profile"
    r1 = ex.run_profile(ctx, p, recipe="aciq+bc")
    assert r1.recipe == "aciq+bc" and r1.to_json()["recipe"] == "aciq+bc"
    assert any("bias correction" in n for n in r1.notes)
    res = ex.sweep(ctx, ex.plan_sweep(["w4a4"], False, ["ptq=profile,aciq+bc"], {}))
    assert [r.recipe for r in res] == ["profile", "aciq+bc"]
    assert res[0].sim_accuracy == r0.sim_accuracy and res[1].sim_accuracy == r1.sim_accuracy
    # old-style 2-tuple plans still run (the profile's own recipe)
    assert ex.sweep(ctx, [(p, {})])[0].sim_accuracy == r0.sim_accuracy


def test_compile_for_default_is_unchanged(ctx):
    from hwsim.execute import run_quantized

    p = load_profile("int8-tflite")
    a, b = ex.compile_for(ctx, p), ex.compile_for(ctx, p, "profile")
    np.testing.assert_array_equal(run_quantized(a, ctx.x_test).logits, run_quantized(b, ctx.x_test).logits)


def test_compare_names_the_recipe(ctx):
    pytest.importorskip("torch")
    from hwsim.compare import compare

    qg = ex.compile_for(ctx, load_profile("w4a4"), "mse+bc")
    res = compare(ctx, qg)
    assert res.recipe == "mse+bc" and res.to_json()["recipe"] == "mse+bc"
