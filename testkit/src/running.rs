//! A command that runs until SIGINT (`tunpipe run`, `tunpipe wg`): started, waited for until
//! it says it is ready, interrupted, and its output and exit collected. Tests and benches of
//! the CLI share it.

use crate::check::check;
use libtest_mimic::Failed;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the child if a check fails half-way, so no command outlives its test.
#[derive(Debug)]
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A command that runs until SIGINT, its output collected as it comes.
#[derive(Debug)]
pub struct Running {
    child: Reap,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    reader: std::thread::JoinHandle<()>,
    stderr: std::thread::JoinHandle<String>,
}

/// How a [`Running`] command ended after SIGINT.
#[derive(Debug)]
pub struct Ended {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// From SIGINT to the exit, as seen from here (polled every 5 ms).
    pub exit_after: Duration,
}

impl Running {
    /// Spawns `command` and waits (up to 30 s) for a line of its stdout that contains
    /// `ready`.
    pub fn start(command: &mut Command, ready: &str) -> Result<Running, Failed> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut child = Reap(child);
        let (lines_tx, lines) = mpsc::channel::<String>();
        let stdout = child.0.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut stderr = child.0.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut running = Running {
            child,
            lines,
            seen: Vec::new(),
            reader,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match running.lines.recv_timeout(left) {
                Ok(line) => {
                    let is_ready = line.contains(ready);
                    running.seen.push(line);
                    if is_ready {
                        return Ok(running);
                    }
                }
                Err(_) => {
                    let _ = running.child.0.kill();
                    let stderr = running.stderr.join().unwrap_or_default();
                    return Err(
                        format!("tunpipe never became ready: {:?} {stderr}", running.seen).into(),
                    );
                }
            }
        }
    }

    /// The lines it printed so far (the banner among them).
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// The command's process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Sends SIGINT and collects everything the command printed, up to its exit (30 s at
    /// most: a bound on a hang, not a timing assertion).
    pub fn interrupt(mut self) -> Result<Ended, Failed> {
        let pid = self.pid();
        let at = Instant::now();
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        check(rc == 0, || "kill(SIGINT) failed".to_string())?;
        let status = loop {
            if let Some(status) = self.child.0.try_wait()? {
                break status;
            }
            if at.elapsed() > Duration::from_secs(30) {
                return Err("tunpipe did not exit after SIGINT".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let exit_after = at.elapsed();
        let _ = self.reader.join();
        self.seen.extend(self.lines.try_iter());
        Ok(Ended {
            status,
            stdout: self.seen.join("\n"),
            stderr: self.stderr.join().unwrap_or_default(),
            exit_after,
        })
    }
}

impl Ended {
    /// Fails unless the command exited 0 with every one of `needles` in its stdout.
    pub fn succeeded_saying(&self, needles: &[&str]) -> Result<(), Failed> {
        let Ended {
            status,
            stdout,
            stderr,
            ..
        } = self;
        check(status.success(), || {
            format!("exit status {status}:\n{stdout}\n{stderr}")
        })?;
        for needle in needles {
            check(stdout.contains(needle), || {
                format!("output should contain {needle:?}:\n{stdout}")
            })?;
        }
        Ok(())
    }
}
