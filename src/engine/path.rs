//! A network path change, handled off the I/O threads: what [`crate::Engine::rebind`] starts.
//!
//! 1. The stage looks its endpoints' hosts up again ([`crate::stage::DuplexStage::refresh_endpoints`]): a
//!    name may stand for another address on the new network, and on Apple an IPv4 endpoint
//!    for another NAT64 prefix. A resolver may take seconds, so this runs on a thread of its
//!    own, which a stop never waits for.
//! 2. The outside device gets a new socket, on the same port if it can be had. A failure
//!    (the new network not ready yet) is tried again every 0.5 s, 10 times in all, as
//!    WireGuardKit's `wgBumpSockets` does.
//! 3. The timer tells the stage, which starts a handshake with each peer from the new socket.
//! 4. When the stage can tell ([`crate::stage::DuplexStage::round_trips`]) and no peer answers
//!    within 5 s (the stage is told twice, 2.5 s apart, so that one lost datagram is not taken
//!    for a dead path), the socket moves to a fresh port and the peers are told again: some
//!    carrier NATs stop forwarding an old port after a change, and only a new one recovers. A
//!    path whose old port still works keeps it.
//!
//! A rebind asked for while one runs makes the running one start over from step 1 (its waits
//! end at once). A stop ends it at its next step; the device is let go at the join, which
//! waits only for a socket step in progress (up to `REBIND_PORT_WAIT`, 100 ms), never for a
//! lookup.

use crate::actor::{Control, SharedDuplex};
use crate::device::Rebinder;
use parking_lot::Mutex;
use std::io;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Tries at a new socket before the old one is kept, and the wait between two.
const BIND_TRIES: u32 = 10;
const BIND_RETRY: Duration = Duration::from_millis(500);
/// How long the peers have to answer from the new socket before it moves to a fresh port.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How often a wait looks for an answer, a stop or a newer rebind. A path change is rare:
/// 50 looks in the 5 s after one cost nothing worth a doorbell.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// An engine's path changes: at most one thread at a time runs them.
pub(crate) struct PathChanges {
    ctl: Arc<Control>,
    /// A tunnel's stage (`None` in a one-way engine).
    stage: Option<SharedDuplex>,
    /// The outside device's, until the engine is joined.
    rebinder: Mutex<Option<Rebinder>>,
    run: Mutex<Run>,
}

#[derive(Default)]
struct Run {
    /// A thread runs path changes.
    running: bool,
    /// Another change was asked for while it ran: it starts over.
    again: bool,
}

/// How a wait for the peers' answer ended.
#[derive(PartialEq, Eq)]
enum Answer {
    Answered,
    Silent,
    /// A stop, a suspend or a newer rebind: this change goes no further.
    Interrupted,
}

impl PathChanges {
    pub(crate) fn new(
        ctl: Arc<Control>,
        stage: Option<SharedDuplex>,
        rebinder: Option<Rebinder>,
    ) -> Arc<PathChanges> {
        Arc::new(PathChanges {
            ctl,
            stage,
            rebinder: Mutex::new(rebinder),
            run: Mutex::new(Run::default()),
        })
    }

    /// Whether a path change is under way (its thread has not finished it).
    pub(crate) fn running(&self) -> bool {
        self.run.lock().running
    }

    /// Whether the engine has an outside device that can be rebound (and is not joined).
    pub(crate) fn can_rebind(&self) -> bool {
        self.rebinder.lock().is_some()
    }

    /// Starts a path change on a thread of its own, or makes the running one start over.
    ///
    /// # Errors
    /// What spawning the thread failed with.
    pub(crate) fn start(self: &Arc<Self>) -> io::Result<()> {
        {
            let mut run = self.run.lock();
            if run.running {
                run.again = true;
                return Ok(());
            }
            run.running = true;
        }
        let this = self.clone();
        let spawned = thread::Builder::new()
            .name("tunpipe-path".into())
            .spawn(move || this.run());
        if let Err(e) = spawned {
            self.run.lock().running = false;
            return Err(e);
        }
        Ok(())
    }

    /// Lets go of the device once the engine is joined (waiting for a socket step in
    /// progress): a change still running ends at its next step.
    pub(crate) fn release(&self) {
        self.rebinder.lock().take();
    }

    fn run(&self) {
        loop {
            self.change();
            let mut run = self.run.lock();
            if !std::mem::take(&mut run.again) || self.ctl.stopping() {
                run.running = false;
                return;
            }
        }
    }

    /// A stop or a newer rebind came: this change goes no further.
    fn interrupted(&self) -> bool {
        self.ctl.stopping() || self.run.lock().again
    }

    /// Runs `step` on the device, unless the engine was joined meanwhile.
    fn with_device<T>(
        &self,
        step: impl FnOnce(&Rebinder) -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        self.rebinder.lock().as_ref().map(step)
    }

    /// One path change, steps 1 to 4 of the module's list.
    fn change(&self) {
        if let Some(stage) = &self.stage {
            stage.refresh_endpoints();
        }
        let mut tries = 0;
        loop {
            if self.interrupted() {
                return;
            }
            match self.with_device(Rebinder::rebind) {
                None => return,
                Some(Ok(())) => break,
                Some(Err(e)) => {
                    tries += 1;
                    if tries == BIND_TRIES {
                        log::error!(
                            "rebind: no new socket in {BIND_TRIES} tries ({e}); the old one stays"
                        );
                        return;
                    }
                    log::warn!("rebind: no new socket yet ({e}); trying again in 0.5 s");
                    if self.pause(BIND_RETRY) {
                        return;
                    }
                }
            }
        }
        let before = self.stage.as_ref().and_then(|s| s.round_trips());
        self.ctl.note_path_changed();
        let Some(before) = before else {
            return;
        };
        // Two tries in the 5 s, so that one lost datagram does not look like a dead path (nor
        // a peer's flood limit: wireguard-go drops an initiation within 20 ms of the last).
        if self.answer_since(before, ANSWER_WAIT / 2) != Answer::Silent {
            return;
        }
        self.ctl.note_path_changed();
        if self.answer_since(before, ANSWER_WAIT / 2) != Answer::Silent {
            return;
        }
        match self.with_device(Rebinder::rebind_fresh) {
            None => {}
            Some(Ok(port)) => {
                log::warn!(
                    "rebind: no peer answered from the new socket in {} s: moved to port {port}",
                    ANSWER_WAIT.as_secs()
                );
                if let Some(stage) = &self.stage {
                    stage.socket_moved(port);
                }
                self.ctl.note_path_changed();
            }
            Some(Err(e)) => log::warn!("rebind: no peer answered, and no fresh port: {e}"),
        }
    }

    /// Waits up to `wait` for the stage's round trips to pass `before`.
    fn answer_since(&self, before: u64, wait: Duration) -> Answer {
        let until = Instant::now() + wait;
        loop {
            let now = self.stage.as_ref().and_then(|s| s.round_trips());
            if now.is_some_and(|n| n > before) {
                return Answer::Answered;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Answer::Silent;
            }
            // A suspended engine sends no handshake: its silence proves nothing.
            if self.pause(left.min(LOOK_EVERY)) || self.ctl.suspended() {
                return Answer::Interrupted;
            }
        }
    }

    /// Sleeps `pause` unless a stop comes first; true if this change should go no further.
    fn pause(&self, pause: Duration) -> bool {
        self.ctl.wait_for_stop_request_for(pause);
        self.interrupted()
    }
}
