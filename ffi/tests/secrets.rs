//! No key in any message of the C ABI (issue 16): every damaged wg-quick text of
//! `tunpipe_testkit::secrets::cases`, through each call that reads one, fails with
//! `TUNPIPE_ERR_CONFIG`; the last error names the line, and neither it nor any line the log
//! callback receives (at WARN and below) shows a 16-character run of a key. And the limits:
//! `tunpipe_config_validate` takes a config exactly at them, and refuses one past.
//!
//! Its own test binary: the log callback is process-wide.

#[path = "misuse/c_api.rs"]
mod c_api;

use c_api::default_config;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::null_mut;
use std::sync::Mutex;
use std::time::Instant;
use tunpipe::wireguard::{MAX_ALLOWED_IPS, MAX_PEERS};
use tunpipe_ffi::*;
use tunpipe_testkit::secrets::{cases, leak, many_peers_text};

fn last_error() -> String {
    let mut buf = [0 as c_char; 1024];
    // SAFETY: `buf` holds `buf.len()` bytes.
    let n = unsafe { tunpipe_last_error(buf.as_mut_ptr(), buf.len()) };
    assert!(n >= 0);
    // SAFETY: tunpipe_last_error NUL-terminates within the buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Every line the log callback received, with its level.
static LINES: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

unsafe extern "C" fn collect(_context: *mut c_void, level: i32, message: *const c_char) {
    // SAFETY: tunpipe passes a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    if let Ok(mut lines) = LINES.lock() {
        lines.push((level, text));
    }
}

/// Calls `call` (which must fail with `TUNPIPE_ERR_CONFIG`) and returns the last error.
fn config_error(what: &str, name: &str, code: i32, failures: &mut Vec<String>) -> String {
    if code != TUNPIPE_ERR_CONFIG {
        failures.push(format!(
            "{name}: {what} returned {code}, expected TUNPIPE_ERR_CONFIG"
        ));
    }
    last_error()
}

#[test]
fn damaged_configs_show_no_key_in_the_last_error_or_the_log() {
    // SAFETY: `collect` follows the callback contract; the context is never used.
    let code = unsafe { tunpipe_set_log_callback(Some(collect), TUNPIPE_LOG_TRACE, null_mut()) };
    assert_eq!(code, TUNPIPE_OK);
    let mut failures = Vec::new();
    for case in cases() {
        let text = CString::new(case.text.clone()).expect("no NUL");
        let mut c = default_config();
        c.wireguard_config = text.as_ptr();
        let mut messages = Vec::new();
        // SAFETY: a valid config whose text outlives the call.
        let code = unsafe { tunpipe_config_validate(&c) };
        messages.push(config_error(
            "tunpipe_config_validate",
            case.name,
            code,
            &mut failures,
        ));
        let mut bytes = 0u64;
        // SAFETY: as above; `bytes` is writable.
        let code = unsafe { tunpipe_config_reserved_bytes(&c, &mut bytes) };
        messages.push(config_error(
            "tunpipe_config_reserved_bytes",
            case.name,
            code,
            &mut failures,
        ));
        // SAFETY: as above.
        let code = unsafe { tunpipe_set_config(&c) };
        messages.push(config_error(
            "tunpipe_set_config",
            case.name,
            code,
            &mut failures,
        ));
        let mut engine: *mut TunpipeEngine = null_mut();
        // SAFETY: as above; `engine` is writable. The text is read before the fd.
        let code = unsafe { tunpipe_engine_start(&c, -1, &mut engine) };
        messages.push(config_error(
            "tunpipe_engine_start",
            case.name,
            code,
            &mut failures,
        ));
        assert!(engine.is_null(), "{}: an engine started", case.name);
        let mut needed = 0usize;
        // SAFETY: a readable C string; a length query (no buffer).
        let code = unsafe { tunpipe_wireguard_settings(text.as_ptr(), null_mut(), 0, &mut needed) };
        messages.push(config_error(
            "tunpipe_wireguard_settings",
            case.name,
            code,
            &mut failures,
        ));

        let logged = LINES.lock().unwrap().clone();
        for message in &messages {
            if let Some(leak) = leak(message) {
                failures.push(format!("{}: last error: {leak}", case.name));
            }
            if !message.contains(&format!("line {}", case.line)) {
                failures.push(format!(
                    "{}: the last error should name line {}: {message}",
                    case.name, case.line
                ));
            }
            if !logged
                .iter()
                .any(|(level, line)| *level == TUNPIPE_LOG_WARN && line == message)
            {
                failures.push(format!(
                    "{}: the log callback did not get {message:?} at WARN",
                    case.name
                ));
            }
        }
    }
    // SAFETY: NULL turns logging off.
    let code = unsafe { tunpipe_set_log_callback(None, TUNPIPE_LOG_OFF, null_mut()) };
    assert_eq!(code, TUNPIPE_OK);
    let logged = LINES.lock().unwrap().clone();
    assert!(!logged.is_empty(), "the callback received nothing");
    for (_, line) in &logged {
        if let Some(leak) = leak(line) {
            failures.push(format!("log callback: {leak}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_config_at_the_limits_validates_and_one_past_is_refused_naming_the_limit() {
    let text = CString::new(many_peers_text(MAX_PEERS, MAX_ALLOWED_IPS)).expect("no NUL");
    let mut c = default_config();
    c.wireguard_config = text.as_ptr();
    let started = Instant::now();
    // SAFETY: a valid config whose text outlives the call.
    let code = unsafe { tunpipe_config_validate(&c) };
    // Reported, not asserted: tests do not time things.
    eprintln!(
        "tunpipe_config_validate, {MAX_PEERS} peers and {MAX_ALLOWED_IPS} prefixes: {:?}",
        started.elapsed()
    );
    assert_eq!(code, TUNPIPE_OK, "{}", last_error());

    let past = CString::new(many_peers_text(MAX_PEERS + 1, 0)).expect("no NUL");
    c.wireguard_config = past.as_ptr();
    // SAFETY: as above.
    assert_eq!(unsafe { tunpipe_config_validate(&c) }, TUNPIPE_ERR_CONFIG);
    let message = last_error();
    assert!(
        message.contains(&format!("line {} ([Peer])", 5 + 3 * MAX_PEERS))
            && message.contains("MAX_PEERS"),
        "{message}"
    );

    let past = CString::new(many_peers_text(2, MAX_ALLOWED_IPS + 1)).expect("no NUL");
    c.wireguard_config = past.as_ptr();
    // SAFETY: as above.
    assert_eq!(unsafe { tunpipe_config_validate(&c) }, TUNPIPE_ERR_CONFIG);
    let message = last_error();
    assert!(
        message.contains("(AllowedIPs)") && message.contains("MAX_ALLOWED_IPS"),
        "{message}"
    );
}
