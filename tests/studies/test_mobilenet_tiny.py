"""The studies' MobileNet-style net (frontends/pytorch/models.py ``mobilenetv2-tiny``): MobileNetV2 at
width 0.5 with a stride-2 stem, the same blocks and depthwise layers; ``mobilenetv2`` itself unchanged."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from frontends.pytorch.models import MobileNetV2, MobileNetV2Tiny, build_model  # noqa: E402
from hwsim.studies.spec import MOBILENET, STUDIES  # noqa: E402


def _convs(m):
    return [x for x in m.modules() if isinstance(x, nn.Conv2d)]


def test_tiny_is_mobilenetv2_at_half_width_with_a_stride_2_stem():
    full, tiny = build_model("mobilenetv2", 10, 1), build_model("mobilenetv2-tiny", 10, 1)
    assert type(tiny) is MobileNetV2Tiny and type(full) is MobileNetV2
    cf, ct = _convs(full), _convs(tiny)
    assert len(cf) == len(ct)  # same blocks, same layers
    for a, b in zip(cf, ct):
        assert b.out_channels * 2 == a.out_channels and b.kernel_size == a.kernel_size
        assert (b.groups == b.in_channels > 1) == (a.groups == a.in_channels > 1)  # depthwise where it was
    assert sum(c.groups == c.in_channels > 1 for c in ct) == 6  # one depthwise layer per block
    assert cf[0].stride == (1, 1) and ct[0].stride == (2, 2)  # the default net keeps its stride-1 stem
    torch.manual_seed(0)
    with torch.no_grad():
        assert tiny.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_mobilenet_studies_use_it():
    for name in ("bitwidth-mobilenet", "pow2-mobilenet"):
        assert STUDIES[name].archs == (MOBILENET,) == ("mobilenetv2-tiny",)
    # bitwidth-mobilenet: the small CNN's study (all five variants, the whole ladder) on the MobileNet
    assert STUDIES["bitwidth-mobilenet"].variants == STUDIES["bitwidth"].variants
    assert STUDIES["bitwidth-mobilenet"].columns == STUDIES["bitwidth"].columns
    assert [v.name for v in STUDIES["pow2-mobilenet"].variants] == ["baseline", "kure", "all"]
