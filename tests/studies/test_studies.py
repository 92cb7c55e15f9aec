"""`hwsim study NAME`: quick runs through the CLI, resume, shared trainings, outputs, the md table vs the
CSV, regeneration against committed outputs, bad input."""

from __future__ import annotations

import csv
import io
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hwsim.cli import cli
from hwsim.studies import cells
from hwsim.studies.spec import STUDIES

pytest.importorskip("torch")

DATA = Path(__file__).parent / "data"
INT_COLUMNS = ("variant", "seed", "column", "recipe", "mode", "correct", "total", "float_correct", "overflow_events", "bops",
               "bops_acc")


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """accumulator --quick then pow2 --quick (which reuses baseline and "all" from the shared cache)."""
    d = tmp_path_factory.mktemp("studies")
    r1 = invoke("study", "accumulator", "--quick", "--out", str(d / "accumulator"), "-q")
    assert r1.exit_code == 0, r1.output
    r2 = invoke("study", "pow2", "--quick", "--out", str(d / "pow2"), "-q")
    assert r2.exit_code == 0, r2.output
    return d, r1.output, r2.output


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_quick_runs_write_every_output(root):
    d, out1, out2 = root
    for name in ("accumulator", "pow2"):
        for ext in ("csv", "md", "png"):
            p = d / name / f"{name}.{ext}"
            assert p.exists() and p.stat().st_size > 0, p
        assert (d / name / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 trainings now, 0 reused" in out1
    # pow2 trains baseline, kure, all: baseline and all are the accumulator's trainings (same key)
    assert "1 trainings now, 2 reused" in out2
    rows = _rows(d / "accumulator" / "accumulator.csv")
    assert len(rows) == 2 * len(STUDIES["accumulator"].quick_columns)
    assert all(int(r["total"]) == 200 for r in rows)
    # the quick models are weak but real: the 32-bit accumulator keeps the model above chance, the
    # 12-bit wrapping one overflows (events counted)
    by = {(r["variant"], r["column"]): r for r in rows}
    assert int(by[("baseline", "w4a4 wrap 12")]["overflow_events"]) > 0
    assert int(by[("baseline", "w4a4 wrap 32")]["overflow_events"]) == 0
    assert int(by[("baseline", "w4a4 wrap 32")]["correct"]) > int(by[("baseline", "w4a4 wrap 12")]["correct"])


def test_resume_recomputes_nothing(root):
    d, _, _ = root
    cell_files = sorted((d / "accumulator" / "cells").glob("*.json")) + sorted((d / "_train").glob("*"))
    before = {p: p.stat().st_mtime_ns for p in cell_files}
    csv_before = (d / "accumulator" / "accumulator.csv").read_text()
    r = invoke("study", "accumulator", "--quick", "--out", str(d / "accumulator"))
    assert r.exit_code == 0, r.output
    assert "(0 evaluated now, 8 reused; 0 trainings now, 2 reused)" in r.output
    assert {p: p.stat().st_mtime_ns for p in cell_files} == before  # no cell rewritten
    assert (d / "accumulator" / "accumulator.csv").read_text() == csv_before
    # progress on stderr (CliRunner mixes it into output) unless -q
    assert "[study accumulator] 10/10 cells" in r.output
    # every cell and training records its wall and CPU seconds (timing only: not in the keys or the CSV)
    for p in cell_files:
        if p.suffix == ".json":
            doc = cells.read_cell(p)
            assert doc["seconds"] > 0 and doc["cpu_seconds"] > 0, p
    assert "cpu_seconds" not in (d / "accumulator" / "accumulator.csv").read_text().splitlines()[0]


def test_md_table_equals_csv_aggregate(root):
    d, _, _ = root
    for name in ("accumulator", "pow2"):
        rows = _rows(d / name / f"{name}.csv")
        md = (d / name / f"{name}.md").read_text()
        assert f"Command: `hwsim study {name} --out {d / name} --quick`" in md
        # independently of hwsim.studies.output: every (arch, group, recipe, variant, column) cell of the md
        # is the mean (and sample std where there are >1 seeds) of the CSV's accuracies
        md = md.split("## Accuracy vs accumulator-aware cost")[0]  # the Pareto section: test_pareto_table_*
        tables = re.split(r"^## ", md, flags=re.M)[1:]
        seen = 0
        for t in tables:
            head, _, *lines = t.strip().splitlines()
            arch, *rest = head.split(" · ")
            recipe = rest[-1].removeprefix("recipe ") if rest and rest[-1].startswith("recipe ") else ""
            group = rest[0] if rest and not rest[0].startswith("recipe ") else ""
            table = []
            for ln in lines:  # the accuracy table: the first run of "|" lines (the events table follows)
                if not ln.startswith("|"):
                    break
                table.append(ln)
            cols = [c.strip() for c in table[0].strip("|").split("|")][1:]
            for ln in table[2:]:
                variant, *vals = [c.strip() for c in ln.strip("|").split("|")]
                for c, v in zip(cols, vals):
                    accs = [100 * int(r["correct"]) / int(r["total"]) for r in rows
                            if r["arch"] == arch and r["group"] == group and r["variant"] == variant
                            and r["column"] == c and r["recipe"] in ("", recipe)]
                    want = f"{statistics.mean(accs):.1f}" + (f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else "")
                    assert v == want, (name, head, variant, c)
                    seen += len(accs)
        assert seen == len(rows)


def test_pareto_table_equals_csv(root):
    """The accumulator study's cost section, recomputed from the CSV without hwsim.studies.output: each
    variant's rows are exactly the columns no other column of that variant dominates (cost <= and
    accuracy >, or cost < and accuracy >=), cheapest first; bops_acc grows with the accumulator width."""
    d, _, _ = root
    rows = _rows(d / "accumulator" / "accumulator.csv")
    md = (d / "accumulator" / "accumulator.md").read_text()
    assert "## Accuracy vs accumulator-aware cost (Pareto front)" in md
    cost = {r["column"]: int(r["bops_acc"]) for r in rows}
    assert all(int(r["bops_acc"]) > int(r["bops"]) > 0 for r in rows)
    # smallcnn's MACs by hand (28x28x1 input; conv 3x3 1->16, pool, 16->32, pool, 32->32, linear 32->10):
    # a 20-bit wider accumulator on every layer costs 20 adder bits per MAC, the BOPs do not change
    macs = 28 * 28 * 16 * 9 + 14 * 14 * 32 * 16 * 9 + 7 * 7 * 32 * 32 * 9 + 32 * 10
    assert cost["w4a4 wrap 32"] - cost["w4a4 wrap 12"] == 20 * macs
    for v in ("baseline", "all"):
        pts = {r["column"]: (int(r["bops_acc"]), int(r["correct"]) / int(r["total"])) for r in rows if r["variant"] == v}
        front = sorted((c for c, (k, a) in pts.items()
                        if not any((k2 <= k and a2 > a) or (k2 < k and a2 >= a) for k2, a2 in pts.values())),
                       key=lambda c: pts[c])
        section = md.split(f"### smallcnn · {v}")[1].split("###")[0]
        got = [ln.split("|")[1].strip() for ln in section.strip().splitlines()[2:] if ln.startswith("|")]
        assert got == front and front, (v, got, front)


def test_regenerates_committed_quick_outputs(root):
    """The committed quick accumulator study (tests/studies/data) is what the command produces on this
    machine: trainings are seeded on 1 thread, the simulator is exact — integer counts compared exactly."""
    d, _, _ = root
    got = [{k: r[k] for k in INT_COLUMNS} for r in _rows(d / "accumulator" / "accumulator.csv")]
    want = [{k: r[k] for k in INT_COLUMNS} for r in _rows(DATA / "accumulator_quick.csv")]
    assert got == want


def test_jobs_do_not_change_the_cells(root, tmp_path):
    """The fixture ran with the CLI's default --jobs 2 (spawned workers, one thread each) and regenerated
    the committed in-process CSV above; --jobs 1 in this process on the same trainings writes the same
    CSV byte for byte (every cell evaluated again here: a fresh output directory)."""
    d, _, _ = root
    r = invoke("study", "pow2", "--quick", "--out", str(tmp_path / "pow2"), "--cache", str(d / "_train"), "--jobs", "1", "-q")
    assert r.exit_code == 0, r.output
    assert "(6 evaluated now, 0 reused; 0 trainings now, 3 reused)" in r.output
    assert (tmp_path / "pow2" / "pow2.csv").read_bytes() == (d / "pow2" / "pow2.csv").read_bytes()


def test_lapq_budget_names_what_it_cuts():
    from hwsim.ptq.recipe import LAPQ_P_GRID
    from hwsim.studies.spec import FULL_LAPQ, MOBILENET_LAPQ, lapq_recipe

    full, mob = lapq_recipe(*FULL_LAPQ), lapq_recipe(*MOBILENET_LAPQ)
    assert full.name == "lapq(maxfev=60,images=256)" and full.lapq.p_grid == LAPQ_P_GRID  # the small CNN's, unchanged
    assert mob.name == "lapq(maxfev=30,images=64,p=2/3/4)"
    assert (mob.lapq.maxfev, mob.lapq.images, mob.lapq.p_grid) == (30, 64, (2.0, 3.0, 4.0))
    assert cells.config_key({"r": full.to_json()}) != cells.config_key({"r": mob.to_json()})


def test_changed_config_is_a_different_key():
    import torch  # noqa: F401

    a = cells.train_config("smallcnn", "default", 10, 0, {"kure": 1.0}, None)
    assert cells.config_key(a) == cells.config_key(dict(a))
    for b in (cells.train_config("smallcnn", "default", 11, 0, {"kure": 1.0}, None),
              cells.train_config("smallcnn", "default", 10, 1, {"kure": 1.0}, None),
              cells.train_config("smallcnn", "default", 10, 0, {"kure": 0.5}, None),
              cells.train_config("mobilenetv2", "default", 10, 0, {"kure": 1.0}, None)):
        assert cells.config_key(b) != cells.config_key(a)


@pytest.mark.parametrize("args, fragment", [
    (("study", "nosuch"), "'nosuch' is not one of 'bitwidth'"),
    (("study", "pow2", "--quick", "--arch", "nosucharch"), "--arch 'nosucharch'"),
    (("study", "pow2", "--seeds", "0"), "--seeds"),
    (("study", "pow2", "--jobs", "0"), "--jobs"),
])
def test_bad_input_is_one_line(tmp_path, args, fragment):
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "o")])
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    assert fragment in r.output


def test_every_study_plans_without_error():
    """Every column of every study loads its profile with its settings and its recipe (nothing runs)."""
    from hwsim.studies.runner import plan

    for st in STUDIES.values():
        full, quick = plan(st, False), plan(st, True)
        assert len(quick) < len(full) or len(full) <= 4
        assert {c.label for c, _ in quick} == set(st.quick_columns)


def test_without_torch_one_line():
    boot = ("import sys\nclass _N:\n def find_spec(self, n, p=None, t=None):\n"
            "  if n == 'torch' or n.startswith('torch.'): raise ModuleNotFoundError(n, name='torch')\n"
            "sys.meta_path.insert(0, _N())\nfrom hwsim.cli import main\nsys.argv = ['hwsim', 'study', 'pow2', '--quick']\nmain()\n")
    r = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "PyTorch is required" in r.stderr and "Traceback" not in r.stderr
