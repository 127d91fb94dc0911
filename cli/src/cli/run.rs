//! `tunpipe run`: a TUN device with the engine behind it, until SIGINT or SIGTERM.

use super::args::RunArgs;
use super::report::{self, group, row};
use super::tun::{Tun, TunSpec};
use super::{CliResult, Failure};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe::{BuiltinStage, Config, Engine, Stats};

pub fn run(a: RunArgs) -> CliResult {
    let mut config = Config::default();
    config.pin = a.pin;
    if let Some(workers) = a.workers {
        config.workers = workers;
    }
    let asked_mtu = match (a.mtu, a.attach) {
        (Some(mtu), _) => Some(mtu),
        (None, false) => Some(1500),
        // An attached TUN keeps its own MTU, and the engine follows it.
        (None, true) => None,
    };
    if let Some(mtu) = asked_mtu {
        config.mtu = mtu;
        config.validate().map_err(|e| e.to_string())?;
        if a.ipv6.is_some() && mtu < 1280 {
            return Err(
                format!("--ipv6 needs --mtu 1280 or more (the IPv6 minimum), not {mtu}").into(),
            );
        }
    }
    let tun_mtu = asked_mtu
        .map(|mtu| u16::try_from(mtu).map_err(|_| format!("mtu {mtu} does not fit a TUN")))
        .transpose()?;

    // Registered before the device exists, so a signal during set-up is queued, not fatal.
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install the signal handlers: {e}"))?;

    let tun = Tun::set_up(&TunSpec {
        name: &a.name,
        attach: a.attach,
        ipv4: a.ipv4.as_slice(),
        ipv6: a.ipv6.as_slice(),
        mtu: tun_mtu,
    })?;
    config.mtu = tun.mtu;
    config.validate().map_err(|e| e.to_string())?;
    let name = tun.name.clone();
    let stage = BuiltinStage::from(a.stage);
    let engine = Engine::builder()
        .config(config.clone())
        .stage(stage)
        .start(&tun.device)
        .map_err(|e| format!("cannot start the engine on {name}: {e}"))?;
    let engine = Arc::new(engine);
    let addrs: Vec<String> = (a.ipv4.iter().map(ToString::to_string))
        .chain(a.ipv6.iter().map(ToString::to_string))
        .collect();
    let addrs = if addrs.is_empty() {
        "its own addresses".to_string()
    } else {
        addrs.join(", ")
    };
    println!(
        "tunpipe: {} on {name} ({addrs}, mtu {}), {} worker(s){}; stop with Ctrl-C or SIGTERM",
        stage.name(),
        config.mtu,
        engine.workers(),
        if config.pin { ", pinned" } else { "" }
    );

    // The signal thread stops the engine itself and times it: from the signal's arrival to
    // every engine thread joined.
    let (stopped_tx, stopped_rx) = crossbeam_channel::bounded::<(i32, Duration)>(1);
    let stopper = engine.clone();
    std::thread::Builder::new()
        .name("tunpipe-signals".into())
        .spawn(move || {
            let mut first = true;
            for signal in signals.forever() {
                if !first {
                    eprintln!("tunpipe: second signal; exiting without waiting");
                    std::process::exit(130);
                }
                first = false;
                let at = Instant::now();
                // An error here is the fatal one the main thread reports from wait().
                let _ = stopper.stop();
                let _ = stopped_tx.send((signal, at.elapsed()));
            }
        })
        .map_err(|e| format!("cannot spawn the signal thread: {e}"))?;

    let progress = (a.stats_interval > 0)
        .then(|| spawn_progress(engine.clone(), Duration::from_secs(a.stats_interval)))
        .transpose()?;

    let result = engine.wait();
    if let Some((done, thread)) = progress {
        drop(done);
        let _ = thread.join();
    }
    // The device still exists here: the engine dropped only its halves.
    let kernel = report::kernel_counters(&name);
    let stats = engine.stats();
    let latency = engine.latency().ok();

    println!("tunpipe: stopped; final counters for {name}:");
    report::engine_counters(&stats);
    report::engine_latency(latency.as_ref());
    report::kernel_rows(&name, kernel);
    match stopped_rx.recv_timeout(Duration::from_secs(1)) {
        Ok((signal, took)) => row(
            "stop",
            format!(
                "{} after {}: every engine thread joined",
                report::duration(took),
                signal_name(signal)
            ),
        ),
        Err(_) => row("stop", "not by a signal"),
    }
    row("device closed", tun.tear_down());
    result.map_err(|e| Failure(format!("the engine stopped on an error: {e}")))
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Prints one line every `every` until the returned sender is dropped.
fn spawn_progress(
    engine: Arc<Engine>,
    every: Duration,
) -> CliResult<(crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>)> {
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let thread = std::thread::Builder::new()
        .name("tunpipe-progress".into())
        .spawn(move || {
            let start = Instant::now();
            let mut last = (Instant::now(), Stats::default());
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                done_rx.recv_timeout(every)
            {
                let now = Instant::now();
                let s = engine.stats();
                let secs = (now - last.0).as_secs_f64();
                let pps = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                let p99 = match engine.latency() {
                    Ok(l) if l.engine.percentiles().count > 0 => {
                        report::us(l.engine.percentiles().p99)
                    }
                    _ => "-".to_string(),
                };
                println!(
                    "[{:>6.1}s] in {:>9.0} pps  out {:>9.0} pps  drops +{} ({} in all)  \
                     engine p99 {p99} (since start)",
                    (now - start).as_secs_f64(),
                    pps(s.rx_packets, last.1.rx_packets),
                    pps(s.tx_packets, last.1.tx_packets),
                    group(s.dropped().saturating_sub(last.1.dropped())),
                    group(s.dropped()),
                );
                last = (now, s);
            }
        })
        .map_err(|e| format!("cannot spawn the progress thread: {e}"))?;
    Ok((done_tx, thread))
}
