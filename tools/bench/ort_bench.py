#!/usr/bin/env python3
"""onnxruntime (CPU) inference on an ONNX model: median latency of `steps` runs after two
warm-ups at the given batch (224 px), and this process's peak resident memory. One JSON line.

    cache/venv/bin/python tools/bench/ort_bench.py MODEL --batch 1 --steps 20 [--threads 2]
"""
import argparse
import json
import os
import resource
import time

import numpy as np
import onnxruntime as ort


def summarize(trace, runs, out):
    """Per node of onnxruntime's profile: its op type and mean µs per run."""
    with open(trace) as f:
        events = json.load(f)
    nodes = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            op = e.get("args", {}).get("op_name", "?")
            n = nodes.setdefault(name, {"node": name, "op": op, "us": 0.0})
            n["us"] += e["dur"] / runs
    os.remove(trace)
    with open(out, "w") as f:
        json.dump(sorted(nodes.values(), key=lambda n: -n["us"]), f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--profile", help="write onnxruntime's own per-node profile, summed over the runs, as JSON here")
    a = ap.parse_args()
    o = ort.SessionOptions()
    o.intra_op_num_threads = a.threads
    o.inter_op_num_threads = 1
    # All graph optimizations (the default of recent releases, set so that the table can say so).
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if a.profile:
        o.enable_profiling = True
    s = ort.InferenceSession(a.model, o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    i = np.arange(a.batch * 3 * 224 * 224, dtype=np.int64)
    x = (((i * 7919) % 1000) / 500.0 - 1.0).astype(np.float32).reshape(a.batch, 3, 224, 224)
    s.run(None, {name: x})
    s.run(None, {name: x})
    t = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        s.run(None, {name: x})
        t.append(time.perf_counter() - t0)
    t.sort()
    ms = t[len(t) // 2] * 1e3
    if a.profile:
        summarize(s.end_profiling(), a.steps + 2, a.profile)
    print(json.dumps({"engine": "onnxruntime", "version": ort.__version__, "batch": a.batch, "median_ms": ms,
                      "images_per_s": a.batch / ms * 1e3, "threads": a.threads,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main()
