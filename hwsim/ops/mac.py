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

import math

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
        """Integer accumulators (int64, or int32 where the fast plan proves |acc| < 2^31) and
        :class:`~hwsim.ops.AccStats` by the public op (``impl`` fast/reference)."""
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
        # issue 17 (torch3): a float-output conv whose output a squeeze-excite mul reads in float (mul_form "inductor")
        from hwsim.ops.mul import inductor_float_output

        inductor_float_output(lay, node, cx)

    # --- execute
    def gemm_shape(self, lay, x, plan):
        """(x as [N, C, H, W], geom, padding, output shape) of the int8 GEMM path (kernels.gemm_int8)."""
        raise NotImplementedError

    def planned(self, lay, gx):
        """(w, zw, b, plan): the fast kernels' plan (bounds, packed weights) for inputs on grid ``gx``, made once.

        The plan assumes inputs on the input grid [qmin, qmax] and is kept on the layer (attribute
        ``fast_plan``) together with the arrays it was made from: code that replaces ``w_q``, ``bias_q``,
        ``w_zero_point`` or ``accumulator`` gets a new plan (arrays are compared by identity, so weights
        must be replaced, not written in place). compile makes it (:meth:`prepare`); a layer changed
        afterwards is planned again on its next call.
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
        return cached[2]

    def epilogue(self, lay, gy, plan):
        """The fused requant + clamp + count behind the int8 GEMM or the exact depthwise kernel
        (core.fused_epilogue), made once per layer
        (attribute ``fast_epilogue``, renewed when the plan, requant or output grid/clamp change), or None."""
        src = plan.gemm if plan.gemm is not None else getattr(plan, "depthwise", None)
        if src is None or lay.requant_params is None or self._needs_blocks(lay):
            return None
        key = (lay.requant, int(gy.zero_point), int(gy.qmin), int(gy.qmax), tuple(lay.clamp), lay.activation is None)
        cached = getattr(lay, "fast_epilogue", None)
        if cached is None or cached[0] is not plan or cached[1] is not lay.requant_params or cached[2] != key:
            epi = core.fused_epilogue(lay.requant_params, lay.requant, gy.zero_point, *lay.clamp, gy.qmin, gy.qmax,
                                      lay.activation is None, int(src.add.size), src.acc_max)
            cached = (plan, lay.requant_params, key, epi)
            lay.fast_epilogue = cached
        return cached[3]

    def prepare(self, qg, lay) -> None:
        """Make the layer's plan and fused epilogue now (compile time), not on the first batch."""
        if lay.w_q is None:
            return
        plan = self.planned(lay, qg.grids[lay.inputs[0]])[3]
        self.epilogue(lay, qg.grids[lay.output], plan)

    def thread_safe(self, qg, lay) -> bool:
        """The fast path of this layer runs in several threads at once (execute's batch workers): the int8
        GEMM or the exact depthwise kernel with its fused epilogue (serial kernels, no pools inside a worker)."""
        from hwsim import mlas

        if mlas.wants(lay, "mac_form"):  # ORT's float path: parallel kernels, and a Gemm's rows are the batch
            return False
        plan = self.planned(lay, qg.grids[lay.inputs[0]])[3]
        gy = qg.grids[lay.output]
        return self.epilogue(lay, gy, plan) is not None or self.chunk_epilogue(lay, gy, plan) is not None

    def _fused_io(self, lay, x: np.ndarray, plan, narrow: bool):
        """(x as [N, C, H, W], geom, padding, output shape, the output buffer [N, M, L] in the clamp's narrow dtype
        or int64) of a fused route."""
        from hwsim import kernels

        x4, geom, pad, shape = self.gemm_shape(lay, x, plan)
        dt = kernels.narrow_dtype(*lay.clamp) if narrow else np.int64
        return x4, geom, pad, shape, np.empty((shape[0], shape[1], math.prod(shape[2:])), dt)

    def fused(self, lay, x: np.ndarray, gx, gy, narrow: bool):
        """(y, clipped) by the int8 GEMM with the fused epilogue (one pass from the int32 products to the
        clamped output in its narrow dtype), or None where it does not apply (the caller runs :meth:`fast`)."""
        from hwsim import kernels

        plan = self.planned(lay, gx)[3]
        epi = self.epilogue(lay, gy, plan)
        if epi is None or x.shape[0] == 0:
            return None
        x4, geom, pad, shape, out = self._fused_io(lay, x, plan, narrow)
        run = kernels.gemm_int8 if plan.gemm is not None else kernels.depthwise_run
        clipped = run(x4, plan, geom, pad, out, epi)
        return None if clipped is None else (out.reshape(shape), clipped)

    def chunk_epilogue(self, lay, gy, plan):
        """The fused epilogue behind an order-dependent accumulator's fused route: :func:`hwsim.accumulate.run_vnni_fused`
        (one group, at most 30 bits, the VNNI kernel: |acc| <= 2^(A-1)) or :func:`hwsim.kernels.depthwise_staged_run`
        (a depthwise conv of one chunk per channel), made once per layer (attribute ``fast_chunk_epilogue``), or None
        where neither applies (several groups, an exact layer, the CPU, the accumulator)."""
        from hwsim import kernels
        from hwsim import accumulate

        if plan.gemm is not None or lay.requant_params is None or self._needs_blocks(lay):
            return None
        dws = getattr(plan, "dw_stage", None)
        if dws is not None:  # a depthwise conv of one chunk per channel (kernels.depthwise_staged_run)
            p, channels = dws, len(dws.b0)
            acc_max = max((1 << (int(a) - 1)) if m != kernels.MODE_NONE else (1 << 31) - 1  # the plan's int32 check
                          for a, m in zip(dws.spec[:, 0], dws.spec[:, 1]))
        elif len(plan.groups) == 1 and not plan.groups[0].layer_exact and accumulate.vnni_ok(plan.groups[0]):
            p = plan.groups[0]
            # |acc| <= 2^(A-1) with an A stage; without one the driver proves it inside int32 per batch
            channels = int(p.w_kernel.shape[1])
            acc_max = 1 << (int(p.spec[0]) - 1) if int(p.spec[1]) != kernels.MODE_NONE else (1 << 31) - 1
        else:
            return None
        key = (lay.requant, int(gy.zero_point), int(gy.qmin), int(gy.qmax), tuple(lay.clamp), lay.activation is None)
        cached = getattr(lay, "fast_chunk_epilogue", None)
        if cached is None or cached[0] is not p or cached[1] is not lay.requant_params or cached[2] != key:
            epi = core.fused_epilogue(lay.requant_params, lay.requant, gy.zero_point, *lay.clamp, gy.qmin, gy.qmax,
                                      lay.activation is None, channels, acc_max)
            cached = (p, lay.requant_params, key, epi)
            lay.fast_chunk_epilogue = cached
        return cached[3]

    def fused_chunked(self, lay, x: np.ndarray, gx, gy, narrow: bool):
        """(y, clipped, acc events, partial events) by the VNNI chunk kernel or the one-chunk depthwise stage with the
        fused epilogue (int8 / uint8 codes in, the clamped output in its narrow dtype out, no int64 accumulators
        between), or None where neither applies."""
        from hwsim import accumulate, kernels

        plan = self.planned(lay, gx)[3]
        epi = self.chunk_epilogue(lay, gy, plan)
        if epi is None or x.shape[0] == 0:
            return None
        x4, geom, pad, shape, out = self._fused_io(lay, x, plan, narrow)
        if getattr(plan, "dw_stage", None) is not None:
            got = kernels.depthwise_staged_run(x4, plan, geom, pad, out, epi)
            return None if got is None else (out.reshape(shape), got[0], got[2], got[1])
        got = accumulate.run_vnni_fused(plan.groups[0], x4, int(plan.zx), geom, pad, epi, out)
        return None if got is None else (out.reshape(shape), got[0], got[2], got[1])

    def fast(self, lay, x: np.ndarray, gx) -> tuple[np.ndarray, int, int]:
        """The layer's accumulators by the fast kernels with its plan (:meth:`planned`).

        Returns (acc, acc events, partial events): acc int64, or int32 where the plan proves |acc| < 2^31.
        """
        w, zw, b, plan = self.planned(lay, gx)
        acc, pe, ae = self.accumulate_planned(lay, x, w, b, zw, gx, plan)
        return acc, int(ae), int(pe)

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        from hwsim import mlas

        g = qg.grids
        x, gx, gy = env[lay.inputs[0]], g[lay.inputs[0]], g[lay.output]
        if mlas.wants(lay, "mac_form"):  # requant.mac_form = "float32_mlas": ORT's QDQ float path (one form)
            return clamp_counted(mlas.mac(lay, x, gx, gy), lay, gy, narrow)
        if impl == "fast":
            res = self.fused(lay, x, gx, gy, narrow)
            if res is not None:
                return res  # no event possible: the int8 GEMM runs only where the plan proves it
            res = self.fused_chunked(lay, x, gx, gy, narrow)
            if res is not None:
                st.acc_events += res[2]
                st.partial_events += res[3]
                return res[0], res[1]
            from hwsim import kernels

            with kernels.exclusive():  # a batch worker: the general path's parallel kernels, one thread at a time
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
    def _needs_blocks(lay) -> bool:
        """:meth:`_blocks` changes this layer's requantized values (LiteRT's float64 FULLY_CONNECTED or its
        per-channel-block ties): the fused epilogue does not model them, the general path runs."""
        r = lay.profile.requant if lay.profile is not None else None
        return (lay.requant is not None and lay.requant.mode == "fixed" and r is not None
                and (getattr(r, "fixed_form", "multiplier") == "float64" or getattr(r, "block_channels", None) is not None))

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


# --- issue 17 (torch4): a float-output last layer (begin) ---
def float_output(qg, env, impl: str):
    """The float32 graph output of a model whose last conv / linear output is never quantized (graph metadata
    "float_output": a pt2e classifier's logits, frontends/pytorch/importers.py), or None for an ordinary model.
    Recomputed from the layer's accumulators (hwsim.ops.add.mac_accumulators) on its input in ``env``: under a
    profile with oneDNN's float requant (int8-pytorch-inductor: qlinear_pointwise with a float32 output, output
    scale 1, no post-op) oneDNN's float value, hwsim.ops.add.onednn_float (its combined or sequential scale form,
    bias.form); under every other profile the dequantized accumulators fl32((acc + b[c]) * s_x * s_w[c]) in float64
    (acc holds the int32 bias where the profile quantizes it; b is fbgemm's float bias term, fl32(bias / fl32(s_x *
    s_w)), under bias.form "float32", else 0)."""
    t = qg.model.metadata.get("float_output")
    if t is None or t != qg.output_name:
        return None
    from hwsim.ops.add import mac_accumulators, onednn_float

    lay = next(lay for lay in qg.layers if lay.output == t)
    acc = np.asarray(mac_accumulators(qg, lay.name, env, impl))
    p = lay.requant_params
    if p is not None and getattr(p, "mode", None) == "float32" and getattr(p, "pre_scale", None) is not None:
        v = onednn_float(acc, p, f"layer {lay.name!r}: float output")
    else:
        shp = (1, -1) + (1,) * (acc.ndim - 2)
        s = (float(qg.grids[lay.inputs[0]].scale) * np.asarray(lay.w_scale, np.float64)).reshape(shp)
        v = acc.astype(np.float64)
        bt = getattr(p, "bias_term", None)
        if bt is not None:  # fbgemm's float bias, in accumulator units (hwsim.ops.core.RequantParams)
            v = v + np.asarray(bt, np.float64).reshape(shp)
        v = (v * s).astype(np.float32)
    return v.reshape(len(acc), -1)
# --- issue 17 (torch4): a float-output last layer (end) ---
