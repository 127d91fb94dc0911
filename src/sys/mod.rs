//! Platform code: the only engine code with `target_os` cfgs.
//!
//! Each platform module provides:
//! - `validate_tun_fd(fd)`: is this fd a TUN (Linux) / utun control socket (Apple) that the
//!   engine can run on?
//! - `tun_identity(fd)`: who the TUN behind `fd` is, the same for all its dups (`TunIdentity`);
//! - `TunIo`: reads and writes of one packet that never block, whatever `O_NONBLOCK` says;
//! - `tune_tun(fd)`: best-effort throughput settings for a fresh run (logged on failure);
//! - Apple only, `TunBatchIo`: many utun packets per call (`recvmsg_x`/`sendmsg_x`, looked
//!   up at run time, one packet per call without them: `batch`); a Linux TUN without offload
//!   has no multi-packet read or write;
//! - `DatagramIo`: a UDP socket's datagrams, many per call where the platform can
//!   (`recvmmsg`/`sendmmsg` on Linux, `recvmsg_x`/`sendmsg_x` on Apple as for the utun), one
//!   per call elsewhere (`net::SingleDatagramIo`);
//! - `set_socket_buffers(socket, bytes)`: the largest receive and send buffers it can get;
//! - `place_current_thread(actor_index, pin)`: core pinning (Linux, Android) or a QoS class
//!   (Apple), logged, never fatal.
//!
//! The fd helpers below are plain POSIX and shared by all.

use std::io;
use std::os::fd::RawFd;

#[cfg(target_vendor = "apple")]
#[path = "apple.rs"]
mod imp;
#[cfg(any(target_os = "linux", target_os = "android"))]
#[path = "linux/mod.rs"]
mod imp;
#[cfg(not(any(target_vendor = "apple", target_os = "linux", target_os = "android")))]
#[path = "other.rs"]
mod imp;

/// When a half moves many packets per call, and how it falls back to one: Apple's, tested
/// everywhere.
#[cfg(any(test, target_vendor = "apple"))]
pub(crate) mod batch;
pub(crate) mod net;
#[cfg(feature = "wireguard")]
pub(crate) mod resolve;

/// Many packets per call on a utun (Apple: `recvmsg_x`/`sendmsg_x` where found).
#[cfg(target_vendor = "apple")]
pub(crate) use imp::TunBatchIo;
/// GSO refusals in a row after which a UDP half sends without GSO (until a rebind).
#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
pub(crate) use imp::GSO_REFUSALS_BEFORE_OFF;
pub(crate) use imp::{
    place_current_thread, set_socket_buffers, tun_identity, tune_tun, validate_tun_fd, DatagramIo,
    TunIo,
};

/// Who a TUN is, the same for every fd attached to it, so that one process runs one engine
/// per TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TunIdentity {
    /// A network namespace (device and inode of its nsfs file) and an interface index
    /// (Linux and Android).
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    Index { netns: (u64, u64), ifindex: u32 },
    /// An interface name, in a namespace where it is known; where nothing better can be had
    /// (and on Apple, where utun names are unique and cannot be changed).
    Name {
        netns: Option<(u64, u64)>,
        name: String,
    },
}

impl std::fmt::Display for TunIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunIdentity::Index { ifindex, .. } => write!(f, "interface index {ifindex}"),
            TunIdentity::Name { name, .. } => f.write_str(name),
        }
    }
}

#[cfg(target_vendor = "apple")]
pub use imp::{available_memory, find_utun_fd};

/// Finds the packet tunnel's utun fd by scanning descriptors: Apple only.
///
/// # Errors
/// Always `Unsupported` here.
#[cfg(not(target_vendor = "apple"))]
pub fn find_utun_fd() -> io::Result<RawFd> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "utun fd discovery exists only on Apple platforms",
    ))
}

/// Bytes the process may still allocate before the jetsam limit (`os_proc_available_memory`):
/// iOS and tvOS only, `None` elsewhere.
#[cfg(not(target_vendor = "apple"))]
pub fn available_memory() -> Option<u64> {
    None
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The byte count a read or write system call returned, or its error.
fn byte_count(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// The fd's status flags (`F_GETFL`).
pub(crate) fn fd_flags(fd: RawFd) -> io::Result<i32> {
    // SAFETY: F_GETFL takes no pointer; an invalid fd yields EBADF, not undefined behaviour.
    check(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

/// Descriptors tunpipe holds for running engines (its dups of hosts' fds), so that a scan for
/// the host's utun fd does not find tunpipe's own.
static HELD: parking_lot::Mutex<Vec<RawFd>> = parking_lot::Mutex::new(Vec::new());

/// Marks a descriptor as tunpipe's own for as long as it lives.
#[derive(Debug)]
pub(crate) struct HeldFd(RawFd);

impl HeldFd {
    pub(crate) fn new(fd: RawFd) -> Self {
        HELD.lock().push(fd);
        HeldFd(fd)
    }
}

impl Drop for HeldFd {
    fn drop(&mut self) {
        let mut held = HELD.lock();
        if let Some(at) = held.iter().position(|&fd| fd == self.0) {
            held.swap_remove(at);
        }
    }
}

/// Whether `fd` is one of tunpipe's own ([`HeldFd`]).
#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
pub(crate) fn is_held(fd: RawFd) -> bool {
    HELD.lock().contains(&fd)
}

/// A close-on-exec duplicate of `fd`, owned by the caller.
pub(crate) fn dup_cloexec(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer; an invalid fd yields EBADF.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })
}

/// Is `fd` open? (For tests and the C ABI's checks.)
pub fn fd_is_open(fd: RawFd) -> bool {
    fd_flags(fd).is_ok()
}

#[cfg(all(test, not(tunpipe_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_held_fd_is_marked_while_it_lives() {
        // A number no real descriptor of this test has.
        let fd = 1_000_001;
        assert!(!is_held(fd));
        let held = HeldFd::new(fd);
        let again = HeldFd::new(fd);
        assert!(is_held(fd));
        drop(held);
        assert!(
            is_held(fd),
            "a second mark of the same number keeps it marked"
        );
        drop(again);
        assert!(!is_held(fd));
    }
}
