// A thin Swift wrapper over the tunpipe C ABI (ffi/tunpipe.h, module TunPipeFFI).
//
// It mirrors the header field by field and converts types; nothing else. No Swift toolchain
// runs where this was written: see README.md ("How this Swift was checked").

import Foundation
import TunPipeFFI
import os

/// A failed tunpipe call: its `TUNPIPE_ERR_*` code and the message tunpipe recorded.
public struct TunPipeError: Error, CustomStringConvertible, Sendable {
    public let code: Int32
    public let message: String

    public var description: String { "tunpipe error \(code): \(message)" }

    /// The calling thread's last error, for a call that just returned `code`.
    static func last(_ code: Int32) -> TunPipeError {
        TunPipeError(code: code, message: TunPipeError.threadMessage())
    }

    static func threadMessage() -> String {
        // The count is read first: `&buffer` and `buffer.count` in one call would overlap.
        let count = 512
        var buffer = [CChar](repeating: 0, count: count)
        _ = tunpipe_last_error(&buffer, count)
        return String(cString: buffer)
    }
}

@inline(__always)
func check(_ code: Int32) throws {
    if code != TUNPIPE_OK { throw TunPipeError.last(code) }
}

/// Throws unless the linked library speaks the ABI of the header this package was built with
/// (a mismatch is an error to report, not a reason to kill the extension).
func checkAbi() throws {
    let linked = tunpipe_abi_version()
    if linked != UInt32(TUNPIPE_ABI_VERSION) {
        throw TunPipeError(
            code: TUNPIPE_ERR_INVALID_ARGUMENT,
            message: "libtunpipe speaks ABI \(linked), its header \(TUNPIPE_ABI_VERSION): rebuild the XCFramework"
        )
    }
}

/// Reads a NUL-terminated string that tunpipe writes into a caller's buffer (`buf`, `len`,
/// `needed`): asks for the size, then fills a buffer of that size, and asks again if what it
/// reads grew in between (a histogram that recorded more packets, say).
func readString(_ call: (UnsafeMutablePointer<CChar>?, Int, UnsafeMutablePointer<Int>) -> Int32) throws -> String {
    var needed = 0
    var code = call(nil, 0, &needed)
    while code == TUNPIPE_ERR_BUFFER_TOO_SMALL {
        let count = needed
        var buffer = [CChar](repeating: 0, count: count)
        code = call(&buffer, count, &needed)
        if code == TUNPIPE_OK {
            return String(cString: buffer)
        }
    }
    try check(code)
    return ""
}

/// The text of a C `char[N]` field (imported as a tuple of `CChar`), up to its NUL.
func fieldText<T>(_ field: T) -> String {
    withUnsafeBytes(of: field) { bytes in
        String(decoding: bytes.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
}

/// The stage each packet goes through (a one-way engine; a tunnel has its own).
public enum TunPipeStage {
    /// Answers ICMP/ICMPv6 echo requests and reflects UDP (the default, for testing).
    case reflect
    /// Forwards every packet unchanged.
    case passthrough
    /// A C function called per packet, from up to `workers` threads at once (see
    /// `TunpipeStageCallback` in the header). `context` must outlive the engine.
    case callback(TunpipeStageCallback, UnsafeMutableRawPointer?)
}

/// `TunpipeConfig`, with the library's defaults (`tunpipe_config_default`).
///
/// `@unchecked Sendable`: it is a value, but a `.callback` stage carries the host's raw
/// context pointer, whose thread safety is the host's promise (the header's contract).
public struct TunPipeConfiguration: @unchecked Sendable {
    public var workers: UInt32
    public var ringCapacity: UInt32
    public var poolBuffers: UInt32
    public var mtu: UInt32
    public var headroom: UInt32
    public var tailroom: UInt32
    public var batch: UInt32
    public var stage: TunPipeStage = .reflect
    public var pin: Bool
    public var latency: Bool
    public var maxStagePanics: UInt64
    /// Most bytes the engine may reserve at start (`reservedBytes()`); past it, start fails
    /// naming what to shrink. 0: the default (40 MiB on iOS and tvOS); `UInt64.max`: none.
    public var memoryBudget: UInt64
    /// How long, in microseconds, an idle engine thread keeps looking for the next packet
    /// before it sleeps (`spin_us`): 0 to `TUNPIPE_SPIN_US_MAX` (10000); 50 by default, on
    /// every platform. 0: never, an idle thread sleeps at once. A thread spins only while
    /// its recent packets came close together and its spins paid, so sparse traffic and an
    /// idle tunnel sleep whatever this says; in bursts and quick request-reply exchanges a spin keeps a core
    /// busy (battery) to save a sleep and a wake-up per packet (tens of µs of latency). What
    /// each setting cost where it was measured (a Linux VM, not Apple hardware): the header.
    public var spinMicroseconds: UInt32
    /// A WireGuard tunnel: the wg-quick text (from `providerConfiguration`, say), or nil for
    /// no tunnel. With it, `stage` and `mtu` are not used: the text's MTU (1420 by default)
    /// is the inside MTU. The host applies the addresses, DNS and routes itself
    /// (`TunPipeWireGuardSettings`).
    public var wireguardConfig: String?

    public init() {
        var c = TunpipeConfig()
        _ = tunpipe_config_default(&c)
        workers = c.workers
        ringCapacity = c.ring_capacity
        poolBuffers = c.pool_buffers
        mtu = c.mtu
        headroom = c.headroom
        tailroom = c.tailroom
        batch = c.batch
        pin = c.pin != 0
        latency = c.latency != 0
        maxStagePanics = c.max_stage_panics
        memoryBudget = c.memory_budget
        spinMicroseconds = c.spin_us
    }

    /// Calls `body` with the C struct (the defaults, which set `size` and zero `reserved`,
    /// then our fields). The WireGuard text's C string lives for the call: tunpipe copies it.
    func withCConfig<R>(_ body: (UnsafePointer<TunpipeConfig>) throws -> R) rethrows -> R {
        var c = TunpipeConfig()
        _ = tunpipe_config_default(&c)
        c.workers = workers
        c.ring_capacity = ringCapacity
        c.pool_buffers = poolBuffers
        c.mtu = mtu
        c.headroom = headroom
        c.tailroom = tailroom
        c.batch = batch
        c.pin = pin ? 1 : 0
        c.latency = latency ? 1 : 0
        c.max_stage_panics = maxStagePanics
        c.memory_budget = memoryBudget
        c.spin_us = spinMicroseconds
        switch stage {
        case .reflect:
            c.stage = UInt32(TUNPIPE_STAGE_REFLECT)
        case .passthrough:
            c.stage = UInt32(TUNPIPE_STAGE_PASSTHROUGH)
        case let .callback(function, context):
            c.stage = UInt32(TUNPIPE_STAGE_CALLBACK)
            c.callback = function
            c.callback_context = context
        }
        guard let text = wireguardConfig else {
            return try withUnsafePointer(to: &c) { try body($0) }
        }
        return try text.withCString { cText in
            c.wireguard_config = cText
            return try withUnsafePointer(to: &c) { try body($0) }
        }
    }

    /// Bytes an engine with this configuration reserves at start (pool, rings, histograms):
    /// compare with `TunPipe.availableMemory()` before starting.
    public func reservedBytes() throws -> UInt64 {
        var bytes: UInt64 = 0
        try withCConfig { try check(tunpipe_config_reserved_bytes($0, &bytes)) }
        return bytes
    }
}

/// `TunpipeStats`: the engine's counters. For a tunnel, both directions together (per
/// direction, and WireGuard's reasons for its drops: `TunPipeTunnelStats`).
public struct TunPipeStats: Codable, Sendable {
    public var rxPackets: UInt64
    public var rxBytes: UInt64
    public var txPackets: UInt64
    public var txBytes: UInt64
    public var dropRingFull: UInt64
    public var dropMalformed: UInt64
    public var dropOversize: UInt64
    public var dropStage: UInt64
    public var dropStagePanic: UInt64
    public var dropWriteError: UInt64
    public var dropStopped: UInt64
    public var dropNoBuffer: UInt64
    public var poolStalls: UInt64
    public var ringStalls: UInt64
    public var readErrors: UInt64
    public var wakeups: UInt64
    public var callbackErrors: UInt64
    public var reservedBytes: UInt64
    /// Every packet dropped, whatever the reason (the sum of the `drop*` fields).
    public var dropped: UInt64
    /// A tunnel's own packets (handshake messages, keepalives).
    public var originated: UInt64
    /// Packets a tunnel's protocol used itself (handshake messages, keepalives, cookies).
    public var consumed: UInt64
    /// Packets a tunnel holds now, waiting for a handshake (0 after stop).
    public var held: UInt64
    /// Of `txPackets`, those the thread that read (or made) them wrote itself because the
    /// writer thread slept: one thread wake-up per such packet instead of two.
    public var txDirect: UInt64
    /// Packets in the engine when it was suspended, or sent toward a device while it was.
    public var dropSuspended: UInt64

    init(_ s: TunpipeStats) {
        rxPackets = s.rx_packets
        rxBytes = s.rx_bytes
        txPackets = s.tx_packets
        txBytes = s.tx_bytes
        dropRingFull = s.drop_ring_full
        dropMalformed = s.drop_malformed
        dropOversize = s.drop_oversize
        dropStage = s.drop_stage
        dropStagePanic = s.drop_stage_panic
        dropWriteError = s.drop_write_error
        dropStopped = s.drop_stopped
        dropNoBuffer = s.drop_no_buffer
        poolStalls = s.pool_stalls
        ringStalls = s.ring_stalls
        readErrors = s.read_errors
        wakeups = s.wakeups
        callbackErrors = s.callback_errors
        reservedBytes = s.reserved_bytes
        dropped = s.dropped
        originated = s.originated
        consumed = s.consumed
        held = s.held
        txDirect = s.tx_direct
        dropSuspended = s.drop_suspended
    }

    static func read(_ fill: (UnsafeMutablePointer<TunpipeStats>) -> Int32) throws -> TunPipeStats {
        var s = TunpipeStats()
        s.size = UInt32(MemoryLayout<TunpipeStats>.size)
        try check(fill(&s))
        return TunPipeStats(s)
    }
}

/// `TunpipeDirectionStats`: one direction of a tunnel. Outbound is TUN → UDP (sealed toward
/// the peers), inbound is UDP → TUN.
public struct TunPipeDirectionStats: Codable, Sendable {
    public var packetsIn: UInt64
    public var bytesIn: UInt64
    public var packetsOut: UInt64
    public var bytesOut: UInt64
    public var originated: UInt64
    public var consumed: UInt64
    public var dropped: UInt64
    public var ringStalls: UInt64

    init(_ d: TunpipeDirectionStats) {
        packetsIn = d.packets_in
        bytesIn = d.bytes_in
        packetsOut = d.packets_out
        bytesOut = d.bytes_out
        originated = d.originated
        consumed = d.consumed
        dropped = d.dropped
        ringStalls = d.ring_stalls
    }
}

/// `TunpipeTunnelStats`: a WireGuard tunnel's figures. `Codable`: a provider can answer
/// `handleAppMessage` with it as JSON.
public struct TunPipeTunnelStats: Codable, Sendable {
    public var peers: UInt32
    public var handshakesCompleted: UInt64
    public var handshakeFailures: UInt64
    public var handshakeInitiations: UInt64
    /// Seconds since the last completed handshake; nil if none has.
    public var secondsSinceHandshake: Int64?
    /// The first peer's endpoint as it now stands ("203.0.113.1:51820"); nil if unknown.
    public var endpoint: String?
    public var outbound: TunPipeDirectionStats
    public var inbound: TunPipeDirectionStats
    public var dataTxPackets: UInt64
    public var dataTxBytes: UInt64
    public var dataRxPackets: UInt64
    public var dataRxBytes: UInt64
    public var dropAuthFailure: UInt64
    public var dropReplay: UInt64
    public var dropNotAllowed: UInt64
    public var dropNoSession: UInt64
    public var dropNoPeer: UInt64
    public var dropNoEndpoint: UInt64
    public var dropNoHandshake: UInt64
    public var dropGarbage: UInt64
    /// Outbound packets held now for a handshake.
    public var outboundHeld: UInt64
    /// Inbound packets held now (0 for WireGuard).
    public var inboundHeld: UInt64
    /// Dropped: a handshake message with a bad mac1, before any Diffie-Hellman.
    public var dropBadMac1: UInt64
    /// Cookie replies sent: handshake messages that came past the rate limit without a valid
    /// mac2.
    public var cookieReplies: UInt64
    /// Handshake responses to this end's initiations: each proves the path works both ways.
    public var initiationsAnswered: UInt64

    init(_ t: TunpipeTunnelStats) {
        peers = t.peers
        handshakesCompleted = t.handshakes_completed
        handshakeFailures = t.handshake_failures
        handshakeInitiations = t.handshake_initiations
        secondsSinceHandshake = t.seconds_since_handshake < 0 ? nil : t.seconds_since_handshake
        let text = fieldText(t.endpoint)
        endpoint = text.isEmpty ? nil : text
        outbound = TunPipeDirectionStats(t.outbound)
        inbound = TunPipeDirectionStats(t.inbound)
        dataTxPackets = t.data_tx_packets
        dataTxBytes = t.data_tx_bytes
        dataRxPackets = t.data_rx_packets
        dataRxBytes = t.data_rx_bytes
        dropAuthFailure = t.drop_auth_failure
        dropReplay = t.drop_replay
        dropNotAllowed = t.drop_not_allowed
        dropNoSession = t.drop_no_session
        dropNoPeer = t.drop_no_peer
        dropNoEndpoint = t.drop_no_endpoint
        dropNoHandshake = t.drop_no_handshake
        dropGarbage = t.drop_garbage
        outboundHeld = t.outbound_held
        inboundHeld = t.inbound_held
        dropBadMac1 = t.drop_bad_mac1
        cookieReplies = t.cookie_replies
        initiationsAnswered = t.initiations_answered
    }

    static func read(_ fill: (UnsafeMutablePointer<TunpipeTunnelStats>) -> Int32) throws -> TunPipeTunnelStats {
        var t = TunpipeTunnelStats()
        t.size = UInt32(MemoryLayout<TunpipeTunnelStats>.size)
        try check(fill(&t))
        return TunPipeTunnelStats(t)
    }
}

/// `TunpipePeerStats`: one peer's figures. Packets and bytes are WireGuard messages as they
/// cross the UDP socket (handshakes and keepalives included), as `wg show` counts them;
/// `TunPipeTunnelStats.dataTxBytes` and the like count the packets inside. `Codable`, like
/// `TunPipeTunnelStats`. Only the public key is here: no private or preshared key.
public struct TunPipePeerStats: Codable, Sendable {
    /// The peer's public key: its 32 raw bytes.
    public var publicKey: Data
    /// Where the peer is now ("203.0.113.1:51820"); nil if none is known yet.
    public var endpoint: String?
    /// When the last handshake with the peer completed; nil if none has since it was added.
    public var lastHandshake: Date?
    public var handshakes: UInt64
    /// Messages sent to the peer, and their bytes (UDP payload): `wg show`'s "sent".
    public var txPackets: UInt64
    public var txBytes: UInt64
    /// Authenticated messages received from the peer, and their bytes: `wg show`'s "received".
    public var rxPackets: UInt64
    public var rxBytes: UInt64
    public var dropAuthFailure: UInt64
    public var dropReplay: UInt64
    public var dropNotAllowed: UInt64
    public var dropNoSession: UInt64
    public var dropNoEndpoint: UInt64
    public var dropNoHandshake: UInt64
    public var dropGarbage: UInt64
    /// Every packet to or from the peer that was dropped (the sum of the `drop*` fields).
    public var dropped: UInt64

    /// The public key as wg-quick and `wg show` write it.
    public var publicKeyBase64: String { publicKey.base64EncodedString() }

    init(_ p: TunpipePeerStats) {
        // `uint8_t public_key[32]` imports as a tuple of UInt8: copy its bytes.
        publicKey = withUnsafeBytes(of: p.public_key) { Data($0) }
        let text = fieldText(p.endpoint)
        endpoint = text.isEmpty ? nil : text
        // 0 seconds is "never", as in the UAPI.
        lastHandshake = p.last_handshake_sec == 0 ? nil : Date(
            timeIntervalSince1970: TimeInterval(p.last_handshake_sec) + TimeInterval(p.last_handshake_nsec) / 1e9
        )
        handshakes = p.handshakes
        txPackets = p.tx_packets
        txBytes = p.tx_bytes
        rxPackets = p.rx_packets
        rxBytes = p.rx_bytes
        dropAuthFailure = p.drop_auth_failure
        dropReplay = p.drop_replay
        dropNotAllowed = p.drop_not_allowed
        dropNoSession = p.drop_no_session
        dropNoEndpoint = p.drop_no_endpoint
        dropNoHandshake = p.drop_no_handshake
        dropGarbage = p.drop_garbage
        dropped = p.dropped
    }

    /// Every peer, read as the header says: `peers` (from the tunnel's figures) only reserves
    /// room; indexes are asked for until `TUNPIPE_ERR_NOT_FOUND`, the end of the list, since
    /// peers may come and go while the tunnel runs.
    static func readAll(
        peers: UInt32,
        _ fill: (UInt32, UnsafeMutablePointer<TunpipePeerStats>) -> Int32
    ) throws -> [TunPipePeerStats] {
        var all: [TunPipePeerStats] = []
        all.reserveCapacity(Int(peers))
        var index: UInt32 = 0
        while true {
            var p = TunpipePeerStats()
            p.size = UInt32(MemoryLayout<TunpipePeerStats>.size)
            let code = fill(index, &p)
            if code == TUNPIPE_ERR_NOT_FOUND {
                return all
            }
            try check(code)
            all.append(TunPipePeerStats(p))
            index += 1
        }
    }
}

/// What the host applies to its interface for a wg-quick text, from tunpipe's own parser
/// (`tunpipe_wireguard_settings`): no second parser in Swift, and no keys.
public struct TunPipeWireGuardSettings: Decodable, Sendable {
    public struct Peer: Decodable, Sendable {
        /// "vpn.example.com:51820" or "[2001:db8::1]:51820"; nil if the peer reaches us first.
        public var endpoint: String?
        /// The endpoint's host, for display (`tunnelRemoteAddress` takes an address, never a
        /// host name: give it "127.0.0.1", as WireGuardKit does).
        public var endpointHost: String?
        public var endpointPort: UInt16?
        /// Prefixes routed to this peer ("0.0.0.0/0", "10.0.0.0/8", "::/0").
        public var allowedIps: [String]
        public var persistentKeepalive: UInt16?
    }

    /// The interface's addresses with their prefixes ("10.0.0.2/32", "fd00::2/128").
    public var addresses: [String]
    public var dns: [String]
    public var dnsSearch: [String]
    /// The text's MTU, 1420 when it sets none (`mtuSet` says whether it did).
    public var mtu: Int
    /// Whether the text sets `MTU`. Without it, WireGuardKit gives the interface 1280 on iOS.
    public var mtuSet: Bool
    public var listenPort: UInt16?
    public var peers: [Peer]

    /// Parses `wgQuick` (an error names the line and the field).
    public init(wgQuick: String) throws {
        let json = try wgQuick.withCString { text in
            try readString { tunpipe_wireguard_settings(text, $0, $1, $2) }
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        self = try decoder.decode(TunPipeWireGuardSettings.self, from: Data(json.utf8))
    }
}

/// `TunpipePercentiles`, in nanoseconds.
public struct TunPipePercentiles: Codable, Sendable {
    public var count: UInt64
    public var min: UInt64
    public var p50: UInt64
    public var p90: UInt64
    public var p99: UInt64
    public var p999: UInt64
    public var max: UInt64

    init(_ p: TunpipePercentiles) {
        count = p.count
        min = p.min
        p50 = p.p50
        p90 = p.p90
        p99 = p.p99
        p999 = p.p999
        max = p.max
    }
}

/// `TunpipeLatency`: time in the engine (read to write) and in the stage.
public struct TunPipeLatency: Codable, Sendable {
    public var engine: TunPipePercentiles
    public var stage: TunPipePercentiles

    static func read(_ fill: (UnsafeMutablePointer<TunpipeLatency>) -> Int32) throws -> TunPipeLatency {
        var l = TunpipeLatency()
        l.size = UInt32(MemoryLayout<TunpipeLatency>.size)
        try check(fill(&l))
        return TunPipeLatency(engine: TunPipePercentiles(l.engine), stage: TunPipePercentiles(l.stage))
    }
}

/// Which histogram to export.
public enum TunPipeHistogram: Sendable {
    case engine
    case stage

    var raw: UInt32 {
        switch self {
        case .engine: return UInt32(TUNPIPE_LATENCY_ENGINE)
        case .stage: return UInt32(TUNPIPE_LATENCY_STAGE)
        }
    }
}

/// The engine handle itself. `TunPipe` owns one, and so does a thread waiting in
/// `onStop`: the handle is freed when the last of them lets go, so that `TunPipe.deinit`
/// (which stops the engine) runs even while a wait is under way.
final class EngineHandle: @unchecked Sendable {
    // Sendable: tunpipe's handle calls are thread-safe (the header's contract); the pointer
    // never changes after init, and is freed once, in deinit.
    let pointer: OpaquePointer

    init(_ pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        // Stops (if still running), joins and frees.
        _ = tunpipe_engine_free(pointer)
    }

    func lastError() -> String {
        let count = 512
        var buffer = [CChar](repeating: 0, count: count)
        _ = tunpipe_engine_last_error(pointer, &buffer, count)
        return String(cString: buffer)
    }
}

/// An engine on the tunnel's utun fd, through the handle API. Several may run at once.
///
/// `init` starts it without blocking (the engine has its own threads). `stop()` blocks until
/// every engine thread is joined and the engine's dup of the fd is closed, so call it from
/// `stopTunnel` (off the main thread) before calling the completion handler: after it
/// returns, iOS may close the fd. Dropping the last reference stops it too.
public final class TunPipe: Sendable {
    private let handle: EngineHandle

    /// The ABI version of the linked library; `TUNPIPE_ABI_VERSION` is the header's.
    public static var abiVersion: UInt32 { tunpipe_abi_version() }

    /// Starts an engine on `fd` (from `UtunFinder.find()`), or with `fd == nil` lets tunpipe
    /// scan for the utun fd itself. With `configuration.wireguardConfig` set it runs a
    /// WireGuard tunnel (a host name in Endpoint is resolved here: call it off the main
    /// thread).
    public init(fd: Int32?, configuration: TunPipeConfiguration = TunPipeConfiguration()) throws {
        try checkAbi()
        var pointer: OpaquePointer?
        try configuration.withCConfig { c in
            try check(tunpipe_engine_start(c, fd ?? -1, &pointer))
        }
        guard let pointer else {
            throw TunPipeError(code: TUNPIPE_ERR_PANIC, message: "tunpipe_engine_start gave no handle")
        }
        handle = EngineHandle(pointer)
    }

    deinit {
        // A waiting `onStop` thread keeps the handle, not `self`: stop here, so that the
        // engine and its dup of the fd go when the host lets go of the engine.
        _ = tunpipe_engine_stop(handle.pointer)
    }

    /// Stops and joins the engine. Throws the fatal error that had stopped it, if one did.
    public func stop() throws {
        try check(tunpipe_engine_stop(handle.pointer))
    }

    /// Calls `handler` on `queue` once the engine stops: after `stop()` (or the last
    /// reference is dropped), or on a fatal error (the device went away, the stage kept
    /// panicking), with that error. Waits on a thread of its own, which holds the engine's
    /// handle (not `self`).
    public func onStop(queue: DispatchQueue = .main, _ handler: @escaping @Sendable (TunPipeError?) -> Void) {
        let handle = self.handle
        let thread = Thread {
            let code = tunpipe_engine_wait(handle.pointer)
            let error = code == TUNPIPE_OK ? nil : TunPipeError(code: code, message: handle.lastError())
            queue.async { handler(error) }
        }
        thread.name = "tunpipe-wait"
        thread.qualityOfService = .utility
        thread.start()
    }

    /// Tells the tunnel that the network path changed (from `NWPathMonitor`, a satisfied
    /// path). Returns at once; the tunnel then looks its endpoints' hosts up again (DNS64 on
    /// an IPv6-only network), takes a new UDP socket (the same port if it can be had), and
    /// starts a handshake with every peer from it; with no answer in 5 s it moves to a fresh
    /// port. Throws `TUNPIPE_ERR_UNSUPPORTED` for an engine without a tunnel.
    public func rebind() throws {
        try check(tunpipe_engine_rebind(handle.pointer))
    }

    /// Suspends the engine while the network is gone (an unsatisfied path) or the device
    /// sleeps (`sleep(completionHandler:)`): nothing is read, sent or timed, and its threads
    /// make no wake-ups, until `resume()`. Sessions are kept.
    public func suspend() throws {
        try check(tunpipe_engine_suspend(handle.pointer))
    }

    /// Ends a suspension (`wake()`, or a satisfied path; call `rebind()` too after a network
    /// change).
    public func resume() throws {
        try check(tunpipe_engine_resume(handle.pointer))
    }

    /// From now on, a peer that has an endpoint keeps it instead of following the source of
    /// its authenticated packets, as WireGuardKit asks on iOS: an initiation can come from an
    /// address of the device that is not the current path's. Throws
    /// `TUNPIPE_ERR_UNSUPPORTED` for an engine without a tunnel.
    public func disableRoaming() throws {
        try check(tunpipe_engine_disable_roaming(handle.pointer))
    }

    public func stats() throws -> TunPipeStats {
        try TunPipeStats.read { tunpipe_engine_stats(handle.pointer, $0) }
    }

    /// The tunnel's figures; throws `TUNPIPE_ERR_UNSUPPORTED` for an engine without a tunnel.
    public func tunnelStats() throws -> TunPipeTunnelStats {
        try TunPipeTunnelStats.read { tunpipe_engine_tunnel_stats(handle.pointer, $0) }
    }

    /// Each peer's figures, in the configuration's order (the peers as they are now: they may
    /// change while the tunnel runs); throws `TUNPIPE_ERR_UNSUPPORTED` for an engine without
    /// a tunnel.
    public func peerStats() throws -> [TunPipePeerStats] {
        let peers = try tunnelStats().peers
        return try TunPipePeerStats.readAll(peers: peers) { tunpipe_engine_peer_stats(handle.pointer, $0, $1) }
    }

    public func latency() throws -> TunPipeLatency {
        try TunPipeLatency.read { tunpipe_engine_latency(handle.pointer, $0) }
    }

    /// The histogram in HdrHistogram's V2-deflate encoding, base64 (HdrHistogram log format).
    public func latencyHistogramBase64(_ which: TunPipeHistogram = .engine) throws -> String {
        try readString { tunpipe_engine_latency_base64(handle.pointer, which.raw, $0, $1, $2) }
    }

    /// Bytes this engine reserved at start.
    public var reservedBytes: UInt64 {
        var bytes: UInt64 = 0
        _ = tunpipe_engine_reserved_bytes(handle.pointer, &bytes)
        return bytes
    }

    /// Memory left before the extension's jetsam limit (`os_proc_available_memory`), or nil
    /// where that call does not exist (macOS).
    public static func availableMemory() -> UInt64? {
        var bytes: UInt64 = 0
        return tunpipe_available_memory(&bytes) == TUNPIPE_OK ? bytes : nil
    }
}

/// The seed's global pair, `start_tun(fd)` / `stop_tun()`, for hosts that follow the tun-rs
/// iOS guide: one engine per process, its configuration set beforehand.
///
/// `start` returns before its thread calls `start_tun`; a `stop` in that window cancels the
/// start (the engine never runs), and a `stop` just after it waits for `start_tun` to claim
/// the engine and then stops it.
public enum TunPipeGlobal {
    private enum Phase {
        case idle
        /// `start` spawned its thread, which has not called `start_tun` yet.
        case pending(cancelled: Bool)
        /// The thread is in `start_tun` (or about to be).
        case running
    }

    /// The phase, behind a lock: touched by `start`, `stop` and the start thread.
    private final class State: @unchecked Sendable {
        // Sendable: every access to `phase` holds `lock`.
        let lock = NSLock()
        var phase = Phase.idle

        func with<R>(_ body: (inout Phase) throws -> R) rethrows -> R {
            lock.lock()
            defer { lock.unlock() }
            return try body(&phase)
        }
    }

    private static let state = State()

    /// Sets the configuration the next `start` uses (with `wireguardConfig`, a tunnel).
    public static func configure(_ configuration: TunPipeConfiguration) throws {
        try checkAbi()
        try configuration.withCConfig { try check(tunpipe_set_config($0)) }
    }

    /// Runs `start_tun(fd)` on a background thread (it blocks while the engine runs) and
    /// calls `completion` with its result once it returns: nil after a clean stop, or after a
    /// `stop` that cancelled the start. Throws `TUNPIPE_ERR_ALREADY_RUNNING` if a start is
    /// pending or running.
    public static func start(fd: Int32?, completion: @escaping @Sendable (TunPipeError?) -> Void = { _ in }) throws {
        try state.with { phase -> Void in
            guard case .idle = phase else {
                throw TunPipeError(code: TUNPIPE_ERR_ALREADY_RUNNING, message: "a start_tun engine is starting or running")
            }
            phase = .pending(cancelled: false)
        }
        let thread = Thread {
            let cancelled = state.with { phase -> Bool in
                if case .pending(cancelled: true) = phase {
                    phase = .idle
                    return true
                }
                phase = .running
                return false
            }
            if cancelled {
                completion(nil)
                return
            }
            let code = start_tun(fd ?? -1)
            let error = code == TUNPIPE_OK ? nil : TunPipeError.last(code)
            state.with { $0 = .idle }
            completion(error)
        }
        thread.name = "tunpipe-start_tun"
        thread.qualityOfService = .userInitiated
        thread.start()
    }

    /// Stops the engine `start` started and returns once it is stopped and joined (a start
    /// still pending is cancelled). Throws `TUNPIPE_ERR_NOT_RUNNING` when nothing was started.
    public static func stop() throws {
        let wasRunning = try state.with { phase -> Bool in
            switch phase {
            case .idle:
                throw TunPipeError(code: TUNPIPE_ERR_NOT_RUNNING, message: "no start_tun engine is starting or running")
            case .pending:
                phase = .pending(cancelled: true)
                return false
            case .running:
                return true
            }
        }
        guard wasRunning else { return }
        // The thread may be between `.running` and `start_tun` claiming its slot, where
        // stop_tun finds nothing yet: ask again until it stops something or the thread ends.
        while true {
            let code = stop_tun()
            if code != TUNPIPE_ERR_NOT_RUNNING {
                try check(code)
                return
            }
            let ended = state.with { phase -> Bool in
                if case .idle = phase { return true }
                return false
            }
            if ended { return }
            usleep(1000)
        }
    }

    /// Tells the running `start_tun` tunnel that the network path changed (as
    /// `TunPipe.rebind()`).
    public static func rebind() throws {
        try check(tunpipe_rebind())
    }

    /// Suspends the running `start_tun` engine (as `TunPipe.suspend()`).
    public static func suspend() throws {
        try check(tunpipe_suspend())
    }

    /// Resumes the running `start_tun` engine (as `TunPipe.resume()`).
    public static func resume() throws {
        try check(tunpipe_resume())
    }

    /// Disables roaming in the running `start_tun` tunnel (as `TunPipe.disableRoaming()`).
    public static func disableRoaming() throws {
        try check(tunpipe_disable_roaming())
    }

    /// Counters of the running engine, or of the last one after it stopped.
    public static func stats() throws -> TunPipeStats {
        try TunPipeStats.read { tunpipe_stats($0) }
    }

    /// The tunnel's figures (the running one, or the last one after it stopped).
    public static func tunnelStats() throws -> TunPipeTunnelStats {
        try TunPipeTunnelStats.read { tunpipe_tunnel_stats($0) }
    }

    /// Each peer's figures (the running tunnel's, or the last one's after it stopped), as
    /// `TunPipe.peerStats()`.
    public static func peerStats() throws -> [TunPipePeerStats] {
        let peers = try tunnelStats().peers
        return try TunPipePeerStats.readAll(peers: peers) { tunpipe_peer_stats($0, $1) }
    }

    public static func latency() throws -> TunPipeLatency {
        try TunPipeLatency.read { tunpipe_latency($0) }
    }

    public static func latencyHistogramBase64(_ which: TunPipeHistogram = .engine) throws -> String {
        try readString { tunpipe_latency_base64(which.raw, $0, $1, $2) }
    }
}

/// Routes tunpipe's log lines (and panic messages: stderr is lost on iOS) to `os.Logger`.
public enum TunPipeLog {
    static let logger = Logger(subsystem: "tunpipe", category: "engine")

    /// Installs the callback; lines above `maxLevel` (a `TUNPIPE_LOG_*` level) are not
    /// formatted at all. tunpipe never logs per packet, and never logs a key.
    public static func install(maxLevel: Int32 = TUNPIPE_LOG_INFO) throws {
        // A C function pointer: the closure captures nothing and reads the static logger.
        try check(tunpipe_set_log_callback({ _, level, message in
            guard let message else { return }
            let text = String(cString: message)
            switch level {
            case TUNPIPE_LOG_ERROR: TunPipeLog.logger.error("\(text, privacy: .public)")
            case TUNPIPE_LOG_WARN: TunPipeLog.logger.warning("\(text, privacy: .public)")
            case TUNPIPE_LOG_INFO: TunPipeLog.logger.info("\(text, privacy: .public)")
            default: TunPipeLog.logger.debug("\(text, privacy: .public)")
            }
        }, maxLevel, nil))
    }

    /// Turns the callback off.
    public static func uninstall() {
        _ = tunpipe_set_log_callback(nil, TUNPIPE_LOG_OFF, nil)
    }
}
