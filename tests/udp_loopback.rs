//! The same protocol core on real UDP sockets on loopback, through the tokio driver.

use std::time::Duration;

use rand_core::OsRng;
use skyroute::driver::{NodeError, Options, RunningNode};
use skyroute_cli::impair::{self, Impairment};
use skyroute_proto::{Class, Event, NodeConfig, RouteError, RouteEvent, SecretKey};
use skyroute_sim::scenario::{payload, StreamCheck};

async fn node() -> RunningNode {
    node_with(NodeConfig::default()).await
}

async fn node_with(config: NodeConfig) -> RunningNode {
    RunningNode::spawn(Options { node: config, ..Options::loopback(SecretKey::generate(&mut OsRng)) }).await.unwrap()
}

async fn next_event(n: &mut RunningNode, mut want: impl FnMut(&Event) -> bool) -> Event {
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
    a.connect(b.public_key, b.udp_addr()).unwrap();
    b.connect(c.public_key, c.udp_addr()).unwrap();
    next_event(&mut a, |e| matches!(e, Event::LinkUp { .. })).await;
    next_event(&mut c, |e| matches!(e, Event::LinkUp { .. })).await;
    next_event(&mut b, |e| matches!(e, Event::LinkUp { .. })).await;
    // Give B's second link time to come up too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let route = a.open_route(vec![b.public_key, c.public_key]).await.unwrap();
    next_event(&mut a, |e| matches!(e, Event::Route(RouteEvent::Ready { route: r }) if *r == route)).await;

    transfer(&mut a, &mut b, &mut c, route, payload(7, 2 << 20)).await;
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}

/// Sends `data` from `a` over `route` to `c` (relayed by `b`, if on the route), intact.
async fn transfer(
    a: &mut RunningNode,
    b: &mut RunningNode,
    c: &mut RunningNode,
    route: skyroute_proto::RouteId,
    data: Vec<u8>,
) {
    let mut check = StreamCheck::new(data.clone());
    let mut pos = 0;
    while !check.complete() {
        // Queue what fits, then wait for the sender's Writable (or the receiver's data).
        while pos < data.len() {
            let end = (pos + a.route_mtu).min(data.len());
            match a.send(route, Class::Bulk, data[pos..end].to_vec()).await {
                Ok(()) => pos = end,
                Err(NodeError::Route(RouteError::QueueFull)) => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
        tokio::select! {
            e = c.events.recv() => {
                if let Some(Event::Route(RouteEvent::Data { data, .. })) = e {
                    check.accept(&data);
                }
            }
            e = a.events.recv() => {
                if let Some(e @ Event::Route(RouteEvent::Failed { .. }) | e @ Event::LinkDown { .. }) = e {
                    panic!("sender saw {e:?}");
                }
            }
            _ = b.events.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(20)) => {
                let (sa, sb, sc) = (a.status().await.unwrap(), b.status().await.unwrap(), c.status().await.unwrap());
                panic!("transfer stalled at {} bytes\nA {sa:?}\nB {sb:?}\nC {sc:?}", check.received)
            }
        }
    }
    assert!(check.intact(), "sha256 intact, in order");
}

#[tokio::test]
async fn a_transfer_survives_30_percent_loss_and_a_link_flap_through_the_impairment_proxy() {
    // Real sockets: bound what is in flight per link (the driver does not pace yet).
    let mut config = NodeConfig::default();
    config.forward.max_in_flight = skyroute::config::REAL_MAX_IN_FLIGHT;
    let (mut a, mut b, mut c) =
        (node_with(config.clone()).await, node_with(config.clone()).await, node_with(config).await);
    // A reaches B only through the proxy: 30% loss each way, 2-8 ms delay, some reordering,
    // and the link cut for 150 ms every 500 ms.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = socket.local_addr().unwrap();
    let imp = Impairment {
        loss: 0.3,
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(6),
        reorder: 0.05,
        down_every: Duration::from_millis(500),
        down_for: Duration::from_millis(150),
        seed: 3,
        cut: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = tokio::spawn(impair::run(socket, b.listen.udp.unwrap(), imp, async {
        let _ = stop_rx.await;
    }));
    a.connect(b.public_key, skyroute::transport::Addr::Udp(proxy)).unwrap();
    b.connect(c.public_key, c.udp_addr()).unwrap();
    next_event(&mut a, |e| matches!(e, Event::LinkUp { .. })).await;
    next_event(&mut c, |e| matches!(e, Event::LinkUp { .. })).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let route = loop {
        let r = a.open_route(vec![b.public_key, c.public_key]).await.unwrap();
        let e = next_event(&mut a, |e| matches!(e, Event::Route(RouteEvent::Ready { .. } | RouteEvent::Failed { .. })))
            .await;
        if matches!(e, Event::Route(RouteEvent::Ready { .. })) {
            break r;
        }
    };
    transfer(&mut a, &mut b, &mut c, route, payload(8, 4 << 20)).await;
    let _ = stop_tx.send(());
    let stats = proxy_task.await.unwrap().unwrap();
    assert!(stats.lost > 50 && stats.dropped_down > 0, "the proxy really impaired the link: {stats:?}");
    for n in [a, b, c] {
        n.stop().await.unwrap();
    }
}
