"""Render result objects: terminal tables, JSON, CSV and PNG plots (one function each)."""

from __future__ import annotations

import csv
import io
import json
import os

from hwsim.safeio import atomic_write  # noqa: F401  (the one writer; re-exported for callers of report)


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}%"


def _recipe(r) -> str | None:
    """The PTQ recipe a result was produced with (``--ptq``), if any."""
    return getattr(r, "recipe", None)


def data_label(spec: str) -> str:
    """A data spec as a reader knows it: 'default' -> 'MNIST 5k', 'npz:/a/b.npz' -> 'b.npz'."""
    if spec in ("default", "mnist5k"):
        return "MNIST 5k"
    if spec == "digits":
        return "digits 8x8"
    kind, sep, path = spec.partition(":")
    return f"{kind} {os.path.basename(path.rstrip('/')) or path}" if sep else spec


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
    if _recipe(r):
        head.insert(2, f"recipe    {_recipe(r)}")
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


COST_COLUMNS = ("macs", "bops", "weight_memory_bits", "acc_bits", "min_acc_bits")  # hwsim.cost totals
SWEEP_COLUMNS = ["profile", "settings", "mode", "float_accuracy", "fakequant_accuracy", "sim_accuracy", "agreement_with_float",
                 "overflow_events", "max_clip_rate", "min_headroom_bits", "uncertified_layers", "images_per_s", "seconds",
                 *COST_COLUMNS, "recipe"]


def sweep_rows(results) -> list[dict]:
    rows = []
    for r in results:
        # the tighter of the two stages: accumulator headroom and (if present) partial-sum headroom
        hr = [h for x in r.layers for h in (x["headroom_bits"], x.get("partial_headroom_bits")) if h is not None]
        rows.append({
            "profile": r.profile, "recipe": _recipe(r) or "",
            "settings": ";".join(f"{k}={v}" for k, v in r.settings.items()),
            "mode": "weight-only" if r.weight_only else "integer",
            "float_accuracy": round(r.float_accuracy, 6), "sim_accuracy": round(r.sim_accuracy, 6),
            "fakequant_accuracy": "" if r.fakequant_accuracy is None else round(r.fakequant_accuracy, 6),
            "agreement_with_float": round(r.agreement, 6), "overflow_events": r.overflow_events,
            "max_clip_rate": round(max([x["clip_rate"] for x in r.layers] or [0.0]), 6),
            "min_headroom_bits": min(hr) if hr else "",
            "uncertified_layers": sum(1 for x in r.layers if x["certified"] is False),
            "images_per_s": round(r.images_per_s, 1), "seconds": round(r.seconds, 3),
            **{k: ((getattr(r, "cost", None) or {}).get("totals") or {}).get(k, "") for k in COST_COLUMNS},
        })
    return rows


def sweep_text(results) -> str:
    rows = sweep_rows(results)
    fq = any(r["fakequant_accuracy"] != "" for r in rows)
    rec = any(r["recipe"] for r in rows)
    return table([[r["profile"] + (f" [{r['settings']}]" if r["settings"] else "")]
                  + ([r["recipe"]] if rec else []) + [r["mode"], _pct(r["float_accuracy"])] + ([_pct(r["fakequant_accuracy"])] if fq else [])
                 + [_pct(r["sim_accuracy"]), r["overflow_events"],
                   f"{100 * r['max_clip_rate']:.2f}%", r["min_headroom_bits"], r["uncertified_layers"],
                   f"{r['images_per_s']:,.0f}"] for r in rows],
                 ["profile"] + (["recipe"] if rec else []) + ["mode", "float"] + (["fake-quant"] if fq else []) + ["simulated", "overflows", "max clip", "min headroom", "uncertified", "img/s"])


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


def _short_settings(settings: str) -> str:
    """'accumulator.bits=12;accumulator.overflow=wrap' -> 'bits=12, overflow=wrap' (last key part only)."""
    return ", ".join(f"{kv.split('=', 1)[0].rsplit('.', 1)[-1]}={kv.split('=', 1)[1]}" if "=" in kv else kv
                     for kv in settings.split(";") if kv)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


SIM_COLOR, OVERFLOW_COLOR, FQ_COLOR, WEIGHT_ONLY_FILL = "#1f77b4", "#d62728", "#ff9f40", "#dbe9f6"


def sweep_plot_png(results) -> bytes:
    """Horizontal bars, one row per profile / setting: simulated top-1 accuracy (red when overflow events
    happened, hatched when weight-only), fake-quant beside it when present, the float accuracy as a
    dashed line; every bar carries its value, and the axis zooms in when every value is high."""
    plt = _pyplot()
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D

    rows = sweep_rows(results)
    one_profile = len({r["profile"] for r in rows}) == 1
    labels = []
    for r in rows:
        short = _short_settings(r["settings"])
        labels.append(short if (one_profile and short) else r["profile"] + (f"  {short}" if short else ""))
    fq = any(r["fakequant_accuracy"] != "" for r in rows)
    n = len(rows)
    fig, ax = plt.subplots(figsize=(8.5, 1.6 + 0.38 * n * (1.6 if fq else 1.0)))
    ys = list(range(n))[::-1]  # first result on top
    h = 0.38 if fq else 0.7
    sim = [100 * r["sim_accuracy"] for r in rows]
    vals = sim + ([100 * r["fakequant_accuracy"] for r in rows if r["fakequant_accuracy"] != ""] if fq else [])
    fl = 100 * rows[0]["float_accuracy"]
    lo = min(vals + [fl])
    xmin = 0.0 if lo < 60 else max(0.0, 5 * ((lo - 3) // 5))  # zoom when every value is high
    sim_y = [y + (h / 2 if fq else 0) for y in ys]
    bars = ax.barh(sim_y, [v - xmin for v in sim], h, left=xmin,
                   color=[OVERFLOW_COLOR if r["overflow_events"] else SIM_COLOR for r in rows])
    span = 100 - xmin

    def value(b, v, size, dark=True):  # inside the end of a long bar (clear of the float line), else after it
        inside = v - xmin > 0.3 * span
        ax.text(v - 0.01 * span if inside else max(v, xmin) + 0.01 * span, b.get_y() + b.get_height() / 2,
                f"{v:.2f}%", va="center", ha="right" if inside else "left", fontsize=size,
                color="white" if inside and dark else "black", fontweight="bold" if inside else "normal")

    for b, r, v in zip(bars, rows, sim):
        wo = r["mode"] == "weight-only"
        if wo:  # light fill, hatched in the bar's own colour: the value stays readable
            b.set_edgecolor(b.get_facecolor())
            b.set_facecolor(WEIGHT_ONLY_FILL)
            b.set_hatch("///")
        value(b, v, 8, dark=not wo)
    if fq:
        fqv = [100 * (r["fakequant_accuracy"] or 0) for r in rows]
        fb = ax.barh([y - h / 2 for y in ys], [v - xmin for v in fqv], h, left=xmin, color=FQ_COLOR)
        for b, v in zip(fb, fqv):
            value(b, v, 7)
    ax.axvline(fl, color="#555555", linestyle="--", linewidth=1, zorder=0)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(xmin, 100 + 0.02 * span)
    ax.set_xlabel("top-1 accuracy (%)" + (f"  (axis starts at {xmin:g}%)" if xmin > 0 else ""))
    r0 = results[0]
    recipes = {_recipe(r) for r in results}
    recipe = _recipe(r0) if len(recipes) == 1 else None  # one recipe for every bar: say it in the title
    what = (f"{rows[0]['profile']}: " if one_profile else "") + "simulated accuracy" + (
        " per setting" if one_profile else " per profile")
    ax.set_title(f"{r0.model} on {data_label(r0.data)}, {r0.images} test images"
                 + (f", recipe {recipe}" if recipe else "") + f"\n{what}", fontsize=10)
    handles = [Patch(color=SIM_COLOR, label="simulated")]
    if any(r["overflow_events"] for r in rows):
        handles.append(Patch(color=OVERFLOW_COLOR, label="simulated, overflow events"))
    if fq:
        handles.append(Patch(color=FQ_COLOR, label="fake-quant"))
    if any(r["mode"] == "weight-only" for r in rows):
        handles.append(Patch(facecolor=WEIGHT_ONLY_FILL, hatch="///", edgecolor=SIM_COLOR, label="weight-only (float activations)"))
    handles.append(Line2D([], [], color="#555555", linestyle="--", label=f"float {fl:.2f}%"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if n > 3 else 0.12, 1, 1))
    return _png(fig)


def sweep_plot(results, path: str | os.PathLike) -> None:
    """Write :func:`sweep_plot_png` to ``path`` (atomically)."""
    atomic_write(path, sweep_plot_png(results))


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
            row += ["" if "certified" not in n else ("yes" if n["certified"] else "NO"), n.get("arithmetic", "")]
        rows.append(row)
    hdr = ["node", "op", "shape", "params", "kurtosis", "symmetry"]
    if r.profile:
        hdr += ["min acc bits", "headroom bits"] + (["min psum bits", "psum headroom"] if psum else []) + ["certified",
                                                                                                      "arithmetic"]
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


def compare_plot_png(r) -> bytes:
    """Per-layer SQNR (fake-quant vs simulator, each vs float) and fraction of differing outputs."""
    plt = _pyplot()

    names = [d.name for d in r.layers]
    cap = lambda v: 120.0 if v == float("inf") else max(v, -20.0)  # noqa: E731
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(7, 0.32 * len(names) + 3), 6.5), sharex=True)
    xs = range(len(names))
    a1.plot(xs, [cap(d.sqnr_fq_vs_sim) for d in r.layers], "o-", label="fake-quant vs simulator")
    a1.plot(xs, [cap(d.sqnr_fq_vs_float) for d in r.layers], "s--", label="fake-quant vs float")
    a1.plot(xs, [cap(d.sqnr_sim_vs_float) for d in r.layers], "^--", label="simulator vs float")
    a1.set_ylabel("SQNR (dB; inf shown as 120)")
    a1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    a1.grid(axis="y", alpha=0.3)
    recipe = _recipe(r)
    a1.set_title(f"{r.model} on {data_label(r.data)}, {r.images} test images, profile {r.profile}"
                 + (f", recipe {recipe}" if recipe else "")
                 + f"\nfake-quant {100 * r.fakequant_accuracy:.2f}%  simulator {100 * r.sim_accuracy:.2f}%  "
                 f"float {100 * r.float_accuracy:.2f}%", fontsize=9)
    a2.bar(xs, [100 * d.frac_diff for d in r.layers],
           color=[OVERFLOW_COLOR if d.max_lsb > 1 else SIM_COLOR for d in r.layers])
    a2.set_ylabel("% outputs differing\n(red: > 1 LSB)")
    a2.set_xticks(list(xs))
    a2.set_xticklabels([n if len(n) <= 18 else n[:8] + "…" + n[-8:] for n in names], rotation=45, ha="right", fontsize=7)
    fig.tight_layout()
    return _png(fig)


def compare_plot(r, path) -> None:
    """Write :func:`compare_plot_png` to ``path`` (atomically)."""
    atomic_write(path, compare_plot_png(r))
