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
``impl="fast"``: the broadcast numpy product and the numba requantize kernels.
The coordinator imports this module after ``hwsim.ops`` is initialised (it uses ops.Requant/requantize).
"""

from __future__ import annotations

import numpy as np

from hwsim import fixedpoint as fp
from hwsim import ops
from hwsim.errors import HwsimError

MUL_MULTIPLIERS = ("inverse", "requant")
f32 = np.float32


def _int_array(a, name: str) -> np.ndarray:
    x = np.asarray(a)
    if not np.issubdtype(x.dtype, np.integer):
        raise HwsimError(f"mul: {name} dtype {x.dtype}: allowed an integer array")
    return x.astype(np.int64, copy=False)


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
    return ops.requantize(p, params, cfg, zy, qmin, qmax, channel_axis=0, impl=impl, index=index)
