//! WireGuard as a duplex stage, on boringtun's I/O-free Noise core (`boringtun::noise::Tunn`).
//!
//! ```text
//!  TUN ─► [outbound: route by AllowedIPs, encapsulate] ─► UDP   (data, or a handshake
//!  TUN ◄─ [inbound: find the peer, decapsulate, check] ◄─ UDP    initiation in its place)
//!              └ timers: retries, keepalives, rekeys, key erasure, at derived deadlines
//! ```
//!
//! tunpipe owns every socket, thread and clock; `Tunn` only turns bytes into bytes and
//! returns instructions. The stage keeps one `Tunn` per peer, routes outbound packets by
//! AllowedIPs (longest prefix), finds an inbound datagram's peer by its receiver index (or,
//! for a handshake initiation with several peers, by the initiator's static key), drops a
//! decrypted packet whose source the peer is not allowed, follows a peer's endpoint to where
//! its latest authenticated datagram came from (roaming), and flushes the packets `Tunn`
//! queued during a handshake once it completes.
//!
//! Handshake messages are the attack surface: anyone can send them, and answering one costs
//! Diffie-Hellman operations. So each passes a door first (`WireGuard::screen`): its mac1 (a
//! keyed hash with this end's public key) is checked before any Diffie-Hellman, then one rate
//! limiter for the whole device (boringtun's, shared by every peer's `Tunn`) counts it; past
//! [`HANDSHAKE_RATE_LIMIT`] a second, a message must carry a mac2 made with a cookie for its
//! sender's address, and one without gets that cookie in reply instead of an answer.
//!
//! Its config is the standard wg-quick file ([`WgConfig`]). While it runs, WireGuard's
//! cross-platform configuration protocol (what `wg` and WireGuardKit speak; parsed, modelled
//! and answered in [`uapi`]) changes it without a stop ([`WireGuard::set`]) and reads it back
//! ([`WireGuard::get`]): the peer table is live, and a peer a change leaves alone keeps its
//! sessions. The stage's counters ([`WireGuard::counters`], and per peer
//! [`WireGuard::peers`]) say how many handshakes completed or failed, what went to and came
//! from each peer, and why packets were dropped. Keys never reach a log.

mod allowed_ips;
mod clock;
mod config;
mod deadlines;
mod stats;
mod timers;
pub mod uapi;

/// Property tests' generators of what a configuration holds, for the parsers' tests.
#[cfg(test)]
pub(crate) mod strategies {
    use super::Key;
    use ipnet::IpNet;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Any key.
    pub(crate) fn key() -> impl Strategy<Value = Key> {
        any::<[u8; 32]>().prop_map(Key)
    }

    /// Any IPv4 or IPv6 prefix.
    pub(crate) fn net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32)
                .prop_map(|(a, p)| IpNet::new(Ipv4Addr::from(a).into(), p).unwrap()),
            (any::<u128>(), 0u8..=128)
                .prop_map(|(a, p)| IpNet::new(Ipv6Addr::from(a).into(), p).unwrap()),
        ]
    }
}

pub use config::{
    Endpoint, Interface, Key, PeerConfig, WgConfig, WgConfigError, DEFAULT_MTU, MAX_ALLOWED_IPS,
    MAX_PEERS,
};
pub use stats::{DropReason, PeerStats, WireGuardCounters, WireGuardStats};

use crate::device::UdpDevice;
use crate::pool::PacketBuf;
use crate::stage::{Action, DeadlineBell, Direction, DuplexStage, Emitter, Side};
use crate::wire::{check_ip, IpVersion, Ipv4Packet, Ipv6Packet};
use allowed_ips::AllowedIps;
use arc_swap::ArcSwap;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use clock::Instant;
use deadlines::Deadlines;
use ipnet::IpNet;
use parking_lot::Mutex;
use stats::PeerCounters;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use timers::PeerTimers;
use uapi::{Changes, PeerFigures, SetRequest, UapiError, UapiState};

/// Bytes WireGuard adds to a packet: a 16-byte header and a 16-byte authentication tag.
pub const OVERHEAD: usize = 32;

/// Bytes a WireGuard stage holds for `peers` peers with `prefixes` AllowedIPs prefixes in
/// all, as it starts (peers added later are not counted). A peer's `Tunn` is about 11 KiB,
/// most of it room for its sessions, held inline; the device has one rate limiter, and each
/// prefix is an entry in the AllowedIPs trie (counted as two prefix-and-peer pairs, for the
/// trie's nodes).
/// tests/sizes.rs holds this within 20% of the memory a started tunnel adds.
pub fn state_bytes(peers: usize, prefixes: usize) -> usize {
    use std::mem::size_of;
    // What the allocator adds to a heap block, about.
    const BLOCK: usize = 16;
    // A peer in its cell, its place among the deadlines and in the key index, and its
    // counters.
    let per_peer = size_of::<Option<Arc<PeerCell>>>()
        + size_of::<PeerCell>()
        + 2 * size_of::<usize>()
        + BLOCK
        + Deadlines::PER_PEER
        + 2 * size_of::<([u8; 32], usize)>()
        + size_of::<PeerCounters>()
        + BLOCK;
    let per_prefix = 2 * size_of::<(IpNet, usize)>();
    // The device's one rate limiter, in its `Arc` block.
    let limiter = size_of::<RateLimiter>() + 2 * size_of::<usize>() + BLOCK;
    size_of::<WireGuard>()
        + limiter
        + SCRATCH
        + peers.saturating_mul(per_peer)
        + prefixes.saturating_mul(per_prefix)
        // The configuration as the UAPI sees it.
        + uapi::state_bytes(peers, prefixes)
}

/// Bytes of the scratch buffer `Tunn` writes into: as large as any datagram.
const SCRATCH: usize = u16::MAX as usize + 2 * OVERHEAD;

// A peer's index is the top 24 bits of its session indices (`peer_of`): every peer a config
// may hold must fit.
const _: () = assert!(MAX_PEERS < 1 << 24);

/// How many packets `Tunn` queues while it waits for a handshake (boringtun's private
/// `MAX_QUEUE_DEPTH`): the stage's burst ([`DuplexStage::burst`]), when the handshake
/// completes and they all go out. With [`OVERHEAD`], what the engine sizes a tunnel by
/// ([`crate::tunnel_engine_bytes`]).
pub const QUEUE_DEPTH: usize = 256;

/// How long the packets `Tunn` held for a completed handshake wait for an outbound packet to
/// carry them out (ahead of it, in order) before the timer sends them; also how soon they are
/// tried again when no buffer was free. The writers give buffers back within microseconds.
const FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

/// WireGuard message types (the first byte of every message, little-endian u32).
const HANDSHAKE_INIT: u8 = 1;
const HANDSHAKE_RESPONSE: u8 = 2;
const COOKIE_REPLY: u8 = 3;
const DATA: u8 = 4;

/// Handshake messages (initiations and responses, with a valid mac1) a second the device
/// answers before it asks for cookies: boringtun's own device's figure. One limit for the
/// whole device, whatever the number of peers.
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// The limit given to the [`RateLimiter`]: it counts each handshake message twice, once at
/// the stage's door (`WireGuard::screen`) and once inside `Tunn::decapsulate`, which checks
/// again with the same limiter.
const LIMITER_COUNT: u64 = 2 * HANDSHAKE_RATE_LIMIT;

/// How often the rate limiter's count starts again (boringtun's `RESET_PERIOD`).
const LIMITER_PERIOD: Duration = Duration::from_secs(1);

/// The bytes of a cookie reply.
const COOKIE_REPLY_SIZE: usize = 64;

/// The WireGuard stage: one tunnel end and its peers. Build it from a wg-quick config and
/// run it with [`crate::Builder::start_tunnel`] between a TUN and a [`crate::UdpDevice`].
///
/// A `WireGuard` is a handle: a clone kept by the host reaches the same stage while the
/// engine runs it, to change its configuration ([`WireGuard::set`], the UAPI's `set`) and
/// read it back ([`WireGuard::get`], [`WireGuard::peers`]) without a stop.
///
/// The engine calls it from several threads at once and holds no lock around it. A packet
/// takes no lock that all peers share: it reads the table of peers and routes (swapped whole
/// by a configuration change) without one, and locks only its peer, whose clock it reads once
/// that lock is held. Two peers' packets never wait for each other. The order of every
/// peer's next deadline is behind a lock of its own, taken only when a peer's deadline moves
/// (rarely under steady traffic: `timers`' module docs).
#[derive(Clone)]
pub struct WireGuard {
    shared: Arc<Shared>,
}

struct Shared {
    /// The peers, their routes and this end's keys: loaded per packet without a lock, and
    /// replaced whole by a configuration change.
    table: ArcSwap<Table>,
    /// Every peer's next deadline, in order. Lock order: a peer's lock, then this.
    deadlines: Mutex<Deadlines>,
    /// The first of `deadlines` (ns on the stage's clock; `u64::MAX`: none), for
    /// [`DuplexStage::next_deadline`], which the engine asks after every batch, without the
    /// lock.
    first_deadline: AtomicU64,
    /// When the rate limiter's count last started again. It is reset when a handshake message
    /// arrives a period or more after that, never by a timer: an idle tunnel does not wake
    /// for it. Taken for handshake messages only.
    limiter_reset: Mutex<Instant>,
    /// Packets that removed or restarted peers held for a handshake, to be counted as dropped
    /// by the next thread with an [`Emitter`] (a configuration change has none).
    held_by_gone: AtomicU64,
    /// Diffie-Hellman operations the stage did to learn who sent an initiation (only with
    /// several peers; each `Tunn` does its own after its own checks).
    anonymous_opens: AtomicU64,
    /// [`WireGuard::disable_roaming`] was called: a peer given an endpoint from then on does
    /// not roam either.
    roaming_disabled: AtomicBool,
    /// The configuration as the UAPI sees it. Taken by configuration calls only (which it
    /// serializes), never for a packet.
    control: Mutex<UapiState>,
    counters: Arc<WireGuardCounters>,
    /// What [`DuplexStage::state_bytes`] says: fixed once built.
    state_bytes: usize,
    /// The engine's ear for a deadline moved by a configuration change, once an engine runs
    /// the stage.
    bell: Mutex<Option<DeadlineBell>>,
    /// The endpoints the configuration gave as a host to look up ([`Endpoint::Resolved`]),
    /// by peer key: [`WireGuard::refresh_endpoints`] looks them up again. An endpoint set
    /// through the UAPI (an address) takes its peer out, as does the peer's removal.
    hosts: Mutex<HashMap<[u8; 32], (String, u16)>>,
}

/// The peers and what finds them: immutable once published, replaced whole.
struct Table {
    /// The peers by slot: a peer's slot is the top 24 bits of its session indices, so it
    /// stays put while the peer lives. A removed peer's slot is empty until a new peer takes
    /// it.
    peers: Vec<Option<Arc<PeerCell>>>,
    /// Each peer's slot by its public key.
    by_key: HashMap<[u8; 32], usize>,
    /// Every peer's AllowedIPs: routes outbound packets, checks inbound sources. Shared by
    /// tables whose change left the prefixes alone.
    allowed_ips: Arc<AllowedIps>,
    private: StaticSecret,
    public: PublicKey,
    /// The device's one rate limiter, shared by every peer's `Tunn`.
    limiter: Arc<RateLimiter>,
}

/// One peer, behind its own lock. A table that kept the peer holds the same cell.
struct PeerCell {
    peer: Mutex<Peer>,
}

struct Peer {
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
    timers: PeerTimers,
    /// When the packets `Tunn` holds for a completed handshake go out, if no outbound packet
    /// (which sends them first) comes before.
    flush_due: Option<Instant>,
    /// Packets `Tunn` holds for the handshake (it keeps [`QUEUE_DEPTH`] at most, and drops
    /// the rest without saying so: this count says it).
    queued: usize,
    /// The deadline recorded for it in [`Shared::deadlines`].
    recorded: Option<Instant>,
    /// Removed (or replaced) by a configuration change: a thread that found it in an older
    /// table drops its packet, and records no deadline for its slot.
    gone: bool,
    /// Its endpoint follows its authenticated datagrams (roaming). Off for a peer with an
    /// endpoint once [`WireGuard::disable_roaming`] was called.
    roams: bool,
    counters: Arc<PeerCounters>,
}

thread_local! {
    /// Where `Tunn` writes what it makes (it cannot work in place): as large as any
    /// datagram, one per thread that runs the stage, made at its first packet.
    static SCRATCH_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

impl WireGuard {
    /// Builds the stage for `config`. Peer endpoints must be addresses by now (see
    /// [`WgConfig::resolve`]).
    ///
    /// # Errors
    /// What [`WgConfig::check`] finds (no peer, a limit passed, two peers with one key), or an
    /// endpoint still given as a host name.
    pub fn new(config: &WgConfig) -> Result<WireGuard, WgConfigError> {
        config.check()?;
        if let Some(index) = config
            .peers
            .iter()
            .position(|p| matches!(p.endpoint, Some(Endpoint::Host(..))))
        {
            return Err(WgConfigError {
                line: 0,
                field: "Endpoint".to_string(),
                reason: format!(
                    "peer {}: a host name not resolved yet (WgConfig::resolve)",
                    index + 1
                ),
            });
        }
        let control = UapiState::from_config(config).map_err(|e| WgConfigError {
            line: 0,
            field: e.field().to_string(),
            reason: e.reason().to_string(),
        })?;
        let private = control
            .private_key()
            .unwrap_or(&config.interface.private_key)
            .clone();
        let shared = Shared::new(&private, state_bytes(config.peers.len(), config.prefixes()));
        let everyone = Changes {
            allowed_ips: true,
            added: control.peers().map(|p| p.public_key).collect(),
            ..Changes::default()
        };
        shared.follow(&control, &everyone);
        *shared.control.lock() = control;
        *shared.hosts.lock() = config
            .peers
            .iter()
            .filter_map(|p| match &p.endpoint {
                Some(Endpoint::Resolved { host, port, .. }) => {
                    Some((p.public_key.0, (host.clone(), *port)))
                }
                _ => None,
            })
            .collect();
        Ok(WireGuard {
            shared: Arc::new(shared),
        })
    }

    /// A stage with no private key and no peers, as a userspace WireGuard starts for
    /// `wg-quick`, which then configures it with `wg setconf` ([`WireGuard::set`]). Until a
    /// private key is set, it answers no handshake (one made up for the purpose, never
    /// shown, stands in for it).
    pub fn unconfigured() -> WireGuard {
        WireGuard {
            shared: Arc::new(Shared::new(&Key::generate(), state_bytes(0, 0))),
        }
    }

    /// The stage's counters, readable from any thread while the tunnel runs and after.
    pub fn counters(&self) -> Arc<WireGuardCounters> {
        self.shared.counters.clone()
    }

    /// Each peer's figures, in the configuration's order.
    pub fn peers(&self) -> Vec<PeerStats> {
        self.shared.counters.peers()
    }

    /// Applies a UAPI `set` ([`uapi::parse_set`]) to the running tunnel, or to one not
    /// started yet, and says what changed. Nothing stops: peers are added and removed, and
    /// a peer's endpoint, AllowedIPs, keepalive and preshared key change, while packets
    /// flow. A peer the request leaves alone keeps its sessions and its packets; so does a
    /// peer that `replace_peers=true` lists again with the same preshared key (where
    /// wireguard-go makes every peer anew). A new private or preshared key restarts the
    /// sessions it concerns; a new persistent keepalive interval does not (turned on, a
    /// keepalive goes out at once, as in wireguard-go). Packets a removed or restarted peer
    /// held for a handshake are dropped and counted (`NoPeer`), as is a packet that reaches
    /// such a peer as the change is made.
    ///
    /// The listen port and fwmark are the socket's, which the stage does not own: a caller
    /// that owns the socket uses [`WireGuard::set_on`].
    ///
    /// # Errors
    /// A request past the limits, or one that removes the private key (a running tunnel
    /// keeps one; wireguard-go would stop answering handshakes): EINVAL. A request that
    /// fails changes nothing.
    pub fn set(&self, request: &SetRequest) -> Result<Changes, UapiError> {
        let changes = self.set_with(request, |_, _| Ok(()))?;
        self.forget_hosts(&changes);
        Ok(changes)
    }

    /// Peers removed, or given an address through the UAPI, are not looked up again.
    fn forget_hosts(&self, changes: &Changes) {
        let mut hosts = self.shared.hosts.lock();
        if hosts.is_empty() {
            return;
        }
        for key in &changes.removed {
            hosts.remove(&key.0);
        }
        for change in changes.changed.iter().filter(|c| c.endpoint) {
            hosts.remove(&change.public_key.0);
        }
    }

    /// Looks up again every endpoint the configuration gave as a host (a name, or on Apple
    /// an IPv4 literal: [`Endpoint::Resolved`]) and moves its peer to the address it stands
    /// for now: the network changed, and a name may resolve to another address there (or
    /// DNS64 to another prefix). Blocks for the lookups, holding no lock a packet takes
    /// meanwhile: call it where a resolver may take seconds. A host that does not resolve
    /// now leaves its peer where it was.
    pub fn refresh_endpoints(&self) {
        let hosts: Vec<_> = self
            .shared
            .hosts
            .lock()
            .iter()
            .map(|(key, host)| (*key, host.clone()))
            .collect();
        let mut moves = Vec::new();
        for (key, (host, port)) in hosts {
            match crate::sys::resolve::resolve(&host, port) {
                Ok(addr) => moves.push((Key(key), addr)),
                Err(e) => log::warn!(
                    "an endpoint's host does not resolve now ({e}): its peer keeps its address"
                ),
            }
        }
        // Those changed meanwhile through the UAPI are not moved back.
        moves.retain(|(key, _)| self.shared.hosts.lock().contains_key(&key.0));
        let moved = self.set_with(&SetRequest::move_endpoints(&moves), |_, _| Ok(()));
        match moved {
            Ok(changes) => {
                let n = changes.changed.iter().filter(|c| c.endpoint).count();
                if n > 0 {
                    log::info!("{n} endpoint(s) resolve to a new address: their peers moved");
                }
            }
            Err(e) => log::warn!("endpoints looked up again could not be applied: {e}"),
        }
    }

    /// As [`WireGuard::set`], with `socket` run once the request is known to apply and
    /// before anything changes (for [`WireGuard::set_on`]): its error changes nothing, and
    /// it must leave the socket as it was.
    fn set_with(
        &self,
        request: &SetRequest,
        socket: impl FnOnce(&Changes, &UapiState) -> Result<(), UapiError>,
    ) -> Result<Changes, UapiError> {
        let mut control = self.shared.control.lock();
        let mut next = control.clone();
        let changes = next.apply(request)?;
        if changes.private_key && next.private_key().is_none() {
            return Err(uapi::invalid(
                0,
                "private_key",
                "a running tunnel keeps its private key: it cannot be removed",
            ));
        }
        if changes.is_empty() {
            return Ok(changes);
        }
        socket(&changes, &next)?;
        self.shared.follow(&next, &changes);
        *control = next;
        drop(control);
        // A peer added or restarted may be due at once (a persistent keepalive), and held
        // packets dropped are counted by the next deadline: the engine asks again.
        if let Some(bell) = self.shared.bell.lock().as_ref() {
            bell.ring(self);
        }
        Ok(changes)
    }

    /// As [`WireGuard::set`], for the code that owns the tunnel's socket, `udp` (`None`: the
    /// tunnel has stopped and has none): a new listen port moves it
    /// ([`UdpDevice::rebind_to_port`]; a port of 0 is recorded as bound, as wireguard-go
    /// shows it), a new fwmark marks it ([`UdpDevice::set_fwmark`]; where the system has no
    /// socket mark it is kept and shown but marks nothing, as wireguard-go's off Linux). What
    /// `wg set`, `wg setconf` and WireGuardKit's `wgSetConfig` come through.
    ///
    /// # Errors
    /// As [`WireGuard::set`]; EADDRINUSE ([`uapi::ErrorCode::PortInUse`], wireguard-go's code)
    /// when the port cannot be had or the mark set, or there is no socket. A refused request
    /// changes nothing, the socket included.
    pub fn set_on(
        &self,
        request: &SetRequest,
        udp: Option<&UdpDevice>,
    ) -> Result<Changes, UapiError> {
        let mut bound = None;
        let changes = self.set_with(request, |changes, next| {
            if !changes.listen_port && !changes.fwmark {
                return Ok(());
            }
            let key = if changes.listen_port {
                "listen_port"
            } else {
                "fwmark"
            };
            let Some(udp) = udp else {
                return Err(UapiError::port_in_use(
                    key,
                    "the tunnel has stopped: it has no socket",
                ));
            };
            let refused =
                |key: &'static str, e: std::io::Error| UapiError::port_in_use(key, e.to_string());
            let mark_before = udp.fwmark();
            if changes.fwmark {
                match udp.set_fwmark(next.fwmark()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                        log::info!(
                            "fwmark {}: kept, but this system has no socket mark",
                            next.fwmark()
                        );
                    }
                    Err(e) => return Err(refused("fwmark", e)),
                }
            }
            if changes.listen_port {
                match udp.rebind_to_port(next.listen_port()) {
                    Ok(port) => bound = Some(port),
                    Err(e) => {
                        if changes.fwmark {
                            // As it was: nothing of a refused change stays.
                            let _ = udp.set_fwmark(mark_before);
                        }
                        return Err(refused("listen_port", e));
                    }
                }
            }
            Ok(())
        })?;
        if let Some(port) = bound {
            self.record_bound_port(port);
        }
        self.forget_hosts(&changes);
        Ok(changes)
    }

    /// The answer to a UAPI `get`: the configuration and each peer's figures, ending in
    /// `errno=0` and an empty line ([`uapi::format_get`]). It holds the private key: for the
    /// configuration socket's owner only.
    pub fn get(&self) -> String {
        let control = self.shared.control.lock();
        let figures: Vec<PeerFigures> = self
            .peers()
            .into_iter()
            .map(|p| {
                let mut f = PeerFigures::new(p.public_key);
                f.last_handshake = p.last_handshake;
                f.tx_bytes = p.tx_bytes;
                f.rx_bytes = p.rx_bytes;
                f.endpoint = p.endpoint;
                f
            })
            .collect();
        uapi::format_get(&control, &figures)
    }

    /// Stops peers that have an endpoint now, and peers given one later, from following
    /// their datagrams to a new address (roaming): wireguard-go's
    /// `DisableSomeRoamingForBrokenMobileSemantics`, for WireGuardKit. On iOS a handshake
    /// initiation can come from an address of the device that is not the current path's (a
    /// NAT64 or a cellular interface the system is leaving), and answering there breaks the
    /// tunnel. A peer with no endpoint yet still learns one from its first datagram.
    pub fn disable_roaming(&self) {
        let _control = self.shared.control.lock();
        self.shared.roaming_disabled.store(true, Ordering::Relaxed);
        let table = self.shared.table.load();
        for cell in table.peers.iter().flatten() {
            let mut peer = cell.peer.lock();
            peer.roams = peer.endpoint.is_none();
        }
    }

    /// Records the port the socket bound when the configuration asked for any (0), so that
    /// `get` shows it, as wireguard-go does.
    pub fn record_bound_port(&self, port: u16) {
        let mut control = self.shared.control.lock();
        if control.listen_port() == 0 {
            control.record_bound_port(port);
        }
    }
}

impl DuplexStage for WireGuard {
    fn process(
        &self,
        direction: Direction,
        packet: &mut PacketBuf,
        out: &mut Emitter<'_>,
    ) -> Action {
        self.shared.process(direction, packet, out)
    }

    fn on_deadline(&self, out: &mut Emitter<'_>) {
        self.shared.on_deadline(out);
    }

    fn next_deadline(&self) -> Option<std::time::Instant> {
        self.shared.next_deadline()
    }

    fn path_changed(&self, out: &mut Emitter<'_>) {
        self.shared.path_changed(out);
    }

    fn suspending(&self, out: &mut Emitter<'_>) {
        self.shared.suspending(out);
    }

    fn refresh_endpoints(&self) {
        self.refresh_endpoints();
    }

    fn round_trips(&self) -> Option<u64> {
        let table = self.shared.table.load();
        let anyone = table
            .peers
            .iter()
            .flatten()
            .any(|cell| cell.peer.lock().endpoint.is_some());
        anyone.then(|| self.shared.counters.round_trips())
    }

    fn socket_moved(&self, port: u16) {
        // The socket is there now, whatever port was asked for: `get` shows it.
        self.shared.control.lock().record_bound_port(port);
    }

    fn attach(&self, bell: DeadlineBell) {
        *self.shared.bell.lock() = Some(bell);
    }

    fn overhead(&self) -> usize {
        OVERHEAD
    }

    fn burst(&self) -> usize {
        QUEUE_DEPTH
    }

    fn state_bytes(&self) -> usize {
        self.shared.state_bytes
    }
}

impl Table {
    /// A table with this end's `private` key and no peers.
    fn empty(private: &Key) -> Table {
        let private = StaticSecret::from(*private.as_bytes());
        let public = PublicKey::from(&private);
        Table {
            peers: Vec::new(),
            by_key: HashMap::new(),
            allowed_ips: Arc::new(AllowedIps::default()),
            limiter: Arc::new(RateLimiter::new(&public, LIMITER_COUNT)),
            private,
            public,
        }
    }

    /// The live peer in `slot`.
    fn cell(&self, slot: usize) -> Option<&Arc<PeerCell>> {
        self.peers.get(slot).and_then(Option::as_ref)
    }

    /// A new peer for `slot`, with no session yet.
    fn new_peer(&self, config: &PeerConfig, slot: usize, now: Instant) -> Peer {
        let key = *config.public_key.as_bytes();
        let endpoint = config.endpoint.as_ref().and_then(Endpoint::addr);
        Peer {
            tunn: Tunn::new(
                self.private.clone(),
                PublicKey::from(key),
                config.preshared_key.as_ref().map(|k| *k.as_bytes()),
                // The stage sends the persistent keepalive itself (`tick`).
                None,
                slot as u32,
                Some(self.limiter.clone()),
            ),
            endpoint,
            timers: PeerTimers::new(now, config.persistent_keepalive),
            flush_due: None,
            queued: 0,
            recorded: None,
            gone: false,
            roams: true,
            counters: Arc::new(PeerCounters::new(config.public_key.clone(), endpoint)),
        }
    }
}

impl Shared {
    fn new(private: &Key, state_bytes: usize) -> Shared {
        Shared {
            table: ArcSwap::from_pointee(Table::empty(private)),
            deadlines: Mutex::new(Deadlines::new(0)),
            first_deadline: AtomicU64::new(u64::MAX),
            limiter_reset: Mutex::new(Instant::now()),
            held_by_gone: AtomicU64::new(0),
            anonymous_opens: AtomicU64::new(0),
            roaming_disabled: AtomicBool::new(false),
            control: Mutex::new(UapiState::new()),
            counters: Arc::new(WireGuardCounters::new()),
            state_bytes,
            bell: Mutex::new(None),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the live table what `config` describes, `changes` (from the table's last
    /// configuration to `config`) saying what to touch: peers that stay and did not change
    /// keep their cells, sessions and held packets included. Configuration calls take turns
    /// (the caller holds `control`).
    fn follow(&self, config: &UapiState, changes: &Changes) {
        let old = self.table.load_full();
        let mut next = Table {
            peers: old.peers.clone(),
            by_key: old.by_key.clone(),
            allowed_ips: old.allowed_ips.clone(),
            private: old.private.clone(),
            public: old.public,
            limiter: old.limiter.clone(),
        };
        if changes.private_key {
            if let Some(key) = config.private_key() {
                next.private = StaticSecret::from(*key.as_bytes());
                next.public = PublicKey::from(&next.private);
                // mac1 and cookies are made with this end's public key.
                next.limiter = Arc::new(RateLimiter::new(&next.public, LIMITER_COUNT));
            }
        }
        let mut held = 0;
        // A peer leaves: marked gone under its lock (a thread that reached it through the
        // old table then drops its packet), its held packets counted, its deadline cleared.
        let mut retire = |cell: &PeerCell, slot: usize| -> Arc<PeerCounters> {
            let mut peer = cell.peer.lock();
            peer.gone = true;
            held += peer.queued as u64;
            peer.queued = 0;
            self.record_deadline(slot, None);
            peer.counters.clone()
        };
        for key in &changes.removed {
            if let Some(slot) = next.by_key.remove(&key.0) {
                if let Some(cell) = next.peers[slot].take() {
                    retire(&cell, slot);
                }
            }
        }
        let now = Instant::now();
        let restarted = changes.changed.iter().filter(|c| c.restart_session);
        for key in changes.added.iter().chain(restarted.map(|c| &c.public_key)) {
            let Some(peer_config) = config.peer(key) else {
                continue;
            };
            let slot = match next.by_key.get(&key.0) {
                Some(&slot) => slot,
                None => {
                    let free = next.peers.iter().position(Option::is_none);
                    let slot = free.unwrap_or_else(|| {
                        next.peers.push(None);
                        next.peers.len() - 1
                    });
                    next.by_key.insert(key.0, slot);
                    slot
                }
            };
            let mut peer = next.new_peer(&peer_config, slot, now);
            peer.roams =
                !(self.roaming_disabled.load(Ordering::Relaxed) && peer.endpoint.is_some());
            if let Some(old) = next.peers[slot].take() {
                // A restarted peer keeps its counters and, when it has none configured, the
                // endpoint it roamed to.
                let endpoint = old.peer.lock().endpoint;
                peer.counters = retire(&old, slot);
                peer.endpoint = peer.endpoint.or(endpoint);
            }
            next.peers[slot] = Some(Arc::new(PeerCell {
                peer: Mutex::new(peer),
            }));
        }
        for change in &changes.changed {
            let (Some(cell), Some(peer_config)) = (
                next.by_key
                    .get(&change.public_key.0)
                    .and_then(|&s| next.cell(s)),
                config.peer(&change.public_key),
            ) else {
                continue;
            };
            let mut peer = cell.peer.lock();
            if change.persistent_keepalive && !change.restart_session {
                peer.timers
                    .set_persistent_keepalive(now, peer_config.persistent_keepalive);
            }
            if change.endpoint {
                // A peer without a configured endpoint keeps the one it roamed to.
                if let Some(addr) = peer_config.endpoint.as_ref().and_then(Endpoint::addr) {
                    peer.endpoint = Some(addr);
                    peer.roams = !self.roaming_disabled.load(Ordering::Relaxed);
                }
            }
            peer.counters.moved(peer.endpoint);
        }
        if changes.allowed_ips || !changes.added.is_empty() || !changes.removed.is_empty() {
            let mut table = AllowedIps::default();
            for peer in config.peers() {
                if let Some(&slot) = next.by_key.get(&peer.public_key.0) {
                    for net in peer.allowed_ips {
                        table.insert(net, slot);
                    }
                }
            }
            next.allowed_ips = Arc::new(table);
        }
        self.counters.set_peers(
            config
                .peers()
                .filter_map(|p| next.by_key.get(&p.public_key.0))
                .filter_map(|&slot| next.cell(slot))
                .map(|cell| cell.peer.lock().counters.clone())
                .collect(),
        );
        let fresh: Vec<usize> = changes
            .added
            .iter()
            .chain(changes.changed.iter().map(|c| &c.public_key))
            .filter_map(|key| next.by_key.get(&key.0).copied())
            .collect();
        let next = Arc::new(next);
        self.table.store(next.clone());
        // The new and changed peers' deadlines (a persistent keepalive due now, say).
        for slot in fresh {
            if let Some(cell) = next.cell(slot) {
                self.reindex(slot, &mut cell.peer.lock());
            }
        }
        self.held_by_gone.fetch_add(held, Ordering::Relaxed);
    }

    /// Records peer `slot`'s deadline in the shared order, if it moved.
    fn reindex(&self, slot: usize, peer: &mut Peer) {
        if peer.gone {
            return;
        }
        let at = peer.next_deadline();
        if at != peer.recorded {
            peer.recorded = at;
            self.record_deadline(slot, at);
        }
    }

    /// Puts `slot`'s deadline in the order, and the order's first where the engine reads it.
    fn record_deadline(&self, slot: usize, at: Option<Instant>) {
        let mut deadlines = self.deadlines.lock();
        deadlines.grow(slot + 1);
        deadlines.set(slot, at);
        let first = deadlines.first().map_or(u64::MAX, Instant::as_nanos);
        self.first_deadline.store(first, Ordering::Release);
    }

    /// The door every handshake message passes before any Diffie-Hellman: its mac1, then the
    /// device's rate limiter, which under load wants a mac2 made with a cookie for the
    /// sender's address and answers a message without one with that cookie. `None` lets the
    /// message on; otherwise what became of it (dropped, or a cookie reply in its place).
    fn screen(&self, table: &Table, packet: &mut PacketBuf, from: SocketAddr) -> Option<Action> {
        {
            let now = Instant::now();
            let mut reset = self.limiter_reset.lock();
            if now.saturating_duration_since(*reset) >= LIMITER_PERIOD {
                // The count starts again (boringtun checks the period once more on its clock).
                table.limiter.reset_count();
                *reset = now;
            }
        }
        let mut cookie = [0u8; COOKIE_REPLY_SIZE];
        let verdict = match table
            .limiter
            .verify_packet(Some(from.ip()), packet.data(), &mut cookie)
        {
            Ok(_) => return None,
            Err(TunnResult::WriteToNetwork(reply)) => Ok(reply.len()),
            Err(TunnResult::Err(e)) => Err(e),
            Err(_) => Err(WireGuardError::InvalidPacket),
        };
        Some(match verdict {
            Ok(len) => {
                self.counters.cookie_sent();
                match place(packet, &cookie[..len], Some(from)) {
                    Ok(()) => Action::Reply,
                    Err(()) => Action::Consume,
                }
            }
            Err(WireGuardError::InvalidMac) => {
                // Not made for this end's key: junk, or a peer that has another key for us.
                self.counters.dropped(DropReason::BadMac1);
                Action::Drop
            }
            Err(e) => {
                self.counters.dropped(reason_of(&e));
                Action::Drop
            }
        })
    }

    /// The slot of the peer an inbound datagram is for.
    fn peer_of(&self, table: &Table, datagram: &[u8]) -> Result<usize, DropReason> {
        let by_index = |receiver: u32| {
            let slot = (receiver >> 8) as usize;
            match table.cell(slot) {
                Some(_) => Ok(slot),
                None => Err(DropReason::NoSession),
            }
        };
        match Tunn::parse_incoming_packet(datagram) {
            Err(_) => Err(DropReason::Garbage),
            Ok(Packet::HandshakeInit(init)) => {
                if table.by_key.len() == 1 {
                    if let Some(&only) = table.by_key.values().next() {
                        return Ok(only);
                    }
                }
                // Which peer initiates is known only from its static key, encrypted in the
                // message: open that much of it (a Diffie-Hellman, once per handshake; its
                // mac1 and the rate limit were checked first, in `screen`).
                self.anonymous_opens.fetch_add(1, Ordering::Relaxed);
                let half = parse_handshake_anon(&table.private, &table.public, &init)
                    .map_err(|_| DropReason::AuthFailure)?;
                table
                    .by_key
                    .get(&half.peer_static_public)
                    .copied()
                    .ok_or(DropReason::AuthFailure)
            }
            Ok(Packet::HandshakeResponse(r)) => by_index(r.receiver_idx),
            Ok(Packet::PacketCookieReply(c)) => by_index(c.receiver_idx),
            Ok(Packet::PacketData(d)) => by_index(d.receiver_idx),
        }
    }

    fn process(
        &self,
        direction: Direction,
        packet: &mut PacketBuf,
        out: &mut Emitter<'_>,
    ) -> Action {
        self.settle_gone(out);
        let table = self.table.load();
        let found = match direction {
            Direction::Outbound => self.route_out(&table, packet),
            Direction::Inbound => self.route_in(&table, packet),
        };
        let (slot, cell) = match found {
            Ok(slot) => match table.cell(slot) {
                Some(cell) => (slot, cell),
                None => {
                    self.counters.dropped(DropReason::NoPeer);
                    return Action::Drop;
                }
            },
            Err(action) => return action,
        };
        let counters = &*self.counters;
        let done = self.with_peer(slot, cell, |peer, scratch, now| {
            if peer.timers.stale(now) {
                tick(peer, slot, scratch, now, counters, out);
            }
            match direction {
                Direction::Outbound => outbound(peer, slot, scratch, now, counters, packet, out),
                Direction::Inbound => inbound(peer, slot, scratch, now, counters, &table, packet),
            }
        });
        done.unwrap_or_else(|| {
            // Removed or restarted as this packet found it.
            counters.dropped(DropReason::NoPeer);
            Action::Drop
        })
    }

    /// Runs `work` on peer `slot` (`cell`) with its lock held, the clock read once the lock is
    /// held (so no event of the peer is stamped earlier than one stamped before), and this
    /// thread's scratch buffer; then records the peer's deadline. `None`: the peer is gone.
    fn with_peer<R>(
        &self,
        slot: usize,
        cell: &PeerCell,
        work: impl FnOnce(&mut Peer, &mut [u8], Instant) -> R,
    ) -> Option<R> {
        let mut peer = cell.peer.lock();
        if peer.gone {
            return None;
        }
        let now = Instant::now();
        let done = SCRATCH_BUF.with_borrow_mut(|scratch| work(&mut peer, scratch, now));
        self.reindex(slot, &mut peer);
        Some(done)
    }

    /// The slot of the peer an outbound packet goes to, by its destination; or the packet
    /// is dropped, with no peer for it.
    fn route_out(&self, table: &Table, packet: &PacketBuf) -> Result<usize, Action> {
        destination(packet.data())
            .and_then(|dst| table.allowed_ips.peer_for(dst))
            .ok_or_else(|| {
                self.counters.dropped(DropReason::NoPeer);
                Action::Drop
            })
    }

    /// The slot of the peer an inbound datagram comes from; or what became of it at the door
    /// (dropped, or a cookie reply in its place).
    fn route_in(&self, table: &Table, packet: &mut PacketBuf) -> Result<usize, Action> {
        let Some(from) = packet.endpoint() else {
            self.counters.dropped(DropReason::Garbage);
            return Err(Action::Drop);
        };
        let kind = packet.data().first().copied().unwrap_or(0);
        let handshake = kind == HANDSHAKE_INIT || kind == HANDSHAKE_RESPONSE;
        if handshake {
            if let Some(action) = self.screen(table, packet, from) {
                return Err(action);
            }
        }
        self.peer_of(table, packet.data()).map_err(|reason| {
            self.counters.dropped(reason);
            if handshake && reason == DropReason::AuthFailure {
                self.counters.handshake_failed();
            }
            Action::Drop
        })
    }

    fn on_deadline(&self, out: &mut Emitter<'_>) {
        self.settle_gone(out);
        let table = self.table.load();
        let due_at = Instant::now();
        // Running a peer's timers moves its deadline past `due_at` (or clears it), so each
        // due peer comes up once; the bound is only a guard.
        for _ in 0..table.peers.len() {
            let Some(slot) = self.deadlines.lock().first_due(due_at) else {
                break;
            };
            let Some(cell) = table.cell(slot) else {
                // Its peer left in a change after this table was loaded; the change cleared
                // its deadline, or the next table has a new peer there.
                break;
            };
            let ticked = self.with_peer(slot, cell, |peer, scratch, now| {
                tick(peer, slot, scratch, now, &self.counters, out);
            });
            if ticked.is_none() {
                break;
            }
        }
    }

    fn next_deadline(&self) -> Option<std::time::Instant> {
        if self.held_by_gone.load(Ordering::Relaxed) > 0 {
            // Due now: the timer counts them.
            return Some(std::time::Instant::now());
        }
        match self.first_deadline.load(Ordering::Acquire) {
            u64::MAX => None,
            ns => Some(Instant::from_nanos(ns).to_std()),
        }
    }

    /// Counts the packets that peers removed or restarted by a configuration change held:
    /// dropped, as no peer will send them.
    fn settle_gone(&self, out: &mut Emitter<'_>) {
        if self.held_by_gone.load(Ordering::Relaxed) == 0 {
            return;
        }
        let held = self.held_by_gone.swap(0, Ordering::Relaxed);
        if held > 0 {
            self.counters.dropped_many(DropReason::NoPeer, held);
            out.drop_held(Side::Outside, held);
        }
    }

    /// Runs `work` on every live peer in turn, each under its own lock, once the packets of
    /// peers gone are counted: for what the host asks of all peers at once.
    fn each_peer(
        &self,
        out: &mut Emitter<'_>,
        mut work: impl FnMut(&mut Peer, usize, &mut [u8], Instant, &mut Emitter<'_>),
    ) {
        self.settle_gone(out);
        let table = self.table.load();
        for (slot, cell) in table.peers.iter().enumerate() {
            if let Some(cell) = cell {
                self.with_peer(slot, cell, |peer, scratch, now| {
                    work(peer, slot, scratch, now, out)
                });
            }
        }
    }

    fn suspending(&self, out: &mut Emitter<'_>) {
        // The keepalive owed for data just received goes now: suspended, this end would send
        // it late, and a peer that hears nothing for 15 s after its data starts a handshake,
        // answered (a new session for nothing) when the engine resumes.
        self.each_peer(out, |peer, slot, scratch, now, out| {
            if !peer.timers.owes_keepalive() {
                return;
            }
            if let TunnResult::WriteToNetwork(message) = peer.tunn.encapsulate(&[], scratch) {
                send(peer, slot, message, Whose::Own, now, &self.counters, out);
            }
        });
    }

    fn path_changed(&self, out: &mut Emitter<'_>) {
        // Run every peer's timers first: a path change (a wake, a new network) is when
        // overdue ones matter most, and it brings `Tunn`'s clock up to date. Then start a
        // handshake with every peer from the new socket: it tells the peer where this end now
        // is, and its answer proves the new path (`round_trips`); the session in use carries
        // data meanwhile.
        self.each_peer(out, |peer, slot, scratch, now, out| {
            tick(peer, slot, scratch, now, &self.counters, out);
            if let TunnResult::WriteToNetwork(message) =
                peer.tunn.format_handshake_initiation(scratch, true)
            {
                send(peer, slot, message, Whose::Own, now, &self.counters, out);
            }
        });
    }
}

impl Peer {
    fn next_deadline(&self) -> Option<Instant> {
        match (self.flush_due, self.timers.next_deadline()) {
            (Some(flush), Some(timer)) => Some(flush.min(timer)),
            (flush, timer) => flush.or(timer),
        }
    }
}

/// Runs peer `slot`'s timers (`update_timers`) at `now`, unless they would start a handshake
/// not owed ([`PeerTimers::holds_timers`]); sends what they make, and the stage's own
/// keepalives (timers module docs); and flushes what a handshake left queued.
fn tick(
    peer: &mut Peer,
    slot: usize,
    scratch: &mut [u8],
    now: Instant,
    counters: &WireGuardCounters,
    out: &mut Emitter<'_>,
) {
    let awaiting = peer.timers.awaiting_response();
    let persistent_due = peer.timers.persistent_keepalive_due(now);
    let keepalive_owed = peer.timers.keepalive_owed(now);
    let held = peer.timers.holds_timers(now);
    let mut idle = held;
    if !held {
        peer.timers.last_tick = now;
        match peer.tunn.update_timers(scratch) {
            TunnResult::WriteToNetwork(message) => {
                if message.first() == Some(&HANDSHAKE_INIT) && awaiting {
                    // The last initiation got no answer in time: this is its retry.
                    counters.handshake_failed();
                }
                send(peer, slot, message, Whose::Own, now, counters, out);
            }
            TunnResult::Done => idle = true,
            TunnResult::Err(WireGuardError::ConnectionExpired) => {
                log::debug!(
                    "wireguard peer {}: no session (expired or given up)",
                    slot + 1
                );
                // `Tunn` gave up the handshake and threw away the packets that waited for it.
                dropped(peer, counters, DropReason::NoHandshake, peer.queued as u64);
                out.drop_held(Side::Outside, peer.queued as u64);
                peer.queued = 0;
            }
            _ => {}
        }
    }
    // The persistent keepalive goes out as boringtun's would: when the timers sent nothing
    // else and no handshake is under way; without a session, as a handshake. The one owed
    // for data received needs the session that data came on.
    let has_session = || peer.tunn.time_since_last_handshake().is_some();
    if idle && !awaiting && (persistent_due || keepalive_owed && has_session()) {
        if let TunnResult::WriteToNetwork(message) = peer.tunn.encapsulate(&[], scratch) {
            send(peer, slot, message, Whose::Own, now, counters, out);
        }
    }
    peer.timers.ticked(now, Instant::now());
    if peer.flush_due.is_some_and(|due| due <= now) {
        flush(peer, slot, scratch, now, counters, out);
    }
}

/// Seals an outbound packet for peer `p` (in `slot`), or holds it for a handshake.
fn outbound(
    p: &mut Peer,
    slot: usize,
    scratch: &mut [u8],
    now: Instant,
    counters: &WireGuardCounters,
    packet: &mut PacketBuf,
    out: &mut Emitter<'_>,
) -> Action {
    let Some(endpoint) = p.endpoint else {
        dropped(p, counters, DropReason::NoEndpoint, 1);
        return Action::Drop;
    };
    if p.flush_due.is_some() {
        // Packets a handshake held go first, through this same path: a flow keeps its
        // order.
        flush(p, slot, scratch, now, counters, out);
    }
    let inner = packet.len();
    // Without a session, `Tunn` queues the packet (or, when its queue is full, drops it).
    let queue_full = p.queued >= QUEUE_DEPTH;
    match p.tunn.encapsulate(packet.data(), scratch) {
        TunnResult::WriteToNetwork(message) => {
            let is_data = message.first() == Some(&DATA);
            note_sent(p, message, now, counters);
            if place(packet, message, Some(endpoint)).is_err() {
                dropped(p, counters, DropReason::Garbage, 1);
                return Action::Drop;
            }
            if is_data {
                debug_assert_eq!(packet.len(), inner + OVERHEAD);
                return Action::Forward;
            }
            if queue_full {
                // `Tunn` had no room to hold the packet, yet starts a handshake: the
                // initiation goes out on its own and the packet is dropped.
                send(p, slot, packet.data(), Whose::Own, now, counters, out);
                dropped(p, counters, DropReason::NoHandshake, 1);
                return Action::Drop;
            }
            // No session: the packet waits, and a handshake initiation goes out in its
            // buffer.
            p.queued += 1;
            Action::Replace
        }
        // Waits behind a handshake already under way (or, with the queue full, dropped).
        TunnResult::Done => {
            if queue_full {
                dropped(p, counters, DropReason::NoHandshake, 1);
                Action::Drop
            } else {
                p.queued += 1;
                Action::Hold
            }
        }
        TunnResult::Err(e) => {
            dropped(p, counters, reason_of(&e), 1);
            Action::Drop
        }
        _ => Action::Drop,
    }
}

/// Opens an inbound datagram from peer `p` (in `slot`): a packet to deliver, a handshake
/// message to answer, a keepalive, or a refusal.
fn inbound(
    p: &mut Peer,
    slot: usize,
    scratch: &mut [u8],
    now: Instant,
    counters: &WireGuardCounters,
    table: &Table,
    packet: &mut PacketBuf,
) -> Action {
    // `route_in` let through only a datagram with a sender.
    let Some(from) = packet.endpoint() else {
        dropped(p, counters, DropReason::Garbage, 1);
        return Action::Drop;
    };
    let kind = packet.data().first().copied().unwrap_or(0);
    let handshake = kind == HANDSHAKE_INIT || kind == HANDSHAKE_RESPONSE;
    let message_bytes = packet.len();
    let result = p.tunn.decapsulate(Some(from.ip()), packet.data(), scratch);
    let answered_with_cookie = matches!(&result,
        TunnResult::WriteToNetwork(reply) if reply.first() == Some(&COOKIE_REPLY));
    if !answered_with_cookie && !matches!(result, TunnResult::Err(_)) {
        // Authenticated: the peer's, as wireguard-go counts it.
        p.counters.received(message_bytes);
    }
    match result {
        TunnResult::WriteToNetwork(reply) => {
            if answered_with_cookie {
                // The load came between the door and here.
                counters.cookie_sent();
            } else {
                // An authenticated handshake message: a session now exists.
                roam(p, from);
                p.timers
                    .session_established(now, kind == HANDSHAKE_RESPONSE);
                counters.handshake_completed();
                p.counters.handshake_completed();
                if kind == HANDSHAKE_RESPONSE {
                    counters.initiation_answered();
                }
            }
            note_sent(p, reply, now, counters);
            if p.queued > 0 {
                // The packets `Tunn` held for the handshake go out with the next outbound
                // packet, ahead of it and through its path (so a flow keeps its order),
                // or from the timer if none comes soon.
                p.flush_due = Some(now + FLUSH_DELAY);
            }
            let placed = place(packet, reply, Some(from));
            match placed {
                Ok(()) => Action::Reply,
                Err(()) => Action::Consume,
            }
        }
        TunnResult::WriteToTunnelV4(inner, source) => {
            let sent_by_owner = table.allowed_ips.peer_for(IpAddr::V4(source)) == Some(slot);
            deliver(p, packet, inner, sent_by_owner, from, now, counters)
        }
        TunnResult::WriteToTunnelV6(inner, source) => {
            let sent_by_owner = table.allowed_ips.peer_for(IpAddr::V6(source)) == Some(slot);
            deliver(p, packet, inner, sent_by_owner, from, now, counters)
        }
        TunnResult::Done => {
            if kind == DATA {
                // A keepalive: authenticated, carrying nothing.
                roam(p, from);
                p.timers.received(now);
            }
            Action::Consume
        }
        TunnResult::Err(e) => {
            dropped(p, counters, reason_of(&e), 1);
            if handshake {
                counters.handshake_failed();
            }
            Action::Drop
        }
    }
}

/// The destination address of an IP packet.
fn destination(packet: &[u8]) -> Option<IpAddr> {
    match check_ip(packet).ok()? {
        IpVersion::V4 => Ipv4Packet::new_checked(packet)
            .ok()
            .map(|ip| IpAddr::from(ip.dst_addr())),
        IpVersion::V6 => Ipv6Packet::new_checked(packet)
            .ok()
            .map(|ip| IpAddr::from(ip.dst_addr())),
    }
}

/// Puts `bytes` in `packet`'s buffer as the whole packet, where the packet starts now.
fn place(packet: &mut PacketBuf, bytes: &[u8], endpoint: Option<SocketAddr>) -> Result<(), ()> {
    let start = packet.headroom();
    packet.fill(start, bytes).map_err(|_| ())?;
    packet.set_endpoint(endpoint);
    Ok(())
}

/// Delivers a decrypted packet inside, if its source is one the peer may use.
#[allow(clippy::too_many_arguments)]
fn deliver(
    p: &mut Peer,
    packet: &mut PacketBuf,
    inner: &[u8],
    sent_by_owner: bool,
    from: SocketAddr,
    now: Instant,
    counters: &WireGuardCounters,
) -> Action {
    // Authenticated by now: the datagram is the peer's, wherever it came from.
    roam(p, from);
    p.timers.data_received(now);
    // Cryptokey routing: the source's longest match in the whole table must be this peer.
    if !sent_by_owner {
        dropped(p, counters, DropReason::NotAllowed, 1);
        return Action::Drop;
    }
    counters.data_received(inner.len());
    match place(packet, inner, None) {
        Ok(()) => Action::Forward,
        Err(()) => {
            dropped(p, counters, DropReason::Garbage, 1);
            Action::Drop
        }
    }
}

/// The peer's endpoint follows its latest authenticated datagram (unless roaming is off for
/// it: [`WireGuard::disable_roaming`]).
fn roam(p: &mut Peer, from: SocketAddr) {
    if p.endpoint != Some(from) && p.roams {
        p.endpoint = Some(from);
        p.counters.moved(p.endpoint);
    }
}

/// Whose a message going to a peer is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Whose {
    /// The stage's own: a handshake message, a keepalive, a timer's.
    Own,
    /// A packet the stage held for a handshake, now sealed: it leaves the hold.
    Held,
}

/// Sends `message` to the peer, and notes it for the peer's timers at `now`.
fn send(
    p: &mut Peer,
    index: usize,
    message: &[u8],
    whose: Whose,
    now: Instant,
    counters: &WireGuardCounters,
    out: &mut Emitter<'_>,
) {
    let Some(endpoint) = p.endpoint else {
        log::debug!("wireguard peer {}: nowhere to send to yet", index + 1);
        dropped(p, counters, DropReason::NoEndpoint, 1);
        if whose == Whose::Held {
            out.drop_held(Side::Outside, 1);
        }
        return;
    };
    let fill = |buf: &mut PacketBuf| fill_message(buf, message, endpoint);
    let sent = match whose {
        Whose::Own => out.emit(Side::Outside, fill),
        Whose::Held => out.release(Side::Outside, fill),
    };
    if sent {
        note_sent(p, message, now, counters);
    }
}

/// Writes `message` for `endpoint` into an emitted buffer.
fn fill_message(buf: &mut PacketBuf, message: &[u8], endpoint: SocketAddr) -> bool {
    let area = buf.data_mut();
    if message.len() > area.len() {
        return false;
    }
    area[..message.len()].copy_from_slice(message);
    let _ = buf.truncate(message.len());
    buf.set_endpoint(Some(endpoint));
    true
}

/// Records what a message going to the peer means for its timers and counters.
fn note_sent(p: &mut Peer, message: &[u8], now: Instant, counters: &WireGuardCounters) {
    p.counters.sent(message.len());
    match message.first() {
        Some(&HANDSHAKE_INIT) => {
            // boringtun counts its retry from its own clock when it formatted the message,
            // which can be later than the packet's reading (a wait for the CPU between): a
            // retry counted from that reading could come before boringtun's is due, find it
            // not due, and be lost. A reading taken now is never earlier.
            p.timers.initiation_sent(Instant::now().max(now));
            counters.initiation_sent();
        }
        Some(&DATA) if message.len() > OVERHEAD => {
            p.timers.data_sent(now);
            counters.data_sent(message.len() - OVERHEAD);
        }
        _ => p.timers.sent(now),
    }
}

/// Sends the packets `Tunn` held for a handshake that has completed, as far as spare buffers
/// and ring room allow (the rest go out with the next outbound packet, or after
/// [`FLUSH_DELAY`]).
fn flush(
    p: &mut Peer,
    index: usize,
    scratch: &mut [u8],
    now: Instant,
    counters: &WireGuardCounters,
    out: &mut Emitter<'_>,
) {
    p.flush_due = None;
    while p.endpoint.is_some() {
        if out.spare(Side::Outside) == 0 {
            p.flush_due = Some(now + FLUSH_DELAY);
            return;
        }
        match p.tunn.decapsulate(None, &[], scratch) {
            TunnResult::WriteToNetwork(message) => {
                if message.first() == Some(&DATA) && message.len() > OVERHEAD && p.queued > 0 {
                    // A packet the stage held (an empty one would be a keepalive of its own).
                    p.queued -= 1;
                    send(p, index, message, Whose::Held, now, counters, out);
                } else {
                    send(p, index, message, Whose::Own, now, counters, out);
                }
            }
            // The queue is empty (or, without a session, `Tunn` keeps it for the next one).
            _ => {
                p.queued = 0;
                return;
            }
        }
    }
}

/// Counts `count` packets to or from peer `p` dropped for `reason`, for the tunnel and the
/// peer.
fn dropped(p: &Peer, counters: &WireGuardCounters, reason: DropReason, count: u64) {
    counters.dropped_many(reason, count);
    p.counters.dropped(reason, count);
}

/// Why `Tunn` refused a message.
fn reason_of(error: &WireGuardError) -> DropReason {
    match error {
        WireGuardError::InvalidMac
        | WireGuardError::InvalidAeadTag
        | WireGuardError::WrongKey
        | WireGuardError::InvalidTai64nTimestamp
        | WireGuardError::UnderLoad => DropReason::AuthFailure,
        WireGuardError::DuplicateCounter
        | WireGuardError::InvalidCounter
        | WireGuardError::WrongTai64nTimestamp => DropReason::Replay,
        WireGuardError::NoCurrentSession
        | WireGuardError::WrongIndex
        | WireGuardError::ConnectionExpired => DropReason::NoSession,
        _ => DropReason::Garbage,
    }
}

impl std::fmt::Debug for WireGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireGuard")
            .field("peers", &self.peers().len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    /// A stage, a place for what it emits, and a clock that stands still (so the rate
    /// limiter's count never starts again during a test).
    struct Rig {
        stage: Shared,
        spare: Vec<PacketBuf>,
        emitted: Vec<PacketBuf>,
        tally: crate::stage::EmitTally,
        now: Instant,
    }

    /// Where the first peer of [`Rig::two_peers`] is, and where a flood comes from.
    const PEER_A: ([u8; 4], u16) = ([192, 0, 2, 1], 51820);
    const ATTACKER: ([u8; 4], u16) = ([198, 51, 100, 7], 40000);

    impl Rig {
        /// A stage with one peer.
        fn new() -> Rig {
            let text = format!(
                "[Interface]\nPrivateKey = {}\n[Peer]\nPublicKey = {}\n\
                 Endpoint = 192.0.2.1:51820\nAllowedIPs = 10.0.0.0/8, fd00::/8\n",
                Key::generate().to_base64(),
                Key::generate().public_key().to_base64()
            );
            Rig::with(&text)
        }

        /// A stage with private key `own` and two peers, `a` (at [`PEER_A`]) and `b`.
        fn two_peers(own: &Key, a: &Key, b: &Key) -> Rig {
            let text = format!(
                "[Interface]\nPrivateKey = {}\n\
                 [Peer]\nPublicKey = {}\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 10.1.0.0/16\n\
                 [Peer]\nPublicKey = {}\nEndpoint = 192.0.2.2:51820\nAllowedIPs = 10.2.0.0/16\n",
                own.to_base64(),
                a.public_key().to_base64(),
                b.public_key().to_base64()
            );
            Rig::with(&text)
        }

        fn with(text: &str) -> Rig {
            let wg = WireGuard::new(&WgConfig::parse(text).unwrap()).unwrap();
            let stage = Arc::into_inner(wg.shared).expect("the only handle");
            Rig {
                stage,
                spare: (0..8).map(|_| PacketBuf::new(64, 2048, 64)).collect(),
                emitted: Vec::with_capacity(8),
                tally: Default::default(),
                now: Instant::now(),
            }
        }

        /// Hands the stage a datagram from `from`: what it did, and the bytes it left in the
        /// buffer (its reply, for `Action::Reply`).
        fn receive(&mut self, bytes: &[u8], from: ([u8; 4], u16)) -> (Action, Vec<u8>) {
            let mut packet = PacketBuf::new(64, 2048, 64);
            packet.fill(64, bytes).unwrap();
            packet.set_endpoint(Some(from.into()));
            let action =
                self.with_emitter(|stage, out| stage.process(Direction::Inbound, &mut packet, out));
            (action, packet.data().to_vec())
        }

        /// Runs `work` on the stage with an emitter over the rig's spare buffers.
        fn with_emitter<R>(&mut self, work: impl FnOnce(&Shared, &mut Emitter<'_>) -> R) -> R {
            let mut out = Emitter {
                spare: &mut self.spare,
                emitted: &mut self.emitted,
                now: std::cell::Cell::new(Some(self.now)),
                headroom: 64,
                capacity: 2048,
                room: [8, 8],
                tally: &mut self.tally,
            };
            work(&self.stage, &mut out)
        }

        fn process(
            &mut self,
            direction: Direction,
            bytes: &[u8],
            from: Option<SocketAddr>,
        ) -> Action {
            let mut packet = PacketBuf::new(64, 2048, 64);
            packet.fill(64, bytes).unwrap();
            packet.set_endpoint(from);
            self.with_emitter(|stage, out| stage.process(direction, &mut packet, out))
        }

        fn drops(&self) -> u64 {
            self.stage.counters.snapshot().dropped()
        }
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_are_dropped_and_counted(
            kind in 0u8..6,
            rest in proptest::collection::vec(any::<u8>(), 0..300),
            from_port in any::<u16>(),
        ) {
            // Each message type at its own length, and every other length, with a valid type
            // byte (or none): what reaches the listen port from anyone.
            let mut datagram = vec![kind, 0, 0, 0];
            datagram.extend_from_slice(&rest);
            let mut rig = Rig::new();
            let before = rig.drops();
            let action = rig.process(Direction::Inbound, &datagram, Some(([198, 51, 100, 7], from_port).into()));
            // Nothing unauthenticated gets through or gets an answer, and every refusal is
            // counted with its reason.
            prop_assert_eq!(action, Action::Drop);
            prop_assert_eq!(rig.drops(), before + 1);
            prop_assert!(rig.emitted.is_empty());
            prop_assert_eq!(rig.stage.counters.snapshot().endpoints[0], Some(([192, 0, 2, 1], 51820).into()));
        }

        #[test]
        fn arbitrary_outbound_packets_are_sealed_held_or_dropped(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut rig = Rig::new();
            let action = rig.process(Direction::Outbound, &bytes, None);
            // A packet for the peer (by its destination) starts a handshake in its place;
            // anything else is dropped as having no peer.
            prop_assert!(matches!(action, Action::Replace | Action::Drop), "{action:?}");
        }
    }

    #[test]
    fn a_retry_is_counted_from_after_boringtun_stamped_its_initiation() {
        // The packet's clock reading is 3 ms older than the moment boringtun formats the
        // initiation (as when the thread waited for the CPU in between).
        let mut rig = Rig::new();
        let before = clock::Instant::now();
        let stale = before.earlier(Duration::from_millis(3));
        let ipv4_udp = [
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0, 8,
            0, 0,
        ];
        let mut packet = PacketBuf::new(64, 2048, 64);
        packet.fill(64, &ipv4_udp).unwrap();
        let action = rig.with_emitter(|stage, out| {
            let table = stage.table.load();
            let mut peer = table.cell(0).unwrap().peer.lock();
            let mut scratch = vec![0; SCRATCH];
            outbound(
                &mut peer,
                0,
                &mut scratch,
                stale,
                &stage.counters,
                &mut packet,
                out,
            )
        });
        assert_eq!(action, Action::Replace);
        assert_eq!(packet.data()[0], HANDSHAKE_INIT);
        let table = rig.stage.table.load();
        let retry = table
            .cell(0)
            .unwrap()
            .peer
            .lock()
            .timers
            .next_deadline()
            .unwrap();
        assert!(
            retry >= before + timers::REKEY_TIMEOUT,
            "{retry:?} {before:?}"
        );
    }

    #[test]
    fn a_datagram_without_a_sender_is_dropped() {
        let mut rig = Rig::new();
        assert_eq!(
            rig.process(Direction::Inbound, &[4, 0, 0, 0], None),
            Action::Drop
        );
        assert_eq!(rig.stage.counters.snapshot().drop_garbage, 1);
    }

    /// A peer's side of a handshake: boringtun's `Tunn` with private key `key`, for the stage
    /// whose private key is `stage`.
    fn peer_tunn(key: &Key, stage: &Key, index: u32) -> Tunn {
        Tunn::new(
            StaticSecret::from(*key.as_bytes()),
            PublicKey::from(*stage.public_key().as_bytes()),
            None,
            None,
            index,
            None,
        )
    }

    /// A handshake initiation from `tunn` (a new one, even if one is under way).
    fn initiation(tunn: &mut Tunn) -> Vec<u8> {
        let mut buf = [0u8; 256];
        match tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(message) => message.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    #[test]
    fn the_keepalive_owed_for_data_goes_out_when_boringtuns_timers_see_none() {
        // A peer completes a handshake and sends data. No tick of `Tunn`'s came between (its
        // stamps are all one), so its own timers never find the keepalive owed; the stage's,
        // 11 s later, send it, once.
        let (own, a, b) = (Key::generate(), Key::generate(), Key::generate());
        let mut rig = Rig::two_peers(&own, &a, &b);
        let mut tunn_a = peer_tunn(&a, &own, 1);
        let (_, response) = rig.receive(&initiation(&mut tunn_a), PEER_A);
        let mut buf = [0u8; 2048];
        let stage_ip = Some(IpAddr::from([192, 0, 2, 100]));
        let TunnResult::WriteToNetwork(keepalive) =
            tunn_a.decapsulate(stage_ip, &response, &mut buf)
        else {
            panic!("the handshake did not complete");
        };
        let keepalive = keepalive.to_vec();
        assert_eq!(rig.receive(&keepalive, PEER_A).0, Action::Consume);
        let ipv4_udp = [
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0, 8,
            0, 0,
        ];
        let TunnResult::WriteToNetwork(data) = tunn_a.encapsulate(&ipv4_udp, &mut buf) else {
            panic!("no data message");
        };
        let data = data.to_vec();
        rig.receive(&data, PEER_A);
        assert_eq!(rig.stage.counters.snapshot().rx_packets, 1);

        let tick_at = |rig: &mut Rig, at: clock::Instant| {
            rig.emitted.clear();
            rig.with_emitter(|stage, out| {
                let table = stage.table.load();
                let mut peer = table.cell(0).unwrap().peer.lock();
                let mut scratch = vec![0; SCRATCH];
                tick(&mut peer, 0, &mut scratch, at, &stage.counters, out);
            });
            rig.emitted
                .iter()
                .map(|p| p.data().to_vec())
                .collect::<Vec<_>>()
        };
        let later = clock::Instant::now() + Duration::from_secs(11);
        let sent = tick_at(&mut rig, later);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!((sent[0][0], sent[0].len()), (DATA, OVERHEAD));
        assert!(matches!(
            tunn_a.decapsulate(stage_ip, &sent[0], &mut buf),
            TunnResult::Done
        ));
        assert!(tick_at(&mut rig, later + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn handshake_messages_with_a_bad_mac1_are_dropped_before_any_diffie_hellman() {
        let (own, a, b) = (Key::generate(), Key::generate(), Key::generate());
        let mut rig = Rig::two_peers(&own, &a, &b);
        let mut tunn_a = peer_tunn(&a, &own, 1);
        // An initiation and a response shape followed by zeros, and a real initiation from
        // a known peer with one bit of its mac1 (the 16 bytes before the last 16) flipped.
        let mut junk_init = vec![0u8; 148];
        junk_init[0] = HANDSHAKE_INIT;
        let mut junk_response = vec![0u8; 92];
        junk_response[0] = HANDSHAKE_RESPONSE;
        let real = initiation(&mut tunn_a);
        let mut flipped = real.clone();
        flipped[real.len() - 32] ^= 1;
        for datagram in [&junk_init, &junk_response, &flipped] {
            for _ in 0..50 {
                let (action, _) = rig.receive(datagram, PEER_A);
                assert_eq!(action, Action::Drop);
            }
        }
        let s = rig.stage.counters.snapshot();
        assert_eq!(s.drop_bad_mac1, 150, "{s:?}");
        assert_eq!(
            rig.stage.anonymous_opens.load(Ordering::Relaxed),
            0,
            "a Diffie-Hellman for junk"
        );
        assert_eq!(s.drop_auth_failure, 0, "{s:?}");
        assert_eq!(s.handshake_failures, 0, "{s:?}");
        assert_eq!(s.cookie_replies, 0, "{s:?}");
        assert!(rig.emitted.is_empty());
        // The same initiation unflipped is opened (once) and answered.
        let (action, reply) = rig.receive(&real, PEER_A);
        assert_eq!(action, Action::Reply);
        assert_eq!(reply[0], HANDSHAKE_RESPONSE);
        assert_eq!(rig.stage.anonymous_opens.load(Ordering::Relaxed), 1);
        assert_eq!(rig.stage.counters.snapshot().handshakes_completed, 1);
    }

    #[test]
    fn with_one_peer_too_a_bad_mac1_is_dropped_as_such() {
        let mut rig = Rig::new();
        let mut junk = vec![0u8; 148];
        junk[0] = HANDSHAKE_INIT;
        assert_eq!(rig.receive(&junk, PEER_A).0, Action::Drop);
        let s = rig.stage.counters.snapshot();
        assert_eq!((s.drop_bad_mac1, s.drop_auth_failure), (1, 0), "{s:?}");
    }

    #[test]
    fn past_the_rate_limit_initiations_get_cookies_and_a_peer_completes_through_one() {
        let (own, a, b) = (Key::generate(), Key::generate(), Key::generate());
        let mut rig = Rig::two_peers(&own, &a, &b);
        // A flood of initiations made for this end's key (a valid mac1) by a stranger: the
        // same datagram again and again. Each counts once against the device's limit (it
        // reaches no peer's `Tunn`); the clock stands still, so the count never starts again.
        let stranger = Key::generate();
        let flood = initiation(&mut peer_tunn(&stranger, &own, 9));
        for _ in 0..LIMITER_COUNT {
            let (action, _) = rig.receive(&flood, ATTACKER);
            assert_eq!(action, Action::Drop);
        }
        assert_eq!(rig.stage.counters.snapshot().cookie_replies, 0);
        let opened = rig.stage.anonymous_opens.load(Ordering::Relaxed);
        assert_eq!(opened, LIMITER_COUNT);
        // Under load now: each gets a cookie reply instead, with no Diffie-Hellman.
        for _ in 0..100 {
            let (action, reply) = rig.receive(&flood, ATTACKER);
            assert_eq!(action, Action::Reply);
            assert_eq!((reply[0], reply.len()), (COOKIE_REPLY, COOKIE_REPLY_SIZE));
        }
        assert_eq!(rig.stage.anonymous_opens.load(Ordering::Relaxed), opened);
        assert_eq!(rig.stage.counters.snapshot().cookie_replies, 100);
        // A known peer's initiation gets a cookie too; its next one carries a mac2 made with
        // that cookie, and the handshake completes while the flood's load lasts.
        let mut tunn_a = peer_tunn(&a, &own, 1);
        let (action, cookie) = rig.receive(&initiation(&mut tunn_a), PEER_A);
        assert_eq!(action, Action::Reply);
        assert_eq!(cookie[0], COOKIE_REPLY);
        let mut buf = [0u8; 256];
        let stage_ip = Some(IpAddr::from([192, 0, 2, 100]));
        assert!(matches!(
            tunn_a.decapsulate(stage_ip, &cookie, &mut buf),
            TunnResult::Done
        ));
        let (action, response) = rig.receive(&initiation(&mut tunn_a), PEER_A);
        assert_eq!(action, Action::Reply);
        assert_eq!(response[0], HANDSHAKE_RESPONSE);
        // The peer takes the response: its session is up (it answers with a keepalive).
        match tunn_a.decapsulate(stage_ip, &response, &mut buf) {
            TunnResult::WriteToNetwork(keepalive) => assert_eq!(keepalive[0], DATA),
            other => panic!("{other:?}"),
        }
        let s = rig.stage.counters.snapshot();
        assert_eq!(s.handshakes_completed, 1, "{s:?}");
        assert_eq!(s.cookie_replies, 101, "{s:?}");
        assert_eq!(s.drop_bad_mac1, 0, "{s:?}");
    }

    #[test]
    fn the_limit_starts_again_when_a_handshake_message_comes_a_second_later_without_a_timer() {
        let own = Key::generate();
        let mut rig = Rig::two_peers(&own, &Key::generate(), &Key::generate());
        let flood = initiation(&mut peer_tunn(&Key::generate(), &own, 9));
        for _ in 0..=LIMITER_COUNT {
            rig.receive(&flood, ATTACKER);
        }
        assert_eq!(rig.stage.counters.snapshot().cookie_replies, 1);
        // The limiter asks for no wake-up: an idle stage has no deadline.
        assert_eq!(rig.stage.next_deadline(), None);
        // A second later (on boringtun's clock too: it checks the period again on its own),
        // the next handshake message starts the count again and is answered, not cookied.
        std::thread::sleep(LIMITER_PERIOD + Duration::from_millis(100));
        rig.now = Instant::now();
        let (action, _) = rig.receive(&flood, ATTACKER);
        assert_eq!(action, Action::Drop, "an unknown key: opened and refused");
        assert_eq!(rig.stage.counters.snapshot().cookie_replies, 1);
        assert_eq!(
            rig.stage.anonymous_opens.load(Ordering::Relaxed),
            LIMITER_COUNT + 1
        );
    }
}
