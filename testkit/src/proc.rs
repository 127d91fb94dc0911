//! This process's resources as the kernel counts them (`/proc`): threads, open fds, memory,
//! and CPU time per thread. Where `/proc` does not exist the readers return zeros.

use crate::check::{check, eventually_within};
use libtest_mimic::Failed;
use std::time::Duration;

/// A number from a `/proc/<pid>/status` line `key value ...` (0 when missing).
fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn own_status(key: &str) -> u64 {
    status_field(
        &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
        key,
    )
}

/// Threads of this process.
pub fn threads() -> u64 {
    own_status("Threads:")
}

/// Open fds of this process (listing them holds one of its own: the same one every time).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Resident memory of this process (VmRSS), in KiB.
pub fn rss_kib() -> u64 {
    own_status("VmRSS:")
}

/// Peak resident memory of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> u64 {
    own_status("VmHWM:")
}

/// Peak resident memory of process `pid` (VmHWM), in KiB.
pub fn peak_rss_kib_of(pid: u32) -> u64 {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        "VmHWM:",
    )
}

/// Threads, open fds and resident memory of this process.
#[derive(Debug, Clone, Copy)]
pub struct Resources {
    /// Threads.
    pub threads: u64,
    /// Open fds.
    pub fds: u64,
    /// Resident memory (VmRSS), KiB.
    pub rss_kib: u64,
}

/// This process's resources now.
pub fn resources() -> Resources {
    Resources {
        threads: threads(),
        fds: open_fds(),
        rss_kib: rss_kib(),
    }
}

/// This process's resources once its thread count has come down to `expect_threads`:
/// threads take a moment to vanish from /proc after join returns (the kernel reaps them
/// asynchronously). Waits up to a generous 10 s.
pub fn settled_resources(expect_threads: u64) -> Resources {
    eventually_within(Duration::from_secs(10), || threads() <= expect_threads);
    resources()
}

/// Allowed RSS growth after a warm-up: allocator caches settle, nothing should grow.
pub const RSS_SLACK_KIB: u64 = 2048;

/// Prints both counts and fails unless threads and fds are back where they were and resident
/// memory grew by no more than [`RSS_SLACK_KIB`].
pub fn assert_no_leak(label: &str, before: Resources, after: Resources) -> Result<(), Failed> {
    eprintln!(
        "{label}: threads {} -> {}, fds {} -> {}, VmRSS {} KiB -> {} KiB",
        before.threads, after.threads, before.fds, after.fds, before.rss_kib, after.rss_kib
    );
    check(after.threads == before.threads, || {
        format!("{label}: thread count {before:?} -> {after:?}")
    })?;
    check(after.fds == before.fds, || {
        format!("{label}: open fds {before:?} -> {after:?}")
    })?;
    check(after.rss_kib <= before.rss_kib + RSS_SLACK_KIB, || {
        format!("{label}: VmRSS grew by more than {RSS_SLACK_KIB} KiB: {before:?} -> {after:?}")
    })
}

/// The `O_*` flags of `fd` (`fcntl(F_GETFL)`; -1 for a closed fd).
#[cfg(unix)]
pub fn fd_flags(fd: i32) -> i32 {
    // SAFETY: F_GETFL takes no pointer; a closed fd gives -1.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

/// One thread of this process, from `/proc/self/task/<tid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TaskState {
    /// Its name (`comm`).
    pub name: String,
    /// Its scheduler state: `R` running, `S` sleeping, ...
    pub state: char,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Every thread of this process whose name starts with `prefix`, sorted by name.
pub fn tasks_named(prefix: &str) -> Vec<TaskState> {
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
        if !name.starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        out.push(TaskState {
            name: name.to_string(),
            state: fields[0].chars().next().unwrap_or('?'),
            cpu_ticks: tick(11).unwrap_or(0) + tick(12).unwrap_or(0),
        });
    }
    out.sort();
    out
}

/// CPU time and context switches of a set of threads, from the kernel's per-thread accounting.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadCpu {
    /// Threads that matched.
    pub threads: u32,
    /// Time on CPU in ns (`/proc/self/task/<tid>/schedstat`, first field).
    pub cpu_ns: u64,
    /// Voluntary context switches: the thread blocked (each wake-up that follows is one).
    pub voluntary: u64,
    /// Involuntary context switches: preempted.
    pub involuntary: u64,
}

impl ThreadCpu {
    /// The difference `self - earlier` (threads that exited in between are lost).
    pub fn since(&self, earlier: &ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            threads: self.threads,
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }

    /// The sum of `self` and `other`.
    pub fn plus(&self, other: &ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            threads: self.threads + other.threads,
            cpu_ns: self.cpu_ns + other.cpu_ns,
            voluntary: self.voluntary + other.voluntary,
            involuntary: self.involuntary + other.involuntary,
        }
    }
}

/// Sums the accounting of this process's threads whose name (`comm`) starts with any of
/// `prefixes`. Linux only; elsewhere it returns zeros.
pub fn thread_cpu(prefixes: &[&str]) -> ThreadCpu {
    tasks_cpu("/proc/self/task", |comm| {
        prefixes.iter().any(|p| comm.starts_with(p))
    })
}

/// Sums the accounting of every thread of process `pid` (another process: a daemon, a CLI
/// under test). Only the threads alive now are listed, so the time of a thread that exited
/// between two readings is lost (a process's own [`own_usage`] keeps it). Linux only;
/// elsewhere, or once it is gone, zeros.
pub fn process_cpu(pid: u32) -> ThreadCpu {
    tasks_cpu(&format!("/proc/{pid}/task"), |_| true)
}

fn tasks_cpu(dir: &str, wanted: impl Fn(&str) -> bool) -> ThreadCpu {
    let mut total = ThreadCpu::default();
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return total;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !wanted(comm.trim_end()) {
            continue;
        }
        let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        total.threads += 1;
        total.cpu_ns += schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        total.voluntary += status_field(&status, "voluntary_ctxt_switches:");
        total.involuntary += status_field(&status, "nonvoluntary_ctxt_switches:");
    }
    total
}

/// This whole process's on-CPU time and context switches since it started, every thread it
/// ever ran included, also those that have exited (`getrusage(RUSAGE_SELF)`: user plus system
/// time, which the kernel keeps as the threads' summed run time, to the µs). `threads` is the
/// number of threads alive now. Unix only; elsewhere zeros.
pub fn own_usage() -> ThreadCpu {
    #[cfg(unix)]
    {
        // SAFETY: an all-zero rusage is a valid value; getrusage fills the one it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: RUSAGE_SELF with a pointer to a live rusage, which the call only writes.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return ThreadCpu::default();
        }
        let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
        ThreadCpu {
            threads: threads() as u32,
            cpu_ns: ns(usage.ru_utime) + ns(usage.ru_stime),
            voluntary: usage.ru_nvcsw as u64,
            involuntary: usage.ru_nivcsw as u64,
        }
    }
    #[cfg(not(unix))]
    ThreadCpu::default()
}

/// Names the calling thread (what [`thread_cpu`] matches on) where the platform allows it.
pub fn name_current_thread(name: &str) {
    #[cfg(target_os = "linux")]
    {
        let _ = std::fs::write("/proc/thread-self/comm", name);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// Waits (up to a generous 10 s) for the thread count to come back down to
/// `before.threads`, then fails unless it did and the open fds are as many as `before`.
pub fn threads_and_fds_back(before: Resources) -> Result<(), Failed> {
    let settled = eventually_within(Duration::from_secs(10), || threads() <= before.threads);
    check(settled, || {
        format!("threads {} -> {}", before.threads, threads())
    })?;
    check(open_fds() == before.fds, || {
        format!("fds {} -> {}", before.fds, open_fds())
    })
}
