//! WireGuardKit's eight functions (`ffi/src/wgkit.rs`, `ffi/wireguardkit.h`) called as a host
//! calls them: what needs no TUN (misuse, the version, the logger) as any user; the handle
//! table, the `get` text and `set`'s socket changes, and `wgBumpSockets`' retries on real TUNs,
//! as root, each test in a fresh network namespace (ignored, with the reason, otherwise). The
//! C host test (`ffi/tests/wgkit_test.c`) runs WireGuardKit's whole sequence against
//! wireguard-go peers.
//!
//! Tests run one at a time: the handle table and the logger are the process's.

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {}

#[cfg(target_os = "linux")]
mod linux {
    use libtest_mimic::Failed;
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::Mutex;
    use std::time::Duration;
    use tunpipe::wireguard::Key;
    use tunpipe_ffi::*;
    use tunpipe_testkit::check::{check, eventually, eventually_within};
    use tunpipe_testkit::netns::{enter_fresh_netns, Ipv6};
    use tunpipe_testkit::thread::on_thread;
    use tunpipe_testkit::trials::{plain_trials, root_trials, run_one_at_a_time, Test};
    use tunpipe_testkit::tun::tun;

    pub fn main() {
        let problem = tunpipe_testkit::tun::privilege_problem();
        let plain: [(&str, Test); 3] = [
            ("misuse_without_a_tunnel_is_answered_and_logged", misuse),
            ("damaged_settings_show_no_key_in_the_log", no_key_in_the_log),
            ("the_version_is_malloced_text_the_host_frees", version),
        ];
        let root: [(&str, Test); 3] = [
            (
                "handles_are_the_smallest_free_and_tunnels_run_side_by_side",
                handles,
            ),
            (
                "get_is_ipc_get_text_and_set_moves_the_socket_or_changes_nothing",
                get_and_set,
            ),
            (
                "bump_retries_ten_times_moves_a_silent_path_and_ends_at_turn_off",
                bump_retries,
            ),
        ];
        let mut trials = plain_trials(&plain);
        trials.extend(root_trials(&root, &problem, in_fresh_netns));
        run_one_at_a_time(trials)
    }

    fn in_fresh_netns(test: Test) -> Result<(), Failed> {
        on_thread("wgkit", Some(Duration::from_secs(120)), move || {
            enter_fresh_netns(Ipv6::Off)?;
            test()
        })
    }

    /// Every line the logger got: level and text.
    static LINES: Mutex<Vec<(c_int, String)>> = Mutex::new(Vec::new());
    const CONTEXT: usize = 0x5eed;

    unsafe extern "C" fn collect(context: *mut c_void, level: c_int, msg: *const c_char) {
        // SAFETY: tunpipe passes a NUL-terminated line valid for the call.
        let text = unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned();
        let level = if context as usize == CONTEXT {
            level
        } else {
            -100
        };
        if let Ok(mut lines) = LINES.lock() {
            lines.push((level, text));
        }
    }

    fn listen() {
        LINES.lock().unwrap().clear();
        // SAFETY: `collect` follows the logger contract; the context is never dereferenced.
        unsafe { wgSetLogger(CONTEXT as *mut c_void, Some(collect)) };
    }

    fn lines_with(needle: &str) -> Vec<(c_int, String)> {
        LINES
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .cloned()
            .collect()
    }

    fn hex(key: &Key) -> String {
        key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn turn_on(settings: &str, fd: RawFd) -> c_int {
        let settings = CString::new(settings).unwrap();
        // SAFETY: a NUL-terminated string that outlives the call.
        unsafe { wgTurnOn(settings.as_ptr(), fd) }
    }

    fn set(handle: c_int, settings: &str) -> i64 {
        let settings = CString::new(settings).unwrap();
        // SAFETY: as above.
        unsafe { wgSetConfig(handle, settings.as_ptr()) }
    }

    /// `wgGetConfig`'s text, freed as the host frees it; `None` for NULL.
    fn get(handle: c_int) -> Option<String> {
        let text = wgGetConfig(handle);
        if text.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated string from malloc, freed once, here.
        let owned = unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: wgGetConfig's text comes from malloc, and the host frees it with free().
        unsafe { libc::free(text.cast()) };
        Some(owned)
    }

    /// The value of a device key (before the first peer) in a `get` text.
    fn device_value(text: &str, key: &str) -> Option<String> {
        text.lines()
            .take_while(|l| !l.starts_with("public_key="))
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
    }

    fn misuse() -> Result<(), Failed> {
        listen();
        for handle in [-1, 0, 3, c_int::MAX, c_int::MIN] {
            check(get(handle).is_none(), || format!("get {handle}"))?;
            check(set(handle, "listen_port=1\n") == 0, || {
                format!("set on unknown handle {handle}: 0, as wireguard-go")
            })?;
            // SAFETY: NULL settings are what is tested.
            let answer = unsafe { wgSetConfig(handle, std::ptr::null()) };
            check(answer == 0, || {
                format!("set NULL on unknown handle {handle}")
            })?;
            wgBumpSockets(handle);
            wgDisableSomeRoamingForBrokenMobileSemantics(handle);
            wgTurnOff(handle);
        }
        // SAFETY: NULL settings are what is tested.
        check(unsafe { wgTurnOn(std::ptr::null(), 0) } == -1, || {
            "NULL".into()
        })?;
        check(turn_on("", -1) == -1, || "fd -1".into())?;
        check(turn_on("nonsense\n", 0) == -1, || "malformed".into())?;
        let (socket, _other) = std::os::unix::net::UnixDatagram::pair()?;
        check(turn_on("", socket.as_raw_fd()) == -1, || {
            "a socket that is no TUN".into()
        })?;
        check(tunpipe::sys::fd_is_open(socket.as_raw_fd()), || {
            "left open".into()
        })?;
        // A settings text that is not UTF-8 is refused as wireguard-go refuses it.
        let bytes = CString::new(b"private_key=\xff\n".to_vec())?;
        // SAFETY: a NUL-terminated string that outlives the call.
        check(unsafe { wgTurnOn(bytes.as_ptr(), 0) } == -1, || {
            "not UTF-8".into()
        })?;
        let refused = lines_with("wgTurnOn: ");
        check(
            refused.len() == 5 && refused.iter().all(|(l, _)| *l == 1),
            || format!("each refusal is a level-1 line: {refused:?}"),
        )?;
        check(
            !lines_with("no tunnel 3: nothing applied").is_empty(),
            || "an unknown handle is logged".into(),
        )?;
        // SAFETY: NULL turns logging off.
        unsafe { wgSetLogger(std::ptr::null_mut(), None) };
        let before = LINES.lock().unwrap().len();
        check(turn_on("nonsense\n", 0) == -1, || {
            "malformed, logging off".into()
        })?;
        check(LINES.lock().unwrap().len() == before, || {
            "nothing reaches a removed logger".into()
        })
    }

    /// Settings that hold keys and are damaged each way a key's line can be: refused, and the
    /// log says which line without any 16-character run of a key (`tunpipe_testkit::secrets`).
    fn no_key_in_the_log() -> Result<(), Failed> {
        use tunpipe_testkit::secrets::{leak, PRESHARED_HEX, PRIVATE_HEX, PUBLIC};
        listen();
        let (k, s) = (PRIVATE_HEX, PRESHARED_HEX);
        let peer = format!("public_key={}", "ab".repeat(32));
        let damaged = [
            format!("private_key {k}\n"),
            format!("private_key={}\n", &k[..63]),
            format!("private_key={k}0\n"),
            format!("private_key={}\n", k.to_ascii_uppercase().replace('A', "G")),
            format!("private_key={}\n", tunpipe_testkit::secrets::PRIVATE),
            format!("{k}=1\n"),
            format!("private_key={k}\n{peer}\npreshared_key={}\n", &s[1..]),
            format!("private_key={k}\n{peer}\nallowed_ip={s}\n"),
            format!("private_key={k}\n{peer}\nendpoint={PUBLIC}\n"),
            format!("private_key={k}\n{peer}\n{s}\n"),
        ];
        for settings in &damaged {
            check(turn_on(settings, 0) == -1, || "refused".into())?;
        }
        let lines = LINES.lock().unwrap().clone();
        check(lines.len() == damaged.len(), || {
            format!("a line each: {}", lines.len())
        })?;
        for (_, line) in &lines {
            if let Some(shown) = leak(line) {
                return Err(shown.into());
            }
        }
        Ok(())
    }

    fn version() -> Result<(), Failed> {
        for _ in 0..3 {
            let v = wgVersion();
            check(!v.is_null(), || "NULL".into())?;
            // SAFETY: a NUL-terminated string from malloc.
            let text = unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned();
            // SAFETY: WireGuardAdapter.backendVersion frees it with free(); so does this.
            unsafe { libc::free(v.cast_mut().cast()) };
            check(
                text == concat!("tunpipe ", env!("CARGO_PKG_VERSION")),
                || format!("version {text:?}"),
            )?;
        }
        Ok(())
    }

    fn handles() -> Result<(), Failed> {
        listen();
        let tuns = (0..3)
            .map(|i| tun(&format!("tpk{i}"), &format!("10.8{i}.0.1")))
            .collect::<Result<Vec<_>, _>>()?;
        let fds: Vec<RawFd> = tuns.iter().map(|t| t.as_raw_fd()).collect();
        let settings = format!("private_key={}\nlisten_port=0\n", hex(&Key::generate()));
        // Three at once, from three threads: three handles, the smallest ones.
        let mut started: Vec<c_int> = std::thread::scope(|s| {
            let settings = &settings;
            let turned: Vec<_> = fds
                .iter()
                .map(|&fd| s.spawn(move || turn_on(settings, fd)))
                .collect();
            turned.into_iter().map(|t| t.join().unwrap()).collect()
        });
        started.sort_unstable();
        check(started == [0, 1, 2], || format!("handles {started:?}"))?;
        let ports: Vec<_> = (0..3)
            .map(|h| get(h).and_then(|t| device_value(&t, "listen_port")))
            .collect();
        check(
            ports.iter().all(Option::is_some) && ports[0] != ports[1] && ports[1] != ports[2],
            || format!("a socket each: {ports:?}"),
        )?;
        // Which fd got which handle is the threads' race: the log's start line says.
        let fd_of = |h: c_int| -> RawFd {
            lines_with(&format!("wgTurnOn: tunnel {h} up on fd "))
                .first()
                .and_then(|(_, l)| l.split("on fd ").nth(1)?.split(',').next()?.parse().ok())
                .unwrap_or(-1)
        };
        let fd1 = fd_of(1);
        check(fds.contains(&fd1), || format!("tunnel 1's fd: {fd1}"))?;
        // A freed handle is the next one given, as in wireguard-go's map.
        wgTurnOff(1);
        check(get(1).is_none(), || "handle 1 is off".into())?;
        check(turn_on(&settings, fd1) == 1, || "1 again".into())?;
        wgTurnOff(0);
        wgTurnOff(1);
        check(turn_on(&settings, fd1) == 0, || "0 again".into())?;
        check(get(2).is_some(), || "2 runs on throughout".into())?;
        for h in 0..3 {
            wgTurnOff(h);
            wgTurnOff(h);
        }
        check((0..3).all(|h| get(h).is_none()), || "all off".into())?;
        check(fds.iter().all(|&fd| tunpipe::sys::fd_is_open(fd)), || {
            "the host's fds stay open".into()
        })
    }

    fn get_and_set() -> Result<(), Failed> {
        listen();
        let device = tun("tpk0", "10.80.0.1")?;
        let private = Key::generate();
        let peer = Key::generate().public_key();
        let settings = format!(
            "private_key={}\nreplace_peers=true\npublic_key={}\nendpoint=192.0.2.1:51820\n\
             persistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.80.0.2/32\n",
            hex(&private),
            hex(&peer)
        );
        let h = turn_on(&settings, device.as_raw_fd());
        check(h == 0, || format!("handle {h}"))?;
        let result = (|| -> Result<(), Failed> {
            let text = get(h).ok_or("get")?;
            let port = device_value(&text, "listen_port").ok_or("listen_port")?;
            // The key as set, clamped (as wireguard-go clamps it).
            let mut clamped = *private.as_bytes();
            clamped[0] &= 248;
            clamped[31] = (clamped[31] & 127) | 64;
            check(
                device_value(&text, "private_key") == Some(hex(&Key::from_bytes(clamped))),
                || "private_key is not the key set, clamped".into(),
            )?;
            let text = text.replace(&hex(&Key::from_bytes(clamped)), "(the key)");
            // wireguard-go's IpcGet, line for line (no traffic: no handshake, no bytes).
            let expected = format!(
                "private_key=(the key)\nlisten_port={port}\npublic_key={}\npreshared_key={}\n\
                 protocol_version=1\nendpoint=192.0.2.1:51820\nlast_handshake_time_sec=0\n\
                 last_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
                 persistent_keepalive_interval=0\nallowed_ip=10.80.0.2/32\n",
                hex(&peer),
                "0".repeat(64)
            );
            check(text == expected, || {
                format!("get text:\n{text}\nexpected:\n{expected}")
            })?;

            // A new listen port and a fwmark: the socket moves, get shows both.
            let free = std::net::UdpSocket::bind("[::]:0")?.local_addr()?.port();
            check(
                set(h, &format!("listen_port={free}\nfwmark=42\n")) == 0,
                || "listen_port and fwmark".into(),
            )?;
            let text = get(h).ok_or("get")?;
            check(
                device_value(&text, "listen_port") == Some(free.to_string())
                    && device_value(&text, "fwmark").as_deref() == Some("42"),
                || format!("moved:\n{text}"),
            )?;
            check(std::net::UdpSocket::bind(("::", free)).is_err(), || {
                "the tunnel holds the new port".into()
            })?;
            check(
                std::net::UdpSocket::bind(("::", port.parse::<u16>()?)).is_ok(),
                || "and let the old one go".into(),
            )?;
            check(set(h, "fwmark=0\n") == 0, || "fwmark=0".into())?;
            check(
                device_value(&get(h).ok_or("get")?, "fwmark").is_none(),
                || "fwmark cleared".into(),
            )?;

            // Refused: nothing changes, and the logger says why without the key.
            let before = get(h).ok_or("get")?;
            let held = std::net::UdpSocket::bind("[::]:0")?;
            let taken = held.local_addr()?.port();
            for (settings, code) in [
                ("x\n".to_string(), -i64::from(libc::EPROTO)),
                (
                    format!("private_key={}zz\n", &hex(&private)[..62]),
                    -i64::from(libc::EINVAL),
                ),
                (
                    format!("listen_port={taken}\n"),
                    -i64::from(libc::EADDRINUSE),
                ),
                (
                    format!(
                        "replace_peers=true\npublic_key={}\nendpoint=nowhere\n",
                        hex(&peer)
                    ),
                    -i64::from(libc::EINVAL),
                ),
            ] {
                let answer = set(h, &settings);
                check(answer == code, || format!("{answer}, expected {code}"))?;
                check(get(h).as_deref() == Some(before.as_str()), || {
                    format!("a refused set ({code}) changed nothing")
                })?;
            }
            // Bytes 1 to 16 of the key: clamping changes only the first and the last.
            let secret = &hex(&private)[2..34];
            check(lines_with(secret).is_empty(), || "a key in the log".into())?;
            check(lines_with("Unable to set IPC settings").len() == 4, || {
                "each refusal logged".into()
            })
        })();
        wgTurnOff(h);
        result
    }

    /// The names of this process's threads.
    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|n| n.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// While it lives, no new descriptor can be made in this process (its soft
    /// RLIMIT_NOFILE is the lowest free descriptor number), so every socket a rebind makes
    /// fails with EMFILE.
    struct NoNewFds {
        was: libc::rlimit,
    }

    impl NoNewFds {
        fn now() -> Result<NoNewFds, Failed> {
            let mut was = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one rlimit.
            let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut was) };
            check(got == 0, || "getrlimit".into())?;
            // SAFETY: dup of stdin; the copy is the lowest free number, closed at once.
            let lowest = unsafe { libc::dup(0) };
            check(lowest >= 0, || "dup".into())?;
            // SAFETY: the descriptor dup just made.
            unsafe { libc::close(lowest) };
            let lowered = libc::rlimit {
                rlim_cur: lowest as libc::rlim_t,
                rlim_max: was.rlim_max,
            };
            // SAFETY: setrlimit reads one rlimit; a lower soft limit is always allowed.
            let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) };
            check(set == 0, || "setrlimit".into())?;
            Ok(NoNewFds { was })
        }
    }

    impl Drop for NoNewFds {
        fn drop(&mut self) {
            // SAFETY: setrlimit reads one rlimit: the limits as they were.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.was) };
        }
    }

    fn bump_retries() -> Result<(), Failed> {
        listen();
        let device = tun("tpk0", "10.80.0.1")?;
        let settings = format!(
            "private_key={}\npublic_key={}\nendpoint=192.0.2.1:51820\nallowed_ip=10.80.0.2/32\n",
            hex(&Key::generate()),
            hex(&Key::generate().public_key())
        );
        let h = turn_on(&settings, device.as_raw_fd());
        check(h >= 0, || format!("handle {h}"))?;
        let tries = || lines_with("rebind: no new socket yet").len();
        let path_thread = || thread_names().iter().any(|n| n == "tunpipe-path");

        // Every try fails: ten, 0.5 s apart, then the last word, an error.
        let gave_up = {
            let _no_fds = NoNewFds::now()?;
            wgBumpSockets(h);
            eventually(|| !lines_with("rebind: no new socket in 10 tries").is_empty())
        };
        check(gave_up && tries() == 9, || {
            format!("gave up after {} retries", tries())
        })?;
        check(
            lines_with("no new socket in 10 tries")
                .iter()
                .all(|(l, _)| *l == 1),
            || "the last word at level 1 (error)".into(),
        )?;
        // With descriptors again, the next path change rebinds; 192.0.2.1 never answers the
        // handshake from the new socket, so after 5 s it moves to a fresh port, and ends.
        wgBumpSockets(h);
        check(
            eventually(|| !lines_with("rebound the UDP socket").is_empty()),
            || "rebound once it could".into(),
        )?;
        check(
            eventually(|| !lines_with("no peer answered from the new socket").is_empty()),
            || "a fresh port after 5 s of silence".into(),
        )?;
        let port = get(h)
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("listen_port=").map(str::to_string))
            })
            .unwrap_or_default();
        check(
            lines_with(&format!("moved to port {port}")).len() == 1,
            || {
                format!(
                    "get shows the fresh port ({port}): {:?}",
                    lines_with("port")
                )
            },
        )?;
        check(
            eventually_within(Duration::from_secs(5), || !path_thread()),
            || "the path thread ends when it is done".into(),
        )?;

        // A turn-off in the middle of the retries ends them at once.
        let ended = {
            let _no_fds = NoNewFds::now()?;
            wgBumpSockets(h);
            wgBumpSockets(h);
            let second_try = eventually(|| tries() >= 11);
            wgTurnOff(h);
            second_try
        };
        check(ended, || format!("{} retries", tries()))?;
        check(
            eventually_within(Duration::from_secs(5), || !path_thread()),
            || format!("a path thread outlived wgTurnOff: {:?}", thread_names()),
        )?;
        check(get(h).is_none(), || "off".into())
    }
}
