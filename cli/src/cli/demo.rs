//! `tunpipe demo`: the engine at work, for anyone.
//!
//! As root on Linux it runs on a real TUN device inside a private network namespace: the
//! kernel's `ping` and a closed-loop UDP socket talk through the engine's `reflect` stage.
//! Anywhere else it runs the same closed loop on the in-memory device, and says why.

use super::args::DemoArgs;
use super::load::{self, closed_loop, LoadResult, MemoryTransport, Transport, UdpTransport};
use super::report::{self, group, row};
use super::{netns, CliResult};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe::{
    BuiltinStage, Config, Device, Engine, LatencySnapshot, MemoryDevice, Stats, TunDevice,
};

const TUN: &str = "tp0";
const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const PEER4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
const UDP_PORT: u16 = 9;
/// How long the engine idles before the idle stop is timed, so every thread has parked and
/// the reader is blocked in the kernel.
const IDLE: Duration = Duration::from_millis(100);
/// How long the second run is under load before it is stopped.
const LOADED: Duration = Duration::from_millis(300);

pub fn demo(a: DemoArgs) -> CliResult {
    let mut config = Config::default();
    if let Some(workers) = a.workers {
        config.workers = workers;
    }
    config.validate().map_err(|e| e.to_string())?;
    let seconds = Duration::from_secs(a.seconds);
    let why_memory = if a.memory {
        "--memory was given".to_string()
    } else {
        // Before any thread exists: every thread and child process must share the namespace.
        match netns::enter_private_netns().and_then(|()| create_tun(&config)) {
            Ok(tun) => return tun_demo(TunDevice::new(tun), config, seconds),
            Err(why) => why,
        }
    };
    memory_demo(config, seconds, &why_memory)
}

fn create_tun(config: &Config) -> Result<tun_rs::SyncDevice, String> {
    let mtu = u16::try_from(config.mtu).map_err(|_| "mtu does not fit a TUN".to_string())?;
    tun_rs::DeviceBuilder::new()
        .name(TUN)
        .ipv4(LOCAL4, 24, None::<Ipv4Addr>)
        .ipv6(LOCAL6, 64)
        .mtu(mtu)
        .build_sync()
        .map_err(|e| format!("cannot create a TUN device: {e}"))
}

/// What both demos measured, for the summary.
struct Outcome {
    device: String,
    workers: usize,
    load: LoadResult,
    stats: Stats,
    latency: Option<LatencySnapshot>,
    idle_stop: Duration,
    loaded_stop: Option<(Duration, Stats)>,
    reserved: usize,
    pings: Vec<(&'static str, Result<Ping, String>)>,
    kernel: Option<Result<report::KernelCounters, String>>,
    /// How long closing the TUN took: the kernel unregistering the interface.
    device_close: Option<Duration>,
}

fn tun_demo(device: TunDevice, config: Config, seconds: Duration) -> CliResult {
    println!(
        "tunpipe demo on a real TUN device: {TUN} ({LOCAL4}/24, {LOCAL6}/64) in a private \
         network namespace of this process"
    );
    let engine = start(&config, &device)?;
    println!(
        "the engine runs the reflect stage with {} worker(s): it answers pings to {PEER4} and \
         {PEER6}, and sends UDP back to its sender\n",
        engine.workers()
    );

    let mut pings = Vec::new();
    for (step, label, args) in [
        (
            "[1/4]",
            "ping IPv4",
            vec!["-c", "200", "-i", "0.005", "10.99.0.2"],
        ),
        (
            "[2/4]",
            "ping IPv6",
            vec!["-6", "-c", "50", "-i", "0.01", "fd00:99::2"],
        ),
    ] {
        println!(
            "{step} ping {} (the kernel's ping, through the engine)",
            args.join(" ")
        );
        let result = ping(&args);
        match &result {
            Ok(p) => println!("      {}", p.describe()),
            Err(e) => println!("      {e}"),
        }
        pings.push((label, result));
    }

    println!(
        "[3/4] closed-loop UDP for {} s: a socket on {LOCAL4} sends to {PEER4}:{UDP_PORT} with \
         {} packets in flight ({}-byte payloads); reflect sends each one back",
        seconds.as_secs(),
        load::WINDOW,
        load::PAYLOAD
    );
    let udp =
        || UdpTransport::new(LOCAL4, (PEER4, UDP_PORT)).map_err(|e| format!("UDP socket: {e}"));
    let mut transport = udp()?;
    let load = closed_loop(
        &mut transport,
        |t| t >= seconds,
        |tick| print_tick(tick, &engine),
    )
    .map_err(|e| format!("UDP load failed: {e}"))?;
    drop(transport);

    println!(
        "[4/4] stop: once idle (reader blocked in the kernel), once under load (a second run \
         on the same device)"
    );
    let (idle_stop, stats, latency) = stop_idle(engine)?;
    // Read before the second run: these are the counters of the run the summary describes.
    let kernel = report::kernel_counters(TUN);
    let loaded_stop = stop_under_load(&config, &device, udp()?)?;
    let at = Instant::now();
    drop(device);
    let device_close = Some(at.elapsed());

    print_summary(&Outcome {
        device: format!("TUN {TUN} in a private network namespace"),
        workers: config.workers,
        load,
        stats,
        latency,
        idle_stop,
        loaded_stop: Some(loaded_stop),
        reserved: tunpipe::reserved_bytes(&config),
        pings,
        kernel: Some(kernel),
        device_close,
    });
    row(
        "cleaned up",
        format!(
            "{TUN} went away with its fd, and its namespace goes with this process; nothing \
             was created outside it"
        ),
    );
    Ok(())
}

fn memory_demo(config: Config, seconds: Duration, why: &str) -> CliResult {
    println!("tunpipe demo on the in-memory device, not a TUN: {why}");
    println!(
        "(as root on Linux, the demo runs on a real TUN in a private network namespace, with \
         the kernel's ping)"
    );
    let (device, tx, rx) = MemoryDevice::new(1024, 2048);
    let engine = start(&config, &device)?;
    println!(
        "the engine runs the reflect stage with {} worker(s); the demo's own thread plays the \
         app on the other side of the device\n",
        engine.workers()
    );
    println!(
        "[1/2] closed-loop UDP for {} s: hand-built IPv4/UDP packets from {LOCAL4} to \
         {PEER4}:{UDP_PORT}, {} in flight ({}-byte payloads); reflect sends each one back",
        seconds.as_secs(),
        load::WINDOW,
        load::PAYLOAD
    );
    let mut transport = MemoryTransport::new(tx, rx);
    let load = closed_loop(
        &mut transport,
        |t| t >= seconds,
        |tick| print_tick(tick, &engine),
    )
    .map_err(|e| format!("in-memory load failed: {e}"))?;
    println!(
        "[2/2] stop: once idle (reader parked), once under load (a second run on the same device)"
    );
    let (idle_stop, stats, latency) = stop_idle(engine)?;
    let loaded_stop = stop_under_load(&config, &device, transport)?;

    print_summary(&Outcome {
        device: "in-memory device".to_string(),
        workers: config.workers,
        load,
        stats,
        latency,
        idle_stop,
        loaded_stop: Some(loaded_stop),
        reserved: tunpipe::reserved_bytes(&config),
        pings: Vec::new(),
        kernel: None,
        device_close: None,
    });
    row("cleaned up", "nothing outside this process was touched");
    Ok(())
}

fn start<D: Device>(config: &Config, device: &D) -> CliResult<Engine> {
    Engine::builder()
        .config(config.clone())
        .stage(BuiltinStage::Reflect)
        .start(device)
        .map_err(|e| format!("cannot start the engine: {e}").into())
}

fn print_tick(tick: &load::Tick<'_>, engine: &Engine) {
    let (p50, p99) = if tick.rtt.is_empty() {
        ("-".to_string(), "-".to_string())
    } else {
        (
            report::us(tick.rtt.value_at_quantile(0.5)),
            report::us(tick.rtt.value_at_quantile(0.99)),
        )
    };
    println!(
        "      {:>4.1} s  {:>9} round trips/s  rtt p50 {p50:>9}  p99 {p99:>9}  engine drops {}",
        tick.elapsed.as_secs_f64(),
        group(tick.rate as u64),
        group(engine.stats().dropped())
    );
}

/// Lets the engine go idle, then times `stop()`: request to every thread joined.
fn stop_idle(engine: Engine) -> CliResult<(Duration, Stats, Option<LatencySnapshot>)> {
    std::thread::sleep(IDLE);
    let at = Instant::now();
    let result = engine.stop();
    let took = at.elapsed();
    result.map_err(|e| format!("the engine stopped on an error: {e}"))?;
    Ok((took, engine.stats(), engine.latency().ok()))
}

/// Starts a second run on the same device, loads it from another thread, and times `stop()`
/// in the middle of it.
fn stop_under_load<D: Device, T: Transport + Send + 'static>(
    config: &Config,
    device: &D,
    mut transport: T,
) -> CliResult<(Duration, Stats)> {
    let engine = start(config, device)?;
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let done = done.clone();
        std::thread::Builder::new()
            .name("tunpipe-demo-load".into())
            .spawn(move || closed_loop(&mut transport, |_| done.load(Ordering::Relaxed), |_| {}))
            .map_err(|e| format!("cannot spawn the load thread: {e}"))?
    };
    std::thread::sleep(LOADED);
    let at = Instant::now();
    let result = engine.stop();
    let took = at.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = load.join();
    result.map_err(|e| format!("the engine stopped on an error: {e}"))?;
    Ok((took, engine.stats()))
}

fn print_summary(o: &Outcome) {
    println!(
        "\nsummary: {}, reflect stage, {} worker(s)",
        o.device, o.workers
    );
    row(
        "UDP closed loop",
        format!(
            "{} round trips/s over {:.2} s: {} sent, {} answered, {} lost \
             (a round trip is one packet into the engine and one out)",
            group(o.load.rate() as u64),
            o.load.elapsed.as_secs_f64(),
            group(o.load.sent),
            group(o.load.received),
            group(o.load.lost),
        ),
    );
    if o.load.send_errors > 0 {
        row("UDP send errors", group(o.load.send_errors));
    }
    row("client RTT", report::percentiles(&o.load.rtt));
    report::engine_latency(o.latency.as_ref());
    for (label, result) in &o.pings {
        match result {
            Ok(p) => row(label, p.describe()),
            Err(e) => row(label, e),
        }
    }
    report::engine_counters(&o.stats);
    if let Some(kernel) = o.kernel.clone() {
        report::kernel_rows(TUN, kernel);
        if o.stats.drop_stage > 0 {
            row(
                "",
                "(stage drops: packets reflect does not answer, typically the kernel's own \
                 IPv6 router solicitations on a new interface)",
            );
        }
    }
    row(
        "stop, idle",
        format!(
            "{}  (after {} idle; stop() request to every thread joined)",
            report::duration(o.idle_stop),
            report::duration(IDLE)
        ),
    );
    if let Some((took, s)) = &o.loaded_stop {
        row(
            "stop, under load",
            format!(
                "{}  (second run, {} packets through it, {} in flight dropped as \"stopped\")",
                report::duration(*took),
                group(s.rx_packets),
                group(s.drop_stopped)
            ),
        );
    }
    if let Some(took) = o.device_close {
        row(
            "device closed",
            format!(
                "{}  (closing the TUN fd: the kernel removing {TUN}, after the engine stopped)",
                report::duration(took)
            ),
        );
    }
    let rss = report::peak_rss()
        .map(|b| format!("process peak RSS {} (VmHWM)", report::bytes(b)))
        .unwrap_or_else(|| "process peak RSS unavailable on this platform".to_string());
    row(
        "memory",
        format!(
            "engine reserved {} (pool, rings, histograms); {rss}",
            report::bytes(o.reserved as u64)
        ),
    );
}

/// What the kernel's ping reported.
struct Ping {
    sent: u64,
    received: u64,
    /// min / avg / max in milliseconds.
    rtt_ms: Option<[f64; 3]>,
}

impl Ping {
    fn describe(&self) -> String {
        let rtt = match self.rtt_ms {
            Some([min, avg, max]) => {
                format!(", rtt min/avg/max {min:.3}/{avg:.3}/{max:.3} ms")
            }
            None => String::new(),
        };
        format!("{} sent, {} received{rtt}", self.sent, self.received)
    }
}

/// Runs the system's ping quietly, with a deadline so that it always ends, and parses its
/// summary.
fn ping(args: &[&str]) -> Result<Ping, String> {
    let out = Command::new("ping")
        .arg("-q")
        .args(["-w", "10"])
        .args(args)
        .output()
        .map_err(|e| format!("could not run ping: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).ok_or_else(|| {
        let err = String::from_utf8_lossy(&out.stderr);
        format!(
            "ping gave no summary ({}): {}",
            out.status,
            super::one_line(err.trim())
        )
    })
}

fn parse_ping(text: &str) -> Option<Ping> {
    let counts = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut parts = counts.split(',');
    let sent = parts.next()?.split_whitespace().next()?.parse().ok()?;
    let received = parts.next()?.split_whitespace().next()?.parse().ok()?;
    let rtt_ms = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| {
            let values = l.split('=').nth(1)?.split_whitespace().next()?;
            let v: Vec<f64> = values.split('/').filter_map(|v| v.parse().ok()).collect();
            (v.len() >= 3).then(|| [v[0], v[1], v[2]])
        });
    Some(Ping {
        sent,
        received,
        rtt_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summaries_parse() {
        let iputils = "PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.\n\n\
            --- 10.99.0.2 ping statistics ---\n\
            200 packets transmitted, 199 received, 0.5% packet loss, time 1003ms\n\
            rtt min/avg/max/mdev = 0.021/0.030/0.094/0.009 ms\n";
        let p = parse_ping(iputils).unwrap();
        assert_eq!((p.sent, p.received), (200, 199));
        assert_eq!(p.rtt_ms, Some([0.021, 0.030, 0.094]));
        let none = "5 packets transmitted, 0 received, 100% packet loss, time 4090ms\n";
        let p = parse_ping(none).unwrap();
        assert_eq!((p.sent, p.received, p.rtt_ms), (5, 0, None));
        assert!(parse_ping("ping: connect: Network is unreachable").is_none());
    }
}
