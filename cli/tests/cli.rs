//! The `tunpipe` binary, run as a user would run it.
//!
//! Tests that need root (a TUN device in a private network namespace) are marked ignored at
//! run time when the process cannot make one, so they show as ignored, never as passed. This
//! is why the file runs under libtest-mimic (`harness = false`): the default harness can only
//! ignore at compile time.

use libtest_mimic::{Arguments, Failed, Trial};
use std::process::{Command, Output, Stdio};
use tunpipe_testkit::check::check;
use tunpipe_testkit::ping::ping_summary_of;
use tunpipe_testkit::running::Running;
use tunpipe_testkit::trials::root_only;
use tunpipe_testkit::wg::KeyPair;

const BIN: &str = env!("CARGO_BIN_EXE_tunpipe");

/// What `run` and `wg` print once their engine runs.
const READY: &str = "stop with Ctrl-C";

fn main() {
    let args = Arguments::from_args();
    // The root tests run the binary under `unshare -n` and ping through `nsenter`: Linux.
    let problem = if cfg!(target_os = "linux") {
        tunpipe_testkit::tun::privilege_problem()
    } else {
        Some("needs Linux network namespaces".into())
    };
    // `tunpipe wg` against a real peer also needs wireguard-go.
    #[cfg(target_os = "linux")]
    let wg_problem = problem
        .clone()
        .or_else(tunpipe_testkit::wgpeer::wireguard_go_problem);
    #[cfg(not(target_os = "linux"))]
    let wg_problem = problem.clone();
    let trials = vec![
        Trial::test("bad_flag_is_a_one_line_error", bad_flag_is_a_one_line_error),
        Trial::test("unknown_command_is_a_one_line_error", unknown_command),
        Trial::test("missing_flag_names_it", missing_flag_names_it),
        Trial::test("bad_address_is_a_one_line_error", bad_address),
        Trial::test("invalid_mtu_is_rejected_before_any_device", invalid_mtu),
        Trial::test("ipv6_with_small_mtu_is_rejected", ipv6_small_mtu),
        Trial::test("help_exits_zero", help_exits_zero),
        Trial::test("demo_in_memory_prints_a_summary", demo_in_memory),
        root_only(
            Trial::test("root_demo_on_tun_gets_every_ping_reply", demo_on_tun),
            &problem,
        ),
        root_only(
            Trial::test(
                "root_run_answers_ping_and_exits_0_on_sigint",
                run_and_sigint,
            ),
            &problem,
        ),
        root_only(
            Trial::test(
                "root_run_takes_a_signal_delivered_twice_as_one",
                run_takes_a_doubled_signal_as_one,
            ),
            &problem,
        ),
        root_only(
            Trial::test(
                "root_run_names_the_interface_the_kernel_made",
                run_names_the_kernels_interface,
            ),
            &problem,
        ),
        root_only(
            Trial::test(
                "root_run_refuses_an_existing_tun_unless_attach",
                run_refuses_an_existing_tun,
            ),
            &problem,
        ),
        root_only(
            Trial::test(
                "root_run_on_an_existing_non_tun_is_a_one_line_error",
                run_on_a_non_tun,
            ),
            &problem,
        ),
        root_only(
            Trial::test(
                "root_run_with_an_unassignable_address_says_so",
                run_with_an_unassignable_address,
            ),
            &problem,
        ),
        Trial::test(
            "wg_bad_config_is_a_one_line_error_naming_the_line",
            wg_bad_config,
        ),
        Trial::test(
            "wg_refuses_allowed_ips_that_contain_the_endpoint",
            wg_endpoint_in_allowed_ips,
        ),
        Trial::test(
            "wg_a_damaged_config_names_its_line_and_never_shows_a_key",
            wg_damaged_configs_show_no_key,
        ),
        Trial::test(
            "wg_warns_when_others_may_read_the_private_key",
            wg_warns_about_loose_permissions,
        ),
        Trial::test(
            "wg_check_takes_a_config_at_the_limits_and_refuses_one_past",
            wg_check_at_the_limits,
        ),
        root_only(
            Trial::test(
                "root_wg_against_wireguard_go_ping_iperf3_and_sigint",
                wg_against_wireguard_go,
            ),
            &wg_problem,
        ),
        root_only(
            Trial::test(
                "root_wg_configured_and_changed_by_wg_while_it_runs",
                wg_tools_against_wireguard_go,
            ),
            &wg_problem,
        ),
        root_only(
            Trial::test(
                "root_wg_quick_up_and_down_with_tunpipe_wg",
                wg_quick_against_wireguard_go,
            ),
            &wg_problem,
        ),
        root_only(
            Trial::test(
                "root_wg_quick_routes_a_full_tunnel_through_tunpipe_wg",
                wg_quick_full_tunnel_against_wireguard_go,
            ),
            &wg_problem,
        ),
        root_only(
            Trial::test(
                "root_wg_routes_a_full_tunnel_as_wg_quick_and_undoes_it",
                wg_full_tunnel_against_wireguard_go,
            ),
            &wg_problem,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

fn tunpipe(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the tunpipe binary runs")
}

/// Fails unless the command failed with exactly one line on stderr that contains `needle`.
fn one_line_failure(args: &[&str], needle: &str) -> Result<(), Failed> {
    let out = tunpipe(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(!out.status.success(), || {
        format!("{args:?} should fail; it exited {}", out.status)
    })?;
    check(out.status.code().is_some(), || {
        format!("{args:?} died of a signal: {}", out.status)
    })?;
    check(stderr.trim_end().lines().count() == 1, || {
        format!("{args:?}: stderr should be one line, was:\n{stderr}")
    })?;
    check(stderr.contains(needle), || {
        format!("{args:?}: stderr should mention {needle:?}, was: {stderr}")
    })?;
    check(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        || format!("{args:?}: a panic: {stderr}"),
    )
}

fn bad_flag_is_a_one_line_error() -> Result<(), Failed> {
    one_line_failure(
        &["run", "--name", "t0", "--ipv4", "10.9.0.1/24", "--bogus"],
        "--bogus",
    )?;
    one_line_failure(&["demo", "--seconds", "zero"], "zero")
}

fn unknown_command() -> Result<(), Failed> {
    one_line_failure(&["frobnicate"], "frobnicate")
}

fn missing_flag_names_it() -> Result<(), Failed> {
    one_line_failure(&["run", "--name", "t0"], "--ipv4")
}

fn bad_address() -> Result<(), Failed> {
    one_line_failure(
        &["run", "--name", "t0", "--ipv4", "10.9.0.1"],
        "ADDR/PREFIX",
    )?;
    one_line_failure(
        &[
            "run",
            "--name",
            "t0",
            "--ipv4",
            "10.9.0.1/24",
            "--ipv6",
            "fd00::1/200",
        ],
        "prefix",
    )
}

fn invalid_mtu() -> Result<(), Failed> {
    // Validation comes before the device, so this never creates t0, even as root.
    one_line_failure(
        &[
            "run",
            "--name",
            "t0",
            "--ipv4",
            "10.9.0.1/24",
            "--mtu",
            "10",
        ],
        "mtu 10",
    )?;
    one_line_failure(
        &[
            "run",
            "--name",
            "t0",
            "--ipv4",
            "10.9.0.1/24",
            "--workers",
            "100000",
        ],
        "workers",
    )
}

fn ipv6_small_mtu() -> Result<(), Failed> {
    one_line_failure(
        &[
            "run",
            "--name",
            "t0",
            "--ipv4",
            "10.9.0.1/24",
            "--ipv6",
            "fd00:9::1/64",
            "--mtu",
            "576",
        ],
        "1280",
    )
}

fn help_exits_zero() -> Result<(), Failed> {
    let out = tunpipe(&["run", "--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(out.status.success(), || {
        format!("--help exited {}", out.status)
    })?;
    check(stdout.contains("--stats-interval"), || {
        format!("help should list the flags:\n{stdout}")
    })
}

fn demo_in_memory() -> Result<(), Failed> {
    let out = tunpipe(&["demo", "--seconds", "1", "--memory"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(out.status.success(), || {
        format!("demo exited {}:\n{stdout}\n{stderr}", out.status)
    })?;
    for needle in [
        "in-memory device",
        "--memory was given",
        "summary",
        "client RTT",
        "engine time",
        "engine drops",
        "every packet accounted for",
        "stop, idle",
        "memory",
        "cleaned up",
    ] {
        check(stdout.contains(needle), || {
            format!("the demo's output should contain {needle:?}:\n{stdout}")
        })?;
    }
    check(!stdout.contains("ping IPv4"), || {
        format!("no ping rows on the in-memory device:\n{stdout}")
    })?;
    // Some round trips were answered.
    check(answered(&stdout).is_some_and(|n| n > 0), || {
        format!("no UDP round trips answered:\n{stdout}")
    })
}

/// The "answered" count of the summary's UDP row.
fn answered(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find(|l| l.contains("UDP closed loop"))?;
    let before = line.split(" answered").next()?;
    before.rsplit(' ').next()?.replace(',', "").parse().ok()
}

fn demo_on_tun() -> Result<(), Failed> {
    let out = tunpipe(&["demo", "--seconds", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(out.status.success(), || {
        format!("demo exited {}:\n{stdout}\n{stderr}", out.status)
    })?;
    check(stdout.contains("real TUN device"), || {
        format!("the demo should run on a TUN as root:\n{stdout}")
    })?;
    let row = |label: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .map(str::to_string)
    };
    for (label, expect) in [
        ("ping IPv4", "200 sent, 200 received"),
        ("ping IPv6", "50 sent, 50 received"),
    ] {
        let line = row(label).ok_or_else(|| format!("no {label} row:\n{stdout}"))?;
        check(line.contains(expect), || {
            format!("{label}: expected {expect:?}, got {line:?}\n{stdout}")
        })?;
    }
    check(answered(&stdout).is_some_and(|n| n > 0), || {
        format!("no UDP round trips answered:\n{stdout}")
    })?;
    check(stdout.contains("every packet accounted for"), || {
        format!("conservation should hold:\n{stdout}")
    })?;
    check(stdout.contains("cleaned up"), || stdout.to_string())
}

/// Runs the kernel's ping in the network namespace of process `pid`: (transmitted, received).
fn ping_in(pid: u32, args: &[&str]) -> Result<(u64, u64), Failed> {
    let pid = pid.to_string();
    let mut command = Command::new("nsenter");
    command
        .args(["-t", &pid, "-n", "ping", "-q", "-w", "30"])
        .args(args);
    Ok(ping_summary_of(&mut command).map_err(|e| format!("ping {args:?}: {e}"))?)
}

fn run_and_sigint() -> Result<(), Failed> {
    let script = format!(
        "ip link set lo up && exec {BIN} run --name t0 --ipv4 10.9.0.1/24 --ipv6 fd00:9::1/64"
    );
    // `unshare -n` without --fork execs: the child's pid is tunpipe's own.
    let running = Running::start(
        Command::new("unshare").args(["-n", "sh", "-c", &script]),
        READY,
    )?;
    let pid = running.pid();
    let (sent, received) = ping_in(pid, &["-c", "500", "-i", "0.001", "10.9.0.2"])?;
    check(sent == 500 && received == 500, || {
        format!("IPv4 ping: {sent} sent, {received} received")
    })?;
    let (sent, received) = ping_in(pid, &["-6", "-c", "5", "-i", "0.2", "fd00:9::2"])?;
    check(sent == 5 && received == 5, || {
        format!("IPv6 ping: {sent} sent, {received} received")
    })?;
    let ended = running.interrupt()?;
    ended.succeeded_saying(&[
        "final counters",
        "engine in",
        "engine drops",
        "every packet accounted for",
        "engine time",
        "kernel t0",
        "after SIGINT",
    ])?;
    check(ended.stderr.trim().is_empty(), || {
        format!("stderr: {}", ended.stderr)
    })
}

/// `timeout`, and a terminal's Ctrl-C, signal a process group as well as the process: one
/// request arrives twice at once. It is one stop, exit 0, not "exiting without waiting".
fn run_takes_a_doubled_signal_as_one() -> Result<(), Failed> {
    let script = format!("ip link set lo up && exec {BIN} run --name t2 --ipv4 10.9.2.1/24");
    let running = Running::start(
        Command::new("unshare").args(["-n", "sh", "-c", &script]),
        READY,
    )?;
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    let rc = unsafe { libc::kill(running.pid() as libc::pid_t, libc::SIGINT) };
    check(rc == 0, || "kill(SIGINT) failed".to_string())?;
    // The second a moment later, while the first one's stop and report run (the window in
    // which `timeout`'s two signals land).
    std::thread::sleep(std::time::Duration::from_millis(3));
    let ended = running.interrupt()?;
    ended.succeeded_saying(&["after SIGINT"])?;
    check(!ended.stderr.contains("second signal"), || {
        ended.stderr.clone()
    })
}

/// Runs `script` with `sh` in a network namespace of its own (loopback up), where `$BIN` is
/// the tunpipe binary, and returns stdout and stderr together. Commands that stop `tunpipe
/// run` send it SIGINT with `timeout -s INT`: a bound on the run, not a timing assertion.
fn in_own_netns(script: &str) -> Result<String, Failed> {
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &format!("ip link set lo up; {script}")])
        .env("BIN", BIN)
        .stdin(Stdio::null())
        .output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The `tunpipe:` error lines in `output`.
fn error_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.starts_with("tunpipe: error:"))
        .collect()
}

fn run_names_the_kernels_interface() -> Result<(), Failed> {
    let out = in_own_netns(
        r#"timeout --preserve-status -s INT 2 "$BIN" run --name 'tpx%d' --ipv4 10.9.0.1/24; echo "rc=$?""#,
    )?;
    check(out.contains("rc=0"), || format!("run failed:\n{out}"))?;
    check(!out.contains("tpx%d"), || {
        format!("the pattern was reported, not the interface:\n{out}")
    })?;
    check(
        out.contains("on tpx0") && out.contains("counters for tpx0"),
        || format!("the report should name tpx0:\n{out}"),
    )?;
    // The kernel's own counters are there on Linux, under the real name.
    check(
        out.contains("kernel tpx0 → engine") && !out.contains("unavailable"),
        || format!("no kernel counters:\n{out}"),
    )
}

fn run_refuses_an_existing_tun() -> Result<(), Failed> {
    let out = in_own_netns(
        r#"ip tuntap add dev ptun mode tun
        "$BIN" run --name ptun --ipv4 10.9.0.1/24; echo "rc=$?"
        echo "addresses after refusal: $(ip -br -4 addr show ptun)"
        timeout --preserve-status -s INT 2 "$BIN" run --name ptun --attach --ipv4 10.9.1.1/24; echo "rc=$?"
        echo "addresses after attach: $(ip -br -4 addr show ptun)""#,
    )?;
    let errors = error_lines(&out);
    check(
        errors.len() == 1 && errors[0].contains("already exists") && errors[0].contains("--attach"),
        || format!("one error that says so and names --attach:\n{out}"),
    )?;
    check(out.contains("rc=1") && out.contains("rc=0"), || {
        format!("refused (rc 1), then attached (rc 0):\n{out}")
    })?;
    check(!out.contains("10.9.0.1"), || {
        format!("a refused run touched the interface:\n{out}")
    })?;
    check(out.contains("ptun stays"), || {
        format!("the attached run should say the TUN stays:\n{out}")
    })?;
    let after = out.split("addresses after attach:").nth(1).unwrap_or("");
    check(!after.contains("10.9.1.1"), || {
        format!("the attached run left its address behind:\n{out}")
    })
}

fn run_on_a_non_tun() -> Result<(), Failed> {
    let out = in_own_netns(
        r#"ip link add vx0 type veth peer name vx1
        "$BIN" run --name vx0 --ipv4 10.9.0.1/24; echo "rc=$?"
        "$BIN" run --name vx0 --attach; echo "rc=$?""#,
    )?;
    let errors = error_lines(&out);
    check(errors.len() == 2, || format!("two one-line errors:\n{out}"))?;
    check(errors[0].contains("vx0 already exists"), || out.clone())?;
    check(errors[1].contains("cannot attach to vx0"), || out.clone())?;
    check(
        !out.contains("os error 22)\n") || errors[1].contains("TUN"),
        || out.clone(),
    )
}

fn run_with_an_unassignable_address() -> Result<(), Failed> {
    let out = in_own_netns(
        r#""$BIN" run --name tpa0 --ipv4 10.9.0.1/24 --ipv6 ff02::1/64; echo "rc=$?""#,
    )?;
    let errors = error_lines(&out);
    check(
        errors.len() == 1 && errors[0].contains("cannot assign ff02::1/64 to tpa0"),
        || format!("the error should name the address:\n{out}"),
    )?;
    check(!out.contains("cannot create"), || {
        format!("the device was made; the address failed:\n{out}")
    })
}

/// A wg-quick file for a test, in the temp directory, removed when dropped.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    /// A file only its owner may read, as a wg-quick file should be.
    fn new(name: &str, text: &str) -> Result<ConfigFile, Failed> {
        ConfigFile::with_mode(name, text, 0o600)
    }

    fn with_mode(name: &str, text: &str, mode: u32) -> Result<ConfigFile, Failed> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("tunpipe-{}-{name}.conf", std::process::id()));
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(ConfigFile(path))
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn wg_text(allowed_ips: &str, extra: &str) -> String {
    let (ours, theirs) = (KeyPair::generate(), KeyPair::generate());
    format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.8.0.1/24\n{extra}\n[Peer]\nPublicKey = {}\n\
         Endpoint = 192.0.2.1:51820\nAllowedIPs = {allowed_ips}\n",
        ours.private.to_base64(),
        theirs.public.to_base64()
    )
}

fn wg_bad_config() -> Result<(), Failed> {
    let file = ConfigFile::new("bad-key", &wg_text("10.8.0.0/24", "ListenPort = lots"))?;
    one_line_failure(&["wg", "--config", file.path()], "line 4 (ListenPort)")?;
    one_line_failure(
        &["wg", "--config", "/nonexistent/wg0.conf"],
        "cannot read the config /nonexistent/wg0.conf",
    )
}

fn wg_endpoint_in_allowed_ips() -> Result<(), Failed> {
    // The usual full-tunnel file. On Linux `tunpipe wg` routes it as wg-quick does (tested
    // against wireguard-go below); elsewhere it adds no routes, so it refuses, before it
    // makes any device, and says what would do.
    let file = ConfigFile::new("full-tunnel", &wg_text("0.0.0.0/0, ::/0", ""))?;
    if cfg!(target_os = "linux") {
        let out = tunpipe(&["wg", "--config", file.path(), "--check"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        return check(
            out.status.success() && stdout.contains("a valid config"),
            || format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        );
    }
    one_line_failure(
        &["wg", "--config", file.path()],
        "AllowedIPs 0.0.0.0/0 contains the endpoint 192.0.2.1 of peer 1",
    )?;
    one_line_failure(&["wg", "--config", file.path()], "0.0.0.0/1, 128.0.0.0/2")
}

/// Every damaged text of `tunpipe_testkit::secrets::cases` through `tunpipe wg --check` (which
/// makes no device, should a text parse): a one-line error that names the line, and no
/// 16-character run of a key in anything printed.
fn wg_damaged_configs_show_no_key() -> Result<(), Failed> {
    use tunpipe_testkit::secrets::{cases, leak};
    let mut failures = Vec::new();
    for (i, case) in cases().into_iter().enumerate() {
        let file = ConfigFile::new(&format!("damaged-{i}"), &case.text)?;
        let out = tunpipe(&["wg", "--config", file.path(), "--check"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{}: accepted: {stdout}", case.name));
        }
        if let Some(leak) = leak(&format!("{stdout}{stderr}")) {
            failures.push(format!("{}: {leak}", case.name));
        }
        let needle = format!("line {}", case.line);
        if stderr.trim_end().lines().count() != 1 || !stderr.contains(&needle) {
            failures.push(format!(
                "{}: stderr should be one line naming {needle}: {stderr}",
                case.name
            ));
        }
    }
    check(failures.is_empty(), || failures.join("\n"))
}

/// Like wg-quick: a file holding a private key that its group or others may read is named in a
/// warning (with its mode, never its content); one only its owner may read is not.
fn wg_warns_about_loose_permissions() -> Result<(), Failed> {
    use tunpipe_testkit::secrets::{good_text, leak};
    let open = ConfigFile::with_mode("readable", &good_text(), 0o644)?;
    let out = tunpipe(&["wg", "--config", open.path(), "--check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(out.status.success(), || {
        format!("a valid config should pass the check: {stdout}{stderr}")
    })?;
    check(
        stderr.contains("warn")
            && stderr.contains(open.path())
            && stderr.contains("mode 644")
            && stderr.contains("chmod 600"),
        || format!("expected a warning naming the file and its mode: {stderr}"),
    )?;
    check(leak(&format!("{stdout}{stderr}")).is_none(), || {
        format!("a key was shown: {stdout}{stderr}")
    })?;
    let closed = ConfigFile::with_mode("private", &good_text(), 0o600)?;
    let out = tunpipe(&["wg", "--config", closed.path(), "--check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(out.status.success() && stderr.trim().is_empty(), || {
        format!("mode 600: no warning expected: {stderr}")
    })
}

/// `--check` on a file exactly at MAX_PEERS and MAX_ALLOWED_IPS passes; one peer more is a
/// one-line error naming the limit and the line.
fn wg_check_at_the_limits() -> Result<(), Failed> {
    use tunpipe::wireguard::{MAX_ALLOWED_IPS, MAX_PEERS};
    use tunpipe_testkit::secrets::many_peers_text;
    let at = ConfigFile::new("at-limits", &many_peers_text(MAX_PEERS, MAX_ALLOWED_IPS))?;
    let out = tunpipe(&["wg", "--config", at.path(), "--check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success() && stdout.contains(&format!("{MAX_PEERS} peer(s)")),
        || {
            format!(
                "at the limits: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        },
    )?;
    let past = ConfigFile::new("past-limits", &many_peers_text(MAX_PEERS + 1, 0))?;
    one_line_failure(
        &["wg", "--config", past.path(), "--check"],
        &format!(
            "line {} ([Peer]): more than {MAX_PEERS} peers",
            5 + 3 * MAX_PEERS
        ),
    )
}

fn wg_against_wireguard_go() -> Result<(), Failed> {
    #[cfg(target_os = "linux")]
    {
        use tunpipe_testkit::netns::{in_fresh_netns, Ipv6};
        in_fresh_netns(Ipv6::NoDad, wg_session)
    }
    #[cfg(not(target_os = "linux"))]
    Err("needs Linux".into())
}

/// `tunpipe wg --config FILE --name IFNAME` as the README says, in this namespace, against
/// wireguard-go in another: ping both ways (IPv4 and IPv6), TCP both ways, SIGINT.
#[cfg(target_os = "linux")]
fn wg_session() -> Result<(), Failed> {
    use tunpipe_testkit::netns::{iperf3, iperf3_installed, iperf3_result};
    use tunpipe_testkit::wgpeer::{PeerOptions, WgRig, END_V4, PEER_V4, PEER_V6};
    let rig = WgRig::up(&PeerOptions::default())?;
    // A second peer (never there) whose AllowedIPs are the interface's own subnets, which the
    // kernel routes when the addresses are set: each must be routed once, not again.
    let subnets = format!(
        "[Peer]\nPublicKey = {}\nAllowedIPs = 10.77.0.0/24, fd77::/64\n\n",
        tunpipe_testkit::wg::KeyPair::generate().public.to_base64()
    );
    let file = ConfigFile::new("session", &rig.config_text_with(&subnets))?;
    let running = Running::start(
        Command::new(BIN).args(["wg", "--config", file.path(), "--name", "tpwg7"]),
        READY,
    )?;
    for (family, subnet) in [("-4", "10.77.0.0/24"), ("-6", "fd77::/64")] {
        let routes = tunpipe_testkit::netns::run_here(&["ip", family, "route", "show", subnet])?;
        check(routes.lines().count() == 1, || {
            format!(
                "{subnet} is routed {} times:\n{routes}",
                routes.lines().count()
            )
        })?;
    }
    rig.ping_all_from_end(PEER_V4, 5)?;
    rig.ping_all_from_peer(END_V4, 5)?;
    rig.ping_all_from_end(PEER_V6, 5)?;
    if iperf3_installed() {
        for reverse in [false, true] {
            let moved = iperf3_result(&iperf3(&rig.peer, PEER_V4, 2, reverse)?)?;
            check(moved.bytes > 1_000_000, || {
                format!("iperf3 moved {} bytes", moved.bytes)
            })?;
        }
    }
    let ended = running.interrupt()?;
    eprintln!("tunpipe wg exited {:?} after SIGINT", ended.exit_after);
    ended.succeeded_saying(&[
        "WireGuard on tpwg7",
        "outbound conservation",
        "inbound conservation",
        "1 completed",
        "after SIGINT",
        "tunnel drops",
    ])?;
    let accounted = ended.stdout.matches("every packet accounted for").count();
    check(accounted == 2, || {
        format!("both directions conserve:\n{}", ended.stdout)
    })
}

fn wg_tools_against_wireguard_go() -> Result<(), Failed> {
    #[cfg(target_os = "linux")]
    {
        use tunpipe_testkit::netns::{in_fresh_netns, Ipv6};
        in_fresh_netns(Ipv6::NoDad, wg_tools)
    }
    #[cfg(not(target_os = "linux"))]
    Err("needs Linux".into())
}

/// `tunpipe wg --name IF` with no config, set up as wg-quick sets up a userspace WireGuard
/// (the daemon, then `wg setconf` and `ip`), against wireguard-go. `wg show` sees the peer's
/// handshake and bytes (equal to what wireguard-go counts); `wg set` adds and removes a peer
/// and moves the listen port while the first peer's session carries on; `wg showconf` and
/// `wg syncconf` round-trip.
#[cfg(target_os = "linux")]
fn wg_tools() -> Result<(), Failed> {
    use tunpipe_testkit::netns::{output_of, run_here};
    use tunpipe_testkit::wgpeer::{
        configure_uapi_end, start_uapi_daemon, stop_uapi_daemon, unique_ifname, PeerOptions, WgRig,
        END_V4, PEER_V4,
    };
    let rig = WgRig::up(&PeerOptions::default())?;
    let ifname = unique_ifname("tpw");
    let mut daemon = start_uapi_daemon(None, &[BIN, "wg", "--name"], &ifname)?;
    let show = |what: &str| run_here(&["wg", "show", &ifname, what]);
    // The rig's peer's line of `wg show IF dump`, split.
    let peer_line = || -> Result<Vec<String>, Failed> {
        let dump = show("dump")?;
        let key = rig.peer_keys.public.to_base64();
        let line = dump
            .lines()
            .find(|l| l.starts_with(&key))
            .ok_or_else(|| format!("no line for the peer in:\n{dump}"))?;
        Ok(line.split('\t').map(str::to_string).collect())
    };
    let result = (|| -> Result<(), Failed> {
        configure_uapi_end(&rig, &ifname, "")?;
        rig.ping_all_from_end(PEER_V4, 3)?;
        let line = peer_line()?;
        let handshake: u64 = line[4].parse()?;
        check(handshake > 0, || format!("no handshake in {line:?}"))?;
        // What each end counts of the other's messages agrees, byte for byte.
        let agree = tunpipe_testkit::check::eventually(|| {
            let (Ok(here), Ok(there)) = (peer_line(), rig.peer_view()) else {
                return false;
            };
            here[5] == there.tx_bytes.to_string() && here[6] == there.rx_bytes.to_string()
        });
        check(agree, || {
            format!(
                "rx/tx: {:?} against wireguard-go's {:?}",
                peer_line(),
                rig.peer_view()
            )
        })?;

        // After a second, a new handshake would show a later time.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // A ping every 10 ms runs across the changes that leave the peer alone.
        let across = Command::new("ping")
            .args(["-c", "150", "-i", "0.01", "-q", PEER_V4])
            .stdout(Stdio::piped())
            .spawn()?;
        let other = KeyPair::generate().public.to_base64();
        let add = [
            "wg",
            "set",
            &ifname,
            "peer",
            &other,
            "allowed-ips",
            "10.99.0.0/24",
        ];
        run_here(&add)?;
        let peers = || show("peers").unwrap_or_default();
        check(peers().lines().count() == 2, peers)?;
        // A bad set (a port that is no number) is refused with wireguard-go's errno for it,
        // and changes nothing.
        let before = run_here(&["wg", "showconf", &ifname])?;
        let answer = uapi_exchange(&ifname, "set=1\nlisten_port=1\nlisten_port=x\n\n")?;
        check(answer == "errno=-22\n\n", || format!("answered {answer:?}"))?;
        check(run_here(&["wg", "showconf", &ifname])? == before, || {
            "a refused set changed the configuration".to_string()
        })?;
        run_here(&["wg", "set", &ifname, "peer", &other, "remove"])?;
        check(peers().lines().count() == 1, peers)?;
        let out = across.wait_with_output()?;
        let summary = String::from_utf8_lossy(&out.stdout).to_string();
        let (sent, received) = tunpipe_testkit::ping::summary(&summary).ok_or("no ping summary")?;
        check(sent == 150 && received == sent, || {
            format!("across the changes: {received} of {sent} answered\n{summary}")
        })?;
        run_here(&["wg", "set", &ifname, "listen-port", "51999"])?;
        check(show("listen-port")?.trim() == "51999", || {
            show("listen-port").unwrap_or_default()
        })?;
        // The peer follows the end to its new port (roaming) with the next packet.
        rig.ping_all_from_end(PEER_V4, 3)?;
        rig.ping_all_from_peer(END_V4, 3)?;
        let conf = run_here(&["wg", "showconf", &ifname])?;
        check(conf.contains("ListenPort = 51999"), || conf.clone())?;
        let argv: Vec<String> = ["wg", "syncconf", &ifname, "/dev/stdin"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        output_of(&argv, &conf)?;
        rig.ping_all_from_end(PEER_V4, 3)?;
        let line = peer_line()?;
        check(line[4] == handshake.to_string(), || {
            format!("a new handshake: {handshake} then {line:?}")
        })
    })();
    stop_uapi_daemon(&mut daemon, &ifname);
    result
}

fn wg_quick_against_wireguard_go() -> Result<(), Failed> {
    #[cfg(target_os = "linux")]
    {
        use tunpipe_testkit::netns::{in_fresh_netns, Ipv6};
        in_fresh_netns(Ipv6::NoDad, wg_quick)
    }
    #[cfg(not(target_os = "linux"))]
    Err("needs Linux".into())
}

/// `WG_QUICK_USERSPACE_IMPLEMENTATION=tunpipe-wg wg-quick up FILE`, as the README says,
/// against wireguard-go: wg-quick starts the daemon, configures it and routes through it;
/// pings go both ways; `wg-quick down` deletes the interface, and the daemon ends with it.
#[cfg(target_os = "linux")]
fn wg_quick() -> Result<(), Failed> {
    use tunpipe_testkit::wgpeer::{PeerOptions, WgRig, END_V4, PEER_V4, PEER_V6};
    let rig = WgRig::up(&PeerOptions::default())?;
    wg_quick_up_and_down(&rig.config_text(), || {
        rig.ping_all_from_end(PEER_V4, 3)?;
        rig.ping_all_from_end(PEER_V6, 3)?;
        rig.ping_all_from_peer(END_V4, 3)?;
        Ok(())
    })
}

/// The same with `AllowedIPs = 0.0.0.0/0, ::/0`, in a namespace whose only route is the
/// veth to the peer: wg-quick marks the socket (`wg set fwmark`) and adds its policy rules,
/// and addresses behind the peer answer through the tunnel.
#[cfg(target_os = "linux")]
fn wg_quick_full_tunnel() -> Result<(), Failed> {
    let (_rig, text) = full_tunnel_rig()?;
    wg_quick_up_and_down(&text, ping_behind_the_peer)?;
    let left = tunnel_rules()?;
    check(left.is_empty(), || {
        format!("rules left after down:\n{left}")
    })
}

/// wg-quick up with `text` on tunpipe-wg, `traffic` through it, `wg show` seeing a
/// handshake, then wg-quick down: the daemon ends (its socket goes) within 2 s.
#[cfg(target_os = "linux")]
fn wg_quick_up_and_down(
    text: &str,
    traffic: impl Fn() -> Result<(), Failed>,
) -> Result<(), Failed> {
    use tunpipe_testkit::wgpeer::unique_ifname;
    let ifname = unique_ifname("tpq");
    // wg-quick names the interface after the file.
    let dir = std::env::temp_dir().join(format!("tunpipe-wg-quick-{ifname}"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("{ifname}.conf"));
    std::fs::write(&file, text)?;
    let socket = format!("/var/run/wireguard/{ifname}.sock");
    let wg_quick = |up_down: &str| -> Result<String, Failed> {
        let out = Command::new("wg-quick")
            .args([up_down, &file.display().to_string()])
            .env(
                "WG_QUICK_USERSPACE_IMPLEMENTATION",
                env!("CARGO_BIN_EXE_tunpipe-wg"),
            )
            .stdin(Stdio::null())
            .output()?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        check(out.status.success(), || {
            format!("wg-quick {up_down}: {said}")
        })?;
        Ok(said)
    };
    let result = (|| -> Result<(), Failed> {
        let said = wg_quick("up")?;
        check(said.contains("tunpipe-wg"), || said.clone())?;
        traffic()?;
        let shown =
            tunpipe_testkit::netns::run_here(&["wg", "show", &ifname, "latest-handshakes"])?;
        check(!shown.trim().ends_with("\t0"), || shown.clone())?;
        wg_quick("down")?;
        let at = std::time::Instant::now();
        while std::path::Path::new(&socket).exists()
            && at.elapsed() < std::time::Duration::from_secs(2)
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        check(!std::path::Path::new(&socket).exists(), || {
            format!("{socket} still there 2 s after wg-quick down")
        })
    })();
    if std::path::Path::new(&socket).exists() {
        let _ = wg_quick("down");
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Writes `request` to interface `ifname`'s configuration socket and returns the answer, up
/// to its empty line.
#[cfg(target_os = "linux")]
fn uapi_exchange(ifname: &str, request: &str) -> Result<String, Failed> {
    use std::io::{Read, Write};
    let mut stream =
        std::os::unix::net::UnixStream::connect(format!("/var/run/wireguard/{ifname}.sock"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.ends_with(b"\n\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8(answer)?)
}

fn wg_quick_full_tunnel_against_wireguard_go() -> Result<(), Failed> {
    #[cfg(target_os = "linux")]
    {
        use tunpipe_testkit::netns::{in_fresh_netns, Ipv6};
        in_fresh_netns(Ipv6::NoDad, wg_quick_full_tunnel)
    }
    #[cfg(not(target_os = "linux"))]
    Err("needs Linux".into())
}

fn wg_full_tunnel_against_wireguard_go() -> Result<(), Failed> {
    #[cfg(target_os = "linux")]
    {
        use tunpipe_testkit::netns::{in_fresh_netns, Ipv6};
        in_fresh_netns(Ipv6::NoDad, wg_full_tunnel)
    }
    #[cfg(not(target_os = "linux"))]
    Err("needs Linux".into())
}

/// Addresses behind the rig's peer: on its loopback, reachable from the end only through
/// the tunnel (the end's namespace has no route but the veth's).
#[cfg(target_os = "linux")]
const BEHIND_V4: &str = "198.51.100.7";
#[cfg(target_os = "linux")]
const BEHIND_V6: &str = "2001:db8:77::7";

/// The rig, with addresses behind its peer, and the end's wg-quick text with
/// `AllowedIPs = 0.0.0.0/0, ::/0`.
#[cfg(target_os = "linux")]
fn full_tunnel_rig() -> Result<(tunpipe_testkit::wgpeer::WgRig, String), Failed> {
    use tunpipe_testkit::wgpeer::{PeerOptions, WgRig, PEER_V4, PEER_V6};
    let rig = WgRig::up(&PeerOptions::default())?;
    rig.peer.output(
        &["ip", "addr", "add", &format!("{BEHIND_V4}/32"), "dev", "lo"],
        "",
    )?;
    rig.peer.output(
        &[
            "ip",
            "addr",
            "add",
            &format!("{BEHIND_V6}/128"),
            "dev",
            "lo",
        ],
        "",
    )?;
    let peer_only = format!("AllowedIPs = {PEER_V4}/32, {PEER_V6}/128");
    let text = rig.config_text();
    check(text.contains(&peer_only), || text.clone())?;
    let text = text.replace(&peer_only, "AllowedIPs = 0.0.0.0/0, ::/0");
    Ok((rig, text))
}

/// Pings each address behind the peer, three times, and asks for every answer.
#[cfg(target_os = "linux")]
fn ping_behind_the_peer() -> Result<(), Failed> {
    for to in [BEHIND_V4, BEHIND_V6] {
        let (sent, received) =
            tunpipe_testkit::ping::ping(&["-c", "3", "-i", "0.2", "-W", "2", to])?;
        check(received == sent, || {
            format!("{to}: {received} of {sent} answered")
        })?;
    }
    Ok(())
}

/// What of a full tunnel's policy routing is in place: the rules that name a table.
#[cfg(target_os = "linux")]
fn tunnel_rules() -> Result<String, Failed> {
    let mut rules = String::new();
    for family in ["-4", "-6"] {
        let shown = tunpipe_testkit::netns::run_here(&["ip", family, "rule", "show"])?;
        for line in shown
            .lines()
            .filter(|l| l.contains("5182") || l.contains("suppress"))
        {
            rules.push_str(line);
            rules.push('\n');
        }
    }
    Ok(rules)
}

/// `tunpipe wg` with `AllowedIPs = 0.0.0.0/0, ::/0`, against wireguard-go, in a namespace
/// whose only route is the veth to the peer: addresses behind the peer answer through the
/// tunnel (so the endpoint's own datagrams did not loop into it), and at exit the rules are
/// gone.
#[cfg(target_os = "linux")]
fn wg_full_tunnel() -> Result<(), Failed> {
    let (_rig, text) = full_tunnel_rig()?;
    check(tunnel_rules()?.is_empty(), || {
        "rules before the start".to_string()
    })?;
    check(ping_behind_the_peer().is_err(), || {
        "the addresses behind the peer answer without the tunnel".to_string()
    })?;
    let file = ConfigFile::new("full", &text)?;
    let running = Running::start(
        Command::new(BIN).args(["wg", "--config", file.path(), "--name", "tpwf0"]),
        READY,
    )?;
    ping_behind_the_peer()?;
    let rules = tunnel_rules()?;
    check(
        rules
            .matches("not from all fwmark 0xca6c lookup 51820")
            .count()
            == 2
            && rules.matches("lookup main suppress_prefixlength 0").count() == 2,
        || format!("rules:\n{rules}"),
    )?;
    let ended = running.interrupt()?;
    ended.succeeded_saying(&["full tunnel: 0.0.0.0/0, ::/0 in table 51820"])?;
    let left = tunnel_rules()?;
    check(left.is_empty(), || {
        format!("rules left after exit:\n{left}")
    })
}
