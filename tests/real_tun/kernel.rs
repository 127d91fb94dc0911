// Real-TUN tests: the kernel's own `ping`, `ping -6` and UDP sockets as clients of the engine.
//
// Each test runs in a fresh network namespace (`unshare(CLONE_NEWNET)` on its own thread;
// the engine's threads and the `ping` children inherit it), so nothing collides or leaks.
// When the process cannot create a namespace and a TUN device (not root), every test is
// reported as ignored, never as passed. Tests run one at a time, so that the idle test sees
// only its own engine's threads.

use libtest_mimic::{Arguments, Failed, Trial};
use std::io;
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;
use tunpipe::{BuiltinStage, Config, Engine, EngineError, TunDevice};

const V4_LOCAL: &str = "10.50.0.1";
const V4_PEER: &str = "10.50.0.2";
const V6_LOCAL: &str = "fd00:50::1";
const V6_PEER: &str = "fd00:50::2";

/// A real-TUN test: runs inside its own network namespace.
type Test = fn() -> Result<(), Failed>;

pub fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let reason = privilege_problem();
    let tests: Vec<(&str, Test)> = vec![
        (
            "kernel_ping_v4_and_v6_answered_through_reflect",
            ping_v4_and_v6,
        ),
        ("udp_reflected_with_correct_checksums", udp_reflected),
        (
            "every_worker_count_answers_ping",
            every_worker_count_answers_ping,
        ),
        (
            "stop_while_blocked_in_recv_returns",
            stop_while_blocked_in_recv,
        ),
        (
            "idle_engine_threads_sleep_and_use_no_cpu",
            idle_engine_uses_no_cpu,
        ),
        (
            "adopted_fd_left_open_and_reusable_after_stop",
            adopted_fd_reusable,
        ),
        ("non_tun_fds_are_rejected", non_tun_fds_rejected),
        (
            "deleting_the_interface_stops_the_engine_with_an_error",
            interface_deleted,
        ),
        (
            "bridge_of_two_tuns_carries_ping_between_namespaces",
            bridge_between_namespaces,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            let trial = Trial::test(name, move || in_fresh_netns(test));
            match &reason {
                Some(why) => trial.with_ignored_flag(true).with_kind(why.clone()),
                None => trial,
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

/// Why real-TUN tests cannot run here, or None when they can: tried in a throwaway thread.
fn privilege_problem() -> Option<String> {
    std::thread::spawn(|| {
        if let Err(e) = unshare_net() {
            return Some(format!("needs root (unshare: {e})"));
        }
        match tun_rs::DeviceBuilder::new().name("tpprobe").build_sync() {
            Ok(_) => None,
            Err(e) => Some(format!("cannot create a TUN ({e})")),
        }
    })
    .join()
    .unwrap_or_else(|_| Some("probe panicked".into()))
}

fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare takes flags only; it moves the calling thread into a new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `test` on a thread of its own inside a new network namespace with DAD off, so that
/// IPv6 addresses are usable at once.
fn in_fresh_netns(test: Test) -> Result<(), Failed> {
    std::thread::spawn(move || {
        unshare_net().map_err(|e| format!("unshare: {e}"))?;
        for conf in ["default", "all"] {
            let path = format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad");
            std::fs::write(&path, "0").map_err(|e| format!("{path}: {e}"))?;
        }
        test()
    })
    .join()
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("test panicked: {msg}").into())
    })
}

fn tun(name: &str) -> Result<tun_rs::SyncDevice, Failed> {
    tun_rs::DeviceBuilder::new()
        .name(name)
        .ipv4(V4_LOCAL, 24, None)
        .ipv6(V6_LOCAL, 64)
        .mtu(1500)
        .build_sync()
        .map_err(|e| format!("create TUN {name}: {e}").into())
}

fn config(workers: usize) -> Config {
    let mut c = Config::default();
    c.workers = workers;
    c
}

/// Runs the kernel's ping and returns (transmitted, received).
fn ping(args: &[&str]) -> Result<(u32, u32), Failed> {
    let out = Command::new("ping")
        .args(args)
        .output()
        .map_err(|e| format!("run ping: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| format!("no ping summary in: {text}"))?;
    let numbers: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    Ok((numbers[0], numbers[1]))
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(msg().into())
    }
}

fn assert_conserved(engine: &Engine) -> Result<(), Failed> {
    let s = engine.stats();
    check(s.rx_packets == s.tx_packets + s.dropped(), || {
        format!("conservation broken: {s:?}")
    })
}

fn ping_v4_and_v6() -> Result<(), Failed> {
    let device = TunDevice::new(tun("tpt0")?);
    let engine = Engine::builder()
        .config(config(1))
        .stage(BuiltinStage::Reflect)
        .start(&device)?;
    let (sent, got) = ping(&["-c", "50", "-i", "0.002", "-W", "2", V4_PEER])?;
    check(sent == 50 && got == 50, || {
        format!("ping: {got}/{sent} replies")
    })?;
    let (sent, got) = ping(&["-6", "-c", "20", "-i", "0.005", "-W", "2", V6_PEER])?;
    check(sent == 20 && got == 20, || {
        format!("ping -6: {got}/{sent} replies")
    })?;
    engine.stop()?;
    assert_conserved(&engine)?;
    let s = engine.stats();
    check(s.tx_packets >= 70, || format!("{s:?}"))
}

fn udp_reflected() -> Result<(), Failed> {
    let device = TunDevice::new(tun("tpt1")?);
    let engine = Engine::builder().config(config(2)).start(&device)?;
    let socket = UdpSocket::bind((V4_LOCAL, 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    for (i, size) in [0usize, 1, 7, 64, 1000, 1472]
        .into_iter()
        .cycle()
        .take(300)
        .enumerate()
    {
        let payload: Vec<u8> = (0..size).map(|b| (b + i) as u8).collect();
        socket.send_to(&payload, (V4_PEER, 7777))?;
        // The kernel delivers the reply only if its UDP checksum verifies.
        let (n, from) = socket.recv_from(&mut buf)?;
        check(&buf[..n] == payload.as_slice(), || {
            format!("payload {i} differs")
        })?;
        check(from.to_string() == format!("{V4_PEER}:7777"), || {
            format!("from {from}")
        })?;
    }
    let socket6 = UdpSocket::bind((V6_LOCAL, 0))?;
    socket6.set_read_timeout(Some(Duration::from_secs(2)))?;
    for i in 0..50u8 {
        socket6.send_to(&[i; 100], (V6_PEER, 9))?;
        let (n, _) = socket6.recv_from(&mut buf)?;
        check(buf[..n] == [i; 100], || "v6 payload differs".to_string())?;
    }
    engine.stop()?;
    assert_conserved(&engine)
}

fn every_worker_count_answers_ping() -> Result<(), Failed> {
    let device = TunDevice::new(tun("tpt2")?);
    for workers in [0, 1, 2, 4] {
        let engine = Engine::builder().config(config(workers)).start(&device)?;
        let (sent, got) = ping(&["-c", "10", "-i", "0.002", "-W", "2", V4_PEER])?;
        check(got == sent, || format!("{workers} workers: {got}/{sent}"))?;
        engine.stop()?;
        assert_conserved(&engine)?;
    }
    Ok(())
}

fn stop_while_blocked_in_recv() -> Result<(), Failed> {
    let device = TunDevice::new(tun("tpt3")?);
    for workers in [0, 2] {
        let engine = Engine::builder().config(config(workers)).start(&device)?;
        // Nothing arrives: the reader sits in poll(). Stop must interrupt it, not wait for a
        // packet (if it waited, this test would hang; it does not time anything).
        std::thread::sleep(Duration::from_millis(50));
        engine.stop()?;
        // The kernel may send a router solicitation or two; nothing else is expected.
        assert_conserved(&engine)?;
    }
    Ok(())
}

/// (state, utime + stime in clock ticks) of every thread of this process named tunpipe-*.
fn engine_threads() -> Vec<(String, char, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        if !name.starts_with("tunpipe-") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let state = fields[0].chars().next().unwrap_or('?');
        let cpu = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        out.push((name.to_string(), state, cpu));
    }
    out.sort();
    out
}

fn idle_engine_uses_no_cpu() -> Result<(), Failed> {
    let device = TunDevice::new(tun("tpt4")?);
    let engine = Engine::builder().config(config(2)).start(&device)?;
    let (_, got) = ping(&["-c", "5", "-i", "0.002", "-W", "2", V4_PEER])?;
    check(got == 5, || "ping failed".into())?;
    // Past the spin window every actor parks (the reader waits in poll()).
    std::thread::sleep(Duration::from_millis(200));
    let before = engine_threads();
    std::thread::sleep(Duration::from_millis(500));
    let after = engine_threads();
    check(before.len() == 4, || {
        format!("expected 4 engine threads: {before:?}")
    })?;
    for ((name, state, cpu0), (_, _, cpu1)) in before.iter().zip(&after) {
        check(*state == 'S', || format!("{name} is not sleeping: {state}"))?;
        check(cpu1 == cpu0, || {
            format!("{name} used CPU while idle: {cpu0} -> {cpu1} ticks")
        })?;
    }
    let wakeups = engine.stats().wakeups;
    std::thread::sleep(Duration::from_millis(200));
    check(engine.stats().wakeups == wakeups, || {
        "idle engine woke up".into()
    })?;
    engine.stop()?;
    Ok(())
}

fn fd_flags(fd: i32) -> i32 {
    // SAFETY: F_GETFL takes no pointer; a closed fd gives -1.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

fn adopted_fd_reusable() -> Result<(), Failed> {
    use std::os::fd::AsRawFd;
    // The "host" owns this device and its fd, as iOS owns the utun fd.
    let host = tun("tpt5")?;
    let fd = host.as_raw_fd();
    let flags = fd_flags(fd);
    for round in 0..3 {
        let device = TunDevice::adopt(fd)?;
        check(device.raw_fd() != fd, || {
            "the engine must work on a dup".into()
        })?;
        let engine = Engine::builder().config(config(round % 2)).start(&device)?;
        let (sent, got) = ping(&["-c", "10", "-i", "0.002", "-W", "2", V4_PEER])?;
        check(got == sent, || format!("round {round}: {got}/{sent}"))?;
        engine.stop()?;
        drop(device);
        check(fd_flags(fd) == flags, || {
            format!(
                "round {round}: flags {:#x} became {:#x}",
                flags,
                fd_flags(fd)
            )
        })?;
    }
    // The host's fd is still open and usable after every run.
    let mut buf = [0u8; 64];
    match host.recv(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(format!("host fd unusable: {e}").into()),
        Ok(_) => {}
    }
    Ok(())
}

fn non_tun_fds_rejected() -> Result<(), Failed> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, || {
        "pipe".into()
    })?;
    for fd in [fds[0], fds[1], 0, -1, 100_000] {
        let err = match TunDevice::adopt(fd) {
            Ok(_) => return Err(format!("fd {fd} was accepted as a TUN").into()),
            Err(e) => e,
        };
        check(!err.to_string().is_empty(), || "empty error".into())?;
    }
    // SAFETY: closing the two fds pipe() gave us.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    Ok(())
}

fn interface_deleted() -> Result<(), Failed> {
    let device = TunDevice::new(tun("tpt6")?);
    let engine = Engine::builder().config(config(1)).start(&device)?;
    let status = Command::new("ip")
        .args(["link", "delete", "tpt6"])
        .status()?;
    check(status.success(), || "ip link delete failed".into())?;
    match engine.wait() {
        Err(EngineError::Device(e)) => {
            eprintln!("engine stopped with: {e}");
            Ok(())
        }
        other => Err(format!("expected a device error, got {other:?}").into()),
    }
}

/// Creates a TUN in a second, fresh namespace (on a thread of its own) and returns it with a
/// handle that runs commands in that namespace. The fd works from any namespace: that is
/// what lets a bridge of two engines join the two.
fn tun_in_other_netns(
    name: &'static str,
    addr: &'static str,
) -> Result<(tun_rs::SyncDevice, NetnsRunner), Failed> {
    let (dev_tx, dev_rx) = std::sync::mpsc::channel();
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<(
        Vec<String>,
        std::sync::mpsc::Sender<io::Result<std::process::Child>>,
    )>();
    std::thread::spawn(move || {
        let made = unshare_net()
            .map_err(|e| format!("unshare: {e}"))
            .and_then(|()| {
                tun_rs::DeviceBuilder::new()
                    .name(name)
                    .ipv4(addr, 24, None)
                    .build_sync()
                    .map_err(|e| format!("{name}: {e}"))
            });
        let _ = dev_tx.send(made);
        // Serve command spawns until the runner is dropped.
        for (argv, reply) in cmd_rx {
            let child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(std::process::Stdio::null())
                .spawn();
            let _ = reply.send(child);
        }
    });
    let dev = dev_rx.recv().map_err(|e| format!("netns thread: {e}"))??;
    Ok((dev, NetnsRunner(cmd_tx)))
}

/// Spawns processes inside the other namespace.
struct NetnsRunner(
    std::sync::mpsc::Sender<(
        Vec<String>,
        std::sync::mpsc::Sender<io::Result<std::process::Child>>,
    )>,
);

impl NetnsRunner {
    fn spawn(&self, argv: &[&str]) -> Result<std::process::Child, Failed> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.0
            .send((argv.iter().map(|s| s.to_string()).collect(), tx))
            .map_err(|e| format!("netns runner: {e}"))?;
        Ok(rx.recv().map_err(|e| format!("netns runner: {e}"))??)
    }
}

/// Two engines join two network namespaces: one reads TUN A and writes TUN B, the other the
/// reverse. The kernel's ping and real TCP (iperf3, when installed) cross the bridge.
fn bridge_between_namespaces() -> Result<(), Failed> {
    use tunpipe::Device;
    let a = tun_rs::DeviceBuilder::new()
        .name("tpa")
        .ipv4("10.60.0.1", 24, None)
        .build_sync()
        .map_err(|e| format!("tpa: {e}"))?;
    let (b, other_ns) = tun_in_other_netns("tpb", "10.60.0.2")?;
    let (a, b) = (TunDevice::new(a), TunDevice::new(b));
    let (a_rx, a_tx) = a.open()?;
    let (b_rx, b_tx) = b.open()?;
    let a_to_b = Engine::builder()
        .config(config(1))
        .stage(BuiltinStage::Passthrough)
        .start_halves(a_rx, b_tx)?;
    let b_to_a = Engine::builder()
        .config(config(1))
        .stage(BuiltinStage::Passthrough)
        .start_halves(b_rx, a_tx)?;
    let (sent, got) = ping(&["-c", "20", "-i", "0.005", "-W", "2", "10.60.0.2"])?;
    check(sent == 20 && got == 20, || {
        format!("ping across the bridge: {got}/{sent}")
    })?;

    if Command::new("iperf3").arg("--version").output().is_ok() {
        let mut server = other_ns.spawn(&["iperf3", "-s", "-1", "-B", "10.60.0.2"])?;
        let mut client = None;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(100));
            let out = Command::new("iperf3")
                .args(["-c", "10.60.0.2", "-t", "2", "-J"])
                .output()?;
            if out.status.success() {
                client = Some(String::from_utf8_lossy(&out.stdout).into_owned());
                break;
            }
        }
        let _ = server.kill();
        let _ = server.wait();
        let report = client.ok_or("iperf3 never connected across the bridge")?;
        let sent_bytes = report
            .split("\"sum_sent\"")
            .nth(1)
            .and_then(|s| s.split("\"bytes\":").nth(1))
            .and_then(|s| s.split([',', '}']).next())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .ok_or("no sum_sent bytes in the iperf3 report")?;
        check(sent_bytes > 1e6, || {
            format!("iperf3 moved only {sent_bytes} bytes")
        })?;
        eprintln!(
            "iperf3 across the bridge: {:.0} MB in 2 s",
            sent_bytes / 1e6
        );
    } else {
        eprintln!("iperf3 not installed: TCP part skipped");
    }
    a_to_b.stop()?;
    b_to_a.stop()?;
    assert_conserved(&a_to_b)?;
    assert_conserved(&b_to_a)
}
