"""Sweeps that scale out: (profile x recipe x data shard) tasks, run serially, on local worker
processes or on a Ray cluster, merged exactly, written atomically, resumable.

The task model (docs/scaleout.md):

- an **entry** is one (profile, settings, recipe) of the plan (:func:`hwsim.experiments.plan_sweep`).
  Its *compile task* calibrates once, on the profile's small calibration subset, and returns the
  :class:`~hwsim.compile.QuantizedGraph` with the entry's static fields (certificates, hardware
  cost, dead channels, notes). Workers get the compiled graph as a task argument (pickled
  in-process by multiprocessing / Ray; model *files* never use pickle);
- a **shard** is a contiguous range ``[start, stop)`` of the test images, its ends multiples of
  the batch size, so a shard runs exactly the batches of the serial run (integer results do not
  depend on batching; the float32 math of weight-only profiles and of the fake-quant mirror could);
- a *float task* (one per shard) runs the float model on the shard's images, batched as the serial
  run batches the split, and returns its predictions and correct count (the float baseline);
- a *run task* (entry, shard) executes the compiled graph on its images with the run-wide image
  number of its first image (stochastic rounding draws depend on that number, never on the
  shard) and returns **integer counts only**: images, correct predictions, predictions equal to
  the float model's, fake-quant correct predictions, and per layer outputs, accumulator and
  partial-sum overflow events and clipped values;
- the **merge** sums those integers; every rate is recomputed from the sums (``count / n``, the
  same float the serial run computes), so a sharded run equals the serial run bit for bit. Only
  timing differs: ``seconds`` is the sum of the run tasks' execution time.

Executors: ``serial`` (in this process), ``processes`` (a :class:`~concurrent.futures.ProcessPoolExecutor`
with the ``spawn`` start method, threads per worker = cores // workers) and ``ray`` (``ray.init()``
locally or ``--ray-address``; the optional extra ``hwsim[ray]``). The scheduling is theirs; this
module only submits tasks and collects futures.

Resume: with a work directory each task's result is written atomically (:func:`hwsim.safeio.atomic_write`)
as JSON of integers the moment it arrives, under a key that hashes the model's bytes, the data,
the profile's fields, the recipe, the shard bounds and the hwsim version. A rerun of the same
plan skips every task whose file exists with the same key; a file with another key is a
one-line error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hwsim.errors import HwsimError
from hwsim.ops import registry as _op_registry

EXECUTORS = ("local", "ray")
RESULT_FORMAT = 1  # of the task files; part of every key
# the layers a RunResult reports: every op that requantizes to its own grid (can clip or overflow) — conv2d,
# linear, add, concat and the table / mul ops — from the op registry (average pools and moves keep their grid)
COUNTED_OPS = tuple(n for n in _op_registry.names_where(output_grid="own") if not _op_registry.get(n).folds_into_producer)
LAYER_COUNTS = ("outputs", "acc_events", "partial_events", "clipped")  # per layer, summed over shards
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_thread_env(n: int) -> dict:
    """THREAD_ENV set to ``n`` (read by BLAS / OpenMP when a spawned worker starts); returns the values it replaced
    for :func:`restore_env`."""
    saved = {k: os.environ.get(k) for k in THREAD_ENV}
    os.environ.update({k: str(n) for k in THREAD_ENV})
    return saved


def restore_env(saved: dict) -> None:
    """Put back the environment values :func:`set_thread_env` replaced (None: the variable was unset)."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ----------------------------------------------------------------------------- shards
def shard_bounds(n: int, batch_size: int, shard_size: int | None = None) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``n`` images; every start is a multiple of ``batch_size``.

    ``shard_size`` is rounded up to a multiple of ``batch_size`` (a shard then runs the serial run's
    own batches); None: one shard.
    """
    if batch_size < 1:
        raise HwsimError(f"--batch-size {batch_size}: must be at least 1")
    if shard_size is None or shard_size >= n:
        return [(0, n)]
    if shard_size < 1:
        raise HwsimError(f"--shard-size {shard_size}: must be a positive number of images")
    size = -(-shard_size // batch_size) * batch_size
    return [(s, min(s + size, n)) for s in range(0, n, size)]


# ----------------------------------------------------------------------------- the tasks (any process)
def limit_threads(threads: int | None) -> None:
    """Numba, BLAS and (if loaded) torch threads of this worker: N workers must not oversubscribe."""
    if not threads:
        return
    from hwsim import kernels

    kernels.set_threads(min(threads, _numba_max_threads()))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scipy
        pass
    else:
        threadpool_limits(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _numba_max_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def compile_task(graph, profile, recipe, calib: np.ndarray, threads: int | None = None,
                 progress: Callable | None = None) -> tuple:
    """Compile one entry -> (QuantizedGraph, static fields as JSON data, compile seconds).

    ``calib``: the normalised calibration images (the profile's small subset, chosen by the caller).
    The numba JIT warm-up (a 2-image run) is charged to the compile time, as ``run_profile`` always did.
    """
    from hwsim.compile import compile_model
    from hwsim.cost import graph_cost
    from hwsim.execute import _new_stats, run_quantized
    from hwsim.report import to_json_text

    limit_threads(threads)
    t0 = time.perf_counter()
    qg = compile_model(graph, profile, calib, recipe=None if recipe is None or recipe.is_profile else recipe,
                       progress=progress)
    run_quantized(qg, calib[:2], batch_size=2)
    seconds = time.perf_counter() - t0
    static = {"profile": profile.name, "description": profile.description, "recipe": qg.recipe,
              "weight_only": bool(qg.weight_only), "layers": [st.to_json() for st in _new_stats(qg)],
              "dead_channels": qg.dead_channels, "notes": list(qg.notes), "cost": graph_cost(qg)}
    # through JSON once, here: a result merged from files and one merged in memory are the same data
    return qg, json.loads(to_json_text(static)), seconds


def float_task(graph, x, y: np.ndarray, batch_size: int, name: str, data: str, threads: int | None = None) -> dict:
    """The float baseline on one shard -> its predictions (argmax, ties to the lowest index, as
    :func:`hwsim.execute.accuracy`) and correct count. Batched as :func:`hwsim.experiments.float_logits`
    batches the whole split, so the predictions equal the serial run's."""
    from hwsim.experiments import float_logits

    limit_threads(threads)
    pred = np.argmax(float_logits(graph, x, batch_size, name, data), axis=1) if len(y) else np.zeros(0, np.int64)
    return {"images": len(y), "correct": int(np.count_nonzero(pred == y)), "pred": pred.tolist()}


def run_task(qg, x, y: np.ndarray, float_pred: np.ndarray, offset: int, batch_size: int,
             with_fakequant: bool = False, threads: int | None = None, task_id: str | None = None,
             progress: Callable | None = None) -> dict:
    """Run the compiled graph on one shard -> integer counts (and the seconds spent executing).

    ``x``: the shard's normalised images (an array, or a streamed source whose slices are arrays);
    ``offset``: the run-wide number of ``x[0]``; ``float_pred``: the float model's predictions;
    ``progress(images_done)`` in this process (worker processes report through their queue).
    """
    from hwsim.execute import run_quantized

    limit_threads(threads)
    n = len(y)
    if n:  # numba JIT / cache load in this process: not throughput
        run_quantized(qg, np.asarray(x[:min(2, n)]), batch_size=2)
    mirror = None
    if with_fakequant and not qg.weight_only:
        from hwsim.compare import _mirror

        mirror = _mirror()
    layers = np.zeros((len(qg.layers), len(LAYER_COUNTS)), np.int64)
    sim_correct = agree = fq_correct = 0
    seconds = 0.0
    for i in range(0, n, batch_size):
        xb, yb = np.asarray(x[i:i + batch_size]), y[i:i + batch_size]
        t0 = time.perf_counter()
        out = run_quantized(qg, xb, batch_size=batch_size, offset=offset + i)
        seconds += time.perf_counter() - t0
        pred = np.argmax(out.logits, axis=1)  # ties -> lowest index, as execute.accuracy
        sim_correct += int(np.count_nonzero(pred == yb))
        agree += int(np.count_nonzero(pred == float_pred[i:i + batch_size]))
        layers += np.array([[getattr(st, k) for k in LAYER_COUNTS] for st in out.layers], np.int64).reshape(layers.shape)
        if with_fakequant:  # weight-only: the mirror is the simulator (experiments.fakequant_accuracy)
            fq = pred if mirror is None else np.argmax(mirror(qg, xb)[0], axis=1)
            fq_correct += int(np.count_nonzero(fq == yb))
        _report(task_id, min(i + batch_size, n))
        if progress:
            progress(min(i + batch_size, n))
    return {"images": n, "sim_correct": sim_correct, "agree": agree,
            "fq_correct": fq_correct if with_fakequant else None,
            "layers": layers.tolist(), "seconds": seconds}


# progress of run tasks: (task id, images done in that task) -> a callback in this process, or a
# queue back to the parent in a worker process (set by _init_worker)
_SINK: Callable[[str, int], None] | None = None


def _report(task_id: str | None, done: int) -> None:
    if _SINK is not None and task_id is not None:
        _SINK(task_id, done)


def _init_worker(threads: int, queue) -> None:
    global _SINK
    limit_threads(threads)
    _SINK = lambda tid, done: queue.put((tid, done))  # noqa: E731


# ----------------------------------------------------------------------------- exact merge
def merge(static: dict, counts: list[dict], compile_seconds: float, *, model: str, data: str,
          float_accuracy: float, settings: dict):
    """An entry's RunResult from its static fields and its shards' counts: sums of integers, rates from sums."""
    from hwsim.execute import LayerStats
    from hwsim.experiments import RunResult

    n = sum(c["images"] for c in counts)
    tot = np.zeros((len(static["layers"]), len(LAYER_COUNTS)), np.int64)
    for c in counts:
        tot += np.asarray(c["layers"], np.int64).reshape(tot.shape)
    layers = []
    for lay, row in zip(static["layers"], tot.tolist()):
        if lay["op"] not in COUNTED_OPS:
            continue
        st = LayerStats(lay["name"], lay["op"], lay["kind"], **dict(zip(LAYER_COUNTS, row)),
                        **{k: lay[k] for k in ("headroom_bits", "partial_headroom_bits", "certified",
                                               "min_acc_bits", "min_partial_bits")})
        layers.append(st.to_json())
    seconds = sum(c["seconds"] for c in counts)
    fq = None if counts[0]["fq_correct"] is None else (sum(c["fq_correct"] for c in counts) / n if n else 0.0)
    return RunResult(
        profile=static["profile"], description=static["description"], model=model, data=data, images=n,
        float_accuracy=float_accuracy, sim_accuracy=sum(c["sim_correct"] for c in counts) / n if n else 0.0,
        weight_only=static["weight_only"], seconds=seconds, compile_seconds=compile_seconds,
        images_per_s=n / seconds if seconds > 0 else float("inf"),
        agreement=sum(c["agree"] for c in counts) / n if n else 0.0,
        layers=layers, dead_channels=static["dead_channels"], notes=static["notes"], settings=dict(settings),
        fakequant_accuracy=fq, recipe=static["recipe"], cost=static["cost"])


# ----------------------------------------------------------------------------- task keys
def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, (bytes, bytearray, memoryview)) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def model_digest(graph) -> str:
    """The model's content: graph structure and every tensor's bytes (not the file's zip timestamps)."""
    h = hashlib.sha256()
    h.update(json.dumps({"inputs": [dataclasses.asdict(i) for i in graph.inputs],
                         "nodes": [dataclasses.asdict(n) for n in graph.nodes], "outputs": list(graph.outputs),
                         "metadata": graph.metadata}, sort_keys=True, default=str).encode())
    for name in sorted(graph.tensors):
        t = np.ascontiguousarray(graph.tensors[name])
        h.update(f"{name}:{t.dtype.str}:{t.shape}".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def array_digest(a) -> str:
    """An in-memory array's bytes, or a streamed source's identity (its files' sizes and mtimes, its rows)."""
    ident = getattr(a, "identity", None)
    if ident is not None:
        return _sha(ident())
    a = np.ascontiguousarray(a)
    return _sha(f"{a.dtype.str}:{a.shape}", a.tobytes())


def entry_key(model: str, data: str, profile, recipe) -> str:
    from hwsim import __version__
    from hwsim.profile import to_dict

    return _sha("hwsim-sweep-entry", RESULT_FORMAT, __version__, model, data, to_dict(profile),
                dataclasses.asdict(recipe) if recipe is not None else None)


def shard_key(entry: str, start: int, stop: int, batch_size: int, with_fakequant: bool) -> str:
    return _sha("hwsim-sweep-shard", entry, start, stop, batch_size, bool(with_fakequant))


# ----------------------------------------------------------------------------- the work directory
class WorkDir:
    """Task results as files: ``sweep.json`` (the plan's keys), ``entry-E.json`` (static fields of a
    compiled entry), ``shard-E-S.json`` (counts of a run task), ``float-S.json`` (the float baseline's
    predictions on shard S). Every file is written atomically."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        from hwsim.safeio import atomic_write

        self.path = Path(path)
        try:
            self.path.mkdir(exist_ok=True)
        except OSError as e:
            raise HwsimError(f"--resume {path}: cannot create the work directory ({e.strerror})") from None
        if not self.path.is_dir():
            raise HwsimError(f"--resume {path}: not a directory")
        mf = self.path / "sweep.json"
        if mf.exists():
            old = self._read(mf)
            if old != manifest:
                raise HwsimError(f"--resume {path}: {mf.name} describes another sweep ({_first_difference(old, manifest)}); "
                                 "give a new directory or delete this one")
        else:
            atomic_write(mf, json.dumps(manifest, indent=1) + "\n")

    def _read(self, p: Path) -> dict:
        from hwsim.safeio import load_json

        try:
            raw = p.read_bytes()
        except OSError as e:
            raise HwsimError(f"{p}: cannot read ({e.strerror})") from None
        doc = load_json(raw, str(p))
        if not isinstance(doc, dict):
            raise HwsimError(f"{p}: not a hwsim sweep task file (expected a JSON object)")
        return doc

    def entry_file(self, e: int) -> Path:
        return self.path / f"entry-{e:04d}.json"

    def shard_file(self, e: int, s: int) -> Path:
        return self.path / f"shard-{e:04d}-{s:04d}.json"

    def float_file(self, s: int) -> Path:
        return self.path / f"float-{s:04d}.json"

    def load(self, p: Path, key: str, fields: tuple[str, ...]) -> dict | None:
        """The result in ``p`` if it exists (None if not); another key or a missing field is an error."""
        if not p.exists():
            return None
        doc = self._read(p)
        if doc.get("key") != key:
            raise HwsimError(f"--resume {self.path}: {p.name} holds the result of another task (key {str(doc.get('key'))[:12]}..., "
                             f"this plan's is {key[:12]}...): the model, data, profile, recipe, shard bounds or hwsim "
                             "version changed; give a new directory or delete this one")
        missing = [k for k in fields if k not in doc]
        if missing:
            raise HwsimError(f"{p}: missing field(s) {', '.join(missing)} (not a complete hwsim task result)")
        return doc

    def save(self, p: Path, doc: dict) -> None:
        from hwsim.report import to_json_text
        from hwsim.safeio import atomic_write

        atomic_write(p, to_json_text(doc))


def _first_difference(old: dict, new: dict) -> str:
    for k in ("format", "version", "images", "shards"):
        if old.get(k) != new.get(k):
            return f"{k} {str(old.get(k))[:40]} there, {str(new.get(k))[:40]} now"
    a, b = old.get("tasks", []), new.get("tasks", [])
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            same = x.get("name") == y.get("name") if isinstance(x, dict) else False
            return (f"task {i} ({y.get('name', '?')}): another key (model, data, profile fields or recipe changed)"
                    if same else f"task {i} was {x.get('name', '?') if isinstance(x, dict) else x} and is now {y.get('name', '?')}")
    return f"{len(a)} tasks there, {len(b)} now"


ENTRY_FIELDS = ("key", "static", "compile_seconds")
SHARD_FIELDS = ("key", "images", "sim_correct", "agree", "fq_correct", "layers", "seconds")
FLOAT_FIELDS = ("key", "images", "correct", "pred")


# ----------------------------------------------------------------------------- executors
class SerialExecutor:
    """Runs each task when it is submitted, in this process (``--workers 1``)."""

    workers = 1

    def submit(self, fn, *args, **kwargs) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - handed to the caller through the future, as a pool does
            f.set_exception(e)
        return f

    def poll(self) -> list[tuple[str, int]]:
        return []

    def shutdown(self, kill: bool = False) -> None:
        pass


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread while the block runs (as Ctrl-C does), so that
    ``finally`` clauses stop worker processes (:func:`kill_pool`) instead of the interpreter exiting at once and
    leaving spawned workers running their tasks to the end. Outside the main thread: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def kill_pool(pool) -> None:
    """Stop a :class:`~concurrent.futures.ProcessPoolExecutor` now: queued tasks cancelled, running ones
    terminated (their results were never written: a resumed run redoes them), the processes reaped."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # the standard library keeps them here
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(10)


class ProcessExecutor:
    """``workers`` local processes (spawn), each limited to cores // workers threads."""

    def __init__(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")
        self.queue = ctx.Queue()
        # BLAS libraries read their thread count when the worker imports them: set it in the
        # environment the workers inherit (numba and torch are limited again in _init_worker)
        self._saved = set_thread_env(self.threads)
        self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(self.threads, self.queue))

    def submit(self, fn, *args, **kwargs) -> Future:
        return self.pool.submit(fn, *args, **kwargs)

    def poll(self) -> list[tuple[str, int]]:
        import queue as q

        out = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except (q.Empty, OSError, ValueError):
                return out

    def shutdown(self, kill: bool = False) -> None:
        if kill:
            kill_pool(self.pool)
        else:
            self.pool.shutdown(wait=True, cancel_futures=True)
        restore_env(self._saved)
        self.queue.close()


class RayExecutor:
    """Tasks on Ray: the cluster at ``address`` (``ray.init(address=...)``), else a local Ray started
    here with ``workers`` CPUs (None: every core) and stopped afterwards. A Ray session already initialised by the caller
    is used as it is and left running."""

    def __init__(self, workers: int | None, address: str | None = None):
        try:
            import ray
        except ModuleNotFoundError as e:
            if e.name != "ray":
                raise
            raise HwsimError("--executor ray needs Ray: pip install 'hwsim[ray]'") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            # the workers import hwsim from where this process does (a source checkout included)
            root = str(Path(__file__).resolve().parents[1])
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
                                **{k: "1" for k in THREAD_ENV}}}
            kw = {"address": address} if address else ({"num_cpus": workers} if workers else {})
            try:
                ray.init(runtime_env=env, include_dashboard=False, logging_level="ERROR", log_to_driver=False, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise HwsimError(f"--executor ray{f' --ray-address {address}' if address else ''}: cannot start or reach "
                                 f"Ray ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
            self.started = True
        self.workers = int(ray.cluster_resources().get("CPU", workers or 1))
        self.threads = 1  # one CPU per task
        self._remote: dict = {}

    def submit(self, fn, *args, **kwargs) -> Future:
        r = self._remote.get(fn)
        if r is None:
            r = self._remote[fn] = self.ray.remote(num_cpus=1, max_retries=0)(fn)
        return r.remote(*args, **kwargs).future()

    def poll(self) -> list[tuple[str, int]]:
        return []

    def shutdown(self, kill: bool = False) -> None:  # a local Ray stopped here takes its running tasks with it
        if self.started:
            self.ray.shutdown()


def make_executor(executor: str = "local", workers: int | None = None, ray_address: str | None = None):
    """The executor of ``hwsim sweep``: ``workers`` None means 1 locally, every core for a local Ray."""
    if executor == "local" and workers is None:
        workers = 1
    if workers is not None and workers < 1:
        raise HwsimError(f"--workers {workers}: must be at least 1")
    if executor == "ray":
        return RayExecutor(workers, ray_address)
    if executor != "local":
        raise HwsimError(f"--executor {executor!r}: allowed {', '.join(EXECUTORS)}")
    if ray_address:
        raise HwsimError("--ray-address needs --executor ray")
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)


# ----------------------------------------------------------------------------- the scheduler
@dataclass
class SweepRun:
    """What a sweep produced and did: results in plan order, task names run here and found on disk."""

    results: list
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    tasks: int = 0


@dataclass
class Progress:
    """Tasks and images done across workers (``on_progress(self)`` after every change)."""

    tasks_total: int
    images_total: int
    tasks_done: int = 0
    images_done: int = 0
    _partial: dict = field(default_factory=dict)

    def task_images(self, tid: str, done: int) -> None:
        prev = self._partial.get(tid, 0)
        if done > prev:
            self.images_done += done - prev
            self._partial[tid] = done


def run_sweep(ctx, plan: list[tuple], batch_size: int = 256, *, with_fakequant: bool = False,
              executor=None, shard_size: int | None = None, work_dir: str | os.PathLike | None = None,
              on_result: Callable | None = None, on_progress: Callable | None = None) -> SweepRun:
    """Run a plan of (profile, settings, recipe) entries as compile and run tasks on ``executor``.

    Results are returned in plan order and equal the serial run's (timing aside); ``on_result(r)``
    is called as each entry completes, ``on_progress(Progress)`` as tasks and images finish.
    """
    from hwsim.experiments import calibration_images
    from hwsim.ptq import load_recipe

    ex = executor or SerialExecutor()
    n = len(ctx.y_test)
    shards = shard_bounds(n, batch_size, shard_size)
    entries = [(prof, dict(combo), load_recipe(rest[0] if rest else None)) for prof, combo, *rest in plan]
    names = [_entry_name(prof, combo) for prof, combo, _ in entries]
    wd = None
    if work_dir is not None:  # task keys: hashes of everything a result depends on (only to resume)
        from hwsim import __version__

        mkey, dkey = model_digest(ctx.graph), _sha(ctx.data_spec, array_digest(ctx.x_test), array_digest(ctx.y_test),
                                                    array_digest(ctx.data.x_train), array_digest(ctx.data.y_train))
        ekeys = [entry_key(mkey, dkey, prof, rec) for prof, _, rec in entries]
        skeys = [[shard_key(k, a, b, batch_size, with_fakequant) for a, b in shards] for k in ekeys]
        fkeys = [shard_key(_sha(mkey, dkey, "float"), a, b, batch_size, False) for a, b in shards]
        wd = WorkDir(work_dir, {"format": "hwsim-sweep", "version": __version__, "images": n,
                                "shards": [list(s) for s in shards],
                                "tasks": [{"name": nm, "key": k} for nm, k in zip(names, ekeys)]})
    # the float baseline: given (ctx.float_logits), or one float task per shard (load_context(float_baseline=False))
    float_pred: list = [None] * len(shards)
    float_correct: list = [None] * len(shards)
    lazy_float = ctx.float_logits is None
    if not lazy_float:
        whole = np.argmax(ctx.float_logits, axis=1)
        float_pred = [whole[a:b] for a, b in shards]
    run = SweepRun([None] * len(entries), tasks=len(entries) * (1 + len(shards)) + (len(shards) if lazy_float else 0))
    if lazy_float and wd is not None:
        for s, (a, b) in enumerate(shards):
            doc = wd.load(wd.float_file(s), fkeys[s], FLOAT_FIELDS)
            if doc is not None:
                if len(doc["pred"]) != b - a or not isinstance(doc["correct"], int):
                    raise HwsimError(f"{wd.float_file(s)}: {len(doc['pred'])} predictions for a shard of {b - a} "
                                     "images (not a complete hwsim task result)")
                float_pred[s], float_correct[s] = np.asarray(doc["pred"], np.int64), doc["correct"]
                run.reused.append(f"float shard {s}")

    def float_accuracy():
        if not lazy_float:
            return ctx.float_accuracy
        if any(c is None for c in float_correct):
            return None
        return sum(float_correct) / n if n else 0.0  # == execute.accuracy over the whole split (exact integers)
    statics: list = [None] * len(entries)
    counts: list[list] = [[None] * len(shards) for _ in entries]
    todo_images = 0
    for e in range(len(entries)):
        if wd is not None:
            doc = wd.load(wd.entry_file(e), ekeys[e], ENTRY_FIELDS)
            if doc is not None:
                statics[e] = (doc["static"], doc["compile_seconds"])
            for s in range(len(shards)):
                doc = wd.load(wd.shard_file(e, s), skeys[e][s], SHARD_FIELDS)
                if doc is not None:
                    counts[e][s] = doc
                    run.reused.append(f"{names[e]} shard {s}")
            if statics[e] is not None and all(c is not None for c in counts[e]):
                run.reused.append(f"{names[e]} compile")  # else it reruns: the compiled graph is not stored
        todo_images += sum(b - a for (a, b), c in zip(shards, counts[e]) if c is None)
    prog = Progress(run.tasks, todo_images, tasks_done=len(run.reused))

    deferred: list[int] = []  # entries complete but for the float baseline

    def finish(e: int) -> None:
        fa = float_accuracy()
        if fa is None:
            deferred.append(e)
            return
        static, csec = statics[e]
        prof, combo, _ = entries[e]
        r = merge(static, counts[e], csec, model=ctx.model_name, data=ctx.data_spec,
                  float_accuracy=fa, settings=combo)
        run.results[e] = r
        if on_result:
            on_result(r)

    blocked: list[list] = [[] for _ in shards]  # run tasks (entry, compiled graph) waiting for their shard's float task

    def submit_run(e: int, s2: int, qg) -> None:
        if float_pred[s2] is None:
            blocked[s2].append((e, qg))
            return
        a, b = shards[s2]
        f2 = ex.submit(run_task, qg, _shard_input(ctx.x_test, a, b), ctx.y_test[a:b], float_pred[s2], a, batch_size,
                       with_fakequant, getattr(ex, "threads", None), f"{e}:{s2}")
        pending[f2] = ("run", e, s2)

    waiting = [e for e in range(len(entries))]
    pending: dict[Future, tuple] = {}
    workers = max(1, getattr(ex, "workers", 1))
    max_open = 1 if workers == 1 else workers + 1  # entries (compiled graphs) in flight at once

    def tick() -> None:
        for tid, done in ex.poll():
            prog.task_images(tid, done)
        if on_progress:
            on_progress(prog)

    global _SINK
    saved_sink = _SINK
    _SINK = lambda tid, done: (prog.task_images(tid, done), on_progress and on_progress(prog))  # noqa: E731
    try:
        for s, (a, b) in enumerate(shards):
            if float_pred[s] is None:
                fut = ex.submit(float_task, ctx.graph, _shard_input(ctx.x_test, a, b), ctx.y_test[a:b], batch_size,
                                ctx.model_name, ctx.data_spec, getattr(ex, "threads", None))
                pending[fut] = ("float", None, s)
        open_entries: set[int] = set()
        while waiting or pending:
            while waiting and len(open_entries) < max_open:
                e = waiting.pop(0)
                if all(c is not None for c in counts[e]) and statics[e] is not None:
                    finish(e)
                    continue
                prof, _, rec = entries[e]
                open_entries.add(e)
                calib = calibration_images(ctx, prof, rec)
                fut = ex.submit(compile_task, ctx.graph, prof, rec, calib, getattr(ex, "threads", None))
                pending[fut] = ("compile", e, None)
            if not pending:
                continue
            done, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
            tick()
            for fut in [f for f in pending if f in done]:  # in the order submitted
                kind, e, s = pending.pop(fut)
                try:
                    res = fut.result()  # a task's exception surfaces here
                except Exception as err:
                    cause = getattr(err, "cause", None)  # Ray wraps it (RayTaskError) with the remote traceback
                    if isinstance(cause, HwsimError) and not type(err) is HwsimError:
                        raise HwsimError(str(cause)) from None  # the user's one line, as in-process
                    raise
                prog.tasks_done += 1
                if kind == "compile":
                    qg, static, csec = res
                    if statics[e] is None:
                        statics[e] = (static, csec)
                        if wd is not None:
                            wd.save(wd.entry_file(e), {"key": ekeys[e], "name": names[e], "static": static,
                                                       "compile_seconds": csec})
                    run.ran.append(f"{names[e]} compile")
                    for s2 in range(len(shards)):
                        if counts[e][s2] is None:
                            submit_run(e, s2, qg)
                    del qg
                elif kind == "float":
                    float_pred[s], float_correct[s] = np.asarray(res["pred"], np.int64), res["correct"]
                    if wd is not None:
                        a, b = shards[s]
                        wd.save(wd.float_file(s), {"key": fkeys[s], "start": a, "stop": b, **res})
                    run.ran.append(f"float shard {s}")
                    for e2, qg in blocked[s]:
                        submit_run(e2, s, qg)
                    blocked[s] = []
                    if float_accuracy() is not None:
                        for e2 in sorted(deferred):
                            deferred.remove(e2)
                            finish(e2)
                else:
                    prog.task_images(f"{e}:{s}", res["images"])
                    counts[e][s] = res
                    if wd is not None:
                        a, b = shards[s]
                        wd.save(wd.shard_file(e, s), {"key": skeys[e][s], "name": names[e], "start": a, "stop": b, **res})
                    run.ran.append(f"{names[e]} shard {s}")
                if e is not None and all(c is not None for c in counts[e]) and statics[e] is not None and e in open_entries:
                    open_entries.discard(e)
                    finish(e)
            if on_progress:
                on_progress(prog)
    except BaseException:
        if executor is None:
            ex.shutdown(kill=True)
            executor = ex  # shut down already
        raise
    finally:
        _SINK = saved_sink
        for fut in pending:
            fut.cancel()
        if executor is None:
            ex.shutdown()
    return run


def _entry_name(profile, combo: dict) -> str:
    return profile.name + (f" [{';'.join(f'{k}={v}' for k, v in combo.items())}]" if combo else "")


def _shard_input(x, start: int, stop: int):
    """The shard's images: a view of an in-memory array, or a streamed source's lazy sub-range."""
    view = getattr(x, "view_rows", None)
    return view(start, stop) if view is not None else x[start:stop]
