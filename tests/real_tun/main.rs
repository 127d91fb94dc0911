//! Real-TUN tests: the kernel's own `ping`, `ping -6` and UDP sockets as clients of the
//! engine, each in a fresh network namespace (Linux; see linux.rs). Elsewhere this binary
//! runs nothing.

#[cfg(target_os = "linux")]
mod linux;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
}
