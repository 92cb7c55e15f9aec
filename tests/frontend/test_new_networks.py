"""MobileNetV3-small-style and EfficientNet-B0-style networks end to end (issue 16): torch.fx export -> float
graph == torch eval -> .hwsim save / load -> compile -> integer run under int8-tflite, int8-fbgemm, w4a4 and
int4-pow2, fast == reference on every layer. Random init with BatchNorm statistics warmed on random batches;
28x28, one image through the reference executor (cheap)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frontends.pytorch.export import to_graph
from frontends.pytorch.models import build_model
from hwsim.compile import compile_model
from hwsim.execute import accuracy, run_integer, run_quantized
from hwsim.floatref import run_float
from hwsim.graph import load_model, save_model
from hwsim.profile import load_profile

PROFILES = ("int8-tflite", "int8-fbgemm", "w4a4", "int4-pow2")
NEW = {"mobilenetv3": {"hardswish", "hardsigmoid", "mul", "relu"}, "efficientnet": {"silu", "sigmoid", "mul", "add"}}


def _warmed(arch: str):
    torch.manual_seed(0)
    m = build_model(arch, 10, 1)
    m.train()
    with torch.no_grad():  # BatchNorm running statistics from a few random batches (not the init's 0 / 1)
        for _ in range(4):
            m(torch.randn(16, 1, 28, 28))
    return m.eval()


@pytest.fixture(scope="module", params=["mobilenetv3", "efficientnet"])
def exported(request, tmp_path_factory):
    arch = request.param
    m = _warmed(arch)
    g = to_graph(m, (1, 28, 28), 0.1307, 0.3081, {"arch": arch})
    p = tmp_path_factory.mktemp(arch) / f"{arch}.hwsim"
    save_model(g, p)
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    return arch, m, g, load_model(p), x


def test_export_uses_the_new_ops_and_matches_torch(exported):
    arch, m, g, loaded, x = exported
    ops = {n.op for n in g.nodes}
    assert NEW[arch] <= ops and "batchnorm" in ops
    assert not ops & {"identity"}  # dropout and stochastic depth dropped at export
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_float(g, x), want, rtol=0, atol=1e-5)
    # the .hwsim file round trip (no ONNX importer involved): same graph, same float logits bit for bit
    assert [(n.name, n.op, n.inputs, n.attrs) for n in loaded.nodes] == [(n.name, n.op, n.inputs, n.attrs)
                                                                         for n in g.nodes]
    np.testing.assert_array_equal(run_float(loaded, x), run_float(g, x))


@pytest.mark.parametrize("profile", PROFILES)
def test_integer_run_fast_equals_reference_on_every_layer(exported, profile):
    arch, m, g, loaded, x = exported
    qg = compile_model(loaded, load_profile(profile), x)
    fast, ref = run_integer(qg, x[:1], "fast"), run_integer(qg, x[:1], "reference")
    assert fast.keys() == ref.keys() and len(fast) == len(qg.layers) + 1
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k], err_msg=f"{arch} {profile}: tensor {k}")
    r = run_quantized(qg, x, batch_size=3)  # batched run: the same integers as run_integer's single batch
    np.testing.assert_array_equal(r.logits[:1], qg.grids[qg.output_name].dequantize(fast[qg.output_name]).reshape(1, -1))
    assert np.isfinite(r.logits).all() and 0.0 <= accuracy(r.logits, np.zeros(8, int)) <= 1.0
    assert {s.op for s in r.layers} >= NEW[arch] - {"relu"}


def test_fake_quant_mirror_of_the_new_layers_is_within_one_code(exported):
    """Each new layer's mirror forward (frontends/pytorch/ops.py: the float function on the dequantized integer
    inputs, fake-quantized to the layer's grid) is within 1 LSB of the simulator's output on the same inputs
    (a table or requant differs from fake-quant only by its rounding); the whole mirror runs."""
    from frontends.pytorch import ops as fops
    from frontends.pytorch.fakequant import mirror_codes

    arch, m, g, loaded, x = exported
    qg = compile_model(loaded, load_profile("int8-fbgemm"), x)
    env = run_integer(qg, x[:2])
    checked = 0
    for lay in qg.layers:
        if lay.op not in ("hardswish", "hardsigmoid", "silu", "sigmoid", "mul"):
            continue
        deq = {i: torch.from_numpy(qg.grids[i].dequantize(env[i])) for i in lay.inputs}
        y = fops.get(lay.op).forward(lay, deq, {})
        go = qg.grids[lay.output]
        q = torch.clamp(torch.round(y / go.scale) + go.zero_point, *lay.clamp).numpy().astype(np.int64)
        assert np.abs(q - env[lay.output]).max() <= 1, lay.name
        checked += 1
    assert checked >= 4
    logits, codes = mirror_codes(qg, x[:2])
    assert logits.shape == (2, 10) and set(codes) >= {lay.output for lay in qg.layers}



@pytest.fixture(scope="module")
def mobilenetv3_rgb():
    """MobileNetV3-small-style at 3x16x16 with BatchNorm statistics drawn at random (benchmarks/network.py's
    way): every MAC layer takes a thread-safe fast path under the int8 engine profiles."""
    torch.manual_seed(1)
    m = build_model("mobilenetv3", 10, 3)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    x = np.random.default_rng(2).standard_normal((8, 3, 16, 16)).astype(np.float32)
    return to_graph(m.eval(), (3, 16, 16)), x


@pytest.mark.parametrize("profile,fallback", [("int8-onnxruntime", False), ("int8-fbgemm", False),
                                              ("int8-tflite", False), ("int8-tflite", True)])
def test_batch_workers_run_the_tables_and_the_mul_equal_one_thread(mobilenetv3_rgb, profile, fallback, monkeypatch):
    """The table activations (hard-swish, hard-sigmoid), the squeeze-excite mul and flatten run in execute's batch
    workers at once (issue 18: they took the lock, one worker at a time, and MobileNetV3 gained 1.1x from a second
    thread): 2 threads == 1 thread == reference, logits and every counter. Spies show the batch split and the mul's
    serial twin in the workers; ``fallback``: the mul's fused kernel declined (as outside its domain), its
    requantize fallback runs under the lock in the workers, still == reference."""
    import importlib

    from hwsim import execute, kernels

    mul_mod = importlib.import_module("hwsim.ops.mul")  # the module (hwsim.ops.mul the name is the function)
    g, x = mobilenetv3_rgb
    qg = compile_model(g, load_profile(profile), x)
    assert all(execute.prepare(qg)) and {"hardswish", "hardsigmoid", "mul", "flatten"} <= {lay.op for lay in qg.layers}
    ref = run_quantized(qg, x[:3], batch_size=3, impl="reference")
    seen = []
    for mod, name in ((execute, "_run_part"), (mul_mod, "_mul_ser"), (kernels, "exclusive")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name, **k: (seen.append((_n, kernels.serial())),
                                                                        _r(*a, **k))[1])
    if fallback:
        monkeypatch.setattr(mul_mod, "_mul_fast", lambda *a, **k: None)
    prev = kernels.workers()
    try:
        kernels.set_threads(2)
        for threads in (1, 2):
            seen.clear()
            got = run_quantized(qg, x[:3], batch_size=3, threads=threads)  # 2 threads: parts of 1 and 2
            np.testing.assert_array_equal(got.logits, ref.logits, err_msg=f"{profile} threads {threads}")
            assert [s.to_json() for s in got.layers] == [s.to_json() for s in ref.layers]
            split = threads == 2
            assert (("_run_part", False) in seen) == split
            assert (("_mul_ser", True) in seen) == (split and not fallback)
            assert (("exclusive", True) in seen) == (split and fallback), seen  # no other layer takes the lock
    finally:
        kernels.set_threads(prev)


def test_table_lookup_clamp_and_count_in_one_pass(mobilenetv3_rgb, monkeypatch):
    """A table activation's fast path reads a per-layer table clamped to its output range, in the output dtype,
    and counts the clipped entries in the same pass (activation._gather_clamped): == the reference execute
    (values, dtype, clip count) for the layer's clamp and a narrower one (entries beyond the grid: counted),
    narrow and int64 outputs; an input off the table still gives the one-line error."""
    from hwsim import ops
    from hwsim.errors import HwsimError
    from hwsim.execute import _new_stats
    from hwsim.ops import activation

    g, x = mobilenetv3_rgb
    qg = compile_model(g, load_profile("int8-tflite"), x)
    env = run_integer(qg, x[:2], "fast")
    calls = []
    real = activation._gather_clamped
    monkeypatch.setattr(activation, "_gather_clamped", lambda *a: (calls.append(1), real(*a))[1])
    tables = [lay for lay in qg.layers if lay.op in ("hardswish", "hardsigmoid")]
    assert tables
    clipped_any = 0
    for lay in tables:
        spec, gy = ops.get(lay.op), qg.grids[lay.output]
        for clamp in (lay.clamp, (lay.clamp[0] + 40, lay.clamp[1] - 40)):
            monkeypatch.setattr(lay, "clamp", clamp)
            for narrow in (True, False):
                n0 = len(calls)
                y, c = spec.execute(qg, lay, dict(env), _new_stats(qg)[0], "fast", 0, narrow)
                yr, cr = spec.execute(qg, lay, dict(env), _new_stats(qg)[0], "reference", 0, narrow)
                assert len(calls) == n0 + 1
                np.testing.assert_array_equal(y, yr)
                assert y.dtype == yr.dtype and c == cr
                clipped_any += c
    assert clipped_any > 0  # the narrower clamps clip: the count is exercised
    bad = dict(env)
    bad[tables[0].inputs[0]] = env[tables[0].inputs[0]].copy()
    bad[tables[0].inputs[0]].flat[0] = 10**6
    with pytest.raises(HwsimError, match="outside the table"):
        ops.get(tables[0].op).execute(qg, tables[0], bad, _new_stats(qg)[0], "fast", 0, True)
