//! `ffi_fn!`: the one way a C entry point is written (after hyper's `src/ffi/macros.rs`).
//!
//! The body returns `FfiResult<i32>`. The macro makes the `#[no_mangle] extern "C"` function,
//! runs the body under `catch_unwind`, and turns an error or a panic into its `TUNPIPE_*`
//! code, the calling thread's last error and a log line, all named after the function with
//! `stringify!`. So no entry point can forget to catch a panic or to set the last error.
//!
//! Three forms:
//! - `fn name(args) -> i32 { .. }`: a safe C function (no pointer arguments);
//! - `unsafe fn name(args) -> i32 { .. }`: a C function whose pointer arguments the caller
//!   vouches for (document them under `# Safety`);
//! - `unsafe fn name(engine: &TunpipeEngine, args) -> i32 { .. }`: a call on an engine handle.
//!   C passes a `const TunpipeEngine *`; the macro checks it (NULL and misalignment are error
//!   codes) and hands the body a reference. A failure is also the handle's last error.
//!
//! And for functions whose C signature is not ours to choose (WireGuardKit's, which return
//! `void`, a handle, a pointer): `[unsafe] fn name(args) [-> T] { .. } ?= fallback`. The body
//! returns the C value itself and reports its own failures (wireguard-go logs them); a panic
//! is logged as an error, set as the thread's last error, and answered with `fallback`.
//!
//! cbindgen reads the expanded crate (`[parse.expand]` in `ffi/cbindgen.toml`), so the header
//! shows the functions exactly as the macro makes them, with their doc comments.

macro_rules! ffi_fn {
    ($(#[$doc:meta])* unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block ?= $fallback:expr) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) $(-> $ret)? {
            $crate::macros::run_or(stringify!($name), move || $body, || $fallback)
        }
    };
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block ?= $fallback:expr) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub extern "C" fn $name($($arg: $ty),*) $(-> $ret)? {
            $crate::macros::run_or(stringify!($name), move || $body, || $fallback)
        }
    };
    ($(#[$doc:meta])* unsafe fn $name:ident($engine:ident: &TunpipeEngine $(, $arg:ident: $ty:ty)* $(,)?) -> i32 $body:block) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($engine: *const $crate::TunpipeEngine $(, $arg: $ty)*) -> i32 {
            $crate::macros::run_on_handle(stringify!($name), $engine, move |$engine| $body)
        }
    };
    ($(#[$doc:meta])* unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> i32 $body:block) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> i32 {
            $crate::macros::run(stringify!($name), move || $body)
        }
    };
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> i32 $body:block) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub extern "C" fn $name($($arg: $ty),*) -> i32 {
            $crate::macros::run(stringify!($name), move || $body)
        }
    };
}

use crate::error::{set_thread_error, FfiError, FfiResult, TUNPIPE_ERR_PANIC};
use crate::handle::TunpipeEngine;
use crate::util::{check_ptr, panic_message};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs an entry point's body: catches panics so that nothing unwinds into C, records a
/// failure as the thread's last error, and logs it (a bad pointer or fd deserves a line in
/// the host's log: it is a host bug). `name` is the C function's name, for the message.
pub(crate) fn run(name: &str, body: impl FnOnce() -> FfiResult<i32>) -> i32 {
    match contain(body) {
        Ok(value) => value,
        Err(e) => fail(name, &e),
    }
}

/// [`run`] for a call on an engine handle: checks the pointer, and records a failure as the
/// handle's last error as well as the thread's.
pub(crate) fn run_on_handle(
    name: &str,
    engine: *const TunpipeEngine,
    body: impl FnOnce(&TunpipeEngine) -> FfiResult<i32>,
) -> i32 {
    run(name, || {
        check_ptr(engine, "engine")?;
        // SAFETY: non-null and aligned (checked); the caller promises it came from
        // tunpipe_engine_start and was not freed.
        let engine = unsafe { &*engine };
        contain(|| body(engine)).inspect_err(|e| engine.set_last_error(name, e))
    })
}

/// Runs the body of an entry point that returns its C value itself: a panic is logged and
/// recorded like any failure of [`run`], and answered with `fallback()`.
pub(crate) fn run_or<T>(name: &str, body: impl FnOnce() -> T, fallback: impl FnOnce() -> T) -> T {
    match contain(|| Ok(body())) {
        Ok(value) => value,
        Err(e) => {
            fail(name, &e);
            fallback()
        }
    }
}

/// Runs `body`, turning a panic into a `TUNPIPE_ERR_PANIC` error.
fn contain<T>(body: impl FnOnce() -> FfiResult<T>) -> FfiResult<T> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        Err(FfiError::new(
            TUNPIPE_ERR_PANIC,
            format!("tunpipe panicked: {}", panic_message(&*panic)),
        ))
    })
}

fn fail(name: &str, e: &FfiError) -> i32 {
    let message = e.message_for(name);
    // Logging goes to the host's callback; a panic in it must not escape either.
    let _ = catch_unwind(|| {
        if e.code == TUNPIPE_ERR_PANIC {
            log::error!("{message}");
        } else {
            log::warn!("{message}");
        }
    });
    set_thread_error(&message);
    e.code
}
