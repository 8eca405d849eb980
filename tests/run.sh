#!/usr/bin/env bash
# Runs every test of the project. This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== tools the network-namespace tests need (installed when root and missing) =="
bash tests/setup.sh

echo "== sans-IO rule: the protocol crate has no runtime, sockets or clock =="
if cargo tree -p skyroute-proto -e normal --prefix none | grep -E '^(tokio|mio|socket2|async-std|smol) '; then
    echo "skyroute-proto depends on an I/O runtime" >&2
    exit 1
fi
# (unit tests inside src may read the clock on lines marked "test-only clock")
if grep -rn -E 'tokio::|std::net::|Instant::now\(|SystemTime::now\(|thread::sleep|thread::spawn|OsRng|thread_rng' core/proto/src | grep -v 'test-only clock'; then
    echo "skyroute-proto touches I/O, the clock, threads or a global RNG" >&2
    exit 1
fi

echo "== formatting =="
cargo fmt --all -- --check

echo "== tests (ring and pure-Rust AEAD backends both enabled, cross-checked) =="
cargo test --workspace --all-features 2>&1 | tee -a "$log"

echo "== pure-Rust AEAD backend alone (firmware targets without a C compiler) =="
cargo test -p skyroute-proto --no-default-features --features soft-aead --lib 2>&1 | tee -a "$log"

echo "== benches compile =="
cargo bench -p skyroute-proto -p skyroute --no-run

echo "== the demo (README's main command) runs: real nodes on loopback, no session break =="
demo=$(mktemp)
cargo run --release -q | tee "$demo"
grep -Eq '^session breaks +0$' "$demo" || { echo "the demo reported a session break" >&2; exit 1; }
rm -f "$demo"
cargo run --release -q -- sim eight-hop --json

# One closing line with the totals over every test run above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' "$log"
