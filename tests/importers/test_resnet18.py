"""A ResNet-18-shaped network (frontends.pytorch.models.ResNet18, width 8: ResNet-18's 17 convs in a stem and four
stages of two BasicBlocks at 8/16/32/64 channels, three 1x1 stride-2 shortcut convs with BN, global average pool,
linear; briefly trained on the bundled MNIST images) quantized by each engine with its own scales and run whole
by hwsim under that engine's profile on the first 256 bundled test images: every output element identical to

- ONNX Runtime (quantize_static; QOperator at ORT_ENABLE_ALL and ORT_DISABLE_ALL, QDQ at ORT_ENABLE_ALL; weights
  per tensor and per channel), and ORT's QDQ float path (ORT_DISABLE_ALL) == int8-onnxruntime-qdq-float and the
  test oracle tests/importers/onnxnets.ort_float_path;
- PyTorch torch.ao FX (x86 qconfig mapping) on the fbgemm and x86 engines (int8-pytorch / int8-pytorch-onednn),
  every quantized intermediate tensor too;
- LiteRT (tests/fixtures/litert/resnet18_narrow_int8.tflite, TensorFlow's converter, made by
  scripts/litert_fixtures.py) under its reference kernels, optimized built-ins and XNNPACK, against the committed
  outputs and ai-edge-litert re-run here.

- pt2e (torchao X86InductorQuantizer) compiled by torch.compile: every quantized tensor == int8-pytorch-inductor
  (the residual adds fused into the convs as oneDNN's sum post-op). Each test also shows that a neighbouring profile (another engine's rounding on the same integers) differs.
The helpers are the ResNet-8 tests' (test_given_network, test_torch_int8, test_litert_import), imported.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ortq = pytest.importorskip("onnxruntime.quantization")

from hwsim.compile import compile_model  # noqa: E402
from hwsim.data import load_dataset  # noqa: E402
from hwsim.execute import run_integer  # noqa: E402
from hwsim.importers import import_model  # noqa: E402
from hwsim.profile import load_profile  # noqa: E402
from tests.importers.test_given_network import ENGINE, _export, _Reader, hwsim_outputs, ort_outputs  # noqa: E402

N = 256
FIX = Path(__file__).resolve().parents[1] / "fixtures" / "litert"
ARCH, EPOCHS, SEED = "resnet18-narrow", 3, 0


def trained_resnet18(out_dir: Path):
    """ResNet-18-shaped, width 8, trained for 3 epochs (seed 0, one thread) on the bundled MNIST training images
    (~5 s; ~95% test accuracy): (eval-mode torch module, input shape, mean, std). Trained rather than random: the BN
    statistics, activation ranges and logits are a working network's."""
    from frontends.pytorch.train import model_from_checkpoint, train

    # train() sets the thread count and torch's deterministic-algorithms flag process-wide: put them back
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        train(ARCH, epochs=EPOCHS, seed=SEED, out=str(out_dir / "resnet18.pt"), threads=1, quiet=True)
        m, ck = model_from_checkpoint(str(out_dir / "resnet18.pt"))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
    cfg = ck["config"]
    return m.eval(), tuple(cfg["input_shape"]), tuple(cfg["mean"]), tuple(cfg["std"])


def images(mean, std, split: str = "test", n: int = N) -> np.ndarray:
    """The first ``n`` bundled test images (or training images, for calibration), normalised as the model expects."""
    ds = load_dataset("default")
    x = (ds.x_test if split == "test" else ds.x_train)[:n].astype(np.float32)
    return ((x - np.float32(mean[0])) / np.float32(std[0])).astype(np.float32)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return trained_resnet18(tmp_path_factory.mktemp("resnet18"))


def test_the_network_is_resnet18_shaped(net):
    """17 3x3 convs + 3 1x1 stride-2 shortcut convs, each followed by BN; 8 BasicBlocks; one linear; the trained
    float net classifies the test images (so the integer runs below are of a working network)."""
    from frontends.pytorch.models import BasicBlock
    from frontends.pytorch.train import evaluate

    m, shape, mean, std = net
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs].count((3, 3)) == 17
    assert [(c.kernel_size, c.stride) for c in convs].count(((1, 1), (2, 2))) == 3
    assert sum(isinstance(b, BasicBlock) for b in m.modules()) == 8
    assert sum(isinstance(b, torch.nn.BatchNorm2d) for b in m.modules()) == 20
    assert [c.out_channels for c in convs if c.kernel_size == (1, 1)] == [16, 32, 64]
    ds = load_dataset("default")
    assert evaluate(m, torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test), mean, std) > 0.9


# ----------------------------------------------------------------------------- ONNX Runtime
def onnx_quantizer(net, tmp: Path):
    """(format, per_channel) -> int8 ONNX path: ``net`` (trained_resnet18's tuple) exported (opset 13) to ``tmp`` and
    quantized by quantize_static (uint8 activations, int8 weights, 16 calibration training images), on first use."""
    m, shape, mean, std = net
    src = _export(m, shape, tmp / "resnet18.onnx")
    cache = {}

    def get(fmt, per_channel):
        if (fmt, per_channel) not in cache:
            dst = tmp / f"resnet18_{fmt}_{per_channel}.onnx"
            logging.getLogger().setLevel(logging.ERROR)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ortq.quantize_static(src, str(dst), _Reader(images(mean, std, "train", 16)), per_channel=per_channel,
                                     quant_format=getattr(ortq.QuantFormat, fmt),
                                     activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8)
            cache[(fmt, per_channel)] = str(dst)
        return cache[(fmt, per_channel)]

    return get


@pytest.fixture(scope="module")
def onnx_int8(net, tmp_path_factory):
    return onnx_quantizer(net, tmp_path_factory.mktemp("resnet18_onnx"))


ORT_CASES = [(fmt, pc, lv) for fmt in ("QOperator", "QDQ") for pc in (False, True)
             for lv in ("ORT_ENABLE_ALL", "ORT_DISABLE_ALL") if not (fmt == "QDQ" and lv == "ORT_DISABLE_ALL")]
# the neighbour: the same integers with TFLite's requantization (gemmlowp Q31 double rounding)
ORT_NEIGHBOUR = ("int8-onnxruntime", {"requant.mode": "fixed"})


@ENGINE
@pytest.mark.parametrize("fmt,per_channel,level", ORT_CASES)
def test_resnet18_equals_onnxruntime(net, onnx_int8, fmt, per_channel, level):
    """hwsim under the import's default profile (int8-onnxruntime, ORT's scales kept) == ONNX Runtime on every
    output element of 256 test images; ORT's rounding replaced by TFLite's differs."""
    _, _, mean, std = net
    path = onnx_int8(fmt, per_channel)
    x = images(mean, std)
    ours, qg = hwsim_outputs(path, mean, std, x)
    assert qg.recipe == "given" and qg.profile.name == "int8-onnxruntime"
    ref = ort_outputs(path, x, level)
    assert ref.shape == (N, 10) and np.unique(ref).size > 50  # informative logits
    assert np.count_nonzero(ours != ref) == 0
    other, _ = hwsim_outputs(path, mean, std, x, *ORT_NEIGHBOUR)
    assert np.count_nonzero(other != ref) > 0


@ENGINE
@pytest.mark.parametrize("per_channel", [False, True])
def test_resnet18_qdq_float_path_equals_onnxruntime(net, onnx_int8, per_channel):
    """QDQ at ORT_DISABLE_ALL runs DequantizeLinear -> MLAS float ops -> QuantizeLinear: hwsim under
    int8-onnxruntime-qdq-float (hwsim/mlas.py) gives every output element of ORT's run on 256 inputs (ORT fed batches
    of 32), and of the independent test oracle onnxnets.ort_float_path on the first 32; the fused integers (the
    import's default int8-onnxruntime, = ORT_ENABLE_ALL) are a different function here."""
    from tests.importers.onnxnets import ort_float_path

    _, _, mean, std = net
    path = onnx_int8("QDQ", per_channel)
    x = images(mean, std)
    unfused = ort_outputs(path, x, "ORT_DISABLE_ALL")
    ours, _ = hwsim_outputs(path, mean, std, x, "int8-onnxruntime-qdq-float")
    assert np.count_nonzero(ours != unfused) == 0
    assert np.count_nonzero(ort_float_path(path, x[:32]) != unfused[:32]) == 0
    fused, _ = hwsim_outputs(path, mean, std, x)
    assert np.count_nonzero(fused != unfused) > 0


# ----------------------------------------------------------------------------- PyTorch torch.ao FX
def _fx_cases():
    from tests.importers.test_torch_int8 import ENGINES

    return ENGINES


@pytest.mark.parametrize("engine,profile,other", _fx_cases())
def test_resnet18_equals_torch_fx(net, engine, profile, other):
    """torch.ao FX convert_fx (x86 qconfig mapping) on ``engine``: hwsim under the engine's profile == torch on the
    output integers of 256 test images and on every quantized intermediate tensor; the other PyTorch engine's
    profile (fbgemm's requantization vs oneDNN's) differs."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("PyTorch built without fbgemm")
    from frontends.pytorch.importers import import_torch_int8
    from hwsim.given import given_of
    from tests.importers.test_torch_int8 import every_tensor, fx_int8, torch_integers

    m, shape, mean, std = net
    old, threads = torch.backends.quantized.engine, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        q = fx_int8(m, shape, images(mean, std, "train", 32), engine)
        g = import_torch_int8(q, shape, mean, std)
        assert given_of(g).profile == profile
        x = images(mean, std)
        yt = torch_integers(q, x)
        qg = compile_model(g, load_profile(profile), None)
        yh = run_integer(qg, x)[qg.output_name].astype(np.int64).reshape(yt.shape)
        assert yt.shape == (N, 10) and np.unique(yt).size > 50
        assert np.count_nonzero(yh != yt) == 0
        tensors = every_tensor(q, g, x, profile)
        assert len(tensors) >= 28  # input, 20 convs, 8 adds, pool, linear (ReLUs fused)
        assert all(np.array_equal(t, h) for t, h in tensors.values())
        assert sum(int((t != h).sum()) for t, h in every_tensor(q, g, x, other).values()) > 0
    finally:
        torch.backends.quantized.engine = old
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- LiteRT
def _litert_cases():
    try:
        from tests.importers.test_litert_import import RESOLVERS
    except pytest.skip.Exception:  # tflite / ai-edge-litert missing: the cases skip in litert_runs, not the module
        return ["reference", "optimized", "xnnpack"]
    return RESOLVERS


@pytest.fixture(scope="module")
def litert_runs():
    """The committed fixture imported once and run by hwsim under each resolver's profile on 256 test images:
    (path, inputs, committed outputs {resolver: int8}, hwsim's outputs {resolver: int8})."""
    pytest.importorskip("tflite")
    pytest.importorskip("ai_edge_litert.interpreter")
    from tests.importers.test_litert_import import PROFILES

    z = np.load(FIX / "resnet18_narrow_int8.npz", allow_pickle=False)
    path = FIX / "resnet18_narrow_int8.tflite"
    x = images(z["mean"], z["std"])
    g = import_model(path)
    assert sum(n.op == "conv2d" for n in g.nodes) == 20 and sum(n.op == "add" for n in g.nodes) == 8
    ours = {}
    for r, prof in PROFILES.items():
        qg = compile_model(g, load_profile(prof), None)
        ours[r] = run_integer(qg, x)[qg.output_name].reshape(N, -1).astype(np.int64)
    return path, x, {r: z[r].astype(np.int64) for r in PROFILES}, ours


@pytest.mark.parametrize("resolver", _litert_cases())
def test_resnet18_equals_litert(litert_runs, resolver):
    """The committed LiteRT int8 ResNet-18 (scripts/litert_fixtures.py: the same architecture trained the same way,
    converted by TensorFlow with full-integer quantization; 20 CONV_2D, 8 ADD, MAX_POOL_2D, MEAN, FULLY_CONNECTED)
    under ``resolver``'s profile == the committed outputs and ai-edge-litert re-run now, on 256 test images; the
    other two resolvers' profiles differ."""
    from tests.importers.test_litert_import import litert_int8

    path, x, expected, ours = litert_runs
    assert expected[resolver].shape == (N, 10) and np.unique(expected[resolver]).size > 50
    assert np.count_nonzero(ours[resolver] != expected[resolver]) == 0  # the committed outputs
    assert np.count_nonzero(ours[resolver] != litert_int8(path.read_bytes(), x, resolver)) == 0  # LiteRT now
    for other in ours:
        if other != resolver:
            assert np.count_nonzero(ours[other] != expected[resolver]) > 0, other


# ----------------------------------------------------------------------------- pt2e (torchao, x86 inductor quantizer)
@pytest.mark.slow
def test_resnet18_pt2e_equals_torch_compile(net):
    """pt2e with X86InductorQuantizer, compiled by inductor (oneDNN qconv, each residual add fused into the block's
    second conv as oneDNN's sum post-op): every quantized tensor of the ResNet-18-shaped model == hwsim's under
    int8-pytorch-inductor on 256 inputs; the same integers with PyTorch's quantized add in place of the fused sum
    (requant.add_form = "dequantize") and under int8-pytorch-onednn differ. Skips without torchao or AMX + VNNI."""
    try:
        from tests.importers.test_pt2e import FLAGS, Q, cut, inductor, pt2e_int8
    except pytest.skip.Exception as e:  # torchao not installed
        pytest.skip(str(e))
    if not {"amx_int8", "avx512_vnni"} <= FLAGS:
        pytest.skip("torch.compile's int8 lowering needs an AMX + VNNI CPU")
    from frontends.pytorch.importers import import_pt2e

    m, shape, mean, std = net
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = pt2e_int8(m, shape, images(mean, std, "train", 32))
        qs = [n.name for n in c.graph.nodes if n.target == Q]
        x = images(mean, std)
        ys = inductor(cut(c, qs[1:]), x)
    finally:
        torch.set_num_threads(threads)
    g = import_pt2e(cut(c, [qs[-1]]), shape, mean, std)  # the last layer's float logits are not an integer section
    fused = [lay for lay in compile_model(g, load_profile("int8-pytorch-inductor"), None).layers
             if getattr(lay, "fused_sum", None)]
    assert len(fused) == 8  # every BasicBlock's add is a fused conv + add
    diff = {}
    for name, prof in (("inductor", load_profile("int8-pytorch-inductor")),
                       ("add dequantize", load_profile("int8-pytorch-inductor", {"requant.add_form": "dequantize"})),
                       ("onednn", load_profile("int8-pytorch-onednn"))):
        env = run_integer(compile_model(g, prof, None), x)
        diff[name] = sum(int((env[g.pt2e_tensors[k]].astype(np.int64).reshape(y.shape) != y).sum())
                         for k, y in zip(qs[1:], ys))
    assert sum(y.size for y in ys) > 10 ** 6
    assert diff["inductor"] == 0 and diff["add dequantize"] > 0 and diff["onednn"] > 0, diff
