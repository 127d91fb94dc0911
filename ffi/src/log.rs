//! Routes the `log` facade and panic messages to a host callback: stderr is lost on iOS. One
//! callback for the process, set by `tunpipe_set_log_callback` (tunpipe's levels) or by
//! WireGuardKit's `wgSetLogger` (its two levels), whichever came last.

use super::error::{FfiError, TUNPIPE_ERR_INVALID_ARGUMENT, TUNPIPE_ERR_UNSUPPORTED, TUNPIPE_OK};
use super::util::HostContext;
use parking_lot::RwLock;
use std::cell::Cell;
use std::ffi::{c_char, c_void, CString};
use std::sync::{Once, OnceLock};

/// Log level: nothing.
pub const TUNPIPE_LOG_OFF: i32 = 0;
/// Log level: errors (also panic messages).
pub const TUNPIPE_LOG_ERROR: i32 = 1;
/// Log level: warnings (rejected calls: NULL pointers, bad fds, ...).
pub const TUNPIPE_LOG_WARN: i32 = 2;
/// Log level: start and stop of engines.
pub const TUNPIPE_LOG_INFO: i32 = 3;
/// Log level: debugging detail.
pub const TUNPIPE_LOG_DEBUG: i32 = 4;
/// Log level: everything.
pub const TUNPIPE_LOG_TRACE: i32 = 5;

/// Receives one log line: a `TUNPIPE_LOG_*` level and a NUL-terminated UTF-8 message, valid
/// only during the call. It is called from any thread, engine threads included, possibly
/// from several at once; it must not block for long, must not unwind, and must not call
/// `tunpipe_set_log_callback`. It may call `stop_tun` or `tunpipe_engine_stop`: from inside
/// a start or a stop, or on an engine thread, those request the stop and return
/// `TUNPIPE_ERR_ENGINE_THREAD`. Lines logged by tunpipe calls made from inside the callback
/// are not delivered. tunpipe never logs per packet.
/// NULL turns logging off.
pub type TunpipeLogCallback =
    Option<unsafe extern "C" fn(context: *mut c_void, level: i32, message: *const c_char)>;

type LogFn = unsafe extern "C" fn(context: *mut c_void, level: i32, message: *const c_char);

/// How a host numbers levels: tunpipe's `TUNPIPE_LOG_*`, or WireGuardKit's two
/// (`wgSetLogger`: 0 verbose, 1 error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Levels {
    Tunpipe,
    WireGuardKit,
}

impl Levels {
    fn number(self, level: log::Level) -> i32 {
        match self {
            Levels::Tunpipe => level_number(level),
            // wireguard-go has `Verbosef` and `Errorf` only. A warning is a call tunpipe
            // refused (a host bug) or a failure it worked around: the host should see it.
            Levels::WireGuardKit => match level {
                log::Level::Error | log::Level::Warn => 1,
                _ => 0,
            },
        }
    }
}

/// Where log lines go: the host's callback, its context, and its numbering. One for the
/// process: `tunpipe_set_log_callback` and `wgSetLogger` each replace it.
#[derive(Clone, Copy)]
pub(crate) struct Sink {
    callback: LogFn,
    context: HostContext,
    levels: Levels,
}

impl Sink {
    pub(crate) fn new(callback: LogFn, context: *mut c_void, levels: Levels) -> Sink {
        Sink {
            callback,
            context: HostContext(context),
            levels,
        }
    }
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

fn level_number(level: log::Level) -> i32 {
    match level {
        log::Level::Error => TUNPIPE_LOG_ERROR,
        log::Level::Warn => TUNPIPE_LOG_WARN,
        log::Level::Info => TUNPIPE_LOG_INFO,
        log::Level::Debug => TUNPIPE_LOG_DEBUG,
        log::Level::Trace => TUNPIPE_LOG_TRACE,
    }
}

thread_local! {
    /// Set while this thread runs the host's callback: a line logged from inside it (the
    /// callback called tunpipe, say `stop_tun`, which failed) is not delivered, since the
    /// callback would be called again from within itself, without end.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn emit(level: log::Level, message: &str) {
    if IN_CALLBACK.get() {
        return;
    }
    // Held across the call so that once tunpipe_set_log_callback returns, the old callback
    // is no longer running anywhere and the host may free its context. Recursive, so a log
    // line emitted while formatting another cannot deadlock behind a waiting writer.
    let sink = SINK.read_recursive();
    if let Some(sink) = *sink {
        // Interior NULs would cut the message short in C; show them instead.
        let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
        IN_CALLBACK.set(true);
        // SAFETY: the host installed this callback and context for exactly this call, under
        // the contract on `TunpipeLogCallback`; `text` outlives the call.
        unsafe { (sink.callback)(sink.context.0, sink.levels.number(level), text.as_ptr()) };
        IN_CALLBACK.set(false);
    }
}

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            emit(record.level(), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn level_filter(level: i32) -> Option<log::LevelFilter> {
    Some(match level {
        TUNPIPE_LOG_OFF => log::LevelFilter::Off,
        TUNPIPE_LOG_ERROR => log::LevelFilter::Error,
        TUNPIPE_LOG_WARN => log::LevelFilter::Warn,
        TUNPIPE_LOG_INFO => log::LevelFilter::Info,
        TUNPIPE_LOG_DEBUG => log::LevelFilter::Debug,
        TUNPIPE_LOG_TRACE => log::LevelFilter::Trace,
        _ => return None,
    })
}

/// Chains a panic hook that sends the panic's message and location to the host callback,
/// then runs the hook that was there before (stderr, where there is one).
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            emit(
                log::Level::Error,
                &format!(
                    "panic in thread {}{location}: {}",
                    thread.name().unwrap_or("<unnamed>"),
                    super::util::panic_message(info.payload())
                ),
            );
            previous(info);
        }));
    });
}

ffi_fn! {
    /// Routes tunpipe's log lines at or above `max_level` (a `TUNPIPE_LOG_*` level) to
    /// `callback`, with `context` passed back untouched, and installs a panic hook that sends
    /// panic messages there too. `callback = NULL` (or `TUNPIPE_LOG_OFF`) turns logging off.
    /// Calling it again replaces the callback; once it returns, the old one is not running
    /// anywhere and its context may be freed.
    ///
    /// tunpipe installs itself as the process's `log` logger on the first call. Returns
    /// `TUNPIPE_OK`, `TUNPIPE_ERR_INVALID_ARGUMENT` (unknown level), or
    /// `TUNPIPE_ERR_UNSUPPORTED` when the process already installed another `log` logger (a
    /// Rust host with its own logger keeps it).
    ///
    /// # Safety
    /// `callback` must be NULL or a function following the `TunpipeLogCallback` contract;
    /// `context` must stay valid, and usable from any thread, until the callback is replaced.
    unsafe fn tunpipe_set_log_callback( callback: TunpipeLogCallback, max_level: i32, context: *mut c_void) -> i32 {
        let filter = level_filter(max_level).ok_or_else(|| {
            FfiError::new(
                TUNPIPE_ERR_INVALID_ARGUMENT,
                format!("unknown log level {max_level}"),
            )
        })?;
        install(
            callback.map(|callback| Sink::new(callback, context, Levels::Tunpipe)),
            filter,
        )?;
        Ok(TUNPIPE_OK)
    }
}

/// Makes `sink` the process's one log sink (`None`: logging off), passing lines at or above
/// `filter`, with tunpipe as the `log` logger (installed on the first call) and the panic
/// hook. Once it returns, the sink it replaced is not running anywhere.
///
/// # Errors
/// `TUNPIPE_ERR_UNSUPPORTED` when the process installed another `log` logger first.
pub(crate) fn install(sink: Option<Sink>, filter: log::LevelFilter) -> Result<(), FfiError> {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    if !*INSTALLED.get_or_init(|| log::set_logger(&LOGGER).is_ok()) {
        return Err(FfiError::new(
            TUNPIPE_ERR_UNSUPPORTED,
            "another log logger is already installed in this process",
        ));
    }
    install_panic_hook();
    let on = sink.is_some();
    *SINK.write() = sink;
    log::set_max_level(if on { filter } else { log::LevelFilter::Off });
    Ok(())
}
