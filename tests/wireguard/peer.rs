//! The tests: each builds the rig in its fresh namespace (the peer in a second one), starts
//! tunpipe's tunnel on a TUN named `tpw0`, and stops it checking conservation.

use libtest_mimic::Failed;
use std::net::UdpSocket;
use std::time::{Duration, Instant};
use tunpipe_testkit::check::{check, eventually};
use tunpipe_testkit::netns::{iperf3, iperf3_installed, iperf3_result, EtcFile};
use tunpipe_testkit::ping::ping;
use tunpipe_testkit::trials::Test;
use tunpipe_testkit::wg::{stranger_initiation, Flood, KeyPair, Relay};
use tunpipe_testkit::wgpeer::{
    nft_installed, PeerOptions, TunnelEnd, WgRig, END_PORT, END_V4, END_V6, PEER_PORT,
    PEER_UNDERLAY, PEER_V4, PEER_V6,
};

/// Far longer than any test here takes: the bound on a hang, not a timing assertion.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// The tunnel's TUN (namespaces keep tests apart).
const TUN: &str = "tpw0";

pub const TESTS: [(&str, Test); 16] = [
    (
        "tunpipe_starts_the_handshake_and_ping_crosses_both_ways_v4_and_v6",
        ping_both_ways,
    ),
    ("the_peer_starts_the_handshake", peer_starts_the_handshake),
    ("tcp_crosses_both_ways_iperf3", tcp_both_ways),
    (
        "a_restart_in_the_same_process_handshakes_again",
        restart_handshakes_again,
    ),
    (
        "a_rebind_during_traffic_keeps_ping_working",
        rebind_under_traffic,
    ),
    (
        "a_stop_with_a_handshake_pending_returns",
        stop_with_handshake_pending,
    ),
    ("a_wrong_key_carries_nothing_and_counts_failures", wrong_key),
    (
        "garbage_and_replayed_datagrams_are_counted_and_harmless",
        garbage_and_replays,
    ),
    (
        "a_source_outside_allowed_ips_is_dropped_and_counted",
        source_outside_allowed_ips,
    ),
    (
        "a_destination_outside_every_allowed_ips_has_no_peer",
        destination_without_peer,
    ),
    (
        "under_initiation_floods_bad_mac1_costs_nothing_and_wireguard_go_gets_through_a_cookie",
        flood_of_valid_initiations,
    ),
    (
        "a_persistent_keepalive_of_5_s_reaches_wireguard_go_every_5_s_for_a_minute",
        persistent_keepalive,
    ),
    (
        "a_peer_that_goes_away_and_comes_back_gets_pings_again_within_10_s",
        peer_away_and_back,
    ),
    (
        "an_endpoint_host_name_is_looked_up_again_at_a_rebind_and_traffic_follows_the_peer",
        endpoint_name_follows_the_peer,
    ),
    (
        "a_rebind_keeps_a_port_that_works_and_recovers_from_a_blackholed_one_on_a_fresh_port",
        rebind_recovers_on_a_fresh_port,
    ),
    (
        "suspended_nothing_leaves_and_no_thread_wakes_for_30_s_resumed_pings_within_1_s_no_handshake",
        suspend_and_resume,
    ),
];

fn ping_both_ways() -> Result<(), Failed> {
    let rig = WgRig::up(&PeerOptions::default())?;
    for workers in [0, 1, 2] {
        let end = TunnelEnd::start(TUN, &rig.config_text(), workers)?;
        // The peer knows no endpoint: tunpipe's first packet starts the handshake.
        rig.ping_all_from_end(PEER_V4, 10)?;
        rig.ping_all_from_peer(END_V4, 10)?;
        rig.ping_all_from_end(PEER_V6, 10)?;
        rig.ping_all_from_peer(END_V6, 10)?;
        let s = end.counters.snapshot();
        check(
            s.handshake_initiations >= 1 && s.handshakes_completed >= 1,
            || format!("workers {workers}: {s:?}"),
        )?;
        // 40 echoes and 40 replies each way, at least (the kernel may add its own).
        check(s.tx_packets >= 40 && s.rx_packets >= 40, || {
            format!("{s:?}")
        })?;
        end.stop_conserved()?;
        drop(end);
        // The next engine's TUN has the same name: wait until this one is gone.
        check(
            eventually(|| !tunpipe_testkit::netns::interface_exists(TUN)),
            || format!("{TUN} outlived its engine"),
        )?;
    }
    Ok(())
}

fn peer_starts_the_handshake() -> Result<(), Failed> {
    let rig = WgRig::up(&PeerOptions {
        knows_endpoint: true,
        ..PeerOptions::default()
    })?;
    let end = TunnelEnd::start(TUN, &rig.config_text(), 0)?;
    rig.ping_all_from_peer(END_V4, 5)?;
    let s = end.counters.snapshot();
    check(
        s.handshakes_completed == 1 && s.handshake_initiations == 0,
        || format!("tunpipe answered the peer's handshake, and started none: {s:?}"),
    )?;
    rig.ping_all_from_end(PEER_V4, 5)?;
    end.stop_conserved()
}

fn tcp_both_ways() -> Result<(), Failed> {
    if !iperf3_installed() {
        return Err("iperf3 is not installed (.ci/run installs it)".into());
    }
    let rig = WgRig::up(&PeerOptions::default())?;
    let end = TunnelEnd::start(TUN, &rig.config_text(), 0)?;
    rig.ping_all_from_end(PEER_V4, 1)?;
    for reverse in [false, true] {
        let moved = iperf3_result(&iperf3(&rig.peer, PEER_V4, 2, reverse)?)?;
        check(moved.bytes > 1_000_000, || {
            format!(
                "iperf3 (reverse {reverse}) moved only {} bytes",
                moved.bytes
            )
        })?;
        eprintln!(
            "iperf3 {}: {:.0} Mb/s",
            if reverse {
                "peer to tunpipe"
            } else {
                "tunpipe to peer"
            },
            moved.bits_per_second / 1e6
        );
    }
    end.stop_conserved()
}

fn restart_handshakes_again() -> Result<(), Failed> {
    let rig = WgRig::up(&PeerOptions::default())?;
    let text = rig.config_text();
    let mut end = TunnelEnd::start(TUN, &text, 0)?;
    rig.ping_all_from_end(PEER_V4, 3)?;
    let first = rig.peer_view()?;
    end.restart(&text, 1)?;
    // The new stage has no session: its first packet starts a new handshake, which the peer
    // accepts (a newer timestamp).
    rig.ping_all_from_end(PEER_V4, 3)?;
    rig.ping_all_from_peer(END_V4, 3)?;
    let s = end.counters.snapshot();
    check(
        s.handshakes_completed == 1 && s.handshake_initiations >= 1,
        || format!("{s:?}"),
    )?;
    let second = rig.peer_view()?;
    check(second.rx_bytes > first.rx_bytes, || {
        format!("{first:?} then {second:?}")
    })?;
    end.stop_conserved()
}

fn rebind_under_traffic() -> Result<(), Failed> {
    let rig = WgRig::up(&PeerOptions::default())?;
    let end = TunnelEnd::start(TUN, &rig.config_text(), 0)?;
    rig.ping_all_from_end(PEER_V4, 2)?;
    let port = end.udp.local_addr()?.port();
    // The peer pings throughout (60 echoes, 50 ms apart); tunpipe rebinds three times meanwhile.
    let (sent, got) = std::thread::scope(|s| {
        let pinger = s.spawn(|| rig.ping_from_peer(END_V4, 60));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(600));
            end.engine.rebind().map_err(|e| e.to_string())?;
        }
        pinger
            .join()
            .map_err(|_| "the pinger panicked".to_string())?
    })?;
    check(end.udp.local_addr()?.port() == port, || {
        "the port changed".into()
    })?;
    // An echo in flight at the moment of a rebind may be lost with the old socket's queue.
    check(sent == 60 && got >= 57, || {
        format!("{got} of {sent} answered")
    })?;
    // And afterwards every echo gets through.
    rig.ping_all_from_peer(END_V4, 5)?;
    end.stop_conserved()
}

fn stop_with_handshake_pending() -> Result<(), Failed> {
    let rig = WgRig::up(&PeerOptions::default())?;
    // A peer at an address nobody has: the handshake never completes.
    let text = rig.config_text().replace(
        &format!("{PEER_UNDERLAY}:{PEER_PORT}"),
        "192.168.77.99:51820",
    );
    let end = TunnelEnd::start(TUN, &text, 0)?;
    let _ = ping(&["-n", "-c", "1", "-W", "1", PEER_V4]);
    check(
        eventually(|| end.counters.snapshot().handshake_initiations >= 1),
        || "no handshake initiation".into(),
    )?;
    // The watchdog bounds this: the stop must not wait for the handshake.
    end.stop_conserved()?;
    check(end.counters.snapshot().handshakes_completed == 0, || {
        "a handshake completed with nobody".into()
    })
}

fn wrong_key() -> Result<(), Failed> {
    // The peer expects some other key of tunpipe's end, and knows its endpoint.
    let rig = WgRig::up(&PeerOptions {
        knows_endpoint: true,
        expects_key: Some(KeyPair::generate().public),
        ..PeerOptions::default()
    })?;
    let end = TunnelEnd::start(TUN, &rig.config_text(), 0)?;
    // The peer's initiations are made for a key tunpipe does not hold: their mac1 is wrong,
    // and they are dropped here before any Diffie-Hellman.
    let (_, got) = rig.ping_from_peer(END_V4, 3)?;
    check(got == 0, || {
        format!("{got} echoes crossed with a wrong key")
    })?;
    let s = end.counters.snapshot();
    check(s.drop_bad_mac1 >= 1 && s.handshakes_completed == 0, || {
        format!("{s:?}")
    })?;
    // tunpipe's own initiations reach a peer that does not know its key: no answer.
    let (_, got) = ping(&["-n", "-c", "2", "-W", "1", PEER_V4])?;
    let s = end.counters.snapshot();
    check(
        got == 0 && s.handshakes_completed == 0 && s.rx_packets == 0,
        || format!("{got} answered; {s:?}"),
    )?;
    end.stop_conserved()
}

fn garbage_and_replays() -> Result<(), Failed> {
    let rig = WgRig::up(&PeerOptions::default())?;
    // tunpipe reaches the peer through a relay in this namespace that keeps a copy of every
    // datagram: the peer's replies come to the relay, which passes them on.
    let end_addr = format!("127.0.0.1:{END_PORT}").parse()?;
    let peer_addr = format!("{PEER_UNDERLAY}:{PEER_PORT}").parse()?;
    let relay = Relay::start_on("0.0.0.0:0".parse()?, end_addr, peer_addr);
    let via_relay = format!("127.0.0.1:{}", relay.addr().port());
    let text = rig
        .config_text()
        .replace(&format!("{PEER_UNDERLAY}:{PEER_PORT}"), &via_relay);
    let end = TunnelEnd::start(TUN, &text, 0)?;
    rig.ping_all_from_end(PEER_V4, 5)?;
    let before = end.counters.snapshot();

    // From the peer's namespace, an attacker's socket sends garbage, then every datagram the
    // peer sent so far (its handshake response and its echo replies) again.
    let from_peer = relay.captured_from(peer_addr);
    check(from_peer.len() >= 6, || {
        format!("{} datagrams from the peer", from_peer.len())
    })?;
    let garbage: Vec<Vec<u8>> = vec![
        b"x".to_vec(),
        vec![9; 40],
        vec![4; 40],
        vec![1; 148],
        vec![2; 92],
        vec![0xff; 1400],
    ];
    let datagrams: Vec<Vec<u8>> = garbage.iter().chain(&from_peer).cloned().collect();
    let count = datagrams.len() as u64;
    let target = format!("{}:{END_PORT}", tunpipe_testkit::wgpeer::END_UNDERLAY);
    rig.peer.run(move || -> Result<(), String> {
        let attacker = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        for datagram in &datagrams {
            attacker
                .send_to(datagram, &target)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })??;
    let drops = |s: &tunpipe::wireguard::WireGuardStats| {
        s.drop_garbage + s.drop_no_session + s.drop_auth_failure + s.drop_replay
    };
    check(
        eventually(|| drops(&end.counters.snapshot()) - drops(&before) >= count),
        || format!("{count} sent, {:?}", end.counters.snapshot()),
    )?;
    let after = end.counters.snapshot();
    check(after.drop_replay - before.drop_replay >= 5, || {
        format!("{after:?}")
    })?;
    check(after.rx_packets == before.rx_packets, || {
        "a replay was delivered".into()
    })?;
    // Nothing the attacker sent moved tunpipe's idea of where the peer is.
    check(after.endpoints == before.endpoints, || format!("{after:?}"))?;
    rig.ping_all_from_end(PEER_V4, 5)?;
    end.stop_conserved()
}

fn source_outside_allowed_ips() -> Result<(), Failed> {
    let rig = WgRig::up(&PeerOptions::default())?;
    let end = TunnelEnd::start(TUN, &rig.config_text(), 0)?;
    rig.ping_all_from_end(PEER_V4, 2)?;
    // The peer gets a second address that tunpipe's config does not allow it, and pings from
    // it: wireguard-go sends it (it routes by destination), tunpipe must not deliver it.
    rig.peer.output(
        &["ip", "addr", "add", "10.77.0.99/32", "dev", &rig.ifname],
        "",
    )?;
    let (_, got) = rig.peer.run(|| {
        ping(&[
            "-n",
            "-c",
            "3",
            "-i",
            "0.05",
            "-W",
            "1",
            "-I",
            "10.77.0.99",
            END_V4,
        ])
    })??;
    check(got == 0, || {
        format!("{got} echoes from a forged source answered")
    })?;
    let s = end.counters.snapshot();
    check(s.drop_not_allowed == 3, || format!("{s:?}"))?;
    end.stop_conserved()
}

fn destination_without_peer() -> Result<(), Failed> {
    let rig = WgRig::up(&PeerOptions::default())?;
    let end = TunnelEnd::start(TUN, &rig.config_text(), 0)?;
    // 10.77.0.50 is on the TUN's subnet, but no peer's AllowedIPs covers it. (The kernel's
    // own IPv6 multicast, router solicitations and the like, has no peer either.)
    let (_, got) = ping(&["-n", "-c", "2", "-i", "0.05", "-W", "1", "10.77.0.50"])?;
    let s = end.counters.snapshot();
    check(
        got == 0 && s.drop_no_peer >= 2 && s.handshake_initiations == 0,
        || format!("{got} answered; {s:?}"),
    )?;
    end.stop_conserved()
}

fn flood_of_valid_initiations() -> Result<(), Failed> {
    // A two-peer tunnel (the second peer is never there), and wireguard-go, which knows where
    // tunpipe is, as the first.
    let rig = WgRig::up(&PeerOptions {
        knows_endpoint: true,
        ..PeerOptions::default()
    })?;
    let absent = KeyPair::generate();
    let text = format!(
        "{}\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.99.0.0/24\n",
        rig.config_text(),
        absent.public.to_base64()
    );
    let end = TunnelEnd::start(TUN, &text, 0)?;
    // From the peer's namespace, a stranger's initiation made for tunpipe's key (its mac1 is
    // valid), a few thousand times a second.
    let attacker = rig.peer.run(|| UdpSocket::bind("0.0.0.0:0"))??;
    let target = format!("{}:{END_PORT}", tunpipe_testkit::wgpeer::END_UNDERLAY).parse()?;
    let mut flood = Flood::start(attacker, stranger_initiation(&rig.end_keys.public), target);
    // And initiations with a bad mac1 (type 1, then zeros), dropped before any work.
    let junk_sender = rig.peer.run(|| UdpSocket::bind("0.0.0.0:0"))??;
    let mut junk = [0u8; 148];
    junk[0] = 1;
    let mut junk_flood = Flood::start(junk_sender, junk.to_vec(), target);
    check(
        eventually(|| end.counters.snapshot().cookie_replies > 0),
        || format!("no cookie under load: {:?}", end.counters.snapshot()),
    )?;
    // wireguard-go starts the handshake: its first initiation gets a cookie, its retry (5 s
    // later) carries a mac2 made with it and completes. Its pings wait for the session.
    let (sent, got) = rig.ping_from_peer(END_V4, 200)?;
    let s = end.counters.snapshot();
    check(s.handshakes_completed == 1 && got > 0, || {
        format!("{got} of {sent} answered: {s:?}")
    })?;
    // Once the session is up, ping answers while the flood goes on.
    rig.ping_all_from_peer(END_V4, 40)?;
    rig.ping_all_from_end(PEER_V4, 40)?;
    let flooded = flood.stop();
    let junked = junk_flood.stop();
    let s = end.counters.snapshot();
    check(
        s.drop_bad_mac1 >= junked.saturating_sub(junked / 10),
        || format!("{junked} bad-mac1 initiations sent: {s:?}"),
    )?;
    println!(
        "{flooded} initiations sent; {} cookies; {} let past the limit, opened and dropped \
         (unknown key); {junked} with a bad mac1, {} dropped for it",
        s.cookie_replies, s.drop_auth_failure, s.drop_bad_mac1
    );
    check(s.cookie_replies > 0 && s.handshakes_completed == 1, || {
        format!("{s:?}")
    })?;
    end.stop_conserved()
}

fn persistent_keepalive() -> Result<(), Failed> {
    // tunpipe keeps the path open (PersistentKeepalive = 5); nothing else crosses. wireguard-go
    // counts what it receives: a keepalive is 32 bytes (a data message carrying nothing).
    let rig = WgRig::up(&PeerOptions::default())?;
    let text = format!("{}PersistentKeepalive = 5\n", rig.config_text());
    let end = TunnelEnd::start(TUN, &text, 0)?;
    rig.await_handshake(Duration::from_secs(10))?;
    // Past the handshake and the keepalive that confirms it.
    std::thread::sleep(Duration::from_secs(2));
    let mut last = rig.peer_view()?.rx_bytes;
    let started = Instant::now();
    let mut arrivals = Vec::new();
    while started.elapsed() < Duration::from_secs(62) {
        std::thread::sleep(Duration::from_millis(20));
        let rx = rig.peer_view()?.rx_bytes;
        if rx != last {
            check(rx - last == 32, || {
                format!("{} bytes arrived at once: not one keepalive", rx - last)
            })?;
            arrivals.push(Instant::now());
            last = rx;
        }
    }
    let gaps: Vec<f64> = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    println!("keepalives at wireguard-go, gaps (s): {gaps:.3?}");
    check(gaps.len() >= 11, || format!("{gaps:?}"))?;
    check(gaps.iter().all(|g| (4.0..=6.0).contains(g)), || {
        format!("{gaps:?}")
    })?;
    end.stop_conserved()
}

/// Pings the peer from tunpipe's side, one at a time (each waits up to 1 s), until one is
/// answered or `limit` passes; how long that took.
fn pings_resume_within(limit: Duration) -> Result<Option<Duration>, Failed> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let (_, got) = ping(&["-n", "-c", "1", "-W", "1", PEER_V4])?;
        if got == 1 {
            return Ok(Some(started.elapsed()));
        }
    }
    Ok(None)
}

/// Pings the peer for `absence` (10 a second), none of which may be answered.
fn ping_into_the_void(absence: Duration) -> Result<(), Failed> {
    let count = (absence.as_millis() / 100).to_string();
    let (sent, got) = ping(&["-n", "-q", "-c", &count, "-i", "0.1", "-W", "1", PEER_V4])?;
    check(got == 0, || format!("{got} of {sent} answered while away"))
}

fn peer_away_and_back() -> Result<(), Failed> {
    nft_installed()?;
    // 20 s away is past WireGuard's 15 s without an answer: tunpipe has started handshakes
    // nobody answers by the time the peer is back. The peer knows no endpoint, so it is
    // tunpipe that must find it again.
    let absence = Duration::from_secs(20);
    let mut rig = WgRig::up(&PeerOptions::default())?;
    let end = TunnelEnd::start(TUN, &rig.config_text(), 0)?;
    rig.ping_all_from_end(PEER_V4, 3)?;

    // The path goes away (the peer's UDP dropped by nftables), then comes back.
    rig.block_peer_udp(true)?;
    ping_into_the_void(absence)?;
    rig.block_peer_udp(false)?;
    let back = pings_resume_within(Duration::from_secs(30))?;
    println!("path back: pings answered again after {back:?}");
    check(back.is_some_and(|t| t <= Duration::from_secs(10)), || {
        format!("{back:?}; {:?}", end.counters.snapshot())
    })?;

    // The peer's process goes away, and a new one comes back with the same key and no
    // session.
    rig.stop_peer();
    ping_into_the_void(absence)?;
    rig.start_peer()?;
    let back = pings_resume_within(Duration::from_secs(30))?;
    println!("peer restarted: pings answered again after {back:?}");
    check(back.is_some_and(|t| t <= Duration::from_secs(10)), || {
        format!("{back:?}; {:?}", end.counters.snapshot())
    })?;
    end.stop_conserved()
}

/// The peer's second underlay address, where it moves in [`endpoint_name_follows_the_peer`].
const PEER_MOVED: &str = "192.168.77.3";

fn endpoint_name_follows_the_peer() -> Result<(), Failed> {
    const NAME: &str = "peer.tunpipe.test";
    let rig = WgRig::up(&PeerOptions::default())?;
    // This thread's /etc/hosts (the engine's threads inherit it): the name is the peer's.
    let hosts = EtcFile::mount("/etc/hosts", &format!("{PEER_UNDERLAY} {NAME}\n"))?;
    let text = rig.config_text().replace(
        &format!("Endpoint = {PEER_UNDERLAY}:"),
        &format!("Endpoint = {NAME}:"),
    );
    check(text.contains(NAME), || "the config names the peer".into())?;
    let end = TunnelEnd::start(TUN, &text, 0)?;
    rig.ping_all_from_end(PEER_V4, 3)?;

    // The peer moves to another address (the old one goes first: deleting a primary
    // address takes the secondaries of its subnet with it); the name follows it.
    let old = format!("{PEER_UNDERLAY}/24");
    rig.peer
        .output(&["ip", "addr", "del", &old, "dev", "tpvb"], "")?;
    let moved = format!("{PEER_MOVED}/24");
    rig.peer
        .output(&["ip", "addr", "add", &moved, "dev", "tpvb"], "")?;
    hosts.write(&format!("{PEER_MOVED} {NAME}\n"))?;
    end.engine.rebind()?;
    let back = pings_resume_within(Duration::from_secs(20))?;
    println!("the peer moved: pings answered again after {back:?}");
    check(back.is_some(), || {
        format!("no answer from the moved peer: {:?}", end.stage.peers())
    })?;
    let endpoint = end.stage.peers()[0].endpoint;
    check(
        endpoint == Some(format!("{PEER_MOVED}:{PEER_PORT}").parse()?),
        || format!("the peer's endpoint is {endpoint:?}"),
    )?;
    end.stop_conserved()
}

/// Drops, in the peer's namespace, every datagram from the end's port `END_PORT`: a NAT that
/// stopped forwarding the old port after a network change.
fn blackhole_old_port(rig: &WgRig) -> Result<(), Failed> {
    let rules = format!(
        "table inet tpport {{\n chain input {{\n type filter hook input priority 0;\n \
         udp sport {END_PORT} drop\n }}\n}}\n"
    );
    rig.peer.output(&["nft", "-f", "-"], &rules)?;
    Ok(())
}

fn rebind_recovers_on_a_fresh_port() -> Result<(), Failed> {
    nft_installed()?;
    let rig = WgRig::up(&PeerOptions::default())?;
    let end = TunnelEnd::start(TUN, &rig.config_text(), 0)?;
    rig.ping_all_from_end(PEER_V4, 2)?;
    // A path that works: the initiation from the new socket is answered (not merely some
    // handshake completed: wireguard-go may begin one itself), the port stays. The engine
    // says when the change is over (a thread's name appears only once it runs).
    let before = end.counters.snapshot().initiations_answered;
    end.engine.rebind()?;
    check(
        eventually(|| end.counters.snapshot().initiations_answered > before),
        || "the initiation after the rebind was answered".into(),
    )?;
    check(eventually(|| !end.engine.rebinding()), || {
        "the rebind's change ends".into()
    })?;
    check(end.udp.local_addr()?.port() == END_PORT, || {
        format!("the port moved: {:?}", end.udp.local_addr())
    })?;
    rig.ping_all_from_end(PEER_V4, 2)?;

    // The old port is blackholed: the rebind finds nobody answers, and moves.
    blackhole_old_port(&rig)?;
    let rebound = Instant::now();
    end.engine.rebind()?;
    let back = pings_resume_within(Duration::from_secs(30))?;
    let took = back.map(|_| rebound.elapsed());
    println!("old port blackholed: pings answered again {took:?} after the rebind");
    check(took.is_some_and(|t| t <= Duration::from_secs(10)), || {
        format!("{took:?}; {:?}", end.counters.snapshot())
    })?;
    // Pings may resume from the fresh socket a moment before the change records its port.
    check(eventually(|| !end.engine.rebinding()), || {
        "the rebind's change ends".into()
    })?;
    let port = end.udp.local_addr()?.port();
    check(port != END_PORT, || "still on the blackholed port".into())?;
    check(
        end.stage.get().contains(&format!("listen_port={port}\n")),
        || "get shows the fresh port".into(),
    )?;
    end.stop_conserved()
}

/// Reads the counter of the peer's `tpcount` table: datagrams from the end that reached the
/// peer's namespace.
fn datagrams_at_peer(rig: &WgRig) -> Result<u64, Failed> {
    let listing = rig
        .peer
        .output(&["nft", "list", "table", "inet", "tpcount"], "")?;
    let packets = listing
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no counter in {listing}"))?;
    Ok(packets)
}

fn suspend_and_resume() -> Result<(), Failed> {
    nft_installed()?;
    let rig = WgRig::up(&PeerOptions::default())?;
    let counter = format!(
        "table inet tpcount {{\n chain input {{\n type filter hook input priority 0;\n \
         udp dport {PEER_PORT} counter\n }}\n}}\n"
    );
    rig.peer.output(&["nft", "-f", "-"], &counter)?;
    let end = TunnelEnd::start(TUN, &rig.config_text(), 1)?;
    rig.ping_all_from_end(PEER_V4, 3)?;
    let handshake = rig.peer_view()?.latest_handshake;
    let rx_before = rig.peer_view()?.rx_bytes;

    // Suspended right after the answers came: the keepalive owed for them goes out first
    // (without it, wireguard-go would start a handshake 15 s after its last answer, and the
    // resume would answer it: a new session for nothing).
    end.engine.suspend()?;
    // Once every engine thread has parked (its count of blocking waits stops moving), none
    // may wake again while suspended.
    let engine_threads = || tunpipe_testkit::proc::thread_cpu(&["tunpipe-"]);
    check(
        eventually(|| {
            let first = engine_threads().voluntary;
            std::thread::sleep(Duration::from_millis(100));
            engine_threads().voluntary == first
        }),
        || "the engine's threads park".into(),
    )?;
    let keepalive = rig.peer_view()?.rx_bytes - rx_before;
    check(keepalive == 32, || {
        format!("{keepalive} bytes reached the peer as the suspension began, not a keepalive")
    })?;
    let threads_before = engine_threads();
    let datagrams_before = datagrams_at_peer(&rig)?;
    // 30 s of pings into the suspended tunnel, one a second: none answered, none sent. (They
    // wait in the TUN's queue and go out at the resume.)
    let (sent, got) = ping(&["-n", "-q", "-c", "30", "-i", "1", "-W", "1", PEER_V4])?;
    check(got == 0, || {
        format!("{got} of {sent} answered while suspended")
    })?;
    let woke = engine_threads().since(&threads_before);
    let datagrams = datagrams_at_peer(&rig)? - datagrams_before;
    println!("suspended 30 s: {datagrams} datagrams left, engine threads {woke:?}");
    check(datagrams == 0, || format!("{datagrams} datagrams left"))?;
    check(woke.voluntary == 0, || {
        format!("engine threads woke while suspended: {woke:?}")
    })?;

    end.engine.resume()?;
    let back = pings_resume_within(Duration::from_secs(10))?;
    println!("resumed: pings answered after {back:?}");
    check(back.is_some_and(|t| t <= Duration::from_secs(1)), || {
        format!("{back:?}; {:?}", end.counters.snapshot())
    })?;
    let after = rig.peer_view()?.latest_handshake;
    check(after == handshake, || {
        format!("a new handshake at {after} (was {handshake}): the young session was not kept")
    })?;
    let stats = end
        .engine
        .direction_stats(tunpipe::stage::Direction::Outbound);
    println!("outbound after resume: {stats:?}");
    end.stop_conserved()
}
