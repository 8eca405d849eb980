#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain on a fresh Debian machine, when run
# as root: nftables and ping (the VPN gateway's NAT, the network-namespace tests), the aarch64
# cross gcc and qemu-user (the firmware example under emulation), JNA (the Kotlin bindings on
# the JVM) and clang (the Android compile check); and the Rust targets for the cross builds
# and checks. Without root nothing is installed and the tests that need it skip.
set -euo pipefail
need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/include/stdio.h ] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
[ -f /usr/share/java/jna.jar ] || need+=(libjna-java)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v unzip >/dev/null 2>&1 || need+=(unzip)
command -v make >/dev/null 2>&1 || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: not root, not installing ${need[*]} (the tests that need them skip)"
    else
        echo "setup: installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
fi
targets=(aarch64-unknown-linux-gnu aarch64-linux-android aarch64-apple-ios)
installed=$(rustup target list --installed 2>/dev/null || true)
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t" >/dev/null 2>&1 || echo "setup: could not add the Rust target $t"
done
