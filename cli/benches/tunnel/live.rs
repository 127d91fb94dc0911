//! `live`: what a live configuration change costs a flow it leaves alone. TCP (iperf3, A→B,
//! 200 Mbit/s) runs through the tunnel while a ping every 10 ms crosses it to the same peer, and the
//! end's configuration changes through its UAPI socket with the real `wg`: another peer
//! added and removed every 100 ms (`wg set`), and every second the whole configuration set
//! again (`wg setconf`, which sends `replace_peers=true`: what WireGuardKit's `update()`
//! does). Against the same run with no change, for tunpipe and wireguard-go, alternated.
//! Reported: pings lost, the longest gap between two replies, TCP's rate and retransmits.

use crate::linux::{config_file, median, start, Contender, End};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tunpipe_testkit::netns::{iperf3_result, iperf3_with, output_of, run_here};
use tunpipe_testkit::report::print_table;
use tunpipe_testkit::wg::KeyPair;
use tunpipe_testkit::wgpeer::{PeerOptions, WgRig, PEER_V4};

const ENDS: [Contender; 2] = [Contender::Tunpipe(None), Contender::WireguardGo];

/// TCP at 200 Mbit/s: a load below what either end carries here, so that a ping lost or
/// late is the change's doing, not a full queue's (at full rate tunpipe's end outruns the
/// wireguard-go peer, whose socket then drops about one ping in eight, changes or not).
const TCP_FLAGS: &[&str] = &["-b", "200M"];

/// What one run measured.
#[derive(Clone, Debug, Default)]
struct Run {
    pings_sent: u64,
    pings_lost: u64,
    /// The longest time between two consecutive ping replies, ms.
    longest_gap_ms: f64,
    mbps: f64,
    retransmits: u64,
    /// Configuration changes made during the run.
    changes: u64,
}

pub fn live(secs: u32, rounds: usize) -> Result<Value, String> {
    let mut rig = WgRig::up(&PeerOptions::default())?;
    let cases = [false, true];
    // runs[end][case]
    let mut runs = vec![vec![Vec::<Run>::new(); cases.len()]; ENDS.len()];
    let mut n = 500;
    for round in 0..rounds {
        for k in 0..ENDS.len() * cases.len() {
            let i = (k + round) % (ENDS.len() * cases.len());
            let (ei, ci) = (i / cases.len(), i % cases.len());
            let (c, changing) = (ENDS[ei], cases[ci]);
            n += 1;
            rig.rekey_end()?;
            let config = config_file(&rig, "live", None)?;
            let end = start(c, &rig, &config, "", n);
            let _ = std::fs::remove_file(&config);
            let end = end?;
            rig.ping_all_from_end(PEER_V4, 3)
                .map_err(|e| format!("{}: {e}", c.name()))?;
            let run =
                measure(&rig, &end, secs, changing).map_err(|e| format!("{}: {e}", c.name()))?;
            println!(
                "round {round} {:>12} {:>10}: {} of {} pings lost, longest gap {:.1} ms, \
                 TCP {:.0} Mb/s, {} retransmits, {} changes",
                c.name(),
                if changing { "changes" } else { "no change" },
                run.pings_lost,
                run.pings_sent,
                run.longest_gap_ms,
                run.mbps,
                run.retransmits,
                run.changes
            );
            runs[ei][ci].push(run);
            end.stop()?;
        }
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (ei, c) in ENDS.iter().enumerate() {
        for (ci, changing) in cases.iter().enumerate() {
            let of = |f: fn(&Run) -> f64| median(runs[ei][ci].iter().map(f).collect());
            rows.push(vec![
                c.name(),
                if *changing {
                    "changes".into()
                } else {
                    "no change".into()
                },
                format!("{:.0}", of(|r| r.changes as f64)),
                format!("{:.0}", of(|r| r.pings_lost as f64)),
                format!("{:.1} ms", of(|r| r.longest_gap_ms)),
                format!("{:.0} Mb/s", of(|r| r.mbps)),
                format!("{:.0}", of(|r| r.retransmits as f64)),
            ]);
            out.push(json!({
                "end": c.name(), "changes": changing,
                "pings_lost": runs[ei][ci].iter().map(|r| r.pings_lost).collect::<Vec<_>>(),
                "pings_sent": runs[ei][ci].iter().map(|r| r.pings_sent).collect::<Vec<_>>(),
                "longest_gap_ms": runs[ei][ci].iter().map(|r| r.longest_gap_ms).collect::<Vec<_>>(),
                "tcp_mbps": runs[ei][ci].iter().map(|r| r.mbps).collect::<Vec<_>>(),
                "retransmits": runs[ei][ci].iter().map(|r| r.retransmits).collect::<Vec<_>>(),
                "config_changes": runs[ei][ci].iter().map(|r| r.changes).collect::<Vec<_>>(),
            }));
        }
    }
    print_table(
        &format!(
            "Live configuration changes under TCP at 200 Mbit/s ({secs} s, ping every 10 ms; a peer \
             added and removed every 100 ms with wg set, the whole configuration again every \
             second with wg setconf; medians of {rounds} rounds)"
        ),
        &[
            "end",
            "case",
            "changes",
            "pings lost",
            "longest gap",
            "TCP A→B",
            "retransmits",
        ],
        &rows,
    );
    Ok(json!({"secs": secs, "rounds": rounds, "runs": out}))
}

/// One run: TCP and the ping for `secs`, and the changes if `changing`.
fn measure(rig: &WgRig, end: &End, secs: u32, changing: bool) -> Result<Run, String> {
    let ifname = end.ifname().to_string();
    // The whole configuration, as `wg setconf` takes it back.
    let conf = run_here(&["wg", "showconf", &ifname])?;
    let count = (secs * 100).to_string();
    let ping = Command::new("ping")
        .args(["-D", "-n", "-i", "0.01", "-c", &count, "-W", "1", PEER_V4])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("ping: {e}"))?;
    std::thread::scope(|scope| {
        let tcp = scope.spawn(|| iperf3_with(&rig.peer, PEER_V4, secs, TCP_FLAGS));
        let changes = if changing {
            change(&ifname, &conf, secs)
        } else {
            Ok(0)
        };
        let report = tcp.join().map_err(|_| "the iperf3 thread panicked")??;
        finish(ping, &report, changes?)
    })
}

/// Changes the configuration of `ifname` for `secs` (module docs); returns how many times.
fn change(ifname: &str, conf: &str, secs: u32) -> Result<u64, String> {
    let mut changes = 0;
    let until = Instant::now() + Duration::from_secs(u64::from(secs));
    let other = KeyPair::generate().public.to_base64();
    let setconf: Vec<String> = ["wg", "setconf", ifname, "/dev/stdin"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut next_setconf = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        run_here(&[
            "wg",
            "set",
            ifname,
            "peer",
            &other,
            "allowed-ips",
            "10.99.0.0/24",
        ])?;
        std::thread::sleep(Duration::from_millis(50));
        run_here(&["wg", "set", ifname, "peer", &other, "remove"])?;
        changes += 2;
        if Instant::now() >= next_setconf {
            output_of(&setconf, conf)?;
            changes += 1;
            next_setconf += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(changes)
}

/// The run's figures, once ping has ended.
fn finish(ping: std::process::Child, report: &str, changes: u64) -> Result<Run, String> {
    let moved = iperf3_result(report)?;
    let out = ping.wait_with_output().map_err(|e| format!("ping: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (sent, received) =
        tunpipe_testkit::ping::summary(&text).ok_or_else(|| format!("no ping summary:\n{text}"))?;
    // "[1733500000.123456] 64 bytes from ...": the replies' arrival times.
    let times: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let longest_gap_ms = times
        .windows(2)
        .map(|w| (w[1] - w[0]) * 1e3)
        .fold(0.0, f64::max);
    Ok(Run {
        pings_sent: sent,
        pings_lost: sent - received,
        longest_gap_ms,
        mbps: moved.bits_per_second / 1e6,
        retransmits: moved.retransmits,
        changes,
    })
}
