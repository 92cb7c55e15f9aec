"""The ops of issue 16 wired through the registry: graph schema, compile (tables, fixed grids, forms from the
profile), execute (fast == reference), golden fields, compare's cause, ONNX export — and, layer by layer,
the compiled graph against the engines that implement each op (PyTorch's quantized CPU ops for the torch
profiles, ONNX Runtime for int8-onnxruntime) on the same integer inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hwsim import ops
from hwsim.compile import compile_model
from hwsim.errors import HwsimError
from hwsim.execute import run_integer, run_quantized
from hwsim.floatref import run_float
from hwsim.graph import GraphBuilder, load_model, save_model, validate
from hwsim.ops import activation as A
from hwsim.profile import load_profile

NEW_OPS = ("sigmoid", "hardsigmoid", "hardswish", "silu", "tanh", "mul", "mean", "identity")


def _w(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def se_net(seed: int = 0, size: int = 8, with_tables: bool = True):
    """conv -> hardswish -> [mean -> 1x1 conv -> relu -> 1x1 conv -> hardsigmoid] * (mul) -> avgpool (no padding
    taps) -> conv -> tanh -> silu -> sigmoid -> identity -> global pool -> linear. ``with_tables=False``: only
    the ops ONNX Runtime's quantized set expresses (relu for hardswish, sigmoid gate, no tanh / silu)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((3, size, size), mean=0.5, std=0.25)
    x = b.conv2d("c1", "input", _w(rng, 8, 3, 3, 3), _w(rng, 8, scale=0.1), padding=1)
    h = b._add("hs", "hardswish", [x]) if with_tables else b.relu("hs", x)
    m = b._add("m", "mean", [h], {"keepdims": True})
    s = b.relu("s1r", b.conv2d("s1", m, _w(rng, 4, 8, 1, 1), _w(rng, 4, scale=0.1)))
    s = b.conv2d("s2", s, _w(rng, 8, 4, 1, 1), _w(rng, 8, scale=0.1))
    gate = b._add("gate", "hardsigmoid" if with_tables else "sigmoid", [s])
    y = b._add("se", "mul", [h, gate])
    y = b.avgpool2d("ap", y, 3, 1, 1, count_include_pad=False)
    y = b.conv2d("c2", y, _w(rng, 8, 8, 3, 3, scale=0.2), _w(rng, 8, scale=0.1), padding=1)
    if with_tables:
        y = b._add("th", "tanh", [y])
        y = b._add("si", "silu", [y])
        y = b._add("sg", "sigmoid", [y])
    y = b._add("id", "identity", [y])
    y = b.flatten("fl", b.global_avgpool("gp", y))
    y = b.linear("fc", y, _w(rng, 3, 8))
    return b.build()


def images(n=6, size=8, seed=1):
    return ((np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32) - 0.5) / 0.25).astype(np.float32)


@pytest.fixture(scope="module")
def net():
    return se_net()


# ----------------------------------------------------------------------------- schema, float reference, files
def test_schema_shapes_and_bad_attrs(net):
    shapes = {n.name: n for n in net.nodes}
    assert shapes["m"].attrs == {"keepdims": True} and shapes["ap"].attrs["count_include_pad"] is False
    g = se_net()
    g.nodes[[n.name for n in g.nodes].index("gate")].attrs["alpha"] = "x"
    with pytest.raises(HwsimError, match=r"node 'gate' \(hardsigmoid\): attr 'alpha' = 'x' must be a finite number"):
        validate(g)
    g = se_net()
    g.nodes[[n.name for n in g.nodes].index("ap")].attrs["count_include_pad"] = 0
    with pytest.raises(HwsimError, match="attr 'count_include_pad' = 0 must be true or false"):
        validate(g)
    g = se_net()
    se = g.nodes[[n.name for n in g.nodes].index("se")]
    se.inputs = [se.inputs[0], "s1"]  # (4, 1, 1) does not broadcast to (8, 8, 8)
    with pytest.raises(HwsimError, match=r"node 'se' \(mul\): inputs .* must have the same shape or one must broadcast"):
        validate(g)


def test_float_reference_matches_torch(net):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = images()
    env = run_float(net, x, return_all=True)
    t = {k: torch.from_numpy(v) for k, v in env.items()}
    np.testing.assert_allclose(env["hs"], F.hardswish(t["c1"]).numpy(), atol=1e-6)
    np.testing.assert_allclose(env["m"], t["hs"].mean(dim=(2, 3), keepdim=True).numpy(), atol=1e-6)
    np.testing.assert_allclose(env["gate"], F.hardsigmoid(t["s2"]).numpy(), atol=1e-6)
    np.testing.assert_allclose(env["ap"], F.avg_pool2d(t["se"], 3, 1, 1, count_include_pad=False).numpy(), atol=1e-6)
    assert not np.allclose(env["ap"], F.avg_pool2d(t["se"], 3, 1, 1).numpy(), atol=1e-4)  # the border differs
    for name, f in (("th", torch.tanh), ("si", F.silu), ("sg", torch.sigmoid)):
        np.testing.assert_allclose(env[name], f(t[list(env)[list(env).index(name) - 1]]).numpy(), atol=1e-6)


def test_hwsim_file_round_trip(tmp_path, net):
    p = tmp_path / "se.hwsim"
    save_model(net, p)
    g = load_model(p)
    assert [(n.op, n.attrs) for n in g.nodes] == [(n.op, n.attrs) for n in net.nodes]
    x = images()
    np.testing.assert_array_equal(run_float(g, x), run_float(net, x))


# ----------------------------------------------------------------------------- compile and execute
@pytest.mark.parametrize("profile", ["int8-tflite", "int8-fbgemm", "int8-onnxruntime", "w4a4", "int4-pow2",
                                     "int8-stochastic"])
def test_fast_equals_reference_on_every_layer(net, profile):
    x = images()
    qg = compile_model(net, load_profile(profile), x)
    fast, ref = run_integer(qg, x[:3], "fast"), run_integer(qg, x[:3], "reference")
    assert fast.keys() == ref.keys()
    for k in fast:
        np.testing.assert_array_equal(fast[k], ref[k], err_msg=f"{profile}: tensor {k}")
    # the table layers are the functional API on the layer's own grids (the wiring, not just self-consistency)
    for lay in qg.layers:
        if lay.op in A.ACTIVATIONS:
            gi, go = qg.grids[lay.inputs[0]], qg.grids[lay.output]
            want = A.activation(fast[lay.inputs[0]], lay.op, gi.scale, gi.zero_point, gi.qmin, gi.qmax, go.scale,
                                go.zero_point, *lay.clamp, A.layer_rounding(lay.profile.requant), form=lay.form,
                                alpha=A.HARDSIGMOID_TORCH[0], beta=A.HARDSIGMOID_TORCH[1])
            np.testing.assert_array_equal(fast[lay.output], want, err_msg=f"{profile}: {lay.name}")


def test_profile_forms_and_fixed_grids(net):
    x = images()
    tfl = compile_model(net, load_profile("int8-tflite"), x)
    forms = {lay.name: lay.form for lay in tfl.layers if lay.form}
    assert forms == {"hs": "tflite_hardswish", "gate": "exact", "se": "requant", "th": "tflite_lut", "si": "exact",
                     "sg": "tflite_lut"}
    g = tfl.grids
    assert (g["sg"].scale, g["sg"].zero_point) == (1 / 256, -128) and (g["th"].scale, g["th"].zero_point) == (1 / 128, 0)
    fb = compile_model(net, load_profile("int8-fbgemm"), x)
    assert {lay.name: lay.form for lay in fb.layers if lay.op in A.ACTIVATIONS} == {
        "hs": "torch", "gate": "torch", "th": "torch", "si": "exact", "sg": "torch"}
    g = fb.grids
    assert [(g[t].scale, g[t].zero_point) for t in ("gate", "th", "sg")] == [(1 / 256, 0), (1 / 128, 128), (1 / 256, 0)]
    ex = compile_model(net, load_profile("int8-per-tensor"), x)  # exact tables: calibrated output grids
    assert {lay.form for lay in ex.layers if lay.op in A.ACTIVATIONS} == {"exact"}
    assert ex.grids["sg"].scale != 1 / 256
    # a table is built once per layer, over the whole input grid
    lay = ex.layer("si")
    assert lay.table.shape == (ex.grids["th"].qmax - ex.grids["th"].qmin + 1,) and lay.table_qmin == ex.grids["th"].qmin


def test_overrides_match_the_new_kinds(tmp_path, net):
    f = tmp_path / "p.toml"
    f.write_text('extends = "int8-fbgemm"\n[[overrides]]\nop = "activation"\nrequant.activation_form = "exact"\n'
                 '[[overrides]]\nop = "mul"\nrequant.mul_form = "requant"\n')
    prof = load_profile(str(f))
    qg = compile_model(net, prof, images())
    assert {lay.form for lay in qg.layers if lay.op in A.ACTIVATIONS} == {"exact"}
    assert qg.layer("se").form == "requant" and qg.layer("se").kind == "mul"


def test_clip_events_are_counted():
    """A table's values beyond the output grid are clamped and counted like any requant: the hardswish and mul
    outputs get a range of a quarter of what calibration saw."""
    from hwsim.compile import QuantHooks

    def rng_(name, v, fmt):
        lo, hi = float(v.min()), float(v.max())
        return (lo / 4, hi / 4) if name in ("hs", "se") else (lo, hi)

    g = se_net()
    x = images()
    prof = load_profile("int8-per-tensor")
    r = run_quantized(compile_model(g, prof, x, hooks=QuantHooks(activation_range=rng_)), x)
    st = {s.name: s.clipped for s in r.layers}
    assert st["hs"] > 0 and st["se"] > 0
    r0 = run_quantized(compile_model(g, prof, x), x)
    assert {s.name: s.clipped for s in r0.layers}["hs"] == 0


def test_count_include_pad_default_is_todays_avgpool():
    g = se_net()
    ap = next(n for n in g.nodes if n.name == "ap")
    x = images()
    qf = compile_model(g, load_profile("int8-tflite"), x)
    del ap.attrs["count_include_pad"]
    qt = compile_model(g, load_profile("int8-tflite"), x)
    a, b = run_integer(qf, x), run_integer(qt, x)
    env = b
    want = ops.avg_pool2d(env["se"], 3, 1, 1, qt.grids["se"].zero_point, "half_even")
    np.testing.assert_array_equal(b["ap"], want)  # no attr: today's ops.avg_pool2d, byte for byte
    assert not np.array_equal(a["ap"], b["ap"])


# ----------------------------------------------------------------------------- engines, layer by layer
def _q(torch, codes, grid, dtype):
    return torch._make_per_tensor_quantized_tensor(torch.from_numpy(codes.astype(np.uint8 if dtype == "u8" else np.int8)),
                                                   grid.scale, grid.zero_point)


def test_torch_quantized_ops_agree_layer_by_layer(net):
    """int8-fbgemm (PyTorch x86): each new layer's output == PyTorch's quantized op on the same input codes and
    grids (sigmoid / hardsigmoid / tanh on their fixed output grids, hardswish, mul, mean, avg_pool2d with
    count_include_pad=False). The exact tables, fed the same inputs, disagree somewhere (a match means something)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = images(16)
    qg = compile_model(net, load_profile("int8-fbgemm"), x)
    env = run_integer(qg, x)
    ex = compile_model(net, load_profile("int8-fbgemm", {"requant.activation_form": "exact",
                                                         "requant.mean_form": "exact", "requant.avgpool_form": "exact",
                                                         "requant.mul_form": "requant"}), x)
    differ = set()
    for lay in qg.layers:
        if lay.op not in NEW_OPS + ("avgpool2d",) or lay.op in ("silu", "identity"):
            continue
        gi, go = qg.grids[lay.inputs[0]], qg.grids[lay.output]
        qx = _q(torch, env[lay.inputs[0]], gi, "u8")
        if lay.op == "sigmoid":
            y = torch.sigmoid(qx)
        elif lay.op == "tanh":
            y = torch.tanh(qx)
        elif lay.op == "hardsigmoid":
            y = F.hardsigmoid(qx)
        elif lay.op == "hardswish":
            y = torch.ops.quantized.hardswish(qx, go.scale, go.zero_point)
        elif lay.op == "mul":
            y = torch.ops.quantized.mul(qx, _q(torch, env[lay.inputs[1]], qg.grids[lay.inputs[1]], "u8"), go.scale,
                                        go.zero_point)
        elif lay.op == "mean":
            y = torch.mean(qx, dim=(2, 3), keepdim=True)
        else:
            y = F.avg_pool2d(qx, 3, 1, 1, count_include_pad=False)
        assert (y.q_scale(), y.q_zero_point()) == pytest.approx((go.scale, go.zero_point), rel=1e-7), lay.name
        np.testing.assert_array_equal(y.int_repr().numpy().astype(np.int64), env[lay.output], err_msg=lay.name)
        # the exact / generic forms on the same input codes
        e_env = dict(env)
        from hwsim.execute import LayerStats, run_layer

        elay = ex.layer(lay.name)
        run_layer(ex, elay, e_env, LayerStats(lay.name, lay.op, lay.kind), "fast")
        if ex.grids[lay.output] == go and not np.array_equal(e_env[lay.output], env[lay.output]):
            differ.add(lay.op)
        if ex.grids[lay.output] != go:
            differ.add(lay.op)
    assert differ >= {"sigmoid", "hardsigmoid", "tanh"}, differ


def test_onnxruntime_agrees_on_the_exported_graph():
    """int8-onnxruntime: QLinearSigmoid, QLinearMul, QLinearGlobalAveragePool (mean), QLinearAveragePool with
    count_include_pad = 0 — every tensor of ORT's run equals run_integer's."""
    pytest.importorskip("onnxruntime")
    from tests.test_onnx_export import _assert_identical

    g = se_net(with_tables=False)
    x = images(8)
    qg = compile_model(g, load_profile("int8-onnxruntime"), x)
    env = run_integer(qg, x)
    assert _assert_identical(qg, env) >= len(qg.layers)


def test_onnx_export_refuses_what_it_cannot_express(net):
    pytest.importorskip("onnx")
    from hwsim.onnx_export import to_onnx

    qg = compile_model(net, load_profile("int8-onnxruntime"), images())
    assert "Gather" in {n.op_type for n in to_onnx(qg).graph.node}  # tables export (tests/test_onnx_export.py)
    qg = compile_model(se_net(with_tables=False), load_profile("int8-fbgemm"), images())
    with pytest.raises(HwsimError, match=r"layer 'm': mean with mean_form 'torch', keepdims True \(profile 'int8-fbgemm'\) cannot be expressed"):
        to_onnx(qg)


# ----------------------------------------------------------------------------- golden vectors, compare
def test_golden_vectors_carry_the_table(tmp_path, net):
    from hwsim.golden import write_golden

    x = images(4)
    qg = compile_model(net, load_profile("int8-tflite"), x)
    out = tmp_path / "g"
    write_golden(qg, x[:2], str(out))
    man = json.loads((out / "manifest.json").read_text())
    layers = {d["name"]: d for d in man["layers"]}
    assert layers["sg"]["form"] == "tflite_lut" and layers["hs"]["form"] == "tflite_hardswish"
    t = np.load(out / layers["sg"]["table"]["npy"])
    lay = qg.layer("sg")
    np.testing.assert_array_equal(t, np.clip(lay.table, *lay.clamp))
    assert layers["se"]["mul_form"] == "requant" and layers["m"]["mean_form"] == "tflite_optimized"
    assert layers["ap"]["count_include_pad"] is False


def test_compare_names_the_table_rounding(net):
    from hwsim.compare import _cause
    from hwsim.execute import LayerStats

    x = images(4)
    qg = compile_model(net, load_profile("int8-tflite"), x)
    lay = qg.layer("sg")
    msg = _cause(qg, lay, run_integer(qg, x), 1, LayerStats(lay.name, lay.op, lay.kind))
    assert msg.startswith("sigmoid table (tflite_lut, half_away):") and "only the table's rounding" in msg


def test_hardsigmoid_alpha_beta_from_onnx():
    """ONNX HardSigmoid's alpha = 0.2: the exact table of clip(0.2 x + 0.5, 0, 1) (the float32 value of 0.2); under a
    torch profile (PyTorch's kernel fixes 1/6, 1/2) the layer takes the exact form on a calibrated grid."""
    rng = np.random.default_rng(3)
    b = GraphBuilder((2, 4, 4))
    y = b.conv2d("c", "input", _w(rng, 2, 2, 1, 1, scale=2.0))
    b._add("h", "hardsigmoid", [y], {"alpha": float(np.float32(0.2)), "beta": 0.5})
    g = b.build()
    x = (rng.standard_normal((4, 2, 4, 4)) * 3).astype(np.float32)
    env = run_float(g, x, return_all=True)
    np.testing.assert_allclose(env["h"], np.clip(np.float32(0.2) * env["c"] + 0.5, 0, 1), atol=1e-6)
    qg = compile_model(g, load_profile("int8-fbgemm"), x)
    lay = qg.layer("h")
    assert lay.form == "exact" and qg.grids["h"].scale != 1 / 256
    gi, go = qg.grids["c"], qg.grids["h"]
    out = run_integer(qg, x)
    want = A.activation(out["c"], "hardsigmoid", gi.scale, gi.zero_point, gi.qmin, gi.qmax, go.scale, go.zero_point,
                        *lay.clamp, "half_even", alpha=float(np.float32(0.2)), beta=0.5)
    np.testing.assert_array_equal(out["h"], want)
    np.testing.assert_array_equal(run_integer(qg, x, "reference")["h"], want)


def test_litert_agrees_layer_by_layer(net):
    """int8-tflite: each table layer's table == LiteRT's LOGISTIC / TANH / HARD_SWISH on every input code of the
    layer's grids (sigmoid and tanh on TFLite's required output grids); the mul layer == LiteRT MUL and the
    count_include_pad=False average pool == AVERAGE_POOL_2D (SAME) on the layer's own input codes (optimized,
    i.e. the default resolver)."""
    pytest.importorskip("ai_edge_litert.interpreter")
    from tests.core import test_litert_engine as T
    from tests.ops.test_activation import _tfl_unary
    from tests.ops.test_mul import _tfl_mul

    x = images(8)
    qg = compile_model(net, load_profile("int8-tflite"), x)
    env = run_integer(qg, x)
    names = {"sigmoid": "LOGISTIC", "tanh": "TANH", "hardswish": "HARD_SWISH"}
    seen = set()
    for lay in qg.layers:
        gi, go = qg.grids[lay.inputs[0]], qg.grids[lay.output]
        if lay.op in names:
            got = _tfl_unary(names[lay.op], gi.scale, gi.zero_point, go.scale, go.zero_point, "optimized")
            np.testing.assert_array_equal(got, np.clip(lay.table, *lay.clamp), err_msg=lay.name)
        elif lay.op == "mul":
            gb = qg.grids[lay.inputs[1]]
            got = _tfl_mul(env[lay.inputs[0]], gi.scale, gi.zero_point, env[lay.inputs[1]], gb.scale, gb.zero_point,
                           go.scale, go.zero_point, "optimized")
            np.testing.assert_array_equal(got, env[lay.output], err_msg=lay.name)
        elif lay.op == "avgpool2d":
            def options(b):
                T.tflite.Pool2DOptionsStart(b)
                T.tflite.Pool2DOptionsAddPadding(b, 0)  # SAME
                for f in ("StrideW", "StrideH"):
                    getattr(T.tflite, "Pool2DOptionsAdd" + f)(b, 1)
                for f in ("FilterWidth", "FilterHeight"):
                    getattr(T.tflite, "Pool2DOptionsAdd" + f)(b, 3)
                T.tflite.Pool2DOptionsAddFusedActivationFunction(b, 0)
                return T.tflite.Pool2DOptionsEnd(b)
            xt = env[lay.inputs[0]].transpose(0, 2, 3, 1)
            tensors = [T._i8(xt.shape, gi.scale, gi.zero_point), T._i8(xt.shape, gi.scale, gi.zero_point)]
            got = T.run(T.build_model(tensors, T.BO.AVERAGE_POOL_2D, [0], [1], T.BOpt.Pool2DOptions, options, [0]),
                        "optimized", xt).transpose(0, 3, 1, 2)
            np.testing.assert_array_equal(got, env[lay.output], err_msg=lay.name)
        else:
            continue
        seen.add(lay.op)
    assert seen == {"sigmoid", "tanh", "hardswish", "mul", "avgpool2d"}
