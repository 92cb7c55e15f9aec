"""The architectures of frontends/pytorch/models.py: shapes, the blocks' structure, eval-mode identities."""

import pytest
import torch
import torch.nn as nn

from frontends.pytorch.models import (ARCHS, EfficientNetB0, MobileNetV3Small, SqueezeExcite, StochasticDepth,
                                      _make_divisible, build_model)
from hwsim.errors import HwsimError


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_arch_gives_logits(arch, shape):
    torch.manual_seed(0)
    m = build_model(arch, 7, shape[0]).eval()
    with torch.no_grad():
        y = m(torch.randn(2, *shape))
    assert y.shape == (2, 7) and torch.isfinite(y).all()


def test_unknown_arch_is_one_line():
    with pytest.raises(HwsimError, match="unknown architecture 'vgg'.*mobilenetv3.*efficientnet"):
        build_model("vgg")


def test_make_divisible_rounds_to_eight_never_more_than_ten_percent_down():
    assert [_make_divisible(v) for v in (4, 12, 18, 24, 60, 68)] == [8, 16, 24, 24, 64, 72]
    for v in range(1, 400):
        d = _make_divisible(v)
        assert d % 8 == 0 and d >= 0.9 * v


def test_squeeze_excite_scales_each_channel_by_its_gate():
    torch.manual_seed(1)
    se = SqueezeExcite(6, 2, nn.ReLU, nn.Sigmoid).eval()
    x = torch.randn(3, 6, 5, 5)
    gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * gate, rtol=0, atol=0)


def test_stochastic_depth_is_identity_in_eval_and_drops_whole_samples_in_training():
    sd = StochasticDepth(0.5)
    x = torch.randn(64, 4, 3, 3)
    assert sd.eval()(x) is x
    torch.manual_seed(2)
    y = sd.train()(x)
    kept = (y != 0).flatten(1).any(1)
    assert 0 < kept.sum() < 64  # some samples dropped, some kept (p = 0.5 over 64 samples)
    torch.testing.assert_close(y[kept], x[kept] * 2)
    assert (y[~kept] == 0).all()


def test_the_new_networks_use_the_ops_they_are_for():
    v3 = MobileNetV3Small(10, 1)
    kinds = {type(m) for m in v3.modules()}
    assert {nn.Hardswish, nn.Hardsigmoid, SqueezeExcite, nn.Dropout}.issubset(kinds)
    assert any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in v3.modules())  # depthwise
    eff = EfficientNetB0(10, 1)
    kinds = {type(m) for m in eff.modules()}
    assert {nn.SiLU, nn.Sigmoid, SqueezeExcite, StochasticDepth}.issubset(kinds)
    drops = [m.p for m in eff.modules() if isinstance(m, StochasticDepth)]
    assert drops == sorted(drops) and drops[0] == 0 and max(drops) < 0.1
