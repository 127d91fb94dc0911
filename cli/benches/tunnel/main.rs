//! Through a WireGuard tunnel: this namespace's end against wireguard-go in another, behind a
//! veth (the rig of `tunpipe_testkit::wgpeer`, the one the tests use). The ends, in one run,
//! alternated round by round:
//!
//! - `tunpipe`: `tunpipe wg --config FILE --name IFNAME` and no other flag (what users get);
//!   `tunpipe-w1`, `tunpipe-w2`: with `--workers 1` and `2`;
//! - `boringtun-t1`, `boringtun-t2`: boringtun-cli 0.7.1 with `--threads 1` and `2`, its TUN
//!   set to MTU 1420;
//! - `wireguard-go`: wireguard-go as the client too.
//!
//! Sections: `throughput` (TCP with iperf3 both ways, and UDP of 100-byte payloads both ways,
//! 3 rounds of 4 s each; per round, each tunpipe figure over the round's best of
//! boringtun-cli and wireguard-go; CPU of each side, TCP retransmits, peak RSS, the time from
//! SIGINT or SIGTERM to exit), `idle` (voluntary context switches of every thread of `tunpipe
//! wg` in the 60 s after its last packet), and `stop` (the library's stop, timed, 100 times
//! with the tunnel idle and 100 times with a handshake pending). Under attack (attack.rs):
//! `flood` (ping and TCP through a two-peer tunnel while 100,000 initiation-shaped datagrams a
//! second arrive, with a bad and with a valid mac1; tunpipe and wireguard-go) and `peers`
//! (ping's round trip with 1 peer and with 10,000). Energy (energy.rs): `paced` (CPU and
//! wake-ups per datagram of paced UDP at 1 and 10 Mbit/s each way, against boringtun-cli
//! with one thread and wireguard-go). Control plane (live.rs): `live` (ping and TCP while
//! `wg set` and `wg setconf` change the running end; tunpipe and wireguard-go).
//! `TUNPIPE_BENCH_PEERS=N` gives `throughput` N peers in all (the others idle).
//!
//! `cargo bench -p tunpipe-cli --bench tunnel [quick] [SECTION...]` as root on Linux with
//! wireguard-go, wireguard-tools, iperf3 and boringtun-cli (`cargo install boringtun-cli
//! --version 0.7.1 --locked`; or `TUNPIPE_BORINGTUN=/path`). Results:
//! `target/bench-results/tunnel.json` and `tunnel.md`.

#[cfg(target_os = "linux")]
mod attack;
#[cfg(target_os = "linux")]
mod energy;
#[cfg(target_os = "linux")]
mod live;

#[cfg(target_os = "linux")]
mod linux {
    use super::{attack, energy, live};
    use serde_json::{json, Value};
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};
    use tunpipe_testkit::netns::{interface_exists, iperf3_result, iperf3_with, Ipv6};
    use tunpipe_testkit::proc::{peak_rss_kib_of, process_cpu, ThreadCpu};
    use tunpipe_testkit::report::{
        machine, percentiles_us, print_table, record_section, say, write_results, BenchArgs,
    };
    use tunpipe_testkit::running::Running;
    use tunpipe_testkit::wgpeer::{
        configure_uapi_end, start_uapi_daemon, stop_uapi_daemon, unique_ifname,
        wireguard_go_problem, PeerOptions, TunnelEnd, WgRig, END_V4, PEER_PORT, PEER_UNDERLAY,
        PEER_V4,
    };

    const BIN: &str = env!("CARGO_BIN_EXE_tunpipe");

    /// UDP payload of the small-packet test: a 128-byte IPv4 packet inside the tunnel.
    const SMALL: usize = 100;

    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(crate) enum Contender {
        /// `tunpipe wg`, with `--workers N` if given.
        Tunpipe(Option<usize>),
        /// Another build of `tunpipe wg` (`TUNPIPE_BENCH_ALT=/path/to/tunpipe`), with its
        /// defaults: an A/B comparison in the same run.
        TunpipeAlt,
        Boringtun(usize),
        WireguardGo,
    }

    const CONTENDERS: [Contender; 6] = [
        Contender::Tunpipe(None),
        Contender::Tunpipe(Some(1)),
        Contender::Tunpipe(Some(2)),
        Contender::Boringtun(1),
        Contender::Boringtun(2),
        Contender::WireguardGo,
    ];

    impl Contender {
        pub(crate) fn name(self) -> String {
            match self {
                Contender::Tunpipe(None) => "tunpipe".into(),
                Contender::Tunpipe(Some(n)) => format!("tunpipe-w{n}"),
                Contender::TunpipeAlt => "tunpipe-alt".into(),
                Contender::Boringtun(n) => format!("boringtun-t{n}"),
                Contender::WireguardGo => "wireguard-go".into(),
            }
        }

        /// The others, against whose best a tunpipe figure is set.
        pub(crate) fn is_anchor(self) -> bool {
            !matches!(self, Contender::Tunpipe(_) | Contender::TunpipeAlt)
        }
    }

    /// A running end under test.
    pub(crate) enum End {
        /// `tunpipe wg`, and its interface's name.
        Cli(Running, String),
        Daemon(Child, String),
    }

    fn boringtun() -> String {
        std::env::var("TUNPIPE_BORINGTUN").unwrap_or_else(|_| "boringtun-cli".into())
    }

    /// Starts end `c` (the `n`th of the run): tunpipe from the wg-quick file `config`, a
    /// daemon from the rig with `other_peers` (`[Peer]` sections, those of `config`) before
    /// the rig's peer.
    pub(crate) fn start(
        c: Contender,
        rig: &WgRig,
        config: &str,
        other_peers: &str,
        n: usize,
    ) -> Result<End, String> {
        match c {
            Contender::Tunpipe(_) | Contender::TunpipeAlt => {
                let name = format!("tpb{n}");
                let (bin, workers) = match c {
                    Contender::Tunpipe(workers) => (BIN.to_string(), workers),
                    _ => (std::env::var("TUNPIPE_BENCH_ALT").unwrap_or_default(), None),
                };
                let mut command = Command::new(bin);
                command.args(["wg", "--config", config, "--name", &name]);
                if let Some(w) = workers {
                    command.args(["--workers", &w.to_string()]);
                }
                Running::start(&mut command, "stop with Ctrl-C")
                    .map(|running| End::Cli(running, name))
                    .map_err(|e| format!("{e:?}"))
            }
            Contender::Boringtun(threads) => {
                let ifname = unique_ifname("tpc");
                let bt = boringtun();
                let threads = threads.to_string();
                let argv = [
                    bt.as_str(),
                    "-f",
                    "--disable-drop-privileges",
                    "--threads",
                    &threads,
                    "-v",
                    "error",
                ];
                let child = start_uapi_daemon(None, &argv, &ifname)?;
                configure_uapi_end(rig, &ifname, other_peers)?;
                Ok(End::Daemon(child, ifname))
            }
            Contender::WireguardGo => {
                let ifname = unique_ifname("tpc");
                let child = start_uapi_daemon(None, &["wireguard-go", "-f"], &ifname)?;
                configure_uapi_end(rig, &ifname, other_peers)?;
                Ok(End::Daemon(child, ifname))
            }
        }
    }

    impl End {
        pub(crate) fn pid(&self) -> u32 {
            match self {
                End::Cli(r, _) => r.pid(),
                End::Daemon(child, _) => child.id(),
            }
        }

        /// The interface's name (and its configuration socket's).
        pub(crate) fn ifname(&self) -> &str {
            match self {
                End::Cli(_, name) | End::Daemon(_, name) => name,
            }
        }

        /// Stops the end; the time from the signal to its exit.
        pub(crate) fn stop(self) -> Result<Duration, String> {
            match self {
                End::Cli(running, _) => {
                    let ended = running.interrupt().map_err(|e| format!("{e:?}"))?;
                    if !ended.status.success() {
                        return Err(format!("tunpipe wg: {}\n{}", ended.status, ended.stderr));
                    }
                    Ok(ended.exit_after)
                }
                End::Daemon(mut child, ifname) => {
                    let at = Instant::now();
                    stop_uapi_daemon(&mut child, &ifname);
                    Ok(at.elapsed())
                }
            }
        }
    }

    /// One measurement: a kind of traffic in one direction.
    #[derive(Clone, Copy)]
    struct Test {
        name: &'static str,
        flags: &'static [&'static str],
        udp: bool,
    }

    const TESTS: [Test; 4] = [
        Test {
            name: "TCP A→B",
            flags: &[],
            udp: false,
        },
        Test {
            name: "TCP B→A",
            flags: &["-R"],
            udp: false,
        },
        Test {
            name: "UDP 100 B A→B",
            flags: &["-u", "-l", "100", "-b", "0"],
            udp: true,
        },
        Test {
            name: "UDP 100 B B→A",
            flags: &["-u", "-l", "100", "-b", "0", "-R"],
            udp: true,
        },
    ];

    /// What one test of one contender in one round measured.
    #[derive(Clone, Debug)]
    struct Cell {
        /// Mb/s (TCP) or packets per second received (UDP).
        rate: f64,
        retransmits: u64,
        lost_percent: f64,
        /// CPU of the end under test and of the peer, in cores (CPU seconds per second).
        end_cpu: f64,
        peer_cpu: f64,
    }

    fn measure(rig: &WgRig, pid: u32, test: Test, secs: u32) -> Result<Cell, String> {
        let cores = |a: ThreadCpu, b: ThreadCpu, wall: Duration| {
            b.since(&a).cpu_ns as f64 / wall.as_nanos() as f64
        };
        let (end0, peer0, at) = (
            process_cpu(pid),
            process_cpu(rig.peer_pid()),
            Instant::now(),
        );
        let report = iperf3_with(&rig.peer, PEER_V4, secs, test.flags)?;
        let wall = at.elapsed();
        let (end1, peer1) = (process_cpu(pid), process_cpu(rig.peer_pid()));
        let json: Value = serde_json::from_str(&report).map_err(|e| e.to_string())?;
        let moved = iperf3_result(&report)?;
        let rate = if test.udp {
            moved.bytes as f64 / SMALL as f64 / f64::from(secs)
        } else {
            moved.bits_per_second / 1e6
        };
        Ok(Cell {
            rate,
            retransmits: moved.retransmits,
            lost_percent: json["end"]["sum_received"]["lost_percent"]
                .as_f64()
                .unwrap_or(0.0),
            end_cpu: cores(end0, end1, wall),
            peer_cpu: cores(peer0, peer1, wall),
        })
    }

    pub(crate) fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    }

    /// A wg-quick file for the end under test, in the temp directory.
    pub(crate) fn config_file(
        rig: &WgRig,
        name: &str,
        text: Option<String>,
    ) -> Result<String, String> {
        let path =
            std::env::temp_dir().join(format!("tunpipe-bench-{}-{name}.conf", std::process::id()));
        std::fs::write(&path, text.unwrap_or_else(|| rig.config_text()))
            .map_err(|e| e.to_string())?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// Whether contender `c` runs: all do, unless `TUNPIPE_BENCH_ENDS` names some
    /// (comma-separated), for experiments.
    pub(crate) fn wanted(c: Contender) -> bool {
        let wanted = std::env::var("TUNPIPE_BENCH_ENDS").unwrap_or_default();
        wanted.is_empty() || wanted.split(',').any(|w| w == c.name())
    }

    /// The contenders of `throughput`.
    fn contenders() -> Vec<Contender> {
        let alt = std::env::var_os("TUNPIPE_BENCH_ALT").map(|_| Contender::TunpipeAlt);
        CONTENDERS
            .into_iter()
            .chain(alt)
            .filter(|&c| wanted(c))
            .collect()
    }

    fn throughput(secs: u32, rounds: usize) -> Result<Value, String> {
        let contenders = contenders();
        // `TUNPIPE_BENCH_PEERS=N`: N peers configured in all, the others idle and before the
        // measured one (the per-packet path with many peers).
        let peers: usize = std::env::var("TUNPIPE_BENCH_PEERS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let others = attack::many_peers(peers.saturating_sub(1));
        let mut rig = WgRig::up(&PeerOptions::default())?;
        // cells[contender][test][round]
        let mut cells = vec![vec![Vec::<Cell>::new(); TESTS.len()]; contenders.len()];
        let mut rss = vec![Vec::new(); contenders.len()];
        let mut stops = vec![Vec::new(); contenders.len()];
        let mut n = 0;
        for round in 0..rounds {
            for k in 0..contenders.len() {
                // Alternate: each round starts with a different contender.
                let ci = (k + round) % contenders.len();
                let c = contenders[ci];
                n += 1;
                // A fresh key for each end: the peer keeps the newest handshake timestamp
                // it saw per key, and boringtun's TAI64N clock runs ahead of wireguard-go's,
                // so a wireguard-go end after a boringtun-based one would be refused as a
                // replay for a while.
                rig.rekey_end()?;
                let config = config_file(&rig, "throughput", Some(rig.config_text_with(&others)))?;
                let end = start(c, &rig, &config, &others, n);
                // Read at start: the key need not stay on disk.
                let _ = std::fs::remove_file(&config);
                let end = end?;
                rig.ping_all_from_end(PEER_V4, 3)
                    .map_err(|e| format!("{}: {e}", c.name()))?;
                for (ti, test) in TESTS.iter().enumerate() {
                    let cell = measure(&rig, end.pid(), *test, secs)
                        .map_err(|e| format!("{} {}: {e}", c.name(), test.name))?;
                    println!(
                        "round {round} {:>13} {:>14}: {:>9.0} {}  cpu {:.2}+{:.2}",
                        c.name(),
                        test.name,
                        cell.rate,
                        if test.udp { "pps" } else { "Mb/s" },
                        cell.end_cpu,
                        cell.peer_cpu
                    );
                    cells[ci][ti].push(cell);
                }
                rss[ci].push(peak_rss_kib_of(end.pid()));
                stops[ci].push(end.stop()?.as_secs_f64() * 1e3);
            }
        }

        // Per round and test, each contender over the round's best anchor; then the median.
        let ratio = |ci: usize, ti: usize| {
            median(
                (0..rounds)
                    .map(|r| {
                        let best = contenders
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| c.is_anchor())
                            .map(|(a, _)| cells[a][ti][r].rate)
                            .fold(0.0, f64::max);
                        cells[ci][ti][r].rate / best
                    })
                    .collect(),
            )
        };
        let mut rows = Vec::new();
        let mut json_rows = Vec::new();
        for (ci, c) in contenders.iter().enumerate() {
            for (ti, test) in TESTS.iter().enumerate() {
                let col = |f: fn(&Cell) -> f64| median(cells[ci][ti].iter().map(f).collect());
                let rate = col(|c| c.rate);
                let r = ratio(ci, ti);
                rows.push(vec![
                    c.name(),
                    test.name.to_string(),
                    if test.udp {
                        format!("{rate:.0} pps")
                    } else {
                        format!("{rate:.0} Mb/s")
                    },
                    format!("{r:.2}×"),
                    format!("{:.2}", col(|c| c.end_cpu)),
                    format!("{:.2}", col(|c| c.peer_cpu)),
                    if test.udp {
                        format!("{:.1}% lost", col(|c| c.lost_percent))
                    } else {
                        format!("{:.0}", col(|c| c.retransmits as f64))
                    },
                ]);
                json_rows.push(json!({
                    "contender": c.name(), "test": test.name, "median_rate": rate,
                    "median_ratio_to_best_other": r,
                    "rounds": cells[ci][ti].iter().map(|c| json!({
                        "rate": c.rate, "retransmits": c.retransmits, "lost_percent": c.lost_percent,
                        "end_cpu_cores": c.end_cpu, "peer_cpu_cores": c.peer_cpu,
                    })).collect::<Vec<_>>(),
                }));
            }
        }
        print_table(
            &format!("Through the tunnel: median of {rounds} rounds of {secs} s"),
            &[
                "end",
                "traffic",
                "median",
                "÷ best other",
                "end CPU",
                "peer CPU",
                "retransmits / loss",
            ],
            &rows,
        );
        let mut rows = Vec::new();
        for (ci, c) in contenders.iter().enumerate() {
            rows.push(vec![
                c.name(),
                format!(
                    "{:.1} MiB",
                    median(rss[ci].iter().map(|k| *k as f64 / 1024.0).collect())
                ),
                format!("{:.1} ms", median(stops[ci].clone())),
                format!("{:.1} ms", stops[ci].iter().copied().fold(0.0, f64::max)),
            ]);
        }
        print_table(
            "Memory and stop, per end (median and worst of the rounds)",
            &["end", "peak RSS", "signal to exit", "worst"],
            &rows,
        );
        Ok(
            json!({"seconds": secs, "rounds": rounds, "cells": json_rows,
                  "peak_rss_kib": rss, "stop_ms": stops,
                  "contenders": contenders.iter().map(|c| c.name()).collect::<Vec<_>>()}),
        )
    }

    fn idle(secs: u64) -> Result<Value, String> {
        let rig = WgRig::up(&PeerOptions::default())?;
        let config = config_file(&rig, "idle", None)?;
        let end = start(Contender::Tunpipe(None), &rig, &config, "", 90)?;
        rig.ping_all_from_end(PEER_V4, 3)?;
        let before = process_cpu(end.pid());
        std::thread::sleep(Duration::from_secs(secs));
        let after = process_cpu(end.pid());
        let woke = after.since(&before);
        end.stop()?;
        let _ = std::fs::remove_file(&config);
        say(&format!(
            "\nidle tunnel (tunpipe wg, no PersistentKeepalive): {} voluntary context switches \
             over {} threads, {:.1} ms of CPU, in the {secs} s after its last packet",
            woke.voluntary,
            woke.threads,
            woke.cpu_ns as f64 / 1e6
        ));
        Ok(
            json!({"seconds": secs, "voluntary_switches": woke.voluntary,
                  "involuntary_switches": woke.involuntary, "threads": woke.threads,
                  "cpu_ms": woke.cpu_ns as f64 / 1e6}),
        )
    }

    fn stop_times(cycles: usize) -> Result<Value, String> {
        let rig = WgRig::up(&PeerOptions::default())?;
        let unreachable = rig.config_text().replace(
            &format!("{PEER_UNDERLAY}:{PEER_PORT}"),
            "192.168.77.99:51820",
        );
        let mut out = serde_json::Map::new();
        let mut rows = Vec::new();
        for (case, text) in [
            ("idle, session up", rig.config_text()),
            ("handshake pending", unreachable),
        ] {
            let mut h = tunpipe_testkit::report::histogram();
            for _ in 0..cycles {
                let end = TunnelEnd::start("tps0", &text, 0)?;
                if case.starts_with("idle") {
                    rig.ping_all_from_end(PEER_V4, 1)?;
                } else {
                    // A packet into the tunnel starts a handshake that will never complete.
                    let s = std::net::UdpSocket::bind((END_V4, 0)).map_err(|e| e.to_string())?;
                    let _ = s.send_to(b"x", (PEER_V4, 9));
                    let started = Instant::now();
                    while end.counters.snapshot().handshake_initiations == 0 {
                        if started.elapsed() > Duration::from_secs(5) {
                            return Err("no handshake initiation".into());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                // Let every thread park.
                std::thread::sleep(Duration::from_millis(20));
                let at = Instant::now();
                end.engine.stop().map_err(|e| e.to_string())?;
                let _ = h.record(at.elapsed().as_nanos() as u64);
                drop(end);
                while interface_exists("tps0") {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let p = percentiles_us(&h);
            rows.push(vec![
                case.to_string(),
                format!("{}", p["p50_us"]),
                format!("{}", p["p99_us"]),
                format!("{}", p["max_us"]),
            ]);
            out.insert(case.into(), p);
        }
        print_table(
            &format!("Stop of the library's tunnel, {cycles} cycles each (µs)"),
            &["tunnel", "p50", "p99", "max"],
            &rows,
        );
        Ok(Value::Object(out))
    }

    pub fn main() {
        let args = BenchArgs::from_env();
        if args.list {
            for s in [
                "throughput",
                "idle",
                "stop",
                "flood",
                "peers",
                "paced",
                "live",
            ] {
                println!("{s}: bench");
            }
            return;
        }
        let problem = tunpipe_testkit::tun::privilege_problem().or_else(wireguard_go_problem);
        if let Some(why) = problem {
            println!("tunnel bench skipped: {why}");
            return;
        }
        // `TUNPIPE_BENCH_ROUNDS=N`: the rounds of `throughput` and `paced`, for an A/B whose
        // difference is smaller than this VM's spread.
        let more_rounds: Option<usize> = std::env::var("TUNPIPE_BENCH_ROUNDS")
            .ok()
            .and_then(|n| n.parse().ok());
        let (secs, rounds, idle_secs, cycles) = if args.quick {
            (1, more_rounds.unwrap_or(1), 2, 5)
        } else {
            (4, more_rounds.unwrap_or(3), 60, 100)
        };
        let (flood_secs, flood_rounds, pings) = if args.quick {
            (1, 1, 50)
        } else {
            (10, 3, 1000)
        };
        let (paced_secs, paced_rounds) = if args.quick {
            (2, more_rounds.unwrap_or(1))
        } else {
            (20, more_rounds.unwrap_or(3))
        };
        let (live_secs, live_rounds) = if args.quick { (2, 1) } else { (10, 3) };
        let started = Instant::now();
        let mut out = serde_json::Map::new();
        out.insert("machine".into(), machine());
        type Section = Box<dyn FnOnce() -> Result<Value, String> + Send>;
        let sections: Vec<(&str, Section)> = vec![
            ("throughput", Box::new(move || throughput(secs, rounds))),
            ("idle", Box::new(move || idle(idle_secs))),
            ("stop", Box::new(move || stop_times(cycles))),
            (
                "flood",
                Box::new(move || attack::flood(flood_secs, flood_rounds)),
            ),
            ("peers", Box::new(move || attack::peers(pings))),
            (
                "paced",
                Box::new(move || energy::paced(paced_secs, paced_rounds)),
            ),
            ("live", Box::new(move || live::live(live_secs, live_rounds))),
        ];
        for (name, section) in sections {
            if !args.runs(name) {
                continue;
            }
            let at = Instant::now();
            let result = tunpipe_testkit::thread::on_thread("bench-tunnel", None, move || {
                tunpipe_testkit::netns::enter_fresh_netns(Ipv6::NoDad)?;
                section()
            });
            record_section(&mut out, name, at, result);
        }
        out.insert(
            "bench_seconds".into(),
            json!(started.elapsed().as_secs_f64()),
        );
        write_results(&args.results_name("tunnel"), &Value::Object(out));
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    println!("tunnel bench skipped: it needs Linux network namespaces");
}
