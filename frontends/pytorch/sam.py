"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021) as a wrapper around a base optimizer.

Usage per batch: loss(model).backward(); opt.first_step(); loss(model).backward(); opt.second_step().
"""

from __future__ import annotations

import torch

from hwsim.errors import HwsimError


class SAM:
    """Two-step sharpness-aware minimisation around ``base`` (any torch optimizer over the same params).

    first_step: w ← w + e(w), with e = ρ·g/‖g‖ (SAM) or e = ρ·T²g/‖T g‖, T = |w| + η element-wise
    (ASAM, Kwon et al. eq. for the adaptive ε̂), so that ‖e‖ = ρ (SAM) and ‖T⁻¹e‖ = ρ (ASAM).
    second_step: restores w and steps ``base`` with the gradient taken at the perturbed point.
    """

    def __init__(self, params, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01):
        if rho <= 0:
            raise HwsimError(f"SAM: rho {rho} must be > 0")
        self.params = [p for p in params if p.requires_grad]
        self.base = base
        self.rho, self.adaptive, self.eta = float(rho), bool(adaptive), float(eta)
        self._saved: list[torch.Tensor | None] = []
        self.last_perturbation: list[torch.Tensor | None] = []

    @property
    def param_groups(self):
        return self.base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def first_step(self) -> None:
        ts = [(p.abs() + self.eta) if self.adaptive else None for p in self.params]
        scaled = [(t * p.grad if t is not None else p.grad) for p, t in zip(self.params, ts) if p.grad is not None]
        norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2) if scaled else torch.zeros(())
        scale = self.rho / (norm + 1e-12)
        self._saved, self.last_perturbation = [], []
        for p, t in zip(self.params, ts):
            if p.grad is None:
                self._saved.append(None)
                self.last_perturbation.append(None)
                continue
            e = (t * t * p.grad if t is not None else p.grad) * scale
            self._saved.append(p.detach().clone())
            self.last_perturbation.append(e)
            p.add_(e)
        self.zero_grad()

    @torch.no_grad()
    def second_step(self) -> None:
        for p, w in zip(self.params, self._saved):
            if w is not None:
                p.copy_(w)
        self.base.step()
        self.zero_grad()

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.base.load_state_dict(sd)
