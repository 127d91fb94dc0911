//! The tunnel under attack, tunpipe beside wireguard-go in one run, alternated round by round.
//!
//! - `flood`: a two-peer tunnel (the rig's peer, and one that is never there) carries ping
//!   (1,000 echoes at 10 ms), then TCP (iperf3, toward the peer), while a flooder in the
//!   peer's namespace sends it initiation-shaped datagrams at 100,000 a second: none, then
//!   with a bad mac1 (type 1, then zeros), then with a valid one (a stranger's initiation made
//!   for the end's key). The rate is counted where the tunnel receives them (an nftables
//!   counter on its input), not at the sender. Figures: ping loss and median round trip, TCP
//!   against the same end's unflooded run, the end's CPU.
//! - `peers`: ping's median round trip through a tunnel with the rig's peer alone, and with
//!   9,999 other peers (each its own /32) configured before it.

use crate::linux::{config_file, median, start, Contender};
use serde_json::{json, Value};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe_testkit::netns::{iperf3_result, iperf3_with, run_here};
use tunpipe_testkit::ping::ping_rtts;
use tunpipe_testkit::proc::process_cpu;
use tunpipe_testkit::report::print_table;
use tunpipe_testkit::wg::{stranger_initiation, KeyPair};
use tunpipe_testkit::wgpeer::{nft_installed, PeerOptions, WgRig, END_PORT, END_UNDERLAY, PEER_V4};

/// Initiation-shaped datagrams a second, as the target names.
const FLOOD_RATE: u64 = 100_000;

/// The contenders of both sections: tunpipe with its defaults, and wireguard-go.
const ENDS: [Contender; 2] = [Contender::Tunpipe(None), Contender::WireguardGo];

/// What a flood carries.
#[derive(Clone, Copy, PartialEq)]
enum Junk {
    None,
    BadMac1,
    ValidMac1,
}

impl Junk {
    const ALL: [Junk; 3] = [Junk::None, Junk::BadMac1, Junk::ValidMac1];

    fn name(self) -> &'static str {
        match self {
            Junk::None => "no flood",
            Junk::BadMac1 => "bad mac1",
            Junk::ValidMac1 => "valid mac1",
        }
    }

    /// The datagram, for an end whose public key is the rig's `end_keys`.
    fn datagram(self, rig: &WgRig) -> Option<Vec<u8>> {
        match self {
            Junk::None => None,
            Junk::BadMac1 => {
                let mut junk = vec![0u8; 148];
                junk[0] = 1;
                Some(junk)
            }
            Junk::ValidMac1 => Some(stranger_initiation(&rig.end_keys.public)),
        }
    }
}

/// Sends `datagram` from `socket` (connected) at `rate` a second until `stop` is set, in
/// bursts every millisecond; returns how many went.
fn paced_flood(socket: &UdpSocket, datagram: &[u8], rate: u64, stop: &AtomicBool) -> u64 {
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = started.elapsed().as_nanos() as u64 * rate / 1_000_000_000;
        while sent < due {
            // A full socket buffer loses the datagram at the sender; the rate that counts is
            // the one the tunnel receives.
            let _ = socket.send(datagram);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}

/// A flooder in the peer's namespace, sending to the end's port until dropped.
struct Flooder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Flooder {
    fn start(rig: &WgRig, datagram: Vec<u8>) -> Result<Flooder, String> {
        let socket = rig
            .peer
            .run(|| UdpSocket::bind("0.0.0.0:0"))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        socket
            .connect((END_UNDERLAY, END_PORT))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || paced_flood(&socket, &datagram, FLOOD_RATE, &stop))
        };
        Ok(Flooder {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Counts, on this namespace's input, the UDP datagrams of an initiation's size (148 bytes)
/// that reach the end's port: the flood as the tunnel receives it.
struct ArrivalCounter;

impl ArrivalCounter {
    fn install() -> Result<ArrivalCounter, String> {
        let rules = format!(
            "table inet tpflood {{\n chain input {{\n type filter hook input priority -10;\n \
             udp dport {END_PORT} udp length 156 counter\n }}\n}}\n"
        );
        tunpipe_testkit::netns::output_of(&["nft".into(), "-f".into(), "-".into()], &rules)?;
        Ok(ArrivalCounter)
    }

    fn count(&self) -> Result<u64, String> {
        let text = run_here(&["nft", "list", "table", "inet", "tpflood"])?;
        text.split("counter packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("no counter in: {text}"))
    }
}

impl Drop for ArrivalCounter {
    fn drop(&mut self) {
        let _ = run_here(&["nft", "delete", "table", "inet", "tpflood"]);
    }
}

/// One flood measurement of one end.
#[derive(Clone, Debug)]
struct FloodCell {
    /// Flood datagrams a second, as the tunnel's input counted them.
    arriving: f64,
    loss_percent: f64,
    median_rtt_ms: f64,
    tcp_mbps: f64,
    end_cpu: f64,
}

fn flood_cell(rig: &WgRig, pid: u32, junk: Junk, secs: u32) -> Result<FloodCell, String> {
    let counter = ArrivalCounter::install()?;
    let _flooder = match junk.datagram(rig) {
        Some(datagram) => Some(Flooder::start(rig, datagram)?),
        None => None,
    };
    // Into the steady state: the rate limiter and the cookie secret under way.
    std::thread::sleep(Duration::from_secs(1));
    let (count0, cpu0, at) = (counter.count()?, process_cpu(pid), Instant::now());
    // Ping and TCP one after the other: at once, TCP's bursts overrun wireguard-go's socket
    // buffer (tunpipe's more than wireguard-go's own), and the pings lost to that would hide
    // the flood's effect (PERFORMANCE.md).
    let pings = ping_rtts(&[
        "-n",
        "-c",
        &(secs * 100).to_string(),
        "-i",
        "0.01",
        "-W",
        "1",
        PEER_V4,
    ])?;
    let tcp = iperf3_result(&iperf3_with(&rig.peer, PEER_V4, secs, &[])?)?;
    let wall = at.elapsed().as_secs_f64();
    let (count1, cpu1) = (counter.count()?, process_cpu(pid));
    Ok(FloodCell {
        arriving: (count1 - count0) as f64 / wall,
        loss_percent: pings.loss_percent(),
        median_rtt_ms: pings.median_ms(),
        tcp_mbps: tcp.bits_per_second / 1e6,
        end_cpu: cpu1.since(&cpu0).cpu_ns as f64 / 1e9 / wall,
    })
}

/// The other peer of the two-peer tunnel: never there.
fn absent_peer() -> String {
    format!(
        "[Peer]\nPublicKey = {}\nAllowedIPs = 10.99.0.0/24\n\n",
        KeyPair::generate().public.to_base64()
    )
}

pub fn flood(secs: u32, rounds: usize) -> Result<Value, String> {
    nft_installed()?;
    let mut rig = WgRig::up(&PeerOptions::default())?;
    // cells[end][junk][round]
    let mut cells = vec![vec![Vec::<FloodCell>::new(); Junk::ALL.len()]; ENDS.len()];
    let mut n = 200;
    for round in 0..rounds {
        for k in 0..ENDS.len() {
            let ei = (k + round) % ENDS.len();
            let c = ENDS[ei];
            n += 1;
            rig.rekey_end()?;
            let absent = absent_peer();
            let config = config_file(&rig, "flood", Some(rig.config_text_with(&absent)))?;
            let end = start(c, &rig, &config, &absent, n);
            let _ = std::fs::remove_file(&config);
            let end = end?;
            rig.ping_all_from_end(PEER_V4, 3)
                .map_err(|e| format!("{}: {e}", c.name()))?;
            for (ji, junk) in Junk::ALL.into_iter().enumerate() {
                let cell = flood_cell(&rig, end.pid(), junk, secs)
                    .map_err(|e| format!("{} {}: {e}", c.name(), junk.name()))?;
                println!(
                    "round {round} {:>12} {:>10}: {:>7.0}/s arriving, ping {:.1}% lost, \
                     {:.2} ms; TCP {:.0} Mb/s; end CPU {:.2}",
                    c.name(),
                    junk.name(),
                    cell.arriving,
                    cell.loss_percent,
                    cell.median_rtt_ms,
                    cell.tcp_mbps,
                    cell.end_cpu
                );
                cells[ei][ji].push(cell);
            }
            end.stop()?;
        }
    }
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for (ei, c) in ENDS.iter().enumerate() {
        for (ji, junk) in Junk::ALL.iter().enumerate() {
            let col = |f: fn(&FloodCell) -> f64| median(cells[ei][ji].iter().map(f).collect());
            // Each round's TCP against the same end's unflooded run in that round.
            let tcp_kept = median(
                (0..rounds)
                    .map(|r| cells[ei][ji][r].tcp_mbps / cells[ei][0][r].tcp_mbps)
                    .collect(),
            );
            let worst_loss = cells[ei][ji]
                .iter()
                .map(|c| c.loss_percent)
                .fold(0.0, f64::max);
            rows.push(vec![
                c.name(),
                junk.name().to_string(),
                format!("{:.0}", col(|c| c.arriving)),
                format!("{:.1}% ({worst_loss:.1}%)", col(|c| c.loss_percent)),
                format!("{:.2} ms", col(|c| c.median_rtt_ms)),
                format!("{:.0} Mb/s", col(|c| c.tcp_mbps)),
                format!("{:.0}%", tcp_kept * 100.0),
                format!("{:.2}", col(|c| c.end_cpu)),
            ]);
            json_rows.push(json!({
                "end": c.name(), "flood": junk.name(), "tcp_kept": tcp_kept,
                "rounds": cells[ei][ji].iter().map(|c| json!({
                    "arriving_per_s": c.arriving, "ping_loss_percent": c.loss_percent,
                    "median_rtt_ms": c.median_rtt_ms, "tcp_mbps": c.tcp_mbps,
                    "end_cpu_cores": c.end_cpu,
                })).collect::<Vec<_>>(),
            }));
        }
    }
    print_table(
        &format!(
            "Two-peer tunnel under {FLOOD_RATE} initiation-shaped datagrams/s: median of \
             {rounds} rounds (ping at 10 ms for {secs} s, then TCP for {secs} s)"
        ),
        &[
            "end",
            "flood",
            "arriving/s",
            "ping loss (worst)",
            "ping RTT",
            "TCP",
            "TCP kept",
            "end CPU",
        ],
        &rows,
    );
    Ok(json!({"seconds": secs, "rounds": rounds, "rate": FLOOD_RATE, "cells": json_rows}))
}

/// `count` peers nobody runs, each with its own /32 in 10.200.0.0/16 and 10.201.0.0/16.
pub(crate) fn many_peers(count: usize) -> String {
    let mut text = String::new();
    for i in 0..count {
        let (hi, lo) = (i / 65_536, i % 65_536);
        text.push_str(&format!(
            "[Peer]\nPublicKey = {}\nAllowedIPs = 10.{}.{}.{}/32\n\n",
            KeyPair::generate().public.to_base64(),
            200 + hi,
            lo / 256,
            lo % 256
        ));
    }
    text
}

pub fn peers(pings: u32) -> Result<Value, String> {
    let mut rig = WgRig::up(&PeerOptions::default())?;
    let crowds = [
        ("1 peer", String::new()),
        ("10,000 peers", many_peers(9_999)),
    ];
    // rtts[end][crowd]: the median round trip (ms) of each run.
    let mut rtts = vec![vec![Vec::new(); crowds.len()]; ENDS.len()];
    let rounds = 2;
    let mut n = 300;
    for round in 0..rounds {
        for k in 0..ENDS.len() * crowds.len() {
            let i = (k + round) % (ENDS.len() * crowds.len());
            let (ei, ci) = (i / crowds.len(), i % crowds.len());
            let (c, (crowd, others)) = (ENDS[ei], &crowds[ci]);
            n += 1;
            rig.rekey_end()?;
            let config = config_file(&rig, "peers", Some(rig.config_text_with(others)))?;
            let end = start(c, &rig, &config, others, n);
            let _ = std::fs::remove_file(&config);
            let end = end?;
            rig.ping_all_from_end(PEER_V4, 3)
                .map_err(|e| format!("{} {crowd}: {e}", c.name()))?;
            let count = pings.to_string();
            let run = ping_rtts(&["-n", "-c", &count, "-i", "0.01", "-W", "1", PEER_V4])?;
            println!(
                "round {round} {:>12} {crowd:>12}: median {:.3} ms, {:.1}% lost",
                c.name(),
                run.median_ms(),
                run.loss_percent()
            );
            rtts[ei][ci].push(run.median_ms());
            end.stop()?;
        }
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (ei, c) in ENDS.iter().enumerate() {
        let one = median(rtts[ei][0].clone());
        let many = median(rtts[ei][1].clone());
        rows.push(vec![
            c.name(),
            format!("{one:.3} ms"),
            format!("{many:.3} ms"),
            format!("{:.2}×", many / one),
        ]);
        out.push(json!({"end": c.name(), "one_peer_ms": rtts[ei][0],
                        "ten_thousand_peers_ms": rtts[ei][1], "ratio": many / one}));
    }
    print_table(
        &format!(
            "Ping's median round trip, {pings} pings at 10 ms, the pinged peer configured last \
             (median of {rounds} runs)"
        ),
        &["end", "1 peer", "10,000 peers", "ratio"],
        &rows,
    );
    Ok(json!({"pings": pings, "rounds": rounds, "ends": out}))
}
