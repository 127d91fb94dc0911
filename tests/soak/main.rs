//! Soak and stress tests (Linux: they read /proc and make TUNs in network namespaces; see
//! linux.rs for what they check and the full campaign's command). Elsewhere this binary runs
//! nothing.

#[cfg(target_os = "linux")]
#[path = "../common/mod.rs"]
mod common;
#[cfg(target_os = "linux")]
mod linux;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
}
