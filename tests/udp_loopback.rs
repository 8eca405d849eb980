//! The same protocol core on real UDP sockets on loopback, through the tokio driver.

use std::time::Duration;

use rand_core::OsRng;
use skyroute::sim::scenario::{payload, StreamCheck};
use skyroute::udp::UdpNode;
use skyroute_proto::{Class, Event, NodeConfig, RouteError, RouteEvent, SecretKey};

async fn node() -> UdpNode {
    UdpNode::spawn(SecretKey::generate(&mut OsRng), NodeConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn next_event(n: &mut UdpNode, mut want: impl FnMut(&Event) -> bool) -> Event {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), n.events.recv())
            .await
            .expect("event in time")
            .expect("driver running");
        if want(&e) {
            return e;
        }
    }
}

#[tokio::test]
async fn two_hop_route_carries_2_mib_intact_over_udp() {
    let (mut a, mut b, mut c) = (node().await, node().await, node().await);
    a.connect(b.public_key, b.local_addr).unwrap();
    b.connect(c.public_key, c.local_addr).unwrap();
    next_event(&mut a, |e| matches!(e, Event::LinkUp { .. })).await;
    next_event(&mut c, |e| matches!(e, Event::LinkUp { .. })).await;
    next_event(&mut b, |e| matches!(e, Event::LinkUp { .. })).await;
    // Give B's second link time to come up too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let route = a.open_route(vec![b.public_key, c.public_key]).await.unwrap().unwrap();
    next_event(&mut a, |e| matches!(e, Event::Route(RouteEvent::Ready { route: r }) if *r == route)).await;

    let data = payload(7, 2 << 20);
    let mut check = StreamCheck::new(data.clone());
    let mut pos = 0;
    while !check.complete() {
        // Queue what fits, then wait for the sender's Writable (or the receiver's data).
        while pos < data.len() {
            let end = (pos + a.route_mtu).min(data.len());
            match a.send(route, Class::Bulk, data[pos..end].to_vec()).await.unwrap() {
                Ok(()) => pos = end,
                Err(RouteError::QueueFull) => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
        tokio::select! {
            e = c.events.recv() => {
                if let Some(Event::Route(RouteEvent::Data { data, .. })) = e {
                    check.accept(&data);
                }
            }
            _ = a.events.recv() => {}
            _ = b.events.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(20)) => panic!("transfer stalled at {} bytes", check.received),
        }
    }
    assert!(check.intact(), "2 MiB over two UDP hops, sha256 intact, in order");
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}
