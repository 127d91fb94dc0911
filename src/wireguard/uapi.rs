//! WireGuard's cross-platform userspace configuration protocol ("UAPI"), as pure code: a
//! `set` request parsed, a model of a device's configuration that applies it, and the
//! answer to `get`.
//!
//! The protocol (<https://www.wireguard.com/xplatform/#configuration-protocol>) is what `wg`
//! and `wg-quick` speak to a userspace WireGuard over `/var/run/wireguard/IF.sock`, and what
//! WireGuardKit hands to `wgSetConfig` and reads from `wgGetConfig`: `key=value` lines, keys
//! in hex, an operation ended by an empty line, and an `errno=N` status.
//!
//! ```text
//!  set=1                                      get=1
//!  private_key=<64 hex digits>                (empty line)
//!  listen_port=51820                          ─► private_key=…  listen_port=…  fwmark=…
//!  replace_peers=true                            public_key=…  preshared_key=…
//!  public_key=<64 hex digits>                    protocol_version=1  endpoint=…
//!  endpoint=192.0.2.1:51820                      last_handshake_time_sec=…  …_nsec=…
//!  replace_allowed_ips=true                      tx_bytes=…  rx_bytes=…
//!  allowed_ip=10.0.0.0/24                        persistent_keepalive_interval=…
//!  (empty line)  ─► errno=0, empty line          allowed_ip=…  errno=0, empty line
//! ```
//!
//! Here: [`parse_set`] reads the lines after `set=1` into a [`SetRequest`];
//! [`UapiState::apply`] applies it to a model of the device's configuration and reports what
//! changed ([`Changes`]), which the live peer table acts on ([`super::WireGuard::set`]);
//! [`format_get`] writes the `get` answer from the model and each peer's live figures
//! ([`PeerFigures`]). No socket, no
//! clock, no name resolution: the operation line (`set=1`, `get=1`), the socket and its
//! permissions, binding the listen port and setting the fwmark (whose failure wireguard-go
//! answers with [`ErrorCode::PortInUse`]) belong to the caller.
//!
//! # Semantics
//!
//! wireguard-go's `device/uapi.go` (2025, with `allowed_ip=-PREFIX` removing a prefix),
//! line for line and with its error codes, except where noted:
//! - Device keys come first; `public_key=` starts a peer, and creates it unless it exists.
//!   `update_only=true` undoes that creation, `remove=true` removes the peer, and the rest of
//!   that peer's lines are then checked and change nothing. So does every line of a peer
//!   whose key is this device's own public key.
//! - A prefix is stored with its host bits cleared (`10.1.2.3/24` is `10.1.2.0/24`); one
//!   given to a peer is taken from whichever peer had it, and moves to the end of the
//!   receiving peer's list. An all-zero private key removes the key; an all-zero preshared
//!   key is no preshared key. A new private key is clamped, and a peer with its public key
//!   is removed.
//! - **Atomic**, where wireguard-go is not: it applies each line as it reads it, so a request
//!   that fails at line 9 leaves lines 1 to 8 applied. Here a request that fails changes
//!   nothing. It is parsed and checked whole first, so an error anywhere in it is the answer,
//!   where wireguard-go might first have stopped on an earlier line that only the state
//!   refuses (the peer past [`MAX_PEERS`]; the same code, EINVAL, unless the later line's
//!   error is EPROTO or EIO).
//! - Peers are listed in the order they were created. (wireguard-go lists them in Go's map
//!   order, which changes from one `get` to the next.)
//! - `endpoint` takes `IP:port` and `[IPv6]:port` literals, an IPv6 zone only as a number
//!   (`[fe80::1%2]:51820`): a zone's name needs the OS to look up (`if_nametoindex`).
//! - `fwmark=` with no number is refused (EINVAL), as wireguard-go has refused it since
//!   2021 ("not in the spec"); `fwmark=0` clears the mark.
//!
//! # Limits
//!
//! A request comes from whoever may open the socket, or from the host app, so it is read as
//! untrusted input, within these limits (each with the code wireguard-go answers nearest):
//!
//! | Limit | Value | Code | Why |
//! |---|---|---|---|
//! | A line | [`MAX_LINE_BYTES`] (4,096) | EIO | The longest line the protocol has is about 70 bytes. wireguard-go's line reader refuses a line past 64 KiB with EIO ("failed to read input"), and so does this past 4 KiB. |
//! | A request | [`MAX_REQUEST_BYTES`] (40 MiB) | EIO | Room for a request that sets a whole configuration at both limits below with every line at its longest (35.3 MB); past it the request is not read further, as a read that fails. |
//! | Peers | [`MAX_PEERS`] (65,536) | EINVAL | wireguard-go's own `MaxPeers`, the same figure; its `NewPeer` refuses the next peer with EINVAL. |
//! | AllowedIPs prefixes, all peers together | [`MAX_ALLOWED_IPS`] (262,144) | EINVAL | The wg-quick config's limit. wireguard-go has none; EINVAL is its code for a request it will not apply. |
//!
//! The parsed form of a request keeps at most 40 bytes for a line of 16 or more (the shortest
//! line that is kept, `allowed_ip=::/0`), and nothing for a line that changes nothing: at
//! most 2.5 times the request's size, besides the room a list reserves as it grows.
//!
//! # No key in any message
//!
//! A request holds a private key and often preshared keys. An error ([`UapiError`]) names
//! its line and the key's name as the protocol spells it (`listen_port`), never a value, an
//! unknown key's name or the line: a damaged line may hold a key. wireguard-go quotes values
//! in its messages; this does not. [`Key`]'s `Debug` shows nothing of a key, and
//! [`UapiState`]'s shows counts. Keys are written out in one place only, the `get` answer.

use super::config::{Endpoint, Key, PeerConfig, WgConfig, MAX_ALLOWED_IPS, MAX_PEERS};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest line a request may hold, in bytes, without its newline.
pub const MAX_LINE_BYTES: usize = 4096;

/// Most bytes a request may hold, counting each line's newline: a request that sets
/// [`MAX_PEERS`] peers with every key, IPv6 endpoints with zones and [`MAX_ALLOWED_IPS`] IPv6
/// prefixes, all at their longest, is 35.3 MB.
pub const MAX_REQUEST_BYTES: usize = 40 << 20;

/// The errno values wireguard-go answers with (its `ipc` package): the platform's own on Unix
/// (EPROTO is 71 on Linux, 100 on macOS and iOS), and Linux's elsewhere, as its Windows build
/// writes them.
mod errno {
    #[cfg(unix)]
    pub(super) use libc::{EADDRINUSE, EINVAL, EIO, EPROTO};
    #[cfg(not(unix))]
    pub(super) const EIO: i32 = 5;
    #[cfg(not(unix))]
    pub(super) const EPROTO: i32 = 71;
    #[cfg(not(unix))]
    pub(super) const EINVAL: i32 = 22;
    #[cfg(not(unix))]
    pub(super) const EADDRINUSE: i32 = 98;
    /// Linux's ENOANO, which wireguard-go writes on every platform.
    pub(super) const UNKNOWN: i32 = 55;
}

/// What went wrong, as wireguard-go's `ipc` package names its codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `IpcErrorIO`, EIO: the request could not be read. Here: a line or a request past its
    /// limit. (wireguard-go also answers it when the `get` answer cannot be written.)
    Io,
    /// `IpcErrorProtocol`, EPROTO: a line that is not `key=value`.
    Protocol,
    /// `IpcErrorInvalid`, EINVAL: an unknown key, a key in the wrong place, a value that does
    /// not parse, a peer or a prefix past the limits.
    Invalid,
    /// `IpcErrorPortInUse`, EADDRINUSE: the listen port could not be bound, or the fwmark
    /// set on the socket. Never from this module: for the code that binds.
    PortInUse,
    /// `IpcErrorUnknown`, -55: any other failure.
    Unknown,
}

impl ErrorCode {
    /// The status wireguard-go writes for it (`errno=-22`): a negative errno, 0 meaning
    /// success.
    pub fn errno(self) -> i32 {
        -match self {
            ErrorCode::Io => errno::EIO,
            ErrorCode::Protocol => errno::EPROTO,
            ErrorCode::Invalid => errno::EINVAL,
            ErrorCode::PortInUse => errno::EADDRINUSE,
            ErrorCode::Unknown => errno::UNKNOWN,
        }
    }

    /// The errno's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Io => "EIO",
            ErrorCode::Protocol => "EPROTO",
            ErrorCode::Invalid => "EINVAL",
            ErrorCode::PortInUse => "EADDRINUSE",
            ErrorCode::Unknown => "ENOANO",
        }
    }
}

/// Why a `set` request was refused: its code (the `errno=` to answer with), the line (1: the
/// first after `set=1`), the key's name when the line's key is one the protocol has, and
/// what is wrong.
///
/// It holds no text from the request: only a line number, names as the protocol spells
/// them, and figures the parser made. A damaged line may hold a key, so neither a value, an
/// unknown key's name nor a line is ever quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UapiError {
    code: ErrorCode,
    line: usize,
    field: &'static str,
    reason: String,
}

impl UapiError {
    /// An error at `line` (from 1), about the key `field` as the protocol spells it (empty
    /// when the line's key cannot be named). `reason` must quote nothing of the request.
    pub(crate) fn new(
        code: ErrorCode,
        line: usize,
        field: &'static str,
        reason: impl Into<String>,
    ) -> UapiError {
        UapiError {
            code,
            line,
            field,
            reason: reason.into(),
        }
    }

    /// The listen port could not be bound or the fwmark set (`field`: `listen_port` or
    /// `fwmark`), as wireguard-go answers it: EADDRINUSE. For the code that owns the
    /// socket ([`super::WireGuard::set_on`]).
    pub fn port_in_use(field: &'static str, reason: impl Into<String>) -> UapiError {
        UapiError::new(ErrorCode::PortInUse, 0, field, reason)
    }

    /// The code, as wireguard-go would answer the same request.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The status to answer with, negative (`-22` for EINVAL).
    pub fn errno(&self) -> i32 {
        self.code.errno()
    }

    /// The line, counting from 1 at the first line after `set=1`; 0 for the request as a whole
    /// (refused by the tunnel or its socket rather than for one line).
    pub fn line(&self) -> usize {
        self.line
    }

    /// The line's key as the protocol spells it (`listen_port`), or empty when it is not a
    /// key the protocol has.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for UapiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the request as a whole (what the tunnel or its socket refused).
        match self.line {
            0 => write!(f, "UAPI set")?,
            line => write!(f, "UAPI set, line {line}")?,
        }
        if !self.field.is_empty() {
            write!(f, " ({})", self.field)?;
        }
        write!(f, ": {} ({})", self.reason, self.code.name())
    }
}

impl std::error::Error for UapiError {}

/// The status lines that end an answer, as wireguard-go's `IpcHandle` writes them:
/// `errno=0` (or the negative code) and an empty line.
pub fn format_status(errno: i32) -> String {
    format!("errno={errno}\n\n")
}

/// A parsed `set` request, checked whole: [`UapiState::apply`] applies it, or refuses it
/// only for what depends on the state (the limits on peers and prefixes).
///
/// Its `Debug` shows no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRequest {
    device: DeviceRequest,
    peers: Vec<PeerRequest>,
}

/// The device's lines, which all come before the first `public_key`.
///
/// Their order among themselves matters only for private keys (each new one removes the
/// peer with its public key, as wireguard-go's `SetPrivateKey` does), so the rest keep
/// their last value, and however often a line repeats, this stays small.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct DeviceRequest {
    /// Each `private_key` in turn, `None` for the all-zero key, without repeats in a row.
    private_keys: Vec<Option<Key>>,
    listen_port: Option<u16>,
    fwmark: Option<u32>,
    replace_peers: bool,
}

impl SetRequest {
    /// A request that moves existing peers to new endpoints and touches nothing else (a
    /// peer no longer there is not made again): what a rebind's fresh lookups apply.
    pub(crate) fn move_endpoints(moves: &[(Key, SocketAddr)]) -> SetRequest {
        SetRequest {
            device: DeviceRequest::default(),
            peers: moves
                .iter()
                .map(|(key, addr)| PeerRequest {
                    public_key: key.clone(),
                    line: 0,
                    ops: vec![(0, PeerOp::UpdateOnly), (0, PeerOp::Endpoint(*addr))],
                })
                .collect(),
        }
    }
}

/// One peer's lines: its `public_key` and what follows, until the next `public_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerRequest {
    public_key: Key,
    /// The line of `public_key`.
    line: u32,
    /// The operations in order, each with its line. `protocol_version=1` changes nothing and
    /// is not kept, nor is anything after `remove` (wireguard-go configures a placeholder
    /// from there on).
    ops: Vec<(u32, PeerOp)>,
}

/// One peer line that may change something.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerOp {
    /// `update_only=true`: a peer this request created is removed again.
    UpdateOnly,
    /// `remove=true`.
    Remove,
    /// `preshared_key`; `None` for the all-zero key.
    PresharedKey(Option<Key>),
    Endpoint(SocketAddr),
    PersistentKeepalive(u16),
    /// `replace_allowed_ips=true`: the peer's prefixes are removed.
    ReplaceAllowedIps,
    /// `allowed_ip=PREFIX`, host bits cleared.
    AddAllowedIp(IpNet),
    /// `allowed_ip=-PREFIX`, host bits cleared: removed if this peer has it.
    RemoveAllowedIp(IpNet),
}

/// The device keys, as the protocol spells them.
const DEVICE_KEYS: &[&str] = &["private_key", "listen_port", "fwmark", "replace_peers"];

/// The peer keys other than `public_key`, as the protocol spells them.
const PEER_KEYS: &[&str] = &[
    "update_only",
    "remove",
    "preshared_key",
    "endpoint",
    "persistent_keepalive_interval",
    "replace_allowed_ips",
    "allowed_ip",
    "protocol_version",
];

/// `key`, if it is one of `keys`, as a name an error may show.
fn known(keys: &[&'static str], key: &str) -> Option<&'static str> {
    keys.iter().copied().find(|known| *known == key)
}

/// Said of a value that is refused.
const NOT_SHOWN: &str = "the value is not shown";

/// Parses the lines of a `set` request: those after `set=1`, up to an empty line or the end
/// of `body` (what follows an empty line is not read). Lines end in `\n` or `\r\n`.
///
/// # Errors
/// The first line that is not a line of the protocol, with wireguard-go's code for it
/// (table in the module's tests): EPROTO for a line without `=`; EINVAL for an unknown key,
/// a key in the wrong place or a value that does not parse; EIO past [`MAX_LINE_BYTES`] or
/// [`MAX_REQUEST_BYTES`]. No error quotes the request.
pub fn parse_set(body: &str) -> Result<SetRequest, UapiError> {
    parse_set_bytes(body.as_bytes())
}

/// [`parse_set`] on bytes as read from a socket. A line that is not UTF-8 is refused as
/// wireguard-go refuses it (no key or value it accepts holds such a byte): EPROTO without
/// `=`, else EINVAL.
///
/// # Errors
/// As [`parse_set`].
pub fn parse_set_bytes(body: &[u8]) -> Result<SetRequest, UapiError> {
    let mut request = SetRequest {
        device: DeviceRequest::default(),
        peers: Vec::new(),
    };
    let mut read = 0usize;
    for (index, raw) in body.split(|&byte| byte == b'\n').enumerate() {
        let line = index + 1;
        read = read.saturating_add(raw.len() + 1);
        if raw.len() > MAX_LINE_BYTES {
            return Err(UapiError::new(
                ErrorCode::Io,
                line,
                "",
                format!(
                    "longer than {MAX_LINE_BYTES} bytes, the limit for a line (MAX_LINE_BYTES); \
                     the line is not shown"
                ),
            ));
        }
        if read > MAX_REQUEST_BYTES {
            return Err(UapiError::new(
                ErrorCode::Io,
                line,
                "",
                format!(
                    "the request goes past {MAX_REQUEST_BYTES} bytes, the limit for a request \
                     (MAX_REQUEST_BYTES)"
                ),
            ));
        }
        // As Go's line scanner, which wireguard-go reads with: one `\r` before the newline is
        // not part of the line.
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            break;
        }
        // A byte that is not UTF-8 becomes U+FFFD, which no key and no accepted value holds:
        // the line is refused with the code its bytes would get from wireguard-go.
        request.add_line(line, &String::from_utf8_lossy(raw))?;
    }
    Ok(request)
}

impl SetRequest {
    fn add_line(&mut self, line: usize, text: &str) -> Result<(), UapiError> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(UapiError::new(
                ErrorCode::Protocol,
                line,
                "",
                "not `key=value`; the line is not shown",
            ));
        };
        if key == "public_key" {
            let public_key =
                Key::from_hex(value).ok_or_else(|| invalid(line, "public_key", NOT_A_KEY))?;
            self.peers.push(PeerRequest {
                public_key,
                line: line_number(line),
                ops: Vec::new(),
            });
            return Ok(());
        }
        match self.peers.last_mut() {
            None => self.device.add_line(line, key, value),
            Some(peer) => peer.add_line(line, key, value),
        }
    }
}

impl DeviceRequest {
    fn add_line(&mut self, line: usize, key: &str, value: &str) -> Result<(), UapiError> {
        match key {
            "private_key" => {
                let key =
                    Key::from_hex(value).ok_or_else(|| invalid(line, "private_key", NOT_A_KEY))?;
                // wireguard-go's FromMaybeZeroHex: zero removes the key; any other is clamped.
                let key = (!key.is_zero()).then(|| clamped(key));
                if self.private_keys.last() != Some(&key) {
                    self.private_keys.push(key);
                }
            }
            "listen_port" => {
                let port = decimal(value, u16::MAX.into())
                    .ok_or_else(|| invalid(line, "listen_port", not_a_number(u16::MAX.into())))?;
                self.listen_port = u16::try_from(port).ok();
            }
            "fwmark" => {
                let mark = decimal(value, u32::MAX.into())
                    .ok_or_else(|| invalid(line, "fwmark", not_a_number(u32::MAX.into())))?;
                self.fwmark = u32::try_from(mark).ok();
            }
            "replace_peers" => {
                only_true(line, "replace_peers", value)?;
                self.replace_peers = true;
            }
            _ => {
                return Err(match known(PEER_KEYS, key) {
                    Some(name) => invalid(line, name, "a peer's key before any public_key line"),
                    None => invalid(line, "", "unknown device key; the line is not shown"),
                })
            }
        }
        Ok(())
    }
}

impl PeerRequest {
    fn add_line(&mut self, line: usize, key: &str, value: &str) -> Result<(), UapiError> {
        let op = match key {
            "update_only" => {
                only_true(line, "update_only", value)?;
                PeerOp::UpdateOnly
            }
            "remove" => {
                only_true(line, "remove", value)?;
                PeerOp::Remove
            }
            "preshared_key" => {
                let key = Key::from_hex(value)
                    .ok_or_else(|| invalid(line, "preshared_key", NOT_A_KEY))?;
                PeerOp::PresharedKey((!key.is_zero()).then_some(key))
            }
            "endpoint" => PeerOp::Endpoint(value.parse().map_err(|_| {
                invalid(
                    line,
                    "endpoint",
                    format!(
                        "not IP:PORT or [IPv6]:PORT, an address and a port (a zone only as a \
                         number); {NOT_SHOWN}"
                    ),
                )
            })?),
            "persistent_keepalive_interval" => {
                let seconds = decimal(value, u16::MAX.into()).ok_or_else(|| {
                    invalid(
                        line,
                        "persistent_keepalive_interval",
                        not_a_number(u16::MAX.into()),
                    )
                })?;
                PeerOp::PersistentKeepalive(u16::try_from(seconds).unwrap_or(u16::MAX))
            }
            "replace_allowed_ips" => {
                only_true(line, "replace_allowed_ips", value)?;
                PeerOp::ReplaceAllowedIps
            }
            "allowed_ip" => {
                let bad = || {
                    invalid(
                        line,
                        "allowed_ip",
                        format!(
                            "not ADDRESS/BITS, a prefix (or -ADDRESS/BITS to remove one); \
                             {NOT_SHOWN}"
                        ),
                    )
                };
                match value.strip_prefix('-') {
                    Some(prefix) => PeerOp::RemoveAllowedIp(parse_prefix(prefix).ok_or_else(bad)?),
                    None => PeerOp::AddAllowedIp(parse_prefix(value).ok_or_else(bad)?),
                }
            }
            "protocol_version" => {
                if value != "1" {
                    return Err(invalid(
                        line,
                        "protocol_version",
                        format!("only version 1 exists; {NOT_SHOWN}"),
                    ));
                }
                return Ok(());
            }
            _ => {
                return Err(match known(DEVICE_KEYS, key) {
                    Some(name) => invalid(
                        line,
                        name,
                        "a device key after a public_key line: device keys come first",
                    ),
                    None => invalid(line, "", "unknown peer key; the line is not shown"),
                })
            }
        };
        if !matches!(self.ops.last(), Some((_, PeerOp::Remove))) {
            self.ops.push((line_number(line), op));
        }
        Ok(())
    }
}

/// Said of a key that does not parse.
const NOT_A_KEY: &str = "not a key (64 hex digits); the value is not shown";

pub(super) fn invalid(line: usize, field: &'static str, reason: impl Into<String>) -> UapiError {
    UapiError::new(ErrorCode::Invalid, line, field, reason)
}

fn not_a_number(max: u64) -> String {
    format!("not a decimal number from 0 to {max}; {NOT_SHOWN}")
}

/// A line number as kept in a request: [`MAX_REQUEST_BYTES`] holds fewer lines than `u32`
/// counts.
fn line_number(line: usize) -> u32 {
    u32::try_from(line).unwrap_or(u32::MAX)
}

/// wireguard-go accepts `true` and nothing else for its flags.
fn only_true(line: usize, field: &'static str, value: &str) -> Result<(), UapiError> {
    if value == "true" {
        Ok(())
    } else {
        Err(invalid(
            line,
            field,
            format!("only `true` is accepted; {NOT_SHOWN}"),
        ))
    }
}

/// A decimal number at most `max`, as Go's `strconv.ParseUint(text, 10, bits)` takes it:
/// digits only (leading zeros allowed; no sign, space or `_`).
fn decimal(text: &str, max: u64) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.bytes()
        .try_fold(0u64, |number, digit| {
            number.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        })
        .filter(|number| *number <= max)
}

/// A prefix as Go's `netip.ParsePrefix` takes it (an address, `/`, and a length in decimal
/// without a sign or a leading zero; no bare address, unlike wg-quick's AllowedIPs), with its
/// host bits cleared as wireguard-go's table stores it.
fn parse_prefix(text: &str) -> Option<IpNet> {
    let (address, bits) = text.rsplit_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    if bits.len() > 1 && !bits.starts_with(|c: char| matches!(c, '1'..='9')) {
        return None;
    }
    let bits = u8::try_from(decimal(bits, 128)?).ok()?;
    IpNet::new(address, bits).ok().map(|net| net.trunc())
}

/// A private key as X25519 uses it, as wireguard-go stores a new one (and so shows it in
/// `get`).
fn clamped(mut key: Key) -> Key {
    key.0[0] &= 248;
    key.0[31] = (key.0[31] & 127) | 64;
    key
}

/// The all-zero key: what `get` shows for a peer without a preshared key.
const ZERO_KEY: Key = Key([0; 32]);

/// A model of a userspace WireGuard device's configuration, as wireguard-go holds it: the
/// private key, listen port, fwmark and peers, each with its preshared key, endpoint,
/// persistent keepalive interval and AllowedIPs prefixes. It changes only by
/// [`UapiState::apply`], which keeps its rules: one peer per public key, none with this
/// device's own, each prefix with one peer, within [`MAX_PEERS`] and [`MAX_ALLOWED_IPS`].
///
/// Two states are equal when `get` would show the same configuration. Its `Debug` shows
/// counts, no key.
#[derive(Clone)]
pub struct UapiState {
    private_key: Option<Key>,
    /// The public key a peer may not have. With a private key, its public key. Without one,
    /// what wireguard-go then holds: zeros until a private key was ever set, then the public
    /// key of the all-zero key.
    own_public: [u8; 32],
    /// 0: any port.
    listen_port: u16,
    /// 0: none.
    fwmark: u32,
    /// The peers by number, which is their order of creation.
    peers: BTreeMap<u64, UapiPeer>,
    /// Each peer's number by its public key.
    numbers: HashMap<[u8; 32], u64>,
    /// Each prefix's peer and its number in that peer's list.
    owners: HashMap<IpNet, (u64, u64)>,
    /// The next number for a peer or for a prefix's place in a peer's list: they only grow,
    /// so a map ordered by them keeps the order things were added in.
    next_number: u64,
}

#[derive(Clone)]
struct UapiPeer {
    public_key: Key,
    preshared_key: Option<Key>,
    endpoint: Option<SocketAddr>,
    /// Seconds; 0: off.
    persistent_keepalive: u16,
    /// The prefixes in the order `get` lists them: by when each was last given to this peer.
    allowed_ips: BTreeMap<u64, IpNet>,
}

impl UapiPeer {
    fn config(&self) -> PeerConfig {
        PeerConfig {
            public_key: self.public_key.clone(),
            preshared_key: self.preshared_key.clone(),
            endpoint: self.endpoint.map(Endpoint::Addr),
            allowed_ips: self.allowed_ips.values().copied().collect(),
            persistent_keepalive: (self.persistent_keepalive != 0)
                .then_some(self.persistent_keepalive),
        }
    }
}

/// What [`UapiState::apply`] changed: what a live peer table must do to follow.
///
/// A peer that a request removed and created again (`remove=true`, then its `public_key`
/// again) is in both [`Changes::removed`] and [`Changes::added`]: as in wireguard-go, it is a
/// new peer, with new sessions and counters. **Unlike wireguard-go**, `replace_peers=true`
/// removes only the peers the request does not list again: one listed again is the same
/// peer, in [`Changes::changed`] if anything about it changed (and in no list if nothing
/// did), so a live table keeps its sessions unless its keys changed
/// ([`PeerChange::restart_session`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Changes {
    /// The private key changed (or was removed): every peer in [`Changes::changed`] must
    /// restart its sessions, as wireguard-go expires every peer's keypairs.
    pub private_key: bool,
    /// The listen port changed: rebind (and write the bound port back with
    /// [`UapiState::record_bound_port`] when it was 0).
    pub listen_port: bool,
    /// The fwmark changed: set it on the socket.
    pub fwmark: bool,
    /// The AllowedIPs table changed (a prefix added, removed or moved, a peer with prefixes
    /// added or removed): rebuild the routing table.
    pub allowed_ips: bool,
    /// Peers that are new, in the state's order. Their configuration: [`UapiState::peer`].
    /// One with a persistent keepalive gets a keepalive at once, as wireguard-go sends it.
    pub added: Vec<Key>,
    /// Peers that were removed, in their former order.
    pub removed: Vec<Key>,
    /// Peers that stayed and changed, in the state's order.
    pub changed: Vec<PeerChange>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// How a peer that stayed changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerChange {
    /// The peer.
    pub public_key: Key,
    /// Its sessions must be dropped and a handshake made again: its preshared key or the
    /// device's private key changed.
    pub restart_session: bool,
    /// Its preshared key changed.
    pub preshared_key: bool,
    /// Its endpoint was set (to another address).
    pub endpoint: bool,
    /// Its persistent keepalive interval changed.
    pub persistent_keepalive: bool,
    /// The interval went from 0 to a number of seconds: wireguard-go sends a keepalive at
    /// once.
    pub keepalive_turned_on: bool,
    /// Its AllowedIPs prefixes changed (added, removed, or taken by another peer).
    pub allowed_ips: bool,
}

/// Bytes a [`UapiState`] holds for `peers` peers with `prefixes` prefixes in all, about: each
/// peer in the ordered map and the key index, each prefix in its peer's list and the owner
/// index (hash tables counted at twice their entries, for their spare room).
pub(super) fn state_bytes(peers: usize, prefixes: usize) -> usize {
    use std::mem::size_of;
    let per_peer = 2 * size_of::<(u64, UapiPeer)>() + 2 * size_of::<([u8; 32], u64)>();
    let per_prefix = 2 * size_of::<(u64, IpNet)>() + 2 * size_of::<(IpNet, (u64, u64))>();
    peers.saturating_mul(per_peer) + prefixes.saturating_mul(per_prefix)
}

impl Default for UapiState {
    fn default() -> Self {
        UapiState::new()
    }
}

impl UapiState {
    /// A new device's configuration: no key, any port, no fwmark, no peers.
    pub fn new() -> UapiState {
        UapiState {
            private_key: None,
            own_public: [0; 32],
            listen_port: 0,
            fwmark: 0,
            peers: BTreeMap::new(),
            numbers: HashMap::new(),
            owners: HashMap::new(),
            next_number: 0,
        }
    }

    /// The configuration a wg-quick file gives a device, as if `set` had written it:
    /// its private key (clamped), listen port (0 when the file names none) and peers in the
    /// file's order, a prefix named twice belonging to the later peer (as in WireGuard).
    ///
    /// # Errors
    /// An endpoint still given as a host name ([`WgConfig::resolve`] first), or a file past
    /// the limits (EINVAL).
    pub fn from_config(config: &WgConfig) -> Result<UapiState, UapiError> {
        let private = &config.interface.private_key;
        let mut request = SetRequest {
            device: DeviceRequest {
                private_keys: vec![(!private.is_zero()).then(|| clamped(private.clone()))],
                listen_port: Some(config.interface.listen_port.unwrap_or(0)),
                fwmark: None,
                replace_peers: true,
            },
            peers: Vec::with_capacity(config.peers.len()),
        };
        for (index, peer) in config.peers.iter().enumerate() {
            let mut ops = vec![(0, PeerOp::PresharedKey(peer.preshared_key.clone()))];
            match &peer.endpoint {
                None => {}
                Some(endpoint) => match endpoint.addr() {
                    Some(addr) => ops.push((0, PeerOp::Endpoint(addr))),
                    None => {
                        return Err(invalid(
                            0,
                            "endpoint",
                            format!("peer {}: a host name not resolved yet", index + 1),
                        ))
                    }
                },
            }
            ops.push((
                0,
                PeerOp::PersistentKeepalive(peer.persistent_keepalive.unwrap_or(0)),
            ));
            ops.extend(
                peer.allowed_ips
                    .iter()
                    .map(|net| (0, PeerOp::AddAllowedIp(net.trunc()))),
            );
            request.peers.push(PeerRequest {
                public_key: peer.public_key.clone(),
                line: 0,
                ops,
            });
        }
        let mut state = UapiState::new();
        state.apply(&request)?;
        Ok(state)
    }

    /// The private key (clamped), if any.
    pub fn private_key(&self) -> Option<&Key> {
        self.private_key.as_ref()
    }

    /// The listen port; 0: any (until the caller records the port it bound).
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// The fwmark; 0: none.
    pub fn fwmark(&self) -> u32 {
        self.fwmark
    }

    /// How many peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// How many AllowedIPs prefixes, over all peers.
    pub fn allowed_ip_count(&self) -> usize {
        self.owners.len()
    }

    /// The peers in order of creation, as the wg-quick model's peers (endpoints are
    /// addresses; prefixes in the order `get` lists them).
    pub fn peers(&self) -> impl Iterator<Item = PeerConfig> + '_ {
        self.peers.values().map(UapiPeer::config)
    }

    /// The peer with `public_key`, if any.
    pub fn peer(&self, public_key: &Key) -> Option<PeerConfig> {
        let number = self.numbers.get(&public_key.0)?;
        self.peers.get(number).map(UapiPeer::config)
    }

    /// Records the port the device bound when its listen port is 0, as wireguard-go does:
    /// `get` then shows it, and a later request without `listen_port` keeps it.
    pub fn record_bound_port(&mut self, port: u16) {
        self.listen_port = port;
    }

    /// Applies `request`, as wireguard-go would have applied its lines in order, and says
    /// what changed.
    ///
    /// # Errors
    /// A peer past [`MAX_PEERS`] (at its `public_key` line) or a prefix past
    /// [`MAX_ALLOWED_IPS`] (at its `allowed_ip` line), both EINVAL. A request that fails
    /// changes nothing.
    pub fn apply(&mut self, request: &SetRequest) -> Result<Changes, UapiError> {
        // A copy takes the request, so that a refusal half-way leaves this state as it was.
        // At the limits it is some tens of milliseconds: a configuration change, not a packet.
        let mut next = self.clone();
        let mut removed = HashSet::new();
        next.run(request, &mut removed)?;
        let changes = self.changes_to(&next, &removed);
        *self = next;
        Ok(changes)
    }

    /// The request's lines in order, keys that were removed at any point noted in `removed`.
    fn run(
        &mut self,
        request: &SetRequest,
        removed: &mut HashSet<[u8; 32]>,
    ) -> Result<(), UapiError> {
        let device = &request.device;
        for key in &device.private_keys {
            self.set_private_key(key.as_ref(), removed);
        }
        if let Some(port) = device.listen_port {
            self.listen_port = port;
        }
        if let Some(mark) = device.fwmark {
            self.fwmark = mark;
        }
        if device.replace_peers {
            // Not noted as removed: a peer listed again after it is the same peer, kept
            // (`Changes` says how it changed), where wireguard-go makes it anew.
            self.peers.clear();
            self.numbers.clear();
            self.owners.clear();
        }
        for peer in &request.peers {
            self.run_peer(peer, removed)?;
        }
        Ok(())
    }

    /// wireguard-go's `SetPrivateKey`: the same key again changes nothing; a new one (or
    /// none) removes the peer that has its public key.
    fn set_private_key(&mut self, key: Option<&Key>, removed: &mut HashSet<[u8; 32]>) {
        if self.private_key.as_ref() == key {
            return;
        }
        let public = key.unwrap_or(&ZERO_KEY).public_key();
        if let Some(&number) = self.numbers.get(&public.0) {
            self.remove_peer(number, removed);
        }
        self.private_key = key.cloned();
        self.own_public = public.0;
    }

    fn run_peer(
        &mut self,
        request: &PeerRequest,
        removed: &mut HashSet<[u8; 32]>,
    ) -> Result<(), UapiError> {
        // A peer with this device's own key is a placeholder in wireguard-go: its lines were
        // checked when parsed, and change nothing.
        if request.public_key.0 == self.own_public {
            return Ok(());
        }
        let (number, created) = match self.numbers.get(&request.public_key.0) {
            Some(&number) => (number, false),
            None => {
                if self.peers.len() >= MAX_PEERS {
                    return Err(invalid(
                        request.line as usize,
                        "public_key",
                        format!("a peer past {MAX_PEERS}, the limit (MAX_PEERS)"),
                    ));
                }
                (self.create_peer(&request.public_key), true)
            }
        };
        for (line, op) in &request.ops {
            match op {
                PeerOp::UpdateOnly if created => {
                    self.remove_peer(number, removed);
                    return Ok(());
                }
                PeerOp::UpdateOnly => {}
                PeerOp::Remove => {
                    self.remove_peer(number, removed);
                    return Ok(());
                }
                PeerOp::PresharedKey(key) => {
                    if let Some(peer) = self.peers.get_mut(&number) {
                        peer.preshared_key = key.clone();
                    }
                }
                PeerOp::Endpoint(endpoint) => {
                    if let Some(peer) = self.peers.get_mut(&number) {
                        peer.endpoint = Some(*endpoint);
                    }
                }
                PeerOp::PersistentKeepalive(seconds) => {
                    if let Some(peer) = self.peers.get_mut(&number) {
                        peer.persistent_keepalive = *seconds;
                    }
                }
                PeerOp::ReplaceAllowedIps => {
                    if let Some(peer) = self.peers.get_mut(&number) {
                        for net in std::mem::take(&mut peer.allowed_ips).values() {
                            self.owners.remove(net);
                        }
                    }
                }
                PeerOp::AddAllowedIp(net) => self.give_prefix(number, *net, *line)?,
                PeerOp::RemoveAllowedIp(net) => {
                    if let Some(&(owner, place)) = self.owners.get(net) {
                        if owner == number {
                            self.owners.remove(net);
                            if let Some(peer) = self.peers.get_mut(&number) {
                                peer.allowed_ips.remove(&place);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn take_number(&mut self) -> u64 {
        let number = self.next_number;
        self.next_number += 1;
        number
    }

    fn create_peer(&mut self, public_key: &Key) -> u64 {
        let number = self.take_number();
        self.peers.insert(
            number,
            UapiPeer {
                public_key: public_key.clone(),
                preshared_key: None,
                endpoint: None,
                persistent_keepalive: 0,
                allowed_ips: BTreeMap::new(),
            },
        );
        self.numbers.insert(public_key.0, number);
        number
    }

    fn remove_peer(&mut self, number: u64, removed: &mut HashSet<[u8; 32]>) {
        if let Some(peer) = self.peers.remove(&number) {
            self.numbers.remove(&peer.public_key.0);
            for net in peer.allowed_ips.values() {
                self.owners.remove(net);
            }
            removed.insert(peer.public_key.0);
        }
    }

    /// wireguard-go's `AllowedIPs.Insert`: the prefix leaves whichever peer had it (this one
    /// included) and goes to the end of this peer's list.
    fn give_prefix(&mut self, number: u64, net: IpNet, line: u32) -> Result<(), UapiError> {
        match self.owners.get(&net) {
            Some(&(owner, place)) => {
                if let Some(peer) = self.peers.get_mut(&owner) {
                    peer.allowed_ips.remove(&place);
                }
            }
            None if self.owners.len() >= MAX_ALLOWED_IPS => {
                return Err(invalid(
                    line as usize,
                    "allowed_ip",
                    format!("a prefix past {MAX_ALLOWED_IPS} in all, the limit (MAX_ALLOWED_IPS)"),
                ));
            }
            None => {}
        }
        let place = self.take_number();
        if let Some(peer) = self.peers.get_mut(&number) {
            peer.allowed_ips.insert(place, net);
        }
        self.owners.insert(net, (number, place));
        Ok(())
    }

    /// What changed from `self` to `next`, `removed` holding every key removed on the way
    /// (by `remove=true`, `update_only=true` or a private key; not by `replace_peers`).
    /// Peers are matched by public key: a peer removed on the way and made again is new.
    fn changes_to(&self, next: &UapiState, removed: &HashSet<[u8; 32]>) -> Changes {
        let private_key = self.private_key != next.private_key;
        // A prefix's owner by key, before and after.
        let owner_before = |net: &IpNet| {
            self.owners
                .get(net)
                .map(|&(owner, _)| &self.peers[&owner].public_key.0)
        };
        let owner_after = |net: &IpNet| {
            next.owners
                .get(net)
                .map(|&(owner, _)| &next.peers[&owner].public_key.0)
        };
        let kept = |key: &[u8; 32]| !removed.contains(key) && next.numbers.contains_key(key);
        let mut changes = Changes {
            private_key,
            listen_port: self.listen_port != next.listen_port,
            fwmark: self.fwmark != next.fwmark,
            allowed_ips: self.owners.len() != next.owners.len()
                || next.owners.keys().any(|net| {
                    owner_before(net) != owner_after(net)
                        || owner_after(net).is_some_and(|key| !kept(key))
                }),
            ..Changes::default()
        };
        changes.removed = self
            .peers
            .values()
            .filter(|peer| !kept(&peer.public_key.0))
            .map(|peer| peer.public_key.clone())
            .collect();
        for peer in next.peers.values() {
            let key = &peer.public_key.0;
            let before = (!removed.contains(key))
                .then(|| self.numbers.get(key).map(|number| &self.peers[number]))
                .flatten();
            let Some(before) = before else {
                changes.added.push(peer.public_key.clone());
                continue;
            };
            let preshared_key = before.preshared_key != peer.preshared_key;
            let endpoint = before.endpoint != peer.endpoint;
            let persistent_keepalive = before.persistent_keepalive != peer.persistent_keepalive;
            let allowed_ips = before.allowed_ips.len() != peer.allowed_ips.len()
                || peer
                    .allowed_ips
                    .values()
                    .any(|net| owner_before(net) != Some(key));
            if private_key || preshared_key || endpoint || persistent_keepalive || allowed_ips {
                changes.changed.push(PeerChange {
                    public_key: peer.public_key.clone(),
                    restart_session: private_key || preshared_key,
                    preshared_key,
                    endpoint,
                    persistent_keepalive,
                    keepalive_turned_on: before.persistent_keepalive == 0
                        && peer.persistent_keepalive != 0,
                    allowed_ips,
                });
            }
        }
        changes
    }
}

impl PartialEq for UapiState {
    fn eq(&self, other: &Self) -> bool {
        let same_peer = |a: &UapiPeer, b: &UapiPeer| {
            a.public_key == b.public_key
                && a.preshared_key == b.preshared_key
                && a.endpoint == b.endpoint
                && a.persistent_keepalive == b.persistent_keepalive
                && a.allowed_ips.values().eq(b.allowed_ips.values())
        };
        self.private_key == other.private_key
            && self.listen_port == other.listen_port
            && self.fwmark == other.fwmark
            && self.peers.len() == other.peers.len()
            && self
                .peers
                .values()
                .zip(other.peers.values())
                .all(|(a, b)| same_peer(a, b))
    }
}

impl Eq for UapiState {}

impl fmt::Debug for UapiState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UapiState")
            .field("private_key", &self.private_key.as_ref().map(|_| "set"))
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("peers", &self.peers.len())
            .field("allowed_ips", &self.owners.len())
            .finish()
    }
}

/// A peer's live figures for `get`, from the tunnel that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerFigures {
    /// The peer.
    pub public_key: Key,
    /// When its last handshake completed; `None`: never.
    pub last_handshake: Option<SystemTime>,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Where it is now, when its authenticated datagrams moved it (roaming) from the
    /// configured endpoint; `None`: the configured one.
    pub endpoint: Option<SocketAddr>,
}

impl PeerFigures {
    /// Figures of a peer that has done nothing yet.
    pub fn new(public_key: Key) -> PeerFigures {
        PeerFigures {
            public_key,
            last_handshake: None,
            tx_bytes: 0,
            rx_bytes: 0,
            endpoint: None,
        }
    }
}

/// The lines of a `get` answer that a `set` takes back: the configuration, without the live
/// figures (handshake time, bytes) and the status. With `replace_peers=true` before them, a
/// `set` of these restores the configuration that `get` described.
pub fn configuration_lines(get: &str) -> String {
    const FIGURES: [&str; 5] = [
        "last_handshake_time_sec=",
        "last_handshake_time_nsec=",
        "tx_bytes=",
        "rx_bytes=",
        "errno=",
    ];
    get.lines()
        .filter(|line| !line.is_empty() && !FIGURES.iter().any(|f| line.starts_with(f)))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// The answer to `get=1`, as wireguard-go's `IpcGetOperation` and `IpcHandle` write it:
/// `private_key` (when set), `listen_port` and `fwmark` (when not 0), then for each peer
/// `public_key`, `preshared_key` (zeros for none), `protocol_version=1`, `endpoint` (when
/// known), `last_handshake_time_sec`, `last_handshake_time_nsec`, `tx_bytes`, `rx_bytes`,
/// `persistent_keepalive_interval` and an `allowed_ip` line per prefix; then `errno=0` and
/// an empty line.
///
/// A peer's figures come from `live`, matched by public key; a peer missing there shows
/// zeros, as a peer that has done nothing yet.
pub fn format_get(state: &UapiState, live: &[PeerFigures]) -> String {
    let figures: HashMap<&[u8; 32], &PeerFigures> = live
        .iter()
        .map(|figures| (&figures.public_key.0, figures))
        .collect();
    // About what the lines take, so that a large answer is not copied as it grows.
    let mut out = String::with_capacity(256 + 400 * state.peers.len() + 56 * state.owners.len());
    let key_line = |out: &mut String, name: &str, key: &Key| {
        out.push_str(name);
        out.push('=');
        key.write_hex(out);
        out.push('\n');
    };
    // Writing to a String cannot fail: the `fmt::Result`s below are always Ok.
    if let Some(key) = &state.private_key {
        key_line(&mut out, "private_key", key);
    }
    if state.listen_port != 0 {
        let _ = writeln!(out, "listen_port={}", state.listen_port);
    }
    if state.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", state.fwmark);
    }
    for peer in state.peers.values() {
        let live = figures.get(&peer.public_key.0);
        key_line(&mut out, "public_key", &peer.public_key);
        key_line(
            &mut out,
            "preshared_key",
            peer.preshared_key.as_ref().unwrap_or(&ZERO_KEY),
        );
        out.push_str("protocol_version=1\n");
        if let Some(endpoint) = live.and_then(|f| f.endpoint).or(peer.endpoint) {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        let since_epoch = live
            .and_then(|f| f.last_handshake)
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(out, "last_handshake_time_sec={}", since_epoch.as_secs());
        let _ = writeln!(
            out,
            "last_handshake_time_nsec={}",
            since_epoch.subsec_nanos()
        );
        let _ = writeln!(out, "tx_bytes={}", live.map_or(0, |f| f.tx_bytes));
        let _ = writeln!(out, "rx_bytes={}", live.map_or(0, |f| f.rx_bytes));
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive
        );
        for net in peer.allowed_ips.values() {
            let _ = writeln!(out, "allowed_ip={net}");
        }
    }
    out.push_str(&format_status(0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // wireguard-go's errors, read from device/uapi.go (IpcSetOperation, handleDeviceLine,
    // handlePublicKeyLine, handlePeerLine, IpcGetOperation, IpcHandle) and ipc/uapi_unix.go;
    // codes as on Linux (EPROTO is 100, EADDRINUSE 48 on macOS and iOS, where `errno()`
    // follows the platform as wireguard-go does):
    //
    // | wireguard-go                        | case                                           | code        | here                          |
    // |-------------------------------------|------------------------------------------------|-------------|-------------------------------|
    // | IpcSetOperation                     | a line without `=`                             | EPROTO -71  | the same                      |
    // | IpcSetOperation (scanner.Err)       | a line past 64 KiB (bufio.ErrTooLong)          | EIO -5      | EIO past MAX_LINE_BYTES (4 KiB) |
    // | handleDeviceLine private_key        | not 64 hex digits                              | EINVAL -22  | the same                      |
    // | handleDeviceLine listen_port        | not a decimal 0..=65535                        | EINVAL      | the same                      |
    // | handleDeviceLine listen_port        | BindUpdate fails (the port is taken)           | EADDRINUSE -98 | the binder's (PortInUse)   |
    // | handleDeviceLine fwmark             | not a decimal 0..=4294967295 (empty included)  | EINVAL      | the same                      |
    // | handleDeviceLine fwmark             | BindSetMark fails                              | EADDRINUSE  | the binder's (PortInUse)      |
    // | handleDeviceLine replace_peers      | anything but `true`                            | EINVAL      | the same                      |
    // | handleDeviceLine default            | an unknown key, or a peer key before public_key | EINVAL     | the same                      |
    // | handlePublicKeyLine                 | not 64 hex digits                              | EINVAL      | the same                      |
    // | handlePublicKeyLine (NewPeer)       | a peer past MaxPeers (65,536); device closed   | EINVAL      | the same, from apply          |
    // | handlePeerLine update_only          | anything but `true`                            | EINVAL      | the same                      |
    // | handlePeerLine remove               | anything but `true`                            | EINVAL      | the same                      |
    // | handlePeerLine preshared_key        | not 64 hex digits                              | EINVAL      | the same                      |
    // | handlePeerLine endpoint             | not IP:port or [IPv6]:port (ParseAddrPort)     | EINVAL      | the same; a zone's name too   |
    // | handlePeerLine persistent_keepalive_interval | not a decimal 0..=65535               | EINVAL      | the same                      |
    // | handlePeerLine replace_allowed_ips  | anything but `true`                            | EINVAL      | the same                      |
    // | handlePeerLine allowed_ip           | not a prefix (ParsePrefix), after a `-` or not | EINVAL      | the same                      |
    // | handlePeerLine protocol_version     | anything but `1`                               | EINVAL      | the same                      |
    // | handlePeerLine default              | an unknown key, or a device key after public_key | EINVAL    | the same                      |
    // | IpcGetOperation                     | the answer cannot be written                   | EIO         | the socket's                  |
    // | IpcHandle                           | `get=1` and then anything but an empty line    | EINVAL      | the socket's                  |
    // | IpcHandle                           | an error of any other type                     | -55 (ENOANO) | none arises                  |
    // | IpcHandle                           | an unknown operation line                      | no errno: it closes the connection | the socket's |
    // | tunpipe only                        | a request past MAX_REQUEST_BYTES (40 MiB)      | EIO         |                               |
    // | tunpipe only                        | a prefix past MAX_ALLOWED_IPS (262,144)        | EINVAL      | from apply                    |
    //
    // Checked against wireguard-go v0.0.20220316 (the one on the test VM) over its socket,
    // every case of `every_error_has_wireguard_gos_code_and_names_its_line` plus the accepted
    // ones in `values_are_taken_as_wireguard_go_takes_them`. The old build differs only
    // where wireguard-go changed since: it accepts `/08` and `/+8` (Go before 1.22; today's
    // Go, which wireguard-go now needs, refuses them), refuses `allowed_ip=-PREFIX` (removal
    // came in 2025), and looks a zone's name up (here refused).

    /// Keys as text in the requests, and what no message may show any run of.
    const PRIVATE_HEX: &str = "7eea783177e034372a414dadd6caf030af15e3dd04a1f49a15d679d2de187996";
    const PRESHARED_HEX: &str = "d76acbebd41f683659a4f93bb0b936985d6769f921c9f3d08b8886b940d96c00";
    const PUBLIC_HEX: &str = "c4c8e984c5322c8184c72265b92360274f6a0ad9c72eb68e0b0e0cc4bf46ae04";
    const ZERO_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn key(hex: &str) -> Key {
        Key::from_hex(hex).unwrap()
    }

    fn hex(key: &Key) -> String {
        let mut text = String::new();
        key.write_hex(&mut text);
        text
    }

    /// A distinct peer key for each `n`.
    fn peer_key(n: u32) -> Key {
        let mut bytes = [0x5a; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        Key(bytes)
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn apply(state: &mut UapiState, body: &str) -> Changes {
        let request = parse_set(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        state
            .apply(&request)
            .unwrap_or_else(|e| panic!("{e}\n{body}"))
    }

    fn failure(state: &mut UapiState, body: &str) -> UapiError {
        match parse_set(body) {
            Err(e) => e,
            Ok(request) => state.apply(&request).expect_err(body),
        }
    }

    /// `None` when `shown` holds no 16-character run of any of `keys` (hex in either case,
    /// base64); else the run, for a failure message.
    fn leak(shown: &str, keys: &[&Key]) -> Option<String> {
        keys.iter().find_map(|key| {
            let hex = hex(key);
            [hex.clone(), hex.to_ascii_uppercase(), key.to_base64()]
                .into_iter()
                .find_map(|text| {
                    (0..=text.len() - 16)
                        .map(|start| &text[start..start + 16])
                        .find(|run| shown.contains(run))
                        .map(str::to_string)
                })
        })
    }

    #[test]
    fn every_error_has_wireguard_gos_code_and_names_its_line() {
        use ErrorCode::{Invalid, Io, Protocol};
        let (k, s) = (PRIVATE_HEX, PRESHARED_HEX);
        // A peer's line, after its public_key (line 1).
        let peer = |line: &str| format!("public_key={PUBLIC_HEX}\n{line}\n");
        // (what, request body, code, line, field)
        #[rustfmt::skip]
        let cases: Vec<(&str, String, ErrorCode, usize, &str)> = vec![
            ("no `=`", "listen_port\n".into(), Protocol, 1, ""),
            ("a space for `=`", format!("private_key {k}\n"), Protocol, 1, ""),
            ("not UTF-8, no `=`", "\u{FFFD}\n".into(), Protocol, 1, ""),
            ("a line past MAX_LINE_BYTES", format!("fwmark={}\n", "0".repeat(MAX_LINE_BYTES)), Io, 1, ""),
            ("private_key short", format!("private_key={}\n", &k[..63]), Invalid, 1, "private_key"),
            ("private_key long", format!("private_key={k}0\n"), Invalid, 1, "private_key"),
            ("private_key in base64", format!("private_key={}\n", key(k).to_base64()), Invalid, 1, "private_key"),
            ("private_key empty", "private_key=\n".into(), Invalid, 1, "private_key"),
            ("listen_port empty", "listen_port=\n".into(), Invalid, 1, "listen_port"),
            ("listen_port signed", "listen_port=+5\n".into(), Invalid, 1, "listen_port"),
            ("listen_port spaced", "listen_port= 5\n".into(), Invalid, 1, "listen_port"),
            ("listen_port 65536", "listen_port=65536\n".into(), Invalid, 1, "listen_port"),
            ("fwmark empty", "fwmark=\n".into(), Invalid, 1, "fwmark"),
            ("fwmark 2^32", "fwmark=4294967296\n".into(), Invalid, 1, "fwmark"),
            ("fwmark in hex", "fwmark=0x10\n".into(), Invalid, 1, "fwmark"),
            ("replace_peers false", "replace_peers=false\n".into(), Invalid, 1, "replace_peers"),
            ("replace_peers TRUE", "replace_peers=TRUE\n".into(), Invalid, 1, "replace_peers"),
            ("an unknown device key", "mtu=1420\n".into(), Invalid, 1, ""),
            ("a key with a space", "listen_port =5\n".into(), Invalid, 1, ""),
            ("an empty key", "=5\n".into(), Invalid, 1, ""),
            ("a key as a key's name", format!("{k}=1\n"), Invalid, 1, ""),
            ("a peer key before public_key", "endpoint=192.0.2.1:51820\n".into(), Invalid, 1, "endpoint"),
            ("public_key not hex", format!("public_key={}x\n", &PUBLIC_HEX[..63]), Invalid, 1, "public_key"),
            ("public_key empty", "public_key=\n".into(), Invalid, 1, "public_key"),
            ("a device key after public_key", peer("listen_port=5"), Invalid, 2, "listen_port"),
            ("private_key after public_key", peer(&format!("private_key={k}")), Invalid, 2, "private_key"),
            ("an unknown peer key", peer("allowed_ips=10.0.0.0/8"), Invalid, 2, ""),
            ("update_only false", peer("update_only=false"), Invalid, 2, "update_only"),
            ("remove 1", peer("remove=1"), Invalid, 2, "remove"),
            ("preshared_key short", peer(&format!("preshared_key={}", &s[1..])), Invalid, 2, "preshared_key"),
            ("endpoint without a port", peer("endpoint=192.0.2.1"), Invalid, 2, "endpoint"),
            ("endpoint IPv6 without brackets", peer("endpoint=::1:51820"), Invalid, 2, "endpoint"),
            ("endpoint IPv4 in brackets", peer("endpoint=[192.0.2.1]:51820"), Invalid, 2, "endpoint"),
            ("endpoint a name", peer("endpoint=localhost:51820"), Invalid, 2, "endpoint"),
            ("endpoint port 65536", peer("endpoint=192.0.2.1:65536"), Invalid, 2, "endpoint"),
            ("endpoint an octet 01", peer("endpoint=192.0.2.01:5"), Invalid, 2, "endpoint"),
            ("endpoint a zone's name", peer("endpoint=[fe80::1%eth0]:51820"), Invalid, 2, "endpoint"),
            ("keepalive 65536", peer("persistent_keepalive_interval=65536"), Invalid, 2, "persistent_keepalive_interval"),
            ("keepalive empty", peer("persistent_keepalive_interval="), Invalid, 2, "persistent_keepalive_interval"),
            ("replace_allowed_ips yes", peer("replace_allowed_ips=yes"), Invalid, 2, "replace_allowed_ips"),
            ("allowed_ip a bare address", peer("allowed_ip=10.0.0.1"), Invalid, 2, "allowed_ip"),
            ("allowed_ip /33", peer("allowed_ip=10.0.0.0/33"), Invalid, 2, "allowed_ip"),
            ("allowed_ip /129", peer("allowed_ip=fd00::/129"), Invalid, 2, "allowed_ip"),
            ("allowed_ip /08", peer("allowed_ip=10.0.0.0/08"), Invalid, 2, "allowed_ip"),
            ("allowed_ip /+8", peer("allowed_ip=10.0.0.0/+8"), Invalid, 2, "allowed_ip"),
            ("allowed_ip no bits", peer("allowed_ip=10.0.0.0/"), Invalid, 2, "allowed_ip"),
            ("allowed_ip a zone", peer("allowed_ip=fe80::%2/64"), Invalid, 2, "allowed_ip"),
            ("allowed_ip `-` alone", peer("allowed_ip=-"), Invalid, 2, "allowed_ip"),
            ("allowed_ip a key", peer(&format!("allowed_ip={s}")), Invalid, 2, "allowed_ip"),
            ("protocol_version 2", peer("protocol_version=2"), Invalid, 2, "protocol_version"),
            ("the first error is the answer", peer("remove=true\nendpoint=x\nfoo"), Invalid, 3, "endpoint"),
            ("lines after remove are checked", peer("remove=true\nallowed_ip=x"), Invalid, 3, "allowed_ip"),
            ("a line after a CR-LF line", format!("private_key={k}\r\nfwmark=x\r\n"), Invalid, 2, "fwmark"),
        ];
        let every_key = [&key(PRIVATE_HEX), &key(PRESHARED_HEX), &key(PUBLIC_HEX)];
        for (what, body, code, line, field) in cases {
            let e = failure(&mut UapiState::new(), &body);
            assert_eq!(
                (e.code(), e.line(), e.field()),
                (code, line, field),
                "{what}: {e}"
            );
            assert_eq!(e.errno(), code.errno());
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(leak(&shown, &every_key).is_none(), "{what}: {shown}");
            }
        }
        // The codes as wireguard-go writes them on Linux.
        if cfg!(target_os = "linux") {
            let codes = [ErrorCode::Io, ErrorCode::Protocol, ErrorCode::Invalid];
            assert_eq!(codes.map(ErrorCode::errno), [-5, -71, -22]);
            assert_eq!(ErrorCode::PortInUse.errno(), -98);
        }
        assert_eq!(ErrorCode::Unknown.errno(), -55);
        assert_eq!(format_status(-22), "errno=-22\n\n");
    }

    #[test]
    fn bytes_that_are_not_utf8_get_the_codes_wireguard_go_gives_them() {
        let cases: [(&[u8], ErrorCode); 4] = [
            (b"\xff\xfe\n", ErrorCode::Protocol),
            (b"listen_port=\xff\n", ErrorCode::Invalid),
            (b"listen\xff=1\n", ErrorCode::Invalid),
            (b"public_key=\xc3\xa9\n", ErrorCode::Invalid),
        ];
        for (body, code) in cases {
            assert_eq!(parse_set_bytes(body).unwrap_err().code(), code, "{body:?}");
        }
    }

    #[test]
    fn values_are_taken_as_wireguard_go_takes_them() {
        let mut state = UapiState::new();
        // Upper-case hex, leading zeros, CR-LF line ends, a request that ends at its blank
        // line (what follows is the next operation, not read here).
        let body = format!(
            "private_key={}\r\nlisten_port=00051820\r\nfwmark=4294967295\r\n\
             public_key={PUBLIC_HEX}\r\nprotocol_version=1\r\nendpoint=192.0.2.1:0051820\r\n\
             allowed_ip=10.1.2.3/24\nallowed_ip=::ffff:10.0.0.0/104\nallowed_ip=0.0.0.0/0\n\
             \nlisten_port=x\n",
            PRIVATE_HEX.to_ascii_uppercase()
        );
        apply(&mut state, &body);
        assert_eq!(state.listen_port(), 51820);
        assert_eq!(state.fwmark(), u32::MAX);
        // Clamped, as wireguard-go stores and shows it.
        assert_eq!(state.private_key(), Some(&clamped(key(PRIVATE_HEX))));
        assert_ne!(clamped(key(PRIVATE_HEX)), key(PRIVATE_HEX));
        let peer = state.peer(&key(PUBLIC_HEX)).unwrap();
        assert_eq!(
            peer.endpoint,
            Some(Endpoint::Addr("192.0.2.1:51820".parse().unwrap()))
        );
        // Host bits cleared; an IPv4-mapped prefix is an IPv6 one.
        assert_eq!(
            peer.allowed_ips,
            [
                net("10.1.2.0/24"),
                net("::ffff:10.0.0.0/104"),
                net("0.0.0.0/0")
            ]
        );
        // Endpoints as ParseAddrPort takes them, a zone as a number.
        for endpoint in [
            "[2001:db8::1]:51820",
            "[::ffff:192.0.2.1]:1",
            "[fe80::1%2]:51820",
            "192.0.2.1:0",
        ] {
            let body = format!("public_key={PUBLIC_HEX}\nendpoint={endpoint}\n");
            apply(&mut state, &body);
            let shown = format_get(&state, &[]);
            assert!(
                shown.contains(&format!("\nendpoint={endpoint}\n")),
                "{shown}"
            );
        }
        // `fwmark=0` clears the mark, and an empty request changes nothing.
        apply(&mut state, "fwmark=0\n");
        assert_eq!(state.fwmark(), 0);
        let before = state.clone();
        assert!(apply(&mut state, "").is_empty());
        assert!(apply(&mut state, "\nlisten_port=1\n").is_empty());
        assert_eq!(state, before);
    }

    #[test]
    fn wireguard_kit_settings_configure_and_update_a_device() {
        // What WireGuardKit's PacketTunnelSettingsGenerator hands to wgSetConfig.
        let (one, two) = (peer_key(1), peer_key(2));
        let body = format!(
            "private_key={PRIVATE_HEX}\nlisten_port=0\nreplace_peers=true\n\
             public_key={}\npreshared_key={PRESHARED_HEX}\nendpoint=192.0.2.1:51820\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
             allowed_ip=0.0.0.0/0\nallowed_ip=::/0\n\
             public_key={}\nendpoint=[2001:db8::1]:51820\npersistent_keepalive_interval=0\n\
             replace_allowed_ips=true\nallowed_ip=10.9.0.0/16\n",
            hex(&one),
            hex(&two)
        );
        let mut state = UapiState::new();
        let changes = apply(&mut state, &body);
        assert!(changes.private_key && changes.allowed_ips && !changes.listen_port);
        assert_eq!(
            (changes.added, changes.removed),
            (vec![one.clone(), two.clone()], vec![])
        );
        let peers: Vec<PeerConfig> = state.peers().collect();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].preshared_key, Some(key(PRESHARED_HEX)));
        assert_eq!(peers[0].persistent_keepalive, Some(25));
        assert_eq!(peers[0].allowed_ips, [net("0.0.0.0/0"), net("::/0")]);
        assert_eq!(peers[1].persistent_keepalive, None);
        assert_eq!(state.listen_port(), 0);

        // The same settings again (WireGuardKit's `update()`) change nothing: with
        // replace_peers, a peer listed again is kept (wireguard-go would make both anew).
        assert!(apply(&mut state, &body).is_empty());
        // With one peer's preshared key changed and the other left out, the first restarts
        // its session, keeps its place, and the second goes.
        let changes = apply(
            &mut state,
            &format!(
                "replace_peers=true\npublic_key={}\npreshared_key={}\n\
                 allowed_ip=0.0.0.0/0\nallowed_ip=::/0\n",
                hex(&one),
                hex(&peer_key(9))
            ),
        );
        assert_eq!(
            (changes.added, changes.removed),
            (vec![], vec![two.clone()])
        );
        assert_eq!(changes.changed.len(), 1);
        let change = &changes.changed[0];
        assert!(change.restart_session && change.preshared_key && !change.allowed_ips);
        assert!(change.endpoint && change.persistent_keepalive, "{change:?}");
        assert!(changes.allowed_ips, "two's prefix went");
        apply(&mut state, &body);

        // After a network change WireGuardKit sets the endpoints again, alone.
        let update = format!("public_key={}\nendpoint=192.0.2.9:51820\n", hex(&one));
        let changes = apply(&mut state, &update);
        assert_eq!(changes.changed.len(), 1);
        let change = &changes.changed[0];
        assert!(change.endpoint && !change.restart_session && !change.allowed_ips);
        assert!(changes.added.is_empty() && changes.removed.is_empty() && !changes.allowed_ips);

        // And what wgGetConfig hands back parses, as WireGuardKit reads it.
        let shown = format_get(&state, &[]);
        assert!(shown.starts_with(&format!(
            "private_key={}\n",
            hex(&clamped(key(PRIVATE_HEX)))
        )));
        assert!(
            shown.ends_with("allowed_ip=10.9.0.0/16\nerrno=0\n\n"),
            "{shown}"
        );
    }

    #[test]
    fn get_answers_in_wireguard_gos_order_and_spelling() {
        let mut state = UapiState::new();
        let (one, two) = (peer_key(1), peer_key(2));
        apply(
            &mut state,
            &format!(
                "private_key={PRIVATE_HEX}\nlisten_port=51820\n\
                 public_key={}\npreshared_key={PRESHARED_HEX}\nendpoint=192.0.2.1:51820\n\
                 persistent_keepalive_interval=25\nallowed_ip=10.0.0.0/8\nallowed_ip=fd00::/8\n\
                 public_key={}\n",
                hex(&one),
                hex(&two)
            ),
        );
        let mut figures = PeerFigures::new(one.clone());
        figures.last_handshake = Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789));
        figures.tx_bytes = 1000;
        figures.rx_bytes = 2000;
        // A peer not in the state is not shown.
        let stranger = PeerFigures::new(peer_key(9));
        let expected = format!(
            "private_key={}\nlisten_port=51820\n\
             public_key={}\npreshared_key={PRESHARED_HEX}\nprotocol_version=1\n\
             endpoint=192.0.2.1:51820\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=123456789\ntx_bytes=1000\nrx_bytes=2000\n\
             persistent_keepalive_interval=25\nallowed_ip=10.0.0.0/8\nallowed_ip=fd00::/8\n\
             public_key={}\npreshared_key={ZERO_HEX}\nprotocol_version=1\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
             persistent_keepalive_interval=0\n\
             errno=0\n\n",
            hex(&clamped(key(PRIVATE_HEX))),
            hex(&one),
            hex(&two)
        );
        assert_eq!(format_get(&state, &[stranger, figures.clone()]), expected);

        // A roamed peer shows where it is now; fwmark shows when set; a new device shows
        // nothing but its status.
        figures.endpoint = Some("198.51.100.7:4500".parse().unwrap());
        apply(&mut state, "fwmark=51820\n");
        let shown = format_get(&state, &[figures]);
        assert!(
            shown.contains("listen_port=51820\nfwmark=51820\npublic_key="),
            "{shown}"
        );
        assert!(shown.contains("\nendpoint=198.51.100.7:4500\n"), "{shown}");
        assert_eq!(format_get(&UapiState::new(), &[]), "errno=0\n\n");
        // The port bound for `listen_port=0` is what get shows, as in wireguard-go.
        apply(&mut state, "listen_port=0\n");
        state.record_bound_port(40000);
        assert!(format_get(&state, &[]).contains("\nlisten_port=40000\n"));
    }

    #[test]
    fn replace_peers_remove_and_update_only() {
        let (a, b, c) = (peer_key(1), peer_key(2), peer_key(3));
        let mut state = UapiState::new();
        apply(
            &mut state,
            &format!(
                "public_key={}\nallowed_ip=10.1.0.0/16\npublic_key={}\nallowed_ip=10.2.0.0/16\n",
                hex(&a),
                hex(&b)
            ),
        );
        // remove: gone with its prefixes; a peer that does not exist: nothing.
        let changes = apply(
            &mut state,
            &format!(
                "public_key={}\nremove=true\npublic_key={}\nremove=true\n",
                hex(&a),
                hex(&c)
            ),
        );
        assert_eq!((changes.removed, changes.added), (vec![a.clone()], vec![]));
        assert!(changes.allowed_ips);
        assert_eq!((state.peer_count(), state.allowed_ip_count()), (1, 1));

        // update_only: a missing peer is not created, an existing one is updated.
        let changes = apply(
            &mut state,
            &format!(
                "public_key={}\nupdate_only=true\nendpoint=192.0.2.3:1\n\
                 public_key={}\nupdate_only=true\nendpoint=192.0.2.2:1\n",
                hex(&c),
                hex(&b)
            ),
        );
        assert!(state.peer(&c).is_none());
        assert!(changes.added.is_empty() && changes.removed.is_empty());
        assert_eq!(changes.changed.len(), 1);
        assert!(changes.changed[0].endpoint);
        // wireguard-go creates the peer at its public_key line and removes it at update_only:
        // a prefix it took before that is lost to its former peer too.
        apply(
            &mut state,
            &format!(
                "public_key={}\nallowed_ip=10.2.0.0/16\nupdate_only=true\n",
                hex(&c)
            ),
        );
        assert!(state.peer(&c).is_none());
        assert!(state.peer(&b).unwrap().allowed_ips.is_empty());

        // replace_peers: every peer goes; those listed after it are new.
        apply(&mut state, &format!("public_key={}\n", hex(&a)));
        let changes = apply(
            &mut state,
            &format!("replace_peers=true\npublic_key={}\n", hex(&c)),
        );
        assert_eq!(changes.removed, [b.clone(), a.clone()]);
        assert_eq!(changes.added, std::slice::from_ref(&c));
        assert_eq!(state.peers().map(|p| p.public_key).collect::<Vec<_>>(), [c]);
    }

    #[test]
    fn a_prefix_belongs_to_one_peer_and_keeps_its_order() {
        let (a, b) = (peer_key(1), peer_key(2));
        let mut state = UapiState::new();
        apply(
            &mut state,
            &format!(
                "public_key={}\nallowed_ip=10.0.0.0/8\nallowed_ip=10.1.0.0/16\nallowed_ip=fd00::/8\n\
                 public_key={}\nallowed_ip=192.168.0.0/16\n",
                hex(&a),
                hex(&b)
            ),
        );
        // Given to b, 10.1.0.0/16 (written with host bits) leaves a; a and b both changed.
        let changes = apply(
            &mut state,
            &format!("public_key={}\nallowed_ip=10.1.2.3/16\n", hex(&b)),
        );
        assert_eq!(
            state.peer(&a).unwrap().allowed_ips,
            [net("10.0.0.0/8"), net("fd00::/8")]
        );
        assert_eq!(
            state.peer(&b).unwrap().allowed_ips,
            [net("192.168.0.0/16"), net("10.1.0.0/16")]
        );
        let moved: Vec<(Key, bool)> = changes
            .changed
            .iter()
            .map(|c| (c.public_key.clone(), c.allowed_ips))
            .collect();
        assert_eq!(moved, [(a.clone(), true), (b.clone(), true)]);
        // Given again to its own peer, a prefix moves to the end of its list, and nothing
        // changed for routing.
        let changes = apply(
            &mut state,
            &format!("public_key={}\nallowed_ip=10.0.0.0/8\n", hex(&a)),
        );
        assert_eq!(
            state.peer(&a).unwrap().allowed_ips,
            [net("fd00::/8"), net("10.0.0.0/8")]
        );
        assert!(changes.is_empty(), "{changes:?}");
        // `-PREFIX` removes a prefix only from a peer that has it.
        apply(
            &mut state,
            &format!(
                "public_key={}\nallowed_ip=-10.0.0.0/8\npublic_key={}\nallowed_ip=-fd00::1/8\n",
                hex(&b),
                hex(&a)
            ),
        );
        assert_eq!(state.peer(&a).unwrap().allowed_ips, [net("10.0.0.0/8")]);
        // replace_allowed_ips: what follows is the peer's whole list.
        let changes = apply(
            &mut state,
            &format!(
                "public_key={}\nreplace_allowed_ips=true\nallowed_ip=172.16.0.0/12\n",
                hex(&b)
            ),
        );
        assert_eq!(state.peer(&b).unwrap().allowed_ips, [net("172.16.0.0/12")]);
        assert!(changes.allowed_ips);
        assert_eq!(state.allowed_ip_count(), 2);
    }

    #[test]
    fn a_peer_with_the_devices_own_key_is_ignored_or_removed() {
        let private = key(PRIVATE_HEX);
        let own = private.public_key();
        let other = peer_key(1);
        let mut state = UapiState::new();
        apply(
            &mut state,
            &format!("public_key={}\nallowed_ip=10.0.0.0/8\n", hex(&own)),
        );
        apply(&mut state, &format!("public_key={}\n", hex(&other)));
        assert_eq!(state.peer_count(), 2);
        // The key arrives: its peer goes, and every other peer must handshake again.
        let changes = apply(&mut state, &format!("private_key={PRIVATE_HEX}\n"));
        assert_eq!(changes.removed, std::slice::from_ref(&own));
        assert!(changes.private_key && changes.allowed_ips);
        assert_eq!(changes.changed.len(), 1);
        assert!(changes.changed[0].restart_session);
        // Now a peer with it is a placeholder: its lines are checked and do nothing.
        let changes = apply(
            &mut state,
            &format!(
                "public_key={}\nendpoint=192.0.2.1:1\nallowed_ip=10.0.0.0/8\n",
                hex(&own)
            ),
        );
        assert!(changes.is_empty());
        assert!(state.peer(&own).is_none());
        let e = failure(
            &mut state,
            &format!("public_key={}\nendpoint=x\n", hex(&own)),
        );
        assert_eq!(e.code(), ErrorCode::Invalid);
        // The same key again changes nothing.
        assert!(apply(&mut state, &format!("private_key={PRIVATE_HEX}\n")).is_empty());
        // The all-zero key removes the key (and is shown as none).
        let changes = apply(&mut state, &format!("private_key={ZERO_HEX}\n"));
        assert!(changes.private_key && state.private_key().is_none());
        assert!(!format_get(&state, &[]).contains("private_key="));
        // Before any key was set, wireguard-go's own public key is zeros: a peer with the
        // all-zero key is a placeholder then.
        let mut fresh = UapiState::new();
        apply(&mut fresh, &format!("public_key={ZERO_HEX}\n"));
        assert_eq!(fresh.peer_count(), 0);
    }

    #[test]
    fn keys_and_keepalives_report_what_a_live_table_must_redo() {
        let a = peer_key(1);
        let mut state = UapiState::new();
        apply(
            &mut state,
            &format!("private_key={PRIVATE_HEX}\npublic_key={}\n", hex(&a)),
        );
        let only = |changes: Changes| {
            assert_eq!(changes.changed.len(), 1, "{changes:?}");
            changes.changed[0].clone()
        };
        let change = only(apply(
            &mut state,
            &format!("public_key={}\npreshared_key={PRESHARED_HEX}\n", hex(&a)),
        ));
        assert!(change.preshared_key && change.restart_session);
        // An all-zero preshared key is none: a change back, again a restart.
        let change = only(apply(
            &mut state,
            &format!("public_key={}\npreshared_key={ZERO_HEX}\n", hex(&a)),
        ));
        assert!(change.restart_session);
        assert_eq!(state.peer(&a).unwrap().preshared_key, None);
        let change = only(apply(
            &mut state,
            &format!("public_key={}\npersistent_keepalive_interval=25\n", hex(&a)),
        ));
        assert!(
            change.persistent_keepalive && change.keepalive_turned_on && !change.restart_session
        );
        let change = only(apply(
            &mut state,
            &format!("public_key={}\npersistent_keepalive_interval=30\n", hex(&a)),
        ));
        assert!(change.persistent_keepalive && !change.keepalive_turned_on);
        // Setting a value it already has is no change.
        assert!(apply(
            &mut state,
            &format!("public_key={}\npersistent_keepalive_interval=30\n", hex(&a))
        )
        .is_empty());
        // Removed and made again in one request: a new peer.
        let changes = apply(
            &mut state,
            &format!(
                "public_key={}\nremove=true\npublic_key={}\n",
                hex(&a),
                hex(&a)
            ),
        );
        assert_eq!(
            (changes.removed, changes.added),
            (vec![a.clone()], vec![a.clone()])
        );
        assert_eq!(state.peer(&a).unwrap().persistent_keepalive, None);
        // Port and mark.
        let changes = apply(&mut state, "listen_port=51820\nfwmark=7\n");
        assert!(changes.listen_port && changes.fwmark && changes.changed.is_empty());
    }

    #[test]
    fn a_request_that_fails_changes_nothing() {
        let (a, b) = (peer_key(1), peer_key(2));
        let mut state = UapiState::new();
        apply(
            &mut state,
            &format!(
                "private_key={PRIVATE_HEX}\npublic_key={}\nallowed_ip=10.0.0.0/8\n",
                hex(&a)
            ),
        );
        let before = state.clone();
        let shown = format_get(&before, &[]);
        // wireguard-go would have applied the lines before the bad one.
        let e = failure(
            &mut state,
            &format!(
                "replace_peers=true\nlisten_port=1\npublic_key={}\nallowed_ip=10.0.0.0/8\n\
                 protocol_version=2\n",
                hex(&b)
            ),
        );
        assert_eq!((e.code(), e.line()), (ErrorCode::Invalid, 5));
        assert_eq!(state, before);
        assert_eq!(format_get(&state, &[]), shown);
    }

    #[test]
    fn a_line_at_its_limit_is_read_and_one_byte_more_is_not() {
        let at = format!("fwmark={}", "0".repeat(MAX_LINE_BYTES - "fwmark=".len()));
        assert_eq!(at.len(), MAX_LINE_BYTES);
        assert!(parse_set(&format!("{at}\n")).is_ok());
        assert!(parse_set(&format!("{at}\r\n")).is_err());
        let e = parse_set(&format!("listen_port=1\n{at}0")).unwrap_err();
        assert_eq!((e.code(), e.line()), (ErrorCode::Io, 2));
    }

    #[test]
    fn a_request_past_its_limit_is_not_read_further() {
        let line = "fwmark=0\n";
        let lines = MAX_REQUEST_BYTES / line.len() + 1;
        let body = line.repeat(lines);
        let e = parse_set(&body).unwrap_err();
        assert_eq!((e.code(), e.line()), (ErrorCode::Io, lines));
        assert!(parse_set(&body[..body.len() - line.len()]).is_ok());
    }

    #[test]
    fn a_whole_configuration_at_both_limits_fits_in_a_request() {
        // Every line at its longest: the peer's lines, and the prefixes' share of them.
        let device = format!(
            "private_key={PRIVATE_HEX}\nlisten_port=65535\nfwmark=4294967295\nreplace_peers=true\n"
        );
        let peer = format!(
            "public_key={PUBLIC_HEX}\nupdate_only=true\npreshared_key={PRESHARED_HEX}\n\
             protocol_version=1\nendpoint=[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535\n\
             persistent_keepalive_interval=65535\nreplace_allowed_ips=true\n"
        );
        let prefix = "allowed_ip=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128\n";
        assert!(parse_set(&format!("{device}{peer}{prefix}")).is_ok());
        let whole = device.len() + MAX_PEERS * peer.len() + MAX_ALLOWED_IPS * prefix.len();
        // The figure the module's docs give.
        assert_eq!(whole / 100_000, 353, "{whole}");
        assert!(whole < MAX_REQUEST_BYTES);
    }

    #[test]
    fn the_limits_on_peers_and_prefixes_hold_at_apply() {
        // MAX_PEERS peers with MAX_ALLOWED_IPS prefixes in all, in one request.
        let per_peer = MAX_ALLOWED_IPS / MAX_PEERS;
        let mut body = String::with_capacity(MAX_PEERS * (76 + per_peer * 28));
        let mut n = 0u32;
        for peer in 0..MAX_PEERS as u32 {
            let _ = writeln!(body, "public_key={}", hex(&peer_key(peer)));
            for _ in 0..per_peer {
                let [_, b, c, d] = n.to_be_bytes();
                let _ = writeln!(body, "allowed_ip=10.{b}.{c}.{d}/32");
                n += 1;
            }
        }
        let mut state = UapiState::new();
        apply(&mut state, &body);
        assert_eq!(
            (state.peer_count(), state.allowed_ip_count()),
            (MAX_PEERS, MAX_ALLOWED_IPS)
        );
        let before = state.clone();

        let extra = peer_key(MAX_PEERS as u32);
        let e = failure(
            &mut state,
            &format!("listen_port=1\npublic_key={}\n", hex(&extra)),
        );
        assert_eq!(
            (e.code(), e.line(), e.field()),
            (ErrorCode::Invalid, 2, "public_key")
        );
        assert!(e.to_string().contains("MAX_PEERS"), "{e}");
        let e = failure(
            &mut state,
            &format!("public_key={}\nallowed_ip=11.0.0.0/32\n", hex(&peer_key(0))),
        );
        assert_eq!(
            (e.code(), e.line(), e.field()),
            (ErrorCode::Invalid, 2, "allowed_ip")
        );
        assert!(e.to_string().contains("MAX_ALLOWED_IPS"), "{e}");
        assert_eq!(state, before);

        // At the limits, what grows nothing still goes: a prefix moved, a peer replaced.
        apply(
            &mut state,
            &format!(
                "public_key={}\nallowed_ip=10.0.0.0/32\npublic_key={}\nremove=true\n\
                 public_key={}\nallowed_ip=11.0.0.0/32\n",
                hex(&peer_key(1)),
                hex(&peer_key(0)),
                hex(&extra)
            ),
        );
        // The removed peer's other three prefixes went with it; the new peer has one.
        assert_eq!(
            (state.peer_count(), state.allowed_ip_count()),
            (MAX_PEERS, MAX_ALLOWED_IPS - 2)
        );
    }

    #[test]
    fn a_kept_line_takes_no_more_than_the_docs_say() {
        // The module's docs: at most 40 bytes for each line kept, and a kept line is 16 bytes
        // at least, newline included.
        assert!(std::mem::size_of::<(u32, PeerOp)>() <= 40);
        assert!(std::mem::size_of::<PeerRequest>() <= 76);
        assert_eq!("allowed_ip=::/0\n".len(), 16);
        let request = parse_set(&format!(
            "listen_port=1\nlisten_port=2\nfwmark=1\nfwmark=2\npublic_key={PUBLIC_HEX}\n\
             protocol_version=1\nremove=true\nremove=true\nendpoint=192.0.2.1:1\n"
        ))
        .unwrap();
        assert_eq!(request.peers[0].ops, [(7, PeerOp::Remove)]);
        assert_eq!(
            (request.device.listen_port, request.device.fwmark),
            (Some(2), Some(2))
        );
    }

    #[test]
    fn no_key_shows_in_debug_output() {
        let mut state = UapiState::new();
        let body = format!(
            "private_key={PRIVATE_HEX}\npublic_key={PUBLIC_HEX}\npreshared_key={PRESHARED_HEX}\n"
        );
        let request = parse_set(&body).unwrap();
        let changes = state.apply(&request).unwrap();
        let keys = [
            &key(PRIVATE_HEX),
            &clamped(key(PRIVATE_HEX)),
            &key(PRESHARED_HEX),
            &key(PUBLIC_HEX),
        ];
        for shown in [
            format!("{request:?}"),
            format!("{state:?}"),
            format!("{changes:?}"),
        ] {
            assert!(leak(&shown, &keys).is_none(), "{shown}");
        }
    }

    /// wireguard-go's `IpcSetOperation`, transliterated as plainly as it reads: line by line,
    /// not atomic, lists searched from end to end. What [`UapiState::apply`] must agree with.
    mod plain {
        use super::super::*;

        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Peer {
            pub key: [u8; 32],
            pub preshared: Option<Key>,
            pub endpoint: Option<SocketAddr>,
            pub keepalive: u16,
            pub allowed: Vec<IpNet>,
        }

        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Device {
            pub private: Option<Key>,
            pub public: [u8; 32],
            pub port: u16,
            pub fwmark: u32,
            pub peers: Vec<Peer>,
        }

        impl Device {
            fn remove(&mut self, key: &[u8; 32]) {
                self.peers.retain(|p| &p.key != key);
            }

            fn at(&mut self, key: &[u8; 32]) -> Option<&mut Peer> {
                self.peers.iter_mut().find(|p| &p.key == key)
            }

            /// The set operation; `Err(errno)` at the first bad line, the lines before it
            /// applied.
            pub fn set(&mut self, body: &str) -> Result<(), i32> {
                let invalid = ErrorCode::Invalid.errno();
                let mut device_config = true;
                // The peer being configured: its key, dummy, created.
                let mut current: Option<([u8; 32], bool, bool)> = None;
                for line in body.split('\n') {
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if line.is_empty() {
                        break;
                    }
                    let (key, value) = line.split_once('=').ok_or(ErrorCode::Protocol.errno())?;
                    if key == "public_key" {
                        device_config = false;
                        let public = Key::from_hex(value).ok_or(invalid)?.0;
                        let dummy = public == self.public;
                        let created = !dummy && !self.peers.iter().any(|p| p.key == public);
                        if created {
                            self.peers.push(Peer {
                                key: public,
                                preshared: None,
                                endpoint: None,
                                keepalive: 0,
                                allowed: Vec::new(),
                            });
                        }
                        current = Some((public, dummy, created));
                        continue;
                    }
                    if device_config {
                        match key {
                            "private_key" => {
                                let k = Key::from_hex(value).ok_or(invalid)?;
                                let k = (!k.is_zero()).then(|| clamped(k));
                                if k != self.private {
                                    let public = k.as_ref().unwrap_or(&ZERO_KEY).public_key().0;
                                    self.remove(&public);
                                    self.private = k;
                                    self.public = public;
                                }
                            }
                            "listen_port" => {
                                self.port = decimal(value, 65535).ok_or(invalid)? as u16
                            }
                            "fwmark" => {
                                self.fwmark = decimal(value, u32::MAX.into()).ok_or(invalid)? as u32
                            }
                            "replace_peers" if value == "true" => self.peers.clear(),
                            _ => return Err(invalid),
                        }
                        continue;
                    }
                    let Some((public, dummy, created)) = current.as_mut() else {
                        unreachable!("peer lines follow a public_key")
                    };
                    match key {
                        "update_only" if value == "true" => {
                            if *created && !*dummy {
                                let public = *public;
                                self.remove(&public);
                                *dummy = true;
                            }
                        }
                        "remove" if value == "true" => {
                            if !*dummy {
                                let public = *public;
                                self.remove(&public);
                            }
                            *dummy = true;
                        }
                        "preshared_key" => {
                            let k = Key::from_hex(value).ok_or(invalid)?;
                            if !*dummy {
                                let public = *public;
                                self.at(&public).unwrap().preshared = (!k.is_zero()).then_some(k);
                            }
                        }
                        "endpoint" => {
                            let e: SocketAddr = value.parse().map_err(|_| invalid)?;
                            if !*dummy {
                                let public = *public;
                                self.at(&public).unwrap().endpoint = Some(e);
                            }
                        }
                        "persistent_keepalive_interval" => {
                            let s = decimal(value, 65535).ok_or(invalid)? as u16;
                            if !*dummy {
                                let public = *public;
                                self.at(&public).unwrap().keepalive = s;
                            }
                        }
                        "replace_allowed_ips" if value == "true" => {
                            if !*dummy {
                                let public = *public;
                                self.at(&public).unwrap().allowed.clear();
                            }
                        }
                        "allowed_ip" => {
                            let (add, text) = match value.strip_prefix('-') {
                                Some(rest) => (false, rest),
                                None => (true, value),
                            };
                            let prefix = parse_prefix(text).ok_or(invalid)?;
                            if !*dummy {
                                let public = *public;
                                if add {
                                    for peer in &mut self.peers {
                                        peer.allowed.retain(|n| *n != prefix);
                                    }
                                    self.at(&public).unwrap().allowed.push(prefix);
                                } else {
                                    self.at(&public).unwrap().allowed.retain(|n| *n != prefix);
                                }
                            }
                        }
                        "protocol_version" if value == "1" => {}
                        _ => return Err(invalid),
                    }
                }
                Ok(())
            }
        }
    }

    /// A state as [`plain::Device`] holds one, to compare.
    fn as_plain(state: &UapiState) -> plain::Device {
        plain::Device {
            private: state.private_key.clone(),
            public: state.own_public,
            port: state.listen_port,
            fwmark: state.fwmark,
            peers: state
                .peers()
                .map(|p| plain::Peer {
                    key: p.public_key.0,
                    preshared: p.preshared_key,
                    endpoint: p.endpoint.and_then(|e| e.addr()),
                    keepalive: p.persistent_keepalive.unwrap_or(0),
                    allowed: p.allowed_ips,
                })
                .collect(),
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::net::{Ipv4Addr, Ipv6Addr};

        use crate::wireguard::strategies::{key as any_key, net as any_net};

        fn any_endpoint() -> impl Strategy<Value = SocketAddr> {
            prop_oneof![
                (any::<u32>(), any::<u16>()).prop_map(|(a, port)| (Ipv4Addr::from(a), port).into()),
                (
                    any::<u128>(),
                    any::<u16>(),
                    proptest::option::of(any::<u32>())
                )
                    .prop_map(|(a, port, scope)| {
                        std::net::SocketAddrV6::new(Ipv6Addr::from(a), port, 0, scope.unwrap_or(0))
                            .into()
                    }),
            ]
        }

        /// A `set` body that configures a device whole, from random values.
        fn any_configuration() -> impl Strategy<Value = String> {
            let peer = (
                any_key(),
                proptest::option::of(any_key()),
                proptest::option::of(any_endpoint()),
                any::<u16>(),
                proptest::collection::vec(any_net(), 0..6),
            );
            (
                proptest::option::of(any_key()),
                any::<u16>(),
                any::<u32>(),
                proptest::collection::vec(peer, 0..6),
            )
                .prop_map(|(private, port, fwmark, peers)| {
                    let mut body = String::from("replace_peers=true\n");
                    if let Some(k) = private {
                        let _ = writeln!(body, "private_key={}", hex(&k));
                    }
                    let _ = writeln!(body, "listen_port={port}\nfwmark={fwmark}");
                    for (k, psk, endpoint, keepalive, nets) in peers {
                        let _ = writeln!(body, "public_key={}", hex(&k));
                        if let Some(psk) = psk {
                            let _ = writeln!(body, "preshared_key={}", hex(&psk));
                        }
                        if let Some(e) = endpoint {
                            let _ = writeln!(body, "endpoint={e}");
                        }
                        let _ = writeln!(body, "persistent_keepalive_interval={keepalive}");
                        for n in nets {
                            let _ = writeln!(body, "allowed_ip={n}");
                        }
                    }
                    body
                })
        }

        /// Figures for some of a state's peers.
        fn figures_for(state: &UapiState, seed: u64) -> Vec<PeerFigures> {
            state
                .peers()
                .enumerate()
                .filter(|(i, _)| (seed >> (i % 64)) & 1 == 1)
                .map(|(i, p)| {
                    let mut f = PeerFigures::new(p.public_key);
                    f.tx_bytes = seed.wrapping_mul(i as u64 + 1);
                    f.rx_bytes = seed.rotate_left(i as u32);
                    f.last_handshake = Some(UNIX_EPOCH + Duration::from_nanos(seed >> 3));
                    f
                })
                .collect()
        }

        /// The bytes of a private key the requests below set, whose public key is among
        /// their peers' keys.
        const OWN: u8 = 0xa1;

        /// One of five peer keys: the all-zero key (wireguard-go's own public key before any
        /// private key is set), the public key of `OWN`'s key, and three others.
        fn small_key(n: u8) -> String {
            match n {
                0 => ZERO_HEX.to_string(),
                4 => hex(&Key([OWN; 32]).public_key()),
                n => hex(&Key([n; 32])),
            }
        }

        /// A line of a request that exercises the rules: a few keys, prefixes that overlap,
        /// and a bad line now and then.
        fn request_line() -> impl Strategy<Value = String> {
            let nets = prop::sample::select(vec![
                "10.0.0.0/8",
                "10.1.2.3/8",
                "10.1.0.0/16",
                "0.0.0.0/0",
                "fd00::/8",
                "fd00::1/128",
                "::ffff:10.0.0.0/104",
            ]);
            prop_oneof![
                4 => (0u8..5).prop_map(|n| format!("public_key={}", small_key(n))),
                1 => prop::sample::select(vec![0u8, OWN, 7]).prop_map(|b| format!("private_key={}", hex(&Key([b; 32])))),
                1 => (0u16..3).prop_map(|p| format!("listen_port={p}")),
                1 => (0u32..3).prop_map(|m| format!("fwmark={m}")),
                1 => Just("replace_peers=true".to_string()),
                1 => Just("update_only=true".to_string()),
                1 => Just("remove=true".to_string()),
                1 => prop::sample::select(vec![0u8, 9]).prop_map(|b| format!("preshared_key={}", hex(&Key([b; 32])))),
                1 => (0u8..3).prop_map(|n| format!("endpoint=192.0.2.{n}:51820")),
                1 => (0u16..3).prop_map(|s| format!("persistent_keepalive_interval={s}")),
                1 => Just("replace_allowed_ips=true".to_string()),
                6 => nets.clone().prop_map(|n| format!("allowed_ip={n}")),
                2 => nets.prop_map(|n| format!("allowed_ip=-{n}")),
                1 => Just("protocol_version=1".to_string()),
                1 => prop::sample::select(vec!["protocol_version=2", "listen_port=x", "bogus", "endpoint=nowhere"]).prop_map(str::to_string),
            ]
        }

        fn request() -> impl Strategy<Value = String> {
            proptest::collection::vec(request_line(), 0..14)
                .prop_map(|lines| lines.iter().map(|l| format!("{l}\n")).collect::<String>())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn get_read_back_as_set_gives_the_same_state(body in any_configuration(), seed in any::<u64>()) {
                let mut state = UapiState::new();
                state.apply(&parse_set(&body).map_err(|e| TestCaseError::fail(format!("{e}\n{body}")))?)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let get = format_get(&state, &figures_for(&state, seed));
                prop_assert!(get.ends_with("\nerrno=0\n\n") || get == "errno=0\n\n", "{}", get);
                let again = format!("replace_peers=true\n{}", configuration_lines(&get));
                let mut read_back = UapiState::new();
                read_back.apply(&parse_set(&again).map_err(|e| TestCaseError::fail(format!("{e}\n{again}")))?)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&read_back, &state);
                // And applied to the state itself, it changes nothing: every peer is kept.
                let changes = state.apply(&parse_set(&again).unwrap()).unwrap();
                prop_assert!(changes.is_empty(), "{:?}", changes);
                prop_assert_eq!(&read_back, &state);
            }

            #[test]
            fn apply_agrees_with_wireguard_gos_line_by_line_rules(requests in proptest::collection::vec(request(), 1..5)) {
                let mut state = UapiState::new();
                let mut plain = plain::Device::default();
                for body in &requests {
                    let before = state.clone();
                    let mut expected = plain.clone();
                    match (expected.set(body), parse_set(body).and_then(|r| state.apply(&r).map(|c| (r, c)))) {
                        (Ok(()), Ok((_, changes))) => {
                            prop_assert_eq!(&as_plain(&state), &expected, "{}", body);
                            // Every peer gone or new is reported, and nothing else is.
                            for key in &changes.removed {
                                prop_assert!(before.peer(key).is_some());
                            }
                            for key in &changes.added {
                                prop_assert!(state.peer(key).is_some());
                            }
                            for peer in before.peers() {
                                if state.peer(&peer.public_key).is_none() {
                                    prop_assert!(changes.removed.contains(&peer.public_key));
                                }
                            }
                            for peer in state.peers() {
                                if before.peer(&peer.public_key).is_none() {
                                    prop_assert!(changes.added.contains(&peer.public_key));
                                }
                            }
                            plain = expected;
                        }
                        (Err(errno), Err(e)) => {
                            prop_assert_eq!(errno, e.errno(), "{}: {}", body, e);
                            prop_assert_eq!(&state, &before);
                        }
                        (expected, got) => prop_assert!(false, "{}: wireguard-go {:?}, here {:?}", body, expected, got.map(|(_, c)| c)),
                    }
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..1500)) {
                if let Ok(request) = parse_set_bytes(&body) {
                    let mut state = UapiState::new();
                    if state.apply(&request).is_ok() {
                        let _ = format_get(&state, &[]);
                    }
                }
            }

            #[test]
            fn text_of_protocol_words_never_panics(body in "((private_key|public_key|preshared_key|listen_port|fwmark|endpoint|allowed_ip|remove|update_only|replace_peers|protocol_version|\\PC{0,4})(=)?(true|-|1|[0-9a-f]{0,64}|[0-9.:/\\[\\]%]{0,20}|\\PC{0,6})(\r)?\n){0,30}") {
                match parse_set(&body) {
                    Ok(request) => {
                        let _ = UapiState::new().apply(&request);
                    }
                    Err(e) => prop_assert!(e.line() >= 1 && e.line() <= body.split('\n').count(), "{}", e),
                }
            }

            #[test]
            fn a_damaged_line_is_named_and_no_key_is_shown(
                body in any_configuration(),
                victim in any::<prop::sample::Index>(),
                junk in "[ -~]{0,20}",
                paste_a_key in any::<bool>(),
            ) {
                let keys: Vec<Key> = body
                    .lines()
                    .filter_map(|l| l.split_once('=').and_then(|(_, v)| Key::from_hex(v)))
                    .collect();
                let mut lines: Vec<String> = body.lines().map(str::to_string).collect();
                let at = victim.index(lines.len());
                // Keep the key name and spoil the value: with junk, or with a key where no key
                // goes (or a key in base64, or with a character more).
                let spoiled = match (paste_a_key, keys.first()) {
                    (true, Some(k)) => format!("{}{junk}", if junk.len() % 2 == 0 { hex(k) } else { k.to_base64() }),
                    _ => junk.clone(),
                };
                lines[at] = match lines[at].split_once('=') {
                    Some((name, _)) if junk.len() % 3 == 0 => format!("{name} {spoiled}"),
                    Some((name, _)) => format!("{name}={spoiled}"),
                    None => spoiled,
                };
                let damaged = lines.join("\n");
                if let Err(e) = parse_set(&damaged) {
                    prop_assert_eq!(e.line(), at + 1, "{}", e);
                    let every: Vec<&Key> = keys.iter().collect();
                    for shown in [e.to_string(), format!("{e:?}")] {
                        prop_assert!(leak(&shown, &every).is_none(), "{}", shown);
                    }
                }
            }
        }
    }
}
