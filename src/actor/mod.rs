//! The actors: readers, workers, writers and (for a duplex stage) a timer. Each owns its
//! state; nothing on the hot path is locked but a duplex stage's own lock. They share only the
//! [`Control`] block: the stop phase, counters, doorbells and the timer's deadline.
//!
//! A one-way engine has one reader (outbound) and one writer (its destination, the "outside"
//! of the device it writes). A tunnel has a reader and a writer on each side.

pub(crate) mod reader;
pub(crate) mod timer;
pub(crate) mod worker;
pub(crate) mod writer;

use crate::device::Interrupter;
use crate::error::EngineError;
use crate::link::Doorbell;
use crate::pool::{PacketBuf, Route};
use crate::stage::{
    Action, Direction, DuplexStage, EmitTally, Emitter, Side, Stage, StageFactory, Verdict,
};
use crate::stats::{Counters, StageCounters};
use parking_lot::{Condvar, Mutex};
use rtrb::{Producer, PushError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The stop protocol's phases. Stopping walks down the pipeline so that nothing is left in a
/// ring unaccounted: the readers (and the timer) stop first; workers leave once they have
/// been joined and their rings are empty; the writers leave once the workers have been
/// joined. Packets met after the stop request are counted as dropped ("stopped") instead of
/// processed.
pub(crate) mod phase {
    pub const RUNNING: u8 = 0;
    pub const STOP_REQUESTED: u8 = 1;
    pub const READER_DONE: u8 = 2;
    pub const WORKERS_DONE: u8 = 3;
}

/// "No deadline": the timer sleeps until someone names one.
pub(crate) const NO_DEADLINE: u64 = u64::MAX;

/// What every actor and the engine handle share.
pub(crate) struct Control {
    phase: AtomicU8,
    pub counters: Counters,
    /// By the direction the reader feeds (the inside reader is outbound's).
    pub reader_bells: [Doorbell; 2],
    pub worker_bells: Box<[Doorbell]>,
    /// By the side the writer sends to.
    pub writer_bells: [Doorbell; 2],
    pub timer_bell: Doorbell,
    /// Wake the readers out of their waits in the kernel. Released once the engine is joined,
    /// so that a stopped engine kept for its figures holds no descriptors (a pipe, an eventfd).
    interrupters: Mutex<Vec<Interrupter>>,
    fatal: Mutex<Option<EngineError>>,
    stop_requested: Mutex<bool>,
    stop_requested_cv: Condvar,
    epoch: Instant,
    stage_panics: AtomicU64,
    max_stage_panics: u64,
    /// When the duplex stage's timers next need to run, in ns since `epoch`.
    deadline_ns: AtomicU64,
    /// The host said the network path changed (rebind): the timer tells the stage.
    path_changed: AtomicBool,
}

impl Control {
    pub(crate) fn new(
        workers: usize,
        interrupters: Vec<Interrupter>,
        max_stage_panics: u64,
    ) -> Self {
        Control {
            phase: AtomicU8::new(phase::RUNNING),
            counters: Counters::new(workers),
            reader_bells: Default::default(),
            worker_bells: (0..workers).map(|_| Doorbell::default()).collect(),
            writer_bells: Default::default(),
            timer_bell: Doorbell::default(),
            interrupters: Mutex::new(interrupters),
            fatal: Mutex::new(None),
            stop_requested: Mutex::new(false),
            stop_requested_cv: Condvar::new(),
            epoch: Instant::now(),
            stage_panics: AtomicU64::new(0),
            max_stage_panics,
            deadline_ns: AtomicU64::new(NO_DEADLINE),
            path_changed: AtomicBool::new(false),
        }
    }

    #[inline]
    pub(crate) fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn stopping(&self) -> bool {
        self.phase() >= phase::STOP_REQUESTED
    }

    /// Nanoseconds since the engine started: the clock that packet stamps use.
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn writer_bell(&self, side: Side) -> &Doorbell {
        &self.writer_bells[side.index()]
    }

    pub(crate) fn reader_bell(&self, direction: Direction) -> &Doorbell {
        &self.reader_bells[direction.index()]
    }

    /// Asks every actor to stop: sets the phase, interrupts the readers' waits in the kernel,
    /// and wakes every parked actor. Safe to call from any thread, any number of times.
    pub(crate) fn request_stop(&self) {
        let first = self
            .phase
            .compare_exchange(
                phase::RUNNING,
                phase::STOP_REQUESTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if !first {
            return;
        }
        for interrupter in self.interrupters.lock().iter() {
            interrupter.interrupt();
        }
        self.reader_bells.iter().for_each(Doorbell::force);
        self.worker_bells.iter().for_each(Doorbell::force);
        self.writer_bells.iter().for_each(Doorbell::force);
        self.timer_bell.force();
        *self.stop_requested.lock() = true;
        self.stop_requested_cv.notify_all();
    }

    /// Moves the stop protocol to `next` (called by the one thread that joins the actors) and
    /// wakes everyone so that the actors waiting for it see it.
    pub(crate) fn advance(&self, next: u8) {
        self.phase.fetch_max(next, Ordering::AcqRel);
        self.worker_bells.iter().for_each(Doorbell::force);
        self.writer_bells.iter().for_each(Doorbell::force);
    }

    /// Lets go of the readers' interrupters: called once every actor is joined, when nothing
    /// waits in the kernel any more.
    pub(crate) fn release_interrupters(&self) {
        self.interrupters.lock().clear();
    }

    /// Records a fatal error (the first one wins) and stops the engine.
    pub(crate) fn fail(&self, error: EngineError) {
        log::error!("tunpipe engine stopping: {error}");
        self.fatal.lock().get_or_insert(error);
        self.request_stop();
    }

    pub(crate) fn fatal_error(&self) -> Option<EngineError> {
        self.fatal.lock().clone()
    }

    /// Blocks until someone requests a stop (or a fatal error does).
    pub(crate) fn wait_for_stop_request(&self) {
        let mut requested = self.stop_requested.lock();
        while !*requested {
            self.stop_requested_cv.wait(&mut requested);
        }
    }

    fn note_stage_panic(&self) {
        let panics = self.stage_panics.fetch_add(1, Ordering::AcqRel) + 1;
        if panics > self.max_stage_panics {
            self.fail(EngineError::StagePanics { panics });
        }
    }

    /// The duplex stage's next deadline, in ns since the epoch (`u64::MAX`: none).
    pub(crate) fn deadline_ns(&self) -> u64 {
        self.deadline_ns.load(Ordering::Acquire)
    }

    /// Records the stage's next deadline (asked under the stage's lock, so that the stores are
    /// in the order the stage named them), and wakes the timer when it moved earlier.
    pub(crate) fn set_deadline(&self, deadline: Option<Instant>) {
        let ns = deadline.map_or(NO_DEADLINE, |d| {
            d.saturating_duration_since(self.epoch).as_nanos() as u64
        });
        if ns < self.deadline_ns.swap(ns, Ordering::AcqRel) {
            self.timer_bell.ring();
        }
    }

    /// Tells the timer that the host changed the network path.
    pub(crate) fn note_path_changed(&self) {
        self.path_changed.store(true, Ordering::Release);
        self.timer_bell.force();
    }

    pub(crate) fn take_path_changed(&self) -> bool {
        self.path_changed.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn path_change_pending(&self) -> bool {
        self.path_changed.load(Ordering::Acquire)
    }
}

/// How packets go to the writers: one ring per side (a one-way engine has only the
/// outside's).
pub(crate) struct Outs {
    pub by_side: [Option<Producer<PacketBuf>>; 2],
}

impl Outs {
    /// Slots, by side, left for emitted packets once a batch of `batch` packets (each of
    /// which may go either way) is pushed.
    pub(crate) fn room_after(&self, batch: usize) -> [usize; 2] {
        self.by_side
            .each_ref()
            .map(|ring| ring.as_ref().map_or(0, |r| r.slots().saturating_sub(batch)))
    }

    /// The ring toward the writer a packet of `direction` is routed to.
    pub(crate) fn for_route(
        &mut self,
        direction: Direction,
        route: Route,
    ) -> Option<&mut Producer<PacketBuf>> {
        self.by_side[route_side(direction, route).index()].as_mut()
    }
}

/// The side a packet read travelling `direction` goes to on `route` (a recycled buffer goes
/// home through its direction's writer). Its counts belong to that side's direction: a reply
/// travels, and is counted, the other way.
#[inline]
pub(crate) fn route_side(direction: Direction, route: Route) -> Side {
    match route {
        Route::Back => direction.source(),
        Route::Forward | Route::Recycle => direction.destination(),
    }
}

/// Where a duplex stage's emitted packets come from and go: a reserve of spare buffers (the
/// thread's own pool), and the packets emitted while running a batch.
pub(crate) struct EmitPlace<'a> {
    pub spare: &'a mut Vec<PacketBuf>,
    pub emitted: &'a mut Vec<(Side, PacketBuf)>,
    pub headroom: usize,
    /// The area of an emitted packet: as large as the largest packet either device carries.
    pub area: usize,
    /// Slots, by side, that the rings toward the writers keep for emitted packets.
    pub room: [usize; 2],
}

/// The stage a reader (inline) or a worker runs.
pub(crate) enum StageHost {
    /// A one-way stage: one instance per worker, rebuilt if it panics.
    OneWay(StageRunner),
    /// A duplex stage: one instance for every thread, behind a lock taken per packet.
    Duplex(SharedDuplex),
}

/// A duplex stage shared by the threads that run it.
pub(crate) type SharedDuplex = Arc<Mutex<Box<dyn DuplexStage>>>;

/// Runs a one-way stage on packets, containing its panics.
pub(crate) struct StageRunner {
    /// `None` once the stage panicked and its factory panicked too: a torn instance is never
    /// called again, and the engine is stopping with [`EngineError::StageRebuild`].
    stage: Option<Box<dyn Stage>>,
    factory: StageFactory,
    index: usize,
}

impl StageRunner {
    pub(crate) fn new(factory: StageFactory, index: usize) -> Self {
        StageRunner {
            stage: Some(factory(index)),
            factory,
            index,
        }
    }

    /// Runs the stage on one packet. Returns true to forward it. A drop or a panic is counted
    /// in `counters`; a panic also rebuilds the stage, since its state may be torn.
    #[inline]
    pub(crate) fn run(
        &mut self,
        packet: &mut PacketBuf,
        counters: &StageCounters,
        ctl: &Control,
    ) -> bool {
        let counts = counters.of(Direction::Outbound);
        let Some(stage) = self.stage.as_mut() else {
            // No stage left to run (the engine is stopping): the packet goes no further.
            counts.stopped.add(1);
            return false;
        };
        // Unwinding through the stage costs nothing unless it panics.
        match catch_unwind(AssertUnwindSafe(|| stage.process(packet))) {
            Ok(Verdict::Forward) => true,
            Ok(Verdict::Drop) => {
                counts.drop_stage.add(1);
                false
            }
            Err(_) => {
                counts.drop_stage_panic.add(1);
                self.rebuild(ctl);
                false
            }
        }
    }

    /// Replaces a stage that panicked, whose state may be torn, with a fresh one.
    #[cold]
    fn rebuild(&mut self, ctl: &Control) {
        log::error!(
            "stage on worker {} panicked; packet dropped, stage rebuilt",
            self.index
        );
        // The torn instance is gone whatever happens next.
        self.stage = None;
        let (factory, index) = (&self.factory, self.index);
        match catch_unwind(AssertUnwindSafe(|| factory(index))) {
            Ok(stage) => {
                self.stage = Some(stage);
                ctl.note_stage_panic();
            }
            Err(_) => ctl.fail(EngineError::StageRebuild),
        }
    }
}

/// Runs the stage over a batch of packets travelling `direction`, in place (given as the two
/// slices a ring chunk has): sets each packet's route and counts what became of it, and
/// stamps each with its share of the batch's stage time (one clock pair per batch, not per
/// packet). A duplex stage's emitted packets are left in `emit.emitted` for the caller to
/// send on, stamped with the batch's receive time.
///
/// The stop flag is checked before every packet: once a stop is asked for, the stage is not
/// called again (a slow stage would otherwise hold the stop for a whole batch, and go on with
/// its side effects), and the rest of the batch is counted as stopped.
pub(crate) fn run_stage_batch(
    host: &mut StageHost,
    direction: Direction,
    batch: [&mut [PacketBuf]; 2],
    counters: &StageCounters,
    ctl: &Control,
    latency: bool,
    emit: &mut EmitPlace<'_>,
) {
    let started = latency.then(Instant::now);
    let [first, second] = batch;
    let packets = first.iter_mut().chain(second.iter_mut());
    match host {
        StageHost::OneWay(runner) => {
            for packet in packets {
                if packet.recycled() {
                    continue;
                }
                if ctl.stopping() {
                    counters.of(direction).stopped.add(1);
                    packet.route = Route::Recycle;
                } else if !runner.run(packet, counters, ctl) {
                    packet.route = Route::Recycle;
                }
            }
        }
        StageHost::Duplex(stage) => run_duplex(stage, direction, packets, counters, ctl, emit),
    }
    if let Some(started) = started {
        let count = (first.len() + second.len()).max(1) as u64;
        let each = started.elapsed().as_nanos() as u64 / count;
        for packet in first.iter_mut().chain(second.iter_mut()) {
            packet.stage_ns = each;
        }
    }
}

fn run_duplex<'p>(
    stage: &SharedDuplex,
    direction: Direction,
    packets: impl Iterator<Item = &'p mut PacketBuf>,
    counters: &StageCounters,
    ctl: &Control,
    emit: &mut EmitPlace<'_>,
) {
    let (this, other) = (counters.of(direction), counters.of(direction.reverse()));
    let mut tally = EmitTally::default();
    let emitted_before = emit.emitted.len();
    let mut stamp = 0;
    for packet in packets {
        stamp = packet.received_at;
        if packet.recycled() {
            continue;
        }
        if ctl.stopping() {
            this.stopped.add(1);
            packet.route = Route::Recycle;
            continue;
        }
        let action = {
            let mut stage = stage.lock();
            // The clock is read (if the stage asks) once the lock is held: a stage's timers
            // stamped with a time from before a wait for the lock would come due early.
            let mut out = Emitter {
                spare: emit.spare,
                emitted: emit.emitted,
                now: std::cell::Cell::new(None),
                headroom: emit.headroom,
                capacity: emit.area,
                room: emit.room,
                tally: &mut tally,
            };
            let action = catch_unwind(AssertUnwindSafe(|| {
                stage.process(direction, packet, &mut out)
            }));
            emit.room = out.room;
            action
        };
        packet.route = match action {
            Ok(Action::Forward) => Route::Forward,
            Ok(Action::Replace) => {
                this.held.add(1);
                this.originated.add(1);
                Route::Forward
            }
            Ok(Action::Reply) => {
                this.consumed.add(1);
                other.originated.add(1);
                Route::Back
            }
            Ok(Action::Consume) => {
                this.consumed.add(1);
                Route::Recycle
            }
            Ok(Action::Hold) => {
                this.held.add(1);
                Route::Recycle
            }
            Ok(Action::Drop) => {
                this.drop_stage.add(1);
                Route::Recycle
            }
            Err(_) => {
                // A duplex stage has no factory to rebuild it from, and its protocol state may
                // be torn: the engine stops (the rest of the batch meets `stopping` above).
                this.drop_stage_panic.add(1);
                ctl.fail(EngineError::DuplexStagePanicked {
                    during: match direction {
                        Direction::Outbound => "on an outbound packet",
                        Direction::Inbound => "on an inbound packet",
                    },
                });
                Route::Recycle
            }
        };
    }
    count_emitted(emit, emitted_before, &tally, counters, stamp);
    ctl.set_deadline(stage.lock().next_deadline());
}

/// Counts, in the direction of the side each goes to, what a duplex stage emitted since
/// `before` (originated, or released from the hold) and the rest of its `tally`, and stamps
/// the emitted packets with `received_at`.
fn count_emitted(
    emit: &mut EmitPlace<'_>,
    before: usize,
    tally: &EmitTally,
    counters: &StageCounters,
    received_at: u64,
) {
    let mut emitted = [0u64; 2];
    for (side, packet) in &mut emit.emitted[before..] {
        emitted[side.index()] += 1;
        packet.received_at = received_at;
        packet.stage_ns = 0;
    }
    for side in [Side::Inside, Side::Outside] {
        let i = side.index();
        let counts = counters.of(side.direction());
        let own = emitted[i] - tally.released[i] + tally.no_buffer[i];
        let left_hold = tally.released[i] + tally.released_lost[i] + tally.held_dropped[i];
        if own > 0 {
            counts.originated.add(own);
        }
        if left_hold > 0 {
            counts.unheld.add(left_hold);
        }
        let no_buffer = tally.no_buffer[i] + tally.released_lost[i];
        if no_buffer > 0 {
            counts.drop_no_buffer.add(no_buffer);
        }
        if tally.held_dropped[i] > 0 {
            counts.drop_stage.add(tally.held_dropped[i]);
        }
    }
}

/// Runs a duplex stage's timers or path change (the timer thread's work): `work` gets the
/// stage and an emitter, and the stage's next deadline is recorded afterwards.
pub(crate) fn run_duplex_timers(
    stage: &SharedDuplex,
    counters: &StageCounters,
    ctl: &Control,
    emit: &mut EmitPlace<'_>,
    received_at: u64,
    work: impl FnOnce(&mut dyn DuplexStage, &mut Emitter<'_>),
) {
    let mut tally = EmitTally::default();
    let before = emit.emitted.len();
    {
        let mut guard = stage.lock();
        let mut out = Emitter {
            spare: emit.spare,
            emitted: emit.emitted,
            now: std::cell::Cell::new(None),
            headroom: emit.headroom,
            capacity: emit.area,
            room: emit.room,
            tally: &mut tally,
        };
        if catch_unwind(AssertUnwindSafe(|| work(&mut **guard, &mut out))).is_err() {
            ctl.fail(EngineError::DuplexStagePanicked {
                during: "in its timers",
            });
        }
        ctl.set_deadline(guard.next_deadline());
    }
    count_emitted(emit, before, &tally, counters, received_at);
}

/// Sends a duplex stage's emitted packets to the writers of their sides, and rings the
/// writers it used. A packet whose ring is full is dropped and counted (ring full, in its
/// direction), and its buffer goes back to `spare`.
pub(crate) fn send_emitted(
    emitted: &mut Vec<(Side, PacketBuf)>,
    outs: &mut Outs,
    spare: &mut Vec<PacketBuf>,
    counters: &StageCounters,
    ctl: &Control,
) {
    let mut rung = [false; 2];
    for (side, packet) in emitted.drain(..) {
        let pushed = match outs.by_side[side.index()].as_mut() {
            Some(ring) => ring.push(packet),
            None => Err(PushError::Full(packet)),
        };
        match pushed {
            Ok(()) => rung[side.index()] = true,
            Err(PushError::Full(packet)) => {
                counters.of(side.direction()).drop_ring_full.add(1);
                spare.push(packet);
            }
        }
    }
    for side in [Side::Inside, Side::Outside] {
        if rung[side.index()] {
            ctl.writer_bell(side).ring();
        }
    }
}
