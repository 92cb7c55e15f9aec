"""Golden vectors: every integer a compiled network computes, written for an RTL testbench.

``write_golden(qg, x_norm, out_dir)`` runs ``x_norm`` through the integer executor and writes

- ``manifest.json``: format ``hwsim-golden`` version 1; the profile (every field), the model, the
  number of images; per tensor its grid (scale, zero point, qmin, qmax, bits) and files; per layer
  its op, attributes, input/output tensors, clamp, and for conv/linear the accumulator, the
  requantization config and the files of its integer weights, bias and requant constants;
- ``tensors/<name>.npy`` + ``.hex``: the integer codes of the input and of every layer output;
- ``layers/<layer>/{weight,bias,requant_*}.npy`` + ``.hex``.

``.hex`` files hold one value per line in C order, two's complement in the narrowest of 8/16/32/64
bits that holds every value of that array (the width is in the manifest), e.g. -1 -> ``ff`` at 8
bits. float32 requant multipliers are written as their IEEE-754 bit patterns (``3f000000``).
The directory is written completely or not at all (a temporary sibling, renamed at the end).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from hwsim import ops
from hwsim.compile import QuantizedGraph
from hwsim.errors import HwsimError
from hwsim.execute import run_integer
from hwsim.profile import to_dict
from hwsim.report import to_json_text
from hwsim.safeio import make_output_dir_tmp

FORMAT, VERSION = "hwsim-golden", 1


def hex_width(a: np.ndarray) -> int:
    """Narrowest two's-complement width in {8, 16, 32, 64} holding every value of integer array ``a``."""
    if a.size == 0:
        return 8
    lo, hi = int(a.min()), int(a.max())
    for bits in (8, 16, 32, 64):
        if -(1 << (bits - 1)) <= lo and hi < (1 << (bits - 1)):
            return bits
    raise HwsimError(f"golden: values {lo}..{hi} do not fit 64 bits")


def to_hex_lines(a: np.ndarray, bits: int) -> str:
    """One two's-complement hex value per line (C order), ``bits // 4`` digits each."""
    mask = (1 << bits) - 1
    digits = bits // 4
    return "".join(f"{int(v) & mask:0{digits}x}\n" for v in np.asarray(a).ravel())


def from_hex_lines(text: str, bits: int, shape) -> np.ndarray:
    """Inverse of :func:`to_hex_lines` (signed)."""
    vals = [int(t, 16) for t in text.split()]
    vals = [v - (1 << bits) if v >= (1 << (bits - 1)) else v for v in vals]
    return np.array(vals, dtype=np.int64).reshape(shape)


def _write_int(root: Path, rel: str, a: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.int64)
    bits = hex_width(a)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(str(path) + ".npy", a, allow_pickle=False)
    (Path(str(path) + ".hex")).write_text(to_hex_lines(a, bits))
    return {"npy": rel + ".npy", "hex": rel + ".hex", "shape": list(a.shape), "hex_bits": bits}


def _write_f32(root: Path, rel: str, a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype=np.float32)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(str(path) + ".npy", a, allow_pickle=False)
    (Path(str(path) + ".hex")).write_text(to_hex_lines(a.view(np.uint32).astype(np.int64), 32))
    return {"npy": rel + ".npy", "hex": rel + ".hex", "shape": list(a.shape), "hex_bits": 32, "float32_bits": True}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_golden(qg: QuantizedGraph, x_norm: np.ndarray, out_dir: str | os.PathLike, model_name: str = "") -> dict:
    """Write golden vectors of ``x_norm`` (normalised float32 NCHW images) to ``out_dir``; returns the manifest."""
    if qg.weight_only:
        raise HwsimError(f"golden: profile {qg.profile.name!r} is weight-only (float32 activations): no integer "
                         "vectors to write")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HwsimError(f"golden: {out} exists and is not an empty directory")
    if not out.parent.is_dir():
        raise HwsimError(f"golden: directory {out.parent} does not exist")
    env = run_integer(qg, x_norm)
    tmp = make_output_dir_tmp(out)  # the user's umask, not mkdtemp's 0700
    try:
        tensors = {}
        for name, g in qg.grids.items():
            if name not in env:
                continue
            entry = _write_int(tmp, f"tensors/{_safe(name)}", env[name])
            entry["grid"] = dataclasses.asdict(g)
            tensors[name] = entry
        layers = []
        for lay in qg.layers:
            d = {"name": lay.name, "op": lay.op, "kind": lay.kind, "inputs": list(lay.inputs), "output": lay.output,
                 "attrs": {k: v for k, v in lay.attrs.items() if k != "bn_scale"},
                 "clamp": None if lay.clamp is None else [int(lay.clamp[0]), int(lay.clamp[1])]}
            base = f"layers/{_safe(lay.name)}"
            # the op's own fields (a MAC layer's weights, bias and accumulator; a pool's rounding, ...)
            d.update(ops.get(lay.op).golden_fields(lay, lambda key, arr, b=base: _write_int(tmp, f"{b}/{key}", arr)))
            if lay.requant is not None:
                d["requant"] = {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in dataclasses.asdict(lay.requant).items()}
            p = lay.requant_params
            if p is not None:
                rq = {"mode": p.mode, "real": np.asarray(p.real, np.float64).ravel().tolist()}
                if p.multiplier is not None:
                    rq["multiplier_f32"] = _write_f32(tmp, f"{base}/requant_multiplier", p.multiplier)
                if p.q is not None:
                    rq["q"] = _write_int(tmp, f"{base}/requant_q", p.q)
                if p.shift is not None:
                    rq["shift"] = _write_int(tmp, f"{base}/requant_shift", p.shift)
                if p.bias_term is not None:
                    rq["bias_term_f32"] = _write_f32(tmp, f"{base}/requant_bias_term", p.bias_term)
                if p.pre_scale is not None:  # bias.form = "onednn": f32(acc) * pre_scale[c] before the bias
                    rq["pre_scale_f32"] = _write_f32(tmp, f"{base}/requant_pre_scale", p.pre_scale)
                if p.src_scale is not None:  # bias.form = "onednn_sequential": f32(acc) * src_scale before pre_scale
                    rq["src_scale_f32"] = float(p.src_scale)
                d["requant_params"] = rq
            d["stochastic_seed"] = int(lay.rounding_seed)
            layers.append(d)
        manifest = {"format": FORMAT, "version": VERSION, "model": model_name, "profile": to_dict(qg.profile),
                    "images": int(len(x_norm)), "input": qg.input_name, "output": qg.output_name,
                    "tensors": tensors, "layers": layers,
                    "notes": ["integer codes: real = scale * (code - zero_point)",
                              ".hex: one two's-complement value per line, C order, hex_bits wide"]}
        (tmp / "manifest.json").write_text(to_json_text(manifest))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
