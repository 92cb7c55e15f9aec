"""pt2e int8 models (torch.export -> torchao's prepare_pt2e / convert_pt2e with X86InductorQuantizer) imported with
their own numbers (frontends.pytorch.importers.import_pt2e) and run by hwsim under int8-pytorch-inductor: the
integers torch.compile's x86 lowering (freezing on: oneDNN qconv / qlinear_pointwise, generated C++ quantize and
mean kernels) computes, bit for bit; the arithmetic forms measured op by op against torch.ops.onednn, the
neighbouring forms shown to differ; residual networks (a conv + add fused as oneDNN's sum post-op) whole-network;
MobileNetV3's float sections (hard-swish, squeeze-excite) as fused forms whole-network; a float section hwsim does not
model (float logits, a hard-swish on a shared conv output) or an op outside the supported set is one line naming the
pt2e node."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")  # tests.importers.test_given_network (the bundled models as torch modules)
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"torchao (pt2e's prepare_pt2e / convert_pt2e and X86InductorQuantizer) not importable: {e}",
                allow_module_level=True)

from frontends.pytorch.importers import import_pt2e  # noqa: E402
from hwsim import ops  # noqa: E402
from hwsim.compile import InductorQuantizeGrid, TorchQuantizeGrid, compile_model  # noqa: E402
from hwsim.errors import HwsimError  # noqa: E402
from hwsim.execute import run_integer  # noqa: E402
from hwsim.given import given_of  # noqa: E402
from hwsim.profile import load_profile  # noqa: E402
from tests.engines import cpu_flags  # noqa: E402
from tests.importers.test_given_network import _bundled_torch, _images, _resnet  # noqa: E402

FLAGS = cpu_flags()
# the profile's forms are those of oneDNN's AMX convolutions and VNNI depthwise / matmul kernels (ONEDNN_VERBOSE)
AMX = pytest.mark.skipif(not {"amx_int8", "avx512_vnni"} <= FLAGS,
                         reason="int8-pytorch-inductor models oneDNN's kernels on an AMX + VNNI CPU")
Q = torch.ops.quantized_decomposed.quantize_per_tensor.default


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pt2e_int8(m, shape, calib):
    """``m`` exported (dynamic batch), quantized by X86InductorQuantizer's default config, calibrated on ``calib``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = torch.export.export(copy.deepcopy(m).eval(), (torch.zeros(2, *shape),),
                                 dynamic_shapes=({0: torch.export.Dim("N")},))
        q = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        p = prepare_pt2e(ex.module(), q)
        with torch.no_grad():
            p(torch.from_numpy(calib))
        return convert_pt2e(p)


def cut(gm, names):
    """A copy of the pt2e graph whose outputs are the quantize_per_tensor nodes ``names`` (their integers)."""
    gm = copy.deepcopy(gm)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    nodes = {n.name: n for n in gm.graph.nodes}
    out.args = (tuple(nodes[k] for k in names),)
    gm.graph._codegen = torch.fx.graph.CodeGen()  # plain tuple output, not the exported pytree spec
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def inductor(gm, x, raw: bool = False):
    """torch.compile(gm) with freezing (the x86 int8 lowering) on x: its outputs as int64 arrays (``raw``: as
    torch.compile returns them, numpy)."""
    import torch._inductor.config as ic

    old = ic.freezing
    ic.freezing = True
    try:
        torch._dynamo.reset()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ys = torch.compile(gm)(torch.from_numpy(x))
    finally:
        ic.freezing = old
        torch._dynamo.reset()
    ys = ys if isinstance(ys, (tuple, list)) else (ys,)
    return [y.numpy() if raw else y.numpy().astype(np.int64) for y in ys]


@pytest.fixture(scope="module")
def smallcnn():
    m, spec = _bundled_torch("smallcnn_baseline")
    c = pt2e_int8(m, spec.shape, _images("smallcnn_baseline", 32, 9))
    return c, spec


@AMX
def test_smallcnn_float_logits_identical(smallcnn, tmp_path):
    """The bundled SmallCNN whole (issue 17): X86InductorQuantizer leaves the last linear's output unquantized and
    torch.compile runs it as oneDNN's qlinear_pointwise with a float32 output. hwsim's logits under
    int8-pytorch-inductor (hwsim.ops.mac.float_output: oneDNN's float value from the layer's accumulators) ==
    torch.compile's float32 logits on 256 real test images, every float bit; the other scale form (combined vs
    sequential, bias.form) differs; int8-pytorch (fbgemm, dequantized accumulators) runs and classifies alike."""
    from hwsim.execute import run_quantized

    c, spec = smallcnn
    g = import_pt2e(c, spec.shape, spec.mean, spec.std)
    assert g.metadata["float_output"] == g.outputs[0]
    x = _images("smallcnn_baseline", 256, 2)
    (ref,) = inductor(c, x, raw=True)
    assert ref.dtype == np.float32 and ref.shape == (256, 10)
    prof = load_profile("int8-pytorch-inductor")
    qg = compile_model(g, prof, None)
    # the reference path (plain Python loops: 1.2 s per image here) on the first 16 images, the fast path on all
    for impl, n in (("fast", len(x)), ("reference", 16)):
        out = run_quantized(qg, x[:n], impl=impl).logits
        assert out.dtype == np.float32 and np.array_equal(out, ref[:n]), (impl, int((out != ref[:n]).sum()))
    # the neighbour: the linear layers' other scale form (the profile's last override, "linear": combined)
    from importlib import resources

    text = (resources.files("hwsim") / "profiles" / "int8-pytorch-inductor.toml").read_text(encoding="utf-8")
    head, tail = text.rsplit('"bias.form" = "onednn_combined"', 1)
    assert 'op = "linear"' in head.rsplit("[[overrides]]", 1)[1]
    (tmp_path / "seq.toml").write_text(head + '"bias.form" = "onednn_sequential"' + tail)
    near = run_quantized(compile_model(g, load_profile(str(tmp_path / "seq.toml")), None), x).logits
    assert int((near != ref).sum()) > 0, "the sequential scale form is another function"
    fb = run_quantized(compile_model(g, load_profile("int8-pytorch"), None), x).logits
    assert fb.dtype == np.float32 and np.mean(fb.argmax(1) == ref.argmax(1)) > 0.95


@AMX
def test_smallcnn_integer_sections_identical(smallcnn):
    """The bundled SmallCNN quantized by pt2e and compiled by inductor: the last conv's output and the pooled
    features (the integers the float-output last linear reads) == hwsim's under int8-pytorch-inductor on 128 real
    test images; int8-pytorch-onednn (the x86 engine's quantized::conv2d) and int8-pytorch (fbgemm) differ on the
    conv output. The eager module (float DQ -> conv -> Q) is another function too."""
    c, spec = smallcnn
    qs = [n.name for n in c.graph.nodes if n.target == Q]
    names = [qs[-3], qs[-1]]  # the third conv + relu output; the flattened pooled features
    gm = cut(c, names)  # one compiled graph with both outputs; hwsim graphs have one output: one import each
    gs = [import_pt2e(cut(c, [k]), spec.shape, spec.mean, spec.std) for k in names]
    assert all(g.metadata["default_profile"] == given_of(g).profile == "int8-pytorch-inductor" for g in gs)
    x = _images("smallcnn_baseline", 128, 0)
    ys = inductor(gm, x)
    with torch.no_grad():
        eager = [t.numpy().astype(np.int64) for t in gm(torch.from_numpy(x))]
    diff = {}
    for prof in ("int8-pytorch-inductor", "int8-pytorch-onednn", "int8-pytorch"):
        diff[prof] = []
        for g, k, y in zip(gs, names, ys):
            qg = compile_model(g, load_profile(prof), None)
            h = run_integer(qg, x)[qg.output_name]
            assert qg.output_name == g.pt2e_tensors[k]
            diff[prof].append(int((h.astype(np.int64).reshape(y.shape) != y).sum()))
    assert np.unique(ys[0]).size > 50 and ys[0].size == 128 * 32 * 7 * 7
    assert diff["int8-pytorch-inductor"] == [0, 0], diff
    assert diff["int8-pytorch-onednn"][0] > 0 and diff["int8-pytorch"][0] > 0, diff
    assert sum(int((e != y).sum()) for e, y in zip(eager, ys)) > 0


def _onednn_conv(rng, C, K, k, groups, n=16, H=32):
    """torch.ops.onednn.qconv_pointwise (as inductor calls it: channels-last uint8 input, float bias, output scale
    and zero point) on random near-saturation-free data, and hwsim's three oneDNN forms on the same accumulators."""
    f32 = np.float32
    sx, zx = float(f32(rng.uniform(0.005, 0.03))), int(rng.integers(0, 40))
    sy, zy = float(f32(rng.uniform(0.001, 0.01))), int(rng.integers(1, 60))
    wq = rng.integers(-127, 128, (K, C // groups, k, k)) // 2
    sw = rng.uniform(2e-3, 1e-2, K).astype(f32)
    b = rng.normal(0, 0.5, K).astype(f32)
    xq = rng.integers(0, 256, (n, C, H, H))
    xt = torch.from_numpy(xq.astype(np.uint8)).contiguous(memory_format=torch.channels_last)
    pad = [k // 2] * 2
    pw = torch.ops.onednn.qconv_prepack(torch.from_numpy(wq.astype(np.int8)), torch.from_numpy(sw), sx, zx, [1, 1],
                                        pad, [1, 1], groups, None)
    y = torch.ops.onednn.qconv_pointwise.tensor(
        xt, torch.tensor(sx), torch.tensor(zx, dtype=torch.int32), pw, torch.from_numpy(sw),
        torch.zeros(K, dtype=torch.int64), torch.from_numpy(b), [1, 1], pad, [1, 1], groups, sy, zy, torch.uint8,
        "none", [None], "").numpy().astype(np.int64)
    acc = torch.nn.functional.conv2d(torch.from_numpy((xq - zx).astype(np.float64)),
                                     torch.from_numpy(wq.astype(np.float64)), padding=k // 2,
                                     groups=groups).numpy().astype(np.int64)
    return y, acc, sx, sw, sy, zy, b


def _onednn_linear(rng, C, K=64, n=4096):
    f32 = np.float32
    sx, zx = float(f32(rng.uniform(0.005, 0.03))), int(rng.integers(0, 60))
    sy, zy = float(f32(rng.uniform(0.01, 0.08))), int(rng.integers(1, 60))
    wq = rng.integers(-127, 128, (K, C))
    sw = rng.uniform(2e-3, 1e-2, K).astype(f32)
    b = rng.normal(0, 0.5, K).astype(f32)
    xq = rng.integers(0, 256, (n, C))
    pw = torch.ops.onednn.qlinear_prepack(torch.from_numpy(wq.astype(np.int8)), None)
    y = torch.ops.onednn.qlinear_pointwise.tensor(
        torch.from_numpy(xq.astype(np.uint8)), torch.tensor(sx), torch.tensor(zx, dtype=torch.int32), pw,
        torch.from_numpy(sw), torch.zeros(K, dtype=torch.int64), torch.from_numpy(b), sy, zy, torch.uint8, "none",
        [], "").numpy().astype(np.int64)
    return y, (xq - zx) @ wq.T, sx, sw, sy, zy, b


@AMX
@pytest.mark.parametrize("case,form", [("conv3x3", "onednn_combined"), ("conv1x1", "onednn_combined"),
                                       ("linear", "onednn_combined"), ("depthwise", "onednn_sequential"),
                                       ("linear_k4", "onednn_sequential")])
def test_onednn_pointwise_forms(case, form):
    """Op level: torch.ops.onednn.qconv_pointwise / qlinear_pointwise == make_onednn_requant_params(form) on every
    output. oneDNN's AMX kernels (dense convolutions, matmuls of >= 32 inputs) apply one combined scale
    fl32(s_x*s_w), its VNNI / AVX-512 kernels (depthwise, a 4-input matmul) s_x then s_w; the other oneDNN forms and
    fbgemm's differ somewhere. int8-pytorch-inductor selects the first four."""
    rng = np.random.default_rng({"conv3x3": 1, "conv1x1": 2, "depthwise": 3, "linear": 4, "linear_k4": 5}[case])
    bad = {"onednn": 0, "onednn_combined": 0, "onednn_sequential": 0, "fbgemm": 0}
    total = 0
    for _ in range(12):
        if case.startswith("linear"):
            y, acc, sx, sw, sy, zy, b = _onednn_linear(rng, 4 if case == "linear_k4" else 64)
        else:
            C, K, k, groups = {"conv3x3": (16, 32, 3, 1), "conv1x1": (32, 32, 1, 1),
                               "depthwise": (32, 32, 3, 32)}[case]
            y, acc, sx, sw, sy, zy, b = _onednn_conv(rng, C, K, k, groups)
        total += y.size
        for fm in ("onednn", "onednn_combined", "onednn_sequential"):
            p = ops.make_onednn_requant_params(sx, sw, sy, bias=b, form=fm)
            bad[fm] += int((ops.requantize(acc, p, ops.Requant(zero_point="before"), zy, 0, 255)[0] != y).sum())
        p = ops.make_requant_params(sx, sw, sy, ops.Requant(), bias=b)
        bad["fbgemm"] += int((ops.requantize(acc, p, ops.Requant(), zy, 0, 255)[0] != y).sum())
    assert bad[form] == 0, bad
    assert all(v > 0 for k, v in bad.items() if k != form and not (k == "onednn" and form == "onednn_combined")), bad
    assert total > 10 ** 6


def _conv_sum(rng, C, K, k, relu, n=16, H=32):
    """torch.ops.onednn.qconv2d_pointwise.binary as inductor calls it for a conv + add in a residual block (the
    float-output pattern: accum = the other operand dequantized by the generated kernel, sum scale 1), then the
    generated quantize kernel (InductorQuantizeGrid, test_inductor_input_quantizer_compiled) on its float output:
    (integers, acc, other operand's codes, parameters)."""
    f32 = np.float32
    sx, zx = float(f32(rng.uniform(0.005, 0.03))), int(rng.integers(0, 40))
    sr, zr = float(f32(rng.uniform(0.01, 0.06))), int(rng.integers(0, 80))
    sy, zy = float(f32(rng.uniform(0.01, 0.06))), int(rng.integers(0, 60))
    wq = rng.integers(-127, 128, (K, C, k, k)) // 2
    sw = rng.uniform(2e-3, 1e-2, K).astype(f32)
    b = rng.normal(0, 0.5, K).astype(f32)
    xq, rq = rng.integers(0, 256, (n, C, H, H)), rng.integers(0, 256, (n, K, H, H))
    d = ((rq.astype(f32) - f32(zr)) * f32(sr)).astype(f32)  # cpp_fused_dequantize_per_tensor
    pad = [k // 2] * 2
    pw = torch.ops.onednn.qconv_prepack(torch.from_numpy(wq.astype(np.int8)), torch.from_numpy(sw), sx, zx, [1, 1],
                                        pad, [1, 1], 1, None)
    v = torch.ops.onednn.qconv2d_pointwise.binary(
        torch.from_numpy(xq.astype(np.uint8)).contiguous(memory_format=torch.channels_last), sx, zx, pw,
        torch.from_numpy(sw), torch.zeros(K, dtype=torch.int64),
        torch.from_numpy(d).contiguous(memory_format=torch.channels_last), torch.from_numpy(b), [1, 1], pad, [1, 1],
        1, 1.0, 0, torch.float32, 1.0, 0, "sum", 1.0, "relu" if relu else "none", [], "").numpy()
    y = InductorQuantizeGrid(sy, zy, 0, 255, 8, False).quantize(v)
    acc = torch.nn.functional.conv2d(torch.from_numpy((xq - zx).astype(np.float64)),
                                     torch.from_numpy(wq.astype(np.float64)), padding=k // 2).numpy().astype(np.int64)
    return y, acc, rq, dict(sx=sx, sw=sw, b=b, sr=sr, zr=zr, sy=sy, zy=zy)


@AMX
@pytest.mark.parametrize("relu", [False, True])
def test_onednn_conv_sum_form(relu):
    """Op level: a conv (AMX kernels) with an add fused as oneDNN's sum post-op and its output quantized by
    inductor's kernel == hwsim.ops.add.onednn_sum (requant.add_form = "onednn_sum") with the conv's
    onednn_combined scales, on every output (a ReLU is the clamp at z_y); the sequential scales and PyTorch's
    quantized add of the requantized conv output (add_form "dequantize") differ."""
    from hwsim.ops.add import onednn_sum

    rng = np.random.default_rng(7 + relu)
    bad = {"onednn_combined": 0, "onednn_sequential": 0, "dequantize": 0}
    total = 0
    for C, K, k in ((16, 32, 3), (32, 64, 1)):
        y, acc, rq, p = _conv_sum(rng, C, K, k, relu)
        total += y.size
        lo = p["zy"] if relu else 0
        for form in ("onednn_combined", "onednn_sequential"):
            q = ops.make_onednn_requant_params(p["sx"], p["sw"], p["sy"], bias=p["b"], form=form)
            h = onednn_sum(acc, q, rq, r_scale=p["sr"], r_zero_point=p["zr"], y_scale=p["sy"], y_zero_point=p["zy"])
            bad[form] += int((np.clip(h, lo, 255) != y).sum())
        q = ops.make_onednn_requant_params(p["sx"], p["sw"], p["sy"], bias=p["b"], form="onednn_combined")
        c, _ = ops.requantize(acc, q, ops.Requant(zero_point="before"), p["zy"], 0, 255)
        h, _ = ops.add(c, rq, a_scale=p["sy"], a_zero_point=p["zy"], b_scale=p["sr"], b_zero_point=p["zr"],
                       y_scale=p["sy"], y_zero_point=p["zy"], qmin=lo, qmax=255)
        bad["dequantize"] += int((h != y).sum())
    assert total > 10 ** 6 and bad["onednn_combined"] == 0, bad
    assert bad["onednn_sequential"] > 0 and bad["dequantize"] > 0, bad


@pytest.mark.slow
@AMX
@pytest.mark.parametrize("net", ["resnet8", "mobilenetv2"])
def test_residual_networks_identical(net):
    """pt2e ResNet-8 (conv + add + relu) and the bundled MobileNetV2 (conv + add), compiled by inductor: every
    quantized tensor (each residual add's, the pooled features) == hwsim's under int8-pytorch-inductor on 256
    inputs; the same integers without the fused add's form (requant.add_form = "dequantize": the conv output
    requantized, then PyTorch's quantized add), int8-pytorch-onednn and, on ResNet-8, the exact global pool
    (requant.pool_form = "exact") differ."""
    if net == "resnet8":
        m, shape, mean, std = _resnet(None)
    else:
        m, spec = _bundled_torch(net)
        shape, mean, std = spec.shape, spec.mean, spec.std
    c = pt2e_int8(m, shape, _images(net, 32, 9))
    qs = [n.name for n in c.graph.nodes if n.target == Q]
    x = _images(net, 256, 0)
    ys = inductor(cut(c, qs[1:]), x)
    g = import_pt2e(cut(c, [qs[-1]]), shape, mean, std)  # the last layer's float logits are not an integer section
    fused = [lay for lay in compile_model(g, load_profile("int8-pytorch-inductor"), None).layers
             if getattr(lay, "fused_sum", None)]
    assert len(fused) == 3  # every residual add is a fused conv + add
    diff = {}
    for name, prof in (("inductor", load_profile("int8-pytorch-inductor")),
                       ("add dequantize", load_profile("int8-pytorch-inductor", {"requant.add_form": "dequantize"})),
                       ("pool exact", load_profile("int8-pytorch-inductor", {"requant.pool_form": "exact"})),
                       ("onednn", load_profile("int8-pytorch-onednn"))):
        env = run_integer(compile_model(g, prof, None), x)
        diff[name] = sum(int((env[g.pt2e_tensors[k]].astype(np.int64).reshape(y.shape) != y).sum())
                         for k, y in zip(qs[1:], ys))
    print(net, sum(y.size for y in ys), "integers:", diff)
    assert diff["inductor"] == 0 and diff["add dequantize"] > 0 and diff["onednn"] > 0, diff
    assert net != "resnet8" or diff["pool exact"] > 0, diff  # MobileNetV2's 7x7 means: no tie in 256 images


@pytest.mark.parametrize("rounding", ["half_even", "half_away"])
def test_inductor_pool_form_fast_equals_reference(rounding):
    """requant.pool_form = "inductor" (global pools): the numpy path == the exact-rational reference, with the
    input's grid and with an output grid of its own; the exact and ONNX Runtime forms differ somewhere."""
    rng = np.random.default_rng(3)
    other = 0
    for hw in ((4, 4), (7, 7), (3, 5)):
        s, z = float(np.float32(rng.uniform(0.001, 0.1))), int(rng.integers(0, 256))
        x = rng.integers(0, 256, (4, 32, *hw))
        for extra in ({}, {"out_scale": s * 0.75, "out_zero_point": z // 2}):
            kw = dict(rounding=rounding, form="inductor", scale=s, **extra)
            y = ops.global_avg_pool(x, z, **kw)
            np.testing.assert_array_equal(y, ops.global_avg_pool(x, z, impl="reference", **kw))
        other += int((ops.global_avg_pool(x, z, rounding=rounding) != ops.global_avg_pool(
            x, z, rounding=rounding, form="inductor", scale=s)).sum())
    assert other > 0


@AMX
def test_small_residual_fast_reference_and_inductor(tmp_path):
    """A conv + add + relu block and a conv + add block (pt2e, compiled by inductor): hwsim's fast path == its
    reference path == torch.compile's integers on every quantized tensor; pool_form "inductor" on an avgpool2d
    (not measured) is one line naming the key."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.c, self.d = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 8, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            y = torch.relu(self.b(y) + y)
            z = self.c(y) + y
            return torch.nn.functional.adaptive_avg_pool2d(self.d(z) + z, 1).flatten(1)

    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    c = pt2e_int8(Net(), (3, 8, 8), rng.random((16, 3, 8, 8), dtype=np.float32))
    qs = [n.name for n in c.graph.nodes if n.target == Q]
    x = rng.random((8, 3, 8, 8), dtype=np.float32)
    ys = inductor(cut(c, qs[1:]), x)
    g = import_pt2e(cut(c, [qs[-1]]), (3, 8, 8))
    qg = compile_model(g, load_profile("int8-pytorch-inductor"), None)
    assert sum(getattr(lay, "fused_sum", None) is not None for lay in qg.layers) == 3
    envs = [run_integer(qg, x, impl=impl) for impl in ("fast", "reference")]
    for k, y in zip(qs[1:], ys):
        t = g.pt2e_tensors[k]
        assert np.array_equal(envs[0][t].astype(np.int64).reshape(y.shape), y), k
        assert np.array_equal(envs[1][t].astype(np.int64), envs[0][t].astype(np.int64)), k
    from hwsim.execute import run_quantized

    for threads in (1, 2):  # 2: the batch split across threads
        out = run_quantized(qg, x, batch_size=8, keep_tensors=True, threads=threads).tensors[qg.output_name]
        assert np.array_equal(out.astype(np.int64).reshape(ys[-1].shape), ys[-1])
    import json

    from hwsim.golden import write_golden
    from hwsim.graph import load_model, save_model

    write_golden(qg, x[:2], tmp_path / "golden")  # a testbench learns which operand is the fused conv's
    manifest = json.loads((tmp_path / "golden" / "manifest.json").read_text())
    sums = [lay["onednn_sum"] for lay in manifest["layers"] if "onednn_sum" in lay]
    assert [s["conv"] for s in sums] == [lay.fused_sum[1] for lay in qg.layers if getattr(lay, "fused_sum", None)]

    save_model(g, tmp_path / "r.hwsim")  # the fused conv's grid travels in given.json
    qg2 = compile_model(load_model(tmp_path / "r.hwsim"), load_profile("int8-pytorch-inductor"), None)
    out = run_integer(qg2, x)[qg2.output_name]
    assert np.array_equal(out.astype(np.int64).reshape(ys[-1].shape), ys[-1])
    from hwsim.graph import GraphBuilder

    b = GraphBuilder((3, 8, 8))
    with pytest.raises(HwsimError, match="pool_form = 'inductor'") as e:
        y = b.conv2d("c", "input", rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), None, 1, 1, 1, 1)
        qg = compile_model(b.build(outputs=[b.avgpool2d("p", y, 2, 2)]), load_profile("int8-pytorch-inductor"),
                           rng.random((4, 3, 8, 8), dtype=np.float32))
        run_integer(qg, rng.random((2, 3, 8, 8), dtype=np.float32))
    assert "\n" not in str(e.value)


def test_inductor_input_quantizer():
    """The generated quantize kernel: round_half_even(fl32(x * fl32(1/s))) + z, checked against the eager reference
    decomposition's arithmetic on values next to rounding ties with odd zero points; torch.quantize_per_tensor's FMA
    form (z added before the one rounding) differs there."""
    rng = np.random.default_rng(0)
    bad = {"inductor": 0, "torch": 0}
    for _ in range(40):
        s, z = float(np.float32(rng.uniform(1e-3, 0.05))), int(rng.integers(0, 64)) * 2 + 1
        k = rng.integers(-z, 255 - z, 512)
        x = ((k + 0.5) * s).astype(np.float32)
        x = np.where(rng.random(512) < 0.5, np.nextafter(x, -np.inf), x).astype(np.float32)
        t = Q(torch.from_numpy(x), s, z, 0, 255, torch.uint8).numpy().astype(np.int64)
        for name, cls in (("inductor", InductorQuantizeGrid), ("torch", TorchQuantizeGrid)):
            bad[name] += int((cls(s, z, 0, 255, 8, False).quantize(x) != t).sum())
    assert bad["inductor"] == 0 and bad["torch"] > 0, bad


@AMX
def test_inductor_input_quantizer_compiled():
    """The same form against the compiled kernel itself (a graph that only quantizes its input)."""
    rng = np.random.default_rng(1)
    s, z = float(np.float32(0.0123)), 37
    k = rng.integers(-z, 255 - z, (4, 1, 16, 16))
    x = ((k + 0.5) * s).astype(np.float32)

    class Net(torch.nn.Module):
        def forward(self, x):
            return Q(x, s, z, 0, 255, torch.uint8)

    gm = torch.fx.symbolic_trace(Net())
    (y,) = inductor(gm, x)
    assert np.array_equal(InductorQuantizeGrid(s, z, 0, 255, 8, False).quantize(x), y)


def test_exported_program_and_float_sections(smallcnn):
    """import_pt2e takes the ExportedProgram of a converted model too; the default x86 quantization of the whole
    SmallCNN imports (its float logits: the float-output last layer, test_smallcnn_float_logits_identical); a conv
    + add whose sum is the model's float output is a float section: one line naming the node; an op outside the
    supported set: one line naming it."""
    c, spec = smallcnn
    whole = import_pt2e(c, spec.shape, spec.mean, spec.std)
    assert whole.metadata["float_output"] == whole.outputs[0] == "linear"
    qs = [n.name for n in c.graph.nodes if n.target == Q]
    gm = cut(c, [qs[-1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(gm, (torch.zeros(2, *spec.shape),), dynamic_shapes=({0: torch.export.Dim("N")},))
    g1, g2 = import_pt2e(gm, spec.shape), import_pt2e(ep, spec.shape)
    assert given_of(g1).grids == given_of(g2).grids and sorted(given_of(g1).arrays) == sorted(given_of(g2).arrays)
    from frontends.pytorch.importers import import_torch_int8  # the FX entry hands a pt2e graph on

    assert given_of(import_torch_int8(gm, spec.shape)).grids == given_of(g1).grids

    class Residual(torch.nn.Module):  # conv + add whose sum is the model's float output: not an integer section
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.b(y) + y

    r = pt2e_int8(Residual(), (3, 8, 8), np.random.default_rng(0).random((8, 3, 8, 8), dtype=np.float32))
    with pytest.raises(HwsimError) as e:
        import_pt2e(r, (3, 8, 8))
    msg = str(e.value)
    assert "\n" not in msg and "pt2e node 'output'" in msg and "float tensor" in msg

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.b(torch.sigmoid(self.a(x)))

    s = pt2e_int8(Net(), (1, 8, 8), np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
    with pytest.raises(HwsimError) as e:
        import_pt2e(s, (1, 8, 8))
    msg = str(e.value)
    assert "\n" not in msg and "pt2e node" in msg and ("sigmoid" in msg or "float tensor" in msg)
    with pytest.raises(HwsimError, match="not a pt2e GraphModule"):
        import_pt2e(Net(), (1, 8, 8))

    class Shared(torch.nn.Module):  # a hard-swish on a conv output that something else reads too: not a fused form
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3)

        def forward(self, x):
            y = self.a(x)
            return self.b(torch.nn.functional.hardswish(y) * torch.sigmoid(y))

    s = pt2e_int8(Shared(), (1, 8, 8), np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
    with pytest.raises(HwsimError) as e:
        import_pt2e(s, (1, 8, 8))
    msg = str(e.value)
    assert "\n" not in msg and "pt2e node 'hardswish'" in msg and "float section hwsim does not model" in msg, msg


@pytest.fixture(scope="module")
def mobilenetv3():
    """The model the probe quantizes (test_mobilenetv3_float_sections_found): calibrated with one thread (a module
    fixture runs before the autouse one; the observers' float ranges depend on the thread count in the last bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m, spec = _bundled_torch("mobilenetv3")
        c = pt2e_int8(m, spec.shape, _images("mobilenetv3", 8, 9))
    finally:
        torch.set_num_threads(threads)
    return c, spec


def test_mobilenetv3_float_sections_imported(mobilenetv3):
    """pt2e MobileNetV3's float sections import as fused forms (no refusal): every hard-swish on a conv / linear
    output, every squeeze-excite mul; the tensors the engine never quantizes get the grids import_pt2e documents
    (a hard-swish's input: uint8 over [-3, top]; the SE conv's output: uint8 3/127 over [-3, 3]; the hard-sigmoid: 1/256, 0);
    under int8-pytorch-inductor the hard-swish layers carry their fused MAC layer (oneDNN's post-op, or the C++
    kernels after a linear or where the SE mul reads them in float), the muls their two sections, and the
    depthwise conv + relu read by an SE mul quantizes with the zero point after rounding (fast == reference on
    every tensor); under int8-pytorch none; a misspelt form is one line."""
    c, spec = mobilenetv3
    qs = [n.name for n in c.graph.nodes if n.target == Q]
    g = import_pt2e(cut(c, [qs[-1]]), spec.shape)
    grids = given_of(g).grids
    assert grids["conv2d_3"] == {"scale": float(np.float32(3 / 127)), "zero_point": 127, "dtype": "uint8"}
    assert grids["hardsigmoid"] == {"scale": 1 / 256, "zero_point": 0, "dtype": "uint8"}
    lo = -grids["conv2d"]["zero_point"] * grids["conv2d"]["scale"]
    assert abs(lo + 3) < grids["conv2d"]["scale"] and grids["conv2d"]["dtype"] == "uint8"
    layers = {lay.name: lay for lay in compile_model(g, load_profile("int8-pytorch-inductor"), None).layers}
    hs = {k: lay.fused_mac for k, lay in layers.items() if lay.op == "hardswish"}
    assert hs["hardswish"] == ("conv2d", "onednn") and hs["hardswish_2"] == ("conv2d_12", "cpp"), hs
    assert hs["hardswish_8"] == ("linear", "cpp") and all(v is not None for v in hs.values()), hs
    se = {k: lay.se for k, lay in layers.items() if lay.op == "mul"}
    assert len(se) == 4 and se["mul"] == (0, ("mac", "conv2d_1"), "conv2d_3"), se
    assert se["mul_1"] == (0, ("hardswish", "hardswish_2"), "conv2d_14"), se
    assert layers["conv2d_1"].requant.zero_point == "after" and layers["conv2d_4"].requant.zero_point == "before"
    plain = compile_model(g, load_profile("int8-pytorch"), None).layers
    assert not any(getattr(lay, "fused_mac", None) or getattr(lay, "se", None) for lay in plain)
    qg = compile_model(g, load_profile("int8-pytorch-inductor"), None)
    x = _images("mobilenetv3", 2, 0)
    fast, slow = (run_integer(qg, x, impl=impl) for impl in ("fast", "reference"))
    assert all(np.array_equal(fast[k], slow[k]) for k in fast)  # the fused forms: fast == reference, bit for bit
    with pytest.raises(HwsimError) as e:
        load_profile("int8-pytorch-inductor", {"requant.mul_form": "inductr"})
    assert "\n" not in str(e.value) and "mul_form" in str(e.value) and "inductor" in str(e.value)


@pytest.mark.slow
@AMX
def test_mobilenetv3_identical(mobilenetv3):
    """pt2e MobileNetV3 compiled by inductor: every quantized tensor == hwsim's under int8-pytorch-inductor on 256
    inputs (the float sections as fused forms: hard-swish post-op, C++ quantize of float-output convs, the SE
    kernel); each neighbour differs: PyTorch's integer tables and quantized mul (activation_form / mul_form
    "torch"), oneDNN's hard-swish gate as an FMA fma(v, 1/6, 1/2), the SE gate times fl32(1/6) instead of / 6,
    int8-pytorch-onednn."""
    from hwsim.ops import activation as act

    c, spec = mobilenetv3
    qs = [n.name for n in c.graph.nodes if n.target == Q]
    x = _images("mobilenetv3", 256, 0)
    ys = inductor(cut(c, qs[1:]), x)
    g = import_pt2e(cut(c, [qs[-1]]), spec.shape)
    ind = "int8-pytorch-inductor"

    def count(prof):
        env = run_integer(compile_model(g, prof, None), x)
        return sum(int((env[g.pt2e_tensors[k]].astype(np.int64).reshape(y.shape) != y).sum()) for k, y in zip(qs[1:], ys))

    diff = {"inductor": count(load_profile(ind)),
            "tables": count(load_profile(ind, {"requant.activation_form": "torch", "requant.mul_form": "torch"})),
            "onednn": count(load_profile("int8-pytorch-onednn"))}
    from hwsim.ops.add import fma_f32

    f32 = np.float32
    saved = act.onednn_hardswish, act.cpp_hardsigmoid
    try:  # one step of the arithmetic changed at a time (the probe's neighbours, now through hwsim's layers)
        act.onednn_hardswish = lambda v: (np.asarray(v, f32) * np.clip(fma_f32(v, f32(1) / f32(6), f32(0.5)), f32(0),
                                                                         f32(1))).astype(f32)
        diff["fma gate"] = count(load_profile(ind))
        act.onednn_hardswish = saved[0]
        act.cpp_hardsigmoid = lambda g: (np.minimum(np.maximum((np.asarray(g, f32) + f32(3)).astype(f32), f32(0)),
                                                    f32(6)) * (f32(1) / f32(6))).astype(f32)
        diff["sigmoid x 1/6"] = count(load_profile(ind))
    finally:
        act.onednn_hardswish, act.cpp_hardsigmoid = saved
    total = sum(y.size for y in ys)
    print("mobilenetv3", total, "integers:", diff)
    assert total > 10 ** 7 and diff.pop("inductor") == 0, diff
    assert all(v > 0 for v in diff.values()), diff


@pytest.mark.slow
@AMX
def test_mobilenetv3_float_sections_found():
    """The arithmetic of pt2e MobileNetV3's float sections under torch.compile, read from inductor's generated code
    (scripts/pt2e_mobilenetv3_probe.py: oneDNN's conv + hard-swish post-op h = fl32(v * clip(fl32(fl32(v * fl32(1/6))
    + 1/2), 0, 1)); float-output convs quantized by a C++ kernel, round(fl32(v * fl32(1/s))) + z; the SE gate
    fl32(v * fl32(min(max(fl32(g + 3), 0), 6) / 6)); linear + hard-swish in C++), run whole-network in numpy from
    the input codes: every quantized tensor == torch.compile's on 256 inputs; changing any one step differs (the
    finding hwsim's forms implement: test_mobilenetv3_identical)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "pt2e_mobilenetv3_probe.py"
    spec = importlib.util.spec_from_file_location("hwsim_pt2e_mobilenetv3_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    res, total = probe.check(256)
    bad = {name: sum(v.values()) for name, v in res.items()}
    print(total, "integers:", bad)
    assert total > 10 ** 7 and len(res["found"]) == 34 and bad.pop("found") == 0, bad
    assert all(v > 0 for v in bad.values()), bad


def _rewrite_zip(src, dst, edit):
    """A copy of the zip archive ``src`` with ``edit(name, bytes) -> bytes`` applied to every member."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info.filename)))


def test_hwsim_import_pt2(smallcnn, tmp_path):
    """``hwsim import model.pt2`` (torch.export.save of a converted pt2e model) without unpickling: the same given
    quantization and integers as the in-memory import, the input shape read from the program, the profile
    int8-pytorch-inductor its default; a pickled weight and a truncated archive are one line, nonzero exit; the whole
    classifier (float logits) imports and ``hwsim run`` prints its accuracy."""
    import json

    from hwsim.graph import load_model
    from tests.conftest import invoke
    from tests.importers.test_cli_import import one_line_error

    c, spec = smallcnn
    qs = [n.name for n in c.graph.nodes if n.target == Q]
    gm = cut(c, [qs[-1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(gm, (torch.zeros(2, *spec.shape),), dynamic_shapes=({0: torch.export.Dim("N")},))
        torch.export.save(ep, tmp_path / "m.pt2")
    res = invoke("import", tmp_path / "m.pt2", "-o", tmp_path / "m.hwsim", "--mean", spec.mean[0], "--std",
                 spec.std[0])
    assert res.exit_code == 0, res.output
    assert "torch.pt2e quantization kept" in res.output and "int8-pytorch-inductor" in res.output, res.output
    g = load_model(tmp_path / "m.hwsim")
    ref = import_pt2e(gm, spec.shape, spec.mean, spec.std)
    assert tuple(g.inputs[0].shape) == tuple(spec.shape)
    assert given_of(g).grids == given_of(ref).grids
    x = _images("smallcnn_baseline", 16, 1)
    outs = []
    for model in (g, ref):
        qg = compile_model(model, load_profile("int8-pytorch-inductor"), None)
        outs.append(run_integer(qg, x)[qg.output_name])
    assert np.array_equal(*outs)

    # bad inputs: a weight marked pickled (hwsim never unpickles), a truncated archive, float logits
    def pickled(name, data):
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            first = next(iter(cfg["config"]))
            cfg["config"][first]["use_pickle"] = True
            return json.dumps(cfg).encode()
        return data

    _rewrite_zip(tmp_path / "m.pt2", tmp_path / "p.pt2", pickled)
    one_line_error(invoke("import", tmp_path / "p.pt2", "-o", tmp_path / "p.hwsim"), "stored pickled",
                   "does not unpickle")
    data = (tmp_path / "m.pt2").read_bytes()
    (tmp_path / "t.pt2").write_bytes(data[: len(data) // 2])
    one_line_error(invoke("import", tmp_path / "t.pt2", "-o", tmp_path / "t.hwsim"), "t.pt2")

    # the whole classifier (its last linear's float logits, issue 17): imported, and `hwsim run` prints an accuracy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(c, (torch.zeros(2, *spec.shape),),
                                              dynamic_shapes=({0: torch.export.Dim("N")},)), tmp_path / "f.pt2")
    res = invoke("import", tmp_path / "f.pt2", "-o", tmp_path / "f.hwsim", "--mean", spec.mean[0], "--std",
                 spec.std[0])
    assert res.exit_code == 0, res.output
    g = load_model(tmp_path / "f.hwsim")
    assert g.metadata["float_output"] == g.outputs[0]
    res = invoke("run", "-m", tmp_path / "f.hwsim", "--limit", "40", "--json", "-q")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["images"] == 40 and d["sim_accuracy"] >= 0.8, d


@AMX
def test_float_moves_before_quantize():
    """conv -> relu -> max_pool -> flatten -> linear: X86InductorQuantizer quantizes only the flatten's output (the
    linear's input), so the conv's output is moved in float; the quantize commutes with max pool and flatten, and
    the importer gives the conv + relu output that grid (zero point 0: inductor's standalone quantize and the fused
    requant agree). The flattened features and the hidden linear layer's output == torch.compile's on 128 inputs."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.MaxPool2d(2)
            self.fc1, self.fc2 = torch.nn.Linear(16 * 8 * 8, 64), torch.nn.Linear(64, 10)

        def forward(self, x):
            x = self.pool(torch.relu(self.conv(x)))
            return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    c = pt2e_int8(Net(), (3, 16, 16), rng.random((32, 3, 16, 16), dtype=np.float32))
    qs = [n.name for n in c.graph.nodes if n.target == Q]
    assert len(qs) == 3  # the input, the flatten's output, fc1's output: the conv's output is never quantized
    x = rng.random((128, 3, 16, 16), dtype=np.float32)
    ys = inductor(cut(c, qs[1:]), x)
    for k, y in zip(qs[1:], ys):
        g = import_pt2e(cut(c, [k]), (3, 16, 16))
        assert given_of(g).grids["relu"] == given_of(g).grids["flatten"] == given_of(g).grids[g.pt2e_tensors[qs[1]]]
        qg = compile_model(g, load_profile("int8-pytorch-inductor"), None)
        h = run_integer(qg, x)[qg.output_name].astype(np.int64).reshape(y.shape)
        assert np.array_equal(h, y) and np.unique(y).size > 50
