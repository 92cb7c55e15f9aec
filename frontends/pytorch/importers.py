"""PyTorch int8 models imported with their own numbers (issue 17; DESIGN.md "Given quantization").

:func:`import_torch_int8` reads a ``torch.ao.quantization.quantize_fx.convert_fx`` GraphModule (the
reference-free converted model: ``torch.quantize_per_tensor`` of the input, quantized modules
``nnq.Conv2d`` / ``nniq.ConvReLU2d`` / ``nnq.Linear`` / ``nniq.LinearReLU`` with their output
``scale`` / ``zero_point`` and packed weights, ``torch.ops.quantized.add`` / ``add_relu``, max /
adaptive-average pools, flatten, ``dequantize``) into an hwsim Graph: the dequantized float model
(weights ``(w_q - z_w) * s_w``), with the given quantization (:class:`hwsim.given.Given`) in
``metadata["given"]`` and the profile of the quantized engine that packed it as ``metadata["default_profile"]``
(``int8-pytorch``: fbgemm; ``int8-pytorch-onednn``: the x86 engine on a VNNI CPU, convolutions through oneDNN).

:func:`import_pt2e` reads a pt2e model (``torch.export`` -> torchao's ``prepare_pt2e`` / ``convert_pt2e``, the
Q/DQ reference representation) the same way, with ``int8-pytorch-inductor`` (what ``torch.compile``'s x86 int8
lowering computes) as its default profile; :func:`load_pt2` / :func:`import_pt2` read a ``torch.export.save``
archive of one without unpickling (``hwsim import model.pt2``).

The bias stays a float: PyTorch's quantized conv / linear keep ``bias()`` in float32 and add
``fl32(b / fl32(s_x * s_w))`` to the float32 accumulator before the multiply (fbgemm
``ReQuantizeOutput`` with a float bias; the ``bias.form = "float32"`` profile key, verified at op level in
tests/core/test_torch_engine.py), so :class:`Given` carries a float32 ``<node>.bias`` here, not an int32 one.
"""

from __future__ import annotations

import operator
import warnings

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from hwsim.errors import HwsimError

ENGINE = "pytorch"
SOURCE_FX = "torch.ao.fx"
# the profile that reproduces a converted model's integers, by the quantized engine that packed its weights:
# fbgemm (conv and linear) or x86 on a VNNI CPU (conv through oneDNN, linear through fbgemm), whose oneDNN kernels
# apply the scales as their product on an AMX CPU and one after the other without AMX
ENGINE_PROFILES = {"fbgemm": "int8-pytorch", "x86": "int8-pytorch-onednn", "x86-noamx": "int8-pytorch-onednn-vnni",
                   "x86-novnni": "int8-pytorch"}


def engine_profile(engine: str | None = None) -> str:
    """The default profile for models packed by ``engine`` (default: torch.backends.quantized.engine now): PyTorch's
    x86 engine sends convolutions to oneDNN when the CPU has AVX512-VNNI (aten/src/ATen/native/quantized/cpu/
    OnednnUtils.h, should_use_onednn_quant), else to fbgemm; oneDNN's kernels there differ with AMX (``amx_tile``:
    int8-pytorch-onednn) and without (int8-pytorch-onednn-vnni); one-line error for other engines."""
    engine = engine or torch.backends.quantized.engine
    if engine == "x86":
        from hwsim.cpu import cpu_flags

        flags = cpu_flags()
        engine = ("x86-novnni" if "avx512_vnni" not in flags else "x86" if "amx_tile" in flags else "x86-noamx")
    if engine not in ENGINE_PROFILES:
        raise HwsimError(f"torch int8 import: quantized engine {engine!r} (hwsim reproduces fbgemm and x86)")
    return ENGINE_PROFILES[engine]

_DTYPES = {torch.quint8: "uint8", torch.qint8: "int8"}
_TORCH_DTYPES = {v: k for k, v in _DTYPES.items()}


def _supported() -> str:
    return ("quantize_per_tensor, nnq.Conv2d, nniq.ConvReLU2d, nnq.Linear, nniq.LinearReLU, quantized add / add_relu, "
            "quantized mul, nnq.Hardswish, Hardsigmoid, Sigmoid, Tanh, MaxPool2d, AdaptiveAvgPool2d(1), flatten, ReLU, "
            "ReLU6, Identity, dequantize")


class _FxImporter:
    def __init__(self, gm: fx.GraphModule, input_shape, mean, std, where: str):
        from hwsim.graph import GraphBuilder
        from hwsim.importers import normalisation

        self.gm, self.where = gm, where
        mean, std = normalisation(mean, std, int(input_shape[0]))
        self.b = GraphBuilder(input_shape, mean, std)
        self.env: dict[str, str] = {}
        self.grids: dict[str, dict] = {}
        self.layers: dict[str, dict] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def fail(self, node: fx.Node, why: str) -> None:
        tgt = getattr(node.target, "__name__", None) or str(node.target)
        raise HwsimError(f"{self.where}: fx node {node.name!r} (op {node.op}, target {tgt}) {why}; supported: "
                         f"{_supported()}")

    def t(self, node: fx.Node, a) -> str:
        v = self.env.get(a.name) if isinstance(a, fx.Node) else None
        if not isinstance(v, str):
            self.fail(node, f"has a non-tensor argument {a!r}")
        return v

    def const(self, node: fx.Node, a):
        if isinstance(a, fx.Node) and a.op == "get_attr":
            v = getattr(self.gm, a.target)
            return v.item() if isinstance(v, torch.Tensor) else v
        if isinstance(a, (int, float)):
            return a
        self.fail(node, f"has a non-constant quantization parameter {a!r}")

    def grid(self, t: str, scale, zero_point, dtype) -> None:
        if dtype not in _DTYPES:
            raise HwsimError(f"{self.where}: tensor {t!r} of type {dtype} (hwsim reads quint8 / qint8 activations)")
        self.grids[t] = {"scale": float(np.float32(scale)), "zero_point": int(zero_point), "dtype": _DTYPES[dtype]}

    def mac(self, node: fx.Node, m: nn.Module, x: str) -> str:
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq

        name = node.name
        w = m.weight()
        b = m.bias()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            if w.q_per_channel_axis() != 0:
                self.fail(node, f"has per-channel weight scales on axis {w.q_per_channel_axis()} (hwsim: axis 0)")
            s = w.q_per_channel_scales().numpy().astype(np.float32)
            z = w.q_per_channel_zero_points().numpy().astype(np.int64)
        else:
            s = np.array([w.q_scale()], np.float32)
            z = np.array([w.q_zero_point()], np.int64)
        wq = w.int_repr().numpy().astype(np.int64)
        shp = (-1,) + (1,) * (wq.ndim - 1)
        wf = ((wq - z.reshape(shp)).astype(np.float32) * s.reshape(shp)).astype(np.float32)
        bf = None if b is None else b.detach().numpy().astype(np.float32)
        if isinstance(m, (nnq.Conv2d, nniq.ConvReLU2d)):
            if m.padding_mode != "zeros":
                self.fail(node, f"has padding_mode {m.padding_mode!r} (hwsim: 'zeros')")
            y = self.b.conv2d(name, x, wf, bf, m.stride, m.padding, m.dilation, m.groups)
        else:
            y = self.b.linear(name, x, wf, bf)
        self.layers[name] = {"w_scale": [float(v) for v in s], "w_zero_point": [int(v) for v in z],
                             "w_dtype": _DTYPES[w.dtype]}
        self.arrays[f"{name}.weight"] = np.ascontiguousarray(wq.astype(np.int8 if w.dtype == torch.qint8 else np.uint8))
        if bf is not None:
            self.arrays[f"{name}.bias"] = bf
        if isinstance(m, (nniq.ConvReLU2d, nniq.LinearReLU)):
            y = self.b.relu(f"{name}::relu", y)
        self.grid(y, m.scale, m.zero_point, torch.quint8)  # quantized conv / linear write quint8
        return y

    def module(self, node: fx.Node, m: nn.Module, x: str) -> str:
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq

        if isinstance(m, (nnq.Conv2d, nniq.ConvReLU2d, nnq.Linear, nniq.LinearReLU)) and type(m) in (
                nnq.Conv2d, nniq.ConvReLU2d, nnq.Linear, nniq.LinearReLU):
            return self.mac(node, m, x)
        if isinstance(m, nn.MaxPool2d):
            if m.ceil_mode or m.dilation not in (1, (1, 1)):
                self.fail(node, "is a MaxPool2d with ceil_mode or dilation (hwsim: neither)")
            return self.keep(node, self.b.maxpool2d(node.name, x, m.kernel_size, m.stride, m.padding), x)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if m.output_size not in (1, (1, 1)):
                self.fail(node, f"is an AdaptiveAvgPool2d to {m.output_size} (hwsim: 1)")
            return self.keep(node, self.b.global_avgpool(node.name, x), x)
        if isinstance(m, nn.ReLU):
            return self.keep(node, self.b.relu(node.name, x), x)
        if isinstance(m, nn.ReLU6):  # quantized relu6 (qrelu.cpp): clamp(q, z, quantize_val(s, z, 6.0)), same grid
            return self.keep(node, self.b.relu6(node.name, x), x)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x
        if isinstance(m, nnq.Hardswish):  # quantized::hardswish (qhardswish.cpp): the module's own output grid
            y = self.b._add(node.name, "hardswish", [x])
            self.grid(y, m.scale, m.zero_point, _TORCH_DTYPES[self.grids[x]["dtype"]])
            return y
        if isinstance(m, (nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)):
            # the float module on a quantized tensor runs PyTorch's quantized kernel (qhardsigmoid.cpp, qsigmoid.cpp,
            # qtanh.cpp), whose output grid is fixed (hwsim.ops.activation.torch_output_grid)
            from hwsim.ops.activation import torch_output_grid

            fn = {nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}[type(m)]
            y = self.b._add(node.name, fn, [x])
            dt = _TORCH_DTYPES[self.grids[x]["dtype"]]
            self.grid(y, *torch_output_grid(fn, "quint8" if dt == torch.quint8 else "qint8"), dt)
            return y
        self.fail(node, f"is a module {type(m).__name__} hwsim does not import")

    def keep(self, node, y: str, x: str) -> str:
        """An op PyTorch runs on the integers, its output on its input's grid (max pool, quantized
        adaptive_avg_pool2d, relu, flatten: the quantized tensor keeps q_scale / q_zero_point)."""
        self.grids[y] = dict(self.grids[x])
        return y

    def function(self, node: fx.Node):
        f, a = node.target, node.args
        if f is torch.quantize_per_tensor:
            if self.t(node, a[0]) != "float_input" or "input" in self.grids:
                self.fail(node, "quantizes a tensor other than the model input")
            self.grid("input", self.const(node, a[1]), self.const(node, a[2]), a[3])
            return "input"
        if f in (torch.ops.quantized.add, torch.ops.quantized.add_relu):
            if node.kwargs:
                self.fail(node, "has keyword arguments")
            x0, x1 = self.t(node, a[0]), self.t(node, a[1])
            y = self.b.add(node.name, x0, x1)
            if f is torch.ops.quantized.add_relu:
                y = self.b.relu(f"{node.name}::relu", y)
            self.grid(y, self.const(node, a[2]), self.const(node, a[3]), torch.quint8)
            return y
        if f is torch.ops.quantized.mul:  # quantized::mul (qmul.cpp; profile key requant.mul_form = "torch")
            if node.kwargs:
                self.fail(node, "has keyword arguments")
            y = self.b._add(node.name, "mul", [self.t(node, a[0]), self.t(node, a[1])])
            self.grid(y, self.const(node, a[2]), self.const(node, a[3]), torch.quint8)
            return y
        if f is torch.flatten or (node.op == "call_method" and f == "flatten"):
            if tuple(a[1:]) not in ((1,), (1, -1)) or node.kwargs:
                self.fail(node, "flattens other than from dim 1")
            x = self.t(node, a[0])
            return self.keep(node, self.b.flatten(node.name, x), x)
        if node.op == "call_method" and f == "dequantize":
            if any(u.op != "output" for u in node.users):
                self.fail(node, "dequantizes in the middle of the graph (a float section: hwsim runs integers "
                                "from the input's quantize_per_tensor to the output's dequantize)")
            return self.t(node, a[0])
        if f in (torch.relu, torch.nn.functional.relu) or (node.op == "call_method" and f == "relu"):
            x = self.t(node, a[0])
            return self.keep(node, self.b.relu(node.name, x), x)
        self.fail(node, "is not supported by hwsim's PyTorch int8 import")

    def run(self):
        from hwsim.given import Given
        from hwsim.graph import validate

        outputs = []
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.env:
                    self.fail(node, "is a second input (only one input is supported)")
                self.env[node.name] = "float_input"
            elif node.op == "get_attr":
                continue
            elif node.op == "call_module":
                x = self.t(node, node.args[0])
                if x == "float_input":
                    self.fail(node, "runs on the float input (the model must start with quantize_per_tensor)")
                self.env[node.name] = self.module(node, self.gm.get_submodule(node.target), x)
            elif node.op in ("call_function", "call_method"):
                self.env[node.name] = self.function(node)
            elif node.op == "output":
                outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else [node.args[0]]
                outputs = [self.t(node, o) for o in outs]
            else:
                self.fail(node, "is not supported")
        if "input" not in self.grids:
            raise HwsimError(f"{self.where}: no torch.quantize_per_tensor of the input (not a converted int8 model)")
        g = self.b.build(outputs=outputs, metadata={})
        g.metadata.update({"quantized": SOURCE_FX, "torch_engine": self.engine, "default_profile": self.profile,
                           "given": Given(ENGINE, SOURCE_FX, self.profile, self.grids, self.layers, self.arrays)})
        validate(g, where=f"{self.where} (imported)")
        return g


def import_torch_int8(gm: fx.GraphModule, input_shape, mean=None, std=None, engine: str | None = None,
                      where: str = "torch int8 model"):
    """The hwsim Graph of a torch.ao FX-converted int8 GraphModule (module docstring): the dequantized float graph
    with its given quantization in ``metadata["given"]``; ``input_shape`` (C, H, W), ``mean`` / ``std`` the
    normalisation the model's input gets (pixels in [0, 1], then ``(x - mean) / std``); ``engine`` the quantized
    engine its weights were packed with (default: torch.backends.quantized.engine), which picks the default
    profile (:func:`engine_profile`)."""
    from hwsim.importers import parse_shape

    if isinstance(gm, torch.export.ExportedProgram) or (isinstance(gm, fx.GraphModule) and any(
            str(n.target).startswith("quantized_decomposed.") for n in gm.graph.nodes)):
        return import_pt2e(gm, input_shape, mean, std)  # a pt2e model (convert_pt2e's Q/DQ graph)
    if not isinstance(gm, fx.GraphModule):
        raise HwsimError(f"{where}: a {type(gm).__name__}, not a torch.fx GraphModule (convert_fx's output)")
    imp = _FxImporter(gm, parse_shape(input_shape), mean, std, where)
    imp.engine = engine or torch.backends.quantized.engine
    imp.profile = engine_profile(imp.engine)
    return imp.run()


# ----------------------------------------------------------------------------- pt2e (torch.export + torchao)
SOURCE_PT2E = "torch.pt2e"


def _pt2e_supported() -> str:
    return ("quantize_per_tensor / dequantize_per_tensor (uint8 / int8), dequantize_per_channel / per_tensor of "
            "constant int8 weights, aten conv2d, linear, relu, relu6 / hardtanh(0, 6), add of two quantized tensors or of "
            "a conv2d's float output and a quantized tensor (oneDNN's sum post-op), hardswish of a conv2d / linear "
            "output, the squeeze-excite mul of a conv (+ relu / hardswish) output and hardsigmoid of a conv output, "
            "max_pool2d, adaptive_avg_pool2d / mean to 1x1, flatten, view / reshape to [N, -1], dropout / clone")


class _Pt2eImporter(_FxImporter):
    """A pt2e converted graph (``convert_pt2e``, the Q/DQ reference representation): quantize_per_tensor /
    dequantize_per_tensor pairs carry every activation grid, dequantize_per_channel of a constant int8 tensor the
    weights; the float ops between them (conv2d, linear, relu, add, pools, flatten) become hwsim nodes. Every tensor a
    MAC layer, add or pool writes must be quantized before its next use (that is what the engine runs on integers):
    a float tensor used by anything but a relu, a max pool / flatten (moves the quantize commutes with, zero point
    0), an add (a conv2d output: the x86 quantizer leaves it unquantized and inductor fuses the add into the conv as
    oneDNN's sum post-op, profile key requant.add_form = "onednn_sum"; the conv's output gets the add's grid, what
    an engine without the fusion would requantize it to), a hard-swish / hard-sigmoid (MobileNetV3: inductor fuses
    them with the conv / linear; the squeeze-excite mul of a conv (+ relu / hard-swish) output and a hard-sigmoid of a
    conv output, one C++ kernel; profile keys requant.activation_form / mul_form = "inductor", which recompute the
    float values from the MAC layers' accumulators; the never-quantized tensors get the grids set below) or a
    quantize_per_tensor is refused in one line naming the node; the graph output may be a conv2d / linear output
    never quantized, the float-output last layer (:meth:`float_output`)."""

    def fail(self, node: fx.Node, why: str) -> None:
        tgt = getattr(node.target, "__name__", None) or str(node.target)
        raise HwsimError(f"{self.where}: pt2e node {node.name!r} (op {node.op}, target {tgt}) {why}; supported: "
                         f"{_pt2e_supported()}")

    def attr(self, node: fx.Node, a):
        """A constant argument: a get_attr node's tensor, or the value."""
        if isinstance(a, fx.Node):
            if a.op != "get_attr":
                self.fail(node, f"has a non-constant argument {a.name!r}")
            obj = self.gm
            for part in a.target.split("."):
                obj = getattr(obj, part)
            return obj
        return a

    def scalar(self, node: fx.Node, a):
        v = self.attr(node, a)
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                self.fail(node, "has a per-channel quantization parameter on an activation")
            v = v.item()
        return v

    def qparams(self, node: fx.Node):
        """(scale, zero_point, dtype) of a quantize / dequantize_per_tensor node, checked against the dtype's range."""
        a = node.args
        if len(a) < 6 or node.kwargs.get("out_dtype") not in (None, torch.float32):
            self.fail(node, "has unexpected arguments")
        s, z, lo, hi, dt = self.scalar(node, a[1]), int(self.scalar(node, a[2])), a[3], a[4], a[5]
        if dt not in (torch.uint8, torch.int8) or (lo, hi) != ((0, 255) if dt == torch.uint8 else (-128, 127)):
            self.fail(node, f"quantizes to {dt} [{lo}, {hi}] (hwsim reads uint8 [0, 255] / int8 [-128, 127])")
        if not (np.isfinite(s) and s > 0):
            self.fail(node, f"has scale {s!r} (allowed: finite > 0)")
        return float(s), z, ("uint8" if dt == torch.uint8 else "int8")

    def set_grid(self, node: fx.Node, t: str, s: float, z: int, dt: str) -> None:
        g = {"scale": float(np.float32(s)), "zero_point": int(z), "dtype": dt}
        if t in self.grids and self.grids[t] != g:
            self.fail(node, f"re-quantizes tensor {t!r} from {self.grids[t]} to {g} (hwsim: one grid per tensor)")
        self.grids[t] = g

    def weight(self, node: fx.Node, a):
        """(integer weights, scales, zero points) of a dequantize_per_channel / per_tensor of a constant."""
        if not isinstance(a, fx.Node) or a.op != "call_function" or a.target not in (
                self.q.dequantize_per_channel.default, self.q.dequantize_per_tensor.default):
            self.fail(node, "has a weight that is not a dequantized constant (a float weight: not quantized)")
        wq = self.attr(a, a.args[0])
        if not isinstance(wq, torch.Tensor) or wq.dtype != torch.int8:
            self.fail(a, "dequantizes a weight that is not a constant int8 tensor")
        if a.target == self.q.dequantize_per_channel.default:
            s = self.attr(a, a.args[1]).detach().numpy().astype(np.float32)
            z = self.attr(a, a.args[2]).detach().numpy().astype(np.int64)
            if a.args[3] != 0:
                self.fail(a, f"has per-channel weight scales on axis {a.args[3]} (hwsim: axis 0)")
            lo, hi = a.args[4], a.args[5]
        else:
            s = np.array([self.scalar(a, a.args[1])], np.float32)
            z = np.array([int(self.scalar(a, a.args[2]))], np.int64)
            lo, hi = a.args[3], a.args[4]
        if (lo, hi) not in ((-128, 127), (-127, 127)):
            self.fail(a, f"has a weight range [{lo}, {hi}] (hwsim reads int8 weights)")
        return wq.detach().numpy().astype(np.int64), s, z

    def mac(self, node: fx.Node, x: str) -> str:
        a = node.args
        if node.kwargs:
            self.fail(node, f"has keyword arguments {sorted(node.kwargs)} (hwsim reads positional ones)")
        wq, s, z = self.weight(node, a[1])
        b = self.attr(node, a[2]) if len(a) > 2 else None
        shp = (-1,) + (1,) * (wq.ndim - 1)
        wf = ((wq - z.reshape(shp)).astype(np.float32) * s.reshape(shp)).astype(np.float32)
        bf = None if b is None else b.detach().numpy().astype(np.float32)
        name = node.name
        if node.target == torch.ops.aten.conv2d.default:
            # aten.conv2d(input, weight, bias, stride=1, padding=0, dilation=1, groups=1): the trailing defaults
            stride, padding, dilation, groups = (list(a[3:]) + [1, 0, 1, 1][max(len(a) - 3, 0):])[:4]
            if isinstance(padding, str):
                self.fail(node, f"has padding {padding!r} (hwsim: explicit pads)")
            y = self.b.conv2d(name, x, wf, bf, stride, padding, dilation, groups)
        else:
            y = self.b.linear(name, x, wf, bf)
        self.mac_in[y], self.mac_name[y] = x, name
        self.layers[name] = {"w_scale": [float(v) for v in s], "w_zero_point": [int(v) for v in z], "w_dtype": "int8"}
        self.arrays[f"{name}.weight"] = np.ascontiguousarray(wq.astype(np.int8))
        if bf is not None:
            self.arrays[f"{name}.bias"] = bf
        return y

    def float_output(self, node: fx.Node, t: str) -> str:
        """The graph output is a conv2d / linear output never quantized (X86InductorQuantizer leaves the last
        layer's output unquantized: torch.compile runs it as oneDNN's qlinear_pointwise with a float32 output, the
        float logits). hwsim marks it (metadata "float_output", read by hwsim.execute: the logits are the layer's
        float value from its accumulators, hwsim.ops.mac.float_output) and gives its integer tensor (what golden
        vectors and per-layer comparisons see) a coarse grid of its input's 8-bit type, symmetric about 0 (scale
        top / 127, zero point 128 for uint8, 0 for int8), covering the layer's whole range: top = the bound
        max_c sum_k |w[c, k] - z_w[c]| * max|x - z_x| * s_x * s_w[c] + |b[c]| from its weights and input grid."""
        x = self.mac_in[t]
        gx = self.grids.get(x)
        if gx is None:
            self.fail(node, f"reads {t!r}, the float output of a layer whose input is not quantized")
        from hwsim.given import INT_TYPES

        lo, hi = INT_TYPES[gx["dtype"]]
        xr = max(hi - gx["zero_point"], gx["zero_point"] - lo)
        name = self.mac_name[t]
        wq = self.arrays[f"{name}.weight"].astype(np.int64)
        zw = np.asarray(self.layers[name]["w_zero_point"], np.int64).reshape((-1,) + (1,) * (wq.ndim - 1))
        sw = np.asarray(self.layers[name]["w_scale"], np.float64)
        b = self.arrays.get(f"{name}.bias")
        top = np.abs(wq - zw).reshape(wq.shape[0], -1).sum(axis=1) * xr * gx["scale"] * sw
        top = float(np.max(top + (0.0 if b is None else np.abs(b.astype(np.float64)))))
        # the input's 8-bit type (the profile's activation format), symmetric about 0: [-top, top] in 255 steps
        self.set_grid(node, t, float(np.float32(top / 127.0)) if top > 0 else 1.0,
                      128 if gx["dtype"] == "uint8" else 0, gx["dtype"])
        self.float_out = t
        return t

    def quantized_in(self, node: fx.Node, a) -> str:
        """The hwsim tensor a dequantize_per_tensor node reads (the op's input must be one)."""
        v = self.env.get(a.name) if isinstance(a, fx.Node) else None
        if not (isinstance(v, tuple) and v[0] == "dq"):
            self.fail(node, f"reads {getattr(a, 'name', a)!r}, a float tensor (not dequantize_per_tensor's output): a "
                            "float section (hwsim models a conv / linear float output as the graph output, the "
                            "float-output last layer, and a hard-swish, hard-sigmoid or squeeze-excite mul on a "
                            "conv's float output fused with it)")
        return v[1]

    def moved_in(self, node: fx.Node, a) -> str:
        """The input of a value-moving op (max pool, flatten): a quantized tensor, or a float MAC (+ relu) output
        whose quantize comes after the moves (recorded in ``self.chain``, resolved by that quantize)."""
        v = self.env.get(a.name) if isinstance(a, fx.Node) else None
        if isinstance(v, tuple) and v[0] == "float" and v[1] not in self.grids:
            self.pending = (v[1], self.chain.get(v[1], [v[1]]))
            return v[1]
        return self.quantized_in(node, a)

    def keep(self, node, y: str, x: str) -> str:
        pending = getattr(self, "pending", None)
        if pending is not None and pending[0] == x:
            self.pending = None
            self.chain[y] = pending[1] + [y]
            return y
        return super().keep(node, y, x)

    def run(self):
        from hwsim.given import Given
        from hwsim.graph import validate

        self.chain: dict[str, list[str]] = {}
        self.pending = None
        self.mac_in: dict[str, str] = {}  # conv2d / linear output -> its input tensor
        self.mac_name: dict[str, str] = {}  # conv2d / linear output -> its layer
        self.float_out = None  # the float-output last layer's output tensor (float_output)
        self.conv_out: set[str] = set()  # float conv2d outputs with one user (an add may fuse them)
        self.sum_of: dict[str, tuple] = {}  # add (+ relu) output -> (the fused conv's output, the add node)
        self.mac_out: set[str] = set()  # every conv2d / linear output
        self.relu_of_mac: set[str] = set()  # a conv2d / linear + relu / relu6 output
        self.hs_of: dict[str, tuple] = {}  # hard-swish output -> (its conv / linear's float output, the node)
        self.gates: set[str] = set()  # hard-sigmoid outputs (the squeeze-excite gate)
        self.q = torch.ops.quantized_decomposed
        aten = torch.ops.aten
        Q = (self.q.quantize_per_tensor.default, self.q.quantize_per_tensor.tensor)
        DQ = (self.q.dequantize_per_tensor.default, self.q.dequantize_per_tensor.tensor)
        DQW = (self.q.dequantize_per_channel.default,)
        outputs = []
        for node in self.gm.graph.nodes:
            f, a = node.target, node.args
            if node.op == "placeholder":
                if "float_input" in self.env.values():
                    self.fail(node, "is a second input (only one input is supported)")
                self.env[node.name] = "float_input"
            elif node.op == "get_attr" or (node.op == "call_module" and not node.users):
                continue  # constants (read where used); torch.export's _guards_fn
            elif node.op == "output":
                outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else [node.args[0]]
                outputs = []
                for o in outs:
                    v = self.env.get(o.name) if isinstance(o, fx.Node) else None
                    if isinstance(v, tuple) and v[0] == "q":
                        outputs.append(v[1])
                    elif (isinstance(v, tuple) and v[0] == "float" and v[1] in self.mac_out and len(outs) == 1
                          and len(o.users) == 1 and v[1] not in self.grids):
                        outputs.append(self.float_output(node, v[1]))
                    else:
                        outputs.append(self.quantized_in(node, o))
            elif node.op != "call_function":
                self.fail(node, "is not a call_function")
            elif f in Q:
                s, z, dt = self.qparams(node)
                src = self.env.get(a[0].name) if isinstance(a[0], fx.Node) else None
                if src == "float_input":
                    if "input" in self.grids:
                        self.fail(node, "quantizes the model input a second time")
                    t = "input"
                elif isinstance(src, tuple) and src[0] == "float":
                    t = src[1]
                    moved = self.chain.get(t, [t])
                    if len(moved) > 1:
                        # a MAC output moved in float (max pool, flatten) before its quantize: the quantize commutes
                        # with the moves (monotonic), so the MAC output gets this grid; inductor's standalone
                        # quantize adds the zero point after rounding, the fused requant before: equal only for z = 0
                        if z != 0:
                            self.fail(node, "quantizes a float section (max pool / flatten of a conv or linear "
                                            f"output) with zero point {z} (hwsim reproduces it for zero point 0)")
                        for m in moved[:-1]:
                            self.set_grid(node, m, s, z, dt)
                elif isinstance(src, tuple) and src[0] == "dq":
                    self.fail(node, "re-quantizes a dequantized tensor without an op between them")
                else:
                    self.fail(node, "quantizes a tensor hwsim did not produce")
                self.set_grid(node, t, s, z, dt)
                if t in self.hs_of:
                    # the MAC output under a hard-swish is never quantized by the engine (fused): hwsim gives it the
                    # range on which hard-swish is not constant, [-3, max(3, the hard-swish grid's top)], in uint8
                    top = max(3.0, float(np.float32(s)) * ((255 if dt == "uint8" else 127) - z))
                    sc = float(np.float32((top + 3.0) / 255.0))
                    self.set_grid(node, self.hs_of[t][0], sc, int(round(3.0 / sc)), "uint8")
                if t in self.sum_of:
                    # the fused conv's output is never quantized by the engine: hwsim gives it the add's output
                    # grid (the onednn_sum add recognises it by that; other profiles requantize it there)
                    self.set_grid(node, self.sum_of[t][0], s, z, dt)
                self.env[node.name] = ("q", t)
            elif f in DQ:
                src = self.env.get(a[0].name) if isinstance(a[0], fx.Node) else None
                if not (isinstance(src, tuple) and src[0] == "q"):
                    if isinstance(a[0], fx.Node) and a[0].op == "get_attr":
                        self.env[node.name] = ("w", None)  # a per-tensor weight, read by its conv / linear
                        continue
                    self.fail(node, "dequantizes a tensor that is not quantize_per_tensor's output")
                s, z, dt = self.qparams(node)
                if self.grids[src[1]] != {"scale": float(np.float32(s)), "zero_point": z, "dtype": dt}:
                    self.fail(node, "dequantizes with other parameters than its quantize_per_tensor")
                self.env[node.name] = ("dq", src[1])
            elif f in DQW:
                self.env[node.name] = ("w", None)
            elif f in (aten.conv2d.default, aten.linear.default):
                self.env[node.name] = ("float", self.mac(node, self.quantized_in(node, a[0])))
                self.mac_out.add(self.env[node.name][1])
                if f == aten.conv2d.default and len(node.users) == 1:
                    self.conv_out.add(self.env[node.name][1])
            elif f in (aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default):
                six = f in (aten.hardtanh.default, aten.hardtanh_.default)
                if six and tuple(float(v) for v in a[1:3]) != (0.0, 6.0):
                    self.fail(node, f"is hardtanh{tuple(a[1:3])} (hwsim: relu6 = hardtanh(0, 6))")
                act = self.b.relu6 if six else self.b.relu
                v = self.env.get(a[0].name) if isinstance(a[0], fx.Node) else None
                if isinstance(v, tuple) and v[0] == "float":  # on a conv / linear / add output: fused into it
                    self.env[node.name] = ("float", act(node.name, v[1]))
                    if v[1] in self.mac_out:
                        self.relu_of_mac.add(self.env[node.name][1])
                    if v[1] in self.sum_of:
                        self.sum_of[self.env[node.name][1]] = self.sum_of[v[1]]
                else:
                    x = self.quantized_in(node, a[0])
                    self.env[node.name] = ("float", self.keep(node, act(node.name, x), x))
            elif f in (aten.add.Tensor, aten.add_.Tensor):
                if len(a) != 2 or node.kwargs:
                    self.fail(node, "has an alpha or a scalar operand")
                # a conv's float output (X86InductorQuantizer leaves it unquantized; inductor fuses the add into
                # that conv as oneDNN's sum post-op, profile key requant.add_form = "onednn_sum") or quantized ones
                ins, fused = [], None
                for x in a:
                    v = self.env.get(x.name) if isinstance(x, fx.Node) else None
                    if fused is None and isinstance(v, tuple) and v[0] == "float" and v[1] in self.conv_out:
                        fused = v[1]
                        ins.append(v[1])
                    else:
                        ins.append(self.quantized_in(node, x))
                y = self.b.add(node.name, *ins)
                if fused is not None:
                    self.sum_of[y] = (fused, node)
                self.env[node.name] = ("float", y)
            elif f in (aten.max_pool2d.default, aten.max_pool2d_with_indices.default):
                if node.kwargs:
                    self.fail(node, f"has keyword arguments {sorted(node.kwargs)} (hwsim reads positional ones)")
                x = self.moved_in(node, a[0])
                k = a[1]
                st = a[2] if len(a) > 2 and a[2] else k
                pd = a[3] if len(a) > 3 else 0
                dil = a[4] if len(a) > 4 else 1
                ceil = a[5] if len(a) > 5 else False
                if ceil or dil not in (1, [1, 1], (1, 1)):
                    self.fail(node, "is a max_pool2d with ceil_mode or dilation (hwsim: neither)")
                self.env[node.name] = ("float", self.keep(node, self.b.maxpool2d(node.name, x, k, st, pd), x))
            elif f is operator.getitem:
                v = self.env.get(a[0].name)
                if a[1] != 0 or not isinstance(v, tuple):
                    self.fail(node, "reads an output other than max_pool2d's values")
                self.env[node.name] = v
            elif f in (aten.adaptive_avg_pool2d.default, aten.mean.dim):
                if f == aten.mean.dim and (sorted(a[1]) not in ([2, 3], [-2, -1]) or not (len(a) > 2 and a[2])):
                    self.fail(node, "is a mean over other than H, W with keepdim")
                if f == aten.adaptive_avg_pool2d.default and list(a[1]) != [1, 1]:
                    self.fail(node, f"is an adaptive_avg_pool2d to {a[1]} (hwsim: 1)")
                self.env[node.name] = ("float", self.b.global_avgpool(node.name, self.quantized_in(node, a[0])))
            elif f in (aten.flatten.using_ints, aten.view.default, aten.reshape.default):
                if (f == aten.flatten.using_ints and tuple(a[1:]) not in ((1,), (1, -1))) or (
                        f != aten.flatten.using_ints and (len(a[1]) != 2 or a[1][1] != -1)):
                    self.fail(node, "flattens other than from dim 1")
                x = self.moved_in(node, a[0])
                self.env[node.name] = ("float", self.keep(node, self.b.flatten(node.name, x), x))
            elif f in (aten.dropout.default, aten.clone.default, aten.contiguous.default):
                self.env[node.name] = self.env[a[0].name]
            elif f in (aten.hardswish.default, aten.hardswish_.default, aten.hardsigmoid.default,
                       aten.hardsigmoid_.default):
                # X86InductorQuantizer leaves a hard-swish's / hard-sigmoid's input (a conv / linear output)
                # unquantized: torch.compile fuses them with the MAC layer (profile keys requant.activation_form /
                # mul_form = "inductor", hwsim.ops.activation.HardswishSpec, hwsim.ops.mul.se_operands)
                v = self.env.get(a[0].name) if isinstance(a[0], fx.Node) else None
                if not (isinstance(v, tuple) and v[0] == "float" and v[1] in self.mac_out and len(a[0].users) == 1):
                    self.fail(node, "is in a float section hwsim does not model: a hard-swish / hard-sigmoid reads "
                                    "the float output of a conv2d / linear read by nothing else (docs/semantics.md "
                                    "section 11)")
                hs = f in (aten.hardswish.default, aten.hardswish_.default)
                y = self.b._add(node.name, "hardswish" if hs else "hardsigmoid", [v[1]])
                if hs:
                    self.hs_of[y] = (v[1], node)  # the MAC output's grid follows the hard-swish's (its quantize)
                else:
                    # the SE gate: neither tensor is quantized by the engine; hwsim gives the conv output the range
                    # on which hard-sigmoid is not constant, [-3, 3] (uint8, scale 3/127, zero point 127: nothing is
                    # lost), and the hard-sigmoid PyTorch's fixed quantized hardsigmoid grid (1/256, 0;
                    # activation.torch_output_grid)
                    from hwsim.ops.activation import torch_output_grid

                    self.set_grid(node, v[1], 3.0 / 127.0, 127, "uint8")
                    self.set_grid(node, y, *torch_output_grid("hardsigmoid", "quint8"), "uint8")
                    self.gates.add(y)
                self.env[node.name] = ("float", y)
            elif f in (aten.mul.Tensor,):
                vs = [self.env.get(x.name) if isinstance(x, fx.Node) else None for x in a[:2]]
                if len(a) != 2 or node.kwargs or not all(isinstance(v, tuple) and v[0] == "float" for v in vs) or (
                        sum(v[1] in self.gates for v in vs) != 1):
                    self.fail(node, "is a mul hwsim does not model (the squeeze-excite mul: the float output of a conv "
                                    "(+ relu) or hard-swish times a hard-sigmoid of a conv output)")
                x = next(v[1] for v in vs if v[1] not in self.gates)
                if not (x in self.mac_out or x in self.hs_of or x in self.relu_of_mac):
                    self.fail(node, f"multiplies {x!r}, which is not a conv's (+ relu / hard-swish) float output")
                y = self.b._add(node.name, "mul", [vs[0][1], vs[1][1]])
                self.env[node.name] = ("float", y)
            elif f in (aten.sigmoid.default, aten.silu.default):
                self.fail(node, "is in a float section hwsim does not model (X86InductorQuantizer leaves a sigmoid's / "
                                "silu's input unquantized)")
            else:
                self.fail(node, "is not supported by hwsim's pt2e import")
        if "input" not in self.grids:
            raise HwsimError(f"{self.where}: no quantize_per_tensor of the input (not a pt2e-converted int8 model)")
        for y, (t, hs) in self.hs_of.items():
            if y not in self.grids:
                self.fail(hs, "is a hard-swish whose output is never quantized (hwsim models it with an int8 / uint8 "
                              "output)")
        for conv_t, add in self.sum_of.values():
            if conv_t not in self.grids:
                self.fail(add, "adds a conv's float output but its result is not quantized (hwsim models the "
                               "conv + add fusion with an int8 / uint8 output)")
        g = self.b.build(outputs=outputs, metadata={})
        if self.float_out is not None:
            g.metadata["float_output"] = self.float_out  # issue 17 (torch4): hwsim.execute reads the float logits
        g.metadata.update({"quantized": SOURCE_PT2E, "torch_engine": self.engine, "default_profile": self.profile,
                           "given": Given(ENGINE, SOURCE_PT2E, self.profile, self.grids, self.layers, self.arrays)})
        validate(g, where=f"{self.where} (imported)")
        return g


def import_pt2e(model, input_shape, mean=None, std=None, profile: str = "int8-pytorch-inductor",
                where: str = "pt2e model"):
    """The hwsim Graph of a pt2e-quantized model (``convert_pt2e``'s GraphModule, or a torch.export
    ExportedProgram of one): the dequantized float graph with its given quantization (``metadata["given"]``) and
    ``profile`` as its default (module docstring: what the x86 inductor path computes)."""
    from hwsim.importers import parse_shape

    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    if not isinstance(model, fx.GraphModule):
        raise HwsimError(f"{where}: a {type(model).__name__}, not a pt2e GraphModule or torch.export ExportedProgram")
    imp = _Pt2eImporter(model, parse_shape(input_shape), mean, std, where)
    imp.engine, imp.profile = "x86-inductor", profile
    g = imp.run()
    # {quantize_per_tensor node: hwsim tensor} for tests and comparisons (not stored in the file)
    g.pt2e_tensors = {k: v[1] for k, v in imp.env.items() if isinstance(v, tuple) and v[0] == "q"}
    return g


def load_pt2(path, where: str | None = None):
    """The torch.export ExportedProgram in a ``.pt2`` archive (``torch.export.save``), read without unpickling.

    ``torch.export.load`` is not pickle-free: it reads the sample inputs with ``torch.load`` falling back to
    ``weights_only=False``, and weights or constants saved "pickled" with ``torch.load(weights_only=False)`` /
    ``pickle.loads`` (torch/export/pt2_archive/_package.py, torch/_export/serde/serialize.py). This reader takes
    the graph (models/<name>.json), the raw weight and tensor-constant payloads (their JSON configs) and nothing
    else: an archive with a pickled weight or constant, a custom or opaque object, a legacy pickled weights file or
    more than one model is refused in one line; the sample inputs are never read."""
    import os

    import torch.ao.quantization.fx._decomposed  # noqa: F401  registers the quantized_decomposed ops the graph names
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass
    from torch.export.pt2_archive import _package as pk
    from torch.export.pt2_archive import constants as pc

    where = where or str(path)
    if not os.path.isfile(path):
        raise HwsimError(f"{where}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = pk.PT2ArchiveReader(str(path))
            names = reader.get_file_names()
    except Exception as e:  # torch's zip reader: truncated or not a zip
        raise HwsimError(f"{where}: not a readable .pt2 archive ({_first_line(e)})") from None
    prefix, suffix = pc.MODELS_FILENAME_FORMAT.split("{}")
    models = [n[len(prefix):-len(suffix)] for n in names if n.startswith(prefix) and n.endswith(suffix)]
    if len(models) != 1:
        raise HwsimError(f"{where}: {len(models)} exported programs in the archive (hwsim reads one)")
    model = models[0]
    if any(n.startswith(pc.AOTINDUCTOR_DIR) for n in names):
        raise HwsimError(f"{where}: an AOTInductor package (compiled code), not a torch.export program")
    for legacy in (f"{pc.WEIGHTS_DIR}{model}.pt", f"{pc.CONSTANTS_DIR}{model}.pt"):
        if legacy in names:
            raise HwsimError(f"{where}: {legacy} is a pickled (legacy format) payload; hwsim does not unpickle "
                             "(re-save with torch.export.save of torch 2.13)")
    try:
        for cfg_name, kind in ((pc.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model), "weight"),
                               (pc.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model), "constant")):
            if cfg_name not in names:
                raise HwsimError(f"{where}: {cfg_name} missing (not a torch.export.save archive)")
            cfg = pk._load_payload_config(reader, cfg_name)
            for fqn, meta in cfg.config.items():
                if meta.use_pickle or (kind == "constant"
                                       and not meta.path_name.startswith(pc.TENSOR_CONSTANT_FILENAME_PREFIX)):
                    raise HwsimError(f"{where}: {kind} {fqn!r} is stored pickled or as an object "
                                     f"({meta.path_name}); hwsim reads raw tensor payloads only and does not unpickle")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ser = _bytes_to_dataclass(schema.ExportedProgram, reader.read_bytes(prefix + model + suffix))
            state_dict = pk._load_state_dict(reader, model)
            constants = pk._load_constants(reader, model)
            ep = ExportedProgramDeserializer().deserialize(ser, state_dict, constants, ((), {}))
            # the sample inputs stay unread (pickled): zeros of the user inputs' shapes stand in for them (what
            # ExportedProgram.module() binds its argument names with); a symbolic size becomes 1
            user = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
            fake = []
            for n in user:
                val = n.meta.get("val")
                dims = [d if isinstance(d, int) else 1 for d in getattr(val, "shape", ())]
                fake.append(torch.zeros(dims, dtype=getattr(val, "dtype", torch.float32)))
            ep._example_inputs = (tuple(fake), {})
            return ep
    except HwsimError:
        raise
    except Exception as e:
        raise HwsimError(f"{where}: not a readable torch.export program ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def import_pt2(path, mean=None, std=None, input_shape=None):
    """``hwsim import model.pt2``: a saved torch.export program of a pt2e-converted int8 model (:func:`load_pt2`,
    no unpickling) imported by :func:`import_pt2e`; the input shape is read from the program where it is fixed."""
    from hwsim.importers import parse_shape

    ep = load_pt2(path)
    shape = parse_shape(input_shape)
    if shape is None:
        ph = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
        val = ph[0].meta.get("val") if len(ph) == 1 else None
        dims = list(getattr(val, "shape", []))[1:]
        if len(dims) != 3 or not all(isinstance(d, int) for d in dims):
            raise HwsimError(f"{path}: the input shape is not fixed in the program; give --input-shape C,H,W")
        shape = tuple(dims)
    return import_pt2e(ep, shape, mean, std, where=str(path))
