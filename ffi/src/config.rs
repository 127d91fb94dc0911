//! The C view of [`Config`] and the stage choice, and its conversion.

use super::error::TUNPIPE_ERR_CONFIG;
use super::error::{FfiError, FfiResult, TUNPIPE_ERR_INVALID_ARGUMENT, TUNPIPE_ERR_STRUCT_SIZE};
use super::stage::{CallbackShared, StageFn, TunpipeStageCallback};
use super::util::{check_ptr, HostContext};
use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;
use std::time::Duration;
use tunpipe::wireguard::WgConfig;
use tunpipe::{Builder, BuiltinStage, Config, Engine};

/// Stage: answer ICMP/ICMPv6 echo requests and reflect UDP (the default).
pub const TUNPIPE_STAGE_REFLECT: u32 = 0;
/// Stage: forward every packet unchanged.
pub const TUNPIPE_STAGE_PASSTHROUGH: u32 = 1;
/// Stage: call `TunpipeConfig::callback` for every packet.
pub const TUNPIPE_STAGE_CALLBACK: u32 = 2;

/// The longest spin window `TunpipeConfig::spin_us` accepts: 10 ms. A sleep and its wake-up
/// cost tens of µs, so a longer spin would burn far more CPU than the wake-up it saves.
pub const TUNPIPE_SPIN_US_MAX: u32 = 10_000;

/// Engine configuration. Fill it with `tunpipe_config_default`, then change fields. The
/// struct grows by turning `reserved` bytes into fields, so `sizeof` stays the same and a
/// host built against an older header keeps working: `tunpipe_config_default` sets every
/// field, those the host's header calls `reserved` included, to its default. A host that
/// zeroes those bytes itself gets 0 in each newer field: the default for `memory_budget`,
/// and for `spin_us` no spinning (the engine runs, trading latency for CPU). `size` lets
/// tunpipe refuse a struct that is too short.
///
/// Sizes are validated at start; a value out of range is `TUNPIPE_ERR_CONFIG`, never an
/// abort. Limits: mtu 68..=65535 (9000 is fine), workers <= 64, ring_capacity 1..=65536,
/// headroom and tailroom <= 4096, batch 1..=1024, pool_buffers (0 = automatic) at least what
/// the rings hold and <= 262144, the pool at most 1 GiB, and spin_us <= 10000.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TunpipeConfig {
    /// `sizeof(TunpipeConfig)` as the caller knows it; set by `tunpipe_config_default`.
    pub size: u32,
    /// Worker threads running the stage; 0 runs it inline on the reader thread.
    pub workers: u32,
    /// Packets each ring holds.
    pub ring_capacity: u32,
    /// Buffers in the pool; 0 sizes it from the rings.
    pub pool_buffers: u32,
    /// Largest packet, in bytes.
    pub mtu: u32,
    /// Bytes before each packet that a stage may prepend into.
    pub headroom: u32,
    /// Bytes after each packet that a stage may append into.
    pub tailroom: u32,
    /// Most packets read per wake-up.
    pub batch: u32,
    /// `TUNPIPE_STAGE_REFLECT`, `TUNPIPE_STAGE_PASSTHROUGH` or `TUNPIPE_STAGE_CALLBACK`.
    pub stage: u32,
    /// 1: pin actor threads to cores (Linux, Android) or raise their QoS class (Apple).
    pub pin: u8,
    /// 1: record latency histograms; 0: do not (saves two clock reads per batch).
    pub latency: u8,
    /// Zero.
    pub reserved0: [u8; 2],
    /// Stage panics tolerated before the engine stops with `TUNPIPE_ERR_STAGE_PANICS`.
    pub max_stage_panics: u64,
    /// The C stage, when `stage == TUNPIPE_STAGE_CALLBACK`.
    pub callback: TunpipeStageCallback,
    /// Passed back to `callback` untouched. It must stay valid until the engine is stopped,
    /// and be usable from the worker threads.
    pub callback_context: *mut c_void,
    /// A WireGuard tunnel: a NUL-terminated wg-quick text (`[Interface]` PrivateKey, Address,
    /// ListenPort, MTU, DNS; `[Peer]` PublicKey, PresharedKey, Endpoint, AllowedIPs,
    /// PersistentKeepalive), or NULL for no tunnel. It is copied during the call that reads
    /// this config; an invalid text is `TUNPIPE_ERR_CONFIG`, with the line and field in the
    /// last error.
    ///
    /// With it, the engine runs a tunnel between the fd (the inside: the utun/TUN, whose
    /// addresses and routes the host has set, as iOS does through
    /// `NEPacketTunnelNetworkSettings`) and a UDP socket of its own (the outside, on the
    /// text's ListenPort or any port). `stage`, `callback` and `mtu` are then not used: the
    /// text's MTU (1420 when absent) is the inside MTU, and the engine sizes its buffers for
    /// it plus WireGuard's and UDP/IP's overhead. Leaving `stage` and `mtu` at their defaults
    /// (reflect, 1500) is not a conflict. An Endpoint given as a host name is resolved when
    /// the engine starts (a blocking DNS lookup).
    pub wireguard_config: *const c_char,
    /// Most bytes the engine may reserve at start (buffers, rings, histograms and a tunnel's
    /// per-peer state, what `tunpipe_config_reserved_bytes` says). Past it, validation and
    /// start fail with `TUNPIPE_ERR_CONFIG` and a last error naming what to shrink. 0: the
    /// default, 40 MiB on iOS, tvOS, watchOS and visionOS (an extension may use 50 MB), none
    /// elsewhere; `UINT64_MAX`: none.
    pub memory_budget: u64,
    /// How long, in microseconds, an idle engine thread keeps looking for the next packet
    /// before it sleeps, from 0 to `TUNPIPE_SPIN_US_MAX` (10000). 0: never; an idle thread
    /// sleeps at once. `tunpipe_config_default` sets 50, on every platform.
    ///
    /// What it costs. A thread spins only while its recent packets came at most about two
    /// windows apart: sparse traffic (at 50, packets more than about 100 µs apart, as in a
    /// call or a paced stream) sleeps after each packet whatever this says, and an idle
    /// engine sleeps in every thread. A reader whose spins wait, on average, longer than a
    /// quarter window (costing more than the sleep they save: at 50, packets about 50 µs
    /// apart) stops spinning for a while too. The window matters in
    /// bursts and quick request-reply exchanges: a spin keeps a core busy through the gaps
    /// (CPU, so battery) and saves a sleep and a wake-up (latency). With 0, each packet a
    /// thread waited for costs a sleep and a wake-up, tens of µs, and the core is free
    /// meanwhile. Measured on a 2-core Linux VM, 64-byte UDP through a TUN, 0 workers; one
    /// packet in flight: at 50, a 9 µs round trip, 85,000-103,000 packets/s on 1.4 cores; at
    /// 0, 54-59 µs, 17,000-18,000 packets/s on 0.7 cores, but 37-39 µs of CPU per packet
    /// against 14-16.5 (a wake-up costs CPU too). 32 in flight: at 0, 4.2-4.6 µs of CPU per
    /// packet against 6.0-8.2 at 50, at a rate within the runs' spread. Not measured on
    /// Apple hardware (PERFORMANCE.md, "Spinning that yields").
    pub spin_us: u32,
    /// Zero; room for fields added later.
    pub reserved: [u8; 44],
}

// The growth rule: `sizeof` never changes, and no field has padding before it, so a host's
// struct and this one agree byte for byte. On 64-bit targets (every Apple one):
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<TunpipeConfig>() == 128);
    assert!(std::mem::offset_of!(TunpipeConfig, memory_budget) == 72);
    assert!(std::mem::offset_of!(TunpipeConfig, spin_us) == 80);
    assert!(std::mem::offset_of!(TunpipeConfig, reserved) == 84);
};

impl TunpipeConfig {
    /// The defaults: those of [`Config::default`] and the reflect stage.
    pub fn defaults() -> Self {
        let c = Config::default();
        let narrow = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        TunpipeConfig {
            size: std::mem::size_of::<TunpipeConfig>() as u32,
            workers: narrow(c.workers),
            ring_capacity: narrow(c.ring_capacity),
            pool_buffers: narrow(c.pool_buffers),
            mtu: narrow(c.mtu),
            headroom: narrow(c.headroom),
            tailroom: narrow(c.tailroom),
            batch: narrow(c.batch),
            stage: TUNPIPE_STAGE_REFLECT,
            pin: u8::from(c.pin),
            latency: u8::from(c.latency),
            reserved0: [0; 2],
            max_stage_panics: c.max_stage_panics,
            callback: None,
            callback_context: std::ptr::null_mut(),
            wireguard_config: std::ptr::null(),
            memory_budget: 0,
            spin_us: u32::try_from(c.spin.as_micros()).unwrap_or(u32::MAX),
            reserved: [0; 44],
        }
    }

    /// Reads a caller's config: the prefix its `size` covers, which must hold at least
    /// this version's fields (no shorter version was ever published).
    ///
    /// # Safety
    /// `ptr` must be NULL or aligned and valid for reads of its own `size` field and then of
    /// `min(size, size_of::<TunpipeConfig>())` bytes.
    pub(crate) unsafe fn read(ptr: *const TunpipeConfig) -> FfiResult<TunpipeConfig> {
        check_ptr(ptr, "config")?;
        // SAFETY: checked non-null and aligned; the caller promises the struct starts with
        // a readable `size` field.
        let size = unsafe { std::ptr::addr_of!((*ptr).size).read() } as usize;
        if size < std::mem::size_of::<TunpipeConfig>() {
            return Err(FfiError::new(
                TUNPIPE_ERR_STRUCT_SIZE,
                format!(
                    "TunpipeConfig.size is {size}, expected at least {} (use tunpipe_config_default)",
                    std::mem::size_of::<TunpipeConfig>()
                ),
            ));
        }
        // SAFETY: `size` covers the whole of this version's struct, which the caller
        // promises is readable; every bit pattern is valid for its fields (integers, a
        // nullable fn pointer, a raw pointer).
        Ok(unsafe { ptr.read() })
    }

    /// Converts to the engine's config and stage plan (not yet validated), copying and
    /// parsing the WireGuard text if there is one.
    ///
    /// # Safety
    /// `wireguard_config` must be NULL or a NUL-terminated string readable for this call.
    pub(crate) unsafe fn to_plan(self) -> FfiResult<Plan> {
        // SAFETY: the caller promises the pointer is NULL or a readable C string.
        if let Some(tunnel) = unsafe { wireguard_text(self.wireguard_config) }? {
            let mut config = self.engine_config();
            // The wg-quick MTU is the inside MTU; the host's `mtu` and `stage` are not used.
            config.mtu = usize::from(tunnel.interface.mtu);
            return Ok(Plan {
                config,
                stage: StagePlan::WireGuard(Box::new(tunnel)),
            });
        }
        let config = self.engine_config();
        Ok(Plan {
            config,
            stage: self.stage_plan()?,
        })
    }

    /// The engine config these fields describe.
    fn engine_config(&self) -> Config {
        let mut config = Config::default();
        config.workers = self.workers as usize;
        config.ring_capacity = self.ring_capacity as usize;
        config.pool_buffers = self.pool_buffers as usize;
        config.mtu = self.mtu as usize;
        config.headroom = self.headroom as usize;
        config.tailroom = self.tailroom as usize;
        config.batch = self.batch as usize;
        config.pin = self.pin != 0;
        config.latency = self.latency != 0;
        config.max_stage_panics = self.max_stage_panics;
        config.memory_budget = match self.memory_budget {
            0 => tunpipe::config::limits::DEFAULT_MEMORY_BUDGET,
            u64::MAX => None,
            bytes => Some(usize::try_from(bytes).unwrap_or(usize::MAX)),
        };
        // 0 is a window of its own (never spin), not "the default": the default comes from
        // tunpipe_config_default. The yield count and policy stay as measured.
        config.spin = Duration::from_micros(u64::from(self.spin_us));
        config
    }

    /// The one-way stage these fields choose.
    fn stage_plan(&self) -> FfiResult<StagePlan> {
        Ok(match self.stage {
            TUNPIPE_STAGE_REFLECT => StagePlan::Builtin(BuiltinStage::Reflect),
            TUNPIPE_STAGE_PASSTHROUGH => StagePlan::Builtin(BuiltinStage::Passthrough),
            TUNPIPE_STAGE_CALLBACK => match self.callback {
                Some(cb) => StagePlan::Callback(cb, HostContext(self.callback_context)),
                None => {
                    return Err(FfiError::new(
                        TUNPIPE_ERR_INVALID_ARGUMENT,
                        "stage is TUNPIPE_STAGE_CALLBACK but callback is NULL",
                    ))
                }
            },
            other => {
                return Err(FfiError::new(
                    TUNPIPE_ERR_INVALID_ARGUMENT,
                    format!("unknown stage {other}"),
                ))
            }
        })
    }
}

/// Copies and parses a host's wg-quick text: `None` for NULL.
///
/// # Safety
/// `text` must be NULL or a NUL-terminated string readable for this call.
pub(crate) unsafe fn wireguard_text(text: *const c_char) -> FfiResult<Option<WgConfig>> {
    if text.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, and the caller promises a readable NUL-terminated string.
    let text = unsafe { CStr::from_ptr(text) };
    let text = text
        .to_str()
        .map_err(|_| FfiError::new(TUNPIPE_ERR_CONFIG, "wireguard_config is not UTF-8 text"))?;
    WgConfig::parse(text)
        .map(Some)
        .map_err(|e| FfiError::new(TUNPIPE_ERR_CONFIG, e.to_string()))
}

impl Default for TunpipeConfig {
    fn default() -> Self {
        Self::defaults()
    }
}

/// What a start needs: the engine config and how to build the stage.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub config: Config,
    pub stage: StagePlan,
}

#[derive(Clone, Debug)]
pub(crate) enum StagePlan {
    Builtin(BuiltinStage),
    Callback(StageFn, HostContext),
    /// A WireGuard tunnel between the fd and a UDP socket (boxed: a config is large).
    WireGuard(Box<WgConfig>),
}

impl Plan {
    /// Checks the engine config, and a tunnel's config as a whole (a peer at least, the
    /// limits, one peer per key: [`WgConfig::check`]). It builds no per-peer state, so a
    /// config at the limits is checked in milliseconds; host names in endpoints are resolved
    /// only at start. Then what it would reserve against its memory budget.
    pub(crate) fn validate(&self) -> FfiResult {
        self.validate_fields()?;
        let (engine, stage) = self.reserved_parts();
        self.config
            .check_memory_budget(engine, stage)
            .map_err(|e| FfiError::from(tunpipe::EngineError::Config(e)))
    }

    /// [`Plan::validate`] without the memory budget: enough to say what it would reserve.
    pub(crate) fn validate_fields(&self) -> FfiResult {
        self.config
            .validate()
            .map_err(|e| FfiError::from(tunpipe::EngineError::Config(e)))?;
        // The engine takes any window; C gets a cap, so that a unit mistake (ms for µs, or
        // a negative number cast) is an error rather than threads that spin for seconds.
        let spin_us = self.config.spin.as_micros();
        if spin_us > u128::from(TUNPIPE_SPIN_US_MAX) {
            return Err(FfiError::new(
                TUNPIPE_ERR_CONFIG,
                format!(
                    "invalid config: spin_us {spin_us} exceeds {TUNPIPE_SPIN_US_MAX} (10 ms); \
                     0 never spins"
                ),
            ));
        }
        if let StagePlan::WireGuard(tunnel) = &self.stage {
            tunnel
                .check()
                .map_err(|e| FfiError::new(TUNPIPE_ERR_CONFIG, e.to_string()))?;
        }
        Ok(())
    }

    /// Bytes an engine with this plan reserves at start (buffers, rings, histograms, and a
    /// tunnel's per-peer state).
    pub(crate) fn reserved_bytes(&self) -> usize {
        let (engine, stage) = self.reserved_parts();
        engine + stage
    }

    /// The engine's part of the reserved bytes, and the stage's.
    fn reserved_parts(&self) -> (usize, usize) {
        match &self.stage {
            StagePlan::WireGuard(tunnel) => (
                tunpipe::tunnel_engine_bytes(
                    &self.config,
                    tunpipe::wireguard::OVERHEAD,
                    tunpipe::wireguard::QUEUE_DEPTH,
                ),
                tunpipe::wireguard::state_bytes(tunnel.peers.len(), tunnel.prefixes()),
            ),
            _ => (tunpipe::reserved_bytes(&self.config), 0),
        }
    }

    /// An engine builder with this config and (one-way) stage, and for a C stage the
    /// counters its adapters share. A tunnel's stage is built by the session.
    pub(crate) fn builder(&self) -> (Builder, Option<Arc<CallbackShared>>) {
        let builder = Engine::builder().config(self.config.clone());
        match &self.stage {
            StagePlan::Builtin(b) => (builder.stage(*b), None),
            StagePlan::WireGuard(_) => (builder, None),
            StagePlan::Callback(cb, ctx) => {
                let shared = CallbackShared::new(*cb, ctx.0);
                let adapters = shared.clone();
                let builder = builder.stage_factory(move |worker| adapters.stage_for(worker));
                (builder, Some(shared))
            }
        }
    }
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            config: Config::default(),
            stage: StagePlan::Builtin(BuiltinStage::Reflect),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window a plan built from these C fields gives the engine.
    fn spin_of(c: TunpipeConfig) -> Duration {
        // SAFETY: no WireGuard text (NULL).
        let plan = unsafe { c.to_plan() }.unwrap();
        plan.validate().unwrap();
        plan.config.spin
    }

    #[test]
    fn the_spin_window_reaches_the_engine_and_0_means_never() {
        // The default is the engine's own, on every target.
        assert_eq!(spin_of(TunpipeConfig::defaults()), Config::default().spin);
        for (us, spin) in [
            (0, Duration::ZERO),
            (1, Duration::from_micros(1)),
            (200, Duration::from_micros(200)),
            (TUNPIPE_SPIN_US_MAX, Duration::from_millis(10)),
        ] {
            let c = TunpipeConfig {
                spin_us: us,
                ..TunpipeConfig::defaults()
            };
            assert_eq!(spin_of(c), spin, "spin_us {us}");
        }
    }

    #[test]
    fn a_spin_window_past_the_cap_is_a_config_error_that_names_it() {
        for us in [TUNPIPE_SPIN_US_MAX + 1, u32::MAX] {
            let c = TunpipeConfig {
                spin_us: us,
                ..TunpipeConfig::defaults()
            };
            // SAFETY: no WireGuard text (NULL).
            let plan = unsafe { c.to_plan() }.unwrap();
            let err = plan.validate().unwrap_err();
            assert_eq!(err.code, TUNPIPE_ERR_CONFIG);
            assert!(err.message.contains(&format!("spin_us {us}")), "{err:?}");
        }
    }
}
