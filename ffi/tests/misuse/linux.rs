//! Misuse of the C ABI on a real TUN fd, called the way a host calls it: stops from many
//! threads at once, stop racing start, stats and latency during stop, stop from inside the C
//! stage, free while running under load, two engines on one fd; and a config that passes
//! validation but cannot be allocated. Each has a documented result (SECURITY.md), and none
//! may crash, hang (watchdogs turn a hang into a failure), abort or leak threads and fds.
//! Also the spin window at its ends (`spin_us` 0 and the cap), which only a real start
//! exercises from C.
//!
//! The TUN tests run each in a fresh network namespace and are reported as ignored, never as
//! passed, when the process cannot make one (not root). Null pointers, invalid configs and
//! bad fds are covered without root in `tests/abi.rs`; the C host test covers start
//! twice, stop twice, free while idle and restart.

use crate::c_api::default_config;
use libtest_mimic::Failed;
use std::ffi::c_void;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};
use tunpipe_ffi::*;
use tunpipe_testkit::check::check;
use tunpipe_testkit::load::flood;
use tunpipe_testkit::netns::{enter_fresh_netns, Ipv6};
use tunpipe_testkit::proc::{fd_flags, resources, threads_and_fds_back};
use tunpipe_testkit::thread::on_thread;
use tunpipe_testkit::trials::{plain_trials, root_trials, run_one_at_a_time, Test};
use tunpipe_testkit::tun::tun;

const V4_LOCAL: &str = "10.52.0.1";
const V4_PEER: &str = "10.52.0.2";

pub fn main() {
    if std::env::var("TUNPIPE_MISUSE_CHILD").as_deref() == Ok("alloc") {
        alloc_child();
    }
    let problem = tunpipe_testkit::tun::privilege_problem();
    let plain: [(&str, Test); 1] = [(
        "a_valid_config_too_large_to_allocate_is_an_error_not_an_abort",
        too_large_to_allocate,
    )];
    let root: [(&str, Test); 10] = [
        (
            "engine_stop_from_many_threads_at_once",
            handle_stop_many_threads,
        ),
        ("stop_tun_from_many_threads_at_once", stop_tun_many_threads),
        ("stop_tun_racing_start_tun", stop_racing_start),
        ("stats_and_latency_during_stop", stats_during_stop),
        ("stop_from_inside_the_c_stage", stop_from_callback),
        (
            "stop_from_a_stage_or_log_callback_during_start_and_run_200_times",
            stop_from_callbacks_many_times,
        ),
        ("free_while_running_under_load", free_under_load),
        (
            "two_engines_on_one_fd_both_stop_and_flags_come_back",
            two_engines_one_fd,
        ),
        (
            "running_out_of_fds_at_start_is_a_resource_error_not_a_bad_fd",
            out_of_fds_at_start,
        ),
        (
            "every_spin_window_from_c_carries_packets_and_stops",
            spin_windows_from_c,
        ),
    ];
    let mut trials = plain_trials(&plain);
    trials.extend(root_trials(&root, &problem, in_fresh_netns));
    run_one_at_a_time(trials)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs `test` in a fresh network namespace (IPv6 off, so only the test's own packets cross
/// the TUN), under a watchdog: a deadlock fails the test instead of hanging the run.
fn in_fresh_netns(test: Test) -> Result<(), Failed> {
    on_thread("misuse", Some(Duration::from_secs(120)), move || {
        enter_fresh_netns(Ipv6::Off)?;
        test()
    })
}

/// The host's TUN: created with tun-rs (addressed and up); the test hands its fd over.
fn empty_stats() -> TunpipeStats {
    // SAFETY: TunpipeStats is plain integers; all zeroes is valid.
    let mut s: TunpipeStats = unsafe { std::mem::zeroed() };
    s.size = std::mem::size_of::<TunpipeStats>() as u32;
    s
}

fn empty_latency() -> TunpipeLatency {
    // SAFETY: TunpipeLatency is plain integers; all zeroes is valid.
    let mut l: TunpipeLatency = unsafe { std::mem::zeroed() };
    l.size = std::mem::size_of::<TunpipeLatency>() as u32;
    l
}

fn drops(s: &TunpipeStats) -> u64 {
    s.drop_ring_full
        + s.drop_malformed
        + s.drop_oversize
        + s.drop_stage
        + s.drop_stage_panic
        + s.drop_write_error
        + s.drop_stopped
}

fn conserved(s: &TunpipeStats) -> Result<(), Failed> {
    check(s.rx_packets == s.tx_packets + drops(s), || {
        format!(
            "conservation broken: rx {} tx {} drops {}",
            s.rx_packets,
            s.tx_packets,
            drops(s)
        )
    })
}

/// A raw handle that may cross threads (the ABI allows every call but free from any thread).
#[derive(Clone, Copy)]
struct Handle(*mut TunpipeEngine);
// SAFETY: TunpipeEngine is Sync on the Rust side (its calls take &self); the tests free it
// only after every other thread using it is joined.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Handle {
    /// The pointer (a method, so closures capture the whole `Send` handle).
    fn raw(self) -> *mut TunpipeEngine {
        self.0
    }
}

fn start_handle(config: &TunpipeConfig, fd: RawFd) -> Result<Handle, Failed> {
    let mut out = null_mut();
    // SAFETY: valid pointers.
    let code = unsafe { tunpipe_engine_start(config, fd, &mut out) };
    check(code == TUNPIPE_OK && !out.is_null(), || {
        format!("tunpipe_engine_start: {code}")
    })?;
    Ok(Handle(out))
}

fn handle_stats(h: Handle) -> TunpipeStats {
    let mut s = empty_stats();
    // SAFETY: a live handle and a sized struct.
    let code = unsafe { tunpipe_engine_stats(h.raw(), &mut s) };
    assert_eq!(code, TUNPIPE_OK);
    s
}

/// Sends UDP datagrams to the reflect peer from a thread until `stop` is set; returns how
/// many it sent. Replies are read and discarded, so the socket buffer never fills.
fn udp_load(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let socket = UdpSocket::bind((V4_LOCAL, 0)).expect("bind");
        socket.connect((V4_PEER, 9)).expect("connect");
        socket.set_nonblocking(true).expect("nonblocking");
        flood(&socket, &stop, 16, &[7u8; 200], Duration::from_micros(200))
    })
}

/// One UDP round trip through the engine: true when the reply came back.
fn udp_round_trip() -> bool {
    let Ok(socket) = UdpSocket::bind((V4_LOCAL, 0)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 64];
    socket.send_to(b"ping", (V4_PEER, 9)).is_ok()
        && matches!(socket.recv_from(&mut buf), Ok((4, _)))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Documented: every concurrent `tunpipe_engine_stop` returns `TUNPIPE_OK` once the engine
/// is joined (one joins, the others wait for it); a stop after that is `TUNPIPE_OK` too.
fn handle_stop_many_threads() -> Result<(), Failed> {
    let host = tun("tpm0", V4_LOCAL)?;
    let fd = host.as_raw_fd();
    let flags = fd_flags(fd);
    let base = resources();
    for round in 0..20u32 {
        let mut c = default_config();
        c.workers = round % 3;
        let h = start_handle(&c, fd)?;
        let stop_load = Arc::new(AtomicBool::new(false));
        let load = udp_load(stop_load.clone());
        std::thread::sleep(Duration::from_millis(2));
        let barrier = Arc::new(Barrier::new(8));
        let stoppers: Vec<_> = (0..8)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    // SAFETY: a live handle; freed only after these threads are joined.
                    unsafe { tunpipe_engine_stop(h.raw()) }
                })
            })
            .collect();
        let codes: Vec<i32> = stoppers
            .into_iter()
            .map(|s| s.join().unwrap_or(i32::MIN))
            .collect();
        stop_load.store(true, Ordering::Relaxed);
        load.join().map_err(|_| "load panicked")?;
        check(codes.iter().all(|&c| c == TUNPIPE_OK), || {
            format!("round {round}: stop codes {codes:?}")
        })?;
        check(
            // SAFETY: a live handle.
            unsafe { tunpipe_engine_stop(h.raw()) } == TUNPIPE_OK,
            || "a later stop".into(),
        )?;
        conserved(&handle_stats(h))?;
        check(
            // SAFETY: a live handle no other thread uses any more.
            unsafe { tunpipe_engine_free(h.raw()) } == TUNPIPE_OK,
            || "free".into(),
        )?;
        check(fd_flags(fd) == flags, || {
            format!("round {round}: fd flags not restored")
        })?;
    }
    threads_and_fds_back(base)
}

/// Runs `start_tun(fd)` on a thread of its own and returns its result through the handle.
fn spawn_start_tun(fd: RawFd) -> std::thread::JoinHandle<i32> {
    std::thread::spawn(move || start_tun(fd))
}

/// Waits until the global engine has started (tunpipe_stats answers for a running engine).
fn wait_running(start: &std::thread::JoinHandle<i32>) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !udp_round_trip() {
        check(!start.is_finished(), || "start_tun returned early".into())?;
        check(Instant::now() < deadline, || "start_tun never ran".into())?;
    }
    Ok(())
}

/// Documented: concurrent `stop_tun` calls each return `TUNPIPE_OK` once the engine is
/// joined, or `TUNPIPE_ERR_NOT_RUNNING` when they arrive after the slot is free again;
/// `start_tun` returns `TUNPIPE_OK`.
fn stop_tun_many_threads() -> Result<(), Failed> {
    let host = tun("tpm1", V4_LOCAL)?;
    let fd = host.as_raw_fd();
    let flags = fd_flags(fd);
    let (mut ok, mut not_running) = (0, 0);
    for round in 0..20 {
        let start = spawn_start_tun(fd);
        wait_running(&start)?;
        let barrier = Arc::new(Barrier::new(8));
        let stoppers: Vec<_> = (0..8)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    stop_tun()
                })
            })
            .collect();
        for s in stoppers {
            match s.join().map_err(|_| "stopper panicked")? {
                TUNPIPE_OK => ok += 1,
                TUNPIPE_ERR_NOT_RUNNING => not_running += 1,
                other => return Err(format!("round {round}: stop_tun returned {other}").into()),
            }
        }
        let started = start.join().map_err(|_| "start_tun panicked")?;
        check(started == TUNPIPE_OK, || {
            format!("round {round}: start_tun returned {started}")
        })?;
        check(stop_tun() == TUNPIPE_ERR_NOT_RUNNING, || {
            "nothing runs after the stops".into()
        })?;
        check(fd_flags(fd) == flags, || "fd flags not restored".into())?;
    }
    eprintln!("160 concurrent stop_tun calls: {ok} TUNPIPE_OK, {not_running} NOT_RUNNING");
    check(ok >= 20, || "each round had a stop that joined".into())
}

/// Documented: a `stop_tun` that races `start_tun` either stops it (while starting: the
/// start is cancelled and `start_tun` returns `TUNPIPE_OK`; while running: as usual) or, if
/// it came before `start_tun` claimed the slot, returns `TUNPIPE_ERR_NOT_RUNNING` and the
/// engine runs until the next `stop_tun`. Nothing hangs, nothing leaks.
fn stop_racing_start() -> Result<(), Failed> {
    let host = tun("tpm2", V4_LOCAL)?;
    let fd = host.as_raw_fd();
    let flags = fd_flags(fd);
    let base = resources();
    let (mut first_ok, mut first_not_running, mut retries) = (0u32, 0u32, 0u32);
    for round in 0..300u64 {
        let start = spawn_start_tun(fd);
        // 0-500 µs: before, during and after the start.
        std::thread::sleep(Duration::from_micros(round % 6 * 100));
        match stop_tun() {
            TUNPIPE_OK => first_ok += 1,
            TUNPIPE_ERR_NOT_RUNNING => first_not_running += 1,
            other => return Err(format!("round {round}: stop_tun returned {other}").into()),
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !start.is_finished() {
            check(Instant::now() < deadline, || {
                format!("round {round}: start_tun still running")
            })?;
            std::thread::sleep(Duration::from_micros(200));
            // The engine started after the first stop found nothing: stop it again.
            let code = stop_tun();
            check(matches!(code, TUNPIPE_OK | TUNPIPE_ERR_NOT_RUNNING), || {
                format!("round {round}: retried stop_tun returned {code}")
            })?;
            retries += 1;
        }
        let started = start.join().map_err(|_| "start_tun panicked")?;
        check(started == TUNPIPE_OK, || {
            format!("round {round}: start_tun returned {started}")
        })?;
        check(fd_flags(fd) == flags, || {
            format!("round {round}: fd flags not restored")
        })?;
    }
    eprintln!(
        "300 stop/start races: first stop_tun OK {first_ok}, NOT_RUNNING {first_not_running}, \
         {retries} retried stops"
    );
    threads_and_fds_back(base)?;
    check(udp_round_trip_refused(), || {
        "an engine still answers after every start_tun returned".into()
    })
}

/// True when nothing answers on the TUN any more (no engine runs).
fn udp_round_trip_refused() -> bool {
    let Ok(socket) = UdpSocket::bind((V4_LOCAL, 0)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 64];
    let _ = socket.send_to(b"ping", (V4_PEER, 9));
    socket.recv_from(&mut buf).is_err()
}

/// Documented: stats always answer (`TUNPIPE_OK`), also during and after stop; latency
/// answers `TUNPIPE_OK`, or `TUNPIPE_ERR_STOPPING` between the stop request and the end of
/// the join, and `TUNPIPE_OK` with the final histograms after. Same for the global calls.
fn stats_during_stop() -> Result<(), Failed> {
    let host = tun("tpm3", V4_LOCAL)?;
    let fd = host.as_raw_fd();
    let mut total_stopping = 0u64;
    let mut slowest_stop = Duration::ZERO;
    for round in 0..150u32 {
        let mut c = default_config();
        c.workers = round % 3;
        let h = start_handle(&c, fd)?;
        let stop_load = Arc::new(AtomicBool::new(false));
        let load = udp_load(stop_load.clone());
        let done = Arc::new(AtomicBool::new(false));
        let stopping_seen = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(Barrier::new(4));
        let readers: Vec<_> = (0..3)
            .map(|kind| {
                let (done, stopping_seen) = (done.clone(), stopping_seen.clone());
                let ready = ready.clone();
                std::thread::spawn(move || -> Result<u64, String> {
                    let mut calls = 0u64;
                    let mut buf = [0 as std::ffi::c_char; 4096];
                    let mut needed = 0usize;
                    ready.wait();
                    // At least one call, then until the stop has returned.
                    while calls == 0 || !done.load(Ordering::Relaxed) {
                        let call_started = Instant::now();
                        // SAFETY: a live handle (freed after this thread is joined) and
                        // valid out-pointers.
                        let code = unsafe {
                            match kind {
                                0 => tunpipe_engine_stats(h.raw(), &mut empty_stats()),
                                1 => tunpipe_engine_latency(h.raw(), &mut empty_latency()),
                                _ => tunpipe_engine_latency_base64(
                                    h.raw(),
                                    TUNPIPE_LATENCY_ENGINE,
                                    buf.as_mut_ptr(),
                                    buf.len(),
                                    &mut needed,
                                ),
                            }
                        };
                        match (kind, code) {
                            (_, TUNPIPE_OK) => {}
                            (1 | 2, TUNPIPE_ERR_STOPPING) => {
                                stopping_seen.fetch_add(1, Ordering::Relaxed);
                            }
                            // A histogram can outgrow the buffer: asked and answered.
                            (2, TUNPIPE_ERR_BUFFER_TOO_SMALL) if needed > buf.len() => {}
                            _ => return Err(format!("call kind {kind} returned {code}")),
                        }
                        // Not a timing test: a healthy call takes microseconds, a request
                        // stranded in the writer's mailbox takes the full 5 s timeout.
                        let took = call_started.elapsed();
                        if took > Duration::from_secs(1) {
                            return Err(format!(
                                "call kind {kind} blocked {took:?} during stop (code {code})"
                            ));
                        }
                        calls += 1;
                    }
                    Ok(calls)
                })
            })
            .collect();
        ready.wait();
        std::thread::sleep(Duration::from_micros(u64::from(round % 6) * 500));
        let stop_started = Instant::now();
        // SAFETY: a live handle.
        let code = unsafe { tunpipe_engine_stop(h.raw()) };
        slowest_stop = slowest_stop.max(stop_started.elapsed());
        check(code == TUNPIPE_OK, || format!("stop: {code}"))?;
        done.store(true, Ordering::Relaxed);
        stop_load.store(true, Ordering::Relaxed);
        load.join().map_err(|_| "load panicked")?;
        for r in readers {
            let calls = r.join().map_err(|_| "reader panicked")??;
            check(calls > 0, || "a reader never got a call in".into())?;
        }
        let mut l = empty_latency();
        // SAFETY: a live handle.
        let code = unsafe { tunpipe_engine_latency(h.raw(), &mut l) };
        check(code == TUNPIPE_OK, || format!("latency after stop: {code}"))?;
        let s = handle_stats(h);
        conserved(&s)?;
        check(l.engine.count <= s.tx_packets + drops(&s), || {
            "more latency samples than packets".into()
        })?;
        // SAFETY: a live handle no other thread uses.
        unsafe { tunpipe_engine_free(h.raw()) };
        total_stopping += stopping_seen.load(Ordering::Relaxed);
    }
    eprintln!(
        "150 stops under stats/latency readers: {total_stopping} latency calls answered \
         TUNPIPE_ERR_STOPPING; slowest stop {slowest_stop:?}"
    );
    Ok(())
}

/// The C stage context for `stop_from_callback`: the handle to stop (null: the global
/// engine) and the code the callback's stop call returned.
struct StopContext {
    engine: AtomicPtr<TunpipeEngine>,
    global: bool,
    code: AtomicI32,
}

unsafe extern "C" fn stopping_callback(ctx: *mut c_void, _: u32, _: *mut TunpipePacket) -> i32 {
    // SAFETY: the test passes a StopContext that outlives the engine.
    let ctx = unsafe { &*(ctx as *const StopContext) };
    let code = if ctx.global {
        stop_tun()
    } else {
        let engine = ctx.engine.load(Ordering::Acquire);
        if engine.is_null() {
            return TUNPIPE_VERDICT_FORWARD;
        }
        // SAFETY: the test stores a live handle and frees it only after the engine stops.
        unsafe { tunpipe_engine_stop(engine) }
    };
    let _ = ctx
        .code
        .compare_exchange(1, code, Ordering::AcqRel, Ordering::Acquire);
    TUNPIPE_VERDICT_FORWARD
}

/// Documented: `tunpipe_engine_stop` (or `stop_tun`) from the engine's own C stage returns
/// `TUNPIPE_ERR_ENGINE_THREAD`; the stop is requested, so `tunpipe_engine_wait` (or the
/// blocking `start_tun`) then returns `TUNPIPE_OK`.
fn stop_from_callback() -> Result<(), Failed> {
    let host = tun("tpm4", V4_LOCAL)?;
    let fd = host.as_raw_fd();
    for workers in [0u32, 2] {
        let ctx = Box::new(StopContext {
            engine: AtomicPtr::new(null_mut()),
            global: false,
            code: AtomicI32::new(1),
        });
        let mut c = default_config();
        c.workers = workers;
        c.stage = TUNPIPE_STAGE_CALLBACK;
        c.callback = Some(stopping_callback);
        c.callback_context = &*ctx as *const StopContext as *mut c_void;
        let h = start_handle(&c, fd)?;
        ctx.engine.store(h.raw(), Ordering::Release);
        // The first packet makes the callback stop its own engine.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ctx.code.load(Ordering::Acquire) == 1 && Instant::now() < deadline {
            udp_round_trip();
        }
        let code = ctx.code.load(Ordering::Acquire);
        check(code == TUNPIPE_ERR_ENGINE_THREAD, || {
            format!("engine_stop from the callback returned {code}")
        })?;
        // SAFETY: a live handle.
        let waited = unsafe { tunpipe_engine_wait(h.raw()) };
        check(waited == TUNPIPE_OK, || format!("wait: {waited}"))?;
        // SAFETY: a live handle no other thread uses.
        unsafe { tunpipe_engine_free(h.raw()) };
        drop(ctx);
    }

    // The same through the global pair.
    let ctx = Box::new(StopContext {
        engine: AtomicPtr::new(null_mut()),
        global: true,
        code: AtomicI32::new(1),
    });
    let mut c = default_config();
    c.stage = TUNPIPE_STAGE_CALLBACK;
    c.callback = Some(stopping_callback);
    c.callback_context = &*ctx as *const StopContext as *mut c_void;
    // SAFETY: a readable config.
    check(unsafe { tunpipe_set_config(&c) } == TUNPIPE_OK, || {
        "set_config".into()
    })?;
    let start = spawn_start_tun(fd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !start.is_finished() && Instant::now() < deadline {
        udp_round_trip();
    }
    check(start.is_finished(), || {
        "start_tun did not return after its stage called stop_tun".into()
    })?;
    let started = start.join().map_err(|_| "start_tun panicked")?;
    let code = ctx.code.load(Ordering::Acquire);
    // Back to the defaults for the other tests.
    let d = default_config();
    // SAFETY: a readable config.
    unsafe { tunpipe_set_config(&d) };
    check(code == TUNPIPE_ERR_ENGINE_THREAD, || {
        format!("stop_tun from the callback returned {code}")
    })?;
    check(started == TUNPIPE_OK, || {
        format!("start_tun returned {started}")
    })?;
    check(stop_tun() == TUNPIPE_ERR_NOT_RUNNING, || {
        "nothing runs afterwards".into()
    })
}

/// What `stop_from_callbacks_many_times`'s log callback stops: the handle stored here, or
/// with none the `start_tun` engine; and the last code its stop call returned.
static LOG_STOPPER: StopContext = StopContext {
    engine: AtomicPtr::new(null_mut()),
    global: false,
    code: AtomicI32::new(1),
};

unsafe extern "C" fn stopping_log(_: *mut c_void, _: i32, _: *const std::ffi::c_char) {
    let engine = LOG_STOPPER.engine.load(Ordering::Acquire);
    let code = if engine.is_null() {
        stop_tun()
    } else {
        // SAFETY: the test stores a live handle and clears it before freeing it.
        unsafe { tunpipe_engine_stop(engine) }
    };
    LOG_STOPPER.code.store(code, Ordering::Release);
}

/// Waits (at most 10 s, so a hang is a failure) for `start_tun` to return, and checks it
/// returned `TUNPIPE_OK`.
fn join_start(start: std::thread::JoinHandle<i32>, what: &str) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !start.is_finished() {
        check(Instant::now() < deadline, || {
            format!("{what}: start_tun did not return")
        })?;
        std::thread::sleep(Duration::from_micros(200));
    }
    let started = start.join().map_err(|_| "start_tun panicked")?;
    check(started == TUNPIPE_OK, || {
        format!("{what}: start_tun returned {started}")
    })
}

/// Documented: a stop from any thread returns; from one the stop cannot wait on it requests
/// the stop and returns `TUNPIPE_ERR_ENGINE_THREAD`. 200 rounds each of: `stop_tun` from the C
/// stage with traffic already flowing when `start_tun` begins (so it lands while starting or
/// running), the handle's stop from its C stage while running, `stop_tun` from a log callback
/// (its first line comes from inside `start_tun`, the next from inside the stop), and the
/// handle's stop from a log callback inside the handle's own stop. Before, a stop from inside
/// a start waited for that start, and a stop from inside a stop for itself: both hung.
fn stop_from_callbacks_many_times() -> Result<(), Failed> {
    const ROUNDS: u32 = 200;
    let host = tun("tpm8", V4_LOCAL)?;
    let fd = host.as_raw_fd();
    let flags = fd_flags(fd);
    let base = resources();
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = udp_load(stop_load.clone());
    let result: Result<(), Failed> = (|| {
        for round in 0..ROUNDS {
            // The C stage, start_tun.
            let ctx = Box::new(StopContext {
                engine: AtomicPtr::new(null_mut()),
                global: true,
                code: AtomicI32::new(1),
            });
            let mut c = default_config();
            c.workers = round % 2;
            c.stage = TUNPIPE_STAGE_CALLBACK;
            c.callback = Some(stopping_callback);
            c.callback_context = &*ctx as *const StopContext as *mut c_void;
            // SAFETY: a readable config.
            check(unsafe { tunpipe_set_config(&c) } == TUNPIPE_OK, || {
                "set_config".into()
            })?;
            join_start(spawn_start_tun(fd), &format!("stage round {round}"))?;
            let code = ctx.code.load(Ordering::Acquire);
            check(code == TUNPIPE_ERR_ENGINE_THREAD, || {
                format!("stage round {round}: stop_tun from the stage returned {code}")
            })?;

            // The C stage, a handle.
            let ctx = Box::new(StopContext {
                engine: AtomicPtr::new(null_mut()),
                global: false,
                code: AtomicI32::new(1),
            });
            c.callback_context = &*ctx as *const StopContext as *mut c_void;
            let h = start_handle(&c, fd)?;
            ctx.engine.store(h.raw(), Ordering::Release);
            // SAFETY: a live handle; the stage stops it on its next packet.
            let waited = unsafe { tunpipe_engine_wait(h.raw()) };
            check(waited == TUNPIPE_OK, || {
                format!("handle round {round}: {waited}")
            })?;
            let code = ctx.code.load(Ordering::Acquire);
            check(code == TUNPIPE_ERR_ENGINE_THREAD, || {
                format!("handle round {round}: stop from the stage returned {code}")
            })?;
            // SAFETY: a live handle no other thread uses.
            unsafe { tunpipe_engine_free(h.raw()) };
            drop(ctx);

            // The log callback, start_tun: it stops from inside the start.
            let d = default_config();
            // SAFETY: a readable config.
            unsafe { tunpipe_set_config(&d) };
            LOG_STOPPER.code.store(1, Ordering::Release);
            // SAFETY: a callback following the contract; no context.
            let set = unsafe {
                tunpipe_set_log_callback(Some(stopping_log), TUNPIPE_LOG_TRACE, null_mut())
            };
            check(set == TUNPIPE_OK, || format!("set_log_callback: {set}"))?;
            join_start(spawn_start_tun(fd), &format!("log round {round}"))?;
            let code = LOG_STOPPER.code.load(Ordering::Acquire);
            check(code == TUNPIPE_ERR_ENGINE_THREAD, || {
                format!("log round {round}: stop_tun from the log callback returned {code}")
            })?;

            // The log callback, a handle: it stops from inside the handle's stop.
            LOG_STOPPER.code.store(1, Ordering::Release);
            let h = start_handle(&d, fd)?;
            LOG_STOPPER.engine.store(h.raw(), Ordering::Release);
            let stopped = on_thread("stopper", Some(Duration::from_secs(10)), move || {
                // SAFETY: a live handle.
                Ok::<i32, Failed>(unsafe { tunpipe_engine_stop(h.raw()) })
            })?;
            LOG_STOPPER.engine.store(null_mut(), Ordering::Release);
            check(stopped == TUNPIPE_OK, || {
                format!("log handle round {round}: stop returned {stopped}")
            })?;
            let code = LOG_STOPPER.code.load(Ordering::Acquire);
            check(code == TUNPIPE_ERR_ENGINE_THREAD, || {
                format!("log handle round {round}: stop from the log callback returned {code}")
            })?;
            // SAFETY: a live handle no other thread uses.
            unsafe { tunpipe_engine_free(h.raw()) };
            // SAFETY: turning logging off.
            unsafe { tunpipe_set_log_callback(None, TUNPIPE_LOG_OFF, null_mut()) };
            check(fd_flags(fd) == flags, || {
                format!("round {round}: fd flags not restored")
            })?;
        }
        Ok(())
    })();
    // Back to the defaults for the other tests, whatever happened.
    // SAFETY: turning logging off; a readable config.
    unsafe {
        tunpipe_set_log_callback(None, TUNPIPE_LOG_OFF, null_mut());
        tunpipe_set_config(&default_config());
    }
    stop_load.store(true, Ordering::Relaxed);
    load.join().map_err(|_| "load panicked")?;
    result?;
    threads_and_fds_back(base)
}

/// Documented: `tunpipe_engine_free` on a running engine stops it (joined, dup closed,
/// flags restored) and frees the handle, also with traffic flowing.
fn free_under_load() -> Result<(), Failed> {
    let host = tun("tpm5", V4_LOCAL)?;
    let fd = host.as_raw_fd();
    let flags = fd_flags(fd);
    let base = resources();
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = udp_load(stop_load.clone());
    for round in 0..50u32 {
        let mut c = default_config();
        c.workers = round % 3;
        let h = start_handle(&c, fd)?;
        std::thread::sleep(Duration::from_micros(u64::from(round % 5) * 300));
        // SAFETY: a live handle no other thread uses.
        let code = unsafe { tunpipe_engine_free(h.raw()) };
        check(code == TUNPIPE_OK, || format!("round {round}: free {code}"))?;
        check(fd_flags(fd) == flags, || {
            format!("round {round}: flags not restored")
        })?;
    }
    stop_load.store(true, Ordering::Relaxed);
    let sent = load.join().map_err(|_| "load panicked")?;
    check(sent > 0, || "no load was sent".into())?;
    threads_and_fds_back(base)
}

/// Two handle engines on the same fd at once. Either outcome is acceptable, as long as it
/// is documented: the second start is refused (`TUNPIPE_ERR_ALREADY_RUNNING` or
/// `TUNPIPE_ERR_DEVICE`, fd untouched), or both run and then stop without hanging, in either
/// order, with traffic flowing, and the host's original flags come back. (Each engine works
/// on its own dup, but `O_NONBLOCK` lives on the open file description the dups share.)
fn two_engines_one_fd() -> Result<(), Failed> {
    let host = tun("tpm6", V4_LOCAL)?;
    let fd = host.as_raw_fd();
    let flags = fd_flags(fd);
    for (round, first_stopped) in [0usize, 1, 0, 1].into_iter().enumerate() {
        let c = default_config();
        let one = start_handle(&c, fd)?;
        let mut out = null_mut();
        // SAFETY: valid pointers.
        let code = unsafe { tunpipe_engine_start(&c, fd, &mut out) };
        if matches!(code, TUNPIPE_ERR_ALREADY_RUNNING | TUNPIPE_ERR_DEVICE) {
            check(out.is_null(), || "a refused start leaves *out alone".into())?;
            check(
                // SAFETY: a live handle no other thread uses.
                unsafe { tunpipe_engine_free(one.raw()) } == TUNPIPE_OK,
                || "free".into(),
            )?;
            check(fd_flags(fd) == flags, || {
                "flags after a refused second start".into()
            })?;
            continue;
        }
        check(code == TUNPIPE_OK && !out.is_null(), || {
            format!("second tunpipe_engine_start: {code}")
        })?;
        let engines = [one, Handle(out)];
        let stop_load = Arc::new(AtomicBool::new(false));
        let load = udp_load(stop_load.clone());
        std::thread::sleep(Duration::from_millis(20));
        let (first, second) = (engines[first_stopped], engines[1 - first_stopped]);
        check(
            // SAFETY: live handles.
            unsafe { tunpipe_engine_stop(first.raw()) } == TUNPIPE_OK,
            || "stop the first".into(),
        )?;
        // Traffic keeps reaching the engine still running, then stops: its reader drains
        // what came and would find the queue empty.
        std::thread::sleep(Duration::from_millis(50));
        stop_load.store(true, Ordering::Relaxed);
        load.join().map_err(|_| "load panicked")?;
        std::thread::sleep(Duration::from_millis(50));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: a live handle.
            let _ = tx.send(unsafe { tunpipe_engine_stop(second.raw()) });
        });
        let code = rx.recv_timeout(Duration::from_secs(10));
        check(code == Ok(TUNPIPE_OK), || {
            format!(
                "round {round}: the second engine's stop returned {code:?} (a hang: it was \
                 left reading a fd that the first engine's stop made blocking again)"
            )
        })?;
        for e in engines {
            // SAFETY: live handles no other thread uses.
            unsafe { tunpipe_engine_free(e.raw()) };
        }
        check(fd_flags(fd) == flags, || {
            format!(
                "round {round}: the host's flags {flags:#x} became {:#x}",
                fd_flags(fd)
            )
        })?;
    }
    Ok(())
}

/// `spin_us` 0 (every idle thread sleeps at once), the default and the cap (10 ms), with 0
/// and 1 workers: round trips come back, a burst goes through, stop returns `TUNPIPE_OK`,
/// and every packet is counted. Behaviour only; what each window costs is measured in the
/// benches (PERFORMANCE.md).
fn spin_windows_from_c() -> Result<(), Failed> {
    let host = tun("tpm9", V4_LOCAL)?;
    let fd = host.as_raw_fd();
    let base = resources();
    for spin_us in [0, 50, TUNPIPE_SPIN_US_MAX] {
        for workers in [0, 1] {
            let what = format!("spin_us {spin_us}, {workers} workers");
            let mut c = default_config();
            c.spin_us = spin_us;
            c.workers = workers;
            let h = start_handle(&c, fd)?;
            for i in 0..20 {
                check(udp_round_trip(), || format!("{what}: round trip {i} lost"))?;
            }
            let stop_load = Arc::new(AtomicBool::new(false));
            let load = udp_load(stop_load.clone());
            std::thread::sleep(Duration::from_millis(20));
            stop_load.store(true, Ordering::Relaxed);
            let sent = load.join().map_err(|_| "load panicked")?;
            // SAFETY: a live handle.
            let code = unsafe { tunpipe_engine_stop(h.raw()) };
            check(code == TUNPIPE_OK, || {
                format!("{what}: stop returned {code}")
            })?;
            let stats = handle_stats(h);
            conserved(&stats)?;
            check(stats.rx_packets >= 20 && sent > 0, || {
                format!("{what}: {} packets in, {sent} sent", stats.rx_packets)
            })?;
            check(
                // SAFETY: a live handle no other thread uses.
                unsafe { tunpipe_engine_free(h.raw()) } == TUNPIPE_OK,
                || format!("{what}: free"),
            )?;
        }
    }
    threads_and_fds_back(base)
}

// ---------------------------------------------------------------------------------------------
// Allocation failure
// ---------------------------------------------------------------------------------------------

/// A config inside every validated limit can still ask for more memory than the process may
/// have (the pool cap is 1 GiB; an iOS extension has 50 MiB). The child process below caps
/// its address space and starts such an engine on the in-memory device: the start must fail
/// with an error, not abort the host.
fn too_large_to_allocate() -> Result<(), Failed> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .env("TUNPIPE_MISUSE_CHILD", "alloc")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success() && stdout.contains("start refused"),
        || {
            format!(
                "the child (address space capped, 1 GiB pool) did not get an error back: \
             status {:?}, stdout {stdout:?}, stderr {stderr:?}",
                out.status
            )
        },
    )
}

fn alloc_child() -> ! {
    use tunpipe::{Config, Engine, MemoryDevice};
    let mut c = Config::default();
    c.mtu = 9000;
    c.pool_buffers = 100_000; // about 0.9 GiB: inside MAX_POOL_BYTES
    c.validate().expect("a valid config");
    let (dev, _tx, _rx) = MemoryDevice::new(16, 2048);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let vm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let limit = (vm_kib + 256 * 1024) * 1024;
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: a valid rlimit struct that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) } != 0 {
        println!("setrlimit failed: {}", io::Error::last_os_error());
        std::process::exit(2);
    }
    match Engine::builder().config(c).start(&dev) {
        Ok(engine) => {
            println!("started with a capped address space?");
            drop(engine);
            std::process::exit(3)
        }
        Err(e) => {
            println!("start refused: {e}");
            std::process::exit(0)
        }
    }
}

/// A start that cannot get a descriptor (the process is at its `RLIMIT_NOFILE`) reports the
/// resource it lacks, not "not an open TUN": the fd is fine, and a later start may work.
fn out_of_fds_at_start() -> Result<(), Failed> {
    let host = tun("tpm6", V4_LOCAL)?;
    let c = default_config();
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    check(got == 0, || "getrlimit".into())?;
    // The lowest free descriptor number becomes the limit: no new fd can be made.
    // SAFETY: F_DUPFD_CLOEXEC on stdin's number finds a free slot; closed at once.
    let lowest_free = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0) };
    check(lowest_free > 0, || {
        "no free descriptor to measure with".into()
    })?;
    // SAFETY: closing the descriptor just made.
    unsafe { libc::close(lowest_free) };
    let capped = libc::rlimit {
        rlim_cur: lowest_free as libc::rlim_t,
        rlim_max: limit.rlim_max,
    };
    let mut out: *mut TunpipeEngine = null_mut();
    // SAFETY: valid rlimit structs; the config and out pointers are valid for the call.
    let code = unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &capped);
        let code = tunpipe_engine_start(&c, host.as_raw_fd(), &mut out);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        code
    };
    if !out.is_null() {
        // SAFETY: a handle the start just made.
        unsafe { tunpipe_engine_free(out) };
    }
    let mut text = [0 as std::ffi::c_char; 512];
    // SAFETY: the buffer holds 512 bytes.
    unsafe { tunpipe_last_error(text.as_mut_ptr(), text.len()) };
    // SAFETY: tunpipe_last_error NUL-terminates within the buffer.
    let text = unsafe { std::ffi::CStr::from_ptr(text.as_ptr()) }.to_string_lossy();
    check(code == TUNPIPE_ERR_RESOURCES, || {
        format!("start at the fd limit returned {code} ({text}), not TUNPIPE_ERR_RESOURCES")
    })?;
    check(text.contains("open files"), || {
        format!("the message: {text}")
    })
}
