//! The real-TUN soak: start/stop cycles adopting the host's fd, sustained closed-loop UDP,
//! and the host closing its fd under a running engine. The threads, fds and memory of the
//! process are checked at the end; `tests/soak` has the in-memory part and the full
//! campaign's command.
//!
//! Each test runs in a fresh network namespace with IPv6 off, so the kernel sends nothing
//! through the TUN but what the test sends (no router solicitations, no MLD reports), and the
//! counts can be compared exactly: see main.rs.

use libtest_mimic::Failed;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::time::{Duration, Instant};
use tunpipe::{Engine, TunDevice};
use tunpipe_testkit::check::{check, conserved, eventually};
use tunpipe_testkit::config;
use tunpipe_testkit::netns::interface_exists;
use tunpipe_testkit::ping::ping;
use tunpipe_testkit::proc::{assert_no_leak, fd_flags, resources, settled_resources};
use tunpipe_testkit::trials::{env_or, Test};
use tunpipe_testkit::tun::tun;

const V4_LOCAL: &str = "10.51.0.1";
const V4_PEER: &str = "10.51.0.2";

pub const TESTS: [(&str, Test); 3] = [
    (
        "tun_start_stop_cycles_leak_no_threads_fds_or_memory",
        tun_cycles,
    ),
    (
        "tun_sustained_udp_load_conserves_every_packet",
        tun_sustained,
    ),
    (
        "host_closing_its_fd_leaves_the_engine_on_its_dup",
        host_closes_fd,
    ),
];

/// A UDP payload that encodes its sequence number and can be checked on return.
fn payload(seq: u64) -> Vec<u8> {
    let size = 8 + (seq * 37 % 1465) as usize;
    let mut p = seq.to_be_bytes().to_vec();
    p.extend((8..size).map(|i| (seq as usize + i) as u8));
    p
}

/// Start/stop cycles on a real TUN, adopting the host's fd each cycle as iOS hands it over
/// (a dup made and closed every cycle), with UDP through every tenth cycle and the kernel's
/// ping through every hundredth. `TUNPIPE_SOAK_TUN_CYCLES` sets the count (default 1000).
fn tun_cycles() -> Result<(), Failed> {
    let cycles = env_or("TUNPIPE_SOAK_TUN_CYCLES", 1000).max(1);
    let warmup = (cycles / 4).clamp(1, 100);
    let host = tun("tps0", V4_LOCAL)?;
    let fd = host.as_raw_fd();
    let flags = fd_flags(fd);
    let socket = UdpSocket::bind((V4_LOCAL, 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 2048];
    let mut baseline = None;
    let (mut udp, mut pings) = (0u64, 0u64);
    let started = Instant::now();
    for cycle in 0..cycles {
        if cycle == warmup {
            baseline = Some(settled_resources(resources().threads));
        }
        let device = TunDevice::adopt(fd)?;
        let engine = Engine::builder()
            .config(config((cycle % 3) as usize))
            .start(&device)?;
        if cycle % 10 == 0 {
            for i in 0..3 {
                let p = payload(cycle * 3 + i);
                socket.send_to(&p, (V4_PEER, 9))?;
                let (n, _) = socket.recv_from(&mut buf)?;
                check(buf[..n] == p[..], || {
                    format!("cycle {cycle}: payload differs")
                })?;
                udp += 1;
            }
        }
        if cycle % 100 == 50 {
            let (sent, got) = ping(&["-c", "2", "-i", "0.01", "-W", "2", V4_PEER])?;
            check(sent == got, || format!("cycle {cycle}: ping {got}/{sent}"))?;
            pings += got;
        }
        engine.stop()?;
        conserved(&engine.stats())?;
        drop(engine);
        drop(device);
        check(fd_flags(fd) == flags, || {
            format!("cycle {cycle}: the host fd's flags were not restored")
        })?;
    }
    let elapsed = started.elapsed();
    let before = baseline.unwrap_or_else(resources);
    let after = settled_resources(before.threads);
    eprintln!(
        "{cycles} TUN start/stop cycles in {:.1} s ({:.0} µs each): {udp} UDP round trips, \
         {pings} pings answered",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / cycles as f64
    );
    assert_no_leak("TUN cycles (after warm-up)", before, after)
}

/// Closed-loop UDP through the reflect stage for `TUNPIPE_SOAK_SECONDS` (default 5; the
/// issue's campaign is 60): four client sockets (four flows, spread over two workers), each
/// keeping 16 datagrams of 8..1472 bytes in flight. At the end: read = written + dropped,
/// the clients received exactly as many replies as the engine wrote, each one byte for byte
/// the datagram that was sent.
fn tun_sustained() -> Result<(), Failed> {
    const FLOWS: usize = 4;
    const WINDOW: u64 = 16;
    let seconds = env_or("TUNPIPE_SOAK_SECONDS", 5);
    let device = TunDevice::new(tun("tps1", V4_LOCAL)?);
    let engine = Engine::builder().config(config(2)).start(&device)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..FLOWS)
        .map(|flow| {
            std::thread::spawn(move || -> Result<(u64, u64, u64), String> {
                let socket = UdpSocket::bind((V4_LOCAL, 0)).map_err(|e| e.to_string())?;
                socket
                    .set_read_timeout(Some(Duration::from_millis(500)))
                    .map_err(|e| e.to_string())?;
                let port = 7000 + flow as u16;
                let (mut sent, mut received, mut timeouts) = (0u64, 0u64, 0u64);
                let mut outstanding = 0u64;
                let mut buf = [0u8; 2048];
                let base = (flow as u64) << 48;
                loop {
                    let running = Instant::now() < deadline;
                    while running && outstanding < WINDOW {
                        socket
                            .send_to(&payload(base + sent), (V4_PEER, port))
                            .map_err(|e| e.to_string())?;
                        sent += 1;
                        outstanding += 1;
                    }
                    if !running && outstanding == 0 {
                        break;
                    }
                    match socket.recv_from(&mut buf) {
                        Ok((n, _)) => {
                            let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                            if buf[..n] != payload(seq)[..] {
                                return Err(format!("flow {flow}: reply {seq} differs"));
                            }
                            received += 1;
                            outstanding = outstanding.saturating_sub(1);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            // Whatever is outstanding is lost (counted by the engine or
                            // the kernel); start a fresh window, or finish.
                            timeouts += 1;
                            outstanding = 0;
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                // Anything that still arrives late counts too.
                socket
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .map_err(|e| e.to_string())?;
                while socket.recv_from(&mut buf).is_ok() {
                    received += 1;
                }
                Ok((sent, received, timeouts))
            })
        })
        .collect();
    let (mut sent, mut received, mut timeouts) = (0u64, 0u64, 0u64);
    for c in clients {
        let (s, r, t) = c.join().map_err(|_| "client panicked")??;
        sent += s;
        received += r;
        timeouts += t;
    }
    let latency = engine.latency()?;
    engine.stop()?;
    let s = engine.stats();
    eprintln!(
        "{seconds} s of closed-loop UDP: {sent} sent, {received} replies received, \
         {timeouts} timeouts; engine {s:?}; engine latency {:?}",
        latency.engine.percentiles()
    );
    conserved(&engine.stats())?;
    check(received == s.tx_packets, || {
        format!(
            "the clients received {received} replies, the engine wrote {}",
            s.tx_packets
        )
    })?;
    check(s.rx_packets <= sent, || {
        format!(
            "the engine read {} packets, more than the {sent} sent",
            s.rx_packets
        )
    })?;
    check(received > 0 && received + 64 * timeouts >= sent, || {
        format!("{sent} sent, {received} received, {timeouts} timeouts")
    })
}

/// The host closes its own fd while the engine runs on its dup. The engine keeps working
/// (ping answered), never touches the descriptor number the host freed (a pipe that reuses
/// it is left alone), stops cleanly, and closing the dup at stop then releases the
/// interface (a non-persistent TUN vanishes with its last fd).
fn host_closes_fd() -> Result<(), Failed> {
    let host_fd = tun("tps2", V4_LOCAL)?.into_raw_fd();
    let device = TunDevice::adopt(host_fd)?;
    let engine = Engine::builder().config(config(1)).start(&device)?;
    let (sent, got) = ping(&["-c", "3", "-i", "0.01", "-W", "2", V4_PEER])?;
    check(sent == got, || format!("before close: ping {got}/{sent}"))?;

    // SAFETY: the test owns `host_fd` (from into_raw_fd) and closes it exactly once.
    check(unsafe { libc::close(host_fd) } == 0, || "close".into())?;
    // The lowest free number is handed out next: a pipe now most likely reuses it.
    let mut ends = [0; 2];
    // SAFETY: pipe writes two fds into `ends`.
    check(unsafe { libc::pipe(ends.as_mut_ptr()) } == 0, || {
        "pipe".into()
    })?;
    let reused = ends.contains(&host_fd);
    let sentinel = *b"host data";
    // SAFETY: `ends[1]` is the pipe's write end, `sentinel` a live buffer.
    let wrote = unsafe { libc::write(ends[1], sentinel.as_ptr().cast(), sentinel.len()) };
    check(wrote == sentinel.len() as isize, || "write to pipe".into())?;

    let (sent, got) = ping(&["-c", "20", "-i", "0.005", "-W", "2", V4_PEER])?;
    check(sent == 20 && got == 20, || {
        format!("after the host closed its fd: ping {got}/{sent}")
    })?;
    check(interface_exists("tps2"), || {
        "the engine's dup keeps the interface alive".into()
    })?;
    engine.stop()?;
    conserved(&engine.stats())?;
    check(engine.stats().tx_packets >= 23, || {
        format!("{:?}", engine.stats())
    })?;
    // The pipe that took the freed number still holds exactly what was written to it.
    let mut back = [0u8; 32];
    // SAFETY: `ends[0]` is the pipe's read end, `back` a live buffer of its length.
    let n = unsafe { libc::read(ends[0], back.as_mut_ptr().cast(), back.len()) };
    check(
        n == sentinel.len() as isize && back[..sentinel.len()] == sentinel,
        || format!("the reused fd {host_fd} was touched: read {n}"),
    )?;
    drop(engine);
    drop(device);
    // Once the dup closes, nothing holds the interface.
    let gone = eventually(|| !interface_exists("tps2"));
    // SAFETY: closing the pipe fds this test made.
    unsafe {
        libc::close(ends[0]);
        libc::close(ends[1]);
    }
    eprintln!("host fd {host_fd} closed while running; reused by the pipe: {reused}");
    check(gone, || "the interface outlived the engine's dup".into())
}
