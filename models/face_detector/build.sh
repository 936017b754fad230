#!/usr/bin/env bash
# Converts the feature extractor of face-api's SSD-MobileNetV1 face detector (npm
# @vladmandic/face-api 1.7.15, TF.js uint8 weights) to ONNX: cache/face_detector_mobilenet_v1.onnx
# (git-ignored), MobileNetV1 up to Conv2d_13 with global pooling and a placeholder classifier.
# Checks the ONNX against a NumPy forward written from face-api's TF.js code and onnxruntime's
# outputs against the committed models/face_detector/reference/expected.json; writes MANIFEST.
# Usage: bash models/face_detector/build.sh [--check]   (--check: fail if MANIFEST changes)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/models/face_detector"
source "$root/models/venv.sh"

tgz="$cache/downloads/vladmandic-face-api-1.7.15.tgz"
[ -f "$tgz" ] || (cd "$cache/downloads" && npm pack --silent @vladmandic/face-api@1.7.15 >/dev/null)

"$cache/venv/bin/python" "$here/build.py" --tgz "$tgz" --cache "$cache" --reference "$here/reference"

if [ "${1:-}" = "--check" ]; then
  git -C "$root" diff --exit-code -- models/face_detector || { echo "rebuilt model differs from the committed one" >&2; exit 1; }
fi
