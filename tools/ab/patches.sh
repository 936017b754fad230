#!/bin/bash
# Byte-identity check for refactors: trains small patches of every kind at every SIMD level
# (and, where a GPU adapter exists, on the GPU) and predicts with them, printing one SHA-256 per
# patch file and per prediction. Run it with the binary before and after a change and diff the
# two outputs:
#   bash tools/ab/patches.sh OLD/edgepatch /tmp/ab-old > old.txt
#   bash tools/ab/patches.sh NEW/edgepatch /tmp/ab-new > new.txt
#   diff <(cut -c1-64 old.txt) <(cut -c1-64 new.txt)
set -euo pipefail
BIN=$(realpath "$1")
OUT=$2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
DS=idx:$ROOT/models/datasets/fashion-mnist-mini/train
R=$ROOT/models/mobilenet_v2/reference
train() { "$BIN" train --train "$DS" --limit 48 --epochs 1 --batch 16 --resolution 64 "$@" > /dev/null 2>&1; }
for level in portable avx2 avx512; do
  for kind in logits sb+logits bias+logits dw+logits sb+dw+logits full; do
    EDGEPATCH_SIMD=$level train --patch $kind --out "$OUT/$level-${kind//+/_}.patch" --device cpu --optimizer adam \
      || echo "FAILED $level $kind"
  done
done
gpu=$("$BIN" info --devices 2>/dev/null | grep -c -i vulkan || true)
if [ "$gpu" != 0 ]; then
  for kind in logits sb+logits dw+logits; do
    train --patch $kind --out "$OUT/gpu-${kind//+/_}.patch" --device gpu || echo "FAILED gpu $kind"
  done
fi
(cd "$OUT" && sha256sum -- *.patch)
for level in portable avx2 avx512; do
  EDGEPATCH_SIMD=$level "$BIN" predict --top 1000 --json "$R/coffee.png" "$R/camera.png" "$R/chelsea.png" --device cpu 2>/dev/null \
    | sha256sum | sed "s/-$/predict-$level/"
  EDGEPATCH_SIMD=$level "$BIN" predict --top 10 --json --patch "$OUT/$level-sb_logits.patch" "$R/coffee.png" "$R/camera.png" \
    --device cpu 2>/dev/null | sha256sum | sed "s/-$/predict-patch-$level/"
done
if [ "$gpu" != 0 ]; then
  "$BIN" predict --top 1000 --json "$R/coffee.png" "$R/camera.png" "$R/chelsea.png" --device gpu 2>/dev/null \
    | sha256sum | sed "s/-$/predict-gpu/"
fi
