//! Every radio at once, in network namespaces (root only; skips otherwise): a client with two
//! interfaces whose routers also reach each other, so each path could carry the other's
//! traffic (the case where an unbound node's links roamed onto one path and a WiFi cut
//! stalled the session for 5 s):
//!
//! ```text
//!            wifi ── relay1 ──┐
//!   client <           │ x     gateway ── up0 ── server
//!            lte  ── relay2 ──┘
//! ```
//!
//! The client binds a socket to each interface (`[listen] interfaces`) and dials both relays
//! over both: four links, each staying on its interface. Through `vpn up --routes 2`, a 50 MiB
//! download and a 50 packets/s voice flow run while WiFi is cut for 5 s, then LTE: no gap in
//! the download over 200 ms, voice within 150 ms, no reconnect. A cut interface takes its
//! links down within 100 ms (rtnetlink, no timer); a returning one is up again at once.

#[path = "support/netns.rs"]
mod netns;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netns::{is_root, Net};
use skyroute::control::Status;
use skyroute::daemon;

const SERVER: [u8; 4] = [10, 202, 9, 2];
const DOWNLOAD: u64 = 50 << 20;
const RATE: u64 = 2_600_000;
const VOICE_PPS: u64 = 50;

fn status(dir: &Path) -> Status {
    daemon::status(dir).unwrap()
}

/// Links of the node on `iface` and how many of them are up.
fn on(s: &Status, iface: &str) -> (usize, usize) {
    let l: Vec<_> = s.links.iter().filter(|l| l.interface.as_deref() == Some(iface)).collect();
    (l.len(), l.iter().filter(|l| l.state == "up").count())
}

/// The interfaces the live paths of the session to `peer` leave through, sorted.
fn radios(s: &Status, peer: &str) -> Vec<String> {
    let mut r: Vec<String> = s
        .sessions
        .iter()
        .filter(|x| x.peer == peer)
        .flat_map(|x| x.paths.iter())
        .filter(|p| p.state == "live")
        .filter_map(|p| p.interface.clone())
        .collect();
    r.sort();
    r
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// CLOCK_MONOTONIC in ns: one clock for every namespace of the host.
fn mono_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[test]
fn both_radios_carry_the_tunnel_and_a_cut_radio_stalls_nothing() {
    if !is_root() {
        eprintln!("SKIPPED: the every-radio netns test needs root (it creates namespaces and TUN devices)");
        return;
    }
    let mut net = Net::new("radio");
    for n in ["client", "relay1", "relay2", "gateway", "server"] {
        net.ns(n);
    }
    net.link("client", "wifi", "10.202.1.1/24", "relay1", "c", "10.202.1.2/24");
    net.link("client", "lte", "10.202.2.1/24", "relay2", "c", "10.202.2.2/24");
    net.link("relay1", "x", "10.202.5.1/30", "relay2", "x", "10.202.5.2/30");
    net.link("relay1", "g", "10.202.3.1/24", "gateway", "r1", "10.202.3.2/24");
    net.link("relay2", "g", "10.202.4.1/24", "gateway", "r2", "10.202.4.2/24");
    net.link("gateway", "up0", "10.202.9.1/24", "server", "eth0", "10.202.9.2/24");
    // The routers reach each other's client side: either path can carry the other's packets.
    for (ns, other, via) in [("relay1", "10.202.2.0/24", "10.202.5.2"), ("relay2", "10.202.1.0/24", "10.202.5.1")] {
        net.exec(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        net.exec(ns, &["ip", "route", "add", other, "via", via]);
    }
    for ns in ["client", "relay1", "relay2"] {
        net.exec(ns, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
        net.exec(ns, &["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]);
    }
    // The client's default routes, as DHCP leaves them on a phone: WiFi preferred.
    let routes = |net: &Net| {
        net.exec("client", &["ip", "route", "replace", "default", "via", "10.202.1.2", "dev", "wifi", "metric", "100"]);
        net.exec("client", &["ip", "route", "replace", "default", "via", "10.202.2.2", "dev", "lte", "metric", "200"]);
    };
    routes(&net);

    let (client, _) = net.identity("client");
    let (r1, r1k) = net.identity("relay1");
    let (r2, r2k) = net.identity("relay2");
    let (gw, gk) = net.identity("gateway");
    let udp_only = "[listen]\nudp = \"0.0.0.0:7070\"\ntcp = \"off\"\nquic = \"off\"\n";
    net.daemon(
        "gateway",
        &gw,
        &format!("{udp_only}[gateway]\nopen = true\npool = \"10.78.0.0/16\"\nuplink = \"up0\"\n"),
    );
    for (ns, dir, addr) in [("relay1", &r1, "10.202.3.2"), ("relay2", &r2, "10.202.4.2")] {
        net.daemon(ns, dir, &format!("{udp_only}[[peers]]\nkey = \"{gk}\"\naddr = \"{addr}:7070\"\n"));
    }
    net.daemon(
        "client",
        &client,
        &format!(
            "[listen]\nudp = \"0.0.0.0:7070\"\ntcp = \"off\"\nquic = \"off\"\ninterfaces = [\"wifi\", \"lte\"]\n\
             [[peers]]\nkey = \"{r1k}\"\naddr = \"10.202.1.2:7070\"\n\
             [[peers]]\nkey = \"{r2k}\"\naddr = \"10.202.2.2:7070\"\n\
             [[topology]]\na = \"{r1k}\"\nb = \"{gk}\"\n[[topology]]\na = \"{r2k}\"\nb = \"{gk}\"\n\
             [session]\nroutes = 2\n"
        ),
    );
    // A link to each relay over each interface (the crossed ones through the other router).
    wait("four links up, two per interface", Duration::from_secs(30), || {
        let s = status(&client);
        on(&s, "wifi") == (2, 2) && on(&s, "lte") == (2, 2)
    });
    let s = status(&client);
    assert_eq!(s.networks.len(), 2, "{:?}", s.networks);
    assert!(s.links.iter().all(|l| l.interface.is_some()), "no unbound link: {:?}", s.links);

    let (ok, out) = net.try_exec(
        "client",
        &[
            env!("CARGO_BIN_EXE_skyroute"),
            "vpn",
            "up",
            "--gateway",
            &gk,
            "--routes",
            "2",
            "--data-dir",
            client.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(ok, "vpn up: {out}\n{}", net.log(&client));
    wait("the tunnel's session uses both radios", Duration::from_secs(20), || {
        radios(&status(&client), &gk) == ["lte", "wifi"]
    });

    // The download and the voice flow.
    let listener =
        net.thread("server", || std::net::TcpListener::bind(SocketAddr::from((SERVER, 8080))).unwrap()).join().unwrap();
    let server = std::thread::spawn(move || netns::serve(listener, 1, DOWNLOAD, Some(RATE), true));
    let fetch = net.thread("client", || netns::download_timed(SocketAddr::from((SERVER, 8080)), true));
    let done = Arc::new(AtomicBool::new(false));
    let ear = net.thread("server", {
        let done = done.clone();
        move || {
            let s = UdpSocket::bind(SocketAddr::from((SERVER, 9000))).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut delays = Vec::new();
            let mut buf = [0u8; 256];
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = s.recv(&mut buf) {
                    if n >= 16 {
                        let sent = u64::from_be_bytes(buf[8..16].try_into().unwrap());
                        delays.push(Duration::from_nanos(mono_ns().saturating_sub(sent)));
                    }
                }
            }
            delays
        }
    });
    let mouth = net.thread("client", {
        let done = done.clone();
        move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut sent = 0u64;
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) {
                let mut p = [0u8; 160];
                p[..8].copy_from_slice(&sent.to_be_bytes());
                p[8..16].copy_from_slice(&mono_ns().to_be_bytes());
                let _ = s.send_to(&p, SocketAddr::from((SERVER, 9000)));
                sent += 1;
                let due = start + Duration::from_micros(sent * 1_000_000 / VOICE_PPS);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            sent
        }
    });

    let mut downs = Vec::new();
    let mut ups = Vec::new();
    for (veth, other) in [("wifi", "lte"), ("lte", "wifi")] {
        std::thread::sleep(Duration::from_secs(3));
        net.exec("client", &["ip", "link", "set", veth, "down"]);
        downs.push(wait(&format!("{veth}'s links down"), Duration::from_secs(5), || on(&status(&client), veth).1 == 0));
        assert_eq!(on(&status(&client), other).1, 2, "{other}'s links stay up");
        std::thread::sleep(Duration::from_secs(5));
        net.exec("client", &["ip", "link", "set", veth, "up"]);
        routes(&net);
        ups.push(wait(&format!("{veth}'s links back"), Duration::from_secs(10), || on(&status(&client), veth).1 == 2));
        wait("the session back on both radios", Duration::from_secs(10), || {
            radios(&status(&client), &gk) == ["lte", "wifi"]
        });
    }
    let got = fetch.join().unwrap();
    done.store(true, Ordering::Relaxed);
    let sent_voice = mouth.join().unwrap();
    let delays = ear.join().unwrap();
    let sent = server.join().unwrap();
    let (bytes, sha, took, worst_gap) = got.unwrap_or_else(|e| panic!("the download broke: {e}\n{}", net.log(&client)));
    assert_eq!((bytes, &sha), (DOWNLOAD, &sent[0].1), "50 MiB intact");
    let in_time = delays.iter().filter(|d| **d <= Duration::from_millis(150)).count();
    let voice = in_time as f64 / sent_voice.max(1) as f64;
    eprintln!(
        "50 MiB in {took:.1?}, longest gap {worst_gap:?}; voice {in_time}/{sent_voice} within 150 ms ({voice:.4}); \
         links down {downs:?} after the cut, up {ups:?} after the return"
    );
    assert!(took > Duration::from_secs(15), "the download spanned both cuts ({took:?})");
    assert!(worst_gap <= Duration::from_millis(200), "a stall of {worst_gap:?}");
    assert!(voice >= 0.99, "voice within 150 ms: {voice:.4}");
    for d in &downs {
        assert!(*d < Duration::from_millis(100), "a cut interface's links went down after {d:?}");
    }
    let (ok, out) = net.try_exec(
        "client",
        &[env!("CARGO_BIN_EXE_skyroute"), "vpn", "status", "--json", "--data-dir", client.to_str().unwrap()],
    );
    let vs: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(ok);
    assert_eq!(vs["tunnel"]["reconnects"], 0, "one session all along: {vs}");
}
