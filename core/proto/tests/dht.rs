//! The DHT through its public API: records (signature, limits, expiry, replay), decoders fed
//! random bytes, and lookups on a small network with gone and hostile nodes.

use std::collections::BTreeMap;
use std::time::Instant;

use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use skyroute_proto::dht::{
    self, service_address, service_key, Contact, Dht, DhtConfig, DhtEvent, Message, Record, RecordError, SignedRecord,
};
use skyroute_proto::SecretKey;

const NOW: u64 = 1_800_000_000;

fn key(seed: u64) -> SecretKey {
    SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

fn record(k: &SecretKey, seq: u64) -> Record {
    Record {
        key: k.public_key(),
        seq,
        issued: NOW,
        ttl: 600,
        addrs: vec!["udp://192.0.2.1:7070".into()],
        roles: dht::record::ROLE_GATEWAY,
        cost: 3,
        services: vec![service_key("blockchain-x")],
        guards: vec![],
    }
}

#[test]
fn records_verify_and_refuse_forgery_expiry_and_oversize() {
    let k = key(1);
    let r = record(&k, 1).sign(&k).unwrap();
    assert_eq!(r.verify(NOW), Ok(()));
    let (back, n) = SignedRecord::decode(&r.encode()).unwrap();
    assert_eq!((back, n), (r.clone(), r.encode().len()));

    let mut forged = r.clone();
    forged.record.addrs = vec!["udp://203.0.113.9:1".into()];
    assert_eq!(forged.verify(NOW), Err(RecordError::BadSignature), "a changed address breaks the signature");
    let mut forged = r.clone();
    forged.record.key = key(2).public_key();
    assert_eq!(forged.verify(NOW), Err(RecordError::BadSignature), "another key");
    assert_eq!(record(&k, 1).sign(&key(2)).unwrap_err(), RecordError::BadSignature, "signing for another key");
    assert_eq!(r.verify(NOW + 600), Err(RecordError::Expired));
    assert_eq!(r.verify(NOW - 3600), Err(RecordError::FromFuture));
    let mut big = record(&k, 1);
    big.addrs = vec!["x".repeat(65)];
    assert_eq!(big.sign(&k).unwrap_err(), RecordError::TooLarge);
    let mut many = record(&k, 1);
    many.services = vec![[0; 32]; 9];
    assert_eq!(many.sign(&k).unwrap_err(), RecordError::TooLarge);
    let mut long = record(&k, 1);
    long.ttl = dht::record::MAX_TTL_SECS + 1;
    assert_eq!(long.sign(&k).unwrap_err(), RecordError::TooLarge);
    // A high-s twin of a valid signature is refused (one encoding per signature).
    let mut twin = r.clone();
    twin.signature[0] ^= 0x80;
    assert!(twin.verify(NOW).is_err());
    // Guards: at most MAX_GUARDS, never the node itself; they survive encoding.
    let k = key(41);
    let mut r = record(&k, 1);
    r.guards = vec![key(42).public_key(), key(43).public_key()];
    let signed = r.clone().sign(&k).unwrap();
    assert_eq!(SignedRecord::decode(&signed.encode()).unwrap().0, signed);
    let mut many = r.clone();
    many.guards = (0..=dht::record::MAX_GUARDS as u64).map(|i| key(50 + i).public_key()).collect();
    assert_eq!(many.sign(&k).unwrap_err(), RecordError::TooLarge);
    let mut selfish = r;
    selfish.guards = vec![k.public_key()];
    assert!(selfish.sign(&k).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SignedRecord::decode(&bytes);
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn truncated_messages_are_errors(cut in 0usize..200) {
        let k = key(3);
        let m = Message::Values { id: 9, records: vec![record(&k, 1).sign(&k).unwrap()], contacts: vec![Contact { key: k.public_key(), addr: "sim://1:1".into() }] };
        let e = m.encode();
        prop_assert_eq!(Message::decode(&e).unwrap(), m);
        if cut < e.len() {
            prop_assert!(Message::decode(&e[..cut]).is_err());
        }
    }
}

/// A few DHT nodes passing messages directly (no delay, no loss).
struct Net {
    nodes: Vec<Dht>,
    keys: Vec<SecretKey>,
    index: BTreeMap<skyroute_proto::Address, usize>,
    gone: Vec<bool>,
    /// Answers every request with only itself.
    eclipse: Vec<bool>,
    now: Instant,
    events: Vec<(usize, DhtEvent)>,
}

impl Net {
    fn new(n: usize) -> Net {
        let keys: Vec<SecretKey> = (0..n).map(|i| key(100 + i as u64)).collect();
        let nodes: Vec<Dht> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Dht::new(Contact { key: k.public_key(), addr: format!("sim://{i}:1") }, DhtConfig::default()))
            .collect();
        let index = nodes.iter().enumerate().map(|(i, d)| (d.me().address(), i)).collect();
        let mut net = Net {
            nodes,
            keys,
            index,
            gone: vec![false; n],
            eclipse: vec![false; n],
            now: Instant::now(),
            events: Vec::new(),
        };
        for i in 1..n {
            let c = net.nodes[i / 2].me().clone();
            net.nodes[i].add_contact(c);
            let me = net.nodes[i].me().address();
            let now = net.now;
            net.nodes[i].find_node(now, me);
            net.run();
        }
        for i in 0..n {
            let r = record(&net.keys[i], 1).sign(&net.keys[i]).unwrap();
            let now = net.now;
            net.nodes[i].publish(now, r);
            net.run();
        }
        net.events.clear();
        net
    }

    fn run(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(e) = self.nodes[i].poll_event() {
                    self.events.push((i, e));
                }
                while let Some((to, bytes)) = self.nodes[i].poll_transmit() {
                    moved = true;
                    let j = self.index[&to.address()];
                    let from = self.nodes[i].me().clone();
                    if self.gone[j] {
                        continue;
                    }
                    if self.eclipse[j] {
                        let me = vec![self.nodes[j].me().clone()];
                        let reply = match Message::decode(&bytes).unwrap() {
                            Message::FindNode { id, .. } => Message::Nodes { id, contacts: me },
                            Message::FindValue { id, .. } => Message::Values { id, records: vec![], contacts: me },
                            _ => continue,
                        };
                        let c = self.nodes[j].me().clone();
                        let now = self.now;
                        let _ = self.nodes[i].handle(now, NOW, &c, &reply.encode());
                        continue;
                    }
                    let now = self.now;
                    let _ = self.nodes[j].handle(now, NOW, &from, &bytes);
                }
            }
            if !moved {
                // Let requests to gone nodes time out.
                let next = self.nodes.iter().filter_map(|n| n.poll_timeout()).min();
                match next {
                    Some(t) => {
                        self.now = self.now.max(t);
                        let now = self.now;
                        for n in &mut self.nodes {
                            n.handle_timeout(now, NOW);
                        }
                    }
                    None => return,
                }
            }
        }
        panic!("the network did not settle");
    }

    fn lookup(&mut self, from: usize, target: skyroute_proto::Address) -> dht::LookupResult {
        let now = self.now;
        let id = self.nodes[from].find_value(now, target);
        self.run();
        self.events
            .iter()
            .find_map(|(i, e)| match e {
                DhtEvent::LookupDone(r) if *i == from && r.id == id => Some(r.clone()),
                _ => None,
            })
            .expect("the lookup finished")
    }
}

#[test]
fn lookups_find_nodes_and_services_with_gone_and_eclipsing_nodes() {
    let mut net = Net::new(80);
    let n = net.nodes.len();
    for i in (0..n).filter(|i| i % 10 == 3) {
        net.gone[i] = true;
    }
    for i in (0..n).filter(|i| i % 10 == 6) {
        net.eclipse[i] = true;
    }
    let honest: Vec<usize> = (0..n).filter(|i| !net.gone[*i] && !net.eclipse[*i]).collect();
    let mut found = 0;
    for (a, b) in honest.iter().zip(honest.iter().rev()) {
        if a == b {
            continue;
        }
        let target = net.nodes[*b].me().address();
        let r = net.lookup(*a, target);
        if r.records.iter().any(|x| x.record.key == net.keys[*b].public_key()) {
            found += 1;
        }
        assert!(r.messages as usize <= DhtConfig::default().max_queries);
    }
    assert_eq!(found, honest.len() - honest.len() % 2, "every honest node found despite 10% gone and 10% eclipsing");
    // A service's nodes: every node listed it here.
    let r = net.lookup(honest[0], service_address(&service_key("blockchain-x")));
    assert!(r.records.len() >= 5, "{} service records", r.records.len());
    // A key nobody published: no record, and the lookup ends.
    let r = net.lookup(honest[1], key(999).public_key().address());
    assert!(r.records.is_empty() && !r.closest.is_empty());
    let timeouts: u64 = net.nodes.iter().map(|d| d.stats().timeouts).sum();
    assert!(timeouts > 0, "requests to gone nodes timed out");
}

#[test]
fn stores_refuse_others_records_replays_and_junk() {
    let mut net = Net::new(12);
    let (a, b) = (1, 2);
    let from_b = net.nodes[b].me().clone();
    // b sends a's record: refused (only a node stores its own).
    let ra = record(&net.keys[a], 5).sign(&net.keys[a]).unwrap();
    let now = net.now;
    assert!(net.nodes[3].handle(now, NOW, &from_b, &Message::Store { record: ra }.encode()).is_err());
    // A holder takes b's record at seq 2; the same again or an older one is a replay; a newer
    // one replaces it.
    let holder = 3;
    let store = |seq| Message::Store { record: record(&net.keys[b], seq).sign(&net.keys[b]).unwrap() }.encode();
    assert_eq!(net.nodes[holder].handle(now, NOW, &from_b, &store(2)), Ok(()));
    assert_eq!(net.nodes[holder].handle(now, NOW, &from_b, &store(2)), Err(RecordError::Stale));
    assert_eq!(net.nodes[holder].handle(now, NOW, &from_b, &store(1)), Err(RecordError::Stale));
    assert_eq!(net.nodes[holder].handle(now, NOW, &from_b, &store(3)), Ok(()));
    // An expired record and a forged one.
    let mut old = record(&net.keys[b], 9);
    old.issued = NOW - 7200;
    let old = old.sign(&net.keys[b]).unwrap();
    assert_eq!(
        net.nodes[holder].handle(now, NOW, &from_b, &Message::Store { record: old }.encode()),
        Err(RecordError::Expired)
    );
    let mut forged = record(&net.keys[b], 10).sign(&net.keys[b]).unwrap();
    forged.record.cost = 0;
    assert_eq!(
        net.nodes[holder].handle(now, NOW, &from_b, &Message::Store { record: forged }.encode()),
        Err(RecordError::BadSignature)
    );
    // Junk and a reply nobody asked for: errors and counters, nothing else.
    assert!(net.nodes[holder].handle(now, NOW, &from_b, &[9, 9, 9]).is_err());
    let _ = net.nodes[holder].handle(now, NOW, &from_b, &Message::Nodes { id: 77, contacts: vec![] }.encode());
    let s = net.nodes[holder].stats();
    assert!(s.malformed >= 1 && s.unexpected_replies >= 1 && s.stale_records >= 2 && s.bad_records >= 2, "{s:?}");
    assert!(s.stores_refused >= 1, "another node's record: {s:?}");
}

/// Peer exchange: a node that found a service's peers passes them on when asked; the asker
/// learns them in one request and does not wander off through the contacts in the answer.
#[test]
fn peer_exchange_passes_on_learned_records_in_one_request() {
    let mut net = Net::new(30);
    let service = service_address(&service_key("blockchain-x"));
    let found = net.lookup(0, service);
    assert!(found.records.len() >= 5, "{} service records", found.records.len());
    let learned: Vec<_> = net.nodes[0].learned().map(|r| r.record.key).collect();
    let others = found.records.iter().filter(|r| r.record.key != net.keys[0].public_key()).count();
    assert_eq!(learned.len(), others, "lookup results are kept (not our own)");
    let asker = 29;
    let now = net.now;
    let a = net.nodes[0].me().clone();
    let out_before = net.nodes[asker].stats().messages_out;
    let id = net.nodes[asker].exchange(now, a, service);
    net.run();
    let r = net
        .events
        .iter()
        .find_map(|(i, e)| match e {
            DhtEvent::LookupDone(r) if *i == asker && r.id == id => Some(r.clone()),
            _ => None,
        })
        .expect("the exchange finished");
    assert_eq!(r.messages, 1);
    assert_eq!(net.nodes[asker].stats().messages_out - out_before, 1, "one request, no wandering");
    let got: Vec<_> = r.records.iter().map(|x| x.record.key).collect();
    assert!(learned.iter().filter(|k| **k != net.keys[asker].public_key()).all(|k| got.contains(k)), "{got:?}");
    // A node's record learned the same way.
    let other = learned[0];
    let a = net.nodes[0].me().clone();
    let id = net.nodes[asker].exchange(net.now, a, other.address());
    net.run();
    assert!(net.events.iter().any(|(i, e)| matches!(e,
        DhtEvent::LookupDone(r) if *i == asker && r.id == id && r.records.iter().any(|x| x.record.key == other))));
}
