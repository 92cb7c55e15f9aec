"""Fan-out equals the serial run: --workers, --executor ray, shards, stochastic rounding's run-wide indices."""

from __future__ import annotations

import numpy as np
import pytest

from hwsim import experiments as ex
from hwsim import scaleout
from hwsim.profile import load_profile
from tests.scaleout.conftest import MODEL, invoke, without_timing


def sweep_csv(tmp_path, name, *args):
    out = tmp_path / f"{name}.csv"
    res = invoke("sweep", "-m", MODEL, "-q", "-o", out, *args)
    assert res.exit_code == 0, res.output
    return out.read_text()


def test_shard_bounds_follow_the_batches():
    assert scaleout.shard_bounds(100, 32) == [(0, 100)]
    assert scaleout.shard_bounds(100, 32, 40) == [(0, 64), (64, 100)]  # 40 rounded up to 2 batches
    assert scaleout.shard_bounds(100, 32, 10) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert scaleout.shard_bounds(100, 32, 1000) == [(0, 100)]


@pytest.mark.slow
def test_all_profiles_on_two_workers_in_shards_equal_the_serial_csv(tmp_path, data_npz):
    """Every built-in profile (stochastic rounding, weight-only, narrow accumulators included):
    2 worker processes x 3 shards per profile == one process, one task per profile."""
    common = ("--all", "-d", data_npz, "--limit", "80", "--batch-size", "16")
    serial = sweep_csv(tmp_path, "serial", *common)
    fanned = sweep_csv(tmp_path, "workers", *common, "--workers", "2", "--shard-size", "32")
    assert without_timing(fanned) == without_timing(serial)
    assert serial.count("\n") == 1 + len(scaleout_plan_all())
    assert "int8-stochastic" in serial and "w2-fp" in serial  # the batch- and index-sensitive cases ran


def scaleout_plan_all():
    return ex.plan_sweep([], True, [], {})


@pytest.fixture(scope="module")
def ctx(data_npz):
    return ex.load_context(MODEL, data_npz, 96, 32, stream=True)


def shard_counts(ctx, qg, a, b, offset):
    fp = np.argmax(ctx.float_logits, axis=1)
    return scaleout.run_task(qg, ctx.x_test[a:b], ctx.y_test[a:b], fp[a:b], offset, 32)


@pytest.mark.parametrize("name, settings", [("int8-stochastic", {}), ("int8-fbgemm", {"requant.rounding": "stochastic"})])
def test_stochastic_rounding_sharded_equals_unsharded_only_with_run_wide_offsets(ctx, name, settings):
    prof = load_profile(name, settings)
    qg = ex.compile_for(ctx, prof)
    whole = shard_counts(ctx, qg, 0, 96, 0)
    parts = [shard_counts(ctx, qg, a, b, a) for a, b in scaleout.shard_bounds(96, 32, 32)]
    for k in ("sim_correct", "agree"):
        assert sum(p[k] for p in parts) == whole[k]
    assert (np.sum([p["layers"] for p in parts], axis=0) == np.asarray(whole["layers"])).all()
    # the integers themselves: shards numbered run-wide give the whole run's logits; numbered from 0
    # they draw other random numbers and the logits change (so the offset is what makes them equal)
    from hwsim.execute import run_quantized

    x = ctx.x_test[:96]
    ref = run_quantized(qg, x, 32).logits
    cut = [run_quantized(qg, x[a:b], 32, offset=a).logits for a, b in scaleout.shard_bounds(96, 32, 32)]
    assert np.array_equal(np.concatenate(cut), ref)
    wrong = [run_quantized(qg, x[a:b], 32).logits for a, b in scaleout.shard_bounds(96, 32, 32)]
    assert not np.array_equal(np.concatenate(wrong), ref)


def test_merge_is_the_run_profile_result(ctx):
    """run_profile (one task) and a 3-shard sweep give the same RunResult, timing aside."""
    prof = load_profile("w4a4")
    one = ex.run_profile(ctx, prof, 32).to_json()
    three = ex.sweep(ctx, [(prof, {})], 32, shard_size=32)[0].to_json()
    for d in (one, three):
        for k in ("seconds", "images_per_s", "compile_seconds"):
            d.pop(k)
    assert one == three
    assert sum(lay["outputs"] for lay in one["layers"]) > 0


@pytest.mark.slow
def test_ray_equals_serial(tmp_path, data_npz):
    """--executor ray starts a local Ray (2 CPUs) for the sweep and stops it after."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    common = ("-p", "int8-stochastic", "-p", "w4-fp", "-p", "int8-acc16-sat", "-d", data_npz, "--limit", "64",
              "--batch-size", "16")
    serial = sweep_csv(tmp_path, "serial", *common)
    try:
        fanned = sweep_csv(tmp_path, "ray", *common, "--executor", "ray", "--workers", "2", "--shard-size", "32")
        assert not ray.is_initialized()  # the Ray the sweep started is stopped
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert without_timing(fanned) == without_timing(serial)


def test_fake_quant_column_on_workers_equals_serial(tmp_path, data_npz):
    """--compare: the torch mirror runs inside the workers, per shard, and its correct predictions are summed."""
    pytest.importorskip("torch")
    common = ("-p", "int8-fbgemm", "-p", "w4-fp", "-d", data_npz, "--limit", "48", "--batch-size", "16", "--compare")
    serial = sweep_csv(tmp_path, "serial", *common)
    fanned = sweep_csv(tmp_path, "workers", *common, "--workers", "2", "--shard-size", "16")
    assert without_timing(fanned) == without_timing(serial)
    header, first = serial.splitlines()[:2]
    assert first.split(",")[header.split(",").index("fakequant_accuracy")] != ""


def test_a_remote_tasks_user_error_is_one_line(ctx):
    """Ray hands a task's HwsimError back wrapped (RayTaskError, remote traceback in its text): the sweep
    raises the user's one line."""
    from concurrent.futures import Future

    from hwsim.errors import HwsimError

    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__(f"ray traceback...\n{cause}")
            self.cause = cause

    class Remote:
        workers = 2

        def submit(self, fn, *args, **kwargs):
            f = Future()
            f.set_exception(Wrapped(HwsimError("data x.npz: something the user must fix")))
            return f

        def poll(self):
            return []

    with pytest.raises(HwsimError) as e:
        scaleout.run_sweep(ctx, [(load_profile("w4a4"), {})], 32, executor=Remote())
    assert str(e.value) == "data x.npz: something the user must fix"


def test_executor_options_are_checked(tmp_path):
    res = invoke("sweep", "-p", "w4a4", "--ray-address", "auto", "--limit", "4", "-q")
    assert res.exit_code != 0 and "--ray-address needs --executor ray" in res.output
    res = invoke("sweep", "-p", "w4a4", "--workers", "0", "--limit", "4", "-q")
    assert res.exit_code != 0 and "--workers" in res.output
