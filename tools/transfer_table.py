#!/usr/bin/env python3
"""The transfer table: for each task and patch kind, a small learning-rate sweep with
`edgepatch train --json`, the best rate chosen on held-out *training* images (--validate), and
that run's test accuracy, size, wall time and peak memory. Writes docs/transfer.md.

    cargo build --release -p edgepatch-cli
    apt-get install -y dataset-fashion-mnist && bash tools/datasets/build.sh
    python3 tools/transfer_table.py [--tasks fashion,digits,faces]
    bash models/efficientnet_lite0/build.sh && python3 tools/transfer_table.py \
        --model cache/efficientnet_lite0_int8.onnx --name "EfficientNet-Lite0" \
        --out docs/transfer_efficientnet_lite0.md
    bash models/mobilenet_v3/build.sh && python3 tools/transfer_table.py --tasks digits,fashion \
        --model cache/mobilenet_v3_ppocr_cls.onnx --name "MobileNetV3 (PaddleOCR text direction)" \
        --out docs/transfer_mobilenet_v3.md

Each run's JSON is kept in cache/transfer/ (cache/transfer/MODEL-FILE-STEM/ for --model) and
reused when the script is run again (delete the folder to start over), so an interrupted table
resumes where it stopped.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from tablelib import cpu_name

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGEPATCH_CACHE", ROOT / "cache"))
FASHION = "/usr/share/datasets/fashion-mnist"

TASKS = {
    "fashion": dict(
        title="Fashion-MNIST",
        train=f"idx:{FASHION}/train", test=f"idx:{FASHION}/t10k",
        args=["--limit", "10000", "--validate", "2000", "--epochs", "2"],
        about="10,000 training images (seeded shuffle of the 60,000) for 2 epochs, 2,000 other "
              "training images held out to choose the learning rate, the full 10,000-image test set",
    ),
    "digits": dict(
        title="Digits (scikit-learn)",
        train=f"folder:{CACHE}/datasets/digits/train", test=f"folder:{CACHE}/datasets/digits/test",
        args=["--validate", "200", "--epochs", "5"],
        about="1,097 training images for 5 epochs, 200 held out to choose the learning rate, 500 test images",
    ),
    "faces": dict(
        title="Faces vs non-faces (scikit-image LFW subset)",
        train=f"folder:{CACHE}/datasets/faces/train", test=f"folder:{CACHE}/datasets/faces/test",
        args=["--validate", "30", "--epochs", "10", "--batch", "16"],
        about="110 training images for 10 epochs (batch 16), 30 held out to choose the learning rate, 60 test images",
    ),
}

SWEEP = {
    "logits": [0.01, 0.03, 0.1],
    "bias+logits": [0.001, 0.003, 0.01],
    "sb+logits": [0.001, 0.003, 0.01],
    "dw+logits": [0.001, 0.003, 0.01],
    "full": [0.0003, 0.001, 0.003],
}
# Swept only for backbones with squeeze-excitation (`edgepatch info`: patchable se > 0).
SWEEP_SE = {
    "se+logits": [0.001, 0.003, 0.01],
    "sb+se+logits": [0.001, 0.003, 0.01],
}


def run(binary, task, kinds, lr, resolution, seed, model=None):
    t = TASKS[task]
    base = CACHE / "transfer" if model is None else CACHE / "transfer" / Path(model).stem
    out = base / task / f"{kinds}-{lr}.json"
    if out.exists():
        return json.loads(out.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    patch = out.with_suffix(".patch")
    cmd = [str(binary), "train", "--train", t["train"], "--test", t["test"], "--patch", kinds,
           "--lr", str(lr), "--resolution", str(resolution), "--seed", str(seed),
           "--out", str(patch), "--json", *t["args"]]
    if model is not None:
        cmd += ["--model", str(model)]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"})
    if p.returncode != 0:
        r = {"patch": kinds, "lr": lr, "error": p.stderr.strip().splitlines()[-1]}
    else:
        r = json.loads(p.stdout)
    out.write_text(json.dumps(r, indent=1))
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="fashion,digits,faces")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--binary", default=str(ROOT / "target/release/edgepatch"))
    ap.add_argument("--model", help="an ONNX backbone instead of the shipped int8 MobileNetV2")
    ap.add_argument("--name", default="MobileNetV2", help="the backbone's name in the text")
    ap.add_argument("--out", default=str(ROOT / "docs/transfer.md"))
    ap.add_argument("--kinds", help="only these patch kinds (comma-separated), instead of every swept one")
    ap.add_argument("--extend", action="store_true",
                    help="also try 3x the largest rate of each sweep (for backbones far from the task)")
    a = ap.parse_args()
    info_cmd = [a.binary, "info", "--json"] + (["--model", a.model] if a.model else [])
    info = json.loads(subprocess.run(info_cmd, capture_output=True, text=True, check=True).stdout)
    backbone = ("the shipped int8 MobileNetV2" if a.model is None
                else f"{a.name} (`{os.path.relpath(a.model, ROOT)}`, {info['weights']} weights)")
    command = f"python3 tools/transfer_table.py --tasks {a.tasks}" + (f" --kinds {a.kinds}" if a.kinds else "") + (
        " --extend" if a.extend else "") + (
        f" --model {os.path.relpath(a.model, ROOT)} --name \"{a.name}\" --out {os.path.relpath(a.out, ROOT)}"
        if a.model else "")
    model_params = info["params"]
    md = [
        "# The transfer table" + ("" if a.model is None else f": {a.name}"),
        "",
        f"Patches learned on the CPU over {backbone} "
        f"({model_params:,} parameters, fingerprint `{info['fingerprint']}`), "
        f"at {a.resolution}×{a.resolution} px (grayscale replicated to RGB, ImageNet normalisation), "
        f"SGD with momentum 0.9, batch 32 unless stated, 5% warm-up then cosine decay, gradient norm clipped at 5, "
        f"seed {a.seed}, no augmentation. For each patch kind the learning rate is the best of a "
        f"{'four' if a.extend else 'three'}-point sweep by accuracy on held-out training images (never the test set); the table shows that run. "
        "`full` trains every weight (BatchNorm folded and frozen as the affine, whose scale and bias it also trains).",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, both used. Generated "
        f"{datetime.date.today().isoformat()} by `{command}` "
        "(see the script's header for the set-up).",
        "",
    ]
    for task in a.tasks.split(","):
        t = TASKS[task]
        md += [f"## {t['title']}", "", t["about"] + ".", "",
               "| patch | trainable | % of model | patch bytes | lr (swept) | validation acc | **test acc** | train s | img/s | peak RSS MB |",
               "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        sweep = {**SWEEP, **(SWEEP_SE if info["patchable"].get("se", 0) > 0 else {})}
        if a.kinds:
            sweep = {k: v for k, v in sweep.items() if k in a.kinds.split(",")}
        if a.extend:
            sweep = {k: v + [round(3 * v[-1], 6)] for k, v in sweep.items()}
        for kinds, lrs in sweep.items():
            results = [run(a.binary, task, kinds, lr, a.resolution, a.seed, a.model) for lr in lrs]
            ok = [r for r in results if "error" not in r]
            if not ok:
                md.append(f"| {kinds} | | | | | | failed: {results[0]['error']} | | | |")
                continue
            best = max(ok, key=lambda r: (r["validation_accuracy"], -r["lr"]))
            swept = ", ".join(
                (f"**{r['lr']:g}**" if r is best else f"{r['lr']:g}")
                + (f" ({r['validation_accuracy']:.3f})" if "error" not in r else " (diverged)")
                for r in results)
            md.append(
                f"| {kinds} | {best['patch_params']:,} | {100 * best['patch_params'] / model_params:.2f}% | "
                f"{best['patch_bytes']:,} | {swept} | {best['validation_accuracy']:.4f} | **{best['test_accuracy']:.4f}** | "
                f"{best['seconds']:.0f} | {best['images_per_second']:.1f} | {best['peak_rss_bytes'] / 2**20:.0f} |")
        md.append("")
    Path(a.out).write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
