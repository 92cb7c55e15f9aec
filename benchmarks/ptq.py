"""PTQ recipes × hardware profiles × bundled models: simulated accuracy and seconds per recipe.

    python benchmarks/ptq.py [--quick] [--models A,B] [--recipes R1,R2] [--profiles P1,P2]
                             [--seeds 3] [--limit N] [--lapq-loss mirror|simulator] [--lapq-maxfev N]
                             [--out benchmarks/results/ptq]

Each cell is compiled with the recipe on ``--seeds`` calibration subsets (profile key
calibration.seed = 0, 1, ...; AdaRound also gets the seed) and run in integers on the test
images; the table shows mean ± std of the simulated accuracy over the seeds and the mean
compile seconds (the recipe's cost: calibration, range search, LAPQ, ...). Writes
``OUT.csv`` (one row per run) and ``OUT.md`` (the table), measured in this run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import time
from pathlib import Path

FULL = {
    "models": ["smallcnn_baseline", "smallcnn_robust", "mobilenetv2"],
    "recipes": ["minmax", "minmax+bc", "mse", "mse+bc", "aciq", "aciq+bc", "aciq+bc_banner", "lp", "lp+bc", "lapq",
                "lapq+bc_banner", "wp", "adaround", "mse+cle_relu"],
    "profiles": ["int8-tflite", "int8-per-tensor", "w4a4", "w3a3", "int4-pow2", "w4-fp"],
}
QUICK = {
    "models": ["smallcnn_baseline", "mobilenetv2"],
    "recipes": ["minmax", "mse", "mse+bc", "aciq", "lp", "lapq", "wp", "mse+cle_relu"],
    "profiles": ["int8-per-tensor", "w4a4", "w3a3"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a subset: " + str(QUICK))
    ap.add_argument("--models")
    ap.add_argument("--recipes")
    ap.add_argument("--profiles")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="test images (default: the whole test split)")
    ap.add_argument("--lapq-loss", default="simulator", choices=["mirror", "simulator"])
    ap.add_argument("--lapq-maxfev", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/ptq")
    ap.add_argument("--lapq-compare", metavar="PROFILE",
                    help="instead of the grid: LAPQ on each model with the mirror and the simulator loss on PROFILE; "
                         "seconds, final losses, each result's loss under the other kind, accuracy")
    args = ap.parse_args()
    if args.lapq_compare:
        return lapq_compare(args.models.split(",") if args.models else FULL["models"], args.lapq_compare, args)
    grid = QUICK if args.quick else FULL
    models = args.models.split(",") if args.models else grid["models"]
    recipes = args.recipes.split(",") if args.recipes else grid["recipes"]
    profiles = args.profiles.split(",") if args.profiles else grid["profiles"]

    from hwsim import experiments as ex
    from hwsim.errors import HwsimError
    from hwsim.profile import load_profile
    from hwsim.ptq import load_recipe

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    t_all = time.perf_counter()
    for m in models:
        ctx = ex.load_context(m, "default", args.limit)
        print(f"# {m}: {len(ctx.y_test)} test images, float {100 * ctx.float_accuracy:.2f}%", flush=True)
        for prof_name in profiles:
            for rname in recipes:
                rec = load_recipe(rname)
                if rec.lapq is not None:
                    lq = dataclasses.replace(rec.lapq, loss=args.lapq_loss,
                                             **({"maxfev": args.lapq_maxfev} if args.lapq_maxfev is not None else {}))
                    rec = dataclasses.replace(rec, lapq=lq)
                for seed in range(args.seeds):
                    prof = load_profile(prof_name, {"calibration.seed": str(seed)})
                    r_seed = dataclasses.replace(rec, adaround={**rec.adaround, "seed": seed}) \
                        if rec.weight_rounding != "nearest" else rec
                    try:
                        r = ex.run_profile(ctx, prof, recipe=r_seed)
                    except HwsimError as e:
                        print(f"{m:18s} {prof_name:16s} {rname:16s} seed {seed}: skipped ({e})", flush=True)
                        rows.append({"model": m, "profile": prof_name, "recipe": rname, "seed": seed,
                                     "sim_accuracy": "", "float_accuracy": ctx.float_accuracy,
                                     "compile_seconds": "", "note": str(e)})
                        break
                    note = " | ".join(n for n in r.notes if n.startswith(("LAPQ", "wp", "CLE")))
                    rows.append({"model": m, "profile": prof_name, "recipe": rname, "seed": seed,
                                 "sim_accuracy": r.sim_accuracy, "float_accuracy": ctx.float_accuracy,
                                 "compile_seconds": round(r.compile_seconds, 2), "note": note})
                    print(f"{m:18s} {prof_name:16s} {rname:16s} seed {seed}: {100 * r.sim_accuracy:6.2f}%  "
                          f"{r.compile_seconds:7.1f} s  {note}", flush=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out.with_suffix(".md").write_text(markdown(rows, models, profiles, recipes, args, time.perf_counter() - t_all))
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.md')}")


def lapq_compare(models, profile_name, args) -> None:
    import numpy as np

    from hwsim import experiments as ex
    from hwsim.execute import accuracy, run_quantized
    from hwsim.profile import load_profile
    from hwsim.ptq import load_recipe
    from hwsim.ptq.lapq import _loss_fn

    print(f"{'model':18s} {'loss':9s} {'seconds':>8s} {'evals':>5s} {'L init':>7s} {'L final':>7s} "
          f"{'L_sim':>7s} {'L_mirror':>8s} {'acc %':>6s}")
    for m in models:
        ctx = ex.load_context(m, "default", args.limit)
        prof = load_profile(profile_name)
        for kind in ("mirror", "simulator"):
            rec = load_recipe("lapq")
            lq = dataclasses.replace(rec.lapq, loss=kind,
                                     **({"maxfev": args.lapq_maxfev} if args.lapq_maxfev is not None else {}))
            rec = dataclasses.replace(rec, lapq=lq)
            t0 = time.perf_counter()
            qg = ex.compile_for(ctx, prof, rec)
            sec = time.perf_counter() - t0  # calibration + Lp ranges + LAPQ
            info = qg.ptq["lapq"]
            # the same graph's loss under both kinds, on the same images and labels
            from hwsim.data import calibration_subset
            from hwsim.floatref import normalize, run_float

            x = normalize(ctx.graph, calibration_subset(ctx.data, rec.calibration_count(prof.calibration.images),
                                                        prof.calibration.seed))[:lq.images]
            labels = np.argmax(run_float(ctx.graph, x), axis=1)
            ls, lm = _loss_fn("simulator", x, labels)(qg), _loss_fn("mirror", x, labels)(qg)
            acc = accuracy(run_quantized(qg, ctx.x_test).logits, ctx.y_test)
            print(f"{m:18s} {kind:9s} {sec:8.1f} {info.evaluations:5d} {info.initial_loss:7.4f} {info.final_loss:7.4f} "
                  f"{ls:7.4f} {lm:8.4f} {100 * acc:6.2f}", flush=True)


def markdown(rows, models, profiles, recipes, args, seconds) -> str:
    import numpy as np

    lines = [f"PTQ benchmark: {args.seeds} calibration seed(s), LAPQ loss {args.lapq_loss}"
             f"{'' if args.lapq_maxfev is None else f', maxfev {args.lapq_maxfev}'}; simulated accuracy % "
             f"(mean ± std over seeds) / mean compile seconds; {os.cpu_count()} CPUs; total {seconds:.0f} s", ""]
    for m in models:
        fl = next((r["float_accuracy"] for r in rows if r["model"] == m), None)
        lines += [f"### {m} (float {100 * fl:.2f}%)" if fl is not None else f"### {m}", "",
                  "| recipe | " + " | ".join(profiles) + " |", "|---|" + "---|" * len(profiles)]
        for rn in recipes:
            cells = []
            for p in profiles:
                rs = [r for r in rows if (r["model"], r["profile"], r["recipe"]) == (m, p, rn)]
                acc = [100 * r["sim_accuracy"] for r in rs if r["sim_accuracy"] != ""]
                if not acc:
                    cells.append("n/a")
                    continue
                sec = np.mean([r["compile_seconds"] for r in rs if r["compile_seconds"] != ""])
                cells.append(f"{np.mean(acc):.2f} ± {np.std(acc):.2f} / {sec:.1f} s" if len(acc) > 1
                             else f"{acc[0]:.2f} / {sec:.1f} s")
            lines.append(f"| {rn} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
