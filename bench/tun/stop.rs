//! The `stop` section: how long `stop()` takes on a real TUN, idle and under load, and what
//! the guide's loops do when asked to stop while idle.

use crate::contenders::{start, Contender, Work};
use crate::Timing;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe::{Engine, TunDevice};
use tunpipe_testkit::check::eventually_within;
use tunpipe_testkit::config;
use tunpipe_testkit::load::{client_socket, flood, LOCAL, PEER, PORT};
use tunpipe_testkit::report::{histogram, percentiles_us, print_table};
use tunpipe_testkit::tun::tun;

/// Stop times of idle engines, engines under load, and the guide's loops.
pub fn stop_section(t: &Timing) -> Value {
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    let device = TunDevice::new(tun("tpstop", LOCAL).expect("tun"));
    for workers in [0usize, 1, 2] {
        // Idle: every actor past its spin window and asleep.
        let (h, _) = timed_stops(&device, workers, t.stop_cycles, |_| {
            std::thread::sleep(Duration::from_millis(1))
        });
        let p = percentiles_us(&h);
        rows.push(row(
            format!("tunpipe-w{workers}"),
            &h,
            &p,
            "returns at once, threads joined".into(),
        ));
        cells.push(
            json!({"contender": format!("tunpipe-w{workers}"), "cycles": h.len(), "stop": p}),
        );
    }
    // Under load: a flooder offers UDP (bursts of 32 every 100 µs, open loop) while engines
    // start on the same TUN, carry traffic, and stop.
    let flood_stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = flood_stop.clone();
        let socket = client_socket().expect("socket");
        socket.set_nonblocking(true).expect("nonblocking");
        std::thread::Builder::new()
            .name("bench-flood".into())
            .spawn(move || flood(&socket, &stop, 32, &[0u8; 64], Duration::from_micros(100)))
            .expect("spawn")
    };
    for workers in [0usize, 1, 2] {
        let cycles = (t.stop_cycles / 5).max(10);
        let (h, in_flight) = timed_stops(&device, workers, cycles, |engine| {
            let deadline = Instant::now() + Duration::from_millis(100);
            while engine.stats().tx_packets < 200 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let p = percentiles_us(&h);
        let behaviour = format!(
            "{:.1} packets in flight dropped as \"stopped\" per stop",
            in_flight as f64 / h.len().max(1) as f64
        );
        rows.push(row(
            format!("tunpipe-w{workers}, under load"),
            &h,
            &p,
            behaviour,
        ));
        cells.push(json!({
            "contender": format!("tunpipe-w{workers}"),
            "under_load": true,
            "cycles": h.len(),
            "stop": p,
        }));
    }
    flood_stop.store(true, Ordering::Relaxed);
    let _ = flooder.join();
    drop(device);
    // The guide's loops check their flag between packets: when idle, they stop only when the
    // next packet arrives.
    for contender in [Contender::GuideSync, Contender::GuideTokio] {
        let running = start(contender, Work::Reflect, "tpstop").expect("start");
        std::thread::sleep(Duration::from_millis(100));
        let (flag, handle) = running.guide.as_ref().expect("guide");
        flag.store(true, Ordering::Relaxed);
        let wait = Duration::from_secs(1);
        std::thread::sleep(wait);
        let stopped_alone = handle.is_finished();
        let waker = UdpSocket::bind((LOCAL, 0)).expect("socket");
        let t0 = Instant::now();
        waker.send_to(&[0u8; 8], (PEER, PORT)).expect("send");
        let finished = eventually_within(Duration::from_secs(5), || handle.is_finished());
        let exited_at = running.stop().loop_stats.and_then(|s| s.exited_at);
        let after_packet = exited_at.map_or(Duration::MAX, |at| at.saturating_duration_since(t0));
        let what = if stopped_alone {
            "stopped by itself".to_string()
        } else if finished {
            format!(
                "still blocked {} s after the stop request; stopped {:.0} µs after the next packet",
                wait.as_secs(),
                after_packet.as_secs_f64() * 1e6
            )
        } else {
            "did not stop even after a packet".to_string()
        };
        rows.push(vec![
            contender.name(),
            "1".into(),
            "unbounded".into(),
            "unbounded".into(),
            "unbounded".into(),
            what.clone(),
        ]);
        cells.push(json!({
            "contender": contender.name(),
            "stopped_within_1s_idle": stopped_alone,
            "stop_after_next_packet_us": after_packet.as_secs_f64() * 1e6,
            "behaviour": what,
        }));
    }
    print_table(
        "Stop on a real TUN, idle and under load (time for stop() to return)",
        &[
            "contender",
            "cycles",
            "p50 µs",
            "p99 µs",
            "max µs",
            "behaviour",
        ],
        &rows,
    );
    Value::Array(cells)
}

/// Starts an engine with `workers` on `device` `cycles` times, lets `settle` run, and times
/// each `stop()`. Returns the stop times (ns) and the packets dropped as still in flight.
fn timed_stops(
    device: &TunDevice,
    workers: usize,
    cycles: usize,
    settle: impl Fn(&Engine),
) -> (Histogram<u64>, u64) {
    let mut h = histogram();
    let mut in_flight = 0;
    for _ in 0..cycles {
        let engine = Engine::builder()
            .config(config(workers))
            .start(device)
            .expect("engine");
        settle(&engine);
        let t0 = Instant::now();
        engine.stop().expect("stop");
        h.record(t0.elapsed().as_nanos() as u64).ok();
        in_flight += engine.stats().drop_stopped;
    }
    (h, in_flight)
}

/// A row of the table: who stopped, how often, the stop times (µs), and what happened.
fn row(who: String, h: &Histogram<u64>, p: &Value, behaviour: String) -> Vec<String> {
    vec![
        who,
        h.len().to_string(),
        p["p50_us"].to_string(),
        p["p99_us"].to_string(),
        p["max_us"].to_string(),
        behaviour,
    ]
}
