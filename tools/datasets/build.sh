#!/usr/bin/env bash
# Builds the digits and faces transfer tasks as image folders (folder: datasets) in the cache,
# from PyPI wheels only (scikit-learn's digits, scikit-image's LFW faces-vs-non-faces subset):
#   cache/datasets/digits/{train,test}/{0..9}/*.png    8×8 grayscale, 1,297 train / 500 test
#   cache/datasets/faces/{train,test}/{face,non-face}/*.png   25×25 grayscale, 140 train / 60 test
# Usage: bash tools/datasets/build.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
source "$root/models/venv.sh"
pin=(--no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp)
sk="$cache/downloads/scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
[ -f "$sk" ] || "$cache/venv/bin/pip" download --quiet "${pin[@]}" scikit-learn==1.9.1 -d "$cache/downloads"
si="$cache/downloads/scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
[ -f "$si" ] || "$cache/venv/bin/pip" download --quiet "${pin[@]}" scikit-image==0.26.0 -d "$cache/downloads"
"$cache/venv/bin/python" "$root/tools/datasets/make_folders.py" --sklearn-wheel "$sk" --skimage-wheel "$si" --out "$cache/datasets"
