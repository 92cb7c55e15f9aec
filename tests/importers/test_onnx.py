"""Float ONNX import: every mapped op and attribute, against onnxruntime's float output (within 1e-5)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402

from hwsim.errors import HwsimError  # noqa: E402
from hwsim.floatref import run_float  # noqa: E402
from hwsim.graph import validate  # noqa: E402
from hwsim.importers.onnx import import_onnx, onnx_to_graph  # noqa: E402
from tests.importers.onnxnets import model, ort_run, rand, save  # noqa: E402

TOL = 1e-5
N = ("N", 3, 8, 8)  # dynamic batch


def _i64(*v):
    return np.array(v, dtype=np.int64)


def conv_pads_pool_gemm(rng):
    """Conv with asymmetric pads, strides and dilations; MaxPool with pads; GAP; Flatten; Gemm alpha/beta/transB."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], alpha=0.5, beta=2.0, transB=1)]
    return model(nodes, {"w": rand(rng, 6, 3, 3, 3), "b": rand(rng, 6), "fw": rand(rng, 5, 6), "fb": rand(rng, 5)}, N)


def grouped_same_pads(rng):
    """Grouped conv with SAME_UPPER on an odd size, Clip(0, 6), SAME_LOWER conv, AveragePool with
    count_include_pad = 1 and pads, MatMul + Add (folded bias)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=3, auto_pad="SAME_UPPER", strides=[2, 2]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], auto_pad="SAME_LOWER", kernel_shape=[2, 2]),
             helper.make_node("AveragePool", ["c2"], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 0, 1, 0],
                              count_include_pad=1),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "mw"], ["mm"]),
             helper.make_node("Add", ["mb", "mm"], ["y"])]
    inits = {"w": rand(rng, 6, 1, 3, 3), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
             "w2": rand(rng, 4, 6, 2, 2), "b2": rand(rng, 4), "mw": rand(rng, 4 * 3 * 2, 7), "mb": rand(rng, 1, 7)}
    return model(nodes, inits, ("N", 3, 9, 7))


def bn_residual_concat_reshape(rng):
    """Conv without bias + Add of a (C,1,1) constant (folded), BatchNormalization, residual Add, Concat,
    AveragePool without pads, the Shape/Gather/Unsqueeze/Concat/Reshape chain exporters write, Gemm
    transB = 0, Identity."""
    c = 4
    nodes = [helper.make_node("Conv", ["x", "w"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c0", "cb"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mu", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Conv", ["r", "w1"], ["c1"], auto_pad="VALID"),
             helper.make_node("Add", ["c1", "r"], ["s"]),
             helper.make_node("Concat", ["s", "r"], ["cat"], axis=-3),
             helper.make_node("AveragePool", ["cat"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Shape", ["p"], ["shp"]),
             helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["p", "target"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["gm"]),
             helper.make_node("Identity", ["gm"], ["y"])]
    inits = {"w": rand(rng, c, 3, 3, 3), "cb": rand(rng, c, 1, 1), "g": rng.uniform(0.5, 1.5, c),
             "beta": rand(rng, c), "mu": rand(rng, c, scale=0.1), "var": rng.uniform(0.5, 2, c),
             "w1": rand(rng, c, c, 1, 1), "zero": np.array(0, np.int64), "zero1": _i64(0), "minus1": _i64(-1),
             "fw": rand(rng, 2 * c * 4 * 4, 3), "fb": rand(rng, 3)}
    return model(nodes, inits, N)


def dropout_squeeze_ceil(rng):
    """MaxPool ceil_mode = 1 where every window fits, Clip with only a min (ReLU), GAP + Squeeze(axes [2, 3]),
    Dropout, Gemm."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]),
             helper.make_node("Clip", ["c", "lo"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             helper.make_node("GlobalAveragePool", ["p"], ["g"]),
             helper.make_node("Squeeze", ["g", "axes"], ["s"]),
             helper.make_node("Dropout", ["s", "ratio"], ["d"]),
             helper.make_node("Gemm", ["d", "fw"], ["y"], transB=1)]
    inits = {"w": rand(rng, 5, 3, 3, 3), "b": rand(rng, 5), "lo": np.array(0, np.float32), "axes": _i64(2, 3),
             "ratio": np.array(0.5, np.float32), "fw": rand(rng, 4, 5)}
    return model(nodes, inits, N)


def reshape_batch1(rng):
    """A batch-1 model (fixed input shape) whose flatten is Reshape(x, [1, -1])."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2]),
             helper.make_node("Reshape", ["c", "t"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    inits = {"w": rand(rng, 2, 3, 3, 3), "b": rand(rng, 2), "t": _i64(1, -1), "fw": rand(rng, 3, 2 * 3 * 3),
             "fb": rand(rng, 3)}
    return model(nodes, inits, (1, 3, 8, 8))


CASES = {f.__name__: f for f in (conv_pads_pool_gemm, grouped_same_pads, bn_residual_concat_reshape,
                                 dropout_squeeze_ceil, reshape_batch1)}


def _x(m, rng, n=4):
    dims = [d.dim_value or n for d in m.graph.input[0].type.tensor_type.shape.dim]
    return rng.random(dims, dtype=np.float32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_graph_matches_onnxruntime(case):
    rng = np.random.default_rng(17)
    m = CASES[case](rng)
    g = onnx_to_graph(m)
    validate(g)
    x = _x(m, rng)
    ref = ort_run(m, x)
    out = run_float(g, x)
    assert out.shape == ref.reshape(len(x), -1).shape
    np.testing.assert_allclose(out, ref.reshape(len(x), -1), rtol=TOL, atol=TOL)


def test_the_mapping_is_what_the_docs_say():
    """Bias folding, Identity/Dropout dropped, Clip -> relu6 / relu, pads reordered to [top, bottom, left, right],
    SAME_UPPER / SAME_LOWER padding placed as ONNX places it."""
    rng = np.random.default_rng(0)
    g = onnx_to_graph(grouped_same_pads(rng))
    ops = [n.op for n in g.nodes]
    assert ops == ["conv2d", "relu6", "conv2d", "avgpool2d", "flatten", "linear"]
    conv, _, conv2, pool, _, lin = g.nodes
    # 9x7 input, k3 s2: out 5x4, total pad (5-1)*2+3-9 = 2 -> [1, 1]; (4-1)*2+3-7 = 2 -> [1, 1]
    assert conv.attrs == {"stride": [2, 2], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 3}
    # k2 s1 SAME_LOWER: total 1, the odd one at the beginning
    assert conv2.attrs["padding"] == [1, 0, 1, 0]
    assert pool.attrs == {"kernel": [2, 2], "stride": [2, 2], "padding": [1, 1, 0, 0]}  # count_include_pad = 1
    assert set(lin.params) == {"weight", "bias"}
    g = onnx_to_graph(conv_pads_pool_gemm(rng))
    assert g.nodes[0].attrs["padding"] == [1, 2, 0, 1]  # ONNX [h_begin, w_begin, h_end, w_end] = [1, 0, 2, 1]
    g = onnx_to_graph(bn_residual_concat_reshape(rng))
    assert [n.op for n in g.nodes] == ["conv2d", "batchnorm", "relu", "conv2d", "add", "concat", "avgpool2d",
                                       "flatten", "linear"]
    assert "bias" in g.nodes[0].params and g.outputs == [g.nodes[-1].name]
    g = onnx_to_graph(dropout_squeeze_ceil(rng))
    assert [n.op for n in g.nodes] == ["conv2d", "relu", "maxpool2d", "global_avgpool", "flatten", "linear"]


def test_import_file_records_normalisation_and_shape(tmp_path):
    rng = np.random.default_rng(1)
    p = save(conv_pads_pool_gemm(rng), tmp_path / "m.onnx")
    g = import_onnx(p, mean="0.5,0.4,0.3", std=0.25)
    assert g.inputs[0].shape == (3, 8, 8)
    assert g.inputs[0].mean == (0.5, 0.4, 0.3) and g.inputs[0].std == (0.25,) * 3
    assert g.metadata["source"] == "onnx" and g.metadata["opset"] == 13 and g.metadata["onnx_file"] == "m.onnx"
    defaults = import_onnx(p)
    assert defaults.inputs[0].mean == (0.0,) * 3 and defaults.inputs[0].std == (1.0,) * 3


def test_dynamic_spatial_shape_needs_input_shape(tmp_path):
    rng = np.random.default_rng(2)
    m = conv_pads_pool_gemm(rng)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    p = save(m, tmp_path / "dyn.onnx")
    with pytest.raises(HwsimError, match=r"dynamic shape \['N', 3, 'H', 'W'\]: give the per-sample shape with --input-shape"):
        import_onnx(p)
    g = import_onnx(p, input_shape="3,10,12")
    assert g.inputs[0].shape == (3, 10, 12)
    x = rng.random((2, 3, 10, 12), dtype=np.float32)
    np.testing.assert_allclose(run_float(g, x), ort_run(m, x), rtol=TOL, atol=TOL)
    with pytest.raises(HwsimError, match=r"--input-shape 4,10,12: input 'x' has the fixed shape .*C = 3, not 4"):
        import_onnx(p, input_shape="4,10,12")


# ----------------------------------------------------------------------------- torch.onnx.export
torch = pytest.importorskip("torch")


def _export(m, shape, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.randn(1, *shape), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "N"}}, **kw)
    return str(path)


def _randomise_bn(m):
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("arch,shape", [("resnet8", (3, 16, 16)), ("mobilenetv2", (3, 16, 16))])
@pytest.mark.parametrize("bn", ["folded", "kept"])
def test_torch_exported_models_match_torch_and_onnxruntime(tmp_path, arch, shape, bn):
    """hwsim's own architectures through torch.onnx.export (BN folded by the exporter, or kept with
    TrainingMode.PRESERVE): the imported graph equals ONNX Runtime and PyTorch within 1e-5."""
    from frontends.pytorch.models import build_model

    torch.manual_seed(0)
    m = _randomise_bn(build_model(arch, 10, shape[0]))
    kw = {} if bn == "folded" else {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
    p = _export(m, shape, tmp_path / f"{arch}.onnx", opset_version=13, **kw)
    g = import_onnx(p)
    assert ("batchnorm" in [n.op for n in g.nodes]) == (bn == "kept")
    x = np.random.default_rng(3).random((4, *shape), dtype=np.float32)
    out = run_float(g, x)
    np.testing.assert_allclose(out, ort_run(onnx.load(p), x), rtol=TOL, atol=TOL)
    with torch.no_grad():
        np.testing.assert_allclose(out, m(torch.from_numpy(x)).numpy(), rtol=TOL, atol=TOL)


# ----------------------------------------------------------------------------- the ops of issue 16
class _Act(torch.nn.Module):
    """conv -> Hardswish -> conv -> SiLU -> x * sigmoid(y) (mul) -> Hardsigmoid -> Tanh -> Sigmoid -> mean(H, W)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 4, 1)
        self.c3 = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.nn.functional.hardswish(self.c1(x))
        y = torch.nn.functional.silu(self.c2(y))
        z = y * torch.sigmoid(self.c3(y))  # not x * sigmoid(x): a mul
        z = torch.tanh(torch.nn.functional.hardsigmoid(z))
        return torch.sigmoid(z).mean(dim=(2, 3), keepdim=True)


@pytest.mark.parametrize("opset,hardswish", [(13, "HardSigmoid + Mul"), (14, "HardSwish")])
def test_new_ops_map_to_their_hwsim_names(tmp_path, opset, hardswish):
    """Mul, Sigmoid, HardSigmoid (alpha, beta), HardSwish (an op from opset 14; torch writes
    x * HardSigmoid(x) at 13), Tanh, ReduceMean over H, W (keepdims), x * Sigmoid(x) -> silu."""
    torch.manual_seed(0)
    m = _Act().eval()
    p = _export(m, (3, 6, 6), tmp_path / "act.onnx", opset_version=opset)
    types = [n.op_type for n in onnx.load(p).graph.node]
    assert ("HardSwish" in types) == (opset == 14)
    g = onnx_to_graph(onnx.load(p))
    ops = [n.op for n in g.nodes]
    assert ops == ["conv2d", "hardswish", "conv2d", "silu", "conv2d", "sigmoid", "mul", "hardsigmoid", "tanh",
                   "sigmoid", "mean"], ops
    hs = g.nodes[7]
    assert hs.attrs["alpha"] == pytest.approx(1 / 6) and hs.attrs["beta"] == 0.5
    assert g.nodes[-1].attrs == {"keepdims": True}
    validate(g)
    x = np.random.default_rng(4).random((3, 3, 6, 6), dtype=np.float32)
    np.testing.assert_allclose(run_float(g, x), ort_run(onnx.load(p), x).reshape(3, -1), rtol=TOL, atol=TOL)


def test_onnx_defaults_of_the_new_ops(tmp_path):
    """HardSigmoid with ONNX's default alpha 0.2 stays a hardsigmoid (not a hardswish pattern); ReduceMean at
    opset 18 takes its axes as an input; AveragePool with pads and ONNX's default count_include_pad = 0."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("HardSigmoid", ["x"], ["h"]),
             helper.make_node("Mul", ["x", "h"], ["m"]),
             helper.make_node("AveragePool", ["m"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["p", "axes"], ["y"], keepdims=0)]
    m = model(nodes, {"axes": _i64(-1, -2)}, N, opset=18)
    g = onnx_to_graph(m)
    assert [n.op for n in g.nodes] == ["hardsigmoid", "mul", "avgpool2d", "mean"]
    assert g.nodes[0].attrs == {"alpha": pytest.approx(0.2), "beta": 0.5}
    assert g.nodes[2].attrs["count_include_pad"] is False
    assert g.nodes[3].attrs == {"keepdims": False}
    validate(g)
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(run_float(g, x), ort_run(m, x), rtol=TOL, atol=TOL)


def test_onnx_route_and_fx_route_give_the_same_integers(tmp_path):
    """The same PyTorch model through torch.onnx.export + the importer and through hwsim's torch.fx export:
    the same graph (op for op, weights bit for bit), so compile and the integer simulator give identical
    logits under a hardware profile."""
    from frontends.pytorch.export import to_graph
    from frontends.pytorch.models import build_model
    from hwsim.compile import compile_model
    from hwsim.execute import run_quantized
    from hwsim.profile import load_profile

    torch.manual_seed(1)
    m = _randomise_bn(build_model("resnet8", 10, 3))
    shape = (3, 16, 16)
    p = _export(m, shape, tmp_path / "r8.onnx", opset_version=13, training=torch.onnx.TrainingMode.PRESERVE,
                do_constant_folding=False)
    gi = import_onnx(p, mean=0.5, std=0.25)
    gf = to_graph(m, shape, 0.5, 0.25)
    assert [n.op for n in gi.nodes] == [n.op for n in gf.nodes]
    for a, b in zip(gi.nodes, gf.nodes):
        assert a.attrs == b.attrs and set(a.params) == set(b.params), (a, b)
        for role in a.params:
            assert np.array_equal(gi.param(a, role), gf.param(b, role)), (a.name, role)
    rng = np.random.default_rng(6)
    calib, x = (rng.random((n, *shape), dtype=np.float32) for n in (32, 16))
    prof = load_profile("int8-tflite")
    li, lf = (run_quantized(compile_model(g, prof, calib), x).logits for g in (gi, gf))
    assert np.array_equal(li, lf)
