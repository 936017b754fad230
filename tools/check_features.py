#!/usr/bin/env python3
"""Fails when `maturin build` of the Python extension would compile shared crates anew.

maturin builds `bindings/python` alone, so Cargo resolves features for that package only; the
workspace build (`cargo test --workspace`) resolves them for every member. Where a crate both
use gets different features, maturin compiles it (and everything above it, tract and wgpu
included) a second time. This compares the two resolutions crate by crate and prints the
differences with the fix (name the feature in bindings/python/Cargo.toml).

    python3 tools/check_features.py
"""
import collections
import subprocess
import sys


def features(args):
    """{package id: set of features} from `cargo tree -e features`."""
    out = subprocess.run(
        ["cargo", "tree", "--prefix", "none", "--format", "{p}|{f}"] + args,
        capture_output=True, text=True, check=True,
    ).stdout
    found = collections.defaultdict(set)
    for line in out.splitlines():
        if "|" not in line:
            continue
        package, feats = line.replace(" (*)", "").split("|", 1)
        # Path packages print their directory: keep name and version.
        package = " ".join(package.split()[:2])
        found[package] |= {f for f in feats.split(",") if f}
    return found


def main():
    alone = features(["-p", "edgepatch-python", "-e", "normal,build"])
    workspace = features(["--workspace"])
    parted = [(p, workspace[p] - alone[p], alone[p] - workspace[p]) for p in sorted(alone)
              if p in workspace and alone[p] != workspace[p]]
    for package, extra, missing in parted:
        print(f"{package}: the workspace adds {sorted(extra)}, the extension alone adds {sorted(missing)}")
    if parted:
        print("maturin would compile these crates again: name the features in bindings/python/Cargo.toml",
              file=sys.stderr)
        return 1
    print(f"the Python extension's {len(alone)} crates resolve with the workspace's features")
    return 0


if __name__ == "__main__":
    sys.exit(main())
