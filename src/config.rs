//! Engine configuration, validated before anything is allocated or spawned.

pub use crate::error::ConfigError;
use std::time::Duration;

/// Upper bounds that validation enforces, so that a huge number (say, from C) is a clear error
/// instead of an allocation failure that aborts the process.
pub mod limits {
    /// Largest MTU accepted. iOS proxies commonly run 9000-byte MTUs; TUN allows 65535.
    pub const MAX_MTU: usize = 65_535;
    /// Smallest MTU accepted: the IPv4 minimum.
    pub const MIN_MTU: usize = 68;
    /// Most workers.
    pub const MAX_WORKERS: usize = 64;
    /// Largest ring capacity (packets per ring).
    pub const MAX_RING_CAPACITY: usize = 1 << 16;
    /// Largest pool (buffers).
    pub const MAX_POOL_BUFFERS: usize = 1 << 18;
    /// Largest head- or tailroom per buffer.
    pub const MAX_ROOM: usize = 4096;
    /// Largest read batch.
    pub const MAX_BATCH: usize = 1024;
    /// Most memory the pool may reserve, in bytes.
    pub const MAX_POOL_BYTES: usize = 1 << 30;
    /// The default [`crate::Config::memory_budget`]: on iOS, tvOS, watchOS and visionOS,
    /// 40 MiB, so that an extension (which iOS stops at 50 MB) keeps 10 MB for its own code
    /// and the host's; elsewhere none.
    pub const DEFAULT_MEMORY_BUDGET: Option<usize> =
        if cfg!(all(target_vendor = "apple", not(target_os = "macos"))) {
            Some(40 << 20)
        } else {
            None
        };
}

/// How the engine runs. Build one with `Config::default()` and set fields; call
/// [`Config::validate`] (the engine does) to check it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Worker threads running the stage. 0 runs the stage inline on the reader (two threads
    /// in all), which wins on small machines: see PERFORMANCE.md.
    pub workers: usize,
    /// Packets each ring holds (rounded up to a power of two is not needed; any size works).
    pub ring_capacity: usize,
    /// Buffers in each reader's pool (a tunnel has two readers), or 0 for automatic: what the
    /// rings hold plus a batch in each actor's hands. An explicit value must be at least what
    /// the rings hold, so that a full pipeline cannot starve the reader by design; see
    /// [`Config::pool_size`].
    pub pool_buffers: usize,
    /// Largest packet the device carries. Buffers receive `mtu + 1` bytes so an oversize packet
    /// is detected, counted and dropped, never forwarded truncated.
    pub mtu: usize,
    /// Bytes reserved before each packet for a stage to prepend (encapsulation headers).
    pub headroom: usize,
    /// Bytes reserved after each packet for a stage to append (AEAD tags).
    pub tailroom: usize,
    /// Most packets the reader drains per wake-up before handing them on.
    pub batch: usize,
    /// How long an idle actor spins before it yields and then sleeps: a worker or a writer
    /// watching its rings, and a reader reading again before it waits in the kernel. A
    /// sleep and its wake-up cost about 35 µs on a small VM, so a short spin saves latency
    /// and CPU under load; an idle engine still sleeps in every thread after this window.
    /// An actor spins (and yields) only while the gaps between its recent pieces of work
    /// predict the next within this window: sparse traffic (a call, a stream) sleeps after
    /// each packet instead of spinning for nothing. A reader whose spins wait, on average,
    /// longer than a quarter of the window (they cost more CPU than the sleep they save)
    /// stops spinning for a while, longer each time. 0: never spin or yield.
    pub spin: Duration,
    /// How many times an idle consumer yields after spinning, before it parks.
    pub yields: u32,
    /// While spinning, offer the core to any other runnable thread every few µs
    /// (`sched_yield`). When the engine's threads and the app's outnumber the cores, a pure
    /// spin keeps the thread it waits for off the CPU until the scheduler preempts it; a
    /// yield lets that thread run now. When nothing else wants the core, a yield returns at
    /// once and costs one syscall. On by default: on two cores it made the engine 2-6x
    /// faster (PERFORMANCE.md, "Spinning that yields").
    pub yield_while_spinning: bool,
    /// Record latency histograms (two clock reads per batch).
    pub latency: bool,
    /// Pin actors to cores (Linux, Android); on Apple, sets a QoS class instead.
    pub pin: bool,
    /// One-way stage panics tolerated before the engine stops with an error. Each panic drops
    /// its packet and rebuilds the stage instance. A two-way stage (a tunnel) is not rebuilt:
    /// its first panic stops the engine ([`crate::EngineError::DuplexStagePanicked`]).
    pub max_stage_panics: u64,
    /// Most bytes the engine may reserve at start: its buffers, rings and histograms, and a
    /// tunnel's per-peer state ([`crate::Engine::reserved_bytes`]). A start, or a host's
    /// validation, past it fails with an error naming what to shrink. `None`: no budget.
    /// Default: [`limits::DEFAULT_MEMORY_BUDGET`].
    pub memory_budget: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 0,
            ring_capacity: 256,
            pool_buffers: 0,
            mtu: 1500,
            headroom: 64,
            tailroom: 64,
            batch: 64,
            spin: Duration::from_micros(50),
            yields: 8,
            yield_while_spinning: true,
            latency: true,
            pin: false,
            max_stage_panics: 1000,
            memory_budget: limits::DEFAULT_MEMORY_BUDGET,
        }
    }
}

impl Config {
    /// Checks every field against its limits and against each other.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use limits::*;
        fn check(
            ok: bool,
            field: &'static str,
            reason: impl FnOnce() -> String,
        ) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::new(field, reason()))
            }
        }
        check((MIN_MTU..=MAX_MTU).contains(&self.mtu), "mtu", || {
            format!("mtu {} is outside {MIN_MTU}..={MAX_MTU}", self.mtu)
        })?;
        check(self.workers <= MAX_WORKERS, "workers", || {
            format!("workers {} exceeds {MAX_WORKERS}", self.workers)
        })?;
        check(
            (1..=MAX_RING_CAPACITY).contains(&self.ring_capacity),
            "ring_capacity",
            || {
                format!(
                    "ring_capacity {} is outside 1..={MAX_RING_CAPACITY}",
                    self.ring_capacity
                )
            },
        )?;
        check(self.headroom <= MAX_ROOM, "headroom", || {
            format!("headroom {} exceeds {MAX_ROOM}", self.headroom)
        })?;
        check(self.tailroom <= MAX_ROOM, "tailroom", || {
            format!("tailroom {} exceeds {MAX_ROOM}", self.tailroom)
        })?;
        check((1..=MAX_BATCH).contains(&self.batch), "batch", || {
            format!("batch {} is outside 1..={MAX_BATCH}", self.batch)
        })?;
        let pool = self.pool_size();
        check(pool <= MAX_POOL_BUFFERS, "pool_buffers", || {
            format!("pool_buffers {pool} exceeds {MAX_POOL_BUFFERS}")
        })?;
        let in_rings = self.ring_capacity.saturating_mul(self.ring_count());
        check(pool >= in_rings, "pool_buffers", || {
            format!("pool_buffers {pool} is smaller than the {in_rings} packets the rings can hold")
        })?;
        let pool_bytes = pool.saturating_mul(self.buffer_size());
        check(pool_bytes <= MAX_POOL_BYTES, "pool_buffers", || {
            format!("pool_buffers {pool}: the pool would reserve {pool_bytes} bytes, over {MAX_POOL_BYTES}")
        })
    }

    /// Rings that carry packets from reader to writer: one per worker in, one per worker out,
    /// or one straight from reader to writer when the stage runs inline.
    pub fn ring_count(&self) -> usize {
        if self.workers == 0 {
            1
        } else {
            self.workers.saturating_mul(2)
        }
    }

    /// Buffers the pool of a one-way engine will hold: `pool_buffers`, or when that is 0, the
    /// rings' capacity plus one batch for each actor. Saturates instead of overflowing, so
    /// validation can reject it.
    pub fn pool_size(&self) -> usize {
        self.reader_pool(1, false, 0)
    }

    /// Buffers each reader's pool holds in an engine with `directions` readers (and as many
    /// writers), a timer or not, and a stage that emits up to `emitted` packets per batch:
    /// `pool_buffers`, or when that is 0, what fills before the pool runs dry. A reader's
    /// packets fill its forward rings, then (with workers) the workers' rings toward its
    /// destination, and a batch in the hands of every actor; inline, the reader's own pool is
    /// also where the stage's emitted packets come from. Saturates, as
    /// [`Config::pool_size`].
    pub(crate) fn reader_pool(&self, directions: usize, timer: bool, emitted: usize) -> usize {
        if self.pool_buffers != 0 {
            return self.pool_buffers;
        }
        let rings_ahead = self
            .ring_capacity
            .saturating_mul(self.workers.max(1).saturating_add(self.workers));
        let actors = self
            .workers
            .saturating_add(directions.saturating_mul(2))
            .saturating_add(usize::from(timer));
        rings_ahead
            .saturating_add(self.batch.saturating_mul(actors))
            .saturating_add(emitted)
    }

    /// Checks what an engine would reserve against [`Config::memory_budget`]: `engine` bytes
    /// of buffers, rings and histograms, and `stage` bytes of a tunnel's own state (its
    /// peers).
    ///
    /// # Errors
    /// Past the budget, a [`ConfigError`] for `memory_budget` that says how much each part
    /// needs and what to shrink: the largest part first.
    pub fn check_memory_budget(&self, engine: usize, stage: usize) -> Result<(), ConfigError> {
        let needed = engine.saturating_add(stage);
        let Some(budget) = self.memory_budget else {
            if needed > LARGE {
                log::warn!(
                    "the engine will reserve {} (mtu {}, {} of it for the tunnel's peers)",
                    mib(needed),
                    self.mtu,
                    mib(stage)
                );
            }
            return Ok(());
        };
        if needed <= budget {
            return Ok(());
        }
        let buffers = format!(
            "the buffers and rings need {} (lower mtu, now {}, or ring_capacity, batch, workers)",
            mib(engine),
            self.mtu
        );
        let peers = format!("the tunnel's peers need {} (fewer peers)", mib(stage));
        let parts = if stage > engine {
            format!("{peers}; {buffers}")
        } else if stage > 0 {
            format!("{buffers}; {peers}")
        } else {
            buffers
        };
        Err(ConfigError::new(
            "memory_budget",
            format!(
                "memory_budget {} is too small: the engine would reserve {}: {parts}",
                mib(budget),
                mib(needed)
            ),
        ))
    }

    /// Bytes of one pool buffer.
    pub fn buffer_size(&self) -> usize {
        self.headroom + self.mtu + 1 + self.tailroom
    }
}

/// Reserving more than this without a budget is worth a warning: it is more than an iOS
/// extension may use in all.
const LARGE: usize = 64 << 20;

/// `bytes` in MiB, to one decimal place, for messages.
fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_fields_are_named_in_the_error() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    mtu: 10,
                    ..Config::default()
                },
                "mtu",
            ),
            (
                Config {
                    mtu: usize::MAX,
                    ..Config::default()
                },
                "mtu",
            ),
            (
                Config {
                    workers: 10_000,
                    ..Config::default()
                },
                "workers",
            ),
            (
                Config {
                    ring_capacity: 0,
                    ..Config::default()
                },
                "ring_capacity",
            ),
            (
                Config {
                    ring_capacity: usize::MAX,
                    ..Config::default()
                },
                "ring_capacity",
            ),
            (
                Config {
                    batch: 0,
                    ..Config::default()
                },
                "batch",
            ),
            (
                Config {
                    headroom: usize::MAX,
                    ..Config::default()
                },
                "headroom",
            ),
            (
                Config {
                    pool_buffers: usize::MAX,
                    ..Config::default()
                },
                "pool_buffers",
            ),
            (
                Config {
                    workers: 64,
                    ring_capacity: 1 << 16,
                    ..Config::default()
                },
                "pool_buffers",
            ),
            (
                Config {
                    pool_buffers: 10,
                    ..Config::default()
                },
                "smaller than",
            ),
            (
                Config {
                    mtu: 65_535,
                    pool_buffers: 1 << 18,
                    ring_capacity: 1 << 16,
                    ..Config::default()
                },
                "reserve",
            ),
        ];
        for (config, needle) in cases {
            let err = config.validate().unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
            // The field is named on its own too, and the message names it.
            assert!(err.reason.starts_with(err.field), "{err:?}");
        }
    }

    #[test]
    fn mtu_9000_is_valid() {
        let config = Config {
            mtu: 9000,
            ..Config::default()
        };
        config.validate().unwrap();
    }
}
