//! The fd contract (issue 9): what a host may do with its TUN fd while an engine runs on a
//! dup of it, and which fds the engine refuses. Each test ran into a hang, a wrong claim or
//! a wrong answer before the fix it guards.
//!
//! Each test runs in a fresh network namespace with IPv6 off: see main.rs.

use libtest_mimic::Failed;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;
use tunpipe::{Engine, EngineError, TunDevice};
use tunpipe_testkit::check::{check, conserved};
use tunpipe_testkit::config;
use tunpipe_testkit::netns::tun_in_other_netns;
use tunpipe_testkit::ping::ping;
use tunpipe_testkit::proc::{fd_flags, open_fds};
use tunpipe_testkit::trials::Test;

const V4_LOCAL: &str = "10.53.0.1";
const V4_PEER: &str = "10.53.0.2";

pub const TESTS: [(&str, Test); 5] = [
    (
        "o_nonblock_cleared_by_the_host_neither_stalls_traffic_nor_hangs_stop",
        o_nonblock_cleared,
    ),
    (
        "a_renamed_interface_is_still_the_same_tun",
        renamed_interface,
    ),
    (
        "a_tun_of_the_same_name_in_another_namespace_is_another_tun",
        same_name_other_namespace,
    ),
    (
        "tun_kinds_the_engine_cannot_run_on_are_refused",
        odd_kinds_refused,
    ),
    (
        "a_stopped_engine_holds_no_descriptors",
        stopped_engine_holds_no_descriptors,
    ),
];

fn host_tun(name: &str) -> Result<tun_rs::SyncDevice, Failed> {
    Ok(tunpipe_testkit::tun::tun(name, V4_LOCAL)?)
}

fn o_nonblock_cleared() -> Result<(), Failed> {
    let host = host_tun("tpf0")?;
    let fd = host.as_raw_fd();
    for workers in [0, 2] {
        let device = TunDevice::adopt(fd)?;
        let engine = Engine::builder().config(config(workers)).start(&device)?;
        // The host clears O_NONBLOCK on its fd, which shares the open file with the engine's
        // dup. The engine must not care: traffic flows, and an idle engine stops.
        // SAFETY: F_SETFL with flags read from the same fd; no pointers.
        unsafe { libc::fcntl(fd, libc::F_SETFL, fd_flags(fd) & !libc::O_NONBLOCK) };
        let (sent, got) = ping(&["-c", "20", "-i", "0.005", "-W", "2", V4_PEER])?;
        check(got == sent, || {
            format!("{workers} workers: {got}/{sent} replies")
        })?;
        std::thread::sleep(Duration::from_millis(50));
        // Before the fix this stop never returned (main.rs's watchdog fails the test then).
        engine.stop()?;
        conserved(&engine.stats())?;
        check(fd_flags(fd) & libc::O_NONBLOCK == 0, || {
            "the engine set the host's O_NONBLOCK behind its back".into()
        })?;
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<(), Failed> {
    let status = Command::new("ip").args(args).status()?;
    check(status.success(), || format!("ip {args:?} failed"))
}

fn renamed_interface() -> Result<(), Failed> {
    let host = host_tun("tpf1")?;
    let fd = host.as_raw_fd();
    let first = TunDevice::adopt(fd)?;
    let running = Engine::builder().config(config(0)).start(&first)?;
    ip(&["link", "set", "tpf1", "down"])?;
    ip(&["link", "set", "tpf1", "name", "tpf1b"])?;
    // The same TUN under a new name: a second engine on it must still be refused.
    let second = TunDevice::adopt(fd)?;
    match Engine::builder().config(config(0)).start(&second) {
        Err(EngineError::Device(e)) if e.kind() == std::io::ErrorKind::ResourceBusy => {}
        Err(e) => return Err(format!("refused, but not as busy: {e}").into()),
        Ok(_) => return Err("a second engine ran on a renamed TUN".into()),
    }
    running.stop()?;
    // Once the first run is over, the TUN is free again, under its new name.
    let again = Engine::builder().config(config(0)).start(&second)?;
    again.stop()?;
    Ok(())
}

fn same_name_other_namespace() -> Result<(), Failed> {
    let here = TunDevice::new(host_tun("tpf2")?);
    let (there, _runner) = tun_in_other_netns("tpf2", "10.54.0.1")?;
    let there = TunDevice::new(there);
    let a = Engine::builder().config(config(0)).start(&here)?;
    // A different TUN that happens to have the same name, in another namespace.
    let b = Engine::builder().config(config(0)).start(&there)?;
    a.stop()?;
    b.stop()?;
    Ok(())
}

fn odd_kinds_refused() -> Result<(), Failed> {
    use tunpipe_testkit::tun::open_raw;
    let tun_pi = libc::IFF_TUN | libc::IFF_NO_PI;
    let cases = [
        ("tpk0", libc::IFF_TAP | libc::IFF_NO_PI, libc::O_RDWR, "TAP"),
        ("tpk1", libc::IFF_TUN, libc::O_RDWR, "packet information"),
        (
            "tpk2",
            tun_pi | libc::IFF_VNET_HDR,
            libc::O_RDWR,
            "virtio-net",
        ),
        ("tpk3", tun_pi, libc::O_RDONLY, "reading and writing"),
    ];
    for (name, flags, access, why) in cases {
        let fd = open_raw(name, flags, access)?;
        match TunDevice::adopt(fd.as_raw_fd()) {
            Ok(_) => return Err(format!("{name} ({why}) was adopted").into()),
            Err(e) => check(
                e.kind() == std::io::ErrorKind::InvalidInput && e.to_string().contains(why),
                || format!("{name}: the error should say {why:?}: {e}"),
            )?,
        }
    }
    // The kind the engine runs on, opened the same way, is adopted.
    let fd = open_raw("tpk4", tun_pi, libc::O_RDWR)?;
    TunDevice::adopt(fd.as_raw_fd())?;
    Ok(())
}

fn stopped_engine_holds_no_descriptors() -> Result<(), Failed> {
    let host = host_tun("tpf3")?;
    let before = open_fds();
    let device = TunDevice::adopt(host.as_raw_fd())?;
    let engine = Engine::builder().config(config(1)).start(&device)?;
    engine.stop()?;
    drop(device);
    // The engine is kept, as a host keeps the last session for its figures.
    let after = open_fds();
    check(after == before, || {
        format!("{before} fds before the run, {after} after it with the engine kept")
    })?;
    drop(engine);
    Ok(())
}
