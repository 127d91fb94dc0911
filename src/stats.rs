//! Counters, latency histograms and their snapshots.
//!
//! Each actor writes only its own cache-padded counters (one writer per counter, so plain
//! `fetch_add` with `Relaxed` is enough and no line bounces between cores); anyone may read
//! them. Conservation holds once the engine has stopped, in each direction:
//! `rx_packets + originated == tx_packets + dropped() + consumed` (the middle terms are 0 for
//! one-way stages). A reader counts what it reads and a writer what it writes; every other
//! term is an outcome (`Outcome`), counted through one function (`DirectionCounters::settle`)
//! by whichever actor settles the packet. The engine checks the sum at every stop.
//!
//! Latency histograms are owned by the worker and writer threads and never locked; a snapshot
//! asks the owners through their mailboxes (see `engine.rs`).

use crate::stage::Direction;
use crossbeam_utils::CachePadded;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter written by one thread and read by any.
#[derive(Default, Debug)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        // Single writer: a load and a store would do, but fetch_add keeps it obviously right
        // if a second writer ever appears, and it is not on a contended line.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters written by a reader: the inside reader's are the outbound direction's, the
/// outside reader's the inbound direction's.
#[derive(Default, Debug)]
pub(crate) struct ReaderCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub pool_stalls: Counter,
    pub ring_stalls: Counter,
    pub read_errors: Counter,
    pub wakeups: Counter,
    /// What became of the packets the reader handled: those it dropped, and the stage's
    /// results when the stage runs inline on the reader.
    pub stage: StageCounters,
}

/// What whoever runs a stage (a reader inline, a worker, the timer) counts, by the direction
/// each packet is counted in: a dropped or consumed packet in its own direction; an
/// originated one (or one that found no buffer) in the direction it was sent.
#[derive(Default, Debug)]
pub(crate) struct StageCounters {
    pub by: [DirectionCounters; 2],
    pub wakeups: Counter,
}

impl StageCounters {
    #[inline]
    pub(crate) fn of(&self, direction: Direction) -> &DirectionCounters {
        &self.by[direction.index()]
    }
}

/// What became of packets (or what a stage made), each a term of conservation
/// ([`Stats::balanced`]): every count of one goes through [`DirectionCounters::settle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Made by the stage, or released from its hold to travel on (`originated`).
    Originated,
    /// Used by the stage itself (`consumed`).
    Consumed,
    /// Taken into the stage's hold (`held`, until it leaves).
    Held,
    /// Left the stage's hold: sent on or dropped, and counted as that too.
    Unheld,
    /// Dropped, for this reason.
    Dropped(DropReason),
}

/// Why a packet was dropped: one [`Stats`] figure each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DropReason {
    Malformed,
    Oversize,
    RingFull,
    Stage,
    StagePanic,
    NoBuffer,
    WriteError,
    Stopped,
    Suspended,
}

/// One direction's outcomes, as one actor counts them: its only way in is
/// [`DirectionCounters::settle`].
#[derive(Default, Debug)]
pub(crate) struct DirectionCounters {
    drop_malformed: Counter,
    drop_oversize: Counter,
    drop_ring_full: Counter,
    drop_stage: Counter,
    drop_stage_panic: Counter,
    drop_no_buffer: Counter,
    drop_write_error: Counter,
    stopped: Counter,
    suspended: Counter,
    originated: Counter,
    consumed: Counter,
    held: Counter,
    unheld: Counter,
}

impl DirectionCounters {
    /// Counts `n` packets with `outcome`.
    #[inline]
    pub(crate) fn settle(&self, outcome: Outcome, n: u64) {
        if n == 0 {
            return;
        }
        let counter = match outcome {
            Outcome::Originated => &self.originated,
            Outcome::Consumed => &self.consumed,
            Outcome::Held => &self.held,
            Outcome::Unheld => &self.unheld,
            Outcome::Dropped(reason) => match reason {
                DropReason::Malformed => &self.drop_malformed,
                DropReason::Oversize => &self.drop_oversize,
                DropReason::RingFull => &self.drop_ring_full,
                DropReason::Stage => &self.drop_stage,
                DropReason::StagePanic => &self.drop_stage_panic,
                DropReason::NoBuffer => &self.drop_no_buffer,
                DropReason::WriteError => &self.drop_write_error,
                DropReason::Stopped => &self.stopped,
                DropReason::Suspended => &self.suspended,
            },
        };
        counter.add(n);
    }
}

/// Counters written by a writer: the outside writer's are the outbound direction's.
#[derive(Default, Debug)]
pub(crate) struct WriterCounters {
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// What became of the packets it did not write.
    pub settled: DirectionCounters,
    pub wakeups: Counter,
    /// Of `tx_packets`, those a producer sent itself while the writer slept.
    pub tx_direct: Counter,
}

/// Every actor's counters, each group on its own cache lines. A one-way engine uses the
/// outbound direction only.
#[derive(Debug)]
pub(crate) struct Counters {
    /// By the direction the reader feeds.
    pub readers: [CachePadded<ReaderCounters>; 2],
    pub workers: Box<[CachePadded<StageCounters>]>,
    pub timer: CachePadded<StageCounters>,
    /// By the direction the writer completes.
    pub writers: [CachePadded<WriterCounters>; 2],
}

impl Counters {
    pub(crate) fn new(workers: usize) -> Self {
        Counters {
            readers: Default::default(),
            workers: (0..workers).map(|_| CachePadded::default()).collect(),
            timer: CachePadded::default(),
            writers: Default::default(),
        }
    }

    pub(crate) fn reader(&self, direction: Direction) -> &ReaderCounters {
        &self.readers[direction.index()]
    }

    pub(crate) fn writer(&self, direction: Direction) -> &WriterCounters {
        &self.writers[direction.index()]
    }

    /// The counters of one direction.
    pub(crate) fn snapshot(&self, direction: Direction) -> Stats {
        let r = self.reader(direction);
        let w = self.writer(direction);
        // Everyone who settles a packet of this direction.
        let settled = || {
            self.workers
                .iter()
                .map(|c| &**c)
                .chain([
                    &r.stage,
                    &*self.timer,
                    &self.reader(direction.reverse()).stage,
                ])
                .map(move |c| c.of(direction))
                .chain([&w.settled])
        };
        let sum = |f: fn(&DirectionCounters) -> &Counter| settled().map(|c| f(c).get()).sum();
        // Read the writer's side first: a packet counted out was counted in earlier, so a
        // snapshot taken while running never shows more out than in (and, counted after
        // them, no more sent directly than sent).
        let tx_direct = w.tx_direct.get();
        let tx_packets = w.tx_packets.get();
        let tx_bytes = w.tx_bytes.get();
        let drop_write_error = sum(|c| &c.drop_write_error);
        let drop_stopped = sum(|c| &c.stopped);
        let drop_suspended = sum(|c| &c.suspended);
        // Read the leaving first, so that a snapshot rarely shows fewer held than there are
        // (a release on another thread may be counted just before the hold it ends).
        let unheld: u64 = sum(|c| &c.unheld);
        let held = sum(|c| &c.held).saturating_sub(unheld);
        Stats {
            rx_packets: r.rx_packets.get(),
            rx_bytes: r.rx_bytes.get(),
            tx_packets,
            tx_bytes,
            originated: sum(|c| &c.originated),
            consumed: sum(|c| &c.consumed),
            held,
            drop_ring_full: sum(|c| &c.drop_ring_full),
            drop_malformed: sum(|c| &c.drop_malformed),
            drop_oversize: sum(|c| &c.drop_oversize),
            drop_stage: sum(|c| &c.drop_stage),
            drop_stage_panic: sum(|c| &c.drop_stage_panic),
            drop_no_buffer: sum(|c| &c.drop_no_buffer),
            drop_write_error,
            drop_stopped,
            drop_suspended,
            pool_stalls: r.pool_stalls.get(),
            ring_stalls: r.ring_stalls.get(),
            read_errors: r.read_errors.get(),
            wakeups: r.wakeups.get()
                + w.wakeups.get()
                + if direction == Direction::Outbound {
                    // Workers and the timer serve both directions: counted once.
                    self.workers.iter().map(|c| c.wakeups.get()).sum::<u64>()
                        + self.timer.wakeups.get()
                } else {
                    0
                },
            tx_direct,
        }
    }

    /// Counts the packets a stage still held when the engine stopped as dropped ("stopped"),
    /// so that a stopped engine holds none. Called once every actor is joined.
    pub(crate) fn settle_held_at_stop(&self) {
        for direction in Direction::BOTH {
            let left = self.snapshot(direction).held;
            let counts = self.timer.of(direction);
            counts.settle(Outcome::Dropped(DropReason::Stopped), left);
            counts.settle(Outcome::Unheld, left);
        }
    }

    /// Both directions together.
    pub(crate) fn total(&self) -> Stats {
        self.snapshot(Direction::Outbound) + self.snapshot(Direction::Inbound)
    }
}

/// A snapshot of the engine's counters: of one direction, or of both together.
///
/// For a one-way engine, every packet read is written or dropped: after stop,
/// `rx_packets == tx_packets + dropped()`. A tunnel's stage also originates packets of its own
/// (handshakes, keepalives), consumes what the protocol itself uses (handshake messages,
/// keepalives), and holds packets that wait for a handshake until it sends them on or drops
/// them, so in each direction, once nothing is in flight,
/// `rx_packets + originated == tx_packets + dropped() + consumed + held` ([`Stats::balanced`]),
/// and `held == 0` after stop (what was still held then is dropped as "stopped").
/// Directions: outbound is read from the inside device and written to the outside one;
/// inbound the reverse. A packet the stage answers (a handshake response) counts as consumed
/// in its direction, and the answer as originated in the direction it travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Packets the reader received from the device.
    pub rx_packets: u64,
    /// Bytes the reader received.
    pub rx_bytes: u64,
    /// Packets the writer sent to the device.
    pub tx_packets: u64,
    /// Bytes the writer sent.
    pub tx_bytes: u64,
    /// Packets a duplex stage sent of its own (0 for one-way stages).
    pub originated: u64,
    /// Packets a duplex stage used itself and did not pass on: handshake messages, keepalives,
    /// cookies (0 for one-way stages).
    pub consumed: u64,
    /// Packets a duplex stage holds now, to send once a handshake completes (0 after stop).
    /// A held packet later counts as written or dropped, as any other.
    pub held: u64,
    /// Dropped because the ring to the next actor was full: a duplex stage's own packet on
    /// its way to a writer, or a reply routed where no writer is. (A reader waits for room
    /// instead: see `ring_stalls`.)
    pub drop_ring_full: u64,
    /// Dropped by the reader: empty, or not an IPv4/IPv6 packet (IP devices only).
    pub drop_malformed: u64,
    /// Dropped by the reader: longer than the device's MTU.
    pub drop_oversize: u64,
    /// Dropped because the stage said so.
    pub drop_stage: u64,
    /// Dropped because the stage panicked on them.
    pub drop_stage_panic: u64,
    /// Packets a duplex stage wanted to send when its reserve of buffers was empty.
    pub drop_no_buffer: u64,
    /// Dropped because the device refused the write (EINVAL, ENOBUFS, EAGAIN, short write).
    pub drop_write_error: u64,
    /// Still in flight when the engine stopped.
    pub drop_stopped: u64,
    /// In the rings when the engine was suspended ([`crate::Engine::suspend`]), or sent
    /// toward a writer while it was.
    pub drop_suspended: u64,
    /// Times the reader found the pool empty and waited for buffers to come home (not drops:
    /// the kernel's queue takes the pressure meanwhile).
    pub pool_stalls: u64,
    /// Times the reader found a ring toward a worker or writer too full for a batch and
    /// waited for room (back-pressure, not drops: the kernel's queue takes the pressure, and
    /// TCP senders behind a TUN slow down instead of losing packets).
    pub ring_stalls: u64,
    /// Receive errors that were not fatal (counted, then the reader went on).
    pub read_errors: u64,
    /// Times an actor parked and was woken.
    pub wakeups: u64,
    /// Of `tx_packets`, those the thread that read (or made) them sent to the device itself,
    /// past the ring, because the writer slept: one thread wake-up for the packet instead of
    /// two. Under load the writer is awake and sends them all.
    pub tx_direct: u64,
}

impl Stats {
    /// Every packet dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.drop_ring_full
            + self.drop_malformed
            + self.drop_oversize
            + self.drop_stage
            + self.drop_stage_panic
            + self.drop_no_buffer
            + self.drop_write_error
            + self.drop_stopped
            + self.drop_suspended
    }

    /// Packets read or originated but neither written, dropped, consumed nor held yet: 0 once
    /// the engine has stopped.
    pub fn in_flight(&self) -> u64 {
        (self.rx_packets + self.originated)
            .saturating_sub(self.tx_packets + self.dropped() + self.consumed + self.held)
    }

    /// Conservation: `rx_packets + originated == tx_packets + dropped() + consumed + held`.
    /// True in every snapshot taken while nothing is in flight, and always after stop.
    pub fn balanced(&self) -> bool {
        self.rx_packets + self.originated
            == self.tx_packets + self.dropped() + self.consumed + self.held
    }
}

impl std::ops::Add for Stats {
    type Output = Stats;

    fn add(self, o: Stats) -> Stats {
        Stats {
            rx_packets: self.rx_packets + o.rx_packets,
            rx_bytes: self.rx_bytes + o.rx_bytes,
            tx_packets: self.tx_packets + o.tx_packets,
            tx_bytes: self.tx_bytes + o.tx_bytes,
            originated: self.originated + o.originated,
            consumed: self.consumed + o.consumed,
            held: self.held + o.held,
            drop_ring_full: self.drop_ring_full + o.drop_ring_full,
            drop_malformed: self.drop_malformed + o.drop_malformed,
            drop_oversize: self.drop_oversize + o.drop_oversize,
            drop_stage: self.drop_stage + o.drop_stage,
            drop_stage_panic: self.drop_stage_panic + o.drop_stage_panic,
            drop_no_buffer: self.drop_no_buffer + o.drop_no_buffer,
            drop_write_error: self.drop_write_error + o.drop_write_error,
            drop_stopped: self.drop_stopped + o.drop_stopped,
            drop_suspended: self.drop_suspended + o.drop_suspended,
            pool_stalls: self.pool_stalls + o.pool_stalls,
            ring_stalls: self.ring_stalls + o.ring_stalls,
            read_errors: self.read_errors + o.read_errors,
            wakeups: self.wakeups + o.wakeups,
            tx_direct: self.tx_direct + o.tx_direct,
        }
    }
}

/// Latency recorded in one histogram, in nanoseconds.
pub(crate) struct LatencyRecorder {
    histogram: Histogram<u64>,
}

/// Highest latency the histograms track (longer values are clamped to it): 60 s.
const MAX_TRACKED_NS: u64 = 60_000_000_000;
/// Two significant digits (1% resolution) is plenty for latency percentiles and keeps each
/// histogram at tens of kilobytes instead of the ~220 KB that three digits cost.
const SIGNIFICANT_DIGITS: u8 = 2;

impl LatencyRecorder {
    pub(crate) fn new() -> Self {
        LatencyRecorder {
            histogram: Histogram::new_with_bounds(1, MAX_TRACKED_NS, SIGNIFICANT_DIGITS)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records `count` packets that each took `ns`. Never allocates.
    #[inline]
    pub(crate) fn record_n(&mut self, ns: u64, count: u64) {
        let _ = self.histogram.record_n(ns.clamp(1, MAX_TRACKED_NS), count);
    }

    /// A copy of the distribution so far (allocates: for snapshot requests only).
    pub(crate) fn snapshot(&self) -> Latency {
        Latency {
            histogram: self.histogram.clone(),
        }
    }

    /// The final distribution, moved out without copying.
    pub(crate) fn into_latency(self) -> Latency {
        Latency {
            histogram: self.histogram,
        }
    }

    /// Bytes this histogram keeps.
    pub(crate) fn reserved_bytes() -> usize {
        Self::new().histogram.distinct_values() * std::mem::size_of::<u64>()
    }
}

/// A latency distribution: the percentiles and the full histogram.
#[derive(Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

/// Percentiles of a latency distribution, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Percentiles {
    /// Packets recorded.
    pub count: u64,
    /// Smallest value.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
}

impl Latency {
    pub(crate) fn empty() -> Self {
        Latency {
            histogram: LatencyRecorder::new().histogram,
        }
    }

    /// Count, min, p50/p90/p99/p99.9 and max, in nanoseconds (all 0 when empty).
    pub fn percentiles(&self) -> Percentiles {
        let h = &self.histogram;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// The histogram in HdrHistogram's V2-deflate encoding, base64: the form the HdrHistogram
    /// log format and libraries such as hdr-histogram-js read.
    pub fn to_v2_deflate_base64(&self) -> String {
        use base64::Engine as _;
        let mut bytes = Vec::new();
        // Serializing into a Vec cannot fail for a histogram with valid bounds.
        let _ = V2DeflateSerializer::new().serialize(&self.histogram, &mut bytes);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.percentiles().fmt(f)
    }
}

impl LatencySnapshot {
    /// Adds `other`'s samples to this snapshot's (both directions of a tunnel, say).
    pub fn add(&mut self, other: &LatencySnapshot) {
        // Both come from recorders with the same bounds, so adding cannot fail.
        let _ = self.engine.histogram.add(&other.engine.histogram);
        let _ = self.stage.histogram.add(&other.stage.histogram);
    }

    pub(crate) fn empty() -> Self {
        LatencySnapshot {
            engine: Latency::empty(),
            stage: Latency::empty(),
        }
    }
}

/// Latency snapshot of a whole engine.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LatencySnapshot {
    /// Time in the engine: from the reader's receive to the writer's send.
    pub engine: Latency,
    /// Time in the stage, per packet.
    pub stage: Latency,
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |ns: u64| ns as f64 / 1000.0;
        write!(
            f,
            "n={} min={:.1}µs p50={:.1}µs p90={:.1}µs p99={:.1}µs p99.9={:.1}µs max={:.1}µs",
            self.count,
            us(self.min),
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.p999),
            us(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn percentiles_and_v2_export_round_trip() {
        let mut rec = LatencyRecorder::new();
        for v in 1..=1000u64 {
            rec.record_n(v * 1000, 1);
        }
        rec.record_n(u64::MAX, 1); // clamped, never an error
        let latency = rec.snapshot();
        let p = latency.percentiles();
        assert_eq!(p.count, 1001);
        assert!((990..=1010).contains(&p.min), "{p:?}");
        assert!((495_000..=505_000).contains(&p.p50), "{p:?}");
        assert!(p.max >= MAX_TRACKED_NS);

        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(latency.to_v2_deflate_base64())
            .unwrap();
        let back: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap();
        assert_eq!(back.len(), 1001);
        assert_eq!(
            back.value_at_quantile(0.5),
            latency.histogram.value_at_quantile(0.5)
        );
    }

    #[test]
    fn conservation_arithmetic() {
        let counters = Counters::new(2);
        let out = Direction::Outbound;
        counters.reader(out).rx_packets.add(10);
        let dropped = |reason| Outcome::Dropped(reason);
        counters
            .reader(out)
            .stage
            .of(out)
            .settle(dropped(DropReason::Malformed), 1);
        counters.workers[1]
            .of(out)
            .settle(dropped(DropReason::Stage), 2);
        counters
            .reader(out)
            .stage
            .of(out)
            .settle(dropped(DropReason::StagePanic), 1);
        counters.writer(out).tx_packets.add(5);
        let s = counters.snapshot(out);
        assert_eq!(s.dropped(), 4);
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn a_reply_is_consumed_in_one_direction_and_originated_in_the_other() {
        let counters = Counters::new(0);
        let (out, inb) = (Direction::Outbound, Direction::Inbound);
        // A handshake initiation read from outside, answered toward outside.
        counters.reader(inb).rx_packets.add(1);
        counters
            .reader(inb)
            .stage
            .of(inb)
            .settle(Outcome::Consumed, 1);
        counters
            .reader(inb)
            .stage
            .of(out)
            .settle(Outcome::Originated, 1);
        counters.writer(out).tx_packets.add(1);
        assert_eq!(counters.snapshot(inb).in_flight(), 0);
        assert_eq!(counters.snapshot(out).in_flight(), 0);
        let total = counters.total();
        assert_eq!((total.rx_packets, total.tx_packets), (1, 1));
        assert_eq!((total.originated, total.consumed), (1, 1));
    }
}
