//! A private network namespace for the demo (Linux only).
//!
//! The demo unshares its network namespace on the main thread before it spawns any thread,
//! so every engine thread and every child process (ping) lives in it too. The namespace holds
//! only `lo` and the demo's TUN, and it vanishes when the process exits: nothing to clean up,
//! nothing left behind even after a crash or Ctrl-C.

/// Moves this process into a fresh network namespace and brings `lo` up there.
///
/// Must be called before any thread is spawned: threads that already exist stay behind.
///
/// # Errors
/// Why not, on one line (typically: not root).
#[cfg(target_os = "linux")]
pub fn enter_private_netns() -> Result<(), String> {
    // SAFETY: unshare takes no pointers and only changes this thread's namespace membership;
    // no other thread exists yet, so the whole process moves.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            " (needs root or CAP_SYS_ADMIN)"
        } else {
            ""
        };
        return Err(format!(
            "cannot create a private network namespace: {e}{hint}"
        ));
    }
    bring_up("lo").map_err(|e| format!("cannot bring up lo in the private namespace: {e}"))
}

#[cfg(not(target_os = "linux"))]
pub fn enter_private_netns() -> Result<(), String> {
    Err("private network namespaces exist only on Linux".to_string())
}

/// Sets IFF_UP on an interface, as `ip link set NAME up` does.
#[cfg(target_os = "linux")]
fn bring_up(name: &str) -> std::io::Result<()> {
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd};

    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; OwnedFd closes it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid, NUL-terminated ifreq that outlives the call; SIOCGIFFLAGS
    // writes only its flags field.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union, so reading it is defined.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
