"""The answers built for frames the model did not run on."""

from __future__ import annotations

import numpy as np
import pytest

from polypstream.frames import Frame, FrameOptions, Status, unserved_result


def test_an_unserved_frame_keeps_its_identity_size_and_times() -> None:
    frame = Frame(
        stream_key="k", stream_id="scope", index=7, image=np.zeros((90, 160, 3), np.uint8), received_at=10.0,
        deadline=10.04, options=FrameOptions(), client_time_ns=123, decode_s=0.004, original_size=(1920, 1080),
    )  # fmt: skip
    result = unserved_result(frame, Status.DROPPED_LATE, "late", now=10.25, enqueued_at=10.125)
    assert (result.stream_id, result.index, result.status, result.error) == ("scope", 7, Status.DROPPED_LATE, "late")
    assert (result.width, result.height, result.client_time_ns) == (1920, 1080, 123)
    assert (result.timing.decode_s, result.timing.queue_s, result.timing.server_s) == (0.004, 0.125, 0.25)
    assert result.polyps == () and result.mask is None and result.overlay is None
    refused = unserved_result(frame, Status.FAILED, "queue full", now=10.5)  # never queued
    assert (refused.timing.queue_s, refused.timing.server_s) == (0.0, pytest.approx(0.5))
