//! Damaged wg-quick texts that hold known keys, and the check that no output shows any part
//! of those keys: what the parser, the CLI, the C ABI's last error and its log callback are
//! each tested with (issue 16).
//!
//! A "part" is any 16 consecutive characters of a key's base64 text, or of its hex text in
//! lower or upper case.

use std::fmt::Write as _;

/// The private key every damaged text holds (base64).
pub const PRIVATE: &str = "fup4MXfgNDcqQU2t1srwMK8V490EofSaFdZ50t4YeZY=";
/// [`PRIVATE`] in hex.
pub const PRIVATE_HEX: &str = "7eea783177e034372a414dadd6caf030af15e3dd04a1f49a15d679d2de187996";
/// The preshared key every damaged text holds (base64).
pub const PRESHARED: &str = "12rL69QfaDZZpPk7sLk2mF1nafkhyfPQi4iGuUDZbAA=";
/// [`PRESHARED`] in hex.
pub const PRESHARED_HEX: &str = "d76acbebd41f683659a4f93bb0b936985d6769f921c9f3d08b8886b940d96c00";
/// The peer's public key (not a secret; no message shows it either).
pub const PUBLIC: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

/// How long a run of a key's text may show: none of this length.
pub const WINDOW: usize = 16;

/// The config every case damages, one line of it:
///
/// ```text
///  1 [Interface]
///  2 PrivateKey = PRIVATE
///  3 Address = 10.8.0.1/24
///  4 ListenPort = 51820
///  5
///  6 [Peer]
///  7 PublicKey = PUBLIC
///  8 PresharedKey = PRESHARED
///  9 Endpoint = 192.0.2.1:51820
/// 10 AllowedIPs = 10.8.0.0/24
/// ```
pub fn good_lines() -> Vec<String> {
    vec![
        "[Interface]".into(),
        format!("PrivateKey = {PRIVATE}"),
        "Address = 10.8.0.1/24".into(),
        "ListenPort = 51820".into(),
        String::new(),
        "[Peer]".into(),
        format!("PublicKey = {PUBLIC}"),
        format!("PresharedKey = {PRESHARED}"),
        "Endpoint = 192.0.2.1:51820".into(),
        "AllowedIPs = 10.8.0.0/24".into(),
    ]
}

/// The good config as one text.
pub fn good_text() -> String {
    good_lines().join("\n") + "\n"
}

/// A damaged config: what was done to it, its text, and the line its error must name.
#[derive(Debug, Clone)]
pub struct Case {
    /// What was damaged, for a failure message.
    pub name: &'static str,
    /// The whole text.
    pub text: String,
    /// The line (from 1) the error must name.
    pub line: usize,
}

/// The good config with line `line` (from 1) replaced by `with`.
fn replace(name: &'static str, line: usize, with: String) -> Case {
    let mut lines = good_lines();
    lines[line - 1] = with;
    Case {
        name,
        text: lines.join("\n") + "\n",
        line,
    }
}

/// The good config with `with` inserted as line `line` (from 1): the error is there.
fn insert(name: &'static str, line: usize, with: String) -> Case {
    let mut lines = good_lines();
    lines.insert(line - 1, with);
    Case {
        name,
        text: lines.join("\n") + "\n",
        line,
    }
}

/// Every damage the issue names, to the private and to the preshared key.
pub fn cases() -> Vec<Case> {
    let (p, s) = (PRIVATE, PRESHARED);
    let (p_bare, s_bare) = (p.trim_end_matches('='), s.trim_end_matches('='));
    vec![
        replace("a colon for = (private)", 2, format!("PrivateKey: {p}")),
        replace("a colon for = (preshared)", 8, format!("PresharedKey: {s}")),
        replace("a colon, no padding", 2, format!("PrivateKey:{p_bare}")),
        replace("a space for = (private)", 2, format!("PrivateKey {p}")),
        replace("a space for = (preshared)", 8, format!("PresharedKey {s}")),
        replace("a space, no padding", 8, format!("presharedkey {s_bare}")),
        replace("double quotes", 2, format!("PrivateKey = \"{p}\"")),
        replace("single quotes", 8, format!("PresharedKey = '{s}'")),
        replace("quotes around the line", 2, format!("\"PrivateKey = {p}\"")),
        replace(
            "a cut key (private)",
            2,
            format!("PrivateKey = {}", &p[..30]),
        ),
        replace(
            "a cut key (preshared)",
            8,
            format!("PresharedKey = {}", &s[..40]),
        ),
        replace("an extended key", 2, format!("PrivateKey = {p}x")),
        replace(
            "an extended key, inside",
            8,
            format!("PresharedKey = {s_bare}AAAA="),
        ),
        replace("a misspelled key", 2, format!("PrivatKey = {p}")),
        replace(
            "a misspelled key (preshared)",
            8,
            format!("PreSharedKeys = {s}"),
        ),
        replace("an unknown key", 8, format!("Secret = {s}")),
        replace("an unknown key, no spaces", 2, format!("Key={p}")),
        replace("the key as Address", 3, format!("Address = {p}")),
        replace(
            "the key among addresses",
            3,
            format!("Address = 10.8.0.1/24, {p}"),
        ),
        replace("the key as ListenPort", 4, format!("ListenPort = {p}")),
        insert("the key as MTU", 5, format!("MTU = {s}")),
        insert("the key as DNS", 5, format!("DNS = 10.8.0.53, {p}")),
        replace("the key as Endpoint", 9, format!("Endpoint = {s}")),
        replace("the key as AllowedIPs", 10, format!("AllowedIPs = {p}")),
        insert(
            "the key as PersistentKeepalive",
            11,
            format!("PersistentKeepalive = {s}"),
        ),
        replace(
            "the private key as PublicKey, cut",
            7,
            format!("PublicKey = {}", &p[..43]),
        ),
        insert("a key alone on a line (private)", 3, p.to_string()),
        insert("a key alone on a line (preshared)", 9, s.to_string()),
        insert("a key alone, no padding", 3, p_bare.to_string()),
        insert("a key in a section's brackets", 5, format!("[{p}]")),
        insert(
            "a key after a section",
            6,
            format!("[Interface] PrivateKey = {p}"),
        ),
        insert(
            "a duplicated line (private)",
            3,
            format!("PrivateKey = {p}"),
        ),
        insert(
            "a duplicated line (preshared)",
            9,
            format!("PresharedKey = {s}"),
        ),
        replace(
            "a hex key (private)",
            2,
            format!("PrivateKey = {PRIVATE_HEX}"),
        ),
        replace(
            "a hex key (preshared, upper case)",
            8,
            format!("PresharedKey = {}", PRESHARED_HEX.to_ascii_uppercase()),
        ),
        replace(
            "a hex key with a colon",
            2,
            format!("PrivateKey: {PRIVATE_HEX}"),
        ),
        replace("a hex key alone", 2, PRESHARED_HEX.to_string()),
        Case {
            name: "a key before any section",
            text: format!("PrivateKey: {p}\n{}", good_text()),
            line: 1,
        },
        Case {
            name: "a key outside any section",
            text: format!("PresharedKey = {s}\n{}", good_text()),
            line: 1,
        },
    ]
}

/// Every 16-character run of every key's text: base64, and hex in both cases.
pub fn secret_runs() -> Vec<String> {
    let mut runs = Vec::new();
    for text in [
        PRIVATE.to_string(),
        PRESHARED.to_string(),
        PUBLIC.to_string(),
        PRIVATE_HEX.to_string(),
        PRIVATE_HEX.to_ascii_uppercase(),
        PRESHARED_HEX.to_string(),
        PRESHARED_HEX.to_ascii_uppercase(),
    ] {
        for start in 0..=text.len() - WINDOW {
            runs.push(text[start..start + WINDOW].to_string());
        }
    }
    runs
}

/// `None` when `output` shows no 16-character run of a key; otherwise what it shows, for a
/// failure message.
pub fn leak(output: &str) -> Option<String> {
    let found: Vec<String> = secret_runs()
        .into_iter()
        .filter(|run| output.contains(run.as_str()))
        .collect();
    if found.is_empty() {
        return None;
    }
    let mut said = format!("{} key run(s) shown, e.g. {:?}", found.len(), found[0]);
    let _ = write!(said, " in: {output}");
    Some(said)
}

/// A wg-quick text with `peers` peers and `prefixes` AllowedIPs prefixes in all (spread over
/// the peers, one line each, every prefix distinct), no endpoints: for the limits.
pub fn many_peers_text(peers: usize, prefixes: usize) -> String {
    let mut text = format!("[Interface]\nPrivateKey = {PRIVATE}\nAddress = 10.0.0.1/8\n");
    text.reserve(peers * 160);
    let mut next = 0usize;
    for peer in 0..peers {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(peer as u64 + 1).to_le_bytes());
        key[31] = 0x5a;
        let _ = write!(text, "\n[Peer]\nPublicKey = {}\n", base64(&key));
        // This peer's share of the prefixes: the rest, spread evenly.
        let share = (prefixes - next).div_ceil(peers - peer);
        if share > 0 {
            text.push_str("AllowedIPs = ");
            for i in 0..share {
                let n = next + i;
                if i > 0 {
                    text.push_str(", ");
                }
                if n < 1 << 23 {
                    let _ = write!(text, "10.{}.{}.{}/32", n >> 16, (n >> 8) & 0xff, n & 0xff);
                } else {
                    let _ = write!(text, "fd00::{:x}:{:x}/128", n >> 16, n & 0xffff);
                }
            }
            text.push('\n');
            next += share;
        }
    }
    text
}

fn base64(bytes: &[u8; 32]) -> String {
    tunpipe::wireguard::Key::from_bytes(*bytes).to_base64()
}
