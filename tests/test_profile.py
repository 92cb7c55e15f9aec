"""Hardware profiles: built-ins, extends, --set, overrides, validation errors."""

import pytest

from hwsim.errors import HwsimError
from hwsim.profile import SCHEMA, builtin_names, load_profile, parse_set_options, profile_toml

REQUIRED = {"int8-tflite", "int8-fbgemm", "int8-per-tensor", "int8-pow2", "int4-pow2", "w4a8", "w8a4",
            "w6a6", "w5a5", "w4a4", "w3a3", "w2a8", "int8-acc16-sat", "int8-acc16-wrap", "w4a4-acc12",
            "int8-trunc", "int8-stochastic", "w4-fp", "w3-fp", "w2-fp", "int8-psum16", "int8-tflite-single"}


def test_builtins_cover_the_required_set():
    assert REQUIRED <= set(builtin_names())
    assert len(builtin_names()) >= 14


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_loads_and_round_trips_through_toml(name, tmp_path):
    p = load_profile(name)
    assert p.name == name and p.description
    f = tmp_path / "p.toml"
    f.write_text(profile_toml(p))
    q = load_profile(str(f))
    assert q == p


def test_profile_semantics_of_key_builtins():
    t = load_profile("int8-tflite")
    assert t.requant.mode == "fixed" and t.weights.granularity == "per_channel" and not t.activations.symmetric
    f = load_profile("int8-fbgemm")
    assert f.requant.mode == "float32" and not f.activations.signed and f.requant.rounding == "half_even"
    p = load_profile("int4-pow2")
    assert p.weights.scale == p.activations.scale == "pow2" and p.requant.mode == "pow2" and p.weights.bits == 4
    assert load_profile("w4-fp").weight_only and not t.weight_only
    s = load_profile("int8-acc16-sat")
    assert (s.accumulator.bits, s.accumulator.overflow, s.accumulator.rows) == (16, "saturate", 16)
    assert load_profile("int8-psum16").accumulator.partial_bits == 16
    assert load_profile("int8-tflite-single").requant.fixed_rounding == "single"


def test_extends_states_only_the_difference(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('extends = "int8-tflite"\n[accumulator]\nbits = 16\n')
    p = load_profile(str(f))
    base = load_profile("int8-tflite")
    assert p.name == "mine" and p.accumulator.bits == 16
    assert p.requant == base.requant and p.weights == base.weights


def test_set_overrides_and_unbounded():
    p = load_profile("int8-tflite", parse_set_options(["accumulator.bits=unbounded", "weights.bits=5",
                                                       "requant.fixed_ties=half_up,half_even"]))
    assert p.accumulator.bits is None and p.weights.bits == 5 and p.requant.fixed_ties == ("half_up", "half_even")


def test_layer_overrides_by_pattern_and_op(tmp_path):
    f = tmp_path / "o.toml"
    f.write_text('extends = "int8-tflite"\n'
                 '[[overrides]]\nmatch = "conv1*"\n"weights.bits" = 4\n'
                 '[[overrides]]\nop = "depthwise"\nrequant.fixed_rounding = "single"\n')
    p = load_profile(str(f))
    assert p.for_layer("conv1a", "conv").weights.bits == 4
    assert p.for_layer("conv2", "conv").weights.bits == 8
    assert p.for_layer("dw", "depthwise").requant.fixed_rounding == "single"
    assert p.for_layer("conv2", "conv").requant.fixed_rounding == "double"


def test_position_overrides_select_first_and_last_mac_layers(tmp_path):
    from hwsim.compile import compile_model
    from tests.nets import images, tiny_cnn

    p = load_profile("w4a4-acc12")
    assert p.for_layer("anything", "conv", "first").accumulator.bits == 32
    assert p.for_layer("anything", "linear", "last").accumulator.bits == 32
    assert p.for_layer("anything", "conv", None).accumulator.bits == 12
    assert load_profile(profile_toml_roundtrip(p, tmp_path)).overrides == p.overrides
    qg = compile_model(tiny_cnn(seed=1), p, images(16, seed=2))
    macs = [lay for lay in qg.layers if lay.op in ("conv2d", "linear")]
    assert [lay.accumulator.bits for lay in macs] == [32] + [12] * (len(macs) - 2) + [32]
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "int8-tflite"\n[[overrides]]\nposition = "middle"\n"weights.bits" = 4\n')
    with pytest.raises(HwsimError, match=r"'middle' for 'overrides\[0\]\.position': allowed first or last"):
        load_profile(str(bad))


def profile_toml_roundtrip(p, tmp_path):
    from hwsim.profile import profile_toml

    f = tmp_path / "rt.toml"
    f.write_text(profile_toml(p))
    return str(f)


@pytest.mark.parametrize("settings, fragment", [
    ({"accumulator.bitz": "16"}, "unknown profile key 'accumulator.bitz'"),
    ({"weights.bits": "1"}, "'weights.bits': allowed an integer in [2, 16]"),
    ({"weights.bits": "eight"}, "invalid value 'eight' for 'weights.bits'"),
    ({"requant.mode": "magic"}, "allowed one of 'float32', 'fixed', 'pow2'"),
    ({"requant.rounding": "up"}, "'requant.rounding'"),
    ({"requant.multiplier_bits": "16"}, "one of 31, 15"),
    ({"weights.signed": "maybe"}, "true or false"),
])
def test_invalid_keys_and_values_name_key_value_and_allowed(settings, fragment):
    with pytest.raises(HwsimError) as e:
        load_profile("int8-tflite", settings)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_unknown_profile_lists_available():
    with pytest.raises(HwsimError) as e:
        load_profile("int7-magic")
    assert "int7-magic" in str(e.value) and "int8-tflite" in str(e.value)


def test_bad_files(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[weights\nbits = 3")
    with pytest.raises(HwsimError, match="not valid TOML"):
        load_profile(str(f))
    f.write_text('[weights]\nbits = 99\n')
    with pytest.raises(HwsimError, match=r"bad.toml: invalid value 99 for 'weights.bits'"):
        load_profile(str(f))
    f.write_text('extends = "nope"\n')
    with pytest.raises(HwsimError, match="unknown profile 'nope'"):
        load_profile(str(f))
    f.write_text('[[overrides]]\n"weights.bits" = 4\n')
    with pytest.raises(HwsimError, match="needs a selector"):
        load_profile(str(f))
    with pytest.raises(HwsimError, match="profile file not found"):
        load_profile(str(tmp_path / "missing.toml"))
    with pytest.raises(HwsimError, match="expected KEY=VALUE"):
        parse_set_options(["accumulator.bits"])


def test_schema_documents_every_key():
    for key, k in SCHEMA.items():
        assert k.doc, key
