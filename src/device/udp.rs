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
//!   changed. The reader and writer never wait for it beyond a pointer swap: sockets are made
//!   and bound on the rebind's caller's thread, which may wait up to 100 ms for the old port.
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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// The socket, replaced by a rebind. The reader and writer hold the lock only to clone
    /// the `Arc` (each system call, and the reader's `poll`, then holds its own reference),
    /// and a rebind only to swap it: neither ever waits for the other beyond that.
    socket: RwLock<Current>,
    /// Where the socket is bound; a rebind asks for the same address again. A rebind holds
    /// it throughout (rebinds take turns); the reader and writer never take it.
    bound: Mutex<SocketAddr>,
    /// How long a rebind waits for its old port (see [`REBIND_PORT_WAIT`]).
    port_wait: Duration,
    /// Binds a rebind tried at its old port (all rebinds), for tests and logs.
    bind_attempts: AtomicU64,
    v6: bool,
    buffer_bytes: usize,
    /// The firewall mark every new socket gets (Linux's `SO_MARK`; 0: none): set under the
    /// `bound` lock, so that a rebind's new socket has the mark of its time.
    fwmark: AtomicU32,
    /// The buffer sizes the kernel granted the current socket (receive, send).
    granted: Mutex<(usize, usize)>,
    /// Written after a rebind, so that a reader waiting on the old socket looks again.
    rebound: WakePipe,
    /// One run at a time.
    open: AtomicBool,
}

/// The socket in use, and which it is: each replacement counts one, so that a half sees that
/// its socket changed (and asks the new one about GSO).
struct Current {
    socket: Arc<Socket>,
    generation: u64,
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
    /// The socket generation `io` last sent on.
    generation: u64,
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
                socket: RwLock::new(Current {
                    socket: Arc::new(socket),
                    generation: 0,
                }),
                bound: Mutex::new(bound),
                port_wait: REBIND_PORT_WAIT,
                bind_attempts: AtomicU64::new(0),
                v6: addr.is_ipv6(),
                buffer_bytes,
                fwmark: AtomicU32::new(0),
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
        local_addr(&self.shared.current().0)
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
    /// Everything slow happens on the caller's thread, with no lock the reader or writer
    /// takes: a socket on any port is made first and swapped in (the reader and writer move
    /// to it at once), the old socket is released, and the old port is bound again, retried
    /// every 1 ms for up to `REBIND_PORT_WAIT` (100 ms) while a reader still leaving its
    /// `poll` holds it, then swapped in. If the port stays taken, the socket on another port
    /// stays. So this call may take up to about 100 ms; the reader and writer never wait for
    /// it.
    ///
    /// # Errors
    /// What making the first new socket failed with; the old socket then stays in use.
    pub fn rebind(&self) -> io::Result<()> {
        self.shared.rebind()
    }

    /// Moves the socket to `port` on the same address (0: any port), while a run may be using
    /// it: a configuration's new listen port. The new socket is bound before the old one is
    /// let go, so a port that cannot be had leaves everything as it was. Returns the port
    /// now bound.
    ///
    /// # Errors
    /// What binding the new port failed with (`EADDRINUSE`, ...).
    pub fn rebind_to_port(&self, port: u16) -> io::Result<u16> {
        self.shared.rebind_to_port(port)
    }

    /// The firewall mark the socket's datagrams carry (0: none).
    pub fn fwmark(&self) -> u32 {
        self.shared.fwmark.load(Ordering::Relaxed)
    }

    /// Marks the socket's datagrams with `mark` (Linux's `SO_MARK`; 0 clears it), and every
    /// socket a rebind makes after: wg-quick marks a tunnel's own datagrams so that its
    /// policy routing sends them outside the tunnel.
    ///
    /// # Errors
    /// `Unsupported` where the system has no such mark; what `setsockopt` failed with
    /// (`EPERM` without `CAP_NET_ADMIN`). The mark is then unchanged.
    pub fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        let _bound = self.shared.bound.lock();
        let (socket, _) = self.shared.current();
        set_mark(&socket, mark)?;
        self.shared.fwmark.store(mark, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_mark(socket: &Socket, mark: u32) -> io::Result<()> {
    socket.set_mark(mark)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_mark(_socket: &Socket, mark: u32) -> io::Result<()> {
    if mark == 0 {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "this system has no firewall mark for sockets",
    ))
}

impl Shared {
    /// See [`UdpDevice::rebind_to_port`]; with `port` 0, another port than the one it has (the new
    /// socket is bound while the old one still holds its port).
    fn rebind_to_port(&self, port: u16) -> io::Result<u16> {
        let mut bound = self.bound.lock();
        if port != 0 && port == bound.port() {
            return Ok(port);
        }
        let mut addr = *bound;
        addr.set_port(port);
        let (socket, granted) = self.new_socket(addr)?;
        *bound = local_addr(&socket)?;
        drop(self.install(socket, granted));
        log::info!("moved the UDP socket to {bound}");
        Ok(bound.port())
    }

    /// A new socket at `addr` with this device's buffers and mark. Called with `bound` held.
    fn new_socket(&self, addr: SocketAddr) -> io::Result<(Socket, (usize, usize))> {
        let made = new_socket(addr, self.buffer_bytes)?;
        match self.fwmark.load(Ordering::Relaxed) {
            0 => {}
            mark => set_mark(&made.0, mark)?,
        }
        Ok(made)
    }

    /// The socket in use and its generation; the lock is held for the clone only.
    fn current(&self) -> (Arc<Socket>, u64) {
        let current = self.socket.read();
        (current.socket.clone(), current.generation)
    }

    /// Puts `socket` in use (the lock held for the swap only) and wakes a reader waiting on
    /// the one it replaces; returns that one.
    fn install(&self, socket: Socket, granted: (usize, usize)) -> Arc<Socket> {
        let old = {
            let mut current = self.socket.write();
            current.generation += 1;
            std::mem::replace(&mut current.socket, Arc::new(socket))
        };
        *self.granted.lock() = granted;
        // A reader waiting in `poll` on the old socket holds it (and its port) until it
        // wakes: wake it, and it waits on the new one.
        self.rebound.wake();
        old
    }

    fn rebind(&self) -> io::Result<()> {
        let mut bound = self.bound.lock();
        let mut any_port = *bound;
        any_port.set_port(0);
        let (interim, granted) = self.new_socket(any_port)?;
        let interim_addr = local_addr(&interim)?;
        // The old socket is released here, or by the reader or writer as soon as its call on
        // it returns.
        drop(self.install(interim, granted));
        match bind_again(*bound, self.port_wait, &self.bind_attempts, |addr| {
            self.new_socket(addr)
        }) {
            Ok((new, granted)) => {
                *bound = local_addr(&new)?;
                drop(self.install(new, granted));
                log::info!("rebound the UDP socket to {bound}");
            }
            Err(e) => {
                log::warn!(
                    "rebind: port {} cannot be had again ({e}); using {interim_addr}",
                    bound.port()
                );
                *bound = interim_addr;
            }
        }
        Ok(())
    }
}

/// How long a rebind keeps trying (every 1 ms, sleeping between tries) to bind the old
/// socket's port again while a reader still leaving its `poll` on the old socket holds it,
/// before it keeps the socket on another port: a rebind may so take up to 100 ms. The wait is
/// the rebind caller's, holding only the `bound` lock, which the reader and writer never take;
/// they go on meanwhile, on that other port.
const REBIND_PORT_WAIT: Duration = Duration::from_millis(100);

/// A new socket at `addr` (made by `make`), retried while its port is taken, for up to
/// `wait`.
fn bind_again(
    addr: SocketAddr,
    wait: Duration,
    attempts: &AtomicU64,
    make: impl Fn(SocketAddr) -> io::Result<(Socket, (usize, usize))>,
) -> io::Result<(Socket, (usize, usize))> {
    let deadline = Instant::now() + wait;
    loop {
        attempts.fetch_add(1, Ordering::Relaxed);
        match make(addr) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
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
                generation: self.shared.current().1,
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
        self.shared.current().0.as_raw_fd()
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
        let (socket, _) = self.shared.current();
        match self.io.recv(socket.as_raw_fd(), packets)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn wait_readable(&mut self) -> io::Result<()> {
        // The socket is looked up afresh for each wait, and held through it: a rebind wakes a
        // wait on the old one.
        let (socket, _) = self.shared.current();
        match net::wait_readable(socket.as_raw_fd(), &[&self.stop, &self.shared.rebound])? {
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

    fn rearm(&mut self) {
        self.stop.drain();
    }

    fn classify(&self, error: &io::Error) -> ErrorClass {
        classify_socket(error)
    }

    fn rebinder(&self) -> Option<Rebinder> {
        let same = self.shared.clone();
        let fresh = self.shared.clone();
        Some(Rebinder::new(
            move || same.rebind(),
            move || fresh.rebind_to_port(0),
        ))
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
        let (socket, generation) = self.shared.current();
        if generation != self.generation {
            // A rebind: the new socket may take GSO again.
            self.generation = generation;
            self.io.socket_replaced();
        }
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

    /// How many hold the socket in use besides the device itself (a reader in its wait, a
    /// call in progress).
    fn socket_users(dev: &UdpDevice) -> usize {
        Arc::strong_count(&dev.shared.socket.read().socket) - 1
    }

    /// Waits (without a clock) until `done`; a hang guard of minutes turns a hang into a
    /// failure.
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let guard = Instant::now() + Duration::from_secs(120);
        while !done() {
            assert!(Instant::now() < guard, "never happened: {what}");
            std::thread::yield_now();
        }
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
        // The reader reaches its wait: it then holds the old socket, and its port, open.
        wait_for("the reader waits on the socket", || socket_users(&dev) == 1);
        dev.rebind().unwrap();
        let mut rx = waiter.join().unwrap();
        assert_eq!(dev.local_addr().unwrap().port(), port);
        // The new socket receives.
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"after", ("127.0.0.1", port)).unwrap();
        assert_eq!(recv_one(&mut rx).data(), b"after");
    }

    /// A batch of `n` datagrams of `len` bytes to `to`, numbered from `first` (its first 8
    /// bytes), which UDP GSO sends as one message.
    fn numbered(first: u64, n: u64, len: usize, to: SocketAddr) -> Vec<PacketBuf> {
        (first..first + n)
            .map(|i| {
                let mut bytes = vec![0xa5; len];
                bytes[..8].copy_from_slice(&i.to_be_bytes());
                datagram(&bytes, to)
            })
            .collect()
    }

    fn number(bytes: &[u8]) -> u64 {
        u64::from_be_bytes(bytes[..8].try_into().unwrap())
    }

    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn a_gso_refusal_costs_no_datagram_and_turns_gso_off_only_when_repeated() {
        use crate::sys::GSO_REFUSALS_BEFORE_OFF as N;
        let dev = UdpDevice::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let to = peer.local_addr().unwrap();
        let (_rx, mut tx) = dev.open().unwrap();
        let mut next = 0;
        let mut received = 0;
        let mut send = |tx: &mut UdpTx, refused: u32| {
            tx.io.refuse_gso(refused);
            let batch = numbered(next, 8, 1200, to);
            assert_eq!(tx.send_batch(&batch).unwrap(), 8, "the whole batch went");
            next += 8;
            let mut buf = [0u8; 2048];
            for _ in 0..8 {
                let (len, _) = peer.recv_from(&mut buf).expect("a datagram");
                assert_eq!(len, 1200);
                assert_eq!(number(&buf), received, "in order, none lost");
                received += 1;
            }
        };
        send(&mut tx, 0);
        if tx.io.uses_gso() != Some(true) {
            eprintln!("this kernel has no UDP GSO: nothing to refuse");
            return;
        }
        // Refusals not in a row (a GSO message goes between) never turn GSO off.
        for _ in 0..2 * N {
            send(&mut tx, 1);
            assert_eq!(tx.io.uses_gso(), Some(true), "one refusal keeps GSO");
            send(&mut tx, 0);
        }
        for i in 1..=N {
            send(&mut tx, 1);
            assert_eq!(tx.io.uses_gso(), Some(i < N), "{i} refusals in a row");
        }
        // Off: the batches go without it (the seam would refuse them, were they GSO).
        send(&mut tx, 1);
        assert_eq!(tx.io.uses_gso(), Some(false));
        // A rebind gives GSO another chance.
        dev.rebind().unwrap();
        send(&mut tx, 0);
        assert_eq!(tx.io.uses_gso(), Some(true), "asked again after a rebind");
    }

    #[test]
    fn a_rebind_waiting_for_its_port_never_stops_the_writer() {
        let mut dev = UdpDevice::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // The test, not a clock, ends the rebind's wait for its port.
        Arc::get_mut(&mut dev.shared).unwrap().port_wait = Duration::from_secs(3600);
        let port = dev.local_addr().unwrap().port();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let to = peer.local_addr().unwrap();
        let (_rx, mut tx) = dev.open().unwrap();
        let stop = AtomicBool::new(false);
        let sent = AtomicU64::new(0);
        // The longest a send call took (lock, clone and system call), in nanoseconds.
        let longest = AtomicU64::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    let batch = numbered(i, 4, 64, to);
                    let t0 = Instant::now();
                    let went = tx.send_batch(&batch);
                    longest.fetch_max(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    i += went.unwrap() as u64;
                    sent.store(i, Ordering::Release);
                }
            });
            wait_for("the writer sends", || sent.load(Ordering::Acquire) > 0);
            // Hold the old socket, as a reader slow to leave its poll would: its port stays
            // taken, and the rebind retries.
            let held = dev.shared.current().0;
            let rebind = s.spawn(|| dev.rebind());
            let attempts = &dev.shared.bind_attempts;
            wait_for("the rebind retries", || {
                attempts.load(Ordering::Relaxed) >= 2
            });
            // The writer goes on meanwhile: a datagram from another port than the old one
            // comes from the socket the rebind made first, used only while it retries.
            let mut buf = [0u8; 2048];
            loop {
                let (_, from) = peer.recv_from(&mut buf).expect("the writer's datagrams");
                if from.port() != port {
                    break;
                }
            }
            assert!(!rebind.is_finished(), "still retrying: the port is held");
            let during = attempts.load(Ordering::Relaxed);
            drop(held);
            rebind.join().unwrap().unwrap();
            assert!(attempts.load(Ordering::Relaxed) > during);
            assert_eq!(dev.local_addr().unwrap().port(), port, "the old port again");
            // And the writer sends from it again.
            loop {
                let (_, from) = peer.recv_from(&mut buf).expect("the writer's datagrams");
                if from.port() == port {
                    break;
                }
            }
            stop.store(true, Ordering::Release);
        });
        eprintln!(
            "rebind under load: {} sends, longest send call {:.1} us, {} binds tried",
            sent.load(Ordering::Relaxed),
            longest.load(Ordering::Relaxed) as f64 / 1e3,
            dev.shared.bind_attempts.load(Ordering::Relaxed)
        );
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
