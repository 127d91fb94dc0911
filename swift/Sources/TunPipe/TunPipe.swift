// A thin Swift wrapper over the tunpipe C ABI (ffi/tunpipe.h, module TunPipeFFI).
//
// It mirrors the header field by field and converts types; nothing else. No Swift toolchain
// runs where this was written: see README.md ("How this Swift was checked").

import Foundation
import TunPipeFFI
import os

/// A failed tunpipe call: its `TUNPIPE_ERR_*` code and the message tunpipe recorded.
public struct TunPipeError: Error, CustomStringConvertible {
    public let code: Int32
    public let message: String

    public var description: String { "tunpipe error \(code): \(message)" }

    /// The calling thread's last error, for a call that just returned `code`.
    static func last(_ code: Int32) -> TunPipeError {
        TunPipeError(code: code, message: TunPipeError.threadMessage())
    }

    static func threadMessage() -> String {
        var buffer = [CChar](repeating: 0, count: 512)
        _ = tunpipe_last_error(&buffer, buffer.count)
        return String(cString: buffer)
    }
}

@inline(__always)
func check(_ code: Int32) throws {
    if code != TUNPIPE_OK { throw TunPipeError.last(code) }
}

/// The stage each packet goes through.
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
public struct TunPipeConfiguration {
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
    }

    /// The C struct: the defaults (which set `size` and zero `reserved`), then our fields.
    func cConfig() -> TunpipeConfig {
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
        return c
    }

    /// Bytes an engine with this configuration reserves at start (pool, rings, histograms):
    /// compare with `TunPipe.availableMemory()` before starting.
    public func reservedBytes() throws -> UInt64 {
        var c = cConfig()
        var bytes: UInt64 = 0
        try check(tunpipe_config_reserved_bytes(&c, &bytes))
        return bytes
    }
}

/// `TunpipeStats`: the engine's counters.
public struct TunPipeStats {
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
    public var poolStalls: UInt64
    public var readErrors: UInt64
    public var wakeups: UInt64
    public var callbackErrors: UInt64
    public var reservedBytes: UInt64
    /// Every packet dropped, whatever the reason (the sum of the `drop*` fields).
    public var dropped: UInt64

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
        poolStalls = s.pool_stalls
        readErrors = s.read_errors
        wakeups = s.wakeups
        callbackErrors = s.callback_errors
        reservedBytes = s.reserved_bytes
        dropped = s.dropped
    }

    static func read(_ fill: (UnsafeMutablePointer<TunpipeStats>) -> Int32) throws -> TunPipeStats {
        var s = TunpipeStats()
        s.size = UInt32(MemoryLayout<TunpipeStats>.size)
        try check(fill(&s))
        return TunPipeStats(s)
    }
}

/// `TunpipePercentiles`, in nanoseconds.
public struct TunPipePercentiles {
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
public struct TunPipeLatency {
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
public enum TunPipeHistogram {
    case engine
    case stage

    var raw: UInt32 {
        switch self {
        case .engine: return UInt32(TUNPIPE_LATENCY_ENGINE)
        case .stage: return UInt32(TUNPIPE_LATENCY_STAGE)
        }
    }
}

/// Reads a base64 histogram: ask for the size, then fill a buffer of that size.
func readBase64(_ call: (UnsafeMutablePointer<CChar>?, Int, UnsafeMutablePointer<Int>) -> Int32) throws -> String {
    var needed = 0
    let code = call(nil, 0, &needed)
    guard code == TUNPIPE_ERR_BUFFER_TOO_SMALL else {
        try check(code)
        return ""
    }
    var buffer = [CChar](repeating: 0, count: needed)
    try check(call(&buffer, buffer.count, &needed))
    return String(cString: buffer)
}

/// An engine on the tunnel's utun fd, through the handle API. Several may run at once.
///
/// `init` starts it without blocking (the engine has its own threads). `stop()` blocks until
/// every engine thread is joined and the engine's dup of the fd is closed, so call it from
/// `stopTunnel` (off the main thread) before calling the completion handler: after it
/// returns, iOS may close the fd. Deinit also stops.
public final class TunPipe {
    private let engine: OpaquePointer

    /// The ABI version of the linked library; `TUNPIPE_ABI_VERSION` is the header's.
    public static var abiVersion: UInt32 { tunpipe_abi_version() }

    /// Starts an engine on `fd` (from `UtunFinder.find()`), or with `fd == nil` lets tunpipe
    /// scan for the utun fd itself.
    public init(fd: Int32?, configuration: TunPipeConfiguration = TunPipeConfiguration()) throws {
        precondition(tunpipe_abi_version() == UInt32(TUNPIPE_ABI_VERSION), "tunpipe header and library differ")
        var c = configuration.cConfig()
        var handle: OpaquePointer?
        try check(tunpipe_engine_start(&c, fd ?? -1, &handle))
        guard let handle else { throw TunPipeError(code: TUNPIPE_ERR_PANIC, message: "no handle") }
        engine = handle
    }

    deinit {
        _ = tunpipe_engine_free(engine)
    }

    /// Stops and joins the engine. Throws the fatal error that had stopped it, if one did.
    public func stop() throws {
        try check(tunpipe_engine_stop(engine))
    }

    /// Calls `handler` on `queue` once the engine stops: after `stop()`, or on a fatal error
    /// (the device went away, the stage kept panicking), with that error. Waits on a thread of
    /// its own; the engine must outlive the wait (keep a reference to `self`).
    public func onStop(queue: DispatchQueue = .main, _ handler: @escaping (TunPipeError?) -> Void) {
        let thread = Thread { [self] in
            let code = tunpipe_engine_wait(engine)
            let error = code == TUNPIPE_OK ? nil : TunPipeError(code: code, message: handleMessage())
            queue.async { handler(error) }
        }
        thread.name = "tunpipe-wait"
        thread.qualityOfService = .utility
        thread.start()
    }

    public func stats() throws -> TunPipeStats {
        try TunPipeStats.read { tunpipe_engine_stats(engine, $0) }
    }

    public func latency() throws -> TunPipeLatency {
        try TunPipeLatency.read { tunpipe_engine_latency(engine, $0) }
    }

    /// The histogram in HdrHistogram's V2-deflate encoding, base64 (HdrHistogram log format).
    public func latencyHistogramBase64(_ which: TunPipeHistogram = .engine) throws -> String {
        try readBase64 { tunpipe_engine_latency_base64(engine, which.raw, $0, $1, $2) }
    }

    /// Bytes this engine reserved at start.
    public var reservedBytes: UInt64 {
        var bytes: UInt64 = 0
        _ = tunpipe_engine_reserved_bytes(engine, &bytes)
        return bytes
    }

    /// Memory left before the extension's jetsam limit (`os_proc_available_memory`), or nil
    /// where that call does not exist (macOS).
    public static func availableMemory() -> UInt64? {
        var bytes: UInt64 = 0
        return tunpipe_available_memory(&bytes) == TUNPIPE_OK ? bytes : nil
    }

    private func handleMessage() -> String {
        var buffer = [CChar](repeating: 0, count: 512)
        _ = tunpipe_engine_last_error(engine, &buffer, buffer.count)
        return String(cString: buffer)
    }
}

/// The seed's global pair, `start_tun(fd)` / `stop_tun()`, for hosts that follow the tun-rs
/// iOS guide: one engine per process, its configuration set beforehand.
public enum TunPipeGlobal {
    /// Sets the configuration the next `start` uses.
    public static func configure(_ configuration: TunPipeConfiguration) throws {
        var c = configuration.cConfig()
        try check(tunpipe_set_config(&c))
    }

    /// Runs `start_tun(fd)` on a background thread (it blocks while the engine runs) and
    /// calls `completion` with its result once it returns: nil after a clean stop.
    public static func start(fd: Int32?, completion: @escaping (TunPipeError?) -> Void = { _ in }) {
        let thread = Thread {
            let code = start_tun(fd ?? -1)
            completion(code == TUNPIPE_OK ? nil : TunPipeError.last(code))
        }
        thread.name = "tunpipe-start_tun"
        thread.qualityOfService = .userInitiated
        thread.start()
    }

    /// `stop_tun()`: returns once the engine is stopped and joined (also one still starting).
    /// Throws `TUNPIPE_ERR_NOT_RUNNING` when none runs.
    public static func stop() throws {
        try check(stop_tun())
    }

    /// Counters of the running engine, or of the last one after it stopped.
    public static func stats() throws -> TunPipeStats {
        try TunPipeStats.read { tunpipe_stats($0) }
    }

    public static func latency() throws -> TunPipeLatency {
        try TunPipeLatency.read { tunpipe_latency($0) }
    }

    public static func latencyHistogramBase64(_ which: TunPipeHistogram = .engine) throws -> String {
        try readBase64 { tunpipe_latency_base64(which.raw, $0, $1, $2) }
    }
}

/// Routes tunpipe's log lines (and panic messages: stderr is lost on iOS) to `os.Logger`.
public enum TunPipeLog {
    static let logger = Logger(subsystem: "tunpipe", category: "engine")

    /// Installs the callback; lines above `maxLevel` (a `TUNPIPE_LOG_*` level) are not
    /// formatted at all. tunpipe never logs per packet.
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
