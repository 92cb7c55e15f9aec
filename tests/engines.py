"""Helpers shared by the tests against real integer engines (PyTorch, ONNX Runtime, LiteRT)."""
from __future__ import annotations

import numpy as np

from hwsim.cpu import cpu_flags  # noqa: F401  (the tests' engine checks import it from here)

f32 = np.float32


def multiplier_order_targets(rng, draws: int = 2000):
    """Layers where M = fl32(fl32(sx*sw)/sy) ('sequential') and fl32(sx*sw/sy) ('fused') round differently.

    Yields (sx, sw, sy, x, w): float32 scales, uint8-range inputs x [n, 2] (zero point 128) and the
    weight row w = [[127, 1]], built so that acc = 127*(x0-128) + (x1-128) hits an accumulator whose
    output differs between the two orders (|y| < 120). One weight stays outside [-64, 63], yet with
    K = 2 no int16 pair sum can saturate.
    """
    for _ in range(draws):
        sx, sw, sy = (f32(rng.uniform(lo, hi)) for lo, hi in ((0.005, 0.05), (0.001, 0.01), (0.01, 0.05)))
        m_seq, m_fus = (sx * sw) / sy, f32(np.float64(sx) * np.float64(sw) / np.float64(sy))
        if m_seq == m_fus:
            continue
        a = np.arange(-16000, 16000)
        ys, yf = np.rint(a.astype(f32) * m_seq), np.rint(a.astype(f32) * m_fus)
        tg = a[(ys != yf) & (np.abs(ys) < 120)]
        if tg.size == 0:
            continue
        d1 = np.clip(np.round(tg / 127), -128, 127).astype(np.int64)
        d2 = tg - 127 * d1
        ok = (d2 >= -128) & (d2 <= 127)
        yield sx, sw, sy, np.stack([d1[ok] + 128, d2[ok] + 128], 1), np.array([[127, 1]])


def ort_session(model, optimize: bool):
    """A single-threaded, sequential ONNX Runtime CPU session for ``model`` (a ModelProto), graph
    optimizations all on or off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
