//! What the tests in tests/ share: two tunnel ends on loopback, A reaching B through a relay,
//! on a mock clock that follows real time between the jumps a test makes. (One test per
//! file, each in its own process: the mock clock is global.)

use mock_instant::MockClock;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tunpipe::stage::Direction;
use tunpipe_testkit::check::{assert_conserved, eventually};
use tunpipe_testkit::memory::send;
use tunpipe_testkit::packets::udp4_packet;
use tunpipe_testkit::wg::{loopback_udp, pair_texts, End, KeyPair, Relay};

/// A's address inside the tunnel.
pub const A: [u8; 4] = [10, 0, 0, 1];
/// B's.
pub const B: [u8; 4] = [10, 0, 0, 2];

/// Two tunnel ends, A reaching B through a relay (which sees, and can drop, what passes),
/// while the mock clock follows real time.
#[allow(missing_debug_implementations)]
pub struct Rig {
    /// The end that starts the handshake.
    pub a: End,
    /// The other.
    pub b: End,
    /// Between them.
    pub relay: Relay,
    /// Where A sends from: what the relay captured from A is its.
    pub addr_a: SocketAddr,
    following: Arc<AtomicBool>,
    follower: Option<JoinHandle<()>>,
}

impl Rig {
    /// Starts both ends (no workers), and the mock clock following real time, so that the
    /// tunnel's short waits (a handshake's, a held packet's) pass as they would.
    pub fn start() -> Rig {
        let following = Arc::new(AtomicBool::new(true));
        let follower = follow_real_time(following.clone());
        let (udp_a, udp_b) = (loopback_udp(), loopback_udp());
        let (addr_a, addr_b) = (udp_a.local_addr().unwrap(), udp_b.local_addr().unwrap());
        let relay = Relay::start(addr_a, addr_b);
        let keys = (KeyPair::generate(), KeyPair::generate());
        let (text_a, _) = pair_texts(&keys, addr_a, relay.addr());
        let (_, text_b) = pair_texts(&keys, relay.addr(), addr_b);
        Rig {
            a: End::start(&text_a, udp_a, 0),
            b: End::start(&text_b, udp_b, 0),
            relay,
            addr_a,
            following,
            follower: Some(follower),
        }
    }

    /// Handshake initiations A sent that passed the relay.
    pub fn initiations_from_a(&self) -> usize {
        self.relay
            .captured_from(self.addr_a)
            .iter()
            .filter(|d| d.len() == 148 && d[0] == 1)
            .count()
    }

    /// Stops both ends, checks that each accounted for every packet, and stops the clock
    /// following real time.
    pub fn stop(mut self) {
        for end in [&self.a, &self.b] {
            end.engine.stop().unwrap();
            for direction in Direction::BOTH {
                assert_conserved(&end.engine.direction_stats(direction));
            }
        }
        self.following.store(false, Ordering::Relaxed);
        if let Some(follower) = self.follower.take() {
            follower.join().unwrap();
        }
    }
}

/// Moves the mock clock forward with real time, every millisecond, while the flag is set.
fn follow_real_time(following: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = Instant::now();
        while following.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
            let now = Instant::now();
            MockClock::advance(now - last);
            last = now;
        }
    })
}

/// A UDP packet from `src` to `dst` carrying `seq`.
pub fn packet(src: [u8; 4], dst: [u8; 4], seq: u64) -> Vec<u8> {
    udp4_packet(src, dst, 4000, 5000, &seq.to_be_bytes())
}

/// Sends packet `seq` from `from`'s app (at `src`) and waits until `to`'s app has it.
pub fn carry_one(from: &mut End, to: &mut End, src: [u8; 4], dst: [u8; 4], seq: u64) {
    let sent = packet(src, dst, seq);
    send(&mut from.app_tx, &sent);
    let mut got = None;
    assert!(
        eventually(|| {
            got = to.app_rx.recv_with(|p| p.to_vec());
            got.is_some()
        }),
        "packet {seq} never arrived: {:?}, {:?}",
        from.counters.snapshot(),
        to.counters.snapshot()
    );
    assert_eq!(got.unwrap(), sent);
}
