//! The tunnel's timers across a simulated sleep of 9 minutes and after a quiet spell, and
//! boringtun's timer moments probed (tests/mock_clock): run here, by its own cargo
//! invocation, because they need the test-only feature `mock-clock`, and cargo would give a
//! feature asked for in this workspace to every build of the engine in it.

use std::process::Command;

#[test]
fn timers_across_a_simulated_sleep() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mock_clock/Cargo.toml");
    let target = concat!(env!("CARGO_TARGET_TMPDIR"), "/mock_clock");
    let output = Command::new(cargo)
        .args(["test", "--release", "--manifest-path", manifest])
        .args(["--target-dir", target])
        .output()
        .expect("run cargo");
    let text = String::from_utf8_lossy(&output.stdout);
    println!("{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "tests/mock_clock failed");
    assert_eq!(
        text.matches("test result: ok. 1 passed").count(),
        3,
        "the sleep, the quiet spell and the boringtun probe did not all run"
    );
}
