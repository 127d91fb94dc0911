//! After start-up the hot path allocates nothing: a counting global allocator sees zero
//! allocations while packets flow through the whole pipeline on the in-memory device.
//!
//! The counter counts the engine's threads and the test's own, which drives the packets, so
//! the driver must not allocate either: packets are built before counting starts and the
//! in-memory peer recycles fixed slots. libtest's threads are not counted: past 60 s (a
//! loaded machine) it reports the test as slow, allocating, which once failed this test.

use std::time::{Duration, Instant};
use tunpipe::{BuiltinStage, Config, Engine, MemoryDevice};
use tunpipe_testkit::alloc::{allocations, count_only_the_engine_and_me, Counting};
use tunpipe_testkit::packets::udp4;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The count is process-wide: the tests take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Pushes `count` packets through in a closed loop with a window, without allocating.
fn run_closed_loop(
    tx: &mut tunpipe::device::PeerSender,
    rx: &mut tunpipe::device::PeerReceiver,
    packet: &[u8],
    count: u64,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut sent, mut received) = (0u64, 0u64);
    while received < count && Instant::now() < deadline {
        while sent < count && sent - received < 64 && tx.send(packet).is_ok() {
            sent += 1;
        }
        while rx.recv_with(|_| ()).is_some() {
            received += 1;
        }
        std::hint::spin_loop();
    }
    received
}

#[test]
fn the_hot_path_allocates_nothing_per_packet() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    count_only_the_engine_and_me();
    for (workers, stage) in [
        (0, BuiltinStage::Reflect),
        (1, BuiltinStage::Reflect),
        (2, BuiltinStage::Passthrough),
    ] {
        let (dev, mut tx, mut rx) = MemoryDevice::new(256, 2048);
        let mut config = Config::default();
        config.workers = workers;
        config.latency = true;
        let engine = Engine::builder()
            .config(config)
            .stage(stage)
            .start(&dev)
            .unwrap();
        let packets: Vec<Vec<u8>> = (0..4).map(|i| udp4(1000 + i, 7, 0, 64)).collect();
        // Warm up: first-use allocations (thread-locals, lazy statics) happen here.
        for p in &packets {
            assert_eq!(run_closed_loop(&mut tx, &mut rx, p, 2_000), 2_000);
        }
        // Let the actors park and wake at least once during warm-up too.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(run_closed_loop(&mut tx, &mut rx, &packets[0], 10), 10);

        let before = allocations();
        let mut moved = 0;
        for round in 0..20 {
            moved += run_closed_loop(&mut tx, &mut rx, &packets[round % 4], 5_000);
            if round % 5 == 0 {
                // Idle gaps: the park/unpark path must not allocate either.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let after = allocations();
        assert_eq!(moved, 100_000);
        assert_eq!(
            after - before,
            0,
            "{} allocations for {moved} packets with {workers} workers",
            after - before
        );
        engine.stop().unwrap();
        let stats = engine.stats();
        assert_eq!(stats.rx_packets, stats.tx_packets + stats.dropped());
    }
}

#[test]
fn the_tunnel_allocates_nothing_per_packet() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    count_only_the_engine_and_me();
    use tunpipe_testkit::packets::udp4_packet;
    use tunpipe_testkit::wg::{pair, Pair};
    for workers in [0, 1, 2] {
        // Two WireGuard ends over loopback UDP: every packet is sealed by one and opened by
        // the other, each with its own timers running.
        let Pair { mut a, mut b, .. } = pair(workers);
        let to_b: Vec<Vec<u8>> = (0..4)
            .map(|i| udp4_packet([10, 0, 0, 1], [10, 0, 0, 2], 1000 + i, 7, &[i as u8; 64]))
            .collect();
        let to_a: Vec<Vec<u8>> = (0..4)
            .map(|i| udp4_packet([10, 0, 0, 2], [10, 0, 0, 1], 1000 + i, 7, &[i as u8; 64]))
            .collect();
        // Warm up: the handshake, and first-use allocations, happen here.
        for (p, q) in to_b.iter().zip(&to_a) {
            assert_eq!(
                run_closed_loop(&mut a.app_tx, &mut b.app_rx, p, 2_000),
                2_000
            );
            assert_eq!(
                run_closed_loop(&mut b.app_tx, &mut a.app_rx, q, 2_000),
                2_000
            );
        }
        // Past the stage's timer tick (250 ms), so that the steady state includes ticks.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            run_closed_loop(&mut a.app_tx, &mut b.app_rx, &to_b[0], 10),
            10
        );

        let before = allocations();
        let mut moved = 0;
        for round in 0..20 {
            moved += run_closed_loop(&mut a.app_tx, &mut b.app_rx, &to_b[round % 4], 2_500);
            moved += run_closed_loop(&mut b.app_tx, &mut a.app_rx, &to_a[round % 4], 2_500);
            if round % 5 == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let after = allocations();
        assert_eq!(moved, 100_000);
        assert_eq!(
            after - before,
            0,
            "{} allocations for {moved} packets through the tunnel with {workers} workers",
            after - before
        );
        for end in [&a, &b] {
            end.engine.stop().unwrap();
        }
    }
}
