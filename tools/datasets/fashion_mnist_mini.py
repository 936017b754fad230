#!/usr/bin/env python3
"""Writes the Fashion-MNIST subset committed under models/datasets/fashion-mnist-mini.

From Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist, MIT): the first 200
training and the first 100 test images of each class, in file order, as gzipped IDX files with
the same layout as the originals, plus labels.txt. Deterministic: the same inputs give the same
bytes (gzip without a timestamp).

    python3 tools/datasets/fashion_mnist_mini.py [SRC_DIR] [OUT_DIR]
"""
import gzip
import struct
import sys
from pathlib import Path

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path):
    data = gzip.decompress(path.read_bytes())
    magic, = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return shape, data[4 + 4 * dims:]


def write_idx(path, shape, payload):
    head = struct.pack(">I", 0x800 | len(shape)) + struct.pack(">" + "I" * len(shape), *shape)
    path.write_bytes(gzip.compress(head + payload, compresslevel=9, mtime=0))


def subset(src, out, split, per_class):
    (n, rows, cols), pixels = read_idx(src / f"{split}-images-idx3-ubyte.gz")
    (m,), labels = read_idx(src / f"{split}-labels-idx1-ubyte.gz")
    assert n == m, f"{split}: {n} images, {m} labels"
    taken, count = [], [0] * len(CLASSES)
    for i, label in enumerate(labels):
        if count[label] < per_class:
            count[label] += 1
            taken.append(i)
    size = rows * cols
    write_idx(out / f"{split}-images-idx3-ubyte.gz", (len(taken), rows, cols),
              b"".join(pixels[i * size:(i + 1) * size] for i in taken))
    write_idx(out / f"{split}-labels-idx1-ubyte.gz", (len(taken),), bytes(labels[i] for i in taken))
    return len(taken)


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).resolve().parents[2] / "models/datasets/fashion-mnist-mini")
    out.mkdir(parents=True, exist_ok=True)
    train = subset(src, out, "train", 200)
    test = subset(src, out, "t10k", 100)
    (out / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    print(f"{out}: {train} training and {test} test images")


if __name__ == "__main__":
    main()
