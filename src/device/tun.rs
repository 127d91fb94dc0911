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
    /// Linux: created with offload (`IFF_VNET_HDR`, TSO): every frame has a virtio-net
    /// header, and reads and writes may carry 64 KiB segments (see `offload`).
    offload: bool,
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
    /// A TUN with offload: frames are read here and cut into packets.
    #[cfg(target_os = "linux")]
    split: Option<Box<super::offload::Splitter>>,
}

/// The writer's half of a [`TunDevice`].
pub struct TunTx {
    run: Arc<Run>,
    #[cfg(target_vendor = "apple")]
    batch: sys::TunBatchIo,
    /// A TUN with offload: runs of a TCP flow are written as one segment.
    #[cfg(target_os = "linux")]
    coalesce: Option<Box<super::offload::Coalescer>>,
}

impl TunDevice {
    /// Uses a device created with tun-rs (`DeviceBuilder::build_sync`).
    ///
    /// On Linux, a device built with tun-rs's `offload(true)` (where the kernel has TSO on
    /// TUNs) is read and written with its virtio-net header: one read may carry a 64 KiB TCP
    /// segment, cut into packets for the stage, and runs of one TCP flow are written as one.
    pub fn new(device: SyncDevice) -> Self {
        #[cfg(target_os = "linux")]
        let offload = device.tcp_gso();
        #[cfg(not(target_os = "linux"))]
        let offload = false;
        TunDevice {
            device: Arc::new(Owned {
                device,
                _held: None,
                offload,
            }),
        }
    }

    /// Whether the device is read and written with offload (Linux, `IFF_VNET_HDR`).
    pub fn offload(&self) -> bool {
        self.device.offload
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
                // Validation refused a virtio-net header: a host's TUN is read plainly.
                offload: false,
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
        #[cfg(target_os = "linux")]
        let mtu = usize::from(self.device.device.mtu().unwrap_or(1500));
        Ok((
            TunRx {
                run: run.clone(),
                #[cfg(target_vendor = "apple")]
                batch: sys::TunBatchIo::new(),
                #[cfg(target_os = "linux")]
                split: self
                    .device
                    .offload
                    .then(|| Box::new(super::offload::Splitter::new(mtu))),
            },
            TunTx {
                run,
                #[cfg(target_vendor = "apple")]
                batch: sys::TunBatchIo::new(),
                #[cfg(target_os = "linux")]
                coalesce: self
                    .device
                    .offload
                    .then(|| Box::new(super::offload::Coalescer::new())),
            },
        ))
    }
}

impl RxHalf for TunRx {
    #[cfg(target_vendor = "apple")]
    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities::batched(super::Medium::Ip, self.batch.max_batch())
    }

    #[cfg(target_os = "linux")]
    fn capabilities(&self) -> super::Capabilities {
        match self.split {
            Some(_) => super::Capabilities::batched(super::Medium::Ip, OFFLOAD_BATCH),
            None => super::Capabilities::default(),
        }
    }

    #[inline]
    fn recv(&mut self, packet: &mut PacketBuf) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if self.split.is_some() {
            return self.recv_offload(std::slice::from_mut(packet)).map(|_| ());
        }
        let n = self.run.io.read(self.run.fd(), packet.data_mut())?;
        // Within the window just read into, so it cannot fail.
        let _ = packet.truncate(n);
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn recv_batch(&mut self, packets: &mut [PacketBuf]) -> io::Result<usize> {
        match self.split {
            Some(_) => self.recv_offload(packets),
            None => match packets.first_mut() {
                Some(packet) => self.recv(packet).map(|()| 1),
                None => Ok(0),
            },
        }
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

    fn rearm(&mut self) {
        if let Err(e) = self.run.interrupt.reset() {
            log::error!("could not reset the TUN interrupt event: {e}");
        }
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

/// Most packets an offload read hands on, or an offload write takes, per call.
#[cfg(target_os = "linux")]
const OFFLOAD_BATCH: usize = 64;

#[cfg(target_os = "linux")]
impl TunRx {
    /// Reads frames until `packets` are full or the TUN has nothing ready, cutting segments
    /// into packets; the packets of a segment that do not fit wait for the next call.
    fn recv_offload(&mut self, packets: &mut [PacketBuf]) -> io::Result<usize> {
        let fd = self.run.fd();
        let Some(split) = self.split.as_mut() else {
            return Ok(0);
        };
        let mut got = 0;
        loop {
            let base = got;
            got += split.drain(packets.len() - got, |i, bytes| {
                let packet = &mut packets[base + i];
                let area = packet.data_mut();
                // Longer than the area: cut, and so seen as oversize by the reader.
                let n = bytes.len().min(area.len());
                area[..n].copy_from_slice(&bytes[..n]);
                let _ = packet.truncate(n);
            });
            if got == packets.len() {
                return Ok(got);
            }
            match self.run.io.read(fd, split.frame_mut()) {
                Ok(n) => split.take(n),
                // What was read goes on first; the error comes again with the next call.
                Err(_) if got > 0 => return Ok(got),
                Err(e) => return Err(e),
            }
        }
    }
}

impl TxHalf for TunTx {
    #[cfg(target_vendor = "apple")]
    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities::batched(super::Medium::Ip, self.batch.max_batch())
    }

    #[cfg(target_os = "linux")]
    fn capabilities(&self) -> super::Capabilities {
        match self.coalesce {
            Some(_) => super::Capabilities::batched(super::Medium::Ip, OFFLOAD_BATCH),
            None => super::Capabilities::default(),
        }
    }

    #[inline]
    fn send(&mut self, packet: &PacketBuf) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if self.coalesce.is_some() {
            return self.send_batch(std::slice::from_ref(packet)).map(|_| ());
        }
        whole_write(
            self.run.io.write(self.run.fd(), packet.data()),
            packet.len(),
        )
    }

    /// With offload, the first packets of `packets` go in one write: a run of one TCP flow
    /// as one segment, or one packet behind an empty virtio-net header. A failed write is the
    /// first packet's; after a failed write of a run, the rest of that run goes one packet
    /// per write (`offload::Coalescer::write`), so only the bad packet is lost.
    #[cfg(target_os = "linux")]
    fn send_batch(&mut self, packets: &[PacketBuf]) -> io::Result<usize> {
        let fd = self.run.fd();
        let Some(coalesce) = self.coalesce.as_mut() else {
            return match packets.first() {
                Some(packet) => self.send(packet).map(|()| 1),
                None => Ok(0),
            };
        };
        let io = &self.run.io;
        coalesce.write(
            packets,
            PacketBuf::data,
            |frame| whole_write(io.write(fd, frame), frame.len()),
            super::classify,
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
