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
//!
//! The same scenario with the client's sockets unbound (`interfaces = []`, as before) is the
//! baseline: `cargo test -p skyroute-cli --test radios -- --ignored --nocapture` prints its figures.

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

/// What one run of the scenario measured.
struct Figures {
    /// The download's outcome: (time, longest gap between reads), or why it broke.
    download: Result<(Duration, Duration), String>,
    /// Voice packets within 150 ms / sent.
    voice: f64,
    /// After each cut, until the cut interface's links were down (bound sockets only).
    downs: Vec<Duration>,
    /// After each return (carrier up, routes back), until its links were up again (bound
    /// sockets only).
    ups: Vec<Duration>,
    /// Bytes received on WiFi and on LTE over 2 s of the download while both were up.
    carried: (u64, u64),
    reconnects: u64,
}

fn live_paths(s: &Status, peer: &str) -> usize {
    s.sessions.iter().filter(|x| x.peer == peer).flat_map(|x| x.paths.iter()).filter(|p| p.state == "live").count()
}

#[test]
fn both_radios_carry_the_tunnel_and_a_cut_radio_stalls_nothing() {
    let Some(f) = scenario(true) else { return };
    let (took, worst_gap) = f.download.unwrap_or_else(|e| panic!("the download broke: {e}"));
    assert!(took > Duration::from_secs(15), "the download spanned both cuts ({took:?})");
    assert!(worst_gap <= Duration::from_millis(200), "a stall of {worst_gap:?}");
    assert!(f.voice >= 0.99, "voice within 150 ms: {:.4}", f.voice);
    for d in &f.downs {
        assert!(*d < Duration::from_millis(100), "a cut interface's links went down after {d:?}");
    }
    // A returning interface: its links handshake at once (a veth round trip is ~0.1 ms; the
    // rest is the kernel's event and our rescan).
    for u in &f.ups {
        assert!(*u < Duration::from_millis(100), "a returning interface's links were up after {u:?}");
    }
    // Both radios carry the download while both are up (an unbound node: one only).
    let (wifi, lte) = f.carried;
    let share = lte as f64 / (wifi + lte).max(1) as f64;
    assert!((0.1..=0.9).contains(&share), "LTE's share of the bytes while both were up: {share:.3} ({wifi} / {lte})");
    assert_eq!(f.reconnects, 0, "one session all along");
}

/// The baseline for the docs: the same run with unbound sockets (the OS routes every link).
#[test]
#[ignore]
fn baseline_with_unbound_sockets() {
    let Some(f) = scenario(false) else { return };
    eprintln!(
        "unbound baseline: download {:?}, voice {:.4}, reconnects {}, wifi / lte bytes {:?}",
        f.download, f.voice, f.reconnects, f.carried
    );
}

/// Runs the scenario with the client's sockets bound to its interfaces or not; `None` when
/// not root.
fn scenario(bound: bool) -> Option<Figures> {
    if !is_root() {
        eprintln!("SKIPPED: the every-radio netns test needs root (it creates namespaces and TUN devices)");
        return None;
    }
    let mut net = Net::new(if bound { "radio" } else { "radub" });
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
    // The relays are on the internet (an address of their own, not on the phone's subnets),
    // reached through whichever radio the phone sends on.
    for (ns, me, other, other_public, via) in [
        ("relay1", "203.0.113.1/32", "10.202.2.0/24", "203.0.113.2/32", "10.202.5.2"),
        ("relay2", "203.0.113.2/32", "10.202.1.0/24", "203.0.113.1/32", "10.202.5.1"),
    ] {
        net.exec(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        net.exec(ns, &["ip", "addr", "add", me, "dev", "lo"]);
        net.exec(ns, &["ip", "route", "add", other, "via", via]);
        net.exec(ns, &["ip", "route", "add", other_public, "via", via]);
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
            "[listen]\nudp = \"0.0.0.0:7070\"\ntcp = \"off\"\nquic = \"off\"\ninterfaces = {}\n\
             [[peers]]\nkey = \"{r1k}\"\naddr = \"203.0.113.1:7070\"\n\
             [[peers]]\nkey = \"{r2k}\"\naddr = \"203.0.113.2:7070\"\n\
             [[topology]]\na = \"{r1k}\"\nb = \"{gk}\"\n[[topology]]\na = \"{r2k}\"\nb = \"{gk}\"\n\
             [session]\nroutes = 2\n",
            if bound { "[\"wifi\", \"lte\"]" } else { "[]" }
        ),
    );
    // A link to each relay over each interface (the crossed ones through the other router).
    if bound {
        wait("four links up, two per interface", Duration::from_secs(30), || {
            let s = status(&client);
            on(&s, "wifi") == (2, 2) && on(&s, "lte") == (2, 2)
        });
        let s = status(&client);
        assert_eq!(s.networks.len(), 2, "{:?}", s.networks);
        assert!(s.links.iter().all(|l| l.interface.is_some()), "no unbound link: {:?}", s.links);
    } else {
        wait("two links up", Duration::from_secs(30), || {
            status(&client).links.iter().filter(|l| l.state == "up").count() == 2
        });
    }

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
    let both = |client: &Path| {
        let s = status(client);
        if bound {
            radios(&s, &gk) == ["lte", "wifi"]
        } else {
            live_paths(&s, &gk) == 2
        }
    };
    wait("the tunnel's session uses both radios", Duration::from_secs(20), || both(&client));

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

    // Bytes each radio carried while both were up (from 1 s into the download until the
    // first cut): an unbound node sends everything out of the default network.
    let rx = |net: &Net, dev: &str| -> u64 {
        let path = format!("/sys/class/net/{dev}/statistics/rx_bytes");
        net.exec("client", &["cat", &path]).trim().parse().unwrap()
    };
    std::thread::sleep(Duration::from_secs(1));
    let (w0, l0) = (rx(&net, "wifi"), rx(&net, "lte"));
    std::thread::sleep(Duration::from_secs(2));
    let (w1, l1) = (rx(&net, "wifi"), rx(&net, "lte"));
    let carried = (w1 - w0, l1 - l0);
    let mut downs = Vec::new();
    let mut ups = Vec::new();
    for (i, (veth, other)) in [("wifi", "lte"), ("lte", "wifi")].into_iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(3));
        }
        net.exec("client", &["ip", "link", "set", veth, "down"]);
        if bound {
            downs.push(wait(&format!("{veth}'s links down"), Duration::from_secs(5), || {
                on(&status(&client), veth).1 == 0
            }));
            assert_eq!(on(&status(&client), other).1, 2, "{other}'s links stay up");
        }
        std::thread::sleep(Duration::from_secs(5));
        net.exec("client", &["ip", "link", "set", veth, "up"]);
        // The kernel reports the carrier up to a second later (linkwatch); a phone's network
        // comes back when its DHCP does. From then on, the links must be up at once.
        wait(&format!("{veth} running"), Duration::from_secs(5), || {
            net.exec("client", &["ip", "-o", "link", "show", veth]).contains("LOWER_UP")
        });
        routes(&net);
        if bound {
            ups.push(wait(&format!("{veth}'s links back"), Duration::from_secs(10), || {
                on(&status(&client), veth).1 == 2
            }));
        }
        wait("the session back on two paths", Duration::from_secs(20), || both(&client));
    }
    let got = fetch.join().unwrap();
    done.store(true, Ordering::Relaxed);
    let sent_voice = mouth.join().unwrap();
    let delays = ear.join().unwrap();
    let sent = server.join().unwrap();
    let download = match got {
        Ok((bytes, sha, took, gap)) if bytes == DOWNLOAD && sent.first().is_some_and(|s| s.1 == sha) => Ok((took, gap)),
        Ok((bytes, ..)) => Err(format!("{bytes} bytes, or not intact")),
        Err(e) => Err(e.to_string()),
    };
    let in_time = delays.iter().filter(|d| **d <= Duration::from_millis(150)).count();
    let voice = in_time as f64 / sent_voice.max(1) as f64;
    eprintln!(
        "{}: download {download:?} (time, longest gap); voice {in_time}/{sent_voice} within 150 ms ({voice:.4}); \
         links down {downs:?} after the cut, up {ups:?} after the return; \
         bytes in over wifi / lte while both up: {carried:?}",
        if bound { "bound to wifi and lte" } else { "unbound" }
    );
    let (ok, out) = net.try_exec(
        "client",
        &[env!("CARGO_BIN_EXE_skyroute"), "vpn", "status", "--json", "--data-dir", client.to_str().unwrap()],
    );
    let vs: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(ok);
    let reconnects = vs["tunnel"]["reconnects"].as_u64().unwrap_or(u64::MAX);
    Some(Figures { download, voice, downs, ups, carried, reconnects })
}
