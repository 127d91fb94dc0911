//! A writer: sends packets to its device half, records latency, and sends every buffer home.
//! A one-way engine has one (toward the device it writes, its "outside"); a tunnel has one
//! per side.

use super::{phase, Control};
use crate::device::{ErrorClass, TxHalf};
use crate::error::EngineError;
use crate::link::{Backoff, Idle, Waited};
use crate::pool::PacketBuf;
use crate::stage::Side;
use crate::stats::{LatencyRecorder, LatencySnapshot};
use crossbeam_channel::{Receiver, Sender};
use rtrb::{Consumer, Producer};
use std::sync::Arc;

/// A request in the writer's mailbox, answered between batches.
pub(crate) enum Mail {
    Latency(Sender<LatencySnapshot>),
}

pub(crate) struct Writer<T: TxHalf> {
    /// The side this writer sends to.
    pub side: Side,
    pub tx: T,
    pub ctl: Arc<Control>,
    /// One ring per worker, or one per reader when the stage runs inline (and one from the
    /// timer in a tunnel).
    pub inputs: Vec<Consumer<PacketBuf>>,
    /// Buffers going home, one ring per pool (indexed by the buffer's home). Each can hold
    /// its whole pool, so none is ever full.
    pub homes: Vec<Producer<PacketBuf>>,
    pub mailbox: Receiver<Mail>,
    pub batch_size: usize,
    pub latency: bool,
    pub backoff: Backoff,
    pub engine_time: LatencyRecorder,
    pub stage_time: LatencyRecorder,
    /// The packets of the chunk being sent, out of their ring already so that its slots are
    /// free for the producer while the send calls run. Allocated once, `batch_size` long.
    pub sending: Vec<PacketBuf>,
    /// The most packets one send call moves (from the device).
    pub max_batch: usize,
}

impl<T: TxHalf> Writer<T> {
    /// Runs until the stop protocol lets it leave; returns the final histograms.
    pub(crate) fn run(mut self) -> LatencySnapshot {
        let ctl = self.ctl.clone();
        let bell = ctl.writer_bell(self.side);
        let counters = ctl.counters.writer(self.side.direction());
        bell.register_current();
        let mut idle = Idle::new(self.backoff);
        loop {
            if let Ok(Mail::Latency(reply)) = self.mailbox.try_recv() {
                let _ = reply.send(self.latency_snapshot());
            }
            let current_phase = ctl.phase();
            let mut moved = 0;
            for i in 0..self.inputs.len() {
                moved += self.write_from(i, current_phase >= phase::STOP_REQUESTED);
            }
            if moved > 0 {
                // Buffers went home: wake a reader that stalled on an empty pool.
                ctl.reader_bells.iter().for_each(|bell| {
                    bell.ring();
                });
                idle.reset();
                continue;
            }
            if current_phase >= phase::WORKERS_DONE {
                return LatencySnapshot {
                    engine: self.engine_time.into_latency(),
                    stage: self.stage_time.into_latency(),
                };
            }
            let exit_phase = if current_phase >= phase::STOP_REQUESTED {
                phase::WORKERS_DONE
            } else {
                phase::STOP_REQUESTED
            };
            let (inputs, mailbox) = (&self.inputs, &self.mailbox);
            let waited = idle.wait(bell, || {
                inputs.iter().any(|c| !c.is_empty())
                    || !mailbox.is_empty()
                    || ctl.phase() >= exit_phase
            });
            if waited == (Waited::Slept { parked: true }) {
                counters.wakeups.add(1);
            }
        }
    }

    /// Writes one chunk from input `i`; returns how many buffers it took.
    fn write_from(&mut self, i: usize, stopping: bool) -> usize {
        let n = self.inputs[i].slots().min(self.batch_size);
        if n == 0 {
            return 0;
        }
        let Ok(chunk) = self.inputs[i].read_chunk(n) else {
            return 0;
        };
        let counters = self.ctl.counters.writer(self.side.direction());
        if stopping {
            let (first, second) = chunk.as_slices();
            let in_flight = first.iter().chain(second).filter(|b| !b.recycled()).count();
            counters.stopped.add(in_flight as u64);
            for buf in chunk {
                send_home(&mut self.homes, buf);
            }
            return n;
        }
        // Taking the packets out commits the read: the ring's slots are free before any send.
        for buf in chunk {
            if buf.recycled() {
                send_home(&mut self.homes, buf);
            } else {
                self.sending.push(buf);
            }
        }
        self.send_all();
        n
    }

    /// Sends `self.sending` in calls of up to the device's batch size, counts what went and
    /// what failed (a failure belongs to the first packet a call did not send), and sends
    /// every buffer home.
    fn send_all(&mut self) {
        let ctl = &*self.ctl;
        let counters = ctl.counters.writer(self.side.direction());
        // One clock read per chunk: engine time ends when the writer takes the chunk, so it
        // leaves out the send syscalls of the packets ahead in the same chunk.
        let now = if self.latency { ctl.now_ns() } else { 0 };
        let (mut packets, mut bytes, mut errors) = (0, 0, 0);
        let mut next = 0;
        while next < self.sending.len() {
            let end = self.sending.len().min(next + self.max_batch);
            let went = match self.tx.send_batch(&self.sending[next..end]) {
                // A device that claims to have sent nothing without an error would loop
                // here forever: count its packet as failed instead.
                Ok(0) => {
                    errors += 1;
                    next += 1;
                    continue;
                }
                Ok(k) => k.min(end - next),
                Err(e) => match self.tx.classify(&e) {
                    ErrorClass::Retry => continue,
                    ErrorClass::PerPacket => {
                        errors += 1;
                        next += 1;
                        continue;
                    }
                    ErrorClass::Fatal => {
                        // The device is gone: nothing after this will go either.
                        ctl.fail(EngineError::device(e));
                        errors += (self.sending.len() - next) as u64;
                        break;
                    }
                },
            };
            for buf in &self.sending[next..next + went] {
                packets += 1;
                bytes += buf.len() as u64;
                if self.latency {
                    self.engine_time
                        .record_n(now.saturating_sub(buf.received_at), 1);
                    self.stage_time.record_n(buf.stage_ns, 1);
                }
            }
            next += went;
        }
        counters.tx_packets.add(packets);
        counters.tx_bytes.add(bytes);
        counters.drop_write_error.add(errors);
        for buf in self.sending.drain(..) {
            send_home(&mut self.homes, buf);
        }
    }

    fn latency_snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            engine: self.engine_time.snapshot(),
            stage: self.stage_time.snapshot(),
        }
    }
}

/// Sends a buffer back to its pool. The ring home holds its whole pool, so there is always
/// room.
#[inline]
fn send_home(homes: &mut [Producer<PacketBuf>], buf: PacketBuf) {
    let home = usize::from(buf.home);
    let _ = homes[home].push(buf);
}
