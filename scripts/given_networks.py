"""Whole-network check and re-run table for imported int8 ONNX models (docs/import.md, issue 17).

For the bundled SmallCNN, MobileNetV2 and MobileNetV3 and a ResNet-8 and an EfficientNet-style net built with torch
(random weights), each quantized by
onnxruntime.quantization.quantize_static (QOperator and QDQ, per tensor and per channel):

1. ``verify``: hwsim under the model's default profile (int8-onnxruntime, given quantization kept) against
   ONNX Runtime (CPU EP, one thread) with graph optimizations ORT_ENABLE_ALL and ORT_DISABLE_ALL on N
   inputs (default 256): differing output elements, and for QDQ with optimizations off how far ORT's own
   float path is from its fused integers and from the test oracle tests/importers/onnxnets.ort_float_path;
2. ``table``: the same imported integers under int8-onnxruntime, int8-acc16-sat, int8-psum16 and ONNX
   Runtime's numbers with TFLite's requantization (requant.mode = fixed: gemmlowp Q31 double rounding;
   pools exact): accuracy on the test images, overflow events, and the first layer whose integers differ
   from the engine profile's on the first 64 images (a direct per-layer diff of run_integer tensors).

3. ``resnet18``: both for the ResNet-18-shaped network (width 8, trained 3 epochs with seed 0 as
   tests/importers/test_resnet18.py trains it), plus the neighbouring profile's differing elements in verify and
   the re-run table on all 1,000 test images.

Usage: PYTHONPATH=. python scripts/given_networks.py [verify|table|both|resnet18] [N]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwsim.compile import compile_model  # noqa: E402
from hwsim.data import load_dataset  # noqa: E402
from hwsim.execute import run_quantized  # noqa: E402
from hwsim.importers import import_model  # noqa: E402
from hwsim.profile import load_profile  # noqa: E402
from scripts.rerun_table import rerun_rows  # noqa: E402
from tests.importers.onnxnets import ort_float_path  # noqa: E402
from tests.importers.test_given_network import (LEVELS, RANDOM_NETS, _images, ort_outputs,  # noqa: E402
                                                quantizer)

NETS = ("smallcnn_robust", "resnet8", "mobilenetv2", "mobilenetv3", "efficientnet")
TABLE = [("int8-onnxruntime", {}), ("int8-acc16-sat", {}), ("int8-psum16", {}),
         ("int8-onnxruntime", {"requant.mode": "fixed", "requant.pool_form": "exact"})]


def verify(q, n: int) -> None:
    print(f"| network | format | weights | ORT level | inputs | output elements | differing |")
    print("|---|---|---|---|---|---|---|")
    for net in NETS:
        for fmt in ("QOperator", "QDQ"):
            for pc in (False, True):
                path, mean, std = q(net, fmt, pc)
                x = _images(net, n, 1) if net in RANDOM_NETS else _test_images(net, n)
                g = import_model(path, mean, std)
                ours = run_quantized(compile_model(g, load_profile("int8-onnxruntime"), None), x).logits
                fused = None
                for level in LEVELS:
                    ref = ort_outputs(path, x, level)
                    fused = ref if level == "ORT_ENABLE_ALL" else fused
                    extra = ""
                    if fmt == "QDQ" and level == "ORT_DISABLE_ALL":
                        oracle = np.concatenate([ort_float_path(path, x[i:i + 32]) for i in range(0, len(x), 32)])
                        extra = (f" (ORT's float path vs its fused integers: {np.count_nonzero(ref != fused)}; vs the "
                                 f"MLAS float oracle: {np.count_nonzero(ref != oracle)})")
                    print(f"| {net} | {fmt} | {'per-channel' if pc else 'per-tensor'} | {level} | {n} | {ref.size} | "
                          f"{np.count_nonzero(ours != ref)}{extra} |")


def _test_images(net: str, n: int) -> np.ndarray:
    ds = load_dataset("default")
    from tests.importers.test_given_network import _bundled_torch

    _, spec = _bundled_torch(net)
    x = ds.x_test[:n].astype(np.float32)
    return ((x - np.float32(spec.mean[0])) / np.float32(spec.std[0])).astype(np.float32)


def table(q) -> None:
    ds = load_dataset("default")
    print("| network | profile | accuracy | overflow events | first layer differing from int8-onnxruntime (64 images) |")
    print("|---|---|---|---|---|")
    for net in ("smallcnn_robust", "mobilenetv2"):
        path, mean, std = q(net, "QOperator", False)
        g = import_model(path, mean, std)
        x = _test_images(net, len(ds.y_test))
        for label, acc, ev, first in rerun_rows(g, x, ds.y_test, TABLE, "the input's QuantizeLinear"):
            print(f"| {net} | {label} | {acc:.2%} | {ev} | {first} |")


def resnet18(tmp: Path, n: int) -> None:
    """verify (each quantize_static form at each ORT level, and the neighbouring profile ORT_NEIGHBOUR of the test)
    and the re-run table for the ResNet-18-shaped network."""
    from tests.importers.test_resnet18 import ORT_CASES, ORT_NEIGHBOUR, images, onnx_quantizer, trained_resnet18

    net = trained_resnet18(tmp)
    _, _, mean, std = net
    q = onnx_quantizer(net, tmp)
    x = images(mean, std, "test", n)
    neighbour = "int8-onnxruntime + " + ", ".join(f"{k}={v}" for k, v in ORT_NEIGHBOUR[1].items())
    print(f"| network | format | weights | ORT level | output elements | identical | differing under {neighbour} |")
    print("|---|---|---|---|---|---|---|")
    for fmt, pc, level in ORT_CASES:
        path = q(fmt, pc)
        g = import_model(path, mean, std)
        ours = run_quantized(compile_model(g, load_profile("int8-onnxruntime"), None), x).logits
        other = run_quantized(compile_model(g, load_profile(*ORT_NEIGHBOUR), None), x).logits
        ref = ort_outputs(path, x, level)
        print(f"| resnet18-narrow | {fmt} | {'per-channel' if pc else 'per-tensor'} | {level} | {ref.size} | "
              f"{np.count_nonzero(ours == ref)} | {np.count_nonzero(other != ref)} |")
    for pc in (False, True):
        path = q("QDQ", pc)
        unfused, fused = ort_outputs(path, x, "ORT_DISABLE_ALL"), ort_outputs(path, x, "ORT_ENABLE_ALL")
        oracle = np.concatenate([ort_float_path(path, x[i:i + 32]) for i in range(0, len(x), 32)])
        print(f"QDQ {'per-channel' if pc else 'per-tensor'} at ORT_DISABLE_ALL: vs the MLAS float oracle "
              f"{np.count_nonzero(oracle != unfused)} differing, vs ORT's fused integers (= hwsim) "
              f"{np.count_nonzero(fused != unfused)} of {unfused.size}")
    ds = load_dataset("default")
    xa = images(mean, std, "test", len(ds.y_test))
    print("| network | profile | accuracy | overflow events | first layer differing from int8-onnxruntime (64 images) |")
    print("|---|---|---|---|---|")
    g = import_model(q("QOperator", False), mean, std)
    for label, acc, ev, first in rerun_rows(g, xa, ds.y_test, TABLE, "the input's QuantizeLinear"):
        print(f"| resnet18-narrow (QOperator, per-tensor) | {label} | {acc:.2%} | {ev} | {first} |", flush=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "both"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    with tempfile.TemporaryDirectory() as tmp:
        if what == "resnet18":
            resnet18(Path(tmp), n)
            sys.exit(0)
        q = quantizer(Path(tmp))
        if what in ("verify", "both"):
            verify(q, n)
        if what in ("table", "both"):
            table(q)
