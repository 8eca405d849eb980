//! `skyroute sim dht`: N nodes join the DHT, publish their signed records (some also a
//! service), then look each other up while a fraction of the nodes is gone and others answer
//! every request with themselves only (the eclipse attempt). Messages take 10-50 ms of
//! virtual time; requests to gone nodes time out. Deterministic per seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use skyroute_proto::dht::{self, Contact, Dht, DhtConfig, DhtEvent, Message, Record};
use skyroute_proto::SecretKey;

/// The wall clock's unix seconds at virtual time zero (records carry absolute times).
const UNIX_BASE: u64 = 1_800_000_000;
/// The service a few nodes publish ("nodes syncing blockchain X").
const SERVICE: &str = "blockchain-x";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    Gone,
    /// Answers every lookup with only itself and stores nothing.
    Eclipse,
}

#[derive(Debug, Serialize)]
pub struct DhtReport {
    pub scenario: &'static str,
    pub seed: u64,
    pub nodes: usize,
    pub gone_fraction: f64,
    pub eclipse_fraction: f64,
    pub lookups: usize,
    pub success_rate: f64,
    pub median_hops: u32,
    pub p99_hops: u32,
    pub messages_per_lookup: f64,
    pub service_lookups: usize,
    pub service_success_rate: f64,
    pub memory_per_node_bytes: usize,
    pub messages_total: u64,
    pub records_refused: u64,
    pub sim_time_s: f64,
    pub wall_time_ms: f64,
}

impl DhtReport {
    pub fn table(&self) -> String {
        format!(
            "nodes                 {}\ngone / eclipse        {:.0}% / {:.0}%\nlookups               {}\nsuccess rate          {:.4}\nhops median / p99     {} / {}\nmessages per lookup   {:.1}\nservice lookups       {} (success {:.3})\nmemory per node       {} bytes\nsimulated / wall      {:.1} s / {:.0} ms\n",
            self.nodes,
            self.gone_fraction * 100.0,
            self.eclipse_fraction * 100.0,
            self.lookups,
            self.success_rate,
            self.median_hops,
            self.p99_hops,
            self.messages_per_lookup,
            self.service_lookups,
            self.service_success_rate,
            self.memory_per_node_bytes,
            self.sim_time_s,
            self.wall_time_ms
        )
    }
}

/// A message in flight: (arrival µs, sequence, to, from, bytes).
type Delivery = (u64, u64, usize, usize, Vec<u8>);

struct Sim {
    t0: Instant,
    now_us: u64,
    rng: ChaCha20Rng,
    nodes: Vec<Dht>,
    behaviour: Vec<Behaviour>,
    index: std::collections::BTreeMap<skyroute_proto::Address, usize>,
    queue: BinaryHeap<Reverse<Delivery>>,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    seq: u64,
    events: Vec<(usize, DhtEvent)>,
    messages: u64,
}

impl Sim {
    fn now(&self) -> Instant {
        self.t0 + Duration::from_micros(self.now_us)
    }

    fn unix(&self) -> u64 {
        UNIX_BASE + self.now_us / 1_000_000
    }

    /// Moves what node `i` wants to send onto the queue and re-arms its timer.
    fn flush(&mut self, i: usize) {
        while let Some((to, bytes)) = self.nodes[i].poll_transmit() {
            let Some(&j) = self.index.get(&to.address()) else { continue };
            let delay = 10_000 + self.rng.next_u64() % 40_000;
            self.seq += 1;
            self.messages += 1;
            self.queue.push(Reverse((self.now_us + delay, self.seq, j, i, bytes)));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            self.events.push((i, e));
        }
        if let Some(t) = self.nodes[i].poll_timeout() {
            let us = t.saturating_duration_since(self.t0).as_micros() as u64;
            self.timers.push(Reverse((us, i)));
        }
    }

    fn deliver(&mut self, to: usize, from: usize, bytes: Vec<u8>) {
        let (now, unix) = (self.now(), self.unix());
        let from_contact = self.nodes[from].me().clone();
        match self.behaviour[to] {
            Behaviour::Gone => {}
            Behaviour::Eclipse => {
                let me = vec![self.nodes[to].me().clone()];
                let reply = match Message::decode(&bytes) {
                    Ok(Message::FindNode { id, .. }) => Some(Message::Nodes { id, contacts: me }),
                    Ok(Message::FindValue { id, .. }) => {
                        Some(Message::Values { id, records: Vec::new(), contacts: me })
                    }
                    _ => None,
                };
                if let Some(r) = reply {
                    let delay = 10_000 + self.rng.next_u64() % 40_000;
                    self.seq += 1;
                    self.messages += 1;
                    self.queue.push(Reverse((self.now_us + delay, self.seq, from, to, r.encode())));
                }
            }
            Behaviour::Honest => {
                let _ = self.nodes[to].handle(now, unix, &from_contact, &bytes);
                self.flush(to);
            }
        }
    }

    /// Runs until nothing is queued or due.
    fn run(&mut self) {
        loop {
            let next_msg = self.queue.peek().map(|Reverse((t, ..))| *t);
            let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
            match (next_msg, next_timer) {
                (None, None) => return,
                (Some(m), t) if t.is_none_or(|t| m <= t) => {
                    let Some(Reverse((at, _, to, from, bytes))) = self.queue.pop() else { return };
                    self.now_us = self.now_us.max(at);
                    self.deliver(to, from, bytes);
                }
                _ => {
                    let Some(Reverse((at, i))) = self.timers.pop() else { return };
                    self.now_us = self.now_us.max(at);
                    let (now, unix) = (self.now(), self.unix());
                    if self.nodes[i].poll_timeout().is_some_and(|d| d <= now) {
                        self.nodes[i].handle_timeout(now, unix);
                        self.flush(i);
                    }
                }
            }
        }
    }
}

/// Runs the scenario: `nodes` nodes, `gone` and `eclipse` fractions, `lookups` lookups.
pub fn dht(seed: u64, nodes: usize, gone: f64, eclipse: f64, lookups: usize) -> DhtReport {
    let wall = Instant::now(); // test-only clock: wall time the scenario reports
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let keys: Vec<SecretKey> = (0..nodes).map(|_| SecretKey::generate(&mut rng)).collect();
    let contacts: Vec<Contact> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Contact { key: k.public_key(), addr: format!("sim://{i}:7070") })
        .collect();
    let mut sim = Sim {
        t0: Instant::now(), // test-only clock: wall time the scenario reports
        now_us: 0,
        rng: ChaCha20Rng::seed_from_u64(seed ^ 0x5eed),
        nodes: contacts.iter().map(|c| Dht::new(c.clone(), DhtConfig::default())).collect(),
        behaviour: vec![Behaviour::Honest; nodes],
        index: contacts.iter().enumerate().map(|(i, c)| (c.address(), i)).collect(),
        queue: BinaryHeap::new(),
        timers: BinaryHeap::new(),
        seq: 0,
        events: Vec::new(),
        messages: 0,
    };
    let service = dht::service_key(SERVICE);
    let offers_service = |i: usize| i % 50 == 7;

    // Join: each node knows one earlier node and looks itself up; in batches, so later nodes
    // join a network that has settled.
    for i in 1..nodes {
        let boot = (rng.next_u64() % i as u64) as usize;
        sim.nodes[i].add_contact(contacts[boot].clone());
        let now = sim.now();
        let me = contacts[i].address();
        sim.nodes[i].find_node(now, me);
        sim.flush(i);
        if i % 64 == 0 || i == nodes - 1 {
            sim.run();
        }
    }
    // Publish.
    for (i, k) in keys.iter().enumerate() {
        let signed = Record {
            key: contacts[i].key,
            seq: 1,
            issued: sim.unix(),
            ttl: 3600,
            addrs: vec![contacts[i].addr.clone()],
            roles: 0,
            cost: 0,
            services: if offers_service(i) { vec![service] } else { Vec::new() },
            guards: Vec::new(),
        }
        .sign(k);
        // Signing with the node's own key within the limits cannot fail; a node that could
        // not sign would simply not publish.
        let Ok(record) = signed else { continue };
        let now = sim.now();
        sim.nodes[i].publish(now, record);
        sim.flush(i);
        if i % 64 == 0 || i == nodes - 1 {
            sim.run();
        }
    }
    sim.events.clear();
    let messages_before = sim.messages;

    // Some go, some turn hostile.
    for i in 0..nodes {
        let x = (rng.next_u64() % 1_000_000) as f64 / 1e6;
        sim.behaviour[i] = if x < gone {
            Behaviour::Gone
        } else if x < gone + eclipse {
            Behaviour::Eclipse
        } else {
            Behaviour::Honest
        };
    }
    let honest: Vec<usize> = (0..nodes).filter(|i| sim.behaviour[*i] == Behaviour::Honest).collect();
    let mut wanted = std::collections::BTreeMap::new();
    for n in 0..lookups {
        let from = honest[(rng.next_u64() % honest.len() as u64) as usize];
        let mut to = honest[(rng.next_u64() % honest.len() as u64) as usize];
        if to == from {
            to = honest[(n + 1) % honest.len()];
        }
        let now = sim.now();
        let id = sim.nodes[from].find_value(now, contacts[to].address());
        wanted.insert((from, id), to);
        sim.flush(from);
        if n % 100 == 99 {
            sim.run();
        }
    }
    let service_lookups = (lookups / 20).max(5);
    let mut service_wanted = std::collections::BTreeSet::new();
    for _ in 0..service_lookups {
        let from = honest[(rng.next_u64() % honest.len() as u64) as usize];
        let now = sim.now();
        let id = sim.nodes[from].find_value(now, dht::service_address(&service));
        service_wanted.insert((from, id));
        sim.flush(from);
    }
    sim.run();

    let (mut ok, mut hops, mut msgs, mut service_ok) = (0usize, Vec::new(), 0u64, 0usize);
    for (i, e) in &sim.events {
        let DhtEvent::LookupDone(r) = e else { continue };
        if let Some(to) = wanted.get(&(*i, r.id)) {
            msgs += r.messages as u64;
            if r.records.iter().any(|x| x.record.key == contacts[*to].key) {
                ok += 1;
                hops.push(r.hops);
            }
        } else if service_wanted.contains(&(*i, r.id)) && !r.records.is_empty() {
            service_ok += 1;
        }
    }
    hops.sort_unstable();
    let pct =
        |p: f64| hops.get(((hops.len() as f64 * p) as usize).min(hops.len().saturating_sub(1))).copied().unwrap_or(0);
    let memory = sim.nodes.iter().map(|n| n.memory_bytes() + std::mem::size_of::<Dht>()).sum::<usize>() / nodes.max(1);
    let refused = sim.nodes.iter().map(|n| n.stats().bad_records + n.stats().stores_refused).sum();
    DhtReport {
        scenario: "dht",
        seed,
        nodes,
        gone_fraction: gone,
        eclipse_fraction: eclipse,
        lookups,
        success_rate: ok as f64 / lookups.max(1) as f64,
        median_hops: pct(0.5),
        p99_hops: pct(0.99),
        messages_per_lookup: msgs as f64 / lookups.max(1) as f64,
        service_lookups,
        service_success_rate: service_ok as f64 / service_lookups as f64,
        memory_per_node_bytes: memory,
        messages_total: sim.messages - messages_before,
        records_refused: refused,
        sim_time_s: sim.now_us as f64 / 1e6,
        wall_time_ms: wall.elapsed().as_secs_f64() * 1000.0,
    }
}
