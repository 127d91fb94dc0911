//! The reflect stage over arbitrary bytes in a `PacketBuf` with arbitrary head- and tailroom.
//!
//! Invariants: no panic; the window never moves or changes length (reflect rewrites in
//! place); a dropped packet is left byte for byte as it came; a forwarded one belongs to the
//! same flow (the flow hash is symmetric and reflect swaps both ends); and reflecting a
//! reflected packet either drops it (an echo reply is not a request) or gives back the
//! original exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunpipe::stage::Reflect;
use tunpipe::{PacketBuf, Stage, Verdict};
use tunpipe::wire::flow_hash;

fuzz_target!(|data: &[u8]| {
    let (room, packet) = match data {
        [h, t, rest @ ..] => ((usize::from(*h), usize::from(*t)), rest),
        _ => return,
    };
    let (headroom, tailroom) = room;
    let mut buf = PacketBuf::new(headroom, packet.len(), tailroom);
    buf.fill(headroom, packet)
        .expect("the buffer was sized for it");
    let capacity = buf.capacity();

    let verdict = Reflect.process(&mut buf);
    assert_eq!(buf.len(), packet.len(), "reflect never changes the length");
    assert_eq!(buf.headroom(), headroom, "reflect never moves the packet");
    assert_eq!(buf.capacity(), capacity);
    match verdict {
        Verdict::Drop => assert_eq!(buf.data(), packet, "a dropped packet is left intact"),
        Verdict::Forward => {
            assert_eq!(flow_hash(buf.data()), flow_hash(packet), "same flow");
            let reflected = buf.data().to_vec();
            match Reflect.process(&mut buf) {
                Verdict::Forward => assert_eq!(buf.data(), packet, "reflect is an involution"),
                Verdict::Drop => assert_eq!(buf.data(), &reflected[..]),
            }
        }
    }
});
