"""The soak's account of where live frames spent their server time (benchmarks/soak.py)."""

from __future__ import annotations

import pytest

from benchmarks.soak import stage_times, where_time_went
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
