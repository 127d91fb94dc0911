//! The command-line tool proper (everywhere but iOS/tvOS).

mod args;
mod demo;
mod load;
mod netns;
mod report;
#[cfg(target_os = "linux")]
mod route;
mod run;
mod session;
mod tun;
// The UAPI control socket of `tunpipe wg`, for `wg` and `wg-quick`.
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod uapi;
mod wg;

use clap::Parser;
use std::process::ExitCode;

pub fn main() -> ExitCode {
    install_panic_hook();
    install_logger();
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return args::report_clap_error(e),
    };
    let result = match cli.command {
        args::Command::Run(a) => run::run(a),
        args::Command::Demo(a) => demo::demo(a),
        args::Command::Wg(a) => wg::wg(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunpipe: error: {}", one_line(&e.0));
            ExitCode::FAILURE
        }
    }
}

/// A CLI failure: one line for the user, never a debug dump.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s)
    }
}

impl From<&str> for Failure {
    fn from(s: &str) -> Self {
        Failure(s.to_string())
    }
}

pub type CliResult<T = ()> = Result<T, Failure>;

/// Folds a message onto one line, so every error the CLI prints is exactly one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A panic is a bug in tunpipe: say so on one line instead of a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        eprintln!(
            "tunpipe: internal error (a bug; please report it) in thread {}: {}",
            thread.name().unwrap_or("unnamed"),
            one_line(&info.to_string())
        );
    }));
}

/// Routes the engine's `log` records to stderr: warnings and errors by default (a failed pin,
/// a fatal device error); `TUNPIPE_LOG=info` or `debug` shows more.
fn install_logger() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                let level = r.level().as_str().to_lowercase();
                eprintln!("tunpipe: {level}: {}", one_line(&r.args().to_string()));
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let level = std::env::var("TUNPIPE_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
