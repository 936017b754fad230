#!/usr/bin/env python3
"""Side-by-side benchmarks on this machine, in one run: CPU training of patches (edgepatch vs
PyTorch on the same network and weights), inference (edgepatch vs tract-onnx vs onnxruntime
vs PyTorch), and patch load / switch times. Every configuration runs in a fresh process, so
each peak resident memory is that engine's alone. Writes the tables into BENCHMARKS.md between
the `side-by-side` markers and prints them.

    bash tools/bench/run.sh [--quick]      # installs the peers, builds, then runs this

Options: --quick (a smoke: one kind, small batches and images, one timed step), --steps N
(timed training steps per configuration, default 5), --reps N (inference runs, default 20 at
batch 1 and a quarter of that at batch 16), --rounds N (inference rounds alternating the
engines, default 3), --no-write.
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGEPATCH_CACHE", ROOT / "cache"))
# Cargo's build directory (CARGO_TARGET_DIR when set, as .ci/run sets it).
BENCH = (ROOT / os.environ.get("CARGO_TARGET_DIR", "target")).resolve() / "release/edgepatch-bench"
INT8 = ROOT / "models/mobilenet_v2/mobilenet_v2_int8.onnx"
TORCH_PY = "/usr/bin/python3"
VENV_PY = str(CACHE / "venv/bin/python")


def run(cmd, env=None):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(str(c) for c in cmd)}\n{p.stderr.strip()}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{") or line.startswith("[")]


def cpu():
    name = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    flags = Path("/proc/cpuinfo").read_text()
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {os.cpu_count()} logical CPUs ({simd})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    graph = CACHE / "bench" / "graph"
    run([BENCH, "dump-graph", "--out", graph])
    check = run([TORCH_PY, ROOT / "tools/bench/torch_bench.py", graph, "--check"])[0]
    torch_version = run([TORCH_PY, "-c", "import json, torch; print(json.dumps({'v': torch.__version__}))"])[0]["v"]
    if a.quick:
        kinds, batches, sizes, steps, reps = ["sb+logits"], [2], [64], 1, 2
    else:
        kinds, batches, sizes, steps, reps = ["sb+logits", "dw+logits", "bias+logits", "logits"], [8, 16, 32], [224, 128], a.steps, a.reps
    train = []
    for res in sizes:
        for b in batches:
            for k in kinds:
                ep = run([BENCH, "train", "--kinds", k, "--batch", b, "--resolution", res, "--reps", steps])[0]
                pt = run([TORCH_PY, ROOT / "tools/bench/torch_bench.py", graph, "--train", k, "--batch", b,
                          "--resolution", res, "--steps", steps])[0]
                train.append((k, b, res, ep, pt))
    # Inference: every engine in the configuration its users deploy, alternating engine by engine
    # for `rounds` rounds (this machine is noisy); each cell is the median of the rounds' medians.
    f32 = CACHE / "mobilenet_v2_f32.onnx"
    engines = {
        "edgepatch": lambda b, r: [BENCH, "run", "--engine", "edgepatch-int8", "--batch", b, "--reps", r],
        "ort-f32": lambda b, r: [VENV_PY, ROOT / "tools/bench/ort_bench.py", f32, "--batch", b, "--steps", r],
        "ort-int8": lambda b, r: [VENV_PY, ROOT / "tools/bench/ort_bench.py", INT8, "--batch", b, "--steps", r],
        "tract-f32": lambda b, r: [BENCH, "run", "--engine", "tract", "--model", f32, "--batch", b, "--reps", r],
        "tract-int8": lambda b, r: [BENCH, "run", "--engine", "tract", "--model", INT8, "--batch", b, "--reps", r],
        "torchscript": lambda b, r: [TORCH_PY, ROOT / "tools/bench/torch_bench.py", graph, "--infer", "--batch", b,
                                     "--steps", r],
    }
    rounds = 1 if a.quick else a.rounds
    infer = []
    for b in [1, 16]:
        r = reps if b == 1 else max(3, reps // 4)
        seen = {k: [] for k in engines}
        for _ in range(rounds):
            for k, cmd in engines.items():
                seen[k].append(run(cmd(b, r))[0])
        row = {}
        for k, results in seen.items():
            ms = sorted(x["median_ms"] for x in results)
            row[k] = {**results[0], "median_ms": ms[len(ms) // 2], "all_ms": ms,
                      "peak_rss_bytes": max(x["peak_rss_bytes"] for x in results)}
        infer.append((b, row))
    pointwise = [run([BENCH, "pointwise", "--batch", b, "--resolution", 64 if a.quick else 224,
                      "--reps", 2 if a.quick else 5])[0] for b in ([2] if a.quick else [16, 1])]
    switch = run([BENCH.parent / "patch_switch", "--kinds", "sb+logits", "--reps", 20 if a.quick else 200, "--json"])
    switch = switch[-1] if isinstance(switch[-1], list) else []

    cmd = "bash tools/bench/run.sh" + (" --quick" if a.quick else "")
    L = [f"Machine: {cpu()}. {datetime.date.today()}, `{cmd}` (each configuration a fresh process; medians). "
         f"Peers: PyTorch {torch_version} (Debian's python3-torch, {os.cpu_count()} threads), onnxruntime "
         f"(PyPI, {os.cpu_count()} intra-op threads), tract-onnx 0.23.9 (single-threaded, its default); edgepatch uses "
         f"rayon's pool ({os.cpu_count()} threads). PyTorch runs the same network with the same weights "
         f"(`edgepatch-bench dump-graph`; its logits differ from edgepatch's by at most {check['max_abs_diff']:.1e}).",
         "",
         "### Training a patch on the CPU (images/s and peak resident memory; ratio = edgepatch / PyTorch)",
         "",
         f"{steps} timed step{'s' if steps > 1 else ''} after 2 warm-ups on a fixed random batch, 10 classes; SGD momentum 0.9, gradient "
         "norm clipped at 5; BatchNorm in eval mode (edgepatch: the folded affine); `requires_grad` only on the "
         "patch's parameters. A step is forward, backward and update (for `logits`, the frozen features too). "
         f"PyTorch {torch_version} is Debian's build (Debian ships 1.13, not a current release), in eager mode, how "
         "PyTorch users train; its own intra-op thread pool on every core. TensorFlow-CPU and onnxruntime-training "
         "are not in this table yet.",
         "",
         "| patch | batch | px | edgepatch img/s | PyTorch img/s | speed ratio | edgepatch MB | PyTorch MB | memory ratio |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, b, res, ep, pt in train:
        L.append(f"| {k} | {b} | {res} | {ep['images_per_s']:.1f} | {pt['images_per_s']:.1f} | "
                 f"{ep['images_per_s'] / pt['images_per_s']:.2f}× | {ep['peak_rss_bytes'] / 1e6:.0f} | "
                 f"{pt['peak_rss_bytes'] / 1e6:.0f} | {ep['peak_rss_bytes'] / pt['peak_rss_bytes']:.2f} |")
    L += ["", "### Inference, MobileNetV2, 224 px (ms; ratio = edgepatch / engine: below 1 is edgepatch faster)", "",
          f"Each engine as its users deploy it, alternating engine by engine for {rounds} round(s); a cell is the "
          "median of the rounds' medians (the spread of the rounds in brackets). Configurations:", "",
          "- **edgepatch**: the shipped int8 model (int8 weights, f32 arithmetic), the blocked-channel CPU engine, "
          "rayon's pool.",
          "- **onnxruntime f32**: the f32 model (`cache/mobilenet_v2_f32.onnx`), CPU provider, "
          "`ORT_ENABLE_ALL` graph optimizations, all cores as intra-op threads: how most onnxruntime users deploy.",
          "- **onnxruntime int8**: the shipped QDQ file (weight-only DequantizeLinear, which onnxruntime does not fuse: "
          "its slow path, shown for completeness).",
          "- **tract f32 / int8**: tract-onnx 0.23.9 on each file, optimized plan (`into_optimized`), single-threaded "
          "(its only mode).",
          f"- **PyTorch**: {torch_version} (Debian's python3-torch; 1.13 is what Debian ships), the same weights "
          "dequantized, traced and frozen TorchScript with `optimize_for_inference`, all cores.", "",
          "| batch | edgepatch | onnxruntime f32 | onnxruntime int8 | tract f32 | tract int8 | PyTorch TorchScript | "
          "peak MB (edgepatch / ort f32 / torch) |",
          "|---:|---:|---:|---:|---:|---:|---:|---|"]
    spread = lambda x: f"{x['all_ms'][0]:.1f}–{x['all_ms'][-1]:.1f}"
    for b, row in infer:
        e = row["edgepatch"]["median_ms"]
        cells = [f"{row[k]['median_ms']:.1f} [{spread(row[k])}] ({e / row[k]['median_ms']:.2f}×)"
                 for k in ["ort-f32", "ort-int8", "tract-f32", "tract-int8", "torchscript"]]
        mem = " / ".join(f"{row[k]['peak_rss_bytes'] / 1e6:.0f}" for k in ["edgepatch", "ort-f32", "torchscript"])
        L.append(f"| {b} | {e:.1f} [{spread(row['edgepatch'])}] | {' | '.join(cells)} | {mem} |")
    L += ["", "### The 1×1 convolutions against this machine's peak f32 rate", "",
          "`edgepatch-bench pointwise`: every 1×1 layer of the shipped model, forward and input gradient (what an "
          "S/B step runs for it), on all threads, as in a training step (buffers recycled). Peak: "
          "`simd::fma_burst` on every thread at once, the best of 5 (independent multiply-add chains in "
          "12 registers: AVX-512 = 16-lane FMAs, AVX2 = 8-lane FMAs). The GEMM (`simd::gemm_block`) runs AVX-512 register tiles on an AVX-512 CPU.", "",
          "| batch | px | GFLOP | ms | GFLOP/s | peak AVX-512 | peak AVX2 | fraction of AVX-512 peak | fraction of AVX2 peak |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    na = lambda v, f: "n/a" if v is None else format(v, f)
    for p in pointwise:
        L.append(f"| {p['batch']} | {p['resolution']} | {p['gflop']:.2f} | {p['median_ms']:.1f} | {p['gflops']:.1f} | "
                 f"{na(p['peak_avx512_gflops'], '.0f')} | {na(p['peak_avx2_gflops'], '.0f')} | "
                 f"{na(p['fraction_of_avx512_peak'], '.2f')} | {na(p['fraction_of_avx2_peak'], '.2f')} |")
    if switch:
        L += ["", "### Patch load and switch (`sb+logits`, 10 classes; µs)", "", "| operation | bytes | median | fastest |",
              "|---|---:|---:|---:|"]
        for r in switch:
            L.append(f"| {r['operation']} | {r['bytes'] or ''} | {r['median_us']:.1f} | {r['fastest_us']:.1f} |")
    text = "\n".join(L)
    print(text)
    if a.no_write:
        return
    path = ROOT / "BENCHMARKS.md"
    doc = path.read_text()
    start, end = "<!-- side-by-side:start -->", "<!-- side-by-side:end -->"
    block = f"{start}\n{text}\n{end}"
    if start in doc:
        doc = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n## Side by side: training, inference, patch switching\n\n" + block + "\n"
    path.write_text(doc)


if __name__ == "__main__":
    main()
