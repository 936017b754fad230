#!/usr/bin/env bash
# Builds edgepatch for an ARM Linux target and runs its CPU test suite and the C example under
# qemu-user. On a fresh Debian machine it installs what it needs from the package registries.
#   bash targets/cross-test.sh aarch64-unknown-linux-gnu
#   bash targets/cross-test.sh armv7-unknown-linux-gnueabihf
# Tests that spawn the `edgepatch` binary (tools/cli) are not run here: a cross binary cannot
# be exec'd without binfmt_misc, which containers rarely have; the library, the end-to-end
# tests of tests/ and the C example are.
set -euo pipefail
triple=${1:?usage: cross-test.sh TRIPLE}
root=$(cd "$(dirname "$0")/.." && pwd)
cfg="$root/targets/$triple/config.toml"
[ -f "$cfg" ] || { echo "no targets/$triple/config.toml: supported are $(ls -d "$root"/targets/*-linux-* | xargs -n1 basename | tr '\n' ' ')" >&2; exit 2; }
case "$triple" in
  aarch64-unknown-linux-gnu) gcc=aarch64-linux-gnu-gcc; pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user); qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib) ;;
  armv7-unknown-linux-gnueabihf) gcc=arm-linux-gnueabihf-gcc; pkgs=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user); qemu=(qemu-arm -L /usr/arm-linux-gnueabihf -E LD_LIBRARY_PATH=/usr/arm-linux-gnueabihf/lib) ;;
esac
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

cargo=(cargo)
if ! rustup target list --installed 2>/dev/null | grep -x "$triple" >/dev/null && ! rustup target add "$triple"; then
  if [ "$triple" != aarch64-unknown-linux-gnu ]; then
    echo "rustup cannot fetch the $triple std and there is no Debian fallback for it" >&2; exit 1
  fi
  echo "rustup cannot fetch the std: using Debian's rustc-web with libstd-rust-web-dev:arm64" >&2
  dpkg --add-architecture arm64
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web libstd-rust-web-dev:arm64
  cargo=(env RUSTC=/usr/bin/rustc /usr/bin/cargo)
fi

cd "$root"
# The native build's directory: the host's build scripts and proc-macros are shared with it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
echo "== build and test for $triple (under ${qemu[0]})"
start=$(date +%s)
# The Python extension is in both commands so that all three resolve the same features as its
# wheel build below (which then compiles only the extension itself).
"${cargo[@]}" test --release --config "$cfg" --target "$triple" -p edgepatch -p edgepatch-tests -p edgepatch-capi -p edgepatch-python
echo "== C library and example for $triple"
"${cargo[@]}" build --release --config "$cfg" --target "$triple" -p edgepatch-capi -p edgepatch-python
out="$CARGO_TARGET_DIR/$triple/release"
"$gcc" -O2 -o "$out/predict_and_train" targets/capi/examples/predict_and_train.c -I targets/capi/include \
  "$out/libedgepatch.a" -lm -lpthread -ldl -Wl,-z,noexecstack
"${qemu[@]}" "$out/predict_and_train" "$root/models/mobilenet_v2/reference/chelsea.png" | tee "$out/example.txt"
grep -q "backbone top-1: Egyptian cat" "$out/example.txt"
grep -q "patch top-1 for a red image: red" "$out/example.txt"
grep -q "patch top-1 for a blue image: blue" "$out/example.txt"
"$gcc" -O2 -o "$out/personalise" targets/capi/examples/personalise.c -I targets/capi/include \
  "$out/libedgepatch.a" -lm -lpthread -ldl -Wl,-z,noexecstack
rm -rf "$out/personalise.dir" && mkdir -p "$out/personalise.dir"
"${qemu[@]}" "$out/personalise" "$out/personalise.dir" | tee "$out/personalise.txt"
grep -q "resumed patch identical to an uninterrupted fit: yes" "$out/personalise.txt"
grep -q "store task 0: colours" "$out/personalise.txt"
if [ -n "${EDGEPATCH_MATURIN:-}" ]; then
  # The abi3 wheel for this target (maturin cross-compiles with the target's linker config).
  echo "== Python wheel for $triple"
  rm -rf "$out/wheels"
  "$EDGEPATCH_MATURIN" build --release --target "$triple" --config "$cfg" -m bindings/python/Cargo.toml -o "$out/wheels"
  wheel=$(ls "$out"/wheels/edgepatch-*-abi3-*.whl)
  # grep reads the whole listing (no -q): an early exit would break the pipe under pipefail.
  python3 -m zipfile -l "$wheel" | grep "edgepatch/_edgepatch.abi3.so" >/dev/null
  if [ "$triple" = aarch64-unknown-linux-gnu ]; then
    bash bindings/python/qemu-test.sh "$wheel"
  fi
fi
echo "== $triple passed in $(( $(date +%s) - start )) s"
