//! Soak and stress tests on the in-memory device: many start/stop cycles with the process's
//! threads, fds and memory checked at the end, and the real composition (rings, doorbells,
//! mailbox, interrupt) under racing stops, snapshots and bursts. They run as any user (Linux:
//! they read /proc; see memory.rs). The real-TUN soak is in `tests/real_tun/soak.rs`.
//!
//! The default run is short. The full campaigns, with the TUN part (as root):
//!
//! ```text
//! TUNPIPE_SOAK_CYCLES=10000 TUNPIPE_SOAK_TUN_CYCLES=1000 TUNPIPE_SOAK_SECONDS=60 \
//!     cargo test --release --test soak --test real_tun
//! ```
//!
//! Tests run one at a time, so that the resource counts see only their own engines.
//! Elsewhere than on Linux this binary runs nothing.

#[cfg(target_os = "linux")]
mod memory;

fn main() {
    #[cfg(target_os = "linux")]
    memory::main();
}
