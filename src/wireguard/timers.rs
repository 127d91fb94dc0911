//! When a peer's WireGuard timers next need to run.
//!
//! boringtun's `Tunn` has no "next deadline": its own device calls `update_timers` every
//! 250 ms, which would wake an idle phone four times a second. Instead, each peer keeps the
//! events the timers depend on (what it sent and received, and when), and derives from
//! WireGuard's constants the next moment `update_timers` can have something to do. Each timer
//! is one-shot: armed by an event, and spent once its moment has passed (whether or not
//! boringtun then acted), so a deadline never repeats without a new event.
//!
//! An event that makes a timer moot (a packet sent makes the keepalive owed for received data
//! moot; a packet received, the handshake owed for silence) leaves it armed: it comes due
//! early, finds nothing to do, and is derived again from the events then. Disarming at once
//! would move the stage's next deadline later and then, with the next packet the other way,
//! earlier again, and a deadline that moves earlier wakes the timer thread: with traffic both
//! ways, that was a wake-up for about every other packet. Left armed, the deadline only moves
//! earlier when a timer is armed from nothing.
//!
//! The handshake owed for silence counts from the first data sent since the peer was last
//! heard, as the whitepaper and wireguard-go count it. boringtun's condition counts from the
//! last packet heard, so after any quiet spell longer than 15 s (an idle minute, a suspended
//! engine) the first packet sent would renegotiate at boringtun's next tick, although the
//! session is young and the answer is a round trip away. So while that answer is awaited
//! ([`PeerTimers::holds_timers`]), `update_timers` does not run at all: not for a stale clock
//! (a round trip longer than [`TICK`]), nor for another timer (one that came due at a resume,
//! racing the first packet out). The answer is then stamped with the same tick as the data
//! sent, and boringtun's condition, which needs the last data sent to be later than the last
//! packet heard, finds nothing to do. Unanswered, the handshake comes at our moment.
//!
//! Two keepalives are the stage's own, sent when `update_timers` sent nothing (or did not
//! run): the persistent one (so that its interval can change without a new `Tunn`), and the
//! one owed for data received ([`PeerTimers::keepalive_owed`]). boringtun stamps events with
//! its last tick, so data that comes within one tick of the packet it answers looks no later
//! than it, and boringtun owes nothing for it; a peer that then hears nothing for 15 s starts
//! a handshake.
//!
//! The derived moments are never earlier than boringtun's own: it stamps events with the time
//! of its last tick, which is never later than ours, and an initiation with its clock when it
//! formats it, which the stage reads again after (`note_sent`). The clock is read inside the
//! stage, after any wait for its lock. So a tick at a derived moment finds the timer due in
//! boringtun too, and a timer it then does not act on had nothing to do; at worst a timer runs
//! up to one tick late.

use super::clock::Instant;
use std::time::Duration;

/// Retry a handshake initiation that got no response.
pub(crate) const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Answer received data with a keepalive when nothing was sent back.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The initiator starts a new handshake when its session is this old.
pub(crate) const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session's keys are no longer used past this age.
pub(crate) const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// How stale `Tunn`'s clock may be before a packet is processed (unless
/// [`PeerTimers::holds_timers`]): it moves only in `update_timers`, and `Tunn` stamps the
/// events it records with it. This is boringtun's own device's tick.
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// boringtun's timers compare whole durations: a deadline is taken this much after the
/// moment, so that the comparison has surely turned.
const SLACK: Duration = Duration::from_millis(1);

// boringtun keeps these (and `QUEUE_DEPTH`) private: tests/mock_clock/tests/boringtun.rs
// probes a `Tunn` on a mocked clock and fails if its moments move.

/// One peer's timer events and the one-shot timers they arm.
#[derive(Debug, Clone)]
pub(crate) struct PeerTimers {
    /// When `update_timers` last ran for this peer.
    pub last_tick: Instant,
    last_sent: Instant,
    last_received: Instant,
    /// When `Tunn` thinks it last heard the peer: it stamps an event with its last tick.
    heard_stamp: Instant,
    /// Data (not a keepalive or a handshake message) last came in.
    last_data_received: Option<Instant>,
    /// The first data sent since the peer was last heard: the silence handshake counts
    /// from it.
    unanswered_since: Option<Instant>,
    persistent_keepalive: Option<Duration>,
    retry: Option<Instant>,
    keepalive: Option<Instant>,
    handshake_on_silence: Option<Instant>,
    persistent: Option<Instant>,
    session: [Option<Instant>; 4],
}

impl PeerTimers {
    pub(crate) fn new(now: Instant, persistent_keepalive: Option<u16>) -> Self {
        let persistent_keepalive = persistent_keepalive.map(|s| Duration::from_secs(u64::from(s)));
        PeerTimers {
            last_tick: now,
            last_sent: now,
            last_received: now,
            heard_stamp: now,
            last_data_received: None,
            unanswered_since: None,
            persistent_keepalive,
            retry: None,
            keepalive: None,
            handshake_on_silence: None,
            // A persistent keepalive goes out at once: the tunnel is then up before the
            // first packet needs it (as wg does).
            persistent: persistent_keepalive.map(|_| now),
            session: [None; 4],
        }
    }

    /// A handshake initiation went out: it is retried after `REKEY_TIMEOUT` unless answered.
    pub(crate) fn initiation_sent(&mut self, now: Instant) {
        self.sent(now);
        self.retry = Some(now + REKEY_TIMEOUT + SLACK);
    }

    /// Anything went out to the peer. (No keepalive is owed now; the keepalive timer, if
    /// armed, stays armed: module docs.)
    pub(crate) fn sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// Data went out (not a keepalive): if the peer stays silent, a new handshake follows.
    pub(crate) fn data_sent(&mut self, now: Instant) {
        self.sent(now);
        self.unanswered_since.get_or_insert(now);
        if self.handshake_on_silence.is_none() {
            self.handshake_on_silence = self.silence_handshake_at();
        }
    }

    /// An authenticated packet came from the peer. (No handshake is owed for silence now;
    /// that timer, if armed, stays armed: module docs.)
    pub(crate) fn received(&mut self, now: Instant) {
        self.last_received = now;
        self.heard_stamp = self.last_tick;
        self.unanswered_since = None;
    }

    /// Data came from the peer (not a keepalive): a keepalive is owed if nothing goes back.
    pub(crate) fn data_received(&mut self, now: Instant) {
        self.received(now);
        self.last_data_received = Some(now);
        if self.keepalive.is_none() {
            self.keepalive = self.keepalive_at();
        }
    }

    /// When a keepalive is owed: data came in after the last packet went out, and nothing
    /// goes out for `KEEPALIVE_TIMEOUT`.
    fn keepalive_at(&self) -> Option<Instant> {
        self.last_data_received
            .filter(|&r| r >= self.last_sent)
            .map(|_| self.last_sent + KEEPALIVE_TIMEOUT + SLACK)
    }

    /// When a handshake is owed for silence: data went out after the last packet came in,
    /// and nothing comes in for `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT` after the first of it
    /// (module docs).
    fn silence_handshake_at(&self) -> Option<Instant> {
        self.unanswered_since
            .map(|sent| sent + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + SLACK)
    }

    /// A handshake completed; `initiator` if this end started it.
    pub(crate) fn session_established(&mut self, now: Instant, initiator: bool) {
        self.received(now);
        self.retry = None;
        self.session = [
            initiator.then_some(now + REKEY_AFTER_TIME + SLACK),
            // The initiator also starts a new handshake once a session it receives on is
            // this old, before its keys stop being accepted.
            initiator
                .then_some(now + (REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT) + SLACK),
            Some(now + REJECT_AFTER_TIME + SLACK),
            // Keys are erased after three times REJECT_AFTER_TIME without a new session.
            Some(now + REJECT_AFTER_TIME * 3 + SLACK),
        ];
    }

    /// The timers ran at `now` (read before the call): every timer due then has fired (in
    /// `update_timers`, or by the stage: its keepalives, or nothing while
    /// [`PeerTimers::holds_timers`]), and the persistent keepalive, if it was due, starts its
    /// next interval from `ran` (read after the call). boringtun counts that interval from its
    /// own clock at the call; counted from `now`, which may be earlier (many peers run on one
    /// reading), our next deadline could come before boringtun's, find it not due, and so slip
    /// a whole interval. (Whether `Tunn`'s clock moved is the caller's to record, in
    /// `last_tick`.)
    pub(crate) fn ticked(&mut self, now: Instant, ran: Instant) {
        let due = |t: &mut Option<Instant>| {
            if t.is_some_and(|t| t <= now) {
                *t = None;
            }
        };
        due(&mut self.retry);
        self.session.iter_mut().for_each(due);
        // A keepalive or a silence handshake that came due may have been made moot by a
        // later event (module docs): derive it again from the events, if it is still owed
        // later than now. (Owed by now, boringtun has just acted on it.)
        let after = |t: Option<Instant>| t.filter(|&t| t > now);
        if self.keepalive.is_some_and(|t| t <= now) {
            self.keepalive = after(self.keepalive_at());
        }
        if self.handshake_on_silence.is_some_and(|t| t <= now) {
            self.handshake_on_silence = after(self.silence_handshake_at());
        }
        if let (Some(every), Some(at)) = (self.persistent_keepalive, self.persistent) {
            if at <= now {
                self.persistent = Some(ran.max(now) + every + SLACK);
            }
        }
    }

    /// True when the persistent keepalive is due at `now`.
    pub(crate) fn persistent_keepalive_due(&self, now: Instant) -> bool {
        self.persistent.is_some_and(|at| at <= now)
    }

    /// The persistent keepalive interval is now `seconds` (`None`: off). Turned on, one goes
    /// out at once (as at start, and as wireguard-go does); a new interval counts from now.
    pub(crate) fn set_persistent_keepalive(&mut self, now: Instant, seconds: Option<u16>) {
        let every = seconds.map(|s| Duration::from_secs(u64::from(s)));
        self.persistent = match (self.persistent_keepalive, every) {
            (_, None) => None,
            (None, Some(_)) => Some(now),
            (Some(_), Some(every)) => Some(now + every + SLACK),
        };
        self.persistent_keepalive = every;
    }

    /// True when data came after the last packet went out: a keepalive is owed (now, or at
    /// its deadline).
    pub(crate) fn owes_keepalive(&self) -> bool {
        self.keepalive_at().is_some()
    }

    /// True when the keepalive owed for data received is due at `now` (module docs: the
    /// stage sends it when `update_timers` does not).
    pub(crate) fn keepalive_owed(&self, now: Instant) -> bool {
        self.keepalive_at().is_some_and(|at| at <= now)
    }

    /// True while `update_timers` would start a handshake that is not owed (module docs):
    /// data went out after `Tunn` last heard the peer, the silence since then is (within a
    /// tick) long enough for boringtun's condition, and neither an answer nor our moment for
    /// that handshake has come. Not while a timer that starts a handshake anyway is due, or
    /// one is under way (boringtun then does not look at the silence).
    pub(crate) fn holds_timers(&self, now: Instant) -> bool {
        let silence = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT;
        let misjudged = self.unanswered_since.is_some_and(|since| {
            now < since + silence + SLACK && now + TICK >= self.heard_stamp + silence
        });
        misjudged && self.retry.is_none() && !self.session.iter().flatten().any(|&t| t <= now)
    }

    /// True while an initiation of ours waits for its response.
    pub(crate) fn awaiting_response(&self) -> bool {
        self.retry.is_some()
    }

    /// True when `Tunn`'s clock is too stale to stamp a packet's events.
    pub(crate) fn stale(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_tick) >= TICK
    }

    /// The earliest armed timer.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [
            self.retry,
            self.keepalive,
            self.handshake_on_silence,
            self.persistent,
        ]
        .into_iter()
        .chain(self.session)
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn an_idle_peer_with_nothing_pending_has_no_deadline() {
        let t0 = Instant::now();
        let t = PeerTimers::new(t0, None);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn an_initiation_is_retried_until_a_session_is_established() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.initiation_sent(t0);
        let retry = t.next_deadline().unwrap();
        assert!(retry >= t0 + REKEY_TIMEOUT);
        t.ticked(retry, retry);
        // No new initiation was seen: the timer is spent, nothing repeats by itself.
        assert_eq!(t.next_deadline(), None);
        t.initiation_sent(retry);
        t.session_established(retry + secs(1), true);
        // Only the session's own timers are left: rekey, reject, erase.
        let next = t.next_deadline().unwrap();
        assert!(next >= retry + secs(1) + REKEY_AFTER_TIME);
    }

    #[test]
    fn an_initiator_that_only_receives_rekeys_before_its_keys_expire() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.session_established(t0, true);
        let rekey = t.next_deadline().unwrap();
        assert_eq!(rekey.saturating_duration_since(t0).as_secs(), 120);
        // Nothing was sent, so boringtun did not rekey at 120 s; 165 s is its next moment.
        t.ticked(rekey, rekey);
        let next = t.next_deadline().unwrap();
        assert_eq!(next.saturating_duration_since(t0).as_secs(), 165);
    }

    #[test]
    fn received_data_owes_a_keepalive_unless_something_goes_back() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.data_received(t0 + secs(3));
        assert_eq!(
            t.next_deadline()
                .map(|d| d.saturating_duration_since(t0).as_secs()),
            Some(10)
        );
        // Something went back: the keepalive is moot, and its timer finds that out when it
        // comes due, without moving the deadline before.
        t.sent(t0 + secs(4));
        let due = t.next_deadline().unwrap();
        t.ticked(due, due);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn traffic_both_ways_moves_the_deadline_earlier_only_when_a_timer_is_armed_from_nothing() {
        // A packet each way every 10 ms for two minutes, the timers ticking at each deadline:
        // the deadline the timer thread sleeps to moves earlier (which wakes it) a handful of
        // times, not with every other packet.
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.session_established(t0, true);
        let mut earlier = 0;
        let mut deadline = t.next_deadline();
        let mut now = t0;
        let mut step = 0;
        while now < t0 + secs(120) {
            now = now + Duration::from_millis(5);
            if deadline.is_some_and(|d| d <= now) {
                t.ticked(now, now);
            }
            // The stage publishes its deadline after each packet.
            if step % 2 == 0 {
                t.data_sent(now);
            } else {
                t.data_received(now);
            }
            step += 1;
            let next = t.next_deadline();
            if next.is_some() && deadline.is_none_or(|d| next < Some(d)) {
                earlier += 1;
            }
            deadline = next;
        }
        assert!(earlier <= 3, "the deadline moved earlier {earlier} times");
    }

    #[test]
    fn sent_data_without_an_answer_leads_to_a_handshake_after_15_seconds() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.data_sent(t0 + secs(1));
        let due = t.next_deadline().unwrap();
        assert!(due >= t0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT);
        // An answer came: the handshake is moot, found so when its timer comes due.
        t.received(t0 + secs(2));
        assert_eq!(t.next_deadline(), Some(due));
        t.ticked(due, due);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn after_a_quiet_spell_the_silence_handshake_counts_from_the_send_not_from_the_last_answer() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.session_established(t0, true);
        t.data_sent(t0 + secs(1));
        t.data_received(t0 + secs(1));
        // A minute of quiet (idle, or suspended), then data goes out.
        t.ticked(t0 + secs(11), t0 + secs(11));
        let sent = t0 + secs(61);
        t.data_sent(sent);
        let silence = t.silence_handshake_at().unwrap();
        assert!(
            silence >= sent + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT,
            "{silence:?}"
        );
        // Answered: nothing is owed any more.
        t.received(sent + secs(1));
        assert_eq!(t.silence_handshake_at(), None);
    }

    #[test]
    fn after_a_quiet_spell_the_timers_hold_until_the_answer_or_the_moment_counted_from_the_send() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.session_established(t0, false);
        // A quiet minute, then the timers run (a stale clock) and data goes out.
        let sent = t0 + secs(60);
        t.last_tick = sent;
        t.data_sent(sent);
        // boringtun would renegotiate at any tick now, until the answer comes.
        assert!(t.holds_timers(sent + Duration::from_millis(300)));
        let ours = t.silence_handshake_at().unwrap();
        assert!(t.holds_timers(ours.earlier(SLACK * 2)));
        assert!(!t.holds_timers(ours), "unanswered, the handshake is owed");
        // Answered: `Tunn` stamps the answer with the tick before the send, no later than it
        // stamped the send, and finds nothing to do.
        t.received(sent + secs(1));
        assert!(!t.holds_timers(sent + secs(1)));
        // The next unanswered data is judged from that stamp (a tick to spare).
        let next = sent + secs(10);
        t.data_sent(next);
        assert!(!t.holds_timers(next + secs(4)));
        assert!(t.holds_timers((sent + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT).earlier(TICK)));
    }

    #[test]
    fn data_soon_after_the_peer_was_heard_holds_nothing() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.session_established(t0, false);
        t.last_tick = t0 + secs(1);
        t.data_received(t0 + secs(1));
        t.data_sent(t0 + secs(2));
        // Unanswered, boringtun's moment (from the last packet heard) comes a second before
        // ours (from the send): the timers hold for that second (and a tick), not before.
        assert!(!t.holds_timers(t0 + secs(3)));
        assert!(!t.holds_timers(t0 + secs(15)));
        assert!(t.holds_timers(t0 + secs(16)));
        assert!(!t.holds_timers(t0 + secs(17) + SLACK));
    }

    #[test]
    fn a_due_rekey_or_a_handshake_under_way_is_not_held() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.session_established(t0, true);
        let sent = t0 + secs(110);
        t.last_tick = sent;
        t.data_sent(sent);
        assert!(t.holds_timers(sent + secs(1)));
        // The session is 120 s old: the initiator renegotiates anyway.
        assert!(!t.holds_timers(t0 + REKEY_AFTER_TIME + SLACK));
        t.initiation_sent(sent + secs(2));
        assert!(!t.holds_timers(sent + secs(3)));
    }

    #[test]
    fn the_keepalive_owed_for_data_is_due_ten_seconds_after_the_last_packet_out() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.sent(t0 + secs(1));
        t.data_received(t0 + secs(1));
        assert!(!t.keepalive_owed(t0 + secs(10)));
        assert!(t.keepalive_owed(t0 + secs(11) + SLACK));
        t.sent(t0 + secs(12));
        assert!(!t.keepalive_owed(t0 + secs(30)));
    }

    #[test]
    fn a_persistent_keepalive_repeats_at_its_interval() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, Some(25));
        assert_eq!(
            t.next_deadline(),
            Some(t0),
            "the first one goes out at once"
        );
        t.ticked(t0, t0);
        let next = t.next_deadline().unwrap();
        assert!(next >= t0 + secs(25) && next < t0 + secs(26));
        // boringtun ran later than the reading the deadline was found due on: the next
        // interval counts from when it ran, as boringtun's does.
        t.ticked(next, next + secs(2));
        assert!(t.next_deadline().unwrap() >= next + secs(2) + secs(25));
    }

    #[test]
    fn a_quiet_minute_after_traffic_costs_a_handful_of_deadlines() {
        // Data both ways, then silence: at most a keepalive and a handshake-on-silence before
        // the session's own timers, none of which falls within the minute.
        let t0 = Instant::now();
        let mut t = PeerTimers::new(t0, None);
        t.session_established(t0, true);
        t.data_sent(t0 + secs(1));
        t.data_received(t0 + secs(1));
        let mut wakes = 0;
        let mut now = t0 + secs(1);
        while let Some(d) = t.next_deadline().filter(|d| *d < t0 + secs(61)) {
            now = d.max(now);
            t.ticked(now, now);
            wakes += 1;
        }
        assert!(wakes <= 3, "{wakes} wake-ups in the quiet minute");
    }
}
