//! `PacketBuf`'s window operations in arbitrary order with arbitrary sizes: what a stage
//! (push/pull/truncate) or the C callback adapter (`set_window`, with the offset and length
//! a C callback reported) can ask of a buffer. The C adapter itself is crate-private and
//! reachable only through an engine on a TUN fd; `set_window` is its only logic.
//!
//! Invariants: no panic; headroom + len + tailroom == capacity after every call; a refused
//! call changes nothing; an accepted one does exactly what it says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunpipe::PacketBuf;

fn word(bytes: &[u8]) -> usize {
    let mut w = [0u8; 8];
    w[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
    // Mostly small values, sometimes huge ones (near usize::MAX) to probe overflow.
    let v = u64::from_le_bytes(w) as usize;
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        v
    } else {
        v % 512
    }
}

fuzz_target!(|data: &[u8]| {
    let [h, c, t, ops @ ..] = data else { return };
    let mut buf = PacketBuf::new(usize::from(*h), usize::from(*c), usize::from(*t));
    let capacity = buf.capacity();
    for op in ops.chunks(9) {
        let n = word(&op[1..]);
        let before = (buf.headroom(), buf.len(), buf.data().to_vec());
        let ok = match op[0] % 6 {
            0 => buf.push_front(n).is_ok(),
            1 => buf.push_back(n).is_ok(),
            2 => buf.pull_front(n).is_ok(),
            3 => buf.truncate(n).is_ok(),
            4 => {
                let len = word(&op[op.len().min(5)..]);
                let ok = buf.set_window(n, len).is_ok();
                assert_eq!(ok, n.checked_add(len).is_some_and(|end| end <= capacity));
                if ok {
                    assert_eq!((buf.headroom(), buf.len()), (n, len));
                }
                ok
            }
            _ => {
                let bytes = &op[1..];
                let ok = buf.fill(n, bytes).is_ok();
                if ok {
                    assert_eq!(buf.data(), bytes);
                }
                ok
            }
        };
        assert_eq!(buf.headroom() + buf.len() + buf.tailroom(), capacity);
        assert_eq!(buf.storage_mut().len(), capacity);
        if !ok {
            assert_eq!(
                (buf.headroom(), buf.len(), buf.data()),
                (before.0, before.1, &before.2[..])
            );
        }
        match op[0] % 6 {
            0 if ok => assert_eq!((buf.headroom(), buf.len()), (before.0 - n, before.1 + n)),
            1 if ok => assert_eq!(buf.len(), before.1 + n),
            2 if ok => assert_eq!((buf.headroom(), buf.len()), (before.0 + n, before.1 - n)),
            3 if ok => assert_eq!(buf.len(), n),
            _ => {}
        }
    }
});
