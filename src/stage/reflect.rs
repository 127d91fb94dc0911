use super::{PacketBuf, Stage, Verdict};
use crate::wire::{check_ip, protocol, IcmpPacket, IpVersion, Ipv4Packet, Ipv6Packet, UdpPacket};

const ICMPV4_ECHO_REQUEST: u8 = 8;
const ICMPV4_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Answers ICMP and ICMPv6 echo requests and sends UDP datagrams back to their sender; drops
/// everything else. A stand-in peer for measuring the engine.
///
/// The packet is rewritten in place and never changes length. Checksums are patched, not
/// recomputed, and never verified: a request with a bad checksum gets a reply with a bad
/// checksum, which its receiver drops. TTL / hop limit are left alone. A dropped packet is left
/// byte for byte as it came.
///
/// Not reflected: IPv4 fragments (a non-first fragment has no transport header, and answering
/// only the first would send half a datagram), and IPv6 packets with extension headers, which
/// would have to be walked to find the transport header.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reflect;

impl Stage for Reflect {
    fn process(&mut self, packet: &mut PacketBuf) -> Verdict {
        let reflected = match check_ip(packet.data()) {
            Ok(IpVersion::V4) => reflect_ipv4(packet.data_mut()),
            Ok(IpVersion::V6) => reflect_ipv6(packet.data_mut()),
            Err(_) => false,
        };
        if reflected {
            Verdict::Forward
        } else {
            Verdict::Drop
        }
    }
}

// Both functions check everything before writing anything, so a refusal leaves the packet intact.

fn reflect_ipv4(bytes: &mut [u8]) -> bool {
    let Ok(mut ip) = Ipv4Packet::new_checked(bytes) else {
        return false;
    };
    if ip.is_fragment() {
        return false;
    }
    let reflected = match ip.protocol() {
        protocol::ICMP => reflect_echo(ip.payload_mut(), ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY),
        protocol::UDP => reflect_udp(ip.payload_mut()),
        _ => false,
    };
    if reflected {
        // The IPv4 header checksum is a one's complement sum, which does not depend on the
        // order of its words, so swapping the addresses leaves it valid.
        ip.swap_addrs();
    }
    reflected
}

fn reflect_ipv6(bytes: &mut [u8]) -> bool {
    let Ok(mut ip) = Ipv6Packet::new_checked(bytes) else {
        return false;
    };
    let reflected = match ip.next_header() {
        protocol::ICMPV6 => reflect_echo(ip.payload_mut(), ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY),
        protocol::UDP => reflect_udp(ip.payload_mut()),
        _ => false,
    };
    if reflected {
        // ICMPv6 and UDP checksums cover the addresses through the pseudo-header, whose sum the
        // swap does not change.
        ip.swap_addrs();
    }
    reflected
}

fn reflect_echo(payload: &mut [u8], request: u8, reply: u8) -> bool {
    let Ok(mut icmp) = IcmpPacket::new_checked(payload) else {
        return false;
    };
    if icmp.msg_type() != request || icmp.msg_code() != 0 {
        return false;
    }
    icmp.set_msg_type(reply);
    true
}

fn reflect_udp(payload: &mut [u8]) -> bool {
    let Ok(mut udp) = UdpPacket::new_checked(payload) else {
        return false;
    };
    udp.swap_ports();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, NetSlice,
        PacketBuilder, SlicedPacket, TransportSlice,
    };
    use proptest::prelude::*;

    const A4: [u8; 4] = [10, 0, 0, 1];
    const B4: [u8; 4] = [93, 184, 216, 34];
    const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const B6: [u8; 16] = [
        0x26, 0x06, 0x28, 0, 0x02, 0x20, 0, 1, 0, 0, 0, 0, 0, 0, 0x0c, 0x8a,
    ];
    const PAYLOAD_SIZES: [usize; 7] = [0, 1, 2, 7, 8, 33, 1200];

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    fn echo4(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(A4, B4, 64)
            .icmpv4_echo_request(id, seq)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    fn echo6(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6(A6, B6, 64)
            .icmpv6_echo_request(id, seq)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    fn udp4(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(A4, B4, 64)
            .udp(sport, dport)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    fn udp6(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6(A6, B6, 64)
            .udp(sport, dport)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    fn tcp4() -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(A4, B4, 64)
            .tcp(40000, 443, 1, 1000)
            .write(&mut out, b"GET /")
            .unwrap();
        out
    }

    /// Runs Reflect on `bytes` in a buffer with head- and tailroom; returns the verdict and the
    /// packet after.
    fn reflect(bytes: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = PacketBuf::new(16, bytes.len().max(1), 16);
        buf.fill(16, bytes).unwrap();
        let verdict = Reflect.process(&mut buf);
        assert_eq!(buf.len(), bytes.len());
        (verdict, buf.data().to_vec())
    }

    fn assert_dropped_untouched(bytes: &[u8]) {
        assert_eq!(reflect(bytes), (Verdict::Drop, bytes.to_vec()));
    }

    /// Whether a patched checksum equals a recomputed one as a one's complement number. Where
    /// recomputation gives 0x0000 (covered data summing to one's complement zero), the patch
    /// gives the other zero, 0xffff, which verifies just the same; see
    /// [`crate::wire::update_checksum`].
    fn same_checksum(patched: u16, recomputed: u16) -> bool {
        patched == recomputed || (recomputed == 0 && patched == 0xffff)
    }

    /// Checks the IPv4 header of a reflected packet against the request's.
    fn assert_ipv4_reflected(out: &NetSlice<'_>) {
        let NetSlice::Ipv4(ip) = out else {
            panic!("not IPv4: {out:?}")
        };
        let header = ip.header();
        assert_eq!((header.source(), header.destination()), (B4, A4));
        assert_eq!(header.ttl(), 64);
        assert_eq!(
            header.header_checksum(),
            header.to_header().calc_header_checksum()
        );
    }

    fn assert_ipv6_reflected(out: &NetSlice<'_>) {
        let NetSlice::Ipv6(ip) = out else {
            panic!("not IPv6: {out:?}")
        };
        assert_eq!((ip.header().source(), ip.header().destination()), (B6, A6));
        assert_eq!(ip.header().hop_limit(), 64);
    }

    #[test]
    fn answers_icmpv4_echo_requests() {
        for len in PAYLOAD_SIZES {
            for (id, seq) in [(0, 0), (0x1234, 1), (0xffff, 0xffff)] {
                let data = payload(len);
                let (verdict, out) = reflect(&echo4(id, seq, &data));
                assert_eq!(verdict, Verdict::Forward);
                let parsed = SlicedPacket::from_ip(&out).unwrap();
                assert_ipv4_reflected(parsed.net.as_ref().unwrap());
                let Some(TransportSlice::Icmpv4(icmp)) = parsed.transport else {
                    panic!("not ICMPv4: {:?}", parsed.transport)
                };
                let reply = Icmpv4Type::EchoReply(IcmpEchoHeader { id, seq });
                assert_eq!(icmp.icmp_type(), reply);
                assert_eq!(icmp.payload(), &data[..]);
                let expected = Icmpv4Header::with_checksum(reply, &data).checksum;
                let actual = icmp.checksum();
                assert!(
                    same_checksum(actual, expected),
                    "{actual:#x} != {expected:#x}, len {len} id {id} seq {seq}"
                );
            }
        }
    }

    #[test]
    fn answers_icmpv6_echo_requests() {
        for len in PAYLOAD_SIZES {
            for (id, seq) in [(0, 0), (0x1234, 1), (0xffff, 0xffff)] {
                let data = payload(len);
                let (verdict, out) = reflect(&echo6(id, seq, &data));
                assert_eq!(verdict, Verdict::Forward);
                let parsed = SlicedPacket::from_ip(&out).unwrap();
                assert_ipv6_reflected(parsed.net.as_ref().unwrap());
                let Some(TransportSlice::Icmpv6(icmp)) = parsed.transport else {
                    panic!("not ICMPv6: {:?}", parsed.transport)
                };
                let reply = Icmpv6Type::EchoReply(IcmpEchoHeader { id, seq });
                assert_eq!(icmp.icmp_type(), reply);
                assert_eq!(icmp.payload(), &data[..]);
                let expected = Icmpv6Header::with_checksum(reply, B6, A6, &data).unwrap();
                assert_eq!(
                    icmp.checksum(),
                    expected.checksum,
                    "len {len} id {id} seq {seq}"
                );
                assert!(icmp.is_checksum_valid(B6, A6));
            }
        }
    }

    #[test]
    fn reflects_udp_over_ipv4() {
        for len in PAYLOAD_SIZES {
            let data = payload(len);
            let (verdict, out) = reflect(&udp4(5353, 53, &data));
            assert_eq!(verdict, Verdict::Forward);
            let parsed = SlicedPacket::from_ip(&out).unwrap();
            assert_ipv4_reflected(parsed.net.as_ref().unwrap());
            let Some(TransportSlice::Udp(udp)) = parsed.transport else {
                panic!("not UDP: {:?}", parsed.transport)
            };
            assert_eq!((udp.source_port(), udp.destination_port()), (53, 5353));
            assert_eq!(udp.payload(), &data[..]);
            let expected = udp
                .to_header()
                .calc_checksum_ipv4_raw(B4, A4, &data)
                .unwrap();
            assert_eq!(udp.checksum(), expected, "len {len}");
        }
    }

    #[test]
    fn reflects_udp_over_ipv6() {
        for len in PAYLOAD_SIZES {
            let data = payload(len);
            let (verdict, out) = reflect(&udp6(5353, 53, &data));
            assert_eq!(verdict, Verdict::Forward);
            let parsed = SlicedPacket::from_ip(&out).unwrap();
            assert_ipv6_reflected(parsed.net.as_ref().unwrap());
            let Some(TransportSlice::Udp(udp)) = parsed.transport else {
                panic!("not UDP: {:?}", parsed.transport)
            };
            assert_eq!((udp.source_port(), udp.destination_port()), (53, 5353));
            assert_eq!(udp.payload(), &data[..]);
            let expected = udp
                .to_header()
                .calc_checksum_ipv6_raw(B6, A6, &data)
                .unwrap();
            assert_eq!(udp.checksum(), expected, "len {len}");
        }
    }

    #[test]
    fn zero_udp_checksum_over_ipv4_stays_zero() {
        let mut request = udp4(1, 2, b"no checksum");
        request[26..28].fill(0);
        let (verdict, out) = reflect(&request);
        assert_eq!(verdict, Verdict::Forward);
        assert_eq!(&out[26..28], &[0, 0]);
        assert_eq!(&out[20..24], &[0, 2, 0, 1]);
    }

    #[test]
    fn honours_ipv4_options_and_leaves_trailing_bytes_alone() {
        // Four NOP options: IHL 6.
        let data = payload(9);
        let plain = echo4(7, 8, &data);
        let mut request = plain[..20].to_vec();
        request.extend_from_slice(&[1; 4]);
        request.extend_from_slice(&plain[20..]);
        request[0] = 0x46;
        let total_len = request.len() as u16;
        request[2..4].copy_from_slice(&total_len.to_be_bytes());
        let header = etherparse::Ipv4HeaderSlice::from_slice(&request)
            .unwrap()
            .to_header();
        request[10..12].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
        request.extend_from_slice(b"trailer");

        let (verdict, out) = reflect(&request);
        assert_eq!(verdict, Verdict::Forward);
        assert!(out.ends_with(b"trailer"));
        let parsed = SlicedPacket::from_ip(&out[..out.len() - 7]).unwrap();
        assert_ipv4_reflected(parsed.net.as_ref().unwrap());
        let Some(TransportSlice::Icmpv4(icmp)) = parsed.transport else {
            panic!("not ICMPv4: {:?}", parsed.transport)
        };
        let reply = Icmpv4Type::EchoReply(IcmpEchoHeader { id: 7, seq: 8 });
        assert_eq!(
            icmp.checksum(),
            Icmpv4Header::with_checksum(reply, &data).checksum
        );

        let mut request = udp6(1, 2, b"x");
        request.extend_from_slice(b"trailer");
        let (verdict, out) = reflect(&request);
        assert_eq!(verdict, Verdict::Forward);
        assert!(out.ends_with(b"trailer"));
    }

    /// `packet` with its IPv4 flags/fragment-offset field set and the header checksum fixed.
    fn with_fragment_field(mut packet: Vec<u8>, flags_frag: u16) -> Vec<u8> {
        packet[6..8].copy_from_slice(&flags_frag.to_be_bytes());
        let header = etherparse::Ipv4HeaderSlice::from_slice(&packet)
            .unwrap()
            .to_header();
        packet[10..12].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
        packet
    }

    /// An ICMPv6 echo request behind an 8-byte hop-by-hop header (one PadN option).
    fn echo6_behind_hop_by_hop() -> Vec<u8> {
        let plain = echo6(1, 1, b"ping");
        let mut packet = plain[..40].to_vec();
        packet[6] = 0;
        let payload_len = u16::from_be_bytes([packet[4], packet[5]]) + 8;
        packet[4..6].copy_from_slice(&payload_len.to_be_bytes());
        packet.extend_from_slice(&[protocol::ICMPV6, 0, 1, 4, 0, 0, 0, 0]);
        packet.extend_from_slice(&plain[40..]);
        packet
    }

    #[test]
    fn drops_what_it_does_not_reflect_and_leaves_it_untouched() {
        let echo = echo4(1, 1, b"ping");
        let udp = udp4(1, 2, b"data");
        let ipv4 = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut p = echo.clone();
            edit(&mut p);
            p
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("one byte", vec![0x45]),
            ("version 5", ipv4(&|p| p[0] = 0x55)),
            ("IHL < 5", ipv4(&|p| p[0] = 0x44)),
            ("IHL beyond the packet", ipv4(&|p| p[0] = 0x4f)),
            (
                "total length lies",
                ipv4(&|p| p[2..4].copy_from_slice(&200u16.to_be_bytes())),
            ),
            ("truncated", echo[..echo.len() - 1].to_vec()),
            ("ICMP header cut by total length", {
                let mut p = echo[..27].to_vec();
                p[2..4].copy_from_slice(&27u16.to_be_bytes());
                p
            }),
            ("echo reply", ipv4(&|p| p[20] = 0)),
            ("echo request with code 1", ipv4(&|p| p[21] = 1)),
            ("other ICMP type", ipv4(&|p| p[20] = 13)),
            ("TCP", tcp4()),
            ("UDP header cut by total length", {
                let mut p = udp[..27].to_vec();
                p[2..4].copy_from_slice(&27u16.to_be_bytes());
                p
            }),
            ("UDP length lies", {
                let mut p = udp.clone();
                p[24..26].copy_from_slice(&100u16.to_be_bytes());
                p
            }),
            (
                "UDP first fragment",
                with_fragment_field(udp.clone(), 0x2000),
            ),
            (
                "UDP last fragment",
                with_fragment_field(udp.clone(), 0x0003),
            ),
            ("ICMP fragment", with_fragment_field(echo.clone(), 0x2000)),
            ("ICMPv6 behind hop-by-hop", echo6_behind_hop_by_hop()),
            ("ICMPv6 echo reply", {
                let mut p = echo6(1, 1, b"pong");
                p[40] = ICMPV6_ECHO_REPLY;
                p
            }),
            ("ICMPv6 truncated", {
                let p = echo6(1, 1, b"");
                p[..p.len() - 1].to_vec()
            }),
            ("ICMPv6 header cut by payload length", {
                let mut p = echo6(1, 1, b"")[..47].to_vec();
                p[4..6].copy_from_slice(&7u16.to_be_bytes());
                p
            }),
            ("UDPv6 header cut by payload length", {
                let mut p = udp6(1, 2, b"")[..47].to_vec();
                p[4..6].copy_from_slice(&7u16.to_be_bytes());
                p
            }),
            ("IPv6 header only", udp6(1, 2, b"")[..40].to_vec()),
        ];
        for (name, packet) in cases {
            assert_eq!(reflect(&packet), (Verdict::Drop, packet.clone()), "{name}");
        }
        // The hop-by-hop case really is an echo request, as another parser reads it.
        let hbh = echo6_behind_hop_by_hop();
        let parsed = SlicedPacket::from_ip(&hbh).unwrap();
        assert!(matches!(
            parsed.transport,
            Some(TransportSlice::Icmpv6(ref icmp))
                if matches!(icmp.icmp_type(), Icmpv6Type::EchoRequest(_))
                    && icmp.is_checksum_valid(A6, B6)
        ));
        assert_dropped_untouched(&hbh);
    }

    /// A valid request of some kind Reflect handles or refuses.
    fn any_packet() -> impl Strategy<Value = Vec<u8>> {
        (
            0..6u8,
            any::<u16>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(kind, a, b, data)| match kind {
                0 => echo4(a, b, &data),
                1 => echo6(a, b, &data),
                2 => udp4(a, b, &data),
                3 => udp6(a, b, &data),
                4 => tcp4(),
                _ => echo6_behind_hop_by_hop(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn arbitrary_bytes_never_panic_and_drops_are_untouched(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            version in prop::sample::select(vec![None, Some(0x45u8), Some(0x60)]),
        ) {
            let mut bytes = bytes;
            if let (Some(v), Some(first)) = (version, bytes.first_mut()) {
                *first = v;
            }
            let _ = crate::wire::flow_hash(&bytes);
            let (verdict, out) = reflect(&bytes);
            prop_assert_eq!(out.len(), bytes.len());
            if verdict == Verdict::Drop {
                prop_assert_eq!(out, bytes);
            }
        }

        #[test]
        fn mutated_packets_never_panic_and_drops_are_untouched(
            packet in any_packet(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut packet = packet;
            for (at, mask) in flips {
                let at = at.index(packet.len());
                packet[at] ^= mask;
            }
            if let Some(cut) = cut {
                packet.truncate(cut.index(packet.len() + 1));
            }
            let _ = check_ip(&packet);
            let _ = crate::wire::flow_hash(&packet);
            let (verdict, out) = reflect(&packet);
            prop_assert_eq!(out.len(), packet.len());
            if verdict == Verdict::Drop {
                prop_assert_eq!(out, packet);
            }
        }

        #[test]
        fn replies_to_valid_requests_have_valid_checksums(
            id in any::<u16>(), seq in any::<u16>(),
            data in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let (_, out) = reflect(&echo4(id, seq, &data));
            let reply = Icmpv4Type::EchoReply(IcmpEchoHeader { id, seq });
            let expected = Icmpv4Header::with_checksum(reply, &data).checksum;
            prop_assert!(same_checksum(u16::from_be_bytes([out[22], out[23]]), expected));

            let (_, out) = reflect(&echo6(id, seq, &data));
            let parsed = SlicedPacket::from_ip(&out).unwrap();
            let Some(TransportSlice::Icmpv6(icmp)) = parsed.transport else {
                panic!("not ICMPv6")
            };
            prop_assert!(icmp.is_checksum_valid(B6, A6));

            // UDP is its own inverse.
            let request = udp6(id, seq, &data);
            let (_, once) = reflect(&request);
            prop_assert_eq!(reflect(&once), (Verdict::Forward, request));
        }
    }
}
