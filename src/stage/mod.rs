//! Stages: the per-packet work between the reader and the writer.
//!
//! A [`Stage`] is plain code: a packet in, a [`Verdict`] out. It has no fds, threads or clocks,
//! so it can be tested with byte arrays and fuzzed. Each worker owns its own instance (a clone,
//! or one built for its index by [`crate::Builder::stage_factory`]), so a stage keeps
//! per-worker state without locks.
//!
//! Packets come from other apps on the device: they are untrusted bytes. Every built-in stage
//! parses them with the checked views in [`crate::wire`] and never panics on any input. A stage
//! that does panic anyway is caught by the engine: that packet is dropped and counted, the stage
//! is rebuilt, and the engine goes on (up to [`crate::Config::max_stage_panics`]). A two-way
//! stage that panics stops the engine instead: its protocol state may be torn.

use std::sync::Arc;

use crate::pool::PacketBuf;

mod duplex;
mod passthrough;
mod reflect;

pub(crate) use duplex::EmitTally;
pub use duplex::{Action, DeadlineBell, Direction, DuplexStage, Emitter, Side};
pub use passthrough::Passthrough;
pub use reflect::Reflect;

/// What a stage decided about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the packet on, as it now stands in the buffer (possibly rewritten or grown).
    Forward,
    /// Drop the packet; it is counted as a stage drop.
    Drop,
}

/// Per-packet work. One instance per worker; it is called from that worker's thread only.
pub trait Stage: Send {
    /// Processes one packet in place and says what to do with it.
    ///
    /// The packet may be rewritten, and grown into its head- and tailroom with
    /// [`PacketBuf::push_front`] / [`PacketBuf::push_back`].
    fn process(&mut self, packet: &mut PacketBuf) -> Verdict;
}

impl<F: FnMut(&mut PacketBuf) -> Verdict + Send> Stage for F {
    fn process(&mut self, packet: &mut PacketBuf) -> Verdict {
        self(packet)
    }
}

/// Builds one stage per worker, given the worker's index (0 when the stage runs inline on the
/// reader). It is also called again to replace a stage instance that panicked.
pub(crate) type StageFactory = Arc<dyn Fn(usize) -> Box<dyn Stage> + Send + Sync>;

/// The stages tunpipe ships, by name (for the CLI and the C ABI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BuiltinStage {
    /// Answers ICMP/ICMPv6 echo requests and reflects UDP; drops everything else.
    #[default]
    Reflect,
    /// Forwards every packet unchanged, without parsing it.
    Passthrough,
}

impl BuiltinStage {
    /// A factory for this stage.
    pub(crate) fn factory(self) -> StageFactory {
        match self {
            BuiltinStage::Reflect => Arc::new(|_| Box::new(Reflect)),
            BuiltinStage::Passthrough => Arc::new(|_| Box::new(Passthrough)),
        }
    }

    /// The stage's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            BuiltinStage::Reflect => "reflect",
            BuiltinStage::Passthrough => "passthrough",
        }
    }
}

impl std::str::FromStr for BuiltinStage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reflect" => Ok(BuiltinStage::Reflect),
            "passthrough" => Ok(BuiltinStage::Passthrough),
            other => Err(format!(
                "unknown stage {other:?} (expected reflect or passthrough)"
            )),
        }
    }
}

impl std::fmt::Display for BuiltinStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
