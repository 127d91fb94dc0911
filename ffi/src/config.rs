//! The C view of [`Config`] and the stage choice, and its conversion.

use super::error::TUNPIPE_ERR_CONFIG;
use super::error::{FfiError, FfiResult, TUNPIPE_ERR_INVALID_ARGUMENT, TUNPIPE_ERR_STRUCT_SIZE};
use super::stage::{CallbackShared, StageFn, TunpipeStageCallback};
use super::util::{check_ptr, HostContext};
use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;
use tunpipe::wireguard::WgConfig;
use tunpipe::{Builder, BuiltinStage, Config, Engine};

/// Stage: answer ICMP/ICMPv6 echo requests and reflect UDP (the default).
pub const TUNPIPE_STAGE_REFLECT: u32 = 0;
/// Stage: forward every packet unchanged.
pub const TUNPIPE_STAGE_PASSTHROUGH: u32 = 1;
/// Stage: call `TunpipeConfig::callback` for every packet.
pub const TUNPIPE_STAGE_CALLBACK: u32 = 2;

/// Engine configuration. Fill it with `tunpipe_config_default`, then change fields. The
/// struct grows by turning `reserved` bytes into fields, whose value 0 means "the default",
/// so `sizeof` stays the same and a host built against an older header keeps working;
/// `size` lets tunpipe refuse a struct that is too short.
///
/// Sizes are validated at start; a value out of range is `TUNPIPE_ERR_CONFIG`, never an
/// abort. Limits: mtu 68..=65535 (9000 is fine), workers <= 64, ring_capacity 1..=65536,
/// headroom and tailroom <= 4096, batch 1..=1024, pool_buffers (0 = automatic) at least what
/// the rings hold and <= 262144, and the pool at most 1 GiB.
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
    /// Zero; room for fields added later.
    pub reserved: [u8; 48],
}

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
            reserved: [0; 48],
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
        // Spin and yield windows are tuned by measurement, not exposed to C (yet).
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
