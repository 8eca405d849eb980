#!/usr/bin/env bash
# The VPN against WireGuard-in-Rust, same machine, same run (root): one network-namespace
# topology, the same veth underlay for every tunnel, iperf3 TCP for 10 s per measurement,
# 3 repetitions, medians, both directions (client -> server "up", server -> client "down").
#
#   svw-c (client) ── veth 10.203.0.0/24 ── svw-g (gateway, WireGuard peer) ── up0 ── svw-s
#      │                                          │                   10.205.0.0/24  (iperf3)
#      └── veth 10.203.1.0/24 ── svw-r (relay) ── veth 10.203.2.0/24
#
# Every path ends at the same iperf3 server behind the gateway (a gateway refuses its clients
# the gateway host itself), so each forwards once at svw-g.
#
# Measured: direct TCP over the veth (the limit); TCP through boringtun (WireGuard in Rust,
# `cargo install boringtun-cli` into target/boringtun, configured with `wg` from Debian's
# wireguard-tools over its UAPI socket), one boringtun on each end; TCP through skyroute's
# `vpn up` (full tunnel, UDP links) with 0 relays (client linked straight to the gateway) and
# with 1 relay. Plus the ping RTT each tunnel adds (IPv4 and, for skyroute, IPv6), and the
# tunnel processes' CPU seconds (utime + stime from /proc, both ends and the relay) per GB
# carried. Prints the ratios skyroute / boringtun.
#
# The top level of the repository is fixed, so this script lives with run.sh, setup.sh and
# sizes.sh. Usage: bash tests/vpn-vs-wireguard.sh [--secs S] [--reps N] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=10
reps=3
json_out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --secs) secs=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --json) json_out=$2; shift 2 ;;
        *) echo "usage: $0 [--secs S] [--reps N] [--json FILE]" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" -ne 0 ]; then
    echo "SKIPPED: needs root (network namespaces, TUN devices)" >&2
    exit 0
fi

# --- what the comparison needs -----------------------------------------------------------
need=()
command -v wg >/dev/null 2>&1 || need+=(wireguard-tools)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v jq >/dev/null 2>&1 || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bt=$root/target/boringtun/bin/boringtun-cli
if [ ! -x "$bt" ]; then
    echo "installing boringtun-cli into target/boringtun (a few minutes, once)"
    cargo install --quiet --locked boringtun-cli --root "$root/target/boringtun"
fi
cargo build --quiet --release -p skyroute-cli
sky=$root/target/release/skyroute
work=$(mktemp -d /tmp/svw.XXXXXX)

# --- topology ------------------------------------------------------------------------------
C=svw-c; G=svw-g; R=svw-r; S=svw-s
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for n in $C $G $R $S; do ip netns del $n 2>/dev/null || true; done
    rm -f /var/run/wireguard/svwc.sock /var/run/wireguard/svwg.sock
    rm -rf "$work"
}
trap cleanup EXIT
for n in $C $G $R $S; do
    ip netns del $n 2>/dev/null || true
    ip netns add $n
    ip -n $n link set lo up
done
veth() { # ns_a if_a addr_a ns_b if_b addr_b
    ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
    ip -n "$1" addr add "$3" dev "$2"; ip -n "$4" addr add "$6" dev "$5"
    ip -n "$1" link set "$2" up; ip -n "$4" link set "$5" up
}
veth $C c0 10.203.0.1/24 $G g0 10.203.0.2/24
veth $C c1 10.203.1.1/24 $R r0 10.203.1.2/24
veth $R r1 10.203.2.1/24 $G g1 10.203.2.2/24
veth $G up0 10.205.0.2/24 $S s0 10.205.0.1/24
ip -n $G addr add fd00:205::2/64 dev up0 nodad
ip -n $S addr add fd00:205::1/64 dev s0 nodad
ip -n $S route add default via 10.205.0.2
ip -n $S -6 route add default via fd00:205::2
ip netns exec $G sysctl -q net.ipv4.ip_forward=1
ip netns exec $S iperf3 -s -D --logfile "$work/iperf.log"
sleep 0.3

cpu_of() { # summed utime + stime of the pids, in seconds
    local t=0 p
    for p in "$@"; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t $(getconf CLK_TCK)" | awk '{printf "%.3f", $1 / $2}'
}
# One iperf3 run: prints "<Mbit/s> <bytes>"; $1 target, $2 "up"|"down".
iperf() {
    local rev=""
    [ "$2" = down ] && rev="-R"
    ip netns exec $C iperf3 -c "$1" -t "$secs" $rev -J >"$work/iperf.json"
    jq -r '.end.sum_received | "\(.bits_per_second / 1e6) \(.bytes)"' "$work/iperf.json"
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
ping_avg() { # ns target: average RTT in ms of 100 pings 10 ms apart
    ip netns exec $C ping -q -c 100 -i 0.01 -W 2 "$1" | awk -F'[=/ ]+' '/min\/avg/ {print $7}'
}
results=()
# measure <name> <target> <pids...>: reps x both directions; records medians and CPU/GB.
measure() {
    local name=$1 target=$2; shift 2
    local dir
    for dir in up down; do
        local rates=() cpus=() i
        for ((i = 0; i < reps; i++)); do
            local c0 c1 out
            c0=$(cpu_of "$@")
            out=$(iperf "$target" $dir)
            c1=$(cpu_of "$@")
            rates+=("${out% *}")
            # CPU seconds per GB carried (0 for the direct path: no tunnel process).
            cpus+=("$(echo "$c0 $c1 ${out#* }" | awk '{printf "%.3f", ($2 - $1) / ($3 / 1e9)}')")
        done
        local r c
        r=$(printf '%s\n' "${rates[@]}" | median)
        c=$(printf '%s\n' "${cpus[@]}" | median)
        printf '%-26s %-4s %9.0f Mbit/s  %7.2f CPU s/GB   (runs: %s)\n' "$name" "$dir" "$r" "$c" "${rates[*]}"
        results+=("$name $dir $r $c")
    done
}
get() { # name dir field(3 rate, 4 cpu)
    printf '%s\n' "${results[@]}" | awk -v n="$1" -v d="$2" -v f="$3" '$1 == n && $2 == d {print $f}'
}

echo "== $secs s per run, $reps runs, medians; CPU = tunnel processes' user+system seconds per GB"
# --- direct --------------------------------------------------------------------------------
ip -n $C route add 10.205.0.0/24 via 10.203.0.2
measure direct 10.205.0.1
ping_direct=$(ping_avg 10.205.0.1)
ip -n $C route del 10.205.0.0/24

# --- boringtun -----------------------------------------------------------------------------
mkdir -p /var/run/wireguard
umask 077
wg genkey >"$work/c.key"; wg pubkey <"$work/c.key" >"$work/c.pub"
wg genkey >"$work/g.key"; wg pubkey <"$work/g.key" >"$work/g.pub"
WG_SUDO=1 ip netns exec $C "$bt" svwc --foreground --disable-drop-privileges >"$work/bt-c.log" 2>&1 &
btc=$!; pids+=($btc)
WG_SUDO=1 ip netns exec $G "$bt" svwg --foreground --disable-drop-privileges >"$work/bt-g.log" 2>&1 &
btg=$!; pids+=($btg)
for s in svwc svwg; do
    for _ in $(seq 100); do [ -S /var/run/wireguard/$s.sock ] && break; sleep 0.05; done
done
ip netns exec $G wg set svwg private-key "$work/g.key" listen-port 51820 \
    peer "$(cat "$work/c.pub")" allowed-ips 10.204.0.2/32
ip netns exec $C wg set svwc private-key "$work/c.key" \
    peer "$(cat "$work/g.pub")" allowed-ips 10.205.0.0/24,10.204.0.1/32 endpoint 10.203.0.2:51820
ip -n $G addr add 10.204.0.1/24 dev svwg; ip -n $G link set svwg mtu 1420 up
ip -n $C addr add 10.204.0.2/24 dev svwc; ip -n $C link set svwc mtu 1420 up
ip -n $C route add 10.205.0.0/24 dev svwc
ping_avg 10.205.0.1 >/dev/null # handshake
measure boringtun 10.205.0.1 $btc $btg
ping_bt=$(ping_avg 10.205.0.1)
kill $btc $btg; wait $btc $btg 2>/dev/null || true
ip -n $C link del svwc 2>/dev/null || true
ip -n $G link del svwg 2>/dev/null || true

# --- skyroute ------------------------------------------------------------------------------
key_of() { "$sky" keygen --data-dir "$work/$1" | awk '/^public key: / {print $3}'; }
ck=$(key_of client); gk=$(key_of gateway); rk=$(key_of relay)
listen='[listen]
udp = "0.0.0.0:7070"
tcp = "off"
quic = "off"'
daemon() { # ns name config
    printf '%s\n' "$3" >"$work/$2/node.toml"
    rm -f "$work/$2/control.sock"
    ip netns exec "$1" "$sky" node --data-dir "$work/$2" --config "$work/$2/node.toml" 2>"$work/$2/node.log" &
    pids+=($!)
    for _ in $(seq 200); do [ -S "$work/$2/control.sock" ] && break; sleep 0.05; done
    [ -S "$work/$2/control.sock" ] || { cat "$work/$2/node.log"; exit 1; }
}
vpn_up() {
    for _ in $(seq 60); do
        if ip netns exec $C "$sky" vpn up --gateway "$gk" --data-dir "$work/client" >"$work/vpn-up.log" 2>&1; then
            return
        fi
        sleep 0.5
    done
    cat "$work/vpn-up.log" "$work/client/node.log"; exit 1
}
daemon $G gateway "$listen
[gateway]
open = true
uplink = \"up0\"
dns = []"
gpid=${pids[-1]}
daemon $R relay "$listen
[[peers]]
key = \"$gk\"
addr = \"10.203.2.2:7070\""
rpid=${pids[-1]}

for relays in 0 1; do
    if [ $relays = 0 ]; then
        peers="[[peers]]
key = \"$gk\"
addr = \"10.203.0.2:7070\""
    else
        peers="[[peers]]
key = \"$rk\"
addr = \"10.203.1.2:7070\"
[[topology]]
a = \"$rk\"
b = \"$gk\""
    fi
    daemon $C client "$listen
$peers
[session]
routes = 1"
    cpid=${pids[-1]}
    vpn_up
    mtu=$(ip netns exec $C "$sky" vpn status --json --data-dir "$work/client" | jq -r .tunnel.mtu)
    ping_avg 10.205.0.1 >/dev/null
    if [ $relays = 0 ]; then
        measure skyroute-0-relays 10.205.0.1 $cpid $gpid
        ping_sky=$(ping_avg 10.205.0.1)
        ping_sky6=$(ping_avg fd00:205::1)
        ping_direct6=$ping_direct # the veth's RTT does not depend on the family
        mtu0=$mtu
    else
        measure skyroute-1-relay 10.205.0.1 $cpid $rpid $gpid
        ping_sky1=$(ping_avg 10.205.0.1)
        mtu1=$mtu
    fi
    ip netns exec $C "$sky" vpn down --data-dir "$work/client" >/dev/null
    kill "$cpid"; wait "$cpid" 2>/dev/null || true
done

# --- ratios --------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a - b}'; }
echo
echo "tunnel MTU: skyroute $mtu0 (0 relays), $mtu1 (1 relay); boringtun 1420"
echo "ping added: boringtun $(added "$ping_bt" "$ping_direct") ms, skyroute $(added "$ping_sky" "$ping_direct") ms" \
    "(IPv6 $(added "$ping_sky6" "$ping_direct6") ms), skyroute 1 relay $(added "$ping_sky1" "$ping_direct") ms"
for dir in up down; do
    d=$(get direct $dir 3); b=$(get boringtun $dir 3); s0=$(get skyroute-0-relays $dir 3); s1=$(get skyroute-1-relay $dir 3)
    echo "$dir: throughput skyroute/boringtun $(ratio "$s0" "$b") (goal >= 1.5), 1 relay/boringtun $(ratio "$s1" "$b") (goal >= 1.0)," \
        "CPU per byte skyroute/boringtun $(ratio "$(get skyroute-0-relays $dir 4)" "$(get boringtun $dir 4)") (goal <= 1.0);" \
        "of direct: boringtun $(ratio "$b" "$d"), skyroute $(ratio "$s0" "$d")"
done
if [ -n "$json_out" ]; then
    {
        printf '{"secs": %s, "reps": %s, "mtu": {"skyroute_0": %s, "skyroute_1": %s, "boringtun": 1420},' "$secs" "$reps" "$mtu0" "$mtu1"
        printf '"ping_added_ms": {"boringtun": %s, "skyroute_0": %s, "skyroute_0_v6": %s, "skyroute_1": %s}, "runs": [' \
            "$(added "$ping_bt" "$ping_direct")" "$(added "$ping_sky" "$ping_direct")" "$(added "$ping_sky6" "$ping_direct6")" "$(added "$ping_sky1" "$ping_direct")"
        sep=""
        for r in "${results[@]}"; do
            set -- $r
            printf '%s{"path": "%s", "dir": "%s", "mbit_s": %s, "cpu_s_per_gb": %s}' "$sep" "$1" "$2" "$3" "$4"
            sep=", "
        done
        printf ']}\n'
    } >"$json_out"
fi
