// Finds the packet tunnel's utun file descriptor.

import Foundation
import NetworkExtension
import TunPipeFFI

public enum UtunFinder {
    /// The utun fd of this extension's tunnel, or nil.
    ///
    /// 1. The descriptor scan of the tun-rs iOS guide (and WireGuardKit): the first fd in
    ///    0...1024 that is a kernel control socket connected to `com.apple.net.utun_control`.
    ///    It runs in Rust (`tunpipe_find_utun_fd`), whose `ctl_info` / `sockaddr_ctl` /
    ///    `CTLIOCGINFO` definitions are written out there: the iOS SDK does not give Swift
    ///    `sys/kern_control.h`, so a Swift scan would need a bridging header for them.
    /// 2. Fallback: the private KVO path `packetFlow.socket.fileDescriptor`, which works on
    ///    some systems (it broke on iOS 15 and may break again): only when the scan finds
    ///    nothing.
    public static func find(packetFlow: NEPacketTunnelFlow? = nil) -> Int32? {
        let fd = tunpipe_find_utun_fd()
        if fd >= 0 {
            return fd
        }
        if let flow = packetFlow,
           let value = flow.value(forKeyPath: "socket.fileDescriptor") as? Int32,
           value >= 0
        {
            return value
        }
        return nil
    }
}
