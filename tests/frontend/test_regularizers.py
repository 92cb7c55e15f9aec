"""KURE and SymReg against direct numpy evaluations of the papers' formulas (values and gradients)."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from frontends.pytorch.models import build_model
from frontends.pytorch.regularizers import (folded_weight, kure_loss, kurtosis, layer_kurtosis, symreg_layers,
                                            symreg_loss, symreg_sym1, symreg_sym2, weight_layers)


def fl(t):
    return float(t.detach())


def np_kurtosis(w):  # KURE eq. 13, population std
    w = np.asarray(w, np.float64).ravel()
    d = w - w.mean()
    return np.mean(d ** 4) / np.mean(d ** 2) ** 2


def np_sym1(w):  # SymReg eq. 8 with the NOTES.md pairing i <-> N+1-i (1-based), odd middle left out
    w = np.asarray(w, np.float64).reshape(w.shape[0], -1)
    c, n = w.shape
    tot = 0.0
    for ch in range(c):
        s = np.sort(w[ch])
        for i in range(1, n // 2 + 1):
            tot += abs(s[i - 1] + s[n + 1 - i - 1])
    return 2.0 / (c * n) * tot


def np_sym2(w):  # SymReg eq. 9 (2:2), groups (2i-1, 2i) with (N+2-2i, N+1-2i), 1-based
    w = np.asarray(w, np.float64).reshape(w.shape[0], -1)
    c, n = w.shape
    tot = 0.0
    for ch in range(c):
        s = np.sort(w[ch])
        for i in range(1, n // 4 + 1):
            tot += abs(s[2 * i - 2] + s[2 * i - 1] + s[n + 2 - 2 * i - 1] + s[n + 1 - 2 * i - 1])
    return 4.0 / (c * n) * tot


def fd_grad(f, w, eps=1e-6):
    g = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        wp, wm = w.copy(), w.copy()
        wp[idx] += eps
        wm[idx] -= eps
        g[idx] = (f(wp) - f(wm)) / (2 * eps)
    return g


def test_kurtosis_of_uniform_normal_laplace():
    rng = np.random.default_rng(0)
    n = 200_000
    assert fl(kurtosis(torch.from_numpy(rng.uniform(-1, 1, n)))) == pytest.approx(1.8, abs=0.02)
    assert fl(kurtosis(torch.from_numpy(rng.normal(size=n)))) == pytest.approx(3.0, abs=0.06)
    assert fl(kurtosis(torch.from_numpy(rng.laplace(size=n)))) == pytest.approx(6.0, abs=0.3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kurtosis_value_and_gradient_match_numpy(seed):
    w = np.random.default_rng(seed).standard_t(5, size=(3, 2, 3, 3))
    t = torch.tensor(w, requires_grad=True)
    k = kurtosis(t)
    assert float(k.detach()) == pytest.approx(np_kurtosis(w), rel=1e-12)
    (k - 1.8).pow(2).backward()
    np.testing.assert_allclose(t.grad.numpy(), fd_grad(lambda v: (np_kurtosis(v) - 1.8) ** 2, w), rtol=1e-5, atol=1e-8)


def _tiny_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4, 2))
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.5, 2.0, -1.5]))
        m[1].running_var.copy_(torch.tensor([0.3, 4.0, 1.0]))
    return m.double()


def test_kure_loss_folded_and_raw_match_eq15():
    m = _tiny_model()
    w = m[0].weight.detach().numpy()
    g, var, eps = m[1].weight.detach().numpy(), m[1].running_var.numpy(), m[1].eps
    wf = w * (g / np.sqrt(var + eps))[:, None, None, None]
    lin = m[4].weight.detach().numpy()
    folded = ((np_kurtosis(wf) - 1.8) ** 2 + (np_kurtosis(lin) - 1.8) ** 2) / 2  # KURE eq. 15, L = 2
    raw = ((np_kurtosis(w) - 1.8) ** 2 + (np_kurtosis(lin) - 1.8) ** 2) / 2
    assert fl(kure_loss(m)) == pytest.approx(folded, rel=1e-10)
    assert fl(kure_loss(m, on_folded=False)) == pytest.approx(raw, rel=1e-10)
    assert folded != pytest.approx(raw)
    np.testing.assert_allclose(folded_weight(m[0], m[1]).detach().numpy(), wf, rtol=1e-12)


def test_kure_gradient_wrt_conv_weight_matches_finite_differences():
    m = _tiny_model()
    g, var, eps = m[1].weight.detach().numpy(), m[1].running_var.numpy(), m[1].eps
    scale = (g / np.sqrt(var + eps))[:, None, None, None]
    kure_loss(m).backward()
    w = m[0].weight.detach().numpy().copy()
    fd = fd_grad(lambda v: (np_kurtosis(v * scale) - 1.8) ** 2 / 2, w)
    np.testing.assert_allclose(m[0].weight.grad.numpy(), fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("shape", [(4, 9), (3, 2, 3, 3), (2, 7), (5, 5), (3, 3)])
def test_symreg_values_and_gradients_match_eq8_eq9(shape):
    w = np.random.default_rng(sum(shape)).normal(size=shape)
    t = torch.tensor(w, requires_grad=True)
    s1, s2 = symreg_sym1(t), symreg_sym2(t)
    assert fl(s1) == pytest.approx(np_sym1(w), rel=1e-12)
    assert fl(s2) == pytest.approx(np_sym2(w), rel=1e-12)
    (0.1 * s1 + 0.1 * s2).backward()
    fd = fd_grad(lambda v: 0.1 * np_sym1(v) + 0.1 * np_sym2(v), w)
    np.testing.assert_allclose(t.grad.numpy(), fd, rtol=1e-5, atol=1e-8)


def test_symreg_is_zero_for_symmetric_channels_and_ignores_odd_middle():
    base = np.array([[-3.0, -1.0, 0.5, 1.0, 3.0], [-2.0, -0.2, 0.15, 0.2, 2.0]])
    # pairs (-3,3), (-1,1) and (-2,2), (-0.2,0.2): sym1 = 0 whatever the (odd) middle element is
    assert fl(symreg_sym1(torch.tensor(base))) == 0.0
    asym = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert fl(symreg_sym1(asym)) == pytest.approx(2 / 4 * (5 + 5))


def test_symreg_layers_skip_depthwise_and_classifier():
    m = build_model("mobilenetv2", 10, 3)
    names = [n for n, _, _ in symreg_layers(m)]
    allw = weight_layers(m)
    dw = [n for n, mod, _ in allw if isinstance(mod, nn.Conv2d) and mod.groups > 1]
    assert dw and not set(dw) & set(names)
    assert "fc" not in names and any(n == "fc" for n, _, _ in allw)
    assert fl(symreg_loss(m)) > 0


def test_regularizers_move_statistics_in_short_optimisation():
    torch.manual_seed(0)
    m = build_model("smallcnn", 10, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    before_k, before_s = fl(kure_loss(m)), fl(symreg_loss(m))
    for _ in range(30):
        opt.zero_grad()
        (kure_loss(m) + symreg_loss(m)).backward()
        opt.step()
    assert fl(kure_loss(m)) < 0.5 * before_k
    assert fl(symreg_loss(m)) < before_s
    ks = layer_kurtosis(m)
    assert all(abs(v - 1.8) < 1.0 for v in ks.values())
