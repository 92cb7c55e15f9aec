"""The hwsim CLI: main commands and every user-error path (one line, nonzero exit, no traceback)."""

import io
import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from hwsim.cli import cli
from hwsim.graph import save_model
from tests.nets import tiny_cnn
from tests.conftest import invoke  # noqa: E402,F401  (the one CLI runner the tests share)


@pytest.fixture(scope="module")
def model8(tmp_path_factory):
    p = tmp_path_factory.mktemp("m") / "tiny.hwsim"
    save_model(tiny_cnn(seed=0, classes=10), p)
    return str(p)


def _one_line_error(res, *fragments):
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1, res.output
    for f in fragments:
        assert f in err[0], err[0]


def test_profiles_list_and_show():
    res = invoke("profiles")
    assert res.exit_code == 0 and "int4-pow2" in res.output and "int8-tflite" in res.output
    res = invoke("profiles", "show", "int4-pow2")
    assert res.exit_code == 0 and 'mode = "pow2"' in res.output


def test_run_json_has_the_documented_fields(model8, data8):
    res = invoke("run", "--profile", "int8-tflite", "--model", model8, "--data", data8, "--json", "-q")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    for k in ("profile", "model", "data", "images", "float_accuracy", "sim_accuracy", "seconds", "layers"):
        assert k in d
    assert d["images"] == 20
    assert {"name", "overflow_events", "clip_rate", "headroom_bits", "certified"} <= set(d["layers"][0])


def test_run_text_and_weight_only_label(model8, data8, tmp_path):
    res = invoke("run", "--profile", "w4-fp", "--model", model8, "--data", data8, "-q", "--out", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert "weight-only" in res.output
    assert json.loads((tmp_path / "r.json").read_text())["mode"] == "weight-only"


def test_sweep_csv_plot_and_vary(model8, data8, tmp_path):
    out = tmp_path / "s.csv"
    res = invoke("sweep", "-p", "int8-fbgemm", "-p", "w4a4", "--vary", "accumulator.bits=12,32", "--model", model8,
                 "--data", data8, "--out", str(out), "--plot", "-q")
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 4 and lines[0].startswith("profile,settings")
    assert (tmp_path / "s.png").stat().st_size > 1000
    rows = [ln.split(",") for ln in lines[1:]]
    # a 12-bit accumulator overflows on this net, a 32-bit one does not
    by = {(r[0], r[1]): int(r[7]) for r in rows}
    assert by[("int8-fbgemm", "accumulator.bits=12")] > 0 and by[("int8-fbgemm", "accumulator.bits=32")] == 0


def test_inspect_shows_certificates(model8, data8):
    res = invoke("inspect", model8, "--profile", "int8-acc16-sat", "--data", data8)
    assert res.exit_code == 0, res.output
    assert "kurtosis" in res.output and "certified" in res.output


def test_inspect_shows_each_layers_arithmetic_with_overrides(model8, data8, tmp_path):
    """The per-layer arithmetic column follows per-layer overrides, not only the profile's defaults."""
    prof = tmp_path / "mixed.toml"
    prof.write_text('extends = "int8-tflite"\n[[overrides]]\nposition = "last"\naccumulator.bits = 16\n'
                    'accumulator.overflow = "saturate"\nrequant.mode = "float32"\n')
    res = invoke("inspect", model8, "--profile", str(prof), "--data", data8, "--json")
    assert res.exit_code == 0, res.output
    mac = [n for n in json.loads(res.output)["nodes"] if n["op"] in ("conv2d", "linear")]
    assert [n["arithmetic"] for n in mac[:-1]] == ["acc 32b wrap, fixed Q31/double(half_up,half_away)"] * (len(mac) - 1)
    assert mac[-1]["arithmetic"] == "acc 16b saturate, float32/half_even"
    text = invoke("inspect", model8, "--profile", str(prof), "--data", data8)
    assert "arithmetic" in text.output and "acc 16b saturate, float32/half_even" in text.output


@pytest.mark.parametrize("args, fragments", [
    (["run", "--profile", "int7-magic"], ["unknown profile 'int7-magic'", "int8-tflite"]),
    (["run", "--set", "accumulator.bitz=3"], ["unknown profile key 'accumulator.bitz'"]),
    (["run", "--set", "weights.bits=40"], ["'weights.bits'", "40", "[2, 16]"]),
    (["run", "--data", "npz:/nonexistent/x.npz"], ["/nonexistent/x.npz"]),
    (["run", "--model", "/nonexistent/m.hwsim"], ["/nonexistent/m.hwsim"]),
    (["sweep"], ["--profile NAME"]),
    (["sweep", "-p", "int8-tflite", "--vary", "accumulator.bits"], ["expected KEY=V1,V2"]),
    (["run", "--out", "/nonexistent/dir/r.json"], ["does not exist"]),
])
def test_user_errors_are_one_line(args, fragments):
    _one_line_error(invoke(*args), *fragments)


def test_corrupt_truncated_wrong_version_and_nan_models(model8, data8, tmp_path):
    raw = open(model8, "rb").read()
    bad = tmp_path / "trunc.hwsim"
    bad.write_bytes(raw[: len(raw) // 2])
    _one_line_error(invoke("run", "--model", str(bad), "--data", data8), str(bad))
    bad2 = tmp_path / "garbage.hwsim"
    bad2.write_bytes(b"not a zip at all")
    _one_line_error(invoke("run", "--model", str(bad2), "--data", data8), str(bad2))
    v2 = tmp_path / "v2.hwsim"
    with zipfile.ZipFile(model8) as zin, zipfile.ZipFile(v2, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "graph.json":
                doc = json.loads(data)
                doc["version"] = 2
                data = json.dumps(doc).encode()
            zout.writestr(item, data)
    _one_line_error(invoke("run", "--model", str(v2), "--data", data8), str(v2), "unsupported model file version")
    # the writer refuses NaN, so forge the file: same zip, fc.weight member rewritten with a NaN
    nanp = tmp_path / "nan.hwsim"
    with zipfile.ZipFile(model8) as zin, zipfile.ZipFile(nanp, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "tensors.npz":
                src, dst = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
                with zipfile.ZipFile(dst, "w") as zt:
                    for m in src.infolist():
                        arr = np.load(io.BytesIO(src.read(m)), allow_pickle=False)
                        if m.filename == "fc.weight.npy":
                            arr = arr.copy()
                            arr.flat[0] = np.nan
                        b = io.BytesIO()
                        np.lib.format.write_array(b, arr, allow_pickle=False)
                        zt.writestr(m.filename, b.getvalue())
                data = dst.getvalue()
            zout.writestr(item, data)
    _one_line_error(invoke("run", "--model", str(nanp), "--data", data8), str(nanp), "fc.weight", "NaN")


def test_model_data_shape_mismatch(model8):
    _one_line_error(invoke("run", "--model", model8, "--limit", "5"), "expects inputs of shape (1, 8, 8)", "(1, 28, 28)")


def test_nothing_half_written_on_error(model8, tmp_path):
    out = tmp_path / "r.json"
    res = invoke("run", "--model", model8, "--out", str(out))  # shape mismatch with the default data
    assert res.exit_code != 0 and not out.exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- one vocabulary (issue 15)
COMMANDS_WITH_PROFILE_DEFAULT = {"run": "int8-tflite", "compare": "int8-fbgemm", "golden": "int8-tflite",
                                 "export-onnx": "int8-onnxruntime"}


@pytest.mark.parametrize("cmd", ["run", "sweep", "compare", "inspect", "golden", "export-onnx"])
def test_every_command_speaks_the_same_options(cmd):
    res = invoke(cmd, "--help")
    assert res.exit_code == 0
    h = " ".join(res.output.split())
    for opt in ("-m, --model", "-p, --profile", "-d, --data", "--set KEY=VALUE", "-q, --quiet"):
        assert opt in h, (cmd, opt)
    if cmd != "inspect":
        assert "-o, --out" in h
    if cmd in COMMANDS_WITH_PROFILE_DEFAULT:
        assert f"[default: {COMMANDS_WITH_PROFILE_DEFAULT[cmd]}]" in h
    assert "override a profile field" in h  # --set has help text everywhere


def test_profiles_show_set_has_help_and_train_help_lists_digits():
    assert "override a profile field" in invoke("profiles", "show", "--help").output
    h = " ".join(invoke("train", "--help").output.split())
    assert "digits" in h and "-o, --out" in h and "-d, --data" in h


def test_compare_bare_plot_before_another_option(model8, data8, tmp_path, monkeypatch):
    """`compare --plot --limit 5` used to fail with 'unexpected extra argument'."""
    monkeypatch.chdir(tmp_path)
    res = invoke("compare", "-m", model8, "-d", data8, "--plot", "--limit", "5", "-q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "compare.png").stat().st_size > 1000
    res = invoke("compare", "-m", model8, "-d", data8, "--limit", "5", "-q", "-o", "c.json", "--plot")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c.png").exists() and json.loads((tmp_path / "c.json").read_text())["images"] == 5


def test_sweep_plot_path_and_inspect_model_option(model8, data8, tmp_path):
    png = tmp_path / "mine.png"
    res = invoke("sweep", "-p", "w4a4", "-m", model8, "-d", data8, "-q", "--limit", "5", "--plot", str(png))
    assert res.exit_code == 0, res.output
    assert png.stat().st_size > 1000 and f"wrote {png}" in res.output
    a, b = invoke("inspect", "-m", model8, "--json"), invoke("inspect", model8, "--json")
    assert a.exit_code == 0 and a.output == b.output


def test_progress_goes_to_stderr_and_quiet_silences_it(model8, data8, tmp_path):
    res = CliRunner().invoke(cli, ["golden", "-m", model8, "-d", data8, "--n", "2", "-o", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    assert "golden: [" in res.stderr and "compiling" in res.stderr and "wrote" in res.stdout
    res = CliRunner().invoke(cli, ["golden", "-m", model8, "-d", data8, "--n", "2", "-q", "-o", str(tmp_path / "g2")])
    assert res.exit_code == 0 and res.stderr == ""
