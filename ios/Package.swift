// swift-tools-version:5.9
// The skyroute network extension: the generated Swift bindings (../bindings/generated/swift,
// copied into Sources/Skyroute by build-xcframework.sh together with the FFI module) and an
// NEPacketTunnelProvider built on them. The native library comes as an xcframework:
//   ios/build-xcframework.sh   (needs macOS with Xcode: cargo build for aarch64-apple-ios and
//                               aarch64-apple-ios-sim, then xcodebuild -create-xcframework)
import PackageDescription

let package = Package(
    name: "SkyrouteTunnel",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "SkyrouteTunnel", targets: ["SkyrouteTunnel"]),
    ],
    targets: [
        .binaryTarget(name: "SkyrouteFFI", path: "build/SkyrouteFFI.xcframework"),
        .target(name: "Skyroute", dependencies: ["SkyrouteFFI"], path: "Sources/Skyroute"),
        .target(name: "SkyrouteTunnel", dependencies: ["Skyroute"], path: "Sources/SkyrouteTunnel"),
    ]
)
