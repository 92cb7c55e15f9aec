"""Quantized element-wise multiply with numpy broadcasting (docs/semantics.md, "mul").

Squeeze-excitation multiplies an [N, C, H, W] tensor by an [N, C, 1, 1] gate; same-shape products work too.

The integer product ``p = (a - z_a) * (b - z_b)`` (exact in int64) is an accumulator that is requantized
with M = s_a * s_b / s_y in the profile's mode (:class:`hwsim.ops.Requant`, :func:`hwsim.ops.requantize`):

- float32: ``y = round(fl32(fl32(p) * M)) + z_y`` — PyTorch's ``quantized::mul`` (QuantizedOpKernels.cpp
  qmul_kernel, requantize_from_int): M = fl32(fl32(s_a * s_b) * fl32(1 / s_y)) (``multiplier="inverse"``,
  the default) or M as :func:`hwsim.ops.make_requant_params` forms it from ``cfg.multiplier_order``
  (``multiplier="requant"``);
- fixed: TFLite int8 MUL (reference_integer_ops::MulElementwise / BroadcastMul4DSlow):
  ``MultiplyByQuantizedMultiplier(p, q, shift) + z_y`` with QuantizeMultiplier(s_a * s_b / s_y) and the
  profile's fixed rounding variant and ties (``cfg.fixed_product`` = "float32" rounds s_a*s_b to float32
  first). TFLite's optimized kernel (BUILTIN resolver) gives the same integers except where the unclamped
  result |MBQM(p) + z_y| >= 2^15: its vector code narrows through int16 and the clamp then flips sign (not
  modelled: such outputs are saturated in every other engine);
- pow2: ``y = shift_right_round(p, e_y - e_a - e_b) + z_y``.

ONNX Runtime's ``com.microsoft.QLinearMul`` (MLAS qlmul.cpp, MlasQLinearMulKernel, SSE2 path on x86-64) is
the float32 mode with ``multiplier="requant"``, ``cfg.multiplier_order = "sequential"`` (R = fl32(fl32(s_a *
s_b) / s_y)) and ``cfg.zero_point = "before"``: ``y = round_half_even(fl32(fl32(fl32(p) * R) + z_y))``.

``impl="reference"``: one Python-int product per element and :func:`hwsim.reference.requantize` (the spec);
``impl="fast"``: a fused numba kernel over the broadcast views (float32 without stochastic rounding, 31-bit
fixed), else the broadcast numpy product and :func:`hwsim.ops.requantize`'s fast path.
The coordinator imports this module after ``hwsim.ops`` is initialised (it uses ops.Requant/requantize).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim import fixedpoint as fp
from hwsim import kernels, ops
from hwsim.errors import HwsimError

MUL_MULTIPLIERS = ("inverse", "requant")
f32 = np.float32


def _int_array(a, name: str) -> np.ndarray:
    """The integer array as given (an int8 tensor is not widened: the kernels widen per element)."""
    x = np.asarray(a)
    if not np.issubdtype(x.dtype, np.integer) or x.dtype == np.uint64:
        raise HwsimError(f"mul: {name} dtype {x.dtype}: allowed a signed or unsigned integer array of <= 32 bits")
    return x


@njit(cache=True, inline="always")
def _mul_rows(a, b, za, zb, fixed, m, zf, z_before, mode, q, sh, single, tie0, tie1, zy, qmin, qmax, out,
              clipped, t):
    """Row t = (i, j) of out = clamp(requant((a - za) * (b - zb)) + zy) over 4-D broadcast views a, b (any strides).

    float32 (``fixed`` False): v = fl32(fl32(p) * m), v = fl32(v + zf) if z_before, round in ROUND_CODE ``mode``
    (kernels._round_f64), + zy unless z_before; fixed: kernels._mbqm(p, q, sh, ...) + zy. Same arithmetic as
    ops.requantize's kernels; ``clipped[t]`` counts the clamped outputs of row t.
    """
    N0, N1, N2, N3 = out.shape
    z_after = 0 if z_before else zy
    i = t // N1
    j = t - i * N1
    c = 0
    for k in range(N2):
        for l in range(N3):
            p = (np.int64(a[i, j, k, l]) - za) * (np.int64(b[i, j, k, l]) - zb)
            if fixed:
                y = kernels._mbqm(p, q, sh, single, tie0, tie1) + zy
            else:
                v = np.float32(np.float32(p) * m)
                if z_before:
                    v = np.float32(v + zf)
                y = kernels._round_f64(np.float64(v), mode) + z_after
            if y < qmin:
                y = qmin
                c += 1
            elif y > qmax:
                y = qmax
                c += 1
            out[i, j, k, l] = y
    clipped[t] = c


# twice: parallel over rows (i, j), and serial for execute's batch workers (kernels.serial_mode); two functions, as
# numba's cache keys a compiled function by its Python function and signature, not by its parallel flag
@njit(parallel=True, cache=True)
def _mul_par(a, b, za, zb, fixed, m, zf, z_before, mode, q, sh, single, tie0, tie1, zy, qmin, qmax, out, clipped):
    for t in prange(out.shape[0] * out.shape[1]):
        _mul_rows(a, b, za, zb, fixed, m, zf, z_before, mode, q, sh, single, tie0, tie1, zy, qmin, qmax, out, clipped,
                  t)


@njit(cache=True, nogil=True)
def _mul_ser(a, b, za, zb, fixed, m, zf, z_before, mode, q, sh, single, tie0, tie1, zy, qmin, qmax, out, clipped):
    for t in range(out.shape[0] * out.shape[1]):
        _mul_rows(a, b, za, zb, fixed, m, zf, z_before, mode, q, sh, single, tie0, tie1, zy, qmin, qmax, out, clipped,
                  t)


def _mul_fast(a, b, shape, za, zb, zy, qmin, qmax, params, cfg):
    """The fused numba kernel for float32 (not stochastic) and 31-bit fixed modes on <= 4-D shapes; None outside
    its domain (pow2, stochastic, Q15, shifts beyond +-31, single rounding with |p| > 2^31)."""
    if len(shape) > 4 or not all(shape) or cfg.mode == "pow2" or (cfg.mode == "float32"
                                                                    and cfg.rounding == "stochastic"):
        return None
    fixed = cfg.mode == "fixed"
    q = sh = 0
    if fixed:
        if cfg.multiplier_bits != 31:
            return None
        q, sh = int(params.q[0]), int(params.shift[0])
        if not (0 <= q <= fp.INT32_MAX and -31 <= sh <= 31):
            return None
        pmax = (max(abs(int(a.min()) - za), abs(int(a.max()) - za))
                * max(abs(int(b.min()) - zb), abs(int(b.max()) - zb)))
        if cfg.fixed_rounding == "single" and pmax > (1 << 31):
            return None
    shape4 = (1,) * (4 - len(shape)) + tuple(shape)
    a4 = np.broadcast_to(a.reshape((1,) * (len(shape) - a.ndim) + a.shape), shape).reshape(shape4)
    b4 = np.broadcast_to(b.reshape((1,) * (len(shape) - b.ndim) + b.shape), shape).reshape(shape4)
    out = np.empty(shape4, np.int64)
    clipped = np.zeros(shape4[0] * shape4[1], np.int64)
    m = np.float32(params.multiplier[0]) if not fixed else np.float32(0)
    kern = _mul_ser if kernels.serial() else _mul_par  # serial in execute's batch workers
    kern(a4, b4, np.int64(za), np.int64(zb), fixed, m, np.float32(zy), cfg.zero_point == "before",
         kernels.ROUND_CODE.get(cfg.rounding, 0), np.int64(q), np.int64(sh), cfg.fixed_rounding == "single",
         kernels.TIE_CODE[cfg.fixed_ties[0]], kernels.TIE_CODE[cfg.fixed_ties[1]], np.int64(zy),
         np.int64(qmin), np.int64(qmax), out, clipped)
    return out.reshape(shape), int(clipped.sum())


def mul_requant_params(a_scale, b_scale, y_scale, cfg: ops.Requant, multiplier: str = "inverse") -> ops.RequantParams:
    """Requant constants of M = s_a * s_b / s_y in ``cfg.mode``.

    float32 with ``multiplier="inverse"``: M = fl32(fl32(s_a * s_b) * fl32(1 / s_y)) (PyTorch qmul_kernel);
    every other case: :func:`hwsim.ops.make_requant_params` (s_x = s_a, s_w = s_b).
    """
    fp.check_mode(multiplier, MUL_MULTIPLIERS, "mul multiplier")
    params = ops.make_requant_params(a_scale, b_scale, y_scale, cfg)
    if cfg.mode == "float32" and multiplier == "inverse":
        m = f32(f32(f32(a_scale) * f32(b_scale)) * f32(f32(1.0) / f32(y_scale)))
        return ops.RequantParams("float32", params.real, multiplier=np.array([m], f32))
    return params


def mul(a_q, b_q, *, a_scale, a_zero_point, b_scale, b_zero_point, y_scale, y_zero_point, qmin, qmax,
        cfg: ops.Requant = ops.Requant(), multiplier: str = "inverse",
        impl: str = "fast", index_offset: int = 0) -> tuple[np.ndarray, int]:
    """Quantized a * b (numpy broadcasting); returns (y int64 of the broadcast shape, number of clamped outputs).

    ``multiplier``: "inverse" (PyTorch) or "requant" (ONNX Runtime, TFLite; see the module docstring).
    Stochastic rounding draws with index ``index_offset`` + flat C-order output index.
    """
    fp.check_mode(impl, ("fast", "reference"), "impl")
    a, b = _int_array(a_q, "a_q"), _int_array(b_q, "b_q")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise HwsimError(f"mul: shapes {a.shape} and {b.shape} do not broadcast") from None
    za, zb, zy, qmin, qmax = int(a_zero_point), int(b_zero_point), int(y_zero_point), int(qmin), int(qmax)
    if qmin > qmax:
        raise HwsimError(f"mul: qmin {qmin} > qmax {qmax}")
    for name, x, z in (("a_q", a, za), ("b_q", b, zb)):
        if x.size and max(abs(int(x.min()) - z), abs(int(x.max()) - z)) >= (1 << 24):
            raise HwsimError(f"mul: |{name} - zero point| >= 2^24: allowed inputs of at most 24 bits")
    params = mul_requant_params(a_scale, b_scale, y_scale, cfg, multiplier)
    if impl == "fast":
        r = _mul_fast(a, b, shape, za, zb, zy, qmin, qmax, params, cfg)
        if r is not None:
            return r
    a, b = a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)
    if impl == "reference":
        p = np.empty(shape, np.int64)
        ab, bb = np.broadcast_arrays(a, b)
        for i in np.ndindex(shape):  # the spec: one exact integer product per output element
            p[i] = (int(ab[i]) - za) * (int(bb[i]) - zb)
    else:
        p = (a - za) * (b - zb)  # numpy broadcasting, exact in int64 (|p| < 2^48)
    index = None
    if cfg.rounding == "stochastic" and index_offset:
        index = index_offset + fp._flat_index(shape)
    with kernels.exclusive():  # its parallel kernels: one of execute's batch workers at a time
        return ops.requantize(p, params, cfg, zy, qmin, qmax, channel_axis=0, impl=impl, index=index)


# ----------------------------------------------------------------------------- registry entry
import dataclasses  # noqa: E402

from hwsim.ops.registry import WIDE, OpSpec, clamp_counted, per_image, register  # noqa: E402


@register
class MulSpec(OpSpec):
    """mul: two tensors, the second broadcast over H, W (squeeze-excitation: N,C,H,W x N,C,1,1) or the same shape.

    requant.mul_form: "requant" (M as the profile forms requant multipliers), "torch" (``multiplier="inverse"``),
    "onnxruntime" (``multiplier="requant"``, sequential multiplier, zero point before rounding).
    """

    name = "mul"
    arity = 2
    kind = "mul"
    compared = True

    def infer_shape(self, node, ins, p, fail, tag):
        try:
            out = np.broadcast_shapes(ins[0], ins[1])
        except ValueError:
            out = None
        if out is None or len(ins[0]) != len(ins[1]) or out not in (ins[0], ins[1]):
            fail(f"{tag}: inputs {node.inputs[0]!r} {ins[0]} and {node.inputs[1]!r} {ins[1]} must have the same shape "
                 "or one must broadcast to the other (e.g. (C, H, W) and (C, 1, 1))")
        return tuple(out)

    def float_forward(self, node, graph, ins):
        return ins[0] * ins[1]

    def compile(self, lay, node, cx):
        lay.form = cx.prof.requant.mul_form
        lay.requant = cx.requant()
        lay.se = se_operands(node, cx) if not cx.weight_only else None
        if lay.form == "onnxruntime":  # MLAS QLinearMul: R = fl32(fl32(s_a*s_b) / s_y), fl32(p*R + z_y) rounded
            lay.requant = dataclasses.replace(lay.requant, multiplier_order="sequential", zero_point="before")

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        g = qg.grids
        ga, gb, gy = g[lay.inputs[0]], g[lay.inputs[1]], g[lay.output]
        if getattr(lay, "se", None) is not None:
            return clamp_counted(self._execute_se(qg, lay, env, impl), lay, gy, narrow)
        xa, xb = env[lay.inputs[0]], env[lay.inputs[1]]
        if lay.form == "float32":  # requant.mul_form: ONNX Runtime's QDQ float path (hwsim.mlas)
            from hwsim import mlas

            y = mlas.eltwise("mul", xa, xb, ga.scale, ga.zero_point, gb.scale, gb.zero_point, gy.scale, gy.zero_point)
            return clamp_counted(y, lay, gy, narrow)
        y, _ = mul(xa, xb, a_scale=ga.scale, a_zero_point=ga.zero_point, b_scale=gb.scale, b_zero_point=gb.zero_point,
                   y_scale=gy.scale, y_zero_point=gy.zero_point, qmin=WIDE[0], qmax=WIDE[1], cfg=lay.requant,
                   multiplier="inverse" if lay.form == "torch" else "requant", impl=impl,
                   index_offset=offset * per_image(np.broadcast_shapes(xa.shape, xb.shape)))
        return clamp_counted(y, lay, gy, narrow)

    def thread_safe(self, qg, lay) -> bool:
        """Runs in several threads at once (execute's batch workers): the fused kernel and ORT's float path have
        serial twins, :func:`mul`'s fallback takes the lock (kernels.exclusive); not inductor's squeeze-excite mul."""
        return getattr(lay, "se", None) is None

    @staticmethod
    def _execute_se(qg, lay, env, impl) -> np.ndarray:
        """mul_form = "inductor" on a squeeze-excite mul (``lay.se``, :func:`se_operands`): inductor's
        cpp_fused_hardsigmoid_mul_quantize_per_tensor on the two float sections, each recomputed from its MAC
        layer's accumulators (hwsim.ops.add.onednn_float): x = the conv's float output (its fused relu / relu6
        applied) or the fused hard-swish's float value, g = the SE conv's float output,
        y = round(fl32(fl32(x * fl32(min(max(fl32(g + 3), 0), 6) / 6)) * fl32(1/s_y))) + z_y (unclamped)."""
        from hwsim.ops.activation import cpp_hardsigmoid, layer_rounding
        from hwsim.ops.add import cpp_quantize, mac_accumulators, onednn_float

        i, (kind, name), gate = lay.se
        what = f"layer {lay.name!r}: mul_form = 'inductor'"
        if kind == "hardswish":
            x = ops.get("hardswish").fused_value(qg, qg.layer(name), env, impl)
        else:
            mac = qg.layer(name)
            x = onednn_float(mac_accumulators(qg, name, env, impl), mac.requant_params, what)
            if mac.activation in ("relu", "relu6"):
                x = np.maximum(x, np.float32(0))
                if mac.activation == "relu6":
                    x = np.minimum(x, np.float32(6))
        g = onednn_float(mac_accumulators(qg, gate, env, impl), qg.layer(gate).requant_params, what)
        with np.errstate(over="ignore"):
            y = (x * cpp_hardsigmoid(g)).astype(np.float32)
        gy = qg.grids[lay.output]
        return cpp_quantize(y, gy.scale, gy.zero_point, layer_rounding(lay.profile.requant))

    def golden_fields(self, lay, write_int):
        se = getattr(lay, "se", None)
        if se is not None:
            return {"mul_form": lay.form, "inductor_se": {"x": se[1][1], "x_kind": se[1][0], "gate_mac": se[2],
                                                          "x_operand": int(se[0])}}
        # the constants follow from the grids and the requant config in the manifest (mul_requant_params)
        return {"mul_form": lay.form, "multiplier": "inverse" if lay.form == "torch" else "requant"}

    def onnx_export(self, ex, lay):
        n, r = lay.name, lay.requant
        if lay.form != "onnxruntime" or r.mode != "float32" or r.rounding != "half_even":
            raise HwsimError(f"layer '{n}': mul with mul_form {lay.form!r}, requant mode {r.mode!r}, rounding "
                             f"{r.rounding!r} (profile '{lay.profile.name}') cannot be expressed as ONNX Runtime's "
                             "QLinearMul: allowed mul_form 'onnxruntime', mode 'float32', rounding 'half_even' "
                             "(profile int8-onnxruntime)")
        sa, za = ex.grid(lay.inputs[0], n)
        sb, zb = ex.grid(lay.inputs[1], n)
        sy, zy = ex.grid(lay.output, n)
        ex.node("QLinearMul", [lay.inputs[0], sa, za, lay.inputs[1], sb, zb, sy, zy], [lay.output], n, ms=True)


# ----------------------------------------------------------------------------- torch.compile's squeeze-excite (issue 17)
def _producer(t: str, cx):
    return next((n for n in cx.folded.nodes if t in n.outputs), None)


def _consumers(t: str, cx) -> list:
    return [n for n in cx.folded.nodes if t in n.inputs]


def sole_mac(t: str, cx):
    """The conv2d / linear node (no fused activation) producing ``t`` when ``t`` has one consumer, else None: a MAC
    output the engine never quantizes (its consumer is fused with it, hwsim recomputes its float value)."""
    n = _producer(t, cx)
    if n is None or n.op not in ("conv2d", "linear") or n.attrs.get("activation") or len(_consumers(t, cx)) != 1:
        return None
    return n


def se_operands(node, cx):
    """requant.mul_form = "inductor": a mul torch.compile runs as one C++ kernel on two float sections
    (cpp_fused_hardsigmoid_mul_quantize_per_tensor; pt2e MobileNetV3's squeeze-excite, X86InductorQuantizer leaves
    both operands unquantized): (i, (kind, layer), gate MAC layer) with operand i the x section, ("mac", a conv2d /
    linear layer with no activation, relu or relu6) or ("hardswish", a hard-swish layer fused with its conv under
    activation_form = "inductor"), and operand 1 - i a hardsigmoid (PyTorch's alpha, beta) of a conv2d / linear
    output read by nothing else. None where the mul is not that (it then runs as mul_form "torch")."""
    if cx.prof.requant.mul_form != "inductor" or node.op != "mul":
        return None
    from hwsim.ops.activation import HARDSIGMOID_TORCH

    for i in (0, 1):
        hs = _producer(node.inputs[1 - i], cx)
        if hs is None or hs.op != "hardsigmoid" or len(_consumers(node.inputs[1 - i], cx)) != 1 or (
                float(hs.attrs.get("alpha", HARDSIGMOID_TORCH[0])), float(hs.attrs.get("beta", HARDSIGMOID_TORCH[1]))
        ) != HARDSIGMOID_TORCH:
            continue
        gate = sole_mac(hs.inputs[0], cx)
        xp = _producer(node.inputs[i], cx)
        if gate is None or xp is None:
            continue
        if xp.op in ("conv2d", "linear") and xp.attrs.get("activation") in (None, "relu", "relu6"):
            return i, ("mac", xp.name), gate.name
        if (xp.op == "hardswish" and cx.prof.requant.activation_form == "inductor"
                and sole_mac(xp.inputs[0], cx) is not None and sole_mac(xp.inputs[0], cx).op == "conv2d"):
            return i, ("hardswish", xp.name), gate.name
    return None


def float_read(t: str, cx) -> bool:
    """Tensor ``t`` is the x section of a squeeze-excite mul torch.compile runs in float (:func:`se_operands`): its
    producer then has a float32 output that a C++ kernel quantizes (zero point after rounding)."""
    for m in _consumers(t, cx):
        se = se_operands(m, cx) if m.op == "mul" else None
        if se is not None and m.inputs[se[0]] == t:
            return True
    return False


def inductor_float_output(lay, node, cx) -> None:
    """A MAC layer whose (relu / relu6) output a squeeze-excite mul reads in float (:func:`float_read`, mul_form
    "inductor"): inductor asks oneDNN for a float32 output (post-op relu applied) and quantizes it in a generated
    C++ kernel, round(fl32(v * fl32(1/s_y))) + z_y (hwsim.ops.add.cpp_quantize): the layer's own integers in that
    form (requant.zero_point "after", multiplier the float32 literal of 1/s_y in double). Called by the MAC
    layer's compile; a no-op elsewhere."""
    p = getattr(lay, "requant_params", None)
    if (cx.weight_only or p is None or p.mode != "float32" or p.pre_scale is None
            or not float_read(lay.output, cx)):
        return
    gy = cx.grids[lay.output]
    c = np.float32(1.0 / np.float64(np.float32(gy.scale)))
    lay.requant = dataclasses.replace(lay.requant, zero_point="after")
    lay.requant_params = dataclasses.replace(p, multiplier=np.full(np.asarray(p.multiplier).shape, c, np.float32))
