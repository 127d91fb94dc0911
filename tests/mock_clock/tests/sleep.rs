//! A simulated sleep: the stage's clock and boringtun's, both mock_instant's (feature
//! `mock-clock`), jump 9 minutes forward together, as a phone's do across a sleep. Between
//! jumps the mock clock follows real time ([`Rig`]), so that the tunnel's short
//! waits (a handshake's, a held packet's) pass as they would. Real time barely moves across
//! the jump, so only the clocks can tell the tunnel that its session is gone.

use mock_instant::MockClock;
use std::time::Duration;
use tunpipe_mock_clock_tests::{carry_one, Rig, A, B};

/// Past three times REJECT_AFTER_TIME (540 s), after which WireGuard erases every key.
const SLEEP: Duration = Duration::from_secs(9 * 60);

#[test]
fn after_a_9_minute_sleep_the_session_is_gone_and_the_next_packet_starts_a_handshake() {
    let mut rig = Rig::start();

    carry_one(&mut rig.a, &mut rig.b, A, B, 0);
    assert_eq!(rig.initiations_from_a(), 1);
    // A moment later, the session carries a packet without a new handshake.
    std::thread::sleep(Duration::from_millis(100));
    carry_one(&mut rig.a, &mut rig.b, A, B, 1);
    assert_eq!(
        rig.initiations_from_a(),
        1,
        "a live session needs no handshake"
    );

    MockClock::advance(SLEEP);
    carry_one(&mut rig.a, &mut rig.b, A, B, 2);
    assert_eq!(
        rig.initiations_from_a(),
        2,
        "after the sleep, the packet waited for a new handshake"
    );
    let (sa, sb) = (rig.a.counters.snapshot(), rig.b.counters.snapshot());
    assert_eq!(sa.handshakes_completed, 2, "{sa:?}");
    assert_eq!(sb.handshakes_completed, 2, "{sb:?}");
    assert_eq!(sa.tx_packets, 3, "{sa:?}");
    rig.stop();
}
