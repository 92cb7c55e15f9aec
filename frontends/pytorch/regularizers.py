"""Weight regularizers for quantization robustness: KURE (kurtosis) and SymReg (symmetry).

Layers are found in ``model.named_modules()`` order: every nn.Conv2d / nn.Linear (SatNL twins
included, whose applied weight is f(V)); a conv is "followed by BN" when the next conv/linear/BN
module in that order is an nn.BatchNorm2d with as many features as the conv has output channels
(true for every model in :mod:`frontends.pytorch.models`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .satnl import effective_weight


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module, nn.BatchNorm2d | None]]:
    """[(name, conv_or_linear, following BN or None)] in module order."""
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    out = []
    for i, (n, m) in enumerate(mods):
        if isinstance(m, nn.BatchNorm2d):
            continue
        bn = None
        if isinstance(m, nn.Conv2d) and i + 1 < len(mods):
            nxt = mods[i + 1][1]
            if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels:
                bn = nxt
        out.append((n, m, bn))
    return out


def folded_weight(conv: nn.Module, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    """W·γ/√(σ²+ε) per output channel (σ² = BN running variance, not differentiated); W if no BN."""
    w = effective_weight(conv)
    if bn is None:
        return w
    scale = bn.weight / torch.sqrt(bn.running_var.detach() + bn.eps)
    return w * scale.reshape(-1, *([1] * (w.dim() - 1)))


def kurtosis(w: torch.Tensor) -> torch.Tensor:
    """Kurt[W] = E[((W − μ)/σ)^4] over all elements, σ the population std (KURE eq. 13)."""
    w = w.reshape(-1)
    mu = w.mean()
    d = w - mu
    var = (d * d).mean()
    return (d ** 4).mean() / (var * var)


def kure_loss(model: nn.Module, target: float = 1.8, on_folded: bool | None = None,
              layers: list | None = None) -> torch.Tensor:
    """L_K = 1/L · Σ_i |Kurt[W_i] − K_T|² over the model's conv/linear layers (KURE eq. 15).

    ``on_folded``: None (default) → BN-folded weights W·γ/√(σ²+ε) where a BN follows the conv, raw
    weights elsewhere; True → the same (folded wherever possible); False → raw weights everywhere.
    Multiply by λ (KURE eq. 14) outside.
    """
    layers = weight_layers(model) if layers is None else layers
    terms = []
    for _, m, bn in layers:
        w = folded_weight(m, bn) if (on_folded is not False and bn is not None) else effective_weight(m)
        if w.numel() < 4:
            continue
        terms.append((kurtosis(w) - target) ** 2)
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


def layer_kurtosis(model: nn.Module, on_folded: bool = True) -> dict[str, float]:
    """{layer name: Kurt[W]} — folded where a BN follows when ``on_folded``."""
    with torch.no_grad():
        return {n: float(kurtosis(folded_weight(m, bn) if on_folded else effective_weight(m)))
                for n, m, bn in weight_layers(model)}


def _sorted_rows(w: torch.Tensor) -> torch.Tensor:
    return torch.sort(w.reshape(w.shape[0], -1), dim=1).values


def symreg_sym1(w: torch.Tensor) -> torch.Tensor:
    """L_sym1 = 2/(C·N) Σ_c Σ_{i=1}^{⌊N/2⌋} |w̃_i^c + w̃_{N+1−i}^c| (SymReg eq. 8, NOTES.md erratum).

    w̃^c is channel c's weights sorted ascending (1-based), so the smallest pairs with the largest.
    For odd N the middle element w̃_{(N+1)/2} would pair with itself; it is left out of the sum
    (a lone weight has no mate, and |2·w̃_mid| would pull the median to 0, which is not symmetry).
    """
    s = _sorted_rows(w)
    c, n = s.shape
    h = n // 2
    if h == 0:
        return s.sum() * 0
    pair = s[:, :h] + torch.flip(s, dims=[1])[:, :h]
    return 2.0 / (c * n) * pair.abs().sum()


def symreg_sym2(w: torch.Tensor) -> torch.Tensor:
    """L_sym2 = 4/(C·N) Σ_c Σ_{i=1}^{⌊N/4⌋} |w̃_{2i−1} + w̃_{2i} + w̃_{N+2−2i} + w̃_{N+1−2i}| (SymReg eq. 9, erratum applied).

    The relaxed 2:2 form: the i-th pair of smallest weights is matched with the i-th pair of
    largest. The N − 4⌊N/4⌋ middle elements (0–3 of them) are left out.
    """
    s = _sorted_rows(w)
    c, n = s.shape
    q = n // 4
    if q == 0:
        return s.sum() * 0
    lo = s[:, : 2 * q].reshape(c, q, 2).sum(-1)
    hi = torch.flip(s, dims=[1])[:, : 2 * q].reshape(c, q, 2).sum(-1)
    return 4.0 / (c * n) * (lo + hi).abs().sum()


def symreg_layers(model: nn.Module, skip_depthwise: bool = True, skip_last_linear: bool = True) -> list:
    """The conv/linear layers SymReg applies to: by default not depthwise convs nor the last linear (SymReg §5)."""
    layers = weight_layers(model)
    last_lin = max((i for i, (_, m, _) in enumerate(layers) if isinstance(m, nn.Linear)), default=None)
    out = []
    for i, (n, m, bn) in enumerate(layers):
        if skip_depthwise and isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
            continue
        if skip_last_linear and i == last_lin:
            continue
        out.append((n, m, bn))
    return out


def symreg_loss(model: nn.Module, lambda1: float = 0.1, lambda2: float = 0.1, on_folded: bool = False,
                layers: list | None = None) -> torch.Tensor:
    """Σ_layers λ1·L_sym1 + λ2·L_sym2 (the regulariser part of SymReg eq. 10), per output channel.

    Applied to the weight the layer uses (f(V) under SatNL); ``on_folded`` uses the BN-folded weight.
    """
    layers = symreg_layers(model) if layers is None else layers
    total = torch.zeros(())
    for _, m, bn in layers:
        w = folded_weight(m, bn) if on_folded else effective_weight(m)
        total = total + lambda1 * symreg_sym1(w) + lambda2 * symreg_sym2(w)
    return total
