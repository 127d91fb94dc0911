//! Real-TUN benchmark: the kernel's UDP and TCP as load, side by side in one run, against
//! the loops of the tun-rs iOS integration guide.
//!
//! Contenders, all doing the same reflecting work on the same kind of TUN:
//! - `guide-sync`: the guide's synchronous loop, one thread: `SyncDevice::recv` (blocking) →
//!   process → `send`, with the stop flag checked between packets;
//! - `guide-tokio`: the guide's Tokio loop: `Runtime::new()` (multi-thread), `block_on` of
//!   `AsyncDevice::recv().await` → process → `send().await`;
//! - `tunpipe-w0`, `-w1`, `-w2`: the engine with the stage inline, 1 worker, 2 workers.
//!
//! Sections (pass names to run only some; `quick` shortens everything for a smoke run):
//! - `floor`: the cost of the four syscalls of one round trip (UDP send, TUN read, TUN write,
//!   UDP receive), measured in batches;
//! - `matrix`: closed-loop UDP from a client socket through the TUN into each contender and
//!   back (`reflect`), windows 1/32/256, payloads 64 B and 1400 B: pps, client round-trip
//!   percentiles, CPU per packet of the contender's threads, drops;
//! - `seal`: the same with a ChaCha20-Poly1305 stage (seal into the tailroom, then open);
//! - `spin`: `reflect` at windows 1 and 32 for spin windows of 0, 10, 50 and 200 µs;
//! - `stop`: 1000 start/stop cycles of an idle engine on a TUN per worker count, and what the
//!   guide's loops do when asked to stop while idle;
//! - `idle`: CPU time and wake-ups per second of each contender with no traffic;
//! - `paced`: open-loop UDP of 64-byte payloads at 200, 2,000 and 20,000 datagrams/s,
//!   `guide-sync` against tunpipe at `Config::default()`, each in a child process: the whole
//!   process's CPU time, wake-ups and preemptions per datagram sent, median of 3 alternated
//!   rounds of 20 s;
//! - `hostile`: stop time against the stage's time per packet, stop with the host's
//!   `O_NONBLOCK` cleared, and the cost of each way to read a TUN without blocking (Linux);
//! - `tcp`: iperf3 between two network namespaces joined by a bridge (two engines, or two
//!   guide loops), Linux only.
//!
//! (The CLI's peak RSS under load is `cargo bench -p tunpipe-cli --bench rss`: it runs the
//! binary.) `--list` lists the sections.
//!
//! On Linux every section runs in a private network namespace of its own (root needed); on
//! macOS it runs on utun devices. Results: `target/bench-results/tun.json` and
//! `target/bench-results/latency-*.svg`.
//!
//! One file per section; contenders.rs has the contenders and the stage they all run,
//! plot.rs the latency plot. The closed-loop client is `tunpipe_testkit::load`.

mod contenders;
mod floor;
#[cfg(target_os = "linux")]
mod hostile;
mod idle;
mod matrix;
mod paced;
mod plot;
mod seal;
mod spin;
mod stop;
#[cfg(target_os = "linux")]
mod tcp;

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe::Config;
use tunpipe_testkit::proc::peak_rss_kib;
use tunpipe_testkit::report::{machine, record_section, say, thousands, write_results, BenchArgs};
use tunpipe_testkit::tun::{in_private_netns, privilege_problem};

/// How long each measurement runs (sections, in child modules, see the fields).
struct Timing {
    warmup: Duration,
    measure: Duration,
    stop_cycles: usize,
    idle: Duration,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    iperf_secs: u32,
    paced_warmup: Duration,
    paced_measure: Duration,
    paced_rounds: usize,
}

/// A section: what it measured, as JSON.
type Section = fn(&Timing) -> Value;

const SECTIONS: &[(&str, Section)] = &[
    ("floor", floor::floor),
    ("matrix", matrix::matrix_reflect),
    ("seal", seal::matrix_seal),
    ("spin", spin::spin_section),
    ("stop", stop::stop_section),
    ("idle", idle::idle_section),
    ("paced", paced::paced_section),
    #[cfg(target_os = "linux")]
    ("hostile", hostile::hostile_section),
    #[cfg(target_os = "linux")]
    ("tcp", tcp::tcp_section),
];

fn main() {
    // A `paced` contender, started by the section in a process of its own.
    if let Some(contender) = paced::child_contender() {
        paced::serve(contender);
        return;
    }
    let args = BenchArgs::from_env();
    if args.list {
        for (name, _) in SECTIONS {
            println!("{name}: bench");
        }
        return;
    }
    let t = Arc::new(if args.quick {
        Timing {
            warmup: Duration::from_millis(100),
            measure: Duration::from_millis(300),
            stop_cycles: 50,
            idle: Duration::from_millis(500),
            iperf_secs: 1,
            paced_warmup: Duration::from_millis(300),
            paced_measure: Duration::from_secs(2),
            paced_rounds: 1,
        }
    } else {
        Timing {
            warmup: Duration::from_millis(300),
            measure: Duration::from_millis(1500),
            stop_cycles: 1000,
            idle: Duration::from_secs(2),
            iperf_secs: 3,
            paced_warmup: Duration::from_secs(2),
            paced_measure: Duration::from_secs(20),
            paced_rounds: 3,
        }
    });
    if let Some(why) = privilege_problem() {
        println!("tun bench skipped: {why}");
        return;
    }
    let started = Instant::now();
    let mut out = serde_json::Map::new();
    out.insert("machine".into(), machine());
    for &(name, f) in SECTIONS {
        if !args.runs(name) {
            continue;
        }
        let t = t.clone();
        let section_start = Instant::now();
        // The client's thread is named: its CPU time is accounted apart.
        let result = in_private_netns("bench-client", move || f(&t));
        record_section(&mut out, name, section_start, result);
    }
    if let Some(Value::Array(cells)) = out.get("matrix").and_then(|m| m.get("cells")) {
        plot::plot(cells);
    }
    out.insert(
        "memory".into(),
        json!({
            "reserved_bytes_default_config": tunpipe::reserved_bytes(&Config::default()),
            "bench_process_peak_rss_kib": peak_rss_kib(),
        }),
    );
    say(&format!(
        "\nreserved at the default config: {} bytes; peak RSS of this bench process (VmHWM): {} KiB",
        thousands(tunpipe::reserved_bytes(&Config::default()) as f64),
        peak_rss_kib()
    ));
    out.insert(
        "bench_seconds".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    write_results(&args.results_name("tun"), &Value::Object(out));
    println!("tun bench took {:.1} s", started.elapsed().as_secs_f64());
}
