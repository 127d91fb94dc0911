#!/usr/bin/env bash
# The core crate gives the engine and nothing else: a fresh crate that depends on `tunpipe` by
# path, with default features, pulls in no CLI or WireGuard dependencies, gets no tunpipe
# static or shared library, and links an rlib without the C ABI's symbols.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
mkdir -p "$fresh/src"
cat >"$fresh/Cargo.toml" <<TOML
[package]
name = "fresh"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tunpipe = { path = "$root" }

[workspace]
TOML
cat >"$fresh/src/main.rs" <<'RS'
fn main() {
    let (device, _to_engine, _from_engine) = tunpipe::MemoryDevice::new(8, 2048);
    let engine = tunpipe::Engine::builder().start(&device).expect("start");
    engine.stop().expect("stop");
}
RS
cd "$fresh"
# Its own target dir, inside the build dir, so nothing of the workspace's build is reused.
export CARGO_TARGET_DIR="$target_dir/house-check"
rm -rf "$CARGO_TARGET_DIR/debug/deps"/libtunpipe*
cargo build --quiet
tree=$(cargo tree -e normal --prefix none)
unwanted=$(grep -E '^(clap|signal-hook|boringtun|ring) ' <<<"$tree" || true)
[ -z "$unwanted" ] || { echo "a dependent of tunpipe pulls in: $unwanted"; exit 1; }
libs=$(find "$CARGO_TARGET_DIR" -name 'libtunpipe*.a' -o -name 'libtunpipe*.so' | head -5)
[ -z "$libs" ] || { echo "a dependent's build produced tunpipe C libraries: $libs"; exit 1; }
rlib=$(find "$CARGO_TARGET_DIR/debug/deps" -name 'libtunpipe-*.rlib' | head -1)
[ -n "$rlib" ] || { echo "no tunpipe rlib was built"; exit 1; }
symbols=$(nm "$rlib" 2>/dev/null | grep -E ' T (start_tun|stop_tun|tunpipe_)' || true)
[ -z "$symbols" ] || { echo "the tunpipe rlib exports C ABI symbols: $symbols"; exit 1; }
echo "house: a dependent of tunpipe gets the engine only ($(wc -l <<<"$tree") crates, no C library, no C symbols)"
