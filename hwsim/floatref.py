"""Float32 execution of a float graph: the float baseline every integer result is compared with.

Plain numpy, float32 throughout (inputs, weights, intermediate tensors), the same eval-mode
semantics as PyTorch: conv as im2col + matmul (zero padding, stride, dilation, groups), BatchNorm
with running statistics, max-pool with -inf padding, average pool with count_include_pad=True
(floor mode), global average pool, flatten (start_dim=1), add, concat on channels, ReLU, ReLU6.
Each op's float forward is its spec's ``float_forward`` (hwsim/ops/<op>.py); the shared float
kernels (im2col conv, window pools) are here.
"""

from __future__ import annotations

import numpy as np

from hwsim.errors import HwsimError
from hwsim.graph import Graph, Node
from hwsim.ops import registry as ops_registry


def normalize(graph: Graph, images01: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (N, C, H, W) -> ``(x - mean[c]) / std[c]`` in float32 (the graph input's InputSpec)."""
    return normalize_input(graph.inputs[0], images01)


def normalize_input(spec, images01: np.ndarray) -> np.ndarray:
    """:func:`normalize` by a graph input's :class:`~hwsim.graph.InputSpec` alone (streamed data normalises on read)."""
    x = np.asarray(images01, dtype=np.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(spec.shape):
        raise HwsimError(f"images of shape {x.shape} do not match input {spec.name!r}: expected (N, {', '.join(map(str, spec.shape))})")
    mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std


def _windows(xp: np.ndarray, kh: int, kw: int, oh: int, ow: int, sh: int, sw: int, dh: int = 1, dw: int = 1):
    """Yield the kh*kw strided views [N, C, oh, ow] of a padded input, kernel row-major (row, then column)."""
    for i in range(kh):
        for j in range(kw):
            r, c = i * dh, j * dw
            yield xp[:, :, r:r + sh * (oh - 1) + 1:sh, c:c + sw * (ow - 1) + 1:sw]


def _pad(x: np.ndarray, pad, value: float) -> np.ndarray:
    t, b, left, r = (int(v) for v in pad)
    if not (t or b or left or r):
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=np.float32(value))


def conv2d_float(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride, padding, dilation, groups: int) -> np.ndarray:
    """float32 conv2d (cross-correlation) via im2col + one batched matmul over groups."""
    n, c, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    (sh, sw), (dh, dw), g = stride, dilation, int(groups)
    xp = _pad(x, padding, 0.0)
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = np.stack(list(_windows(xp, kh, kw, oh, ow, sh, sw, dh, dw)), axis=2)  # [N, C, kh*kw, oh, ow]
    k = cin_g * kh * kw
    # [N, G, K, L] -> [G, K, N*L]: reduction index k = (input channel, kernel row, kernel column)
    cols = cols.reshape(n, g, k, oh * ow).transpose(1, 2, 0, 3).reshape(g, k, n * oh * ow)
    out = np.matmul(w.reshape(g, cout // g, k).astype(np.float32, copy=False), cols)  # [G, Cout/G, N*L]
    out = out.reshape(cout, n, oh, ow).transpose(1, 0, 2, 3)
    if b is not None:
        out = out + b.astype(np.float32, copy=False).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def pool_float(x: np.ndarray, attrs: dict, kind: str) -> np.ndarray:
    """float32 max ("max", -inf padding) or average ("avg", count_include_pad=True) pool, floor mode."""
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    xp = _pad(x, attrs["padding"], -np.inf if kind == "max" else 0.0)
    oh = (xp.shape[2] - kh) // sh + 1
    ow = (xp.shape[3] - kw) // sw + 1
    views = _windows(xp, kh, kw, oh, ow, sh, sw)
    acc = np.array(next(views), dtype=np.float32)
    for v in views:
        if kind == "max":
            np.maximum(acc, v, out=acc)
        else:
            acc += v
    if kind == "avg":  # count_include_pad=True: the divisor is always kh*kw (floor mode)
        acc /= np.float32(kh * kw)
    return acc


def _run_node(n: Node, graph: Graph, ins: list[np.ndarray]) -> np.ndarray:
    """One node in float32: its op's ``float_forward`` (hwsim/ops/<op>.py)."""
    return ops_registry.get(n.op).float_forward(n, graph, ins)


def run_float(graph: Graph, x: np.ndarray, return_all: bool = False):
    """Run ``graph`` in float32 on normalised inputs ``x`` [N, C, H, W].

    Returns the output tensor as logits [N, -1], or with ``return_all`` a dict of every tensor
    (the input included) in its natural shape.
    """
    spec = graph.inputs[0]
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(spec.shape):
        raise HwsimError(f"input of shape {x.shape} does not match input {spec.name!r}: expected (N, {', '.join(map(str, spec.shape))})")
    env: dict[str, np.ndarray] = {spec.name: x}
    for n in graph.nodes:
        y = _run_node(n, graph, [env[i] for i in n.inputs])
        env[n.outputs[0]] = np.asarray(y, dtype=np.float32)
    if return_all:
        return env
    out = env[graph.outputs[0]]
    return out.reshape(len(out), -1)
