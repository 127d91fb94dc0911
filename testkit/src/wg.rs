//! WireGuard for tests: keys, wg-quick texts, and a pair of tunpipe tunnels whose outsides
//! talk over loopback UDP and whose insides are in-memory devices (no root needed).

use parking_lot::Mutex;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunpipe::device::{PeerReceiver, PeerSender};
use tunpipe::stage::Direction;
use tunpipe::wireguard::{Key, WgConfig, WireGuard, WireGuardCounters};
use tunpipe::{Engine, MemoryDevice, UdpDevice};

/// A private key and its public key.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The private key.
    pub private: Key,
    /// Its public key.
    pub public: Key,
}

impl KeyPair {
    /// A fresh pair.
    pub fn generate() -> Self {
        let private = Key::generate();
        KeyPair {
            public: private.public_key(),
            private,
        }
    }
}

/// A `[Peer]` of a wg-quick text.
#[derive(Clone, Debug)]
pub struct PeerText<'a> {
    /// The peer's public key.
    pub public: &'a Key,
    /// `Endpoint`, if any.
    pub endpoint: Option<SocketAddr>,
    /// `AllowedIPs`.
    pub allowed_ips: &'a str,
}

/// A wg-quick text: this end's private key and addresses, and its peers.
pub fn config_text(private: &Key, addresses: &str, peers: &[PeerText<'_>]) -> String {
    let mut text = format!(
        "[Interface]\nPrivateKey = {}\nAddress = {addresses}\n",
        private.to_base64()
    );
    for peer in peers {
        text.push_str(&format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n",
            peer.public.to_base64(),
            peer.allowed_ips
        ));
        if let Some(endpoint) = peer.endpoint {
            text.push_str(&format!("Endpoint = {endpoint}\n"));
        }
    }
    text
}

/// Two tunnel ends that know each other's endpoints. A routes 10.0.0.2 to B; B routes
/// 10.0.0.1 to A.
#[allow(missing_debug_implementations)]
pub struct Pair {
    /// The end at 10.0.0.1.
    pub a: End,
    /// The end at 10.0.0.2.
    pub b: End,
    /// Their wg-quick texts (A's, B's), for restarts.
    pub texts: (String, String),
}

/// The wg-quick texts of two ends with `keys`, A at 10.0.0.1 on UDP `a` and B at 10.0.0.2 on
/// UDP `b`, each routing the other's address to the other.
pub fn pair_texts(keys: &(KeyPair, KeyPair), a: SocketAddr, b: SocketAddr) -> (String, String) {
    let to_b = PeerText {
        public: &keys.1.public,
        endpoint: Some(b),
        allowed_ips: "10.0.0.2/32",
    };
    let to_a = PeerText {
        public: &keys.0.public,
        endpoint: Some(a),
        allowed_ips: "10.0.0.1/32",
    };
    (
        config_text(&keys.0.private, "10.0.0.1/24", &[to_b]),
        config_text(&keys.1.private, "10.0.0.2/24", &[to_a]),
    )
}

/// Two ends with fresh keys on loopback UDP, each with `workers` workers.
///
/// # Panics
/// As [`End::start`].
pub fn pair(workers: usize) -> Pair {
    let (udp_a, udp_b) = (loopback_udp(), loopback_udp());
    let keys = (KeyPair::generate(), KeyPair::generate());
    let texts = pair_texts(
        &keys,
        udp_a.local_addr().unwrap(),
        udp_b.local_addr().unwrap(),
    );
    Pair {
        a: End::start(&texts.0, udp_a, workers),
        b: End::start(&texts.1, udp_b, workers),
        texts,
    }
}

/// One tunpipe tunnel end on loopback: its engine, its inside's other end, its UDP device and
/// its WireGuard counters.
#[allow(missing_debug_implementations)]
pub struct End {
    /// The engine (a tunnel).
    pub engine: Engine,
    /// Sends IP packets into the inside (as an app writing to the TUN would).
    pub app_tx: PeerSender,
    /// Receives what the tunnel delivers inside.
    pub app_rx: PeerReceiver,
    /// The outside.
    pub udp: UdpDevice,
    /// The inside (kept for restarts).
    pub inside: MemoryDevice,
    /// The stage's counters.
    pub counters: Arc<WireGuardCounters>,
    /// The stage itself, to change its configuration while it runs.
    pub stage: WireGuard,
}

impl End {
    /// Starts a tunnel end with `text`'s config on `udp`, with `workers` workers.
    ///
    /// # Panics
    /// If the config does not parse or the engine does not start: a test bug.
    pub fn start(text: &str, udp: UdpDevice, workers: usize) -> End {
        let (inside, app_tx, app_rx) = MemoryDevice::new(512, 2048);
        let (engine, stage) =
            start_engine(text, &inside, &udp, workers).expect("the tunnel starts");
        End {
            engine,
            app_tx,
            app_rx,
            udp,
            inside,
            counters: stage.counters(),
            stage,
        }
    }

    /// Stops the engine and starts a new one with `text` on the same devices.
    pub fn restart(&mut self, text: &str, workers: usize) {
        self.engine.stop().expect("stop");
        let (engine, stage) =
            start_engine(text, &self.inside, &self.udp, workers).expect("the tunnel starts");
        self.engine = engine;
        self.counters = stage.counters();
        self.stage = stage;
    }
}

/// An IPv4/UDP packet from `src` to `dst` carrying `seq`: what [`carry`] sends.
pub fn numbered_packet(src: [u8; 4], dst: [u8; 4], seq: u64) -> Vec<u8> {
    crate::packets::udp4_packet(src, dst, 4000, 5000, &seq.to_be_bytes())
}

/// Sends `n` numbered packets from `from`'s app, from `src` to `dst`, and waits until `to`'s
/// app got them all (in order, byte for byte).
///
/// # Panics
/// If they do not all arrive in time, or not in order: the test's failure.
pub fn carry(from: &mut End, to: &mut End, src: [u8; 4], dst: [u8; 4], n: u64) {
    for seq in 0..n {
        crate::memory::send(&mut from.app_tx, &numbered_packet(src, dst, seq));
    }
    let mut got = Vec::new();
    assert!(
        crate::check::eventually(|| {
            while let Some(p) = to.app_rx.recv_with(|p| p.to_vec()) {
                got.push(p);
            }
            got.len() as u64 >= n
        }),
        "{} of {n} packets arrived; sender {:?} {:?}, receiver {:?} {:?}",
        got.len(),
        from.engine.direction_stats(Direction::Outbound),
        from.counters.snapshot(),
        to.engine.direction_stats(Direction::Inbound),
        to.counters.snapshot(),
    );
    for (seq, p) in got.iter().enumerate() {
        assert_eq!(p, &numbered_packet(src, dst, seq as u64), "packet {seq}");
    }
}

/// Stops `end` and asserts that each direction conserved its packets.
///
/// # Panics
/// If the stop fails or a direction does not balance.
pub fn stop_and_check(end: &End) {
    end.engine.stop().expect("the tunnel stops");
    for direction in Direction::BOTH {
        crate::check::assert_conserved(&end.engine.direction_stats(direction));
    }
}

/// Starts a tunnel with the wg-quick `text` (its endpoints' hosts looked up first) between
/// `inside` and `outside`, with `workers` workers; returns it with (a handle to) its stage.
pub fn start_engine(
    text: &str,
    inside: &impl tunpipe::Device,
    outside: &UdpDevice,
    workers: usize,
) -> Result<(Engine, WireGuard), String> {
    let mut config = WgConfig::parse(text).map_err(|e| e.to_string())?;
    config.resolve().map_err(|e| e.to_string())?;
    let stage = WireGuard::new(&config).map_err(|e| e.to_string())?;
    let mut c = crate::config(workers);
    c.mtu = usize::from(config.interface.mtu);
    let engine = Engine::builder()
        .config(c)
        .start_tunnel(stage.clone(), inside, outside)
        .map_err(|e| format!("start the tunnel: {e}"))?;
    Ok((engine, stage))
}

/// A UDP device on loopback, any port.
pub fn loopback_udp() -> UdpDevice {
    UdpDevice::bind("127.0.0.1:0".parse().expect("an address")).expect("bind on loopback")
}

/// A datagram a [`Relay`] passed, where it came from, and when.
type Captured = (SocketAddr, Vec<u8>, std::time::Instant);

/// A UDP relay on loopback between two ends that keeps a copy of every datagram it passes:
/// what an attacker on the path sees, to replay later.
#[derive(Debug)]
pub struct Relay {
    socket: UdpSocket,
    /// Every datagram relayed, in order, with where it came from.
    captured: Arc<Mutex<Vec<Captured>>>,
    /// While set, datagrams are dropped (a path that went away), not relayed or kept.
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays between `a` and `b` on loopback: what comes from `a` goes to `b`, anything
    /// else goes to `a`.
    pub fn start(a: SocketAddr, b: SocketAddr) -> Relay {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), a, b)
    }

    /// As [`Relay::start`], with the relay's socket bound to `bind`.
    pub fn start_on(bind: SocketAddr, a: SocketAddr, b: SocketAddr) -> Relay {
        let socket = UdpSocket::bind(bind).expect("bind the relay");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("a read timeout");
        let captured = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (socket, captured, down, stop) = (
                socket.try_clone().expect("clone the relay socket"),
                captured.clone(),
                down.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if down.load(Ordering::Relaxed) {
                        continue;
                    }
                    let to = if from == a { b } else { a };
                    let _ = socket.send_to(&buf[..n], to);
                    let at = std::time::Instant::now();
                    captured.lock().push((from, buf[..n].to_vec(), at));
                }
            })
        };
        Relay {
            socket,
            captured,
            down,
            stop,
            thread: Some(thread),
        }
    }

    /// Drops every datagram from now on (`true`), or relays them again (`false`): the path
    /// between the ends goes away and comes back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Where the ends send to.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("the relay's address")
    }

    /// The datagrams relayed so far from `from`.
    pub fn captured_from(&self, from: SocketAddr) -> Vec<Vec<u8>> {
        let captured = self.captured.lock();
        captured
            .iter()
            .filter(|(f, _, _)| *f == from)
            .map(|(_, d, _)| d.clone())
            .collect()
    }

    /// When each datagram from `from` passed, with its bytes.
    pub fn arrivals_from(&self, from: SocketAddr) -> Vec<(std::time::Instant, Vec<u8>)> {
        let captured = self.captured.lock();
        captured
            .iter()
            .filter(|(f, _, _)| *f == from)
            .map(|(_, d, at)| (*at, d.clone()))
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A handshake initiation from a key nobody configured, made for `to` (its mac1 is valid: it
/// takes only the responder's public key).
pub fn stranger_initiation(to: &Key) -> Vec<u8> {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};
    let stranger = KeyPair::generate();
    let mut tunn = Tunn::new(
        StaticSecret::from(*stranger.private.as_bytes()),
        PublicKey::from(*to.as_bytes()),
        None,
        None,
        1,
        None,
    );
    let mut buf = [0u8; 256];
    match tunn.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(message) => message.to_vec(),
        _ => panic!("no initiation"),
    }
}

/// Sends `datagram` to `to` from `from`, a few thousand times a second, until dropped.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Flood {
    /// Starts sending.
    pub fn start(from: UdpSocket, datagram: Vec<u8>, to: SocketAddr) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    if from.send_to(&datagram, to).is_ok() {
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                sent
            })
        };
        Flood {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops, and says how many datagrams went out.
    pub fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop();
    }
}
