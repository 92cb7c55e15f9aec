"""hwsim.cost: MACs, BOPs, memory and accumulator widths of a compiled graph, checked by hand."""

import json

import numpy as np
import pytest

from hwsim.compile import compile_model
from hwsim.cost import LAYER_KEYS, TOTAL_KEYS, graph_cost, grid_bits
from hwsim.profile import load_profile
from tests.nets import images, tiny_cnn

# tiny_cnn(channels=4, size=8, classes=3): conv1 3x3 pad 1 (1->4), depthwise 3x3 pad 1, conv3 1x1 (4->4), fc 4->3
MACS = {"conv1": 4 * 8 * 8 * 9, "dw": 4 * 8 * 8 * 9, "conv3": 4 * 8 * 8 * 4, "fc": 3 * 4}
WEIGHTS = {"conv1": 36, "dw": 36, "conv3": 16, "fc": 12}


@pytest.fixture(scope="module")
def net():
    return tiny_cnn(seed=3)


def _cost(net, name, **settings):
    return graph_cost(compile_model(net, load_profile(name, settings or None), images(32, seed=4)))


def test_grid_bits():
    assert grid_bits(-127, 127) == 8 and grid_bits(-128, 127) == 8 and grid_bits(0, 255) == 8
    assert grid_bits(0, 15) == 4 and grid_bits(-8, 7) == 4 and grid_bits(-7, 7) == 4 and grid_bits(-1, 1) == 2
    assert grid_bits(0, 0) == 1


def test_int8_counts(net):
    c = _cost(net, "int8-tflite")
    lay = {x["name"]: x for x in c["layers"]}
    assert list(lay) == ["conv1", "dw", "conv3", "fc"]
    for n in lay:
        assert set(lay[n]) == set(LAYER_KEYS)
        assert lay[n]["macs"] == MACS[n]
        assert lay[n]["weight_bits"] == 8 and lay[n]["act_bits"] == 8
        assert lay[n]["bops"] == 64 * MACS[n]
        assert lay[n]["weights"] == WEIGHTS[n] and lay[n]["weight_memory_bits"] == 8 * WEIGHTS[n]
        assert lay[n]["bias_memory_bits"] == 32 * (3 if n == "fc" else 4)
        assert lay[n]["acc_bits"] == 32 and lay[n]["acc_overflow"] == "wrap" and lay[n]["partial_bits"] is None
        assert lay[n]["min_partial_bits"] is None and lay[n]["partial_headroom_bits"] is None  # no partial stage
        assert lay[n]["certified"] is True and lay[n]["headroom_bits"] == 32 - lay[n]["min_acc_bits"]
    t = c["totals"]
    assert set(t) == set(TOTAL_KEYS)
    assert t["macs"] == sum(MACS.values()) and t["bops"] == 64 * sum(MACS.values())
    assert t["memory_bits"] == t["weight_memory_bits"] + t["bias_memory_bits"] == 8 * 100 + 32 * 15
    assert t["acc_bits"] == 32 and t["min_acc_bits"] == max(x["min_acc_bits"] for x in c["layers"])
    assert (t["mac_layers"], t["certified_layers"], t["uncertified_layers"]) == (4, 4, 0)
    assert json.loads(json.dumps(c)) == c  # plain JSON types only


def test_first_last_layer_bits_are_counted(net):
    """w4a4 keeps the first and last layer (and the grids around them) at 8 bits."""
    c = _cost(net, "w4a4")
    bits = {x["name"]: (x["weight_bits"], x["act_bits"]) for x in c["layers"]}
    assert bits == {"conv1": (8, 8), "dw": (4, 4), "conv3": (4, 4), "fc": (8, 8)}
    assert c["totals"]["bops"] == 64 * MACS["conv1"] + 16 * MACS["dw"] + 16 * MACS["conv3"] + 64 * MACS["fc"]


def test_min_acc_bits_is_the_certificate_and_per_layer_overrides_count(net):
    """w4a4-acc12 overrides the first and last layer to a 32-bit accumulator; the middle ones get 8 bits."""
    qg = compile_model(net, load_profile("w4a4-acc12", {"accumulator.bits": "8"}), images(32, seed=4))
    c = graph_cost(qg)
    assert [x["acc_bits"] for x in c["layers"]] == [32, 8, 8, 32]
    for x, lay in zip(c["layers"], qg.mac_layers):
        assert x["min_acc_bits"] == max(lay.certificate.min_acc_bits)
        assert x["rows"] == 1 and x["acc_overflow"] == "saturate"
        assert x["certified"] == (x["min_acc_bits"] <= x["acc_bits"])
        assert x["headroom_bits"] == x["acc_bits"] - x["min_acc_bits"]
    t = c["totals"]
    assert t["uncertified_layers"] == sum(1 for x in c["layers"] if x["min_acc_bits"] > x["acc_bits"]) > 0
    assert t["acc_bits"] == 32 and t["min_acc_bits"] == max(x["min_acc_bits"] for x in c["layers"])


def test_partial_sum_stage(net):
    c = _cost(net, "int8-psum16")
    for x in c["layers"]:
        assert (x["acc_bits"], x["partial_bits"], x["rows"], x["partial_overflow"]) == (32, 16, 64, "saturate")
        assert x["partial_headroom_bits"] == 16 - x["min_partial_bits"]
    assert c["totals"]["partial_bits"] == 16
    assert c["totals"]["min_partial_bits"] == max(x["min_partial_bits"] for x in c["layers"])


def test_weight_only_counts_float32_activations(net):
    c = _cost(net, "w4-fp")
    for x in c["layers"]:
        assert x["act_bits"] == 32 and x["weight_bits"] == 4 and x["certified"] is None
        assert x["bops"] == 4 * 32 * MACS[x["name"]]
    assert c["totals"]["min_acc_bits"] is None and c["totals"]["certified_layers"] == 0


def test_float_bias_counts_32_bits(net):
    c = _cost(net, "int8-pytorch")
    assert all(x["bias_bits"] == 32 for x in c["layers"])
    assert np.sum([x["bias_memory_bits"] for x in c["layers"]]) == 32 * 15


def test_unbounded_accumulator_is_none(net):
    c = _cost(net, "int8-fbgemm", **{"accumulator.bits": "unbounded"})
    assert all(x["acc_bits"] is None and x["headroom_bits"] is None and x["certified"] for x in c["layers"])
    assert c["totals"]["acc_bits"] is None and c["totals"]["min_acc_bits"] >= 16


def test_run_json_and_sweep_csv_carry_the_cost(tmp_path):
    """The cost in `run --json` and the sweep CSV is graph_cost of the same compiled graph."""
    import csv
    import json

    from click.testing import CliRunner

    from hwsim import experiments as ex
    from hwsim.cli import cli
    from hwsim.cost import graph_cost
    from hwsim.profile import load_profile

    r = CliRunner().invoke(cli, ["run", "-p", "w4a4", "--limit", "20", "--json", "-q"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)["cost"]
    ctx = ex.load_context(None, "default", 20)
    assert got == json.loads(json.dumps(graph_cost(ex.compile_for(ctx, load_profile("w4a4")))))
    assert got["totals"]["bops"] > 0
    out = tmp_path / "s.csv"
    r = CliRunner().invoke(cli, ["sweep", "-p", "w4a4", "-p", "int8-tflite", "--limit", "20", "-q", "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert [int(x["bops"]) for x in rows][0] == got["totals"]["bops"]
    assert int(rows[1]["bops"]) > int(rows[0]["bops"])  # int8 costs more bit-operations than w4a4
