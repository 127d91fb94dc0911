//! # tunpipe
//!
//! A packet engine for iOS/tvOS packet tunnels, built on [`tun_rs`]. The host app hands over
//! a utun fd; tunpipe runs the packet loop behind it on dedicated threads, fast, within the
//! Network Extension's memory limit, asleep when idle, and able to stop at once. The same
//! engine runs on a Linux TUN device, where it is tested and benchmarked.
//!
//! Two pipelines share the actors. The one-way engine runs a [`Stage`] on packets read from
//! a device and writes them back out (to the same device, or to another for a bridge):
//!
//! ```text
//!  one-way: Engine::builder().stage(..).start(&device)
//!               ┌──────────── free buffers (writer → reader) ◄───────────┐
//!               ▼                                                         │
//!  rx half ──► Reader ══ring══► Worker[i]: Stage ══ring══► Writer ──► tx half
//!         wait once, then drain   (flow hash picks i)     send; recycles every buffer
//! ```
//!
//! - The **reader** waits once in the kernel, then drains every ready packet into pooled
//!   buffers and hands them on in batches over lock-free SPSC rings; when the device runs dry
//!   it reads again for the spin window before it waits again.
//! - **Workers** each run their own [`Stage`] instance; the flow hash keeps each flow on one
//!   worker, in order. With `workers = 0` (the default) the stage runs inline on the reader.
//! - The **writer** sends, records latency, and returns every buffer to the reader. While it
//!   sleeps, a producer whose ring to it is empty sends a sparse batch itself on the writer's
//!   send half, holding its send token, and the writer stays asleep.
//!
//! A tunnel joins two devices, an inside one (the TUN/utun) and an outside one (a
//! [`UdpDevice`]), through a [`DuplexStage`] (WireGuard, behind the `wireguard` feature) that
//! sees both directions:
//!
//! ```text
//!  tunnel: Engine::builder().start_tunnel(stage, &inside, &outside)
//!  inside rx ──► Reader-in ══ring══► Worker[i]: DuplexStage ══ring══► Writer-out ──► outside tx
//!  inside tx ◄── Writer-in ◄══ring══ Worker[i]: DuplexStage ◄══ring══ Reader-out ◄── outside rx
//!    (TUN)                             │ emits toward either side                         (UDP)
//!                                      └ names its next deadline ─► Timer ══ring══► both writers
//! ```
//!
//! - Each device has its own **reader** and **writer**. With `workers = 0` (the default) both
//!   readers run the one stage inline; with workers, both readers feed them (the inside
//!   reader by flow hash, the outside one by the peer's address), and the workers share the
//!   stage. The engine holds no lock around it: the stage guards its own state (WireGuard
//!   locks only the peer a packet belongs to).
//! - The stage sees each packet with its direction and may emit packets of its own toward
//!   either side (a handshake response goes back the way the initiation came), from a reserve
//!   of buffers it is given at start: it never allocates or blocks.
//! - The **timer** sleeps until the deadline the stage names (or until a
//!   [`Engine::rebind`] says the path changed), runs the stage's timers (handshake retries,
//!   keepalives) and sends what they emit through either writer. With nothing due it sleeps:
//!   an idle tunnel wakes nobody.
//! - Every writer returns each buffer to the pool it came from: a reader's, the timer's, or a
//!   worker's reserve.
//! - A **path change** ([`Engine::rebind`]) runs on a thread of its own: endpoints looked up
//!   again, a new socket, a handshake from it, a fresh port if nobody answers.
//!   [`Engine::suspend`] parks every actor with no timeout until [`Engine::resume`].
//!
//! The two are one topology, built in one place: a one-way engine is a tunnel with only the
//! outbound direction, no timer, and a stage that emits nothing, and every pool and ring is
//! sized from the config and what the stage declares (its overhead and burst). Every packet
//! is counted once coming in (read, or made by the stage) and once going out (written,
//! dropped with its reason, consumed, or still held), so that in each direction
//! [`Stats::balanced`] holds at every stop; the engine checks it ([`Engine::balanced`]).
//!
//! In both, waiting follows two rules, so that a packet at the rates a phone runs (100 to
//! 20,000 a second) costs about what it costs in a one-thread loop:
//! - *Spin only when it pays.* An idle actor spins briefly, yields, then parks, but spins (or
//!   the reader re-reads) only while the gaps between its recent pieces of work predict the
//!   next one within the spin window ([`Config::spin`]); otherwise it parks at once. A
//!   reader whose spins, on average, wait longer than a quarter window (more CPU than the
//!   sleep they save) stops spinning for a while, longer each time. A producer rings a
//!   parked consumer's doorbell, and only then.
//! - *Bypass a sleeping writer.* A producer (a reader running the stage, a worker, the
//!   timer) that finds the writer asleep and its own ring to it empty, and whose own cadence
//!   says the traffic is sparse, sends up to 8 packets itself, holding the writer's send
//!   token: one thread wake-up per sparse packet instead of two. The writer holds the token
//!   from taking packets off a ring until they are written, so each flow keeps its order
//!   ([`Stats::tx_direct`] counts these packets). Under load, and at one packet in flight,
//!   the writer is awake and the rings carry the batches.
//!
//! An idle engine uses no CPU, and `stop()` returns promptly, with every thread joined.
//!
//! ```
//! use tunpipe::{BuiltinStage, Config, Engine, MemoryDevice};
//!
//! // An in-memory device stands in for a TUN here; `TunDevice::adopt(fd)` takes a real one.
//! let (device, mut app, mut app_rx) = MemoryDevice::new(64, 2048);
//! let mut config = Config::default();
//! config.workers = 1;
//! let engine = Engine::builder().config(config).stage(BuiltinStage::Passthrough).start(&device)?;
//!
//! let packet = [0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
//! app.send(&packet).unwrap();
//! while app_rx.recv_with(|p| assert_eq!(p, packet)).is_none() {
//!     std::thread::yield_now();
//! }
//! engine.stop()?;
//! let stats = engine.stats();
//! assert_eq!(stats.rx_packets, stats.tx_packets + stats.dropped());
//! # Ok::<(), tunpipe::EngineError>(())
//! ```

mod actor;
pub mod config;
pub mod device;
mod engine;
mod error;
mod link;
mod pool;
pub mod stage;
pub mod stats;
mod sync;
pub mod sys;
pub mod wire;
#[cfg(feature = "wireguard")]
pub mod wireguard;

/// The README's code examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

pub use config::Config;
pub use device::{
    Device, FaultPlan, FaultyDevice, MemoryDevice, RxHalf, TunDevice, TxHalf, UdpDevice,
};
pub use engine::{
    on_engine_thread, reserved_bytes, tunnel_engine_bytes, tunnel_reserved_bytes, Builder, Engine,
    IntoStageFactory,
};
pub use error::{ConfigError, EngineError};
pub use pool::{NoRoom, PacketBuf};
pub use stage::{Action, BuiltinStage, Direction, DuplexStage, Emitter, Side, Stage, Verdict};
pub use stats::{Latency, LatencySnapshot, Percentiles, Stats};
