#!/usr/bin/env bash
# Generates the Kotlin and Swift bindings from the built library (uniffi-bindgen, a workspace
# binary pinned to the library's uniffi version) into bindings/generated/, which is checked in.
#   bindings/generate.sh           regenerate
#   bindings/generate.sh --check   fail if the checked-in bindings differ (the CI drift check)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p skyroute-ffi -p uniffi-bindgen
lib=target/debug/libskyroute_ffi.so
out=bindings/generated
if [ "${1:-}" = "--check" ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
for lang in kotlin swift; do
    rm -rf "${out:?}/$lang"
    target/debug/uniffi-bindgen generate --library "$lib" --language "$lang" --out-dir "$out/$lang" --no-format >/dev/null
done
if [ "${1:-}" = "--check" ]; then
    if ! diff -r bindings/generated "$out"; then
        echo "bindings/generated is out of date with bindings/src: run bindings/generate.sh" >&2
        exit 1
    fi
    echo "generated bindings: no drift"
fi
