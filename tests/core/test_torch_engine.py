"""Bit-exact agreement with PyTorch's quantized CPU engine (fbgemm; x86 for linear), outputs are the truth.

How hwsim reproduces PyTorch/fbgemm (docs/semantics.md, "PyTorch"):
- float32 requant, M = fl32(fl32(s_x*s_w)/s_y) ("sequential"), round half even, z_y added after rounding;
- the bias is a float: make_requant_params(..., bias=b) adds fl32(b / fl32(s_x*s_w)) in float32 (no int32 bias);
- quantized add: ops.add(..., vector_width=V) (fma dequantization in the vector loop, scalar tail differs).
Weights stay in [-64, 63]: fbgemm's AVX2 (non-VNNI) kernels saturate int16 pair sums (vpmaddubsw), a
behaviour hwsim does not model; this range makes the test independent of the CPU.
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hwsim import ops  # noqa: E402
from tests.engines import multiplier_order_targets  # noqa: E402

warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
pytestmark = pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines,
                                reason="PyTorch built without fbgemm")
f32 = np.float32


@pytest.fixture(autouse=True)
def _engine():
    old, threads = torch.backends.quantized.engine, torch.get_num_threads()
    torch.backends.quantized.engine = "fbgemm"
    torch.set_num_threads(1)  # one TensorIterator chunk for quantized::add
    yield
    torch.backends.quantized.engine = old
    torch.set_num_threads(threads)


def _qx(x, s, z):
    return torch._make_per_tensor_quantized_tensor(torch.tensor(x, dtype=torch.uint8), float(s), int(z))


def _qw(w, s):
    w = torch.tensor(w, dtype=torch.int8)
    if np.ndim(s) == 0 or np.size(s) == 1:
        return torch._make_per_tensor_quantized_tensor(w, float(np.ravel(s)[0]), 0)
    return torch._make_per_channel_quantized_tensor(w, torch.tensor(np.asarray(s, np.float64)),
                                                    torch.zeros(len(s), dtype=torch.long), 0)


def torch_conv(x, sx, zx, w, sw, b, sy, zy, stride=1, padding=0, groups=1):
    packed = torch.ops.quantized.conv2d_prepack(_qw(w, sw), None if b is None else torch.tensor(b),
                                                [stride, stride], [padding, padding], [1, 1], groups)
    return torch.ops.quantized.conv2d(_qx(x, sx, zx), packed, float(sy), int(zy)).int_repr().numpy().astype(np.int64)


def torch_linear(x, sx, zx, w, sw, b, sy, zy):
    packed = torch.ops.quantized.linear_prepack(_qw(w, sw), None if b is None else torch.tensor(b))
    return torch.ops.quantized.linear(_qx(x, sx, zx), packed, float(sy), int(zy)).int_repr().numpy().astype(np.int64)


def hwsim_layer(x, sx, zx, w, sw, b, sy, zy, cfg=ops.Requant(), float_bias=True, **conv):
    if x.ndim == 4:
        acc, _ = ops.conv2d(x, w, None, x_zero_point=zx, **conv)
    else:
        acc, _ = ops.linear(x, w, None, x_zero_point=zx)
    if not float_bias and b is not None:  # hwsim's integer bias: round(b / (s_x s_w)) into the accumulator
        bq = np.rint(b.astype(np.float64) / (np.float64(f32(sx)) * np.asarray(sw, np.float32)))
        acc = acc + (bq.reshape(1, -1, 1, 1) if x.ndim == 4 else bq.reshape(1, -1)).astype(np.int64)
        b = None
    p = ops.make_requant_params(sx, sw, sy, cfg, bias=b)
    return ops.requantize(acc, p, cfg, zy, 0, 255)[0]


def f32s(rng, lo, hi, n=None):
    return rng.uniform(lo, hi, n).astype(f32).astype(np.float64) if n else float(f32(rng.uniform(lo, hi)))


CONV = [dict(per_channel=pc, stride=s, padding=p, groups=g, cin=ci, cout=co)
        for pc in (False, True)
        for (s, p, g, ci, co) in ((1, 1, 1, 8, 16), (2, 1, 1, 6, 8), (2, 0, 1, 3, 5), (1, 1, 8, 8, 8), (2, 1, 4, 4, 8),
                                  (1, 2, 2, 6, 4))]


@pytest.mark.parametrize("case", CONV, ids=lambda c: "pc{per_channel}-s{stride}-p{padding}-g{groups}".format(**c))
def test_conv2d_random_layers_identical(case):
    rng = np.random.default_rng(case["stride"] * 100 + case["padding"] * 10 + case["groups"] + case["per_channel"])
    c = case
    for _ in range(3):
        sx, sy = f32s(rng, 0.005, 0.05), f32s(rng, 0.02, 0.3)
        zx, zy = (int(v) for v in rng.integers(0, 256, 2))
        sw = f32s(rng, 0.001, 0.02, c["cout"]) if c["per_channel"] else f32s(rng, 0.001, 0.02, 1)
        x = rng.integers(0, 256, (2, c["cin"], 9, 8))
        w = rng.integers(-64, 64, (c["cout"], c["cin"] // c["groups"], 3, 3))
        b = rng.normal(0, 0.5, c["cout"]).astype(f32)
        yt = torch_conv(x, sx, zx, w, sw, b, sy, zy, c["stride"], c["padding"], c["groups"])
        y = hwsim_layer(x, sx, zx, w, sw, b, sy, zy, stride=c["stride"], padding=c["padding"], groups=c["groups"])
        assert y.shape == yt.shape
        np.testing.assert_array_equal(y, yt)


@pytest.mark.parametrize("per_channel", [False, True])
def test_linear_random_layers_identical_fbgemm_and_x86(per_channel):
    rng = np.random.default_rng(per_channel)
    for engine in ("fbgemm", "x86"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = engine
        for _ in range(4):
            sx, sy = f32s(rng, 0.005, 0.05), f32s(rng, 0.02, 0.3)
            zx, zy = (int(v) for v in rng.integers(0, 256, 2))
            sw = f32s(rng, 0.001, 0.02, 12) if per_channel else f32s(rng, 0.001, 0.02, 1)
            x = rng.integers(0, 256, (7, 33))
            w = rng.integers(-64, 64, (12, 33))
            b = rng.normal(0, 0.5, 12).astype(f32)
            np.testing.assert_array_equal(hwsim_layer(x, sx, zx, w, sw, b, sy, zy), torch_linear(x, sx, zx, w, sw, b, sy, zy))


def test_exact_ties_frequent_and_zero_point_after_rounding():
    """Power-of-two scales make acc * M land on .5 for every odd acc; an odd z_y separates after/before."""
    rng = np.random.default_rng(3)
    for sw in (np.array([2.0**-6]), 2.0 ** -np.array([5, 6, 7, 6, 5, 8], dtype=float)):
        x = rng.integers(121, 142, (2, 2, 7, 7))  # small |x - z_x| and |w| keep acc * M inside the grid
        w = rng.integers(-8, 8, (6, 2, 3, 3))
        sx, sy, zx, zy = 2.0**-4, 2.0**-9, 131, 77  # M = 2^-1 (and 2^0, 2^-2, 2^-3 per channel)
        yt = torch_conv(x, sx, zx, w, sw, None, sy, zy, 1, 1)
        acc, _ = ops.conv2d(x, w, None, x_zero_point=zx, padding=1)
        m = sx * np.broadcast_to(sw, (6,)) / sy
        frac = np.abs(acc * m.reshape(1, -1, 1, 1) % 1 - 0.5) == 0
        in_grid = (yt > 0) & (yt < 255)
        assert (frac & in_grid).mean() > 0.1  # ties are frequent
        np.testing.assert_array_equal(hwsim_layer(x, sx, zx, w, sw, None, sy, zy, padding=1), yt)
        before = hwsim_layer(x, sx, zx, w, sw, None, sy, zy, cfg=ops.Requant(zero_point="before"), padding=1)
        assert (before != yt).sum() > 0  # the documented alternative is really different
    xl, wl = rng.integers(0, 256, (50, 17)), rng.integers(-64, 64, (5, 17))
    np.testing.assert_array_equal(hwsim_layer(xl, 2**-3, 128, wl, np.array([2.0**-7]), None, 2**-11, 129),
                                  torch_linear(xl, 2**-3, 128, wl, np.array([2.0**-7]), None, 2**-11, 129))


def test_multiplier_order_is_sequential_not_fused():
    """Targets where fl32(fl32(sx*sw)/sy) and fl32(sx*sw/sy) round differently: torch follows 'sequential'."""
    rng = np.random.default_rng(1)
    n_targets = fused_wrong = 0
    for sx, sw, sy, x, w in multiplier_order_targets(rng):
        sx, sw, sy = float(sx), float(sw), float(sy)
        yt = torch_linear(x, sx, 128, w, np.array([sw]), None, sy, 128)
        np.testing.assert_array_equal(hwsim_layer(x, sx, 128, w, np.array([sw]), None, sy, 128), yt)
        yfused = hwsim_layer(x, sx, 128, w, np.array([sw]), None, sy, 128, cfg=ops.Requant(multiplier_order="fused"))
        n_targets += len(x)
        fused_wrong += int((yfused != yt).sum())
    assert n_targets >= 10 and fused_wrong == n_targets


def test_float_bias_vs_integer_bias():
    """fbgemm adds the float bias in float32; an int32 bias (round(b/(s_x s_w))) is a different function."""
    sx, sw, sy = 2.0**-5, np.array([2.0**-5]), 2.0**-8  # s_x s_w = 2^-10, M = 0.25
    b = np.array([2.5 * 2**-10], dtype=f32)  # bias/(s_x s_w) = 2.5 exactly: int32 bias rounds it to 2
    x = np.arange(0, 256).reshape(-1, 1)
    w = np.array([[1]])
    yt = torch_linear(x, sx, 0, w, sw, b, sy, 100)
    np.testing.assert_array_equal(hwsim_layer(x, sx, 0, w, sw, b, sy, 100), yt)
    assert (hwsim_layer(x, sx, 0, w, sw, b, sy, 100, float_bias=False) != yt).sum() > 0


def _vector_width():
    cap = torch.backends.cpu.get_cpu_capability()
    return {"AVX512": 64, "AVX2": 32}.get(cap)


@pytest.mark.parametrize("tie_rich", [False, True])
def test_quantized_add_identical(tie_rich):
    V = _vector_width()
    if V is None:
        pytest.skip(f"vector width of CPU capability {torch.backends.cpu.get_cpu_capability()} not modelled")
    rng = np.random.default_rng(tie_rich)
    for _ in range(40):
        if tie_rich:
            sa, sb = 2.0 ** -int(rng.integers(3, 7)), 2.0 ** -int(rng.integers(3, 7))
            sy = float(f32(rng.choice([1, 3, 5, 0.75]) * 2.0 ** -int(rng.integers(2, 6))))
        else:
            sa, sb, sy = (f32s(rng, 0.01, 0.1) for _ in range(3))
        za, zb, zy = (int(v) for v in rng.integers(0, 256, 3))
        shape = (1, 3, int(rng.integers(1, 9)), int(rng.integers(1, 40)))  # odd sizes: scalar tails
        a, b = rng.integers(0, 256, shape), rng.integers(0, 256, shape)
        yt = torch.ops.quantized.add(_qx(a, sa, za), _qx(b, sb, zb), float(sy), zy).int_repr().numpy().astype(np.int64)
        kw = dict(a_scale=sa, a_zero_point=za, b_scale=sb, b_zero_point=zb, y_scale=sy, y_zero_point=zy, qmin=0, qmax=255)
        y, _ = ops.add(a, b, vector_width=V, **kw)
        np.testing.assert_array_equal(y, yt)
        main = a.size - a.size % V
        y0, _ = ops.add(a, b, **kw)  # hwsim's default = PyTorch's vectorized loop
        np.testing.assert_array_equal(y0.reshape(-1)[:main], yt.reshape(-1)[:main])
        yr, _ = ops.add(a, b, vector_width=V, impl="reference", **kw)
        np.testing.assert_array_equal(yr, y)
