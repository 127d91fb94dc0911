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
