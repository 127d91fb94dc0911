//! The wg-quick parser never shows a key (issue 16): every damaged text of
//! `tunpipe_testkit::secrets::cases` fails with an error that names its line and shows no
//! 16-character run of any key, in its `Display` or its `Debug`. And the peer and prefix
//! limits: a text exactly at them parses and checks, one past either fails at its line.

#![cfg(test)]

use std::time::Instant;
use tunpipe::wireguard::{WgConfig, MAX_ALLOWED_IPS, MAX_PEERS};
use tunpipe_testkit::secrets::{cases, good_text, leak, many_peers_text};

#[test]
fn the_good_text_parses() {
    let config = WgConfig::parse(&good_text()).expect("the undamaged text is valid");
    assert_eq!(config.peers.len(), 1);
    assert!(config.peers[0].preshared_key.is_some());
}

#[test]
fn a_damaged_config_is_an_error_that_names_its_line_and_shows_no_key() {
    let mut failures = Vec::new();
    for case in cases() {
        let err = match WgConfig::parse(&case.text) {
            Ok(_) => {
                failures.push(format!("{}: parsed, expected an error", case.name));
                continue;
            }
            Err(err) => err,
        };
        let shown = err.to_string();
        let debug = format!("{err:?}");
        for output in [&shown, &debug] {
            if let Some(leak) = leak(output) {
                failures.push(format!("{}: {leak}", case.name));
            }
        }
        if err.line != case.line || !shown.contains(&format!("line {}", case.line)) {
            failures.push(format!(
                "{}: expected line {}, got {} ({shown})",
                case.name, case.line, err.line
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_recognisable_key_is_named_and_nothing_else_is() {
    let name_of = |text: &str| WgConfig::parse(text).unwrap_err().field;
    let mut lines: Vec<String> = good_text().lines().map(str::to_string).collect();
    lines[1] = format!("PrivateKey: {}", tunpipe_testkit::secrets::PRIVATE);
    assert_eq!(name_of(&lines.join("\n")), "PrivateKey");
    lines[1] = format!("privatekey {}", tunpipe_testkit::secrets::PRIVATE);
    assert_eq!(name_of(&lines.join("\n")), "PrivateKey");
    lines[1] = "Foo = 1".to_string();
    assert_eq!(name_of(&lines.join("\n")), "");
    lines[1] = "PrivatKey = 1".to_string();
    let err = WgConfig::parse(&lines.join("\n")).unwrap_err();
    assert!(err.reason.contains("did you mean PrivateKey?"), "{err}");
}

#[test]
fn a_config_at_the_limits_parses_and_checks() {
    let text = many_peers_text(MAX_PEERS, MAX_ALLOWED_IPS);
    let started = Instant::now();
    let config = WgConfig::parse(&text).expect("a config at the limits is valid");
    config.check().expect("and checks");
    // Reported, not asserted: tests do not time things.
    eprintln!(
        "{MAX_PEERS} peers, {MAX_ALLOWED_IPS} prefixes ({} MB of text): parsed and checked in {:?}",
        text.len() >> 20,
        started.elapsed()
    );
    assert_eq!(config.peers.len(), MAX_PEERS);
    let prefixes: usize = config.peers.iter().map(|p| p.allowed_ips.len()).sum();
    assert_eq!(prefixes, MAX_ALLOWED_IPS);
}

#[test]
fn one_peer_past_the_limit_fails_at_its_section() {
    let text = many_peers_text(MAX_PEERS + 1, 0);
    let err = WgConfig::parse(&text).unwrap_err();
    // The first [Peer] is on line 5, and each takes three lines (blank, [Peer], PublicKey).
    assert_eq!(err.line, 5 + 3 * MAX_PEERS, "{err}");
    assert_eq!(err.field, "[Peer]");
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("line {}", err.line))
            && shown.contains("MAX_PEERS")
            && shown.contains(&MAX_PEERS.to_string()),
        "{shown}"
    );
}

#[test]
fn one_prefix_past_the_limit_fails_at_its_line() {
    // One peer with every prefix, on one line, then one more line with one more.
    let text = many_peers_text(1, MAX_ALLOWED_IPS) + "AllowedIPs = 192.0.2.1/32\n";
    let err = WgConfig::parse(&text).unwrap_err();
    assert_eq!(err.line, text.lines().count(), "{err}");
    assert_eq!(err.field, "AllowedIPs");
    let shown = err.to_string();
    assert!(
        shown.contains("MAX_ALLOWED_IPS") && shown.contains(&MAX_ALLOWED_IPS.to_string()),
        "{shown}"
    );
    // A config changed in code past a limit fails its check.
    let mut config = WgConfig::parse(&many_peers_text(1, MAX_ALLOWED_IPS)).unwrap();
    config.peers[0]
        .allowed_ips
        .push("192.0.2.1/32".parse().unwrap());
    let err = config.check().unwrap_err();
    assert!(err.to_string().contains("MAX_ALLOWED_IPS"), "{err}");
}
