//! `tunpipe`: runs the engine on a TUN device (`tunpipe run`), or shows it at work
//! (`tunpipe demo`).
//!
//! tun-rs has no `DeviceBuilder` on iOS/tvOS or Android, where the host (a packet tunnel, a
//! VpnService) owns the TUN and drives the engine through the C ABI instead, so there the
//! binary is a stub that says so.

#[cfg(not(any(target_os = "ios", target_os = "tvos", target_os = "android")))]
mod cli;

#[cfg(not(any(target_os = "ios", target_os = "tvos", target_os = "android")))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(any(target_os = "ios", target_os = "tvos", target_os = "android"))]
fn main() {
    eprintln!(
        "tunpipe: the command-line tool is not available on this platform, where tun-rs \
         cannot create a TUN device; the host hands its TUN fd to the engine through the C ABI \
         (start_tun)"
    );
    std::process::exit(1);
}
