//! Source routes in the deterministic simulator, through the public API.

use std::time::Duration;

use skyroute_proto::{Class, Event, NodeConfig, Reject, RouteError, RouteEvent, RouteId};
use skyroute_sim::scenario::{eight_hop, line_transfer, payload, transfer};
use skyroute_sim::{WireSpec, World};

/// A line of `n` nodes, all links up.
fn line(seed: u64, n: usize, configs: impl Fn(usize) -> NodeConfig, spec: WireSpec) -> World {
    let mut w = World::new(seed);
    for i in 0..n {
        w.add_node(configs(i));
    }
    for i in 0..n - 1 {
        w.add_wire(i, i + 1, spec.clone());
        w.connect(i, i + 1);
    }
    let mut up = 0;
    let limit = w.now() + Duration::from_secs(5);
    w.run_until(limit, |_, _, e| {
        up += matches!(e, Event::LinkUp { .. }) as usize;
        up < 2 * (n - 1)
    });
    assert_eq!(up, 2 * (n - 1), "all links up");
    w
}

fn open(w: &mut World, hops: &[usize]) -> (RouteId, Result<(), RouteError>) {
    let keys: Vec<_> = hops.iter().map(|h| w.key(*h)).collect();
    let route = w.act(0, |n, now| n.open_route(now, None, &keys)).expect("first hop linked");
    let mut outcome = None;
    let limit = w.now() + Duration::from_secs(30);
    w.run_until(limit, |_, node, e| {
        match e {
            Event::Route(RouteEvent::Ready { route: r }) if node == 0 && r == route => outcome = Some(Ok(())),
            Event::Route(RouteEvent::Failed { route: r, error }) if node == 0 && r == route => {
                outcome = Some(Err(error))
            }
            _ => {}
        }
        outcome.is_none()
    });
    (route, outcome.expect("route setup ends with Ready or Failed"))
}

fn settle(w: &mut World, d: Duration) -> Vec<(usize, Event)> {
    let mut all = Vec::new();
    let limit = w.now() + d;
    w.run_until(limit, |_, n, e| {
        all.push((n, e));
        true
    });
    all
}

#[test]
fn eight_hop_delivers_1mib_intact_and_hops_hold_one_entry_each() {
    let r = eight_hop(1, 1 << 20);
    assert!(r.intact, "{r:?}");
    assert_eq!(r.bytes_delivered, 1 << 20);
    assert!(r.link_rekeys >= 8, "each link rotated its keys at least once: {}", r.link_rekeys);

    let mut w = line(3, 9, |_| NodeConfig::default(), WireSpec::default());
    let (route, res) = open(&mut w, &(1..9).collect::<Vec<_>>());
    assert_eq!(res, Ok(()));
    for i in 0..9 {
        assert_eq!(w.node(i).route_count(), 1, "node {i} holds exactly one entry for the route");
    }
    // Both directions: the last hop answers on the same route.
    w.act(0, |n, now| n.send(now, route, skyroute_proto::Class::Bulk, b"ping")).unwrap();
    let evs = settle(&mut w, Duration::from_secs(1));
    let (_, Event::Route(RouteEvent::Data { route: far, data, .. })) =
        evs.iter().find(|(n, e)| *n == 8 && matches!(e, Event::Route(RouteEvent::Data { .. }))).cloned().unwrap()
    else {
        unreachable!()
    };
    assert_eq!(data, b"ping");
    w.act(8, |n, now| n.send(now, far, skyroute_proto::Class::Bulk, b"pong")).unwrap();
    let evs = settle(&mut w, Duration::from_secs(1));
    assert!(evs.contains(&(0, Event::Route(RouteEvent::Data { route, class: Class::Bulk, data: b"pong".to_vec() }))));
}

#[test]
fn same_seed_same_log_different_seed_different_log() {
    let a = eight_hop(42, 64 << 10);
    let b = eight_hop(42, 64 << 10);
    let c = eight_hop(43, 64 << 10);
    assert_eq!(a.event_log_hash, b.event_log_hash);
    assert_ne!(a.event_log_hash, c.event_log_hash);
    assert!(a.intact && c.intact);
    assert!(a.wall_time_ms < a.sim_time_ms, "faster than real time: {a:?}");
}

#[test]
fn unreachable_hop_fails_the_setup_and_tears_down() {
    let mut w = line(4, 4, |_| NodeConfig::default(), WireSpec::default());
    // Node 1 has no link to node 3.
    let (_, res) = open(&mut w, &[1, 3]);
    assert_eq!(res, Err(RouteError::HopUnreachable { hop: 1 }));
    settle(&mut w, Duration::from_millis(200));
    for i in 0..4 {
        assert_eq!(w.node(i).route_count(), 0, "node {i} forgot the failed route");
    }
}

#[test]
fn full_table_refuses() {
    let mut w = line(
        5,
        3,
        |i| {
            let mut c = NodeConfig::default();
            if i == 2 {
                c.route.max_routes = 0;
            }
            c
        },
        WireSpec::default(),
    );
    let (_, res) = open(&mut w, &[1, 2]);
    assert_eq!(res, Err(RouteError::Refused));
    settle(&mut w, Duration::from_millis(200));
    assert_eq!(w.node(1).route_count(), 0);
}

#[test]
fn setup_times_out() {
    let mut w = line(
        6,
        3,
        |_| {
            let mut c = NodeConfig::default();
            c.route.setup_timeout = Duration::from_millis(300);
            c
        },
        WireSpec { latency: Duration::from_millis(100), ..Default::default() },
    );
    let (_, res) = open(&mut w, &[1, 2]);
    assert_eq!(res, Err(RouteError::Timeout { joined: 1, total: 2 }));
}

#[test]
fn close_tears_down_every_hop() {
    let mut w = line(7, 5, |_| NodeConfig::default(), WireSpec::default());
    let (route, res) = open(&mut w, &[1, 2, 3, 4]);
    assert_eq!(res, Ok(()));
    w.act(0, |n, _| n.close_route(route)).unwrap();
    let evs = settle(&mut w, Duration::from_millis(200));
    for i in 0..5 {
        assert_eq!(w.node(i).route_count(), 0, "node {i}");
    }
    assert!(evs.iter().any(|(n, e)| *n == 4 && matches!(e, Event::Route(RouteEvent::Closed { .. }))));
    assert_eq!(w.act(0, |n, now| n.send(now, route, skyroute_proto::Class::Bulk, b"x")), Err(RouteError::UnknownRoute));
}

#[test]
fn a_link_going_down_breaks_the_route_at_the_source() {
    let mut w = line(8, 4, |_| NodeConfig::default(), WireSpec::default());
    let (route, res) = open(&mut w, &[1, 2, 3]);
    assert_eq!(res, Ok(()));
    let t = w.elapsed();
    w.wire_mut(2, 3).unwrap().down.push((t, t + Duration::from_secs(60)));
    let evs = settle(&mut w, Duration::from_secs(8));
    assert!(evs
        .iter()
        .any(|(n, e)| *n == 0 && matches!(e, Event::Route(RouteEvent::Failed { route: r, .. }) if *r == route)));
    for i in 0..3 {
        assert_eq!(w.node(i).route_count(), 0, "node {i}");
    }
}

#[test]
fn reordering_and_duplication_deliver_each_message_once_in_order() {
    let spec = WireSpec { jitter: Duration::from_millis(20), duplicate: 0.2, ..Default::default() };
    let mut w = line(10, 5, |_| NodeConfig::default(), spec);
    let (route, res) = open(&mut w, &[1, 2, 3, 4]);
    assert_eq!(res, Ok(()));
    let data = payload(10, 200_000);
    let t = transfer(&mut w, 0, 4, route, data, Duration::from_secs(30));
    assert!(t.check.intact(), "in order, each byte once");
    let replays: u64 = (0..5).flat_map(|i| w.node(i).links()).map(|l| l.stats.rejected.get(Reject::Replayed)).sum();
    assert!(replays > 0, "duplicated datagrams were filtered by the replay windows");
}

/// Virtual links (the seed's "virtual routes"): A - B - C - D - E. A opens a virtual link over
/// B, C, D and builds 24 routes through it (12 ending at D, 12 going on to E): B and C hold
/// one entry, the carrier, whatever the number of routes inside; data crosses every route
/// intact both ways, also with 10% loss on every wire. Closing the virtual link breaks the
/// routes inside and the carrier goes from B and C.
#[test]
fn a_virtual_link_carries_many_routes_as_one_entry_at_the_hops_between() {
    for (seed, loss) in [(5, 0.0), (6, 0.1)] {
        let spec = WireSpec { loss, ..WireSpec::default() };
        let mut w = line(seed, 5, |_| NodeConfig::default(), spec);
        let (a, b, c, d, e) = (w.key(0), w.key(1), w.key(2), w.key(3), w.key(4));
        let v = w.act(0, |n, now| n.open_virtual_link(now, &[b, c, d])).unwrap();
        let (mut near, mut far) = (false, false);
        let limit = w.now() + Duration::from_secs(30);
        w.run_until(limit, |_, node, ev| {
            match ev {
                Event::LinkUp { link, .. } if node == 0 && link == v => near = true,
                Event::LinkUp { peer, .. } if node == 3 && peer == a => far = true,
                _ => {}
            }
            !(near && far)
        });
        assert!(near && far, "the virtual link is up at both ends (loss {loss})");
        let routes: Vec<RouteId> = (0..24)
            .map(|i| {
                let hops = if i % 2 == 0 { vec![d] } else { vec![d, e] };
                w.act(0, |n, now| n.open_route(now, None, &hops)).unwrap()
            })
            .collect();
        let mut ready = 0;
        let limit = w.now() + Duration::from_secs(60);
        w.run_until(limit, |_, node, ev| {
            match ev {
                Event::Route(RouteEvent::Ready { route }) if node == 0 && routes.contains(&route) => ready += 1,
                Event::Route(RouteEvent::Failed { route, error }) if node == 0 && routes.contains(&route) => {
                    panic!("route {route} failed: {error}")
                }
                _ => {}
            }
            ready < routes.len()
        });
        assert_eq!(ready, routes.len());
        let counts: Vec<usize> = (0..5).map(|i| w.node(i).route_count()).collect();
        assert_eq!(counts, vec![25, 1, 1, 25, 12], "route entries per node (loss {loss})");
        // 40 KB on every route; each far end gets its bytes in order.
        let msg = payload(1000, 7);
        let mut sent = vec![0usize; routes.len()];
        let mut got: std::collections::BTreeMap<(usize, RouteId), usize> = Default::default();
        let mut far_ids = std::collections::BTreeSet::new();
        let limit = w.now() + Duration::from_secs(60);
        loop {
            for (i, r) in routes.iter().enumerate() {
                while sent[i] < 40 && w.act(0, |n, now| n.send(now, *r, skyroute_proto::Class::Bulk, &msg)).is_ok() {
                    sent[i] += 1;
                }
            }
            let evs = settle(&mut w, Duration::from_millis(50));
            for (node, ev) in evs {
                if let Event::Route(RouteEvent::Data { route, data, .. }) = ev {
                    assert_eq!(data, msg);
                    *got.entry((node, route)).or_default() += 1;
                    far_ids.insert((node, route));
                }
            }
            if got.values().sum::<usize>() == 40 * routes.len() || w.now() > limit {
                break;
            }
        }
        assert_eq!(got.len(), routes.len(), "every route delivered (loss {loss})");
        assert!(got.values().all(|n| *n == 40), "{got:?}");
        assert_eq!(got.keys().filter(|(n, _)| *n == 3).count(), 12);
        assert_eq!(got.keys().filter(|(n, _)| *n == 4).count(), 12);
        // The way back: E answers on its route.
        let &(_, back) = far_ids.iter().find(|(n, _)| *n == 4).unwrap();
        w.act(4, |n, now| n.send(now, back, skyroute_proto::Class::Bulk, b"back")).unwrap();
        let evs = settle(&mut w, Duration::from_secs(2));
        assert!(evs
            .iter()
            .any(|(n, ev)| *n == 0 && matches!(ev, Event::Route(RouteEvent::Data { data, .. }) if data == b"back")));
        // Closing it: the routes inside break, the carrier leaves B and C.
        w.act(0, |n, now| n.close_link(now, v));
        let evs = settle(&mut w, Duration::from_secs(3));
        let failed = evs
            .iter()
            .filter(|(n, ev)| {
                *n == 0 && matches!(ev, Event::Route(RouteEvent::Failed { route, .. }) if routes.contains(route))
            })
            .count();
        assert_eq!(failed, routes.len(), "the routes inside fail with their link");
        assert!(evs.iter().any(|(n, ev)| *n == 3 && matches!(ev, Event::LinkDown { peer, .. } if *peer == a)));
        assert_eq!((w.node(1).route_count(), w.node(2).route_count()), (0, 0));
    }
}

/// An asymmetric link: the wire A -> B carries nothing back. Without a return route A's
/// handshake is never answered; once B sends to A over a route B -> C -> A the link comes up
/// and a route over the one-way wire delivers, B's acks and credit going the long way.
#[test]
fn a_one_way_wire_works_with_a_return_route_and_not_without() {
    let (b, a, c) = (0, 1, 2);
    let mut w = World::new(9);
    for _ in 0..3 {
        w.add_node(NodeConfig::default());
    }
    w.add_wire(a, b, WireSpec { one_way: true, ..WireSpec::default() });
    w.add_wire(b, c, WireSpec::default());
    w.add_wire(c, a, WireSpec::default());
    w.connect(b, c);
    w.connect(c, a);
    settle(&mut w, Duration::from_secs(2));
    let (ka, kb, kc) = (w.key(a), w.key(b), w.key(c));
    w.act(a, |n, now| n.connect(now, kb, b));
    let evs = settle(&mut w, Duration::from_secs(3));
    assert!(!evs.iter().any(|(n, e)| *n == a && matches!(e, Event::LinkUp { peer, .. } if *peer == kb)));
    let back = w.act(b, |n, now| n.open_route(now, None, &[kc, ka])).unwrap();
    let evs = settle(&mut w, Duration::from_secs(2));
    assert!(evs
        .iter()
        .any(|(n, e)| *n == b && matches!(e, Event::Route(RouteEvent::Ready { route }) if *route == back)));
    w.act(b, |n, _| n.set_return_route(ka, Some(back)));
    // (B's unanswered attempts so far went onto the one-way wire and were lost.)
    let (lost_before, _) = w.wire_bytes(b, a);
    let evs = settle(&mut w, Duration::from_secs(5));
    assert!(evs.iter().any(|(n, e)| *n == a && matches!(e, Event::LinkUp { peer, .. } if *peer == kb)), "link up");
    let route = w.act(a, |n, now| n.open_route(now, None, &[kb])).unwrap();
    settle(&mut w, Duration::from_secs(2));
    assert!(w.node(a).route_ready(route));
    let data = payload(256 * 1024, 3);
    let t = transfer(&mut w, a, b, route, data, Duration::from_secs(30));
    assert!(t.check.intact(), "256 KiB intact over the one-way wire");
    let (to_a, _) = w.wire_bytes(b, a);
    assert_eq!(to_a, lost_before, "B sent nothing more on the one-way wire");
    assert!(w.wire_bytes(b, c).0 > 0, "B's answers went the long way");
}

/// The `sim scale` table model against real nodes: a small edge / aggregation / backbone
/// network in the simulator builds the model's physical routes, then (fresh) its overlay of
/// virtual links and the routes over it; every node's route table has the size the model
/// counts. Over the virtual links, twice the routes leave the backbone's tables as they were.
#[test]
fn the_scale_model_counts_what_real_nodes_hold() {
    use skyroute_sim::scale::{self, Backbone, Shape};
    let s = Shape { backbone: 3, aggs: 6, edges_per_agg: 2 };
    let bb = Backbone::new(&s);
    let build = |seed: u64| {
        let mut w = World::new(seed);
        for _ in 0..s.nodes() {
            w.add_node(NodeConfig::default());
        }
        let mut wires: Vec<(usize, usize)> = s.backbone_links();
        for g in 0..s.aggs {
            wires.push((s.agg(g), s.bb(s.home(g))));
            for k in 0..s.edges_per_agg {
                wires.push((s.edge(g, k), s.agg(g)));
            }
        }
        for &(a, b) in &wires {
            w.add_wire(a, b, WireSpec::default());
            w.connect(a, b);
        }
        let mut up = 0;
        let limit = w.now() + Duration::from_secs(10);
        w.run_until(limit, |_, _, e| {
            up += matches!(e, Event::LinkUp { .. }) as usize;
            up < 2 * wires.len()
        });
        assert_eq!(up, 2 * wires.len());
        w
    };
    let ready = |w: &mut World, routes: &[(usize, Vec<usize>)]| {
        let mut pending = std::collections::BTreeSet::new();
        for (src, hops) in routes {
            let keys: Vec<_> = hops.iter().map(|h| w.key(*h)).collect();
            pending.insert((*src, w.act(*src, |n, now| n.open_route(now, None, &keys)).unwrap()));
        }
        let limit = w.now() + Duration::from_secs(30);
        w.run_until(limit, |_, node, e| {
            match e {
                Event::Route(RouteEvent::Ready { route }) => {
                    pending.remove(&(node, route));
                }
                Event::Route(RouteEvent::Failed { route, error }) if pending.contains(&(node, route)) => {
                    panic!("route failed: {error}")
                }
                _ => {}
            }
            !pending.is_empty()
        });
        assert!(pending.is_empty(), "every route ready");
    };
    let counts = |w: &World| (0..s.nodes()).map(|i| w.node(i).route_count()).collect::<Vec<_>>();

    let physical = scale::physical_routes(&s, &bb, 4);
    let mut w = build(11);
    ready(&mut w, &physical);
    let without = counts(&w);
    assert_eq!(without, scale::tables(&s, &physical));

    let mut w = build(12);
    let carriers = scale::carriers(&s, &bb);
    let mut links = 0;
    for (src, hops) in &carriers {
        let keys: Vec<_> = hops.iter().map(|h| w.key(*h)).collect();
        w.act(*src, |n, now| n.open_virtual_link(now, &keys)).unwrap();
    }
    let limit = w.now() + Duration::from_secs(30);
    w.run_until(limit, |_, node, e| {
        links += matches!(e, Event::LinkUp { .. } if node >= s.backbone && node < s.backbone + s.aggs) as usize;
        links < 2 * carriers.len()
    });
    assert_eq!(links, 2 * carriers.len(), "every virtual link up at both ends");
    let inner = scale::virtual_routes(&s, 4);
    ready(&mut w, &inner);
    let with = counts(&w);
    let mut all = carriers.clone();
    all.extend(inner);
    assert_eq!(with, scale::tables(&s, &all));
    let more = scale::virtual_routes(&s, 5);
    ready(&mut w, &more);
    let doubled = counts(&w);
    all.extend(more);
    assert_eq!(doubled, scale::tables(&s, &all));
    assert_eq!(doubled[..s.backbone], with[..s.backbone], "the backbone holds carriers only");
    assert!(doubled[s.backbone..].iter().sum::<usize>() > with[s.backbone..].iter().sum::<usize>());
}

/// An idle virtual link stays up: its source keeps the carrier alive past the relays' idle
/// timeout (120 s), and a route built through it after 5 idle minutes works.
#[test]
fn an_idle_virtual_link_outlives_the_relays_idle_timeout() {
    let mut w = line(8, 4, |_| NodeConfig::default(), WireSpec::default());
    let (b, c, d) = (w.key(1), w.key(2), w.key(3));
    let v = w.act(0, |n, now| n.open_virtual_link(now, &[b, c, d])).unwrap();
    let evs = settle(&mut w, Duration::from_secs(2));
    assert!(evs.iter().any(|(n, e)| *n == 0 && matches!(e, Event::LinkUp { link, .. } if *link == v)));
    let evs = settle(&mut w, Duration::from_secs(300));
    assert!(!evs.iter().any(|(_, e)| matches!(e, Event::LinkDown { .. })), "nothing went down");
    assert!(w.node(0).virtual_link_up(v));
    assert_eq!((w.node(1).route_count(), w.node(2).route_count()), (1, 1), "the relays kept the carrier");
    let r = w.act(0, |n, now| n.open_route(now, None, &[d])).unwrap();
    settle(&mut w, Duration::from_secs(2));
    assert!(w.node(0).route_ready(r));
    w.act(0, |n, now| n.send(now, r, skyroute_proto::Class::Bulk, b"still here")).unwrap();
    let evs = settle(&mut w, Duration::from_secs(1));
    assert!(evs
        .iter()
        .any(|(n, e)| *n == 3 && matches!(e, Event::Route(RouteEvent::Data { data, .. }) if data == b"still here")));
}

/// A link with a congestion window (`ForwardConfig::congestion_window`) behind a drop-tail
/// bottleneck (a radio following a recorded cellular trace, its queue 300 packets deep)
/// keeps about twice its bandwidth-delay product in flight: the
/// transfer arrives whole and the queue drops few datagrams at its tail. Without the link's
/// congestion window the sender pushed what its route credit allowed (1 MiB) onto the radio
/// at once, filling the queue and retransmitting into it.
#[test]
fn a_link_behind_a_drop_tail_queue_does_not_flood_it() {
    use skyroute_sim::trace::Trace;
    use std::sync::Arc;
    let data_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let trace = Arc::new(Trace::load(&data_dir.join("Verizon-LTE-short-60s.down")).expect("test trace"));
    let spec = WireSpec {
        latency: Duration::from_millis(30),
        bandwidth: 12_500_000,
        trace: [Some(trace.clone()), Some(trace)],
        queue_packets: 300,
        ..WireSpec::default()
    };
    let mut w = World::new(5);
    let data = payload(3, 4 << 20);
    let mut config = NodeConfig::default();
    config.forward.congestion_window = true;
    let (_, t) = line_transfer(&mut w, 1, &config, &spec, data, 60);
    assert!(t.check.intact(), "received {} of {}", t.check.received, 4 << 20);
    // With the window: 212 of 7,060 datagrams (3%) dropped, 6.2 s; without: 6,522 of 17,475
    // (37%), 10.7 s.
    let s = &w.wire_stats;
    assert!(s.queue_drops * 10 < s.sent, "{} of {} datagrams dropped at the queue's tail", s.queue_drops, s.sent);
}
