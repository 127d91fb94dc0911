//! The C ABI called the way C calls it: NULL pointers, invalid configs, bad fds, error
//! codes, the last-error text and the log callback. Nothing here needs root: real-TUN runs
//! of the ABI are in the C host test (`ffi/tests/host_test.c`, run by `.ci/ffi.sh`).

#[path = "misuse/c_api.rs"]
mod c_api;

use c_api::default_config;
use std::ffi::{c_char, c_void, CStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::{null, null_mut};
use std::sync::Mutex;
use tunpipe_ffi::*;

/// `start_tun`/`stop_tun` share one global slot; tests that use it take turns.
static GLOBAL_SLOT: Mutex<()> = Mutex::new(());

fn last_error() -> String {
    let mut buf = [0 as c_char; 512];
    // SAFETY: `buf` holds `buf.len()` bytes.
    let n = unsafe { tunpipe_last_error(buf.as_mut_ptr(), buf.len()) };
    assert!(n >= 0);
    // SAFETY: tunpipe_last_error NUL-terminates within the buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn abi_version_matches_the_header_constant() {
    assert_eq!(tunpipe_abi_version(), TUNPIPE_ABI_VERSION);
}

#[test]
fn defaults_are_valid_and_sized() {
    let c = default_config();
    assert_eq!(c.size as usize, std::mem::size_of::<TunpipeConfig>());
    assert_eq!(c.stage, TUNPIPE_STAGE_REFLECT);
    assert_eq!(c.mtu, 1500);
    // The spin window is the engine's default, the same on every target (the header says 50).
    assert_eq!(c.spin_us, 50);
    assert_eq!(
        u128::from(c.spin_us),
        tunpipe::Config::default().spin.as_micros()
    );
    // SAFETY: `c` is a valid config.
    assert_eq!(unsafe { tunpipe_config_validate(&c) }, TUNPIPE_OK);
    let mut bytes = 0u64;
    assert_eq!(
        // SAFETY: both pointers are valid.
        unsafe { tunpipe_config_reserved_bytes(&c, &mut bytes) },
        TUNPIPE_OK
    );
    assert!(bytes > 256 * 1500, "the pool alone is bigger: {bytes}");
}

#[test]
fn every_pointer_taking_function_rejects_null() {
    let c = default_config();
    let mut out: *mut TunpipeEngine = null_mut();
    let mut stats = TunpipeStats {
        size: std::mem::size_of::<TunpipeStats>() as u32,
        ..Default::default()
    };
    let mut latency = TunpipeLatency {
        size: std::mem::size_of::<TunpipeLatency>() as u32,
        ..Default::default()
    };
    let mut n = 0u64;
    let mut buf = [0 as c_char; 8];
    // Each call is checked before the next, since the last error is replaced by each.
    macro_rules! refused {
        ($name:literal, $call:expr) => {{
            // SAFETY: every non-null pointer passed is valid; the NULL ones are what is tested.
            let code = unsafe { $call };
            assert_eq!(code, TUNPIPE_ERR_NULL_POINTER, $name);
            let message = last_error();
            assert!(message.starts_with($name), "{}: {message}", $name);
            assert!(message.contains("NULL"), "{}: {message}", $name);
        }};
    }
    refused!("tunpipe_config_default", tunpipe_config_default(null_mut()));
    refused!("tunpipe_config_validate", tunpipe_config_validate(null()));
    refused!(
        "tunpipe_config_reserved_bytes",
        tunpipe_config_reserved_bytes(null(), &mut n)
    );
    refused!(
        "tunpipe_config_reserved_bytes",
        tunpipe_config_reserved_bytes(&c, null_mut())
    );
    refused!("tunpipe_set_config", tunpipe_set_config(null()));
    refused!(
        "tunpipe_engine_start",
        tunpipe_engine_start(null(), 0, &mut out)
    );
    refused!(
        "tunpipe_engine_start",
        tunpipe_engine_start(&c, 0, null_mut())
    );
    refused!("tunpipe_engine_stop", tunpipe_engine_stop(null()));
    refused!("tunpipe_engine_wait", tunpipe_engine_wait(null()));
    refused!("tunpipe_engine_free", tunpipe_engine_free(null_mut()));
    refused!(
        "tunpipe_engine_stats",
        tunpipe_engine_stats(null(), &mut stats)
    );
    refused!(
        "tunpipe_engine_latency",
        tunpipe_engine_latency(null(), &mut latency)
    );
    refused!(
        "tunpipe_engine_latency_base64",
        tunpipe_engine_latency_base64(null(), 0, buf.as_mut_ptr(), buf.len(), null_mut())
    );
    refused!(
        "tunpipe_engine_last_error",
        tunpipe_engine_last_error(null(), buf.as_mut_ptr(), buf.len())
    );
    refused!(
        "tunpipe_engine_reserved_bytes",
        tunpipe_engine_reserved_bytes(null(), &mut n)
    );
    refused!("tunpipe_stats", tunpipe_stats(null_mut()));
    refused!("tunpipe_tunnel_stats", tunpipe_tunnel_stats(null_mut()));
    let mut tunnel = TunpipeTunnelStats::default();
    refused!(
        "tunpipe_engine_tunnel_stats",
        tunpipe_engine_tunnel_stats(null(), &mut tunnel)
    );
    refused!("tunpipe_peer_stats", tunpipe_peer_stats(0, null_mut()));
    let mut peer = TunpipePeerStats::default();
    refused!(
        "tunpipe_engine_peer_stats",
        tunpipe_engine_peer_stats(null(), 0, &mut peer)
    );
    refused!("tunpipe_engine_rebind", tunpipe_engine_rebind(null()));
    refused!("tunpipe_engine_suspend", tunpipe_engine_suspend(null()));
    refused!("tunpipe_engine_resume", tunpipe_engine_resume(null()));
    refused!(
        "tunpipe_engine_disable_roaming",
        tunpipe_engine_disable_roaming(null())
    );
    refused!(
        "tunpipe_wireguard_settings",
        tunpipe_wireguard_settings(null(), buf.as_mut_ptr(), buf.len(), null_mut())
    );
    refused!("tunpipe_latency", tunpipe_latency(null_mut()));
    refused!("tunpipe_last_error", tunpipe_last_error(null_mut(), 4));
    refused!(
        "tunpipe_available_memory",
        tunpipe_available_memory(null_mut())
    );
    assert!(out.is_null(), "a failed start leaves *out untouched");
}

#[test]
fn a_misaligned_pointer_is_an_error_not_undefined_behaviour() {
    let mut storage = [0u64; 4];
    // One byte in: never aligned for a u64.
    let odd = (storage.as_mut_ptr() as *mut u8).wrapping_add(1) as *mut u64;
    // SAFETY: tunpipe checks alignment before touching the pointer.
    let code = unsafe { tunpipe_available_memory(odd) };
    assert_eq!(code, TUNPIPE_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("misaligned"));
}

#[test]
fn invalid_configs_are_error_codes_not_aborts() {
    type Change = fn(&mut TunpipeConfig);
    let cases: Vec<(&str, Change, i32)> = vec![
        ("mtu", |c| c.mtu = u32::MAX, TUNPIPE_ERR_CONFIG),
        ("mtu", |c| c.mtu = 10, TUNPIPE_ERR_CONFIG),
        ("workers", |c| c.workers = u32::MAX, TUNPIPE_ERR_CONFIG),
        (
            "ring_capacity",
            |c| c.ring_capacity = u32::MAX,
            TUNPIPE_ERR_CONFIG,
        ),
        ("ring_capacity", |c| c.ring_capacity = 0, TUNPIPE_ERR_CONFIG),
        (
            "pool_buffers",
            |c| c.pool_buffers = u32::MAX,
            TUNPIPE_ERR_CONFIG,
        ),
        ("headroom", |c| c.headroom = u32::MAX, TUNPIPE_ERR_CONFIG),
        ("batch", |c| c.batch = 0, TUNPIPE_ERR_CONFIG),
        (
            "spin_us 10001 exceeds 10000",
            |c| c.spin_us = TUNPIPE_SPIN_US_MAX + 1,
            TUNPIPE_ERR_CONFIG,
        ),
        // A negative number cast to unsigned, as C lets a host write it.
        (
            "spin_us 4294967295",
            |c| c.spin_us = -1i32 as u32,
            TUNPIPE_ERR_CONFIG,
        ),
        (
            "unknown stage",
            |c| c.stage = 99,
            TUNPIPE_ERR_INVALID_ARGUMENT,
        ),
        (
            "callback is NULL",
            |c| c.stage = TUNPIPE_STAGE_CALLBACK,
            TUNPIPE_ERR_INVALID_ARGUMENT,
        ),
        (
            "TunpipeConfig.size",
            |c| c.size = 0,
            TUNPIPE_ERR_STRUCT_SIZE,
        ),
        (
            "TunpipeConfig.size",
            |c| c.size = 8,
            TUNPIPE_ERR_STRUCT_SIZE,
        ),
    ];
    for (needle, change, expected) in cases {
        let mut c = default_config();
        change(&mut c);
        // SAFETY: `c` is a readable config.
        assert_eq!(unsafe { tunpipe_config_validate(&c) }, expected, "{needle}");
        assert!(last_error().contains(needle), "{needle}: {}", last_error());
        // The same config refused by every function that takes one, before any fd is used:
        // fd 0 (stdin) would be a bad fd, but validation comes first.
        let mut out: *mut TunpipeEngine = null_mut();
        // SAFETY: valid pointers.
        assert_eq!(unsafe { tunpipe_engine_start(&c, 0, &mut out) }, expected);
        assert!(out.is_null());
        // SAFETY: valid pointer.
        assert_eq!(unsafe { tunpipe_set_config(&c) }, expected, "{needle}");
    }
}

#[test]
fn spin_windows_from_0_to_the_cap_are_valid() {
    for spin_us in [0, 1, 50, 1000, TUNPIPE_SPIN_US_MAX] {
        let mut c = default_config();
        c.spin_us = spin_us;
        // SAFETY: `c` is a readable config.
        let code = unsafe { tunpipe_config_validate(&c) };
        assert_eq!(code, TUNPIPE_OK, "spin_us {spin_us}: {}", last_error());
    }
}

#[test]
fn a_host_built_before_spin_us_gets_the_default_window() {
    // Such a host fills its struct with tunpipe_config_default, sets the fields its header
    // names, and leaves alone the bytes its header calls `reserved` (where spin_us now is):
    // the size is the same, so it is read whole, and its window is the default.
    let mut c = default_config();
    c.workers = 1;
    c.mtu = 1400;
    let before = std::mem::offset_of!(TunpipeConfig, spin_us);
    // SAFETY: TunpipeConfig is plain data; its bytes are readable.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&c as *const TunpipeConfig).cast::<u8>(),
            std::mem::size_of::<TunpipeConfig>(),
        )
    };
    // The bytes it knows as `reserved` hold the default window and zeroes after it.
    assert_eq!(bytes[before..before + 4], 50u32.to_ne_bytes());
    assert!(bytes[before + 4..].iter().all(|&b| b == 0));
    // SAFETY: `c` is a readable config.
    assert_eq!(unsafe { tunpipe_config_validate(&c) }, TUNPIPE_OK);
    // A struct shorter than this version's was never published: still refused, whole.
    c.size -= 4;
    // SAFETY: as above.
    let code = unsafe { tunpipe_config_validate(&c) };
    assert_eq!(code, TUNPIPE_ERR_STRUCT_SIZE);
    assert!(last_error().contains("TunpipeConfig.size"));
}

#[test]
fn the_config_struct_keeps_its_size_and_spin_us_sits_where_reserved_began() {
    // The growth rule: new fields take `reserved` bytes, sizeof stays. The header says so
    // too: spin_us comes right after memory_budget, then 44 reserved bytes.
    #[cfg(target_pointer_width = "64")]
    assert_eq!(std::mem::size_of::<TunpipeConfig>(), 128);
    assert_eq!(
        std::mem::offset_of!(TunpipeConfig, spin_us),
        std::mem::offset_of!(TunpipeConfig, memory_budget) + 8
    );
    assert_eq!(
        std::mem::offset_of!(TunpipeConfig, reserved),
        std::mem::offset_of!(TunpipeConfig, spin_us) + 4
    );
    let fields = header_fields("TunpipeConfig");
    assert_eq!(
        fields[fields.len() - 3..],
        ["memory_budget", "spin_us", "reserved"]
    );
    assert!(include_str!("../tunpipe.h").contains("uint8_t reserved[44];"));
}

#[test]
fn mtu_9000_is_valid() {
    let mut c = default_config();
    c.mtu = 9000;
    // SAFETY: `c` is a readable config.
    assert_eq!(unsafe { tunpipe_config_validate(&c) }, TUNPIPE_OK);
}

#[test]
fn stop_tun_with_nothing_running_is_an_error() {
    let _turn = GLOBAL_SLOT.lock().unwrap();
    assert_eq!(stop_tun(), TUNPIPE_ERR_NOT_RUNNING);
    assert!(last_error().contains("stop_tun"));
}

#[test]
fn a_fd_that_is_not_a_tun_is_refused_and_left_open() {
    let _turn = GLOBAL_SLOT.lock().unwrap();
    let mut ends = [0; 2];
    // SAFETY: pipe writes two fds into `ends`, which then belong to this test.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    // SAFETY: both fds are fresh and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let dev_null = std::fs::File::open("/dev/null").unwrap();
    for fd in [read_end.as_raw_fd(), dev_null.as_raw_fd()] {
        assert_eq!(start_tun(fd), TUNPIPE_ERR_BAD_FD, "fd {fd}");
        let message = last_error();
        assert!(message.contains("not a TUN"), "{message}");
        let c = default_config();
        let mut out: *mut TunpipeEngine = null_mut();
        assert_eq!(
            // SAFETY: valid pointers.
            unsafe { tunpipe_engine_start(&c, fd, &mut out) },
            TUNPIPE_ERR_BAD_FD
        );
        assert!(out.is_null());
        assert!(
            tunpipe::sys::fd_is_open(fd),
            "tunpipe never closes the host's fd"
        );
    }
    // A closed fd: refused too (the slot is free again afterwards).
    let closed = write_end.as_raw_fd();
    drop(write_end);
    assert_eq!(start_tun(closed), TUNPIPE_ERR_BAD_FD);
    assert_eq!(stop_tun(), TUNPIPE_ERR_NOT_RUNNING);
}

#[cfg(not(target_vendor = "apple"))]
#[test]
fn finding_the_utun_fd_is_apple_only() {
    let _turn = GLOBAL_SLOT.lock().unwrap();
    assert_eq!(tunpipe_find_utun_fd(), TUNPIPE_ERR_UNSUPPORTED);
    assert_eq!(start_tun(-1), TUNPIPE_ERR_UNSUPPORTED);
    assert!(last_error().contains("Apple"));
    let mut out: *mut TunpipeEngine = null_mut();
    let c = default_config();
    assert_eq!(
        // SAFETY: valid pointers.
        unsafe { tunpipe_engine_start(&c, -1, &mut out) },
        TUNPIPE_ERR_UNSUPPORTED
    );
}

#[cfg(not(any(target_os = "ios", target_os = "tvos")))]
#[test]
fn available_memory_is_ios_only() {
    let mut bytes = 42u64;
    assert_eq!(
        // SAFETY: valid pointer.
        unsafe { tunpipe_available_memory(&mut bytes) },
        TUNPIPE_ERR_UNSUPPORTED
    );
    assert_eq!(bytes, 0);
}

#[test]
fn global_queries_before_any_start_tun_say_not_running() {
    // Another test in this binary may start_tun a bad fd, but none ever starts an engine.
    let mut stats = TunpipeStats {
        size: std::mem::size_of::<TunpipeStats>() as u32,
        ..Default::default()
    };
    assert_eq!(
        // SAFETY: valid pointer.
        unsafe { tunpipe_stats(&mut stats) },
        TUNPIPE_ERR_NOT_RUNNING
    );
    let mut needed = 0usize;
    // SAFETY: a length query: no buffer.
    let code =
        unsafe { tunpipe_latency_base64(TUNPIPE_LATENCY_ENGINE, null_mut(), 0, &mut needed) };
    assert_eq!(code, TUNPIPE_ERR_NOT_RUNNING);
}

#[test]
fn rebind_suspend_and_tunnel_stats_without_a_running_tunnel_say_why() {
    assert_eq!(tunpipe_rebind(), TUNPIPE_ERR_NOT_RUNNING);
    assert_eq!(tunpipe_suspend(), TUNPIPE_ERR_NOT_RUNNING);
    assert_eq!(tunpipe_resume(), TUNPIPE_ERR_NOT_RUNNING);
    assert_eq!(tunpipe_disable_roaming(), TUNPIPE_ERR_NOT_RUNNING);
    let mut tunnel = TunpipeTunnelStats::default();
    // SAFETY: a valid, sized struct.
    let code = unsafe { tunpipe_tunnel_stats(&mut tunnel) };
    assert_eq!(code, TUNPIPE_ERR_NOT_RUNNING);
    let mut peer = TunpipePeerStats::default();
    // SAFETY: a valid, sized struct.
    let code = unsafe { tunpipe_peer_stats(0, &mut peer) };
    assert_eq!(code, TUNPIPE_ERR_NOT_RUNNING);
    assert!(last_error().starts_with("tunpipe_peer_stats"));
}

/// A wg-quick text with fresh keys, as a C string.
#[test]
fn a_config_past_its_memory_budget_is_refused_naming_what_to_shrink() {
    let mut c = default_config();
    let text = wg_text("MTU = 9000\n");
    c.wireguard_config = text.as_ptr();
    c.memory_budget = 8 << 20;
    let mut bytes = 0u64;
    // SAFETY: a valid config whose text outlives the calls; `bytes` is writable.
    unsafe {
        // What it would reserve is still said, past the budget or not.
        assert_eq!(tunpipe_config_reserved_bytes(&c, &mut bytes), TUNPIPE_OK);
        assert!(bytes > 8 << 20, "{bytes}");
        assert_eq!(tunpipe_config_validate(&c), TUNPIPE_ERR_CONFIG);
        let message = last_error();
        assert!(
            message.contains("memory_budget 8.0 MiB is too small"),
            "{message}"
        );
        assert!(message.contains("lower mtu, now 9000"), "{message}");
        c.memory_budget = u64::MAX;
        assert_eq!(tunpipe_config_validate(&c), TUNPIPE_OK, "{}", last_error());
    }
}

fn wg_text(extra: &str) -> std::ffi::CString {
    let private = tunpipe::wireguard::Key::generate();
    let public = tunpipe::wireguard::Key::generate().public_key();
    let text = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.0.0.2/32\n{extra}[Peer]\nPublicKey = {}\n\
         Endpoint = 192.0.2.1:51820\nAllowedIPs = 0.0.0.0/0, ::/0\n",
        private.to_base64(),
        public.to_base64()
    );
    std::ffi::CString::new(text).expect("no NUL")
}

#[test]
fn a_wireguard_config_is_checked_when_it_is_set_and_names_the_line() {
    let mut c = default_config();
    let good = wg_text("MTU = 1380\n");
    c.wireguard_config = good.as_ptr();
    // SAFETY: a valid config whose text outlives the calls.
    let code = unsafe { tunpipe_config_validate(&c) };
    assert_eq!(code, TUNPIPE_OK, "{}", last_error());
    let mut bytes = 0u64;
    // SAFETY: as above; `bytes` is writable.
    let code = unsafe { tunpipe_config_reserved_bytes(&c, &mut bytes) };
    assert_eq!(code, TUNPIPE_OK);
    // The tunnel's pools (two readers, a handshake's reserve) and its peer's state (a
    // 64 KiB scratch buffer and the peer's ~11 KiB) are counted, under 5 MiB.
    assert!(bytes > 2 << 20 && bytes < 5 << 20, "{bytes}");

    let bad = wg_text("ListenPort = many\n");
    c.wireguard_config = bad.as_ptr();
    // SAFETY: as above.
    assert_eq!(unsafe { tunpipe_config_validate(&c) }, TUNPIPE_ERR_CONFIG);
    let message = last_error();
    assert!(message.contains("line 4 (ListenPort)"), "{message}");
    assert!(!message.contains("PrivateKey ="), "{message}");

    let not_utf8 = [0xffu8, 0xfe, 0];
    c.wireguard_config = not_utf8.as_ptr().cast();
    // SAFETY: a NUL-terminated byte string.
    assert_eq!(unsafe { tunpipe_config_validate(&c) }, TUNPIPE_ERR_CONFIG);
    assert!(last_error().contains("UTF-8"));
}

#[test]
fn wireguard_settings_are_json_for_the_host_and_ask_for_room() {
    let text = wg_text("DNS = 1.1.1.1\n");
    let mut needed = 0usize;
    // SAFETY: a length query: no buffer.
    let code = unsafe { tunpipe_wireguard_settings(text.as_ptr(), null_mut(), 0, &mut needed) };
    assert_eq!(code, TUNPIPE_ERR_BUFFER_TOO_SMALL);
    let mut buf = vec![0 as c_char; needed];
    // SAFETY: `buf` holds `needed` bytes.
    let code = unsafe {
        tunpipe_wireguard_settings(text.as_ptr(), buf.as_mut_ptr(), buf.len(), &mut needed)
    };
    assert_eq!(code, TUNPIPE_OK);
    // SAFETY: NUL-terminated within the buffer.
    let json = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string();
    assert!(json.contains("\"addresses\":[\"10.0.0.2/32\"]"), "{json}");
    assert!(json.contains("\"endpoint_host\":\"192.0.2.1\""), "{json}");
    assert!(json.contains("\"mtu\":1420"), "{json}");
    let bad = std::ffi::CString::new("[Interface]\nPrivateKey = nope\n").unwrap();
    // SAFETY: a length query on a bad text.
    let code = unsafe { tunpipe_wireguard_settings(bad.as_ptr(), null_mut(), 0, &mut needed) };
    assert_eq!(code, TUNPIPE_ERR_CONFIG);
    assert!(last_error().contains("line 2 (PrivateKey)"));
}

#[test]
fn last_error_truncates_like_snprintf() {
    assert_eq!(
        // SAFETY: NULL is what is tested; it is refused.
        unsafe { tunpipe_engine_stop(null()) },
        TUNPIPE_ERR_NULL_POINTER
    );
    let full = last_error();
    assert!(!full.is_empty());
    // A length query: no buffer, the full length back.
    assert_eq!(
        // SAFETY: `len == 0` never touches `buf`.
        unsafe { tunpipe_last_error(null_mut(), 0) },
        full.len() as i32
    );
    let mut small = [0x55 as c_char; 6];
    // SAFETY: `small` holds 6 bytes.
    let n = unsafe { tunpipe_last_error(small.as_mut_ptr(), small.len()) };
    assert_eq!(n, full.len() as i32);
    // SAFETY: NUL-terminated within the buffer.
    let cut = unsafe { CStr::from_ptr(small.as_ptr()) }.to_str().unwrap();
    assert_eq!(cut, &full[..5]);
    // Errors are per thread: a fresh thread has none.
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
}

#[test]
fn every_code_has_a_description() {
    // Every code the header defines, read from the header: a code added without a
    // description fails here.
    let codes: Vec<i32> = include_str!("../tunpipe.h")
        .lines()
        .filter_map(|l| l.strip_prefix("#define TUNPIPE_ERR_"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(codes.contains(&TUNPIPE_ERR_NOT_FOUND), "{codes:?}");
    for code in codes.into_iter().chain([TUNPIPE_OK]) {
        let text = tunpipe_error_string(code);
        // SAFETY: tunpipe_error_string returns a static NUL-terminated string.
        let text = unsafe { CStr::from_ptr(text) }.to_str().unwrap();
        assert!(!text.is_empty());
        assert_ne!(text, "unknown error code", "code {code}");
    }
    // SAFETY: as above.
    let unknown = unsafe { CStr::from_ptr(tunpipe_error_string(-1000)) };
    assert_eq!(unknown.to_str().unwrap(), "unknown error code");
}

/// Log lines the callback received, with their levels.
static LINES: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

unsafe extern "C" fn collect(context: *mut c_void, level: i32, message: *const c_char) {
    assert_eq!(context as usize, 0x1234, "the context comes back untouched");
    // SAFETY: tunpipe passes a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    if let Ok(mut lines) = LINES.lock() {
        lines.push((level, text));
    }
}

#[test]
fn logs_and_panic_messages_reach_the_callback() {
    // SAFETY: `collect` follows the callback contract; the context is never dereferenced.
    let code = unsafe { tunpipe_set_log_callback(Some(collect), 99, 0x1234 as *mut c_void) };
    assert_eq!(code, TUNPIPE_ERR_INVALID_ARGUMENT, "unknown level");
    // SAFETY: as above.
    let code =
        unsafe { tunpipe_set_log_callback(Some(collect), TUNPIPE_LOG_WARN, 0x1234 as *mut c_void) };
    assert_eq!(code, TUNPIPE_OK);

    // A rejected call is a warning line naming the function.
    assert_eq!(
        // SAFETY: NULL is what is tested; it is refused.
        unsafe { tunpipe_engine_wait(null()) },
        TUNPIPE_ERR_NULL_POINTER
    );
    // A panic anywhere in the process reaches the callback through the hook.
    let caught = std::panic::catch_unwind(|| panic!("ffi-test-panic-marker"));
    assert!(caught.is_err());
    // Below the maximum level: not delivered.
    log::info!("ffi-test-info-marker");

    assert_eq!(
        // SAFETY: NULL turns logging off; after it returns the callback runs nowhere.
        unsafe { tunpipe_set_log_callback(None, TUNPIPE_LOG_TRACE, null_mut()) },
        TUNPIPE_OK
    );
    log::error!("ffi-test-after-off-marker");

    let lines = LINES.lock().unwrap().clone();
    let find = |needle: &str| lines.iter().find(|(_, l)| l.contains(needle)).cloned();
    let (level, line) = find("tunpipe_engine_wait").expect("the rejected call was logged");
    assert_eq!(level, TUNPIPE_LOG_WARN);
    assert!(line.contains("NULL"), "{line}");
    let (level, line) = find("ffi-test-panic-marker").expect("the panic was logged");
    assert_eq!(level, TUNPIPE_LOG_ERROR);
    assert!(line.contains("panic"), "{line}");
    assert!(
        find("ffi-test-info-marker").is_none(),
        "above the max level"
    );
    assert!(
        find("ffi-test-after-off-marker").is_none(),
        "logging was turned off"
    );
}

/// The field names of `struct NAME` in the header.
fn header_fields(name: &str) -> Vec<String> {
    let header = include_str!("../tunpipe.h");
    let start = header
        .find(&format!("typedef struct {name} {{"))
        .unwrap_or_else(|| panic!("no struct {name} in the header"));
    let end = start + header[start..].find(&format!("}} {name};")).unwrap();
    header[start..end]
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && l.ends_with(';'))
        .filter_map(|l| {
            let declarator = l.trim_end_matches(';').split_whitespace().last()?;
            Some(declarator.split('[').next()?.to_string())
        })
        .collect()
}

/// The field names in a struct's `Debug` text (numbers, options and lists as values).
fn debug_fields(text: &str) -> Vec<String> {
    let inner = &text[text.find('{').unwrap() + 1..text.rfind('}').unwrap()];
    inner
        .split(", ")
        .filter_map(|part| {
            part.split_once(": ")
                .map(|(name, _)| name.trim().to_string())
        })
        .collect()
}

#[test]
fn every_core_figure_has_its_field_in_the_c_structs() {
    // The C structs are layout, not logic: a field the core's figures gain without one here
    // (and so in the header) fails this test. Renamed in C: a data message's counts, and the
    // figures C gives another shape.
    let stats = header_fields("TunpipeStats");
    let core = debug_fields(&format!("{:?}", tunpipe::Stats::default()));
    assert!(
        core.len() >= 19 && stats.len() > core.len(),
        "{core:?} {stats:?}"
    );
    for field in core {
        assert!(
            stats.contains(&field),
            "Stats::{field} is not in TunpipeStats"
        );
    }
    let tunnel = header_fields("TunpipeTunnelStats");
    let renamed = [
        ("since_last_handshake", "seconds_since_handshake"),
        ("tx_packets", "data_tx_packets"),
        ("tx_bytes", "data_tx_bytes"),
        ("rx_packets", "data_rx_packets"),
        ("rx_bytes", "data_rx_bytes"),
        ("endpoints", "endpoint"),
    ];
    let wg = tunpipe::wireguard::WireGuardStats::default();
    for field in debug_fields(&format!("{wg:?}")) {
        let c = renamed
            .iter()
            .find(|(core, _)| *core == field)
            .map_or(field.as_str(), |(_, c)| c);
        assert!(
            tunnel.contains(&c.to_string()),
            "WireGuardStats::{field} is not in TunpipeTunnelStats"
        );
    }
    assert!(tunnel.contains(&"drop_bad_mac1".to_string()), "{tunnel:?}");

    // A peer's figures: a configured peer of a stage that never ran has every field.
    let peer_fields = header_fields("TunpipePeerStats");
    let key = tunpipe::wireguard::Key::generate();
    let config = tunpipe::wireguard::WgConfig::parse(&format!(
        "[Interface]\nPrivateKey = {}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.0.0.0/8\n",
        key.to_base64(),
        tunpipe::wireguard::Key::generate().public_key().to_base64()
    ))
    .unwrap();
    let peers = tunpipe::wireguard::WireGuard::new(&config).unwrap().peers();
    let renamed = [
        ("last_handshake", "last_handshake_sec"),
        // The reasons a peer can be named for, each a field (`dropped` is their sum).
        ("drops", "drop_auth_failure"),
    ];
    let core = debug_fields(&format!("{:?}", peers[0]));
    assert!(core.len() >= 9, "{core:?}");
    for field in core {
        let c = renamed
            .iter()
            .find(|(core, _)| *core == field)
            .map_or(field.as_str(), |(_, c)| c);
        assert!(
            peer_fields.contains(&c.to_string()),
            "PeerStats::{field} is not in TunpipePeerStats"
        );
    }
}

#[test]
fn the_peer_struct_is_the_documented_padding_free_layout() {
    // The order a host's header has, which a prefix copy of an older, shorter struct relies
    // on: new fields take `reserved`.
    assert_eq!(
        header_fields("TunpipePeerStats"),
        [
            "size",
            "last_handshake_nsec",
            "public_key",
            "endpoint",
            "last_handshake_sec",
            "handshakes",
            "tx_packets",
            "tx_bytes",
            "rx_packets",
            "rx_bytes",
            "drop_auth_failure",
            "drop_replay",
            "drop_not_allowed",
            "drop_no_session",
            "drop_no_endpoint",
            "drop_no_handshake",
            "drop_garbage",
            "dropped",
            "reserved",
        ]
    );
    assert_eq!(std::mem::offset_of!(TunpipePeerStats, public_key), 8);
    assert_eq!(std::mem::offset_of!(TunpipePeerStats, endpoint), 40);
    assert_eq!(
        std::mem::offset_of!(TunpipePeerStats, last_handshake_sec),
        104
    );
    assert_eq!(std::mem::offset_of!(TunpipePeerStats, reserved), 216);
    assert_eq!(std::mem::size_of::<TunpipePeerStats>(), 280);
    assert_eq!(std::mem::align_of::<TunpipePeerStats>(), 8);
    let header = include_str!("../tunpipe.h");
    assert!(header.contains("uint8_t public_key[32];"));
    assert!(header.contains("int32_t tunpipe_peer_stats(uint32_t index,"));
    assert!(
        header.contains("int32_t tunpipe_engine_peer_stats(const struct TunpipeEngine *engine,")
    );
    let p = TunpipePeerStats::default();
    assert_eq!(p.size, 280);
    assert_eq!(
        (p.last_handshake_sec, p.dropped, p.reserved),
        (0, 0, [0; 8])
    );
}
