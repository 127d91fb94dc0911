//! Flags, parsed with clap, and clap's errors folded onto one line.

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;
use std::str::FromStr;
use tunpipe::BuiltinStage;

#[derive(Parser, Debug)]
#[command(
    name = "tunpipe",
    version,
    about = "A packet engine for TUN devices: run it on a TUN, or watch it work in a demo",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a TUN device and run the engine on it until SIGINT or SIGTERM. It works in the
    /// current network namespace: its addresses are the host's while it runs (try it in
    /// `unshare -n` or `ip netns exec NS`).
    Run(RunArgs),
    /// Show the engine at work: on a TUN in a private network namespace when allowed
    /// (root on Linux), otherwise on the in-memory device.
    Demo(DemoArgs),
    /// Run a WireGuard tunnel from a wg-quick file until SIGINT or SIGTERM: a TUN with the
    /// file's addresses and MTU, a route through it for each AllowedIPs prefix, and UDP to
    /// the peers. Like `run`, it works in the current network namespace.
    Wg(WgArgs),
}

#[derive(Args, Debug)]
pub struct WgArgs {
    /// The wg-quick file ([Interface] PrivateKey, Address, ListenPort, MTU; [Peer]
    /// PublicKey, PresharedKey, Endpoint, AllowedIPs, PersistentKeepalive). Without it the
    /// interface starts with no key, peers, addresses or routes, for `wg setconf` (as
    /// wg-quick does) to configure through /var/run/wireguard/IFNAME.sock.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Name of the TUN interface to create.
    #[arg(long, value_name = "IFNAME", default_value = "tpwg0")]
    pub name: String,
    /// Worker threads (0 runs WireGuard on the reader threads) [default: the engine's
    /// default].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Print a progress line every SECS seconds (0: off).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub stats_interval: u64,
    /// Check the file and exit: parse it, check its limits and keys as a start would, and
    /// make no device (host names in Endpoint are not resolved).
    #[arg(long)]
    pub check: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Name of the TUN interface to create (a pattern such as t%d lets the kernel number it).
    #[arg(long, value_name = "IFNAME")]
    pub name: String,
    /// Run on an existing persistent TUN (`ip tuntap add mode tun`) instead of creating one.
    /// Its MTU and addresses stay as they are; --ipv4/--ipv6 are added for the run and
    /// removed at exit.
    #[arg(long, conflicts_with = "mtu")]
    pub attach: bool,
    /// IPv4 address and prefix of the interface, e.g. 10.9.0.1/24.
    #[arg(long, value_name = "ADDR/PREFIX", required_unless_present = "attach")]
    pub ipv4: Option<Net<Ipv4Addr>>,
    /// IPv6 address and prefix of the interface, e.g. fd00:9::1/64.
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub ipv6: Option<Net<Ipv6Addr>>,
    /// MTU of the interface and of the engine's buffers [default: 1500].
    #[arg(long, value_name = "N")]
    pub mtu: Option<usize>,
    /// What the engine does with each packet.
    #[arg(long, value_enum, default_value_t = StageArg::Reflect)]
    pub stage: StageArg,
    /// Worker threads (0 runs the stage on the reader thread) [default: the engine's default].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Print a progress line every SECS seconds (0: off).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub stats_interval: u64,
    /// Pin the engine's threads to cores.
    #[arg(long)]
    pub pin: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seconds of closed-loop UDP load.
    #[arg(long, default_value_t = 3, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Run on the in-memory device even when a TUN could be created.
    #[arg(long)]
    pub memory: bool,
    /// Worker threads (0 runs the stage on the reader thread) [default: the engine's default].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageArg {
    /// Answer ICMP/ICMPv6 echo and send UDP back to its sender.
    Reflect,
    /// Forward every packet unchanged.
    Passthrough,
}

impl From<StageArg> for BuiltinStage {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Reflect => BuiltinStage::Reflect,
            StageArg::Passthrough => BuiltinStage::Passthrough,
        }
    }
}

/// An interface address with its prefix length, as `ADDR/PREFIX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net<A> {
    pub addr: A,
    pub prefix: u8,
}

impl<A: FromStr + MaxPrefix> FromStr for Net<A> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not ADDR/PREFIX (e.g. {})", A::EXAMPLE))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("'{addr}' is not an {} address", A::FAMILY))?;
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= A::MAX_PREFIX)
            .ok_or_else(|| format!("prefix '{prefix}' is not in 0..={}", A::MAX_PREFIX))?;
        Ok(Net { addr, prefix })
    }
}

impl<A: std::fmt::Display> std::fmt::Display for Net<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub trait MaxPrefix {
    const MAX_PREFIX: u8;
    const FAMILY: &'static str;
    const EXAMPLE: &'static str;
}

impl MaxPrefix for Ipv4Addr {
    const MAX_PREFIX: u8 = 32;
    const FAMILY: &'static str = "IPv4";
    const EXAMPLE: &'static str = "10.9.0.1/24";
}

impl MaxPrefix for Ipv6Addr {
    const MAX_PREFIX: u8 = 128;
    const FAMILY: &'static str = "IPv6";
    const EXAMPLE: &'static str = "fd00:9::1/64";
}

/// Help and version go out as clap prints them. Every other parse error becomes one line on
/// stderr (clap's own spans several: the error, a tip, the usage), and exit code 2.
pub fn report_clap_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() { 2 } else { 0 })
        }
        _ => {
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:"))
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("tip:")
                        && !l.starts_with("For more information")
                })
                .collect();
            let message = super::one_line(&message.join(" "));
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("tunpipe: error: {message} (see 'tunpipe --help')");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_parse_and_reject() {
        let n: Net<Ipv4Addr> = "10.9.0.1/24".parse().unwrap();
        assert_eq!((n.addr, n.prefix), (Ipv4Addr::new(10, 9, 0, 1), 24));
        let n: Net<Ipv6Addr> = "fd00:9::1/64".parse().unwrap();
        assert_eq!(n.prefix, 64);
        assert!("10.9.0.1".parse::<Net<Ipv4Addr>>().is_err());
        assert!("10.9.0.1/33".parse::<Net<Ipv4Addr>>().is_err());
        assert!("fd00::1/24".parse::<Net<Ipv4Addr>>().is_err());
        assert!("fd00::1/129".parse::<Net<Ipv6Addr>>().is_err());
    }
}
