#!/usr/bin/env bash
# The C ABI gate: the committed header must be what the pinned cbindgen generates, and the C
# host test (ffi/tests/host_test.c) must pass against libtunpipe_ffi.a on a real TUN (as root:
# it makes its own network namespace), natively and, where valgrind exists, under memcheck.
set -euo pipefail
cd "$(dirname "$0")/.."
CBINDGEN_VERSION=0.29.4
target_dir=${CARGO_TARGET_DIR:-target}
started=$SECONDS
step() { echo; echo "== ffi: $* (at $((SECONDS - started)) s)"; }

step "cbindgen $CBINDGEN_VERSION"
if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen $CBINDGEN_VERSION" ]; then
  # Its own target dir, so it never waits on or invalidates the crate's build.
  CARGO_TARGET_DIR="${target_dir}/cbindgen-build" \
    cargo install cbindgen --version "$CBINDGEN_VERSION" --locked --quiet
fi

step "header is up to date"
generated=$(mktemp)
trap 'rm -f "$generated"' EXIT
# The entry points are made by the ffi_fn! macro, so cbindgen reads the macro-expanded crate
# (rustc -Zunpretty=expanded, which RUSTC_BOOTSTRAP=1 allows on the stable toolchain).
regenerate() { RUSTC_BOOTSTRAP=1 cbindgen --quiet --config ffi/cbindgen.toml --crate tunpipe-ffi --output "$1"; }
regenerate "$generated"
if ! diff -u ffi/tunpipe.h "$generated"; then
  echo "ffi/tunpipe.h is stale: regenerate it with"
  echo "  RUSTC_BOOTSTRAP=1 cbindgen --config ffi/cbindgen.toml --crate tunpipe-ffi --output ffi/tunpipe.h"
  exit 1
fi

step "libtunpipe_ffi.a (release)"
# The README's promise: a release build of the workspace's libraries yields the static library.
cargo build --release --workspace --lib --quiet
lib="${target_dir}/release/libtunpipe_ffi.a"

step "compile the C host test against the committed header"
bin="${target_dir}/ffi-host-test"
gcc -std=c11 -Wall -Wextra -Werror -O1 -g -I ffi -o "$bin" ffi/tests/host_test.c "$lib" \
  -lpthread -ldl -lm

step "C host test"
out=$("$bin" 2>&1) || { echo "$out"; exit 1; }
echo "$out"
if grep -q '^SKIPPED' <<<"$out"; then
  echo
  echo "!! ffi: the real-TUN part of the C host test was SKIPPED (not root): it did NOT pass."
fi

if command -v valgrind >/dev/null; then
  step "C host test under valgrind memcheck"
  # Threads parked in Rust's thread-local state show as 'possibly lost'; only definite
  # leaks and memory errors fail.
  vout=$(valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite \
    --show-possibly-lost=no "$bin" 2>&1) || { echo "$vout"; exit 1; }
  echo "$vout" | tail -n 1
else
  echo "(valgrind not installed: memcheck run skipped)"
fi
step "done"
