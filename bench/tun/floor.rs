//! The `floor` section: what the four syscalls of one round trip cost.

use crate::contenders::{HEADROOM, MTU, TAILROOM};
use crate::Timing;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tunpipe::stage::Reflect;
use tunpipe::{PacketBuf, Stage, Verdict};
use tunpipe_testkit::load::{client_socket, LOCAL};
use tunpipe_testkit::report::print_table;
use tunpipe_testkit::tun::tun;

/// The syscalls of one round trip, each timed in batches of 64: UDP send into the TUN, TUN
/// read, TUN write of the reflected packet, UDP receive of it.
pub fn floor(t: &Timing) -> Value {
    let mut rows = Vec::new();
    let mut cells = Vec::new();
    for payload in [64usize, 1400] {
        let tun = tun("tpfloor", LOCAL).expect("tun");
        let socket = client_socket().expect("socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let out = vec![0u8; payload];
        let mut buf = PacketBuf::new(HEADROOM, MTU + 1, TAILROOM);
        let mut reply = Vec::new();
        const BATCH: usize = 64;
        let (mut send_ns, mut read_ns, mut write_ns, mut recv_ns, mut n) = (0u128, 0, 0, 0, 0);
        let mut inbuf = vec![0u8; 2048];
        let deadline = Instant::now() + t.measure.max(Duration::from_millis(300));
        while Instant::now() < deadline {
            let t0 = Instant::now();
            for _ in 0..BATCH {
                socket.send(&out).expect("send");
            }
            let t1 = Instant::now();
            let mut ours = 0;
            while ours < BATCH {
                let len = tun
                    .recv(&mut buf.storage_mut()[HEADROOM..HEADROOM + MTU + 1])
                    .expect("tun read");
                buf.set_window(HEADROOM, len).expect("fits");
                // The kernel may queue a packet of its own (IPv6 router solicitation...).
                if buf.data().first() != Some(&0x45) || buf.data().get(9) != Some(&17) {
                    continue;
                }
                ours += 1;
                if reply.is_empty() && Reflect.process(&mut buf) == Verdict::Forward {
                    reply = buf.data().to_vec();
                }
            }
            let t2 = Instant::now();
            for _ in 0..BATCH {
                tun.send(&reply).expect("tun write");
            }
            let t3 = Instant::now();
            for _ in 0..BATCH {
                socket.recv(&mut inbuf).expect("recv");
            }
            let t4 = Instant::now();
            send_ns += (t1 - t0).as_nanos();
            read_ns += (t2 - t1).as_nanos();
            write_ns += (t3 - t2).as_nanos();
            recv_ns += (t4 - t3).as_nanos();
            n += BATCH as u128;
        }
        let per = |x: u128| x as f64 / n as f64;
        let (s, r, w, v) = (per(send_ns), per(read_ns), per(write_ns), per(recv_ns));
        rows.push(vec![
            payload.to_string(),
            format!("{s:.0}"),
            format!("{r:.0}"),
            format!("{w:.0}"),
            format!("{v:.0}"),
            format!("{:.0}", r + w),
            format!("{:.2}", 1e3 / (r + w)),
            format!("{:.2}", 1e3 / (s + r + w + v)),
        ]);
        cells.push(json!({
            "payload": payload,
            "udp_send_ns": s, "tun_read_ns": r, "tun_write_ns": w, "udp_recv_ns": v,
            "contender_floor_ns": r + w,
            "contender_floor_mpps": 1e3 / (r + w),
            "one_core_round_trip_mpps": 1e3 / (s + r + w + v),
            "packets": n as u64,
        }));
    }
    print_table(
        "Per-packet floor: one syscall each, ns (batches of 64, one thread)",
        &[
            "payload B",
            "UDP send",
            "TUN read",
            "TUN write",
            "UDP recv",
            "read+write",
            "read+write Mpps",
            "all four, Mpps",
        ],
        &rows,
    );
    Value::Array(cells)
}
