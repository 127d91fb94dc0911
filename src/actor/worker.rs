//! A worker: runs a stage on the packets of the flows hashed to it. With a one-way stage it
//! owns its own instance and has one input (from the reader); with a duplex stage it shares
//! the one instance and has an input from each reader.

use super::{phase, run_stage_batch, Control, Emits, Outs, StageHost};
use crate::link::{Backoff, Idle, Waited};
use crate::pool::{PacketBuf, Pool};
use crate::stage::Direction;
use crate::stats::{DropReason, Outcome};
use rtrb::Consumer;
use std::sync::Arc;

pub(crate) struct Worker {
    pub index: usize,
    pub ctl: Arc<Control>,
    /// The rings from the readers, each with the direction its packets travel.
    pub inputs: Vec<(Direction, Consumer<PacketBuf>)>,
    pub outs: Outs,
    pub host: StageHost,
    /// Spare buffers for what a duplex stage emits (empty for a one-way stage).
    pub pool: Pool,
    pub emits: Emits,
    pub batch_size: usize,
    pub latency: bool,
    pub backoff: Backoff,
}

impl Worker {
    pub(crate) fn run(mut self) {
        let ctl = self.ctl.clone();
        let bell = &ctl.worker_bells[self.index];
        let counters = &ctl.counters.workers[self.index];
        bell.register_current();
        let mut idle = Idle::new(self.backoff);
        loop {
            let current_phase = ctl.phase();
            if current_phase >= phase::STOP_REQUESTED {
                // Stopping: whatever is still in the rings is dropped and counted, not
                // processed.
                for (direction, input) in &mut self.inputs {
                    if let Ok(chunk) = input.read_chunk(input.slots()) {
                        let in_flight = chunk.into_iter().filter(|b| !b.recycled()).count();
                        counters
                            .of(*direction)
                            .settle(Outcome::Dropped(DropReason::Stopped), in_flight as u64);
                    }
                }
                if current_phase >= phase::READER_DONE
                    && self.inputs.iter().all(|(_, i)| i.is_empty())
                {
                    return;
                }
            } else {
                self.pool.refill();
                let mut worked = false;
                for i in 0..self.inputs.len() {
                    let ready = self.inputs[i].1.slots();
                    if ready > 0 {
                        self.process(i, ready.min(self.batch_size), idle.expects_more());
                        worked = true;
                    }
                }
                if worked {
                    idle.reset();
                    continue;
                }
            }
            let exit_phase = if current_phase >= phase::STOP_REQUESTED {
                phase::READER_DONE
            } else {
                phase::STOP_REQUESTED
            };
            let inputs = &self.inputs;
            let waited = idle.wait(bell, || {
                inputs.iter().any(|(_, i)| !i.is_empty()) || ctl.phase() >= exit_phase
            });
            if waited == (Waited::Slept { parked: true }) {
                counters.wakeups.add(1);
            }
        }
    }

    /// Runs the stage over `n` packets of input `input` and hands them on; `expects_more`:
    /// the worker's cadence predicts more work within its window.
    fn process(&mut self, input: usize, n: usize, expects_more: bool) {
        let ctl = &*self.ctl;
        let counters = &ctl.counters.workers[self.index];
        let (direction, ring) = &mut self.inputs[input];
        let direction = *direction;
        let Ok(mut chunk) = ring.read_chunk(n) else {
            return;
        };
        let (first, second) = chunk.as_mut_slices();
        let mut place = self
            .emits
            .place(&mut self.pool.free, self.outs.room_after(n));
        run_stage_batch(
            &mut self.host,
            direction,
            [first, second],
            counters,
            ctl,
            self.latency,
            &mut place,
        );
        // What the stage emitted goes first: packets a handshake held go out before those
        // that came after them.
        self.outs.begin(ctl, expects_more);
        self.emits
            .send(&mut self.outs, &mut self.pool.free, counters);
        // Recycled packets travel on too, to the writer of their direction, so that the
        // writers are every buffer's one way home.
        for buf in chunk {
            let side = buf.side;
            let mut buf = buf;
            loop {
                match self.outs.push(buf) {
                    Ok(()) => break,
                    Err(_) if self.outs.by_side[side.index()].is_none() => {
                        // A route with no writer (a reply in a one-way engine): dropped,
                        // buffer lost to this run only (a one-way stage cannot reply).
                        counters
                            .of(direction)
                            .settle(Outcome::Dropped(DropReason::RingFull), 1);
                        break;
                    }
                    Err(back) => {
                        if ctl.stopping() {
                            // A packet the stage dropped or consumed is already counted.
                            if !back.recycled() {
                                counters
                                    .of(side.direction())
                                    .settle(Outcome::Dropped(DropReason::Stopped), 1);
                            }
                            break;
                        }
                        buf = back;
                        ctl.writer_bell(side).ring();
                        std::thread::yield_now();
                    }
                }
            }
        }
        self.outs.finish();
    }
}
