//! Two-way stages: protocol state between an inside device (a TUN) and an outside one (a UDP
//! socket), such as a VPN.
//!
//! ```text
//!  inside rx ──► Reader ══► [ DuplexStage: outbound ] ══► Writer ──► outside tx   (seal)
//!  inside tx ◄── Writer ◄══ [ DuplexStage: inbound  ] ◄══ Reader ◄── outside rx   (open)
//!                                  │ emits toward either side (handshakes, queued packets)
//!                                  └ names its next deadline (keepalive, rekey): a timer
//! ```
//!
//! Like a one-way [`Stage`](super::Stage), a duplex stage is plain code: no fds, threads or
//! clocks. It sees each packet with its [`Direction`], says what becomes of it ([`Action`]),
//! may emit packets of its own through the [`Emitter`] (buffers from a reserve the engine gave
//! it: it never allocates or blocks), and names its next deadline. The engine runs one
//! instance for both directions, called from several threads at once (the readers inline,
//! the workers, the timer) with no lock of its own around it: the stage guards its own state,
//! as finely as it can (the WireGuard stage locks only the peer a packet belongs to). The
//! engine calls [`DuplexStage::on_deadline`] from a timer thread that sleeps until the
//! deadline: nothing wakes up periodically when nothing is pending.

use crate::pool::PacketBuf;
use std::time::Instant;

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Read from the inside device (the TUN), bound for the outside (the network).
    Outbound,
    /// Read from the outside device, bound for the inside.
    Inbound,
}

/// A device of the tunnel, as a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The TUN: packets to the apps.
    Inside,
    /// The UDP socket: datagrams to the peers.
    Outside,
}

impl Direction {
    /// Both directions, outbound first.
    pub const BOTH: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    /// Where a packet of this direction is written when it is forwarded.
    pub fn destination(self) -> Side {
        match self {
            Direction::Outbound => Side::Outside,
            Direction::Inbound => Side::Inside,
        }
    }

    /// Where a packet of this direction was read.
    pub fn source(self) -> Side {
        match self {
            Direction::Outbound => Side::Inside,
            Direction::Inbound => Side::Outside,
        }
    }

    /// The other direction.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::Outbound => Direction::Inbound,
            Direction::Inbound => Direction::Outbound,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl Side {
    /// The direction of a packet written to this side.
    pub fn direction(self) -> Direction {
        match self {
            Side::Outside => Direction::Outbound,
            Side::Inside => Direction::Inbound,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What becomes of a packet a duplex stage has seen. The engine counts each outcome, so that
/// in each direction `read + originated = written + dropped + consumed + held` (see
/// [`crate::Stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// The packet, as it now stands in its buffer, goes on toward the other side (an
    /// outbound packet to the network, sealed; an inbound one to the TUN, opened).
    Forward,
    /// The stage keeps the packet's content to send later (*held*, as with [`Action::Hold`]),
    /// and its buffer now holds a packet of the stage's own (*originated*) going the same way:
    /// a handshake initiation sent in place of a data packet that waits for the handshake.
    Replace,
    /// The stage has taken in the packet (*consumed*), and its buffer now holds an answer
    /// (*originated*) going back toward where the packet came from: a handshake response.
    Reply,
    /// The packet was a message for the protocol itself (a keepalive, a cookie, a handshake
    /// message): it ends here, *consumed*.
    Consume,
    /// The stage keeps the packet's content to send later (a data packet waiting for a
    /// handshake): *held* until the stage sends it with [`Emitter::release`] or gives it up
    /// with [`Emitter::drop_held`]. What is still held at stop counts as dropped ("stopped").
    Hold,
    /// The stage drops the packet: counted as a stage drop (the stage may count why).
    Drop,
}

/// A two-way protocol: see the module documentation.
///
/// Every method may run on any of the reader, worker and timer threads that has a packet or
/// a deadline for the stage, on several at once: the engine holds no lock around the stage,
/// which guards its own state. No method may block beyond a short lock of its own.
pub trait DuplexStage: Send + Sync {
    /// Processes one packet travelling `direction`, in place. A packet may grow into its
    /// head- and tailroom; a datagram's peer is its [`PacketBuf::endpoint`] (the sender, as
    /// received; set it on a packet going out).
    fn process(
        &self,
        direction: Direction,
        packet: &mut PacketBuf,
        out: &mut Emitter<'_>,
    ) -> Action;

    /// Called when the deadline the stage named has come (or later): runs its timers, and
    /// emits what they send.
    fn on_deadline(&self, out: &mut Emitter<'_>);

    /// The next time [`DuplexStage::on_deadline`] should run, or `None` while nothing is
    /// pending. Asked after every batch and every deadline; an earlier one wakes the timer.
    fn next_deadline(&self) -> Option<Instant>;

    /// The host says the network path changed and the outside device was rebound: a chance
    /// to tell the peers where this end now is (a handshake, say, which also tests the new
    /// path: [`DuplexStage::round_trips`]). The default does nothing.
    fn path_changed(&self, out: &mut Emitter<'_>) {
        let _ = out;
    }

    /// The engine is about to be suspended ([`crate::Engine::suspend`]): the last chance to
    /// send what the stage owes its peers before nothing goes out for a while (a tunnel's
    /// keepalive for data just received). The default does nothing.
    fn suspending(&self, out: &mut Emitter<'_>) {
        let _ = out;
    }

    /// The network path changed: look up again whatever the stage addresses by name (a
    /// tunnel's endpoints), before the outside device is rebound. The one method that may
    /// block (on a resolver): the engine calls it on a thread of the rebind's own, never on
    /// one that carries packets or one a stop waits for. The default does nothing.
    fn refresh_endpoints(&self) {}

    /// A count that grows each time a message proves that this end's datagrams reach a peer
    /// and its answers come back (a tunnel: a handshake answered), so that a rebind can tell
    /// whether the new socket's path works and move to a fresh port if it does not. `None`
    /// (the default) when the stage cannot tell or has nobody to ask: a rebind then keeps
    /// its port.
    fn round_trips(&self) -> Option<u64> {
        None
    }

    /// The outside device was moved to a fresh `port` by a rebind whose path did not work.
    /// The default does nothing.
    fn socket_moved(&self, port: u16) {
        let _ = port;
    }

    /// The engine that runs the stage gives it, as it starts, its way to say that the next
    /// deadline changed outside any packet or deadline (a configuration change from the
    /// host, say): [`DeadlineBell::ring`]. The default drops it: a stage whose deadlines
    /// only move while it processes needs none.
    fn attach(&self, bell: DeadlineBell) {
        let _ = bell;
    }

    /// Bytes the stage adds to an outbound packet (and so to the largest datagram inbound):
    /// the engine sizes the outside device's buffers for `mtu + overhead`.
    fn overhead(&self) -> usize {
        0
    }

    /// The most packets the stage may emit at once toward one side (a handshake's queue of
    /// waiting packets, flushed when it completes): the engine gives each thread that runs
    /// the stage that many spare buffers, and room for them in its rings, so that the burst
    /// goes out whole and in order. The default, 0, asks for one batch.
    fn burst(&self) -> usize {
        0
    }

    /// Bytes the stage itself holds for as long as it runs (a tunnel's per-peer state): the
    /// engine counts them in [`crate::Engine::reserved_bytes`] and checks them against
    /// [`crate::Config::memory_budget`]. The default, 0, is for a stage that holds little.
    fn state_bytes(&self) -> usize {
        0
    }
}

/// A duplex stage's way to tell the engine that runs it that its next deadline changed
/// outside a packet, a deadline or a path change ([`DuplexStage::attach`]). It holds the
/// engine weakly: once the engine is gone, ringing does nothing.
#[derive(Clone)]
pub struct DeadlineBell {
    pub(crate) ctl: std::sync::Weak<crate::actor::Control>,
}

impl DeadlineBell {
    /// Asks `stage` (the one the engine runs) for its next deadline, as the engine does after
    /// a batch, and wakes the timer if it moved earlier. Call it with none of the stage's
    /// locks held: the stage is asked again here.
    pub fn ring(&self, stage: &dyn DuplexStage) {
        if let Some(ctl) = self.ctl.upgrade() {
            ctl.publish_deadline(stage);
        }
    }
}

impl std::fmt::Debug for DeadlineBell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineBell").finish_non_exhaustive()
    }
}

/// What a duplex stage uses to send packets of its own: buffers from a reserve the engine
/// gave the thread that runs it, and the time (`std`), read when the stage first asks for it
/// under its lock for this packet or deadline.
pub struct Emitter<'a> {
    pub(crate) spare: &'a mut Vec<PacketBuf>,
    pub(crate) emitted: &'a mut Vec<PacketBuf>,
    /// The time, once read ([`Emitter::now`]): a stage that never asks costs no clock read.
    pub(crate) now: std::cell::Cell<Option<Instant>>,
    pub(crate) headroom: usize,
    pub(crate) capacity: usize,
    /// Slots left, by side, in the rings toward the writers (after the batch's own packets):
    /// an emitted packet never finds its ring full.
    pub(crate) room: [usize; 2],
    pub(crate) tally: &'a mut EmitTally,
}

/// What an [`Emitter`] saw besides the packets it emitted, by side (index [`Side::index`]):
/// the engine turns it into counts once the stage returns.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EmitTally {
    /// Packets of the stage's own that found no spare buffer or no room: originated and
    /// dropped ("no buffer").
    pub no_buffer: [u64; 2],
    /// Held packets among the emitted ones (not originated: they were read).
    pub released: [u64; 2],
    /// Held packets that found no spare buffer or no room: dropped ("no buffer").
    pub released_lost: [u64; 2],
    /// Held packets the stage gave up (dropped, "stage").
    pub held_dropped: [u64; 2],
}

impl Emitter<'_> {
    /// Now, `std` time: read the first time the stage asks, under its lock for this packet
    /// (or this deadline), and the same for the rest of it.
    pub fn now(&self) -> Instant {
        if let Some(now) = self.now.get() {
            return now;
        }
        let now = Instant::now();
        self.now.set(Some(now));
        now
    }

    /// How many packets can still be emitted toward `side` now: spare buffers, and room to
    /// hand them on to the writer. A stage with more to send keeps it for its next deadline.
    pub fn spare(&self, side: Side) -> usize {
        let room = self.emitted.capacity() - self.emitted.len();
        self.spare.len().min(room).min(self.room[side.index()])
    }

    /// Emits a packet toward `side`. `fill` gets an empty buffer whose window is the whole
    /// area a packet may take (as a device receives into it): it writes the packet there,
    /// truncates the window to its length, sets the endpoint for the outside, and returns
    /// true; false sends nothing and gives the buffer back.
    ///
    /// Returns false when nothing was sent: `fill` declined, or [`Emitter::spare`] was 0 (the
    /// packet is then counted as dropped, "no buffer").
    pub fn emit(&mut self, side: Side, fill: impl FnOnce(&mut PacketBuf) -> bool) -> bool {
        if self.spare(side) == 0 {
            self.tally.no_buffer[side.index()] += 1;
            return false;
        }
        self.put(side, fill)
    }

    /// Sends a packet the stage held ([`Action::Hold`]) toward `side`, as [`Emitter::emit`]
    /// does. It leaves the hold whether or not it is sent: without a spare buffer it is
    /// dropped ("no buffer"), and if `fill` declines, dropped as a stage drop. Returns false
    /// when nothing was sent.
    pub fn release(&mut self, side: Side, fill: impl FnOnce(&mut PacketBuf) -> bool) -> bool {
        if self.spare(side) == 0 {
            self.tally.released_lost[side.index()] += 1;
            return false;
        }
        let sent = self.put(side, fill);
        if sent {
            self.tally.released[side.index()] += 1;
        } else {
            self.tally.held_dropped[side.index()] += 1;
        }
        sent
    }

    /// The stage gives up `count` packets it held toward `side` (the handshake they waited
    /// for failed): each leaves the hold as a stage drop.
    pub fn drop_held(&mut self, side: Side, count: u64) {
        self.tally.held_dropped[side.index()] += count;
    }

    fn put(&mut self, side: Side, fill: impl FnOnce(&mut PacketBuf) -> bool) -> bool {
        let Some(mut buf) = self.spare.pop() else {
            return false;
        };
        buf.prepare_receive(self.headroom, self.capacity);
        if fill(&mut buf) {
            buf.side = side;
            self.emitted.push(buf);
            self.room[side.index()] -= 1;
            true
        } else {
            self.spare.push(buf);
            false
        }
    }
}

impl std::fmt::Debug for Emitter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("spare", &self.spare.len())
            .field("emitted", &self.emitted.len())
            .finish_non_exhaustive()
    }
}
