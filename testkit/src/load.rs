//! UDP load through a TUN, from the kernel's own sockets: a closed-loop client that measures
//! round trips (the benches), and an open-loop flood (benches and tests).

use crate::report::histogram;
use hdrhistogram::Histogram;
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The benches' TUN address (what the client binds to).
pub const LOCAL: &str = "10.70.0.1";
/// The peer the client sends to: on the TUN's subnet, so every datagram goes into the TUN.
pub const PEER: &str = "10.70.0.2";
/// The peer's UDP port.
pub const PORT: u16 = 7777;

/// A UDP socket bound to [`LOCAL`] and connected to [`PEER`]:[`PORT`], with buffers large
/// enough for 256 datagrams of 1400 B in flight, so that the client's socket never drops.
pub fn client_socket() -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind((LOCAL, 0))?;
    socket.connect((PEER, PORT))?;
    let size: libc::c_int = 8 << 20;
    #[cfg(target_os = "linux")]
    let opts = [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE];
    #[cfg(not(target_os = "linux"))]
    let opts = [libc::SO_RCVBUF, libc::SO_SNDBUF];
    for opt in opts {
        use std::os::fd::AsRawFd;
        // SAFETY: the option value is a c_int that lives across the call, with its size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok(socket)
}

/// What the closed-loop client measured.
#[derive(Debug)]
pub struct ClientResult {
    /// Length of the measured part, in seconds.
    pub secs: f64,
    /// Replies received in the measured part.
    pub received: u64,
    /// Datagrams sent in the measured part.
    pub sent: u64,
    /// Datagrams that never came back.
    pub lost: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Times the client waited 250 ms for nothing and restarted its window.
    pub timeouts: u64,
    /// Round-trip times of the datagrams sent in the measured part, in ns.
    pub rtt: Histogram<u64>,
}

impl ClientResult {
    /// Replies per second in the measured part.
    pub fn pps(&self) -> f64 {
        self.received as f64 / self.secs
    }
}

/// Keeps `window` datagrams of `payload` bytes in flight to a reflector on the connected
/// `socket` for `warmup` plus `measure`, and records the round trip of each one sent within
/// the measured part. Each datagram carries its send time; the reflector sends it back
/// unchanged. `mark` is called as the measured part begins and ends.
pub fn closed_loop(
    socket: &UdpSocket,
    window: usize,
    payload: usize,
    warmup: Duration,
    measure: Duration,
    mark: &mut dyn FnMut(),
) -> ClientResult {
    socket
        .set_read_timeout(Some(Duration::from_millis(250)))
        .expect("timeout");
    let base = Instant::now();
    let now_ns = || base.elapsed().as_nanos() as u64;
    let mut out = vec![0u8; payload.max(8)];
    let mut inbuf = vec![0u8; 2048];
    let mut rtt = histogram();
    let (mut in_flight, mut sent, mut received, mut lost, mut errors) = (0usize, 0, 0, 0, 0);
    let mut timeouts = 0;
    let warm_end = warmup.as_nanos() as u64;
    let end = warm_end + measure.as_nanos() as u64;
    let mut measuring = false;
    let (mut sent_at_start, mut received_at_start) = (0, 0);
    let mut measure_start = 0;
    loop {
        let now = now_ns();
        if !measuring && now >= warm_end {
            mark();
            measuring = true;
            measure_start = now_ns();
            sent_at_start = sent;
            received_at_start = received;
        }
        if now >= end {
            break;
        }
        while in_flight < window {
            out[..8].copy_from_slice(&now_ns().to_le_bytes());
            match socket.send(&out) {
                Ok(_) => {
                    in_flight += 1;
                    sent += 1;
                }
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        match socket.recv(&mut inbuf) {
            Ok(n) if n >= 8 => {
                let now = now_ns();
                let stamp = u64::from_le_bytes(inbuf[..8].try_into().expect("8 bytes"));
                in_flight = in_flight.saturating_sub(1);
                received += 1;
                if measuring && stamp >= measure_start {
                    rtt.record(now.saturating_sub(stamp).max(1)).ok();
                }
            }
            Ok(_) => {}
            Err(_) => {
                // Nothing for 250 ms: whatever is in flight is lost; start the window again.
                lost += in_flight as u64;
                in_flight = 0;
                timeouts += 1;
            }
        }
    }
    let measure_end = now_ns();
    mark();
    // Let the stragglers come home, so "lost" counts only what never did.
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let measured_received = received - received_at_start;
    while in_flight > 0 && socket.recv(&mut inbuf).is_ok() {
        in_flight -= 1;
    }
    lost += in_flight as u64;
    ClientResult {
        secs: (measure_end - measure_start) as f64 / 1e9,
        received: measured_received,
        sent: sent - sent_at_start,
        lost,
        send_errors: errors,
        timeouts,
        rtt,
    }
}

/// Open-loop UDP on the connected, non-blocking `socket` until `stop` is set: bursts of
/// `burst` copies of `datagram`, every reply read and discarded (so the socket's buffer never
/// fills), then a `pause`. Returns how many datagrams went.
pub fn flood(
    socket: &UdpSocket,
    stop: &AtomicBool,
    burst: usize,
    datagram: &[u8],
    pause: Duration,
) -> u64 {
    let mut sent = 0u64;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..burst {
            if socket.send(datagram).is_ok() {
                sent += 1;
            }
        }
        while socket.recv(&mut buf).is_ok() {}
        std::thread::sleep(pause);
    }
    sent
}
