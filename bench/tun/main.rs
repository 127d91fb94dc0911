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
//! - `tcp`: iperf3 between two network namespaces joined by a bridge (two engines, or two
//!   guide loops), Linux only;
//! - `cli`: peak RSS of the CLI (`tunpipe run`) under load, Linux only.
//!
//! On Linux every section runs in a private network namespace of its own (root needed); on
//! macOS it runs on utun devices. Results: `target/bench-results/tun.json` and
//! `target/bench-results/latency.svg`.

#[path = "common.rs"]
mod common;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use common::{print_table, thousands, thread_cpu, ThreadCpu};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tunpipe::stage::Reflect;
use tunpipe::{BuiltinStage, Config, Engine, PacketBuf, Stage, StageFactory, TunDevice, Verdict};

const LOCAL: &str = "10.70.0.1";
const PEER: &str = "10.70.0.2";
const PORT: u16 = 7777;
const MTU: usize = 1500;
const HEADROOM: usize = 64;
const TAILROOM: usize = 64;

struct Timing {
    warmup: Duration,
    measure: Duration,
    stop_cycles: usize,
    idle: Duration,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    iperf_secs: u32,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let quick = args.iter().any(|a| a == "quick");
    let sections: Vec<String> = args.iter().filter(|a| *a != "quick").cloned().collect();
    let run = |s: &str| sections.is_empty() || sections.iter().any(|a| a == s);
    let t = Arc::new(if quick {
        Timing {
            warmup: Duration::from_millis(100),
            measure: Duration::from_millis(300),
            stop_cycles: 50,
            idle: Duration::from_millis(500),
            iperf_secs: 1,
        }
    } else {
        Timing {
            warmup: Duration::from_millis(300),
            measure: Duration::from_millis(1500),
            stop_cycles: 1000,
            idle: Duration::from_secs(2),
            iperf_secs: 3,
        }
    });
    if let Some(why) = privilege_problem() {
        println!("tun bench skipped: {why}");
        return;
    }
    let started = Instant::now();
    let mut out = serde_json::Map::new();
    out.insert("machine".into(), common::machine());
    type Section = fn(&Timing) -> Value;
    let sections_fns: Vec<(&str, Section)> = vec![
        ("floor", floor),
        ("matrix", matrix_reflect),
        ("seal", matrix_seal),
        ("spin", spin_section),
        ("stop", stop_section),
        ("idle", idle_section),
        #[cfg(target_os = "linux")]
        ("tcp", tcp_section),
        #[cfg(target_os = "linux")]
        ("cli", cli_section),
    ];
    for (name, f) in sections_fns {
        if !run(name) {
            continue;
        }
        let t = t.clone();
        let section_start = Instant::now();
        let result = in_private_netns(move || f(&t));
        match result {
            Ok(v) => {
                out.insert(name.into(), v);
            }
            Err(e) => {
                println!("section {name} failed: {e}");
                out.insert(name.into(), json!({"error": e}));
            }
        }
        println!("[{name}: {:.1} s]", section_start.elapsed().as_secs_f64());
    }
    if let Some(Value::Array(cells)) = out.get("matrix").and_then(|m| m.get("cells")) {
        plot(cells);
    }
    out.insert(
        "memory".into(),
        json!({
            "reserved_bytes_default_config": tunpipe::reserved_bytes(&Config::default()),
            "bench_process_peak_rss_kib": common::peak_rss_kib(),
        }),
    );
    common::say(&format!(
        "\nreserved at the default config: {} bytes; peak RSS of this bench process (VmHWM): {} KiB",
        thousands(tunpipe::reserved_bytes(&Config::default()) as f64),
        common::peak_rss_kib()
    ));
    out.insert(
        "bench_seconds".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    let name = if quick { "tun-quick" } else { "tun" };
    common::write_json(name, &Value::Object(out));
    common::write_report(name);
    println!("tun bench took {:.1} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// Namespaces and devices

#[cfg(target_os = "linux")]
fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare takes flags only; it moves the calling thread into a new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why the bench cannot run here (not root, no TUN), or None when it can.
fn privilege_problem() -> Option<String> {
    std::thread::spawn(|| {
        #[cfg(target_os = "linux")]
        if let Err(e) = unshare_net() {
            return Some(format!("needs root (unshare: {e})"));
        }
        match build_tun("tpprobe") {
            Ok(_) => None,
            Err(e) => Some(format!("cannot create a TUN ({e})")),
        }
    })
    .join()
    .unwrap_or_else(|_| Some("probe panicked".into()))
}

/// Runs `f` on a thread of its own, in a fresh network namespace on Linux. Every thread it
/// starts (contenders, engines, runtimes) inherits the namespace.
fn in_private_netns<F>(f: F) -> Result<Value, String>
where
    F: FnOnce() -> Value + Send + 'static,
{
    std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            unshare_net().map_err(|e| format!("unshare: {e}"))?;
            Ok(f())
        })
        .map_err(|e| e.to_string())?
        .join()
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        })
}

fn tun_builder(name: &str) -> tun_rs::DeviceBuilder {
    let b = tun_rs::DeviceBuilder::new()
        .ipv4(LOCAL, 24, None)
        .mtu(MTU as u16);
    #[cfg(target_os = "linux")]
    let b = b.name(name);
    #[cfg(not(target_os = "linux"))]
    let _ = name;
    b
}

fn build_tun(name: &str) -> io::Result<tun_rs::SyncDevice> {
    tun_builder(name).build_sync()
}

/// Kernel drop counters of the interface (Linux): packets the TUN's queue toward user space
/// dropped (`tx_dropped`), and packets user space wrote that the kernel dropped (`rx_dropped`).
fn if_drops(name: &str) -> (u64, u64) {
    // /proc/thread-self/net/dev shows the calling thread's namespace (sysfs would show the
    // namespace it was mounted in). Fields after "name:": rx bytes packets errs drop ...,
    // then tx bytes packets errs drop ...
    let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
    let prefix = format!("{name}:");
    text.lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(&prefix))
        .map(|l| {
            let f: Vec<u64> = l[prefix.len()..]
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            (
                f.get(11).copied().unwrap_or(0),
                f.get(3).copied().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

fn client_socket() -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind((LOCAL, 0))?;
    socket.connect((PEER, PORT))?;
    // Room for 256 packets of 1400 B in flight, so the client's socket never drops.
    let size: libc::c_int = 8 << 20;
    #[cfg(target_os = "linux")]
    let opts = [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE];
    #[cfg(not(target_os = "linux"))]
    let opts = [libc::SO_RCVBUF, libc::SO_SNDBUF];
    for opt in opts {
        use std::os::fd::AsRawFd;
        // SAFETY: the option value is a c_int that lives across the call, with its size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok(socket)
}

// ---------------------------------------------------------------------------------------------
// Work: the same stage for every contender

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Work {
    /// tunpipe's `reflect`.
    Reflect,
    /// `reflect`, then ChaCha20-Poly1305: seal the packet in place with the tag pushed into
    /// the tailroom (what a VPN does toward the network), then open it again (what it does
    /// toward the TUN), so the client still gets a valid reply.
    Seal,
}

struct Sealer {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl Stage for Sealer {
    fn process(&mut self, packet: &mut PacketBuf) -> Verdict {
        if Reflect.process(packet) == Verdict::Drop {
            return Verdict::Drop;
        }
        self.counter += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_le_bytes());
        let nonce = Nonce::from_slice(&nonce);
        let Ok(tag) = self
            .cipher
            .encrypt_in_place_detached(nonce, &[], packet.data_mut())
        else {
            return Verdict::Drop;
        };
        match packet.push_back(16) {
            Ok(room) => room.copy_from_slice(&tag),
            Err(_) => return Verdict::Drop,
        }
        let len = packet.len() - 16;
        let (body, tag) = packet.data_mut().split_at_mut(len);
        let tag = Tag::clone_from_slice(tag);
        if self
            .cipher
            .decrypt_in_place_detached(nonce, &[], body, &tag)
            .is_err()
        {
            return Verdict::Drop;
        }
        match packet.truncate(len) {
            Ok(()) => Verdict::Forward,
            Err(_) => Verdict::Drop,
        }
    }
}

fn stage_factory(work: Work) -> StageFactory {
    match work {
        Work::Reflect => BuiltinStage::Reflect.factory(),
        Work::Seal => Arc::new(|index: usize| {
            let key = [index as u8 ^ 0x5a; 32];
            Box::new(Sealer {
                cipher: ChaCha20Poly1305::new(&key.into()),
                counter: 0,
            }) as Box<dyn Stage>
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Contenders

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    GuideSync,
    GuideTokio,
    Tunpipe(usize),
    /// tunpipe with `workers` and a spin window of `spin_us` µs (the default is 50).
    TunpipeSpin(usize, u64),
    /// tunpipe with `workers`, its receive half wrapped to spin 50 µs before each wait (an
    /// experiment: the engine's reader does not spin).
    TunpipeReaderSpin(usize),
}

impl Contender {
    fn name(self) -> String {
        match self {
            Contender::GuideSync => "guide-sync".into(),
            Contender::GuideTokio => "guide-tokio".into(),
            Contender::Tunpipe(w) => format!("tunpipe-w{w}"),
            Contender::TunpipeSpin(w, spin) => format!("tunpipe-w{w}-spin{spin}"),
            Contender::TunpipeReaderSpin(w) => format!("tunpipe-w{w}-rxspin50*"),
        }
    }

    /// Thread-name prefixes of the contender's threads (what CPU accounting sums).
    fn threads(self) -> &'static [&'static str] {
        match self {
            Contender::GuideSync => &["guide-sync"],
            Contender::GuideTokio => &["guide-tokio"],
            Contender::Tunpipe(_)
            | Contender::TunpipeSpin(..)
            | Contender::TunpipeReaderSpin(_) => &["tunpipe-"],
        }
    }
}

/// What a guide loop counted.
#[derive(Default, Debug, Clone, Copy)]
struct LoopStats {
    forwarded: u64,
    stage_drops: u64,
    send_errors: u64,
    /// When the loop left, before its thread dropped the device (closing a TUN tears the
    /// interface down, which takes milliseconds and is not part of stopping).
    exited_at: Option<Instant>,
}

/// One contender running on a fresh TUN.
struct Running {
    contender: Contender,
    ifname: String,
    engine: Option<(Engine, TunDevice)>,
    guide: Option<(Arc<AtomicBool>, JoinHandle<LoopStats>)>,
}

/// The guide's synchronous loop, with `stage` as its "process packet here".
fn guide_sync_loop(
    tun: &tun_rs::SyncDevice,
    stop: &AtomicBool,
    stage: &mut dyn Stage,
) -> LoopStats {
    let mut stats = LoopStats::default();
    let mut buf = PacketBuf::new(HEADROOM, MTU + 1, TAILROOM);
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match tun.recv(&mut buf.storage_mut()[HEADROOM..HEADROOM + MTU + 1]) {
            Ok(len) => {
                if buf.set_window(HEADROOM, len).is_err() {
                    continue;
                }
                if stage.process(&mut buf) == Verdict::Forward {
                    match tun.send(buf.data()) {
                        Ok(_) => stats.forwarded += 1,
                        Err(_) => stats.send_errors += 1,
                    }
                } else {
                    stats.stage_drops += 1;
                }
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
        }
    }
    stats.exited_at = Some(Instant::now());
    stats
}

fn start(contender: Contender, work: Work, ifname: &str) -> io::Result<Running> {
    let factory = stage_factory(work);
    let mut running = Running {
        contender,
        ifname: ifname.to_string(),
        engine: None,
        guide: None,
    };
    match contender {
        Contender::GuideSync => {
            let tun = build_tun(ifname)?;
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let handle = std::thread::Builder::new()
                .name("guide-sync".into())
                .spawn(move || {
                    let mut stage = factory(0);
                    guide_sync_loop(&tun, &flag, &mut *stage)
                })?;
            running.guide = Some((stop, handle));
        }
        Contender::GuideTokio => {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let builder = tun_builder(ifname);
            let handle = std::thread::Builder::new()
                .name("guide-tokio".into())
                .spawn(move || {
                    // What `Runtime::new()` builds, with the worker threads named so that
                    // their CPU time is counted.
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .enable_all()
                        .thread_name("guide-tokio-w")
                        .build()
                        .expect("tokio runtime");
                    rt.block_on(async move {
                        let tun = match builder.build_async() {
                            Ok(t) => t,
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return LoopStats::default();
                            }
                        };
                        let _ = ready_tx.send(Ok(()));
                        let mut stage = factory(0);
                        let mut stats = LoopStats::default();
                        let mut buf = PacketBuf::new(HEADROOM, MTU + 1, TAILROOM);
                        loop {
                            if flag.load(Ordering::Relaxed) {
                                break;
                            }
                            let window = &mut buf.storage_mut()[HEADROOM..HEADROOM + MTU + 1];
                            match tun.recv(window).await {
                                Ok(len) => {
                                    if buf.set_window(HEADROOM, len).is_err() {
                                        continue;
                                    }
                                    if stage.process(&mut buf) == Verdict::Forward {
                                        match tun.send(buf.data()).await {
                                            Ok(_) => stats.forwarded += 1,
                                            Err(_) => stats.send_errors += 1,
                                        }
                                    } else {
                                        stats.stage_drops += 1;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                        stats.exited_at = Some(Instant::now());
                        stats
                    })
                })?;
            ready_rx
                .recv()
                .map_err(|_| io::Error::other("tokio loop died"))??;
            running.guide = Some((stop, handle));
        }
        Contender::Tunpipe(_) | Contender::TunpipeSpin(..) | Contender::TunpipeReaderSpin(_) => {
            let device = TunDevice::new(build_tun(ifname)?);
            let mut config = Config::default();
            match contender {
                Contender::TunpipeSpin(workers, spin) => {
                    config.workers = workers;
                    config.spin = Duration::from_micros(spin);
                }
                Contender::Tunpipe(workers) | Contender::TunpipeReaderSpin(workers) => {
                    config.workers = workers
                }
                _ => {}
            }
            let builder = Engine::builder().config(config).stage(factory);
            let engine = if let Contender::TunpipeReaderSpin(_) = contender {
                use tunpipe::Device;
                let (rx, tx) = device.open()?;
                builder.start_halves(common::SpinRx::new(rx, Duration::from_micros(50)), tx)
            } else {
                builder.start(&device)
            }
            .map_err(io::Error::other)?;
            running.engine = Some((engine, device));
        }
    }
    Ok(running)
}

/// How a contender stopped.
struct Stopped {
    /// Time from the stop request until the contender's threads were gone.
    stop_time: Duration,
    /// Packets the contender itself dropped (engine counters, or the loop's own).
    drops: u64,
    loop_stats: Option<LoopStats>,
    engine_stats: Option<tunpipe::Stats>,
}

impl Running {
    /// Stops the contender. The guide's loops check their flag only between packets, so they
    /// are woken with UDP packets until they notice, as a host would have to.
    fn stop(mut self) -> Stopped {
        let t0 = Instant::now();
        if let Some((engine, device)) = self.engine.take() {
            let result = engine.stop();
            let stop_time = t0.elapsed();
            if let Err(e) = result {
                println!("{}: engine stopped with {e}", self.contender.name());
            }
            drop(device);
            let s = engine.stats();
            return Stopped {
                stop_time,
                drops: s.dropped() - s.drop_stopped,
                loop_stats: None,
                engine_stats: Some(s),
            };
        }
        let (flag, handle) = self.guide.take().expect("a contender runs");
        flag.store(true, Ordering::Relaxed);
        let waker = UdpSocket::bind((LOCAL, 0)).ok();
        while !handle.is_finished() {
            if let Some(w) = &waker {
                let _ = w.send_to(&[0u8; 8], (PEER, PORT));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let stats = handle.join().unwrap_or_default();
        let stop_time = stats
            .exited_at
            .map_or_else(|| t0.elapsed(), |at| at.saturating_duration_since(t0));
        Stopped {
            stop_time,
            drops: stats.stage_drops + stats.send_errors,
            loop_stats: Some(stats),
            engine_stats: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The closed-loop client

struct ClientResult {
    secs: f64,
    received: u64,
    sent: u64,
    lost: u64,
    send_errors: u64,
    /// Times the client waited 250 ms for nothing and restarted its window.
    timeouts: u64,
    rtt: Histogram<u64>,
}

/// Keeps `window` datagrams of `payload` bytes in flight to the reflector for `warmup` plus
/// `measure`, and records the round trip of each one sent within the measured part. Each
/// datagram carries its send time; the reflector sends it back unchanged. `mark` is called as
/// the measured part begins and ends.
fn client(
    socket: &UdpSocket,
    window: usize,
    payload: usize,
    t: &Timing,
    mark: &mut dyn FnMut(),
) -> ClientResult {
    socket
        .set_read_timeout(Some(Duration::from_millis(250)))
        .expect("timeout");
    let base = Instant::now();
    let now_ns = || base.elapsed().as_nanos() as u64;
    let mut out = vec![0u8; payload.max(8)];
    let mut inbuf = vec![0u8; 2048];
    let mut rtt = common::histogram();
    let (mut in_flight, mut sent, mut received, mut lost, mut errors) = (0usize, 0, 0, 0, 0);
    let mut timeouts = 0;
    let warm_end = t.warmup.as_nanos() as u64;
    let end = warm_end + t.measure.as_nanos() as u64;
    let mut measuring = false;
    let (mut sent_at_start, mut received_at_start) = (0, 0);
    let mut measure_start = 0;
    loop {
        let now = now_ns();
        if !measuring && now >= warm_end {
            mark();
            measuring = true;
            measure_start = now_ns();
            sent_at_start = sent;
            received_at_start = received;
        }
        if now >= end {
            break;
        }
        while in_flight < window {
            out[..8].copy_from_slice(&now_ns().to_le_bytes());
            match socket.send(&out) {
                Ok(_) => {
                    in_flight += 1;
                    sent += 1;
                }
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        match socket.recv(&mut inbuf) {
            Ok(n) if n >= 8 => {
                let now = now_ns();
                let stamp = u64::from_le_bytes(inbuf[..8].try_into().expect("8 bytes"));
                in_flight = in_flight.saturating_sub(1);
                received += 1;
                if measuring && stamp >= measure_start {
                    rtt.record(now.saturating_sub(stamp).max(1)).ok();
                }
            }
            Ok(_) => {}
            Err(_) => {
                // Nothing for 250 ms: whatever is in flight is lost; start the window again.
                lost += in_flight as u64;
                in_flight = 0;
                timeouts += 1;
            }
        }
    }
    let measure_end = now_ns();
    mark();
    // Let the stragglers come home, so "lost" counts only what never did.
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let measured_received = received - received_at_start;
    let mut late = 0u64;
    while in_flight > 0 {
        match socket.recv(&mut inbuf) {
            Ok(_) => {
                in_flight -= 1;
                late += 1;
            }
            Err(_) => break,
        }
    }
    lost += in_flight as u64;
    let _ = late;
    ClientResult {
        secs: (measure_end - measure_start) as f64 / 1e9,
        received: measured_received,
        sent: sent - sent_at_start,
        lost,
        send_errors: errors,
        timeouts,
        rtt,
    }
}

// ---------------------------------------------------------------------------------------------
// Sections

/// The syscalls of one round trip, each timed in batches of 64: UDP send into the TUN, TUN
/// read, TUN write of the reflected packet, UDP receive of it.
fn floor(t: &Timing) -> Value {
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    for payload in [64usize, 1400] {
        let tun = build_tun("tpfloor").expect("tun");
        let socket = client_socket().expect("socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let out = vec![0u8; payload];
        let mut buf = PacketBuf::new(HEADROOM, MTU + 1, TAILROOM);
        let mut reply = Vec::new();
        const BATCH: usize = 64;
        let (mut send_ns, mut read_ns, mut write_ns, mut recv_ns, mut n) = (0u128, 0, 0, 0, 0);
        let mut inbuf = vec![0u8; 2048];
        let deadline = Instant::now() + t.measure.max(Duration::from_millis(300));
        while Instant::now() < deadline {
            let t0 = Instant::now();
            for _ in 0..BATCH {
                socket.send(&out).expect("send");
            }
            let t1 = Instant::now();
            let mut ours = 0;
            while ours < BATCH {
                let len = tun
                    .recv(&mut buf.storage_mut()[HEADROOM..HEADROOM + MTU + 1])
                    .expect("tun read");
                buf.set_window(HEADROOM, len).expect("fits");
                // The kernel may queue a packet of its own (IPv6 router solicitation...).
                if buf.data().first() != Some(&0x45) || buf.data().get(9) != Some(&17) {
                    continue;
                }
                ours += 1;
                if reply.is_empty() && Reflect.process(&mut buf) == Verdict::Forward {
                    reply = buf.data().to_vec();
                }
            }
            let t2 = Instant::now();
            for _ in 0..BATCH {
                tun.send(&reply).expect("tun write");
            }
            let t3 = Instant::now();
            for _ in 0..BATCH {
                socket.recv(&mut inbuf).expect("recv");
            }
            let t4 = Instant::now();
            send_ns += (t1 - t0).as_nanos();
            read_ns += (t2 - t1).as_nanos();
            write_ns += (t3 - t2).as_nanos();
            recv_ns += (t4 - t3).as_nanos();
            n += BATCH as u128;
        }
        let per = |x: u128| x as f64 / n as f64;
        let (s, r, w, v) = (per(send_ns), per(read_ns), per(write_ns), per(recv_ns));
        rows.push(vec![
            payload.to_string(),
            format!("{s:.0}"),
            format!("{r:.0}"),
            format!("{w:.0}"),
            format!("{v:.0}"),
            format!("{:.0}", r + w),
            format!("{:.2}", 1e3 / (r + w)),
            format!("{:.2}", 1e3 / (s + r + w + v)),
        ]);
        cells.push(json!({
            "payload": payload,
            "udp_send_ns": s, "tun_read_ns": r, "tun_write_ns": w, "udp_recv_ns": v,
            "contender_floor_ns": r + w,
            "contender_floor_mpps": 1e3 / (r + w),
            "one_core_round_trip_mpps": 1e3 / (s + r + w + v),
            "packets": n as u64,
        }));
    }
    print_table(
        "Per-packet floor: one syscall each, ns (batches of 64, one thread)",
        &[
            "payload B",
            "UDP send",
            "TUN read",
            "TUN write",
            "UDP recv",
            "read+write",
            "read+write Mpps",
            "all four, Mpps",
        ],
        &rows,
    );
    Value::Array(cells)
}

/// One cell: contender, work, window, payload.
fn cell(contender: Contender, work: Work, window: usize, payload: usize, t: &Timing) -> Value {
    let ifname = "tpbench";
    let running = match start(contender, work, ifname) {
        Ok(r) => r,
        Err(e) => return json!({"contender": contender.name(), "error": e.to_string()}),
    };
    let socket = client_socket().expect("client socket");
    let mut marks: Vec<(ThreadCpu, ThreadCpu, (u64, u64))> = Vec::new();
    let result = client(&socket, window, payload, t, &mut || {
        marks.push((
            thread_cpu(contender.threads()),
            thread_cpu(&["bench-client"]),
            if_drops(&running.ifname),
        ))
    });
    let engine_latency = running
        .engine
        .as_ref()
        .and_then(|(e, _)| e.latency().ok())
        .map(|l| l.engine.percentiles());
    let stopped = running.stop();
    let (cpu, client_cpu, kernel_drops) = match marks.as_slice() {
        [a, b] => (
            b.0.since(&a.0),
            b.1.since(&a.1),
            (b.2 .0 - a.2 .0, b.2 .1 - a.2 .1),
        ),
        _ => Default::default(),
    };
    let pps = result.received as f64 / result.secs;
    let per_packet = |x: u64| x as f64 / result.received.max(1) as f64;
    json!({
        "contender": contender.name(),
        "work": format!("{work:?}").to_lowercase(),
        "window": window,
        "payload": payload,
        "seconds": result.secs,
        "sent": result.sent,
        "received": result.received,
        "pps": pps,
        "rtt": common::percentiles_us(&result.rtt),
        "rtt_distribution": common::distribution(&result.rtt),
        "contender_threads": cpu.threads,
        "contender_cpu_ns_per_packet": per_packet(cpu.cpu_ns),
        "contender_cpu_utilisation": cpu.cpu_ns as f64 / 1e9 / result.secs,
        "contender_voluntary_switches_per_packet": per_packet(cpu.voluntary),
        "contender_involuntary_switches_per_packet": per_packet(cpu.involuntary),
        "client_cpu_ns_per_packet": per_packet(client_cpu.cpu_ns),
        "lost_client_side": result.lost,
        "client_send_errors": result.send_errors,
        "client_timeouts": result.timeouts,
        "kernel_tun_tx_dropped": kernel_drops.0,
        "kernel_tun_rx_dropped": kernel_drops.1,
        "contender_drops": stopped.drops,
        "engine_time_ns": engine_latency.map(|p| json!({"p50": p.p50, "p99": p.p99, "p999": p.p999})),
        "engine_stats": stopped.engine_stats.map(|s| format!("{s:?}")),
        "loop_stats": stopped.loop_stats.map(|s| format!("{s:?}")),
        "stop_us": stopped.stop_time.as_secs_f64() * 1e6,
    })
}

fn run_matrix(
    t: &Timing,
    work: Work,
    contenders: &[Contender],
    windows: &[usize],
    payloads: &[usize],
) -> Value {
    let mut cells = Vec::new();
    let mut rows = Vec::new();
    for &payload in payloads {
        for &window in windows {
            let mut base_pps = None;
            for &contender in contenders {
                let c = cell(contender, work, window, payload, t);
                let pps = c["pps"].as_f64().unwrap_or(0.0);
                if contender == Contender::GuideSync {
                    base_pps = Some(pps);
                }
                let ratio = base_pps.map(|b| pps / b).unwrap_or(f64::NAN);
                let f = |k: &str| c["rtt"][k].as_f64().unwrap_or(f64::NAN);
                rows.push(vec![
                    payload.to_string(),
                    window.to_string(),
                    contender.name(),
                    thousands(pps),
                    format!("{ratio:.2}"),
                    format!("{:.1}", f("p50_us")),
                    format!("{:.1}", f("p99_us")),
                    format!("{:.1}", f("p999_us")),
                    format!(
                        "{:.0}",
                        c["contender_cpu_ns_per_packet"].as_f64().unwrap_or(0.0)
                    ),
                    format!(
                        "{:.2}",
                        c["contender_cpu_utilisation"].as_f64().unwrap_or(0.0)
                    ),
                    format!(
                        "{:.2}",
                        c["contender_voluntary_switches_per_packet"]
                            .as_f64()
                            .unwrap_or(0.0)
                    ),
                    format!(
                        "{}/{}/{}",
                        c["lost_client_side"], c["kernel_tun_tx_dropped"], c["contender_drops"]
                    ),
                ]);
                let mut c = c;
                c["ratio_vs_guide_sync"] = json!(ratio);
                cells.push(c);
            }
        }
    }
    print_table(
        &format!(
            "Real TUN, closed-loop UDP, work = {}",
            format!("{work:?}").to_lowercase()
        ),
        &[
            "payload",
            "window",
            "contender",
            "pps",
            "x sync",
            "RTT p50 µs",
            "p99",
            "p99.9",
            "CPU ns/pkt",
            "cores",
            "sleeps/pkt",
            "lost/kern/own drops",
        ],
        &rows,
    );
    json!({"cells": cells})
}

const ALL: [Contender; 5] = [
    Contender::GuideSync,
    Contender::GuideTokio,
    Contender::Tunpipe(0),
    Contender::Tunpipe(1),
    Contender::Tunpipe(2),
];

fn matrix_reflect(t: &Timing) -> Value {
    run_matrix(t, Work::Reflect, &ALL, &[1, 32, 256], &[64, 1400])
}

fn matrix_seal(t: &Timing) -> Value {
    run_matrix(
        t,
        Work::Seal,
        &[
            Contender::GuideSync,
            Contender::Tunpipe(0),
            Contender::Tunpipe(1),
            Contender::Tunpipe(2),
        ],
        &[32, 256],
        &[64, 1400],
    )
}

/// The spin window (`Config::spin`) against latency and CPU: how long an idle actor spins
/// before it yields and parks. A wake-up costs tens of µs on a small VM.
fn spin_section(t: &Timing) -> Value {
    let mut contenders = vec![Contender::GuideSync];
    for workers in [0usize, 1] {
        for spin in [0u64, 10, 50, 200] {
            contenders.push(Contender::TunpipeSpin(workers, spin));
        }
        contenders.push(Contender::TunpipeReaderSpin(workers));
    }
    run_matrix(t, Work::Reflect, &contenders, &[1, 32], &[64])
}

fn stop_section(t: &Timing) -> Value {
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    let device = TunDevice::new(build_tun("tpstop").expect("tun"));
    for workers in [0usize, 1, 2] {
        let mut h = common::histogram();
        let mut config = Config::default();
        config.workers = workers;
        for _ in 0..t.stop_cycles {
            let engine = Engine::builder()
                .config(config.clone())
                .start(&device)
                .expect("engine");
            // Idle: every actor past its spin window and asleep.
            std::thread::sleep(Duration::from_millis(1));
            let t0 = Instant::now();
            engine.stop().expect("stop");
            h.record(t0.elapsed().as_nanos() as u64).ok();
        }
        let p = common::percentiles_us(&h);
        rows.push(vec![
            format!("tunpipe-w{workers}"),
            h.len().to_string(),
            p["p50_us"].to_string(),
            p["p99_us"].to_string(),
            p["max_us"].to_string(),
            "returns at once, threads joined".into(),
        ]);
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
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..32 {
                        let _ = socket.send(&[0u8; 64]);
                    }
                    while socket.recv(&mut buf).is_ok() {}
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
            .expect("spawn")
    };
    for workers in [0usize, 1, 2] {
        let mut h = common::histogram();
        let mut config = Config::default();
        config.workers = workers;
        let mut in_flight = 0;
        for _ in 0..(t.stop_cycles / 5).max(10) {
            let engine = Engine::builder()
                .config(config.clone())
                .start(&device)
                .expect("engine");
            let deadline = Instant::now() + Duration::from_millis(100);
            while engine.stats().tx_packets < 200 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            let t0 = Instant::now();
            engine.stop().expect("stop");
            h.record(t0.elapsed().as_nanos() as u64).ok();
            in_flight += engine.stats().drop_stopped;
        }
        let p = common::percentiles_us(&h);
        rows.push(vec![
            format!("tunpipe-w{workers}, under load"),
            h.len().to_string(),
            p["p50_us"].to_string(),
            p["p99_us"].to_string(),
            p["max_us"].to_string(),
            format!(
                "{:.1} packets in flight dropped as \"stopped\" per stop",
                in_flight as f64 / h.len().max(1) as f64
            ),
        ]);
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
        let finished = common::wait_until(Duration::from_secs(5), || handle.is_finished());
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

fn idle_section(t: &Timing) -> Value {
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

/// Peak RSS of the CLI (`tunpipe run`, reflect) under closed-loop load: 256 packets of
/// 1400 B in flight.
#[cfg(target_os = "linux")]
fn cli_section(t: &Timing) -> Value {
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    for workers in [0usize, 2] {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tunpipe"))
            .args(["run", "--name", "tpcli", "--ipv4", "10.70.0.1/24"])
            .args(["--workers", &workers.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => return json!({"error": e.to_string()}),
        };
        let mut socket = None;
        common::wait_until(Duration::from_secs(5), || {
            socket = client_socket().ok();
            socket.is_some()
        });
        let Some(socket) = socket else {
            let _ = child.kill();
            let _ = child.wait();
            return json!({"error": "the CLI's TUN never came up"});
        };
        let result = client(&socket, 256, 1400, t, &mut || {});
        let hwm = common::peak_rss_kib_of(child.id());
        // SAFETY: kill takes a pid and a signal number; the child is ours and not yet reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let _ = child.wait();
        let pps = result.received as f64 / result.secs;
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

// ---------------------------------------------------------------------------------------------
// TCP across a bridge of two TUNs in two namespaces (Linux)

#[cfg(target_os = "linux")]
type SpawnRequest = (
    Vec<String>,
    std::sync::mpsc::Sender<io::Result<std::process::Child>>,
);

/// A second namespace with a TUN in it, and a thread that spawns processes there.
#[cfg(target_os = "linux")]
fn other_netns(
    name: &'static str,
    addr: &'static str,
) -> Result<(tun_rs::SyncDevice, std::sync::mpsc::Sender<SpawnRequest>), String> {
    let (dev_tx, dev_rx) = std::sync::mpsc::channel();
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<SpawnRequest>();
    std::thread::spawn(move || {
        let made = unshare_net()
            .map_err(|e| format!("unshare: {e}"))
            .and_then(|()| {
                tun_rs::DeviceBuilder::new()
                    .name(name)
                    .ipv4(addr, 24, None)
                    .mtu(MTU as u16)
                    .build_sync()
                    .map_err(|e| format!("{name}: {e}"))
            });
        let _ = dev_tx.send(made);
        for (argv, reply) in cmd_rx {
            let child = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            let _ = reply.send(child);
        }
    });
    let dev = dev_rx.recv().map_err(|e| e.to_string())??;
    Ok((dev, cmd_tx))
}

#[cfg(target_os = "linux")]
fn spawn_in(
    ns: &std::sync::mpsc::Sender<SpawnRequest>,
    argv: &[&str],
) -> io::Result<std::process::Child> {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.send((argv.iter().map(|s| s.to_string()).collect(), tx))
        .map_err(|_| io::Error::other("netns thread gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("netns thread gone"))?
}

/// Runs iperf3 across the bridge; returns its JSON report.
#[cfg(target_os = "linux")]
fn iperf(ns: &std::sync::mpsc::Sender<SpawnRequest>, secs: u32) -> Result<Value, String> {
    let mut server =
        spawn_in(ns, &["iperf3", "-s", "-1", "-B", "10.60.0.2"]).map_err(|e| e.to_string())?;
    let mut report = Err("iperf3 never connected".to_string());
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let out = std::process::Command::new("iperf3")
            .args(["-c", "10.60.0.2", "-t", &secs.to_string(), "-J"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            report = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string());
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    report
}

#[cfg(target_os = "linux")]
fn tcp_section(t: &Timing) -> Value {
    use std::os::fd::AsRawFd;
    if std::process::Command::new("iperf3")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("iperf3 not installed: tcp section not measured");
        return json!({"error": "iperf3 not installed"});
    }
    let a = match tun_rs::DeviceBuilder::new()
        .name("tpbra")
        .ipv4("10.60.0.1", 24, None)
        .mtu(MTU as u16)
        .build_sync()
    {
        Ok(a) => Arc::new(a),
        Err(e) => return json!({"error": e.to_string()}),
    };
    let (b, ns) = match other_netns("tpbrb", "10.60.0.2") {
        Ok((b, ns)) => (Arc::new(b), ns),
        Err(e) => return json!({"error": e}),
    };
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    let mut base = None;
    let contenders = [
        Contender::GuideSync,
        Contender::Tunpipe(0),
        Contender::Tunpipe(1),
        Contender::Tunpipe(2),
    ];
    for contender in contenders {
        let cpu0 = thread_cpu(contender.threads());
        let (report, cpu) = match contender {
            Contender::Tunpipe(workers) => {
                let mut config = Config::default();
                config.workers = workers;
                let engines = (|| -> Result<(Engine, Engine), String> {
                    use tunpipe::Device;
                    let da = TunDevice::adopt(a.as_raw_fd()).map_err(|e| e.to_string())?;
                    let db = TunDevice::adopt(b.as_raw_fd()).map_err(|e| e.to_string())?;
                    let (a_rx, a_tx) = da.open().map_err(|e| e.to_string())?;
                    let (b_rx, b_tx) = db.open().map_err(|e| e.to_string())?;
                    let ab = Engine::builder()
                        .config(config.clone())
                        .stage(BuiltinStage::Passthrough)
                        .start_halves(a_rx, b_tx)
                        .map_err(|e| e.to_string())?;
                    let ba = Engine::builder()
                        .config(config.clone())
                        .stage(BuiltinStage::Passthrough)
                        .start_halves(b_rx, a_tx)
                        .map_err(|e| e.to_string())?;
                    Ok((ab, ba))
                })();
                match engines {
                    Ok((ab, ba)) => {
                        let report = iperf(&ns, t.iperf_secs);
                        let cpu = thread_cpu(contender.threads()).since(&cpu0);
                        let _ = ab.stop();
                        let _ = ba.stop();
                        (report, cpu)
                    }
                    Err(e) => (Err(e), ThreadCpu::default()),
                }
            }
            _ => {
                // The guide's loop, twice: one thread per direction.
                let stop = Arc::new(AtomicBool::new(false));
                let mut threads = Vec::new();
                for (from, to) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
                    let stop = stop.clone();
                    threads.push(
                        std::thread::Builder::new()
                            .name("guide-sync".into())
                            .spawn(move || {
                                let mut buf = vec![0u8; MTU + 1];
                                while !stop.load(Ordering::Relaxed) {
                                    match from.recv(&mut buf) {
                                        Ok(n) => {
                                            let _ = to.send(&buf[..n]);
                                        }
                                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                        Err(_) => break,
                                    }
                                }
                            })
                            .expect("spawn"),
                    );
                }
                let report = iperf(&ns, t.iperf_secs);
                let cpu = thread_cpu(contender.threads()).since(&cpu0);
                stop.store(true, Ordering::Relaxed);
                // Each blocked loop needs one more packet to see its flag: ping across.
                while threads.iter().any(|t| !t.is_finished()) {
                    let _ = std::process::Command::new("ping")
                        .args(["-c", "1", "-W", "1", "10.60.0.2"])
                        .output();
                }
                for t in threads {
                    let _ = t.join();
                }
                (report, cpu)
            }
        };
        let name = match contender {
            Contender::GuideSync => "guide-sync x2".to_string(),
            c => format!("{} x2", c.name()),
        };
        match report {
            Ok(r) => {
                let gbps = r["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / 1e9;
                let retr = r["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
                let bytes = r["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
                if contender == Contender::GuideSync {
                    base = Some(gbps);
                }
                let ratio = base.map(|b| gbps / b).unwrap_or(f64::NAN);
                let cpu_per_gb = cpu.cpu_ns as f64 / 1e9 / (bytes / 1e9).max(1e-9);
                rows.push(vec![
                    name.clone(),
                    format!("{gbps:.2}"),
                    format!("{ratio:.2}"),
                    retr.to_string(),
                    format!("{cpu_per_gb:.2}"),
                ]);
                cells.push(json!({
                    "contender": name,
                    "gbit_per_s": gbps,
                    "ratio_vs_guide_sync": ratio,
                    "retransmits": retr,
                    "bytes": bytes,
                    "contender_cpu_s_per_gb": cpu_per_gb,
                    "seconds": t.iperf_secs,
                }));
            }
            Err(e) => {
                rows.push(vec![
                    name.clone(),
                    "error".into(),
                    e.clone(),
                    "".into(),
                    "".into(),
                ]);
                cells.push(json!({"contender": name, "error": e}));
            }
        }
    }
    print_table(
        &format!(
            "TCP (iperf3 -t {}) across a bridge of two TUNs in two namespaces, passthrough",
            t.iperf_secs
        ),
        &["bridge", "Gb/s", "x sync", "retransmits", "CPU s per GB"],
        &rows,
    );
    Value::Array(cells)
}

// ---------------------------------------------------------------------------------------------
// The plot

fn plot(cells: &[Value]) {
    let mut panels = Vec::new();
    for payload in [64u64, 1400] {
        for window in [1u64, 32, 256] {
            let curves = cells
                .iter()
                .filter(|c| c["payload"] == payload && c["window"] == window)
                .filter_map(|c| {
                    let name = c["contender"].as_str()?.to_string();
                    let points = c["rtt_distribution"]
                        .as_array()?
                        .iter()
                        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                        .collect::<Vec<_>>();
                    Some((name, points))
                })
                .collect::<Vec<_>>();
            if !curves.is_empty() {
                panels.push(common::Panel {
                    title: format!("{payload} B payload, window {window}"),
                    curves,
                });
            }
        }
    }
    let dir = common::results_dir();
    for (i, chunk) in panels.chunks(3).enumerate() {
        let payload = if i == 0 { 64 } else { 1400 };
        common::write_latency_svg(
            &dir.join(format!("latency-{payload}B.svg")),
            &format!(
                "Client round trip through a real TUN (reflect), {payload} B UDP payload: contender against contender"
            ),
            chunk,
        );
    }
}
