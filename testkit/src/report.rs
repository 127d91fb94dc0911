//! What the benches print and write: their arguments, Markdown tables, numbers, latency
//! histograms, and the result files under `target/bench-results/`.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::path::PathBuf;

/// A bench's command line: `quick` shortens every measurement (a smoke run), `--list` lists
/// the sections, and any other word names a section to run (none: all of them). Other
/// flags (`--bench`, which `cargo bench` passes) are ignored.
#[derive(Debug, Clone, Default)]
pub struct BenchArgs {
    /// A smoke run: every measurement shortened.
    pub quick: bool,
    /// Only list the sections.
    pub list: bool,
    sections: Vec<String>,
}

impl BenchArgs {
    /// This process's arguments.
    pub fn from_env() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        BenchArgs {
            quick: args.iter().any(|a| a == "quick"),
            list: args.iter().any(|a| a == "--list"),
            sections: args
                .into_iter()
                .filter(|a| !a.starts_with('-') && a != "quick")
                .collect(),
        }
    }

    /// Whether the section `name` runs.
    pub fn runs(&self, name: &str) -> bool {
        self.sections.is_empty() || self.sections.iter().any(|s| s == name)
    }

    /// The results' file name: `name`, or `name-quick` for a smoke run.
    pub fn results_name(&self, name: &str) -> String {
        if self.quick {
            format!("{name}-quick")
        } else {
            name.to_string()
        }
    }
}

/// A latency histogram in nanoseconds, 1 ns to 10 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds")
}

/// Count, min, p50, p90, p99, p99.9 and max of a histogram of nanoseconds, in microseconds.
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

/// Where results go: `target/bench-results/` under the workspace root.
pub fn results_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(&manifest);
    let dir = root.join("target/bench-results");
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

/// Writes a bench's results: `value` as `<name>.json` and every table printed so far as
/// `<name>.md`.
pub fn write_results(name: &str, value: &Value) {
    write_json(name, value);
    write_report(name);
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

/// Every line printed with [`say`] so far, as Markdown, for `target/bench-results/<name>.md`.
static REPORT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Prints a line and keeps it for the Markdown report.
pub fn say(line: &str) {
    println!("{line}");
    if let Ok(mut r) = REPORT.lock() {
        r.push_str(line);
        r.push('\n');
    }
}

/// Writes every line printed with [`say`] so far to `target/bench-results/<name>.md`.
pub fn write_report(name: &str) {
    let path = results_dir().join(format!("{name}.md"));
    let text = REPORT.lock().map(|r| r.clone()).unwrap_or_default();
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("could not write {}: {e}", path.display());
    }
}

/// Prints a Markdown table (kept for the report): a header row and rows of cells, columns
/// padded to fit.
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

/// Records a bench section's result (or its error) under `name` in `out`, and prints how long
/// it took since `started`.
pub fn record_section(
    out: &mut serde_json::Map<String, Value>,
    name: &str,
    started: std::time::Instant,
    result: Result<Value, String>,
) {
    match result {
        Ok(v) => {
            out.insert(name.into(), v);
        }
        Err(e) => {
            println!("section {name} failed: {e}");
            out.insert(name.into(), json!({"error": e}));
        }
    }
    println!("[{name}: {:.1} s]", started.elapsed().as_secs_f64());
}
