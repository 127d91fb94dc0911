//! A reader: waits once in the kernel, then drains ready packets into pooled buffers and
//! hands them on in batches. A one-way engine has one (outbound); a tunnel has one per
//! device, each feeding its direction.

use super::{run_stage_batch, Control, Emits, Outs, StageHost};
use crate::device::{ErrorClass, Medium, RxHalf};
use crate::error::EngineError;
use crate::link::{Backoff, Idle, RetryWindow, Waited};
use crate::pool::{PacketBuf, Pool};
use crate::stage::Direction;
use crate::stats::{DropReason, Outcome};
use crate::wire;
use rtrb::Producer;
use std::io;
use std::sync::Arc;

/// Where the reader sends packets.
pub(crate) enum Downstream {
    /// One ring per worker; a packet's flow picks the worker.
    Workers(Vec<Producer<PacketBuf>>),
    /// The stage runs here, and rings go straight to the writers.
    Inline { host: StageHost, outs: Outs },
}

pub(crate) struct Reader<R: RxHalf> {
    pub rx: R,
    pub ctl: Arc<Control>,
    /// The direction this reader's packets travel.
    pub direction: Direction,
    /// Buffers to receive into (the whole pool at start), and the rings they come home on.
    pub pool: Pool,
    pub downstream: Downstream,
    /// The packets of the current drain, reused every time (allocated once).
    pub batch: Vec<PacketBuf>,
    /// Where a duplex stage run inline puts what it emits during a batch.
    pub emits: Emits,
    pub batch_size: usize,
    /// The largest packet this device carries: the reader receives `mtu + 1` bytes, so it
    /// sees an oversize packet.
    pub mtu: usize,
    pub headroom: usize,
    pub latency: bool,
    pub backoff: Backoff,
    /// From the device: what it carries.
    pub medium: Medium,
    /// How many buffers the next receive call offers the device.
    pub offer: Offer,
}

/// How many buffers a receive call offers the device, up to the most one call moves.
///
/// Each buffer offered is moved into the batch and, if the device leaves it empty, back to
/// the free list: stores to lines that a sleeping reader finds cold. Offering a whole batch
/// for each sparse packet was the largest user-space cost of a paced tunnel packet (a
/// profile of `tunpipe wg` at 10 Mbit/s: more than the encryption). So the offer starts
/// small, doubles while calls fill it, and after a drain that emptied the device falls back
/// to twice what that drain received: a burst grows it within a drain, and a steady load
/// keeps it.
pub(crate) struct Offer {
    max: usize,
    next: usize,
}

impl Offer {
    /// The smallest offer: a sparse wake-up often finds a packet or two (a TCP segment and
    /// an ACK), and four buffers are a few cache lines.
    const MIN: usize = 4;

    /// An offer for a device that moves at most `max` packets a call.
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(1);
        Offer {
            max,
            next: Self::MIN.min(max),
        }
    }

    fn size(&self) -> usize {
        self.next
    }

    /// A call filled every buffer offered: more are likely ready.
    fn filled(&mut self) {
        self.next = (self.next * 2).min(self.max);
    }

    /// A drain emptied the device after `received` packets: offer twice that next, so that a
    /// steady load's next drain empties the device in one call (an offer it fills exactly
    /// costs another call, on a UDP socket another system call, to find it empty).
    fn ran_dry(&mut self, received: usize) {
        self.next = (received * 2).clamp(Self::MIN.min(self.max), self.max);
    }
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
        let ctl = self.ctl.clone();
        let bell = ctl.reader_bell(self.direction);
        let counters = ctl.counters.reader(self.direction);
        bell.register_current();
        let mut idle = Idle::new(self.backoff);
        let mut retry = RetryWindow::new(self.backoff);
        let mut stalled = false;
        while !ctl.stopping() {
            if ctl.suspended() {
                // Nothing is read until the resume (the kernel's queue keeps what comes, up
                // to its size), and the device is not even waited on.
                if bell.sleep_unless(|| !ctl.suspended() || ctl.stopping()) {
                    counters.wakeups.add(1);
                }
                continue;
            }
            self.pool.refill();
            if self.pool.free.is_empty() {
                // The pool is empty: stop reading until buffers come home, so the kernel's
                // queue takes the pressure. A stall, not a drop.
                if !stalled {
                    counters.pool_stalls.add(1);
                    stalled = true;
                }
                let pool = &self.pool;
                let waited = idle.wait(bell, || pool.has_returns() || ctl.stopping());
                if waited == (Waited::Slept { parked: true }) {
                    counters.wakeups.add(1);
                }
                continue;
            }
            let room = self.downstream_room();
            if room == 0 {
                // The rings toward the writer or workers cannot take a batch: stop reading
                // until they can, so that the kernel's queue takes the pressure (TCP senders
                // behind a TUN slow down instead of losing packets). A stall, not a drop.
                if !stalled {
                    counters.ring_stalls.add(1);
                    stalled = true;
                }
                let this = &self;
                let waited = idle.wait(bell, || this.downstream_room() > 0 || ctl.stopping());
                if waited == (Waited::Slept { parked: true }) {
                    counters.wakeups.add(1);
                }
                continue;
            }
            stalled = false;
            idle.restart();
            let drained = self.drain(room);
            if !self.batch.is_empty() {
                retry.reset(self.batch.len());
            }
            self.dispatch(retry.expects_more());
            match drained {
                Drained::More => {}
                // Under load the next packet is usually microseconds away: reading again
                // for a short window saves a sleep and a wake-up in the kernel per burst.
                Drained::Empty if retry.try_again() => {}
                Drained::Empty => {
                    match self.rx.wait_readable() {
                        Ok(()) => {}
                        // A stop, a suspend or EINTR: the loop's checks decide, never the
                        // error kind. A suspend's interrupt is cleared, so that the next
                        // wait blocks again; a stop was set before its interrupt, so the
                        // loop sees it.
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                            if !ctl.stopping() {
                                self.rx.rearm();
                            }
                        }
                        Err(e) => {
                            if self.rx.classify(&e) == ErrorClass::Fatal {
                                ctl.fail(EngineError::device(e));
                            }
                        }
                    }
                }
                Drained::Fatal(e) => ctl.fail(EngineError::device(e)),
            }
        }
    }

    /// Receives until the device has nothing ready, `limit` packets (at most a batch) are
    /// in, or no buffer is free, in calls of up to the device's batch size. One clock read
    /// stamps the whole batch.
    fn drain(&mut self, limit: usize) -> Drained {
        let stamp = if self.latency { self.ctl.now_ns() } else { 0 };
        let free = &mut self.pool.free;
        while self.batch.len() < limit {
            let want = (limit - self.batch.len())
                .min(self.offer.size())
                .min(free.len());
            if want == 0 {
                return Drained::More;
            }
            let start = self.batch.len();
            for buf in free.drain(free.len() - want..) {
                let mut buf = buf;
                buf.prepare_receive(self.headroom, self.mtu + 1);
                self.batch.push(buf);
            }
            let result = self.rx.recv_batch(&mut self.batch[start..]);
            let received = result.as_ref().map_or(0, |&n| n.min(want));
            // Buffers the device did not fill go back to the free list.
            free.extend(self.batch.drain(start + received..));
            match result {
                Ok(_) => {
                    for buf in &mut self.batch[start..] {
                        buf.received_at = stamp;
                    }
                    if received < want {
                        // The device had fewer ready than asked for: it is empty for now.
                        self.offer.ran_dry(self.batch.len());
                        return Drained::Empty;
                    }
                    self.offer.filled();
                }
                Err(e) => match self.rx.classify(&e) {
                    ErrorClass::Retry => {}
                    ErrorClass::PerPacket => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            self.ctl.counters.reader(self.direction).read_errors.add(1);
                        }
                        self.offer.ran_dry(self.batch.len());
                        return Drained::Empty;
                    }
                    ErrorClass::Fatal => return Drained::Fatal(e),
                },
            }
        }
        Drained::More
    }

    /// The free slots and the size of each ring a packet of this reader may go to.
    fn downstream_rings(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (inline, workers) = match &self.downstream {
            Downstream::Inline { outs, .. } => (Some(outs.by_side.iter().flatten()), None),
            Downstream::Workers(rings) => (None, Some(rings.iter())),
        };
        let inline = inline
            .into_iter()
            .flatten()
            .map(|o| (o.slots(), o.capacity()));
        let workers = workers
            .into_iter()
            .flatten()
            .map(|r| (r.slots(), r.buffer().capacity()));
        inline.chain(workers)
    }

    /// How many packets the next batch may hold so that each fits in whichever ring it goes
    /// to (the room of the fullest ring, up to a batch), or 0 while that is less than a
    /// whole batch (or a whole ring, if a ring is smaller than a batch): then the reader
    /// waits, and reads in full batches again.
    fn downstream_room(&self) -> usize {
        let room = self.downstream_rings().map(|r| r.0).min().unwrap_or(0);
        let smallest = self.downstream_rings().map(|r| r.1).min().unwrap_or(0);
        if room >= self.batch_size.min(smallest) {
            room.min(self.batch_size)
        } else {
            0
        }
    }

    /// Checks, processes (inline) and hands on the batch, then rings the doorbells it used.
    /// `expects_more`: the reader's cadence predicts the next packet within its window.
    fn dispatch(&mut self, expects_more: bool) {
        if self.batch.is_empty() {
            return;
        }
        let ctl = &*self.ctl;
        let counters = ctl.counters.reader(self.direction);
        let (mut bytes, mut malformed, mut oversize) = (0, 0, 0);
        let check_ip = self.medium == Medium::Ip;
        for buf in &mut self.batch {
            bytes += buf.len() as u64;
            if buf.len() > self.mtu {
                oversize += 1;
                buf.route = crate::pool::Route::Recycle;
            } else if check_ip && wire::check_ip(buf.data()).is_err() {
                malformed += 1;
                buf.route = crate::pool::Route::Recycle;
            }
        }
        counters.rx_packets.add(self.batch.len() as u64);
        counters.rx_bytes.add(bytes);
        let settled = counters.stage.of(self.direction);
        settled.settle(Outcome::Dropped(DropReason::Malformed), malformed);
        settled.settle(Outcome::Dropped(DropReason::Oversize), oversize);

        let mut ring_full = 0;
        let direction = self.direction;
        let free = &mut self.pool.free;
        match &mut self.downstream {
            Downstream::Inline { host, outs } => {
                let mut place = self.emits.place(free, outs.room_after(self.batch.len()));
                run_stage_batch(
                    host,
                    direction,
                    [&mut self.batch[..], &mut []],
                    &counters.stage,
                    ctl,
                    self.latency,
                    &mut place,
                );
                // What the stage emitted goes first: packets a handshake held go out before
                // those that came after them.
                outs.begin(ctl, expects_more);
                self.emits.send(outs, free, &counters.stage);
                outs.push_batch(self.batch.drain(..), free, &counters.stage);
                outs.finish();
            }
            Downstream::Workers(outs) => {
                let mut touched = 0u64;
                let n = outs.len();
                for buf in self.batch.drain(..) {
                    if buf.recycled() {
                        free.push(buf);
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
                            free.push(buf);
                        }
                    }
                }
                for (i, bell) in ctl.worker_bells.iter().enumerate() {
                    if touched & (1 << i) != 0 {
                        bell.ring();
                    }
                }
            }
        }
        settled.settle(Outcome::Dropped(DropReason::RingFull), ring_full);
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
    use crate::actor::outs::AlwaysAwake;
    use crate::actor::{Out, StageRunner};
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

    #[test]
    fn an_offer_grows_while_calls_fill_it_and_falls_back_to_what_a_drain_took() {
        let mut offer = Offer::new(64);
        assert_eq!(offer.size(), 4);
        for _ in 0..4 {
            offer.filled();
        }
        assert_eq!(offer.size(), 64);
        offer.filled();
        assert_eq!(offer.size(), 64);
        offer.ran_dry(10);
        assert_eq!(offer.size(), 20);
        offer.ran_dry(40);
        assert_eq!(offer.size(), 64);
        offer.ran_dry(1);
        assert_eq!(offer.size(), 4);
        let mut one = Offer::new(1);
        one.filled();
        one.ran_dry(0);
        assert_eq!(one.size(), 1);
    }

    /// With a valid config the rings fill (and drop) before the pool runs dry, so the stall
    /// path is a safety net that only a reader built by hand can reach: start it with no
    /// buffers, check that it waits (counted, nothing read, nothing dropped), then send one
    /// buffer home and check that it reads.
    #[test]
    fn an_empty_pool_stalls_until_a_buffer_comes_home() {
        let (dev, mut peer, _peer_rx) = MemoryDevice::new(8, 2048);
        let (rx, _tx) = dev.open().unwrap();
        let ctl = Arc::new(Control::new(0, vec![rx.interrupter()], 10));
        let (mut home, free_in) = RingBuffer::new(4);
        let (out, mut writer_side) = RingBuffer::new(4);
        let reader = Reader {
            rx,
            ctl: ctl.clone(),
            direction: Direction::Outbound,
            pool: Pool::new(Vec::with_capacity(4), vec![free_in]),
            downstream: Downstream::Inline {
                host: StageHost::OneWay(StageRunner::new(BuiltinStage::Passthrough.factory(), 0)),
                outs: Outs {
                    by_side: [None, Some(Out::new(out, Arc::new(AlwaysAwake)))],
                },
            },
            batch: Vec::with_capacity(4),
            emits: Emits::new(0, 0, 1501),
            batch_size: 4,
            mtu: 1500,
            headroom: 0,
            latency: false,
            backoff: Backoff {
                spin: Duration::ZERO,
                yields: 0,
                yield_while_spinning: false,
            },
            medium: Medium::Ip,
            offer: Offer::new(1),
        };
        let thread = std::thread::spawn(move || reader.run());
        let packet = [
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        peer.send(&packet).unwrap();
        let counters = ctl.counters.reader(Direction::Outbound);
        assert!(eventually(|| counters.pool_stalls.get() == 1));
        assert_eq!(counters.rx_packets.get(), 0);
        home.push(PacketBuf::new(0, 1501, 0)).unwrap();
        ctl.reader_bell(Direction::Outbound).ring();
        assert!(eventually(|| writer_side.pop().is_ok()));
        assert_eq!(counters.rx_packets.get(), 1);
        assert_eq!(ctl.counters.snapshot(Direction::Outbound).drop_ring_full, 0);
        ctl.request_stop();
        thread.join().unwrap();
    }
}
