"""Images/s per built-in profile on the bundled model, and the time of a full sweep.

    python benchmarks/sweep.py [--model NAME] [--limit N] [--threads T]

Prints one row per profile (compile seconds, run seconds, images/s, simulated accuracy) and the
wall time of the whole sweep (model/data loading and float baseline included), measured in
this run.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        os.environ["NUMBA_NUM_THREADS"] = str(args.threads)

    from hwsim import experiments as ex
    from hwsim.profile import builtin_names, load_profile

    t0 = time.perf_counter()
    ctx = ex.load_context(args.model, "default", args.limit, args.batch_size)
    # JIT warm-up outside the timed rows (numba caches compiled kernels on disk)
    ex.run_profile(ex.load_context(args.model, "default", 8, 8), load_profile("int8-tflite"), 8)
    t_load = time.perf_counter() - t0
    print(f"model {ctx.model_name}, {len(ctx.y_test)} images, load + warm-up {t_load:.2f} s")
    print(f"{'profile':20s} {'compile s':>9s} {'run s':>8s} {'images/s':>10s} {'sim acc':>8s}")
    t1 = time.perf_counter()
    for name in builtin_names():
        r = ex.run_profile(ctx, load_profile(name), args.batch_size)
        print(f"{name:20s} {r.compile_seconds:9.2f} {r.seconds:8.2f} {r.images_per_s:10.0f} {100 * r.sim_accuracy:7.2f}%")
    total = time.perf_counter() - t1
    print(f"full sweep of {len(builtin_names())} profiles: {total:.1f} s "
          f"({total + t_load:.1f} s with loading and warm-up)")


if __name__ == "__main__":
    main()
