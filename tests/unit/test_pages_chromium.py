"""Both HTML pages open in headless Chromium (Debian's `chromium`) with no network, no console
error and every chart drawn; a full-page screenshot of each is kept in .artifacts/pages/.

Driven over the DevTools protocol (aiohttp's websocket client, already a dependency): a
browser-downloading client such as playwright cannot be installed here. Skipped only when
chromium is missing outside CI; with CI set, a missing chromium fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.tools.pages import report_page, simulate_page
from router.tools.report import build_report
from tests.unit.tools_fixtures import simulate_strict, week

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts" / "pages"
REPORT_CHARTS = {"funnel", "reasons", "speed", "sla", "trend"}
SIMULATE_CHARTS = {"stages", "pools", "capacity", "evidence", "funnel"}


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium); CI must render"
                        " the HTML reports")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


@contextlib.asynccontextmanager
async def browser(tmp: Path) -> AsyncIterator[str]:
    """A headless Chromium; yields the websocket URL of its first page."""
    proc = subprocess.Popen(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={tmp / 'profile'}",
         "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port = None
        loop = asyncio.get_running_loop()
        for _ in range(200):
            line = await loop.run_in_executor(None, proc.stderr.readline)
            match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if match:
                port = int(match.group(1))
                break
            if not line and proc.poll() is not None:
                break
        assert port is not None, "chromium did not start its DevTools endpoint"
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = [p for p in await resp.json() if p.get("type") == "page"]
                if pages:
                    break
                await asyncio.sleep(0.1)
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        await self.ws.send_str(orjson.dumps({"id": ident, "method": method,
                                             "params": params}).decode())
        while True:
            msg = orjson.loads((await asyncio.wait_for(self.ws.receive(), 60)).data)
            if msg.get("id") == ident:
                assert "error" not in msg, msg
                result: dict[str, Any] = msg.get("result", {})
                return result
            self.events.append(msg)

    async def until(self, method: str, timeout: float = 60) -> None:
        if any(e.get("method") == method for e in self.events):
            return
        while True:
            msg = orjson.loads((await asyncio.wait_for(self.ws.receive(), timeout)).data)
            self.events.append(msg)
            if msg.get("method") == method:
                return

    def problems(self) -> list[str]:
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}"
                           f" {p['exceptionDetails'].get('exception', {}).get('description')}")
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(
                    str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif method == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not url.startswith(("file:", "data:", "about:", "blob:")):
                    out.append(f"network request: {url}")
        return out


CHARTS_JS = """JSON.stringify([...document.querySelectorAll('[data-chart]')].map(d => {
  const plot = d.querySelector('.js-plotly-plot');
  return {name: d.dataset.chart, traces: plot && plot.data ? plot.data.length : 0,
          svgs: d.querySelectorAll('svg.main-svg').length,
          marks: d.querySelectorAll('.trace, .funnel, .bars, .box, .scatterlayer path').length,
          width: Math.round(plot && plot.querySelector('svg.main-svg') ?
                            plot.querySelector('svg.main-svg').getBoundingClientRect().width : 0),
          room: d.clientWidth};
}))"""


async def render(html: str, name: str, tmp: Path) -> tuple[list[dict[str, Any]], list[str]]:
    page_file = tmp / f"{name}.html"
    page_file.write_text(html, encoding="utf-8")
    async with browser(tmp) as url, aiohttp.ClientSession() as http, \
            http.ws_connect(url, max_msg_size=64 << 20) as ws:
        page = Page(ws)
        for domain in ("Runtime", "Log", "Network", "Page"):
            await page.call(f"{domain}.enable")
        await page.call("Page.navigate", url=page_file.as_uri())
        await page.until("Page.loadEventFired")
        charts: list[dict[str, Any]] = []
        for _ in range(50):  # plotly draws after load; wait until every chart has its SVG
            value = await page.call("Runtime.evaluate", expression=CHARTS_JS)
            charts = orjson.loads(value["result"]["value"])
            if charts and all(c["svgs"] > 0 for c in charts):
                break
            await asyncio.sleep(0.1)
        shot = await page.call("Page.captureScreenshot", format="png",
                               captureBeyondViewport=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        target = ARTIFACTS / f"{name}.png"
        target.write_bytes(base64.b64decode(shot["data"]))
        (ARTIFACTS / f"{name}.html").write_text(html, encoding="utf-8")
        print(f"screenshot: {target}")
        return charts, page.problems()


@pytest.mark.parametrize("name", ["report", "simulate"])
async def test_the_page_renders_offline_with_every_chart_and_no_console_error(
        name: str, tmp_path: Path) -> None:
    if name == "report":
        html, expected = report_page(build_report(week(), _everything())), REPORT_CHARTS
    else:
        html, expected = simulate_page(simulate_strict(week())), SIMULATE_CHARTS
    assert "<script src=" not in html  # plotly.js inlined, never fetched
    charts, problems = await render(html, name, tmp_path)
    assert problems == []
    assert {c["name"] for c in charts} == expected
    for chart in charts:
        assert chart["svgs"] > 0 and chart["traces"] > 0, chart
        # each chart fits its card: the first one of a grid used to be drawn full width and
        # spill over its neighbour (the demo's funnel and MQL/SQL bars were cut off)
        assert 0 < chart["width"] <= chart["room"], chart
    assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000


def _everything() -> Any:
    from router.tools.history import TimeRange

    return TimeRange(None, None)


def test_a_page_with_a_broken_script_is_caught(tmp_path: Path) -> None:
    """The check can fail: a page that throws and fetches from the network is reported."""
    html = ("<html><body><div data-chart='x'></div><script>fetch('http://192.0.2.1/x');"
            "undefinedFunction();</script></body></html>")
    charts, problems = asyncio.run(render(html, "broken", tmp_path))
    assert any("undefinedFunction" in p for p in problems)
    assert any("network request: http://192.0.2.1/x" in p for p in problems)
    assert charts == [{"name": "x", "traces": 0, "svgs": 0, "marks": 0, "width": 0,
                       "room": charts[0]["room"]}]
