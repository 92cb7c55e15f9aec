"""Probe: the arithmetic of oneDNN's int8 convolution with a fused residual add, as torch.compile's x86 int8 lowering
of a pt2e model calls it (``torch.ops.onednn.qconv2d_pointwise.binary`` with binary_attr "sum", unary "none" / "relu":
torch/_inductor/fx_passes/quantization.py, _register_qconv_binary_fusion; the quantized other input is the sum
post-op's destination, updated in place: aten/src/ATen/native/quantized/cpu/qconv.cpp, _quantized_convolution_onednn,
onednn_utils::create_attr_by_post_op -> ideep::attr_t::fuse_sum(accum_scale, accum_zero_point) /
residual_with_sum_zero_point).

oneDNN's brgemm epilogue (src/cpu/x64/brgemm/jit_brgemm_kernel.cpp, store_accumulators_apply_post_ops and the
sum_injector of apply_post_ops): v = fl32(acc) * scales (+ bias); sum post-op: prev = fl32(dst_u8) - fl32(sum_zp),
v = fma(prev, sum_scale, v) (vfmadd231ps, one rounding; a plain add when sum_scale == 1); eltwise relu; v *= dst
scale; v += dst zero point; saturate and convert (round half even).

Two lowerings, both probed here: (1) in place, int8 output (the pattern inductor takes when the other operand's
integers are read by nothing else): sum post-op with scale s_r and zero point z_r, dst scale and zero point;
(2) float output (the pattern it takes in a residual block, where the other operand's integers also feed the next
block: every add of the pt2e ResNet-8 and MobileNetV2): a C++ kernel dequantizes r to fl32(fl32(r - z_r) * s_r),
the conv (dst f32, no dst scale) adds it with sum scale 1 (vaddps), a C++ kernel quantizes the result,
round(fl32(v * fl32(1/s_y))) + z_y. hwsim's requant.add_form = "onednn_sum" is (2) (hwsim.ops.add.onednn_sum).

Run: ``PYTHONPATH=. python scripts/pt2e_conv_add_probe.py [cases]`` (ONEDNN_VERBOSE=1 shows the kernel). Prints, per
case and formula, how many of the outputs differ from oneDNN's."""
from __future__ import annotations

import sys

import numpy as np
import torch

from hwsim import ops
from hwsim.compile import fma_f32

f32 = np.float32


def onednn_conv_sum(rng, C, K, k, groups, relu, n=16, H=32):
    """One call of qconv2d_pointwise.binary on random data: (y, acc, accum codes, scales...)."""
    sx, zx = float(f32(rng.uniform(0.005, 0.03))), int(rng.integers(0, 40))
    sa, za = float(f32(rng.uniform(0.01, 0.06))), int(rng.integers(0, 80))
    sy, zy = float(f32(rng.uniform(0.01, 0.06))), int(rng.integers(0, 60))
    wq = rng.integers(-127, 128, (K, C // groups, k, k)) // 2
    sw = rng.uniform(2e-3, 1e-2, K).astype(f32)
    b = rng.normal(0, 0.5, K).astype(f32)
    xq = rng.integers(0, 256, (n, C, H, H))
    aq = rng.integers(0, 256, (n, K, H, H))
    xt = torch.from_numpy(xq.astype(np.uint8)).contiguous(memory_format=torch.channels_last)
    at = torch.from_numpy(aq.astype(np.uint8)).contiguous(memory_format=torch.channels_last)
    pad = [k // 2] * 2
    pw = torch.ops.onednn.qconv_prepack(torch.from_numpy(wq.astype(np.int8)), torch.from_numpy(sw), sx, zx, [1, 1],
                                        pad, [1, 1], groups, None)
    y = torch.ops.onednn.qconv2d_pointwise.binary(
        xt, sx, zx, pw, torch.from_numpy(sw), torch.zeros(K, dtype=torch.int64), at, torch.from_numpy(b), [1, 1], pad,
        [1, 1], groups, sy, zy, torch.uint8, sa, za, "sum", 1.0, "relu" if relu else "none", [], "")
    y = y.numpy().astype(np.int64)
    acc = torch.nn.functional.conv2d(torch.from_numpy((xq - zx).astype(np.float64)),
                                     torch.from_numpy(wq.astype(np.float64)), padding=k // 2,
                                     groups=groups).numpy().astype(np.int64)
    return y, acc, aq, dict(sx=sx, sw=sw, sy=sy, zy=zy, sa=sa, za=za, b=b)


def onednn_conv_sum_f32(rng, C, K, k, groups, relu, n=16, H=32):
    """The float-output lowering: qconv2d_pointwise.binary(output float32, accum = the dequantized operand as
    inductor's kernel makes it, sum scale 1): (float32 outputs, acc, accum codes, parameters)."""
    sx, zx = float(f32(rng.uniform(0.005, 0.03))), int(rng.integers(0, 40))
    sa, za = float(f32(rng.uniform(0.01, 0.06))), int(rng.integers(0, 80))
    wq = rng.integers(-127, 128, (K, C // groups, k, k)) // 2
    sw = rng.uniform(2e-3, 1e-2, K).astype(f32)
    b = rng.normal(0, 0.5, K).astype(f32)
    xq = rng.integers(0, 256, (n, C, H, H))
    aq = rng.integers(0, 256, (n, K, H, H))
    d = ((aq.astype(f32) - f32(za)) * f32(sa)).astype(f32)  # cpp_fused_dequantize_per_tensor
    xt = torch.from_numpy(xq.astype(np.uint8)).contiguous(memory_format=torch.channels_last)
    at = torch.from_numpy(d).contiguous(memory_format=torch.channels_last)
    pad = [k // 2] * 2
    pw = torch.ops.onednn.qconv_prepack(torch.from_numpy(wq.astype(np.int8)), torch.from_numpy(sw), sx, zx, [1, 1],
                                        pad, [1, 1], groups, None)
    y = torch.ops.onednn.qconv2d_pointwise.binary(
        xt, sx, zx, pw, torch.from_numpy(sw), torch.zeros(K, dtype=torch.int64), at, torch.from_numpy(b), [1, 1], pad,
        [1, 1], groups, 1.0, 0, torch.float32, 1.0, 0, "sum", 1.0, "relu" if relu else "none", [], "")
    acc = torch.nn.functional.conv2d(torch.from_numpy((xq - zx).astype(np.float64)),
                                     torch.from_numpy(wq.astype(np.float64)), padding=k // 2,
                                     groups=groups).numpy().astype(np.int64)
    return y.numpy(), acc, d, dict(sx=sx, sw=sw, b=b)


def float_formulas(acc, d, p, relu):
    """{name: float32 outputs} for the float-output lowering."""
    out = {}
    for pre_form in ("onednn_combined", "onednn_sequential"):
        q = ops.make_onednn_requant_params(p["sx"], p["sw"], 1.0, bias=p["b"], form=pre_form)
        c = (1, -1, 1, 1)
        v = acc.astype(f32)
        if q.src_scale is not None:
            v = (v * f32(q.src_scale)).astype(f32)
        v = (v * q.pre_scale.reshape(c)).astype(f32)
        for name, s in (("bias then sum", ((v + q.bias_term.reshape(c)).astype(f32) + d).astype(f32)),
                        ("sum then bias", ((v + d).astype(f32) + q.bias_term.reshape(c)).astype(f32))):
            out[f"{pre_form}: {name}"] = np.maximum(s, f32(0)) if relu else s
    return out


def formulas(acc, aq, p, relu, pre_form):
    """{name: uint8 outputs} for the candidate epilogues."""
    q = ops.make_onednn_requant_params(p["sx"], p["sw"], p["sy"], bias=p["b"], form=pre_form)
    c = (1, -1, 1, 1)
    if q.src_scale is not None:  # s_x then s_w
        v = (acc.astype(f32) * f32(q.src_scale)).astype(f32) * q.pre_scale.reshape(c)
    else:
        v = acc.astype(f32) * q.pre_scale.reshape(c)
    v = (v.astype(f32) + q.bias_term.reshape(c)).astype(f32)
    prev = (aq.astype(f32) - f32(p["za"])).astype(f32)
    sa = f32(p["sa"])
    d = q.multiplier.reshape(c).astype(f32)
    d_inv = f32(1) / f32(p["sy"])
    out = {}
    cand = {
        "fma": fma_f32(prev, sa, v) if sa != f32(1) else (v + prev).astype(f32),
        "mul_add": (v + (prev * sa).astype(f32)).astype(f32),
        "float64": (v.astype(np.float64) + prev.astype(np.float64) * np.float64(sa)).astype(f32),
    }
    for name, s in cand.items():
        if relu:
            s = np.maximum(s, f32(0))
        for dn, dd in (("D", d), ("1/sy", d_inv)):
            t = ((s * dd).astype(f32) + f32(p["zy"])).astype(f32)
            out[f"{name}, x{dn}, z before"] = np.clip(np.rint(t), 0, 255).astype(np.int64)
        t = np.rint((s * d).astype(f32)) + p["zy"]
        out[f"{name}, xD, z after"] = np.clip(t, 0, 255).astype(np.int64)
    return out


CASES = {  # C, K, kernel, groups
    "conv3x3": (16, 32, 3, 1),
    "conv1x1": (32, 64, 1, 1),
    "conv3x3_64": (64, 64, 3, 1),
}


def main(names):
    torch.set_num_threads(1)
    for name in names:
        for relu in (False, True):
            rng = np.random.default_rng([list(CASES).index(name), int(relu), 32])
            bad, total = {}, 0
            for _ in range(8):
                y, acc, d, p = onednn_conv_sum_f32(rng, *CASES[name], relu)
                total += y.size
                for fm, v in float_formulas(acc, d, p, relu).items():
                    bad[fm] = bad.get(fm, 0) + int((v.view(np.int32) != y.view(np.int32)).sum())
            print(f"{name} float output, relu={relu}: {total} outputs (bitwise float32)")
            for k, v in sorted(bad.items(), key=lambda kv: kv[1]):
                print(f"   {v:8d}  {k}")
    for name in names:
        for relu in (False, True):
            rng = np.random.default_rng([list(CASES).index(name), int(relu), 8])
            bad, total = {}, 0
            for _ in range(8):
                y, acc, aq, p = onednn_conv_sum(rng, *CASES[name], relu)
                total += y.size
                for pre in ("onednn_combined", "onednn_sequential"):
                    for fm, v in formulas(acc, aq, p, relu, pre).items():
                        key = f"{pre}: {fm}"
                        bad[key] = bad.get(key, 0) + int((v != y).sum())
            print(f"{name} in place, int8 output, relu={relu}: {total} outputs")
            for k, v in sorted(bad.items(), key=lambda kv: kv[1]):
                print(f"   {v:8d}  {k}")


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
