//! Wiring: the pools, rings and actor threads of an engine, and the order they are joined in
//! at stop. There is one topology, built in one place ([`start`]) with its sizes worked out
//! and checked in one place ([`Sizes`]): a one-way engine is a tunnel with only the outbound
//! direction, no timer, and a stage that emits nothing.
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

use super::path::PathChanges;
use super::Engine;
use crate::actor::reader::{Downstream, Offer, Reader};
use crate::actor::timer::Timer;
use crate::actor::worker::Worker;
use crate::actor::writer::{Mail, Outlet, SendHalf, Writer};
use crate::actor::{
    phase, Control, Emits, Out, Outs, SharedDuplex, StageHost, StageRunner, WriterEnd, STRAIGHT_MAX,
};
use crate::config::Config;
use crate::device::{Interrupter, RxHalf, TxHalf};
use crate::error::ConfigError;
use crate::error::EngineError;
use crate::link::Backoff;
use crate::pool::{self, PacketBuf, Pool};
use crate::stage::{DeadlineBell, Direction, Side, StageFactory};
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
    pub path: Arc<PathChanges>,
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
            path: self.path,
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

/// The stage an engine is built around: a one-way engine is a tunnel with one direction, no
/// timer and a stage that emits nothing.
pub(super) enum StagePlan {
    /// One instance per thread that runs it (a worker, or the reader inline), rebuilt from
    /// the factory if it panics; outbound only.
    OneWay(StageFactory),
    /// One instance shared by every thread that runs it, guarding its own state; both
    /// directions, and a timer for its deadlines.
    Duplex(SharedDuplex),
}

impl StagePlan {
    fn needs(&self) -> StageNeeds {
        match self {
            StagePlan::OneWay(_) => StageNeeds::ONE_WAY,
            StagePlan::Duplex(stage) => StageNeeds {
                both_ways: true,
                overhead: stage.overhead(),
                burst: stage.burst(),
            },
        }
    }

    /// The stage as the thread of worker `index` (or a reader inline, 0) runs it.
    fn host(&self, index: usize) -> StageHost {
        match self {
            StagePlan::OneWay(factory) => {
                StageHost::OneWay(StageRunner::new(factory.clone(), index))
            }
            StagePlan::Duplex(stage) => StageHost::Duplex(stage.clone()),
        }
    }

    fn state_bytes(&self) -> usize {
        match self {
            StagePlan::OneWay(_) => 0,
            StagePlan::Duplex(stage) => stage.state_bytes(),
        }
    }
}

/// What the sizes depend on besides the config: what the stage declares.
#[derive(Clone, Copy)]
pub(super) struct StageNeeds {
    /// Both directions, replies and emitted packets, and a timer (a duplex stage).
    pub both_ways: bool,
    /// Bytes the stage adds to a packet on its way out ([`crate::DuplexStage::overhead`]).
    pub overhead: usize,
    /// Packets the stage may emit at once ([`crate::DuplexStage::burst`]).
    pub burst: usize,
}

impl StageNeeds {
    pub(super) const ONE_WAY: StageNeeds = StageNeeds {
        both_ways: false,
        overhead: 0,
        burst: 0,
    };
}

/// Every pool and ring size of an engine, from the config and the stage's needs: the one
/// place they are worked out, checked ([`Sizes::check`]) and counted in the reserved bytes.
///
/// Each reader has a pool, and so (for what a duplex stage emits) do the timer and each
/// worker. The rings: a reader's forward ring (to each worker, or inline to the writer of its
/// destination), inline a reply ring to the writer of its source, each worker's ring toward
/// every writer, and the timer's toward every writer. Every writer has a ring home to every
/// pool, as large as that pool.
#[derive(Debug, Clone, PartialEq)]
struct Sizes {
    /// Directions, and so readers and writers: 1 (one-way) or 2 (a tunnel).
    directions: usize,
    /// A timer runs the stage's deadlines (a duplex stage).
    timer: bool,
    workers: usize,
    batch: usize,
    /// Packets the stage may emit at once.
    burst: usize,
    /// Buffers of each reader.
    reader_pool: usize,
    /// Spare buffers of the timer and of each worker, for what the stage emits: a batch, or
    /// the stage's burst if larger (0: the stage emits nothing).
    reserve: usize,
    /// Where a thread that runs the stage keeps what it emits during one batch (see
    /// [`Sizes::emits`]); 0 for a stage that emits nothing.
    emitted: usize,
    /// Slots of a reader's ring to a worker, or inline to its destination's writer.
    forward_ring: usize,
    /// Slots of a ring that carries replies and emitted packets (inline to a reader's
    /// source, and the timer's): a batch of replies and a whole reserve fit at once. 0 when
    /// there are none.
    reply_ring: usize,
    /// Slots of a worker's ring toward a writer: a ring of forwarded packets and a reserve
    /// emitted.
    worker_out_ring: usize,
    /// The area a buffer receives into: the largest packet either device carries, plus one.
    area: usize,
}

impl Sizes {
    fn new(c: &Config, needs: StageNeeds) -> Self {
        let directions = if needs.both_ways { 2 } else { 1 };
        let timer = needs.both_ways;
        let reserve = if needs.both_ways {
            c.batch.max(needs.burst)
        } else {
            0
        };
        let emitted = if needs.both_ways {
            c.batch + reserve
        } else {
            0
        };
        let forward_ring = c.ring_capacity;
        Sizes {
            directions,
            timer,
            workers: c.workers,
            batch: c.batch,
            burst: needs.burst,
            reader_pool: c.reader_pool(directions, timer, emitted),
            reserve,
            emitted,
            forward_ring,
            reply_ring: if needs.both_ways {
                c.batch + reserve
            } else {
                0
            },
            worker_out_ring: forward_ring + reserve,
            area: c.mtu + needs.overhead + 1,
        }
    }

    /// Checks the invariants the actors rely on:
    /// - a reader's pool holds what its forward rings do, so that the rings fill (and the
    ///   reader waits on them) before the pool runs dry;
    /// - a burst the stage names goes out whole: the `Emitter` emits no more than the room a
    ///   batch leaves in the ring toward a writer, no more than [`Sizes::emits`] holds, and
    ///   from the emitting thread's spare buffers, so each of these holds the burst.
    fn check(&self) -> Result<(), ConfigError> {
        let forward = self.forward_ring * self.workers.max(1);
        if self.reader_pool < forward {
            return Err(ConfigError::new(
                "pool_buffers",
                format!(
                    "pool_buffers {} is smaller than the {forward} packets a reader's rings \
                     can hold",
                    self.reader_pool
                ),
            ));
        }
        if !self.timer {
            // A one-way stage emits nothing.
            return Ok(());
        }
        // A worker's batch is at most a batch, and at most what its input ring holds.
        let worker_batch = self.batch.min(self.forward_ring);
        let room = [
            self.reply_ring.saturating_sub(self.batch),
            self.worker_out_ring.saturating_sub(worker_batch),
        ];
        let burst = self.burst;
        if room.iter().any(|&r| r < burst)
            || self.emitted < self.batch + burst
            || self.reserve < burst
        {
            return Err(ConfigError::new(
                "batch",
                format!(
                    "batch {}: the engine's rings cannot take the stage's burst of {burst} \
                     whole (a bug in tunpipe's sizes)",
                    self.batch
                ),
            ));
        }
        Ok(())
    }

    /// The pools, by home: each reader's (by direction), then the timer's, then each
    /// worker's (only for a stage that emits).
    fn pools(&self) -> Vec<usize> {
        let mut pools = vec![self.reader_pool; self.directions];
        if self.timer {
            pools.push(self.reserve);
        }
        if self.reserve > 0 {
            pools.extend((0..self.workers).map(|_| self.reserve));
        }
        pools
    }

    /// Producers' ways to writers, each with its ring's slots.
    fn rings(&self) -> Vec<usize> {
        let writers = self.directions;
        let mut rings = Vec::new();
        if self.workers == 0 {
            for _ in 0..self.directions {
                rings.push(self.forward_ring);
                if self.reply_ring > 0 {
                    rings.push(self.reply_ring);
                }
            }
        } else {
            rings.extend((0..self.workers * writers).map(|_| self.worker_out_ring));
        }
        if self.timer {
            rings.extend((0..writers).map(|_| self.reply_ring));
        }
        rings
    }

    /// Where a thread that runs the stage (a reader inline, a worker, the timer) keeps what
    /// it emits during one batch: a reply for each of the batch's packets, and a whole
    /// reserve (the stage's burst).
    fn emits(&self, c: &Config) -> Emits {
        Emits::new(self.emitted, c.headroom, self.area)
    }

    fn reserved_bytes(&self, c: &Config) -> usize {
        let writers = self.directions;
        let buffer = c.headroom + self.area + c.tailroom + SLOT;
        let pools: usize = self.pools().iter().sum();
        let ways = self.rings();
        let to_workers = self.directions * self.workers * self.forward_ring;
        // Each writer's home rings hold every pool.
        let rings = ways.iter().sum::<usize>() + to_workers + writers * pools;
        let emitters = self.directions + self.workers + usize::from(self.timer);
        pools * buffer
            + rings * SLOT
            + emitters * self.emitted * SLOT
            + ways.len() * STRAIGHT_BYTES
            + 2 * writers * LatencyRecorder::reserved_bytes()
    }
}

/// Bytes an engine with `c` around a stage with `needs` reserves: pools, rings and
/// histograms.
pub(super) fn reserved(c: &Config, needs: StageNeeds) -> usize {
    Sizes::new(c, needs).reserved_bytes(c)
}

/// A device half a one-way engine does not have: its inside writer and outside reader.
pub(super) enum Absent {}

impl RxHalf for Absent {
    fn recv(&mut self, _: &mut PacketBuf) -> std::io::Result<()> {
        match *self {}
    }

    fn wait_readable(&mut self) -> std::io::Result<()> {
        match *self {}
    }

    fn interrupter(&self) -> Interrupter {
        match *self {}
    }

    fn rearm(&mut self) {
        match *self {}
    }
}

impl TxHalf for Absent {
    fn send(&mut self, _: &PacketBuf) -> std::io::Result<()> {
        match *self {}
    }
}

/// The device halves an engine runs on: a one-way engine reads the inside and writes the
/// outside; a tunnel has all four.
pub(super) struct Halves<IR, IT, OR, OT> {
    pub inside_rx: IR,
    pub inside_tx: Option<IT>,
    pub outside_rx: Option<OR>,
    pub outside_tx: OT,
}

/// Starts an engine: a reader per direction, a writer per side it writes, the stage inline on
/// the readers or on N workers (each fed by every reader), and for a duplex stage the timer
/// that runs its deadlines.
pub(super) fn start<IR: RxHalf, IT: TxHalf, OR: RxHalf, OT: TxHalf>(
    c: &Config,
    stage: StagePlan,
    halves: Halves<IR, IT, OR, OT>,
) -> Result<Wired, EngineError> {
    let needs = stage.needs();
    let sizes = Sizes::new(c, needs);
    sizes.check()?;
    let engine_bytes = sizes.reserved_bytes(c);
    let state = stage.state_bytes();
    c.check_memory_budget(engine_bytes, state)?;
    let Halves {
        inside_rx,
        inside_tx,
        outside_rx,
        outside_tx,
    } = halves;
    debug_assert_eq!(
        outside_rx.is_some() && inside_tx.is_some(),
        needs.both_ways,
        "a tunnel's halves for a duplex stage, a one-way engine's for a one-way one"
    );
    let directions: &[Direction] = if needs.both_ways {
        &Direction::BOTH
    } else {
        &[Direction::Outbound]
    };
    let rebinder = outside_rx.as_ref().and_then(RxHalf::rebinder);
    let mut interrupters = vec![inside_rx.interrupter()];
    interrupters.extend(outside_rx.as_ref().map(RxHalf::interrupter));
    let ctl = Arc::new(Control::new(c.workers, interrupters, c.max_stage_panics));
    let duplex = match &stage {
        StagePlan::Duplex(stage) => Some(stage.clone()),
        _ => None,
    };
    let path = PathChanges::new(ctl.clone(), duplex, rebinder);
    if let StagePlan::Duplex(stage) = &stage {
        // A deadline the stage names before any packet (say, a keepalive due at start) is
        // kept.
        ctl.publish_deadline(&**stage);
        stage.attach(DeadlineBell {
            ctl: Arc::downgrade(&ctl),
        });
    }

    // Pools by home (see `Sizes::pools`), and each writer's rings home to them.
    let pool_sizes = sizes.pools();
    let mut free = Vec::new();
    for (home, &size) in pool_sizes.iter().enumerate() {
        free.push(allocate(c, size, home as u8, sizes.area)?);
    }
    let (to_homes, from_writers) = home_rings(&pool_sizes, directions.len());
    let mut pools = free
        .into_iter()
        .zip(from_writers)
        .map(|(free, returns)| Pool::new(free, returns))
        .collect::<Vec<_>>()
        .into_iter();
    let reader_pools: Vec<Pool> = directions.iter().map_while(|_| pools.next()).collect();
    let timer_pool = sizes.timer.then(|| pools.next()).flatten();
    let mut worker_pools = pools;

    // The writers' send halves, by side; a one-way engine writes only the outside.
    let mut to_homes = to_homes.into_iter();
    let mut homes = || to_homes.next().expect("home rings for every writer");
    let outlet_out = outlet(c, Side::Outside, outside_tx, &ctl, homes());
    let outlet_in = inside_tx.map(|tx| outlet(c, Side::Inside, tx, &ctl, homes()));
    let ends: [Option<Arc<dyn WriterEnd>>; 2] = [
        outlet_in.clone().map(|o| o as Arc<dyn WriterEnd>),
        Some(outlet_out.clone()),
    ];
    // Each writer's inputs, by side, and a producer's way to a side's writer (none where no
    // writer is).
    let mut writer_inputs: [Vec<Consumer<PacketBuf>>; 2] = Default::default();
    let mut ring_to = |side: Side, slots: usize| {
        let end = ends[side.index()].clone()?;
        let (producer, consumer) = RingBuffer::new(slots);
        writer_inputs[side.index()].push(consumer);
        Some(Out::new(producer, end))
    };

    // The timer's ways first: a writer takes its inputs in this order.
    let timer = match (&stage, timer_pool) {
        (StagePlan::Duplex(stage), Some(pool)) => Some(Timer {
            ctl: ctl.clone(),
            stage: stage.clone(),
            pool,
            outs: Outs {
                by_side: [Side::Inside, Side::Outside].map(|side| ring_to(side, sizes.reply_ring)),
            },
            emits: sizes.emits(c),
        }),
        _ => None,
    };

    let mut spawner = Spawner::new(ctl.clone(), c.pin);
    let mut downstreams: Vec<Downstream> = Vec::new();
    if c.workers == 0 {
        for &direction in directions {
            let mut by_side = [None, None];
            by_side[direction.destination().index()] =
                ring_to(direction.destination(), sizes.forward_ring);
            if sizes.reply_ring > 0 {
                by_side[direction.source().index()] = ring_to(direction.source(), sizes.reply_ring);
            }
            downstreams.push(Downstream::Inline {
                host: stage.host(0),
                outs: Outs { by_side },
            });
        }
    } else {
        let mut to_workers: [Vec<Producer<PacketBuf>>; 2] = Default::default();
        for index in 0..c.workers {
            let mut inputs = Vec::new();
            for &direction in directions {
                let (to_worker, input) = RingBuffer::new(sizes.forward_ring);
                to_workers[direction.index()].push(to_worker);
                inputs.push((direction, input));
            }
            let outs = Outs {
                by_side: [Side::Inside, Side::Outside]
                    .map(|side| ring_to(side, sizes.worker_out_ring)),
            };
            let worker = Worker {
                index,
                ctl: ctl.clone(),
                inputs,
                outs,
                host: stage.host(index),
                pool: worker_pools.next().unwrap_or_else(Pool::empty),
                emits: sizes.emits(c),
                batch_size: c.batch,
                latency: c.latency,
                backoff: backoff(c),
            };
            spawn_worker(&mut spawner, worker)?;
        }
        for &direction in directions {
            downstreams.push(Downstream::Workers(std::mem::take(
                &mut to_workers[direction.index()],
            )));
        }
    }
    // Writers, then the timer, then the readers: each starts once what it feeds is running.
    let [inside_inputs, outside_inputs] = writer_inputs;
    let mut mail = Vec::new();
    let mut mailbox = |side: Side| {
        let (mail_tx, mailbox) = crossbeam_channel::bounded(1);
        mail.push((side, mail_tx));
        mailbox
    };
    let two = needs.both_ways;
    if let Some(outlet_in) = outlet_in {
        let writer_in = writer(c, outlet_in, inside_inputs, mailbox(Side::Inside));
        spawner.spawn(
            &name("writer", Side::Inside, two),
            Role::Writer,
            move || Some((Side::Inside, writer_in.run())),
        )?;
    }
    let writer_out = writer(c, outlet_out, outside_inputs, mailbox(Side::Outside));
    spawner.spawn(
        &name("writer", Side::Outside, two),
        Role::Writer,
        move || Some((Side::Outside, writer_out.run())),
    )?;
    if let Some(timer) = timer {
        spawner.spawn("tunpipe-timer", Role::Timer, move || {
            timer.run();
            None
        })?;
    }
    // Pools and downstreams are both in the readers' order: the inside's (outbound) first.
    let mut readers = reader_pools.into_iter().zip(downstreams);
    let mut feeds = || {
        readers
            .next()
            .expect("a pool and a downstream for every reader")
    };
    let (pool, downstream) = feeds();
    let emits = sizes.emits(c);
    let reader_in = reader(
        c,
        inside_rx,
        &ctl,
        Direction::Outbound,
        pool,
        downstream,
        c.mtu,
        emits,
    );
    let reader_out = outside_rx.map(|rx| {
        let (pool, downstream) = feeds();
        let mtu = c.mtu + needs.overhead;
        reader(
            c,
            rx,
            &ctl,
            Direction::Inbound,
            pool,
            downstream,
            mtu,
            sizes.emits(c),
        )
    });
    spawner.spawn(
        &name("reader", Side::Inside, two),
        Role::Reader,
        move || {
            reader_in.run();
            None
        },
    )?;
    if let Some(reader_out) = reader_out {
        spawner.spawn(
            &name("reader", Side::Outside, two),
            Role::Reader,
            move || {
                reader_out.run();
                None
            },
        )?;
    }
    Ok(Wired {
        threads: spawner.finish(),
        ctl,
        mail,
        reserved_bytes: engine_bytes + state,
        path,
    })
}

/// An actor thread's name: `tunpipe-reader`, or in a tunnel `tunpipe-reader-in` for the
/// inside's (within the kernel's 15 bytes).
fn name(role: &str, side: Side, two_sides: bool) -> String {
    match (two_sides, side) {
        (false, _) => format!("tunpipe-{role}"),
        (true, Side::Inside) => format!("tunpipe-{role}-in"),
        (true, Side::Outside) => format!("tunpipe-{role}-out"),
    }
}

/// The send half of the writer toward `side`.
fn outlet<T: TxHalf>(
    c: &Config,
    side: Side,
    tx: T,
    ctl: &Arc<Control>,
    homes: Vec<Producer<PacketBuf>>,
) -> Arc<Outlet<T>> {
    let caps = tx.capabilities();
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
    ctl: &Arc<Control>,
    direction: Direction,
    pool: Pool,
    downstream: Downstream,
    mtu: usize,
    emits: Emits,
) -> Reader<R> {
    let caps = rx.capabilities();
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
        offer: Offer::new(caps.max_batch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(burst: usize) -> StageNeeds {
        StageNeeds {
            both_ways: true,
            overhead: 32,
            burst,
        }
    }

    fn configs() -> impl Iterator<Item = Config> {
        let mut all = Vec::new();
        for workers in 0..=3 {
            for batch in [1, 7, 64, 256] {
                for ring_capacity in [1, 16, 256, 4096] {
                    all.push(Config {
                        workers,
                        batch,
                        ring_capacity,
                        ..Config::default()
                    });
                }
            }
        }
        all.into_iter()
    }

    #[test]
    fn a_one_way_engine_is_sized_as_its_config_says() {
        for c in configs() {
            let sizes = Sizes::new(&c, StageNeeds::ONE_WAY);
            assert_eq!(sizes.pools(), vec![c.pool_size()], "{c:?}");
            assert_eq!(
                sizes.rings().len(),
                c.workers.max(1),
                "one way to the writer each"
            );
            assert_eq!(
                (sizes.emitted, sizes.reply_ring, sizes.timer),
                (0, 0, false)
            );
            sizes.check().unwrap();
        }
    }

    /// The invariant holds for every shape and burst, past the default reserve (a batch)
    /// included; and the check does fail when a ring is one slot short of a burst.
    #[test]
    fn every_ring_an_emitting_thread_uses_takes_the_stages_burst_whole() {
        for c in configs() {
            for burst in [0, 1, c.batch, c.batch + 1, 256, 1000] {
                let sizes = Sizes::new(&c, tunnel(burst));
                sizes
                    .check()
                    .unwrap_or_else(|e| panic!("{c:?} burst {burst}: {e}"));
                let mut short = sizes.clone();
                short.reply_ring = c.batch + burst - 1;
                if burst > 0 {
                    assert_eq!(short.check().unwrap_err().field, "batch");
                }
                let mut short = sizes.clone();
                short.worker_out_ring = c.batch.min(c.ring_capacity) + burst - 1;
                if burst > 0 {
                    assert!(short.check().is_err(), "{c:?} burst {burst}");
                }
            }
        }
    }

    /// The automatic sizes, worked by hand: what the rings hold plus a batch per actor (and
    /// inline, a tunnel's reserve for what the stage emits).
    #[test]
    fn the_automatic_pools_hold_the_rings_and_a_batch_per_actor() {
        let c = Config::default();
        assert_eq!((c.ring_capacity, c.batch), (256, 64));
        // A reader and a writer.
        assert_eq!(
            Sizes::new(&c, StageNeeds::ONE_WAY).reader_pool,
            256 + 2 * 64
        );
        let two = Config {
            workers: 2,
            ..c.clone()
        };
        // Two rings in and two out; a reader, two workers, a writer.
        assert_eq!(
            Sizes::new(&two, StageNeeds::ONE_WAY).reader_pool,
            4 * 256 + 4 * 64
        );
        // Two readers, two writers and the timer; a batch of replies and a burst of 256.
        let sizes = Sizes::new(&c, tunnel(256));
        assert_eq!(sizes.reader_pool, 256 + 5 * 64 + (64 + 256));
        assert_eq!(
            (sizes.reserve, sizes.reply_ring, sizes.worker_out_ring),
            (256, 320, 512)
        );
    }

    #[test]
    fn a_tunnel_takes_pool_buffers_and_refuses_too_few() {
        let c = Config {
            pool_buffers: 5000,
            ..Config::default()
        };
        assert_eq!(Sizes::new(&c, tunnel(256)).pools()[..2], [5000, 5000]);
        let c = Config {
            pool_buffers: 10,
            ..Config::default()
        };
        let e = Sizes::new(&c, tunnel(256)).check().unwrap_err();
        assert_eq!(e.field, "pool_buffers", "{e}");
    }

    /// What is counted is what is built: a pool per reader, the timer and each worker; a ring
    /// from each producer to each writer.
    #[test]
    fn a_tunnels_pools_and_rings_are_counted_as_built() {
        let c = Config {
            workers: 2,
            ..Config::default()
        };
        let sizes = Sizes::new(&c, tunnel(256));
        assert_eq!(sizes.pools().len(), 2 + 1 + 2);
        // Each worker's two ways, and the timer's two.
        assert_eq!(sizes.rings().len(), 2 * 2 + 2);
        let inline = Sizes::new(&Config::default(), tunnel(256));
        assert_eq!(inline.pools().len(), 3);
        // Each reader's forward and reply rings, and the timer's two.
        assert_eq!(inline.rings().len(), 2 * 2 + 2);
    }
}
