//! Sessions over several routes in the simulator: streams survive route and link loss.

use std::time::Duration;

use skyroute::sim::scenario::{payload, StreamCheck};
use skyroute::sim::{WireSpec, World};
use skyroute_proto::{Event, Graph, NodeConfig, SessionConfig, SessionEvent};

/// src - {r1, r2, r3} - dst: three disjoint two-hop routes.
fn diamond(seed: u64, cfg: SessionConfig) -> (World, usize, usize, Vec<usize>) {
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
    w.add_sessions(dst, cfg, g);
    (w, src, dst, relays)
}

#[test]
fn stream_over_three_routes_is_intact() {
    let (mut w, src, dst, _) = diamond(1, SessionConfig::default());
    let dest = w.key(dst);
    let sid = w.act_sessions(src, |s, n, g, now| s.connect(now, n, g, dest)).unwrap();
    let data = payload(7, 2 << 20);
    let mut check = StreamCheck::new(data.clone());
    let mut pos = 0;
    let deadline = w.now() + Duration::from_secs(60);
    let mut established = false;
    w.run_sessions_until(deadline, |w, node, ev| {
        match ev {
            SessionEvent::Established { .. } => established = true,
            SessionEvent::Stream { data, .. } if node == dst => check.accept(&data),
            _ => {}
        }
        if established && pos < data.len() {
            pos += w.act_sessions(src, |s, n, _, now| s.stream_send(now, n, sid, &data[pos..])).unwrap();
        }
        !check.complete()
    });
    let st = w.host(src).unwrap().sessions.stats(sid).unwrap().clone();
    eprintln!("{st:?} t={:?}", w.elapsed());
    let h = w.host(dst).unwrap();
    for id in h.sessions.ids() {
        eprintln!("dst {:?}", h.sessions.stats(id));
    }
    eprintln!("dst endpoint {:?}", h.sessions.endpoint_stats());
    assert!(check.intact(), "received {} of {}", check.received, data.len());
}
