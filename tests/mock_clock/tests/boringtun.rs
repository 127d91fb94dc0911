//! boringtun's timer moments and queue depth, probed on a mocked clock. They are private to
//! boringtun, and src/wireguard/timers.rs (and `QUEUE_DEPTH` in src/wireguard/mod.rs) derive
//! tunpipe's deadlines and sizes from them: boringtun is pinned exactly, and this test fails
//! if a new version moves one, so that the mirror is updated with it.
//!
//! One test, in its own process: the mock clock is global.

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use mock_instant::MockClock;
use std::time::Duration;

const HANDSHAKE_INIT: u8 = 1;
const DATA: u8 = 4;
/// A data message carrying nothing: a keepalive.
const KEEPALIVE_LEN: usize = 32;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Two ends that know each other.
fn pair() -> (Tunn, Tunn) {
    let (ka, kb) = (StaticSecret::from([1u8; 32]), StaticSecret::from([2u8; 32]));
    let (pa, pb) = (PublicKey::from(&ka), PublicKey::from(&kb));
    (
        Tunn::new(ka, pb, None, None, 1, None),
        Tunn::new(kb, pa, None, None, 2, None),
    )
}

/// What a call wrote to the network, if anything.
fn written(result: TunnResult<'_>) -> Option<Vec<u8>> {
    match result {
        TunnResult::WriteToNetwork(m) => Some(m.to_vec()),
        _ => None,
    }
}

fn tick(t: &mut Tunn) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    written(t.update_timers(&mut buf))
}

/// An IPv4 packet (a header's worth), for `encapsulate`.
fn ip_packet() -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[3] = 28;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p
}

#[test]
fn boringtun_keeps_the_moments_and_queue_depth_tunpipe_mirrors() {
    let mut buf = vec![0u8; 2048];

    // REKEY_TIMEOUT, 5 s: an unanswered initiation is retried.
    let (mut a, _) = pair();
    let first = written(a.format_handshake_initiation(&mut buf, false)).unwrap();
    assert_eq!(first[0], HANDSHAKE_INIT);
    MockClock::advance(secs(5) - ms(1));
    assert_eq!(tick(&mut a), None, "retried before REKEY_TIMEOUT");
    MockClock::advance(ms(1));
    assert_eq!(
        tick(&mut a).map(|m| m[0]),
        Some(HANDSHAKE_INIT),
        "REKEY_TIMEOUT"
    );

    // MAX_QUEUE_DEPTH, 256: packets waiting for a handshake.
    let (mut a, mut b) = pair();
    let packet = ip_packet();
    let init = written(a.encapsulate(&packet, &mut buf)).unwrap();
    for _ in 0..300 {
        let _ = a.encapsulate(&packet, &mut buf);
    }
    let response = written(b.decapsulate(None, &init, &mut buf)).unwrap();
    let _confirmation = written(a.decapsulate(None, &response, &mut buf));
    let mut released = Vec::new();
    while let Some(m) = written(a.decapsulate(None, &[], &mut buf)) {
        released.push(m);
    }
    assert_eq!(released.len(), 256, "MAX_QUEUE_DEPTH");
    let t0_session = MockClock::time();

    // KEEPALIVE_TIMEOUT, 10 s: data received and nothing sent back since B's response earns
    // a keepalive 10 s after that response.
    let until = |t: Duration| t0_session + t - MockClock::time();
    MockClock::advance(secs(1));
    tick(&mut a);
    tick(&mut b);
    // (Data A sends now, after its session began: the rekey below counts on it.)
    let data = written(a.encapsulate(&packet, &mut buf)).unwrap();
    let mut out = vec![0u8; 2048];
    assert!(matches!(
        b.decapsulate(None, &data, &mut out),
        TunnResult::WriteToTunnelV4(..)
    ));
    MockClock::advance(until(secs(10)) - ms(1));
    assert_eq!(tick(&mut b), None, "a keepalive before KEEPALIVE_TIMEOUT");
    MockClock::advance(ms(1));
    let keepalive = tick(&mut b).expect("KEEPALIVE_TIMEOUT");
    assert_eq!((keepalive[0], keepalive.len()), (DATA, KEEPALIVE_LEN));
    // A hears from B, so the 15 s handshake-on-silence rule stays quiet.
    tick(&mut a);
    let _ = a.decapsulate(None, &keepalive, &mut out);

    // REKEY_AFTER_TIME, 120 s: the initiator, having sent data, starts a new handshake.
    MockClock::advance(until(secs(120)) - ms(1));
    assert_eq!(tick(&mut a), None, "a rekey before REKEY_AFTER_TIME");
    MockClock::advance(ms(1));
    assert_eq!(
        tick(&mut a).map(|m| m[0]),
        Some(HANDSHAKE_INIT),
        "REKEY_AFTER_TIME"
    );

    // REJECT_AFTER_TIME × 3, 540 s: without a new session, every key is erased.
    MockClock::advance(until(secs(540)) - ms(1));
    let mut buf = vec![0u8; 2048];
    assert!(!matches!(
        b.update_timers(&mut buf),
        TunnResult::Err(boringtun::noise::errors::WireGuardError::ConnectionExpired)
    ));
    MockClock::advance(ms(1));
    assert!(matches!(
        b.update_timers(&mut buf),
        TunnResult::Err(boringtun::noise::errors::WireGuardError::ConnectionExpired)
    ));
}
