"""The feature extractor of face-api's SSD-MobileNetV1 face detector as an ONNX backbone.

face-api (npm @vladmandic/face-api 1.7.15, model/ssd_mobilenetv1_model.*) ships TF.js weights
quantized to uint8 (value = q * scale + min; a few small tensors stored as float32 or int32). Its MobileNetV1 (dist/face-api.js):
  conv_0: conv2d 3x3 stride 2 'same' + batch_norm_offset, clip 0..6
  conv_1..13: depthwiseConv2d 3x3 'same' (stride 2 for 2, 4, 6, 12) + batchNorm(mean, variance,
    offset, scale, eps 0.0010000000474974513), clip 0..6; then a 1x1 conv2d + offset, clip 0..6
on input x/127.5 - 1. The ONNX model: a BatchNormalization that turns edgepatch's
ImageNet-normalised input into x/127.5 - 1, those layers (auto_pad SAME_UPPER, as TensorFlow
pads), GlobalAveragePool, Flatten and a placeholder 2-class Gemm of zeros (the detector has no
classifier; every experiment trains a new one, `logits`).

Checked here: the ONNX model under onnxruntime against a NumPy forward written from the TF.js
code above (independent of ONNX's conventions), and onnxruntime's features and logits against
reference/expected.json (written the first time)."""

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from reference import check_or_write, sha256, sine_inputs  # noqa: E402

TGZ_SHA256 = "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031"
OUT_NAME = "face_detector_mobilenet_v1.onnx"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float64)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float64)
BN_EPS = 0.0010000000474974513
STRIDE2 = {2, 4, 6, 12}
# (shape, seed): x[i] = 2 * sin(0.01 * i + seed) over the flattened NCHW tensor, as the Rust test.
CASES = [([1, 3, 64, 64], 0), ([2, 3, 45, 37], 1)]


def weights(tgz):
    """name -> dequantized float32 array (TF layouts), from the package's manifest and shard."""
    with tarfile.open(tgz) as t:
        manifest = json.load(t.extractfile("package/model/ssd_mobilenetv1_model-weights_manifest.json"))
        shard = t.extractfile("package/model/ssd_mobilenetv1_model.bin").read()
    out, at = {}, 0
    for group in manifest:
        for w in group["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            q = w.get("quantization")
            if q is None:  # stored as is: float32 or int32, 4 bytes each
                dtype = {"float32": np.float32, "int32": np.int32}[w["dtype"]]
                out[w["name"]] = np.frombuffer(shard, dtype, n, at).astype(np.float32).reshape(w["shape"])
                at += 4 * n
                continue
            if q["dtype"] != "uint8":
                sys.exit(f"{w['name']}: quantization {q['dtype']} unexpected")
            raw = np.frombuffer(shard, np.uint8, n, at).astype(np.float64)
            at += n
            out[w["name"]] = (raw * q["scale"] + q["min"]).astype(np.float32).reshape(w["shape"])
    if at != len(shard):
        sys.exit(f"the manifest covers {at} of the shard's {len(shard)} bytes")
    return out


def same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def np_conv(x, w, stride, depthwise):
    """TF conv2d / depthwiseConv2d, 'same' padding, x NCHW, w HWIO (HW C 1 for depthwise)."""
    n, c, h, wd = x.shape
    kh, kw = w.shape[:2]
    (pt, pb), (pl, pr) = same_pads(h, kh, stride), same_pads(wd, kw, stride)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh, ow = -(-h // stride), -(-wd // stride)
    co = c if depthwise else w.shape[3]
    y = np.zeros((n, co, oh, ow), np.float64)
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, :, ky:ky + stride * oh:stride, kx:kx + stride * ow:stride]
            if depthwise:
                y += patch * w[ky, kx, :, 0][None, :, None, None]
            else:
                y += np.einsum("nchw,co->nohw", patch, w[ky, kx])
    return y


def np_features(ws, x):
    """face-api's MobileNetV1 on ImageNet-normalised x (float64), then the global mean."""
    pixels = (x * IMAGENET_STD[None, :, None, None] + IMAGENET_MEAN[None, :, None, None]) * 255.0
    h = pixels * 0.007843137718737125 - 1.0
    p = "MobilenetV1/Conv2d_0_pointwise/"
    h = np.clip(np_conv(h, ws[p + "weights"], 2, False) + ws[p + "convolution_bn_offset"][None, :, None, None], 0, 6)
    for i in range(1, 14):
        d = f"MobilenetV1/Conv2d_{i}_depthwise/"
        h = np_conv(h, ws[d + "depthwise_weights"], 2 if i in STRIDE2 else 1, True)
        g, b = ws[d + "BatchNorm/gamma"], ws[d + "BatchNorm/beta"]
        m, v = ws[d + "BatchNorm/moving_mean"], ws[d + "BatchNorm/moving_variance"]
        h = (h - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + BN_EPS) * g[None, :, None, None]
        h = np.clip(h + b[None, :, None, None], 0, 6)
        pw = f"MobilenetV1/Conv2d_{i}_pointwise/"
        h = np_conv(h, ws[pw + "weights"], 1, False) + ws[pw + "convolution_bn_offset"][None, :, None, None]
        h = np.clip(h, 0, 6)
    return h.mean(axis=(2, 3))


def build(ws):
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def clip(x):
        nodes.append(helper.make_node("Clip", [x, "relu6_min", "relu6_max"], [x + ".relu6"], name=x + ".relu6"))
        return x + ".relu6"

    def conv(x, name, w_oihw, stride, group, bias=None):
        k = w_oihw.shape[-1]
        pad = {"auto_pad": "SAME_UPPER"} if k > 1 else {"pads": [0] * 4}
        ins = [x, const(name + ".weight", w_oihw)] + ([const(name + ".bias", bias)] if bias is not None else [])
        nodes.append(helper.make_node("Conv", ins, [name], name=name, kernel_shape=[k, k], strides=[stride] * 2,
                                      group=group, **pad))
        return name

    const("relu6_min", np.float32(0.0))
    const("relu6_max", np.float32(6.0))
    # ImageNet-normalised input to x/127.5 - 1: 2·std·x + 2·mean - 1 per channel.
    a, b = 2.0 * IMAGENET_STD, 2.0 * IMAGENET_MEAN - 1.0
    for name, v in (("input_norm.scale", a), ("input_norm.bias", b), ("input_norm.mean", 0 * a),
                    ("input_norm.var", 0 * a + 1)):
        const(name, v)
    nodes.append(helper.make_node(
        "BatchNormalization", ["input", "input_norm.scale", "input_norm.bias", "input_norm.mean", "input_norm.var"],
        ["input_norm"], name="input_norm", epsilon=0.0))
    p = "MobilenetV1/Conv2d_0_pointwise/"
    x = clip(conv("input_norm", "conv_0", ws[p + "weights"].transpose(3, 2, 0, 1), 2, 1,
                  ws[p + "convolution_bn_offset"]))
    for i in range(1, 14):
        d = f"MobilenetV1/Conv2d_{i}_depthwise/"
        dw = ws[d + "depthwise_weights"]
        c = dw.shape[2]
        y = conv(x, f"conv_{i}.depthwise", dw.transpose(2, 3, 0, 1), 2 if i in STRIDE2 else 1, c)
        bn = [const(f"conv_{i}.bn.{k}", ws[d + "BatchNorm/" + t]) for k, t in
              (("scale", "gamma"), ("bias", "beta"), ("mean", "moving_mean"), ("var", "moving_variance"))]
        nodes.append(helper.make_node("BatchNormalization", [y] + bn, [f"conv_{i}.bn"], name=f"conv_{i}.bn",
                                      epsilon=BN_EPS))
        x = clip(f"conv_{i}.bn")
        pw = f"MobilenetV1/Conv2d_{i}_pointwise/"
        x = clip(conv(x, f"conv_{i}.pointwise", ws[pw + "weights"].transpose(3, 2, 0, 1), 1, 1,
                      ws[pw + "convolution_bn_offset"]))
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["features"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["features"], ["flat"], name="flatten", axis=1))
    const("classifier.weight", np.zeros((2, 1024)))
    const("classifier.bias", np.zeros(2))
    nodes.append(helper.make_node("Gemm", ["flat", "classifier.weight", "classifier.bias"], ["logits"],
                                  name="classifier", transB=1))
    graph = helper.make_graph(
        nodes, "face_detector_mobilenet_v1",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgepatch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tgz", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--reference", required=True)
    a = ap.parse_args()
    digest = sha256(a.tgz)
    if digest != TGZ_SHA256:
        sys.exit(f"{a.tgz}: sha256 {digest}, expected {TGZ_SHA256}")
    ws = weights(a.tgz)
    model = build(ws)
    data = model.SerializeToString()
    out = os.path.join(a.cache, OUT_NAME)
    with open(out + ".tmp", "wb") as f:
        f.write(data)
    os.replace(out + ".tmp", out)

    m = onnx.load_from_string(data)
    m.graph.output.append(helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = {}
    for shape, seed in CASES:
        x = sine_inputs(shape, seed)
        _, features = s.run(None, {"input": x})
        features = features.reshape(shape[0], -1)
        want = np_features(ws, x.astype(np.float64))
        err = np.abs(features - want).max() / max(np.abs(want).max(), 1e-6)
        if err > 1e-4:
            sys.exit(f"{shape}: onnxruntime's features differ from the NumPy forward by {err:.2e} (relative)")
        print(f"{shape}: onnxruntime vs NumPy forward of face-api's MobileNetV1: max relative difference {err:.1e}")
        key = "x".join(map(str, shape)) + f" seed {seed}"
        got[key] = {"features": [round(float(v), 5) for v in features.reshape(-1)]}
    about = ("onnxruntime " + ort.__version__ + " (CPU) on " + OUT_NAME + ": the pooled features [N, 1024]. "
             "Inputs x[i] = 2*sin(0.01*i + seed) over the flattened NCHW tensor (f32, ImageNet-normalised).")
    check_or_write(os.path.join(a.reference, "expected.json"), about, got, 1e-3)
    manifest = f"""# face-api's SSD-MobileNetV1 face detector, its feature extractor as a backbone (written by build.py; do not edit)

sources:
  weights: npm @vladmandic/face-api@1.7.15, model/ssd_mobilenetv1_model-weights_manifest.json and
    model/ssd_mobilenetv1_model.bin (TF.js, uint8-quantized); the layers as dist/face-api.js runs them
licences:
  weights and code: MIT (face-api, Vladimir Mandic and Vincent Muehler); the detector: TensorFlow
    Object Detection API's SSD-MobileNetV1 (Apache-2.0)
inputs:
  package: vladmandic-face-api-1.7.15.tgz  sha256 {TGZ_SHA256}  {os.path.getsize(a.tgz)} bytes
outputs (cache, not committed):
  f32: {OUT_NAME}  sha256 {hashlib.sha256(data).hexdigest()}  {len(data)} bytes
format:
  ONNX opset 13; input 'input' f32 [N,3,H,W] ImageNet-normalised (converted to x/127.5-1 by the
  first node); MobileNetV1 (conv 3x3/2, 13 depthwise-separable blocks, ReLU6, auto_pad SAME_UPPER,
  depthwise BatchNorm eps 1e-3), global average pool, a placeholder Gemm of zeros to 2 'logits'.
rebuild:
  bash models/face_detector/build.sh   (needs only the package registries)
"""
    with open(os.path.join(os.path.dirname(a.reference), "MANIFEST"), "w") as f:
        f.write(manifest)


if __name__ == "__main__":
    main()
