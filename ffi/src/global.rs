//! The seed's calls: `start_tun(fd)` blocks while one global engine runs; `stop_tun()` stops
//! it. They never touch engines started through handles.
//!
//! A tunnel whose endpoints need a lookup (`WgConfig::resolve`) gets it while `Starting`, on
//! a thread of its own that a `stop_tun` does not wait for: the start gives up at once, and
//! the lookup ends whenever the resolver answers, unread.
//!
//! The global slot walks `Idle → Starting → Running → Idle`. A `stop_tun` that finds it
//! `Starting` marks the start as cancelled and waits: `start_tun` sees the mark when it would
//! move to `Running`, stops its fresh engine itself, and only then leaves `Starting`. So a
//! quick start-then-stop from Swift cannot leave an engine running, and `stop_tun` still
//! returns only once nothing runs. The slot returns to `Idle` only after the engine is
//! joined and its dup of the fd closed, so a `start_tun` right after `stop_tun` returns
//! finds it free.

use super::config::{Plan, StagePlan, TunpipeConfig};
use super::error::{
    FfiError, FfiResult, TUNPIPE_ERR_ALREADY_RUNNING, TUNPIPE_ERR_CONFIG,
    TUNPIPE_ERR_ENGINE_THREAD, TUNPIPE_ERR_NOT_RUNNING, TUNPIPE_OK,
};
use super::report::{TunpipeLatency, TunpipePeerStats, TunpipeStats, TunpipeTunnelStats};
use super::session::Session;
use super::util::check_ptr;
use parking_lot::{Condvar, Mutex};
use std::ffi::c_char;
use std::sync::Arc;
use tunpipe::wireguard::{WgConfig, WgConfigError};

enum State {
    Idle,
    /// `start_tun` is adopting the fd and spawning; `cancelled` once a `stop_tun` came.
    Starting {
        cancelled: bool,
    },
    Running(Arc<Session>),
}

struct Global {
    state: State,
    /// Set by `tunpipe_set_config`; `None` means the defaults (reflect).
    plan: Option<Plan>,
    /// The running engine, or the last one, so stats stay readable after stop.
    last: Option<Arc<Session>>,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    state: State::Idle,
    plan: None,
    last: None,
});
/// Signalled whenever the slot leaves `Starting`.
static STARTED: Condvar = Condvar::new();

thread_local! {
    /// Set on the thread in `start_tun` while it runs: a `stop_tun` from a log callback there
    /// must not wait for the start it is part of.
    static STARTING_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

ffi_fn! {
    /// Sets the configuration `start_tun` uses from its next call on (a running engine keeps
    /// its own). It is validated now: an invalid one is refused and the previous one kept. For
    /// a C stage, the callback context must stay valid while any `start_tun` engine runs.
    ///
    /// Returns `TUNPIPE_OK`, `TUNPIPE_ERR_NULL_POINTER`, `TUNPIPE_ERR_STRUCT_SIZE`,
    /// `TUNPIPE_ERR_INVALID_ARGUMENT` or `TUNPIPE_ERR_CONFIG`.
    ///
    /// # Safety
    /// `config` must be NULL or point to a readable `TunpipeConfig`.
    unsafe fn tunpipe_set_config(config: *const TunpipeConfig) -> i32 {
        // SAFETY: the caller promises `config` is NULL or readable, and its text pointer NULL
        // or a readable C string.
        let plan = unsafe { TunpipeConfig::read(config)?.to_plan() }?;
        plan.validate()?;
        GLOBAL.lock().plan = Some(plan);
        Ok(TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Runs the packet engine on the host's TUN/utun `fd` and blocks until `stop_tun()` or a
    /// fatal error. Call it on a thread of its own.
    ///
    /// It adopts `fd` by duplicating it: the host's fd is never closed and its flags are never
    /// changed, so the same fd can be started again. `fd < 0` finds the utun fd (Apple only).
    /// The configuration is the one `tunpipe_set_config` set, or the defaults: the reflect
    /// stage, MTU 1500.
    ///
    /// The fd contract, while an engine runs on `fd`. The host may: keep `fd` and use it for
    /// ioctls; set or clear `O_NONBLOCK` (the engine reads and writes non-blocking per call
    /// and never depends on the flag); close `fd` early (the engine goes on with its dup);
    /// rename the interface or change its addresses, routes or MTU. The host must not: read or
    /// write packets on `fd` (they would be split between host and engine); run a second
    /// engine on the same TUN (`TUNPIPE_ERR_DEVICE`). A TAP, a TUN with packet information or
    /// a virtio-net header, or a fd not open for reading and writing is refused
    /// (`TUNPIPE_ERR_BAD_FD`).
    ///
    /// Returns `TUNPIPE_OK` after a clean stop (also when `stop_tun` came while it was still
    /// starting), `TUNPIPE_ERR_ALREADY_RUNNING` when a `start_tun` engine is starting or
    /// running, or the error that kept it from starting or stopped it (`TUNPIPE_ERR_BAD_FD`,
    /// `TUNPIPE_ERR_NO_UTUN_FD`, `TUNPIPE_ERR_UNSUPPORTED`, `TUNPIPE_ERR_DEVICE`,
    /// `TUNPIPE_ERR_RESOURCES`, `TUNPIPE_ERR_SPAWN`, `TUNPIPE_ERR_STAGE_PANICS`, ...). The
    /// message is then the calling thread's last error.
    fn start_tun(fd: i32) -> i32 {
        run(fd).map(|()| TUNPIPE_OK)
    }
}

fn run(fd: i32) -> FfiResult {
    let plan = {
        let mut g = GLOBAL.lock();
        if !matches!(g.state, State::Idle) {
            return Err(FfiError::new(
                TUNPIPE_ERR_ALREADY_RUNNING,
                "an engine started by start_tun is already running",
            ));
        }
        g.state = State::Starting { cancelled: false };
        g.plan.clone().unwrap_or_default()
    };
    // Whatever happens from here on, the slot must leave `Starting`, or every later
    // start_tun and stop_tun would hang or fail: a guard resets it even on a panic.
    let mut slot = StartingSlot { armed: true };
    STARTING_HERE.set(true);
    let Some(plan) = resolved(plan)? else {
        log::info!("start_tun: stop_tun arrived while the endpoints were looked up; stopping");
        return Ok(());
    };
    let session = match Session::start(&plan, fd) {
        Ok(s) => Arc::new(s),
        Err(e) => return Err(e),
    };
    {
        let mut g = GLOBAL.lock();
        if let State::Starting { cancelled: false } = g.state {
            g.state = State::Running(session.clone());
            g.last = Some(session.clone());
            slot.armed = false;
            STARTED.notify_all();
        }
    }
    if slot.armed {
        // stop_tun came while starting: stop the fresh engine before leaving `Starting`, so
        // that the waiting stop_tun returns only once it is joined. `slot` then goes Idle.
        log::info!("start_tun: stop_tun arrived while starting; stopping");
        GLOBAL.lock().last = Some(session.clone());
        return session.stop();
    }
    let result = session.wait();
    finish(&session);
    result
}

/// `plan` with its endpoints' hosts looked up ([`WgConfig::resolve`]), on a thread of its
/// own: a resolver may take seconds to answer, or never, and a `stop_tun` meanwhile must not
/// wait for it. `None` when a `stop_tun` came first: the lookup's thread then ends on its own
/// when the resolver answers, and its answer is dropped unread.
fn resolved(mut plan: Plan) -> FfiResult<Option<Plan>> {
    let StagePlan::WireGuard(config) = &plan.stage else {
        return Ok(Some(plan));
    };
    if !config.needs_lookup() {
        return Ok(Some(plan));
    }
    let answer: Arc<Mutex<Option<Result<WgConfig, WgConfigError>>>> = Arc::default();
    let mut config = (**config).clone();
    let theirs = answer.clone();
    std::thread::Builder::new()
        .name("tunpipe-resolve".into())
        .spawn(move || {
            let result = config.resolve().map(|()| config);
            // Under the slot's lock, so that the wait below cannot miss the notification.
            let _g = GLOBAL.lock();
            *theirs.lock() = Some(result);
            STARTED.notify_all();
        })
        .map_err(|e| FfiError::from(tunpipe::EngineError::Spawn(Arc::new(e))))?;
    let mut g = GLOBAL.lock();
    loop {
        if matches!(g.state, State::Starting { cancelled: true }) {
            return Ok(None);
        }
        if let Some(result) = answer.lock().take() {
            let config = result.map_err(|e| FfiError::new(TUNPIPE_ERR_CONFIG, e.to_string()))?;
            plan.stage = StagePlan::WireGuard(Box::new(config));
            return Ok(Some(plan));
        }
        STARTED.wait(&mut g);
    }
}

/// Resets the slot from `Starting` to `Idle` when dropped armed (start failed, was
/// cancelled, or panicked).
struct StartingSlot {
    armed: bool,
}

impl Drop for StartingSlot {
    fn drop(&mut self) {
        STARTING_HERE.set(false);
        if self.armed {
            GLOBAL.lock().state = State::Idle;
            STARTED.notify_all();
        }
    }
}

/// Frees the slot once `session` is joined: the first of start_tun and stop_tun to get here
/// does it.
fn finish(session: &Arc<Session>) {
    let mut g = GLOBAL.lock();
    if let State::Running(s) = &g.state {
        if Arc::ptr_eq(s, session) {
            g.state = State::Idle;
        }
    }
}

ffi_fn! {
    /// Stops the engine `start_tun` runs and returns once every thread is joined and its dup of
    /// the fd is closed: after it returns, the engine no longer touches the fd. A `start_tun`
    /// still starting is stopped too. Several threads may call it at once; each returns once
    /// the engine is stopped (one that arrives after that finds nothing running).
    ///
    /// Safe from any thread. From one it cannot wait on (a stage callback, or a log callback
    /// called on an engine thread, on the `start_tun` thread or inside a stop) it requests the
    /// stop and returns `TUNPIPE_ERR_ENGINE_THREAD` at once, whatever state the start is in;
    /// `start_tun` then returns.
    ///
    /// Returns `TUNPIPE_OK`, `TUNPIPE_ERR_NOT_RUNNING` when no `start_tun` engine is starting or
    /// running, the fatal error that had stopped the engine, or `TUNPIPE_ERR_ENGINE_THREAD`.
    fn stop_tun() -> i32 {
        let session = {
            let mut g = GLOBAL.lock();
            loop {
                match &mut g.state {
                    State::Idle => {
                        return Err(FfiError::new(
                            TUNPIPE_ERR_NOT_RUNNING,
                            "no engine started by start_tun is running",
                        ))
                    }
                    State::Starting { cancelled } => {
                        if !*cancelled {
                            *cancelled = true;
                            // A start waiting for a lookup wakes and gives up.
                            STARTED.notify_all();
                        }
                        if tunpipe::on_engine_thread() || STARTING_HERE.get() {
                            // The start waits for this very thread (it joins its engine's
                            // threads, or it is this thread): waiting here would never end.
                            return Err(FfiError::new(
                                TUNPIPE_ERR_ENGINE_THREAD,
                                "stop_tun from inside start_tun (a stage or log callback): \
                                 the stop is requested, and start_tun returns once it is done",
                            ));
                        }
                        STARTED.wait(&mut g);
                        if matches!(g.state, State::Idle) {
                            // The start was cancelled (its engine stopped and joined) or
                            // failed: either way nothing runs now.
                            return Ok(TUNPIPE_OK);
                        }
                    }
                    State::Running(s) => break s.clone(),
                }
            }
        };
        let result = session.stop();
        if !matches!(&result, Err(e) if e.code == TUNPIPE_ERR_ENGINE_THREAD) {
            finish(&session);
        }
        result.map(|()| TUNPIPE_OK)
    }
}

/// The `start_tun` engine, if one runs now.
fn running() -> FfiResult<Arc<Session>> {
    match &GLOBAL.lock().state {
        State::Running(session) => Ok(session.clone()),
        _ => Err(FfiError::new(
            TUNPIPE_ERR_NOT_RUNNING,
            "no engine started by start_tun is running",
        )),
    }
}

ffi_fn! {
    /// Tells the `start_tun` tunnel that the network path changed (`NWPathMonitor` saw a new
    /// satisfied path: Wi-Fi to cellular, say). Returns at once; a thread of the tunnel's own
    /// then looks the endpoints' hosts up again (`getaddrinfo`: DNS64 on an IPv6-only
    /// network), gives the UDP socket a new one on the same port if it can (tried every
    /// 0.5 s, 10 times, while that fails, as WireGuardKit's `wgBumpSockets`), and starts a
    /// handshake with every peer from it. If no peer answers within 5 s, the socket moves to
    /// a fresh port and the peers are told again. The tunnel runs on throughout, and a stop
    /// never waits for a lookup.
    ///
    /// Returns `TUNPIPE_OK`, `TUNPIPE_ERR_NOT_RUNNING` when no `start_tun` engine runs,
    /// `TUNPIPE_ERR_UNSUPPORTED` when it runs no tunnel (no `wireguard_config`), or
    /// `TUNPIPE_ERR_SPAWN` when no thread could be made for it.
    fn tunpipe_rebind() -> i32 {
        running()?.rebind().map(|()| TUNPIPE_OK)
    }
}

ffi_fn! {
    /// From now on, a peer of the `start_tun` tunnel that has an endpoint keeps it instead of
    /// following the source address of its authenticated datagrams (a peer with none still
    /// learns one). WireGuardKit does this on iOS (`wgDisableSomeRoamingForBrokenMobileSemantics`):
    /// an initiation can arrive from an address of the device that is not the current path's
    /// (a NAT64, or a cellular interface being left), and answering there breaks the tunnel.
    ///
    /// Returns `TUNPIPE_OK`, `TUNPIPE_ERR_NOT_RUNNING` or `TUNPIPE_ERR_UNSUPPORTED` (no tunnel).
    fn tunpipe_disable_roaming() -> i32 {
        running()?.disable_roaming().map(|()| TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Suspends the `start_tun` engine, for a host whose network is gone
    /// (`NWPathMonitor`: unsatisfied) or which is going to sleep (`sleep()` of
    /// `NEPacketTunnelProvider`): until `tunpipe_resume`, no thread reads the utun or the
    /// socket, no timer fires, and packets still in the engine are dropped and counted
    /// (`drop_suspended`). Its threads sleep with no timeout: a suspended tunnel makes no
    /// wake-ups. `stop_tun` still returns at once. It returns at once too; the tunnel first
    /// sends the keepalives it owes for data just received (so that no peer starts a
    /// handshake while it sleeps), then suspends, within milliseconds. A tunnel keeps its sessions: after a
    /// resume within WireGuard's 180 s (on a clock that counts the device's sleep), data flows
    /// at once, without a new handshake.
    ///
    /// Returns `TUNPIPE_OK` (also when already suspended) or `TUNPIPE_ERR_NOT_RUNNING`.
    fn tunpipe_suspend() -> i32 {
        running()?.suspend(true).map(|()| TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Resumes the `start_tun` engine (`tunpipe_suspend`): its threads read and send again,
    /// and timers that came due meanwhile run at once. After a network change, call
    /// `tunpipe_rebind` too.
    ///
    /// Returns `TUNPIPE_OK` (also when not suspended) or `TUNPIPE_ERR_NOT_RUNNING`.
    fn tunpipe_resume() -> i32 {
        running()?.suspend(false).map(|()| TUNPIPE_OK)
    }
}

ffi_fn! {
    /// Copies the `start_tun` tunnel's figures (the running one, or the last one after it
    /// stopped) into `*out`. Set `out->size = sizeof(TunpipeTunnelStats)` first. Returns
    /// `TUNPIPE_ERR_NOT_RUNNING` if `start_tun` never started an engine, and
    /// `TUNPIPE_ERR_UNSUPPORTED` if it runs no tunnel.
    ///
    /// # Safety
    /// `out` must be NULL or a writable `TunpipeTunnelStats` whose `size` field is set.
    unsafe fn tunpipe_tunnel_stats(out: *mut TunpipeTunnelStats) -> i32 {
        // A NULL `out` is the caller's first error, whether or not an engine ran.
        check_ptr(out.cast_const(), "out")?;
        // SAFETY: the caller's promise, passed on.
        unsafe { current()?.copy_tunnel_stats(out) }
    }
}

ffi_fn! {
    /// As `tunpipe_engine_peer_stats`, for the `start_tun` tunnel (the running one, or the
    /// last one after it stopped): copies peer `index` (0-based, in `TunpipeTunnelStats.peers`
    /// order) into `*out`. Set `out->size = sizeof(TunpipePeerStats)` first. Peers may come
    /// and go while the tunnel runs: read `peers`, then loop from 0 and stop at
    /// `TUNPIPE_ERR_NOT_FOUND`, the end of the list.
    ///
    /// Returns `TUNPIPE_OK`, `TUNPIPE_ERR_NOT_FOUND` for an index at or past the number of
    /// peers, `TUNPIPE_ERR_NOT_RUNNING` if `start_tun` never started an engine,
    /// `TUNPIPE_ERR_UNSUPPORTED` if it runs no tunnel, `TUNPIPE_ERR_NULL_POINTER` or
    /// `TUNPIPE_ERR_STRUCT_SIZE`.
    ///
    /// # Safety
    /// `out` must be NULL or a writable `TunpipePeerStats` whose `size` field is set.
    unsafe fn tunpipe_peer_stats(index: u32, out: *mut TunpipePeerStats) -> i32 {
        // A NULL `out` is the caller's first error, whether or not an engine ran.
        check_ptr(out.cast_const(), "out")?;
        // SAFETY: the caller's promise, passed on.
        unsafe { current()?.copy_peer_stats(index, out) }
    }
}

fn current() -> FfiResult<Arc<Session>> {
    GLOBAL.lock().last.clone().ok_or_else(|| {
        FfiError::new(
            TUNPIPE_ERR_NOT_RUNNING,
            "start_tun has not started an engine yet",
        )
    })
}

ffi_fn! {
    /// Copies the counters of the `start_tun` engine (the running one, or the last one after
    /// it stopped) into `*out`. Set `out->size = sizeof(TunpipeStats)` first. Returns
    /// `TUNPIPE_ERR_NOT_RUNNING` if `start_tun` never started an engine.
    ///
    /// # Safety
    /// `out` must be NULL or a writable `TunpipeStats` whose `size` field is set.
    unsafe fn tunpipe_stats(out: *mut TunpipeStats) -> i32 {
        check_ptr(out.cast_const(), "out")?;
        // SAFETY: the caller's promise, passed on.
        unsafe { current()?.copy_stats(out) }
    }
}

ffi_fn! {
    /// As `tunpipe_engine_latency`, for the `start_tun` engine (running, or the last one).
    ///
    /// # Safety
    /// `out` must be NULL or a writable `TunpipeLatency` whose `size` field is set.
    unsafe fn tunpipe_latency(out: *mut TunpipeLatency) -> i32 {
        check_ptr(out.cast_const(), "out")?;
        // SAFETY: the caller's promise, passed on.
        unsafe { current()?.copy_latency(out) }
    }
}

ffi_fn! {
    /// As `tunpipe_engine_latency_base64`, for the `start_tun` engine (running, or the last).
    ///
    /// # Safety
    /// `buf` must be NULL or writable for `len` bytes; `needed` NULL or writable.
    unsafe fn tunpipe_latency_base64(
        which: u32,
        buf: *mut c_char,
        len: usize,
        needed: *mut usize,
    ) -> i32 {
        // SAFETY: the caller's promise, passed on.
        unsafe { current()?.copy_latency_base64(which, buf, len, needed) }
    }
}
