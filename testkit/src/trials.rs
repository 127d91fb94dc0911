//! Test lists for libtest-mimic (`harness = false`): tests that need a real TUN are marked
//! ignored at run time, with the reason, when the process cannot make one, so they show as
//! ignored and never as passed. (The default harness can ignore only at compile time.)

use libtest_mimic::{Arguments, Failed, Trial};

/// A test as the binaries list it.
pub type Test = fn() -> Result<(), Failed>;

/// Trials of tests that run as any user.
pub fn plain_trials(tests: &[(&str, Test)]) -> Vec<Trial> {
    tests
        .iter()
        .map(|&(name, test)| Trial::test(name, test))
        .collect()
}

/// Trials of tests that need a real TUN: each runs through `run` (which sets up its
/// namespace), and each is ignored, with the reason, when `problem` (from
/// [`crate::tun::privilege_problem`]) says why this process cannot make a TUN.
pub fn root_trials(
    tests: &[(&str, Test)],
    problem: &Option<String>,
    run: fn(Test) -> Result<(), Failed>,
) -> Vec<Trial> {
    tests
        .iter()
        .map(|&(name, test)| root_only(Trial::test(name, move || run(test)), problem))
        .collect()
}

/// `trial`, marked ignored with the reason when `problem` says why it cannot run here.
pub fn root_only(trial: Trial, problem: &Option<String>) -> Trial {
    match problem {
        Some(why) => trial.with_ignored_flag(true).with_kind(why.clone()),
        None => trial,
    }
}

/// Runs `trials` one at a time (so that counts of threads, fds and memory see only the
/// running test's engines) and exits with the outcome.
pub fn run_one_at_a_time(trials: Vec<Trial>) -> ! {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    libtest_mimic::run(&args, trials).exit()
}

/// A count from the environment variable `name` (for longer campaigns), else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
