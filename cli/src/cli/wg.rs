//! `tunpipe wg`: a WireGuard tunnel from a wg-quick file. A TUN with the file's addresses and
//! MTU on the inside, a UDP socket on the outside, a route through the TUN for every
//! AllowedIPs prefix, until SIGINT or SIGTERM; then the `run` summary and the tunnel's own.

use super::args::{Net, WgArgs};
use super::report::{self, bytes, group, row};
use super::tun::{Tun, TunSpec};
#[cfg(any(target_os = "linux", target_os = "macos"))]
use super::uapi;
use super::{session, CliResult, Failure};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;
use tunpipe::stage::Direction;
use tunpipe::wireguard::uapi::SetRequest;
use tunpipe::wireguard::{
    Endpoint, WgConfig, WireGuard, WireGuardCounters, WireGuardStats, DEFAULT_MTU, MAX_ALLOWED_IPS,
    MAX_PEERS,
};
use tunpipe::{Config, Engine, UdpDevice};

pub fn wg(a: WgArgs) -> CliResult {
    let config = match &a.config {
        Some(file) => match load(file, a.check)? {
            Some(config) => Some(config),
            // --check said what it found.
            None => return Ok(()),
        },
        None if a.check => return Err("--check needs --config FILE".into()),
        None => None,
    };
    let mut engine_config = Config::default();
    if let Some(workers) = a.workers {
        engine_config.workers = workers;
    }
    let mtu = config.as_ref().map_or(DEFAULT_MTU, |c| c.interface.mtu);
    engine_config.mtu = usize::from(mtu);
    engine_config.validate().map_err(|e| e.to_string())?;

    let signals = session::signals()?;
    let addresses = config
        .as_ref()
        .map_or(&[][..], |c| &c.interface.addresses[..]);
    let (ipv4, ipv6) = interface_addresses(addresses);
    let tun = Tun::set_up(&TunSpec {
        name: &a.name,
        attach: false,
        ipv4: &ipv4,
        ipv6: &ipv6,
        mtu: Some(mtu),
    })?;
    let name = tun.name.clone();
    let udp = Arc::new(bind_udp(
        config.as_ref().and_then(|c| c.interface.listen_port),
    )?);
    let stage = match &config {
        Some(config) => WireGuard::new(config).map_err(|e| e.to_string())?,
        None => WireGuard::unconfigured(),
    };
    // Held until the end: a full tunnel's policy rules go when it is dropped.
    let (routes, _rules) = match &config {
        Some(config) => route_all(config, &name, &stage, &udp)?,
        None => (
            "none yet (wg-quick, or whoever configures it, adds them)".to_string(),
            None,
        ),
    };
    let counters = stage.counters();
    let engine = Engine::builder()
        .config(engine_config)
        .start_tunnel(stage.clone(), &tun.device, &*udp)
        .map_err(|e| format!("cannot start the tunnel on {name}: {e}"))?;
    let engine = Arc::new(engine);
    let port = udp.local_addr().map(|a| a.port()).unwrap_or(0);
    stage.record_bound_port(port);
    // Served before the banner, whose last words tell a script the tunnel is up: `wg show`
    // works from then on.
    let control = serve_uapi(&name, &stage, &udp);

    let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    println!(
        "tunpipe: WireGuard on {name} ({}, mtu {mtu}), UDP port {port}, {} worker(s), {} \
         reserved, {} peer(s); stop with Ctrl-C or SIGTERM",
        if addresses.is_empty() {
            "no addresses".to_string()
        } else {
            addresses.join(", ")
        },
        engine.workers(),
        bytes(engine.reserved_bytes() as u64),
        counters.peer_count()
    );
    if let Some(config) = &config {
        print_peers(config);
    }
    println!("tunpipe: routes through {name}: {routes}");
    if config
        .as_ref()
        .is_some_and(|c| !c.interface.dns.is_empty() || !c.interface.dns_search.is_empty())
    {
        println!("tunpipe: DNS in the config is left to the host (tunpipe sets no resolver)");
    }

    let ended = session::until_stopped(
        &engine,
        signals,
        a.stats_interval,
        progress(engine.clone(), counters.clone()),
    )?;
    drop(control);
    // `wg-quick down` ends a userspace WireGuard by deleting its interface: the engine
    // stops on the device's error, and that is the end asked for.
    let deleted = ended.result.is_err() && !interface_exists(&name);
    let kernel = report::kernel_counters(&name);
    println!("tunpipe: stopped; final counters for {name}:");
    for direction in Direction::BOTH {
        report::direction_counters(
            direction_label(direction),
            &engine.direction_stats(direction),
        );
    }
    report::engine_latency(engine.latency().ok().as_ref());
    tunnel_rows(&counters.snapshot(), &udp);
    report::kernel_rows(&name, kernel);
    row("stop", ended.stop);
    row("device closed", tun.tear_down());
    if deleted {
        println!("tunpipe: {name} was deleted (wg-quick down, or ip link delete): stopped");
        return Ok(());
    }
    ended
        .result
        .map_err(|e| Failure(format!("the tunnel stopped on an error: {e}")))
}

/// Whether the network interface `name` still exists.
#[cfg(target_os = "linux")]
fn interface_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Whether the network interface `name` still exists (not asked here: a utun goes with its
/// descriptor, so it outlives the engine's errors).
#[cfg(not(target_os = "linux"))]
fn interface_exists(_name: &str) -> bool {
    true
}

/// Reads, parses and checks the wg-quick `file`, resolving its host names. With `check`,
/// prints what it found and returns `None`: `--check` makes no device and resolves nothing.
fn load(file: &std::path::Path, check: bool) -> CliResult<Option<WgConfig>> {
    let path = file.display().to_string();
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("cannot read the config {path}: {e}"))?;
    warn_if_others_may_read(file, &path, &text);
    let mut config = WgConfig::parse(&text).map_err(|e| format!("{path}: {e}"))?;
    if !config.ignored.is_empty() {
        log::warn!(
            "{path}: ignoring wg-quick's own keys ({}): tunpipe sets up the interface itself",
            config.ignored.join(", ")
        );
    }
    #[cfg(not(target_os = "linux"))]
    refuse_endpoint_in_allowed_ips(&config)?;
    if check {
        config.check().map_err(|e| format!("{path}: {e}"))?;
        let prefixes: usize = config.peers.iter().map(|p| p.allowed_ips.len()).sum();
        println!(
            "tunpipe: {path}: a valid config: {} peer(s), {prefixes} AllowedIPs prefix(es) \
             (limits {MAX_PEERS} and {MAX_ALLOWED_IPS}); host names are resolved at start",
            config.peers.len()
        );
        return Ok(None);
    }
    config.resolve().map_err(|e| format!("{path}: {e}"))?;
    #[cfg(not(target_os = "linux"))]
    refuse_endpoint_in_allowed_ips(&config)?;
    Ok(Some(config))
}

/// The banner's line for each peer of the file.
fn print_peers(config: &WgConfig) {
    for (i, peer) in config.peers.iter().enumerate() {
        let allowed: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
        println!(
            "tunpipe: peer {}: endpoint {}, allowed {}{}",
            i + 1,
            peer.endpoint.as_ref().map_or(
                "none yet (it reaches us first)".to_string(),
                ToString::to_string
            ),
            if allowed.is_empty() {
                "nothing".to_string()
            } else {
                allowed.join(", ")
            },
            peer.persistent_keepalive
                .map_or(String::new(), |s| format!(", keepalive every {s} s"))
        );
    }
}

/// Serves WireGuard's configuration socket for `name`, where `wg` and `wg-quick` find a
/// userspace interface. Without it (not root, say) the tunnel still runs, unseen by them.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn serve_uapi(name: &str, stage: &WireGuard, udp: &Arc<UdpDevice>) -> Option<uapi::UapiServer> {
    let control = Arc::new(Control {
        stage: stage.clone(),
        udp: udp.clone(),
    });
    match uapi::UapiServer::start(std::path::Path::new(uapi::SOCKET_DIR), name, control) {
        Ok(server) => {
            println!(
                "tunpipe: wg show {name}, wg set {name} ... (configuration socket {})",
                server.path().display()
            );
            Some(server)
        }
        Err(e) => {
            log::warn!("no configuration socket, so wg and wg-quick cannot see {name}: {e}");
            None
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn serve_uapi(_name: &str, _stage: &WireGuard, _udp: &Arc<UdpDevice>) -> Option<()> {
    None
}

/// What the configuration socket acts on: the running stage, and the socket its listen port
/// and fwmark belong to.
#[cfg(any(target_os = "linux", target_os = "macos"))]
struct Control {
    stage: WireGuard,
    udp: Arc<UdpDevice>,
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
impl uapi::UapiHandler for Control {
    fn get(&self) -> String {
        self.stage.get()
    }

    fn set(&self, request: &SetRequest) -> Result<(), i32> {
        self.stage
            .set_on(request, Some(&self.udp))
            .map(drop)
            .map_err(|e| {
                log::warn!("wg set: {e}");
                e.errno()
            })
    }

    fn removed(&self) {
        // As a SIGTERM would: the same stop, timed and reported the same way.
        log::info!("the configuration socket was removed: stopping, as wireguard-go does");
        // SAFETY: kill(2) on this process with a signal it handles (session::signals).
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    }
}

fn direction_label(direction: Direction) -> &'static str {
    match direction {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    }
}

/// The interface's addresses, by family, as `Tun` takes them.
fn interface_addresses(addresses: &[IpNet]) -> (Vec<Net<Ipv4Addr>>, Vec<Net<Ipv6Addr>>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in addresses {
        match net {
            IpNet::V4(n) => v4.push(Net {
                addr: n.addr(),
                prefix: n.prefix_len(),
            }),
            IpNet::V6(n) => v6.push(Net {
                addr: n.addr(),
                prefix: n.prefix_len(),
            }),
        }
    }
    (v4, v6)
}

/// Every literal endpoint of the config, by address (the first peer that has it), so that
/// each prefix asks one range query: a config at the limits is checked in milliseconds.
struct Endpoints(std::collections::BTreeMap<IpAddr, usize>);

impl Endpoints {
    fn of(config: &WgConfig) -> Endpoints {
        let mut endpoints = std::collections::BTreeMap::new();
        for (i, peer) in config.peers.iter().enumerate() {
            if let Some(endpoint) = peer.endpoint.as_ref().and_then(Endpoint::addr) {
                endpoints.entry(endpoint.ip()).or_insert(i);
            }
        }
        Endpoints(endpoints)
    }

    /// An endpoint inside `net`, and its peer's index.
    fn inside(&self, net: &IpNet) -> Option<(IpAddr, usize)> {
        let (&endpoint, &i) = self.0.range(net.network()..=net.broadcast()).next()?;
        Some((endpoint, i))
    }
}

/// A prefix that contains a peer's endpoint would send the tunnel's own datagrams into the
/// tunnel. On Linux, `tunpipe wg` routes such a full tunnel as wg-quick does (`route_all`);
/// elsewhere it adds no routes, and refuses, saying which narrower prefixes leave the
/// endpoint out.
#[cfg(not(target_os = "linux"))]
fn refuse_endpoint_in_allowed_ips(config: &WgConfig) -> CliResult {
    let endpoints = Endpoints::of(config);
    for net in config.peers.iter().flat_map(|p| &p.allowed_ips) {
        let Some((endpoint, i)) = endpoints.inside(net) else {
            continue;
        };
        let narrower: Vec<String> = without(*net, endpoint)
            .iter()
            .map(ToString::to_string)
            .collect();
        return Err(format!(
            "AllowedIPs {net} contains the endpoint {endpoint} of peer {}: the tunnel's own \
             datagrams would be routed into it. tunpipe wg routes a full tunnel on Linux only; \
             use prefixes that leave it out, such as: AllowedIPs = {}",
            i + 1,
            narrower.join(", ")
        )
        .into());
    }
    Ok(())
}

/// Like wg-quick, warns when a file that holds a private key may be read by others than its
/// owner (mode & 0o077), naming the file and its mode, never its content.
#[cfg(unix)]
fn warn_if_others_may_read(file: &std::path::Path, path: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(metadata) = std::fs::metadata(file) else {
        return;
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 && text.to_ascii_lowercase().contains("privatekey") {
        log::warn!(
            "{path} holds a private key and its group or others may access it (mode {mode:03o}): \
             chmod 600 {path}"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_others_may_read(_file: &std::path::Path, _path: &str, _text: &str) {}

/// The prefixes that together cover `net` except `addr`: `net` halved again and again,
/// keeping each half that does not hold `addr`.
#[cfg(any(test, not(target_os = "linux")))]
fn without(net: IpNet, addr: IpAddr) -> Vec<IpNet> {
    let mut rest = Vec::new();
    let mut current = net.trunc();
    while current.prefix_len() < current.max_prefix_len() {
        let Ok(mut halves) = current.subnets(current.prefix_len() + 1) else {
            break;
        };
        let (Some(low), Some(high)) = (halves.next(), halves.next()) else {
            break;
        };
        let (holds, other) = if low.contains(&addr) {
            (low, high)
        } else {
            (high, low)
        };
        rest.push(other);
        current = holds;
    }
    rest.sort();
    rest
}

/// Routes every peer's AllowedIPs through the TUN; returns what was done, for the banner.
#[cfg(not(target_os = "linux"))]
fn route_all(
    _config: &WgConfig,
    _ifname: &str,
    _stage: &WireGuard,
    _udp: &UdpDevice,
) -> CliResult<(String, Option<()>)> {
    Ok((
        "none: tunpipe wg adds routes on Linux only (add them with route(8))".to_string(),
        None,
    ))
}

/// Routes every peer's AllowedIPs through the TUN, and returns what was done, for the banner,
/// with a full tunnel's policy rules. A prefix that holds a peer's endpoint (or is a default
/// route) makes a full tunnel, routed as wg-quick routes one (route.rs): its prefixes go in
/// table T (51820, or the next where the first of them is not routed yet), the socket and the
/// configuration get fwmark T, and the rules send what is unmarked to table T.
#[cfg(target_os = "linux")]
fn route_all(
    config: &WgConfig,
    ifname: &str,
    stage: &WireGuard,
    udp: &UdpDevice,
) -> CliResult<(String, Option<super::route::Rules>)> {
    use super::route::{self, Added, MAIN_TABLE};
    let ifindex = ifindex(ifname)?;
    let endpoints = Endpoints::of(config);
    let mut new = Vec::new();
    let mut existed = Vec::new();
    // The kernel routes each Address's own subnet when the address is set: routing it again
    // would add a second route (for IPv6, beside the kernel's, at another metric).
    let connected: Vec<_> = config
        .interface
        .addresses
        .iter()
        .map(|a| a.trunc())
        .collect();
    let mut full = Vec::new();
    for net in config.peers.iter().flat_map(|p| &p.allowed_ips) {
        let net = net.trunc();
        if net.prefix_len() == 0 || endpoints.inside(&net).is_some() {
            full.push(net);
            continue;
        }
        if connected.contains(&net) {
            existed.push(net.to_string());
            continue;
        }
        match route::add(net.network(), net.prefix_len(), ifindex, MAIN_TABLE) {
            Ok(Added::New) => new.push(net.to_string()),
            Ok(Added::Existed) => existed.push(net.to_string()),
            Err(e) => return Err(format!("cannot route {net} through {ifname}: {e}").into()),
        }
    }
    let mut said = if new.is_empty() {
        "none added".to_string()
    } else {
        new.join(", ")
    };
    if !existed.is_empty() {
        said.push_str(&format!(" (already routed: {})", existed.join(", ")));
    }
    let Some(&first) = full.first() else {
        return Ok((said, None));
    };
    let mut table = FULL_TUNNEL_TABLE;
    loop {
        match route::add(first.network(), first.prefix_len(), ifindex, table) {
            Ok(Added::New) => break,
            Ok(Added::Existed) if table < FULL_TUNNEL_TABLE + 100 => table += 1,
            Ok(Added::Existed) => {
                return Err(
                    format!("no free routing table from {FULL_TUNNEL_TABLE} for {first}").into(),
                )
            }
            Err(e) => return Err(format!("cannot route {first} through {ifname}: {e}").into()),
        }
    }
    for net in &full[1..] {
        if let Err(e) = route::add(net.network(), net.prefix_len(), ifindex, table) {
            return Err(format!("cannot route {net} through {ifname} (table {table}): {e}").into());
        }
    }
    udp.set_fwmark(table)
        .map_err(|e| format!("cannot mark the tunnel's socket with fwmark {table}: {e}"))?;
    let request = tunpipe::wireguard::uapi::parse_set(&format!("fwmark={table}\n"))
        .map_err(|e| e.to_string())?;
    stage.set(&request).map_err(|e| e.to_string())?;
    let mut families: Vec<IpAddr> = Vec::new();
    for net in &full {
        if !families.iter().any(|f| f.is_ipv4() == net.addr().is_ipv4()) {
            families.push(net.addr());
        }
    }
    let rules = route::Rules::full_tunnel(&families, table)
        .map_err(|e| format!("cannot add the full tunnel's policy rules: {e}"))?;
    if families.iter().any(IpAddr::is_ipv4) {
        // As wg-quick: reverse-path filtering then counts the mark, so that replies to the
        // marked datagrams are not dropped as arriving on the wrong interface.
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/conf/all/src_valid_mark", "1") {
            log::warn!("cannot set net.ipv4.conf.all.src_valid_mark=1: {e}");
        }
    }
    let full: Vec<String> = full.iter().map(ToString::to_string).collect();
    said.push_str(&format!(
        "; full tunnel: {} in table {table}, the tunnel's own datagrams marked {table} \
         (policy rules as wg-quick's, removed at exit)",
        full.join(", ")
    ));
    Ok((said, Some(rules)))
}

/// The routing table (and firewall mark) a full tunnel starts looking from: wg-quick's.
#[cfg(target_os = "linux")]
const FULL_TUNNEL_TABLE: u32 = 51820;

#[cfg(target_os = "linux")]
fn ifindex(name: &str) -> CliResult<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("bad interface name {name:?}"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("interface {name} vanished").into()),
        index => Ok(index),
    }
}

/// The UDP socket: dual-stack on the config's ListenPort (any port if none).
fn bind_udp(port: Option<u16>) -> CliResult<UdpDevice> {
    let port = port.unwrap_or(0);
    UdpDevice::bind_port(port).map_err(|e| format!("cannot bind UDP port {port}: {e}").into())
}

/// The progress line: packets per second each way through the tunnel, and the handshake.
fn progress(
    engine: Arc<Engine>,
    counters: Arc<WireGuardCounters>,
) -> impl FnMut(Duration) -> String + Send + 'static {
    let mut last = counters.snapshot();
    move |every| {
        let s = counters.snapshot();
        let secs = every.as_secs_f64();
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
        // Two figures, not a sum: most of the stage's drops that the engine counts are also
        // among WireGuard's, which say why.
        let drops = engine.stats().dropped();
        let line = format!(
            "to peers {:>8.0} pps  from peers {:>8.0} pps  last handshake {}  drops {}, \
             WireGuard's {}",
            rate(s.tx_packets, last.tx_packets),
            rate(s.rx_packets, last.rx_packets),
            s.since_last_handshake
                .map_or("never".to_string(), |d| format!("{} s ago", d.as_secs())),
            group(drops),
            group(s.dropped()),
        );
        last = s;
        line
    }
}

/// The tunnel's own figures for the final report.
fn tunnel_rows(s: &WireGuardStats, udp: &UdpDevice) {
    row(
        "handshakes",
        format!(
            "{} completed, {} failed, {} initiations sent, {} cookie replies sent (under \
             load); last {}",
            s.handshakes_completed,
            s.handshake_failures,
            s.handshake_initiations,
            s.cookie_replies,
            s.since_last_handshake
                .map_or("never".to_string(), |d| format!("{} s ago", d.as_secs()))
        ),
    );
    row(
        "to peers",
        format!(
            "{} packets, {} (inner)",
            group(s.tx_packets),
            bytes(s.tx_bytes)
        ),
    );
    row(
        "from peers",
        format!(
            "{} packets, {} (inner)",
            group(s.rx_packets),
            bytes(s.rx_bytes)
        ),
    );
    // Why the stage dropped: the same packets as the engine's stage drops above, and some
    // of its "no buffer" ones, told apart by reason.
    row(
        "tunnel drops",
        format!(
            "{} in all: authentication {}, replay {}, not allowed {}, no session {}, no peer \
             {}, no endpoint {}, no handshake {}, garbage {}, bad mac1 {} (why the stage \
             dropped: most are among the stage drops above; \"no peer\" is a packet to an \
             address no peer's AllowedIPs cover, on Linux mostly the kernel's own IPv6 \
             multicast: router solicitations, MLD reports)",
            group(s.dropped()),
            s.drop_auth_failure,
            s.drop_replay,
            s.drop_not_allowed,
            s.drop_no_session,
            s.drop_no_peer,
            s.drop_no_endpoint,
            s.drop_no_handshake,
            s.drop_garbage,
            s.drop_bad_mac1
        ),
    );
    let endpoints: Vec<String> = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "peer {}: {}",
                i + 1,
                e.map_or("none".into(), |e| e.to_string())
            )
        })
        .collect();
    row("endpoints", endpoints.join(", "));
    let (rcv, snd) = udp.buffer_sizes();
    row(
        "UDP buffers",
        format!(
            "receive {}, send {} (as the kernel reports them)",
            bytes(rcv as u64),
            bytes(snd as u64)
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefixes_without_an_endpoint_cover_all_else() {
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        let endpoint: IpAddr = "192.0.2.1".parse().unwrap();
        let rest = without(all, endpoint);
        assert_eq!(rest.len(), 32);
        assert!(rest.iter().all(|n| !n.contains(&endpoint)));
        let covered: u128 = rest.iter().map(|n| 1u128 << (32 - n.prefix_len())).sum();
        assert_eq!(covered, (1u128 << 32) - 1);
        assert!(rest.contains(&"0.0.0.0/1".parse().unwrap()));
        let v6 = without("::/0".parse().unwrap(), "2001:db8::1".parse().unwrap());
        assert_eq!(v6.len(), 128);
    }
}
