"""LAPQ: the loss never rises, both loss kinds run, the integers run fast == reference."""

import dataclasses

import numpy as np
import pytest

from hwsim.compile import compile_model
from hwsim.execute import run_integer
from hwsim.profile import load_profile
from hwsim.ptq import load_recipe
from tests.nets import images, tiny_cnn


def _recipe(loss, maxfev=40, p_grid=(2.0, 3.0, 4.0)):
    r = load_recipe("lapq")
    return dataclasses.replace(r, lapq=dataclasses.replace(r.lapq, loss=loss, maxfev=maxfev, p_grid=p_grid))


@pytest.mark.parametrize("loss", ["simulator", "mirror"])
@pytest.mark.parametrize("profile", ["w4a4", "w3a3"])
def test_lapq_final_loss_never_above_initial(loss, profile):
    if loss == "mirror":
        pytest.importorskip("torch")
    g, x = tiny_cnn(seed=4), images(48, seed=8)
    seen = []
    qg = compile_model(g, load_profile(profile), x, recipe=_recipe(loss),
                       progress=lambda stage, step, total, value: seen.append((stage, value)))
    info = qg.ptq["lapq"]
    assert info.final_loss <= info.initial_loss
    assert info.final_loss == min(info.trace) and info.trace[0] == info.initial_loss
    assert 1 < info.evaluations <= 40 and set(info.p_losses) == {2.0, 3.0, 4.0} and 2.0 <= info.p_star <= 4.0
    assert [s for s, _ in seen].count("lapq") == info.evaluations and all(v is not None for s, v in seen if s == "lapq")
    assert any("LAPQ" in n for n in qg.notes)
    fast, ref = run_integer(qg, x, "fast"), run_integer(qg, x, "reference")
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k])
    # the reported final loss is the loss of the graph returned (simulator: exactly)
    if loss == "simulator":
        from hwsim.execute import run_quantized
        from hwsim.ptq.lapq import _cross_entropy
        from hwsim.compile import calibrate, fold_graph, _float_graph
        from hwsim.floatref import run_float

        labels = np.argmax(run_float(_float_graph(fold_graph(g)[0]), x), axis=1)
        assert _cross_entropy(run_quantized(qg, x).logits, labels) == pytest.approx(info.final_loss, rel=1e-12)


def test_lapq_with_no_powell_budget_keeps_the_p_star_ranges():
    g, x = tiny_cnn(seed=4), images(32, seed=8)
    qg = compile_model(g, load_profile("w4a4"), x, recipe=_recipe("simulator", maxfev=0))
    info = qg.ptq["lapq"]
    assert info.evaluations == 1 and info.final_loss == info.initial_loss


def test_mirror_loss_without_torch_is_one_line_error(monkeypatch):
    import sys

    from hwsim.errors import HwsimError

    monkeypatch.setitem(sys.modules, "torch", None)
    g, x = tiny_cnn(seed=4), images(8, seed=8)
    with pytest.raises(HwsimError, match=r"needs torch: pip install 'hwsim\[torch\]'"):
        compile_model(g, load_profile("w4a4"), x, recipe=_recipe("mirror", maxfev=2))


def test_lapq_time_budget_stops_powell_and_keeps_the_best_point():
    r = _recipe("simulator", maxfev=500)
    r = dataclasses.replace(r, lapq=dataclasses.replace(r.lapq, budget_s=0.0))
    qg = compile_model(tiny_cnn(seed=4), load_profile("w4a4"), images(16, seed=8), recipe=r)
    info = qg.ptq["lapq"]
    assert info.stopped == "time budget 0 s" and info.evaluations == 1 and "stopped" in info.note()
    assert info.final_loss == info.initial_loss


def _moves_setup(profile):
    from hwsim.compile import calibrate, fold_graph, quantize_folded
    from hwsim.ptq.lapq import _fixed_hooks, _Recorder
    from hwsim.ptq.pipeline import range_hooks

    g, x = tiny_cnn(seed=4), images(24, seed=8)
    prof = load_profile(profile)
    folded, dead = fold_graph(g, prof.batchnorm)
    calib = calibrate(folded, x)
    rec = _Recorder(range_hooks(dataclasses.replace(load_recipe("lapq"), p=3.0), folded, calib, {}))
    quantize_folded(g, folded, dead, calib, prof, rec.as_hooks(), certificates=False)
    wk, ak = list(rec.w), list(rec.a)
    labels = np.argmax(calib[folded.outputs[0]], axis=1)

    def compile_at(v):
        return quantize_folded(g, folded, dead, calib, prof, _fixed_hooks(rec.w, rec.a, wk, ak, v), certificates=False)
    return x, labels, wk, ak, compile_at


@pytest.mark.parametrize("kind", ["simulator", "mirror"])
@pytest.mark.parametrize("profile", ["w3a3", "int8-stochastic", "int8-fbgemm"])
def test_cached_loss_equals_a_full_run_on_powell_like_moves(kind, profile):
    """The loss that re-runs only what differs from its cached point equals a full run exactly
    (``run_quantized`` / ``FakeQuantModel``) over Powell-like line searches: along one coordinate or
    all at once, each continuing from the previous line's best point, repeats of a point included."""
    if kind == "mirror":
        torch = pytest.importorskip("torch")
        from frontends.pytorch.fakequant import FakeQuantModel
    from hwsim.execute import run_quantized
    from hwsim.ptq.lapq import BOUNDS, _cross_entropy, _Loss

    x, labels, wk, ak, compile_at = _moves_setup(profile)
    loss = _Loss(kind, x, labels, batch_size=10)  # 3 batches: the simulator's stochastic-rounding offsets

    def check(v):
        qg = compile_at(v)
        got = loss(qg, v)
        if kind == "mirror":
            want = _cross_entropy(FakeQuantModel(qg)(torch.from_numpy(x)).numpy(), labels)
        else:
            want = _cross_entropy(run_quantized(qg, x, batch_size=10).logits, labels)
        assert got == want, v
        return got, loss.recomputed[-1] < len(qg.layers) + 1

    rng = np.random.default_rng(0)
    cur = np.zeros(len(wk) + len(ak))
    check(cur)
    partial = 0
    for line in range(7):
        d = np.zeros(cur.size)
        if line == 5:
            d[:] = rng.normal(size=cur.size)
        else:
            d[rng.integers(cur.size)] = 1.0
        pts = [np.clip(cur + t * d, *BOUNDS) for t in rng.uniform(-1.5, 0.5, 3)] + [cur]
        results = [check(v) for v in pts]
        partial += sum(p for _, p in results)
        i = max(range(len(pts)), key=lambda k: (-results[k][0], k))  # the best, ties to the later one
        cur = pts[i]
    assert partial >= 20  # one-coordinate lines re-ran part of the network only


@pytest.mark.parametrize("kind", ["simulator", "mirror"])
def test_cached_loss_reruns_only_downstream_of_the_move(kind):
    if kind == "mirror":
        pytest.importorskip("torch")
    from hwsim.ptq.lapq import _Loss

    x, labels, wk, ak, compile_at = _moves_setup("w4a4")
    loss = _Loss(kind, x, labels)
    v = np.zeros(len(wk) + len(ak))
    qg = compile_at(v)
    loss(qg, v)
    n = len(qg.layers)
    assert loss.recomputed[-1] == n + 1  # nothing cached: the input and every layer
    last = wk.index(qg.mac_layers[-1].name)
    pts, ls = [], []
    for t in (-0.5, -0.25, 0.0):  # a line along the last layer's weight step
        v = np.zeros(len(wk) + len(ak))
        v[last] = t
        pts.append(v)
        ls.append(loss(compile_at(v), v))
        assert loss.recomputed[-1] == (1 if t else 0)  # the last layer; at the origin nothing
    best = pts[max(range(3), key=lambda k: (-ls[k], k))]
    v = best.copy()
    v[len(wk) + ak.index(qg.output_name)] = -0.5  # the next line, from the best point: the logits' grid
    loss(compile_at(v), v)
    assert loss.recomputed[-1] == 1
    v = best.copy()
    v[wk.index(qg.mac_layers[0].name)] = -0.5  # the first layer's weights: every layer, not the input
    loss(compile_at(v), v)
    assert loss.recomputed[-1] == n
    loss(compile_at(v), None)  # no point: a full run
    assert loss.recomputed[-1] == n + 1
