//! Counters, latency histograms and their snapshots.
//!
//! Each actor writes only its own cache-padded counters (one writer per counter, so plain
//! `fetch_add` with `Relaxed` is enough and no line bounces between cores); anyone may read
//! them. Conservation holds once the engine has stopped:
//! `rx_packets == tx_packets + dropped()`, and tests assert it.
//!
//! Latency histograms are owned by the worker and writer threads and never locked; a snapshot
//! asks the owners through their mailboxes (see `engine.rs`).

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

/// Counters written by the reader.
#[derive(Default, Debug)]
pub(crate) struct ReaderCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub drop_ring_full: Counter,
    pub drop_malformed: Counter,
    pub drop_oversize: Counter,
    pub pool_stalls: Counter,
    pub read_errors: Counter,
    pub wakeups: Counter,
    /// Stage results when the stage runs inline on the reader.
    pub stage: StageCounters,
}

/// Counters written by whoever runs a stage.
#[derive(Default, Debug)]
pub(crate) struct StageCounters {
    pub drop_stage: Counter,
    pub drop_stage_panic: Counter,
    pub stopped: Counter,
    pub wakeups: Counter,
}

/// Counters written by the writer.
#[derive(Default, Debug)]
pub(crate) struct WriterCounters {
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    pub drop_write_error: Counter,
    pub stopped: Counter,
    pub wakeups: Counter,
}

/// Every actor's counters, each group on its own cache lines.
#[derive(Debug)]
pub(crate) struct Counters {
    pub reader: CachePadded<ReaderCounters>,
    pub workers: Box<[CachePadded<StageCounters>]>,
    pub writer: CachePadded<WriterCounters>,
}

impl Counters {
    pub(crate) fn new(workers: usize) -> Self {
        Counters {
            reader: CachePadded::default(),
            workers: (0..workers).map(|_| CachePadded::default()).collect(),
            writer: CachePadded::default(),
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let r = &self.reader;
        let w = &self.writer;
        let stage_groups = || self.workers.iter().map(|c| &**c).chain([&r.stage]);
        let sum = |f: fn(&StageCounters) -> &Counter| stage_groups().map(|c| f(c).get()).sum();
        // Read the writer's side first: a packet counted out was counted in earlier, so a
        // snapshot taken while running never shows more out than in.
        let tx_packets = w.tx_packets.get();
        let tx_bytes = w.tx_bytes.get();
        let drop_write_error = w.drop_write_error.get();
        let drop_stage = sum(|c| &c.drop_stage);
        let drop_stage_panic = sum(|c| &c.drop_stage_panic);
        let drop_stopped = w.stopped.get() + sum(|c| &c.stopped);
        Stats {
            rx_packets: r.rx_packets.get(),
            rx_bytes: r.rx_bytes.get(),
            tx_packets,
            tx_bytes,
            drop_ring_full: r.drop_ring_full.get(),
            drop_malformed: r.drop_malformed.get(),
            drop_oversize: r.drop_oversize.get(),
            drop_stage,
            drop_stage_panic,
            drop_write_error,
            drop_stopped,
            pool_stalls: r.pool_stalls.get(),
            read_errors: r.read_errors.get(),
            wakeups: r.wakeups.get() + w.wakeups.get() + sum(|c| &c.wakeups),
        }
    }
}

/// A snapshot of the engine's counters.
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
    /// Dropped by the reader because the chosen worker's ring was full (back-pressure).
    pub drop_ring_full: u64,
    /// Dropped by the reader: empty, or not an IPv4/IPv6 packet.
    pub drop_malformed: u64,
    /// Dropped by the reader: longer than the MTU.
    pub drop_oversize: u64,
    /// Dropped because the stage said so.
    pub drop_stage: u64,
    /// Dropped because the stage panicked on them.
    pub drop_stage_panic: u64,
    /// Dropped because the device refused the write (EINVAL, ENOBUFS, EAGAIN, short write).
    pub drop_write_error: u64,
    /// Still in flight when the engine stopped.
    pub drop_stopped: u64,
    /// Times the reader found the pool empty and waited for buffers to come home (not drops:
    /// the kernel's queue takes the pressure meanwhile).
    pub pool_stalls: u64,
    /// Receive errors that were not fatal (counted, then the reader went on).
    pub read_errors: u64,
    /// Times an actor parked and was woken.
    pub wakeups: u64,
}

impl Stats {
    /// Every packet dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.drop_ring_full
            + self.drop_malformed
            + self.drop_oversize
            + self.drop_stage
            + self.drop_stage_panic
            + self.drop_write_error
            + self.drop_stopped
    }

    /// Packets read but neither written nor dropped yet: 0 once the engine has stopped.
    pub fn in_flight(&self) -> u64 {
        self.rx_packets
            .saturating_sub(self.tx_packets + self.dropped())
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
        counters.reader.rx_packets.add(10);
        counters.reader.drop_malformed.add(1);
        counters.workers[1].drop_stage.add(2);
        counters.reader.stage.drop_stage_panic.add(1);
        counters.writer.tx_packets.add(5);
        let s = counters.snapshot();
        assert_eq!(s.dropped(), 4);
        assert_eq!(s.in_flight(), 1);
    }
}
