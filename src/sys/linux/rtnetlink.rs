//! One rtnetlink question: does the TUN with this interface index prepend packet information
//! (`IFLA_TUN_PI`, what `ip -d link` shows as `pi on`)?
//!
//! `TUNGETIFF` cannot say: Linux reports `IFF_NOFILTER` (the same bit as `IFF_NO_PI`) on every
//! TUN without a socket filter, and TUNs cannot have one. rtnetlink answers from the device's
//! own flags, in the namespace of the socket that asks.
//!
//! The socket is netlink-sys's, the messages netlink-packet-route's: no hand-written
//! `unsafe` and no hand-written parsing here.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLA_TYPE_MASK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{InfoData, InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// From `include/uapi/linux/if_link.h`: the TUN's attribute inside `IFLA_INFO_DATA` that
/// netlink-packet-route keeps as a raw attribute (`InfoTun::Other`).
const IFLA_TUN_PI: u16 = 4;

/// Room for the whole `RTM_NEWLINK` reply: with statistics, `IFLA_AF_SPEC` and the rest it
/// is a few KB; a datagram longer than this would arrive cut and fail to parse (an error,
/// never a wrong answer).
const REPLY_BYTES: usize = 32 * 1024;

/// Whether the TUN at `ifindex` (in this thread's network namespace) prepends packet
/// information; `None` when the kernel does not say (before Linux 4.15) or it is no TUN.
pub(super) fn tun_has_packet_info(ifindex: u32) -> io::Result<Option<bool>> {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(link)),
    );
    request.finalize();
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);

    let socket = Socket::new(NETLINK_ROUTE)?;
    socket.send(&bytes, 0)?;
    let mut reply = Vec::with_capacity(REPLY_BYTES);
    socket.recv(&mut reply, 0)?;
    parse_link_reply(&reply)
}

/// The answer in a reply to `RTM_GETLINK`: an `RTM_NEWLINK` message, or an error message.
fn parse_link_reply(reply: &[u8]) -> io::Result<Option<bool>> {
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(reply)
        .map_err(|e| invalid(format!("netlink reply: {e}")))?;
    match message.payload {
        NetlinkPayload::Error(error) => Err(error.to_io()),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(packet_info(&link)),
        _ => Err(invalid("unexpected netlink message".into())),
    }
}

/// `IFLA_LINKINFO` → kind `tun` → `IFLA_INFO_DATA` → `IFLA_TUN_PI`, where all are there.
fn packet_info(link: &LinkMessage) -> Option<bool> {
    let info = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(info) => Some(info),
        _ => None,
    })?;
    if !info.contains(&LinkInfo::Kind(InfoKind::Tun)) {
        return None;
    }
    let data = info.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Tun(data)) => Some(data),
        _ => None,
    })?;
    let pi = data
        .iter()
        .find(|nla| nla.kind() & NLA_TYPE_MASK == IFLA_TUN_PI)?;
    // A u8 attribute; netlink-packet-route keeps it raw, so its value is read by emitting it.
    let mut value = vec![0u8; pi.value_len()];
    pi.emit_value(&mut value);
    value.first().map(|&pi| pi != 0)
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DefaultNla, ErrorMessage};
    use netlink_packet_route::link::InfoTun;
    use std::num::NonZeroI32;

    /// A reply as the kernel sends it, built with netlink-packet-route's own emitter.
    fn reply(payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut message = NetlinkMessage::new(NetlinkHeader::default(), payload);
        message.finalize();
        let mut bytes = vec![0u8; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn newlink(attributes: Vec<LinkAttribute>) -> Vec<u8> {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.attributes = attributes;
        reply(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(
            link,
        )))
    }

    fn tun_link(pi: u8) -> Vec<u8> {
        // The TUN's data as Linux gives it: owner, group, type, pi, vnet_hdr, ... (u8/u32).
        let data = vec![
            InfoTun::Other(DefaultNla::new(3, vec![1])),
            InfoTun::Other(DefaultNla::new(IFLA_TUN_PI, vec![pi])),
            InfoTun::Other(DefaultNla::new(5, vec![0])),
        ];
        newlink(vec![
            LinkAttribute::IfName("tun0".into()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Tun),
                LinkInfo::Data(InfoData::Tun(data)),
            ]),
        ])
    }

    #[test]
    fn reads_the_packet_information_flag() {
        assert_eq!(parse_link_reply(&tun_link(1)).unwrap(), Some(true));
        assert_eq!(parse_link_reply(&tun_link(0)).unwrap(), Some(false));
        // A kernel before 4.15 gives no TUN data at all.
        let old = newlink(vec![LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Tun,
        )])]);
        assert_eq!(parse_link_reply(&old).unwrap(), None);
    }

    #[test]
    fn other_links_and_errors_say_nothing_or_fail() {
        let veth = newlink(vec![LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Veth,
        )])]);
        assert_eq!(parse_link_reply(&veth).unwrap(), None);
        let plain = newlink(vec![LinkAttribute::IfName("lo".into())]);
        assert_eq!(parse_link_reply(&plain).unwrap(), None);
        let mut error = ErrorMessage::default();
        error.code = NonZeroI32::new(-libc::ENODEV);
        error.header = vec![0; 16];
        let err = parse_link_reply(&reply(NetlinkPayload::Error(error))).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }

    #[test]
    fn truncated_replies_are_errors_or_nothing_never_a_panic() {
        let full = tun_link(1);
        for cut in 0..full.len() {
            // Cut short as a datagram would be, the length field still saying the full size.
            assert!(parse_link_reply(&full[..cut]).is_err(), "cut at {cut}");
            // And cut with the length field agreeing, so the attributes themselves are short.
            let mut short = full[..cut].to_vec();
            if short.len() >= 4 {
                short[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            if let Ok(answer) = parse_link_reply(&short) {
                assert_ne!(answer, Some(false), "cut at {cut}");
            }
        }
        // An attribute claiming more bytes than there are is not read past the end.
        let mut long = tun_link(1);
        let first_attribute = 16 + 16;
        long[first_attribute..first_attribute + 2].copy_from_slice(&2000u16.to_ne_bytes());
        assert!(parse_link_reply(&long).is_err());
    }

    #[test]
    fn asks_the_kernel_about_a_real_interface() {
        // Loopback is no TUN: the kernel answers, and the answer is "nothing to say".
        let lo = super::super::if_index("lo").expect("every namespace has lo");
        assert_eq!(tun_has_packet_info(lo).unwrap(), None);
    }
}
