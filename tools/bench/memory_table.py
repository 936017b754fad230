#!/usr/bin/env python3
"""Training under a memory budget, side by side: for every patch kind at 224 px, batch 16, the
plan `edgepatch train --memory-budget MB` chooses (samples per pass, predicted peak increase),
the measured peak resident memory of the whole process and the training throughput, beside
the unconstrained run and PyTorch's peak for the same kind (tools/bench/torch_bench.py).

    python3 tools/bench/memory_table.py [--bin target/release/edgepatch] [--torch] [--svg OUT.svg]
    python3 tools/bench/memory_table.py --from-table TABLE.md --svg OUT.svg   # redraw a saved run

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
# A budget in MB, None (unconstrained), or "recompute" (no budget, --recompute: its time cost).
BUDGETS = [None, "recompute", 300, 150, 100, 80]


def train(binary, kinds, budget, out):
    data = "idx:" + os.path.join(ROOT, "models/datasets/fashion-mnist-mini/train")
    args = [binary, "train", "--train", data, "--patch", kinds, "--out", out, "--limit", "64", "--epochs", "1",
            "--batch", "16", "--resolution", "224", "--device", "cpu", "--json"]
    if budget == "recompute":
        args += ["--recompute"]
    elif budget is not None:
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


COLOURS = {"logits": "#1b9e77", "bias+logits": "#d95f02", "sb+logits": "#7570b3", "dw+logits": "#e7298a",
           "sb+dw+logits": "#66a61e", "full": "#a6761d"}


def parse_table(text):
    """The trained rows of a printed table: (kind, budget, peak MB, images/s); a table of the
    older layout (no recompute column) reads too."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or cells[0] not in COLOURS or cells[2].startswith("refused"):
            continue
        at = 5 if cells[3] in ("yes", "no") else 4
        rows.append((cells[0], cells[1], float(cells[at]), float(cells[at + 1])))
    return rows


def svg(rows, path):
    """Peak resident memory against the time per image of a step (batch 16, 224 px), one colour
    per patch kind, points joined from the tightest budget to none; a hollow point is the whole
    batch with --recompute."""
    w, h, left, bottom = 720, 420, 70, 50
    xmax = max(r[2] for r in rows) * 1.05
    ymax = max(1000.0 / r[3] for r in rows) * 1.1
    X = lambda v: left + v / xmax * (w - left - 20)
    Y = lambda v: h - bottom - v / ymax * (h - bottom - 20)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (w, h),
           '<rect width="100%" height="100%" fill="white"/>',
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (left, h - bottom, w - 20, h - bottom),
           '<line x1="%d" y1="%d" x2="%d" y2="20" stroke="black"/>' % (left, h - bottom, left)]
    for t in range(0, int(xmax) + 1, 100):
        out.append('<text x="%.0f" y="%d" text-anchor="middle">%d</text>' % (X(t), h - bottom + 16, t))
    step = 5 if ymax < 60 else 10
    for t in range(0, int(ymax) + 1, step):
        out.append('<text x="%d" y="%.0f" text-anchor="end">%d</text>' % (left - 6, Y(t) + 4, t))
    out.append('<text x="%d" y="%d" text-anchor="middle">peak resident memory of the process (MB)</text>' % ((w + left) // 2, h - 12))
    out.append('<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">ms per image (1000 / images/s)</text>' % (h // 2, h // 2))
    for i, (kind, colour) in enumerate(COLOURS.items()):
        pts = [(X(r[2]), Y(1000.0 / r[3])) for r in rows if r[0] == kind and r[1] != "recompute"]
        forced = [(X(r[2]), Y(1000.0 / r[3])) for r in rows if r[0] == kind and r[1] == "recompute"]
        if not pts:
            continue
        out.append('<polyline fill="none" stroke="%s" points="%s"/>' % (colour, " ".join("%.1f,%.1f" % p for p in pts)))
        out += ['<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>' % (x, y, colour) for x, y in pts]
        out += ['<circle cx="%.1f" cy="%.1f" r="4" fill="white" stroke="%s"/>' % (x, y, colour) for x, y in forced]
        out.append('<text x="%d" y="%d" fill="%s">%s</text>' % (w - 150, 40 + 16 * i, colour, kind))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/edgepatch"))
    ap.add_argument("--torch", action="store_true", help="also run PyTorch (Debian's python3-torch) per kind")
    ap.add_argument("--svg", help="also draw peak memory against time per image into this file")
    ap.add_argument("--from-table", help="draw the plot from a table this script printed, without running")
    a = ap.parse_args()
    if a.from_table:
        with open(a.from_table) as f:
            svg(parse_table(f.read()), a.svg)
        return
    tmp = tempfile.mkdtemp(prefix="edgepatch-memory-")
    torch = {}
    if a.torch:
        graph = os.path.join(tmp, "graph")
        bench = os.path.join(os.path.dirname(a.bin), "edgepatch-bench")
        subprocess.run([bench, "dump-graph", "--out", graph], check=True, capture_output=True)
        for k in KINDS:
            torch[k] = torch_peak(k, graph)
    lines = []
    emit = lambda line: (print(line), lines.append(line), sys.stdout.flush())
    emit("| patch | budget (MB) | samples per pass | recompute | predicted increase (MB) | measured peak (MB) | "
         "images/s | PyTorch peak (MB) |")
    emit("|---|---:|---:|---|---:|---:|---:|---:|")
    for k in KINDS:
        for b in BUDGETS:
            r = train(a.bin, k, b, os.path.join(tmp, "p.patch"))
            t = torch.get(k)
            tp = "%.0f" % (t["peak_rss_bytes"] / 1e6) if t else ""
            if "error" in r:
                emit("| %s | %s | refused: %s | | | | | %s |" % (k, b or "none", r["error"][:90], tp))
                continue
            p = r["memory_plan"] or {}
            emit("| %s | %s | %s | %s | %.0f | %.0f | %.1f | %s |" % (
                k, b or "none", p.get("micro_batch", ""), "yes" if p.get("recompute") else "no",
                p.get("predicted_bytes", 0) / 1e6, r["peak_rss_bytes"] / 1e6, r["images_per_second"], tp))
    if a.svg:
        svg(parse_table("\n".join(lines)), a.svg)


if __name__ == "__main__":
    main()
