"""A real browser for tests: headless Chromium driven over the DevTools protocol (CDP).

Only what the live view's tests need: open a page, evaluate JavaScript, take a screenshot.
`chromium_path()` finds Debian's `chromium` (or $POLYPSTREAM_CHROMIUM); .ci/run installs it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

# What Chromium answers when a page is replaced while a command runs in it (a form posted, a link
# followed): the command is lost with the old document, and the next one runs in the new one.
NAVIGATING = ("Inspected target navigated or closed", "Cannot find context with specified id",
              "Execution context was destroyed")  # fmt: skip


class NavigatedError(RuntimeError):
    """The page was replaced while a command ran in it."""


def chromium_path() -> str | None:
    given = os.environ.get("POLYPSTREAM_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, executable: str, profile: Path, *, width: int = 1280, height: int = 900) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"
        self.page: ClientConnection | None = None
        self._exit = contextlib.ExitStack()
        self.process = subprocess.Popen(
            [
                executable,
                "--headless=new",
                "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._exit.enter_context(self.log.open("w")),
        )
        self._ids = itertools.count(1)
        self.page = self._connect_page(profile)

    def _connect_page(self, profile: Path, timeout_s: float = 60.0) -> ClientConnection:
        """The DevTools connection of Chromium's first page (its port is in DevToolsActivePort)."""
        deadline = time.monotonic() + timeout_s
        port_file = profile / "DevToolsActivePort"
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.process.returncode}); see {self.log}")
            lines = port_file.read_text().split() if port_file.exists() else []
            if lines:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{lines[0]}/json/list", timeout=10) as answer:
                        pages = [t for t in json.load(answer) if t["type"] == "page"]
                except OSError:
                    pages = []
                if pages:
                    # entered as a context manager (websockets >= 17.1 warns otherwise), left in close()
                    return self._exit.enter_context(
                        connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
                    )
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium's DevTools endpoint did not come up within {timeout_s:g} s")
            time.sleep(0.1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command's result (events that arrive meanwhile are skipped)."""
        ident = next(self._ids)
        assert self.page is not None
        self.page.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.page.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    error = str(message["error"].get("message", message["error"]))
                    raise (NavigatedError if error.startswith(NAVIGATING) else RuntimeError)(f"{method}: {error}")
                return message["result"]  # type: ignore[no-any-return]

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = str(details.get("exception", {}).get("description", details.get("text", "")))
            raise (NavigatedError if text.startswith(NAVIGATING) else RuntimeError)(f"{expression}: {details}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0, what: str = "") -> Any:
        """Evaluate `expression` until it is truthy (in whichever document the page holds by then:
        one replaced while the expression ran counts as not yet); its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = self.evaluate(expression)
            except NavigatedError:
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"{what or expression} not seen within {timeout_s:g} s"
            time.sleep(0.1)

    def screenshot(self, selector: str | None = None) -> bytes:
        """PNG of the page, or of the first element matching `selector`."""
        params: dict[str, Any] = {"format": "png"}
        if selector is not None:
            box = self.evaluate(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
            )
            params["clip"] = {**box, "scale": 1}
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])

    def close(self) -> None:
        self._exit.close()
        self.page = None
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
