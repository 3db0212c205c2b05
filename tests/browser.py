"""Headless Chromium driven over its DevTools protocol: open a page at a window size, evaluate JavaScript, screenshot.

Used by the browser tests, and by hand to look at a report as a reader would:

    python tests/browser.py reports/all/report.html /tmp/report.png [WIDTHxHEIGHT] [--full]

Chromium (Debian's `chromium`) is started with a fresh profile and `--remote-debugging-port=0`; the port it picked
is read from `DevToolsActivePort` in that profile, so parallel runs never collide.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
START_TIMEOUT_S = 60.0


def chromium_path() -> str | None:
    """The Chromium executable on PATH (`chromium`, else `chromium-browser`), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One browser tab over a DevTools websocket: send a command, wait for its answer or for an event."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one DevTools command and return its result; events that arrive meanwhile are kept."""
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """Block until `event` arrives (or has arrived since the last command)."""
        for i, message in enumerate(self.events):
            if message.get("method") == event:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("method") == event:
                return message
            self.events.append(message)

    def open(self, url: str, width: int, height: int) -> None:
        """Load `url` in a window of width x height CSS pixels and wait for its load event."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """A PNG of the viewport (or of the whole page's height)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(
                captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
            )
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))
        return path


def _debugging_port(profile: Path, process: subprocess.Popen, log: Path) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (marker.is_file() and marker.read_text().strip()):
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"chromium did not open its debugging port in {START_TIMEOUT_S:.0f}s: {log.read_text()[-2000:]}"
            )
        time.sleep(0.1)
    return int(marker.read_text().split()[0])


@contextmanager
def chromium(executable: str | None = None) -> Iterator[Page]:
    """A headless Chromium with a fresh profile; yields its first tab, stops the browser (by PID) afterwards."""
    executable = executable or chromium_path()
    if executable is None:
        raise RuntimeError("chromium must be installed (apt-get install -y chromium), but it is not on PATH")
    with tempfile.TemporaryDirectory(prefix="lorasweep-chromium-") as tmp:
        profile, log = Path(tmp) / "profile", Path(tmp) / "chromium.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [executable, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            port = _debugging_port(profile, process, log)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                targets = json.loads(response.read())
            tab = next(t for t in targets if t.get("type") == "page")
            with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
                yield Page(ws)
        finally:
            # the browser's own helper processes share its session: stop them together
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python tests/browser.py PAGE.html OUT.png [WIDTHxHEIGHT] [--full]")
    page_path, out = Path(argv[0]).resolve(), Path(argv[1])
    sizes = [a for a in argv[2:] if "x" in a and not a.startswith("--")]
    width, height = (int(v) for v in (sizes[0] if sizes else "1280x800").split("x"))
    with chromium() as page:
        page.open(page_path.as_uri(), width, height)
        page.screenshot(out, full_page="--full" in argv)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    print(f"{out} written ({width}x{height}); horizontal overflow: {overflow}px")


if __name__ == "__main__":
    main(sys.argv[1:])
