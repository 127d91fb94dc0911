//! The writer: sends packets to the device, records latency, and recycles every buffer.

use super::{phase, Control};
use crate::device::{classify, ErrorClass, TxHalf};
use crate::link::{Backoff, Idle, Waited};
use crate::pool::PacketBuf;
use crate::stats::{LatencyRecorder, LatencySnapshot};
use crate::EngineError;
use crossbeam_channel::{Receiver, Sender};
use rtrb::{Consumer, Producer};
use std::sync::Arc;

/// A request in the writer's mailbox, answered between batches.
pub(crate) enum Mail {
    Latency(Sender<LatencySnapshot>),
}

pub(crate) struct Writer<T: TxHalf> {
    pub tx: T,
    pub ctl: Arc<Control>,
    /// One ring per worker, or one from the reader when the stage runs inline.
    pub inputs: Vec<Consumer<PacketBuf>>,
    /// Buffers going home to the reader. It can hold the whole pool, so it is never full.
    pub free_out: Producer<PacketBuf>,
    pub mailbox: Receiver<Mail>,
    pub batch_size: usize,
    pub latency: bool,
    pub backoff: Backoff,
    pub engine_time: LatencyRecorder,
    pub stage_time: LatencyRecorder,
}

impl<T: TxHalf> Writer<T> {
    /// Runs until the stop protocol lets it leave; returns the final histograms.
    pub(crate) fn run(mut self) -> LatencySnapshot {
        let ctl = self.ctl.clone();
        ctl.writer_bell.register_current();
        let mut idle = Idle::new(self.backoff);
        loop {
            if let Ok(Mail::Latency(reply)) = self.mailbox.try_recv() {
                let _ = reply.send(self.latency_snapshot());
            }
            let stage = ctl.phase();
            let mut moved = 0;
            for i in 0..self.inputs.len() {
                moved += self.write_from(i, stage >= phase::STOP_REQUESTED);
            }
            if moved > 0 {
                // Buffers went home: wake the reader if it stalled on an empty pool.
                ctl.reader_bell.ring();
                idle.reset();
                continue;
            }
            if stage >= phase::WORKERS_DONE {
                return LatencySnapshot {
                    engine: self.engine_time.into_latency(),
                    stage: self.stage_time.into_latency(),
                };
            }
            let exit_phase = if stage >= phase::STOP_REQUESTED {
                phase::WORKERS_DONE
            } else {
                phase::STOP_REQUESTED
            };
            let (inputs, mailbox) = (&self.inputs, &self.mailbox);
            let waited = idle.wait(&ctl.writer_bell, || {
                inputs.iter().any(|c| !c.is_empty())
                    || !mailbox.is_empty()
                    || ctl.phase() >= exit_phase
            });
            if waited == (Waited::Slept { parked: true }) {
                ctl.counters.writer.wakeups.add(1);
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
        let ctl = &*self.ctl;
        let counters = &ctl.counters.writer;
        if stopping {
            counters.stopped.add(
                chunk
                    .as_slices()
                    .0
                    .iter()
                    .chain(chunk.as_slices().1)
                    .filter(|b| !b.dropped)
                    .count() as u64,
            );
            chunk.into_iter().for_each(drop);
            return n;
        }
        // One clock read per chunk: engine time ends when the writer takes the chunk, so it
        // leaves out the send syscalls of the packets ahead in the same chunk.
        let now = if self.latency { ctl.now_ns() } else { 0 };
        let (mut packets, mut bytes, mut errors) = (0, 0, 0);
        for buf in chunk {
            if !buf.dropped {
                match send(&mut self.tx, ctl, &buf) {
                    Ok(()) => {
                        packets += 1;
                        bytes += buf.len() as u64;
                        if self.latency {
                            self.engine_time
                                .record_n(now.saturating_sub(buf.received_at), 1);
                            self.stage_time.record_n(buf.stage_ns, 1);
                        }
                    }
                    Err(()) => errors += 1,
                }
            }
            // The ring holds the whole pool, so there is always room.
            let _ = self.free_out.push(buf);
        }
        counters.tx_packets.add(packets);
        counters.tx_bytes.add(bytes);
        counters.drop_write_error.add(errors);
        n
    }

    fn latency_snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            engine: self.engine_time.snapshot(),
            stage: self.stage_time.snapshot(),
        }
    }
}

/// Sends one packet. A per-packet error (or a short write) drops it; a fatal error stops the
/// engine (the packet is counted as a write error); EINTR is retried.
fn send(tx: &mut impl TxHalf, ctl: &Control, buf: &PacketBuf) -> Result<(), ()> {
    loop {
        match tx.send(buf.data()) {
            Ok(n) if n == buf.len() => return Ok(()),
            Ok(_) => return Err(()),
            Err(e) => match classify(&e) {
                ErrorClass::Retry => continue,
                ErrorClass::PerPacket => return Err(()),
                ErrorClass::Fatal => {
                    ctl.fail(EngineError::device(e));
                    return Err(());
                }
            },
        }
    }
}
