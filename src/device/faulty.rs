//! A fault-injecting wrapper around any device, in the spirit of smoltcp's `FaultInjector`.
//!
//! A test holds the [`FaultPlan`] and arms faults while the engine runs: EAGAIN bursts on
//! receive, a fatal receive error (EIO, or the device gone), and on send: EINVAL, EAGAIN, or
//! short writes. Each armed fault fires for the next `n` packets, then the device behaves
//! again. Everything else (capabilities, batches, error classification) is the wrapped
//! device's: a fault in the middle of a batch ends the batch there, as a real `sendmmsg`
//! would, so the packets before it go and the fault belongs to the packet it hit.

use super::{Capabilities, Device, ErrorClass, Interrupter, Rebinder, RxHalf, TxHalf};
use crate::pool::PacketBuf;
use std::io;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

/// Faults to inject, shared between a test and the wrapped device's halves.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rx_fail_count: AtomicU64,
    rx_fail_errno: AtomicI32,
    tx_fail_count: AtomicU64,
    tx_fail_errno: AtomicI32,
    tx_short_count: AtomicU64,
    injected: AtomicU64,
}

impl FaultPlan {
    /// A plan with nothing armed.
    pub fn new() -> Arc<Self> {
        Arc::new(FaultPlan::default())
    }

    /// The next `count` receives fail with `errno` (EAGAIN for a burst; EIO or EBADFD for a
    /// fatal error). Waiting reports readable meanwhile, so the reader meets the fault at once.
    pub fn fail_receives(&self, count: u64, errno: i32) {
        self.rx_fail_errno.store(errno, Ordering::Relaxed);
        self.rx_fail_count.store(count, Ordering::Release);
    }

    /// The next `count` sends fail with `errno` (EINVAL, EAGAIN, ENOBUFS, or EIO).
    pub fn fail_sends(&self, count: u64, errno: i32) {
        self.tx_fail_errno.store(errno, Ordering::Relaxed);
        self.tx_fail_count.store(count, Ordering::Release);
    }

    /// The next `count` sends are short writes: the packet does not go, and the send
    /// fails with `WriteZero`.
    pub fn short_sends(&self, count: u64) {
        self.tx_short_count.store(count, Ordering::Release);
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Acquire)
    }

    fn take(&self, counter: &AtomicU64) -> bool {
        let took = counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if took {
            self.injected.fetch_add(1, Ordering::AcqRel);
        }
        took
    }
}

/// Wraps a device; its halves consult a [`FaultPlan`] before each call.
#[derive(Debug)]
pub struct FaultyDevice<D> {
    inner: D,
    plan: Arc<FaultPlan>,
}

/// Receive half of a [`FaultyDevice`].
#[derive(Debug)]
pub struct FaultyRx<R> {
    inner: R,
    plan: Arc<FaultPlan>,
}

/// Send half of a [`FaultyDevice`].
#[derive(Debug)]
pub struct FaultyTx<T> {
    inner: T,
    plan: Arc<FaultPlan>,
}

impl<D> FaultyDevice<D> {
    /// Wraps `inner`, injecting what `plan` says.
    pub fn new(inner: D, plan: Arc<FaultPlan>) -> Self {
        FaultyDevice { inner, plan }
    }
}

impl<D: Device> Device for FaultyDevice<D> {
    type Rx = FaultyRx<D::Rx>;
    type Tx = FaultyTx<D::Tx>;

    fn open(&self) -> io::Result<(Self::Rx, Self::Tx)> {
        let (rx, tx) = self.inner.open()?;
        Ok((
            FaultyRx {
                inner: rx,
                plan: self.plan.clone(),
            },
            FaultyTx {
                inner: tx,
                plan: self.plan.clone(),
            },
        ))
    }
}

impl<R: RxHalf> FaultyRx<R> {
    fn injected_error(&self) -> Option<io::Error> {
        self.plan
            .take(&self.plan.rx_fail_count)
            .then(|| io::Error::from_raw_os_error(self.plan.rx_fail_errno.load(Ordering::Relaxed)))
    }
}

impl<R: RxHalf> RxHalf for FaultyRx<R> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn recv(&mut self, packet: &mut PacketBuf) -> io::Result<()> {
        match self.injected_error() {
            Some(e) => Err(e),
            None => self.inner.recv(packet),
        }
    }

    fn recv_batch(&mut self, packets: &mut [PacketBuf]) -> io::Result<usize> {
        match self.injected_error() {
            Some(e) => Err(e),
            None => self.inner.recv_batch(packets),
        }
    }

    fn wait_readable(&mut self) -> io::Result<()> {
        if self.plan.rx_fail_count.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        self.inner.wait_readable()
    }

    fn interrupter(&self) -> Interrupter {
        self.inner.interrupter()
    }

    fn rearm(&mut self) {
        self.inner.rearm();
    }

    fn classify(&self, error: &io::Error) -> ErrorClass {
        self.inner.classify(error)
    }

    fn rebinder(&self) -> Option<Rebinder> {
        self.inner.rebinder()
    }
}

impl<T: TxHalf> FaultyTx<T> {
    /// The fault armed for the next packet, if any (taking it).
    fn injected_error(&self) -> Option<io::Error> {
        if self.plan.take(&self.plan.tx_fail_count) {
            let errno = self.plan.tx_fail_errno.load(Ordering::Relaxed);
            return Some(io::Error::from_raw_os_error(errno));
        }
        self.plan
            .take(&self.plan.tx_short_count)
            .then(|| io::Error::new(io::ErrorKind::WriteZero, "short write (injected)"))
    }

    fn armed(&self) -> bool {
        self.plan.tx_fail_count.load(Ordering::Acquire) > 0
            || self.plan.tx_short_count.load(Ordering::Acquire) > 0
    }
}

impl<T: TxHalf> TxHalf for FaultyTx<T> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn send(&mut self, packet: &PacketBuf) -> io::Result<()> {
        match self.injected_error() {
            Some(e) => Err(e),
            None => self.inner.send(packet),
        }
    }

    fn send_batch(&mut self, packets: &[PacketBuf]) -> io::Result<usize> {
        if !self.armed() {
            return self.inner.send_batch(packets);
        }
        // Packet by packet while faults are armed, so that each fault hits one packet.
        let want = packets.len().min(self.capabilities().max_batch);
        for (sent, packet) in packets[..want].iter().enumerate() {
            if let Err(e) = self.send(packet) {
                return if sent == 0 { Err(e) } else { Ok(sent) };
            }
        }
        Ok(want)
    }

    fn classify(&self, error: &io::Error) -> ErrorClass {
        self.inner.classify(error)
    }
}
