//! Routes through the tunnel (Linux): one `RTM_NEWROUTE` per AllowedIPs prefix, out of the
//! TUN, in the main table or (a full tunnel) in a table of its own. The kernel removes them
//! with the interface, so there is nothing to undo at exit. A route that exists already (the
//! subnet of the interface's own address, say) is no error.
//!
//! A full tunnel (a prefix holding a peer's endpoint, such as `0.0.0.0/0`) is routed as
//! wg-quick routes it: its prefixes go in table T, the tunnel's own datagrams carry firewall
//! mark T, and two policy rules per family send everything unmarked to table T, after the
//! main table's routes other than its default (`ip rule add not fwmark T table T`; `ip rule
//! add table main suppress_prefixlength 0`). The endpoint's datagrams, marked, take the main
//! table's default route and do not loop. The rules outlive the interface: [`Rules`] removes
//! them when dropped.
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
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
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

/// The main routing table's number.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Routes `network/prefix` out of the interface `ifindex`, in routing table `table`.
///
/// # Errors
/// What the kernel said (`EINVAL` for host bits set past the prefix, `ENETDOWN`, ...).
pub fn add(network: IpAddr, prefix: u8, ifindex: u32, table: u32) -> io::Result<Added> {
    match ask(RouteNetlinkMessage::NewRoute(route(
        network, prefix, ifindex, table,
    )))? {
        0 => Ok(Added::New),
        libc::EEXIST => Ok(Added::Existed),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Sends one request and returns the errno of the kernel's acknowledgement (0: done).
fn ask(message: RouteNetlinkMessage) -> io::Result<i32> {
    let socket = Socket::new(NETLINK_ROUTE)?;
    socket.send(&request(message), 0)?;
    let mut reply = Vec::with_capacity(ACK_BYTES);
    socket.recv(&mut reply, 0)?;
    acknowledgement(&reply)
}

/// A unicast route of scope link, protocol boot, with `RTA_DST` and `RTA_OIF`, in `table`
/// (past 255 only in `RTA_TABLE`, as iproute2 writes it).
fn route(network: IpAddr, prefix: u8, ifindex: u32, table: u32) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = family(network);
    route.header.destination_prefix_length = prefix;
    route.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    route.header.protocol = RouteProtocol::Boot;
    route.header.scope = RouteScope::Link;
    route.header.kind = RouteType::Unicast;
    route.attributes = vec![
        RouteAttribute::Destination(RouteAddress::from(network)),
        RouteAttribute::Oif(ifindex),
    ];
    if table > 255 {
        route.attributes.push(RouteAttribute::Table(table));
    }
    route
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The request, acknowledged: a new route or rule is created, and refused (`EEXIST`) where
/// it exists. (A deletion has no such flags: to one, `NLM_F_EXCL`'s bit is `NLM_F_BULK`,
/// which the kernel refuses for rules with `EOPNOTSUPP`.)
fn request(message: RouteNetlinkMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    if !matches!(message, RouteNetlinkMessage::DelRule(_)) {
        header.flags |= NLM_F_EXCL | NLM_F_CREATE;
    }
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// The two policy rules of a full tunnel in one family (module docs).
fn full_tunnel_rules(family: AddressFamily, table: u32) -> [RuleMessage; 2] {
    let rule = |table: u32, attributes: Vec<RuleAttribute>, flags: RuleFlags| {
        let mut rule = RuleMessage::default();
        rule.header.family = family;
        rule.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        rule.header.action = RuleAction::ToTable;
        rule.header.flags = flags;
        rule.attributes = attributes;
        rule.attributes.push(RuleAttribute::Table(table));
        rule
    };
    [
        // not fwmark T table T: what is not the tunnel's own goes to table T.
        rule(table, vec![RuleAttribute::FwMark(table)], RuleFlags::Invert),
        // table main suppress_prefixlength 0: before that, the main table's routes, but for
        // its default. Added second, the kernel gives it the higher priority.
        rule(
            MAIN_TABLE,
            vec![RuleAttribute::SuppressPrefixLen(0)],
            RuleFlags::empty(),
        ),
    ]
}

/// A full tunnel's policy rules, removed when dropped.
#[derive(Debug)]
pub struct Rules {
    added: Vec<RuleMessage>,
}

impl Rules {
    /// Adds the full-tunnel rules for table `table` in each family of `families`.
    ///
    /// # Errors
    /// What the kernel said; the rules added before the failure are removed.
    pub fn full_tunnel(families: &[IpAddr], table: u32) -> io::Result<Rules> {
        let mut rules = Rules { added: Vec::new() };
        for &address in families {
            for rule in full_tunnel_rules(family(address), table) {
                match ask(RouteNetlinkMessage::NewRule(rule.clone()))? {
                    0 => rules.added.push(rule),
                    errno => return Err(io::Error::from_raw_os_error(errno)),
                }
            }
        }
        Ok(rules)
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        for rule in self.added.drain(..).rev() {
            match ask(RouteNetlinkMessage::DelRule(rule)) {
                Ok(0) => {}
                Ok(errno) => log::warn!(
                    "cannot remove a policy rule of the full tunnel: {}",
                    io::Error::from_raw_os_error(errno)
                ),
                Err(e) => log::warn!("cannot remove a policy rule of the full tunnel: {e}"),
            }
        }
    }
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
        let new = |network, prefix| {
            request(RouteNetlinkMessage::NewRoute(route(
                network, prefix, 7, MAIN_TABLE,
            )))
        };
        let v4 = new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8);
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

        let v6 = new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)), 64);
        assert_eq!(v6.len(), 16 + 12 + 20 + 8);
        assert_eq!(v6[16..18], [libc::AF_INET6 as u8, 64]);
        let mut dst = vec![20, 0, 1, 0, 0xfd];
        dst.resize(20, 0);
        assert_eq!(v6[28..48], dst[..]);
    }

    #[test]
    fn full_tunnel_rules_are_laid_out_as_ip_rule_writes_them() {
        let [not_marked, main] = full_tunnel_rules(AddressFamily::Inet, 51820);
        let new = request(RouteNetlinkMessage::NewRule(not_marked.clone()));
        // RTM_NEWRULE (32), REQUEST|ACK|EXCL|CREATE; a deletion only REQUEST|ACK (to it,
        // EXCL's bit means BULK, which rules refuse).
        assert_eq!(new[4..8], [32, 0, 0x05, 0x06]);
        let del = request(RouteNetlinkMessage::DelRule(not_marked));
        assert_eq!(del[4..8], [33, 0, 0x05, 0x00]);
        // fib_rule_hdr: AF_INET, dst/src len 0, tos 0, table 0 (past 255: FRA_TABLE), 0, 0,
        // action FR_ACT_TO_TBL (1), flags FIB_RULE_INVERT (2).
        assert_eq!(new[16..24], [2, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(new[24..28], 2u32.to_ne_bytes());
        // FRA_FWMARK (10) 51820, then FRA_TABLE (15) 51820.
        assert_eq!(new[28..32], [8, 0, 10, 0]);
        assert_eq!(new[32..36], 51820u32.to_ne_bytes());
        assert_eq!(new[36..40], [8, 0, 15, 0]);
        assert_eq!(new[40..44], 51820u32.to_ne_bytes());
        let main = request(RouteNetlinkMessage::NewRule(main));
        // The main table (254) in the header; FRA_SUPPRESS_PREFIXLEN (14) 0; no invert.
        assert_eq!(main[16..28], [2, 0, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(main[28..36], [8, 0, 14, 0, 0, 0, 0, 0]);
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
        let route = request(RouteNetlinkMessage::NewRoute(route(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)),
            8,
            7,
            MAIN_TABLE,
        )));
        assert!(acknowledgement(&route).is_err());
    }
}
