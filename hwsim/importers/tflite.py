"""LiteRT (TensorFlow Lite) int8 models: ``.tflite`` -> an hwsim Graph with the file's own quantization kept.

The flatbuffer is read with the ``tflite`` package (the schema's generated Python classes; ``pip install
'hwsim[litert]'``), never TensorFlow. Only subgraph 0 is read. What a full-integer converter output holds:

- ``QUANTIZE`` of the float input (its output grid is the input's grid; an int8 input tensor gives its own) and
  ``DEQUANTIZE`` of the int8 output (the hwsim output is the int8 tensor it reads);
- ``CONV_2D``, ``DEPTHWISE_CONV_2D`` (weights ``[1, kh, kw, Cout]``, per-channel axis 3), ``FULLY_CONNECTED``
  (an NHWC input is flattened in NHWC order: the weight columns are permuted to hwsim's NCHW flatten),
  int8 weights with per-tensor or per-output-channel scales (zero points 0), int32 biases;
- ``ADD``, ``MUL``, ``MEAN`` (axes H, W), ``AVERAGE_POOL_2D`` (SAME: divided by the taps inside the image,
  ``count_include_pad = false``), ``MAX_POOL_2D``, ``CONCATENATION`` (channels), ``RESHAPE`` (to a flat
  vector), ``PAD`` (folded into the convolution that reads it: int8 PAD fills with the zero point, as hwsim's
  conv padding does), ``LOGISTIC``, ``HARD_SWISH``; fused ``RELU`` / ``RELU6`` become relu / relu6 nodes after
  the op (compile fuses them back as the output clamp).

Tensors are NHWC in the file and NCHW in hwsim: weights and shapes are transposed. Every scale and zero point
of the file is kept in a :class:`hwsim.given.Given` (engine ``litert``), so compile reproduces the integers;
the float graph holds the dequantized weights (``(w - z) * s``) and biases (``b * fl32(s_x * s_w)``).
Anything else is a one-line error naming the operator index and its op name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hwsim import safeio
from hwsim.errors import HwsimError

ENGINE = "litert"
SOURCE = "tflite"
DEFAULT_PROFILE = "int8-litert-xnnpack"  # LiteRT's default: the XNNPACK delegate (docs/semantics.md 11)
MAX_FILE_BYTES = 1 << 30
_ACT = {0: None, 1: "relu", 3: "relu6"}  # ActivationFunctionType NONE, RELU, RELU6 (others refused)
_ACT_NAMES = {2: "RELU_N1_TO_1", 4: "TANH", 5: "SIGN_BIT"}


def _tflite():
    try:
        import tflite  # noqa: F401
    except ImportError:
        raise HwsimError("reading .tflite models needs the 'tflite' package: pip install 'hwsim[litert]'") from None
    return tflite


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


class _Model:
    """The flatbuffer's subgraph 0: tensors (shape, type, data, quantization) and operators."""

    def __init__(self, buf: bytes, where: str):
        tfl = _tflite()
        from tflite.BuiltinOperator import BuiltinOperator
        from tflite.TensorType import TensorType

        self.tfl, self.where = tfl, where
        self.op_names = _enum_names(BuiltinOperator)
        self.type_names = _enum_names(TensorType)
        if len(buf) < 8 or buf[4:8] != b"TFL3":
            raise HwsimError(f"{where}: not a LiteRT flatbuffer (no 'TFL3' identifier)")
        try:
            m = tfl.Model.GetRootAsModel(buf, 0)
            if m.SubgraphsLength() < 1:
                raise HwsimError(f"{where}: a LiteRT flatbuffer without a subgraph (truncated or corrupt)")
            sg = m.Subgraphs(0)
            self.inputs = [int(i) for i in sg.InputsAsNumpy()] if sg.InputsLength() else []
            self.outputs = [int(i) for i in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
            self.tensors = [self._tensor(m, sg.Tensors(i), i) for i in range(sg.TensorsLength())]
            self.ops = []
            for i in range(sg.OperatorsLength()):
                op = sg.Operators(i)
                c = m.OperatorCodes(op.OpcodeIndex())
                code = max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
                ins = [int(v) for v in op.InputsAsNumpy()] if op.InputsLength() else []
                outs = [int(v) for v in op.OutputsAsNumpy()] if op.OutputsLength() else []
                self.ops.append((i, self.op_names.get(code, f"code {code}"), ins, outs, op))
        except HwsimError:
            raise
        except Exception as e:  # flatbuffers reads out of bounds on a truncated / corrupt file
            raise HwsimError(f"{where}: truncated or corrupt LiteRT flatbuffer ({type(e).__name__})") from None
        n = len(self.tensors)
        for idx in self.inputs + self.outputs + [t for (_, _, ins, outs, _) in self.ops for t in ins + outs]:
            if not -1 <= idx < n:
                raise HwsimError(f"{where}: tensor index {idx} out of range (the model has {n} tensors)")

    def _tensor(self, m, t, i: int) -> dict:
        shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        typ = self.type_names.get(t.Type(), f"type {t.Type()}")
        data = None
        if 0 < t.Buffer() < m.BuffersLength():
            b = m.Buffers(t.Buffer())
            if b.DataLength():
                raw = b.DataAsNumpy()
                dt = {"INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32, "INT64": np.int64,
                      "UINT8": np.uint8, "INT16": np.int16}.get(typ)
                if dt is None:
                    raise HwsimError(f"{self.where}: tensor {i} ({t.Name().decode(errors='replace')!r}): constant of "
                                     f"type {typ}")
                if raw.size != int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize:
                    raise HwsimError(f"{self.where}: tensor {i}: buffer of {raw.size} bytes for shape {list(shape)} "
                                     f"{typ}")
                data = raw.view(dt).reshape(shape)
        q = t.Quantization()
        scale = zp = None
        qdim = 0
        if q is not None and q.ScaleLength():
            scale = q.ScaleAsNumpy().astype(np.float32)
            zp = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(scale.size, np.int64)
            qdim = int(q.QuantizedDimension())
        return {"index": i, "name": t.Name().decode(errors="replace") if t.Name() else f"t{i}", "shape": shape,
                "type": typ, "data": data, "scale": scale, "zp": zp, "qdim": qdim}

    def options(self, op, cls_name: str):
        tab = op.BuiltinOptions()
        if tab is None:
            return None
        o = getattr(self.tfl, cls_name)()
        o.Init(tab.Bytes, tab.Pos)
        return o


class _Importer:
    def __init__(self, model: _Model, where: str):
        self.m = model
        self.where = where
        self.nodes = []
        self.tensors: dict[str, np.ndarray] = {}
        self.grids: dict[str, dict] = {}
        self.layers: dict[str, dict] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.state: dict[int, tuple] = {}  # tflite tensor -> (hwsim tensor, layout, CHW of an NHWC flatten or None)
        self.pads: dict[int, tuple] = {}  # PAD output -> (PAD input, (top, bottom, left, right), op index)
        self.consumers: dict[int, list[int]] = {}
        for (i, _, ins, _, _) in model.ops:
            for t in ins:
                self.consumers.setdefault(t, []).append(i)

    # -------------------------------------------------------------- errors and numbers
    def fail(self, msg: str):
        raise HwsimError(f"{self.where}: {msg}")

    def op_fail(self, i: int, name: str, why: str):
        raise HwsimError(f"{self.where}: operator {i} ({name}): {why}")

    def T(self, idx: int) -> dict:
        return self.m.tensors[idx]

    def grid(self, i: int, name: str, idx: int) -> dict:
        """The per-tensor int8 grid of an activation tensor."""
        t = self.T(idx)
        if t["type"] != "INT8":
            self.op_fail(i, name, f"tensor {idx} ({t['name']!r}) is {t['type']} (hwsim imports int8 LiteRT models: "
                                  "full-integer quantization with int8 activations)")
        if t["scale"] is None or t["scale"].size != 1 or t["zp"].size != 1:
            self.op_fail(i, name, f"tensor {idx} ({t['name']!r}): activations need one scale and zero point, "
                                  f"got {0 if t['scale'] is None else t['scale'].size}")
        s = float(t["scale"][0])
        if not (np.isfinite(s) and s > 0) or not -128 <= int(t["zp"][0]) <= 127:
            self.op_fail(i, name, f"tensor {idx}: scale {s} / zero point {int(t['zp'][0])} (allowed: a positive "
                                  "finite scale, a zero point in [-128, 127])")
        return {"scale": s, "zero_point": int(t["zp"][0]), "dtype": "int8"}

    def const(self, i: int, name: str, idx: int, what: str) -> np.ndarray:
        t = self.T(idx)
        if t["data"] is None:
            self.op_fail(i, name, f"{what} (tensor {idx}, {t['name']!r}) is not a constant")
        return t["data"]

    def src(self, i: int, name: str, idx: int) -> tuple:
        if idx in self.pads:
            self.op_fail(i, name, "reads a PAD output; hwsim folds PAD only into the convolution that reads it")
        if idx not in self.state:
            self.op_fail(i, name, f"input tensor {idx} ({self.T(idx)['name']!r}) is not computed from the model input")
        return self.state[idx]

    # -------------------------------------------------------------- graph building
    def _node(self, name: str, op: str, inputs: list[str], attrs=None, params=None, out: str | None = None) -> str:
        from hwsim.graph import Node

        out = out or name
        self.nodes.append(Node(name, op, list(inputs), [out], dict(attrs or {}), dict(params or {})))
        return out

    def _emit(self, i: int, name: str, op: str, inputs: list[str], out_idx: int, act: int | None = 0,
              attrs=None, params=None, layout: str = "nhwc") -> str:
        """One hwsim node for operator ``i``, its fused activation as a relu / relu6 node after it."""
        base = f"op{i}_{name.lower()}"
        kind = _ACT.get(act, "?") if act is not None else None
        if kind == "?":
            self.op_fail(i, name, f"fused activation {_ACT_NAMES.get(act, act)} (hwsim fuses NONE, RELU, RELU6)")
        if kind:
            self._node(base, op, inputs, attrs, params, out=f"{base}::pre_act")
            out = self._node(f"{base}::{kind}", kind, [f"{base}::pre_act"], out=base)
        else:
            out = self._node(base, op, inputs, attrs, params)
        self.grids[out] = self.grid(i, name, out_idx)
        t = self.T(out_idx)
        self.state[out_idx] = (out, layout, None)
        if layout == "nhwc" and len(t["shape"]) != 4:
            self.op_fail(i, name, f"output shape {list(t['shape'])} (hwsim expects NHWC images here)")
        return out

    def weights(self, i: int, name: str, w_idx: int, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(int8 weights as stored, per-channel scales along ``axis`` (or one), zero points)."""
        t = self.T(w_idx)
        w = self.const(i, name, w_idx, "the weight")
        if t["type"] != "INT8":
            self.op_fail(i, name, f"weights of type {t['type']} (hwsim imports int8 weights; a float or hybrid "
                                  "model is not an int8 model)")
        s, z = t["scale"], t["zp"]
        if s is None:
            self.op_fail(i, name, "int8 weights without a scale")
        if s.size != 1 and (t["qdim"] != axis or s.size != w.shape[axis]):
            self.op_fail(i, name, f"per-channel weight scales on axis {t['qdim']} ({s.size} values) (hwsim supports "
                                  f"per-output-channel scales: axis {axis} here)")
        if z.size not in (1, s.size) or (z != 0).any():
            self.op_fail(i, name, "weight zero points != 0 (LiteRT int8 weights are symmetric)")
        if not (np.all(np.isfinite(s)) and np.all(s > 0)):
            self.op_fail(i, name, "weight scales must be positive and finite")
        return w, s, np.zeros(s.size, np.int64)

    def bias(self, i: int, name: str, ins: list[int], cout: int) -> np.ndarray | None:
        if len(ins) < 3 or ins[2] < 0:
            return None
        t = self.T(ins[2])
        b = self.const(i, name, ins[2], "the bias")
        if t["type"] != "INT32" or b.shape != (cout,):
            self.op_fail(i, name, f"bias of type {t['type']} shape {list(b.shape)} (allowed: int32 [{cout}])")
        return b.astype(np.int32)

    def mac_layer(self, name: str, w_hw: np.ndarray, s: np.ndarray, b: np.ndarray | None, sx: float) -> dict:
        """Given entries of a conv/linear node (hwsim layout weights) and its float params."""
        cout = w_hw.shape[0]
        sw = np.broadcast_to(s, (cout,)).astype(np.float32)
        shp = (-1,) + (1,) * (w_hw.ndim - 1)
        wf = (w_hw.astype(np.float32) * sw.reshape(shp)).astype(np.float32)
        params = {"weight": wf}
        self.layers[name] = {"w_scale": [float(v) for v in s], "w_zero_point": [0] * s.size, "w_dtype": "int8"}
        self.arrays[f"{name}.weight"] = np.ascontiguousarray(w_hw.astype(np.int8))
        if b is not None:
            self.arrays[f"{name}.bias"] = b
            params["bias"] = (b.astype(np.float64) * (np.float32(sx) * sw).astype(np.float64)).astype(np.float32)
        return params

    def params_of(self, name: str, params: dict) -> dict:
        out = {}
        for role, arr in params.items():
            key = f"{name}.{role}"
            self.tensors[key] = np.asarray(arr, np.float32)
            out[role] = key
        return out

    # -------------------------------------------------------------- operators
    def _padding(self, i, name, o, x_idx, kh, kw, sh, sw, dh=1, dw=1) -> list[int]:
        from hwsim.graph import MAX_SPATIAL

        for what, v in (("kernel", kh), ("kernel", kw), ("stride", sh), ("stride", sw), ("dilation", dh),
                        ("dilation", dw)):
            if not 1 <= v <= MAX_SPATIAL:
                self.op_fail(i, name, f"{what} {v} (allowed 1..{MAX_SPATIAL})")
        if len(self.T(x_idx)["shape"]) != 4:
            self.op_fail(i, name, f"input of shape {list(self.T(x_idx)['shape'])} (NHWC images: rank 4)")
        _, h, w, _ = self.T(x_idx)["shape"]
        if o.Padding() == 1:  # VALID
            return [0, 0, 0, 0]
        if o.Padding() != 0:
            self.op_fail(i, name, f"padding {o.Padding()} (SAME or VALID)")
        out = []
        for n, k, s, d in ((h, kh, sh, dh), (w, kw, sw, dw)):  # TFLite ComputePaddingHeightWidth (SAME)
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            out += [total // 2, total - total // 2]
        return out

    def _conv_input(self, i, name, x_idx, pad: list[int]) -> tuple[str, list[int], int]:
        """The conv's hwsim input and padding, a PAD before it folded in."""
        if x_idx in self.pads:
            src, p, _ = self.pads[x_idx]
            if any(pad):  # the conv pads the PAD's output: both add up only when the conv's own padding is 0
                self.op_fail(i, name, "a SAME convolution after a PAD (hwsim folds PAD into a VALID convolution)")
            return self.state[src][0], list(p), src
        return self.src(i, name, x_idx)[0], pad, x_idx

    def op_CONV_2D(self, i, name, ins, outs, op, depthwise=False):
        o = self.m.options(op, "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
        x_idx = ins[0]
        if self.T(x_idx)["data"] is not None:
            self.op_fail(i, name, "a constant input")
        w, s, _ = self.weights(i, name, ins[1], 3 if depthwise else 0)
        if depthwise:  # [1, kh, kw, Cout] -> [Cout, 1, kh, kw]
            if w.ndim != 4 or w.shape[0] != 1:
                self.op_fail(i, name, f"depthwise weights of shape {list(w.shape)} (expected [1, kh, kw, Cout])")
            w_hw = w[0].transpose(2, 0, 1)[:, None]
        else:  # OHWI -> OIHW
            if w.ndim != 4:
                self.op_fail(i, name, f"weights of shape {list(w.shape)} (expected [Cout, kh, kw, Cin])")
            w_hw = w.transpose(0, 3, 1, 2)
        cout, _, kh, kw = w_hw.shape
        sh, sw_, dh, dw = o.StrideH(), o.StrideW(), o.DilationHFactor(), o.DilationWFactor()
        pad = self._padding(i, name, o, x_idx, kh, kw, sh, sw_, dh, dw)
        x, pad, real_x = self._conv_input(i, name, x_idx, pad)
        cin = self.T(real_x)["shape"][3]
        groups = 1
        if depthwise:
            if cout % cin:
                self.op_fail(i, name, f"{cout} output channels for {cin} input channels")
            groups = cin
        elif cin != w_hw.shape[1]:
            self.op_fail(i, name, f"{w_hw.shape[1]} weight input channels for a {cin}-channel input (grouped "
                                  "CONV_2D is not read)")
        sx = self.grid(i, name, real_x)["scale"]
        base = f"op{i}_{name.lower()}"
        params = self.params_of(base, self.mac_layer(base, w_hw, s, self.bias(i, name, ins, cout), sx))
        attrs = {"stride": [sh, sw_], "padding": pad, "dilation": [dh, dw], "groups": groups}
        self._emit(i, name, "conv2d", [x], outs[0], o.FusedActivationFunction(), attrs, params)

    def op_DEPTHWISE_CONV_2D(self, i, name, ins, outs, op):
        self.op_CONV_2D(i, name, ins, outs, op, depthwise=True)

    def op_FULLY_CONNECTED(self, i, name, ins, outs, op):
        o = self.m.options(op, "FullyConnectedOptions")
        x, layout, chw = self.src(i, name, ins[0])
        w, s, _ = self.weights(i, name, ins[1], 0)
        if w.ndim != 2:
            self.op_fail(i, name, f"weights of shape {list(w.shape)} (expected [out, in])")
        if o is not None and o.WeightsFormat() != 0:
            self.op_fail(i, name, "shuffled weights (weights_format DEFAULT only)")
        if layout == "nhwc":  # FULLY_CONNECTED flattens its input: NHWC order
            c, h, w_ = self._chw(ins[0])
            x = self._node(f"op{i}_flatten", "flatten", [x])
            chw = (c, h, w_)
        if chw is not None and chw[1] * chw[2] > 1:  # NHWC flatten index (h W + w) C + c -> hwsim's c H W + h W + w
            c, h, w_ = chw
            perm = np.arange(c * h * w_).reshape(h, w_, c).transpose(2, 0, 1).ravel()  # hwsim k -> tflite k
            w = w[:, perm]
        if w.shape[1] != (np.prod(chw) if chw else self._flat_len(ins[0])):
            self.op_fail(i, name, f"weights [out, {w.shape[1]}] for an input of {np.prod(chw) if chw else '?'} values")
        base = f"op{i}_{name.lower()}"
        sx = self.grid(i, name, ins[0])["scale"]
        params = self.params_of(base, self.mac_layer(base, w, s, self.bias(i, name, ins, w.shape[0]), sx))
        self._emit(i, name, "linear", [x], outs[0], o.FusedActivationFunction() if o else 0, {}, params, layout="flat")

    def _chw(self, idx: int) -> tuple[int, int, int]:
        _, h, w, c = self.T(idx)["shape"]
        return c, h, w

    def _flat_len(self, idx: int) -> int:
        return int(self.T(idx)["shape"][-1])

    def _binary(self, i, name, ins, outs, op, hw_op: str, opt: str):
        o = self.m.options(op, opt)
        a, la, _ = self.src(i, name, ins[0])
        b, lb, _ = self.src(i, name, ins[1])
        sa, sb = self.T(ins[0])["shape"], self.T(ins[1])["shape"]
        if la != "nhwc" or lb != "nhwc":
            self.op_fail(i, name, "operands that are not NHWC images")
        if hw_op == "add" and sa != sb:
            self.op_fail(i, name, f"broadcasting ADD {list(sa)} + {list(sb)} (hwsim's add takes equal shapes)")
        self._emit(i, name, hw_op, [a, b], outs[0], o.FusedActivationFunction() if o else 0)

    def op_ADD(self, i, name, ins, outs, op):
        self._binary(i, name, ins, outs, op, "add", "AddOptions")

    def op_MUL(self, i, name, ins, outs, op):
        self._binary(i, name, ins, outs, op, "mul", "MulOptions")

    def op_MEAN(self, i, name, ins, outs, op):
        o = self.m.options(op, "ReducerOptions")
        x, layout, _ = self.src(i, name, ins[0])
        axes = sorted(int(v) % 4 for v in np.ravel(self.const(i, name, ins[1], "the axes")))
        if layout != "nhwc" or axes != [1, 2]:
            self.op_fail(i, name, f"MEAN over axes {axes} (hwsim's mean reduces H and W: axes [1, 2] of NHWC)")
        keep = bool(o.KeepDims()) if o is not None else False
        self._emit(i, name, "mean", [x], outs[0], None, {"keepdims": keep}, layout="nhwc" if keep else "flat")

    def _pool(self, i, name, ins, outs, op, hw_op: str):
        o = self.m.options(op, "Pool2DOptions")
        x, layout, _ = self.src(i, name, ins[0])
        kh, kw, sh, sw_ = o.FilterHeight(), o.FilterWidth(), o.StrideH(), o.StrideW()
        pad = self._padding(i, name, o, ins[0], kh, kw, sh, sw_)
        attrs = {"kernel": [kh, kw], "stride": [sh, sw_], "padding": pad}
        if hw_op == "avgpool2d":  # TFLite divides by the taps inside the image, rounding (sum +- n/2) / n
            attrs["count_include_pad"] = False
        self._emit(i, name, hw_op, [x], outs[0], o.FusedActivationFunction(), attrs)

    def op_AVERAGE_POOL_2D(self, i, name, ins, outs, op):
        self._pool(i, name, ins, outs, op, "avgpool2d")

    def op_MAX_POOL_2D(self, i, name, ins, outs, op):
        self._pool(i, name, ins, outs, op, "maxpool2d")

    def op_CONCATENATION(self, i, name, ins, outs, op):
        o = self.m.options(op, "ConcatenationOptions")
        xs = [self.src(i, name, t) for t in ins]
        if any(lay != "nhwc" for _, lay, _ in xs) or o.Axis() % 4 != 3:
            self.op_fail(i, name, f"concatenation on axis {o.Axis()} (hwsim concatenates NHWC channels: axis 3)")
        self._emit(i, name, "concat", [x for x, _, _ in xs], outs[0], o.FusedActivationFunction(), {"axis": 1})

    def op_RESHAPE(self, i, name, ins, outs, op):
        x, layout, chw = self.src(i, name, ins[0])
        shape = self.T(outs[0])["shape"]
        if len(shape) != 2 or shape[0] != 1:
            self.op_fail(i, name, f"reshape to {list(shape)} (hwsim reads a reshape to a flat vector [1, K])")
        if layout == "nhwc":
            c, h, w = self._chw(ins[0])
            out = self._node(f"op{i}_flatten", "flatten", [x])
            self.state[outs[0]] = (out, "flat", (c, h, w))
        else:
            self.state[outs[0]] = (x, layout, chw)
        if self.grid(i, name, outs[0]) != self.grid(i, name, ins[0]):
            self.op_fail(i, name, "output grid differs from its input's")

    def op_PAD(self, i, name, ins, outs, op):
        self.src(i, name, ins[0])
        p = np.asarray(self.const(i, name, ins[1], "the paddings"), np.int64)
        if p.shape != (4, 2) or p[0].any() or p[3].any() or (p < 0).any():
            self.op_fail(i, name, f"paddings {p.tolist()} (hwsim folds non-negative H, W padding of NHWC)")
        if any(self.m.ops[c][1] not in ("CONV_2D", "DEPTHWISE_CONV_2D") for c in self.consumers.get(outs[0], [])):
            self.op_fail(i, name, "a PAD not read by a convolution (hwsim folds PAD into the convolution after it)")
        if self.grid(i, name, outs[0]) != self.grid(i, name, ins[0]):
            self.op_fail(i, name, "output grid differs from its input's")
        self.pads[outs[0]] = (ins[0], (int(p[1, 0]), int(p[1, 1]), int(p[2, 0]), int(p[2, 1])), i)

    def op_LOGISTIC(self, i, name, ins, outs, op):
        x, layout, _ = self.src(i, name, ins[0])
        self._emit(i, name, "sigmoid", [x], outs[0], None, layout=layout)

    def op_HARD_SWISH(self, i, name, ins, outs, op):
        x, layout, _ = self.src(i, name, ins[0])
        self._emit(i, name, "hardswish", [x], outs[0], None, layout=layout)

    # -------------------------------------------------------------- whole model
    def run(self, mean, std, input_shape):
        from hwsim.graph import Graph, InputSpec
        from hwsim.importers import normalisation, parse_shape

        m = self.m
        if len(m.inputs) != 1 or len(m.outputs) != 1:
            self.fail(f"{len(m.inputs)} inputs and {len(m.outputs)} outputs (hwsim models have one of each)")
        types = {t["type"] for t in m.tensors}
        if not any(t["scale"] is not None for t in m.tensors) or types <= {"FLOAT32", "INT32", "INT64"}:
            self.fail("a float LiteRT model (no int8 tensors): hwsim imports int8 LiteRT models (convert with "
                      "full-integer quantization); import a float model from its ONNX export")
        in_idx = m.inputs[0]
        t_in = self.T(in_idx)
        if len(t_in["shape"]) != 4:
            self.fail(f"input tensor {in_idx} ({t_in['name']!r}) of shape {list(t_in['shape'])} (hwsim reads NHWC "
                      "images: rank 4)")
        _, h, w, c = t_in["shape"]
        given_shape = parse_shape(input_shape)
        if given_shape is not None and tuple(given_shape) != (c, h, w):
            self.fail(f"--input-shape {','.join(map(str, given_shape))}: the model's input is fixed at "
                      f"{c},{h},{w} (C,H,W)")
        in_name = "input"
        if t_in["type"] == "FLOAT32":  # the QUANTIZE that reads it gives the grid
            q = [k for k, (_, nm, ins, _, _) in enumerate(m.ops) if in_idx in ins]
            if len(q) != 1 or m.ops[q[0]][1] != "QUANTIZE":
                self.fail(f"float input tensor {in_idx} is not read by one QUANTIZE (a float or hybrid model: hwsim "
                          "imports full-integer int8 models)")
            k, nm, ins, outs, _ = m.ops[q[0]]
            self._input_grid = self.grid(k, nm, outs[0])
            self.state[outs[0]] = (in_name, "nhwc", None)
            skip = {q[0]}
        else:
            self._input_grid = self.grid(-1, "input", in_idx)
            self.state[in_idx] = (in_name, "nhwc", None)
            skip = set()
        self.grids[in_name] = self._input_grid
        out_idx = m.outputs[0]
        for (i, name, ins, outs, op) in m.ops:
            if i in skip:
                continue
            if name == "DEQUANTIZE" and outs == [out_idx]:
                self.state[out_idx] = self.src(i, name, ins[0])
                continue
            handler = getattr(self, f"op_{name}", None)
            if handler is None:
                self.op_fail(i, name, f"not supported by the hwsim LiteRT importer (supported: {', '.join(SUPPORTED)})")
            if name != "PAD" and self.T(outs[0])["type"] != "INT8":
                self.grid(i, name, outs[0])  # the one-line type error
            try:
                handler(i, name, ins, outs, op)
            except HwsimError:
                raise
            except Exception as e:  # the flatbuffer's lazily read options, out of bounds in a corrupt file
                if not _from_flatbuffers(e):
                    raise
                self.op_fail(i, name, f"truncated or corrupt options ({type(e).__name__})")
        if out_idx not in self.state:
            self.fail(f"output tensor {out_idx} is not computed from the input")
        out_name = self.state[out_idx][0]
        if out_name == in_name:
            self.fail("the output is the input itself")
        mean_t, std_t = normalisation(mean, std, c)
        g = Graph(inputs=[InputSpec(in_name, (c, h, w), mean_t, std_t)], nodes=self.nodes, outputs=[out_name],
                  tensors=self.tensors, metadata={"source": SOURCE})
        return g


SUPPORTED = ("QUANTIZE (input)", "DEQUANTIZE (output)") + tuple(
    sorted(k[3:] for k in vars(_Importer) if k.startswith("op_")))


def _from_flatbuffers(e: BaseException) -> bool:
    """Whether an exception was raised while reading the flatbuffer (the flatbuffers / tflite packages)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    f = tb.tb_frame.f_code.co_filename.replace("\\", "/") if tb is not None else ""
    return "/flatbuffers/" in f or "/tflite/" in f


def is_tflite(head: bytes) -> bool:
    return len(head) >= 8 and head[4:8] == b"TFL3"


def import_tflite(path: str | os.PathLike, mean=None, std=None, input_shape=None):
    """An int8 LiteRT model as an hwsim Graph: the dequantized float graph with the file's own quantization in
    ``metadata["given"]`` and LiteRT's profile as the model's default (``metadata["default_profile"]``)."""
    from hwsim.given import Given
    from hwsim.graph import validate

    where = str(path)
    buf = safeio.read_bytes(path, where, MAX_FILE_BYTES)
    model = _Model(buf, where)
    imp = _Importer(model, where)
    g = imp.run(mean, std, input_shape)
    used = {t for n in g.nodes for t in n.outputs} | {g.inputs[0].name}
    grids = {t: gd for t, gd in imp.grids.items() if t in used}
    g.metadata.update({"tflite_file": Path(path).name, "quantized": SOURCE, "default_profile": DEFAULT_PROFILE,
                       "given": Given(ENGINE, SOURCE, DEFAULT_PROFILE, grids, imp.layers, imp.arrays)})
    validate(g, where=f"{path} (imported)")
    return g
