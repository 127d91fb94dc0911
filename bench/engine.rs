//! Engine-only benchmark on the in-memory device (no root, no syscalls per packet).
//!
//! `cargo bench --bench engine` measures, for `passthrough` with 0, 1 and 2 workers, 64 B and
//! 1400 B packets, latency recording on and off:
//! - packets per second through a closed loop with 256 packets in flight, driven from a thread
//!   of its own, and ns per packet;
//! - allocations per packet during the measured window (a counting global allocator);
//! - the engine's own time percentiles (read → write), and the CPU the engine threads used.
//!
//! Then 1000 start/stop cycles under load per worker count (time to stop), and the memory
//! the default config reserves. Results: `target/bench-results/engine.json`.
//!
//! Arguments: `quick` shortens every cell (a smoke run); names of sections (`throughput`,
//! `stop`, `memory`) run only those; `--list` lists them.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe::device::{PeerReceiver, PeerSender};
use tunpipe::{BuiltinStage, Config, Engine, MemoryDevice};
use tunpipe_testkit::alloc::{allocations, ignore_this_thread, Counting};
use tunpipe_testkit::packets::udp4_packet;
use tunpipe_testkit::proc::{name_current_thread, peak_rss_kib, thread_cpu, ThreadCpu};
use tunpipe_testkit::report::{
    histogram, machine, percentiles_us, print_table, say, thousands, write_results, BenchArgs,
};

#[global_allocator]
static GLOBAL: Counting = Counting;

const WINDOW: u64 = 256;

struct Timing {
    warmup: Duration,
    measure: Duration,
    cycles: usize,
}

const SECTIONS: [&str; 3] = ["throughput", "stop", "memory"];

fn main() {
    // The control thread's bookkeeping is not part of the hot path.
    ignore_this_thread();
    let args = BenchArgs::from_env();
    if args.list {
        for name in SECTIONS {
            println!("{name}: bench");
        }
        return;
    }
    let timing = if args.quick {
        Timing {
            warmup: Duration::from_millis(50),
            measure: Duration::from_millis(200),
            cycles: 50,
        }
    } else {
        Timing {
            warmup: Duration::from_millis(300),
            measure: Duration::from_millis(1500),
            cycles: 1000,
        }
    };
    let started = Instant::now();
    let mut out = serde_json::Map::new();
    out.insert("machine".into(), machine());
    if args.runs("throughput") {
        out.insert("throughput".into(), throughput(&timing));
    }
    if args.runs("stop") {
        out.insert("stop_under_load".into(), stop_under_load(&timing));
    }
    if args.runs("memory") {
        out.insert("memory".into(), memory());
    }
    out.insert(
        "bench_seconds".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    write_results(&args.results_name("engine"), &Value::Object(out));
    println!("engine bench took {:.1} s", started.elapsed().as_secs_f64());
}

/// Packets of `size` bytes (IPv4 + UDP + payload) on four flows, so two workers both get work.
fn packets(size: usize) -> Vec<Vec<u8>> {
    (0..4)
        .map(|i| {
            udp4_packet(
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                1000 + i,
                7,
                &vec![0; size - 28],
            )
        })
        .collect()
}

/// The closed-loop driver: keeps up to `WINDOW` packets in flight until told to stop, and
/// publishes how many came back. It allocates nothing in its loop.
fn drive(
    mut tx: PeerSender,
    mut rx: PeerReceiver,
    packets: Vec<Vec<u8>>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (PeerSender, PeerReceiver) {
    name_current_thread("bench-driver");
    let (mut sent, mut got) = (0u64, 0u64);
    let mut idle = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let before = got;
        while sent - got < WINDOW && tx.send(&packets[(sent & 3) as usize]).is_ok() {
            sent += 1;
        }
        while rx.recv_with(|_| ()).is_some() {
            got += 1;
        }
        if got != before {
            received.store(got, Ordering::Relaxed);
            idle = 0;
        } else {
            idle += 1;
            if idle > 64 {
                // Share the two cores with the engine when it is behind.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
    (tx, rx)
}

/// Engine threads by role (thread names are cut to 15 bytes by the kernel).
const ACTORS: [&str; 3] = ["tunpipe-reader", "tunpipe-worker", "tunpipe-writer"];

fn per_actor() -> Vec<ThreadCpu> {
    ACTORS.iter().map(|a| thread_cpu(&[a])).collect()
}

/// The name of a spin policy (`Config::yield_while_spinning`).
fn spin_policy(yield_while_spinning: bool) -> &'static str {
    if yield_while_spinning {
        "yield while spinning"
    } else {
        "busy spin"
    }
}

fn throughput(t: &Timing) -> Value {
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    // (bytes, latency recording, workers, `Config::yield_while_spinning` flipped)
    let mut variants = Vec::new();
    for size in [64usize, 1400] {
        for latency in [false, true] {
            for workers in [0usize, 1, 2] {
                variants.push((size, latency, workers, false));
            }
        }
    }
    for workers in [0usize, 1, 2] {
        variants.push((64, true, workers, true));
    }
    for (size, latency, workers, other_spin) in variants {
        let (dev, tx, rx) = MemoryDevice::new(1024, 2048);
        let mut config = Config::default();
        config.workers = workers;
        config.latency = latency;
        if other_spin {
            config.yield_while_spinning = !config.yield_while_spinning;
        }
        let yield_while_spinning = config.yield_while_spinning;
        let engine = Engine::builder()
            .config(config)
            .stage(BuiltinStage::Passthrough)
            .start(&dev)
            .expect("engine starts");
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let driver = {
            let (received, stop, packets) = (received.clone(), stop.clone(), packets(size));
            std::thread::spawn(move || drive(tx, rx, packets, received, stop))
        };
        // Packets back, allocations, engine CPU and the time, at both ends of the window.
        let snapshot = || {
            (
                received.load(Ordering::Relaxed),
                allocations(),
                per_actor(),
                Instant::now(),
            )
        };
        std::thread::sleep(t.warmup);
        let (r0, a0, c0, i0) = snapshot();
        std::thread::sleep(t.measure);
        let (r1, a1, c1, i1) = snapshot();
        stop.store(true, Ordering::Relaxed);
        let _peer = driver.join().expect("driver");
        let lat = engine.latency().ok();
        engine.stop().expect("engine stops");
        let stats = engine.stats();
        let packets = r1 - r0;
        let secs = (i1 - i0).as_secs_f64();
        let pps = packets as f64 / secs;
        let allocs = a1 - a0;
        let actors: Vec<(&str, ThreadCpu)> = ACTORS
            .iter()
            .zip(c1.iter().zip(&c0))
            .map(|(name, (b, a))| (*name, b.since(a)))
            .collect();
        let cpu = actors
            .iter()
            .fold(ThreadCpu::default(), |total, (_, c)| total.plus(c));
        let by_actor: serde_json::Map<String, Value> = actors
            .iter()
            .map(|(name, c)| {
                (
                    name.to_string(),
                    json!({
                        "cpu_ns_per_packet": c.cpu_ns as f64 / packets.max(1) as f64,
                        "sleeps_per_s": c.voluntary as f64 / secs,
                        "preempted_per_s": c.involuntary as f64 / secs,
                    }),
                )
            })
            .collect();
        let engine_pct = lat.map(|l| l.engine.percentiles());
        let cell = json!({
            "stage": "passthrough",
            "size": size,
            "workers": workers,
            "latency": latency,
            "yield_while_spinning": yield_while_spinning,
            "window": WINDOW,
            "packets": packets,
            "seconds": secs,
            "pps": pps,
            "ns_per_packet": 1e9 / pps,
            "allocations": allocs,
            "allocations_per_packet": allocs as f64 / packets.max(1) as f64,
            "engine_cpu_ns_per_packet": cpu.cpu_ns as f64 / packets.max(1) as f64,
            "engine_wakeups_per_s": cpu.voluntary as f64 / secs,
            "by_actor": by_actor,
            "engine_time_ns": engine_pct.map(|p| json!({
                "count": p.count, "p50": p.p50, "p90": p.p90, "p99": p.p99,
                "p999": p.p999, "max": p.max,
            })),
            "dropped": stats.dropped() - stats.drop_stopped,
            "drop_stopped": stats.drop_stopped,
            "drop_ring_full": stats.drop_ring_full,
        });
        rows.push(vec![
            size.to_string(),
            if other_spin {
                format!("{workers}, {}", spin_policy(yield_while_spinning))
            } else {
                workers.to_string()
            },
            if latency { "on" } else { "off" }.to_string(),
            format!("{:.2}", pps / 1e6),
            format!("{:.0}", 1e9 / pps),
            format!("{:.0}", cpu.cpu_ns as f64 / packets.max(1) as f64),
            format!("{}", allocs),
            engine_pct
                .filter(|p| p.count > 0)
                .map(|p| {
                    format!(
                        "{:.1} / {:.1} / {:.1}",
                        p.p50 as f64 / 1e3,
                        p.p99 as f64 / 1e3,
                        p.p999 as f64 / 1e3
                    )
                })
                .unwrap_or_else(|| "-".into()),
            thousands((stats.dropped() - stats.drop_stopped) as f64),
        ]);
        cells.push(cell);
    }
    print_table(
        &format!("Engine only: passthrough, in-memory device, closed loop, window {WINDOW}"),
        &[
            "bytes",
            "workers",
            "latency rec.",
            "Mpps",
            "ns/packet",
            "engine CPU ns/pkt",
            "allocs (window)",
            "engine time p50/p99/p99.9 µs",
            "drops (not stopped)",
        ],
        &rows,
    );
    say(&format!(
        "\nThe default spin policy: {}. Rows that name the other one set \
         `Config::yield_while_spinning` the other way.",
        spin_policy(Config::default().yield_while_spinning)
    ));
    Value::Array(cells)
}

/// Stop time under load: the driver keeps offering packets (open loop, as fast as the device
/// takes them) while engines start, carry traffic, and are stopped, `cycles` times per
/// worker count.
fn stop_under_load(t: &Timing) -> Value {
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    for workers in [0usize, 1, 2] {
        let (dev, tx, rx) = MemoryDevice::new(1024, 2048);
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let driver = {
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::spawn(move || open_loop(tx, rx, packets(64), received, stop))
        };
        let mut h = histogram();
        let mut config = Config::default();
        config.workers = workers;
        let mut in_flight_at_stop = 0u64;
        for _ in 0..t.cycles {
            let engine = Engine::builder()
                .config(config.clone())
                .stage(BuiltinStage::Passthrough)
                .start(&dev)
                .expect("engine starts");
            // Under load: wait until this engine has carried a few thousand packets.
            let deadline = Instant::now() + Duration::from_millis(200);
            while engine.stats().tx_packets < 2000 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            let t0 = Instant::now();
            engine.stop().expect("engine stops");
            h.record(t0.elapsed().as_nanos() as u64).ok();
            in_flight_at_stop += engine.stats().drop_stopped;
        }
        stop.store(true, Ordering::Relaxed);
        let _ = driver.join();
        let pct = percentiles_us(&h);
        rows.push(vec![
            workers.to_string(),
            h.len().to_string(),
            format!("{}", pct["p50_us"]),
            format!("{}", pct["p99_us"]),
            format!("{}", pct["max_us"]),
            format!("{:.1}", in_flight_at_stop as f64 / h.len().max(1) as f64),
        ]);
        cells.push(json!({
            "workers": workers,
            "device": "memory",
            "cycles": h.len(),
            "stop": pct,
            "packets_in_flight_at_stop_mean": in_flight_at_stop as f64 / h.len().max(1) as f64,
        }));
    }
    print_table(
        "Stop under load (in-memory device, open-loop load, passthrough)",
        &[
            "workers",
            "cycles",
            "stop p50 µs",
            "p99 µs",
            "max µs",
            "in flight at stop",
        ],
        &rows,
    );
    Value::Array(cells)
}

/// Offers packets as fast as the device accepts them and takes every packet back, across
/// engine restarts on the same device.
fn open_loop(
    mut tx: PeerSender,
    mut rx: PeerReceiver,
    packets: Vec<Vec<u8>>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    name_current_thread("bench-driver");
    let (mut sent, mut got) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let mut progress = false;
        while tx.send(&packets[(sent & 3) as usize]).is_ok() {
            sent += 1;
            progress = true;
        }
        while rx.recv_with(|_| ()).is_some() {
            got += 1;
            progress = true;
        }
        received.store(got, Ordering::Relaxed);
        if !progress {
            std::thread::yield_now();
        }
    }
}

fn memory() -> Value {
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    for workers in [0usize, 1, 2] {
        let mut c = Config::default();
        c.workers = workers;
        let bytes = tunpipe::reserved_bytes(&c);
        rows.push(vec![
            workers.to_string(),
            c.pool_size().to_string(),
            c.buffer_size().to_string(),
            thousands(bytes as f64),
            format!("{:.2}", bytes as f64 / (1024.0 * 1024.0)),
        ]);
        cells.push(json!({
            "workers": workers,
            "default_config": workers == 0,
            "pool_buffers": c.pool_size(),
            "buffer_bytes": c.buffer_size(),
            "reserved_bytes": bytes,
        }));
    }
    print_table(
        "Memory reserved (Config::default(), workers varied)",
        &[
            "workers",
            "buffers",
            "bytes/buffer",
            "reserved bytes",
            "MiB",
        ],
        &rows,
    );
    let hwm = peak_rss_kib();
    say(&format!(
        "\npeak RSS of this bench process (VmHWM): {hwm} KiB"
    ));
    json!({"reserved": cells, "bench_process_peak_rss_kib": hwm})
}
