"""`hwsim report`: files in, one page out; every bad input is a one-line error naming the file."""

import json

import click
import pytest
from click.testing import CliRunner

from hwsim.cli import HwsimGroup
from hwsim.cli_report import register
from tests.report.conftest import HAS_TORCH


@click.group(cls=HwsimGroup)
def cli():
    """A group with only `report` registered (hwsim/cli.py registers it on the real one)."""


register(cli)


def _invoke(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture()
def files(tmp_path, sweep_json, compare_json):
    s, c = tmp_path / "sweep.json", tmp_path / "cmp.json"
    s.write_text(json.dumps(sweep_json))
    c.write_text(json.dumps(compare_json))
    return s, c


def test_report_command(tmp_path, files):
    out = tmp_path / "r.html"
    r = _invoke("report", str(files[0]), str(files[1]), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"wrote {out} (") and "from 2 results file(s)" in r.output
    page = out.read_text()
    assert 'id="compare0"' in page and 'id="accuracy"' in page
    assert "sweep.json (sha256 " in page and "cmp.json (sha256 " in page  # provenance names the sources


@pytest.mark.parametrize("content, match", [
    (None, "no such results file"),
    ("{not json", "not JSON"),
    ('{"a": 1}', "not a run, sweep or compare result"),
    ("[]", "an empty list of results"),
])
def test_bad_results_file(tmp_path, content, match):
    p = tmp_path / "x.json"
    if content is not None:
        p.write_text(content)
    r = _invoke("report", str(p), "-o", str(tmp_path / "r.html"))
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: {p}: ") and match in r.output and r.output.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


def test_bad_out(tmp_path, files):
    r = _invoke("report", str(files[0]), "-o", str(tmp_path / "r.pdf"))
    assert r.exit_code == 1 and "unsupported extension '.pdf' (allowed: .html, .htm)" in r.output
    r = _invoke("report", str(files[0]), "-o", str(tmp_path / "nodir" / "r.html"))
    assert r.exit_code == 1 and "does not exist" in r.output


def test_no_results_given():
    r = _invoke("report")
    assert r.exit_code == 2 and "Missing argument" in r.output


def test_report_of_real_cli_output(tmp_path):
    """The JSON the real `hwsim sweep` and `hwsim compare` write today (bundled model, 20 images)."""
    from hwsim.cli import cli as hwsim_cli
    from tests.report.test_html_report import _prov_of, check_page

    s, c, out = tmp_path / "s.json", tmp_path / "c.json", tmp_path / "r.html"
    r = CliRunner().invoke(hwsim_cli, ["sweep", "-p", "int8-tflite", "-p", "int8-acc16-sat", "--limit", "20", "-q",
                                       "--out", str(s)])
    assert r.exit_code == 0, r.output
    args = ["compare", "-p", "int8-acc16-sat", "--limit", "20", "-q", "--out", str(c)]
    if HAS_TORCH:
        r = CliRunner().invoke(hwsim_cli, args)
        assert r.exit_code == 0, r.output
    files = [s, c] if HAS_TORCH else [s]
    r = _invoke("report", *map(str, files), "-o", str(out))
    assert r.exit_code == 0, r.output
    page = out.read_text()
    counts = check_page(page, [json.loads(f.read_text()) for f in files], _prov_of(page))
    assert counts["values"] > 100
