//! One engine run on an adopted fd, as both the handle API and `start_tun` hold it.

use super::config::Plan;
use super::error::{
    is_resource_exhaustion, FfiError, FfiResult, TUNPIPE_ERR_BAD_FD, TUNPIPE_ERR_NO_UTUN_FD,
    TUNPIPE_ERR_RESOURCES, TUNPIPE_ERR_UNSUPPORTED,
};
use super::report::TunpipeStats;
use super::stage::CallbackShared;
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tunpipe::{Engine, EngineError, LatencySnapshot, TunDevice};

#[derive(Debug)]
pub(crate) struct Session {
    engine: Engine,
    /// The engine's dup of the host's fd. Dropped once the engine is joined, so that the
    /// dup does not keep the utun open after stop returns.
    device: Mutex<Option<TunDevice>>,
    callback: Option<Arc<CallbackShared>>,
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

impl Session {
    /// Adopts `fd` (a dup; the host's fd is never closed) and starts an engine on it.
    pub(crate) fn start(plan: &Plan, fd: i32) -> FfiResult<Session> {
        plan.validate()?;
        let fd = resolve_fd(fd)?;
        let device = TunDevice::adopt(fd).map_err(|e| {
            let code = if is_resource_exhaustion(&e) {
                TUNPIPE_ERR_RESOURCES
            } else {
                TUNPIPE_ERR_BAD_FD
            };
            FfiError::new(code, format!("cannot adopt fd {fd}: {e}"))
        })?;
        let (builder, callback) = plan.builder();
        let engine = builder.start(&device)?;
        Ok(Session {
            engine,
            device: Mutex::new(Some(device)),
            callback,
        })
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
        }
        result.map_err(FfiError::from)
    }

    pub(crate) fn stats(&self) -> TunpipeStats {
        let errors = self
            .callback
            .as_ref()
            .map_or(0, |c| c.errors.load(Ordering::Relaxed));
        TunpipeStats::from_stats(&self.engine.stats(), errors, self.engine.reserved_bytes())
    }

    pub(crate) fn latency(&self) -> FfiResult<LatencySnapshot> {
        Ok(self.engine.latency()?)
    }

    pub(crate) fn reserved_bytes(&self) -> usize {
        self.engine.reserved_bytes()
    }
}
