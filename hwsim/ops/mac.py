"""What conv2d and linear share: the multiply-accumulate layer (integer weights, accumulator, requant).

:class:`MacSpec` is the base of :mod:`hwsim.ops.conv2d` and :mod:`hwsim.ops.linear`: compile quantizes
the weights and the int32 bias and chooses the requant parameters (:func:`hwsim.compile.quantize_mac`),
execute accumulates under the profile's accumulator model (counting partial-sum and accumulator
overflow events) and requantizes; golden vectors carry the weights, bias and accumulator. Each
subclass supplies the accumulation itself (``accumulate``, ``plan``, ``accumulate_planned``) and
its overflow certificate.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hwsim import fixedpoint as fp
from hwsim.ops import core
from hwsim.ops.registry import WIDE, OpSpec, clamp_counted, stochastic_index


class MacSpec(OpSpec):
    """Base spec of the MAC layers (conv2d, linear)."""

    params = (("weight",), ("bias",))
    mac = True
    fuses_activation = True
    compared = True

    # --- what a subclass supplies
    def accumulate(self, lay, x, gx, impl: str):
        """int64 accumulators and :class:`~hwsim.ops.AccStats` by the public op (``impl`` fast/reference)."""
        raise NotImplementedError

    def plan(self, lay, w, b, zw, gx):
        """The fast kernels' plan for this layer (bounds, packed weights), made once per weights/grid."""
        raise NotImplementedError

    def accumulate_planned(self, lay, x, w, b, zw, gx, plan):
        """(acc, partial events, acc events) by the fast kernels with ``plan``."""
        raise NotImplementedError

    def float_mac(self, lay, x, w):
        """float64 output of the layer with float weights ``w`` and no bias (bias correction, WP eq. 27)."""
        raise NotImplementedError

    def expected_error(self, lay, eps, ex):
        """E[eps x] per output channel for weight error ``eps`` and per-input-channel means ``ex``
        (analytic bias correction, WP eq. 28; padding ignored)."""
        raise NotImplementedError

    def certificate(self, lay, w_q, lo: int, hi: int, x_zero_point: int):
        """The static overflow certificate of the layer (hwsim.certify) for inputs in [lo, hi]."""
        raise NotImplementedError

    # --- compile
    def compile(self, lay, node, cx) -> None:
        from hwsim.compile import quantize_mac

        quantize_mac(lay, node, cx)

    # --- execute
    def fast(self, lay, x: np.ndarray, gx) -> tuple[np.ndarray, int, int]:
        """The layer by the fast kernels with its plan (bounds, packed weights) made once.

        The plan assumes inputs on the input grid [qmin, qmax] and is kept on the layer (attribute
        ``fast_plan``) together with the arrays it was made from: code that replaces ``w_q``, ``bias_q``,
        ``w_zero_point`` or ``accumulator`` gets a new plan (arrays are compared by identity, so weights
        must be replaced, not written in place). Returns (acc int64, acc events, partial events).
        """
        arrays = (lay.w_q, lay.bias_q, lay.w_zero_point)
        key = (lay.accumulator, int(gx.qmin), int(gx.qmax), int(gx.zero_point))
        cached = getattr(lay, "fast_plan", None)
        if cached is None or cached[1] != key or any(u is not v for u, v in zip(cached[0], arrays)):
            w = core._int_array(lay.w_q, "w_q")
            zw = core._w_zero_point(lay.w_zero_point, w.shape[0])
            b = core._bias(lay.bias_q, w.shape[0])
            cached = (arrays, key, (w, zw, b, self.plan(lay, w, b, zw, gx)))
            lay.fast_plan = cached
        w, zw, b, plan = cached[2]
        acc, pe, ae = self.accumulate_planned(lay, x, w, b, zw, gx, plan)
        return acc, int(ae), int(pe)

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        g = qg.grids
        x, gx, gy = env[lay.inputs[0]], g[lay.inputs[0]], g[lay.output]
        if impl == "fast":
            acc, ae, pe = self.fast(lay, x, gx)
            st.acc_events += ae
            st.partial_events += pe
            # ops.requantize without its clamp to WIDE (a no-op count and copy): the clamp is counted below
            y = core._requantize_fast(acc, lay.requant_params, lay.requant, gy.zero_point, 1,
                                      stochastic_index(lay, acc.shape, offset))
            return clamp_counted(self._blocks(lay, acc, y, gy, impl), lay, gy, narrow)
        acc, ast = self.accumulate(lay, x, gx, impl)
        st.acc_events += int(ast.acc_events)
        st.partial_events += int(ast.partial_events)
        y, _ = core.requantize(acc, lay.requant_params, lay.requant, gy.zero_point, WIDE[0], WIDE[1], channel_axis=1,
                               index=stochastic_index(lay, acc.shape, offset))
        return clamp_counted(self._blocks(lay, acc, y, gy, impl), lay, gy, narrow)

    @staticmethod
    def _blocks(lay, acc, y, gy, impl):
        """Profile key requant.block_channels = V (fixed mode): output channels [0, C - C mod V) requantized with
        requant.block_ties instead (LiteRT's optimized DEPTHWISE_CONV_2D: NEON blocks of 8 channels, the rest
        scalar gemmlowp; docs/semantics.md 11)."""
        r = lay.profile.requant if lay.profile is not None else None
        if lay.requant.mode == "fixed" and getattr(r, "fixed_form", "multiplier") == "float64":
            # LiteRT's reference FULLY_CONNECTED (reference_integer_ops::FullyConnected / ...PerChannel, given the
            # float scales): round(acc * M) in double, std::round = half away; M from the float32 scales in double
            m = np.asarray(lay.requant_params.real, np.float64).reshape((1, -1) + (1,) * (acc.ndim - 2))
            return fp.round_float(acc * m, "half_away") + gy.zero_point
        v = getattr(r, "block_channels", None)
        if v is None or lay.requant.mode != "fixed":
            return y
        body = acc.shape[1] - acc.shape[1] % v
        if body == 0:
            return y
        cfg = dataclasses.replace(lay.requant, fixed_ties=tuple(r.block_ties))
        yb, _ = core.requantize(acc[:, :body], _channels(lay.requant_params, body), cfg, gy.zero_point,
                                WIDE[0], WIDE[1], channel_axis=1, impl=impl)
        y = np.array(y, copy=True)
        y[:, :body] = yb
        return y

    # --- golden vectors
    def golden_fields(self, lay, write_int) -> dict:
        return {"weight": write_int("weight", lay.w_q),
                "weight_zero_point": np.asarray(lay.w_zero_point).ravel().astype(int).tolist(),
                "bias": write_int("bias", lay.bias_q),
                "accumulator": dataclasses.asdict(lay.accumulator)}


def _channels(params, n: int):
    """The requant params of the first ``n`` output channels (per-tensor params stay as they are)."""
    if params.channels == 1:
        return params
    cut = {f: (None if getattr(params, f) is None else np.asarray(getattr(params, f))[:n])
           for f in ("real", "multiplier", "q", "shift", "bias_term", "pre_scale")}
    return dataclasses.replace(params, **cut)
