//! VPN benchmarks in network namespaces (root only): TCP throughput through the tunnel over
//! one relay hop against TCP over a direct veth in the same run, and the round-trip time the
//! tunnel adds to ping. `cargo bench -p skyroute-cli --bench vpn`; SKYROUTE_BENCH_MIB sets the
//! download size (default 256).
//!
//! ```text
//!   client ── relay ── gateway ── server      (the tunnel: 10.201.9.2)
//!      └────────── direct ─────────┘          (the baseline: 10.202.0.2)
//! ```

#[path = "../tests/support/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netns::{is_root, Net};

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    if !is_root() {
        eprintln!("SKIPPED: the VPN benchmark needs root (network namespaces, TUN)");
        return;
    }
    let mib: u64 = std::env::var("SKYROUTE_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let mut net = Net::new("bench");
    for n in ["client", "relay", "gateway", "server"] {
        net.ns(n);
    }
    net.link("client", "wifi", "10.201.1.1/24", "relay", "c", "10.201.1.2/24");
    net.link("relay", "g", "10.201.3.1/24", "gateway", "r", "10.201.3.2/24");
    net.link("gateway", "up0", "10.201.9.1/24", "server", "eth0", "10.201.9.2/24");
    net.link("client", "direct", "10.202.0.1/24", "server", "direct", "10.202.0.2/24");
    let (client, _ck) = net.identity("client");
    let (relay, rk) = net.identity("relay");
    let (gw, gk) = net.identity("gateway");
    let udp = "[listen]\nudp = \"0.0.0.0:7070\"\ntcp = \"off\"\nquic = \"off\"\n";
    net.daemon("gateway", &gw, &format!("{udp}[gateway]\nopen = true\nuplink = \"up0\"\n"));
    net.daemon("relay", &relay, &format!("{udp}[[peers]]\nkey = \"{gk}\"\naddr = \"10.201.3.2:7070\"\n"));
    net.daemon(
        "client",
        &client,
        &format!(
            "{udp}[[peers]]\nkey = \"{rk}\"\naddr = \"10.201.1.2:7070\"\n[[topology]]\na = \"{rk}\"\nb = \"{gk}\"\n[session]\nroutes = 1\n"
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = net.try_exec(
            "client",
            &[env!("CARGO_BIN_EXE_skyroute"), "vpn", "up", "--gateway", &gk, "--data-dir", client.to_str().unwrap()],
        );
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "vpn up: {out}\n{}", net.log(&client));
        std::thread::sleep(Duration::from_millis(500));
    }

    let ping = |target: &str| -> f64 {
        let out = net.exec("client", &["ping", "-q", "-c", "50", "-i", "0.02", "-W", "2", target]);
        let line = out.lines().find(|l| l.contains("min/avg/max")).unwrap_or_else(|| panic!("{out}"));
        let nums = line.split('=').nth(1).unwrap().trim().split('/').collect::<Vec<_>>();
        nums[1].parse().unwrap()
    };
    let tcp = |target: [u8; 4]| -> f64 {
        let bind: SocketAddr = (target, 8080).into();
        let listener = net.thread("server", move || std::net::TcpListener::bind(bind).unwrap()).join().unwrap();
        let server = std::thread::spawn(move || netns::serve(listener, 1, mib << 20, None, false));
        let (bytes, _, took) = net.thread("client", move || netns::download(bind, false)).join().unwrap().unwrap();
        server.join().unwrap();
        assert_eq!(bytes, mib << 20);
        bytes as f64 * 8.0 / took.as_secs_f64() / 1e6
    };
    // Warm up both paths, then measure each twice, interleaved.
    ping("10.202.0.2");
    ping("10.201.9.2");
    let (mut direct, mut tunnel) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        direct.push(tcp([10, 202, 0, 2]));
        tunnel.push(tcp([10, 201, 9, 2]));
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let (d, t) = (best(&direct), best(&tunnel));
    let (pd, pt) = (ping("10.202.0.2"), ping("10.201.9.2"));
    println!("vpn/tcp direct veth            {d:10.0} Mbit/s  ({mib} MiB, best of 2)");
    println!("vpn/tcp tunnel, 1 relay hop    {t:10.0} Mbit/s");
    println!("vpn/tcp tunnel / direct        {:10.3}", t / d);
    println!("vpn/ping direct avg            {pd:10.3} ms");
    println!("vpn/ping tunnel avg            {pt:10.3} ms");
    println!("vpn/ping added by the tunnel   {:10.3} ms", pt - pd);
}
