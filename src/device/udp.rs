//! A UDP socket as a device: the outside of a tunnel. It carries opaque datagrams, each with
//! its peer's address ([`PacketBuf::endpoint`]), many per system call where the platform has
//! one (`recvmmsg`/`sendmmsg` on Linux).
//!
//! - Non-blocking per call (`MSG_DONTWAIT`), on a socket only the engine holds: no flag is
//!   shared with anyone. The reader waits in `poll` on the socket and two wake pipes: the
//!   stop's and the rebind's.
//! - Errors of a changing network (unreachable, down, no such address, refused) drop one
//!   datagram, never the engine: a phone moves between Wi-Fi and cellular.
//! - [`UdpDevice::rebind`] replaces the socket while the engine runs (the same port if it can
//!   be had): WireGuardKit's `wgBumpSockets`, for when the host's path monitor says the path
//!   changed.
//! - A dual-stack socket (`[::]`) carries IPv4 and IPv6 peers alike.

use super::{Capabilities, Device, ErrorClass, Interrupter, Medium, Rebinder, RxHalf, TxHalf};
use crate::pool::PacketBuf;
use crate::sys::net::{self, DatagramBuf, WakePipe, Woken};
use crate::sys::{self, DatagramIo};
use parking_lot::{Mutex, RwLock};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Receive and send buffer asked for: enough for a burst at a gigabit while the reader is
/// away (the receiver's buffer overflows first in a TCP stream through the tunnel).
pub const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;

/// Most datagrams one receive or send call moves.
const MAX_BATCH: usize = 64;

/// A UDP socket for the engine.
pub struct UdpDevice {
    shared: Arc<Shared>,
}

struct Shared {
    /// The socket; replaced by a rebind. Each call holds the read lock for the one system
    /// call it makes (never while waiting), so a rebind waits microseconds at most.
    socket: RwLock<Socket>,
    /// Where the socket is bound; a rebind asks for the same address again.
    bound: Mutex<SocketAddr>,
    v6: bool,
    buffer_bytes: usize,
    /// The buffer sizes the kernel granted the current socket (receive, send).
    granted: Mutex<(usize, usize)>,
    /// Written after a rebind, so that a reader waiting on the old socket looks again.
    rebound: WakePipe,
    /// One run at a time.
    open: AtomicBool,
}

/// The reader's half of a [`UdpDevice`].
pub struct UdpRx {
    shared: Arc<Shared>,
    io: DatagramIo,
    stop: Arc<WakePipe>,
}

/// The writer's half of a [`UdpDevice`].
pub struct UdpTx {
    shared: Arc<Shared>,
    io: DatagramIo,
}

impl UdpDevice {
    /// Binds a UDP socket to `addr` (`[::]:0`: any port, IPv4 and IPv6 peers alike), with
    /// [`DEFAULT_SOCKET_BUFFER`] bytes of receive and send buffer where the system grants them.
    ///
    /// # Errors
    /// What creating or binding the socket failed with (`EADDRINUSE`, ...).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with_buffers(addr, DEFAULT_SOCKET_BUFFER)
    }

    /// Binds `port` (0: any) on every address: dual-stack (`[::]`), or IPv4 only
    /// (`0.0.0.0`) where IPv6 is off. What a tunnel's outside usually wants.
    ///
    /// # Errors
    /// What binding failed with (`EADDRINUSE` is not retried on IPv4 alone).
    pub fn bind_port(port: u16) -> io::Result<Self> {
        let dual = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        Self::bind(dual).or_else(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                return Err(e);
            }
            Self::bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)))
        })
    }

    /// As [`UdpDevice::bind`], asking for `buffer_bytes` of socket buffer.
    ///
    /// # Errors
    /// As [`UdpDevice::bind`].
    pub fn bind_with_buffers(addr: SocketAddr, buffer_bytes: usize) -> io::Result<Self> {
        let (socket, granted) = new_socket(addr, buffer_bytes)?;
        let bound = local_addr(&socket)?;
        Ok(UdpDevice {
            shared: Arc::new(Shared {
                socket: RwLock::new(socket),
                bound: Mutex::new(bound),
                v6: addr.is_ipv6(),
                buffer_bytes,
                granted: Mutex::new(granted),
                rebound: WakePipe::new()?,
                open: AtomicBool::new(false),
            }),
        })
    }

    /// Where the socket is bound now.
    ///
    /// # Errors
    /// What `getsockname` failed with.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        local_addr(&self.shared.socket.read())
    }

    /// The receive and send buffer sizes the kernel granted (as it reports them: Linux
    /// reports twice the usable size).
    pub fn buffer_sizes(&self) -> (usize, usize) {
        *self.shared.granted.lock()
    }

    /// Replaces the socket with a new one bound to the same address and port (or, if that
    /// port is taken meanwhile, any port), while a run may be using it: for when the network
    /// path changed. Datagrams in the old socket's queue are lost.
    ///
    /// # Errors
    /// What making the new socket failed with; the old socket is then closed all the same.
    pub fn rebind(&self) -> io::Result<()> {
        self.shared.rebind()
    }
}

impl Shared {
    fn rebind(&self) -> io::Result<()> {
        let mut bound = self.bound.lock();
        let mut socket = self.socket.write();
        // The old socket must go first, or the new one cannot have its port.
        let placeholder = Socket::new(Domain::for_address(*bound), Type::DGRAM, None)?;
        drop(std::mem::replace(&mut *socket, placeholder));
        // A reader waiting in `poll` on the old socket still holds it open (and its port)
        // until it wakes: wake it. It then waits for this lock and never polls the old
        // socket again.
        self.rebound.wake();
        let (new, granted) = bind_again(*bound, self.buffer_bytes)?;
        *bound = local_addr(&new)?;
        *socket = new;
        *self.granted.lock() = granted;
        drop(socket);
        log::info!("rebound the UDP socket to {bound}");
        Ok(())
    }
}

/// How long a rebind waits for the old socket's port to be released (by a reader leaving its
/// `poll`: microseconds) before it takes any port.
const REBIND_PORT_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// A new socket at `addr`, or, if its port stays taken, at any port.
fn bind_again(addr: SocketAddr, buffer_bytes: usize) -> io::Result<(Socket, (usize, usize))> {
    let deadline = std::time::Instant::now() + REBIND_PORT_WAIT;
    loop {
        match new_socket(addr, buffer_bytes) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() >= deadline {
                    let mut any_port = addr;
                    any_port.set_port(0);
                    log::warn!("rebind: port {} is taken; binding another", addr.port());
                    return new_socket(any_port, buffer_bytes);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            made => return made,
        }
    }
}

fn new_socket(addr: SocketAddr, buffer_bytes: usize) -> io::Result<(Socket, (usize, usize))> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // One socket for IPv4 and IPv6 peers alike.
        socket.set_only_v6(false)?;
    }
    // The engine holds the only copy of this socket, so its own flag is safe to rely on;
    // every call asks for MSG_DONTWAIT besides.
    socket.set_nonblocking(true)?;
    let granted = sys::set_socket_buffers(&socket, buffer_bytes);
    socket.bind(&addr.into())?;
    Ok((socket, granted))
}

fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .map(net::unmapped)
        .ok_or_else(|| io::Error::other("the socket has no IP address"))
}

impl Device for UdpDevice {
    type Rx = UdpRx;
    type Tx = UdpTx;

    /// # Errors
    /// `ResourceBusy` when a run of this device is still open; the system's error when the
    /// stop's wake pipe cannot be made (`EMFILE`).
    fn open(&self) -> io::Result<(UdpRx, UdpTx)> {
        if self.shared.open.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the UDP device is already open",
            ));
        }
        let stop = match WakePipe::new() {
            Ok(pipe) => Arc::new(pipe),
            Err(e) => {
                self.shared.open.store(false, Ordering::Release);
                return Err(e);
            }
        };
        // A wake left from a rebind between runs is no news to this one.
        self.shared.rebound.drain();
        let v6 = self.shared.v6;
        Ok((
            UdpRx {
                shared: self.shared.clone(),
                io: DatagramIo::new(MAX_BATCH, v6),
                stop,
            },
            UdpTx {
                shared: self.shared.clone(),
                io: DatagramIo::new(MAX_BATCH, v6),
            },
        ))
    }
}

impl Drop for UdpRx {
    fn drop(&mut self) {
        self.shared.open.store(false, Ordering::Release);
    }
}

impl DatagramBuf for PacketBuf {
    fn area(&mut self) -> &mut [u8] {
        self.data_mut()
    }

    fn received(&mut self, len: usize, from: Option<SocketAddr>) {
        // The length is within the area just received into.
        let _ = self.truncate(len);
        self.set_endpoint(from);
    }

    fn datagram(&self) -> (&[u8], Option<SocketAddr>) {
        (self.data(), self.endpoint())
    }
}

/// What a socket error means: only a socket that is not one any more is fatal. Everything a
/// changing network says (unreachable, down, no such address, refused, no buffer space,
/// not permitted by a firewall) drops one datagram.
pub fn classify_socket(error: &io::Error) -> ErrorClass {
    match error.raw_os_error() {
        Some(libc::EINTR) => ErrorClass::Retry,
        Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT) => ErrorClass::Fatal,
        _ if error.kind() == io::ErrorKind::Interrupted => ErrorClass::Retry,
        _ => ErrorClass::PerPacket,
    }
}

impl UdpRx {
    fn fd(&self) -> RawFd {
        self.shared.socket.read().as_raw_fd()
    }
}

impl RxHalf for UdpRx {
    fn capabilities(&self) -> Capabilities {
        Capabilities::batched(Medium::Datagram, self.io.max_batch())
    }

    fn recv(&mut self, packet: &mut PacketBuf) -> io::Result<()> {
        self.recv_batch(std::slice::from_mut(packet)).map(|_| ())
    }

    fn recv_batch(&mut self, packets: &mut [PacketBuf]) -> io::Result<usize> {
        let socket = self.shared.socket.read();
        match self.io.recv(socket.as_raw_fd(), packets)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn wait_readable(&mut self) -> io::Result<()> {
        // The socket is looked up afresh for each wait: a rebind wakes a wait on the old one.
        match net::wait_readable(self.fd(), &[&self.stop, &self.shared.rebound])? {
            Woken::Socket => Ok(()),
            Woken::Pipe(0) => Err(io::Error::new(io::ErrorKind::Interrupted, "stopped")),
            Woken::Pipe(_) => {
                self.shared.rebound.drain();
                Ok(())
            }
        }
    }

    fn interrupter(&self) -> Interrupter {
        let stop = self.stop.clone();
        Interrupter::new(move || stop.wake())
    }

    fn classify(&self, error: &io::Error) -> ErrorClass {
        classify_socket(error)
    }

    fn rebinder(&self) -> Option<Rebinder> {
        let shared = self.shared.clone();
        Some(Rebinder::new(move || shared.rebind()))
    }
}

impl TxHalf for UdpTx {
    fn capabilities(&self) -> Capabilities {
        Capabilities::batched(Medium::Datagram, self.io.max_batch())
    }

    fn send(&mut self, packet: &PacketBuf) -> io::Result<()> {
        self.send_batch(std::slice::from_ref(packet)).map(|_| ())
    }

    fn send_batch(&mut self, packets: &[PacketBuf]) -> io::Result<usize> {
        let socket = self.shared.socket.read();
        self.io.send(socket.as_raw_fd(), packets)
    }

    fn classify(&self, error: &io::Error) -> ErrorClass {
        classify_socket(error)
    }
}

impl std::fmt::Debug for UdpDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpDevice")
            .field("bound", &*self.shared.bound.lock())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UdpRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpRx").field("fd", &self.fd()).finish()
    }
}

impl std::fmt::Debug for UdpTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpTx").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(bytes: &[u8], to: SocketAddr) -> PacketBuf {
        let mut p = PacketBuf::new(0, 2048, 0);
        p.fill(0, bytes).unwrap();
        p.set_endpoint(Some(to));
        p
    }

    fn area() -> PacketBuf {
        let mut p = PacketBuf::new(0, 2048, 0);
        p.prepare_receive(0, 2048);
        p
    }

    fn recv_one(rx: &mut UdpRx) -> PacketBuf {
        let mut buf = area();
        loop {
            match rx.recv(&mut buf) {
                Ok(()) => return buf,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => rx.wait_readable().unwrap(),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn datagrams_cross_with_their_peers_both_families() {
        let a = UdpDevice::bind("[::]:0".parse().unwrap()).unwrap();
        let b = UdpDevice::bind("[::]:0".parse().unwrap()).unwrap();
        let (_a_rx, mut a_tx) = a.open().unwrap();
        let (mut b_rx, _b_tx) = b.open().unwrap();
        let b_port = b.local_addr().unwrap().port();
        for to in [
            SocketAddr::from(([127, 0, 0, 1], b_port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, b_port)),
        ] {
            let sent: Vec<PacketBuf> = (0..3u8).map(|i| datagram(&[i; 10], to)).collect();
            assert_eq!(a_tx.send_batch(&sent).unwrap(), 3);
            for i in 0..3u8 {
                let got = recv_one(&mut b_rx);
                assert_eq!(got.data(), [i; 10]);
                let from = got.endpoint().unwrap();
                // An IPv4 peer shows as IPv4, not as a mapped IPv6 address.
                assert_eq!(from.is_ipv4(), to.is_ipv4(), "{from}");
                assert_eq!(from.port(), a.local_addr().unwrap().port());
            }
        }
    }

    #[test]
    fn a_datagram_without_a_destination_is_an_error_for_that_datagram() {
        let a = UdpDevice::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (_rx, mut tx) = a.open().unwrap();
        let mut p = datagram(b"x", "127.0.0.1:9".parse().unwrap());
        p.set_endpoint(None);
        let err = tx.send_batch(std::slice::from_ref(&p)).unwrap_err();
        assert_eq!(tx.classify(&err), ErrorClass::PerPacket);
    }

    #[test]
    fn network_change_errors_are_per_packet() {
        for errno in [
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::ENETDOWN,
            libc::EADDRNOTAVAIL,
            libc::ECONNREFUSED,
            libc::EPERM,
            libc::ENOBUFS,
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(classify_socket(&e), ErrorClass::PerPacket, "{e}");
        }
        let gone = io::Error::from_raw_os_error(libc::EBADF);
        assert_eq!(classify_socket(&gone), ErrorClass::Fatal);
    }

    #[test]
    fn rebind_keeps_the_port_and_wakes_a_waiting_reader() {
        let dev = UdpDevice::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = dev.local_addr().unwrap().port();
        let (mut rx, _tx) = dev.open().unwrap();
        let waiter = std::thread::spawn(move || {
            rx.wait_readable().unwrap();
            rx
        });
        // Let the reader reach its poll (it then holds the old socket, and its port, open).
        std::thread::sleep(std::time::Duration::from_millis(50));
        dev.rebind().unwrap();
        let mut rx = waiter.join().unwrap();
        assert_eq!(dev.local_addr().unwrap().port(), port);
        // The new socket receives.
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"after", ("127.0.0.1", port)).unwrap();
        assert_eq!(recv_one(&mut rx).data(), b"after");
    }

    #[test]
    fn a_stop_interrupts_the_wait() {
        let dev = UdpDevice::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (mut rx, _tx) = dev.open().unwrap();
        let interrupter = rx.interrupter();
        let waiter = std::thread::spawn(move || rx.wait_readable());
        interrupter.interrupt();
        let err = waiter.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        assert!(dev.open().is_ok(), "the run ended with its halves");
    }
}
