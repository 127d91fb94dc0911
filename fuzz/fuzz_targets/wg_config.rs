//! The wg-quick parser over arbitrary text (a config file is user input, and on iOS it may
//! come from a provider's server). Nothing may panic; an error names a line that exists; a
//! config that parses builds a stage (or says why not) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunpipe::wireguard::{Endpoint, WgConfig, WireGuard};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match WgConfig::parse(&text) {
        Err(e) => {
            assert!(e.line <= text.lines().count(), "{e}");
            let _ = e.to_string();
        }
        Ok(config) => {
            let _ = format!("{config:?}");
            let literal = config
                .peers
                .iter()
                .all(|p| !matches!(p.endpoint, Some(Endpoint::Host(..))));
            // Host names would need a DNS lookup (WgConfig::resolve): not here.
            if literal {
                let _ = WireGuard::new(&config);
            }
        }
    }
});
