//! Apple (iOS, tvOS, macOS): utun checks, many packets per call on the utun and the UDP
//! socket (private calls looked up at run time), thread QoS.

use super::batch::{batch_prefix, BatchFailed, Batching, RecvCalls, SendCalls};
use super::net::{for_socket, from_storage, no_destination, DatagramBuf, SingleDatagramIo};
use super::{byte_count, TunIdentity};
use socket2::SockAddr;
use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;

/// The utun kernel control's name: `getpeername` on a utun fd reports its control id.
const UTUN_CONTROL_NAME: &[u8] = b"com.apple.net.utun_control";
/// `AF_SYSTEM` and `SYSPROTO_CONTROL`, from XNU's `sys/socket.h` / `sys/sys_domain.h`.
const AF_SYSTEM: libc::c_int = 32;
const AF_SYS_CONTROL: u16 = 2;
/// `CTLIOCGINFO = _IOWR('N', 3, struct ctl_info)`, from XNU's `sys/kern_control.h`.
const CTLIOCGINFO: libc::c_ulong = 0xc064_4e03;

/// `struct ctl_info` from XNU's `sys/kern_control.h`.
#[repr(C)]
struct CtlInfo {
    ctl_id: u32,
    ctl_name: [libc::c_char; 96],
}

/// `struct sockaddr_ctl` from XNU's `sys/kern_control.h`.
#[repr(C)]
#[derive(Default)]
struct SockaddrCtl {
    sc_len: u8,
    sc_family: u8,
    ss_sysaddr: u16,
    sc_id: u32,
    sc_unit: u32,
    sc_reserved: [u32; 5],
}

/// `SYSPROTO_CONTROL`, from XNU's `sys/sys_domain.h`: the protocol and the socket-option
/// level of kernel control sockets.
const SYSPROTO_CONTROL: libc::c_int = 2;

// The layouts must match XNU exactly, or the ioctl and getpeername write out of bounds.
const _: () = assert!(std::mem::size_of::<CtlInfo>() == 100);
const _: () = assert!(std::mem::size_of::<SockaddrCtl>() == 32);

fn utun_ctl_info() -> CtlInfo {
    let mut info = CtlInfo {
        ctl_id: 0,
        ctl_name: [0; 96],
    };
    for (dst, src) in info.ctl_name.iter_mut().zip(UTUN_CONTROL_NAME) {
        *dst = *src as libc::c_char;
    }
    info
}

/// `CTLIOCGINFO` on `sock`, a kernel control socket: the utun control's id.
fn ctl_id_via(sock: RawFd) -> io::Result<u32> {
    let mut info = utun_ctl_info();
    // SAFETY: CTLIOCGINFO reads and writes one `struct ctl_info`, which `info` is (its size
    // is asserted above).
    let ret = unsafe { libc::ioctl(sock, CTLIOCGINFO, &mut info as *mut CtlInfo) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.ctl_id)
}

/// The utun control id. Asked of `fd` itself first (a kernel control socket answers
/// CTLIOCGINFO, and a Network Extension's sandbox may refuse to create new `AF_SYSTEM`
/// sockets), else of a throwaway control socket.
fn utun_control_id(fd: RawFd) -> io::Result<u32> {
    if let Ok(id) = ctl_id_via(fd) {
        return Ok(id);
    }
    // SAFETY: plain socket creation; the result is checked and closed below.
    let sock = unsafe { libc::socket(AF_SYSTEM, libc::SOCK_DGRAM, SYSPROTO_CONTROL) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    let id = ctl_id_via(sock);
    // SAFETY: `sock` was created above and is closed exactly once.
    unsafe { libc::close(sock) };
    id
}

/// The peer address of `fd` if it is a kernel control socket (`AF_SYSTEM`/`AF_SYS_CONTROL`).
fn control_peer(fd: RawFd) -> Option<SockaddrCtl> {
    let mut addr = SockaddrCtl::default();
    let mut len = std::mem::size_of::<SockaddrCtl>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into `addr`, which is that large.
    let ret = unsafe {
        libc::getpeername(
            fd,
            &mut addr as *mut SockaddrCtl as *mut libc::sockaddr,
            &mut len,
        )
    };
    (ret == 0 && addr.sc_family as libc::c_int == AF_SYSTEM && addr.ss_sysaddr == AF_SYS_CONTROL)
        .then_some(addr)
}

/// Is `fd` a utun control socket? (`getpeername` yields `AF_SYSTEM` and the utun control id.)
pub(crate) fn is_utun_fd(fd: RawFd, utun_id: u32) -> bool {
    control_peer(fd).is_some_and(|addr| addr.sc_id == utun_id)
}

/// Checks that `fd` is a utun control socket, so that `start_tun(1)` cannot read stdin.
pub(crate) fn validate_tun_fd(fd: RawFd) -> io::Result<()> {
    super::fd_flags(fd)?;
    let not_utun = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a utun control socket"),
        )
    };
    if control_peer(fd).is_none() {
        return Err(not_utun());
    }
    let id = utun_control_id(fd)?;
    if is_utun_fd(fd, id) {
        Ok(())
    } else {
        Err(not_utun())
    }
}

/// Finds the packet tunnel's utun fd: the first descriptor that is a kernel control socket
/// connected to the utun control, among all the process may have (`getdtablesize()`), skipping
/// the duplicates tunpipe itself holds for running engines. This is the scan of the tun-rs
/// iOS/tvOS guide (and WireGuardKit), for hosts that do not pass the fd in.
///
/// # Errors
/// `NotFound` when no descriptor is a utun control socket.
pub fn find_utun_fd() -> io::Result<RawFd> {
    // SAFETY: takes no arguments.
    let table = unsafe { libc::getdtablesize() };
    let mut utun_id = None;
    for fd in 0..table {
        if super::is_held(fd) {
            continue;
        }
        let Some(addr) = control_peer(fd) else {
            continue;
        };
        // Look the id up once, from the first control socket met.
        let id = match utun_id {
            Some(id) => id,
            None => match utun_control_id(fd) {
                Ok(id) => *utun_id.insert(id),
                Err(_) => continue,
            },
        };
        if addr.sc_id == id {
            return Ok(fd);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no utun control socket among fds 0..{table} (tunpipe's own skipped)"),
    ))
}

/// `UTUN_OPT_IFNAME` from XNU's `bsd/net/if_utun.h` (value 2, level `SYSPROTO_CONTROL`): the
/// utun's interface name, such as `utun3`.
const UTUN_OPT_IFNAME: libc::c_int = 2;

/// The utun's interface name, which every dup of its control socket shares. utun names are
/// unique on the system and cannot be changed, so the name is the identity.
pub(crate) fn tun_identity(fd: RawFd) -> io::Result<TunIdentity> {
    let mut name = [0u8; libc::IFNAMSIZ];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `name`, which is that large.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            SYSPROTO_CONTROL,
            UTUN_OPT_IFNAME,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(TunIdentity::Name {
        netns: None,
        name: String::from_utf8_lossy(&name[..len]).into_owned(),
    })
}

/// Reads and writes one packet on a utun control socket without blocking, whatever
/// `O_NONBLOCK` says: `MSG_DONTWAIT` asks for that per call, and a socket needs no flag shared
/// with the host's fd. Each packet travels behind a 4-byte protocol family (`AF_INET` or
/// `AF_INET6`, big-endian), which is stripped on read and added on write.
#[derive(Debug)]
pub(crate) struct TunIo;

/// Bytes of the utun packet-information header.
const FAMILY_HEADER: usize = 4;

impl TunIo {
    pub(crate) fn new() -> Self {
        TunIo
    }

    pub(crate) fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        let mut family = [0u8; FAMILY_HEADER];
        let mut iov = [
            libc::iovec {
                iov_base: family.as_mut_ptr().cast(),
                iov_len: family.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        // SAFETY: an all-zero msghdr is valid; the fields set point at `iov`, which lives
        // for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: recvmsg writes into the two buffers `iov` describes, both owned here.
        let n = byte_count(unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) })?;
        n.checked_sub(FAMILY_HEADER).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "utun read shorter than its header",
            )
        })
    }

    pub(crate) fn write(&self, fd: RawFd, packet: &[u8]) -> io::Result<usize> {
        let family = family_of(packet).ok_or_else(not_ip)?;
        let family = (family as u32).to_be_bytes();
        let iov = [
            libc::iovec {
                iov_base: family.as_ptr() as *mut _,
                iov_len: family.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut _,
                iov_len: packet.len(),
            },
        ];
        // SAFETY: an all-zero msghdr is valid; the fields set point at `iov`, which lives
        // for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut _;
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: sendmsg only reads the two buffers `iov` describes.
        let n = byte_count(unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) })?;
        Ok(n.saturating_sub(FAMILY_HEADER))
    }
}

/// XNU's `struct msghdr_x` (`bsd/sys/socket_private.h`): a `msghdr` with the length of the
/// datagram it carries, for `recvmsg_x`/`sendmsg_x`, which move many datagrams per call.
#[repr(C)]
struct MsghdrX {
    msg_name: *mut libc::c_void,
    msg_namelen: libc::socklen_t,
    msg_iov: *mut libc::iovec,
    msg_iovlen: libc::c_int,
    msg_control: *mut libc::c_void,
    msg_controllen: libc::socklen_t,
    msg_flags: libc::c_int,
    msg_datalen: libc::size_t,
}

// The layout must match XNU's exactly (LP64), or the kernel reads past the array.
const _: () = assert!(std::mem::size_of::<MsghdrX>() == 56);

impl MsghdrX {
    fn zeroed() -> Self {
        // SAFETY: a plain C struct of integers and raw pointers: all zeroes (null pointers,
        // zero lengths) is a valid value.
        unsafe { std::mem::zeroed() }
    }
}

/// The C type of `recvmsg_x` and `sendmsg_x` (`socket_private.h`: `ssize_t f(int s, const
/// struct msghdr_x *msgp, u_int cnt, int flags)`; `recvmsg_x` writes the array all the same,
/// so it is given a pointer that may be written through).
type MsgXFn = unsafe extern "C" fn(libc::c_int, *const MsghdrX, libc::c_uint, libc::c_int) -> isize;

/// XNU's private multi-datagram calls, found at run time.
#[derive(Clone, Copy)]
struct MsgXCalls {
    recvmsg_x: MsgXFn,
    sendmsg_x: MsgXFn,
}

/// `recvmsg_x` and `sendmsg_x`, looked up once per process with `dlsym`, as firezone does:
/// they are private XNU API ("subject to change"), so tunpipe does not link them (no
/// undefined private symbol in the binary, no load failure should Apple remove them) and
/// moves one packet per call where they are missing (`batch.rs`).
fn msg_x_calls() -> Option<MsgXCalls> {
    static CALLS: OnceLock<Option<MsgXCalls>> = OnceLock::new();
    *CALLS.get_or_init(|| {
        let calls = lookup(c"recvmsg_x")
            .zip(lookup(c"sendmsg_x"))
            .map(|(recvmsg_x, sendmsg_x)| MsgXCalls {
                recvmsg_x,
                sendmsg_x,
            });
        if calls.is_none() {
            log::info!("recvmsg_x/sendmsg_x not found: the utun and UDP move one packet per call");
        }
        calls
    })
}

/// The function `name` (one of the two above), if the process has it.
fn lookup(name: &CStr) -> Option<MsgXFn> {
    // SAFETY: `name` is NUL-terminated and lives for the call; RTLD_DEFAULT searches the
    // images already loaded, and dlsym only reads the name.
    let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if address.is_null() {
        return None;
    }
    // SAFETY: a non-null address for these names is libSystem's function of that name, whose
    // C signature is `MsgXFn`'s (socket_private.h); a function pointer and a data pointer
    // have the same size and representation on Apple targets.
    Some(unsafe { std::mem::transmute::<*mut libc::c_void, MsgXFn>(address) })
}

/// The socket's send buffer (`SO_SNDBUF`), which bounds one `sendmsg_x`: XNU refuses a batch
/// whose datagrams add up to more (`EMSGSIZE`). Unknown: no bound.
fn send_buffer(fd: RawFd) -> usize {
    get_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)
        .ok()
        .and_then(|bytes| usize::try_from(bytes).ok())
        .filter(|&bytes| bytes > 0)
        .unwrap_or(usize::MAX)
}

/// The error a batch call reports when the calls were never found (refused as missing).
fn no_batch_call() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSYS)
}

/// Most packets one `recvmsg_x`/`sendmsg_x` moves on the utun.
const TUN_BATCH: usize = 32;

/// Reads and writes many packets per call on a utun control socket (`recvmsg_x`,
/// `sendmsg_x`, as firezone's connlib does), each behind its 4-byte protocol family, or one
/// per call (`TunIo`) where those calls are missing or refused (`batch.rs` decides). One per
/// device half, allocated once and rewritten before every call.
pub(crate) struct TunBatchIo {
    calls: Option<MsgXCalls>,
    batching: Batching,
    headers: Box<[MsghdrX]>,
    vectors: Box<[[libc::iovec; 2]]>,
    families: Box<[[u8; FAMILY_HEADER]]>,
    /// The utun's send buffer ([`send_buffer`]), asked at the first batch send.
    send_limit: Option<usize>,
}

// SAFETY: the raw pointers in `headers` and `vectors` point only at this struct's arrays and
// at the buffers of the call in progress; they are rewritten before each call and never read
// between calls. The struct moves between threads only with the device half that owns it.
unsafe impl Send for TunBatchIo {}

impl TunBatchIo {
    pub(crate) fn new() -> Self {
        let calls = msg_x_calls();
        // SAFETY: iovec is a plain C struct for which all zeroes is valid.
        let zeroed_iov = || unsafe { std::mem::zeroed::<libc::iovec>() };
        TunBatchIo {
            calls,
            batching: Batching::new("utun", TUN_BATCH, calls.is_some()),
            headers: (0..TUN_BATCH).map(|_| MsghdrX::zeroed()).collect(),
            vectors: (0..TUN_BATCH)
                .map(|_| [zeroed_iov(), zeroed_iov()])
                .collect(),
            families: vec![[0; FAMILY_HEADER]; TUN_BATCH].into_boxed_slice(),
            send_limit: None,
        }
    }

    pub(crate) fn max_batch(&self) -> usize {
        self.batching.max_batch()
    }

    /// Receives up to `bufs.len()` packets without blocking; returns how many.
    pub(crate) fn read<B: DatagramBuf>(&mut self, fd: RawFd, bufs: &mut [B]) -> io::Result<usize> {
        let len = bufs.len();
        let mut calls = TunCalls {
            fd,
            calls: self.calls,
            headers: &mut self.headers,
            vectors: &mut self.vectors,
            families: &mut self.families,
            send_limit: &mut self.send_limit,
            bufs,
        };
        self.batching.recv(&mut calls, len)
    }

    /// Sends up to `bufs.len()` packets without blocking; returns how many went. A packet
    /// that is no IP packet ends the batch (first in the batch, it is the error).
    pub(crate) fn write<B: DatagramBuf>(&mut self, fd: RawFd, bufs: &[B]) -> io::Result<usize> {
        let len = bufs.len();
        let mut calls = TunCalls {
            fd,
            calls: self.calls,
            headers: &mut self.headers,
            vectors: &mut self.vectors,
            families: &mut self.families,
            send_limit: &mut self.send_limit,
            bufs,
        };
        self.batching.send(&mut calls, len)
    }
}

/// One utun call's view of a [`TunBatchIo`] and of the buffers it moves (`&mut [B]` to
/// receive, `&[B]` to send).
struct TunCalls<'a, Bufs> {
    fd: RawFd,
    calls: Option<MsgXCalls>,
    headers: &'a mut [MsghdrX],
    vectors: &'a mut [[libc::iovec; 2]],
    families: &'a mut [[u8; FAMILY_HEADER]],
    send_limit: &'a mut Option<usize>,
    bufs: Bufs,
}

impl<Bufs> TunCalls<'_, Bufs> {
    /// Points message `i` at its family bytes and at `len` bytes of packet at `data`.
    fn point(&mut self, i: usize, data: *mut u8, len: usize) {
        self.vectors[i] = [
            libc::iovec {
                iov_base: self.families[i].as_mut_ptr().cast(),
                iov_len: FAMILY_HEADER,
            },
            libc::iovec {
                iov_base: data.cast(),
                iov_len: len,
            },
        ];
        self.headers[i] = MsghdrX {
            msg_iov: self.vectors[i].as_mut_ptr(),
            msg_iovlen: 2,
            ..MsghdrX::zeroed()
        };
    }
}

impl<B: DatagramBuf> RecvCalls for TunCalls<'_, &mut [B]> {
    fn recv_many(&mut self, n: usize) -> io::Result<usize> {
        let calls = self.calls.ok_or_else(no_batch_call)?;
        let n = n.min(self.bufs.len()).min(self.headers.len());
        for i in 0..n {
            let area = self.bufs[i].area();
            let (data, len) = (area.as_mut_ptr(), area.len());
            self.point(i, data, len);
        }
        // SAFETY: the first `n` headers point at this struct's family bytes and at the areas
        // of `bufs`, borrowed exclusively for the call; the kernel writes only within them
        // and into the headers, whose pointer comes from a unique borrow.
        let got = byte_count(unsafe {
            (calls.recvmsg_x)(
                self.fd,
                self.headers.as_mut_ptr().cast_const(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        })?
        .min(n);
        for i in 0..got {
            // A datagram shorter than its header carries no packet: an empty one, which the
            // reader drops as malformed. One longer than the area arrives cut to it.
            let area = self.vectors[i][1].iov_len;
            let len = self.headers[i]
                .msg_datalen
                .saturating_sub(FAMILY_HEADER)
                .min(area);
            self.bufs[i].received(len, None);
        }
        Ok(got)
    }

    fn recv_one(&mut self) -> io::Result<()> {
        let Some(buf) = self.bufs.first_mut() else {
            return Ok(());
        };
        let n = TunIo.read(self.fd, buf.area())?;
        buf.received(n, None);
        Ok(())
    }
}

impl<B: DatagramBuf> SendCalls for TunCalls<'_, &[B]> {
    fn send_many(&mut self, n: usize) -> Result<usize, BatchFailed> {
        let fd = self.fd;
        let limit = *self.send_limit.get_or_insert_with(|| send_buffer(fd));
        let bufs = self.bufs;
        let lengths = bufs.iter().map(|buf| {
            let (data, _) = buf.datagram();
            family_of(data).map(|_| FAMILY_HEADER + data.len())
        });
        let offered = batch_prefix(lengths, n.min(self.headers.len()), limit);
        if offered == 0 {
            return Err(BatchFailed {
                error: not_ip(),
                offered: 0,
            });
        }
        let Some(calls) = self.calls else {
            return Err(BatchFailed {
                error: no_batch_call(),
                offered,
            });
        };
        for (i, buf) in bufs.iter().take(offered).enumerate() {
            let (data, _) = buf.datagram();
            // Every packet offered is IP (`batch_prefix` stopped before any other).
            let family = family_of(data).unwrap_or(libc::AF_INET);
            self.families[i] = (family as u32).to_be_bytes();
            self.point(i, data.as_ptr().cast_mut(), data.len());
        }
        // SAFETY: the first `offered` headers point at this struct's family bytes and at the
        // packets of `bufs`, borrowed for the call; the kernel only reads them.
        let sent = unsafe {
            (calls.sendmsg_x)(
                fd,
                self.headers.as_ptr(),
                offered as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        byte_count(sent)
            .map(|sent| sent.min(offered))
            .map_err(|error| BatchFailed { error, offered })
    }

    fn send_one(&mut self) -> io::Result<()> {
        let Some(buf) = self.bufs.first() else {
            return Ok(());
        };
        let (data, _) = buf.datagram();
        if TunIo.write(self.fd, data)? != data.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short utun write"));
        }
        Ok(())
    }
}

/// The tunnel's UDP socket, many datagrams per call (`recvmsg_x`/`sendmsg_x`, as quinn-udp
/// batches UDP on Apple platforms), each with its peer's address; one per call
/// (`SingleDatagramIo`) where those calls are missing or refused (`batch.rs` decides).
///
/// `socket_private.h` says that `sendmsg_x` takes no address; quinn-udp gives it one per
/// message on unconnected UDP sockets all the same, and tests that on macOS. Should a system
/// refuse the addresses, the batch sends fail while each datagram then goes alone, and
/// batching stops after a few (`batch.rs`); a receive that brings a datagram without its
/// source address stops batching too.
pub(crate) struct DatagramIo {
    calls: Option<MsgXCalls>,
    batching: Batching,
    headers: Box<[MsghdrX]>,
    vectors: Box<[libc::iovec]>,
    received_from: Box<[libc::sockaddr_storage]>,
    send_to: Box<[SockAddr]>,
    /// The socket's send buffer ([`send_buffer`]), asked at its first batch send.
    send_limit: Option<usize>,
    single: SingleDatagramIo,
    v6: bool,
}

// SAFETY: the raw pointers in `headers` and `vectors` point only at this struct's arrays and
// at the buffers of the call in progress; they are rewritten before each call and never read
// between calls. The struct moves between threads only with the device half that owns it.
unsafe impl Send for DatagramIo {}

impl DatagramIo {
    pub(crate) fn new(max_batch: usize, v6: bool) -> Self {
        let max = max_batch.max(1);
        let calls = msg_x_calls();
        let unspecified = SockAddr::from(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        DatagramIo {
            calls,
            batching: Batching::new("UDP", max, calls.is_some()),
            headers: (0..max).map(|_| MsghdrX::zeroed()).collect(),
            // SAFETY: iovec is a plain C struct for which all zeroes is valid.
            vectors: (0..max).map(|_| unsafe { std::mem::zeroed() }).collect(),
            // SAFETY: all zeroes is a valid sockaddr_storage.
            received_from: (0..max).map(|_| unsafe { std::mem::zeroed() }).collect(),
            send_to: (0..max).map(|_| unspecified.clone()).collect(),
            send_limit: None,
            single: SingleDatagramIo::new(1, v6),
            v6,
        }
    }

    /// The socket was replaced (a rebind): batching is tried again, and the new socket's
    /// send buffer asked.
    pub(crate) fn socket_replaced(&mut self) {
        self.batching.socket_replaced();
        self.send_limit = None;
    }

    pub(crate) fn max_batch(&self) -> usize {
        self.batching.max_batch()
    }

    /// Receives up to `bufs.len()` datagrams without blocking; returns how many.
    pub(crate) fn recv<B: DatagramBuf>(&mut self, fd: RawFd, bufs: &mut [B]) -> io::Result<usize> {
        let len = bufs.len();
        let mut calls = UdpCalls {
            fd,
            calls: self.calls,
            headers: &mut self.headers,
            vectors: &mut self.vectors,
            received_from: &mut self.received_from,
            send_to: &mut self.send_to,
            send_limit: &mut self.send_limit,
            single: &mut self.single,
            v6: self.v6,
            sourceless: false,
            bufs,
        };
        let got = self.batching.recv(&mut calls, len);
        if calls.sourceless {
            self.batching
                .stop("recvmsg_x", &"a datagram came without its source address");
        }
        got
    }

    /// Sends up to `bufs.len()` datagrams, each to its endpoint, without blocking; returns
    /// how many went. The first one without an endpoint ends the batch (and, first in the
    /// batch, is the error).
    pub(crate) fn send<B: DatagramBuf>(&mut self, fd: RawFd, bufs: &[B]) -> io::Result<usize> {
        let len = bufs.len();
        let mut calls = UdpCalls {
            fd,
            calls: self.calls,
            headers: &mut self.headers,
            vectors: &mut self.vectors,
            received_from: &mut self.received_from,
            send_to: &mut self.send_to,
            send_limit: &mut self.send_limit,
            single: &mut self.single,
            v6: self.v6,
            sourceless: false,
            bufs,
        };
        self.batching.send(&mut calls, len)
    }
}

/// One UDP call's view of a [`DatagramIo`] and of the buffers it moves.
struct UdpCalls<'a, Bufs> {
    fd: RawFd,
    calls: Option<MsgXCalls>,
    headers: &'a mut [MsghdrX],
    vectors: &'a mut [libc::iovec],
    received_from: &'a mut [libc::sockaddr_storage],
    send_to: &'a mut [SockAddr],
    send_limit: &'a mut Option<usize>,
    single: &'a mut SingleDatagramIo,
    v6: bool,
    /// A batch receive brought a datagram without its source address.
    sourceless: bool,
    bufs: Bufs,
}

impl<B: DatagramBuf> RecvCalls for UdpCalls<'_, &mut [B]> {
    fn recv_many(&mut self, n: usize) -> io::Result<usize> {
        let calls = self.calls.ok_or_else(no_batch_call)?;
        let n = n.min(self.bufs.len()).min(self.headers.len());
        let name_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        for i in 0..n {
            let area = self.bufs[i].area();
            self.vectors[i] = libc::iovec {
                iov_base: area.as_mut_ptr().cast(),
                iov_len: area.len(),
            };
            // A slot the kernel leaves without an address reads as none, not as the last
            // datagram's.
            self.received_from[i].ss_family = libc::AF_UNSPEC as libc::sa_family_t;
            self.headers[i] = MsghdrX {
                msg_name: (&mut self.received_from[i] as *mut libc::sockaddr_storage).cast(),
                msg_namelen: name_len,
                msg_iov: &mut self.vectors[i],
                msg_iovlen: 1,
                ..MsghdrX::zeroed()
            };
        }
        // SAFETY: the first `n` headers point at the areas of `bufs`, borrowed exclusively
        // for the call, and at this struct's address storage, each as large as its length
        // says; the kernel writes only within them and into the headers, whose pointer comes
        // from a unique borrow.
        let got = byte_count(unsafe {
            (calls.recvmsg_x)(
                self.fd,
                self.headers.as_mut_ptr().cast_const(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        })?
        .min(n);
        for i in 0..got {
            // A datagram longer than the area arrives cut to it: the reader's area is one
            // byte past the largest datagram, so it sees the datagram oversize.
            let len = self.headers[i].msg_datalen.min(self.vectors[i].iov_len);
            let from = from_storage(&self.received_from[i], self.headers[i].msg_namelen);
            self.sourceless |= from.is_none();
            self.bufs[i].received(len, from);
        }
        Ok(got)
    }

    fn recv_one(&mut self) -> io::Result<()> {
        self.single.recv(self.fd, self.bufs).map(|_| ())
    }
}

impl<B: DatagramBuf> SendCalls for UdpCalls<'_, &[B]> {
    fn send_many(&mut self, n: usize) -> Result<usize, BatchFailed> {
        let fd = self.fd;
        let limit = *self.send_limit.get_or_insert_with(|| send_buffer(fd));
        let bufs = self.bufs;
        let lengths = bufs.iter().map(|buf| {
            let (data, to) = buf.datagram();
            to.map(|_| data.len())
        });
        let offered = batch_prefix(lengths, n.min(self.headers.len()), limit);
        if offered == 0 {
            return Err(BatchFailed {
                error: no_destination(),
                offered: 0,
            });
        }
        let Some(calls) = self.calls else {
            return Err(BatchFailed {
                error: no_batch_call(),
                offered,
            });
        };
        let mut prepared = 0;
        for buf in bufs.iter().take(offered) {
            let (data, Some(to)) = buf.datagram() else {
                break;
            };
            let i = prepared;
            self.send_to[i] = for_socket(to, self.v6);
            self.vectors[i] = libc::iovec {
                iov_base: data.as_ptr().cast_mut().cast(),
                iov_len: data.len(),
            };
            self.headers[i] = MsghdrX {
                msg_name: self.send_to[i].as_ptr().cast_mut().cast(),
                msg_namelen: self.send_to[i].len(),
                msg_iov: &mut self.vectors[i],
                msg_iovlen: 1,
                ..MsghdrX::zeroed()
            };
            prepared += 1;
        }
        // SAFETY: the first `prepared` headers point at the datagrams of `bufs` (borrowed for
        // the call) and at this struct's addresses, each as long as its length says; the
        // kernel only reads them.
        let sent = unsafe {
            (calls.sendmsg_x)(
                fd,
                self.headers.as_ptr(),
                prepared as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        byte_count(sent)
            .map(|sent| sent.min(prepared))
            .map_err(|error| BatchFailed {
                error,
                offered: prepared,
            })
    }

    fn send_one(&mut self) -> io::Result<()> {
        self.single.send(self.fd, self.bufs).map(|_| ())
    }
}

/// The utun protocol family of an IP packet, from its version nibble.
fn family_of(packet: &[u8]) -> Option<libc::c_int> {
    match packet.first().map(|b| b >> 4) {
        Some(6) => Some(libc::AF_INET6),
        Some(4) => Some(libc::AF_INET),
        _ => None,
    }
}

fn not_ip() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not an IP packet")
}

/// `UTUN_OPT_MAX_PENDING_PACKETS` from XNU's `bsd/net/if_utun.h` (value 16, level
/// `SYSPROTO_CONTROL`, a non-zero `u_int32_t`; XNU's `utun_ctl_setopt` refuses another size
/// with EMSGSIZE and 0 with EINVAL): how many packets may wait in the control socket to be
/// read. XNU defaults to a handful, which throttles a fast reader to lock-step reads;
/// firezone's connlib (`apple` tun) raises it, with the socket's receive buffer, for the
/// same reason.
const UTUN_OPT_MAX_PENDING_PACKETS: libc::c_int = 16;
/// Receive buffer asked for with `SO_RCVBUF`: 2 MiB on iOS/tvOS, where the extension's
/// memory is tight, 8 MiB on macOS, as connlib does. XNU refuses (ENOBUFS), rather than
/// clamps, a size past `sb_max`·2048/2304 (about 7.1 MiB with the default `kern.ipc.maxsockbuf`
/// of 8 MiB), so the request is halved until one is taken ([`set_buffer`]).
const RECV_BUFFER: usize = if cfg!(target_os = "macos") {
    8 << 20
} else {
    2 << 20
};
/// Send buffer: writes go straight to the interface, so a modest one suffices.
const SEND_BUFFER: usize = 1 << 20;
/// Enough pending packets to fill the receive buffer with 1500-byte packets.
const MAX_PENDING_PACKETS: u32 = (RECV_BUFFER as u32 / 1500).next_power_of_two();
/// The smallest buffer worth asking for; below it the kernel's default stays.
const MIN_BUFFER: usize = 64 << 10;

/// Asks for a socket buffer (`SO_RCVBUF` or `SO_SNDBUF`) of `bytes`, halving the request
/// while XNU refuses it, and returns the size the kernel then reports.
fn set_buffer(fd: RawFd, option: libc::c_int, bytes: usize) -> io::Result<usize> {
    let mut size = bytes;
    let mut refused = None;
    while size >= MIN_BUFFER {
        let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        match set_opt(fd, libc::SOL_SOCKET, option, value) {
            Ok(()) => {
                refused = None;
                break;
            }
            Err(e) => {
                refused = Some(e);
                size /= 2;
            }
        }
    }
    if let Some(e) = refused {
        return Err(e);
    }
    get_int_opt(fd, libc::SOL_SOCKET, option).map(|v| usize::try_from(v).unwrap_or(0))
}

fn get_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which is that large.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

fn set_opt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: T) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<T>()` bytes from `value`, which lives on this frame.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Raises the utun pending-packet limit and the socket buffers, best effort: a refusal is
/// logged and the engine runs with the defaults; the buffer sizes granted are logged.
pub(crate) fn tune_tun(fd: RawFd) {
    if let Err(e) = set_opt(
        fd,
        SYSPROTO_CONTROL,
        UTUN_OPT_MAX_PENDING_PACKETS,
        MAX_PENDING_PACKETS,
    ) {
        log::warn!("could not set UTUN_OPT_MAX_PENDING_PACKETS (running with the default): {e}");
    }
    for (name, option, bytes) in [
        ("SO_RCVBUF", libc::SO_RCVBUF, RECV_BUFFER),
        ("SO_SNDBUF", libc::SO_SNDBUF, SEND_BUFFER),
    ] {
        match set_buffer(fd, option, bytes) {
            Ok(granted) => log::debug!("utun {name}: asked {bytes}, granted {granted}"),
            Err(e) => {
                log::warn!("could not set {name} on the utun fd (running with the default): {e}")
            }
        }
    }
}

#[cfg(any(target_os = "ios", target_os = "tvos"))]
extern "C" {
    /// `<os/proc.h>`: bytes the process may still allocate before it hits its memory limit
    /// (iOS 13+, tvOS 13+); 0 when not limited or unknown.
    fn os_proc_available_memory() -> libc::size_t;
}

/// Bytes the process may still allocate before the jetsam limit (`os_proc_available_memory`):
/// iOS and tvOS only; `None` on macOS, where the call does not exist.
pub fn available_memory() -> Option<u64> {
    #[cfg(any(target_os = "ios", target_os = "tvos"))]
    {
        // SAFETY: takes no arguments and only reads the process's own accounting.
        Some(unsafe { os_proc_available_memory() } as u64)
    }
    #[cfg(not(any(target_os = "ios", target_os = "tvos")))]
    {
        None
    }
}

/// Apple has no thread affinity; actors get the user-interactive QoS class instead, so the
/// scheduler keeps them on performance cores and runs them promptly.
pub(crate) fn place_current_thread(actor_index: usize, pin: bool) {
    if !pin {
        return;
    }
    // SAFETY: sets the calling thread's own QoS class; no pointers.
    let ret = unsafe {
        libc::pthread_set_qos_class_self_np(libc::qos_class_t::QOS_CLASS_USER_INTERACTIVE, 0)
    };
    if ret != 0 {
        log::warn!("could not set the QoS class of actor {actor_index}: error {ret}");
    }
}

/// Asks for `bytes` of receive and send buffer, halving the request until the kernel takes
/// it (XNU refuses, rather than clamps, a size past its limit); returns what it granted.
pub(crate) fn set_socket_buffers(socket: &socket2::Socket, bytes: usize) -> (usize, usize) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    (
        set_buffer(fd, libc::SO_RCVBUF, bytes).unwrap_or(0),
        set_buffer(fd, libc::SO_SNDBUF, bytes).unwrap_or(0),
    )
}
