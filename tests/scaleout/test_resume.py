"""--resume: task results written atomically as they finish; a rerun redoes only the missing tasks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwsim import experiments as ex
from hwsim.profile import load_profile
from tests.scaleout.conftest import MODEL, invoke, without_timing

PROFILES = ("int8-tflite", "int8-stochastic", "w4a4", "w3-fp")
ROOT = Path(__file__).resolve().parents[2]


def shard_files(d: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.glob("shard-*.json"))}


@pytest.fixture(scope="module")
def ctx(data_npz):
    return ex.load_context(MODEL, data_npz, 64, 16, stream=True)


def test_an_interrupted_sweep_resumes_with_only_the_missing_tasks(ctx, tmp_path):
    plan = [(load_profile(p), {}) for p in PROFILES]
    full = [r.to_json() for r in ex.sweep(ctx, plan, 16, shard_size=32)]

    class Stop(Exception):
        pass

    def stop_after_two(r):
        if r.profile == PROFILES[1]:
            raise Stop  # an interruption after the second profile's tasks were written
    with pytest.raises(Stop):
        ex.sweep(ctx, plan, 16, shard_size=32, work_dir=tmp_path, on_result=stop_after_two)
    before = shard_files(tmp_path)
    assert sorted(before) == [f"shard-000{e}-000{s}.json" for e in (0, 1) for s in (0, 1)]
    from hwsim.scaleout import run_sweep

    again = run_sweep(ctx, plan, 16, shard_size=32, work_dir=tmp_path)
    assert again.ran == [f"{p} {t}" for p in PROFILES[2:] for t in ("compile", "shard 0", "shard 1")]
    assert sorted(again.reused) == sorted(f"{p} {t}" for p in PROFILES[:2] for t in ("compile", "shard 0", "shard 1"))
    assert len(again.ran) + len(again.reused) == again.tasks == 12
    after = shard_files(tmp_path)
    assert all(after[k] == v for k, v in before.items())  # found, not rewritten
    assert len(after) == 8
    got = [r.to_json() for r in again.results]
    for d in got + full:
        for k in ("seconds", "images_per_s", "compile_seconds"):
            d.pop(k)
    assert got == full
    # a third run finds everything and runs nothing
    third = run_sweep(ctx, plan, 16, shard_size=32, work_dir=tmp_path)
    assert third.ran == [] and len(third.reused) == 12


def test_a_killed_cli_sweep_resumes_to_the_same_csv(tmp_path, data_npz):
    """The sweep process is killed (SIGKILL) once some task files exist; --resume finishes it."""
    work, out_full, out = tmp_path / "work", tmp_path / "full.csv", tmp_path / "resumed.csv"
    args = ["sweep", "-m", MODEL, "-d", data_npz, "--limit", "96", "--batch-size", "16", "--shard-size", "16"]
    for p in PROFILES:
        args += ["-p", p]
    res = invoke(*args, "-q", "-o", out_full)
    assert res.exit_code == 0, res.output
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "hwsim.cli", *args, "-q", "--resume", str(work), "-o", str(out)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(work.glob("shard-*.json"))) < 6 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be interrupted"
    assert not out.exists()
    before = shard_files(work)
    assert 6 <= len(before) < 24
    assert not list(work.glob(".*.tmp"))  # atomic writes: a kill leaves no half-written task file
    complete = [e for e in range(len(PROFILES)) if len(list(work.glob(f"shard-{e:04d}-*.json"))) == 6]
    floats = len(list(work.glob("float-*.json")))
    assert floats == 6  # the float baseline's shard tasks are submitted first
    found = len(before) + len(complete) + floats  # a compile counts as found when its entry needs no shard run
    res = invoke(*args, "--resume", work, "-o", out)  # without -q: the resume summary on stderr
    assert res.exit_code == 0, res.output
    total = len(PROFILES) * (1 + 6) + 6  # a compile task and 6 shards of 16 images per profile, 6 float shards
    assert f"sweep: {total - found} task(s) run, {found} of {total} found in {work}" in res.output
    after = shard_files(work)
    assert len(after) == 24 and all(after[k] == v for k, v in before.items())
    assert without_timing(out.read_text()) == without_timing(out_full.read_text())


def test_a_changed_plan_in_the_same_directory_is_a_one_line_error(tmp_path, data_npz):
    base = ["sweep", "-m", MODEL, "-d", data_npz, "--limit", "16", "-q", "-p", "w4a4", "--resume", tmp_path]
    assert invoke(*base).exit_code == 0
    for extra, what in ((["--set", "accumulator.bits=16"], "describes another sweep"),
                        (["--batch-size", "8"], "holds the result of another task")):
        res = invoke(*base, *extra)
        assert res.exit_code != 0
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: --resume") and what in lines[0], res.output


def test_a_damaged_task_file_is_a_one_line_error(tmp_path, data_npz):
    base = ["sweep", "-m", MODEL, "-d", data_npz, "--limit", "16", "-q", "-p", "w4a4", "--resume", tmp_path]
    assert invoke(*base).exit_code == 0
    (tmp_path / "shard-0000-0000.json").write_text('{"key": 1')
    res = invoke(*base)
    assert res.exit_code != 0 and res.output.count("\n") == 1 and "shard-0000-0000.json" in res.output


def test_the_float_baseline_runs_as_shard_tasks_and_resumes(data_npz, tmp_path):
    """A sweep on load_context(float_baseline=False) runs the float model as one task per shard on the
    executor: same float accuracy and agreement as the eager baseline, bit for bit; a rerun after the float
    files are lost redoes only those tasks (the entries found complete wait for them)."""
    from hwsim.scaleout import make_executor, run_sweep

    eager = ex.load_context(MODEL, data_npz, 64, 16, stream=True)
    lazy = ex.load_context(MODEL, data_npz, 64, 16, stream=True, float_baseline=False)
    assert lazy.float_logits is None and lazy.float_accuracy is None
    plan = [(load_profile(p), {}) for p in PROFILES[:2]]

    def strip(results):
        out = [r.to_json() for r in results]
        for d in out:
            for k in ("seconds", "images_per_s", "compile_seconds"):
                d.pop(k)
        return out

    ref = strip(run_sweep(eager, plan, 16, shard_size=32).results)
    pool = make_executor("local", 2)
    try:
        first = run_sweep(lazy, plan, 16, shard_size=32, executor=pool, work_dir=tmp_path)
    finally:
        pool.shutdown()
    assert sorted(t for t in first.ran if t.startswith("float")) == ["float shard 0", "float shard 1"]
    assert first.tasks == 2 * 3 + 2 and strip(first.results) == ref
    assert ref[0]["float_accuracy"] == eager.float_accuracy and 0 < ref[0]["agreement_with_float"] <= 1
    for p in tmp_path.glob("float-*.json"):
        p.unlink()
    again = run_sweep(lazy, plan, 16, shard_size=32, work_dir=tmp_path)
    assert again.ran == ["float shard 0", "float shard 1"] and len(again.reused) == 6
    assert strip(again.results) == ref
    third = run_sweep(lazy, plan, 16, shard_size=32, work_dir=tmp_path)
    assert third.ran == [] and strip(third.results) == ref


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"  # a zombie has exited
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from Linux's /proc")
def test_sigterm_stops_the_workers_too(tmp_path, data_npz):
    """SIGTERM to a ``sweep --workers 2`` (the process only, as a scheduler or ``kill`` sends it): it exits
    nonzero within seconds, its worker processes with it (before, the workers ran on without their parent),
    no CSV is written, and --resume finishes the run from the task files it left."""
    work, out = tmp_path / "work", tmp_path / "out.csv"
    args = ["sweep", "-m", MODEL, "-d", data_npz, "--limit", "256", "--batch-size", "16", "--shard-size", "16",
            "--workers", "2", "--all"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "hwsim.cli", *args, "-q", "--resume", str(work), "-o", str(out)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while not list(work.glob("shard-*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        assert len(workers) >= 2  # two workers (and multiprocessing's resource tracker)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode()
        stopped = time.monotonic() - t0
        gone = time.monotonic() + 20
        while any(_alive(p) for p in workers) and time.monotonic() < gone:
            time.sleep(0.05)
        left = [p for p in workers if _alive(p)]
    finally:
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode not in (0, -signal.SIGTERM), err  # unwound (click: "Aborted!"), not killed outright
    assert stopped < 30 and not left, (stopped, left)
    assert not out.exists() and not list(work.glob(".*.tmp"))
    done = len(list(work.glob("shard-*.json")))
    res = invoke(*args, "--resume", work, "-o", out)
    assert res.exit_code == 0, res.output
    assert f"found in {work}" in res.output and done >= 1
