#!/usr/bin/python3
"""Shifted copies of Fashion-MNIST and digits for label-free adaptation (docs/adaptation.md).

Each shift is deterministic (numpy.random.RandomState(seed), one draw per image) and is applied
to an unlabeled pool (training images the source patch never saw) and to a test set, written as
IDX files (gzip) that `edgepatch` reads as `idx:DIR/unlabeled` and `idx:DIR/t10k`:

    OUT/<dataset>/<shift>/{unlabeled,t10k}-{images-idx3,labels-idx1}-ubyte.gz

Shifts (pixel values in [0, 255], clipped and rounded):
  noise       gaussian noise, sigma 40
  blur        3x3 box blur, twice
  contrast    contrast to 35% around the image mean
  invert      255 - x
  bright      + 90

Datasets: fashion (Debian's dataset-fashion-mnist; unlabeled = training images 50000..50000+N,
test = the first 2000 test images) and digits (scikit-learn's digits.csv.gz from its wheel, which
tools/datasets/build.sh downloads into cache/downloads; 8x8 values 0-16
scaled to 0-255; the first 1,000 rows train the source patch, unlabeled = rows 1000..1400,
test = rows 1400..1797). The unshifted ("none") sets are written too, and for digits the source
training rows as OUT/digits/train.

    /usr/bin/python3 tools/datasets/shifted.py --out cache/shifted [--unlabeled 1000]
"""
import argparse
import csv
import gzip
import io
import os
import struct

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIFTS = ["none", "noise", "blur", "contrast", "invert", "bright"]


def idx_read(path, offset):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def idx_write(prefix, images, labels):
    images, labels = images.astype(np.uint8), labels.astype(np.uint8)
    n, h, w = images.shape
    for path, data in [(f"{prefix}-images-idx3-ubyte.gz", struct.pack(">IIII", 0x803, n, h, w) + images.tobytes()),
                       (f"{prefix}-labels-idx1-ubyte.gz", struct.pack(">II", 0x801, n) + labels.tobytes())]:
        with open(path, "wb") as f:
            f.write(gzip.compress(data, mtime=0))


def box(x):
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    return sum(p[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(3) for j in range(3)) / 9.0


def shift(name, x, seed):
    x = x.astype(np.float64)
    rng = np.random.RandomState(seed)
    if name == "noise":
        x = x + rng.normal(0, 40, x.shape)
    elif name == "blur":
        x = box(box(x))
    elif name == "contrast":
        m = x.mean(axis=(1, 2), keepdims=True)
        x = m + 0.35 * (x - m)
    elif name == "invert":
        x = 255 - x
    elif name == "bright":
        x = x + 90
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def digits(wheel):
    """scikit-learn's digits from its wheel (tools/datasets/build.sh downloads it), or None."""
    import glob
    import zipfile
    wheels = [wheel] if wheel else sorted(glob.glob(os.path.join(ROOT, "cache", "downloads", "scikit_learn-*.whl")))
    if not wheels or not os.path.exists(wheels[0]):
        return None
    with zipfile.ZipFile(wheels[0]) as z:
        text = gzip.decompress(z.read("sklearn/datasets/data/digits.csv.gz")).decode()
    rows = np.array([[float(v) for v in r] for r in csv.reader(io.StringIO(text)) if r])
    x = np.rint(rows[:, :64] * 255.0 / 16.0).reshape(-1, 8, 8).astype(np.uint8)
    return x, rows[:, 64].astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="cache/shifted")
    ap.add_argument("--unlabeled", type=int, default=1000)
    ap.add_argument("--fashion", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--sklearn-wheel", help="scikit-learn's wheel (default: the one in cache/downloads)")
    a = ap.parse_args()
    sets = {}
    tr = idx_read(f"{a.fashion}/train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    trl = idx_read(f"{a.fashion}/train-labels-idx1-ubyte.gz", 8)
    te = idx_read(f"{a.fashion}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    tel = idx_read(f"{a.fashion}/t10k-labels-idx1-ubyte.gz", 8)
    sets["fashion"] = (tr[50000:50000 + a.unlabeled], trl[50000:50000 + a.unlabeled], te[:2000], tel[:2000], None)
    d = digits(a.sklearn_wheel)
    if d is not None:
        x, y = d
        sets["digits"] = (x[1000:1400], y[1000:1400], x[1400:], y[1400:], (x[:1000], y[:1000]))
    for name, (ux, uy, tx, ty, train) in sets.items():
        base = os.path.join(a.out, name)
        os.makedirs(base, exist_ok=True)
        if train is not None:
            idx_write(os.path.join(base, "train"), *train)
        for k, s in enumerate(SHIFTS):
            d = os.path.join(base, s)
            os.makedirs(d, exist_ok=True)
            idx_write(os.path.join(d, "unlabeled"), shift(s, ux, 100 + k), uy)
            idx_write(os.path.join(d, "t10k"), shift(s, tx, 200 + k), ty)
        print(f"{name}: {len(ux)} unlabeled and {len(tx)} test images per shift under {base}")


if __name__ == "__main__":
    main()
