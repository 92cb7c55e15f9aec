"""The frontend's per-op entries (frontends/pytorch/ops.py) cover the registry, one place per op."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from frontends.pytorch import ops as fops  # noqa: E402
from hwsim.ops import registry  # noqa: E402


def test_every_hwsim_op_has_one_frontend_entry():
    assert sorted(e.op for e in fops.entries()) == sorted(registry.names())
    for e in fops.entries():
        assert e.mirror in fops.MIRRORS
        # what the mirror does with the output follows the op's spec: clamps are the activations,
        # moved values keep their input's grid
        spec = registry.get(e.op)
        assert (e.mirror == "clamp") == spec.activation
        if e.mirror in ("max", "reshape", "grid"):
            assert spec.output_grid == "input"


def test_fused_activation_is_the_entry_function():
    x = torch.tensor([-1.0, 3.0, 7.5])
    assert torch.equal(fops.activation(x, "relu6"), torch.tensor([0.0, 3.0, 6.0]))
    assert torch.equal(fops.activation(x, "relu"), torch.tensor([0.0, 3.0, 7.5]))
    assert torch.equal(fops.activation(x, None), x)
