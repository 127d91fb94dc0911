//! A WireGuard tunnel through the C ABI on a real TUN, to wireguard-go in another network
//! namespace (`tunpipe_testkit::wgpeer`), called the way a host calls it: a peer's figures
//! (`tunpipe_engine_peer_stats`, `tunpipe_peer_stats`) before and after pings, checked
//! against what wireguard-go counts, and each way the calls refuse.
//!
//! Linux, as root: each test runs in a fresh network namespace, and shows as ignored (never
//! as passed) when the process cannot make one or wireguard-go is missing. The C host test
//! (`ffi/tests/host_test.c`) runs the same calls from C.

#[cfg(target_os = "linux")]
#[path = "misuse/c_api.rs"]
mod c_api;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
}

#[cfg(target_os = "linux")]
mod linux {
    use crate::c_api::default_config;
    use libtest_mimic::Failed;
    use std::ffi::{c_char, CStr, CString};
    use std::os::fd::{AsRawFd, RawFd};
    use std::ptr::null_mut;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    use tunpipe_ffi::*;
    use tunpipe_testkit::check::{check, eventually};
    use tunpipe_testkit::netns::{enter_fresh_netns, run_here, EtcFile, Ipv6};
    use tunpipe_testkit::thread::on_thread;
    use tunpipe_testkit::trials::{root_trials, run_one_at_a_time, Test};
    use tunpipe_testkit::tun::tun;
    use tunpipe_testkit::wgpeer::{
        wireguard_go_problem, PeerOptions, WgRig, END_V4, MTU, PEER_PORT, PEER_UNDERLAY, PEER_V4,
    };

    /// The tunnel's TUN (namespaces keep tests apart).
    const TUN: &str = "tpf0";

    pub fn main() {
        let problem = tunpipe_testkit::tun::privilege_problem().or_else(wireguard_go_problem);
        let root: [(&str, Test); 3] = [
            (
                "peer_figures_through_a_handle_match_wireguard_go_and_refuse_bad_calls",
                handle_peer_figures,
            ),
            (
                "peer_figures_of_the_start_tun_tunnel_while_running_and_after_stop",
                global_peer_figures,
            ),
            (
                "stop_tun_returns_within_50_ms_while_start_tun_waits_on_a_resolver_that_never_answers",
                stop_during_a_silent_lookup,
            ),
        ];
        run_one_at_a_time(root_trials(&root, &problem, in_fresh_netns))
    }

    /// Runs `test` in a fresh network namespace (IPv6 off, so the kernel sends nothing into
    /// the tunnel but the test's pings), under a watchdog that turns a hang into a failure.
    fn in_fresh_netns(test: Test) -> Result<(), Failed> {
        on_thread("tunnel", Some(Duration::from_secs(120)), move || {
            enter_fresh_netns(Ipv6::Off)?;
            test()
        })
    }

    fn last_error() -> String {
        let mut buf = [0 as c_char; 512];
        // SAFETY: `buf` holds `buf.len()` bytes.
        unsafe { tunpipe_last_error(buf.as_mut_ptr(), buf.len()) };
        // SAFETY: tunpipe_last_error NUL-terminates within the buffer.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// The end's TUN, addressed and up with the tunnel's MTU; the host keeps it, the engine
    /// works on a dup of its fd.
    fn end_tun() -> Result<tun_rs::SyncDevice, Failed> {
        let device = tun(TUN, END_V4)?;
        run_here(&["ip", "link", "set", TUN, "mtu", &MTU.to_string()])?;
        Ok(device)
    }

    /// Peer `index` of `engine` (`None`: the `start_tun` tunnel), and the call's code.
    fn peer(engine: Option<*mut TunpipeEngine>, index: u32) -> (i32, TunpipePeerStats) {
        let mut p = TunpipePeerStats::default();
        // SAFETY: a live handle (or none) and a sized struct.
        let code = unsafe {
            match engine {
                Some(e) => tunpipe_engine_peer_stats(e, index, &mut p),
                None => tunpipe_peer_stats(index, &mut p),
            }
        };
        (code, p)
    }

    fn peers_counted(engine: Option<*mut TunpipeEngine>) -> Result<u32, Failed> {
        let mut t = TunpipeTunnelStats::default();
        // SAFETY: as above.
        let code = unsafe {
            match engine {
                Some(e) => tunpipe_engine_tunnel_stats(e, &mut t),
                None => tunpipe_tunnel_stats(&mut t),
            }
        };
        check(code == TUNPIPE_OK, || {
            format!("tunnel stats: {code} ({})", last_error())
        })?;
        Ok(t.peers)
    }

    fn endpoint(p: &TunpipePeerStats) -> String {
        // SAFETY: tunpipe NUL-terminates the field within its 64 bytes.
        unsafe { CStr::from_ptr(p.endpoint.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// What every copy of the rig's one peer shows, traffic or not.
    fn is_the_rig_peer(rig: &WgRig, p: &TunpipePeerStats) -> Result<(), Failed> {
        check(&p.public_key == rig.peer_keys.public.as_bytes(), || {
            "public_key is not the configured peer's".into()
        })?;
        check(
            endpoint(p) == format!("{PEER_UNDERLAY}:{PEER_PORT}"),
            || format!("endpoint {:?}", endpoint(p)),
        )?;
        check(
            p.size as usize == std::mem::size_of::<TunpipePeerStats>(),
            || format!("size {}", p.size),
        )?;
        let drops = p.drop_auth_failure
            + p.drop_replay
            + p.drop_not_allowed
            + p.drop_no_session
            + p.drop_no_endpoint
            + p.drop_no_handshake
            + p.drop_garbage;
        check(p.dropped == drops, || {
            format!("dropped {} != {drops}", p.dropped)
        })
    }

    /// After pings both ways: a handshake, within the last minute, and messages counted.
    fn shook_hands_and_carried(p: &TunpipePeerStats, pings: u64) -> Result<(), Failed> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        check(p.handshakes >= 1, || format!("handshakes {}", p.handshakes))?;
        check(
            p.last_handshake_sec > now - 60 && p.last_handshake_sec <= now,
            || format!("last_handshake_sec {} (now {now})", p.last_handshake_sec),
        )?;
        check(p.last_handshake_nsec < 1_000_000_000, || {
            format!("last_handshake_nsec {}", p.last_handshake_nsec)
        })?;
        // A handshake message each way, and an echo and its reply per ping.
        check(p.tx_packets > pings && p.rx_packets > pings, || {
            format!("tx {} rx {} messages", p.tx_packets, p.rx_packets)
        })?;
        // A data message is at least 32 bytes of header and tag around its packet.
        check(
            p.tx_bytes >= 32 * p.tx_packets && p.rx_bytes >= 32 * p.rx_packets,
            || format!("tx {} rx {} bytes", p.tx_bytes, p.rx_bytes),
        )
    }

    fn start_handle(config: &TunpipeConfig, fd: RawFd) -> Result<*mut TunpipeEngine, Failed> {
        let mut e = null_mut();
        // SAFETY: valid pointers; the config's text outlives the call.
        let code = unsafe { tunpipe_engine_start(config, fd, &mut e) };
        check(code == TUNPIPE_OK && !e.is_null(), || {
            format!("tunpipe_engine_start: {code} ({})", last_error())
        })?;
        Ok(e)
    }

    fn handle_peer_figures() -> Result<(), Failed> {
        let rig = WgRig::up(&PeerOptions::default())?;
        let tun = end_tun()?;
        let text = CString::new(rig.config_text())?;
        let mut c = default_config();
        c.wireguard_config = text.as_ptr();
        let e = start_handle(&c, tun.as_raw_fd())?;
        let result = (|| -> Result<(), Failed> {
            check(peers_counted(Some(e))? == 1, || "peers".into())?;
            // Before any traffic: the configured peer, and "never" as 0.
            let (code, before) = peer(Some(e), 0);
            check(code == TUNPIPE_OK, || format!("peer 0: {code}"))?;
            is_the_rig_peer(&rig, &before)?;
            check(
                before.handshakes == 0
                    && (before.last_handshake_sec, before.last_handshake_nsec) == (0, 0),
                || format!("a handshake before any traffic: {before:?}"),
            )?;

            rig.ping_all_from_end(PEER_V4, 5)?;
            let (code, after) = peer(Some(e), 0);
            check(code == TUNPIPE_OK, || format!("peer 0: {code}"))?;
            is_the_rig_peer(&rig, &after)?;
            shook_hands_and_carried(&after, 5)?;
            // Bytes as `wg show` counts them: what this end sent is what wireguard-go
            // received, byte for byte, and the other way round (once both settle).
            let agree = eventually(|| {
                let (_, here) = peer(Some(e), 0);
                rig.peer_view().is_ok_and(|there| {
                    here.tx_bytes == there.rx_bytes && here.rx_bytes == there.tx_bytes
                })
            });
            check(agree, || {
                format!(
                    "tunpipe {:?} against wireguard-go's {:?}",
                    peer(Some(e), 0).1,
                    rig.peer_view()
                )
            })?;

            refusals(e)?;

            // SAFETY: a live handle.
            let code = unsafe { tunpipe_engine_stop(e) };
            check(code == TUNPIPE_OK, || format!("stop: {code}"))?;
            let (code, stopped) = peer(Some(e), 0);
            check(code == TUNPIPE_OK, || format!("peer 0 after stop: {code}"))?;
            check(stopped.tx_bytes >= after.tx_bytes, || {
                "figures after stop went back".into()
            })
        })();
        // SAFETY: a live handle no other thread uses.
        unsafe { tunpipe_engine_free(e) };
        result?;

        // An engine that runs no tunnel has no peers to tell of.
        let e = start_handle(&default_config(), tun.as_raw_fd())?;
        let (code, _) = peer(Some(e), 0);
        // SAFETY: a live handle no other thread uses.
        unsafe { tunpipe_engine_free(e) };
        check(code == TUNPIPE_ERR_UNSUPPORTED, || {
            format!("peer stats without a tunnel: {code}")
        })
    }

    /// The ways `tunpipe_engine_peer_stats` refuses, on a tunnel with one peer.
    fn refusals(e: *mut TunpipeEngine) -> Result<(), Failed> {
        // Past the end: the end of a host's loop. `*out` is left as it was.
        for index in [1, u32::MAX] {
            let mut p = TunpipePeerStats {
                handshakes: 77,
                ..Default::default()
            };
            // SAFETY: a live handle and a sized struct.
            let code = unsafe { tunpipe_engine_peer_stats(e, index, &mut p) };
            check(code == TUNPIPE_ERR_NOT_FOUND && p.handshakes == 77, || {
                format!("index {index}: {code}, handshakes {}", p.handshakes)
            })?;
            let message = last_error();
            check(
                message.starts_with("tunpipe_engine_peer_stats")
                    && message.contains(&format!("no peer {index}")),
                || message.clone(),
            )?;
        }
        // SAFETY: NULL is what is tested; it is refused.
        let code = unsafe { tunpipe_engine_peer_stats(e, 0, null_mut()) };
        check(code == TUNPIPE_ERR_NULL_POINTER, || {
            format!("NULL out: {code}")
        })?;
        // A size below the header is refused, before the index is even looked at: a loop
        // over a struct never sized must fail, not end quietly as if there were no peers.
        for index in [0, 1] {
            let mut p = TunpipePeerStats {
                size: 4,
                ..Default::default()
            };
            // SAFETY: a live handle and a whole struct, whose size field is what is tested.
            let code = unsafe { tunpipe_engine_peer_stats(e, index, &mut p) };
            check(code == TUNPIPE_ERR_STRUCT_SIZE, || {
                format!("size 4, index {index}: {code}")
            })?;
        }
        // An older, shorter struct (one that ends with the public key) gets only its prefix.
        let known = std::mem::offset_of!(TunpipePeerStats, endpoint);
        let mut p = TunpipePeerStats {
            size: known as u32,
            endpoint: [0x55; 64],
            handshakes: 77,
            ..Default::default()
        };
        // SAFETY: a live handle and a whole struct.
        let code = unsafe { tunpipe_engine_peer_stats(e, 0, &mut p) };
        check(
            code == TUNPIPE_OK
                && p.size as usize == known
                && p.public_key != [0; 32]
                && p.endpoint == [0x55; 64]
                && p.handshakes == 77,
            || format!("a {known}-byte struct: {code}, {p:?}"),
        )
    }

    /// Makes the wg-quick `text` the tunnel the next `start_tun` runs.
    fn set_global_tunnel(text: &str) -> Result<(), Failed> {
        let text = CString::new(text)?;
        let mut c = default_config();
        c.wireguard_config = text.as_ptr();
        // SAFETY: a valid config; the text is copied before the call returns.
        let code = unsafe { tunpipe_set_config(&c) };
        check(code == TUNPIPE_OK, || format!("set_config: {code}"))
    }

    fn global_peer_figures() -> Result<(), Failed> {
        let rig = WgRig::up(&PeerOptions::default())?;
        let tun = end_tun()?;
        set_global_tunnel(&rig.config_text())?;
        let fd = tun.as_raw_fd();
        let start = std::thread::spawn(move || start_tun(fd));
        // start_tun returns only at stop: wait until it has claimed the slot.
        check(eventually(|| peers_counted(None).is_ok()), || {
            format!("start_tun never ran ({})", last_error())
        })?;
        let result = (|| -> Result<(), Failed> {
            rig.ping_all_from_end(PEER_V4, 3)?;
            let (code, running) = peer(None, 0);
            check(code == TUNPIPE_OK, || format!("peer 0: {code}"))?;
            is_the_rig_peer(&rig, &running)?;
            shook_hands_and_carried(&running, 3)?;
            let (code, _) = peer(None, 1);
            check(code == TUNPIPE_ERR_NOT_FOUND, || format!("peer 1: {code}"))?;
            check(last_error().starts_with("tunpipe_peer_stats"), last_error)?;
            // SAFETY: NULL is what is tested; it is refused.
            let code = unsafe { tunpipe_peer_stats(0, null_mut()) };
            check(code == TUNPIPE_ERR_NULL_POINTER, || {
                format!("NULL out: {code}")
            })?;
            Ok(())
        })();
        let stopped = stop_tun();
        let started = start.join().map_err(|_| "start_tun's thread panicked")?;
        // SAFETY: a default config, back for whoever runs start_tun next.
        unsafe { tunpipe_set_config(&default_config()) };
        result?;
        check(stopped == TUNPIPE_OK && started == TUNPIPE_OK, || {
            format!("stop_tun {stopped}, start_tun {started}")
        })?;
        // The last tunnel's figures stay readable after stop_tun.
        let (code, after) = peer(None, 0);
        check(code == TUNPIPE_OK, || format!("peer 0 after stop: {code}"))?;
        is_the_rig_peer(&rig, &after)?;
        shook_hands_and_carried(&after, 3)
    }

    fn stop_during_a_silent_lookup() -> Result<(), Failed> {
        // A DNS server that reads every query and answers none, as this thread's only
        // resolver (the engine's threads inherit the mount).
        run_here(&["ip", "link", "set", "lo", "up"])?;
        let silent = std::net::UdpSocket::bind("127.0.0.1:53")?;
        let _resolv = EtcFile::mount(
            "/etc/resolv.conf",
            "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n",
        )?;
        let tun = end_tun()?;
        let keys = [
            tunpipe::wireguard::Key::generate(),
            tunpipe::wireguard::Key::generate(),
        ];
        let text = format!(
            "[Interface]\nPrivateKey = {}\n[Peer]\nPublicKey = {}\n\
             Endpoint = nobody-answers.tunpipe.test:51820\nAllowedIPs = 10.99.0.2/32\n",
            keys[0].to_base64(),
            keys[1].public_key().to_base64()
        );
        set_global_tunnel(&text)?;
        let fd = tun.as_raw_fd();
        let start = std::thread::spawn(move || start_tun(fd));
        // The query arrives: start_tun is waiting on the resolver.
        silent.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut query = [0u8; 512];
        let asked = silent.recv_from(&mut query);
        let stopping = std::time::Instant::now();
        let stopped = stop_tun();
        let took = stopping.elapsed();
        let started = start.join().map_err(|_| "start_tun's thread panicked")?;
        // SAFETY: a default config, back for whoever runs start_tun next.
        unsafe { tunpipe_set_config(&default_config()) };
        check(asked.is_ok(), || format!("no DNS query came: {asked:?}"))?;
        println!("stop_tun during the lookup returned after {took:?}");
        check(stopped == TUNPIPE_OK && started == TUNPIPE_OK, || {
            format!("stop_tun {stopped}, start_tun {started}: {}", last_error())
        })?;
        check(took <= Duration::from_millis(50), || {
            format!("stop_tun took {took:?}")
        })?;
        // Nothing runs, and the slot is free for the next start.
        check(tunpipe_rebind() == TUNPIPE_ERR_NOT_RUNNING, || {
            "an engine runs after stop_tun".into()
        })
    }
}
