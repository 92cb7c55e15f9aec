"""Training determinism, checkpoint resume == uninterrupted run, weights_only checkpoints, export, CLI."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from frontends.pytorch.export import export_checkpoint
from frontends.pytorch.train import load_checkpoint, model_from_checkpoint, train
from hwsim.errors import HwsimError
from hwsim.floatref import normalize, run_float


def _weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("opts", [{}, {"kure": 1.0, "symreg": 0.1, "satnl": True, "sam": "asam"},
                                  {"qat_bits": (4, 4), "noise": (0.3, 50.0)}])
def test_same_seed_same_weights(tiny, opts):
    a = train("smallcnn", tiny, epochs=1, batch_size=32, seed=3, threads=1, quiet=True, **opts)
    b = train("smallcnn", tiny, epochs=1, batch_size=32, seed=3, threads=1, quiet=True, **opts)
    _same(_weights(a.model), _weights(b.model))
    c = train("smallcnn", tiny, epochs=1, batch_size=32, seed=4, threads=1, quiet=True, **opts)
    assert not torch.equal(a.model.fc.weight if not opts.get("qat_bits") else a.model.fc.module.weight,
                           c.model.fc.weight if not opts.get("qat_bits") else c.model.fc.module.weight)


@pytest.mark.parametrize("opts", [{"sam": "sam"}, {"qat_bits": (4, 4), "noise": (0.3, 50.0)}])
def test_resume_equals_uninterrupted(tiny, tmp_path, opts):
    full = train("smallcnn", tiny, epochs=3, batch_size=64, seed=1, quiet=True, out=str(tmp_path / "full.pt"), **opts)
    part = tmp_path / "part.pt"
    train("smallcnn", tiny, epochs=3, batch_size=64, seed=1, quiet=True, out=str(part), stop_after=1, **opts)
    assert load_checkpoint(str(part))["epoch"] == 1
    rest = train("smallcnn", tiny, epochs=3, batch_size=64, seed=1, quiet=True, out=str(part), resume=str(part), **opts)
    assert rest.epochs_run == 2 and rest.test_acc == full.test_acc and rest.train_acc == full.train_acc
    _same(_weights(full.model), _weights(rest.model))
    ck = torch.load(str(part), weights_only=True)  # plain tensors/dicts only
    assert ck["epoch"] == 3


def test_resume_with_other_config_is_refused(tiny, tmp_path):
    p = tmp_path / "a.pt"
    train("smallcnn", tiny, epochs=2, batch_size=64, seed=1, quiet=True, out=str(p), stop_after=1)
    with pytest.raises(HwsimError, match="'lr'"):
        train("smallcnn", tiny, epochs=2, lr=0.01, batch_size=64, seed=1, quiet=True, resume=str(p))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HwsimError, match="junk.pt"):
        load_checkpoint(str(tmp_path / "junk.pt"))


def test_checkpoint_export_matches_torch_eval(tiny, tmp_path):
    p = tmp_path / "r.pt"
    train("smallcnn", tiny, epochs=1, batch_size=32, seed=0, quiet=True, out=str(p), satnl=True, kure=1.0)
    g = export_checkpoint(str(p), str(tmp_path / "r.hwsim"))
    m, ck = model_from_checkpoint(str(p))
    x01 = tiny.x_test[:16]
    xn = normalize(g, x01)
    with torch.no_grad():
        ref = m(torch.from_numpy(np.asarray(xn, np.float32))).numpy()
    np.testing.assert_allclose(run_float(g, xn), ref, rtol=0, atol=1e-5)
    assert g.metadata["float_accuracy"] == ck["history"]["test_acc"][-1]
    assert g.metadata["train_config"]["satnl"] is True


def test_cli_train_and_export(tmp_path):
    from hwsim.cli import cli

    r = CliRunner().invoke(cli, ["train", "--epochs", "1", "--out", str(tmp_path / "c.pt"), "--quiet",
                                 "--export", str(tmp_path / "c.hwsim"), "--json"])
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(cli, ["export", str(tmp_path / "c.pt"), "--out", str(tmp_path / "d.hwsim")])
    assert r2.exit_code == 0 and "nodes" in r2.output
    r3 = CliRunner().invoke(cli, ["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "e.hwsim")])
    assert r3.exit_code != 0 and "missing.pt" in r3.output
    r4 = CliRunner().invoke(cli, ["train", "--epochs", "1", "--qat-bits", "x", "--out", str(tmp_path / "q.pt")])
    assert r4.exit_code != 0 and "--qat-bits" in r4.output


def test_commands_without_torch_fail_with_one_line(monkeypatch):
    import sys

    from frontends.pytorch import cli_impl

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(HwsimError, match=r"^PyTorch is required: pip install 'hwsim\[torch\]'$"):
        cli_impl.train_command(epochs=1)
    with pytest.raises(HwsimError, match="PyTorch is required"):
        cli_impl.export_command("a.pt", "b.hwsim")


def test_qat_bits_from_a_profile():
    from frontends.pytorch.cli_impl import qat_spec

    def short(d):
        return d["qat_bits"], d["per_channel"], d["qat_first_bits"], d["qat_last_bits"]

    assert short(qat_spec("4,4")) == ((4, 4), True, 8, 8)  # W,A: the papers' 8-bit first/last layers
    assert short(qat_spec("4,4", first_last="none")) == ((4, 4), True, None, None)
    assert short(qat_spec("4,4", first_last="6")) == ((4, 4), True, 6, 6)
    assert short(qat_spec("4,none", per_tensor=True)) == ((4, None), False, 8, 8)
    assert short(qat_spec("w4a4")) == ((4, 4), True, 8, 8)  # the profile's first_layer / last_layer bits
    assert qat_spec("w4a4")["qat_profile"].name == "w4a4"
    assert short(qat_spec("w3-fp")) == ((3, None), True, None, None)
    assert short(qat_spec("int8-per-tensor")) == ((8, 8), False, None, None)
    with pytest.raises(HwsimError, match="--qat-bits 'w9a9': neither W,A bit widths nor a profile \\(unknown profile 'w9a9'"):
        qat_spec("w9a9")
    with pytest.raises(HwsimError, match="--qat-first-last 'x'"):
        qat_spec("4,4", first_last="x")
    with pytest.raises(HwsimError, match="--qat-first-last '1'"):
        qat_spec("4,4", first_last="1")
