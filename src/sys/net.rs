//! Plain POSIX pieces of the UDP device that every platform shares: socket addresses, a
//! self-pipe that wakes a `poll`, the readiness wait, and one-datagram-per-call I/O (the
//! batch calls are platform code: `recvmmsg`/`sendmmsg` on Linux, `recvmsg_x`/`sendmsg_x`
//! on Apple).

use super::byte_count;
use socket2::{SockAddr, SockAddrStorage};
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A datagram's buffer as the socket calls see it. The UDP device implements it for its
/// packet buffers, so that this module never names them.
pub(crate) trait DatagramBuf {
    /// The area to receive into.
    fn area(&mut self) -> &mut [u8];
    /// Marks `len` bytes of the area as the datagram received from `from`.
    fn received(&mut self, len: usize, from: Option<SocketAddr>);
    /// The datagram to send, and where to.
    fn datagram(&self) -> (&[u8], Option<SocketAddr>);
}

/// The address a dual-stack (IPv6) socket reports, as the peer really is: an IPv4 peer
/// arrives as `::ffff:a.b.c.d`.
pub(crate) fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The address to send to from a socket of family `v6`: an IPv4 peer, mapped, for a
/// dual-stack socket.
pub(crate) fn for_socket(addr: SocketAddr, v6: bool) -> SockAddr {
    match addr {
        SocketAddr::V4(v4) if v6 => {
            SockAddr::from(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        other => SockAddr::from(other),
    }
}

/// A socket address the kernel wrote into `storage` (of `len` bytes).
pub(crate) fn from_storage(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len.min(std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t);
    // SAFETY: copies `len` bytes, which the kernel initialised (recvmmsg, recvfrom) and which
    // fit both storages, into the storage socket2 hands out.
    let copied = unsafe {
        SockAddr::try_init(|into: *mut SockAddrStorage, into_len| {
            std::ptr::copy_nonoverlapping(
                (storage as *const libc::sockaddr_storage).cast::<u8>(),
                into.cast::<u8>(),
                len as usize,
            );
            *into_len = len;
            Ok(())
        })
    };
    copied.ok()?.1.as_socket().map(unmapped)
}

/// A pipe whose read end `poll` watches: writing to it wakes the waiter. A stop's wake is
/// never drained (the reader leaves); a rebind's is drained by the waiter.
#[derive(Debug)]
pub(crate) struct WakePipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl WakePipe {
    pub(crate) fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [&read, &write] {
            let fd = fd.as_raw_fd();
            // SAFETY: fcntl with integer arguments on descriptors owned here.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                libc::fcntl(
                    fd,
                    libc::F_SETFL,
                    libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
                );
            }
        }
        Ok(WakePipe { read, write })
    }

    /// Wakes the waiter (a full pipe already will).
    pub(crate) fn wake(&self) {
        // SAFETY: writes one byte from a local to a descriptor owned here.
        unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }

    /// Empties the pipe, so that the next `poll` waits again.
    pub(crate) fn drain(&self) {
        let mut sink = [0u8; 64];
        // SAFETY: reads into a local buffer of that size; the fd is non-blocking.
        while unsafe { libc::read(self.read.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) } > 0
        {
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// What woke a [`wait_readable`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The socket has something (a datagram, or an error to report).
    Socket,
    /// The `n`-th wake pipe was written to.
    Pipe(usize),
}

/// Waits until `socket` is readable or one of `pipes` is written to.
pub(crate) fn wait_readable(socket: RawFd, pipes: &[&WakePipe]) -> io::Result<Woken> {
    let mut fds = [libc::pollfd {
        fd: socket,
        events: libc::POLLIN,
        revents: 0,
    }; 3];
    for (slot, pipe) in fds[1..].iter_mut().zip(pipes) {
        slot.fd = pipe.fd();
    }
    let n = 1 + pipes.len().min(2);
    // SAFETY: poll reads and writes the `n` pollfds it is given, all in `fds`.
    if unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, -1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(i) = fds[1..n].iter().position(|p| p.revents != 0) {
        return Ok(Woken::Pipe(i));
    }
    Ok(Woken::Socket)
}

/// One datagram per call, for platforms without a batch call: `recvfrom` and `sendto` with
/// `MSG_DONTWAIT`. (Linux uses `recvmmsg`/`sendmmsg`, and this path is tested there all the
/// same; Apple uses it where `recvmsg_x`/`sendmsg_x` are missing or refused.)
#[derive(Debug)]
#[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
pub(crate) struct SingleDatagramIo {
    v6: bool,
}

// Linux uses none of it outside tests; Apple's batch device only receives and sends with it.
#[cfg_attr(
    any(target_os = "linux", target_os = "android", target_vendor = "apple"),
    allow(dead_code)
)]
impl SingleDatagramIo {
    pub(crate) fn new(_max_batch: usize, v6: bool) -> Self {
        SingleDatagramIo { v6 }
    }

    /// The socket was replaced (a rebind): nothing to forget without GSO.
    pub(crate) fn socket_replaced(&mut self) {}

    pub(crate) fn max_batch(&self) -> usize {
        1
    }

    pub(crate) fn recv<B: DatagramBuf>(&mut self, fd: RawFd, bufs: &mut [B]) -> io::Result<usize> {
        let Some(buf) = bufs.first_mut() else {
            return Ok(0);
        };
        let area = buf.area();
        // SAFETY: all zeroes is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: recvfrom writes at most `area.len()` bytes into `area` and at most `len`
        // bytes of address into `storage`, which is that large.
        let n = byte_count(unsafe {
            libc::recvfrom(
                fd,
                area.as_mut_ptr().cast(),
                area.len(),
                libc::MSG_DONTWAIT,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        })?;
        // recvfrom cuts a longer datagram to the area: `n` fits it.
        buf.received(n, from_storage(&storage, len));
        Ok(1)
    }

    pub(crate) fn send<B: DatagramBuf>(&mut self, fd: RawFd, bufs: &[B]) -> io::Result<usize> {
        let Some(buf) = bufs.first() else {
            return Ok(0);
        };
        let (data, to) = buf.datagram();
        let to = to.ok_or_else(no_destination)?;
        let to = for_socket(to, self.v6);
        // SAFETY: sendto reads `data.len()` bytes from `data` and `to.len()` bytes of address.
        let n = byte_count(unsafe {
            libc::sendto(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT,
                to.as_ptr().cast(),
                to.len(),
            )
        })?;
        if n != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short datagram write",
            ));
        }
        Ok(1)
    }
}

pub(crate) fn no_destination() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "datagram has no destination endpoint",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// A datagram buffer for the tests: bytes, a length and a peer.
    struct Buf(Vec<u8>, usize, Option<SocketAddr>);

    impl DatagramBuf for Buf {
        fn area(&mut self) -> &mut [u8] {
            &mut self.0
        }
        fn received(&mut self, len: usize, from: Option<SocketAddr>) {
            self.1 = len;
            self.2 = from;
        }
        fn datagram(&self) -> (&[u8], Option<SocketAddr>) {
            (&self.0[..self.1], self.2)
        }
    }

    /// The one-datagram path is what Apple runs: exercised here on a real socket.
    #[test]
    fn single_datagram_io_sends_and_receives_with_peers() {
        let a = UdpSocket::bind("[::]:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let mut io = SingleDatagramIo::new(8, true);
        assert_eq!(io.max_batch(), 1);
        let to = b.local_addr().unwrap();
        let out = [Buf(b"hello".to_vec(), 5, Some(to))];
        assert_eq!(io.send(a.as_raw_fd(), &out).unwrap(), 1);
        let mut reply = [Buf(vec![0; 64], 0, None)];
        let mut io_b = SingleDatagramIo::new(8, false);
        let pipe = WakePipe::new().unwrap();
        assert_eq!(
            wait_readable(b.as_raw_fd(), &[&pipe]).unwrap(),
            Woken::Socket
        );
        assert_eq!(io_b.recv(b.as_raw_fd(), &mut reply).unwrap(), 1);
        assert_eq!(&reply[0].0[..reply[0].1], b"hello");
        // An IPv4 peer on a dual-stack socket shows as IPv4.
        assert_eq!(
            reply[0].2.map(|p| p.port()),
            Some(a.local_addr().unwrap().port())
        );
        assert!(reply[0].2.unwrap().is_ipv4());
        let empty = io_b.recv(b.as_raw_fd(), &mut reply).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        let nowhere = [Buf(b"x".to_vec(), 1, None)];
        assert_eq!(
            io.send(a.as_raw_fd(), &nowhere).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn a_wake_pipe_wakes_poll_until_drained() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (stop, other) = (WakePipe::new().unwrap(), WakePipe::new().unwrap());
        other.wake();
        assert_eq!(
            wait_readable(socket.as_raw_fd(), &[&stop, &other]).unwrap(),
            Woken::Pipe(1)
        );
        other.drain();
        stop.wake();
        assert_eq!(
            wait_readable(socket.as_raw_fd(), &[&stop, &other]).unwrap(),
            Woken::Pipe(0)
        );
    }
}
