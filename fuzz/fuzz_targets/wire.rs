//! The checked wire views over arbitrary bytes: `check_ip`, `flow_hash`, `checksum` and every
//! view constructor. Nothing may panic or read out of bounds; a view that accepts a buffer
//! must agree with `check_ip` and keep every accessor inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunpipe::wire::{
    check_ip, checksum, flow_hash, IcmpPacket, IpVersion, Ipv4Packet, Ipv6Packet, UdpPacket,
};

fuzz_target!(|data: &[u8]| {
    let version = check_ip(data);
    let hash = flow_hash(data);
    assert_eq!(hash, flow_hash(data), "flow_hash is deterministic");
    if version.is_err() {
        assert_eq!(hash, 0, "malformed packets hash to 0");
    }
    let _ = checksum(data);

    if let Ok(ip) = Ipv4Packet::new_checked(data) {
        assert_eq!(version, Ok(IpVersion::V4));
        assert!(ip.header_len() <= ip.total_len() && ip.total_len() <= data.len());
        assert_eq!(ip.payload().len(), ip.total_len() - ip.header_len());
        let _ = (
            ip.protocol(),
            ip.is_fragment(),
            ip.src_addr(),
            ip.dst_addr(),
        );
    }
    if let Ok(ip) = Ipv6Packet::new_checked(data) {
        assert_eq!(version, Ok(IpVersion::V6));
        assert_eq!(ip.payload().len(), ip.payload_len());
        assert!(40 + ip.payload_len() <= data.len());
        let _ = (ip.next_header(), ip.src_addr(), ip.dst_addr());
    }
    if let Ok(udp) = UdpPacket::new_checked(data) {
        let _ = (udp.src_port(), udp.dst_port(), udp.checksum());
    }
    if let Ok(icmp) = IcmpPacket::new_checked(data) {
        let _ = (icmp.msg_type(), icmp.msg_code(), icmp.checksum());
    }
});
