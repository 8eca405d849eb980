#!/usr/bin/env bash
# Builds the static library for iOS devices and the simulator and wraps it with the generated
# FFI header as build/SkyrouteFFI.xcframework; copies the generated Swift bindings into
# Sources/Skyroute. Needs macOS with Xcode (not available on the Linux build machine).
set -euo pipefail
cd "$(dirname "$0")/.."
for t in aarch64-apple-ios aarch64-apple-ios-sim; do
    rustup target add "$t"
    cargo build --release -p skyroute-ffi --target "$t"
done
rm -rf ios/build && mkdir -p ios/build/headers ios/Sources/Skyroute
cp bindings/generated/swift/SkyrouteFFI.h ios/build/headers/
cp bindings/generated/swift/SkyrouteFFI.modulemap ios/build/headers/module.modulemap
cp bindings/generated/swift/Skyroute.swift ios/Sources/Skyroute/
xcodebuild -create-xcframework \
    -library target/aarch64-apple-ios/release/libskyroute_ffi.a -headers ios/build/headers \
    -library target/aarch64-apple-ios-sim/release/libskyroute_ffi.a -headers ios/build/headers \
    -output ios/build/SkyrouteFFI.xcframework
