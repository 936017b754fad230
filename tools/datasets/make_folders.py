#!/usr/bin/env python3
"""Writes scikit-learn's digits and scikit-image's faces-vs-non-faces as image folders.

Each task gets train/ and test/ folders with one subfolder per class; the split is a seeded
shuffle per class (so both splits hold every class), reproducible byte for byte.
"""
import argparse
import gzip
import io
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_task(out, name, images, labels, classes, test_fraction, seed):
    root = out / name
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    counts = {"train": 0, "test": 0}
    for c, cname in enumerate(classes):
        members = [i for i, l in enumerate(labels) if l == c]
        rng.shuffle(members)
        n_test = round(len(members) * test_fraction)
        for split, chosen in (("test", members[:n_test]), ("train", members[n_test:])):
            d = root / split / cname
            d.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(images[i], mode="L").save(d / f"{i:05d}.png", optimize=False)
            counts[split] += len(chosen)
    print(f"{root}: {counts['train']} train / {counts['test']} test images, {len(classes)} classes")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sklearn-wheel", required=True)
    ap.add_argument("--skimage-wheel", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)

    with zipfile.ZipFile(a.sklearn_wheel) as z:
        rows = gzip.decompress(z.read("sklearn/datasets/data/digits.csv.gz")).decode().strip().splitlines()
    data = np.array([[float(v) for v in r.split(",")] for r in rows])
    assert data.shape == (1797, 65), data.shape
    digits = np.round(data[:, :64] * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8)
    write_task(out, "digits", digits, data[:, 64].astype(int).tolist(), [str(d) for d in range(10)], 500 / 1797, 0)

    with zipfile.ZipFile(a.skimage_wheel) as z:
        faces = np.load(io.BytesIO(z.read("skimage/data/lfw_subset.npy")))
    assert faces.shape == (200, 25, 25), faces.shape
    faces = np.round(np.clip(faces, 0.0, 1.0) * 255.0).astype(np.uint8)
    write_task(out, "faces", faces, [0] * 100 + [1] * 100, ["face", "non-face"], 0.3, 0)


if __name__ == "__main__":
    main()
