//! Packet I/O: the small trait the reader and writer talk to, and its implementations.
//!
//! A [`Device`] opens a receive half ([`RxHalf`], used by the reader) and a send half
//! ([`TxHalf`], used by the writer). One device can give both halves, or two devices give one
//! each: a pipeline that reads one TUN and writes another is a bridge.
//!
//! The halves move packets in pooled [`PacketBuf`]s. The batch methods
//! ([`RxHalf::recv_batch`], [`TxHalf::send_batch`]) default to one packet per call, so a
//! simple device implements `recv` and `send` only, and a device with a multi-packet system
//! call (`recvmmsg`/`sendmmsg`, TUN offload) overrides the batch methods. Each half describes
//! itself ([`Capabilities`]: what it carries, how many packets a call moves) and classifies
//! its own errors ([`ErrorClass`]): `ENETDOWN` means "the interface is gone" on a TUN and "the
//! phone is changing networks" on a UDP socket.
//!
//! Implementations: [`TunDevice`] (tun-rs), [`UdpDevice`] (a UDP socket, the outside of a
//! tunnel), [`MemoryDevice`] (in-process queues, for tests and benches without root), and
//! [`FaultyDevice`] (wraps any device and injects errors).

use crate::pool::PacketBuf;
use std::io;
use std::sync::Arc;

mod faulty;
mod memory;
#[cfg(target_os = "linux")]
mod offload;
mod tun;
mod udp;

pub use faulty::{FaultPlan, FaultyDevice, FaultyRx, FaultyTx};
pub use memory::{MemoryDevice, MemoryRx, MemoryTx, PeerReceiver, PeerSendError, PeerSender};
pub use tun::{TunDevice, TunRx, TunTx};
pub use udp::{classify_socket, UdpDevice, UdpRx, UdpTx, DEFAULT_SOCKET_BUFFER};

/// What a device carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Medium {
    /// IP packets, as a TUN carries them. The reader drops what is not IPv4 or IPv6, and the
    /// flow hash reads addresses and ports.
    #[default]
    Ip,
    /// Opaque datagrams, each with its peer's address (a UDP socket). The reader checks
    /// nothing inside them, and the flow hash uses the peer's address.
    Datagram,
}

/// What a device half can do, so that the actors assume nothing about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// What the half carries.
    pub medium: Medium,
    /// Most packets one [`RxHalf::recv_batch`] or [`TxHalf::send_batch`] call moves (1 for
    /// a device that moves one packet per system call).
    pub max_batch: usize,
}

impl Capabilities {
    /// A half that moves one packet of `medium` per call.
    pub const fn one_at_a_time(medium: Medium) -> Self {
        Capabilities {
            medium,
            max_batch: 1,
        }
    }

    /// A half that moves up to `max_batch` packets of `medium` per call.
    pub const fn batched(medium: Medium, max_batch: usize) -> Self {
        Capabilities {
            medium,
            max_batch: if max_batch == 0 { 1 } else { max_batch },
        }
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::one_at_a_time(Medium::Ip)
    }
}

/// The receive half, owned by the reader thread.
pub trait RxHalf: Send + 'static {
    /// What this half carries and how many packets a call moves. The default: IP packets,
    /// one at a time.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Receives one packet into `packet` without blocking.
    ///
    /// On entry the packet's window is the whole receive area ([`PacketBuf::data_mut`]);
    /// the device writes the packet there and [`PacketBuf::truncate`]s the window to its
    /// length, and a datagram device sets the sender with [`PacketBuf::set_endpoint`]. A
    /// packet longer than the area may be cut to the area's length: the reader's area is one
    /// byte longer than the MTU, so it still sees that the packet was oversize.
    ///
    /// # Errors
    /// `WouldBlock` when no packet is ready; any other error is classified by
    /// [`RxHalf::classify`].
    fn recv(&mut self, packet: &mut PacketBuf) -> io::Result<()>;

    /// Receives up to `packets.len()` packets (at most [`Capabilities::max_batch`]) without
    /// blocking, into the first slots of `packets` as [`RxHalf::recv`] does, and returns how
    /// many it received (at least one).
    ///
    /// The default receives one packet with [`RxHalf::recv`].
    ///
    /// # Errors
    /// As [`RxHalf::recv`], for the first packet; nothing was received then.
    fn recv_batch(&mut self, packets: &mut [PacketBuf]) -> io::Result<usize> {
        match packets.first_mut() {
            Some(packet) => self.recv(packet).map(|()| 1),
            None => Ok(0),
        }
    }

    /// Blocks until a packet may be ready, or until the [`Interrupter`] fires.
    ///
    /// # Errors
    /// `Interrupted` when interrupted (or on EINTR: the caller decides by its own stop flag,
    /// never by the error kind). Other errors are classified by [`RxHalf::classify`].
    fn wait_readable(&mut self) -> io::Result<()>;

    /// A handle another thread uses to interrupt [`RxHalf::wait_readable`]. It stays triggered
    /// until this half is dropped or [`RxHalf::rearm`]ed; each opening of a device gets its
    /// own.
    fn interrupter(&self) -> Interrupter;

    /// Clears the interrupt, so that the next [`RxHalf::wait_readable`] blocks again: the
    /// reader calls it after a wait was interrupted while no stop is under way (a suspend).
    /// A device whose interrupt stayed triggered would have its reader spin after a resume,
    /// which is why this has no default.
    fn rearm(&mut self);

    /// What a receive error means. The default suits a device node (a TUN): see
    /// [`classify`].
    fn classify(&self, error: &io::Error) -> ErrorClass {
        classify(error)
    }

    /// A handle that gives the device a new socket while the engine runs, when the host says
    /// the network path changed ([`crate::Engine::rebind`]). The default: none (a TUN cannot
    /// be rebound).
    fn rebinder(&self) -> Option<Rebinder> {
        None
    }
}

/// The send half, owned by the writer thread.
pub trait TxHalf: Send + 'static {
    /// What this half carries and how many packets a call moves. The default: IP packets,
    /// one at a time.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Sends one whole packet without blocking (a datagram device sends it to
    /// [`PacketBuf::endpoint`]).
    ///
    /// # Errors
    /// A short write is an error too (`WriteZero`): the packet did not go. Errors are
    /// classified by [`TxHalf::classify`].
    fn send(&mut self, packet: &PacketBuf) -> io::Result<()>;

    /// Sends the packets in order, up to [`Capabilities::max_batch`] of them, and returns how
    /// many went (at least one). It stops at the first packet that fails: that packet and
    /// the ones after it were not sent, and the caller decides what to do with them.
    ///
    /// The default sends one packet with [`TxHalf::send`].
    ///
    /// # Errors
    /// The error of `packets[0]`, which was not sent; nothing was sent then.
    fn send_batch(&mut self, packets: &[PacketBuf]) -> io::Result<usize> {
        match packets.first() {
            Some(packet) => self.send(packet).map(|()| 1),
            None => Ok(0),
        }
    }

    /// What a send error means. The default suits a device node (a TUN): see [`classify`].
    fn classify(&self, error: &io::Error) -> ErrorClass {
        classify(error)
    }
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
    /// When the device cannot be prepared (for example, the halves of an earlier run are
    /// still alive).
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

/// Rebinds a device (a UDP socket) while it runs; see [`RxHalf::rebinder`].
#[derive(Clone)]
pub struct Rebinder {
    same_port: Arc<dyn Fn() -> io::Result<()> + Send + Sync>,
    fresh_port: Arc<dyn Fn() -> io::Result<u16> + Send + Sync>,
}

impl Rebinder {
    /// Wraps the functions that rebind: `same_port` gives the device a new socket on the
    /// port it has (or any, if that cannot be had), `fresh_port` one on another port than
    /// the one it has, returning it.
    pub fn new(
        same_port: impl Fn() -> io::Result<()> + Send + Sync + 'static,
        fresh_port: impl Fn() -> io::Result<u16> + Send + Sync + 'static,
    ) -> Self {
        Rebinder {
            same_port: Arc::new(same_port),
            fresh_port: Arc::new(fresh_port),
        }
    }

    /// A new socket, on the same port if it can be had.
    ///
    /// # Errors
    /// What making the new socket failed with.
    pub fn rebind(&self) -> io::Result<()> {
        (self.same_port)()
    }

    /// A new socket on another port than the one in use; returns the port.
    ///
    /// # Errors
    /// What making the new socket failed with.
    pub fn rebind_fresh(&self) -> io::Result<u16> {
        (self.fresh_port)()
    }
}

impl std::fmt::Debug for Rebinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rebinder")
    }
}

/// What an I/O error means for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The device is gone or unusable: stop the engine and report the error.
    Fatal,
    /// Only this packet failed (or none was ready): count it and go on.
    PerPacket,
    /// Interrupted by a signal: try again.
    Retry,
}

/// The default classification, for a device node such as a TUN. A deleted Linux interface
/// makes poll report POLLERR, which tun-rs turns into a generic "fd error" with no errno,
/// and makes reads fail with EBADFD: both are fatal, and so is ENETDOWN. A garbage packet
/// from a stage gets EINVAL on write: per packet, never fatal.
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

/// The one-packet send of a device whose write call reports a byte count: a short write
/// means the packet did not go.
pub(crate) fn whole_write(written: io::Result<usize>, len: usize) -> io::Result<()> {
    match written {
        Ok(n) if n == len => Ok(()),
        Ok(n) => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {n} of {len} bytes"),
        )),
        Err(e) => Err(e),
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

    #[test]
    fn a_short_write_is_an_error() {
        assert!(whole_write(Ok(10), 10).is_ok());
        let short = whole_write(Ok(9), 10).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::WriteZero);
        assert_eq!(classify(&short), ErrorClass::PerPacket);
    }
}
