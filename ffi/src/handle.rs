//! The handle API: any number of engines, each behind an opaque `TunpipeEngine*`.

use super::config::TunpipeConfig;
use super::error::{
    copy_text, guard, thread_error, FfiError, FfiResult, TUNPIPE_ERR_BUFFER_TOO_SMALL,
    TUNPIPE_ERR_NULL_POINTER, TUNPIPE_OK,
};
use super::report::{latency_base64, write_sized, TunpipeLatency, TunpipeStats};
use super::session::Session;
use super::{check_ptr, check_ptr_mut};
use parking_lot::Mutex;
use std::ffi::c_char;

/// An engine started with `tunpipe_engine_start`. Opaque to C.
#[derive(Debug)]
pub struct TunpipeEngine {
    session: Session,
    last_error: Mutex<String>,
}

/// Runs a handle call's body under [`guard`], and records a failure as the handle's last
/// error too.
fn guard_handle(
    name: &str,
    engine: *const TunpipeEngine,
    body: impl FnOnce(&TunpipeEngine) -> FfiResult<i32>,
) -> i32 {
    let mut handle: Option<&TunpipeEngine> = None;
    let code = guard(name, || {
        check_ptr(engine, "engine")?;
        // SAFETY: non-null and aligned (checked); the caller promises it came from
        // tunpipe_engine_start and was not freed.
        let e = unsafe { &*engine };
        handle = Some(e);
        body(e)
    });
    if code < 0 {
        if let Some(e) = handle {
            *e.last_error.lock() = thread_error();
        }
    }
    code
}

/// Starts an engine on `fd` without blocking and stores its handle in `*out`.
///
/// `fd` is the host's TUN/utun descriptor: tunpipe works on its own dup and never closes
/// `fd`; its flags are restored at stop. `fd < 0` finds the utun fd (Apple only; elsewhere
/// `TUNPIPE_ERR_UNSUPPORTED`). The config is copied; its callback context must stay valid
/// until the engine is stopped.
///
/// Returns `TUNPIPE_OK`, or `TUNPIPE_ERR_NULL_POINTER`, `TUNPIPE_ERR_STRUCT_SIZE`,
/// `TUNPIPE_ERR_INVALID_ARGUMENT`, `TUNPIPE_ERR_CONFIG`, `TUNPIPE_ERR_BAD_FD`,
/// `TUNPIPE_ERR_NO_UTUN_FD`, `TUNPIPE_ERR_UNSUPPORTED`, `TUNPIPE_ERR_DEVICE` or
/// `TUNPIPE_ERR_SPAWN` (`*out` is then left untouched).
///
/// # Safety
/// `config` must be NULL or point to a readable `TunpipeConfig` (filled by
/// `tunpipe_config_default`); `out` must be NULL or point to a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tunpipe_engine_start(
    config: *const TunpipeConfig,
    fd: i32,
    out: *mut *mut TunpipeEngine,
) -> i32 {
    guard("tunpipe_engine_start", || {
        check_ptr(config, "config")?;
        check_ptr_mut(out, "out")?;
        // SAFETY: checked non-null and aligned; the caller promises it is readable.
        let plan = unsafe { TunpipeConfig::read(config) }?.to_plan()?;
        let session = Session::start(&plan, fd)?;
        let handle = Box::new(TunpipeEngine {
            session,
            last_error: Mutex::new(String::new()),
        });
        // SAFETY: checked non-null and aligned; the caller promises it is writable.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(TUNPIPE_OK)
    })
}

/// Stops the engine and returns once every thread is joined and its dup of the fd is
/// closed: after it returns, the engine no longer touches the fd. Several threads may stop
/// at once. Returns `TUNPIPE_OK`, the fatal error that had stopped the engine, or
/// `TUNPIPE_ERR_ENGINE_THREAD` from the engine's own callback (stop requested, not joined).
///
/// # Safety
/// `engine` must be NULL or a live handle from `tunpipe_engine_start`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tunpipe_engine_stop(engine: *const TunpipeEngine) -> i32 {
    guard_handle("tunpipe_engine_stop", engine, |e| {
        e.session.stop().map(|()| TUNPIPE_OK)
    })
}

/// Blocks until the engine is stopped (by `tunpipe_engine_stop` on another thread, or by a
/// fatal error) and joined. Returns as `tunpipe_engine_stop` does.
///
/// # Safety
/// `engine` must be NULL or a live handle from `tunpipe_engine_start`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tunpipe_engine_wait(engine: *const TunpipeEngine) -> i32 {
    guard_handle("tunpipe_engine_wait", engine, |e| {
        e.session.wait().map(|()| TUNPIPE_OK)
    })
}

/// Stops the engine if it runs, joins it, and frees the handle. Returns `TUNPIPE_OK` or
/// `TUNPIPE_ERR_NULL_POINTER`; a fatal error the engine had is not reported here (read it
/// from stop or wait first).
///
/// # Safety
/// `engine` must be NULL or a live handle from `tunpipe_engine_start`, used by no other
/// thread during or after this call, and not freed before. Never call it from the engine's
/// own stage callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tunpipe_engine_free(engine: *mut TunpipeEngine) -> i32 {
    guard("tunpipe_engine_free", || {
        check_ptr_mut(engine, "engine")?;
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
    })
}

/// Copies the engine's counters into `*out` (cheap, lock-free; also after stop). Set
/// `out->size = sizeof(TunpipeStats)` first.
///
/// # Safety
/// `engine` must be NULL or a live handle; `out` NULL or a writable `TunpipeStats` whose
/// `size` field is set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tunpipe_engine_stats(
    engine: *const TunpipeEngine,
    out: *mut TunpipeStats,
) -> i32 {
    guard_handle("tunpipe_engine_stats", engine, |e| {
        check_ptr_mut(out, "out")?;
        // SAFETY: checked non-null and aligned; the caller promises `size` writable bytes.
        unsafe { write_sized(out, e.session.stats()) }?;
        Ok(TUNPIPE_OK)
    })
}

/// Copies latency percentiles (engine and stage) into `*out`. Set
/// `out->size = sizeof(TunpipeLatency)` first. While running, the writer thread answers
/// (at once, even when parked); after stop, the final histograms are kept. Returns
/// `TUNPIPE_ERR_STOPPING` between a stop request and the end of the join.
///
/// # Safety
/// `engine` must be NULL or a live handle; `out` NULL or a writable `TunpipeLatency` whose
/// `size` field is set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tunpipe_engine_latency(
    engine: *const TunpipeEngine,
    out: *mut TunpipeLatency,
) -> i32 {
    guard_handle("tunpipe_engine_latency", engine, |e| {
        check_ptr_mut(out, "out")?;
        let latency = TunpipeLatency::from_snapshot(&e.session.latency()?);
        // SAFETY: checked non-null and aligned; the caller promises `size` writable bytes.
        unsafe { write_sized(out, latency) }?;
        Ok(TUNPIPE_OK)
    })
}

/// Writes one latency histogram (`TUNPIPE_LATENCY_ENGINE` or `TUNPIPE_LATENCY_STAGE`) in
/// HdrHistogram's V2-deflate encoding, base64, NUL-terminated, into `buf[0..len]`.
/// `*needed` (if not NULL) receives the bytes required including the NUL. When `len` is too
/// small, nothing is written to `buf` and `TUNPIPE_ERR_BUFFER_TOO_SMALL` is returned: call
/// with `buf = NULL, len = 0` to ask for the size.
///
/// # Safety
/// `engine` must be NULL or a live handle; `buf` NULL or writable for `len` bytes;
/// `needed` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tunpipe_engine_latency_base64(
    engine: *const TunpipeEngine,
    which: u32,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> i32 {
    guard_handle("tunpipe_engine_latency_base64", engine, |e| {
        let text = latency_base64(&e.session.latency()?, which)?;
        // SAFETY: the pointers are checked inside; the caller promises their extent.
        unsafe { write_string(&text, buf, len, needed) }
    })
}

/// Shared by the handle and global base64 exports: the whole string or nothing.
///
/// # Safety
/// `buf` NULL or writable for `len` bytes; `needed` NULL or writable.
pub(crate) unsafe fn write_string(
    text: &str,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> FfiResult<i32> {
    let need = text.len() + 1;
    if !needed.is_null() {
        super::check_ptr_mut(needed, "needed")?;
        // SAFETY: checked non-null and aligned; the caller promises it is writable.
        unsafe { needed.write(need) };
    }
    if len < need {
        return Err(FfiError::new(
            TUNPIPE_ERR_BUFFER_TOO_SMALL,
            format!("buffer holds {len} bytes, {need} needed"),
        ));
    }
    if buf.is_null() {
        return Err(FfiError::new(TUNPIPE_ERR_NULL_POINTER, "buf is NULL"));
    }
    // SAFETY: `buf` holds `len >= need` bytes (the caller's promise), so the whole text
    // and its NUL fit.
    unsafe { copy_text(text, buf, len) }?;
    Ok(TUNPIPE_OK)
}

/// Copies the handle's last error message (NUL-terminated, truncated to fit) into
/// `buf[0..len]` and returns its full length in bytes without the NUL, like `snprintf`
/// (0: no error yet). `buf` may be NULL when `len` is 0.
///
/// # Safety
/// `engine` must be NULL or a live handle; `buf` NULL or writable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tunpipe_engine_last_error(
    engine: *const TunpipeEngine,
    buf: *mut c_char,
    len: usize,
) -> i32 {
    guard("tunpipe_engine_last_error", || {
        check_ptr(engine, "engine")?;
        // SAFETY: checked non-null and aligned; the caller promises a live handle.
        let message = unsafe { &*engine }.last_error.lock().clone();
        // SAFETY: the caller promises `buf` holds `len` bytes.
        unsafe { copy_text(&message, buf, len) }
    })
}

/// Stores the bytes the engine reserved at start (pool, rings, histograms) in `*out`.
///
/// # Safety
/// `engine` must be NULL or a live handle; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tunpipe_engine_reserved_bytes(
    engine: *const TunpipeEngine,
    out: *mut u64,
) -> i32 {
    guard_handle("tunpipe_engine_reserved_bytes", engine, |e| {
        check_ptr_mut(out, "out")?;
        // SAFETY: checked non-null and aligned; the caller promises it is writable.
        unsafe { out.write(e.session.reserved_bytes() as u64) };
        Ok(TUNPIPE_OK)
    })
}
