//! What tunpipe's tests and benches share, in one place.
//!
//! Every integration test binary and bench of the workspace (the engine's, the CLI's and the
//! C ABI's) takes its helpers from here, so that no two of them carry a copy:
//!
//! - [`tun::privilege_problem`]: the one answer to "can this process make a TUN (in a network
//!   namespace of its own, on Linux)"; [`trials`] marks root-only tests ignored with it;
//! - [`netns`] (Linux): fresh network namespaces, and commands run in a second one;
//! - [`tun`]: TUN builders; [`ping`]: the kernel's `ping` and its summary;
//! - [`check`]: test assertions that return [`libtest_mimic::Failed`], packet conservation,
//!   `eventually`; [`thread`]: a thread with a watchdog;
//! - [`proc`]: threads, fds, memory and per-thread CPU of this process from `/proc`;
//! - [`packets`] and [`memory`]: packets to feed the engine and the in-memory device's peer;
//! - [`load`]: UDP load through a TUN (closed loop with round-trip times, or open loop);
//! - [`report`]: the benches' tables, numbers, histograms and result files; [`running`]: a
//!   command (the CLI) that runs until SIGINT;
//! - [`alloc`]: a counting global allocator;
//! - [`config`] and [`bridge`]: an engine config with N workers, and two engines that join
//!   two devices;
//! - [`wg`]: WireGuard keys and wg-quick texts, and two tunpipe tunnels joined over loopback;
//!   [`wgpeer`] (Linux, root): a real peer, wireguard-go in a second namespace behind a veth;
//! - [`secrets`]: damaged wg-quick texts holding known keys, and the check that no output
//!   shows any 16-character part of them; texts at the peer and prefix limits.

pub mod alloc;
pub mod check;
pub mod load;
pub mod memory;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod packets;
pub mod ping;
pub mod proc;
pub mod report;
pub mod running;
pub mod secrets;
pub mod thread;
pub mod trials;
pub mod tun;
pub mod wg;
#[cfg(target_os = "linux")]
pub mod wgpeer;

/// The default config with `workers` workers.
pub fn config(workers: usize) -> tunpipe::Config {
    let mut c = tunpipe::Config::default();
    c.workers = workers;
    c
}

/// A bridge of two devices: one engine reads `a` and writes `b`, the other the reverse, both
/// with `config` and the `passthrough` stage. Returns (a to b, b to a).
pub fn bridge<A: tunpipe::Device, B: tunpipe::Device>(
    a: &A,
    b: &B,
    config: &tunpipe::Config,
) -> Result<(tunpipe::Engine, tunpipe::Engine), String> {
    let (a_rx, a_tx) = a.open().map_err(|e| format!("open a: {e}"))?;
    let (b_rx, b_tx) = b.open().map_err(|e| format!("open b: {e}"))?;
    Ok((
        passthrough(config, a_rx, b_tx)?,
        passthrough(config, b_rx, a_tx)?,
    ))
}

/// An engine with `config` and the `passthrough` stage from `rx` to `tx`.
fn passthrough(
    config: &tunpipe::Config,
    rx: impl tunpipe::RxHalf,
    tx: impl tunpipe::TxHalf,
) -> Result<tunpipe::Engine, String> {
    tunpipe::Engine::builder()
        .config(config.clone())
        .stage(tunpipe::BuiltinStage::Passthrough)
        .start_halves(rx, tx)
        .map_err(|e| e.to_string())
}
