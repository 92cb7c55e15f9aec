"""torch.fx export: every supported op round-trips to hwsim.floatref within 1e-5; unsupported ops name the node."""

import operator

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from frontends.pytorch.export import export_model, to_graph
from frontends.pytorch.lsq import prepare_qat
from frontends.pytorch.models import build_model
from frontends.pytorch.satnl import apply_satnl
from hwsim.errors import HwsimError
from hwsim.floatref import run_float
from hwsim.graph import load_model


class AllOps(nn.Module):
    """Every supported op at least once, module and functional forms."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=(2, 1), dilation=(2, 1), groups=4, bias=False)
        self.g2 = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, stride=1)
        self.c2 = nn.Conv2d(8, 6, 1, stride=2, padding=0)
        self.relu6 = nn.ReLU6()
        self.mp = nn.MaxPool2d(3, stride=1, padding=1)
        self.ap = nn.AvgPool2d(2, padding=1, stride=1)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.fl = nn.Flatten()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(12, 5)
        self.fc2 = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(self.c1(x)))
        b = torch.relu(self.dw(a))
        c = self.g2(a).relu()
        d = torch.cat([b, c], dim=1)
        e = self.relu6(self.c2(d))
        e = F.relu6(e + F.max_pool2d(e, 3, 1, 1))
        f = torch.add(self.mp(e), F.avg_pool2d(e, 3, stride=1, padding=1))
        g = self.ap(f)
        h1 = torch.flatten(self.gap(g), 1)
        h2 = F.adaptive_avg_pool2d(g, 1).view(g.size(0), -1)
        h3 = self.fl(self.gap(operator.add(g, g))).reshape(g.shape[0], -1)
        h = torch.cat([h1 + h2, h3], 1)
        return self.fc2(self.drop(F.relu(self.fc(h))))


def _warm(m, shape):
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, *shape) * 2 + 0.5)
    m.eval()
    return m


def _check(m, shape, tol=1e-5, **kw):
    g = to_graph(m, shape, **kw)
    x = torch.randn(5, *shape)
    with torch.no_grad():
        ref = m(x).numpy()
    out = run_float(g, x.numpy())
    np.testing.assert_allclose(out, ref.reshape(len(ref), -1), rtol=0, atol=tol)
    return g


def test_all_ops_round_trip():
    torch.manual_seed(0)
    m = _warm(AllOps(), (2, 9, 9))
    g = _check(m, (2, 9, 9))
    ops = {n.op for n in g.nodes}
    assert ops == {"conv2d", "batchnorm", "relu", "relu6", "maxpool2d", "avgpool2d", "global_avgpool", "add",
                   "concat", "flatten", "linear"}
    assert any(n.op == "conv2d" and n.attrs["groups"] == 4 and n.attrs["dilation"] == [2, 1] for n in g.nodes)


@pytest.mark.parametrize("arch,shape", [("smallcnn", (1, 28, 28)), ("resnet8", (3, 32, 32)),
                                        ("mobilenetv2", (1, 28, 28))])
def test_bundled_architectures_round_trip(arch, shape, tmp_path):
    torch.manual_seed(1)
    m = _warm(build_model(arch, 10, shape[0]), shape)
    p = tmp_path / "m.hwsim"
    export_model(m, str(p), shape, mean=[0.1] * shape[0], std=[0.3] * shape[0], metadata={"arch": arch})
    g = load_model(str(p))
    assert g.metadata["arch"] == arch and tuple(g.inputs[0].mean) == pytest.approx((0.1,) * shape[0])
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ref = m(x).numpy()
    np.testing.assert_allclose(run_float(g, x.numpy()), ref, rtol=0, atol=1e-5)


def test_satnl_export_writes_tanh_of_parameter():
    torch.manual_seed(2)
    m = apply_satnl(build_model("smallcnn", 10, 1))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(3.0)  # move V out of tanh's linear region
    _warm(m, (1, 28, 28))
    g = _check(m, (1, 28, 28))
    conv = [n for n in g.nodes if n.op == "conv2d"][0]
    v = m.features[0].weight.detach().numpy()
    np.testing.assert_array_equal(g.param(conv, "weight"), torch.tanh(m.features[0].weight).detach().numpy())
    # and the formula itself, in float64 (torch's and numpy's float32 tanh may differ by an ulp)
    np.testing.assert_allclose(g.param(conv, "weight"), np.tanh(v.astype(np.float64)), rtol=0, atol=2e-7)
    assert np.abs(g.param(conv, "weight") - v).max() > 0.1


def test_qat_model_exports_its_fake_quantized_weights_and_lsq_metadata():
    torch.manual_seed(3)
    m = build_model("smallcnn", 10, 1)
    prepare_qat(m, 4, 8)
    _warm(m, (1, 28, 28))
    g = to_graph(m, (1, 28, 28))
    lsq = g.metadata["lsq"]
    convs = [n.name for n in g.nodes if n.op in ("conv2d", "linear")]
    assert set(lsq) == set(convs) and len(lsq["fc"]["w_step"]) == 10 and lsq["fc"]["w_bits"] == 4
    assert lsq[convs[0]]["a_signed"] is True and lsq[convs[1]]["a_signed"] is False
    # the weights the QAT model computes with (step × integer), not the latent float weights
    m.eval()
    with torch.no_grad():
        wq = m.fc.quantized_weight().numpy()
    np.testing.assert_array_equal(g.param(g.node("fc"), "weight"), wq)
    s = m.fc.wq.step.detach().numpy().reshape(-1, 1)
    lat = m.fc.module.weight.detach().numpy()
    np.testing.assert_allclose(wq, np.clip(np.rint(lat / s), -8, 7) * s, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(wq, lat)


class Bad(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return torch.exp(self.c(x))


class BadModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.c(x))


class BadReshape(nn.Module):
    def forward(self, x):
        return x.view(-1, 2)


def test_unsupported_ops_raise_naming_the_node():
    with pytest.raises(HwsimError, match=r"fx node 'exp'.*target exp"):
        to_graph(Bad(), (1, 5, 5))
    with pytest.raises(HwsimError, match=r"fx node 'act'.*GELU"):
        to_graph(BadModule(), (1, 5, 5))
    with pytest.raises(HwsimError, match=r"fx node 'view'"):
        to_graph(BadReshape(), (1, 4, 4))
    with pytest.raises(HwsimError, match=r"fx node 'cat'.*dim 0"):
        class C(nn.Module):
            def forward(self, x):
                return torch.cat([x, x], 0)
        to_graph(C(), (1, 4, 4))


@pytest.mark.parametrize("arch,shape", [("resnet8", (3, 8, 8)), ("mobilenetv2", (1, 12, 12))])
@pytest.mark.parametrize("profile", ["int8-fbgemm", "int8-tflite", "w4a4"])
def test_exported_architectures_compile_and_run_bit_exactly(arch, shape, profile):
    """conv-bn -> add (ResNet), depthwise + ReLU6 + linear bottlenecks (MobileNetV2): compile and run,
    the fast executor equal to the reference ops on every tensor."""
    from hwsim.compile import compile_model
    from hwsim.execute import run_integer
    from hwsim.profile import load_profile

    torch.manual_seed(2)
    m = _warm(build_model(arch, 10, shape[0]), shape)
    g = to_graph(m, shape, mean=[0.1] * shape[0], std=[0.3] * shape[0])
    x = np.random.default_rng(0).normal(0, 1, (8,) + shape).astype(np.float32)
    qg = compile_model(g, load_profile(profile), x)
    fast, ref = run_integer(qg, x[:2], "fast"), run_integer(qg, x[:2], "reference")
    assert fast.keys() == ref.keys()
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k], err_msg=k)


def test_lsq_qat_model_compiles_with_its_learned_steps():
    """weights.range = activations.range = lsq: hwsim uses the exported LSQ steps (no recalibration).
    The integer weights are LSQ's, the input codes of the first layer are identical, and the inputs of
    later layers differ by at most 1 LSB (int32 bias rounding + integer requant vs QAT's float BN)."""
    from frontends.pytorch.lsq import QuantWrapper, prepare_qat
    from hwsim.compile import compile_model
    from hwsim.errors import HwsimError
    from hwsim.execute import run_integer
    from hwsim.profile import load_profile

    torch.manual_seed(3)
    m = _warm(prepare_qat(build_model("smallcnn", 10, 1), 4, 4), (1, 28, 28))
    g = to_graph(m, (1, 28, 28))
    x = torch.randn(64, 1, 28, 28)
    lsq = {"weights.range": "lsq", "activations.range": "lsq", "batchnorm": "scale",
           "first_layer.bits": "unbounded", "last_layer.bits": "unbounded"}
    qg = compile_model(g, load_profile("w4a4", lsq), x.numpy())
    caught, wraps = {}, {}
    for name, mod in m.named_modules():
        if isinstance(mod, QuantWrapper):
            wraps[name.replace(".", "_")] = mod
            mod.aq.register_forward_hook(
                lambda mm, i, o, k=name.replace(".", "_"): caught.__setitem__(k, (o / mm.step).round().numpy()))
    with torch.no_grad():
        m(x)
    env = run_integer(qg, x.numpy())
    for i, lay in enumerate(qg.mac_layers):
        e, mod = g.metadata["lsq"][lay.name], wraps[lay.name]
        gx = qg.grids[lay.inputs[0]]
        assert (gx.scale, gx.zero_point) == (pytest.approx(e["a_step"], rel=0, abs=0), 0)
        w = mod.module.weight.detach().numpy().astype(np.float64)
        s = np.abs(np.asarray(e["w_step"])).reshape((-1,) + (1,) * (w.ndim - 1))
        w_lsq = np.clip(np.rint(w / s), -8, 7)
        f = np.sign(lay.w_scale / s.reshape(-1))  # scale mode flips channels whose BN factor is negative
        assert np.mean(lay.w_q * np.where(f < 0, -1, 1).reshape(s.shape) == w_lsq) >= 0.999
        a, b = caught[lay.name].reshape(len(x), -1), env[lay.inputs[0]].reshape(len(x), -1)
        assert np.abs(a - b).max() <= (0 if i == 0 else 1)
        assert np.mean(a == b) >= (1.0 if i == 0 else 0.85)
    with pytest.raises(HwsimError, match="needs batchnorm = 'scale'"):
        compile_model(g, load_profile("w4a4", {**lsq, "batchnorm": "fold"}), x.numpy())
    plain = to_graph(_warm(build_model("smallcnn", 10, 1), (1, 28, 28)), (1, 28, 28))
    with pytest.raises(HwsimError, match="needs a model trained with LSQ QAT"):
        compile_model(plain, load_profile("w4a4", lsq), x.numpy())
