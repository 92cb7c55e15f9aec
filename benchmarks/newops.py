"""Op-level timings of the ops of issue 16 beside the existing add / pools and PyTorch's quantized CPU ops
(a script, not a test).

One tensor of N x C x H x W int8 codes (default 32 x 64 x 16 x 16, an SE block's size at 32x32 input) and its
N x C x 1 x 1 gate. hwsim: the public functions with ``impl="fast"`` (activations: the table built once, then
``apply_table`` — what the executor runs per batch; the table build is timed on its own); PyTorch: the
quantized op on a quint8 tensor with the same codes (torch.backends.quantized.engine = "x86"). Every timing:
one warm-up call, then the minimum of ``--repeat`` calls; ratio = hwsim time / torch time, all from one run.

    python benchmarks/newops.py [--shape 32,64,16,16] [--repeat 20] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _best(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def rows(shape, repeat: int):
    import torch
    import torch.nn.functional as F

    from hwsim import ops
    from hwsim.ops import activation as A
    from hwsim.ops import reduce as R
    from hwsim.ops.mul import mul

    torch.backends.quantized.engine = "x86"
    n, c, h, w = shape
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(np.int64)
    x8 = x.astype(np.uint8)  # the executor's narrow tensors
    gate = rng.integers(0, 256, (n, c, 1, 1)).astype(np.int64)
    y2 = rng.integers(0, 256, shape).astype(np.int64)
    s, z = 0.05, 128
    qx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x8), s, z)
    qg = torch._make_per_tensor_quantized_tensor(torch.from_numpy(gate.astype(np.uint8)), 1 / 256, 0)
    qy = torch._make_per_tensor_quantized_tensor(torch.from_numpy(y2.astype(np.uint8)), s, z)
    out = []

    def row(op, hw, th=None, note=""):
        t_h = _best(hw, repeat)
        t_t = None if th is None else _best(th, repeat)
        out.append({"op": op, "hwsim_ms": t_h * 1e3, "torch_ms": None if t_t is None else t_t * 1e3,
                    "hwsim/torch": None if t_t is None else t_h / t_t, "note": note})

    for fn, form, tfun in (("sigmoid", "torch", lambda: torch.sigmoid(qx)),
                           ("hardsigmoid", "torch", lambda: F.hardsigmoid(qx)),
                           ("hardswish", "torch", lambda: torch.ops.quantized.hardswish(qx, 0.03, 10)),
                           ("tanh", "torch", lambda: torch.tanh(qx)),
                           ("silu", "exact", None)):
        out_s, out_z = (1 / 256, 0) if fn in ("sigmoid", "hardsigmoid") else (1 / 128, 128) if fn == "tanh" else (0.03, 10)
        table = A.build_table(fn, s, z, 0, 255, out_s, out_z, 0, 255, form=form)
        row(f"{fn} (table gather)", lambda t=table: A.apply_table(x8, t, 0), tfun, f"form {form}")
        row(f"{fn} table build", lambda fn=fn, form=form, o=(out_s, out_z): A.build_table(
            fn, s, z, 0, 255, o[0], o[1], 0, 255, form=form), None, "once per layer at compile")
    row("sigmoid table build (exact)", lambda: A.build_table("sigmoid", s, z, 0, 255, 1 / 256, 0, 0, 255), None,
        "once per layer at compile")
    for form, mult in (("float32 inverse (torch)", "inverse"),):
        row(f"mul N,C,H,W x N,C,1,1 {form}", lambda m=mult: mul(x8, gate, a_scale=s, a_zero_point=z, b_scale=1 / 256,
                                                                 b_zero_point=0, y_scale=0.05, y_zero_point=128,
                                                                 qmin=0, qmax=255, multiplier=m),
            lambda: torch.ops.quantized.mul(qx, qg, 0.05, 128))
    fixed = ops.Requant(mode="fixed")
    row("mul N,C,H,W x N,C,1,1 fixed (tflite)", lambda: mul(x8, gate, a_scale=s, a_zero_point=z, b_scale=1 / 256,
                                                            b_zero_point=0, y_scale=0.05, y_zero_point=128, qmin=0,
                                                            qmax=255, cfg=fixed, multiplier="requant"))
    row("add same shape (existing)", lambda: ops.add(x8, y2, a_scale=s, a_zero_point=z, b_scale=s, b_zero_point=z,
                                                     y_scale=0.1, y_zero_point=128, qmin=0, qmax=255),
        lambda: torch.ops.quantized.add(qx, qy, 0.1, 128))
    row("mean H,W raw_sum (torch)", lambda: R.mean_hw(x8, s, z, s, z, 0, 255, form="raw_sum"),
        lambda: torch.mean(qx, dim=(2, 3), keepdim=True))
    row("mean H,W exact", lambda: R.mean_hw(x8, s, z, s, z, 0, 255))
    row("mean H,W tflite_optimized", lambda: R.mean_hw(x8, s, z, s, z, 0, 255, form="tflite_optimized"))
    row("global_avg_pool (existing)", lambda: ops.global_avg_pool(x8, z),
        lambda: F.adaptive_avg_pool2d(qx, 1))
    row("avgpool 3x3/1 pad 1 count_include_pad=False raw_sum", lambda: R.avg_pool2d(
        x8, 3, 1, 1, z, count_include_pad=False, form="raw_sum"),
        lambda: F.avg_pool2d(qx, 3, 1, 1, count_include_pad=False))
    row("avgpool 3x3/1 pad 1 count_include_pad=True (existing)", lambda: ops.avg_pool2d(x8, 3, 1, 1, z),
        lambda: F.avg_pool2d(qx, 3, 1, 1))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="32,64,16,16", help="N,C,H,W")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from hwsim import kernels

    kernels.set_threads(args.threads)
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    out = rows(shape, args.repeat)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"shape {shape}, threads {args.threads}, min of {args.repeat} after one warm-up")
    print(f"{'op':58s} {'hwsim ms':>9s} {'torch ms':>9s} {'ratio':>7s}  note")
    for r in out:
        t = "" if r["torch_ms"] is None else f"{r['torch_ms']:9.3f}"
        q = "" if r["hwsim/torch"] is None else f"{r['hwsim/torch']:7.2f}"
        print(f"{r['op']:58s} {r['hwsim_ms']:9.3f} {t:>9s} {q:>7s}  {r['note']}")


if __name__ == "__main__":
    main()
