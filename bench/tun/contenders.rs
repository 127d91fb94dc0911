//! The contenders, all doing the same work on the same kind of TUN: the tun-rs guide's
//! synchronous and Tokio loops, and tunpipe with 0, 1 or 2 workers (and its spin variants).

use crate::seal::Sealer;
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tunpipe::stage::Reflect;
use tunpipe::{Config, Engine, PacketBuf, Stage, TunDevice, Verdict};
use tunpipe_testkit::load::{LOCAL, PEER, PORT};
use tunpipe_testkit::tun::{tun, tun_builder};

/// The largest packet, as every contender's buffer is sized.
pub const MTU: usize = tunpipe_testkit::tun::MTU as usize;
/// Room in front of each packet (for headers a stage would push).
pub const HEADROOM: usize = 64;
/// Room behind each packet (for the sealing stage's tag).
pub const TAILROOM: usize = 64;

/// The work every contender does on each packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Work {
    /// tunpipe's `reflect`.
    Reflect,
    /// `reflect`, then ChaCha20-Poly1305: seal the packet in place with the tag pushed into
    /// the tailroom (what a VPN does toward the network), then open it again (what it does
    /// toward the TUN), so the client still gets a valid reply.
    Seal,
}

/// The stage `work` names, as worker `index` (or a guide loop, index 0) runs it.
pub enum WorkStage {
    Reflect(Reflect),
    Seal(Box<Sealer>),
}

impl WorkStage {
    pub fn new(work: Work, index: usize) -> Self {
        match work {
            Work::Reflect => WorkStage::Reflect(Reflect),
            Work::Seal => WorkStage::Seal(Box::new(Sealer::new([index as u8 ^ 0x5a; 32]))),
        }
    }
}

impl Stage for WorkStage {
    fn process(&mut self, packet: &mut PacketBuf) -> Verdict {
        match self {
            WorkStage::Reflect(stage) => stage.process(packet),
            WorkStage::Seal(stage) => stage.process(packet),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Contender {
    GuideSync,
    GuideTokio,
    Tunpipe(usize),
    /// tunpipe with `workers` and a spin window of `spin_us` µs (the default is 50).
    TunpipeSpin(usize, u64),
    /// tunpipe with `workers` and `Config::yield_while_spinning` set the other way from its
    /// default.
    TunpipeOtherSpinPolicy(usize),
}

impl Contender {
    pub fn name(self) -> String {
        match self {
            Contender::GuideSync => "guide-sync".into(),
            Contender::GuideTokio => "guide-tokio".into(),
            Contender::Tunpipe(w) => format!("tunpipe-w{w}"),
            Contender::TunpipeSpin(w, spin) => format!("tunpipe-w{w}-spin{spin}"),
            Contender::TunpipeOtherSpinPolicy(w) => {
                if Config::default().yield_while_spinning {
                    format!("tunpipe-w{w}-busyspin")
                } else {
                    format!("tunpipe-w{w}-yieldspin")
                }
            }
        }
    }

    /// Thread-name prefixes of the contender's threads (what CPU accounting sums).
    pub fn threads(self) -> &'static [&'static str] {
        match self {
            Contender::GuideSync => &["guide-sync"],
            Contender::GuideTokio => &["guide-tokio"],
            Contender::Tunpipe(_)
            | Contender::TunpipeSpin(..)
            | Contender::TunpipeOtherSpinPolicy(_) => &["tunpipe-"],
        }
    }
}

/// What a guide loop counted.
#[derive(Default, Debug, Clone, Copy)]
pub struct LoopStats {
    pub forwarded: u64,
    pub stage_drops: u64,
    pub send_errors: u64,
    /// When the loop left, before its thread dropped the device (closing a TUN tears the
    /// interface down, which takes milliseconds and is not part of stopping).
    pub exited_at: Option<Instant>,
}

/// One contender running on a fresh TUN.
pub struct Running {
    pub contender: Contender,
    pub ifname: String,
    pub engine: Option<(Engine, TunDevice)>,
    pub guide: Option<(Arc<AtomicBool>, JoinHandle<LoopStats>)>,
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

pub fn start(contender: Contender, work: Work, ifname: &str) -> io::Result<Running> {
    let mut running = Running {
        contender,
        ifname: ifname.to_string(),
        engine: None,
        guide: None,
    };
    match contender {
        Contender::GuideSync => {
            let tun = tun(ifname, LOCAL).map_err(io::Error::other)?;
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let handle = std::thread::Builder::new()
                .name("guide-sync".into())
                .spawn(move || {
                    let mut stage = WorkStage::new(work, 0);
                    guide_sync_loop(&tun, &flag, &mut stage)
                })?;
            running.guide = Some((stop, handle));
        }
        Contender::GuideTokio => {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let builder = tun_builder(ifname, LOCAL);
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
                        let mut stage = WorkStage::new(work, 0);
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
        Contender::Tunpipe(_)
        | Contender::TunpipeSpin(..)
        | Contender::TunpipeOtherSpinPolicy(_) => {
            let device = TunDevice::new(tun(ifname, LOCAL).map_err(io::Error::other)?);
            let mut config = Config::default();
            match contender {
                Contender::TunpipeSpin(workers, spin) => {
                    config.workers = workers;
                    config.spin = Duration::from_micros(spin);
                }
                Contender::Tunpipe(workers) => config.workers = workers,
                Contender::TunpipeOtherSpinPolicy(workers) => {
                    config.workers = workers;
                    config.yield_while_spinning = !config.yield_while_spinning;
                }
                _ => {}
            }
            let engine = Engine::builder()
                .config(config)
                .stage_factory(move |index| WorkStage::new(work, index))
                .start(&device)
                .map_err(io::Error::other)?;
            running.engine = Some((engine, device));
        }
    }
    Ok(running)
}

/// How a contender stopped.
pub struct Stopped {
    /// Time from the stop request until the contender's threads were gone.
    pub stop_time: Duration,
    /// Packets the contender itself dropped (engine counters, or the loop's own).
    pub drops: u64,
    pub loop_stats: Option<LoopStats>,
    pub engine_stats: Option<tunpipe::Stats>,
}

impl Running {
    /// Stops the contender. The guide's loops check their flag only between packets, so they
    /// are woken with UDP packets until they notice, as a host would have to.
    pub fn stop(mut self) -> Stopped {
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
