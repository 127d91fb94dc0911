//! Platforms without a known TUN check: adopted fds are taken on trust.

use std::io;
use std::os::fd::RawFd;

pub(crate) fn validate_tun_fd(fd: RawFd) -> io::Result<()> {
    super::fd_flags(fd).map(|_| ())
}

/// The open file's identity (device and inode), shared by its dups.
pub(crate) fn tun_identity(fd: RawFd) -> io::Result<String> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one `struct stat` into `st`.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(format!("dev {} inode {}", st.st_dev, st.st_ino))
}

pub(crate) fn tune_tun(_fd: RawFd) {}

pub(crate) fn place_current_thread(actor_index: usize, pin: bool) {
    if pin {
        log::warn!("pinning is not supported here; actor {actor_index} is not pinned");
    }
}
