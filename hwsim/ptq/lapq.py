"""LAPQ (Nahshan et al., "Loss aware post-training quantization"), Algorithm 1 with the NOTES.md errata.

1. Layer-wise Lp step sizes: every weight and activation range set by minimising E|x − Q(x)|^p
   (LAPQ eq. 12) for each p of the grid (2 to 4 in 0.5 steps, LAPQ §3.2), and the network's loss
   measured for each p.
2. Quadratic interpolation of the loss over p; p* = the minimum of the parabola (clamped to the
   grid; the best grid point if the fit is not convex). The Lp ranges at p* are the start.
3. Powell's method jointly over all step sizes (one log-multiplier per weight tensor and per
   activation grid, on the p* ranges) on the calibration loss. scipy's Powell replaces the
   direction of *largest* decrease, as Powell's method and LAPQ's text say (LAPQ Algorithm 1's
   "drop the first direction" is an erratum, NOTES.md).

The loss is the cross entropy of the quantized network's logits against the float network's
predicted classes on the calibration images (compile gets images only, no labels), computed by
the integer simulator (``loss = "simulator"``, bit-accurate) or the fake-quant mirror
(``"mirror"``, needs torch). The result keeps the best point seen, so the final loss is never
above the initial (p*) loss. An evaluation re-runs only the layers downstream of what changed since
the current line search's origin (:class:`_Loss`); the loss is the full run's, bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from hwsim.compile import QuantHooks, quantize_folded
from hwsim.errors import HwsimError
from hwsim.execute import run_quantized
from hwsim.ptq.pipeline import range_hooks, report

BOUNDS = (-3.0, 0.7)  # log-multiplier bounds of a range: e^-3 ≈ 0.05× to e^0.7 ≈ 2× the Lp range


@dataclass
class LapqInfo:
    loss_kind: str
    images: int
    p_losses: dict = field(default_factory=dict)
    p_star: float = 0.0
    initial_loss: float = 0.0
    final_loss: float = 0.0
    evaluations: int = 0
    seconds: float = 0.0
    trace: list = field(default_factory=list)  # loss of every evaluation, in order
    stopped: str = ""  # why Powell stopped early, if it did (lapq.budget_s)

    def note(self) -> str:
        ps = ", ".join(f"L{p:g}={v:.4f}" for p, v in self.p_losses.items())
        return (f"LAPQ ({self.loss_kind} loss, {self.images} images): {ps}; p* = {self.p_star:.2f}; "
                f"Powell loss {self.initial_loss:.4f} -> {self.final_loss:.4f} in {self.evaluations} evaluations, "
                f"{self.seconds:.1f} s" + (f" (stopped: {self.stopped})" if self.stopped else ""))


class _OutOfTime(Exception):
    pass


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), labels]))


def _signature(qg, lay) -> list:
    """What running ``lay`` reads that LAPQ's step sizes can change: the grids of its inputs and output,
    its clamp and, for conv/linear, its integer weights, their scales and zero points, the int32 and
    float biases. Everything else a layer reads (requant parameters, certificates aside) is derived
    from these and the profile, which LAPQ does not change."""
    g = qg.grids
    sig = [g.get(t) for t in lay.inputs] + [g.get(lay.output), lay.clamp]
    if lay.w_q is not None:
        sig += [lay.w_q, lay.w_scale, lay.w_zero_point, lay.bias_q, lay.b_float]
    return sig


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def _mirror_fq(y, g, lo: int, hi: int):
    """The mirror's fake quantization (FakeQuantModel._fq, round half to even), in place on a fresh ``y``:
    clamp(round(y / s), lo − z, hi − z) · s equals (clamp(round(y / s) + z, lo, hi) − z) · s bit for bit
    (integers below 2^24 are exact in float32; a larger round(y / s) clamps to the same end either way)."""
    import torch

    return torch.clamp_(torch.round_(y.div_(g.scale)), lo - g.zero_point, hi - g.zero_point).mul_(g.scale)


def _mirror_layer(qg, lay, weights: dict, env: dict) -> None:
    """One layer of ``FakeQuantModel(qg).forward`` (rounding half to even, quantized activations) into ``env``.

    Same torch ops on the same tensors, so the same float32 values (tests: logits equal bit for bit);
    codes are not formed, and tensors it creates are fake-quantized in place."""
    import torch

    from frontends.pytorch import ops as fops

    fop = fops.get(lay.op)  # the op's float computation and what fake quantization does with its output
    if fop.mirror == "clamp":
        g = qg.grids[lay.output]
        lo, hi = lay.clamp
        env[lay.output] = torch.clamp(env[lay.inputs[0]], (lo - g.zero_point) * g.scale, (hi - g.zero_point) * g.scale)
        return
    y = fop.forward(lay, env, weights)
    if fop.mirror in ("max", "reshape"):  # values moved: no rounding
        env[lay.output] = y
        return
    if fop.mirror == "grid":
        g = qg.grids[lay.output]
        env[lay.output] = _mirror_fq(y, g, g.qmin, g.qmax)
        return
    env[lay.output] = _mirror_fq(y, qg.grids[lay.output], *lay.clamp)


@dataclass
class _Point:
    x: np.ndarray  # the optimizer's coordinates
    sigs: list  # per layer (input quantization first): _signature
    env: object  # every tensor (mirror: {name: torch tensor}; simulator: one {name: array} per batch)
    loss: float


def _parallel(d: np.ndarray, e: np.ndarray) -> bool:
    """d and e (non-zero) point along one line: the same coordinates move, in proportion."""
    if not np.array_equal(d != 0, e != 0):
        return False
    return abs(float(d @ e)) >= (1 - 1e-9) * float(np.linalg.norm(d) * np.linalg.norm(e))


class _Loss:
    """The LAPQ loss of a compiled graph, re-running only the layers that differ from a cached point.

    Called with the optimizer's ``point``, it follows Powell's method: the cached point is where the
    current line search started (its *origin*), and the best point of a line search becomes the next
    origin when a point off that line arrives (scipy's bounded line search returns its best
    evaluation, ties to the later one, and Powell goes on from there). A layer runs again when its
    signature (:func:`_signature`) differs from the origin's or one of its inputs ran again; every
    other tensor is the origin's. A line search along one coordinate re-runs only the network
    downstream of that weight or activation grid. Without ``point``: a full run, nothing kept.
    The result equals a full run bit for bit (tests: against ``run_quantized`` and
    ``FakeQuantModel``), because each layer's output is a function of its inputs and its signature.
    """

    def __init__(self, kind: str, images: np.ndarray, labels: np.ndarray, batch_size: int = 256):
        self.kind, self.images, self.labels, self.batch_size = kind, images, labels, batch_size
        self.origin: _Point | None = None  # where the current line search started
        self.line: np.ndarray | None = None  # its direction
        self.line_best: _Point | None = None  # its best point so far
        self.recomputed: list[int] = []  # layers run per evaluation (input quantization counted)
        if kind == "mirror":
            try:
                import torch

                from frontends.pytorch.fakequant import FakeQuantModel
            except ModuleNotFoundError as e:
                if e.name == "torch":
                    raise HwsimError("LAPQ with loss = 'mirror' needs torch: pip install 'hwsim[torch]' "
                                     "(or set lapq.loss = 'simulator')") from None
                raise
            self._fqm = FakeQuantModel
            self.xt = torch.from_numpy(np.ascontiguousarray(images, np.float32))

    def __call__(self, qg, point=None) -> float:
        if qg.weight_only:  # no activation grids: the simulator's float path (the mirror's too), uncached
            return _cross_entropy(run_quantized(qg, self.images).logits, self.labels)
        sigs = [[qg.grids[qg.input_name]]] + [_signature(qg, lay) for lay in qg.layers]
        base = None
        if point is not None:
            point = np.array(point, np.float64)
            if self.origin is not None:
                d = point - self.origin.x
                if self.line is not None and d.any() and not _parallel(d, self.line):
                    if self.line_best is not None:  # a new line search, from the last one's best point
                        self.origin = self.line_best
                    self.line, self.line_best = None, None
                    d = point - self.origin.x
                if self.line is None and d.any():
                    self.line = d
            base = self.origin
        if base is not None:
            todo = [not all(_same(u, v) for u, v in zip(s, b)) for s, b in zip(sigs, base.sigs)]
        else:
            todo = [True] * len(sigs)
        if self.kind == "mirror":
            env, logits = self._mirror(qg, todo, base and base.env)
        else:
            env, logits = self._simulator(qg, todo, base and base.env)
        v = _cross_entropy(logits, self.labels)
        if point is not None:
            here = _Point(point, sigs, env, v)
            if self.origin is None:
                self.origin = here
            elif self.line_best is None or v <= self.line_best.loss:
                self.line_best = here
        return v

    def _mirror(self, qg, todo, base_env):
        import torch

        with torch.inference_mode():
            weights = self._fqm(qg).weights if any(todo) else {}
            env = dict(base_env or {})
            dirty = set()
            if todo[0]:
                g = qg.grids[qg.input_name]
                env[qg.input_name] = _mirror_fq(self.xt.clone(), g, g.qmin, g.qmax)
                dirty.add(qg.input_name)
            for i, lay in enumerate(qg.layers):
                if todo[i + 1] or any(t in dirty for t in lay.inputs):
                    _mirror_layer(qg, lay, weights, env)
                    dirty.add(lay.output)
            self.recomputed.append(len(dirty))
            out = env[qg.output_name]
            return env, out.reshape(out.shape[0], -1).numpy()

    def _simulator(self, qg, todo, base_env):
        from hwsim.execute import LayerStats, run_layer

        n, bs = len(self.images), self.batch_size
        envs, logits, dirty = [], [], set()
        for k, i in enumerate(range(0, n, bs)):  # the batches of run_quantized (stochastic-rounding offsets)
            env = dict(base_env[k]) if base_env else {}
            dirty = set()
            if todo[0]:
                env[qg.input_name] = qg.grids[qg.input_name].quantize(self.images[i:i + bs])
                dirty.add(qg.input_name)
            for j, lay in enumerate(qg.layers):
                if todo[j + 1] or any(t in dirty for t in lay.inputs):
                    run_layer(qg, lay, env, LayerStats(lay.name, lay.op, lay.kind), "fast", offset=i)
                    dirty.add(lay.output)
            envs.append(env)
            logits.append(qg.grids[qg.output_name].dequantize(env[qg.output_name]).reshape(min(bs, n - i), -1))
        self.recomputed.append(len(dirty))
        return envs, np.concatenate(logits)


def _loss_fn(kind: str, images: np.ndarray, labels: np.ndarray) -> _Loss:
    """A loss with nothing cached yet: ``_loss_fn(kind, x, labels)(qg)`` is one full run."""
    return _Loss(kind, images, labels)


class _Recorder:
    """Range hooks that record what they return (weights per layer, activations per tensor)."""

    def __init__(self, hooks: QuantHooks):
        self.hooks, self.w, self.a = hooks, {}, {}

    def as_hooks(self) -> QuantHooks:
        def wr(name, w2, fmt):
            lo, hi = (self.hooks.weight_range(name, w2, fmt) if self.hooks.weight_range
                      else (w2.min(axis=1), w2.max(axis=1)))
            self.w[name] = (np.asarray(lo, np.float64), np.asarray(hi, np.float64))
            return lo, hi

        def ar(name, v, fmt):
            lo, hi = self.hooks.activation_range(name, v, fmt) if self.hooks.activation_range else (v.min(), v.max())
            self.a[name] = (float(lo), float(hi))
            return lo, hi
        return QuantHooks(weight_range=wr, activation_range=ar)


def _fixed_hooks(wr: dict, ar: dict, wkeys: list, akeys: list, x: np.ndarray) -> QuantHooks:
    m = np.exp(np.asarray(x, np.float64))
    wm = {k: m[i] for i, k in enumerate(wkeys)}
    am = {k: m[len(wkeys) + i] for i, k in enumerate(akeys)}

    def w(name, w2, fmt):
        lo, hi = wr[name]
        return lo * wm[name], hi * wm[name]

    def a(name, v, fmt):
        lo, hi = ar[name]
        return lo * am[name], hi * am[name]
    return QuantHooks(weight_range=w, activation_range=a)


def lapq(model, folded, dead, calib, calib_images, profile, recipe, progress=None):
    """Run LAPQ; returns (the compiled graph at the best point, LapqInfo)."""
    from scipy.optimize import minimize

    opts = recipe.lapq
    t0 = time.perf_counter()
    images = calib_images[:opts.images]
    labels = np.argmax(calib[folded.outputs[0]][:opts.images].reshape(len(images), -1), axis=1)
    loss = _Loss(opts.loss, images, labels)
    info = LapqInfo(opts.loss, len(images))
    tiny = {k: v[:1] for k, v in calib.items()}  # range hooks below ignore the values

    def ranges_at(p):
        rec = _Recorder(range_hooks(dataclasses.replace(recipe, p=float(p)), folded, calib, {}))
        qg = quantize_folded(model, folded, dead, calib, profile, rec.as_hooks(), certificates=False)
        return rec, qg

    # 1. the loss of the Lp ranges for each p (LAPQ §3.2)
    for i, p in enumerate(opts.p_grid):
        _, qg = ranges_at(p)
        info.p_losses[float(p)] = loss(qg)
        report(progress, "lapq p-grid", i + 1, len(opts.p_grid), info.p_losses[float(p)])
    # 2. quadratic interpolation over p
    ps = np.array(list(info.p_losses))
    ls = np.array(list(info.p_losses.values()))
    p_star = float(ps[np.argmin(ls)])
    if len(ps) >= 3:
        a, b, _ = np.polyfit(ps, ls, 2)
        if a > 0:
            p_star = float(np.clip(-b / (2 * a), ps.min(), ps.max()))
    info.p_star = p_star
    rec, _ = ranges_at(p_star)
    wkeys, akeys = list(rec.w), list(rec.a)
    x0 = np.zeros(len(wkeys) + len(akeys))
    best = {"x": x0.copy(), "f": np.inf}

    def f(x):
        if opts.budget_s is not None and info.trace and time.perf_counter() - t0 > opts.budget_s:
            raise _OutOfTime
        qg = quantize_folded(model, folded, dead, tiny, profile, _fixed_hooks(rec.w, rec.a, wkeys, akeys, x),
                             certificates=False)
        v = loss(qg, x)
        info.trace.append(v)
        if v < best["f"]:
            best["x"], best["f"] = np.array(x, np.float64), v
        report(progress, "lapq", len(info.trace), opts.maxfev, v)
        return v

    info.initial_loss = f(x0)
    # 3. Powell jointly over all step sizes
    if opts.maxfev > 1 and x0.size:
        try:
            minimize(f, x0, method="Powell", bounds=[BOUNDS] * x0.size,
                     options={"maxfev": opts.maxfev - 1, "xtol": opts.xtol, "ftol": 1e-4})
        except _OutOfTime:
            info.stopped = f"time budget {opts.budget_s:g} s"
    info.final_loss = best["f"]
    info.evaluations = len(info.trace)
    qg = quantize_folded(model, folded, dead, calib, profile, _fixed_hooks(rec.w, rec.a, wkeys, akeys, best["x"]))
    info.seconds = time.perf_counter() - t0
    return qg, info
