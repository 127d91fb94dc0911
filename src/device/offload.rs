//! Linux TUN offload (`IFF_VNET_HDR` with TSO/GSO), for TUNs tunpipe creates with tun-rs's
//! `offload(true)`: every frame on the fd starts with a virtio-net header, a read may return a
//! TCP (or UDP) segment of up to 64 KiB that the kernel did not cut into packets, and a write
//! may hand the kernel such a segment.
//!
//! - Reading, [`Splitter`]: a frame is read into one 64 KiB buffer per reader; a segment is
//!   cut into packets (tun-rs's `gso_split`, which also completes their checksums), and a
//!   packet whose checksum the kernel left partial (`NEEDS_CSUM`) gets it completed, so the
//!   stage sees ordinary packets.
//! - Writing, [`Coalescer`]: consecutive packets of one TCP flow, in order and of one size
//!   (the last may be shorter), become one segment in one 64 KiB buffer per writer, written
//!   with one system call; anything else is written as it is. A write carries a known run of
//!   packets. A failed write of a run says nothing of which packet was bad, so the run then
//!   goes one packet per write: only the bad packet is lost (a write error for that packet),
//!   the others are written, and the run costs one failed write more than its packets.
//!
//! An adopted fd never has a virtio-net header (validation refuses one), so hosts' TUNs keep
//! the plain path.

use super::ErrorClass;
use crate::wire::{fold, ones_sum};
use std::io;
use tun_rs::{
    gso_split, VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN,
};

/// The largest frame: a virtio-net header and an IP packet of 64 KiB.
const MAX_FRAME: usize = VIRTIO_NET_HDR_LEN + 65_535;
/// No GSO in this frame.
const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum is partial (from `csum_start`).
const NEEDS_CSUM: u8 = 1;
/// Most packets one segment is cut into (a 64 KiB TCP segment at an MSS of 536 is 123).
const MAX_SEGMENTS: usize = 128;
/// TCP flags a coalesced run may carry: ACK on every packet, PSH on the last only.
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// The reading side: the frame just read, and the packets it held that are not handed on
/// yet.
pub(crate) struct Splitter {
    frame: Box<[u8]>,
    segments: Vec<Box<[u8]>>,
    sizes: Box<[usize]>,
    /// Segments `next..count` wait to be handed on.
    next: usize,
    count: usize,
    /// The frame held one packet, which stays where it was read (`sizes[0]` bytes after the
    /// header) instead of being copied into `segments[0]` and then again into a packet.
    in_frame: bool,
}

impl Splitter {
    /// A splitter for a TUN whose packets are at most `mtu` bytes.
    pub(crate) fn new(mtu: usize) -> Self {
        let area = mtu.max(1280) + 1;
        Splitter {
            frame: vec![0; MAX_FRAME].into_boxed_slice(),
            segments: (0..MAX_SEGMENTS)
                .map(|_| vec![0; area].into_boxed_slice())
                .collect(),
            sizes: vec![0; MAX_SEGMENTS].into_boxed_slice(),
            next: 0,
            count: 0,
            in_frame: false,
        }
    }

    /// Where the next frame is read.
    pub(crate) fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.frame
    }

    /// Takes the frame of `len` bytes just read: its packets wait to be handed on. A frame
    /// that cannot be understood becomes one empty packet, which the reader drops as
    /// malformed (counted, as any bad packet is).
    pub(crate) fn take(&mut self, len: usize) {
        self.next = 0;
        self.count = 1;
        self.in_frame = false;
        let Ok(header) = VirtioNetHdr::decode(&self.frame[..len]) else {
            self.sizes[0] = 0;
            return;
        };
        let packet = &mut self.frame[VIRTIO_NET_HDR_LEN..len];
        if header.gso_type == GSO_NONE {
            if header.flags & NEEDS_CSUM != 0
                && !complete_checksum(packet, header.csum_start, header.csum_offset)
            {
                self.sizes[0] = 0;
                return;
            }
            // Longer than a segment's area: handed on cut, as a split segment would be (and
            // seen as oversize either way).
            self.sizes[0] = packet.len().min(self.segments[0].len());
            self.in_frame = true;
            return;
        }
        let v6 = packet.first().is_some_and(|b| b >> 4 == 6);
        match gso_split(packet, header, &mut self.segments, &mut self.sizes, 0, v6) {
            Ok(n) => self.count = n,
            Err(e) => {
                log::debug!("TUN offload: a segment that cannot be split ({e}): dropped");
                self.sizes[0] = 0;
            }
        }
    }

    /// Copies the waiting packets into `areas` (each through `put`, which gets an area's
    /// index and the packet); returns how many.
    pub(crate) fn drain(&mut self, slots: usize, mut put: impl FnMut(usize, &[u8])) -> usize {
        let mut handed = 0;
        while handed < slots && self.next < self.count {
            let size = self.sizes[self.next];
            let packet = if self.in_frame {
                &self.frame[VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + size]
            } else {
                &self.segments[self.next][..size]
            };
            put(handed, packet);
            self.next += 1;
            handed += 1;
        }
        handed
    }
}

/// Completes a partial transport checksum: the field holds the pseudo-header sum, and the
/// sum of everything from `start` is added. False when the offsets are outside the packet.
fn complete_checksum(packet: &mut [u8], start: u16, offset: u16) -> bool {
    let (start, at) = (usize::from(start), usize::from(start) + usize::from(offset));
    if start > packet.len() || at + 2 > packet.len() {
        return false;
    }
    let partial = u16::from_be_bytes([packet[at], packet[at + 1]]);
    packet[at..at + 2].fill(0);
    let sum = !fold(ones_sum(&packet[start..], u64::from(partial)));
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// The writing side: one frame buffer, into which a run of packets is built.
pub(crate) struct Coalescer {
    frame: Box<[u8]>,
    /// Packets of a run whose coalesced write failed that are still to go one per write.
    singles: usize,
}

/// A TCP packet that may join a run: where its headers end, its payload, and what must
/// match.
#[derive(Clone, Copy)]
struct Segment {
    v6: bool,
    ip_len: usize,
    headers: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

impl Segment {
    /// `packet` as a run member: IPv4 without options or fragmentation, or IPv6 without
    /// extension headers; TCP with ACK (and maybe PSH) and nothing else, carrying data.
    fn of(packet: &[u8]) -> Option<Segment> {
        let (v6, ip_len) = match packet.first()? >> 4 {
            4 => {
                let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
                let fragment = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]);
                let simple = packet[0] & 0x0f == 5 && fragment & 0x3fff == 0 && packet[9] == 6;
                (simple && total == packet.len()).then_some((false, 20))?
            }
            6 => {
                let payload = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
                (*packet.get(6)? == 6 && 40 + payload == packet.len()).then_some((true, 40))?
            }
            _ => return None,
        };
        let tcp = packet.get(ip_len..)?;
        let tcp_len = usize::from(*tcp.get(12)? >> 4) * 4;
        let flags = *tcp.get(13)?;
        if tcp_len < 20 || tcp_len > tcp.len() || flags & !(ACK | PSH) != 0 || flags & ACK == 0 {
            return None;
        }
        let payload = tcp.len() - tcp_len;
        (payload > 0).then_some(Segment {
            v6,
            ip_len,
            headers: ip_len + tcp_len,
            payload,
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            flags,
        })
    }

    /// Whether `b` has `a`'s IP and TCP headers but for the length, checksum, sequence
    /// number and flags (and, for IPv4, the identification): the kernel's own rule for
    /// merging.
    fn same_flow(a: &[u8], sa: Segment, b: &[u8], sb: Segment) -> bool {
        if sa.v6 != sb.v6 || sa.headers != sb.headers {
            return false;
        }
        let ip_same = if sa.v6 {
            a[..4] == b[..4] && a[6..40] == b[6..40]
        } else {
            a[0..2] == b[0..2]
                && a[6] & 0x40 == b[6] & 0x40
                && a[8..10] == b[8..10]
                && a[12..20] == b[12..20]
        };
        let (ta, tb) = (&a[sa.ip_len..sa.headers], &b[sb.ip_len..sb.headers]);
        // Ports, acknowledgement, header length, window, options: all equal.
        ip_same
            && ta[..4] == tb[..4]
            && ta[8..13] == tb[8..13]
            && ta[14..16] == tb[14..16]
            && ta[20..] == tb[20..]
    }
}

impl Coalescer {
    pub(crate) fn new() -> Self {
        Coalescer {
            frame: vec![0; MAX_FRAME].into_boxed_slice(),
            singles: 0,
        }
    }

    /// Writes the first packets of `packets` (through `data`, which gives a packet's bytes)
    /// with one call of `write`, which must write the whole frame or fail: a run of one TCP
    /// flow as one segment, or one packet. Returns how many packets went (0 for no packets);
    /// an error is `packets[0]`'s, as [`super::TxHalf::send_batch`] says.
    ///
    /// A run whose write fails with a per-packet error (`classify`) is not retried whole: its
    /// first packet is written alone at once (that write's result is this call's), and the
    /// rest of the run goes one packet per call, so a bad packet costs itself only, and the
    /// run one failed write and one copy of each packet more.
    pub(crate) fn write<'a, P>(
        &mut self,
        packets: &'a [P],
        data: impl Fn(&'a P) -> &'a [u8],
        mut write: impl FnMut(&[u8]) -> io::Result<()>,
        classify: impl Fn(&io::Error) -> ErrorClass,
    ) -> io::Result<usize> {
        if self.singles > 0 {
            let (frame, carried) = self.build(&packets[..packets.len().min(1)], &data);
            if carried == 0 {
                return Ok(0);
            }
            let written = write(frame);
            if !matches!(&written, Err(e) if classify(e) == ErrorClass::Retry) {
                self.singles -= 1;
            }
            return written.map(|()| 1);
        }
        let (frame, carried) = self.build(packets, &data);
        match write(frame) {
            Ok(()) => Ok(carried),
            Err(e) if carried > 1 && classify(&e) == ErrorClass::PerPacket => {
                log::debug!("TUN offload: a write of {carried} packets failed ({e}); one by one");
                self.singles = carried - 1;
                let (frame, _) = self.build(&packets[..1], &data);
                write(frame).map(|()| 1)
            }
            Err(e) => Err(e),
        }
    }

    /// Builds the frame for the first packets of `packets` (through `data`, which gives a
    /// packet's bytes): a run of one TCP flow as one segment, or the first packet alone.
    /// Returns the frame and how many packets it carries (0 for no packets).
    pub(crate) fn build<'a, P>(
        &mut self,
        packets: &'a [P],
        data: impl Fn(&'a P) -> &'a [u8],
    ) -> (&[u8], usize) {
        let Some(first) = packets.first().map(&data) else {
            return (&self.frame[..0], 0);
        };
        let run = Segment::of(first).map_or(1, |head| {
            let mut prev = head;
            let mut total = first.len();
            let mut count = 1;
            for next in packets[1..].iter().map(&data) {
                let Some(seg) = Segment::of(next) else { break };
                let follows = seg.seq == prev.seq.wrapping_add(prev.payload as u32);
                let fits = total + seg.payload <= 65_535;
                if prev.flags & PSH != 0
                    || prev.payload != head.payload
                    || seg.payload > head.payload
                    || !follows
                    || !fits
                    || !Segment::same_flow(first, head, next, seg)
                {
                    break;
                }
                total += seg.payload;
                prev = seg;
                count += 1;
            }
            count
        });
        let body = VIRTIO_NET_HDR_LEN;
        if run == 1 {
            VirtioNetHdr::default()
                .encode(&mut self.frame)
                .expect("the frame holds a header");
            let n = first.len().min(MAX_FRAME - body);
            self.frame[body..body + n].copy_from_slice(&first[..n]);
            return (&self.frame[..body + n], 1);
        }
        let head = Segment::of(first).expect("a run starts with a segment");
        let mut at = body + head.headers;
        self.frame[body..at].copy_from_slice(&first[..head.headers]);
        let mut last_flags = head.flags;
        for packet in packets[..run].iter().map(&data) {
            let seg = Segment::of(packet).expect("a run holds segments");
            self.frame[at..at + seg.payload].copy_from_slice(&packet[seg.headers..]);
            at += seg.payload;
            last_flags = seg.flags;
        }
        let ip = &mut self.frame[body..at];
        let length = ip.len();
        if head.v6 {
            ip[4..6].copy_from_slice(&((length - 40) as u16).to_be_bytes());
        } else {
            ip[2..4].copy_from_slice(&(length as u16).to_be_bytes());
            ip[10..12].fill(0);
            let header_sum = !fold(ones_sum(&ip[..20], 0));
            ip[10..12].copy_from_slice(&header_sum.to_be_bytes());
        }
        // The segment's flags are its last packet's (PSH, if any, ends a run).
        ip[head.ip_len + 13] = last_flags;
        // A partial checksum: the pseudo-header's sum, which the kernel completes for each
        // packet it cuts.
        let addresses = if head.v6 { &ip[8..40] } else { &ip[12..20] };
        let transport = (length - head.ip_len) as u64;
        let pseudo = fold(ones_sum(addresses, 6 + transport));
        ip[head.ip_len + 16..head.ip_len + 18].copy_from_slice(&pseudo.to_be_bytes());
        VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: if head.v6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            },
            hdr_len: head.headers as u16,
            gso_size: head.payload as u16,
            csum_start: head.ip_len as u16,
            csum_offset: 16,
        }
        .encode(&mut self.frame)
        .expect("the frame holds a header");
        (&self.frame[..at], run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    /// A TCP segment of a flow from 10.0.0.1:1000 to 10.0.0.2:2000 (or IPv6), built and
    /// checksummed by etherparse (an independent implementation).
    fn tcp(v6: bool, seq: u32, payload: &[u8], psh: bool, ip_id: u16) -> Vec<u8> {
        let builder = if v6 {
            PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            let mut ip = etherparse::Ipv4Header::new(
                0,
                64,
                etherparse::IpNumber::TCP,
                [10, 0, 0, 1],
                [10, 0, 0, 2],
            )
            .unwrap();
            ip.identification = ip_id;
            ip.dont_fragment = true;
            PacketBuilder::ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        };
        let mut builder = builder.tcp(1000, 2000, seq, 4096).ack(77);
        if psh {
            builder = builder.psh();
        }
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, payload).unwrap();
        out
    }

    fn payload(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|k| (i * 7 + k) as u8).collect()
    }

    /// A stream of `n` segments of `mss` bytes (the last `last` bytes, with PSH).
    fn stream(v6: bool, n: usize, mss: usize, last: usize) -> Vec<Vec<u8>> {
        let mut seq = 1000u32;
        (0..n)
            .map(|i| {
                let len = if i + 1 == n { last } else { mss };
                let p = tcp(v6, seq, &payload(i, len), i + 1 == n, 500 + i as u16);
                seq += len as u32;
                p
            })
            .collect()
    }

    /// Splits a frame the way the kernel would hand it to a reader.
    fn split(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
        let mut splitter = Splitter::new(mtu);
        splitter.frame_mut()[..frame.len()].copy_from_slice(frame);
        splitter.take(frame.len());
        let mut out = Vec::new();
        splitter.drain(usize::MAX, |_, p| out.push(p.to_vec()));
        out
    }

    #[test]
    fn a_tcp_run_becomes_one_segment_that_splits_back_into_the_same_packets() {
        for v6 in [false, true] {
            let packets = stream(v6, 20, 1400, 300);
            let mut coalescer = Coalescer::new();
            let (frame, carried) = coalescer.build(&packets, |p| p.as_slice());
            assert_eq!(carried, 20);
            let header = VirtioNetHdr::decode(frame).unwrap();
            assert_eq!(header.gso_size, 1400);
            assert_eq!(header.flags, NEEDS_CSUM);
            let back = split(frame, 1500);
            assert_eq!(back.len(), 20, "v6 {v6}");
            for (i, (got, want)) in back.iter().zip(&packets).enumerate() {
                // The independent parser reads the same packet, with valid checksums.
                let sliced = SlicedPacket::from_ip(got).unwrap();
                let Some(TransportSlice::Tcp(t)) = sliced.transport else {
                    panic!("segment {i} is no TCP");
                };
                let ok = match &sliced.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) => {
                        let h = ip.header();
                        t.calc_checksum_ipv4(h.source(), h.destination()).unwrap() == t.checksum()
                    }
                    Some(etherparse::NetSlice::Ipv6(ip)) => {
                        let h = ip.header();
                        t.calc_checksum_ipv6(h.source(), h.destination()).unwrap() == t.checksum()
                    }
                    _ => false,
                };
                assert!(ok, "segment {i}: TCP checksum");
                assert_eq!(got, want, "segment {i}, v6 {v6}");
            }
        }
    }

    /// A write that fails, as a kernel refusing a packet would (EINVAL), when the frame holds
    /// the bad packet, and otherwise delivers the frame's packets; it counts writes and bytes.
    struct FaultyWrite {
        bad: Vec<u8>,
        delivered: Vec<Vec<u8>>,
        writes: usize,
        bytes: usize,
    }

    impl FaultyWrite {
        fn write(&mut self, frame: &[u8]) -> io::Result<()> {
            self.writes += 1;
            self.bytes += frame.len();
            let packets = split(frame, 1500);
            if packets.contains(&self.bad) {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.delivered.extend(packets);
            Ok(())
        }
    }

    #[test]
    fn a_bad_packet_in_a_coalesced_run_costs_only_itself() {
        let n = 40;
        for v6 in [false, true] {
            for bad in [0, 1, 17, n - 2, n - 1] {
                let packets = stream(v6, n, 1400, 1400);
                let mut coalescer = Coalescer::new();
                let mut sink = FaultyWrite {
                    bad: packets[bad].clone(),
                    delivered: Vec::new(),
                    writes: 0,
                    bytes: 0,
                };
                // The writer's loop (`actor::writer`): an error is the first packet's, which
                // is counted lost; the others go again with the next call.
                let (mut next, mut lost, mut calls) = (0, Vec::new(), 0);
                while next < n {
                    calls += 1;
                    assert!(calls <= 4 * n, "the writer loops (bad {bad})");
                    match coalescer.write(
                        &packets[next..],
                        |p| p.as_slice(),
                        |frame| sink.write(frame),
                        crate::device::classify,
                    ) {
                        Ok(k) => {
                            assert!(k > 0);
                            next += k;
                        }
                        Err(e) => {
                            assert_eq!(crate::device::classify(&e), ErrorClass::PerPacket);
                            lost.push(next);
                            next += 1;
                        }
                    }
                }
                let want: Vec<Vec<u8>> = packets
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != bad)
                    .map(|(_, p)| p.clone())
                    .collect();
                assert_eq!(lost, vec![bad], "v6 {v6}: only the bad packet is lost");
                assert_eq!(sink.delivered, want, "v6 {v6}, bad {bad}: the rest arrive");
                // Linear: the failed run once, then each packet once; the frames' bytes at
                // most twice the packets' (plus a virtio-net header per write).
                let total: usize = packets.iter().map(Vec::len).sum();
                assert!(
                    sink.writes <= n + 2,
                    "{} writes for {n} packets",
                    sink.writes
                );
                assert!(
                    sink.bytes <= 2 * total + sink.writes * VIRTIO_NET_HDR_LEN,
                    "{} bytes written for {total}",
                    sink.bytes
                );
            }
        }
    }

    #[test]
    fn runs_end_where_the_kernel_would_not_merge() {
        let mut coalescer = Coalescer::new();
        let base = stream(false, 4, 1000, 1000);
        let run = |packets: &[Vec<u8>], c: &mut Coalescer| c.build(packets, |p| p.as_slice()).1;
        // A gap in the sequence numbers.
        let mut gap = base.clone();
        gap[2] = tcp(false, 1000 + 3000, &payload(2, 1000), false, 502);
        assert_eq!(run(&gap, &mut coalescer), 2);
        // PSH in the middle ends the run after it.
        let mut push = base.clone();
        push[1] = tcp(false, 2000, &payload(1, 1000), true, 501);
        assert_eq!(run(&push, &mut coalescer), 2);
        // A shorter packet can only be last.
        let mut short = base.clone();
        short[1] = tcp(false, 2000, &payload(1, 500), false, 501);
        assert_eq!(run(&short, &mut coalescer), 2);
        // Another flow between.
        let mut other = base.clone();
        other[1] = tcp(true, 2000, &payload(1, 1000), false, 0);
        assert_eq!(run(&other, &mut coalescer), 1);
        // Not TCP: alone, with an empty header.
        let udp = {
            let builder = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2);
            let mut out = Vec::new();
            builder.write(&mut out, b"hello").unwrap();
            out
        };
        let (frame, carried) = coalescer.build(std::slice::from_ref(&udp), |p| p.as_slice());
        assert_eq!(carried, 1);
        assert_eq!(&frame[VIRTIO_NET_HDR_LEN..], &udp[..]);
        assert!(frame[..VIRTIO_NET_HDR_LEN].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_partial_checksum_from_the_kernel_is_completed() {
        // A UDP packet whose checksum field holds only the pseudo-header sum, as the kernel
        // hands it with NEEDS_CSUM.
        let builder = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(53, 4000);
        let mut packet = Vec::new();
        builder.write(&mut packet, b"a reply").unwrap();
        let want = packet.clone();
        let udp_len = (packet.len() - 20) as u64;
        let pseudo = fold(ones_sum(&packet[12..20], 17 + udp_len));
        packet[26..28].copy_from_slice(&pseudo.to_be_bytes());
        let mut frame = vec![0u8; VIRTIO_NET_HDR_LEN];
        VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 20,
            csum_offset: 6,
        }
        .encode(&mut frame)
        .unwrap();
        frame.extend_from_slice(&packet);
        assert_eq!(split(&frame, 1500), vec![want]);
        // Offsets outside the packet: dropped as an empty packet.
        VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 2000,
            csum_offset: 6,
        }
        .encode(&mut frame)
        .unwrap();
        assert_eq!(split(&frame, 1500), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn a_whole_packet_is_handed_on_as_read_and_one_past_the_mtu_is_cut() {
        for (len, handed) in [(1400, 1400), (1600, 1501)] {
            let mut frame = vec![0u8; VIRTIO_NET_HDR_LEN];
            frame.extend((0..len).map(|i| i as u8));
            let packets = split(&frame, 1500);
            assert_eq!(
                packets,
                vec![frame[VIRTIO_NET_HDR_LEN..][..handed].to_vec()]
            );
        }
    }
}
