// Finds the packet tunnel's utun file descriptor.

import Foundation
import TunPipeFFI

public enum UtunFinder {
    /// The utun fd of this extension's tunnel, or nil.
    ///
    /// The descriptor scan of the tun-rs iOS guide (and WireGuardKit): the first fd, among
    /// all the process may have (`getdtablesize()`), that is a kernel control socket connected
    /// to `com.apple.net.utun_control`, skipping the duplicates tunpipe itself holds for
    /// running engines. It runs in Rust (`tunpipe_find_utun_fd`), whose `ctl_info` /
    /// `sockaddr_ctl` / `CTLIOCGINFO` definitions are written out there: the iOS SDK does not
    /// give Swift `sys/kern_control.h`. (The private KVO path
    /// `packetFlow.socket.fileDescriptor` returns nil on every supported system, iOS 15+ and
    /// macOS 12+, so it is not tried.)
    public static func find() -> Int32? {
        let fd = tunpipe_find_utun_fd()
        return fd >= 0 ? fd : nil
    }
}
