//! Data after a quiet spell: boringtun's timers count the handshake owed for silence from
//! the last packet heard, so any run of them between the first data sent after 15 s of quiet
//! and its answer would renegotiate a young session. The stage holds them until the answer
//! comes (or until the handshake is owed counted from the send). Here the mock clock makes
//! the quiet spell, and a second packet 300 ms after the first, before any answer (a round
//! trip longer than a tick, here a path down for a moment), finds `Tunn`'s clock stale: the
//! run it would have made is the one held. At a resume, the timer thread's overdue timers
//! race the first packet out in the same way.

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

/// Sends packet `seq` from `from`'s app (at `src`) and waits until `to`'s app has it.
fn carry_one(from: &mut End, to: &mut End, src: [u8; 4], dst: [u8; 4], seq: u64) {
    let packet = udp4_packet(src, dst, 4000, 5000, &seq.to_be_bytes());
    send(&mut from.app_tx, &packet);
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
    assert_eq!(got.unwrap(), packet);
}

#[test]
fn data_after_a_quiet_spell_is_answered_on_the_young_session_without_a_handshake() {
    let stop_following = Arc::new(AtomicBool::new(false));
    let follower = follow_real_time(stop_following.clone());
    let (udp_a, udp_b) = (loopback_udp(), loopback_udp());
    let (addr_a, addr_b) = (udp_a.local_addr().unwrap(), udp_b.local_addr().unwrap());
    // A reaches B through a relay, which can take the path down.
    let relay = Relay::start(addr_a, addr_b);
    let keys = (KeyPair::generate(), KeyPair::generate());
    let (text_a, _) = pair_texts(&keys, addr_a, relay.addr());
    let (_, text_b) = pair_texts(&keys, relay.addr(), addr_b);
    let mut a = End::start(&text_a, udp_a, 0);
    let mut b = End::start(&text_b, udp_b, 0);
    let heard_by = |end: &End| end.stage.peers()[0].rx_packets;

    carry_one(&mut a, &mut b, A, B, 0);
    // B owes A a keepalive for that packet; suspending sends it at once. Then nobody owes
    // anything, and the quiet spell begins.
    let heard = heard_by(&a);
    b.engine.suspend().unwrap();
    assert!(eventually(|| heard_by(&a) > heard), "no keepalive from B");
    b.engine.resume().unwrap();
    MockClock::advance(Duration::from_secs(20));

    // Data goes out, and gets no answer: the path is down (an answer from B would come at
    // once, a keepalive its timers owe for data after its own quiet spell). 300 ms later, more
    // data, with `Tunn`'s clock stale.
    relay.set_down(true);
    let sent_by = |end: &End| end.stage.peers()[0].tx_packets;
    for seq in [1, 2] {
        let sent = sent_by(&a);
        send(&mut a.app_tx, &udp4_packet(A, B, 4000, 5000, &[seq]));
        assert!(eventually(|| sent_by(&a) > sent), "packet {seq} not sent");
        MockClock::advance(Duration::from_millis(300));
    }
    let initiations = |end: &End| end.counters.snapshot().handshake_initiations;
    assert_eq!(initiations(&a), 1, "a handshake before the answer");
    // The answer comes; then more data, with the clock stale again.
    relay.set_down(false);
    carry_one(&mut b, &mut a, B, A, 3);
    MockClock::advance(Duration::from_millis(300));
    carry_one(&mut a, &mut b, A, B, 4);
    assert_eq!(initiations(&a), 1, "a handshake after the answer");
    let (sa, sb) = (a.counters.snapshot(), b.counters.snapshot());
    assert_eq!(sa.handshakes_completed, 1, "{sa:?}");
    assert_eq!(sb.handshakes_completed, 1, "{sb:?}");

    for end in [&a, &b] {
        end.engine.stop().unwrap();
        for direction in Direction::BOTH {
            assert_conserved(&end.engine.direction_stats(direction));
        }
    }
    stop_following.store(true, Ordering::Relaxed);
    follower.join().unwrap();
}
