//! The VPN gateway's checks through its public API: admission, stable addresses,
//! anti-spoofing, forbidden destinations, rate limit, counters.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::SeedableRng;
use skyroute_proto::vpn::gateway::{Access, Drop, Gateway, GatewayConfig, Refusal};
use skyroute_proto::vpn::{ip, ip6};
use skyroute_proto::{PublicKey, SecretKey};
fn key(seed: u64) -> PublicKey {
    SecretKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).public_key()
}

fn gw(access: Access, rate: Option<u64>) -> Gateway {
    Gateway::new(GatewayConfig {
        access,
        pool: Ipv4Addr::new(10, 77, 0, 0),
        prefix_len: 16,
        rate_limit: rate,
        client_to_client: false,
        blocked: vec![(Ipv4Addr::new(192, 168, 0, 0), 16)],
        mtu: 1280,
        pool6: None,
        blocked6: Vec::new(),
        dns: Vec::new(),
    })
}

fn gw6(rate: Option<u64>) -> Gateway {
    Gateway::new(GatewayConfig {
        access: Access::Open,
        pool: Ipv4Addr::new(10, 77, 0, 0),
        prefix_len: 16,
        rate_limit: rate,
        client_to_client: false,
        blocked: Vec::new(),
        mtu: 1280,
        pool6: Some((a6("fd00:77:1:2::"), 64)),
        blocked6: vec![(a6("2001:db8:ff::"), 48)],
        dns: Vec::new(),
    })
}

fn a6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn ipv6_addresses_are_stable_per_key_and_checked_like_ipv4() {
    let now = Instant::now();
    let (a, b) = (key(1), key(2));
    let mut g = gw6(Some(3000));
    let gw_addr = g.address6().unwrap();
    assert_eq!(gw_addr, a6("fd00:77:1:2::1"));
    let aa = g.hello(now, &a).unwrap().v6.unwrap();
    assert_eq!((aa.prefix_len, aa.gateway), (64, gw_addr));
    assert!(ip6::in_net(aa.address, a6("fd00:77:1:2::"), 64) && aa.address != gw_addr);
    assert_eq!(gw6(None).hello(now, &a).unwrap().v6.unwrap().address, aa.address, "stable across restarts");
    let bb = g.hello(now, &b).unwrap().v6.unwrap().address;
    assert_ne!(bb, aa.address);
    let out = |src, dst| ip6::build(src, dst, ip::PROTO_UDP, &[0; 100]);
    let internet = a6("2001:db8::1");
    assert_eq!(g.from_client(now, &a, &out(aa.address, internet)), Ok(()));
    assert_eq!(g.from_client(now, &a, &out(bb, internet)), Err(Drop::Spoofed));
    assert_eq!(g.from_client(now, &a, &out(aa.address, bb)), Err(Drop::Forbidden), "client to client");
    assert_eq!(g.from_client(now, &a, &out(aa.address, gw_addr)), Err(Drop::Forbidden), "the gateway");
    assert_eq!(g.from_client(now, &a, &out(aa.address, a6("2001:db8:ff::9"))), Err(Drop::Forbidden));
    assert_eq!(g.from_client(now, &a, &out(aa.address, a6("ff02::1"))), Err(Drop::Forbidden), "multicast");
    assert_eq!(g.from_client(now, &a, &[0x60, 0, 0]), Err(Drop::Malformed));
    assert_eq!(g.to_client(now, &out(internet, bb)), Ok(b));
    assert_eq!(g.to_client(now, &out(internet, a6("fd00:77:1:2::99"))), Err(Drop::NoAddress));
    // The rate limit covers both families together.
    let mut sent = 0;
    while g.from_client(now, &a, &out(aa.address, internet)).is_ok() {
        sent += 1;
        assert!(sent < 100);
    }
    let v4 = g.hello(now, &a).unwrap().address;
    let p4 = ip::build(v4, Ipv4Addr::new(192, 0, 2, 1), ip::PROTO_UDP, &[0; 100]);
    assert_eq!(g.from_client(now, &a, &p4), Err(Drop::RateLimited));
    let stats = g.stats().find(|(k, _, _)| **k == a).unwrap().2.clone();
    assert_eq!((stats.dropped_spoofed, stats.dropped_forbidden, stats.dropped_malformed), (1, 4, 1));
    // Forgetting a client frees its IPv6 address too.
    g.remove(&b);
    assert_eq!(g.to_client(now, &out(internet, bb)), Err(Drop::NoAddress));
}

#[test]
fn a_gateway_without_ipv6_refuses_it() {
    let now = Instant::now();
    let a = key(1);
    let mut g = gw(Access::Open, None);
    let assigned = g.hello(now, &a).unwrap();
    assert_eq!((assigned.v6, g.address6()), (None, None));
    let p = ip6::build(a6("2001:db8::5"), a6("2001:db8::1"), ip::PROTO_UDP, &[0; 10]);
    assert_eq!(g.from_client(now, &a, &p), Err(Drop::NoIpv6));
}

#[test]
fn allow_list_and_stable_addresses() {
    let now = Instant::now();
    let (a, b, c) = (key(1), key(2), key(3));
    let mut g = gw(Access::Keys([a, b].into()), None);
    let aa = g.hello(now, &a).unwrap();
    assert_eq!(g.hello(now, &a).unwrap(), aa, "same key, same address");
    assert!(aa.address.octets()[..2] == [10, 77] && aa.address != g.address());
    assert_ne!(g.hello(now, &b).unwrap().address, aa.address);
    assert_eq!(g.hello(now, &c), Err(Refusal::NotAllowed));
    assert_eq!(g.refused, 1);
    // A fresh gateway (a restart) gives the same address again.
    let mut g2 = gw(Access::Open, None);
    assert_eq!(g2.hello(now, &a).unwrap().address, aa.address);
}

#[test]
fn spoofed_forbidden_and_rate_limited_packets_are_dropped_and_counted() {
    let now = Instant::now();
    let (a, b) = (key(1), key(2));
    let mut g = gw(Access::Open, Some(3000));
    let aa = g.hello(now, &a).unwrap().address;
    let bb = g.hello(now, &b).unwrap().address;
    let out = |src, dst| ip::build(src, dst, ip::PROTO_UDP, &[0; 100]);
    let internet = Ipv4Addr::new(192, 0, 2, 1);
    assert_eq!(g.from_client(now, &a, &out(aa, internet)), Ok(()));
    assert_eq!(g.from_client(now, &a, &out(bb, internet)), Err(Drop::Spoofed));
    assert_eq!(g.from_client(now, &a, &out(aa, bb)), Err(Drop::Forbidden), "client to client");
    assert_eq!(g.from_client(now, &a, &out(aa, g.address())), Err(Drop::Forbidden), "the gateway host");
    assert_eq!(g.from_client(now, &a, &out(aa, Ipv4Addr::new(192, 168, 1, 1))), Err(Drop::Forbidden));
    assert_eq!(g.from_client(now, &a, &[0x45, 0]), Err(Drop::Malformed));
    assert_eq!(g.to_client(now, &out(internet, bb)), Ok(b));
    assert_eq!(g.to_client(now, &out(internet, Ipv4Addr::new(10, 77, 9, 9))), Err(Drop::NoAddress));
    // 3000 bytes per second: the burst runs out, then refills with time.
    let mut sent = 0;
    while g.from_client(now, &a, &out(aa, internet)).is_ok() {
        sent += 1;
    }
    assert!(sent < 30);
    assert_eq!(g.from_client(now + Duration::from_millis(500), &a, &out(aa, internet)), Ok(()));
    let s = g.stats().find(|(k, _, _)| **k == a).unwrap().2.clone();
    assert_eq!((s.dropped_spoofed, s.dropped_forbidden, s.dropped_malformed), (1, 3, 1));
    assert!(s.dropped_rate >= 1 && s.bytes_up > 0);
}
