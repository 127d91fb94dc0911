//! The engine's errors: why it could not start, why it stopped, and which setting is wrong.
//! They live here, below everything that returns them, so that no actor imports from the
//! engine handle above it.

use std::io;
use std::sync::Arc;

/// Why the engine could not start, or why it stopped.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum EngineError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The device failed: at open, or fatally while running (for example, it was deleted).
    Device(Arc<io::Error>),
    /// An actor thread could not be spawned.
    Spawn(Arc<io::Error>),
    /// The stage kept panicking past [`crate::Config::max_stage_panics`].
    StagePanics {
        /// Panics counted when the engine gave up.
        panics: u64,
    },
    /// The stage panicked and so did its factory when asked for a fresh instance: there is
    /// no stage left to run.
    StageRebuild,
    /// A two-way stage (a tunnel) panicked. It holds protocol state for both directions that
    /// the panic may have left torn, and it has no factory to rebuild it from, so the engine
    /// stops rather than carry packets through it.
    DuplexStagePanicked {
        /// Where: on an outbound packet, on an inbound packet, or in its timers.
        during: &'static str,
    },
    /// `stop()` was called from one of the engine's own threads (say, a stage). The stop was
    /// requested; the engine's owner must still call `stop()` or `wait()` to join it.
    StopFromEngineThread,
    /// A latency snapshot could not be taken, or a rebind done, because the engine is
    /// stopping.
    Stopping,
    /// The engine cannot do what was asked (for example, rebind a device that is no socket).
    Unsupported(&'static str),
    /// The buffer pool could not be allocated.
    OutOfMemory {
        /// Bytes the pool needed.
        bytes: usize,
    },
}

impl EngineError {
    pub(crate) fn device(e: io::Error) -> Self {
        EngineError::Device(Arc::new(e))
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Config(e) => e.fmt(f),
            EngineError::Device(e) => write!(f, "device error: {e}"),
            EngineError::Spawn(e) => write!(f, "could not spawn an engine thread: {e}"),
            EngineError::StagePanics { panics } => {
                write!(f, "the stage panicked {panics} times; giving up")
            }
            EngineError::StageRebuild => {
                f.write_str("the stage panicked, and so did its factory when rebuilding it")
            }
            EngineError::DuplexStagePanicked { during } => write!(
                f,
                "the tunnel's stage panicked {during}; stopped, since its state may be torn"
            ),
            EngineError::StopFromEngineThread => {
                f.write_str("stop called from an engine thread; stop requested, not joined")
            }
            EngineError::Stopping => f.write_str("the engine is stopping"),
            EngineError::Unsupported(what) => f.write_str(what),
            EngineError::OutOfMemory { bytes } => {
                write!(f, "could not allocate the {bytes}-byte buffer pool")
            }
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Config(e) => Some(e),
            EngineError::Device(e) | EngineError::Spawn(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<ConfigError> for EngineError {
    fn from(e: ConfigError) -> Self {
        EngineError::Config(e)
    }
}

/// A configuration that cannot run: which setting is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// The setting to fix, named as the [`crate::Config`] field is (`mtu`, `pool_buffers`, ...),
    /// so that the CLI, the C ABI and Swift can point at it.
    pub field: &'static str,
    /// What is wrong with its value, as a sentence that starts with the field's name.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid config: {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn sources_chain_to_the_cause() {
        let io = EngineError::device(io::Error::from_raw_os_error(libc::EBADF));
        let source = io
            .source()
            .expect("a device error has its io::Error as source");
        assert_eq!(
            source
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error),
            Some(libc::EBADF)
        );
        let config = EngineError::from(ConfigError::new("mtu", "10 is too small"));
        let source = config
            .source()
            .expect("a config error has its ConfigError as source");
        assert_eq!(source.downcast_ref::<ConfigError>().unwrap().field, "mtu");
        assert!(EngineError::Stopping.source().is_none());
    }
}
