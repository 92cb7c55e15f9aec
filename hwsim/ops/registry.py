"""The op registry: one :class:`OpSpec` per graph op, registered by its name.

TensorFlow Lite Micro keeps each kernel's Prepare and Eval side by side in one file
(``tensorflow/lite/micro/kernels/conv.cc``) and resolves kernels by op name; ONNX Runtime
registers its kernels per op the same way. hwsim does the same: each op module
(``conv2d.py``, ``linear.py``, ``pool.py``, ...) defines a subclass of :class:`OpSpec` holding the
op's whole story and calls :func:`register`. Code that walks a graph (graph validation, the float
reference, compile, execute, golden vectors, compare, the ONNX exporter) asks :func:`get` for the
spec of ``node.op`` / ``layer.op``; none keeps its own chain of op names.

Every concern is one attribute or method; the defaults are those of an op that passes values
through (flatten). How to add an op: docs/architecture.md "How to add an op".
"""

from __future__ import annotations

import math

import numpy as np

from hwsim.errors import HwsimError

# requantize without clamping; the clamp is applied (and counted) by the executor (clamp_counted)
WIDE = (-(2**62), 2**62)


class OpSpec:
    """Everything hwsim knows about one graph op. Subclass, set the attributes, override the hooks.

    Attributes (class level):

    - ``name``: the op name in the graph file (``node.op``).
    - ``attrs``: graph attr schema {key: kind}; kinds are graph._check_attr's ("pair" = 2 positive
      ints, "pad4" = 4 non-negative ints, "posint", "posfloat", "float", "axis1", "bool"). All keys are required.
    - ``optional_attrs``: {key: (kind, default)} attrs a node may omit (the hooks read
      ``node.attrs.get(key, default)``); validated when present.
    - ``params``: (required roles, optional roles) of the node's param tensors.
    - ``arity``: number of inputs, or None for "one or more".
    - ``kind``: the compiled layer's op kind (profile ``overrides[].op``: conv, depthwise, linear, add,
      concat, pool) or "move" for ops without arithmetic; :meth:`layer_kind` may refine it per node.
    - ``mac``: a multiply-accumulate layer (integer weights, accumulator, requant, certificate).
    - ``output_grid``: "own" (the output is calibrated and gets its own grid) or "input" (the output
      shares its input's grid: max-pool, flatten, standalone ReLU, average pools).
    - ``moves_values``: every output value is an input value (max-pool, flatten, clamps): the fake-quant
      mirror and PTQ treat it as grid-preserving.
    - ``fuses_activation``: compile fuses a following activation into this op's output clamp.
    - ``activation``: a clamp activation (relu, relu6): fused into its producer when it can be, else a
      standalone clamp on the producer's grid (:meth:`clamp`).
    - ``folds_into_producer``: only exists before compile (batchnorm: folded into the conv/linear).
    - ``compared``: ``hwsim compare`` diffs this layer's codes against the fake-quant mirror.
    - ``channel_mean_preserving``: the per-channel mean of the output is the input's (analytic bias
      correction may look through it).
    """

    name: str = ""
    attrs: dict[str, str] = {}
    optional_attrs: dict[str, tuple[str, object]] = {}
    params: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    arity: int | None = 1
    kind: str = "move"
    mac: bool = False
    output_grid: str = "own"
    moves_values: bool = False
    fuses_activation: bool = False
    activation: bool = False
    folds_into_producer: bool = False
    compared: bool = False
    channel_mean_preserving: bool = False

    # ------------------------------------------------------------------ graph schema
    def layer_kind(self, node, graph) -> str:
        """The profile op kind of this node's compiled layer (overrides match on it)."""
        return self.kind

    def infer_shape(self, node, ins: list[tuple[int, ...]], params: dict[str, tuple[int, ...]], fail,
                    tag: str) -> tuple[int, ...]:
        """Per-sample output shape from the input and param shapes; ``fail(msg)`` on a mismatch."""
        return ins[0]

    def check_strict(self, node, graph, fail, tag: str) -> None:
        """Value checks of a strict load (e.g. BatchNorm's variance); ``fail(msg)`` on a problem."""

    # ------------------------------------------------------------------ float reference
    def float_forward(self, node, graph, ins: list[np.ndarray]) -> np.ndarray:
        """float32 eval-mode output (PyTorch semantics) of ``node`` on its float32 inputs."""
        raise HwsimError(f"node {node.name!r}: op {node.op!r} cannot be executed by the float reference")

    # ------------------------------------------------------------------ compile
    def fixed_grid(self, lay, grid):
        """The output grid when the engine fixes it (e.g. TFLite int8 LOGISTIC: scale 1/256, zero point -128),
        else None (the calibrated ``grid`` stays). ``lay.profile`` is the layer's profile."""
        return None

    def clamp(self, lo: int, hi: int, grid) -> tuple[int, int]:
        """activation ops: the integer range [lo, hi] narrowed by this activation on ``grid``."""
        return lo, hi

    def compile(self, lay, node, cx) -> None:
        """Fill the compiled layer's own parameters (weights, requant) once its output grid is known.

        ``cx`` is :class:`hwsim.compile.LayerContext` (folded graph, layer profile, grids, reach, hooks).
        """

    # ------------------------------------------------------------------ execute
    def execute(self, qg, lay, env: dict[str, np.ndarray], st, impl: str, offset: int,
                narrow: bool) -> tuple[np.ndarray, int]:
        """Integer run of one layer on ``env``'s tensors: (output, clipped count); events go to ``st``.

        ``impl``: "fast" or "reference" (bit-identical). ``offset``: the batch's first image in the run
        (stochastic rounding draws). ``narrow``: outputs may use the narrowest integer dtype of the range.
        The default passes the input through (flatten-like ops implement their own reshape).
        """
        return env[lay.inputs[0]], 0

    # ------------------------------------------------------------------ golden vectors / compare
    def golden_fields(self, lay, write_int) -> dict:
        """Extra manifest fields of this layer in golden vectors; ``write_int(key, array)`` stores an
        integer array next to the manifest and returns its manifest entry."""
        return {}

    def explain(self, qg, lay, codes, iso_diff: int, st, fq_rounding: str) -> str | None:
        """Why this layer's codes differ from fake-quant's when fed the same inputs, if op-specific
        (None: compare's generic accumulator / requant analysis)."""
        return None

    # ------------------------------------------------------------------ exporters
    def onnx_export(self, ex, lay) -> None:
        """Emit this layer into the ONNX QDQ/QOperator graph under construction (``ex``:
        :class:`hwsim.onnx_export._Exporter`)."""
        raise HwsimError(f"layer '{lay.name}': op '{lay.op}' has no ONNX export")


_REGISTRY: dict[str, OpSpec] = {}


def register(spec: OpSpec | type) -> OpSpec:
    """Register an op spec (an instance or an OpSpec subclass, instantiated) under ``spec.name``.

    Usable as a class decorator; returns what it was given.
    """
    inst = spec() if isinstance(spec, type) else spec
    if not isinstance(inst, OpSpec) or not inst.name:
        raise TypeError(f"register: {spec!r} is not an OpSpec with a name")
    if inst.name in _REGISTRY and type(_REGISTRY[inst.name]) is not type(inst):
        raise ValueError(f"op {inst.name!r} is already registered by {type(_REGISTRY[inst.name]).__name__}")
    _REGISTRY[inst.name] = inst
    return spec


def get(name: str) -> OpSpec:
    """The spec registered under ``name``; HwsimError naming the known ops if there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise HwsimError(f"unknown op {name!r} (known ops: {', '.join(names())})") from None


def names() -> tuple[str, ...]:
    """Registered op names, in registration order."""
    return tuple(_REGISTRY)


def specs():
    """Registered specs, in registration order."""
    return tuple(_REGISTRY.values())


def names_where(**flags) -> tuple[str, ...]:
    """Names of the ops whose spec attributes equal ``flags`` (e.g. ``names_where(mac=True)``)."""
    return tuple(s.name for s in _REGISTRY.values() if all(getattr(s, k) == v for k, v in flags.items()))


# ----------------------------------------------------------------------------- helpers of the hooks
def pair(v) -> tuple:
    """An attr that is an int or a pair, as a pair (no validation: the graph was validated)."""
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def need_chw(node, x, fail, tag: str) -> None:
    """Shape check shared by the spatial ops: the input must be (C, H, W)."""
    if len(x) != 3:
        fail(f"{tag}: input {node.inputs[0]!r} has shape {x}, expected (C, H, W)")


def window_out(size: int, pad: int, extent: int, stride: int) -> int:
    """Output length of a sliding window (floor mode): floor((size + pad - extent) / stride) + 1."""
    return (size + pad - extent) // stride + 1


def per_image(shape) -> int:
    """Elements per image of a batch-first tensor shape."""
    return int(math.prod(shape[1:]))


def stochastic_index(lay, shape: tuple, offset: int):
    """Flat output indices over the whole run (image ``offset`` starts this batch) for stochastic rounding.

    Draws then depend on (layer seed, image number, position) only — not on the batch size.
    """
    r = lay.requant
    if r is None or r.rounding != "stochastic" or r.mode == "fixed":
        return None
    return (offset * per_image(shape) + np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)).reshape(shape)


def clamp_counted(y: np.ndarray, lay, grid, narrow: bool = False) -> tuple[np.ndarray, int]:
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
