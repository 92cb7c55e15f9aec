"""compile with a PTQ recipe: fold -> (CLE, bias absorption) -> calibrate -> ranges -> quantize ->
(AdaRound/AdaQuant, LAPQ, bias correction). See docs/ptq.md."""

from __future__ import annotations

from typing import Callable

import numpy as np

from hwsim.compile import (LINEAR_OPS, SHARES_INPUT_GRID, QuantHooks, QuantizedGraph, _mse_range, calibrate,
                           finish_linear, fold_graph, quantize_folded)
from hwsim import ops
from hwsim.errors import HwsimError
from hwsim.graph import Graph
from hwsim.profile import Profile, TensorFormat
from hwsim.ptq import cle as cle_mod
from hwsim.ptq import ranges
from hwsim.ptq.recipe import Recipe


def report(progress: Callable | None, stage: str, step: int, total: int | None = None, value: float | None = None):
    """Call ``progress(stage, step, total, value)`` if given (value: e.g. LAPQ's current loss)."""
    if progress is not None:
        progress(stage, step, total, value)


def bn_stats(model: Graph) -> dict[str, dict]:
    """{conv/linear name: {"gamma", "beta"}} of the BatchNorm that follows it (captured before folding):
    the pre-activation of each folded layer's output channel is ~ N(β, γ²) (WP eq. 18, 28)."""
    consumers: dict[str, list] = {}
    for n in model.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    out = {}
    for n in model.nodes:
        if n.op not in LINEAR_OPS:
            continue
        cs = consumers.get(n.outputs[0], [])
        if len(cs) == 1 and ops.get(cs[0].op).folds_into_producer:
            bn = cs[0]
            out[n.name] = {"gamma": model.tensors[bn.params["weight"]].astype(np.float64),
                           "beta": model.tensors[bn.params["bias"]].astype(np.float64)}
    return out


def grid_source_fn(folded: Graph) -> Callable[[str], str]:
    producer = {n.outputs[0]: n for n in folded.nodes}

    def src(t: str) -> str:
        while t in producer and producer[t].op in SHARES_INPUT_GRID:
            t = producer[t].inputs[0]
        return t

    return src


def _profile_activation_range(v: np.ndarray, fmt: TensorFormat, name: str):
    """The profile's own activation range method (for tensors a recipe leaves to the profile)."""
    if fmt.range == "percentile":
        return np.percentile(v, 100 - fmt.percentile), np.percentile(v, fmt.percentile)
    if fmt.range == "mse":
        qmin, qmax = fmt.qmin, fmt.qmax
        sub = v if v.size <= 200_000 else v[np.random.default_rng(0).choice(v.size, 200_000, replace=False)]
        return _mse_range(sub, fmt, qmin, qmax)
    if fmt.range == "lsq":
        raise HwsimError(f"tensor '{name}': a recipe that sets some activation ranges cannot keep "
                         "activations.range = 'lsq' for the others; use a recipe without range setting")
    return v.min(), v.max()


def range_hooks(recipe: Recipe, folded: Graph, calib: dict[str, np.ndarray], bn: dict,
                no_bn: list[str] | None = None) -> QuantHooks:
    """QuantHooks implementing the recipe's weight and activation range methods.

    ``no_bn`` collects the tensors the "bn" method had no BatchNorm statistics for (min-max used).
    """
    opts = dict(p=recipe.p, percentile=recipe.percentile, aciq_dist=recipe.aciq_dist)
    wr = ar = None
    if recipe.weights != "profile":
        def wr(name, w2, fmt):
            rows = w2 if fmt.granularity == "per_channel" else w2.reshape(1, -1)
            lo, hi = ranges.tensor_range(recipe.weights, rows, fmt, **opts)
            return np.broadcast_to(lo, (w2.shape[0],)).copy(), np.broadcast_to(hi, (w2.shape[0],)).copy()
    src = grid_source_fn(folded)
    logits = src(folded.outputs[0])
    by_tensor = {n.outputs[0]: (bn[n.name], n.attrs.get("activation")) for n in folded.nodes if n.name in bn}
    no_bn = [] if no_bn is None else no_bn
    if recipe.activations != "profile" or recipe.last_layer:
        def ar(name, v, fmt):
            if recipe.last_layer == "cross_entropy" and name == logits:
                return ranges.cross_entropy_range(calib[name].reshape(len(calib[name]), -1), fmt)  # WP eq. 17
            m = recipe.activations
            if m == "profile":
                return _profile_activation_range(v, fmt, name)
            if m == "bn":
                if name in by_tensor:
                    st, act = by_tensor[name]
                    return ranges.bn_range(st["gamma"], st["beta"], act, recipe.bn_alpha)  # WP eq. 18-19
                no_bn.append(name)
                return v.min(), v.max()
            if m == "percentile":
                lo, hi = ranges.percentile_range(v.reshape(1, -1), recipe.percentile)
            else:
                lo, hi = ranges.tensor_range(m, ranges.subsample(v).reshape(1, -1), fmt, **opts)
            return float(lo[0]), float(hi[0])
    return QuantHooks(weight_range=wr, activation_range=ar)


def compile_with_recipe(model: Graph, profile: Profile, calib_images: np.ndarray, recipe: Recipe,
                        hooks: QuantHooks | None = None, progress: Callable | None = None) -> QuantizedGraph:
    """:func:`hwsim.compile.compile_model` with a PTQ recipe (docs/ptq.md)."""
    hooks = hooks or QuantHooks()
    if hooks.weight_range is not None or hooks.activation_range is not None:
        raise HwsimError("compile: give range hooks or a PTQ recipe, not both")
    notes: list[str] = []
    folded, dead = fold_graph(model, profile.batchnorm)
    bn = bn_stats(model)
    if recipe.cle or recipe.bias_absorption:
        if profile.batchnorm != "fold":
            notes.append(f"CLE / bias absorption skipped: they need batchnorm = 'fold', the profile has "
                         f"{profile.batchnorm!r}")
        else:
            folded = cle_mod.clone_graph(folded)
            if recipe.cle:
                notes += cle_mod.equalize(folded, bn, recipe.cle_relu6)
            if recipe.bias_absorption:
                notes += cle_mod.absorb_high_bias(folded, bn)
    if hooks.before_quantize is not None:
        folded = hooks.before_quantize(folded, calibrate(folded, calib_images))
    report(progress, "calibrate", 0, len(calib_images))
    calib = calibrate(folded, calib_images)
    report(progress, "calibrate", len(calib_images), len(calib_images))
    no_bn: list[str] = []
    rh = range_hooks(recipe, folded, calib, bn, no_bn)
    report(progress, "ranges", 0, None)
    if recipe.lapq is not None:
        from hwsim.ptq.lapq import lapq

        qg, info = lapq(model, folded, dead, calib, calib_images, profile, recipe, progress=progress)
        notes.append(info.note())
        qg.ptq["lapq"] = info
    else:
        qg = quantize_folded(model, folded, dead, calib, profile, rh)
    if no_bn:
        notes.append(f"bn ranges: {len(set(no_bn))} tensor(s) without a preceding BatchNorm use min-max "
                     f"({', '.join(sorted(set(no_bn)))})")
    bc = recipe.bias_correction
    rounding = recipe.weight_rounding
    if rounding == "adaround_if_torch":
        from hwsim.ptq.frontend import frontend_available

        rounding = "adaround" if frontend_available("adaround") else "nearest"
        notes.append("wp: AdaRound (torch and the frontend present)" if rounding == "adaround"
                     else "wp: AdaRound unavailable (needs torch and frontends.pytorch.adaround): "
                          "nearest rounding + empirical bias correction instead (WP Fig. 8)")
        if rounding == "adaround":
            bc = None  # WP Fig. 8: bias correction only where AdaRound is not used
    if rounding in ("adaround", "adaquant"):
        from hwsim.ptq.frontend import run_frontend_rounding

        notes += run_frontend_rounding(qg, calib_images, rounding, recipe.adaround, progress)
    if bc is not None:
        from hwsim.ptq.biascorr import correct_biases

        notes += correct_biases(qg, calib, bc, bn)
    if hooks.after_quantize is not None:
        qg = hooks.after_quantize(qg, calib_images)
    qg.recipe = recipe.name
    qg.notes.extend(notes)
    return qg


def replace_weights(qg: QuantizedGraph, weights: dict[str, np.ndarray] | None = None,
                    biases: dict[str, np.ndarray] | None = None,
                    w_scales: dict[str, np.ndarray] | None = None) -> QuantizedGraph:
    """Install new integer weights (same grid: lay.w_scale, w_zero_point, w_qmin..w_qmax), float biases
    and/or effective per-channel weight scales into a compiled graph (in place, also returned), and
    recompute everything derived: w_float, the int32 bias, requant parameters, certificates."""
    weights, biases, w_scales = weights or {}, biases or {}, w_scales or {}
    mac = {lay.name: lay for lay in qg.mac_layers}
    for what, d in (("weights", weights), ("biases", biases), ("w_scales", w_scales)):
        for name in d:
            if name not in mac:
                raise HwsimError(f"replace_weights: {what} for {name!r}, which is not a conv2d/linear layer "
                                 f"(layers: {', '.join(mac)})")
    for name in set(weights) | set(biases) | set(w_scales):
        lay = mac[name]
        if name in weights:
            w = np.asarray(weights[name])
            if w.shape != lay.w_q.shape or not np.issubdtype(w.dtype, np.integer):
                raise HwsimError(f"replace_weights: layer {name!r}: weights must be integers of shape "
                                 f"{lay.w_q.shape}, got {w.dtype} {w.shape}")
            if w.size and (w.min() < lay.w_qmin or w.max() > lay.w_qmax):
                raise HwsimError(f"replace_weights: layer {name!r}: weights in [{w.min()}, {w.max()}] leave the "
                                 f"grid [{lay.w_qmin}, {lay.w_qmax}]")
            lay.w_q = w.astype(np.int64)
        cout = lay.w_q.shape[0]
        if name in biases:
            b = np.asarray(biases[name], np.float64).reshape(-1)
            if b.shape != (cout,) or not np.all(np.isfinite(b)):
                raise HwsimError(f"replace_weights: layer {name!r}: bias must be {cout} finite numbers")
            lay.b_float = b.astype(np.float32)
        if name in w_scales:
            s = np.asarray(w_scales[name], np.float64).reshape(-1)
            if s.shape != (cout,) or not np.all(s > 0) or not np.all(np.isfinite(s)):
                raise HwsimError(f"replace_weights: layer {name!r}: w_scales must be {cout} positive finite numbers")
            if lay.profile.requant.mode == "pow2" and not qg.weight_only:
                raise HwsimError(f"replace_weights: layer {name!r}: requant.mode = 'pow2' cannot take new weight scales")
            lay.w_scale = s
        finish_linear(lay, qg.grids, qg.reach, qg.weight_only)
    return qg
