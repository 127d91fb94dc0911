//! The stage host: how a reader (inline) or a worker runs a one-way or duplex stage over a
//! batch, how the timer runs a duplex stage's timers, and where what a duplex stage emits
//! comes from and goes.

use super::{Control, Outs};
use crate::error::EngineError;
use crate::pool::{PacketBuf, Route};
use crate::stage::{
    Action, Direction, DuplexStage, EmitTally, Emitter, Side, Stage, StageFactory, Verdict,
};
use crate::stats::{DropReason, Outcome, StageCounters};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

/// What a thread that runs a duplex stage (a reader inline, a worker, the timer) keeps for the
/// packets the stage emits: the packets emitted while running a batch (allocated once), and
/// the shape of an emitted packet.
pub(crate) struct Emits {
    emitted: Vec<PacketBuf>,
    headroom: usize,
    /// The area of an emitted packet: as large as the largest packet either device carries.
    area: usize,
}

impl Emits {
    /// Room for `capacity` packets emitted per batch, each with `headroom` and `area` bytes.
    pub(crate) fn new(capacity: usize, headroom: usize, area: usize) -> Emits {
        Emits {
            emitted: Vec::with_capacity(capacity),
            headroom,
            area,
        }
    }

    /// Where one batch's emitted packets come from (`spare`, the thread's own buffers) and
    /// go, with `room` slots, by side, left for them in the rings toward the writers.
    pub(crate) fn place<'a>(
        &'a mut self,
        spare: &'a mut Vec<PacketBuf>,
        room: [usize; 2],
    ) -> EmitPlace<'a> {
        EmitPlace {
            spare,
            emitted: &mut self.emitted,
            headroom: self.headroom,
            area: self.area,
            room,
        }
    }

    /// Hands the emitted packets toward the writers of their sides, within a batch of
    /// `outs` (between its `begin` and `finish`), as [`Outs::push_batch`] does the batch's
    /// own: a packet with no room is dropped and counted (ring full, in its direction), and
    /// its buffer goes back to `spare`.
    pub(crate) fn send(
        &mut self,
        outs: &mut Outs,
        spare: &mut Vec<PacketBuf>,
        counters: &StageCounters,
    ) {
        outs.push_batch(self.emitted.drain(..), spare, counters);
    }
}

/// Where one batch's emitted packets come from and go ([`Emits::place`]).
pub(crate) struct EmitPlace<'a> {
    spare: &'a mut Vec<PacketBuf>,
    emitted: &'a mut Vec<PacketBuf>,
    headroom: usize,
    area: usize,
    /// Slots, by side, that the rings toward the writers keep for emitted packets.
    room: [usize; 2],
}

impl EmitPlace<'_> {
    /// Runs `work` with an [`Emitter`] over this place, tallying in `tally`; the room it
    /// leaves carries on to the next call.
    fn with_emitter<R>(
        &mut self,
        tally: &mut EmitTally,
        work: impl FnOnce(&mut Emitter<'_>) -> R,
    ) -> R {
        let mut out = Emitter {
            spare: self.spare,
            emitted: self.emitted,
            // The clock is read (if the stage asks) inside the call, after any wait for a lock
            // of the stage's own: timers stamped with a time from before that wait would come
            // due early.
            now: std::cell::Cell::new(None),
            headroom: self.headroom,
            capacity: self.area,
            room: self.room,
            tally,
        };
        let result = work(&mut out);
        self.room = out.room;
        result
    }
}

/// The stage a reader (inline) or a worker runs.
pub(crate) enum StageHost {
    /// A one-way stage: one instance per worker, rebuilt if it panics.
    OneWay(StageRunner),
    /// A duplex stage: one instance for every thread, which guards its own state.
    Duplex(SharedDuplex),
}

/// A duplex stage shared by the threads that run it.
pub(crate) type SharedDuplex = Arc<dyn DuplexStage>;

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
            counts.settle(Outcome::Dropped(DropReason::Stopped), 1);
            return false;
        };
        // Unwinding through the stage costs nothing unless it panics.
        match catch_unwind(AssertUnwindSafe(|| stage.process(packet))) {
            Ok(Verdict::Forward) => true,
            Ok(Verdict::Drop) => {
                counts.settle(Outcome::Dropped(DropReason::Stage), 1);
                false
            }
            Err(_) => {
                counts.settle(Outcome::Dropped(DropReason::StagePanic), 1);
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
                if !packet.recycled() {
                    let forward = if ctl.stopping() {
                        counters
                            .of(direction)
                            .settle(Outcome::Dropped(DropReason::Stopped), 1);
                        false
                    } else {
                        runner.run(packet, counters, ctl)
                    };
                    if !forward {
                        packet.route = Route::Recycle;
                    }
                }
                packet.side = route_side(direction, packet.route);
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
    let this = counters.of(direction);
    let mut tally = EmitTally::default();
    let emitted_before = emit.emitted.len();
    let mut stamp = 0;
    for packet in packets {
        stamp = packet.received_at;
        if !packet.recycled() {
            packet.route = if ctl.stopping() {
                this.settle(Outcome::Dropped(DropReason::Stopped), 1);
                Route::Recycle
            } else {
                let action = emit.with_emitter(&mut tally, |out| {
                    catch_unwind(AssertUnwindSafe(|| stage.process(direction, packet, out)))
                });
                settle_action(action, direction, counters, ctl)
            };
        }
        packet.side = route_side(direction, packet.route);
    }
    count_emitted(emit, emitted_before, &tally, counters, stamp);
    ctl.publish_deadline(&**stage);
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

/// Counts what a duplex stage's answer for a packet travelling `direction` makes of it, and
/// gives the packet's route.
fn settle_action(
    action: std::thread::Result<Action>,
    direction: Direction,
    counters: &StageCounters,
    ctl: &Control,
) -> Route {
    let (this, other) = (counters.of(direction), counters.of(direction.reverse()));
    match action {
        Ok(Action::Forward) => Route::Forward,
        Ok(Action::Replace) => {
            this.settle(Outcome::Held, 1);
            this.settle(Outcome::Originated, 1);
            Route::Forward
        }
        Ok(Action::Reply) => {
            this.settle(Outcome::Consumed, 1);
            other.settle(Outcome::Originated, 1);
            Route::Back
        }
        Ok(Action::Consume) => {
            this.settle(Outcome::Consumed, 1);
            Route::Recycle
        }
        Ok(Action::Hold) => {
            this.settle(Outcome::Held, 1);
            Route::Recycle
        }
        Ok(Action::Drop) => {
            this.settle(Outcome::Dropped(DropReason::Stage), 1);
            Route::Recycle
        }
        Err(_) => {
            // A duplex stage has no factory to rebuild it from, and its protocol state may
            // be torn: the engine stops (the rest of the batch meets `stopping` above).
            this.settle(Outcome::Dropped(DropReason::StagePanic), 1);
            ctl.fail(EngineError::DuplexStagePanicked {
                during: match direction {
                    Direction::Outbound => "on an outbound packet",
                    Direction::Inbound => "on an inbound packet",
                },
            });
            Route::Recycle
        }
    }
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
    for packet in &mut emit.emitted[before..] {
        emitted[packet.side.index()] += 1;
        packet.received_at = received_at;
        packet.stage_ns = 0;
    }
    for side in [Side::Inside, Side::Outside] {
        let i = side.index();
        let counts = counters.of(side.direction());
        let own = emitted[i] - tally.released[i] + tally.no_buffer[i];
        let left_hold = tally.released[i] + tally.released_lost[i] + tally.held_dropped[i];
        let no_buffer = tally.no_buffer[i] + tally.released_lost[i];
        counts.settle(Outcome::Originated, own);
        counts.settle(Outcome::Unheld, left_hold);
        counts.settle(Outcome::Dropped(DropReason::NoBuffer), no_buffer);
        counts.settle(Outcome::Dropped(DropReason::Stage), tally.held_dropped[i]);
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
    work: impl FnOnce(&dyn DuplexStage, &mut Emitter<'_>),
) {
    let mut tally = EmitTally::default();
    let before = emit.emitted.len();
    let ran = emit.with_emitter(&mut tally, |out| {
        catch_unwind(AssertUnwindSafe(|| work(&**stage, out)))
    });
    if ran.is_err() {
        ctl.fail(EngineError::DuplexStagePanicked {
            during: "in its timers",
        });
    }
    ctl.publish_deadline(&**stage);
    count_emitted(emit, before, &tally, counters, received_at);
}
