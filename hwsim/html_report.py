"""Results JSON -> one self-contained HTML page (inline CSS and SVG, no script, no network).

The page renders the same JSON objects the CLI writes (``run --out``, ``sweep --out x.json``,
``compare --out``), so its numbers are the CLI's numbers. Every number on the page sits in an
element that says where it came from: ``data-src`` (which input document, ``prov`` for the
provenance, ``meta`` for a count over the runs: ``/integer_runs``, ``/certified_runs``),
``data-key`` (an RFC 6901 JSON pointer into it), ``data-value`` (the exact JSON value, ``repr`` of
a float) and ``data-fmt`` (how it is displayed); a value computed from several JSON
fields says so with ``data-derived`` (its name, see :data:`DERIVED`). Plot marks carry the same
attributes for their x and y (``data-key-x``, ``data-x``, ...). Every table has a CSV link (a
``data:`` URL) holding the raw values. A Content-Security-Policy meta tag (``default-src 'none'``)
blocks any request the page could make, so a stray external reference fails loudly in a browser.

Input documents: a run result (dict), a sweep (list of run results) or a compare result (dict
with ``prediction_agreement``); all run results of all documents form one sweep section, each
compare result its own section. Run results may carry ``cost`` (:func:`hwsim.cost.graph_cost`)
and ``recipe``; both are shown where present.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import hashlib
import html
import io
import json
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hwsim.errors import HwsimError

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

# names of values computed from several JSON fields (data-derived) and how
DERIVED = {
    "label": "profile, then [settings k=v;...] and the recipe unless it is 'profile' or named by a ptq= setting",
    "max_clip_rate": "max over the run's layers of clip_rate (hwsim.report.sweep_rows)",
    "min_headroom_bits": "min over layers of headroom_bits and partial_headroom_bits (hwsim.report.sweep_rows)",
    "uncertified_layers": "number of layers with certified = false (hwsim.report.sweep_rows)",
    "acc_bits": "cost.totals.acc_bits, else the widest layer's min_acc_bits + headroom_bits",
    "pareto_bops": "on the Pareto front of (cost.totals.bops, sim_accuracy): no other run is cheaper-or-equal "
                   "and more-or-equally accurate with one of them strict",
    "pareto_acc_bits": "on the Pareto front of (acc_bits, sim_accuracy), integer runs only",
}


# ----------------------------------------------------------------------------- formatting
def fmt_value(v: Any, fmt: str) -> str:
    """How a value is displayed (one place for every table and plot label)."""
    if v is None:
        return "–"
    if fmt == "pct":
        return f"{100 * v:.2f}%"
    if fmt == "pct3":
        return f"{100 * v:.3f}%"
    if fmt == "int":
        return f"{int(v):,}"
    if fmt == "rate":  # images/s, as the CLI prints it
        return "inf" if v == float("inf") else f"{v:,.0f}"
    if fmt == "sec":
        return f"{v:.3f}"
    if fmt == "db":
        from hwsim.report import _db  # the CLI's dB formatter

        return _db(v)
    if fmt == "lsb":
        return f"{v:.4f}"
    if fmt == "bits":  # an accumulator width; None is handled above, but an unbounded one is spelled out
        return f"{int(v)}"
    if fmt == "cert":
        return "✓" if v else "✗"
    if fmt == "yesno":
        return "yes" if v else "NO"
    if fmt == "str":
        return str(v)
    raise ValueError(fmt)


def raw_value(v: Any) -> str:
    """The exact value as text (data-value and CSV): repr of a float, str of an int, '' for null."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def pointer(*parts) -> str:
    """An RFC 6901 JSON pointer from path parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


# ----------------------------------------------------------------------------- cells and tables
@dataclass
class Cell:
    """One displayed value and where it came from."""

    value: Any
    fmt: str = "str"
    src: str | None = None  # document id ("0", "1", ... or "prov")
    key: str | None = None  # JSON pointer into that document
    derived: str | None = None  # a DERIVED name (then key points at the run it was derived from)
    cls: str = ""
    style: str = ""

    def attrs(self) -> str:
        a = []
        if self.src is not None:
            a.append(f'data-src="{esc(self.src)}"')
        if self.key is not None:
            a.append(f'data-key="{esc(self.key)}"')
        if self.derived is not None:
            a.append(f'data-derived="{esc(self.derived)}"')
        if self.src is not None:
            a.append(f'data-value="{esc(raw_value(self.value))}" data-fmt="{self.fmt}"')
        if self.cls:
            a.append(f'class="{self.cls}"')
        if self.style:
            a.append(f'style="{self.style}"')
        return (" " + " ".join(a)) if a else ""

    def td(self, tag: str = "td") -> str:
        return f"<{tag}{self.attrs()}>{esc(fmt_value(self.value, self.fmt))}</{tag}>"


@dataclass
class Table:
    name: str  # file name of its CSV
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""
    scroll: bool = False


def table_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.headers)
    for row in t.rows:
        w.writerow([raw_value(c.value) for c in row])
    return buf.getvalue()


def data_url(text: str, mime: str = "text/csv") -> str:
    return f"data:{mime};charset=utf-8;base64," + base64.b64encode(text.encode()).decode()


def csv_link(name: str, text: str) -> str:
    return f'<a class="csv" download="{esc(name)}" href="{data_url(text)}">CSV</a>'


def render_table(t: Table) -> str:
    left = [bool(t.rows) and any(c in t.rows[0][i].cls.split() for c in ("name", "cause", "mode"))
            for i in range(len(t.headers))]
    head = "".join(f'<th{" class=l" if lf else ""}>{esc(h)}</th>' for h, lf in zip(t.headers, left))
    body = "\n".join("<tr>" + "".join(c.td() for c in row) + "</tr>" for row in t.rows)
    cap = f"<caption>{esc(t.caption)} {csv_link(t.name, table_csv(t))}</caption>"
    wrap = "tablewrap scroll" if t.scroll else "tablewrap"
    return (f'<div class="{wrap}"><table data-table="{esc(t.name)}">{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table></div>")


# ----------------------------------------------------------------------------- input documents
@dataclass
class Run:
    src: str
    key: str  # pointer of the run inside its document ("" or "/3")
    d: dict

    def k(self, *parts) -> str:
        return self.key + pointer(*parts)

    @property
    def label(self) -> str:
        return run_label(self.d)


def run_label(d: dict) -> str:
    """The CLI's row label: ``profile [k=v;k=v]`` plus `` recipe R`` when the result names a recipe
    other than the profile's own ranges that its settings (``ptq=R``) do not already name."""
    s = d.get("settings") or {}
    lab = d["profile"] + (" [" + ";".join(f"{k}={v}" for k, v in s.items()) + "]" if s else "")
    rec = d.get("recipe")
    return lab + (f" recipe {rec}" if rec not in (None, "", "profile") and "ptq" not in s else "")


def _is_run(d) -> bool:
    return isinstance(d, dict) and "sim_accuracy" in d and "agreement_with_float" in d and "layers" in d


def _is_compare(d) -> bool:
    return isinstance(d, dict) and "prediction_agreement" in d and "layers" in d


def split_documents(docs: list, names: list[str] | None = None) -> tuple[list[Run], list[tuple[str, dict]]]:
    """Run results (from run and sweep documents) and compare results, each with its document id."""
    runs, compares = [], []
    for i, doc in enumerate(docs):
        where = names[i] if names else f"document {i}"
        if isinstance(doc, list):
            if not doc:
                raise HwsimError(f"{where}: an empty list of results")
            for j, d in enumerate(doc):
                if not _is_run(d):
                    raise HwsimError(f"{where}: entry {j} is not a run result (needs profile, sim_accuracy, "
                                     "agreement_with_float, layers)")
                runs.append(Run(str(i), pointer(j), d))
        elif _is_compare(doc):
            compares.append((str(i), doc))
        elif _is_run(doc):
            runs.append(Run(str(i), "", doc))
        else:
            raise HwsimError(f"{where}: not a run, sweep or compare result (allowed: the JSON that "
                             "`hwsim run/sweep/compare --out x.json` writes)")
    return runs, compares


def load_results(paths: list[str]) -> list:
    """The JSON documents of ``paths`` (each checked to be a run, sweep or compare result)."""
    docs = []
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise HwsimError(f"{p}: no such results file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise HwsimError(f"{p}: cannot read results ({e.__class__.__name__}: {e})") from None
        try:
            docs.append(json.loads(text))
        except json.JSONDecodeError as e:
            raise HwsimError(f"{p}: not JSON ({e.msg} at line {e.lineno}); allowed: the JSON that "
                             "`hwsim run/sweep/compare --out x.json` writes") from None
    split_documents(docs, list(paths))
    return docs


def default_provenance(command: str | None = None, sources: list[str] | None = None) -> dict:
    """hwsim version, UTC date, command line and (for files) each source with its SHA-256."""
    from hwsim import __version__

    prov = {"hwsim_version": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": command if command is not None else command_line()}
    if sources:
        prov["sources"] = "; ".join(f"{p} (sha256 {hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]})"
                                    for p in sources)
    return prov


def command_line() -> str:
    """This process's command line as a user would type it (``hwsim ...``)."""
    return shlex.join(["hwsim"] + sys.argv[1:])


# ----------------------------------------------------------------------------- derived values
def _sweep_view(d: dict) -> SimpleNamespace:
    """A run result JSON as the attributes :func:`hwsim.report.sweep_rows` reads."""
    return SimpleNamespace(profile=d["profile"], settings=d.get("settings") or {}, weight_only=bool(d["weight_only"]),
                           float_accuracy=d["float_accuracy"], sim_accuracy=d["sim_accuracy"],
                           fakequant_accuracy=d.get("fakequant_accuracy"), agreement=d["agreement_with_float"],
                           overflow_events=d["overflow_events"], layers=d["layers"],
                           images_per_s=d["images_per_s"], seconds=d["seconds"])


def acc_bits_of(d: dict) -> int | None:
    """The run's accumulator width: cost.totals.acc_bits, else derived from a layer's certificate fields."""
    cost = d.get("cost")
    if cost is not None:
        return cost["totals"]["acc_bits"]
    widths = [x["min_acc_bits"] + x["headroom_bits"] for x in d["layers"]
              if x.get("min_acc_bits") is not None and x.get("headroom_bits") is not None]
    return max(widths) if widths else None


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, accuracy) points: True where no other point has cost <= and accuracy >= with one strict."""
    out = []
    for i, (x, y) in enumerate(points):
        dominated = any((qx <= x and qy >= y) and (qx < x or qy > y) for j, (qx, qy) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


# ----------------------------------------------------------------------------- SVG
W, H = 540, 300
ML, MR, MT, MB = 60, 18, 34, 46


def _nice_step(span: float, n: int = 5) -> float:
    raw = span / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _si(v: float) -> str:
    for p, s in ((12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(v) >= 10 ** p:
            x = v / 10 ** p
            return f"{x:g}{s}"
    return f"{v:g}"


class Axis:
    """A linear or log10 axis mapping data to pixels, with its tick values."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool = False, integer: bool = False):
        self.log, self.p0, self.p1 = log, p0, p1
        if log:
            lo, hi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
            if hi == lo:
                hi += 1
            self.ticks = [10.0 ** e for e in range(lo, hi + 1)]
        else:
            if hi == lo:
                lo, hi = lo - 1, hi + 1
            step = _nice_step(hi - lo)
            if integer:
                step = max(1, round(step))
            lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
            self.ticks = [lo + i * step for i in range(int(round((hi - lo) / step)) + 1)]
        self.lo, self.hi = lo, hi

    def __call__(self, v: float) -> float:
        t = ((math.log10(v) if self.log else v) - self.lo) / (self.hi - self.lo)
        return self.p0 + t * (self.p1 - self.p0)

    def label(self, v: float) -> str:
        return _si(v)


def _svg_open(title: str, w: int = W, h: int = H) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img" aria-label="{esc(title)}" '
            f'class="plot">')


def _axes(xa: Axis, ya: Axis, xlabel: str, ylabel: str, w: int = W, h: int = H, xticks: bool = True) -> str:
    s = [f'<line class="axis" x1="{ML}" y1="{h - MB}" x2="{w - MR}" y2="{h - MB}"/>',
         f'<line class="axis" x1="{ML}" y1="{MT}" x2="{ML}" y2="{h - MB}"/>']
    for t in ya.ticks:
        y = ya(t)
        s.append(f'<line class="grid" x1="{ML}" y1="{y:.1f}" x2="{w - MR}" y2="{y:.1f}"/>'
                 f'<text class="tick" x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(ya.label(t))}</text>')
    if xticks:
        for t in xa.ticks:
            x = xa(t)
            s.append(f'<line class="grid" x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{h - MB}"/>'
                     f'<text class="tick" x="{x:.1f}" y="{h - MB + 16}" text-anchor="middle">{esc(xa.label(t))}</text>')
    s.append(f'<text class="axlabel" x="{(ML + w - MR) / 2:.0f}" y="{h - 8}" text-anchor="middle">{esc(xlabel)}</text>')
    s.append(f'<text class="axlabel" transform="translate(14 {(MT + h - MB) / 2:.0f}) rotate(-90)" '
             f'text-anchor="middle">{esc(ylabel)}</text>')
    return "\n".join(s)


def _mark_attrs(src, key, value, axis: str, derived: str | None = None) -> str:
    a = f'data-src-{axis}="{esc(src)}" data-key-{axis}="{esc(key)}" data-{axis}="{esc(raw_value(value))}"'
    return a + (f' data-derived-{axis}="{derived}"' if derived else "")


@dataclass
class Point:
    run: Run
    x: float
    y: float
    x_key: str
    y_key: str
    x_derived: str | None = None
    front: bool = False


def svg_scatter(points: list[Point], xlabel: str, title: str, log_x: bool, integer_x: bool = False) -> str:
    """Accuracy (y, %) against a cost (x); the Pareto front filled, joined as a staircase and labelled.

    ``log_x``: a log10 axis where the costs span at least a factor of ten (the label says which)."""
    xs = [p.x for p in points]
    ys = [100 * p.y for p in points]
    log_x = log_x and min(xs) > 0 and max(xs) / min(xs) >= 10
    xa = Axis(min(xs), max(xs), ML + 10, W - MR - 10, log=log_x, integer=integer_x)
    ya = Axis(0.0 if min(ys) < 50 else math.floor(min(ys) / 10) * 10, 100.0, H - MB, MT)
    ya.label = lambda v: f"{v:g}%"  # type: ignore[method-assign]
    s = [_svg_open(title), f'<text class="ptitle" x="{ML}" y="18">{esc(title)}</text>',
         _axes(xa, ya, xlabel + (" (log scale)" if log_x else ""), "simulated accuracy")]
    front = sorted((p for p in points if p.front), key=lambda p: (p.x, p.y))
    if len(front) > 1:  # staircase: accuracy holds until the next, costlier front point
        steps = [(xa(front[0].x), ya(100 * front[0].y))]
        for p in front[1:]:
            steps += [(xa(p.x), steps[-1][1]), (xa(p.x), ya(100 * p.y))]
        s.append(f'<polyline class="front" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in steps)}"/>')
    for p in sorted(points, key=lambda p: p.front):
        cls = "pt front" if p.front else "pt"
        if p.run.d["weight_only"]:
            cls += " wo"
        attrs = (_mark_attrs(p.run.src, p.x_key, p.x, "x", p.x_derived) + " "
                 + _mark_attrs(p.run.src, p.y_key, p.y, "y"))
        lab = (f'<title data-src="{esc(p.run.src)}" data-key="{esc(p.run.key)}" data-derived="label" '
               f'data-value="{esc(p.run.label)}" data-fmt="str">{esc(p.run.label)}</title>')
        cx, cy = xa(p.x), ya(100 * p.y)
        if p.run.d["weight_only"]:
            s.append(f'<rect class="{cls}" x="{cx - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8" {attrs}>{lab}</rect>')
        else:
            s.append(f'<circle class="{cls}" cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" {attrs}>{lab}</circle>')
    # the front's points get letters (identical points share one); the caption lists who they are
    letters: dict[tuple[float, float], str] = {}
    for p in front:
        if (p.x, p.y) not in letters:
            letters[(p.x, p.y)] = _letter(len(letters))
            cx, cy = xa(p.x), ya(100 * p.y)
            s.append(f'<text class="ptlabel" x="{cx + 6:.1f}" y="{cy - 6:.1f}">{letters[(p.x, p.y)]}</text>')
    s.append("</svg>")
    who: dict[str, list[str]] = {}
    for p in front:
        who.setdefault(letters[(p.x, p.y)], []).append(Cell(p.run.label, "str", p.run.src, p.run.key,
                                                             derived="label").td("span"))
    caption = "; ".join(f"<b>{k}</b> " + ", ".join(v) for k, v in who.items())
    return "\n".join(s) + (f"<figcaption>Pareto front: {caption}</figcaption>" if front else "")


def _letter(i: int) -> str:
    """A, B, ..., Z, AA, AB, ... (front labels: letters, so they are never mistaken for values)."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(65 + r) + out
    return out


def svg_bars(names: list[str], series: list[dict], ylabel: str, title: str, src: str, cap: float | None = None,
             floor: float | None = None, title_html: str | None = None, caption: str = "") -> str:
    """Grouped bars per layer. series: {name, cls, values, keys, fmt, scale, name_keys, extra_cls, note};
    values outside [floor, cap] are drawn at the edge with their value as text (inf included); a series'
    ``note`` (a list of Cells) is written above its bars. The legend and ``caption`` go below, in HTML."""
    w = max(W, ML + MR + 40 + len(names) * (14 * len(series) + 18))
    vals = [v * s.get("scale", 1) for s in series for v in s["values"] if v is not None and math.isfinite(v)]
    hi = max(vals + [0.0]) if cap is None else min(max(vals + [0.0]), cap)
    lo = min(vals + [0.0]) if floor is None else max(min(vals + [0.0]), floor)
    ya = Axis(lo, hi if hi > lo else lo + 1, H - MB, MT)
    ya.label = lambda v: f"{v:g}"  # type: ignore[method-assign]
    s = [_svg_open(title, w), f'<text class="ptitle" x="{ML}" y="18">{title_html or esc(title)}</text>',
         _axes(ya, ya, "", ylabel, w=w, xticks=False)]
    group = (w - ML - MR) / max(len(names), 1)
    bw = min(14.0, (group - 8) / max(len(series), 1))
    y0 = ya(max(ya.lo, min(0.0, ya.hi)))
    for i, name in enumerate(names):
        gx = ML + i * group + (group - bw * len(series)) / 2
        for j, sr in enumerate(series):
            v = sr["values"][i]
            if v is None:
                continue
            scaled = v * sr.get("scale", 1)
            shown = min(max(scaled, ya.lo), ya.hi) if math.isfinite(scaled) else (ya.hi if scaled > 0 else ya.lo)
            y = ya(shown)
            x = gx + j * bw
            cls = sr["cls"] + (" " + sr["extra_cls"][i] if sr.get("extra_cls") else "")
            attrs = f'data-src="{esc(src)}" data-key="{esc(sr["keys"][i])}" data-value="{esc(raw_value(v))}" data-fmt="{sr["fmt"]}"'
            s.append(f'<rect class="{cls}" x="{x:.1f}" y="{min(y, y0):.1f}" width="{bw - 1:.1f}" '
                     f'height="{max(abs(y0 - y), 0.5):.1f}"><title {attrs}>{esc(fmt_value(v, sr["fmt"]))}</title></rect>')
            if shown != scaled:  # clipped: write the value at the edge
                s.append(f'<text class="clip" x="{x + bw / 2:.1f}" y="{(y - 3) if scaled > 0 else (y + 11):.1f}" '
                         f'text-anchor="middle" {attrs}>{esc(fmt_value(v, sr["fmt"]))}</text>')
            elif sr.get("note"):
                s.append(sr["note"][i].td("text").replace(
                    "<text", f'<text x="{x + bw / 2:.1f}" y="{min(y, y0) - 3:.1f}" text-anchor="middle"', 1))
        nk = series[0]["name_keys"][i]
        tag = "" if nk is None else f'data-src="{esc(src)}" data-key="{esc(nk)}" data-value="{esc(name)}" data-fmt="str"'
        s.append(f'<text class="tick" x="{ML + (i + 0.5) * group:.1f}" y="{H - MB + 16}" text-anchor="middle" '
                 f'{tag}>{esc(name)}</text>')
    s.append("</svg>")
    legend = "".join(f'<span class="sw {sr["cls"]}"></span>{esc(sr["name"])} ' for sr in series)
    return "\n".join(s) + f"<figcaption>{legend}{caption}</figcaption>"


# ----------------------------------------------------------------------------- sections
def _prov_section(runs: list[Run], compares: list[tuple[str, dict]], prov: dict) -> str:
    """Model, data, images, profiles and recipes (from the results), then version, command line, date."""
    everything = [(r.src, r.key, r.d) for r in runs] + [(src, "", c) for src, c in compares]

    def distinct(cells: list[Cell]) -> str:
        seen, out = set(), []
        for c in cells:
            if c.value not in seen:
                seen.add(c.value)
                out.append(c.td("span"))
        return ", ".join(out)

    rows = [("model", distinct([Cell(d["model"], "str", s, k + "/model") for s, k, d in everything])),
            ("data set", distinct([Cell(d["data"], "str", s, k + "/data") for s, k, d in everything])),
            ("test images", distinct([Cell(d["images"], "int", s, k + "/images") for s, k, d in everything])),
            ("profiles", distinct([Cell(r.label, "str", r.src, r.key, derived="label") for r in runs]
                                  + [Cell(c["profile"], "str", src, "/profile") for src, c in compares]))]
    recipes = [Cell(d["recipe"], "str", s, k + "/recipe") for s, k, d in everything if d.get("recipe") not in (None, "")]
    if recipes:
        rows.append(("PTQ recipes", distinct(recipes)))
    names = {"hwsim_version": "hwsim version", "command": "command line", "date": "date", "sources": "results files"}
    for k, v in prov.items():
        rows.append((names.get(k, k.replace("_", " ")),
                     Cell(v, "str", "prov", pointer(k), cls="code" if k == "command" else "").td("span")))
    body = "\n".join(f"<tr><th>{esc(label)}</th><td>{cells}</td></tr>" for label, cells in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["field", "value"])
    for label, cells in rows:  # the text of each row, as shown
        w.writerow([label, html.unescape(re.sub(r"<[^>]+>", "", cells))])
    return (f'<section id="provenance"><h2>Provenance {csv_link("provenance.csv", buf.getvalue())}</h2>'
            f'<table class="prov" data-table="provenance.csv"><tbody>{body}</tbody></table></section>')


def _summary(runs: list[Run], compares, fronts: dict | None) -> str:
    """The first lines a reader sees: best run, certified runs, overflowing runs, the BOPs Pareto front,
    first diverging layers."""
    items = []
    if runs:
        best = max(runs, key=lambda r: r.d["sim_accuracy"])
        items.append(f"<li>best simulated accuracy {Cell(best.d['sim_accuracy'], 'pct', best.src, best.k('sim_accuracy')).td('b')}"
                     f" under {Cell(best.label, 'str', best.src, best.key, derived='label').td('b')}"
                     f" (float {Cell(best.d['float_accuracy'], 'pct', best.src, best.k('float_accuracy')).td('span')})</li>")
        cert = [r for r in runs if not r.d["weight_only"]
                and all(x.get("certified") is not False for x in r.d["layers"])]
        integer = [r for r in runs if not r.d["weight_only"]]
        if integer:
            items.append(f"<li>{Cell(len(cert), 'int', 'meta', '/certified_runs').td('b')} of "
                         f"{Cell(len(integer), 'int', 'meta', '/integer_runs').td('b')} integer runs certified: no input "
                         "on the grid can overflow any layer's accumulator or partial sums</li>")
        bad = [r for r in runs if r.d["overflow_events"]]
        if bad:
            items.append("<li>overflow events in " + ", ".join(
                f"{Cell(r.label, 'str', r.src, r.key, derived='label').td('span')} "
                f"({Cell(r.d['overflow_events'], 'int', r.src, r.k('overflow_events')).td('span')})" for r in bad)
                + "</li>")
        else:
            items.append("<li>no overflow events in any run</li>")
        front = [r for r, f in zip(runs, fronts["bops"]) if f]
        if front:
            front.sort(key=lambda r: r.d["cost"]["totals"]["bops"])
            items.append("<li>Pareto front, accuracy vs BOPs (cheapest first): " + ", ".join(
                Cell(r.label, "str", r.src, r.key, derived="label").td("span") for r in front) + "</li>")
    for src, c in compares:
        fd, fc = c.get("first_divergent_layer"), c.get("first_causal_layer")
        line = (f"<li>compare under {Cell(c['profile'], 'str', src, '/profile').td('b')}: fake-quant "
                f"{Cell(c['fakequant_accuracy'], 'pct', src, '/fakequant_accuracy').td('b')} vs simulator "
                f"{Cell(c['sim_accuracy'], 'pct', src, '/sim_accuracy').td('b')}; "
                + (f"first layer diverging by more than one LSB {Cell(fd, 'str', src, '/first_divergent_layer').td('b')}"
                   if fd else "no layer diverges by more than one LSB"))
        j = next((j for j, x in enumerate(c["layers"]) if x["name"] == fc), None)
        if j is not None:  # the named cause where the difference is born
            line += (f"; born in {Cell(fc, 'str', src, '/first_causal_layer').td('b')}: "
                     + Cell(c["layers"][j]["cause"], "str", src, pointer("layers", j, "cause")).td("span"))
        items.append(line + "</li>")
    return f'<div><h2>Summary</h2><ul class="summary">{"".join(items)}</ul></div>' if items else "<div></div>"


def _accuracy_table(runs: list[Run], fronts: dict[str, list[bool]]) -> Table:
    from hwsim.report import sweep_rows

    rows = sweep_rows([_sweep_view(r.d) for r in runs])
    has_fq = any(r.d.get("fakequant_accuracy") is not None for r in runs)
    has_cost = any(r.d.get("cost") is not None for r in runs)
    has_psum = has_cost and any(((r.d.get("cost") or {}).get("totals") or {}).get("partial_bits") is not None
                                for r in runs)
    has_recipe = any(r.d.get("recipe") not in (None, "") for r in runs)
    hdr = ["profile"] + (["recipe"] if has_recipe else []) + ["mode", "float"] + (["fake-quant"] if has_fq else []) \
        + ["simulated", "agreement w/ float", "overflow events", "max clip", "min headroom bits", "uncertified layers",
           "accumulator bits"] + (["BOPs", "MACs", "weight memory bits", "min acc bits (certified)"] if has_cost else []) \
        + (["partial-sum bits"] if has_psum else []) + ["Pareto (acc bits)"] + (["Pareto (BOPs)"] if has_cost else []) + ["images/s"]
    t = Table("accuracy.csv", hdr, caption="Accuracy and hardware cost per profile", scroll=True)
    for i, (r, row) in enumerate(zip(runs, rows)):
        d = r.d
        cells = [Cell(r.label, "str", r.src, r.key, derived="label", cls="name")]
        if has_recipe:
            cells.append(Cell(d.get("recipe"), "str", r.src, r.k("recipe")))
        cells += [Cell(d["mode"], "str", r.src, r.k("mode"), cls="mode"), Cell(d["float_accuracy"], "pct", r.src, r.k("float_accuracy"))]
        if has_fq:
            cells.append(Cell(d.get("fakequant_accuracy"), "pct", r.src, r.k("fakequant_accuracy")))
        cells += [Cell(d["sim_accuracy"], "pct", r.src, r.k("sim_accuracy"), cls="em"),
                  Cell(d["agreement_with_float"], "pct", r.src, r.k("agreement_with_float")),
                  Cell(d["overflow_events"], "int", r.src, r.k("overflow_events"), cls="bad" if d["overflow_events"] else ""),
                  Cell(row["max_clip_rate"], "pct", r.src, r.key, derived="max_clip_rate"),
                  Cell(None if row["min_headroom_bits"] == "" else row["min_headroom_bits"], "int", r.src, r.key,
                       derived="min_headroom_bits"),
                  Cell(row["uncertified_layers"], "int", r.src, r.key, derived="uncertified_layers"),
                  Cell(acc_bits_of(d), "bits", r.src, r.key, derived="acc_bits")]
        if has_cost:
            tot = (d.get("cost") or {}).get("totals") or {}
            ck = lambda name: r.k("cost", "totals", name)  # noqa: E731
            cells += [Cell(tot.get("bops"), "int", r.src, ck("bops")), Cell(tot.get("macs"), "int", r.src, ck("macs")),
                      Cell(tot.get("weight_memory_bits"), "int", r.src, ck("weight_memory_bits")),
                      Cell(tot.get("min_acc_bits"), "int", r.src, ck("min_acc_bits"))]
            if has_psum:
                cells.append(Cell(tot.get("partial_bits"), "int", r.src, ck("partial_bits")))
        cells.append(Cell(fronts["acc_bits"][i], "yesno", r.src, r.key, derived="pareto_acc_bits")
                     if fronts["acc_bits"][i] is not None else Cell(None, "yesno", r.src, r.key, derived="pareto_acc_bits"))
        if has_cost:
            cells.append(Cell(fronts["bops"][i], "yesno", r.src, r.key, derived="pareto_bops"))
        cells.append(Cell(d["images_per_s"], "rate", r.src, r.k("images_per_s")))
        t.rows.append(cells)
    return t


def _fronts(runs: list[Run]) -> dict[str, list]:
    """Pareto membership per run (None where the run has no such cost)."""
    out = {}
    pts = [(r.d["cost"]["totals"]["bops"], r.d["sim_accuracy"]) if r.d.get("cost") else None for r in runs]
    idx = [i for i, p in enumerate(pts) if p is not None]
    f = pareto_front([pts[i] for i in idx])
    out["bops"] = [None] * len(runs)
    for i, v in zip(idx, f):
        out["bops"][i] = v
    pts = [(acc_bits_of(r.d), r.d["sim_accuracy"]) if not r.d["weight_only"] and acc_bits_of(r.d) is not None else None
           for r in runs]
    idx = [i for i, p in enumerate(pts) if p is not None]
    f = pareto_front([pts[i] for i in idx])
    out["acc_bits"] = [None] * len(runs)
    for i, v in zip(idx, f):
        out["acc_bits"][i] = v
    return out


def _plots(runs: list[Run], fronts) -> str:
    figs = []
    pts = [Point(r, r.d["cost"]["totals"]["bops"], r.d["sim_accuracy"], r.k("cost", "totals", "bops"),
                 r.k("sim_accuracy"), front=bool(fronts["bops"][i]))
           for i, r in enumerate(runs) if fronts["bops"][i] is not None]
    if pts:
        figs.append(svg_scatter(pts, "bit operations per image (BOPs)", "Accuracy vs BOPs", log_x=True))
    else:
        figs.append('<p class="note">No BOPs in these results (no <code>cost</code> field): the accuracy-vs-BOPs '
                    "plot needs results written by an hwsim that records hardware cost.</p>")
    pts = [Point(r, acc_bits_of(r.d), r.d["sim_accuracy"], r.key, r.k("sim_accuracy"), x_derived="acc_bits",
                 front=bool(fronts["acc_bits"][i])) for i, r in enumerate(runs) if fronts["acc_bits"][i] is not None]
    if pts:
        figs.append(svg_scatter(pts, "accumulator bits", "Accuracy vs accumulator width", log_x=False, integer_x=True))
    left = [r for i, r in enumerate(runs) if fronts["acc_bits"][i] is None]
    note = ""
    if left:
        note = ('<p class="note">Not in the accumulator plot (weight-only runs accumulate in floating point; or no width known): '
                + ", ".join(Cell(r.label, "str", r.src, r.key, derived="label").td("span") for r in left) + ".</p>")
    legend = ('<p class="legend">Filled red, lettered: Pareto front (no other run is as cheap and as accurate); '
              "grey: dominated; squares: weight-only runs. Hover a mark for its profile.</p>")
    return f'<div class="figs">{"".join(f"<figure>{f}</figure>" for f in figs)}</div>{legend}{note}'


def _heat_color(events: int, outputs: int) -> str:
    if not events:
        return ""
    rate = min(1.0, events / outputs) if outputs else 1.0
    t = min(1.0, max(0.0, (math.log10(rate) + 6) / 6))  # 1e-6 .. 1 -> pale .. saturated
    return f"background:hsl(0,80%,{92 - 34 * t:.0f}%)"


def _heatmap(runs: list[Run]) -> str:
    layers: list[str] = []
    for r in runs:
        for x in r.d["layers"]:
            if x["name"] not in layers:
                layers.append(x["name"])
    by = [{x["name"]: (j, x) for j, x in enumerate(r.d["layers"])} for r in runs]
    def layer_head(n: str) -> str:
        r, b = next((r, b) for r, b in zip(runs, by) if n in b)
        return Cell(n, "str", r.src, r.k("layers", b[n][0], "name")).td("th")

    head = "<tr><th>profile</th>" + "".join(layer_head(n) for n in layers) + "</tr>"
    body = []
    csv_rows = []
    for r, b in zip(runs, by):
        cells = [Cell(r.label, "str", r.src, r.key, derived="label", cls="name").td("th")]
        for n in layers:
            if n not in b:
                cells.append("<td></td>")
                continue
            j, x = b[n]
            k = lambda f: r.k("layers", j, f)  # noqa: E731
            cert = x.get("certified")
            cls = {True: "ok", False: "nok", None: "na"}[cert]
            style = _heat_color(x["overflow_events"], x.get("outputs") or 0)
            cells.append(f'<td class="heat {cls}" style="{style}">'
                         f'{Cell(x["overflow_events"], "int", r.src, k("overflow_events"), cls="ev").td("span")}'
                         f'{Cell(cert, "cert", r.src, k("certified"), cls="cm").td("span")}<br>'
                         f'{Cell(x["clip_rate"], "pct3", r.src, k("clip_rate"), cls="clip").td("span")}</td>')
            csv_rows.append([run_label(r.d), n, x["overflow_events"], x.get("acc_events"), x.get("partial_events"),
                             x["clip_rate"], x.get("headroom_bits"), x.get("partial_headroom_bits"), x.get("min_acc_bits"),
                             cert])
        body.append("<tr>" + "".join(cells) + "</tr>")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["profile", "layer", "overflow_events", "acc_events", "partial_events", "clip_rate", "headroom_bits",
                "partial_headroom_bits", "min_acc_bits", "certified"])
    for row in csv_rows:
        w.writerow([raw_value(v) for v in row])
    cap = (f"<caption>Overflow events (top) and clip rate (bottom) per layer and profile; ✓ certified (no input on "
           f"the grid can overflow), ✗ uncertified (outlined), – no certificate; red shade: overflow events per "
           f"output, log scale from one in a million to one or more {csv_link('overflow_heatmap.csv', buf.getvalue())}"
           "</caption>")
    return (f'<div class="tablewrap scroll"><table class="heatmap" data-table="overflow_heatmap.csv">{cap}'
            f"<thead>{head}</thead><tbody>\n" + "\n".join(body) + "\n</tbody></table></div>")


def _cost_table(runs: list[Run]) -> Table | None:
    have = [r for r in runs if r.d.get("cost")]
    if not have:
        return None
    cols = [("MACs", "macs", "int"), ("W bits", "weight_bits", "int"), ("A bits", "act_bits", "int"),
            ("BOPs", "bops", "int"), ("weight memory bits", "weight_memory_bits", "int"),
            ("bias memory bits", "bias_memory_bits", "int"), ("acc bits", "acc_bits", "bits"),
            ("min acc bits", "min_acc_bits", "int"), ("headroom bits", "headroom_bits", "int"),
            ("psum bits", "partial_bits", "int"), ("min psum bits", "min_partial_bits", "int"),
            ("certified", "certified", "yesno")]
    t = Table("cost_per_layer.csv", ["profile", "layer"] + [c[0] for c in cols],
              caption="Hardware cost per layer (per image); acc bits – = unbounded", scroll=True)
    for r in have:
        for j, x in enumerate(r.d["cost"]["layers"]):
            t.rows.append([Cell(r.label, "str", r.src, r.key, derived="label", cls="name"),
                           Cell(x["name"], "str", r.src, r.k("cost", "layers", j, "name"))]
                          + [Cell(x.get(f), fmt, r.src, r.k("cost", "layers", j, f)) for _, f, fmt in cols])
    return t


def _compare_section(src: str, c: dict, n: int) -> str:
    k = pointer
    names = [x["name"] for x in c["layers"]]
    nk = [k("layers", j, "name") for j in range(len(names))]
    summary = Table(f"compare{n}_summary.csv", ["quantity", "value"], caption="Fake-quant vs integer simulator")
    for label, f, fmt in (("profile", "profile", "str"), ("PTQ recipe", "recipe", "str"), ("model", "model", "str"),
                          ("data", "data", "str"), ("test images", "images", "int"),
                          ("float accuracy", "float_accuracy", "pct"), ("fake-quant accuracy", "fakequant_accuracy", "pct"),
                          ("simulator accuracy", "sim_accuracy", "pct"),
                          ("identical predictions (fake-quant vs simulator)", "prediction_agreement", "pct"),
                          ("fake-quant rounding", "fq_rounding", "str"),
                          ("first layer diverging by more than one LSB", "first_divergent_layer", "str"),
                          ("first layer whose own arithmetic differs by more than one LSB", "first_causal_layer", "str")):
        if f == "recipe" and c.get("recipe") in (None, ""):
            continue
        summary.rows.append([Cell(label, cls="name"), Cell(c.get(f), fmt, src, k(f))])
    layers = Table(f"compare{n}_layers.csv",
                   ["layer", "kind", "SQNR fq/sim dB", "SQNR fq/float dB", "SQNR sim/float dB", "max LSB", "mean LSB",
                    "outputs differing", "overflow events", "clip rate", "isolated max LSB", "cause"],
                   caption="Per layer (SQNR in dB; LSB = one step of the layer's output grid)", scroll=True)
    for j, x in enumerate(c["layers"]):
        lk = lambda f: k("layers", j, f)  # noqa: E731
        layers.rows.append([Cell(x["name"], "str", src, lk("name"), cls="name"), Cell(x["kind"], "str", src, lk("kind")),
                            Cell(x["sqnr_fq_vs_sim"], "db", src, lk("sqnr_fq_vs_sim")),
                            Cell(x["sqnr_fq_vs_float"], "db", src, lk("sqnr_fq_vs_float")),
                            Cell(x["sqnr_sim_vs_float"], "db", src, lk("sqnr_sim_vs_float")),
                            Cell(x["max_lsb"], "int", src, lk("max_lsb"), cls="bad" if x["max_lsb"] > 1 else ""),
                            Cell(x["mean_lsb"], "lsb", src, lk("mean_lsb")),
                            Cell(x["frac_diff"], "pct3", src, lk("frac_diff")),
                            Cell(x["overflow_events"], "int", src, lk("overflow_events")),
                            Cell(x["clip_rate"], "pct", src, lk("clip_rate")),
                            Cell(x.get("isolated_max_lsb"), "int", src, lk("isolated_max_lsb")),
                            Cell(x["cause"], "str", src, lk("cause"), cls="cause")])
    def series(name: str, cls: str, f: str, fmt: str, **extra) -> dict:  # one per-layer field as bars
        return {"name": name, "cls": cls, "fmt": fmt, "name_keys": nk, "values": [x[f] for x in c["layers"]],
                "keys": [k("layers", j, f) for j in range(len(names))], **extra}

    sq = svg_bars(names, [series("fake-quant vs simulator", "s1", "sqnr_fq_vs_sim", "db"),
                          series("fake-quant vs float", "s2", "sqnr_fq_vs_float", "db"),
                          series("simulator vs float", "s3", "sqnr_sim_vs_float", "db")],
                  "SQNR (dB)", "SQNR per layer", src, cap=80.0, floor=-20.0,
                  caption="— higher is closer; bars cut at the top edge carry their value (inf: identical).")
    lsb = svg_bars(names, [series(
        "outputs differing (%)", "s1", "frac_diff", "pct3", scale=100,
        extra_cls=["big" if x["max_lsb"] > 1 else "" for x in c["layers"]],
        note=[Cell(x["max_lsb"], "int", src, k("layers", j, "max_lsb"), cls="note") for j, x in enumerate(c["layers"])])],
        "outputs differing (%)", "Fake-quant vs simulator, per layer", src,
        caption="— red: some output differs by more than one LSB; the number above a bar is the largest "
                "difference in LSBs.")
    hist = _lsb_histograms(src, c)
    return (f'<section class="compare" id="compare{n}"><h2>Comparison: fake-quant vs simulator under '
            f'{Cell(c["profile"], "str", src, "/profile").td("span")}</h2>'
            f'<div class="two">{render_table(summary)}</div>'
            f'<div class="figs"><figure>{sq}</figure><figure>{lsb}</figure></div>{hist}{render_table(layers)}</section>')


def _lsb_histograms(src: str, c: dict) -> str:
    """Per-layer histograms of |fake-quant − simulator| in LSBs, where the result carries ``lsb_histogram``
    (counts[i] = outputs differing by exactly i LSBs; bin 0, the identical outputs, is left out)."""
    figs = []
    for j, x in enumerate(c["layers"]):
        h = x.get("lsb_histogram")
        if not h or len(h) < 2:
            continue
        figs.append(svg_bars([str(i) for i in range(1, len(h))], [
            {"name": "outputs", "cls": "s1", "fmt": "int", "name_keys": [None] * (len(h) - 1),
             "values": list(h[1:]), "keys": [pointer("layers", j, "lsb_histogram", i) for i in range(1, len(h))]}],
            "outputs", f"{x['name']}: outputs differing by k LSBs", src,
            title_html=Cell(x["name"], "str", src, pointer("layers", j, "name")).td("tspan")
            + ": outputs differing by k LSBs (k on the x axis)"))
    return f'<div class="figs">{"".join(f"<figure>{f}</figure>" for f in figs)}</div>' if figs else ""


CSS = """
:root{--fg:#1d2330;--muted:#5b6474;--line:#d8dde6;--bg:#fff;--accent:#c62828;--ok:#2e7d32}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","Liberation Sans","DejaVu Sans",sans-serif;color:var(--fg);
 background:var(--bg);margin:0 auto;max-width:1280px;padding:14px 22px}
h1{font-size:21px;margin:4px 0 2px}h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid var(--line);padding-bottom:3px}
.sub{color:var(--muted);margin:0 0 8px}
ul.summary{margin:6px 0 10px;padding-left:20px}ul.summary li{margin:2px 0}
.top{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:6px 28px;align-items:start}
.top h2{margin-top:4px}
@media (max-width:900px){.top{grid-template-columns:1fr}}
table{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0}
th,td{border-bottom:1px solid var(--line);padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f3f5f9;font-weight:600}td.name,th.name,td.cause,thead th:first-child{text-align:left}
td.mode{white-space:nowrap}th.l{text-align:left}
td.name,th.name{white-space:nowrap}td.em{font-weight:700}td.bad,span.bad{color:var(--accent);font-weight:700}
table.prov{font-size:12px;width:100%}table.prov th,table.prov td{padding:1px 8px;text-align:left}
table.prov th{width:9em;background:none;color:var(--muted);font-weight:500}
.code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
.tablewrap{overflow-x:auto;margin:6px 0 12px}.tablewrap.scroll{max-height:70vh;overflow-y:auto}
a.csv{font-weight:400;font-size:11px;margin-left:8px;padding:1px 6px;border:1px solid var(--line);border-radius:3px;
 text-decoration:none;color:#1a56b0}
.figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;flex:1 1 420px;max-width:600px}
svg.plot{width:100%;height:auto;background:#fff;border:1px solid var(--line);border-radius:4px}
svg text{font-family:inherit;font-size:11px;fill:var(--fg)}svg .ptitle{font-weight:600;font-size:12px}
svg .tick,svg .legend{fill:var(--muted)}svg .axlabel{font-size:11.5px}
svg .axis{stroke:#7a8394}svg .grid{stroke:#eceff4}
svg .pt{fill:#fff;stroke:#8a93a3;stroke-width:1.5}svg .pt.front{fill:var(--accent);stroke:var(--accent)}
svg .front{fill:none;stroke:var(--accent);stroke-width:1.5;stroke-dasharray:4 3}
svg .ptlabel{font-size:11px;font-weight:700;fill:var(--accent)}
figcaption{font-size:12px;color:var(--muted);margin:3px 2px}figcaption b{color:var(--accent)}svg .clip{font-size:9px;fill:var(--muted)}
svg .s1{fill:#3b6fb6}svg .s2{fill:#f0a040}svg .s3{fill:#7bb77b}svg .s1.big{fill:var(--accent)}
svg .note{font-size:10px;fill:var(--fg)}
.sw{display:inline-block;width:10px;height:10px;margin:0 4px 0 8px;vertical-align:-1px}
.sw.s1{background:#3b6fb6}.sw.s2{background:#f0a040}.sw.s3{background:#7bb77b}
p.note,p.legend{color:var(--muted);font-size:12px;margin:4px 0}
table.heatmap td.heat{text-align:center;min-width:6.5em;line-height:1.25}
td.heat .clip{font-size:11px;color:var(--muted)}td.heat .cm{margin-left:4px;font-weight:700}
td.heat.ok .cm{color:var(--ok)}td.heat.nok{outline:2px solid var(--accent);outline-offset:-2px}
td.heat.nok .cm{color:var(--accent)}td.heat.na{color:var(--muted)}
.two{max-width:760px}
footer{margin-top:24px;color:var(--muted);font-size:11px}
@media print{
 body{max-width:none;padding:0;font-size:10px}a.csv{display:none}
 table{font-size:8.5px}th,td{padding:1px 3px}td.heat{min-width:0}td.heat .clip{font-size:7.5px}
 table.prov{font-size:9px}
 .top{grid-template-columns:1fr 1fr}
 .tablewrap,.tablewrap.scroll{overflow:visible;max-height:none}
 figure,table,tr{break-inside:avoid}h2{break-after:avoid}
 .figs{display:flex;flex-wrap:nowrap;gap:8px}figure{flex:1 1 0;max-width:none;margin-bottom:6px}
 td.heat{-webkit-print-color-adjust:exact;print-color-adjust:exact}
 @page{size:A4 landscape;margin:10mm}
}
"""


def render_html(docs: list, provenance: dict, title: str | None = None) -> str:
    """The report page of ``docs`` (run / sweep / compare JSON objects) as one HTML string."""
    runs, compares = split_documents(docs)
    everything = [r.d for r in runs] + [c for _, c in compares]
    models = sorted({d["model"] for d in everything})
    datas = sorted({d["data"] for d in everything})
    title = title or f"hwsim report: {', '.join(models)} on {', '.join(datas)}"
    fronts = _fronts(runs) if runs else None
    parts = [f'<h1>{esc(title)}</h1><div class="top">{_summary(runs, compares, fronts)}'
             f"{_prov_section(runs, compares, provenance)}</div>"]
    if runs:
        parts.append('<section id="accuracy"><h2>Accuracy against hardware cost</h2>' + _plots(runs, fronts)
                     + render_table(_accuracy_table(runs, fronts)) + "</section>")
        parts.append('<section id="overflow"><h2>Overflow and clipping, layer by profile</h2>' + _heatmap(runs)
                     + "</section>")
        ct = _cost_table(runs)
        if ct is not None:
            parts.append('<section id="cost"><h2>Hardware cost per layer</h2>' + render_table(ct) + "</section>")
    for n, (src, c) in enumerate(compares):
        parts.append(_compare_section(src, c, n))
    parts.append("<footer>Every number on this page is read from the results JSON (see data-src/data-key on "
                 "each value); CSV links hold the exact values.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def html_text(results_json_obj, provenance: dict | None = None, title: str | None = None) -> str:
    """The report page of one results document (run dict, sweep list, compare dict) or of a list of
    such documents (``{"documents": [...]}``), as text.

    ``provenance``: shown as given (e.g. ``{"command": ...}``); the hwsim version, date and command
    line are filled in where missing."""
    from hwsim.report import to_json_text

    # render exactly what a --out JSON file holds (numpy scalars -> plain numbers, as written)
    results_json_obj = json.loads(to_json_text(results_json_obj))
    docs = results_json_obj["documents"] if isinstance(results_json_obj, dict) and "documents" in results_json_obj \
        else [results_json_obj]
    prov = default_provenance(command=(provenance or {}).get("command"))
    prov.update(provenance or {})
    return render_html(docs, prov, title)


def write_html_report(results_json_obj, path, provenance: dict | None = None, title: str | None = None) -> None:
    """:func:`html_text` written to ``path`` atomically (with the user's umask)."""
    from hwsim.safeio import atomic_write

    atomic_write(path, html_text(results_json_obj, provenance, title))
