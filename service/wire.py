"""Mapping between the service's own types and their protobuf messages, one definition each
(the server and the client both use it)."""

from __future__ import annotations

from dataclasses import asdict, fields

from ._proto.polypstream.v1 import segmenter_pb2 as pb
from .frames import FrameOptions


def options_from_proto(options: pb.FrameOptions) -> FrameOptions:
    return FrameOptions(**{f.name: getattr(options, f.name) for f in fields(FrameOptions)})


def options_to_proto(options: FrameOptions) -> pb.FrameOptions:
    return pb.FrameOptions(**asdict(options))
