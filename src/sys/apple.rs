//! Apple (iOS, tvOS, macOS): utun checks, thread QoS.

use std::io;
use std::os::fd::RawFd;

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

/// The utun control id, looked up through a throwaway control socket.
fn utun_control_id() -> io::Result<u32> {
    // SAFETY: plain socket creation; the result is checked and closed below.
    let sock = unsafe {
        libc::socket(AF_SYSTEM, libc::SOCK_DGRAM, 2 /* SYSPROTO_CONTROL */)
    };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut info = CtlInfo {
        ctl_id: 0,
        ctl_name: [0; 96],
    };
    for (dst, src) in info.ctl_name.iter_mut().zip(UTUN_CONTROL_NAME) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: CTLIOCGINFO reads and writes one `struct ctl_info`, which `info` is.
    let ret = unsafe { libc::ioctl(sock, CTLIOCGINFO, &mut info as *mut CtlInfo) };
    let err = io::Error::last_os_error();
    // SAFETY: `sock` was created above and is closed exactly once.
    unsafe { libc::close(sock) };
    if ret < 0 {
        return Err(err);
    }
    Ok(info.ctl_id)
}

/// Is `fd` a utun control socket? (`getpeername` yields `AF_SYSTEM` and the utun control id.)
pub(crate) fn is_utun_fd(fd: RawFd, utun_id: u32) -> bool {
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
    ret == 0
        && addr.sc_family as libc::c_int == AF_SYSTEM
        && addr.ss_sysaddr == AF_SYS_CONTROL
        && addr.sc_id == utun_id
}

/// Checks that `fd` is a utun control socket, so that `start_tun(1)` cannot read stdin.
pub(crate) fn validate_tun_fd(fd: RawFd) -> io::Result<()> {
    super::fd_flags(fd)?;
    let id = utun_control_id()?;
    if is_utun_fd(fd, id) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a utun control socket"),
        ))
    }
}

/// Throughput tuning for utun is added with the C ABI work; nothing yet.
pub(crate) fn tune_tun(_fd: RawFd) {}

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
