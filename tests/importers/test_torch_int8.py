"""PyTorch int8 models (torch.ao FX convert_fx, x86 qconfig mapping) imported with their own numbers
(frontends.pytorch.importers, hwsim.given) and run by hwsim under int8-pytorch: every output integer identical to
torch's quantized model (one thread). The input quantizer is torch.quantize_per_tensor's FMA form, checked on its
own against the neighbouring forms; an op outside the supported set is one line naming the fx node."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")  # tests.importers.test_given_network (the bundled models as torch modules)

from torch.ao.quantization import get_default_qconfig_mapping  # noqa: E402
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: E402

from frontends.pytorch.importers import import_torch_int8  # noqa: E402
from hwsim.compile import Float32DivisionGrid, Grid, TorchQuantizeGrid, compile_model  # noqa: E402
from hwsim.errors import HwsimError  # noqa: E402
from hwsim.execute import run_integer  # noqa: E402
from hwsim.given import given_of  # noqa: E402
from hwsim.graph import load_model, save_model  # noqa: E402
from hwsim.profile import load_profile  # noqa: E402
from tests.engines import cpu_flags  # noqa: E402
from tests.importers.test_given_network import _bundled_torch, _images, _resnet  # noqa: E402

pytestmark = pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines,
                                reason="PyTorch built without fbgemm")
warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")


@pytest.fixture(autouse=True)
def _one_thread():
    old, threads = torch.backends.quantized.engine, torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.backends.quantized.engine = old
    torch.set_num_threads(threads)


def fx_int8(m, shape, calib, engine):
    """``m`` quantized by torch.ao FX (x86 qconfig mapping) with ``engine`` as the quantized backend."""
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = prepare_fx(copy.deepcopy(m).eval(), get_default_qconfig_mapping("x86"), (torch.zeros(1, *shape),))
        with torch.no_grad():
            p(torch.from_numpy(calib))
        return convert_fx(p)


def torch_integers(q, x):
    """The integers of the converted model's output (the input of its final dequantize)."""
    gm = copy.deepcopy(q)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    dq = out.args[0]
    assert dq.op == "call_method" and dq.target == "dequantize"
    out.args = (dq.args[0],)
    gm.graph.erase_node(dq)
    gm.recompile()
    with torch.no_grad():
        return gm(torch.from_numpy(x)).int_repr().numpy().astype(np.int64)


def every_tensor(q, g, x, profile):
    """{fx node: (torch's integers, hwsim's)} for every quantized tensor of the converted model on ``x``."""
    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if isinstance(r, torch.Tensor) and r.is_quantized:
                seen[n.name] = r.int_repr().numpy().astype(np.int64)
            return r

    seen = {}
    with torch.no_grad():
        Rec(q).run(torch.from_numpy(x))
    qg = compile_model(g, load_profile(profile) if isinstance(profile, str) else profile, None)
    env = run_integer(qg, x)
    out = {}
    for name, t in seen.items():
        h = env.get(f"{name}::relu", env.get("input" if name == "quantize_per_tensor" else name))
        if h is not None:
            out[name] = (t, h.astype(np.int64).reshape(t.shape))
    return out


def _net(name):
    if name == "resnet8":
        m, shape, mean, std = _resnet(None)
        return m, shape, mean, std, lambda n, seed: _images("resnet8", n, seed)
    m, spec = _bundled_torch(name)
    return m, spec.shape, spec.mean, spec.std, lambda n, seed: _images(name, n, seed)


VNNI = "avx512_vnni" in cpu_flags()
# oneDNN's kernels apply the scales as their product with AMX and one after the other without (bias.form "onednn" /
# "onednn_vnni"): the x86 engine's profile on this CPU, and the other CPU's (which must disagree somewhere)
AMX = "amx_tile" in cpu_flags()
X86_PROFILE, X86_OTHER = (("int8-pytorch-onednn", "int8-pytorch-onednn-vnni") if AMX else
                          ("int8-pytorch-onednn-vnni", "int8-pytorch-onednn"))
X86_FORM = "onednn" if AMX else "onednn_vnni"
ENGINES = [("fbgemm", "int8-pytorch", X86_PROFILE),
           pytest.param("x86", X86_PROFILE, "int8-pytorch",
                        marks=pytest.mark.skipif(not VNNI, reason="x86 engine convolutions go to oneDNN on VNNI CPUs"))]


@pytest.fixture(scope="module")
def converted():
    cache = {}

    def get(net, engine):
        if (net, engine) not in cache:
            m, shape, mean, std, images = _net(net)
            cache[(net, engine)] = (fx_int8(m, shape, images(32, 9), engine), shape, mean, std, images)
        torch.backends.quantized.engine = engine
        return cache[(net, engine)]

    return get


# the bundled MobileNetV2 has ReLU6 and depthwise convs of 16..128 groups (x86: <= 100 to oneDNN, 128 to fbgemm);
# the bundled MobileNetV3 hard-swish (nnq.Hardswish), squeeze-excite (adaptive average pool, hard-sigmoid gate on its
# fixed 1/256 grid, quantized::mul by the per-channel gate) and residual adds
NETS = [pytest.param(net, *e.values, marks=e.marks) if hasattr(e, "values") else (net, *e)
        for net in ("smallcnn_baseline", "resnet8", "mobilenetv2", "mobilenetv3") for e in ENGINES]


@pytest.mark.parametrize("net,engine,profile,other", NETS)
def test_fx_network_identical(net, engine, profile, other, converted, tmp_path):
    """The converted model's output integers == hwsim's under the engine's profile on 64 inputs (real test images
    for the bundled models), after a .hwsim round trip; every intermediate tensor too."""
    q, shape, mean, std, images = converted(net, engine)
    g = import_torch_int8(q, shape, mean, std)
    assert given_of(g).profile == g.metadata["default_profile"] == profile
    assert g.metadata["torch_engine"] == engine
    save_model(g, tmp_path / "m.hwsim")
    g = load_model(tmp_path / "m.hwsim")
    x = images(64, 0)
    yt = torch_integers(q, x)
    qg = compile_model(g, load_profile(profile), None)
    yh = run_integer(qg, x)[qg.output_name].astype(np.int64).reshape(yt.shape)
    assert np.unique(yt).size > 10  # informative logits, not one saturated value
    assert np.array_equal(yh, yt)
    tensors = every_tensor(q, g, x, profile)
    assert len(tensors) >= 8
    for name, (t, h) in tensors.items():
        assert np.array_equal(t, h), name
    # a float32 bias is what the model gives: a profile with an int32 bias cannot hold it (one line)
    with pytest.raises(HwsimError, match=r"bias.form = 'int32' cannot hold layer .* given float32 bias"):
        compile_model(g, load_profile("int8-fbgemm"), None)


@pytest.mark.parametrize("engine,profile,other", ENGINES)
def test_mobilenetv3_activation_tables_equal_pytorch_kernels(engine, profile, other, converted):
    """MobileNetV3's hard-swish / hard-sigmoid layers in PyTorch's form (requant.activation_form = "torch"): each
    layer's table == the converted module's quantized kernel on every input code (on these grids the exact form's
    tables happen to be the same); the profile agrees with the engine on every tensor of 16 inputs, the other
    engine's profile does not."""
    q, shape, mean, std, images = converted("mobilenetv3", engine)
    g = import_torch_int8(q, shape, mean, std)
    assert {n.op for n in g.nodes} >= {"hardswish", "hardsigmoid", "mul", "add", "global_avgpool"}
    x = images(16, 1)
    assert all(np.array_equal(t, h) for t, h in every_tensor(q, g, x, profile).values())
    qgs = {"torch": compile_model(g, load_profile(profile), None)}
    targets = {n.name: n.target for n in q.graph.nodes if n.op == "call_module"}
    n_tables = 0
    for lay in qgs["torch"].layers:
        if lay.op not in ("hardswish", "hardsigmoid"):
            continue
        gi, go = qgs["torch"].grids[lay.inputs[0]], qgs["torch"].grids[lay.output]
        codes = np.arange(gi.qmin, gi.qmax + 1)
        xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(codes.astype(np.uint8)), gi.scale,
                                                     gi.zero_point)
        mod = q.get_submodule(targets[lay.name])
        yt = (mod(xq) if lay.op == "hardswish" else torch.nn.functional.hardsigmoid(xq)).int_repr().numpy()
        assert np.array_equal(np.clip(lay.table, go.qmin, go.qmax), yt.astype(np.int64)), lay.name
        n_tables += 1
    assert n_tables >= 10  # (the exact form's tables coincide with PyTorch's on these grids: exact_differs == 0)
    # the other engine's profile is another function (the activation and mul forms alone change nothing here:
    # activation_form "exact" and mul_form "requant" give the same integers on these 16 inputs)
    assert sum(int((t != h).sum()) for t, h in every_tensor(q, g, x, other).values()) > 0


@pytest.mark.parametrize("engine,profile,other", ENGINES)
def test_other_engine_profile_disagrees(engine, profile, other, converted):
    """The neighbouring profile (fbgemm's requant for oneDNN's convolutions, or the reverse) is another function:
    ResNet-8's intermediate tensors differ somewhere on 16 inputs."""
    q, shape, mean, std, images = converted("resnet8", engine)
    g = import_torch_int8(q, shape, mean, std)
    x = images(16, 1)
    diff = sum(int((t != h).sum()) for t, h in every_tensor(q, g, x, other).values())
    assert diff > 0
    assert all(np.array_equal(t, h) for t, h in every_tensor(q, g, x, profile).values())


@pytest.mark.skipif(not VNNI, reason="x86 engine convolutions go to oneDNN on VNNI CPUs")
def test_x86_scale_form_follows_the_cpu(converted):
    """oneDNN's convolutions apply the scales as their product on an AMX CPU and one after the other without AMX
    (measured without AMX: the product form differed from PyTorch on 1 and 3 of 262,144 outputs of two ResNet-8
    convs): the importer picks this CPU's profile, every tensor of ResNet-8 equals it, and the other CPU's profile
    differs on some tensor."""
    q, shape, mean, std, images = converted("resnet8", "x86")
    g = import_torch_int8(q, shape, mean, std)
    assert g.metadata["default_profile"] == X86_PROFILE
    x = images(64, 0)
    assert all(np.array_equal(t, h) for t, h in every_tensor(q, g, x, X86_PROFILE).values())
    assert any(not np.array_equal(t, h) for t, h in every_tensor(q, g, x, X86_OTHER).values())


@pytest.mark.parametrize("form", ["onednn", "onednn_vnni", "onednn_combined", "onednn_sequential"])
def test_onednn_requant_fast_equals_reference(form):
    """ops.make_onednn_requant_params: the fast path (numba kernel, or numpy for the sequential scales), and
    reference.py agree, and the arithmetic is the documented chain of each form (x86 engine; pt2e's combined and
    sequential scales; the x86 engine without AMX); the four forms are four functions on these accumulators."""
    from hwsim import ops, reference

    rng = np.random.default_rng(3)
    # every accumulator in [-2^19, 2^19) on 5 channels: near-tie values on each, where the forms differ
    acc = np.broadcast_to(np.arange(-2 ** 19, 2 ** 19).reshape(1, 1, -1), (1, 5, 2 ** 20))
    sw = rng.uniform(1e-4, 1e-3, 5)
    b = rng.normal(0, 0.3, 5).astype(np.float32)
    cfg = ops.Requant(zero_point="before")
    f32 = np.float32
    one = f32(1)
    d = one / (one / (one / f32(0.0371)))
    a = acc.astype(f32)
    ys = {}
    for fm in ("onednn", "onednn_vnni", "onednn_combined", "onednn_sequential"):
        p = ops.make_onednn_requant_params(0.0123, sw, 0.0371, bias=b, form=fm)
        y_fast, _ = ops.requantize(acc, p, cfg, 60, 0, 255)
        ys[fm] = y_fast
        if fm == form:
            idx = rng.integers(0, 2 ** 20, 50)
            y_ref, _ = reference.requantize(acc[:, :, idx], p, cfg, 60, 0, 255)
            assert np.array_equal(y_fast[:, :, idx], y_ref)
    swf = sw.astype(f32).reshape(1, -1, 1)
    scaled = {"onednn": a * (one / (one / f32(0.0123)) * swf).astype(f32),
              "onednn_vnni": (a * (one / (one / f32(0.0123)))).astype(f32) * swf,
              "onednn_combined": a * (f32(0.0123) * swf).astype(f32),
              "onednn_sequential": (a * f32(0.0123)).astype(f32) * swf}[form].astype(f32)
    v = (((scaled + b.reshape(1, -1, 1)).astype(f32) * d).astype(f32) + f32(60)).astype(f32)
    assert np.array_equal(ys[form], np.clip(np.rint(v).astype(np.int64), 0, 255))
    forms = list(ys)
    assert all(not np.array_equal(ys[f1], ys[f2]) for i, f1 in enumerate(forms) for f2 in forms[i + 1:])


def test_quantize_per_tensor_form():
    """torch.quantize_per_tensor == TorchQuantizeGrid (one rounding of fma(x, fl32(1/s), z)) on values next to
    rounding ties, every length from a vector body to a scalar tail; the float64 and float32 divisions and
    multiply-then-add disagree."""
    rng = np.random.default_rng(0)
    bad = {"torch": 0, "float64": 0, "float32": 0}
    for n in (1, 7, 8, 33, 785):
        for _ in range(40):
            s, z = float(np.float32(rng.uniform(1e-3, 0.05))), int(rng.integers(0, 128))
            k = rng.integers(-z, 255 - z, n)
            x = ((k + 0.5) * s).astype(np.float32)
            x = np.where(rng.random(n) < 0.5, np.nextafter(x, -np.inf), np.nextafter(x, np.inf)).astype(np.float32)
            t = torch.quantize_per_tensor(torch.from_numpy(x), s, z, torch.quint8).int_repr().numpy()
            for name, cls in (("torch", TorchQuantizeGrid), ("float64", Grid), ("float32", Float32DivisionGrid)):
                bad[name] += int((cls(s, z, 0, 255, 8, False).quantize(x) != t).sum())
    assert bad["torch"] == 0 and bad["float64"] > 0 and bad["float32"] > 0, bad


def test_unsupported_op_one_line():
    """A quantized op the importer does not read: one line naming the fx node."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.act = torch.nn.LeakyReLU(0.1)

        def forward(self, x):
            return self.act(self.conv(x))

    q = fx_int8(Net(), (1, 8, 8), np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32), "fbgemm")
    with pytest.raises(HwsimError) as e:
        import_torch_int8(q, (1, 8, 8))
    msg = str(e.value)
    assert "\n" not in msg and "fx node 'act'" in msg and "LeakyReLU" in msg
    with pytest.raises(HwsimError, match="not a torch.fx GraphModule"):
        import_torch_int8(Net(), (1, 8, 8))


def test_torch_export_graph_one_line():
    """A torch.export (pt2e-style) module given to the float export: one line, not torch's NotImplementedError from
    eval() (issue 17)."""
    from frontends.pytorch.export import to_graph

    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()).eval()
    gm = torch.export.export(m, (torch.zeros(1, 1, 6, 6),)).module()
    with pytest.raises(HwsimError) as e:
        to_graph(gm, (1, 6, 6))
    assert "\n" not in str(e.value) and "torch.export" in str(e.value)


def test_per_tensor_weights_and_linear_relu():
    """Per-tensor weights (torch.ao's default_qconfig), a LinearReLU and a flatten method: identical integers on
    both engines' profiles (fbgemm packs them here)."""
    from torch.ao.quantization import QConfigMapping, default_qconfig

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 6, 3, stride=2, padding=1)
            self.fc1 = torch.nn.Linear(6 * 4 * 4, 12)
            self.relu = torch.nn.ReLU()
            self.fc2 = torch.nn.Linear(12, 5)

        def forward(self, x):
            return self.fc2(self.relu(self.fc1(torch.flatten(self.conv(x), 1))))

    torch.manual_seed(1)
    rng = np.random.default_rng(2)
    torch.backends.quantized.engine = "fbgemm"
    m = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = prepare_fx(m, QConfigMapping().set_global(default_qconfig), (torch.zeros(1, 2, 8, 8),))
        with torch.no_grad():
            p(torch.from_numpy(rng.random((32, 2, 8, 8), dtype=np.float32)))
        q = convert_fx(p)
    mods = {type(mod).__name__ for mod in q.modules()}
    assert {"LinearReLU", "Conv2d", "Linear"} <= mods
    g = import_torch_int8(q, (2, 8, 8))
    assert all(len(ld["w_scale"]) == 1 for ld in given_of(g).layers.values())
    x = rng.random((64, 2, 8, 8), dtype=np.float32)
    tensors = every_tensor(q, g, x, "int8-pytorch")
    assert len(tensors) >= 4
    for name, (t, h) in tensors.items():
        assert np.array_equal(t, h), name
    # the flatten method is not quantization-aware under default_qconfig: a float section in the middle, refused
    Net.forward = lambda self, x: self.fc2(self.relu(self.fc1(self.conv(x).flatten(1))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = prepare_fx(Net().eval(), QConfigMapping().set_global(default_qconfig), (torch.zeros(1, 2, 8, 8),))
        p(torch.from_numpy(rng.random((8, 2, 8, 8), dtype=np.float32)))
        q = convert_fx(p)
    with pytest.raises(HwsimError) as e:
        import_torch_int8(q, (2, 8, 8))
    assert "\n" not in str(e.value) and "dequantizes in the middle of the graph" in str(e.value)


@pytest.mark.skipif(not VNNI, reason="x86 engine convolutions go to oneDNN on VNNI CPUs")
@pytest.mark.parametrize("groups", [96, 128])
def test_x86_conv_dispatch_by_groups(groups, tmp_path):
    """PyTorch's x86 engine sends a convolution with <= 100 groups to oneDNN and one with more to fbgemm
    (OnednnUtils.h, onednn_utils::prefer_onednn): a depthwise conv of 96 / 128 groups, every tensor identical under
    int8-pytorch-onednn (overrides selected by max_groups = 100); the other backend's form for that layer differs."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pw = torch.nn.Conv2d(3, groups, 1)
            self.relu = torch.nn.ReLU()
            self.dw = torch.nn.Conv2d(groups, groups, 3, padding=1, groups=groups)

        def forward(self, x):
            return self.dw(self.relu(self.pw(x)))

    torch.manual_seed(groups)
    rng = np.random.default_rng(groups)
    q = fx_int8(Net().eval(), (3, 16, 16), rng.random((16, 3, 16, 16), dtype=np.float32), "x86")
    g = import_torch_int8(q, (3, 16, 16))
    x = rng.random((64, 3, 16, 16), dtype=np.float32)
    for name, (t, h) in every_tensor(q, g, x, X86_PROFILE).items():
        assert np.array_equal(t, h), name
    # the neighbouring form on the depthwise layer: fbgemm's (int8-pytorch) for 96 groups, oneDNN's for 128
    if groups <= 100:
        other = "int8-pytorch"
    else:
        other = tmp_path / "all-onednn.toml"
        other.write_text(f'extends = "int8-pytorch"\n[[overrides]]\nop = "depthwise"\n"bias.form" = "{X86_FORM}"\n'
                         '"requant.zero_point" = "before"\n')
    t, h = every_tensor(q, g, x, str(other))["dw"]
    assert (t != h).sum() > 0


def test_max_groups_selector_bad_value(tmp_path):
    """overrides[].max_groups: an integer >= 1, else one line naming the key."""
    from hwsim.profile import load_profile as lp

    p = tmp_path / "p.toml"
    for bad in ("0", "true", '"100"'):
        p.write_text(f'extends = "int8-pytorch"\n[[overrides]]\nop = "conv"\nmax_groups = {bad}\n"bias.form" = "onednn"\n')
        with pytest.raises(HwsimError, match=r"'overrides\[0\]\.max_groups': allowed an integer >= 1") as e:
            lp(str(p))
        assert "\n" not in str(e.value)
