//! Data after a quiet spell: boringtun's timers count the handshake owed for silence from
//! the last packet heard, so any run of them between the first data sent after 15 s of quiet
//! and its answer would renegotiate a young session. The stage holds them until the answer
//! comes (or until the handshake is owed counted from the send). Here the mock clock makes
//! the quiet spell, and a second packet 300 ms after the first, before any answer (a round
//! trip longer than a tick, here a path down for a moment), finds `Tunn`'s clock stale: the
//! run it would have made is the one held. At a resume, the timer thread's overdue timers
//! race the first packet out in the same way.

use mock_instant::MockClock;
use std::time::Duration;
use tunpipe_mock_clock_tests::{carry_one, packet, Rig, A, B};
use tunpipe_testkit::check::eventually;
use tunpipe_testkit::memory::send;
use tunpipe_testkit::wg::End;

#[test]
fn data_after_a_quiet_spell_is_answered_on_the_young_session_without_a_handshake() {
    let mut rig = Rig::start();
    let heard_by = |end: &End| end.stage.peers()[0].rx_packets;
    let sent_by = |end: &End| end.stage.peers()[0].tx_packets;
    let initiations = |end: &End| end.counters.snapshot().handshake_initiations;

    carry_one(&mut rig.a, &mut rig.b, A, B, 0);
    // B owes A a keepalive for that packet; suspending sends it at once. Then nobody owes
    // anything, and the quiet spell begins.
    let heard = heard_by(&rig.a);
    rig.b.engine.suspend().unwrap();
    assert!(
        eventually(|| heard_by(&rig.a) > heard),
        "no keepalive from B"
    );
    rig.b.engine.resume().unwrap();
    MockClock::advance(Duration::from_secs(20));

    // Data goes out, and gets no answer: the path is down (an answer from B would come at
    // once, a keepalive its timers owe for data after its own quiet spell). 300 ms later, more
    // data, with `Tunn`'s clock stale.
    rig.relay.set_down(true);
    for seq in [1, 2] {
        let sent = sent_by(&rig.a);
        send(&mut rig.a.app_tx, &packet(A, B, seq));
        assert!(
            eventually(|| sent_by(&rig.a) > sent),
            "packet {seq} not sent"
        );
        MockClock::advance(Duration::from_millis(300));
    }
    assert_eq!(initiations(&rig.a), 1, "a handshake before the answer");
    // The answer comes; then more data, with the clock stale again.
    rig.relay.set_down(false);
    carry_one(&mut rig.b, &mut rig.a, B, A, 3);
    MockClock::advance(Duration::from_millis(300));
    carry_one(&mut rig.a, &mut rig.b, A, B, 4);
    assert_eq!(initiations(&rig.a), 1, "a handshake after the answer");
    let (sa, sb) = (rig.a.counters.snapshot(), rig.b.counters.snapshot());
    assert_eq!(sa.handshakes_completed, 1, "{sa:?}");
    assert_eq!(sb.handshakes_completed, 1, "{sb:?}");
    rig.stop();
}
