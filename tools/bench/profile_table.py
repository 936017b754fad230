#!/usr/bin/env python3
"""Where a batch-1 pass spends its time, block by block of MobileNetV2 (`features.N`, the pool and
the classifier): edgepatch's per-step profile (`edgepatch-bench profile`) in three engine
configurations — planar (EDGEPATCH_LAYOUT=planar), blocked layer by layer (EDGEPATCH_FUSE=0) and
blocked with the inverted residual blocks fused (the default) — beside onnxruntime's own per-node
profile (`SessionOptions.enable_profiling`) of the f32 model. Alternates the four `rounds` times
and prints a markdown table of the medians.

    python3 tools/bench/profile_table.py [--rounds 3] [--reps 30] [--batch 1]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGEPATCH_CACHE", ROOT / "cache"))
BENCH = (ROOT / os.environ.get("CARGO_TARGET_DIR", "target")).resolve() / "release/edgepatch-bench"
CONFIGS = {"planar": {"EDGEPATCH_LAYOUT": "planar"}, "layer by layer": {"EDGEPATCH_FUSE": "0"}, "fused": {}}


def part(node):
    """The row a node's time goes to: `features.N`, `pool`, `classifier` or `other`."""
    m = re.match(r"(features\.\d+)", node)
    return m.group(1) if m else node if node in ("pool", "classifier") else "other"


def edgepatch(env, batch, reps):
    out = subprocess.run([BENCH, "profile", "--batch", str(batch), "--reps", str(reps)], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    rows = {"total": d["median_ms"]}
    for s in d["steps"]:
        rows[part(s["node"])] = rows.get(part(s["node"]), 0.0) + s["ms"]
    return rows


def onnxruntime(batch, reps):
    model = CACHE / "mobilenet_v2_f32.onnx"
    with tempfile.TemporaryDirectory() as d:
        prof = Path(d) / "nodes.json"
        out = subprocess.run([CACHE / "venv/bin/python", ROOT / "tools/bench/ort_bench.py", model, "--batch",
                              str(batch), "--steps", str(reps), "--profile", prof],
                             capture_output=True, text=True, check=True).stdout
        nodes = json.loads(prof.read_text())
    rows = {"total": json.loads(out.splitlines()[-1])["median_ms"]}
    for n in nodes:
        k = "classifier" if n["op"] == "Gemm" else "pool" if n["op"] == "GlobalAveragePool" else part(n["node"])
        rows[k] = rows.get(k, 0.0) + n["us"] / 1e3
    rows["profiled total"] = sum(v for k, v in rows.items() if k != "total")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    runs = {k: [] for k in [*CONFIGS, "ort"]}
    for _ in range(a.rounds):
        for name, env in CONFIGS.items():
            runs[name].append(edgepatch(env, a.batch, a.reps))
        runs["ort"].append(onnxruntime(a.batch, a.reps))
    med = lambda rs, k: sorted(r.get(k, 0.0) for r in rs)[len(rs) // 2]
    cols = [*CONFIGS, "ort"]
    print(f"| part (batch {a.batch}, 224 px; ms, median of {a.rounds} alternating rounds) | edgepatch planar | "
          "edgepatch blocked, layer by layer | edgepatch blocked, fused blocks | onnxruntime f32 (its profile) |")
    print("|---|---:|---:|---:|---:|")
    parts = [f"features.{i}" for i in range(19)] + ["pool", "classifier", "other"]
    for p in parts:
        if any(med(runs[c], p) for c in cols):
            print(f"| {p} | " + " | ".join(f"{med(runs[c], p):.2f}" for c in cols) + " |")
    sums = [med(runs[c], "total") for c in CONFIGS] + [med(runs["ort"], "profiled total")]
    print("| **sum of the steps** | " + " | ".join(f"{v:.2f}" for v in sums) + " |")
    print(f"| onnxruntime's pass without profiling | | | | {med(runs['ort'], 'total'):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
