"""hwsim.html_report: every number on the page is the JSON's number; self-contained; CSV links exact."""

import base64
import csv
import html
import io
import math
import re
import urllib.parse
from html.parser import HTMLParser

import pytest

from hwsim.errors import HwsimError
from hwsim.html_report import render_html, split_documents, write_html_report

PROV = {"command": "hwsim sweep --all --compare", "date": "2026-12-05 17:00:00 UTC", "hwsim_version": "0.1.0",
        "note": "seed 7, run 3"}
VOID = {"meta", "br", "img", "link", "input", "hr"}


# ----------------------------------------------------------------------------- a small DOM
class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, dict(attrs), parent, [], []

    def all_text(self) -> str:
        return "".join(self.text if not self.children else self._walk())

    def _walk(self):
        out = []
        for c in self.children:
            out.append(c if isinstance(c, str) else c.all_text())
        return out

    def ancestors(self):
        n = self
        while n is not None:
            yield n
            n = n.parent


class Dom(HTMLParser):
    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.root = Node("root", {}, None)
        self.cur = self.root
        self.nodes = []
        self.texts = []  # (text, node)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        self.nodes.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        self.nodes.append(n)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.cur.tag == tag, f"unbalanced </{tag}> inside <{self.cur.tag}>"
        self.cur = self.cur.parent

    def handle_data(self, data):
        self.cur.children.append(data)
        self.cur.text.append(data)
        self.texts.append((data, self.cur))


# ----------------------------------------------------------------------------- independent expectations
def resolve(doc, ptr: str):
    for part in ptr.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def label(d):
    s = d.get("settings") or {}
    lab = d["profile"] + (" [" + ";".join(f"{k}={v}" for k, v in s.items()) + "]" if s else "")
    return lab + (f" recipe {d['recipe']}" if d.get("recipe") not in (None, "", "profile") and "ptq" not in s else "")


def acc_bits(d):
    if d.get("cost"):
        return d["cost"]["totals"]["acc_bits"]
    w = [x["min_acc_bits"] + x["headroom_bits"] for x in d["layers"] if x.get("headroom_bits") is not None]
    return max(w) if w else None


def front(points, i):
    x, y = points[i]
    return not any(qx <= x and qy >= y and (qx < x or qy > y) for j, (qx, qy) in enumerate(points) if j != i)


def derived(name, run, all_runs):
    if name == "label":
        return label(run)
    if name == "max_clip_rate":
        return round(max([x["clip_rate"] for x in run["layers"]] or [0.0]), 6)
    if name == "min_headroom_bits":
        h = [v for x in run["layers"] for v in (x["headroom_bits"], x.get("partial_headroom_bits")) if v is not None]
        return min(h) if h else None
    if name == "uncertified_layers":
        return sum(1 for x in run["layers"] if x["certified"] is False)
    if name == "acc_bits":
        return acc_bits(run)
    if name == "pareto_bops":
        pts = [(r["cost"]["totals"]["bops"], r["sim_accuracy"]) for r in all_runs]
        return front(pts, all_runs.index(run))
    if name == "pareto_acc_bits":
        ok = [r for r in all_runs if not r["weight_only"] and acc_bits(r) is not None]
        if run not in ok:
            return None
        return front([(acc_bits(r), r["sim_accuracy"]) for r in ok], ok.index(run))
    raise AssertionError(f"unknown derivation {name}")


def same(raw: str, v) -> bool:
    """data-value (text) is exactly the JSON value."""
    if v is None:
        return raw == ""
    if isinstance(v, bool):
        return raw == ("true" if v else "false")
    if isinstance(v, int):
        return raw == str(v)
    if isinstance(v, float):
        return float(raw) == v or (math.isnan(v) and math.isnan(float(raw)))
    return raw == str(v)


def shown_ok(text: str, v, fmt: str) -> bool:
    """The displayed text is the value at the displayed precision (parsed back, not re-formatted)."""
    text = text.strip()
    if v is None:
        return text == "–"
    if fmt == "str":
        return text == str(v)
    if fmt in ("yesno", "cert"):
        return text == ({True: "yes", False: "NO"}[v] if fmt == "yesno" else {True: "✓", False: "✗"}[v])
    if fmt in ("int", "bits"):
        return int(text.replace(",", "")) == v
    if isinstance(v, float) and math.isinf(v):
        return text == ("inf" if v > 0 else "-inf")
    if fmt in ("pct", "pct3"):
        assert text.endswith("%")
        return abs(float(text[:-1]) - 100 * v) <= (0.005 if fmt == "pct" else 0.0005) + 1e-9
    if fmt == "db":
        return abs(float(text) - v) <= 0.05 + 1e-9
    if fmt == "lsb":
        return abs(float(text) - v) <= 0.00005 + 1e-12
    if fmt == "rate":
        return abs(float(text.replace(",", "")) - v) <= 0.5
    raise AssertionError(f"unknown format {fmt}")


def check_page(page: str, docs: list, prov: dict) -> dict:
    """Check every sourced value, every plotted mark, every text with a digit and every CSV link; return counts."""
    dom = Dom(page)
    runs, _ = split_documents(docs)
    all_runs = [r.d for r in runs]
    counts = {"values": 0, "derived": 0, "marks": 0, "csv_cells": 0}

    def source(src, key, der):
        if src == "prov":
            return resolve(prov, key)
        if src == "meta":
            integer = [r for r in all_runs if not r["weight_only"]]
            return {"/integer_runs": len(integer), "/certified_runs": sum(
                all(x["certified"] is not False for x in r["layers"]) for r in integer)}[key]
        target = resolve(docs[int(src)], key)
        if der:
            counts["derived"] += 1
            return derived(der, target, all_runs)
        return target

    for n in dom.nodes:
        a = n.attrs
        if "data-src" in a:
            v = source(a["data-src"], a["data-key"], a.get("data-derived"))
            assert same(a["data-value"], v), (a, v)
            assert shown_ok(n.all_text(), v, a["data-fmt"]), (n.all_text(), v, a)
            counts["values"] += 1
        for axis in ("x", "y"):
            if f"data-key-{axis}" in a:
                v = source(a[f"data-src-{axis}"], a[f"data-key-{axis}"], a.get(f"data-derived-{axis}"))
                assert same(a[f"data-{axis}"], v), (a, v)
                counts["marks"] += 1
    # every text containing a digit is a sourced value or an axis tick
    for text, node in dom.texts:
        if not re.search(r"\d", text) or any(x.tag in ("style", "head") for x in node.ancestors()):
            continue
        ok = any("data-src" in x.attrs or "tick" in x.attrs.get("class", "").split() for x in node.ancestors())
        assert ok, f"unsourced number in {node.tag}: {text!r}"
    # CSV links: each table's CSV equals the data-value of its cells, cell for cell
    tables = {n.attrs["data-table"]: n for n in dom.nodes if "data-table" in n.attrs}
    for n in dom.nodes:
        if n.tag == "a" and "csv" in n.attrs.get("class", ""):
            href = n.attrs["href"]
            assert href.startswith("data:text/csv;charset=utf-8;base64,")
            rows = list(csv.reader(io.StringIO(base64.b64decode(href.split(",", 1)[1]).decode())))
            name = n.attrs["download"]
            t = tables[name]
            if "heatmap" in t.attrs.get("class", ""):
                check_heatmap_csv(rows, all_runs)
                counts["csv_cells"] += sum(len(r) for r in rows[1:])
                continue
            body = [c for c in t.children if isinstance(c, Node) and c.tag == "tbody"][0]
            trs = [c for c in body.children if isinstance(c, Node) and c.tag == "tr"]
            assert len(rows) == len(trs) + 1
            heads = [c for c in t.children if isinstance(c, Node) and c.tag == "thead"]
            if heads:  # the header row names every column, in the CSV as on the page
                ths = [c for c in heads[0].children[0].children if isinstance(c, Node)]
                assert [th.all_text() for th in ths] == rows[0]
            for tr, row in zip(trs, rows[1:]):
                tds = [c for c in tr.children if isinstance(c, Node)]
                assert len(tds) == len(row)
                for td, cell in zip(tds, row):
                    assert cell == td.attrs.get("data-value", td.all_text()), (name, cell, td.attrs)
                    counts["csv_cells"] += 1
    return counts


def check_heatmap_csv(rows, runs):
    assert rows[0][:3] == ["profile", "layer", "overflow_events"]
    expect = [[label(r), x["name"], str(x["overflow_events"]), repr(x["clip_rate"])] for r in runs for x in r["layers"]]
    assert [[r[0], r[1], r[2], r[5]] for r in rows[1:]] == expect


def no_external_references(page: str):
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "<script" not in page.lower()
    for m in re.finditer(r'(?<![\w-])(?:src|href)\s*=\s*"([^"]*)"', page):
        assert m.group(1).startswith(("data:", "#")), m.group(1)
    assert re.findall(r"https?://\S*?(?=[\s\"'<>])", page) == ["http://www.w3.org/2000/svg"] * page.count('xmlns="http')
    assert "url(" not in page and "@import" not in page


# ----------------------------------------------------------------------------- tests
def test_sweep_and_compare_numbers_equal_the_json(sweep_json, compare_json):
    docs = [sweep_json, compare_json]
    page = render_html(docs, PROV)
    c = check_page(page, docs, PROV)
    no_external_references(page)
    # everything the page is about is there: each run's accuracies and cost, each compare layer
    for i, d in enumerate(sweep_json):
        for f in ("sim_accuracy", "float_accuracy", "overflow_events"):
            assert f'data-src="0" data-key="/{i}/{f}"' in page
        assert f'data-key-x="/{i}/cost/totals/bops"' in page
        assert f'data-key="/{i}/cost/layers/0/bops"' in page
    for j in range(len(compare_json["layers"])):
        for f in ("sqnr_fq_vs_sim", "max_lsb", "frac_diff", "cause"):
            assert f'data-src="1" data-key="/layers/{j}/{f}"' in page
    assert c["values"] > 300 and c["derived"] > 30 and c["marks"] == 2 * len(sweep_json) + 2 * sum(not d["weight_only"] for d in sweep_json) and c["csv_cells"] > 300
    assert page.count('class="csv"') >= 6  # accuracy, heat map, cost, compare summary + layers, provenance-free


def test_overflowing_run_is_flagged(sweep_json):
    page = render_html([sweep_json], PROV)
    bad = [i for i, d in enumerate(sweep_json) if d["overflow_events"]]
    assert bad, "the sweep fixture must contain an overflowing run"
    assert page.count('class="heat nok"') == sum(1 for d in sweep_json for x in d["layers"] if x["certified"] is False)
    assert page.count('class="heat ok"') == sum(1 for d in sweep_json for x in d["layers"] if x["certified"] is True)
    assert 'class="pt front' in page


def test_todays_json_without_cost(plain_sweep_json):
    """Without cost fields: no BOPs plot (said so), accumulator width derived from the certificates."""
    page = render_html([plain_sweep_json], PROV)
    check_page(page, [plain_sweep_json], PROV)
    assert "No BOPs in these results" in page and 'data-derived-x="acc_bits"' in page
    assert "cost/totals" not in page


def test_single_run_and_recipe(plain_sweep_json):
    run = dict(plain_sweep_json[0], recipe="mse")
    page = render_html([run], PROV)
    c = check_page(page, [run], PROV)
    assert 'data-key="/recipe"' in page and "PTQ recipes" in page and c["values"] > 20


def test_lsb_histogram_when_present(compare_json):
    c = dict(compare_json, layers=[dict(x, lsb_histogram=[90, 7, 3]) for x in compare_json["layers"]])
    page = render_html([c], PROV)
    check_page(page, [c], PROV)
    assert 'data-key="/layers/0/lsb_histogram/2"' in page


def test_the_number_check_can_fail(sweep_json):
    """A page whose number disagrees with the JSON, or carries an unsourced number, is caught."""
    page = render_html([sweep_json], PROV)
    v = sweep_json[0]["sim_accuracy"]
    wrong = page.replace(f'data-key="/0/sim_accuracy" data-value="{v!r}"', f'data-key="/0/sim_accuracy" data-value="{v / 2!r}"', 1)
    assert wrong != page
    with pytest.raises(AssertionError):
        check_page(wrong, [sweep_json], PROV)
    with pytest.raises(AssertionError, match="unsourced"):
        check_page(page.replace("<h1>", "<h1>42 ", 1), [sweep_json], PROV)


def test_bad_documents():
    with pytest.raises(HwsimError, match="document 0: not a run, sweep or compare"):
        render_html([{"hello": 1}], PROV)
    with pytest.raises(HwsimError, match="entry 1 is not a run result"):
        render_html([[{"profile": "x", "sim_accuracy": 1, "agreement_with_float": 1, "layers": []}, {}]], PROV)


def test_write_html_report_fills_provenance(tmp_path, plain_sweep_json):
    out = tmp_path / "r.html"
    write_html_report(plain_sweep_json, out, {"command": "hwsim sweep -p int8-tflite"})
    page = out.read_text()
    assert 'data-key="/command" data-value="hwsim sweep -p int8-tflite"' in page
    assert 'data-key="/hwsim_version"' in page and 'data-key="/date"' in page
    assert not list(tmp_path.glob(".*tmp"))
    # a result object straight from to_json() may hold numpy scalars: the page shows what the JSON file holds
    import numpy as np

    run = dict(plain_sweep_json[0], sim_accuracy=np.float64(plain_sweep_json[0]["sim_accuracy"]),
               overflow_events=np.int64(plain_sweep_json[0]["overflow_events"]))
    write_html_report(run, out, {})
    page = out.read_text()
    assert f'data-key="/sim_accuracy" data-value="{plain_sweep_json[0]["sim_accuracy"]!r}"' in page
    check_page(page, [plain_sweep_json[0]], _prov_of(page))
    with pytest.raises(HwsimError, match="does not exist"):
        write_html_report(plain_sweep_json, tmp_path / "no" / "r.html", {})


def _prov_of(page: str) -> dict:
    """The provenance values a page shows (data-src="prov")."""
    return {m.group(1)[1:]: html.unescape(m.group(2)) for m in re.finditer(r'data-src="prov" data-key="([^"]+)" data-value="([^"]*)"', page)}


def test_data_urls_are_decodable_text(sweep_json):
    page = render_html([sweep_json], PROV)
    for m in re.finditer(r'href="(data:[^"]+)"', page):
        body = m.group(1).split(",", 1)[1]
        base64.b64decode(body, validate=True).decode("utf-8")
        assert urllib.parse.quote(body, safe="+/=") == body


def test_infinite_sqnr_and_identical_layers(compare_json):
    """inf (identical) and -inf SQNR are drawn at the axis edge and shown as the CLI prints them."""
    lay = [dict(x) for x in compare_json["layers"]]
    lay[0].update(sqnr_fq_vs_sim=float("inf"), max_lsb=0, mean_lsb=0.0, frac_diff=0.0, cause="")
    lay[-1].update(sqnr_sim_vs_float=float("-inf"))
    c = dict(compare_json, layers=lay)
    page = render_html([c], PROV)
    check_page(page, [c], PROV)
    assert '<text class="clip"' in page and 'data-value="inf" data-fmt="db">inf</text>' in page
    assert 'data-value="-inf" data-fmt="db">-inf</text>' in page
