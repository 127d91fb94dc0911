//! Helpers shared by the integration tests: packet builders and a closed-loop driver for the
//! in-memory device.
#![allow(dead_code)]

use std::time::{Duration, Instant};
use tunpipe::device::{PeerReceiver, PeerSender};

/// An IPv4/UDP packet from 10.0.0.1:`sport` to 10.0.0.2:`dport` carrying `seq` in the first
/// 8 payload bytes, padded to `payload` bytes (at least 8).
pub fn udp4(sport: u16, dport: u16, seq: u64, payload: usize) -> Vec<u8> {
    let mut body = seq.to_be_bytes().to_vec();
    body.resize(payload.max(8), 0xab);
    let builder =
        etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(sport, dport);
    let mut out = Vec::with_capacity(builder.size(body.len()));
    builder.write(&mut out, &body).unwrap();
    out
}

/// The (source port, sequence) of a UDP packet built by [`udp4`] (or reflected from one).
pub fn udp4_seq(packet: &[u8]) -> (u16, u16, u64) {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let sport = u16::from_be_bytes([packet[ihl], packet[ihl + 1]]);
    let dport = u16::from_be_bytes([packet[ihl + 2], packet[ihl + 3]]);
    let seq = u64::from_be_bytes(packet[ihl + 8..ihl + 16].try_into().unwrap());
    (sport, dport, seq)
}

/// Sends, retrying while the device is full, up to a generous deadline.
pub fn send(peer: &mut PeerSender, packet: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while peer.send(packet).is_err() {
        assert!(Instant::now() < deadline, "the engine stopped reading");
        std::thread::yield_now();
    }
}

/// Receives `n` packets, giving up (with what it has) after a generous deadline. The deadline
/// turns a hang into a failure; it is not a timing assertion.
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

/// Waits until `cond` holds, up to a generous deadline; returns whether it did.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}
