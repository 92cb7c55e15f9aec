"""Float ONNX models (opset 13 and later) -> a float hwsim :class:`~hwsim.graph.Graph`.

Needs the optional ``onnx`` package (``pip install 'hwsim[onnx]'``); nothing else. Steps:

1. read the file through :func:`hwsim.safeio.read_bytes` (at most :data:`MAX_ONNX_BYTES`), parse the
   ``ModelProto`` in memory, run ``onnx.checker``; tensors stored as external data are refused;
2. fix the batch dimension to 1 (and a dynamic C, H, W to ``input_shape``) and run ONNX shape
   inference (``onnx.shape_inference.infer_shapes``, strict, with data propagation);
3. fold every node whose inputs are all constants (initializers, ``Constant``, ``Shape`` of a
   statically shaped tensor) with the ONNX reference evaluator (``onnx.reference``): the
   ``Shape -> Gather -> Concat -> Reshape`` chains exporters write become constants;
4. map the remaining nodes one by one (:data:`OPS`) to hwsim ops; ``Identity`` / ``Dropout``
   vanish, an ``Add`` of a constant per-channel vector after a ``Conv`` / ``Gemm`` / ``MatMul``
   becomes its bias, ``x * Sigmoid(x)`` becomes ``silu`` and ``x * HardSigmoid(x)`` with
   alpha = 1/6, beta = 1/2 (torch's opset-13 export of Hardswish) becomes ``hardswish``.

The op table, the attribute rules and what is refused are in docs/import.md. Every problem is a
one-line :class:`~hwsim.errors.HwsimError` naming the file, the node and its op type.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from hwsim import safeio
from hwsim.errors import HwsimError
from hwsim.graph import Graph, InputSpec, Node, validate
from hwsim.importers import normalisation, parse_shape

MIN_OPSET = 13
MAX_ONNX_BYTES = safeio.MAX_MEMBER_BYTES  # 1 GiB: the largest file read (protobuf itself stops at 2 GiB)
MAX_FOLD_ELEMENTS = 1 << 24  # values of one constant computed while folding (checked before it is computed)
ONNX_MISSING = "importing ONNX models needs the onnx package: pip install 'hwsim[onnx]'"


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
        import onnx.reference  # noqa: F401
        import onnx.shape_inference  # noqa: F401
    except ImportError:
        raise HwsimError(ONNX_MISSING) from None
    return onnx


# ----------------------------------------------------------------------------- reading
def read_onnx(path: str | os.PathLike):
    """The checked ``ModelProto`` of an ONNX file (opset >= 13, one graph, no external data)."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    where = str(path)
    raw = safeio.read_bytes(path, where, MAX_ONNX_BYTES, "ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise HwsimError(f"{where}: not a valid ONNX model (truncated or corrupt protobuf: {_line(e)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise HwsimError(f"{where}: not a valid ONNX model (no graph, or a graph without nodes; truncated?)")
    for t in _all_tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise HwsimError(f"{where}: tensor {t.name!r} is stored as external data (a separate file); hwsim reads "
                             "self-contained ONNX files only (onnx.load(...) then onnx.save(model, path) without "
                             "save_as_external_data)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx.checker.ValidationError and the C++ errors behind it
        raise HwsimError(f"{where}: not a valid ONNX model ({_line(e)})") from None
    opset = _opset(model)
    if opset < MIN_OPSET:
        raise HwsimError(f"{where}: ONNX opset {opset} (hwsim imports opset {MIN_OPSET} and later; convert with "
                         f"onnx.version_converter.convert_version(model, {MIN_OPSET}))")
    return model


def _line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(e).__name__)


def _all_tensors(graph):
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors


def _f32(v) -> float:
    """An ONNX float attribute (float32) as the shortest decimal that is the same float32: 1e-05, not 9.99999974e-06."""
    return float(str(np.float32(v)))


def tensor_array(t, where: str) -> np.ndarray:
    """An ONNX TensorProto as a numpy array; dims that disagree with the data are one line."""
    from onnx import numpy_helper

    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 - ValueError/TypeError/KeyError from a malformed tensor
        raise HwsimError(f"{where}: tensor {t.name!r} (dims {list(t.dims)[:8]}): unreadable ({_line(e)})") from None


def _opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


# ----------------------------------------------------------------------------- the importer
def import_onnx(path: str | os.PathLike, mean=None, std=None, input_shape=None) -> Graph:
    """Read ``path`` and return its validated float Graph (see the module docstring).

    ``mean`` / ``std``: the input normalisation (one value or one per channel; default 0 / 1);
    ``input_shape``: (C, H, W), required where the model's input shape is not fixed."""
    model = read_onnx(path)
    g = onnx_to_graph(model, mean, std, input_shape, where=str(path))
    g.metadata["onnx_file"] = Path(path).name
    validate(g, where=f"{path} (imported)")
    return g


def onnx_to_graph(model, mean=None, std=None, input_shape=None, where: str = "onnx") -> Graph:
    """The float Graph of a checked ``ModelProto``, *not yet validated* (ops that this hwsim's graph
    schema does not know yet are kept by their hwsim names; :func:`import_onnx` validates)."""
    return _Importer(model, where).run(mean, std, input_shape)


_QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd",
                  "ConvInteger", "MatMulInteger")
# folded when every input is a constant, never mapped (their results are constants)
_ALLOC_OPS = ("ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Pad", "Upsample")
_HARDSWISH_ALPHA = float(np.float32(1 / 6))  # ONNX HardSwish = x * HardSigmoid(x, alpha=1/6, beta=0.5)


class _Importer:
    def __init__(self, model, where: str):
        self.onnx = _onnx()
        self.model = model
        self.where = where
        self.opset = _opset(model)
        self.const: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}  # ONNX tensor name -> hwsim tensor name
        self.nodes: list[Node] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple] = {}  # ONNX tensor name -> inferred shape (batch fixed to 1)
        self.names: set[str] = set()
        g = model.graph
        self.outputs = [o.name for o in g.output]
        self.uses: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.uses[i] = self.uses.get(i, 0) + 1
        for o in self.outputs:
            self.uses[o] = self.uses.get(o, 0) + 1

    # -------------------------------------------------------------- errors
    def fail(self, msg: str):
        raise HwsimError(f"{self.where}: {msg}")

    def node_fail(self, node, why: str):
        raise HwsimError(f"{self.where}: node {node.name or '(unnamed)'!r} (op {self._optype(node)}): {why}")

    @staticmethod
    def _optype(node) -> str:
        return f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type

    # -------------------------------------------------------------- input and shapes
    def _input(self, input_shape):
        g = self.model.graph
        inits = {t.name for t in g.initializer}
        real = [i for i in g.input if i.name not in inits]
        if len(real) != 1:
            self.fail(f"{len(real)} graph inputs ({', '.join(i.name for i in real)}); hwsim models take exactly one "
                      "input image tensor (N, C, H, W)")
        inp = real[0]
        tt = inp.type.tensor_type
        if not inp.type.HasField("tensor_type") or tt.elem_type != self.onnx.TensorProto.FLOAT:
            names = dict(self.onnx.TensorProto.DataType.items())
            kind = next((k for k, v in names.items() if v == tt.elem_type), f"unknown ({tt.elem_type})")
            self.fail(f"input {inp.name!r}: element type {kind} "
                      "(hwsim imports float models: a float32 input; for int8 models see docs/import.md)")
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        if not tt.HasField("shape") or len(dims) != 4:
            self.fail(f"input {inp.name!r}: shape {dims if tt.HasField('shape') else 'unknown'} "
                      "(hwsim models take images (N, C, H, W): a rank-4 input)")
        fixed = all(isinstance(d, int) and d > 0 for d in dims[1:])
        given = parse_shape(input_shape)
        if given is None and not fixed:
            self.fail(f"input {inp.name!r} has a dynamic shape {dims}: give the per-sample shape with "
                      "--input-shape C,H,W (hwsim import --input-shape C,H,W)")
        if given is not None:
            for d, v, axis in zip(dims[1:], given, "CHW"):
                if isinstance(d, int) and d > 0 and d != v:
                    self.fail(f"--input-shape {','.join(map(str, given))}: input {inp.name!r} has the fixed shape "
                              f"{dims} ({axis} = {d}, not {v})")
        chw = tuple(given) if given is not None else tuple(int(d) for d in dims[1:])
        return inp.name, chw, dims[0]

    def _infer(self, in_name: str, chw: tuple) -> None:
        """ONNX shape inference on a copy with the input fixed to (1, C, H, W)."""
        onnx = self.onnx
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        for i in m.graph.input:
            if i.name == in_name:
                dims = i.type.tensor_type.shape.dim
                for d, v in zip(dims, (1,) + chw):
                    d.Clear()
                    d.dim_value = v
        try:
            m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
        except Exception as e:  # noqa: BLE001 - InferenceError and friends: the model is inconsistent
            self.fail(f"ONNX shape inference failed with input shape (1, {', '.join(map(str, chw))}): {_line(e)}")
        for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
            t = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and t.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)

    def shape(self, name: str, node=None) -> tuple:
        s = self.shapes.get(name)
        if s is None or any(d is None for d in s):
            if node is not None:
                self.node_fail(node, f"the shape of {name!r} is not static after shape inference")
            return None
        return s

    # -------------------------------------------------------------- constants
    def _constants(self) -> None:
        for t in self.model.graph.initializer:
            self.const[t.name] = tensor_array(t, self.where)

    def _try_fold(self, node) -> bool:
        """Fold ``node`` into constants when all its inputs are constants; True if folded."""
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            return False
        if op == "Shape":
            s = self.shapes.get(node.input[0])
            if s is None or any(d is None for d in s):
                return False
            a = self.attrs(node)
            start, end = a.get("start", 0), a.get("end", len(s))
            self.const[node.output[0]] = np.array(s[slice(start, end)], dtype=np.int64)
            return True
        if op == "Size":
            s = self.shapes.get(node.input[0])
            if s is None or any(d is None for d in s):
                return False
            self.const[node.output[0]] = np.array(math.prod(s), dtype=np.int64)
            return True
        ins = [i for i in node.input if i]
        if op != "Constant" and (not ins or not all(i in self.const for i in ins)):
            return False
        for o in node.output:
            s = self.shapes.get(o)
            known = s is not None and all(d is not None for d in s)
            if (known and math.prod(s) > MAX_FOLD_ELEMENTS) or (not known and op in _ALLOC_OPS):
                self.node_fail(node, f"computes a constant of shape {s} (allowed at most {MAX_FOLD_ELEMENTS} values, "
                                     "with a shape known before it is computed)")
        from onnx.reference import ReferenceEvaluator

        try:
            ev = ReferenceEvaluator(node, opsets={imp.domain or "": imp.version for imp in self.model.opset_import})
            outs = ev.run(None, {i: self.const[i] for i in ins})
        except Exception as e:  # noqa: BLE001 - a constant the reference evaluator cannot compute
            self.node_fail(node, f"cannot fold its constant inputs ({_line(e)})")
        for name, val in zip(node.output, outs):
            if name:
                self.const[name] = np.asarray(val)
        return True

    def need_const(self, node, idx: int, what: str, optional: bool = False) -> np.ndarray | None:
        if idx >= len(node.input) or not node.input[idx]:
            if optional:
                return None
            self.node_fail(node, f"missing input {idx} ({what})")
        name = node.input[idx]
        if name not in self.const:
            self.node_fail(node, f"{what} {name!r} is not a constant (hwsim imports weights stored in the model: "
                                 "initializers or constant subgraphs)")
        return self.const[name]

    def tensor(self, node, idx: int) -> str:
        """The hwsim tensor that input ``idx`` of ``node`` names (not a constant)."""
        name = node.input[idx] if idx < len(node.input) else ""
        if name in self.const:
            self.node_fail(node, f"input {idx} ({name!r}) is a constant; hwsim's {node.op_type} takes a tensor there")
        if name not in self.alias:
            self.node_fail(node, f"input {idx} ({name!r}) is not produced by a supported node")
        return self.alias[name]

    def attrs(self, node) -> dict:
        out = {}
        for a in node.attribute:
            v = self.onnx.helper.get_attribute_value(a)
            out[a.name] = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        return out

    # -------------------------------------------------------------- emitting
    def _unique(self, node) -> str:
        base = node.name or f"{node.op_type}_{len(self.nodes)}"
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def emit(self, node, op: str, inputs: list[str], attrs: dict | None = None, **params) -> Node:
        name = self._unique(node)
        p = {}
        for role, arr in params.items():
            if arr is None:
                continue
            key = f"{name}.{role}"
            self.tensors[key] = np.ascontiguousarray(arr, dtype=np.float32)
            p[role] = key
        n = Node(name, op, list(inputs), [name], dict(attrs or {}), p)
        self.nodes.append(n)
        self.alias[node.output[0]] = name
        for extra in node.output[1:]:
            if extra and self.uses.get(extra):
                self.node_fail(node, f"its output {extra!r} is used (hwsim keeps only the first output)")
        return n

    def producer(self, hwsim_name: str) -> Node | None:
        for n in self.nodes:
            if n.outputs[0] == hwsim_name:
                return n
        return None

    # -------------------------------------------------------------- attributes shared by conv and pools
    def _pads(self, node, a: dict, kernel, strides, dilations) -> list[int]:
        """[top, bottom, left, right] from ONNX ``pads`` [h_begin, w_begin, h_end, w_end] or ``auto_pad``."""
        auto = a.get("auto_pad", "NOTSET")
        if auto == "NOTSET":
            p = list(a.get("pads", [0, 0, 0, 0]))
            if len(p) != 4 or min(p) < 0:
                self.node_fail(node, f"pads {p} (4 non-negative values for a 2-D op)")
            return [int(p[0]), int(p[2]), int(p[1]), int(p[3])]
        if auto == "VALID":
            return [0, 0, 0, 0]
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            self.node_fail(node, f"auto_pad {auto!r} (allowed: NOTSET, VALID, SAME_UPPER, SAME_LOWER)")
        s = self.shape(node.input[0], node)
        out = []
        for size, k, st, d in zip(s[2:], kernel, strides, dilations):
            # ONNX Conv/Pool auto_pad: output = ceil(in / stride); the total padding reaching it,
            # the odd one at the end (SAME_UPPER) or at the beginning (SAME_LOWER)
            total = max(0, (-(-size // st) - 1) * st + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return [out[0][0], out[0][1], out[1][0], out[1][1]]

    def _pair(self, node, a: dict, key: str, default) -> list[int]:
        v = list(a.get(key, default))
        if len(v) != 2:
            self.node_fail(node, f"{key} {v} (hwsim imports 2-D convolutions and pools: 2 values)")
        return [int(e) for e in v]

    # -------------------------------------------------------------- ops
    def op_Conv(self, node):
        x = self.tensor(node, 0)
        w = self.need_const(node, 1, "weight")
        b = self.need_const(node, 2, "bias", optional=True)
        if w.ndim != 4:
            self.node_fail(node, f"weight of shape {list(w.shape)} (hwsim imports 2-D convolutions: rank-4 weights)")
        a = self.attrs(node)
        k = self._pair(node, a, "kernel_shape", w.shape[2:])
        if k != list(w.shape[2:]):
            self.node_fail(node, f"kernel_shape {k} does not match the weight's {list(w.shape[2:])}")
        st = self._pair(node, a, "strides", [1, 1])
        d = self._pair(node, a, "dilations", [1, 1])
        pads = self._pads(node, a, k, st, d)
        return self.emit(node, "conv2d", [x], {"stride": st, "padding": pads, "dilation": d,
                                               "groups": int(a.get("group", 1))}, weight=w, bias=b)

    def op_Gemm(self, node):
        a = self.attrs(node)
        if a.get("transA", 0):
            self.node_fail(node, "transA = 1 (hwsim's linear takes the input as given: transA = 0)")
        x = self.tensor(node, 0)
        bmat = self.need_const(node, 1, "weight B")
        c = self.need_const(node, 2, "bias C", optional=True)
        if bmat.ndim != 2:
            self.node_fail(node, f"weight B of shape {list(bmat.shape)} (2-D)")
        w = bmat if a.get("transB", 0) else bmat.T  # hwsim linear: weight [out, in]
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        w = w * np.float32(alpha) if alpha != 1.0 else w
        bias = None
        if c is not None:
            bias = self._bias_vector(node, c, w.shape[0], "C") * np.float32(beta)
        return self.emit(node, "linear", [x], {}, weight=w, bias=bias)

    def _bias_vector(self, node, c: np.ndarray, n: int, what: str) -> np.ndarray:
        """A constant that broadcasts as one value per output feature/channel, as a vector of ``n``."""
        if c.size == 1:
            return np.full(n, c.reshape(()), dtype=np.float32)
        if c.size == n and c.shape[-1] == n and all(s == 1 for s in c.shape[:-1]):
            return c.reshape(n).astype(np.float32)
        self.node_fail(node, f"{what} of shape {list(c.shape)} (a bias: one value, or one per output ({n}))")

    def op_MatMul(self, node):
        if node.input[0] in self.const:
            self.node_fail(node, "a constant first operand (hwsim imports x @ W with a constant W)")
        x = self.tensor(node, 0)
        w = self.need_const(node, 1, "weight")
        if w.ndim != 2:
            self.node_fail(node, f"weight of shape {list(w.shape)} (hwsim imports x @ W with a 2-D W)")
        return self.emit(node, "linear", [x], {}, weight=w.T)

    def op_BatchNormalization(self, node):
        a = self.attrs(node)
        if a.get("training_mode", 0):
            self.node_fail(node, "training_mode = 1 (hwsim imports inference graphs: running statistics)")
        x = self.tensor(node, 0)
        gamma, beta, mu, var = (self.need_const(node, i, w) for i, w in
                                ((1, "scale"), (2, "bias B"), (3, "input_mean"), (4, "input_var")))
        return self.emit(node, "batchnorm", [x], {"eps": _f32(a.get("epsilon", 1e-5))}, weight=gamma, bias=beta,
                         running_mean=mu, running_var=var)

    def op_Relu(self, node):
        return self.emit(node, "relu", [self.tensor(node, 0)])

    def op_Clip(self, node):
        lo = self.need_const(node, 1, "min", optional=True)
        hi = self.need_const(node, 2, "max", optional=True)
        lo_v = None if lo is None else float(lo.reshape(-1)[0]) if lo.size == 1 else None
        hi_v = None if hi is None else float(hi.reshape(-1)[0]) if hi.size == 1 else None
        if lo_v == 0.0 and (hi is None or hi_v == math.inf):
            return self.emit(node, "relu", [self.tensor(node, 0)])
        if lo_v == 0.0 and hi_v == 6.0:
            return self.emit(node, "relu6", [self.tensor(node, 0)])
        self.node_fail(node, f"Clip(min={lo_v if lo is not None else '-inf'}, max={hi_v if hi is not None else 'inf'}) "
                             "(hwsim has relu = Clip(0, inf) and relu6 = Clip(0, 6), no general clamp)")

    def _pool(self, node, op: str):
        x = self.tensor(node, 0)
        a = self.attrs(node)
        k = self._pair(node, a, "kernel_shape", [])
        st = self._pair(node, a, "strides", [1, 1])
        if self._pair(node, a, "dilations", [1, 1]) != [1, 1]:
            self.node_fail(node, f"dilations {a['dilations']} (hwsim pools have dilation 1)")
        pads = self._pads(node, a, k, st, [1, 1])
        if a.get("ceil_mode", 0):  # equal to floor mode where every window fits exactly
            s = self.shape(node.input[0], node)
            if any((size + p0 + p1 - kk) % ss for size, p0, p1, kk, ss in
                   zip(s[2:], pads[0::2], pads[1::2], k, st)):
                self.node_fail(node, "ceil_mode = 1 where it adds a partial window (hwsim pools use floor mode)")
        attrs = {"kernel": k, "stride": st, "padding": pads}
        if op == "avgpool2d" and any(pads) and not a.get("count_include_pad", 0):
            attrs["count_include_pad"] = False  # ONNX's default: divide by the taps inside the image
        return self.emit(node, op, [x], attrs)

    def op_MaxPool(self, node):
        return self._pool(node, "maxpool2d")

    def op_AveragePool(self, node):
        return self._pool(node, "avgpool2d")

    def op_GlobalAveragePool(self, node):
        self._rank(node, 4)
        return self.emit(node, "global_avgpool", [self.tensor(node, 0)])

    def _rank(self, node, r: int) -> tuple:
        s = self.shape(node.input[0], node)
        if len(s) != r:
            self.node_fail(node, f"input of rank {len(s)} (hwsim imports it on rank-{r} tensors)")
        return s

    def op_ReduceMean(self, node):
        s = self._rank(node, 4)
        a = self.attrs(node)
        axes = a.get("axes")
        if len(node.input) > 1 and node.input[1]:
            axes = self.need_const(node, 1, "axes").reshape(-1).tolist()
        if axes is None or sorted(int(v) % len(s) for v in axes) != [2, 3]:
            self.node_fail(node, f"axes {axes} (hwsim's mean reduces over H and W: axes [2, 3])")
        return self.emit(node, "mean", [self.tensor(node, 0)], {"keepdims": bool(a.get("keepdims", 1))})

    def op_Add(self, node):
        consts = [i for i in (0, 1) if node.input[i] in self.const]
        if not consts:
            return self.emit(node, "add", [self.tensor(node, 0), self.tensor(node, 1)])
        # x + c: the bias of the Conv / Gemm / MatMul that produced x, where nothing else reads x
        xi = 1 - consts[0]
        x_onnx = node.input[xi]
        x = self.tensor(node, xi)
        prod = self.producer(x)
        c = self.const[node.input[consts[0]]]
        if prod is None or prod.op not in ("conv2d", "linear") or self.uses.get(x_onnx, 0) != 1:
            self.node_fail(node, "adds a constant that is not the bias of the Conv / Gemm / MatMul before it "
                                 "(hwsim's add takes two tensors)")
        n = self.tensors[prod.params["weight"]].shape[0]
        if prod.op == "conv2d" and c.size != 1 and not (c.size == n and c.ndim >= 3 and c.shape[-3:] == (n, 1, 1)):
            self.node_fail(node, f"constant of shape {list(c.shape)} is not a per-channel bias (C, 1, 1) of "
                                 f"the convolution before it ({n} channels)")
        vec = self._bias_vector(node, c.reshape(-1) if c.size == n else c, n, "the constant")
        key = prod.params.get("bias")
        if key is None:
            key = f"{prod.name}.bias"
            self.tensors[key] = vec
            prod.params["bias"] = key
        else:
            self.tensors[key] = (self.tensors[key] + vec).astype(np.float32)
        self.alias[node.output[0]] = x
        return prod

    def op_Mul(self, node):
        if any(i in self.const for i in node.input):
            self.node_fail(node, "multiplies by a constant (hwsim's mul takes two tensors)")
        a, b = self.tensor(node, 0), self.tensor(node, 1)
        for x, gate, gate_onnx in ((a, b, node.input[1]), (b, a, node.input[0])):
            g = self.producer(gate)
            if g is None or g.inputs != [x] or self.uses.get(gate_onnx, 0) != 1:
                continue
            fused = None
            if g.op == "sigmoid":
                fused = "silu"  # x * sigmoid(x)
            elif (g.op == "hardsigmoid" and float(np.float32(g.attrs["alpha"])) == _HARDSWISH_ALPHA
                  and g.attrs["beta"] == 0.5):
                fused = "hardswish"  # ONNX HardSwish: x * max(0, min(1, x / 6 + 1/2))
            if fused:
                self.nodes.remove(g)
                self.names.discard(g.name)
                return self.emit(node, fused, [x])
        return self.emit(node, "mul", [a, b])

    def op_Sigmoid(self, node):
        return self.emit(node, "sigmoid", [self.tensor(node, 0)])

    def op_HardSigmoid(self, node):
        a = self.attrs(node)
        return self.emit(node, "hardsigmoid", [self.tensor(node, 0)],
                         {"alpha": _f32(a.get("alpha", 0.2)), "beta": _f32(a.get("beta", 0.5))})

    def op_HardSwish(self, node):
        return self.emit(node, "hardswish", [self.tensor(node, 0)])

    def op_Tanh(self, node):
        return self.emit(node, "tanh", [self.tensor(node, 0)])

    def op_Concat(self, node):
        s = self.shape(node.input[0], node)
        axis = int(self.attrs(node).get("axis", 0)) % len(s)
        if axis != 1:
            self.node_fail(node, f"axis {axis} (hwsim concatenates channels: axis 1)")
        return self.emit(node, "concat", [self.tensor(node, i) for i in range(len(node.input))], {"axis": 1})

    def _flatten(self, node):
        """Flatten(axis=1), Reshape to (N, -1) and Squeeze of the size-1 spatial axes: hwsim's flatten."""
        s = self.shape(node.input[0], node)  # batch fixed to 1
        feat = math.prod(s[1:])
        if node.op_type == "Flatten":
            axis = int(self.attrs(node).get("axis", 1)) % len(s)
            ok, what = axis == 1, f"axis {axis} (hwsim flattens from axis 1)"
        elif node.op_type == "Reshape":
            t = [int(v) for v in self.need_const(node, 1, "shape").reshape(-1)]
            # ONNX Reshape: 0 copies the input's dimension, -1 is inferred (batch 1 here)
            ok = len(t) == 2 and t[0] in (0, -1, 1) and t[1] in (-1, feat) and t != [-1, -1]
            what = (f"target shape {t} of {list(s)} (hwsim reshapes only to (N, -1): [0, -1], [-1, {feat}] "
                    "or [1, -1] in a batch-1 model)")
        else:  # Squeeze
            axes = (self.need_const(node, 1, "axes").reshape(-1).tolist() if len(node.input) > 1 and node.input[1]
                    else self.attrs(node).get("axes"))
            axes = None if axes is None else sorted(int(v) % len(s) for v in axes)
            ok = axes is not None and 0 not in axes and sorted(set(range(2, len(s)))) == axes and feat == s[1]
            what = f"axes {axes} of {list(s)} (hwsim squeezes only the size-1 spatial axes after a global pool)"
        if not ok:
            self.node_fail(node, what)
        return self.emit(node, "flatten", [self.tensor(node, 0)])

    def op_Flatten(self, node):
        return self._flatten(node)

    def op_Reshape(self, node):
        return self._flatten(node)

    def op_Squeeze(self, node):
        return self._flatten(node)

    def _passthrough(self, node):
        self.alias[node.output[0]] = self.tensor(node, 0)
        for extra in node.output[1:]:
            if extra and self.uses.get(extra):
                self.node_fail(node, f"its output {extra!r} (the mask) is used")

    def op_Identity(self, node):
        self._passthrough(node)

    def op_Dropout(self, node):
        if len(node.input) > 2 and node.input[2]:
            tm = self.need_const(node, 2, "training_mode")
            if bool(tm.reshape(-1)[0]):
                self.node_fail(node, "training_mode = true (hwsim imports inference graphs)")
        self._passthrough(node)

    # -------------------------------------------------------------- the walk
    def run(self, mean, std, input_shape) -> Graph:
        in_name, chw, batch = self._input(input_shape)
        mean_t, std_t = normalisation(mean, std, chw[0])
        self._infer(in_name, chw)
        self._constants()
        self.alias[in_name] = in_name
        self.names.add(in_name)
        for node in self.model.graph.node:
            if self._try_fold(node):
                continue
            handler = getattr(self, f"op_{node.op_type}", None) if node.domain in ("", "ai.onnx") else None
            if handler is None and node.op_type in _QUANTIZED_OPS:
                self.node_fail(node, "an int8 (QDQ / QOperator) model: hwsim imports float ONNX models so far; "
                                     "hwsim.importers.given parses its quantization (docs/import.md)")
            if handler is None:
                self.node_fail(node, f"not supported by the hwsim importer (supported: {', '.join(SUPPORTED)}; "
                                     "docs/import.md)")
            handler(node)
        if len(self.outputs) != 1:
            self.fail(f"{len(self.outputs)} graph outputs ({', '.join(self.outputs)}); hwsim models have exactly one")
        out = self.outputs[0]
        if out in self.const or self.alias.get(out) in (None, in_name):
            self.fail(f"output {out!r} is a constant or the input itself, not computed from the input")
        m = self.model
        md = {"source": "onnx", "opset": self.opset,
              "producer": f"{m.producer_name} {m.producer_version}".strip(), "onnx_batch": batch}
        return Graph(inputs=[InputSpec(in_name, chw, mean_t, std_t)], nodes=self.nodes,
                     outputs=[self.alias[out]], tensors=self.tensors, metadata=md)


SUPPORTED = tuple(sorted(name[3:] for name in vars(_Importer) if name.startswith("op_")))  # the ONNX ops mapped
