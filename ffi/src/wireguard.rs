//! What a host needs from a wg-quick text before the tunnel starts: the settings it applies
//! to its own interface (on iOS, `NEPacketTunnelNetworkSettings`), from the same parser the
//! engine uses, so that Swift needs no second one. Keys are never part of them.

use super::config::wireguard_text;
use super::error::{FfiError, TUNPIPE_ERR_CONFIG, TUNPIPE_ERR_NULL_POINTER};
use super::util::write_string;
use serde_json::json;
use std::ffi::c_char;
use tunpipe::wireguard::WgConfig;

ffi_fn! {
    /// Parses the wg-quick text `config` and writes, as NUL-terminated JSON into `buf[0..len]`,
    /// what the host applies to its interface before it starts the tunnel:
    ///
    /// ```json
    /// {"addresses": ["10.0.0.2/32", "fd00::2/128"], "dns": ["1.1.1.1"], "dns_search": [],
    ///  "mtu": 1420, "mtu_set": false, "listen_port": null,
    ///  "peers": [{"endpoint": "vpn.example.com:51820", "endpoint_host": "vpn.example.com",
    ///             "endpoint_port": 51820, "allowed_ips": ["0.0.0.0/0", "::/0"],
    ///             "persistent_keepalive": 25}]}
    /// ```
    ///
    /// On iOS: `addresses` go to `NEIPv4Settings`/`NEIPv6Settings`, `allowed_ips` to their
    /// included routes, `dns` and `dns_search` to `NEDNSSettings`, `mtu` to the settings' MTU
    /// (1420 when the text sets none; `mtu_set` says whether it did, so that a host may pick
    /// its own default, as WireGuardKit picks 1280 on iOS). `endpoint_host` is for display:
    /// `tunnelRemoteAddress` takes an address, never a host name (WireGuardKit gives it
    /// 127.0.0.1). No key is included.
    /// `*needed` (if not NULL) receives the bytes required including the NUL; when `len` is too
    /// small nothing is written to `buf` and `TUNPIPE_ERR_BUFFER_TOO_SMALL` is returned (call
    /// with `buf = NULL, len = 0` to ask). An invalid text is `TUNPIPE_ERR_CONFIG`, with the
    /// line and field in the last error.
    ///
    /// # Safety
    /// `config` must be NULL or a NUL-terminated string; `buf` NULL or writable for `len`
    /// bytes; `needed` NULL or writable.
    unsafe fn tunpipe_wireguard_settings(
        config: *const c_char,
        buf: *mut c_char,
        len: usize,
        needed: *mut usize,
    ) -> i32 {
        // SAFETY: the caller promises `config` is NULL or a readable C string.
        let parsed = unsafe { wireguard_text(config) }?
            .ok_or_else(|| FfiError::new(TUNPIPE_ERR_NULL_POINTER, "config is NULL"))?;
        let text = settings_json(&parsed)?;
        // SAFETY: the pointers are checked inside; the caller promises their extent.
        unsafe { write_string(&text, buf, len, needed) }
    }
}

/// The host's settings for `config`, as JSON.
pub(crate) fn settings_json(config: &WgConfig) -> Result<String, FfiError> {
    let strings = |items: &mut dyn Iterator<Item = String>| items.collect::<Vec<_>>();
    let peers: Vec<_> = config
        .peers
        .iter()
        .map(|p| {
            let (host, port) = match &p.endpoint {
                Some(endpoint) => (Some(endpoint.host()), Some(endpoint.port())),
                None => (None, None),
            };
            json!({
                "endpoint": p.endpoint.as_ref().map(ToString::to_string),
                "endpoint_host": host,
                "endpoint_port": port,
                "allowed_ips": strings(&mut p.allowed_ips.iter().map(ToString::to_string)),
                "persistent_keepalive": p.persistent_keepalive,
            })
        })
        .collect();
    let i = &config.interface;
    let settings = json!({
        "addresses": strings(&mut i.addresses.iter().map(ToString::to_string)),
        "dns": strings(&mut i.dns.iter().map(ToString::to_string)),
        "dns_search": i.dns_search,
        "mtu": i.mtu,
        "mtu_set": i.mtu_set,
        "listen_port": i.listen_port,
        "peers": peers,
    });
    serde_json::to_string(&settings).map_err(|e| {
        FfiError::new(
            TUNPIPE_ERR_CONFIG,
            format!("cannot write the settings: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_carry_what_the_host_applies_and_no_key() {
        let private = tunpipe::wireguard::Key::generate();
        let public = tunpipe::wireguard::Key::generate().public_key();
        let text = format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.0.0.2/32, fd00::2/128\nDNS = 1.1.1.1, \
             corp.example\nMTU = 1380\n[Peer]\nPublicKey = {}\nEndpoint = vpn.example.com:443\n\
             AllowedIPs = 0.0.0.0/0, ::/0\nPersistentKeepalive = 25\n",
            private.to_base64(),
            public.to_base64()
        );
        let json = settings_json(&WgConfig::parse(&text).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["addresses"], json!(["10.0.0.2/32", "fd00::2/128"]));
        assert_eq!(v["dns"], json!(["1.1.1.1"]));
        assert_eq!(v["dns_search"], json!(["corp.example"]));
        assert_eq!(v["mtu"], 1380);
        assert_eq!(v["mtu_set"], true);
        assert_eq!(v["peers"][0]["endpoint_host"], "vpn.example.com");
        assert_eq!(v["peers"][0]["endpoint_port"], 443);
        assert_eq!(v["peers"][0]["allowed_ips"], json!(["0.0.0.0/0", "::/0"]));
        assert!(
            !json.contains(&private.to_base64()[..12]) && !json.contains(&public.to_base64()[..12])
        );
    }
}
