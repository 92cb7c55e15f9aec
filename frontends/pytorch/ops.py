"""The PyTorch frontend's per-op entries: fx export mapping and fake-quant mirror, one class per hwsim op.

Each :class:`FrontendOp` says, for one hwsim op (:mod:`hwsim.ops.registry`):

- export: which ``nn.Module`` types (:meth:`FrontendOp.from_module`) and fx functions / methods
  (:meth:`FrontendOp.from_function`) become this op, and with which attrs (``frontends.pytorch.export``
  asks every entry in turn; the first that answers wins);
- fake-quant mirror: the float32 torch computation of the compiled layer on dequantized inputs
  (:meth:`FrontendOp.forward`) and what fake quantization does with its output (``mirror``: "requant" =
  fake-quantized to the layer's clamp, "grid" = fake-quantized to the grid's range (average pools),
  "max" = values moved (codes of the moved values), "reshape" = the codes reshaped too, "clamp" =
  a clamp activation (its codes clamped)); ``frontends.pytorch.fakequant`` and LAPQ's mirror
  (hwsim.ptq.lapq) dispatch on it.

Adding an op: a subclass here with ``@register``, beside its ``hwsim/ops/<op>.py`` module.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

MIRRORS = ("requant", "grid", "max", "reshape", "clamp")


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


class FrontendOp:
    """The frontend side of one hwsim op; the defaults export nothing."""

    op: str = ""
    mirror: str = "requant"

    # --- export (ex: frontends.pytorch.export._Exporter; x: the input tensor name)
    def from_module(self, ex, node: fx.Node, m: nn.Module, x: str) -> str | None:
        """The hwsim tensor name ``m`` exports to, or None if ``m`` is not this op."""
        return None

    def from_function(self, ex, node: fx.Node) -> str | None:
        """The hwsim tensor name an fx call_function / call_method exports to, or None if not this op."""
        return None

    # --- fake-quant mirror
    def forward(self, lay, env: dict, weights: dict) -> torch.Tensor:
        """float32 output of the compiled layer ``lay`` on the (dequantized) tensors in ``env``."""
        raise NotImplementedError(self.op)

    def activate(self, y: torch.Tensor) -> torch.Tensor:
        """activation ops: the float function (a fused activation in float mode, or standalone)."""
        return y


_ENTRIES: dict[str, FrontendOp] = {}


def register(cls):
    """Class decorator: register an instance of ``cls`` under ``cls.op``."""
    inst = cls()
    if inst.mirror not in MIRRORS:
        raise ValueError(f"{cls.__name__}.mirror = {inst.mirror!r}: allowed {MIRRORS}")
    _ENTRIES[inst.op] = inst
    return cls


def get(op: str) -> FrontendOp:
    """The frontend entry of hwsim op ``op``."""
    return _ENTRIES[op]


def entries() -> tuple[FrontendOp, ...]:
    return tuple(_ENTRIES.values())


def activation(y: torch.Tensor, act: str | None) -> torch.Tensor:
    """A fused activation's float function (None: identity)."""
    return y if act is None else get(act).activate(y)


def _is_method(node: fx.Node, *names: str) -> bool:
    return node.op == "call_method" and node.target in names


# ----------------------------------------------------------------------------- MAC layers
def linear_forward(lay, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """float conv2d / linear of a compiled layer (its padding, stride, dilation, groups) on dequantized input."""
    return get(lay.op).mac_forward(lay, x, w, b)


@register
class Conv2d(FrontendOp):
    op = "conv2d"

    def from_module(self, ex, node, m, x):
        if not isinstance(m, nn.Conv2d):
            return None
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            if isinstance(m.padding, str) and m.padding == "valid":
                pad = 0
            else:
                ex.fail(node, f"a conv with padding {m.padding!r}/{m.padding_mode!r} (only numeric zero padding)")
        else:
            pad = tuple(m.padding)
        return ex.b.conv2d(node.name, x, ex.np(ex.weight), ex.np(m.bias), tuple(m.stride), pad, tuple(m.dilation),
                           m.groups)

    def mac_forward(self, lay, x, w, b):
        a = lay.attrs
        t, bt, l_, r = a.get("padding", (0, 0, 0, 0))
        x = F.pad(x, (l_, r, t, bt))  # zeros = the zero point in the integer domain
        return F.conv2d(x, w, b, stride=_pair(a.get("stride", 1)), dilation=_pair(a.get("dilation", 1)),
                        groups=a.get("groups", 1))

    def forward(self, lay, env, weights):
        return self.mac_forward(lay, env[lay.inputs[0]], *weights[lay.name])


@register
class Linear(Conv2d):
    op = "linear"

    def from_module(self, ex, node, m, x):
        if not isinstance(m, nn.Linear):
            return None
        return ex.b.linear(node.name, x, ex.np(ex.weight), ex.np(m.bias))

    def mac_forward(self, lay, x, w, b):
        return F.linear(x.reshape(x.shape[0], -1), w, b)


@register
class BatchNorm(FrontendOp):
    op = "batchnorm"  # folded by compile: no mirror

    def from_module(self, ex, node, m, x):
        if not isinstance(m, nn.BatchNorm2d):
            return None
        if m.running_mean is None:
            ex.fail(node, "a BatchNorm2d without running statistics")
        w = m.weight if m.affine else torch.ones_like(m.running_mean)
        bb = m.bias if m.affine else torch.zeros_like(m.running_mean)
        return ex.b.batchnorm(node.name, x, ex.np(w), ex.np(bb), ex.np(m.running_mean), ex.np(m.running_var),
                              float(m.eps))


# ----------------------------------------------------------------------------- activations
@register
class Relu(FrontendOp):
    op = "relu"
    mirror = "clamp"

    def from_module(self, ex, node, m, x):
        return ex.b.relu(node.name, x) if isinstance(m, nn.ReLU) else None

    def from_function(self, ex, node):
        f = node.target
        if f in (F.relu, torch.relu) or _is_method(node, "relu", "relu_"):
            return ex.b.relu(node.name, ex.t(node, node.args[0]))
        return None

    def activate(self, y):
        return torch.relu(y)


@register
class Relu6(FrontendOp):
    op = "relu6"
    mirror = "clamp"

    def from_module(self, ex, node, m, x):
        if isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and m.min_val == 0 and m.max_val == 6):
            return ex.b.relu6(node.name, x)
        return None

    def from_function(self, ex, node):
        f, a = node.target, node.args
        if f is F.relu6 or (f is F.hardtanh and tuple(a[1:3]) == (0.0, 6.0)):
            return ex.b.relu6(node.name, ex.t(node, a[0]))
        return None

    def activate(self, y):
        return torch.clamp(y, 0.0, 6.0)


# ----------------------------------------------------------------------------- pools
def _pool_args(ex, node, f):
    a, kw = node.args[:4], node.kwargs
    args = list(a[1:]) + [None] * 3
    k = args[0] if args[0] is not None else kw.get("kernel_size")
    s = args[1] if args[1] is not None else kw.get("stride")
    p = args[2] if args[2] is not None else kw.get("padding", 0)
    if kw.get("ceil_mode") or (f is F.max_pool2d and kw.get("dilation", 1) != 1) or \
            (f is F.avg_pool2d and kw.get("divisor_override")) or len(a) > 4:
        ex.fail(node, "a pool with ceil_mode/dilation/divisor_override")
    return k, s, p


@register
class MaxPool2d(FrontendOp):
    op = "maxpool2d"
    mirror = "max"

    def from_module(self, ex, node, m, x):
        if not isinstance(m, nn.MaxPool2d):
            return None
        if m.ceil_mode or m.dilation not in (1, (1, 1)) or m.return_indices:
            ex.fail(node, "a MaxPool2d with ceil_mode/dilation/return_indices")
        return ex.b.maxpool2d(node.name, x, m.kernel_size, m.stride, m.padding)

    def from_function(self, ex, node):
        if node.target is not F.max_pool2d:
            return None
        return ex.b.maxpool2d(node.name, ex.t(node, node.args[0]), *_pool_args(ex, node, F.max_pool2d))

    def forward(self, lay, env, weights):
        a = lay.attrs
        t, bt, l_, r = a.get("padding", (0, 0, 0, 0))
        x = F.pad(env[lay.inputs[0]], (l_, r, t, bt), value=float("-inf"))
        return F.max_pool2d(x, _pair(a["kernel"]), _pair(a.get("stride", a["kernel"])))


@register
class AvgPool2d(FrontendOp):
    op = "avgpool2d"
    mirror = "grid"

    def from_module(self, ex, node, m, x):
        if not isinstance(m, nn.AvgPool2d):
            return None
        if m.ceil_mode or m.divisor_override:
            ex.fail(node, "an AvgPool2d with ceil_mode/divisor_override")
        return ex.b.avgpool2d(node.name, x, m.kernel_size, m.stride, m.padding, bool(m.count_include_pad))

    def from_function(self, ex, node):
        if node.target is not F.avg_pool2d:
            return None
        a = node.args
        cip = a[5] if len(a) > 5 else node.kwargs.get("count_include_pad", True)
        return ex.b.avgpool2d(node.name, ex.t(node, a[0]), *_pool_args(ex, node, F.avg_pool2d), bool(cip))

    def forward(self, lay, env, weights):
        a = lay.attrs
        t, bt, l_, r = a.get("padding", (0, 0, 0, 0))
        k, s = _pair(a["kernel"]), _pair(a.get("stride", a["kernel"]))
        x = F.pad(env[lay.inputs[0]], (l_, r, t, bt))
        y = F.avg_pool2d(x, k, s)
        if a.get("count_include_pad", True):
            return y
        inside = F.avg_pool2d(F.pad(torch.ones_like(env[lay.inputs[0]][:1, :1]), (l_, r, t, bt)), k, s)
        return y / inside  # mean over the taps inside the image


@register
class GlobalAvgPool(FrontendOp):
    op = "global_avgpool"
    mirror = "grid"

    def from_module(self, ex, node, m, x):
        if not isinstance(m, nn.AdaptiveAvgPool2d):
            return None
        if m.output_size not in (1, (1, 1), [1, 1]):
            ex.fail(node, f"an AdaptiveAvgPool2d to {m.output_size} (only 1x1)")
        return ex.b.global_avgpool(node.name, x)

    def from_function(self, ex, node):
        if node.target is not F.adaptive_avg_pool2d:
            return None
        a = node.args
        if (a[1] if len(a) > 1 else node.kwargs.get("output_size")) not in (1, (1, 1), [1, 1]):
            ex.fail(node, "an adaptive_avg_pool2d not to 1x1")
        return ex.b.global_avgpool(node.name, ex.t(node, a[0]))

    def forward(self, lay, env, weights):
        return env[lay.inputs[0]].mean(dim=(2, 3), keepdim=True)


# ----------------------------------------------------------------------------- add, concat, flatten
@register
class Add(FrontendOp):
    op = "add"

    def from_function(self, ex, node):
        f, a = node.target, node.args
        if not (f in (operator.add, torch.add) or _is_method(node, "add")):
            return None
        if len(a) != 2 or node.kwargs.get("alpha", 1) != 1:
            ex.fail(node, "an add with other than two tensor operands")
        return ex.b.add(node.name, ex.t(node, a[0]), ex.t(node, a[1]))

    def forward(self, lay, env, weights):
        return env[lay.inputs[0]] + env[lay.inputs[1]]


@register
class Concat(FrontendOp):
    op = "concat"

    def from_function(self, ex, node):
        f, a = node.target, node.args
        if not (f is torch.cat or f is torch.concat):
            return None
        dim = a[1] if len(a) > 1 else node.kwargs.get("dim", 0)
        if dim != 1:
            ex.fail(node, f"a cat along dim {dim} (only dim 1)")
        return ex.b.concat(node.name, [ex.t(node, v) for v in a[0]], 1)

    def forward(self, lay, env, weights):
        return torch.cat([env[i] for i in lay.inputs], dim=lay.attrs.get("axis", 1))


@register
class Flatten(FrontendOp):
    op = "flatten"
    mirror = "reshape"

    def from_module(self, ex, node, m, x):
        if not isinstance(m, nn.Flatten):
            return None
        if m.start_dim != 1 or m.end_dim != -1:
            ex.fail(node, "a Flatten other than start_dim=1")
        return ex.b.flatten(node.name, x)

    def from_function(self, ex, node):
        f, a, kw = node.target, node.args, node.kwargs
        if f is torch.flatten or _is_method(node, "flatten"):
            start = a[1] if len(a) > 1 else kw.get("start_dim", 0)
            end = a[2] if len(a) > 2 else kw.get("end_dim", -1)
            if start != 1 or end != -1:
                ex.fail(node, f"a flatten from dim {start} to {end} (only start_dim=1)")
            return ex.b.flatten(node.name, ex.t(node, a[0]))
        if _is_method(node, "view", "reshape"):
            shape = a[1:] if len(a) > 2 else (a[1] if len(a) > 1 else ())
            ok = len(shape) == 2 and shape[1] == -1 and (
                (isinstance(shape[0], fx.Node) and ex.env.get(shape[0].name) == ("batch",)))
            if not ok:
                ex.fail(node, "a view/reshape other than (N, -1) with N = x.size(0) / x.shape[0]")
            return ex.b.flatten(node.name, ex.t(node, a[0]))
        return None

    def forward(self, lay, env, weights):
        x = env[lay.inputs[0]]
        return x.reshape(x.shape[0], -1)


# ----------------------------------------------------------------------------- lookup-table activations
class _Unary(FrontendOp):
    """A unary activation (hwsim/ops/activation.py): nn modules and fx functions / methods; mirror: the float
    function on the dequantized input, fake-quantized to the layer's output grid."""

    modules: tuple = ()
    functions: tuple = ()
    methods: tuple = ()

    def attrs(self, m_or_node) -> dict:
        return {}

    def from_module(self, ex, node, m, x):
        if not isinstance(m, self.modules):
            return None
        return ex.b._add(node.name, self.op, [x], self.attrs(m))

    def from_function(self, ex, node):
        if not (node.target in self.functions or _is_method(node, *self.methods)):
            return None
        if len(node.args) != 1 or any(k != "inplace" for k in node.kwargs):
            ex.fail(node, f"a {self.op} with other than one tensor argument")
        return ex.b._add(node.name, self.op, [ex.t(node, node.args[0])], self.attrs(node))

    def forward(self, lay, env, weights):
        return self.activate(env[lay.inputs[0]])


@register
class Sigmoid(_Unary):
    op = "sigmoid"
    modules, functions, methods = (nn.Sigmoid,), (torch.sigmoid, F.sigmoid), ("sigmoid",)

    def activate(self, y):
        return torch.sigmoid(y)


@register
class Hardsigmoid(_Unary):
    op = "hardsigmoid"  # PyTorch's relu6(x + 3) / 6: the op's default alpha = 1/6, beta = 1/2
    modules, functions = (nn.Hardsigmoid,), (F.hardsigmoid,)

    def forward(self, lay, env, weights):
        a, b = lay.attrs.get("alpha", 1.0 / 6.0), lay.attrs.get("beta", 0.5)
        if (a, b) == (1.0 / 6.0, 0.5):
            return F.hardsigmoid(env[lay.inputs[0]])
        return torch.clamp(env[lay.inputs[0]] * a + b, 0.0, 1.0)


@register
class Hardswish(_Unary):
    op = "hardswish"
    modules, functions = (nn.Hardswish,), (F.hardswish,)

    def activate(self, y):
        return F.hardswish(y)


@register
class Silu(_Unary):
    op = "silu"
    modules, functions = (nn.SiLU,), (F.silu,)

    def activate(self, y):
        return F.silu(y)


@register
class Tanh(_Unary):
    op = "tanh"
    modules, functions, methods = (nn.Tanh,), (torch.tanh, F.tanh), ("tanh",)

    def activate(self, y):
        return torch.tanh(y)


# ----------------------------------------------------------------------------- mul, mean, identity
@register
class Mul(FrontendOp):
    op = "mul"

    def from_function(self, ex, node):
        f, a = node.target, node.args
        if not (f in (operator.mul, torch.mul) or _is_method(node, "mul")):
            return None
        if len(a) != 2 or node.kwargs or not all(isinstance(v, fx.Node) for v in a):
            ex.fail(node, "a mul with other than two tensor operands (hwsim's mul takes two tensors)")
        return ex.b._add(node.name, "mul", [ex.t(node, a[0]), ex.t(node, a[1])])

    def forward(self, lay, env, weights):
        return env[lay.inputs[0]] * env[lay.inputs[1]]


@register
class Mean(FrontendOp):
    op = "mean"
    mirror = "grid"

    def from_function(self, ex, node):
        if not (node.target is torch.mean or _is_method(node, "mean")):
            return None
        a, kw = node.args, node.kwargs
        dim = a[1] if len(a) > 1 else kw.get("dim")
        keep = a[2] if len(a) > 2 else kw.get("keepdim", False)
        dims = sorted(int(d) % 4 for d in dim) if isinstance(dim, (list, tuple)) else None
        if dims != [2, 3] or kw.get("dtype") is not None or len(a) > 3:
            ex.fail(node, f"a mean over dim {dim!r} (hwsim's mean reduces H and W: dim=(2, 3) or (-2, -1))")
        return ex.b._add(node.name, "mean", [ex.t(node, a[0])], {"keepdims": bool(keep)})

    def forward(self, lay, env, weights):
        return env[lay.inputs[0]].mean(dim=(2, 3), keepdim=bool(lay.attrs.get("keepdims", True)))


@register
class Identity(FrontendOp):
    """identity: export drops nn.Identity, nn.Dropout and eval-mode stochastic depth (export.PASS_THROUGH_MODULES;
    models.StochasticDepth traces to its input); an identity node (ONNX Identity) mirrors as its input."""

    op = "identity"
    mirror = "reshape"

    def forward(self, lay, env, weights):
        return env[lay.inputs[0]]
