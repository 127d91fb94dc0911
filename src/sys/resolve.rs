//! Host names to addresses the way the system resolves them: `getaddrinfo`, so that the hosts
//! file, the system's DNS and, on Apple, DNS64 on an IPv6-only (NAT64) network all apply.
//! Rust's `to_socket_addrs` parses an IP literal itself, so iOS never gets the chance to
//! synthesize a NAT64 address for an IPv4 literal, and an endpoint like `203.0.113.1:51820`
//! is unreachable on the IPv6-only network App Review tests on.
//!
//! The policy is WireGuardKit's (`DNSResolver.swift`): a name is looked up for both families
//! and its IPv4 address preferred; on Apple that IPv4 address is then looked up again as a
//! literal with no flags, which DNS64 answers with the current network's synthesized IPv6
//! address (or gives back as it is where IPv4 works).

use std::ffi::{CStr, CString};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Whether an IPv4 literal is looked up too: the system may synthesize an IPv6 address for it
/// (DNS64 on Apple). Elsewhere a literal is its own address.
pub(crate) const SYNTHESIZES_FROM_IPV4: bool = cfg!(target_vendor = "apple");

/// The flags a host name is looked up with. Apple: `AI_ALL`, so that the IPv4 address comes
/// even on a DNS64 network (WireGuardKit's choice). Elsewhere none: `AI_ADDRCONFIG` would
/// answer nothing in a namespace with only a loopback address.
#[cfg(target_vendor = "apple")]
const NAME_FLAGS: libc::c_int = libc::AI_ALL;
#[cfg(not(target_vendor = "apple"))]
const NAME_FLAGS: libc::c_int = 0;

/// The address a peer's endpoint `host` (a name, or an IP literal) stands for now, for UDP
/// to `port`. Blocks for as long as the system's resolver takes: never call it on a thread
/// that carries packets, or one a stop waits for.
///
/// # Errors
/// `NotFound` with the resolver's reason (`gai_strerror`) when the name does not resolve or
/// gives no IPv4 or IPv6 address; the host name is not quoted.
pub(crate) fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    let found = prefer_ipv4(&lookup(host, port, NAME_FLAGS)?).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the name has no IPv4 or IPv6 address",
        )
    })?;
    if SYNTHESIZES_FROM_IPV4 && found.is_ipv4() {
        // The IPv4 address as a literal, with no flags: on a NAT64 network DNS64 answers with
        // this network's prefix; where IPv4 works, with the address itself.
        match lookup(&found.ip().to_string(), port, 0) {
            Ok(again) => return Ok(again.first().copied().unwrap_or(found)),
            Err(e) => log::debug!("no synthesized address for an IPv4 endpoint: {e}"),
        }
    }
    Ok(found)
}

/// The first IPv4 address, or else the first one (IPv6).
pub(crate) fn prefer_ipv4(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

/// Every IPv4 and IPv6 address `getaddrinfo` gives for `host` and UDP to `port`, in its order.
fn lookup(host: &str, port: u16, flags: libc::c_int) -> io::Result<Vec<SocketAddr>> {
    let node = CString::new(host)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a host name with a NUL"))?;
    let service = CString::new(port.to_string()).expect("digits have no NUL");
    // SAFETY: addrinfo is plain old data; all zeroes is the "no hint" value of each field.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_flags = flags;
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_DGRAM;
    hints.ai_protocol = libc::IPPROTO_UDP;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: node and service are NUL-terminated strings and hints an initialised addrinfo,
    // all alive through the call; on success `list` receives a list we free below.
    let code = unsafe { libc::getaddrinfo(node.as_ptr(), service.as_ptr(), &hints, &mut list) };
    if code != 0 {
        return Err(gai_error(code));
    }
    let mut addrs = Vec::new();
    let mut next = list;
    while !next.is_null() {
        // SAFETY: `next` is a node of the list getaddrinfo returned, not yet freed.
        let info = unsafe { &*next };
        // SAFETY: getaddrinfo sets `ai_addr` to an address of `ai_addrlen` bytes of family
        // `ai_family`.
        if let Some(addr) = unsafe { socket_addr(info) } {
            addrs.push(addr);
        }
        next = info.ai_next;
    }
    // SAFETY: `list` came from a successful getaddrinfo and is freed once; nothing borrowed
    // from it outlives this.
    unsafe { libc::freeaddrinfo(list) };
    Ok(addrs)
}

/// The address of one `getaddrinfo` answer, if it is IPv4 or IPv6.
///
/// # Safety
/// `info.ai_addr` must point to `info.ai_addrlen` readable bytes of an address of family
/// `info.ai_family` (as getaddrinfo fills them), or be null.
unsafe fn socket_addr(info: &libc::addrinfo) -> Option<SocketAddr> {
    if info.ai_addr.is_null() {
        return None;
    }
    let len = info.ai_addrlen as usize;
    match info.ai_family {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the caller promises a sockaddr_in of this many bytes; read unaligned
            // since the library owns its alignment.
            let sin = unsafe { std::ptr::read_unaligned(info.ai_addr.cast::<libc::sockaddr_in>()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a sockaddr_in6.
            let sin6 =
                unsafe { std::ptr::read_unaligned(info.ai_addr.cast::<libc::sockaddr_in6>()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(SocketAddrV6::new(ip, port, sin6.sin6_flowinfo, sin6.sin6_scope_id).into())
        }
        _ => None,
    }
}

/// A `getaddrinfo` failure as an I/O error with the resolver's own words.
fn gai_error(code: libc::c_int) -> io::Error {
    if code == libc::EAI_SYSTEM {
        return io::Error::last_os_error();
    }
    // SAFETY: gai_strerror returns a static NUL-terminated string for any code.
    let reason = unsafe { CStr::from_ptr(libc::gai_strerror(code)) };
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("the name does not resolve: {}", reason.to_string_lossy()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_is_preferred_wherever_it_comes_in_the_answer() {
        let answer = [
            addr("[2001:db8::1]:1"),
            addr("192.0.2.1:1"),
            addr("192.0.2.2:1"),
        ];
        assert_eq!(prefer_ipv4(&answer), Some(addr("192.0.2.1:1")));
        let v6_only = [addr("[2001:db8::1]:1"), addr("[2001:db8::2]:1")];
        assert_eq!(prefer_ipv4(&v6_only), Some(addr("[2001:db8::1]:1")));
        assert_eq!(prefer_ipv4(&[]), None);
    }

    #[test]
    fn literals_and_localhost_resolve_through_the_system() {
        assert_eq!(
            resolve("192.0.2.7", 51820).unwrap(),
            addr("192.0.2.7:51820")
        );
        assert_eq!(resolve("2001:db8::7", 9).unwrap(), addr("[2001:db8::7]:9"));
        // From the hosts file, both families maybe: IPv4 wins.
        assert_eq!(resolve("localhost", 53).unwrap(), addr("127.0.0.1:53"));
    }

    #[test]
    fn a_name_that_cannot_resolve_says_why_without_quoting_it() {
        let err = resolve("no-such-host..invalid", 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(!err.to_string().contains("no-such-host"), "{err}");
        let err = resolve("a\0b", 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
