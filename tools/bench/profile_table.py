#!/usr/bin/env python3
"""Where a batch-1 pass spends its time: edgepatch's per-step profile (`edgepatch-bench
profile`, the blocked layout and, with EDGEPATCH_LAYOUT=planar, the planar one) beside
onnxruntime's own per-node profile (`SessionOptions.enable_profiling`) of the f32 model, summed by
kind of layer. Alternates the three `rounds` times and prints a markdown table of the medians.

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
KINDS = ["conv 1×1", "depthwise", "conv k×k", "linear", "add", "pool", "other"]


def edgepatch(layout, batch, reps):
    env = {**os.environ, "EDGEPATCH_LAYOUT": layout}
    out = subprocess.run([BENCH, "profile", "--batch", str(batch), "--reps", str(reps)], env=env,
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    kinds = {k["kind"]: k["ms"] for k in d["kinds"]}
    return {"total": d["median_ms"], **kinds}


def onnxruntime(batch, reps):
    """onnxruntime's profile by kind: the depthwise convolutions are the ones with a group."""
    model = CACHE / "mobilenet_v2_f32.onnx"
    with tempfile.TemporaryDirectory() as d:
        prof = Path(d) / "nodes.json"
        out = subprocess.run([CACHE / "venv/bin/python", ROOT / "tools/bench/ort_bench.py", model, "--batch",
                              str(batch), "--steps", str(reps), "--profile", prof],
                             capture_output=True, text=True, check=True).stdout
        nodes = json.loads(prof.read_text())
    median = json.loads(out.splitlines()[-1])["median_ms"]
    kinds = {}
    for n in nodes:
        m = re.match(r"features\.(\d+)\.conv\.(\d+)", n["node"])
        if n["op"] == "Gemm":
            k = "linear"
        elif n["op"] == "GlobalAveragePool":
            k = "pool"
        elif m:
            block, i = int(m.group(1)), int(m.group(2))
            k = "depthwise" if (block == 1 and i == 0) or (block > 1 and i == 1) else "conv 1×1"
        elif n["node"].startswith("features.0."):
            k = "conv k×k"
        elif n["node"].startswith("features.18."):
            k = "conv 1×1"
        else:
            k = "other"
        kinds[k] = kinds.get(k, 0.0) + n["us"] / 1e3
    return {"total": median, "profiled total": sum(kinds.values()), **kinds}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    runs = {"planar": [], "blocked": [], "ort": []}
    for _ in range(a.rounds):
        runs["planar"].append(edgepatch("planar", a.batch, a.reps))
        runs["blocked"].append(edgepatch("blocked", a.batch, a.reps))
        runs["ort"].append(onnxruntime(a.batch, a.reps))
    med = lambda rs, k: sorted(r.get(k, 0.0) for r in rs)[len(rs) // 2]
    print(f"| layers (batch {a.batch}, 224 px; ms, median of {a.rounds} alternating rounds) | edgepatch planar | "
          "edgepatch blocked | onnxruntime f32 (its profile) |")
    print("|---|---:|---:|---:|")
    for k in KINDS:
        print(f"| {k} | {med(runs['planar'], k):.2f} | {med(runs['blocked'], k):.2f} | {med(runs['ort'], k):.2f} |")
    print(f"| **sum of the steps** | {med(runs['planar'], 'total'):.2f} | {med(runs['blocked'], 'total'):.2f} | "
          f"{med(runs['ort'], 'profiled total'):.2f} |")
    print(f"| onnxruntime's pass without profiling | | | {med(runs['ort'], 'total'):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
