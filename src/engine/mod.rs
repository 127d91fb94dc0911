//! The engine handle: builds the pipeline, spawns the actors, stops them, and answers for
//! their counters and latency.

mod path;
mod wiring;

use crate::actor::writer::Mail;
use crate::actor::Control;
use crate::config::Config;
use crate::device::{Device, RxHalf, TxHalf};
use crate::error::EngineError;
use crate::stage::{BuiltinStage, Direction, DuplexStage, Side, Stage, StageFactory};
use crate::stats::{LatencySnapshot, Stats};
use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;
use path::PathChanges;
use std::sync::Arc;
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};
use wiring::{join_in_order, Absent, ActorThread, Halves, StageNeeds, StagePlan};

/// Sets up an [`Engine`].
///
/// ```
/// use tunpipe::{Engine, BuiltinStage, MemoryDevice};
/// let (device, _to_engine, _from_engine) = MemoryDevice::new(64, 2048);
/// let engine = Engine::builder().stage(BuiltinStage::Passthrough).start(&device)?;
/// engine.stop()?;
/// # Ok::<(), tunpipe::EngineError>(())
/// ```
#[must_use]
pub struct Builder {
    config: Config,
    stage: StageFactory,
}

impl Builder {
    /// Uses `config` (validated at start).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Runs `stage`: a [`BuiltinStage`], or any [`Stage`] that can be cloned, a per-packet
    /// closure included. Each worker gets its own clone (and a clone replaces one that
    /// panicked):
    ///
    /// ```
    /// use tunpipe::{Engine, MemoryDevice, PacketBuf, Verdict};
    /// let (device, _to_engine, _from_engine) = MemoryDevice::new(64, 2048);
    /// let engine = Engine::builder()
    ///     .stage(|packet: &mut PacketBuf| {
    ///         packet.data_mut()[8] = 64; // rewrite the TTL, say
    ///         Verdict::Forward
    ///     })
    ///     .start(&device)?;
    /// # engine.stop()?;
    /// # Ok::<(), tunpipe::EngineError>(())
    /// ```
    pub fn stage(mut self, stage: impl IntoStageFactory) -> Self {
        self.stage = stage.into_factory();
        self
    }

    /// Runs the stage that `factory` builds for each worker, given the worker's index (0 when
    /// the stage runs inline on the reader): for stages with per-worker state. The factory is
    /// called again to replace an instance that panicked.
    pub fn stage_factory<S: Stage + 'static>(
        mut self,
        factory: impl Fn(usize) -> S + Send + Sync + 'static,
    ) -> Self {
        self.stage = Arc::new(move |worker| Box::new(factory(worker)) as Box<dyn Stage>);
        self
    }

    /// Opens `device` and starts the engine on both of its halves.
    ///
    /// # Errors
    /// An invalid config, a device that cannot be opened, or a thread that cannot be spawned.
    pub fn start<D: Device>(self, device: &D) -> Result<Engine, EngineError> {
        self.config.validate()?;
        let (rx, tx) = device.open().map_err(EngineError::device)?;
        self.start_halves(rx, tx)
    }

    /// Starts the engine reading from `rx` and writing to `tx`, which may belong to different
    /// devices: reading one TUN and writing another makes a bridge.
    ///
    /// # Errors
    /// An invalid config, or a thread that cannot be spawned.
    pub fn start_halves<R: RxHalf, T: TxHalf>(self, rx: R, tx: T) -> Result<Engine, EngineError> {
        let c = &self.config;
        c.validate()?;
        let halves = Halves {
            inside_rx: rx,
            inside_tx: None::<Absent>,
            outside_rx: None::<Absent>,
            outside_tx: tx,
        };
        let wired = wiring::start(c, StagePlan::OneWay(self.stage), halves)?;
        log::info!(
            "tunpipe engine started: {} worker(s), mtu {}, {} buffers",
            c.workers,
            c.mtu,
            c.pool_size()
        );
        Ok(wired.into_engine(c.workers, false))
    }

    /// Starts a tunnel: `stage` (a [`DuplexStage`], such as WireGuard) between `inside` (a
    /// TUN) and `outside` (a UDP socket). Outbound packets are read from the inside and
    /// written to the outside, inbound ones the other way; both directions start and stop as
    /// one engine. The stage set with [`Builder::stage`] is not used. `Config::mtu` is the
    /// inside MTU: the outside's buffers are sized for it plus the stage's overhead.
    ///
    /// # Errors
    /// An invalid config, a device that cannot be opened, or a thread that cannot be spawned.
    pub fn start_tunnel<I: Device, O: Device>(
        self,
        stage: impl DuplexStage + 'static,
        inside: &I,
        outside: &O,
    ) -> Result<Engine, EngineError> {
        self.config.validate()?;
        let (inside_rx, inside_tx) = inside.open().map_err(EngineError::device)?;
        let (outside_rx, outside_tx) = outside.open().map_err(EngineError::device)?;
        self.start_tunnel_halves(stage, (inside_rx, inside_tx), (outside_rx, outside_tx))
    }

    /// As [`Builder::start_tunnel`], on device halves already opened.
    ///
    /// # Errors
    /// An invalid config, or a thread that cannot be spawned.
    pub fn start_tunnel_halves<IR: RxHalf, IT: TxHalf, OR: RxHalf, OT: TxHalf>(
        self,
        stage: impl DuplexStage + 'static,
        inside: (IR, IT),
        outside: (OR, OT),
    ) -> Result<Engine, EngineError> {
        let c = &self.config;
        c.validate()?;
        let halves = Halves {
            inside_rx: inside.0,
            inside_tx: Some(inside.1),
            outside_rx: Some(outside.0),
            outside_tx: outside.1,
        };
        let wired = wiring::start(c, StagePlan::Duplex(Arc::new(stage)), halves)?;
        log::info!(
            "tunpipe tunnel started: {} worker(s), inside mtu {}",
            c.workers,
            c.mtu
        );
        Ok(wired.into_engine(c.workers, true))
    }
}

/// What [`Builder::stage`] takes: a [`BuiltinStage`], or any [`Stage`] that is `Clone` (a
/// closure over `&mut PacketBuf` included), one clone per worker.
pub trait IntoStageFactory {
    /// How to build the stage for each worker.
    #[doc(hidden)]
    fn into_factory(self) -> StageFactory;
}

impl IntoStageFactory for BuiltinStage {
    fn into_factory(self) -> StageFactory {
        self.factory()
    }
}

impl<S: Stage + Clone + Sync + 'static> IntoStageFactory for S {
    fn into_factory(self) -> StageFactory {
        Arc::new(move |_| Box::new(self.clone()))
    }
}

thread_local! {
    /// Set on every actor thread of every engine.
    pub(crate) static ENGINE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True on a thread an engine runs (a reader, worker, writer or timer, and so in any stage or
/// log callback called from one). A host's stop path uses it to request a stop instead of
/// waiting for a thread that is its own caller.
pub fn on_engine_thread() -> bool {
    ENGINE_THREAD.get()
}

/// Bytes a one-way engine with `c` reserves up front: pool, rings and histograms.
pub fn reserved_bytes(c: &Config) -> usize {
    wiring::reserved(c, StageNeeds::ONE_WAY)
}

/// Bytes a tunnel with `c` and `stage` reserves up front: its pools, rings and histograms,
/// and the stage's own state ([`DuplexStage::state_bytes`]).
pub fn tunnel_reserved_bytes(c: &Config, stage: &dyn DuplexStage) -> usize {
    tunnel_engine_bytes(c, stage.overhead(), stage.burst()) + stage.state_bytes()
}

/// The engine's part of [`tunnel_reserved_bytes`] (pools, rings and histograms) for a stage
/// that declares this `overhead` ([`DuplexStage::overhead`]) and `burst`
/// ([`DuplexStage::burst`]): what a host can check before it builds the stage.
pub fn tunnel_engine_bytes(c: &Config, overhead: usize, burst: usize) -> usize {
    let needs = StageNeeds {
        both_ways: true,
        overhead,
        burst,
    };
    wiring::reserved(c, needs)
}

/// A running (or stopped) engine. Dropping it stops it.
///
/// All methods take `&self`, so an `Engine` can be shared (for example in an `Arc`) between
/// a thread that waits on it and one that stops it.
pub struct Engine {
    ctl: Arc<Control>,
    threads: Mutex<Option<Vec<ActorThread>>>,
    thread_ids: Vec<ThreadId>,
    /// The thread joining the actors, while it does: a stop it makes again from inside (a log
    /// callback that calls stop) returns instead of waiting for itself.
    joiner: Mutex<Option<ThreadId>>,
    /// Each writer's mailbox, by the side it writes.
    mail: Vec<(Side, Sender<Mail>)>,
    /// The writers' histograms once the engine is joined, by direction.
    final_latency: Mutex<Option<[Option<LatencySnapshot>; 2]>>,
    /// Serializes latency requests (see [`Engine::latency`]).
    latency_turn: Mutex<()>,
    reserved_bytes: usize,
    workers: usize,
    tunnel: bool,
    /// A tunnel's path changes ([`Engine::rebind`]). Its device is released at the end of
    /// the join, so that a stopped engine holds no socket (and no port).
    path: Arc<PathChanges>,
    /// Whether every direction balanced when the engine was joined ([`Engine::balanced`]).
    balanced: Mutex<Option<bool>>,
}

impl Engine {
    /// A builder with the default config and the `reflect` stage.
    pub fn builder() -> Builder {
        Builder {
            config: Config::default(),
            stage: BuiltinStage::Reflect.factory(),
        }
    }

    /// Stops the engine and returns once every thread is joined and the device halves are
    /// dropped: after it returns, the engine no longer touches the device's fd.
    ///
    /// Several callers may stop at once: one joins, the others wait for it.
    ///
    /// # Errors
    /// The fatal error that stopped the engine, if one did. From one of the engine's own
    /// threads, or from a callback inside this engine's own stop on the same thread (a log
    /// callback), [`EngineError::StopFromEngineThread`]: the stop is requested, not joined.
    pub fn stop(&self) -> Result<(), EngineError> {
        let me = thread::current().id();
        if self.thread_ids.contains(&me) || *self.joiner.lock() == Some(me) {
            self.ctl.request_stop();
            return Err(EngineError::StopFromEngineThread);
        }
        self.ctl.request_stop();
        let _joined_here = self.join();
        #[cfg(feature = "strict-balance")]
        if _joined_here && self.balanced() == Some(false) && !thread::panicking() {
            panic!(
                "the engine stopped unbalanced: outbound {:?}, inbound {:?}",
                self.direction_stats(Direction::Outbound),
                self.direction_stats(Direction::Inbound)
            );
        }
        match self.ctl.fatal_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Blocks until the engine is stopped by someone else, or by a fatal error, then joins it.
    ///
    /// # Errors
    /// As [`Engine::stop`].
    pub fn wait(&self) -> Result<(), EngineError> {
        if self.thread_ids.contains(&thread::current().id()) {
            return Err(EngineError::StopFromEngineThread);
        }
        self.ctl.wait_for_stop_request();
        self.stop()
    }

    /// Whether the engine kept its books: once it is stopped and joined, `Some(true)` when in
    /// each direction every packet read or made was written, dropped with a reason, or
    /// consumed, and none is still held ([`Stats::balanced`]); `None` before. Checked at every
    /// stop, in every build: `Some(false)` is a bug in the engine (logged as an error; with
    /// the test-only feature `strict-balance`, the stop panics).
    pub fn balanced(&self) -> Option<bool> {
        *self.balanced.lock()
    }

    /// True once a stop has been requested (by a caller or by a fatal error).
    pub fn is_stopping(&self) -> bool {
        self.ctl.stopping()
    }

    /// Joins the engine's threads, unless another call already has; true if this one did.
    fn join(&self) -> bool {
        // Holding the lock while joining makes concurrent stoppers wait for the one that joins.
        let mut threads = self.threads.lock();
        let Some(threads) = threads.take() else {
            return false;
        };
        *self.joiner.lock() = Some(thread::current().id());
        let snapshots = join_in_order(&self.ctl, threads);
        self.ctl.counters.settle_held_at_stop();
        self.path.release();
        *self.final_latency.lock() = Some(snapshots);
        log::info!("tunpipe engine stopped: {:?}", self.stats());
        let balanced = Direction::BOTH.iter().all(|&d| {
            let s = self.direction_stats(d);
            s.balanced() && s.held == 0
        });
        if !balanced {
            log::error!(
                "tunpipe engine stopped unbalanced (a bug): outbound {:?}, inbound {:?}",
                self.direction_stats(Direction::Outbound),
                self.direction_stats(Direction::Inbound)
            );
        }
        *self.balanced.lock() = Some(balanced);
        *self.joiner.lock() = None;
        true
    }

    /// The counters now, of both directions together (a one-way engine has only the
    /// outbound one). Cheap, lock-free, callable any time, also after stop.
    pub fn stats(&self) -> Stats {
        self.ctl.counters.total()
    }

    /// The counters of one direction: for a tunnel, outbound (inside to outside) or inbound.
    /// Conservation holds in each.
    pub fn direction_stats(&self, direction: Direction) -> Stats {
        self.ctl.counters.snapshot(direction)
    }

    /// True for an engine started with [`Builder::start_tunnel`].
    pub fn is_tunnel(&self) -> bool {
        self.tunnel
    }

    /// Latency percentiles and histograms of both directions together: asked of the writers
    /// while running (answered at once even when they are parked), or the final ones after
    /// stop.
    ///
    /// # Errors
    /// [`EngineError::Stopping`] if the engine is between its stop request and the end of
    /// the join; ask again after `stop()` returns.
    pub fn latency(&self) -> Result<LatencySnapshot, EngineError> {
        let [outbound, inbound] = self.latencies()?;
        Ok(match (outbound, inbound) {
            (Some(mut a), Some(b)) => {
                a.add(&b);
                a
            }
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => LatencySnapshot::empty(),
        })
    }

    /// The latency of one direction (the writer that completes it), as [`Engine::latency`].
    ///
    /// # Errors
    /// As [`Engine::latency`].
    pub fn direction_latency(&self, direction: Direction) -> Result<LatencySnapshot, EngineError> {
        let mut all = self.latencies()?;
        Ok(all[direction.index()]
            .take()
            .unwrap_or_else(LatencySnapshot::empty))
    }

    fn latencies(&self) -> Result<[Option<LatencySnapshot>; 2], EngineError> {
        // One request at a time: callers queue here, never in a writer's mailbox, so any
        // number of threads may ask at once and each gets an answer (not a false "stopping").
        let _turn = self.latency_turn.lock();
        if let Some(done) = self.final_latency.lock().as_ref() {
            return Ok(done.clone());
        }
        let mut answers = [None, None];
        for (side, mailbox) in &self.mail {
            answers[side.direction().index()] = Some(self.ask_latency(*side, mailbox)?);
        }
        Ok(answers)
    }

    fn ask_latency(
        &self,
        side: Side,
        mailbox: &Sender<Mail>,
    ) -> Result<LatencySnapshot, EngineError> {
        if self.ctl.stopping() {
            return Err(EngineError::Stopping);
        }
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        // The mailbox holds one request at most (the turn above), so it is never full; it is
        // disconnected only once the writer has left, which a stop does.
        if mailbox.try_send(Mail::Latency(reply_tx)).is_err() {
            return Err(EngineError::Stopping);
        }
        self.ctl.writer_bell(side).force();
        // A request that lands after the writer's last look at its mailbox is never
        // answered, so wait in short slices and give up as soon as a stop is under way,
        // instead of blocking a host's UI thread. A running writer answers between two
        // batches; the deadline is only a backstop against a bug.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match reply_rx.recv_timeout(Duration::from_millis(5)) {
                Ok(snapshot) => return Ok(snapshot),
                Err(RecvTimeoutError::Timeout)
                    if !self.ctl.stopping() && Instant::now() < deadline => {}
                Err(_) => return Err(EngineError::Stopping),
            }
        }
    }

    /// Tells a tunnel that the network path changed (a phone moved between Wi-Fi and
    /// cellular, or woke): returns at once, and a thread of its own, never a reader or
    /// writer, looks the endpoints' hosts up again, gives the outside device a new socket
    /// (the same port if it can; tried every 0.5 s, 10 times, while that fails), and has the
    /// stage start a handshake from it. If no peer answers within 5 s, the socket moves to a
    /// fresh port and the peers are told again (some NATs stop forwarding an old port after
    /// a change). A call while one is under way makes it start over. The engine keeps
    /// running throughout; a stop never waits for a lookup. See `engine/path.rs`.
    ///
    /// # Errors
    /// [`EngineError::Unsupported`] when the engine has no outside device that can be
    /// rebound (a one-way engine, say); [`EngineError::Spawn`] when no thread could be made
    /// for it; [`EngineError::Stopping`] once a stop is under way.
    pub fn rebind(&self) -> Result<(), EngineError> {
        if self.ctl.stopping() {
            return Err(EngineError::Stopping);
        }
        if !self.path.can_rebind() {
            return Err(EngineError::Unsupported(
                "this engine has no outside device that can be rebound",
            ));
        }
        self.path
            .start()
            .map_err(|e| EngineError::Spawn(Arc::new(e)))
    }

    /// Whether a path change that [`Engine::rebind`] started is still under way (looking up
    /// hosts, making a socket, or waiting for a peer's answer before it moves to a fresh port).
    pub fn rebinding(&self) -> bool {
        self.path.running()
    }

    /// Suspends the engine, for a host whose network is gone or which is going to sleep (iOS
    /// `sleep()`, or a path that is not satisfied): until [`Engine::resume`], no thread reads
    /// the TUN or the socket (the kernel keeps what comes, up to its queue's size), no timer
    /// fires, and packets still in the rings are dropped and counted as `drop_suspended`.
    /// Every thread sleeps without a timeout: a suspended engine makes no wake-ups. A stop
    /// still returns at once. Suspending a suspended engine does nothing.
    ///
    /// Returns at once. A tunnel's timer begins the suspension within milliseconds, once the
    /// stage has sent what it owes ([`crate::stage::DuplexStage::suspending`]: a keepalive
    /// for data just received, without which a WireGuard peer starts a handshake 15 s later).
    ///
    /// A tunnel keeps its sessions: after a resume, one younger than WireGuard's
    /// `REJECT_AFTER_TIME` (180 s, on a clock that counts the device's sleep) carries data at
    /// once, an older one is renegotiated with the first packet.
    ///
    /// # Errors
    /// [`EngineError::Stopping`] once a stop is under way.
    pub fn suspend(&self) -> Result<(), EngineError> {
        if self.ctl.stopping() {
            return Err(EngineError::Stopping);
        }
        if self.ctl.suspend(self.tunnel) {
            log::info!("tunpipe engine suspended");
        }
        Ok(())
    }

    /// Ends a suspension ([`Engine::suspend`]): the threads read and send again, and timers
    /// that came due meanwhile run at once. Resuming an engine that is not suspended does
    /// nothing. A host whose network changed meanwhile calls [`Engine::rebind`] too.
    ///
    /// # Errors
    /// [`EngineError::Stopping`] once a stop is under way.
    pub fn resume(&self) -> Result<(), EngineError> {
        if self.ctl.stopping() {
            return Err(EngineError::Stopping);
        }
        if self.ctl.resume() {
            log::info!("tunpipe engine resumed");
        }
        Ok(())
    }

    /// Whether the engine is suspended ([`Engine::suspend`]), or about to be.
    pub fn is_suspended(&self) -> bool {
        self.ctl.suspension() != crate::actor::Suspension::Running
    }

    /// Bytes the engine reserved at start: pool, rings and histograms, and a tunnel stage's
    /// own state (its peers).
    pub fn reserved_bytes(&self) -> usize {
        self.reserved_bytes
    }

    /// Worker threads (0: the stage runs inline on the reader).
    pub fn workers(&self) -> usize {
        self.workers
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::debug!("engine dropped after: {e}");
        }
    }
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("tunnel", &self.tunnel)
            .field("workers", &self.workers)
            .field("stopping", &self.is_stopping())
            .field("reserved_bytes", &self.reserved_bytes)
            .finish_non_exhaustive()
    }
}
