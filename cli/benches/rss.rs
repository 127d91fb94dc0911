//! Peak RSS of the CLI (`tunpipe run`, reflect) under closed-loop load: 256 packets of 1400 B
//! in flight, with 0 and 2 workers. It runs the binary, so it lives with it.
//!
//! `cargo bench -p tunpipe-cli --bench rss` (root on Linux: it runs in a private network
//! namespace; `quick` shortens the measurement, `--list` lists the one section). Results:
//! `target/bench-results/cli-rss.json`. The load client is the one the TUN bench uses
//! (`tunpipe_testkit::load`).

#[cfg(target_os = "linux")]
mod linux {
    use serde_json::{json, Value};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};
    use tunpipe_testkit::check::eventually_within;
    use tunpipe_testkit::load::{client_socket, closed_loop, LOCAL};
    use tunpipe_testkit::proc::peak_rss_kib_of;
    use tunpipe_testkit::report::{machine, print_table, thousands, write_results, BenchArgs};
    use tunpipe_testkit::tun::{in_private_netns, privilege_problem};

    pub fn main() {
        let args = BenchArgs::from_env();
        if args.list {
            println!("cli: bench");
            return;
        }
        let (warmup, measure) = if args.quick {
            (Duration::from_millis(100), Duration::from_millis(300))
        } else {
            (Duration::from_millis(300), Duration::from_millis(1500))
        };
        if let Some(why) = privilege_problem() {
            println!("rss bench skipped: {why}");
            return;
        }
        let started = Instant::now();
        let cli = in_private_netns("bench-client", move || cli_rss(warmup, measure))
            .unwrap_or_else(|e| json!({"error": e}));
        let out = json!({
            "machine": machine(),
            "cli": cli,
            "bench_seconds": started.elapsed().as_secs_f64(),
        });
        write_results(&args.results_name("cli-rss"), &out);
    }

    /// Starts `tunpipe run` with `workers` on a TUN at [`LOCAL`].
    fn tunpipe_run(workers: usize) -> std::io::Result<Child> {
        Command::new(env!("CARGO_BIN_EXE_tunpipe"))
            .args(["run", "--name", "tpcli", "--ipv4", &format!("{LOCAL}/24")])
            .args(["--workers", &workers.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }

    /// The CLI's peak RSS and packet rate under load, per worker count.
    fn cli_rss(warmup: Duration, measure: Duration) -> Value {
        let mut rows = Vec::new();
        let mut cells = Vec::new();
        for workers in [0usize, 2] {
            let mut child = match tunpipe_run(workers) {
                Ok(c) => c,
                Err(e) => return json!({"error": e.to_string()}),
            };
            let mut socket = None;
            eventually_within(Duration::from_secs(5), || {
                socket = client_socket().ok();
                socket.is_some()
            });
            let Some(socket) = socket else {
                let _ = child.kill();
                let _ = child.wait();
                return json!({"error": "the CLI's TUN never came up"});
            };
            let result = closed_loop(&socket, 256, 1400, warmup, measure, &mut || {});
            let hwm = peak_rss_kib_of(child.id());
            // SAFETY: kill takes a pid and a signal number; the child is ours and not yet
            // reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
            let _ = child.wait();
            let pps = result.pps();
            rows.push(vec![
                workers.to_string(),
                thousands(pps),
                format!("{hwm}"),
                format!("{:.1}", hwm as f64 / 1024.0),
            ]);
            cells.push(json!({"workers": workers, "pps": pps, "peak_rss_kib": hwm}));
        }
        print_table(
            "Peak RSS of the CLI (tunpipe run, reflect) under load: window 256, 1400 B",
            &["workers", "pps", "VmHWM KiB", "MiB"],
            &rows,
        );
        Value::Array(cells)
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    println!("rss bench: Linux only (it runs the CLI in a private network namespace)");
}
