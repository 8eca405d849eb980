//! `skyroute sim dht` at reduced size: nodes join, publish signed records and find each other
//! with 10% of the nodes gone and others answering every lookup with themselves (eclipse).

use skyroute_sim::dht::dht;

#[test]
fn lookups_succeed_with_gone_and_eclipsing_nodes() {
    let r = dht(1, 300, 0.10, 0.05, 200);
    assert!(r.success_rate >= 0.99, "{r:?}");
    assert!(r.service_success_rate >= 0.99, "{r:?}");
    assert!(r.p99_hops <= 6 && r.median_hops >= 1, "{r:?}");
    assert!(r.messages_per_lookup < 40.0, "{r:?}");
}

#[test]
fn a_quarter_of_the_nodes_eclipsing_does_not_stop_lookups() {
    let r = dht(2, 300, 0.10, 0.25, 200);
    assert!(r.success_rate >= 0.99, "{r:?}");
}

#[test]
fn same_seed_same_result() {
    let (a, b) = (dht(3, 100, 0.1, 0.05, 50), dht(3, 100, 0.1, 0.05, 50));
    assert_eq!((a.success_rate, a.messages_total, a.median_hops), (b.success_rate, b.messages_total, b.median_hops));
}
