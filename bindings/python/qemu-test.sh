#!/usr/bin/env bash
# Imports an aarch64 wheel and runs the pytest suite (but the README's example, a 2,000-image
# fit) under qemu-user, with Debian's arm64 CPython 3.11, NumPy and pytest unpacked from Debian's
# packages into a sysroot in the cache (nothing is installed for arm64 system-wide).
#   bash bindings/python/qemu-test.sh target/aarch64-unknown-linux-gnu/release/wheels/edgepatch-*.whl
set -euo pipefail
wheel=${1:?usage: qemu-test.sh WHEEL}
root=$(cd "$(dirname "$0")/../.." && pwd)
cache="${EDGEPATCH_CACHE:-$root/cache}/arm64-python"
sysroot="$cache/sysroot"
libs=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3-numpy libexpat1 zlib1g libffi8
  libblas3 liblapack3 libgfortran5 libbz2-1.0 liblzma5 libssl3 libuuid1 libtinfo6 libncursesw6 libreadline8
  libsqlite3-0 libcrypt1 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0
  libcom-err2 libkeyutils1 libdb5.3 libstdc++6 libgcc-s1)
pure=(python3-pytest python3-pluggy python3-iniconfig python3-packaging python3-py python3-attr
  python3-more-itertools python3-pkg-resources python3-exceptiongroup)
if [ ! -x "$sysroot/usr/bin/python3.11" ]; then
  dpkg --print-foreign-architectures | grep -x arm64 >/dev/null || dpkg --add-architecture arm64
  rm -rf "$cache/debs" && mkdir -p "$cache/debs"
  download() { (cd "$cache/debs" && apt-get download -q -o APT::Sandbox::User=root "${libs[@]/%/:arm64}" "${pure[@]}" >/dev/null); }
  download || { apt-get update -qq && download; }
  rm -rf "$sysroot.new" && mkdir -p "$sysroot.new"
  for deb in "$cache"/debs/*.deb; do dpkg -x "$deb" "$sysroot.new"; done
  mv "$sysroot.new" "$sysroot"
fi
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
python3 -m zipfile -e "$wheel" "$site"
lib="$sysroot/lib/aarch64-linux-gnu:$sysroot/usr/lib/aarch64-linux-gnu"
lib="$lib:$sysroot/usr/lib/aarch64-linux-gnu/blas:$sysroot/usr/lib/aarch64-linux-gnu/lapack"
py=(qemu-aarch64 -L /usr/aarch64-linux-gnu -E "LD_LIBRARY_PATH=$lib" -E "PYTHONPATH=$site" "$sysroot/usr/bin/python3.11")
"${py[@]}" -c "import edgepatch, numpy, platform; print('edgepatch', edgepatch.__version__, 'on', platform.machine(), 'with NumPy', numpy.__version__)"
cd "$root"
"${py[@]}" -m pytest -q -p no:cacheprovider bindings/python/tests -k "not readme"
