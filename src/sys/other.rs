//! Platforms without a known TUN check: adopted fds are taken on trust.

use std::io;
use std::os::fd::RawFd;

pub(crate) fn validate_tun_fd(fd: RawFd) -> io::Result<()> {
    super::fd_flags(fd).map(|_| ())
}

pub(crate) fn tune_tun(_fd: RawFd) {}

pub(crate) fn place_current_thread(actor_index: usize, pin: bool) {
    if pin {
        log::warn!("pinning is not supported here; actor {actor_index} is not pinned");
    }
}
