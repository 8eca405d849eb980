//! Route discovery from signed link announcements: only links both ends announce, costs from
//! latency, loss and price, k disjoint routes, the nearest gateways, routes through guards;
//! forged, expired, replayed and oversized announcements refused.

use std::collections::BTreeSet;

use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use skyroute_proto::dht::record::ROLE_GATEWAY;
use skyroute_proto::dht::topology::{LinkAnnouncement, LinkReport, Topology, MAX_LINKS};
use skyroute_proto::dht::{Record, RecordError};
use skyroute_proto::{PublicKey, RouteFinder, SecretKey};

const NOW: u64 = 1_800_000_000;

fn keys(n: usize) -> Vec<SecretKey> {
    (0..n).map(|i| SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(500 + i as u64))).collect()
}

/// Announces every listed link from both ends (rtt 10 ms, no loss unless given).
fn mesh(k: &[SecretKey], links: &[(usize, usize, u16, u16)], one_sided: &[(usize, usize)]) -> Topology {
    let mut t = Topology::new();
    for (i, key) in k.iter().enumerate() {
        let mut reports: Vec<LinkReport> = links
            .iter()
            .filter_map(|&(a, b, rtt, loss)| {
                let peer = if a == i {
                    b
                } else if b == i {
                    a
                } else {
                    return None;
                };
                Some(LinkReport { peer: k[peer].public_key(), rtt_ms: rtt, loss_permille: loss })
            })
            .collect();
        for &(a, b) in one_sided {
            if a == i {
                reports.push(LinkReport { peer: k[b].public_key(), rtt_ms: 1, loss_permille: 0 });
            }
        }
        t.announce(LinkAnnouncement::sign(key, 1, NOW, 600, reports).unwrap(), NOW).unwrap();
    }
    t
}

fn role(t: &mut Topology, k: &SecretKey, roles: u8, cost: u32) {
    let r = Record {
        key: k.public_key(),
        seq: 1,
        issued: NOW,
        ttl: 600,
        addrs: vec![],
        roles,
        cost,
        services: vec![],
        guards: vec![],
    };
    t.record(r.sign(k).unwrap(), NOW).unwrap();
}

fn pk(k: &[SecretKey], i: usize) -> PublicKey {
    k[i].public_key()
}

#[test]
fn only_links_both_ends_announce_and_costs_follow_latency_loss_and_price() {
    // 0 - 1 - 3, 0 - 2 - 3; 4 claims a 1 ms link to 3 that 3 never announced.
    let k = keys(5);
    let mut t = mesh(&k, &[(0, 1, 10, 0), (1, 3, 10, 0), (0, 2, 10, 0), (2, 3, 10, 0), (0, 4, 10, 0)], &[(4, 3)]);
    let g = t.graph();
    assert!(g.cost(&pk(&k, 4), &pk(&k, 3)).is_none(), "a one-sided claim is no link");
    let firsts: BTreeSet<PublicKey> = [1, 2, 4].iter().map(|i| pk(&k, *i)).collect();
    let routes = g.find(&pk(&k, 0), &pk(&k, 3), 3, &firsts, &BTreeSet::new());
    assert_eq!(routes.len(), 2, "two disjoint routes: {routes:?}");
    // Relay 1 charges; relay 2 is free: 2 comes first.
    role(&mut t, &k[1], 0, 50);
    let routes = t.graph().find(&pk(&k, 0), &pk(&k, 3), 2, &firsts, &BTreeSet::new());
    assert_eq!(routes[0][0], pk(&k, 2), "the free relay first");
    // A lossy link costs more than a clean one of the same latency.
    let lossy = mesh(&k, &[(0, 1, 10, 0), (1, 3, 10, 500), (0, 2, 10, 0), (2, 3, 10, 0)], &[]);
    let g = lossy.graph();
    assert!(g.cost(&pk(&k, 1), &pk(&k, 3)).unwrap() > g.cost(&pk(&k, 2), &pk(&k, 3)).unwrap());
}

#[test]
fn the_nearest_gateways_come_first_and_guards_are_honoured() {
    // 0 - 1 - 2(gw) ; 0 - 3 - 4 - 5(gw); 6 is reached only through its guards 1 and 3... and 7.
    let k = keys(8);
    let mut t = mesh(
        &k,
        &[
            (0, 1, 10, 0),
            (1, 2, 10, 0),
            (0, 3, 10, 0),
            (3, 4, 10, 0),
            (4, 5, 10, 0),
            (1, 6, 10, 0),
            (4, 6, 10, 0),
            (7, 6, 1, 0),
            (0, 7, 1, 0),
        ],
        &[],
    );
    role(&mut t, &k[2], ROLE_GATEWAY, 0);
    role(&mut t, &k[5], ROLE_GATEWAY, 0);
    let gws = t.nearest_gateways(&pk(&k, 0), 5);
    assert_eq!(gws, vec![(pk(&k, 2), 2), (pk(&k, 5), 3)]);
    // Node 6's record names guards 1 and 4: the cheap path through 7 must not be used.
    let guarded = Record {
        key: pk(&k, 6),
        seq: 2,
        issued: NOW,
        ttl: 600,
        addrs: vec![],
        roles: 0,
        cost: 0,
        services: vec![],
        guards: vec![pk(&k, 1), pk(&k, 4)],
    };
    t.record(guarded.sign(&k[6]).unwrap(), NOW).unwrap();
    let firsts: BTreeSet<PublicKey> = [1, 3, 7].iter().map(|i| pk(&k, *i)).collect();
    let routes = t.graph().find(&pk(&k, 0), &pk(&k, 6), 2, &firsts, &BTreeSet::new());
    assert_eq!(routes.len(), 2, "{routes:?}");
    for r in &routes {
        let n = r.len();
        assert_eq!(r[n - 1], pk(&k, 6));
        assert!(r[n - 2] == pk(&k, 1) || r[n - 2] == pk(&k, 4), "enters through a guard: {r:?}");
        assert!(!r.contains(&pk(&k, 7)), "never through the unguarded neighbour");
    }
}

#[test]
fn bad_announcements_are_refused() {
    let k = keys(3);
    let l = vec![LinkReport { peer: pk(&k, 1), rtt_ms: 5, loss_permille: 0 }];
    let a = LinkAnnouncement::sign(&k[0], 2, NOW, 600, l.clone()).unwrap();
    assert_eq!(LinkAnnouncement::decode(&a.encode()).unwrap(), a);
    let mut t = Topology::new();
    t.announce(a.clone(), NOW).unwrap();
    assert_eq!(t.announce(a.clone(), NOW), Err(RecordError::Stale), "replay");
    let older = LinkAnnouncement::sign(&k[0], 1, NOW, 600, l.clone()).unwrap();
    assert_eq!(t.announce(older, NOW), Err(RecordError::Stale));
    let mut forged = LinkAnnouncement::sign(&k[0], 3, NOW, 600, l.clone()).unwrap();
    forged.links[0].rtt_ms = 1;
    assert_eq!(t.announce(forged, NOW), Err(RecordError::BadSignature));
    let mut stolen = LinkAnnouncement::sign(&k[0], 3, NOW, 600, l.clone()).unwrap();
    stolen.node = pk(&k, 2);
    assert_eq!(t.announce(stolen, NOW), Err(RecordError::BadSignature));
    let old = LinkAnnouncement::sign(&k[0], 4, NOW - 1000, 600, l.clone()).unwrap();
    assert_eq!(t.announce(old, NOW), Err(RecordError::Expired));
    let future = LinkAnnouncement::sign(&k[0], 4, NOW + 3600, 600, l.clone()).unwrap();
    assert_eq!(t.announce(future, NOW), Err(RecordError::FromFuture));
    let many = vec![l[0]; MAX_LINKS + 1];
    assert_eq!(LinkAnnouncement::sign(&k[0], 5, NOW, 600, many).unwrap_err(), RecordError::TooLarge);
    // Expiry drops it from the graph.
    t.expire(NOW + 601);
    assert_eq!(t.graph().edge_count(), 0);
}

proptest! {
    #[test]
    fn announcement_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = LinkAnnouncement::decode(&bytes);
        let mut b = b"skyroute links".to_vec();
        b.extend_from_slice(&bytes);
        let _ = LinkAnnouncement::decode(&b);
    }
}
