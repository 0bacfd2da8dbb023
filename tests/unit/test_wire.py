"""The protobuf mapping: every field both ways, none forgotten."""

from __future__ import annotations

import itertools
from dataclasses import fields

import pytest

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.frames import FrameOptions
from polypstream.wire import options_from_proto, options_to_proto

NAMES = [f.name for f in fields(FrameOptions)]


def test_frame_options_have_exactly_the_protobufs_fields() -> None:
    assert sorted(NAMES) == sorted(f.name for f in pb.FrameOptions.DESCRIPTOR.fields)


@pytest.mark.parametrize("values", list(itertools.product([False, True], repeat=len(NAMES))))
def test_frame_options_survive_the_round_trip_field_by_field(values: tuple[bool, ...]) -> None:
    options = FrameOptions(**dict(zip(NAMES, values, strict=True)))
    message = options_to_proto(options)
    assert [getattr(message, name) for name in NAMES] == list(values)
    assert options_from_proto(message) == options
