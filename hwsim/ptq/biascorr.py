"""Bias correction of the weight-quantization error ε = W̃ − W (W̃ the dequantized integer weights).

- ``empirical`` (WP eq. 27): b ← b − E[εx], E over the calibration set's float inputs of each
  layer (batch and spatial positions), per output channel.
- ``analytic`` (WP eq. 28): E[x] from the BatchNorm statistics of the layer that produces the
  input: x = ReLU(z), z ~ N(β, γ²) per channel gives E[x] = γ·φ(β/γ) + β·Φ(β/γ) (WP eq. 28;
  ReLU6: E[relu(z)] − E[relu(z − 6)]; no activation: β); mean-preserving ops (flatten, average
  pools) pass it through. Layers whose input has no such producer (the first layer, after an
  add or a max-pool) are left uncorrected and named in the note. Padding is ignored (as eq. 28).
- ``banner`` (Banner et al. 2019 §5, used by every LAPQ CNN result, LAPQ Table 4): per output
  channel c, match the quantized weights' std and mean to the float ones: W̃' = ξ_c·W̃ + d_c
  with ξ_c = σ(W_c)/σ(W̃_c), d_c = μ(W_c) − ξ_c·μ(W̃_c). ξ_c goes into the channel's weight
  scale where the grid can hold it (per-channel float scales; otherwise ξ = 1, noted); the
  constant shift d_c cannot live on the integer grid, so its expected effect d_c·E[Σ_k x_k]
  (calibration means) moves into the bias.
"""

from __future__ import annotations


import numpy as np

from hwsim import ops
from hwsim.compile import LINEAR_OPS, QuantizedGraph
from hwsim.ptq.pipeline import replace_weights

MAX_IMAGES = 256  # calibration images used for the expectations


def _node(qg: QuantizedGraph, name: str):
    return next(n for n in qg.model.nodes if n.name == name)


def _float_weight(qg, lay) -> np.ndarray:
    return qg.model.param(_node(qg, lay.name), "weight").astype(np.float64)


def _layer_out(lay, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """float64 output of a MAC layer with weights ``w`` and no bias (its op's ``float_mac``)."""
    return ops.get(lay.op).float_mac(lay, x, w)


def _channel_mean(y: np.ndarray) -> np.ndarray:
    return y.mean(axis=(0, 2, 3)) if y.ndim == 4 else y.mean(axis=0)


def analytic_input_mean(qg: QuantizedGraph, lay, bn: dict) -> np.ndarray | None:
    """E[x] per input channel of ``lay`` from BN statistics, or None if its input has none."""
    producer = {n.outputs[0]: n for n in qg.model.nodes}
    t = lay.inputs[0]
    while t in producer and ops.get(producer[t].op).channel_mean_preserving:
        t = producer[t].inputs[0]
    p = producer.get(t)
    if p is None or p.op not in LINEAR_OPS or p.name not in bn:
        return None
    beta, gamma = bn[p.name]["beta"], bn[p.name]["gamma"]
    act = p.attrs.get("activation")
    if act:  # E[act(z)], z ~ N(β, γ²): the activation's own formula (WP eq. 28; hwsim/ops/relu.py)
        return ops.get(act).gaussian_mean(beta, gamma)
    return np.asarray(beta, np.float64)


def _expected_error(lay, eps: np.ndarray, ex: np.ndarray) -> np.ndarray:
    """E[εx] per output channel given E[x] per input channel (padding ignored; its op's ``expected_error``)."""
    return ops.get(lay.op).expected_error(lay, eps, ex)


def correct_biases(qg: QuantizedGraph, calib: dict[str, np.ndarray], method: str, bn: dict) -> list[str]:
    """Apply one bias correction to every conv/linear layer of ``qg`` (in place); returns notes."""
    biases, scales, skipped, no_scale = {}, {}, [], []
    for lay in qg.mac_layers:
        w = _float_weight(qg, lay)
        wq = lay.w_float.astype(np.float64)
        b = lay.b_float.astype(np.float64)
        if method == "empirical":  # WP eq. 27
            x = calib[lay.inputs[0]][:MAX_IMAGES]
            biases[lay.name] = b - _channel_mean(_layer_out(lay, x, wq - w))
        elif method == "analytic":  # WP eq. 28
            ex = analytic_input_mean(qg, lay, bn)
            if ex is None:
                skipped.append(lay.name)
                continue
            biases[lay.name] = b - _expected_error(lay, wq - w, ex)
        else:  # Banner et al. 2019: per-channel mean and std of the quantized weights
            rows, rows_q = w.reshape(len(w), -1), wq.reshape(len(wq), -1)
            sd, sdq = rows.std(axis=1), rows_q.std(axis=1)
            xi = np.where(sdq > 0, sd / np.where(sdq > 0, sdq, 1), 1.0)
            f = lay.profile.weights
            if not (f.granularity == "per_channel" and f.scale == "float" and lay.profile.requant.mode != "pow2"):
                xi = np.ones_like(xi)
                no_scale.append(lay.name)
            else:
                scales[lay.name] = np.asarray(lay.w_scale, np.float64) * xi
            d = rows.mean(axis=1) - xi * rows_q.mean(axis=1)
            x = calib[lay.inputs[0]][:MAX_IMAGES].astype(np.float64)
            ex = x.mean(axis=(0, 2, 3)) if x.ndim == 4 else x.reshape(len(x), -1).mean(axis=0)
            ones = np.broadcast_to(d.reshape((-1,) + (1,) * (w.ndim - 1)), w.shape)
            biases[lay.name] = b + _expected_error(lay, ones, ex)
    replace_weights(qg, biases=biases, w_scales=scales)
    notes = [f"bias correction ({method}): {len(biases)} layer(s)"]
    if skipped:
        notes.append(f"analytic bias correction: no BatchNorm statistics for the input of {', '.join(skipped)} "
                     "(left uncorrected)")
    if no_scale:
        notes.append(f"banner bias correction: the std factor needs per-channel float weight scales; mean only for "
                     f"{len(no_scale)} layer(s)")
    return notes
