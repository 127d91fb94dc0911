//! A worker: runs its own stage instance on the packets of the flows hashed to it.

use super::{phase, run_stage_batch, Control, StageRunner};
use crate::link::{Backoff, Idle, Waited};
use crate::pool::PacketBuf;
use rtrb::{Consumer, Producer, PushError};
use std::sync::Arc;

pub(crate) struct Worker {
    pub index: usize,
    pub ctl: Arc<Control>,
    pub input: Consumer<PacketBuf>,
    pub output: Producer<PacketBuf>,
    pub runner: StageRunner,
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
            let ready = self.input.slots();
            if current_phase >= phase::STOP_REQUESTED {
                // Stopping: whatever is still in the ring is dropped and counted, not processed.
                if let Ok(chunk) = self.input.read_chunk(ready) {
                    counters.stopped.add(chunk.len() as u64);
                    chunk.into_iter().for_each(drop);
                }
                if current_phase >= phase::READER_DONE && self.input.is_empty() {
                    return;
                }
            } else if ready > 0 {
                idle.reset();
                self.process(ready.min(self.batch_size));
                continue;
            }
            let exit_phase = if current_phase >= phase::STOP_REQUESTED {
                phase::READER_DONE
            } else {
                phase::STOP_REQUESTED
            };
            let input = &self.input;
            let waited = idle.wait(bell, || !input.is_empty() || ctl.phase() >= exit_phase);
            if waited == (Waited::Slept { parked: true }) {
                counters.wakeups.add(1);
            }
        }
    }

    fn process(&mut self, n: usize) {
        let ctl = &*self.ctl;
        let counters = &ctl.counters.workers[self.index];
        let Ok(mut chunk) = self.input.read_chunk(n) else {
            return;
        };
        let (first, second) = chunk.as_mut_slices();
        run_stage_batch(
            &mut self.runner,
            [first, second],
            counters,
            ctl,
            self.latency,
        );
        // Dropped packets travel on too, marked, so that the writer is every buffer's one way
        // home to the reader's pool.
        for buf in chunk {
            let mut buf = buf;
            loop {
                match self.output.push(buf) {
                    Ok(()) => break,
                    Err(PushError::Full(back)) => {
                        if ctl.stopping() {
                            // A packet the stage dropped is already counted as such.
                            if !back.dropped {
                                counters.stopped.add(1);
                            }
                            break;
                        }
                        buf = back;
                        ctl.writer_bell.ring();
                        std::thread::yield_now();
                    }
                }
            }
        }
        ctl.writer_bell.ring();
    }
}
