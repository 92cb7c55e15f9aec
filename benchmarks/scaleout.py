"""Wall time of `hwsim sweep --all` serial vs --workers N, and of a resumed sweep after a kill.

    python benchmarks/scaleout.py [--model NAME] [--limit N] [--workers 2] [--shard-size N]

Each measurement is one `python -m hwsim.cli sweep --all ...` subprocess (interpreter start, model
and data loading, the float baseline, compiles and runs included), timed from outside. The resume
measurement starts the same sweep with --resume DIR, kills it (SIGKILL) once about half of the
profiles' task files exist, then reruns it with the same --resume DIR (and once more, when every
task is found: the fixed cost of a sweep). The CSVs of all runs must be
equal apart from the two timing columns; the script checks that.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rows_without_timing(path: Path) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    drop = {rows[0].index("images_per_s"), rows[0].index("seconds")}
    return [[v for i, v in enumerate(r) if i not in drop] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smallcnn_robust")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=None)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base = [sys.executable, "-m", "hwsim.cli", "sweep", "--all", "-m", args.model, "-q"]
    if args.limit:
        base += ["--limit", str(args.limit)]
    if args.shard_size:
        base += ["--shard-size", str(args.shard_size)]
    tmp = Path(tempfile.mkdtemp(prefix="hwsim-scaleout-"))

    def timed(extra: list[str], out: Path) -> float:
        t0 = time.perf_counter()
        subprocess.run(base + extra + ["-o", str(out)], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0

    serial = timed([], tmp / "serial.csv")
    print(f"sweep --all serial:       {serial:7.1f} s", flush=True)
    fanned = timed(["--workers", str(args.workers)], tmp / "workers.csv")
    print(f"sweep --all --workers {args.workers}:  {fanned:7.1f} s  ({serial / fanned:.2f}x)", flush=True)
    assert rows_without_timing(tmp / "workers.csv") == rows_without_timing(tmp / "serial.csv")

    work = tmp / "work"
    n_profiles = len(rows_without_timing(tmp / "serial.csv")) - 1
    t0 = time.perf_counter()
    proc = subprocess.Popen(base + ["--resume", str(work), "-o", str(tmp / "killed.csv")], env=env, cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL)
    while proc.poll() is None and len(list(work.glob("entry-*.json"))) < n_profiles // 2 + 1:
        time.sleep(0.05)
    while proc.poll() is None and len(list(work.glob("shard-*.json"))) < n_profiles // 2:
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = time.perf_counter() - t0
    done = len(list(work.glob("shard-*.json")))
    print(f"killed after {killed_after:7.1f} s with {done} of {n_profiles} profiles' task files written", flush=True)
    resumed = timed(["--resume", str(work)], tmp / "resumed.csv")
    print(f"resumed run:              {resumed:7.1f} s  (full serial run {serial:.1f} s)", flush=True)
    assert rows_without_timing(tmp / "resumed.csv") == rows_without_timing(tmp / "serial.csv")
    again = timed(["--resume", str(work)], tmp / "again.csv")
    print(f"rerun finding every task: {again:7.1f} s  (start, loading, float baseline, task keys: the fixed cost)",
          flush=True)
    assert rows_without_timing(tmp / "again.csv") == rows_without_timing(tmp / "serial.csv")
    print("CSV rows identical (timing columns aside): serial, workers, resumed")


if __name__ == "__main__":
    main()
