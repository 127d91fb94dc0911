//! `tunpipe`: runs the engine on a TUN device (`tunpipe run`), or shows it at work
//! (`tunpipe demo`).
//!
//! tun-rs has no `DeviceBuilder` on iOS/tvOS, where the host drives the engine through the
//! C ABI instead, so there the binary is a stub that says so.

#[cfg(not(any(target_os = "ios", target_os = "tvos")))]
mod cli;

#[cfg(not(any(target_os = "ios", target_os = "tvos")))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(any(target_os = "ios", target_os = "tvos"))]
fn main() {
    eprintln!(
        "tunpipe: the command-line tool is not available on iOS/tvOS; \
         start the engine from the packet tunnel through the C ABI (start_tun)"
    );
    std::process::exit(1);
}
