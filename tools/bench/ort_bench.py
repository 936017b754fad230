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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    o = ort.SessionOptions()
    o.intra_op_num_threads = a.threads
    o.inter_op_num_threads = 1
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
    print(json.dumps({"engine": "onnxruntime", "version": ort.__version__, "batch": a.batch, "median_ms": ms,
                      "images_per_s": a.batch / ms * 1e3, "threads": a.threads,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main()
