//! A writer: sends packets to its device half, records latency, and sends every buffer home.
//! A one-way engine has one (toward the device it writes, its "outside"); a tunnel has one
//! per side. Its send half lives in an [`Outlet`], which a producer borrows to send a sparse
//! packet itself while the writer sleeps (the send token, `crate::link`).

use super::outs::WriterEnd;
use super::{phase, Control};
use crate::device::{ErrorClass, TxHalf};
use crate::error::EngineError;
use crate::link::{Backoff, Idle, SendToken, Waited};
use crate::pool::PacketBuf;
use crate::stage::Side;
use crate::stats::{DropReason, LatencyRecorder, LatencySnapshot, Outcome};
use crossbeam_channel::{Receiver, Sender};
use rtrb::{Consumer, Producer};
use std::sync::Arc;

/// A request in the writer's mailbox, answered between batches.
pub(crate) enum Mail {
    Latency(Sender<LatencySnapshot>),
}

pub(crate) struct Writer<T: TxHalf> {
    pub outlet: Arc<Outlet<T>>,
    /// One ring per worker, or one per reader when the stage runs inline (and one from the
    /// timer in a tunnel).
    pub inputs: Vec<Consumer<PacketBuf>>,
    pub mailbox: Receiver<Mail>,
    pub batch_size: usize,
    pub backoff: Backoff,
    /// The packets of the chunk being sent, out of their ring already so that its slots are
    /// free for the producer while the send calls run. Allocated once, `batch_size` long.
    pub sending: Vec<PacketBuf>,
}

/// A writer's send half behind the send token: the writer and the producers that send past
/// their rings share it.
pub(crate) struct Outlet<T: TxHalf> {
    /// The side it sends to.
    side: Side,
    ctl: Arc<Control>,
    token: SendToken<SendHalf<T>>,
}

/// What a send takes and updates: the device half, the rings home, the latency histograms.
pub(crate) struct SendHalf<T: TxHalf> {
    pub tx: T,
    /// Buffers going home, one ring per pool (indexed by the buffer's home). Each can hold
    /// its whole pool, so none is ever full.
    pub homes: Vec<Producer<PacketBuf>>,
    pub latency: bool,
    pub engine_time: LatencyRecorder,
    pub stage_time: LatencyRecorder,
    /// The most packets one send call moves (from the device).
    pub max_batch: usize,
}

impl<T: TxHalf> Outlet<T> {
    pub(crate) fn new(side: Side, ctl: Arc<Control>, half: SendHalf<T>) -> Self {
        Outlet {
            side,
            ctl,
            token: SendToken::new(half),
        }
    }
}

impl<T: TxHalf> WriterEnd for Outlet<T> {
    #[inline]
    fn asleep(&self) -> bool {
        self.ctl.writer_bell(self.side).asleep()
    }

    #[inline]
    fn wake(&self) {
        self.ctl.writer_bell(self.side).ring();
    }

    fn try_send(&self, packets: &mut Vec<PacketBuf>) -> bool {
        let ctl = &*self.ctl;
        let bell = ctl.writer_bell(self.side);
        let Some(mut token) = self
            .token
            .try_bypass(bell, || !ctl.stopping() && !ctl.suspended())
        else {
            return false;
        };
        let Some(half) = token.as_mut() else {
            return false;
        };
        let went = half.send_all(ctl, self.side, packets);
        drop(token);
        ctl.counters
            .writer(self.side.direction())
            .tx_direct
            .add(went);
        true
    }
}

impl<T: TxHalf> Writer<T> {
    /// Runs until the stop protocol lets it leave; returns the final histograms.
    pub(crate) fn run(mut self) -> LatencySnapshot {
        let ctl = self.outlet.ctl.clone();
        let side = self.outlet.side;
        let bell = ctl.writer_bell(side);
        let counters = ctl.counters.writer(side.direction());
        bell.register_current();
        let mut idle = Idle::new(self.backoff);
        loop {
            if let Ok(Mail::Latency(reply)) = self.mailbox.try_recv() {
                let _ = reply.send(self.latency_snapshot());
            }
            let current_phase = ctl.phase();
            let discard = if current_phase >= phase::STOP_REQUESTED {
                Some(DropReason::Stopped)
            } else if ctl.suspended() {
                Some(DropReason::Suspended)
            } else {
                None
            };
            let mut moved = 0;
            for i in 0..self.inputs.len() {
                moved += self.write_from(i, discard);
            }
            if moved > 0 {
                idle.reset();
                continue;
            }
            if current_phase >= phase::WORKERS_DONE {
                // The send half leaves with the writer: no producer sends after this.
                return match self.outlet.token.take() {
                    Some(half) => LatencySnapshot {
                        engine: half.engine_time.into_latency(),
                        stage: half.stage_time.into_latency(),
                    },
                    None => LatencySnapshot::empty(),
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

    /// Writes one chunk from input `i`, or drops it as `discard` says (stopped, suspended);
    /// returns how many buffers it took.
    fn write_from(&mut self, i: usize, discard: Option<DropReason>) -> usize {
        let n = self.inputs[i].slots().min(self.batch_size);
        if n == 0 {
            return 0;
        }
        let outlet = &*self.outlet;
        let ctl = &*outlet.ctl;
        // The send token, from before the packets leave their ring until they are written: a
        // producer that finds its ring empty sends past it only once they went.
        let mut token = outlet.token.hold();
        let Some(half) = token.as_mut() else {
            return 0;
        };
        let Ok(chunk) = self.inputs[i].read_chunk(n) else {
            return 0;
        };
        if let Some(reason) = discard {
            let (first, second) = chunk.as_slices();
            let in_flight = first.iter().chain(second).filter(|b| !b.recycled()).count();
            let counters = ctl.counters.writer(outlet.side.direction());
            counters
                .settled
                .settle(Outcome::Dropped(reason), in_flight as u64);
            for buf in chunk {
                half.send_home(buf);
            }
            return n;
        }
        // Taking the packets out commits the read: the ring's slots are free before any send.
        self.sending.extend(chunk);
        half.send_all(ctl, outlet.side, &mut self.sending);
        n
    }

    fn latency_snapshot(&self) -> LatencySnapshot {
        match self.outlet.token.hold().as_ref() {
            Some(half) => LatencySnapshot {
                engine: half.engine_time.snapshot(),
                stage: half.stage_time.snapshot(),
            },
            None => LatencySnapshot::empty(),
        }
    }
}

impl<T: TxHalf> SendHalf<T> {
    /// Sends `packets` toward `side` in calls of up to the device's batch size (a recycled
    /// buffer among them only goes home), counts what went and what failed (a failure
    /// belongs to the first packet a call did not send), sends every buffer home, and wakes
    /// a reader that stalled on an empty pool. Returns how many packets went.
    fn send_all(&mut self, ctl: &Control, side: Side, sending: &mut Vec<PacketBuf>) -> u64 {
        let homed = !sending.is_empty();
        // Recycled buffers to the end (those before keep their order), and home.
        let mut kept = 0;
        for i in 0..sending.len() {
            if !sending[i].recycled() {
                sending.swap(kept, i);
                kept += 1;
            }
        }
        for buf in sending.drain(kept..) {
            self.send_home(buf);
        }
        let counters = ctl.counters.writer(side.direction());
        // One clock read per chunk: engine time ends when the chunk is taken, so it leaves
        // out the send syscalls of the packets ahead in the same chunk.
        let now = if self.latency { ctl.now_ns() } else { 0 };
        let (mut packets, mut bytes, mut errors) = (0, 0, 0);
        let mut next = 0;
        while next < sending.len() {
            let end = sending.len().min(next + self.max_batch);
            let went = match self.tx.send_batch(&sending[next..end]) {
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
                        errors += (sending.len() - next) as u64;
                        break;
                    }
                },
            };
            for buf in &sending[next..next + went] {
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
        counters
            .settled
            .settle(Outcome::Dropped(DropReason::WriteError), errors);
        for buf in sending.drain(..) {
            self.send_home(buf);
        }
        if homed {
            // Buffers went home: wake a reader that stalled on an empty pool.
            ctl.reader_bells.iter().for_each(|bell| {
                bell.ring();
            });
        }
        packets
    }

    /// Sends a buffer back to its pool. The ring home holds its whole pool, so there is
    /// always room.
    #[inline]
    fn send_home(&mut self, buf: PacketBuf) {
        let home = usize::from(buf.home);
        let _ = self.homes[home].push(buf);
    }
}
