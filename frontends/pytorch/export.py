"""torch.fx export of a float (or SatNL / LSQ-wrapped) model to an .hwsim graph.

Supported: nn.Conv2d (groups, dilation, zero padding), nn.BatchNorm2d, ReLU/ReLU6 (modules, F.relu,
torch.relu, F.relu6, .relu()), nn.Linear, max/avg pools (modules and F.*, floor mode; avg with
count_include_pad), adaptive avg pool to 1x1 → global_avgpool, add (operator.add, torch.add, .add),
flatten (torch.flatten(x, 1), nn.Flatten, .flatten(1), .view/.reshape(N, -1)), torch.cat (dim 1),
nn.Identity / nn.Dropout (pass-through). SatNL layers export f(V); QuantWrapper layers export the weight
they compute with (fake-quantized: LSQ step × integer), their LSQ steps go to metadata["lsq"][node name]. Anything else: HwsimError naming
the fx node and its target.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from hwsim.errors import HwsimError
from hwsim.graph import GraphBuilder, Graph, save_model

from . import ops as fops
from .lsq import FixedQuantizer, LSQQuantizer, QuantWrapper, lsq_entry
from .satnl import SatNLConv2d, SatNLLinear, effective_weight


QAT_WEIGHTS = ("quantized", "latent")
PASS_THROUGH_MODULES = (nn.Identity, nn.Dropout)  # eval mode: the input itself


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (QuantWrapper, SatNLConv2d, SatNLLinear, LSQQuantizer, FixedQuantizer)):
            return True
        return super().is_leaf_module(m, qualname)


def _np(t: torch.Tensor | None):
    return None if t is None else t.detach().cpu().numpy().astype(np.float32)


class _Exporter:
    np = staticmethod(_np)  # for the per-op entries (frontends/pytorch/ops.py)

    def __init__(self, model: nn.Module, input_shape, mean, std, qat_weights: str = "quantized"):
        if qat_weights not in QAT_WEIGHTS:
            raise HwsimError(f"export: qat_weights {qat_weights!r} not allowed; allowed: {', '.join(QAT_WEIGHTS)}")
        self.qat_weights = qat_weights
        self.model = model
        self.b = GraphBuilder(input_shape, mean, std)
        self.env: dict[str, object] = {}
        self.lsq: dict[str, dict] = {}

    def fail(self, node: fx.Node, why: str = "unsupported") -> None:
        raise HwsimError(f"export: fx node {node.name!r} (op {node.op}, target {_tname(node.target)}) is {why}; "
                         f"see docs/frontend.md for the supported ops")

    def t(self, node: fx.Node, a) -> str:
        v = self.env.get(a.name) if isinstance(a, fx.Node) else None
        if not isinstance(v, str):
            self.fail(node, f"given a non-tensor argument {a!r}")
        return v

    def module(self, node: fx.Node, m: nn.Module, x: str) -> str:
        name = node.name
        weight = None
        if isinstance(m, QuantWrapper):
            # "quantized": the weights the QAT model computes with (LSQ step × integer; its BN statistics
            # were gathered with them) — hwsim's lsq grid recovers the same integers; "latent": the
            # float weights the optimizer kept (re-quantizing them at other bits avoids double rounding)
            self.lsq[name] = lsq_entry(m)
            if self.qat_weights == "quantized":
                with torch.no_grad():
                    weight = m.quantized_weight()
            m = m.module
        if weight is None and isinstance(m, (nn.Conv2d, nn.Linear)):
            weight = effective_weight(m)
        self.weight = weight  # the MAC entries export this weight (frontends/pytorch/ops.py)
        for entry in fops.entries():
            y = entry.from_module(self, node, m, x)
            if y is not None:
                return y
        if isinstance(m, PASS_THROUGH_MODULES):
            return x
        self.fail(node, f"an unsupported module {type(m).__name__}")

    def function(self, node: fx.Node) -> object:
        f, a = node.target, node.args
        if node.op == "call_method" and f == "size" and len(a) == 2 and a[1] == 0:
            return ("batch",)
        if f is getattr and a[1] == "shape":
            return ("shape",)
        if f is operator.getitem and isinstance(a[0], fx.Node) and self.env.get(a[0].name) == ("shape",) and a[1] == 0:
            return ("batch",)
        for entry in fops.entries():  # each op's own fx functions and methods (frontends/pytorch/ops.py)
            y = entry.from_function(self, node)
            if y is not None:
                return y
        self.fail(node)

    def run(self, gm: fx.GraphModule, metadata: dict) -> Graph:
        outputs = []
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                if self.env:
                    self.fail(node, "a second input (only one input is supported)")
                self.env[node.name] = "input"
            elif node.op == "call_module":
                self.env[node.name] = self.module(node, gm.get_submodule(node.target), self.t(node, node.args[0]))
            elif node.op in ("call_function", "call_method"):
                self.env[node.name] = self.function(node)
            elif node.op == "output":
                outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else [node.args[0]]
                outputs = [self.t(node, o) for o in outs]
            else:
                self.fail(node)
        md = dict(metadata or {})
        if self.lsq:
            md["lsq"] = self.lsq
            md["qat_weights"] = self.qat_weights
        return self.b.build(outputs=outputs, metadata=md)


def _line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _tname(t) -> str:
    return getattr(t, "__name__", None) or str(t)


def mac_module_order(model: nn.Module) -> list[str]:
    """Qualified names of the conv/linear modules (plain, SatNL or QAT-wrapped) in execution order — the order
    of hwsim's layers, whose first and last get first_layer.bits / last_layer.bits."""
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as e:  # noqa: BLE001
        raise HwsimError(f"export: torch.fx cannot trace {type(model).__name__}: {str(e).splitlines()[0]}") from None
    mods = dict(model.named_modules())
    return [n.target for n in gm.graph.nodes if n.op == "call_module"
            and isinstance(mods.get(n.target), (nn.Conv2d, nn.Linear, QuantWrapper))]


def to_graph(model: nn.Module, input_shape, mean=0.0, std=1.0, metadata: dict | None = None,
             qat_weights: str = "quantized") -> Graph:
    """The float hwsim Graph of ``model`` (traced with torch.fx in eval mode). QAT layers export their
    fake-quantized weights (``qat_weights="quantized"``) or the latent float weights (``"latent"``)."""
    was = model.training
    try:
        model.eval()
    except NotImplementedError as e:  # torch.export's unlifted module (a pt2e graph) refuses train()/eval()
        raise HwsimError(f"export: {type(model).__name__} cannot be put in eval mode ({_line(e)}): a torch.export / "
                         "pt2e graph is not supported; export the nn.Module itself, or quantize it with torch.ao FX "
                         "and import it with frontends.pytorch.importers.import_torch_int8") from None
    try:
        tracer = _Tracer()
        g = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, g)
    except HwsimError:
        raise
    except Exception as e:  # noqa: BLE001 - tracing failures are user errors about the model
        raise HwsimError(f"export: torch.fx cannot trace {type(model).__name__}: {str(e).splitlines()[0]}") from None
    finally:
        model.train(was)
    return _Exporter(model, input_shape, mean, std, qat_weights).run(gm, metadata or {})


def export_model(model: nn.Module, path: str | None, input_shape, mean=0.0, std=1.0, metadata: dict | None = None,
                 qat_weights: str = "quantized") -> Graph:
    """Trace ``model`` and write it to ``path`` (.hwsim) unless path is None; returns the Graph."""
    g = to_graph(model, input_shape, mean, std, metadata, qat_weights)
    if path is not None:
        save_model(g, path)
    return g


def export_checkpoint(ckpt_path: str, out_path: str, metadata: dict | None = None,
                      qat_weights: str = "quantized") -> Graph:
    """Export a training checkpoint (loaded with weights_only=True) to ``out_path``."""
    from .train import model_from_checkpoint

    model, ck = model_from_checkpoint(ckpt_path)
    cfg = ck["config"]
    hist = ck.get("history", {})
    md = {"arch": cfg["arch"], "dataset": cfg.get("dataset"), "epochs": int(ck["epoch"]),
          "train_config": {k: v for k, v in cfg.items() if k not in ("mean", "std")}}
    if hist.get("test_acc"):
        md["float_accuracy"] = float(hist["test_acc"][-1])
    md.update(metadata or {})
    return export_model(model, out_path, cfg["input_shape"], cfg["mean"], cfg["std"], md, qat_weights)
