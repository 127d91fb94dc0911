//! Routes through the tunnel (Linux): one `RTM_NEWROUTE` per AllowedIPs prefix, in the main
//! table, out of the TUN. The kernel removes them with the interface, so there is nothing to
//! undo at exit. A route that exists already (the subnet of the interface's own address, say)
//! is no error.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// From `include/uapi/linux/rtnetlink.h` and `netlink.h`.
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const NLMSG_HEADER: usize = 16;
const RTMSG: usize = 12;

/// What adding a route did.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// The route is new.
    New,
    /// The same route was there already.
    Existed,
}

/// Routes `network/prefix` out of the interface `ifindex`.
///
/// # Errors
/// What the kernel said (`EINVAL` for host bits set past the prefix, `ENETDOWN`, ...).
pub fn add(network: IpAddr, prefix: u8, ifindex: u32) -> io::Result<Added> {
    let (family, address) = match network {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let mut message = vec![0u8; NLMSG_HEADER];
    message.extend_from_slice(&[
        family,
        prefix,
        0, // source prefix length
        0, // TOS
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_LINK,
        RTN_UNICAST,
    ]);
    message.extend_from_slice(&0u32.to_ne_bytes()); // flags
    debug_assert_eq!(message.len(), NLMSG_HEADER + RTMSG);
    attribute(&mut message, RTA_DST, &address);
    attribute(&mut message, RTA_OIF, &ifindex.to_ne_bytes());
    let length = message.len() as u32;
    message[0..4].copy_from_slice(&length.to_ne_bytes());
    message[4..6].copy_from_slice(&RTM_NEWROUTE.to_ne_bytes());
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
    message[6..8].copy_from_slice(&flags.to_ne_bytes());
    message[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number

    let socket = netlink_socket()?;
    // SAFETY: send reads `message.len()` bytes from `message`.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 1024];
    // SAFETY: recv writes at most `reply.len()` bytes into `reply`.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    match acknowledgement(&reply[..n])? {
        0 => Ok(Added::New),
        libc::EEXIST => Ok(Added::Existed),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Appends a route attribute (`struct rtattr` and its payload, padded to 4 bytes).
fn attribute(message: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let length = (4 + payload.len()) as u16;
    message.extend_from_slice(&length.to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(payload);
    message.resize(message.len().next_multiple_of(4), 0);
}

/// The errno of the kernel's acknowledgement (`NLMSG_ERROR`; 0 is success).
fn acknowledgement(reply: &[u8]) -> io::Result<i32> {
    let malformed = || io::Error::other("malformed rtnetlink reply");
    let kind = reply.get(4..6).ok_or_else(malformed)?;
    if u16::from_ne_bytes([kind[0], kind[1]]) != NLMSG_ERROR {
        return Err(malformed());
    }
    let error = reply
        .get(NLMSG_HEADER..NLMSG_HEADER + 4)
        .ok_or_else(malformed)?;
    let error = i32::from_ne_bytes([error[0], error[1], error[2], error[3]]);
    Ok(-error)
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_message_is_laid_out_as_the_kernel_reads_it() {
        let mut message = vec![0u8; 4];
        attribute(&mut message, RTA_DST, &[10, 0, 0]);
        // Header (length 7, type 1), payload, one byte of padding.
        assert_eq!(message[4..], [7, 0, 1, 0, 10, 0, 0, 0]);
    }

    #[test]
    fn acknowledgements_carry_the_errno() {
        let mut reply = vec![0u8; 36];
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        reply[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(acknowledgement(&reply).unwrap(), libc::EEXIST);
        assert!(acknowledgement(&reply[..4]).is_err());
    }
}
