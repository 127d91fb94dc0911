//! Real-TUN tests, as root (Linux): each runs in a fresh network namespace of its own, so
//! nothing collides or leaks. When the process cannot make a namespace and a TUN in it (not
//! root), every test is reported as ignored, with the reason, never as passed. Tests run one
//! at a time, so that the idle test and the resource counts see only their own engines.
//!
//! - kernel.rs: the kernel's own `ping`, `ping -6` and UDP sockets as clients of the engine,
//!   adopted and rejected fds, a deleted interface, a bridge between two namespaces;
//! - soak.rs: the real-TUN soak (start/stop cycles, sustained UDP, the host closing its fd);
//! - fd_contract.rs: what a host may do with its fd while an engine runs (clear O_NONBLOCK,
//!   rename the interface), and the kinds of fd the engine refuses.
//!
//! Elsewhere than on Linux this binary runs nothing.

#[cfg(target_os = "linux")]
mod fd_contract;
#[cfg(target_os = "linux")]
mod kernel;
#[cfg(target_os = "linux")]
mod soak;

/// Far longer than any of these tests takes: the bound on a hang, not a timing assertion.
#[cfg(target_os = "linux")]
const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(60);

fn main() {
    #[cfg(target_os = "linux")]
    {
        use tunpipe_testkit::netns::{in_fresh_netns, Ipv6};
        use tunpipe_testkit::trials::{root_trials, run_one_at_a_time};
        let problem = tunpipe_testkit::tun::privilege_problem();
        // The kernel's clients want IPv6 (addresses usable at once); the soak compares
        // counts exactly, so its namespaces have IPv6 off.
        let mut trials = root_trials(&kernel::TESTS, &problem, |test| {
            in_fresh_netns(Ipv6::NoDad, test)
        });
        trials.extend(root_trials(&soak::TESTS, &problem, |test| {
            in_fresh_netns(Ipv6::Off, test)
        }));
        // These tests hung before their fixes: a watchdog turns a hang into a failure.
        trials.extend(root_trials(&fd_contract::TESTS, &problem, |test| {
            tunpipe_testkit::thread::on_thread("fd-contract", Some(WATCHDOG), move || {
                in_fresh_netns(Ipv6::Off, test)
            })
        }));
        run_one_at_a_time(trials)
    }
}
