"""The PyTorch frontend's AdaRound / AdaQuant (they need autograd), called lazily.

Contract (frontends/pytorch/adaround.py): ``adaround_weights(qg, calib_images, *, progress=None,
seed=0, **opts) -> {layer: int64 w_q}`` on each layer's own grid, and ``adaquant_weights(...) ->
{layer: (w_q, float bias)}``; :func:`hwsim.ptq.replace_weights` installs them.
"""

from __future__ import annotations

import importlib

from hwsim.errors import HwsimError

_FUNCS = {"adaround": "adaround_weights", "adaquant": "adaquant_weights"}


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def frontend_available(method: str) -> bool:
    if not _has_torch():
        return False
    try:
        mod = importlib.import_module("frontends.pytorch.adaround")
    except ImportError:
        return False
    return hasattr(mod, _FUNCS[method])


def run_frontend_rounding(qg, calib_images, method: str, opts: dict, progress=None) -> list[str]:
    """Run AdaRound / AdaQuant in the frontend and install the weights it returns."""
    from hwsim.ptq.pipeline import replace_weights

    if not _has_torch():
        raise HwsimError(f"PTQ recipe {method!r} needs torch: pip install 'hwsim[torch]'")
    try:
        mod = importlib.import_module("frontends.pytorch.adaround")
        fn = getattr(mod, _FUNCS[method])
    except (ImportError, AttributeError):
        raise HwsimError(f"PTQ recipe {method!r} needs frontends.pytorch.adaround.{_FUNCS[method]} "
                         "(the PyTorch frontend of this hwsim install lacks it)") from None
    opts = dict(opts)
    seed = int(opts.pop("seed", 0))
    out = fn(qg, calib_images, progress=progress, seed=seed, **opts)
    if method == "adaround":
        replace_weights(qg, out)
    else:
        replace_weights(qg, {k: v[0] for k, v in out.items()}, biases={k: v[1] for k, v in out.items()})
    return [f"{method}: {len(out)} layer(s) re-rounded by the frontend (seed {seed})"]
