"""The committed stubs (python/gradtel/v1) describe exactly the current proto/ files:
regenerate with python/scripts/gen_stubs.sh after editing proto/."""

import pathlib
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2

from gradtel.v1 import common_pb2, ingest_pb2

REPO = pathlib.Path(__file__).resolve().parents[2]


def _schema(fd: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """The schema alone: generated code embeds the descriptor without source info and without
    the derived json_name of each field."""
    fd.ClearField("source_code_info")

    def strip(messages):
        for m in messages:
            for f in m.field:
                f.ClearField("json_name")
            strip(m.nested_type)

    strip(fd.message_type)
    return fd


def test_committed_stubs_match_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    out = tmp_path / "set.pb"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"),
            f"--descriptor_set_out={out}",
            "gradtel/v1/common.proto", "gradtel/v1/ingest.proto",
        ],
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    by_name = {f.name: f for f in fresh.file}
    for module in (common_pb2, ingest_pb2):
        committed = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(committed)
        expected = by_name[module.DESCRIPTOR.name]
        assert _schema(committed) == _schema(expected), f"{module.DESCRIPTOR.name} is stale: run gen_stubs.sh"
