#!/usr/bin/python3
"""PyTorch (CPU) on the same MobileNetV2 as edgepatch: the graph and the weights (int8 kernels
dequantized) that `edgepatch-bench dump-graph --out DIR` writes, built node for node, each
folded BatchNorm as a BatchNorm2d in eval mode (mean 0, variance + epsilon = 1, weight = scale,
bias = shift: exactly the affine y = s·x + b).

    python3 tools/bench/torch_bench.py DIR --check
    python3 tools/bench/torch_bench.py DIR --train sb+logits --batch 16 --resolution 224 --steps 5
    python3 tools/bench/torch_bench.py DIR --infer --batch 1 --steps 20

Training: `requires_grad` only on what the patch kinds train (logits: a new 10-class head; sb:
every BatchNorm weight and bias; bias: the biases; dw: depthwise kernels; full: everything),
SGD with momentum 0.9 at lr 0.001, gradient norm clipped at 5 (edgepatch's defaults), two
warm-up steps, then the median of `steps` timed steps (forward, backward, clip, update) on a
fixed random batch. Prints one JSON line with the peak resident memory of this process.
Uses Debian's python3-torch; threads from --threads (default: all cores). `--device cuda` runs
training and --infer on an NVIDIA GPU (timed with torch.cuda.synchronize after each step).
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, graph, w):
        super().__init__()
        self.nodes = graph["nodes"]
        self.output = graph["output"]
        self.layers = nn.ModuleList()
        self.pads = []
        self.kinds = {"dw": [], "bn": [], "head": None}

        def t(slot):
            at, n = slot
            return torch.from_numpy(w[at:at + n].copy())

        for n in self.nodes:
            op, m, pad = n["op"], None, None
            if op in ("conv", "conv1x1", "depthwise"):
                groups = n["channels"] if op == "depthwise" else 1
                cin = n["channels"] if op == "depthwise" else n["in"]
                cout = n["channels"] if op == "depthwise" else n["out"]
                kh, kw = n["kernel"]
                top, left, bottom, right = n["pads"]
                sym = top == bottom and left == right
                m = nn.Conv2d(cin, cout, (kh, kw), tuple(n["stride"]), padding=(top, left) if sym else 0,
                              groups=groups, bias=False)
                m.weight.data = t(n["weight"]).reshape(cout, cin // groups, kh, kw)
                pad = None if sym else (left, right, top, bottom)
                if op == "depthwise":
                    self.kinds["dw"].append(m)
            elif op == "affine":
                s, b = t(n["scale"]), t(n["bias"])
                # PyTorch 2 refuses eps = 0: variance 1 - eps makes var + eps round to 1 in f32.
                m = nn.BatchNorm2d(len(s), eps=1e-5)
                m.weight.data, m.bias.data = s, b
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - 1e-5)
                self.kinds["bn"].append(m)
            elif op == "linear":
                m = nn.Linear(n["in"], n["out"])
                m.weight.data = t(n["weight"]).reshape(n["out"], n["in"])
                m.bias.data = t(n["bias"])
                self.kinds["head"] = len(self.layers)
            self.layers.append(m if m is not None else nn.Identity())
            self.pads.append(pad)

    def forward(self, x):
        v = {0: x}
        for n, m, pad in zip(self.nodes, self.layers, self.pads):
            op, a = n["op"], v[n["inputs"][0]]
            if op in ("conv", "conv1x1", "depthwise"):
                y = m(F.pad(a, pad) if pad else a)
            elif op == "affine":
                y = m(a)
            elif op == "relu":
                y = F.relu(a)
            elif op == "relu6":
                y = F.relu6(a)
            elif op == "add":
                y = a + v[n["inputs"][1]]
            elif op == "global_pool":
                y = a.mean((2, 3), keepdim=True)
            elif op == "linear":
                y = m(torch.flatten(a, 1))
            else:
                raise ValueError(f"unknown op {op}")
            v[n["output"]] = y
        return v[self.output]


def load(d):
    graph = json.load(open(os.path.join(d, "graph.json")))
    w = np.fromfile(os.path.join(d, "weights.bin"), dtype="<f4")
    return Net(graph, w)


def batch(n, res):
    i = np.arange(n * 3 * res * res, dtype=np.int64)
    return torch.from_numpy((((i * 7919) % 1000) / 500.0 - 1.0).astype(np.float32).reshape(n, 3, res, res))


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(steps, f):
    f()
    f()
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    out.sort()
    return out[len(out) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--train")
    ap.add_argument("--infer", action="store_true")
    ap.add_argument("--eager", action="store_true", help="inference in eager mode instead of frozen TorchScript")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU (training and --infer)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    net = load(a.dir)
    net.eval()
    if a.check:
        with torch.no_grad():
            got = net(batch(1, 224)).numpy().ravel()
        want = np.fromfile(os.path.join(a.dir, "logits.bin"), dtype="<f4")
        err = float(np.abs(got - want).max())
        print(json.dumps({"check": "logits", "max_abs_diff": err, "max_abs": float(np.abs(want).max())}))
        sys.exit(0 if err <= 1e-3 * max(1.0, float(np.abs(want).max())) else 1)
    if a.infer:
        net.to(dev)
        x = batch(a.batch, a.resolution).to(dev)
        for p in net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            # How a PyTorch user deploys for inference: traced, frozen TorchScript (constants folded,
            # BatchNorm folded into the convolutions) and optimized for inference.
            run = net
            config = "eager"
            if not a.eager:
                run = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, x)))
                config = "TorchScript, frozen, optimize_for_inference"
            s = timed(a.steps, lambda: (run(x), sync()))
        print(json.dumps({"engine": "pytorch", "torch": torch.__version__, "config": config, "batch": a.batch,
                          "device": a.device,
                          "median_ms": s * 1e3, "images_per_s": a.batch / s, "peak_rss_bytes": peak_rss(),
                          "threads": a.threads}))
        return
    kinds = set(a.train.split("+"))
    for p in net.parameters():
        p.requires_grad_(False)
    head = net.kinds["head"]
    if "logits" in kinds or "full" in kinds:
        old = net.layers[head]
        net.layers[head] = nn.Linear(old.in_features, 10)
    net.to(dev)
    train = []
    if "full" in kinds:
        train = list(net.parameters())
    else:
        if "logits" in kinds:
            train += list(net.layers[head].parameters())
        if "sb" in kinds:
            train += [p for m in net.kinds["bn"] for p in (m.weight, m.bias)]
        if "bias" in kinds:
            train += [m.bias for m in net.kinds["bn"]]
        if "dw" in kinds:
            train += [m.weight for m in net.kinds["dw"]]
    for p in train:
        p.requires_grad_(True)
    net.eval()
    opt = torch.optim.SGD(train, lr=0.001, momentum=0.9)
    x, y = batch(a.batch, a.resolution).to(dev), (torch.arange(a.batch) % 10).to(dev)
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(train, 5.0)
        opt.step()
        sync()
        losses.append(float(loss))

    s = timed(a.steps, step)
    print(json.dumps({"engine": "pytorch", "torch": torch.__version__, "kinds": a.train, "batch": a.batch,
                      "device": a.device,
                      "resolution": a.resolution, "median_step_ms": s * 1e3, "images_per_s": a.batch / s,
                      "peak_rss_bytes": peak_rss(), "first_loss": losses[0], "threads": a.threads,
                      "trainable": sum(p.numel() for p in train)}))


if __name__ == "__main__":
    main()
