#!/usr/bin/env python3
"""Fashion-MNIST from Debian's idx files as PNG class folders, for the "new classes later"
measurement in README.md: OUT/old/{train,test} holds classes 0-4, OUT/all/{train,test} all ten,
the first N training and M test images of each class.

    /usr/bin/python3 tools/datasets/fashion_mnist_classes.py OUT N M     # README: 300 200
    edgepatch train --device cpu --train folder:OUT/old/train --test folder:OUT/old/test \
        --patch sb+logits --resolution 64 --epochs 3 --out A.patch --json
    edgepatch train --device cpu --train folder:OUT/all/train --test folder:OUT/all/test \
        --patch sb+logits --resolution 64 --epochs 3 --init-from A.patch --out B.patch --json
    (and the second without --init-from; per_class in the JSON gives the old and new classes)
"""
import gzip, os, sys, numpy as np
from PIL import Image
root = "/usr/share/datasets/fashion-mnist"
names = ["T-shirt_top","Trouser","Pullover","Dress","Coat","Sandal","Shirt","Sneaker","Bag","Ankle_boot"]
def load(prefix):
    with gzip.open(f"{root}/{prefix}-images-idx3-ubyte.gz") as f: x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(f"{root}/{prefix}-labels-idx1-ubyte.gz") as f: y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, y
out, per_train, per_test = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for split, prefix, per in [("train", "train", per_train), ("test", "t10k", per_test)]:
    x, y = load(prefix)
    for subset, classes in [("old", range(5)), ("all", range(10))]:
        for c in classes:
            d = f"{out}/{subset}/{split}/{c}_{names[c]}"
            os.makedirs(d, exist_ok=True)
            for k, i in enumerate(np.where(y == c)[0][:per]):
                Image.fromarray(x[i]).save(f"{d}/{k:05d}.png")
