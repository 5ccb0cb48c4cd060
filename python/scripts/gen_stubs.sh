#!/usr/bin/env bash
# Regenerate the committed protocol descriptors (python/gradtel/v1/gradtel.binpb, from which
# gradtel/v1/_messages.py builds the message classes at import) and the typing stubs (*.pyi)
# from proto/. Needs grpcio-tools (pip install grpcio-tools). A test (tests/test_stubs.py)
# checks that the committed descriptors equal a fresh compilation, so edit proto/ and rerun
# this, never the files it writes.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/.." && pwd)"
out="${1:-$here}"
mkdir -p "$out/gradtel/v1"
python3 -m grpc_tools.protoc -I "$repo/proto" \
  --descriptor_set_out="$out/gradtel/v1/gradtel.binpb" --pyi_out="$out" \
  "$repo/proto/gradtel/v1/common.proto" "$repo/proto/gradtel/v1/ingest.proto"
