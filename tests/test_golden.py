"""Golden vectors: the files alone (manifest + .npy/.hex) reproduce every conv/linear layer's output codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hwsim import ops
from hwsim.cli import cli
from hwsim.compile import compile_model
from hwsim.errors import HwsimError
from hwsim.golden import from_hex_lines, hex_width, to_hex_lines, write_golden
from hwsim.profile import load_profile
from tests.nets import images, tiny_cnn


def _load(root, entry):
    a = np.load(root / entry["npy"], allow_pickle=False)
    h = from_hex_lines((root / entry["hex"]).read_text(), entry["hex_bits"], entry["shape"])
    if entry.get("float32_bits"):
        np.testing.assert_array_equal(h.astype(np.uint32).view(np.float32), a)
    else:
        np.testing.assert_array_equal(h, a)
    return a


def test_hex_round_trip_and_widths():
    a = np.array([-129, -128, -1, 0, 1, 127, 128, 2**31 - 1, -(2**63)], dtype=np.int64)
    for bits, sl in ((8, slice(1, 6)), (16, slice(0, 7)), (64, slice(0, 9))):
        part = a[sl]
        assert hex_width(part) == bits
        np.testing.assert_array_equal(from_hex_lines(to_hex_lines(part, bits), bits, part.shape), part)
    assert to_hex_lines(np.array([-1, 127]), 8) == "ff\n7f\n"


@pytest.mark.parametrize("name", ["int8-tflite", "int8-fbgemm", "int4-pow2", "int8-psum16"])
def test_golden_files_reproduce_every_mac_layer(name, tmp_path):
    g = tiny_cnn(seed=31)
    qg = compile_model(g, load_profile(name), images(32, seed=32))
    root = tmp_path / "gold"
    write_golden(qg, images(3, seed=33), root, "tiny")
    m = json.loads((root / "manifest.json").read_text())
    assert m["format"] == "hwsim-golden" and m["version"] == 1 and m["images"] == 3
    codes = {t: _load(root, e) for t, e in m["tensors"].items()}
    grid = {t: e["grid"] for t, e in m["tensors"].items()}
    checked = 0
    for lay in m["layers"]:
        if lay["op"] not in ("conv2d", "linear"):
            continue
        x = codes[lay["inputs"][0]]
        w, b = _load(root, lay["weight"]), _load(root, lay["bias"])
        zw = np.array(lay["weight_zero_point"]) if len(lay["weight_zero_point"]) > 1 else lay["weight_zero_point"][0]
        acc_cfg = ops.Accumulator(**lay["accumulator"])
        a = lay["attrs"]
        if lay["op"] == "conv2d":
            acc, _ = ops.conv2d(x, w, b, x_zero_point=grid[lay["inputs"][0]]["zero_point"], w_zero_point=zw,
                                stride=tuple(a["stride"]), padding=tuple(a["padding"]), dilation=tuple(a["dilation"]),
                                groups=a["groups"], acc=acc_cfg, impl="reference")
        else:
            acc, _ = ops.linear(x.reshape(len(x), -1), w, b, x_zero_point=grid[lay["inputs"][0]]["zero_point"],
                                w_zero_point=zw, acc=acc_cfg, impl="reference")
        r = dict(lay["requant"])
        r["fixed_ties"] = tuple(r["fixed_ties"])
        cfg = ops.Requant(**{k: v for k, v in r.items() if k != "pool_form"})
        rp = lay["requant_params"]
        params = ops.RequantParams(
            mode=rp["mode"], real=np.array(rp["real"]),
            multiplier=_load(root, rp["multiplier_f32"]) if "multiplier_f32" in rp else None,
            q=_load(root, rp["q"]) if "q" in rp else None, shift=_load(root, rp["shift"]) if "shift" in rp else None,
            bias_term=_load(root, rp["bias_term_f32"]) if "bias_term_f32" in rp else None)
        lo, hi = lay["clamp"]
        y, _ = ops.requantize(acc, params, cfg, grid[lay["output"]]["zero_point"], lo, hi, impl="reference")
        np.testing.assert_array_equal(y.reshape(codes[lay["output"]].shape), codes[lay["output"]], err_msg=lay["name"])
        checked += 1
    assert checked == 4


def test_golden_refuses_a_nonempty_directory_and_weight_only(tmp_path):
    g = tiny_cnn(seed=34)
    qg = compile_model(g, load_profile("int8-tflite"), images(16, seed=35))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(HwsimError, match="exists and is not an empty directory"):
        write_golden(qg, images(2), tmp_path / "full")
    wo = compile_model(g, load_profile("w4-fp"), images(16, seed=35))
    with pytest.raises(HwsimError, match="weight-only"):
        write_golden(wo, images(2), tmp_path / "wo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing half-written


def test_cli_golden(tmp_path):
    out = tmp_path / "g"
    r = CliRunner().invoke(cli, ["golden", "-p", "int8-tflite", "--n", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["images"] == 2 and m["profile"]["name"] == "int8-tflite" and len(m["layers"]) == 8
    r2 = CliRunner().invoke(cli, ["golden", "-o", str(out)])
    assert r2.exit_code != 0 and r2.output.count("\n") == 1 and "not an empty directory" in r2.output
