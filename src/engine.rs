//! The engine handle: builds the pipeline, spawns the actors, stops them, and answers for
//! their counters and latency.

use crate::actor::reader::{Downstream, Reader};
use crate::actor::worker::Worker;
use crate::actor::writer::{Mail, Writer};
use crate::actor::{phase, Control, StageRunner};
use crate::config::Config;
use crate::device::{Device, RxHalf, TxHalf};
use crate::error::EngineError;
use crate::link::Backoff;
use crate::pool::{self, PacketBuf};
use crate::stage::{BuiltinStage, Stage, StageFactory};
use crate::stats::{LatencyRecorder, LatencySnapshot, Stats};
use crate::sys;
use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;
use rtrb::RingBuffer;
use std::sync::Arc;
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

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
        let (rx_caps, tx_caps) = (rx.capabilities(), tx.capabilities());
        let ctl = Arc::new(Control::new(
            c.workers,
            rx.interrupter(),
            c.max_stage_panics,
        ));
        let backoff = Backoff {
            spin: c.spin,
            yields: c.yields,
        };
        let pool_size = c.pool_size();
        let free = pool::allocate(pool_size, c.headroom, c.mtu, c.tailroom).map_err(|_| {
            EngineError::OutOfMemory {
                bytes: pool_size.saturating_mul(c.buffer_size()),
            }
        })?;
        let (free_out, free_in) = RingBuffer::<PacketBuf>::new(pool_size);
        let (mail_tx, mailbox) = crossbeam_channel::bounded(1);

        let mut spawner = Spawner::new(ctl.clone(), c.pin);
        let mut writer_inputs = Vec::new();
        let downstream = if c.workers == 0 {
            let (out, input) = RingBuffer::new(c.ring_capacity);
            writer_inputs.push(input);
            Downstream::Inline(StageRunner::new(self.stage.clone(), 0), out)
        } else {
            let mut outs = Vec::with_capacity(c.workers);
            for index in 0..c.workers {
                let (to_worker, input) = RingBuffer::new(c.ring_capacity);
                let (output, from_worker) = RingBuffer::new(c.ring_capacity);
                outs.push(to_worker);
                writer_inputs.push(from_worker);
                let worker = Worker {
                    index,
                    ctl: ctl.clone(),
                    input,
                    output,
                    runner: StageRunner::new(self.stage.clone(), index),
                    batch_size: c.batch,
                    latency: c.latency,
                    backoff,
                };
                spawner.spawn(
                    &format!("tunpipe-worker-{index}"),
                    Role::Worker,
                    move || {
                        worker.run();
                        None
                    },
                )?;
            }
            Downstream::Workers(outs)
        };
        let writer = Writer {
            tx,
            ctl: ctl.clone(),
            inputs: writer_inputs,
            free_out,
            mailbox,
            batch_size: c.batch,
            latency: c.latency,
            backoff,
            engine_time: LatencyRecorder::new(),
            stage_time: LatencyRecorder::new(),
            sending: Vec::with_capacity(c.batch),
            max_batch: tx_caps.max_batch,
        };
        spawner.spawn("tunpipe-writer", Role::Writer, move || Some(writer.run()))?;
        let reader = Reader {
            rx,
            ctl: ctl.clone(),
            free,
            free_in,
            downstream,
            batch: Vec::with_capacity(c.batch),
            batch_size: c.batch,
            mtu: c.mtu,
            headroom: c.headroom,
            latency: c.latency,
            backoff,
            medium: rx_caps.medium,
            max_batch: rx_caps.max_batch,
        };
        spawner.spawn("tunpipe-reader", Role::Reader, move || {
            reader.run();
            None
        })?;
        log::info!(
            "tunpipe engine started: {} worker(s), mtu {}, {} buffers",
            c.workers,
            c.mtu,
            pool_size
        );
        Ok(Engine {
            thread_ids: spawner
                .threads
                .iter()
                .map(|t| t.handle.thread().id())
                .collect(),
            threads: Mutex::new(Some(std::mem::take(&mut spawner.threads))),
            ctl,
            mail: mail_tx,
            final_latency: Mutex::new(None),
            latency_turn: Mutex::new(()),
            reserved_bytes: reserved_bytes(c),
            workers: c.workers,
        })
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

/// Bytes the engine reserves up front for a config: pool, rings and histograms.
pub fn reserved_bytes(c: &Config) -> usize {
    let slot = std::mem::size_of::<PacketBuf>();
    let pool = c.pool_size() * (c.buffer_size() + slot);
    let rings = (c.ring_count() * c.ring_capacity + c.pool_size()) * slot;
    pool + rings + 2 * LatencyRecorder::reserved_bytes()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Reader,
    Worker,
    Writer,
}

struct ActorThread {
    role: Role,
    handle: JoinHandle<Option<LatencySnapshot>>,
}

/// Spawns actor threads; if one fails to spawn, stops and joins the ones already running.
struct Spawner {
    ctl: Arc<Control>,
    pin: bool,
    threads: Vec<ActorThread>,
}

impl Spawner {
    fn new(ctl: Arc<Control>, pin: bool) -> Self {
        Spawner {
            ctl,
            pin,
            threads: Vec::new(),
        }
    }

    fn spawn(
        &mut self,
        name: &str,
        role: Role,
        body: impl FnOnce() -> Option<LatencySnapshot> + Send + 'static,
    ) -> Result<(), EngineError> {
        let (pin, index) = (self.pin, self.threads.len());
        let spawned = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                sys::place_current_thread(index, pin);
                body()
            });
        match spawned {
            Ok(handle) => {
                self.threads.push(ActorThread { role, handle });
                Ok(())
            }
            Err(e) => {
                log::error!("could not spawn {name}: {e}");
                join_in_order(&self.ctl, std::mem::take(&mut self.threads));
                Err(EngineError::Spawn(Arc::new(e)))
            }
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Only reached with threads still here if start failed half-way.
        if !self.threads.is_empty() {
            join_in_order(&self.ctl, std::mem::take(&mut self.threads));
        }
    }
}

/// The stop protocol's joining side: reader first, then workers, then writer, advancing the
/// phase between them so each actor can account for everything still in its input ring.
fn join_in_order(ctl: &Control, threads: Vec<ActorThread>) -> Option<LatencySnapshot> {
    ctl.request_stop();
    let mut threads = threads;
    let mut join = |role: Role| {
        let (actors, rest): (Vec<_>, Vec<_>) = threads.drain(..).partition(|t| t.role == role);
        threads = rest;
        let mut result = None;
        for actor in actors {
            match actor.handle.join() {
                Ok(r) => result = result.or(r),
                // Actors contain stage panics; one escaping is a bug in tunpipe itself.
                Err(_) => log::error!("a tunpipe actor thread panicked"),
            }
        }
        result
    };
    join(Role::Reader);
    ctl.advance(phase::READER_DONE);
    join(Role::Worker);
    ctl.advance(phase::WORKERS_DONE);
    let latency = join(Role::Writer);
    ctl.release_interrupter();
    latency
}

/// A running (or stopped) engine. Dropping it stops it.
///
/// All methods take `&self`, so an `Engine` can be shared (for example in an `Arc`) between
/// a thread that waits on it and one that stops it.
pub struct Engine {
    ctl: Arc<Control>,
    threads: Mutex<Option<Vec<ActorThread>>>,
    thread_ids: Vec<ThreadId>,
    mail: Sender<Mail>,
    final_latency: Mutex<Option<LatencySnapshot>>,
    /// Serializes latency requests (see [`Engine::latency`]).
    latency_turn: Mutex<()>,
    reserved_bytes: usize,
    workers: usize,
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
    /// threads, [`EngineError::StopFromEngineThread`]: the stop is requested, not joined.
    pub fn stop(&self) -> Result<(), EngineError> {
        if self.thread_ids.contains(&thread::current().id()) {
            self.ctl.request_stop();
            return Err(EngineError::StopFromEngineThread);
        }
        self.ctl.request_stop();
        self.join();
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

    /// True once a stop has been requested (by a caller or by a fatal error).
    pub fn is_stopping(&self) -> bool {
        self.ctl.stopping()
    }

    fn join(&self) {
        // Holding the lock while joining makes concurrent stoppers wait for the one that joins.
        let mut threads = self.threads.lock();
        if let Some(threads) = threads.take() {
            let snapshot = join_in_order(&self.ctl, threads).unwrap_or_else(LatencySnapshot::empty);
            *self.final_latency.lock() = Some(snapshot);
            log::info!("tunpipe engine stopped: {:?}", self.stats());
        }
    }

    /// The counters now. Cheap, lock-free, callable any time, also after stop.
    pub fn stats(&self) -> Stats {
        self.ctl.counters.snapshot()
    }

    /// Latency percentiles and histograms: asked of the writer while running (answered at
    /// once even when it is parked), or the final ones after stop.
    ///
    /// # Errors
    /// [`EngineError::Stopping`] if the engine is between its stop request and the end of
    /// the join; ask again after `stop()` returns.
    pub fn latency(&self) -> Result<LatencySnapshot, EngineError> {
        // One request at a time: callers queue here, never in the writer's mailbox, so any
        // number of threads may ask at once and each gets an answer (not a false "stopping").
        let _turn = self.latency_turn.lock();
        if let Some(done) = self.final_latency.lock().as_ref() {
            return Ok(done.clone());
        }
        if self.ctl.stopping() {
            return Err(EngineError::Stopping);
        }
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        // The mailbox holds one request at most (the turn above), so it is never full; it is
        // disconnected only once the writer has left, which a stop does.
        if self.mail.try_send(Mail::Latency(reply_tx)).is_err() {
            return Err(EngineError::Stopping);
        }
        self.ctl.writer_bell.force();
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

    /// Bytes the engine reserved at start: pool, rings and histograms.
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
            .field("workers", &self.workers)
            .field("stopping", &self.is_stopping())
            .field("reserved_bytes", &self.reserved_bytes)
            .finish_non_exhaustive()
    }
}
