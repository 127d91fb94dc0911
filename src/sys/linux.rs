//! Linux and Android.

use std::io;
use std::os::fd::RawFd;

/// `struct ifreq` as `TUNGETIFF` fills it: 40 bytes on every Linux ABI, the interface name
/// first.
fn tungetiff(fd: RawFd) -> io::Result<[u8; 40]> {
    let mut ifreq = [0u8; 40];
    // SAFETY: TUNGETIFF writes at most one `struct ifreq` into the buffer, which is that size.
    let ret = unsafe { libc::ioctl(fd, libc::TUNGETIFF as _, ifreq.as_mut_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ifreq)
}

/// Checks that `fd` is a TUN device with `TUNGETIFF`, which fails on anything else.
pub(crate) fn validate_tun_fd(fd: RawFd) -> io::Result<()> {
    super::fd_flags(fd)?;
    tungetiff(fd).map(|_| ()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a TUN device (TUNGETIFF: {e})"),
        )
    })
}

/// The TUN's interface name, which every fd attached to it shares.
pub(crate) fn tun_identity(fd: RawFd) -> io::Result<String> {
    let ifreq = tungetiff(fd)?;
    let name = &ifreq[..libc::IFNAMSIZ];
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..len]).into_owned())
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
