//! The actors: one reader, N workers, one writer. Each owns its state; nothing on the hot path
//! is locked. They share only the [`Control`] block: the stop phase, counters and doorbells.

pub(crate) mod reader;
pub(crate) mod worker;
pub(crate) mod writer;

use crate::device::Interrupter;
use crate::error::EngineError;
use crate::link::Doorbell;
use crate::pool::PacketBuf;
use crate::stage::{Stage, StageFactory, Verdict};
use crate::stats::{Counters, StageCounters};
use parking_lot::{Condvar, Mutex};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

/// The stop protocol's phases. Stopping walks down the pipeline so that nothing is left in a
/// ring unaccounted: the reader stops first; workers leave once the reader has been joined and
/// their rings are empty; the writer leaves once the workers have been joined. Packets met
/// after the stop request are counted as dropped ("stopped") instead of processed.
pub(crate) mod phase {
    pub const RUNNING: u8 = 0;
    pub const STOP_REQUESTED: u8 = 1;
    pub const READER_DONE: u8 = 2;
    pub const WORKERS_DONE: u8 = 3;
}

/// What every actor and the engine handle share.
pub(crate) struct Control {
    phase: AtomicU8,
    pub counters: Counters,
    pub reader_bell: Doorbell,
    pub worker_bells: Box<[Doorbell]>,
    pub writer_bell: Doorbell,
    /// Wakes the reader out of its wait in the kernel. Released once the engine is joined, so
    /// that a stopped engine kept for its figures holds no descriptors (a pipe, an eventfd).
    interrupter: Mutex<Option<Interrupter>>,
    fatal: Mutex<Option<EngineError>>,
    stop_requested: Mutex<bool>,
    stop_requested_cv: Condvar,
    epoch: Instant,
    stage_panics: AtomicU64,
    max_stage_panics: u64,
}

impl Control {
    pub(crate) fn new(workers: usize, interrupter: Interrupter, max_stage_panics: u64) -> Self {
        Control {
            phase: AtomicU8::new(phase::RUNNING),
            counters: Counters::new(workers),
            reader_bell: Doorbell::default(),
            worker_bells: (0..workers).map(|_| Doorbell::default()).collect(),
            writer_bell: Doorbell::default(),
            interrupter: Mutex::new(Some(interrupter)),
            fatal: Mutex::new(None),
            stop_requested: Mutex::new(false),
            stop_requested_cv: Condvar::new(),
            epoch: Instant::now(),
            stage_panics: AtomicU64::new(0),
            max_stage_panics,
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

    /// Asks every actor to stop: sets the phase, interrupts the reader's wait in the kernel,
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
        if let Some(interrupter) = self.interrupter.lock().as_ref() {
            interrupter.interrupt();
        }
        self.reader_bell.force();
        self.worker_bells.iter().for_each(Doorbell::force);
        self.writer_bell.force();
        *self.stop_requested.lock() = true;
        self.stop_requested_cv.notify_all();
    }

    /// Moves the stop protocol to `next` (called by the one thread that joins the actors) and
    /// wakes everyone so that the actors waiting for it see it.
    pub(crate) fn advance(&self, next: u8) {
        self.phase.fetch_max(next, Ordering::AcqRel);
        self.worker_bells.iter().for_each(Doorbell::force);
        self.writer_bell.force();
    }

    /// Lets go of the reader's interrupter: called once every actor is joined, when nothing
    /// waits in the kernel any more.
    pub(crate) fn release_interrupter(&self) {
        self.interrupter.lock().take();
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
}

/// Runs a stage on packets, containing its panics.
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
        let Some(stage) = self.stage.as_mut() else {
            // No stage left to run (the engine is stopping): the packet goes no further.
            counters.stopped.add(1);
            return false;
        };
        // Unwinding through the stage costs nothing unless it panics.
        match catch_unwind(AssertUnwindSafe(|| stage.process(packet))) {
            Ok(Verdict::Forward) => true,
            Ok(Verdict::Drop) => {
                counters.drop_stage.add(1);
                false
            }
            Err(_) => {
                counters.drop_stage_panic.add(1);
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

/// Runs the stage over a batch in place (given as the two slices a ring chunk has), marking
/// dropped packets, and stamps each with its share of the batch's stage time: one clock pair
/// per batch, not per packet.
///
/// The stop flag is checked before every packet: once a stop is asked for, the stage is not
/// called again (a slow stage would otherwise hold the stop for a whole batch, and go on with
/// its side effects), and the rest of the batch is counted as stopped.
pub(crate) fn run_stage_batch(
    runner: &mut StageRunner,
    batch: [&mut [PacketBuf]; 2],
    counters: &StageCounters,
    ctl: &Control,
    latency: bool,
) {
    let started = latency.then(Instant::now);
    let [first, second] = batch;
    for packet in first.iter_mut().chain(second.iter_mut()) {
        if packet.dropped {
            continue;
        }
        if ctl.stopping() {
            counters.stopped.add(1);
            packet.dropped = true;
        } else if !runner.run(packet, counters, ctl) {
            packet.dropped = true;
        }
    }
    if let Some(started) = started {
        let count = (first.len() + second.len()).max(1) as u64;
        let each = started.elapsed().as_nanos() as u64 / count;
        for packet in first.iter_mut().chain(second.iter_mut()) {
            packet.stage_ns = each;
        }
    }
}
