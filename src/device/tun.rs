//! The tun-rs device: a TUN the engine created, or an fd adopted from the host.
//!
//! An adopted fd is never used directly: the engine works on its own `dup()` and closes only
//! that, as WireGuardKit does, so a host that closes its fd early cannot make the engine touch
//! a reused descriptor number.
//!
//! The dup shares the open file, and with it the `O_NONBLOCK` flag, with the host's fd. The
//! engine neither sets nor relies on that flag: every read and write asks the kernel for
//! "now or EAGAIN" by itself (`sys::TunIo`: `RWF_NOWAIT` on Linux, `MSG_DONTWAIT` on Apple),
//! and the reader waits in `poll`, which a stop interrupts. So no host behaviour (clearing the
//! flag, another process reading the same TUN) can leave the reader blocked where a stop
//! cannot reach it.

use super::{whole_write, Device, Interrupter, RxHalf, TxHalf};
use crate::pool::PacketBuf;
use crate::sys::{self, TunIdentity, TunIo};
use parking_lot::Mutex;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use tun_rs::{InterruptEvent, SyncDevice};

/// A TUN device for the engine.
pub struct TunDevice {
    device: Arc<Owned>,
}

/// The tun-rs device, and for an adopted fd the mark that its dup is tunpipe's own (so that a
/// scan for the host's utun fd skips it), dropped together.
struct Owned {
    device: SyncDevice,
    _held: Option<sys::HeldFd>,
}

/// TUNs with a run open in this process. Two runs on one TUN would race for its packets, and
/// each would see the other's stop as its own device failing; one is enough.
static OPEN_RUNS: Mutex<Vec<TunIdentity>> = Mutex::new(Vec::new());

/// Claims a TUN for one run; released on drop.
struct Claim(TunIdentity);

impl Claim {
    fn new(tun: TunIdentity) -> io::Result<Self> {
        let mut open = OPEN_RUNS.lock();
        if open.contains(&tun) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("a tunpipe engine already runs on this TUN ({tun})"),
            ));
        }
        open.push(tun.clone());
        Ok(Claim(tun))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        OPEN_RUNS.lock().retain(|tun| *tun != self.0);
    }
}

/// One run's hold on the device, shared by its two halves.
struct Run {
    device: Arc<Owned>,
    io: TunIo,
    /// Each run gets its own event: an `InterruptEvent` stays triggered until reset.
    interrupt: Arc<InterruptEvent>,
    _claim: Claim,
}

impl Run {
    fn fd(&self) -> RawFd {
        self.device.device.as_raw_fd()
    }
}

/// The reader's half of a [`TunDevice`].
pub struct TunRx {
    run: Arc<Run>,
    /// Many packets per call where the platform has it (Apple's utun).
    #[cfg(target_vendor = "apple")]
    batch: sys::TunBatchIo,
}

/// The writer's half of a [`TunDevice`].
pub struct TunTx {
    run: Arc<Run>,
    #[cfg(target_vendor = "apple")]
    batch: sys::TunBatchIo,
}

impl TunDevice {
    /// Uses a device created with tun-rs (`DeviceBuilder::build_sync`).
    pub fn new(device: SyncDevice) -> Self {
        TunDevice {
            device: Arc::new(Owned {
                device,
                _held: None,
            }),
        }
    }

    /// Adopts a TUN fd owned by the host (for example the utun fd of an iOS packet tunnel).
    ///
    /// The fd is validated first, so that adopting, say, stdin fails instead of reading it.
    /// On Linux it must be a TUN (not a TAP) without packet information or a virtio-net
    /// header, open for reading and writing; on Apple, a utun control socket. The engine then
    /// works on its own duplicate; the host's fd stays open and is never closed here, and its
    /// flags are never changed.
    ///
    /// # Errors
    /// `InvalidInput` when `fd` is not a TUN the engine can run on; the system's error when
    /// it is not open or cannot be duplicated (`EMFILE`: too many open files).
    pub fn adopt(fd: RawFd) -> io::Result<Self> {
        sys::validate_tun_fd(fd)?;
        let dup = sys::dup_cloexec(fd)?;
        // SAFETY: `dup` is a fresh descriptor that this function owns and hands to tun-rs,
        // which closes it on drop; it refers to the TUN validated above (plain IFF_NO_PI
        // framing without IFF_VNET_HDR on Linux, which tun-rs re-checks).
        let device = unsafe { SyncDevice::from_fd(dup) }?;
        Ok(TunDevice {
            device: Arc::new(Owned {
                device,
                _held: Some(sys::HeldFd::new(dup)),
            }),
        })
    }

    /// The underlying tun-rs device (for address management and the like).
    pub fn inner(&self) -> &SyncDevice {
        &self.device.device
    }

    /// The descriptor the engine uses (its dup, for an adopted fd).
    pub fn raw_fd(&self) -> RawFd {
        self.device.device.as_raw_fd()
    }
}

impl Device for TunDevice {
    type Rx = TunRx;
    type Tx = TunTx;

    /// # Errors
    /// `ResourceBusy` when another run (of any engine in this process) has the same TUN open;
    /// the system's error when the interrupt event cannot be made (`EMFILE`).
    fn open(&self) -> io::Result<(TunRx, TunTx)> {
        let fd = self.raw_fd();
        let claim = Claim::new(sys::tun_identity(fd)?)?;
        let run = Arc::new(Run {
            device: self.device.clone(),
            io: TunIo::new(),
            interrupt: Arc::new(InterruptEvent::new()?),
            _claim: claim,
        });
        sys::tune_tun(fd);
        Ok((
            TunRx {
                run: run.clone(),
                #[cfg(target_vendor = "apple")]
                batch: sys::TunBatchIo::new(),
            },
            TunTx {
                run,
                #[cfg(target_vendor = "apple")]
                batch: sys::TunBatchIo::new(),
            },
        ))
    }
}

impl RxHalf for TunRx {
    #[cfg(target_vendor = "apple")]
    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities::batched(super::Medium::Ip, self.batch.max_batch())
    }

    #[inline]
    fn recv(&mut self, packet: &mut PacketBuf) -> io::Result<()> {
        let n = self.run.io.read(self.run.fd(), packet.data_mut())?;
        // Within the window just read into, so it cannot fail.
        let _ = packet.truncate(n);
        Ok(())
    }

    #[cfg(target_vendor = "apple")]
    fn recv_batch(&mut self, packets: &mut [PacketBuf]) -> io::Result<usize> {
        let fd = self.run.fd();
        match self.batch.read(fd, packets)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn wait_readable(&mut self) -> io::Result<()> {
        self.run
            .device
            .device
            .wait_readable_intr(&self.run.interrupt)
    }

    fn interrupter(&self) -> Interrupter {
        let event = self.run.interrupt.clone();
        Interrupter::new(move || {
            if let Err(e) = event.trigger() {
                log::error!("could not trigger the TUN interrupt event: {e}");
            }
        })
    }
}

impl TxHalf for TunTx {
    #[cfg(target_vendor = "apple")]
    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities::batched(super::Medium::Ip, self.batch.max_batch())
    }

    #[inline]
    fn send(&mut self, packet: &PacketBuf) -> io::Result<()> {
        whole_write(
            self.run.io.write(self.run.fd(), packet.data()),
            packet.len(),
        )
    }

    #[cfg(target_vendor = "apple")]
    fn send_batch(&mut self, packets: &[PacketBuf]) -> io::Result<usize> {
        let fd = self.run.fd();
        self.batch.write(fd, packets)
    }
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("fd", &self.raw_fd())
            .finish()
    }
}

impl std::fmt::Debug for TunRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunRx").field("fd", &self.run.fd()).finish()
    }
}

impl std::fmt::Debug for TunTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunTx").field("fd", &self.run.fd()).finish()
    }
}
