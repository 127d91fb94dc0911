//! Packet I/O: the small trait the reader and writer talk to, and its implementations.
//!
//! A [`Device`] opens a receive half ([`RxHalf`], used by the reader) and a send half
//! ([`TxHalf`], used by the writer). One device can give both halves, or two devices give one
//! each: a pipeline that reads one TUN and writes another is a bridge. The trait fits anything
//! that moves one packet per call: a TUN fd, a UDP socket (one datagram per packet), or a
//! device fed by the host through the C ABI.
//!
//! Implementations: [`TunDevice`] (tun-rs), [`MemoryDevice`] (in-process queues, for tests and
//! benches without root), and [`FaultyDevice`] (wraps any device and injects errors).

use std::io;
use std::sync::Arc;

mod faulty;
mod memory;
mod tun;

pub use faulty::{FaultPlan, FaultyDevice, FaultyRx, FaultyTx};
pub use memory::{MemoryDevice, MemoryRx, MemoryTx, PeerReceiver, PeerSendError, PeerSender};
pub use tun::{TunDevice, TunRx, TunTx};

/// The receive half, owned by the reader thread.
pub trait RxHalf: Send + 'static {
    /// Receives one packet into `buf` without blocking and returns its length. A packet longer
    /// than `buf` may be truncated to `buf.len()` (the reader's buffer is one byte longer than
    /// the MTU, so it still sees that the packet was oversize).
    ///
    /// # Errors
    /// `WouldBlock` when no packet is ready; any other error is classified by [`classify`].
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Blocks until a packet may be ready, or until the [`Interrupter`] fires.
    ///
    /// # Errors
    /// `Interrupted` when interrupted (or on EINTR: the caller decides by its own stop flag,
    /// never by the error kind). Other errors are classified by [`classify`].
    fn wait_readable(&mut self) -> io::Result<()>;

    /// A handle another thread uses to interrupt [`RxHalf::wait_readable`]. It stays triggered
    /// until this half is dropped; each opening of a device gets its own.
    fn interrupter(&self) -> Interrupter;
}

/// The send half, owned by the writer thread.
pub trait TxHalf: Send + 'static {
    /// Sends one packet without blocking and returns the bytes written.
    ///
    /// # Errors
    /// Classified by [`classify`]: EAGAIN, EINVAL, ENOBUFS drop only this packet.
    fn send(&mut self, packet: &[u8]) -> io::Result<usize>;
}

/// Something that can be opened for one engine run. Opening again after the run's halves are
/// dropped starts a new run on the same device (restart).
pub trait Device {
    /// The receive half.
    type Rx: RxHalf;
    /// The send half.
    type Tx: TxHalf;

    /// Opens both halves for one run.
    ///
    /// # Errors
    /// When the device cannot be prepared (for example, setting non-blocking mode fails, or
    /// the halves of an earlier run are still alive).
    fn open(&self) -> io::Result<(Self::Rx, Self::Tx)>;
}

/// Wakes a receive half out of [`RxHalf::wait_readable`].
#[derive(Clone)]
pub struct Interrupter(Arc<dyn Fn() + Send + Sync>);

impl Interrupter {
    /// Wraps the function that interrupts the wait.
    pub fn new(interrupt: impl Fn() + Send + Sync + 'static) -> Self {
        Interrupter(Arc::new(interrupt))
    }

    /// Interrupts the wait (now, or the next one if none is in progress).
    pub fn interrupt(&self) {
        (self.0)()
    }
}

impl std::fmt::Debug for Interrupter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interrupter")
    }
}

/// What an I/O error means for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The device is gone or unusable: stop the engine and report the error.
    Fatal,
    /// Only this packet failed (or none was ready): count it and go on.
    PerPacket,
    /// Interrupted by a signal: try again.
    Retry,
}

/// Classifies a device error. A deleted Linux interface makes poll report POLLERR, which tun-rs
/// turns into a generic "fd error" with no errno, and makes reads fail with EBADFD: both are
/// fatal. A garbage packet from a stage gets EINVAL on write: per packet, never fatal.
pub fn classify(error: &io::Error) -> ErrorClass {
    match error.raw_os_error() {
        Some(libc::EINTR) => ErrorClass::Retry,
        Some(
            libc::EBADF
            | libc::EIO
            | libc::ENODEV
            | libc::ENXIO
            | libc::EPIPE
            | libc::ENOTCONN
            | libc::ENETDOWN,
        ) => ErrorClass::Fatal,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(libc::EBADFD) => ErrorClass::Fatal,
        Some(_) => ErrorClass::PerPacket,
        None => match error.kind() {
            io::ErrorKind::Interrupted => ErrorClass::Retry,
            io::ErrorKind::WouldBlock
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::InvalidData
            | io::ErrorKind::WriteZero => ErrorClass::PerPacket,
            _ => ErrorClass::Fatal,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_design() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(libc::EINTR)), ErrorClass::Retry);
        assert_eq!(classify(&os(libc::EAGAIN)), ErrorClass::PerPacket);
        assert_eq!(classify(&os(libc::EINVAL)), ErrorClass::PerPacket);
        assert_eq!(classify(&os(libc::ENOBUFS)), ErrorClass::PerPacket);
        assert_eq!(classify(&os(libc::EIO)), ErrorClass::Fatal);
        assert_eq!(classify(&os(libc::EBADF)), ErrorClass::Fatal);
        #[cfg(target_os = "linux")]
        assert_eq!(classify(&os(libc::EBADFD)), ErrorClass::Fatal);
        // tun-rs's poll wrapper reports POLLERR as a bare "fd error".
        assert_eq!(classify(&io::Error::other("fd error")), ErrorClass::Fatal);
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::WouldBlock)),
            ErrorClass::PerPacket
        );
    }
}
