//! The timer: runs a duplex stage's timers when the deadline it named comes, and tells it
//! when the host changed the network path. It sleeps until then: an idle tunnel with nothing
//! pending wakes nobody.

use super::{run_duplex_timers, Control, Emits, Outs, SharedDuplex, NO_DEADLINE};
use crate::pool::Pool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a suspension waits for the writers to take what the stage sent before it
/// (they are awake, and take it in microseconds; this bounds a writer stuck in a send).
const FLUSH_BEFORE_SUSPEND: Duration = Duration::from_millis(20);

pub(crate) struct Timer {
    pub ctl: Arc<Control>,
    pub stage: SharedDuplex,
    /// Spare buffers for what the stage's timers send.
    pub pool: Pool,
    pub outs: Outs,
    pub emits: Emits,
}

impl Timer {
    pub(crate) fn run(mut self) {
        let ctl = self.ctl.clone();
        let counters = &ctl.counters.timer;
        ctl.timer_bell.register_current();
        while !ctl.stopping() {
            if ctl.suspended() {
                // No timer fires while suspended, and a path change waits for the resume.
                if ctl
                    .timer_bell
                    .sleep_unless(|| !ctl.suspended() || ctl.stopping())
                {
                    counters.wakeups.add(1);
                }
                continue;
            }
            self.pool.refill();
            let now = ctl.now_ns();
            if ctl.suspend_requested() {
                // Before the suspension, what the stage owes its peers goes out (a keepalive
                // for data just received), and the writers take it from the rings before
                // they start dropping.
                self.run_stage(now, |stage, out| stage.suspending(out));
                let until = Instant::now() + FLUSH_BEFORE_SUSPEND;
                while !self.outs.drained() && !ctl.stopping() && Instant::now() < until {
                    std::thread::yield_now();
                }
                ctl.begin_requested_suspension();
                continue;
            }
            if ctl.take_path_changed() {
                self.run_stage(now, |stage, out| stage.path_changed(out));
            }
            let deadline = ctl.deadline_ns();
            if deadline <= now {
                self.run_stage(now, |stage, out| stage.on_deadline(out));
                continue;
            }
            // Asleep until the deadline, or until it moves earlier, the path changes, or a
            // stop comes: whoever changes one of these rings the bell.
            let timeout = (deadline != NO_DEADLINE).then(|| Duration::from_nanos(deadline - now));
            let parked = ctl.timer_bell.sleep_unless_for(
                || {
                    ctl.stopping()
                        || ctl.path_change_pending()
                        || ctl.suspend_requested()
                        || ctl.deadline_ns() < deadline
                },
                timeout,
            );
            if parked {
                counters.wakeups.add(1);
            }
        }
    }

    fn run_stage(
        &mut self,
        now: u64,
        work: impl FnOnce(&dyn crate::stage::DuplexStage, &mut crate::stage::Emitter<'_>),
    ) {
        let ctl = &*self.ctl;
        let counters = &ctl.counters.timer;
        let mut place = self
            .emits
            .place(&mut self.pool.free, self.outs.room_after(0));
        run_duplex_timers(&self.stage, counters, ctl, &mut place, now, work);
        // The timer's work is sparse by nature: it always may go past the rings.
        self.outs.begin(ctl, false);
        self.emits
            .send(&mut self.outs, &mut self.pool.free, counters);
        self.outs.finish();
    }
}
