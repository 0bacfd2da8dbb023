"""replay's shared list of videos left: taken in order; a video whose server was lost comes back
to a worker waiting for one; an idle worker ends only when no video can come back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from polypstream.replay import _Videos


def test_videos_are_taken_in_order_and_none_is_left_once_all_are_done() -> None:
    videos, stop = _Videos([Path("a"), Path("b")]), threading.Event()
    assert (videos.take(stop), videos.take(stop)) == (Path("a"), Path("b"))
    videos.done(Path("a"), again=False)
    videos.done(Path("b"), again=False)
    assert videos.take(stop) is None


def test_a_video_put_back_goes_to_a_worker_waiting_for_one() -> None:
    videos, stop = _Videos([Path("a")]), threading.Event()
    assert videos.take(stop) == Path("a")
    got: list[Path | None] = []
    waiting = threading.Thread(target=lambda: got.append(videos.take(stop)))
    waiting.start()
    time.sleep(0.3)
    assert got == []  # none left, but "a" is being replayed and may come back: it waits
    videos.done(Path("a"), again=True)  # its server was lost
    waiting.join(5)
    assert got == [Path("a")]
    videos.done(Path("a"), again=False)
    assert videos.take(stop) is None


def test_stop_ends_a_wait_for_a_video() -> None:
    videos, stop = _Videos([Path("a")]), threading.Event()
    assert videos.take(stop) == Path("a")
    stop.set()  # Ctrl-C
    assert videos.take(stop) is None
