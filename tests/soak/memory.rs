//! The soak and stress tests on the in-memory device (see main.rs).

use libtest_mimic::Failed;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunpipe::{BuiltinStage, Engine, EngineError, MemoryDevice};
use tunpipe_testkit::check::{check, conserved};
use tunpipe_testkit::config;
use tunpipe_testkit::memory::{recv_n, send};
use tunpipe_testkit::packets::udp4;
use tunpipe_testkit::proc::{assert_no_leak, resources, settled_resources};
use tunpipe_testkit::thread::on_thread;
use tunpipe_testkit::trials::{env_or, plain_trials, run_one_at_a_time, Test};

pub fn main() {
    let tests: [(&str, Test); 2] = [
        (
            "memory_start_stop_cycles_leak_no_threads_fds_or_memory",
            memory_cycles,
        ),
        (
            "stress_stop_races_bursts_snapshots_and_stats",
            stress_composition,
        ),
    ];
    run_one_at_a_time(plain_trials(&tests))
}

/// Start/stop cycles on the in-memory device: workers 0, 1 and 2 in turn, a few packets
/// through every fourth cycle. `TUNPIPE_SOAK_CYCLES` sets the count (default: the issue's
/// full 10,000, about 10 s in release on a 2-core VM).
fn memory_cycles() -> Result<(), Failed> {
    let cycles = env_or("TUNPIPE_SOAK_CYCLES", 10_000).max(1);
    let warmup = (cycles / 4).clamp(1, 500);
    let started = Instant::now();
    let mut baseline = None;
    // One long-lived device (reopened every cycle) plus a fresh one every 16th cycle, so that
    // both restart-on-the-same-device and device teardown are soaked.
    let (long_dev, mut long_tx, mut long_rx) = MemoryDevice::new(64, 2048);
    let mut moved = 0u64;
    for cycle in 0..cycles {
        if cycle == warmup {
            baseline = Some(settled_resources(resources().threads));
        }
        let workers = (cycle % 3) as usize;
        let fresh = cycle % 16 == 15;
        let mut fresh_dev = fresh.then(|| MemoryDevice::new(16, 2048));
        let engine = {
            let builder = Engine::builder()
                .config(config(workers))
                .stage(BuiltinStage::Reflect);
            match &fresh_dev {
                Some((dev, _, _)) => builder.start(dev)?,
                None => builder.start(&long_dev)?,
            }
        };
        if cycle % 4 == 0 {
            let (tx, rx) = match &mut fresh_dev {
                Some((_, tx, rx)) => (tx, rx),
                None => (&mut long_tx, &mut long_rx),
            };
            for seq in 0..4 {
                send(tx, &udp4(1000 + seq as u16, 7, seq, 32));
            }
            let got = recv_n(rx, 4);
            check(got.len() == 4, || {
                format!("cycle {cycle}: {} of 4 replies", got.len())
            })?;
            moved += 4;
        }
        engine.stop()?;
        conserved(&engine.stats())?;
    }
    let elapsed = started.elapsed();
    let before = baseline.unwrap_or_else(resources);
    let after = settled_resources(before.threads);
    eprintln!(
        "{cycles} memory start/stop cycles in {:.1} s ({:.0} µs each), {moved} packets reflected",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / cycles as f64
    );
    assert_no_leak("memory cycles (after warm-up)", before, after)
}

/// The real composition under races: every run starts an engine (0-3 workers) on the
/// in-memory device, then a sender bursts packets, a receiver drains, one thread asks for
/// latency snapshots, one reads stats, and a stopper stops after a short, varying delay,
/// racing everything. Each run must finish (watchdog) and account for every packet: read =
/// written + dropped, and the peer receives exactly what the engine wrote.
fn stress_composition() -> Result<(), Failed> {
    let runs = env_or("TUNPIPE_STRESS_RUNS", 300);
    let started = Instant::now();
    let mut totals = (0u64, 0u64, 0u64);
    for run in 0..runs {
        // A hang fails the run (the limit is generous: it is not a timing assertion).
        let (rx, tx, snaps) = on_thread(
            &format!("stress run {run}"),
            Some(Duration::from_secs(60)),
            move || stress_run(run),
        )?;
        totals.0 += rx;
        totals.1 += tx;
        totals.2 += snaps;
    }
    eprintln!(
        "{runs} stress runs in {:.1} s: {} packets read, {} written, {} latency snapshots answered",
        started.elapsed().as_secs_f64(),
        totals.0,
        totals.1,
        totals.2
    );
    check(totals.1 > 0 && totals.2 > 0, || {
        "the stress runs moved no packets or answered no snapshot".into()
    })
}

fn stress_run(run: u64) -> Result<(u64, u64, u64), Failed> {
    let workers = (run % 4) as usize;
    let mut c = config(workers);
    // Small rings and batches make full rings, pool stalls and parking common.
    c.ring_capacity = [4, 16, 256][(run % 3) as usize];
    c.batch = [1, 8, 64][(run / 3 % 3) as usize];
    c.yields = (run % 3) as u32;
    c.spin = Duration::from_micros(run % 2 * 20);
    let (dev, mut peer_tx, mut peer_rx) = MemoryDevice::new(64, 2048);
    let engine = Arc::new(
        Engine::builder()
            .config(c)
            .stage(BuiltinStage::Reflect)
            .start(&dev)?,
    );
    let done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));

    let sender = std::thread::spawn({
        let done = done.clone();
        move || {
            let mut seq = 0u64;
            while !done.load(Ordering::Relaxed) {
                // Bursts of up to 32, then a pause, so actors both race and park.
                for _ in 0..(seq % 32) {
                    if peer_tx.send(&udp4((seq % 7) as u16, 9, seq, 16)).is_ok() {
                        seq += 1;
                    }
                }
                seq += 1;
                if seq % 3 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                } else {
                    std::thread::yield_now();
                }
            }
        }
    });
    let receiver = std::thread::spawn({
        let (done, received) = (done.clone(), received.clone());
        move || {
            let mut bad = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire);
                match peer_rx.recv_with(|p| p.len() >= 36 && p[12..16] == [10, 0, 0, 2]) {
                    Some(ok) => {
                        received.fetch_add(1, Ordering::Relaxed);
                        bad += u64::from(!ok);
                    }
                    None if finished => break,
                    None => std::thread::yield_now(),
                }
            }
            bad
        }
    });
    let snapshots = std::thread::spawn({
        let (engine, done) = (engine.clone(), done.clone());
        move || -> Result<u64, String> {
            let mut answered = 0u64;
            while !done.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let answer = engine.latency();
                // Not a timing test: an answer takes microseconds; a request stranded in the
                // writer's mailbox by the stop waits out latency()'s whole 5 s timeout.
                if asked.elapsed() > Duration::from_secs(1) {
                    return Err(format!(
                        "latency() blocked {:?} (returned {:?})",
                        asked.elapsed(),
                        answer.as_ref().err()
                    ));
                }
                match answer {
                    Ok(_) => answered += 1,
                    // Refused only because a stop is under way, never because the writer
                    // missed its doorbell while the engine runs.
                    Err(EngineError::Stopping) if engine.is_stopping() => {}
                    Err(e) => return Err(format!("latency() while running: {e:?}")),
                }
            }
            Ok(answered)
        }
    });
    let stats_reader = std::thread::spawn({
        let (engine, done) = (engine.clone(), done.clone());
        move || -> Result<(), String> {
            let mut last = 0u64;
            while !done.load(Ordering::Relaxed) {
                let s = engine.stats();
                // Counters only grow.
                if s.rx_packets < last {
                    return Err(format!("rx_packets went back: {last} -> {}", s.rx_packets));
                }
                last = s.rx_packets;
                std::thread::yield_now();
            }
            Ok(())
        }
    });
    // The stop races all of the above after 0-3 ms.
    std::thread::sleep(Duration::from_micros(run % 7 * 500));
    let stoppers: Vec<_> = (0..1 + run % 3)
        .map(|_| {
            let engine = engine.clone();
            std::thread::spawn(move || engine.stop())
        })
        .collect();
    for s in stoppers {
        s.join().map_err(|_| "stopper panicked")??;
    }
    done.store(true, Ordering::Release);
    sender.join().map_err(|_| "sender panicked")?;
    let bad = receiver.join().map_err(|_| "receiver panicked")?;
    let answered = snapshots.join().map_err(|_| "snapshot thread panicked")??;
    stats_reader.join().map_err(|_| "stats thread panicked")??;

    let s = engine.stats();
    check(s.rx_packets == s.tx_packets + s.dropped(), || {
        format!("run {run}: conservation broken: {s:?}")
    })?;
    check(s.in_flight() == 0, || {
        format!("run {run}: in flight: {s:?}")
    })?;
    check(received.load(Ordering::Relaxed) == s.tx_packets, || {
        format!(
            "run {run}: the peer received {} packets, the engine wrote {}",
            received.load(Ordering::Relaxed),
            s.tx_packets
        )
    })?;
    check(bad == 0, || format!("run {run}: {bad} replies malformed"))?;
    // After stop the final histograms are kept and answer at once.
    let latency = engine.latency()?;
    check(
        latency.engine.percentiles().count <= s.tx_packets + s.dropped(),
        || "more latency samples than packets".into(),
    )?;
    // The device is released: it opens again.
    drop(engine);
    Engine::builder().start(&dev)?.stop()?;
    Ok((s.rx_packets, s.tx_packets, answered))
}
