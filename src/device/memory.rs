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

use super::{Capabilities, Device, Interrupter, RxHalf, TxHalf};
use crate::link::Doorbell;
use crate::pool::PacketBuf;
use parking_lot::Mutex;
use rtrb::{Consumer, Producer, RingBuffer};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct Slot {
    bytes: Box<[u8]>,
    len: usize,
    /// The peer a datagram came from or goes to (datagram mode).
    endpoint: Option<SocketAddr>,
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
    capabilities: Capabilities,
}

/// The engine's side of an in-memory device. Open it with an engine; drive it from the other
/// end with the [`PeerSender`] and [`PeerReceiver`] that [`MemoryDevice::new`] returns.
pub struct MemoryDevice {
    shared: Arc<Shared>,
}

/// Why the peer could not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
            endpoint: None,
        };
        // The ring was made with room for exactly `count` slots.
        let _ = empty_tx.push(slot);
    }
    (full_tx, full_rx, empty_tx, empty_rx)
}

impl MemoryDevice {
    /// A device with `slots` packets of room in each direction, each up to `slot_size` bytes,
    /// that carries IP packets one per call, as a TUN does.
    pub fn new(
        slots_per_direction: usize,
        slot_size: usize,
    ) -> (MemoryDevice, PeerSender, PeerReceiver) {
        Self::with_capabilities(slots_per_direction, slot_size, Capabilities::default())
    }

    /// A device as [`MemoryDevice::new`] makes, that describes itself with `capabilities`:
    /// datagrams with endpoints (a stand-in for a UDP socket), or batches of up to
    /// `max_batch` packets per call.
    pub fn with_capabilities(
        slots_per_direction: usize,
        slot_size: usize,
        capabilities: Capabilities,
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
            capabilities,
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
    fn capabilities(&self) -> Capabilities {
        self.shared.capabilities
    }

    fn recv(&mut self, packet: &mut PacketBuf) -> io::Result<()> {
        self.recv_batch(std::slice::from_mut(packet)).map(|_| ())
    }

    fn recv_batch(&mut self, packets: &mut [PacketBuf]) -> io::Result<usize> {
        let side = self.side.as_mut().expect("side is present until drop");
        let want = packets.len().min(self.shared.capabilities.max_batch);
        let mut received = 0;
        for packet in &mut packets[..want] {
            let Ok(slot) = side.full.pop() else {
                break;
            };
            // Like a TUN read into a short buffer: the packet is truncated, and the reader's
            // one-byte-longer-than-MTU buffer still shows it was oversize.
            let area = packet.data_mut();
            let n = slot.len.min(area.len());
            area[..n].copy_from_slice(&slot.bytes[..n]);
            let _ = packet.truncate(n);
            packet.set_endpoint(slot.endpoint);
            // The empty ring holds every slot there is, so it always has room.
            let _ = side.empty.push(slot);
            received += 1;
        }
        if received == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(received)
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

    fn rearm(&mut self) {
        self.interrupted.store(false, Ordering::Release);
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
    fn capabilities(&self) -> Capabilities {
        self.shared.capabilities
    }

    fn send(&mut self, packet: &PacketBuf) -> io::Result<()> {
        self.send_batch(std::slice::from_ref(packet)).map(|_| ())
    }

    fn send_batch(&mut self, packets: &[PacketBuf]) -> io::Result<usize> {
        let side = self.side.as_mut().expect("side is present until drop");
        let want = packets.len().min(self.shared.capabilities.max_batch);
        for (sent, packet) in packets[..want].iter().enumerate() {
            let failed = match side.empty.peek() {
                // The peer is not receiving: like a full socket buffer.
                Err(_) => io::Error::from(io::ErrorKind::WouldBlock),
                Ok(slot) if packet.len() > slot.bytes.len() => {
                    io::Error::new(io::ErrorKind::InvalidInput, "packet larger than a slot")
                }
                Ok(_) => {
                    let mut slot = side.empty.pop().expect("peeked above");
                    slot.bytes[..packet.len()].copy_from_slice(packet.data());
                    slot.len = packet.len();
                    slot.endpoint = packet.endpoint();
                    let _ = side.full.push(slot);
                    continue;
                }
            };
            // The error belongs to this packet; the ones before it went.
            return if sent == 0 { Err(failed) } else { Ok(sent) };
        }
        Ok(want)
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
        self.send_from(packet, None)
    }

    /// As [`PeerSender::send`], for a datagram device: the datagram arrives from `from`.
    ///
    /// # Errors
    /// As [`PeerSender::send`].
    pub fn send_from(
        &mut self,
        packet: &[u8],
        from: Option<SocketAddr>,
    ) -> Result<(), PeerSendError> {
        let slot = self.empty.peek().map_err(|_| PeerSendError::Full)?;
        if packet.len() > slot.bytes.len() {
            return Err(PeerSendError::TooLarge);
        }
        let mut slot = self.empty.pop().expect("peeked above");
        slot.bytes[..packet.len()].copy_from_slice(packet);
        slot.len = packet.len();
        slot.endpoint = from;
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
        self.recv_from_with(|packet, _| f(packet))
    }

    /// As [`PeerReceiver::recv_with`], with the endpoint the engine sent the datagram to.
    pub fn recv_from_with<R>(
        &mut self,
        f: impl FnOnce(&[u8], Option<SocketAddr>) -> R,
    ) -> Option<R> {
        let slot = self.full.pop().ok()?;
        let result = f(&slot.bytes[..slot.len], slot.endpoint);
        let _ = self.empty.push(slot);
        Some(result)
    }

    /// Packets waiting to be received.
    pub fn pending(&self) -> usize {
        self.full.slots()
    }
}

impl std::fmt::Debug for MemoryDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDevice").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PeerSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSender")
            .field("free_slots", &self.free_slots())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PeerReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerReceiver")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Medium;

    /// A buffer ready to receive `n` bytes, as the reader prepares one.
    fn area(n: usize) -> PacketBuf {
        let mut p = PacketBuf::new(0, n, 0);
        p.prepare_receive(0, n);
        p
    }

    fn packet(bytes: &[u8]) -> PacketBuf {
        let mut p = PacketBuf::new(0, bytes.len(), 0);
        p.fill(0, bytes).unwrap();
        p
    }

    #[test]
    fn packets_cross_both_ways_and_slots_recycle() {
        let (dev, mut peer_tx, mut peer_rx) = MemoryDevice::new(2, 16);
        let (mut rx, mut tx) = dev.open().unwrap();
        assert!(dev.open().is_err(), "one run at a time");
        for round in 0..5u8 {
            peer_tx.send(&[round; 3]).unwrap();
            peer_tx.send(&[round; 4]).unwrap();
            assert_eq!(peer_tx.send(&[0]), Err(PeerSendError::Full));
            let mut buf = area(8);
            rx.recv(&mut buf).unwrap();
            assert_eq!(buf.len(), 3);
            let mut buf = area(8);
            rx.recv(&mut buf).unwrap();
            assert_eq!(buf.data(), [round; 4]);
            assert_eq!(
                rx.recv(&mut area(8)).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            tx.send(&buf).unwrap();
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
            rx.recv(&mut area(4)).unwrap();
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
        let mut buf = area(11);
        rx.recv(&mut buf).unwrap();
        assert_eq!(buf.len(), 11);
    }

    #[test]
    fn batches_move_up_to_max_batch_and_a_full_peer_stops_a_send_part_way() {
        let caps = Capabilities::batched(Medium::Datagram, 3);
        let (dev, mut peer_tx, peer_rx) = MemoryDevice::with_capabilities(4, 16, caps);
        let (mut rx, mut tx) = dev.open().unwrap();
        assert_eq!((rx.capabilities(), tx.capabilities()), (caps, caps));
        let from: SocketAddr = ([192, 0, 2, 1], 51820).into();
        for i in 0..4u8 {
            peer_tx.send_from(&[i; 5], Some(from)).unwrap();
        }
        let mut bufs: Vec<PacketBuf> = (0..4).map(|_| area(16)).collect();
        assert_eq!(rx.recv_batch(&mut bufs).unwrap(), 3, "capped at max_batch");
        assert_eq!(
            (bufs[2].data(), bufs[2].endpoint()),
            (&[2u8; 5][..], Some(from))
        );
        assert_eq!(rx.recv_batch(&mut bufs).unwrap(), 1);

        // Four slots toward the peer: a batch of three goes whole, the next stops after one,
        // and the one after that fails on its first packet.
        let out: Vec<PacketBuf> = (0..3u8).map(|i| packet(&[i; 2])).collect();
        assert_eq!(tx.send_batch(&out).unwrap(), 3);
        assert_eq!(tx.send_batch(&out).unwrap(), 1);
        let err = tx.send_batch(&out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(peer_rx.pending(), 4);
    }
}
