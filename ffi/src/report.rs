//! The C views of [`Stats`] and latency, and how they are written into a caller's struct.

use super::error::{FfiError, FfiResult, TUNPIPE_ERR_INVALID_ARGUMENT};
use super::util::Sized32;
use tunpipe::{LatencySnapshot, Percentiles, Stats};

/// Which latency histogram: time in the engine (read to write).
pub const TUNPIPE_LATENCY_ENGINE: u32 = 0;
/// Which latency histogram: time in the stage.
pub const TUNPIPE_LATENCY_STAGE: u32 = 1;

/// The engine's counters. Set `size = sizeof(TunpipeStats)` before the call; tunpipe writes
/// at most that many bytes and sets `size` to the bytes it wrote.
///
/// After stop, `rx_packets == tx_packets + dropped` (conservation), and `dropped` is the sum
/// of the `drop_*` fields.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TunpipeStats {
    /// In: the caller's `sizeof(TunpipeStats)`. Out: the bytes written.
    pub size: u32,
    /// Zero.
    pub reserved0: u32,
    /// Packets read from the device.
    pub rx_packets: u64,
    /// Bytes read.
    pub rx_bytes: u64,
    /// Packets written to the device.
    pub tx_packets: u64,
    /// Bytes written.
    pub tx_bytes: u64,
    /// Dropped: the worker's ring was full (back-pressure).
    pub drop_ring_full: u64,
    /// Dropped: empty, or not IPv4/IPv6.
    pub drop_malformed: u64,
    /// Dropped: longer than the MTU.
    pub drop_oversize: u64,
    /// Dropped by the stage (including C stage results that could not be applied).
    pub drop_stage: u64,
    /// Dropped because a Rust stage panicked on them.
    pub drop_stage_panic: u64,
    /// Dropped: the device refused the write.
    pub drop_write_error: u64,
    /// Still in flight when the engine stopped.
    pub drop_stopped: u64,
    /// Times the reader waited for buffers (not drops).
    pub pool_stalls: u64,
    /// Non-fatal receive errors.
    pub read_errors: u64,
    /// Times an actor parked and was woken.
    pub wakeups: u64,
    /// C stage results that could not be applied (a window outside the buffer, or an
    /// unknown verdict). Each is also in `drop_stage`.
    pub callback_errors: u64,
    /// Bytes the engine reserved at start (pool, rings, histograms).
    pub reserved_bytes: u64,
    /// Every packet dropped, whatever the reason: the sum of the seven `drop_*` fields.
    pub dropped: u64,
    /// Zero; room for counters added later.
    pub reserved: [u64; 7],
}

/// One latency distribution, in nanoseconds (all 0 when nothing was recorded).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TunpipePercentiles {
    /// Packets recorded.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// Latency percentiles. Set `size = sizeof(TunpipeLatency)` before the call; tunpipe writes
/// at most that many bytes and sets `size` to the bytes it wrote.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TunpipeLatency {
    /// In: the caller's `sizeof(TunpipeLatency)`. Out: the bytes written.
    pub size: u32,
    /// Zero.
    pub reserved0: u32,
    /// Time in the engine: from the reader's receive to the writer's send.
    pub engine: TunpipePercentiles,
    /// Time in the stage, per packet (a batch's time shared evenly by its packets).
    pub stage: TunpipePercentiles,
    /// Zero; room for fields added later.
    pub reserved: [u64; 8],
}

impl From<Percentiles> for TunpipePercentiles {
    fn from(p: Percentiles) -> Self {
        TunpipePercentiles {
            count: p.count,
            min: p.min,
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            p999: p.p999,
            max: p.max,
        }
    }
}

impl TunpipeStats {
    pub(crate) fn from_stats(s: &Stats, callback_errors: u64, reserved_bytes: usize) -> Self {
        TunpipeStats {
            size: std::mem::size_of::<Self>() as u32,
            reserved0: 0,
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
            drop_ring_full: s.drop_ring_full,
            drop_malformed: s.drop_malformed,
            drop_oversize: s.drop_oversize,
            drop_stage: s.drop_stage,
            drop_stage_panic: s.drop_stage_panic,
            drop_write_error: s.drop_write_error,
            drop_stopped: s.drop_stopped,
            pool_stalls: s.pool_stalls,
            read_errors: s.read_errors,
            wakeups: s.wakeups,
            callback_errors,
            reserved_bytes: reserved_bytes as u64,
            dropped: s.dropped(),
            reserved: [0; 7],
        }
    }
}

impl TunpipeLatency {
    pub(crate) fn from_snapshot(l: &LatencySnapshot) -> Self {
        TunpipeLatency {
            size: std::mem::size_of::<Self>() as u32,
            reserved0: 0,
            engine: l.engine.percentiles().into(),
            stage: l.stage.percentiles().into(),
            reserved: [0; 8],
        }
    }
}

impl Sized32 for TunpipeStats {
    fn with_size(mut self, size: u32) -> Self {
        self.size = size;
        self
    }
}

impl Sized32 for TunpipeLatency {
    fn with_size(mut self, size: u32) -> Self {
        self.size = size;
        self
    }
}

/// The histogram `which` names, in V2-deflate base64.
pub(crate) fn latency_base64(l: &LatencySnapshot, which: u32) -> FfiResult<String> {
    match which {
        TUNPIPE_LATENCY_ENGINE => Ok(l.engine.to_v2_deflate_base64()),
        TUNPIPE_LATENCY_STAGE => Ok(l.stage.to_v2_deflate_base64()),
        other => Err(FfiError::new(
            TUNPIPE_ERR_INVALID_ARGUMENT,
            format!("unknown latency kind {other}"),
        )),
    }
}

// The prefix copy relies on these layouts having no padding.
const _: () = assert!(std::mem::size_of::<TunpipeStats>() == 8 + 8 * (16 + 8));
const _: () = assert!(std::mem::size_of::<TunpipeLatency>() == 8 + 8 * (7 * 2 + 8));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TUNPIPE_ERR_STRUCT_SIZE;
    use crate::util::write_sized;

    #[test]
    fn an_older_shorter_struct_gets_only_its_prefix() {
        let stats = TunpipeStats {
            rx_packets: 7,
            tx_packets: 5,
            ..Default::default()
        };
        // A caller that knows only size, reserved0, rx_packets and rx_bytes (24 bytes),
        // followed by bytes it owns that must stay untouched.
        let mut memory = [0xeeee_eeee_eeee_eeeeu64; std::mem::size_of::<TunpipeStats>() / 8];
        let out = memory.as_mut_ptr().cast::<TunpipeStats>();
        // SAFETY: `memory` is aligned for u64 and as large as TunpipeStats.
        unsafe { out.cast::<u32>().write(24) };
        // SAFETY: as above; the caller's size (24) is within the buffer.
        unsafe { write_sized(out, stats) }.unwrap();
        // SAFETY: reading back the caller's fields.
        let (size, rx) = unsafe { ((*out).size, (*out).rx_packets) };
        assert_eq!((size, rx), (24, 7));
        assert!(memory[3..].iter().all(|&w| w == 0xeeee_eeee_eeee_eeee));

        let mut tiny = TunpipeStats {
            size: 4,
            ..Default::default()
        };
        // SAFETY: a whole struct, whose size field claims less than the header.
        let err = unsafe { write_sized(&mut tiny, stats) }.unwrap_err();
        assert_eq!(err.code, TUNPIPE_ERR_STRUCT_SIZE);
    }
}
