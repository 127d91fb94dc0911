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

/// A file of `/etc` as this thread sees it, in a mount namespace of its own: what `ip netns
/// exec NAME` does with `/etc/netns/NAME/FILE`. The thread, and the threads it starts after
/// (an engine's, a resolver's), read [`EtcFile::write`]'s text there; the rest of the process
/// sees the real file.
#[derive(Debug)]
pub struct EtcFile {
    /// The file mounted over the real one, rewritten in place (the mount follows the inode,
    /// not the name).
    backing: std::path::PathBuf,
}

impl EtcFile {
    /// Mounts a file holding `text` over `target` (`/etc/hosts`, `/etc/resolv.conf`) for this
    /// thread: it moves into a new mount namespace first (`unshare(CLONE_NEWNS)` and mounts
    /// made private, so that nothing leaks to the host's).
    pub fn mount(target: &str, text: &str) -> Result<EtcFile, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let backing = std::env::temp_dir().join(format!(
            "tunpipe-etc-{}-{n}-{}",
            std::process::id(),
            target.rsplit('/').next().unwrap_or("file")
        ));
        std::fs::write(&backing, text).map_err(|e| format!("{}: {e}", backing.display()))?;
        // SAFETY: unshare takes flags only; it moves this thread into a new mount namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNS): {}",
                io::Error::last_os_error()
            ));
        }
        let c = |s: &str| std::ffi::CString::new(s).map_err(|e| e.to_string());
        let (none, root) = (c("none")?, c("/")?);
        let (from, to) = (c(&backing.to_string_lossy())?, c(target)?);
        // SAFETY: NUL-terminated strings alive through each call; null data and type.
        let private = unsafe {
            libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if private != 0 {
            return Err(format!("make / private: {}", io::Error::last_os_error()));
        }
        // SAFETY: as above.
        let bound = unsafe {
            libc::mount(
                from.as_ptr(),
                to.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if bound != 0 {
            return Err(format!(
                "bind over {target}: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(EtcFile { backing })
    }

    /// Rewrites the file in place: this thread (and its children) read `text` from now on.
    pub fn write(&self, text: &str) -> Result<(), String> {
        std::fs::write(&self.backing, text).map_err(|e| format!("{}: {e}", self.backing.display()))
    }
}

impl Drop for EtcFile {
    fn drop(&mut self) {
        // The mount keeps the inode while the namespace lives; the name can go now.
        let _ = std::fs::remove_file(&self.backing);
    }
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

/// Work for the namespace's thread.
type Job = Box<dyn FnOnce() + Send>;

/// A second network namespace, alive as long as this handle: a thread that lives there runs
/// the work it is given (processes it spawns, sockets it makes, are in that namespace).
#[derive(Debug)]
pub struct NetnsRunner {
    jobs: mpsc::Sender<Job>,
    /// A path that names the namespace (for `ip link ... netns PATH`).
    path: String,
}

impl NetnsRunner {
    /// A fresh, empty namespace, made by a thread of its own.
    pub fn fresh() -> Result<NetnsRunner, String> {
        Self::fresh_with(|| Ok(())).map(|(runner, ())| runner)
    }

    /// A fresh namespace in which `setup` runs first; its result comes back with the runner.
    pub fn fresh_with<T: Send + 'static>(
        setup: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<(NetnsRunner, T), String> {
        let (made_tx, made_rx) = mpsc::channel();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            let made = unshare_net()
                .map_err(|e| format!("unshare: {e}"))
                .and_then(|()| {
                    // SAFETY: gettid takes no arguments and cannot fail.
                    let tid = unsafe { libc::gettid() };
                    let path = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
                    setup().map(|value| (path, value))
                });
            let _ = made_tx.send(made);
            // Serve jobs until the runner is dropped.
            for job in job_rx {
                job();
            }
        });
        let (path, value) = made_rx.recv().map_err(|e| format!("netns thread: {e}"))??;
        Ok((NetnsRunner { jobs, path }, value))
    }

    /// Runs `job` in the namespace and returns what it returns.
    pub fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(job());
            }))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())
    }

    /// Spawns `argv` in the namespace, its stdout and stderr discarded.
    pub fn spawn(&self, argv: &[&str]) -> io::Result<Child> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        self.run(move || {
            Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })?
    }

    /// Runs `argv` in the namespace to its end, with `stdin` as its input; its stdout, or an
    /// error with its stderr.
    pub fn output(&self, argv: &[&str], stdin: &str) -> Result<String, String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let stdin = stdin.to_string();
        self.run(move || crate::netns::output_of(&argv, &stdin))
            .map_err(|e| e.to_string())?
    }

    /// The path that names the namespace.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Runs `argv` to its end in this thread's namespace, with `stdin` as its input; its stdout,
/// or an error that names the command and carries its stderr.
pub fn output_of(argv: &[String], stdin: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(|e| format!("{}: stdin: {e}", argv[0]))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// [`output_of`] for a command given as words, with no input.
pub fn run_here(argv: &[&str]) -> Result<String, String> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    output_of(&argv, "")
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
    let (runner, dev) = NetnsRunner::fresh_with(move || crate::tun::tun(name, ipv4))?;
    Ok((dev, runner))
}

/// As [`tun_in_other_netns`], with offload ([`crate::tun::tun_offload`]).
pub fn tun_offload_in_other_netns(
    name: &'static str,
    ipv4: &'static str,
) -> Result<(tun_rs::SyncDevice, NetnsRunner), String> {
    let (runner, dev) = NetnsRunner::fresh_with(move || crate::tun::tun_offload(name, ipv4))?;
    Ok((dev, runner))
}

/// Sends `bytes` of a deterministic pseudo-random stream over TCP to a listener in `other` at
/// `server:port`, which answers with what it received; returns that (to compare with what
/// was sent), or an error.
pub fn tcp_round_trip(
    other: &NetnsRunner,
    server: &str,
    port: u16,
    bytes: usize,
) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{server}:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    // The listener lives on a thread in the other namespace (threads inherit it).
    let (ready_tx, ready_rx) = mpsc::channel();
    other
        .run(move || {
            std::thread::spawn(move || {
                let listener = match std::net::TcpListener::bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                if let Ok((mut stream, _)) = listener.accept() {
                    let mut received = Vec::new();
                    if stream.read_to_end(&mut received).is_ok() {
                        let _ = stream.write_all(&received);
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| format!("listener: {e}"))??;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
            .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let data = pseudo_random(bytes);
    // Sending and reading at once: the echo flows while the data does.
    let reader = {
        let mut stream = stream.try_clone().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let mut back = Vec::new();
            stream.read_to_end(&mut back).map(|_| back)
        })
    };
    stream.write_all(&data).map_err(|e| format!("send: {e}"))?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    reader
        .join()
        .map_err(|_| "the reader panicked".to_string())?
        .map_err(|e| format!("receive: {e}"))
}

/// `n` bytes of a fixed pseudo-random sequence (xorshift): what [`tcp_round_trip`] sends.
pub fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Whether `iperf3` is installed.
pub fn iperf3_installed() -> bool {
    Command::new("iperf3").arg("--version").output().is_ok()
}

/// Real TCP across a bridge: an `iperf3` server in the other namespace, bound to `server`,
/// and a client here for `secs` seconds (retried while the server comes up, up to 5 s).
/// Returns the client's JSON report.
pub fn iperf3_across(other: &NetnsRunner, server: &str, secs: u32) -> Result<String, String> {
    iperf3(other, server, secs, false)
}

/// As [`iperf3_across`]; with `reverse`, the server sends and the client here receives
/// (`iperf3 -R`).
pub fn iperf3(
    other: &NetnsRunner,
    server: &str,
    secs: u32,
    reverse: bool,
) -> Result<String, String> {
    iperf3_with(other, server, secs, if reverse { &["-R"] } else { &[] })
}

/// As [`iperf3_across`], with more client flags (`-R`, `-u -l 100 -b 0`, ...).
pub fn iperf3_with(
    other: &NetnsRunner,
    server: &str,
    secs: u32,
    flags: &[&str],
) -> Result<String, String> {
    let mut daemon = other
        .spawn(&["iperf3", "-s", "-1", "-B", server])
        .map_err(|e| format!("iperf3 server: {e}"))?;
    let mut report = Err(format!("iperf3 never connected to {server}"));
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let out = Command::new("iperf3")
            .args(["-c", server, "-t", &secs.to_string(), "-J"])
            .args(flags)
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

/// What an iperf3 TCP run moved, from its JSON report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf3Result {
    /// Bytes the receiver got.
    pub bytes: u64,
    /// The receiver's rate, bits per second.
    pub bits_per_second: f64,
    /// TCP retransmits at the sender.
    pub retransmits: u64,
}

/// Reads an iperf3 `-J` report.
pub fn iperf3_result(report: &str) -> Result<Iperf3Result, String> {
    let json: serde_json::Value =
        serde_json::from_str(report).map_err(|e| format!("iperf3 report: {e}"))?;
    let end = &json["end"];
    let received = &end["sum_received"];
    Ok(Iperf3Result {
        bytes: received["bytes"]
            .as_u64()
            .ok_or("no sum_received.bytes in the iperf3 report")?,
        bits_per_second: received["bits_per_second"]
            .as_f64()
            .ok_or("no sum_received.bits_per_second in the iperf3 report")?,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}
