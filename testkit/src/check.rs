//! Assertions for libtest-mimic tests (they return errors instead of panicking), packet
//! conservation, and waiting for a condition without timing anything.

use libtest_mimic::Failed;
use std::time::{Duration, Instant};
use tunpipe::Stats;

/// `Ok` when `cond` holds, else a failure with the message `msg` makes.
pub fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(msg().into())
    }
}

/// Whether every packet the engine read, or a stage made (originated), was written, dropped
/// with a reason, used by the stage's protocol (consumed), or is held by the stage for a
/// handshake ([`Stats::balanced`]). A one-way engine's stage neither makes, takes in nor
/// holds packets; a tunnel's counts each direction on its own.
pub fn is_conserved(s: &Stats) -> bool {
    s.balanced()
}

/// Fails unless every packet read was written or dropped with a reason.
pub fn conserved(s: &Stats) -> Result<(), Failed> {
    check(is_conserved(s), || format!("conservation broken: {s:?}"))
}

/// Panics unless the engine conserved packets ([`is_conserved`]) (for `#[test]`s).
pub fn assert_conserved(s: &Stats) {
    assert!(
        is_conserved(s),
        "every packet read or made is written, dropped with a reason, consumed or held: {s:?}"
    );
}

/// Waits until `cond` holds, up to a generous deadline (30 s); returns whether it did. The
/// deadline turns a hang into a failure; it is not a timing assertion.
pub fn eventually(cond: impl FnMut() -> bool) -> bool {
    eventually_within(Duration::from_secs(30), cond)
}

/// Polls `cond` every millisecond until it holds or `limit` passes; returns whether it held.
pub fn eventually_within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}
