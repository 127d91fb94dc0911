//! `tunpipe run`: a TUN device with the engine behind it, until SIGINT or SIGTERM.

use super::args::RunArgs;
use super::report::{self, group, row};
use super::{CliResult, Failure};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe::{BuiltinStage, Config, Engine, Stats, TunDevice};

pub fn run(a: RunArgs) -> CliResult {
    let mut config = Config::default();
    config.mtu = a.mtu;
    config.pin = a.pin;
    if let Some(workers) = a.workers {
        config.workers = workers;
    }
    config.validate().map_err(|e| e.to_string())?;
    if a.ipv6.is_some() && a.mtu < 1280 {
        return Err(format!(
            "--ipv6 needs --mtu 1280 or more (the IPv6 minimum), not {}",
            a.mtu
        )
        .into());
    }
    let mtu = u16::try_from(a.mtu).map_err(|_| format!("mtu {} does not fit a TUN", a.mtu))?;

    // Registered before the device exists, so a signal during set-up is queued, not fatal.
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install the signal handlers: {e}"))?;

    let mut builder = tun_rs::DeviceBuilder::new()
        .name(&a.name)
        .ipv4(a.ipv4.addr, a.ipv4.prefix, None::<Ipv4Addr>)
        .mtu(mtu);
    if let Some(v6) = a.ipv6 {
        builder = builder.ipv6(v6.addr, v6.prefix);
    }
    let tun = builder.build_sync().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (needs root or CAP_NET_ADMIN)"
        } else {
            ""
        };
        format!("cannot create TUN device {}: {e}{hint}", a.name)
    })?;
    let device = TunDevice::new(tun);
    let stage = BuiltinStage::from(a.stage);
    let engine = Engine::builder()
        .config(config.clone())
        .stage(stage)
        .start(&device)
        .map_err(|e| format!("cannot start the engine on {}: {e}", a.name))?;
    let engine = Arc::new(engine);
    let addrs = match a.ipv6 {
        Some(v6) => format!("{}, {v6}", a.ipv4),
        None => a.ipv4.to_string(),
    };
    println!(
        "tunpipe: {} on {} ({addrs}, mtu {}), {} worker(s){}; stop with Ctrl-C or SIGTERM",
        stage.name(),
        a.name,
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
    let kernel = report::kernel_counters(&a.name);
    let stats = engine.stats();
    let latency = engine.latency().ok();

    println!("tunpipe: stopped; final counters for {}:", a.name);
    report::engine_counters(&stats);
    report::engine_latency(latency.as_ref());
    report::kernel_rows(&a.name, kernel);
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
    // Closing the TUN makes the kernel unregister the interface, which waits for RCU grace
    // periods: typically tens of milliseconds, all of it after the engine has stopped.
    let at = Instant::now();
    drop(device);
    row(
        "device closed",
        format!(
            "{} (the kernel removing {}; the engine had already stopped)",
            report::duration(at.elapsed()),
            a.name
        ),
    );
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
