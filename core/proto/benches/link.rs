//! Link, forwarding and key-exchange benchmarks, each against a baseline measured in the same
//! run. `cargo bench -p skyroute-proto --bench link` ends with a table of ratios (the figures
//! docs/measurements.md reports):
//! - link seal+open / raw ring ChaCha20-Poly1305 seal+open (goal >= 0.8)
//! - link seal / boringtun encapsulate, link open / boringtun decapsulate (goal >= 1.0)
//! - one-hop forwarding (open, route lookup, seal) / raw open+seal (goal >= 0.8)
//! - rekeys per second (ephemeral ECDH + KDF; goal >= 6000) and full handshakes per second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use skyroute_proto::crypto::Ephemeral;
use skyroute_proto::link::{Link, LinkConfig, LinkId};
use skyroute_proto::noise as handshake;
use skyroute_proto::wire::Packet;
use skyroute_proto::{Event, Node, NodeConfig, RouteEvent, SecretKey};
#[path = "../tests/common/mod.rs"]
mod tx;
use tx::next_tx;

mod common;

const PAYLOAD: usize = 1400;
/// Datagrams the relay takes in per timed round (a driver's receive batch).
const BATCH: usize = 32;

fn ring_key(b: u8) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[b; 32]).unwrap())
}

fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(b)
}

fn link_config() -> LinkConfig {
    LinkConfig { mtu: 1472, rekey_after_packets: u64::MAX, ..LinkConfig::default() }
}

/// Two links with a completed handshake: (sender, receiver).
fn link_pair() -> (Link<u8>, Link<u8>) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let ka = SecretKey::generate(&mut rng);
    let kb = SecretKey::generate(&mut rng);
    let now = Instant::now();
    let mut a = Link::new(LinkId(1), kb.public_key(), 1u8, 0, link_config(), true, now);
    let mut b = Link::new(LinkId(1), ka.public_key(), 0u8, 0, link_config(), false, now);
    a.start_handshake(now, &mut rng, &ka, 11);
    let init_bytes = a.poll_transmit(now).unwrap();
    let Ok(Packet::HandshakeInit(init)) = Packet::parse(&init_bytes) else { panic!() };
    let r = handshake::respond(handshake::LINK_PROLOGUE, &mut rng, &kb, &init, 22).unwrap();
    assert!(b.on_handshake_init(now, &kb, &init_bytes, r, 22));
    let resp = b.poll_transmit(now).unwrap();
    let Ok(Packet::HandshakeResp(resp)) = Packet::parse(&resp) else { panic!() };
    a.on_handshake_resp(now, &ka, &resp).unwrap();
    // Confirmation ping: brings b up.
    let mut ping = a.poll_transmit(now).unwrap();
    let Ok(Packet::Data(h)) = Packet::parse(&ping) else { panic!() };
    b.open(now, &h, &mut ping).unwrap();
    (a, b)
}

fn open_link(b: &mut Link<u8>, now: Instant, pkt: &mut [u8]) -> usize {
    let Ok(Packet::Data(h)) = Packet::parse(pkt) else { panic!("not data") };
    b.open(now, &h, pkt).unwrap().0
}

fn bench_link(c: &mut Criterion) {
    let mut g = c.benchmark_group("link_1400");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    let payload = vec![0x5au8; PAYLOAD];

    // Raw ring: seal, open, seal+open on the same buffers.
    let key = ring_key(1);
    let mut n = 0u64;
    g.bench_function("ring_seal", |bch| {
        let mut buf = payload.clone();
        bch.iter(|| {
            n += 1;
            let _ = black_box(key.seal_in_place_separate_tag(nonce(n), Aad::empty(), &mut buf).unwrap());
        })
    });
    let sealed: Vec<u8> = {
        let mut b = payload.clone();
        let tag = key.seal_in_place_separate_tag(nonce(0), Aad::empty(), &mut b).unwrap();
        b.extend_from_slice(tag.as_ref());
        b
    };
    g.bench_function("ring_open", |bch| {
        bch.iter_batched_ref(
            || sealed.clone(),
            |buf| black_box(key.open_in_place(nonce(0), Aad::empty(), buf).unwrap().len()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("ring_seal_open", |bch| {
        bch.iter_batched_ref(
            || {
                let mut b = Vec::with_capacity(PAYLOAD + 16);
                b.extend_from_slice(&payload);
                b
            },
            |buf| {
                let tag = key.seal_in_place_separate_tag(nonce(7), Aad::empty(), buf).unwrap();
                buf.extend_from_slice(tag.as_ref());
                black_box(key.open_in_place(nonce(7), Aad::empty(), buf).unwrap().len())
            },
            BatchSize::SmallInput,
        )
    });

    // Our link: seal = queue one 1400-byte frame and build the padded, sealed packet.
    let (mut a, mut b) = link_pair();
    let now = Instant::now();
    let mut pkt = Vec::with_capacity(2048);
    // The send path: start the packet, write the frame bytes into it, pad and seal in place.
    let seal = |a: &mut Link<u8>, pkt: &mut Vec<u8>| {
        a.begin_packet(now, pkt).unwrap();
        pkt.extend_from_slice(&payload);
        a.seal_packet(now, pkt, true, true).unwrap();
    };
    g.bench_function("link_seal", |bch| {
        bch.iter(|| {
            seal(&mut a, &mut pkt);
            black_box(pkt.len())
        })
    });
    g.bench_function("link_open", |bch| {
        bch.iter_batched_ref(
            || {
                let mut p = Vec::with_capacity(2048);
                seal(&mut a, &mut p);
                p
            },
            |pkt| black_box(open_link(&mut b, now, pkt)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("link_seal_open", |bch| {
        bch.iter(|| {
            seal(&mut a, &mut pkt);
            black_box(open_link(&mut b, now, &mut pkt))
        })
    });

    // boringtun (WireGuard) on the same payload (a well-formed IPv4 packet of 1400 bytes).
    let (mut ta, mut tb) = wg_pair();
    let mut ip = payload.clone();
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(PAYLOAD as u16).to_be_bytes());
    let mut dst = vec![0u8; 2048];
    g.bench_function("boringtun_encapsulate", |bch| {
        bch.iter(|| match ta.encapsulate(&ip, &mut dst) {
            boringtun::noise::TunnResult::WriteToNetwork(p) => black_box(p.len()),
            _ => panic!("encapsulate"),
        })
    });
    let mut out = vec![0u8; 2048];
    g.bench_function("boringtun_decapsulate", |bch| {
        bch.iter_batched_ref(
            || match ta.encapsulate(&ip, &mut dst) {
                boringtun::noise::TunnResult::WriteToNetwork(p) => p.to_vec(),
                _ => panic!("encapsulate"),
            },
            |pkt| match tb.decapsulate(None, pkt, &mut out) {
                boringtun::noise::TunnResult::WriteToTunnelV4(p, _) => black_box(p.len()),
                other => panic!("decapsulate: {:?}", std::mem::discriminant(&other)),
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn wg_pair() -> (boringtun::noise::Tunn, boringtun::noise::Tunn) {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};
    let sa = StaticSecret::random_from_rng(ChaCha20Rng::seed_from_u64(5));
    let sb = StaticSecret::random_from_rng(ChaCha20Rng::seed_from_u64(6));
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let mut a = Tunn::new(sa, pb, None, None, 1, None).unwrap();
    let mut b = Tunn::new(sb, pa, None, None, 2, None).unwrap();
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    let init = match a.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("init"),
    };
    let resp = match b.decapsulate(None, &init, &mut buf2) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("resp"),
    };
    if let TunnResult::WriteToNetwork(k) = a.decapsulate(None, &resp, &mut buf) {
        let k = k.to_vec();
        let _ = b.decapsulate(None, &k, &mut buf2);
    }
    (a, b)
}

/// Three nodes A - B - C with a route A -> B -> C; returns them with the route id at A.
fn three_nodes() -> (Vec<Node<u8>>, skyroute_proto::RouteId) {
    let cfg = NodeConfig { link: link_config(), ..NodeConfig::default() };
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut nodes: Vec<Node<u8>> = (0..3)
        .map(|i| Node::new(SecretKey::generate(&mut rng), cfg.clone(), Box::new(ChaCha20Rng::seed_from_u64(100 + i))))
        .collect();
    let now = Instant::now();
    let (kb, kc) = (nodes[1].public_key(), nodes[2].public_key());
    nodes[0].connect(now, kb, 1);
    nodes[1].connect(now, kc, 2);
    let pump = |nodes: &mut Vec<Node<u8>>| {
        let mut ready = None;
        for _ in 0..50 {
            for i in 0..3 {
                while let Some(t) = next_tx(&mut nodes[i], now) {
                    let mut p = t.1;
                    nodes[t.0 as usize].handle_datagram(now, i as u8, &mut p);
                }
                while let Some(e) = nodes[i].poll_event() {
                    if let Event::Route(RouteEvent::Ready { route }) = e {
                        ready = Some(route);
                    }
                }
            }
        }
        ready
    };
    pump(&mut nodes);
    nodes[0].open_route(now, None, &[kb, kc]).unwrap();
    let route = pump(&mut nodes).expect("route ready");
    (nodes, route)
}

/// Every datagram `node` has for `link` now, into `out`, in buffers from `spare`.
fn transmit_all(node: &mut Node<u8>, link: LinkId, now: Instant, spare: &mut Vec<Vec<u8>>, out: &mut Vec<Vec<u8>>) {
    loop {
        let mut b = spare.pop().unwrap_or_else(|| Vec::with_capacity(2048));
        if node.poll_transmit(now, Some(link), &mut b).is_none() {
            spare.push(b);
            return;
        }
        out.push(b);
    }
}

fn bench_forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_1400");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    let (k1, k2) = (ring_key(1), ring_key(2));
    let payload = vec![0x33u8; PAYLOAD];
    let sealed = {
        let mut b = payload.clone();
        let tag = k1.seal_in_place_separate_tag(nonce(0), Aad::empty(), &mut b).unwrap();
        b.extend_from_slice(tag.as_ref());
        b
    };
    let mut n = 0u64;
    g.bench_function("raw_open_seal", |bch| {
        bch.iter_batched_ref(
            || sealed.clone(),
            |buf| {
                let len = k1.open_in_place(nonce(0), Aad::empty(), buf).unwrap().len();
                n += 1;
                let tag = k2.seal_in_place_separate_tag(nonce(n), Aad::empty(), &mut buf[..len]).unwrap();
                let _ = black_box(tag);
            },
            BatchSize::SmallInput,
        )
    });
    let (mut nodes, route) = three_nodes();
    let (kb, kc) = (nodes[1].public_key(), nodes[2].public_key());
    let now = Instant::now();
    let data = vec![0x44u8; nodes[0].route_mtu()];
    let (to_a, to_c) = (nodes[1].link_to(&nodes[0].public_key()).unwrap(), nodes[1].link_to(&kc).unwrap());
    let to_b = nodes[0].link_to(&kb).unwrap();
    let mut full = 0u64;
    let mut seg = [Duration::ZERO; 3];
    let mut seg_n = 0u64;
    // Buffers reused between rounds (datagrams in, datagrams out, acks in).
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let (mut inbound, mut outbound, mut acks): (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>) =
        (Vec::new(), Vec::new(), Vec::new());
    // Timed: what the relay does per packet (open, route lookup, buffer, seal, and its share of
    // the per-hop acks it receives), a batch at a time as a driver hands it datagrams, so
    // reading the clock is not part of the figure. Untimed: the source producing the packets,
    // the far end acking them, the relay's credit and acks back to the source.
    g.bench_function("node_forward", |bch| {
        bch.iter_custom(|iters| {
            let (src, rest) = nodes.split_at_mut(1);
            let (relay, far) = rest.split_at_mut(1);
            let (src, relay, far) = (&mut src[0], &mut relay[0], &mut far[0]);
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                // The source's next batch (untimed).
                let want = (iters - done).min(BATCH as u64) as usize;
                let mut sent = 0;
                while sent < want && src.send(now, route, skyroute_proto::Class::Bulk, &data).is_ok() {
                    sent += 1;
                }
                transmit_all(src, to_b, now, &mut spare, &mut inbound);
                // The relay takes them in and sends everything it can towards the far end.
                let t = Instant::now();
                for p in inbound.iter_mut() {
                    relay.handle_datagram(now, 0, p);
                }
                let t_mid = Instant::now();
                transmit_all(relay, to_c, now, &mut spare, &mut outbound);
                let t_end = Instant::now();
                seg[0] += t_mid - t;
                seg[1] += t_end - t_mid;
                total += t_end - t;
                let forwarded = outbound.iter().filter(|o| o.len() >= PAYLOAD).count() as u64;
                full += forwarded;
                seg_n += forwarded;
                done += forwarded.max(1);
                spare.append(&mut inbound);
                // The far end acks (untimed); the relay takes the acks in (timed).
                for o in outbound.iter_mut() {
                    far.handle_datagram(now, 1, o);
                }
                spare.append(&mut outbound);
                while far.poll_event().is_some() {}
                while let Some((_, t)) = next_tx(far, now) {
                    acks.push(t);
                }
                let t = Instant::now();
                for a in acks.iter_mut() {
                    relay.handle_datagram(now, 2, a);
                }
                let e = t.elapsed();
                total += e;
                seg[2] += e;
                acks.clear();
                // The relay's acks and credit back to the source (untimed).
                transmit_all(relay, to_a, now, &mut spare, &mut acks);
                for b in acks.iter_mut() {
                    src.handle_datagram(now, 1, b);
                }
                spare.append(&mut acks);
            }
            total
        })
    });
    assert!(full > 0, "forwarded packets are full size");
    if seg_n > 0 {
        let n = u32::try_from(seg_n).unwrap_or(u32::MAX);
        println!(
            "relay per packet: receive+forward {:?}, build+seal {:?}, acks in {:?}",
            seg[0] / n,
            seg[1] / n,
            seg[2] / n
        );
    }
    g.finish();
}

fn bench_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("keys");
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let peer = Ephemeral::generate(&mut rng).public_key();
    let chain = zeroize::Zeroizing::new([7u8; 32]);
    g.bench_function("rekey", |bch| {
        bch.iter(|| {
            let e = Ephemeral::generate(&mut rng);
            let dh = e.dh(&peer);
            black_box(handshake::rekey(&chain, &dh, true));
            black_box(e.public_bytes());
        })
    });
    let ka = SecretKey::generate(&mut rng);
    let kb = SecretKey::generate(&mut rng);
    g.bench_function("handshake", |bch| {
        bch.iter(|| {
            let (ini, init) = handshake::initiate(
                handshake::LINK_PROLOGUE,
                &mut rng,
                &ka,
                &kb.public_key(),
                1,
                0,
                handshake::timestamp(1),
            );
            let Ok(Packet::HandshakeInit(i)) = Packet::parse(&init) else { panic!() };
            let r = handshake::respond(handshake::LINK_PROLOGUE, &mut rng, &kb, &i, 2).unwrap();
            let Ok(Packet::HandshakeResp(resp)) = Packet::parse(&r.packet) else { panic!() };
            black_box(ini.finish(&ka, &resp).unwrap());
        })
    });
    g.finish();
}

fn main() {
    let (root, mut c) = common::setup();
    bench_link(&mut c);
    bench_forward(&mut c);
    bench_keys(&mut c);
    c.final_summary();

    let m = |g: &str, n: &str| common::mean_ns(&root, g, n);
    println!("\n== skyroute link benchmark ratios (same run, {PAYLOAD}-byte payloads) ==");
    let ratio = |label: &str, base: Option<f64>, ours: Option<f64>, goal: &str| {
        if let (Some(b), Some(o)) = (base, ours) {
            println!("{label:<52} {:>6.2}   (goal {goal})", b / o);
        }
    };
    ratio(
        "link seal+open / ring seal+open",
        m("link_1400", "ring_seal_open"),
        m("link_1400", "link_seal_open"),
        ">= 0.8",
    );
    ratio(
        "link seal / boringtun encapsulate",
        m("link_1400", "boringtun_encapsulate"),
        m("link_1400", "link_seal"),
        ">= 1.0",
    );
    ratio(
        "link open / boringtun decapsulate",
        m("link_1400", "boringtun_decapsulate"),
        m("link_1400", "link_open"),
        ">= 1.0",
    );
    ratio(
        "one-hop forward / raw open+seal",
        m("forward_1400", "raw_open_seal"),
        m("forward_1400", "node_forward"),
        ">= 0.8",
    );
    if let Some(f) = m("forward_1400", "node_forward") {
        println!("{:<52} {:>6.2}   Gb/s per core", "one-hop forward throughput", PAYLOAD as f64 * 8.0 / f);
    }
    if let Some(s) = m("link_1400", "link_seal") {
        println!("{:<52} {:>6.2}   GB/s per core", "link seal throughput", PAYLOAD as f64 / s);
    }
    if let Some(r) = m("keys", "rekey") {
        println!("{:<52} {:>6.0}   (goal >= 6000)", "rekeys per second per core", 1e9 / r);
    }
    if let Some(h) = m("keys", "handshake") {
        println!("{:<52} {:>6.0}", "full handshakes per second per core (both sides)", 1e9 / h);
    }
}
