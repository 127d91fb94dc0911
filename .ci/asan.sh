#!/usr/bin/env bash
# The unsafe code under AddressSanitizer and LeakSanitizer: the tests that exercise it (device I/O, TUN offload,
# UDP batching, the C ABI and WireGuardKit's functions, the tunnel) built with -Zsanitizer=address on a
# nightly toolchain.
# Skipped under it, each for a reason: checks that compare resident memory (ASan's shadow
# memory and quarantine change it), the address-space-cap test (ASan reserves terabytes of
# address space), and doc tests (they link without the sanitizer runtime).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "AddressSanitizer run SKIPPED: no nightly toolchain here (rustup toolchain install nightly)"
  exit 0
fi
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Zsanitizer=address --cfg tunpipe_asan"
# LeakSanitizer (on by default with ASan on Linux) checks for leaks at exit too.
export ASAN_OPTIONS="abort_on_error=1"
export CARGO_TARGET_DIR=target/asan
# Without the release profile's whole-program optimisation: it doubles the build and changes
# nothing ASan looks at.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
# --target keeps build scripts and proc macros uninstrumented.
asan_test() { cargo +nightly test --release --target "$host" "$@"; }

asan_test -p tunpipe --lib
asan_test -p tunpipe --test tunnel --test pipeline --test balance --test reliability --test sizes
asan_test -p tunpipe --test real_tun -- --skip tun_start_stop_cycles_leak_no_threads_fds_or_memory
asan_test -p tunpipe --test wireguard
asan_test -p tunpipe-ffi --test abi --test secrets --test wgkit --test tunnel
asan_test -p tunpipe-ffi --test misuse -- --skip a_valid_config_too_large_to_allocate_is_an_error_not_an_abort
echo "AddressSanitizer: no memory error found"
