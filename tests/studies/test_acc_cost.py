"""hwsim.cost's accumulator-aware BOPs (``bops_acc``, UNIQ §4 with the configured accumulator width),
checked by hand on tests.nets.tiny_cnn, and its place in the accumulator study's Pareto table."""

import pytest

from hwsim.compile import compile_model
from hwsim.cost import graph_cost
from hwsim.profile import load_profile
from hwsim.studies.output import pareto_front
from tests.nets import images, tiny_cnn

# tiny_cnn(channels=4, size=8, classes=3): conv1 3x3 (1->4, K=9), depthwise 3x3 (K=9), conv3 1x1 (K=4), fc (K=4)
OUTPUTS = {"conv1": 4 * 8 * 8, "dw": 4 * 8 * 8, "conv3": 4 * 8 * 8, "fc": 3}
K = {"conv1": 9, "dw": 9, "conv3": 4, "fc": 4}


@pytest.fixture(scope="module")
def net():
    return tiny_cnn(seed=3)


def _layers(net, name, **settings):
    c = graph_cost(compile_model(net, load_profile(name, settings or None), images(32, seed=4)))
    return {x["name"]: x for x in c["layers"]}, c["totals"]


def test_configured_accumulator_width_is_counted_per_mac(net):
    """int8 at 32 and at 16 bits: the same BOPs, bops_acc differs by exactly 16 adder bits per MAC."""
    lay32, t32 = _layers(net, "int8-tflite")
    lay16, t16 = _layers(net, "int8-tflite", **{"accumulator.bits": "16"})
    for n in OUTPUTS:
        macs = OUTPUTS[n] * K[n]
        assert lay32[n]["macs"] == macs and lay32[n]["adder_bits"] == 32 and lay16[n]["adder_bits"] == 16
        assert lay32[n]["bops_acc"] == (8 * 8 + 32) * macs
        assert lay16[n]["bops_acc"] == (8 * 8 + 16) * macs
    assert t32["bops"] == t16["bops"]  # plain BOPs cannot see the accumulator
    assert t32["bops_acc"] - t16["bops_acc"] == 16 * t32["macs"]
    assert t32["bops_acc"] == sum(x["bops_acc"] for x in lay32.values())


def test_unbounded_accumulator_counts_uniqs_exact_width(net):
    """An exact accumulator counts UNIQ's b_w + b_a + ceil(log2 K): 8 + 8 + 4 for K = 9, + 2 for K = 4."""
    lay, _ = _layers(net, "int8-tflite", **{"accumulator.bits": "unbounded"})
    assert {n: x["adder_bits"] for n, x in lay.items()} == {"conv1": 20, "dw": 20, "conv3": 18, "fc": 18}
    assert all(x["bops_acc"] == (64 + x["adder_bits"]) * x["macs"] for x in lay.values())


def test_partial_sum_stage_counts_the_register_and_one_add_per_chunk(net):
    """rows 4, 12-bit partial register, 32-bit accumulator: per output K*12 + ceil(K/4)*32 adder bits."""
    lay, _ = _layers(net, "int8-tflite", **{"accumulator.rows": "4", "accumulator.partial_bits": "12"})
    for n, x in lay.items():
        chunks = -(-K[n] // 4)
        assert x["bops_acc"] == 64 * x["macs"] + OUTPUTS[n] * (K[n] * 12 + chunks * 32), n
    assert lay["dw"]["bops_acc"] != 64 * lay["dw"]["macs"] + OUTPUTS["dw"] * K["dw"] * 32  # not the plain count


def test_weight_only_counts_float32_adds(net):
    lay, t = _layers(net, "w4-fp")
    assert all(x["adder_bits"] == 32 and x["act_bits"] == 32 for x in lay.values())
    assert t["bops_acc"] == sum((x["weight_bits"] * 32 + 32) * x["macs"] for x in lay.values())


def test_pareto_front():
    """Lowest cost first; a point is on the front iff no other point is at most as costly and strictly
    more accurate, or strictly cheaper and at least as accurate."""
    pts = [("a", 10, 50.0), ("b", 20, 60.0), ("c", 15, 40.0), ("d", 30, 60.0), ("e", 5, 10.0), ("f", 20, 55.0)]
    assert [p[0] for p in pareto_front(pts)] == ["e", "a", "b"]
    assert pareto_front([]) == []
