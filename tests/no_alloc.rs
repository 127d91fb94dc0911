//! After start-up the hot path allocates nothing: a counting global allocator sees zero
//! allocations while packets flow through the whole pipeline on the in-memory device.
//!
//! The counter is process-wide, so the test driver itself must not allocate either: packets
//! are built before counting starts and the in-memory peer recycles fixed slots.

use std::time::{Duration, Instant};
use tunpipe::{BuiltinStage, Config, Engine, MemoryDevice};
use tunpipe_testkit::alloc::{allocations, Counting};
use tunpipe_testkit::packets::udp4;

#[global_allocator]
static GLOBAL: Counting = Counting;

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
