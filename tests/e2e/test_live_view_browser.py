"""The live view in a real browser: headless Chromium opens the page of `serve --ui` playing the
bundled clip on the shipped default model.

Chromium is Debian's `chromium` (.ci/run installs it). Without it the test is skipped, unless
POLYPSTREAM_REQUIRE_BROWSER is set (as in CI), where a missing browser fails it. The page's
screenshot is kept in $POLYPSTREAM_ARTIFACTS (default: the test's temporary folder).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.common import scrape, start_serve
from tests.browser import Browser, chromium_path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "service" / "data" / "sample.mp4"
TOKEN = "token-for-the-browser-test"


@pytest.fixture
def chromium() -> str:
    path = chromium_path()
    if path is None:
        if os.environ.get("POLYPSTREAM_REQUIRE_BROWSER"):
            pytest.fail("POLYPSTREAM_REQUIRE_BROWSER is set but no chromium was found")
        pytest.skip("no chromium here (apt-get install chromium); CI runs this test")
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """`serve --source clip=<bundled clip> --ui` with a token; yields (process, page URL, metrics URL)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    proc, at = start_serve("--source", f"clip={SAMPLE}", "--ui", "127.0.0.1:0", "--token-file", str(token_file))
    yield proc, at["ui"], at["metrics"]
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=20)


def sign_in(browser: Browser, token: str) -> None:
    browser.wait_for("document.querySelector('form[action=\"/login\"]') !== null", what="the sign-in form")
    browser.evaluate(
        f"document.getElementById('token').value = {json.dumps(token)}; document.querySelector('form').submit()"
    )


def yellow_on_border(jpeg: bytes, box: tuple[int, int, int, int]) -> float:
    """The share of the box's outline (1 px inside its edges) drawn in the overlay's box colour."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int)
    x, y, w, h = box
    border = np.concatenate([image[y + 1, x : x + w], image[y + h - 2, x : x + w],
                             image[y : y + h, x + 1], image[y : y + h, x + w - 2]])  # fmt: skip
    blue, green, red = border[:, 0], border[:, 1], border[:, 2]
    return float(np.mean((red > 180) & (green > 180) & (blue < 110)))  # BOX_COLOUR (0, 255, 255) after JPEG


def test_the_page_shows_the_clip_live_with_boxes_track_ids_and_refuses_a_wrong_token(
    chromium: str, served: tuple[subprocess.Popen[str], str, str], tmp_path: Path
) -> None:
    proc, url, metrics_url = served
    artifacts = Path(os.environ.get("POLYPSTREAM_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    with Browser(chromium, tmp_path / "chromium") as browser:
        browser.open(url)
        # A wrong token: refused, and no stream or data reaches the page
        sign_in(browser, "not-the-token")
        browser.wait_for("document.querySelector('.error') !== null", what="the refusal")
        assert browser.evaluate("document.querySelector('.error').textContent") == "Wrong token."
        assert browser.evaluate("document.querySelectorAll('.stream').length") == 0
        assert browser.evaluate("fetch('/api/state').then(r => r.status)") == 401

        # The right token: the clip's tile, its frames arriving
        sign_in(browser, TOKEN)
        browser.wait_for("document.querySelector('.stream[data-index]') !== null", what="a first picture")
        first_index = browser.evaluate("document.querySelector('.stream').dataset.index")
        first = browser.screenshot(".stream img")
        browser.wait_for(f"document.querySelector('.stream').dataset.index !== {json.dumps(first_index)}",
                         what="a later picture")  # fmt: skip
        later = browser.screenshot(".stream img")
        for _ in range(50):  # the new picture is on the page; painted by the next frame or so
            if later != first:
                break
            time.sleep(0.1)
            later = browser.screenshot(".stream img")
        assert later != first  # the image changed

        # A frame with a polyp: its alert, track id and score listed, and its box drawn on the picture
        shown = browser.wait_for(
            "(() => { const li = document.querySelector('.stream .polyps li.alerting');"
            " return li && {text: li.textContent, box: li.dataset.box,"
            " src: document.querySelector('.stream img').src}; })()",
            what="an alerting polyp",
        )
        assert re.fullmatch(r"#\d+ [01]\.\d\d ALERT", shown["text"]), shown["text"]
        box = tuple(int(v) for v in shown["box"].split(","))
        jpeg = base64.b64decode(shown["src"].split(",", 1)[1])
        assert yellow_on_border(jpeg, box) > 0.5  # type: ignore[arg-type]
        browser.wait_for("document.querySelector('.stream .fps').textContent !== '–'", what="the frame rate")
        # the rule the clip's stream has: the model's 2 of 2 frames held 4 (at 25 fps) at the clip's 10 fps
        alerts = browser.evaluate("document.querySelector('.stream .alerts').textContent")
        assert alerts == "2 of 2 frames, held 2, at 10 fps"
        model_line = "(state) => { showState(state); return document.getElementById('model').textContent; }"
        state = json.loads(browser.evaluate("fetch('/api/state').then(r => r.text())"))
        assert state["gpu"] is None  # a CPU here: the model line alone
        assert state["model"]["alerts"] == "2 of 2 frames, held 4, at 25 fps"  # the shipped fast model's own rule
        on_cpu = (
            f"model {state['model']['name']} {state['model']['version']} on CPUExecutionProvider"
            " · alerts 2 of 2 frames, held 4, at 25 fps"
        )
        assert browser.evaluate(f"({model_line})({json.dumps(state)})") == on_cpu
        (artifacts / "live-view.png").write_bytes(browser.screenshot())  # the page as served, before the made-up GPU
        # on a GPU the line adds its newest reading (drawn here from a made-up one: no GPU in CI)
        gpu = {"name": "NVIDIA H100 80GB HBM3", "busy": 0.424, "memory_used_gib": 3.04, "memory_total_gib": 79.65}
        shown = browser.evaluate(f"({model_line})({json.dumps({**state, 'gpu': gpu})})")
        assert shown == f"{on_cpu} · NVIDIA H100 80GB HBM3: 42 % busy, 3.0 of 79.7 GiB"
        mig = {**gpu, "busy": None}  # a MIG slice reports no busy share of its own
        assert browser.evaluate(f"({model_line})({json.dumps({**state, 'gpu': mig})})").endswith(": 3.0 of 79.7 GiB")
        metrics = scrape(metrics_url)
        assert metrics["polypstream_view_viewers"] == 1  # this page
        assert metrics["polypstream_view_pictures_total"] >= 2  # the two seen above, at least

        # A picture that no newer frame has replaced is greyed and says for how long and why: the
        # rule, on made-up ages (ms), frame rates, states and connections...
        cases = [
            ((500, 25, "running", True), ""),
            ((1500, 25, "running", True), "no new frame for 1.5 s"),
            ((2900, 1, "running", True), ""),  # at 1 fps: three frame intervals before it is late
            ((3100, 1, "streaming", True), "no new frame for 3.1 s"),
            ((2000, None, "ended", True), "no new frame for 2.0 s: the source has ended"),
            ((1200, 10, "failed", True), "no new frame for 1.2 s: the source failed"),
            ((1200, 10, "reconnecting", True), "no new frame for 1.2 s: the source is reconnecting"),
            ((200, 25, "running", False), "server unreachable: this picture is 0.2 s old"),
        ]
        for args, words in cases:
            assert browser.evaluate(f"staleWords(...{json.dumps(args)})") == words, args
        # ... and on the page: the clip plays once; its last picture is marked when it has ended
        stale_words = (
            "(() => { const t = document.querySelector('.stream.stale .stale-words'); return t && t.textContent; })()"
        )
        ended = browser.wait_for(f"(w => w && w.endsWith('ended') && w)({stale_words})", what="the ended clip marked")
        assert re.fullmatch(r"no new frame for \d+\.\d s: the source has ended", ended), ended
        assert browser.evaluate("getComputedStyle(document.querySelector('.stream.stale img')).filter") != "none"

        # Stopping the server with the page open: it ends, promptly and cleanly
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        # the page says its picture is not live: the server is gone
        gone = browser.wait_for(f"(w => w && w.startsWith('server') && w)({stale_words})", what="the server gone")
        assert re.fullmatch(r"server unreachable: this picture is \d+\.\d s old", gone), gone
