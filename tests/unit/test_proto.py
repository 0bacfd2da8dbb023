"""The committed generated code matches proto/ (regenerate with `python proto/codegen.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from polypstream._proto.polypstream.v1 import segmenter_pb2

protoc = pytest.importorskip("grpc_tools.protoc")
PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    out = tmp_path / "descriptor.pb"
    assert (
        protoc.main(["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", "polypstream/v1/segmenter.proto"]) == 0
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:  # descriptor sets carry json_name; generated code does not
        for field in message.field:
            field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(segmenter_pb2.DESCRIPTOR.serialized_pb)
    assert committed == fresh, "service/_proto is stale: run `python proto/codegen.py`"
