//! Wiring: the pools, rings and actor threads of an engine, for a one-way stage or a duplex
//! one, and the order they are joined in at stop.
//!
//! ```text
//!  one-way:  rx ─► reader ═► [workers] ═► writer ─► tx
//!
//!  tunnel:   inside rx ─► reader-in  ═► [workers] ═► writer-out ─► outside tx
//!            inside tx ◄─ writer-in  ◄═ [workers] ◄═ reader-out ◄─ outside rx
//!                              ▲ timer (the duplex stage's deadlines) ═► both writers
//! ```
//!
//! Every buffer belongs to one pool (a reader's, the timer's or, in a tunnel, a worker's: the
//! reserves a duplex stage emits from), and every writer has a ring back to every pool.

use super::Engine;
use crate::actor::reader::{Downstream, Reader};
use crate::actor::timer::Timer;
use crate::actor::worker::Worker;
use crate::actor::writer::{Mail, Outlet, SendHalf, Writer};
use crate::actor::{
    phase, Control, Emits, Out, Outs, SharedDuplex, StageHost, StageRunner, WriterEnd, STRAIGHT_MAX,
};
use crate::config::Config;
use crate::device::{Capabilities, Rebinder, RxHalf, TxHalf};
use crate::error::EngineError;
use crate::link::Backoff;
use crate::pool::{self, PacketBuf, Pool};
use crate::stage::{Direction, Side, StageFactory};
use crate::stats::{LatencyRecorder, LatencySnapshot};
use crate::sys;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use rtrb::{Consumer, Producer, RingBuffer};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// What a start produced, for the [`Engine`] handle.
pub(super) struct Wired {
    pub ctl: Arc<Control>,
    pub threads: Vec<ActorThread>,
    /// One mailbox per writer, by side.
    pub mail: Vec<(Side, Sender<Mail>)>,
    pub reserved_bytes: usize,
    pub rebinder: Option<Rebinder>,
}

impl Wired {
    pub(super) fn into_engine(self, workers: usize, tunnel: bool) -> Engine {
        Engine {
            thread_ids: self
                .threads
                .iter()
                .map(|t| t.handle.thread().id())
                .collect(),
            threads: Mutex::new(Some(self.threads)),
            joiner: Mutex::new(None),
            ctl: self.ctl,
            mail: self.mail,
            final_latency: Mutex::new(None),
            latency_turn: Mutex::new(()),
            reserved_bytes: self.reserved_bytes,
            workers,
            tunnel,
            rebinder: Mutex::new(self.rebinder),
            balanced: Mutex::new(None),
        }
    }
}

/// Which kind of actor a thread runs, for the join order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Reader,
    Timer,
    Worker,
    Writer,
}

pub(super) struct ActorThread {
    role: Role,
    /// A writer returns its side and its final histograms.
    pub handle: JoinHandle<Option<(Side, LatencySnapshot)>>,
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
        body: impl FnOnce() -> Option<(Side, LatencySnapshot)> + Send + 'static,
    ) -> Result<(), EngineError> {
        let (pin, index) = (self.pin, self.threads.len());
        let spawned = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                super::ENGINE_THREAD.set(true);
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

    fn finish(mut self) -> Vec<ActorThread> {
        std::mem::take(&mut self.threads)
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

/// The stop protocol's joining side: readers and the timer first, then workers, then
/// writers, advancing the phase between them so each actor can account for everything still
/// in its input rings. Returns the writers' final histograms, by the direction each writer
/// completes.
pub(super) fn join_in_order(
    ctl: &Control,
    threads: Vec<ActorThread>,
) -> [Option<LatencySnapshot>; 2] {
    ctl.request_stop();
    let mut threads = threads;
    let mut latency = [None, None];
    let mut join = |roles: &[Role]| {
        let (actors, rest): (Vec<_>, Vec<_>) =
            threads.drain(..).partition(|t| roles.contains(&t.role));
        threads = rest;
        for actor in actors {
            match actor.handle.join() {
                Ok(Some((side, snapshot))) => {
                    latency[side.direction().index()] = Some(snapshot);
                }
                Ok(None) => {}
                // Actors contain stage panics; one escaping is a bug in tunpipe itself.
                Err(_) => log::error!("a tunpipe actor thread panicked"),
            }
        }
    };
    join(&[Role::Reader, Role::Timer]);
    ctl.advance(phase::READER_DONE);
    join(&[Role::Worker]);
    ctl.advance(phase::WORKERS_DONE);
    join(&[Role::Writer]);
    ctl.release_interrupters();
    latency
}

/// Starts `worker` on its own thread.
fn spawn_worker(spawner: &mut Spawner, worker: Worker) -> Result<(), EngineError> {
    spawner.spawn(
        &format!("tunpipe-worker-{}", worker.index),
        Role::Worker,
        move || {
            worker.run();
            None
        },
    )
}

fn backoff(c: &Config) -> Backoff {
    Backoff {
        spin: c.spin,
        yields: c.yields,
        yield_while_spinning: c.yield_while_spinning,
    }
}

/// Allocates a pool of `count` buffers for `home`, each receiving up to `area` bytes.
fn allocate(
    c: &Config,
    count: usize,
    home: u8,
    area: usize,
) -> Result<Vec<PacketBuf>, EngineError> {
    pool::allocate(count, home, c.headroom, area, c.tailroom).map_err(|_| {
        EngineError::OutOfMemory {
            bytes: count.saturating_mul(c.headroom + area + c.tailroom),
        }
    })
}

/// The rings that bring buffers home: for each pool, one ring from each writer, each large
/// enough for the whole pool. Returns the writers' ends (`[writer][home]`) and the pools'
/// ends (`[home][writer]`).
#[allow(clippy::type_complexity)]
fn home_rings(
    pool_sizes: &[usize],
    writers: usize,
) -> (Vec<Vec<Producer<PacketBuf>>>, Vec<Vec<Consumer<PacketBuf>>>) {
    let mut to = (0..writers).map(|_| Vec::new()).collect::<Vec<_>>();
    let mut from = pool_sizes.iter().map(|_| Vec::new()).collect::<Vec<_>>();
    for (home, &size) in pool_sizes.iter().enumerate() {
        for writer in to.iter_mut() {
            let (producer, consumer) = RingBuffer::new(size.max(1));
            writer.push(producer);
            from[home].push(consumer);
        }
    }
    (to, from)
}

/// Bytes one slot of a ring takes.
const SLOT: usize = std::mem::size_of::<PacketBuf>();
/// Bytes one producer's way to a writer keeps for packets going straight to the device.
const STRAIGHT_BYTES: usize = STRAIGHT_MAX * SLOT;
/// Bytes one emitted packet takes while a batch runs (its side beside it).
const EMITTED_SLOT: usize = std::mem::size_of::<(Side, PacketBuf)>();

/// Bytes a one-way engine with `c` reserves: pool, rings and histograms.
pub(super) fn one_way_reserved(c: &Config) -> usize {
    let pool = c.pool_size() * (c.buffer_size() + SLOT);
    let rings = (c.ring_count() * c.ring_capacity + c.pool_size()) * SLOT;
    // A way to the writer per producer (the reader inline, or each worker).
    let straight = c.workers.max(1) * STRAIGHT_BYTES;
    pool + rings + straight + 2 * LatencyRecorder::reserved_bytes()
}

/// Starts a one-way engine: one reader (outbound), N workers running their own instance of
/// the stage (or the stage inline on the reader), one writer.
pub(super) fn one_way<R: RxHalf, T: TxHalf>(
    c: &Config,
    stage: StageFactory,
    rx: R,
    tx: T,
) -> Result<Wired, EngineError> {
    c.check_memory_budget(one_way_reserved(c), 0)?;
    let (rx_caps, tx_caps) = (rx.capabilities(), tx.capabilities());
    let ctl = Arc::new(Control::new(
        c.workers,
        vec![rx.interrupter()],
        c.max_stage_panics,
    ));
    let pool_size = c.pool_size();
    let area = c.mtu + 1;
    let free = allocate(c, pool_size, 0, area)?;
    let (mut to_homes, mut from_writers) = home_rings(&[pool_size], 1);
    let (mail_tx, mailbox) = crossbeam_channel::bounded(1);
    let mut spawner = Spawner::new(ctl.clone(), c.pin);
    let outlet = outlet(c, Side::Outside, tx, tx_caps, &ctl, to_homes.remove(0));
    let mut writer_inputs = Vec::new();
    let downstream = if c.workers == 0 {
        let (out, input) = RingBuffer::new(c.ring_capacity);
        writer_inputs.push(input);
        Downstream::Inline {
            host: StageHost::OneWay(StageRunner::new(stage, 0)),
            outs: toward(Side::Outside, out, outlet.clone()),
        }
    } else {
        let mut outs = Vec::with_capacity(c.workers);
        for index in 0..c.workers {
            let (to_worker, input) = RingBuffer::new(c.ring_capacity);
            let (output, from_worker) = RingBuffer::new(c.ring_capacity);
            outs.push(to_worker);
            writer_inputs.push(from_worker);
            // A one-way stage emits nothing: no spare buffers, no room for emits.
            let worker = Worker {
                index,
                ctl: ctl.clone(),
                inputs: vec![(Direction::Outbound, input)],
                outs: toward(Side::Outside, output, outlet.clone()),
                host: StageHost::OneWay(StageRunner::new(stage.clone(), index)),
                pool: Pool::empty(),
                emits: Emits::new(0, c.headroom, area),
                batch_size: c.batch,
                latency: c.latency,
                backoff: backoff(c),
            };
            spawn_worker(&mut spawner, worker)?;
        }
        Downstream::Workers(outs)
    };
    let writer = writer(c, outlet, writer_inputs, mailbox);
    spawner.spawn("tunpipe-writer", Role::Writer, move || {
        Some((Side::Outside, writer.run()))
    })?;
    let reader = reader(
        c,
        rx,
        rx_caps,
        &ctl,
        Direction::Outbound,
        Pool::new(free, from_writers.remove(0)),
        downstream,
        c.mtu,
        // A one-way stage emits nothing.
        Emits::new(0, c.headroom, area),
    );
    spawner.spawn("tunpipe-reader", Role::Reader, move || {
        reader.run();
        None
    })?;
    Ok(Wired {
        threads: spawner.finish(),
        ctl,
        mail: vec![(Side::Outside, mail_tx)],
        reserved_bytes: one_way_reserved(c),
        rebinder: None,
    })
}

/// The halves of a tunnel's two devices.
pub(super) struct TunnelHalves<IR, IT, OR, OT> {
    pub inside_rx: IR,
    pub inside_tx: IT,
    pub outside_rx: OR,
    pub outside_tx: OT,
}

/// The sizes of a tunnel's pools and rings.
struct TunnelSizes {
    /// Buffers of each reader.
    reader_pool: usize,
    /// Spare buffers of the timer and of each worker, for what the stage emits: a batch, or
    /// the stage's burst if larger.
    reserve: usize,
    /// Slots of a ring that carries replies and emitted packets: a batch of replies and a
    /// whole reserve of emitted packets (a handshake's flush) fit at once.
    side_ring: usize,
    /// Slots of a worker's ring toward a writer: forwarded packets and a reserve emitted.
    worker_out_ring: usize,
    /// The area a buffer receives into: the largest packet either device carries, plus one.
    area: usize,
}

impl TunnelSizes {
    fn new(c: &Config, overhead: usize, burst: usize) -> Self {
        // What each reader's packets can fill: its rings forward (to the writer inline, or to
        // each worker), the ring back, and a batch in each actor's hands.
        let reserve = c.batch.max(burst);
        let forward = c.ring_capacity * c.workers.max(1);
        let actors = c.workers + 5;
        TunnelSizes {
            // Inline, a reader's own pool is also the stage's reserve.
            reader_pool: forward + c.batch + c.batch * actors + reserve,
            reserve,
            side_ring: c.batch + reserve,
            worker_out_ring: c.ring_capacity + reserve,
            area: c.mtu + overhead + 1,
        }
    }

    /// Where a thread that runs the stage (a reader inline, a worker, the timer) keeps what it
    /// emits during one batch: a reply for each of the batch's packets, and a whole reserve
    /// (the stage's burst). The `Emitter` emits no more than this holds, so a burst the stage
    /// names goes out whole only if it does.
    fn emits(&self, c: &Config) -> Emits {
        Emits::new(self.emits_capacity(c), c.headroom, self.area)
    }

    fn emits_capacity(&self, c: &Config) -> usize {
        c.batch + self.reserve
    }

    fn reserved_bytes(&self, c: &Config) -> usize {
        let buffer = c.headroom + self.area + c.tailroom + SLOT;
        // The readers', the timer's and each worker's emits.
        let emits = (3 + c.workers) * self.emits_capacity(c) * EMITTED_SLOT;
        let pools = 2 * self.reader_pool + (1 + c.workers) * self.reserve;
        let rings = if c.workers == 0 {
            2 * (c.ring_capacity + self.side_ring)
        } else {
            2 * c.workers * c.ring_capacity + 2 * c.workers * self.worker_out_ring
        } + 2 * self.side_ring;
        // A way to each writer from each producer (the readers inline, or the workers; and
        // the timer).
        let producers = if c.workers == 0 { 3 } else { c.workers + 1 };
        let straight = 2 * producers * STRAIGHT_BYTES;
        // Home rings: each writer has one back to every pool, as large as that pool.
        pools * buffer
            + (rings + 2 * pools) * SLOT
            + emits
            + straight
            + 4 * LatencyRecorder::reserved_bytes()
    }
}

/// Bytes a tunnel with `c` and a stage adding `overhead` bytes, emitting `burst` packets at
/// once, reserves.
pub(super) fn tunnel_reserved(c: &Config, overhead: usize, burst: usize) -> usize {
    TunnelSizes::new(c, overhead, burst).reserved_bytes(c)
}

/// Starts a tunnel: a reader and a writer on each device, the duplex stage shared by both
/// readers (inline) or by N workers fed by both, and the timer that runs its deadlines.
pub(super) fn tunnel<IR: RxHalf, IT: TxHalf, OR: RxHalf, OT: TxHalf>(
    c: &Config,
    stage: SharedDuplex,
    halves: TunnelHalves<IR, IT, OR, OT>,
) -> Result<Wired, EngineError> {
    let (overhead, burst, state) = (stage.overhead(), stage.burst(), stage.state_bytes());
    let sizes = TunnelSizes::new(c, overhead, burst);
    let engine_bytes = sizes.reserved_bytes(c);
    c.check_memory_budget(engine_bytes, state)?;
    let TunnelHalves {
        inside_rx,
        inside_tx,
        outside_rx,
        outside_tx,
    } = halves;
    let caps = [
        (inside_rx.capabilities(), inside_tx.capabilities()),
        (outside_rx.capabilities(), outside_tx.capabilities()),
    ];
    let rebinder = outside_rx.rebinder();
    let ctl = Arc::new(Control::new(
        c.workers,
        vec![inside_rx.interrupter(), outside_rx.interrupter()],
        c.max_stage_panics,
    ));
    // A deadline the stage names before any packet (say, a keepalive due at start) is kept.
    ctl.publish_deadline(&*stage);
    // Pools: 0 the inside reader's (outbound), 1 the outside reader's (inbound), 2 the
    // timer's, then one per worker.
    let mut pool_sizes = vec![sizes.reader_pool, sizes.reader_pool, sizes.reserve];
    pool_sizes.extend((0..c.workers).map(|_| sizes.reserve));
    let mut pools = Vec::new();
    for (home, &size) in pool_sizes.iter().enumerate() {
        pools.push(allocate(c, size, home as u8, sizes.area)?);
    }
    let (to_homes, mut from_writers) = home_rings(&pool_sizes, 2);
    let mut pools: Vec<Pool> = pools
        .into_iter()
        .zip(from_writers.drain(..))
        .map(|(free, returns)| Pool::new(free, returns))
        .collect();
    let mut homes = to_homes.into_iter();
    let outlet_in = outlet(
        c,
        Side::Inside,
        inside_tx,
        caps[0].1,
        &ctl,
        homes.next().expect("home rings of the inside writer"),
    );
    let outlet_out = outlet(
        c,
        Side::Outside,
        outside_tx,
        caps[1].1,
        &ctl,
        homes.next().expect("home rings of the outside writer"),
    );
    let ends: [Arc<dyn WriterEnd>; 2] = [outlet_in.clone(), outlet_out.clone()];
    // Inputs of each writer, by side.
    let mut writer_inputs: [Vec<Consumer<PacketBuf>>; 2] = Default::default();
    let mut ring_to = |side: Side, slots: usize| {
        let (producer, consumer) = RingBuffer::new(slots);
        writer_inputs[side.index()].push(consumer);
        Out::new(producer, ends[side.index()].clone())
    };
    let timer_outs = Outs {
        by_side: [
            Some(ring_to(Side::Inside, sizes.side_ring)),
            Some(ring_to(Side::Outside, sizes.side_ring)),
        ],
    };
    let mut spawner = Spawner::new(ctl.clone(), c.pin);
    let mut downstreams: Vec<Downstream> = Vec::new();
    if c.workers == 0 {
        for direction in Direction::BOTH {
            let mut by_side = [None, None];
            by_side[direction.destination().index()] =
                Some(ring_to(direction.destination(), c.ring_capacity));
            by_side[direction.source().index()] =
                Some(ring_to(direction.source(), sizes.side_ring));
            downstreams.push(Downstream::Inline {
                host: StageHost::Duplex(stage.clone()),
                outs: Outs { by_side },
            });
        }
    } else {
        let mut to_workers: [Vec<Producer<PacketBuf>>; 2] = Default::default();
        let worker_pools: Vec<Pool> = pools.drain(3..).collect();
        for (index, pool) in worker_pools.into_iter().enumerate() {
            let mut inputs = Vec::new();
            for direction in Direction::BOTH {
                let (to_worker, input) = RingBuffer::new(c.ring_capacity);
                to_workers[direction.index()].push(to_worker);
                inputs.push((direction, input));
            }
            let outs = Outs {
                by_side: [
                    Some(ring_to(Side::Inside, sizes.worker_out_ring)),
                    Some(ring_to(Side::Outside, sizes.worker_out_ring)),
                ],
            };
            let worker = Worker {
                index,
                ctl: ctl.clone(),
                inputs,
                outs,
                host: StageHost::Duplex(stage.clone()),
                pool,
                emits: sizes.emits(c),
                batch_size: c.batch,
                latency: c.latency,
                backoff: backoff(c),
            };
            spawn_worker(&mut spawner, worker)?;
        }
        let [outbound, inbound] = to_workers;
        downstreams.push(Downstream::Workers(outbound));
        downstreams.push(Downstream::Workers(inbound));
    }
    let timer_pool = pools.remove(2);
    let inbound_pool = pools.remove(1);
    let outbound_pool = pools.remove(0);
    let [inside_inputs, outside_inputs] = writer_inputs;
    let mut mail = Vec::new();
    let mut mailbox = |side: Side| {
        let (mail_tx, mailbox) = crossbeam_channel::bounded(1);
        mail.push((side, mail_tx));
        mailbox
    };
    let writer_in = writer(c, outlet_in, inside_inputs, mailbox(Side::Inside));
    let writer_out = writer(c, outlet_out, outside_inputs, mailbox(Side::Outside));
    spawner.spawn("tunpipe-writer-in", Role::Writer, move || {
        Some((Side::Inside, writer_in.run()))
    })?;
    spawner.spawn("tunpipe-writer-out", Role::Writer, move || {
        Some((Side::Outside, writer_out.run()))
    })?;
    let timer = Timer {
        ctl: ctl.clone(),
        stage,
        pool: timer_pool,
        outs: timer_outs,
        emits: sizes.emits(c),
    };
    spawner.spawn("tunpipe-timer", Role::Timer, move || {
        timer.run();
        None
    })?;
    let mut downstreams = downstreams.into_iter();
    let reader_in = reader(
        c,
        inside_rx,
        caps[0].0,
        &ctl,
        Direction::Outbound,
        outbound_pool,
        downstreams.next().expect("the outbound downstream"),
        c.mtu,
        sizes.emits(c),
    );
    let reader_out = reader(
        c,
        outside_rx,
        caps[1].0,
        &ctl,
        Direction::Inbound,
        inbound_pool,
        downstreams.next().expect("the inbound downstream"),
        c.mtu + overhead,
        sizes.emits(c),
    );
    spawner.spawn("tunpipe-reader-in", Role::Reader, move || {
        reader_in.run();
        None
    })?;
    spawner.spawn("tunpipe-reader-out", Role::Reader, move || {
        reader_out.run();
        None
    })?;
    Ok(Wired {
        threads: spawner.finish(),
        ctl,
        mail,
        reserved_bytes: engine_bytes + state,
        rebinder,
    })
}

/// Outs with one ring, toward `side`'s writer (`end`).
fn toward(side: Side, ring: Producer<PacketBuf>, end: Arc<dyn WriterEnd>) -> Outs {
    let mut by_side = [None, None];
    by_side[side.index()] = Some(Out::new(ring, end));
    Outs { by_side }
}

/// The send half of the writer toward `side`.
fn outlet<T: TxHalf>(
    c: &Config,
    side: Side,
    tx: T,
    caps: Capabilities,
    ctl: &Arc<Control>,
    homes: Vec<Producer<PacketBuf>>,
) -> Arc<Outlet<T>> {
    let half = SendHalf {
        tx,
        homes,
        latency: c.latency,
        engine_time: LatencyRecorder::new(),
        stage_time: LatencyRecorder::new(),
        max_batch: caps.max_batch,
    };
    Arc::new(Outlet::new(side, ctl.clone(), half))
}

fn writer<T: TxHalf>(
    c: &Config,
    outlet: Arc<Outlet<T>>,
    inputs: Vec<Consumer<PacketBuf>>,
    mailbox: Receiver<Mail>,
) -> Writer<T> {
    Writer {
        outlet,
        inputs,
        mailbox,
        batch_size: c.batch,
        backoff: backoff(c),
        sending: Vec::with_capacity(c.batch),
    }
}

#[allow(clippy::too_many_arguments)]
fn reader<R: RxHalf>(
    c: &Config,
    rx: R,
    caps: Capabilities,
    ctl: &Arc<Control>,
    direction: Direction,
    pool: Pool,
    downstream: Downstream,
    mtu: usize,
    emits: Emits,
) -> Reader<R> {
    Reader {
        rx,
        ctl: ctl.clone(),
        direction,
        pool,
        downstream,
        batch: Vec::with_capacity(c.batch),
        emits,
        batch_size: c.batch,
        mtu,
        headroom: c.headroom,
        latency: c.latency,
        backoff: backoff(c),
        medium: caps.medium,
        max_batch: caps.max_batch,
    }
}
