//! The `paced` section: what a datagram costs at the rates a phone runs, on a plain TUN. An
//! open-loop sender in this process paces 64-byte UDP datagrams at 200, 2,000 and 20,000 a
//! second into the TUN, to the contender, which reflects them; a receiver here counts the
//! replies. The contender is the seed loop (`guide-sync`, the tun-rs guide's one-thread
//! blocking loop) or tunpipe at `Config::default()`, each reflecting.
//!
//! Each contender runs in a child process of its own (this bench binary started again, with
//! [`CHILD`] naming it), so that its whole process's on-CPU time and context switches
//! (`getrusage(RUSAGE_SELF)`: every thread it ran, those that exited included) are its own and
//! none of the load's. Over `paced_measure` of steady load, after `paced_warmup`, they are
//! divided by the datagrams the sender sent, never by a contender's counters. Wake-ups are
//! voluntary context switches; involuntary ones (preemptions) stand beside them. Contenders
//! alternate round by round; the median of the rounds counts.

use crate::contenders::{start, Contender, Work};
use crate::matrix::if_drops;
use crate::Timing;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Lines, Write};
use std::net::UdpSocket;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tunpipe::Config;
use tunpipe_testkit::load::client_socket;
use tunpipe_testkit::proc::{own_usage, ThreadCpu};
use tunpipe_testkit::report::{print_table, thousands};

/// The environment variable that makes this binary a `paced` contender: the contender's name.
pub const CHILD: &str = "TUNPIPE_BENCH_PACED_CHILD";

/// The TUN the child makes.
const IFNAME: &str = "tppaced";

/// Datagrams per second.
const RATES: [u64; 3] = [200, 2_000, 20_000];

/// UDP payload: 64 bytes, the first 8 of them the datagram's sequence number.
const PAYLOAD: usize = 64;

/// How long the receiver waits for the last replies after the sender stops.
const DRAIN: Duration = Duration::from_millis(200);

/// Targets for tunpipe: CPU per datagram at most this times the seed loop's (the aim: 1.0×).
const CPU_TARGET: f64 = 1.2;
/// ... and at most this many wake-ups per datagram.
const WAKEUP_TARGET: f64 = 1.1;

/// The seed loop first (the ratios' base), then tunpipe at its shipped defaults.
fn contenders() -> [Contender; 2] {
    [
        Contender::GuideSync,
        Contender::Tunpipe(Config::default().workers),
    ]
}

/// The contender this process is to serve, when it was started as one (see [`serve`]).
pub fn child_contender() -> Option<Contender> {
    let name = std::env::var(CHILD).ok()?;
    contenders().into_iter().find(|c| c.name() == name)
}

/// The child's side: starts `contender` on a fresh TUN, says `ready`, answers each `usage`
/// line on stdin with this process's CPU time and context switches, and at the end of stdin
/// stops the contender and says what it dropped.
pub fn serve(contender: Contender) {
    let running = match start(contender, Work::Reflect, IFNAME) {
        Ok(r) => r,
        Err(e) => {
            println!("error {e}");
            return;
        }
    };
    println!("ready");
    for line in std::io::stdin().lines().map_while(Result::ok) {
        if line == "usage" {
            let u = own_usage();
            println!("usage {} {} {}", u.cpu_ns, u.voluntary, u.involuntary);
        }
    }
    println!("stopped {}", running.stop().drops);
}

/// A contender in its child process.
struct Child {
    process: std::process::Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Child {
    /// Starts `contender` in a child process (in this thread's network namespace, which it
    /// inherits) and waits until it is ready.
    fn spawn(contender: Contender) -> Result<Child, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut process = Command::new(exe)
            .env(CHILD, contender.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn the {} child: {e}", contender.name()))?;
        let stdin = process.stdin.take().expect("piped");
        let lines = BufReader::new(process.stdout.take().expect("piped")).lines();
        let mut child = Child {
            process,
            stdin,
            lines,
        };
        match child.line()?.as_str() {
            "ready" => Ok(child),
            other => Err(format!("{}: {other}", contender.name())),
        }
    }

    fn line(&mut self) -> Result<String, String> {
        match self.lines.next() {
            Some(Ok(line)) => Ok(line),
            Some(Err(e)) => Err(format!("reading the child: {e}")),
            None => Err("the child exited".into()),
        }
    }

    /// The child's whole process's CPU time and context switches so far.
    fn usage(&mut self) -> Result<ThreadCpu, String> {
        writeln!(self.stdin, "usage").map_err(|e| format!("asking the child: {e}"))?;
        let line = self.line()?;
        let n: Vec<u64> = line
            .strip_prefix("usage ")
            .map(|rest| rest.split(' ').filter_map(|v| v.parse().ok()).collect())
            .unwrap_or_default();
        match n.as_slice() {
            &[cpu_ns, voluntary, involuntary] => Ok(ThreadCpu {
                threads: 0,
                cpu_ns,
                voluntary,
                involuntary,
            }),
            _ => Err(format!("the child said {line:?}")),
        }
    }

    /// Stops the contender and its process; what the contender itself dropped.
    fn stop(mut self) -> Result<u64, String> {
        drop(self.stdin);
        let line = match self.lines.next() {
            Some(Ok(line)) => line,
            _ => String::new(),
        };
        let status = self.process.wait().map_err(|e| e.to_string())?;
        line.strip_prefix("stopped ")
            .and_then(|n| n.parse().ok())
            .filter(|_| status.success())
            .ok_or_else(|| format!("the child ended with {status}, saying {line:?}"))
    }
}

/// What the sender has done so far.
#[derive(Default)]
struct Sender {
    /// Datagrams it tried to send (the next sequence number).
    tried: AtomicU64,
    /// Sends that failed.
    errors: AtomicU64,
    /// Datagrams that went more than half an interval after their time.
    late: AtomicU64,
}

/// A reading of the sender's counters.
#[derive(Clone, Copy)]
struct Sent {
    tried: u64,
    errors: u64,
    late: u64,
}

impl Sender {
    fn read(&self) -> Sent {
        Sent {
            tried: self.tried.load(Ordering::Acquire),
            errors: self.errors.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
        }
    }

    /// Sends a datagram every `interval`, each at its time on a schedule fixed from the start
    /// (a late one does not delay the rest, so the rate does not drift), until `sending` is
    /// cleared.
    fn run(&self, socket: &UdpSocket, interval: Duration, sending: &AtomicBool) {
        // The default timer slack (50 µs) would make every sleep up to 50 µs late: a whole
        // interval at 20,000 a second.
        #[cfg(target_os = "linux")]
        // SAFETY: PR_SET_TIMERSLACK takes a number and sets the calling thread's slack only.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        }
        let interval_ns = interval.as_nanos() as u64;
        let mut datagram = [0u8; PAYLOAD];
        let start = Instant::now();
        let mut seq = 0u64;
        while sending.load(Ordering::Relaxed) {
            let due = start + Duration::from_nanos(interval_ns * seq);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if Instant::now().saturating_duration_since(due) > interval / 2 {
                self.late.fetch_add(1, Ordering::Relaxed);
            }
            datagram[..8].copy_from_slice(&seq.to_le_bytes());
            if socket.send(&datagram).is_err() {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            seq += 1;
            self.tried.store(seq, Ordering::Release);
        }
    }
}

/// Reads replies until `receiving` is cleared; their sequence numbers.
fn receive(socket: &UdpSocket, receiving: &AtomicBool) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut buf = [0u8; 2048];
    while receiving.load(Ordering::Relaxed) {
        if let Ok(n) = socket.recv(&mut buf) {
            if n >= 8 {
                seqs.push(u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")));
            }
        }
    }
    seqs
}

/// Waits (up to 5 s) until the contender reflects a probe.
fn answered(socket: &UdpSocket) -> Result<(), String> {
    let probe = u64::MAX.to_le_bytes();
    let mut buf = [0u8; 2048];
    for _ in 0..50 {
        let _ = socket.send(&probe);
        if socket.recv(&mut buf).is_ok() {
            return Ok(());
        }
    }
    Err("no reply to a probe in 5 s".into())
}

/// One contender at one rate, over one measurement.
#[derive(Clone, Copy, Debug)]
struct Cost {
    /// Datagrams the sender sent in the measured part.
    sent: u64,
    /// Replies to them.
    replies: u64,
    send_errors: u64,
    /// Sent more than half an interval after their time.
    late: u64,
    secs: f64,
    /// The child's whole process's on-CPU time per datagram sent, µs.
    cpu_us: f64,
    /// Its voluntary context switches (wake-ups) per datagram sent.
    wakeups: f64,
    /// Its involuntary ones (preemptions) per datagram sent.
    preempted: f64,
    /// The TUN's kernel drops in the measured part: toward user space, and of what user space
    /// wrote.
    kernel_drops: (u64, u64),
}

impl Cost {
    fn replies_per_sent(&self) -> f64 {
        self.replies as f64 / self.sent.max(1) as f64
    }

    /// The share of datagrams sent more than half an interval after their time (at the
    /// highest rate these go in small bursts as the schedule catches up).
    fn late_per_sent(&self) -> f64 {
        self.late as f64 / self.sent.max(1) as f64
    }
}

fn measure(child: &mut Child, rate: u64, t: &Timing) -> Result<Cost, String> {
    let socket = client_socket().map_err(|e| format!("client socket: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    answered(&socket)?;
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let sender = Sender::default();
    let (sending, receiving) = (AtomicBool::new(true), AtomicBool::new(true));
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let mark = |child: &mut Child| -> Result<_, String> {
        let sent = sender.read();
        Ok((sent, child.usage()?, if_drops(IFNAME), Instant::now()))
    };
    let (marks, seqs) = std::thread::scope(|s| {
        let receiver = s.spawn(|| receive(&socket, &receiving));
        let paced = s.spawn(|| sender.run(&socket, interval, &sending));
        std::thread::sleep(t.paced_warmup);
        let marks = mark(child).and_then(|a| {
            std::thread::sleep(t.paced_measure);
            Ok((a, mark(child)?))
        });
        sending.store(false, Ordering::Relaxed);
        let _ = paced.join();
        std::thread::sleep(DRAIN);
        receiving.store(false, Ordering::Relaxed);
        (marks, receiver.join().unwrap_or_default())
    });
    let (a, b) = marks?;
    let window = a.0.tried..b.0.tried;
    let send_errors = b.0.errors - a.0.errors;
    let sent = window.end - window.start - send_errors;
    if sent == 0 {
        return Err("nothing was sent".into());
    }
    let used = b.1.since(&a.1);
    let per = |x: u64| x as f64 / sent as f64;
    Ok(Cost {
        sent,
        replies: seqs.iter().filter(|s| window.contains(s)).count() as u64,
        send_errors,
        late: b.0.late - a.0.late,
        secs: (b.3 - a.3).as_secs_f64(),
        cpu_us: per(used.cpu_ns) / 1e3,
        wakeups: per(used.voluntary),
        preempted: per(used.involuntary),
        kernel_drops: (b.2 .0 - a.2 .0, b.2 .1 - a.2 .1),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn paced_section(t: &Timing) -> Value {
    paced(t).unwrap_or_else(|e| {
        println!("paced: {e}");
        json!({ "error": e })
    })
}

fn paced(t: &Timing) -> Result<Value, String> {
    let contenders = contenders();
    let rounds = t.paced_rounds;
    // costs[contender][rate][round], and what each contender dropped itself, per round.
    let mut costs = vec![vec![Vec::<Cost>::new(); RATES.len()]; contenders.len()];
    let mut own_drops = vec![Vec::new(); contenders.len()];
    let started = Instant::now();
    for round in 0..rounds {
        for k in 0..contenders.len() {
            let ci = (k + round) % contenders.len();
            let c = contenders[ci];
            let mut child = Child::spawn(c)?;
            for (ri, &rate) in RATES.iter().enumerate() {
                let cost = measure(&mut child, rate, t)
                    .map_err(|e| format!("{} {rate}/s: {e}", c.name()))?;
                println!(
                    "round {round} {:>10} {:>6}/s: {:>7} datagrams ({} late, {} send errors), \
                     {:>6.2} µs CPU, {:.2} wake-ups and {:.2} preemptions per datagram, \
                     {:.4} replies per datagram",
                    c.name(),
                    thousands(rate as f64),
                    cost.sent,
                    cost.late,
                    cost.send_errors,
                    cost.cpu_us,
                    cost.wakeups,
                    cost.preempted,
                    cost.replies_per_sent(),
                );
                costs[ci][ri].push(cost);
            }
            own_drops[ci].push(child.stop()?);
        }
    }
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    for (ri, &rate) in RATES.iter().enumerate() {
        let col = |ci: usize, f: fn(&Cost) -> f64| median(costs[ci][ri].iter().map(f).collect());
        let seed_cpu = col(0, |c| c.cpu_us);
        for (ci, c) in contenders.iter().enumerate() {
            let cpu = col(ci, |c| c.cpu_us);
            let wakeups = col(ci, |c| c.wakeups);
            let ratio = cpu / seed_cpu;
            let is_seed = *c == Contender::GuideSync;
            let (cpu_met, wakeups_met) = (ratio <= CPU_TARGET, wakeups <= WAKEUP_TARGET);
            let verdict = |met: bool| if met { "met" } else { "**missed**" };
            rows.push(vec![
                thousands(rate as f64),
                c.name(),
                format!("{cpu:.2}"),
                format!("{ratio:.2}×"),
                format!("{wakeups:.2}"),
                format!("{:.2}", col(ci, |c| c.preempted)),
                format!("{:.4}", col(ci, Cost::replies_per_sent)),
                format!("{:.1} %", 100.0 * col(ci, Cost::late_per_sent)),
                if is_seed {
                    "the base".into()
                } else {
                    format!(
                        "CPU ≤ {CPU_TARGET}×: {}; wake-ups ≤ {WAKEUP_TARGET}: {}",
                        verdict(cpu_met),
                        verdict(wakeups_met)
                    )
                },
            ]);
            cells.push(json!({
                "rate": rate,
                "contender": c.name(),
                "cpu_us_per_datagram": cpu,
                "ratio_to_seed_loop": ratio,
                "wakeups_per_datagram": wakeups,
                "preempted_per_datagram": col(ci, |c| c.preempted),
                "replies_per_sent": col(ci, Cost::replies_per_sent),
                "sent_late_share": col(ci, Cost::late_per_sent),
                "cpu_target_met": (!is_seed).then_some(cpu_met),
                "wakeups_target_met": (!is_seed).then_some(wakeups_met),
                "rounds": costs[ci][ri].iter().map(|c| json!({
                    "sent": c.sent, "replies": c.replies, "send_errors": c.send_errors,
                    "late": c.late, "seconds": c.secs, "cpu_us": c.cpu_us,
                    "wakeups": c.wakeups, "preempted": c.preempted,
                    "kernel_tun_tx_dropped": c.kernel_drops.0,
                    "kernel_tun_rx_dropped": c.kernel_drops.1,
                })).collect::<Vec<_>>(),
                "contender_drops_per_round": own_drops[ci],
            }));
        }
    }
    print_table(
        &format!(
            "Paced UDP on a plain TUN, {PAYLOAD}-byte payloads, {:.0} s per rate: the \
             contender's whole process per datagram sent (median of {rounds} round{}); \
             targets for tunpipe: CPU ≤ {CPU_TARGET}× the seed loop's (aim 1.0×), wake-ups ≤ \
             {WAKEUP_TARGET}",
            t.paced_measure.as_secs_f64(),
            if rounds == 1 { "" } else { "s" }
        ),
        &[
            "rate /s",
            "contender",
            "CPU µs/datagram",
            "÷ seed loop",
            "wake-ups",
            "preempted",
            "replies/sent",
            "sent late",
            "targets",
        ],
        &rows,
    );
    Ok(json!({
        "payload": PAYLOAD,
        "warmup_s": t.paced_warmup.as_secs_f64(),
        "seconds": t.paced_measure.as_secs_f64(),
        "rounds": rounds,
        "cpu_target": CPU_TARGET,
        "wakeups_target": WAKEUP_TARGET,
        "cells": cells,
        "wall_s": started.elapsed().as_secs_f64(),
    }))
}
