//! The whole pipeline on the in-memory device: ordering, back-pressure, conservation,
//! stopping, restarting, and fault handling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tunpipe::device::{FaultPlan, FaultyDevice};
use tunpipe::stage::{Action, Direction, DuplexStage, Emitter};
use tunpipe::{
    BuiltinStage, Config, Device, Engine, EngineError, MemoryDevice, PacketBuf, Stage, Verdict,
};
use tunpipe_testkit::check::{assert_conserved, eventually};
use tunpipe_testkit::config;
use tunpipe_testkit::memory::{recv_n, send};
use tunpipe_testkit::packets::{udp4, udp4_seq};

fn configured(set: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    set(&mut config);
    config
}

#[test]
fn each_flow_keeps_its_order_through_several_workers() {
    for workers in [0, 1, 2, 3] {
        let (dev, mut tx, mut rx) = MemoryDevice::new(4096, 2048);
        let engine = Engine::builder()
            .config(config(workers))
            .stage(BuiltinStage::Reflect)
            .start(&dev)
            .unwrap();
        const FLOWS: u16 = 16;
        const PER_FLOW: u64 = 200;
        for seq in 0..PER_FLOW {
            for flow in 0..FLOWS {
                send(&mut tx, &udp4(1000 + flow, 7, seq, 32));
            }
        }
        let sent = u64::from(FLOWS) * PER_FLOW;
        // Wait for everything to be accounted for, then check that what came out of each flow
        // is in order.
        assert!(eventually(|| {
            let s = engine.stats();
            s.rx_packets == sent && s.in_flight() == 0
        }));
        let stats = engine.stats();
        let got = recv_n(&mut rx, stats.tx_packets as usize);
        assert_eq!(got.len() as u64, stats.tx_packets, "workers={workers}");
        assert!(stats.tx_packets > 0);
        let mut last = [None::<u64>; FLOWS as usize];
        for packet in &got {
            // Reflected: the flow's source port is now the destination port.
            let (sport, dport, seq) = udp4_seq(packet);
            assert_eq!(sport, 7);
            let flow = usize::from(dport - 1000);
            assert!(
                last[flow].is_none_or(|prev| seq > prev),
                "flow {flow} out of order with {workers} workers"
            );
            last[flow] = Some(seq);
        }
        engine.stop().unwrap();
        let stats = engine.stats();
        assert_eq!(stats.tx_packets + stats.drop_ring_full, sent, "{stats:?}");
        assert_conserved(&stats);
    }
}

/// Opens a gate when dropped, so that a failed assertion cannot leave a gated stage (or
/// device) blocking the engine's stop forever.
struct Gate(Arc<AtomicUsize>);

impl Gate {
    fn open(&self) {
        self.0.store(1, Ordering::Release);
    }

    fn wait(gate: &AtomicUsize) {
        while gate.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// A stage that blocks until released, so a test can fill the rings behind it.
fn gated_stage(gate: Arc<AtomicUsize>) -> impl Stage + Clone + Sync {
    move |_: &mut PacketBuf| {
        Gate::wait(&gate);
        Verdict::Forward
    }
}

#[test]
fn a_full_worker_ring_stalls_the_reader_and_loses_nothing() {
    let (dev, mut tx, mut rx) = MemoryDevice::new(4096, 2048);
    let cfg = configured(|c| {
        c.workers = 1;
        c.ring_capacity = 16;
    });
    let gate = Arc::new(AtomicUsize::new(0));
    let engine = Engine::builder()
        .config(cfg)
        .stage(gated_stage(gate.clone()))
        .start(&dev)
        .unwrap();
    let gate = Gate(gate); // dropped (opened) before the engine
    const SENT: u64 = 1000;
    for seq in 0..SENT {
        send(&mut tx, &udp4(1, 2, seq, 16));
    }
    // The worker is stuck on its first packet: the reader fills the ring, then stops reading
    // (the device's queue holds the rest) instead of dropping.
    assert!(
        eventually(|| engine.stats().ring_stalls >= 1),
        "{:?}",
        engine.stats()
    );
    let stalled = engine.stats();
    assert!(stalled.rx_packets <= 16 + 1, "{stalled:?}");
    assert_eq!(stalled.dropped(), 0, "{stalled:?}");
    gate.open();
    // Everything comes through, in order.
    let got = recv_n(&mut rx, SENT as usize);
    assert_eq!(got.len() as u64, SENT);
    for (seq, packet) in got.iter().enumerate() {
        assert_eq!(udp4_seq(packet).2, seq as u64);
    }
    engine.stop().unwrap();
    let stats = engine.stats();
    assert_eq!((stats.tx_packets, stats.dropped()), (SENT, 0), "{stats:?}");
    assert_conserved(&stats);
}

#[test]
fn malformed_and_oversize_packets_are_dropped_and_counted() {
    let (dev, mut tx, mut rx) = MemoryDevice::new(64, 4096);
    let cfg = configured(|c| {
        c.mtu = 1280;
    });
    let engine = Engine::builder()
        .config(cfg)
        .stage(BuiltinStage::Passthrough)
        .start(&dev)
        .unwrap();
    send(&mut tx, &[]); // empty
    send(&mut tx, &[0x60; 10]); // IPv6 version, too short
    send(&mut tx, &[0x00; 40]); // version 0
    send(&mut tx, &udp4(1, 2, 0, 2000)); // over the MTU
    send(&mut tx, &udp4(1, 2, 1, 1280 - 28)); // exactly the MTU: fine
    let got = recv_n(&mut rx, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), 1280);
    assert!(eventually(|| engine.stats().rx_packets == 5));
    engine.stop().unwrap();
    let stats = engine.stats();
    assert_eq!(stats.drop_malformed, 3, "{stats:?}");
    assert_eq!(stats.drop_oversize, 1, "{stats:?}");
    assert_conserved(&stats);
}

#[test]
fn stage_drops_are_counted_and_conserved() {
    for workers in [0, 2] {
        let (dev, mut tx, mut rx) = MemoryDevice::new(1024, 2048);
        let engine = Engine::builder()
            .config(config(workers))
            .stage(BuiltinStage::Reflect)
            .start(&dev)
            .unwrap();
        // Reflect drops TCP.
        let mut tcp = udp4(1, 2, 0, 16);
        tcp[9] = 6;
        for seq in 0..100 {
            send(&mut tx, &udp4(1, 2, seq, 16));
            send(&mut tx, &tcp);
        }
        assert_eq!(recv_n(&mut rx, 100).len(), 100);
        assert!(eventually(|| engine.stats().drop_stage == 100));
        engine.stop().unwrap();
        assert_conserved(&engine.stats());
    }
}

#[test]
fn a_panicking_stage_drops_the_packet_and_goes_on() {
    let stage = |p: &mut PacketBuf| {
        if p.data().len() == 100 {
            panic!("stage bug on purpose");
        }
        Verdict::Forward
    };
    for workers in [0, 1] {
        let (dev, mut tx, mut rx) = MemoryDevice::new(256, 2048);
        let engine = Engine::builder()
            .config(config(workers))
            .stage(stage)
            .start(&dev)
            .unwrap();
        send(&mut tx, &udp4(1, 2, 0, 100 - 28));
        send(&mut tx, &udp4(1, 2, 1, 16));
        let got = recv_n(&mut rx, 1);
        assert_eq!(udp4_seq(&got[0]).2, 1);
        engine.stop().unwrap();
        let stats = engine.stats();
        assert_eq!(stats.drop_stage_panic, 1);
        assert_conserved(&stats);
    }
}

#[test]
fn too_many_stage_panics_stop_the_engine_with_an_error() {
    let stage = |_: &mut PacketBuf| -> Verdict { panic!("always") };
    let (dev, mut tx, _rx) = MemoryDevice::new(256, 2048);
    let cfg = configured(|c| {
        c.max_stage_panics = 5;
    });
    let engine = Engine::builder()
        .config(cfg)
        .stage(stage)
        .start(&dev)
        .unwrap();
    for seq in 0..10 {
        let _ = tx.send(&udp4(1, 2, seq, 16));
    }
    match engine.wait() {
        Err(EngineError::StagePanics { panics }) => assert_eq!(panics, 6),
        other => panic!("expected StagePanics, got {other:?}"),
    }
    assert_conserved(&engine.stats());
}

#[test]
fn stop_while_idle_and_restart_on_the_same_device() {
    let (dev, mut tx, mut rx) = MemoryDevice::new(256, 2048);
    for round in 0..20u64 {
        let engine = Engine::builder()
            .config(config((round % 3) as usize))
            .start(&dev)
            .unwrap();
        send(&mut tx, &udp4(1, 2, round, 16));
        let got = recv_n(&mut rx, 1);
        assert_eq!(udp4_seq(&got[0]).2, round);
        // Let every actor go idle and park before stopping.
        std::thread::sleep(std::time::Duration::from_millis(2));
        engine.stop().unwrap();
        let stats = engine.stats();
        assert_eq!((stats.rx_packets, stats.tx_packets), (1, 1));
        assert_conserved(&stats);
    }
}

#[test]
fn stop_under_load_accounts_for_every_packet() {
    for workers in [0, 1, 2] {
        let (dev, mut tx, mut rx) = MemoryDevice::new(512, 2048);
        let engine = Arc::new(
            Engine::builder()
                .config(config(workers))
                .stage(BuiltinStage::Reflect)
                .start(&dev)
                .unwrap(),
        );
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seq = 0u64;
                let packet = udp4(5, 6, 0, 64);
                while !stop.load(Ordering::Relaxed) {
                    let _ = tx.send(&packet);
                    while rx.recv_with(|_| ()).is_some() {}
                    seq += 1;
                }
                seq
            })
        };
        assert!(eventually(|| engine.stats().tx_packets > 10_000));
        engine.stop().unwrap();
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap();
        let stats = engine.stats();
        assert_eq!(stats.in_flight(), 0);
        assert_conserved(&stats);
    }
}

#[test]
fn concurrent_stoppers_all_return_and_one_joins() {
    let (dev, _tx, _rx) = MemoryDevice::new(16, 2048);
    let engine = Arc::new(Engine::builder().config(config(2)).start(&dev).unwrap());
    let waiter = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.wait())
    };
    let stoppers: Vec<_> = (0..4)
        .map(|_| {
            let engine = engine.clone();
            std::thread::spawn(move || engine.stop())
        })
        .collect();
    for s in stoppers {
        s.join().unwrap().unwrap();
    }
    waiter.join().unwrap().unwrap();
    // Stopped means the device halves are released: it can be opened again.
    Engine::builder().start(&dev).unwrap().stop().unwrap();
}

#[test]
fn stop_from_inside_a_stage_requests_the_stop_and_returns_an_error() {
    let slot: Arc<parking_lot::Mutex<Option<Arc<Engine>>>> = Arc::default();
    let seen: Arc<parking_lot::Mutex<Option<Result<(), EngineError>>>> = Arc::default();
    let stage = {
        let (slot, seen) = (slot.clone(), seen.clone());
        move |_: &mut PacketBuf| {
            if let Some(engine) = slot.lock().as_ref() {
                *seen.lock() = Some(engine.stop());
            }
            Verdict::Forward
        }
    };
    for workers in [0, 1] {
        let (dev, mut tx, _rx) = MemoryDevice::new(16, 2048);
        let engine = Arc::new(
            Engine::builder()
                .config(config(workers))
                .stage(stage.clone())
                .start(&dev)
                .unwrap(),
        );
        *slot.lock() = Some(engine.clone());
        send(&mut tx, &udp4(1, 2, 0, 16));
        assert!(
            engine.wait().is_ok(),
            "the stage's stop request ends the run"
        );
        assert!(matches!(
            seen.lock().take(),
            Some(Err(EngineError::StopFromEngineThread))
        ));
        slot.lock().take();
    }
}

#[test]
fn device_faults_per_packet_are_counted_and_fatal_ones_stop_the_engine() {
    let plan = FaultPlan::new();
    let (mem, mut tx, mut rx) = MemoryDevice::new(256, 2048);
    let dev = FaultyDevice::new(mem, plan.clone());
    let engine = Engine::builder().config(config(1)).start(&dev).unwrap();

    plan.fail_sends(3, libc::EINVAL);
    plan.short_sends(2);
    for seq in 0..10 {
        send(&mut tx, &udp4(1, 2, seq, 16));
    }
    assert_eq!(recv_n(&mut rx, 5).len(), 5);
    assert!(
        eventually(|| engine.stats().drop_write_error == 5),
        "{:?}",
        engine.stats()
    );

    plan.fail_receives(50, libc::EAGAIN);
    send(&mut tx, &udp4(1, 2, 10, 16));
    assert_eq!(recv_n(&mut rx, 1).len(), 1, "an EAGAIN burst is not fatal");
    assert!(!engine.is_stopping());

    plan.fail_receives(1, libc::EIO);
    send(&mut tx, &udp4(1, 2, 11, 16));
    match engine.wait() {
        Err(EngineError::Device(e)) => assert_eq!(e.raw_os_error(), Some(libc::EIO)),
        other => panic!("expected a device error, got {other:?}"),
    }
    assert_conserved(&engine.stats());
}

#[test]
fn latency_is_answered_while_parked_and_kept_after_stop() {
    let (dev, mut tx, mut rx) = MemoryDevice::new(256, 2048);
    let engine = Engine::builder().config(config(1)).start(&dev).unwrap();
    for seq in 0..50 {
        send(&mut tx, &udp4(1, 2, seq, 16));
    }
    assert_eq!(recv_n(&mut rx, 50).len(), 50);
    // Give every actor time to park, then ask: the writer must answer anyway.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let running = engine.latency().unwrap();
    assert_eq!(running.engine.percentiles().count, 50);
    assert_eq!(running.stage.percentiles().count, 50);
    engine.stop().unwrap();
    let after = engine.latency().unwrap();
    assert_eq!(after.engine.percentiles().count, 50);
    assert!(!after.engine.to_v2_deflate_base64().is_empty());
}

#[test]
fn invalid_config_is_an_error_not_a_panic() {
    let (dev, _tx, _rx) = MemoryDevice::new(16, 2048);
    let cfg = configured(|c| {
        c.mtu = 1 << 40;
    });
    match Engine::builder().config(cfg).start(&dev) {
        Err(EngineError::Config(e)) => assert!(e.to_string().contains("mtu")),
        other => panic!("expected a config error, got {:?}", other.err()),
    }
}

/// A two-way stage that forwards outbound packets, holds the one sized `HOLD`, and panics on
/// the one sized `PANIC`, or in its timers once `timer_panics` is set.
struct Fragile {
    timer_panics: bool,
}

const HOLD: usize = 60;
const PANIC: usize = 100;

impl DuplexStage for Fragile {
    fn process(&self, _: Direction, p: &mut PacketBuf, _: &mut Emitter<'_>) -> Action {
        match p.data().len() {
            HOLD => Action::Hold,
            PANIC => panic!("tunnel bug on purpose"),
            _ => Action::Forward,
        }
    }
    fn on_deadline(&self, _: &mut Emitter<'_>) {
        panic!("timer bug on purpose");
    }
    fn next_deadline(&self) -> Option<std::time::Instant> {
        self.timer_panics.then(std::time::Instant::now)
    }
}

#[test]
fn a_panicking_two_way_stage_stops_the_engine_with_an_error() {
    for (workers, timer_panics) in [(0, false), (1, false), (0, true)] {
        let (inside, mut app_tx, app_rx) = MemoryDevice::new(256, 2048);
        let (outside, _, mut net_rx) = MemoryDevice::new(256, 2048);
        let engine = Engine::builder()
            .config(config(workers))
            .start_tunnel_halves(
                Fragile { timer_panics },
                inside.open().unwrap(),
                outside.open().unwrap(),
            )
            .unwrap();
        let during = if timer_panics {
            "in its timers"
        } else {
            send(&mut app_tx, &udp4(1, 2, 0, 16));
            send(&mut app_tx, &udp4(1, 2, 1, HOLD - 28));
            assert_eq!(udp4_seq(&recv_n(&mut net_rx, 1)[0]).2, 0);
            send(&mut app_tx, &udp4(1, 2, 2, PANIC - 28));
            "on an outbound packet"
        };
        match engine.wait() {
            Err(EngineError::DuplexStagePanicked { during: d }) => assert_eq!(d, during),
            other => panic!("expected DuplexStagePanicked, got {other:?}"),
        }
        let error = engine.stop().unwrap_err().to_string();
        assert!(
            error.contains("panicked") && error.contains(during),
            "{error}"
        );
        let out = engine.direction_stats(Direction::Outbound);
        assert_conserved(&out);
        assert_eq!(out.held, 0, "{out:?}");
        if !timer_panics {
            // The packet it panicked on, and the one it held (dropped at stop).
            assert_eq!((out.drop_stage_panic, out.drop_stopped), (1, 1), "{out:?}");
        }
        assert_eq!(app_rx.pending(), 0);
    }
}

/// For every packet it takes in, emits `BURST` copies toward the outside and consumes the
/// packet: a burst past the default reserve (one batch).
struct Burst;

/// Past the default batch (64), so past the reserve a stage that names no burst gets.
const BURST: usize = 3 * 64 + 1;

impl DuplexStage for Burst {
    fn process(&self, _: Direction, p: &mut PacketBuf, out: &mut Emitter<'_>) -> Action {
        let bytes = p.data().to_vec();
        for _ in 0..BURST {
            out.emit(tunpipe::Side::Outside, |b| {
                b.data_mut()[..bytes.len()].copy_from_slice(&bytes);
                b.truncate(bytes.len()).is_ok()
            });
        }
        Action::Consume
    }
    fn on_deadline(&self, _: &mut Emitter<'_>) {}
    fn next_deadline(&self) -> Option<std::time::Instant> {
        None
    }
    fn burst(&self) -> usize {
        BURST
    }
}

#[test]
fn a_burst_the_stage_names_goes_out_whole_past_the_default_reserve() {
    // The engine sizes each emitting thread's spare buffers and the room in its rings from the
    // stage's burst: every packet of a burst larger than a batch goes out, none is dropped
    // for want of a buffer or of ring room.
    assert_eq!(Config::default().batch, 64);
    for workers in [0, 1, 2] {
        let (inside, mut app_tx, _app_rx) = MemoryDevice::new(64, 2048);
        let (outside, _, mut net_rx) = MemoryDevice::new(2 * BURST, 2048);
        let engine = Engine::builder()
            .config(config(workers))
            .start_tunnel_halves(Burst, inside.open().unwrap(), outside.open().unwrap())
            .unwrap();
        send(&mut app_tx, &udp4(1, 2, 7, 16));
        assert!(eventually(|| engine.stats().tx_packets
            + engine.stats().dropped()
            >= BURST as u64));
        engine.stop().unwrap();
        let out = engine.direction_stats(Direction::Outbound);
        let got = recv_n(&mut net_rx, out.tx_packets as usize);
        assert_eq!(got.len() as u64, out.tx_packets, "{out:?}");
        assert_eq!(
            (out.originated, out.drop_no_buffer, out.drop_ring_full),
            (BURST as u64, 0, 0),
            "workers {workers}: {out:?}"
        );
    }
}

/// The two ways a packet reaches the device keep one order: past the ring (the reader sends
/// a sparse packet itself while the writer sleeps), through it (bursts), and the switch
/// between them, also while a stop comes in the middle of a burst. Numbered packets of one
/// flow are sent in a pattern of sparse packets and bursts; every run must deliver them in
/// order, none twice, exactly as many as the engine counts written, and balance.
#[test]
fn numbered_packets_keep_their_order_past_the_ring_through_it_and_across_a_stop() {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;
    let (mut direct, mut written) = (0, 0);
    for workers in [0, 1] {
        for run in 0..6u64 {
            let (dev, mut tx, mut rx) = MemoryDevice::new(4096, 2048);
            let engine = Engine::builder()
                .config(config(workers))
                .stage(BuiltinStage::Reflect)
                .start(&dev)
                .unwrap();
            let stop_sending = AtomicBool::new(false);
            let received = std::thread::scope(|s| {
                let receiver = s.spawn(|| {
                    let mut seqs = Vec::new();
                    loop {
                        match rx.recv_with(|p| udp4_seq(p).2) {
                            Some(seq) => seqs.push(seq),
                            None if stop_sending.load(Ordering::Acquire) => {
                                // Whatever the engine wrote before it stopped is queued.
                                while let Some(seq) = rx.recv_with(|p| udp4_seq(p).2) {
                                    seqs.push(seq);
                                }
                                return seqs;
                            }
                            None => std::thread::yield_now(),
                        }
                    }
                });
                let sender = s.spawn(|| {
                    let mut seq = 0;
                    // Sparse packets (the writer sleeps between them), then a burst (the
                    // ring carries it), over and over, until the engine is stopped.
                    while !stop_sending.load(Ordering::Acquire) {
                        for _ in 0..5 {
                            if tx.send(&udp4(1000, 7, seq, 32)).is_ok() {
                                seq += 1;
                            }
                            std::thread::sleep(Duration::from_micros(500));
                        }
                        for _ in 0..200 {
                            if tx.send(&udp4(1000, 7, seq, 32)).is_ok() {
                                seq += 1;
                            }
                        }
                    }
                    seq
                });
                // The stop lands at a different point of the pattern in each run.
                std::thread::sleep(Duration::from_millis(40 + 7 * run));
                engine.stop().unwrap();
                stop_sending.store(true, Ordering::Release);
                let sent = sender.join().unwrap();
                (receiver.join().unwrap(), sent)
            });
            let (seqs, sent) = received;
            let stats = engine.stats();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "out of order or twice (workers {workers}, run {run})"
            );
            assert_eq!(seqs.len() as u64, stats.tx_packets, "{stats:?}");
            assert!(stats.rx_packets <= sent);
            assert_conserved(&stats);
            direct += stats.tx_direct;
            written += stats.tx_packets;
        }
    }
    // Both ways were taken, and the test exercised the switch between them.
    assert!(direct > 0, "no packet went past the ring");
    assert!(direct < written, "no packet went through the ring");
}
