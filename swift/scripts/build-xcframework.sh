#!/usr/bin/env bash
# Builds swift/TunPipeFFI.xcframework from the Rust crate: every Apple slice, simulators and
# macOS lipo'd into fat archives, with ffi/tunpipe.h and the module map as headers.
# Runs on a Mac with Xcode and rustup. tvOS and the iOS simulator on Intel are tier 3 in
# Rust, so they are built from source with -Zbuild-std (RUSTC_BOOTSTRAP, or use nightly).
#
#   swift/scripts/build-xcframework.sh            # all slices
#   SKIP_TVOS=1 swift/scripts/build-xcframework.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
out="$here/TunPipeFFI.xcframework"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

tier2=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
tier3=(aarch64-apple-tvos aarch64-apple-tvos-sim x86_64-apple-tvos)

rustup target add "${tier2[@]}"
build() { (cd "$root" && cargo build --release -p tunpipe-ffi --lib --target "$1"); }
build_std() {
  rustup component add rust-src
  (cd "$root" && RUSTC_BOOTSTRAP=1 cargo build --release -p tunpipe-ffi --lib -Zbuild-std=std,panic_abort --target "$1")
}
for t in "${tier2[@]}"; do build "$t"; done
if [ -z "${SKIP_TVOS:-}" ]; then for t in "${tier3[@]}"; do build_std "$t"; done; fi

lib() { echo "$target_dir/$1/release/libtunpipe_ffi.a"; }
fat() { # fat NAME slice...
  local name=$1; shift
  mkdir -p "$stage/$name"
  local inputs=()
  for t in "$@"; do inputs+=("$(lib "$t")"); done
  lipo -create "${inputs[@]}" -output "$stage/$name/libtunpipe_ffi.a"
  echo "$stage/$name/libtunpipe_ffi.a"
}

headers="$stage/Headers"
mkdir -p "$headers"
cp "$root/ffi/tunpipe.h" "$here/Headers/module.modulemap" "$headers/"

args=(
  -library "$(lib aarch64-apple-ios)" -headers "$headers"
  -library "$(fat ios-sim aarch64-apple-ios-sim x86_64-apple-ios)" -headers "$headers"
  -library "$(fat macos aarch64-apple-darwin x86_64-apple-darwin)" -headers "$headers"
)
if [ -z "${SKIP_TVOS:-}" ]; then
  args+=(
    -library "$(lib aarch64-apple-tvos)" -headers "$headers"
    -library "$(fat tvos-sim aarch64-apple-tvos-sim x86_64-apple-tvos)" -headers "$headers"
  )
fi

rm -rf "$out"
xcodebuild -create-xcframework "${args[@]}" -output "$out"
echo "built $out"
