//! What `run` and `wg` share once their engine is up: signals that stop it (timed, from the
//! signal's arrival to every engine thread joined), progress lines, and waiting for the end.

use super::CliResult;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe::{Engine, EngineError};

/// A signal within this long of the first is the same request, delivered twice.
const SAME_REQUEST: Duration = Duration::from_secs(1);

/// Registers for SIGINT and SIGTERM. Do it before the device exists, so that a signal during
/// set-up is queued, not fatal.
pub fn signals() -> CliResult<Signals> {
    Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install the signal handlers: {e}").into())
}

/// How a session ended.
pub struct Ended {
    /// What the engine ended with (an error if a device failed).
    pub result: Result<(), EngineError>,
    /// The report's "stop" row: which signal, and how long the stop took.
    pub stop: String,
}

/// Waits until a signal stops `engine` (a second one exits at once) or the engine stops on its
/// own, printing `progress(elapsed)` every `interval_secs` seconds (0: never).
pub fn until_stopped(
    engine: &Arc<Engine>,
    mut signals: Signals,
    interval_secs: u64,
    mut progress: impl FnMut(Duration) -> String + Send + 'static,
) -> CliResult<Ended> {
    let (stopped_tx, stopped_rx) = crossbeam_channel::bounded::<(i32, Duration)>(1);
    let stopper = engine.clone();
    std::thread::Builder::new()
        .name("tunpipe-signals".into())
        .spawn(move || {
            let mut first: Option<Instant> = None;
            for signal in signals.forever() {
                if let Some(at) = first {
                    // One signal can arrive twice: `timeout`, and a terminal's Ctrl-C, signal
                    // the whole process group as well as the process. Only a later one means
                    // "do not wait for the stop".
                    if at.elapsed() < SAME_REQUEST {
                        continue;
                    }
                    eprintln!("tunpipe: second signal; exiting without waiting");
                    std::process::exit(130);
                }
                first = Some(Instant::now());
                let at = Instant::now();
                // An error here is the fatal one the main thread reports from wait().
                let _ = stopper.stop();
                let _ = stopped_tx.send((signal, at.elapsed()));
            }
        })
        .map_err(|e| format!("cannot spawn the signal thread: {e}"))?;

    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let printer = (interval_secs > 0)
        .then(|| {
            let every = Duration::from_secs(interval_secs);
            std::thread::Builder::new()
                .name("tunpipe-progress".into())
                .spawn(move || {
                    let start = Instant::now();
                    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                        done_rx.recv_timeout(every)
                    {
                        println!(
                            "[{:>6.1}s] {}",
                            start.elapsed().as_secs_f64(),
                            progress(every)
                        );
                    }
                })
                .map_err(|e| format!("cannot spawn the progress thread: {e}"))
        })
        .transpose()?;

    let result = engine.wait();
    drop(done_tx);
    if let Some(thread) = printer {
        let _ = thread.join();
    }
    let stop = match stopped_rx.recv_timeout(Duration::from_secs(1)) {
        Ok((signal, took)) => format!(
            "{} after {}: every engine thread joined",
            super::report::duration(took),
            signal_name(signal)
        ),
        Err(_) => "not by a signal".to_string(),
    };
    Ok(Ended { result, stop })
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
