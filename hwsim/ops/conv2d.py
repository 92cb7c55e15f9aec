"""conv2d: 2-D convolution (NCHW, groups, dilation, zero-point padding) under the accumulator model.

The public op :func:`conv2d` (fast == reference) and its registry entry :class:`Conv2dSpec` (graph
schema and shape inference, float reference, compile, execute, certificate, ONNX export).
"""

from __future__ import annotations

import numpy as np

from hwsim import reference as ref
from hwsim.errors import HwsimError
from hwsim.ops.core import (Accumulator, AccStats, _bias, _check_impl, _int_array, _int_codes, _padding, _pair,
                            _w_zero_point, conv_output_size)
from hwsim.ops.mac import MacSpec
from hwsim.ops.registry import need_chw, pair, register, window_out


def conv2d(x_q, w_q, bias_q=None, *, x_zero_point=0, w_zero_point=0, stride=(1, 1), padding=(0, 0, 0, 0),
           dilation=(1, 1), groups: int = 1, acc: Accumulator = Accumulator(),
           impl: str = "fast") -> tuple[np.ndarray, AccStats]:
    """2-D convolution (NCHW, weights [Cout, Cin/groups, kh, kw]) under the accumulator model; [N, Cout, Ho, Wo].

    The fast path returns int32 where its plan proves every |acc| < 2^31 (kernels.acc_dtype), else int64; the
    reference returns int64: the same integers.

    k runs over (input channel of the group, kernel row, kernel column); padding pixels hold x_zero_point.
    """
    _check_impl(impl)
    x = _int_codes(x_q, "x_q")
    w = _int_array(w_q, "w_q")
    stride, dilation, pad = _pair(stride, "stride"), _pair(dilation, "dilation"), _padding(padding)
    if x.ndim != 4 or w.ndim != 4:
        raise HwsimError(f"conv2d: x_q {x.shape}, w_q {w.shape}: allowed x [N, C, H, W] and w [Cout, Cin/groups, kh, kw]")
    groups = int(groups)
    if groups < 1 or x.shape[1] % groups or w.shape[0] % groups or w.shape[1] * groups != x.shape[1]:
        raise HwsimError(f"conv2d: groups = {groups} does not fit input channels {x.shape[1]} and weight {w.shape}")
    Ho = conv_output_size(x.shape[2], w.shape[2], stride[0], pad[0], pad[1], dilation[0])
    Wo = conv_output_size(x.shape[3], w.shape[3], stride[1], pad[2], pad[3], dilation[1])
    if Ho < 1 or Wo < 1:
        raise HwsimError(f"conv2d: kernel {w.shape[2:]} larger than the padded input {x.shape[2:]}")
    zw = _w_zero_point(w_zero_point, w.shape[0])
    b = _bias(bias_q, w.shape[0])
    if impl == "reference":
        x = _int_array(x, "x_q")
        out, pe, ae = ref.conv2d(x, w, b, int(x_zero_point), zw, stride, pad, dilation, groups, acc)
        return out, AccStats(pe, ae)
    from hwsim import kernels
    out, pe, ae = kernels.conv2d_accumulate(x, w, b, int(x_zero_point), zw, stride, pad, dilation, groups, acc)
    return out, AccStats(pe, ae)



@register
class Conv2dSpec(MacSpec):
    name = "conv2d"
    attrs = {"stride": "pair", "padding": "pad4", "dilation": "pair", "groups": "posint"}
    kind = "conv"

    def layer_kind(self, node, graph):
        w = graph.param(node, "weight")
        groups = node.attrs.get("groups", 1)
        return "depthwise" if groups > 1 and groups == w.shape[0] and w.shape[1] == 1 else "conv"

    def infer_shape(self, node, ins, p, fail, tag):
        from hwsim.graph import MAX_SPATIAL

        a, x = node.attrs, ins[0]
        need_chw(node, x, fail, tag)
        c, h, w = x
        wt = p["weight"]
        g = int(a["groups"])
        if len(wt) != 4:
            fail(f"{tag}: weight shape {wt} must be [Cout, Cin/groups, kh, kw]")
        cout, cin_g, kh, kw = wt
        if c % g or cout % g:
            fail(f"{tag}: groups={g} must divide input channels {c} and output channels {cout}")
        if cin_g != c // g:
            fail(f"{tag}: weight shape {wt} has {cin_g} input channels per group, but input "
                 f"{node.inputs[0]!r} has {c} channels and groups={g} (expected {c // g})")
        if "bias" in p and p["bias"] != (cout,):
            fail(f"{tag}: bias shape {p['bias']} must be ({cout},)")
        (sh, sw), (pt, pb, pl, pr), (dh, dw) = a["stride"], a["padding"], a["dilation"]
        if max(kh, kw) > MAX_SPATIAL:
            fail(f"{tag}: kernel {kh}x{kw} (allowed at most {MAX_SPATIAL} per side)")
        eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        if max(pt, pb) > eh - 1 or max(pl, pr) > ew - 1:
            fail(f"{tag}: padding {list(a['padding'])} exceeds the dilated kernel extent {eh}x{ew} minus 1 "
                 f"(allowed at most [{eh - 1}, {eh - 1}, {ew - 1}, {ew - 1}]: every window must touch the input)")
        oh = window_out(h, pt + pb, dh * (kh - 1) + 1, sh)
        ow = window_out(w, pl + pr, dw * (kw - 1) + 1, sw)
        if oh < 1 or ow < 1:
            fail(f"{tag}: kernel {kh}x{kw} (dilation {dh}x{dw}) does not fit input {h}x{w} with padding {list(a['padding'])}")
        return (cout, oh, ow)

    def float_forward(self, node, graph, ins):
        from hwsim.floatref import conv2d_float

        a = node.attrs
        return conv2d_float(ins[0], graph.param(node, "weight"), graph.param(node, "bias"), a["stride"], a["padding"],
                            a["dilation"], a["groups"])

    def float_mac(self, lay, x, w):
        from hwsim.floatref import conv2d_float

        a = lay.attrs
        return conv2d_float(x.astype(np.float32), w.astype(np.float32), None, a["stride"], a["padding"], a["dilation"],
                            a["groups"]).astype(np.float64)

    def expected_error(self, lay, eps, ex):
        cout, cin_g = eps.shape[:2]
        groups = lay.attrs.get("groups", 1)
        per = eps.sum(axis=(2, 3))  # [Cout, Cin/g]
        idx = (np.arange(cout) // (cout // groups))[:, None] * cin_g + np.arange(cin_g)[None, :]
        return np.sum(per * ex[idx], axis=1)

    def accumulate(self, lay, x, gx, impl):
        a = lay.attrs
        return conv2d(x, lay.w_q, lay.bias_q, x_zero_point=gx.zero_point, w_zero_point=lay.w_zero_point,
                      stride=pair(a.get("stride", 1)), padding=tuple(a.get("padding", (0, 0, 0, 0))),
                      dilation=pair(a.get("dilation", 1)), groups=a.get("groups", 1), acc=lay.accumulator, impl=impl)

    def plan(self, lay, w, b, zw, gx):
        from hwsim import kernels

        a = lay.attrs
        geo = (_pair(a.get("stride", 1), "stride"), _padding(a.get("padding", (0, 0, 0, 0))),
               _pair(a.get("dilation", 1), "dilation"), int(a.get("groups", 1)))
        return kernels.conv_plan(w, b, gx.zero_point, zw, *geo, lay.accumulator, gx.qmin, gx.qmax)

    def gemm_shape(self, lay, x, plan):
        stride, pad, dilation, _ = plan.geometry
        KH, KW = lay.w_q.shape[2], lay.w_q.shape[3]
        Ho = conv_output_size(x.shape[2], KH, stride[0], pad[0], pad[1], dilation[0])
        Wo = conv_output_size(x.shape[3], KW, stride[1], pad[2], pad[3], dilation[1])
        geom = np.array([KH, KW, stride[0], stride[1], dilation[0], dilation[1], Ho, Wo], np.int64)
        return x, geom, pad, (x.shape[0], lay.w_q.shape[0], Ho, Wo)

    def accumulate_planned(self, lay, x, w, b, zw, gx, plan):
        from hwsim import kernels

        return kernels.conv2d_accumulate(x, w, b, gx.zero_point, zw, *plan.geometry, lay.accumulator, plan=plan)

    def certificate(self, lay, w_q, lo, hi, x_zero_point):
        from hwsim import certify

        # padding pixels hold the zero point: certify_conv2d widens the box to contain it
        return certify.certify_conv2d(w_q, lay.bias_q, lay.w_zero_point, lo, hi, x_zero_point, lay.accumulator)

    def onnx_export(self, ex, lay):
        ex.conv2d(lay)
