//! How a producer (a reader running the stage inline, a worker, the timer) hands packets to
//! the writers: through its ring toward each side's writer, or, when the traffic is sparse,
//! that writer sleeps and the ring is empty, straight to the device on the writer's send half
//! (the send token, `crate::link`). Under load the writer is awake and the rings carry the
//! batches; a sparse packet costs one thread wake-up (the producer's) instead of two.

use super::Control;
use crate::pool::PacketBuf;
use crate::stats::{DropReason, Outcome, StageCounters};
use rtrb::{Producer, PushError};
use std::sync::Arc;

/// The most packets one batch sends straight toward a side. A batch with more goes through
/// the ring whole: that much work is worth waking the writer for, so that the producer goes
/// back to its own work while the writer sends.
pub(crate) const STRAIGHT_MAX: usize = 8;

/// A writer as its producers see it ([`crate::actor::writer::Outlet`]).
pub(crate) trait WriterEnd: Send + Sync {
    /// Whether the writer sleeps (a hint: the send token decides).
    fn asleep(&self) -> bool;

    /// Wakes the writer if it sleeps (its doorbell), for packets just pushed to its ring.
    fn wake(&self);

    /// Sends `packets` on the writer's send half, counted and timed as the writer would, and
    /// sends their buffers home; true if it did (`packets` is then empty). False, with
    /// `packets` untouched, when the send token is taken, the writer is awake or gone, or
    /// stop has begun. The caller has seen its ring to this writer empty.
    fn try_send(&self, packets: &mut Vec<PacketBuf>) -> bool;
}

/// One producer's way to one side's writer.
pub(crate) struct Out {
    ring: Producer<PacketBuf>,
    writer: Arc<dyn WriterEnd>,
    /// The packets of this batch going straight to the device (allocated once, `limit`
    /// long).
    straight: Vec<PacketBuf>,
    /// The most packets a batch sends straight: [`STRAIGHT_MAX`], or the ring's size if that
    /// is smaller, so that they always fit in the ring if they cannot go straight after all.
    limit: usize,
    /// This batch goes straight: the writer slept and the ring was empty when it began.
    going_straight: bool,
    /// The ring was given packets since the writer was last rung.
    rung: bool,
}

impl Out {
    pub(crate) fn new(ring: Producer<PacketBuf>, writer: Arc<dyn WriterEnd>) -> Self {
        let limit = STRAIGHT_MAX.min(ring.buffer().capacity());
        Out {
            ring,
            writer,
            straight: Vec::with_capacity(limit),
            limit,
            going_straight: false,
            rung: false,
        }
    }

    fn ring_is_empty(&self) -> bool {
        self.ring.slots() == self.ring.buffer().capacity()
    }

    /// The ring's free slots.
    pub(crate) fn slots(&self) -> usize {
        self.ring.slots()
    }

    /// The ring's size.
    pub(crate) fn capacity(&self) -> usize {
        self.ring.buffer().capacity()
    }

    fn push(&mut self, buf: PacketBuf) -> Result<(), PacketBuf> {
        if self.going_straight {
            if self.straight.len() < self.limit {
                self.straight.push(buf);
                return Ok(());
            }
            // More than a sparse batch: the whole batch goes through the ring after all.
            self.spill_to_ring();
        }
        match self.ring.push(buf) {
            Ok(()) => {
                self.rung = true;
                Ok(())
            }
            Err(PushError::Full(buf)) => Err(buf),
        }
    }

    /// Moves the packets gathered to go straight into the ring, in order, and ends going
    /// straight for this batch. They fit: the ring was empty when the batch began, only this
    /// producer fills it, and they are no more than it holds (`limit`).
    fn spill_to_ring(&mut self) {
        self.going_straight = false;
        for buf in self.straight.drain(..) {
            let pushed = self.ring.push(buf);
            debug_assert!(
                pushed.is_ok(),
                "a ring empty at the batch's start overflowed"
            );
            self.rung = true;
        }
    }

    /// Ends the batch: sends what went straight, or, if the writer woke or the token is
    /// taken meanwhile, puts it in the ring; then rings the writer if its ring was given
    /// packets.
    fn finish(&mut self) {
        if !self.straight.is_empty() && !self.writer.try_send(&mut self.straight) {
            self.spill_to_ring();
        }
        self.going_straight = false;
        if std::mem::take(&mut self.rung) {
            // Rung only after the pushes: the writer may take them in one wake-up.
            self.writer.wake();
        }
    }
}

/// A producer's ways to the writers, by side (a one-way engine has only the outside's).
/// Every batch goes `begin`, `push`..., `finish`.
pub(crate) struct Outs {
    pub by_side: [Option<Out>; 2],
}

impl Outs {
    /// Slots, by side, left for emitted packets once a batch of `batch` packets (each of
    /// which may go either way) is pushed.
    pub(crate) fn room_after(&self, batch: usize) -> [usize; 2] {
        self.by_side
            .each_ref()
            .map(|out| out.as_ref().map_or(0, |o| o.slots().saturating_sub(batch)))
    }

    /// Starts handing on a batch: toward each side whose writer sleeps with this producer's
    /// ring to it empty, the batch's first [`STRAIGHT_MAX`] packets will go straight, unless
    /// the producer `expects_more` (its recent work came densely). Then the writer, woken
    /// once, stays awake for the packets that follow and sends them while the producer goes
    /// back to its own work (at one packet in flight on a TUN, sending from the reader cut
    /// the round trips a second by two thirds).
    pub(crate) fn begin(&mut self, ctl: &Control, expects_more: bool) {
        let may = !expects_more && !ctl.stopping();
        for out in self.by_side.iter_mut().flatten() {
            out.going_straight = may && out.writer.asleep() && out.ring_is_empty();
        }
    }

    /// Whether every ring to a writer is empty (the writers took all).
    pub(crate) fn drained(&self) -> bool {
        self.by_side.iter().flatten().all(Out::ring_is_empty)
    }

    /// Hands a packet toward the writer of the side stamped on it. `Err` gives it back when
    /// there is no room (the ring is full) or no writer there (a reply in a one-way engine).
    pub(crate) fn push(&mut self, buf: PacketBuf) -> Result<(), PacketBuf> {
        match self.by_side[buf.side.index()].as_mut() {
            Some(out) => out.push(buf),
            None => Err(buf),
        }
    }

    /// Ends the batch (see [`Out::finish`]).
    pub(crate) fn finish(&mut self) {
        for out in self.by_side.iter_mut().flatten() {
            out.finish();
        }
    }

    /// Hands on the packets a batch leaves (`batch`, their routes and sides stamped by the
    /// stage host), after the emitted ones: recycled buffers go to `spare`, others toward the
    /// writer of their side, or are dropped and counted (ring full, in the direction they
    /// travel) with their buffers to `spare`.
    pub(crate) fn push_batch(
        &mut self,
        batch: impl Iterator<Item = PacketBuf>,
        spare: &mut Vec<PacketBuf>,
        counters: &StageCounters,
    ) {
        for buf in batch {
            if buf.recycled() {
                spare.push(buf);
                continue;
            }
            let travels = buf.side.direction();
            if let Err(buf) = self.push(buf) {
                counters
                    .of(travels)
                    .settle(Outcome::Dropped(DropReason::RingFull), 1);
                spare.push(buf);
            }
        }
    }
}

/// A writer end that is always awake, for tests that read the ring themselves: every packet
/// goes through the ring.
#[cfg(test)]
pub(crate) struct AlwaysAwake;

#[cfg(test)]
impl WriterEnd for AlwaysAwake {
    fn asleep(&self) -> bool {
        false
    }

    fn wake(&self) {}

    fn try_send(&self, _: &mut Vec<PacketBuf>) -> bool {
        false
    }
}
