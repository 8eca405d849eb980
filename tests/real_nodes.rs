//! Real nodes in one process: sessions and the channel services over UDP, TCP and QUIC on
//! loopback, through the same driver API the daemon and its control socket use.

use std::time::Duration;

use rand_core::OsRng;
use skyroute::driver::{Options, RunningNode};
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
    let ping = a.ping(c.public_key, 3, Duration::from_millis(20)).await.unwrap().unwrap();
    assert_eq!(ping.received, 3, "{ping:?}");
    let echo = a.echo(c.public_key, b"hello".to_vec()).await.unwrap().unwrap();
    assert_eq!(echo, b"hello");
    let t = a.transfer(c.public_key, Source::Bytes(4 << 20)).await.unwrap().unwrap();
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
