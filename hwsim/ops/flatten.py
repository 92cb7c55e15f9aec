"""flatten (start_dim = 1): a reshape; the output keeps its input's grid and values."""

from __future__ import annotations

import math

from hwsim.ops.registry import OpSpec, register


@register
class FlattenSpec(OpSpec):
    name = "flatten"
    output_grid = "input"
    moves_values = True
    channel_mean_preserving = True

    def infer_shape(self, node, ins, p, fail, tag):
        return (math.prod(ins[0]),)

    def float_forward(self, node, graph, ins):
        return ins[0].reshape(len(ins[0]), -1)

    def thread_safe(self, qg, lay) -> bool:
        """A reshape: any number of execute's batch workers at once."""
        return True

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        x = env[lay.inputs[0]]
        return x.reshape(x.shape[0], -1), 0

    def onnx_export(self, ex, lay):
        ex.node("Flatten", [lay.inputs[0]], [lay.output], lay.name, axis=1)
