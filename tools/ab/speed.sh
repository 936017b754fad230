#!/bin/bash
# Alternating A/B timing of two builds (directories holding edgepatch-bench and train_step, e.g.
# copies of target/release before and after a change): batch-1 and batch-16 inference of the
# int8 model, CPU training steps at 224 px, and a GPU step where an adapter exists. Rounds
# alternate old and new so that drift on a noisy machine hits both.
#   bash tools/ab/speed.sh OLD_DIR NEW_DIR [ROUNDS]
set -uo pipefail
OLD=$(realpath "$1"); NEW=$(realpath "$2"); ROUNDS=${3:-3}
for round in $(seq "$ROUNDS"); do
  for v in "$OLD" "$NEW"; do
    name=$([ "$v" = "$OLD" ] && echo old || echo new)
    for b in 1 16; do
      ms=$("$v/edgepatch-bench" run --engine edgepatch-int8 --batch $b --reps 20 2>/dev/null | tail -1 \
        | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["median_ms"], 2))')
      echo "round $round $name inference batch $b: $ms ms"
    done
    "$v/train_step" --kinds sb+logits,dw+logits,full --resolutions 224 --batch 16 --reps 5 --devices cpu 2>/dev/null \
      | grep '^| [a-z]' | grep -v '^| patch' | awk -F'|' -v r="$round" -v n="$name" '{print "round " r " " n " train" $2 "cpu:" $5 "ms"}'
  done
done
for v in "$OLD" "$NEW"; do
  name=$([ "$v" = "$OLD" ] && echo old || echo new)
  "$v/train_step" --kinds sb+logits --resolutions 96 --batch 8 --reps 3 --devices gpu 2>/dev/null \
    | grep '^| [a-z]' | grep -v '^| patch' | awk -F'|' -v n="$name" '{print n " train" $2 $3 ":" $5 "ms"}'
done
