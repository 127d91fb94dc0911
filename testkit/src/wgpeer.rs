//! A real WireGuard peer for tests and benches (Linux, root): wireguard-go in a second network
//! namespace, joined to this thread's namespace by a veth pair.
//!
//! ```text
//!  this namespace (A)                           the peer's namespace (B)
//!  tunnel end under test                        wireguard-go -f <unique name>
//!    inside 10.77.0.1/24, fd77::1/64              inside 10.77.0.2/24, fd77::2/64
//!    UDP 192.168.77.1:51821  ── veth ──           UDP 192.168.77.2:51820
//! ```
//!
//! The end under test in A is whatever the caller brings: tunpipe's engine, `tunpipe wg`,
//! boringtun-cli or a second wireguard-go ([`configure_uapi_end`] sets up the last two). The
//! rig writes its wg-quick text ([`WgRig::config_text`]). wireguard-go's control socket
//! (`/var/run/wireguard/NAME.sock`) is not per namespace, so every rig's interface name is
//! unique in the machine; dropping the rig stops the daemon and removes its socket.

use crate::netns::{run_here, NetnsRunner};
use crate::wg::KeyPair;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tunpipe::wireguard::Key;

/// The end under test's underlay address (on the veth in A).
pub const END_UNDERLAY: &str = "192.168.77.1";
/// The peer's underlay address (on the veth in B).
pub const PEER_UNDERLAY: &str = "192.168.77.2";
/// The end under test's UDP port.
pub const END_PORT: u16 = 51821;
/// The peer's UDP port.
pub const PEER_PORT: u16 = 51820;
/// The end under test's address inside the tunnel.
pub const END_V4: &str = "10.77.0.1";
/// The peer's address inside the tunnel.
pub const PEER_V4: &str = "10.77.0.2";
/// The end under test's IPv6 address inside the tunnel.
pub const END_V6: &str = "fd77::1";
/// The peer's IPv6 address inside the tunnel.
pub const PEER_V6: &str = "fd77::2";
/// The tunnel's MTU on both ends (wg-quick's default).
pub const MTU: u16 = 1420;

/// How the peer is set up.
#[derive(Debug, Clone, Default)]
pub struct PeerOptions {
    /// The peer knows the end's endpoint, so that it can start a handshake itself (with
    /// traffic, or with `keepalive`).
    pub knows_endpoint: bool,
    /// The peer's PersistentKeepalive, in seconds.
    pub keepalive: Option<u16>,
    /// The public key the peer expects of the end, if not the end's own (a wrong key).
    pub expects_key: Option<Key>,
}

/// The rig: the peer's namespace, its daemon and the keys of both ends.
#[derive(Debug)]
pub struct WgRig {
    /// Runs commands in the peer's namespace.
    pub peer: NetnsRunner,
    /// The peer's interface (and control socket) name.
    pub ifname: String,
    /// The end under test's keys.
    pub end_keys: KeyPair,
    /// The peer's keys.
    pub peer_keys: KeyPair,
    /// The peer's wg config (`wg setconf`), kept to start it again.
    peer_conf: String,
    /// The peer's daemon, while it runs.
    daemon: Option<Child>,
}

/// Whether nft is installed (for [`WgRig::block_peer_udp`]), as an error saying how to get it.
pub fn nft_installed() -> Result<(), String> {
    match Command::new("nft").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(_) => Err("needs nft (apt-get install --no-install-recommends nftables)".into()),
    }
}

/// Whether wireguard-go and wg are installed (the rig's reason to be ignored if not).
pub fn wireguard_go_problem() -> Option<String> {
    for tool in [["wireguard-go", "--version"], ["wg", "--version"]] {
        if Command::new(tool[0]).arg(tool[1]).output().is_err() {
            return Some(format!(
                "needs {} (apt-get install --no-install-recommends wireguard-go wireguard-tools)",
                tool[0]
            ));
        }
    }
    None
}

/// A name no other rig of this machine uses now: the process id and a counter.
pub fn unique_ifname(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id());
    assert!(name.len() <= 15, "interface name {name} is too long");
    name
}

impl WgRig {
    /// Builds the rig from this thread's namespace (A, fresh): the veth, the peer's namespace
    /// and its wireguard-go, configured with `options`.
    pub fn up(options: &PeerOptions) -> Result<WgRig, String> {
        let peer = NetnsRunner::fresh()?;
        peer.output(&["ip", "link", "set", "lo", "up"], "")?;
        run_here(&["ip", "link", "set", "lo", "up"])?;
        run_here(&[
            "ip",
            "link",
            "add",
            "tpva",
            "type",
            "veth",
            "peer",
            "name",
            "tpvb",
            "netns",
            peer.path(),
        ])?;
        run_here(&[
            "ip",
            "addr",
            "add",
            &format!("{END_UNDERLAY}/24"),
            "dev",
            "tpva",
        ])?;
        run_here(&["ip", "link", "set", "tpva", "up"])?;
        let underlay = format!("{PEER_UNDERLAY}/24");
        peer.output(&["ip", "addr", "add", &underlay, "dev", "tpvb"], "")?;
        peer.output(&["ip", "link", "set", "tpvb", "up"], "")?;

        let ifname = unique_ifname("tpg");
        let end_keys = KeyPair::generate();
        let peer_keys = KeyPair::generate();
        let expected = options.expects_key.as_ref().unwrap_or(&end_keys.public);
        let mut peer_conf = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = {PEER_PORT}\n\n[Peer]\nPublicKey = {}\n\
             AllowedIPs = {END_V4}/32, {END_V6}/128\n",
            peer_keys.private.to_base64(),
            expected.to_base64()
        );
        if options.knows_endpoint {
            peer_conf.push_str(&format!("Endpoint = {END_UNDERLAY}:{END_PORT}\n"));
        }
        if let Some(secs) = options.keepalive {
            peer_conf.push_str(&format!("PersistentKeepalive = {secs}\n"));
        }
        let mut rig = WgRig {
            peer,
            ifname,
            end_keys,
            peer_keys,
            peer_conf,
            daemon: None,
        };
        rig.start_peer()?;
        Ok(rig)
    }

    /// Starts the peer's daemon, configured and addressed (its interface goes with it when it
    /// stops): the peer's process comes back, with the same key and no memory of sessions.
    pub fn start_peer(&mut self) -> Result<(), String> {
        let daemon = start_uapi_daemon(Some(&self.peer), &["wireguard-go", "-f"], &self.ifname)?;
        self.daemon = Some(daemon);
        self.peer.output(
            &["wg", "setconf", &self.ifname, "/dev/stdin"],
            &self.peer_conf,
        )?;
        let addresses = [format!("{PEER_V4}/24"), format!("{PEER_V6}/64")];
        address_interface(&self.ifname, &addresses, |argv| self.peer.output(argv, ""))
    }

    /// Stops the peer's daemon: the peer's process goes away.
    pub fn stop_peer(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            stop_uapi_daemon(&mut daemon, &self.ifname);
        }
    }

    /// Drops every UDP datagram to the peer's port in its namespace (nftables), or lets them
    /// through again: a path that goes away and comes back, the peer's process untouched.
    pub fn block_peer_udp(&self, blocked: bool) -> Result<(), String> {
        let rules = if blocked {
            format!(
                "table inet tpblock {{\n chain input {{\n type filter hook input priority 0;\n \
                 udp dport {PEER_PORT} drop\n }}\n}}\n"
            )
        } else {
            "delete table inet tpblock\n".to_string()
        };
        self.peer.output(&["nft", "-f", "-"], &rules).map(|_| ())
    }

    /// The end under test's wg-quick text: its key, addresses and port, and the peer.
    pub fn config_text(&self) -> String {
        self.config_text_with("")
    }

    /// As [`WgRig::config_text`], with `other_peers` (`[Peer]` sections) before the peer.
    pub fn config_text_with(&self, other_peers: &str) -> String {
        format!(
            "[Interface]\nPrivateKey = {}\nAddress = {END_V4}/24, {END_V6}/64\n\
             ListenPort = {END_PORT}\n\n{other_peers}{}",
            self.end_keys.private.to_base64(),
            self.peer_section()
        )
    }

    /// The end's `[Peer]` section for the peer (the same in wg-quick and `wg setconf` text).
    fn peer_section(&self) -> String {
        format!(
            "[Peer]\nPublicKey = {}\nEndpoint = {PEER_UNDERLAY}:{PEER_PORT}\n\
             AllowedIPs = {PEER_V4}/32, {PEER_V6}/128\n",
            self.peer_keys.public.to_base64()
        )
    }

    /// Gives the end under test a fresh key pair, and the peer the new public key in place
    /// of the old one (same AllowedIPs): an end that starts afresh, with no history at the
    /// peer (its last handshake timestamp, its sessions).
    pub fn rekey_end(&mut self) -> Result<(), String> {
        let old = self.end_keys.public.to_base64();
        self.end_keys = KeyPair::generate();
        let new = self.end_keys.public.to_base64();
        let allowed = format!("{END_V4}/32,{END_V6}/128");
        self.peer.output(
            &[
                "wg",
                "set",
                &self.ifname,
                "peer",
                &old,
                "remove",
                "peer",
                &new,
                "allowed-ips",
                &allowed,
            ],
            "",
        )?;
        Ok(())
    }

    /// The peer daemon's process id (for its CPU time).
    ///
    /// # Panics
    /// If the peer is stopped ([`WgRig::stop_peer`]).
    pub fn peer_pid(&self) -> u32 {
        self.daemon.as_ref().expect("the peer runs").id()
    }

    /// What the peer says about the end under test (`wg show NAME dump`).
    pub fn peer_view(&self) -> Result<PeerView, String> {
        let dump = self
            .peer
            .output(&["wg", "show", &self.ifname, "dump"], "")?;
        // The first line is the interface; the second the (only) peer: public key, preshared
        // key, endpoint, allowed ips, latest handshake, rx bytes, tx bytes, keepalive.
        let line = dump.lines().nth(1).ok_or("wg show: no peer")?;
        let fields: Vec<&str> = line.split('\t').collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        Ok(PeerView {
            endpoint: fields.get(2).map(|s| s.to_string()).unwrap_or_default(),
            latest_handshake: number(4).ok_or("wg show: no handshake field")?,
            rx_bytes: number(5).ok_or("wg show: no rx field")?,
            tx_bytes: number(6).ok_or("wg show: no tx field")?,
        })
    }

    /// Waits until the peer has completed a handshake (up to `limit`).
    pub fn await_handshake(&self, limit: Duration) -> Result<PeerView, String> {
        let until = Instant::now() + limit;
        loop {
            let view = self.peer_view()?;
            if view.latest_handshake != 0 {
                return Ok(view);
            }
            if Instant::now() > until {
                return Err(format!("the peer saw no handshake in {limit:?}: {view:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `count` pings from this namespace to `to` (20 ms apart); an error unless all are
    /// answered.
    pub fn ping_all_from_end(&self, to: &str, count: u32) -> Result<(), String> {
        let n = count.to_string();
        let (sent, got) = crate::ping::ping(&["-n", "-c", &n, "-i", "0.02", "-W", "2", to])?;
        all_answered(&format!("ping {to}"), count, sent, got)
    }

    /// `count` pings from the peer's namespace to `to`; an error unless all are answered.
    pub fn ping_all_from_peer(&self, to: &str, count: u32) -> Result<(), String> {
        let (sent, got) = self.ping_from_peer(to, count)?;
        all_answered(&format!("ping from the peer to {to}"), count, sent, got)
    }

    /// `ping` from the peer's namespace: `count` echoes to `to`, at 50 ms intervals; the
    /// (transmitted, received) counts.
    pub fn ping_from_peer(&self, to: &str, count: u32) -> Result<(u64, u64), String> {
        let args: Vec<String> = ["-n", "-c", &count.to_string(), "-i", "0.05", "-W", "2", to]
            .iter()
            .map(|s| s.to_string())
            .collect();
        self.peer
            .run(move || crate::ping::ping(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .map_err(|e| e.to_string())?
    }
}

fn all_answered(what: &str, count: u32, sent: u64, got: u64) -> Result<(), String> {
    if sent == u64::from(count) && got == sent {
        Ok(())
    } else {
        Err(format!("{what}: {got} of {sent} answered"))
    }
}

impl Drop for WgRig {
    fn drop(&mut self) {
        self.stop_peer();
    }
}

/// What a wireguard-go peer says about its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// Where it sends to (`(none)` if nowhere yet).
    pub endpoint: String,
    /// Seconds since the epoch of the latest handshake; 0 if none.
    pub latest_handshake: u64,
    /// Bytes received from the peer (datagrams, handshakes included).
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// Where userspace WireGuard daemons keep their control sockets.
const SOCKET_DIR: &str = "/var/run/wireguard";

/// Starts a userspace WireGuard daemon (`argv` then the interface name) in `ns`'s namespace
/// (`None`: this thread's), and waits until its control socket answers.
pub fn start_uapi_daemon(
    ns: Option<&NetnsRunner>,
    argv: &[&str],
    ifname: &str,
) -> Result<Child, String> {
    let socket = format!("{SOCKET_DIR}/{ifname}.sock");
    // A stale socket (a daemon killed earlier) would fool the readiness check.
    let _ = std::fs::remove_file(&socket);
    let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    argv.push(ifname.to_string());
    let spawn = move || {
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("LOG_LEVEL", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", argv[0]))
    };
    let mut child = match ns {
        Some(ns) => ns.run(spawn).map_err(|e| e.to_string())??,
        None => spawn()?,
    };
    let show = |argv: &[&str]| match ns {
        Some(ns) => ns.output(argv, ""),
        None => run_here(argv),
    };
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the daemon for {ifname} exited at start: {status}"));
        }
        let answers =
            std::path::Path::new(&socket).exists() && show(&["wg", "show", ifname]).is_ok();
        if answers {
            return Ok(child);
        }
        if Instant::now() > until {
            stop_uapi_daemon(&mut child, ifname);
            return Err(format!("the daemon for {ifname} did not come up in 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops a userspace WireGuard daemon (SIGTERM, then SIGKILL after 5 s) and removes its
/// control socket.
pub fn stop_uapi_daemon(child: &mut Child, ifname: &str) {
    // SAFETY: kill takes a pid and a signal; the pid is our child's, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(format!("{SOCKET_DIR}/{ifname}.sock"));
}

/// Gives interface `ifname` its addresses and MTU and brings it up, with `run` running each
/// command where the interface is.
pub fn address_interface(
    ifname: &str,
    addresses: &[String],
    run: impl Fn(&[&str]) -> Result<String, String>,
) -> Result<(), String> {
    for address in addresses {
        let mut argv = vec!["ip", "addr", "add", address.as_str(), "dev", ifname];
        if address.contains(':') {
            // Usable at once: no duplicate address detection on a point-to-point tunnel.
            argv.push("nodad");
        }
        run(&argv)?;
    }
    let mtu = MTU.to_string();
    run(&["ip", "link", "set", ifname, "mtu", &mtu, "up"])?;
    Ok(())
}

/// Sets up a userspace WireGuard end in this namespace (boringtun-cli or wireguard-go, its
/// daemon already up as `ifname`) as the rig's end under test, with `other_peers` (`[Peer]`
/// sections) configured before the rig's peer.
pub fn configure_uapi_end(rig: &WgRig, ifname: &str, other_peers: &str) -> Result<(), String> {
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {END_PORT}\n\n{other_peers}{}",
        rig.end_keys.private.to_base64(),
        rig.peer_section()
    );
    let argv: Vec<String> = ["wg", "setconf", ifname, "/dev/stdin"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    crate::netns::output_of(&argv, &conf)?;
    let addresses = [format!("{END_V4}/24"), format!("{END_V6}/64")];
    address_interface(ifname, &addresses, run_here)
}

/// A tunpipe tunnel end on a real TUN in this namespace: what the rig's tests run.
#[allow(missing_debug_implementations)]
pub struct TunnelEnd {
    /// The engine.
    pub engine: tunpipe::Engine,
    /// The WireGuard stage's counters.
    pub counters: std::sync::Arc<tunpipe::wireguard::WireGuardCounters>,
    /// The stage itself, to change its configuration while it runs.
    pub stage: tunpipe::wireguard::WireGuard,
    /// The outside.
    pub udp: tunpipe::UdpDevice,
    /// The inside.
    pub tun: tunpipe::TunDevice,
}

impl TunnelEnd {
    /// Makes a TUN `ifname` with the end's addresses and MTU, a UDP device on `[::]:END_PORT`,
    /// and starts a tunnel with the wg-quick `text` and `workers` workers.
    pub fn start(ifname: &str, text: &str, workers: usize) -> Result<TunnelEnd, String> {
        let tun = crate::tun::tun_v6(ifname, END_V4, END_V6)?;
        run_here(&["ip", "link", "set", ifname, "mtu", &MTU.to_string()])?;
        let tun = tunpipe::TunDevice::new(tun);
        let udp = tunpipe::UdpDevice::bind(format!("[::]:{END_PORT}").parse().expect("address"))
            .map_err(|e| format!("bind UDP: {e}"))?;
        let (engine, stage) = crate::wg::start_engine(text, &tun, &udp, workers)?;
        Ok(TunnelEnd {
            engine,
            counters: stage.counters(),
            stage,
            udp,
            tun,
        })
    }

    /// Stops the engine and starts a fresh one with `text` on the same TUN and socket.
    pub fn restart(&mut self, text: &str, workers: usize) -> Result<(), String> {
        self.engine.stop().map_err(|e| format!("stop: {e}"))?;
        let (engine, stage) = crate::wg::start_engine(text, &self.tun, &self.udp, workers)?;
        self.engine = engine;
        self.counters = stage.counters();
        self.stage = stage;
        Ok(())
    }

    /// Stops the engine and checks that each direction conserved its packets.
    pub fn stop_conserved(&self) -> Result<(), libtest_mimic::Failed> {
        self.engine.stop().map_err(|e| format!("stop: {e}"))?;
        for direction in tunpipe::stage::Direction::BOTH {
            crate::check::conserved(&self.engine.direction_stats(direction))?;
        }
        Ok(())
    }
}
