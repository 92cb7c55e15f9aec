"""Load an HTML file in headless Chromium over the DevTools protocol (stdlib only, --remote-debugging-pipe).

Records every network request, console message, log entry and uncaught exception while the page
loads, measures the page at a laptop viewport, takes a screenshot of the first screen and prints
the page to PDF (a printable check). Usable from tests and by hand:

    python -m tests.report.browser report.html shot.png
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-default-apps",
         "--remote-debugging-pipe"]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """$HWSIM_CHROMIUM, else the first of chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("HWSIM_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CANDIDATES:
        p = shutil.which(name)
        if p:
            return p
    return None


@dataclass
class PageCheck:
    requests: list[str] = field(default_factory=list)  # URLs the page asked for (the page's own file included)
    console: list[tuple[str, str]] = field(default_factory=list)  # (level, text): console API, log entries
    exceptions: list[str] = field(default_factory=list)
    title: str = ""
    scroll_width: int = 0
    viewport_width: int = 0
    pdf_bytes: int = 0
    screenshot: bytes = b""

    def errors(self) -> list[str]:
        return [f"{lvl}: {t}" for lvl, t in self.console if lvl in ("error", "warning", "assert")] + self.exceptions


class _Pipe:
    """DevTools protocol over Chromium's fd 3 (we write) / fd 4 (it writes); messages end with NUL."""

    def __init__(self, proc, w, r):
        self.proc, self.w, self.r = proc, w, r
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for m in self.events:
            if m.get("method") == method:
                return m
        while True:
            m = self._read_message(deadline)
            self.events.append(m)
            if m.get("method") == method:
                return m


def check_page(html_path: str | os.PathLike, chromium: str, width: int = 1366, height: int = 768,
               settle_s: float = 0.5, media: str = "screen") -> PageCheck:
    """Open ``html_path`` (file://) in headless Chromium and record what happened.

    ``media = "print"`` renders the screenshot with the print stylesheet."""
    url = Path(html_path).resolve().as_uri()
    res = PageCheck(viewport_width=width)
    with tempfile.TemporaryDirectory() as profile:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def fds():  # chromium reads commands on fd 3 and writes replies on fd 4 (via high fds: no clobbering)
            a, b = os.dup2(to_chrome_r, 100), os.dup2(from_chrome_w, 101)
            os.dup2(a, 3)
            os.dup2(b, 4)

        proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                preexec_fn=fds, pass_fds=(3, 4),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        pipe = _Pipe(proc, to_chrome_w, from_chrome_r)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            sid = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for dom in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{dom}.enable", session=sid)
            pipe.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=sid)
            if media != "screen":
                pipe.call("Emulation.setEmulatedMedia", {"media": media}, session=sid)
            pipe.events.clear()
            pipe.call("Page.navigate", {"url": url}, session=sid)
            pipe.wait_event("Page.loadEventFired")
            time.sleep(settle_s)
            ev = pipe.call("Runtime.evaluate", {"returnByValue": True, "expression":
                           "JSON.stringify([document.title, document.documentElement.scrollWidth])"}, session=sid)
            res.title, res.scroll_width = json.loads(ev["result"]["value"])
            shot = pipe.call("Page.captureScreenshot", {"format": "png"}, session=sid)
            res.screenshot = base64.b64decode(shot["data"])
            pdf = pipe.call("Page.printToPDF", {"printBackground": True}, session=sid, timeout=60)
            res.pdf_bytes = len(base64.b64decode(pdf["data"]))
            for m in pipe.events:
                p = m.get("params", {})
                meth = m.get("method")
                if meth == "Network.requestWillBeSent":
                    res.requests.append(p["request"]["url"])
                elif meth == "Runtime.consoleAPICalled":
                    res.console.append((p["type"], " ".join(str(a.get("value", a.get("description", "")))
                                                            for a in p.get("args", []))))
                elif meth == "Log.entryAdded":
                    res.console.append((p["entry"]["level"], p["entry"]["text"]))
                elif meth == "Runtime.exceptionThrown":
                    res.exceptions.append(p["exceptionDetails"].get("text", "exception"))
            try:
                pipe.call("Browser.close", timeout=5)
            except (RuntimeError, TimeoutError):
                pass
        finally:
            os.close(to_chrome_w)
            os.close(from_chrome_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return res


def main(argv: list[str]) -> int:
    chromium = find_chromium()
    if chromium is None:
        print("no chromium found (set HWSIM_CHROMIUM)", file=sys.stderr)
        return 2
    r = check_page(argv[0], chromium)
    if len(argv) > 1:
        Path(argv[1]).write_bytes(r.screenshot)
    print(json.dumps({"title": r.title, "requests": r.requests, "errors": r.errors(), "console": r.console,
                      "scroll_width": r.scroll_width, "viewport_width": r.viewport_width, "pdf_bytes": r.pdf_bytes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
