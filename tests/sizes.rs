//! Honest sizes: what a tunnel says it reserves is within 20% of the memory it adds when it
//! starts, at 1 peer and at 10,000; and a memory budget stops a start that would pass it with
//! an error naming what to shrink.
//!
//! Resident memory is measured in a child process per case (this test binary, run again with
//! `SIZES_CHILD` set), since a process that freed memory before reuses it without a trace.

use std::process::Command;
use tunpipe::stage::Direction;
use tunpipe::wireguard::{state_bytes, WgConfig, WireGuard};
use tunpipe::{Config, Engine, EngineError, MemoryDevice};
use tunpipe_testkit::wg::{config_text, loopback_udp, KeyPair, PeerText};

/// A wg-quick text with `n` peers, each with one /32.
fn tunnel_text(n: usize) -> String {
    let me = KeyPair::generate();
    let keys: Vec<KeyPair> = (0..n).map(|_| KeyPair::generate()).collect();
    let allowed: Vec<String> = (0..n)
        .map(|i| format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let peers: Vec<PeerText<'_>> = keys
        .iter()
        .zip(&allowed)
        .map(|(k, a)| PeerText {
            public: &k.public,
            endpoint: Some("127.0.0.1:9".parse().unwrap()),
            allowed_ips: a,
        })
        .collect();
    config_text(&me.private, "10.255.0.1/16", &peers)
}

fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// In the child: builds and starts a tunnel with `SIZES_CHILD` peers and prints what it
/// reserved and what resident memory it added.
#[test]
fn child_measures_one_tunnel() {
    let Ok(peers) = std::env::var("SIZES_CHILD") else {
        return; // Run by the parent only.
    };
    let config = WgConfig::parse(&tunnel_text(peers.parse().unwrap())).unwrap();
    let (inside, _app_tx, _app_rx) = MemoryDevice::new(256, 2048);
    let udp = loopback_udp();
    let before = resident_bytes();
    let stage = WireGuard::new(&config).unwrap();
    let engine = Engine::builder()
        .config(Config::default())
        .start_tunnel(stage, &inside, &udp)
        .unwrap();
    let added = resident_bytes() - before;
    println!("SIZES reserved={} added={added}", engine.reserved_bytes());
    engine.stop().unwrap();
}

#[test]
#[cfg_attr(
    tunpipe_asan,
    ignore = "AddressSanitizer's shadow memory and quarantine change resident memory"
)]
fn the_reserved_figure_is_within_20_percent_of_what_a_tunnel_adds() {
    for peers in [1, 10_000] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_measures_one_tunnel", "--nocapture"])
            .env("SIZES_CHILD", peers.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        let line = stdout.lines().find(|l| l.starts_with("SIZES ")).unwrap();
        let number = |key: &str| -> f64 {
            let field = line.split(' ').find(|f| f.starts_with(key)).unwrap();
            field[key.len()..].parse().unwrap()
        };
        let (reserved, added) = (number("reserved="), number("added="));
        let ratio = reserved / added;
        println!(
            "{peers} peers: reserved {reserved} B, resident memory added {added} B ({ratio:.3})"
        );
        assert!(
            (0.8..=1.2).contains(&ratio),
            "{peers} peers: reserved {reserved}, added {added} (ratio {ratio:.2})"
        );
    }
}

#[test]
fn a_start_past_the_memory_budget_fails_and_names_what_to_shrink() {
    let (inside, _app_tx, _app_rx) = MemoryDevice::new(16, 2048);
    let udp = loopback_udp();
    // The buffers: a tunnel with a 65,535-byte MTU, under an extension's 40 MiB.
    let one_peer = WgConfig::parse(&tunnel_text(1)).unwrap();
    let mut big_mtu = Config::default();
    big_mtu.mtu = 65_535;
    big_mtu.memory_budget = Some(40 << 20);
    let stage = WireGuard::new(&one_peer).unwrap();
    match Engine::builder()
        .config(big_mtu)
        .start_tunnel(stage, &inside, &udp)
    {
        Err(EngineError::Config(e)) => {
            assert_eq!(e.field, "memory_budget");

            assert!(e.reason.contains("lower mtu, now 65535"), "{}", e.reason);
        }
        other => panic!("expected a budget error, got {:?}", other.map(|_| ())),
    }
    // The peers: 10,000 of them need more than 40 MiB; the buffers come second.
    let config = WgConfig::parse(&tunnel_text(10_000)).unwrap();
    let needed = state_bytes(10_000, 10_000);
    assert!(needed > 40 << 20, "{needed}");
    let mut c = Config::default();
    c.memory_budget = Some(40 << 20);
    match Engine::builder().config(c.clone()).start_tunnel(
        WireGuard::new(&config).unwrap(),
        &inside,
        &udp,
    ) {
        Err(EngineError::Config(e)) => {
            let peers_at = e.reason.find("fewer peers").expect(&e.reason);

            assert!(peers_at < e.reason.find("lower mtu").expect(&e.reason));
        }
        other => panic!("expected a budget error, got {:?}", other.map(|_| ())),
    }
    // Within the budget, it starts, and says what it reserved.
    c.memory_budget = Some(needed + (16 << 20));
    let engine = Engine::builder()
        .config(c)
        .start_tunnel(WireGuard::new(&config).unwrap(), &inside, &udp)
        .unwrap();
    assert!(engine.reserved_bytes() > needed);
    engine.stop().unwrap();
    assert_eq!(engine.direction_stats(Direction::Outbound).rx_packets, 0);
}
