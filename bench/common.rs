//! Helpers shared by the benches: packet builders, per-thread CPU accounting, percentile
//! tables, JSON results and a hand-written SVG plot of latency percentile distributions.
#![allow(dead_code)]

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// An IPv4/UDP packet from `src`:`sport` to `dst`:`dport` with `payload` bytes (zeros).
pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let body = vec![0u8; payload];
    let builder = etherparse::PacketBuilder::ipv4(src, dst, 64).udp(sport, dport);
    let mut out = Vec::with_capacity(builder.size(body.len()));
    builder
        .write(&mut out, &body)
        .expect("writing into a Vec cannot fail");
    out
}

/// A latency histogram in nanoseconds, 1 ns to 10 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds")
}

/// p50 / p99 / p99.9 / max of a histogram, in microseconds.
pub fn percentiles_us(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| (ns as f64 / 1000.0 * 100.0).round() / 100.0;
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "min_us": us(h.min()),
        "p50_us": us(h.value_at_quantile(0.5)),
        "p90_us": us(h.value_at_quantile(0.9)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
    })
}

/// The percentile distribution of a histogram: (x, latency µs) points where
/// x = log10(1 / (1 - p)), so x = 2 is p99 and x = 3 is p99.9 (HdrHistogram's usual view).
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let top = (h.len() as f64).log10().min(5.0);
    let mut out = Vec::new();
    let mut x = 0.0;
    while x <= top + 1e-9 {
        let p = 1.0 - 10f64.powf(-x);
        out.push((x, h.value_at_quantile(p) as f64 / 1000.0));
        x += 0.05;
    }
    out
}

/// Where results go: `target/bench-results/` under the crate root.
pub fn results_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Writes `value` as pretty JSON to `target/bench-results/<name>.json`.
pub fn write_json(name: &str, value: &Value) {
    let path = results_dir().join(format!("{name}.json"));
    match serde_json::to_string_pretty(value) {
        Ok(text) => match std::fs::write(&path, text) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        },
        Err(e) => eprintln!("could not encode {name}: {e}"),
    }
}

/// What the machine is and how busy it was: recorded beside every result.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "loadavg": read("/proc/loadavg").trim(),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

/// Peak resident set size of this process (VmHWM), in KiB (0 where unknown).
pub fn peak_rss_kib() -> u64 {
    status_field(
        &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
        "VmHWM:",
    )
}

/// Peak resident set size of process `pid` (VmHWM), in KiB (0 where unknown).
pub fn peak_rss_kib_of(pid: u32) -> u64 {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        "VmHWM:",
    )
}

fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time and context switches of a set of threads, from the kernel's per-thread accounting.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadCpu {
    /// Threads that matched.
    pub threads: u32,
    /// Time on CPU in ns (`/proc/self/task/<tid>/schedstat`, first field).
    pub cpu_ns: u64,
    /// Voluntary context switches: the thread blocked (each wake-up that follows is one).
    pub voluntary: u64,
    /// Involuntary context switches: preempted.
    pub involuntary: u64,
}

impl ThreadCpu {
    /// The difference `self - earlier` (threads that exited in between are lost).
    pub fn since(&self, earlier: &ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            threads: self.threads,
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }
}

/// Sums the accounting of this process's threads whose name (`comm`) starts with any of
/// `prefixes`. Linux only; elsewhere it returns zeros.
pub fn thread_cpu(prefixes: &[&str]) -> ThreadCpu {
    let mut total = ThreadCpu::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let comm = comm.trim_end();
        if !prefixes.iter().any(|p| comm.starts_with(p)) {
            continue;
        }
        let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        total.threads += 1;
        total.cpu_ns += schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        total.voluntary += status_field(&status, "voluntary_ctxt_switches:");
        total.involuntary += status_field(&status, "nonvoluntary_ctxt_switches:");
    }
    total
}

/// Names the calling thread (what `thread_cpu` matches on) where the platform allows it.
pub fn name_current_thread(name: &str) {
    #[cfg(target_os = "linux")]
    {
        let _ = std::fs::write("/proc/thread-self/comm", name);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// Every table printed so far, as Markdown, for `target/bench-results/<name>.md`.
static REPORT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Prints a line and keeps it for the Markdown report.
pub fn say(line: &str) {
    println!("{line}");
    if let Ok(mut r) = REPORT.lock() {
        r.push_str(line);
        r.push('\n');
    }
}

/// Writes every table printed so far to `target/bench-results/<name>.md`.
pub fn write_report(name: &str) {
    let path = results_dir().join(format!("{name}.md"));
    let text = REPORT.lock().map(|r| r.clone()).unwrap_or_default();
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("could not write {}: {e}", path.display());
    }
}

/// Prints a table: a header row and rows of cells, columns padded to fit.
pub fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    say(&format!("\n## {title}\n"));
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        say(&format!("| {} |", padded.join(" | ")));
    };
    line(header.iter().map(|s| s.to_string()).collect());
    say(&format!(
        "|{}|",
        widths
            .iter()
            .map(|w| format!("{}:", "-".repeat(w + 1)))
            .collect::<Vec<_>>()
            .join("|")
    ));
    for row in rows {
        line(row.clone());
    }
}

/// Formats a number with thousands separators.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// Spins until `cond` holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// One panel of the latency plot: a title and one percentile curve per contender.
pub struct Panel {
    pub title: String,
    pub curves: Vec<(String, Vec<(f64, f64)>)>,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// Writes panels side by side as one SVG: x is the percentile on a "nines" scale, y the
/// round-trip time in µs on a log scale. Hand-written SVG keeps the benches free of a
/// plotting dependency.
pub fn write_latency_svg(path: &std::path::Path, heading: &str, panels: &[Panel]) {
    let (pw, ph, ml, mt, mb, mr) = (420.0, 330.0, 60.0, 50.0, 50.0, 30.0);
    let width = panels.len() as f64 * (pw + ml + mr) + 10.0;
    let height = ph + mt + mb + 60.0;
    let (mut ymin, mut ymax, mut xmax) = (f64::MAX, 0f64, 1f64);
    for p in panels {
        for (_, c) in &p.curves {
            for &(x, y) in c {
                ymin = ymin.min(y.max(0.1));
                ymax = ymax.max(y);
                xmax = xmax.max(x);
            }
        }
    }
    if ymax <= 0.0 {
        return;
    }
    let lo = ymin.log10().floor();
    let hi = ymax.log10().ceil().max(lo + 1.0);
    let xmax = xmax.ceil().min(5.0);
    let mut s = String::new();
    s.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    ));
    s.push_str(&format!(
        "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{heading}</text>\n"
    ));
    for (i, panel) in panels.iter().enumerate() {
        let ox = 10.0 + i as f64 * (pw + ml + mr) + ml;
        let oy = mt;
        let px = |x: f64| ox + x / xmax * pw;
        let py = |y: f64| oy + ph - (y.max(0.1).log10() - lo) / (hi - lo) * ph;
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\n",
            ox + pw / 2.0,
            oy - 8.0,
            panel.title
        ));
        s.push_str(&format!(
            "<rect x=\"{ox:.1}\" y=\"{oy:.1}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n"
        ));
        let mut decade = lo;
        while decade <= hi + 1e-9 {
            for m in [1.0, 2.0, 5.0] {
                let v = 10f64.powf(decade) * m;
                if v.log10() > hi + 1e-9 {
                    continue;
                }
                let y = py(v);
                s.push_str(&format!(
                    "<line x1=\"{ox:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                    ox + pw,
                    ox - 4.0,
                    y + 4.0,
                    if v >= 1.0 { format!("{v:.0}") } else { format!("{v}") }
                ));
            }
            decade += 1.0;
        }
        for n in 0..=(xmax as u32) {
            let x = px(f64::from(n));
            let label = match n {
                0 => "p0".to_string(),
                1 => "p90".to_string(),
                2 => "p99".to_string(),
                n => format!("p99.{}", "9".repeat(n as usize - 2)),
            };
            s.push_str(&format!(
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{oy:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
                oy + ph,
                oy + ph + 16.0
            ));
        }
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>\n\
             <text transform=\"translate({:.1},{:.1}) rotate(-90)\" text-anchor=\"middle\">round trip, µs (log)</text>\n",
            ox + pw / 2.0,
            oy + ph + 34.0,
            ox - 42.0,
            oy + ph / 2.0
        ));
        for (j, (label, curve)) in panel.curves.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let points: Vec<String> = curve
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                points.join(" ")
            ));
            let ly = oy + ph + 50.0 + (j / 3) as f64 * 16.0;
            let lx = ox + (j % 3) as f64 * 140.0;
            s.push_str(&format!(
                "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\n\
                 <text x=\"{:.1}\" y=\"{ly:.1}\">{label}</text>\n",
                lx + 18.0,
                ly - 4.0,
                ly - 4.0,
                lx + 22.0
            ));
        }
    }
    s.push_str("</svg>\n");
    match std::fs::write(path, s) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}

/// A receive half that spins for a while before it waits: an experiment that shows what the
/// engine's reader would gain from a spin window before `wait_readable`, as its other actors
/// have. While spinning it tries `recv` (on a TUN, a non-blocking read syscall) and keeps the
/// packet it finds for the reader's next `recv` (one extra copy).
pub struct SpinRx<R> {
    inner: R,
    spin: Duration,
    stash: tunpipe::PacketBuf,
    stashed: bool,
}

impl<R: tunpipe::RxHalf> SpinRx<R> {
    /// Wraps `inner`, spinning up to `spin` before each wait.
    pub fn new(inner: R, spin: Duration) -> Self {
        SpinRx {
            inner,
            spin,
            stash: tunpipe::PacketBuf::new(0, 65_536, 0),
            stashed: false,
        }
    }
}

impl<R: tunpipe::RxHalf> tunpipe::RxHalf for SpinRx<R> {
    fn recv(&mut self, packet: &mut tunpipe::PacketBuf) -> std::io::Result<()> {
        if std::mem::take(&mut self.stashed) {
            // Like a TUN read into a short buffer: truncated, and the reader sees it.
            let n = self.stash.len().min(packet.len());
            packet.data_mut()[..n].copy_from_slice(&self.stash.data()[..n]);
            let _ = packet.truncate(n);
            return Ok(());
        }
        self.inner.recv(packet)
    }

    fn wait_readable(&mut self) -> std::io::Result<()> {
        if self.stashed {
            return Ok(());
        }
        let start = Instant::now();
        let mut tries = 0u32;
        loop {
            // The whole stash is the receive area.
            let _ = self.stash.set_window(0, self.stash.capacity());
            match self.inner.recv(&mut self.stash) {
                Ok(()) => {
                    self.stashed = true;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            tries += 1;
            if tries % 16 == 0 && start.elapsed() >= self.spin {
                return self.inner.wait_readable();
            }
            std::hint::spin_loop();
        }
    }

    fn interrupter(&self) -> tunpipe::device::Interrupter {
        self.inner.interrupter()
    }
}
