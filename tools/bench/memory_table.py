#!/usr/bin/env python3
"""Training under a memory budget, side by side: for every patch kind at 224 px, batch 16, the
plan `edgepatch train --memory-budget MB` chooses (samples per pass, predicted peak increase),
the measured peak resident memory of the whole process and the training throughput, beside
the unconstrained run and PyTorch's peak for the same kind (tools/bench/torch_bench.py).

    python3 tools/bench/memory_table.py [--bin target/release/edgepatch] [--torch]

Each row is a fresh process training 64 images of the demo's Fashion-MNIST subset for one epoch
(4 steps; the first includes the plan's probe). Rows alternate between budgets within a kind so
that drift on a noisy machine spreads over all of them. Prints a markdown table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = ["logits", "bias+logits", "sb+logits", "dw+logits", "sb+dw+logits", "full"]
BUDGETS = [None, 300, 150, 100, 80]


def train(binary, kinds, budget, out):
    data = "idx:" + os.path.join(ROOT, "models/datasets/fashion-mnist-mini/train")
    args = [binary, "train", "--train", data, "--patch", kinds, "--out", out, "--limit", "64", "--epochs", "1",
            "--batch", "16", "--resolution", "224", "--device", "cpu", "--json"]
    if budget is not None:
        args += ["--memory-budget", str(budget)]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"
        return {"error": last.replace("edgepatch: error: training: ", "")}
    return json.loads(p.stdout)


def torch_peak(kinds, graph_dir):
    script = os.path.join(ROOT, "tools/bench/torch_bench.py")
    p = subprocess.run(["/usr/bin/python3", script, graph_dir, "--train", kinds, "--batch", "16", "--resolution",
                        "224", "--steps", "3"], capture_output=True, text=True)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/edgepatch"))
    ap.add_argument("--torch", action="store_true", help="also run PyTorch (Debian's python3-torch) per kind")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="edgepatch-memory-")
    torch = {}
    if a.torch:
        graph = os.path.join(tmp, "graph")
        bench = os.path.join(os.path.dirname(a.bin), "edgepatch-bench")
        subprocess.run([bench, "dump-graph", "--out", graph], check=True, capture_output=True)
        for k in KINDS:
            torch[k] = torch_peak(k, graph)
    print("| patch | budget (MB) | samples per pass | predicted increase (MB) | measured peak (MB) | images/s | "
          "PyTorch peak (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k in KINDS:
        for b in BUDGETS:
            r = train(a.bin, k, b, os.path.join(tmp, "p.patch"))
            t = torch.get(k)
            tp = "%.0f" % (t["peak_rss_bytes"] / 1e6) if t else ""
            if "error" in r:
                print("| %s | %s | refused: %s | | | | %s |" % (k, b or "none", r["error"][:90], tp))
                continue
            p = r["memory_plan"] or {}
            print("| %s | %s | %s | %.0f | %.0f | %.1f | %s |" % (
                k, b or "none", p.get("micro_batch", ""), p.get("predicted_bytes", 0) / 1e6,
                r["peak_rss_bytes"] / 1e6, r["images_per_second"], tp))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
