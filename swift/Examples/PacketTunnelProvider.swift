// An example Network Extension: a WireGuard client on tunpipe. Add it to a Packet Tunnel
// Provider target that links the TunPipe package and carries
// Examples/PacketTunnel.entitlements. The containing app keeps the wg-quick text (private key
// included) in the keychain and hands the tunnel a persistent reference to it in
// `passwordReference`; it reads the tunnel's figures with `sendProviderMessage` (the
// protocol: `AppRequest` below, and README.md, "Messages"). README.md lists each point of
// WireGuardKit's behaviour this follows and where.

import Foundation
import Network
import NetworkExtension
import Security
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

    /// Touched on `workQueue` only, as are the three flags below.
    private var state = State.stopped
    /// The last path had no way out (`.unsatisfied`): the engine is suspended.
    private var offline = false
    /// The system put the device to sleep (`sleep(completionHandler:)`): the engine is
    /// suspended until `wake()`.
    private var asleep = false
    /// A usable path came while the engine was suspended: rebind once it resumes.
    private var rebindOnResume = false

    override func startTunnel(options: [String: NSObject]?, completionHandler: @escaping (Error?) -> Void) {
        workQueue.async {
            completionHandler(self.start())
        }
    }

    /// Starts the tunnel; nil on success.
    private func start() -> Error? {
        guard case .stopped = state else { return nil }
        try? TunPipeLog.install(maxLevel: TUNPIPE_LOG_INFO)
        let text: String
        do {
            text = try Self.wgQuickText(of: protocolConfiguration)
        } catch {
            // The error names the step and the keychain's status, never the text.
            log.error("no tunnel configuration: \(String(describing: error), privacy: .public)")
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
            #if os(iOS)
            // WireGuardKit's wgDisableSomeRoamingForBrokenMobileSemantics: on iOS an
            // initiation can come from an address that is not the current path's.
            try engine.disableRoaming()
            #endif
            engine.onStop(queue: workQueue) { [weak self] error in
                // A fatal error (say, the utun went away): tell the system.
                if let error { self?.cancelTunnelWithError(error) }
            }
            (offline, asleep, rebindOnResume) = (false, false, false)
            let monitor = NWPathMonitor()
            monitor.pathUpdateHandler = { [weak self] path in self?.pathChanged(path) }
            state = .running(engine: engine, monitor: monitor)
            // Updates queue up behind this block: the first finds the engine running.
            monitor.start(queue: workQueue)
            return nil
        } catch {
            log.error("the tunnel did not start: \(String(describing: error), privacy: .public)")
            return error
        }
    }

    /// Why there is no tunnel configuration (the keychain's status, never the item).
    enum ConfigurationError: Error, CustomStringConvertible {
        case noPasswordReference
        case keychain(OSStatus)
        case notText

        var description: String {
            switch self {
            case .noPasswordReference: return "the tunnel's protocol has no passwordReference"
            case let .keychain(status): return "the keychain answered status \(status)"
            case .notText: return "the keychain item is not UTF-8 text"
            }
        }
    }

    /// The wg-quick text, read from the keychain item that `passwordReference` (a persistent
    /// reference, `kSecValuePersistentRef`) names, as the WireGuard app keeps it: the private
    /// key never sits in `providerConfiguration`, which the system stores in the clear.
    static func wgQuickText(of configuration: NEVPNProtocol?) throws -> String {
        guard let reference = configuration?.passwordReference else {
            throw ConfigurationError.noPasswordReference
        }
        let query: [CFString: Any] = [
            kSecValuePersistentRef: reference,
            kSecReturnData: true,
        ]
        var result: CFTypeRef?
        let status = SecItemCopyMatching(query as CFDictionary, &result)
        guard status == errSecSuccess else { throw ConfigurationError.keychain(status) }
        guard let data = result as? Data, let text = String(data: data, encoding: .utf8) else {
            throw ConfigurationError.notText
        }
        return text
    }

    /// Applies `settings` and waits for the system, at most 5 s, as WireGuardKit does: in some
    /// states the system never calls the completion handler, and the tunnel proceeds without
    /// it (an error it does report fails the start).
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
            log.error("setTunnelNetworkSettings did not complete in 5 s; proceeding anyway")
            return nil
        }
        return outcome.error
    }

    /// The interface MTU when the text sets none: 1280 on iOS and tvOS, as WireGuardKit
    /// chooses there (at 1420 the outer IPv6 packet fills 1500 bytes, which too many mobile
    /// networks do not carry).
    static let defaultMTU = 1280
    /// The smallest IPv6 prefix iOS gives effect to; WireGuardKit clamps longer ones to it.
    static let longestIPv6Prefix = 120

    /// The interface settings for a wg-quick text: its addresses, its peers' AllowedIPs as
    /// routes, its DNS and MTU.
    static func networkSettings(for s: TunPipeWireGuardSettings) -> NEPacketTunnelNetworkSettings {
        // An address, never a host name: a tunnel may have many peers, or none with an
        // endpoint, and this is only what Settings shows. WireGuardKit gives 127.0.0.1 too.
        let settings = NEPacketTunnelNetworkSettings(tunnelRemoteAddress: "127.0.0.1")
        if s.mtuSet {
            settings.mtu = NSNumber(value: s.mtu)
        } else {
            #if os(macOS)
            // WireGuard's overhead over the path's MTU, as WireGuardKit does on macOS.
            settings.tunnelOverheadBytes = 80
            #else
            settings.mtu = NSNumber(value: defaultMTU)
            #endif
        }
        var v4Addresses: [String] = [], v4Masks: [String] = []
        var v6Addresses: [String] = [], v6Prefixes: [NSNumber] = []
        for address in s.addresses {
            guard let parts = split(address) else { continue }
            let (ip, length) = parts
            if ip.contains(":") {
                v6Addresses.append(ip)
                v6Prefixes.append(NSNumber(value: min(length, longestIPv6Prefix)))
            } else {
                v4Addresses.append(ip)
                v4Masks.append(mask(length))
            }
        }
        var v4Routes: [NEIPv4Route] = [], v6Routes: [NEIPv6Route] = []
        for prefix in s.peers.flatMap({ $0.allowedIps }) {
            guard let parts = split(prefix) else { continue }
            let (ip, length) = parts
            if ip.contains(":") {
                v6Routes.append(length == 0
                    ? NEIPv6Route.default()
                    : NEIPv6Route(destinationAddress: ip, networkPrefixLength: NSNumber(value: length)))
            } else {
                v4Routes.append(length == 0
                    ? NEIPv4Route.default()
                    : NEIPv4Route(destinationAddress: ip, subnetMask: mask(length)))
            }
        }
        // Both families, always, as WireGuardKit does: with `AllowedIPs = 0.0.0.0/0, ::/0`
        // and an IPv4-only `Address`, the IPv6 default route must still point into the
        // tunnel (where IPv6 goes nowhere) rather than out of it. An interface with routes
        // but no address of that family is what WireGuardKit hands iOS for such a text.
        let ipv4 = NEIPv4Settings(addresses: v4Addresses, subnetMasks: v4Masks)
        ipv4.includedRoutes = v4Routes
        settings.ipv4Settings = ipv4
        let ipv6 = NEIPv6Settings(addresses: v6Addresses, networkPrefixLengths: v6Prefixes)
        ipv6.includedRoutes = v6Routes
        settings.ipv6Settings = ipv6
        if !s.dns.isEmpty || !s.dnsSearch.isEmpty {
            let dns = NEDNSSettings(servers: s.dns)
            dns.searchDomains = s.dnsSearch
            if !s.dns.isEmpty {
                // Every query goes to these servers first, as wg-quick does.
                dns.matchDomains = [""]
            }
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
        let bits: UInt32 = length <= 0 ? 0 : ~UInt32(0) << UInt32(32 - min(length, 32))
        return (0..<4).map { String((bits >> UInt32(24 - 8 * $0)) & 0xff) }.joined(separator: ".")
    }

    /// A path that may carry traffic, as WireGuardKit counts it: `.requiresConnection` too
    /// (a cellular link that comes up on demand), and any status a later SDK adds.
    private static func isUsable(_ status: Network.NWPath.Status) -> Bool {
        switch status {
        case .satisfied, .requiresConnection: return true
        case .unsatisfied: return false
        @unknown default: return true
        }
    }

    /// Every path update, as WireGuardKit handles them: a usable path resumes the engine and
    /// rebinds it (a new socket, the endpoints looked up again, a handshake from it) on every
    /// update, not only when the interfaces change: a new address on the same Wi-Fi, or a
    /// move to an IPv6-only network with DNS64, needs it just the same. No path suspends the
    /// engine, so that it neither wakes nor sends while nothing can leave.
    private func pathChanged(_ path: Network.NWPath) {
        guard case .running = state else { return }
        offline = !Self.isUsable(path.status)
        if !offline {
            rebindOnResume = true
        }
        let interfaces = path.availableInterfaces.map(\.name).joined(separator: ", ")
        log.info("path \(String(describing: path.status), privacy: .public), interfaces \(interfaces, privacy: .public)")
        applyRunState()
    }

    /// Suspends the engine while offline or asleep; otherwise resumes it, and rebinds it if a
    /// usable path came meanwhile.
    private func applyRunState() {
        guard case let .running(engine, _) = state else { return }
        do {
            if offline || asleep {
                try engine.suspend()
                return
            }
            try engine.resume()
            if rebindOnResume {
                rebindOnResume = false
                try engine.rebind()
            }
        } catch {
            log.error("path change: \(String(describing: error), privacy: .public)")
        }
    }

    /// The device goes to sleep: the engine stops reading, sending and keeping time (its
    /// threads make no wake-ups) until `wake()`. Sessions are kept.
    override func sleep(completionHandler: @escaping () -> Void) {
        workQueue.async {
            self.asleep = true
            self.applyRunState()
            completionHandler()
        }
    }

    override func wake() {
        workQueue.async {
            self.asleep = false
            self.applyRunState()
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
            (self.offline, self.asleep, self.rebindOnResume) = (false, false, false)
            completionHandler()
        }
    }

    /// A message from the containing app (`sendProviderMessage`): UTF-8 JSON such as
    /// `{"get": "peers"}`. `get` is `"tunnel"` (`TunPipeTunnelStats`), `"peers"`
    /// (`[TunPipePeerStats]`: per-peer figures, public keys only) or `"engine"`
    /// (`TunPipeStats`).
    struct AppRequest: Decodable {
        enum Item: String, Decodable {
            case tunnel, peers, engine
        }

        var get: Item
    }

    /// The answer: JSON with the one member asked for, or `error` (a sentence; it never
    /// holds a key). Dates are seconds since 1970, public keys base64.
    struct AppReply: Encodable {
        var tunnel: TunPipeTunnelStats?
        var peers: [TunPipePeerStats]?
        var engine: TunPipeStats?
        var error: String?
    }

    override func handleAppMessage(_ messageData: Data, completionHandler: ((Data?) -> Void)?) {
        workQueue.async {
            completionHandler?(self.reply(to: messageData))
        }
    }

    private func reply(to message: Data) -> Data? {
        var reply = AppReply()
        if let request = try? JSONDecoder().decode(AppRequest.self, from: message) {
            if case let .running(engine, _) = state {
                do {
                    switch request.get {
                    case .tunnel: reply.tunnel = try engine.tunnelStats()
                    case .peers: reply.peers = try engine.peerStats()
                    case .engine: reply.engine = try engine.stats()
                    }
                } catch {
                    reply.error = String(describing: error)
                }
            } else {
                reply.error = "the tunnel is not running"
            }
        } else {
            reply.error = #"a request is {"get": "tunnel"}, {"get": "peers"} or {"get": "engine"}"#
        }
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .secondsSince1970
        return try? encoder.encode(reply)
    }
}

// The provider's state is touched on `workQueue` only, so the closures that hop onto that
// queue (the engine's stop handler, the path monitor's updates) may carry it.
extension PacketTunnelProvider: @unchecked Sendable {}
