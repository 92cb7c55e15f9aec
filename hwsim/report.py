"""Render result objects: terminal tables, JSON, CSV and PNG plots (one function each)."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from hwsim.errors import HwsimError


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}%"


def table(rows: list[list], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_text(r) -> str:
    mode = "weight-only (float32 activations, dequantized integer weights)" if r.weight_only else "integer"
    head = [
        f"profile   {r.profile}  [{mode}]",
        f"          {r.description}",
        f"model     {r.model}    data {r.data}  ({r.images} test images)",
        f"float accuracy      {_pct(r.float_accuracy)}",
        f"simulated accuracy  {_pct(r.sim_accuracy)}" + ("  (weight-only)" if r.weight_only else ""),
        f"agreement w/ float  {_pct(r.agreement)}",
        f"speed     {r.images_per_s:,.0f} images/s  ({r.seconds:.2f} s run, {r.compile_seconds:.2f} s compile + JIT warm-up)",
    ]
    if r.settings:
        head.insert(2, "settings  " + ", ".join(f"{k}={v}" for k, v in r.settings.items()))
    if r.weight_only:
        return "\n".join(head)
    rows = []
    psum = any(lay.get("partial_headroom_bits") is not None for lay in r.layers)
    for lay in r.layers:
        hr, ph = lay["headroom_bits"], lay.get("partial_headroom_bits")
        rows.append([lay["name"], lay["kind"], lay["acc_events"], lay["partial_events"],
                     f"{100 * lay['clip_rate']:.3f}%", "-" if hr is None else hr]
                    + (["-" if ph is None else ph] if psum else [])
                    + ["-" if lay["certified"] is None else ("yes" if lay["certified"] else "NO")])
    body = table(rows, ["layer", "kind", "acc overflow", "partial overflow", "clip rate", "headroom bits"]
                 + (["psum headroom"] if psum else []) + ["certified"])
    tail = []
    total = r.overflow_events
    tail.append(f"overflow events: {total} in {sum(1 for x in r.layers if x['overflow_events'])} layer(s)"
                if total else "overflow events: none")
    for d in r.dead_channels:
        tail.append(f"dead BN channel: {d['layer']} channel {d['channel']} (running_var {d['running_var']:.2e}) — folded weights zeroed")
    tail += [f"note: {n}" for n in r.notes if "dead BatchNorm" not in n]
    return "\n".join(head) + "\n\n" + body + "\n" + "\n".join(tail)


SWEEP_COLUMNS = ["profile", "settings", "mode", "float_accuracy", "fakequant_accuracy", "sim_accuracy", "agreement_with_float",
                 "overflow_events", "max_clip_rate", "min_headroom_bits", "uncertified_layers", "images_per_s", "seconds"]


def sweep_rows(results) -> list[dict]:
    rows = []
    for r in results:
        # the tighter of the two stages: accumulator headroom and (if present) partial-sum headroom
        hr = [h for x in r.layers for h in (x["headroom_bits"], x.get("partial_headroom_bits")) if h is not None]
        rows.append({
            "profile": r.profile,
            "settings": ";".join(f"{k}={v}" for k, v in r.settings.items()),
            "mode": "weight-only" if r.weight_only else "integer",
            "float_accuracy": round(r.float_accuracy, 6), "sim_accuracy": round(r.sim_accuracy, 6),
            "fakequant_accuracy": "" if r.fakequant_accuracy is None else round(r.fakequant_accuracy, 6),
            "agreement_with_float": round(r.agreement, 6), "overflow_events": r.overflow_events,
            "max_clip_rate": round(max([x["clip_rate"] for x in r.layers] or [0.0]), 6),
            "min_headroom_bits": min(hr) if hr else "",
            "uncertified_layers": sum(1 for x in r.layers if x["certified"] is False),
            "images_per_s": round(r.images_per_s, 1), "seconds": round(r.seconds, 3),
        })
    return rows


def sweep_text(results) -> str:
    rows = sweep_rows(results)
    fq = any(r["fakequant_accuracy"] != "" for r in rows)
    return table([[r["profile"] + (f" [{r['settings']}]" if r["settings"] else ""), r["mode"],
                   _pct(r["float_accuracy"])] + ([_pct(r["fakequant_accuracy"])] if fq else [])
                 + [_pct(r["sim_accuracy"]), r["overflow_events"],
                   f"{100 * r['max_clip_rate']:.2f}%", r["min_headroom_bits"], r["uncertified_layers"],
                   f"{r['images_per_s']:,.0f}"] for r in rows],
                 ["profile", "mode", "float"] + (["fake-quant"] if fq else []) + ["simulated", "overflows", "max clip", "min headroom", "uncertified", "img/s"])


def atomic_write(path: str | os.PathLike, text: str | bytes) -> None:
    """Write a file completely or not at all (temp file + rename in the same directory)."""
    path = Path(path)
    if not path.parent.exists():
        raise HwsimError(f"{path}: directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_json_text(obj) -> str:
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def sweep_csv(results) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in sweep_rows(results):
        w.writerow(row)
    return buf.getvalue()


def sweep_plot(results, path: str | os.PathLike) -> None:
    """Bar chart: float (, fake-quant) and simulated accuracy per profile (weight-only bars hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sweep_rows(results)
    labels = [r["profile"] + (f"\n{r['settings']}" if r["settings"] else "") for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    fq = any(r["fakequant_accuracy"] != "" for r in rows)
    w = 0.27 if fq else 0.4
    off = [-w, 0.0, w] if fq else [-w / 2, None, w / 2]
    ax.bar([x + off[0] for x in xs], [100 * r["float_accuracy"] for r in rows], w, label="float", color="#999999")
    if fq:
        ax.bar([x + off[1] for x in xs], [100 * (r["fakequant_accuracy"] or 0) for r in rows], w,
               label="fake-quant", color="#ff9f40")
    bars = ax.bar([x + off[2] for x in xs], [100 * r["sim_accuracy"] for r in rows], w, label="simulated", color="#1f77b4")
    for b, r in zip(bars, rows):
        if r["mode"] == "weight-only":
            b.set_hatch("//")
        if r["overflow_events"]:
            b.set_color("#d62728")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{results[0].model} on {results[0].data}: float vs integer simulation\n"
                 "(red: overflow events, hatched: weight-only)", fontsize=9)
    ax.legend(loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def inspect_text(r) -> str:
    head = [f"model {r.model}", "inputs: " + ", ".join(f"{i['name']} {tuple(i['shape'])}" for i in r.inputs)]
    if r.metadata:
        head.append("metadata: " + ", ".join(f"{k}={v}" for k, v in r.metadata.items() if not isinstance(v, (dict, list))))
    rows = []
    psum = any(n.get("partial_bits") is not None for n in r.nodes)
    for n in r.nodes:
        row = [n["name"], n["op"], "x".join(map(str, n["shape"]))]
        if "kurtosis" in n:
            row += [n["params"], f"{n['kurtosis']:.2f}", f"{n['symmetry']:.3f}"]
        else:
            row += ["", "", ""]
        if r.profile:
            hr = n.get("headroom_bits")
            row += ["" if "certified" not in n else n.get("min_acc_bits"), "" if hr is None else hr]
            if psum:
                ph = n.get("partial_headroom_bits")
                row += ["" if "certified" not in n else n.get("min_partial_bits"), "" if ph is None else ph]
            row += ["" if "certified" not in n else ("yes" if n["certified"] else "NO")]
        rows.append(row)
    hdr = ["node", "op", "shape", "params", "kurtosis", "symmetry"]
    if r.profile:
        hdr += ["min acc bits", "headroom bits"] + (["min psum bits", "psum headroom"] if psum else []) + ["certified"]
        head.append(f"profile {r.profile}: certificates are worst cases over the input grid (exact integers)")
        first = next((n for n in r.nodes if "certified" in n), None)
        if first is not None:
            a = "unbounded" if first.get("acc_bits") is None else f"{first['acc_bits']}-bit"
            stage = (f", {first['partial_bits']}-bit partial sums per {first.get('rows') or 'K'}-row chunk"
                     if first.get("partial_bits") is not None else "")
            head.append(f"accumulator: {a}{stage}; certified = no input on the grid can overflow any stage "
                        f"(per-layer overrides may differ)")
    out = "\n".join(head) + "\n\n" + table(rows, hdr)
    for d in r.dead_channels:
        out += f"\ndead BN channel: {d['layer']} channel {d['channel']} (running_var {d['running_var']:.2e})"
    return out


def _db(x: float) -> str:
    return "inf" if x == float("inf") else ("-inf" if x == float("-inf") else f"{x:.1f}")


def compare_text(r) -> str:
    head = [f"profile {r.profile}   model {r.model}   data {r.data} ({r.images} test images)",
            f"float accuracy       {_pct(r.float_accuracy)}",
            f"fake-quant accuracy  {_pct(r.fakequant_accuracy)}   (rounding: "
            + ("half_even, as QAT's torch.round)" if r.fq_rounding == "half_even" else "the profile's own mode)"),
            f"simulator accuracy   {_pct(r.sim_accuracy)}",
            f"fake-quant vs simulator: {_pct(r.prediction_agreement)} identical predictions"]
    rows = [[d.name, d.kind, _db(d.sqnr_fq_vs_sim), _db(d.sqnr_fq_vs_float), _db(d.sqnr_sim_vs_float),
             d.max_lsb, f"{d.mean_lsb:.4f}", f"{100 * d.frac_diff:.3f}%", d.overflow_events,
             f"{100 * d.clip_rate:.2f}%", d.cause] for d in r.layers]
    body = table(rows, ["layer", "kind", "SQNR fq/sim dB", "fq/float", "sim/float", "max LSB", "mean LSB",
                        "differ", "overflows", "clip", "cause"])
    tail = (f"first layer diverging by more than 1 LSB: {r.first_divergent_layer}" if r.first_divergent_layer
            else "no layer diverges by more than 1 LSB")
    if r.first_divergent_layer:
        tail += ("\nfirst layer whose own arithmetic differs by more than 1 LSB (fed fake-quant's inputs): "
                 + (r.first_causal_layer or "none — every > 1 LSB difference is propagated 1-LSB noise"))
    return "\n".join(head) + "\n\n" + body + "\n" + tail


def compare_plot(r, path) -> None:
    """Per-layer SQNR (fake-quant vs simulator, each vs float) and fraction of differing outputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [d.name for d in r.layers]
    cap = lambda v: 120.0 if v == float("inf") else max(v, -20.0)  # noqa: E731
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(6, 0.6 * len(names) + 2), 6), sharex=True)
    xs = range(len(names))
    a1.plot(xs, [cap(d.sqnr_fq_vs_sim) for d in r.layers], "o-", label="fake-quant vs simulator")
    a1.plot(xs, [cap(d.sqnr_fq_vs_float) for d in r.layers], "s--", label="fake-quant vs float")
    a1.plot(xs, [cap(d.sqnr_sim_vs_float) for d in r.layers], "^--", label="simulator vs float")
    a1.set_ylabel("SQNR (dB, inf shown as 120)")
    a1.legend(fontsize=8)
    a1.set_title(f"{r.model} under {r.profile}\nfake-quant {100 * r.fakequant_accuracy:.2f}% vs "
                 f"simulator {100 * r.sim_accuracy:.2f}% (float {100 * r.float_accuracy:.2f}%)", fontsize=9)
    a2.bar(xs, [100 * d.frac_diff for d in r.layers],
           color=["#d62728" if d.max_lsb > 1 else "#1f77b4" for d in r.layers])
    a2.set_ylabel("% outputs differing\n(red: > 1 LSB)")
    a2.set_xticks(list(xs))
    a2.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
