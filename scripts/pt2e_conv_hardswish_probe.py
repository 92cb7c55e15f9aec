"""Probe: oneDNN's int8 convolution with a fused hard-swish (torch.compile's x86 lowering of pt2e's conv ->
hardswish -> quantize: torch.ops.onednn.qconv_pointwise(..., attr "hardswish"), ideep::attr_t::fuse_hardswish ->
eltwise_hardswish(alpha = 1/6, beta = 1/2)): which float32 chain gives its integers. A finding for a later pt2e
MobileNetV3 form (hwsim does not model a MAC layer with a fused hard-swish; docs/semantics.md section 11).

Run: ``PYTHONPATH=. python scripts/pt2e_conv_hardswish_probe.py``: per candidate, how many outputs differ."""
from __future__ import annotations

import numpy as np
import torch

from hwsim import ops
from hwsim.ops.add import fma_f32

f32 = np.float32


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    bad, total = {}, 0
    for C, K, k in ((16, 32, 3), (32, 64, 1), (64, 64, 3)):
        for _ in range(4):
            sx, zx = float(f32(rng.uniform(0.005, 0.03))), int(rng.integers(0, 40))
            sy, zy = float(f32(rng.uniform(0.01, 0.05))), int(rng.integers(0, 40))
            wq = rng.integers(-127, 128, (K, C, k, k)) // 2
            sw = rng.uniform(2e-3, 1e-2, K).astype(f32)
            b = rng.normal(0, 0.5, K).astype(f32)
            xq = rng.integers(0, 256, (8, C, 32, 32))
            pad = [k // 2] * 2
            pw = torch.ops.onednn.qconv_prepack(torch.from_numpy(wq.astype(np.int8)), torch.from_numpy(sw), sx, zx,
                                                [1, 1], pad, [1, 1], 1, None)
            y = torch.ops.onednn.qconv_pointwise.tensor(
                torch.from_numpy(xq.astype(np.uint8)).contiguous(memory_format=torch.channels_last), torch.tensor(sx),
                torch.tensor(zx, dtype=torch.int32), pw, torch.from_numpy(sw), torch.zeros(K, dtype=torch.int64),
                torch.from_numpy(b), [1, 1], pad, [1, 1], 1, sy, zy, torch.uint8, "hardswish", [], "").numpy()
            acc = torch.nn.functional.conv2d(torch.from_numpy((xq - zx).astype(np.float64)),
                                             torch.from_numpy(wq.astype(np.float64)), padding=k // 2).numpy()
            q = ops.make_onednn_requant_params(sx, sw, sy, bias=b, form="onednn_combined")
            c = (1, -1, 1, 1)
            v = ((acc.astype(f32) * q.pre_scale.reshape(c)).astype(f32) + q.bias_term.reshape(c)).astype(f32)
            sixth = f32(1) / f32(6)
            gates = {"fma(v, 1/6, 1/2)": fma_f32(v, sixth, f32(0.5)),
                     "fl32(v/6) + 1/2": ((v * sixth).astype(f32) + f32(0.5)).astype(f32),
                     "fl32(v + 3) / 6": ((v + f32(3)).astype(f32) / f32(6)).astype(f32)}
            total += y.size
            for gname, gt in gates.items():
                h = (v * np.clip(gt, f32(0), f32(1))).astype(f32)
                for dn, d in (("xD", q.multiplier.reshape(c)), ("x fl32(1/s_y)", f32(1.0 / np.float64(f32(sy))))):
                    for zn in ("z before", "z after"):
                        t = (h * d).astype(f32)
                        yy = np.rint((t + f32(zy)).astype(f32)) if zn == "z before" else np.rint(t) + zy
                        key = f"{gname}, {dn}, {zn}"
                        bad[key] = bad.get(key, 0) + int((np.clip(yy, 0, 255) != y).sum())
    print(total, "outputs")
    for key, v in sorted(bad.items(), key=lambda kv: kv[1]):
        print(f"   {v:8d}  {key}")


if __name__ == "__main__":
    main()
