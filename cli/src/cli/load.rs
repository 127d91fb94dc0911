//! Closed-loop load: a window of packets in flight, each answered (by `reflect`) before the
//! next one takes its place, with the client-side round-trip time of every packet.
//!
//! Two transports carry it: a UDP socket through the kernel and a real TUN, and the
//! in-memory device's peer ends with hand-built IPv4/UDP packets.

use hdrhistogram::Histogram;
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};
use tunpipe::device::{PeerReceiver, PeerSendError, PeerSender};

/// Bytes of UDP payload per packet; the first 8 carry the sequence number.
pub const PAYLOAD: usize = 64;
/// Packets in flight.
pub const WINDOW: usize = 32;
/// How long the client waits for any reply before it counts the whole window as lost.
const LOSS_TIMEOUT: Duration = Duration::from_millis(200);

/// One leg of the loop: sends numbered requests and receives the reflected replies.
pub trait Transport {
    /// Sends request `seq`. An error is counted and the request treated as never sent.
    fn send(&mut self, seq: u64) -> io::Result<()>;
    /// The sequence number of the next reply, or `None` when none came by `deadline`.
    fn recv(&mut self, deadline: Instant) -> io::Result<Option<u64>>;
}

/// What a closed loop measured.
pub struct LoadResult {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub send_errors: u64,
    pub elapsed: Duration,
    /// Client-side round-trip times, in nanoseconds.
    pub rtt: Histogram<u64>,
}

impl LoadResult {
    /// Round trips per second: each is one packet into the engine and one out.
    pub fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A progress report, once per second.
pub struct Tick<'a> {
    pub elapsed: Duration,
    /// Round trips per second over the last interval.
    pub rate: f64,
    /// Round-trip times over the last interval.
    pub rtt: &'a Histogram<u64>,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Runs the loop until `done()` says so (checked between packets), then waits briefly for
/// the replies still in flight.
pub fn closed_loop(
    t: &mut impl Transport,
    done: impl Fn(Duration) -> bool,
    mut progress: impl FnMut(&Tick<'_>),
) -> io::Result<LoadResult> {
    const SLOTS: usize = 4096; // > WINDOW: a slot is reused only long after its packet
    let mut slots: Vec<Option<(u64, Instant)>> = vec![None; SLOTS];
    let mut rtt = histogram();
    let mut interval = histogram();
    let (mut sent, mut received, mut lost, mut send_errors) = (0u64, 0u64, 0u64, 0u64);
    let mut in_flight = 0usize;
    let mut next_seq = 0u64;
    let start = Instant::now();
    let mut next_tick = start + Duration::from_secs(1);
    let (mut tick_start, mut tick_received) = (start, 0u64);
    let mut draining_since = None;
    loop {
        let now = Instant::now();
        if draining_since.is_none() && done(now - start) {
            draining_since = Some(now);
        }
        if let Some(since) = draining_since {
            if in_flight == 0 || now - since > LOSS_TIMEOUT {
                break;
            }
        }
        while draining_since.is_none() && in_flight < WINDOW {
            match t.send(next_seq) {
                Ok(()) => {
                    slots[next_seq as usize % SLOTS] = Some((next_seq, Instant::now()));
                    in_flight += 1;
                    sent += 1;
                }
                Err(_) => send_errors += 1,
            }
            next_seq += 1;
            if send_errors > 0 && in_flight == 0 {
                // Every send fails: do not spin; the timeout below paces the retries.
                break;
            }
        }
        match t.recv(Instant::now() + LOSS_TIMEOUT)? {
            Some(seq) => {
                let slot = &mut slots[seq as usize % SLOTS];
                if let Some((s, at)) = *slot {
                    if s == seq {
                        let ns = at.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
                        let _ = rtt.record(ns.max(1));
                        let _ = interval.record(ns.max(1));
                        *slot = None;
                        in_flight -= 1;
                        received += 1;
                    }
                }
            }
            None => {
                // Nothing came back in time: give up on the whole window and refill it.
                lost += in_flight as u64;
                in_flight = 0;
                slots.iter_mut().for_each(|s| *s = None);
            }
        }
        let now = Instant::now();
        if now >= next_tick && draining_since.is_none() {
            let secs = (now - tick_start).as_secs_f64();
            progress(&Tick {
                elapsed: now - start,
                rate: (received - tick_received) as f64 / secs,
                rtt: &interval,
            });
            interval.reset();
            tick_start = now;
            tick_received = received;
            next_tick += Duration::from_secs(1);
        }
    }
    lost += in_flight as u64;
    Ok(LoadResult {
        sent,
        received,
        lost,
        send_errors,
        elapsed: draining_since.unwrap_or_else(Instant::now) - start,
        rtt,
    })
}

/// UDP through the kernel: a socket on the TUN's address, talking to an address behind it.
pub struct UdpTransport {
    socket: UdpSocket,
    buf: [u8; 2048],
}

impl UdpTransport {
    /// Binds to `local` (port chosen by the kernel) and connects to `remote`, so only its
    /// replies are received.
    pub fn new(local: Ipv4Addr, remote: (Ipv4Addr, u16)) -> io::Result<Self> {
        let socket = UdpSocket::bind((local, 0))?;
        socket.connect(remote)?;
        Ok(UdpTransport {
            socket,
            buf: [0; 2048],
        })
    }
}

impl Transport for UdpTransport {
    fn send(&mut self, seq: u64) -> io::Result<()> {
        let mut payload = [0xabu8; PAYLOAD];
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        self.socket.send(&payload).map(|_| ())
    }

    fn recv(&mut self, deadline: Instant) -> io::Result<Option<u64>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            match self.socket.recv(&mut self.buf) {
                Ok(n) if n >= 8 => {
                    let seq = u64::from_be_bytes(self.buf[..8].try_into().expect("8 bytes"));
                    return Ok(Some(seq));
                }
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                // An ICMP error from an earlier send (say, unreachable) surfaces here once.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Addresses and ports of the hand-built packets on the in-memory device.
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const CLIENT_PORT: u16 = 40_000;
const SERVER_PORT: u16 = 9;
const HEADERS: usize = 20 + 8;

/// The in-memory device's peer ends, speaking hand-built IPv4/UDP.
pub struct MemoryTransport {
    tx: PeerSender,
    rx: PeerReceiver,
    packet: [u8; HEADERS + PAYLOAD],
}

impl MemoryTransport {
    pub fn new(tx: PeerSender, rx: PeerReceiver) -> Self {
        MemoryTransport {
            tx,
            rx,
            packet: udp4_packet(),
        }
    }
}

/// An IPv4/UDP packet from CLIENT:CLIENT_PORT to SERVER:SERVER_PORT with a valid header
/// checksum and no UDP checksum (0: allowed over IPv4). `reflect` only swaps addresses and
/// ports, which leaves both valid.
fn udp4_packet() -> [u8; HEADERS + PAYLOAD] {
    let mut p = [0xabu8; HEADERS + PAYLOAD];
    let total = (HEADERS + PAYLOAD) as u16;
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, // version 4, IHL 5, total length below
        0, 0, 0x40, 0, // id 0, don't fragment
        64, 17, 0, 0, // TTL, UDP, checksum below
        0, 0, 0, 0, 0, 0, 0, 0, // addresses below
    ]);
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[12..16].copy_from_slice(&CLIENT.octets());
    p[16..20].copy_from_slice(&SERVER.octets());
    let sum = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    p[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    p[22..24].copy_from_slice(&SERVER_PORT.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    p[26..28].copy_from_slice(&[0, 0]);
    p
}

/// The sequence number of a reflected reply: from SERVER:SERVER_PORT to our port.
fn reply_seq(p: &[u8]) -> Option<u64> {
    let ok = p.len() >= HEADERS + 8
        && p[0] == 0x45
        && p[9] == 17
        && p[12..16] == SERVER.octets()
        && p[16..20] == CLIENT.octets()
        && p[20..22] == SERVER_PORT.to_be_bytes()
        && p[22..24] == CLIENT_PORT.to_be_bytes();
    ok.then(|| u64::from_be_bytes(p[HEADERS..HEADERS + 8].try_into().expect("8 bytes")))
}

impl Transport for MemoryTransport {
    fn send(&mut self, seq: u64) -> io::Result<()> {
        self.packet[HEADERS..HEADERS + 8].copy_from_slice(&seq.to_be_bytes());
        loop {
            match self.tx.send(&self.packet) {
                Ok(()) => return Ok(()),
                // The window is far smaller than the device's slots, so this is brief.
                Err(PeerSendError::Full) => std::thread::yield_now(),
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{e:?}"),
                    ))
                }
            }
        }
    }

    fn recv(&mut self, deadline: Instant) -> io::Result<Option<u64>> {
        let mut idle = 0u32;
        loop {
            match self.rx.recv_with(reply_seq) {
                Some(Some(seq)) => return Ok(Some(seq)),
                Some(None) => continue, // not one of ours
                None => {
                    // Spin briefly, then yield: the engine's threads need the cores too.
                    idle += 1;
                    if idle < 64 {
                        std::hint::spin_loop();
                    } else {
                        if Instant::now() >= deadline {
                            return Ok(None);
                        }
                        std::thread::yield_now();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_built_packet_has_a_valid_header_checksum_and_reflects_to_a_reply() {
        let mut p = udp4_packet();
        let sum: u32 = p[..20]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
        p[HEADERS..HEADERS + 8].copy_from_slice(&7u64.to_be_bytes());
        assert_eq!(reply_seq(&p), None, "a request is not a reply");
        // What reflect does: swap addresses and ports.
        let (src, dst) = (p[12..16].to_vec(), p[16..20].to_vec());
        p[12..16].copy_from_slice(&dst);
        p[16..20].copy_from_slice(&src);
        let (sp, dp) = (p[20..22].to_vec(), p[22..24].to_vec());
        p[20..22].copy_from_slice(&dp);
        p[22..24].copy_from_slice(&sp);
        assert_eq!(reply_seq(&p), Some(7));
        assert_eq!(reply_seq(&p[..30]), None);
    }
}
