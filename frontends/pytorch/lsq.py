"""LSQ quantizers (Esser et al. 2020; WP eq. 37-38) with noise tempering (NT eq. 7), and QAT preparation.

Forward: q(x) = round(clamp(x/s, Q_N, Q_P))·s, round = torch.round (half to even), straight-through.
Backward (WP eq. 37-38): ∂q/∂x = 1 inside [Q_N·s, Q_P·s], 0 outside; ∂q/∂s = round(x/s) − x/s inside,
Q_N below, Q_P above; the step's gradient is multiplied by g = 1/√(N·Q_P) (Esser et al. §2.2), N the
number of weights per step (per tensor or per channel) or the features per sample for activations.
Grids: signed b-bit [−2^(b−1), 2^(b−1)−1] (full range); unsigned [0, 2^b − 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwsim.errors import HwsimError

from .satnl import effective_weight


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round half to even in the forward pass, identity gradient."""
    return (torch.round(x) - x).detach() + x


def grad_scale(s: torch.Tensor, g: float) -> torch.Tensor:
    """value s, gradient multiplied by g."""
    return (s - s * g).detach() + s * g


def lsq_quantize(x: torch.Tensor, s: torch.Tensor, qn: int, qp: int, g: float) -> torch.Tensor:
    """LSQ fake quantization round(clamp(x/s, qn, qp))·s with the WP eq. 37-38 gradients and step-gradient scale g."""
    s = grad_scale(s, g)
    return round_ste(torch.clamp(x / s, qn, qp)) * s


def tempering_noise_std(err_abs: torch.Tensor, c: float, k: float) -> torch.Tensor:
    """c·exp(−k|e|)·√|e|, the noise std of NT eq. 7 for quantization error e = Q(W) − W."""
    return c * torch.exp(-k * err_abs) * torch.sqrt(err_abs)


def noise_temper(q: torch.Tensor, w: torch.Tensor, c: float, k: float) -> torch.Tensor:
    """Q̃(W) = Q(W) + sg(c·exp(−k|Q(W)−W|)·√|Q(W)−W|·ε), ε ~ N(0, 1) from torch's global RNG (NT eq. 7)."""
    with torch.no_grad():
        noise = tempering_noise_std((q - w).abs(), c, k) * torch.randn_like(w)
    return q + noise


def _grid(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


class LSQQuantizer(nn.Module):
    """Learned-step fake quantizer. ``channel_axis`` None = one step per tensor, else one per index of that axis.

    ``signed`` None: decided at initialisation (signed if the first batch has a negative value).
    The step initialises on the first forward to 2·mean|x|/√Q_P (Esser et al.), per channel if so.
    """

    def __init__(self, bits: int, signed: bool | None = True, channel_axis: int | None = None,
                 num_channels: int = 1, batch_axis: bool = False):
        super().__init__()
        if not (2 <= int(bits) <= 16):
            raise HwsimError(f"LSQ: bits {bits} outside the allowed range 2..16")
        self.bits, self.channel_axis, self.batch_axis = int(bits), channel_axis, batch_axis
        self.step = nn.Parameter(torch.ones(num_channels if channel_axis is not None else 1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("signed_flag", torch.tensor(-1 if signed is None else int(signed), dtype=torch.int8))

    @property
    def signed(self) -> bool:
        return bool(self.signed_flag.item() == 1)

    def qrange(self) -> tuple[int, int]:
        return _grid(self.bits, self.signed)

    def _shape(self, x: torch.Tensor) -> list[int]:
        shape = [1] * x.dim()
        if self.channel_axis is not None:
            shape[self.channel_axis] = -1
        return shape

    def _count(self, x: torch.Tensor) -> int:
        n = x.numel() // (x.shape[0] if self.batch_axis else 1)
        if self.channel_axis is not None:
            n //= x.shape[self.channel_axis]
        return max(n, 1)

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        if self.signed_flag.item() == -1:
            self.signed_flag.fill_(int(bool((x < 0).any())))
        _, qp = self.qrange()
        if self.channel_axis is not None:
            dims = [d for d in range(x.dim()) if d != self.channel_axis]
            m = x.abs().mean(dim=dims)
        else:
            m = x.abs().mean().reshape(1)
        self.step.copy_((2 * m / math.sqrt(qp)).clamp_min(1e-8))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self._init(x.detach())
        qn, qp = self.qrange()
        g = 1.0 / math.sqrt(self._count(x) * qp)
        return lsq_quantize(x, self.step.reshape(self._shape(x)), qn, qp, g)


class QuantWrapper(nn.Module):
    """conv/linear with an LSQ quantizer on its input activation and one (optionally noise-tempered) on its weight.

    Weight steps are per output channel when ``per_channel`` (else per tensor); the weight is the
    module's applied weight (f(V) for SatNL). Noise tempering (c, k) acts in training mode only.
    """

    def __init__(self, module: nn.Module, w_bits: int, a_bits: int | None, per_channel: bool = True,
                 noise: tuple[float, float] | None = None, a_signed: bool | None = None):
        super().__init__()
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise HwsimError(f"QuantWrapper: cannot wrap {type(module).__name__}; allowed: Conv2d, Linear")
        self.module = module
        cout = module.weight.shape[0]
        self.wq = LSQQuantizer(w_bits, True, 0 if per_channel else None, cout)
        self.aq = LSQQuantizer(a_bits, a_signed, None, 1, batch_axis=True) if a_bits else None
        self.noise = None if noise is None else (float(noise[0]), float(noise[1]))

    def quantized_weight(self) -> torch.Tensor:
        w = effective_weight(self.module)
        q = self.wq(w)
        if self.training and self.noise is not None:
            q = noise_temper(q, w, *self.noise)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aq is not None:
            x = self.aq(x)
        w = self.quantized_weight()
        m = self.module
        if isinstance(m, nn.Conv2d):
            return m._conv_forward(x, w, m.bias)
        return F.linear(x, w, m.bias)


def prepare_qat(model: nn.Module, w_bits: int, a_bits: int | None, per_channel: bool = True,
                noise: tuple[float, float] | None = None) -> nn.Module:
    """Wrap every nn.Conv2d / nn.Linear of ``model`` in a QuantWrapper (in place); returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, QuantWrapper):
            continue
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(model, name, QuantWrapper(child, w_bits, a_bits, per_channel, noise))
        else:
            prepare_qat(child, w_bits, a_bits, per_channel, noise)
    return model


def lsq_steps(model: nn.Module) -> dict[str, dict]:
    """{wrapper module name: {"w_step": [...], "a_step": float|None, "w_bits", "a_bits", "a_signed"}}."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, QuantWrapper):
            out[n] = {"w_step": [float(v) for v in m.wq.step.detach()], "w_bits": m.wq.bits,
                      "a_step": float(m.aq.step.detach()[0]) if m.aq is not None else None,
                      "a_bits": m.aq.bits if m.aq is not None else None,
                      "a_signed": m.aq.signed if m.aq is not None else None}
    return out
