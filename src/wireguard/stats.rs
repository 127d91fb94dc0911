//! What the WireGuard stage counts: handshakes, data per direction, and why it dropped what
//! it dropped. Written by whichever engine thread holds the stage, read by anyone.

use super::config::Key;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why the stage dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// A datagram failed authentication (a bad MAC or AEAD tag, a wrong key).
    AuthFailure,
    /// A datagram replayed an old counter or handshake timestamp.
    Replay,
    /// A decrypted packet's source is outside the peer's AllowedIPs.
    NotAllowed,
    /// A datagram for a session that does not exist (expired, or never made).
    NoSession,
    /// An outbound packet to a destination outside every peer's AllowedIPs.
    NoPeer,
    /// An outbound packet for a peer whose endpoint is not known yet.
    NoEndpoint,
    /// A datagram that is no WireGuard message.
    Garbage,
    /// An outbound packet waited for a handshake that never completed (given up after 90 s),
    /// or found the queue of waiting packets full (256).
    NoHandshake,
    /// A handshake message whose mac1 is not made with this end's public key: junk, or a
    /// peer that holds another key for this end. Dropped before any Diffie-Hellman.
    BadMac1,
}

const REASONS: usize = 9;

/// The WireGuard stage's counters, shared with whoever asked for them
/// ([`crate::wireguard::WireGuard::counters`]).
#[derive(Debug)]
pub struct WireGuardCounters {
    handshakes_completed: AtomicU64,
    handshake_failures: AtomicU64,
    handshake_initiations: AtomicU64,
    /// Handshake responses to this end's initiations: each proves that the path works both
    /// ways ([`crate::stage::DuplexStage::round_trips`]).
    answered_initiations: AtomicU64,
    cookie_replies: AtomicU64,
    /// Seconds since the Unix epoch of the last completed handshake (0: none).
    last_handshake: AtomicU64,
    /// Data packets and their bytes (inner, decrypted sizes): sent, received.
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    drops: [AtomicU64; REASONS],
    /// Every peer's own counters, in the configuration's order: replaced whole when the
    /// peers change, never taken per packet (the stage holds each peer's counters).
    peers: Mutex<Vec<Arc<PeerCounters>>>,
}

/// A snapshot of [`WireGuardCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WireGuardStats {
    /// Handshakes completed, as initiator or responder.
    pub handshakes_completed: u64,
    /// Handshakes that failed: received handshake messages that did not authenticate, and
    /// initiations of ours that got no answer in time (each retry counts).
    pub handshake_failures: u64,
    /// Handshake initiations sent.
    pub handshake_initiations: u64,
    /// Handshake responses to this end's initiations: each proves the path works both ways
    /// (what a rebind waits for).
    pub initiations_answered: u64,
    /// Cookie replies sent: handshake messages with a valid mac1 that came while the device
    /// was under load (past its rate limit) without a valid mac2, and got a cookie instead of
    /// an answer.
    pub cookie_replies: u64,
    /// How long ago the last handshake completed; `None` if none has.
    pub since_last_handshake: Option<Duration>,
    /// Data packets sent to the peers (keepalives not counted), and their inner bytes.
    pub tx_packets: u64,
    /// Inner bytes of the data packets sent.
    pub tx_bytes: u64,
    /// Data packets received from the peers and delivered inside, and their inner bytes.
    pub rx_packets: u64,
    /// Inner bytes of the data packets received.
    pub rx_bytes: u64,
    /// Dropped: authentication failures.
    pub drop_auth_failure: u64,
    /// Dropped: replays.
    pub drop_replay: u64,
    /// Dropped: a decrypted source outside the peer's AllowedIPs.
    pub drop_not_allowed: u64,
    /// Dropped: no such session.
    pub drop_no_session: u64,
    /// Dropped: a destination outside every peer's AllowedIPs.
    pub drop_no_peer: u64,
    /// Dropped: the peer's endpoint is not known yet.
    pub drop_no_endpoint: u64,
    /// Dropped: not a WireGuard message.
    pub drop_garbage: u64,
    /// Dropped: waited for a handshake that never completed, or found the wait queue full.
    pub drop_no_handshake: u64,
    /// Dropped: a handshake message with a bad mac1 (not made with this end's public key),
    /// before any Diffie-Hellman. Not counted as a handshake failure.
    pub drop_bad_mac1: u64,
    /// Each peer's current endpoint, in the config's order.
    pub endpoints: Vec<Option<SocketAddr>>,
}

impl WireGuardStats {
    /// Every packet and datagram the stage refused, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.drop_auth_failure
            + self.drop_replay
            + self.drop_not_allowed
            + self.drop_no_session
            + self.drop_no_peer
            + self.drop_no_endpoint
            + self.drop_garbage
            + self.drop_no_handshake
            + self.drop_bad_mac1
    }
}

impl WireGuardCounters {
    pub(crate) fn new() -> Self {
        WireGuardCounters {
            handshakes_completed: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            handshake_initiations: AtomicU64::new(0),
            answered_initiations: AtomicU64::new(0),
            cookie_replies: AtomicU64::new(0),
            last_handshake: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            drops: Default::default(),
            peers: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn dropped(&self, reason: DropReason) {
        self.dropped_many(reason, 1);
    }

    pub(crate) fn dropped_many(&self, reason: DropReason, count: u64) {
        self.drops[reason as usize].fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn handshake_completed(&self) {
        self.handshakes_completed.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.last_handshake.store(now.max(1), Ordering::Relaxed);
    }

    pub(crate) fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn initiation_sent(&self) {
        self.handshake_initiations.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn initiation_answered(&self) {
        self.answered_initiations.fetch_add(1, Ordering::Relaxed);
    }

    /// Handshake responses to this end's initiations so far.
    pub(crate) fn round_trips(&self) -> u64 {
        self.answered_initiations.load(Ordering::Relaxed)
    }

    pub(crate) fn cookie_sent(&self) {
        self.cookie_replies.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn data_sent(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn data_received(&self, bytes: usize) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records that peer `index` is now reached at `endpoint` (a lock, taken only when it
    /// changes).
    /// The peers are now these, in the configuration's order.
    pub(crate) fn set_peers(&self, peers: Vec<Arc<PeerCounters>>) {
        *self.peers.lock() = peers;
    }

    /// How many peers there are now.
    pub fn peer_count(&self) -> usize {
        self.peers.lock().len()
    }

    /// The figures of the peer at `index` in the configuration's order, if there is one: one
    /// peer's snapshot, for a host that walks the peers one call at a time.
    pub fn peer(&self, index: usize) -> Option<PeerStats> {
        self.peers.lock().get(index).map(|p| p.snapshot())
    }

    /// Each peer's figures, in the configuration's order.
    pub fn peers(&self) -> Vec<PeerStats> {
        self.peers.lock().iter().map(|p| p.snapshot()).collect()
    }

    /// The counters now.
    pub fn snapshot(&self) -> WireGuardStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let drop = |r: DropReason| get(&self.drops[r as usize]);
        let last = get(&self.last_handshake);
        let since_last_handshake = (last != 0).then(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            Duration::from_secs(now.saturating_sub(last))
        });
        WireGuardStats {
            handshakes_completed: get(&self.handshakes_completed),
            initiations_answered: get(&self.answered_initiations),
            handshake_failures: get(&self.handshake_failures),
            handshake_initiations: get(&self.handshake_initiations),
            cookie_replies: get(&self.cookie_replies),
            since_last_handshake,
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            drop_auth_failure: drop(DropReason::AuthFailure),
            drop_replay: drop(DropReason::Replay),
            drop_not_allowed: drop(DropReason::NotAllowed),
            drop_no_session: drop(DropReason::NoSession),
            drop_no_peer: drop(DropReason::NoPeer),
            drop_no_endpoint: drop(DropReason::NoEndpoint),
            drop_garbage: drop(DropReason::Garbage),
            drop_no_handshake: drop(DropReason::NoHandshake),
            drop_bad_mac1: drop(DropReason::BadMac1),
            endpoints: self
                .peers
                .lock()
                .iter()
                .map(|p| *p.endpoint.lock())
                .collect(),
        }
    }
}

/// One peer's counters: written by the thread that holds the stage for the peer's packets,
/// read by anyone ([`WireGuardCounters::peers`]).
///
/// Bytes and packets are WireGuard messages as they cross the socket (the UDP payload of
/// every handshake message, cookie reply, keepalive and data message), as wireguard-go and
/// `wg show` count them; the tunnel-wide [`WireGuardStats`] counts the packets inside.
/// Received messages are counted once authenticated.
#[derive(Debug)]
pub(crate) struct PeerCounters {
    public_key: Key,
    tx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    handshakes: AtomicU64,
    /// When the last handshake completed, in ns since the Unix epoch; 0: never.
    last_handshake_ns: AtomicU64,
    drops: [AtomicU64; REASONS],
    /// Where the peer is now: configured, or moved by its authenticated datagrams. Taken when
    /// it changes (rarely) and when figures are read.
    endpoint: Mutex<Option<SocketAddr>>,
}

impl PeerCounters {
    pub(crate) fn new(public_key: Key, endpoint: Option<SocketAddr>) -> Self {
        PeerCounters {
            public_key,
            tx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            last_handshake_ns: AtomicU64::new(0),
            drops: Default::default(),
            endpoint: Mutex::new(endpoint),
        }
    }

    pub(crate) fn sent(&self, message_bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes
            .fetch_add(message_bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, message_bytes: usize) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes
            .fetch_add(message_bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self, reason: DropReason, count: u64) {
        self.drops[reason as usize].fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn handshake_completed(&self) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        self.last_handshake_ns.store(
            u64::try_from(ns).unwrap_or(u64::MAX).max(1),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn moved(&self, endpoint: Option<SocketAddr>) {
        *self.endpoint.lock() = endpoint;
    }

    pub(crate) fn snapshot(&self) -> PeerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let last = get(&self.last_handshake_ns);
        PeerStats {
            public_key: self.public_key.clone(),
            endpoint: *self.endpoint.lock(),
            last_handshake: (last != 0).then(|| UNIX_EPOCH + Duration::from_nanos(last)),
            handshakes: get(&self.handshakes),
            tx_bytes: get(&self.tx_bytes),
            tx_packets: get(&self.tx_packets),
            rx_bytes: get(&self.rx_bytes),
            rx_packets: get(&self.rx_packets),
            drops: std::array::from_fn(|i| get(&self.drops[i])),
        }
    }
}

/// One peer's figures ([`WireGuardCounters::peers`], [`crate::wireguard::WireGuard::peers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// The peer. (Its `Debug` shows nothing of it: [`Key::to_base64`] writes it out.)
    pub public_key: Key,
    /// Where it is now (configured, or where its authenticated datagrams came from).
    pub endpoint: Option<SocketAddr>,
    /// When its last handshake completed; `None`: never (since it was added).
    pub last_handshake: Option<SystemTime>,
    /// Handshakes completed.
    pub handshakes: u64,
    /// WireGuard messages sent to it, handshakes and keepalives included.
    pub tx_packets: u64,
    /// Their bytes (UDP payload): what `wg show` calls "sent".
    pub tx_bytes: u64,
    /// Authenticated messages received from it.
    pub rx_packets: u64,
    /// Their bytes (UDP payload): `wg show`'s "received".
    pub rx_bytes: u64,
    drops: [u64; REASONS],
}

impl PeerStats {
    /// Packets to or from this peer dropped for `reason`. A datagram's peer is not known
    /// before it is found by its index or key, so [`DropReason::NoPeer`],
    /// [`DropReason::BadMac1`] and most [`DropReason::Garbage`] count only in the
    /// tunnel-wide figures.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Every packet to or from this peer that was dropped.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }
}
