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

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from hwsim import ops
from hwsim.compile import QLayer, QuantizedGraph, _float_graph
from hwsim.floatref import run_float
from hwsim.graph import Graph
from hwsim.ops.registry import WIDE  # noqa: F401  (requantize without clamping; the clamp is counted)


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


def _wide(env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors as int64 (what callers get: arithmetic on them must not wrap)."""
    return {k: v.astype(np.int64, copy=False) for k, v in env.items()}


def run_layer(qg: QuantizedGraph, lay: QLayer, env: dict[str, np.ndarray], st: LayerStats, impl: str,
              offset: int = 0, narrow: bool = False) -> None:
    """Execute one layer on integer tensors in ``env`` (in place) and update its stats.

    The arithmetic is the layer's op spec's ``execute`` (hwsim/ops/<op>.py). ``offset``: number of the
    batch's first image in the whole run (stochastic rounding indices). ``narrow``: outputs in the
    narrowest integer dtype of their range (the executor's own loop; callers that do arithmetic on the
    tensors keep the int64 default).
    """
    y, clipped = ops.get(lay.op).execute(qg, lay, env, st, impl, offset, narrow)
    st.outputs += int(y.size)
    st.clipped += clipped
    env[lay.output] = y


def prepare(qg: QuantizedGraph) -> list[bool]:
    """Make every layer's fast-path plan now (bounds, packed weights, fused epilogues, tables: cached on the
    layers, so once per compiled graph, not per batch); returns per layer whether its fast path may run in
    several threads at once (the op spec's ``thread_safe(qg, layer)`` hook; False without one)."""
    safe = []
    for lay in qg.layers:
        spec = ops.get(lay.op)
        made = getattr(spec, "prepare", None)  # the op's own compile-time work (plans, tables), where it has any
        if made is not None:
            made(qg, lay)
        f = getattr(spec, "thread_safe", None)
        safe.append(bool(f(qg, lay)) if f is not None else False)
    return safe


def _run_part(qg: QuantizedGraph, x: np.ndarray, safe: list[bool], offset: int):
    """One batch worker: every layer on its contiguous part of the batch (stochastic rounding indices run-wide
    from ``offset``); kernels run single-threaded here (kernels.serial_mode), a layer that is not thread-safe
    runs under kernels.exclusive() (one lock, the usual parallel kernels); a thread-safe layer whose
    fast path does not apply to a batch does the same inside its op. Returns (its float32 output (_logits), its
    own stats)."""
    from hwsim import kernels

    # counters only (_merge reads nothing else): _new_stats' certificate summaries held the GIL 1-2 ms a part
    stats = [LayerStats(lay.name, lay.op, lay.kind) for lay in qg.layers]
    with kernels.serial_mode():
        env = {qg.input_name: qg.grids[qg.input_name].quantize(x)}
        for lay, st, ok in zip(qg.layers, stats, safe):
            if ok:
                run_layer(qg, lay, env, st, "fast", offset=offset, narrow=True)
            else:
                with kernels.exclusive():  # one layer at a time, with the parallel kernels
                    run_layer(qg, lay, env, st, "fast", offset=offset, narrow=True)
    return _logits(qg, env, "fast"), stats


def _logits(qg: QuantizedGraph, env: dict, impl: str) -> np.ndarray:
    """The graph output of one batch as float32 [N, -1]: the output tensor dequantized, or (issue 17, torch4) a
    float-output last layer's float values (hwsim.ops.mac.float_output)."""
    from hwsim.ops.mac import float_output

    v = float_output(qg, env, impl)
    y = env[qg.output_name]
    return v if v is not None else qg.grids[qg.output_name].dequantize(y.astype(np.int64)).reshape(len(y), -1)


def _merge(into: list[LayerStats], parts: list[list[LayerStats]]) -> None:
    """Add the integer counters of the workers' stats (exact: integers)."""
    for stats in parts:
        for a, b in zip(into, stats):
            a.outputs += b.outputs
            a.acc_events += b.acc_events
            a.partial_events += b.partial_events
            a.clipped += b.clipped


def run_quantized(qg: QuantizedGraph, x_norm: np.ndarray, batch_size: int = 256, impl: str = "fast",
                  progress=None, keep_tensors: bool = False, offset: int = 0, threads: int | None = None) -> RunOutput:
    """Integer execution of normalised float32 NCHW images; returns dequantized logits + stats.

    ``progress`` is an optional callable ``progress(n_images_done)``. ``offset``: the run-wide number
    of ``x_norm[0]`` (a sweep shard's first image), so stochastic rounding draws what the whole run draws.
    ``threads`` (default: numba's thread count, kernels.set_threads): the fast path splits each batch into
    that many contiguous parts and runs every layer of each part in its own thread (the kernels release the
    GIL); results and counters are those of one thread, bit for bit (counters are integer sums).
    """
    from hwsim import kernels

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
    T = kernels.workers() if threads is None else max(1, int(threads))
    safe = prepare(qg) if impl == "fast" else None
    # split the batch only where the MAC layers (most of the work) may run in the workers at once: a MAC layer
    # that must run alone (order-dependent accumulators, fallbacks) runs better once, on the whole batch, with
    # the parallel kernels and torch's threads (measured: MobileNetV2 under int8-acc16-sat, 2 threads)
    macs = {id(lay) for lay in qg.mac_layers}
    split = (impl == "fast" and T > 1 and not keep_tensors and len(x_norm) > 1
             and all(ok for lay, ok in zip(qg.layers, safe) if id(lay) in macs))
    logits, env = [], {}
    pool = kernels.batch_pool(T) if split else None  # torch: 1 thread in each
    with kernels._torch_one_thread() if split else contextlib.nullcontext():
        for i in range(0, len(x_norm), batch_size):
            xb = x_norm[i:i + batch_size]
            if split and len(xb) > 1:
                bounds = np.linspace(0, len(xb), min(T, len(xb)) + 1).astype(int)
                futs = [pool.submit(_run_part, qg, xb[s:e], safe, offset + i + s)
                        for s, e in zip(bounds[:-1], bounds[1:])]
                res = [f.result() for f in futs]
                _merge(stats, [r[1] for r in res])
                y = np.concatenate([r[0] for r in res])
            else:
                env = {qg.input_name: qg.grids[qg.input_name].quantize(xb)}
                for lay, st in zip(qg.layers, stats):
                    run_layer(qg, lay, env, st, impl, offset=offset + i, narrow=True)
                y = _logits(qg, env, impl)
            logits.append(y.reshape(len(xb), -1))
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
