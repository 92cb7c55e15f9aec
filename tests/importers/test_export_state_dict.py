"""`hwsim export --model-def module:factory --weights file.pt`: a plain state_dict becomes an .hwsim model."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hwsim.floatref import normalize, run_float  # noqa: E402
from hwsim.graph import load_model  # noqa: E402
from tests.importers.test_cli_import import invoke, one_line_error  # noqa: E402

MODULE = '''
import torch.nn as nn

def make():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 10))

def wider():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

def broken():
    raise ValueError("no such variant")

NOT_A_FACTORY = 3

def not_a_module():
    return 3
'''


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A user's directory: mynet.py with factories, sd.pt a plain state_dict of make() with random BN stats."""
    (tmp_path / "mynet_sd.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mynet_sd", raising=False)
    ns: dict = {}
    exec(MODULE, ns)
    torch.manual_seed(0)
    m = ns["make"]()
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.2, 0.2)
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.uniform_(0.5, 1.5)
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    torch.save({"state_dict": m.state_dict(), "epoch": 3}, tmp_path / "lightning.pt")
    return tmp_path, m.eval()


@pytest.mark.parametrize("model_def,weights", [("mynet_sd:make", "sd.pt"), ("mynet_sd.py:make", "lightning.pt")])
def test_state_dict_export_matches_torch(project, model_def, weights):
    tmp, m = project
    res = invoke("export", "--model-def", model_def, "--weights", weights, "--input-shape", "1,8,8",
                 "--mean", "0.5", "--std", "0.25", "-o", "m.hwsim")
    assert res.exit_code == 0, res.output
    g = load_model(tmp / "m.hwsim")
    assert g.inputs[0].shape == (1, 8, 8) and g.inputs[0].mean == (0.5,) and g.inputs[0].std == (0.25,)
    assert g.metadata["source"] == "pytorch" and g.metadata["model_def"] == model_def
    x = normalize(g, np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(run_float(g, x), m(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_a_plain_state_dict_given_as_checkpoint_points_to_model_def(project):
    one_line_error(invoke("export", "sd.pt", "-o", "m.hwsim"), "not an hwsim training checkpoint",
                   "hwsim export --model-def module:factory --weights sd.pt --input-shape C,H,W -o m.hwsim")


@pytest.mark.parametrize("args,msg", [
    (("--model-def", "mynet_sd:make", "--weights", "sd.pt"), "give the per-sample input shape: --input-shape C,H,W"),
    (("--model-def", "mynet_sd:make", "--input-shape", "1,8,8"), "give both --model-def and --weights"),
    (("sd.pt", "--model-def", "mynet_sd:make", "--weights", "sd.pt"), "not both"),
    (("sd.pt", "--input-shape", "1,8,8"), "--input-shape goes with --model-def"),
    ((), "give a training CHECKPOINT, or --model-def"),
    (("--model-def", "mynet_sd", "--weights", "sd.pt", "--input-shape", "1,8,8"), "give module:factory"),
    (("--model-def", "nosuchmod_xyz:make", "--weights", "sd.pt", "--input-shape", "1,8,8"),
     "cannot import 'nosuchmod_xyz'"),
    (("--model-def", "missing.py:make", "--weights", "sd.pt", "--input-shape", "1,8,8"), "no such file 'missing.py'"),
    (("--model-def", "mynet_sd:nope", "--weights", "sd.pt", "--input-shape", "1,8,8"), "has no callable 'nope'"),
    (("--model-def", "mynet_sd:NOT_A_FACTORY", "--weights", "sd.pt", "--input-shape", "1,8,8"), "no callable"),
    (("--model-def", "mynet_sd:broken", "--weights", "sd.pt", "--input-shape", "1,8,8"),
     "calling it raised ValueError: no such variant"),
    (("--model-def", "mynet_sd:not_a_module", "--weights", "sd.pt", "--input-shape", "1,8,8"),
     "returned a int, not a torch.nn.Module"),
    (("--model-def", "mynet_sd:wider", "--weights", "sd.pt", "--input-shape", "1,8,8"),
     "--weights sd.pt does not fit mynet_sd:wider(): missing 2.weight, 2.bias; unexpected"),
    (("--model-def", "mynet_sd:make", "--weights", "mynet_sd.py", "--input-shape", "1,8,8"),
     "--weights mynet_sd.py: cannot be read as a weights-only torch file"),
    (("--model-def", "mynet_sd:make", "--weights", "sd.pt", "--input-shape", "1,8,8", "--mean", "1,2"),
     "--mean 1,2: 2 values, but the model has 1 input channel(s)"),
])
def test_bad_model_def_inputs(project, args, msg):
    one_line_error(invoke("export", *args, "-o", "m.hwsim"), msg)
