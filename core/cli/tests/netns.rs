//! The VPN end to end in network namespaces with real kernel TCP (root only; skips otherwise):
//!
//! ```text
//!            wifi ── relay1 ──┐
//!   client <                  gateway ── up0 ── server (the internet: a TCP server)
//!            lte  ── relay2 ──┘
//! ```
//!
//! `skyroute vpn up` in the client namespace; ping and a 50 MiB download through the tunnel,
//! over IPv4 and over IPv6 at once (the client's underlay is IPv4 only; the server has both),
//! while the client's wifi, then its lte veth, is down for 5 s; the server sees only the
//! gateway's addresses (NAT44 and NAT66); a name resolves through the gateway's DNS server;
//! a capture on the client's radios while IPv4, IPv6 and DNS go through the tunnel sees nothing
//! but the node's underlay; a key not on the allow-list gets nothing; a forged
//! source is dropped and counted at the gateway; `vpn down` and a stopped gateway leave no
//! routes or nft rules.

#[path = "support/netns.rs"]
mod netns;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use netns::{is_root, Net};
use skyroute::control::{Request, Status};
use skyroute::daemon;
use skyroute_proto::vpn::{ip, Message};

const SERVER: &str = "10.201.9.2";
const GATEWAY_UPLINK: &str = "10.201.9.1";
const SERVER6: &str = "fd99:201:9::2";
const GATEWAY_UPLINK6: &str = "fd99:201:9::1";
const DOWNLOAD: u64 = 50 << 20;
/// The server's pace: the download lasts about 20 s, long enough for both flaps.
const RATE: u64 = 2_600_000;

fn status(dir: &Path) -> Status {
    daemon::status(dir).unwrap()
}

/// Waits until the node in `dir` has `n` links up.
fn links_up(dir: &Path, n: usize, net: &Net) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(dir);
        if s.links.iter().filter(|l| l.state == "up").count() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "links of {}: {:?}\n{}", dir.display(), s.links, net.log(dir));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`dns_server`] on the server namespace's port 53 for `secs` seconds, in a thread.
fn spawn_resolver(net: &Net, name: &'static str, addr: Ipv4Addr, secs: u64) -> std::thread::JoinHandle<u32> {
    let socket = net.thread("server", || std::net::UdpSocket::bind((SERVER, 53)).unwrap()).join().unwrap();
    std::thread::spawn(move || dns_server(socket, name, addr, Instant::now() + Duration::from_secs(secs)))
}

/// A DNS server for one name (UDP, in the calling thread's namespace): `name` has the A
/// record `addr`, every other question gets an empty answer. Serves until it answered the name
/// once, or until `until`.
fn dns_server(socket: std::net::UdpSocket, name: &str, addr: Ipv4Addr, until: Instant) -> u32 {
    let mut wire = Vec::new();
    for label in name.split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut answered = 0;
    let mut buf = [0u8; 512];
    while answered == 0 && Instant::now() < until {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        let q = &buf[..n];
        if n < 12 + wire.len() + 4 {
            continue;
        }
        let question = &q[12..12 + wire.len() + 4];
        let hit = question[..wire.len()].eq_ignore_ascii_case(&wire) && question[wire.len()..] == [0, 1, 0, 1];
        let mut r = vec![q[0], q[1], 0x81, 0x80, 0, 1, 0, u8::from(hit), 0, 0, 0, 0];
        r.extend_from_slice(question);
        if hit {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend_from_slice(&addr.octets());
            answered += 1;
        }
        let _ = socket.send_to(&r, from);
    }
    answered
}

/// Captures every frame on interface `ifname` (of the calling thread's namespace) until
/// `until` (AF_PACKET), and returns those that leak: anything but the node's underlay (UDP to
/// or from port 7070), ARP, and IPv6 link-local housekeeping (neighbour and router discovery,
/// MLD, from link-local or unspecified sources).
fn capture_leaks(ifname: &str, until: Instant) -> (usize, Vec<String>) {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: plain libc calls on a socket this function owns and closes; buffers are valid.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32);
        assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let r =
            libc::bind(fd, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32);
        assert_eq!(r, 0, "bind to {ifname}: {}", std::io::Error::last_os_error());
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let (mut frames, mut leaks) = (0, Vec::new());
        let mut buf = [0u8; 2048];
        while Instant::now() < until {
            let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
            if n < 14 {
                continue;
            }
            frames += 1;
            let f = &buf[..n as usize];
            if let Some(what) = leak(u16::from_be_bytes([f[12], f[13]]), &f[14..]) {
                leaks.push(what);
            }
        }
        libc::close(fd);
        (frames, leaks)
    }
}

/// Why a frame's payload of `ethertype` leaks, or None for the underlay and link housekeeping.
fn leak(ethertype: u16, p: &[u8]) -> Option<String> {
    let port = |l4: &[u8], at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match ethertype {
        0x0806 => None,
        0x0800 if p.len() >= 20 => {
            let l4 = &p[(p[0] & 0x0f) as usize * 4..];
            let underlay = p[9] == 17 && (port(l4, 0) == Some(7070) || port(l4, 2) == Some(7070));
            (!underlay).then(|| {
                format!(
                    "IPv4 proto {} {:?} -> {:?} ports {:?}/{:?}",
                    p[9],
                    &p[12..16],
                    &p[16..20],
                    port(l4, 0),
                    port(l4, 2)
                )
            })
        }
        0x86dd if p.len() >= 40 => {
            let src = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap());
            let local = src.is_unspecified() || (src.segments()[0] & 0xffc0) == 0xfe80;
            let housekeeping = p[6] == 58 && p.get(40).is_some_and(|t| (130..=143).contains(t)) || p[6] == 0;
            (!(local && housekeeping)).then(|| format!("IPv6 next header {} from {src}", p[6]))
        }
        other => Some(format!("ethertype {other:#06x}")),
    }
}

fn skyroute(net: &Net, ns: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec![env!("CARGO_BIN_EXE_skyroute")];
    all.extend_from_slice(args);
    net.try_exec(ns, &all)
}

#[test]
fn vpn_through_two_relays_survives_each_link_going_down() {
    if !is_root() {
        eprintln!("SKIPPED: the network-namespace VPN test needs root (it creates namespaces and TUN devices)");
        return;
    }
    let mut net = Net::new("vpn");
    for n in ["client", "relay1", "relay2", "gateway", "server"] {
        net.ns(n);
    }
    net.link("client", "wifi", "10.201.1.1/24", "relay1", "c", "10.201.1.2/24");
    net.link("client", "lte", "10.201.2.1/24", "relay2", "c", "10.201.2.2/24");
    net.link("relay1", "g", "10.201.3.1/24", "gateway", "r1", "10.201.3.2/24");
    net.link("relay2", "g", "10.201.4.1/24", "gateway", "r2", "10.201.4.2/24");
    net.link("gateway", "up0", &format!("{GATEWAY_UPLINK}/24"), "server", "eth0", &format!("{SERVER}/24"));
    // The internet side speaks IPv6 too (no duplicate address detection: the test does not wait).
    net.exec("gateway", &["ip", "-6", "addr", "add", &format!("{GATEWAY_UPLINK6}/64"), "dev", "up0", "nodad"]);
    net.exec("server", &["ip", "-6", "addr", "add", &format!("{SERVER6}/64"), "dev", "eth0", "nodad"]);

    let (client, ck) = net.identity("client");
    let (stranger, _) = net.identity("stranger");
    let (r1, r1k) = net.identity("relay1");
    let (r2, r2k) = net.identity("relay2");
    let (gw, gk) = net.identity("gateway");
    // The client namespace's own resolv.conf (ip netns exec mounts it over /etc/resolv.conf),
    // pointing nowhere: only the tunnel's DNS can resolve.
    let etc = std::path::PathBuf::from("/etc/netns").join(net.ns_name("client"));
    std::fs::create_dir_all(&etc).unwrap();
    let host_resolv = "nameserver 192.0.2.53\n";
    std::fs::write(etc.join("resolv.conf"), host_resolv).unwrap();
    let udp_only = "[listen]\nudp = \"0.0.0.0:7070\"\ntcp = \"off\"\nquic = \"off\"\n";
    let topo = format!("[[topology]]\na = \"{r1k}\"\nb = \"{gk}\"\n[[topology]]\na = \"{r2k}\"\nb = \"{gk}\"\n");
    net.daemon(
        "gateway",
        &gw,
        &format!(
            "{udp_only}[gateway]\nallow = [\"{ck}\"]\npool = \"10.77.0.0/16\"\nuplink = \"up0\"\ndns = [\"{SERVER}\"]\n"
        ),
    );
    for (ns, dir, addr) in [("relay1", &r1, "10.201.3.2"), ("relay2", &r2, "10.201.4.2")] {
        net.daemon(ns, dir, &format!("{udp_only}[[peers]]\nkey = \"{gk}\"\naddr = \"{addr}:7070\"\n"));
    }
    net.daemon(
        "client",
        &client,
        &format!(
            "{udp_only}[[peers]]\nkey = \"{r1k}\"\naddr = \"10.201.1.2:7070\"\n\
             [[peers]]\nkey = \"{r2k}\"\naddr = \"10.201.2.2:7070\"\n{topo}[session]\nroutes = 2\n"
        ),
    );
    net.daemon(
        "client",
        &stranger,
        &format!(
            "[listen]\nudp = \"0.0.0.0:7170\"\ntcp = \"off\"\nquic = \"off\"\n\
             [[peers]]\nkey = \"{r1k}\"\naddr = \"10.201.1.2:7070\"\n{topo}"
        ),
    );
    links_up(&gw, 2, &net);
    links_up(&client, 2, &net);
    links_up(&stranger, 1, &net);

    // Up: an address from the pool, the TUN, the routes.
    let (ok, out) = skyroute(
        &net,
        "client",
        &["vpn", "up", "--gateway", &gk, "--routes", "2", "--data-dir", client.to_str().unwrap(), "--json"],
    );
    assert!(ok, "vpn up: {out}\n{}\n{}", net.log(&client), net.log(&gw));
    let up: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let me: Ipv4Addr = up["tunnel"]["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(me.octets()[..2], [10, 77], "{up}");
    assert_eq!(up["routes"][0], "0.0.0.0/0", "full tunnel by default: {up}");
    assert_eq!(up["routes"][1], "::/0", "IPv6 too: {up}");
    let me6: std::net::Ipv6Addr = up["tunnel"]["address6"].as_str().unwrap().parse().unwrap();
    assert_eq!(me6.octets()[0], 0xfd, "a ULA from the gateway's pool: {up}");
    // With IPv6 the TUN is never below IPv6's minimum MTU.
    let mtu = up["tunnel"]["mtu"].as_u64().unwrap().max(1280);
    assert!(net.exec("client", &["ip", "link", "show", "skyvpn0"]).contains(&format!("mtu {mtu}")));

    // The client has no route to the server but through the tunnel.
    let (ok, out) = net.try_exec("client", &["ping", "-c", "3", "-W", "5", SERVER]);
    assert!(ok, "ping through the tunnel: {out}");
    let (ok, out) = net.try_exec("client", &["ping", "-6", "-c", "3", "-W", "5", SERVER6]);
    assert!(ok, "IPv6 ping through the tunnel: {out}\n{}", net.log(&gw));

    // DNS: the gateway's resolver (on the server) answers through the tunnel.
    assert_eq!(up["dns"][0], SERVER, "{up}");
    assert!(std::fs::read_to_string(etc.join("resolv.conf")).unwrap().contains(&format!("nameserver {SERVER}")));
    let resolver = spawn_resolver(&net, "www.skyroute.test", Ipv4Addr::new(10, 201, 9, 80), 15);
    let (ok, out) = net.try_exec("client", &["getent", "ahostsv4", "www.skyroute.test"]);
    assert!(ok && out.contains("10.201.9.80"), "the name resolves through the tunnel: {out}");
    assert!(resolver.join().unwrap() >= 1, "the gateway's resolver answered");

    // Nothing but the underlay on the client's radios while the tunnel carries IPv4, IPv6
    // and DNS (each kind is sent during the capture).
    let until = Instant::now() + Duration::from_secs(4);
    let captures: Vec<_> =
        ["wifi", "lte"].into_iter().map(|i| net.thread("client", move || capture_leaks(i, until))).collect();
    std::thread::sleep(Duration::from_millis(300));
    let resolver = spawn_resolver(&net, "leak.skyroute.test", Ipv4Addr::new(10, 201, 9, 81), 3);
    assert!(net.try_exec("client", &["getent", "ahostsv4", "leak.skyroute.test"]).0);
    assert!(net.try_exec("client", &["ping", "-c", "2", "-i", "0.2", "-W", "3", SERVER]).0);
    assert!(net.try_exec("client", &["ping", "-6", "-c", "2", "-i", "0.2", "-W", "3", SERVER6]).0);
    resolver.join().unwrap();
    for (veth, c) in ["wifi", "lte"].into_iter().zip(captures) {
        let (frames, leaks) = c.join().unwrap();
        assert!(
            leaks.is_empty(),
            "{veth}: {} of {frames} frames leaked: {:?}",
            leaks.len(),
            &leaks[..leaks.len().min(5)]
        );
        eprintln!("{veth}: {frames} frames captured while the tunnel carried IPv4, IPv6 and DNS: all underlay");
    }
    // The capture sees a leak when there is one: a ping bound to the radio itself.
    let until = Instant::now() + Duration::from_millis(1500);
    let c = net.thread("client", move || capture_leaks("wifi", until));
    std::thread::sleep(Duration::from_millis(300));
    net.try_exec("client", &["ping", "-c", "1", "-W", "1", "-I", "wifi", "10.201.1.2"]);
    let (_, leaks) = c.join().unwrap();
    assert!(leaks.iter().any(|l| l.starts_with("IPv4 proto 1")), "the probe's ping is seen: {leaks:?}");

    // The tunnel's session runs over both relays.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&client);
        let live = s
            .sessions
            .iter()
            .find(|x| x.peer == gk)
            .map_or(0, |x| x.paths.iter().filter(|p| p.state == "live").count());
        if live == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "two live paths: {:?}", s.sessions);
        std::thread::sleep(Duration::from_millis(100));
    }

    // The download, with each of the client's links down for 5 s in turn.
    let listener = net.thread("server", || std::net::TcpListener::bind((SERVER, 8080)).unwrap()).join().unwrap();
    let server = std::thread::spawn(move || netns::serve(listener, 1, DOWNLOAD, Some(RATE), true));
    let fetch = net.thread("client", || netns::download(SocketAddr::from(([10, 201, 9, 2], 8080)), true));
    let server6_addr: SocketAddr = format!("[{SERVER6}]:8080").parse().unwrap();
    let listener6 = net.thread("server", move || std::net::TcpListener::bind(server6_addr).unwrap()).join().unwrap();
    let server6 = std::thread::spawn(move || netns::serve(listener6, 1, DOWNLOAD, Some(RATE), true));
    let fetch6 = net.thread("client", move || netns::download(server6_addr, true));
    let mut flaps = Vec::new();
    for veth in ["wifi", "lte"] {
        std::thread::sleep(Duration::from_secs(3));
        net.exec("client", &["ip", "link", "set", veth, "down"]);
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(5));
        net.exec("client", &["ip", "link", "set", veth, "up"]);
        flaps.push((veth, t.elapsed()));
        // The link comes back before the other one goes.
        let deadline = Instant::now() + Duration::from_secs(20);
        while status(&client).links.iter().filter(|l| l.state == "up").count() < 2 {
            assert!(Instant::now() < deadline, "{veth}: the link did not come back\n{}", net.log(&client));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let got = fetch.join().unwrap();
    let sent = server.join().unwrap();
    let (bytes, sha, took) = got.unwrap_or_else(|e| panic!("the download broke: {e}\n{}", net.log(&client)));
    assert_eq!(sent.len(), 1);
    let (peer, sent_sha) = &sent[0];
    assert_eq!((bytes, &sha), (DOWNLOAD, sent_sha), "50 MiB intact");
    assert_eq!(peer.ip().to_string(), GATEWAY_UPLINK, "the server sees the gateway's address");
    assert!(took > Duration::from_secs(15), "the download spanned both flaps ({took:?}, {flaps:?})");
    eprintln!("50 MiB in {took:.1?} through the tunnel with {flaps:?} down");
    let got6 = fetch6.join().unwrap();
    let sent6 = server6.join().unwrap();
    let (bytes6, sha6, took6) = got6.unwrap_or_else(|e| panic!("the IPv6 download broke: {e}\n{}", net.log(&client)));
    assert_eq!((bytes6, &sha6), (DOWNLOAD, &sent6[0].1), "50 MiB intact over IPv6");
    assert_eq!(sent6[0].0.ip().to_string(), GATEWAY_UPLINK6, "the server sees the gateway's IPv6 address");
    assert!(took6 > Duration::from_secs(15), "the IPv6 download spanned both flaps too ({took6:?})");
    eprintln!("and 50 MiB over IPv6 in {took6:.1?} at the same time");
    let (ok, out) = skyroute(&net, "client", &["vpn", "status", "--json", "--data-dir", client.to_str().unwrap()]);
    let vs: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(ok && vs["interface"] == "skyvpn0", "{vs}");
    assert_eq!(vs["tunnel"]["reconnects"], 0, "one session all along: {vs}");
    assert!(vs["tunnel"]["bytes_in"].as_u64().unwrap() > 2 * DOWNLOAD, "{vs}");
    assert!(vs["tunnel"]["ipv6_out"].as_u64().unwrap() > 1000, "{vs}");
    let s = status(&client).sessions.into_iter().find(|x| x.peer == gk).unwrap();
    assert!(s.path_failures + s.paths_retired >= 2, "each flap took a path down: {s:?}");

    // A key not on the allow-list: refused, no TUN.
    let (ok, out) = skyroute(
        &net,
        "client",
        &["vpn", "up", "--gateway", &gk, "--tun", "skyvpn1", "--data-dir", stranger.to_str().unwrap()],
    );
    assert!(!ok && out.contains("allow-list"), "{out}");
    assert!(!net.try_exec("client", &["ip", "link", "show", "skyvpn1"]).0, "no TUN for a refused key");

    // A forged source address straight on the gateway channel: dropped and counted.
    let forged = ip::build(Ipv4Addr::new(10, 77, 1, 1), SERVER.parse().unwrap(), ip::PROTO_UDP, &[0; 16]);
    let req = Request::Message { peer: gk.clone(), channel: 4, data: hex::encode(Message::Packet(forged).encode()) };
    assert!(daemon::request(&client, &req, Duration::from_secs(10)).unwrap().ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = status(&gw).gateway.unwrap();
        if g.clients.iter().any(|c| c.key == ck && c.dropped_spoofed >= 1) {
            assert!(g.refused >= 1, "{g:?}");
            let c = g.clients.iter().find(|c| c.key == ck).unwrap();
            assert!(c.bytes_down >= DOWNLOAD, "per-client counters: {c:?}");
            assert_eq!(g.clients.len(), 1, "only the allowed key has an address");
            break;
        }
        assert!(Instant::now() < deadline, "{g:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Down: routes and TUN gone, the underlay untouched.
    let (ok, out) = skyroute(&net, "client", &["vpn", "down", "--data-dir", client.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(!net.try_exec("client", &["ip", "link", "show", "skyvpn0"]).0);
    assert!(!net.exec("client", &["ip", "rule"]).contains("21323"), "{}", net.exec("client", &["ip", "rule"]));
    assert!(!net.try_exec("client", &["ping", "-c", "1", "-W", "1", SERVER]).0, "no tunnel, no route");
    assert!(
        !net.exec("client", &["ip", "-6", "rule"]).contains("21323"),
        "{}",
        net.exec("client", &["ip", "-6", "rule"])
    );
    assert!(!net.try_exec("client", &["ping", "-6", "-c", "1", "-W", "1", SERVER6]).0, "no IPv6 route either");
    assert_eq!(std::fs::read_to_string(etc.join("resolv.conf")).unwrap(), host_resolv, "DNS restored");

    // A split tunnel of one IPv6 network: only it goes into the TUN.
    let prefix6 = "fd99:201:9::/64";
    let (ok, out) = skyroute(
        &net,
        "client",
        &["vpn", "up", "--gateway", &gk, "--prefix", prefix6, "--data-dir", client.to_str().unwrap(), "--json"],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["routes"], serde_json::json!([prefix6]), "{out}");
    assert!(
        net.try_exec("client", &["ping", "-6", "-c", "2", "-i", "0.2", "-W", "5", SERVER6]).0,
        "the IPv6 prefix goes through"
    );
    assert!(!net.try_exec("client", &["ping", "-c", "1", "-W", "1", SERVER]).0, "IPv4 is not in this tunnel");
    assert!(!net.exec("client", &["ip", "-6", "rule"]).contains("suppress_prefixlength"), "no full-tunnel rule");
    let (ok, out) = skyroute(&net, "client", &["vpn", "down", "--data-dir", client.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(!net.exec("client", &["ip", "-6", "rule"]).contains("21323"));
    let _ = std::fs::remove_dir_all(&etc);
    // The gateway's NAT is removed when it stops.
    assert!(net.exec("gateway", &["nft", "list", "tables"]).contains("skyroute_skygw0"));
    assert_eq!(net.stop(&gw).and_then(|s| s.code()), Some(0), "{}", net.log(&gw));
    assert!(!net.exec("gateway", &["nft", "list", "tables"]).contains("skyroute"));
}

/// The kill switch: `vpn up --kill-switch` seals the client but for the tunnel and the node's
/// own underlay; with the gateway gone nothing leaves outside the tunnel and traffic resumes
/// when it is back; after a crash of the client's node the host stays sealed until the next
/// `vpn down`.
#[test]
fn kill_switch_seals_the_client_through_a_gateway_restart_and_a_crash() {
    if !is_root() {
        eprintln!("SKIPPED: the kill-switch test needs root (namespaces, TUN devices, nftables)");
        return;
    }
    const GW_UNDERLAY: &str = "10.202.1.2";
    const SERVER_K: &str = "10.202.9.2";
    let mut net = Net::new("ks");
    for n in ["client", "gateway", "server"] {
        net.ns(n);
    }
    net.link("client", "wifi", "10.202.1.1/24", "gateway", "c", "10.202.1.2/24");
    net.link("gateway", "up0", "10.202.9.1/24", "server", "eth0", "10.202.9.2/24");
    let (client, _ck) = net.identity("client");
    let (gw, gk) = net.identity("gateway");
    let udp_only = "[listen]\nudp = \"0.0.0.0:7070\"\ntcp = \"off\"\nquic = \"off\"\n";
    // No DNS offered: this namespace has no resolv.conf of its own, and the host's must not be
    // touched (the DNS path is the other test's).
    let gw_config = format!("{udp_only}[gateway]\nopen = true\npool = \"10.78.0.0/16\"\nuplink = \"up0\"\ndns = []\n");
    net.daemon("gateway", &gw, &gw_config);
    let client_config = format!("{udp_only}[[peers]]\nkey = \"{gk}\"\naddr = \"{GW_UNDERLAY}:7070\"\n");
    net.daemon("client", &client, &client_config);
    links_up(&client, 1, &net);
    // A probe of what leaks: ICMP bound to the physical interface, outside the tunnel.
    let leaks = |net: &Net| net.try_exec("client", &["ping", "-c", "1", "-W", "1", "-I", "wifi", GW_UNDERLAY]).0;
    assert!(leaks(&net), "without a tunnel the underlay is open");

    let (ok, out) = skyroute(
        &net,
        "client",
        &["vpn", "up", "--gateway", &gk, "--kill-switch", "--data-dir", client.to_str().unwrap(), "--json"],
    );
    assert!(ok, "vpn up: {out}\n{}", net.log(&client));
    let up: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(up["kill_switch"], true, "{up}");
    let (ok, out) = net.try_exec("client", &["ping", "-c", "2", "-W", "5", SERVER_K]);
    assert!(ok, "through the tunnel with the kill switch on: {out}");
    assert!(!leaks(&net), "nothing leaves outside the tunnel");

    // The gateway goes away: the tunnel reconnects, nothing leaks meanwhile, and traffic
    // resumes when it is back.
    net.stop(&gw);
    assert!(!net.try_exec("client", &["ping", "-c", "1", "-W", "2", SERVER_K]).0, "no gateway, no way out");
    assert!(!leaks(&net), "nothing leaks while the tunnel is reconnecting");
    net.daemon("gateway", &gw, &gw_config);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !net.try_exec("client", &["ping", "-c", "1", "-W", "2", SERVER_K]).0 {
        assert!(Instant::now() < deadline, "traffic did not resume\n{}", net.log(&client));
        assert!(!leaks(&net));
    }
    assert!(status(&client).tunnel.is_some_and(|t| t.reconnects >= 1));

    // A crash of the client's node: the TUN and the routes go with it, the seal stays.
    net.kill(&client);
    assert!(!leaks(&net), "sealed after a crash");
    assert!(!net.try_exec("client", &["ping", "-c", "1", "-W", "1", GW_UNDERLAY]).0, "no route around either");
    // The next `vpn down` opens it, even with no tunnel up.
    net.daemon("client", &client, &client_config);
    let (_, out) = skyroute(&net, "client", &["vpn", "down", "--data-dir", client.to_str().unwrap()]);
    assert!(out.contains("no tunnel"), "{out}");
    assert!(leaks(&net), "open again after vpn down: {}", net.exec("client", &["nft", "list", "ruleset"]));
}
