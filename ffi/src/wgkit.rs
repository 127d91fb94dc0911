//! WireGuardKit's backend: the eight C functions that wireguard-apple's `WireGuardAdapter`
//! calls (`Sources/WireGuardKitGo/api-apple.go`, declared in its `wireguard.h`), with
//! wireguard-go's semantics, so that an app built on WireGuardKit links tunpipe's library in
//! place of `libwg-go.a` and changes no Swift. Declared in `ffi/wireguardkit.h` (hand-written:
//! the signatures are WireGuardKit's, not ours; CI compiles it beside cbindgen's declarations
//! of these functions, so a difference in types fails), and kept out of `ffi/tunpipe.h`.
//!
//! As in wireguard-go, a tunnel is a small integer handle: the smallest one free, from 0.
//! Each is a WireGuard tunnel between the host's TUN fd (a dup, as `start_tun` adopts it)
//! and a UDP socket of its own, configured by UAPI `set` text (keys in hex) at
//! `wgTurnOn` and by `wgSetConfig`, and read by `wgGetConfig`. Failures go to the
//! `wgSetLogger` callback, as wireguard-go's do; no line holds a key. Where tunpipe differs
//! from wireguard-go, the function says so.

use super::error::TUNPIPE_ERR_ENGINE_THREAD;
use super::log::{self as host_log, Levels, Sink};
use super::session::{self, Session};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Arc;
use std::thread;
use tunpipe::wireguard::uapi::{self, ErrorCode};
use tunpipe::wireguard::WireGuard;
use tunpipe::{Config, Engine, UdpDevice};

/// The largest packet a WireGuardKit tunnel takes from the interface. `wgTurnOn` is not told
/// the interface's MTU (WireGuardKit sets it through `NEPacketTunnelNetworkSettings`: 1280
/// on iOS unless the configuration names one), and the engine sizes its buffers at start, so
/// this covers every MTU up to Ethernet's for 4.3 MiB reserved (1420: 4.1 MiB). A larger
/// interface MTU loses the packets above 1500 bytes (counted as oversize).
const WGKIT_MTU: usize = 1500;

/// The running tunnels by handle: wireguard-go's `tunnelHandles` map (behind a lock here;
/// wireguard-go's map has none).
static TUNNELS: Mutex<BTreeMap<c_int, Arc<WgTunnel>>> = Mutex::new(BTreeMap::new());

struct WgTunnel {
    session: Session,
    /// The running stage: `wgSetConfig` and `wgGetConfig` act on it.
    stage: WireGuard,
}

fn tunnel(handle: c_int) -> Option<Arc<WgTunnel>> {
    TUNNELS.lock().get(&handle).cloned()
}

/// The smallest handle no tunnel has, as wireguard-go's loop finds it: `None` when all up to
/// `c_int::MAX` are taken (wireguard-go then answers -1).
fn free_handle<T>(tunnels: &BTreeMap<c_int, T>) -> Option<c_int> {
    let mut handle = 0;
    for &taken in tunnels.keys() {
        if taken != handle {
            break;
        }
        handle += 1;
    }
    (handle < c_int::MAX).then_some(handle)
}

/// The bytes of a C string argument; `None` for NULL.
///
/// # Safety
/// `text` must be NULL or a NUL-terminated string readable for the call.
unsafe fn text_arg<'a>(text: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: the caller's promise: NULL (checked) or a readable C string.
    (!text.is_null()).then(|| unsafe { CStr::from_ptr(text) }.to_bytes())
}

/// A copy of `text` in memory from `malloc`, for a caller that frees it with `free()`;
/// NULL when `malloc` fails.
fn malloc_string(text: &str) -> *mut c_char {
    // SAFETY: malloc of a non-zero size; NULL is handled.
    let copy = unsafe { libc::malloc(text.len() + 1) }.cast::<u8>();
    if copy.is_null() {
        log::error!("out of memory for {} bytes of text", text.len() + 1);
        return std::ptr::null_mut();
    }
    // SAFETY: `copy` holds `text.len() + 1` bytes, a fresh allocation that cannot overlap
    // `text`.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), copy, text.len());
        *copy.add(text.len()) = 0;
    }
    copy.cast()
}

/// WireGuardKit's log callback: `context`, a level (0 verbose, 1 error) and a NUL-terminated
/// line, valid during the call.
pub type WgLoggerFn =
    Option<unsafe extern "C" fn(context: *mut c_void, level: c_int, msg: *const c_char)>;

ffi_fn! {
    /// wireguard-go's `wgSetLogger`: tunpipe's log lines go to `logger_fn` with `context`,
    /// level 0 (verbose: what tunpipe logs at info) or 1 (error: errors and warnings), and
    /// panic messages with level 1. No line holds a key. NULL turns logging off (as
    /// `WireGuardAdapter`'s deinit does); once this returns, the old callback is not running
    /// anywhere. It replaces a callback set by `tunpipe_set_log_callback`, and the other way
    /// round. The callback is called from any thread, tunpipe's included, and inside
    /// tunpipe's calls: it must not call `wgSetLogger`, `wgSetConfig` or `wgGetConfig` (nor
    /// may wireguard-go's, whose `IpcSet` holds the lock `IpcGet` takes). (wireguard-go's
    /// verbose level also carries per-handshake lines; tunpipe logs nothing per packet or
    /// handshake.)
    ///
    /// # Safety
    /// `logger_fn` must be NULL or a function following that contract; `context` must stay
    /// valid, and usable from any thread, until the callback is replaced.
    #[allow(non_snake_case)]
    unsafe fn wgSetLogger(context: *mut c_void, logger_fn: WgLoggerFn) {
        let sink = logger_fn.map(|f| Sink::new(f, context, Levels::WireGuardKit));
        // wgSetLogger has no result: a process whose `log` logger is another's keeps it.
        let _ = host_log::install(sink, log::LevelFilter::Info);
    } ?= ()
}

ffi_fn! {
    /// wireguard-go's `wgTurnOn`: starts a WireGuard tunnel on the host's TUN/utun
    /// `tun_fd`, configured by `settings`, a UAPI `set` body without its `set=1` line
    /// (`PacketTunnelSettingsGenerator.uapiConfiguration()`: `private_key=` in hex,
    /// `listen_port=`, `replace_peers=true`, then per peer `public_key=`, `endpoint=` (an
    /// address), `persistent_keepalive_interval=`, `replace_allowed_ips=true`,
    /// `allowed_ip=`...). Returns the tunnel's handle, the smallest one free from 0, or -1 when
    /// it cannot start (the reason goes to the logger at level 1).
    ///
    /// As `start_tun`, it works on its own dup of `tun_fd` and never closes the host's fd or
    /// changes its flags (wireguard-go sets `O_NONBLOCK` on its dup, which the host's fd
    /// shares). The engine takes packets up to 1500 bytes from the interface.
    ///
    /// Differs from wireguard-go: `settings` NULL is -1 (wireguard-go reads it as empty text
    /// and starts a tunnel with no key); a listen port that cannot be bound is -1 (wireguard-go
    /// returns a handle whose device failed to come up).
    ///
    /// # Safety
    /// `settings` must be NULL or a NUL-terminated string.
    #[allow(non_snake_case)]
    unsafe fn wgTurnOn(settings: *const c_char, tun_fd: i32) -> c_int {
        // SAFETY: the caller's promise.
        match unsafe { text_arg(settings) }.map(|text| turn_on(text, tun_fd)) {
            Some(Ok(handle)) => handle,
            Some(Err(why)) => {
                log::error!("wgTurnOn: {why}");
                -1
            }
            None => {
                log::error!("wgTurnOn: settings is NULL");
                -1
            }
        }
    } ?= -1
}

fn turn_on(settings: &[u8], tun_fd: i32) -> Result<c_int, String> {
    let request =
        uapi::parse_set_bytes(settings).map_err(|e| format!("Unable to set IPC settings: {e}"))?;
    if tun_fd < 0 {
        // Not start_tun's "find the utun fd": wireguard-go's dup(-1) fails.
        return Err(format!(
            "Unable to dup tun fd: {tun_fd} is not a descriptor"
        ));
    }
    let inside = session::adopt(tun_fd).map_err(|e| e.message)?;
    let stage = WireGuard::unconfigured();
    let udp = UdpDevice::bind_port(0).map_err(|e| format!("Unable to bind a UDP socket: {e}"))?;
    stage
        .set_on(&request, Some(&udp))
        .map_err(|e| format!("Unable to set IPC settings: {e}"))?;
    let mut config = Config::default();
    config.mtu = WGKIT_MTU;
    let builder = Engine::builder().config(config);
    let session = Session::start_tunnel(builder, inside, stage.clone(), udp)
        .map_err(|e| format!("Unable to start the tunnel: {}", e.message))?;
    let port = session.with_udp(|udp| udp.and_then(|u| u.local_addr().ok()));
    let peers = stage.counters().peer_count();
    let tunnel = Arc::new(WgTunnel { session, stage });
    let mut tunnels = TUNNELS.lock();
    let Some(handle) = free_handle(&tunnels) else {
        drop(tunnels);
        let _ = tunnel.session.stop();
        return Err("every handle is taken".into());
    };
    tunnels.insert(handle, tunnel);
    drop(tunnels);
    log::info!(
        "wgTurnOn: tunnel {handle} up on fd {tun_fd}, UDP {}, {peers} peer(s)",
        port.map_or("(unknown)".to_string(), |a| a.to_string())
    );
    Ok(handle)
}

ffi_fn! {
    /// wireguard-go's `wgTurnOff`: stops the tunnel and frees its handle. It returns once
    /// every engine thread is joined and the engine's dup of the fd and its UDP socket are
    /// closed (the host may close the fd then); a `wgBumpSockets` rebind under way ends at its
    /// next step. A handle no tunnel has (never, or no longer, turned on) does nothing. Several threads may
    /// turn one tunnel off at once; each returns once it is off.
    ///
    /// From the log callback on one of the tunnel's own threads, the stop is requested and
    /// finished on another thread: it returns at once.
    #[allow(non_snake_case)]
    fn wgTurnOff(handle: c_int) {
        let Some(tunnel) = tunnel(handle) else {
            return;
        };
        match tunnel.session.stop() {
            Err(e) if e.code == TUNPIPE_ERR_ENGINE_THREAD => {
                // This thread is one the stop joins: another finishes it.
                let reaper = tunnel.clone();
                let spawned = thread::Builder::new()
                    .name("tunpipe-wg-off".into())
                    .spawn(move || {
                        let _ = reaper.session.stop();
                    });
                if let Err(e) = spawned {
                    log::error!("wgTurnOff: tunnel {handle}: no thread to finish the stop: {e}");
                }
            }
            result => {
                if let Err(e) = result {
                    log::info!("wgTurnOff: tunnel {handle} had stopped: {}", e.message);
                }
            }
        }
        let mut tunnels = TUNNELS.lock();
        if tunnels.get(&handle).is_some_and(|t| Arc::ptr_eq(t, &tunnel)) {
            tunnels.remove(&handle);
            drop(tunnels);
            log::info!("wgTurnOff: tunnel {handle} is off");
        }
    } ?= ()
}

ffi_fn! {
    /// wireguard-go's `wgSetConfig`: applies a UAPI `set` body (without `set=1`) to the
    /// running tunnel. Returns 0, or wireguard-go's negative code: -EPROTO for a line without
    /// `=`, -EINVAL for an unknown key or a bad value, -EIO for a line past 4 KiB,
    /// -EADDRINUSE when a new `listen_port` cannot be bound. The reason goes to the logger
    /// (level 1), naming the line and the key, never a value.
    ///
    /// Peers that `replace_peers=true` lists again with the same preshared key keep their
    /// sessions (wireguard-go makes every peer anew: a new handshake for each). A request
    /// that fails changes nothing (wireguard-go keeps the lines before the bad one applied).
    ///
    /// A handle no tunnel has: 0, as wireguard-go answers (and a line at level 1). `settings`
    /// NULL: -EINVAL (wireguard-go reads it as empty text: 0).
    ///
    /// # Safety
    /// `settings` must be NULL or a NUL-terminated string.
    #[allow(non_snake_case)]
    unsafe fn wgSetConfig(handle: c_int, settings: *const c_char) -> i64 {
        let Some(tunnel) = tunnel(handle) else {
            log::error!("wgSetConfig: no tunnel {handle}: nothing applied");
            return 0;
        };
        // SAFETY: the caller's promise.
        let Some(text) = (unsafe { text_arg(settings) }) else {
            log::error!("wgSetConfig: tunnel {handle}: settings is NULL");
            return i64::from(ErrorCode::Invalid.errno());
        };
        let result = uapi::parse_set_bytes(text).and_then(|request| {
            tunnel.session.with_udp(|udp| tunnel.stage.set_on(&request, udp))
        });
        match result {
            Ok(_) => 0,
            Err(e) => {
                log::error!("wgSetConfig: tunnel {handle}: Unable to set IPC settings: {e}");
                i64::from(e.errno())
            }
        }
    } ?= i64::from(ErrorCode::Unknown.errno())
}

ffi_fn! {
    /// wireguard-go's `wgGetConfig`: the tunnel's UAPI `get` text as wireguard-go's `IpcGet`
    /// writes it: `private_key=` (hex), `listen_port=` (the port bound), `fwmark=` when set,
    /// then per peer `public_key=`, `preshared_key=`, `protocol_version=1`, `endpoint=`,
    /// `last_handshake_time_sec=`, `last_handshake_time_nsec=`, `tx_bytes=`, `rx_bytes=`,
    /// `persistent_keepalive_interval=` and `allowed_ip=` lines, each ending in `\n`, without
    /// the `errno=0` status and empty line that the configuration socket adds. In memory from
    /// `malloc`: free it with `free()`. NULL for a handle no tunnel has.
    ///
    /// Peers come in the order they were added (wireguard-go's in Go's map order). The text
    /// holds the private key: it is the host's, never logged.
    #[allow(non_snake_case)]
    fn wgGetConfig(handle: c_int) -> *mut c_char {
        let Some(tunnel) = tunnel(handle) else {
            return std::ptr::null_mut();
        };
        let text = tunnel.stage.get();
        let status = uapi::format_status(0);
        malloc_string(text.strip_suffix(status.as_str()).unwrap_or(&text))
    } ?= std::ptr::null_mut()
}

ffi_fn! {
    /// wireguard-go's `wgBumpSockets`: the network path changed. Returns at once; the tunnel's
    /// rebind (`tunpipe_rebind`, one implementation for both) runs on a thread of its own:
    /// the peers' endpoints are looked up again, the UDP socket is replaced (the same port if
    /// it can be had; tried up to 10 times, 0.5 s apart, as wireguard-go does), and every
    /// peer gets a handshake initiation from the new one; with no answer in 5 s, the socket
    /// moves to a fresh port. Calls while it runs make it start over. `wgTurnOff` ends it. A
    /// handle no tunnel has does nothing.
    ///
    /// Differs from wireguard-go, which only rebinds and keeps the port even when the path
    /// behind it is dead.
    #[allow(non_snake_case)]
    fn wgBumpSockets(handle: c_int) {
        if let Some(tunnel) = tunnel(handle) {
            if let Err(e) = tunnel.session.rebind() {
                log::error!("wgBumpSockets: tunnel {handle}: Unable to update bind: {}", e.message);
            }
        }
    } ?= ()
}

ffi_fn! {
    /// wireguard-go's `wgDisableSomeRoamingForBrokenMobileSemantics`: from now on, a peer that
    /// has an endpoint keeps it, instead of following the source address of its
    /// authenticated datagrams. WireGuardKit calls it on iOS after each `wgTurnOn` and
    /// `wgSetConfig`. A handle no tunnel has does nothing.
    #[allow(non_snake_case)]
    fn wgDisableSomeRoamingForBrokenMobileSemantics(handle: c_int) {
        if let Some(tunnel) = tunnel(handle) {
            tunnel.stage.disable_roaming();
        }
    } ?= ()
}

ffi_fn! {
    /// wireguard-go's `wgVersion`: `"tunpipe "` and tunpipe's version, in memory from
    /// `malloc`, as wireguard-go's is: `WireGuardAdapter.backendVersion` frees it with
    /// `free()`, so a C caller frees it too. NULL when `malloc` fails.
    #[allow(non_snake_case)]
    fn wgVersion() -> *const c_char {
        malloc_string(concat!("tunpipe ", env!("CARGO_PKG_VERSION"))).cast_const()
    } ?= std::ptr::null()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_handle_is_the_smallest_one_no_tunnel_has() {
        let taken =
            |keys: &[c_int]| -> BTreeMap<c_int, ()> { keys.iter().map(|&k| (k, ())).collect() };
        assert_eq!(free_handle(&taken(&[])), Some(0));
        assert_eq!(free_handle(&taken(&[0, 1, 3])), Some(2));
        assert_eq!(free_handle(&taken(&[1, 2])), Some(0));
        assert_eq!(free_handle(&taken(&[0, 1, 2])), Some(3));
    }

    fn hex(key: &tunpipe::wireguard::Key) -> String {
        key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn get_text_ends_as_wireguard_go_ipc_get_does() {
        let stage = WireGuard::unconfigured();
        let key = tunpipe::wireguard::Key::generate();
        let peer = tunpipe::wireguard::Key::generate().public_key();
        let request = uapi::parse_set(&format!(
            "private_key={}\nreplace_peers=true\npublic_key={}\nallowed_ip=10.0.0.2/32\n",
            hex(&key),
            hex(&peer)
        ))
        .unwrap();
        stage.set_on(&request, None).unwrap();
        let text = stage.get();
        let body = text.strip_suffix(uapi::format_status(0).as_str()).unwrap();
        assert!(body.ends_with("allowed_ip=10.0.0.2/32\n"), "{body}");
        assert!(!body.contains("errno"));
    }

    #[test]
    fn a_port_change_on_a_stopped_tunnel_changes_nothing() {
        let stage = WireGuard::unconfigured();
        let before = stage.get();
        let request = uapi::parse_set("listen_port=4242\n").unwrap();
        let e = stage.set_on(&request, None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::PortInUse);
        assert_eq!(stage.get(), before);
    }
}
