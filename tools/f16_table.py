#!/usr/bin/env python3
"""The accuracy cost of storing patch values as f16 (docs/f16.md).

Takes the patches of the transfer table (cache/transfer/TASK/KINDS-LR.patch, the learning rate
that table chose by validation accuracy), stores each again with f16 values
(`edgepatch store add … --values f16`), and scores both files on the task's test set with
`edgepatch eval`.

    python3 tools/transfer_table.py      # once: trains the patches into cache/transfer
    python3 tools/f16_table.py [--binary target/release/edgepatch]
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tablelib import cpu_name, run_json as run  # noqa: E402
from transfer_table import CACHE, ROOT, SWEEP, TASKS  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target/release/edgepatch"))
    ap.add_argument("--tasks", default="digits,faces,fashion")
    ap.add_argument("--out", default=str(ROOT / "docs/f16.md"))
    a = ap.parse_args()
    store = CACHE / "f16" / "store"
    L = ["# f16 patch values", ""]
    L.append(f"Machine: {cpu_name()}. Generated {datetime.date.today()} by `python3 tools/f16_table.py`: the "
             "patches of [the transfer table](transfer.md) stored a second time with f16 values "
             "(`edgepatch store add STORE NAME FILE --values f16`, round to nearest even) and both files scored "
             "on the task's test set with `edgepatch eval`.")
    for task in a.tasks.split(","):
        t = TASKS[task]
        L += ["", f"## {t['title']}", "",
              "| patch | f32 bytes | f16 bytes | f32 test acc | f16 test acc | Δ (points) | predictions changed |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for kinds, rates in SWEEP.items():
            runs = []
            for lr in rates:
                j = CACHE / "transfer" / task / f"{kinds}-{lr}.json"
                if j.exists():
                    r = json.loads(j.read_text())
                    if "error" not in r:
                        runs.append((lr, r))
            if not runs:
                sys.exit(f"no transfer-table runs for {task} {kinds}: run tools/transfer_table.py first")
            lr, best = max(runs, key=lambda x: (x[1]["validation_accuracy"], -x[0]))
            f32 = CACHE / "transfer" / task / f"{kinds}-{lr}.patch"
            name = f"{task}-{kinds.replace('+', '_')}"
            entry = run([a.binary, "store", "add", str(store), name, str(f32), "--values", "f16", "--json"])
            f16 = store / entry["file"]
            ev = [run([a.binary, "eval", "--test", t["test"], "--patch", str(p), "--device", "cpu", "--json"])
                  for p in (f32, f16)]
            changed = sum(abs(a_ - b_) for ra, rb in zip(ev[0]["confusion"], ev[1]["confusion"])
                          for a_, b_ in zip(ra, rb)) // 2
            L.append(f"| {kinds} | {f32.stat().st_size:,} | {entry['bytes']:,} | {ev[0]['accuracy']:.4f} | "
                     f"{ev[1]['accuracy']:.4f} | {100 * (ev[1]['accuracy'] - ev[0]['accuracy']):+.2f} | "
                     f"≥ {changed} of {ev[0]['images']:,} |")
    L += ["", "“predictions changed” is a lower bound from the two confusion matrices (half the summed "
          "absolute cell differences)."]
    Path(a.out).write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
