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

#[cfg(not(tunpipe_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(tunpipe_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
#[cfg(not(tunpipe_loom))]
pub(crate) use std::thread::{current, park, Thread};
