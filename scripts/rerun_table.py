"""The re-run table of an imported int8 model (docs/import.md, issue 17), shared by scripts/given_networks.py
(ONNX) and scripts/litert_fixtures.py (LiteRT): the same imported integers under other profiles — accuracy,
overflow events, and the first tensor whose integers differ from the first profile's (the engine's own) on
the first 64 images (a direct diff of run_integer tensors, the input's quantizer first)."""

from __future__ import annotations

import numpy as np


def rerun_rows(g, x: np.ndarray, y: np.ndarray, table, input_label: str):
    """(profile label, accuracy, overflow events, first differing tensor) per (profile name, settings) of
    ``table``, the first row being the reference the others are diffed against."""
    from hwsim.compile import compile_model
    from hwsim.execute import accuracy, run_integer, run_quantized
    from hwsim.profile import load_profile

    base = None
    for name, settings in table:
        qg = compile_model(g, load_profile(name, settings), None)
        r = run_quantized(qg, x)
        ev = sum(s.overflow_events for s in r.layers)
        ints = run_integer(qg, x[:64])
        if base is None:
            base, first = ints, "—"
        else:
            first = "none"
            for t, label in [(qg.input_name, input_label)] + [(la.output, la.name) for la in qg.layers]:
                d = np.count_nonzero(ints[t] != base[t])
                if d:
                    first = f"{label} ({d} of {ints[t].size} values)"
                    break
        label = name + ("" if not settings else " + " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        yield label, accuracy(r.logits, y), ev, first
