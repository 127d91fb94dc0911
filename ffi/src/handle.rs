//! The handle API: any number of engines, each behind an opaque `TunpipeEngine*`.

use super::config::TunpipeConfig;
use super::error::{FfiError, TUNPIPE_OK};
use super::report::{TunpipeLatency, TunpipePeerStats, TunpipeStats, TunpipeTunnelStats};
use super::session::Session;
use super::util::{check_ptr, copy_text, write_out};
use parking_lot::Mutex;
use std::ffi::c_char;

/// An engine started with `tunpipe_engine_start`. Opaque to C.
#[derive(Debug)]
pub struct TunpipeEngine {
    session: Session,
    last_error: Mutex<String>,
}

impl TunpipeEngine {
    /// Records a failed call on this handle as its last error (also the thread's).
    pub(crate) fn set_last_error(&self, name: &str, e: &FfiError) {
        *self.last_error.lock() = e.message_for(name);
    }
}

ffi_fn! {
    /// Starts an engine on `fd` without blocking and stores its handle in `*out`.
    ///
    /// `fd` is the host's TUN/utun descriptor: tunpipe works on its own dup and never closes
    /// `fd` or changes its flags (the fd contract is at `start_tun`). `fd < 0` finds the utun
    /// fd (Apple only; elsewhere `TUNPIPE_ERR_UNSUPPORTED`). The config is copied; its
    /// callback context must stay valid until the engine is stopped.
    ///
    /// Returns `TUNPIPE_OK`, or `TUNPIPE_ERR_NULL_POINTER`, `TUNPIPE_ERR_STRUCT_SIZE`,
    /// `TUNPIPE_ERR_INVALID_ARGUMENT`, `TUNPIPE_ERR_CONFIG`, `TUNPIPE_ERR_BAD_FD`,
    /// `TUNPIPE_ERR_NO_UTUN_FD`, `TUNPIPE_ERR_UNSUPPORTED`, `TUNPIPE_ERR_DEVICE`,
    /// `TUNPIPE_ERR_RESOURCES`, `TUNPIPE_ERR_NO_MEMORY` or `TUNPIPE_ERR_SPAWN` (`*out` is then
    /// left untouched).
    ///
    /// # Safety
    /// `config` must be NULL or point to a readable `TunpipeConfig` (filled by
    /// `tunpipe_config_default`); `out` must be NULL or point to a writable pointer.
    unsafe fn tunpipe_engine_start(
        config: *const TunpipeConfig,
        fd: i32,
        out: *mut *mut TunpipeEngine,
    ) -> i32 {
        // Checked before anything starts, so that a bad `out` leaves nothing running.
        check_ptr(out.cast_const(), "out")?;
        // SAFETY: the caller promises `config` is NULL or readable, and its text pointer NULL
        // or a readable C string.
        let plan = unsafe { TunpipeConfig::read(config)?.to_plan() }?;
        let session = Session::start(&plan, fd)?;
        let handle = Box::into_raw(Box::new(TunpipeEngine {
            session,
            last_error: Mutex::new(String::new()),
        }));
        // SAFETY: checked above; the caller promises it is writable.
        unsafe { write_out(out, "out", handle) }?;
        Ok(TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Stops the engine and returns once every thread is joined and its dup of the fd is
    /// closed: after it returns, the engine no longer touches the fd. Several threads may stop
    /// at once. Returns `TUNPIPE_OK`, the fatal error that had stopped the engine, or
    /// `TUNPIPE_ERR_ENGINE_THREAD` from one of the engine's own threads (its stage callback, or
    /// a log callback called there) or from a log callback inside this engine's own stop: the
    /// stop is requested, not joined, and the call returns at once.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle from `tunpipe_engine_start`.
    unsafe fn tunpipe_engine_stop(engine: &TunpipeEngine) -> i32 {
        engine.session.stop().map(|()| TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Blocks until the engine is stopped (by `tunpipe_engine_stop` on another thread, or by a
    /// fatal error) and joined. Returns as `tunpipe_engine_stop` does.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle from `tunpipe_engine_start`.
    unsafe fn tunpipe_engine_wait(engine: &TunpipeEngine) -> i32 {
        engine.session.wait().map(|()| TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Stops the engine if it runs, joins it, and frees the handle. Returns `TUNPIPE_OK` or
    /// `TUNPIPE_ERR_NULL_POINTER`; a fatal error the engine had is not reported here (read it
    /// from stop or wait first).
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle from `tunpipe_engine_start`, used by no other
    /// thread during or after this call, and not freed before. Never call it from the engine's
    /// own stage callback.
    unsafe fn tunpipe_engine_free(engine: *mut TunpipeEngine) -> i32 {
        check_ptr(engine.cast_const(), "engine")?;
        // SAFETY: the caller hands back ownership of a Box made by tunpipe_engine_start.
        let handle = unsafe { Box::from_raw(engine) };
        if let Err(e) = handle.session.stop() {
            log::debug!(
                "tunpipe_engine_free: engine had stopped with: {}",
                e.message
            );
        }
        drop(handle);
        Ok(TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Copies the engine's counters into `*out` (cheap, lock-free; also after stop). Set
    /// `out->size = sizeof(TunpipeStats)` first.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle; `out` NULL or a writable `TunpipeStats` whose
    /// `size` field is set.
    unsafe fn tunpipe_engine_stats(engine: &TunpipeEngine, out: *mut TunpipeStats) -> i32 {
        // SAFETY: the caller's promise, passed on.
        unsafe { engine.session.copy_stats(out) }
    }
}

ffi_fn! {
    /// Copies latency percentiles (engine and stage) into `*out`. Set
    /// `out->size = sizeof(TunpipeLatency)` first. While running, the writer thread answers
    /// (at once, even when parked); after stop, the final histograms are kept. Returns
    /// `TUNPIPE_ERR_STOPPING` between a stop request and the end of the join.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle; `out` NULL or a writable `TunpipeLatency` whose
    /// `size` field is set.
    unsafe fn tunpipe_engine_latency(engine: &TunpipeEngine, out: *mut TunpipeLatency) -> i32 {
        // SAFETY: the caller's promise, passed on.
        unsafe { engine.session.copy_latency(out) }
    }
}

ffi_fn! {
    /// Writes one latency histogram (`TUNPIPE_LATENCY_ENGINE` or `TUNPIPE_LATENCY_STAGE`) in
    /// HdrHistogram's V2-deflate encoding, base64, NUL-terminated, into `buf[0..len]`.
    /// `*needed` (if not NULL) receives the bytes required including the NUL. When `len` is too
    /// small, nothing is written to `buf` and `TUNPIPE_ERR_BUFFER_TOO_SMALL` is returned: call
    /// with `buf = NULL, len = 0` to ask for the size.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle; `buf` NULL or writable for `len` bytes;
    /// `needed` NULL or writable.
    unsafe fn tunpipe_engine_latency_base64(
        engine: &TunpipeEngine,
        which: u32,
        buf: *mut c_char,
        len: usize,
        needed: *mut usize,
    ) -> i32 {
        // SAFETY: the caller's promise, passed on.
        unsafe { engine.session.copy_latency_base64(which, buf, len, needed) }
    }
}

ffi_fn! {
    /// Copies the handle's last error message (NUL-terminated, truncated to fit) into
    /// `buf[0..len]` and returns its full length in bytes without the NUL, like `snprintf`
    /// (0: no error yet). `buf` may be NULL when `len` is 0.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle; `buf` NULL or writable for `len` bytes.
    unsafe fn tunpipe_engine_last_error(
        engine: *const TunpipeEngine,
        buf: *mut c_char,
        len: usize,
    ) -> i32 {
        check_ptr(engine, "engine")?;
        // SAFETY: checked non-null and aligned; the caller promises a live handle.
        let message = unsafe { &*engine }.last_error.lock().clone();
        // SAFETY: the caller promises `buf` holds `len` bytes.
        unsafe { copy_text(&message, buf, len) }
    }
}

ffi_fn! {
    /// Stores the bytes the engine reserved at start (pool, rings, histograms, a tunnel's
    /// per-peer state) in `*out`.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle; `out` NULL or writable.
    unsafe fn tunpipe_engine_reserved_bytes(engine: &TunpipeEngine, out: *mut u64) -> i32 {
        // SAFETY: the caller promises `out` is NULL or writable.
        unsafe { write_out(out, "out", engine.session.reserved_bytes() as u64) }?;
        Ok(TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Tells the engine's tunnel that the network path changed: as `tunpipe_rebind`, for a
    /// handle. Returns `TUNPIPE_OK`, `TUNPIPE_ERR_NOT_RUNNING` once the engine has stopped,
    /// `TUNPIPE_ERR_UNSUPPORTED` when it runs no tunnel, or `TUNPIPE_ERR_SPAWN`.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle from `tunpipe_engine_start`.
    unsafe fn tunpipe_engine_rebind(engine: &TunpipeEngine) -> i32 {
        engine.session.rebind().map(|()| TUNPIPE_OK)
    }
}

ffi_fn! {
    /// As `tunpipe_disable_roaming`, for a handle. Returns `TUNPIPE_OK` (also after stop) or
    /// `TUNPIPE_ERR_UNSUPPORTED` when the engine runs no tunnel.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle from `tunpipe_engine_start`.
    unsafe fn tunpipe_engine_disable_roaming(engine: &TunpipeEngine) -> i32 {
        engine.session.disable_roaming().map(|()| TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Suspends the engine: as `tunpipe_suspend`, for a handle. Returns `TUNPIPE_OK` or
    /// `TUNPIPE_ERR_NOT_RUNNING` once the engine has stopped.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle from `tunpipe_engine_start`.
    unsafe fn tunpipe_engine_suspend(engine: &TunpipeEngine) -> i32 {
        engine.session.suspend(true).map(|()| TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Resumes the engine: as `tunpipe_resume`, for a handle. Returns `TUNPIPE_OK` or
    /// `TUNPIPE_ERR_NOT_RUNNING` once the engine has stopped.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle from `tunpipe_engine_start`.
    unsafe fn tunpipe_engine_resume(engine: &TunpipeEngine) -> i32 {
        engine.session.suspend(false).map(|()| TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Copies the engine's tunnel figures into `*out` (also after stop). Set
    /// `out->size = sizeof(TunpipeTunnelStats)` first. Returns `TUNPIPE_ERR_UNSUPPORTED` when
    /// the engine runs no tunnel.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle; `out` NULL or a writable `TunpipeTunnelStats`
    /// whose `size` field is set.
    unsafe fn tunpipe_engine_tunnel_stats(
        engine: &TunpipeEngine,
        out: *mut TunpipeTunnelStats,
    ) -> i32 {
        // SAFETY: the caller's promise, passed on.
        unsafe { engine.session.copy_tunnel_stats(out) }
    }
}

ffi_fn! {
    /// Copies the figures of the engine's peer `index` (0-based, in the configuration's
    /// order; `TunpipeTunnelStats.peers` counts them) into `*out` (also after stop). Set
    /// `out->size = sizeof(TunpipePeerStats)` first.
    ///
    /// Peers may come and go while the tunnel runs, so a count read before may be out of
    /// date by the time a loop reaches its end: read `peers` (to size an array, say), then ask
    /// for 0, 1, 2, ... and stop at `TUNPIPE_ERR_NOT_FOUND`, which is the end of the list, not
    /// a failure. Each call copies one peer as it is at that call; a peer removed during the
    /// loop moves the later ones down by one (one may be missed or seen twice: `public_key`
    /// tells them apart).
    ///
    /// Returns `TUNPIPE_OK`, `TUNPIPE_ERR_NOT_FOUND` for an index at or past the number of
    /// peers (`*out` is then left untouched), `TUNPIPE_ERR_UNSUPPORTED` when the engine runs
    /// no tunnel, `TUNPIPE_ERR_NULL_POINTER` or `TUNPIPE_ERR_STRUCT_SIZE`.
    ///
    /// # Safety
    /// `engine` must be NULL or a live handle; `out` NULL or a writable `TunpipePeerStats`
    /// whose `size` field is set.
    unsafe fn tunpipe_engine_peer_stats(
        engine: &TunpipeEngine,
        index: u32,
        out: *mut TunpipePeerStats,
    ) -> i32 {
        // SAFETY: the caller's promise, passed on.
        unsafe { engine.session.copy_peer_stats(index, out) }
    }
}
