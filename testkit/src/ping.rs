//! The kernel's `ping` as a client, and its summary line.

use std::process::Command;

/// Runs `ping` with `args` and returns (transmitted, received).
pub fn ping(args: &[&str]) -> Result<(u64, u64), String> {
    let mut command = Command::new("ping");
    command.args(args);
    ping_summary_of(&mut command)
}

/// Runs `command` (a `ping`, perhaps behind `nsenter`) and returns (transmitted, received)
/// from its summary line.
pub fn ping_summary_of(command: &mut Command) -> Result<(u64, u64), String> {
    let out = command.output().map_err(|e| format!("run ping: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    summary(&text).ok_or_else(|| {
        format!(
            "no ping summary in: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (transmitted, received) from ping's "N packets transmitted, M received, ..." line.
pub fn summary(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse::<u64>().ok());
    Some((numbers.next()?, numbers.next()?))
}

/// What a `ping` run saw: echoes sent, replies, and each reply's round trip in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Pings {
    /// Echo requests sent.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// Each reply's round trip (ms), in order.
    pub rtts_ms: Vec<f64>,
}

impl Pings {
    /// The share of echoes unanswered, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * (self.sent - self.received.min(self.sent)) as f64 / self.sent as f64
    }

    /// The median round trip (ms), or NaN without replies.
    pub fn median_ms(&self) -> f64 {
        let mut v = self.rtts_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// Runs `ping` with `args` (not `-q`) and returns every round trip with the counts.
pub fn ping_rtts(args: &[&str]) -> Result<Pings, String> {
    let out = Command::new("ping")
        .args(args)
        .output()
        .map_err(|e| format!("run ping: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (sent, received) = summary(&text).ok_or_else(|| format!("no ping summary in: {text}"))?;
    let rtts_ms = text
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    Ok(Pings {
        sent,
        received,
        rtts_ms,
    })
}
