use super::{PacketBuf, Stage, Verdict};

/// Forwards every packet unchanged, without parsing it. The baseline for measuring the engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct Passthrough;

impl Stage for Passthrough {
    #[inline]
    fn process(&mut self, _packet: &mut PacketBuf) -> Verdict {
        Verdict::Forward
    }
}
