//! One engine run on an adopted fd, as both the handle API and `start_tun` hold it.

use super::config::{Plan, StagePlan};
use super::error::{
    is_resource_exhaustion, FfiError, FfiResult, TUNPIPE_ERR_BAD_FD, TUNPIPE_ERR_CONFIG,
    TUNPIPE_ERR_NOT_FOUND, TUNPIPE_ERR_NOT_RUNNING, TUNPIPE_ERR_NO_UTUN_FD, TUNPIPE_ERR_RESOURCES,
    TUNPIPE_ERR_UNSUPPORTED,
};
use super::report::{
    latency_base64, TunpipeLatency, TunpipePeerStats, TunpipeStats, TunpipeTunnelStats,
};
use super::stage::CallbackShared;
use super::util::{check_ptr, sized_len, write_sized, write_string};
use parking_lot::Mutex;
use std::ffi::c_char;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tunpipe::wireguard::{WgConfig, WireGuard, WireGuardCounters};
use tunpipe::{Engine, EngineError, TunDevice, UdpDevice};

#[derive(Debug)]
pub(crate) struct Session {
    engine: Engine,
    /// The engine's dup of the host's fd. Dropped once the engine is joined, so that the
    /// dup does not keep the utun open after stop returns.
    device: Mutex<Option<TunDevice>>,
    callback: Option<Arc<CallbackShared>>,
    tunnel: Option<Tunnel>,
}

/// What a WireGuard session has besides the engine.
#[derive(Debug)]
struct Tunnel {
    /// The outside. Dropped once the engine is joined, like the fd's dup, so that its port
    /// is free for the next start while the session's figures stay readable.
    udp: Mutex<Option<UdpDevice>>,
    counters: Arc<WireGuardCounters>,
    stage: WireGuard,
}

/// The host's fd, or with `fd < 0` the utun fd found by scanning (Apple only).
pub(crate) fn resolve_fd(fd: i32) -> FfiResult<i32> {
    if fd >= 0 {
        return Ok(fd);
    }
    tunpipe::sys::find_utun_fd().map_err(|e| match e.kind() {
        io::ErrorKind::Unsupported => FfiError::new(
            TUNPIPE_ERR_UNSUPPORTED,
            format!(
                "fd {fd} < 0 asks tunpipe to find the utun fd, which only Apple platforms support"
            ),
        ),
        _ => FfiError::new(TUNPIPE_ERR_NO_UTUN_FD, format!("no utun fd found: {e}")),
    })
}

/// Adopts the host's TUN/utun `fd` (>= 0): the engine's own dup, checked to be a TUN (Linux)
/// or a utun control socket (Apple). The host's fd is never closed.
pub(crate) fn adopt(fd: i32) -> FfiResult<TunDevice> {
    TunDevice::adopt(fd).map_err(|e| {
        let code = if is_resource_exhaustion(&e) {
            TUNPIPE_ERR_RESOURCES
        } else {
            TUNPIPE_ERR_BAD_FD
        };
        FfiError::new(code, format!("cannot adopt fd {fd}: {e}"))
    })
}

impl Session {
    /// Adopts `fd` (a dup; the host's fd is never closed) and starts an engine on it.
    pub(crate) fn start(plan: &Plan, fd: i32) -> FfiResult<Session> {
        plan.validate()?;
        let device = adopt(resolve_fd(fd)?)?;
        let (builder, callback) = plan.builder();
        match &plan.stage {
            StagePlan::WireGuard(config) => {
                let (stage, udp) = tunnel_parts(config)?;
                Session::start_tunnel(builder, device, stage, udp)
            }
            _ => Ok(Session {
                engine: builder.start(&device)?,
                device: Mutex::new(Some(device)),
                callback,
                tunnel: None,
            }),
        }
    }

    /// Starts a tunnel of `stage` between the host's TUN `inside` (from [`adopt`]) and the
    /// UDP socket `udp`, with `builder`'s config. The port `udp` is bound to is what `get`
    /// shows when the configuration asked for any (0).
    pub(crate) fn start_tunnel(
        builder: tunpipe::Builder,
        inside: TunDevice,
        stage: WireGuard,
        udp: UdpDevice,
    ) -> FfiResult<Session> {
        let counters = stage.counters();
        let engine = builder.start_tunnel(stage.clone(), &inside, &udp)?;
        if let Ok(addr) = udp.local_addr() {
            stage.record_bound_port(addr.port());
        }
        Ok(Session {
            engine,
            device: Mutex::new(Some(inside)),
            callback: None,
            tunnel: Some(Tunnel {
                udp: Mutex::new(Some(udp)),
                counters,
                stage,
            }),
        })
    }

    /// Runs `f` on the tunnel's UDP socket: `None` once the engine is joined (the socket is
    /// closed then) or when the engine runs no tunnel.
    pub(crate) fn with_udp<R>(&self, f: impl FnOnce(Option<&UdpDevice>) -> R) -> R {
        match &self.tunnel {
            Some(tunnel) => f(tunnel.udp.lock().as_ref()),
            None => f(None),
        }
    }

    /// Rebinds a tunnel's UDP socket (the network path changed).
    pub(crate) fn rebind(&self) -> FfiResult {
        if self.tunnel.is_none() {
            return Err(FfiError::new(
                TUNPIPE_ERR_UNSUPPORTED,
                "this engine runs no tunnel: there is no UDP socket to rebind",
            ));
        }
        if self.engine.is_stopping() {
            return Err(FfiError::new(
                TUNPIPE_ERR_NOT_RUNNING,
                "the engine has stopped",
            ));
        }
        Ok(self.engine.rebind()?)
    }

    /// Stops the tunnel's peers that have an endpoint from following their datagrams
    /// ([`WireGuard::disable_roaming`]).
    pub(crate) fn disable_roaming(&self) -> FfiResult {
        self.tunnel()?.stage.disable_roaming();
        Ok(())
    }

    /// Suspends the engine ([`Engine::suspend`]), or resumes it.
    pub(crate) fn suspend(&self, suspended: bool) -> FfiResult {
        if self.engine.is_stopping() {
            return Err(FfiError::new(
                TUNPIPE_ERR_NOT_RUNNING,
                "the engine has stopped",
            ));
        }
        if suspended {
            Ok(self.engine.suspend()?)
        } else {
            Ok(self.engine.resume()?)
        }
    }

    /// Stops and joins the engine, then closes its dup of the fd.
    pub(crate) fn stop(&self) -> FfiResult {
        self.after_join(self.engine.stop())
    }

    /// Waits until the engine is stopped (by someone else or a fatal error) and joined.
    pub(crate) fn wait(&self) -> FfiResult {
        self.after_join(self.engine.wait())
    }

    fn after_join(&self, result: Result<(), EngineError>) -> FfiResult {
        // From an engine thread nothing was joined: the device must stay until it is.
        if !matches!(result, Err(EngineError::StopFromEngineThread)) {
            self.device.lock().take();
            if let Some(tunnel) = &self.tunnel {
                tunnel.udp.lock().take();
            }
        }
        result.map_err(FfiError::from)
    }

    // What the figures' C calls copy out: one body each for the handle call and its
    // `start_tun` twin.

    /// Copies the engine's counters into `*out`.
    ///
    /// # Safety
    /// `out` must be NULL or a writable `TunpipeStats` whose `size` field is set.
    pub(crate) unsafe fn copy_stats(&self, out: *mut TunpipeStats) -> FfiResult<i32> {
        check_ptr(out.cast_const(), "out")?;
        let errors = self
            .callback
            .as_ref()
            .map_or(0, |c| c.errors.load(Ordering::Relaxed));
        let stats =
            TunpipeStats::from_stats(&self.engine.stats(), errors, self.engine.reserved_bytes());
        // SAFETY: the caller promises `out` holds `size` writable bytes.
        unsafe { write_sized(out, stats) }
    }

    /// Copies the latency percentiles into `*out`.
    ///
    /// # Safety
    /// `out` must be NULL or a writable `TunpipeLatency` whose `size` field is set.
    pub(crate) unsafe fn copy_latency(&self, out: *mut TunpipeLatency) -> FfiResult<i32> {
        check_ptr(out.cast_const(), "out")?;
        let latency = TunpipeLatency::from_snapshot(&self.engine.latency()?);
        // SAFETY: the caller promises `out` holds `size` writable bytes.
        unsafe { write_sized(out, latency) }
    }

    /// Writes latency histogram `which` in base64 into `buf[0..len]` (`*needed`: the size).
    ///
    /// # Safety
    /// `buf` must be NULL or writable for `len` bytes; `needed` NULL or writable.
    pub(crate) unsafe fn copy_latency_base64(
        &self,
        which: u32,
        buf: *mut c_char,
        len: usize,
        needed: *mut usize,
    ) -> FfiResult<i32> {
        let text = latency_base64(&self.engine.latency()?, which)?;
        // SAFETY: the pointers are checked inside; the caller promises their extent.
        unsafe { write_string(&text, buf, len, needed) }
    }

    /// Copies the tunnel's figures into `*out`.
    ///
    /// # Safety
    /// `out` must be NULL or a writable `TunpipeTunnelStats` whose `size` field is set.
    pub(crate) unsafe fn copy_tunnel_stats(&self, out: *mut TunpipeTunnelStats) -> FfiResult<i32> {
        check_ptr(out.cast_const(), "out")?;
        let tunnel = self.tunnel()?;
        let stats = TunpipeTunnelStats::from_tunnel(&tunnel.counters.snapshot(), &self.engine);
        // SAFETY: the caller promises `out` holds `size` writable bytes.
        unsafe { write_sized(out, stats) }
    }

    /// Copies peer `index`'s figures (in the order of the peers now) into `*out`.
    ///
    /// # Safety
    /// `out` must be NULL or a writable `TunpipePeerStats` whose `size` field is set.
    pub(crate) unsafe fn copy_peer_stats(
        &self,
        index: u32,
        out: *mut TunpipePeerStats,
    ) -> FfiResult<i32> {
        check_ptr(out.cast_const(), "out")?;
        let tunnel = self.tunnel()?;
        // Before the index: a host loop ends at "not found", so a struct it never sized
        // right must fail loudly rather than end the loop as if there were no peers.
        // SAFETY: the caller promises a readable `size` field.
        unsafe { sized_len(out) }?;
        // One peer's snapshot per call (a walk over N peers costs N, not N²); the table can
        // change between a host's calls (peers added or removed live).
        let counters = &tunnel.counters;
        let peer = usize::try_from(index)
            .ok()
            .and_then(|i| counters.peer(i))
            .ok_or_else(|| {
                FfiError::new(
                    TUNPIPE_ERR_NOT_FOUND,
                    format!(
                        "no peer {index}: the tunnel has {} now",
                        counters.peer_count()
                    ),
                )
            })?;
        // SAFETY: the caller promises `out` holds `size` writable bytes.
        unsafe { write_sized(out, TunpipePeerStats::from_peer(&peer)) }
    }

    fn tunnel(&self) -> FfiResult<&Tunnel> {
        self.tunnel
            .as_ref()
            .ok_or_else(|| FfiError::new(TUNPIPE_ERR_UNSUPPORTED, "this engine runs no tunnel"))
    }

    pub(crate) fn reserved_bytes(&self) -> usize {
        self.engine.reserved_bytes()
    }
}

/// A wg-quick config's stage, with its host names resolved, and its UDP socket, bound.
fn tunnel_parts(config: &WgConfig) -> FfiResult<(WireGuard, UdpDevice)> {
    let config_error =
        |e: tunpipe::wireguard::WgConfigError| FfiError::new(TUNPIPE_ERR_CONFIG, e.to_string());
    let mut config = config.clone();
    config.resolve().map_err(config_error)?;
    let stage = WireGuard::new(&config).map_err(config_error)?;
    let port = config.interface.listen_port.unwrap_or(0);
    let udp = UdpDevice::bind_port(port).map_err(|e| EngineError::Device(Arc::new(e)))?;
    Ok((stage, udp))
}
