"""relu and relu6: clamp activations.

compile fuses one into its producer (conv2d, linear, add) as that layer's output clamp on the
output grid; a standalone one (after a pool or concat) is a clamp on its input's grid. Either way
the integer form is :meth:`ReluSpec.clamp`: ReLU floors at the zero point, ReLU6 also caps at
z + round_half_up(6 / s).
"""

from __future__ import annotations

import math

import numpy as np

from hwsim.ops.registry import OpSpec, register


def relu_mean(beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """E[max(z, 0)], z ~ N(β, γ²): γ·φ(β/γ) + β·Φ(β/γ) (WP eq. 28)."""
    g = np.abs(gamma)
    out = np.maximum(beta, 0.0).astype(np.float64)
    ok = g > 0
    t = beta[ok] / g[ok]
    phi = np.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(t / math.sqrt(2)))
    out[ok] = g[ok] * phi + beta[ok] * cdf
    return out


@register
class ReluSpec(OpSpec):
    name = "relu"
    output_grid = "input"
    moves_values = True
    activation = True
    upper: float | None = None  # relu6: 6.0

    def float_forward(self, node, graph, ins):
        y = np.maximum(ins[0], np.float32(0))
        return y if self.upper is None else np.minimum(y, np.float32(self.upper))

    def clamp(self, lo, hi, grid):
        lo = max(lo, grid.zero_point)
        if self.upper is not None:
            hi = min(hi, grid.zero_point + int(np.floor(self.upper / grid.scale + 0.5)))
        return lo, hi

    def gaussian_mean(self, beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
        """E[act(z)] per channel for z ~ N(β, γ²) (analytic bias correction, WP eq. 28);
        ReLU6: E[relu(z)] - E[relu(z - 6)]."""
        m = relu_mean(beta, gamma)
        return m if self.upper is None else m - relu_mean(beta - self.upper, gamma)

    def thread_safe(self, qg, lay) -> bool:
        """np.clip only."""
        return True

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        x = env[lay.inputs[0]]
        info = np.iinfo(x.dtype)  # bounds inside the dtype (a narrow x holds its whole grid)
        return np.clip(x, max(lay.clamp[0], info.min), min(lay.clamp[1], info.max)), 0

    def onnx_export(self, ex, lay):
        lo, hi = lay.clamp
        if (lo, hi) == ex.full_range(lay.output):  # the requant already saturates to the 8-bit range
            ex.node("Identity", [lay.inputs[0]], [lay.output], lay.name)
        else:
            ex.clamp(lay, lay.inputs[0], lo, hi)


@register
class Relu6Spec(ReluSpec):
    name = "relu6"
    upper = 6.0
