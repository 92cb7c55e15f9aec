"""Whole network vs PyTorch's quantized engine (fbgemm): the bundled model under int8-pytorch
(int8-fbgemm with ``bias.form = float32``, fbgemm's float bias) — every layer's integer codes identical."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hwsim.execute import run_integer  # noqa: E402
from hwsim.experiments import compile_for, load_context  # noqa: E402
from hwsim.profile import load_profile  # noqa: E402

pytestmark = pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines,
                                reason="PyTorch built without the fbgemm quantized engine")


def _q(codes, grid):
    return torch._make_per_tensor_quantized_tensor(torch.from_numpy(codes.astype(np.uint8)), float(grid.scale),
                                                   int(grid.zero_point))


def _weights(lay):
    w = torch.from_numpy(lay.w_q.astype(np.int8))
    return torch._make_per_channel_quantized_tensor(w, torch.from_numpy(np.asarray(lay.w_scale, np.float64)),
                                                    torch.zeros(w.shape[0], dtype=torch.int64), 0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bundled_model_every_layer_identical_to_fbgemm():
    prev = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        ctx = load_context(None, "default", limit=100)
        qg = compile_for(ctx, load_profile("int8-pytorch"))
        env = run_integer(qg, ctx.x_test)
        g = qg.grids
        t = {qg.input_name: _q(env[qg.input_name], g[qg.input_name])}
        checked = 0
        for lay in qg.layers:
            x = t[lay.inputs[0]]
            a = lay.attrs
            if lay.op == "conv2d":
                pt, pb, pl, pr = a["padding"]
                assert (pt, pl) == (pb, pr)
                packed = torch.ops.quantized.conv2d_prepack(_weights(lay), torch.from_numpy(lay.b_float), list(a["stride"]),
                                                            [pt, pl], list(a["dilation"]), a["groups"])
                op = torch.ops.quantized.conv2d_relu if lay.activation == "relu" else torch.ops.quantized.conv2d
                assert lay.activation in (None, "relu")
                y = op(x, packed, float(g[lay.output].scale), int(g[lay.output].zero_point))
            elif lay.op == "linear":
                packed = torch.ops.quantized.linear_prepack(_weights(lay), torch.from_numpy(lay.b_float))
                assert lay.activation is None
                y = torch.ops.quantized.linear(x.reshape(x.shape[0], -1), packed, float(g[lay.output].scale),
                                               int(g[lay.output].zero_point))
            elif lay.op == "maxpool2d":
                y = torch.nn.functional.max_pool2d(x, a["kernel"], a.get("stride", a["kernel"]))
            elif lay.op == "global_avgpool":
                y = torch.nn.functional.adaptive_avg_pool2d(x, 1)
            elif lay.op == "flatten":
                y = x.reshape(x.shape[0], -1)
            else:
                pytest.fail(f"unexpected op {lay.op}")
            t[lay.output] = y
            np.testing.assert_array_equal(y.int_repr().numpy().astype(np.int64).reshape(env[lay.output].shape),
                                          env[lay.output], err_msg=lay.name)
            checked += 1
        assert checked == len(qg.layers) == 8
    finally:
        torch.backends.quantized.engine = prev
