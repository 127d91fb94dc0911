//! Checked views of IPv4/IPv6/ICMP/UDP for untrusted packets.
//!
//! Every view is built with `new_checked`, which proves once that the fixed header and every
//! length field fit in the buffer. The accessors then index within those proven bounds, so no
//! input can make them panic. A view never reads past the length its header declares: trailing
//! bytes after an IP packet's total length are tolerated and left alone.

use std::fmt;

/// Why bytes are not a usable packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// No bytes at all.
    Empty,
    /// The version nibble is neither 4 nor 6, or not the version the view expects.
    NotIp,
    /// The buffer ends before a header, or before the length a header declares.
    Truncated,
    /// A length field contradicts the header it belongs to.
    BadLength,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformed::Empty => "empty packet",
            Malformed::NotIp => "not an IP packet of the expected version",
            Malformed::Truncated => "packet shorter than its headers declare",
            Malformed::BadLength => "length field inconsistent with its header",
        })
    }
}

impl std::error::Error for Malformed {}

/// IP version of a packet that passed [`check_ip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// IP protocol / IPv6 next-header numbers.
pub mod protocol {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// The IPv6 fragment extension header.
    pub const IPV6_FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

mod ipv4 {
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    pub const FLAGS_FRAG: usize = 6;
    pub const PROTOCOL: usize = 9;
    pub const SRC_ADDR: usize = 12;
    pub const DST_ADDR: usize = 16;
    pub const HEADER_LEN: usize = 20;
    pub const MORE_FRAGMENTS: u16 = 0x2000;
    pub const FRAG_OFFSET: u16 = 0x1fff;
}

mod ipv6 {
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const SRC_ADDR: usize = 8;
    pub const DST_ADDR: usize = 24;
    pub const HEADER_LEN: usize = 40;
}

mod udp {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
    pub const HEADER_LEN: usize = 8;
}

mod icmp {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    /// Type, code, checksum and the 4-byte rest-of-header (identifier and sequence for echo).
    pub const HEADER_LEN: usize = 8;
}

/// Callers guarantee `at + 2 <= buf.len()` (a view's checked bounds).
fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn write_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Swaps two equal, non-overlapping fields of `N` bytes.
fn swap_fields<const N: usize>(buf: &mut [u8], a: usize, b: usize) {
    let mut first = [0u8; N];
    first.copy_from_slice(&buf[a..a + N]);
    buf.copy_within(b..b + N, a);
    buf[b..b + N].copy_from_slice(&first);
}

/// Checks that `packet` starts with a usable IPv4 or IPv6 header whose declared length fits.
///
/// Bytes past the declared length are allowed: the packet is the prefix.
///
/// # Errors
/// The [`Malformed`] reason when the packet is not usable.
pub fn check_ip(packet: &[u8]) -> Result<IpVersion, Malformed> {
    match packet.first().map(|b| b >> 4) {
        None => Err(Malformed::Empty),
        Some(4) => check_ipv4(packet).map(|()| IpVersion::V4),
        Some(6) => check_ipv6(packet).map(|()| IpVersion::V6),
        Some(_) => Err(Malformed::NotIp),
    }
}

/// Assumes the version nibble was already checked.
fn check_ipv4(packet: &[u8]) -> Result<(), Malformed> {
    if packet.len() < ipv4::HEADER_LEN {
        return Err(Malformed::Truncated);
    }
    let header_len = usize::from(packet[ipv4::VER_IHL] & 0x0f) * 4;
    let total_len = usize::from(read_u16(packet, ipv4::TOTAL_LEN));
    if header_len < ipv4::HEADER_LEN || total_len < header_len {
        return Err(Malformed::BadLength);
    }
    // total_len >= header_len, so this also keeps the options inside the buffer.
    if total_len > packet.len() {
        return Err(Malformed::Truncated);
    }
    Ok(())
}

/// Assumes the version nibble was already checked.
fn check_ipv6(packet: &[u8]) -> Result<(), Malformed> {
    if packet.len() < ipv6::HEADER_LEN {
        return Err(Malformed::Truncated);
    }
    let payload_len = usize::from(read_u16(packet, ipv6::PAYLOAD_LEN));
    if ipv6::HEADER_LEN + payload_len > packet.len() {
        return Err(Malformed::Truncated);
    }
    Ok(())
}

/// A hash of the packet's flow that is the same for both directions of the flow, so one worker
/// sees a whole conversation in order.
///
/// The key is the addresses, plus protocol and ports for TCP, UDP and SCTP. Everything else
/// hashes by addresses only: fragments (the non-first ones carry no ports, and all fragments of
/// a datagram must meet at one worker to be reassembled), other protocols, and IPv6 packets
/// with any extension header. IPv6 extension headers are not walked, to keep this cheap; the
/// cost is that a flow whose packets only sometimes carry extension headers may be split.
///
/// Malformed packets hash to 0.
pub fn flow_hash(packet: &[u8]) -> u32 {
    match check_ip(packet) {
        Ok(IpVersion::V4) => {
            let ip = Ipv4Packet { buffer: packet };
            let l4 = if ip.is_fragment() {
                None
            } else {
                transport_ports(ip.protocol(), ip.payload())
            };
            let addr = |a| u128::from(u32::from_be_bytes(a));
            symmetric_hash(addr(ip.src_addr()), addr(ip.dst_addr()), l4)
        }
        Ok(IpVersion::V6) => {
            let ip = Ipv6Packet { buffer: packet };
            let l4 = transport_ports(ip.next_header(), ip.payload());
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            symmetric_hash(u128::from_be_bytes(src), u128::from_be_bytes(dst), l4)
        }
        Err(_) => 0,
    }
}

/// A hash of a datagram peer's address and port, for spreading datagrams from several peers
/// over workers: every datagram of one peer gets the same value.
pub fn endpoint_hash(endpoint: &std::net::SocketAddr) -> u32 {
    let addr = match endpoint.ip() {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    };
    symmetric_hash(addr, 0, Some((protocol::UDP, endpoint.port(), 0)))
}

fn ip_addr<const N: usize>(packet: &[u8], at: usize) -> [u8; N] {
    let mut addr = [0u8; N];
    addr.copy_from_slice(&packet[at..at + N]);
    addr
}

/// `(protocol, source port, destination port)` when the protocol has ports and they are there.
fn transport_ports(proto: u8, payload: &[u8]) -> Option<(u8, u16, u16)> {
    match (proto, payload) {
        (protocol::TCP | protocol::UDP | protocol::SCTP, [s0, s1, d0, d1, ..]) => Some((
            proto,
            u16::from_be_bytes([*s0, *s1]),
            u16::from_be_bytes([*d0, *d1]),
        )),
        _ => None,
    }
}

fn symmetric_hash(src: u128, dst: u128, l4: Option<(u8, u16, u16)>) -> u32 {
    let (proto, src_port, dst_port) = l4.unwrap_or_default();
    // Ordering the endpoints makes A->B and B->A the same key.
    let ((lo, lo_port), (hi, hi_port)) = if (src, src_port) <= (dst, dst_port) {
        ((src, src_port), (dst, dst_port))
    } else {
        ((dst, dst_port), (src, src_port))
    };
    let transport = u64::from(proto) << 32 | u64::from(lo_port) << 16 | u64::from(hi_port);
    // Folded multiplies (as in foldhash/wyhash): each diffuses 128 bits of input into 64, and
    // the two address halves are mixed independently so the CPU can overlap them. The
    // constants keep a zero input (an IPv4 address's empty upper bits) from zeroing a product.
    let lo = folded_multiply(
        lo as u64 ^ 0x243f_6a88_85a3_08d3,
        (lo >> 64) as u64 ^ 0x1319_8a2e_0370_7344,
    );
    let hi = folded_multiply(
        hi as u64 ^ 0xa409_3822_299f_31d0,
        (hi >> 64) as u64 ^ 0x082e_fa98_ec4e_6c89,
    );
    let h = folded_multiply(lo ^ transport, hi ^ 0x4528_21e6_38d0_1377);
    (h ^ (h >> 32)) as u32
}

fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    product as u64 ^ (product >> 64) as u64
}

/// RFC 1071 Internet checksum of `data`: the one's complement of the one's complement sum of its
/// 16-bit big-endian words, an odd last byte padded with zero.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(ones_sum(data, 0))
}

/// The one's complement sum of `data`'s 16-bit big-endian words (an odd last byte padded with
/// zero) added to `initial`, not yet folded: what a partial (pseudo-header) checksum carries.
pub(crate) fn ones_sum(data: &[u8], initial: u64) -> u64 {
    // 32-bit words in the machine's byte order, which the compiler sums in vector lanes (a
    // TUN with offload leaves every outgoing packet's checksum to us). Folded, a one's
    // complement sum of words in one byte order is the byte swap of the sum in the other
    // (RFC 1071, 2.B), so `from_be` turns it into the big-endian words' sum. u64 cannot
    // overflow: that would take a slice of 2^34 bytes.
    let mut quads = data.chunks_exact(4);
    let native: u64 = quads
        .by_ref()
        .map(|q| u64::from(u32::from_ne_bytes([q[0], q[1], q[2], q[3]])))
        .sum();
    let mut sum = initial + u64::from(u16::from_be(fold(native)));
    // The rest starts at an even offset: big-endian words, an odd last byte padded.
    let mut words = quads.remainder().chunks_exact(2);
    for w in words.by_ref() {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a one's complement sum into 16 bits.
pub(crate) fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// RFC 1624 incremental update of checksum `hc` after one 16-bit word of the data it covers
/// changed from `old` (m) to `new` (m'): eqn. 3, `HC' = ~(~HC + ~m + m')`.
///
/// Eqn. 3 yields `0x0000` both for a nonzero sum that is one's complement zero (where `0xffff`
/// verifies just as well) and for all-zero data (where only `0xffff` verifies, e.g. an ICMPv4
/// echo reply with identifier, sequence and payload all zero). The update cannot tell the two
/// apart, so it returns `0xffff`, which verifies in both.
pub fn update_checksum(hc: u16, old: u16, new: u16) -> u16 {
    let sum = u64::from(!hc) + u64::from(!old) + u64::from(new);
    match !fold(sum) {
        0 => 0xffff,
        updated => updated,
    }
}

/// A checked view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// # Errors
    /// What [`check_ip`] finds, or [`Malformed::NotIp`] for an IPv6 packet.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        match check_ip(buffer.as_ref())? {
            IpVersion::V4 => Ok(Ipv4Packet { buffer }),
            IpVersion::V6 => Err(Malformed::NotIp),
        }
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[ipv4::VER_IHL] & 0x0f) * 4
    }

    /// Header plus payload; bytes of the buffer past this are not part of the packet.
    pub fn total_len(&self) -> usize {
        usize::from(read_u16(self.buffer.as_ref(), ipv4::TOTAL_LEN))
    }

    /// The protocol number of the payload (see [`protocol`]).
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[ipv4::PROTOCOL]
    }

    /// True for any fragment of a fragmented datagram, the first one included.
    pub fn is_fragment(&self) -> bool {
        let flags_frag = read_u16(self.buffer.as_ref(), ipv4::FLAGS_FRAG);
        flags_frag & (ipv4::MORE_FRAGMENTS | ipv4::FRAG_OFFSET) != 0
    }

    /// Source address.
    pub fn src_addr(&self) -> [u8; 4] {
        ip_addr(self.buffer.as_ref(), ipv4::SRC_ADDR)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> [u8; 4] {
        ip_addr(self.buffer.as_ref(), ipv4::DST_ADDR)
    }

    /// The bytes after the header, up to the packet's declared length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Swaps source and destination. The header checksum stays valid: the one's complement sum
    /// does not depend on the order of its words.
    pub fn swap_addrs(&mut self) {
        swap_fields::<4>(self.buffer.as_mut(), ipv4::SRC_ADDR, ipv4::DST_ADDR);
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..self.total_len();
        &mut self.buffer.as_mut()[range]
    }
}

/// A checked view of an IPv6 packet. Extension headers are not parsed: the payload starts
/// right after the fixed header, at whatever [`Ipv6Packet::next_header`] names.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// # Errors
    /// What [`check_ip`] finds, or [`Malformed::NotIp`] for an IPv4 packet.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        match check_ip(buffer.as_ref())? {
            IpVersion::V6 => Ok(Ipv6Packet { buffer }),
            IpVersion::V4 => Err(Malformed::NotIp),
        }
    }

    /// Payload length as the header declares it.
    pub fn payload_len(&self) -> usize {
        usize::from(read_u16(self.buffer.as_ref(), ipv6::PAYLOAD_LEN))
    }

    /// The protocol of the payload (see [`protocol`]); extension headers are not walked.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[ipv6::NEXT_HEADER]
    }

    /// Source address.
    pub fn src_addr(&self) -> [u8; 16] {
        ip_addr(self.buffer.as_ref(), ipv6::SRC_ADDR)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> [u8; 16] {
        ip_addr(self.buffer.as_ref(), ipv6::DST_ADDR)
    }

    /// The bytes after the header, up to the packet's declared length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[ipv6::HEADER_LEN..ipv6::HEADER_LEN + self.payload_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Swaps source and destination. Upper-layer checksums stay valid: the pseudo-header sum
    /// does not depend on the order of its words.
    pub fn swap_addrs(&mut self) {
        swap_fields::<16>(self.buffer.as_mut(), ipv6::SRC_ADDR, ipv6::DST_ADDR);
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = ipv6::HEADER_LEN + self.payload_len();
        &mut self.buffer.as_mut()[ipv6::HEADER_LEN..end]
    }
}

/// A checked view of a UDP datagram (header and payload, as an IP payload).
#[derive(Debug, Clone)]
pub struct UdpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// # Errors
    /// [`Malformed::Truncated`] when the header or the length it declares does not fit,
    /// [`Malformed::BadLength`] when that length does not cover the header.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let bytes = buffer.as_ref();
        if bytes.len() < udp::HEADER_LEN {
            return Err(Malformed::Truncated);
        }
        let len = usize::from(read_u16(bytes, udp::LENGTH));
        if len < udp::HEADER_LEN {
            return Err(Malformed::BadLength);
        }
        if len > bytes.len() {
            return Err(Malformed::Truncated);
        }
        Ok(UdpPacket { buffer })
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), udp::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), udp::DST_PORT)
    }

    /// 0 over IPv4 means the sender computed none.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), udp::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Swaps source and destination ports. The checksum stays valid (and a zero one stays
    /// zero): the one's complement sum does not depend on the order of its words.
    pub fn swap_ports(&mut self) {
        swap_fields::<2>(self.buffer.as_mut(), udp::SRC_PORT, udp::DST_PORT);
    }
}

/// A checked view of an ICMPv4 or ICMPv6 message with an 8-byte header, as echo messages have.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// # Errors
    /// [`Malformed::Truncated`] when the 8-byte header does not fit.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        if buffer.as_ref().len() < icmp::HEADER_LEN {
            return Err(Malformed::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[icmp::TYPE]
    }

    /// Message code.
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[icmp::CODE]
    }

    /// The checksum field as it stands.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), icmp::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Sets the message type and updates the checksum incrementally to match, so a valid
    /// checksum stays valid (an invalid one stays invalid). For ICMPv6 this holds too, since
    /// the type is not part of the pseudo-header.
    pub fn set_msg_type(&mut self, msg_type: u8) {
        let buf = self.buffer.as_mut();
        // Type and code share one 16-bit word of the checksummed data.
        let old = read_u16(buf, icmp::TYPE);
        buf[icmp::TYPE] = msg_type;
        let new = read_u16(buf, icmp::TYPE);
        let hc = read_u16(buf, icmp::CHECKSUM);
        write_u16(buf, icmp::CHECKSUM, update_checksum(hc, old, new));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(&mut out, b"payload")
            .unwrap();
        out
    }

    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 1000)
            .write(&mut out, b"payload")
            .unwrap();
        out
    }

    fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6(src, dst, 64)
            .udp(sport, dport)
            .write(&mut out, b"payload")
            .unwrap();
        out
    }

    fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6(src, dst, 64)
            .tcp(sport, dport, 1, 1000)
            .write(&mut out, b"payload")
            .unwrap();
        out
    }

    const A4: [u8; 4] = [10, 0, 0, 1];
    const B4: [u8; 4] = [192, 168, 7, 9];
    const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const B6: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];

    /// A minimal IPv4 header (no payload) with the given first byte and total length.
    fn ipv4_header(ver_ihl: u8, total_len: u16) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = ver_ihl;
        h[2..4].copy_from_slice(&total_len.to_be_bytes());
        h
    }

    #[test]
    fn check_ip_accepts_real_packets_and_tolerates_trailing_bytes() {
        assert_eq!(check_ip(&udp4(A4, B4, 1, 2)), Ok(IpVersion::V4));
        assert_eq!(check_ip(&udp6(A6, B6, 1, 2)), Ok(IpVersion::V6));
        let mut padded = udp4(A4, B4, 1, 2);
        padded.extend_from_slice(&[0xee; 5]);
        assert_eq!(check_ip(&padded), Ok(IpVersion::V4));
        let mut padded = udp6(A6, B6, 1, 2);
        padded.push(0xee);
        assert_eq!(check_ip(&padded), Ok(IpVersion::V6));
        assert_eq!(check_ip(&ipv4_header(0x45, 20)), Ok(IpVersion::V4));
    }

    #[test]
    fn check_ip_rejects_malformed_packets() {
        assert_eq!(check_ip(&[]), Err(Malformed::Empty));
        assert_eq!(check_ip(&[0x45]), Err(Malformed::Truncated));
        assert_eq!(check_ip(&[0x60]), Err(Malformed::Truncated));
        assert_eq!(check_ip(&[0x00]), Err(Malformed::NotIp));
        assert_eq!(check_ip(&ipv4_header(0x55, 20)), Err(Malformed::NotIp));
        assert_eq!(check_ip(&ipv4_header(0x44, 20)), Err(Malformed::BadLength));
        assert_eq!(check_ip(&ipv4_header(0x40, 20)), Err(Malformed::BadLength));
        // Total length shorter than the header it contains.
        assert_eq!(check_ip(&ipv4_header(0x45, 19)), Err(Malformed::BadLength));
        assert_eq!(check_ip(&ipv4_header(0x46, 20)), Err(Malformed::BadLength));
        // IHL and total length agree but point past the buffer.
        assert_eq!(check_ip(&ipv4_header(0x4f, 60)), Err(Malformed::Truncated));
        // Total length lies.
        assert_eq!(check_ip(&ipv4_header(0x45, 21)), Err(Malformed::Truncated));
        assert_eq!(
            check_ip(&ipv4_header(0x45, 0xffff)),
            Err(Malformed::Truncated)
        );
        let v4 = udp4(A4, B4, 1, 2);
        assert_eq!(check_ip(&v4[..19]), Err(Malformed::Truncated));
        assert_eq!(check_ip(&v4[..v4.len() - 1]), Err(Malformed::Truncated));
        let v6 = udp6(A6, B6, 1, 2);
        assert_eq!(check_ip(&v6[..39]), Err(Malformed::Truncated));
        assert_eq!(check_ip(&v6[..v6.len() - 1]), Err(Malformed::Truncated));
    }

    #[test]
    fn views_refuse_the_other_version_and_short_transport_headers() {
        let v4 = udp4(A4, B4, 1, 2);
        let v6 = udp6(A6, B6, 1, 2);
        assert_eq!(
            Ipv6Packet::new_checked(&v4[..]).err(),
            Some(Malformed::NotIp)
        );
        assert_eq!(
            Ipv4Packet::new_checked(&v6[..]).err(),
            Some(Malformed::NotIp)
        );
        let ip = Ipv4Packet::new_checked(&v4[..]).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (1, 2));
        let short = &ip.payload()[..7];
        assert_eq!(
            UdpPacket::new_checked(short).err(),
            Some(Malformed::Truncated)
        );
        let mut bad_len = ip.payload().to_vec();
        bad_len[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&bad_len).err(),
            Some(Malformed::BadLength)
        );
        bad_len[4..6].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&bad_len).err(),
            Some(Malformed::Truncated)
        );
        assert_eq!(
            IcmpPacket::new_checked(&[8u8, 0, 0, 0][..]).err(),
            Some(Malformed::Truncated)
        );
    }

    #[test]
    fn flow_hash_is_symmetric() {
        for (a, b) in [
            (udp4(A4, B4, 5353, 53), udp4(B4, A4, 53, 5353)),
            (tcp4(A4, B4, 40000, 443), tcp4(B4, A4, 443, 40000)),
            (udp6(A6, B6, 5353, 53), udp6(B6, A6, 53, 5353)),
            (tcp6(A6, B6, 40000, 443), tcp6(B6, A6, 443, 40000)),
            // Same address both ways: the ports alone decide the order.
            (udp4(A4, A4, 1, 2), udp4(A4, A4, 2, 1)),
        ] {
            assert_eq!(flow_hash(&a), flow_hash(&b));
        }
    }

    #[test]
    fn flow_hash_tells_flows_apart() {
        let hashes: std::collections::HashSet<u32> = (1000..1016)
            .map(|port| flow_hash(&udp4(A4, B4, port, 53)))
            .collect();
        assert_eq!(hashes.len(), 16);
        // Worker choice uses the low bits: consecutive ports must not pile onto one worker.
        let workers: std::collections::HashSet<u32> = hashes.iter().map(|h| h % 4).collect();
        assert_eq!(workers.len(), 4);
        assert_ne!(
            flow_hash(&udp6(A6, B6, 1, 2)),
            flow_hash(&udp6(A6, B6, 1, 3))
        );
        assert_ne!(
            flow_hash(&udp4(A4, B4, 1, 2)),
            flow_hash(&tcp4(A4, B4, 1, 2))
        );
        assert_ne!(
            flow_hash(&udp4(A4, B4, 1, 2)),
            flow_hash(&udp4(A4, [10, 0, 0, 2], 1, 2))
        );
    }

    #[test]
    fn fragments_hash_by_addresses_only() {
        let with_flags = |sport, flags_frag: u16| {
            let mut p = udp4(A4, B4, sport, 53);
            p[6..8].copy_from_slice(&flags_frag.to_be_bytes());
            p
        };
        let first = flow_hash(&with_flags(1111, 0x2000));
        assert_eq!(first, flow_hash(&with_flags(2222, 0x2000)));
        assert_eq!(first, flow_hash(&with_flags(3333, 0x0010)));
        assert_eq!(first, flow_hash(&with_flags(4444, 0x2010)));
        // Don't Fragment alone is no fragment.
        assert_ne!(
            flow_hash(&with_flags(1111, 0x4000)),
            flow_hash(&with_flags(2222, 0x4000))
        );

        let fragment6 = |port_bytes: [u8; 4]| {
            let mut p = udp6(A6, B6, 1, 2);
            p[6] = protocol::IPV6_FRAGMENT;
            p[40..44].copy_from_slice(&port_bytes);
            p
        };
        assert_eq!(
            flow_hash(&fragment6([1, 2, 3, 4])),
            flow_hash(&fragment6([9, 8, 7, 6]))
        );
        let mut reply = fragment6([0; 4]);
        reply[8..40].rotate_left(16);
        assert_eq!(flow_hash(&fragment6([1, 2, 3, 4])), flow_hash(&reply));
    }

    #[test]
    fn flow_hash_of_malformed_or_portless_packets() {
        assert_eq!(flow_hash(&[]), 0);
        assert_eq!(flow_hash(&[0x45]), 0);
        assert_eq!(flow_hash(&ipv4_header(0x45, 40)), 0);
        // A UDP packet too short for ports still hashes, by addresses.
        let mut p = ipv4_header(0x45, 22);
        p[9] = protocol::UDP;
        p.extend_from_slice(&[0, 1]);
        assert_eq!(check_ip(&p), Ok(IpVersion::V4));
        p[9] = 250;
        let unknown = flow_hash(&p);
        p[9] = protocol::UDP;
        assert_eq!(flow_hash(&p), unknown);
    }

    #[test]
    fn checksum_matches_known_vectors() {
        // RFC 1071 section 3: the words sum to 0xddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // An IPv4 header whose checksum field (zeroed here) holds 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
        // An odd last byte counts as the high byte of a zero-padded word.
        assert_eq!(checksum(&[0x12, 0x34, 0x56]), !0x6834);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn update_of_all_zero_data_gives_the_only_checksum_that_verifies() {
        // An ICMP echo request with identifier, sequence and payload zero, turned into a reply.
        let hc = checksum(&[8, 0, 0, 0, 0, 0, 0, 0]);
        let updated = update_checksum(hc, 0x0800, 0x0000);
        assert_eq!(updated, 0xffff);
        assert_eq!(checksum(&[0, 0, 0xff, 0xff, 0, 0, 0, 0]), 0);
        // Nonzero data summing to one's complement zero: full recomputation says 0x0000, the
        // update 0xffff, and both verify.
        assert_eq!(checksum(&[0x00, 0x01, 0xff, 0xfe]), 0);
        let updated = update_checksum(checksum(&[0x00, 0x02, 0xff, 0xfe]), 2, 1);
        assert_eq!(updated, 0xffff);
        assert_eq!(checksum(&[0x00, 0x01, 0xff, 0xfe, 0xff, 0xff]), 0);
    }

    proptest! {
        #[test]
        fn incremental_update_matches_full_recomputation(
            mut data in proptest::collection::vec(any::<u8>(), 2..200),
            word in any::<prop::sample::Index>(),
            new in any::<u16>(),
        ) {
            let at = word.index(data.len() / 2) * 2;
            let hc = checksum(&data);
            let old = read_u16(&data, at);
            write_u16(&mut data, at, new);
            let full = checksum(&data);
            let incremental = update_checksum(hc, old, new);
            // 0x0000 and 0xffff are both one's complement zero; the update always says 0xffff.
            prop_assert_eq!(incremental, if full == 0 { 0xffff } else { full });
            // Either way the updated checksum verifies.
            let mut covered = data.clone();
            if covered.len() % 2 == 1 {
                covered.push(0);
            }
            covered.extend_from_slice(&incremental.to_be_bytes());
            prop_assert_eq!(checksum(&covered), 0);
        }

        #[test]
        fn the_ones_sum_folds_to_that_of_big_endian_words(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            initial in 0u64..(1 << 32),
        ) {
            // RFC 1071's definition, word by word.
            let mut reference = initial;
            for (i, byte) in data.iter().enumerate() {
                reference += u64::from(*byte) << if i % 2 == 0 { 8 } else { 0 };
            }
            prop_assert_eq!(fold(ones_sum(&data, initial)), fold(reference));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = check_ip(&bytes);
            let _ = flow_hash(&bytes);
            let _ = checksum(&bytes);
            if let Ok(ip) = Ipv4Packet::new_checked(&bytes[..]) {
                let _ = UdpPacket::new_checked(ip.payload());
                let _ = IcmpPacket::new_checked(ip.payload());
            }
            if let Ok(ip) = Ipv6Packet::new_checked(&bytes[..]) {
                let _ = UdpPacket::new_checked(ip.payload());
            }
        }

        #[test]
        fn arbitrary_ip_headers_never_panic(
            first in any::<u8>(),
            rest in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            // Random bytes rarely start with a valid version nibble, so force each one.
            let mut bytes = vec![first];
            bytes.extend_from_slice(&rest);
            for version in [0x40, 0x60] {
                bytes[0] = version | (first & 0x0f);
                let _ = check_ip(&bytes);
                let _ = flow_hash(&bytes);
            }
        }

        #[test]
        fn flow_hash_is_symmetric_for_any_endpoints(
            a in any::<[u8; 16]>(), b in any::<[u8; 16]>(),
            sport in any::<u16>(), dport in any::<u16>(), tcp in any::<bool>(),
        ) {
            let (a4, b4) = ([a[0], a[1], a[2], a[3]], [b[0], b[1], b[2], b[3]]);
            if tcp {
                prop_assert_eq!(flow_hash(&tcp4(a4, b4, sport, dport)), flow_hash(&tcp4(b4, a4, dport, sport)));
                prop_assert_eq!(flow_hash(&tcp6(a, b, sport, dport)), flow_hash(&tcp6(b, a, dport, sport)));
            } else {
                prop_assert_eq!(flow_hash(&udp4(a4, b4, sport, dport)), flow_hash(&udp4(b4, a4, dport, sport)));
                prop_assert_eq!(flow_hash(&udp6(a, b, sport, dport)), flow_hash(&udp6(b, a, dport, sport)));
            }
        }
    }
}
