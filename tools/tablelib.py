"""Helpers shared by the table scripts (transfer_table.py, f16_table.py, multitask_table.py)."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def run_json(cmd):
    """Runs `cmd` (logged to stderr, RUST_LOG=warn) and returns its stdout parsed as JSON; exits
    with its stderr when it fails."""
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"})
    if p.returncode != 0:
        sys.exit(f"failed: {p.stderr.strip()}")
    return json.loads(p.stdout)


def cached_json(out, cmd):
    """`cmd`'s JSON output (see run_json), kept in the file `out` and read from there when it
    exists, so that an interrupted table resumes where it stopped."""
    out = Path(out)
    if out.exists():
        return json.loads(out.read_text())
    r = run_json(cmd)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1))
    return r


def cpu_name():
    """This machine's CPU model name."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"
