#!/usr/bin/env bash
# One command for the side-by-side benchmarks (tools/bench/run.py): installs the peers on a fresh
# machine (Debian's python3-torch; onnxruntime in the model build's venv), builds the benchmark
# binaries and runs them. Usage: bash tools/bench/run.sh [--quick] [--steps N] [--reps N] [--no-write]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
/usr/bin/python3 -c "import torch, numpy" 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch python3-numpy; }
"${EDGEPATCH_CACHE:-$root/cache}/venv/bin/python" -c "import onnxruntime" 2>/dev/null || bash models/mobilenet_v2/build.sh
# --workspace: the same features as `cargo test --workspace`, so the test build is reused.
cargo build --release -q --workspace --bins
exec python3 tools/bench/run.py "$@"
