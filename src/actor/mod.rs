//! The actors: readers, workers, writers and (for a duplex stage) a timer. Each owns its
//! state. They share the [`Control`] block (the stop phase, counters, doorbells and the
//! timer's deadline) and each writer's send half, which a producer borrows while the writer
//! sleeps (`outs.rs`). On the hot path nothing is locked but a duplex stage's own lock and a
//! writer's send token, which nobody else wants under load (producers try for it only while
//! the writer sleeps).
//!
//! A one-way engine has one reader (outbound) and one writer (its destination, the "outside"
//! of the device it writes). A tunnel has a reader and a writer on each side.

mod host;
mod outs;
pub(crate) mod reader;
pub(crate) mod timer;
pub(crate) mod worker;
pub(crate) mod writer;

pub(crate) use host::{
    run_duplex_timers, run_stage_batch, Emits, SharedDuplex, StageHost, StageRunner,
};
pub(crate) use outs::{Out, Outs, WriterEnd, STRAIGHT_MAX};

use crate::device::Interrupter;
use crate::error::EngineError;
use crate::link::Doorbell;
use crate::stage::{Direction, DuplexStage, Side};
use crate::stats::Counters;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
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

/// A deadline that moved earlier by less than this (1 ms) is the same one: it does not wake
/// the timer, which then runs it at most this late. A stage whose clock is not `std`'s
/// (WireGuard's counts sleep) maps the same deadline to a `std` moment a few ns to µs apart
/// each time it is asked, and every such "earlier" deadline woke the timer: with traffic, a
/// wake-up for about every other packet.
const SAME_DEADLINE_NS: u64 = 1_000_000;

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
    /// Taken to ask a duplex stage for its next deadline and store it, so that the stores
    /// come in the order of the asking ([`Control::publish_deadline`]).
    deadline_turn: Mutex<()>,
    /// The host said the network path changed (rebind): the timer tells the stage.
    path_changed: AtomicBool,
    /// The host suspended the engine ([`crate::Engine::suspend`]): no actor touches a device
    /// or runs a timer until it resumes.
    suspended: AtomicBool,
    /// A suspension the timer has been asked to begin, once the stage has settled what it
    /// owes its peers (a tunnel's keepalives): read by the timer without the lock.
    suspend_requested: AtomicBool,
    /// Where a suspension is: taken by the host's calls and by the timer as it begins one.
    suspension: Mutex<Suspension>,
}

/// Where a suspension is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Suspension {
    Running,
    /// Asked for; the timer begins it ([`Control::begin_requested_suspension`]).
    Requested,
    Suspended,
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
            deadline_turn: Mutex::new(()),
            path_changed: AtomicBool::new(false),
            suspended: AtomicBool::new(false),
            suspend_requested: AtomicBool::new(false),
            suspension: Mutex::new(Suspension::Running),
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
        self.ring_all();
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

    /// Blocks until someone requests a stop or `timeout` passes; true if a stop was
    /// requested.
    pub(crate) fn wait_for_stop_request_for(&self, timeout: std::time::Duration) -> bool {
        let mut requested = self.stop_requested.lock();
        if !*requested {
            self.stop_requested_cv.wait_for(&mut requested, timeout);
        }
        *requested
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

    /// Asks `stage` for its next deadline and records it (after a batch, a deadline or a path
    /// change). Threads ask one at a time: each answer reflects every change made before it
    /// was asked, so the last one stored is the stage's current deadline. (Unordered, an
    /// older, later deadline stored after a newer, earlier one would hide it, and the timer
    /// would sleep through it.) The stage's own lock is taken inside, never the other way.
    pub(crate) fn publish_deadline(&self, stage: &dyn DuplexStage) {
        let _turn = self.deadline_turn.lock();
        self.set_deadline(stage.next_deadline());
    }

    /// Records a deadline, and wakes the timer when it moved earlier (by more than
    /// [`SAME_DEADLINE_NS`]).
    fn set_deadline(&self, deadline: Option<Instant>) {
        let ns = deadline.map_or(NO_DEADLINE, |d| {
            d.saturating_duration_since(self.epoch).as_nanos() as u64
        });
        if moved_earlier(ns, self.deadline_ns.swap(ns, Ordering::AcqRel)) {
            self.timer_bell.ring();
        }
    }

    /// Suspends the engine, or (`via_timer`: a tunnel) asks the timer to: it first lets the
    /// stage send what it owes (a keepalive for data just received, without which a peer
    /// starts a handshake 15 s later), then suspends. False if it already was, or was asked.
    pub(crate) fn suspend(&self, via_timer: bool) -> bool {
        let mut suspension = self.suspension.lock();
        if *suspension != Suspension::Running {
            return false;
        }
        if via_timer {
            *suspension = Suspension::Requested;
            self.suspend_requested.store(true, Ordering::Release);
            self.timer_bell.force();
        } else {
            *suspension = Suspension::Suspended;
            self.park_everyone();
        }
        true
    }

    /// Whether the timer has a suspension to begin.
    pub(crate) fn suspend_requested(&self) -> bool {
        self.suspend_requested.load(Ordering::Acquire)
    }

    /// The timer begins the suspension asked for, unless a resume came first.
    pub(crate) fn begin_requested_suspension(&self) {
        let mut suspension = self.suspension.lock();
        self.suspend_requested.store(false, Ordering::Release);
        if *suspension == Suspension::Requested {
            *suspension = Suspension::Suspended;
            self.park_everyone();
        }
    }

    /// Readers leave their waits in the kernel and park, the timer parks, writers drop what
    /// reaches them ("suspended").
    fn park_everyone(&self) {
        self.suspended.store(true, Ordering::Release);
        for interrupter in self.interrupters.lock().iter() {
            interrupter.interrupt();
        }
        self.ring_all();
    }

    /// Ends a suspension, or a request for one: every actor goes back to work. False if
    /// there was none.
    pub(crate) fn resume(&self) -> bool {
        let mut suspension = self.suspension.lock();
        let was = std::mem::replace(&mut *suspension, Suspension::Running);
        self.suspend_requested.store(false, Ordering::Release);
        if was == Suspension::Suspended {
            self.suspended.store(false, Ordering::Release);
            self.ring_all();
        }
        was != Suspension::Running
    }

    /// Whether the host suspended the engine (or asked to).
    pub(crate) fn suspension(&self) -> Suspension {
        *self.suspension.lock()
    }

    #[inline]
    pub(crate) fn suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    fn ring_all(&self) {
        self.reader_bells.iter().for_each(Doorbell::force);
        self.worker_bells.iter().for_each(Doorbell::force);
        self.writer_bells.iter().for_each(Doorbell::force);
        self.timer_bell.force();
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

/// Whether deadline `new` (ns) comes before `old` by more than [`SAME_DEADLINE_NS`].
fn moved_earlier(new: u64, old: u64) -> bool {
    new.saturating_add(SAME_DEADLINE_NS) < old
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_wakes_for_an_earlier_deadline_not_for_the_same_one_mapped_again() {
        let at = 10_000_000_000;
        assert!(moved_earlier(at, NO_DEADLINE), "a first deadline");
        assert!(moved_earlier(at - 2_000_000, at), "2 ms earlier");
        assert!(!moved_earlier(at - 3, at), "the same, a few ns apart");
        assert!(!moved_earlier(at + 3, at));
        assert!(
            !moved_earlier(NO_DEADLINE, at),
            "none: the timer wakes and finds none"
        );
    }
}
