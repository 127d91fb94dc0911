//! Conservation in a tunnel where the stage answers packets (a reply travels back the way its
//! packet came) and the engine stops while replies are still on their way: each reply is
//! counted in the direction it travels, so both directions balance after stop.
//!
//! The inside writer is held in its first send by a gate that opens only once the stop has
//! been requested, so the rings toward it fill up and the replies behind them meet the stop
//! (with workers, in the worker's push or its ring; inline, in the reader's). How many do,
//! and where, depends on where each thread was when the stop came: the test asserts what
//! holds for every case. Nothing here is timed: each step waits for the state it needs.

use parking_lot::{Condvar, Mutex};
use std::io;
use std::sync::Arc;
use tunpipe::device::{MemoryDevice, TxHalf};
use tunpipe::stage::{Action, Direction, DuplexStage, Emitter};
use tunpipe::{Config, Device, Engine, PacketBuf};
use tunpipe_testkit::check::{assert_conserved, eventually};
use tunpipe_testkit::packets::udp4_packet;

/// Answers every outbound packet back to the inside, as is.
struct ReplyToAll;

impl DuplexStage for ReplyToAll {
    fn process(&self, _: Direction, _: &mut PacketBuf, _: &mut Emitter<'_>) -> Action {
        Action::Reply
    }
    fn on_deadline(&self, _: &mut Emitter<'_>) {}
    fn next_deadline(&self) -> Option<std::time::Instant> {
        None
    }
}

/// A gate the inside writer's sends wait at until it opens.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut open = self.open.lock();
        while !*open {
            self.opened.wait(&mut open);
        }
    }
    fn open(&self) {
        *self.open.lock() = true;
        self.opened.notify_all();
    }
}

/// A send half that waits at the gate, then discards what it sends.
struct GatedTx(Arc<Gate>);

impl TxHalf for GatedTx {
    fn send(&mut self, _: &PacketBuf) -> io::Result<()> {
        self.0.pass();
        Ok(())
    }
}

#[test]
fn replies_in_flight_at_stop_are_counted_in_the_direction_they_travel() {
    for workers in [0, 1] {
        let (inside, mut app_tx, _app_rx) = MemoryDevice::new(4096, 256);
        let (outside, _, _) = MemoryDevice::new(16, 256);
        let (inside_rx, _) = inside.open().unwrap();
        let gate = Arc::new(Gate::default());
        let mut config = Config::default();
        config.workers = workers;
        config.ring_capacity = 64;
        let engine = Arc::new(
            Engine::builder()
                .config(config)
                .start_tunnel_halves(
                    ReplyToAll,
                    (inside_rx, GatedTx(gate.clone())),
                    outside.open().unwrap(),
                )
                .unwrap(),
        );
        // Replies pile up behind the held writer until one finds its ring full: inline, the
        // reader drops it (ring full); with a worker, the worker waits for room and the
        // reader stalls behind it (or, caught earlier, the reader stalls before the worker
        // has answered all it read: then those packets meet the stop unanswered).
        let packet = udp4_packet([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"x");
        let stuck = || {
            let s = engine.stats();
            let answered = engine.direction_stats(Direction::Outbound).consumed > 0;
            (s.drop_ring_full > 0 || s.ring_stalls > 0) && answered
        };
        assert!(eventually(|| {
            while app_tx.send(&packet).is_ok() {}
            stuck()
        }));
        // The gate opens once the stop is underway and every packet read outbound has been
        // answered or dropped (a worker waiting to push a reply gives it up to the stop
        // first), so the writer can finish. Nothing else can settle them: no timeout here.
        let opener = {
            let (engine, gate) = (engine.clone(), gate.clone());
            std::thread::spawn(move || {
                while !(engine.is_stopping() && {
                    let out = engine.direction_stats(Direction::Outbound);
                    out.rx_packets == out.consumed + out.dropped()
                }) {
                    std::thread::yield_now();
                }
                gate.open();
            })
        };
        engine.stop().unwrap();
        opener.join().unwrap();
        for direction in Direction::BOTH {
            let s = engine.direction_stats(direction);
            assert_conserved(&s);
            assert_eq!(s.held, 0, "{s:?}");
        }
        let (out, inb) = (
            engine.direction_stats(Direction::Outbound),
            engine.direction_stats(Direction::Inbound),
        );
        // Every packet read outbound was answered (consumed there) or met the stop; every
        // answer is the inbound direction's to settle.
        assert_eq!(out.rx_packets, out.consumed + out.dropped(), "{out:?}");
        assert_eq!(inb.originated, out.consumed, "{out:?} {inb:?}");
    }
}

/// Forwards every packet, and claims to give up five held packets it never held: a stage
/// that miscounts.
struct Miscounts;

impl DuplexStage for Miscounts {
    fn process(&self, _: Direction, _: &mut PacketBuf, out: &mut Emitter<'_>) -> Action {
        out.drop_held(tunpipe::Side::Outside, 5);
        Action::Forward
    }
    fn on_deadline(&self, _: &mut Emitter<'_>) {}
    fn next_deadline(&self) -> Option<std::time::Instant> {
        None
    }
}

#[test]
fn an_engine_that_stops_unbalanced_says_so_and_fails_the_test() {
    let (inside, mut app_tx, _app_rx) = MemoryDevice::new(64, 256);
    let (outside, _, _) = MemoryDevice::new(64, 256);
    let engine = Engine::builder()
        .config(Config::default())
        .start_tunnel(Miscounts, &inside, &outside)
        .unwrap();
    assert_eq!(engine.balanced(), None, "not stopped yet");
    app_tx
        .send(&udp4_packet([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"x"))
        .unwrap();
    assert!(eventually(|| engine.stats().tx_packets == 1));
    // The test kit turns on `strict-balance`: the stop that finds the books wrong panics, so
    // any test whose engine stops unbalanced fails without a check of its own.
    let stop = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.stop()));
    let message = stop.expect_err("the unbalanced stop panics");
    let message = message.downcast_ref::<String>().expect("a message");
    assert!(message.contains("unbalanced"), "{message}");
    assert_eq!(engine.balanced(), Some(false));
}
