"""LiteRT int8 .tflite import (hwsim/importers/tflite.py): whole networks == each LiteRT resolver, bit for bit.

Fixtures (tests/fixtures/litert/, made by scripts/litert_fixtures.py with TensorFlow's converter, full-integer
quantization, representative dataset = bundled MNIST training images): the bundled SmallCNN and MobileNetV2 (their
trained weights) and a ResNet-8-shaped network (concatenated stem, average pool, three residual blocks). Each .npz
holds the int8 outputs of every resolver on the first 256 bundled test images: LiteRT's reference kernels
(BUILTIN_REF), its optimized built-ins (BUILTIN_WITHOUT_DEFAULT_DELEGATES) and its default, the XNNPACK delegate.
hwsim imports the file once and runs it under the resolver's profile: every output element must equal the
committed outputs and LiteRT re-run live here; the neighbouring profiles must not.
"""

import numpy as np
import pytest

tflite = pytest.importorskip("tflite")
litert = pytest.importorskip("ai_edge_litert.interpreter")

from pathlib import Path  # noqa: E402

from hwsim.compile import compile_model  # noqa: E402
from hwsim.data import load_dataset  # noqa: E402
from hwsim.errors import HwsimError  # noqa: E402
from hwsim.execute import run_integer  # noqa: E402
from hwsim.graph import load_model  # noqa: E402
from hwsim.importers import import_model  # noqa: E402
from hwsim.profile import load_profile  # noqa: E402
from tests.conftest import invoke  # noqa: E402
from tests.core.test_litert_engine import X86_AVX2, BO, BOpt, TT, _i8, build_model  # noqa: E402
from tests.importers.test_cli_import import one_line_error  # noqa: E402

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "litert"
NETS = ("smallcnn_robust", "mobilenetv2", "resnet8", "mobilenetv3_style")
PROFILES = {"reference": "int8-litert-reference", "optimized": "int8-litert-optimized",
            "xnnpack": "int8-litert-xnnpack"}
KINDS = {"reference": "BUILTIN_REF", "optimized": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "xnnpack": "BUILTIN"}
# the optimized kernels and XNNPACK are modelled on x86-64 with AVX2 (test_litert_engine.py)
needs_x86 = pytest.mark.skipif(not X86_AVX2, reason="LiteRT's optimized / XNNPACK int8 kernels modelled on x86-64")
RESOLVERS = ["reference", pytest.param("optimized", marks=needs_x86), pytest.param("xnnpack", marks=needs_x86)]
N = 256


def litert_int8(model: bytes, x_nchw: np.ndarray, resolver: str) -> np.ndarray:
    """LiteRT's int8 output codes (the tensor the final DEQUANTIZE reads: its float output (q - z) * s mapped back,
    exact for 8-bit codes; a delegate's intermediate tensors cannot be read), one image per invoke, one thread."""
    it = litert.Interpreter(model_content=model, num_threads=1,
                            experimental_op_resolver_type=getattr(litert.OpResolverType, KINDS[resolver]))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    deq = next(o for o in it._get_ops_details() if out["index"] in list(o["outputs"]))
    assert deq["op_name"] == "DEQUANTIZE"
    scale, zp = it._get_tensor_details(deq["inputs"][0], 0)["quantization"]
    ys = []
    for i in range(len(x_nchw)):
        it.set_tensor(inp["index"], np.ascontiguousarray(x_nchw[i:i + 1].transpose(0, 2, 3, 1)))
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float64)
        ys.append((np.rint(y / np.float64(np.float32(scale))).astype(np.int64) + zp).reshape(1, -1))
    return np.concatenate(ys)


@pytest.fixture(scope="module")
def fixtures():
    x01 = load_dataset("default").x_test[:N].astype(np.float32)
    out = {}
    for net in NETS:
        z = np.load(FIX / f"{net}_int8.npz", allow_pickle=False)
        x = ((x01 - z["mean"][0]) / z["std"][0]).astype(np.float32)
        out[net] = (FIX / f"{net}_int8.tflite", x, {r: z[r].astype(np.int64) for r in PROFILES}, z["mean"], z["std"])
    return out


@pytest.fixture(scope="module")
def hwsim_out(fixtures):
    cache = {}

    def get(net, profile):
        if (net, profile) not in cache:
            path, x, _, _, _ = fixtures[net]
            qg = compile_model(import_model(path), load_profile(profile), None)
            cache[(net, profile)] = run_integer(qg, x)[qg.output_name].reshape(len(x), -1)
        return cache[(net, profile)]
    return get


@pytest.mark.parametrize("resolver", RESOLVERS)
@pytest.mark.parametrize("net", NETS)
def test_whole_network_equals_litert(fixtures, hwsim_out, net, resolver):
    path, x, expected, _, _ = fixtures[net]
    ours = hwsim_out(net, PROFILES[resolver])
    assert ours.shape == expected[resolver].shape == (N, 10)
    assert np.array_equal(ours, expected[resolver])  # the committed outputs
    assert np.array_equal(ours, litert_int8(path.read_bytes(), x, resolver))  # LiteRT now
    for other, prof in PROFILES.items():  # the neighbouring profiles disagree on the same integers
        if other != resolver:
            assert np.count_nonzero(hwsim_out(net, prof) != expected[resolver]) > 0, (other, resolver)


def test_import_maps_every_op_and_keeps_the_files_numbers(fixtures):
    g = import_model(fixtures["mobilenetv2"][0])
    assert g.metadata["default_profile"] == "int8-litert-xnnpack"
    gv = g.metadata["given"]
    assert (gv.engine, gv.source_format) == ("litert", "tflite")
    ops = [n.op for n in g.nodes]
    assert ops.count("conv2d") == 19 and ops.count("add") == 3 and "mean" in ops and ops[-1] == "linear"
    # a PAD folded into the strided depthwise conv after it: asymmetric torch-style padding kept
    dw = [n for n in g.nodes if n.op == "conv2d" and n.attrs["groups"] > 1 and n.attrs["stride"] == [2, 2]]
    assert dw and all(n.attrs["padding"] == [1, 1, 1, 1] for n in dw)
    # the integers are the file's: per-output-channel int8 weights and int32 biases
    buf = fixtures["mobilenetv2"][0].read_bytes()
    m = tflite.Model.GetRootAsModel(buf, 0).Subgraphs(0)
    n0 = g.nodes[0].name
    w = gv.arrays[f"{n0}.weight"]
    assert w.dtype == np.int8 and len(gv.layers[n0]["w_scale"]) == w.shape[0]
    conv0 = m.Operators(1)  # operator 0 is the input QUANTIZE
    t = m.Tensors(int(conv0.Inputs(1)))
    raw = tflite.Model.GetRootAsModel(buf, 0).Buffers(t.Buffer()).DataAsNumpy().view(np.int8)
    assert np.array_equal(raw.reshape(t.ShapeAsNumpy()).transpose(0, 3, 1, 2), w)
    resnet = import_model(fixtures["resnet8"][0])
    assert {"concat", "avgpool2d"} <= {n.op for n in resnet.nodes}


def test_cli_import_and_run_use_the_engine_profile(tmp_path, fixtures):
    src = fixtures["smallcnn_robust"][0]
    out = tmp_path / "m.hwsim"
    res = invoke("import", src, "-o", out, "--mean", "0.13153815269470215", "--std", "0.3087691366672516")
    assert res.exit_code == 0, res.output
    g = load_model(out)
    assert g.metadata["default_profile"] == "int8-litert-xnnpack" and g.metadata["given"].engine == "litert"
    for model in (out, src):  # the .hwsim file and the .tflite file directly
        res = invoke("inspect", "-m", model)
        assert res.exit_code == 0 and "int8-litert-xnnpack" in res.output, res.output


def test_fully_connected_on_an_nhwc_image_and_int8_input_identical():
    """A FULLY_CONNECTED reading an NHWC [1, 3, 3, 4] int8 input flattens it in NHWC order: the importer permutes
    the weight columns to hwsim's NCHW flatten (a wrong order differs); an int8 model input is read as given."""
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (8, 3, 3, 4))
    w = rng.integers(-127, 128, (5, 36))
    sx, sy = 0.02, 0.3
    sw = rng.uniform(0.001, 0.01, 5).astype(np.float32)

    def options(b):
        tflite.FullyConnectedOptionsStart(b)
        return tflite.FullyConnectedOptionsEnd(b)
    tensors = [_i8((1, 3, 3, 4), sx, 3), _i8((5, 36), sw, np.zeros(5, np.int64), w),
               _i8([5], np.float32(sx) * sw, np.zeros(5, np.int64), rng.integers(-500, 500, 5), type_=TT.INT32),
               _i8((1, 5), sy, -2)]
    model = build_model(tensors, BO.FULLY_CONNECTED, [0, 1, 2], [3], BOpt.FullyConnectedOptions, options, [0])
    it = litert.Interpreter(model_content=model, num_threads=1,
                            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    yt = []
    for i in range(len(x)):
        it.set_tensor(it.get_input_details()[0]["index"], x[i:i + 1].astype(np.int8))
        it.invoke()
        yt.append(it.get_tensor(it.get_output_details()[0]["index"]).astype(np.int64))
    yt = np.concatenate(yt)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fc.tflite"
        p.write_bytes(model)
        g = import_model(p)
    assert [n.op for n in g.nodes] == ["flatten", "linear"]
    qg = compile_model(g, load_profile("int8-litert-reference"), None)
    # the input grid is the model's: feed values that quantize to the integers x exactly
    gi = qg.grids[qg.input_name]
    xf = ((x - gi.zero_point) * np.float32(gi.scale)).astype(np.float32).transpose(0, 3, 1, 2)
    assert np.array_equal(gi.quantize(xf), x.transpose(0, 3, 1, 2))
    y = run_integer(qg, xf)[qg.output_name]
    assert np.array_equal(y, yt)
    lay = next(lay for lay in qg.layers if lay.op == "linear")
    perm_nchw = lay.w_q.reshape(5, 4, 3, 3).transpose(0, 2, 3, 1).reshape(5, 36)  # back to the file's NHWC columns
    assert np.array_equal(perm_nchw, w)
    assert not np.array_equal(lay.w_q, w)


# ----------------------------------------------------------------------------- bad input: one line, nonzero exit
def _one_op(tensors, opcode, ins, outs, otype, opts, graph_inputs=(0,)):
    return build_model(tensors, opcode, list(ins), list(outs), otype, opts, list(graph_inputs))


def _write(tmp_path, name, data) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_truncated_file(tmp_path, fixtures):
    data = fixtures["smallcnn_robust"][0].read_bytes()
    for cut in (len(data) // 2, 100, 12):
        p = _write(tmp_path, f"cut{cut}.tflite", data[:cut])
        one_line_error(invoke("import", p, "-o", tmp_path / "o.hwsim"), f"cut{cut}.tflite", "LiteRT")
    assert not (tmp_path / "o.hwsim").exists()


def test_unsupported_op_names_operator_and_op(tmp_path):
    def options(b):
        tflite.SoftmaxOptionsStart(b)
        tflite.SoftmaxOptionsAddBeta(b, 1.0)
        return tflite.SoftmaxOptionsEnd(b)
    m = _one_op([_i8((1, 2, 2, 3), 0.1, 0), _i8((1, 2, 2, 3), 1 / 256, -128)], BO.SOFTMAX, [0], [1],
                BOpt.SoftmaxOptions, options)
    p = _write(tmp_path, "softmax.tflite", m)
    one_line_error(invoke("import", p, "-o", tmp_path / "o.hwsim"), "operator 0 (SOFTMAX)", "not supported")
    one_line_error(invoke("run", "-m", p), "operator 0 (SOFTMAX)")


def _conv_options(b):
    tflite.Conv2DOptionsStart(b)
    tflite.Conv2DOptionsAddPadding(b, 1)
    tflite.Conv2DOptionsAddStrideH(b, 1)
    tflite.Conv2DOptionsAddStrideW(b, 1)
    tflite.Conv2DOptionsAddDilationHFactor(b, 1)
    tflite.Conv2DOptionsAddDilationWFactor(b, 1)
    return tflite.Conv2DOptionsEnd(b)


def test_float_model_is_refused_with_a_pointer(tmp_path):
    f = dict(type=TT.FLOAT32, scale=np.zeros(0), zp=np.zeros(0, np.int64))
    tensors = [dict(shape=[1, 4, 4, 2], **f), dict(shape=[3, 1, 1, 2], data=np.ones((3, 1, 1, 2), np.float32), **f),
               dict(shape=[1, 4, 4, 3], **f)]
    for t in tensors:
        t["scale"], t["zp"] = np.zeros(0, np.float32), np.zeros(0, np.int64)
    m = _one_op(tensors, BO.CONV_2D, [0, 1, -1], [2], BOpt.Conv2DOptions, _conv_options)
    p = _write(tmp_path, "float.tflite", m)
    one_line_error(invoke("import", p, "-o", tmp_path / "o.hwsim"), "a float LiteRT model",
                   "full-integer quantization")


def test_non_int8_activations_and_bad_axes(tmp_path):
    w = np.ones((3, 1, 1, 2), np.int8)
    # int16 activations (the 16x8 quantization mode)
    t16 = [_i8((1, 4, 4, 2), 0.1, 0, type_=TT.INT16), _i8((3, 1, 1, 2), [0.1] * 3, [0] * 3, w),
           _i8((1, 4, 4, 3), 0.1, 0, type_=TT.INT16)]
    p = _write(tmp_path, "i16.tflite", _one_op(t16, BO.CONV_2D, [0, 1, -1], [2], BOpt.Conv2DOptions, _conv_options))
    one_line_error(invoke("import", p, "-o", tmp_path / "o.hwsim"), "INT16", "int8")
    # uint8 activations
    tu8 = [_i8((1, 4, 4, 2), 0.1, 0, type_=TT.UINT8), _i8((3, 1, 1, 2), [0.1] * 3, [0] * 3, w),
           _i8((1, 4, 4, 3), 0.1, 0, type_=TT.UINT8)]
    p = _write(tmp_path, "u8.tflite", _one_op(tu8, BO.CONV_2D, [0, 1, -1], [2], BOpt.Conv2DOptions, _conv_options))
    one_line_error(invoke("import", p, "-o", tmp_path / "o.hwsim"), "UINT8")
    # per-channel weight scales on the input-channel axis
    tax = [_i8((1, 4, 4, 2), 0.1, 0), _i8((3, 1, 1, 2), [0.1, 0.2], [0, 0], w, qdim=3), _i8((1, 4, 4, 3), 0.1, 0)]
    p = _write(tmp_path, "axis.tflite", _one_op(tax, BO.CONV_2D, [0, 1, -1], [2], BOpt.Conv2DOptions, _conv_options))
    one_line_error(invoke("import", p, "-o", tmp_path / "o.hwsim"), "operator 0 (CONV_2D)", "axis 3")


def test_profile_that_cannot_hold_the_given_grids(fixtures):
    g = import_model(fixtures["smallcnn_robust"][0])
    with pytest.raises(HwsimError, match="unsigned"):
        compile_model(g, load_profile("int8-onnxruntime"), None)  # uint8 activations: the file's are int8


# ----------------------------------------------------------------------------- one-op models through the importer
def _litert(model: bytes, x: np.ndarray, resolver: str) -> np.ndarray:
    it = litert.Interpreter(model_content=model, num_threads=1,
                            experimental_op_resolver_type=getattr(litert.OpResolverType, KINDS[resolver]))
    it.allocate_tensors()
    ys = []
    for i in range(len(x)):
        it.set_tensor(it.get_input_details()[0]["index"], x[i:i + 1].astype(np.int8))
        it.invoke()
        ys.append(it.get_tensor(it.get_output_details()[0]["index"]).astype(np.int64))
    return np.concatenate(ys)


@pytest.mark.parametrize("resolver", RESOLVERS)
def test_depthwise_with_a_channel_tail_identical(tmp_path, resolver):
    """13 output channels (the optimized kernel's blocks of 8 plus a 5-channel gemmlowp tail: requant.block_channels),
    power-of-two-like scales (ties, negative ones too: no fused activation), SAME padding, stride 2: the imported
    layer == each resolver, the other profiles differ."""
    from tests.core.test_litert_engine import tie_scales

    rng = np.random.default_rng(21)
    sx, sw, sy = tie_scales(rng, 13)
    x = rng.integers(-8, 9, (16, 7, 7, 13))
    w = rng.integers(-5, 6, (1, 3, 3, 13))

    def options(b):
        tflite.DepthwiseConv2DOptionsStart(b)
        tflite.DepthwiseConv2DOptionsAddPadding(b, 0)
        for f in ("StrideH", "StrideW"):
            getattr(tflite, "DepthwiseConv2DOptionsAdd" + f)(b, 2)
        for f in ("DilationHFactor", "DilationWFactor", "DepthMultiplier"):
            getattr(tflite, "DepthwiseConv2DOptionsAdd" + f)(b, 1)
        return tflite.DepthwiseConv2DOptionsEnd(b)
    tensors = [_i8((1, 7, 7, 13), sx, -2), _i8(w.shape, sw, np.zeros(13, np.int64), w, qdim=3),
               _i8([13], np.float32(sx) * sw.astype(np.float32), np.zeros(13, np.int64), rng.integers(-300, 300, 13),
                   type_=TT.INT32), _i8((1, 4, 4, 13), sy, 5)]
    model = build_model(tensors, BO.DEPTHWISE_CONV_2D, [0, 1, 2], [3], BOpt.DepthwiseConv2DOptions, options, [0])
    yt = _litert(model, x, resolver).transpose(0, 3, 1, 2)
    p = _write(tmp_path, "dw.tflite", model)
    g = import_model(p)
    gi_scale = g.metadata["given"].grids["input"]["scale"]
    xf = ((x + 2) * np.float32(gi_scale)).astype(np.float32).transpose(0, 3, 1, 2)
    outs = {}
    for r, prof in PROFILES.items():
        qg = compile_model(g, load_profile(prof), None)
        assert np.array_equal(qg.grids[qg.input_name].quantize(xf), x.transpose(0, 3, 1, 2))
        outs[r] = run_integer(qg, xf)[qg.output_name]
    assert np.array_equal(outs[resolver], yt)
    assert all(np.count_nonzero(outs[r] != yt) > 0 for r in PROFILES if r != resolver), \
        {r: int(np.count_nonzero(outs[r] != yt)) for r in PROFILES}


@pytest.mark.parametrize("resolver", RESOLVERS)
def test_add_with_a_vector_tail_identical(tmp_path, resolver):
    """ADD of two [1, 3, 5, 7] tensors (105 values: the optimized kernel's 16-wide loop and a 9-value scalar tail in
    NHWC order, requant.add_vector_width), scales where the loops round differently, fused RELU."""
    from tests.core.test_litert_engine import ADD_ADVERSARIAL, RELU

    rng = np.random.default_rng(5)
    sa, sb, which = ADD_ADVERSARIAL[0]
    sa, sb = float(np.float32(sa)), float(np.float32(sb))
    sy = sa if which == "a" else sb
    x = rng.integers(-128, 128, (24, 3, 5, 14))  # the two operands side by side: a one-input model

    def add_options(b):
        tflite.AddOptionsStart(b)
        tflite.AddOptionsAddFusedActivationFunction(b, RELU)
        return tflite.AddOptionsEnd(b)
    tensors = [_i8((1, 3, 5, 7), sa, -3), _i8((1, 3, 5, 7), sb, 5), _i8((1, 3, 5, 7), sy, 7)]
    model = build_model(tensors, BO.ADD, [0, 1], [2], BOpt.AddOptions, add_options, [0, 1])
    it = litert.Interpreter(model_content=model, num_threads=1,
                            experimental_op_resolver_type=getattr(litert.OpResolverType, KINDS[resolver]))
    it.allocate_tensors()
    yt = []
    for i in range(len(x)):
        for d, v in zip(it.get_input_details(), (x[i:i + 1, ..., :7], x[i:i + 1, ..., 7:])):
            it.set_tensor(d["index"], v.astype(np.int8))
        it.invoke()
        yt.append(it.get_tensor(it.get_output_details()[0]["index"]).astype(np.int64))
    yt = np.concatenate(yt).transpose(0, 3, 1, 2)
    # hwsim: the add layer the importer makes (op add + fused relu) under each profile, on the same integers
    from types import SimpleNamespace

    from hwsim.compile import Grid, _requant
    from hwsim.ops.add import AddSpec

    grids = {"a": Grid(sa, -3, -128, 127, 8, True), "b": Grid(sb, 5, -128, 127, 8, True),
             "y": Grid(sy, 7, -128, 127, 8, True)}
    env = {"a": x[..., :7].transpose(0, 3, 1, 2), "b": x[..., 7:].transpose(0, 3, 1, 2)}
    outs = {}
    for r, prof in PROFILES.items():
        p = load_profile(prof).for_layer("add", "add")
        lay = SimpleNamespace(profile=p, requant=_requant(p), inputs=["a", "b"], output="y", clamp=(7, 127),
                              activation="relu")
        outs[r] = AddSpec().execute(SimpleNamespace(grids=grids), lay, env, None, "fast", 0, False)[0]
    assert np.array_equal(outs[resolver], yt)
    assert all(np.count_nonzero(outs[r] != yt) > 0 for r in PROFILES if r != resolver), \
        {r: int(np.count_nonzero(outs[r] != yt)) for r in PROFILES}


def test_corrupt_files_fail_in_one_line(fixtures):
    """Byte flips and truncations of a fixture: every file either imports (and compiles) or raises one HwsimError;
    nothing else escapes (the flatbuffer is read lazily, so corrupt options surface inside the op handlers)."""
    import tempfile

    data = fixtures["smallcnn_robust"][0].read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "error": 0}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.tflite"
        for i in range(300):
            b = bytearray(data)
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
            if i % 5 == 0:
                b = b[:int(rng.integers(8, len(b)))]
            p.write_bytes(bytes(b))
            try:
                g = import_model(p)
                if i % 10 == 1:
                    compile_model(g, load_profile("int8-litert-xnnpack"), None)
                outcomes["ok"] += 1
            except HwsimError as e:
                assert "\n" not in str(e) and str(p) in str(e)
                outcomes["error"] += 1
    assert outcomes["ok"] > 50 and outcomes["error"] > 50, outcomes


def test_without_the_tflite_package_one_line(monkeypatch, fixtures, tmp_path):
    """hwsim imports without ``tflite``; reading a .tflite file then says which extra to install."""
    import sys

    monkeypatch.setitem(sys.modules, "tflite", None)  # import tflite -> ImportError
    one_line_error(invoke("import", fixtures["smallcnn_robust"][0], "-o", tmp_path / "o.hwsim"),
                   "pip install 'hwsim[litert]'")
