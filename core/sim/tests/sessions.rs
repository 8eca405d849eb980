//! Sessions over several routes in the simulator: streams survive route and link loss, the
//! peer restarting, and bad packets are refused and counted.

use std::time::Duration;

use skyroute_proto::host::anchor::Anchor;
use skyroute_proto::{Event, Graph, NodeConfig, RouteEvent, SessionConfig, SessionEvent, SessionId, Strategy};
use skyroute_sim::scenario::{payload, StreamCheck};
use skyroute_sim::{WireSpec, World};

struct Net {
    w: World,
    src: usize,
    dst: usize,
    relays: Vec<usize>,
    graph: Graph,
    /// Where the stream is checked (dst, or the server behind an anchor).
    sink: usize,
}

/// src - {r1, r2, r3} - dst: three disjoint two-hop routes.
fn diamond(seed: u64, cfg: SessionConfig) -> Net {
    let mut w = World::new(seed);
    let nc = NodeConfig::default();
    let src = w.add_node(nc.clone());
    let relays: Vec<usize> = (0..3).map(|_| w.add_node(nc.clone())).collect();
    let dst = w.add_node(nc.clone());
    let mut g = Graph::new();
    for (i, r) in relays.iter().enumerate() {
        let spec = WireSpec { latency: Duration::from_millis(5 + 5 * i as u64), ..WireSpec::default() };
        w.add_wire(src, *r, spec.clone());
        w.add_wire(*r, dst, spec);
        w.connect(src, *r);
        w.connect(*r, dst);
        g.add_edge(w.key(src), w.key(*r), 5);
        g.add_edge(w.key(*r), w.key(dst), 5);
    }
    let mut up = 0;
    let deadline = w.now() + Duration::from_secs(5);
    w.run_until(deadline, |_, _, e| {
        up += matches!(e, Event::LinkUp { .. }) as usize;
        up < 12
    });
    assert_eq!(up, 12);
    w.add_sessions(src, cfg.clone(), g.clone());
    w.add_sessions(dst, cfg, g.clone());
    Net { w, src, dst, relays, graph: g, sink: dst }
}

fn connect(net: &mut Net) -> SessionId {
    let dest = net.w.key(net.dst);
    let sid = net.w.act_host(net.src, |h, now| h.connect(now, dest, None)).unwrap();
    let mut ok = false;
    let deadline = net.w.now() + Duration::from_secs(5);
    net.w.run_sessions_until(deadline, |_, _, ev| {
        ok |= matches!(ev, SessionEvent::Established { session, .. } if session == sid);
        !ok
    });
    assert!(ok, "session established");
    sid
}

/// What a stream run saw.
#[derive(Default)]
struct Run {
    failed: u32,
    restarted: u32,
    /// Stream bytes the receiver got again (offsets it already had): after a restart only.
    overlap: u64,
}

/// Streams `data` from src to dst until it all arrived or `limit` passed; `at` is called every
/// 50 ms with the elapsed time so tests can break things.
fn stream(
    net: &mut Net,
    sid: SessionId,
    data: &[u8],
    limit: Duration,
    mut at: impl FnMut(&mut Net, Duration),
) -> (StreamCheck, Run) {
    let mut check = StreamCheck::new(data.to_vec());
    let mut run = Run::default();
    let start = net.w.now();
    let mut pos = 0;
    let mut next = start;
    while net.w.now() < start + limit && !check.complete() {
        if net.w.now() >= next {
            at(net, net.w.now() - start);
            next += Duration::from_millis(50);
        }
        if pos < data.len() {
            pos += net.w.act_host(net.src, |h, now| h.stream_write(now, sid, &data[pos..])).unwrap_or(0);
        }
        let (dst, src) = (net.sink, net.src);
        let slice = next.min(start + limit);
        net.w.run_sessions_until(slice, |_, node, ev| {
            match ev {
                SessionEvent::Stream { offset, data, .. } if node == dst => {
                    // A restarted receiver starts again at the sender's last confirmed offset:
                    // the application drops what it already has, by offset.
                    let have = check.received;
                    let skip = have.saturating_sub(offset).min(data.len() as u64);
                    assert!(offset <= have, "gap: data at {offset}, have {have}");
                    run.overlap += skip;
                    check.accept(&data[skip as usize..]);
                }
                SessionEvent::Failed { .. } => run.failed += 1,
                SessionEvent::Accepted { .. } if node == dst => run.restarted += 1,
                _ => {}
            }
            let _ = src;
            !check.complete()
        });
    }
    (check, run)
}

/// `n` new neighbours the source will meet later (not dialled yet), each with its own way to
/// dst, added to the source's topology view.
fn new_neighbours(net: &mut Net, n: usize) -> Vec<usize> {
    let fresh: Vec<usize> = (0..n).map(|_| net.w.add_node(NodeConfig::default())).collect();
    for f in &fresh {
        net.w.add_wire(net.src, *f, WireSpec::default());
        net.w.add_wire(*f, net.dst, WireSpec::default());
        net.w.connect(*f, net.dst);
        let (a, b, c) = (net.w.key(net.src), net.w.key(*f), net.w.key(net.dst));
        net.graph.add_edge(a, b, 5);
        net.graph.add_edge(b, c, 5);
    }
    let graph = net.graph.clone();
    net.w.act_host(net.src, |h, _| *h.graph_mut() = graph);
    fresh
}

fn cut(net: &mut Net, relay: usize, from: Duration, to: Duration) {
    let since = net.w.elapsed();
    for (a, b) in [(net.src, relay), (relay, net.dst)] {
        if let Some(s) = net.w.wire_mut(a, b) {
            s.down.push((since + from, since + to));
        }
    }
}

#[test]
fn stream_over_three_routes_is_intact_and_cheap() {
    let mut net = diamond(1, SessionConfig::default());
    let sid = connect(&mut net);
    let data = payload(7, 4 << 20);
    let (check, run) = stream(&mut net, sid, &data, Duration::from_secs(60), |_, _| {});
    assert!(check.intact(), "received {} of {}", check.received, data.len());
    assert_eq!(run.failed, 0);
    let st = net.w.host(net.src).sessions().stats(sid).unwrap().clone();
    // Clean paths: no repair planned, and only the packet headers and acks on top.
    assert_eq!(st.repair_planned, 0);
    let overhead = st.route_bytes_sent as f64 / data.len() as f64;
    assert!(overhead < 1.12, "overhead {overhead}");
    // All three routes carried symbols.
    assert_eq!(net.w.host(net.src).sessions().paths(sid).len(), 3);
}

#[test]
fn all_routes_broken_shorter_than_timeout_then_restored() {
    let cfg = SessionConfig { session_timeout: Duration::from_secs(5), ..SessionConfig::default() };
    let mut net = diamond(2, cfg);
    let sid = connect(&mut net);
    let data = payload(8, 3 << 20);
    let relays = net.relays.clone();
    let mut done = false;
    let (check, run) = stream(&mut net, sid, &data, Duration::from_secs(60), |net, t| {
        if !done && t >= Duration::from_millis(300) {
            done = true;
            for r in &relays {
                cut(net, *r, Duration::ZERO, Duration::from_millis(2500));
            }
        }
    });
    assert!(check.intact(), "received {} of {}", check.received, data.len());
    assert_eq!(run.failed, 0, "the application never saw the session fail");
    let st = net.w.host(net.src).sessions().stats(sid).unwrap().clone();
    assert!(st.path_suspects + st.path_failures >= 3, "{st:?}");
}

#[test]
fn the_link_set_is_replaced_entirely() {
    let mut net = diamond(3, SessionConfig::default());
    let sid = connect(&mut net);
    let fresh = new_neighbours(&mut net, 2);
    let data = payload(9, 3 << 20);
    let (relays, src) = (net.relays.clone(), net.src);
    let mut stage = 0;
    let (check, run) = stream(&mut net, sid, &data, Duration::from_secs(60), |net, t| {
        if stage == 0 && t >= Duration::from_millis(400) {
            // The old neighbours go away for good; the new ones come in range.
            stage = 1;
            for r in &relays {
                cut(net, *r, Duration::ZERO, Duration::from_secs(3600));
            }
            for f in &fresh {
                net.w.connect(src, *f);
            }
        }
    });
    assert!(check.intact(), "received {} of {}", check.received, data.len());
    assert_eq!(run.failed, 0);
    // The old paths are retired (their links died), only routes over the new neighbours stay.
    let deadline = net.w.now() + Duration::from_secs(6);
    net.w.run_sessions_until(deadline, |_, _, _| true);
    let paths = net.w.host(net.src).sessions().paths(sid);
    let fresh_keys: Vec<_> = fresh.iter().map(|f| net.w.key(*f)).collect();
    assert!(!paths.is_empty() && paths.iter().all(|(_, _, _, hops)| fresh_keys.contains(&hops[0])), "{paths:?}");
}

#[test]
fn the_peer_restarting_resumes_the_stream() {
    let cfg = SessionConfig { session_timeout: Duration::from_secs(20), ..SessionConfig::default() };
    let mut net = diamond(4, cfg);
    let sid = connect(&mut net);
    let data = payload(10, 3 << 20);
    let mut crashed = false;
    let dst = net.dst;
    let (check, run) = stream(&mut net, sid, &data, Duration::from_secs(90), |net, t| {
        if !crashed && t >= Duration::from_millis(500) {
            crashed = true;
            net.w.restart(dst);
        }
    });
    assert!(check.intact(), "received {} of {}", check.received, data.len());
    assert_eq!(run.failed, 0);
    assert_eq!(run.restarted, 1, "accepted again after the restart");
    // The overlap is what was delivered but not yet confirmed when the peer crashed.
    assert!(run.overlap <= SessionConfig::default().send_buffer as u64, "overlap {}", run.overlap);
    let st = net.w.host(net.src).sessions().stats(sid).unwrap().clone();
    assert!(st.rehandshakes >= 1, "{st:?}");
}

#[test]
fn stale_foreign_and_forged_packets_are_refused_and_counted() {
    let mut net = diamond(5, SessionConfig::default());
    let a = connect(&mut net);
    let b = connect(&mut net);
    let (src, dst) = (net.src, net.dst);
    // Capture real packets of both sessions at dst (withheld from its sessions).
    net.w.capture_route_data(dst, 40);
    for sid in [a, b] {
        for i in 0..8u8 {
            net.w.act_host(src, |h, now| h.send_datagram(now, sid, &[i; 100], Duration::from_secs(1))).unwrap();
        }
    }
    let deadline = net.w.now() + Duration::from_millis(300);
    net.w.run_sessions_until(deadline, |_, _, _| true);
    let captured = net.w.take_captured(dst);
    assert!(captured.len() >= 16, "captured {}", captured.len());
    let ids = net.w.host(dst).sessions().ids();
    let index = |p: &[u8]| u32::from_be_bytes(p[4..8].try_into().unwrap());
    let data_pkts: Vec<(skyroute_proto::RouteId, Vec<u8>)> = captured
        .iter()
        .filter_map(|e| match e {
            Event::Route(RouteEvent::Data { route, data, .. }) if data[0] & 0x0f == 3 => Some((*route, data.clone())),
            _ => None,
        })
        .collect();
    let (route0, p0) = data_pkts[0].clone();
    let other_route = data_pkts.iter().find(|(r, _)| *r != route0).map(|(r, _)| *r).expect("two routes");
    let feed = |net: &mut Net, route, data: Vec<u8>| {
        net.w.act_host(dst, |h, now| h.inject_route_data(now, route, data));
    };
    let sid_of = |p: &[u8]| index(p);
    let target = sid_of(&p0);
    assert!(ids.contains(&target));
    let before = net.w.host(dst).sessions().stats(target).unwrap().clone();
    // 1. The genuine packet, first on a route its path is not bound to: stale route (and not
    //    recorded, so it does not spoil the genuine delivery).
    feed(&mut net, other_route, p0.clone());
    // 2. Then on its own route: accepted; 3. again: a replay.
    feed(&mut net, route0, p0.clone());
    feed(&mut net, route0, p0.clone());
    // 4. Forged: one bit flipped in the ciphertext.
    let (_, mut p1) = data_pkts.iter().find(|(_, p)| sid_of(p) == target && *p != p0).cloned().expect("second packet");
    let n = p1.len();
    p1[n - 20] ^= 1;
    feed(&mut net, route0, p1);
    // 5. Another session's packet, readdressed to this one: it does not open.
    let (r2, mut p2) = data_pkts.iter().find(|(_, p)| sid_of(p) != target).cloned().expect("other session");
    p2[4..8].copy_from_slice(&target.to_be_bytes());
    feed(&mut net, r2, p2);
    // 6. Garbage with an unknown index.
    let mut junk = p0.clone();
    junk[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    feed(&mut net, route0, junk);
    let after = net.w.host(dst).sessions().stats(target).unwrap().clone();
    assert!(after.rejected_stale_path > before.rejected_stale_path, "{after:?}");
    assert_eq!(after.rejected_replay, before.rejected_replay + 1, "{after:?}");
    assert_eq!(after.rejected_auth, before.rejected_auth + 2, "{after:?}");
    assert_eq!(after.packets_received, before.packets_received + 1);
    assert!(net.w.host(dst).sessions().endpoint_stats().unknown_session >= 1);
    // And the session still works.
    let data = payload(11, 256 << 10);
    let (check, _) = stream(&mut net, a, &data, Duration::from_secs(20), |_, _| {});
    assert!(check.intact());
}

#[test]
fn baselines_deliver_the_stream_too() {
    for strategy in [Strategy::SingleRoute, Strategy::MinRtt, Strategy::DuplicateAll, Strategy::MptcpLike] {
        let mut net = diamond(6, SessionConfig { strategy, ..SessionConfig::default() });
        let sid = connect(&mut net);
        let data = payload(12, 1 << 20);
        let r1 = net.relays[0];
        let mut cutdone = false;
        let (check, run) = stream(&mut net, sid, &data, Duration::from_secs(60), |net, t| {
            if !cutdone && t >= Duration::from_millis(200) {
                cutdone = true;
                cut(net, r1, Duration::ZERO, Duration::from_secs(3600));
            }
        });
        assert!(check.intact(), "{strategy:?}: received {} of {}", check.received, data.len());
        assert_eq!(run.failed, 0, "{strategy:?}");
    }
}

/// The MPTCP-like baseline: the stream fills the quickest route's window and spills onto the
/// others; when the quickest route is cut, what it had in flight times out and goes out again
/// on the routes left (reinjection), and the stream arrives whole.
#[test]
fn mptcp_like_spills_over_and_reinjects_after_a_timeout() {
    let mut net = diamond(7, SessionConfig { strategy: Strategy::MptcpLike, ..SessionConfig::default() });
    let sid = connect(&mut net);
    let data = payload(13, 2 << 20);
    let quickest = net.relays[0];
    let mut cutdone = false;
    let mut before_cut = Vec::new();
    let (check, run) = stream(&mut net, sid, &data, Duration::from_secs(60), |net, t| {
        if !cutdone && t >= Duration::from_millis(400) {
            cutdone = true;
            // What each route carried from the source so far (the source's side of each wire).
            before_cut = net.relays.iter().map(|r| net.w.wire_bytes(net.src, *r).0).collect();
            cut(net, quickest, Duration::ZERO, Duration::from_secs(3600));
        }
    });
    assert!(before_cut.iter().all(|b| *b > 50_000), "every route carried the stream: {before_cut:?}");
    assert!(check.intact(), "received {} of {}", check.received, data.len());
    assert_eq!(run.failed, 0);
    let st = net.w.host(net.src).session_stats(sid).expect("session").clone();
    assert!(st.bulk_timeouts >= 1, "the cut route's data timed out: {st:?}");
    assert!(st.reinjected > 0, "and went out again: {st:?}");
}

#[test]
fn an_anchor_holds_the_session_to_the_server_while_the_mobile_routes_change() {
    let mut net = diamond(7, SessionConfig::default());
    // Behind the anchor (dst): two backbone nodes and the server.
    let nc = NodeConfig::default();
    let backbone: Vec<usize> = (0..2).map(|_| net.w.add_node(nc.clone())).collect();
    let server = net.w.add_node(nc);
    let mut bg = Graph::new();
    for b in &backbone {
        net.w.add_wire(net.dst, *b, WireSpec::default());
        net.w.add_wire(*b, server, WireSpec::default());
        net.w.connect(net.dst, *b);
        net.w.connect(*b, server);
        bg.add_edge(net.w.key(net.dst), net.w.key(*b), 5);
        bg.add_edge(net.w.key(*b), net.w.key(server), 5);
    }
    let deadline = net.w.now() + Duration::from_secs(3);
    net.w.run_until(deadline, |_, _, _| true);
    net.w.add_sessions(server, SessionConfig::default(), bg.clone());
    let server_key = net.w.key(server);
    let anchor = net.dst;
    net.w.act_host(anchor, |h, _| *h.graph_mut() = bg);
    net.w.set_anchor(anchor, Anchor::new(server_key, Duration::from_millis(150)));
    net.sink = server;
    let sid = connect(&mut net);
    let data = payload(13, 3 << 20);
    let relays = net.relays.clone();
    let (mut cuts, mut server_path_downs, mut car_path_downs) = (0, 0, 0);
    let (check, run) = stream(&mut net, sid, &data, Duration::from_secs(60), |net, t| {
        // The mobile side's routes break one after the other, and all at once for a second.
        let at = [(200, 0), (500, 1), (800, 2)];
        for (ms, r) in at {
            if cuts == r && t >= Duration::from_millis(ms) {
                cuts += 1;
                cut(net, relays[r], Duration::ZERO, Duration::from_millis(if r == 2 { 1000 } else { 600 }));
            }
        }
    });
    assert!(check.intact(), "received {} of {}", check.received, data.len());
    assert_eq!(run.failed, 0);
    let deadline = net.w.now() + Duration::from_millis(100);
    net.w.run_sessions_until(deadline, |_, _, _| true);
    let h = net.w.host(anchor);
    let a = net.w.anchor(anchor).unwrap();
    assert_eq!(a.stats.sessions_anchored, 1);
    assert_eq!(a.stats.stream_bytes_relayed, data.len() as u64);
    let up = a.paired(h.sessions().ids().into_iter().find(|s| a.paired(*s).is_some()).unwrap()).unwrap();
    let upstream = h.sessions().stats(up).unwrap();
    let car = net.w.host(net.src).sessions().stats(sid).unwrap();
    car_path_downs += car.path_suspects + car.path_failures;
    server_path_downs += upstream.path_suspects + upstream.path_failures;
    assert!(car_path_downs >= 3, "the mobile side's paths broke: {car:?}");
    assert_eq!(server_path_downs, 0, "the anchor's session to the server never noticed: {upstream:?}");
}

/// The responder streams to the initiator (a download) while the initiator retires every path
/// it had: what the responder had in flight on retired paths is repaired elsewhere (a path the
/// peer closes must release its symbols, or the block waits for them forever).
#[test]
fn a_download_survives_the_initiator_retiring_its_paths() {
    let mut net = diamond(8, SessionConfig::default());
    let sid = connect(&mut net);
    let fresh = new_neighbours(&mut net, 2);
    let (src, dst) = (net.src, net.dst);
    let down = net.w.host(dst).sessions().ids()[0];
    let data = payload(14, 16 << 20);
    let mut check = StreamCheck::new(data.clone());
    let (mut pos, mut stage, mut failed) = (0, 0, 0);
    let start = net.w.now();
    while net.w.now() < start + Duration::from_secs(60) && !check.complete() {
        if stage == 0 && net.w.now() >= start + Duration::from_millis(600) {
            stage = 1;
            for r in net.relays.clone() {
                cut(&mut net, r, Duration::ZERO, Duration::from_secs(3600));
            }
            for f in &fresh {
                net.w.connect(src, *f);
            }
        }
        if pos < data.len() {
            pos += net.w.act_host(dst, |h, now| h.stream_write(now, down, &data[pos..])).unwrap_or(0);
        }
        let slice = net.w.now() + Duration::from_millis(20);
        net.w.run_sessions_until(slice, |_, node, ev| {
            match ev {
                SessionEvent::Stream { data, .. } if node == src => check.accept(&data),
                SessionEvent::Failed { .. } => failed += 1,
                _ => {}
            }
            true
        });
    }
    assert!(check.intact(), "received {} of {}", check.received, data.len());
    assert_eq!(failed, 0);
    let up = net.w.host(src).sessions().stats(sid).unwrap();
    assert!(up.paths_retired >= 3, "{up:?}");
}

#[test]
fn a_responder_refuses_sessions_beyond_its_limit() {
    let mut net = diamond(9, SessionConfig { max_sessions: 1, ..SessionConfig::default() });
    connect(&mut net);
    let dest = net.w.key(net.dst);
    let second = net.w.act_host(net.src, |h, now| h.connect(now, dest, None)).unwrap();
    let deadline = net.w.now() + Duration::from_secs(2);
    let mut established = false;
    net.w.run_sessions_until(deadline, |_, _, ev| {
        established |= matches!(ev, SessionEvent::Established { session, .. } if session == second);
        true
    });
    assert!(!established);
    let h = net.w.host(net.dst);
    assert_eq!(h.sessions().ids().len(), 1);
    assert!(h.sessions().endpoint_stats().refused >= 1);
}

/// Quiet when idle (issue 17, reduced size): a phone with three routes idles three minutes
/// while its best route dies silently. Keepalives off: nothing at all; keepalive 25 s:
/// WireGuard's rate per link and no rekey. Either way the first write after idle arrives within
/// three round trips of the best route, intact, and the session never breaks.
#[test]
fn an_idle_phone_is_silent_and_resumes_within_three_round_trips() {
    use skyroute_sim::idle::idle;
    let off = idle(3, 3.0, 0);
    assert_eq!(off.routed.idle_packets_per_min, 0.0, "{off:?}");
    assert_eq!(off.routed.idle_rekeys_per_min, 0.0, "{off:?}");
    assert_eq!(off.routed.idle_handshakes_per_min, 0.0, "{off:?}");
    assert!(off.routed.idle_wakeups_per_min <= 1.0, "{off:?}");
    assert_eq!(off.direct_idle_packets_per_min + off.direct_idle_wakeups_per_min, 0.0, "{off:?}");
    {
        let r = &off;
        assert!(r.routed.resume_intact && r.direct_resume_intact, "{r:?}");
        assert_eq!(r.routed.session_breaks, 0, "{r:?}");
        assert!(
            r.routed.resume_ms <= 3.0 * r.routed.rtt_ms,
            "resume {} ms, best RTT {} ms",
            r.routed.resume_ms,
            r.routed.rtt_ms
        );
        assert!(r.direct_resume_ms <= 3.0 * r.direct_rtt_ms, "{r:?}");
        assert_eq!(r.routed.paths_before, 3, "{r:?}");
    }
    let ka = idle(3, 3.0, 25);
    assert!(ka.routed.idle_packets_per_min <= 3.0 * ka.links as f64, "{ka:?}");
    assert!(ka.routed.idle_packets_per_min >= 2.0 * ka.links as f64, "the keepalives went out: {ka:?}");
    assert_eq!(ka.routed.idle_rekeys_per_min, 0.0, "keepalives are no traffic: {ka:?}");
    assert!(
        ka.routed.resume_intact && ka.routed.session_breaks == 0 && ka.routed.resume_ms <= 3.0 * ka.routed.rtt_ms,
        "{ka:?}"
    );
}

/// A neighbour opening all the sessions it may leaves every other neighbour its share: the
/// victim takes 6 sessions, so with two neighbours up each may hold 6 / 3 = 2.
#[test]
fn a_greedy_neighbours_sessions_leave_others_their_share() {
    let mut w = World::new(31);
    let nc = NodeConfig::default();
    let v = w.add_node(nc.clone());
    let (g, h) = (w.add_node(nc.clone()), w.add_node(nc));
    let mut graph = Graph::new();
    for n in [g, h] {
        w.add_wire(n, v, WireSpec::default());
        w.connect(n, v);
        graph.add_edge(w.key(n), w.key(v), 5);
    }
    let deadline = w.now() + Duration::from_secs(2);
    let mut up = 0;
    w.run_until(deadline, |_, _, e| {
        up += matches!(e, Event::LinkUp { .. }) as usize;
        up < 4
    });
    let cfg = SessionConfig { routes: 1, ..SessionConfig::default() };
    w.add_sessions(v, SessionConfig { max_sessions: 6, ..cfg.clone() }, graph.clone());
    w.add_sessions(g, cfg.clone(), graph.clone());
    w.add_sessions(h, cfg, graph);
    let dest = w.key(v);
    let greedy: Vec<SessionId> = (0..5).map(|_| w.act_host(g, |x, now| x.connect(now, dest, None)).unwrap()).collect();
    let mut established = std::collections::BTreeSet::new();
    let deadline = w.now() + Duration::from_secs(3);
    w.run_sessions_until(deadline, |_, n, ev| {
        if let SessionEvent::Established { session, .. } = ev {
            established.insert((n, session));
        }
        true
    });
    assert_eq!(greedy.iter().filter(|s| established.contains(&(g, **s))).count(), 2, "the greedy neighbour's share");
    let refused = w.host(v).sessions().endpoint_stats().refused_share;
    assert!(refused >= 3, "{refused} refused");
    let gkey = w.key(g);
    let on_link: u64 = w
        .node(v)
        .links()
        .iter()
        .filter(|l| l.peer == gkey)
        .map(|l| l.stats.rejected.get(skyroute_proto::Reject::SessionShare))
        .sum();
    assert_eq!(on_link, refused, "counted on the greedy neighbour's link");
    // The other neighbour gets its whole share.
    let honest: Vec<SessionId> = (0..2).map(|_| w.act_host(h, |x, now| x.connect(now, dest, None)).unwrap()).collect();
    let deadline = w.now() + Duration::from_secs(3);
    w.run_sessions_until(deadline, |_, n, ev| {
        if let SessionEvent::Established { session, .. } = ev {
            established.insert((n, session));
        }
        true
    });
    assert!(honest.iter().all(|s| established.contains(&(h, *s))), "the honest neighbour's sessions");
}
