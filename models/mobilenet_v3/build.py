"""MobileNetV3 from rapidocr-onnxruntime 1.4.4: the model out of the wheel (sha256-checked) into
the cache, onnxruntime's outputs on fixed inputs checked against (or, the first time, written to)
reference/expected.json, and MANIFEST.

The inputs are computed, not stored, so the Rust tests make the same ones:
x[i] = 2 * sin(0.01 * i + seed) over the flattened NCHW tensor (f32, i from 0)."""

import argparse
import hashlib
import os
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reference import check_or_write, sha256, sine_inputs  # noqa: E402

WHEEL_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
MODEL_IN_WHEEL = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
MODEL_SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
OUT_NAME = "mobilenet_v3_ppocr_cls.onnx"
# The classifier's output before the final Softmax.
LOGITS = "linear_1.tmp_1"
# (shape, seed): the classifier's own 48x192 text lines, and square inputs as edgepatch trains on.
CASES = [([1, 3, 48, 192], 0), ([2, 3, 64, 64], 1), ([1, 3, 224, 224], 2)]


def run(model_bytes, x):
    """Probabilities (the model's output) and logits (the Softmax's input)."""
    m = onnx.load_from_string(model_bytes)
    m.graph.output.append(onnx.helper.make_tensor_value_info(LOGITS, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    probs, logits = s.run(None, {s.get_inputs()[0].name: x})
    return probs, logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--reference", required=True)
    a = ap.parse_args()
    if sha256(a.wheel) != WHEEL_SHA256:
        sys.exit(f"{a.wheel}: sha256 differs from {WHEEL_SHA256}")
    model = zipfile.ZipFile(a.wheel).read(MODEL_IN_WHEEL)
    if hashlib.sha256(model).hexdigest() != MODEL_SHA256:
        sys.exit(f"{MODEL_IN_WHEEL}: sha256 differs from {MODEL_SHA256}")
    out = os.path.join(a.cache, OUT_NAME)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model)
    os.replace(tmp, out)

    got = {}
    for shape, seed in CASES:
        probs, logits = run(model, sine_inputs(shape, seed))
        key = "x".join(map(str, shape)) + f" seed {seed}"
        got[key] = {
            "logits": [round(float(v), 6) for v in logits.reshape(-1)],
            "probs": [round(float(v), 6) for v in probs.reshape(-1)],
        }
    about = (
        "onnxruntime " + ort.__version__ + " (CPU) on " + MODEL_IN_WHEEL + " from rapidocr-onnxruntime 1.4.4. "
        "Inputs x[i] = 2*sin(0.01*i + seed) over the flattened NCHW tensor (f32). logits: the Softmax's input "
        f"'{LOGITS}'; probs: the model's output. Classes: 0 = text upright, 1 = rotated 180 degrees."
    )
    check_or_write(os.path.join(a.reference, "expected.json"), about, got, 2e-5)

    manifest = f"""# MobileNetV3 (PaddleOCR ch_ppocr_mobile_v2.0_cls), edgepatch's third backbone (written by build.py; do not edit)

sources:
  model: PyPI rapidocr-onnxruntime==1.4.4, file {MODEL_IN_WHEEL}
licences:
  model: Apache-2.0 (PaddleOCR, PaddlePaddle authors; rapidocr-onnxruntime, RapidAI)
inputs:
  wheel: {os.path.basename(a.wheel)}  sha256 {WHEEL_SHA256}  {os.path.getsize(a.wheel)} bytes
outputs (cache, not committed):
  f32: {OUT_NAME}  sha256 {MODEL_SHA256}  {len(model)} bytes
format:
  ONNX opset 11 (Paddle export: weights as Constant nodes, HardSwish as x*Clip(x+3,0,6)/6,
  squeeze-excitation with HardSigmoid, MaxPool 2x2, a Shape/Slice/Concat flatten, MatMul, Softmax);
  input 'x' f32 [N,3,H,W] (trained on 48x192 text lines, (x/255 - 0.5)/0.5); output probabilities
  [N,2] (edgepatch takes the Softmax's input, the logits).
rebuild:
  bash models/mobilenet_v3/build.sh   (needs only the package registries)
"""
    with open(os.path.join(os.path.dirname(a.reference), "MANIFEST"), "w") as f:
        f.write(manifest)


if __name__ == "__main__":
    main()
