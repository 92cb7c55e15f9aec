"""QAT as the papers run it: 8-bit first/last layers, the input on the profile's grid, LSQ steps re-used at
other bit widths, step_scale under range = lsq, static BN folding, KURE target / SymReg λ1, λ2 / NT defaults."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from frontends.pytorch import train as train_mod
from frontends.pytorch.export import export_checkpoint, mac_module_order, to_graph
from frontends.pytorch.lsq import FixedQuantizer, LSQQuantizer, QuantWrapper, fold_batchnorm
from frontends.pytorch.models import build_model
from frontends.pytorch.train import load_checkpoint, model_from_checkpoint, train
from hwsim.compile import compile_model, lsq_rescale
from hwsim.data import calibration_subset
from hwsim.errors import HwsimError
from hwsim.execute import run_integer
from hwsim.floatref import normalize
from hwsim.profile import load_profile

LSQ = {"weights.range": "lsq", "activations.range": "lsq", "batchnorm": "scale"}


@pytest.fixture(scope="module")
def qat(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("qat")
    r = train("smallcnn", tiny, epochs=8, batch_size=32, seed=0, quiet=True, qat_bits=(4, 4),
              qat_profile=load_profile("w4a4"), out=str(d / "q.pt"))
    g = export_checkpoint(str(d / "q.pt"), str(d / "q.hwsim"))
    calib = normalize(g, calibration_subset(tiny, 256, 0))  # w4a4's calibration: 256 images, seed 0
    return r.model, g, calib, str(d / "q.pt")


def _wrappers(m):
    return {n.replace(".", "_"): w for n, w in m.named_modules() if isinstance(w, QuantWrapper)}


def test_lsq_rescale_keeps_the_clipping_range():
    assert lsq_rescale(0.1, 4, 4, True) == 0.1
    for b, b2, signed in [(4, 3, True), (4, 8, True), (4, 2, True), (4, 3, False), (4, 8, False), (3, 6, False)]:
        top = (lambda k: 2 ** (k - 1) - 1) if signed else (lambda k: 2 ** k - 1)
        s2 = lsq_rescale(0.1, b, b2, signed)
        assert s2 * top(b2) == pytest.approx(0.1 * top(b), rel=1e-15)
    assert lsq_rescale(0.1, 4, 3, True) == pytest.approx(0.1 * 7 / 3, rel=1e-15)
    np.testing.assert_allclose(lsq_rescale(np.array([0.1, 0.2]), 4, 8, True), np.array([0.1, 0.2]) * 7 / 127)


def test_first_last_layers_at_8_bits_and_the_input_on_the_profiles_grid(qat, tiny):
    m, g, calib, _ = qat
    w = _wrappers(m)
    order = [n.replace(".", "_") for n in mac_module_order(m)]
    assert order == ["features_0", "features_4", "features_8", "fc"]
    assert w["features_0"].wq.bits == 8 and isinstance(w["features_0"].aq, FixedQuantizer)
    for mid in ("features_4", "features_8"):
        assert w[mid].wq.bits == 4 and isinstance(w[mid].aq, LSQQuantizer) and w[mid].aq.bits == 4
    assert w["fc"].wq.bits == 8 and w["fc"].aq.bits == 8
    md = g.metadata["lsq"]
    assert md["features_0"]["a_step"] is None and md["features_0"]["a_grid"]["bits"] == 8
    assert g.metadata["train_config"]["qat_input"] == "profile"
    # hwsim gives the input the very grid QAT trained with, and quantizes the images to the same codes
    qg = compile_model(g, load_profile("w4a4", LSQ), calib)
    gi, aq = qg.grids[qg.input_name], w["features_0"].aq.grid()
    assert (gi.scale, gi.zero_point, gi.qmin, gi.qmax, gi.bits, gi.signed) == (
        pytest.approx(aq["scale"], rel=1e-7), aq["zero_point"], aq["qmin"], aq["qmax"], 8, True)
    assert gi.zero_point != 0  # asymmetric: MNIST's background is a grid point, not rounded on a signed grid
    x = normalize(g, tiny.x_test[:16])
    aqm = w["features_0"].aq
    with torch.no_grad():
        codes = torch.round(aqm(torch.from_numpy(x)) / aqm.scale).numpy() + aq["zero_point"]
    np.testing.assert_array_equal(codes.astype(np.int64), run_integer(qg, x)[qg.input_name])
    for lay in qg.mac_layers:  # the learned weight grids at the learned bits
        assert lay.w_qmax == (127 if lay.name in ("features_0", "fc") else 7)


def test_trained_at_4_bits_evaluated_at_3_and_8_bits_with_step_scale(qat):
    m, g, calib, _ = qat
    q4 = compile_model(g, load_profile("w4a4", LSQ), calib)
    q3 = compile_model(g, load_profile("w3a3", LSQ), calib)
    q8 = compile_model(g, load_profile("int8-tflite", LSQ), calib)
    qs = compile_model(g, load_profile("w4a4", {**LSQ, "weights.step_scale": "1.2",
                                                "activations.step_scale": "0.8"}), calib)
    L4, L3, L8, Ls = ({lay.name: lay for lay in q.mac_layers} for q in (q4, q3, q8, qs))
    for name in ("features_4", "features_8"):
        np.testing.assert_allclose(L3[name].w_scale / L4[name].w_scale, 7 / 3, rtol=1e-12)
        np.testing.assert_allclose(L8[name].w_scale / L4[name].w_scale, 7 / 127, rtol=1e-12)
        np.testing.assert_allclose(Ls[name].w_scale / L4[name].w_scale, 1.2, rtol=1e-12)
        assert (L3[name].w_qmin, L3[name].w_qmax, L8[name].w_qmax) == (-4, 3, 127)
        t = L4[name].inputs[0]
        a4, signed = q4.grids[t].scale, q4.grids[t].signed
        top = (lambda k: 2 ** (k - 1) - 1) if signed else (lambda k: 2 ** k - 1)
        assert q3.grids[t].scale == pytest.approx(a4 * top(4) / top(3), rel=1e-12) and q3.grids[t].bits == 3
        assert q8.grids[t].scale == pytest.approx(a4 * top(4) / top(8), rel=1e-12) and q8.grids[t].bits == 8
        assert qs.grids[t].scale == pytest.approx(a4 * 0.8, rel=1e-12)
    # first / last layers learned at 8 bits: unchanged at w3a3 (8-bit first/last) and int8
    for name in ("features_0", "fc"):
        np.testing.assert_array_equal(L3[name].w_scale, L4[name].w_scale)
        np.testing.assert_array_equal(L8[name].w_scale, L4[name].w_scale)
    x = calib[:2]  # the rescaled grids run, fast == reference (the reference is slow: 2 images)
    fast, ref = run_integer(q3, x, "fast"), run_integer(q3, x, "reference")
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k])
    for q in (q8, qs):
        assert run_integer(q, x)[q.output_name].shape == (2, 10)
    assert not np.array_equal(Ls["features_4"].w_q, L4["features_4"].w_q)
    with pytest.raises(HwsimError, match="activations.scale must be 'float'"):
        compile_model(g, load_profile("w4a4", {**LSQ, "activations.scale": "pow2"}), calib)


def test_qat_model_and_simulator_agree(qat, tiny):
    """The torch QAT model (fake quant, eval) and hwsim's integers under its learned grids predict alike."""
    m, g, calib, _ = qat
    qg = compile_model(g, load_profile("w4a4", LSQ), calib)
    x = normalize(g, tiny.x_test)
    with torch.no_grad():
        torch_pred = m(torch.from_numpy(x)).argmax(1).numpy()
    env = run_integer(qg, x)
    sim_pred = env[qg.output_name].reshape(len(x), -1).argmax(1)
    assert len(np.unique(torch_pred)) >= 5  # a model that predicts one digit would agree trivially
    assert np.mean(torch_pred == sim_pred) >= 0.95


def _warm_bn(m, shape, seed=0):
    torch.manual_seed(seed)
    m.train()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m(torch.randn(8, *shape))
    m.eval()
    return m


@pytest.mark.parametrize("arch,shape", [("smallcnn", (1, 28, 28)), ("resnet8", (1, 28, 28)),
                                        ("mobilenetv2", (1, 28, 28))])
def test_static_bn_folding_keeps_the_function(arch, shape):
    m = _warm_bn(build_model(arch, 10, shape[0]), shape)
    n_bn = sum(isinstance(v, torch.nn.BatchNorm2d) for v in m.modules())  # every BN follows a conv
    x = torch.randn(4, *shape)
    with torch.no_grad():
        ref = m(x)
        folded = fold_batchnorm(m)
        got = m(x)
    assert len(folded) == n_bn and not any(isinstance(v, torch.nn.BatchNorm2d) for v in m.modules())
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert not any(n.op == "batchnorm" for n in to_graph(m, shape).nodes)


def test_qat_with_static_bn_folding(tiny, tmp_path):
    f = tmp_path / "f.pt"
    train("smallcnn", tiny, epochs=1, batch_size=32, seed=0, quiet=True, out=str(f))
    with pytest.raises(HwsimError, match="--init"):
        train("smallcnn", tiny, epochs=1, quiet=True, qat_bits=(4, 4), qat_bn="fold")
    q = tmp_path / "q.pt"
    r = train("smallcnn", tiny, epochs=8, batch_size=32, seed=0, quiet=True, qat_bits=(4, 4), qat_bn="fold",
              init=str(f), out=str(q))
    g = export_checkpoint(str(q), str(tmp_path / "q.hwsim"))
    assert not any(n.op == "batchnorm" for n in g.nodes)
    assert g.metadata["train_config"]["qat_bn"] == "fold"
    m, _ = model_from_checkpoint(str(q))
    x = normalize(g, tiny.x_test[:16])
    with torch.no_grad():
        np.testing.assert_array_equal(m(torch.from_numpy(x)).numpy(), r.model(torch.from_numpy(x)).numpy())
    # no BN left: the learned grids compile under batchnorm = fold as well
    calib = normalize(g, calibration_subset(tiny, 64, 0))
    qg = compile_model(g, load_profile("w4a4", {**LSQ, "batchnorm": "fold"}), calib)
    lay = qg.layer("features_4")
    np.testing.assert_allclose(lay.w_scale, np.abs(g.metadata["lsq"]["features_4"]["w_step"]), rtol=1e-12)


def test_kure_target_and_symreg_lambdas_reach_the_loss(tiny, monkeypatch):
    seen = {}
    real_k, real_s = train_mod.kure_loss, train_mod.symreg_loss

    def kure(model, target, on_folded, layers):
        seen["kure_target"] = target
        return real_k(model, target, on_folded, layers)

    def sym(model, l1, l2, layers=None):
        seen["symreg"] = (l1, l2)
        return real_s(model, l1, l2, layers=layers)

    monkeypatch.setattr(train_mod, "kure_loss", kure)
    monkeypatch.setattr(train_mod, "symreg_loss", sym)
    train("smallcnn", tiny, epochs=1, batch_size=96, seed=0, quiet=True, kure=1.0, kure_target=2.5,
          symreg=0.2, symreg2=0.05)
    assert seen == {"kure_target": 2.5, "symreg": (0.2, 0.05)}
    train("smallcnn", tiny, epochs=1, batch_size=96, seed=0, quiet=True, symreg2=0.3)
    assert seen["symreg"] == (0.0, 0.3)


def test_cli_qat_options(tmp_path):
    from hwsim.cli import cli

    p = tmp_path / "c.pt"
    r = CliRunner().invoke(cli, ["train", "--data", "digits", "--epochs", "1", "--qat-bits", "4,4", "--nt",
                                 "--kure", "0.5", "--kure-target", "3.0", "--symreg", "0.1,0.05",
                                 "--qat-first-last", "6", "--out", str(p), "--quiet"])
    assert r.exit_code == 0, r.output
    cfg = load_checkpoint(str(p))["config"]
    assert cfg["noise"] == [0.3, 50.0] and cfg["kure_target"] == 3.0
    assert (cfg["symreg"], cfg["symreg2"]) == (0.1, 0.05)
    assert (cfg["qat_first_bits"], cfg["qat_last_bits"], cfg["qat_input"], cfg["qat_bn"]) == (6, 6, "profile", "unfolded")
    m, _ = model_from_checkpoint(str(p))
    assert [w.wq.bits for w in _wrappers(m).values()] == [6, 4, 4, 6]
    for args, msg in [(["--qat-bits", "4,4", "--nt", "--noise", "0.2,50"], "--nt and --noise"),
                      (["--nt"], "needs QAT"),
                      (["--qat-bits", "4,4", "--qat-bn", "fold"], "--init"),
                      (["--symreg", "a,b"], "--symreg"),
                      (["--qat-bits", "4,4", "--qat-first-last", "99"], "--qat-first-last")]:
        r = CliRunner().invoke(cli, ["train", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "x.pt"),
                                     "--quiet", *args])
        assert r.exit_code != 0 and msg in r.output and "Traceback" not in r.output, (args, r.output)


def test_export_quantized_or_latent_qat_weights(qat, tiny, tmp_path):
    """Default export: the weights the QAT model computes with, so the float graph is the QAT model with
    float activations; "latent": the optimizer's float weights. Both give hwsim the same integers at the
    trained bit widths."""
    m, g, calib, ck = qat
    gl = export_checkpoint(ck, str(tmp_path / "l.hwsim"), qat_weights="latent")
    assert (g.metadata["qat_weights"], gl.metadata["qat_weights"]) == ("quantized", "latent")
    w = _wrappers(m)
    np.testing.assert_array_equal(gl.param(gl.node("fc"), "weight"), w["fc"].module.weight.detach().numpy())
    x = normalize(g, tiny.x_test[:16])
    saved = {k: v.aq for k, v in w.items()}
    try:
        for v in w.values():
            v.aq = None  # the QAT model with float activations
        with torch.no_grad():
            ref = m.eval()(torch.from_numpy(x)).numpy()
    finally:
        for k, v in w.items():
            v.aq = saved[k]
    from hwsim.floatref import run_float

    np.testing.assert_allclose(run_float(g, x), ref, rtol=1e-4, atol=1e-4)
    qa = compile_model(g, load_profile("w4a4", LSQ), calib)
    qb = compile_model(gl, load_profile("w4a4", LSQ), calib)
    for la, lb in zip(qa.mac_layers, qb.mac_layers):
        assert np.mean(la.w_q == lb.w_q) >= 0.999, la.name
    with pytest.raises(HwsimError, match="qat_weights"):
        export_checkpoint(ck, str(tmp_path / "x.hwsim"), qat_weights="other")
