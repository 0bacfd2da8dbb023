"""The protobuf mapping: every field both ways, none forgotten."""

from __future__ import annotations

import itertools
from dataclasses import fields

import pytest

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.frames import FrameOptions
from polypstream.wire import options_from_proto, options_to_proto

NAMES = [f.name for f in fields(FrameOptions)]
FLAGS = [name for name in NAMES if not name.startswith("alert_")]
ALERT = [name for name in NAMES if name.startswith("alert_")]


def test_frame_options_have_exactly_the_protobufs_fields() -> None:
    assert sorted(NAMES) == sorted(f.name for f in pb.FrameOptions.DESCRIPTOR.fields)
    assert ALERT == ["alert_min_seen", "alert_window", "alert_hold"]


@pytest.mark.parametrize("values", list(itertools.product([False, True], repeat=len(FLAGS))))
def test_frame_options_flags_survive_the_round_trip_field_by_field(values: tuple[bool, ...]) -> None:
    options = FrameOptions(**dict(zip(FLAGS, values, strict=True)))
    message = options_to_proto(options)
    assert [getattr(message, name) for name in FLAGS] == list(values)
    assert options_from_proto(message) == options


@pytest.mark.parametrize("values", [(None, None, None), (2, 5, 0), (None, 4, None), (0, None, 7)])
def test_an_unset_alert_setting_stays_unset_and_zero_is_a_value(values: tuple[int | None, ...]) -> None:
    options = FrameOptions(**dict(zip(ALERT, values, strict=True)))
    message = options_to_proto(options)
    assert [message.HasField(name) for name in ALERT] == [v is not None for v in values]
    assert options_from_proto(message) == options
