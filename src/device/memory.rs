//! An in-memory device: in-process queues with their own wait and interrupt.
//!
//! It lets the whole pipeline run in tests and benches without root. A socketpair would cost a
//! syscall per packet and could never reach the engine-only target; this costs a copy and two
//! ring operations. Packets live in fixed slots allocated once and recycled, so neither side
//! allocates per packet: the zero-allocation test relies on that.
//!
//! ```text
//!  PeerSender ──full slots──► MemoryRx (engine reader)      empty slots flow back
//!  PeerReceiver ◄──full slots── MemoryTx (engine writer)    the other way
//! ```

use super::{Device, Interrupter, RxHalf, TxHalf};
use crate::link::Doorbell;
use parking_lot::Mutex;
use rtrb::{Consumer, Producer, RingBuffer};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct Slot {
    bytes: Box<[u8]>,
    len: usize,
}

struct RxSide {
    full: Consumer<Slot>,
    empty: Producer<Slot>,
}

struct TxSide {
    full: Producer<Slot>,
    empty: Consumer<Slot>,
}

struct Shared {
    /// The engine's ends, taken by `open` and put back when a run's halves are dropped.
    rx: Mutex<Option<RxSide>>,
    tx: Mutex<Option<TxSide>>,
    /// Rung by the peer when it sends, so a reader waiting for packets wakes.
    rx_bell: Doorbell,
}

/// The engine's side of an in-memory device. Open it with an engine; drive it from the other
/// end with the [`PeerSender`] and [`PeerReceiver`] that [`MemoryDevice::new`] returns.
pub struct MemoryDevice {
    shared: Arc<Shared>,
}

/// Why the peer could not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSendError {
    /// Every slot toward the engine is in use: the engine is not keeping up.
    Full,
    /// The packet is larger than a slot.
    TooLarge,
}

/// Sends packets into the engine (what an app writing to a TUN would do).
pub struct PeerSender {
    full: Producer<Slot>,
    empty: Consumer<Slot>,
    shared: Arc<Shared>,
}

/// Receives the packets the engine writes.
pub struct PeerReceiver {
    full: Consumer<Slot>,
    empty: Producer<Slot>,
}

/// The reader's half of a [`MemoryDevice`].
pub struct MemoryRx {
    side: Option<RxSide>,
    shared: Arc<Shared>,
    interrupted: Arc<AtomicBool>,
}

/// The writer's half of a [`MemoryDevice`].
pub struct MemoryTx {
    side: Option<TxSide>,
    shared: Arc<Shared>,
}

fn slots(
    count: usize,
    size: usize,
) -> (
    Producer<Slot>,
    Consumer<Slot>,
    Producer<Slot>,
    Consumer<Slot>,
) {
    let (full_tx, full_rx) = RingBuffer::new(count);
    let (mut empty_tx, empty_rx) = RingBuffer::new(count);
    for _ in 0..count {
        let slot = Slot {
            bytes: vec![0; size].into_boxed_slice(),
            len: 0,
        };
        // The ring was made with room for exactly `count` slots.
        let _ = empty_tx.push(slot);
    }
    (full_tx, full_rx, empty_tx, empty_rx)
}

impl MemoryDevice {
    /// A device with `slots` packets of room in each direction, each up to `slot_size` bytes.
    pub fn new(
        slots_per_direction: usize,
        slot_size: usize,
    ) -> (MemoryDevice, PeerSender, PeerReceiver) {
        let count = slots_per_direction.max(1);
        let (in_full_tx, in_full_rx, in_empty_tx, in_empty_rx) = slots(count, slot_size);
        let (out_full_tx, out_full_rx, out_empty_tx, out_empty_rx) = slots(count, slot_size);
        let shared = Arc::new(Shared {
            rx: Mutex::new(Some(RxSide {
                full: in_full_rx,
                empty: in_empty_tx,
            })),
            tx: Mutex::new(Some(TxSide {
                full: out_full_tx,
                empty: out_empty_rx,
            })),
            rx_bell: Doorbell::default(),
        });
        let sender = PeerSender {
            full: in_full_tx,
            empty: in_empty_rx,
            shared: shared.clone(),
        };
        let receiver = PeerReceiver {
            full: out_full_rx,
            empty: out_empty_tx,
        };
        (MemoryDevice { shared }, sender, receiver)
    }
}

impl Device for MemoryDevice {
    type Rx = MemoryRx;
    type Tx = MemoryTx;

    fn open(&self) -> io::Result<(MemoryRx, MemoryTx)> {
        let busy = || io::Error::new(io::ErrorKind::ResourceBusy, "memory device is already open");
        let mut rx = self.shared.rx.lock();
        let mut tx = self.shared.tx.lock();
        if rx.is_none() || tx.is_none() {
            return Err(busy());
        }
        Ok((
            MemoryRx {
                side: rx.take(),
                shared: self.shared.clone(),
                interrupted: Arc::new(AtomicBool::new(false)),
            },
            MemoryTx {
                side: tx.take(),
                shared: self.shared.clone(),
            },
        ))
    }
}

impl RxHalf for MemoryRx {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let side = self.side.as_mut().expect("side is present until drop");
        let Ok(slot) = side.full.pop() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        // Like a TUN read into a short buffer: the packet is truncated, and the reader's
        // one-byte-longer-than-MTU buffer still shows it was oversize.
        let n = slot.len.min(buf.len());
        buf[..n].copy_from_slice(&slot.bytes[..n]);
        // The empty ring holds every slot there is, so it always has room.
        let _ = side.empty.push(slot);
        Ok(n)
    }

    fn wait_readable(&mut self) -> io::Result<()> {
        // Register on every wait (a lock, cheap beside a wait): the half may have moved to
        // another thread since the last one.
        self.shared.rx_bell.register_current();
        let side = self.side.as_ref().expect("side is present until drop");
        let interrupted = &self.interrupted;
        self.shared
            .rx_bell
            .sleep_unless(|| !side.full.is_empty() || interrupted.load(Ordering::Acquire));
        if interrupted.load(Ordering::Acquire) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        Ok(())
    }

    fn interrupter(&self) -> Interrupter {
        let interrupted = self.interrupted.clone();
        let shared = self.shared.clone();
        Interrupter::new(move || {
            interrupted.store(true, Ordering::Release);
            shared.rx_bell.force();
        })
    }
}

impl Drop for MemoryRx {
    fn drop(&mut self) {
        *self.shared.rx.lock() = self.side.take();
    }
}

impl TxHalf for MemoryTx {
    fn send(&mut self, packet: &[u8]) -> io::Result<usize> {
        let side = self.side.as_mut().expect("side is present until drop");
        let Some(slot) = side.empty.peek().ok() else {
            // The peer is not receiving: like a full socket buffer.
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if packet.len() > slot.bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "packet larger than a slot",
            ));
        }
        let mut slot = side.empty.pop().expect("peeked above");
        slot.bytes[..packet.len()].copy_from_slice(packet);
        slot.len = packet.len();
        let _ = side.full.push(slot);
        Ok(packet.len())
    }
}

impl Drop for MemoryTx {
    fn drop(&mut self) {
        *self.shared.tx.lock() = self.side.take();
    }
}

impl PeerSender {
    /// Copies `packet` into the device for the engine to read, and wakes the reader if it
    /// sleeps.
    ///
    /// # Errors
    /// [`PeerSendError::Full`] when the engine has not read enough yet;
    /// [`PeerSendError::TooLarge`] when the packet does not fit a slot.
    pub fn send(&mut self, packet: &[u8]) -> Result<(), PeerSendError> {
        let slot = self.empty.peek().map_err(|_| PeerSendError::Full)?;
        if packet.len() > slot.bytes.len() {
            return Err(PeerSendError::TooLarge);
        }
        let mut slot = self.empty.pop().expect("peeked above");
        slot.bytes[..packet.len()].copy_from_slice(packet);
        slot.len = packet.len();
        let _ = self.full.push(slot);
        self.shared.rx_bell.ring();
        Ok(())
    }

    /// Slots free for sending now.
    pub fn free_slots(&self) -> usize {
        self.empty.slots()
    }
}

impl PeerReceiver {
    /// Takes the next packet the engine wrote, if any, and hands its bytes to `f`.
    pub fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let slot = self.full.pop().ok()?;
        let result = f(&slot.bytes[..slot.len]);
        let _ = self.empty.push(slot);
        Some(result)
    }

    /// Packets waiting to be received.
    pub fn pending(&self) -> usize {
        self.full.slots()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_cross_both_ways_and_slots_recycle() {
        let (dev, mut peer_tx, mut peer_rx) = MemoryDevice::new(2, 16);
        let (mut rx, mut tx) = dev.open().unwrap();
        assert!(dev.open().is_err(), "one run at a time");
        for round in 0..5u8 {
            peer_tx.send(&[round; 3]).unwrap();
            peer_tx.send(&[round; 4]).unwrap();
            assert_eq!(peer_tx.send(&[0]), Err(PeerSendError::Full));
            let mut buf = [0u8; 8];
            assert_eq!(rx.recv(&mut buf).unwrap(), 3);
            assert_eq!(rx.recv(&mut buf).unwrap(), 4);
            assert_eq!(
                rx.recv(&mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            tx.send(&buf[..4]).unwrap();
            assert_eq!(peer_rx.recv_with(|p| p.to_vec()), Some(vec![round; 4]));
        }
        assert_eq!(peer_tx.send(&[0; 17]), Err(PeerSendError::TooLarge));
        drop((rx, tx));
        dev.open().expect("reopens after the halves are dropped");
    }

    #[test]
    fn wait_returns_on_data_and_on_interrupt() {
        let (dev, mut peer_tx, _peer_rx) = MemoryDevice::new(4, 16);
        let (mut rx, _tx) = dev.open().unwrap();
        peer_tx.send(&[1]).unwrap();
        rx.wait_readable().unwrap();
        let interrupter = rx.interrupter();
        let waiter = std::thread::spawn(move || {
            let mut buf = [0u8; 4];
            rx.recv(&mut buf).unwrap();
            rx.wait_readable()
        });
        interrupter.interrupt();
        let err = waiter.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
    }

    #[test]
    fn truncates_like_a_tun_read() {
        let (dev, mut peer_tx, _peer_rx) = MemoryDevice::new(1, 64);
        let (mut rx, _tx) = dev.open().unwrap();
        peer_tx.send(&[7; 40]).unwrap();
        let mut buf = [0u8; 11];
        assert_eq!(rx.recv(&mut buf).unwrap(), 11);
    }
}

impl std::fmt::Debug for MemoryDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDevice").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PeerSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSender").field("free_slots", &self.free_slots()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PeerReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerReceiver").field("pending", &self.pending()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MemoryRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRx").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MemoryTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTx").finish_non_exhaustive()
    }
}
