//! Running a test body on a thread of its own, where a panic or a hang becomes an error.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `body` on a new thread named `name` and returns what it returns. A panic becomes an
/// error carrying the panic's message; with a `limit`, a body still running after it becomes
/// an error too (a hang fails the test instead of stalling the run; the limit is generous,
/// not a timing assertion, and the stuck thread is left behind).
///
/// The thread is where per-thread state is set up: [`crate::netns::enter_fresh_netns`]
/// moves only the calling thread, and every thread it then starts inherits the namespace.
pub fn on_thread<T, E>(
    name: &str,
    limit: Option<Duration>,
    body: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<String> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(body))
                .unwrap_or_else(|panic| Err(E::from(format!("panicked: {}", message(&*panic)))));
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(E::from(format!("spawn {name}: {e}")));
    }
    let waited = match limit {
        Some(limit) => rx.recv_timeout(limit),
        None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
    };
    match waited {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(E::from(format!(
            "{name}: still running after {:?}: a hang",
            limit.unwrap_or_default()
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(E::from(format!("{name}: vanished"))),
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
