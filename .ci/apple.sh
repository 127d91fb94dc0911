#!/usr/bin/env bash
# Apple (and Android) targets without an Apple SDK: type-check every target the engine
# ships for, build the iOS static archive, and check with llvm-nm that it exports the C ABI
# (every function of ffi/tunpipe.h, and WireGuardKit's eight of ffi/wireguardkit.h) and does not
# link the private recvmsg_x/sendmsg_x (they are looked up at run time).
# rustup serves aarch64-apple-ios, the macOS targets and Android; aarch64-apple-ios-sim and
# tvOS are built from source with -Zbuild-std (RUSTC_BOOTSTRAP: no nightly toolchain here).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
started=$SECONDS
timed() {
  local name=$1; shift
  local t=$SECONDS
  echo "== apple: $name"
  "$@"
  echo "   $name: $((SECONDS - t)) s"
}

timed "rustup targets" rustup target add aarch64-apple-ios aarch64-apple-darwin \
  x86_64-apple-darwin aarch64-linux-android
timed "rust-src" rustup component add rust-src

# WireGuard (the `wireguard` feature, on in the CLI and the C library) brings boringtun and
# `ring`, whose C and assembly need a C compiler for the target and, for Apple targets, an
# SDK's headers: on a Mac, cc-rs finds both through `xcrun` (Xcode). Here Debian's clang
# compiles for every target, and a stub SDK (.ci/sdk-stub: TargetConditionals.h,
# assert.h, string.h, stdlib.h, declarations only) stands in for the four headers ring
# includes. The stubs are used by this script alone; they never reach a Mac build, and what
# they cannot check (linking against the real SDK, the simulator's and the device's runtime)
# only a Mac can.
if ! command -v clang >/dev/null || ! command -v llvm-nm >/dev/null; then
  timed "install clang and llvm" bash -c 'DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang llvm >/dev/null'
fi
export SDKROOT="$PWD/.ci/sdk-stub"
for t in aarch64-apple-ios aarch64-apple-ios-sim aarch64-apple-tvos aarch64-apple-darwin \
  x86_64-apple-darwin aarch64-linux-android; do
  export "CC_${t//-/_}=clang" "AR_${t//-/_}=llvm-ar"
done
# Android's C headers come from its NDK, absent here: the same stub stands in (clang's own
# stdint.h and stddef.h fill in the rest), for the type check only.
export CFLAGS_aarch64_linux_android="--sysroot=$SDKROOT"

for t in aarch64-apple-ios aarch64-apple-darwin x86_64-apple-darwin aarch64-linux-android; do
  timed "check --lib $t" cargo check --quiet --workspace --lib --target "$t"
done
# The CLI and tests build for these too. The benches are desktop tools (Linux, and macOS on
# a utun: tun-rs has no DeviceBuilder on iOS or Android), so only macOS checks them.
timed "check --all-targets aarch64-apple-darwin" \
  cargo check --quiet --workspace --all-targets --target aarch64-apple-darwin
for t in aarch64-apple-ios aarch64-linux-android; do
  timed "check --bins --tests $t" cargo check --quiet --workspace --lib --bins --tests --target "$t"
done
timed "clippy --lib aarch64-apple-ios" cargo clippy --quiet --workspace --lib --target aarch64-apple-ios -- -D warnings

for t in aarch64-apple-ios-sim aarch64-apple-tvos; do
  timed "check --lib $t (build-std)" env RUSTC_BOOTSTRAP=1 \
    cargo check --quiet --workspace --lib -Zbuild-std=std,panic_abort --target "$t"
done

# The archive as hosts get it: its crate type alone, so that LTO runs (ffi/Cargo.toml). A
# staticlib needs no linker, but tun-rs asks for a cdylib of itself, which does: point that
# link at /bin/true (the .dylib is not shipped; the .a is).
timed "the archive, aarch64-apple-ios" env CARGO_TARGET_AARCH64_APPLE_IOS_LINKER=/bin/true \
  cargo rustc --quiet --release -p tunpipe-ffi --lib --crate-type staticlib --target aarch64-apple-ios

archive="${target_dir}/aarch64-apple-ios/release/libtunpipe_ffi.a"
echo "== apple: exported C ABI in $archive"
# llvm-nm exits 1 when some members (compiler_builtins shards) have no symbols: judge by
# what it lists, not by its status.
nm_out=$(llvm-nm --defined-only --extern-only "$archive" 2>/dev/null || true)
defined=$(awk '$2 == "T" { print $3 }' <<<"$nm_out" | sort -u)
# Every function of the header, by construction: the names cbindgen put into it.
expected=$(sed -n 's/^[a-z_0-9 ]*[ *]\([a-z_0-9]*\)(.*/\1/p' ffi/tunpipe.h | sort -u)
[ -n "$expected" ] || { echo "could not read function names from ffi/tunpipe.h"; exit 1; }
missing=0
for f in $expected; do
  if grep -qx "_$f" <<<"$defined"; then echo "   T _$f"; else echo "   MISSING _$f"; missing=1; fi
done
for f in start_tun stop_tun tunpipe_engine_start tunpipe_engine_stop tunpipe_engine_free; do
  grep -qx "_$f" <<<"$defined" || { echo "   MISSING _$f"; missing=1; }
done
# WireGuardKit's eight (ffi/wireguardkit.h, camelCase), for an app that links this archive in
# place of wireguard-go's libwg-go.a.
wgkit=$(sed -n 's/^extern [^(]*[ *]\(wg[A-Za-z]*\)(.*/\1/p' ffi/wireguardkit.h | sort -u)
[ "$(wc -w <<<"$wgkit")" = 8 ] || { echo "could not read WireGuardKit's 8 functions from ffi/wireguardkit.h"; exit 1; }
for f in $wgkit; do
  if grep -qx "_$f" <<<"$defined"; then echo "   T _$f"; else echo "   MISSING _$f"; missing=1; fi
done
[ "$missing" = 0 ] || { echo "the iOS archive does not export the whole C ABI"; exit 1; }
# recvmsg_x/sendmsg_x are private XNU calls: looked up at run time (src/sys/apple.rs), never
# linked, so that App Review finds no private symbol and the library loads without them.
undefined=$(llvm-nm --undefined-only "$archive" 2>/dev/null | awk '{ print $NF }' | sort -u || true)
grep -qx "_dlsym" <<<"$undefined" || { echo "could not list the archive's undefined symbols"; exit 1; }
for f in _recvmsg_x _sendmsg_x; do
  if grep -qx "$f" <<<"$undefined"; then echo "   LINKED $f (private: look it up at run time)"; exit 1; fi
done
echo "   recvmsg_x/sendmsg_x not linked (looked up at run time)"
echo "== apple: done in $((SECONDS - started)) s"
