//! The few synchronization primitives the wake-up and stop protocols use, behind one shim so
//! that `--cfg tunpipe_loom` can swap in loom's model-checked versions. rtrb and crossbeam have no loom
//! support, so loom checks our own protocol on a model of the ring (an atomic counter), and a
//! stress test checks the real composition.

#[cfg(tunpipe_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(tunpipe_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(tunpipe_loom)]
pub(crate) use loom::thread::{current, park, Thread};
#[cfg(tunpipe_loom)]
pub(crate) use std::sync::TryLockError;

/// The timer's timed sleep is not modelled: under loom it parks like any consumer (the
/// wake-up protocol is the same).
#[cfg(tunpipe_loom)]
pub(crate) fn park_timeout(_timeout: std::time::Duration) {
    park()
}

#[cfg(not(tunpipe_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(tunpipe_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard, TryLockError};
#[cfg(not(tunpipe_loom))]
pub(crate) use std::thread::{current, park, park_timeout, Thread};
