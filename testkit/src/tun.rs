//! TUN devices for tests and benches, and the one privilege probe: can this process make a
//! TUN (on Linux: in a network namespace of its own)?
//!
//! tun-rs creates devices on Linux and macOS (a utun); on iOS, tvOS and Android the host
//! owns the TUN, and only [`privilege_problem`] is here (it says no).

/// The MTU of every TUN made here.
pub const MTU: u16 = 1500;

/// Why this process cannot make a network namespace and a TUN in it (on macOS: a utun), or
/// None when it can. Tried once on a throwaway thread, so the caller's namespace is left
/// alone. Every test binary and bench that needs a real TUN asks this, and nothing else,
/// and shows its root-only parts as ignored with the reason.
pub fn privilege_problem() -> Option<String> {
    std::thread::spawn(probe)
        .join()
        .unwrap_or_else(|_| Some("the privilege probe panicked".into()))
}

#[cfg(target_os = "linux")]
fn probe() -> Option<String> {
    if let Err(e) = crate::netns::unshare_net() {
        return Some(format!("needs root (unshare: {e})"));
    }
    made(tun_rs::DeviceBuilder::new().name("tpprobe").build_sync())
}

#[cfg(target_os = "macos")]
fn probe() -> Option<String> {
    made(tun_rs::DeviceBuilder::new().build_sync())
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
fn made(device: std::io::Result<tun_rs::SyncDevice>) -> Option<String> {
    device.err().map(|e| format!("cannot create a TUN ({e})"))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn probe() -> Option<String> {
    Some("tun-rs cannot create a TUN on this platform".into())
}

/// A builder for a TUN with `ipv4`/24 and MTU [`MTU`], named `name` on Linux (macOS picks a
/// utun name itself).
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub fn tun_builder(name: &str, ipv4: &str) -> tun_rs::DeviceBuilder {
    let b = tun_rs::DeviceBuilder::new().ipv4(ipv4, 24, None).mtu(MTU);
    #[cfg(target_os = "linux")]
    let b = b.name(name);
    #[cfg(not(target_os = "linux"))]
    let _ = name;
    b
}

/// A TUN `name` with `ipv4`/24, up.
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub fn tun(name: &str, ipv4: &str) -> Result<tun_rs::SyncDevice, String> {
    built(name, tun_builder(name, ipv4))
}

/// A TUN `name` with `ipv4`/24, up, with offload (Linux: `IFF_VNET_HDR` with TSO, so that
/// reads and writes may carry 64 KiB TCP segments); an error if the kernel gives none.
#[cfg(target_os = "linux")]
pub fn tun_offload(name: &str, ipv4: &str) -> Result<tun_rs::SyncDevice, String> {
    let device = built(name, tun_builder(name, ipv4).offload(true))?;
    if !device.tcp_gso() {
        return Err(format!("TUN {name}: the kernel gave no offload"));
    }
    Ok(device)
}

/// A TUN `name` with `ipv4`/24 and `ipv6`/64, up.
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub fn tun_v6(name: &str, ipv4: &str, ipv6: &str) -> Result<tun_rs::SyncDevice, String> {
    built(name, tun_builder(name, ipv4).ipv6(ipv6, 64))
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
fn built(name: &str, builder: tun_rs::DeviceBuilder) -> Result<tun_rs::SyncDevice, String> {
    builder
        .build_sync()
        .map_err(|e| format!("create TUN {name}: {e}"))
}

/// Runs `f` on a thread named `name`, in a fresh network namespace on Linux (IPv6 as the
/// kernel sets it up; elsewhere in the host's network): every thread it starts (engines,
/// loops, runtimes) and every process they spawn inherits the namespace. A panic becomes an
/// error. What a bench section runs in.
pub fn in_private_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    crate::thread::on_thread(name, None, move || {
        #[cfg(target_os = "linux")]
        crate::netns::enter_fresh_netns(crate::netns::Ipv6::AsIs)?;
        Ok(f())
    })
}

/// A TUN or TAP opened by hand (`TUNSETIFF` on `/dev/net/tun`) with exactly `flags`
/// (`IFF_TUN`/`IFF_TAP`, `IFF_NO_PI`, `IFF_VNET_HDR`, ...) and `access` (`O_RDWR`,
/// `O_RDONLY`): the odd kinds of fd a host might hand the engine.
#[cfg(target_os = "linux")]
pub fn open_raw(
    name: &str,
    flags: libc::c_int,
    access: libc::c_int,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: opens a path given as a NUL-terminated literal; the result is checked.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), access | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads (and may update) the one ifreq it is given.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}
