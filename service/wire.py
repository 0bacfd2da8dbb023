"""Mapping between the service's own types and their protobuf messages, one definition each
(the server and the client both use it)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from ._proto.polypstream.v1 import segmenter_pb2 as pb
from .frames import FrameOptions, Polyp

_OPTIONAL = {f.name for f in pb.FrameOptions.DESCRIPTOR.fields if f.has_presence}


def options_from_proto(options: pb.FrameOptions) -> FrameOptions:
    """Unset optional fields (the alert rule's parts) become None: the server's default."""
    values: dict[str, Any] = {
        f.name: None if f.name in _OPTIONAL and not options.HasField(f.name) else getattr(options, f.name)
        for f in fields(FrameOptions)
    }
    return FrameOptions(**values)


def options_to_proto(options: FrameOptions) -> pb.FrameOptions:
    return pb.FrameOptions(**{name: value for name, value in asdict(options).items() if value is not None})


def polyp_from_proto(p: pb.Polyp) -> Polyp:
    return Polyp((p.box.x, p.box.y, p.box.width, p.box.height), p.score, p.area, p.track_id, p.alerting)
