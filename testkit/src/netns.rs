//! Network namespaces (Linux): each real-TUN test runs in a fresh one, so that interface
//! names, addresses and the kernel's own traffic never collide between tests, and nothing
//! leaks into the host's network.

use crate::thread::on_thread;
use std::io;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// Moves the calling thread into a new, empty network namespace (`unshare(CLONE_NEWNET)`).
/// Threads it starts afterwards, and the processes they spawn, inherit it.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare takes flags only; it moves the calling thread into a new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a fresh namespace does with IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6 {
    /// The kernel's defaults.
    AsIs,
    /// On, with duplicate address detection off, so that addresses are usable at once.
    NoDad,
    /// Off, so that the kernel sends nothing through a TUN but what the test sends (no router
    /// solicitations, no MLD reports) and packet counts can be compared exactly.
    Off,
}

/// Moves the calling thread into a fresh network namespace, with IPv6 set up as `ipv6` asks.
pub fn enter_fresh_netns(ipv6: Ipv6) -> Result<(), String> {
    unshare_net().map_err(|e| format!("unshare: {e}"))?;
    let (key, value) = match ipv6 {
        Ipv6::AsIs => return Ok(()),
        Ipv6::NoDad => ("accept_dad", "0"),
        Ipv6::Off => ("disable_ipv6", "1"),
    };
    for conf in ["default", "all"] {
        let path = format!("/proc/sys/net/ipv6/conf/{conf}/{key}");
        std::fs::write(&path, value).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// Runs `test` on a thread of its own inside a fresh network namespace (see
/// [`enter_fresh_netns`]); a panic becomes an error.
pub fn in_fresh_netns<E>(ipv6: Ipv6, test: fn() -> Result<(), E>) -> Result<(), E>
where
    E: From<String> + Send + 'static,
{
    on_thread("fresh-netns", None, move || {
        enter_fresh_netns(ipv6)?;
        test()
    })
}

/// Whether this thread's network namespace has an interface `name` (/sys/class/net shows the
/// namespace sysfs was mounted in, not ours; `if_nametoindex` asks a socket in ours).
pub fn interface_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// A command to spawn, and where to send the spawned child.
type SpawnRequest = (Vec<String>, mpsc::Sender<io::Result<Child>>);

/// Spawns processes inside a second network namespace: a thread that lives there serves
/// the requests, until this handle is dropped.
#[derive(Debug)]
pub struct NetnsRunner(mpsc::Sender<SpawnRequest>);

impl NetnsRunner {
    /// Spawns `argv` in the other namespace, its stdout and stderr discarded.
    pub fn spawn(&self, argv: &[&str]) -> io::Result<Child> {
        let (tx, rx) = mpsc::channel();
        self.0
            .send((argv.iter().map(|s| s.to_string()).collect(), tx))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

fn gone() -> io::Error {
    io::Error::other("the netns thread is gone")
}

/// Creates a TUN `name` with `ipv4`/24 in a second, fresh namespace (on a thread of its own)
/// and returns it with a runner for commands in that namespace. The fd works from any
/// namespace: that is what lets a bridge of two engines join the two.
pub fn tun_in_other_netns(
    name: &'static str,
    ipv4: &'static str,
) -> Result<(tun_rs::SyncDevice, NetnsRunner), String> {
    let (dev_tx, dev_rx) = mpsc::channel();
    let (cmd_tx, cmd_rx) = mpsc::channel::<SpawnRequest>();
    std::thread::spawn(move || {
        let made = unshare_net()
            .map_err(|e| format!("unshare: {e}"))
            .and_then(|()| crate::tun::tun(name, ipv4));
        let _ = dev_tx.send(made);
        // Serve spawns until the runner is dropped.
        for (argv, reply) in cmd_rx {
            let child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let _ = reply.send(child);
        }
    });
    let dev = dev_rx.recv().map_err(|e| format!("netns thread: {e}"))??;
    Ok((dev, NetnsRunner(cmd_tx)))
}

/// Whether `iperf3` is installed.
pub fn iperf3_installed() -> bool {
    Command::new("iperf3").arg("--version").output().is_ok()
}

/// Real TCP across a bridge: an `iperf3` server in the other namespace, bound to `server`,
/// and a client here for `secs` seconds (retried while the server comes up, up to 5 s).
/// Returns the client's JSON report.
pub fn iperf3_across(other: &NetnsRunner, server: &str, secs: u32) -> Result<String, String> {
    let mut daemon = other
        .spawn(&["iperf3", "-s", "-1", "-B", server])
        .map_err(|e| format!("iperf3 server: {e}"))?;
    let mut report = Err(format!("iperf3 never connected to {server}"));
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let out = Command::new("iperf3")
            .args(["-c", server, "-t", &secs.to_string(), "-J"])
            .output();
        match out {
            Ok(out) if out.status.success() => {
                report = Ok(String::from_utf8_lossy(&out.stdout).into_owned());
                break;
            }
            Ok(_) => {}
            Err(e) => {
                report = Err(format!("iperf3 client: {e}"));
                break;
            }
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    report
}
