#!/usr/bin/env bash
# Hardening gate (called from .ci/run): a short cargo-fuzz smoke over every fuzz target, and,
# on request, ThreadSanitizer and the long soak. The soak, stress and ABI-misuse tests'
# default (short) versions already run in `cargo test --release` (tests/soak,
# tests/real_tun/soak.rs, ffi/tests/misuse), so they are not repeated here.
#
#   TUNPIPE_FUZZ_SECONDS=30   seconds per fuzz target (0 skips fuzzing)
#   TUNPIPE_HARDENING_TSAN=1  also run the pipeline, reliability and memory-soak tests under TSan
#                             (a -Zbuild-std build: about 4-8 min cold on 2 cores)
#   TUNPIPE_HARDENING_SOAK=1  also run the full soak: 10,000 memory cycles, 1,000 TUN
#                             cycles, 60 s of UDP (about 75 s; TUN parts need root)
#
# Cold cost of the default, measured on the 2-core VM: cargo install cargo-fuzz (2-4.5 min),
# (with four targets since the wg-quick parser joined: add 30 s; five with the UAPI parser: 30 s more)
# the fuzz build (3 min), 3 x 30 s of fuzzing: about 7-9 min; warm, about 100 s. cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TARGET_DIR=$target_dir
fuzz_seconds=${TUNPIPE_FUZZ_SECONDS:-30}
started=$SECONDS
step() { echo; echo "== hardening: $* (at $((SECONDS - started)) s)"; }

if [ "$fuzz_seconds" -gt 0 ]; then
  step "cargo-fuzz"
  if ! cargo fuzz --version >/dev/null 2>&1; then
    # Its own target dir, so it never waits on or invalidates the crate's build.
    CARGO_TARGET_DIR="$target_dir/cargo-fuzz-build" cargo install cargo-fuzz --locked --quiet
  fi
  cargo fuzz --version

  step "fuzz build"
  # No AddressSanitizer in the smoke: the fuzzed code (wire, pool, stages) has no unsafe, and
  # Rust's bounds checks already turn an out-of-bounds access into a panic, which libFuzzer
  # reports. It builds in ~3 min cold instead of ~4.5 and runs ~2x faster. The recorded
  # campaigns (SECURITY.md) used ASan, cargo-fuzz's default.
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer none)

  for t in wire reflect packet_window wg_config uapi; do
    step "fuzz $t for ${fuzz_seconds} s"
    mkdir -p "fuzz/corpus/$t"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("seeds/$t")
    log=$(mktemp)
    if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$fuzz_seconds" -print_final_stats=1) >"$log" 2>&1; then
      tail -60 "$log"
      echo "fuzz target $t failed: the crashing input is in fuzz/artifacts/$t/"
      exit 1
    fi
    grep -E '^Done|stat::number_of_executed_units|stat::new_units_added' "$log" || true
    rm -f "$log"
  done
fi

if [ "${TUNPIPE_HARDENING_TSAN:-0}" = 1 ]; then
  step "ThreadSanitizer: pipeline and soak tests"
  rustup component add rust-src >/dev/null 2>&1 || true
  # Short soak under TSan: instrumented code runs ~30x slower.
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread" \
    CARGO_TARGET_DIR="$target_dir/tsan" \
    TUNPIPE_SOAK_CYCLES=500 TUNPIPE_SOAK_TUN_CYCLES=100 TUNPIPE_SOAK_SECONDS=3 \
    TUNPIPE_STRESS_RUNS=100 \
    cargo test -Zbuild-std --target x86_64-unknown-linux-gnu -p tunpipe --test pipeline \
    --test reliability --test soak
fi

if [ "${TUNPIPE_HARDENING_SOAK:-0}" = 1 ]; then
  step "full soak"
  TUNPIPE_SOAK_CYCLES=10000 TUNPIPE_SOAK_TUN_CYCLES=1000 TUNPIPE_SOAK_SECONDS=60 \
    cargo test --release -p tunpipe --test soak --test real_tun -- --nocapture
fi

step "done in $((SECONDS - started)) s"
