//! Routes through the tunnel (Linux): one `RTM_NEWROUTE` per AllowedIPs prefix, in the main
//! table, out of the TUN. The kernel removes them with the interface, so there is nothing to
//! undo at exit. A route that exists already (the subnet of the interface's own address, say)
//! is no error.
//!
//! The socket is netlink-sys's, the message netlink-packet-route's, as in the core's
//! rtnetlink question: no hand-written `unsafe` or message layout here.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// Room for the acknowledgement: an errno and the request's header echoed back (the whole
/// request at most, under 100 bytes).
const ACK_BYTES: usize = 1024;

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
    let request = request(network, prefix, ifindex);
    let socket = Socket::new(NETLINK_ROUTE)?;
    socket.send(&request, 0)?;
    let mut reply = Vec::with_capacity(ACK_BYTES);
    socket.recv(&mut reply, 0)?;
    match acknowledgement(&reply)? {
        0 => Ok(Added::New),
        libc::EEXIST => Ok(Added::Existed),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// The `RTM_NEWROUTE` request: a unicast route of scope link, protocol boot, in the main
/// table, with `RTA_DST` and `RTA_OIF`; created, acknowledged, and refused (`EEXIST`) where it
/// exists.
fn request(network: IpAddr, prefix: u8, ifindex: u32) -> Vec<u8> {
    let mut route = RouteMessage::default();
    route.header.address_family = match network {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    route.header.destination_prefix_length = prefix;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    route.header.protocol = RouteProtocol::Boot;
    route.header.scope = RouteScope::Link;
    route.header.kind = RouteType::Unicast;
    route.attributes = vec![
        RouteAttribute::Destination(RouteAddress::from(network)),
        RouteAttribute::Oif(ifindex),
    ];
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)),
    );
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// The errno of the kernel's acknowledgement (`NLMSG_ERROR`; 0 is success).
fn acknowledgement(reply: &[u8]) -> io::Result<i32> {
    let malformed = || io::Error::other("malformed rtnetlink reply");
    let message =
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(reply).map_err(|_| malformed())?;
    match message.payload {
        NetlinkPayload::Error(ack) => Ok(-ack.raw_code()),
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::ErrorMessage;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::num::NonZeroI32;

    #[test]
    fn a_route_message_is_laid_out_as_the_kernel_reads_it() {
        let v4 = request(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8, 7);
        // nlmsghdr: length, RTM_NEWROUTE, REQUEST|ACK|EXCL|CREATE, sequence 1, port 0.
        assert_eq!(v4.len(), 16 + 12 + 8 + 8);
        assert_eq!(v4[0..4], (v4.len() as u32).to_ne_bytes());
        assert_eq!(v4[4..6], 24u16.to_ne_bytes());
        assert_eq!(v4[6..8], (0x1u16 | 0x4 | 0x200 | 0x400).to_ne_bytes());
        assert_eq!(v4[8..12], 1u32.to_ne_bytes());
        assert_eq!(v4[12..16], [0; 4]);
        // rtmsg: AF_INET, /8, no source, TOS 0, main table, boot, scope link, unicast, flags 0.
        assert_eq!(v4[16..28], [2, 8, 0, 0, 254, 3, 253, 1, 0, 0, 0, 0]);
        // RTA_DST (length 8, type 1) and RTA_OIF (length 8, type 4).
        assert_eq!(v4[28..36], [8, 0, 1, 0, 10, 0, 0, 0]);
        assert_eq!(v4[36..40], [8, 0, 4, 0]);
        assert_eq!(v4[40..44], 7u32.to_ne_bytes());

        let v6 = request(
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)),
            64,
            7,
        );
        assert_eq!(v6.len(), 16 + 12 + 20 + 8);
        assert_eq!(v6[16..18], [libc::AF_INET6 as u8, 64]);
        let mut dst = vec![20, 0, 1, 0, 0xfd];
        dst.resize(20, 0);
        assert_eq!(v6[28..48], dst[..]);
    }

    /// An acknowledgement as the kernel sends it, built with netlink-packet-core's emitter.
    fn ack(errno: i32) -> Vec<u8> {
        let mut error = ErrorMessage::default();
        error.code = NonZeroI32::new(-errno);
        error.header = vec![0; 16];
        let mut message = NetlinkMessage::<RouteNetlinkMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Error(error),
        );
        message.finalize();
        let mut bytes = vec![0u8; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn acknowledgements_carry_the_errno() {
        assert_eq!(acknowledgement(&ack(0)).unwrap(), 0);
        let reply = ack(libc::EEXIST);
        assert_eq!(acknowledgement(&reply).unwrap(), libc::EEXIST);
        assert!(acknowledgement(&reply[..4]).is_err());
        assert!(acknowledgement(&reply[..reply.len() - 1]).is_err());
        // A reply that is no acknowledgement is no success either.
        let route = request(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8, 7);
        assert!(acknowledgement(&route).is_err());
    }
}
