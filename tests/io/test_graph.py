"""The .hwsim model file: round trip, every corrupt-file path, builder validation, shapes."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest

from hwsim.errors import HwsimError
from hwsim.graph import (KNOWN_OPS, Graph, GraphBuilder, InputSpec, Node, infer_shapes, load_model,
                         save_model, validate)


def small_graph(seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    b = GraphBuilder(input_shape=(1, 8, 8), mean=(0.1307,), std=(0.3081,))
    h = b.conv2d("conv1", "input", rng.normal(0, 1, (4, 1, 3, 3)), bias=rng.normal(0, 1, 4), padding=1)
    h = b.batchnorm("bn1", h, rng.uniform(0.5, 1, 4), rng.normal(0, 1, 4), rng.normal(0, 1, 4), rng.uniform(0.5, 1, 4))
    h = b.relu("relu1", h)
    h2 = b.conv2d("dw", h, rng.normal(0, 1, (4, 1, 3, 3)), padding=(1, 1, 1, 1), groups=4)
    h2 = b.relu6("relu2", h2)
    h = b.add("add", h, h2)
    h = b.concat("cat", [h, h2])
    h = b.maxpool2d("pool", h, kernel=2)
    h = b.avgpool2d("apool", h, kernel=2, stride=1, padding=1)
    h = b.global_avgpool("gap", h)
    h = b.flatten("flat", h)
    h = b.linear("fc", h, rng.normal(0, 1, (3, 8)))
    return b.build(outputs=[h], metadata={"arch": "small", "float_accuracy": 0.5, "recipe": {"kure": 1e-4}})


def assert_graphs_equal(a: Graph, b: Graph) -> None:
    assert a.inputs == b.inputs
    assert a.nodes == b.nodes
    assert a.outputs == b.outputs
    assert a.metadata == b.metadata
    assert sorted(a.tensors) == sorted(b.tensors)
    for k in a.tensors:
        assert a.tensors[k].dtype == b.tensors[k].dtype == np.float32
        assert a.tensors[k].tobytes() == b.tensors[k].tobytes(), k


@pytest.fixture()
def model_file(tmp_path):
    p = tmp_path / "m.hwsim"
    save_model(small_graph(), p)
    return p


def write_members(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)


def members_of(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def rewrite(src, dst, edit_json=None, tensors=None, extra=None, drop=None):
    """Copy a model file with graph.json edited by ``edit_json(doc)`` and/or new tensors."""
    m = members_of(src)
    if edit_json is not None:
        doc = json.loads(m["graph.json"])
        edit_json(doc)
        m["graph.json"] = json.dumps(doc).encode()
    if tensors is not None:
        m["tensors.npz"] = npz_bytes(tensors)
    if drop:
        del m[drop]
    m.update(extra or {})
    write_members(dst, m)
    return dst


# ----------------------------------------------------------------------------- round trip
def test_round_trip_bit_identical(tmp_path):
    g = small_graph()
    p = tmp_path / "model.hwsim"
    save_model(g, p)
    g2 = load_model(p)
    assert_graphs_equal(g, g2)
    assert g2.metadata["recipe"] == {"kure": 1e-4}
    with zipfile.ZipFile(p) as zf:
        assert sorted(zf.namelist()) == ["graph.json", "tensors.npz"]
        doc = json.loads(zf.read("graph.json"))
    assert doc["format"] == "hwsim-model" and doc["version"] == 1
    assert doc["nodes"][0]["attrs"] == {"stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1}
    # a second save of the loaded graph gives the same graph again
    save_model(g2, tmp_path / "again.hwsim")
    assert_graphs_equal(g, load_model(str(tmp_path / "again.hwsim")))


def test_round_trip_odd_tensor_names_and_special_values(tmp_path):
    g = small_graph()
    # names that np.savez(**kw) could not take, and values that must survive bit for bit
    g.tensors["file"] = g.tensors.pop("fc.weight")
    g.nodes[-1].params["weight"] = "file"
    g.tensors["file"][0, :3] = [np.float32(-0.0), np.float32(1e-45), np.finfo(np.float32).max]
    save_model(g, tmp_path / "odd.hwsim")
    assert_graphs_equal(g, load_model(tmp_path / "odd.hwsim"))


def test_save_is_atomic_and_leaves_no_temp(tmp_path):
    p = tmp_path / "m.hwsim"
    save_model(small_graph(0), p)
    before = p.read_bytes()
    bad = small_graph(1)
    bad.tensors["fc.weight"][0, 0] = np.nan
    with pytest.raises(HwsimError, match=r"m\.hwsim.*fc\.weight"):
        save_model(bad, p)
    assert p.read_bytes() == before  # the old file is untouched
    bad2 = small_graph(1)
    bad2.metadata["x"] = object()  # not JSON
    with pytest.raises(HwsimError, match="JSON"):
        save_model(bad2, p)
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.hwsim"]
    with pytest.raises(HwsimError, match="does not exist"):
        save_model(small_graph(), tmp_path / "nodir" / "m.hwsim")


def test_graph_helpers():
    g = small_graph()
    conv = g.node("conv1")
    assert g.param(conv, "weight").shape == (4, 1, 3, 3)
    assert g.param("conv1", "bias").shape == (4,)
    assert g.param("dw", "bias") is None
    assert [n.name for n in g.consumers("relu1")] == ["dw", "add"]
    assert g.consumers("fc") == []
    with pytest.raises(KeyError):
        g.node("nope")
    c = g.copy()
    c.tensors["conv1.weight"][0, 0, 0, 0] += 1
    c.nodes[0].attrs["padding"][0] = 0
    c.metadata["recipe"]["kure"] = 0
    assert g.tensors["conv1.weight"][0, 0, 0, 0] != c.tensors["conv1.weight"][0, 0, 0, 0]
    assert g.nodes[0].attrs["padding"] == [1, 1, 1, 1]
    assert g.metadata["recipe"]["kure"] == 1e-4


def test_infer_shapes():
    s = infer_shapes(small_graph())
    assert s["input"] == (1, 8, 8)
    assert s["conv1"] == (4, 8, 8) and s["cat"] == (8, 8, 8)
    assert s["pool"] == (8, 4, 4) and s["apool"] == (8, 5, 5)
    assert s["gap"] == (8, 1, 1) and s["flat"] == (8,) and s["fc"] == (3,)


# ----------------------------------------------------------------------------- corrupt files
def test_missing_file_and_directory(tmp_path):
    with pytest.raises(HwsimError, match=r"^.*nope\.hwsim: no such model file"):
        load_model(tmp_path / "nope.hwsim")
    with pytest.raises(HwsimError, match="not a file"):
        load_model(tmp_path)


def test_not_a_zip(tmp_path):
    p = tmp_path / "text.hwsim"
    p.write_text("hello")
    with pytest.raises(HwsimError, match=r"text\.hwsim: not a valid \.hwsim"):
        load_model(p)
    (tmp_path / "empty.hwsim").write_bytes(b"")
    with pytest.raises(HwsimError, match=r"empty\.hwsim: "):
        load_model(tmp_path / "empty.hwsim")


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.33, 0.5, 0.75, 0.9, 0.99])
def test_truncated_file(model_file, frac):
    data = model_file.read_bytes()
    cut = model_file.with_name("cut.hwsim")
    cut.write_bytes(data[:int(len(data) * frac)])
    with pytest.raises(HwsimError) as e:
        load_model(cut)
    assert str(e.value).startswith(str(cut) + ": ")
    assert "\n" not in str(e.value)


def test_every_single_byte_flip_is_detected_or_harmless(model_file):
    """Flip each byte of a real file: load either raises HwsimError naming the file or returns the
    identical graph (bytes no check covers, e.g. timestamps)."""
    data = bytearray(model_file.read_bytes())
    orig = load_model(model_file)
    bad = model_file.with_name("flip.hwsim")
    errors = 0
    for i in range(0, len(data), max(1, len(data) // 1500)):
        d = bytearray(data)
        d[i] ^= 0xFF
        bad.write_bytes(bytes(d))
        try:
            g = load_model(bad)
        except HwsimError as e:
            assert str(e).startswith(str(bad) + ": "), str(e)
            errors += 1
        else:
            assert_graphs_equal(orig, g)
    assert errors > 0


def test_bad_crc(model_file, tmp_path):
    data = bytearray(model_file.read_bytes())
    # flip one byte inside the stored tensors.npz payload (array data: only the CRC can see it)
    with zipfile.ZipFile(model_file) as zf:
        info = zf.getinfo("tensors.npz")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0x01
    p = tmp_path / "crc.hwsim"
    p.write_bytes(bytes(data))
    with pytest.raises(HwsimError, match=r"crc\.hwsim: corrupt .*CRC"):
        load_model(p)


@pytest.mark.parametrize("member", ["graph.json", "tensors.npz"])
def test_missing_member(model_file, tmp_path, member):
    p = rewrite(model_file, tmp_path / "x.hwsim", drop=member)
    with pytest.raises(HwsimError, match=rf"x\.hwsim: missing member '{member}'"):
        load_model(p)


def test_invalid_json(model_file, tmp_path):
    m = members_of(model_file)
    m["graph.json"] = b'{"format": "hwsim-model", "version": 1,'
    write_members(tmp_path / "j.hwsim", m)
    with pytest.raises(HwsimError, match=r"j\.hwsim: graph\.json is not valid JSON"):
        load_model(tmp_path / "j.hwsim")
    m["graph.json"] = b"[1, 2]"
    write_members(tmp_path / "j.hwsim", m)
    with pytest.raises(HwsimError, match="JSON object"):
        load_model(tmp_path / "j.hwsim")


@pytest.mark.parametrize("version", [0, 2, "1", None, True])
def test_wrong_version(model_file, tmp_path, version):
    p = rewrite(model_file, tmp_path / "v.hwsim", lambda d: d.__setitem__("version", version))
    with pytest.raises(HwsimError, match=r"v\.hwsim: unsupported model file version .*\(this hwsim reads version\(s\) 1\)"):
        load_model(p)


def test_wrong_format(model_file, tmp_path):
    p = rewrite(model_file, tmp_path / "f.hwsim", lambda d: d.__setitem__("format", "onnx"))
    with pytest.raises(HwsimError, match=r"f\.hwsim: .*format 'onnx'"):
        load_model(p)


def _set_node(name, key, value):
    def edit(doc):
        node = next(n for n in doc["nodes"] if n["name"] == name)
        if value is _DEL:
            del node[key]
        else:
            node[key] = value
    return edit


_DEL = object()


def _set_attr(name, key, value):
    def edit(doc):
        node = next(n for n in doc["nodes"] if n["name"] == name)
        if value is _DEL:
            del node["attrs"][key]
        else:
            node["attrs"][key] = value
    return edit


@pytest.mark.parametrize("edit, pattern", [
    (_set_node("relu1", "op", "gelu"), r"unknown op 'gelu' \(known ops: conv2d, linear, batchnorm"),
    (_set_attr("conv1", "groups", _DEL), r"node 'conv1' \(conv2d\): missing attr 'groups'"),
    (_set_attr("conv1", "groups", 1.5), r"attr 'groups' = 1.5 must be a positive integer"),
    (_set_attr("conv1", "groups", True), r"attr 'groups' = True must be a positive integer"),
    (_set_attr("conv1", "stride", [1]), r"attr 'stride' = \[1\] must be a list of 2 positive integers"),
    (_set_attr("conv1", "padding", [1, 1]), r"attr 'padding' .* 4 non-negative integers"),
    (_set_attr("conv1", "padding", [1, 1, -1, 1]), r"attr 'padding' .* 4 non-negative integers"),
    (_set_attr("conv1", "bias_term", True), r"unknown attr 'bias_term' \(allowed: stride, padding, dilation, groups\)"),
    (_set_attr("relu1", "inplace", True), r"unknown attr 'inplace' \(allowed: none\)"),
    (_set_attr("bn1", "eps", -1.0), r"attr 'eps' = -1.0 must be a positive finite number"),
    (_set_attr("bn1", "eps", "1e-5"), r"attr 'eps' = '1e-5' must be a positive finite number"),
    (_set_attr("cat", "axis", 2), r"attr 'axis' = 2 must be 1 \(the channel axis\)"),
    (_set_attr("pool", "kernel", [2, 0]), r"attr 'kernel' = \[2, 0\] must be a list of 2 positive integers"),
    (_set_attr("pool", "padding", [2, 0, 0, 0]), r"padding \[2, 0, 0, 0\] must be smaller than kernel"),
    (_set_attr("conv1", "groups", 2), r"groups=2 must divide input channels 1"),
    (_set_attr("dw", "groups", 2), r"node 'dw' \(conv2d\): weight shape \(4, 1, 3, 3\) has 1 input channels per group"),
    (_set_attr("conv1", "dilation", [9, 1]), r"does not fit input 8x8"),
    (_set_node("conv1", "params", {"weight": "nope.weight"}), r"param 'weight' names tensor 'nope.weight', which is not in tensors\.npz"),
    (_set_node("conv1", "params", {"bias": "conv1.bias"}), r"missing param 'weight'"),
    (_set_node("conv1", "params", {"weight": "conv1.weight", "scale": "conv1.bias"}), r"unknown param 'scale' \(allowed: weight, bias\)"),
    (_set_node("bn1", "params", {"weight": "bn1.weight", "bias": "bn1.bias", "running_mean": "bn1.running_mean"}),
     r"missing param 'running_var'"),
    (_set_node("conv1", "params", {"weight": "conv1.weight", "bias": "fc.weight"}), r"bias shape \(3, 8\) must be \(4,\)"),
    (_set_node("bn1", "params", {"weight": "conv1.bias", "bias": "bn1.bias", "running_mean": "bn1.running_mean",
                                 "running_var": "fc.weight"}), r"running_var shape \(3, 8\) must be \(4,\)"),
    (_set_node("fc", "params", {"weight": "conv1.weight"}), r"weight shape \(4, 1, 3, 3\) must be \[out, in\]"),
    (_set_node("fc", "inputs", ["gap"]), r"linear needs a flat \(features,\) input"),
    (_set_node("add", "inputs", ["relu1"]), r"needs exactly 2 input\(s\), got 1"),
    (_set_node("add", "inputs", ["relu1", "input"]), r"inputs 'relu1' \(4, 8, 8\) and 'input' \(1, 8, 8\) must have the same shape"),
    (_set_node("conv1", "inputs", ["relu1"]), r"input 'relu1' is not a graph input or an earlier node's output \(nodes must be in topological order\)"),
    (_set_node("relu1", "name", "conv1"), r"duplicate node name 'conv1'"),
    (_set_node("relu1", "outputs", ["conv1"]), r"duplicate tensor name 'conv1'"),
    (_set_node("relu1", "outputs", ["a", "b"]), r"outputs \['a', 'b'\] must be exactly one tensor name"),
    (_set_node("relu1", "name", {"x": 1}), r"node name \{'x': 1\}: must be a non-empty string"),
    (_set_node("relu1", "color", "red"), r"nodes\[2\] \('relu1'\): unknown key 'color'"),
    (_set_node("relu1", "op", _DEL), r"nodes\[2\] \('relu1'\): missing key 'op'"),
    (lambda d: d.__setitem__("outputs", ["nope"]), r"output 'nope' is not a graph input or a node output"),
    (lambda d: d.__setitem__("outputs", []), r"exactly 1 output"),
    (lambda d: d.__setitem__("inputs", []), r"exactly 1 input"),
    (lambda d: d["inputs"][0].__setitem__("shape", [1, 8]), r"input 'input': shape \(1, 8\) must be 3 positive integers"),
    (lambda d: d["inputs"][0].__setitem__("mean", [0.1, 0.2]), r"mean .* must be 1 finite number\(s\)"),
    (lambda d: d["inputs"][0].__setitem__("std", [0.0]), r"std \(0\.0,\) must be positive"),
    (lambda d: d["inputs"][0].update(shape=[2, 8, 8], mean=[0, 0], std=[1, 1]), r"node 'conv1' \(conv2d\): weight shape \(4, 1, 3, 3\) has 1 input channels per group, but input 'input' has 2"),
    (lambda d: d.__setitem__("extra", 1), r"unknown key 'extra'"),
    (lambda d: d.__setitem__("metadata", [1]), r"metadata must be an object"),
    (lambda d: d.__setitem__("nodes", {}), r"nodes must be a list"),
])
def test_bad_graph_json(model_file, tmp_path, edit, pattern):
    p = rewrite(model_file, tmp_path / "bad.hwsim", edit)
    with pytest.raises(HwsimError, match=pattern) as e:
        load_model(p)
    msg = str(e.value)
    assert msg.startswith(str(p) + ": ") and "\n" not in msg


def _tensors(path):
    with zipfile.ZipFile(path) as zf, np.load(io.BytesIO(zf.read("tensors.npz"))) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_weight_is_named(model_file, tmp_path, bad):
    t = _tensors(model_file)
    t["dw.weight"][2, 0, 1, 1] = bad
    p = rewrite(model_file, tmp_path / "nan.hwsim", tensors=t)
    with pytest.raises(HwsimError, match=r"nan\.hwsim: tensor 'dw\.weight': contains NaN or Inf \(1 of 36"):
        load_model(p)


def test_wrong_dtype_and_pickled_tensor(model_file, tmp_path):
    t = _tensors(model_file)
    t["fc.weight"] = t["fc.weight"].astype(np.float64)
    p = rewrite(model_file, tmp_path / "f64.hwsim", tensors=t)
    with pytest.raises(HwsimError, match=r"tensor 'fc\.weight': dtype float64 \(tensors must be float32\)"):
        load_model(p)
    t = _tensors(model_file)
    t["fc.weight"] = np.array([{"a": 1}], dtype=object)  # needs pickle to read
    p = rewrite(model_file, tmp_path / "obj.hwsim", tensors=t)
    with pytest.raises(HwsimError, match=r"obj\.hwsim: tensors\.npz: member 'fc\.weight\.npy': \.npy dtype '\|O'"):
        load_model(p)


def test_tensor_shape_vs_attrs(model_file, tmp_path):
    t = _tensors(model_file)
    t["fc.weight"] = np.zeros((3, 7), np.float32)  # previous layer has 8 features
    p = rewrite(model_file, tmp_path / "s.hwsim", tensors=t)
    with pytest.raises(HwsimError, match=r"s\.hwsim: node 'fc' \(linear\): weight shape \(3, 7\) expects 7 input features but 'flat' has 8"):
        load_model(p)
    t = _tensors(model_file)
    t["dw.weight"] = np.zeros((4, 2, 3, 3), np.float32)
    p = rewrite(model_file, tmp_path / "s2.hwsim", tensors=t)
    with pytest.raises(HwsimError, match=r"node 'dw' \(conv2d\): weight shape \(4, 2, 3, 3\) has 2 input channels per group"):
        load_model(p)


def test_corrupt_inner_npz(model_file, tmp_path):
    p = rewrite(model_file, tmp_path / "npz.hwsim", extra={"tensors.npz": b"PK\x03\x04garbage"})
    with pytest.raises(HwsimError, match=r"npz\.hwsim: tensors\.npz: not a valid"):
        load_model(p)


# ----------------------------------------------------------------------------- builder
def test_builder_normalises_attrs():
    b = GraphBuilder(input_shape=(2, 9, 9), mean=0.5, std=0.25)
    h = b.conv2d("c", "input", np.zeros((2, 2, 3, 3)), stride=(2, 1), padding=(1, 2), dilation=2)
    h = b.maxpool2d("p", h, kernel=(2, 3), padding=(0, 1, 0, 1))
    g = b.build()
    assert g.inputs == [InputSpec("input", (2, 9, 9), (0.5, 0.5), (0.25, 0.25))]
    assert g.nodes[0].attrs == {"stride": [2, 1], "padding": [1, 1, 2, 2], "dilation": [2, 2], "groups": 1}
    assert g.nodes[1].attrs == {"kernel": [2, 3], "stride": [2, 3], "padding": [0, 1, 0, 1]}
    assert g.outputs == ["p"] and h == "p"
    assert g.tensors["c.weight"].dtype == np.float32 and "c.bias" not in g.tensors


def test_builder_copies_weights():
    w = np.ones((2, 4), np.float32)
    b = GraphBuilder(input_shape=(4, 1, 1))
    b.flatten("f", "input")
    b.linear("fc", "f", w)
    g = b.build()
    w[0, 0] = 7
    assert g.tensors["fc.weight"][0, 0] == 1


@pytest.mark.parametrize("make, pattern", [
    (lambda b: b.conv2d("c", "input", np.zeros((4, 2, 3, 3))), r"GraphBuilder: node 'c' \(conv2d\): weight shape \(4, 2, 3, 3\) has 2 input channels per group.*expected 1"),
    (lambda b: b.conv2d("c", "input", np.zeros((4, 1, 3, 3)), padding=(1, 2, 3)), r"GraphBuilder: c: padding \(1, 2, 3\)"),
    (lambda b: b.conv2d("c", "input", np.zeros((4, 1, 3, 3)), stride=0), r"attr 'stride' = \[0, 0\]"),
    (lambda b: b.conv2d("c", "input", np.zeros((3, 1, 3, 3)), groups=2), r"groups=2 must divide input channels 1"),
    (lambda b: b.linear("fc", "input", np.zeros((3, 64))), r"linear needs a flat"),
    (lambda b: b.linear("fc", b.flatten("f", "input"), np.zeros((3, 65))), r"expects 65 input features but 'f' has 64"),
    (lambda b: b.relu("r", "nope"), r"input 'nope' is not a graph input"),
    (lambda b: (b.relu("r", "input"), b.relu("r", "r")), r"duplicate node name 'r'"),
    (lambda b: b.relu("input", "input"), r"duplicate tensor name 'input'"),
    (lambda b: b.batchnorm("bn", "input", np.ones(2), np.ones(2), np.ones(2), np.ones(2)), r"weight shape \(2,\) must be \(1,\)"),
    (lambda b: b.add("a", "input", b.maxpool2d("p", "input", 2)), r"must have the same shape"),
    (lambda b: b.concat("c", ["input", b.maxpool2d("p", "input", 2)]), r"must agree on every axis but the channel axis"),
    (lambda b: b.concat("c", []), r"needs at least 1 input"),
    (lambda b: b.conv2d("c", "input", np.full((1, 1, 1, 1), np.nan)), r"tensor 'c.weight': contains NaN"),
])
def test_builder_errors(make, pattern):
    b = GraphBuilder(input_shape=(1, 8, 8))
    with pytest.raises(HwsimError, match=pattern):
        make(b)
        b.build()


def test_builder_bad_input_spec():
    with pytest.raises(HwsimError, match=r"mean \(0\.1, 0\.2\) must be 1 finite"):
        GraphBuilder(input_shape=(1, 4, 4), mean=(0.1, 0.2)).build(outputs=["input"])
    with pytest.raises(HwsimError, match="no nodes"):
        GraphBuilder(input_shape=(1, 4, 4)).build()


def test_validate_and_infer_shapes_on_in_memory_graph():
    g = small_graph()
    validate(g)
    g.nodes[0].attrs["activation"] = "relu"  # compile's fused attr: tolerated by infer_shapes only
    assert infer_shapes(g)["fc"] == (3,)
    with pytest.raises(HwsimError, match=r"^graph: node 'conv1' \(conv2d\): unknown attr 'activation'"):
        validate(g)
    g2 = small_graph()
    g2.nodes[3], g2.nodes[4] = g2.nodes[4], g2.nodes[3]
    with pytest.raises(HwsimError, match="topological order"):
        infer_shapes(g2)
    g3 = Graph([InputSpec("x", (1, 2, 2), (0.0,), (1.0,))], [Node("n", "relu", ["x"], ["y"])], ["y"], {})
    assert infer_shapes(g3) == {"x": (1, 2, 2), "y": (1, 2, 2)}
    assert set(KNOWN_OPS) == {"conv2d", "linear", "batchnorm", "relu", "relu6", "maxpool2d", "avgpool2d",
                              "global_avgpool", "add", "concat", "flatten", "identity", "sigmoid", "hardsigmoid",
                              "hardswish", "silu", "tanh", "mul", "mean"}
