//! The wg-quick configuration file, as VPN providers hand it out.
//!
//! ```text
//! [Interface]
//! PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
//! Address = 10.0.0.2/32, fd00::2/128
//! DNS = 10.0.0.1
//! MTU = 1420                     # optional: 1420 by default
//!
//! [Peer]
//! PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
//! Endpoint = 192.0.2.1:51820
//! AllowedIPs = 0.0.0.0/0, ::/0
//! PersistentKeepalive = 25
//! ```
//!
//! The parser takes what these files really contain: `#` comments (to the end of the line),
//! keys in any case, comma-separated lists, repeated `Address`, `DNS` and `AllowedIPs` lines,
//! an optional `ListenPort`. wg-quick's own keys (`PostUp`, `PreDown`, `Table`, `SaveConfig`,
//! `FwMark`, ...) are ignored and named in [`WgConfig::ignored`] (the caller may log them). Any
//! other key is an error.
//!
//! An error names its line and, when it can tell, the key's name ([`WgConfigError`]). It never
//! quotes a value or a line: a damaged line may hold a private or preshared key (`PrivateKey:
//! ...` with a colon for `=`, a key pasted as another key's value, a key alone on a line), and
//! error texts reach logs, the CLI's stderr and a host's log callback.
//!
//! A config holds at most [`MAX_PEERS`] peers and [`MAX_ALLOWED_IPS`] AllowedIPs prefixes in
//! all; past either, parsing fails at the line that goes past it.

use crate::sys::resolve::SYNTHESIZES_FROM_IPV4;
use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// wg-quick's default MTU for the tunnel interface.
pub const DEFAULT_MTU: u16 = 1420;

/// Most `[Peer]` sections a config may hold. A config at this limit parses and validates in
/// well under a second; a started tunnel keeps per-peer state (boringtun's `Tunn`, its timers
/// and rate limiter) for each, so a phone should stay far below it.
pub const MAX_PEERS: usize = 65_536;

/// Most AllowedIPs prefixes a config may hold, over all its peers together.
pub const MAX_ALLOWED_IPS: usize = 262_144;

/// A Curve25519 key (private, public or preshared). Its `Debug` shows nothing of it, and it
/// has no `Display`: keys never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub(crate) [u8; 32]);

impl Key {
    /// A fresh private key, from the system's random source.
    pub fn generate() -> Key {
        let secret = boringtun::x25519::StaticSecret::random_from_rng(rand_core::OsRng);
        Key(secret.to_bytes())
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// The public key of this private key.
    pub fn public_key(&self) -> Key {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        Key(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key in the base64 form wg and wg-quick use.
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// A key from its 64 hex digits, in either case, as the cross-platform configuration
    /// protocol writes keys (`src/wireguard/uapi.rs`); `None` for anything else.
    pub(crate) fn from_hex(text: &str) -> Option<Key> {
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            // Both are below 16: the byte cannot overflow.
            *byte = (high * 16 + low) as u8;
        }
        Some(Key(bytes))
    }

    /// Appends the key's 64 lower-case hex digits to `out`: for the protocol's `get` answer,
    /// the one place a key is written out as text besides [`Key::to_base64`].
    pub(crate) fn write_hex(&self, out: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for byte in self.0 {
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
        }
    }

    /// Whether every byte is zero: the protocol's spelling of "no key".
    pub(crate) fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    fn from_base64(text: &str) -> Option<Key> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        bytes.try_into().ok().map(Key)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(hidden)")
    }
}

/// A peer's endpoint: an address, or a host name still to be resolved, or one resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An IPv4 or IPv6 literal with its port.
    Addr(SocketAddr),
    /// A host name and port, as written: [`WgConfig::resolve`] looks it up.
    Host(String, u16),
    /// A host as written (a name, or on Apple an IPv4 literal, for which DNS64 may give an
    /// IPv6 address) and the address it resolved to last: a rebind looks it up again, so
    /// that the endpoint follows the network the phone is on now.
    Resolved {
        /// The host as written.
        host: String,
        /// The port.
        port: u16,
        /// Where it resolved to last.
        addr: SocketAddr,
    },
}

impl Endpoint {
    /// The host part, as a host would show it (`tunnelRemoteAddress` on iOS).
    pub fn host(&self) -> String {
        match self {
            Endpoint::Addr(addr) => addr.ip().to_string(),
            Endpoint::Host(host, _) | Endpoint::Resolved { host, .. } => host.clone(),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Addr(addr) => addr.port(),
            Endpoint::Host(_, port) | Endpoint::Resolved { port, .. } => *port,
        }
    }

    /// The address to send to, once there is one (not for a host name not resolved yet).
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Addr(addr) | Endpoint::Resolved { addr, .. } => Some(*addr),
            Endpoint::Host(..) => None,
        }
    }

    /// The host and port to look up, if this endpoint needs a lookup to have an address: a
    /// host name, and an IPv4 literal where the system may synthesize an IPv6 address for
    /// it (`synthesizes`: DNS64 on Apple).
    fn to_look_up(&self, synthesizes: bool) -> Option<(String, u16)> {
        match self {
            Endpoint::Host(host, port) => Some((host.clone(), *port)),
            Endpoint::Addr(addr) if synthesizes && addr.is_ipv4() => {
                Some((addr.ip().to_string(), addr.port()))
            }
            Endpoint::Addr(_) | Endpoint::Resolved { .. } => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(addr) => addr.fmt(f),
            Endpoint::Host(host, port) | Endpoint::Resolved { host, port, .. } => {
                write!(f, "{host}:{port}")
            }
        }
    }
}

/// The `[Interface]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Interface {
    /// This end's private key.
    pub private_key: Key,
    /// The tunnel interface's addresses (`Address`).
    pub addresses: Vec<IpNet>,
    /// The UDP port to listen on; `None`: any.
    pub listen_port: Option<u16>,
    /// The tunnel interface's MTU ([`DEFAULT_MTU`] when absent).
    pub mtu: u16,
    /// Whether the text sets `MTU`. Without it a host may pick its own interface MTU, as
    /// WireGuardKit picks 1280 on iOS (at 1420, an outer IPv6 packet fills 1500 bytes, which
    /// too many mobile networks do not carry).
    pub mtu_set: bool,
    /// DNS servers (`DNS`): accepted for the host to apply (the OS sets DNS, not tunpipe).
    pub dns: Vec<IpAddr>,
    /// DNS search domains (the non-address entries of `DNS`).
    pub dns_search: Vec<String>,
}

/// A `[Peer]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: Key,
    /// The preshared key, if any.
    pub preshared_key: Option<Key>,
    /// Where the peer is; `None`: it has to reach us first.
    pub endpoint: Option<Endpoint>,
    /// The addresses routed to the peer, and accepted from it (`AllowedIPs`).
    pub allowed_ips: Vec<IpNet>,
    /// Seconds between keepalives sent whatever the traffic (`PersistentKeepalive`).
    pub persistent_keepalive: Option<u16>,
}

/// A parsed wg-quick file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WgConfig {
    /// The `[Interface]` section.
    pub interface: Interface,
    /// The `[Peer]` sections (one at least).
    pub peers: Vec<PeerConfig>,
    /// wg-quick's own keys that were ignored, as `Key (line N)`.
    pub ignored: Vec<String>,
}

/// Why a wg-quick text is not a usable config: the line (1-based; 0 for the whole file), the
/// key's name when it can be told, and what is wrong.
///
/// It holds no text from the config: only a line number, names as the wg-quick format spells
/// them, and counts. A damaged line may hold a key (`PrivateKey: ...`, a key pasted as another
/// key's value, a key alone on a line), so neither a value nor a line is ever quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WgConfigError {
    /// The line, counting from 1 (0: the file as a whole).
    pub line: usize,
    /// The key or section as the format spells it (`PublicKey`, `[Peer]`, ...), whatever the
    /// case the file wrote it in; empty when the line's key cannot be told.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for WgConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.field.is_empty()) {
            (0, true) => write!(f, "wg-quick config: {}", self.reason),
            (0, false) => write!(f, "wg-quick config: {}: {}", self.field, self.reason),
            (line, true) => write!(f, "wg-quick config, line {line}: {}", self.reason),
            (line, false) => write!(
                f,
                "wg-quick config, line {line} ({}): {}",
                self.field, self.reason
            ),
        }
    }
}

impl std::error::Error for WgConfigError {}

/// Where a key belongs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Interface,
    Peer,
    /// wg-quick's own keys: they configure the host (routes, scripts, saving), not the
    /// tunnel, and are ignored wherever they are.
    WgQuick,
}

/// Every key the format knows, as wg-quick spells it.
const KEYS: &[(&str, Place)] = &[
    ("PrivateKey", Place::Interface),
    ("Address", Place::Interface),
    ("ListenPort", Place::Interface),
    ("MTU", Place::Interface),
    ("DNS", Place::Interface),
    ("PublicKey", Place::Peer),
    ("PresharedKey", Place::Peer),
    ("Endpoint", Place::Peer),
    ("AllowedIPs", Place::Peer),
    ("PersistentKeepalive", Place::Peer),
    ("Table", Place::WgQuick),
    ("PreUp", Place::WgQuick),
    ("PostUp", Place::WgQuick),
    ("PreDown", Place::WgQuick),
    ("PostDown", Place::WgQuick),
    ("SaveConfig", Place::WgQuick),
    ("FwMark", Place::WgQuick),
];

/// The key `name` is (in any case), as the format spells it.
fn known(name: &str) -> Option<(&'static str, Place)> {
    KEYS.iter()
        .copied()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
}

/// The key a damaged line starts with (in any case), as the format spells it: `PrivateKey`
/// for `PrivateKey: ...` or `privatekey "..."`. The longest that fits.
fn leading_key(text: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|(key, _)| *key)
        .filter(|key| {
            text.get(..key.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(key))
        })
        .max_by_key(|key| key.len())
}

/// The key a misspelled name was probably meant to be (`PrivatKey`, `AllowedIP`): its
/// letters within two edits of exactly one key's.
fn meant(name: &str) -> Option<&'static str> {
    let end = name
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(name.len());
    let word = name[..end].to_ascii_lowercase();
    if word.len() < 4 {
        return None;
    }
    let mut close = KEYS.iter().map(|(key, _)| *key).filter(|key| {
        let distance = edit_distance(&word, &key.to_ascii_lowercase());
        distance <= 2 && distance * 4 <= word.len()
    });
    match (close.next(), close.next()) {
        (Some(key), None) => Some(key),
        _ => None,
    }
}

/// Levenshtein distance between two short ASCII words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Said of a line that is not shown.
const NOT_SHOWN: &str = "the line is not shown: it may hold a key";

/// The error for a line that is not `Key = Value`: named by the key it starts with, if any.
fn damaged(line: usize, text: &str) -> WgConfigError {
    match leading_key(text) {
        Some(key) => error(
            line,
            key,
            &format!("expected `{key} = value` ({NOT_SHOWN})"),
        ),
        None => error(
            line,
            "",
            &format!("expected `Key = Value` or a [Section] ({NOT_SHOWN})"),
        ),
    }
}

/// The error for a name before `=` that is no key: named by the key it starts with, or
/// was probably meant to be.
fn unknown(line: usize, name: &str, section: &Section) -> WgConfigError {
    if let Some(key) = leading_key(name) {
        return error(
            line,
            key,
            &format!(
                "expected `{key} = value`: something stands between the name and `=` ({NOT_SHOWN})"
            ),
        );
    }
    let place = match section {
        Section::None => "outside any section",
        Section::Interface => "in [Interface]",
        Section::Peer => "in [Peer]",
    };
    match meant(name) {
        Some(key) => error(
            line,
            "",
            &format!("unknown key {place} (did you mean {key}?); {NOT_SHOWN}"),
        ),
        None => error(line, "", &format!("unknown key {place}; {NOT_SHOWN}")),
    }
}

#[derive(Default)]
struct InterfaceDraft {
    line: usize,
    private_key: Option<Key>,
    addresses: Vec<IpNet>,
    listen_port: Option<u16>,
    mtu: Option<u16>,
    dns: Vec<IpAddr>,
    dns_search: Vec<String>,
}

#[derive(Default)]
struct PeerDraft {
    line: usize,
    public_key: Option<Key>,
    /// The line of `PublicKey`.
    public_key_line: usize,
    preshared_key: Option<Key>,
    endpoint: Option<Endpoint>,
    allowed_ips: Vec<IpNet>,
    persistent_keepalive: Option<u16>,
}

enum Section {
    None,
    Interface,
    Peer,
}

impl WgConfig {
    /// Parses a wg-quick file.
    ///
    /// # Errors
    /// The first problem, with its line and, when it can be told, the key's name; a config
    /// past [`MAX_PEERS`] or [`MAX_ALLOWED_IPS`] at the line that goes past it; two peers with
    /// one public key at the second's `PublicKey`.
    pub fn parse(text: &str) -> Result<WgConfig, WgConfigError> {
        let mut section = Section::None;
        let mut interface: Option<InterfaceDraft> = None;
        let mut peers: Vec<PeerDraft> = Vec::new();
        let mut ignored = Vec::new();
        let mut prefixes = 0usize;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            if content.starts_with('[') {
                section = match content.to_ascii_lowercase().as_str() {
                    "[interface]" => {
                        if interface.is_some() {
                            return Err(error(line, "[Interface]", "a second [Interface] section"));
                        }
                        interface = Some(InterfaceDraft {
                            line,
                            ..Default::default()
                        });
                        Section::Interface
                    }
                    "[peer]" => {
                        if peers.len() >= MAX_PEERS {
                            return Err(error(
                                line,
                                "[Peer]",
                                &format!("more than {MAX_PEERS} peers, the limit (MAX_PEERS)"),
                            ));
                        }
                        peers.push(PeerDraft {
                            line,
                            ..Default::default()
                        });
                        Section::Peer
                    }
                    _ => {
                        return Err(error(
                            line,
                            "",
                            &format!(
                                "unknown section, expected [Interface] or [Peer] ({NOT_SHOWN})"
                            ),
                        ))
                    }
                };
                continue;
            }
            let Some((name, value)) = content.split_once('=') else {
                return Err(damaged(line, content));
            };
            let Some((key, place)) = known(name.trim()) else {
                return Err(unknown(line, name.trim(), &section));
            };
            let value = value.trim();
            match (place, &section, interface.as_mut(), peers.last_mut()) {
                (Place::WgQuick, ..) => ignored.push(format!("{key} (line {line})")),
                (Place::Interface, Section::Interface, Some(draft), _) => {
                    interface_key(draft, line, key, value)?;
                }
                (Place::Peer, Section::Peer, _, Some(draft)) => {
                    peer_key(draft, line, key, value, &mut prefixes)?;
                }
                (_, Section::None, ..) => {
                    return Err(error(
                        line,
                        key,
                        "outside any section (expected [Interface] or [Peer] before it)",
                    ))
                }
                (Place::Interface, ..) => {
                    return Err(error(line, key, "belongs in [Interface], not in [Peer]"))
                }
                (Place::Peer, ..) => {
                    return Err(error(line, key, "belongs in [Peer], not in [Interface]"))
                }
            }
        }
        let interface = interface.ok_or_else(|| error(0, "[Interface]", "missing"))?;
        let interface = Interface {
            private_key: interface
                .private_key
                .ok_or_else(|| error(interface.line, "PrivateKey", "missing"))?,
            addresses: interface.addresses,
            listen_port: interface.listen_port,
            mtu: interface.mtu.unwrap_or(DEFAULT_MTU),
            mtu_set: interface.mtu.is_some(),
            dns: interface.dns,
            dns_search: interface.dns_search,
        };
        if peers.is_empty() {
            return Err(error(0, "[Peer]", "missing: a tunnel needs a peer"));
        }
        let own = interface.private_key.public_key();
        let mut first_line = std::collections::HashMap::with_capacity(peers.len());
        let peers = peers
            .into_iter()
            .map(|p| {
                let public_key = p
                    .public_key
                    .ok_or_else(|| error(p.line, "PublicKey", "missing in this [Peer]"))?;
                if public_key.0 == own.0 {
                    return Err(error(p.public_key_line, "PublicKey", OWN_KEY));
                }
                if let Some(first) = first_line.insert(public_key.0, p.public_key_line) {
                    return Err(error(
                        p.public_key_line,
                        "PublicKey",
                        &format!("the same key as the PublicKey on line {first}: one peer per key"),
                    ));
                }
                Ok(PeerConfig {
                    public_key,
                    preshared_key: p.preshared_key,
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips,
                    persistent_keepalive: p.persistent_keepalive,
                })
            })
            .collect::<Result<Vec<_>, WgConfigError>>()?;
        Ok(WgConfig {
            interface,
            peers,
            ignored,
        })
    }

    /// AllowedIPs prefixes over all peers.
    pub fn prefixes(&self) -> usize {
        self.peers.iter().map(|p| p.allowed_ips.len()).sum()
    }

    /// Checks what [`WgConfig::parse`] checks of the config as a whole, for a config changed
    /// in code since: a peer at least, the limits ([`MAX_PEERS`], [`MAX_ALLOWED_IPS`]), and
    /// one peer per public key. It builds nothing: a config at the limits is checked in
    /// milliseconds.
    ///
    /// # Errors
    /// The first problem, naming the peer by its position (the config has no lines now).
    pub fn check(&self) -> Result<(), WgConfigError> {
        if self.peers.is_empty() {
            return Err(error(0, "[Peer]", "missing: a tunnel needs a peer"));
        }
        if self.peers.len() > MAX_PEERS {
            return Err(error(
                0,
                "[Peer]",
                &format!(
                    "{} peers, more than {MAX_PEERS}, the limit (MAX_PEERS)",
                    self.peers.len()
                ),
            ));
        }
        let prefixes = self.prefixes();
        if prefixes > MAX_ALLOWED_IPS {
            return Err(error(
                0,
                "AllowedIPs",
                &format!(
                    "{prefixes} prefixes, more than {MAX_ALLOWED_IPS}, the limit (MAX_ALLOWED_IPS)"
                ),
            ));
        }
        let own = self.interface.private_key.public_key();
        let mut first = std::collections::HashMap::with_capacity(self.peers.len());
        for (index, peer) in self.peers.iter().enumerate() {
            if peer.public_key.0 == own.0 {
                return Err(error(
                    0,
                    "PublicKey",
                    &format!("peer {}: {OWN_KEY}", index + 1),
                ));
            }
            if let Some(earlier) = first.insert(peer.public_key.0, index) {
                return Err(error(
                    0,
                    "PublicKey",
                    &format!(
                        "peer {} has the same key as peer {}: one peer per key",
                        index + 1,
                        earlier + 1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether [`WgConfig::resolve`] has a lookup to make: a peer endpoint is a host name, or
    /// on Apple an IPv4 literal.
    pub fn needs_lookup(&self) -> bool {
        self.peers.iter().any(|p| {
            p.endpoint
                .as_ref()
                .is_some_and(|e| e.to_look_up(SYNTHESIZES_FROM_IPV4).is_some())
        })
    }

    /// Resolves every peer endpoint given as a host name (a blocking lookup with the system's
    /// `getaddrinfo`, IPv4 preferred), and on Apple every IPv4 literal too, which DNS64 maps
    /// to an IPv6 address on an IPv6-only network. Each becomes [`Endpoint::Resolved`], which
    /// a rebind looks up again. Call it before starting the engine, never on a thread a stop
    /// waits for: a resolver may take seconds to answer.
    ///
    /// # Errors
    /// A name that does not resolve, naming the peer by its position (not the name: errors
    /// quote nothing of the config).
    pub fn resolve(&mut self) -> Result<(), WgConfigError> {
        for (i, peer) in self.peers.iter_mut().enumerate() {
            let Some(endpoint) = &peer.endpoint else {
                continue;
            };
            let Some((host, port)) = endpoint.to_look_up(SYNTHESIZES_FROM_IPV4) else {
                continue;
            };
            let addr = match crate::sys::resolve::resolve(&host, port) {
                Ok(addr) => addr,
                // A literal is an address already: keep it as written.
                Err(_) if endpoint.addr().is_some() => continue,
                Err(e) => {
                    return Err(error(
                        0,
                        "Endpoint",
                        &format!("peer {}: its host does not resolve ({e})", i + 1),
                    ))
                }
            };
            peer.endpoint = Some(Endpoint::Resolved { host, port, addr });
        }
        Ok(())
    }
}

fn error(line: usize, field: &str, reason: &str) -> WgConfigError {
    WgConfigError {
        line,
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn once<T>(
    slot: &mut Option<T>,
    line: usize,
    key: &'static str,
    value: T,
) -> Result<(), WgConfigError> {
    if slot.is_some() {
        return Err(error(line, key, "given twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn key_value(line: usize, key: &'static str, value: &str) -> Result<Key, WgConfigError> {
    Key::from_base64(value).ok_or_else(|| {
        let hint = if value.is_empty() {
            ": it is empty"
        } else if value.starts_with(['"', '\'']) {
            ": write it without quotes"
        } else if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            ": this one looks like hex, and wg-quick files write keys in base64"
        } else {
            ""
        };
        error(
            line,
            key,
            &format!("not a key (44 characters of base64, 32 bytes){hint}; the value is not shown"),
        )
    })
}

fn list(value: &str) -> impl Iterator<Item = (usize, &str)> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .enumerate()
        .map(|(i, v)| (i + 1, v))
}

/// Why a peer with the interface's own public key is refused.
const OWN_KEY: &str = "this interface's own public key: a peer is another end";

fn prefix(
    line: usize,
    key: &'static str,
    entry: usize,
    text: &str,
) -> Result<IpNet, WgConfigError> {
    // A bare address is a host route, as wg-quick reads it.
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            error(
                line,
                key,
                &format!("entry {entry} is not an address or prefix (the value is not shown)"),
            )
        })
}

fn number<T: std::str::FromStr>(
    line: usize,
    key: &'static str,
    value: &str,
    what: &str,
) -> Result<T, WgConfigError> {
    value
        .parse()
        .map_err(|_| error(line, key, &format!("not {what} (the value is not shown)")))
}

/// A DNS search domain: labels of letters, digits, `-` and `_`, as resolvers take them.
fn domain_name(text: &str) -> bool {
    text.len() <= 253
        && text.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn interface_key(
    draft: &mut InterfaceDraft,
    line: usize,
    key: &'static str,
    value: &str,
) -> Result<(), WgConfigError> {
    match key {
        "PrivateKey" => once(
            &mut draft.private_key,
            line,
            key,
            key_value(line, key, value)?,
        ),
        "Address" => {
            for (entry, item) in list(value) {
                draft.addresses.push(prefix(line, key, entry, item)?);
            }
            Ok(())
        }
        "ListenPort" => once(
            &mut draft.listen_port,
            line,
            key,
            number(line, key, value, "a port (0-65535)")?,
        ),
        "MTU" => {
            let mtu: u16 = number(line, key, value, "an MTU (576-65535)")?;
            if mtu < 576 {
                return Err(error(line, key, "below 576, the least an MTU may be"));
            }
            once(&mut draft.mtu, line, key, mtu)
        }
        "DNS" => {
            for (entry, item) in list(value) {
                match item.parse::<IpAddr>() {
                    Ok(addr) => draft.dns.push(addr),
                    Err(_) if domain_name(item) => draft.dns_search.push(item.to_string()),
                    Err(_) => {
                        return Err(error(
                            line,
                            key,
                            &format!(
                                "entry {entry} is neither an address nor a domain name (the value \
                                 is not shown)"
                            ),
                        ))
                    }
                }
            }
            Ok(())
        }
        _ => Err(error(line, key, "belongs in [Peer], not in [Interface]")),
    }
}

fn peer_key(
    draft: &mut PeerDraft,
    line: usize,
    key: &'static str,
    value: &str,
    prefixes: &mut usize,
) -> Result<(), WgConfigError> {
    match key {
        "PublicKey" => {
            draft.public_key_line = line;
            once(
                &mut draft.public_key,
                line,
                key,
                key_value(line, key, value)?,
            )
        }
        "PresharedKey" => once(
            &mut draft.preshared_key,
            line,
            key,
            key_value(line, key, value)?,
        ),
        "Endpoint" => once(&mut draft.endpoint, line, key, endpoint(line, key, value)?),
        "AllowedIPs" => {
            for (entry, item) in list(value) {
                if *prefixes >= MAX_ALLOWED_IPS {
                    return Err(error(
                        line,
                        key,
                        &format!(
                            "more than {MAX_ALLOWED_IPS} prefixes in all, the limit \
                             (MAX_ALLOWED_IPS)"
                        ),
                    ));
                }
                draft.allowed_ips.push(prefix(line, key, entry, item)?);
                *prefixes += 1;
            }
            Ok(())
        }
        "PersistentKeepalive" => {
            let seconds: u16 = if value.eq_ignore_ascii_case("off") {
                0
            } else {
                number(line, key, value, "a number of seconds or off")?
            };
            once(&mut draft.persistent_keepalive, line, key, seconds)?;
            if seconds == 0 {
                draft.persistent_keepalive = None;
            }
            Ok(())
        }
        _ => Err(error(line, key, "belongs in [Interface], not in [Peer]")),
    }
}

/// `1.2.3.4:51820`, `[2001:db8::1]:51820`, or `vpn.example.com:51820`.
fn endpoint(line: usize, key: &'static str, value: &str) -> Result<Endpoint, WgConfigError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(Endpoint::Addr(addr));
    }
    let bad = || {
        error(
            line,
            key,
            "not HOST:PORT, an address or host name and a port (the value is not shown)",
        )
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !domain_name(host) {
        return Err(bad());
    }
    Ok(Endpoint::Host(host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PUBLIC: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn a_peer_with_the_interfaces_own_key_is_refused_at_its_line() {
        let text = |second: &str| {
            format!(
                "[Interface]\nPrivateKey = {PRIVATE}\n\n[Peer]\nPublicKey = {PUBLIC}\n\
                 AllowedIPs = 10.0.0.2/32\n\n[Peer]\nPublicKey = {second}\n\
                 AllowedIPs = 10.0.0.3/32\n"
            )
        };
        let mut config = WgConfig::parse(&text(&Key::generate().to_base64())).unwrap();
        let own = config.interface.private_key.public_key();
        let e = WgConfig::parse(&text(&own.to_base64())).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (9, "PublicKey"), "{e}");
        assert!(e.to_string().contains("own public key"), "{e}");
        // And in a config changed in code since.
        config.peers[1].public_key = own;
        let e = config.check().unwrap_err();
        assert!(
            e.to_string().contains("peer 2: this interface's own"),
            "{e}"
        );
    }

    #[test]
    fn parses_what_wg_quick_files_contain() {
        let text = format!(
            "# a provider's file\n\
             [Interface]\n\
             privatekey = {PRIVATE}   # the key\n\
             Address = 10.0.0.2/32, fd00::2/128\n\
             Address = 10.1.0.2\n\
             DNS = 10.0.0.1, 2001:db8::53, corp.example\n\
             PostUp = iptables -A FORWARD -i %i -j ACCEPT\n\
             \n\
             [Peer]\n\
             PublicKey = {PUBLIC}\n\
             PresharedKey = {PUBLIC}\n\
             Endpoint = [2001:db8::1]:51820\n\
             AllowedIPs = 0.0.0.0/0\n\
             AllowedIPs = ::/0\n\
             PersistentKeepalive = 25\n\
             [peer]\n\
             publickey = {PRIVATE}\n\
             endpoint = vpn.example.com:443\n"
        );
        let c = WgConfig::parse(&text).unwrap();
        assert_eq!(c.interface.addresses.len(), 3);
        assert_eq!(c.interface.addresses[2].to_string(), "10.1.0.2/32");
        assert_eq!(c.interface.mtu, DEFAULT_MTU);
        assert!(!c.interface.mtu_set);
        assert_eq!(c.interface.listen_port, None);
        assert_eq!(c.interface.dns.len(), 2);
        assert_eq!(c.interface.dns_search, ["corp.example"]);
        assert_eq!(c.ignored, ["PostUp (line 7)"]);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[0].allowed_ips.len(), 2);
        assert_eq!(c.peers[0].persistent_keepalive, Some(25));
        assert_eq!(
            c.peers[0].endpoint,
            Some(Endpoint::Addr("[2001:db8::1]:51820".parse().unwrap()))
        );
        assert_eq!(
            c.peers[1].endpoint,
            Some(Endpoint::Host("vpn.example.com".into(), 443))
        );
        assert_eq!(c.interface.private_key.to_base64(), PRIVATE);
    }

    #[test]
    fn errors_name_the_line_and_field_and_never_a_key() {
        let cases = [
            // An unknown key is not named: its text could be anything, a key among others.
            (format!("[Interface]\nPrivateKey = {PRIVATE}\nFoo = 1\n[Peer]\nPublicKey = {PUBLIC}\n"), 3, ""),
            (format!("[Interface]\nPrivateKey = {PRIVATE}x\n[Peer]\nPublicKey = {PUBLIC}\n"), 2, "PrivateKey"),
            (format!("[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC}\nEndpoint = nowhere\n"), 5, "Endpoint"),
            (format!("[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nAllowedIPs = 10.0.0.0/33\nPublicKey = {PUBLIC}\n"), 4, "AllowedIPs"),
            (format!("PrivateKey = {PRIVATE}\n"), 1, "PrivateKey"),
            (format!("[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nEndpoint = 1.2.3.4:5\n"), 3, "PublicKey"),
            (format!("[Interface]\nPrivateKey = {PRIVATE}\nMTU = 9\n[Peer]\nPublicKey = {PUBLIC}\n"), 3, "MTU"),
            (format!("[Interface]\nPrivateKey = {PRIVATE}\n"), 0, "[Peer]"),
            (format!("[Interface]\nPrivateKey = {PRIVATE}\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC}\n"), 3, "PrivateKey"),
            (format!("[Tunnel]\nPrivateKey = {PRIVATE}\n"), 1, ""),
            (format!("[Interface]\nPrivateKey: {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC}\n"), 2, "PrivateKey"),
            (format!("[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC}\n[Peer]\nPublicKey = {PUBLIC}\n"), 6, "PublicKey"),
        ];
        for (text, line, field) in cases {
            let err = WgConfig::parse(&text).unwrap_err();
            assert_eq!((err.line, err.field.as_str()), (line, field), "{err}");
            let shown = err.to_string();
            assert!(
                !shown.contains(PRIVATE) && !shown.contains(PUBLIC),
                "{shown}"
            );
            assert!(!shown.contains(&PRIVATE[..20]), "{shown}");
        }
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let text = format!("[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC}\nPresharedKey = {PRIVATE}\n");
        let shown = format!("{:?}", WgConfig::parse(&text).unwrap());
        assert!(
            !shown.contains(&PRIVATE[..10]) && !shown.contains(&PUBLIC[..10]),
            "{shown}"
        );
    }

    #[test]
    fn names_are_resolved_and_remembered_for_the_next_lookup() {
        let text = format!("[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC}\nEndpoint = localhost:51820\n");
        let mut c = WgConfig::parse(&text).unwrap();
        c.resolve().unwrap();
        match &c.peers[0].endpoint {
            Some(Endpoint::Resolved { host, port, addr }) => {
                assert_eq!((host.as_str(), *port), ("localhost", 51820));
                assert_eq!(*addr, "127.0.0.1:51820".parse().unwrap(), "IPv4 preferred");
            }
            other => panic!("{other:?}"),
        }
        let resolved = c.clone();
        c.resolve().unwrap();
        assert_eq!(
            c, resolved,
            "a resolved endpoint is not looked up again at start"
        );
    }

    #[test]
    fn an_ipv4_literal_is_looked_up_only_where_dns64_may_map_it() {
        let v4 = Endpoint::Addr("192.0.2.1:51820".parse().unwrap());
        let v6 = Endpoint::Addr("[2001:db8::1]:51820".parse().unwrap());
        let name = Endpoint::Host("vpn.example".into(), 1);
        assert_eq!(v4.to_look_up(false), None);
        assert_eq!(v4.to_look_up(true), Some(("192.0.2.1".into(), 51820)));
        assert_eq!(v6.to_look_up(true), None, "DNS64 maps IPv4 only");
        assert_eq!(name.to_look_up(false), Some(("vpn.example".into(), 1)));
        let resolved = Endpoint::Resolved {
            host: "vpn.example".into(),
            port: 1,
            addr: "192.0.2.9:1".parse().unwrap(),
        };
        assert_eq!(resolved.to_look_up(true), None);
        assert_eq!(resolved.addr(), Some("192.0.2.9:1".parse().unwrap()));
        assert_eq!(resolved.host(), "vpn.example");
        assert_eq!(name.addr(), None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use std::net::{Ipv4Addr, Ipv6Addr};

        use crate::wireguard::strategies::{key, net};

        fn endpoint() -> impl Strategy<Value = Endpoint> {
            prop_oneof![
                (any::<u32>(), any::<u16>())
                    .prop_map(|(a, port)| Endpoint::Addr((Ipv4Addr::from(a), port).into())),
                (any::<u128>(), any::<u16>())
                    .prop_map(|(a, port)| Endpoint::Addr((Ipv6Addr::from(a), port).into())),
                ("[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}", any::<u16>())
                    .prop_map(|(h, port)| Endpoint::Host(h, port)),
            ]
        }

        fn peer() -> impl Strategy<Value = PeerConfig> {
            (
                key(),
                proptest::option::of(key()),
                proptest::option::of(endpoint()),
                proptest::collection::vec(net(), 0..5),
                proptest::option::of(1u16..),
            )
                .prop_map(
                    |(public_key, preshared_key, endpoint, allowed_ips, persistent_keepalive)| {
                        PeerConfig {
                            public_key,
                            preshared_key,
                            endpoint,
                            allowed_ips,
                            persistent_keepalive,
                        }
                    },
                )
        }

        fn config() -> impl Strategy<Value = WgConfig> {
            (
                key(),
                proptest::collection::vec(net(), 0..4),
                proptest::option::of(any::<u16>()),
                576u16..,
                proptest::collection::vec(
                    any::<u32>().prop_map(|a| IpAddr::from(Ipv4Addr::from(a))),
                    0..3,
                ),
                proptest::collection::vec(peer(), 1..4),
            )
                .prop_map(|(private_key, addresses, listen_port, mtu, dns, peers)| {
                    WgConfig {
                        interface: Interface {
                            private_key,
                            addresses,
                            listen_port,
                            mtu,
                            // The text written from it always sets MTU.
                            mtu_set: true,
                            dns,
                            dns_search: Vec::new(),
                        },
                        peers,
                        ignored: Vec::new(),
                    }
                })
        }

        /// How a file writes things: the case of its keys, the spaces around `=`, whether a
        /// list is one line or one line per item, and comments.
        #[derive(Debug, Clone)]
        struct Style {
            upper: bool,
            spaces: bool,
            split_lists: bool,
            comments: bool,
        }

        fn style() -> impl Strategy<Value = Style> {
            (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(upper, spaces, split_lists, comments)| Style {
                    upper,
                    spaces,
                    split_lists,
                    comments,
                },
            )
        }

        /// A wg-quick text as written in `style`.
        struct Writer<'a> {
            style: &'a Style,
            text: String,
        }

        impl Writer<'_> {
            fn line(&mut self, key: &str, value: &str) {
                let key = if self.style.upper {
                    key.to_ascii_uppercase()
                } else {
                    key.to_string()
                };
                let eq = if self.style.spaces { " = " } else { "=" };
                self.text.push_str(&format!("{key}{eq}{value}"));
                if self.style.comments {
                    self.text.push_str("  # note");
                }
                self.text.push('\n');
            }

            fn list<T: ToString>(&mut self, key: &str, items: &[T]) {
                let items: Vec<String> = items.iter().map(ToString::to_string).collect();
                if items.is_empty() {
                    return;
                }
                if self.style.split_lists {
                    for item in &items {
                        self.line(key, item);
                    }
                } else {
                    self.line(key, &items.join(", "));
                }
            }
        }

        fn render(c: &WgConfig, style: &Style) -> String {
            let mut w = Writer {
                style,
                text: String::from("[Interface]\n"),
            };
            let i = &c.interface;
            w.line("PrivateKey", &i.private_key.to_base64());
            w.list("Address", &i.addresses);
            if let Some(port) = i.listen_port {
                w.line("ListenPort", &port.to_string());
            }
            w.line("MTU", &i.mtu.to_string());
            w.list("DNS", &i.dns);
            w.line("PostUp", "ip rule add table 51820");
            for p in &c.peers {
                w.text.push_str("\n[Peer]\n");
                w.line("PublicKey", &p.public_key.to_base64());
                if let Some(psk) = &p.preshared_key {
                    w.line("PresharedKey", &psk.to_base64());
                }
                if let Some(e) = &p.endpoint {
                    w.line("Endpoint", &e.to_string());
                }
                w.list("AllowedIPs", &p.allowed_ips);
                if let Some(k) = p.persistent_keepalive {
                    w.line("PersistentKeepalive", &k.to_string());
                }
            }
            w.text
        }

        proptest! {
            #[test]
            fn what_is_written_is_what_is_read(c in config(), style in style()) {
                let text = render(&c, &style);
                let mut parsed = WgConfig::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                prop_assert_eq!(parsed.ignored.len(), 1);
                parsed.ignored.clear();
                prop_assert_eq!(parsed, c);
            }

            #[test]
            fn a_damaged_line_is_named_and_no_key_is_quoted(
                c in config(),
                style in style(),
                victim in any::<prop::sample::Index>(),
                junk in "[ -~]{0,20}",
            ) {
                let text = render(&c, &style);
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                let at = victim.index(lines.len());
                // Keep the key, replace the value (or the whole line, if it has no `=`).
                lines[at] = match lines[at].split_once('=') {
                    Some((key, _)) => format!("{key}={junk}"),
                    None => junk.clone(),
                };
                let damaged = lines.join("\n");
                match WgConfig::parse(&damaged) {
                    Ok(_) => {}
                    Err(e) => {
                        // The error is on the damaged line, or about the file as a whole (a
                        // section that lost its key), or a later line (a value now given twice).
                        prop_assert!(e.line == 0 || e.line > at || e.field.starts_with('['), "{e}");
                        let shown = e.to_string();
                        let keys = std::iter::once(&c.interface.private_key)
                            .chain(c.peers.iter().map(|p| &p.public_key))
                            .chain(c.peers.iter().filter_map(|p| p.preshared_key.as_ref()));
                        for k in keys {
                            prop_assert!(!shown.contains(&k.to_base64()[..16]), "{shown}");
                        }
                    }
                }
            }

            #[test]
            fn arbitrary_text_never_panics(text in "(\\PC|\n|=|\\[|\\]|#){0,400}") {
                if let Err(e) = WgConfig::parse(&text) {
                    prop_assert!(e.line <= text.lines().count(), "{e}");
                }
            }
        }
    }
}
