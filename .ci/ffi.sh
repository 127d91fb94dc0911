#!/usr/bin/env bash
# The C ABI gate: the committed header must be what the pinned cbindgen generates, and the C
# host test (ffi/tests/host_test.c) must pass against libtunpipe_ffi.a on a real TUN (as root:
# it makes its own network namespace), natively and, where valgrind exists, under memcheck.
# So must the WireGuardKit host test (ffi/tests/wgkit_test.c), against ffi/wireguardkit.h,
# whose hand-written declarations must agree with cbindgen's reading of the same functions.
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

step "ffi/wireguardkit.h agrees with the Rust"
# WireGuardKit's eight are kept out of tunpipe.h (cbindgen.toml's exclude) and declared by
# hand with WireGuardKit's types. cbindgen without that exclude declares them as the Rust
# has them; a C compiler refuses two declarations of one function with different types.
wgkit_functions="wgSetLogger wgTurnOn wgTurnOff wgSetConfig wgGetConfig wgBumpSockets \
  wgDisableSomeRoamingForBrokenMobileSemantics wgVersion"
for f in $wgkit_functions; do
  grep -q "^extern [^(]*[ *]$f(" ffi/wireguardkit.h || { echo "ffi/wireguardkit.h does not declare $f"; exit 1; }
  if grep -q "[ *]$f(" ffi/tunpipe.h; then echo "ffi/tunpipe.h declares $f"; exit 1; fi
done
declared=$(grep -c '^extern [^"]*(' ffi/wireguardkit.h)
[ "$declared" = 8 ] || { echo "ffi/wireguardkit.h declares $declared functions, not WireGuardKit's 8"; exit 1; }
everything_config=$(mktemp)
everything=$(mktemp --suffix .h)
both=$(mktemp --suffix .c)
trap 'rm -f "$generated" "$everything_config" "$everything" "$both"' EXIT
sed '/^exclude = \[/,/^\]/d' ffi/cbindgen.toml >"$everything_config"
RUSTC_BOOTSTRAP=1 cbindgen --quiet --config "$everything_config" --crate tunpipe-ffi --output "$everything"
for f in $wgkit_functions; do
  grep -q "[ *]$f(" "$everything" || { echo "cbindgen does not see $f in the crate"; exit 1; }
done
printf '#include "%s"\n#include "%s"\n' "$everything" "$PWD/ffi/wireguardkit.h" >"$both"
gcc -std=c11 -Wall -Wextra -Werror -fsyntax-only "$both"
echo "the eight agree with the Rust; tunpipe.h declares none of them"

step "libtunpipe_ffi.a (release)"
# As the README builds it: its crate type alone, so that LTO runs (ffi/Cargo.toml).
cargo rustc --release -p tunpipe-ffi --lib --crate-type staticlib --quiet
lib="${target_dir}/release/libtunpipe_ffi.a"

step "compile the C host tests against the committed headers"
bin="${target_dir}/ffi-host-test"
gcc -std=c11 -Wall -Wextra -Werror -O1 -g -I ffi -o "$bin" ffi/tests/host_test.c "$lib" \
  -lpthread -ldl -lm
wgkit_bin="${target_dir}/ffi-wgkit-test"
gcc -std=c11 -Wall -Wextra -Werror -O1 -g -I ffi -o "$wgkit_bin" ffi/tests/wgkit_test.c "$lib" \
  -lpthread -ldl -lm

step "C host test"
out=$("$bin" 2>&1) || { echo "$out"; exit 1; }
echo "$out"
if grep -q '^SKIPPED' <<<"$out"; then
  echo
  echo "!! ffi: the real-TUN part of the C host test was SKIPPED (not root): it did NOT pass."
fi

step "WireGuardKit host test (wgTurnOn ... wgTurnOff to wireguard-go peers)"
out=$("$wgkit_bin" 2>&1) || { echo "$out"; exit 1; }
echo "$out"
if grep -q '^SKIPPED' <<<"$out"; then
  echo
  echo "!! ffi: the tunnel part of the WireGuardKit host test was SKIPPED: it did NOT pass."
fi

if command -v valgrind >/dev/null; then
  step "C host test under valgrind memcheck"
  # Threads parked in Rust's thread-local state show as 'possibly lost'; only definite
  # leaks and memory errors fail.
  vout=$(valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite \
    --show-possibly-lost=no "$bin" 2>&1) || { echo "$vout"; exit 1; }
  echo "$vout" | tail -n 1
  step "WireGuardKit host test under valgrind memcheck"
  # Everything runs tens of times slower under valgrind: wgTurnOff gets a hang guard's
  # limit there; the 50 ms is checked by the native run above.
  vout=$(TUNPIPE_TURN_OFF_LIMIT_MS=2000 valgrind -q --error-exitcode=9 --leak-check=full \
    --errors-for-leak-kinds=definite --show-possibly-lost=no "$wgkit_bin" 2>&1) ||
    { echo "$vout"; exit 1; }
  echo "$vout" | tail -n 3
else
  echo "(valgrind not installed: memcheck run skipped)"
fi
step "done"
