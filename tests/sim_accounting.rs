//! Bandwidth accounting on routes through the public API (seed: "incentives: payment
//! protocol"): relays claim what they carried, the source receipts it, an escrow settles it,
//! and an unpaid route is throttled or dropped by the relay's policy. The privacy test checks
//! that nothing a relay sees or keeps names the source.

use std::time::Duration;

use skyroute_escrow::{settle_message, Settle};
use skyroute_proto::accounting::{amount, Policy, ReceiptError, MIB};
use skyroute_proto::{AccountingStats, Event, NodeConfig, RouteError, RouteEvent, RouteId};
use skyroute_scenarios::funded_escrow;
use skyroute_sim::scenario::{open_route, payload, transfer};
use skyroute_sim::{WireSpec, World};

const PRICE: u32 = 300;

fn relay_config(policy: Policy) -> NodeConfig {
    let mut c = NodeConfig::default();
    let a = &mut c.route.accounting;
    a.price_per_mib = PRICE;
    a.interval = Duration::from_millis(500);
    a.allowance = 256 * 1024;
    a.grace = Duration::from_secs(1);
    a.policy = policy;
    c
}

fn source_config(max_price: Option<u32>) -> NodeConfig {
    let mut c = NodeConfig::default();
    c.route.accounting.max_price_per_mib = max_price;
    c
}

/// A -> B -> C -> D: B and C charge `PRICE` with `policy`, A pays up to `max_price`.
fn network(seed: u64, policy: Policy, max_price: Option<u32>) -> (World, RouteId) {
    let mut w = World::new(seed);
    let spec = WireSpec { bandwidth: 5_000_000, ..WireSpec::default() };
    let a = w.add_node(source_config(max_price));
    let b = w.add_node(relay_config(policy));
    let c = w.add_node(relay_config(policy));
    let d = w.add_node(NodeConfig::default());
    for (x, y) in [(a, b), (b, c), (c, d)] {
        w.add_wire(x, y, spec.clone());
        w.connect(x, y);
    }
    let up = line_up(&mut w);
    assert!(up, "links up");
    let route = open_route(&mut w, a, &[b, c, d], Duration::from_secs(10)).expect("route");
    (w, route)
}

fn line_up(w: &mut World) -> bool {
    let mut up = 0;
    let deadline = w.now() + Duration::from_secs(10);
    w.run_until(deadline, |_, _, e| {
        up += matches!(e, Event::LinkUp { .. }) as usize;
        up < 6
    });
    up == 6
}

fn idle(w: &mut World, d: Duration) {
    let deadline = w.now() + d;
    w.run_until(deadline, |_, _, _| true);
}

fn acc(w: &World, n: usize) -> AccountingStats {
    w.node(n).accounting()
}

#[test]
fn relays_earn_for_what_they_carried_and_settle_it_at_the_escrow() {
    let (mut w, route) = network(1, Policy::Throttle, Some(1_000));
    let t = transfer(&mut w, 0, 3, route, payload(1, 8 << 20), Duration::from_secs(60));
    assert!(t.check.intact(), "transfer intact");
    // Let the last claims and receipts go round.
    idle(&mut w, Duration::from_secs(2));
    let (src, b, c, d) = (acc(&w, 0), acc(&w, 1), acc(&w, 2), acc(&w, 3));
    for hop in [&b, &c] {
        assert_eq!(hop.charged_routes, 1);
        assert!(hop.carried_bytes >= 8 * MIB, "{hop:?}");
        assert_eq!(hop.paid_bytes, hop.carried_bytes, "everything carried is receipted: {hop:?}");
        assert_eq!(hop.earned, amount(hop.paid_bytes, PRICE));
        assert_eq!(hop.throttled_routes, 0);
        assert_eq!(hop.receipts_refused.total(), 0);
    }
    // The last hop is where the route ends: it does not charge.
    assert_eq!(d.charged_routes, 0);
    assert_eq!(d.carried_bytes, 0);
    assert_eq!(src.owed, b.earned + c.earned, "{src:?}");
    assert_eq!(src.receipted_bytes, b.paid_bytes + c.paid_bytes);
    assert_eq!(src.claims_refused.total(), 0);
    assert!(b.earned > 0 && c.earned > 0);

    // Settle at the escrow: the source's account authorises the route's payer key.
    let (escrow, (src_acct, src_secret), dir) = funded_escrow("acct", 10_000_000);
    let payer = w.node(0).route_payer_key(route).expect("the route pays");
    escrow.authorize(&src_acct, &src_secret, &payer).unwrap();
    let mut earned_at_escrow = 0;
    for relay in [1, 2] {
        let (acct, secret) = escrow.open_account().unwrap();
        let msg = |r: &skyroute_proto::accounting::Receipt| settle_message(&r.encode(), &acct);
        let batch: Vec<Settle> =
            w.act(relay, |n, _| n.settlements(&msg)).iter().map(|(r, sig)| Settle::signed(r, &acct, sig)).collect();
        assert_eq!(batch.len(), 1, "one route, its newest receipt");
        let answers = escrow.settle(&batch).unwrap();
        let paid: u64 = answers.iter().map(|a| a.as_ref().expect("settled").paid).sum();
        assert_eq!(paid, acc(&w, relay).earned);
        assert_eq!(escrow.balance(&acct, &secret).unwrap(), paid);
        earned_at_escrow += paid;
        // Handed out once: nothing new to settle.
        assert!(w.act(relay, |n, _| n.settlements(&msg)).is_empty());
    }
    assert_eq!(escrow.balance(&src_acct, &src_secret).unwrap(), 10_000_000 - earned_at_escrow);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_relays_view_names_no_source() {
    let (mut w, route) = network(2, Policy::Throttle, Some(1_000));
    let t = transfer(&mut w, 0, 3, route, payload(2, 2 << 20), Duration::from_secs(60));
    assert!(t.check.intact());
    idle(&mut w, Duration::from_secs(2));
    let source = w.key(0);
    let node_keys: Vec<[u8; 33]> = (0..4).map(|n| w.key(n).to_bytes()).collect();
    let node_addrs: Vec<Vec<u8>> = (0..4).map(|n| w.key(n).address().0.to_vec()).collect();
    let payer = w.node(0).route_payer_key(route).unwrap();
    assert_ne!(payer, source, "the route pays with a key of its own");
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|x| x == needle);
    for relay in [1, 2] {
        let view = w.act(relay, |n, _| n.settlements(&|r| r.encode()));
        assert_eq!(view.len(), 1);
        let (receipt, sig) = &view[0];
        assert_eq!(receipt.payer, payer);
        let bytes = [receipt.encode(), sig.to_vec()].concat();
        for (k, a) in node_keys.iter().zip(&node_addrs) {
            assert!(!contains(&bytes, k), "a receipt names a node key");
            assert!(!contains(&bytes, a), "a receipt names a node address");
        }
        // What the escrow answers a relay (settlement outcome) names no one either.
        let (escrow, (src_acct, src_secret), dir) = funded_escrow(&format!("acct-priv-{relay}"), 1_000_000);
        escrow.authorize(&src_acct, &src_secret, &payer).unwrap();
        let (acct, _) = escrow.open_account().unwrap();
        let settle = Settle::signed(receipt, &acct, &receipt.payee.to_bytes()); // wrong signature
        let refused = format!("{:?}", escrow.settle(&[settle]).unwrap());
        let sig = w.act(relay, |n, _| n.settlements(&|r| settle_message(&r.encode(), &acct)));
        assert!(sig.is_empty(), "already handed out");
        let answer = refused;
        for k in &node_keys {
            assert!(!answer.contains(&hex(k)), "escrow answer names a node key");
        }
        assert!(!answer.contains(&src_acct), "escrow answer names the payer's account");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes that reached the last hop in `d` of sim time while the source keeps its buffer full.
fn goodput(w: &mut World, route: RouteId, d: Duration) -> (u64, Option<RouteError>) {
    let mut tx = skyroute_sim::scenario::BulkSender::new(payload(9, 64 << 20), skyroute_proto::Class::Bulk);
    tx.pump(w, 0, route);
    let mut got = 0u64;
    let mut failed = None;
    let deadline = w.now() + d;
    w.run_until(deadline, |w, n, e| {
        match e {
            Event::Route(RouteEvent::Data { data, .. }) if n == 3 => got += data.len() as u64,
            Event::Route(RouteEvent::Writable { route: r, .. }) if n == 0 && r == route => {
                tx.pump(w, 0, route);
            }
            Event::Route(RouteEvent::Failed { route: r, error }) if n == 0 && r == route => {
                failed = Some(error);
                return false;
            }
            _ => {}
        }
        true
    });
    (got, failed)
}

#[test]
fn an_unpaid_route_is_throttled_after_the_grace_period() {
    // The source pays nobody; the relays throttle after 256 KiB and 1 s unpaid.
    let (mut w, route) = network(3, Policy::Throttle, None);
    let (first, _) = goodput(&mut w, route, Duration::from_secs(3));
    assert!(acc(&w, 1).throttled_routes == 1 || acc(&w, 2).throttled_routes == 1, "{:?}", acc(&w, 1));
    let (later, failed) = goodput(&mut w, route, Duration::from_secs(3));
    assert_eq!(failed, None, "throttled, not dropped");
    assert!(later * 5 < first, "throttled: {later} bytes in 3 s after, {first} before");
    assert!(later > 0, "still carried, slowly");
    assert_eq!(acc(&w, 1).paid_bytes, 0);

    // A paying source on the same relays is not throttled.
    let (mut w, route) = network(3, Policy::Throttle, Some(1_000));
    let (first, _) = goodput(&mut w, route, Duration::from_secs(3));
    let (later, _) = goodput(&mut w, route, Duration::from_secs(3));
    assert!(later * 2 > first, "paid: {later} after, {first} before");
    assert_eq!(acc(&w, 1).throttled_routes, 0);
}

#[test]
fn an_unpaid_route_is_dropped_under_the_drop_policy() {
    let (mut w, route) = network(4, Policy::Drop, None);
    let (_, failed) = goodput(&mut w, route, Duration::from_secs(10));
    assert_eq!(failed, Some(RouteError::Broken), "the relay tore the route down");
    assert!(acc(&w, 1).dropped_routes + acc(&w, 2).dropped_routes >= 1);
}

#[test]
fn a_source_refuses_overpriced_claims_and_the_relay_throttles() {
    // The source pays at most 100 per MiB; the relays ask 300.
    let (mut w, route) = network(5, Policy::Throttle, Some(100));
    let (first, _) = goodput(&mut w, route, Duration::from_secs(3));
    let (later, _) = goodput(&mut w, route, Duration::from_secs(3));
    let src = acc(&w, 0);
    assert!(src.claims_refused.get(ReceiptError::Price) >= 2, "{src:?}");
    assert_eq!(src.owed, 0);
    assert!(later * 5 < first, "{later} after, {first} before");
}
