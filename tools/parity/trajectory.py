#!/usr/bin/python3
"""Training parity with PyTorch: the same network, inputs, batches, order and initial patch.

edgepatch trains a patch on Fashion-MNIST images and writes every step (`edgepatch-bench
trajectory`); this script replays the run in PyTorch (Debian's python3-torch) on the network
`edgepatch-bench dump-graph` writes (the shipped int8 kernels dequantized, each folded
BatchNorm a BatchNorm2d in eval mode whose weight and bias are the S/B affine), with
torch.optim.SGD (momentum 0.9) and a LambdaLR cosine schedule, and compares:

- preprocessing: the inputs edgepatch trained on against the independent reference run's recipe
  (torch bilinear resize, align_corners=False, on floats; `reference_prep` below);
- teacher-forced, every step from edgepatch's own values before it: the loss, and the gradient
  (edgepatch's recovered from its SGD velocity, v_k - 0.9 v_{k-1}) against PyTorch autograd's in
  f64, beside PyTorch's own f32 gradient against the same f64 one;
- free-running, PyTorch's own trajectory from the same start: the learned update (final minus
  initial patch) against edgepatch's, beside how far PyTorch drifts from itself when its start
  is perturbed by 1e-7 (relative), i.e. what rounding alone does to a run at this learning rate;
- with --test-count: the test accuracy of both final patches on the same test inputs, and with
  --torch-prep also PyTorch trained on its own preprocessing of the same images, same order.

    /usr/bin/python3 tools/parity/trajectory.py [--train-count 5000] [--steps 50] [--check]
    /usr/bin/python3 tools/parity/trajectory.py --steps all --test-count 2000 --torch-prep --seed 1

The training images are numpy.random.RandomState(0).permutation(60000)[:train-count] of
Fashion-MNIST's training set (Debian's dataset-fashion-mnist), as in the reference run.
--check exits 1 when a teacher-forced step's loss differs from f64's by more than 1e-4 (relative),
edgepatch's gradient (whole, or its worst tensor) is further from f64's than 3x PyTorch's f32
gradient is (or 1e-3, whichever is larger), or the free-running update drifts from PyTorch's by
more than 3x PyTorch's drift from itself.
"""
import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "bench"))
import torch_bench  # noqa: E402  (the network built from edgepatch's graph dump)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def idx(path, offset):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def reference_prep(u8, res):
    """fold_study.py's preprocessing: floats, bilinear (align_corners=False), gray to RGB."""
    x = torch.from_numpy(u8.astype(np.float32) / 255.0).unsqueeze(1)
    x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
    return ((x.expand(-1, 3, -1, -1) - MEAN) / STD).contiguous()


def params_of(net, t):
    """The PyTorch parameter a patch tensor (node, role) of the dump is."""
    m = net.layers[t["node"]]
    if isinstance(m, nn.BatchNorm2d):
        return {"scale": m.weight, "bias": m.bias}[t["role"]]
    if isinstance(m, nn.Linear):
        return {"weights": m.weight, "bias": m.bias}[t["role"]]
    if isinstance(m, nn.Conv2d) and t["role"] == "weights":
        return m.weight
    raise ValueError(f"no parameter for {t}")


def build(d, run, init):
    """The dumped network with a new head and the initial patch's values, its trained parameters."""
    net = torch_bench.load(d)
    for p in net.parameters():
        p.requires_grad_(False)
    head = net.kinds["head"]
    old = net.layers[head]
    net.layers[head] = nn.Linear(old.in_features, len(run["labels"]))
    params, at = [], 0
    for t in run["tensors"]:
        p = params_of(net, t)
        n = t["len"]
        p.data = torch.from_numpy(init[at:at + n].copy()).reshape(p.shape)
        p.requires_grad_(True)
        params.append(p)
        at += n
    net.eval()
    return net, params


def replay(net, params, run, x, y, steps):
    opt = torch.optim.SGD(params, lr=run["lr"], momentum=run["momentum"])
    total = run["total_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    losses = []
    for s in steps:
        b = torch.tensor(s["batch"])
        loss = F.cross_entropy(net(x[b]), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
    return losses


def accuracy(net, x, y):
    with torch.no_grad():
        return sum(int((net(x[i:i + 250]).argmax(1) == y[i:i + 250]).sum()) for i in range(0, len(x), 250)) / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "edgepatch-trajectory"))
    ap.add_argument("--bench", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                                                     "release", "edgepatch-bench"))
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--kinds", default="sb+logits")
    ap.add_argument("--train-count", type=int, default=5000)
    ap.add_argument("--test-count", type=int, default=0)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", default="50", help="steps to compare, or 'all'")
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-prep", action="store_true", help="also train PyTorch on the reference preprocessing")
    ap.add_argument("--accuracy-only", action="store_true",
                    help="skip the teacher-forced and perturbed runs (for whole runs: compare test accuracy)")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(a.out, exist_ok=True)
    perm = np.random.RandomState(0).permutation(60000)[:a.train_count]
    with open(os.path.join(a.out, "indices.json"), "w") as f:
        json.dump([int(i) for i in perm], f)
    cmd = [a.bench, "trajectory", "--out", a.out, "--train", f"idx:{a.data}/train", "--indices",
           os.path.join(a.out, "indices.json"), "--kinds", a.kinds, "--batch", str(a.batch), "--resolution",
           str(a.resolution), "--epochs", str(a.epochs), "--lr", str(a.lr), "--seed", str(a.seed)]
    if a.steps != "all":
        cmd += ["--steps", a.steps]
    if a.test_count:
        cmd += ["--test", f"idx:{a.data}/t10k", "--test-count", str(a.test_count)]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    ep_seconds = time.time() - t0
    run = json.load(open(os.path.join(a.out, "trajectory.json")))
    r = a.resolution
    x = torch.from_numpy(np.fromfile(os.path.join(a.out, "train.bin"), "<f4").reshape(-1, 3, r, r))
    y = torch.tensor(run["train_labels"])
    init = np.fromfile(os.path.join(a.out, "init.bin"), "<f4")
    final = np.fromfile(os.path.join(a.out, "final.bin"), "<f4")

    raw = idx(f"{a.data}/train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[perm]
    ref = reference_prep(raw, r)
    prep = {"max_abs_diff": float((ref - x).abs().max()), "mean_abs_diff": float((ref - x).abs().mean())}

    steps = run["steps"]
    n = len(init)
    states = np.fromfile(os.path.join(a.out, "states.bin"), "<f4").reshape(len(steps), 2, n)
    mu = run["momentum"]
    # Teacher-forced: each step from edgepatch's own values before it, so rounding cannot pile up;
    # PyTorch's gradient in f32 and in f64, the f64 one the reference both f32 gradients are
    # measured against (at ReLU6's kinks an f32 gradient is only good to about 1e-3).
    at = np.cumsum([0] + [t["len"] for t in run["tensors"]])
    spans = list(zip(at[:-1], at[1:]))
    nets = {torch.float32: build(a.out, run, init), torch.float64: None}
    net64, params64 = build(a.out, run, init)
    nets[torch.float64] = (net64.double(), params64)

    def grad(dtype, values, b):
        net, params = nets[dtype]
        for p, (lo, hi) in zip(params, spans):
            p.data = torch.from_numpy(values[lo:hi].copy()).reshape(p.shape).to(dtype)
            p.grad = None
        loss = F.cross_entropy(net(x[b].to(dtype)), y[b])
        loss.backward()
        return float(loss), torch.cat([p.grad.reshape(-1) for p in params]).double().numpy()

    def rel(u, w):
        return float(np.linalg.norm(u - w) / max(np.linalg.norm(w), 1e-30))

    forced = {k: 0.0 for k in ["loss_max_rel_diff", "grad_edgepatch_vs_f64", "grad_pytorch_f32_vs_f64",
                               "grad_edgepatch_vs_pytorch_f32", "worst_tensor_edgepatch_vs_f64",
                               "worst_tensor_pytorch_f32_vs_f64"]}
    prev_p, prev_v = init, np.zeros(n, np.float32)
    for k, s in enumerate([] if a.accuracy_only else steps):
        b = torch.tensor(s["batch"])
        loss32, g32 = grad(torch.float32, prev_p, b)
        loss64, g64 = grad(torch.float64, prev_p, b)
        g_ep = (states[k, 1] - np.float32(mu) * prev_v).astype(np.float64)
        for key, v in [("loss_max_rel_diff", abs(s["loss"] - loss64) / abs(loss64)),
                       ("grad_edgepatch_vs_f64", rel(g_ep, g64)), ("grad_pytorch_f32_vs_f64", rel(g32, g64)),
                       ("grad_edgepatch_vs_pytorch_f32", rel(g_ep, g32)),
                       ("worst_tensor_edgepatch_vs_f64", max(rel(g_ep[lo:hi], g64[lo:hi]) for lo, hi in spans)),
                       ("worst_tensor_pytorch_f32_vs_f64", max(rel(g32[lo:hi], g64[lo:hi]) for lo, hi in spans))]:
            forced[key] = max(forced[key], v)
        prev_p, prev_v = states[k, 0], states[k, 1]
    # Free-running: PyTorch's own trajectory from the same start, against edgepatch's, and against
    # PyTorch's from a start perturbed by 1e-7 (relative): how far rounding alone carries a run.
    net, params = build(a.out, run, init)
    t0 = time.time()
    losses = replay(net, params, run, x, y, steps)
    pt_seconds = time.time() - t0
    got = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
    jitter = (init * (1 + 1e-7 * np.random.RandomState(1).randn(n))).astype(np.float32)
    net_j, params_j = build(a.out, run, jitter)
    losses_j = [float("nan")] if a.accuracy_only else replay(net_j, params_j, run, x, y, steps)
    got_j = torch.cat([p.detach().reshape(-1) for p in params_j]).numpy()
    ep_losses = [s["loss"] for s in steps]
    du_ep, du_pt = final - init, got - init
    norm = max(np.linalg.norm(du_pt), 1e-30)
    free = {"loss_last": [ep_losses[-1], losses[-1], losses_j[-1]],
            "update_rel_l2_diff_edgepatch_vs_pytorch": float(np.linalg.norm(du_ep - du_pt) / norm),
            "update_rel_l2_diff_pytorch_vs_perturbed_pytorch": float(np.linalg.norm(got_j - got) / norm)}
    out = {"kinds": a.kinds, "seed": a.seed, "steps": len(ep_losses), "total_steps": run["total_steps"],
           "train_images": a.train_count, "resolution": r, "lr": run["lr"], "preprocessing": prep,
           "teacher_forced": forced, "free_running": free,
           "seconds": {"edgepatch_run_and_dump": round(ep_seconds, 1), "pytorch_replay": round(pt_seconds, 1)}}
    if a.test_count:
        xt = torch.from_numpy(np.fromfile(os.path.join(a.out, "test.bin"), "<f4").reshape(-1, 3, r, r))
        yt = torch.tensor(json.load(open(os.path.join(a.out, "test_labels.json"))))
        out["test_accuracy"] = {"edgepatch": run["test_accuracy"], "pytorch_same_inputs": accuracy(net, xt, yt)}
        if a.torch_prep:
            net2, params2 = build(a.out, run, init)
            replay(net2, params2, run, ref, y, steps)
            raw_t = idx(f"{a.data}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:a.test_count]
            out["test_accuracy"]["pytorch_reference_prep"] = accuracy(net2, reference_prep(raw_t, r), yt)
    print(json.dumps(out))
    if a.check:
        bad = []
        if forced["loss_max_rel_diff"] > 1e-4:
            bad.append(f"a step's loss differs by {forced['loss_max_rel_diff']:.2e} (relative)")
        for what, f32 in [("grad_edgepatch_vs_f64", "grad_pytorch_f32_vs_f64"),
                          ("worst_tensor_edgepatch_vs_f64", "worst_tensor_pytorch_f32_vs_f64")]:
            if forced[what] > max(3 * forced[f32], 1e-3):
                bad.append(f"{what} is {forced[what]:.2e}, PyTorch's f32 gradient {forced[f32]:.2e}")
        drift, noise = free["update_rel_l2_diff_edgepatch_vs_pytorch"], free["update_rel_l2_diff_pytorch_vs_perturbed_pytorch"]
        if drift > max(3 * noise, 1e-3):
            bad.append(f"the free-running update drifts {drift:.2e} from PyTorch's, rounding alone {noise:.2e}")
        if bad:
            print("parity check failed: " + "; ".join(bad), file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
