"""Pools: maxpool2d, avgpool2d and global_avgpool (NCHW, floor mode).

The public ops :func:`max_pool2d`, :func:`avg_pool2d` (count_include_pad: padding holds the zero
point), :func:`global_avg_pool` and ONNX Runtime's float32 pool forms, and their registry entries
(graph schema and shapes, float reference, execute, golden fields, compare cause, ONNX export).
Pools keep their input's grid: max-pool moves values, an average pool is a rounded mean of grid values.
"""

from __future__ import annotations

import numpy as np

from hwsim import fixedpoint as fp
from hwsim import reference as ref
from hwsim.errors import HwsimError
from hwsim.ops.core import _check_impl, _int_array, _padding, _pair, conv_output_size
from hwsim.ops.registry import OpSpec, clamp_counted, need_chw, pair, register, window_out


def _check_nchw(x, name="x_q") -> np.ndarray:
    x = _int_array(x, name)
    if x.ndim != 4:
        raise HwsimError(f"{name}: shape {x.shape}: allowed [N, C, H, W]")
    return x


def _pool_geometry(x, kernel, stride, padding):
    kernel, stride, pad = _pair(kernel, "kernel"), _pair(stride, "stride"), _padding(padding)
    Ho = conv_output_size(x.shape[2], kernel[0], stride[0], pad[0], pad[1])
    Wo = conv_output_size(x.shape[3], kernel[1], stride[1], pad[2], pad[3])
    if Ho < 1 or Wo < 1:
        raise HwsimError(f"pool: kernel {kernel} larger than the padded input {x.shape[2:]}")
    return kernel, stride, pad, Ho, Wo


def _windows(x, kernel, stride, pad, fill):
    """View [N, C, Ho, Wo, kh, kw] of the padded input (padding holds ``fill``)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(xp, kernel, axis=(2, 3))
    return win[:, :, ::stride[0], ::stride[1]]


def max_pool2d(x_q, kernel, stride, padding=(0, 0, 0, 0), pad_value: int = 0, impl: str = "fast") -> np.ndarray:
    """Max over each window; padding pixels hold ``pad_value`` (use the grid's qmin)."""
    _check_impl(impl)
    x = _check_nchw(x_q)
    kernel, stride, pad, Ho, Wo = _pool_geometry(x, kernel, stride, padding)
    if impl == "reference":
        return ref.max_pool2d(x, kernel, stride, pad, int(pad_value))
    from hwsim import kernels

    out = np.empty((x.shape[0], x.shape[1], Ho, Wo), np.int64)
    kernels.max_pool(x, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[2], int(pad_value), out)
    return out


POOL_FORMS = ("exact", "float32_multiplier", "float32_dequantize", "inductor")


def onnxruntime_pool_form(op: str, kernel=None, padding=(0, 0, 0, 0), input_hw=None) -> str:
    """The pool ``form`` that is ONNX Runtime's arithmetic (MLAS, x86-64) for an average pool.

    QLinearGlobalAveragePool: "float32_multiplier". QLinearAveragePool: "float32_dequantize", except a
    window covering the whole unpadded plane, which ORT hands to the global kernel ("float32_multiplier").
    """
    if op == "global_avgpool":
        return "float32_multiplier"
    whole = _pair(kernel, "kernel") == tuple(int(v) for v in input_hw) and not any(_padding(padding))
    return "float32_multiplier" if whole else "float32_dequantize"


def pool_multiplier(scale: float, count: int, out_scale: float | None = None) -> np.float32:
    """M = fl32(s / fl32(s_y * fl32(count))), s = fl32(scale): the "float32_multiplier" pool form's multiplier
    (MLAS QLinearGlobalAveragePool, CheckQLinearGlobalAveragePoolScaleAndSize: ScaleInput / (ScaleOutput *
    ImageSize)); s_y = ``out_scale``, the input's scale unless an imported model gives the output its own."""
    s = np.float32(scale)
    sy = s if out_scale is None else np.float32(out_scale)
    return np.float32(s / np.float32(sy * np.float32(count)))


def _pool_scale(form: str, scale) -> np.float32 | None:
    fp.check_mode(form, POOL_FORMS, "pool form")
    if form == "exact":
        return None
    s = np.float32(scale) if isinstance(scale, (int, float, np.number)) else np.float32(np.nan)
    if not (np.isfinite(s) and s > 0):
        raise HwsimError(f"pool form {form!r} needs the grid's scale: scale = {scale!r}: allowed a positive "
                         "finite number")
    return s


def _pool_index(shape, index_offset: int, rounding: str):
    """Stochastic draw indices: index_offset + flat C-order output index (None: the default, offset 0)."""
    if rounding != "stochastic" or not index_offset:
        return None
    return int(index_offset) + fp._flat_index(shape)


def _pool_float_forms(s, d_windows, count: int, form: str, s32, z: int, rounding: str, seed: int, index=None,
                      out_scale=None, out_zero_point=None):
    """The float32 pool forms from the integer window sums ``s`` or the dequantized windows (lazy); the output
    grid is the input's unless ``out_scale`` / ``out_zero_point`` give another."""
    f32 = np.float32
    sy = s32 if out_scale is None else f32(out_scale)
    zy = z if out_zero_point is None else int(out_zero_point)
    if form == "float32_multiplier":
        return zy + fp.round_float(s.astype(f32) * pool_multiplier(s32, count, sy), rounding, seed, index)
    win = d_windows()  # [..., kh, kw] float32 dequantized values, padding 0.0
    acc = np.zeros(win.shape[:-2], f32)
    for i in range(win.shape[-2]):  # window order, one float32 rounding per addition
        for j in range(win.shape[-1]):
            acc += win[..., i, j]
    if form == "inductor":  # torch.compile's x86 kernel: times the float32 literal of 1/s_y, z_y after rounding
        return fp.round_float((acc / f32(count)) * f32(1.0 / np.float64(sy)), rounding, seed, index) + zy
    return fp.round_float((acc / f32(count)) / sy + f32(zy), rounding, seed, index)


def avg_pool2d(x_q, kernel, stride, padding=(0, 0, 0, 0), zero_point: int = 0, rounding: str = "half_even",
               seed: int = 0, impl: str = "fast", *, form: str = "exact", scale: float | None = None,
               index_offset: int = 0, out_scale: float | None = None, out_zero_point: int | None = None) -> np.ndarray:
    """out = z + divide_round(sum(x - z), kh*kw); count_include_pad (padding holds the zero point).

    Stochastic rounding draws with index ``index_offset`` + flat C-order output index (the executor
    passes the batch's first image times the per-image output size: results independent of batching).

    ``form`` (docs/semantics.md section 6; ``scale`` = the grid's scale, needed by both float forms):
    "float32_multiplier": out = z + round(fl32(fl32(sum(x - z)) * M)), M = :func:`pool_multiplier`;
    "float32_dequantize" (ONNX Runtime QLinearAveragePool): d = fl32(s (x - z)), summed in float32 in
    window order (row by row), out = round(fl32(fl32(fl32(sum / fl32(kh*kw)) / s) + z)).
    "inductor" (torch.compile's x86 C++ kernel of pt2e's dequantize -> mean -> quantize, global pool only): the
    same float32 sum, out = round(fl32(fl32(sum / fl32(H*W)) * fl32(1/s))) + z (1/s in double, then float32).
    ``out_scale`` / ``out_zero_point`` (float forms only): an output grid other than the input's (s, z above
    become s_y, z_y where they divide / offset the result), as an imported model's QLinearAveragePool has.
    """
    _check_impl(impl)
    fp.check_mode(rounding)
    s32 = _pool_scale(form, scale)
    _check_out_grid(form, out_scale, out_zero_point)
    x = _check_nchw(x_q)
    kernel, stride, pad, Ho, Wo = _pool_geometry(x, kernel, stride, padding)
    z = int(zero_point)
    if impl == "reference":
        if form != "exact":
            return ref.avg_pool2d_float(x, kernel, stride, pad, z, rounding, seed, form, s32, index_offset,
                                        out_scale, out_zero_point)
        return ref.avg_pool2d(x, kernel, stride, pad, z, rounding, seed, index_offset, scale, out_scale,
                              out_zero_point)
    index = _pool_index((x.shape[0], x.shape[1], Ho, Wo), index_offset, rounding)
    if form == "float32_dequantize":
        s = None
    else:
        s = (_windows(x - z, kernel, stride, pad, 0)[:, :, :Ho, :Wo]).sum(axis=(4, 5))
    if form == "exact":
        return _exact_mean(s, kernel[0] * kernel[1], z, rounding, seed, index, scale, out_scale, out_zero_point)
    return _pool_float_forms(
        s, lambda: _windows(s32 * (x - z).astype(np.float32), kernel, stride, pad, 0)[:, :, :Ho, :Wo],
        kernel[0] * kernel[1], form, s32, z, rounding, seed, index, out_scale, out_zero_point)


def global_avg_pool(x_q, zero_point: int = 0, rounding: str = "half_even", seed: int = 0,
                    impl: str = "fast", *, form: str = "exact", scale: float | None = None,
                    index_offset: int = 0, out_scale: float | None = None, out_zero_point: int | None = None) -> np.ndarray:
    """out[n, c] = z + divide_round(sum_hw(x - z), H*W); int64 [N, C] (stochastic: as :func:`avg_pool2d`).

    ``form``: as :func:`avg_pool2d` with the window = the whole H x W plane; "float32_multiplier" is
    ONNX Runtime's QLinearGlobalAveragePool (MLAS, x86-64); ``out_scale`` / ``out_zero_point`` as there.
    """
    _check_impl(impl)
    fp.check_mode(rounding)
    s32 = _pool_scale(form, scale)
    _check_out_grid(form, out_scale, out_zero_point)
    x = _check_nchw(x_q)
    z = int(zero_point)
    if impl == "reference":
        if form != "exact":
            kernel = (x.shape[2], x.shape[3])
            return ref.avg_pool2d_float(x, kernel, kernel, (0, 0, 0, 0), z, rounding, seed, form,
                                        s32, index_offset, out_scale, out_zero_point).reshape(x.shape[:2])
        return ref.global_avg_pool(x, z, rounding, seed, index_offset, scale, out_scale, out_zero_point)
    index = _pool_index(x.shape[:2], index_offset, rounding)
    s = (x - z).sum(axis=(2, 3))
    if form == "exact":
        return _exact_mean(s, x.shape[2] * x.shape[3], z, rounding, seed, index, scale, out_scale, out_zero_point)
    return _pool_float_forms(s, lambda: s32 * (x - z).astype(np.float32), x.shape[2] * x.shape[3], form, s32, z,
                             rounding, seed, index, out_scale, out_zero_point)


def _check_out_grid(form: str, out_scale, out_zero_point) -> None:
    if (out_scale is None) != (out_zero_point is None):
        raise HwsimError("average pool: give both out_scale and out_zero_point (an output grid) or neither")


def _exact_mean(s, count: int, z: int, rounding: str, seed: int, index, scale, out_scale, out_zero_point):
    """Form "exact": z + divide_round(S, count); with an output grid of its own (s_y, z_y):
    z_y + round(S * s / (s_y * count)), that rational (float32 scales are dyadic) rounded once."""
    if out_scale is None:
        return z + fp.divide_round(s, count, rounding, seed, index)
    from fractions import Fraction

    if scale is None:
        raise HwsimError("average pool: an output grid of its own needs the input grid's scale")
    r = Fraction(float(np.float32(scale))) / (Fraction(float(np.float32(out_scale))) * count)
    num, den = r.numerator, r.denominator
    big = s.size and max(abs(int(s.min())), abs(int(s.max()))) * num >= (1 << 62)
    if den < (1 << 38) and not big:
        return int(out_zero_point) + fp.divide_round(s * num, den, rounding, seed, index)
    flat = fp._flat_index(s.shape) if index is None else np.broadcast_to(index, s.shape)
    out = np.empty(s.shape, np.int64)  # beyond int64: the reference's Python-int rounding, element by element
    for i, (v, k) in enumerate(zip(s.reshape(-1).tolist(), np.ravel(flat).tolist())):
        out.reshape(-1)[i] = int(out_zero_point) + ref.divide_round_int(v * num, den, rounding, seed, k)
    return out



# ----------------------------------------------------------------------------- registry entries
def _geometry(a) -> tuple[tuple, tuple, tuple]:
    """(kernel, stride, padding) of a pool layer's attrs (stride defaults to the kernel)."""
    return pair(a["kernel"]), pair(a.get("stride", a["kernel"])), tuple(a.get("padding", (0, 0, 0, 0)))


class _WindowPoolSpec(OpSpec):
    """maxpool2d / avgpool2d: a kernel x kernel window with stride and padding."""

    attrs = {"kernel": "pair", "stride": "pair", "padding": "pad4"}
    kind = "pool"
    output_grid = "input"

    def infer_shape(self, node, ins, p, fail, tag):
        a, x = node.attrs, ins[0]
        need_chw(node, x, fail, tag)
        c, h, w = x
        (kh, kw), (sh, sw), (pt, pb, pl, pr) = a["kernel"], a["stride"], a["padding"]
        if max(pt, pb) >= kh or max(pl, pr) >= kw:
            fail(f"{tag}: padding {list(a['padding'])} must be smaller than kernel {list(a['kernel'])} on every side")
        oh, ow = window_out(h, pt + pb, kh, sh), window_out(w, pl + pr, kw, sw)
        if oh < 1 or ow < 1:
            fail(f"{tag}: kernel {kh}x{kw} does not fit input {h}x{w} with padding {list(a['padding'])}")
        return (c, oh, ow)


@register
class MaxPool2dSpec(_WindowPoolSpec):
    name = "maxpool2d"
    moves_values = True

    def float_forward(self, node, graph, ins):
        from hwsim.floatref import pool_float

        return pool_float(ins[0], node.attrs, "max")

    def thread_safe(self, qg, lay) -> bool:
        """kernels.max_pool runs single-threaded inside execute's batch workers."""
        return True

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        x, gx = env[lay.inputs[0]], qg.grids[lay.inputs[0]]
        k, s, pad = _geometry(lay.attrs)
        if impl != "fast":
            return max_pool2d(x, k, s, pad, gx.qmin, impl=impl), 0
        from hwsim import kernels

        # the numba kernel on x's own (possibly narrow) dtype
        k, s_, pad, Ho, Wo = _pool_geometry(x, k, s, pad)
        info = np.iinfo(x.dtype)
        y = np.empty((x.shape[0], x.shape[1], Ho, Wo), x.dtype if info.min <= gx.qmin <= info.max else np.int64)
        kernels.max_pool(np.ascontiguousarray(x), k[0], k[1], s_[0], s_[1], pad[0], pad[2], gx.qmin, y)
        return y, 0

    def onnx_export(self, ex, lay):
        n = lay.name
        ex.grid(lay.inputs[0], n)
        (kh, kw), s, (pt, pb, pl, pr) = _geometry(lay.attrs)
        if max(pt, pb) >= kh or max(pl, pr) >= kw:
            raise HwsimError(f"layer '{n}': max-pool padding {[pt, pb, pl, pr]} not smaller than the kernel")
        # hwsim pads with the grid's qmin (0): never above a real value, so the same max as ONNX's
        ex.node("MaxPool", [lay.inputs[0]], [lay.output], n, kernel_shape=[kh, kw], strides=list(s),
                pads=[pt, pl, pb, pr])


def own_output_grid(gx, gy) -> bool:
    """An average pool whose output grid is not its input's (an imported model's; compile shares the grid)."""
    return gy is not None and gy is not gx and (gy.scale, gy.zero_point) != (gx.scale, gx.zero_point)


class _AvgPoolSpec(OpSpec):
    """What avgpool2d and global_avgpool share: the profile's rounding and pool form, compare's cause."""

    kind = "pool"
    output_grid = "input"
    compared = True
    channel_mean_preserving = True

    def pool_kwargs(self, lay, x, gx, impl, gy=None) -> dict:
        r = lay.profile.requant
        kw = dict(zero_point=gx.zero_point, rounding=r.rounding, seed=lay.rounding_seed, impl=impl)
        if r.pool_form == "onnxruntime":
            kw.update(form=self.onnxruntime_form(lay, x.shape[2:]), scale=gx.scale)
        elif r.pool_form == "inductor":
            if lay.op != "global_avgpool":
                raise HwsimError(f"layer {lay.name!r}: requant.pool_form = 'inductor' is measured on global average "
                                 f"pools only, not {lay.op}; allowed here: 'exact', 'onnxruntime'")
            kw.update(form="inductor", scale=gx.scale)
        if own_output_grid(gx, gy):  # an imported model's own output grid (hwsim.given)
            kw.update(scale=gx.scale, out_scale=gy.scale, out_zero_point=gy.zero_point)
        return kw

    def onnxruntime_form(self, lay, input_hw) -> str:
        """The pool ``form`` that is ONNX Runtime's arithmetic for this layer (:func:`onnxruntime_pool_form`)."""
        return onnxruntime_pool_form(lay.op, lay.attrs.get("kernel"), lay.attrs.get("padding", (0, 0, 0, 0)), input_hw)

    def golden_fields(self, lay, write_int):
        return {"rounding": lay.profile.requant.rounding, "pool_form": lay.profile.requant.pool_form}

    def explain(self, qg, lay, codes, iso_diff, st, fq_rounding):
        from hwsim.compare import mirror_rounding

        rnd = lay.profile.requant.rounding
        fqr = mirror_rounding(fq_rounding, rnd)
        if rnd == fqr:
            return (f"average pool: exact integer mean rounded {rnd} vs fake-quant's float32 mean "
                    "near a tie (≤ 1 LSB)")
        return f"average pool: integer sum divided with {rnd} rounding (fake-quant: float mean, {fqr})"

    def onnx_export(self, ex, lay):
        ex.check_pool_rounding(lay)
        n = lay.name
        sx, zx = ex.grid(lay.inputs[0], n)
        sy, zy = ex.grid(lay.output, n)
        self.onnx_node(ex, lay, [lay.inputs[0], sx, zx, sy, zy])


@register
class AvgPool2dSpec(_WindowPoolSpec, _AvgPoolSpec):
    """avgpool2d; ``count_include_pad`` (default true, today's files): false divides by the taps inside the
    image (PyTorch count_include_pad=False, TFLite AVERAGE_POOL_2D SAME, ONNX AveragePool's default) in the
    profile's requant.avgpool_form (:func:`hwsim.ops.reduce.avg_pool2d`)."""

    name = "avgpool2d"
    optional_attrs = {"count_include_pad": ("bool", True)}

    def float_forward(self, node, graph, ins):
        from hwsim.floatref import _pad, _windows, pool_float

        if node.attrs.get("count_include_pad", True):
            return pool_float(ins[0], node.attrs, "avg")
        (kh, kw), (sh, sw) = node.attrs["kernel"], node.attrs["stride"]
        x = ins[0]
        xp, ones = _pad(x, node.attrs["padding"], 0.0), _pad(np.ones((1, 1) + x.shape[2:], np.float32),
                                                             node.attrs["padding"], 0.0)
        oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
        acc = sum(_windows(xp, kh, kw, oh, ow, sh, sw))  # float32 window sum, row by row
        count = sum(_windows(ones, kh, kw, oh, ow, sh, sw))  # taps inside the image
        return (acc / count).astype(np.float32)

    def forms(self, lay) -> tuple[str, str]:
        """(form, rounding) of a count_include_pad = false layer (requant.avgpool_form)."""
        from hwsim.ops.reduce import AVGPOOL_PROFILE_FORMS, profile_form

        return profile_form(AVGPOOL_PROFILE_FORMS, lay.profile.requant.avgpool_form, lay.profile.requant)

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        if lay.profile is not None and lay.profile.requant.pool_form == "float32_mlas":
            raise HwsimError(f"layer {lay.name!r}: requant.pool_form = 'float32_mlas' models ONNX Runtime's float "
                             "GlobalAveragePool only (MLAS's float AveragePool is not modelled); allowed for avgpool2d: "
                             "'exact', 'onnxruntime'")
        x, gx, gy = env[lay.inputs[0]], qg.grids[lay.inputs[0]], qg.grids[lay.output]
        k, s, pad = _geometry(lay.attrs)
        out_hw = conv_output_size(x.shape[2], k[0], s[0], pad[0], pad[1]) * conv_output_size(
            x.shape[3], k[1], s[1], pad[2], pad[3])
        if not lay.attrs.get("count_include_pad", True):
            from hwsim.ops import reduce

            if own_output_grid(gx, gy):  # an imported int8 model's pool with its own grid (hwsim/given.py)
                raise HwsimError(f"layer {lay.name!r}: an avgpool2d without padding taps (count_include_pad false) "
                                 "with its own output grid is not supported yet; allowed: the input's grid")
            form, rounding = self.forms(lay)
            return reduce.avg_pool2d(x, k, s, pad, gx.zero_point, rounding, lay.rounding_seed, impl,
                                     count_include_pad=False, form=form, scale=gx.scale,
                                     index_offset=offset * x.shape[1] * out_hw), 0
        y = avg_pool2d(x, k, s, pad, index_offset=offset * x.shape[1] * out_hw, **self.pool_kwargs(lay, x, gx, impl, gy))
        return clamp_counted(y, lay, gy, narrow) if own_output_grid(gx, gy) else (y, 0)

    def onnxruntime_form(self, lay, input_hw) -> str:
        if not lay.attrs.get("count_include_pad", True):
            return "float32_dequantize"
        return super().onnxruntime_form(lay, input_hw)

    def golden_fields(self, lay, write_int):
        d = super().golden_fields(lay, write_int)
        if not lay.attrs.get("count_include_pad", True):
            form, rounding = self.forms(lay)
            d.update(count_include_pad=False, rounding=rounding, avgpool_form=form)
        return d

    def onnx_node(self, ex, lay, ins):
        k, s, (pt, pb, pl, pr) = _geometry(lay.attrs)
        cip = lay.attrs.get("count_include_pad", True)
        if not cip and self.forms(lay)[0] != "float32_dequantize":
            raise HwsimError(f"layer '{lay.name}': avgpool2d with count_include_pad = false and avgpool_form "
                             f"{lay.profile.requant.avgpool_form!r} (profile '{lay.profile.name}') cannot be expressed "
                             "as ONNX Runtime's QLinearAveragePool: allowed avgpool_form 'onnxruntime'")
        ex.node("QLinearAveragePool", ins, [lay.output], lay.name, ms=True, kernel_shape=list(k), strides=list(s),
                pads=[pt, pl, pb, pr], count_include_pad=int(bool(cip)))


@register
class GlobalAvgPoolSpec(_AvgPoolSpec):
    name = "global_avgpool"

    def infer_shape(self, node, ins, p, fail, tag):
        need_chw(node, ins[0], fail, tag)
        return (ins[0][0], 1, 1)

    def float_forward(self, node, graph, ins):
        return ins[0].mean(axis=(2, 3), keepdims=True, dtype=np.float32)

    def thread_safe(self, qg, lay) -> bool:
        """numpy only (and kernels.clamp_count, single-threaded inside execute's batch workers); avgpool2d is
        not (reduce.window_sums is a parallel numba kernel)."""
        return True

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        from hwsim import mlas

        x, gx, gy = env[lay.inputs[0]], qg.grids[lay.inputs[0]], qg.grids[lay.output]
        if mlas.wants(lay, "pool_form"):  # requant.pool_form = "float32_mlas": ORT's QDQ float path
            y = mlas.pool(x, gx, gy)
            return clamp_counted(y, lay, gy, narrow) if lay.clamp is not None else (np.clip(y, gy.qmin, gy.qmax), 0)
        y = global_avg_pool(x, index_offset=offset * x.shape[1], **self.pool_kwargs(lay, x, gx, impl, gy))
        y = y.reshape(x.shape[0], x.shape[1], 1, 1)
        return clamp_counted(y, lay, gy, narrow) if own_output_grid(gx, gy) else (y, 0)

    def onnx_node(self, ex, lay, ins):
        ex.node("QLinearGlobalAveragePool", ins, [lay.output], lay.name, ms=True, channels_last=0)
