"""SatNL: saturating nonlinearity on the weights, conv(W, X) -> conv(f(V), X) with f = tanh (SymReg §4.2).

The SymReg paper gives no equation number for it: §4.2 asks for an odd, bounded function whose
slope falls with |V| and picks the plain hyperbolic tangent, ``f(V) = tanh(V)`` — so that is
what is used here (no normalisation). The stored parameter ``weight`` is V; export writes f(V).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def satnl(v: torch.Tensor) -> torch.Tensor:
    """f(V) = tanh(V), element-wise (SymReg §4.2)."""
    return torch.tanh(v)


class SatNLConv2d(nn.Conv2d):
    """nn.Conv2d whose ``weight`` parameter is V; the forward pass convolves with tanh(V)."""

    def effective_weight(self) -> torch.Tensor:
        return satnl(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class SatNLLinear(nn.Linear):
    """nn.Linear whose ``weight`` parameter is V; the forward pass uses tanh(V)."""

    def effective_weight(self) -> torch.Tensor:
        return satnl(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


def _v_from_w(w: torch.Tensor) -> torch.Tensor:
    # atanh is the exact inverse; weights beyond |0.999| (never seen at init) are clipped first.
    return torch.atanh(w.clamp(-0.999, 0.999))


def apply_satnl(model: nn.Module, init_from_weights: bool = True) -> nn.Module:
    """Replace every nn.Conv2d / nn.Linear in ``model`` (in place) by its SatNL twin; returns ``model``.

    With ``init_from_weights`` V = atanh(W), so f(V) == W and the function is unchanged (up to the
    clip at |W| = 0.999).
    """
    for name, child in list(model.named_children()):
        if isinstance(child, (SatNLConv2d, SatNLLinear)):
            continue
        if type(child) is nn.Conv2d:
            new = SatNLConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                              child.dilation, child.groups, child.bias is not None, child.padding_mode)
        elif type(child) is nn.Linear:
            new = SatNLLinear(child.in_features, child.out_features, child.bias is not None)
        else:
            apply_satnl(child, init_from_weights)
            continue
        with torch.no_grad():
            new.weight.copy_(_v_from_w(child.weight) if init_from_weights else child.weight)
            if child.bias is not None:
                new.bias.copy_(child.bias)
        setattr(model, name, new)
    return model


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight a conv/linear module actually applies: f(V) for SatNL layers, W otherwise."""
    f = getattr(module, "effective_weight", None)
    return f() if f is not None else module.weight
