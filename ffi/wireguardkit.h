/*
 * tunpipe as WireGuardKit's backend: the eight functions wireguard-apple's WireGuardAdapter
 * calls, with the declarations of WireGuardKit's own Sources/WireGuardKitGo/wireguard.h and
 * wireguard-go's semantics (api-apple.go), so that an app built on WireGuardKit links
 * libtunpipe_ffi.a in place of libwg-go.a and changes no Swift. swift/README.md says how.
 *
 * Written by hand, not by cbindgen: the signatures are WireGuardKit's (its `int` handles, its
 * logger_fn_t), not tunpipe's. .ci/ffi.sh compiles this header beside cbindgen's declarations
 * of the same Rust functions (ffi/src/wgkit.rs), so any difference in a type fails CI; and
 * .ci/apple.sh checks that the iOS archive exports all eight. They are not in tunpipe.h.
 *
 * The calls never unwind into C or abort the host: a handle no tunnel has (never turned on,
 * or turned off), NULL strings and malformed settings get the answers documented below.
 * Reasons go to the wgSetLogger callback; no log line holds a key. Several tunnels may run at
 * once. Where tunpipe differs from wireguard-go, the function says so.
 */
#ifndef TUNPIPE_WIREGUARDKIT_H
#define TUNPIPE_WIREGUARDKIT_H

#include <sys/types.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Receives one log line: `context` as given to wgSetLogger, a level (0 verbose, 1 error) and
 * a NUL-terminated message, valid during the call. Called from any thread, tunpipe's
 * included, and inside tunpipe's calls: it must not call wgSetLogger, wgSetConfig or
 * wgGetConfig (as with wireguard-go, whose IpcSet holds the lock IpcGet takes). */
typedef void(*logger_fn_t)(void *context, int level, const char *msg);

/* tunpipe's log lines go to `logger_fn` with `context`: level 0 for what tunpipe logs at info,
 * 1 for errors and warnings (and panic messages). NULL turns logging off; once the call
 * returns, the old callback runs nowhere. It replaces a tunpipe_set_log_callback callback
 * (tunpipe.h), and the other way round. Nothing is logged per packet or per handshake
 * (wireguard-go's verbose level has a line per handshake). */
extern void wgSetLogger(void *context, logger_fn_t logger_fn);

/* Starts a WireGuard tunnel on the TUN/utun `tun_fd`, configured by `settings`: a UAPI `set`
 * body without its `set=1` line, as PacketTunnelSettingsGenerator writes it (private_key= in
 * hex, listen_port=, replace_peers=true, then per peer public_key=, preshared_key=,
 * endpoint= (an address), persistent_keepalive_interval=, replace_allowed_ips=true,
 * allowed_ip=...). Returns the tunnel's handle, the smallest one free from 0, or -1 (the
 * reason goes to the logger at level 1). tunpipe works on its own dup of `tun_fd`, never
 * closes the host's fd and never changes its flags (wireguard-go sets O_NONBLOCK on its dup,
 * which the host's fd shares). It takes packets of up to 1500 bytes from the interface.
 * Differs from wireguard-go: `settings` NULL is -1 (wireguard-go starts a tunnel with no
 * key), and so is a listen_port that cannot be bound (wireguard-go returns a handle whose
 * device did not come up). */
extern int wgTurnOn(const char *settings, int32_t tun_fd);

/* Stops the tunnel and frees its handle. Returns once the engine no longer touches the fd
 * (its dup and its UDP socket are closed; the host may close the fd) and a wgBumpSockets
 * retry has ended. Several threads may turn one tunnel off at once; a handle no tunnel has
 * does nothing. */
extern void wgTurnOff(int handle);

/* Applies a UAPI `set` body (without `set=1`) to the running tunnel. Returns 0, or
 * wireguard-go's negative code: -EPROTO (a line without `=`), -EINVAL (an unknown key, a bad
 * value), -EIO (a line past 4 KiB), -EADDRINUSE (a listen_port that cannot be bound).
 * Peers that replace_peers=true lists again with the same preshared key keep their sessions
 * (wireguard-go makes every peer anew), and a request that fails changes nothing
 * (wireguard-go keeps the lines before the bad one). A handle no tunnel has: 0, as
 * wireguard-go answers. `settings` NULL: -EINVAL (wireguard-go reads it as empty: 0). */
extern int64_t wgSetConfig(int handle, const char *settings);

/* The tunnel's UAPI `get` text as wireguard-go's IpcGet writes it (private_key=, listen_port=
 * (the port bound), fwmark= when set, then per peer public_key=, preshared_key=,
 * protocol_version=1, endpoint=, last_handshake_time_sec=, last_handshake_time_nsec=,
 * tx_bytes=, rx_bytes=, persistent_keepalive_interval=, allowed_ip= lines, each ending in
 * '\n'; no errno= line), from malloc: free() it. NULL for a handle no tunnel has. Peers come
 * in the order they were added (wireguard-go's in Go's map order). */
extern char *wgGetConfig(int handle);

/* The network path changed. Returns at once; a thread of the tunnel replaces its UDP socket
 * (the same port if it can be had), then sends each peer a keepalive from it, trying up to
 * 10 times, 0.5 s apart, as wireguard-go does; calls while it tries start its count again.
 * wgTurnOff stops it. A peer without a session gets a handshake initiation instead
 * (wireguard-go sends only to peers with a session). A handle no tunnel has does nothing. */
extern void wgBumpSockets(int handle);

/* From now on a peer that has an endpoint keeps it, instead of following the source of its
 * authenticated datagrams (WireGuardKit calls it on iOS after wgTurnOn and wgSetConfig). A
 * handle no tunnel has does nothing. */
extern void wgDisableSomeRoamingForBrokenMobileSemantics(int handle);

/* "tunpipe " and tunpipe's version, from malloc as wireguard-go's is:
 * WireGuardAdapter.backendVersion frees it with free(), and so must a C caller. NULL when
 * malloc fails. (WireGuardKit's header declares it `wgVersion()`; `(void)` is the same
 * function type, with a prototype.) */
extern const char *wgVersion(void);

#ifdef __cplusplus
}
#endif

#endif /* TUNPIPE_WIREGUARDKIT_H */
