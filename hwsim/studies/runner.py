"""Run a study: train every (arch, variant, seed), evaluate every applicable column, reuse finished cells."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hwsim.errors import HwsimError
from hwsim.studies import cells
from hwsim.studies.spec import FULL_LAPQ, STUDIES, Column, Study, lapq_recipe

# --quick: tiny, for tests and CI (the "reduced size"): 1 epoch, 200 test images, a few columns, LAPQ with 8 evaluations on 64 images
QUICK = {"seeds": 1, "epochs": 1, "limit": 200, "lapq": (8, 64)}


@dataclass
class StudyRun:
    """A study's cells as rows (one dict per evaluation cell) and how many cells were computed now."""

    study: str
    title: str
    command: str
    seeds: int
    epochs: int
    limit: int | None
    quick: bool
    rows: list[dict] = field(default_factory=list)
    trained: int = 0
    trainings_reused: int = 0
    evaluated: int = 0
    evaluations_reused: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def resolve_recipe(spec, quick: bool, study: Study | None = None):
    """A column's recipe spec -> a hwsim.ptq Recipe ("lapq": LAPQ at the study's budget)."""
    from hwsim.ptq import load_recipe

    if spec == "lapq":
        return lapq_recipe(*(QUICK["lapq"] if quick else (study.lapq if study is not None else FULL_LAPQ)))
    return load_recipe(spec)


def plan(study: Study, quick: bool) -> list[tuple[Column, object]]:
    """Every (column, Recipe) of the study, validated (profiles and settings load) before any work."""
    from hwsim.profile import load_profile

    cols = [c for c in study.columns if not quick or study.quick_columns is None or c.label in study.quick_columns]
    out = []
    for c in cols:
        if c.profile != "float":
            load_profile(c.profile, c.settings)  # a bad key or value fails now, not after an hour
        for r in ((c.recipe,) if c.recipe is not None else study.recipes):
            if c.profile == "float" and r != study.recipes[0]:
                continue  # the float model does not depend on the recipe: one cell
            out.append((c, resolve_recipe(r, quick, study)))
    return out


def test_subset(ctx, limit: int | None):
    """``limit`` test images drawn without replacement by numpy's default_rng(0), in their original
    order. Not the first ``limit`` (``hwsim run --limit``): the default data's test split is ordered
    by class, so its first 200 images are the digits 0 and 1 only."""
    import numpy as np

    from hwsim.execute import accuracy

    n = len(ctx.y_test)
    if limit is None or limit >= n:
        return ctx
    idx = np.sort(np.random.default_rng(0).permutation(n)[:limit])
    fl = ctx.float_logits[idx]
    return dataclasses.replace(ctx, x_test=ctx.x_test[idx], y_test=ctx.y_test[idx], float_logits=fl,
                               float_accuracy=accuracy(fl, ctx.y_test[idx]))


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_study(name: str, out: str | Path | None = None, seeds: int | None = None, epochs: int | None = None,
              limit: int | None = None, archs: list[str] | None = None, quick: bool = False, quiet: bool = False,
              cache: str | Path | None = None, data: str = "default", command: str = "",
              log: Callable[[str], None] | None = None, jobs: int = 1) -> StudyRun:
    """Run (or resume) study ``name``; return its rows. Outputs are written by :mod:`hwsim.studies.output`.

    ``jobs`` > 1: the models (training, then its evaluation cells) run in that many worker processes
    (spawned; one torch and one numba thread each), rows still in the models' order. Trainings are
    seeded on one thread and the simulator is exact, so the cells do not depend on ``jobs``.
    """

    if name not in STUDIES:
        raise HwsimError(f"study {name!r}: unknown; allowed: {', '.join(STUDIES)}")
    study = STUDIES[name]
    seeds = seeds if seeds is not None else (QUICK["seeds"] if quick else 5)
    epochs = epochs if epochs is not None else (QUICK["epochs"] if quick else study.epochs)
    limit = limit if limit is not None else (QUICK["limit"] if quick else None)
    subset = None  # the training split is ordered by class: a prefix would drop classes
    if seeds < 1 or epochs < 1 or (limit is not None and limit < 1) or jobs < 1:
        raise HwsimError(f"study {name}: --seeds ({seeds}), --epochs ({epochs}), --limit ({limit}) and --jobs "
                         f"({jobs}) must be positive")
    archs = list(archs or study.archs)
    try:
        import torch  # noqa: F401 - a study trains its models
    except ImportError:
        raise HwsimError("hwsim study trains models: PyTorch is required: pip install 'hwsim[torch]'") from None
    from frontends.pytorch.models import build_model

    for a in archs:
        try:
            build_model(a, 10, 1)
        except Exception as e:  # noqa: BLE001 - the frontend's message names the arch
            raise HwsimError(f"--arch {a!r}: {e}") from None
    out = Path(out if out is not None else Path("results") / "studies" / name)
    cache = Path(cache) if cache is not None else out.parent / "_train"
    for d in (out / "cells", cache):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HwsimError(f"{d}: cannot create the study's directory ({e.strerror or e})") from None
    grid = plan(study, quick)
    # seed-major: an interrupted study has every variant for its first seeds (rerun with --seeds K)
    models = [(a, v, s) for a in archs for s in range(seeds) for v in study.variants]
    n_evals = sum(1 for _a, v, _s in models for c, _r in grid if c.applies(v))
    total = len(models) + n_evals
    run = StudyRun(name, study.title, command, seeds, epochs, limit, quick)
    t0 = time.perf_counter()
    say = log if log is not None else (lambda m: None if quiet else print(m, file=sys.stderr, flush=True))
    job = {"name": name, "quick": quick, "epochs": epochs, "data": data, "limit": limit, "subset": subset,
           "cache": str(cache), "out": str(out)}
    done = [0, 0]  # cells counted (models collected), cells reported since (the model running here)

    def collect(idx: int, doc: dict, ran: bool, train_s: float, evals: list[dict]) -> None:
        """Count one model's work (in the models' order: the rows do not depend on --jobs)."""
        arch, variant, seed = models[idx]
        run.trained += ran
        run.trainings_reused += not ran
        run.train_seconds += train_s if ran else 0.0
        for e in evals:
            run.evaluated += e["now"]
            run.evaluations_reused += not e["now"]
            run.eval_seconds += e["seconds"] if e["now"] else 0.0
        done[0], done[1] = done[0] + 1 + len(evals), 0
        for (col, rec), e in zip([g for g in grid if g[0].applies(variant)], evals):
            res = e["res"]
            run.rows.append({
                "study": name, "arch": arch, "variant": variant.name, "seed": seed, "column": col.label,
                "group": col.group, "x": col.x if col.x is not None else col.label, "profile": col.profile,
                "settings": ";".join(f"{k}={v}" for k, v in col.settings.items()),
                "recipe": "" if col.profile == "float" else rec.name, "mode": res["mode"],
                "correct": res["correct"], "total": res["total"], "float_correct": res["float_correct"],
                "overflow_events": res["overflow_events"], "bops": "" if res["bops"] is None else res["bops"],
                "bops_acc": "" if res.get("bops_acc") is None else res["bops_acc"],
                "train_key": doc["key"], "export": variant.export, "eval_key": e["key"]})

    def tell(m: str) -> None:
        say(f"[study {name}] {m}")

    work = [(i, arch, study.variants.index(v), seed) for i, (arch, v, seed) in enumerate(models)]
    if jobs == 1 or len(models) == 1:
        def here(m: str) -> None:
            done[1] += 1
            tell(f"{done[0] + done[1]}/{total} cells, {_fmt_time(time.perf_counter() - t0)} elapsed: {m}")

        for i, arch, vi, seed in work:
            collect(i, *model_work(job, arch, vi, seed, here))
    else:
        _run_parallel(job, work, jobs, collect, lambda: f"{done[0]}/{total} cells, "
                      f"{_fmt_time(time.perf_counter() - t0)} elapsed", tell)
    run.seconds = time.perf_counter() - t0
    say(f"[study {name}] {total}/{total} cells in {_fmt_time(run.seconds)}: trained {run.trained} "
        f"(reused {run.trainings_reused}), evaluated {run.evaluated} (reused {run.evaluations_reused})")
    return run


def model_work(job: dict, arch: str, vi: int, seed: int, say: Callable[[str], None]) -> tuple:
    """Train (or reuse) one model and evaluate (or reuse) its cells -> (doc, trained now?, training
    seconds, [{"key", "res", "now", "seconds"}] in the grid's order of the columns that apply)."""
    from hwsim import experiments as ex
    from hwsim.profile import load_profile

    study = STUDIES[job["name"]]
    variant = study.variants[vi]
    cache, out, data, limit = Path(job["cache"]), Path(job["out"]), job["data"], job["limit"]
    tcfg = cells.train_config(arch, data, job["epochs"], seed, variant.options, job["subset"])
    t1 = time.perf_counter()
    doc, ran = cells.ensure_trained(cache, tcfg, (variant.export,))
    train_s = time.perf_counter() - t1
    if ran:
        say(f"trained {arch} {variant.name} seed {seed} ({train_s:.1f} s, test {100 * doc['test_acc'][-1]:.1f} %)")
    model_path = cache / doc["exports"][variant.export]
    ctx = None
    evals = []
    for col, rec in plan(study, job["quick"]):
        if not col.applies(variant):
            continue
        ekey = cells.config_key(cells.eval_config(doc["key"], variant.export, col, rec.to_json(), data, limit))
        path = out / "cells" / f"{ekey}.json"
        res = cells.read_cell(path)
        if res is not None:
            evals.append({"key": ekey, "res": res, "now": False, "seconds": 0.0})
            continue
        t2, c2 = time.perf_counter(), time.process_time()
        if ctx is None:
            ctx = test_subset(ex.load_context(str(model_path), data), limit)
        n = len(ctx.y_test)
        fl = int(round(ctx.float_accuracy * n))
        if col.profile == "float":
            res = {"correct": fl, "total": n, "float_correct": fl, "overflow_events": 0, "bops": None,
                   "bops_acc": None, "mode": "float"}
        else:
            r = ex.run_profile(ctx, load_profile(col.profile, col.settings), recipe=rec)
            res = {"correct": int(round(r.sim_accuracy * n)), "total": n, "float_correct": fl,
                   "overflow_events": int(r.overflow_events),
                   "bops": (r.cost or {}).get("totals", {}).get("bops"),
                   "bops_acc": (r.cost or {}).get("totals", {}).get("bops_acc"),
                   "mode": "weight-only" if r.weight_only else "integer"}
        res["key"] = ekey
        res["seconds"] = round(time.perf_counter() - t2, 3)  # timing only (wall, CPU): not in the CSV
        res["cpu_seconds"] = round(time.process_time() - c2, 3)
        cells.write_cell(path, res)
        evals.append({"key": ekey, "res": res, "now": True, "seconds": res["seconds"]})
        say(f"{arch} {variant.name} seed {seed} · {col.label} · {rec.name}: "
            f"{100 * res['correct'] / res['total']:.1f} % ({res['seconds']:.1f} s)")
    return doc, ran, train_s, evals


def _worker_init() -> None:
    """A worker process: one numba, BLAS and torch thread (the jobs share the cores; the trainings set torch's
    one thread themselves). The BLAS libraries also read THREAD_ENV, set to 1 by :func:`_run_parallel` before
    the spawn: numpy's OpenBLAS had started a second thread in each worker, two workers spinning four threads
    on two cores."""
    from hwsim.scaleout import limit_threads

    limit_threads(1)


def _worker(job: dict, arch: str, vi: int, seed: int) -> str:
    """model_work in a worker: progress lines on its stderr, the result back as JSON text."""
    import json

    tag = f"[study {job['name']}] worker {os.getpid()}:"
    return json.dumps(model_work(job, arch, vi, seed, lambda m: print(f"{tag} {m}", file=sys.stderr, flush=True)))


def _run_parallel(job: dict, work: list, jobs: int, collect: Callable, where: Callable[[], str],
                  tell: Callable[[str], None]) -> None:
    """Run the models on ``jobs`` spawned processes; hand each result to ``collect`` in the models' order."""
    import json
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from hwsim.scaleout import kill_pool, restore_env, set_thread_env

    saved = set_thread_env(1)  # read by BLAS when a worker imports numpy (spawned on submit)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init)
    try:
        futures = [pool.submit(_worker, job, arch, vi, seed) for _i, arch, vi, seed in work]
        for (i, arch, vi, seed), fut in zip(work, futures):
            doc, ran, train_s, evals = json.loads(fut.result())
            collect(i, doc, ran, train_s, evals)
            tell(f"{where()}: {arch} {STUDIES[job['name']].variants[vi].name} seed {seed} done")
    except BaseException:  # Ctrl-C, SIGTERM (hwsim's CLI makes it an interrupt) or a failed model: stop the workers
        kill_pool(pool)
        raise
    finally:
        restore_env(saved)
    pool.shutdown(wait=True)
