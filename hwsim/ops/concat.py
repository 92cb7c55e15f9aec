"""concat: inputs requantized to the output grid, concatenated along the channel axis.

The public op :func:`concat` and its registry entry :class:`ConcatSpec` (graph schema, float
reference, compile, execute, ONNX export).
"""

from __future__ import annotations

import numpy as np

from hwsim.errors import HwsimError
from hwsim.ops.core import Requant, _check_impl, _int_array, make_requant_params, requantize
from hwsim.ops.registry import WIDE, OpSpec, clamp_counted, per_image, register


def concat(xs, scales, zero_points, y_scale, y_zero_point, qmin, qmax, cfg: Requant = Requant(), axis: int = 1,
           impl: str = "fast", index_offset: int = 0) -> tuple[np.ndarray, int]:
    """Concatenate along ``axis`` after requantizing each input to the output grid; returns (y, clipped).

    Input i is requantize(x_i - z_i, M = s_i / s_y) (exactly the identity when (s_i, z_i) == (s_y, z_y));
    stochastic rounding uses the flat index in the concatenated output.
    """
    _check_impl(impl)
    xs = [_int_array(x, f"xs[{i}]") for i, x in enumerate(xs)]
    if not xs or len(scales) != len(xs) or len(zero_points) != len(xs):
        raise HwsimError(f"concat: {len(xs)} inputs, {len(scales)} scales, {len(zero_points)} zero points")
    try:
        shape_out = np.concatenate([np.empty(x.shape, np.int8) for x in xs], axis=axis).shape
    except ValueError:
        raise HwsimError(f"concat: shapes {[x.shape for x in xs]} do not concatenate along axis {axis}") from None
    flat = index_offset + np.arange(int(np.prod(shape_out)), dtype=np.int64).reshape(shape_out)
    parts, clipped, off = [], 0, 0
    for x, s, z in zip(xs, scales, zero_points):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(off, off + x.shape[axis])
        off += x.shape[axis]
        if float(np.float32(s)) == float(np.float32(y_scale)) and int(z) == int(y_zero_point):
            y = x.copy()
            c = int(np.count_nonzero((y < qmin) | (y > qmax)))
            y = np.clip(y, qmin, qmax)
        else:
            params = make_requant_params(1.0, float(s), float(y_scale), cfg)
            y, c = requantize(x - int(z), params, cfg, int(y_zero_point), qmin, qmax, channel_axis=axis, impl=impl,
                              index=flat[tuple(sl)])
        parts.append(y)
        clipped += c
    return np.concatenate(parts, axis=axis), clipped


@register
class ConcatSpec(OpSpec):
    name = "concat"
    attrs = {"axis": "axis1"}
    arity = None
    kind = "concat"
    compared = True

    def infer_shape(self, node, ins, p, fail, tag):
        rest = {s[1:] for s in ins}
        if len(rest) != 1:
            fail(f"{tag}: inputs {dict(zip(node.inputs, ins))} must agree on every axis but the channel axis")
        return (sum(s[0] for s in ins),) + ins[0][1:]

    def float_forward(self, node, graph, ins):
        return np.concatenate(ins, axis=int(node.attrs.get("axis", 1)))

    def compile(self, lay, node, cx):
        lay.requant = cx.requant()

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        g = qg.grids
        gy = g[lay.output]
        xs = [env[i] for i in lay.inputs]
        y, _ = concat(xs, [g[i].scale for i in lay.inputs], [g[i].zero_point for i in lay.inputs],
                      gy.scale, gy.zero_point, WIDE[0], WIDE[1], lay.requant,
                      index_offset=offset * sum(per_image(v.shape) for v in xs))
        return clamp_counted(y, lay, gy, narrow)

    def onnx_export(self, ex, lay):
        n = lay.name
        gy = ex.qg.grids[lay.output]
        for t in lay.inputs:
            g = ex.qg.grids[t]
            if (np.float32(g.scale), g.zero_point) != (np.float32(gy.scale), gy.zero_point):
                raise HwsimError(f"layer '{n}': concat input '{t}' is on another grid than the output; ONNX "
                                 "Runtime's QLinearConcat requantizes through a float lookup table "
                                 "(round(fl32(fl32(s_i (x - z_i)) / s_y)) + z_y), not hwsim's float32 requant")
        sy, zy = ex.grid(lay.output, n)
        ins = [sy, zy]
        for t in lay.inputs:
            ins += [t, *ex.grid(t, n)]
        out, extra = ex.out_name(lay)
        ex.node("QLinearConcat", ins, [out], n, ms=True, axis=int(lay.attrs.get("axis", 1)))
        if extra:
            ex.clamp(lay, out, *extra)
