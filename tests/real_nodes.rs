//! Real nodes in one process: sessions and the channel services over UDP, TCP and QUIC on
//! loopback, through the same driver API the daemon and its control socket use.

use std::time::Duration;

use rand_core::OsRng;
use skyroute::driver::{NodeError, Options, RunningNode};
use skyroute::service::transfer::Source;
use skyroute::transport::Kind;
use skyroute_proto::{Event, SecretKey};

async fn node() -> RunningNode {
    RunningNode::spawn(Options::loopback_all(SecretKey::generate(&mut OsRng))).await.unwrap()
}

async fn link_up(n: &mut RunningNode) {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), n.events.recv()).await.expect("link up in time");
        if matches!(e, Some(Event::LinkUp { .. })) {
            return;
        }
    }
}

/// A - B - C over `kind`; A knows the B - C link from configuration.
async fn line(kind: Kind) -> (RunningNode, RunningNode, RunningNode) {
    let (mut a, mut b, mut c) = (node().await, node().await, node().await);
    a.connect(b.public_key, b.listen.addr(kind).unwrap()).unwrap();
    b.connect(c.public_key, c.listen.addr(kind).unwrap()).unwrap();
    a.add_topology(b.public_key, c.public_key).unwrap();
    link_up(&mut a).await;
    link_up(&mut c).await;
    link_up(&mut b).await;
    (a, b, c)
}

async fn two_hop_transfer(kind: Kind) {
    let (a, b, c) = line(kind).await;
    let ping = a.ping(c.public_key, 3, Duration::from_millis(20)).await.unwrap();
    assert_eq!(ping.received, 3, "{ping:?}");
    let echo = a.echo(c.public_key, b"hello".to_vec()).await.unwrap();
    assert_eq!(echo, b"hello");
    let t = a.transfer(c.public_key, Source::Bytes(4 << 20)).await.unwrap();
    assert!(t.ok && t.bytes == 4 << 20, "{t:?}");
    let got = c.received().await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sha256, t.sha256, "both ends hash the same bytes");
    let s = a.status().await.unwrap();
    assert_eq!(s.links[0].transport, kind.name());
    assert!(s.sessions[0].established && s.sessions[0].paths.iter().any(|p| p.hops.len() == 2), "{s:?}");
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}

#[tokio::test]
async fn session_services_over_two_udp_hops() {
    two_hop_transfer(Kind::Udp).await;
}

#[tokio::test]
async fn session_services_over_two_tcp_hops() {
    two_hop_transfer(Kind::Tcp).await;
}

#[tokio::test]
async fn session_services_over_two_quic_hops() {
    two_hop_transfer(Kind::Quic).await;
}

/// A link moves from UDP to TCP and then to QUIC in the middle of a transfer: the peer is its
/// key, not its address, so the link, the session and the transfer carry on; no link goes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_moves_between_transports_mid_transfer() {
    let (mut a, mut b) = (node().await, node().await);
    a.connect(b.public_key, b.listen.addr(Kind::Udp).unwrap()).unwrap();
    link_up(&mut a).await;
    link_up(&mut b).await;
    let sender = a.handle();
    let to = b.public_key;
    // Transfers back to back until both moves are done.
    let moving = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let still = moving.clone();
    let transfer = tokio::spawn(async move {
        let mut reports = Vec::new();
        while still.load(std::sync::atomic::Ordering::Relaxed) {
            reports.push(sender.transfer(to, Source::Bytes(8 << 20)).await);
        }
        reports
    });
    let mut seen = Vec::new();
    for kind in [Kind::Tcp, Kind::Quic] {
        // Wait until more of the stream went through, then move.
        let start = a.status().await.unwrap().sessions.first().map_or(0, |s| s.stream_bytes_confirmed);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = a.status().await.unwrap();
            if s.sessions.first().is_some_and(|s| s.stream_bytes_confirmed > start + (8 << 20)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the stream stalled before {kind:?}: {s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a.connect(b.public_key, b.listen.addr(kind).unwrap()).unwrap();
        // Both ends follow: A sends on the new transport, B answers where A's packets come from.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (sa, sb) = (a.status().await.unwrap(), b.status().await.unwrap());
            if sa.links[0].transport == kind.name() && sb.links[0].transport == kind.name() {
                seen.push(kind);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the link did not move to {kind:?}:\n{sa:?}\n{sb:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    moving.store(false, std::sync::atomic::Ordering::Relaxed);
    let reports = transfer.await.unwrap();
    assert!(reports.len() >= 3, "{reports:?}");
    for r in reports {
        let t = r.unwrap();
        assert!(t.ok && t.bytes == 8 << 20, "{t:?}");
    }
    assert_eq!(seen, [Kind::Tcp, Kind::Quic]);
    for n in [&mut a, &mut b] {
        while let Ok(e) = n.events.try_recv() {
            assert!(!matches!(e, Event::LinkDown { .. }), "no link went down: {e:?}");
        }
    }
    let s = a.status().await.unwrap();
    assert_eq!(s.links.len(), 1, "one link, whatever the transport");
    assert_eq!(s.sessions[0].path_failures, 0);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// No `[[topology]]`: A - B - C, and A finds C through B's and C's signed link announcements
/// (C's reaches A through B). A's session then runs over the discovered route.
#[tokio::test]
async fn routes_are_discovered_from_link_announcements() {
    let discovering = || async {
        let o = Options { discovery: true, ..Options::loopback_all(SecretKey::generate(&mut OsRng)) };
        RunningNode::spawn(o).await.unwrap()
    };
    let (mut a, mut b, mut c) = (discovering().await, discovering().await, discovering().await);
    a.connect(b.public_key, b.udp_addr()).unwrap();
    b.connect(c.public_key, c.udp_addr()).unwrap();
    link_up(&mut a).await;
    link_up(&mut c).await;
    link_up(&mut b).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = a.status().await.unwrap();
        if s.discovered_nodes >= 3 && s.known_links >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "A learned the B - C link: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ping = a.ping(c.public_key, 3, Duration::from_millis(20)).await.unwrap();
    assert_eq!(ping.received, 3, "{ping:?}");
    let s = a.status().await.unwrap();
    let session = s.sessions.iter().find(|x| x.peer == c.public_key.to_string()).unwrap();
    assert!(session.paths.iter().any(|p| p.hops.len() == 2), "{session:?}");
    // Junk on the discovery channel is counted, nothing else.
    a.message(b.public_key, 5, vec![0, 9, 1, 2, 3]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.status().await.unwrap().counters.contains_key("discovery_malformed") {
        assert!(std::time::Instant::now() < deadline, "counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}

/// The DHT on real nodes: A knows only B. It finds C by C's address (the key hash) alone,
/// gets C's signed record with its transport addresses, dials it directly and pings it; a
/// service lookup finds both nodes offering it. Junk on the DHT channel is counted.
#[tokio::test]
async fn nodes_are_found_by_address_and_service_through_the_dht() {
    use skyroute::driver::{DhtOptions, LookupTarget};
    let dht_node = |services: &[&str]| {
        let dht = DhtOptions {
            services: services.iter().map(|s| s.to_string()).collect(),
            advertise: vec![],
            guards: vec![],
        };
        let o = Options { dht: Some(dht), ..Options::loopback(SecretKey::generate(&mut OsRng)) };
        async move { RunningNode::spawn(o).await.unwrap() }
    };
    let (mut a, b, mut c, mut d) =
        (dht_node(&[]).await, dht_node(&[]).await, dht_node(&["chain-x"]).await, dht_node(&["chain-x"]).await);
    c.connect(b.public_key, b.udp_addr()).unwrap();
    d.connect(b.public_key, b.udp_addr()).unwrap();
    link_up(&mut c).await;
    link_up(&mut d).await;
    a.connect(b.public_key, b.udp_addr()).unwrap();
    link_up(&mut a).await;
    // Records are published shortly after a node's first link: retry until C's is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let found = loop {
        let r = a.lookup(LookupTarget::Address(c.public_key.address()), true).await.unwrap();
        if let Some(x) = r.records.iter().find(|x| x.key == c.public_key.to_string()) {
            break x.clone();
        }
        assert!(std::time::Instant::now() < deadline, "C's record found: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(found.addrs, vec![c.udp_addr().to_string()], "{found:?}");
    // The lookup dialled C: a direct link, then a ping by C's address alone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !a.status().await.unwrap().links.iter().any(|l| l.peer == c.public_key.to_string() && l.state == "up") {
        assert!(std::time::Instant::now() < deadline, "A linked to C");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by_address = a.resolve(&c.public_key.address().to_string()).await.unwrap();
    assert_eq!(by_address, c.public_key);
    let ping = a.ping(c.public_key, 2, Duration::from_millis(20)).await.unwrap();
    assert_eq!(ping.received, 2, "{ping:?}");
    // The service: both C and D.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = a.lookup(LookupTarget::Service("chain-x".into()), false).await.unwrap();
        let keys: Vec<&str> = r.records.iter().map(|x| x.key.as_str()).collect();
        if keys.contains(&c.public_key.to_string().as_str()) && keys.contains(&d.public_key.to_string().as_str()) {
            assert_eq!(r.records.len(), 2, "{r:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "C and D found for the service: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A key nobody published: no records, no error.
    let nobody = SecretKey::generate(&mut OsRng).public_key();
    let r = a.lookup(LookupTarget::Node(nobody), true).await.unwrap();
    assert!(r.records.is_empty(), "{r:?}");
    // Junk on the DHT channel: refused and counted.
    a.message(b.public_key, 6, vec![0xff, 1, 2]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = b.status().await.unwrap();
        if s.counters.get("dht_refused").is_some_and(|n| *n >= 1) && s.dht.as_ref().is_some_and(|d| d.refused >= 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counted: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A node without the DHT says so.
    let plain = node().await;
    let e = plain.lookup(LookupTarget::Node(c.public_key), false).await.unwrap_err();
    assert_eq!(e, NodeError::DhtOff, "{e}");
    for n in [a, b, c, d, plain] {
        n.stop().await.unwrap();
    }
}

/// Guard nodes: D names B its guard. Its record carries the guard and no address; A, which
/// knows the cheaper way A - X - D, still reaches D only through B once it has D's record.
#[tokio::test]
async fn sources_enter_a_guarded_node_through_its_guard() {
    use skyroute::driver::{DhtOptions, LookupTarget};
    let spawn = |guards: Vec<skyroute_proto::PublicKey>| async move {
        let dht = DhtOptions { guards, ..DhtOptions::default() };
        let o = Options { dht: Some(dht), ..Options::loopback(SecretKey::generate(&mut OsRng)) };
        RunningNode::spawn(o).await.unwrap()
    };
    let (mut a, b, x) = (spawn(vec![]).await, spawn(vec![]).await, spawn(vec![]).await);
    let mut d = spawn(vec![b.public_key]).await;
    d.connect(b.public_key, b.udp_addr()).unwrap();
    d.connect(x.public_key, x.udp_addr()).unwrap();
    link_up(&mut d).await;
    link_up(&mut d).await;
    a.connect(b.public_key, b.udp_addr()).unwrap();
    a.connect(x.public_key, x.udp_addr()).unwrap();
    link_up(&mut a).await;
    link_up(&mut a).await;
    a.add_topology(x.public_key, d.public_key).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let rec = loop {
        let r = a.lookup(LookupTarget::Node(d.public_key), false).await.unwrap();
        if let Some(x) = r.records.into_iter().find(|x| x.key == d.public_key.to_string()) {
            break x;
        }
        assert!(std::time::Instant::now() < deadline, "D's record found");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rec.guards, vec![b.public_key.to_string()]);
    assert!(rec.addrs.is_empty(), "a guarded node publishes no address: {rec:?}");
    let ping = a.ping(d.public_key, 2, Duration::from_millis(20)).await.unwrap();
    assert_eq!(ping.received, 2, "{ping:?}");
    let s = a.status().await.unwrap();
    // The ping's session: not the DHT's own (opened before D's record was known, it went
    // directly), nor one D opened to us (its paths list no hops at this end).
    let ours = |x: &&skyroute::control::SessionStatus| x.paths.iter().all(|p| !p.hops.is_empty());
    let session =
        s.sessions.iter().filter(ours).find(|x| x.peer == d.public_key.to_string() && !x.dht && !x.paths.is_empty());
    let session = session.unwrap_or_else(|| panic!("{s:#?}"));
    for p in &session.paths {
        let short = |k: skyroute_proto::PublicKey| k.to_string()[..16].to_string();
        assert_eq!(p.hops, vec![short(b.public_key), short(d.public_key)], "through the guard: {p:?}");
    }
    for n in [a, b, x, d] {
        n.stop().await.unwrap();
    }
}

/// Route discovery toward any gateway: gateways publish themselves in the DHT; A (linked to B)
/// finds both, G two hops away and H three, and picks the nearer.
#[tokio::test]
async fn the_nearest_gateway_is_found_through_the_dht() {
    use skyroute::driver::DhtOptions;
    let spawn = |gateway: bool| async move {
        let gw = skyroute_proto::vpn::GatewayConfig {
            access: skyroute_proto::vpn::Access::Open,
            pool: std::net::Ipv4Addr::new(10, 77, 0, 0),
            prefix_len: 16,
            rate_limit: None,
            client_to_client: false,
            blocked: Vec::new(),
            mtu: 1400,
            pool6: None,
            blocked6: Vec::new(),
            dns: Vec::new(),
        };
        let o = Options {
            dht: Some(DhtOptions::default()),
            gateway: gateway.then_some(gw),
            ..Options::loopback(SecretKey::generate(&mut OsRng))
        };
        RunningNode::spawn(o).await.unwrap()
    };
    let (mut a, b, c) = (spawn(false).await, spawn(false).await, spawn(false).await);
    let (mut g, mut h) = (spawn(true).await, spawn(true).await);
    g.connect(b.public_key, b.udp_addr()).unwrap();
    c.connect(b.public_key, b.udp_addr()).unwrap();
    h.connect(c.public_key, c.udp_addr()).unwrap();
    link_up(&mut g).await;
    link_up(&mut h).await;
    a.connect(b.public_key, b.udp_addr()).unwrap();
    link_up(&mut a).await;
    a.add_topology(b.public_key, g.public_key).unwrap();
    a.add_topology(b.public_key, c.public_key).unwrap();
    a.add_topology(c.public_key, h.public_key).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (mut seen_g, mut seen_h) = (false, false);
    loop {
        let r = a.lookup(skyroute::driver::LookupTarget::Service(skyroute_proto::vpn::GATEWAY_SERVICE.into()), false);
        let r = r.await.unwrap();
        seen_g |= r.records.iter().any(|x| x.key == g.public_key.to_string() && x.roles == ["gateway"]);
        seen_h |= r.records.iter().any(|x| x.key == h.public_key.to_string());
        if seen_g && seen_h {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "both gateways published: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The DHT's own messages may have made a gateway a neighbour of A (contacts are dialled
    // directly): then that one is nearest; otherwise G, two hops away, beats H at three.
    let gateways = [g.public_key, h.public_key];
    let direct = |s: &skyroute::control::Status| -> Vec<skyroute_proto::PublicKey> {
        gateways.into_iter().filter(|k| s.links.iter().any(|l| l.peer == k.to_string() && l.state == "up")).collect()
    };
    let before = direct(&a.status().await.unwrap());
    let nearest = a.nearest_gateway().await.unwrap();
    let after = direct(&a.status().await.unwrap());
    let fits =
        |d: &[skyroute_proto::PublicKey]| if d.is_empty() { nearest == g.public_key } else { d.contains(&nearest) };
    assert!(fits(&before) || fits(&after), "{nearest:?}: direct before {before:?}, after {after:?}");
    // A node with no way to any gateway says so.
    let lonely = spawn(false).await;
    let e = lonely.nearest_gateway().await;
    assert!(matches!(e, Err(NodeError::NoGateway | NodeError::NoRouteToGateway)), "{e:?}");
    for n in [a, b, c, g, h, lonely] {
        n.stop().await.unwrap();
    }
}

/// One JSON-lines request to the escrow.
fn escrow_ask(addr: std::net::SocketAddr, req: serde_json::Value) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// Payments on real nodes: A's session to C runs through B, which charges for what it
/// carries. B claims, A receipts, B settles its receipts at a running escrow where A's
/// account authorised the route's key; `status` shows B's traffic and earnings and A's debt,
/// and the escrow moved exactly that.
#[tokio::test]
async fn a_relay_earns_for_the_traffic_it_carried_and_settles_it() {
    use serde_json::json;
    use skyroute::driver::EscrowOptions;
    use skyroute_proto::accounting::{amount, MIB};

    let (escrow, (src_acct, src_secret), dir) = skyroute_scenarios::funded_escrow("pay", 10_000_000);
    let (relay_acct, relay_secret) = escrow.open_account().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || skyroute_escrow::server::run(escrow, listener));

    let price = 300;
    let source = Options {
        escrow: Some(EscrowOptions { addr, account: src_acct.clone(), secret: Some(src_secret.clone()) }),
        ..Options::loopback(SecretKey::generate(&mut OsRng))
    };
    let mut relay = Options {
        escrow: Some(EscrowOptions { addr, account: relay_acct.clone(), secret: None }),
        ..Options::loopback(SecretKey::generate(&mut OsRng))
    };
    relay.node.route.accounting.price_per_mib = price;
    relay.node.route.accounting.interval = Duration::from_millis(200);
    let mut a = RunningNode::spawn(source).await.unwrap();
    let mut b = RunningNode::spawn(relay).await.unwrap();
    let mut c = node().await;
    a.connect(b.public_key, b.listen.addr(Kind::Udp).unwrap()).unwrap();
    b.connect(c.public_key, c.listen.addr(Kind::Udp).unwrap()).unwrap();
    a.add_topology(b.public_key, c.public_key).unwrap();
    link_up(&mut a).await;
    link_up(&mut c).await;
    link_up(&mut b).await;
    let t = a.transfer(c.public_key, Source::Bytes(4 << 20)).await.unwrap();
    assert!(t.ok, "{t:?}");

    // The session's probes keep a trickle going after the transfer, so earnings keep
    // growing a little; wait until the transfer's share is settled.
    let due = amount(4 * MIB, price);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (sa, sb) = loop {
        let (sa, sb) = (a.status().await.unwrap(), b.status().await.unwrap());
        if sb.accounting.settled_amount >= due && sa.accounting.authorized_keys >= 1 {
            break (sa, sb);
        }
        let (pa, pb) = (&sa.accounting, &sb.accounting);
        assert!(std::time::Instant::now() < deadline, "not settled in time:\n{pa:?}\n{pb:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (pa, pb) = (&sa.accounting, &sb.accounting);
    assert!(pb.carried_bytes >= 4 * MIB, "{pb:?}");
    assert!(pb.paid_bytes <= pb.carried_bytes && pb.paid_bytes >= 4 * MIB, "{pb:?}");
    assert_eq!(pb.earned, amount(pb.paid_bytes, price));
    assert!(pb.settled_amount <= pb.earned, "{pb:?}");
    assert!(pb.settle_refused == 0 && pb.escrow_errors == 0, "{pb:?}");
    assert!(pa.authorized_keys >= 1 && pa.escrow_errors == 0 && pa.claims_refused.is_empty(), "{pa:?}");
    // C ends the route and charges nothing; A charges nothing either.
    assert_eq!(c.status().await.unwrap().accounting.carried_bytes, 0);
    assert_eq!(pa.carried_bytes, 0);
    let table = sb.table();
    assert!(table.contains("earnings") && table.contains("settled"), "{table}");

    // The escrow moved what B settled (rounds may have settled a little more since), from A.
    let balance = |acct: &str, secret: &str| {
        escrow_ask(addr, json!({"cmd": "balance", "account": acct, "secret": secret}))["balance"].as_u64().unwrap()
    };
    let (earned, source_left) = (balance(&relay_acct, &relay_secret), balance(&src_acct, &src_secret));
    let later = b.status().await.unwrap().accounting;
    assert!(earned >= pb.settled_amount && earned <= later.earned, "{earned} {pb:?} {later:?}");
    assert_eq!(source_left + earned, 10_000_000, "coins conserved");
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Networks handed in by the platform on real sockets: a node that gets networks opens a
/// socket on each and dials over each (a link per network, up); the links a multi-homed
/// neighbour made to us stay (only the unbound links we dialled ourselves are replaced), and a
/// network reported down takes its link down at once. Loopback stands in for the radios
/// (SO_BINDTODEVICE "lo"; skipped where the kernel refuses it without CAP_NET_RAW).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_networks_get_a_socket_and_a_link_each() {
    use skyroute::transport::iface::{self, NetKind, Network, Policy};
    let Some(lo) = iface::scan().unwrap().into_iter().find(|i| i.loopback) else { return };
    let net = |id, kind, metered| Network { id, name: lo.name.clone(), kind, metered, up: true, index: lo.index };
    let auto = || {
        let mut o = Options::loopback(SecretKey::generate(&mut OsRng));
        o.interfaces = Policy::Auto;
        o
    };
    let (mut gw, mut c) = (RunningNode::spawn(auto()).await.unwrap(), RunningNode::spawn(auto()).await.unwrap());
    // The neighbour is multi-homed: it dials us over two networks of its own (slots 1 and 2).
    gw.set_networks(vec![net(1, NetKind::Wifi, false), net(2, NetKind::Cellular, true)]).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    if gw.status().await.unwrap().counters.contains_key("bind_errors") {
        eprintln!("SKIPPED: binding to {} needs CAP_NET_RAW here", lo.name);
        return;
    }
    gw.connect(c.public_key, c.udp_addr()).unwrap();
    let mut theirs = Vec::new();
    while theirs.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(10), gw.events.recv()).await.expect("gw's links up");
        if let Some(Event::LinkUp { link, .. }) = e {
            theirs.push(link);
        }
    }
    // We dial it on our unbound socket (loopback, no network handed in yet).
    c.connect(gw.public_key, c.udp_addr().kind().at(gw.listen.udp.unwrap())).unwrap();
    for _ in 0..3 {
        link_up(&mut c).await;
    }
    let up = |s: &skyroute::control::Status, bound: bool| {
        s.links.iter().filter(|l| l.state == "up" && l.interface.is_some() == bound).count()
    };
    assert_eq!(up(&c.status().await.unwrap(), false), 3, "two links gw made, one we made");

    // Our WiFi arrives (slot 1): a socket and a link over it; our unbound link goes; the link
    // gw made from its slot 2 stays up (gw sees none of its own links go down).
    c.set_networks(vec![net(7, NetKind::Wifi, false)]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.status().await.unwrap();
        if up(&s, true) == 1 && up(&s, false) == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "one bound link, gw's other one: {:?}", s.links);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(e) = gw.events.try_recv() {
        if let Event::LinkDown { link, .. } = e {
            assert!(!theirs.contains(&link), "a link gw made was closed by us: {e:?}");
        }
    }

    // Cellular comes (slot 2) and goes: its link is down at once, WiFi's stays.
    c.set_networks(vec![net(7, NetKind::Wifi, false), net(8, NetKind::Cellular, true)]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while up(&c.status().await.unwrap(), true) < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", c.status().await.unwrap().links);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = c.status().await.unwrap();
    assert!(s.networks.iter().any(|n| n.kind == "cellular" && n.metered && n.up && n.slot == 2), "{:?}", s.networks);
    let cut = std::time::Instant::now();
    c.set_networks(vec![net(7, NetKind::Wifi, false), Network { up: false, ..net(8, NetKind::Cellular, true) }])
        .unwrap();
    while up(&c.status().await.unwrap(), true) != 1 {
        assert!(cut.elapsed() < Duration::from_secs(2), "{:?}", c.status().await.unwrap().links);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("the cellular link went down {:?} after the report", cut.elapsed());
    c.stop().await.unwrap();
    gw.stop().await.unwrap();
}

/// TCP and QUIC neighbours are dialled over every network too: a connection from a socket
/// bound to each (TCP), or through an endpoint bound to each (QUIC), a link per network, and a
/// session over them; a network reported down takes its TCP and QUIC links down at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_quic_neighbours_get_a_link_per_network() {
    use skyroute::transport::iface::{self, NetKind, Network, Policy};
    let Some(lo) = iface::scan().unwrap().into_iter().find(|i| i.loopback) else { return };
    let net = |id, kind| Network { id, name: lo.name.clone(), kind, metered: false, up: true, index: lo.index };
    let mut o = Options::loopback_all(SecretKey::generate(&mut OsRng));
    o.interfaces = Policy::Auto;
    let (c, mut t, mut q) = (RunningNode::spawn(o).await.unwrap(), node().await, node().await);
    c.set_networks(vec![net(1, NetKind::Wifi), net(2, NetKind::Cellular)]).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    if c.status().await.unwrap().counters.contains_key("bind_errors") {
        eprintln!("SKIPPED: binding to {} needs CAP_NET_RAW here", lo.name);
        return;
    }
    c.connect(t.public_key, t.listen.addr(Kind::Tcp).unwrap()).unwrap();
    c.connect(q.public_key, q.listen.addr(Kind::Quic).unwrap()).unwrap();
    for _ in 0..2 {
        link_up(&mut t).await;
        link_up(&mut q).await;
    }
    let bound = |s: &skyroute::control::Status, transport: &str, state: &str| {
        s.links.iter().filter(|l| l.transport == transport && l.interface.is_some() && l.state == state).count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.status().await.unwrap();
        if bound(&s, "tcp", "up") == 2 && bound(&s, "quic", "up") == 2 {
            assert!(s.links.iter().all(|l| l.interface.is_some()), "no unbound link: {:?}", s.links);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "two TCP and two QUIC links: {:?}", s.links);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for peer in [t.public_key, q.public_key] {
        let ping = c.ping(peer, 3, Duration::from_millis(20)).await.unwrap();
        assert_eq!(ping.received, 3, "{ping:?}");
    }
    c.set_networks(vec![net(1, NetKind::Wifi), Network { up: false, ..net(2, NetKind::Cellular) }]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let s = c.status().await.unwrap();
        if bound(&s, "tcp", "up") == 1 && bound(&s, "quic", "up") == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "one of each left: {:?}", s.links);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for n in [c, t, q] {
        n.stop().await.unwrap();
    }
}
