//! Platforms without a known TUN check: adopted fds are taken on trust.

use super::{byte_count, TunIdentity};
use std::io;
use std::os::fd::RawFd;

pub(crate) fn validate_tun_fd(fd: RawFd) -> io::Result<()> {
    super::fd_flags(fd).map(|_| ())
}

/// The open file's identity (device and inode), shared by its dups.
pub(crate) fn tun_identity(fd: RawFd) -> io::Result<TunIdentity> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `struct stat` into `st`.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TunIdentity::Name {
        netns: None,
        name: format!("dev {} inode {}", st.st_dev, st.st_ino),
    })
}

pub(crate) fn tune_tun(_fd: RawFd) {}

/// Plain reads and writes: this platform offers no per-call non-blocking mode that tunpipe
/// knows, so the descriptor's own blocking mode applies.
#[derive(Debug)]
pub(crate) struct TunIo;

impl TunIo {
    pub(crate) fn new() -> Self {
        TunIo
    }

    pub(crate) fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read writes at most `buf.len()` bytes into `buf`.
        byte_count(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
    }

    pub(crate) fn write(&self, fd: RawFd, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: write reads `packet.len()` bytes from `packet`.
        byte_count(unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) })
    }
}

pub(crate) fn place_current_thread(actor_index: usize, pin: bool) {
    if pin {
        log::warn!("pinning is not supported here; actor {actor_index} is not pinned");
    }
}

pub(crate) use super::net::SingleDatagramIo as DatagramIo;

/// Asks for `bytes` of receive and send buffer, halving the request until the kernel takes
/// it (XNU refuses, rather than clamps, a size past its limit); returns what it granted.
pub(crate) fn set_socket_buffers(socket: &socket2::Socket, bytes: usize) -> (usize, usize) {
    let mut size = bytes;
    while size >= 64 * 1024 && socket.set_recv_buffer_size(size).is_err() {
        size /= 2;
    }
    let mut size = bytes;
    while size >= 64 * 1024 && socket.set_send_buffer_size(size).is_err() {
        size /= 2;
    }
    (
        socket.recv_buffer_size().unwrap_or(0),
        socket.send_buffer_size().unwrap_or(0),
    )
}
