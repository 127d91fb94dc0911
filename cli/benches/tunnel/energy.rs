//! `paced`: what a packet costs at the rates a phone runs. iperf3 sends UDP of 1200-byte
//! datagrams, paced (open loop) at 1 and 10 Mbit/s, through the tunnel each way, for
//! `secs` seconds. The end under test (tunpipe with its defaults, boringtun-cli with one
//! thread, wireguard-go) runs against the same wireguard-go peer. Its whole process's on-CPU
//! time and context switches over the run are divided by the datagrams iperf3 sent (never by
//! an end's own counters). Contenders alternate round by round; the median counts.

use crate::linux::{config_file, median, start, wanted, Contender};
use serde_json::{json, Value};
use std::time::Instant;
use tunpipe_testkit::netns::iperf3_with;
use tunpipe_testkit::proc::process_cpu;
use tunpipe_testkit::report::print_table;
use tunpipe_testkit::wgpeer::{PeerOptions, WgRig, PEER_V4};

/// tunpipe with its defaults, boringtun-cli with one thread, wireguard-go; and another build
/// of tunpipe if `TUNPIPE_BENCH_ALT` names one (an A/B in the same run). Only those named
/// in `TUNPIPE_BENCH_ENDS`, if set.
fn ends() -> Vec<Contender> {
    let alt = std::env::var_os("TUNPIPE_BENCH_ALT").map(|_| Contender::TunpipeAlt);
    [
        Contender::Tunpipe(None),
        Contender::Boringtun(1),
        Contender::WireguardGo,
    ]
    .into_iter()
    .chain(alt)
    .filter(|c| wanted(*c))
    .collect()
}

/// (name, iperf3 rate, reverse): A→B is toward the peer, B→A from it.
const LOADS: [(&str, &str, bool); 4] = [
    ("1 Mbit/s A→B", "1M", false),
    ("1 Mbit/s B→A", "1M", true),
    ("10 Mbit/s A→B", "10M", false),
    ("10 Mbit/s B→A", "10M", true),
];

/// Datagram payload: 1200 bytes.
const LENGTH: &str = "1200";

#[derive(Clone, Copy, Debug)]
struct Cost {
    /// Datagrams iperf3 sent.
    packets: u64,
    /// On-CPU time of the end's process per datagram, µs.
    cpu_us: f64,
    /// Voluntary context switches (wake-ups) per datagram.
    wakeups: f64,
    /// Involuntary ones (preemptions) per datagram.
    preempted: f64,
}

fn measure(rig: &WgRig, pid: u32, rate: &str, reverse: bool, secs: u32) -> Result<Cost, String> {
    let mut flags = vec!["-u", "-b", rate, "-l", LENGTH];
    if reverse {
        flags.push("-R");
    }
    let before = process_cpu(pid);
    let profile = Profile::start(pid, &format!("{rate}{}", if reverse { "-R" } else { "" }));
    let report = iperf3_with(&rig.peer, PEER_V4, secs, &flags);
    drop(profile);
    let report = report?;
    let used = process_cpu(pid).since(&before);
    let json: Value = serde_json::from_str(&report).map_err(|e| e.to_string())?;
    let packets = json["end"]["sum"]["packets"]
        .as_u64()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("iperf3 reported no packets: {report}"))?;
    let per = |x: u64| x as f64 / packets as f64;
    Ok(Cost {
        packets,
        cpu_us: per(used.cpu_ns) / 1e3,
        wakeups: per(used.voluntary),
        preempted: per(used.involuntary),
    })
}

/// `TUNPIPE_BENCH_PERF=DIR`: `perf record` (DWARF call graphs) of the end under test during
/// each load, into `DIR/PID-LOAD.data`, to see where a packet's CPU goes. The recording's
/// own cost is charged to the end, so its figures are then not comparable.
struct Profile(Option<std::process::Child>);

impl Profile {
    fn start(pid: u32, load: &str) -> Profile {
        let Some(dir) = std::env::var_os("TUNPIPE_BENCH_PERF") else {
            return Profile(None);
        };
        let out = std::path::Path::new(&dir).join(format!("{pid}-{load}.data"));
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-F",
                "9999",
                "--call-graph",
                "dwarf,16384",
                "-p",
            ])
            .arg(pid.to_string())
            .arg("-o")
            .arg(out)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| println!("perf record: {e}"))
            .ok();
        Profile(child)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // perf writes its file on SIGINT.
            // SAFETY: kill(2) with a child's pid, which `wait` below has not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

pub fn paced(secs: u32, rounds: usize) -> Result<Value, String> {
    let mut rig = WgRig::up(&PeerOptions::default())?;
    let ends = ends();
    // costs[end][load][round]
    let mut costs = vec![vec![Vec::<Cost>::new(); LOADS.len()]; ends.len()];
    let mut n = 400;
    let started = Instant::now();
    for round in 0..rounds {
        for k in 0..ends.len() {
            let ei = (k + round) % ends.len();
            let c = ends[ei];
            n += 1;
            rig.rekey_end()?;
            let config = config_file(&rig, "paced", None)?;
            let end = start(c, &rig, &config, "", n);
            let _ = std::fs::remove_file(&config);
            let end = end?;
            rig.ping_all_from_end(PEER_V4, 3)
                .map_err(|e| format!("{}: {e}", c.name()))?;
            for (li, (load, rate, reverse)) in LOADS.iter().enumerate() {
                let cost = measure(&rig, end.pid(), rate, *reverse, secs)
                    .map_err(|e| format!("{} {load}: {e}", c.name()))?;
                println!(
                    "round {round} {:>13} {load:>14}: {:>6} datagrams, {:>6.1} µs CPU and \
                     {:.2} wake-ups per datagram",
                    c.name(),
                    cost.packets,
                    cost.cpu_us,
                    cost.wakeups
                );
                costs[ei][li].push(cost);
            }
            end.stop()?;
        }
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (li, (load, _, _)) in LOADS.iter().enumerate() {
        let cpu = |ei: usize| median(costs[ei][li].iter().map(|c| c.cpu_us).collect());
        let thriftiest = (0..ends.len())
            .filter(|&ei| ends[ei].is_anchor())
            .map(cpu)
            .fold(f64::INFINITY, f64::min);
        for (ei, c) in ends.iter().enumerate() {
            let col = |f: fn(&Cost) -> f64| median(costs[ei][li].iter().map(f).collect());
            rows.push(vec![
                load.to_string(),
                c.name(),
                format!("{:.1} µs", cpu(ei)),
                format!("{:.2}×", cpu(ei) / thriftiest),
                format!("{:.2}", col(|c| c.wakeups)),
                format!("{:.2}", col(|c| c.preempted)),
            ]);
            out.push(json!({
                "load": load, "end": c.name(), "cpu_us_per_packet": cpu(ei),
                "ratio_to_thriftiest_other": cpu(ei) / thriftiest,
                "rounds": costs[ei][li].iter().map(|c| json!({
                    "packets": c.packets, "cpu_us": c.cpu_us, "wakeups": c.wakeups,
                    "preempted": c.preempted,
                })).collect::<Vec<_>>(),
            }));
        }
    }
    print_table(
        &format!(
            "Paced UDP through the tunnel, 1200-byte datagrams, {secs} s per load: the end's \
             whole process per datagram sent (median of {rounds} rounds)"
        ),
        &[
            "load",
            "end",
            "CPU",
            "÷ thriftiest other",
            "wake-ups",
            "preempted",
        ],
        &rows,
    );
    Ok(json!({"seconds": secs, "rounds": rounds, "cells": out,
              "wall_s": started.elapsed().as_secs_f64()}))
}
