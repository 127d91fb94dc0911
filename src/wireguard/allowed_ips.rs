//! The AllowedIPs table: every peer's prefixes in one longest-prefix-match trie (cryptokey
//! routing). The same table routes an outbound packet to its peer and checks an inbound
//! packet's source: a peer may speak only for the addresses whose longest match in the whole
//! table is its own, so a peer with 10.0.0.0/8 cannot send from 10.1.2.3 when another peer has
//! 10.1.0.0/16. A lookup costs the same at 1 and at 10,000 peers.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use std::net::IpAddr;

/// Prefixes, each owned by one peer (by index).
#[derive(Clone, Default)]
pub(crate) struct AllowedIps {
    v4: PrefixMap<Ipv4Net, usize>,
    v6: PrefixMap<Ipv6Net, usize>,
}

impl AllowedIps {
    /// Gives `net` (its host bits ignored) to `peer`. A prefix another peer had goes to this
    /// one, as in WireGuard, where the last peer to name a prefix owns it: returns the peer it
    /// was taken from.
    pub fn insert(&mut self, net: IpNet, peer: usize) -> Option<usize> {
        match net.trunc() {
            IpNet::V4(net) => self.v4.insert(net, peer),
            IpNet::V6(net) => self.v6.insert(net, peer),
        }
        .filter(|&before| before != peer)
    }

    /// The peer whose longest prefix contains `address`, if any does.
    pub fn peer_for(&self, address: IpAddr) -> Option<usize> {
        match address {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, &p)| p),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, &p)| p),
        }
    }

    /// Prefixes in the table.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, usize)]) -> AllowedIps {
        let mut t = AllowedIps::default();
        for (net, peer) in entries {
            t.insert(net.parse().unwrap(), *peer);
        }
        t
    }

    #[test]
    fn the_longest_prefix_wins_whatever_the_order() {
        for entries in [
            [("10.0.0.0/8", 0), ("10.1.0.0/16", 1)],
            [("10.1.0.0/16", 1), ("10.0.0.0/8", 0)],
        ] {
            let t = table(&entries);
            assert_eq!(t.peer_for("10.1.2.3".parse().unwrap()), Some(1));
            assert_eq!(t.peer_for("10.2.0.1".parse().unwrap()), Some(0));
            assert_eq!(t.peer_for("11.0.0.1".parse().unwrap()), None);
        }
    }

    #[test]
    fn a_prefix_named_twice_belongs_to_the_later_peer() {
        let mut t = table(&[("10.0.0.0/24", 0)]);
        // Host bits do not make it another prefix.
        assert_eq!(t.insert("10.0.0.7/24".parse().unwrap(), 1), Some(0));
        assert_eq!(t.peer_for("10.0.0.1".parse().unwrap()), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.insert("10.0.0.0/24".parse().unwrap(), 1),
            None,
            "same peer"
        );
    }

    #[test]
    fn the_families_are_apart_and_default_routes_work() {
        let t = table(&[("0.0.0.0/0", 0), ("::/0", 1), ("fd00::/64", 2)]);
        assert_eq!(t.peer_for("192.0.2.1".parse().unwrap()), Some(0));
        assert_eq!(t.peer_for("2001:db8::1".parse().unwrap()), Some(1));
        assert_eq!(t.peer_for("fd00::1".parse().unwrap()), Some(2));
    }
}
