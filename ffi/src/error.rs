//! Error codes, the failure type every entry point returns, and the last-error text.

use std::cell::RefCell;
use tunpipe::EngineError;

/// Success.
pub const TUNPIPE_OK: i32 = 0;
/// A required pointer argument is NULL.
pub const TUNPIPE_ERR_NULL_POINTER: i32 = -1;
/// An argument is out of its domain: a misaligned pointer, an unknown stage, verdict or
/// latency kind, or a callback stage without a callback.
pub const TUNPIPE_ERR_INVALID_ARGUMENT: i32 = -2;
/// A struct's `size` field is smaller than the smallest version this library knows.
pub const TUNPIPE_ERR_STRUCT_SIZE: i32 = -3;
/// The configuration is invalid (a size out of range, a pool too small for the rings, ...).
pub const TUNPIPE_ERR_CONFIG: i32 = -4;
/// The fd is closed, or is not a TUN (Linux) / utun control socket (Apple).
pub const TUNPIPE_ERR_BAD_FD: i32 = -5;
/// `fd < 0` asked tunpipe to find the utun fd, and no descriptor is a utun control socket.
pub const TUNPIPE_ERR_NO_UTUN_FD: i32 = -6;
/// Not available on this platform (finding the utun fd off Apple, the memory headroom off
/// iOS/tvOS, or a log callback when the process already installed another `log` logger).
pub const TUNPIPE_ERR_UNSUPPORTED: i32 = -7;
/// `start_tun` while the global engine is starting or running.
pub const TUNPIPE_ERR_ALREADY_RUNNING: i32 = -8;
/// `stop_tun` (or a global query) with no global engine starting or running.
pub const TUNPIPE_ERR_NOT_RUNNING: i32 = -9;
/// The device failed: at start, or fatally while running (for example, it was deleted).
pub const TUNPIPE_ERR_DEVICE: i32 = -10;
/// An engine thread could not be spawned.
pub const TUNPIPE_ERR_SPAWN: i32 = -11;
/// The stage panicked more often than `max_stage_panics` allows, or a tunnel's stage
/// panicked once (its state may be torn); the engine stopped.
pub const TUNPIPE_ERR_STAGE_PANICS: i32 = -12;
/// A stop or wait was called from one of the engine's own threads (say, from the stage
/// callback). The stop was requested, not joined: the owner must still stop or wait.
pub const TUNPIPE_ERR_ENGINE_THREAD: i32 = -13;
/// The engine is between its stop request and the end of its join; ask again after stop.
pub const TUNPIPE_ERR_STOPPING: i32 = -14;
/// The caller's buffer is too small; the needed size was stored in the out parameter.
pub const TUNPIPE_ERR_BUFFER_TOO_SMALL: i32 = -15;
/// tunpipe panicked inside the call (a bug in tunpipe); the panic was caught, the call did
/// nothing, and the message was logged.
pub const TUNPIPE_ERR_PANIC: i32 = -16;
/// The engine's buffer pool could not be allocated (the config is valid, the memory is not
/// there).
pub const TUNPIPE_ERR_NO_MEMORY: i32 = -17;
/// The system refused a resource the engine needs to start: a file descriptor (`EMFILE`,
/// `ENFILE`: the process or the system has too many open files) or kernel memory (`ENOMEM`,
/// `ENOBUFS`). Nothing is wrong with the fd or the config; the call may succeed later.
pub const TUNPIPE_ERR_RESOURCES: i32 = -18;
/// No such item: a peer index at or past the tunnel's number of peers. Peers come and go
/// while a tunnel runs, so a list read one index at a time ends at this code, not at a count
/// read before.
pub const TUNPIPE_ERR_NOT_FOUND: i32 = -19;

/// A failed call: its code and what to tell the host.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub code: i32,
    pub message: String,
}

impl FfiError {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> Self {
        FfiError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Self {
        FfiError::new(TUNPIPE_ERR_NULL_POINTER, format!("{what} is NULL"))
    }

    /// The last-error text of a failed call to the C function `name`.
    pub(crate) fn message_for(&self, name: &str) -> String {
        format!("{name}: {}", self.message)
    }
}

/// Whether `e` is the system running out of something (descriptors, kernel memory) rather
/// than anything being wrong with the host's fd or config.
pub(crate) fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

impl From<EngineError> for FfiError {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::Config(_) => TUNPIPE_ERR_CONFIG,
            EngineError::Device(io) if is_resource_exhaustion(io) => TUNPIPE_ERR_RESOURCES,
            EngineError::Device(_) => TUNPIPE_ERR_DEVICE,
            EngineError::Spawn(_) => TUNPIPE_ERR_SPAWN,
            EngineError::StagePanics { .. }
            | EngineError::StageRebuild
            | EngineError::DuplexStagePanicked { .. } => TUNPIPE_ERR_STAGE_PANICS,
            EngineError::StopFromEngineThread => TUNPIPE_ERR_ENGINE_THREAD,
            EngineError::Stopping => TUNPIPE_ERR_STOPPING,
            EngineError::OutOfMemory { .. } => TUNPIPE_ERR_NO_MEMORY,
            EngineError::Unsupported(_) => TUNPIPE_ERR_UNSUPPORTED,
            // EngineError is #[non_exhaustive]: a variant that gains no code of its own here
            // reports as a device failure, with its own message.
            _ => TUNPIPE_ERR_DEVICE,
        };
        FfiError::new(code, e.to_string())
    }
}

pub(crate) type FfiResult<T = ()> = Result<T, FfiError>;

thread_local! {
    /// The calling thread's last error, for calls without a handle (and with one).
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_thread_error(message: &str) {
    // try_with: a call made while the thread is being torn down must not panic.
    let _ = LAST_ERROR.try_with(|last| {
        let mut last = last.borrow_mut();
        last.clear();
        last.push_str(message);
    });
}

pub(crate) fn thread_error() -> String {
    LAST_ERROR
        .try_with(|last| last.borrow().clone())
        .unwrap_or_default()
}

/// A short, static description of an error code.
pub(crate) fn describe(code: i32) -> &'static std::ffi::CStr {
    match code {
        TUNPIPE_OK => c"ok",
        TUNPIPE_ERR_NULL_POINTER => c"a required pointer is NULL",
        TUNPIPE_ERR_INVALID_ARGUMENT => c"invalid argument",
        TUNPIPE_ERR_STRUCT_SIZE => c"struct size field too small",
        TUNPIPE_ERR_CONFIG => c"invalid configuration",
        TUNPIPE_ERR_BAD_FD => c"not an open TUN/utun descriptor",
        TUNPIPE_ERR_NO_UTUN_FD => c"no utun descriptor found",
        TUNPIPE_ERR_UNSUPPORTED => c"not supported on this platform",
        TUNPIPE_ERR_ALREADY_RUNNING => c"an engine is already running",
        TUNPIPE_ERR_NOT_RUNNING => c"no engine is running",
        TUNPIPE_ERR_DEVICE => c"device error",
        TUNPIPE_ERR_SPAWN => c"could not spawn an engine thread",
        TUNPIPE_ERR_STAGE_PANICS => c"the stage panicked too often",
        TUNPIPE_ERR_ENGINE_THREAD => c"called from an engine thread",
        TUNPIPE_ERR_STOPPING => c"the engine is stopping",
        TUNPIPE_ERR_BUFFER_TOO_SMALL => c"buffer too small",
        TUNPIPE_ERR_PANIC => c"tunpipe panicked (bug)",
        TUNPIPE_ERR_NO_MEMORY => c"out of memory for the buffer pool",
        TUNPIPE_ERR_RESOURCES => c"the system refused a resource (too many open files?)",
        TUNPIPE_ERR_NOT_FOUND => c"no such item (a peer index past the last peer)",
        _ => c"unknown error code",
    }
}
