"""compile(model, profile, calibration data) -> QuantizedGraph.

Steps, in order (each a function below, so PTQ algorithms can hook in between):

1. ``fold_graph``: BatchNorm handling (``fold``: WP eq. 11-12; ``scale``: weights stay unfolded,
   γ/√(σ²+ε) goes into the per-channel requant multiplier, WP eq. 41), dead-BN-channel
   detection, and fusion of ReLU/ReLU6 into the preceding conv/linear/add as its output clamp.
   The result is a float graph without BN whose float outputs equal the original's.
2. ``calibrate``: float forward pass of the folded graph on calibration images (a seeded subset
   of the train split); records every tensor that gets its own integer grid.
3. ``quantize``: weight grids (min-max / MSE, per tensor / channel, float / pow2 scales,
   ``step_scale``), activation grids (min-max / MSE / percentile), int32 biases at s_x·s_w,
   requant parameters, overflow certificates. ``QuantHooks`` lets a PTQ algorithm replace the
   weight or activation range setting, or adjust weights/biases before quantization.

Tensors that only move values (max-pool, flatten, a standalone ReLU) share their input's
grid; average pooling keeps its input's grid (a rounded mean of grid values).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from hwsim import ops
from hwsim import fixedpoint as fp
from hwsim.errors import HwsimError
from hwsim.floatref import run_float
from hwsim.graph import Graph, Node
from hwsim.profile import Profile, TensorFormat

# categories of ops, from their specs (hwsim/ops/<op>.py): the registry decides, not name lists
LINEAR_OPS = ops.registry.names_where(mac=True)  # conv2d, linear: integer weights, accumulator, requant
GRID_PRESERVING = ops.registry.names_where(moves_values=True)  # output values are input values
SHARES_INPUT_GRID = ops.registry.names_where(output_grid="input")  # the above and the average pools
DEAD_VAR_RATIO = 1e-3  # running_var < ratio * eps marks a BN channel as dead (see docs)


# ----------------------------------------------------------------------------- data classes
@dataclass
class Grid:
    """An integer grid for one tensor: real = scale * (q - zero_point), q in [qmin, qmax]."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int
    bits: int
    signed: bool

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """float -> grid, round half to even (the input quantizer)."""
        q = np.rint(np.asarray(x, np.float64) / self.scale) + self.zero_point
        return np.clip(q, self.qmin, self.qmax).astype(np.int64)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((q - self.zero_point) * self.scale).astype(np.float32)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# bias.form values for oneDNN's convolution / matmul arithmetic (ops.make_onednn_requant_params)
ONEDNN_FORMS = ("onednn", "onednn_vnni", "onednn_combined", "onednn_sequential")

class Float32DivisionGrid(Grid):
    """A grid whose quantizer is ONNX QuantizeLinear's: saturate(round_half_even(fl32(x / scale)) + zero_point),
    the division in float32 (onnx/reference/ops/op_quantize_linear.py; onnxruntime's MlasQuantizeLinear
    divides too). Profile key ``activations.input_division = "float32"`` (the input quantizer)."""

    def quantize(self, x: np.ndarray) -> np.ndarray:
        q = np.rint(np.asarray(x, np.float32) / np.float32(self.scale)).astype(np.int64) + self.zero_point
        return np.clip(q, self.qmin, self.qmax)


class TorchQuantizeGrid(Grid):
    """A grid whose quantizer is PyTorch's ``torch.quantize_per_tensor`` on x86 CPUs:
    saturate(round_half_even(fl32(fma(x, fl32(1 / scale), zero_point)))), one rounding of x * inv_scale + z
    (ATen's vectorized quantize: ``_mm256_fmadd_ps`` of the input, the float32 reciprocal of the scale and the
    zero point, then a round-to-nearest-even conversion; measured bit for bit against torch 2.13 on every
    tensor length, vector body and scalar tail alike, tests/importers/test_torch_int8.py). Profile key
    ``activations.input_division = "torch"``."""

    def quantize(self, x: np.ndarray) -> np.ndarray:
        from hwsim import kernels  # one numba pass == np.clip(np.rint(fma_f32(x, inv, z)).astype(np.int64), ...)

        inv = np.float32(1.0) / np.float32(self.scale)
        return kernels.quantize_fma(x, inv, np.float32(self.zero_point), self.qmin, self.qmax)


class InductorQuantizeGrid(Grid):
    """A grid whose quantizer is torch.compile's (inductor) x86 lowering of pt2e's quantize_per_tensor:
    saturate(round_half_even(fl32(x * fl32(1 / scale))) + zero_point), the multiply and the rounding in float32, the
    zero point added after (the generated C++ kernel: ``tmp0 * inv_scale``, ``.round()``, ``+ zero_point``,
    clamp; read in TORCH_LOGS=output_code and measured, tests/importers/test_pt2e.py). Profile key
    ``activations.input_division = "inductor"``."""

    def quantize(self, x: np.ndarray) -> np.ndarray:
        inv = np.float32(1.0) / np.float32(self.scale)
        q = np.rint(np.asarray(x, np.float32) * inv).astype(np.int64) + self.zero_point
        return np.clip(q, self.qmin, self.qmax)


def fma_f32(a: np.ndarray, b: np.float32, c: np.float32) -> np.ndarray:
    """float32 fma(a, b, c) = fl32(a * b + c) with one rounding (IEEE 754 fusedMultiplyAdd), exactly: a * b of two
    float32 values is exact in float64; the float64 sum s = p + c carries a TwoSum error e, and fl32(s) is the
    correctly rounded result except where s lies exactly halfway between two float32 values and e != 0 (double
    rounding): there the neighbour on e's side is."""
    p = np.asarray(a, np.float32).astype(np.float64) * np.float64(b)
    c64 = np.float64(c)
    s = p + c64
    bb = s - p
    e = (p - (s - bb)) + (c64 - bb)
    r = s.astype(np.float32)
    r64 = r.astype(np.float64)
    other = np.nextafter(r, np.where(s > r64, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32))
    tie = (s != r64) & ((r64 + other.astype(np.float64)) * 0.5 == s) & (e != 0)
    toward = np.where(e > 0, np.maximum(r, other), np.minimum(r, other))
    return np.where(tie, toward, r).astype(np.float32)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return np.where(v >= 0, np.floor(v + 0.5), np.ceil(v - 0.5))


class LiteRTQuantizeGrid(Grid):
    """A grid whose quantizer is LiteRT's int8 QUANTIZE of a float input (measured against ai-edge-litert 2.3 on
    near-tie inputs, tests/core/test_litert_engine.py), ``form``:
    - "tflite_reference" (reference_ops::AffineQuantize): round_half_away(fl32(x / scale)) + zero_point;
    - "tflite_optimized" (optimized_ops::AffineQuantize, x86-64 NEON_2_SSE): per image, in NHWC order, the first
      n - n mod 8 values round_half_even(fl32(x * fl32(1 / scale))) (vmulq + vcvtnq), the last n mod 8 values
      round_half_away(x / scale) in double (the scalar loop);
    - "xnnpack" (XNNPACK's f32 -> qs8 convert): round_half_even(fl32(x * fl32(1 / scale))).
    Profile key ``activations.input_division``."""

    form = "tflite_reference"

    def quantize(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        s = np.float32(self.scale)
        if self.form == "tflite_reference":
            q = _round_half_away(x / s)
        else:
            q = np.rint(x * (np.float32(1.0) / s))
            if self.form == "tflite_optimized" and x.ndim >= 2:
                nhwc = np.moveaxis(x, 1, -1).reshape(x.shape[0], -1) if x.ndim == 4 else x.reshape(x.shape[0], -1)
                tail = nhwc.shape[1] % 8
                if tail:
                    qn = np.moveaxis(q, 1, -1).reshape(nhwc.shape).copy() if x.ndim == 4 else q.reshape(nhwc.shape)
                    qn[:, -tail:] = _round_half_away(nhwc[:, -tail:].astype(np.float64) / np.float64(s))
                    q = (np.moveaxis(qn.reshape(np.moveaxis(x, 1, -1).shape), -1, 1) if x.ndim == 4
                         else qn.reshape(x.shape))
        return np.clip(q.astype(np.int64) + self.zero_point, self.qmin, self.qmax)


class LiteRTOptimizedQuantizeGrid(LiteRTQuantizeGrid):
    form = "tflite_optimized"


class XNNPackQuantizeGrid(LiteRTQuantizeGrid):
    form = "xnnpack"


# one class per form (the form travels with the grid's type through copies and worker processes)
LITERT_QUANTIZE_GRIDS = {"tflite_reference": LiteRTQuantizeGrid, "tflite_optimized": LiteRTOptimizedQuantizeGrid,
                         "xnnpack": XNNPackQuantizeGrid}


def input_grid(grid: Grid, fmt: TensorFormat) -> Grid:
    """The input's grid with the quantizer ``fmt.input_division`` names (float64: x / scale in float64)."""
    div = getattr(fmt, "input_division", "float64")
    if div == "float32":
        return Float32DivisionGrid(**dataclasses.asdict(grid))
    if div == "torch":
        return TorchQuantizeGrid(**dataclasses.asdict(grid))
    if div in LITERT_QUANTIZE_GRIDS:
        return LITERT_QUANTIZE_GRIDS[div](**dataclasses.asdict(grid))
    if div == "inductor":
        return InductorQuantizeGrid(**dataclasses.asdict(grid))
    return grid


@dataclass
class QLayer:
    """One executable step of a quantized graph."""

    name: str
    op: str  # a registered op name (hwsim.ops.registry.names())
    kind: str  # conv | depthwise | linear | add | concat | pool | move
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    # linear ops
    w_q: np.ndarray | None = None
    w_zero_point: np.ndarray | int = 0
    w_qmin: int = 0  # the weight grid's integer range (first/last-layer bits included)
    w_qmax: int = 0
    w_scale: np.ndarray | None = None  # effective per-channel scale (incl. BN 'scale' factor)
    bias_q: np.ndarray | None = None
    bias_clipped: int = 0
    accumulator: ops.Accumulator | None = None
    requant: ops.Requant | None = None
    requant_params: object = None
    certificate: object = None
    # float copies for weight-only execution and the fake-quant mirror
    w_float: np.ndarray | None = None
    b_float: np.ndarray | None = None
    # output clamp (fused activation) on the output grid
    clamp: tuple[int, int] | None = None
    activation: str | None = None
    profile: Profile | None = None
    # seed of this layer's stochastic rounding (requant and pools): layer_seed(requant.seed, position)
    rounding_seed: int = 0
    # lookup-table ops (sigmoid, hardswish, ...): table[q - table_qmin], built once at compile time
    table: np.ndarray | None = None
    table_qmin: int = 0
    # the engine form the op's hook chose from the profile (activation tables, mul, mean, pools), if any
    form: str | None = None


@dataclass
class QuantizedGraph:
    """Everything the integer executor needs; no floats on the integer path except the input scale."""

    model: Graph  # the folded float graph (no BN, activations fused as attrs)
    profile: Profile
    grids: dict[str, Grid]
    layers: list[QLayer]
    input_name: str
    output_name: str
    dead_channels: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # reachable integer range of every grid tensor (a fused ReLU narrows it): certificates use it
    reach: dict[str, tuple[int, int]] = field(default_factory=dict)
    recipe: str = "profile"  # the PTQ recipe that chose the parameters (hwsim.ptq)
    ptq: dict = field(default_factory=dict)  # what the recipe's steps report (e.g. "lapq": LapqInfo)

    @property
    def weight_only(self) -> bool:
        return self.profile.weight_only

    def layer(self, name: str) -> QLayer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(name)

    @property
    def mac_layers(self) -> list[QLayer]:
        return [lay for lay in self.layers if lay.op in LINEAR_OPS]


@dataclass
class QuantHooks:
    """Extension points for PTQ algorithms (ACIQ, Lp, LAPQ, bias correction, CLE, AdaRound).

    - ``before_quantize(folded_graph, calib_tensors) -> folded_graph``: e.g. CLE rescaling.
    - ``weight_range(layer_name, w, fmt) -> (lo, hi)`` per channel arrays: replaces min-max/MSE.
    - ``activation_range(tensor_name, values, fmt) -> (lo, hi)``: replaces min-max/MSE/percentile.
      Both get the tensor's format with its effective ``bits`` (first/last-layer overrides
      included); :mod:`hwsim.ptq` builds them from a recipe (docs/ptq.md).
    - ``after_quantize(qgraph, calib_images) -> qgraph``: e.g. bias correction, AdaRound.
    """

    before_quantize: Callable | None = None
    weight_range: Callable | None = None
    activation_range: Callable | None = None
    after_quantize: Callable | None = None


# ----------------------------------------------------------------------------- step 1: fold
def _op_kind(node: Node, graph: Graph) -> str:
    """The profile op kind of a node's layer (conv, depthwise, linear, add, concat, pool, move): its spec's."""
    return ops.get(node.op).layer_kind(node, graph)


def fold_graph(graph: Graph, batchnorm: str = "fold") -> tuple[Graph, list[dict]]:
    """Fold BN into the preceding conv/linear and fuse ReLU/ReLU6 into their producer.

    Returns the folded float graph and the list of dead BN channels found. With ``batchnorm =
    'scale'`` the folded graph is the same float function; the unfolded weights and the BN
    factor are kept in the node attrs (``bn_scale``) for :func:`quantize` (WP eq. 41).
    """
    consumers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    tensors = dict(graph.tensors)
    replaced: dict[str, str] = {}  # tensor name -> tensor name it is now produced as
    removed: set[str] = set()
    dead: list[dict] = []
    bn_folded: list[str] = []  # conv/linear nodes a BatchNorm was folded into
    new_nodes: list[Node] = []
    by_name = {n.name: n for n in graph.nodes}

    def sole_consumer(tensor: str, op: tuple[str, ...]) -> Node | None:
        cs = consumers.get(tensor, [])
        if len(cs) == 1 and cs[0].op in op and tensor not in graph.outputs:
            return cs[0]
        return None

    for n in graph.nodes:
        if n.name in removed:
            continue
        node = Node(n.name, n.op, [replaced.get(i, i) for i in n.inputs], list(n.outputs), dict(n.attrs), dict(n.params))
        spec = ops.get(node.op)
        if spec.folds_into_producer:
            raise HwsimError(f"node '{n.name}': a batchnorm that does not follow a conv2d/linear "
                             "(as its only consumer) cannot be folded; hwsim supports conv/linear -> batchnorm")
        out = n.outputs[0]
        if spec.mac:
            w = tensors[node.params["weight"]].astype(np.float64)
            b = (tensors[node.params["bias"]].astype(np.float64) if node.params.get("bias")
                 else np.zeros(w.shape[0]))
            bn = sole_consumer(out, ops.registry.names_where(folds_into_producer=True))
            if bn is not None:
                g = tensors[bn.params["weight"]].astype(np.float64)
                beta = tensors[bn.params["bias"]].astype(np.float64)
                mu = tensors[bn.params["running_mean"]].astype(np.float64)
                var = tensors[bn.params["running_var"]].astype(np.float64)
                eps = float(bn.attrs.get("eps", 1e-5))
                f = g / np.sqrt(var + eps)  # WP eq. 11: W~ = γW/√(σ²+ε)
                wf = w * f.reshape((-1,) + (1,) * (w.ndim - 1))
                bf = beta + f * (b - mu)  # WP eq. 12: b~ = β + γ(b − μ)/√(σ²+ε)
                # dead channels: running variance ~ 0 blows the folded weights up (DESIGN.md)
                per_ch = np.abs(wf).reshape(w.shape[0], -1).max(axis=1)
                med = float(np.median(per_ch)) if per_ch.size else 0.0
                for c in np.nonzero(var < DEAD_VAR_RATIO * eps)[0]:
                    if per_ch[c] > 10 * max(med, 1e-12) or var[c] == 0:
                        dead.append({"layer": node.name, "batchnorm": bn.name, "channel": int(c),
                                     "running_var": float(var[c]), "folded_max_abs_weight": float(per_ch[c])})
                        wf[c] = 0.0
                        w[c] = 0.0
                        f[c] = 0.0 if batchnorm == "fold" else f[c]
                if batchnorm == "scale":
                    node.attrs["bn_scale"] = f.astype(np.float64).tolist()
                    tensors[f"{node.name}.weight_unfolded"] = w.astype(np.float32)
                tensors[node.params["weight"]] = wf.astype(np.float32)
                bname = node.params.get("bias") or f"{node.name}.bias"
                tensors[bname] = bf.astype(np.float32)
                node.params["bias"] = bname
                removed.add(bn.name)
                bn_folded.append(node.name)
                out_alias = bn.outputs[0]  # the folded node produces the BN's output tensor: no renaming
            else:
                out_alias = out
            node = _fuse_activation(node, out_alias, sole_consumer, removed, replaced, by_name)
        elif spec.fuses_activation:
            node = _fuse_activation(node, out, sole_consumer, removed, replaced, by_name)
        new_nodes.append(node)
    outputs = [replaced.get(o, o) for o in graph.outputs]
    used = {t for nd in new_nodes for t in nd.params.values()}
    folded = Graph(inputs=graph.inputs, nodes=new_nodes, outputs=outputs,
                   tensors={k: v for k, v in tensors.items() if k in used or k.endswith(".weight_unfolded")},
                   metadata={**graph.metadata, "bn_folded": bn_folded})
    return folded, dead


def _fuse_activation(node, out, sole_consumer, removed, replaced, by_name):
    act = sole_consumer(out, ops.registry.names_where(activation=True))
    node.outputs = [out]
    if act is not None:
        node.attrs["activation"] = act.op
        removed.add(act.name)
        # keep the activation's name as the tensor name so consumers need no renaming
        node.outputs = [act.outputs[0]]
        replaced[out] = act.outputs[0]
    return node


def _float_graph(folded: Graph) -> Graph:
    """The folded graph as plain float nodes (fused activations re-expanded) for run_float."""
    nodes: list[Node] = []
    for n in folded.nodes:
        act = n.attrs.get("activation")
        attrs = {k: v for k, v in n.attrs.items() if k not in ("activation", "bn_scale")}
        if act:
            pre = n.outputs[0] + "::pre"
            nodes.append(Node(n.name, n.op, list(n.inputs), [pre], attrs, dict(n.params)))
            nodes.append(Node(n.name + "::" + act, act, [pre], list(n.outputs), {}, {}))
        else:
            nodes.append(Node(n.name, n.op, list(n.inputs), list(n.outputs), attrs, dict(n.params)))
    return Graph(inputs=folded.inputs, nodes=nodes, outputs=folded.outputs,
                 tensors=folded.tensors, metadata=folded.metadata)


# ----------------------------------------------------------------------------- step 2: calibrate
def calibrate(folded: Graph, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Float forward pass over normalised calibration images; every named tensor, concatenated.

    Each tensor's array is allocated once for all images and filled batch by batch (a list of batches and a
    concatenation held every tensor twice at the end: ResNet-18 @ 224, 32 images, 1.9 GB peak); a single batch
    is kept as it is."""
    fg = _float_graph(folded)
    n = len(images)
    out: dict[str, np.ndarray] = {}
    for i in range(0, n, batch_size):
        res = run_float(fg, images[i:i + batch_size], return_all=True)
        for k, v in res.items():
            v = np.asarray(v, np.float32)
            if i == 0:
                if len(v) == n:
                    out[k] = v
                    continue
                out[k] = np.empty((n, *v.shape[1:]), np.float32)
            out[k][i:i + len(v)] = v
        del res
    return out


# ----------------------------------------------------------------------------- range setting
def _pow2(scale: np.ndarray, how: str) -> np.ndarray:
    e = np.log2(scale)
    e = np.ceil(e) if how == "ceil" else np.round(e)
    return np.exp2(e)


def int_grid(fmt: TensorFormat, bits: int | None = None) -> tuple[int, int]:
    b = bits or fmt.bits
    if not fmt.signed:
        return 0, 2**b - 1
    return -(2 ** (b - 1)) + (1 if fmt.narrow else 0), 2 ** (b - 1) - 1


def scale_zero_point(lo, hi, fmt: TensorFormat, qmin: int, qmax: int):
    """Range [lo, hi] (arrays) -> (scale, zero_point) on the format's grid (WP eq. 2-3)."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if fmt.symmetric:
        top = qmax if fmt.signed else qmax
        amax = np.maximum(np.abs(lo), np.abs(hi)) if fmt.signed else hi
        scale = amax / top
        zp = np.zeros_like(scale, dtype=np.int64)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = None
    scale = np.where(scale > 0, scale, 1.0) * fmt.step_scale
    if fmt.scale == "pow2":
        scale = _pow2(scale, fmt.pow2_rounding)
    if zp is None:
        zp = np.clip(np.rint(qmin - lo / scale), qmin, qmax).astype(np.int64)
    return scale, zp


def fake_quant(x, scale, zp, qmin, qmax):
    return (np.clip(np.rint(x / scale) + zp, qmin, qmax) - zp) * scale


def _mse_range(x: np.ndarray, fmt, qmin, qmax, axis_reduce=None, grid=np.linspace(0.2, 1.0, 41)):
    """Clipping search: the range α·[min, max] minimising ||x − Q(x)||² (α on a fixed grid)."""
    if axis_reduce is None:
        lo0, hi0 = float(x.min()), float(x.max())
        best, best_err = (lo0, hi0), np.inf
        for a in grid:
            s, z = scale_zero_point(a * lo0, a * hi0, fmt, qmin, qmax)
            err = float(np.mean((x - fake_quant(x, s, z, qmin, qmax)) ** 2))
            if err < best_err:
                best, best_err = (a * lo0, a * hi0), err
        return best
    # per channel (rows of a 2-D array)
    lo0, hi0 = x.min(axis=1), x.max(axis=1)
    best_lo, best_hi = lo0.copy(), hi0.copy()
    best_err = np.full(x.shape[0], np.inf)
    for a in grid:
        s, z = scale_zero_point(a * lo0, a * hi0, fmt, qmin, qmax)
        err = np.mean((x - fake_quant(x, s[:, None], z[:, None], qmin, qmax)) ** 2, axis=1)
        better = err < best_err
        best_lo[better], best_hi[better], best_err[better] = a * lo0[better], a * hi0[better], err[better]
    return best_lo, best_hi


def weight_grid(w: np.ndarray, fmt: TensorFormat, bits: int, hook=None, name=""):
    """Per-channel (or per-tensor, broadcast) weight scale and zero point arrays of length Cout."""
    qmin, qmax = int_grid(fmt, bits)
    w2 = w.reshape(w.shape[0], -1).astype(np.float64)
    if hook is not None:  # the hook sees the effective bits (first/last-layer overrides included)
        lo, hi = hook(name, w2, dataclasses.replace(fmt, bits=bits))
    elif fmt.granularity == "per_channel":
        lo, hi = _mse_range(w2, fmt, qmin, qmax, axis_reduce=1) if fmt.range == "mse" else (w2.min(1), w2.max(1))
    else:
        lo, hi = _mse_range(w2, fmt, qmin, qmax) if fmt.range == "mse" else (w2.min(), w2.max())
        lo, hi = np.full(w2.shape[0], lo), np.full(w2.shape[0], hi)
    scale, zp = scale_zero_point(lo, hi, fmt, qmin, qmax)
    return np.asarray(scale, np.float64), np.asarray(zp, np.int64), qmin, qmax


def lsq_activation_steps(model: Graph, folded: Graph, grid_source) -> dict[str, tuple[float, int, bool]]:
    """{tensor: (step, bits, signed)} from the model's LSQ metadata: each QAT-wrapped conv/linear
    quantized its *input* with a learned step; that input's grid tensor takes it."""
    lsq = model.metadata.get("lsq") or {}
    out: dict[str, tuple[float, int, bool]] = {}
    for n in folded.nodes:
        e = lsq.get(n.name)
        if n.op not in LINEAR_OPS or not e or e.get("a_step") is None:
            continue
        t = grid_source(n.inputs[0])
        v = (float(abs(e["a_step"])), int(e["a_bits"]), bool(e["a_signed"]))
        if t in out and out[t] != v:
            raise HwsimError(f"LSQ metadata: tensor '{t}' feeds layers with different learned steps/bits "
                             f"{out[t]} and {v} (layer '{n.name}')")
        out[t] = v
    return out


def lsq_grid(step: float, bits: int, signed: bool) -> Grid:
    """LSQ's own grid: real = step * q, q in [-2^(b-1), 2^(b-1)-1] (signed) or [0, 2^b-1] (LSQ eq. 1)."""
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    return Grid(float(step), 0, qmin, qmax, bits, signed)


def lsq_rescale(step, learned_bits: int, bits: int, signed: bool):
    """A step learned at ``learned_bits`` re-used at ``bits``: s' = s·Q_P(b)/Q_P(b'), Q_P the top of LSQ's
    grid (2^(b-1)-1 signed, 2^b-1 unsigned), so the learned clipping threshold Q_P·s stays where it
    was (docs/frontend.md: why rescaling rather than re-initialising). Same bits: s unchanged."""
    if learned_bits == bits:
        return step
    top = (lambda b: 2 ** (b - 1) - 1) if signed else (lambda b: 2 ** b - 1)
    return step * (top(learned_bits) / top(bits))


def activation_grid(x: np.ndarray, fmt: TensorFormat, bits: int, hook=None, name="", lsq=None) -> Grid:
    """The grid of one activation tensor. ``lsq`` = {tensor: (step, bits, signed)} for range "lsq"
    (tensors without a learned step fall back to min-max on the calibration values)."""
    if fmt.range == "lsq" and hook is None:
        if lsq and name in lsq:
            step, b, signed = lsq[name]
            if fmt.scale != "float":
                raise HwsimError(f"tensor '{name}': activations.range = lsq keeps the learned step; "
                                 f"activations.scale must be 'float', not {fmt.scale!r}")
            # another bit width: the step rescaled to keep the clipping range; then activations.step_scale
            return lsq_grid(lsq_rescale(step, b, bits, signed) * fmt.step_scale, bits, signed)
        fmt = dataclasses.replace(fmt, range="minmax")
    qmin, qmax = int_grid(fmt, bits)
    v = x.reshape(-1).astype(np.float64)
    if hook is not None:  # the hook sees the effective bits (first/last-layer overrides included)
        lo, hi = hook(name, v, dataclasses.replace(fmt, bits=bits))
    elif fmt.range == "percentile":
        lo, hi = np.percentile(v, 100 - fmt.percentile), np.percentile(v, fmt.percentile)
    elif fmt.range == "mse":
        sub = v if v.size <= 200_000 else v[np.random.default_rng(0).choice(v.size, 200_000, replace=False)]
        lo, hi = _mse_range(sub, fmt, qmin, qmax)
    else:
        lo, hi = v.min(), v.max()
    s, z = scale_zero_point(lo, hi, fmt, qmin, qmax)
    return Grid(float(s), int(z), qmin, qmax, bits, fmt.signed)


# ----------------------------------------------------------------------------- step 3: quantize
def _accumulator(p: Profile) -> ops.Accumulator:
    a = p.accumulator
    return ops.Accumulator(bits=a.bits, overflow=a.overflow, rows=a.rows,
                           partial_bits=a.partial_bits, partial_overflow=a.partial_overflow)


def new_layer(n: Node, folded: Graph, profile: Profile, first: str | None, last: str | None, ordinal: int) -> QLayer:
    """The QLayer of folded node ``n`` before its op's compile hook: kind, the profile for this layer
    (per-layer overrides by name, kind, first/last position, groups) and its stochastic-rounding seed.
    Shared by calibrated compiles and given quantization (hwsim.given.compile_given)."""
    kind = _op_kind(n, folded)
    position = "first" if n.name == first else "last" if n.name == last else None
    prof = profile.for_layer(n.name, kind, position, int(n.attrs.get("groups", 1)))
    return QLayer(name=n.name, op=n.op, kind=kind, inputs=list(n.inputs), output=n.outputs[0],
                  attrs={k: v for k, v in n.attrs.items() if k != "bn_scale"},
                  activation=n.attrs.get("activation"), profile=prof,
                  rounding_seed=layer_seed(prof.requant.seed, ordinal))


def layer_seed(seed: int, ordinal: int) -> int:
    """Stochastic-rounding seed of the layer at position ``ordinal``: splitmix64(seed ^ ordinal*golden) mod 2^31.

    Layers get independent draws even when their outputs have the same shape (docs/semantics.md).
    """
    return int(fp.stochastic_hash(np.int64(ordinal), seed)) & 0x7FFFFFFF


def _requant(p: Profile) -> ops.Requant:
    r = p.requant
    return ops.Requant(mode=r.mode, rounding=r.rounding, fixed_rounding=r.fixed_rounding,
                       fixed_ties=tuple(r.fixed_ties), multiplier_bits=r.multiplier_bits,
                       zero_point=r.zero_point, multiplier_order=r.multiplier_order, add_form=r.add_form,
                       fixed_product=r.fixed_product, seed=r.seed)


def compile_model(model: Graph, profile: Profile, calib_images: np.ndarray,
                  hooks: QuantHooks | None = None, recipe=None, progress: Callable | None = None) -> QuantizedGraph:
    """Quantize a float graph for a profile. ``calib_images`` are *normalised* float32 NCHW.

    ``recipe``: a PTQ recipe (:class:`hwsim.ptq.Recipe`, a built-in name or a .toml path) saying
    how the parameters are chosen under the profile's constraints (docs/ptq.md). None or the
    "profile" recipe: the profile's own ``weights.range`` / ``activations.range`` (bit-identical
    to compiling without a recipe). ``progress(stage, step, total, value)`` reports long work.
    """
    from hwsim.given import compile_given, wants_given

    if wants_given(model, profile):  # an imported int8 model: its own numbers, the profile's arithmetic
        from hwsim import ptq

        if recipe is not None and not (ptq.load_recipe(recipe) if isinstance(recipe, str) else recipe).is_profile:
            raise HwsimError("a PTQ recipe chooses parameters, but the model's given quantization is kept "
                             "(profile ranges = 'auto'/'given'); --set ranges=calibrate to re-quantize it")
        return compile_given(model, profile)
    if recipe is not None:
        from hwsim import ptq

        rec = ptq.load_recipe(recipe) if isinstance(recipe, str) else recipe
        if not rec.is_profile:
            return ptq.compile_with_recipe(model, profile, calib_images, rec, hooks=hooks, progress=progress)
    hooks = hooks or QuantHooks()
    folded, dead = fold_graph(model, profile.batchnorm)
    calib = calibrate(folded, calib_images)
    if hooks.before_quantize is not None:
        folded = hooks.before_quantize(folded, calib)
        calib = calibrate(folded, calib_images)
    qg = quantize_folded(model, folded, dead, calib, profile, hooks)
    if hooks.after_quantize is not None:
        qg = hooks.after_quantize(qg, calib_images)
    return qg


@dataclass
class LayerPlan:
    """What every compile path asks of a folded graph before choosing grids: the input tensor, the first
    and last MAC layers, the tensor whose grid a tensor shares, and an activation's bits (first/last-layer
    precision applied). Shared by :func:`quantize_folded` and :func:`hwsim.given.compile_given`."""

    input_name: str
    mac_nodes: list
    first: str
    last: str
    grid_source: Callable[[str], str]
    act_bits: Callable[[str, Profile], int]


def layer_plan(folded: Graph, profile: Profile, own_grids=frozenset()) -> LayerPlan:
    """The :class:`LayerPlan` of ``folded`` under ``profile``. ``own_grids``: tensors that keep their own
    grid even after a grid-sharing op (an imported model's given grids)."""
    input_name = folded.inputs[0].name
    mac_nodes = [n for n in folded.nodes if n.op in LINEAR_OPS]
    if not mac_nodes:
        raise HwsimError("model has no conv2d/linear layer to quantize")
    first, last = mac_nodes[0].name, mac_nodes[-1].name
    producer = {n.outputs[0]: n for n in folded.nodes}

    def grid_source(t: str) -> str:
        """The tensor whose grid ``t`` shares (through max-pool/flatten/relu/avg-pool)."""
        while t in producer and producer[t].op in SHARES_INPUT_GRID and t not in own_grids:
            t = producer[t].inputs[0]
        return t

    # which grid tensors feed the last layer / are outputs (last-layer precision)
    last_node = next(n for n in folded.nodes if n.name == last)
    last_grids = {grid_source(last_node.inputs[0]), grid_source(last_node.outputs[0])}
    last_grids |= {grid_source(o) for o in folded.outputs}

    def act_bits(tensor: str, prof: Profile) -> int:
        bits = prof.activations.bits
        if tensor == input_name and profile.first_layer.bits:
            bits = profile.first_layer.bits
        if tensor in last_grids and profile.last_layer.bits:
            bits = profile.last_layer.bits
        return bits

    return LayerPlan(input_name, mac_nodes, first, last, grid_source, act_bits)


def quantize_folded(model: Graph, folded: Graph, dead: list[dict], calib: dict[str, np.ndarray], profile: Profile,
                    hooks: QuantHooks | None = None, certificates: bool = True) -> QuantizedGraph:
    """Step 3 on a folded graph and its calibration tensors: grids, integer weights, biases, requant.

    ``certificates = False`` skips the overflow certificates (PTQ searches that only need the
    integers; the final graph always has them).
    """
    hooks = hooks or QuantHooks()
    plan = layer_plan(folded, profile)
    input_name, first, last, grid_source, act_bits = (plan.input_name, plan.first, plan.last, plan.grid_source,
                                                      plan.act_bits)

    grids: dict[str, Grid] = {}
    weight_only = profile.weight_only
    lsq_act = None
    if "lsq" in (profile.activations.range, profile.weights.range) or any(
            v == "lsq" for o in profile.overrides for k, v in o.settings if k.endswith(".range")):
        if not model.metadata.get("lsq"):
            raise HwsimError("range = 'lsq' needs a model trained with LSQ QAT (metadata 'lsq' with the learned "
                             "steps): train with hwsim train --qat-bits and export")
        lsq_act = lsq_activation_steps(model, folded, grid_source)
    if not weight_only:
        grids[input_name] = input_grid(activation_grid(calib[input_name], profile.activations,
                                                       act_bits(input_name, profile), hooks.activation_range,
                                                       input_name, lsq_act), profile.activations)

    # reachable integer range of every tensor (a fused ReLU narrows it): certificates use it
    reach: dict[str, tuple[int, int]] = {}
    if not weight_only:
        reach[input_name] = (grids[input_name].qmin, grids[input_name].qmax)
    layers: list[QLayer] = []
    for n in folded.nodes:
        lay = new_layer(n, folded, profile, first, last, len(layers))
        prof, out = lay.profile, lay.output
        spec = ops.get(n.op)
        if spec.output_grid == "input":
            if not weight_only:
                grids[out] = grids[grid_source(out)]
                lo, hi = reach[n.inputs[0]]
                if spec.activation:  # a standalone clamp on its input's grid
                    lo, hi = spec.clamp(lo, hi, grids[out])
                    lay.clamp = (lo, hi)
                reach[out] = (lo, hi)
            layers.append(lay)
            continue
        if not weight_only:
            g = activation_grid(calib[out], prof.activations, act_bits(out, prof), hooks.activation_range, out, lsq_act)
            g = spec.fixed_grid(lay, g) or g  # an engine's fixed output grid (sigmoid, tanh), else calibrated
            grids[out] = g
            lo, hi = g.qmin, g.qmax
            if lay.activation:  # a fused activation: its clamp on this layer's output grid
                lo, hi = ops.get(lay.activation).clamp(lo, hi, g)
            lay.clamp = (lo, hi)
            reach[out] = (lo, hi)
        # the op's own parameters (weights and requant of a MAC layer, requant of add/concat, ...)
        spec.compile(lay, n, LayerContext(folded, profile, prof, grids, reach, weight_only, hooks, certificates,
                                          "first" if n.name == first else "last" if n.name == last else None))
        if lay.requant is not None and lay.requant.rounding == "stochastic":
            lay.requant = dataclasses.replace(lay.requant, seed=lay.rounding_seed)
        layers.append(lay)

    qg = QuantizedGraph(model=folded, profile=profile, grids=grids, layers=layers,
                        input_name=input_name, output_name=folded.outputs[0], dead_channels=dead, reach=reach)
    if dead:
        qg.notes.append(f"{len(dead)} dead BatchNorm channel(s) (running variance ~ 0): folded weights zeroed")
    return qg


@dataclass
class LayerContext:
    """What an op's ``compile`` hook (:meth:`hwsim.ops.registry.OpSpec.compile`) may use for one layer."""

    folded: Graph
    profile: Profile  # the whole profile
    prof: Profile  # the layer's profile (overrides applied)
    grids: dict[str, Grid]
    reach: dict[str, tuple[int, int]]
    weight_only: bool
    hooks: QuantHooks
    certificates: bool
    position: str | None  # "first" / "last" MAC layer, else None

    def requant(self) -> ops.Requant:
        """The layer's requantization config from its profile."""
        return _requant(self.prof)

    @property
    def w_bits(self) -> int:
        """Weight bits of this layer (first/last-layer precision included)."""
        p = self.profile
        if self.position == "first" and p.first_layer.bits:
            return p.first_layer.bits
        if self.position == "last" and p.last_layer.bits:
            return p.last_layer.bits
        return self.prof.weights.bits


def quantize_mac(lay: QLayer, n: Node, cx: LayerContext) -> None:
    """A MAC layer's compile hook (conv2d, linear): weight grid, integer weights, bias, requant, certificate."""
    _quantize_linear(lay, n, cx.folded, cx.prof, cx.grids, cx.reach, cx.weight_only, w_bits=cx.w_bits,
                     hook=cx.hooks.weight_range, certificates=cx.certificates)


def _lsq_weight_grid(n: Node, folded: Graph, fmt: TensorFormat, w_bits: int, bn_scale):
    """The learned LSQ weight steps of layer ``n`` (per channel or per tensor), LSQ's signed grid, z = 0;
    at another bit width than learned, rescaled by ``lsq_rescale``; times ``weights.step_scale``.

    LSQ quantized the unfolded weights, so a layer followed by BatchNorm needs batchnorm = 'scale'
    (quantize unfolded weights, BN factor in the multiplier: WP eq. 41).
    """
    e = (folded.metadata.get("lsq") or {}).get(n.name)
    if not e or not e.get("w_step"):
        raise HwsimError(f"layer '{n.name}': weights.range = lsq but the model has no learned weight step for it")
    if fmt.scale != "float":
        raise HwsimError(f"layer '{n.name}': weights.range = lsq keeps the learned steps; weights.scale must be "
                         f"'float', not {fmt.scale!r}")
    if n.name in folded.metadata.get("bn_folded", ()) and bn_scale is None:
        raise HwsimError(f"layer '{n.name}': weights.range = lsq needs batchnorm = 'scale' (LSQ quantized the "
                         "unfolded weights; folding BN first would change the integers)")
    cout = folded.param(n, "weight").shape[0]
    step = np.abs(np.asarray(e["w_step"], np.float64).reshape(-1))
    if step.size not in (1, cout):
        raise HwsimError(f"layer '{n.name}': {step.size} LSQ weight steps for {cout} output channels")
    # another bit width: the step rescaled to keep the clipping range (lsq_rescale); then weights.step_scale
    step = lsq_rescale(step, int(e["w_bits"]), w_bits, True) * fmt.step_scale
    qmin, qmax = -(2 ** (w_bits - 1)), 2 ** (w_bits - 1) - 1
    return np.broadcast_to(step, (cout,)).copy(), np.zeros(cout, np.int64), qmin, qmax


def _quantize_linear(lay: QLayer, n: Node, folded: Graph, prof: Profile, grids, reach, weight_only, w_bits, hook,
                     certificates: bool = True):
    w = folded.param(n, "weight").astype(np.float64)
    b = folded.param(n, "bias")
    b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    bn_scale = n.attrs.get("bn_scale")
    if bn_scale is not None:
        # WP eq. 41: quantize the unfolded weights, absorb γ/√(σ²+ε) into the requant multiplier;
        # a negative factor flips the sign of that channel's weights so the multiplier stays positive.
        if prof.requant.mode == "pow2" and not weight_only:
            raise HwsimError(f"layer '{n.name}': batchnorm = 'scale' needs requant.mode float32 or fixed "
                             "(a BN factor is not a power of two)")
        f = np.asarray(bn_scale, np.float64)
        w_unf = folded.tensors[f"{n.name}.weight_unfolded"].astype(np.float64)
        sign = np.where(f < 0, -1.0, 1.0)
        w_src = w_unf * sign.reshape((-1,) + (1,) * (w.ndim - 1))
        factor = np.abs(f)
    else:
        w_src, factor = w, np.ones(w.shape[0])
    fmt = prof.weights
    if fmt.range == "lsq" and hook is None:
        scale, zp, qmin, qmax = _lsq_weight_grid(n, folded, fmt, w_bits, bn_scale)
    else:
        scale, zp, qmin, qmax = weight_grid(w_src, fmt, w_bits, hook, n.name)
    shp = (-1,) + (1,) * (w.ndim - 1)
    w_q = np.clip(np.rint(w_src / scale.reshape(shp)) + zp.reshape(shp), qmin, qmax).astype(np.int64)
    lay.w_q = w_q
    lay.w_qmin, lay.w_qmax = int(qmin), int(qmax)
    lay.w_zero_point = zp if fmt.granularity == "per_channel" or not fmt.symmetric else 0
    if isinstance(lay.w_zero_point, np.ndarray) and not lay.w_zero_point.any():
        lay.w_zero_point = 0
    lay.w_scale = scale * factor  # effective per-channel scale
    lay.b_float = b.astype(np.float32)
    lay.accumulator = _accumulator(prof)
    lay.requant = _requant(prof)
    finish_linear(lay, grids, reach, weight_only, certificates)


def finish_linear(lay: QLayer, grids: dict[str, Grid], reach: dict[str, tuple[int, int]], weight_only: bool,
                  certificates: bool = True, bias_q: np.ndarray | None = None) -> None:
    """Everything derived from a linear layer's integer weights, effective scales and float bias:
    ``w_float``, the int32 bias at s_x·s_w, requant parameters and the overflow certificate.

    ``lay.w_q``, ``lay.w_scale``, ``lay.w_zero_point``, ``lay.b_float``, ``lay.requant`` and
    ``lay.accumulator`` must be set (compile does it; :func:`hwsim.ptq.replace_weights` after PTQ).
    ``bias_q``: integer biases as given (an imported model's, :mod:`hwsim.given`) instead of
    quantizing ``lay.b_float``; clipped to ``bias.bits`` and counted all the same.
    """
    prof = lay.profile
    w_q, eff_scale = lay.w_q, np.asarray(lay.w_scale, np.float64)
    cout = w_q.shape[0]
    shp = (-1,) + (1,) * (w_q.ndim - 1)
    zp = np.broadcast_to(np.asarray(lay.w_zero_point, np.int64), (cout,))
    b = np.asarray(lay.b_float, np.float64)
    lay.w_float = ((w_q - zp.reshape(shp)) * eff_scale.reshape(shp)).astype(np.float32)
    if weight_only:
        return
    gx = grids[lay.inputs[0]]
    gy = grids[lay.output]
    if prof.bias.form in ("float32",) + ONEDNN_FORMS:
        # PyTorch fbgemm: no integer bias in the accumulator; fl32(b / fl32(s_x*s_w)) joins fl32(acc)
        # before the multiply (ops.make_requant_params(bias=...)); oneDNN (PyTorch's x86 engine convolution):
        # the accumulator dequantized first, then the float bias (ops.make_onednn_requant_params)
        if prof.requant.mode != "float32":
            raise HwsimError(f"layer '{lay.name}': bias.form = {prof.bias.form!r} needs requant.mode = 'float32', "
                             f"not {prof.requant.mode!r}")
        if prof.bias.form != "float32" and (prof.requant.zero_point != "before" or prof.requant.rounding != "half_even"):
            raise HwsimError(f"layer '{lay.name}': bias.form = {prof.bias.form!r} needs requant.zero_point = 'before' and "
                             f"requant.rounding = 'half_even' (oneDNN's arithmetic), not {prof.requant.zero_point!r} / "
                             f"{prof.requant.rounding!r}")
        lay.bias_q = np.zeros(cout, np.int64)
        lay.requant_params = (ops.make_requant_params(gx.scale, eff_scale, gy.scale, lay.requant, bias=b)
                              if prof.bias.form == "float32" else
                              ops.make_onednn_requant_params(gx.scale, eff_scale, gy.scale, bias=b, form=prof.bias.form))
    else:
        s_bias = gx.scale * eff_scale
        bq = (fp.round_float(np.asarray(b, np.float64) / s_bias, prof.bias.rounding) if bias_q is None
              else np.asarray(bias_q, np.int64))
        blim = 2 ** (prof.bias.bits - 1)
        lay.bias_clipped = int(np.sum((bq < -blim) | (bq > blim - 1)))
        lay.bias_q = np.clip(bq, -blim, blim - 1).astype(np.int64)
        lay.requant_params = ops.make_requant_params(gx.scale, eff_scale, gy.scale, lay.requant)
    if not certificates:
        lay.certificate = None
        return
    # the input's reachable range: the producer's clamp (a fused ReLU narrows it)
    lo, hi = reach[lay.inputs[0]]
    lay.certificate = ops.get(lay.op).certificate(lay, w_q, lo, hi, gx.zero_point)
