//! The reader: waits once in the kernel, then drains ready packets into pooled buffers and
//! hands them on in batches.

use super::{run_stage_batch, Control, StageRunner};
use crate::device::{ErrorClass, Medium, RxHalf};
use crate::error::EngineError;
use crate::link::{Backoff, Idle, Waited};
use crate::pool::PacketBuf;
use crate::wire;
use rtrb::{Consumer, Producer};
use std::io;
use std::sync::Arc;

/// Where the reader sends packets.
pub(crate) enum Downstream {
    /// One ring per worker; a packet's flow picks the worker.
    Workers(Vec<Producer<PacketBuf>>),
    /// The stage runs here, and the one ring goes straight to the writer.
    Inline(StageRunner, Producer<PacketBuf>),
}

pub(crate) struct Reader<R: RxHalf> {
    pub rx: R,
    pub ctl: Arc<Control>,
    /// Buffers ready to receive into; starts with the whole pool.
    pub free: Vec<PacketBuf>,
    /// Buffers coming home from the writer.
    pub free_in: Consumer<PacketBuf>,
    pub downstream: Downstream,
    /// The packets of the current drain, reused every time (allocated once).
    pub batch: Vec<PacketBuf>,
    pub batch_size: usize,
    pub mtu: usize,
    pub headroom: usize,
    pub latency: bool,
    pub backoff: Backoff,
    /// From the device: what it carries, and the most packets one receive call moves.
    pub medium: Medium,
    pub max_batch: usize,
}

enum Drained {
    /// The batch is full or the free list ran out: hand on and read again.
    More,
    /// The device has nothing more right now: hand on, then wait in the kernel.
    Empty,
    Fatal(io::Error),
}

impl<R: RxHalf> Reader<R> {
    pub(crate) fn run(mut self) {
        self.ctl.reader_bell.register_current();
        let mut idle = Idle::new(self.backoff);
        let mut stalled = false;
        while !self.ctl.stopping() {
            self.refill();
            if self.free.is_empty() {
                // The pool is empty: stop reading until buffers come home, so the kernel's
                // queue takes the pressure. A stall, not a drop.
                if !stalled {
                    self.ctl.counters.reader.pool_stalls.add(1);
                    stalled = true;
                }
                let (free_in, ctl) = (&self.free_in, &self.ctl);
                let waited = idle.wait(&ctl.reader_bell, || !free_in.is_empty() || ctl.stopping());
                if waited == (Waited::Slept { parked: true }) {
                    ctl.counters.reader.wakeups.add(1);
                }
                continue;
            }
            stalled = false;
            idle.reset();
            let drained = self.drain();
            self.dispatch();
            match drained {
                Drained::More => {}
                Drained::Empty => {
                    if let Err(e) = self.rx.wait_readable() {
                        // Interrupted means a stop trigger or EINTR: the loop condition
                        // decides, never the error kind.
                        if self.rx.classify(&e) == ErrorClass::Fatal {
                            self.ctl.fail(EngineError::device(e));
                        }
                    }
                }
                Drained::Fatal(e) => self.ctl.fail(EngineError::device(e)),
            }
        }
    }

    /// Takes home every buffer the writer has recycled.
    fn refill(&mut self) {
        let n = self.free_in.slots();
        if n == 0 {
            return;
        }
        if let Ok(chunk) = self.free_in.read_chunk(n) {
            // `free` was allocated with room for the whole pool, so this never reallocates.
            self.free.extend(chunk);
        }
    }

    /// Receives until the device has nothing ready, the batch is full, or no buffer is free,
    /// in calls of up to the device's batch size. One clock read stamps the whole batch.
    fn drain(&mut self) -> Drained {
        let stamp = if self.latency { self.ctl.now_ns() } else { 0 };
        while self.batch.len() < self.batch_size {
            let want = (self.batch_size - self.batch.len())
                .min(self.max_batch)
                .min(self.free.len());
            if want == 0 {
                return Drained::More;
            }
            let start = self.batch.len();
            for buf in self.free.drain(self.free.len() - want..) {
                let mut buf = buf;
                buf.prepare_receive(self.headroom, self.mtu + 1);
                self.batch.push(buf);
            }
            let result = self.rx.recv_batch(&mut self.batch[start..]);
            let received = result.as_ref().map_or(0, |&n| n.min(want));
            // Buffers the device did not fill go back to the free list.
            self.free.extend(self.batch.drain(start + received..));
            match result {
                Ok(_) => {
                    for buf in &mut self.batch[start..] {
                        buf.received_at = stamp;
                    }
                    if received < want {
                        // The device had fewer ready than asked for: it is empty for now.
                        return Drained::Empty;
                    }
                }
                Err(e) => match self.rx.classify(&e) {
                    ErrorClass::Retry => {}
                    ErrorClass::PerPacket => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            self.ctl.counters.reader.read_errors.add(1);
                        }
                        return Drained::Empty;
                    }
                    ErrorClass::Fatal => return Drained::Fatal(e),
                },
            }
        }
        Drained::More
    }

    /// Checks, processes (inline) and hands on the batch, then rings the doorbells it used.
    fn dispatch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let counters = &self.ctl.counters.reader;
        let (mut bytes, mut malformed, mut oversize) = (0, 0, 0);
        let check_ip = self.medium == Medium::Ip;
        for buf in &mut self.batch {
            bytes += buf.len() as u64;
            if buf.len() > self.mtu {
                oversize += 1;
                buf.dropped = true;
            } else if check_ip && wire::check_ip(buf.data()).is_err() {
                malformed += 1;
                buf.dropped = true;
            }
        }
        counters.rx_packets.add(self.batch.len() as u64);
        counters.rx_bytes.add(bytes);
        counters.drop_malformed.add(malformed);
        counters.drop_oversize.add(oversize);

        let mut ring_full = 0;
        match &mut self.downstream {
            Downstream::Inline(runner, out) => {
                run_stage_batch(
                    runner,
                    [&mut self.batch[..], &mut []],
                    &counters.stage,
                    &self.ctl,
                    self.latency,
                );
                for buf in self.batch.drain(..) {
                    if buf.dropped {
                        self.free.push(buf);
                    } else if let Err(rtrb::PushError::Full(buf)) = out.push(buf) {
                        ring_full += 1;
                        self.free.push(buf);
                    }
                }
                self.ctl.writer_bell.ring();
            }
            Downstream::Workers(outs) => {
                let mut touched = 0u64;
                let n = outs.len();
                for buf in self.batch.drain(..) {
                    if buf.dropped {
                        self.free.push(buf);
                        continue;
                    }
                    let i = if n == 1 {
                        0
                    } else {
                        flow_hash(&buf, self.medium) as usize % n
                    };
                    // Back-pressure: a full worker ring drops the newest packet, counted.
                    match outs[i].push(buf) {
                        Ok(()) => touched |= 1 << i,
                        Err(rtrb::PushError::Full(buf)) => {
                            ring_full += 1;
                            self.free.push(buf);
                        }
                    }
                }
                for (i, bell) in self.ctl.worker_bells.iter().enumerate() {
                    if touched & (1 << i) != 0 {
                        bell.ring();
                    }
                }
            }
        }
        counters.drop_ring_full.add(ring_full);
    }
}

/// The flow a packet belongs to, so that one flow keeps to one worker and its order: from the
/// IP header for IP packets, from the peer's address for datagrams.
fn flow_hash(buf: &PacketBuf, medium: Medium) -> u32 {
    match (medium, buf.endpoint()) {
        (Medium::Datagram, Some(endpoint)) => wire::endpoint_hash(&endpoint),
        _ => wire::flow_hash(buf.data()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Device, MemoryDevice};
    use crate::stage::BuiltinStage;
    use rtrb::RingBuffer;
    use std::time::{Duration, Instant};

    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// With a valid config the rings fill (and drop) before the pool runs dry, so the stall
    /// path is a safety net that only a reader built by hand can reach: start it with no
    /// buffers, check that it waits (counted, nothing read, nothing dropped), then send one
    /// buffer home and check that it reads.
    #[test]
    fn an_empty_pool_stalls_until_a_buffer_comes_home() {
        let (dev, mut peer, _peer_rx) = MemoryDevice::new(8, 2048);
        let (rx, _tx) = dev.open().unwrap();
        let ctl = Arc::new(Control::new(0, rx.interrupter(), 10));
        let (mut home, free_in) = RingBuffer::new(4);
        let (out, mut writer_side) = RingBuffer::new(4);
        let reader = Reader {
            rx,
            ctl: ctl.clone(),
            free: Vec::with_capacity(4),
            free_in,
            downstream: Downstream::Inline(
                StageRunner::new(BuiltinStage::Passthrough.factory(), 0),
                out,
            ),
            batch: Vec::with_capacity(4),
            batch_size: 4,
            mtu: 1500,
            headroom: 0,
            latency: false,
            backoff: Backoff {
                spin: Duration::ZERO,
                yields: 0,
            },
            medium: Medium::Ip,
            max_batch: 1,
        };
        let thread = std::thread::spawn(move || reader.run());
        let packet = [
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        peer.send(&packet).unwrap();
        let counters = &ctl.counters.reader;
        assert!(eventually(|| counters.pool_stalls.get() == 1));
        assert_eq!(counters.rx_packets.get(), 0);
        home.push(PacketBuf::new(0, 1501, 0)).unwrap();
        ctl.reader_bell.ring();
        assert!(eventually(|| writer_side.pop().is_ok()));
        assert_eq!(counters.rx_packets.get(), 1);
        assert_eq!(counters.drop_ring_full.get(), 0);
        ctl.request_stop();
        thread.join().unwrap();
    }
}
