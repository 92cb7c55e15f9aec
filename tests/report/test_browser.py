"""The report in a real headless Chromium: no console errors, no network requests, fits a laptop screen,
prints, and a screenshot of the first screen. Skips (with the reason) where no Chromium is installed."""

import os
import shutil

import pytest

from hwsim.html_report import render_html
from tests.report.browser import check_page, find_chromium

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium found (Debian: apt-get install -y chromium; or set HWSIM_CHROMIUM=/path)")
PROV = {"command": "hwsim report sweep.json compare.json -o report.html", "date": "2026-12-05 17:00:00 UTC"}


def test_report_loads_clean_in_chromium(tmp_path, sweep_json, compare_json):
    page = tmp_path / "report.html"
    page.write_text(render_html([sweep_json, compare_json], PROV), encoding="utf-8")
    r = check_page(page, CHROMIUM)
    assert r.requests == [page.resolve().as_uri()], r.requests  # the page itself, nothing else
    assert r.errors() == [], r.errors()
    assert r.title.startswith("hwsim report: tiny_cnn on synthetic")
    assert r.scroll_width <= r.viewport_width, "the page scrolls sideways on a 1366 px laptop screen"
    assert r.pdf_bytes > 10_000  # it prints
    assert r.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(r.screenshot) > 20_000
    (tmp_path / "first_screen.png").write_bytes(r.screenshot)
    if os.environ.get("HWSIM_REPORT_SCREENSHOT"):  # keep it for a human to look at
        shutil.copy(tmp_path / "first_screen.png", os.environ["HWSIM_REPORT_SCREENSHOT"])


def test_the_browser_check_sees_requests_and_errors(tmp_path, plain_sweep_json):
    """The check is not blind: an external image is blocked by the page's CSP (a console error) and the
    attempt is recorded; without the CSP the request is recorded too."""
    page = render_html([plain_sweep_json], PROV)
    bad = tmp_path / "bad.html"
    bad.write_text(page.replace("</h1>", '</h1><img src="http://127.0.0.1:9/x.png">', 1), encoding="utf-8")
    r = check_page(bad, CHROMIUM)
    assert any("Content Security Policy" in e or "127.0.0.1" in e for e in r.errors()), r.console
    assert any("127.0.0.1:9" in u for u in r.requests), r.requests
    nocsp = tmp_path / "nocsp.html"
    nocsp.write_text(bad.read_text().replace("Content-Security-Policy", "X-None", 1), encoding="utf-8")
    r = check_page(nocsp, CHROMIUM)
    assert any("127.0.0.1:9" in u for u in r.requests), r.requests
