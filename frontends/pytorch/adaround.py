"""AdaRound (Nagel et al. 2020; WP §3.4, eq. 29-35) and AdaQuant (Hubara et al. 2020) on a compiled graph.

Both keep every conv/linear layer's EXISTING weight grid (scale, zero point, [w_qmin, w_qmax] of the
``QuantizedGraph``, first/last-layer bits included) and only choose the integers: real weight =
(w_q − w_zero_point) · w_scale per output channel, where w_scale is the effective scale (the BN
factor of ``batchnorm = scale`` included), so w / w_scale is taken on the folded float weight w.

Layers are processed in graph order. Layer ℓ's input x̂ comes from the fake-quant mirror
(:class:`frontends.pytorch.fakequant.FakeQuantModel`; weight-only profiles: float activations) with
every preceding layer's new integers installed — the quantized model's own inputs. The target is the
folded float network's output of that layer, f_a(W x + b), x the float network's input to it: the
asymmetric reconstruction of WP eq. 35 (``target="float"``); ``target="same"`` uses f_a(W x̂ + b)
instead. f_a is the layer's fused ReLU/ReLU6 (none for plain layers). The prediction uses the bias
the hardware will add (the dequantized int32 bias, or the float bias under ``bias.form = float32``).

Reconstruction loss: squared error summed over output channels, mean over images and positions (the
normalisation of Nagel et al.'s reference code, on which λ = 0.01 is set); the reported per-layer
loss (``progress``) is the plain mean squared error over all outputs and images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from hwsim.compile import QuantizedGraph
from hwsim.errors import HwsimError

from .fakequant import FakeQuantModel, _activation, linear_forward

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (Nagel et al. 2020 §4)


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clip(σ(V)·(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1 (Nagel et al. 2020 eq. 23)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rectified_sigmoid_inverse(h: torch.Tensor) -> torch.Tensor:
    """V with h(V) = h for h in [0, 1): the initialisation that reproduces the float weight."""
    p = (h - GAMMA) / (ZETA - GAMMA)
    return torch.log(p / (1 - p))


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """f_reg(V) = Σ 1 − |2h(V) − 1|^β (WP eq. 34)."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def beta_schedule(t: int, iters: int, beta: tuple[float, float], warmup: float) -> float | None:
    """None during the warm-up (no regulariser), then β decaying linearly from beta[0] to beta[1]
    (Nagel et al. 2020 §5; the reference code's LinearTempDecay)."""
    start = int(warmup * iters)
    if t < start:
        return None
    rel = (t - start) / max(iters - start, 1)
    return beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - rel)


class _Layer:
    """One conv/linear layer's grid and float weight as torch tensors (float64 grid arithmetic)."""

    def __init__(self, qg: QuantizedGraph, lay, node):
        self.lay = lay
        w = np.asarray(qg.model.param(node, "weight"), np.float64)
        self.shp = (-1,) + (1,) * (w.ndim - 1)
        cout = w.shape[0]
        self.scale = np.asarray(lay.w_scale, np.float64).reshape(self.shp)
        self.zp = np.broadcast_to(np.asarray(lay.w_zero_point, np.int64), (cout,)).reshape(self.shp)
        self.qmin, self.qmax = int(lay.w_qmin), int(lay.w_qmax)
        if self.qmin >= self.qmax:
            raise HwsimError(f"layer '{lay.name}': weight grid [{self.qmin}, {self.qmax}] is empty "
                             "(compile did not record it)")
        self.w = w
        self.w_floor = np.floor(w / self.scale)  # WP eq. 33: ⌊·⌋ is floor here (NOTES.md errata)
        self.rest = w / self.scale - self.w_floor
        self.w_float = torch.from_numpy(w.astype(np.float32))
        self.b_float = torch.from_numpy(np.asarray(lay.b_float, np.float32))
        self.act = lay.activation

    def dequantize(self, w_q: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((w_q - self.zp) * self.scale).astype(np.float32))

    def nearest(self) -> np.ndarray:
        return np.clip(np.rint(self.w / self.scale) + self.zp, self.qmin, self.qmax).astype(np.int64)


def _tensor(x):
    return torch.from_numpy(np.ascontiguousarray(x, np.float32))


def _capture(model: FakeQuantModel, images: torch.Tensor, tensor: str, batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        out.append(model(images[i:i + batch], return_tensors=True)[1][tensor])
    return torch.cat(out)


def _layer_inputs(qg, mirror, float_model, images, lay, target):
    """(x̂: the quantized model's input to ``lay``, target output f_a(W x + b))."""
    xq = _capture(mirror, images, lay.inputs[0])
    xf = xq if target == "same" else _capture(float_model, images, lay.inputs[0])
    return xq, xf


def _check(qg: QuantizedGraph, calib_images, iters: int, batch_size: int, target: str):
    if not isinstance(qg, QuantizedGraph):
        raise HwsimError(f"adaround/adaquant: expected a hwsim.compile.QuantizedGraph, got {type(qg).__name__}")
    x = np.asarray(calib_images)
    if x.ndim < 2 or len(x) < 1 or x.dtype.kind != "f" or not np.isfinite(x).all():
        raise HwsimError(f"adaround/adaquant: calib_images must be finite float NCHW normalised images, got shape "
                         f"{x.shape} dtype {x.dtype}")
    if iters < 1 or batch_size < 1:
        raise HwsimError(f"adaround/adaquant: iters ({iters}) and batch_size ({batch_size}) must be positive")
    if target not in ("float", "same"):
        raise HwsimError(f"adaround/adaquant: target {target!r} not allowed; allowed: float, same")
    return _tensor(x)


def _models(qg):
    mirror = FakeQuantModel(qg, float_activations=qg.weight_only)
    float_model = FakeQuantModel(qg, float_activations=True, float_weights=True)
    return mirror, float_model


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def adaround_weights(qg: QuantizedGraph, calib_images: np.ndarray, *, iters: int = 1000, reg: float = 0.01,
                     beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, batch_size: int = 32,
                     seed: int = 0, lr: float = 1e-3, target: str = "float",
                     progress: Callable | None = None) -> dict[str, np.ndarray]:
    """AdaRound: {conv/linear layer: int64 weights on its existing grid}, each floor(w/s)+z or +1 (WP eq. 33).

    Per layer, minimises ‖f_a(W x) − f_a(W̃ x̂)‖² + λ·f_reg(V) (WP eq. 35, eq. 34) over V with Adam
    (lr, ``batch_size`` images per step, ``iters`` steps), W̃ = s·(clamp(⌊W/s⌋ + z + h(V); qmin, qmax) − z)
    (WP eq. 33), h the rectified sigmoid; V starts where h(V) = W/s − ⌊W/s⌋ (the float weight); the
    first ``warmup`` fraction of the steps has no regulariser, then β anneals from beta[0] to beta[1];
    finally h is rounded: up where h(V) ≥ 0.5. ``progress(layer_name, i, n_layers, loss)`` after
    each layer, loss = its output MSE with the final integers. Deterministic for a seed.
    """
    x_all = _check(qg, calib_images, iters, batch_size, target)
    if not (0 <= warmup < 1) or reg < 0:
        raise HwsimError(f"adaround: warmup {warmup} must be in [0, 1) and reg {reg} non-negative")
    mirror, float_model = _models(qg)
    nodes = {n.name: n for n in qg.model.nodes}
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, np.ndarray] = {}
    layers = qg.mac_layers
    for i, lay in enumerate(layers):
        L = _Layer(qg, lay, nodes[lay.name])
        xq, xf = _layer_inputs(qg, mirror, float_model, x_all, lay, target)
        bias = mirror.weights[lay.name][1]
        with torch.no_grad():
            tgt = _activation(linear_forward(lay, xf, L.w_float, L.b_float), L.act)
        floor_z = torch.from_numpy(L.w_floor + L.zp)
        scale, zp = torch.from_numpy(L.scale), torch.from_numpy(L.zp.astype(np.float64))
        v = torch.nn.Parameter(rectified_sigmoid_inverse(torch.from_numpy(L.rest)))
        opt = torch.optim.Adam([v], lr=lr)
        for t in range(iters):
            idx = torch.randint(0, len(xq), (min(batch_size, len(xq)),), generator=gen)
            h = rectified_sigmoid(v)
            w_soft = ((torch.clamp(floor_z + h, L.qmin, L.qmax) - zp) * scale).float()  # WP eq. 33
            pred = _activation(linear_forward(lay, xq[idx], w_soft, bias), L.act)
            rec = ((pred - tgt[idx]) ** 2).sum(1).mean()  # WP eq. 35
            b = beta_schedule(t, iters, beta, warmup)
            loss = rec if b is None else rec + reg * rounding_regularizer(h, b)  # WP eq. 34
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            up = (rectified_sigmoid(v) >= 0.5).numpy()
        w_q = np.clip(L.w_floor + L.zp + up, L.qmin, L.qmax).astype(np.int64)
        out[lay.name] = w_q
        mirror.weights[lay.name] = (L.dequantize(w_q), bias)
        if progress is not None:
            with torch.no_grad():
                mse = _mse(_activation(linear_forward(lay, xq, mirror.weights[lay.name][0], bias), L.act), tgt)
            progress(lay.name, i, len(layers), mse)
    return out


def adaquant_weights(qg: QuantizedGraph, calib_images: np.ndarray, *, iters: int = 500, lr: float = 5e-3,
                     batch_size: int = 32, seed: int = 0, target: str = "float",
                     progress: Callable | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """AdaQuant (Hubara et al. 2020 eq. 2 with the grid fixed): {layer: (int64 w_q on its grid, float32 bias)}.

    Per layer, minimises ‖W x + b − Q(W') x̂ − b'‖² over the continuous weights W' and the bias b'
    with a straight-through round (Adam, ``iters`` steps of ``batch_size`` images). W' is
    parametrised in units of its step (W'/s, so ``lr`` is in LSBs per step) and b' in units of the
    target's per-channel std. Q(W') = s·(clamp(round(W'/s) + z, qmin, qmax) − z), round half to even.
    The returned bias replaces the float bias (the hardware quantizes it as usual).
    """
    x_all = _check(qg, calib_images, iters, batch_size, target)
    if lr <= 0:
        raise HwsimError(f"adaquant: lr {lr} must be positive")
    mirror, float_model = _models(qg)
    nodes = {n.name: n for n in qg.model.nodes}
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    layers = qg.mac_layers
    for i, lay in enumerate(layers):
        L = _Layer(qg, lay, nodes[lay.name])
        xq, xf = _layer_inputs(qg, mirror, float_model, x_all, lay, target)
        with torch.no_grad():
            tgt = linear_forward(lay, xf, L.w_float, L.b_float)  # Hubara et al. eq. 2: pre-activation
            dims = [d for d in range(tgt.dim()) if d != 1]
            bstd = tgt.std(dim=dims).clamp_min(1e-8)
        scale, zp = torch.from_numpy(L.scale), torch.from_numpy(L.zp.astype(np.float64))
        u = torch.nn.Parameter(torch.from_numpy(L.w / L.scale))
        db = torch.nn.Parameter(torch.zeros_like(L.b_float))
        opt = torch.optim.Adam([u, db], lr=lr)
        for _ in range(iters):
            idx = torch.randint(0, len(xq), (min(batch_size, len(xq)),), generator=gen)
            q = torch.clamp((torch.round(u) - u).detach() + u + zp, L.qmin, L.qmax)  # straight-through round
            w_hat = ((q - zp) * scale).float()
            pred = linear_forward(lay, xq[idx], w_hat, L.b_float + db * bstd)
            loss = ((pred - tgt[idx]) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            w_q = np.clip(np.rint(u.detach().numpy()) + L.zp, L.qmin, L.qmax).astype(np.int64)
            b_new = (L.b_float + db * bstd).numpy().astype(np.float32)
        out[lay.name] = (w_q, b_new)
        # the mirror's next inputs: new integers, new bias as the hardware would add it
        b_hw = _hardware_bias(qg, lay, b_new, L.scale.reshape(-1))
        mirror.weights[lay.name] = (L.dequantize(w_q), b_hw)
        if progress is not None:
            with torch.no_grad():
                mse = _mse(linear_forward(lay, xq, mirror.weights[lay.name][0], b_hw), tgt)
            progress(lay.name, i, len(layers), mse)
    return out


def _hardware_bias(qg: QuantizedGraph, lay, b: np.ndarray, w_scale: np.ndarray) -> torch.Tensor:
    """The bias the integer layer adds: the float bias (weight-only, bias.form = float32) or round(b/(s_x·s_w))·s_x·s_w."""
    if qg.weight_only or lay.bias_q is None or getattr(lay.requant_params, "bias_term", None) is not None:
        return torch.from_numpy(np.asarray(b, np.float32))
    s = qg.grids[lay.inputs[0]].scale * w_scale
    return torch.from_numpy((np.rint(b / s) * s).astype(np.float32))


def install_weights(qg: QuantizedGraph, weights: dict) -> None:
    """Test/experiment helper: put integer weights (and optional float biases) into ``qg``'s layers in place
    (w_q, w_float, b_float; the int32 bias is requantized at s_x·s_w with half-even rounding). The
    simulator's own path is ``hwsim.ptq.replace_weights`` (it also redoes certificates)."""
    for lay in qg.mac_layers:
        if lay.name not in weights:
            continue
        v = weights[lay.name]
        w_q, b = (v if isinstance(v, tuple) else (v, None))
        shp = (-1,) + (1,) * (w_q.ndim - 1)
        zp = np.broadcast_to(np.asarray(lay.w_zero_point, np.int64), (w_q.shape[0],)).reshape(shp)
        lay.w_q = np.asarray(w_q, np.int64)
        lay.w_float = ((lay.w_q - zp) * np.asarray(lay.w_scale).reshape(shp)).astype(np.float32)
        if b is not None:
            if getattr(lay.requant_params, "bias_term", None) is not None:
                raise HwsimError(f"install_weights: layer '{lay.name}' has bias.form = float32; a new bias needs "
                                 "its requant parameters rebuilt (hwsim.ptq.replace_weights)")
            lay.b_float = np.asarray(b, np.float32)
            if lay.bias_q is not None:
                s = qg.grids[lay.inputs[0]].scale * np.asarray(lay.w_scale, np.float64)
                lay.bias_q = np.rint(np.asarray(b, np.float64) / s).astype(np.int64)


__all__ = ["adaround_weights", "adaquant_weights", "rectified_sigmoid", "rounding_regularizer", "beta_schedule",
           "install_weights"]
