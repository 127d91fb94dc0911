//! The tunnel on loopback, as any user: two tunpipe WireGuard tunnels, each with an in-memory
//! inside and a real UDP socket outside, talk to each other. Handshakes, data both ways,
//! conservation in each direction, restart, rebind, a stop with a handshake pending, and the
//! datagrams an attacker sends (garbage, replays, a wrong key, a forged source).
//!
//! The same stage against wireguard-go, on a real TUN, is in tests/wireguard/ (root).

use std::net::UdpSocket;
use std::time::Duration;
use tunpipe::stage::Direction;
use tunpipe_testkit::check::{eventually, eventually_within};
use tunpipe_testkit::memory::send;
use tunpipe_testkit::wg::{
    carry, config_text, loopback_udp, numbered_packet, pair, pair_texts, stop_and_check,
    stranger_initiation, End, Flood, KeyPair, Pair, PeerText, Relay,
};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];

#[test]
fn two_tunnels_handshake_and_carry_packets_both_ways() {
    for workers in [0, 1, 2] {
        let Pair { mut a, mut b, .. } = pair(workers);
        // The first packets wait in A's stage for the handshake the first one starts (boringtun
        // queues up to 256), and are flushed when it completes: more than a reserve holds.
        carry(&mut a, &mut b, A, B, 200);
        carry(&mut b, &mut a, B, A, 50);
        let (sa, sb) = (a.counters.snapshot(), b.counters.snapshot());
        assert_eq!(sa.handshakes_completed, 1, "{sa:?}");
        assert_eq!(sb.handshakes_completed, 1, "{sb:?}");
        assert_eq!((sa.tx_packets, sa.rx_packets), (200, 50), "{sa:?}");
        assert_eq!((sb.tx_packets, sb.rx_packets), (50, 200), "{sb:?}");
        assert!(sa.since_last_handshake.is_some());
        stop_and_check(&a);
        stop_and_check(&b);
        // A's stage held its first packets for the handshake and originated the initiation
        // (the held packets, released, are not its own); B answered the initiation (consumed
        // inbound, the response originated outbound).
        let out = a.engine.direction_stats(Direction::Outbound);
        assert!(out.originated >= 1 && out.held == 0, "{out:?}");
        assert_eq!(
            out.tx_packets,
            out.rx_packets + out.originated - out.consumed,
            "{out:?}"
        );
        let b_in = b.engine.direction_stats(Direction::Inbound);
        assert!(b_in.consumed >= 1, "{b_in:?}");
    }
}

#[test]
fn a_restarted_tunnel_handshakes_again_and_traffic_resumes() {
    let Pair {
        mut a,
        mut b,
        texts,
        ..
    } = pair(0);
    carry(&mut a, &mut b, A, B, 10);
    a.restart(&texts.0, 0);
    // A fresh stage: no session, so the next packet starts a new handshake.
    carry(&mut a, &mut b, A, B, 10);
    carry(&mut b, &mut a, B, A, 10);
    assert_eq!(a.counters.snapshot().handshakes_completed, 1);
    assert!(b.counters.snapshot().handshakes_completed >= 2);
    stop_and_check(&a);
    stop_and_check(&b);
}

#[test]
fn a_rebind_keeps_the_port_and_the_traffic() {
    let Pair { mut a, mut b, .. } = pair(0);
    carry(&mut a, &mut b, A, B, 10);
    let port = a.udp.local_addr().unwrap().port();
    let handshakes = a.counters.snapshot().handshakes_completed;
    a.engine.rebind().unwrap();
    // The rebind runs on a thread of its own: its handshake, answered, comes from the new
    // socket once it is in place. (A datagram that reaches the old one as it is replaced is
    // lost with it.)
    assert!(eventually(
        || a.counters.snapshot().handshakes_completed > handshakes
    ));
    assert_eq!(a.udp.local_addr().unwrap().port(), port);
    carry(&mut a, &mut b, A, B, 10);
    carry(&mut b, &mut a, B, A, 10);
    stop_and_check(&a);
    stop_and_check(&b);
}

#[test]
fn a_stop_with_a_handshake_pending_returns() {
    // B's endpoint points at a socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let keys = (KeyPair::generate(), KeyPair::generate());
    let udp = loopback_udp();
    let (text, _) = pair_texts(
        &keys,
        udp.local_addr().unwrap(),
        silent.local_addr().unwrap(),
    );
    let mut a = End::start(&text, udp, 0);
    // boringtun holds 256 packets for a handshake, and drops the rest: counted here.
    for seq in 0..300 {
        send(&mut a.app_tx, &numbered_packet(A, B, seq));
    }
    // Wait until the stage has handled all 300 (held, or dropped past the queue), not only
    // until the reader has read them, and until nothing is in flight (the initiation the
    // stage sent is written): then the running balance is exact.
    assert!(eventually(|| {
        let out = a.engine.direction_stats(Direction::Outbound);
        out.held + out.drop_stage == 300 && out.balanced()
    }));
    let running = a.engine.direction_stats(Direction::Outbound);
    assert_eq!(running.held, 256, "the packets that wait: {running:?}");
    assert!(a.counters.snapshot().handshake_initiations >= 1);
    // The stop must not wait for the handshake (it would never complete).
    stop_and_check(&a);
    let out = a.engine.direction_stats(Direction::Outbound);
    // The held packets were never sent: dropped at stop, not "consumed".
    assert_eq!(out.held, 0, "{out:?}");
    assert_eq!(out.consumed, 0, "{out:?}");
    assert_eq!(out.drop_stopped, 256, "{out:?}");
    assert_eq!(out.drop_stage, 44, "{out:?}");
    assert_eq!(a.counters.snapshot().drop_no_handshake, 44);
}

#[test]
fn a_wrong_peer_key_gives_no_traffic_and_counts_handshake_failures() {
    let (udp_a, udp_b) = (loopback_udp(), loopback_udp());
    let keys = (KeyPair::generate(), KeyPair::generate());
    let (text_a, _) = pair_texts(
        &keys,
        udp_a.local_addr().unwrap(),
        udp_b.local_addr().unwrap(),
    );
    // B expects someone else at A's address.
    let stranger = KeyPair::generate();
    let wrong = (stranger, keys.1.clone());
    let (_, text_b) = pair_texts(
        &wrong,
        udp_a.local_addr().unwrap(),
        udp_b.local_addr().unwrap(),
    );
    let mut a = End::start(&text_a, udp_a, 0);
    let b = End::start(&text_b, udp_b, 0);
    send(&mut a.app_tx, &numbered_packet(A, B, 0));
    assert!(eventually(|| b.counters.snapshot().handshake_failures >= 1));
    let sb = b.counters.snapshot();
    assert_eq!(sb.handshakes_completed, 0, "{sb:?}");
    assert!(sb.drop_auth_failure >= 1, "{sb:?}");
    assert_eq!(b.app_rx.pending(), 0);
    assert_eq!(a.counters.snapshot().handshakes_completed, 0);
    stop_and_check(&a);
    stop_and_check(&b);
}

#[test]
fn garbage_and_replayed_datagrams_are_counted_and_change_nothing() {
    // A talks to B through a relay that keeps a copy of every datagram: an attacker on the
    // path. B follows A to the relay's address (roaming).
    let (udp_a, udp_b) = (loopback_udp(), loopback_udp());
    let (addr_a, addr_b) = (udp_a.local_addr().unwrap(), udp_b.local_addr().unwrap());
    let relay = Relay::start(addr_a, addr_b);
    let keys = (KeyPair::generate(), KeyPair::generate());
    let (text_a, text_b) = pair_texts(&keys, addr_a, relay.addr());
    let mut a = End::start(&text_a, udp_a, 0);
    let mut b = End::start(&text_b, udp_b, 0);
    carry(&mut a, &mut b, A, B, 5);
    assert_eq!(b.counters.snapshot().endpoints, vec![Some(relay.addr())]);

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = b.counters.snapshot();
    // Garbage: too short for any message, an unknown type, a data message for no session,
    // 148 bytes of 1 (no message type), a handshake initiation of zeros (its mac1 wrong).
    let mut zeros = [0u8; 148];
    zeros[0] = 1;
    let garbage: [&[u8]; 6] = [b"", b"x", &[9u8; 40], &[4u8; 40], &[1u8; 148], &zeros];
    for junk in garbage {
        attacker.send_to(junk, addr_b).unwrap();
    }
    // Replays: every datagram A sent, handshake initiation included, sent again.
    let sent_by_a = relay.captured_from(addr_a);
    assert!(sent_by_a.len() >= 6, "{} datagrams from A", sent_by_a.len());
    for datagram in &sent_by_a {
        attacker.send_to(datagram, addr_b).unwrap();
    }
    let expected = garbage.len() as u64 - 1 + sent_by_a.len() as u64;
    assert!(
        eventually(|| {
            let s = b.counters.snapshot();
            let drops = |s: &tunpipe::wireguard::WireGuardStats| {
                s.drop_garbage
                    + s.drop_no_session
                    + s.drop_auth_failure
                    + s.drop_replay
                    + s.drop_bad_mac1
            };
            drops(&s) - drops(&before) >= expected
        }),
        "{:?}",
        b.counters.snapshot()
    );
    let after = b.counters.snapshot();
    // The initiation of zeros was dropped for its mac1: no Diffie-Hellman, no failure.
    assert_eq!(after.drop_bad_mac1 - before.drop_bad_mac1, 1, "{after:?}");
    assert_eq!(
        after.drop_auth_failure, before.drop_auth_failure,
        "{after:?}"
    );
    // The 5 data datagrams and the initiation come back as replays.
    assert!(after.drop_replay - before.drop_replay >= 6, "{after:?}");
    assert_eq!(
        after.rx_packets, before.rx_packets,
        "a replay was delivered"
    );
    assert_eq!(after.handshakes_completed, before.handshakes_completed);
    // Nothing an attacker sent moved B's idea of where A is.
    assert_eq!(after.endpoints, vec![Some(relay.addr())]);
    // And B still carries A's traffic, both ways.
    carry(&mut a, &mut b, A, B, 5);
    carry(&mut b, &mut a, B, A, 5);
    stop_and_check(&a);
    stop_and_check(&b);
}

#[test]
fn a_packet_from_outside_the_peers_allowed_ips_is_dropped_and_counted() {
    let Pair { mut a, mut b, .. } = pair(0);
    carry(&mut a, &mut b, A, B, 3);
    // A (whose own config allows sending anywhere B's AllowedIPs cover) forges its source.
    send(&mut a.app_tx, &numbered_packet([10, 0, 0, 99], B, 0));
    assert!(eventually(|| b.counters.snapshot().drop_not_allowed == 1));
    // And a packet for a destination no peer covers never leaves A.
    send(&mut a.app_tx, &numbered_packet(A, [10, 9, 9, 9], 0));
    assert!(eventually(|| a.counters.snapshot().drop_no_peer == 1));
    assert_eq!(b.app_rx.pending(), 0);
    stop_and_check(&a);
    stop_and_check(&b);
}

#[test]
fn an_idle_tunnel_sleeps_until_its_next_deadline() {
    let Pair { mut a, mut b, .. } = pair(0);
    carry(&mut a, &mut b, A, B, 3);
    carry(&mut b, &mut a, B, A, 3);
    // After traffic each way, the next timers are keepalives and session timers: seconds
    // away, so within a short quiet spell the engines' threads do not wake.
    let wakeups = |e: &End| e.engine.stats().wakeups;
    std::thread::sleep(Duration::from_millis(300));
    let (wa, wb) = (wakeups(&a), wakeups(&b));
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        eventually_within(Duration::from_millis(1), || wakeups(&a) == wa
            && wakeups(&b) == wb),
        "idle tunnels woke: {wa} -> {}, {wb} -> {}",
        wakeups(&a),
        wakeups(&b)
    );
    stop_and_check(&a);
    stop_and_check(&b);
}

#[test]
fn a_stopped_tunnel_holds_no_socket() {
    let Pair { mut a, mut b, .. } = pair(0);
    carry(&mut a, &mut b, A, B, 3);
    stop_and_check(&a);
    let addr = a.udp.local_addr().unwrap();
    // The engine handle lives on (its figures stay readable), but once the host lets go of
    // its device, the port is free: nothing in the stopped engine holds the socket.
    let End { engine, udp, .. } = a;
    drop(udp);
    assert!(
        UdpSocket::bind(addr).is_ok(),
        "port {} still held",
        addr.port()
    );
    assert_eq!(engine.direction_stats(Direction::Outbound).rx_packets, 3);
    stop_and_check(&b);
}

#[test]
fn one_end_with_two_peers_routes_by_allowed_ips_and_knows_who_initiates() {
    const C: [u8; 4] = [10, 0, 0, 3];
    let (udp_a, udp_b, udp_c) = (loopback_udp(), loopback_udp(), loopback_udp());
    let (addr_a, addr_b, addr_c) = (
        udp_a.local_addr().unwrap(),
        udp_b.local_addr().unwrap(),
        udp_c.local_addr().unwrap(),
    );
    let (ka, kb, kc) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let peer = |public, endpoint, allowed_ips| PeerText {
        public,
        endpoint: Some(endpoint),
        allowed_ips,
    };
    let text_a = config_text(
        &ka.private,
        "10.0.0.1/24",
        &[
            peer(&kb.public, addr_b, "10.0.0.2/32"),
            peer(&kc.public, addr_c, "10.0.0.3/32"),
        ],
    );
    let text_b = config_text(
        &kb.private,
        "10.0.0.2/24",
        &[peer(&ka.public, addr_a, "10.0.0.0/24")],
    );
    let text_c = config_text(
        &kc.private,
        "10.0.0.3/24",
        &[peer(&ka.public, addr_a, "10.0.0.0/24")],
    );
    let mut a = End::start(&text_a, udp_a, 0);
    let mut b = End::start(&text_b, udp_b, 0);
    let mut c = End::start(&text_c, udp_c, 0);
    // A starts the handshake with B; C starts its own with A, which must tell C's initiation
    // from B's by the static key inside it.
    carry(&mut a, &mut b, A, B, 5);
    carry(&mut c, &mut a, C, A, 5);
    carry(&mut a, &mut c, A, C, 5);
    carry(&mut b, &mut a, B, A, 5);
    assert_eq!(b.app_rx.pending(), 0, "B got nothing meant for C");
    assert_eq!(c.app_rx.pending(), 0, "C got nothing meant for B");
    let sa = a.counters.snapshot();
    assert_eq!(sa.handshakes_completed, 2, "{sa:?}");
    assert_eq!(sa.endpoints, vec![Some(addr_b), Some(addr_c)]);
    // B may speak only for 10.0.0.2: a packet from it claiming C's address is dropped.
    send(&mut b.app_tx, &numbered_packet(C, A, 99));
    assert!(eventually(|| a.counters.snapshot().drop_not_allowed == 1));
    for end in [&a, &b, &c] {
        stop_and_check(end);
    }
}

#[test]
fn overlapping_allowed_ips_route_by_the_longest_prefix_and_a_peer_speaks_only_for_its_own() {
    // A has B with 10.0.0.0/8 and C with 10.1.0.0/16; both name 192.168.7.0/24, which so
    // belongs to C, the later. B and C route everything to A.
    let (udp_a, udp_b, udp_c) = (loopback_udp(), loopback_udp(), loopback_udp());
    let (addr_a, addr_b, addr_c) = (
        udp_a.local_addr().unwrap(),
        udp_b.local_addr().unwrap(),
        udp_c.local_addr().unwrap(),
    );
    let (ka, kb, kc) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let peer = |public, endpoint, allowed_ips| PeerText {
        public,
        endpoint: Some(endpoint),
        allowed_ips,
    };
    let text_a = config_text(
        &ka.private,
        "10.0.0.1/32",
        &[
            peer(&kb.public, addr_b, "10.0.0.0/8, 192.168.7.0/24"),
            peer(&kc.public, addr_c, "10.1.0.0/16, 192.168.7.0/24"),
        ],
    );
    let to_a = |own: &KeyPair, address| {
        config_text(
            &own.private,
            address,
            &[peer(&ka.public, addr_a, "0.0.0.0/0")],
        )
    };
    let mut a = End::start(&text_a, udp_a, 0);
    let mut b = End::start(&to_a(&kb, "10.0.0.2/32"), udp_b, 0);
    let mut c = End::start(&to_a(&kc, "10.1.2.3/32"), udp_c, 0);
    const IN_B: [u8; 4] = [10, 2, 0, 1];
    const IN_C: [u8; 4] = [10, 1, 2, 3];
    const TWICE: [u8; 4] = [192, 168, 7, 5];
    // Outbound: the longest prefix picks the peer, and the prefix named twice is C's.
    carry(&mut a, &mut b, A, IN_B, 3);
    carry(&mut a, &mut c, A, IN_C, 3);
    carry(&mut a, &mut c, A, TWICE, 3);
    assert_eq!(b.app_rx.pending(), 0, "B got nothing meant for C");
    // Inbound: each may speak for its own addresses...
    carry(&mut b, &mut a, IN_B, A, 3);
    carry(&mut c, &mut a, IN_C, A, 3);
    carry(&mut c, &mut a, TWICE, A, 3);
    // ...and B, whose 10.0.0.0/8 contains 10.1.2.3, not for C's: its longest match is C's.
    let before = a.counters.snapshot().drop_not_allowed;
    send(&mut b.app_tx, &numbered_packet(IN_C, A, 99));
    send(&mut b.app_tx, &numbered_packet(TWICE, A, 100));
    assert!(eventually(
        || a.counters.snapshot().drop_not_allowed == before + 2
    ));
    assert_eq!(a.app_rx.pending(), 0);
    for end in [&a, &b, &c] {
        stop_and_check(end);
    }
}

/// Whether `datagram` is a WireGuard cookie reply (type 3, 64 bytes).
fn is_cookie_reply(datagram: &[u8]) -> bool {
    datagram.len() == 64 && datagram[0] == 3
}

#[test]
fn under_a_flood_of_valid_initiations_cookies_answer_and_a_peer_gets_through_with_one() {
    // X has two peers: A, a tunpipe end that reaches X through a relay keeping a copy of
    // what X sends it, and C, never heard from.
    const X: [u8; 4] = [10, 0, 0, 2];
    let (udp_a, udp_x) = (loopback_udp(), loopback_udp());
    let (addr_a, addr_x) = (udp_a.local_addr().unwrap(), udp_x.local_addr().unwrap());
    let relay = Relay::start(addr_a, addr_x);
    let (ka, kx, kc) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let peer = |public, endpoint, allowed_ips| PeerText {
        public,
        endpoint,
        allowed_ips,
    };
    let text_x = config_text(
        &kx.private,
        "10.0.0.2/24",
        &[
            peer(&ka.public, None, "10.0.0.1/32"),
            peer(&kc.public, None, "10.0.0.3/32"),
        ],
    );
    let text_a = config_text(
        &ka.private,
        "10.0.0.1/24",
        &[peer(&kx.public, Some(relay.addr()), "10.0.0.2/32")],
    );
    let mut x = End::start(&text_x, udp_x, 0);
    let mut a = End::start(&text_a, udp_a, 0);

    // A stranger floods X with one initiation made for X's key (a valid mac1), again and
    // again, from another loopback address: past the device's limit, X answers each with a
    // cookie, and does no Diffie-Hellman for it.
    let attacker = UdpSocket::bind("127.0.0.2:0").unwrap_or_else(|_| loopback_socket());
    let mut flood = Flood::start(attacker, stranger_initiation(&kx.public), addr_x);
    assert!(
        eventually(|| x.counters.snapshot().cookie_replies >= 1),
        "{:?}",
        x.counters.snapshot()
    );

    // While the flood lasts, A's first initiation is answered with a cookie (unless it came
    // just after the limiter's count started again: then A starts over), and its next one,
    // with a mac2 made with that cookie, completes the handshake.
    let mut through_a_cookie = false;
    for attempt in 0..5 {
        send(&mut a.app_tx, &numbered_packet(A, X, attempt));
        // The packet waits in A for the handshake, and arrives when it completes.
        assert!(
            eventually(|| x.app_rx.recv_with(|p| p.to_vec()).is_some()),
            "A: {:?}, X: {:?}",
            a.counters.snapshot(),
            x.counters.snapshot()
        );
        if relay
            .captured_from(addr_x)
            .iter()
            .any(|d| is_cookie_reply(d))
        {
            through_a_cookie = true;
            break;
        }
        a.restart(&text_a, 0);
    }
    assert!(through_a_cookie, "A never got a cookie from X");
    carry(&mut a, &mut x, A, X, 5);
    carry(&mut x, &mut a, X, A, 5);
    let before = x.counters.snapshot().cookie_replies;
    assert!(eventually(|| x.counters.snapshot().cookie_replies > before));
    let sent = flood.stop();
    let s = x.counters.snapshot();
    eprintln!("flood: {sent} initiations sent; X: {s:?}");
    assert!(s.handshakes_completed >= 1, "{s:?}");
    assert!(
        s.cookie_replies <= sent,
        "{} cookies for {sent} initiations",
        s.cookie_replies
    );
    stop_and_check(&a);
    stop_and_check(&x);
}

fn loopback_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

#[test]
fn a_persistent_keepalive_of_5_s_goes_out_every_5_s_for_a_minute() {
    // A keeps its tunnel to B open with PersistentKeepalive = 5 and sends nothing else; the
    // relay between them records when each datagram from A passed. (WireGuard says the gap is
    // the interval; the issue asks 5 ± 1 s over 60 s.)
    let (udp_a, udp_b) = (loopback_udp(), loopback_udp());
    let (addr_a, addr_b) = (udp_a.local_addr().unwrap(), udp_b.local_addr().unwrap());
    let relay = Relay::start(addr_a, addr_b);
    let (ka, kb) = (KeyPair::generate(), KeyPair::generate());
    let text_a = config_text(
        &ka.private,
        "10.0.0.1/32",
        &[PeerText {
            public: &kb.public,
            endpoint: Some(relay.addr()),
            allowed_ips: "10.0.0.2/32",
        }],
    ) + "PersistentKeepalive = 5\n";
    let text_b = config_text(
        &kb.private,
        "10.0.0.2/32",
        &[PeerText {
            public: &ka.public,
            endpoint: None,
            allowed_ips: "10.0.0.1/32",
        }],
    );
    let started = std::time::Instant::now();
    let a = End::start(&text_a, udp_a, 0);
    let b = End::start(&text_b, udp_b, 0);
    // Keepalives: data messages (type 4) carrying nothing, 32 bytes. The first seconds hold
    // the handshake and the keepalive that confirms it; the rhythm is counted after them.
    let keepalives = || {
        relay
            .arrivals_from(addr_a)
            .into_iter()
            .filter(|(at, d)| d.len() == 32 && d[0] == 4 && *at > started + Duration::from_secs(3))
            .map(|(at, _)| at)
            .collect::<Vec<_>>()
    };
    assert!(eventually_within(Duration::from_secs(90), || {
        keepalives()
            .last()
            .is_some_and(|&at| at > started + Duration::from_secs(63))
    }));
    let times = keepalives();
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    println!("persistent keepalive gaps (s): {gaps:.3?}");
    assert!(gaps.len() >= 11, "{gaps:?}");
    assert!(gaps.iter().all(|g| (4.0..=6.0).contains(g)), "{gaps:?}");
    stop_and_check(&a);
    stop_and_check(&b);
}

#[test]
fn an_unanswered_handshake_is_retried_every_5_s() {
    // A has a packet for B, whose end never answers: A's initiation goes out at once and is
    // retried after REKEY_TIMEOUT (5 s), again and again (WireGuard gives up after 90 s). The
    // relay records when each initiation passed.
    let udp_a = loopback_udp();
    let addr_a = udp_a.local_addr().unwrap();
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay = Relay::start(addr_a, silent.local_addr().unwrap());
    let (ka, kb) = (KeyPair::generate(), KeyPair::generate());
    let text_a = config_text(
        &ka.private,
        "10.0.0.1/32",
        &[PeerText {
            public: &kb.public,
            endpoint: Some(relay.addr()),
            allowed_ips: "10.0.0.2/32",
        }],
    );
    let mut a = End::start(&text_a, udp_a, 0);
    send(&mut a.app_tx, &numbered_packet(A, B, 1));
    let initiations = || {
        relay
            .arrivals_from(addr_a)
            .into_iter()
            .filter(|(_, d)| d.len() == 148 && d[0] == 1)
            .map(|(at, _)| at)
            .collect::<Vec<_>>()
    };
    assert!(eventually_within(Duration::from_secs(40), || initiations()
        .len()
        >= 5));
    let times = initiations();
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    println!("handshake retry gaps (s): {gaps:.3?}");
    // A retry is due 5 s after the last initiation was made, and the relay sees each one when
    // it was sent: a gap on the wire is 5 s less the earlier one's time from being made to
    // being sent. That time differs by path: the first initiation may go through the writer
    // (awake at start, or woken), the retries from the sleeping timer go out at once. On a
    // loaded machine (three busy loops on two cores) the first gap measured 4.998-4.999 s in
    // every run, the retries' 5.001-5.003: the first initiation left 2-3 ms after it was made.
    // So the lower bound allows 100 ms for that; a retry early by the protocol's own count
    // (4 s, say) still fails.
    assert!(gaps.iter().all(|g| (4.9..=5.5).contains(g)), "{gaps:?}");
    assert!(a.counters.snapshot().handshake_failures >= 4);
    stop_and_check(&a);
}

/// Sends a packet from `from`'s app every 100 ms until `to`'s app gets one; returns how long
/// that took. (The pacing is the traffic a pinging app makes, not a measurement.)
fn resume_time(from: &mut End, to: &mut End, limit: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        send(&mut from.app_tx, &numbered_packet(A, B, 7));
        std::thread::sleep(Duration::from_millis(100));
        let mut got = false;
        while to.app_rx.recv_with(|_| ()).is_some() {
            got = true;
        }
        if got {
            return Some(started.elapsed());
        }
    }
    None
}

/// Packets from `from` every 100 ms for `absence`, none of which reach `to`'s app.
fn send_into_the_void(from: &mut End, absence: Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < absence {
        send(&mut from.app_tx, &numbered_packet(A, B, 7));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_peer_that_goes_away_and_comes_back_gets_traffic_again_within_10_s() {
    // 20 s away is past WireGuard's 15 s without an answer, so A has started handshakes
    // that nobody answers by the time B is back.
    let absence = Duration::from_secs(20);
    let (udp_a, udp_b) = (loopback_udp(), loopback_udp());
    let (addr_a, addr_b) = (udp_a.local_addr().unwrap(), udp_b.local_addr().unwrap());
    let relay = Relay::start(addr_a, addr_b);
    let keys = (KeyPair::generate(), KeyPair::generate());
    // Both ends reach each other through the relay.
    let (text_a, text_b) = pair_texts(&keys, relay.addr(), relay.addr());
    let mut a = End::start(&text_a, udp_a, 0);
    let mut b = End::start(&text_b, udp_b, 0);
    carry(&mut a, &mut b, A, B, 3);
    carry(&mut b, &mut a, B, A, 3);

    // The path goes away (its datagrams dropped, as by a firewall), then comes back.
    relay.set_down(true);
    send_into_the_void(&mut a, absence);
    assert_eq!(b.app_rx.pending(), 0, "the path was down");
    relay.set_down(false);
    let back = resume_time(&mut a, &mut b, Duration::from_secs(30));
    println!("path back: traffic again after {back:?}");
    assert!(
        back.is_some_and(|t| t <= Duration::from_secs(10)),
        "{back:?}"
    );

    // B's process goes away (its socket closed) and a new one comes back on the same port
    // with the same key: a fresh stage, no session.
    stop_and_check(&b);
    drop(b);
    send_into_the_void(&mut a, absence);
    let udp_b = tunpipe::UdpDevice::bind(addr_b).unwrap();
    let mut b = End::start(&text_b, udp_b, 0);
    let back = resume_time(&mut a, &mut b, Duration::from_secs(30));
    println!("peer restarted: traffic again after {back:?}");
    assert!(
        back.is_some_and(|t| t <= Duration::from_secs(10)),
        "{back:?}"
    );
    stop_and_check(&a);
    stop_and_check(&b);
}
