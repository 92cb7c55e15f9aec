"""The ``.hwsim`` model file (format version 1): data classes, reader, writer, validation, builder.

A model file is a zip with two members (schema: ``docs/architecture.md``):

- ``graph.json``: ``{"format": "hwsim-model", "version": 1, "inputs": [...], "nodes": [...],
  "outputs": [...], "metadata": {...}}``;
- ``tensors.npz``: float32 arrays (one ``<name>.npy`` member each, the ``np.savez`` layout),
  read with ``allow_pickle=False``. Opening a model file never runs code. Tensors that no
  param names are allowed (and kept); a param naming a missing tensor is an error.

Version-1 restrictions beyond the schema table: exactly one graph input (C, H, W) and exactly
one graph output; pool padding must be smaller than the kernel on every side (every window
then holds at least one real value).

Every user-visible problem (missing, truncated or corrupt file, wrong version, unknown op,
bad attrs, inconsistent shapes, NaN weights, bad topological order, duplicate names) raises
:class:`~hwsim.errors.HwsimError` whose one-line message starts with the file path.

Resource limits (``docs/architecture.md``): the archive is read through :mod:`hwsim.safeio`
(member sizes, ``.npy`` headers, JSON numbers checked before anything is allocated); every
spatial size, kernel, stride, dilation and padding is at most :data:`MAX_SPATIAL`, channels at
most :data:`MAX_CHANNELS`, every per-sample tensor at most :data:`MAX_TENSOR_ELEMENTS` values,
and a convolution's padding at most its dilated kernel extent minus one on every side (every
window touches the input). Values: tensors float32 and finite, BatchNorm ``running_var >= 0``,
``eps`` and the input ``std`` positive in float32, the folded BatchNorm scale finite in float32.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwsim import safeio
from hwsim.errors import HwsimError
from hwsim.ops import registry as _op_registry

FORMAT = "hwsim-model"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
GRAPH_MEMBER = "graph.json"
TENSORS_MEMBER = "tensors.npz"

# The op schema lives in each op's module (hwsim/ops/<op>.py, registered in hwsim.ops.registry);
# these are read-only views of the registry, kept for the code that imports them.
# attr kinds: "pair" = 2 positive ints, "pad4" = 4 non-negative ints, "posint", "posfloat", "axis1", "bool"
# (OP_ATTRS: the required attrs; each spec's ``optional_attrs`` {key: (kind, default)} may be omitted)
OP_ATTRS: dict[str, dict[str, str]] = {s.name: dict(s.attrs) for s in _op_registry.specs()}
# params: (required roles, optional roles)
OP_PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    s.name: s.params for s in _op_registry.specs() if s.params != ((), ())}
# number of inputs: exact count, or None for "one or more" (concat)
OP_ARITY: dict[str, int | None] = {s.name: s.arity for s in _op_registry.specs()}
KNOWN_OPS = _op_registry.names()

# limits (docs/architecture.md "Limits"): nothing larger is accepted, so nothing larger is allocated
MAX_SPATIAL = 16384            # input H, W; every kernel, stride, dilation and padding value
MAX_CHANNELS = 65536           # input channels
MAX_TENSOR_ELEMENTS = 1 << 24  # values of one per-sample tensor (graph input and every node output)
FLOAT32_MAX = float(np.finfo(np.float32).max)


# ----------------------------------------------------------------------------- data classes
@dataclass
class InputSpec:
    """A graph input: per-sample shape (C, H, W) and per-channel normalisation (x - mean) / std."""

    name: str
    shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class Node:
    """One op. ``params`` maps a role ("weight", "bias", ...) to a name in ``Graph.tensors``."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class Graph:
    """A float model: one input, nodes in topological order, one output, float32 tensors."""

    inputs: list[InputSpec]
    nodes: list[Node]
    outputs: list[str]
    tensors: dict[str, np.ndarray]
    metadata: dict = field(default_factory=dict)

    def param(self, node: Node | str, role: str) -> np.ndarray | None:
        """The array a node uses for ``role`` ("weight", "bias", ...), or None if it has none."""
        n = self.node(node) if isinstance(node, str) else node
        key = n.params.get(role)
        return None if key is None else self.tensors[key]

    def node(self, name: str) -> Node:
        """The node called ``name`` (KeyError if there is none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def consumers(self, tensor_name: str) -> list[Node]:
        """Nodes that read ``tensor_name``, in graph order."""
        return [n for n in self.nodes if tensor_name in n.inputs]

    def producer(self, tensor_name: str) -> Node | None:
        """The node whose output is ``tensor_name`` (None for a graph input)."""
        for n in self.nodes:
            if tensor_name in n.outputs:
                return n
        return None

    def copy(self) -> "Graph":
        """A deep copy: arrays, attrs, params and metadata are all independent of ``self``."""
        return Graph(
            inputs=[InputSpec(i.name, tuple(i.shape), tuple(i.mean), tuple(i.std)) for i in self.inputs],
            nodes=[Node(n.name, n.op, list(n.inputs), list(n.outputs), copy.deepcopy(n.attrs), dict(n.params))
                   for n in self.nodes],
            outputs=list(self.outputs),
            tensors={k: np.array(v, copy=True) for k, v in self.tensors.items()},
            metadata=copy.deepcopy(self.metadata),
        )


# ----------------------------------------------------------------------------- validation
def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_)))


def _is_f32(v: Any) -> bool:
    """A number that float32 represents without overflow (finite, |v| <= float32 max)."""
    if not _is_num(v):
        return False
    try:
        return math.isfinite(float(v)) and abs(float(v)) <= FLOAT32_MAX
    except OverflowError:  # an int too large for a double
        return False


def _check_attr(kind: str, v: Any) -> str | None:
    """None if ``v`` is a valid value of attr kind ``kind``, else what is allowed."""
    if kind == "pair":
        ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(e) and 1 <= e <= MAX_SPATIAL for e in v)
        return None if ok else f"a list of 2 positive integers (each at most {MAX_SPATIAL})"
    if kind == "pad4":
        ok = isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_int(e) and 0 <= e <= MAX_SPATIAL for e in v)
        return None if ok else f"a list of 4 non-negative integers [top, bottom, left, right] (each at most {MAX_SPATIAL})"
    if kind == "posint":
        return None if _is_int(v) and 1 <= v <= MAX_CHANNELS else f"a positive integer (at most {MAX_CHANNELS})"
    if kind == "posfloat":
        return (None if _is_f32(v) and np.float32(v) > 0
                else "a positive finite number (in float32: above 0 and at most 3.4e38)")
    if kind == "bool":
        return None if isinstance(v, bool) else "true or false"
    if kind == "float":
        return None if _is_f32(v) and not isinstance(v, bool) else "a finite number (float32-representable)"
    if kind == "axis1":
        return None if _is_int(v) and v == 1 else "1 (the channel axis)"
    raise AssertionError(kind)


def _check(graph: Graph, where: str, strict: bool) -> dict[str, tuple[int, ...]]:
    """Walk the graph once: structure, attrs, params, shapes. ``strict`` adds the file-level checks
    (no unknown attrs, float32 finite tensors) that in-memory intermediate graphs may skip."""

    def fail(msg: str) -> None:
        raise HwsimError(f"{where}: {msg}")

    if not isinstance(graph.inputs, (list, tuple)) or len(graph.inputs) != 1:
        fail(f"the graph must have exactly 1 input, got {len(graph.inputs) if isinstance(graph.inputs, (list, tuple)) else graph.inputs!r}")
    shapes: dict[str, tuple[int, ...]] = {}
    for inp in graph.inputs:
        if not isinstance(inp.name, str) or not inp.name:
            fail(f"input name {inp.name!r}: must be a non-empty string")
        shp = tuple(inp.shape) if isinstance(inp.shape, (list, tuple)) else None
        if (shp is None or len(shp) != 3 or not all(_is_int(s) and s >= 1 for s in shp)
                or shp[0] > MAX_CHANNELS or max(shp[1:]) > MAX_SPATIAL):
            fail(f"input {inp.name!r}: shape {str(inp.shape)[:80]} must be 3 positive integers (C, H, W) with "
                 f"C <= {MAX_CHANNELS}, H and W <= {MAX_SPATIAL}")
        c = shp[0]
        if math.prod(shp) > MAX_TENSOR_ELEMENTS:
            fail(f"input {inp.name!r}: shape {shp} has {math.prod(shp)} values per sample (allowed at most {MAX_TENSOR_ELEMENTS})")
        for key, vals in (("mean", inp.mean), ("std", inp.std)):
            if (not isinstance(vals, (list, tuple)) or len(vals) != c
                    or not all(_is_f32(v) for v in vals)):
                fail(f"input {inp.name!r}: {key} {str(vals)[:80]} must be {c} finite number(s) (float32-representable), one per channel")
        if not all(np.float32(s) > 0 for s in inp.std):
            fail(f"input {inp.name!r}: std {tuple(inp.std)!r} must be positive (in float32)")
        shapes[inp.name] = tuple(int(s) for s in shp)

    if strict:
        for key, arr in graph.tensors.items():
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                fail(f"tensor {key!r}: dtype {getattr(arr, 'dtype', type(arr).__name__)} (tensors must be float32)")
            if not np.isfinite(arr).all():
                fail(f"tensor {key!r}: contains NaN or Inf ({int((~np.isfinite(arr)).sum())} of {arr.size} values)")

    names: set[str] = set()
    for n in graph.nodes:
        if not isinstance(n.name, str) or not n.name:
            fail(f"node name {n.name!r}: must be a non-empty string")
        tag = f"node {n.name!r} ({n.op})"
        if n.name in names:
            fail(f"duplicate node name {n.name!r}")
        names.add(n.name)
        if not isinstance(n.op, str) or n.op not in _op_registry.names():
            fail(f"node {n.name!r}: unknown op {n.op!r} (known ops: {', '.join(_op_registry.names())})")
        op = _op_registry.get(n.op)
        # inputs: count and topological order
        if not isinstance(n.inputs, (list, tuple)) or not all(isinstance(i, str) for i in n.inputs):
            fail(f"{tag}: inputs {n.inputs!r} must be a list of tensor names")
        arity = op.arity
        if arity is None and len(n.inputs) < 1:
            fail(f"{tag}: needs at least 1 input, got 0")
        if arity is not None and len(n.inputs) != arity:
            fail(f"{tag}: needs exactly {arity} input(s), got {len(n.inputs)}")
        for i in n.inputs:
            if i not in shapes:
                fail(f"{tag}: input {i!r} is not a graph input or an earlier node's output "
                     "(nodes must be in topological order)")
        if (not isinstance(n.outputs, (list, tuple)) or len(n.outputs) != 1
                or not isinstance(n.outputs[0], str) or not n.outputs[0]):
            fail(f"{tag}: outputs {n.outputs!r} must be exactly one tensor name")
        out = n.outputs[0]
        if out in shapes:
            fail(f"{tag}: duplicate tensor name {out!r} (already defined earlier)")
        # attrs
        if not isinstance(n.attrs, dict):
            fail(f"{tag}: attrs must be an object, got {n.attrs!r}")
        spec = op.attrs
        for key, kind in spec.items():
            if key not in n.attrs:
                fail(f"{tag}: missing attr {key!r} (required: {', '.join(spec)})")
            bad = _check_attr(kind, n.attrs[key])
            if bad:
                fail(f"{tag}: attr {key!r} = {n.attrs[key]!r} must be {bad}")
        for key, (kind, _default) in op.optional_attrs.items():
            bad = _check_attr(kind, n.attrs[key]) if key in n.attrs else None
            if bad:
                fail(f"{tag}: attr {key!r} = {n.attrs[key]!r} must be {bad}")
        if strict:
            allowed = list(spec) + list(op.optional_attrs)
            extra = sorted(set(n.attrs) - set(allowed))
            if extra:
                fail(f"{tag}: unknown attr {extra[0]!r} (allowed: {', '.join(allowed) or 'none'})")
        # params
        if not isinstance(n.params, dict):
            fail(f"{tag}: params must be an object, got {n.params!r}")
        req, opt = op.params
        allowed = req + opt
        for role in n.params:
            if role not in allowed:
                fail(f"{tag}: unknown param {role!r} (allowed: {', '.join(allowed) or 'none'})")
        for role in req:
            if role not in n.params:
                fail(f"{tag}: missing param {role!r} (required: {', '.join(req)})")
        p: dict[str, tuple[int, ...]] = {}
        for role, key in n.params.items():
            if not isinstance(key, str) or key not in graph.tensors:
                fail(f"{tag}: param {role!r} names tensor {key!r}, which is not in {TENSORS_MEMBER}")
            p[role] = tuple(np.shape(graph.tensors[key]))
            if math.prod(p[role]) == 0:
                fail(f"{tag}: param {role!r} (tensor {key!r}) has shape {p[role]} with no values (zero-size)")
        shapes[out] = tuple(op.infer_shape(n, [shapes[i] for i in n.inputs], p, fail, tag))
        if math.prod(shapes[out]) > MAX_TENSOR_ELEMENTS:
            fail(f"{tag}: output shape {shapes[out]} has {math.prod(shapes[out])} values per sample "
                 f"(allowed at most {MAX_TENSOR_ELEMENTS})")
        if strict:
            op.check_strict(n, graph, fail, tag)

    if (not isinstance(graph.outputs, (list, tuple)) or len(graph.outputs) != 1
            or not isinstance(graph.outputs[0], str)):
        fail(f"outputs {graph.outputs!r}: the graph must have exactly 1 output tensor name")
    if graph.outputs[0] not in shapes:
        fail(f"output {graph.outputs[0]!r} is not a graph input or a node output")
    if not isinstance(graph.metadata, dict):
        fail(f"metadata must be an object, got {type(graph.metadata).__name__}")
    return shapes


def validate(graph: Graph, where: str = "graph") -> None:
    """All structural and shape checks of the file format; HwsimError('<where>: ...') on the first problem."""
    _check(graph, where, strict=True)


def infer_shapes(graph: Graph, where: str = "graph") -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every tensor (graph input and node outputs); HwsimError if shapes disagree.

    Unlike :func:`validate` it tolerates extra node attrs (e.g. compile's fused ``activation``)."""
    return _check(graph, where, strict=False)


# ----------------------------------------------------------------------------- writer
def _json_default(v: Any):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def graph_to_json(graph: Graph) -> dict:
    """The ``graph.json`` document of a graph (plain JSON types)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "inputs": [{"name": i.name, "shape": [int(s) for s in i.shape], "mean": [float(m) for m in i.mean],
                    "std": [float(s) for s in i.std]} for i in graph.inputs],
        "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs),
                   "attrs": dict(n.attrs), "params": dict(n.params)} for n in graph.nodes],
        "outputs": list(graph.outputs),
        "metadata": graph.metadata,
    }


def save_model(graph: Graph, path: str | os.PathLike) -> None:
    """Validate ``graph`` and write it atomically to ``path`` (temp file in the same directory + os.replace)."""
    from hwsim import given as _given

    path = Path(path)
    validate(graph, where=str(path))
    given = _given.given_of(graph)  # an imported model's own quantization: two more members (hwsim.given)
    try:
        js = graph_to_json(graph)
        js["metadata"] = {k: v for k, v in js["metadata"].items() if not (k == "given" and given is not None)}
        doc = json.dumps(js, indent=1, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise HwsimError(f"{path}: metadata/attrs are not JSON serialisable ({e})") from None
    # tensors.npz: the np.savez layout (one '<name>.npy' per tensor), written member by member so a
    # tensor may be called anything (np.savez(**kw) would clash on names like 'file')
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_STORED) as zn:
        for key, arr in graph.tensors.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
            zn.writestr(key + ".npy", buf.getvalue())

    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(GRAPH_MEMBER, doc, compress_type=zipfile.ZIP_DEFLATED)
            zf.writestr(TENSORS_MEMBER, npz.getvalue(), compress_type=zipfile.ZIP_STORED)
            for name, data in (_given.to_members(given) if given is not None else {}).items():
                zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)

    safeio.atomic_write(path, write)


# ----------------------------------------------------------------------------- reader
def _as_list(v: Any, fail, what: str) -> list:
    if not isinstance(v, list):
        fail(f"{what} must be a list, got {type(v).__name__}")
    return v


def _check_header(doc: Any, fail) -> None:
    """graph.json must be an object with the right ``format`` and a supported ``version``."""
    if not isinstance(doc, dict):
        fail(f"{GRAPH_MEMBER} must hold a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        fail(f"{GRAPH_MEMBER}: format {doc.get('format')!r} is not {FORMAT!r} (not an hwsim model file)")
    ver = doc.get("version")
    if not _is_int(ver) or ver not in SUPPORTED_VERSIONS:
        fail(f"unsupported model file version {ver!r} (this hwsim reads version(s) "
             f"{', '.join(map(str, SUPPORTED_VERSIONS))})")


def _graph_from_json(doc: Any, tensors: dict[str, np.ndarray], fail) -> Graph:
    _check_header(doc, fail)
    allowed = ("format", "version", "inputs", "nodes", "outputs", "metadata")
    for k in doc:
        if k not in allowed:
            fail(f"{GRAPH_MEMBER}: unknown key {k!r} (allowed: {', '.join(allowed)})")
    for k in ("inputs", "nodes", "outputs"):
        if k not in doc:
            fail(f"{GRAPH_MEMBER}: missing key {k!r}")
    inputs = []
    for i, d in enumerate(_as_list(doc["inputs"], fail, "inputs")):
        if not isinstance(d, dict) or set(d) != {"name", "shape", "mean", "std"}:
            fail(f"inputs[{i}] must be an object with keys name, shape, mean, std, got {d!r}")
        for k in ("shape", "mean", "std"):
            _as_list(d[k], fail, f"inputs[{i}].{k}")
        inputs.append(InputSpec(d["name"], tuple(d["shape"]), tuple(d["mean"]), tuple(d["std"])))
    nodes = []
    node_keys = {"name", "op", "inputs", "outputs", "attrs", "params"}
    for i, d in enumerate(_as_list(doc["nodes"], fail, "nodes")):
        if not isinstance(d, dict):
            fail(f"nodes[{i}] must be an object, got {d!r}")
        extra = sorted(set(d) - node_keys)
        missing = sorted({"name", "op", "inputs", "outputs"} - set(d))
        if extra or missing:
            fail(f"nodes[{i}] ({d.get('name')!r}): " + (f"unknown key {extra[0]!r}" if extra else f"missing key {missing[0]!r}")
                 + f" (keys: {', '.join(sorted(node_keys))})")
        nodes.append(Node(d["name"], d["op"], d["inputs"], d["outputs"], d.get("attrs", {}), d.get("params", {})))
    meta = doc.get("metadata", {})
    return Graph(inputs=inputs, nodes=nodes, outputs=_as_list(doc["outputs"], fail, "outputs"),
                 tensors=tensors, metadata=meta)


def load_model(path: str | os.PathLike) -> Graph:
    """Read and validate a ``.hwsim`` file; any problem is a one-line HwsimError starting with the path."""
    p = Path(path)

    def fail(msg: str) -> None:
        raise HwsimError(f"{p}: {msg}")

    p = safeio.check_input_file(p, str(p), "model file")
    with safeio.open_zip(p, str(p), ".hwsim model file") as zf:
        names = zf.namelist()
        for member in (GRAPH_MEMBER, TENSORS_MEMBER):
            if member not in names:
                fail(f"missing member {member!r} (a .hwsim file holds {GRAPH_MEMBER} and {TENSORS_MEMBER})")
        doc = safeio.load_json(safeio.read_member(zf, GRAPH_MEMBER, str(p), safeio.MAX_JSON_BYTES),
                               f"{p}: {GRAPH_MEMBER} is")
        _check_header(doc, fail)  # a wrong version is reported before anything else
        raw_tensors = safeio.read_member(zf, TENSORS_MEMBER, str(p))
        from hwsim import given as _given

        has_given = [m for m in (_given.GIVEN_JSON, _given.GIVEN_NPZ) if m in names]
        if len(has_given) == 1:
            fail(f"member {has_given[0]!r} without its pair (a given quantization is {_given.GIVEN_JSON} "
                 f"and {_given.GIVEN_NPZ})")
        if has_given:
            given_doc = safeio.load_json(safeio.read_member(zf, _given.GIVEN_JSON, str(p), safeio.MAX_JSON_BYTES),
                                         f"{p}: {_given.GIVEN_JSON} is")
            raw_given = safeio.read_member(zf, _given.GIVEN_NPZ, str(p))
    tensors = safeio.read_npz(raw_tensors, f"{p}: {TENSORS_MEMBER}", kinds="f")
    graph = _graph_from_json(doc, tensors, fail)
    try:
        validate(graph, where=str(p))
        if has_given:  # an imported model's own quantization (hwsim.given), checked against the graph
            arrays = safeio.read_npz(raw_given, f"{p}: {_given.GIVEN_NPZ}", kinds="iuf")
            graph.metadata["given"] = _given.from_members(given_doc, arrays, graph, str(p))
    except HwsimError:
        raise
    except (TypeError, AttributeError) as e:  # wrong JSON types deep inside (e.g. a dict as a name)
        fail(f"{GRAPH_MEMBER}: malformed entry ({type(e).__name__}: {e})")
    return graph


# ----------------------------------------------------------------------------- builder
def _pair(v: int | Sequence[int], what: str) -> list[int]:
    if _is_int(v):
        return [int(v), int(v)]
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(e) for e in v):
        return [int(e) for e in v]
    raise HwsimError(f"GraphBuilder: {what} {v!r} must be an int or a pair of ints")


def _pad4(v: int | Sequence[int], what: str) -> list[int]:
    """int p -> [p]*4; (ph, pw) -> [ph, ph, pw, pw]; (top, bottom, left, right) as given."""
    if _is_int(v):
        return [int(v)] * 4
    if isinstance(v, (list, tuple)) and all(_is_int(e) for e in v):
        if len(v) == 2:
            return [int(v[0]), int(v[0]), int(v[1]), int(v[1])]
        if len(v) == 4:
            return [int(e) for e in v]
    raise HwsimError(f"GraphBuilder: {what} {v!r} must be an int, (ph, pw) or (top, bottom, left, right)")


class GraphBuilder:
    """Build a float :class:`Graph` without torch. Each method returns its output tensor name (= node name).

    Weights are copied as float32 and stored under ``"<node>.<role>"``; :meth:`build` validates.
    """

    def __init__(self, input_shape: Sequence[int], mean: float | Sequence[float] = 0.0,
                 std: float | Sequence[float] = 1.0, input_name: str = "input"):
        shape = tuple(int(s) for s in input_shape)
        c = shape[0] if shape else 0
        mean_t = (float(mean),) * c if _is_num(mean) else tuple(float(m) for m in mean)
        std_t = (float(std),) * c if _is_num(std) else tuple(float(s) for s in std)
        self.inputs = [InputSpec(input_name, shape, mean_t, std_t)]
        self.nodes: list[Node] = []
        self.tensors: dict[str, np.ndarray] = {}

    def _add(self, name: str, op: str, inputs: list[str], attrs: dict | None = None, **params) -> str:
        node_params = {}
        for role, arr in params.items():
            if arr is None:
                continue
            key = f"{name}.{role}"
            self.tensors[key] = np.array(arr, dtype=np.float32, copy=True)
            node_params[role] = key
        self.nodes.append(Node(name, op, list(inputs), [name], dict(attrs or {}), node_params))
        return name

    def conv2d(self, name: str, x: str, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> str:
        attrs = {"stride": _pair(stride, f"{name}: stride"), "padding": _pad4(padding, f"{name}: padding"),
                 "dilation": _pair(dilation, f"{name}: dilation"), "groups": groups}
        return self._add(name, "conv2d", [x], attrs, weight=weight, bias=bias)

    def linear(self, name: str, x: str, weight, bias=None) -> str:
        return self._add(name, "linear", [x], {}, weight=weight, bias=bias)

    def batchnorm(self, name: str, x: str, gamma, beta, running_mean, running_var, eps: float = 1e-5) -> str:
        return self._add(name, "batchnorm", [x], {"eps": eps}, weight=gamma, bias=beta,
                         running_mean=running_mean, running_var=running_var)

    def relu(self, name: str, x: str) -> str:
        return self._add(name, "relu", [x])

    def relu6(self, name: str, x: str) -> str:
        return self._add(name, "relu6", [x])

    def _pool(self, op: str, name: str, x: str, kernel, stride, padding) -> str:
        k = _pair(kernel, f"{name}: kernel")
        s = k if stride is None else _pair(stride, f"{name}: stride")
        return self._add(name, op, [x], {"kernel": k, "stride": list(s), "padding": _pad4(padding, f"{name}: padding")})

    def maxpool2d(self, name: str, x: str, kernel, stride=None, padding=0) -> str:
        return self._pool("maxpool2d", name, x, kernel, stride, padding)

    def avgpool2d(self, name: str, x: str, kernel, stride=None, padding=0, count_include_pad: bool = True) -> str:
        y = self._pool("avgpool2d", name, x, kernel, stride, padding)
        if not count_include_pad:  # the attr only when it differs from the default (files stay as they were)
            self.nodes[-1].attrs["count_include_pad"] = False
        return y

    def global_avgpool(self, name: str, x: str) -> str:
        return self._add(name, "global_avgpool", [x])

    def add(self, name: str, a: str, b: str) -> str:
        return self._add(name, "add", [a, b])

    def concat(self, name: str, xs: Sequence[str], axis: int = 1) -> str:
        return self._add(name, "concat", list(xs), {"axis": axis})

    def flatten(self, name: str, x: str) -> str:
        return self._add(name, "flatten", [x])

    def build(self, outputs: Sequence[str] | None = None, metadata: dict | None = None) -> Graph:
        """The validated graph; ``outputs`` defaults to the last node's output."""
        if outputs is None:
            if not self.nodes:
                raise HwsimError("GraphBuilder: no nodes were added")
            outputs = [self.nodes[-1].outputs[0]]
        g = Graph(inputs=[InputSpec(i.name, i.shape, i.mean, i.std) for i in self.inputs],
                  nodes=[Node(n.name, n.op, list(n.inputs), list(n.outputs), copy.deepcopy(n.attrs), dict(n.params))
                         for n in self.nodes],
                  outputs=list(outputs), tensors=dict(self.tensors), metadata=dict(metadata or {}))
        validate(g, where="GraphBuilder")
        return g
