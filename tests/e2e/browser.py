"""A headless Chromium driven over the DevTools protocol (websockets only), for the report tests.

``open_page`` loads a local file and returns what a user's browser would have seen: console
messages and uncaught errors, every request the page made, values the page computes, and a
full-page screenshot when asked. ``find_chromium`` says why no browser can run, so a test can
skip with that reason.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> tuple[str | None, str]:
    """The browser's path, or None and the reason it cannot be used."""
    given = os.environ.get("QUANTNET_CHROMIUM")
    for name in (given,) if given else CANDIDATES:
        path = shutil.which(name) if name else None
        if path:
            return path, ""
    return None, "no Chromium found (apt-get install chromium, or set QUANTNET_CHROMIUM)"


@dataclass
class PageResult:
    console: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    errors: list[str] = field(default_factory=list)  # uncaught exceptions and error log entries
    requests: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    screenshot: Path | None = None


class _Session:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.events: list[dict[str, Any]] = []
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            else:
                self.events.append(msg)
                if msg.get("method") == "Page.loadEventFired":
                    self.loaded.set()

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(fut, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})


def _remote(result: dict[str, Any]) -> Any:
    if "exceptionDetails" in result:
        raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
    return result["result"].get("value")


async def _drive(
    browser: str, page: Path, expressions: dict[str, str], screenshot: Path | None, width: int, settle: float
) -> PageResult:
    profile = tempfile.mkdtemp(prefix="qn-chromium-")
    proc = subprocess.Popen(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        assert proc.stderr is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while url is None and loop.time() < deadline:
            line = await asyncio.wait_for(loop.run_in_executor(None, proc.stderr.readline), 60)
            if not line and proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}")
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            url = found.group(1) if found else None
        if url is None:
            raise RuntimeError("chromium did not open its DevTools port")
        async with websockets.connect(url, max_size=None) as ws:
            cdp = _Session(ws)
            target = await cdp.call("Target.createTarget", url="about:blank")
            attached = await cdp.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
            sid = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                await cdp.call(f"{domain}.enable", sid)
            await cdp.call(
                "Emulation.setDeviceMetricsOverride",
                sid,
                width=width,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            page_url = page.resolve().as_uri()
            cdp.loaded.clear()
            await cdp.call("Page.navigate", sid, url=page_url)
            await asyncio.wait_for(cdp.loaded.wait(), 120)
            await asyncio.sleep(settle)
            result = PageResult()
            for name, expr in expressions.items():
                got = await cdp.call(
                    "Runtime.evaluate", sid, expression=expr, returnByValue=True, awaitPromise=True
                )
                result.values[name] = _remote(got)
            if screenshot is not None:
                height = _remote(
                    await cdp.call(
                        "Runtime.evaluate",
                        sid,
                        expression="document.documentElement.scrollHeight",
                        returnByValue=True,
                    )
                )
                await cdp.call(
                    "Emulation.setDeviceMetricsOverride",
                    sid,
                    width=width,
                    height=int(height),
                    deviceScaleFactor=1,
                    mobile=False,
                )
                await asyncio.sleep(1.0)
                shot = await cdp.call("Page.captureScreenshot", sid, format="png", captureBeyondViewport=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                result.screenshot = screenshot
            for ev in cdp.events:
                method, params = ev.get("method"), ev.get("params", {})
                if method == "Runtime.consoleAPICalled":
                    text = " ".join(
                        str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                    )
                    result.console.append((params.get("type", ""), text))
                    if params.get("type") in ("error", "assert"):
                        result.errors.append(text)
                elif method == "Runtime.exceptionThrown":
                    details = params.get("exceptionDetails", {})
                    result.errors.append(
                        str(details.get("exception", {}).get("description") or details.get("text"))
                    )
                elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                    result.errors.append(params["entry"].get("text", ""))
                elif method == "Network.requestWillBeSent":
                    result.requests.append(params["request"]["url"])
            cdp.reader.cancel()
            return result
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(
    page: Path,
    expressions: dict[str, str] | None = None,
    *,
    screenshot: Path | None = None,
    width: int = 1280,
    settle: float = 1.5,
    browser: str | None = None,
) -> PageResult:
    """Load ``page`` in headless Chromium, wait ``settle`` seconds after the load event, evaluate
    ``expressions`` (name → JavaScript) and optionally save a full-page PNG."""
    path = browser or find_chromium()[0]
    if path is None:
        raise RuntimeError(find_chromium()[1])
    return asyncio.run(_drive(path, page, expressions or {}, screenshot, width, settle))


if __name__ == "__main__":  # python tests/e2e/browser.py report.html shot.png [width]
    import sys

    res = open_page(
        Path(sys.argv[1]),
        {"charts": "document.querySelectorAll('.js-plotly-plot').length"},
        screenshot=Path(sys.argv[2]),
        width=int(sys.argv[3]) if len(sys.argv) > 3 else 1280,
    )
    print(json.dumps({"values": res.values, "errors": res.errors, "requests": res.requests[:5]}, indent=1))
