//! Printing counters and latency, and reading what the OS knows: the kernel's interface
//! counters and the process's peak memory.

use std::time::Duration;
use tunpipe::{LatencySnapshot, Percentiles, Stats};

/// Width of the label column in reports.
pub const LABEL: usize = 22;

/// Prints `label` and `value` as one row of a two-column table.
pub fn row(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<LABEL$}{value}");
}

/// 1234567 as "1,234,567".
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let n = n as f64;
    if n >= KIB * KIB {
        format!("{:.1} MiB", n / KIB / KIB)
    } else if n >= KIB {
        format!("{:.1} KiB", n / KIB)
    } else {
        format!("{n} B")
    }
}

/// A duration in the unit that reads best: ns below a microsecond, µs below a millisecond,
/// ms below a second.
pub fn duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

pub fn us(ns: u64) -> String {
    duration(Duration::from_nanos(ns))
}

/// "p50 12.0 µs  p90 ...  p99 ...  p99.9 ...  max ..." for a client-side histogram.
pub fn percentiles(h: &hdrhistogram::Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".to_string();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
        group(h.len())
    )
}

/// The engine's percentiles in the same form as [`percentiles`].
pub fn engine_percentiles(p: &Percentiles) -> String {
    if p.count == 0 {
        return "no samples".to_string();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        us(p.p50),
        us(p.p90),
        us(p.p99),
        us(p.p999),
        us(p.max),
        group(p.count)
    )
}

/// Every engine counter, drops by reason, and the conservation check.
pub fn engine_counters(s: &Stats) {
    direction_counters("engine", s);
}

/// As [`engine_counters`], with the rows labelled `label` (a tunnel has two directions). A
/// stage's own packets show when it made, used or held any: originated (handshakes,
/// keepalives), consumed (handshake messages, keepalives) and held (packets waiting for a
/// handshake now; 0 after stop).
pub fn direction_counters(label: &str, s: &Stats) {
    row(
        &format!("{label} in"),
        format!("{} packets, {}", group(s.rx_packets), bytes(s.rx_bytes)),
    );
    row(
        &format!("{label} out"),
        format!("{} packets, {}", group(s.tx_packets), bytes(s.tx_bytes)),
    );
    let stage_own = s.originated + s.consumed + s.held > 0;
    if stage_own {
        row(
            &format!("{label} stage's own"),
            format!(
                "originated {}, consumed {}, held {}",
                group(s.originated),
                group(s.consumed),
                group(s.held)
            ),
        );
    }
    row(
        &format!("{label} drops"),
        format!(
            "{} in all: ring full {}, malformed {}, oversize {}, stage {}, stage panic {}, \
             no buffer {}, write error {}, stopped {}",
            group(s.dropped()),
            s.drop_ring_full,
            s.drop_malformed,
            s.drop_oversize,
            s.drop_stage,
            s.drop_stage_panic,
            s.drop_no_buffer,
            s.drop_write_error,
            s.drop_stopped
        ),
    );
    row(
        &format!("{label} other"),
        format!(
            "stalls: pool {}, rings {}; read errors {}, wake-ups {}; written without waking \
             the writer {}",
            s.pool_stalls,
            s.ring_stalls,
            s.read_errors,
            group(s.wakeups),
            group(s.tx_direct)
        ),
    );
    let balanced = s.balanced();
    let equation = if stage_own {
        format!(
            "in {} + originated {} = out {} + dropped {} + consumed {} + held {}",
            group(s.rx_packets),
            group(s.originated),
            group(s.tx_packets),
            group(s.dropped()),
            group(s.consumed),
            group(s.held)
        )
    } else {
        format!(
            "in {} = out {} + dropped {}",
            group(s.rx_packets),
            group(s.tx_packets),
            group(s.dropped())
        )
    };
    let verdict = if balanced {
        "every packet accounted for"
    } else {
        "MISMATCH (a bug in the engine)"
    };
    row(
        &format!("{label} conservation"),
        format!("{equation}: {verdict}"),
    );
}

/// Engine time and stage time from the engine's own histograms.
pub fn engine_latency(latency: Option<&LatencySnapshot>) {
    match latency {
        Some(l) => {
            row("engine time", engine_percentiles(&l.engine.percentiles()));
            row("stage time", engine_percentiles(&l.stage.percentiles()));
        }
        None => row("engine time", "unavailable"),
    }
}

/// The kernel's own counters for an interface. For a TUN, "tx" is the kernel handing packets
/// to the device (toward the engine) and "rx" is the engine writing packets into the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelCounters {
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Reads an interface's counters from `/proc/net/dev`, which, unlike `/sys/class/net`, shows
/// the reading process's own network namespace. Read it while the device still exists.
#[cfg(target_os = "linux")]
pub fn kernel_counters(ifname: &str) -> Result<KernelCounters, String> {
    let text = std::fs::read_to_string("/proc/net/dev")
        .map_err(|e| format!("counters unavailable: /proc/net/dev: {e}"))?;
    parse_proc_net_dev(&text, ifname)
        .ok_or_else(|| format!("counters unavailable: {ifname} is not in /proc/net/dev (gone?)"))
}

#[cfg(not(target_os = "linux"))]
pub fn kernel_counters(_ifname: &str) -> Result<KernelCounters, String> {
    Err("counters unavailable on this platform".to_string())
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_proc_net_dev(text: &str, ifname: &str) -> Option<KernelCounters> {
    text.lines().find_map(|line| {
        let (name, fields) = line.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        let f: Vec<u64> = fields
            .split_whitespace()
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop ...
        (f.len() >= 12).then(|| KernelCounters {
            rx_packets: f[1],
            rx_errors: f[2],
            rx_dropped: f[3],
            tx_packets: f[9],
            tx_errors: f[10],
            tx_dropped: f[11],
        })
    })
}

pub fn kernel_rows(ifname: &str, k: Result<KernelCounters, String>) {
    match k {
        Ok(k) => {
            row(
                &format!("kernel {ifname} → engine"),
                format!(
                    "{} packets, dropped {}, errors {}  (tx side: drops here mean the engine \
                     did not read fast enough; on a TUN with offload the kernel counts a TCP \
                     segment of up to 64 KiB as one packet, which the engine counts as the \
                     packets it cuts it into)",
                    group(k.tx_packets),
                    k.tx_dropped,
                    k.tx_errors
                ),
            );
            row(
                &format!("engine → kernel {ifname}"),
                format!(
                    "{} packets, dropped {}, errors {}  (rx side; with offload, coalesced \
                     segments count once)",
                    group(k.rx_packets),
                    k.rx_dropped,
                    k.rx_errors
                ),
            );
        }
        Err(why) => row(&format!("kernel {ifname}"), why),
    }
}

/// The process's peak resident memory (VmHWM), in bytes.
#[cfg(target_os = "linux")]
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(not(target_os = "linux"))]
pub fn peak_rss() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_dev_is_parsed_per_interface() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n   \
             tp0:    8400     100    1    2    0     0          0         0     9000     110    3    4    0     0       0          0\n";
        let k = parse_proc_net_dev(text, "tp0").unwrap();
        assert_eq!((k.rx_packets, k.rx_errors, k.rx_dropped), (100, 1, 2));
        assert_eq!((k.tx_packets, k.tx_errors, k.tx_dropped), (110, 3, 4));
        assert!(parse_proc_net_dev(text, "tp").is_none());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(duration(Duration::from_nanos(80)), "80 ns");
        assert_eq!(duration(Duration::from_micros(250)), "250.0 µs");
        assert_eq!(duration(Duration::from_millis(12)), "12.00 ms");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
