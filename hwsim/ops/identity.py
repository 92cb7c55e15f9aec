"""identity: the input itself (ONNX Identity; what export leaves of dropout and stochastic depth in eval mode).

The output keeps its input's grid and values, like flatten without the reshape.
"""

from __future__ import annotations

from hwsim.ops.registry import OpSpec, register


@register
class IdentitySpec(OpSpec):
    name = "identity"
    output_grid = "input"
    moves_values = True
    channel_mean_preserving = True

    def float_forward(self, node, graph, ins):
        return ins[0]

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        return env[lay.inputs[0]], 0

    def onnx_export(self, ex, lay):
        ex.node("Identity", [lay.inputs[0]], [lay.output], lay.name)
