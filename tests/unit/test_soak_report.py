"""The soak's account of where live frames spent their server time (benchmarks/soak.py)."""

from __future__ import annotations

import time

import pytest

from benchmarks.common import StealMeter, StealSampler
from benchmarks.soak import live_windows, quiet_windows, stage_times, steal_share, where_time_went
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb


def answer(status: int, server: float, decode: float, queue: float, inference: float = 0.0) -> pb.FrameResult:
    timing = pb.Timing(decode_ms=decode, queue_ms=queue, inference_ms=inference, postprocess_ms=0.5, server_ms=server)
    timing.batch_size = 2 if inference else 0
    return pb.FrameResult(status=status, timing=timing)


def test_a_live_answer_is_split_by_stage_and_the_rest_is_other() -> None:
    stages = stage_times(answer(pb.FRAME_STATUS_OK, server=30.0, decode=4.0, queue=6.0, inference=12.0))
    assert stages == {
        "ok": 1.0,
        "batch_size": 2.0,
        "server": 30.0,
        "decode": 4.0,
        "queue": 6.0,
        "inference": 12.0,
        "postprocess": 0.5,
        "other": 7.5,  # 30 - (4 + 6 + 12 + 0.5): waiting outside the stages
    }
    dropped = stage_times(answer(pb.FRAME_STATUS_DROPPED_LATE, server=12.0, decode=3.0, queue=9.0))
    assert (dropped["ok"], dropped["inference"], dropped["other"]) == (0.0, 0.0, 0.0)  # never below zero


def test_answers_are_grouped_within_past_the_budget_and_dropped_with_their_means() -> None:
    stages = [
        stage_times(answer(pb.FRAME_STATUS_OK, server=20.0, decode=4.0, queue=2.0, inference=12.0)),
        stage_times(answer(pb.FRAME_STATUS_OK, server=40.0, decode=6.0, queue=4.0, inference=14.0)),  # at the budget
        stage_times(answer(pb.FRAME_STATUS_OK, server=41.0, decode=5.0, queue=10.0, inference=25.0)),
        stage_times(answer(pb.FRAME_STATUS_DROPPED_LATE, server=15.0, decode=5.0, queue=9.0)),
    ]
    report = where_time_went(stages, budget_ms=40.0)
    within = report["ok_within_budget"]
    assert isinstance(within, dict)
    assert within["frames"] == 2
    assert (within["server"], within["decode"], within["queue"], within["inference"]) == (30.0, 5.0, 3.0, 13.0)
    assert within["other"] == pytest.approx((1.5 + 15.5) / 2)
    past, dropped = report["ok_past_budget"], report["dropped_late"]
    assert isinstance(past, dict) and isinstance(dropped, dict)
    assert (past["frames"], past["inference"], past["queue"]) == (1, 25.0, 10.0)
    assert (dropped["frames"], dropped["server"], dropped["inference"], dropped["batch_size"]) == (1, 15.0, 0.0, 0.0)


def test_an_empty_group_says_none_were_there() -> None:
    assert where_time_went([], budget_ms=40.0) == {
        "ok_within_budget": {"frames": 0},
        "ok_past_budget": {"frames": 0},
        "dropped_late": {"frames": 0},
    }


def live(t: float, ok: bool, server: float) -> dict[str, float]:
    return {"t": t, "ok": float(ok), "server": server}


def test_live_answers_are_counted_by_window_with_the_hosts_steal_over_it() -> None:
    stages = [live(1.0, True, 20.0), live(9.9, True, 41.0), live(10.0, False, 15.0), live(12.0, True, 40.0)]
    # (t, steal, all): 0 of 1000 stolen over 0-10 s, then 50 of 1000 over 10-20 s
    samples = [(0.0, 0.0, 0.0), (10.0, 0.0, 1000.0), (20.0, 50.0, 2000.0)]
    assert live_windows(stages, samples, window_s=10.0, budget_ms=40.0) == [
        {"t_s": 0.0, "live_answers": 2, "within_budget_share": 0.5, "steal": 0.0},
        {"t_s": 10.0, "live_answers": 2, "within_budget_share": 0.5, "steal": 0.05},
    ]


def test_steal_over_a_window_uses_the_samples_around_it_or_those_inside_it() -> None:
    samples = [(0.5, 10.0, 100.0), (4.0, 12.0, 400.0), (11.0, 40.0, 1100.0)]
    assert steal_share(samples, 1.0, 10.0) == 0.03  # from 0.5 s to 11 s: 30 of 1000
    assert steal_share(samples, 0.0, 10.0) == 0.03  # sampling began at 0.5 s: from there
    assert steal_share(samples, 5.0, 12.0) == round(28 / 700, 4)  # it ended at 11 s: 4 s to 11 s
    assert steal_share(samples, 20.0, 30.0) is None  # no sample covers any of it
    assert steal_share(samples[:1], 0.0, 10.0) is None  # one sample is no interval


def test_quiet_windows_are_those_under_the_steal_threshold_weighted_by_their_answers() -> None:
    windows: list[dict[str, float | None]] = [
        {"t_s": 0.0, "live_answers": 100, "within_budget_share": 1.0, "steal": 0.002},
        {"t_s": 30.0, "live_answers": 300, "within_budget_share": 0.98, "steal": 0.009},
        {"t_s": 60.0, "live_answers": 200, "within_budget_share": 0.5, "steal": 0.13},
        {"t_s": 90.0, "live_answers": 10, "within_budget_share": 0.0, "steal": None},
    ]
    assert quiet_windows(windows, steal_below=0.01) == {
        "steal_below": 0.01,
        "windows": 2,
        "of_windows": 4,
        "live_answers": 400,
        "within_budget_share": round((100 + 294) / 400, 4),
    }
    assert quiet_windows(windows, steal_below=0.001)["within_budget_share"] is None


def test_the_steal_sampler_samples_at_start_and_at_stop_in_order() -> None:
    started = time.perf_counter()
    samples = StealSampler(started, every_s=60.0).start().stop()  # stopped before a second sample is due
    if StealMeter.counters() is None:  # not Linux: nothing to read
        assert samples == []
        return
    assert len(samples) == 2
    (t0, steal0, all0), (t1, steal1, all1) = samples
    assert 0.0 <= t0 <= t1 and steal0 <= steal1 and all0 <= all1
