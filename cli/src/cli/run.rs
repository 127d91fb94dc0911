//! `tunpipe run`: a TUN device with the engine behind it, until SIGINT or SIGTERM.

use super::args::RunArgs;
use super::report::{self, group, row};
use super::session;
use super::tun::{Tun, TunSpec};
use super::{CliResult, Failure};
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

    let signals = session::signals()?;

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

    let ended =
        session::until_stopped(&engine, signals, a.stats_interval, progress(engine.clone()))?;
    // The device still exists here: the engine dropped only its halves.
    let kernel = report::kernel_counters(&name);
    let stats = engine.stats();
    let latency = engine.latency().ok();

    println!("tunpipe: stopped; final counters for {name}:");
    report::engine_counters(&stats);
    report::engine_latency(latency.as_ref());
    report::kernel_rows(&name, kernel);
    row("stop", ended.stop);
    row("device closed", tun.tear_down());
    ended
        .result
        .map_err(|e| Failure(format!("the engine stopped on an error: {e}")))
}

/// The progress line: packets per second in and out since the last line, drops, and the
/// engine's p99 since the start.
fn progress(engine: Arc<Engine>) -> impl FnMut(Duration) -> String + Send + 'static {
    let mut last = (Instant::now(), Stats::default());
    move |_| {
        let now = Instant::now();
        let s = engine.stats();
        let secs = (now - last.0).as_secs_f64();
        let pps = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let p99 = match engine.latency() {
            Ok(l) if l.engine.percentiles().count > 0 => report::us(l.engine.percentiles().p99),
            _ => "-".to_string(),
        };
        let line = format!(
            "in {:>9.0} pps  out {:>9.0} pps  drops +{} ({} in all)  engine p99 {p99} (since \
             start)",
            pps(s.rx_packets, last.1.rx_packets),
            pps(s.tx_packets, last.1.tx_packets),
            group(s.dropped().saturating_sub(last.1.dropped())),
            group(s.dropped()),
        );
        last = (now, s);
        line
    }
}
