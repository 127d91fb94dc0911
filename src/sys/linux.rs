//! Linux and Android.

use std::io;
use std::os::fd::RawFd;

/// Checks that `fd` is a TUN device with `TUNGETIFF`, which fails on anything else.
pub(crate) fn validate_tun_fd(fd: RawFd) -> io::Result<()> {
    super::fd_flags(fd)?;
    // struct ifreq is 40 bytes on every Linux ABI; TUNGETIFF fills the name and flags.
    let mut ifreq = [0u8; 40];
    // SAFETY: TUNGETIFF writes at most one `struct ifreq` into the buffer, which is that size.
    let ret = unsafe { libc::ioctl(fd, libc::TUNGETIFF as _, ifreq.as_mut_ptr()) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a TUN device (TUNGETIFF: {e})"),
        ));
    }
    Ok(())
}

/// Nothing to tune: the Linux TUN queue length is an interface setting (`ip link ... txqueuelen`).
pub(crate) fn tune_tun(_fd: RawFd) {}

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
