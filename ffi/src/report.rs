//! The C views of [`Stats`], a tunnel's figures and latency, and how they are written into a
//! caller's struct.

use super::error::{FfiError, FfiResult, TUNPIPE_ERR_INVALID_ARGUMENT};
use super::util::Sized32;
use std::ffi::c_char;
use std::net::SocketAddr;
use std::time::UNIX_EPOCH;
use tunpipe::stage::Direction;
use tunpipe::wireguard::{DropReason, PeerStats, WireGuardStats};
use tunpipe::{Engine, LatencySnapshot, Percentiles, Stats};

/// Which latency histogram: time in the engine (read to write).
pub const TUNPIPE_LATENCY_ENGINE: u32 = 0;
/// Which latency histogram: time in the stage.
pub const TUNPIPE_LATENCY_STAGE: u32 = 1;

/// The engine's counters. Set `size = sizeof(TunpipeStats)` before the call; tunpipe writes
/// at most that many bytes and sets `size` to the bytes it wrote.
///
/// `rx_packets + originated == tx_packets + dropped + consumed + held` once nothing is in
/// flight, and always after stop, when `held` is 0 (conservation; `originated`, `consumed`
/// and `held` are 0 but in a tunnel). `dropped` is the sum of the `drop_*` fields.
///
/// For a WireGuard tunnel these are both directions together: `rx_packets` counts packets
/// read from the TUN and datagrams read from the UDP socket, `tx_packets` packets written to
/// either. `originated` counts the tunnel's own packets (handshake messages, keepalives),
/// `consumed` what its protocol used itself (handshake messages, keepalives), `held` the
/// packets waiting for a handshake now (later written or dropped like any other). Per
/// direction, with WireGuard's own reasons for its drops: `TunpipeTunnelStats`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TunpipeStats {
    /// In: the caller's `sizeof(TunpipeStats)`. Out: the bytes written.
    pub size: u32,
    /// Zero.
    pub reserved0: u32,
    /// Packets read from the device.
    pub rx_packets: u64,
    /// Bytes read.
    pub rx_bytes: u64,
    /// Packets written to the device.
    pub tx_packets: u64,
    /// Bytes written.
    pub tx_bytes: u64,
    /// Dropped: the worker's ring was full (back-pressure).
    pub drop_ring_full: u64,
    /// Dropped: empty, or not IPv4/IPv6.
    pub drop_malformed: u64,
    /// Dropped: longer than the MTU.
    pub drop_oversize: u64,
    /// Dropped by the stage (including C stage results that could not be applied).
    pub drop_stage: u64,
    /// Dropped because a Rust stage panicked on them.
    pub drop_stage_panic: u64,
    /// Dropped: the device refused the write.
    pub drop_write_error: u64,
    /// Still in flight when the engine stopped.
    pub drop_stopped: u64,
    /// Times the reader waited for buffers (not drops).
    pub pool_stalls: u64,
    /// Non-fatal receive errors.
    pub read_errors: u64,
    /// Times an actor parked and was woken.
    pub wakeups: u64,
    /// C stage results that could not be applied (a window outside the buffer, or an
    /// unknown verdict). Each is also in `drop_stage`.
    pub callback_errors: u64,
    /// Bytes the engine reserved at start (pool, rings, histograms).
    pub reserved_bytes: u64,
    /// Every packet dropped, whatever the reason: the sum of the eight `drop_*` fields.
    pub dropped: u64,
    /// A tunnel's own packets: handshake messages, keepalives (0 for one-way engines).
    pub originated: u64,
    /// Packets the tunnel's protocol used itself and did not pass on: handshake messages,
    /// keepalives, cookies (0 for one-way engines).
    pub consumed: u64,
    /// Dropped: a tunnel's own packet found no spare buffer.
    pub drop_no_buffer: u64,
    /// Times a reader found its rings too full for a batch and waited for room
    /// (back-pressure, not drops: the kernel's queue takes the pressure).
    pub ring_stalls: u64,
    /// Packets the tunnel holds now, waiting for a handshake (0 after stop: what it still
    /// held then counts in `drop_stopped`).
    pub held: u64,
    /// Of `tx_packets`, those the thread that read (or made) them wrote itself because the
    /// writer thread slept: one thread wake-up per such packet instead of two.
    pub tx_direct: u64,
    /// Packets in the engine when it was suspended (`tunpipe_suspend`), or sent toward a
    /// device while it was, and so dropped. (In the place of the one reserved word before.)
    pub drop_suspended: u64,
}

/// One direction of a tunnel: outbound is TUN → UDP (sealed toward the peers), inbound is
/// UDP → TUN (opened). After stop, `packets_in + originated == packets_out + dropped +
/// consumed`; while running, add the direction's held packets (`TunpipeTunnelStats`'s
/// `outbound_held`, `inbound_held`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TunpipeDirectionStats {
    /// Packets read (outbound: from the TUN; inbound: datagrams from the UDP socket).
    pub packets_in: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Packets written (outbound: datagrams to the peers; inbound: packets into the TUN).
    pub packets_out: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// The tunnel's own packets sent this way.
    pub originated: u64,
    /// Packets the tunnel's protocol used itself (handshake messages, keepalives).
    pub consumed: u64,
    /// Every packet dropped this way, whatever the reason (the engine's reasons; the
    /// tunnel's own are in `TunpipeTunnelStats`'s `drop_*` fields, counted here as stage
    /// drops).
    pub dropped: u64,
    /// Times this direction's reader waited for room in its rings.
    pub ring_stalls: u64,
}

/// A WireGuard tunnel's figures (`tunpipe_tunnel_stats`, `tunpipe_engine_tunnel_stats`). Set
/// `size = sizeof(TunpipeTunnelStats)` before the call; the struct grows by turning
/// `reserved` into fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TunpipeTunnelStats {
    /// In: the caller's `sizeof(TunpipeTunnelStats)`. Out: the bytes written.
    pub size: u32,
    /// The number of peers.
    pub peers: u32,
    /// Handshakes completed, as initiator or responder.
    pub handshakes_completed: u64,
    /// Received handshake messages that did not authenticate, and initiations of ours that
    /// got no answer in time (each retry counts).
    pub handshake_failures: u64,
    /// Handshake initiations sent.
    pub handshake_initiations: u64,
    /// Seconds since the last completed handshake; -1 if none has.
    pub seconds_since_handshake: i64,
    /// The first peer's endpoint as it now stands (it follows the peer's authenticated
    /// datagrams): `203.0.113.1:51820` or `[2001:db8::1]:51820`, NUL-terminated; empty if
    /// none is known yet.
    pub endpoint: [c_char; 64],
    /// TUN → UDP.
    pub outbound: TunpipeDirectionStats,
    /// UDP → TUN.
    pub inbound: TunpipeDirectionStats,
    /// Data packets sent to the peers (keepalives not counted), and their inner bytes.
    pub data_tx_packets: u64,
    /// Inner bytes of the data packets sent.
    pub data_tx_bytes: u64,
    /// Data packets received from the peers and delivered to the TUN.
    pub data_rx_packets: u64,
    /// Inner bytes of the data packets received.
    pub data_rx_bytes: u64,
    /// Dropped: a datagram failed authentication (a bad MAC or tag, a wrong key).
    pub drop_auth_failure: u64,
    /// Dropped: a replayed counter or handshake timestamp.
    pub drop_replay: u64,
    /// Dropped: a decrypted packet's source is outside the peer's AllowedIPs.
    pub drop_not_allowed: u64,
    /// Dropped: a datagram for a session that does not exist.
    pub drop_no_session: u64,
    /// Dropped: a packet to a destination outside every peer's AllowedIPs.
    pub drop_no_peer: u64,
    /// Dropped: a packet for a peer whose endpoint is not known yet.
    pub drop_no_endpoint: u64,
    /// Dropped: a packet waited for a handshake that never completed, or found the queue
    /// of waiting packets full (256).
    pub drop_no_handshake: u64,
    /// Dropped: a datagram that is no WireGuard message.
    pub drop_garbage: u64,
    /// Outbound packets held now for a handshake (`outbound.held`, which the direction
    /// struct has no room for): `packets_in + originated == packets_out + dropped + consumed
    /// + outbound_held`.
    pub outbound_held: u64,
    /// Inbound packets held now (0 for WireGuard, which holds only outbound packets).
    pub inbound_held: u64,
    /// Dropped: a handshake message with a bad mac1 (not made with this end's public key),
    /// before any Diffie-Hellman: junk, or a peer holding another key for this end.
    pub drop_bad_mac1: u64,
    /// Cookie replies sent: handshake messages that came while the device was past its rate
    /// limit without a valid mac2, and got a cookie instead of an answer.
    pub cookie_replies: u64,
    /// Handshake responses to this end's initiations: each proves that the path to the peer
    /// works both ways (a rebind's fresh port answered, for one).
    pub initiations_answered: u64,
    /// Zero; room for counters added later.
    pub reserved: [u64; 11],
}

impl Default for TunpipeTunnelStats {
    fn default() -> Self {
        TunpipeTunnelStats {
            size: std::mem::size_of::<Self>() as u32,
            peers: 0,
            handshakes_completed: 0,
            handshake_failures: 0,
            handshake_initiations: 0,
            seconds_since_handshake: -1,
            endpoint: [0; 64],
            outbound: TunpipeDirectionStats::default(),
            inbound: TunpipeDirectionStats::default(),
            data_tx_packets: 0,
            data_tx_bytes: 0,
            data_rx_packets: 0,
            data_rx_bytes: 0,
            drop_auth_failure: 0,
            drop_replay: 0,
            drop_not_allowed: 0,
            drop_no_session: 0,
            drop_no_peer: 0,
            drop_no_endpoint: 0,
            drop_no_handshake: 0,
            drop_garbage: 0,
            outbound_held: 0,
            inbound_held: 0,
            drop_bad_mac1: 0,
            cookie_replies: 0,
            initiations_answered: 0,
            reserved: [0; 11],
        }
    }
}

/// One peer's figures (`tunpipe_peer_stats`, `tunpipe_engine_peer_stats`). Set
/// `size = sizeof(TunpipePeerStats)` before the call; the struct grows by turning `reserved`
/// into fields.
///
/// Packets and bytes are WireGuard messages as they cross the UDP socket (the UDP payload of
/// every handshake message, cookie reply, keepalive and data message), as wireguard-go and
/// `wg show` count them; `TunpipeTunnelStats`'s `data_*` fields count the packets inside. A
/// received message counts once it is authenticated. The counts start when the peer is
/// added (a peer removed and added again starts from 0).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TunpipePeerStats {
    /// In: the caller's `sizeof(TunpipePeerStats)`. Out: the bytes written.
    pub size: u32,
    // Beside `size` rather than beside `last_handshake_sec`: a u32 there would need 4 bytes
    // of padding, and a prefix copy (`write_sized`) must never expose padding.
    /// The fraction of a second of the last handshake's time, in nanoseconds (0 to
    /// 999999999; with `last_handshake_sec`, the UAPI's `last_handshake_time_nsec`); 0 if
    /// none has completed.
    pub last_handshake_nsec: u32,
    /// The peer's public key: its 32 raw bytes (their base64 is the `PublicKey` of the
    /// wg-quick text). Only the public key: no private or preshared key is ever copied out.
    pub public_key: [u8; 32],
    /// Where the peer is now (configured, or where its authenticated datagrams come from):
    /// `203.0.113.1:51820` or `[2001:db8::1]:51820`, NUL-terminated; empty if none is known
    /// yet.
    pub endpoint: [c_char; 64],
    /// When the last handshake with the peer completed, in seconds since the Unix epoch (the
    /// wall clock, as the UAPI's `last_handshake_time_sec`); 0 if none has since the peer was
    /// added.
    pub last_handshake_sec: i64,
    /// Handshakes completed with the peer, as initiator or responder.
    pub handshakes: u64,
    /// WireGuard messages sent to the peer: data, keepalives, handshake messages, cookie
    /// replies.
    pub tx_packets: u64,
    /// Their bytes (UDP payload): what `wg show` calls "sent".
    pub tx_bytes: u64,
    /// Authenticated WireGuard messages received from the peer.
    pub rx_packets: u64,
    /// Their bytes (UDP payload): `wg show`'s "received".
    pub rx_bytes: u64,
    /// Dropped: a datagram for this peer failed authentication (a bad MAC or tag).
    pub drop_auth_failure: u64,
    /// Dropped: a replayed counter or handshake timestamp from the peer.
    pub drop_replay: u64,
    /// Dropped: a packet from the peer whose source is outside its AllowedIPs.
    pub drop_not_allowed: u64,
    /// Dropped: a datagram for a session with the peer that does not exist (expired).
    pub drop_no_session: u64,
    /// Dropped: a packet for the peer while its endpoint was not known.
    pub drop_no_endpoint: u64,
    /// Dropped: a packet for the peer waited for a handshake that never completed, or found
    /// the queue of waiting packets full (256).
    pub drop_no_handshake: u64,
    /// Dropped: a packet to or from the peer that WireGuard refused as malformed, or whose
    /// result did not fit its buffer.
    pub drop_garbage: u64,
    /// Every packet to or from the peer that was dropped, whatever the reason: the sum of
    /// the `drop_*` fields. (Packets for no peer, and handshake messages with a bad mac1,
    /// name no peer: they count only in `TunpipeTunnelStats`.)
    pub dropped: u64,
    /// Zero; room for counters added later.
    pub reserved: [u64; 8],
}

impl Default for TunpipePeerStats {
    fn default() -> Self {
        TunpipePeerStats {
            size: std::mem::size_of::<Self>() as u32,
            last_handshake_nsec: 0,
            public_key: [0; 32],
            endpoint: [0; 64],
            last_handshake_sec: 0,
            handshakes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            rx_packets: 0,
            rx_bytes: 0,
            drop_auth_failure: 0,
            drop_replay: 0,
            drop_not_allowed: 0,
            drop_no_session: 0,
            drop_no_endpoint: 0,
            drop_no_handshake: 0,
            drop_garbage: 0,
            dropped: 0,
            reserved: [0; 8],
        }
    }
}

/// One latency distribution, in nanoseconds (all 0 when nothing was recorded).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TunpipePercentiles {
    /// Packets recorded.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// Latency percentiles. Set `size = sizeof(TunpipeLatency)` before the call; tunpipe writes
/// at most that many bytes and sets `size` to the bytes it wrote.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TunpipeLatency {
    /// In: the caller's `sizeof(TunpipeLatency)`. Out: the bytes written.
    pub size: u32,
    /// Zero.
    pub reserved0: u32,
    /// Time in the engine: from the reader's receive to the writer's send.
    pub engine: TunpipePercentiles,
    /// Time in the stage, per packet (a batch's time shared evenly by its packets).
    pub stage: TunpipePercentiles,
    /// Zero; room for fields added later.
    pub reserved: [u64; 8],
}

impl From<Percentiles> for TunpipePercentiles {
    fn from(p: Percentiles) -> Self {
        TunpipePercentiles {
            count: p.count,
            min: p.min,
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            p999: p.p999,
            max: p.max,
        }
    }
}

impl TunpipeStats {
    pub(crate) fn from_stats(s: &Stats, callback_errors: u64, reserved_bytes: usize) -> Self {
        TunpipeStats {
            size: std::mem::size_of::<Self>() as u32,
            reserved0: 0,
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
            drop_ring_full: s.drop_ring_full,
            drop_malformed: s.drop_malformed,
            drop_oversize: s.drop_oversize,
            drop_stage: s.drop_stage,
            drop_stage_panic: s.drop_stage_panic,
            drop_write_error: s.drop_write_error,
            drop_stopped: s.drop_stopped,
            pool_stalls: s.pool_stalls,
            read_errors: s.read_errors,
            wakeups: s.wakeups,
            callback_errors,
            reserved_bytes: reserved_bytes as u64,
            dropped: s.dropped(),
            originated: s.originated,
            consumed: s.consumed,
            drop_no_buffer: s.drop_no_buffer,
            ring_stalls: s.ring_stalls,
            held: s.held,
            tx_direct: s.tx_direct,
            drop_suspended: s.drop_suspended,
        }
    }
}

impl From<&Stats> for TunpipeDirectionStats {
    fn from(s: &Stats) -> Self {
        TunpipeDirectionStats {
            packets_in: s.rx_packets,
            bytes_in: s.rx_bytes,
            packets_out: s.tx_packets,
            bytes_out: s.tx_bytes,
            originated: s.originated,
            consumed: s.consumed,
            dropped: s.dropped(),
            ring_stalls: s.ring_stalls,
        }
    }
}

/// An endpoint as the C structs' `endpoint` text: NUL-terminated, empty for none.
fn endpoint_text(endpoint: Option<SocketAddr>) -> [c_char; 64] {
    let mut text = [0 as c_char; 64];
    if let Some(addr) = endpoint {
        // An address and port always fit in 63 bytes (`[` 45 `]:` 5 at most); the last byte
        // stays NUL whatever happens.
        for (slot, byte) in text.iter_mut().zip(addr.to_string().bytes().take(63)) {
            *slot = byte as c_char;
        }
    }
    text
}

impl TunpipeTunnelStats {
    pub(crate) fn from_tunnel(w: &WireGuardStats, engine: &Engine) -> Self {
        let endpoint = endpoint_text(w.endpoints.first().copied().flatten());
        let outbound = engine.direction_stats(Direction::Outbound);
        let inbound = engine.direction_stats(Direction::Inbound);
        TunpipeTunnelStats {
            size: std::mem::size_of::<Self>() as u32,
            peers: u32::try_from(w.endpoints.len()).unwrap_or(u32::MAX),
            handshakes_completed: w.handshakes_completed,
            handshake_failures: w.handshake_failures,
            handshake_initiations: w.handshake_initiations,
            seconds_since_handshake: w
                .since_last_handshake
                .map_or(-1, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            endpoint,
            outbound: (&outbound).into(),
            inbound: (&inbound).into(),
            outbound_held: outbound.held,
            inbound_held: inbound.held,
            data_tx_packets: w.tx_packets,
            data_tx_bytes: w.tx_bytes,
            data_rx_packets: w.rx_packets,
            data_rx_bytes: w.rx_bytes,
            drop_auth_failure: w.drop_auth_failure,
            drop_replay: w.drop_replay,
            drop_not_allowed: w.drop_not_allowed,
            drop_no_session: w.drop_no_session,
            drop_no_peer: w.drop_no_peer,
            drop_no_endpoint: w.drop_no_endpoint,
            drop_no_handshake: w.drop_no_handshake,
            drop_garbage: w.drop_garbage,
            drop_bad_mac1: w.drop_bad_mac1,
            cookie_replies: w.cookie_replies,
            initiations_answered: w.initiations_answered,
            reserved: [0; 11],
        }
    }
}

impl TunpipePeerStats {
    pub(crate) fn from_peer(p: &PeerStats) -> Self {
        // The handshake's time since the epoch: it is never before it (the core stamps it from
        // the wall clock after 1970), and "never" is 0 as in the UAPI.
        let since_epoch = p
            .last_handshake
            .map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default())
            .unwrap_or_default();
        TunpipePeerStats {
            size: std::mem::size_of::<Self>() as u32,
            last_handshake_nsec: since_epoch.subsec_nanos(),
            public_key: *p.public_key.as_bytes(),
            endpoint: endpoint_text(p.endpoint),
            last_handshake_sec: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
            handshakes: p.handshakes,
            tx_packets: p.tx_packets,
            tx_bytes: p.tx_bytes,
            rx_packets: p.rx_packets,
            rx_bytes: p.rx_bytes,
            drop_auth_failure: p.drops(DropReason::AuthFailure),
            drop_replay: p.drops(DropReason::Replay),
            drop_not_allowed: p.drops(DropReason::NotAllowed),
            drop_no_session: p.drops(DropReason::NoSession),
            drop_no_endpoint: p.drops(DropReason::NoEndpoint),
            drop_no_handshake: p.drops(DropReason::NoHandshake),
            drop_garbage: p.drops(DropReason::Garbage),
            // The core's own total: a reason it gains later still counts here.
            dropped: p.dropped(),
            reserved: [0; 8],
        }
    }
}

impl TunpipeLatency {
    pub(crate) fn from_snapshot(l: &LatencySnapshot) -> Self {
        TunpipeLatency {
            size: std::mem::size_of::<Self>() as u32,
            reserved0: 0,
            engine: l.engine.percentiles().into(),
            stage: l.stage.percentiles().into(),
            reserved: [0; 8],
        }
    }
}

impl Sized32 for TunpipeStats {
    fn with_size(mut self, size: u32) -> Self {
        self.size = size;
        self
    }
}

impl Sized32 for TunpipeTunnelStats {
    fn with_size(mut self, size: u32) -> Self {
        self.size = size;
        self
    }
}

impl Sized32 for TunpipePeerStats {
    fn with_size(mut self, size: u32) -> Self {
        self.size = size;
        self
    }
}

impl Sized32 for TunpipeLatency {
    fn with_size(mut self, size: u32) -> Self {
        self.size = size;
        self
    }
}

/// The histogram `which` names, in V2-deflate base64.
pub(crate) fn latency_base64(l: &LatencySnapshot, which: u32) -> FfiResult<String> {
    match which {
        TUNPIPE_LATENCY_ENGINE => Ok(l.engine.to_v2_deflate_base64()),
        TUNPIPE_LATENCY_STAGE => Ok(l.stage.to_v2_deflate_base64()),
        other => Err(FfiError::new(
            TUNPIPE_ERR_INVALID_ARGUMENT,
            format!("unknown latency kind {other}"),
        )),
    }
}

// The prefix copy relies on these layouts having no padding.
const _: () = assert!(std::mem::size_of::<TunpipeStats>() == 8 + 8 * (16 + 8));
const _: () =
    assert!(std::mem::size_of::<TunpipeTunnelStats>() == 8 + 8 * 4 + 64 + 2 * 64 + 8 * (12 + 16));
const _: () = assert!(std::mem::size_of::<TunpipeLatency>() == 8 + 8 * (7 * 2 + 8));
const _: () =
    assert!(std::mem::size_of::<TunpipePeerStats>() == 8 + 32 + 64 + 8 * (1 + 5 + 8) + 8 * 8);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TUNPIPE_ERR_STRUCT_SIZE;
    use crate::util::write_sized;

    #[test]
    fn an_older_shorter_struct_gets_only_its_prefix() {
        let stats = TunpipeStats {
            rx_packets: 7,
            tx_packets: 5,
            ..Default::default()
        };
        // A caller that knows only size, reserved0, rx_packets and rx_bytes (24 bytes),
        // followed by bytes it owns that must stay untouched.
        let mut memory = [0xeeee_eeee_eeee_eeeeu64; std::mem::size_of::<TunpipeStats>() / 8];
        let out = memory.as_mut_ptr().cast::<TunpipeStats>();
        // SAFETY: `memory` is aligned for u64 and as large as TunpipeStats.
        unsafe { out.cast::<u32>().write(24) };
        // SAFETY: as above; the caller's size (24) is within the buffer.
        unsafe { write_sized(out, stats) }.unwrap();
        // SAFETY: reading back the caller's fields.
        let (size, rx) = unsafe { ((*out).size, (*out).rx_packets) };
        assert_eq!((size, rx), (24, 7));
        assert!(memory[3..].iter().all(|&w| w == 0xeeee_eeee_eeee_eeee));

        let mut tiny = TunpipeStats {
            size: 4,
            ..Default::default()
        };
        // SAFETY: a whole struct, whose size field claims less than the header.
        let err = unsafe { write_sized(&mut tiny, stats) }.unwrap_err();
        assert_eq!(err.code, TUNPIPE_ERR_STRUCT_SIZE);
    }

    /// The C text of an `endpoint` field, up to its NUL.
    fn text(field: &[c_char; 64]) -> String {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_longest_endpoint_fits_with_its_nul() {
        let longest: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535"
            .parse()
            .unwrap();
        let field = endpoint_text(Some(longest));
        assert_eq!(text(&field), longest.to_string());
        assert_eq!(field[63], 0);
        assert_eq!(text(&endpoint_text(None)), "");
    }

    #[test]
    fn a_peer_that_never_shook_hands_says_so_with_zeroes_and_its_public_key() {
        let private = tunpipe::wireguard::Key::generate();
        let public = tunpipe::wireguard::Key::generate().public_key();
        let config = tunpipe::wireguard::WgConfig::parse(&format!(
            "[Interface]\nPrivateKey = {}\n\n[Peer]\nPublicKey = {}\n\
             Endpoint = [2001:db8::1]:51820\nAllowedIPs = 10.0.0.0/8\n",
            private.to_base64(),
            public.to_base64()
        ))
        .unwrap();
        let peers = tunpipe::wireguard::WireGuard::new(&config).unwrap().peers();
        assert_eq!(peers.len(), 1);
        let c = TunpipePeerStats::from_peer(&peers[0]);
        assert_eq!(c.size as usize, std::mem::size_of::<TunpipePeerStats>());
        assert_eq!(&c.public_key, public.as_bytes());
        assert_eq!(text(&c.endpoint), "[2001:db8::1]:51820");
        // "Never" is 0, as the UAPI's last_handshake_time_sec says it.
        assert_eq!((c.last_handshake_sec, c.last_handshake_nsec), (0, 0));
        assert_eq!(
            (c.handshakes, c.tx_packets, c.rx_bytes, c.dropped),
            (0, 0, 0, 0)
        );
        // The private key is nowhere in the struct's bytes.
        // SAFETY: TunpipePeerStats is padding-free plain data: all its bytes are initialized.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&c as *const TunpipePeerStats).cast::<u8>(),
                std::mem::size_of::<TunpipePeerStats>(),
            )
        };
        assert!(!bytes.windows(32).any(|w| w == private.as_bytes()));
    }
}
