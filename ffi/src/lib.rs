//! The C ABI of tunpipe (`ffi/tunpipe.h`, generated from this crate by cbindgen): it converts
//! types and calls the safe API of the `tunpipe` crate; no engine logic lives here.
//!
//! - `global`: the seed's `start_tun(fd)` / `stop_tun()` pair and its global config.
//! - `handle`: engines behind opaque `TunpipeEngine*` handles (several may run at once).
//! - `stage`: the C callback stage. `log`: the host's log callback and panic hook.
//! - `wgkit`: WireGuardKit's eight backend functions (`wgTurnOn`, ...; `ffi/wireguardkit.h`),
//!   so an app built on WireGuardKit links tunpipe in place of wireguard-go.
//! - `wireguard`: a wg-quick text's settings for the host (addresses, DNS, MTU, routes).
//!   The tunnel itself is `TunpipeConfig::wireguard_config`; rebind, tunnel and peer figures
//!   are in `global` and `handle`.
//! - `macros`: `ffi_fn!`, the one way an entry point is written; `util`: the pointer checks
//!   and copies they share.
//!
//! Every entry point checks its pointers (NULL or misaligned is an error code), runs its
//! body under `catch_unwind` and returns a documented `TUNPIPE_*` code: nothing unwinds into
//! C, nothing aborts the host. That needs `panic = "unwind"`, which every profile keeps.
//! A failure is also the calling thread's last error (`tunpipe_last_error`) and a log line.

#[macro_use]
mod macros;
mod config;
mod error;
mod global;
mod handle;
mod log;
mod report;
mod session;
mod stage;
mod util;
mod wgkit;
mod wireguard;

pub use config::{
    TunpipeConfig, TUNPIPE_SPIN_US_MAX, TUNPIPE_STAGE_CALLBACK, TUNPIPE_STAGE_PASSTHROUGH,
    TUNPIPE_STAGE_REFLECT,
};
pub use error::{
    TUNPIPE_ERR_ALREADY_RUNNING, TUNPIPE_ERR_BAD_FD, TUNPIPE_ERR_BUFFER_TOO_SMALL,
    TUNPIPE_ERR_CONFIG, TUNPIPE_ERR_DEVICE, TUNPIPE_ERR_ENGINE_THREAD,
    TUNPIPE_ERR_INVALID_ARGUMENT, TUNPIPE_ERR_NOT_FOUND, TUNPIPE_ERR_NOT_RUNNING,
    TUNPIPE_ERR_NO_MEMORY, TUNPIPE_ERR_NO_UTUN_FD, TUNPIPE_ERR_NULL_POINTER, TUNPIPE_ERR_PANIC,
    TUNPIPE_ERR_RESOURCES, TUNPIPE_ERR_SPAWN, TUNPIPE_ERR_STAGE_PANICS, TUNPIPE_ERR_STOPPING,
    TUNPIPE_ERR_STRUCT_SIZE, TUNPIPE_ERR_UNSUPPORTED, TUNPIPE_OK,
};
pub use global::{
    start_tun, stop_tun, tunpipe_disable_roaming, tunpipe_latency, tunpipe_latency_base64,
    tunpipe_peer_stats, tunpipe_rebind, tunpipe_resume, tunpipe_set_config, tunpipe_stats,
    tunpipe_suspend, tunpipe_tunnel_stats,
};
pub use handle::{
    tunpipe_engine_disable_roaming, tunpipe_engine_free, tunpipe_engine_last_error,
    tunpipe_engine_latency, tunpipe_engine_latency_base64, tunpipe_engine_peer_stats,
    tunpipe_engine_rebind, tunpipe_engine_reserved_bytes, tunpipe_engine_resume,
    tunpipe_engine_start, tunpipe_engine_stats, tunpipe_engine_stop, tunpipe_engine_suspend,
    tunpipe_engine_tunnel_stats, tunpipe_engine_wait, TunpipeEngine,
};
pub use log::{
    tunpipe_set_log_callback, TunpipeLogCallback, TUNPIPE_LOG_DEBUG, TUNPIPE_LOG_ERROR,
    TUNPIPE_LOG_INFO, TUNPIPE_LOG_OFF, TUNPIPE_LOG_TRACE, TUNPIPE_LOG_WARN,
};
pub use report::{
    TunpipeDirectionStats, TunpipeLatency, TunpipePeerStats, TunpipePercentiles, TunpipeStats,
    TunpipeTunnelStats, TUNPIPE_LATENCY_ENGINE, TUNPIPE_LATENCY_STAGE,
};
pub use stage::{
    TunpipePacket, TunpipeStageCallback, TUNPIPE_VERDICT_DROP, TUNPIPE_VERDICT_FORWARD,
};
pub use wgkit::{
    wgBumpSockets, wgDisableSomeRoamingForBrokenMobileSemantics, wgGetConfig, wgSetConfig,
    wgSetLogger, wgTurnOff, wgTurnOn, wgVersion, WgLoggerFn,
};
pub use wireguard::tunpipe_wireguard_settings;

use error::FfiError;
use std::ffi::c_char;
use util::write_out;

/// The ABI version this header describes. It changes only when an existing function or
/// struct field changes meaning or layout; growth into `reserved` bytes does not change it.
/// Compare it with `tunpipe_abi_version()` at run time.
pub const TUNPIPE_ABI_VERSION: u32 = 1;

/// The ABI version of the linked library (`TUNPIPE_ABI_VERSION` of its header).
#[unsafe(no_mangle)]
pub extern "C" fn tunpipe_abi_version() -> u32 {
    TUNPIPE_ABI_VERSION
}

ffi_fn! {
/// Fills `*config` with the defaults: reflect stage, inline stage (0 workers), ring 256,
/// MTU 1500, head- and tailroom 64, batch 64, latency on, no pinning, 1000 stage panics,
/// the platform's memory budget, a 50 µs spin window. The struct's `size` is set;
/// `reserved` is zeroed.
///
/// # Safety
/// `config` must be NULL or writable for `sizeof(TunpipeConfig)` bytes.
    unsafe fn tunpipe_config_default(config: *mut TunpipeConfig) -> i32 {
        // SAFETY: the caller promises `config` is NULL or writable.
        unsafe { write_out(config, "config", TunpipeConfig::defaults()) }?;
        Ok(TUNPIPE_OK)
    }
}

ffi_fn! {
/// Checks `*config` as a start would, without starting anything. Returns `TUNPIPE_OK` or
/// the error a start would return (`TUNPIPE_ERR_CONFIG`, ...); the message is the thread's
/// last error.
///
/// # Safety
/// `config` must be NULL or point to a readable `TunpipeConfig`.
    unsafe fn tunpipe_config_validate(config: *const TunpipeConfig) -> i32 {
        // SAFETY: the caller promises `config` is NULL or readable, and its text pointer NULL
        // or a readable C string.
        unsafe { TunpipeConfig::read(config)?.to_plan() }?.validate()?;
        Ok(TUNPIPE_OK)
    }
}

ffi_fn! {
/// Stores in `*out` the bytes an engine with `*config` would reserve at start (pool, rings,
/// histograms, and a tunnel's per-peer state), so a host can check it against its memory
/// limit first. It does not check `memory_budget` (`tunpipe_config_validate` does).
///
/// # Safety
/// `config` must be NULL or readable; `out` NULL or writable.
    unsafe fn tunpipe_config_reserved_bytes(config: *const TunpipeConfig, out: *mut u64) -> i32 {
        // SAFETY: the caller promises `config` is NULL or readable, and its text pointer NULL
        // or a readable C string.
        let plan = unsafe { TunpipeConfig::read(config)?.to_plan() }?;
        plan.validate_fields()?;
        let bytes = plan.reserved_bytes() as u64;
        // SAFETY: the caller promises `out` is NULL or writable.
        unsafe { write_out(out, "out", bytes) }?;
        Ok(TUNPIPE_OK)
    }
}

ffi_fn! {
/// Copies the calling thread's last error message (NUL-terminated, truncated to fit) into
/// `buf[0..len]` and returns its full length in bytes without the NUL, like `snprintf`
/// (0: no error on this thread yet). Every failing call sets it, handle calls included.
/// `buf` may be NULL when `len` is 0.
///
/// # Safety
/// `buf` must be NULL or writable for `len` bytes.
    unsafe fn tunpipe_last_error(buf: *mut c_char, len: usize) -> i32 {
        // Read before anything can fail: a failure of this very call would replace it.
        let message = error::thread_error();
        // SAFETY: the caller promises `buf` holds `len` bytes.
        unsafe { util::copy_text(&message, buf, len) }
    }
}

/// A static, NUL-terminated description of a `TUNPIPE_*` code (never NULL).
#[unsafe(no_mangle)]
pub extern "C" fn tunpipe_error_string(code: i32) -> *const c_char {
    error::describe(code).as_ptr()
}

ffi_fn! {
/// Finds the utun fd of the packet tunnel by scanning every descriptor the process may have
/// (0 up to `getdtablesize()`), skipping the ones tunpipe holds for running engines, for a
/// utun control socket (Apple; the scan of the tun-rs iOS guide). Returns the fd,
/// `TUNPIPE_ERR_NO_UTUN_FD` when none is found, or `TUNPIPE_ERR_UNSUPPORTED` off Apple.
    fn tunpipe_find_utun_fd() -> i32 {
        session::resolve_fd(-1)
    }
}

ffi_fn! {
/// Stores in `*out` the memory the process may still allocate before iOS/tvOS's jetsam limit
/// (`os_proc_available_memory()`), and returns `TUNPIPE_OK`. Elsewhere the call does not
/// exist: `*out` is set to 0 and `TUNPIPE_ERR_UNSUPPORTED` returned.
///
/// # Safety
/// `out` must be NULL or writable.
    unsafe fn tunpipe_available_memory(out: *mut u64) -> i32 {
        let available = tunpipe::sys::available_memory();
        // SAFETY: the caller promises `out` is NULL or writable.
        unsafe { write_out(out, "out", available.unwrap_or(0)) }?;
        match available {
            Some(_) => Ok(TUNPIPE_OK),
            None => Err(FfiError::new(
                TUNPIPE_ERR_UNSUPPORTED,
                "os_proc_available_memory exists only on iOS and tvOS",
            )),
        }
    }
}
