// An example Network Extension using tunpipe. Add it to a Packet Tunnel Provider target that
// links the TunPipe package and carries Examples/PacketTunnel.entitlements.

import NetworkExtension
import TunPipe
import TunPipeFFI
import os

final class PacketTunnelProvider: NEPacketTunnelProvider {
    private var engine: TunPipe?
    private let log = Logger(subsystem: "tunpipe.example", category: "provider")

    override func startTunnel(options: [String: NSObject]?, completionHandler: @escaping (Error?) -> Void) {
        try? TunPipeLog.install(maxLevel: TUNPIPE_LOG_INFO)

        let settings = NEPacketTunnelNetworkSettings(tunnelRemoteAddress: "10.77.0.2")
        settings.mtu = 1500
        let ipv4 = NEIPv4Settings(addresses: ["10.77.0.1"], subnetMasks: ["255.255.255.0"])
        ipv4.includedRoutes = [NEIPv4Route(destinationAddress: "10.77.0.0", subnetMask: "255.255.255.0")]
        settings.ipv4Settings = ipv4

        setTunnelNetworkSettings(settings) { [weak self] error in
            guard let self else { return }
            if let error {
                completionHandler(error)
                return
            }
            // The utun fd exists once the settings are applied. Start off the main thread:
            // adopting the fd and spawning the engine's threads take a moment.
            DispatchQueue.global(qos: .userInitiated).async {
                guard let fd = UtunFinder.find(packetFlow: self.packetFlow) else {
                    self.log.error("utun fd not found")
                    completionHandler(NEVPNError(.configurationInvalid))
                    return
                }
                do {
                    var config = TunPipeConfiguration()
                    config.mtu = 1500
                    let needed = try config.reservedBytes()
                    if let available = TunPipe.availableMemory(), needed > available / 2 {
                        self.log.warning("engine needs \(needed) bytes, \(available) available")
                    }
                    let engine = try TunPipe(fd: fd, configuration: config)
                    engine.onStop { [weak self] error in
                        // A fatal error (say, the utun went away): tell the system.
                        if let error { self?.cancelTunnelWithError(error) }
                    }
                    self.engine = engine
                    completionHandler(nil)
                } catch {
                    self.log.error("tunpipe did not start: \(String(describing: error), privacy: .public)")
                    completionHandler(error)
                }
            }
        }
    }

    override func stopTunnel(with reason: NEProviderStopReason, completionHandler: @escaping () -> Void) {
        // stop() returns once every engine thread is joined and its dup of the fd closed:
        // only then may the system tear the utun down. It blocks, so not on the main thread.
        DispatchQueue.global(qos: .userInitiated).async {
            if let engine = self.engine {
                if let stats = try? engine.stats() {
                    self.log.info("rx \(stats.rxPackets) tx \(stats.txPackets) dropped \(stats.dropped)")
                }
                try? engine.stop()
            }
            self.engine = nil
            completionHandler()
        }
    }
}
