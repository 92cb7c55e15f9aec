"""The quantization an int8 ONNX model carries ("given quantization", DESIGN.md): parsed, not yet used.

Reads both layouts ``onnxruntime.quantization.quantize_static`` writes:

- **QDQ**: float ops between ``DequantizeLinear`` (inputs) and ``QuantizeLinear`` (outputs);
  weights and biases are integer initializers behind a ``DequantizeLinear``;
- **QOperator**: ``QLinearConv``, ``QLinearMatMul`` and the ``com.microsoft`` ops ``QGemm``,
  ``QLinearAdd``, ``QLinearMul``, ``QLinearGlobalAveragePool``, ``QLinearAveragePool``,
  ``QLinearConcat``, ``QLinearSigmoid``, with ``MaxPool`` / ``Flatten`` / ``Reshape`` working on
  the integers directly, a ``QuantizeLinear`` at the input and a ``DequantizeLinear`` at the end, and the float
  ops ONNX Runtime has no int8 kernel for (HardSigmoid, HardSwish; Sigmoid, Tanh) between a
  ``DequantizeLinear`` and a ``QuantizeLinear`` (a function of the input code: hwsim's table in ORT's form).

into a :class:`GivenQuantization`: for every op in graph order, the per-tensor scale and zero
point of its inputs and output, its integer weights (hwsim layout: conv ``[Cout, Cin/g, kh,
kw]``, linear ``[out, in]``) with their per-tensor or per-output-channel scales, and its int32
bias. Compile does not use it yet (the ``ranges = "given"`` mode is another step of issue 17).

What hwsim's grids can express is checked here, each refusal one line naming the tensor:
per-axis scales only on a weight's output channel (conv axis 0; a ``[in, out]`` matrix's axis 1,
which is hwsim's axis 0), per-tensor activations, integer types of at most 16 bits (int32 for
biases), finite positive scales.

Note (measured on ResNet-8): ``quantize_static`` removes a ``Relu`` after a ``Conv`` / ``Add``
in both layouts; the ReLU then lives in the output grid (a uint8 zero point of 0 clamps it).
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np

from hwsim.errors import HwsimError
from hwsim.importers.onnx import _line, _onnx, read_onnx, tensor_array

_INT_TYPES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
              "int32": (-(1 << 31), (1 << 31) - 1)}


@dataclass(frozen=True)
class QuantParams:
    """Scale (float32) and zero point of one tensor: per tensor (``axis`` None, 0-d arrays) or per
    channel (1-d arrays along ``axis`` of the tensor in hwsim's layout)."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    axis: int | None = None

    @property
    def qmin(self) -> int:
        return _INT_TYPES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return _INT_TYPES[self.dtype][1]

    def _bcast(self, a: np.ndarray, ndim: int) -> np.ndarray:
        if self.axis is None:
            return a
        shape = [1] * ndim
        shape[self.axis] = -1
        return a.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), x / scale in float32
        (the spec divides; it does not multiply by 1 / scale)."""
        x = np.asarray(x, dtype=np.float32)
        s = self._bcast(self.scale.astype(np.float32), x.ndim)
        z = self._bcast(self.zero_point.astype(np.int64), x.ndim)
        q = np.rint(x / s).astype(np.int64) + z  # np.rint: round half to even
        return np.clip(q, self.qmin, self.qmax)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """ONNX DequantizeLinear: (q - zero_point) * scale in float32."""
        q = np.asarray(q)
        s = self._bcast(self.scale.astype(np.float32), q.ndim)
        z = self._bcast(self.zero_point.astype(np.int64), q.ndim)
        return ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)


@dataclass
class GivenLayer:
    """One op of an int8 model with the numbers its engine was given."""

    name: str                       # the ONNX node name (QDQ: the float op; QOperator: the QLinear op), or its output
    op: str                         # the hwsim op it computes: conv2d, linear, add, global_avgpool, ...
    inputs: list[QuantParams | None]
    output: QuantParams | None      # None where the op's output is float (e.g. a QGemm without y_scale)
    weight: np.ndarray | None = None         # integers, hwsim layout
    weight_qparams: QuantParams | None = None
    bias: np.ndarray | None = None           # int32
    bias_scale: np.ndarray | None = None     # QDQ: the bias's own DequantizeLinear scale (s_x * s_w)
    attrs: dict = field(default_factory=dict)
    onnx_op: str = ""                        # the ONNX op type it was read from
    constants: dict[int, np.ndarray] = field(default_factory=dict)  # input index -> integers of a constant operand


@dataclass
class GivenQuantization:
    """Everything an int8 model fixes: its layout, the input's grid and every op's numbers."""

    format: str                     # "qdq" or "qoperator"
    input: QuantParams | None       # the grid of the first QuantizeLinear (the input, after free ops such as Flatten)
    layers: list[GivenLayer]

    def layer(self, name: str) -> GivenLayer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(name)


_QOP = {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
        "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "ConvInteger", "MatMulInteger"}
# float ops of a QDQ model and the hwsim op each one is
_QDQ_OPS = {"Conv": "conv2d", "Gemm": "linear", "MatMul": "linear", "Add": "add", "Mul": "mul",
            "GlobalAveragePool": "global_avgpool", "AveragePool": "avgpool2d", "MaxPool": "maxpool2d",
            "Concat": "concat", "Relu": "relu", "Clip": "relu6", "Flatten": "flatten", "Reshape": "flatten",
            "Squeeze": "flatten", "Sigmoid": "sigmoid", "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish",
            "Tanh": "tanh", "ReduceMean": "mean", "BatchNormalization": "batchnorm", "Identity": "identity",
            "Dropout": "identity"}
# float ops a QOperator model runs between DequantizeLinear and QuantizeLinear (no int8 kernel in ONNX Runtime)
_FLOAT_SANDWICH = {"HardSigmoid", "HardSwish", "Sigmoid", "Tanh"}
_SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Constant", "Cast", "Slice", "Size"}


def parse_given(source) -> GivenQuantization:
    """The given quantization of an int8 ONNX model (a path, or a ``ModelProto``)."""
    model = read_onnx(source) if isinstance(source, (str, os.PathLike)) else source
    return _Parser(model, str(source) if isinstance(source, (str, os.PathLike)) else "onnx").run()


class _Parser:
    def __init__(self, model, where: str):
        self.onnx = _onnx()
        self.model = model
        self.where = where
        g = model.graph
        self.const = {t.name: tensor_array(t, where) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
                self.const[n.output[0]] = tensor_array(n.attribute[0].t, where)
        self.qp: dict[str, QuantParams] = {}  # tensor -> the grid of its integers (QOperator) or of its values (QDQ)

    def fail(self, msg: str):
        raise HwsimError(f"{self.where}: {msg}")

    @staticmethod
    def _named(lay: GivenLayer, n) -> GivenLayer:
        lay.name = n.name or n.output[0]
        lay.onnx_op = n.op_type
        return lay

    def attrs(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    # -------------------------------------------------------------- numbers
    def params(self, node, scale_name: str, zp_name: str | None, tensor: str, axis: int | None = None,
               allowed_axis: int | None = None, ndim: int | None = None, zp_dtype=None) -> QuantParams:
        """The QuantParams named by a (scale, zero point) pair; per-axis only on ``allowed_axis``."""
        for n_ in (scale_name, zp_name):
            if n_ and n_ not in self.const:
                self.fail(f"node {node.name!r} ({node.op_type}): {n_!r} is not a constant (scales and zero points "
                          "must be stored in the model)")
        s = np.asarray(self.const[scale_name])
        z = np.asarray(self.const[zp_name]) if zp_name else np.zeros(s.shape, dtype=zp_dtype or np.uint8)
        if s.dtype != np.float32 or not np.all(np.isfinite(s)) or not np.all(s > 0):
            self.fail(f"tensor {tensor!r}: scale {scale_name!r} must be finite positive float32 values")
        dtype = str(z.dtype)
        if dtype not in _INT_TYPES:
            self.fail(f"tensor {tensor!r}: zero point type {dtype} (hwsim reads int8, uint8, int16, uint16, int32)")
        if s.size == 1 and z.size == 1:
            return QuantParams(s.reshape(()), z.reshape(()), dtype, None)
        if s.ndim != 1 or z.shape != s.shape:
            self.fail(f"tensor {tensor!r}: scale of shape {list(s.shape)} and zero point {list(z.shape)} "
                      "(per tensor: one value; per axis: two 1-D arrays of the same length)")
        if allowed_axis is None:
            self.fail(f"tensor {tensor!r}: per-axis scales ({s.size} values) on an activation (hwsim grids of "
                      "activations are per tensor)")
        ax = 1 if axis is None else int(axis)
        if ndim is not None:
            ax %= ndim
        if ax != allowed_axis:
            self.fail(f"tensor {tensor!r}: per-axis scales on axis {ax} (hwsim supports per-channel scales "
                      f"on a weight's output channel only: axis {allowed_axis} here)")
        return QuantParams(s, z, dtype, ax)

    @staticmethod
    def _to_hwsim_layout(w: np.ndarray, qp: QuantParams, transpose: bool) -> tuple[np.ndarray, QuantParams]:
        """A [in, out] matrix -> [out, in]; its per-column scales (axis 1) become hwsim's axis 0."""
        if not transpose:
            return w, qp
        return np.ascontiguousarray(w.T), QuantParams(qp.scale, qp.zero_point, qp.dtype,
                                                      None if qp.axis is None else 1 - qp.axis)

    # -------------------------------------------------------------- QDQ
    def _qdq(self) -> GivenQuantization:
        g = self.model.graph
        dq_const: dict[str, tuple] = {}   # DQ output -> (integer initializer, DQ node)
        act: dict[str, QuantParams] = {}  # float tensor (a DQ output or a Q input) -> its grid
        for n in g.node:
            if n.op_type == "DequantizeLinear":
                if n.input[0] in self.const:
                    dq_const[n.output[0]] = (self.const[n.input[0]], n)
                else:
                    act[n.output[0]] = self.params(n, n.input[1], n.input[2] if len(n.input) > 2 else None,
                                                   n.output[0])
            elif n.op_type == "QuantizeLinear":
                act[n.input[0]] = self.params(n, n.input[1], n.input[2] if len(n.input) > 2 else None, n.input[0])
        layers = []
        for n in g.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.domain not in ("", "ai.onnx"):
                if n.domain not in ("", "ai.onnx"):
                    self.fail(f"node {n.name!r} (op {n.domain}.{n.op_type}): not an op hwsim reads in a QDQ model")
                continue
            if n.op_type not in _QDQ_OPS:
                if n.op_type in _SHAPE_OPS:
                    continue
                self.fail(f"node {n.name!r} (op {n.op_type}): not supported in a QDQ model (supported: "
                          f"{', '.join(sorted(_QDQ_OPS))})")
            lay = GivenLayer(n.name, _QDQ_OPS[n.op_type], [], act.get(n.output[0]), attrs=self.attrs(n))
            if n.op_type == "Clip":  # as the float importer: Clip(0, inf) is relu, Clip(0, 6) relu6, no other clamp
                lo, hi = (self.const.get(n.input[i]) if len(n.input) > i and n.input[i] else None for i in (1, 2))
                lo_v, hi_v = (None if v is None or v.size != 1 else float(v.reshape(-1)[0]) for v in (lo, hi))
                if lo_v == 0.0 and (hi is None or hi_v == float("inf")):
                    lay.op = "relu"
                elif not (lo_v == 0.0 and hi_v == 6.0):
                    self.fail(f"node {n.name!r} (op Clip): Clip(min={lo_v}, max={hi_v}) (hwsim has relu = Clip(0, inf) "
                              "and relu6 = Clip(0, 6), no general clamp)")
            if n.op_type in ("Conv", "Gemm", "MatMul"):
                lay.inputs.append(act.get(n.input[0]))
                self._qdq_weights(n, lay, dq_const)
            else:  # activations, and constants quantized as activations (a MatMul's Add bias: uint8)
                for i in n.input:
                    if i in dq_const:
                        q, dq = dq_const[i]
                        lay.constants[len(lay.inputs)] = q
                        lay.inputs.append(self.params(dq, dq.input[1], dq.input[2] if len(dq.input) > 2 else None, i))
                    elif i and i not in self.const:
                        lay.inputs.append(act.get(i))
            layers.append(self._named(lay, n))
        first_q = next((n for n in g.node if n.op_type == "QuantizeLinear"), None)
        return GivenQuantization("qdq", act.get(first_q.input[0]) if first_q else None, layers)

    def _qdq_weights(self, n, lay: GivenLayer, dq_const: dict) -> None:
        w_name = n.input[1]
        if w_name not in dq_const:
            self.fail(f"node {n.name!r} ({n.op_type}): weight {w_name!r} is not an integer initializer behind a "
                      "DequantizeLinear (not a quantized weight)")
        w, dq = dq_const[w_name]
        a = self.attrs(n)
        # the output-channel axis of the stored matrix: Conv [Cout, ...] 0; Gemm B [out, in] (transB) 0, else 1
        transpose = n.op_type == "MatMul" or (n.op_type == "Gemm" and not a.get("transB", 0))
        out_axis = 1 if transpose else 0
        qp = self.params(dq, dq.input[1], dq.input[2] if len(dq.input) > 2 else None, w_name,
                         axis=self.attrs(dq).get("axis", 1), allowed_axis=out_axis, ndim=w.ndim)
        lay.weight, lay.weight_qparams = self._to_hwsim_layout(w, qp, transpose)
        b_name = n.input[2] if len(n.input) > 2 else ""
        if b_name:
            if b_name not in dq_const:
                self.fail(f"node {n.name!r} ({n.op_type}): bias {b_name!r} is not an int32 initializer behind a "
                          "DequantizeLinear")
            b, bdq = dq_const[b_name]
            if b.dtype != np.int32:
                self.fail(f"node {n.name!r}: bias {b_name!r} of type {b.dtype} (an int32 bias)")
            lay.bias = b.reshape(-1)
            lay.bias_scale = np.asarray(self.const[bdq.input[1]], dtype=np.float32)

    # -------------------------------------------------------------- QOperator
    def _qop(self) -> GivenQuantization:
        g = self.model.graph
        input_qp = None
        layers = []
        self.dq: dict[str, QuantParams] = {}    # DequantizeLinear output -> the grid of its integers
        self.q_in: dict[str, QuantParams] = {}  # QuantizeLinear input -> its grid
        for n in g.node:
            if n.op_type == "QuantizeLinear":
                self.q_in[n.input[0]] = self.params(n, n.input[1], n.input[2] if len(n.input) > 2 else None,
                                                    n.input[0])
        for n in g.node:
            op = n.op_type
            if op == "QuantizeLinear":
                qp = self.params(n, n.input[1], n.input[2] if len(n.input) > 2 else None, n.input[0])
                self.qp[n.output[0]] = qp
                if input_qp is None:  # the first QuantizeLinear: the input's grid (after free ops like Flatten)
                    input_qp = qp
                continue
            if op == "DequantizeLinear":
                if n.input[0] in self.qp:
                    self.dq[n.output[0]] = self.qp[n.input[0]]
                continue
            if op in _FLOAT_SANDWICH:  # DequantizeLinear -> float op -> QuantizeLinear: ORT runs it in float32
                layers.append(self._named(self._sandwich(n), n))
                continue
            if op in ("MaxPool", "Flatten", "Reshape", "Squeeze", "Identity"):  # on the integers, same grid
                if n.input[0] in self.qp:
                    self.qp[n.output[0]] = self.qp[n.input[0]]
                    layers.append(self._named(GivenLayer(n.name, _QDQ_OPS[op], [self.qp[n.input[0]]],
                                                         self.qp[n.input[0]], attrs=self.attrs(n)), n))
                continue
            if op in _SHAPE_OPS:
                continue
            handler = getattr(self, f"_q_{op}", None)
            if handler is None:
                self.fail(f"node {n.name!r} (op {n.op_type}): not supported in a QOperator model (supported: "
                          f"{', '.join(sorted(h[3:] for h in dir(self) if h.startswith('_q_')))}, MaxPool, Flatten, "
                          f"Reshape, Squeeze, and {', '.join(sorted(_FLOAT_SANDWICH))} between DequantizeLinear and "
                          "QuantizeLinear)")
            lay = self._named(handler(n), n)
            if lay.output is not None:
                self.qp[n.output[0]] = lay.output
            layers.append(lay)
        return GivenQuantization("qoperator", input_qp, layers)

    def _sandwich(self, n) -> GivenLayer:
        """A float op between a DequantizeLinear and a QuantizeLinear in a QOperator model (quantize_static leaves
        the ops ORT has no int8 kernel for, e.g. HardSigmoid, so): between the two int8 grids it is a function of
        the input code, run by hwsim as the op's table in ONNX Runtime's form (requant.activation_form)."""
        src = n.input[0] if n.input else ""
        if src not in self.dq or len(n.input) != 1:
            self.fail(f"node {n.name!r} (op {n.op_type}): a float op whose input is not a DequantizeLinear output "
                      "(hwsim runs a float op of an int8 model only between DequantizeLinear and QuantizeLinear)")
        out = self.q_in.get(n.output[0])
        if out is None:
            self.fail(f"node {n.name!r} (op {n.op_type}): its float output is not quantized by a QuantizeLinear "
                      "(hwsim runs a float op of an int8 model only between DequantizeLinear and QuantizeLinear)")
        return GivenLayer(n.name, _QDQ_OPS[n.op_type], [self.dq[src]], out, attrs=self.attrs(n))

    def _pair(self, n, i: int, tensor: str) -> QuantParams:
        return self.params(n, n.input[i], n.input[i + 1] if len(n.input) > i + 1 and n.input[i + 1] else None,
                           tensor)

    def _weight(self, n, wi: int, out_axis: int, transpose: bool) -> tuple[np.ndarray, QuantParams]:
        w_name = n.input[wi]
        if w_name not in self.const:
            self.fail(f"node {n.name!r} ({n.op_type}): weight {w_name!r} is not a constant")
        w = self.const[w_name]
        # QLinearConv / QLinearMatMul / QGemm: per-channel scales run along the output channel implicitly
        s = np.asarray(self.const.get(n.input[wi + 1], np.float32(0)))
        qp = self.params(n, n.input[wi + 1], n.input[wi + 2] if n.input[wi + 2] else None, w_name,
                         axis=out_axis if s.size > 1 else None, allowed_axis=out_axis, ndim=w.ndim)
        return self._to_hwsim_layout(w, qp, transpose)

    def _bias(self, n, i: int) -> np.ndarray | None:
        if len(n.input) <= i or not n.input[i]:
            return None
        b = self.const.get(n.input[i])
        if b is None or b.dtype != np.int32:
            self.fail(f"node {n.name!r} ({n.op_type}): bias {n.input[i]!r} must be an int32 constant")
        return b.reshape(-1)

    def _q_QLinearConv(self, n):
        w, wq = self._weight(n, 3, 0, False)
        return GivenLayer(n.name, "conv2d", [self._pair(n, 1, n.input[0])], self._pair(n, 6, n.output[0]),
                          w, wq, self._bias(n, 8), attrs=self.attrs(n))

    def _q_QLinearMatMul(self, n):
        w, wq = self._weight(n, 3, 1, True)
        return GivenLayer(n.name, "linear", [self._pair(n, 1, n.input[0])], self._pair(n, 6, n.output[0]),
                          w, wq, attrs=self.attrs(n))

    def _q_QGemm(self, n):
        a = self.attrs(n)
        if a.get("transA", 0):
            self.fail(f"node {n.name!r} (QGemm): transA = 1 (hwsim's linear takes the input as given)")
        tb = bool(a.get("transB", 0))
        w, wq = self._weight(n, 3, 0 if tb else 1, not tb)
        out = self._pair(n, 7, n.output[0]) if len(n.input) > 7 and n.input[7] else None
        return GivenLayer(n.name, "linear", [self._pair(n, 1, n.input[0])], out, w, wq, self._bias(n, 6), attrs=a)

    def _binary(self, n, op: str):
        lay = GivenLayer(n.name, op, [self._pair(n, 1, n.input[0]), self._pair(n, 4, n.input[3])],
                         self._pair(n, 6, n.output[0]), attrs=self.attrs(n))
        for k, i in enumerate((0, 3)):
            if n.input[i] in self.const:
                lay.constants[k] = self.const[n.input[i]]
        return lay

    def _q_QLinearAdd(self, n):
        return self._binary(n, "add")

    def _q_QLinearMul(self, n):
        return self._binary(n, "mul")

    def _unary(self, n, op: str):
        return GivenLayer(n.name, op, [self._pair(n, 1, n.input[0])], self._pair(n, 3, n.output[0]),
                          attrs=self.attrs(n))

    def _q_QLinearGlobalAveragePool(self, n):
        return self._unary(n, "global_avgpool")

    def _q_QLinearAveragePool(self, n):
        return self._unary(n, "avgpool2d")

    def _q_QLinearSigmoid(self, n):
        return self._unary(n, "sigmoid")

    def _q_QLinearConcat(self, n):
        ins = [self._pair(n, i + 1, n.input[i]) for i in range(2, len(n.input), 3)]
        return GivenLayer(n.name, "concat", ins, self._pair(n, 0, n.output[0]), attrs=self.attrs(n))

    # -------------------------------------------------------------- which layout
    def run(self) -> GivenQuantization:
        types = {n.op_type for n in self.model.graph.node}
        try:
            if types & _QOP:
                return self._qop()
            if "DequantizeLinear" in types:
                return self._qdq()
        except HwsimError:
            raise
        except (KeyError, IndexError, ValueError, TypeError) as e:  # a malformed quantized graph
            self.fail(f"malformed quantized model ({type(e).__name__}: {_line(e)})")
        self.fail("no quantized ops (QuantizeLinear/DequantizeLinear or QLinear*): a float model; "
                  "import it with hwsim import")


# ----------------------------------------------------------------------------- import: graph + given numbers
# QOperator ops the float shadow maps back to their float op (name kept), with their output grid's inputs
_QOP_FLOAT = {"QLinearConv": "Conv", "QLinearMatMul": "MatMul", "QGemm": "Gemm", "QLinearAdd": "Add",
              "QLinearGlobalAveragePool": "GlobalAveragePool", "QLinearAveragePool": "AveragePool",
              "QLinearConcat": "Concat", "QLinearMul": "Mul", "QLinearSigmoid": "Sigmoid"}
_ON_INTEGERS = ("MaxPool", "Flatten", "Reshape", "Squeeze", "Identity")  # QOperator: float ops on the integers
ENGINE = "onnxruntime"


def is_quantized(model) -> bool:
    """Whether an ONNX model holds quantized ops (QDQ or QOperator)."""
    types = {n.op_type for n in model.graph.node}
    return bool(types & (_QOP | {"QuantizeLinear", "DequantizeLinear"}))


class _Shadow:
    """The int8 model as the float model it stands for (every integer tensor dequantized, every QLinear op its
    float op, same node names), plus the grid of every float tensor the engine quantizes."""

    def __init__(self, parser: _Parser):
        self.p = parser
        self.onnx = parser.onnx
        self.grids: dict[str, QuantParams] = {}  # float tensor -> its grid
        self.rename: dict[str, str] = {}  # integer / dequantized tensor -> the float tensor it stands for
        self.inits: list = []
        self.nodes: list = []

    def name(self, t: str) -> str:
        return self.rename.get(t, t)

    def _const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def _grid(self, t: str, qp: QuantParams) -> None:
        old = self.grids.get(t)
        if old is not None and (float(old.scale) != float(qp.scale) or int(old.zero_point) != int(qp.zero_point)):
            self.p.fail(f"tensor {t!r} is quantized twice with different grids ({float(old.scale)}, "
                        f"{int(old.zero_point)}) and ({float(qp.scale)}, {int(qp.zero_point)})")
        self.grids[t] = qp

    def _node(self, n, op_type: str, inputs: list[str], attrs: dict | None = None) -> None:
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [n.output[0]], name=n.name, **(attrs or {})))

    @staticmethod
    def _dq_weight(w: np.ndarray, qp: QuantParams, axis: int) -> np.ndarray:
        """DequantizeLinear of a stored weight (ONNX layout; per-channel along ``axis`` of that layout)."""
        s = qp.scale.astype(np.float32)
        z = qp.zero_point.astype(np.int64)
        if qp.axis is not None:
            shape = [1] * w.ndim
            shape[axis] = -1
            s, z = s.reshape(shape), z.reshape(shape)
        return ((w.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)

    def qdq(self):
        p, g = self.p, self.p.model.graph
        q_of: dict[str, tuple[str, QuantParams]] = {}  # QuantizeLinear output -> (float input, grid)
        for n in g.node:
            if n.op_type == "QuantizeLinear":
                qp = p.params(n, n.input[1], n.input[2] if len(n.input) > 2 else None, n.input[0])
                q_of[n.output[0]] = (self.name(n.input[0]), qp)
                continue
            if n.op_type == "DequantizeLinear":
                src = n.input[0]
                if src in p.const:  # a weight or bias: its float value as an initializer
                    qp = p.params(n, n.input[1], n.input[2] if len(n.input) > 2 else None, src,
                                  axis=p.attrs(n).get("axis", 1), allowed_axis=None if p.const[src].ndim == 0 else
                                  int(p.attrs(n).get("axis", 1)) % p.const[src].ndim, ndim=p.const[src].ndim)
                    self._const(n.output[0], self._dq_weight(p.const[src], qp, qp.axis or 0))
                    continue
                if src not in q_of:
                    p.fail(f"node {n.name!r} (DequantizeLinear): input {src!r} is not a QuantizeLinear output "
                           "(an integer graph input or a chain hwsim does not read)")
                t, qp = q_of[src]
                dq = p.params(n, n.input[1], n.input[2] if len(n.input) > 2 else None, src)
                if float(dq.scale) != float(qp.scale) or int(dq.zero_point) != int(qp.zero_point):
                    p.fail(f"node {n.name!r} (DequantizeLinear): grid differs from its QuantizeLinear's")
                self._grid(t, qp)
                self.rename[n.output[0]] = t
                continue
            self.nodes.append(self._renamed(n))

    def _renamed(self, n):
        m = self.onnx.NodeProto()
        m.CopyFrom(n)
        del m.input[:]
        m.input.extend(self.name(i) if i else i for i in n.input)
        return m

    def qoperator(self):
        p, g = self.p, self.p.model.graph
        for n in g.node:
            op = n.op_type
            if op == "QuantizeLinear":
                qp = p.params(n, n.input[1], n.input[2] if len(n.input) > 2 else None, n.input[0])
                self._grid(self.name(n.input[0]), qp)
                self.rename[n.output[0]] = self.name(n.input[0])
                continue
            if op == "DequantizeLinear":
                self.rename[n.output[0]] = self.name(n.input[0])
                continue
            if op in _FLOAT_SANDWICH:  # on dequantized values (checked by the parser), its output quantized next
                self.nodes.append(self._renamed(n))
                continue
            if op in _ON_INTEGERS or op in _SHAPE_OPS or op not in _QOP_FLOAT:
                if op not in _ON_INTEGERS and op not in _SHAPE_OPS:
                    p.fail(f"node {n.name!r} (op {n.op_type}): not supported by hwsim's given compile yet (supported: "
                           f"{', '.join(sorted(_QOP_FLOAT))}, {', '.join(_ON_INTEGERS)})")
                self.nodes.append(self._renamed(n))
                if op in _ON_INTEGERS and n.input[0] in p.qp:
                    p.qp[n.output[0]] = p.qp[n.input[0]]
                    self._grid(n.output[0], p.qp[n.input[0]])
                continue
            a = p.attrs(n)
            lay = getattr(p, f"_q_{op}")(n)
            if lay.output is None:
                p.fail(f"node {n.name!r} ({op}): a float output (no y_scale); hwsim runs integer outputs")
            p.qp[n.output[0]] = lay.output
            self._grid(n.output[0], lay.output)
            x = self.name(n.input[0]) if op != "QLinearConcat" else None
            if op == "QLinearConv":
                w = p.const[n.input[3]]
                wf = self._const(f"{n.name}::w", self._dq_weight(w, lay.weight_qparams, 0))
                ins = [x, wf]
                if lay.bias is not None:
                    s_b = np.float32(lay.inputs[0].scale) * lay.weight_qparams.scale.astype(np.float32)
                    ins.append(self._const(f"{n.name}::b", (lay.bias.astype(np.float64) * s_b).astype(np.float32)))
                self._node(n, "Conv", ins, a)
            elif op in ("QLinearMatMul", "QGemm"):
                if n.input[0] in p.const:
                    p.fail(f"node {n.name!r} ({op}): a constant first operand (hwsim reads x @ W)")
                if op == "QGemm" and float(a.get("alpha", 1.0)) != 1.0:
                    p.fail(f"node {n.name!r} (QGemm): alpha = {a['alpha']} (hwsim keeps the integers: alpha 1)")
                wf = self._const(f"{n.name}::w", np.ascontiguousarray(
                    self._dq_weight(lay.weight, lay.weight_qparams, 0).T))  # back to [in, out]
                ins = [x, wf]
                if lay.bias is not None:
                    s_b = np.float32(lay.inputs[0].scale) * lay.weight_qparams.scale.astype(np.float32)
                    ins.append(self._const(f"{n.name}::b", (lay.bias.astype(np.float64) * s_b).astype(np.float32)))
                self._node(n, "Gemm", ins, {})
            elif op == "QLinearAdd":
                if lay.constants:
                    p.fail(f"node {n.name!r} (QLinearAdd): a constant operand (ONNX Runtime requantizes a MatMul's "
                           "output before adding its bias; hwsim's add takes two tensors)")
                self._node(n, "Add", [x, self.name(n.input[3])])
            elif op == "QLinearMul":
                if lay.constants:
                    p.fail(f"node {n.name!r} (QLinearMul): a constant operand (hwsim's mul takes two tensors)")
                self._node(n, "Mul", [x, self.name(n.input[3])])
            elif op == "QLinearSigmoid":
                self._node(n, "Sigmoid", [x])
            elif op == "QLinearGlobalAveragePool":
                if a.get("channels_last", 0):
                    p.fail(f"node {n.name!r}: channels_last = 1 (hwsim runs NCHW)")
                self._node(n, "GlobalAveragePool", [x])
            elif op == "QLinearAveragePool":
                if a.get("channels_last", 0):
                    p.fail(f"node {n.name!r}: channels_last = 1 (hwsim runs NCHW)")
                self._node(n, "AveragePool", [x], {k: v for k, v in a.items() if k != "channels_last"})
            elif op == "QLinearConcat":
                self._node(n, "Concat", [self.name(n.input[i]) for i in range(2, len(n.input), 3)], {"axis": a["axis"]})

    def _implied_relus(self) -> list:
        """quantize_static removes a Relu / Clip(0, 6) after a Conv, Gemm, MatMul or Add (measured, both layouts):
        it lives in the output grid, whose zero point is then its qmin (no negative value). The float graph gets
        it back as a Relu (compile fuses it as that layer's clamp, at the same qmin), so the float reference is
        the function the integers compute, and the ReLU floor is not counted as clipping."""
        out = []
        for n in self.nodes:
            qp = self.grids.get(n.output[0]) if n.output else None
            if n.op_type in ("Conv", "Gemm", "MatMul", "Add") and qp is not None and int(qp.zero_point) == qp.qmin:
                t = n.output[0]
                m = self.onnx.NodeProto()
                m.CopyFrom(n)
                m.output[0] = f"{t}::pre_relu"
                out += [m, self.onnx.helper.make_node("Relu", [m.output[0]], [t], name=f"{n.name}::relu")]
            else:
                out.append(n)
        return out

    def model(self):
        src = self.p.model
        m = self.onnx.ModelProto()
        m.CopyFrom(src)
        g = m.graph
        del g.node[:]
        g.node.extend(self._implied_relus())
        used = {i for n in self.nodes for i in n.input}
        keep = [t for t in src.graph.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(keep + self.inits)
        del g.value_info[:]
        for o in g.output:
            o.name = self.name(o.name)
            o.type.tensor_type.elem_type = self.onnx.TensorProto.FLOAT
        return m


def _given_importer():
    """The float importer, except that x * Sigmoid(x) / x * HardSigmoid(x) stay two ops where the engine quantizes
    the gate (its own grid between them: ORT runs the gate, then QLinearMul, and so must hwsim)."""
    from hwsim.importers.onnx import _Importer

    class _GivenImporter(_Importer):
        def __init__(self, model, where: str, quantized: set[str]):
            super().__init__(model, where)
            self.quantized = quantized

        def op_Mul(self, node):
            if not any(i in self.const for i in node.input) and any(i in self.quantized for i in node.input):
                return self.emit(node, "mul", [self.tensor(node, 0), self.tensor(node, 1)])
            return super().op_Mul(node)

    return _GivenImporter


def import_given(path, mean=None, std=None, input_shape=None):
    """An int8 ONNX model (QDQ or QOperator) as an hwsim Graph: the dequantized float graph, with its
    given quantization (:class:`hwsim.given.Given`) in ``metadata["given"]`` and ONNX Runtime's
    profile as the model's default (``metadata["default_profile"]``)."""
    from hwsim.given import ENGINE_PROFILES, Given
    from hwsim.graph import validate
    model = read_onnx(path)
    where = str(path)
    parsed = _Parser(model, where).run()
    sh = _Shadow(_Parser(model, where))
    try:
        sh.qdq() if parsed.format == "qdq" else sh.qoperator()
    except (KeyError, IndexError, ValueError, TypeError) as e:
        sh.p.fail(f"malformed quantized model ({type(e).__name__}: {_line(e)})")
    imp = _given_importer()(sh.model(), where, set(sh.grids))
    g = imp.run(mean, std, input_shape)
    grids: dict[str, dict] = {}
    for t, qp in sh.grids.items():
        h = imp.alias.get(t)
        if h is None:
            continue  # a tensor the float import folded away (a constant)
        gd = {"scale": float(qp.scale), "zero_point": int(qp.zero_point), "dtype": qp.dtype}
        if qp.dtype not in ("int8", "uint8", "int16", "uint16"):
            sh.p.fail(f"tensor {t!r}: activations of type {qp.dtype} (hwsim grids: (u)int8, (u)int16)")
        if h in grids and grids[h] != gd:
            sh.p.fail(f"tensor {t!r}: two grids for hwsim tensor {h!r}")
        grids[h] = gd
    nodes = {n.name: n for n in g.nodes}
    layers, arrays = {}, {}
    for lay in parsed.layers:
        if lay.op not in ("conv2d", "linear"):
            continue
        n = nodes.get(lay.name)
        if n is None or n.op != lay.op:
            sh.p.fail(f"node {lay.name!r}: not found as a {lay.op} in the imported graph (unnamed or renamed node)")
        wq = lay.weight_qparams
        layers[n.name] = {"w_scale": [float(v) for v in np.ravel(wq.scale)],
                          "w_zero_point": [int(v) for v in np.ravel(wq.zero_point)], "w_dtype": wq.dtype}
        arrays[f"{n.name}.weight"] = np.ascontiguousarray(lay.weight)
        if lay.bias is not None:
            arrays[f"{n.name}.bias"] = lay.bias.astype(np.int32)
    signed = {gd["dtype"].startswith("int") for gd in grids.values()}
    if len(signed) != 1:
        sh.p.fail("activation grids of both signed and unsigned types (hwsim profiles give all activations one "
                  "signedness)")
    profile = ENGINE_PROFILES[(ENGINE, signed.pop())]
    g.metadata.update({"onnx_file": Path(path).name, "quantized": parsed.format, "default_profile": profile,
                       "given": Given(ENGINE, parsed.format, profile, grids, layers, arrays)})
    validate(g, where=f"{path} (imported)")
    return g
