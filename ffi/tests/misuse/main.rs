//! C ABI misuse on a real TUN fd (Linux: network namespaces; see linux.rs). Elsewhere this
//! binary runs nothing.

#[cfg(target_os = "linux")]
mod c_api;
#[cfg(target_os = "linux")]
mod linux;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
}
