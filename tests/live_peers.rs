//! A running tunnel's configuration changed through the UAPI's `set`, as `wg set` and
//! WireGuardKit change it: peers added and removed, keys and endpoints changed, while packets
//! flow. Peers a change leaves alone keep their sessions (no new handshake, no packet lost);
//! `get` reads the configuration back with each peer's figures, which agree with the other
//! end's; a change that fails changes nothing; and every packet stays accounted for.

use std::net::SocketAddr;
use tunpipe::stage::Direction;
use tunpipe::wireguard::uapi::parse_set;
use tunpipe::wireguard::{Key, PeerStats};
use tunpipe_testkit::check::eventually;
use tunpipe_testkit::memory::send;
use tunpipe_testkit::wg::{
    carry, config_text, loopback_udp, numbered_packet, stop_and_check, End, KeyPair, PeerText,
    Relay,
};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];
const C: [u8; 4] = [10, 0, 0, 3];

fn hex(key: &Key) -> String {
    key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn set(end: &End, body: &str) -> tunpipe::wireguard::uapi::Changes {
    end.stage
        .set(&parse_set(body).expect("the request parses"))
        .expect("the change applies")
}

/// `end`'s figures for the peer with `key`.
fn peer(end: &End, key: &Key) -> PeerStats {
    end.stage
        .peers()
        .into_iter()
        .find(|p| &p.public_key == key)
        .expect("the peer is there")
}

struct Three {
    a: End,
    b: End,
    c: End,
    keys: [KeyPair; 3],
    addrs: [SocketAddr; 3],
}

/// A knows only B; B and C know A. Each runs `workers` workers.
fn three(workers: usize) -> Three {
    let udp = [loopback_udp(), loopback_udp(), loopback_udp()];
    let addrs = [0, 1, 2].map(|i| udp[i].local_addr().unwrap());
    let keys = [(); 3].map(|()| KeyPair::generate());
    let to = |i: usize, allowed_ips| PeerText {
        public: &keys[i].public,
        endpoint: Some(addrs[i]),
        allowed_ips,
    };
    let texts = [
        config_text(&keys[0].private, "10.0.0.1/24", &[to(1, "10.0.0.2/32")]),
        config_text(&keys[1].private, "10.0.0.2/24", &[to(0, "10.0.0.0/24")]),
        config_text(&keys[2].private, "10.0.0.3/24", &[to(0, "10.0.0.0/24")]),
    ];
    let [ua, ub, uc] = udp;
    Three {
        a: End::start(&texts[0], ua, workers),
        b: End::start(&texts[1], ub, workers),
        c: End::start(&texts[2], uc, workers),
        keys,
        addrs,
    }
}

#[test]
fn peers_come_and_go_while_the_sessions_they_leave_alone_carry_on() {
    let Three {
        mut a,
        mut b,
        mut c,
        keys,
        addrs,
    } = three(0);
    let (kb, kc) = (&keys[1].public, &keys[2].public);
    carry(&mut a, &mut b, A, B, 10);
    carry(&mut b, &mut a, B, A, 10);
    assert_eq!(peer(&a, kb).handshakes, 1);

    // WireGuardKit's way: the whole configuration again, with replace_peers, and C added.
    let changes = set(
        &a,
        &format!(
            "replace_peers=true\npublic_key={}\nendpoint={}\nreplace_allowed_ips=true\n\
             allowed_ip=10.0.0.2/32\npublic_key={}\nendpoint={}\nallowed_ip=10.0.0.3/32\n",
            hex(kb),
            addrs[1],
            hex(kc),
            addrs[2]
        ),
    );
    assert_eq!(changes.added, std::slice::from_ref(kc));
    assert!(
        changes.removed.is_empty() && changes.changed.is_empty(),
        "{changes:?}"
    );
    carry(&mut a, &mut c, A, C, 5);
    carry(&mut c, &mut a, C, A, 5);
    carry(&mut a, &mut b, A, B, 10);
    carry(&mut b, &mut a, B, A, 10);
    // B's session went on through the change: no handshake either side, nothing lost.
    assert_eq!(peer(&a, kb).handshakes, 1);
    assert_eq!(b.counters.snapshot().handshakes_completed, 1);
    assert_eq!(peer(&a, kc).handshakes, 1);

    // Each end's figures for the other agree message for message, byte for byte: every
    // message counts, handshakes included, as wireguard-go counts them.
    for (end, other, key_of_other, key_of_end) in
        [(&a, &b, kb, &keys[0].public), (&a, &c, kc, &keys[0].public)]
    {
        let (here, there) = (peer(end, key_of_other), peer(other, key_of_end));
        assert_eq!(
            (
                here.tx_packets,
                here.tx_bytes,
                here.rx_packets,
                here.rx_bytes
            ),
            (
                there.rx_packets,
                there.rx_bytes,
                there.tx_packets,
                there.tx_bytes
            ),
            "{here:?}\n{there:?}"
        );
        assert!(here.tx_bytes > 148 && here.last_handshake.is_some());
    }
    // `get` says the same.
    let got = a.stage.get();
    let ab = peer(&a, kb);
    let section = &got[got.find(&hex(kb)).expect("B in get")..];
    assert!(
        section.contains(&format!("\ntx_bytes={}\n", ab.tx_bytes)),
        "{section}"
    );
    assert!(
        section.contains(&format!("\nrx_bytes={}\n", ab.rx_bytes)),
        "{section}"
    );
    assert!(got.ends_with("errno=0\n\n"));

    // C goes: its addresses route nowhere, and B carries on.
    let changes = set(&a, &format!("public_key={}\nremove=true\n", hex(kc)));
    assert_eq!(changes.removed, std::slice::from_ref(kc));
    let no_peer = a.counters.snapshot().drop_no_peer;
    send(&mut a.app_tx, &numbered_packet(A, C, 99));
    assert!(eventually(
        || a.counters.snapshot().drop_no_peer == no_peer + 1
    ));
    assert!(!a.stage.get().contains(&hex(kc)));
    carry(&mut a, &mut b, A, B, 10);
    assert_eq!(peer(&a, kb).handshakes, 1);

    // A keepalive turned on keeps the session, and one goes out at once.
    let received = peer(&b, &keys[0].public).rx_packets;
    let changes = set(
        &a,
        &format!("public_key={}\npersistent_keepalive_interval=7\n", hex(kb)),
    );
    assert!(!changes.changed[0].restart_session, "{changes:?}");
    assert!(eventually(
        || peer(&b, &keys[0].public).rx_packets == received + 1
    ));
    carry(&mut a, &mut b, A, B, 10);
    assert_eq!(peer(&a, kb).handshakes, 1);

    // A new preshared key, on both ends, restarts that session (and only with both does the
    // handshake succeed).
    let psk = hex(&Key::generate());
    for (end, key) in [(&a, kb), (&b, &keys[0].public)] {
        let changes = set(
            end,
            &format!("public_key={}\npreshared_key={psk}\n", hex(key)),
        );
        assert!(changes.changed[0].restart_session, "{changes:?}");
    }
    carry(&mut a, &mut b, A, B, 10);
    assert_eq!(peer(&a, kb).handshakes, 2);
    for end in [&a, &b, &c] {
        stop_and_check(end);
    }
}

#[test]
fn packets_a_removed_peer_held_for_its_handshake_are_dropped_and_counted() {
    let Three { mut a, b, c, .. } = three(0);
    // A peer D at an address where nobody answers: its packets wait for a handshake that
    // never completes.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let d = KeyPair::generate().public;
    set(
        &a,
        &format!(
            "public_key={}\nendpoint={}\nallowed_ip=10.0.0.4/32\n",
            hex(&d),
            silent.local_addr().unwrap()
        ),
    );
    for seq in 0..3 {
        send(&mut a.app_tx, &numbered_packet(A, [10, 0, 0, 4], seq));
    }
    assert!(eventually(|| a
        .engine
        .direction_stats(Direction::Outbound)
        .held
        == 3));
    let before = a.counters.snapshot().drop_no_peer;
    set(&a, &format!("public_key={}\nremove=true\n", hex(&d)));
    assert!(eventually(
        || a.counters.snapshot().drop_no_peer == before + 3
    ));
    assert!(eventually(|| a
        .engine
        .direction_stats(Direction::Outbound)
        .held
        == 0));
    for end in [&a, &b, &c] {
        stop_and_check(end);
    }
}

#[test]
fn a_change_that_fails_changes_nothing() {
    let Three { a, b, c, keys, .. } = three(0);
    let before = a.stage.get();
    // Refused as it parses: the last line is bad, so the peer before it is not added.
    let body = format!(
        "public_key={}\nallowed_ip=10.0.0.9/32\nendpoint=not-an-address\n",
        hex(&keys[2].public)
    );
    let error = parse_set(&body).unwrap_err();
    assert_eq!((error.errno(), error.line()), (-22, 3));
    // Parsed, then refused by the tunnel: the private key removed (all zeros), with a peer
    // added after it in the same request.
    let body = format!(
        "private_key={}\npublic_key={}\nallowed_ip=10.0.0.9/32\n",
        "0".repeat(64),
        hex(&keys[2].public)
    );
    let refused = a.stage.set(&parse_set(&body).unwrap()).unwrap_err();
    assert_eq!(refused.errno(), -22);
    assert_eq!(a.stage.get(), before);
    assert_eq!(a.stage.peers().len(), 1);
    for end in [&a, &b, &c] {
        stop_and_check(end);
    }
}

#[test]
fn changes_made_while_packets_flow_lose_nothing_of_the_peer_they_leave_alone() {
    for workers in [0, 2] {
        let Three {
            mut a,
            mut b,
            c,
            keys,
            addrs,
        } = three(workers);
        carry(&mut a, &mut b, A, B, 5);
        let (hex_b, hex_c) = (hex(&keys[1].public), hex(&keys[2].public));
        let stage = a.stage.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        // Peer C comes and goes, and B's keepalive turns on and off, as fast as a thread can
        // ask, while B's packets flow both ways on the engine's threads.
        let changer = std::thread::spawn(move || {
            let mut changes = 0u64;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let bodies = [
                    format!(
                        "public_key={hex_c}\nendpoint={}\nallowed_ip=10.0.0.3/32\n",
                        addrs[2]
                    ),
                    format!("public_key={hex_b}\npersistent_keepalive_interval=25\n"),
                    format!("public_key={hex_c}\nremove=true\n"),
                    format!("public_key={hex_b}\npersistent_keepalive_interval=0\n"),
                ];
                for body in &bodies {
                    stage.set(&parse_set(body).unwrap()).unwrap();
                    changes += 1;
                }
            }
            changes
        });
        for _ in 0..10 {
            carry(&mut a, &mut b, A, B, 100);
            carry(&mut b, &mut a, B, A, 100);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let changes = changer.join().unwrap();
        assert!(changes >= 4, "{changes} changes");
        assert_eq!(peer(&a, &keys[1].public).handshakes, 1, "workers {workers}");
        assert_eq!(b.counters.snapshot().handshakes_completed, 1);
        for end in [&a, &b, &c] {
            stop_and_check(end);
        }
    }
}

#[test]
fn with_roaming_disabled_a_peer_keeps_the_endpoint_it_has() {
    for disabled in [false, true] {
        let (udp_a, udp_b) = (loopback_udp(), loopback_udp());
        let (addr_a, addr_b) = (udp_a.local_addr().unwrap(), udp_b.local_addr().unwrap());
        // B reaches A through a relay, so that A sees B's datagrams come from elsewhere.
        let relay = Relay::start(addr_a, addr_b);
        let (ka, kb) = (KeyPair::generate(), KeyPair::generate());
        let to = |public, endpoint, allowed_ips| PeerText {
            public,
            endpoint: Some(endpoint),
            allowed_ips,
        };
        let text_a = config_text(
            &ka.private,
            "10.0.0.1/24",
            &[to(&kb.public, addr_b, "10.0.0.2/32")],
        );
        let text_b = config_text(
            &kb.private,
            "10.0.0.2/24",
            &[to(&ka.public, relay.addr(), "10.0.0.1/32")],
        );
        let mut a = End::start(&text_a, udp_a, 0);
        let mut b = End::start(&text_b, udp_b, 0);
        if disabled {
            a.stage.disable_roaming();
        }
        carry(&mut b, &mut a, B, A, 5);
        carry(&mut a, &mut b, A, B, 5);
        let expected = if disabled { addr_b } else { relay.addr() };
        assert_eq!(
            peer(&a, &kb.public).endpoint,
            Some(expected),
            "disabled: {disabled}"
        );
        stop_and_check(&a);
        stop_and_check(&b);
    }
}

#[test]
fn a_new_private_key_restarts_every_session_and_traffic_resumes_once_the_peer_knows_it() {
    let Three {
        mut a,
        mut b,
        c,
        keys,
        addrs,
    } = three(0);
    let kb = &keys[1].public;
    carry(&mut a, &mut b, A, B, 5);
    assert_eq!(peer(&a, kb).handshakes, 1);
    let new = KeyPair::generate();
    let changes = set(&a, &format!("private_key={}\n", hex(&new.private)));
    assert!(
        changes.private_key && changes.changed[0].restart_session,
        "{changes:?}"
    );
    // B learns A's new public key (its old one removed): a new handshake, then traffic.
    set(
        &b,
        &format!(
            "public_key={}\nremove=true\npublic_key={}\nendpoint={}\nallowed_ip=10.0.0.0/24\n",
            hex(&keys[0].public),
            hex(&new.public),
            addrs[0]
        ),
    );
    carry(&mut a, &mut b, A, B, 5);
    carry(&mut b, &mut a, B, A, 5);
    // The peer's counters carry on across the restart.
    assert_eq!(peer(&a, kb).handshakes, 2);
    for end in [&a, &b, &c] {
        stop_and_check(end);
    }
}
