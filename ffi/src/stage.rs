//! The C callback stage: adapts a host's C function to [`Stage`].
//!
//! The adapter only converts: it shows the callback the buffer, then applies the window the
//! callback reports through the checked [`PacketBuf::set_window`]. It allocates nothing and
//! logs nothing per packet: a bad window is counted, and logged once per engine.

use crate::util::HostContext;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tunpipe::{PacketBuf, Stage, Verdict};

/// Verdict: send the packet on, as the window (`offset`, `length`) now describes it.
pub const TUNPIPE_VERDICT_FORWARD: i32 = 0;
/// Verdict: drop the packet (counted as a stage drop).
pub const TUNPIPE_VERDICT_DROP: i32 = 1;

/// One packet, as a C stage sees it. The buffer is `data[0..capacity]`: headroom, then the
/// packet at `data[offset..offset + length]`, then tailroom.
///
/// The callback may rewrite any byte of `data[0..capacity]` and move the window by storing a
/// new `offset` and `length` (to prepend a header, lower `offset`; to append a tag, raise
/// `length`). A window that does not fit in `capacity` drops the packet and is counted in
/// `TunpipeStats::callback_errors` (and as a stage drop). Changes to `data` and `capacity`
/// are ignored. The pointer is valid only during the call.
#[repr(C)]
#[derive(Debug)]
pub struct TunpipePacket {
    /// Start of the buffer's storage (not of the packet).
    pub data: *mut u8,
    /// Bytes of storage: headroom + packet + tailroom.
    pub capacity: usize,
    /// Offset of the packet's first byte in `data` (the headroom in front of it).
    pub offset: usize,
    /// Packet length in bytes.
    pub length: usize,
}

/// A C stage: called once per packet with the host's context, the worker index
/// (`0..workers`, or 0 when `workers == 0` runs the stage on the reader thread) and the
/// packet. Returns `TUNPIPE_VERDICT_FORWARD` or `TUNPIPE_VERDICT_DROP`; any other value drops
/// the packet and counts a callback error.
///
/// With N workers it is called from N threads at once, each with its own worker index and
/// never concurrently for the same index: keep per-worker state indexed by it. It must not
/// block for long, must not unwind (no C++ exceptions, no Swift errors escaping), and must
/// not call `tunpipe_engine_free` on its own engine. (NULL in a config means none.)
pub type TunpipeStageCallback = Option<
    unsafe extern "C" fn(context: *mut c_void, worker: u32, packet: *mut TunpipePacket) -> i32,
>;

/// The non-null form of [`TunpipeStageCallback`].
pub(crate) type StageFn =
    unsafe extern "C" fn(context: *mut c_void, worker: u32, packet: *mut TunpipePacket) -> i32;

/// What one engine's C stage shares between its workers: the callback, its context, and
/// the count of unusable results.
#[derive(Debug)]
pub(crate) struct CallbackShared {
    callback: StageFn,
    context: HostContext,
    /// Results that could not be applied: a window outside the buffer or an unknown verdict.
    /// Only host bugs touch it, so sharing it between workers costs nothing on a healthy path.
    pub errors: AtomicU64,
    warned: AtomicBool,
}

impl CallbackShared {
    pub(crate) fn new(callback: StageFn, context: *mut c_void) -> Arc<Self> {
        Arc::new(CallbackShared {
            callback,
            context: HostContext(context),
            errors: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        })
    }

    /// The adapter for one worker.
    pub(crate) fn stage_for(self: &Arc<Self>, worker: usize) -> CallbackStage {
        CallbackStage {
            shared: self.clone(),
            worker: u32::try_from(worker).unwrap_or(u32::MAX),
        }
    }

    #[cold]
    fn bad_result(&self, what: std::fmt::Arguments<'_>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        // One line per engine: a broken callback would otherwise flood the host's log.
        if !self.warned.swap(true, Ordering::Relaxed) {
            log::warn!("C stage callback returned {what}; packet dropped (logged once, counted in callback_errors)");
        }
    }
}

/// One worker's C stage.
pub(crate) struct CallbackStage {
    shared: Arc<CallbackShared>,
    worker: u32,
}

impl Stage for CallbackStage {
    fn process(&mut self, packet: &mut PacketBuf) -> Verdict {
        let (offset, length) = (packet.headroom(), packet.len());
        let storage = packet.storage_mut();
        let mut view = TunpipePacket {
            data: storage.as_mut_ptr(),
            capacity: storage.len(),
            offset,
            length,
        };
        // SAFETY: the callback is the host's, given with its context under the contract
        // documented on `TunpipeStageCallback`. `view.data` points at `capacity` bytes that
        // this worker owns exclusively for the call (the `&mut PacketBuf`), and `view` lives
        // on this stack frame for the whole call.
        let verdict =
            unsafe { (self.shared.callback)(self.shared.context.0, self.worker, &mut view) };
        match verdict {
            TUNPIPE_VERDICT_FORWARD => match packet.set_window(view.offset, view.length) {
                Ok(()) => Verdict::Forward,
                Err(_) => {
                    self.shared.bad_result(format_args!(
                        "window offset {} length {} outside a {}-byte buffer",
                        view.offset, view.length, view.capacity
                    ));
                    Verdict::Drop
                }
            },
            TUNPIPE_VERDICT_DROP => Verdict::Drop,
            other => {
                self.shared
                    .bad_result(format_args!("unknown verdict {other}"));
                Verdict::Drop
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prepends a 4-byte header "HDR:" and appends one byte '!', as an encapsulating host
    /// would; counts calls in the context.
    unsafe extern "C" fn grow(ctx: *mut c_void, worker: u32, p: *mut TunpipePacket) -> i32 {
        // SAFETY: the tests pass a live AtomicU64 as context and the adapter a live view.
        let (calls, p) = unsafe { (&*(ctx as *const AtomicU64), &mut *p) };
        calls.fetch_add(u64::from(worker) + 1, Ordering::Relaxed);
        if p.offset < 4 || p.offset + p.length >= p.capacity {
            return TUNPIPE_VERDICT_DROP;
        }
        p.offset -= 4;
        p.length += 5;
        // SAFETY: the window was checked against capacity just above.
        let buf = unsafe { std::slice::from_raw_parts_mut(p.data, p.capacity) };
        buf[p.offset..p.offset + 4].copy_from_slice(b"HDR:");
        buf[p.offset + p.length - 1] = b'!';
        TUNPIPE_VERDICT_FORWARD
    }

    /// Reports a window one byte past the end of the buffer.
    unsafe extern "C" fn overrun(_: *mut c_void, _: u32, p: *mut TunpipePacket) -> i32 {
        // SAFETY: the adapter passes a live view.
        let p = unsafe { &mut *p };
        p.length = p.capacity - p.offset + 1;
        TUNPIPE_VERDICT_FORWARD
    }

    /// Reports an offset so large that offset + length overflows.
    unsafe extern "C" fn overflow(_: *mut c_void, _: u32, p: *mut TunpipePacket) -> i32 {
        // SAFETY: the adapter passes a live view.
        let p = unsafe { &mut *p };
        p.offset = usize::MAX;
        p.length = 2;
        TUNPIPE_VERDICT_FORWARD
    }

    unsafe extern "C" fn garbage_verdict(_: *mut c_void, _: u32, _: *mut TunpipePacket) -> i32 {
        7
    }

    fn packet(bytes: &[u8]) -> PacketBuf {
        let mut p = PacketBuf::new(8, 32, 4);
        p.fill(8, bytes).unwrap();
        p
    }

    #[test]
    fn a_callback_grows_the_packet_at_both_ends() {
        let calls = AtomicU64::new(0);
        let shared = CallbackShared::new(grow, &calls as *const AtomicU64 as *mut c_void);
        let mut stage = shared.stage_for(2);
        let mut p = packet(b"abc");
        assert_eq!(stage.process(&mut p), Verdict::Forward);
        assert_eq!(p.data(), b"HDR:abc!");
        assert_eq!(p.headroom(), 4);
        // Worker index 2 reached the callback (it adds index + 1).
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(shared.errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_window_outside_the_buffer_drops_the_packet_and_is_counted() {
        for callback in [overrun as StageFn, overflow, garbage_verdict] {
            let shared = CallbackShared::new(callback, std::ptr::null_mut());
            let mut stage = shared.stage_for(0);
            let mut p = packet(b"abcd");
            assert_eq!(stage.process(&mut p), Verdict::Drop);
            // The packet is left as it was: nothing half-applied.
            assert_eq!(p.data(), b"abcd");
            assert_eq!(stage.process(&mut p), Verdict::Drop);
            assert_eq!(shared.errors.load(Ordering::Relaxed), 2);
        }
    }
}
