#!/usr/bin/env python3
"""Runs the models that tests/export.rs exported (EDGEPATCH_EXPORT_DIR) in onnxruntime and
compares their logits with edgepatch's.

    EDGEPATCH_EXPORT_DIR=/tmp/x cargo test --release -p edgepatch-tests --test export
    cache/venv/bin/python tools/check_export.py /tmp/x
"""
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main():
    d = Path(sys.argv[1])
    models = sorted(d.glob("*.onnx"))
    if not models:
        sys.exit(f"no exported models in {d}")
    for m in models:
        stem = m.name[: -len(".onnx")]
        x = np.fromfile(d / f"{stem}.input.f32", dtype="<f4").reshape(2, 3, 64, 64)
        want = np.fromfile(d / f"{stem}.logits.f32", dtype="<f4").reshape(2, -1)
        s = ort.InferenceSession(str(m), providers=["CPUExecutionProvider"])
        got = s.run(None, {"input": x})[0]
        err = np.abs(got - want).max()
        tol = 1e-4 + 1e-4 * np.abs(want).max()
        print(f"{stem}: onnxruntime {ort.__version__} logits {got.shape}, max |difference| {err:.2e} (tolerance {tol:.1e})")
        if got.shape != want.shape or not err <= tol:
            sys.exit(f"{stem}: onnxruntime disagrees with edgepatch")
        meta = s.get_modelmeta().custom_metadata_map
        assert meta["edgepatch.kinds"] == stem, meta


if __name__ == "__main__":
    main()
