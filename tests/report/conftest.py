"""Shared fixtures: a small sweep (with hardware cost) and a compare of the tiny test network, as JSON."""

import importlib.util
import json

import numpy as np
import pytest

from hwsim import experiments as ex
from hwsim.cost import graph_cost
from hwsim.data import Dataset
from hwsim.execute import accuracy
from hwsim.floatref import normalize, run_float
from hwsim.profile import load_profile
from tests.nets import tiny_cnn

HAS_TORCH = importlib.util.find_spec("torch") is not None

# one overflowing narrow accumulator, a partial-sum stage, a W4A4 ladder step and a weight-only run
SWEEP = [("int8-tflite", {}), ("int8-acc16-sat", {"accumulator.bits": "10"}), ("int8-psum16", {}),
         ("w4a4", {}), ("w4-fp", {})]


def _json(obj):
    """Exactly what the CLI writes and a reader gets back (json.dumps then loads, Infinity included)."""
    from hwsim.report import to_json_text

    return json.loads(to_json_text(obj))


@pytest.fixture(scope="session")
def tiny_ctx():
    g = tiny_cnn(seed=5, channels=6, classes=5)
    rng = np.random.default_rng(11)
    x_train = rng.uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    x_test = rng.uniform(0, 1, (96, 1, 8, 8)).astype(np.float32)
    xn = normalize(g, x_test)
    fl = run_float(g, xn)
    y = np.argmax(fl, 1)  # labels: the float model's own predictions, with a few changed so accuracy < 100%
    y[::7] = (y[::7] + 1) % 5
    ds = Dataset("synthetic", x_train, np.zeros(64, np.int64), x_test, y, 5)
    return ex.Context(g, "tiny_cnn", ds, "synthetic", xn, y, fl, accuracy(fl, y))


@pytest.fixture(scope="session")
def sweep_json(tiny_ctx):
    """A sweep's JSON (as `sweep --out x.json` writes it), each run with the cost fields added."""
    plan = [(load_profile(name, settings or None), settings) for name, settings in SWEEP]
    results = ex.sweep(tiny_ctx, plan, with_fakequant=HAS_TORCH)
    out = []
    for (profile, _), r in zip(plan, results):
        d = r.to_json()
        d["cost"] = graph_cost(ex.compile_for(tiny_ctx, profile))
        out.append(d)
    return _json(out)


@pytest.fixture(scope="session")
def plain_sweep_json(sweep_json):
    """Today's sweep JSON: no cost fields."""
    return [{k: v for k, v in d.items() if k != "cost"} for d in sweep_json]


@pytest.fixture(scope="session")
def compare_json(tiny_ctx):
    if not HAS_TORCH:
        pytest.skip("compare needs torch for the fake-quant mirror")
    from hwsim.compare import compare

    return _json(compare(tiny_ctx, ex.compile_for(tiny_ctx, load_profile("int4-pow2"))).to_json())
