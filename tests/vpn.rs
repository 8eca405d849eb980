//! The IPv4 VPN on real nodes in one process, through the packet interface the platforms use
//! (no TUN here): a client, two relays, a gateway whose uplink is played by the test.

use std::net::Ipv4Addr;
use std::time::Duration;

use rand_core::OsRng;
use skyroute::driver::{Options, PacketPort, RunningNode};
use skyroute_proto::vpn::{self, ip, Access, GatewayConfig, Message};
use skyroute_proto::{Event, SecretKey};

const INTERNET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

async fn node(gateway: Option<GatewayConfig>) -> RunningNode {
    let mut o = Options::loopback(SecretKey::generate(&mut OsRng));
    o.gateway = gateway;
    RunningNode::spawn(o).await.unwrap()
}

fn gateway_config(access: Access, pool: Ipv4Addr, prefix_len: u8) -> GatewayConfig {
    GatewayConfig {
        access,
        pool,
        prefix_len,
        rate_limit: None,
        client_to_client: false,
        blocked: Vec::new(),
        mtu: 1400,
        pool6: None,
        blocked6: Vec::new(),
        dns: Vec::new(),
    }
}

async fn links_up(n: &mut RunningNode, count: usize) {
    let mut up = 0;
    while up < count {
        let e = tokio::time::timeout(Duration::from_secs(10), n.events.recv()).await.expect("links up in time");
        if matches!(e, Some(Event::LinkUp { .. })) {
            up += 1;
        }
    }
}

/// UDP over IPv4 with a valid header (the UDP checksum left zero, which IPv4 allows).
fn udp(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&5000u16.to_be_bytes());
    u[2..4].copy_from_slice(&7u16.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    ip::build(src, dst, ip::PROTO_UDP, &u)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_go_through_the_gateway_and_back_and_the_gateway_checks_them() {
    let (mut c, mut r1, mut r2) = (node(None).await, node(None).await, node(None).await);
    let stranger = node(None).await;
    let mut g = node(Some(gateway_config(Access::Keys([c.public_key].into()), Ipv4Addr::new(10, 77, 0, 0), 16))).await;
    // Two disjoint routes from the client to the gateway.
    c.connect(r1.public_key, r1.udp_addr()).unwrap();
    c.connect(r2.public_key, r2.udp_addr()).unwrap();
    r1.connect(g.public_key, g.udp_addr()).unwrap();
    r2.connect(g.public_key, g.udp_addr()).unwrap();
    stranger.connect(g.public_key, g.udp_addr()).unwrap();
    for (a, b) in [(r1.public_key, g.public_key), (r2.public_key, g.public_key)] {
        c.add_topology(a, b).unwrap();
    }
    links_up(&mut c, 2).await;
    links_up(&mut r1, 2).await;
    links_up(&mut r2, 2).await;
    links_up(&mut g, 3).await;

    // The internet: answers every UDP packet to INTERNET by swapping the addresses.
    let mut uplink = g.uplink.take().unwrap();
    let internet = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(p) = uplink.rx.recv().await {
            let h = ip::parse(&p).unwrap();
            seen.push(h.src);
            if h.dst == INTERNET {
                let reply = udp(INTERNET, h.src, &p[h.header_len + 8..]);
                if uplink.tx.send(reply).await.is_err() {
                    break;
                }
            }
        }
        seen
    });

    let (mut app, port) = PacketPort::pair(1024);
    let a = c.tunnel_up(g.public_key, None, port).await.unwrap();
    assert!(a.address.octets()[..2] == [10, 77] && a.gateway == Ipv4Addr::new(10, 77, 0, 1), "{a:?}");
    let me = a.address;
    let mtu = c.status().await.unwrap().tunnel.unwrap().mtu as usize;
    assert_eq!(mtu, 1400, "the tunnel MTU is the gateway's offer");
    assert_eq!(a.mtu as usize, mtu, "tunnel_up answers with the tunnel's MTU");

    // Small (realtime), large (bulk) and too large without DF (fragmented by the client): every
    // payload comes back.
    for (i, size) in [40usize, 1000, 100, mtu - 28, 60].iter().enumerate() {
        let payload: Vec<u8> = (0..*size).map(|j| (i * 31 + j) as u8).collect();
        app.tx.send(udp(me, INTERNET, &payload)).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), app.rx.recv()).await.expect("reply in time").unwrap();
        let h = ip::parse(&back).unwrap();
        assert_eq!((h.src, h.dst), (INTERNET, me));
        assert_eq!(&back[h.header_len + 8..], &payload[..]);
    }
    let big = udp(me, INTERNET, &[7u8; 3000]);
    app.tx.send(big).await.unwrap();
    let mut frags = 0;
    while frags < 3 {
        let back = tokio::time::timeout(Duration::from_secs(5), app.rx.recv()).await.expect("fragments").unwrap();
        assert_eq!(ip::parse(&back).unwrap().dst, me);
        frags += 1;
    }

    // A forged source address sent straight on the gateway channel: dropped and counted at the
    // gateway, never on the uplink.
    let forged = udp(Ipv4Addr::new(10, 77, 200, 200), INTERNET, b"forged");
    c.message(g.public_key, vpn::CHANNEL, Message::Packet(forged).encode()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = g.status().await.unwrap();
        let gw = s.gateway.unwrap();
        if gw.clients[0].dropped_spoofed == 1 {
            assert!(gw.clients[0].bytes_up > 3000 && gw.clients[0].bytes_down > 3000, "{gw:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{gw:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A key not on the allow-list: refused, no address.
    let (_app2, port2) = PacketPort::pair(16);
    let refused = stranger.tunnel_up(g.public_key, None, port2).await;
    assert!(
        matches!(&refused, Err(skyroute::driver::NodeError::GatewayRefused(why)) if why.contains("allow-list")),
        "{refused:?}"
    );
    let s = g.status().await.unwrap().gateway.unwrap();
    assert_eq!((s.refused, s.clients.len()), (1, 1));
    let ts = c.status().await.unwrap().tunnel.unwrap();
    assert_eq!(ts.address.as_deref(), Some(me.to_string().as_str()));
    assert!(ts.realtime_out >= 3 && ts.fragmented == 1, "{ts:?}");

    for n in [c, r1, r2, stranger, g] {
        n.stop().await.unwrap();
    }
    let seen = internet.await.unwrap();
    assert!(seen.iter().all(|s| *s == me), "only the client's own address left the gateway");
}

/// The packet interface for a platform's tunnel fd (Android's VpnService, iOS's utun): the
/// platform's end is played by a datagram socket pair, one packet per datagram, with and
/// without the utun address-family header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_tunnel_fd_carries_packets_both_framings() {
    use skyroute::tun::{pump_fd, Framing};
    use std::os::unix::net::UnixDatagram;

    for framing in [Framing::Plain, Framing::AfHeader] {
        let mut c = node(None).await;
        let mut g = node(Some(gateway_config(Access::Open, Ipv4Addr::new(10, 78, 0, 0), 24))).await;
        c.connect(g.public_key, g.udp_addr()).unwrap();
        links_up(&mut c, 1).await;
        links_up(&mut g, 1).await;
        let mut uplink = g.uplink.take().unwrap();
        let internet = tokio::spawn(async move {
            while let Some(p) = uplink.rx.recv().await {
                let h = ip::parse(&p).unwrap();
                if uplink.tx.send(udp(h.dst, h.src, &p[h.header_len + 8..])).await.is_err() {
                    break;
                }
            }
        });

        let (platform, ours) = UnixDatagram::pair().unwrap();
        let (outer, inner) = PacketPort::pair(64);
        let pump = tokio::spawn(pump_fd(ours.into(), framing, outer));
        let a = c.tunnel_up(g.public_key, Some(1), inner).await.unwrap();
        platform.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head: &[u8] = if framing == Framing::AfHeader { &[0, 0, 0, 2] } else { &[] };
        let platform = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 2048];
            for size in [20usize, 700, 1100] {
                let payload = vec![size as u8; size];
                let packet = [head, &udp(a.address, INTERNET, &payload)].concat();
                platform.send(&packet).unwrap();
                let n = platform.recv(&mut buf).expect("a reply on the fd in time");
                assert_eq!(&buf[..head.len()], head, "{framing:?}");
                let h = ip::parse(&buf[head.len()..n]).unwrap();
                assert_eq!((h.src, h.dst), (INTERNET, a.address));
                assert_eq!(&buf[head.len() + h.header_len + 8..n], &payload[..]);
            }
            // Junk on the fd is dropped and counted; the tunnel goes on.
            platform.send(&[head, &[0x45u8, 0, 0]].concat()).unwrap();
            platform.send(&[head, &udp(a.address, INTERNET, b"still here")].concat()).unwrap();
            let n = platform.recv(&mut buf).expect("the tunnel survives junk");
            assert!(buf[..n].ends_with(b"still here"));
            platform
        })
        .await
        .unwrap();
        let t = c.status().await.unwrap().tunnel.unwrap();
        assert!(t.dropped >= 1 && t.packets_in >= 4, "{t:?}");
        // The tunnel goes down: the port closes, the pump ends and gives the fd back to the
        // OS; a second down finds nothing.
        assert!(c.tunnel_down().await.unwrap());
        tokio::time::timeout(Duration::from_secs(5), pump).await.expect("pump ends").unwrap().unwrap();
        assert!(c.status().await.unwrap().tunnel.is_none());
        assert!(!c.tunnel_down().await.unwrap());
        drop(platform);
        c.stop().await.unwrap();
        g.stop().await.unwrap();
        internet.abort();
    }
}
