//! The `tcp` section (Linux): iperf3 between two network namespaces joined by a bridge of
//! two TUNs: two engines, or two guide loops; and two engines on two TUNs made with offload
//! (`IFF_VNET_HDR`, TSO: 64 KiB segments cut into packets on reading, runs of a flow joined
//! on writing), which the guide's loop cannot read.

use crate::contenders::{Contender, MTU};
use crate::Timing;
use serde_json::{json, Value};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tunpipe::{Engine, TunDevice};
use tunpipe_testkit::netns::{iperf3_across, iperf3_installed, tun_in_other_netns, NetnsRunner};
use tunpipe_testkit::proc::{thread_cpu, ThreadCpu};
use tunpipe_testkit::report::print_table;
use tunpipe_testkit::tun::tun;
use tunpipe_testkit::{bridge, config};

/// Runs iperf3 across the bridge to `server`; returns its JSON report.
fn iperf(ns: &NetnsRunner, server: &str, secs: u32) -> Result<Value, String> {
    let report = iperf3_across(ns, server, secs)?;
    serde_json::from_str(&report).map_err(|e| e.to_string())
}

/// The bridge with offload: two fresh TUNs made with `IFF_VNET_HDR` (the engine reads and
/// writes them in segments), two engines with 0 workers.
fn offload_bridge(t: &Timing) -> (Result<Value, String>, ThreadCpu) {
    let made = (|| -> Result<(TunDevice, TunDevice, NetnsRunner), String> {
        let a = tunpipe_testkit::tun::tun_offload("tpboa", "10.62.0.1")?;
        let (b, ns) = tunpipe_testkit::netns::tun_offload_in_other_netns("tpbob", "10.62.0.2")?;
        Ok((TunDevice::new(a), TunDevice::new(b), ns))
    })();
    let (a, b, ns) = match made {
        Ok(made) => made,
        Err(e) => return (Err(e), ThreadCpu::default()),
    };
    let threads = Contender::Tunpipe(0).threads();
    let cpu0 = thread_cpu(threads);
    match bridge(&a, &b, &config(0)) {
        Ok((ab, ba)) => {
            let report = iperf(&ns, "10.62.0.2", t.iperf_secs);
            let cpu = thread_cpu(threads).since(&cpu0);
            let _ = ab.stop();
            let _ = ba.stop();
            (report, cpu)
        }
        Err(e) => (Err(e), ThreadCpu::default()),
    }
}

/// TCP throughput and CPU per GB across the bridge, per contender.
pub fn tcp_section(t: &Timing) -> Value {
    if !iperf3_installed() {
        println!("iperf3 not installed: tcp section not measured");
        return json!({"error": "iperf3 not installed"});
    }
    let a = match tun("tpbra", "10.60.0.1") {
        Ok(a) => Arc::new(a),
        Err(e) => return json!({"error": e}),
    };
    let (b, ns) = match tun_in_other_netns("tpbrb", "10.60.0.2") {
        Ok((b, ns)) => (Arc::new(b), ns),
        Err(e) => return json!({"error": e}),
    };
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    let mut base = None;
    let contenders = [
        Contender::GuideSync,
        Contender::Tunpipe(0),
        Contender::Tunpipe(1),
        Contender::Tunpipe(2),
    ];
    for contender in contenders {
        let cpu0 = thread_cpu(contender.threads());
        let (report, cpu) = match contender {
            Contender::Tunpipe(workers) => {
                let engines = (|| -> Result<(Engine, Engine), String> {
                    let da = TunDevice::adopt(a.as_raw_fd()).map_err(|e| e.to_string())?;
                    let db = TunDevice::adopt(b.as_raw_fd()).map_err(|e| e.to_string())?;
                    bridge(&da, &db, &config(workers))
                })();
                match engines {
                    Ok((ab, ba)) => {
                        let report = iperf(&ns, "10.60.0.2", t.iperf_secs);
                        let cpu = thread_cpu(contender.threads()).since(&cpu0);
                        let _ = ab.stop();
                        let _ = ba.stop();
                        (report, cpu)
                    }
                    Err(e) => (Err(e), ThreadCpu::default()),
                }
            }
            _ => {
                // The guide's loop, twice: one thread per direction.
                let stop = Arc::new(AtomicBool::new(false));
                let mut threads = Vec::new();
                for (from, to) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
                    let stop = stop.clone();
                    threads.push(
                        std::thread::Builder::new()
                            .name("guide-sync".into())
                            .spawn(move || {
                                let mut buf = vec![0u8; MTU + 1];
                                while !stop.load(Ordering::Relaxed) {
                                    match from.recv(&mut buf) {
                                        Ok(n) => {
                                            let _ = to.send(&buf[..n]);
                                        }
                                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                        Err(_) => break,
                                    }
                                }
                            })
                            .expect("spawn"),
                    );
                }
                let report = iperf(&ns, "10.60.0.2", t.iperf_secs);
                let cpu = thread_cpu(contender.threads()).since(&cpu0);
                stop.store(true, Ordering::Relaxed);
                // Each blocked loop needs one more packet to see its flag: ping across.
                while threads.iter().any(|t| !t.is_finished()) {
                    let _ = std::process::Command::new("ping")
                        .args(["-c", "1", "-W", "1", "10.60.0.2"])
                        .output();
                }
                for t in threads {
                    let _ = t.join();
                }
                (report, cpu)
            }
        };
        let name = match contender {
            Contender::GuideSync => "guide-sync x2".to_string(),
            c => format!("{} x2", c.name()),
        };
        record(
            &name,
            report,
            cpu,
            contender == Contender::GuideSync,
            t,
            &mut base,
            &mut rows,
            &mut cells,
        );
    }
    let (report, cpu) = offload_bridge(t);
    record(
        "tunpipe-w0 x2, offload",
        report,
        cpu,
        false,
        t,
        &mut base,
        &mut rows,
        &mut cells,
    );
    print_table(
        &format!(
            "TCP (iperf3 -t {}) across a bridge of two TUNs in two namespaces, passthrough",
            t.iperf_secs
        ),
        &["bridge", "Gb/s", "x sync", "retransmits", "CPU s per GB"],
        &rows,
    );
    Value::Array(cells)
}

/// One bridge's row and cell; `is_base`: the guide's, which the others are set against.
#[allow(clippy::too_many_arguments)]
fn record(
    name: &str,
    report: Result<Value, String>,
    cpu: ThreadCpu,
    is_base: bool,
    t: &Timing,
    base: &mut Option<f64>,
    rows: &mut Vec<Vec<String>>,
    cells: &mut Vec<Value>,
) {
    match report {
        Ok(r) => {
            let gbps = r["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0)
                / 1e9;
            let retr = r["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
            let bytes = r["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
            if is_base {
                *base = Some(gbps);
            }
            let ratio = base.map(|b| gbps / b).unwrap_or(f64::NAN);
            let cpu_per_gb = cpu.cpu_ns as f64 / 1e9 / (bytes / 1e9).max(1e-9);
            rows.push(vec![
                name.to_string(),
                format!("{gbps:.2}"),
                format!("{ratio:.2}"),
                retr.to_string(),
                format!("{cpu_per_gb:.2}"),
            ]);
            cells.push(json!({
                "contender": name,
                "gbit_per_s": gbps,
                "ratio_vs_guide_sync": ratio,
                "retransmits": retr,
                "bytes": bytes,
                "contender_cpu_s_per_gb": cpu_per_gb,
                "seconds": t.iperf_secs,
            }));
        }
        Err(e) => {
            rows.push(vec![
                name.to_string(),
                "error".into(),
                e.clone(),
                "".into(),
                "".into(),
            ]);
            cells.push(json!({"contender": name, "error": e}));
        }
    }
}
