"""The adaround / adaquant / wp recipes call the frontend lazily and install what it returns."""

import sys
import types

import numpy as np
import pytest

from hwsim.compile import compile_model
from hwsim.errors import HwsimError
from hwsim.execute import run_integer
from hwsim.profile import load_profile
from tests.nets import images, tiny_cnn

MOD = "frontends.pytorch.adaround"


def _fake_frontend(calls):
    """A stand-in honouring the contract: integer weights on each layer's own grid (round up where it can)."""
    def adaround_weights(qg, calib_images, *, progress=None, seed=0, **opts):
        calls.append(("adaround", seed, opts, len(calib_images)))
        return {lay.name: np.minimum(lay.w_q + 1, lay.w_qmax) for lay in qg.mac_layers}

    def adaquant_weights(qg, calib_images, *, progress=None, seed=0, **opts):
        calls.append(("adaquant", seed, opts, len(calib_images)))
        return {lay.name: (lay.w_q, lay.b_float + 0.5) for lay in qg.mac_layers}
    m = types.ModuleType(MOD)
    m.adaround_weights, m.adaquant_weights = adaround_weights, adaquant_weights
    return m


@pytest.fixture
def net():
    return tiny_cnn(seed=5), images(16, seed=9)


def test_adaround_installs_the_frontends_integers(monkeypatch, net):
    pytest.importorskip("torch")
    calls = []
    monkeypatch.setitem(sys.modules, MOD, _fake_frontend(calls))
    g, x = net
    p = load_profile("w4a4")
    base = compile_model(g, p, x, recipe="mse")
    qg = compile_model(g, p, x, recipe="adaround")
    assert calls == [("adaround", 0, {}, 16)]
    for lay in qg.mac_layers:
        np.testing.assert_array_equal(lay.w_q, np.minimum(base.layer(lay.name).w_q + 1, lay.w_qmax))
    fast, ref = run_integer(qg, x, "fast"), run_integer(qg, x, "reference")
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k])
    qa = compile_model(g, p, x, recipe="adaquant")
    for lay in qa.mac_layers:
        np.testing.assert_allclose(lay.b_float, base.layer(lay.name).b_float + 0.5, rtol=1e-6)
    # wp uses AdaRound when the frontend is there, and then no bias correction (WP Fig. 8)
    calls.clear()
    w = compile_model(g, p, x, recipe="wp")
    assert calls and calls[0][0] == "adaround" and not any("bias correction" in n for n in w.notes)


def test_missing_frontend_is_one_line_error_and_wp_falls_back(monkeypatch, net):
    monkeypatch.setitem(sys.modules, MOD, None)
    g, x = net
    with pytest.raises(HwsimError, match=r"needs (frontends\.pytorch\.adaround\.adaround_weights|torch)"):
        compile_model(g, load_profile("w4a4"), x, recipe="adaround")
    qg = compile_model(g, load_profile("w4a4"), x, recipe="wp")
    assert any("AdaRound unavailable" in n for n in qg.notes)
    assert any(n.startswith("bias correction (empirical)") for n in qg.notes)


def test_missing_torch_says_install_torch(monkeypatch, net):
    monkeypatch.setitem(sys.modules, "torch", None)
    g, x = net
    with pytest.raises(HwsimError, match=r"needs torch: pip install 'hwsim\[torch\]'"):
        compile_model(g, load_profile("w4a4"), x, recipe="adaround")
