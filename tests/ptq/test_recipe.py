"""Recipes: names, TOML, errors; every recipe's integers run fast == reference; "profile" is today's compile."""

import numpy as np
import pytest

from hwsim.compile import compile_model
from hwsim.errors import HwsimError
from hwsim.execute import run_integer, run_quantized
from hwsim.profile import load_profile
from hwsim.ptq import PROFILE, builtin_recipes, load_recipe
from tests.nets import images, tiny_cnn

RANGE_RECIPES = ["minmax", "mse", "percentile", "aciq", "lp", "bn+ce", "mse+cle+ba", "aciq+ce", "minmax+bc",
                 "mse+bc_analytic", "aciq+bc_banner", "percentile+bc_banner", "mse+cle_relu+ba", "wp"]
PROFILES = ["int8-tflite", "int8-per-tensor", "w4a4", "w3a3", "int4-pow2", "int8-fbgemm"]


@pytest.fixture(scope="module")
def net():
    return tiny_cnn(seed=2), images(24, seed=3)


@pytest.mark.parametrize("recipe", RANGE_RECIPES)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_recipe_runs_fast_equal_reference(net, recipe, profile):
    g, x = net
    qg = compile_model(g, load_profile(profile), x, recipe=recipe)
    assert qg.recipe == recipe
    fast, ref = run_integer(qg, x, "fast"), run_integer(qg, x, "reference")
    assert fast.keys() == ref.keys()
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k], err_msg=k)
    for lay in qg.mac_layers:  # every weight on its layer's grid (first/last-layer bits included)
        assert lay.w_qmin <= lay.w_q.min() and lay.w_q.max() <= lay.w_qmax
        assert lay.certificate is not None


@pytest.mark.parametrize("profile", ["int8-tflite", "w4a4", "w4-fp", "int4-pow2"])
def test_profile_recipe_is_bit_identical_to_no_recipe(net, profile):
    g, x = net
    a = compile_model(g, load_profile(profile), x)
    b = compile_model(g, load_profile(profile), x, recipe=None)
    c = compile_model(g, load_profile(profile), x, recipe="profile")
    for q in (b, c):
        np.testing.assert_array_equal(run_quantized(a, x).logits, run_quantized(q, x).logits)
        assert q.recipe == "profile"


def test_recipes_respect_pow2_and_bits(net):
    g, x = net
    qg = compile_model(g, load_profile("int4-pow2"), x, recipe="aciq")
    for t, gr in qg.grids.items():
        assert np.log2(gr.scale) == np.round(np.log2(gr.scale)), t
    for lay in qg.mac_layers:
        assert np.all(np.log2(lay.w_scale) == np.round(np.log2(lay.w_scale)))


def test_load_recipe_names_and_options():
    assert load_recipe(None) is PROFILE and PROFILE.is_profile
    for n in builtin_recipes():
        r = load_recipe(n)
        assert r.name == n and r.to_json()["name"] == n
    r = load_recipe("aciq+bc+cle")
    assert (r.weights, r.bias_correction, r.cle) == ("aciq", "empirical", True)
    assert load_recipe("lapq").lapq.p_grid == (2.0, 2.5, 3.0, 3.5, 4.0)
    assert load_recipe("lapq").calibration_count(256) == 512


@pytest.mark.parametrize("spec, msg", [("nosuch", "unknown recipe 'nosuch'"), ("mse+zz", r"unknown option '\+zz'")])
def test_bad_names(spec, msg):
    with pytest.raises(HwsimError, match=msg):
        load_recipe(spec)


def test_toml_recipe(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('method = "lapq"\np = 2.5\nbias_correction = "banner"\n[weights]\nrange = "aciq"\n'
                 '[activations]\nrange = "lp"\n[lapq]\nloss = "simulator"\nmaxfev = 10\n')
    r = load_recipe(str(p))
    assert (r.name, r.method, r.weights, r.activations, r.p, r.bias_correction) == (
        "mine", "lapq", "aciq", "lp", 2.5, "banner")
    assert (r.lapq.loss, r.lapq.maxfev, r.lapq.images) == ("simulator", 10, 512)


@pytest.mark.parametrize("text, msg", [
    ('method = "mse"\nfoo = 1\n', "unknown key 'foo'"),
    ('method = "nope"\n', "key 'method' = 'nope'"),
    ('method = "mse"\n[weights]\nrange = "bn"\n', "key 'weights.range' = 'bn'"),
    ('method = "mse"\np = 0.5\n', "key 'p' = 0.5"),
    ('method = "mse"\nbias_correction = "magic"\n', "key 'bias_correction' = 'magic'"),
    ('method = "lapq"\n[lapq]\nloss = "x"\n', "key 'lapq.loss' = 'x'"),
    ('method = "lapq"\n[lapq]\nspeed = 1\n', "key 'lapq'"),
    ('method = \n', "not valid TOML"),
])
def test_bad_toml_names_file_key_value(tmp_path, text, msg):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(HwsimError, match=msg) as e:
        load_recipe(str(p))
    assert str(p) in str(e.value) and "\n" not in str(e.value)
