//! Links: an rtrb SPSC ring plus the consumer's doorbell. The only way packets cross threads.
//!
//! # The doorbell protocol
//!
//! A consumer with nothing to do spins briefly, then yields, then parks. Before parking it
//! raises `sleeping` with an acquire-release swap and checks for work once more. A producer
//! publishes its items, then lowers `sleeping` with an acquire-release swap, and unparks the
//! consumer only if the swap found it raised. Both sides modify the same flag, and its
//! modifications form one total order, so one of two things happened:
//! - the consumer's swap came first: the producer's swap reads it and unparks the consumer;
//! - the producer's swap came first: the consumer's swap reads it (or a later value), which
//!   synchronizes with the producer, so the consumer's check sees the published items.
//!
//! Either way no wake-up is lost, with acquire/release alone. The consumer lowers the flag with
//! a swap too, never a plain store: a plain store would end the producer's release sequence,
//! and the consumer's next raise could then read it without synchronizing with the producer
//! (loom found exactly that lost wake-up; see `loom_models` below).
//! `park` keeps an unpark token, so an unpark that lands between the consumer's last check and
//! its `park` call is not lost either. A busy consumer never raises the flag, so a busy
//! pipeline makes no wake-up syscalls: the producer's swap costs one atomic instruction per
//! batch, on a line only it writes while the consumer is busy.
//!
//! # The send token: past the ring when the writer sleeps
//!
//! Waking a sleeping writer for one packet costs a second thread wake-up; sending the packet
//! from the producer's own thread costs none. So a producer that finds the writer asleep and
//! its own ring to it empty, with sparse traffic (its cadence predicts no work within its
//! spin window), may send on the writer's send half itself, as the kernel sends on
//! an idle queue without queueing (`TCQ_F_CAN_BYPASS`). The [`SendToken`] keeps order: the
//! writer holds it from before it pops packets until they are written, and a producer sends
//! past its ring only holding it, having seen its ring empty. Only that producer fills its
//! ring, so a ring it saw empty holds nothing of its: every packet it pushed earlier was
//! popped, and so (the token being free) written. The writer takes the send half out of the
//! token when it leaves, so no producer borrows it after that.

use crate::sync::{
    current, park, park_timeout, AtomicBool, Mutex, MutexGuard, Ordering, Thread, TryLockError,
};
use std::time::{Duration, Instant};

/// The consumer side's "I am asleep" flag and its thread handle.
#[derive(Default)]
pub(crate) struct Doorbell {
    sleeping: AtomicBool,
    /// Locked only to register a consumer and to wake one that sleeps, never per packet.
    thread: Mutex<Option<Thread>>,
}

impl Doorbell {
    /// Registers the calling thread as the one to wake. The consumer calls it before it first
    /// sleeps, so a producer that sees `sleeping` always finds a thread to unpark. A later
    /// consumer (the next run on the same device) registers itself in turn.
    pub(crate) fn register_current(&self) {
        *lock(&self.thread) = Some(current());
    }

    /// Called by a producer after publishing: wakes the consumer if it is asleep.
    /// Returns true when it had to wake it (a wake-up syscall was made).
    #[inline]
    pub(crate) fn ring(&self) -> bool {
        if self.sleeping.swap(false, Ordering::AcqRel) {
            self.force();
            return true;
        }
        false
    }

    /// Whether the consumer sleeps (or is about to): a producer that finds it so may send past
    /// the ring ([`SendToken`]). Only a hint for choosing a path; order comes from the token.
    #[inline]
    pub(crate) fn asleep(&self) -> bool {
        self.sleeping.load(Ordering::Acquire)
    }

    /// Unparks the consumer whether or not it sleeps: for stop and snapshot requests, which are
    /// rare and must never be missed.
    pub(crate) fn force(&self) {
        if let Some(thread) = lock(&self.thread).as_ref() {
            thread.unpark();
        }
    }

    /// Parks the calling (consumer) thread unless `has_work` says otherwise once the flag is
    /// up. Returns true if it actually parked.
    pub(crate) fn sleep_unless(&self, has_work: impl Fn() -> bool) -> bool {
        self.sleep_unless_for(has_work, None)
    }

    /// As [`Doorbell::sleep_unless`], waking by itself after `timeout` (the timer's
    /// deadline) if nobody rings first.
    pub(crate) fn sleep_unless_for(
        &self,
        has_work: impl Fn() -> bool,
        timeout: Option<Duration>,
    ) -> bool {
        self.sleeping.swap(true, Ordering::AcqRel);
        if has_work() {
            self.sleeping.swap(false, Ordering::AcqRel);
            return false;
        }
        match timeout {
            Some(timeout) => park_timeout(timeout),
            None => park(),
        }
        self.sleeping.swap(false, Ordering::AcqRel);
        true
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing that holds this lock can panic, so poisoning cannot happen; take it anyway.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A writer's send half `S`, and the token to use it (module docs, "The send token"): the
/// writer holds it while it pops and writes; a producer borrows it to send past its ring.
pub(crate) struct SendToken<S> {
    /// `None` once the writer has left: nobody sends any more.
    half: Mutex<Option<S>>,
}

impl<S> SendToken<S> {
    pub(crate) fn new(half: S) -> Self {
        SendToken {
            half: Mutex::new(Some(half)),
        }
    }

    /// The writer's: the token, taken before it pops packets and kept until they are
    /// written. Waits while a producer sends past its ring (one send call's time).
    pub(crate) fn hold(&self) -> MutexGuard<'_, Option<S>> {
        #[cfg(tunpipe_loom)]
        loop {
            // loom lets an unpark (a producer's ring) wake a thread blocked in a mutex, which
            // std does not, and then trips over it: in the model the writer waits for the
            // token by trying and yielding, which is the same wait.
            match self.half.try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => loom::thread::yield_now(),
            }
        }
        #[cfg(not(tunpipe_loom))]
        lock(&self.half)
    }

    /// A producer's, having seen its ring to the writer empty: the send half, if the token is
    /// free, the writer (whose doorbell is `writer`) sleeps, the half is still there and
    /// `allowed` (stop has not begun) says yes once the token is held. Otherwise `None`, and
    /// the producer uses its ring.
    pub(crate) fn try_bypass(
        &self,
        writer: &Doorbell,
        allowed: impl FnOnce() -> bool,
    ) -> Option<MutexGuard<'_, Option<S>>> {
        if !writer.asleep() {
            return None;
        }
        let guard = match self.half.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        (guard.is_some() && allowed()).then_some(guard)
    }

    /// The writer's, as it leaves: the send half, for it to drop; no producer can borrow it
    /// after this.
    pub(crate) fn take(&self) -> Option<S> {
        lock(&self.half).take()
    }
}

/// How long a consumer spins, then yields, before it parks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub spin: Duration,
    pub yields: u32,
    /// Offer the core to other runnable threads while spinning
    /// ([`Config::yield_while_spinning`]).
    ///
    /// [`Config::yield_while_spinning`]: crate::Config::yield_while_spinning
    pub yield_while_spinning: bool,
}

/// How soon a consumer's next piece of work is likely to come, from the gaps between the
/// last few: staying awake for it (spinning, yielding, reading again) pays only when it comes
/// within the spin window; otherwise a sleep and a wake-up cost less. The memory is short
/// (each new gap weighs half), and a gap counts for at most [`Cadence::CAP`] windows, so a
/// burst after a long silence is recognised within a few pieces of work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cadence {
    last: Option<Instant>,
    /// The predicted gap to the next piece of work.
    gap: Duration,
}

impl Cadence {
    /// How many spin windows a gap counts for at most.
    const CAP: u32 = 4;

    /// Nothing seen yet: a consumer stays awake for its window, as it would for busy work,
    /// until the gaps between its first pieces of work show their cadence.
    pub(crate) fn new() -> Self {
        Cadence {
            last: None,
            gap: Duration::ZERO,
        }
    }

    /// A piece of work came at `now`.
    #[inline]
    pub(crate) fn arrived(&mut self, now: Instant, window: Duration) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last).min(window * Self::CAP);
            self.gap = (self.gap + gap) / 2;
        }
        self.last = Some(now);
    }

    /// Whether work comes densely: the predicted gap is at most half of `window`, well inside
    /// the window even when measured by a consumer that slept (see [`Cadence::within`]).
    /// Then the consumer hands on through the ring, to a writer that stays awake for it.
    #[inline]
    pub(crate) fn dense(&self, window: Duration) -> bool {
        !window.is_zero() && self.gap <= window / 2
    }

    /// Whether the next piece of work is predicted within `window`. The gaps a consumer
    /// that slept saw include its wake-up, which costs about a window (`Config::spin`): so a
    /// gap up to two windows counts as within one. Else a consumer that slept would see its
    /// own wake-ups as sparse traffic and sleep on (at one packet in flight, it did).
    #[inline]
    pub(crate) fn within(&self, window: Duration) -> bool {
        !window.is_zero() && self.gap <= window * 2
    }
}

/// One consumer's idle state between two pieces of work.
pub(crate) struct Idle {
    backoff: Backoff,
    cadence: Cadence,
    started: Option<Instant>,
    spins: u32,
    yields: u32,
}

/// What [`Idle::wait`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    Spun,
    Yielded,
    /// Parked, and woken (or found work after raising the flag, `parked == false`).
    Slept {
        parked: bool,
    },
}

impl Idle {
    pub(crate) fn new(backoff: Backoff) -> Self {
        Idle {
            backoff,
            cadence: Cadence::new(),
            started: None,
            spins: 0,
            yields: 0,
        }
    }

    /// Work was found: it feeds the cadence, and the next idle period starts afresh.
    #[inline]
    pub(crate) fn reset(&mut self) {
        self.cadence.arrived(Instant::now(), self.backoff.spin);
        self.restart();
    }

    /// Whether the cadence of recent work says it comes densely ([`Cadence::dense`]): then a
    /// producer hands on through the ring rather than past it.
    pub(crate) fn expects_more(&self) -> bool {
        self.cadence.dense(self.backoff.spin)
    }

    /// The next idle period starts afresh, without counting as work for the cadence (the
    /// reader, whose every pass ends its stall waits, uses this: its idle state serves only
    /// back-pressure, where it stays awake as for busy work).
    pub(crate) fn restart(&mut self) {
        self.started = None;
        self.spins = 0;
        self.yields = 0;
    }

    /// One step of spin → yield → park, where spinning and yielding happen only when the
    /// cadence of recent work predicts the next piece within the spin window (else the
    /// consumer parks at once). `has_work` is the full wake-up condition (ring not empty,
    /// stop requested, mail waiting) and is checked after the sleeping flag is raised.
    pub(crate) fn wait(&mut self, doorbell: &Doorbell, has_work: impl Fn() -> bool) -> Waited {
        if self.cadence.within(self.backoff.spin) {
            if self.spin() {
                return Waited::Spun;
            }
            if self.yields < self.backoff.yields {
                self.yields += 1;
                std::thread::yield_now();
                return Waited::Yielded;
            }
        }
        let parked = doorbell.sleep_unless(has_work);
        self.restart();
        Waited::Slept { parked }
    }

    /// One step of the spin window, or false once the window is over. Each step is a cheap
    /// check by the caller (a ring's head), so the clock, and the yield, come every 64 steps.
    fn spin(&mut self) -> bool {
        if self.spins & 63 == 0 {
            let started = *self.started.get_or_insert_with(Instant::now);
            if started.elapsed() >= self.backoff.spin {
                return false;
            }
            if self.backoff.yield_while_spinning && self.spins != 0 {
                // Let a thread that has work (often the one this consumer waits for) run
                // now, instead of at the scheduler's next tick.
                self.spins = self.spins.wrapping_add(1);
                std::thread::yield_now();
                return true;
            }
        }
        self.spins = self.spins.wrapping_add(1);
        std::hint::spin_loop();
        true
    }
}

/// Whether the reader's spins have paid lately: whether its spinning cost at most a quarter
/// of the spin window per packet it found (12.5 µs at the default 50 µs; a sleep and a
/// wake-up cost about 10 µs of CPU here, PERFORMANCE.md "Energy"). Then spinning costs no
/// more than sleeping would have. Per packet, because a spin that ends with a batch (a
/// saturated engine) pays for all of it.
///
/// The cadence alone cannot decide this: the gaps a reader that slept measures include its
/// own wake-up, so packets 50 µs apart (which sleeping serves for less CPU) look like one
/// packet in flight on this VM (whose round trip is short only while the reader stays
/// awake). Spinning tells them apart once the pipeline has settled: the first then still
/// waits about 50 µs per packet, or catches a burst's next one at once and the one after it
/// late, the second about 3 µs each time (reader and writer both awake). Settling can take
/// more than a hundred packets (a trial of 64 was too short for it in most runs), so the
/// first [`Payoff::TRIAL`] spins (at the start, and after each rest) are not judged;
/// after that, each [`Payoff::ROUND`] spins are. A round whose spinning per packet is longer
/// than the bound sends the reader to sleep at once for a rest of [`Payoff::FIRST_REST`] packets,
/// each rest after another without a paying round twice as long (up to
/// [`Payoff::LONGEST_REST`]); then it tries again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Payoff {
    /// Spins left before spins are judged.
    trial: u32,
    /// The judged spins of this round, their time, and the packets they found.
    spins: u32,
    spent: Duration,
    found: u32,
    /// Packets to sleep through before spinning again.
    rest: u32,
    next_rest: u32,
}

impl Payoff {
    const TRIAL: u32 = 256;
    const ROUND: u32 = 16;
    const FIRST_REST: u32 = 64;
    const LONGEST_REST: u32 = 16_384;

    pub(crate) fn new() -> Self {
        Payoff {
            trial: Self::TRIAL,
            spins: 0,
            spent: Duration::ZERO,
            found: 0,
            rest: 0,
            next_rest: Self::FIRST_REST,
        }
    }

    /// Whether the reader may spin now (it is not resting).
    pub(crate) fn may_spin(&self) -> bool {
        self.rest == 0
    }

    /// A spin of `spun` ended with `found` packets (0 at the end of the window); `pays` is
    /// the most spinning per packet that costs no more than sleeping.
    pub(crate) fn spun(&mut self, spun: Duration, found: usize, pays: Duration) {
        if self.trial > 0 {
            self.trial -= 1;
            return;
        }
        self.spins += 1;
        self.spent += spun;
        self.found = self
            .found
            .saturating_add(u32::try_from(found).unwrap_or(u32::MAX));
        if self.spins < Self::ROUND {
            return;
        }
        if self.spent > pays.saturating_mul(self.found) {
            self.rest = self.next_rest;
            self.next_rest = (self.next_rest * 2).min(Self::LONGEST_REST);
            self.trial = Self::TRIAL;
        } else {
            self.next_rest = Self::FIRST_REST;
        }
        self.spins = 0;
        self.spent = Duration::ZERO;
        self.found = 0;
    }

    /// Packets came: a rest is that much shorter.
    pub(crate) fn packets_came(&mut self) {
        self.rest = self.rest.saturating_sub(1);
    }
}

/// The reader's spin window: after a receive finds the device empty, the reader tries again
/// for [`Backoff::spin`] before it waits in the kernel, if the cadence of recent packets
/// predicts the next within that window and its recent spins paid ([`Payoff`]). Each try is
/// a receive (on a TUN, a syscall), so the clock is read on every try, and the yield comes
/// every 16 tries.
pub(crate) struct RetryWindow {
    backoff: Backoff,
    cadence: Cadence,
    payoff: Payoff,
    started: Option<Instant>,
    tries: u32,
}

impl RetryWindow {
    pub(crate) fn new(backoff: Backoff) -> Self {
        RetryWindow {
            backoff,
            cadence: Cadence::new(),
            payoff: Payoff::new(),
            started: None,
            tries: 0,
        }
    }

    /// `packets` came: they feed the cadence (and, if they ended a spin, its payoff), and the
    /// next empty device starts a new window.
    #[inline]
    pub(crate) fn reset(&mut self, packets: usize) {
        let now = Instant::now();
        if let Some(started) = self.started {
            let spun = now.saturating_duration_since(started);
            self.payoff.spun(spun, packets, self.backoff.spin / 4);
        }
        self.payoff.packets_came();
        self.cadence.arrived(now, self.backoff.spin);
        self.started = None;
        self.tries = 0;
    }

    /// Whether the cadence of recent packets says they come densely (see
    /// [`Idle::expects_more`]).
    pub(crate) fn expects_more(&self) -> bool {
        self.cadence.dense(self.backoff.spin)
    }

    /// After a receive that found nothing: true to try again (after a pause, or a yield), or
    /// false once the window is over, or when the next packet is not expected within it, to
    /// wait in the kernel (and start a new window after).
    pub(crate) fn try_again(&mut self) -> bool {
        if !self.payoff.may_spin() || !self.cadence.within(self.backoff.spin) {
            return false;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        if started.elapsed() >= self.backoff.spin {
            // The window is over (no packet came): the next one starts afresh.
            self.payoff
                .spun(self.backoff.spin, 0, self.backoff.spin / 4);
            self.started = None;
            self.tries = 0;
            return false;
        }
        self.tries = self.tries.wrapping_add(1);
        if self.backoff.yield_while_spinning && self.tries % 16 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        true
    }
}

#[cfg(all(test, not(tunpipe_loom)))]
mod tests {
    use super::*;

    #[test]
    fn staying_awake_pays_only_for_work_that_comes_within_the_window() {
        let window = Duration::from_micros(50);
        let mut c = Cadence::new();
        assert!(
            c.within(window),
            "nothing seen yet: awake, as for busy work"
        );
        let t0 = Instant::now();
        // Packets 10 µs apart (a burst, a ping-pong): within a few, staying awake pays.
        let mut at = t0;
        for _ in 0..4 {
            at += Duration::from_micros(10);
            c.arrived(at, window);
        }
        assert!(c.within(window));
        // Packets 1 ms apart (1,000 a second): sleep after each.
        for _ in 0..3 {
            at += Duration::from_millis(1);
            c.arrived(at, window);
        }
        assert!(!c.within(window));
        // After an hour of silence, a burst is recognised within a few packets.
        at += Duration::from_secs(3600);
        c.arrived(at, window);
        let mut burst = 0;
        while !c.within(window) {
            at += Duration::from_micros(5);
            c.arrived(at, window);
            burst += 1;
        }
        assert!(burst <= 4, "{burst} packets to notice a burst");
        // A window of zero (`Config::spin` = 0) never stays awake.
        assert!(!c.within(Duration::ZERO));
    }

    #[test]
    fn spins_that_cost_more_than_sleeping_rest_the_reader_longer_each_time() {
        let us = Duration::from_micros;
        let pays = us(12);
        let mut p = Payoff::new();
        // The trial: long spins are not judged while the pipeline settles.
        for _ in 0..Payoff::TRIAL {
            p.spun(us(50), 1, pays);
        }
        assert!(p.may_spin());
        // One packet in flight, settled: spins of 3 µs, with a late one now and then.
        for i in 0..10 * Payoff::ROUND {
            p.spun(if i % 8 == 0 { us(50) } else { us(3) }, 1, pays);
        }
        assert!(p.may_spin());
        // A saturated engine: each spin of 20 µs ends with a batch of 40.
        for _ in 0..10 * Payoff::ROUND {
            p.spun(us(20), 40, pays);
        }
        assert!(p.may_spin());
        // Packets 50 µs apart, half of them in pairs: the average spin is 25 µs.
        let mut rests = Vec::new();
        for _ in 0..4 {
            let mut i = 0;
            while p.may_spin() {
                p.spun(if i % 2 == 0 { us(1) } else { us(49) }, 1, pays);
                i += 1;
            }
            let mut rest = 0;
            while !p.may_spin() {
                p.packets_came();
                rest += 1;
            }
            rests.push(rest);
        }
        assert_eq!(rests, [64, 128, 256, 512]);
        // A round that pays makes the next rest short again.
        for _ in 0..Payoff::TRIAL + Payoff::ROUND {
            p.spun(us(2), 1, pays);
        }
        // Windows that end with nothing found cost a whole window each.
        for _ in 0..Payoff::ROUND {
            p.spun(us(50), 0, pays);
        }
        let mut rest = 0;
        while !p.may_spin() {
            p.packets_came();
            rest += 1;
        }
        assert_eq!(rest, Payoff::FIRST_REST);
    }

    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn ring_wakes_only_a_sleeping_consumer() {
        let bell = Doorbell::default();
        bell.register_current();
        assert!(!bell.ring(), "nobody sleeps, so no wake-up");
        // A consumer that finds work after raising its flag does not park.
        assert!(!bell.sleep_unless(|| true));
        assert!(!bell.ring());
    }

    #[test]
    fn stress_no_lost_wakeups() {
        // A producer publishes items one at a time with pauses; the consumer parks whenever it
        // finds none. A lost wake-up leaves the consumer parked with items waiting: the
        // watchdog below turns that hang into a failure (it is not a timing assertion).
        const ITEMS: usize = 20_000;
        let bell = Arc::new(Doorbell::default());
        let published = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        {
            let bell = bell.clone();
            let published = published.clone();
            std::thread::spawn(move || {
                bell.register_current();
                ready_tx.send(()).unwrap();
                let mut seen = 0;
                let mut idle = Idle::new(Backoff {
                    spin: Duration::ZERO,
                    yields: 0,
                    yield_while_spinning: false,
                });
                let mut parks = 0;
                while seen < ITEMS {
                    let now = published.load(Ordering::Acquire);
                    if now > seen {
                        seen = now;
                        idle.reset();
                    } else if let Waited::Slept { parked: true } =
                        idle.wait(&bell, || published.load(Ordering::Acquire) > seen)
                    {
                        parks += 1;
                    }
                }
                done_tx.send(parks).unwrap();
            });
        }
        ready_rx.recv().unwrap();
        let mut wakeups = 0;
        for i in 0..ITEMS {
            published.store(i + 1, Ordering::Release);
            if bell.ring() {
                wakeups += 1;
            }
            if i % 7 == 0 {
                std::thread::yield_now();
            }
        }
        let parks = done_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("consumer never saw the last item: a wake-up was lost");
        assert!(parks > 0 && wakeups > 0, "the test must exercise parking");
    }

    #[test]
    fn backoff_spins_then_yields_then_sleeps_while_work_comes_often() {
        let bell = Doorbell::default();
        bell.register_current();
        let mut idle = Idle::new(Backoff {
            spin: Duration::from_millis(1),
            yields: 2,
            yield_while_spinning: false,
        });
        // Work that comes rarely (every 10 ms, against a 1 ms window): it sleeps at once.
        let mut at = Instant::now();
        for _ in 0..4 {
            at += Duration::from_millis(10);
            idle.cadence.arrived(at, idle.backoff.spin);
        }
        assert_eq!(idle.wait(&bell, || true), Waited::Slept { parked: false });
        // Work back to back (well within the window): it spins the window, yields, sleeps.
        for _ in 0..8 {
            idle.reset();
        }
        let mut steps = Vec::new();
        loop {
            let waited = idle.wait(&bell, || true);
            let slept = matches!(waited, Waited::Slept { .. });
            if steps.last() != Some(&waited) {
                steps.push(waited);
            }
            if slept {
                break;
            }
        }
        assert_eq!(
            steps,
            [
                Waited::Spun,
                Waited::Yielded,
                Waited::Slept { parked: false }
            ]
        );
        // After a sleep the next idle period starts over.
        assert_eq!(idle.wait(&bell, || true), Waited::Spun);
    }

    #[test]
    fn a_spin_window_of_zero_never_spins_or_yields() {
        let bell = Doorbell::default();
        bell.register_current();
        let mut idle = Idle::new(Backoff {
            spin: Duration::ZERO,
            yields: 2,
            yield_while_spinning: false,
        });
        idle.reset();
        idle.reset();
        assert_eq!(idle.wait(&bell, || true), Waited::Slept { parked: false });
    }
}

/// Model checks of the doorbell protocol with loom, on a model of the ring (an atomic count of
/// published items). Run with
/// `RUSTFLAGS="--cfg tunpipe_loom" cargo test --release --lib loom_models`.
#[cfg(all(test, tunpipe_loom))]
mod loom_models {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;

    /// The shared state of one model: the doorbell, the published count (the ring), the stop
    /// flag, and how many helper threads have finished.
    #[derive(Default)]
    struct Model {
        bell: Doorbell,
        published: AtomicUsize,
        stop: AtomicBool,
        finished: AtomicUsize,
    }

    /// A consumer that sleeps whenever it sees nothing new, until it has seen `target` items
    /// or `stop` is set. If a wake-up were lost, loom reports a deadlock.
    fn consume(m: &Model, target: usize) {
        let mut seen = 0;
        while seen < target && !m.stop.load(Ordering::Acquire) {
            let now = m.published.load(Ordering::Acquire);
            if now > seen {
                seen = now;
                continue;
            }
            m.bell.sleep_unless(|| {
                m.published.load(Ordering::Acquire) > seen || m.stop.load(Ordering::Acquire)
            });
        }
    }

    /// Runs `helpers` beside the consumer. The consumer registers before they start, and waits
    /// for them by yielding rather than in `join`: loom lets an unpark wake a thread blocked
    /// in a mutex or a join, which std does not, so a late (harmless) unpark would otherwise
    /// trip loom itself.
    fn run(target: usize, helpers: Vec<fn(&Model)>) {
        let mut builder = loom::model::Builder::new();
        // Bounding preemptions keeps three-thread models to seconds; lost wake-ups need only
        // one or two badly placed preemptions.
        builder.preemption_bound = Some(3);
        builder.check(move || {
            let m = Arc::new(Model::default());
            m.bell.register_current();
            let threads: Vec<_> = helpers
                .iter()
                .map(|&helper| {
                    let m = m.clone();
                    thread::spawn(move || {
                        helper(&m);
                        m.finished.fetch_add(1, Ordering::AcqRel);
                    })
                })
                .collect();
            consume(&m, target);
            while m.finished.load(Ordering::Acquire) < threads.len() {
                thread::yield_now();
            }
            threads.into_iter().for_each(|t| t.join().unwrap());
        });
    }

    fn publish(m: &Model) {
        m.published.fetch_add(1, Ordering::AcqRel);
        m.bell.ring();
    }

    fn stop(m: &Model) {
        m.stop.store(true, Ordering::Release);
        m.bell.force();
    }

    #[test]
    fn loom_models_no_lost_wakeup_one_producer() {
        run(
            2,
            vec![|m| {
                publish(m);
                publish(m);
            }],
        );
    }

    #[test]
    fn loom_models_no_lost_wakeup_two_producers() {
        // The writer's doorbell is rung by every worker.
        run(2, vec![publish, publish]);
    }

    #[test]
    fn loom_models_stop_during_park_wakes_the_consumer() {
        // Stop sets its flag and forces the bell; the consumer leaves even with no items,
        // while a producer rings too.
        run(usize::MAX, vec![publish, stop]);
    }

    /// The send token, modelled with the doorbell: producers hand numbered items to one
    /// consumer (the writer) through their rings (a small SPSC ring of atomics each), or,
    /// finding the consumer asleep and their ring empty, put them on the "device" (the log
    /// inside the token) themselves. The consumer moves ring items to the log holding the
    /// token. Each producer's items must reach the log in order, each once; once stop has
    /// begun nobody goes past the ring, and what the rings still hold is counted stopped.
    struct TokenModel {
        bell: Doorbell,
        token: SendToken<Vec<(usize, usize)>>,
        rings: [SpscModel; 2],
        stop: AtomicBool,
        finished: AtomicUsize,
        /// Helper threads past their last unpark: the consumer joins them only then (loom
        /// would trip over an unpark reaching a thread blocked in a join, as in `run`).
        exited: AtomicUsize,
        /// Producers in this model.
        producers: usize,
    }

    const RING: usize = 4;

    #[derive(Default)]
    struct SpscModel {
        slots: [AtomicUsize; RING],
        /// Items pushed (the producer's) and popped (the consumer's), counting from 0.
        tail: AtomicUsize,
        head: AtomicUsize,
    }

    impl TokenModel {
        /// Producer `p` hands on item `seq`: past the ring if it may, else through it.
        fn hand_on(&self, p: usize, seq: usize) {
            let ring = &self.rings[p];
            let tail = ring.tail.load(Ordering::Relaxed);
            let empty = ring.head.load(Ordering::Acquire) == tail;
            if empty {
                let stop = &self.stop;
                if let Some(mut half) = self
                    .token
                    .try_bypass(&self.bell, || !stop.load(Ordering::Acquire))
                {
                    half.as_mut().expect("try_bypass checked").push((p, seq));
                    return;
                }
            }
            assert!(
                tail - ring.head.load(Ordering::Acquire) < RING,
                "model ring full"
            );
            ring.slots[tail % RING].store(seq, Ordering::Relaxed);
            ring.tail.store(tail + 1, Ordering::Release);
            self.bell.ring();
        }

        /// The consumer's pass over the rings, holding the token; true if it moved any.
        fn drain(&self, stopped: &mut usize) -> bool {
            let mut half = self.token.hold();
            let mut moved = false;
            for (p, ring) in self.rings.iter().enumerate().take(self.producers) {
                let (head, tail) = (
                    ring.head.load(Ordering::Relaxed),
                    ring.tail.load(Ordering::Acquire),
                );
                for k in head..tail {
                    let seq = ring.slots[k % RING].load(Ordering::Relaxed);
                    match half.as_mut() {
                        Some(log) if !self.stop.load(Ordering::Acquire) => log.push((p, seq)),
                        _ => *stopped += 1,
                    }
                    moved = true;
                }
                ring.head.store(tail, Ordering::Release);
            }
            moved
        }

        fn has_work(&self) -> bool {
            self.rings
                .iter()
                .any(|r| r.head.load(Ordering::Relaxed) != r.tail.load(Ordering::Acquire))
                || self.finished.load(Ordering::Acquire) == self.producers
        }
    }

    /// Runs a producer per entry of `items`, handing on that many items (and a stopper if
    /// `stop`), against the consumer, with at most `preemptions` preemptions, then checks the
    /// log.
    fn run_token(items: &'static [usize], stop: bool, preemptions: usize) {
        let producers = items.len();
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(preemptions);
        builder.check(move || {
            let m = Arc::new(TokenModel {
                bell: Doorbell::default(),
                token: SendToken::new(Vec::new()),
                rings: Default::default(),
                stop: AtomicBool::new(false),
                finished: AtomicUsize::new(0),
                exited: AtomicUsize::new(0),
                producers,
            });
            m.bell.register_current();
            let mut threads: Vec<_> = (0..producers)
                .map(|p| {
                    let m = m.clone();
                    thread::spawn(move || {
                        for seq in 0..items[p] {
                            m.hand_on(p, seq);
                        }
                        m.finished.fetch_add(1, Ordering::AcqRel);
                        m.bell.force();
                        m.exited.fetch_add(1, Ordering::AcqRel);
                    })
                })
                .collect();
            if stop {
                let m = m.clone();
                threads.push(thread::spawn(move || {
                    m.stop.store(true, Ordering::Release);
                    m.bell.force();
                    m.exited.fetch_add(1, Ordering::AcqRel);
                }));
            }
            let mut stopped = 0;
            loop {
                if m.drain(&mut stopped) {
                    continue;
                }
                if m.finished.load(Ordering::Acquire) == producers {
                    break;
                }
                m.bell.sleep_unless(|| m.has_work());
            }
            while m.exited.load(Ordering::Acquire) < threads.len() {
                thread::yield_now();
            }
            threads.into_iter().for_each(|t| t.join().unwrap());
            // Everything pushed before the producers finished is drained; the writer leaves.
            m.drain(&mut stopped);
            let log = m.token.take().expect("the half, until the writer takes it");
            assert!(m.token.take().is_none());
            for p in 0..producers {
                let seqs: Vec<usize> = log.iter().filter(|e| e.0 == p).map(|e| e.1).collect();
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{log:?}");
            }
            assert_eq!(log.len() + stopped, items.iter().sum::<usize>(), "{log:?}");
            if !stop {
                assert_eq!(stopped, 0);
            }
        });
    }

    #[test]
    fn loom_models_past_the_ring_one_producer_keeps_its_order() {
        run_token(&[3], false, 3);
    }

    #[test]
    fn loom_models_past_the_ring_two_producers_keep_their_order() {
        // The second producer wakes the writer (or takes the token) while the first goes
        // past its ring; two preemptions keep the model to minutes.
        run_token(&[2, 1], false, 2);
    }

    #[test]
    fn loom_models_past_the_ring_stops_at_stop() {
        run_token(&[2], true, 3);
    }
}
