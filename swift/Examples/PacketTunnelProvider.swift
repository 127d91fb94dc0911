// An example Network Extension: a WireGuard client on tunpipe. Add it to a Packet Tunnel
// Provider target that links the TunPipe package and carries
// Examples/PacketTunnel.entitlements. The containing app saves the wg-quick text in the
// tunnel's `providerConfiguration["wgQuickConfig"]`, and may send any message to read the
// tunnel's figures back as JSON.

import Network
import NetworkExtension
import TunPipe
import TunPipeFFI
import os

final class PacketTunnelProvider: NEPacketTunnelProvider {
    /// Everything below runs on this one serial queue, as WireGuardKit's adapter does with
    /// its `workQueue`: a stop that arrives while a start waits for the network settings
    /// runs after the start, and finds the engine it has to stop.
    private let workQueue = DispatchQueue(label: "tunpipe.provider")
    private let log = Logger(subsystem: "tunpipe.example", category: "provider")

    private enum State {
        case stopped
        case running(engine: TunPipe, monitor: NWPathMonitor)
    }

    /// Touched on `workQueue` only.
    private var state = State.stopped
    /// The network path the tunnel last saw, to rebind only when it changes.
    private var lastPath: Network.NWPath?

    override func startTunnel(options: [String: NSObject]?, completionHandler: @escaping (Error?) -> Void) {
        workQueue.async {
            completionHandler(self.start())
        }
    }

    /// Starts the tunnel; nil on success.
    private func start() -> Error? {
        guard case .stopped = state else { return nil }
        try? TunPipeLog.install(maxLevel: TUNPIPE_LOG_INFO)
        let provider = protocolConfiguration as? NETunnelProviderProtocol
        guard let text = provider?.providerConfiguration?["wgQuickConfig"] as? String else {
            log.error("no wgQuickConfig in the provider configuration")
            return NEVPNError(.configurationInvalid)
        }
        do {
            // tunpipe's own parser says what the interface needs (no keys in it).
            let settings = try TunPipeWireGuardSettings(wgQuick: text)
            if let error = applyNetworkSettings(Self.networkSettings(for: settings)) {
                return error
            }
            // The utun exists once the settings are applied.
            guard let fd = UtunFinder.find() else {
                log.error("utun fd not found")
                return NEVPNError(.configurationInvalid)
            }
            var configuration = TunPipeConfiguration()
            configuration.wireguardConfig = text
            let needed = try configuration.reservedBytes()
            if let available = TunPipe.availableMemory(), needed > available / 2 {
                log.warning("the tunnel needs \(needed) bytes, \(available) available")
            }
            let engine = try TunPipe(fd: fd, configuration: configuration)
            engine.onStop(queue: workQueue) { [weak self] error in
                // A fatal error (say, the utun went away): tell the system.
                if let error { self?.cancelTunnelWithError(error) }
            }
            let monitor = NWPathMonitor()
            monitor.pathUpdateHandler = { [weak self] path in self?.pathChanged(path) }
            monitor.start(queue: workQueue)
            state = .running(engine: engine, monitor: monitor)
            return nil
        } catch {
            log.error("the tunnel did not start: \(String(describing: error), privacy: .public)")
            return error
        }
    }

    /// Applies `settings` and waits for the system, at most 5 s (as WireGuardKit does): a
    /// completion that never comes must not hang the start.
    private func applyNetworkSettings(_ settings: NEPacketTunnelNetworkSettings) -> Error? {
        let done = DispatchSemaphore(value: 0)
        final class Outcome: @unchecked Sendable {
            // Written before `done` is signalled, read after it: the semaphore orders them.
            var error: Error?
        }
        let outcome = Outcome()
        setTunnelNetworkSettings(settings) { error in
            outcome.error = error
            done.signal()
        }
        if done.wait(timeout: .now() + 5) == .timedOut {
            log.error("setTunnelNetworkSettings did not complete in 5 s")
            return NEVPNError(.configurationReadWriteFailed)
        }
        return outcome.error
    }

    /// The interface settings for a wg-quick text: its addresses, its peers' AllowedIPs as
    /// routes, its DNS and MTU; the first peer's endpoint as the tunnel's remote address.
    static func networkSettings(for s: TunPipeWireGuardSettings) -> NEPacketTunnelNetworkSettings {
        let remote = s.peers.first?.endpointHost ?? "127.0.0.1"
        let settings = NEPacketTunnelNetworkSettings(tunnelRemoteAddress: remote)
        settings.mtu = NSNumber(value: s.mtu)
        var v4Addresses: [String] = [], v4Masks: [String] = []
        var v6Addresses: [String] = [], v6Prefixes: [NSNumber] = []
        for address in s.addresses {
            guard let parts = split(address) else { continue }
            let (ip, prefix) = parts
            if ip.contains(":") {
                v6Addresses.append(ip)
                v6Prefixes.append(NSNumber(value: prefix))
            } else {
                v4Addresses.append(ip)
                v4Masks.append(mask(prefix))
            }
        }
        var v4Routes: [NEIPv4Route] = [], v6Routes: [NEIPv6Route] = []
        for prefix in s.peers.flatMap({ $0.allowedIps }) {
            guard let parts = split(prefix) else { continue }
            let (ip, length) = parts
            if ip.contains(":") {
                let route = length == 0
                    ? NEIPv6Route.default()
                    : NEIPv6Route(destinationAddress: ip, networkPrefixLength: NSNumber(value: length))
                v6Routes.append(route)
            } else {
                let route = length == 0
                    ? NEIPv4Route.default()
                    : NEIPv4Route(destinationAddress: ip, subnetMask: mask(length))
                v4Routes.append(route)
            }
        }
        if !v4Addresses.isEmpty {
            let ipv4 = NEIPv4Settings(addresses: v4Addresses, subnetMasks: v4Masks)
            ipv4.includedRoutes = v4Routes
            settings.ipv4Settings = ipv4
        }
        if !v6Addresses.isEmpty {
            let ipv6 = NEIPv6Settings(addresses: v6Addresses, networkPrefixLengths: v6Prefixes)
            ipv6.includedRoutes = v6Routes
            settings.ipv6Settings = ipv6
        }
        if !s.dns.isEmpty {
            let dns = NEDNSSettings(servers: s.dns)
            dns.searchDomains = s.dnsSearch
            // Every query goes to these servers, as wg-quick does.
            dns.matchDomains = [""]
            settings.dnsSettings = dns
        }
        return settings
    }

    /// "10.0.0.2/32" as ("10.0.0.2", 32).
    private static func split(_ prefix: String) -> (String, Int)? {
        let parts = prefix.split(separator: "/")
        guard parts.count == 2, let length = Int(parts[1]) else { return nil }
        return (String(parts[0]), length)
    }

    /// An IPv4 prefix length as a dotted mask (24 → "255.255.255.0").
    private static func mask(_ length: Int) -> String {
        let bits: UInt32 = length == 0 ? 0 : ~UInt32(0) << UInt32(32 - min(length, 32))
        return (0..<4).map { String((bits >> UInt32(24 - 8 * $0)) & 0xff) }.joined(separator: ".")
    }

    /// Wi-Fi to cellular and back: the tunnel gets a new socket, and the peer hears from it.
    private func pathChanged(_ path: Network.NWPath) {
        defer { lastPath = path }
        // The first update is the path the tunnel started on.
        guard let last = lastPath, path.status == .satisfied else { return }
        let moved = path.availableInterfaces.map(\.name) != last.availableInterfaces.map(\.name)
        guard moved || last.status != .satisfied else { return }
        guard case let .running(engine, _) = state else { return }
        do {
            try engine.rebind()
        } catch {
            log.error("rebind failed: \(String(describing: error), privacy: .public)")
        }
    }

    override func stopTunnel(with reason: NEProviderStopReason, completionHandler: @escaping () -> Void) {
        workQueue.async {
            if case let .running(engine, monitor) = self.state {
                monitor.cancel()
                if let stats = try? engine.tunnelStats() {
                    self.log.info("handshakes \(stats.handshakesCompleted), from peers \(stats.dataRxPackets), to peers \(stats.dataTxPackets)")
                }
                // Returns once every engine thread is joined and its dup of the fd closed:
                // only then may the system tear the utun down.
                try? engine.stop()
            }
            self.state = .stopped
            self.lastPath = nil
            completionHandler()
        }
    }

    /// The containing app asks for the tunnel's figures: any message gets them as JSON.
    override func handleAppMessage(_ messageData: Data, completionHandler: ((Data?) -> Void)?) {
        workQueue.async {
            guard case let .running(engine, _) = self.state,
                  let stats = try? engine.tunnelStats()
            else {
                completionHandler?(nil)
                return
            }
            completionHandler?(try? JSONEncoder().encode(stats))
        }
    }
}

// The provider's state is touched on `workQueue` only, so the closures that hop onto that
// queue (the engine's stop handler, the path monitor's updates) may carry it.
extension PacketTunnelProvider: @unchecked Sendable {}
