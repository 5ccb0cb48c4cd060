#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf stubs (python/gradtel/v1/) from proto/.
# Needs grpcio-tools (pip install grpcio-tools). A test (tests/test_stubs.py) checks that the
# committed files equal a fresh generation, so edit proto/ and rerun this, never the stubs.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/.." && pwd)"
out="${1:-$here}"
python3 -m grpc_tools.protoc -I "$repo/proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$repo/proto/gradtel/v1/common.proto" "$repo/proto/gradtel/v1/ingest.proto"
touch "$out/gradtel/v1/__init__.py"
