"""Mean over H, W and average pooling whose divisor counts only the taps inside the image
(docs/semantics.md, "mean" and "avg_pool2d, count_include_pad=False").

Both are an integer window sum followed by a division; the ``form`` names where the zero point sits and how the
quotient is rounded, because that is exactly where engines differ:

- ``"exact"`` (hwsim default): ``y = z + divide_round(sum(x - z), n, rounding)`` (the zero point outside the
  rounding; every rounding mode of hwsim.fixedpoint, stochastic included);
- ``"raw_sum"``: ``y = divide_round(sum(x), n, rounding)`` (raw stored integers, the zero point inside the
  rounding): PyTorch's quantized ``mean`` over (H, W) and ``avg_pool2d`` (rounding half_even, input grid
  kept), TFLite's int8 AVERAGE_POOL_2D (reference_integer_ops::AveragePool, both resolvers: rounding half_away).
  It differs from "exact" on ties whenever z is odd (half_even) or the sums have other signs (half_away);
- ``"float32_dequantize"``: ONNX Runtime's ``QLinearAveragePool`` (:func:`hwsim.ops.avg_pool2d`'s form of that
  name, with n = the in-image tap count when count_include_pad=False);
- mean only, ``"float32_multiplier"``: ONNX Runtime's ``QLinearGlobalAveragePool`` (:func:`hwsim.ops.global_avg_pool`'s
  form of that name; input grid == output grid);
- mean only, different input and output grids allowed: ``"tflite_reference"`` (TFLite MEAN int8, BUILTIN_REF:
  reference_ops::QuantizedMeanOrSum, integer path) and ``"tflite_optimized"`` (TFLite MEAN int8, optimized
  kernel: optimized_integer_ops::Mean), see :func:`mean_hw`.

n for a pool window with count_include_pad=False is the number of taps inside the image
(:func:`valid_tap_counts`). With ``count_include_pad=True`` :func:`avg_pool2d` is :func:`hwsim.ops.avg_pool2d`.
The coordinator imports this module after ``hwsim.ops`` is initialised.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim import fixedpoint as fp
from hwsim import ops
from hwsim import reference as ref
from hwsim.errors import HwsimError

POOL_FORMS = ("exact", "raw_sum", "float32_dequantize")
MEAN_FORMS = ("exact", "raw_sum", "float32_multiplier", "tflite_reference", "tflite_optimized", "xnnpack")
f32 = np.float32


# ----------------------------------------------------------------------------- avg_pool2d, count_include_pad=False
def valid_tap_counts(H: int, W: int, kernel, stride, padding, Ho: int, Wo: int) -> np.ndarray:
    """int64 [Ho, Wo]: the number of window taps inside the H x W image (the count_include_pad=False divisor)."""
    kh, kw = kernel
    rows = np.array([min(H, o * stride[0] - padding[0] + kh) - max(0, o * stride[0] - padding[0]) for o in range(Ho)])
    cols = np.array([min(W, o * stride[1] - padding[2] + kw) - max(0, o * stride[1] - padding[2]) for o in range(Wo)])
    return np.maximum(rows, 0)[:, None] * np.maximum(cols, 0)[None, :]


def _avg_pool_reference(x, kernel, stride, pad, z, rounding, seed, form, s32, index_offset):
    """The spec: one window at a time, Python ints (exact) / one float32 rounding per step (float32_dequantize)."""
    N, C, H, W = x.shape
    kh, kw = kernel
    Ho, Wo = (H + pad[0] + pad[1] - kh) // stride[0] + 1, (W + pad[2] + pad[3] - kw) // stride[1] + 1
    out = np.zeros((N, C, Ho, Wo), np.int64)
    for pos in np.ndindex(N, C, Ho, Wo):
        n, c, oh, ow = pos
        taps = [int(x[n, c, ih, iw]) for ih in range(oh * stride[0] - pad[0], oh * stride[0] - pad[0] + kh)
                for iw in range(ow * stride[1] - pad[2], ow * stride[1] - pad[2] + kw) if 0 <= ih < H and 0 <= iw < W]
        cnt = len(taps)
        if cnt == 0:
            raise HwsimError(f"avg_pool2d: output {pos} has no tap inside the image (padding {pad} >= kernel "
                             f"{kernel}): allowed padding smaller than the kernel")
        flat = index_offset + int(np.ravel_multi_index(pos, out.shape))
        if form == "exact":
            out[pos] = z + ref.divide_round_int(sum(t - z for t in taps), cnt, rounding, seed, flat)
        elif form == "raw_sum":
            out[pos] = ref.divide_round_int(sum(taps), cnt, rounding, seed, flat)
        else:
            acc = f32(0)
            for t in taps:  # window order, row by row: one float32 rounding per addition
                acc = f32(acc + f32(s32 * f32(t - z)))
            v = f32(f32(f32(acc / f32(cnt)) / s32) + f32(z))
            out[pos] = ref.round_float_int(float(v), rounding, seed, flat)
    return out


def avg_pool2d(x_q, kernel, stride, padding=(0, 0, 0, 0), zero_point: int = 0, rounding: str = "half_even",
               seed: int = 0, impl: str = "fast", *, count_include_pad: bool = True, form: str = "exact",
               scale: float | None = None, index_offset: int = 0) -> np.ndarray:
    """Average pool on one grid (input and output share scale and zero point); int64 [N, C, Ho, Wo].

    ``count_include_pad=True``: :func:`hwsim.ops.avg_pool2d` (padding holds z, divisor kh*kw; its forms).
    ``count_include_pad=False``: divisor n = taps inside the image; ``form`` "exact", "raw_sum" or
    "float32_dequantize" (module docstring; ``scale`` = the grid's scale, needed by the float form).
    ``padding`` = (top, bottom, left, right); TFLite SAME padding is (p//2, p - p//2) per axis.
    """
    if count_include_pad:
        if form == "raw_sum":
            raise HwsimError("avg_pool2d: form 'raw_sum' needs count_include_pad = False: allowed forms "
                             + ", ".join(ops.POOL_FORMS))
        return ops.avg_pool2d(x_q, kernel, stride, padding, zero_point, rounding, seed, impl, form=form,
                              scale=scale, index_offset=index_offset)
    ops._check_impl(impl)
    fp.check_mode(rounding)
    fp.check_mode(form, POOL_FORMS, "pool form (count_include_pad = False)")
    s32 = ops._pool_scale("float32_dequantize", scale) if form == "float32_dequantize" else None
    x = ops._check_nchw(x_q)
    kernel, stride, pad, Ho, Wo = ops._pool_geometry(x, kernel, stride, padding)
    if pad[0] >= kernel[0] or pad[1] >= kernel[0] or pad[2] >= kernel[1] or pad[3] >= kernel[1]:
        raise HwsimError(f"avg_pool2d: padding {pad} with kernel {kernel}: allowed padding smaller than the kernel "
                         "(count_include_pad = False needs a tap inside the image in every window)")
    z = int(zero_point)
    if impl == "reference":
        return _avg_pool_reference(x, kernel, stride, pad, z, rounding, seed, form, s32, index_offset)
    cnt = valid_tap_counts(x.shape[2], x.shape[3], kernel, stride, pad, Ho, Wo)
    index = ops._pool_index((x.shape[0], x.shape[1], Ho, Wo), index_offset, rounding)
    if form == "float32_dequantize":
        win = ops._windows(s32 * (x - z).astype(f32), kernel, stride, pad, 0)[:, :, :Ho, :Wo]
        acc = np.zeros(win.shape[:-2], f32)
        for i in range(kernel[0]):  # window order; padding taps add 0.0, which leaves a float32 sum unchanged
            for j in range(kernel[1]):
                acc += win[..., i, j]
        return fp.round_float((acc / cnt.astype(f32)) / s32 + f32(z), rounding, seed, index)
    shift = 0 if form == "raw_sum" else z
    return shift + fp.divide_round(window_sums(x, kernel, stride, pad, Ho, Wo, shift), cnt, rounding, seed, index)


def window_sums(x: np.ndarray, kernel, stride, pad, Ho: int, Wo: int, shift: int = 0) -> np.ndarray:
    """Exact int64 sums of (x - shift) over the taps of every pool window that lie inside the image (numba, one
    pass over the taps; x in its own integer dtype, no int64 copy)."""
    out = np.empty((x.shape[0], x.shape[1], Ho, Wo), np.int64)
    _window_sums(np.ascontiguousarray(x), int(kernel[0]), int(kernel[1]), int(stride[0]), int(stride[1]), int(pad[0]),
                 int(pad[2]), np.int64(shift), out)
    return out


@njit(cache=True, parallel=True)
def _window_sums(x, kh, kw, sh, sw, pt, pl, shift, out):
    n, c, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for nc in prange(n * c):
        a, ch = nc // c, nc % c
        for i in range(ho):
            r0 = i * sh - pt
            for j in range(wo):
                c0 = j * sw - pl
                acc = np.int64(0)
                for u in range(max(r0, 0), min(r0 + kh, h)):
                    for v in range(max(c0, 0), min(c0 + kw, w)):
                        acc += np.int64(x[a, ch, u, v]) - shift
                out[a, ch, i, j] = acc


# ----------------------------------------------------------------------------- mean over H, W
def tflite_mean_reference_multiplier(in_scale, out_scale, n: int) -> tuple[int, int]:
    """TFLite QuantizedMeanOrSum (mean): QuantizeMultiplier(s_in / s_out) (float64 of the float32 scales), then
    the multiplier divided by n in integers: k = min(floor(log2 n), 32, 31 + shift),
    q' = floor(q * 2^k / n), shift' = shift - k."""
    q, shift = fp.quantize_multiplier(float(f32(in_scale)) / float(f32(out_scale)))
    k = min(int(n).bit_length() - 1, 32, 31 + shift)
    return (q << k) // int(n), shift - k


def tflite_mean_optimized_params(in_scale, in_zero_point: int, out_scale, out_zero_point: int,
                                 n: int) -> tuple[int, int, int]:
    """TFLite optimized int8 MEAN (optimized_integer_ops::Mean): (q, shift, bias) with
    QuantizeMultiplier(fl32(s_in / fl32(fl32(n) * s_out))) and
    bias = z_out - trunc(t +- 0.5), t = fl32(fl32(z_in * s_in) / s_out) (half away from zero, in float32)."""
    si, so = f32(in_scale), f32(out_scale)
    q, shift = fp.quantize_multiplier(float(f32(si / f32(f32(n) * so))))
    t = f32(f32(f32(in_zero_point) * si) / so)
    t = f32(t + f32(0.5)) if t > 0 else f32(t - f32(0.5))
    return q, shift, int(out_zero_point) - int(np.trunc(t))


def xnnpack_mean_params(in_scale, in_zero_point: int, out_scale, out_zero_point: int, n: int):
    """XNNPACK's qs8 MEAN (src/operators/reduce-nd.c with xnn_init/update_qs8_reduce_scalar_params and the int32 ->
    qs8 reference convert): scale sc = fl32(fl32(s_in / s_out) * fl32(1 / n)); zero point, a float32,
    zp = fl32(z_out - fl32(fl32(n z_in) sc)); y = nearbyint(fl32(fl32(fl32(S_raw) sc) + zp)), S_raw = sum(x)."""
    sc = f32(f32(f32(in_scale) / f32(out_scale)) * f32(f32(1) / f32(n)))
    zp = f32(f32(out_zero_point) - f32(f32(n * int(in_zero_point)) * sc))
    return sc, zp


def mean_hw(x_q, in_scale, in_zero_point: int, out_scale, out_zero_point: int, qmin: int, qmax: int,
            rounding: str = "half_even", *, form: str = "exact", cfg: ops.Requant | None = None, seed: int = 0,
            impl: str = "fast", index_offset: int = 0) -> np.ndarray:
    """Mean of [N, C, H, W] over H and W, keepdims: int64 [N, C, 1, 1], clamped to [qmin, qmax]. n = H*W.

    "exact": m = z_in + divide_round(sum(x - z_in), n, rounding) on the input grid (== :func:`hwsim.ops.
    global_avg_pool`), then, when the output grid differs, ``requantize(m - z_in, M = s_in / s_out, cfg) + z_out``
    (``cfg``: the profile's Requant; default float32 half_even).
    "raw_sum" (PyTorch, rounding half_even): divide_round(sum(x), n, rounding); input grid == output grid.
    "float32_multiplier" (ONNX Runtime QLinearGlobalAveragePool): :func:`hwsim.ops.global_avg_pool` with that form.
    "tflite_reference": MBQM(sum(x - z_in), q', shift') + z_out (:func:`tflite_mean_reference_multiplier`,
    gemmlowp double rounding). "tflite_optimized": MBQM(sum(x), q, shift) + bias
    (:func:`tflite_mean_optimized_params`; the raw sum, no zero point subtracted).
    """
    ops._check_impl(impl)
    fp.check_mode(rounding)
    fp.check_mode(form, MEAN_FORMS, "mean form")
    x = ops._check_nchw(x_q)
    for name, v in (("in_scale", in_scale), ("out_scale", out_scale)):
        sv = f32(v) if isinstance(v, (int, float, np.number)) else f32(np.nan)
        if not (np.isfinite(sv) and sv > 0):
            raise HwsimError(f"mean: {name} = {v!r}: allowed a positive finite number")
    zi, zo, qmin, qmax = int(in_zero_point), int(out_zero_point), int(qmin), int(qmax)
    same = f32(in_scale) == f32(out_scale) and zi == zo
    n = x.shape[2] * x.shape[3]
    if n == 0:
        raise HwsimError(f"mean: input shape {x.shape}: allowed H, W >= 1")
    if form in ("raw_sum", "float32_multiplier") and not same:
        raise HwsimError(f"mean: form {form!r} keeps the input grid: allowed only out_scale == in_scale and "
                         "out_zero_point == in_zero_point")
    if form == "float32_multiplier":
        y = ops.global_avg_pool(x, zi, rounding, seed, impl, form=form, scale=float(f32(in_scale)),
                                index_offset=index_offset)
    elif form == "exact":
        m = ops.global_avg_pool(x, zi, rounding, seed, impl, index_offset=index_offset)
        if not same:
            cfg = cfg or ops.Requant()
            params = ops.make_requant_params(in_scale, 1.0, out_scale, cfg)
            m, _ = ops.requantize(m - zi, params, cfg, zo, qmin, qmax, impl=impl)
        y = m
    elif form == "raw_sum":
        if impl == "reference":
            y = np.array([[ref.divide_round_int(sum(int(v) for v in x[a, c].ravel()), n, rounding, seed,
                                                index_offset + a * x.shape[1] + c)
                           for c in range(x.shape[1])] for a in range(x.shape[0])], np.int64).reshape(x.shape[:2])
        else:
            y = fp.divide_round(x.sum(axis=(2, 3)), n, rounding, seed, ops._pool_index(x.shape[:2], index_offset,
                                                                                          rounding))
    elif form == "xnnpack":
        if n >= (1 << 23):
            raise HwsimError(f"mean: {n} elements per channel: allowed fewer than 2^23 (XNNPACK int32 sums)")
        sc, zp = xnnpack_mean_params(in_scale, zi, out_scale, zo, n)
        s = (np.array([[sum(int(v) for v in x[a, c].ravel()) for c in range(x.shape[1])] for a in range(x.shape[0])],
                      np.int64).reshape(x.shape[:2]) if impl == "reference" else x.sum(axis=(2, 3)))
        v = (s.astype(f32) * sc).astype(f32) + zp  # float32 operations, no FMA (reference-utils.h quantize)
        y = np.rint(v.astype(f32)).astype(np.int64)  # std::nearbyint: half to even
    else:
        if n >= (1 << 23):
            raise HwsimError(f"mean: {n} elements per channel: allowed fewer than 2^23 (TFLite int32 sums)")
        if form == "tflite_reference":
            q, shift = tflite_mean_reference_multiplier(in_scale, out_scale, n)
            acc, bias = (x - zi), zo
        else:
            q, shift, bias = tflite_mean_optimized_params(in_scale, zi, out_scale, zo, n)
            acc = x
        if impl == "reference":
            s = np.array([[sum(int(v) for v in acc[a, c].ravel()) for c in range(x.shape[1])]
                          for a in range(x.shape[0])], np.int64).reshape(x.shape[:2])
        else:
            s = acc.sum(axis=(2, 3))
        if form == "tflite_optimized":  # optimized_ops::Mean: NEON blocks of 16 channels (vqrdmulh + rounding shift,
            # ties half_up / half_up on x86 through NEON_2_SSE), the last C mod 16 channels scalar gemmlowp
            body = s.shape[1] - s.shape[1] % 16
            y = np.concatenate([fp.multiply_by_quantized_multiplier(s[:, :body], q, shift, "double", ("half_up",) * 2),
                                fp.multiply_by_quantized_multiplier(s[:, body:], q, shift)], axis=1) + bias
        else:
            y = fp.multiply_by_quantized_multiplier(s, q, shift) + bias
    return np.clip(y, qmin, qmax).reshape(x.shape[0], x.shape[1], 1, 1)


# ----------------------------------------------------------------------------- registry entries
from hwsim.ops.pool import _AvgPoolSpec  # noqa: E402
from hwsim.ops.registry import need_chw, register  # noqa: E402

# profile requant.mean_form -> (mean_hw form, rounding; None = the profile's requant.rounding)
MEAN_PROFILE_FORMS = {"exact": ("exact", None), "torch": ("raw_sum", "half_even"),
                      "onnxruntime": ("float32_multiplier", None), "tflite_reference": ("tflite_reference", None),
                      "tflite_optimized": ("tflite_optimized", None), "xnnpack": ("xnnpack", None)}
# profile requant.avgpool_form -> (avg_pool2d form with count_include_pad = False, rounding)
AVGPOOL_PROFILE_FORMS = {"exact": ("exact", None), "torch": ("raw_sum", "half_even"),
                         "tflite": ("raw_sum", "half_away"), "onnxruntime": ("float32_dequantize", None)}


def profile_form(table: dict, key: str, requant_spec) -> tuple[str, str]:
    """(form, rounding) of a mean / average pool under a profile's requant section."""
    form, rounding = table[key]
    return form, rounding or requant_spec.rounding


@register
class MeanSpec(_AvgPoolSpec):
    """mean over H and W (torch.mean(dim=(2, 3)), ONNX ReduceMean axes [2, 3], TFLite MEAN): keeps its input's
    grid (like global_avgpool); ``keepdims`` (default true) gives (C, 1, 1), else (C,)."""

    name = "mean"
    optional_attrs = {"keepdims": ("bool", True)}

    def infer_shape(self, node, ins, p, fail, tag):
        need_chw(node, ins[0], fail, tag)
        return (ins[0][0], 1, 1) if node.attrs.get("keepdims", True) else (ins[0][0],)

    def float_forward(self, node, graph, ins):
        return ins[0].mean(axis=(2, 3), keepdims=bool(node.attrs.get("keepdims", True)), dtype=np.float32)

    def execute(self, qg, lay, env, st, impl, offset, narrow):
        x, gx = env[lay.inputs[0]], qg.grids[lay.inputs[0]]
        gy = qg.grids.get(lay.output) or gx  # an imported model's own output grid (LiteRT MEAN), else the input's
        form, rounding = profile_form(MEAN_PROFILE_FORMS, lay.profile.requant.mean_form, lay.profile.requant)
        y = mean_hw(x, gx.scale, gx.zero_point, gy.scale, gy.zero_point, gy.qmin, gy.qmax, rounding, form=form,
                    seed=lay.rounding_seed, impl=impl, index_offset=offset * x.shape[1])
        return (y if lay.attrs.get("keepdims", True) else y.reshape(x.shape[0], x.shape[1])), 0

    def onnxruntime_form(self, lay, input_hw) -> str:
        return "float32_multiplier"

    def golden_fields(self, lay, write_int):
        form, rounding = profile_form(MEAN_PROFILE_FORMS, lay.profile.requant.mean_form, lay.profile.requant)
        return {"rounding": rounding, "mean_form": form}

    def onnx_export(self, ex, lay):
        if lay.profile.requant.mean_form != "onnxruntime" or not lay.attrs.get("keepdims", True):
            raise HwsimError(f"layer '{lay.name}': mean with mean_form {lay.profile.requant.mean_form!r}, keepdims "
                             f"{lay.attrs.get('keepdims', True)} (profile '{lay.profile.name}') cannot be expressed in "
                             "ONNX Runtime's quantized ops: allowed mean_form 'onnxruntime' with keepdims "
                             "(QLinearGlobalAveragePool)")
        super().onnx_export(ex, lay)

    def onnx_node(self, ex, lay, ins):
        ex.node("QLinearGlobalAveragePool", ins, [lay.output], lay.name, ms=True, channels_last=0)
