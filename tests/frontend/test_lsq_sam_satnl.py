"""LSQ gradients (WP eq. 37-38 + Esser et al. gradient scale), noise tempering (NT eq. 7), SAM/ASAM, SatNL."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from frontends.pytorch.lsq import LSQQuantizer, QuantWrapper, lsq_quantize, noise_temper, prepare_qat, tempering_noise_std
from frontends.pytorch.sam import SAM
from frontends.pytorch.satnl import SatNLConv2d, SatNLLinear, apply_satnl


def lsq_reference(x, s, qn, qp, g, upstream):
    """numpy forward and gradients of LSQ: WP eq. 37 (input) and eq. 38 (step), step grad times g."""
    v = x / s
    fwd = np.clip(np.round(v), qn, qp) * s
    inside = (v >= qn) & (v <= qp)
    dx = upstream * inside
    ds_el = np.where(inside, np.round(v) - v, np.where(v < qn, qn, qp))
    return fwd, dx, (upstream * ds_el).sum() * g


@pytest.mark.parametrize("bits,signed", [(4, True), (3, False), (8, True)])
def test_lsq_forward_and_gradients_match_wp_eq37_38(bits, signed):
    rng = np.random.default_rng(bits)
    x = rng.normal(scale=1.5, size=(6, 5))
    up = rng.normal(size=x.shape)
    qn, qp = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    s0 = 1.0 / qp + 0.00123  # clamps hit on both sides for every bit width
    g = 1 / math.sqrt(x.size * qp)
    xt = torch.tensor(x, requires_grad=True)
    st = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
    y = lsq_quantize(xt, st, qn, qp, g)
    (y * torch.tensor(up)).sum().backward()
    fwd, dx, ds = lsq_reference(x, s0, qn, qp, g, up)
    np.testing.assert_allclose(y.detach().numpy(), fwd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-14, atol=0)  # (1/s)·s may differ by 1 ulp
    assert float(st.grad) == pytest.approx(ds, rel=1e-10)
    # both clamp branches were exercised
    v = x / s0
    assert (v < qn).any() and (v > qp).any()


def test_lsq_quantizer_per_channel_init_and_gradient_scale():
    torch.manual_seed(0)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    q = LSQQuantizer(4, True, channel_axis=0, num_channels=3).double()
    q(w)  # initialises
    qp = 7
    expected = 2 * w.abs().mean(dim=(1, 2, 3)) / math.sqrt(qp)  # Esser et al. init
    np.testing.assert_allclose(q.step.detach().numpy(), expected.numpy(), rtol=1e-12)
    w.requires_grad_(True)
    up = torch.randn_like(w)
    (q(w) * up).sum().backward()
    n_per = 2 * 3 * 3
    for c in range(3):
        _, _, ds = lsq_reference(w[c].detach().numpy(), float(q.step.detach()[c]), -8, 7, 1 / math.sqrt(n_per * qp), up[c].numpy())
        assert float(q.step.grad[c]) == pytest.approx(ds, rel=1e-9)


def test_activation_quantizer_signedness_and_feature_count():
    q = LSQQuantizer(4, None, batch_axis=True).double()
    x = torch.rand(8, 5, dtype=torch.float64)
    q(x)
    assert not q.signed and q.qrange() == (0, 15)
    q2 = LSQQuantizer(4, None, batch_axis=True)
    q2(torch.randn(8, 5))
    assert q2.signed and q2.qrange() == (-8, 7)
    st = q.step
    xx = x.clone().requires_grad_(True)
    up = torch.randn_like(x)
    (q(xx) * up).sum().backward()
    _, _, ds = lsq_reference(x.numpy(), float(st.detach()), 0, 15, 1 / math.sqrt(5 * 15), up.numpy())  # N = features per sample
    assert float(st.grad) == pytest.approx(ds, rel=1e-9)


def test_noise_tempering_is_stop_gradient():
    torch.manual_seed(1)
    w = torch.randn(4, 3, dtype=torch.float64)
    s = torch.tensor(0.1, dtype=torch.float64)
    up = torch.randn(4, 3, dtype=torch.float64)
    grads = []
    for noisy in (False, True):
        wt, st = w.clone().requires_grad_(True), s.clone().requires_grad_(True)
        q = lsq_quantize(wt, st, -8, 7, 0.05)
        if noisy:
            q2 = noise_temper(q, wt, 0.3, 50.0)
            assert not torch.equal(q2, q)
            q = q2
        (q * up).sum().backward()
        grads.append((wt.grad.clone(), st.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("e", [0.001, 0.01, 0.05])
def test_noise_tempering_std_follows_nt_eq7(e):
    torch.manual_seed(2)
    n = 40_000
    w = torch.zeros(n, dtype=torch.float64)
    q = torch.full((n,), e, dtype=torch.float64)  # quantization error |Q(W) - W| = e everywhere
    c, k = 0.3, 50.0
    noise = noise_temper(q, w, c, k) - q
    expected = c * math.exp(-k * e) * math.sqrt(e)
    assert float(noise.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(n)
    assert float(tempering_noise_std(torch.tensor(e), c, k)) == pytest.approx(expected)


def test_quant_wrapper_noise_only_in_training():
    torch.manual_seed(0)
    m = prepare_qat(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 2)), 4, 4, noise=(0.3, 50))
    x = torch.randn(5, 2, 6, 6)
    m.train()
    m(x)
    m.eval()
    a, b = m(x), m(x)
    assert torch.equal(a, b)
    m.train()
    assert not torch.equal(m(x), m(x))
    assert isinstance(m[0], QuantWrapper) and isinstance(m[3], QuantWrapper)


def _quadratic_setup(adaptive):
    torch.manual_seed(0)
    p1 = nn.Parameter(torch.randn(5, dtype=torch.float64))
    p2 = nn.Parameter(torch.randn(2, 3, dtype=torch.float64))
    base = torch.optim.SGD([p1, p2], lr=0.1)
    opt = SAM([p1, p2], base, rho=0.05 if not adaptive else 1.0, adaptive=adaptive)

    def loss():
        return (p1 ** 4).sum() + (p2.sin() * 3).sum() + (p1[:2] * p2[0, :2]).sum()
    return p1, p2, opt, loss


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_asam_perturbation_norm_and_restore(adaptive):
    p1, p2, opt, loss = _quadratic_setup(adaptive)
    w0 = [p1.detach().clone(), p2.detach().clone()]
    loss().backward()
    opt.first_step()
    e = [p1.detach() - w0[0], p2.detach() - w0[1]]
    for a, b in zip(e, opt.last_perturbation):
        torch.testing.assert_close(a, b)
    if adaptive:  # ‖T⁻¹ e‖ = ρ with T = |w| + η (Kwon et al.)
        norm = torch.sqrt(sum(((ei / (wi.abs() + 0.01)) ** 2).sum() for ei, wi in zip(e, w0)))
    else:
        norm = torch.sqrt(sum((ei ** 2).sum() for ei in e))
    assert float(norm) == pytest.approx(opt.rho, rel=1e-9)
    # gradient at the perturbed point; second step = restore + base SGD step with that gradient
    loss().backward()
    g = [p1.grad.clone(), p2.grad.clone()]
    opt.second_step()
    for p, w, gi in zip((p1, p2), w0, g):
        torch.testing.assert_close(p.detach(), w - 0.1 * gi, rtol=0, atol=1e-15)


def test_satnl_preserves_function_and_applies_tanh():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 2))
    x = torch.randn(4, 2, 6, 6)
    ref = m(x)
    apply_satnl(m)
    assert isinstance(m[0], SatNLConv2d) and isinstance(m[3], SatNLLinear)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        m[3].weight.mul_(40)  # V large: tanh saturates, |f(V)| < 1
    assert float(m[3].effective_weight().detach().abs().max()) <= 1.0
    torch.testing.assert_close(m[3].effective_weight(), torch.tanh(m[3].weight))
