"""linear (fully connected): y[n, m] = requant(bias[m] + sum_k (w[m,k] - zw[m]) * (x[n,k] - zx)).

The public op :func:`linear` (accumulators under the accumulator model, fast == reference) and
its registry entry :class:`LinearSpec` (graph schema, float reference, compile, execute, ONNX export).
"""

from __future__ import annotations

import numpy as np

from hwsim import reference as ref
from hwsim.errors import HwsimError
from hwsim.ops.core import Accumulator, AccStats, _bias, _check_impl, _int_array, _int_codes, _w_zero_point
from hwsim.ops.mac import MacSpec
from hwsim.ops.registry import register


def linear(x_q, w_q, bias_q=None, *, x_zero_point=0, w_zero_point=0, acc: Accumulator = Accumulator(),
           impl: str = "fast") -> tuple[np.ndarray, AccStats]:
    """acc[n, m] = bias[m] + sum_k (w[m,k] - zw[m]) * (x[n,k] - zx) under the accumulator model; [N, M].

    The fast path returns int32 where its plan proves every |acc| < 2^31 (kernels.acc_dtype), else int64; the
    reference returns int64: the same integers."""
    _check_impl(impl)
    x = _int_codes(x_q, "x_q")
    w = _int_array(w_q, "w_q")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise HwsimError(f"linear: x_q {x.shape} and w_q {w.shape}: allowed x [N, K] and w [M, K]")
    zw = _w_zero_point(w_zero_point, w.shape[0])
    b = _bias(bias_q, w.shape[0])
    if impl == "reference":
        x = _int_array(x, "x_q")
        out, pe, ae = ref.linear(x, w, b, int(x_zero_point), zw, acc)
        return out, AccStats(pe, ae)
    from hwsim import kernels
    out, pe, ae = kernels.linear_accumulate(x, w, b, int(x_zero_point), zw, acc)
    return out, AccStats(pe, ae)



@register
class LinearSpec(MacSpec):
    name = "linear"
    kind = "linear"

    def infer_shape(self, node, ins, p, fail, tag):
        x, wt = ins[0], p["weight"]
        if len(wt) != 2:
            fail(f"{tag}: weight shape {wt} must be [out, in]")
        if len(x) != 1:
            fail(f"{tag}: input {node.inputs[0]!r} has shape {x}; linear needs a flat (features,) input (add a flatten)")
        if wt[1] != x[0]:
            fail(f"{tag}: weight shape {wt} expects {wt[1]} input features but {node.inputs[0]!r} has {x[0]}")
        if "bias" in p and p["bias"] != (wt[0],):
            fail(f"{tag}: bias shape {p['bias']} must be ({wt[0]},)")
        return (wt[0],)

    def float_forward(self, node, graph, ins):
        w, b = graph.param(node, "weight"), graph.param(node, "bias")
        y = ins[0] @ w.T.astype(np.float32, copy=False)
        return y + b if b is not None else y

    def float_mac(self, lay, x, w):
        return x.reshape(len(x), -1).astype(np.float64) @ w.T

    def expected_error(self, lay, eps, ex):
        k = eps.shape[1]
        return eps @ np.repeat(ex, k // ex.size)

    def accumulate(self, lay, x, gx, impl):
        return linear(x.reshape(x.shape[0], -1), lay.w_q, lay.bias_q, x_zero_point=gx.zero_point,
                      w_zero_point=lay.w_zero_point, acc=lay.accumulator, impl=impl)

    def plan(self, lay, w, b, zw, gx):
        from hwsim import kernels

        return kernels.linear_plan(w, b, gx.zero_point, zw, lay.accumulator, gx.qmin, gx.qmax)

    def gemm_shape(self, lay, x, plan):
        from hwsim import kernels

        return x.reshape(x.shape[0], -1, 1, 1), kernels._LINEAR_GEOM, (0, 0, 0, 0), (x.shape[0], lay.w_q.shape[0])

    def accumulate_planned(self, lay, x, w, b, zw, gx, plan):
        from hwsim import kernels

        return kernels.linear_accumulate(x.reshape(x.shape[0], -1), w, b, gx.zero_point, zw, lay.accumulator,
                                         plan=plan)

    def certificate(self, lay, w_q, lo, hi, x_zero_point):
        from hwsim import certify

        return certify.certify_linear(w_q.reshape(w_q.shape[0], -1), lay.bias_q, lay.w_zero_point, lo, hi,
                                      x_zero_point, lay.accumulator)

    def onnx_export(self, ex, lay):
        ex.linear(lay)
