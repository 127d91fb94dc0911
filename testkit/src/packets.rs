//! Packets to feed the engine, built with etherparse (an oracle independent of tunpipe's own
//! parsing and checksums).

/// An IPv4/UDP packet from `src`:`sport` to `dst`:`dport` carrying `body`.
pub fn udp4_packet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, body: &[u8]) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ipv4(src, dst, 64).udp(sport, dport);
    let mut out = Vec::with_capacity(builder.size(body.len()));
    builder
        .write(&mut out, body)
        .expect("writing into a Vec cannot fail");
    out
}

/// An IPv4/UDP packet from 10.0.0.1:`sport` to 10.0.0.2:`dport` carrying `seq` in the first
/// 8 payload bytes, padded to `payload` bytes (at least 8).
pub fn udp4(sport: u16, dport: u16, seq: u64, payload: usize) -> Vec<u8> {
    let mut body = seq.to_be_bytes().to_vec();
    body.resize(payload.max(8), 0xab);
    udp4_packet([10, 0, 0, 1], [10, 0, 0, 2], sport, dport, &body)
}

/// The (source port, destination port, sequence) of a UDP packet built by [`udp4`] (or
/// reflected from one).
pub fn udp4_seq(packet: &[u8]) -> (u16, u16, u64) {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let sport = u16::from_be_bytes([packet[ihl], packet[ihl + 1]]);
    let dport = u16::from_be_bytes([packet[ihl + 2], packet[ihl + 3]]);
    let seq = u64::from_be_bytes(packet[ihl + 8..ihl + 16].try_into().unwrap());
    (sport, dport, seq)
}
