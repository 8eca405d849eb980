//! Store-and-forward through the public API on the simulator: the seed's three walkthroughs,
//! 8 hops at 50% loss, backpressure, QoS, and random impairments.

use std::time::Duration;

use skyroute_proto::{Class, Dir, Event, FlowStats, NodeConfig, Reject, RouteEvent, RouteId};
use skyroute_sim::scenario::{line, lossy_spec, open_route, payload, qos, transfer, BulkSender, StreamCheck};
use skyroute_sim::{WireSpec, World};

const KB: u64 = 1024;

/// The bulk forward flow of the (only) route at `node`.
fn fwd(w: &World, node: usize) -> FlowStats {
    let n = w.node(node);
    let r = n.route_ids()[0];
    n.flow_stats(r, Dir::Fwd, Class::Bulk).unwrap()
}

/// A -> B -> C on default links, route ready.
fn abc(seed: u64, config: &NodeConfig, spec: &WireSpec) -> (World, RouteId) {
    let mut w = World::new(seed);
    let nodes = line(&mut w, 3, config, spec, Duration::from_secs(10)).unwrap();
    let r = open_route(&mut w, nodes[0], &nodes[1..], Duration::from_secs(10)).unwrap();
    (w, r)
}

/// Message bytes on the route for `app` bytes of application data (each message adds its
/// envelope).
fn wire_bytes(w: &World, app: u64) -> u64 {
    let mtu = w.node(0).route_mtu() as u64;
    app + app.div_ceil(mtu) * skyroute_proto::route::ROUTE_MSG_OVERHEAD as u64
}

#[track_caller]
/// Runs until `done` holds (checked after every event) or `limit` passes; returns the time.
/// Every event is kept in `seen`.
fn until(
    w: &mut World,
    seen: &mut Vec<(usize, Event)>,
    limit: Duration,
    mut done: impl FnMut(&World) -> bool,
) -> Duration {
    let deadline = w.now() + limit;
    let mut hit = done(w);
    if !hit {
        w.run_until(deadline, |w, n, e| {
            seen.push((n, e));
            hit = done(w);
            !hit
        });
    }
    assert!(hit, "condition not reached within {limit:?}");
    w.elapsed()
}

/// Feeds the application data that arrived at `node` (in `seen`, then drained) to `check`.
fn take_data(seen: &mut Vec<(usize, Event)>, node: usize, check: &mut StreamCheck) {
    for (n, e) in seen.drain(..) {
        if let (true, Event::Route(RouteEvent::Data { data, .. })) = (n == node, e) {
            check.accept(&data);
        }
    }
}

#[test]
fn seed_normal_operation() {
    // B has a 1024 KB buffer; A sends 512 KB; B acks; B forwards; C acks; C confirms to A.
    let (mut w, route) = abc(1, &NodeConfig::default(), &WireSpec::default());
    assert_eq!(fwd(&w, 1).capacity, 1024 * KB as usize);
    let data = payload(1, 512 * KB as usize);
    let total = wire_bytes(&w, data.len() as u64);
    let mut tx = BulkSender::new(data.clone(), Class::Bulk);
    tx.pump(&mut w, 0, route);
    assert!(tx.done(), "512 KB fit in A's buffer");
    let mut check = StreamCheck::new(data);
    let mut seen = Vec::new();
    let a_sent = until(&mut w, &mut seen, Duration::from_secs(5), |w| fwd(w, 0).sent_bytes == total);
    let a_acked =
        until(&mut w, &mut seen, Duration::from_secs(5), |w| fwd(w, 0).acked_bytes == total && fwd(w, 0).buffered == 0);
    let b_sent = until(&mut w, &mut seen, Duration::from_secs(5), |w| fwd(w, 1).sent_bytes == total);
    let c_acked =
        until(&mut w, &mut seen, Duration::from_secs(5), |w| fwd(w, 1).acked_bytes == total && fwd(w, 1).buffered == 0);
    let limit = w.now() + Duration::from_secs(2);
    w.run_until(limit, |_, node, ev| {
        seen.push((node, ev));
        true
    });
    let delivered = seen.iter().rev().find_map(|(n, e)| match e {
        Event::Route(RouteEvent::Delivered { bytes, class: Class::Bulk, .. }) if *n == 0 => Some(*bytes),
        _ => None,
    });
    take_data(&mut seen, 2, &mut check);
    // The seed's order: A's send completes before B's acks let A drop its copy; B forwards
    // and C acks; and C's confirmation reaches A last.
    assert!(
        a_sent <= a_acked && a_sent <= b_sent && b_sent <= c_acked,
        "{a_sent:?} {a_acked:?} {b_sent:?} {c_acked:?}"
    );
    assert_eq!(delivered, Some(512 * KB), "C confirms to A that 512 KB were delivered");
    assert!(check.intact(), "{} bytes, in order {}", check.received, check.in_order);
    // B's buffer is free again and A knows it (B announces in steps of a quarter buffer).
    assert!(fwd(&w, 0).credit >= 1024 * KB * 3 / 4, "{:?}", fwd(&w, 0));
    assert_eq!(fwd(&w, 1).buffered, 0);
}

#[track_caller]
/// Runs while the application at node 0 keeps its route buffer full (refilling on Writable),
/// until `done` holds; other events go to `seen`.
fn run_pumping(
    w: &mut World,
    tx: &mut BulkSender,
    route: RouteId,
    seen: &mut Vec<(usize, Event)>,
    limit: Duration,
    mut done: impl FnMut(&World) -> bool,
) {
    let deadline = w.now() + limit;
    let mut hit = done(w);
    if !hit {
        w.run_until(deadline, |w, n, e| {
            match e {
                Event::Route(RouteEvent::Writable { .. }) if n == 0 => {
                    tx.pump(w, 0, route);
                }
                e => seen.push((n, e)),
            }
            hit = done(w);
            !hit
        });
    }
    assert!(hit, "condition not reached within {limit:?}");
}

#[test]
fn seed_congestion_backpressure_stops_a_and_credit_restarts_it() {
    // B -> C is slow, so B's 1024 KB buffer fills: A sends 512 + 256 + 256 KB and stops.
    let mut w = World::new(2);
    let nodes = line(&mut w, 3, &NodeConfig::default(), &WireSpec::default(), Duration::from_secs(10)).unwrap();
    w.wire_mut(1, 2).unwrap().bandwidth = 125_000;
    let route = open_route(&mut w, nodes[0], &nodes[1..], Duration::from_secs(10)).unwrap();
    let data = payload(2, 3 * 1024 * KB as usize);
    let mut tx = BulkSender::new(data.clone(), Class::Bulk);
    tx.pump(&mut w, 0, route);
    let cap = fwd(&w, 1).capacity as u64;
    let msg = w.node(0).route_mtu() as u64 + 64;
    let mut seen = Vec::new();
    // A stops once B's buffer is full: A's credit is used up, B holds (almost) its capacity.
    run_pumping(&mut w, &mut tx, route, &mut seen, Duration::from_secs(20), |w| {
        let (a, b) = (fwd(w, 0), fwd(w, 1));
        4 * b.buffered as u64 >= 3 * cap && a.credit < msg
    });
    let stalled = fwd(&w, 0).sent_bytes;
    assert!(stalled <= fwd(&w, 1).announced_limit, "A never sends past the credit B granted");
    assert!(fwd(&w, 0).buffered > 0, "A has data waiting: it stopped for credit, not for lack of data");
    // C acks what B forwarded: B's freed space comes back to A as credit, and only then A sends.
    let b_acked = fwd(&w, 1).acked_bytes;
    run_pumping(&mut w, &mut tx, route, &mut seen, Duration::from_secs(20), |w| {
        fwd(w, 1).acked_bytes >= b_acked + 256 * KB
    });
    run_pumping(&mut w, &mut tx, route, &mut seen, Duration::from_secs(20), |w| fwd(w, 0).sent_bytes > stalled);
    assert!(fwd(&w, 0).send_limit > stalled, "new credit arrived before A sent more");
    // Everything arrives; B's buffer never exceeded its size; nothing was dropped.
    let mut check = StreamCheck::new(data);
    take_data(&mut seen, 2, &mut check);
    let all = wire_bytes(&w, 3 * 1024 * KB);
    run_pumping(&mut w, &mut tx, route, &mut seen, Duration::from_secs(120), |w| fwd(w, 1).acked_bytes >= all);
    let settle = w.now() + Duration::from_millis(500);
    w.run_until(settle, |_, n, e| {
        seen.push((n, e));
        true
    });
    take_data(&mut seen, 2, &mut check);
    assert!(check.intact(), "{} bytes, in order {}", check.received, check.in_order);
    assert!(fwd(&w, 1).max_buffered as u64 <= cap);
    for i in 0..3 {
        let rejected: u64 = w
            .node(i)
            .links()
            .iter()
            .map(|l| l.stats.rejected.get(Reject::OverCredit) + l.stats.rejected.get(Reject::QueueFull))
            .sum();
        assert_eq!(rejected, 0, "nothing dropped at node {i}");
    }
}

#[test]
fn seed_packet_loss_is_repaired_by_the_hop() {
    // A sends 512 KB (all lost on A -> B) then 256 KB; B acks the 256 KB; A infers the loss
    // of the 512 KB and sends it again; B acks; the stream continues to C, in order.
    let mut config = NodeConfig::default();
    // Loss is found from B's acks of later datagrams, as in the seed, not from a timer.
    config.forward.min_rto = Duration::from_secs(3);
    config.forward.idle_probes = 0;
    let (mut w, route) = abc(3, &config, &WireSpec::default());
    let data = payload(3, 768 * KB as usize);
    let first = wire_bytes(&w, 512 * KB);
    let mut tx = BulkSender::new(data.clone(), Class::Bulk);
    // Drop everything A sends to B while the first 512 KB go out.
    let t = w.elapsed();
    let send_time = Duration::from_secs_f64(first as f64 * 1440.0 / 1408.0 / 1_250_000.0);
    w.wire_mut(0, 1).unwrap().down.push((t, t + send_time));
    tx.pump(&mut w, 0, route);
    let mut seen = Vec::new();
    let b_acked = until(&mut w, &mut seen, Duration::from_secs(5), |w| fwd(w, 0).acked_bytes > 0);
    let resent = until(&mut w, &mut seen, Duration::from_secs(5), |w| fwd(w, 0).retransmitted_bytes > 0);
    assert!(b_acked <= resent, "B acked the later data before A resent");
    let mut check = StreamCheck::new(data);
    take_data(&mut seen, 2, &mut check);
    let limit = w.now() + Duration::from_secs(10);
    w.run_until(limit, |_, node, ev| {
        if let (2, Event::Route(RouteEvent::Data { data, .. })) = (node, ev) {
            check.accept(&data);
        }
        !check.complete()
    });
    assert!(check.intact(), "C got all 768 KB in order");
    let resent = fwd(&w, 0).retransmitted_bytes;
    assert!(
        resent >= first - 16 * KB && resent <= first + 64 * KB,
        "A resent the lost 512 KB ({resent} bytes), not more"
    );
}

#[test]
fn eight_hops_at_half_loss_deliver_10_mib_intact_in_order() {
    let mut config = NodeConfig::default();
    config.route.setup_timeout = Duration::from_secs(60);
    let mut w = World::new(4);
    let nodes = line(&mut w, 9, &config, &lossy_spec(0.5), Duration::from_secs(300)).unwrap();
    let route = open_route(&mut w, nodes[0], &nodes[1..], Duration::from_secs(120)).unwrap();
    let t = transfer(&mut w, 0, 8, route, payload(4, 10 << 20), Duration::from_secs(600));
    assert!(t.check.intact(), "10 MiB over 8 hops at 50% loss, sha256 intact, in order");
    assert!(w.wire_stats.lost > 10_000, "the links really lost half: {:?}", w.wire_stats);
}

#[test]
fn slow_last_link_fills_upstream_buffers_to_their_size_and_never_past() {
    let mut w = World::new(5);
    let nodes = line(&mut w, 5, &NodeConfig::default(), &WireSpec::default(), Duration::from_secs(10)).unwrap();
    w.wire_mut(3, 4).unwrap().bandwidth = WireSpec::default().bandwidth / 10;
    let route = open_route(&mut w, nodes[0], &nodes[1..], Duration::from_secs(10)).unwrap();
    let t = transfer(&mut w, 0, 4, route, payload(5, 6 << 20), Duration::from_secs(600));
    assert!(t.check.intact());
    for i in 0..4 {
        let s = fwd(&w, i);
        assert!(s.max_buffered <= s.capacity, "node {i}: {} > {}", s.max_buffered, s.capacity);
        assert!(s.max_buffered as f64 >= 0.9 * s.capacity as f64, "node {i} filled to its size: {}", s.max_buffered);
        let dropped: u64 = w
            .node(i)
            .links()
            .iter()
            .map(|l| l.stats.rejected.get(Reject::OverCredit) + l.stats.rejected.get(Reject::QueueFull))
            .sum();
        assert_eq!(dropped, 0);
    }
}

#[test]
fn realtime_keeps_low_latency_under_a_saturating_bulk_transfer() {
    let r = qos(6, Duration::from_secs(5));
    assert_eq!(r.realtime_delivered, 1.0);
    assert!(
        r.realtime_p99_latency_ms <= 2.0 * r.realtime_p99_latency_ms_without_bulk,
        "realtime p99 {} ms with bulk vs {} ms alone",
        r.realtime_p99_latency_ms,
        r.realtime_p99_latency_ms_without_bulk
    );
    assert!(r.fifo_realtime_p99_latency_ms > 5.0 * r.realtime_p99_latency_ms, "one FIFO class would not: {r:?}");
    assert!(r.bulk_goodput > 0.8, "bulk still fills the link: {}", r.bulk_goodput);
}

mod random {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("SKYROUTE_FWD_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]
        /// Random loss, reordering, duplication, a link flap and bursty application writes:
        /// every byte arrives exactly once and in order, and no buffer ever exceeds its size.
        /// Relays forward out of order, so this is also the test that credit cannot deadlock
        /// (a stall fails it: the transfer does not finish). `SKYROUTE_FWD_CASES` sets the
        /// number of cases (8 by default; 200 or more locally).
        #[test]
        fn never_loses_duplicates_or_overfills(
            seed in 0u64..1000,
            loss in 0.0f64..0.4,
            jitter_ms in 0u64..15,
            dup in 0.0f64..0.2,
            flap_at_ms in 0u64..3000,
            bytes in 1usize..600_000,
            buffer_kb in 64usize..512,
        ) {
            let mut config = NodeConfig::default();
            config.forward.route_buffer_bytes = buffer_kb * 1024;
            config.route.setup_timeout = Duration::from_secs(60);
            let spec = WireSpec { loss, jitter: Duration::from_millis(jitter_ms), duplicate: dup, ..WireSpec::default() };
            let mut w = World::new(seed);
            let nodes = line(&mut w, 4, &config, &spec, Duration::from_secs(120)).unwrap();
            let route = open_route(&mut w, nodes[0], &nodes[1..], Duration::from_secs(120)).unwrap();
            let t0 = w.elapsed() + Duration::from_millis(flap_at_ms);
            w.wire_mut(1, 2).unwrap().down.push((t0, t0 + Duration::from_millis(700)));
            let t = transfer(&mut w, 0, 3, route, payload(seed, bytes), Duration::from_secs(300));
            prop_assert!(t.check.intact(), "received {} of {}", t.check.received, bytes);
            for i in 0..4 {
                let s = fwd(&w, i);
                prop_assert!(s.max_buffered <= s.capacity);
                let over: u64 = w.node(i).links().iter().map(|l| l.stats.rejected.get(Reject::OverCredit)).sum();
                prop_assert_eq!(over, 0);
            }
        }
    }
}

#[test]
fn eight_hops_at_70_percent_loss_still_deliver_intact() {
    // At 70% loss per link the transfer used to fail outright (key rotations fell out of step
    // and lossy links were declared dead): now it completes and keeps a share of the ceiling.
    let r = skyroute_sim::scenario::eight_hop_loss(5, 0.7, 256 << 10, 1);
    assert!(r.intact, "{r:?}");
    assert!(r.goodput / (1.0 - r.loss) > 0.2, "goodput {} of the link at 70% loss", r.goodput);
}

#[test]
fn eight_hops_at_90_percent_loss_still_deliver_intact() {
    // 99% of handshake round trips fail at 90% loss each way: links that were up send their
    // handshakes in copies (the peer answers each), so the keys' 120 s renewals and the route's
    // setup get through; relays forward out of order, so no link idles behind one loss.
    let r = skyroute_sim::scenario::eight_hop_loss(2, 0.9, 256 << 10, 1);
    assert!(r.intact, "{r:?}");
    assert!(r.goodput > 0.01, "goodput {} of the link at 90% loss", r.goodput);
}

#[test]
fn a_link_at_70_percent_loss_keeps_its_keys_in_step_through_rotations_and_new_handshakes() {
    // Two neighbours, 70% of datagrams lost each way, a message every 2 s for 200 s, 150 s of
    // silence, 200 s more: keys rotate every second of traffic, and after the silence the
    // key's 120 s age forces a new handshake under the live link. Every message arrives, the link never dies, and no packet is refused for a
    // key the receiver lacks for longer than a rotation's grace.
    let mut w = World::new(13);
    let nodes = line(&mut w, 2, &NodeConfig::default(), &lossy_spec(0.7), Duration::from_secs(300)).unwrap();
    let route = open_route(&mut w, nodes[0], &nodes[1..], Duration::from_secs(120)).unwrap();
    let mut got = 0;
    let mut downs = 0;
    let start = w.now();
    for i in 0..200u32 {
        w.act(nodes[0], |n, now| n.send(now, route, Class::Bulk, &i.to_be_bytes())).unwrap();
        let pause = if i >= 100 { 150 } else { 0 };
        let until = start + Duration::from_secs(2 * u64::from(i) + 2 + pause);
        w.run_until(until, |_, node, e| {
            match e {
                Event::Route(RouteEvent::Data { .. }) if node == nodes[1] => got += 1,
                Event::LinkDown { .. } => downs += 1,
                _ => {}
            }
            true
        });
    }
    w.run_until(w.now() + Duration::from_secs(30), |_, node, e| {
        got += matches!(e, Event::Route(RouteEvent::Data { .. }) if node == nodes[1]) as usize;
        true
    });
    let stale: u64 = (0..2)
        .flat_map(|i| w.node(i).link_ids().into_iter().map(move |l| (i, l)))
        .filter_map(|(i, l)| w.node(i).link(l))
        .map(|l| l.stats.rejected.get(Reject::StaleKey))
        .sum();
    let handshakes: u64 =
        w.node(0).link_ids().iter().filter_map(|l| w.node(0).link(*l)).map(|l| l.stats.handshakes).sum();
    assert_eq!((got, downs), (200, 0), "every message, no link death");
    assert!(handshakes >= 2, "the key's age forced a new handshake: {handshakes}");
    assert!(stale < 50, "{stale} packets refused for a key out of step");
}
