"""Throughput of hwsim's conv kernels beside PyTorch's int8 quantized conv (a script, not a test).

Shape: 64 -> 64 channels, 32x32, 3x3, pad 1, int8 operands (uint8 activations with zero point
128, symmetric int8 weights), batch 64 by default. Three accumulator models:

  (a) 32-bit accumulator that cannot overflow (the whole layer is one exact int8 GEMM): the public op
      ``ops.conv2d`` on the uint8 activation codes (what torch's conv reads), accumulators out (int32: the plan
      proves |acc| < 2^31; kernels.acc_dtype); (a64) the same with the codes passed as int64,
  (a') the same layer as the executor runs it: int8 GEMM + float32 requant + clamp to uint8 fused (torch's output),
  (b) 16-bit saturating accumulator, saturation after each chunk of 16 MACs,
  (c) 16-bit saturating accumulator, saturation after every MAC (R = 1),

each timed alternately with ``torch.ops.quantized.conv2d`` (engine x86 unless --engine) on the same data
with the same thread count (torch.set_num_threads == numba threads == BLAS threads); min of --repeat each.

    python benchmarks/kernels.py [--batch 64] [--threads 2] [--repeat 3] [--engine x86]
"""

from __future__ import annotations

import argparse
import time


def _best(fn, repeat):
    fn()  # warm-up (numba compilation, BLAS/torch init)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _best_pair(fn, ref, repeat):
    """(min seconds of fn, min seconds of ref), the two timed alternately (fn, ref, fn, ref, ...) so that a
    load change on a shared machine hits both: the ratio compares like with like."""
    fn(), ref()
    a, b = [], []
    for _ in range(repeat):
        for f, ts in ((fn, a), (ref, b)):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
    return min(a), min(b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--engine", default="x86", help="torch quantized engine (x86, fbgemm, onednn)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--cases", default="a,a64,b,c,a'", help="comma list of the cases to time (default all)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from hwsim import kernels, ops
    from hwsim.cpu import cpu_summary

    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:  # BLAS threads then follow OPENBLAS_NUM_THREADS / OMP_NUM_THREADS
        pass
    kernels.set_threads(args.threads)
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = args.engine

    N, C, H, K = args.batch, 64, 32, 3
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (N, C, H, H)).astype(np.int64)
    w = rng.integers(-128, 128, (C, C, K, K)).astype(np.int64)
    b = rng.integers(-1000, 1000, C).astype(np.int64)
    macs = N * C * H * H * C * K * K

    xt = torch._make_per_tensor_quantized_tensor(torch.tensor(x, dtype=torch.uint8), 0.02, 128)
    wt = torch._make_per_tensor_quantized_tensor(torch.tensor(w, dtype=torch.int8), 0.01, 0)
    packed = torch.ops.quantized.conv2d_prepack(wt, torch.tensor(b * 0.0002, dtype=torch.float32), [1, 1], [1, 1],
                                                [1, 1], 1)
    def torch_conv():
        torch.ops.quantized.conv2d(xt, packed, 0.5, 128)

    x8 = x.astype(np.uint8)
    cases = {
        "a: A=32, cannot overflow": (ops.Accumulator(bits=32, overflow="saturate"), x8),
        "a64: (a), int64 codes in": (ops.Accumulator(bits=32, overflow="saturate"), x),
        "b: A=16 saturate, R=16": (ops.Accumulator(bits=16, overflow="saturate", rows=16), x8),
        "c: A=16 saturate, R=1": (ops.Accumulator(bits=16, overflow="saturate", rows=1), x8),
    }
    wanted = set(args.cases.split(","))
    rows = []
    for name, (acc, xin) in cases.items():
        if name.split(":")[0] not in wanted:
            continue
        out = {}

        def run(acc=acc, xin=xin, out=out):
            out["r"] = ops.conv2d(xin, w, b, x_zero_point=128, padding=1, acc=acc)

        t, t_torch = _best_pair(run, torch_conv, args.repeat)
        st = out["r"][1]
        rows.append(dict(case=name, seconds=t, gmacs=macs / t / 1e9, torch_seconds=t_torch,
                         torch_gmacs=macs / t_torch / 1e9, ratio=t_torch / t, acc_events=st.acc_events,
                         partial_events=st.partial_events, dtype=str(out["r"][0].dtype)))
    # a': the executor's form of (a) (what torch's quantized conv also does): int8 GEMM + requant (float32, fbgemm's
    # arithmetic) + zero point + clamp to uint8 + clip count fused, no int64 accumulator tensor
    cfg = ops.Requant(mode="float32")
    zx, zw = 128, np.zeros(C, np.int64)
    plan = kernels.conv_plan(w, b, zx, zw, (1, 1), (1, 1, 1, 1), (1, 1), 1, ops.Accumulator(bits=32), 0, 255)
    if plan.gemm is not None and "a'" in wanted:
        epi = ops.core.fused_epilogue(ops.make_requant_params(0.02, [0.01], 0.5, cfg), cfg, 128, 0, 255, 0, 255, True,
                                      C, plan.gemm.acc_max)
        geom = np.array([K, K, 1, 1, 1, 1, H, H], np.int64)
        y8 = np.empty((N, C, H * H), np.uint8)
        t, t_torch = _best_pair(lambda: kernels.gemm_int8(x8, plan, geom, (1, 1, 1, 1), y8, epi), torch_conv,
                                args.repeat)
        rows.append(dict(case="a': A=32, requant to uint8", seconds=t, gmacs=macs / t / 1e9, torch_seconds=t_torch,
                         torch_gmacs=macs / t_torch / 1e9, ratio=t_torch / t, acc_events=0, partial_events=0,
                         dtype="uint8"))
    if args.json:
        import json
        print(json.dumps(dict(batch=N, threads=args.threads, engine=args.engine, macs=macs, cpu=cpu_summary(),
                              results=rows), indent=1))
        return
    print(f"cpu: {cpu_summary()}")  # the ratios depend on it (AMX / VNNI kernels)
    print(f"conv 64->64, 32x32, 3x3, pad 1, batch {N}, int8; threads {args.threads}; torch engine {args.engine}")
    for r in rows:
        print(f"{r['case']:<28s} {r['gmacs']:8.2f} GMAC/s ({r['seconds'] * 1e3:8.1f} ms, {r['dtype']} out)  torch "
              f"{r['torch_gmacs']:7.1f} GMAC/s ({r['torch_seconds'] * 1e3:.1f} ms)  ratio {r['ratio']:.3f}x  "
              f"events acc={r['acc_events']} partial={r['partial_events']}")


if __name__ == "__main__":
    main()
