//! Linux and Android.

mod rtnetlink;
mod udp;

pub(crate) use udp::MmsgIo as DatagramIo;
#[cfg(test)]
pub(crate) use udp::GSO_REFUSALS_BEFORE_OFF;

use super::{byte_count, check, TunIdentity};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// `struct ifreq` as `TUNGETIFF` fills it: 40 bytes on every Linux ABI, the interface name
/// first, then the flags (a `short`).
fn tungetiff(fd: RawFd) -> io::Result<[u8; 40]> {
    let mut ifreq = [0u8; 40];
    // SAFETY: TUNGETIFF writes at most one `struct ifreq` into the buffer, which is that size.
    let ret = unsafe { libc::ioctl(fd, libc::TUNGETIFF as _, ifreq.as_mut_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ifreq)
}

fn ifreq_name(ifreq: &[u8; 40]) -> String {
    let name = &ifreq[..libc::IFNAMSIZ];
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..len]).into_owned()
}

fn ifreq_flags(ifreq: &[u8; 40]) -> libc::c_int {
    libc::c_int::from(i16::from_ne_bytes([
        ifreq[libc::IFNAMSIZ],
        ifreq[libc::IFNAMSIZ + 1],
    ]))
}

/// What the kernel says about the TUN behind an fd.
struct TunFacts {
    name: String,
    /// Flags as `TUNGETIFF` reports them (`IFF_TUN`/`IFF_TAP`, `IFF_VNET_HDR`, ...; not
    /// `IFF_NO_PI`, see [`rtnetlink`]).
    flags: libc::c_int,
    /// The device's network namespace (device and inode of its nsfs file), where known.
    netns: Option<(u64, u64)>,
    ifindex: Option<u32>,
    /// Whether it prepends packet information, where rtnetlink says.
    packet_info: Option<bool>,
}

/// Asks the kernel about the TUN behind `fd`. The index and the packet-information flag are
/// looked up in the device's own namespace: a namespace other than this thread's takes a
/// throwaway thread that joins it (`setns`, which needs privilege); where that is refused, or
/// the kernel predates `TUNGETDEVNETNS` (4.19), they stay unknown.
fn tun_facts(fd: RawFd) -> io::Result<TunFacts> {
    let ifreq = tungetiff(fd)?;
    let name = ifreq_name(&ifreq);
    let netns = device_netns(fd);
    let (ifindex, packet_info) = match netns {
        Some(ref ns) if Some(ns.id) != current_netns_id() => {
            link_facts_in(ns.fd.try_clone()?, name.clone())
        }
        _ => link_facts(&name),
    };
    Ok(TunFacts {
        name,
        flags: ifreq_flags(&ifreq),
        netns: netns.map(|ns| ns.id),
        ifindex,
        packet_info,
    })
}

fn link_facts(name: &str) -> (Option<u32>, Option<bool>) {
    let ifindex = if_index(name);
    let packet_info = ifindex.and_then(|i| rtnetlink::tun_has_packet_info(i).ok().flatten());
    (ifindex, packet_info)
}

/// [`link_facts`] in the namespace `ns`, by a thread that joins it, so that this thread's
/// namespace is untouched.
fn link_facts_in(ns: std::os::fd::OwnedFd, name: String) -> (Option<u32>, Option<bool>) {
    let asked = std::thread::Builder::new()
        .name("tunpipe-netns".into())
        .spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns takes an fd and a flag; it moves only this throwaway thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return (None, None);
            }
            link_facts(&name)
        });
    asked
        .ok()
        .and_then(|thread| thread.join().ok())
        .unwrap_or((None, None))
}

/// Checks that `fd` is what the engine can run on: a TUN (not a TAP) with plain IP framing
/// (no packet-information header, no `IFF_VNET_HDR` offload header), open for reading and
/// writing. Anything else would feed the engine framing it does not parse, or fail on the
/// first write. Where the kernel cannot say whether packet information is on (Linux before
/// 4.15, or a namespace this process may not join), the fd is taken as `IFF_NO_PI`.
pub(crate) fn validate_tun_fd(fd: RawFd) -> io::Result<()> {
    let access = super::fd_flags(fd)? & libc::O_ACCMODE;
    let refuse = |why: String| Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    let facts = match tun_facts(fd) {
        Ok(facts) => facts,
        Err(e) => return refuse(format!("fd {fd} is not a TUN device (TUNGETIFF: {e})")),
    };
    let name = &facts.name;
    if facts.flags & libc::IFF_TAP != 0 {
        return refuse(format!("fd {fd} is a TAP device ({name}), not a TUN"));
    }
    if facts.packet_info == Some(true) {
        return refuse(format!(
            "TUN {name} (fd {fd}) prepends packet information: create it with IFF_NO_PI"
        ));
    }
    if facts.flags & libc::IFF_VNET_HDR != 0 {
        return refuse(format!(
            "TUN {name} (fd {fd}) prepends a virtio-net header (IFF_VNET_HDR)"
        ));
    }
    if access != libc::O_RDWR {
        return refuse(format!(
            "fd {fd} ({name}) is not open for reading and writing"
        ));
    }
    Ok(())
}

/// Who the TUN behind `fd` is, the same for every fd attached to it: its network namespace
/// and interface index, which survive a rename (a name does not, and two namespaces may each
/// have a `tun0`). Where the index cannot be had, the name in its namespace stands in.
pub(crate) fn tun_identity(fd: RawFd) -> io::Result<TunIdentity> {
    let facts = tun_facts(fd)?;
    Ok(match (facts.netns, facts.ifindex) {
        (Some(netns), Some(ifindex)) => TunIdentity::Index { netns, ifindex },
        (netns, _) => TunIdentity::Name {
            netns,
            name: facts.name,
        },
    })
}

/// A network namespace: an open fd to it, and its identity (device and inode of that fd).
struct Netns {
    fd: std::os::fd::OwnedFd,
    id: (u64, u64),
}

fn device_netns(fd: RawFd) -> Option<Netns> {
    use std::os::fd::FromRawFd;
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new fd (or -1).
    let ns = unsafe { libc::ioctl(fd, libc::TUNGETDEVNETNS as _) };
    if ns < 0 {
        return None;
    }
    // SAFETY: `ns` is a fresh descriptor that nothing else owns.
    let ns = unsafe { std::os::fd::OwnedFd::from_raw_fd(ns) };
    let id = file_id(std::os::fd::AsRawFd::as_raw_fd(&ns))?;
    Some(Netns { fd: ns, id })
}

fn current_netns_id() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    Some((meta.dev(), meta.ino()))
}

fn file_id(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `struct stat` into `st`.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev as u64, st.st_ino as u64))
}

fn if_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Nothing to tune: the Linux TUN queue length is an interface setting (`ip link ... txqueuelen`).
pub(crate) fn tune_tun(_fd: RawFd) {}

/// Reads and writes a TUN without blocking, whatever the shared `O_NONBLOCK` flag says: the
/// host owns that flag (it lives on the open file, which the engine's dup shares) and may
/// clear it, and a read that blocks is one a stop cannot reach.
///
/// `preadv2`/`pwritev2` with `RWF_NOWAIT` ask the kernel for "now or EAGAIN" per call; TUN
/// honours it since Linux 5.9 (and answers `EOPNOTSUPP` before). There, each call polls the
/// fd first with a zero timeout: one more syscall per packet, and a reader racing another
/// process for the same packet could still block, which this older-kernel path documents.
#[derive(Debug, Default)]
pub(crate) struct TunIo {
    /// Set once the kernel refused `RWF_NOWAIT`; from then on this run polls first.
    poll_first: AtomicBool,
}

impl TunIo {
    pub(crate) fn new() -> Self {
        TunIo::default()
    }

    pub(crate) fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        if !self.poll_first.load(Ordering::Relaxed) {
            let iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            match nowait_rw(libc::SYS_preadv2, fd, &iov) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.fall_back(),
                result => return result,
            }
        }
        if !ready(fd, libc::POLLIN)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // SAFETY: read writes at most `buf.len()` bytes into `buf`.
        byte_count(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
    }

    pub(crate) fn write(&self, fd: RawFd, packet: &[u8]) -> io::Result<usize> {
        if !self.poll_first.load(Ordering::Relaxed) {
            let iov = libc::iovec {
                iov_base: packet.as_ptr() as *mut _,
                iov_len: packet.len(),
            };
            match nowait_rw(libc::SYS_pwritev2, fd, &iov) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.fall_back(),
                result => return result,
            }
        }
        if !ready(fd, libc::POLLOUT)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // SAFETY: write reads `packet.len()` bytes from `packet`.
        byte_count(unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) })
    }

    #[cold]
    fn fall_back(&self) {
        if !self.poll_first.swap(true, Ordering::Relaxed) {
            log::info!("this kernel's TUN refuses RWF_NOWAIT; polling before each read instead");
        }
    }
}

/// `preadv2`/`pwritev2(fd, iov, 1, -1, RWF_NOWAIT)` as raw system calls: one vector, at the
/// file's position (which a TUN ignores). The raw call, not libc's wrapper, because Android's
/// libc has the wrapper only from API level 33. The position goes in two halves, and -1 in
/// both is -1 on 32- and 64-bit kernels alike.
fn nowait_rw(call: libc::c_long, fd: RawFd, iov: &libc::iovec) -> io::Result<usize> {
    // SAFETY: the kernel reads one iovec at `iov`, which describes a buffer the caller owns
    // for the call (writable for preadv2).
    let n = unsafe {
        libc::syscall(
            call,
            fd as libc::c_long,
            iov as *const libc::iovec,
            1 as libc::c_long,
            -1 as libc::c_long,
            -1 as libc::c_long,
            libc::RWF_NOWAIT as libc::c_long,
        )
    };
    byte_count(n as isize)
}

/// Is `fd` ready for `events` right now? (A zero-timeout poll.)
fn ready(fd: RawFd, events: libc::c_short) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd it is given.
    let n = check(unsafe { libc::poll(&mut pfd, 1, 0) })?;
    if n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
        // Let the read or write itself report what is wrong (EBADFD for a deleted TUN).
        return Ok(true);
    }
    Ok(n > 0)
}

/// Pins the calling thread to a core, spreading actors over the cores there are.
pub(crate) fn place_current_thread(actor_index: usize, pin: bool) {
    if !pin {
        return;
    }
    match core_affinity::get_core_ids() {
        Some(cores) if !cores.is_empty() => {
            let core = cores[actor_index % cores.len()];
            if !core_affinity::set_for_current(core) {
                log::warn!("could not pin actor {actor_index} to core {}", core.id);
            }
        }
        _ => log::warn!("could not list cores; actor {actor_index} is not pinned"),
    }
}

/// Asks for `bytes` of receive and send buffer on a UDP socket, past the system's limit
/// (`net.core.rmem_max`) where the process may (`SO_RCVBUFFORCE`, `CAP_NET_ADMIN`), within it
/// otherwise; returns what the kernel granted (as it reports it: twice the usable size).
pub(crate) fn set_socket_buffers(socket: &socket2::Socket, bytes: usize) -> (usize, usize) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_option(fd, force, size).is_err() {
            let _ = set_int_option(fd, plain, size);
        }
    }
    (
        socket.recv_buffer_size().unwrap_or(0),
        socket.send_buffer_size().unwrap_or(0),
    )
}

fn set_int_option(fd: RawFd, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int from `value`, which lives on this frame.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(ret).map(|_| ())
}
