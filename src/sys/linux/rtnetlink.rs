//! One rtnetlink question: does the TUN with this interface index prepend packet information
//! (`IFLA_TUN_PI`, what `ip -d link` shows as `pi on`)?
//!
//! `TUNGETIFF` cannot say: Linux reports `IFF_NOFILTER` (the same bit as `IFF_NO_PI`) on every
//! TUN without a socket filter, and TUNs cannot have one. rtnetlink answers from the device's
//! own flags, in the namespace of the socket that asks.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// From `include/uapi/linux/if_link.h`: the nested `IFLA_LINKINFO` attribute, its kind and
/// data, and the TUN's attributes inside the data.
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_TUN_PI: u16 = 4;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`: flag bits of an attribute's type.
const NLA_TYPE_MASK: u16 = !(1 << 15 | 1 << 14);

const NLMSG_HEADER: usize = 16;
const IFINFOMSG: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;

/// Whether the TUN at `ifindex` (in this thread's network namespace) prepends packet
/// information; `None` when the kernel does not say (before Linux 4.15) or it is no TUN.
pub(super) fn tun_has_packet_info(ifindex: u32) -> io::Result<Option<bool>> {
    let socket = netlink_socket()?;
    let mut request = [0u8; NLMSG_HEADER + IFINFOMSG];
    request[0..4].copy_from_slice(&((NLMSG_HEADER + IFINFOMSG) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
    request[NLMSG_HEADER + 4..NLMSG_HEADER + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // SAFETY: send reads `request.len()` bytes from `request`.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = vec![0u8; 32 * 1024];
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
    parse_link_reply(&reply[..n])
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

/// The answer in a reply to `RTM_GETLINK`: an `RTM_NEWLINK` message, or an error message.
fn parse_link_reply(reply: &[u8]) -> io::Result<Option<bool>> {
    let header = reply
        .get(..NLMSG_HEADER)
        .ok_or_else(|| invalid("short netlink reply"))?;
    let len = u32::from_ne_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let kind = u16::from_ne_bytes(header[4..6].try_into().expect("2 bytes"));
    let message = reply
        .get(NLMSG_HEADER..len.max(NLMSG_HEADER))
        .ok_or_else(|| invalid("netlink message longer than its reply"))?;
    match kind {
        NLMSG_ERROR => {
            let errno = message
                .get(0..4)
                .map(|e| i32::from_ne_bytes(e.try_into().expect("4 bytes")))
                .ok_or_else(|| invalid("short netlink error"))?;
            Err(io::Error::from_raw_os_error(-errno))
        }
        RTM_NEWLINK => {
            let attributes = message
                .get(IFINFOMSG..)
                .ok_or_else(|| invalid("short link message"))?;
            let Some(link_info) = attribute(attributes, IFLA_LINKINFO) else {
                return Ok(None);
            };
            if attribute(link_info, IFLA_INFO_KIND) != Some(b"tun\0".as_slice()) {
                return Ok(None);
            }
            Ok(attribute(link_info, IFLA_INFO_DATA)
                .and_then(|data| attribute(data, IFLA_TUN_PI))
                .and_then(|pi| pi.first())
                .map(|&pi| pi != 0))
        }
        _ => Err(invalid("unexpected netlink message")),
    }
}

/// The payload of the first attribute of `kind` in a run of netlink attributes (each a
/// 4-byte header, `len` then type, padded to 4 bytes).
fn attribute(mut attributes: &[u8], kind: u16) -> Option<&[u8]> {
    while attributes.len() >= 4 {
        let len = u16::from_ne_bytes([attributes[0], attributes[1]]) as usize;
        let this = u16::from_ne_bytes([attributes[2], attributes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attributes.len() {
            return None;
        }
        if this == kind {
            return Some(&attributes[4..len]);
        }
        let padded = (len + 3) & !3;
        attributes = attributes.get(padded..)?;
    }
    None
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn newlink(attributes: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        let len = NLMSG_HEADER + IFINFOMSG + attributes.len();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0; IFINFOMSG]);
        m.extend_from_slice(attributes);
        m
    }

    fn tun_link(pi: u8) -> Vec<u8> {
        let data = [attr(3, &[1]), attr(IFLA_TUN_PI, &[pi]), attr(5, &[0])].concat();
        let info = [
            attr(IFLA_INFO_KIND, b"tun\0"),
            attr(IFLA_INFO_DATA | 1 << 15, &data),
        ];
        newlink(
            &[
                attr(3, b"tun0\0"),
                attr(IFLA_LINKINFO | 1 << 15, &info.concat()),
            ]
            .concat(),
        )
    }

    #[test]
    fn reads_the_packet_information_flag() {
        assert_eq!(parse_link_reply(&tun_link(1)).unwrap(), Some(true));
        assert_eq!(parse_link_reply(&tun_link(0)).unwrap(), Some(false));
    }

    #[test]
    fn other_links_and_errors_say_nothing_or_fail() {
        let veth = newlink(&attr(IFLA_LINKINFO, &attr(IFLA_INFO_KIND, b"veth\0")));
        assert_eq!(parse_link_reply(&veth).unwrap(), None);
        let mut error = Vec::new();
        error.extend_from_slice(&20u32.to_ne_bytes());
        error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&[0; 10]);
        error.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let err = parse_link_reply(&error).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }

    #[test]
    fn truncated_replies_are_errors_or_nothing_never_a_panic() {
        let full = tun_link(1);
        for cut in 0..full.len() {
            let _ = parse_link_reply(&full[..cut]);
        }
        // An attribute claiming more bytes than there are is not read past the end.
        assert_eq!(attribute(&[200, 0, 1, 0, 9], 1), None);
    }

    #[test]
    fn asks_the_kernel_about_a_real_interface() {
        // Loopback is no TUN: the kernel answers, and the answer is "nothing to say".
        let lo = super::super::if_index("lo").expect("every namespace has lo");
        assert_eq!(tun_has_packet_info(lo).unwrap(), None);
    }
}
