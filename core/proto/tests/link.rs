//! Link-layer behaviour through the public `Node` API, on a two-node harness with a fake clock
//! (quinn-proto's `Pair`, for skyroute).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use skyroute_proto::wire::{Packet, DATA_HEADER_LEN};
use skyroute_proto::{DownReason, Event, LinkState, Node, NodeConfig, Reject, RouteEvent, SecretKey};
mod common;
use common::next_tx;

struct Pair {
    now: Instant,
    nodes: [Node<u8>; 2],
    /// Every datagram sent, by sender, for inspection and replay.
    sent: Vec<(u8, Vec<u8>)>,
    events: [Vec<Event>; 2],
    /// Drop datagrams from node i while set.
    mute: [bool; 2],
    /// Timer expiries handled, per node (a phone's wakeups).
    wakeups: [u64; 2],
}

impl Pair {
    fn new(seed: u64) -> Pair {
        Pair::with_config(seed, NodeConfig::default())
    }

    fn with_config(seed: u64, config: NodeConfig) -> Pair {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let a = SecretKey::generate(&mut rng);
        let b = SecretKey::generate(&mut rng);
        Pair {
            now: Instant::now(),
            nodes: [
                Node::new(a, config.clone(), Box::new(ChaCha20Rng::seed_from_u64(seed + 1))),
                Node::new(b, config, Box::new(ChaCha20Rng::seed_from_u64(seed + 2))),
            ],
            sent: Vec::new(),
            events: [Vec::new(), Vec::new()],
            mute: [false; 2],
            wakeups: [0; 2],
        }
    }

    fn connect(&mut self) {
        let key = self.nodes[1].public_key();
        let now = self.now;
        self.nodes[0].connect(now, key, 1);
    }

    /// Moves packets both ways until quiet, then advances to the next timer; stops at `until`.
    fn drive_for(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            let mut moved = false;
            for i in 0..2 {
                while let Some(t) = next_tx(&mut self.nodes[i], self.now) {
                    moved = true;
                    self.sent.push((i as u8, t.1.clone()));
                    if !self.mute[i] {
                        let mut p = t.1;
                        let now = self.now;
                        self.nodes[t.0 as usize].handle_datagram(now, i as u8, &mut p);
                    }
                }
                while let Some(e) = self.nodes[i].poll_event() {
                    self.events[i].push(e);
                }
            }
            if moved {
                continue;
            }
            let next = self.nodes.iter().filter_map(|n| n.poll_timeout()).min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for (i, n) in self.nodes.iter_mut().enumerate() {
                        if n.poll_timeout().is_some_and(|d| d <= now) {
                            self.wakeups[i] += 1;
                            n.handle_timeout(now);
                        }
                    }
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
    }

    fn link_state(&self, i: usize) -> LinkState {
        self.nodes[i].links()[0].state
    }

    fn rejected(&self, i: usize, r: Reject) -> u64 {
        self.nodes[i].links().iter().map(|l| l.stats.rejected.get(r)).sum::<u64>()
            + self.nodes[i].stats().rejected.get(r)
    }

    fn deliver(&mut self, to: usize, from: u8, mut bytes: Vec<u8>) {
        let now = self.now;
        self.nodes[to].handle_datagram(now, from, &mut bytes);
    }

    /// Opens a one-hop route from node 0 to node 1.
    fn route(&mut self) -> skyroute_proto::RouteId {
        let key = self.nodes[1].public_key();
        let now = self.now;
        let r = self.nodes[0].open_route(now, None, &[key]).unwrap();
        self.drive_for(Duration::from_millis(10));
        assert!(self.events[0].contains(&Event::Route(RouteEvent::Ready { route: r })));
        r
    }

    /// Node 0 sends `n` small messages on `route`, one every 100 ms (traffic: keys rotate).
    fn traffic(&mut self, route: skyroute_proto::RouteId, n: u32) {
        for i in 0..n {
            let now = self.now;
            self.nodes[0].send(now, route, skyroute_proto::Class::Bulk, &i.to_be_bytes()).unwrap();
            self.drive_for(Duration::from_millis(100));
        }
    }

    /// The first datagram node `from` sent after `self.sent[before]`.
    fn first_sent_after(&self, before: usize, from: u8) -> Vec<u8> {
        self.sent[before..].iter().find(|(f, _)| *f == from).map(|(_, b)| b.clone()).unwrap()
    }

    fn received(&self, i: usize) -> Vec<Vec<u8>> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::Route(RouteEvent::Data { data, .. }) => Some(data.clone()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn handshake_brings_both_sides_up() {
    let mut p = Pair::new(1);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    assert_eq!(p.link_state(0), LinkState::Up);
    assert_eq!(p.link_state(1), LinkState::Up);
    assert!(matches!(p.events[0][0], Event::LinkUp { .. }));
    assert!(matches!(p.events[1][0], Event::LinkUp { .. }));
    assert_eq!(p.nodes[1].links()[0].peer, p.nodes[0].public_key());
}

#[test]
fn rekeys_about_every_second_without_losing_data() {
    let mut p = Pair::new(2);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    let r = p.route();
    let mut expected = Vec::new();
    for i in 0u32..100 {
        let now = p.now;
        let msg = i.to_be_bytes().to_vec();
        p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, &msg).unwrap();
        expected.push(msg);
        // 100 ms steps: rekeys happen while data is in flight.
        p.drive_for(Duration::from_millis(100));
    }
    let rekeys = p.nodes[0].links()[0].stats.rekeys;
    assert!((8..=11).contains(&rekeys), "10 s at one rekey per second, got {rekeys}");
    assert_eq!(p.nodes[1].links()[0].stats.rekeys, rekeys, "both sides rotate together");
    assert_eq!(p.received(1), expected, "nothing lost or reordered across rekeys");
    assert_eq!(p.rejected(1, Reject::Decrypt) + p.rejected(1, Reject::StaleKey), 0);
}

#[test]
fn rekey_by_packet_count() {
    let mut cfg = NodeConfig::default();
    cfg.link.rekey_interval = Duration::from_secs(3600);
    cfg.link.rekey_after_packets = 50;
    let mut p = Pair::with_config(3, cfg);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    let r = p.route();
    for i in 0u32..400 {
        let now = p.now;
        p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, &i.to_be_bytes()).unwrap();
        p.drive_for(Duration::from_millis(1));
    }
    let rekeys = p.nodes[0].links()[0].stats.rekeys;
    assert!(rekeys >= 5, "400 packets at 50 per key, got {rekeys} rekeys");
    assert_eq!(p.received(1).len(), 400);
}

/// (key epoch, receiver index, counter) of every data packet a node sent: the AEAD nonce is the
/// counter under a key named by (index, epoch), so a repeat would be a nonce reuse.
fn data_nonces(sent: &[(u8, Vec<u8>)], from: u8) -> Vec<(u8, u32, u64)> {
    sent.iter()
        .filter(|(f, _)| *f == from)
        .filter_map(|(_, b)| match Packet::parse(b) {
            Ok(Packet::Data(h)) => Some((h.epoch, h.receiver_index, h.counter)),
            _ => None,
        })
        .collect()
}

#[test]
fn nonces_never_repeat_across_rekeys_and_restarts() {
    let mut p = Pair::new(4);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    let r = p.route();
    // Traffic both ways for 5 s (keys rotate only while it flows), then idle past the key's
    // hard limit and traffic again (a fresh handshake under the up link, counters from 0).
    for round in 0..2 {
        p.traffic(r, 50);
        if round == 0 {
            p.drive_for(Duration::from_secs(150));
        }
    }
    let a = data_nonces(&p.sent, 0);
    let b = data_nonces(&p.sent, 1);
    assert!(a.len() >= 8 && b.len() >= 8, "{} {}", a.len(), b.len());
    for list in [&a, &b] {
        let set: HashSet<_> = list.iter().collect();
        assert_eq!(set.len(), list.len(), "a (key, counter) pair was used twice");
    }
    let epochs: HashSet<u8> = a.iter().map(|n| n.0).collect();
    assert!(epochs.len() >= 4, "several key epochs seen: {epochs:?}");
    let indexes: HashSet<u32> = a.iter().map(|n| n.1).collect();
    assert_eq!(indexes.len(), 2, "a second session after the idle spell: {indexes:?}");

    // A restarted node (same identity, fresh state) derives fresh keys from a new handshake:
    // the first packet of each run uses counter 0 under different keys, so the ciphertexts of
    // the same plaintext differ.
    let first_ct = |p: &Pair| {
        p.sent
            .iter()
            .find(|(f, b)| *f == 0 && matches!(Packet::parse(b), Ok(Packet::Data(h)) if h.counter == 0))
            .map(|(_, b)| b[DATA_HEADER_LEN..].to_vec())
    };
    let run1 = first_ct(&p).unwrap();
    let mut q = Pair::new(4);
    q.connect();
    q.drive_for(Duration::from_millis(5));
    let run2 = first_ct(&q).unwrap();
    // Same seed, same identities: only the RNG-fresh ephemeral keys differ... so use another RNG.
    let mut cfg_rng = Pair::new(4);
    cfg_rng.nodes[0] = Node::new(
        SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(4)),
        NodeConfig::default(),
        Box::new(ChaCha20Rng::seed_from_u64(999)),
    );
    cfg_rng.connect();
    cfg_rng.drive_for(Duration::from_millis(5));
    let run3 = first_ct(&cfg_rng).unwrap();
    assert_eq!(run1, run2, "same seed reproduces exactly (determinism)");
    assert_ne!(run1, run3, "a restart with fresh randomness never reuses a key");
}

#[test]
fn replayed_packets_are_rejected_before_and_after_rekey() {
    let mut p = Pair::new(5);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    let r = p.route();
    let now = p.now;
    p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, b"once").unwrap();
    p.drive_for(Duration::from_millis(5));
    let last_data = p
        .sent
        .iter()
        .rev()
        .find(|(f, b)| *f == 0 && matches!(Packet::parse(b), Ok(Packet::Data(_))))
        .unwrap()
        .1
        .clone();
    p.deliver(1, 0, last_data.clone());
    assert_eq!(p.rejected(1, Reject::Replayed), 1);
    // After one rekey the old key is still held (grace): still a replay.
    p.drive_for(Duration::from_millis(1100));
    p.deliver(1, 0, last_data.clone());
    assert_eq!(p.rejected(1, Reject::Replayed), 2);
    // Long after, the old key is gone.
    p.drive_for(Duration::from_secs(5));
    p.deliver(1, 0, last_data);
    assert_eq!(p.rejected(1, Reject::StaleKey), 1);
    assert_eq!(p.received(1), vec![b"once".to_vec()], "delivered exactly once");
    assert_eq!(p.link_state(1), LinkState::Up, "replays do not disturb the link");
}

#[test]
fn bad_input_is_typed_counted_and_harmless() {
    let mut p = Pair::new(6);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    let r = p.route();
    let good = p
        .sent
        .iter()
        .rev()
        .find(|(f, b)| *f == 0 && matches!(Packet::parse(b), Ok(Packet::Data(_))))
        .unwrap()
        .1
        .clone();

    p.deliver(1, 0, good[..10].to_vec());
    assert_eq!(p.rejected(1, Reject::Truncated), 1);
    p.deliver(1, 0, vec![0x13; 10_000]);
    assert_eq!(p.rejected(1, Reject::Oversized), 1);
    let mut v = good.clone();
    v[0] = 0x23;
    p.deliver(1, 0, v);
    assert_eq!(p.rejected(1, Reject::BadVersion), 1);
    let mut v = good.clone();
    v[0] = 0x1e;
    p.deliver(1, 0, v);
    assert_eq!(p.rejected(1, Reject::UnknownType), 1);
    // Forged: right header, wrong key (flip ciphertext).
    let mut v = good.clone();
    v[8] = v[8].wrapping_add(100); // a counter never used: passes the replay check
    let last = v.len() - 1;
    v[last] ^= 0xff;
    p.deliver(1, 0, v);
    assert_eq!(p.rejected(1, Reject::Decrypt), 1);
    // Unknown link index.
    let mut v = good.clone();
    v[4] ^= 0xff;
    p.deliver(1, 0, v);
    assert_eq!(p.rejected(1, Reject::UnknownIndex), 1);
    // From an unknown address: counted at the node.
    p.deliver(1, 77, b"garbage".to_vec());
    assert_eq!(p.nodes[1].stats().rejected.get(Reject::BadVersion), 1);
    // A handshake init sealed to another key.
    let stranger = SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(66)).public_key();
    let mut other = Node::<u8>::new(
        SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(67)),
        NodeConfig::default(),
        Box::new(ChaCha20Rng::seed_from_u64(68)),
    );
    let now = p.now;
    other.connect(now, stranger, 1);
    let init = next_tx(&mut other, now).unwrap().1;
    p.deliver(1, 9, init);
    assert_eq!(p.nodes[1].stats().rejected.get(Reject::BadMac), 1, "mac1 names another key: no ECDH");
    // One with a valid mac1 whose sealed parts are forged: the ECDH finds it out.
    let mut forged = Node::<u8>::new(
        SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(69)),
        NodeConfig::default(),
        Box::new(ChaCha20Rng::seed_from_u64(70)),
    );
    forged.connect(now, p.nodes[1].public_key(), 1);
    let mut init = next_tx(&mut forged, now).unwrap().1;
    init[60] ^= 1;
    skyroute_proto::link::cookie::seal_macs(&mut init, &p.nodes[1].public_key(), None);
    p.deliver(1, 9, init);
    assert_eq!(p.nodes[1].stats().rejected.get(Reject::Handshake), 1);

    // The link and its route keep working.
    let now = p.now;
    p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, b"still fine").unwrap();
    p.drive_for(Duration::from_millis(5));
    assert_eq!(p.received(1), vec![b"still fine".to_vec()]);
    assert_eq!(p.link_state(1), LinkState::Up);
}

#[test]
fn dead_peer_is_detected_on_demand_and_redialled() {
    let mut p = Pair::new(7);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    let r = p.route();
    // The route's setup was traffic: the key rotates a second later; then all is quiet.
    p.drive_for(Duration::from_secs(3));
    p.mute = [true, true];
    // Nobody uses the link: it is not probed, and silence alone is no death.
    p.drive_for(Duration::from_secs(30));
    assert!(p.events.iter().flatten().all(|e| !matches!(e, Event::LinkDown { .. })));
    // Data that goes unanswered is: within `dead_after` (4 s) plus a retransmission timeout.
    let now = p.now;
    p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, b"anyone?").unwrap();
    p.drive_for(Duration::from_secs(6));
    assert!(p.events[0].iter().any(|e| matches!(e, Event::LinkDown { reason: DownReason::Timeout, .. })));
    assert!(p.events[1].iter().all(|e| !matches!(e, Event::LinkDown { .. })), "the silent side sent nothing");
    p.mute = [false, false];
    p.drive_for(Duration::from_secs(10));
    assert_eq!(p.link_state(0), LinkState::Up, "the dialling side reconnects");
    assert_eq!(p.link_state(1), LinkState::Up);
    let ups = p.events[0].iter().filter(|e| matches!(e, Event::LinkUp { .. })).count();
    assert_eq!(ups, 2);
}

#[test]
fn an_idle_link_is_silent_and_asks_for_no_timer() {
    let mut p = Pair::new(8);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    let r = p.route();
    p.traffic(r, 20);
    // Let the last acks, rotation and old-key grace settle.
    p.drive_for(Duration::from_secs(5));
    let (sent, rekeys, wakeups) = (p.sent.len(), p.nodes[0].links()[0].stats.rekeys, p.wakeups);
    assert!(rekeys >= 1);
    // The last hop forgets the route after 30 idle minutes: the one deadline left.
    let soon = p.now + Duration::from_secs(1700);
    assert!(p.nodes.iter().all(|n| n.poll_timeout().is_none_or(|t| t > soon)), "no deadline while idle");
    p.drive_for(Duration::from_secs(600));
    assert_eq!(p.sent.len(), sent, "ten idle minutes: no packet");
    assert_eq!(p.nodes[0].links()[0].stats.rekeys, rekeys, "and no rekey");
    assert_eq!(p.wakeups, wakeups, "and no wakeup");
    assert_eq!((p.link_state(0), p.link_state(1)), (LinkState::Up, LinkState::Up));
    // The first packet after idle finds the key past its hard limit (120 s): a handshake
    // first, then the message under the new keys; nothing goes out under the old key.
    let before = p.sent.len();
    let now = p.now;
    p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, b"back").unwrap();
    p.drive_for(Duration::from_millis(20));
    assert!(p.received(1).contains(&b"back".to_vec()));
    let first = p.first_sent_after(before, 0);
    assert!(matches!(Packet::parse(&first), Ok(Packet::HandshakeInit(_))), "a handshake before any data");
}

#[test]
fn lazy_rekey_rotates_on_the_first_packet_after_idle() {
    let mut p = Pair::new(18);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    let r = p.route();
    p.traffic(r, 30);
    p.drive_for(Duration::from_secs(30));
    let epoch = p.nodes[0].links()[0].epoch;
    let rekeys = p.nodes[0].links()[0].stats.rekeys;
    p.drive_for(Duration::from_secs(30));
    assert_eq!(p.nodes[0].links()[0].stats.rekeys, rekeys, "no rotation while idle");
    // Within the hard limit the first packet goes under the current key, and starts the
    // rotation a round trip later.
    let before = p.sent.len();
    let now = p.now;
    p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, b"again").unwrap();
    p.drive_for(Duration::from_millis(50));
    let first = p.first_sent_after(before, 0);
    assert!(matches!(Packet::parse(&first), Ok(Packet::Data(h)) if Some(h.epoch) == epoch));
    assert_eq!(p.nodes[0].links()[0].stats.rekeys, rekeys + 1, "traffic after idle rotates the key");
    assert!(p.received(1).contains(&b"again".to_vec()));
}

#[test]
fn keepalives_only_where_configured_at_wireguards_rate() {
    let mut cfg = NodeConfig::default();
    cfg.link.keepalive = Some(Duration::from_secs(25));
    let mut p = Pair::with_config(28, cfg);
    p.connect();
    p.drive_for(Duration::from_secs(1));
    let before: Vec<usize> = (0..2u8).map(|i| p.sent.iter().filter(|(f, _)| *f == i).count()).collect();
    let rekeys = p.nodes[0].links()[0].stats.rekeys;
    p.drive_for(Duration::from_secs(600));
    for i in 0..2u8 {
        let n = p.sent.iter().filter(|(f, _)| *f == i).count() - before[i as usize];
        // 24 keepalives, and a handshake (2 packets) every time the key passes 120 s.
        assert!((20..=30).contains(&n), "node {i}: {n} packets in 10 idle minutes");
    }
    assert_eq!(p.nodes[0].links()[0].stats.rekeys, rekeys, "keepalives are no traffic: no rekey");
    assert_eq!((p.link_state(0), p.link_state(1)), (LinkState::Up, LinkState::Up));
}

#[test]
fn peer_restart_rehandshakes() {
    let mut p = Pair::new(9);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    // Node 0 restarts with the same identity and dials again.
    let key0 = SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(9));
    assert_eq!(key0.public_key(), p.nodes[0].public_key());
    // Its driver reads the wall clock: later than when it first started.
    let config = NodeConfig { unix_time_ns: 10_000_000_000, ..NodeConfig::default() };
    p.nodes[0] = Node::new(key0, config, Box::new(ChaCha20Rng::seed_from_u64(1234)));
    p.connect();
    p.drive_for(Duration::from_millis(20));
    assert_eq!(p.link_state(0), LinkState::Up);
    let r = p.route();
    let now = p.now;
    p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, b"after restart").unwrap();
    p.drive_for(Duration::from_millis(5));
    assert_eq!(p.received(1), vec![b"after restart".to_vec()]);
}

#[test]
fn peer_restart_with_a_clock_that_went_back_gets_back_in() {
    // Firmware without a real-time clock: after a reboot its inits look older than the last
    // one taken. The up link refuses them as replays, probes the peer, finds it gone within
    // dead_after, and takes the next init.
    let mut p = Pair::new(19);
    p.connect();
    p.drive_for(Duration::from_secs(2));
    let key0 = SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(19));
    p.nodes[0] = Node::new(key0, NodeConfig::default(), Box::new(ChaCha20Rng::seed_from_u64(4321)));
    p.connect();
    p.drive_for(Duration::from_millis(50));
    assert!(
        p.nodes[1].stats().rejected.get(Reject::StaleInit)
            + p.nodes[1].links()[0].stats.rejected.get(Reject::StaleInit)
            >= 1
    );
    assert_ne!(p.link_state(0), LinkState::Up, "not yet: the peer still believes in the old session");
    p.drive_for(Duration::from_secs(12));
    assert_eq!((p.link_state(0), p.link_state(1)), (LinkState::Up, LinkState::Up));
    let r = p.route();
    let now = p.now;
    p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, b"back").unwrap();
    p.drive_for(Duration::from_millis(5));
    assert_eq!(p.received(1), vec![b"back".to_vec()]);
}

#[test]
fn padding_hides_lengths_to_16_or_32_bytes() {
    for pad in [16usize, 32] {
        let mut cfg = NodeConfig::default();
        cfg.link.pad_to = pad;
        let mut p = Pair::with_config(10, cfg);
        p.connect();
        p.drive_for(Duration::from_millis(5));
        let r = p.route();
        for len in [1usize, 5, 17, 100, 333] {
            let now = p.now;
            p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, &vec![7u8; len]).unwrap();
            p.drive_for(Duration::from_millis(2));
        }
        for (_, b) in &p.sent {
            if let Ok(Packet::Data(_)) = Packet::parse(b) {
                assert_eq!((b.len() - DATA_HEADER_LEN - 16) % pad, 0, "ciphertext padded to {pad}");
            }
        }
        assert_eq!(p.received(1).len(), 5);
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random datagrams and mutations of real ones never panic a node, never take its link
        /// down, and are all counted; real traffic keeps flowing afterwards.
        #[test]
        fn random_and_mutated_datagrams_are_harmless(
            junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1600), 1..20),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<usize>()), 1..40),
        ) {
            let mut p = Pair::new(11);
            p.connect();
            p.drive_for(Duration::from_millis(5));
            let r = p.route();
            let real: Vec<Vec<u8>> = p.sent.iter().filter(|(f, _)| *f == 0).map(|(_, b)| b.clone()).collect();
            let mut fed = 0u64;
            for j in junk {
                p.deliver(1, 0, j);
                fed += 1;
            }
            for (which, val, pos) in flips {
                let mut b = real[which % real.len()].clone();
                let i = pos % b.len();
                b[i] ^= val.max(1);
                b.truncate(b.len() - (pos % 3) * (pos % b.len() / 2));
                p.deliver(1, 0, b);
                fed += 1;
            }
            let counted: u64 = p.nodes[1].links().iter().map(|l| l.stats.rejected.total()).sum::<u64>()
                + p.nodes[1].stats().rejected.total();
            prop_assert_eq!(counted, fed, "every bad datagram counted once");
            prop_assert_eq!(p.link_state(1), LinkState::Up);
            let now = p.now;
            p.nodes[0].send(now, r, skyroute_proto::Class::Bulk, b"after fuzz").unwrap();
            p.drive_for(Duration::from_millis(5));
            prop_assert_eq!(p.received(1), vec![b"after fuzz".to_vec()]);
        }
    }
}

/// The peer moved: its newest packet arrives from a new address, then a late one still comes
/// from the old address. The link follows the newest and stays there.
#[test]
fn a_late_packet_from_the_old_address_does_not_move_the_link_back() {
    let mut cfg = NodeConfig::default();
    cfg.link.keepalive = Some(Duration::from_millis(250));
    let mut p = Pair::with_config(41, cfg);
    p.connect();
    p.drive_for(Duration::from_secs(1));
    assert_eq!(p.nodes[1].links()[0].state, LinkState::Up);
    // Collect node 0's next data packets without delivering them.
    p.mute[0] = true;
    let before = p.sent.len();
    p.drive_for(Duration::from_millis(2500));
    let mut data: Vec<Vec<u8>> = p.sent[before..]
        .iter()
        .filter(|(from, d)| *from == 0 && matches!(Packet::parse(d), Ok(Packet::Data(_))))
        .map(|(_, d)| d.clone())
        .collect();
    assert!(data.len() >= 2, "node 0 sent {} data packets", data.len());
    let (mut late, mut newest) = (data.remove(0), data.pop().unwrap());
    let now = p.now;
    p.nodes[1].handle_datagram(now, 9, &mut newest);
    assert_eq!(p.nodes[1].links()[0].addr, 9, "the newest packet moves the link");
    p.nodes[1].handle_datagram(now, 0, &mut late);
    assert_eq!(p.nodes[1].links()[0].addr, 9, "a late packet from the old address does not move it back");
    assert_eq!(p.nodes[1].links()[0].stats.rejected.total(), 0, "and it was accepted, not refused");
}

#[test]
fn network_changed_probes_up_links_and_redials_down_ones_at_once() {
    let mut p = Pair::new(21);
    p.connect();
    p.drive_for(Duration::from_millis(5));
    assert_eq!(p.link_state(0), LinkState::Up);
    // Just after traffic, nothing is due for a while...
    p.drive_for(Duration::from_secs(3));
    let now = p.now;
    assert!(p.nodes[0].poll_timeout().is_none_or(|t| t > now + Duration::from_millis(100)));
    assert!(next_tx(&mut p.nodes[0], now).is_none());
    // ...until the OS says the network changed: a probe goes out now, and the peer acks it.
    p.nodes[0].network_changed(now);
    let mut probe = next_tx(&mut p.nodes[0], now).expect("a probe at once").1;
    p.deliver(1, 0, probe.clone());
    p.drive_for(Duration::from_millis(50));
    assert!(p.sent.iter().any(|(f, _)| *f == 1), "answered");
    assert_eq!(p.rejected(1, Reject::Replayed), 0);
    p.deliver(1, 0, std::mem::take(&mut probe));
    assert_eq!(p.rejected(1, Reject::Replayed), 1, "a probe is authenticated like any packet");

    // A probe that nobody answers finds the dead path; the dialled link then waits out its
    // backoff, which network_changed cuts short.
    p.mute = [true, true];
    let now = p.now;
    p.nodes[0].network_changed(now);
    p.drive_for(Duration::from_secs(40));
    assert_ne!(p.link_state(0), LinkState::Up);
    p.mute = [false, false];
    let now = p.now;
    let waiting = p.nodes[0].poll_timeout().unwrap();
    p.nodes[0].network_changed(now);
    assert!(p.nodes[0].poll_timeout().unwrap() <= now && waiting > now, "handshake now, not at {waiting:?}");
    p.drive_for(Duration::from_millis(50));
    assert_eq!(p.link_state(0), LinkState::Up);
}

mod copies {
    use super::*;
    use skyroute_proto::link::{Link, LinkConfig, LinkId, MAX_HANDSHAKE_COPIES};
    use skyroute_proto::noise as handshake;

    /// `b` probes `a` and `a` hears it: nothing `a` sent is unanswered any more.
    fn answered(a: &mut Link<u8>, b: &mut Link<u8>, now: Instant) {
        b.probe_now(now);
        for mut p in drain(b, now) {
            if let Ok(Packet::Data(h)) = Packet::parse(&p) {
                a.open(now, &h, &mut p).unwrap();
            }
        }
    }

    /// Every datagram `l` has to send now.
    fn drain(l: &mut Link<u8>, now: Instant) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| l.poll_transmit(now)).take(100).collect()
    }

    #[test]
    fn a_lossy_links_handshakes_go_in_copies_and_a_clean_ones_once() {
        let mut rng = ChaCha20Rng::seed_from_u64(31);
        let (ka, kb) = (SecretKey::generate(&mut rng), SecretKey::generate(&mut rng));
        let now = Instant::now(); // test-only clock
        let cfg = LinkConfig::default();
        let mut a = Link::new(LinkId(1), kb.public_key(), 1u8, 0, cfg.clone(), true, now);
        let mut b = Link::new(LinkId(1), ka.public_key(), 0u8, 0, cfg, false, now);
        // What b's forwarder would report of a link losing 90% of its datagrams.
        b.set_outcomes(100, 900);
        // The first contact: one init, one answer.
        a.start_handshake(now, &mut rng, &ka, 11);
        let inits = drain(&mut a, now);
        assert_eq!(inits.len(), 1, "a link never up knows nothing of its loss");
        let Ok(Packet::HandshakeInit(init)) = Packet::parse(&inits[0]) else { panic!("an init") };
        let r = handshake::respond(handshake::LINK_PROLOGUE, &mut rng, &kb, &init, 22).unwrap();
        assert!(b.on_handshake_init(now, &kb, &inits[0], r, 22));
        b.answer_in_copies();
        let answers = drain(&mut b, now);
        assert_eq!(answers.len(), 1);
        assert!(answers[0].len() <= inits[0].len(), "an answer is never larger than the init");
        let Ok(Packet::HandshakeResp(resp)) = Packet::parse(&answers[0]) else { panic!("a response") };
        a.on_handshake_resp(now, &ka, &resp).unwrap();
        let mut probe = drain(&mut a, now).remove(0);
        let Ok(Packet::Data(h)) = Packet::parse(&probe) else { panic!("data") };
        b.open(now, &h, &mut probe).unwrap();
        assert_eq!((a.state(), b.state()), (LinkState::Up, LinkState::Up));

        // Up and clean: a new handshake goes once.
        answered(&mut a, &mut b, now);
        a.set_outcomes(1000, 0);
        a.start_handshake(now, &mut rng, &ka, 12);
        assert_eq!(drain(&mut a, now).len(), 1);
        // Up and losing 90% of its datagrams: copies, each the same init, answered in copies.
        a.set_outcomes(100, 900);
        for (idx, asked) in [(13u32, false), (14, true)] {
            answered(&mut a, &mut b, now);
            a.start_handshake(now, &mut rng, &ka, idx);
            let inits = drain(&mut a, now);
            assert_eq!(inits.len() as u32, MAX_HANDSHAKE_COPIES);
            assert!(inits.iter().all(|i| *i == inits[0]), "copies of one init");
            let Ok(Packet::HandshakeInit(init)) = Packet::parse(&inits[0]) else { panic!("an init") };
            let r = handshake::respond(handshake::LINK_PROLOGUE, &mut rng, &kb, &init, idx + 10).unwrap();
            assert!(b.on_handshake_init(now, &kb, &inits[0], r, idx + 10));
            // The node asks for copies only when the init came from the link's own address
            // (one replayed from elsewhere gets one answer).
            if asked {
                b.answer_in_copies();
            }
            let answers = drain(&mut b, now);
            assert_eq!(answers.len() as u32, if asked { MAX_HANDSHAKE_COPIES } else { 1 });
            assert!(answers.iter().all(|x| *x == answers[0]));
        }
    }
}
