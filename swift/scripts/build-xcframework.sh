#!/usr/bin/env bash
# Builds swift/TunPipeFFI.xcframework from the Rust crate: every Apple slice, simulators and
# macOS lipo'd into fat archives, with ffi/tunpipe.h and the module map in Headers/TunPipeFFI/.
# An app built on WireGuardKit links the same slices in place of wireguard-go's libwg-go.a
# (wireguardkit-bridge.sh).
# WireGuard's crypto (ring) is compiled with Xcode's clang and SDKs, found through xcrun.
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

# The oldest systems the package supports (Package.swift), for the Rust and the C alike.
export IPHONEOS_DEPLOYMENT_TARGET=15.0
export TVOS_DEPLOYMENT_TARGET=17.0
export MACOSX_DEPLOYMENT_TARGET=12.0

rustup target add "${tier2[@]}"
# The archive alone (--crate-type staticlib), so that the release profile's LTO runs
# (ffi/Cargo.toml).
archive=(rustc --release -p tunpipe-ffi --lib --crate-type staticlib)
build() { (cd "$root" && cargo "${archive[@]}" --target "$1"); }
build_std() {
  rustup component add rust-src
  (cd "$root" && RUSTC_BOOTSTRAP=1 cargo "${archive[@]}" -Zbuild-std=std,panic_abort --target "$1")
}
for t in "${tier2[@]}"; do build "$t"; done
if [ -z "${SKIP_TVOS:-}" ]; then for t in "${tier3[@]}"; do build_std "$t"; done; fi

lib() { echo "$target_dir/$1/release/libtunpipe_ffi.a"; }
# fat NAME slice...: lipo the slices into $stage/NAME/libtunpipe_ffi.a. Called as a command,
# never inside $(...), where a failure would not stop the script (set -e does not reach
# into a command substitution).
fat() {
  local name=$1; shift
  mkdir -p "$stage/$name"
  local inputs=()
  for t in "$@"; do inputs+=("$(lib "$t")"); done
  lipo -create "${inputs[@]}" -output "$stage/$name/libtunpipe_ffi.a"
}
fat ios-sim aarch64-apple-ios-sim x86_64-apple-ios
fat macos aarch64-apple-darwin x86_64-apple-darwin
if [ -z "${SKIP_TVOS:-}" ]; then fat tvos-sim aarch64-apple-tvos-sim x86_64-apple-tvos; fi

# The module in its own folder: a module.modulemap at the root of Headers/ collides with
# other packages' in an app build ("Multiple commands produce .../include/module.modulemap").
headers="$stage/Headers"
mkdir -p "$headers/TunPipeFFI"
# wireguardkit.h (WireGuardKit's eight, for C and Objective-C hosts) rides along outside the
# module: WireGuardKit apps import those through WireGuardKitGo's own module.
cp "$root/ffi/tunpipe.h" "$root/ffi/wireguardkit.h" "$here/Headers/TunPipeFFI/module.modulemap" \
  "$headers/TunPipeFFI/"

args=(
  -library "$(lib aarch64-apple-ios)" -headers "$headers"
  -library "$stage/ios-sim/libtunpipe_ffi.a" -headers "$headers"
  -library "$stage/macos/libtunpipe_ffi.a" -headers "$headers"
)
if [ -z "${SKIP_TVOS:-}" ]; then
  args+=(
    -library "$(lib aarch64-apple-tvos)" -headers "$headers"
    -library "$stage/tvos-sim/libtunpipe_ffi.a" -headers "$headers"
  )
fi

rm -rf "$out"
xcodebuild -create-xcframework "${args[@]}" -output "$out"
echo "built $out"
