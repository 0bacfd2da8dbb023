"""The GIL probe: how much later than asked a sleeping thread runs Python again."""

from __future__ import annotations

import threading
import time

from polypstream.pipeline import Pipeline
from polypstream.threads import GilProbe


def test_the_probe_reports_how_late_each_wake_up_came_and_never_less_than_zero() -> None:
    # Given a clock that each 10 ms sleep moves on by 10 ms plus a known lateness (one wake-up early)
    lateness = [0.0, 0.25, 0.5, -0.125]
    now = [100.0]
    observed: list[float] = []

    def wait(interval: float) -> bool:
        if not lateness:
            return True  # stopping
        now[0] += interval + lateness.pop(0)
        return False

    probe = GilProbe(observed.append, interval_s=0.015625, wait=wait, clock=lambda: now[0])
    # When it runs until stopped
    probe._run()
    # Then it observed each lateness exactly, the early wake-up as 0
    assert observed == [0.0, 0.25, 0.5, 0.0]


def test_a_pipeline_samples_the_gil_wait_while_it_runs_and_stops_the_probe(pipeline: Pipeline) -> None:
    registry = pipeline.metrics.registry
    deadline = time.monotonic() + 10
    while not registry.get_sample_value("polypstream_gil_wait_seconds_count") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert registry.get_sample_value("polypstream_gil_wait_seconds_count")
    pipeline.stop()
    assert not any(t.name == "polypstream-gil-probe" for t in threading.enumerate())


def test_a_probe_stops_at_once_however_long_its_interval() -> None:
    probe = GilProbe(lambda _: None, interval_s=3600)
    probe.start()
    started = time.monotonic()
    probe.stop()
    assert time.monotonic() - started < 60  # not the hour it sleeps for
    assert probe._thread is not None and not probe._thread.is_alive()
