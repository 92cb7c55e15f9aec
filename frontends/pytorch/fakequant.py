"""The fake-quant mirror: what a QAT framework simulates, built from hwsim's compiled graph.

Given a :class:`hwsim.compile.QuantizedGraph`, :class:`FakeQuantModel` applies exactly the same
scales, zero points, bit widths, granularity and clamps — but in float32 torch arithmetic, the
way fake quantization (MQBench, AIMET, Brevitas, torch.ao QAT) does it:

- the input is quantized to its grid (round half to even) and dequantized;
- conv/linear use the dequantized integer weights ``(w_q - z_w) * s_w`` and the dequantized
  int32 bias ``b_q * s_x * s_w``, float32 math, then the output is fake-quantized:
  ``clamp(round(y / s_y) + z_y, lo, hi)``. ``round`` is round-half-to-even by default — what
  QAT fake-quant ops do (torch.fake_quantize_* use nearbyint, LSQ and Brevitas use
  torch.round) — or, with ``rounding="profile"``, the profile's own mode (``stochastic`` has
  no fake-quant analogue and stays half-even);
- BatchNorm is handled as the profile handles it: statically folded (``fold``) or, for
  ``scale``, with γ/√(σ²+ε) absorbed into the per-channel weight scale — the same
  dequantized weights the simulator's integers represent;
- pools, add and concat work on dequantized floats and fake-quantize to the output grid.

What fake quantization cannot express — the accumulator width and its wrap/saturate policy,
partial sums, fixed-point multipliers and their double rounding, shift rounding — is exactly
what ``hwsim compare`` measures against this mirror.
"""

from __future__ import annotations

import numpy as np
import torch

from hwsim.compile import QuantizedGraph

from . import ops as fops
from .ops import linear_forward  # noqa: F401  (importable from here, as before)


def _round(x: torch.Tensor, mode: str) -> torch.Tensor:
    if mode in ("half_even", "stochastic"):
        return torch.round(x)  # torch.round rounds half to even
    if mode == "half_away":
        return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)
    if mode == "half_up":
        return torch.floor(x + 0.5)
    if mode == "floor":
        return torch.floor(x)
    if mode == "trunc":
        return torch.trunc(x)
    raise ValueError(mode)


def _activation(y: torch.Tensor, act: str | None) -> torch.Tensor:
    return fops.activation(y, act)


class FakeQuantModel(torch.nn.Module):
    """float32 fake-quant execution of a compiled graph; ``forward`` returns logits.

    ``forward(x, return_codes=True)`` also returns, per grid tensor, the integer codes
    ``round(y / s) + z`` the fake-quant model holds (comparable with the simulator's integers).

    ``float_activations=True`` leaves every activation unquantized (fused ReLU/ReLU6 applied as
    functions): the execution of weight-only profiles. ``float_weights=True`` uses the folded float
    weights and biases instead of the dequantized integers. Both together give the folded float
    network, which AdaRound/AdaQuant (frontends.pytorch.adaround) reconstruct against.
    BatchNorm: whatever the profile's ``batchnorm`` did (``self.batchnorm``): ``fold`` = static
    folding (WP eq. 11-12), ``scale`` = unfolded weights, BN factor in the weight scale (WP eq. 41).
    """

    def __init__(self, qg: QuantizedGraph, rounding: str = "half_even", float_activations: bool = False,
                 float_weights: bool = False):
        super().__init__()
        self.rounding = rounding
        self.float_activations = bool(float_activations)
        if qg.weight_only and not self.float_activations:
            raise ValueError("weight-only profiles have no activation grids to mirror")
        self.qg = qg
        self.batchnorm = qg.profile.batchnorm
        self.weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        nodes = {n.name: n for n in qg.model.nodes}
        for lay in qg.mac_layers:
            if float_weights:
                w = np.asarray(qg.model.param(nodes[lay.name], "weight"), np.float32)
                b = np.asarray(lay.b_float, np.float32)
                self.weights[lay.name] = (torch.from_numpy(w), torch.from_numpy(b))
                continue
            shp = (-1,) + (1,) * (lay.w_q.ndim - 1)
            zp = np.broadcast_to(np.asarray(lay.w_zero_point), (lay.w_q.shape[0],)).reshape(shp)
            w = ((lay.w_q - zp) * lay.w_scale.reshape(shp)).astype(np.float32)
            if lay.bias_q is None or getattr(lay.requant_params, "bias_term", None) is not None:
                b = np.asarray(lay.b_float, np.float32)  # weight-only, or bias.form = float32: the float bias
            else:
                b = (lay.bias_q * (qg.grids[lay.inputs[0]].scale * lay.w_scale)).astype(np.float32)
            self.weights[lay.name] = (torch.from_numpy(w), torch.from_numpy(b))

    def _fq(self, y: torch.Tensor, tensor: str, lo: int, hi: int, rounding: str):
        if self.float_activations:
            return y, y
        g = self.qg.grids[tensor]
        q = torch.clamp(_round(y / g.scale, rounding) + g.zero_point, lo, hi)
        return (q - g.zero_point) * g.scale, q

    @torch.no_grad()
    def forward(self, x: torch.Tensor, return_codes: bool = False, return_tensors: bool = False):
        """logits; with ``return_codes`` also {tensor: integer codes}; with ``return_tensors`` (instead) also
        {tensor: dequantized float values} — every layer's fake-quantized input, as AdaRound needs it."""
        qg = self.qg
        gi = qg.grids.get(qg.input_name)
        xf, xq = self._fq(x.float(), qg.input_name, gi and gi.qmin, gi and gi.qmax, "half_even")
        env = {qg.input_name: xf}
        codes = {qg.input_name: xq}
        for lay in qg.layers:
            rounding = lay.profile.requant.rounding if self.rounding == "profile" else self.rounding
            fop = fops.get(lay.op)  # the op's float computation and what fake quantization does with it
            if fop.mirror == "clamp":  # a standalone activation
                x = env[lay.inputs[0]]
                if self.float_activations:
                    env[lay.output] = codes[lay.output] = fop.activate(x)
                    continue
                g = qg.grids[lay.output]
                lo, hi = lay.clamp
                env[lay.output] = torch.clamp(x, (lo - g.zero_point) * g.scale, (hi - g.zero_point) * g.scale)
                codes[lay.output] = torch.clamp(codes[lay.inputs[0]], lo, hi)
                continue
            y = fop.forward(lay, env, self.weights)
            if fop.mirror == "reshape":  # values and codes both reshaped
                env[lay.output] = y
                codes[lay.output] = codes[lay.inputs[0]].reshape(y.shape)
                continue
            if fop.mirror == "grid":  # average pools: fake-quantized to the whole grid
                g = qg.grids.get(lay.output)
                y, q = self._fq(y, lay.output, g and g.qmin, g and g.qmax, rounding)
                env[lay.output], codes[lay.output] = y, q
                continue
            if self.float_activations:
                env[lay.output] = codes[lay.output] = _activation(y, lay.activation)
                continue
            if fop.mirror == "max":  # values moved: their codes
                env[lay.output] = y
                codes[lay.output] = _round(y / qg.grids[lay.output].scale, "half_even") + qg.grids[lay.output].zero_point
                continue
            lo, hi = lay.clamp
            y, q = self._fq(y, lay.output, lo, hi, rounding)
            env[lay.output], codes[lay.output] = y, q
        out = env[qg.output_name].reshape(env[qg.output_name].shape[0], -1)
        if return_codes:
            return out, codes
        if return_tensors:
            return out, env
        return out


def mirror_codes(qg: QuantizedGraph, x_norm: np.ndarray, rounding: str = "half_even"):
    """Run the mirror on normalised images: (logits, {tensor: int64 codes})."""
    m = FakeQuantModel(qg, rounding)
    out, codes = m(torch.from_numpy(np.ascontiguousarray(x_norm, np.float32)), return_codes=True)
    return out.numpy(), {k: v.numpy().astype(np.int64) for k, v in codes.items()}
