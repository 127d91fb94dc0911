//! The `idle` section: CPU time and wake-ups of each contender with no traffic.

use crate::contenders::{start, Work};
use crate::matrix::ALL;
use crate::Timing;
use serde_json::{json, Value};
use std::time::Duration;
use tunpipe_testkit::load::client_socket;
use tunpipe_testkit::proc::thread_cpu;
use tunpipe_testkit::report::print_table;

/// CPU time and wake-ups per second of each contender over `t.idle` with no traffic.
pub fn idle_section(t: &Timing) -> Value {
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    for contender in ALL {
        let running = start(contender, Work::Reflect, "tpidle").expect("start");
        // A little traffic first, so every thread has run and gone idle since.
        let socket = client_socket().expect("socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        for _ in 0..20 {
            let _ = socket.send(&[0u8; 16]);
            let _ = socket.recv(&mut buf);
        }
        std::thread::sleep(Duration::from_millis(300));
        let a = thread_cpu(contender.threads());
        std::thread::sleep(t.idle);
        let b = thread_cpu(contender.threads()).since(&a);
        let wakeups = (b.voluntary + b.involuntary) as f64 / t.idle.as_secs_f64();
        let _ = running.stop();
        rows.push(vec![
            contender.name(),
            b.threads.to_string(),
            format!("{:.1}", b.cpu_ns as f64 / 1e3),
            format!("{wakeups:.1}"),
        ]);
        cells.push(json!({
            "contender": contender.name(),
            "threads": b.threads,
            "seconds": t.idle.as_secs_f64(),
            "cpu_us": b.cpu_ns as f64 / 1e3,
            "context_switches": b.voluntary + b.involuntary,
            "wakeups_per_s": wakeups,
        }));
    }
    print_table(
        &format!(
            "Idle: no traffic for {:.1} s after a short burst",
            t.idle.as_secs_f64()
        ),
        &["contender", "threads", "CPU µs", "wake-ups/s"],
        &rows,
    );
    Value::Array(cells)
}
