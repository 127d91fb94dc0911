//! Packet buffers: allocated once at start, then passed by ownership through the rings.
//!
//! A [`PacketBuf`] is one fixed allocation laid out as `headroom | packet | tailroom`. The packet
//! window (`start..start + len`) can grow into either end, so a stage can prepend an encapsulation
//! header or append an AEAD tag without copying. The engine receives into a window one byte
//! larger than the MTU so that an oversize packet shows up as `len > mtu` instead of being
//! silently truncated.

use crate::stage::Side;
use rtrb::Consumer;
use std::net::SocketAddr;
use std::ops::Range;

/// Error returned when a packet cannot grow or shrink as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom;

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not enough head- or tailroom in the packet buffer")
    }
}

impl std::error::Error for NoRoom {}

/// One packet buffer. It has exactly one owner at a time: the reader, a worker, the writer, or a
/// ring in between.
pub struct PacketBuf {
    /// Never resized after allocation: a `Vec` only so that it can be allocated fallibly.
    storage: Vec<u8>,
    /// Offset of the packet's first byte; the bytes before it are headroom.
    start: usize,
    len: usize,
    /// Nanoseconds since the engine's epoch at which the reader received the packet
    /// (0 when latency recording is off).
    pub(crate) received_at: u64,
    /// Nanoseconds the stage spent on this packet (its batch's time divided evenly).
    pub(crate) stage_ns: u64,
    /// Where the packet goes once its stage has run. A recycled packet still travels to a
    /// writer, which only sends the buffer home, so that every buffer has one way home.
    pub(crate) route: Route,
    /// The side whose writer the buffer goes to, stamped once: by the stage host when the
    /// route is set (`crate::actor::route_side`), or by the `Emitter` for a packet a stage
    /// emits. A recycled buffer goes there too, to be sent home.
    pub(crate) side: Side,
    /// The pool the buffer belongs to (see [`Pool`]): writers send it back there.
    pub(crate) home: u8,
    /// The peer a datagram came from or goes to (datagram devices); `None` for IP packets.
    endpoint: Option<SocketAddr>,
}

/// Where a packet goes once its stage has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Route {
    /// On toward the other side: the writer of its direction's destination.
    #[default]
    Forward,
    /// Back toward the side it came from (a duplex stage's reply).
    Back,
    /// Nowhere: dropped or consumed (and counted as such); only the buffer goes home.
    Recycle,
}

impl PacketBuf {
    /// A buffer with `headroom` bytes before the packet and room for `capacity` packet bytes
    /// plus `tailroom` after it.
    ///
    /// # Panics
    /// If the allocation fails (as `vec!` does); the engine uses [`PacketBuf::try_new`].
    pub fn new(headroom: usize, capacity: usize, tailroom: usize) -> Self {
        Self::try_new(headroom, capacity, tailroom).expect("packet buffer allocation failed")
    }

    /// Like [`PacketBuf::new`], but an allocation failure is an error instead of an abort.
    ///
    /// # Errors
    /// When the memory cannot be reserved.
    pub fn try_new(
        headroom: usize,
        capacity: usize,
        tailroom: usize,
    ) -> Result<Self, std::collections::TryReserveError> {
        let size = headroom.saturating_add(capacity).saturating_add(tailroom);
        let mut storage = Vec::new();
        storage.try_reserve_exact(size)?;
        // Within the reserved capacity: this does not allocate again.
        storage.resize(size, 0);
        Ok(PacketBuf {
            storage,
            start: headroom,
            len: 0,
            received_at: 0,
            stage_ns: 0,
            route: Route::Forward,
            side: Side::Outside,
            home: 0,
            endpoint: None,
        })
    }

    /// The packet bytes.
    pub fn data(&self) -> &[u8] {
        &self.storage[self.range()]
    }

    /// The packet bytes, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let range = self.range();
        &mut self.storage[range]
    }

    /// Packet length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the packet holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Free bytes before the packet.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Free bytes after the packet.
    pub fn tailroom(&self) -> usize {
        self.storage.len() - self.start - self.len
    }

    /// Total bytes of storage (headroom + packet + tailroom).
    pub fn capacity(&self) -> usize {
        self.storage.len()
    }

    /// Grows the packet by `n` bytes at the front and returns them.
    ///
    /// # Errors
    /// [`NoRoom`] when the headroom is smaller than `n`; the packet is unchanged.
    pub fn push_front(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        if n > self.start {
            return Err(NoRoom);
        }
        self.start -= n;
        self.len += n;
        Ok(&mut self.storage[self.start..self.start + n])
    }

    /// Grows the packet by `n` bytes at the back and returns them.
    ///
    /// # Errors
    /// [`NoRoom`] when the tailroom is smaller than `n`; the packet is unchanged.
    pub fn push_back(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        if n > self.tailroom() {
            return Err(NoRoom);
        }
        let end = self.start + self.len;
        self.len += n;
        Ok(&mut self.storage[end..end + n])
    }

    /// Removes `n` bytes from the front of the packet (they become headroom).
    ///
    /// # Errors
    /// [`NoRoom`] when the packet is shorter than `n`.
    pub fn pull_front(&mut self, n: usize) -> Result<(), NoRoom> {
        if n > self.len {
            return Err(NoRoom);
        }
        self.start += n;
        self.len -= n;
        Ok(())
    }

    /// Shortens the packet to `len` bytes (the rest becomes tailroom).
    ///
    /// # Errors
    /// [`NoRoom`] when `len` is longer than the packet.
    pub fn truncate(&mut self, len: usize) -> Result<(), NoRoom> {
        if len > self.len {
            return Err(NoRoom);
        }
        self.len = len;
        Ok(())
    }

    /// Sets the packet window to `start..start + len` within the storage, as a C stage that
    /// rewrote the buffer reports it.
    ///
    /// # Errors
    /// [`NoRoom`] when the window does not fit in the storage; the packet is unchanged.
    pub fn set_window(&mut self, start: usize, len: usize) -> Result<(), NoRoom> {
        match start.checked_add(len) {
            Some(end) if end <= self.storage.len() => {
                self.start = start;
                self.len = len;
                Ok(())
            }
            _ => Err(NoRoom),
        }
    }

    /// Copies `bytes` in as the whole packet, placed after `headroom` bytes.
    ///
    /// # Errors
    /// [`NoRoom`] when `headroom + bytes.len()` exceeds the storage.
    pub fn fill(&mut self, headroom: usize, bytes: &[u8]) -> Result<(), NoRoom> {
        self.set_window(headroom, bytes.len())?;
        self.data_mut().copy_from_slice(bytes);
        Ok(())
    }

    /// The whole storage, for C stages that see the buffer with its head- and tailroom.
    pub fn storage_mut(&mut self) -> &mut [u8] {
        &mut self.storage
    }

    /// The peer a datagram came from (as received) or goes to (as sent), for datagram
    /// devices such as a UDP socket; `None` for IP packets.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// Sets the peer a datagram came from or goes to.
    pub fn set_endpoint(&mut self, endpoint: Option<SocketAddr>) {
        self.endpoint = endpoint;
    }

    /// Makes the window `headroom..headroom + capacity`, the area a device receives into, and
    /// clears what the last packet left (its endpoint, its drop mark).
    pub(crate) fn prepare_receive(&mut self, headroom: usize, capacity: usize) {
        debug_assert!(headroom + capacity <= self.storage.len());
        self.start = headroom;
        self.len = capacity;
        self.route = Route::Forward;
        self.endpoint = None;
    }

    /// True once the stage dropped or consumed the packet: only its buffer travels on.
    #[inline]
    pub(crate) fn recycled(&self) -> bool {
        self.route == Route::Recycle
    }

    fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

impl std::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBuf")
            .field("headroom", &self.headroom())
            .field("len", &self.len)
            .field("tailroom", &self.tailroom())
            .field("route", &self.route)
            .field("side", &self.side)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Allocates a fixed pool: `count` buffers, each `headroom + area + tailroom` bytes, where
/// the area a device receives into is one byte longer than the largest packet, so the reader
/// sees an oversize packet. The returned `Vec` has room for exactly `count` buffers, so a free
/// list made from it never reallocates.
///
/// Fallible, so that a valid config the system cannot back (an address-space limit, a
/// 32-bit host) is an error for the host instead of an abort.
pub(crate) fn allocate(
    count: usize,
    home: u8,
    headroom: usize,
    area: usize,
    tailroom: usize,
) -> Result<Vec<PacketBuf>, std::collections::TryReserveError> {
    let mut pool = Vec::new();
    pool.try_reserve_exact(count)?;
    for _ in 0..count {
        let mut buf = PacketBuf::try_new(headroom, area, tailroom)?;
        buf.home = home;
        pool.push(buf);
    }
    Ok(pool)
}

/// One owner's buffers: the ones free now, and the rings (one per writer) that bring the
/// others home. The readers, the timer and, in a tunnel, each worker own one; every buffer
/// knows its home, and only ever goes back there.
pub(crate) struct Pool {
    pub free: Vec<PacketBuf>,
    returns: Vec<Consumer<PacketBuf>>,
}

impl Pool {
    pub(crate) fn new(free: Vec<PacketBuf>, returns: Vec<Consumer<PacketBuf>>) -> Self {
        Pool { free, returns }
    }

    /// A pool with no buffers (a one-way engine's workers emit nothing).
    pub(crate) fn empty() -> Self {
        Pool::new(Vec::new(), Vec::new())
    }

    /// Takes home every buffer the writers have recycled; returns how many came.
    pub(crate) fn refill(&mut self) -> usize {
        let mut came = 0;
        for ring in &mut self.returns {
            let n = ring.slots();
            if n == 0 {
                continue;
            }
            if let Ok(chunk) = ring.read_chunk(n) {
                // `free` was allocated with room for the whole pool: no reallocation.
                self.free.extend(chunk);
                came += n;
            }
        }
        came
    }

    /// True when a writer has sent buffers home that [`Pool::refill`] has not taken yet.
    pub(crate) fn has_returns(&self) -> bool {
        self.returns.iter().any(|r| !r.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_head_and_tailroom_and_refuses_past_them() {
        let mut buf = PacketBuf::new(8, 16, 4);
        buf.fill(8, b"abcd").unwrap();
        assert_eq!((buf.headroom(), buf.len(), buf.tailroom()), (8, 4, 16));
        buf.push_front(8).unwrap().copy_from_slice(b"HEADHEAD");
        assert_eq!(buf.push_front(1), Err(NoRoom));
        buf.push_back(16).unwrap().fill(b't');
        assert_eq!(buf.push_back(1), Err(NoRoom));
        assert_eq!(buf.len(), 28);
        assert_eq!(&buf.data()[..12], b"HEADHEADabcd");
        buf.pull_front(8).unwrap();
        buf.truncate(4).unwrap();
        assert_eq!(buf.data(), b"abcd");
        assert_eq!(buf.pull_front(5), Err(NoRoom));
        assert_eq!(buf.truncate(5), Err(NoRoom));
    }

    #[test]
    fn set_window_rejects_overflowing_and_out_of_bounds_windows() {
        let mut buf = PacketBuf::new(2, 4, 2);
        assert_eq!(buf.set_window(usize::MAX, 2), Err(NoRoom));
        assert_eq!(buf.set_window(7, 2), Err(NoRoom));
        assert_eq!(buf.set_window(0, 8), Ok(()));
        assert_eq!(buf.fill(2, b"too long!"), Err(NoRoom));
    }

    #[test]
    fn an_impossible_allocation_is_an_error() {
        assert!(PacketBuf::try_new(usize::MAX / 2, usize::MAX / 2, 0).is_err());
        assert!(allocate(usize::MAX / 64, 0, 0, 1501, 0).is_err());
    }

    #[test]
    fn receive_window_is_one_byte_past_the_mtu() {
        let mut pool = allocate(2, 3, 4, 11, 4).unwrap();
        assert!(pool.iter().all(|b| b.home == 3));
        assert_eq!(pool.len(), 2);
        pool[0].set_endpoint(Some(([10, 0, 0, 1], 53).into()));
        pool[0].prepare_receive(4, 11);
        assert_eq!(pool[0].data_mut().len(), 11);
        assert_eq!((pool[0].headroom(), pool[0].endpoint()), (4, None));
    }
}
