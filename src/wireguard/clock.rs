//! The stage's clock: one that counts the time a device sleeps, as boringtun's does
//! (`CLOCK_BOOTTIME` on Linux and Android, `CLOCK_MONOTONIC` on Apple, where it counts sleep
//! and `std::time::Instant` does not). The peers' timers are derived from boringtun's timer
//! rules, which boringtun checks on its clock: on another one, a deadline after a sleep would
//! come as late as the sleep was long. The engine's timer thread sleeps on `std` time; a
//! deadline is handed to it as the `std` moment the same distance from now
//! ([`Instant::to_std`]), and a wake (a path change) runs every overdue timer at once.
//!
//! With the test-only feature `mock-clock`, both this clock and boringtun's read
//! mock_instant's, which tests/mock_clock advances to simulate a sleep.

use std::ops::Add;
use std::time::Duration;

/// A moment on the stage's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Instant(Duration);

impl Instant {
    /// Now.
    #[cfg(feature = "mock-clock")]
    pub fn now() -> Instant {
        Instant(mock_instant::MockClock::time())
    }

    /// Now.
    #[cfg(not(feature = "mock-clock"))]
    pub fn now() -> Instant {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid, writable timespec for the call; the clock id is one every
        // supported platform has.
        let rc = unsafe { libc::clock_gettime(CLOCK, &mut t) };
        // The call fails only for an invalid clock id or pointer, neither of which this is.
        debug_assert_eq!(rc, 0);
        Instant(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }

    /// Time from `earlier` to this moment, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// The moment `d` before this one (for tests that simulate a stale reading).
    #[cfg(test)]
    pub fn earlier(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(d))
    }

    /// The moment as ns since the clock's start, to keep in an atomic.
    pub fn as_nanos(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The moment [`Instant::as_nanos`] gave.
    pub fn from_nanos(ns: u64) -> Instant {
        Instant(Duration::from_nanos(ns))
    }

    /// The `std` moment as far from now as this one is (now, if it has passed).
    pub fn to_std(self) -> std::time::Instant {
        std::time::Instant::now() + self.saturating_duration_since(Instant::now())
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0 + d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_moves_forward_and_maps_to_std_time_at_the_same_distance() {
        let a = Instant::now();
        let b = Instant::now();
        assert!(b >= a);
        let later = b + Duration::from_secs(10);
        let std_now = std::time::Instant::now();
        let at = later.to_std();
        let distance = at.duration_since(std_now);
        assert!(distance <= Duration::from_secs(10) && distance > Duration::from_secs(9));
        assert!(
            a.to_std() <= std::time::Instant::now(),
            "a past moment is now"
        );
    }
}
