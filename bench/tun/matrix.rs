//! The `matrix` section: closed-loop UDP from a client socket through the TUN into each
//! contender and back (`reflect`), over windows and payload sizes; `run_matrix` serves the
//! `seal` and `spin` sections too.

use crate::contenders::{start, Contender, Work};
use crate::Timing;
use serde_json::{json, Value};
use tunpipe_testkit::load::{client_socket, closed_loop};
use tunpipe_testkit::proc::{thread_cpu, ThreadCpu};
use tunpipe_testkit::report::{distribution, percentiles_us, print_table, thousands};

/// One cell: contender, work, window, payload.
fn cell(contender: Contender, work: Work, window: usize, payload: usize, t: &Timing) -> Value {
    let ifname = "tpbench";
    let running = match start(contender, work, ifname) {
        Ok(r) => r,
        Err(e) => return json!({"contender": contender.name(), "error": e.to_string()}),
    };
    let socket = client_socket().expect("client socket");
    let mut marks: Vec<(ThreadCpu, ThreadCpu, (u64, u64))> = Vec::new();
    let result = closed_loop(&socket, window, payload, t.warmup, t.measure, &mut || {
        marks.push((
            thread_cpu(contender.threads()),
            thread_cpu(&["bench-client"]),
            if_drops(&running.ifname),
        ))
    });
    let engine_latency = running
        .engine
        .as_ref()
        .and_then(|(e, _)| e.latency().ok())
        .map(|l| l.engine.percentiles());
    let stopped = running.stop();
    let (cpu, client_cpu, kernel_drops) = match marks.as_slice() {
        [a, b] => (
            b.0.since(&a.0),
            b.1.since(&a.1),
            (b.2 .0 - a.2 .0, b.2 .1 - a.2 .1),
        ),
        _ => Default::default(),
    };
    let pps = result.pps();
    let per_packet = |x: u64| x as f64 / result.received.max(1) as f64;
    json!({
        "contender": contender.name(),
        "work": format!("{work:?}").to_lowercase(),
        "window": window,
        "payload": payload,
        "seconds": result.secs,
        "sent": result.sent,
        "received": result.received,
        "pps": pps,
        "rtt": percentiles_us(&result.rtt),
        "rtt_distribution": distribution(&result.rtt),
        "contender_threads": cpu.threads,
        "contender_cpu_ns_per_packet": per_packet(cpu.cpu_ns),
        "contender_cpu_utilisation": cpu.cpu_ns as f64 / 1e9 / result.secs,
        "contender_voluntary_switches_per_packet": per_packet(cpu.voluntary),
        "contender_involuntary_switches_per_packet": per_packet(cpu.involuntary),
        "client_cpu_ns_per_packet": per_packet(client_cpu.cpu_ns),
        "lost_client_side": result.lost,
        "client_send_errors": result.send_errors,
        "client_timeouts": result.timeouts,
        "kernel_tun_tx_dropped": kernel_drops.0,
        "kernel_tun_rx_dropped": kernel_drops.1,
        "contender_drops": stopped.drops,
        "engine_time_ns": engine_latency.map(|p| json!({"p50": p.p50, "p99": p.p99, "p999": p.p999})),
        "engine_stats": stopped.engine_stats.map(|s| format!("{s:?}")),
        "loop_stats": stopped.loop_stats.map(|s| format!("{s:?}")),
        "stop_us": stopped.stop_time.as_secs_f64() * 1e6,
    })
}

pub fn run_matrix(
    t: &Timing,
    work: Work,
    contenders: &[Contender],
    windows: &[usize],
    payloads: &[usize],
) -> Value {
    let mut cells = Vec::new();
    let mut rows = Vec::new();
    for &payload in payloads {
        for &window in windows {
            let mut base_pps = None;
            for &contender in contenders {
                let c = cell(contender, work, window, payload, t);
                let pps = c["pps"].as_f64().unwrap_or(0.0);
                if contender == Contender::GuideSync {
                    base_pps = Some(pps);
                }
                let ratio = base_pps.map(|b| pps / b).unwrap_or(f64::NAN);
                let f = |k: &str| c["rtt"][k].as_f64().unwrap_or(f64::NAN);
                rows.push(vec![
                    payload.to_string(),
                    window.to_string(),
                    contender.name(),
                    thousands(pps),
                    format!("{ratio:.2}"),
                    format!("{:.1}", f("p50_us")),
                    format!("{:.1}", f("p99_us")),
                    format!("{:.1}", f("p999_us")),
                    format!(
                        "{:.0}",
                        c["contender_cpu_ns_per_packet"].as_f64().unwrap_or(0.0)
                    ),
                    format!(
                        "{:.2}",
                        c["contender_cpu_utilisation"].as_f64().unwrap_or(0.0)
                    ),
                    format!(
                        "{:.2}",
                        c["contender_voluntary_switches_per_packet"]
                            .as_f64()
                            .unwrap_or(0.0)
                    ),
                    format!(
                        "{}/{}/{}",
                        c["lost_client_side"], c["kernel_tun_tx_dropped"], c["contender_drops"]
                    ),
                ]);
                let mut c = c;
                c["ratio_vs_guide_sync"] = json!(ratio);
                cells.push(c);
            }
        }
    }
    print_table(
        &format!(
            "Real TUN, closed-loop UDP, work = {}",
            format!("{work:?}").to_lowercase()
        ),
        &[
            "payload",
            "window",
            "contender",
            "pps",
            "x sync",
            "RTT p50 µs",
            "p99",
            "p99.9",
            "CPU ns/pkt",
            "cores",
            "sleeps/pkt",
            "lost/kern/own drops",
        ],
        &rows,
    );
    json!({"cells": cells})
}

pub const ALL: [Contender; 5] = [
    Contender::GuideSync,
    Contender::GuideTokio,
    Contender::Tunpipe(0),
    Contender::Tunpipe(1),
    Contender::Tunpipe(2),
];

pub fn matrix_reflect(t: &Timing) -> Value {
    run_matrix(t, Work::Reflect, &ALL, &[1, 32, 256], &[64, 1400])
}

/// Kernel drop counters of the interface (Linux): packets the TUN's queue toward user space
/// dropped (`tx_dropped`), and packets user space wrote that the kernel dropped (`rx_dropped`).
pub fn if_drops(name: &str) -> (u64, u64) {
    // /proc/thread-self/net/dev shows the calling thread's namespace (sysfs would show the
    // namespace it was mounted in). Fields after "name:": rx bytes packets errs drop ...,
    // then tx bytes packets errs drop ...
    let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
    let prefix = format!("{name}:");
    text.lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(&prefix))
        .map(|l| {
            let f: Vec<u64> = l[prefix.len()..]
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            (
                f.get(11).copied().unwrap_or(0),
                f.get(3).copied().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}
