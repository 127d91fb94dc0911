//! `tunpipe-wg IFNAME`: tunpipe as wg-quick's userspace WireGuard.
//!
//! wg-quick, finding no WireGuard in the kernel, runs `$WG_QUICK_USERSPACE_IMPLEMENTATION
//! IFNAME` and expects it to create the interface and its configuration socket
//! (`/var/run/wireguard/IFNAME.sock`) and return, leaving a daemon behind, as wireguard-go
//! does; then it configures the interface with `wg setconf` and `ip`. So this starts
//! `tunpipe wg --name IFNAME` (the `tunpipe` beside this program) in its own process group,
//! away from the terminal, waits until the socket answers, and exits: 0 once it does, 1 if
//! the daemon failed first (with its reason). The daemon stops on SIGINT or SIGTERM, when the
//! interface is deleted (`wg-quick down` on Linux), or when its socket file is removed
//! (`wg-quick down` on macOS).
//!
//! ```text
//! sudo WG_QUICK_USERSPACE_IMPLEMENTATION=tunpipe-wg wg-quick up ./wg0.conf
//! ```
//!
//! `-f` or `--foreground` before the name (or `WG_PROCESS_FOREGROUND=1`) runs the daemon in
//! the foreground instead, as wireguard-go's. The daemon's output goes to the file `TUNPIPE_WG_LOG` names, if set,
//! and is discarded otherwise (a daemon has no terminal).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long the daemon may take to answer on its socket.
const READY_WAIT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: tunpipe-wg [-f|--foreground] IFNAME";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (foreground, name) = match args.as_slice() {
        [name] if !name.starts_with('-') => (false, name),
        [flag, name] if flag == "-f" || flag == "--foreground" => (true, name),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // wireguard-go's way to ask for the foreground from wg-quick, which passes only the name.
    let foreground =
        foreground || std::env::var_os("WG_PROCESS_FOREGROUND").is_some_and(|v| v == "1");
    match run(foreground, name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunpipe-wg: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(foreground: bool, name: &str) -> Result<(), String> {
    let tunpipe = std::env::current_exe()
        .map_err(|e| format!("cannot find this program's directory: {e}"))?
        .with_file_name("tunpipe");
    let mut command = Command::new(&tunpipe);
    command.args(["wg", "--name", name]);
    if foreground {
        let status = command
            .status()
            .map_err(|e| format!("{}: {e}", tunpipe.display()))?;
        return status
            .success()
            .then_some(())
            .ok_or_else(|| format!("tunpipe wg ended: {status}"));
    }
    let (stdout, stderr) = match std::env::var_os("TUNPIPE_WG_LOG") {
        Some(path) => {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("TUNPIPE_WG_LOG {}: {e}", path.to_string_lossy()))?;
            let copy = log.try_clone().map_err(|e| e.to_string())?;
            (Stdio::from(log), Stdio::from(copy))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    // Its own process group: a Ctrl-C at wg-quick's terminal is not for the daemon.
    use std::os::unix::process::CommandExt as _;
    let mut daemon = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{}: {e}", tunpipe.display()))?;
    let socket = PathBuf::from("/var/run/wireguard").join(format!("{name}.sock"));
    let until = Instant::now() + READY_WAIT;
    loop {
        if let Ok(Some(status)) = daemon.try_wait() {
            return Err(format!(
                "tunpipe wg --name {name} ended at start ({status}); run it with -f to see why"
            ));
        }
        if answers(&socket) {
            return Ok(());
        }
        if Instant::now() > until {
            let _ = daemon.kill();
            let _ = daemon.wait();
            return Err(format!(
                "{} did not answer within {} s",
                socket.display(),
                READY_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the configuration socket answers a `get`.
fn answers(socket: &std::path::Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"get=1\n\n").is_err() {
        return false;
    }
    // The answer (which holds the private key: it goes nowhere) ends with its status and an
    // empty line; the connection stays open for another operation.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        answer.extend_from_slice(&chunk[..n]);
        if answer.ends_with(b"\n\n") {
            break;
        }
    }
    answer.ends_with(b"errno=0\n\n")
}
