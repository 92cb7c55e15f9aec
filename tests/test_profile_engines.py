"""`hwsim profiles` groups the built-in profiles by the engine they reproduce (profile key ``engine``)."""

import json

import pytest

from hwsim.errors import HwsimError
from hwsim.profile import builtin_names, load_profile, profile_toml
from tests.conftest import invoke


def test_engine_profiles_are_grouped_under_their_engine():
    r = invoke("profiles")
    assert r.exit_code == 0, r.output
    blocks = {b.split("\n", 1)[0]: b for b in r.output.strip().split("\n\n")}
    by_engine = {}
    for n in builtin_names():
        by_engine.setdefault(load_profile(n).engine, []).append(n)
    assert set(by_engine) >= {"ONNX Runtime", "PyTorch", "LiteRT", ""}
    for engine, names in by_engine.items():
        title = f"{engine}: its integers bit for bit" if engine else "design space (hardware studies, no engine)"
        rows = {line.split()[0] for line in blocks[title].splitlines()[3:]}
        assert rows == set(names), engine  # every profile in exactly its own group
    assert "int8-onnxruntime" in by_engine["ONNX Runtime"] and "int8-litert-xnnpack" in by_engine["LiteRT"]
    assert "int8-acc16-sat" in by_engine[""]


def test_engine_filter_and_json():
    r = invoke("profiles", "--engine", "onnx runtime", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert rows and {x["engine"] for x in rows} == {"ONNX Runtime"}
    assert {x["name"] for x in rows} == {n for n in builtin_names() if load_profile(n).engine == "ONNX Runtime"}
    r = invoke("profiles", "--engine", "tensorrt")
    assert r.exit_code != 0 and r.output.count("\n") == 1
    assert "'tensorrt'" in r.output and "ONNX Runtime" in r.output


def test_engine_is_not_inherited_and_round_trips(tmp_path):
    child = tmp_path / "child.toml"
    child.write_text('extends = "int8-onnxruntime"\n[accumulator]\nbits = 16\n')
    assert load_profile("int8-onnxruntime").engine == "ONNX Runtime"
    assert load_profile(str(child)).engine == ""  # a variant of an engine's profile is no longer that engine
    p = load_profile("int8-litert-reference")
    back = tmp_path / "back.toml"
    back.write_text(profile_toml(p))
    assert load_profile(str(back)).engine == "LiteRT" and load_profile(str(back)) == p


def test_engine_cannot_be_overridden_per_layer(tmp_path):
    f = tmp_path / "ov.toml"
    f.write_text('extends = "int8-tflite"\n[[overrides]]\nop = "conv"\nengine = "PyTorch"\n')
    with pytest.raises(HwsimError, match="'engine' cannot be overridden per layer"):
        load_profile(str(f))
