//! A simulated sleep: the stage's clock and boringtun's, both mock_instant's (feature
//! `mock-clock`), jump 9 minutes forward together, as a phone's do across a sleep. Between
//! jumps the mock clock follows real time ([`follow_real_time`]), so that the tunnel's short
//! waits (a handshake's, a held packet's) pass as they would. Real time barely moves across
//! the jump, so only the clocks can tell the tunnel that its session is gone.

use mock_instant::MockClock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe::stage::Direction;
use tunpipe_testkit::check::{assert_conserved, eventually};
use tunpipe_testkit::memory::send;
use tunpipe_testkit::packets::udp4_packet;
use tunpipe_testkit::wg::{loopback_udp, pair_texts, End, KeyPair, Relay};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];
/// Past three times REJECT_AFTER_TIME (540 s), after which WireGuard erases every key.
const SLEEP: Duration = Duration::from_secs(9 * 60);

fn packet(seq: u64) -> Vec<u8> {
    udp4_packet(A, B, 4000, 5000, &seq.to_be_bytes())
}

/// Moves the mock clock forward with real time, every millisecond, until the flag is set.
fn follow_real_time(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
            let now = Instant::now();
            MockClock::advance(now - last);
            last = now;
        }
    })
}

/// Sends one packet from A's app and waits until B's app has it.
fn carry_one(a: &mut End, b: &mut End, seq: u64) {
    send(&mut a.app_tx, &packet(seq));
    let mut got = None;
    assert!(
        eventually(|| {
            got = b.app_rx.recv_with(|p| p.to_vec());
            got.is_some()
        }),
        "packet {seq} never arrived: A {:?}, B {:?}",
        a.counters.snapshot(),
        b.counters.snapshot()
    );
    assert_eq!(got.unwrap(), packet(seq));
}

#[test]
fn after_a_9_minute_sleep_the_session_is_gone_and_the_next_packet_starts_a_handshake() {
    let stop_following = Arc::new(AtomicBool::new(false));
    let follower = follow_real_time(stop_following.clone());
    let (udp_a, udp_b) = (loopback_udp(), loopback_udp());
    let (addr_a, addr_b) = (udp_a.local_addr().unwrap(), udp_b.local_addr().unwrap());
    // A reaches B through a relay that counts A's handshake initiations.
    let relay = Relay::start(addr_a, addr_b);
    let keys = (KeyPair::generate(), KeyPair::generate());
    let (text_a, _) = pair_texts(&keys, addr_a, relay.addr());
    let (_, text_b) = pair_texts(&keys, relay.addr(), addr_b);
    let mut a = End::start(&text_a, udp_a, 0);
    let mut b = End::start(&text_b, udp_b, 0);
    let initiations = || {
        relay
            .captured_from(addr_a)
            .iter()
            .filter(|d| d.len() == 148 && d[0] == 1)
            .count()
    };

    carry_one(&mut a, &mut b, 0);
    assert_eq!(initiations(), 1);
    // A moment later, the session carries a packet without a new handshake.
    std::thread::sleep(Duration::from_millis(100));
    carry_one(&mut a, &mut b, 1);
    assert_eq!(initiations(), 1, "a live session needs no handshake");

    MockClock::advance(SLEEP);
    carry_one(&mut a, &mut b, 2);
    assert_eq!(
        initiations(),
        2,
        "after the sleep, the packet waited for a new handshake"
    );
    let (sa, sb) = (a.counters.snapshot(), b.counters.snapshot());
    assert_eq!(sa.handshakes_completed, 2, "{sa:?}");
    assert_eq!(sb.handshakes_completed, 2, "{sb:?}");
    assert_eq!(sa.tx_packets, 3, "{sa:?}");

    for end in [&a, &b] {
        end.engine.stop().unwrap();
        for direction in Direction::BOTH {
            assert_conserved(&end.engine.direction_stats(direction));
        }
    }
    stop_following.store(true, Ordering::Relaxed);
    follower.join().unwrap();
}
