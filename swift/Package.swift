// swift-tools-version:5.9
// tunpipe for iOS/tvOS packet tunnels: the Rust engine as an XCFramework (built by
// scripts/build-xcframework.sh on a Mac) plus a thin Swift wrapper.
import PackageDescription

let package = Package(
    name: "TunPipe",
    platforms: [.iOS(.v15), .tvOS(.v17), .macOS(.v12)],
    products: [
        .library(name: "TunPipe", targets: ["TunPipe"]),
    ],
    targets: [
        // libtunpipe_ffi.a for every Apple slice, with ffi/tunpipe.h and the module map in
        // Headers/TunPipeFFI/ (module TunPipeFFI).
        .binaryTarget(name: "TunPipeFFI", path: "TunPipeFFI.xcframework"),
        .target(
            name: "TunPipe",
            dependencies: ["TunPipeFFI"],
            path: "Sources/TunPipe",
            // Checked as Swift 6 checks it: what crosses threads is Sendable.
            swiftSettings: [.enableExperimentalFeature("StrictConcurrency")]
        ),
    ]
)
