//! When a device half moves many packets per system call, and how it falls back to one.
//!
//! Apple's `recvmsg_x`/`sendmsg_x` are private XNU calls ("subject to change"): tunpipe looks
//! them up at run time and must run without them, on the utun and on the tunnel's UDP socket
//! alike. The decisions live here, apart from the system calls, so that they are tested on
//! every platform; `apple.rs` supplies the calls ([`RecvCalls`], [`SendCalls`]).
//!
//! - Calls not found (`dlsym` answered nothing): one packet per call, for good.
//! - A batch call the kernel refuses outright ([`refuses_batch`]: the call or the protocol
//!   does not exist) moved nothing: batching stops at once, and the same packets go one per
//!   call.
//! - Any other failure of a batch send does not say how many of its packets went. The first
//!   packet goes again alone, and the rest one per call: none is lost for not knowing, though
//!   one that had gone may go twice (outside, the peer's WireGuard replay window drops such
//!   a twin; inside, TCP drops a duplicate segment, and UDP may deliver one, as any network
//!   may). The error that counts for the first packet is its own call's.
//! - A batch send that fails with `EINVAL` or `EMSGSIZE` while its first packet then goes
//!   alone points at the batch call, not at the packet: after
//!   [`BATCH_REFUSALS_BEFORE_OFF`] of those in a row, batching stops. One is not enough: a
//!   malformed packet (EINVAL) or a full buffer (EMSGSIZE) can do it once.
//! - A new socket (a rebind) starts afresh: batching is tried again where the calls exist.

use std::io;

/// Batch sends in a row that failed with `EINVAL` or `EMSGSIZE` while their first packet
/// then went alone, after which a half moves one packet per call (until its socket is
/// replaced).
pub(crate) const BATCH_REFUSALS_BEFORE_OFF: u32 = 3;

/// Whether `error`, from a batch call, says that the call itself cannot be used here (no
/// such system call, or a protocol without multi-packet support): nothing was moved.
pub(crate) fn refuses_batch(error: &io::Error) -> bool {
    error.raw_os_error().is_some_and(|code| {
        [
            libc::ENOSYS,
            libc::EOPNOTSUPP,
            libc::ENOTSUP,
            libc::EPROTONOSUPPORT,
        ]
        .contains(&code)
    })
}

/// Whether a batch send's `error` may be the batch call's refusal rather than its first
/// packet's fault (decided by sending that packet alone).
fn may_refuse_batch(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EMSGSIZE))
}

/// How many of the leading packets one batch send offers: at most `max`, stopping before
/// the first that cannot go at all (`None`: not an IP packet, no destination) and before
/// the one that would take the batch's bytes past `byte_limit` (XNU refuses a whole batch
/// larger than the socket's send buffer with `EMSGSIZE`). A first packet larger than the
/// limit is offered alone, so that its own error is the kernel's.
pub(crate) fn batch_prefix(
    lengths: impl IntoIterator<Item = Option<usize>>,
    max: usize,
    byte_limit: usize,
) -> usize {
    let mut count = 0;
    let mut bytes = 0usize;
    for length in lengths.into_iter().take(max) {
        let Some(length) = length else { break };
        bytes = bytes.saturating_add(length);
        if count > 0 && bytes > byte_limit {
            break;
        }
        count += 1;
    }
    count
}

/// A batch send that failed.
#[derive(Debug)]
pub(crate) struct BatchFailed {
    pub(crate) error: io::Error,
    /// Packets the call carried; 0 when the first packet could not be offered at all (its
    /// error is then `error`, and no call was made).
    pub(crate) offered: usize,
}

/// The receive calls of one half, on the buffers of the call in progress.
pub(crate) trait RecvCalls {
    /// One batch call receiving into up to `n` (at least 1) leading buffers: how many
    /// arrived.
    fn recv_many(&mut self, n: usize) -> io::Result<usize>;
    /// One call receiving into the first buffer.
    fn recv_one(&mut self) -> io::Result<()>;
}

/// The send calls of one half, on the packets of the call in progress.
pub(crate) trait SendCalls {
    /// One batch call sending up to `n` (at least 1) leading packets ([`batch_prefix`]):
    /// how many went.
    fn send_many(&mut self, n: usize) -> Result<usize, BatchFailed>;
    /// One call sending the first packet.
    fn send_one(&mut self) -> io::Result<()>;
}

/// The batching state of one device half.
#[derive(Debug)]
pub(crate) struct Batching {
    /// Which half, for the log line when batching stops ("utun", "UDP").
    what: &'static str,
    /// Most packets per batch call.
    max: usize,
    /// The batch calls were found at run time.
    found: bool,
    /// Batching is in use: found, and not stopped since the socket was new.
    on: bool,
    /// Packets of a failed batch still to go one per call.
    one_by_one: usize,
    /// Batch sends in a row refused as [`may_refuse_batch`] says, whose first packet then
    /// went alone.
    refusals: u32,
}

impl Batching {
    /// A half that moves up to `max` packets per batch call, if `found`.
    pub(crate) fn new(what: &'static str, max: usize, found: bool) -> Self {
        Batching {
            what,
            max: max.max(1),
            found,
            on: found,
            one_by_one: 0,
            refusals: 0,
        }
    }

    /// Most packets one call moves now (1 without batching).
    pub(crate) fn max_batch(&self) -> usize {
        if self.on {
            self.max
        } else {
            1
        }
    }

    /// Whether batch calls are in use.
    #[cfg(test)]
    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    /// The half's socket was replaced: batching is tried again where the calls exist.
    pub(crate) fn socket_replaced(&mut self) {
        self.on = self.found;
        self.one_by_one = 0;
        self.refusals = 0;
    }

    /// Stops batching (until the socket is replaced) because `call` failed as `why` says;
    /// logged once.
    pub(crate) fn stop(&mut self, call: &str, why: &dyn std::fmt::Display) {
        if self.on {
            log::info!(
                "{}: {call} refused ({why}); one packet per call from now on",
                self.what
            );
        }
        self.on = false;
    }

    /// Receives into up to `len` buffers: many with one batch call, or one.
    pub(crate) fn recv(&mut self, calls: &mut impl RecvCalls, len: usize) -> io::Result<usize> {
        if len == 0 {
            return Ok(0);
        }
        if self.on {
            let n = len.min(self.max);
            match calls.recv_many(n) {
                Ok(got) => return Ok(got.min(n)),
                Err(e) if refuses_batch(&e) => self.stop("recvmsg_x", &e),
                Err(e) => return Err(e),
            }
        }
        calls.recv_one().map(|()| 1)
    }

    /// Sends up to `len` packets in order and returns how many went; an error is the first
    /// packet's, which did not go.
    pub(crate) fn send(&mut self, calls: &mut impl SendCalls, len: usize) -> io::Result<usize> {
        if len == 0 {
            return Ok(0);
        }
        if !self.on || self.one_by_one > 0 {
            self.one_by_one = self.one_by_one.saturating_sub(1);
            return calls.send_one().map(|()| 1);
        }
        let failed = match calls.send_many(len.min(self.max)) {
            Ok(sent) => {
                if sent > 0 {
                    self.refusals = 0;
                }
                return Ok(sent.min(len.min(self.max)));
            }
            Err(failed) => failed,
        };
        let BatchFailed { error, offered } = failed;
        if offered == 0 {
            // No call was made: the first packet cannot go at all.
            return Err(error);
        }
        if refuses_batch(&error) {
            // Nothing went: the same packets go one per call.
            self.stop("sendmsg_x", &error);
            return calls.send_one().map(|()| 1);
        }
        // How many went is unknown: the first goes again alone, the rest one per call.
        self.one_by_one = offered - 1;
        let alone = calls.send_one();
        if alone.is_ok() && may_refuse_batch(&error) {
            self.refusals += 1;
            if self.refusals >= BATCH_REFUSALS_BEFORE_OFF {
                self.stop("sendmsg_x", &error);
            }
        }
        alone.map(|()| 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls that record what was asked and answer from scripts.
    #[derive(Default)]
    struct Script {
        /// Answers of the next batch calls (`Ok(n)`, or an errno with what was offered).
        many: Vec<Result<usize, (i32, usize)>>,
        /// Answers of the next single calls (`None`: it went).
        one: Vec<Option<i32>>,
        /// What was called, in order: `("many", n)` or `("one", 1)`.
        log: Vec<(&'static str, usize)>,
    }

    impl Script {
        fn next_one(&mut self) -> io::Result<()> {
            self.log.push(("one", 1));
            match self.one.remove(0) {
                None => Ok(()),
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }

    impl RecvCalls for Script {
        fn recv_many(&mut self, n: usize) -> io::Result<usize> {
            self.log.push(("many", n));
            self.many
                .remove(0)
                .map_err(|(errno, _)| io::Error::from_raw_os_error(errno))
        }
        fn recv_one(&mut self) -> io::Result<()> {
            self.next_one()
        }
    }

    impl SendCalls for Script {
        fn send_many(&mut self, n: usize) -> Result<usize, BatchFailed> {
            self.log.push(("many", n));
            self.many.remove(0).map_err(|(errno, offered)| BatchFailed {
                error: io::Error::from_raw_os_error(errno),
                offered,
            })
        }
        fn send_one(&mut self) -> io::Result<()> {
            self.next_one()
        }
    }

    fn errno(result: io::Result<usize>) -> Option<i32> {
        result.err().and_then(|e| e.raw_os_error())
    }

    #[test]
    fn without_the_calls_every_packet_goes_alone() {
        let mut b = Batching::new("test", 32, false);
        assert_eq!(b.max_batch(), 1);
        let mut calls = Script {
            one: vec![None, None, Some(libc::EAGAIN)],
            ..Script::default()
        };
        assert_eq!(b.recv(&mut calls, 8).unwrap(), 1);
        assert_eq!(b.send(&mut calls, 8).unwrap(), 1);
        assert_eq!(errno(b.recv(&mut calls, 8)), Some(libc::EAGAIN));
        assert_eq!(calls.log, [("one", 1); 3]);
        // A new socket does not make calls that were never found appear.
        b.socket_replaced();
        assert!(!b.is_on());
    }

    #[test]
    fn a_batch_call_moves_up_to_its_maximum() {
        let mut b = Batching::new("test", 4, true);
        assert_eq!(b.max_batch(), 4);
        let mut calls = Script {
            many: vec![Ok(3), Ok(4), Ok(2)],
            ..Script::default()
        };
        assert_eq!(b.recv(&mut calls, 10).unwrap(), 3);
        assert_eq!(b.send(&mut calls, 10).unwrap(), 4);
        assert_eq!(b.send(&mut calls, 2).unwrap(), 2);
        assert_eq!(calls.log, [("many", 4), ("many", 4), ("many", 2)]);
        assert_eq!(b.recv(&mut calls, 0).unwrap(), 0);
        assert_eq!(b.send(&mut calls, 0).unwrap(), 0);
        assert_eq!(calls.log.len(), 3, "nothing offered, nothing called");
    }

    #[test]
    fn a_refused_receive_stops_batching_and_receives_alone_at_once() {
        let mut b = Batching::new("test", 8, true);
        let mut calls = Script {
            many: vec![Err((libc::EOPNOTSUPP, 0))],
            one: vec![None, None],
            ..Script::default()
        };
        assert_eq!(b.recv(&mut calls, 8).unwrap(), 1);
        assert!(!b.is_on());
        assert_eq!(b.max_batch(), 1);
        assert_eq!(b.recv(&mut calls, 8).unwrap(), 1);
        assert_eq!(calls.log, [("many", 8), ("one", 1), ("one", 1)]);
    }

    #[test]
    fn a_receive_error_that_is_no_refusal_is_returned_and_batching_stays() {
        let mut b = Batching::new("test", 8, true);
        let mut calls = Script {
            many: vec![Err((libc::EAGAIN, 0)), Ok(1)],
            ..Script::default()
        };
        assert_eq!(errno(b.recv(&mut calls, 8)), Some(libc::EAGAIN));
        assert_eq!(b.recv(&mut calls, 8).unwrap(), 1);
        assert!(b.is_on());
    }

    #[test]
    fn a_refused_send_moved_nothing_so_the_same_packets_go_alone() {
        let mut b = Batching::new("test", 8, true);
        let mut calls = Script {
            many: vec![Err((libc::ENOSYS, 5))],
            one: vec![None, None],
            ..Script::default()
        };
        assert_eq!(b.send(&mut calls, 5).unwrap(), 1);
        assert!(!b.is_on());
        assert_eq!(b.send(&mut calls, 4).unwrap(), 1);
        assert_eq!(calls.log, [("many", 5), ("one", 1), ("one", 1)]);
    }

    #[test]
    fn a_failed_batch_sends_its_first_again_then_the_rest_one_by_one() {
        let mut b = Batching::new("test", 8, true);
        let mut calls = Script {
            // Four offered, ENOBUFS: how many went is unknown.
            many: vec![Err((libc::ENOBUFS, 4)), Ok(8)],
            one: vec![None, None, Some(libc::ENOBUFS), None],
            ..Script::default()
        };
        // The first packet goes alone.
        assert_eq!(b.send(&mut calls, 4).unwrap(), 1);
        // The other three, one per call; the second's own error is its own.
        assert_eq!(b.send(&mut calls, 3).unwrap(), 1);
        assert_eq!(errno(b.send(&mut calls, 2)), Some(libc::ENOBUFS));
        assert_eq!(b.send(&mut calls, 1).unwrap(), 1);
        // Then batches again.
        assert_eq!(b.send(&mut calls, 8).unwrap(), 8);
        assert_eq!(
            calls.log,
            [
                ("many", 4),
                ("one", 1),
                ("one", 1),
                ("one", 1),
                ("one", 1),
                ("many", 8)
            ]
        );
        assert!(b.is_on());
    }

    #[test]
    fn when_the_first_fails_alone_too_its_error_is_returned() {
        let mut b = Batching::new("test", 8, true);
        let mut calls = Script {
            many: vec![Err((libc::ENETUNREACH, 2))],
            one: vec![Some(libc::EHOSTUNREACH)],
            ..Script::default()
        };
        assert_eq!(errno(b.send(&mut calls, 2)), Some(libc::EHOSTUNREACH));
        assert!(b.is_on());
    }

    #[test]
    fn a_first_packet_that_cannot_be_offered_is_the_error_without_a_call() {
        let mut b = Batching::new("test", 8, true);
        let mut calls = Script {
            many: vec![Err((libc::EINVAL, 0)), Ok(1)],
            ..Script::default()
        };
        assert_eq!(errno(b.send(&mut calls, 3)), Some(libc::EINVAL));
        // No one-by-one tail, no refusal counted: the next call batches.
        assert_eq!(b.send(&mut calls, 2).unwrap(), 1);
        assert_eq!(calls.log, [("many", 3), ("many", 2)]);
        assert!(b.is_on());
    }

    #[test]
    fn batches_refused_in_a_row_while_single_calls_work_stop_batching_until_a_new_socket() {
        let mut b = Batching::new("test", 8, true);
        let mut calls = Script::default();
        for round in 0..BATCH_REFUSALS_BEFORE_OFF {
            assert!(b.is_on(), "round {round}");
            calls.many.push(Err((libc::EINVAL, 1)));
            calls.one.push(None);
            assert_eq!(b.send(&mut calls, 1).unwrap(), 1);
        }
        assert!(!b.is_on());
        assert_eq!(b.max_batch(), 1);
        b.socket_replaced();
        assert!(b.is_on());
        assert_eq!(b.max_batch(), 8);
    }

    #[test]
    fn a_batch_that_goes_between_refusals_resets_their_count() {
        let mut b = Batching::new("test", 8, true);
        let mut calls = Script::default();
        for _ in 0..3 * BATCH_REFUSALS_BEFORE_OFF {
            for _ in 1..BATCH_REFUSALS_BEFORE_OFF {
                calls.many.push(Err((libc::EMSGSIZE, 1)));
                calls.one.push(None);
                b.send(&mut calls, 1).unwrap();
            }
            calls.many.push(Ok(1));
            b.send(&mut calls, 1).unwrap();
        }
        assert!(b.is_on());
    }

    #[test]
    fn a_malformed_packet_that_fails_alone_too_is_no_refusal_of_the_batch() {
        let mut b = Batching::new("test", 8, true);
        let mut calls = Script::default();
        for _ in 0..2 * BATCH_REFUSALS_BEFORE_OFF {
            calls.many.push(Err((libc::EINVAL, 1)));
            calls.one.push(Some(libc::EINVAL));
            assert_eq!(errno(b.send(&mut calls, 1)), Some(libc::EINVAL));
        }
        assert!(b.is_on());
    }

    #[test]
    fn a_batch_stops_before_a_packet_that_cannot_go_and_within_the_byte_limit() {
        let ok = |lens: &[usize]| lens.iter().map(|&l| Some(l)).collect::<Vec<_>>();
        assert_eq!(batch_prefix(ok(&[100, 100, 100]), 8, 1000), 3);
        assert_eq!(batch_prefix(ok(&[100, 100, 100]), 2, 1000), 2);
        assert_eq!(batch_prefix([Some(1), None, Some(1)], 8, 1000), 1);
        assert_eq!(batch_prefix([None, Some(1)], 8, 1000), 0);
        assert_eq!(batch_prefix(ok(&[400, 400, 400]), 8, 1000), 2);
        assert_eq!(
            batch_prefix(ok(&[400, 600, 1]), 8, 1000),
            2,
            "exactly the limit"
        );
        // A first packet over the limit goes alone: the kernel's error is then its own.
        assert_eq!(batch_prefix(ok(&[5000, 1]), 8, 1000), 1);
        assert_eq!(batch_prefix(ok(&[]), 8, 1000), 0);
    }

    #[test]
    fn refusals_are_the_calls_absence_not_a_packets_fault() {
        for errno in [
            libc::ENOSYS,
            libc::EOPNOTSUPP,
            libc::ENOTSUP,
            libc::EPROTONOSUPPORT,
        ] {
            assert!(refuses_batch(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [
            libc::EINVAL,
            libc::EAGAIN,
            libc::ENOBUFS,
            libc::EMSGSIZE,
            libc::EPERM,
        ] {
            assert!(!refuses_batch(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!refuses_batch(&io::Error::other("no errno")));
    }
}
