//! Driving the in-memory device from its peer side.

use std::time::{Duration, Instant};
use tunpipe::device::{PeerReceiver, PeerSender};

/// Sends, retrying while the device is full, up to a generous deadline (30 s; it turns a
/// hang into a failure and is not a timing assertion).
pub fn send(peer: &mut PeerSender, packet: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while peer.send(packet).is_err() {
        assert!(Instant::now() < deadline, "the engine stopped reading");
        std::thread::yield_now();
    }
}

/// Receives `n` packets, giving up (with what it has) after a generous deadline (30 s; it
/// turns a hang into a failure and is not a timing assertion).
pub fn recv_n(peer: &mut PeerReceiver, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::with_capacity(n);
    while out.len() < n && Instant::now() < deadline {
        match peer.recv_with(|p| p.to_vec()) {
            Some(p) => out.push(p),
            None => std::thread::yield_now(),
        }
    }
    out
}
