//! The kernel's own `ping`, `ping -6` and UDP sockets as clients of the engine; adopted and
//! rejected fds; a deleted interface; a bridge of two TUNs between two namespaces.
//!
//! Each test runs in a fresh network namespace with IPv6 on (duplicate address detection
//! off, so that addresses are usable at once): see main.rs.

use libtest_mimic::Failed;
use std::io;
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;
use tunpipe::{BuiltinStage, Engine, EngineError, TunDevice};
use tunpipe_testkit::check::{check, conserved};
use tunpipe_testkit::netns::{iperf3_across, iperf3_installed, iperf3_result, tun_in_other_netns};
use tunpipe_testkit::ping::ping;
use tunpipe_testkit::proc::{fd_flags, tasks_named};
use tunpipe_testkit::trials::Test;
use tunpipe_testkit::{bridge, config};

const V4_LOCAL: &str = "10.50.0.1";
const V4_PEER: &str = "10.50.0.2";
const V6_LOCAL: &str = "fd00:50::1";
const V6_PEER: &str = "fd00:50::2";

pub const TESTS: [(&str, Test); 11] = [
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
    (
        "an_offload_bridge_carries_a_tcp_stream_intact",
        offload_bridge_carries_tcp_intact,
    ),
    (
        "an_offload_write_that_fails_mid_batch_is_its_packets_error_alone",
        offload_write_fails_mid_batch,
    ),
];

fn tun(name: &str) -> Result<tun_rs::SyncDevice, Failed> {
    Ok(tunpipe_testkit::tun::tun_v6(name, V4_LOCAL, V6_LOCAL)?)
}

fn assert_conserved(engine: &Engine) -> Result<(), Failed> {
    conserved(&engine.stats())
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

fn idle_engine_uses_no_cpu() -> Result<(), Failed> {
    let device = TunDevice::new(tun("tpt4")?);
    let engine = Engine::builder().config(config(2)).start(&device)?;
    let (_, got) = ping(&["-c", "5", "-i", "0.002", "-W", "2", V4_PEER])?;
    check(got == 5, || "ping failed".into())?;
    // Past the spin window every actor parks (the reader waits in poll()).
    std::thread::sleep(Duration::from_millis(200));
    let before = tasks_named("tunpipe-");
    std::thread::sleep(Duration::from_millis(500));
    let after = tasks_named("tunpipe-");
    check(before.len() == 4, || {
        format!("expected 4 engine threads: {before:?}")
    })?;
    for (t0, t1) in before.iter().zip(&after) {
        let (name, state) = (&t0.name, t0.state);
        let (cpu0, cpu1) = (t0.cpu_ticks, t1.cpu_ticks);
        check(state == 'S', || format!("{name} is not sleeping: {state}"))?;
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

/// Two engines join two network namespaces: one reads TUN A and writes TUN B, the other the
/// reverse. The kernel's ping and real TCP (iperf3, when installed) cross the bridge.
fn bridge_between_namespaces() -> Result<(), Failed> {
    let a = tunpipe_testkit::tun::tun("tpa", "10.60.0.1")?;
    let (b, other_ns) = tun_in_other_netns("tpb", "10.60.0.2")?;
    let (a_to_b, b_to_a) = bridge(&TunDevice::new(a), &TunDevice::new(b), &config(1))?;
    let (sent, got) = ping(&["-c", "20", "-i", "0.005", "-W", "2", "10.60.0.2"])?;
    check(sent == 20 && got == 20, || {
        format!("ping across the bridge: {got}/{sent}")
    })?;

    if iperf3_installed() {
        let moved = iperf3_result(&iperf3_across(&other_ns, "10.60.0.2", 2)?)?;
        check(moved.bytes > 1_000_000, || {
            format!("iperf3 moved only {} bytes", moved.bytes)
        })?;
        eprintln!(
            "iperf3 across the bridge: {:.0} MB in 2 s",
            moved.bytes as f64 / 1e6
        );
    } else {
        eprintln!("iperf3 not installed: TCP part skipped");
    }
    a_to_b.stop()?;
    b_to_a.stop()?;
    assert_conserved(&a_to_b)?;
    assert_conserved(&b_to_a)
}

/// Two engines join two TUNs made with offload (`IFF_VNET_HDR`, TSO): reads carry 64 KiB TCP
/// segments that the engine cuts into packets, and writes coalesce runs of one flow. 16 MiB
/// of TCP crosses and comes back byte for byte, with the kernel checking every checksum the
/// engine completed or left partial.
fn offload_bridge_carries_tcp_intact() -> Result<(), Failed> {
    let a = tunpipe_testkit::tun::tun_offload("tpoa", "10.61.0.1")?;
    let (b, other_ns) = tunpipe_testkit::netns::tun_offload_in_other_netns("tpob", "10.61.0.2")?;
    let (a, b) = (TunDevice::new(a), TunDevice::new(b));
    check(a.offload() && b.offload(), || {
        "the devices run without offload".into()
    })?;
    let (a_to_b, b_to_a) = bridge(&a, &b, &config(0))?;
    const BYTES: usize = 16 << 20;
    let back = tunpipe_testkit::netns::tcp_round_trip(&other_ns, "10.61.0.2", 5001, BYTES)?;
    check(back.len() == BYTES, || {
        format!("{} of {BYTES} bytes came back", back.len())
    })?;
    check(back == tunpipe_testkit::netns::pseudo_random(BYTES), || {
        "the stream came back changed".into()
    })?;
    a_to_b.stop()?;
    b_to_a.stop()?;
    assert_conserved(&a_to_b)?;
    assert_conserved(&b_to_a)
}

/// Writes to a TUN with offload, through the device's batch method as the writer calls it:
/// a packet the kernel refuses (not IP) in the middle of a batch is the error of that call
/// alone; the packets before it went in the calls before, and the ones after go on.
fn offload_write_fails_mid_batch() -> Result<(), Failed> {
    use tunpipe::device::{Device, TxHalf};
    use tunpipe::PacketBuf;
    let device = TunDevice::new(tunpipe_testkit::tun::tun_offload("tpow", "10.63.0.1")?);
    let (_rx, mut tx) = device.open()?;
    let listener = UdpSocket::bind("10.63.0.1:7000")?;
    listener.set_read_timeout(Some(Duration::from_secs(5)))?;
    let packet = |bytes: &[u8]| {
        let mut p = PacketBuf::new(0, 2048, 0);
        p.fill(0, bytes).expect("fits");
        p
    };
    // UDP toward the TUN's own address: the kernel delivers what it accepts to `listener`.
    let to_us = |seq: u8| {
        tunpipe_testkit::packets::udp4_packet([10, 63, 0, 2], [10, 63, 0, 1], 5000, 7000, &[seq; 8])
    };
    let batch = [
        packet(&to_us(1)),
        packet(&to_us(2)),
        packet(&[0x00; 28]),
        packet(&to_us(3)),
    ];
    let mut sent = Vec::new();
    let mut at = 0;
    while at < batch.len() {
        match tx.send_batch(&batch[at..]) {
            Ok(n) => {
                sent.push(Ok(n));
                at += n;
            }
            Err(e) => {
                sent.push(Err(e.raw_os_error()));
                at += 1;
            }
        }
    }
    check(sent.len() == 4 && sent[2].is_err(), || {
        format!("calls: {sent:?}")
    })?;
    check(
        sent.iter().filter(|r| matches!(r, Ok(1))).count() == 3,
        || format!("each good packet went in its own call: {sent:?}"),
    )?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        let (n, _) = listener.recv_from(&mut buf)?;
        got.push(buf[..n].to_vec());
    }
    check(got == vec![vec![1u8; 8], vec![2; 8], vec![3; 8]], || {
        format!("{got:?}")
    })
}
