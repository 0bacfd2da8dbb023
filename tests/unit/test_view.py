"""The live view's state (view.py): what is listed, the statistics, and latest-picture-wins."""

from __future__ import annotations

import threading
import time

from polypstream.frames import Polyp, Result, Status, Timing
from polypstream.view import BUSY_S, ViewHub


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeSource:
    def __init__(self, state: str = "idle") -> None:
        self.state = state
        self.starts = 0

    def start(self) -> None:
        self.starts += 1


def result(index: int, status: Status = Status.OK, server_ms: float = 10.0, polyps: tuple[Polyp, ...] = ()) -> Result:
    return Result("cam", index, status, polyps=polyps, width=640, height=480, timing=Timing(server_s=server_ms / 1e3))


def listed(hub: ViewHub) -> list[str]:
    return [str(s["id"]) for s in hub.snapshot()["streams"]]  # type: ignore[attr-defined]


def stream_state(hub: ViewHub, key: str) -> dict[str, object]:
    return next(s for s in hub.snapshot()["streams"] if s["id"] == key)  # type: ignore[attr-defined]


def test_a_client_stream_is_listed_only_while_its_frames_allow_it() -> None:
    hub = ViewHub({"name": "m"}, clock=Clock())
    hub.observe("k1", "scope-1", result(0), viewable=False)
    assert listed(hub) == []
    hub.observe("k1", "scope-1", result(1), viewable=True)
    assert listed(hub) == ["k1"]
    hub.observe("k1", "scope-1", result(2), viewable=False)  # the client withdrew it: off at once
    assert listed(hub) == []


def test_an_ended_client_stream_leaves_the_view_but_a_source_stays() -> None:
    camera = FakeSource("running")
    hub = ViewHub({}, {"cam": camera}, clock=Clock())
    hub.observe("k1", "scope-1", result(0), viewable=True)
    hub.observe("cam", "cam", result(0), viewable=True)
    hub.forget("k1")
    hub.forget("cam")
    camera.state = "ended"
    assert listed(hub) == ["cam"]
    assert stream_state(hub, "cam")["state"] == "ended"
    assert stream_state(hub, "cam")["frames"] == 1


def test_sources_are_listed_before_they_play_and_start_when_a_viewer_joins() -> None:
    clip, camera = FakeSource("idle"), FakeSource("running")
    hub = ViewHub({}, {"clip": clip, "cam": camera}, clock=Clock())
    hub.observe("k1", "a-client", result(0), viewable=True)
    assert listed(hub) == ["cam", "clip", "k1"]  # sources first, by name
    assert stream_state(hub, "clip") == {
        "id": "clip",
        "name": "clip",
        "kind": "source",
        "state": "idle",
        "fps": None,
        "p50_ms": None,
        "p99_ms": None,
        "frames": 0,
        "dropped": 0,
        "dropped_recent": 0,
        "last": None,
        "alerts": None,
    }
    assert stream_state(hub, "k1")["kind"] == "client"
    hub.join()
    assert (clip.starts, camera.starts) == (1, 1)


def test_rate_latency_and_drops_are_over_the_last_seconds() -> None:
    clock = Clock()
    hub = ViewHub({}, clock=clock, window_s=5.0)
    # Given 10 served frames over 2 s (server 10, 20 … 100 ms) and 2 dropped ones
    for i in range(10):
        clock.now = 100.0 + 0.2 * i
        hub.observe("k", "s", result(i, server_ms=10.0 * (i + 1)), viewable=True)
    hub.observe("k", "s", result(10, Status.DROPPED_LATE, server_ms=45.0), viewable=True)
    hub.observe("k", "s", result(11, Status.FAILED, server_ms=1.0), viewable=True)
    clock.now = 102.0
    state = stream_state(hub, "k")
    assert state["fps"] == 5.0  # 10 served in the 2 s since the stream's first frame
    assert state["p50_ms"] == 55.0  # served frames only
    assert state["p99_ms"] == 99.1
    assert (state["frames"], state["dropped"], state["dropped_recent"]) == (12, 2, 2)
    # Later, the first frames have left the 5 s window; the totals stay
    clock.now = 105.5  # frames observed before 100.5 (0, 1, 2) are out
    state = stream_state(hub, "k")
    assert state["fps"] == 7 / 5.0
    assert state["p50_ms"] == 70.0
    assert (state["frames"], state["dropped"], state["dropped_recent"]) == (12, 2, 2)


def test_the_page_s_state_carries_the_gpu_s_newest_reading_where_there_is_one() -> None:
    reading = {"name": "NVIDIA H100 80GB HBM3", "busy": 0.42, "memory_used_gib": 3.0, "memory_total_gib": 80.0}
    readings: list[dict[str, object] | None] = [None, reading]  # none yet, then one
    hub = ViewHub({"name": "m"}, clock=Clock(), gpu=lambda: readings.pop(0))
    assert hub.snapshot()["gpu"] is None
    assert hub.snapshot()["gpu"] == reading
    assert ViewHub({"name": "m"}, clock=Clock()).snapshot()["gpu"] is None  # on a CPU


def test_the_rate_is_unknown_in_a_streams_first_second() -> None:
    clock = Clock()
    hub = ViewHub({}, clock=clock)
    hub.observe("k", "s", result(0), viewable=True)
    clock.now += 0.5
    assert stream_state(hub, "k")["fps"] is None


def test_the_newest_served_frame_is_described_without_its_pixels() -> None:
    hub = ViewHub({}, clock=Clock())
    polyp = Polyp((10, 20, 30, 40), 0.91234, 1200, track_id=3, alerting=True)
    hub.observe("k", "s", result(7, polyps=(polyp,)), viewable=True)
    hub.observe("k", "s", result(8, Status.DROPPED_LATE), viewable=True)  # a drop keeps the last served one
    assert stream_state(hub, "k")["last"] == {
        "index": 7,
        "width": 640,
        "height": 480,
        "polyps": [{"track_id": 3, "score": 0.912, "alerting": True, "box": [10, 20, 30, 40]}],
        "held": [],
    }


def test_a_long_stream_id_is_cut_for_the_page() -> None:
    hub = ViewHub({}, clock=Clock())
    hub.observe("k", "x" * 100, result(0), viewable=True)
    assert stream_state(hub, "k")["name"] == "x" * 64 + "…"


def test_a_viewer_gets_only_the_newest_picture_of_each_stream() -> None:
    hub = ViewHub({}, clock=Clock())
    hub.observe("a", "a", result(0), viewable=True)
    hub.observe("b", "b", result(0), viewable=True)
    viewer = hub.join()
    for index in (1, 2, 3):  # three pictures of a drawn while the viewer was busy
        hub.publish("a", index, f"jpeg-a{index}".encode(), (), ())
    hub.publish("b", 9, b"jpeg-b9", (), ())
    got = hub.next_pictures(viewer, 0.0)
    assert got is not None
    assert sorted((p.key, p.index, p.jpeg) for p in got) == [("a", 3, b"jpeg-a3"), ("b", 9, b"jpeg-b9")]
    assert hub.next_pictures(viewer, 0.0) == []  # nothing newer: nothing sent twice
    hub.publish("a", 4, b"jpeg-a4", (), ())
    got = hub.next_pictures(viewer, 0.0)
    assert got is not None and [(p.key, p.index) for p in got] == [("a", 4)]


def test_pictures_of_a_stream_not_on_the_view_are_not_kept() -> None:
    hub = ViewHub({}, clock=Clock())
    viewer = hub.join()
    hub.publish("hidden", 0, b"jpeg", (), ())
    assert hub.next_pictures(viewer, 0.0) == []


def test_a_waiting_viewer_wakes_for_a_new_picture() -> None:
    # On a clock that stands still the 0.9 s never pass, however slow this machine: the viewer
    # waits until the picture comes (a wait ending early, at once or a second before its time,
    # would return nothing).
    hub = ViewHub({}, clock=Clock())
    hub.observe("a", "a", result(0), viewable=True)
    viewer = hub.join()
    got: list[object] = []
    waiting = threading.Thread(target=lambda: got.append(hub.next_pictures(viewer, 0.9)), daemon=True)
    waiting.start()
    time.sleep(0.2)  # a picture drawn while it waits
    hub.publish("a", 1, b"jpeg", (), ())
    waiting.join(10)
    assert not waiting.is_alive()
    assert [(p.key, p.index) for p in got[0]] == [("a", 1)]  # type: ignore[union-attr]


def test_a_wait_with_nothing_drawn_ends_empty_at_its_timeout() -> None:
    hub = ViewHub({})
    hub.observe("a", "a", result(0), viewable=True)
    viewer = hub.join()
    got: list[object] = []
    waiting = threading.Thread(target=lambda: got.append(hub.next_pictures(viewer, 0.05)))
    waiting.start()
    waiting.join(10)
    assert not waiting.is_alive() and got == [[]]


def test_closing_the_hub_ends_every_viewer() -> None:
    hub = ViewHub({})
    viewer = hub.join()
    waiting = threading.Thread(target=lambda: hub.next_pictures(viewer, 30.0))
    waiting.start()
    hub.close()
    waiting.join(10)
    assert not waiting.is_alive()
    assert hub.next_pictures(viewer, 30.0) is None


def test_pictures_are_drawn_only_for_a_listed_stream_while_a_viewer_is_ready() -> None:
    clock = Clock()
    hub = ViewHub({}, clock=clock)
    hub.observe("a", "a", result(0), viewable=True)

    def claims(key: str = "a") -> bool:
        claimed = hub.claim_picture(key)
        if claimed:
            hub.unclaim(key)  # each check below stands alone
        return claimed

    assert not claims()  # nobody watches
    viewer = hub.join()
    assert claims()  # joined, not yet sending: ready
    assert not claims("not-listed")
    hub.next_pictures(viewer, 0.0)  # returns: the viewer is now sending what it got
    clock.now += BUSY_S / 2
    assert claims()  # sending briefly: still ready for the next one
    clock.now += BUSY_S
    assert not claims()  # its sending stalls: nothing is drawn for it
    other = hub.join()
    assert claims()  # another viewer is ready
    hub.leave(other)
    hub.leave(viewer)
    assert not claims()


def test_one_picture_of_a_stream_is_drawn_at_a_time() -> None:
    hub = ViewHub({})
    hub.observe("a", "a", result(0), viewable=True)
    hub.observe("b", "b", result(0), viewable=True)
    hub.join()
    assert hub.claim_picture("a")
    assert not hub.claim_picture("a")  # still being drawn: the next frame is not
    assert hub.claim_picture("b")  # another stream's own turn
    hub.publish("a", 0, b"jpeg", (), ())
    assert hub.claim_picture("a")  # published: the next one may be drawn
    hub.unclaim("a")  # drawing it failed
    assert hub.claim_picture("a")


def test_statistics_are_over_five_seconds_a_frame_exactly_that_old_included() -> None:
    clock = Clock()
    hub = ViewHub({}, clock=clock)  # the default window
    assert hub.snapshot()["window_s"] == 5.0
    hub.observe("k", "s", result(0, server_ms=10.0), viewable=True)
    clock.now = 101.0  # exactly one second in: the rate is known
    assert stream_state(hub, "k")["fps"] == 1.0
    clock.now = 103.0
    hub.observe("k", "s", result(1, server_ms=30.0), viewable=True)
    clock.now = 105.0  # frame 0 is exactly 5 s old: still in
    assert (stream_state(hub, "k")["fps"], stream_state(hub, "k")["p50_ms"]) == (0.4, 20.0)
    clock.now = 105.001  # now it is out
    assert (stream_state(hub, "k")["fps"], stream_state(hub, "k")["p50_ms"]) == (0.2, 30.0)


def test_rate_and_latency_are_shown_to_two_decimals() -> None:
    clock = Clock()
    hub = ViewHub({}, clock=clock)
    for i in range(7):
        hub.observe("k", "s", result(i, server_ms=12.3456), viewable=True)
    clock.now = 103.0
    state = stream_state(hub, "k")
    assert (state["fps"], state["p50_ms"], state["p99_ms"]) == (2.33, 12.35, 12.35)  # 7 frames in 3 s


def test_a_stream_id_of_the_longest_shown_length_is_shown_whole() -> None:
    hub = ViewHub({}, clock=Clock())
    hub.observe("k", "x" * 64, result(0), viewable=True)
    hub.observe("j", "y" * 65, result(0), viewable=True)
    hub.observe("i", "scope-1", result(0), viewable=True)
    assert stream_state(hub, "i")["name"] == "scope-1"
    assert stream_state(hub, "k")["name"] == "x" * 64
    assert stream_state(hub, "j")["name"] == "y" * 64 + "…"


def test_a_streams_alert_rule_stays_shown_when_a_result_does_not_say_it() -> None:
    hub = ViewHub({}, clock=Clock())
    hub.observe("k", "s", result(0), viewable=True, alerts="2 of 2 frames, held 4, at 25 fps")
    hub.observe("k", "s", result(1), viewable=True)
    assert stream_state(hub, "k")["alerts"] == "2 of 2 frames, held 4, at 25 fps"


def test_viewers_are_counted_as_they_join_and_leave() -> None:
    hub = ViewHub({}, clock=Clock())
    assert hub.viewers == 0
    first, second = hub.join(), hub.join()
    assert hub.viewers == 2
    hub.leave(first)
    assert hub.viewers == 1
    hub.leave(second)
    assert hub.viewers == 0


def test_a_viewer_whose_sending_takes_over_a_tenth_of_a_second_gets_no_pictures_drawn() -> None:
    clock = Clock()
    hub = ViewHub({}, clock=clock)
    hub.observe("a", "a", result(0), viewable=True)
    viewer = hub.join()
    clock.now = 0.0
    hub.next_pictures(viewer, 0.0)  # sending from now
    clock.now = 0.09
    assert hub.ready()
    clock.now = BUSY_S  # exactly the limit: stalled
    assert not hub.ready()
    clock.now = 0.15
    assert not hub.ready()
