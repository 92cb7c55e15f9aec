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


class FixedQuantizer(nn.Module):
    """Fake quantization on a fixed (not learned) grid: (clamp(round(x/s) + z, qmin, qmax) − z)·s, round half
    to even, straight-through. The QAT input quantizer: the image on the hardware profile's input grid
    (:func:`input_quantizer`), as hwsim will quantize it. The grid lives in buffers (saved in checkpoints)."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0, qmin: int = -128, qmax: int = 127, bits: int = 8,
                 signed: bool = True):
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(int(zero_point), dtype=torch.int64))
        self.register_buffer("qlimits", torch.tensor([int(qmin), int(qmax)], dtype=torch.int64))
        self.bits, self.signed = int(bits), bool(signed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.zero_point.to(x.dtype)
        q = torch.clamp(round_ste(x / self.scale) + z, int(self.qlimits[0]), int(self.qlimits[1]))
        return (q - z) * self.scale

    def grid(self) -> dict:
        return {"scale": float(self.scale), "zero_point": int(self.zero_point), "qmin": int(self.qlimits[0]),
                "qmax": int(self.qlimits[1]), "bits": self.bits, "signed": self.signed}


def input_quantizer(fmt, bits: int, images01, mean, std) -> FixedQuantizer:
    """The QAT input quantizer on the grid hwsim gives the input under a profile whose activation format is
    ``fmt`` (signedness, symmetry, scale kind) at ``bits`` (the first-layer bits), from ``images01`` (the
    profile's calibration images in [0, 1]) normalised as the exported graph does (float32 (x − μ)/σ):
    min-max, as hwsim's ``activations.range = lsq`` falls back to for tensors without a learned step."""
    import dataclasses

    import numpy as np

    from hwsim.compile import activation_grid

    x = np.asarray(images01, np.float32)
    xn = (x - np.asarray(mean, np.float32).reshape(1, -1, 1, 1)) / np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    g = activation_grid(xn, dataclasses.replace(fmt, range="minmax", step_scale=1.0), int(bits))
    return FixedQuantizer(g.scale, g.zero_point, g.qmin, g.qmax, g.bits, g.signed)


class QuantWrapper(nn.Module):
    """conv/linear with a quantizer on its input activation and an LSQ one (optionally noise-tempered) on its weight.

    Weight steps are per output channel when ``per_channel`` (else per tensor); the weight is the
    module's applied weight (f(V) for SatNL). Noise tempering (c, k) acts in training mode only.
    The input quantizer is LSQ (learned, a_bits) unless ``input_q`` (e.g. a :class:`FixedQuantizer`) is given.
    """

    def __init__(self, module: nn.Module, w_bits: int, a_bits: int | None, per_channel: bool = True,
                 noise: tuple[float, float] | None = None, a_signed: bool | None = None,
                 input_q: nn.Module | None = None):
        super().__init__()
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise HwsimError(f"QuantWrapper: cannot wrap {type(module).__name__}; allowed: Conv2d, Linear")
        self.module = module
        cout = module.weight.shape[0]
        self.wq = LSQQuantizer(w_bits, True, 0 if per_channel else None, cout)
        self.aq = input_q if input_q is not None else (
            LSQQuantizer(a_bits, a_signed, None, 1, batch_axis=True) if a_bits else None)
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
                noise: tuple[float, float] | None = None, first: str | None = None, last: str | None = None,
                first_bits: int | None = None, last_bits: int | None = None,
                input_q: nn.Module | None = None) -> nn.Module:
    """Wrap every nn.Conv2d / nn.Linear of ``model`` in a QuantWrapper (in place); returns ``model``.

    ``first`` / ``last``: qualified names of the first and last conv/linear in execution order
    (:func:`frontends.pytorch.export.mac_module_order`). The first layer's weights use ``first_bits``
    and its input ``input_q`` (the profile's input grid) or, without it, LSQ at ``first_bits``; the
    last layer's weights and input use ``last_bits`` — hwsim's first_layer.bits / last_layer.bits.
    None: the QAT bits (every layer alike).
    """
    def wrap(name: str, child: nn.Module) -> QuantWrapper:
        wb, ab, iq = w_bits, a_bits, None
        if name == first:
            wb = first_bits or w_bits
            ab = (first_bits or a_bits) if a_bits else None
            iq = input_q if a_bits else None
        if name == last:
            wb = last_bits or wb
            ab = (last_bits or a_bits) if a_bits else None
        return QuantWrapper(child, wb, ab, per_channel, noise, input_q=iq)

    def walk(mod: nn.Module, prefix: str) -> None:
        for name, child in list(mod.named_children()):
            q = f"{prefix}{name}"
            if isinstance(child, QuantWrapper):
                continue
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                setattr(mod, name, wrap(q, child))
            else:
                walk(child, q + ".")

    walk(model, "")
    return model


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Static BN folding for QAT (WP eq. 11-12, Table 7 "static folding"), in place: every BatchNorm2d that
    directly follows a Conv2d (its only user) is folded into it with its running statistics —
    W ← W·γ/√(σ²+ε), b ← β + (b − μ)·γ/√(σ²+ε) — and replaced by nn.Identity; returns the folded BN names.
    QAT then quantizes the folded weights the hardware uses, and BN statistics stay frozen."""
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - a user model fx cannot trace
        raise HwsimError(f"static BN folding: torch.fx cannot trace {type(model).__name__}: {str(e).splitlines()[0]}") from None
    mods = dict(model.named_modules())
    folded = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and type(mods.get(src.target)) is nn.Conv2d
                and len(src.users) == 1):
            continue
        conv, bn = mods[src.target], mods[node.target]
        with torch.no_grad():
            f = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(f.reshape(-1, 1, 1, 1))  # WP eq. 11
            new_b = beta + (b - bn.running_mean) * f  # WP eq. 12
            if conv.bias is None:
                conv.bias = nn.Parameter(new_b.clone())
            else:
                conv.bias.copy_(new_b)
        parent, _, leaf = node.target.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
        folded.append(node.target)
    return folded


def _input_entry(aq) -> dict:
    if isinstance(aq, FixedQuantizer):
        return {"a_step": None, "a_bits": aq.bits, "a_signed": aq.signed, "a_grid": aq.grid()}
    return {"a_step": float(aq.step.detach()[0]) if aq is not None else None,
            "a_bits": aq.bits if aq is not None else None,
            "a_signed": aq.signed if aq is not None else None}


def lsq_entry(m: QuantWrapper) -> dict:
    """The export metadata of one QAT layer: {"w_step": [...], "w_bits", "a_step" (None: not learned), "a_bits",
    "a_signed"[, "a_grid": the fixed input grid]}."""
    return {"w_step": [float(v) for v in m.wq.step.detach()], "w_bits": m.wq.bits, **_input_entry(m.aq)}


def lsq_steps(model: nn.Module) -> dict[str, dict]:
    """{wrapper module name: :func:`lsq_entry`}."""
    return {n: lsq_entry(m) for n, m in model.named_modules() if isinstance(m, QuantWrapper)}
