"""Shared by the model build scripts: a file's digest, the inputs the Rust tests make too, and
onnxruntime's outputs checked against a committed reference file (written the first time)."""

import hashlib
import json
import os
import sys

import numpy as np


def sha256(path):
    """The hex SHA-256 of the file at `path`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sine_inputs(shape, seed):
    """x[i] = 2 * sin(0.01 * i + seed) over the flattened NCHW tensor (f32, i from 0)."""
    i = np.arange(int(np.prod(shape)), dtype=np.float64)
    return (2.0 * np.sin(0.01 * i + seed)).astype(np.float32).reshape(shape)


def check_or_write(path, about, got, tolerance):
    """`got` (case -> field -> list of floats) against the JSON at `path` (each field within
    `tolerance`), or written there with `about` when there is none yet."""
    if os.path.exists(path):
        want = json.load(open(path))
        for key, fields in got.items():
            for field, values in fields.items():
                d = np.abs(np.array(values) - np.array(want[key][field])).max()
                if d > tolerance:
                    sys.exit(f"{key} {field}: onnxruntime now differs from the committed reference by {d}")
        print(f"onnxruntime matches {path}")
        return
    with open(path, "w") as f:
        json.dump({"_about": about, **got}, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")
