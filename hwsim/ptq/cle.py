"""Cross-layer equalization (WP eq. 20-22) and high-bias absorption (WP eq. 23-24) on the folded graph.

Both act on pairs ``conv1 -> (ReLU) -> conv2`` where conv1's output feeds conv2 alone, with
conv2 a plain or depthwise conv. They change the float weights only where the float function
is provably unchanged (CLE: everywhere, ReLU is positively homogeneous; absorption: wherever
the ReLU is active), and they keep the BatchNorm statistics of conv1's output (``bn``: folded
node name -> {"gamma", "beta"}) in step, so BN-based ranges and analytic bias correction see
the equalized network.

ReLU6 is *not* positively homogeneous: relu6(x)/s = clip(x/s, 0, 6/s), a per-channel clip the
executor's per-tensor output clamp cannot express. ``relu6 = "skip"`` (default) leaves such pairs
alone (exact); ``relu6 = "relu"`` replaces the ReLU6 by a ReLU in equalized pairs, as DFQ (Nagel
et al. 2019) did for MobileNetV2 — that changes the float function, and the note says so.
"""

from __future__ import annotations

import numpy as np

from hwsim.graph import Graph, Node

MAX_SWEEPS = 20  # CLE over a chain is iterated until the scales settle (DFQ §4.1)


def clone_graph(g: Graph) -> Graph:
    """A copy whose nodes (attrs, params) and tensor dict may be edited without touching ``g``."""
    nodes = [Node(n.name, n.op, list(n.inputs), list(n.outputs), dict(n.attrs), dict(n.params)) for n in g.nodes]
    return Graph(inputs=g.inputs, nodes=nodes, outputs=list(g.outputs), tensors=dict(g.tensors),
                 metadata=dict(g.metadata))


def _kind(n: Node, g: Graph) -> str | None:
    """'conv' (groups = 1), 'depthwise', or None (linear, grouped) for CLE purposes."""
    if n.op != "conv2d":
        return None
    w = g.param(n, "weight")
    groups = n.attrs.get("groups", 1)
    if groups == 1:
        return "conv"
    if groups == w.shape[0] and w.shape[1] == 1:
        return "depthwise"
    return None


def pairs(g: Graph, activations=("relu",)) -> list[tuple[Node, Node]]:
    """(conv1, conv2) with conv1 -> activation in ``activations`` (or none) -> conv2 (sole consumer)."""
    consumers: dict[str, list[Node]] = {}
    for n in g.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    out = []
    for n in g.nodes:
        if _kind(n, g) is None or n.outputs[0] in g.outputs or "bn_scale" in n.attrs:
            continue
        act = n.attrs.get("activation")
        if act is not None and act not in activations:
            continue
        cs = consumers.get(n.outputs[0], [])
        if len(cs) == 1 and _kind(cs[0], g) is not None and "bn_scale" not in cs[0].attrs:
            out.append((n, cs[0]))
    return out


def _in_axis_ranges(w2: np.ndarray, kind2: str) -> np.ndarray:
    """r_i^(2): max |W2| over everything that multiplies input channel i."""
    if kind2 == "depthwise":
        return np.abs(w2).reshape(w2.shape[0], -1).max(axis=1)
    return np.abs(w2).transpose(1, 0, 2, 3).reshape(w2.shape[1], -1).max(axis=1)


def _bias(g: Graph, n: Node) -> np.ndarray:
    b = g.param(n, "bias")
    return np.zeros(g.param(n, "weight").shape[0]) if b is None else b.astype(np.float64)


def _set(g: Graph, n: Node, key: str, v: np.ndarray) -> None:
    name = n.params.get(key) or f"{n.name}.{key}"
    n.params[key] = name
    g.tensors[name] = np.asarray(v, np.float32)


def equalize_pair(g: Graph, n1: Node, n2: Node, bn: dict) -> np.ndarray:
    """WP eq. 20-22 on one pair: s_i = (1/r2_i)·√(r1_i·r2_i); W1 ← S⁻¹W1, b1 ← S⁻¹b1, W2 ← W2·S."""
    w1 = g.param(n1, "weight").astype(np.float64)
    w2 = g.param(n2, "weight").astype(np.float64)
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = _in_axis_ranges(w2, _kind(n2, g))
    ok = (r1 > 0) & (r2 > 0)
    s = np.where(ok, np.sqrt(np.where(ok, r1 * r2, 1.0)) / np.where(ok, r2, 1.0), 1.0)  # WP eq. 22
    _set(g, n1, "weight", w1 / s.reshape(-1, 1, 1, 1))
    _set(g, n1, "bias", _bias(g, n1) / s)
    if _kind(n2, g) == "depthwise":
        _set(g, n2, "weight", w2 * s.reshape(-1, 1, 1, 1))
    else:
        _set(g, n2, "weight", w2 * s.reshape(1, -1, 1, 1))
    if n1.name in bn:  # the BN statistics of conv1's output scale with it
        bn[n1.name] = {"gamma": bn[n1.name]["gamma"] / s, "beta": bn[n1.name]["beta"] / s}
    return s


def equalize(g: Graph, bn: dict, relu6: str = "skip") -> list[str]:
    """CLE over every pair of ``g`` (edited in place), iterated; returns notes."""
    acts = ("relu", "relu6") if relu6 == "relu" else ("relu",)
    ps = pairs(g, acts)
    notes = []
    converted = [n1.name for n1, _ in ps if n1.attrs.get("activation") == "relu6"]
    for n1, _ in ps:
        if n1.attrs.get("activation") == "relu6":
            n1.attrs["activation"] = "relu"
    if converted:
        notes.append(f"CLE: ReLU6 replaced by ReLU after {len(converted)} layer(s) (cle_relu6 = relu; the float "
                     "function changes)")
    for _ in range(MAX_SWEEPS):
        worst = 0.0
        for n1, n2 in ps:
            s = equalize_pair(g, n1, n2, bn)
            worst = max(worst, float(np.max(np.abs(np.log(s)))) if s.size else 0.0)
        if worst < 1e-6:
            break
    skipped = len(pairs(g, ("relu", "relu6"))) - len(ps)
    notes.append(f"CLE: {len(ps)} conv pair(s) equalized (WP eq. 20-22)"
                 + (f"; {skipped} ReLU6 pair(s) left alone (cle_relu6 = skip)" if skipped else ""))
    return notes


def absorb_high_bias(g: Graph, bn: dict, relu6: str = "skip") -> list[str]:
    """WP eq. 23-24: c = max(0, β − 3γ) moves from conv1's bias into conv2's: b1 ← b1 − c, b2 ← b2 + W2·c.

    Exact wherever the ReLU is active (x ≥ c) and only for conv2 without padding (a zero-padded
    border would see −c instead of 0); other pairs are left alone and counted in the note.
    """
    done = skipped = 0
    for n1, n2 in pairs(g, ("relu",)):
        st = bn.get(n1.name)
        if st is None:
            continue
        if any(n2.attrs.get("padding", (0, 0, 0, 0))):
            skipped += 1
            continue
        c = np.maximum(0.0, st["beta"] - 3 * np.abs(st["gamma"]))  # WP, text after eq. 24
        if not c.any():
            continue
        w2 = g.param(n2, "weight").astype(np.float64)
        _set(g, n1, "bias", _bias(g, n1) - c)
        if _kind(n2, g) == "depthwise":
            add = w2.reshape(w2.shape[0], -1).sum(axis=1) * c
        else:
            add = np.einsum("oikl,i->o", w2, c)
        _set(g, n2, "bias", _bias(g, n2) + add)
        bn[n1.name] = {"gamma": st["gamma"], "beta": st["beta"] - c}
        done += 1
    return [f"high-bias absorption: {done} pair(s) (WP eq. 23-24)"
            + (f"; {skipped} skipped (padded conv2: not exact at the border)" if skipped else "")]
