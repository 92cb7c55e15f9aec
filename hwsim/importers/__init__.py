"""Bring your own model: foreign model files -> a float :class:`~hwsim.graph.Graph` (docs/import.md).

- :mod:`hwsim.importers.onnx`: float ONNX models (opset 13 and later), read with the optional
  ``onnx`` package (``pip install 'hwsim[onnx]'``); importing hwsim never needs it.
- :mod:`hwsim.importers.tflite`: int8 LiteRT ``.tflite`` models, read with the optional ``tflite``
  flatbuffer package (``pip install 'hwsim[litert]'``), their own quantization kept.

:func:`import_model` dispatches on the file's format (:func:`model_format`: suffix, then magic
bytes); ``hwsim import`` and every command's ``-m FILE`` use it. The input normalisation a model
expects is not in the foreign file: it is given as ``mean`` / ``std`` (pixels in [0, 1], then
``(x - mean[c]) / std[c]``; defaults mean 0, std 1, i.e. the model sees pixels in [0, 1]) and
recorded in the ``.hwsim`` graph input exactly as ``frontends/pytorch/export.py`` records it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from hwsim import safeio
from hwsim.errors import HwsimError

FORMATS = ("hwsim", "onnx", "tflite")
_ZIP_MAGIC = b"PK\x03\x04"


def model_format(path: str | os.PathLike) -> str:
    """'hwsim', 'onnx' or 'tflite' for a model file (suffix first, then magic bytes); a one-line error naming
    what the file looks like and how to bring it in otherwise."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".hwsim":
        return "hwsim"
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".tflite":
        return "tflite"
    if suffix == ".pt2":  # torch.export.save of a pt2e int8 model (frontends.pytorch.importers.load_pt2)
        return "pt2"
    if suffix in (".pt", ".pth"):
        raise HwsimError(f"{p}: a PyTorch checkpoint is not a model file; convert it first: "
                         f"hwsim export {p.name} -o model.hwsim (an hwsim training checkpoint) or hwsim export "
                         f"--model-def module:factory --weights {p.name} --input-shape C,H,W -o model.hwsim "
                         "(a plain state_dict)")
    head = safeio.read_head(p, 8, str(p))
    if head[:4] == _ZIP_MAGIC:
        return "hwsim"
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:1] == b"\x08":  # an ONNX ModelProto starts with field 1 (ir_version), a varint
        return "onnx"
    raise HwsimError(f"{p}: not a model file hwsim reads (supported: .hwsim, .onnx, .tflite; docs/import.md)")


def import_model(path: str | os.PathLike, mean=None, std=None, input_shape=None):
    """The float Graph of a foreign model file (validated); see :func:`hwsim.importers.onnx.import_onnx`."""
    fmt = model_format(path)
    if fmt == "onnx":
        from hwsim.importers.given import import_given, is_quantized
        from hwsim.importers.onnx import import_onnx, read_onnx

        if is_quantized(read_onnx(path)):  # int8 QDQ / QOperator: its own quantization kept (hwsim.given)
            return import_given(path, mean=mean, std=std, input_shape=input_shape)
        return import_onnx(path, mean=mean, std=std, input_shape=input_shape)
    if fmt == "tflite":
        from hwsim.importers.tflite import import_tflite

        return import_tflite(path, mean=mean, std=std, input_shape=input_shape)
    if fmt == "pt2":
        try:
            from frontends.pytorch.importers import import_pt2
        except ImportError as e:
            raise HwsimError(f"{path}: reading a .pt2 (torch.export) model needs torch: {e}") from None
        return import_pt2(path, mean=mean, std=std, input_shape=input_shape)
    raise HwsimError(f"{path}: already an .hwsim model file (nothing to import)")


# ----------------------------------------------------------------------------- option values
def parse_numbers(text: str | Sequence[float] | float | None, option: str) -> tuple[float, ...] | None:
    """``"0.485,0.456,0.406"`` (or a number or a sequence) -> finite floats; None stays None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        items = [text]
    elif isinstance(text, str):
        items = [t.strip() for t in text.split(",")]
    else:
        items = list(text)
    try:
        vals = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise HwsimError(f"{option} {text!r}: give comma-separated numbers, e.g. 0.5 or 0.485,0.456,0.406") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise HwsimError(f"{option} {text!r}: give finite numbers, e.g. 0.5 or 0.485,0.456,0.406")
    return vals


def parse_shape(text: str | Sequence[int] | None, option: str = "--input-shape") -> tuple[int, int, int] | None:
    """``"3,224,224"`` (or a sequence) -> (C, H, W) of positive integers; None stays None."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    try:
        vals = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3 or min(vals) < 1:
        raise HwsimError(f"{option} {text!r}: give the per-sample input shape as 3 positive integers C,H,W, e.g. 3,32,32")
    return vals  # type: ignore[return-value]


def normalisation(mean, std, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel: one value (used for every channel) or exactly ``channels`` values;
    defaults mean 0, std 1 (the model sees pixels in [0, 1]); every std > 0."""
    out = []
    for option, vals, default in (("--mean", mean, 0.0), ("--std", std, 1.0)):
        v = parse_numbers(vals, option)
        if v is None:
            v = (default,)
        if len(v) == 1:
            v = v * channels
        if len(v) != channels:
            raise HwsimError(f"{option} {','.join(f'{x:g}' for x in v)}: {len(v)} values, but the model has "
                             f"{channels} input channel(s) (give 1 value or {channels})")
        out.append(v)
    if not all(s > 0 for s in out[1]):
        raise HwsimError(f"--std {','.join(f'{x:g}' for x in out[1])}: every std must be > 0")
    return out[0], out[1]
