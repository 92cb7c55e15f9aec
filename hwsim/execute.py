"""Run a QuantizedGraph in integers, batch by batch, with per-layer statistics.

The integer path: normalised float input -> input grid (round half to even, clamp) -> each
layer through :mod:`hwsim.ops` -> integer logits. Memory is bounded by the batch size. Per
layer we count accumulator and partial-sum overflow events (from the kernels), requant
clipping (outputs that hit the grid's ends, a fused ReLU's floor excluded: that is the
activation, not clipping) and carry the static certificate (headroom bits, certified).

Weight-only profiles (activations ``float``) run the folded float graph with dequantized
integer weights in float32 — labelled weight-only everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hwsim import ops
from hwsim.compile import QLayer, QuantizedGraph, _float_graph
from hwsim.floatref import run_float
from hwsim.graph import Graph

WIDE = (-(2**62), 2**62)  # requantize without clamping; the clamp is applied (and counted) here


@dataclass
class LayerStats:
    """What happened in one layer over all executed images."""

    name: str
    op: str
    kind: str
    outputs: int = 0
    acc_events: int = 0
    partial_events: int = 0
    clipped: int = 0
    headroom_bits: int | None = None
    partial_headroom_bits: int | None = None
    certified: bool | None = None
    min_acc_bits: int | None = None
    min_partial_bits: int | None = None

    @property
    def overflow_events(self) -> int:
        return self.acc_events + self.partial_events

    @property
    def clip_rate(self) -> float:
        return self.clipped / self.outputs if self.outputs else 0.0

    def to_json(self) -> dict:
        return {"name": self.name, "op": self.op, "kind": self.kind,
                "overflow_events": self.overflow_events, "acc_events": self.acc_events,
                "partial_events": self.partial_events, "clip_rate": self.clip_rate,
                "clipped": self.clipped, "outputs": self.outputs,
                "headroom_bits": self.headroom_bits, "partial_headroom_bits": self.partial_headroom_bits,
                "min_acc_bits": self.min_acc_bits, "min_partial_bits": self.min_partial_bits,
                "certified": self.certified}


@dataclass
class RunOutput:
    logits: np.ndarray
    layers: list[LayerStats] = field(default_factory=list)
    seconds: float = 0.0
    tensors: dict[str, np.ndarray] | None = None  # integer tensors of the last batch, if asked


def _new_stats(qg: QuantizedGraph) -> list[LayerStats]:
    out = []
    for lay in qg.layers:
        st = LayerStats(lay.name, lay.op, lay.kind)
        cert = lay.certificate
        if cert is not None:
            st.headroom_bits = min_defined(cert.headroom_bits)
            st.partial_headroom_bits = min_defined(getattr(cert, "partial_headroom_bits", None))
            st.certified = bool(np.all(cert.certified))
            st.min_acc_bits = max_defined(cert.min_acc_bits)
            if lay.accumulator is not None and lay.accumulator.partial_bits is not None:  # only with a psum stage
                st.min_partial_bits = max_defined(getattr(cert, "min_partial_bits", None))
        out.append(st)
    return out


def min_defined(v):
    """Smallest non-None entry of a scalar/array (None if there is none)."""
    if v is None:
        return None
    v = [x for x in np.ravel(np.asarray(v, dtype=object)) if x is not None]
    return int(min(v)) if v else None


def max_defined(v):
    """Largest non-None entry of a scalar/array (None if there is none)."""
    if v is None:
        return None
    v = [x for x in np.ravel(np.asarray(v, dtype=object)) if x is not None]
    return int(max(v)) if v else None


def _clamp_counted(y: np.ndarray, lay: QLayer, grid, narrow: bool = False) -> tuple[np.ndarray, int]:
    """Clamp to the layer's output range; count values beyond the grid (not the ReLU floor).

    ``narrow``: the result is kept in the narrowest integer dtype holding the range (int8/uint8 for
    8-bit grids; the next layers read less memory), else int64. One numba pass (kernels.clamp_count).
    """
    from hwsim import kernels

    lo, hi = lay.clamp
    out = np.empty(y.shape, kernels.narrow_dtype(lo, hi) if narrow else np.int64)
    clipped = kernels.clamp_count(np.ascontiguousarray(y).reshape(-1), lo, hi, grid.qmin, grid.qmax,
                                  lay.activation is None, out.reshape(-1))
    return out, int(clipped)


def _wide(env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors as int64 (what callers get: arithmetic on them must not wrap)."""
    return {k: v.astype(np.int64, copy=False) for k, v in env.items()}


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _per_image(shape) -> int:
    """Elements per image of a batch-first tensor shape."""
    return int(np.prod(shape[1:], dtype=np.int64))


def _stochastic_index(lay: QLayer, shape: tuple, offset: int):
    """Flat output indices over the whole run (image ``offset`` starts this batch) for stochastic rounding.

    Draws then depend on (layer seed, image number, position) only — not on the batch size.
    """
    r = lay.requant
    if r is None or r.rounding != "stochastic" or r.mode == "fixed":
        return None
    return (offset * _per_image(shape) + np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)).reshape(shape)


def _mac_fast(lay: QLayer, x: np.ndarray, gx) -> tuple[np.ndarray, int, int]:
    """A conv2d/linear layer by the fast kernels with its plan (bounds, packed weights) made once.

    The plan assumes inputs on the input grid [qmin, qmax] and is kept on the layer (attribute
    ``fast_plan``) together with the arrays it was made from: code that replaces ``w_q``, ``bias_q``,
    ``w_zero_point`` or ``accumulator`` gets a new plan (arrays are compared by identity, so weights
    must be replaced, not written in place). Returns (acc int64, acc events, partial events).
    """
    from hwsim import kernels

    a = lay.attrs
    arrays = (lay.w_q, lay.bias_q, lay.w_zero_point)
    key = (lay.accumulator, int(gx.qmin), int(gx.qmax), int(gx.zero_point))
    cached = getattr(lay, "fast_plan", None)
    if cached is None or cached[1] != key or any(u is not v for u, v in zip(cached[0], arrays)):
        w = ops._int_array(lay.w_q, "w_q")
        zw = ops._w_zero_point(lay.w_zero_point, w.shape[0])
        b = ops._bias(lay.bias_q, w.shape[0])
        if lay.op == "conv2d":
            geo = (ops._pair(a.get("stride", 1), "stride"), ops._padding(a.get("padding", (0, 0, 0, 0))),
                   ops._pair(a.get("dilation", 1), "dilation"), int(a.get("groups", 1)))
            plan = kernels.conv_plan(w, b, gx.zero_point, zw, *geo, lay.accumulator, gx.qmin, gx.qmax)
        else:
            plan = kernels.linear_plan(w, b, gx.zero_point, zw, lay.accumulator, gx.qmin, gx.qmax)
        cached = (arrays, key, (w, zw, b, plan))
        lay.fast_plan = cached
    w, zw, b, plan = cached[2]
    if lay.op == "conv2d":
        acc, pe, ae = kernels.conv2d_accumulate(x, w, b, gx.zero_point, zw, *plan.geometry, lay.accumulator, plan=plan)
    else:
        acc, pe, ae = kernels.linear_accumulate(x.reshape(x.shape[0], -1), w, b, gx.zero_point, zw, lay.accumulator,
                                                plan=plan)
    return acc, int(ae), int(pe)


def run_layer(qg: QuantizedGraph, lay: QLayer, env: dict[str, np.ndarray], st: LayerStats, impl: str,
              offset: int = 0, narrow: bool = False) -> None:
    """Execute one layer on integer tensors in ``env`` (in place) and update its stats.

    ``offset``: number of the batch's first image in the whole run (stochastic rounding indices).
    ``narrow``: outputs in the narrowest integer dtype of their range (the executor's own loop;
    callers that do arithmetic on the tensors keep the int64 default).
    """
    g = qg.grids
    x = env[lay.inputs[0]]
    gy = g.get(lay.output)
    a = lay.attrs
    if lay.op in ("conv2d", "linear") and impl == "fast":
        acc, ae, pe = _mac_fast(lay, x, g[lay.inputs[0]])
        st.acc_events += ae
        st.partial_events += pe
        # ops.requantize without its clamp to WIDE (a no-op count and copy): the clamp is counted below
        y = ops._requantize_fast(acc, lay.requant_params, lay.requant, gy.zero_point, 1,
                                 _stochastic_index(lay, acc.shape, offset))
        y, clipped = _clamp_counted(y, lay, gy, narrow)
    elif lay.op in ("conv2d", "linear"):
        gx = g[lay.inputs[0]]
        if lay.op == "conv2d":
            acc, ast = ops.conv2d(x, lay.w_q, lay.bias_q, x_zero_point=gx.zero_point,
                                  w_zero_point=lay.w_zero_point, stride=_pair(a.get("stride", 1)),
                                  padding=tuple(a.get("padding", (0, 0, 0, 0))),
                                  dilation=_pair(a.get("dilation", 1)), groups=a.get("groups", 1),
                                  acc=lay.accumulator, impl=impl)
        else:
            acc, ast = ops.linear(x.reshape(x.shape[0], -1), lay.w_q, lay.bias_q, x_zero_point=gx.zero_point,
                                  w_zero_point=lay.w_zero_point, acc=lay.accumulator, impl=impl)
        st.acc_events += int(ast.acc_events)
        st.partial_events += int(ast.partial_events)
        y, _ = ops.requantize(acc, lay.requant_params, lay.requant, gy.zero_point, WIDE[0], WIDE[1], channel_axis=1,
                              index=_stochastic_index(lay, acc.shape, offset))
        y, clipped = _clamp_counted(y, lay, gy, narrow)
    elif lay.op == "maxpool2d" and impl == "fast":  # the numba kernel on x's own (possibly narrow) dtype
        from hwsim import kernels

        k, s_, pad, Ho, Wo = ops._pool_geometry(x, _pair(a["kernel"]), _pair(a.get("stride", a["kernel"])),
                                                tuple(a.get("padding", (0, 0, 0, 0))))
        info = np.iinfo(x.dtype)
        y = np.empty((x.shape[0], x.shape[1], Ho, Wo), x.dtype if info.min <= g[lay.inputs[0]].qmin <= info.max
                     else np.int64)
        kernels.max_pool(np.ascontiguousarray(x), k[0], k[1], s_[0], s_[1], pad[0], pad[2], g[lay.inputs[0]].qmin, y)
        clipped = 0
    elif lay.op == "maxpool2d":
        gx = g[lay.inputs[0]]
        y = ops.max_pool2d(x, _pair(a["kernel"]), _pair(a.get("stride", a["kernel"])),
                           tuple(a.get("padding", (0, 0, 0, 0))), gx.qmin, impl=impl)
        clipped = 0
    elif lay.op in ("avgpool2d", "global_avgpool"):
        gx = g[lay.inputs[0]]
        r = lay.profile.requant
        kw = dict(zero_point=gx.zero_point, rounding=r.rounding, seed=lay.rounding_seed, impl=impl)
        if r.pool_form == "onnxruntime":
            kw.update(form=ops.onnxruntime_pool_form(lay.op, a.get("kernel"), a.get("padding", (0, 0, 0, 0)),
                                                     x.shape[2:]), scale=gx.scale)
        if lay.op == "avgpool2d":
            k, s_, pad = _pair(a["kernel"]), _pair(a.get("stride", a["kernel"])), tuple(a.get("padding", (0, 0, 0, 0)))
            out_hw = (ops.conv_output_size(x.shape[2], k[0], s_[0], pad[0], pad[1])
                      * ops.conv_output_size(x.shape[3], k[1], s_[1], pad[2], pad[3]))
            y = ops.avg_pool2d(x, k, s_, pad, index_offset=offset * x.shape[1] * out_hw, **kw)
        else:
            y = ops.global_avg_pool(x, index_offset=offset * x.shape[1], **kw).reshape(x.shape[0], x.shape[1], 1, 1)
        clipped = 0
    elif lay.op == "add":
        ga, gb = g[lay.inputs[0]], g[lay.inputs[1]]
        xa, xb = env[lay.inputs[0]], env[lay.inputs[1]]
        y, _ = ops.add(xa, xb, a_scale=ga.scale, a_zero_point=ga.zero_point,
                       b_scale=gb.scale, b_zero_point=gb.zero_point, y_scale=gy.scale, y_zero_point=gy.zero_point,
                       qmin=WIDE[0], qmax=WIDE[1], cfg=lay.requant,
                       index_offset=offset * _per_image(np.broadcast_shapes(xa.shape, xb.shape)))
        y, clipped = _clamp_counted(y, lay, gy, narrow)
    elif lay.op == "concat":
        xs = [env[i] for i in lay.inputs]
        y, _ = ops.concat(xs, [g[i].scale for i in lay.inputs], [g[i].zero_point for i in lay.inputs],
                          gy.scale, gy.zero_point, WIDE[0], WIDE[1], lay.requant,
                          index_offset=offset * sum(_per_image(v.shape) for v in xs))
        y, clipped = _clamp_counted(y, lay, gy, narrow)
    elif lay.op == "flatten":
        y, clipped = x.reshape(x.shape[0], -1), 0
    elif lay.op in ("relu", "relu6"):
        info = np.iinfo(x.dtype)  # bounds inside the dtype (a narrow x holds its whole grid)
        y, clipped = np.clip(x, max(lay.clamp[0], info.min), min(lay.clamp[1], info.max)), 0
    else:  # pragma: no cover - compile only emits the ops above
        raise AssertionError(f"unexpected op {lay.op}")
    st.outputs += int(y.size)
    st.clipped += clipped
    env[lay.output] = y


def run_quantized(qg: QuantizedGraph, x_norm: np.ndarray, batch_size: int = 256, impl: str = "fast",
                  progress=None, keep_tensors: bool = False, offset: int = 0) -> RunOutput:
    """Integer execution of normalised float32 NCHW images; returns dequantized logits + stats.

    ``progress`` is an optional callable ``progress(n_images_done)``. ``offset``: the run-wide number
    of ``x_norm[0]`` (a sweep shard's first image), so stochastic rounding draws what the whole run draws.
    """
    t0 = time.perf_counter()
    stats = _new_stats(qg)
    if qg.weight_only:
        fg = weight_only_graph(qg)
        logits = []
        for i in range(0, len(x_norm), batch_size):
            logits.append(run_float(fg, x_norm[i:i + batch_size]))
            if progress:
                progress(min(i + batch_size, len(x_norm)))
        return RunOutput(np.concatenate(logits).astype(np.float32), stats, time.perf_counter() - t0)
    out_grid = qg.grids[qg.output_name]
    logits, env = [], {}
    for i in range(0, len(x_norm), batch_size):
        env = {qg.input_name: qg.grids[qg.input_name].quantize(x_norm[i:i + batch_size])}
        for lay, st in zip(qg.layers, stats):
            run_layer(qg, lay, env, st, impl, offset=offset + i, narrow=True)
        logits.append(out_grid.dequantize(env[qg.output_name].astype(np.int64)).reshape(len(env[qg.input_name]), -1))
        if progress:
            progress(min(i + batch_size, len(x_norm)))
    return RunOutput(np.concatenate(logits), stats, time.perf_counter() - t0, _wide(env) if keep_tensors else None)


def run_integer(qg: QuantizedGraph, x_norm: np.ndarray, impl: str = "fast") -> dict[str, np.ndarray]:
    """Every integer tensor of one batch (golden vectors, per-layer comparison)."""
    env = {qg.input_name: qg.grids[qg.input_name].quantize(x_norm)}
    stats = _new_stats(qg)
    for lay, st in zip(qg.layers, stats):
        run_layer(qg, lay, env, st, impl, narrow=True)
    return _wide(env)


def weight_only_graph(qg: QuantizedGraph) -> Graph:
    """The folded float graph with every conv/linear weight replaced by its dequantized integers."""
    fg = _float_graph(qg.model)
    tensors = dict(fg.tensors)
    for lay in qg.mac_layers:
        node = next(n for n in qg.model.nodes if n.name == lay.name)
        tensors[node.params["weight"]] = lay.w_float
        if node.params.get("bias"):
            tensors[node.params["bias"]] = lay.b_float
    return Graph(inputs=fg.inputs, nodes=fg.nodes, outputs=fg.outputs, tensors=tensors, metadata=fg.metadata)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy; ties in the logits go to the lowest class index (np.argmax)."""
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else 0.0
