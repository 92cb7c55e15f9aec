"""run_float vs torch float32 eval mode, and normalize()."""

from __future__ import annotations

import numpy as np
import pytest

from hwsim.errors import HwsimError
from hwsim.floatref import normalize, run_float
from hwsim.graph import GraphBuilder


def _every_op_net(seed: int = 0):
    """A small random net that uses every op; returns (graph, its parameters for the torch mirror)."""
    rng = np.random.default_rng(seed)
    r = lambda *s, sc=0.4: rng.normal(0, sc, s).astype(np.float32)  # noqa: E731
    P = {
        "c1w": r(6, 3, 3, 3), "c1b": r(6, sc=0.1),
        "bn_g": rng.uniform(0.5, 1.5, 6).astype(np.float32), "bn_b": r(6, sc=0.1),
        "bn_m": r(6, sc=0.1), "bn_v": rng.uniform(0.5, 2.0, 6).astype(np.float32),
        "gw": r(6, 3, 3, 2),  # groups=2, dilation (2, 1), asymmetric padding
        "dww": r(6, 1, 3, 3), "dwb": r(6, sc=0.1),  # depthwise, stride 2
        "pw": r(4, 6, 1, 1),
        "fcw": r(5, 10 * 2 * 2), "fcb": r(5, sc=0.1),
    }
    b = GraphBuilder(input_shape=(3, 13, 11), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    h = b.conv2d("c1", "input", P["c1w"], bias=P["c1b"], padding=1)
    h = b.batchnorm("bn", h, P["bn_g"], P["bn_b"], P["bn_m"], P["bn_v"], eps=1e-3)
    h = b.relu6("r6", h)
    g = b.conv2d("gconv", h, P["gw"], stride=(1, 1), padding=(3, 1, 0, 1), dilation=(2, 1), groups=2)
    g = b.relu("gr", g)
    s = b.add("add", g, h)
    d = b.conv2d("dw", s, P["dww"], bias=P["dwb"], stride=2, padding=1, groups=6)
    m = b.maxpool2d("mp", s, kernel=3, stride=2, padding=1)
    p = b.conv2d("pw", m, P["pw"])
    c = b.concat("cat", [d, p], axis=1)                     # 10 channels, 7x6
    a = b.avgpool2d("ap", c, kernel=(3, 2), stride=(2, 2), padding=(1, 0))  # -> 10 x 4 x 3
    a = b.maxpool2d("mp2", a, kernel=2, stride=(2, 1))     # -> 10 x 2 x 2
    b.global_avgpool("gap", a)  # a side branch: checked through return_all
    f = b.flatten("flat", a)
    o = b.linear("fc", f, P["fcw"], bias=P["fcb"])
    graph = b.build(outputs=[o])
    return graph, P


def _torch_forward(torch, P, x):
    F = torch.nn.functional
    t = {k: torch.from_numpy(v) for k, v in P.items()}
    c1 = F.conv2d(x, t["c1w"], t["c1b"], padding=1)
    bn = F.batch_norm(c1, t["bn_m"], t["bn_v"], t["bn_g"], t["bn_b"], training=False, eps=1e-3)
    h = F.relu6(bn)
    g = F.conv2d(F.pad(h, (0, 1, 3, 1)), t["gw"], None, dilation=(2, 1), groups=2)
    g = F.relu(g)
    s = g + h
    d = F.conv2d(s, t["dww"], t["dwb"], stride=2, padding=1, groups=6)
    m = F.max_pool2d(s, 3, 2, 1)
    p = F.conv2d(m, t["pw"])
    c = torch.cat([d, p], dim=1)
    a = F.avg_pool2d(c, (3, 2), (2, 2), (1, 0), count_include_pad=True)
    a = F.max_pool2d(a, 2, (2, 1))
    gap = F.adaptive_avg_pool2d(a, 1)
    o = F.linear(torch.flatten(a, 1), t["fcw"], t["fcb"])
    return {"c1": c1, "bn": bn, "r6": h, "gr": g, "add": s, "dw": d, "mp": m, "pw": p, "cat": c,
            "mp2": a, "gap": gap, "fc": o}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_run_float_matches_torch_eval(seed):
    torch = pytest.importorskip("torch")
    graph, P = _every_op_net(seed)
    x = np.random.default_rng(100 + seed).normal(0, 1, (5, 3, 13, 11)).astype(np.float32)
    ours = run_float(graph, x, return_all=True)
    with torch.no_grad():
        ref = _torch_forward(torch, P, torch.from_numpy(x))
    for name, want in ref.items():
        got = ours[name]
        assert got.dtype == np.float32
        assert got.shape == tuple(want.shape), name
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    logits = run_float(graph, x)
    assert logits.shape == (5, 5)
    np.testing.assert_allclose(logits, ref["fc"].numpy(), rtol=1e-5, atol=1e-5)
    # the values must be of a size where a 1e-5 tolerance means something
    assert np.abs(ref["fc"].numpy()).max() > 0.1


def test_maxpool_pads_with_minus_inf_and_avgpool_counts_padding():
    b = GraphBuilder(input_shape=(1, 2, 2))
    m = b.maxpool2d("mp", "input", kernel=2, stride=1, padding=1)
    b.avgpool2d("ap", "input", kernel=2, stride=1, padding=1)
    g = b.build(outputs=[m])
    x = -np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)  # all negative: zero padding would win
    out = run_float(g, x, return_all=True)
    np.testing.assert_array_equal(out["mp"][0, 0], [[-1, -1, -2], [-1, -1, -2], [-3, -3, -4]])
    np.testing.assert_array_equal(out["ap"][0, 0, 0], np.float32([-1, -3, -2]) / 4)


def test_normalize_per_channel():
    b = GraphBuilder(input_shape=(2, 1, 1), mean=(0.5, 0.25), std=(0.5, 0.25))
    b.relu("r", "input")
    g = b.build()
    x = np.array([[[[1.0]], [[0.5]]]], np.float32)
    np.testing.assert_array_equal(normalize(g, x)[:, :, 0, 0], [[1.0, 1.0]])
    assert normalize(g, x).dtype == np.float32
    with pytest.raises(HwsimError, match="expected"):
        normalize(g, np.zeros((1, 3, 1, 1), np.float32))
    with pytest.raises(HwsimError, match="expected"):
        run_float(g, np.zeros((1, 2, 2, 1), np.float32))
