//! The tun-rs device: a TUN the engine created, or an fd adopted from the host.
//!
//! An adopted fd is never used directly: the engine works on its own `dup()` and closes only
//! that, as WireGuardKit does, so a host that closes its fd early cannot make the engine touch
//! a reused descriptor number. `O_NONBLOCK` lives on the open file description, which the dup
//! shares, so each run saves the flags before setting non-blocking mode and restores them when
//! its halves are dropped (which the engine does before `stop()` returns).

use super::{whole_write, Device, Interrupter, RxHalf, TxHalf};
use crate::pool::PacketBuf;
use crate::sys;
use parking_lot::Mutex;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use tun_rs::{InterruptEvent, SyncDevice};

/// A TUN device for the engine.
pub struct TunDevice {
    device: Arc<SyncDevice>,
}

/// Interfaces with a run open in this process. Two runs on one TUN would share one open file
/// description, and so one `O_NONBLOCK` flag: the first to stop would restore blocking mode
/// under the other, whose reader would then block in `read()` where no stop can reach it.
static OPEN_RUNS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Claims `interface` for one run; released on drop.
struct Claim(String);

impl Claim {
    fn new(interface: String) -> io::Result<Self> {
        let mut open = OPEN_RUNS.lock();
        if open.contains(&interface) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("a tunpipe engine already runs on {interface}"),
            ));
        }
        open.push(interface.clone());
        Ok(Claim(interface))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        OPEN_RUNS.lock().retain(|name| *name != self.0);
    }
}

/// One run's hold on the device: restores the fd's flags when the last half is dropped.
struct Run {
    device: Arc<SyncDevice>,
    saved_flags: i32,
    /// Each run gets its own event: an `InterruptEvent` stays triggered until reset.
    interrupt: Arc<InterruptEvent>,
    /// Dropped after the flags are restored (fields drop after `drop` runs).
    _claim: Claim,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Err(e) = sys::set_fd_flags(self.device.as_raw_fd(), self.saved_flags) {
            log::warn!("could not restore the TUN fd's flags: {e}");
        }
    }
}

/// The reader's half of a [`TunDevice`].
pub struct TunRx {
    run: Arc<Run>,
}

/// The writer's half of a [`TunDevice`].
pub struct TunTx {
    run: Arc<Run>,
}

impl TunDevice {
    /// Uses a device created with tun-rs (`DeviceBuilder::build_sync`).
    pub fn new(device: SyncDevice) -> Self {
        TunDevice {
            device: Arc::new(device),
        }
    }

    /// Adopts a TUN fd owned by the host (for example the utun fd of an iOS packet tunnel).
    ///
    /// The fd is validated first (Linux: a TUN, by `TUNGETIFF`; Apple: a utun control socket),
    /// so that adopting, say, stdin fails instead of reading it. The engine then works on its
    /// own duplicate; the host's fd stays open and is never closed here.
    ///
    /// # Errors
    /// When `fd` is not an open TUN/utun descriptor, or cannot be duplicated.
    pub fn adopt(fd: RawFd) -> io::Result<Self> {
        sys::validate_tun_fd(fd)?;
        let dup = sys::dup_cloexec(fd)?;
        // SAFETY: `dup` is a fresh descriptor that this function owns and hands to tun-rs,
        // which closes it on drop; it refers to the TUN validated above (plain IFF_NO_PI
        // framing without IFF_VNET_HDR on Linux, which tun-rs re-checks).
        let device = unsafe { SyncDevice::from_fd(dup) };
        match device {
            Ok(device) => Ok(TunDevice::new(device)),
            Err(e) => Err(e),
        }
    }

    /// The underlying tun-rs device (for address management and the like).
    pub fn inner(&self) -> &SyncDevice {
        &self.device
    }

    /// The descriptor the engine uses (its dup, for an adopted fd).
    pub fn raw_fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }
}

impl Device for TunDevice {
    type Rx = TunRx;
    type Tx = TunTx;

    /// # Errors
    /// `ResourceBusy` when another run (of any engine in this process) has the same TUN open.
    fn open(&self) -> io::Result<(TunRx, TunTx)> {
        let fd = self.device.as_raw_fd();
        let claim = Claim::new(sys::tun_identity(fd)?)?;
        let saved_flags = sys::fd_flags(fd)?;
        let interrupt = Arc::new(InterruptEvent::new()?);
        sys::set_fd_flags(fd, saved_flags | libc::O_NONBLOCK)?;
        let run = Arc::new(Run {
            device: self.device.clone(),
            saved_flags,
            interrupt,
            _claim: claim,
        });
        sys::tune_tun(fd);
        Ok((TunRx { run: run.clone() }, TunTx { run }))
    }
}

impl RxHalf for TunRx {
    #[inline]
    fn recv(&mut self, packet: &mut PacketBuf) -> io::Result<()> {
        let n = self.run.device.recv(packet.data_mut())?;
        // Within the window just written into, so it cannot fail.
        let _ = packet.truncate(n);
        Ok(())
    }

    fn wait_readable(&mut self) -> io::Result<()> {
        self.run.device.wait_readable_intr(&self.run.interrupt)
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
    #[inline]
    fn send(&mut self, packet: &PacketBuf) -> io::Result<()> {
        whole_write(self.run.device.send(packet.data()), packet.len())
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
        f.debug_struct("TunRx")
            .field("fd", &self.run.device.as_raw_fd())
            .finish()
    }
}

impl std::fmt::Debug for TunTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunTx")
            .field("fd", &self.run.device.as_raw_fd())
            .finish()
    }
}
