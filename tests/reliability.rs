//! What an adversarial host does to the engine (issue 9), on the in-memory device: a stage
//! that is slow when the stop comes, a stage factory that panics, and a crowd of threads
//! asking for latency; a suspension. None of these tests times anything: each counts what
//! happened.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use tunpipe::{Engine, EngineError, MemoryDevice, PacketBuf, Verdict};
use tunpipe_testkit::check::{assert_conserved, eventually};
use tunpipe_testkit::config;
use tunpipe_testkit::memory::{recv_n, send};
use tunpipe_testkit::packets::udp4;

/// A stage held inside its first call until the test lets it go, that counts its calls.
#[derive(Clone, Default)]
struct HeldStage {
    calls: Arc<AtomicUsize>,
    entered: Arc<AtomicBool>,
    released: Arc<AtomicBool>,
}

impl HeldStage {
    fn process(&self) -> Verdict {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.entered.store(true, Ordering::SeqCst);
        while !self.released.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        Verdict::Forward
    }
}

#[test]
fn a_stop_during_a_slow_stage_call_runs_no_further_stage_calls() {
    for workers in [0, 1] {
        let (dev, mut tx, _rx) = MemoryDevice::new(256, 2048);
        // Forty packets wait before the engine starts, so its first read takes them all: the
        // first is held in the stage, and (with the stage inline) the other 39 are in the same
        // batch behind it.
        for seq in 0..40 {
            send(&mut tx, &udp4(1, 2, seq, 16));
        }
        let stage = HeldStage::default();
        let engine = {
            let stage = stage.clone();
            Arc::new(
                Engine::builder()
                    .config(config(workers))
                    .stage(move |_: &mut PacketBuf| stage.process())
                    .start(&dev)
                    .unwrap(),
            )
        };
        assert!(eventually(|| stage.entered.load(Ordering::SeqCst)));
        assert!(eventually(|| engine.stats().rx_packets == 40));
        let stopper = {
            let engine = engine.clone();
            std::thread::spawn(move || engine.stop())
        };
        assert!(eventually(|| engine.is_stopping()));
        // The call in progress finishes; the stop must not run the other 39 through the
        // stage (with their side effects), but count them as stopped.
        stage.released.store(true, Ordering::SeqCst);
        stopper.join().unwrap().unwrap();
        let s = engine.stats();
        assert_eq!(
            stage.calls.load(Ordering::SeqCst),
            1,
            "workers {workers}: {s:?}"
        );
        // The held packet itself may still be written, or be in flight at the stop.
        assert_eq!(
            s.drop_stopped + s.tx_packets,
            40,
            "workers {workers}: {s:?}"
        );
        assert_conserved(&s);
    }
}

#[test]
fn a_stage_whose_factory_panics_is_not_called_again_and_the_error_says_so() {
    for workers in [0, 1] {
        let (dev, mut tx, _rx) = MemoryDevice::new(256, 2048);
        let built = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let engine = {
            let (built, calls) = (built.clone(), calls.clone());
            Engine::builder()
                .config(config(workers))
                .stage_factory(move |_| {
                    // The first instance is built at start; building a second one (after the
                    // first panics) panics too.
                    if built.fetch_add(1, Ordering::SeqCst) > 0 {
                        panic!("factory bug on purpose");
                    }
                    let calls = calls.clone();
                    move |_: &mut PacketBuf| -> Verdict {
                        calls.fetch_add(1, Ordering::SeqCst);
                        panic!("stage bug on purpose")
                    }
                })
                .start(&dev)
                .unwrap()
        };
        for seq in 0..10 {
            send(&mut tx, &udp4(1, 2, seq, 16));
        }
        let err = engine.wait().unwrap_err();
        assert!(matches!(err, EngineError::StageRebuild), "{err}");
        assert!(!err.to_string().contains(&u64::MAX.to_string()), "{err}");
        // The torn instance panicked once and was never called again.
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let s = engine.stats();
        assert_eq!(s.drop_stage_panic, 1, "{s:?}");
        assert_conserved(&s);
    }
}

#[test]
fn any_number_of_threads_asking_for_latency_of_a_running_engine_get_answers() {
    const THREADS: usize = 32;
    const ASKS: usize = 200;
    for workers in [0, 2] {
        let (dev, _tx, _rx) = MemoryDevice::new(64, 2048);
        let engine = Arc::new(
            Engine::builder()
                .config(config(workers))
                .start(&dev)
                .unwrap(),
        );
        let start = Arc::new(Barrier::new(THREADS));
        let askers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (engine, start) = (engine.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    (0..ASKS).filter(|_| engine.latency().is_err()).count()
                })
            })
            .collect();
        let refused: usize = askers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(
            refused, 0,
            "workers {workers}: a running engine refused to answer"
        );
        engine.stop().unwrap();
    }
}

/// Every actor spins after work, the reader too (it reads again before it waits in the
/// kernel). With a window of an hour none of them ever sleeps, so a stop must reach them
/// through their loops, not through a wake-up.
#[test]
fn a_stop_reaches_actors_that_are_spinning() {
    for workers in [0, 1, 2] {
        let (dev, mut tx, mut rx) = MemoryDevice::new(256, 2048);
        let mut c = config(workers);
        c.spin = std::time::Duration::from_secs(3600);
        let engine = Arc::new(Engine::builder().config(c).start(&dev).unwrap());
        for seq in 0..3 {
            send(&mut tx, &udp4(1, 2, seq, 16));
            assert_eq!(recv_n(&mut rx, 1).len(), 1);
        }
        assert_eq!(
            engine.stats().wakeups,
            0,
            "workers {workers}: someone slept"
        );
        stop_elsewhere(&engine, &format!("workers {workers}, spinning"));
        assert_eq!(engine.stats().tx_packets, 3);
    }
}

/// A phone's network goes away, or the phone sleeps (issue 22): a suspended engine reads
/// nothing and sends nothing, and a stop still ends it at once; resumed, it carries what
/// waited in the device meanwhile.
#[test]
fn a_suspended_engine_reads_nothing_stops_at_once_and_resumed_carries_what_waited() {
    for workers in [0, 1, 2] {
        let (dev, mut tx, mut rx) = MemoryDevice::new(256, 2048);
        let engine = Arc::new(
            Engine::builder()
                .config(config(workers))
                .start(&dev)
                .unwrap(),
        );
        send(&mut tx, &udp4(1, 2, 0, 16));
        assert_eq!(recv_n(&mut rx, 1).len(), 1);
        engine.suspend().unwrap();
        assert!(engine.is_suspended());
        for seq in 1..=5 {
            send(&mut tx, &udp4(1, 2, seq, 16));
        }
        // A wrong read has 50 ms to happen (this cannot fail a right engine).
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            engine.stats().rx_packets,
            1,
            "workers {workers}: read while suspended"
        );
        engine.resume().unwrap();
        assert!(!engine.is_suspended());
        assert_eq!(recv_n(&mut rx, 5).len(), 5, "workers {workers}");

        engine.suspend().unwrap();
        stop_elsewhere(&engine, &format!("workers {workers}, suspended"));
        assert!(matches!(engine.resume(), Err(EngineError::Stopping)));
        let s = engine.stats();
        assert_eq!(
            (s.rx_packets, s.tx_packets),
            (6, 6),
            "workers {workers}: {s:?}"
        );
        assert_conserved(&s);
    }
}

/// Suspends and resumes over and over under a flood (issue 22): whatever a suspension finds in
/// the rings is dropped and counted, nothing is lost otherwise (but to a full receiving side,
/// counted too), and every direction balances.
#[test]
fn suspend_and_resume_under_a_flood_lose_only_what_they_count() {
    const PACKETS: u64 = 20_000;
    for workers in [0, 1, 2] {
        let (dev, mut tx, mut rx) = MemoryDevice::new(256, 2048);
        let engine = Arc::new(
            Engine::builder()
                .config(config(workers))
                .start(&dev)
                .unwrap(),
        );
        let flooding = Arc::new(AtomicBool::new(true));
        let sender = std::thread::spawn(move || {
            for seq in 0..PACKETS {
                send(&mut tx, &udp4(1, 2, seq, 16));
            }
        });
        let receiver = {
            let flooding = flooding.clone();
            std::thread::spawn(move || {
                let mut got = 0u64;
                loop {
                    match rx.recv_with(|_| ()) {
                        Some(()) => got += 1,
                        None if !flooding.load(Ordering::SeqCst) => return got,
                        None => std::thread::yield_now(),
                    }
                }
            })
        };
        let mut toggles = 0;
        while !sender.is_finished() {
            engine.suspend().unwrap();
            std::thread::yield_now();
            engine.resume().unwrap();
            toggles += 1;
        }
        sender.join().unwrap();
        assert!(
            eventually(|| engine.stats().rx_packets == PACKETS),
            "workers {workers}: read {} of {PACKETS}",
            engine.stats().rx_packets
        );
        assert!(eventually(|| engine.stats().in_flight() == 0));
        engine.stop().unwrap();
        flooding.store(false, Ordering::SeqCst);
        let got = receiver.join().unwrap();
        let s = engine.stats();
        assert_conserved(&s);
        // Lost only to a suspension, or to the receiving side being full (the memory
        // device's answer is a write error).
        assert_eq!(
            s.dropped(),
            s.drop_suspended + s.drop_write_error,
            "workers {workers}, {toggles} suspensions: {s:?}"
        );
        assert_eq!(got, s.tx_packets, "workers {workers}: {s:?}");
        println!(
            "workers {workers}: {toggles} suspensions, {} dropped as suspended",
            s.drop_suspended
        );
    }
}

/// Stops `engine` from another thread and checks that the stop finishes (`eventually`'s
/// deadline turns a hang into a failure) and succeeds.
fn stop_elsewhere(engine: &Arc<Engine>, what: &str) {
    let stopper = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.stop())
    };
    assert!(
        eventually(|| stopper.is_finished()),
        "{what}: the stop never finished"
    );
    stopper.join().unwrap().unwrap();
}
