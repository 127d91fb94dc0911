//! The `hostile` section: what a host's behaviour does to `stop()` (issue 9), and what the
//! engine pays for reading without `O_NONBLOCK`.
//!
//! - Stop time against stage time: a stage that works D per packet (D from 0 to 20 ms),
//!   under a UDP flood; a stop should take at most one stage call plus the usual join.
//! - Stop with the host's `O_NONBLOCK` cleared: the engine on a dup of a host fd whose flag
//!   the host cleared, stopped while idle.
//! - The read itself: `read()` on an `O_NONBLOCK` fd (what the engine did), `preadv2` with
//!   `RWF_NOWAIT` (what it does), and `poll` then `read` (its fallback before Linux 5.9), on
//!   an empty TUN (the call that ends every drain) and with packets queued.

use crate::Timing;
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe::{Engine, PacketBuf, TunDevice, Verdict};
use tunpipe_testkit::config;
use tunpipe_testkit::load::{client_socket, flood, LOCAL, PEER, PORT};
use tunpipe_testkit::report::{histogram, percentiles_us, print_table};
use tunpipe_testkit::tun::tun;

pub fn hostile_section(t: &Timing) -> Value {
    json!({
        "stop_vs_stage_time": stop_vs_stage_time(t),
        "stop_with_o_nonblock_cleared": stop_with_o_nonblock_cleared(t),
        "read_methods": read_methods(t),
    })
}

/// A stage that spins for `work` on every packet (a slow C callback, say).
fn slow_stage(work: Duration) -> impl Fn(&mut PacketBuf) -> Verdict + Clone + Send + Sync {
    move |_: &mut PacketBuf| {
        let until = Instant::now() + work;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        Verdict::Forward
    }
}

fn stop_vs_stage_time(t: &Timing) -> Value {
    let device = TunDevice::new(tun("tphost", LOCAL).expect("tun"));
    let flooding = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = flooding.clone();
        let socket = client_socket().expect("socket");
        socket.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            flood(&socket, &stop, 32, &[0u8; 64], Duration::from_micros(200))
        })
    };
    let (mut rows, mut cells) = (Vec::new(), Vec::new());
    for work_us in [0u64, 100, 1_000, 10_000, 20_000] {
        let work = Duration::from_micros(work_us);
        for workers in [0usize, 1] {
            let cycles = if work_us >= 10_000 {
                10
            } else {
                (t.stop_cycles / 20).max(10)
            };
            let mut h = histogram();
            for _ in 0..cycles {
                let engine = Engine::builder()
                    .config(config(workers))
                    .stage(slow_stage(work))
                    .start(&device)
                    .expect("engine");
                // Let packets queue behind the stage: a full batch is what held the stop.
                while engine.stats().rx_packets < 40 {
                    std::thread::sleep(Duration::from_micros(200));
                }
                let t0 = Instant::now();
                engine.stop().expect("stop");
                h.record(t0.elapsed().as_nanos() as u64).ok();
            }
            let p = percentiles_us(&h);
            rows.push(vec![
                format!("{work_us}"),
                workers.to_string(),
                h.len().to_string(),
                p["p50_us"].to_string(),
                p["p99_us"].to_string(),
                p["max_us"].to_string(),
            ]);
            cells.push(json!({"stage_us": work_us, "workers": workers, "stop": p}));
        }
    }
    flooding.store(true, Ordering::Relaxed);
    let _ = flooder.join();
    print_table(
        "Stop under a UDP flood against the stage's time per packet (target: one stage call plus a sub-millisecond join)",
        &["stage µs/packet", "workers", "stops", "p50 µs", "p99 µs", "max µs"],
        &rows,
    );
    Value::Array(cells)
}

fn fd_flags(fd: i32) -> i32 {
    // SAFETY: F_GETFL takes no pointer.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

fn set_fd_flags(fd: i32, flags: i32) {
    // SAFETY: F_SETFL takes an integer.
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
}

fn stop_with_o_nonblock_cleared(t: &Timing) -> Value {
    let host = tun("tphost2", LOCAL).expect("tun");
    let fd = host.as_raw_fd();
    set_fd_flags(fd, fd_flags(fd) & !libc::O_NONBLOCK);
    let (mut rows, mut cells) = (Vec::new(), Vec::new());
    for workers in [0usize, 2] {
        let mut h = histogram();
        for _ in 0..(t.stop_cycles / 10).max(10) {
            let device = TunDevice::adopt(fd).expect("adopt");
            let engine = Engine::builder()
                .config(config(workers))
                .start(&device)
                .expect("engine");
            std::thread::sleep(Duration::from_millis(2));
            let t0 = Instant::now();
            engine.stop().expect("stop");
            h.record(t0.elapsed().as_nanos() as u64).ok();
        }
        let p = percentiles_us(&h);
        rows.push(vec![
            workers.to_string(),
            h.len().to_string(),
            p["p50_us"].to_string(),
            p["p99_us"].to_string(),
            p["max_us"].to_string(),
        ]);
        cells.push(json!({"workers": workers, "stop": p}));
    }
    print_table(
        "Idle stop with the host's O_NONBLOCK cleared (target: ≤ 50 ms; before the fix it never returned)",
        &["workers", "stops", "p50 µs", "p99 µs", "max µs"],
        &rows,
    );
    Value::Array(cells)
}

/// The three ways to read a TUN without blocking.
#[derive(Clone, Copy, Debug)]
enum Read {
    /// `read()` with `O_NONBLOCK` set on the fd (shared with the host).
    NonblockingFd,
    /// `preadv2(..., RWF_NOWAIT)` on a blocking fd.
    Nowait,
    /// `poll(fd, POLLIN, 0)`, then `read()` if readable.
    PollFirst,
}

fn read_once(how: Read, fd: i32, buf: &mut [u8]) -> isize {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: each call writes at most `buf.len()` bytes into `buf`, described by `iov`.
    unsafe {
        match how {
            Read::NonblockingFd => libc::read(fd, buf.as_mut_ptr().cast(), buf.len()),
            Read::Nowait => libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT),
            Read::PollFirst => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                if libc::poll(&mut pfd, 1, 0) <= 0 {
                    return -1;
                }
                libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
            }
        }
    }
}

fn read_methods(t: &Timing) -> Value {
    let host = tun("tphost3", LOCAL).expect("tun");
    // No IPv6 on this TUN: the kernel's own router solicitations would land in the "empty"
    // measurement.
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/tphost3/disable_ipv6", "1");
    let fd = host.as_raw_fd();
    let blocking = fd_flags(fd) & !libc::O_NONBLOCK;
    let sender = std::net::UdpSocket::bind((LOCAL, 0)).expect("socket");
    let mut buf = [0u8; 2048];
    let (mut rows, mut cells) = (Vec::new(), Vec::new());
    let calls = if t.stop_cycles >= 1000 {
        200_000
    } else {
        20_000
    };
    for how in [Read::NonblockingFd, Read::Nowait, Read::PollFirst] {
        set_fd_flags(
            fd,
            match how {
                Read::NonblockingFd => blocking | libc::O_NONBLOCK,
                _ => blocking,
            },
        );
        while read_once(how, fd, &mut buf) > 0 {}
        // Empty: every call finds nothing (EAGAIN), as the last read of every drain does.
        let t0 = Instant::now();
        for _ in 0..calls {
            assert!(read_once(how, fd, &mut buf) < 0, "the TUN should be empty");
        }
        let empty_ns = t0.elapsed().as_nanos() as f64 / calls as f64;
        // Queued: packets waiting (sent in batches of 256, then read back).
        let (mut read, mut spent) = (0u64, Duration::ZERO);
        while read < calls as u64 / 4 {
            for _ in 0..256 {
                sender.send_to(&[0u8; 64], (PEER, PORT)).expect("send");
            }
            let t0 = Instant::now();
            for _ in 0..256 {
                if read_once(how, fd, &mut buf) > 0 {
                    read += 1;
                }
            }
            spent += t0.elapsed();
        }
        let queued_ns = spent.as_nanos() as f64 / read as f64;
        rows.push(vec![
            format!("{how:?}"),
            format!("{empty_ns:.0}"),
            format!("{queued_ns:.0}"),
        ]);
        cells.push(
            json!({"read": format!("{how:?}"), "empty_ns": empty_ns, "queued_ns": queued_ns}),
        );
    }
    set_fd_flags(fd, blocking | libc::O_NONBLOCK);
    print_table(
        "One TUN read without blocking: ns per call, empty (EAGAIN) and with 64-byte packets queued",
        &["method", "empty ns", "queued ns"],
        &rows,
    );
    Value::Array(cells)
}
