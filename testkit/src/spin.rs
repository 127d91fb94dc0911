//! The reader-spin experiment, shared by the engine and TUN benches.

use std::time::{Duration, Instant};
use tunpipe::device::Interrupter;
use tunpipe::{PacketBuf, RxHalf};

/// A receive half that spins for a while before it waits: an experiment that shows what the
/// engine's reader would gain from a spin window before `wait_readable`, as its other actors
/// have. While spinning it tries `recv` (on a TUN, a non-blocking read syscall) and keeps the
/// packet it finds for the reader's next `recv` (one extra copy).
#[derive(Debug)]
pub struct SpinRx<R> {
    inner: R,
    spin: Duration,
    stash: PacketBuf,
    stashed: bool,
}

impl<R: RxHalf> SpinRx<R> {
    /// Wraps `inner`, spinning up to `spin` before each wait.
    pub fn new(inner: R, spin: Duration) -> Self {
        SpinRx {
            inner,
            spin,
            stash: PacketBuf::new(0, 65_536, 0),
            stashed: false,
        }
    }
}

impl<R: RxHalf> RxHalf for SpinRx<R> {
    fn recv(&mut self, packet: &mut PacketBuf) -> std::io::Result<()> {
        if std::mem::take(&mut self.stashed) {
            // Like a TUN read into a short buffer: truncated, and the reader sees it.
            let n = self.stash.len().min(packet.len());
            packet.data_mut()[..n].copy_from_slice(&self.stash.data()[..n]);
            let _ = packet.truncate(n);
            return Ok(());
        }
        self.inner.recv(packet)
    }

    fn wait_readable(&mut self) -> std::io::Result<()> {
        if self.stashed {
            return Ok(());
        }
        let start = Instant::now();
        let mut tries = 0u32;
        loop {
            // The whole stash is the receive area.
            let _ = self.stash.set_window(0, self.stash.capacity());
            match self.inner.recv(&mut self.stash) {
                Ok(()) => {
                    self.stashed = true;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            tries += 1;
            if tries % 16 == 0 && start.elapsed() >= self.spin {
                return self.inner.wait_readable();
            }
            std::hint::spin_loop();
        }
    }

    fn interrupter(&self) -> Interrupter {
        self.inner.interrupter()
    }
}
