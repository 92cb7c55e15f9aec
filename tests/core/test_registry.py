"""The op registry (hwsim/ops/registry.py): one spec per op, what graph/compile/execute see of it."""

from __future__ import annotations

import numpy as np
import pytest

from hwsim import ops
from hwsim.errors import HwsimError
from hwsim.graph import KNOWN_OPS, OP_ARITY, OP_ATTRS, OP_PARAMS, Graph, GraphBuilder, Node, validate
from hwsim.ops import registry

# every name importable from hwsim.ops before the package split (hwsim/ops.py at 5b7d5fe)
PUBLIC = ("IMPLS OVERFLOW_POLICIES ROUNDING_MODES TIE_RULES Accumulator AccStats linear conv_output_size conv2d "
          "REQUANT_MODES ADD_FORMS Requant RequantParams make_requant_params requantize max_pool2d POOL_FORMS "
          "onnxruntime_pool_form pool_multiplier avg_pool2d global_avg_pool AddParams add_params fma_f32 "
          "ratio_fma_swaps ratio_fma_constant fixed_add_vector_input add concat _check_impl _int_array _pair "
          "_padding _w_zero_point _bias _scales _per_channel _shift_left_exact _fixed_q31_fast "
          "_float32_requant_kernel _requantize_fast _check_nchw _pool_geometry _windows _pool_scale _pool_index "
          "_pool_float_forms _fixed_mul _max_abs _add_kernel").split()


def test_public_names_unchanged():
    missing = [n for n in PUBLIC if not hasattr(ops, n)]
    assert not missing
    for f in ("conv2d", "linear", "add", "concat"):  # the functions, not the modules of the same name
        assert callable(getattr(ops, f)) and not isinstance(getattr(ops, f), type(ops))


def test_graph_schema_is_a_view_of_the_registry():
    assert KNOWN_OPS == registry.names() == ("conv2d", "linear", "batchnorm", "relu", "relu6", "maxpool2d",
                                             "avgpool2d", "global_avgpool", "add", "concat", "flatten",
                                             "identity", "sigmoid", "hardsigmoid", "hardswish", "silu", "tanh",
                                             "mul", "mean")
    for name in KNOWN_OPS:
        spec = ops.get(name)
        assert spec.name == name and OP_ATTRS[name] == spec.attrs and OP_ARITY[name] == spec.arity
        assert OP_PARAMS.get(name, ((), ())) == spec.params
    assert registry.names_where(mac=True) == ("conv2d", "linear")


def test_get_unknown_op_names_the_known_ones():
    with pytest.raises(HwsimError, match=r"unknown op 'gelu' \(known ops: conv2d, linear,"):
        ops.get("gelu")


def test_register_rejects_a_second_spec_under_a_taken_name():
    class Other(registry.OpSpec):
        name = "add"

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Other)
    assert type(ops.get("add")).__name__ == "AddSpec"


@pytest.fixture
def scale_op():
    """A throwaway op with an optional attr, registered for one test (how a new op plugs in)."""

    class ScaleSpec(registry.OpSpec):
        name = "test_scale"
        optional_attrs = {"negate": ("bool", False)}

        def float_forward(self, node, graph, ins):
            return -2 * ins[0] if node.attrs.get("negate", False) else 2 * ins[0]

    registry.register(ScaleSpec)
    yield ScaleSpec
    del registry._REGISTRY["test_scale"]


def _graph(attrs):
    b = GraphBuilder(input_shape=(1, 2, 2))
    y = b._add("s", "test_scale", [b.inputs[0].name], attrs)
    return b.build(outputs=[y])


def test_a_registered_op_validates_and_runs_with_optional_attrs(scale_op):
    from hwsim.floatref import run_float

    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    assert np.array_equal(run_float(_graph({}), x), 2 * x.reshape(1, -1))
    assert np.array_equal(run_float(_graph({"negate": True}), x), -2 * x.reshape(1, -1))
    with pytest.raises(HwsimError, match=r"attr 'negate' = 1 must be true or false"):
        validate(_graph({"negate": 1}))
    g = _graph({"negate": True})
    bad = Graph(g.inputs, [Node("s", "test_scale", g.nodes[0].inputs, g.nodes[0].outputs, {"negat": True}, {})],
                g.outputs, g.tensors, g.metadata)
    with pytest.raises(HwsimError, match=r"unknown attr 'negat' \(allowed: negate\)"):
        validate(bad)
