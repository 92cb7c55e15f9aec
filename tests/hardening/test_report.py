"""Reports: the PTQ recipe is printed when a result carries one; plots render every kind of row."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hwsim.report import data_label, run_text, sweep_csv, sweep_plot_png, sweep_rows, sweep_text


def result(profile="int8-tflite", sim=0.976, overflow=0, weight_only=False, fq=None, settings=None, **extra):
    layers = [{"name": "conv1", "kind": "conv", "acc_events": overflow, "partial_events": 0, "clip_rate": 0.001,
               "headroom_bits": 3, "partial_headroom_bits": None, "certified": True, "overflow_events": overflow}]
    return SimpleNamespace(profile=profile, description="d", model="smallcnn_robust", data="default", images=1000,
                           float_accuracy=0.976, sim_accuracy=sim, weight_only=weight_only, seconds=1.0,
                           compile_seconds=0.5, images_per_s=1000.0, agreement=0.99, layers=layers, dead_channels=[],
                           notes=[], settings=settings or {}, fakequant_accuracy=fq, overflow_events=overflow, **extra)


def test_recipe_printed_when_present():
    plain, ptq = result(), result(recipe="adaround")
    assert "recipe" not in run_text(plain)
    assert "recipe    adaround" in run_text(ptq)
    header_line, _, row_line = sweep_text([ptq]).splitlines()
    assert header_line.split()[:2] == ["profile", "recipe"] and row_line.split()[1] == "adaround"
    assert "recipe" not in sweep_text([plain])
    header, row = sweep_csv([ptq]).splitlines()
    assert header.endswith(",recipe") and row.endswith(",adaround")
    assert sweep_csv([plain]).splitlines()[1].endswith(",")
    assert "recipe" not in run_text(result(recipe=None))


@pytest.mark.parametrize("rows", [
    [result(), result("w4a4", 0.975), result("int8-acc16-wrap", 0.113, overflow=5), result("w4-fp", 0.97, weight_only=True)],
    [result(sim=0.976, fq=0.977, recipe="x"), result("w4a4", sim=0.977, fq=0.976)],
    [result("int8-fbgemm", 0.1 + i / 100, overflow=i % 2, settings={"accumulator.bits": str(12 + i)}) for i in range(12)],
])
def test_sweep_plot_renders_every_kind_of_row(rows):
    png = sweep_plot_png(rows)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_sweep_rows_carry_what_the_plot_labels():
    rows = sweep_rows([result(settings={"accumulator.bits": "12", "accumulator.overflow": "wrap"})])
    assert rows[0]["settings"] == "accumulator.bits=12;accumulator.overflow=wrap"
    from hwsim.report import _short_settings

    assert _short_settings(rows[0]["settings"]) == "bits=12, overflow=wrap"


def test_data_label():
    assert data_label("default") == "MNIST 5k" and data_label("npz:/a/b/c.npz") == "npz c.npz"
    assert data_label("cifar10:/data/cifar-10-batches-py/") == "cifar10 cifar-10-batches-py"
