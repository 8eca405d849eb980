//! Discovery: a Kademlia-style DHT over node addresses (the seed's "finding peers"). Nodes
//! publish signed, expiring [`Record`]s (key, transport addresses, roles, transit cost,
//! services) at the nodes closest to their address and to each service key; anyone looks a
//! node up by address, or the nodes of a service by its key hash. Sans-IO like the rest: fed
//! messages with `now` (and the wall clock's unix seconds, for record expiry), it returns
//! messages to send and a deadline.
//!
//! Bounds against abuse: records are verified (signature, limits, expiry) before they are
//! stored or used, and only the record's own node may store it (one record and at most
//! [`record::MAX_SERVICES`] service entries per key); stores are capped per key and in total;
//! answers carry at most K contacts, a lookup sends at most `max_queries` requests, and a
//! contact only counts as closer if its key hashes closer (a node answering every lookup with
//! itself, the eclipse attempt, is just one more contact that did not have the value).

pub mod message;
pub mod record;
pub mod table;
pub mod topology;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

pub use message::Message;
pub use record::{service_address, service_key, Record, RecordError, SignedRecord};
pub use table::{distance, Contact, Table, K};

use crate::identity::{Address, ADDRESS_LEN};
use crate::types::Buckets;

#[derive(Debug, Clone)]
/// DHT settings.
pub struct DhtConfig {
    /// Requests in flight per lookup.
    pub alpha: usize,
    /// How long a request waits for its answer.
    pub request_timeout: Duration,
    /// Requests one lookup may send.
    pub max_queries: usize,
    /// Records held per DHT key, and in total.
    pub max_per_key: usize,
    /// Records held in total.
    pub max_records: usize,
    /// Verified records learned from our own lookups and exchanges, kept to pass on (PEX).
    pub max_learned: usize,
    /// Requests (find, store) per second one contact may make; more are dropped unanswered.
    pub requests_per_s: u32,
    /// Requests one contact may make at once.
    pub request_burst: u32,
    /// Requests per second the node answers from all contacts together.
    pub max_requests_per_s: u32,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            alpha: 3,
            request_timeout: Duration::from_millis(1000),
            max_queries: 64,
            max_per_key: message::MAX_VALUES,
            max_records: 10_000,
            max_learned: 1024,
            requests_per_s: 50,
            request_burst: 50,
            max_requests_per_s: 1000,
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub struct LookupResult {
    /// The lookup's id.
    pub id: u32,
    /// The address looked up.
    pub target: Address,
    /// Verified records for the target (a node's own, or a service's nodes).
    pub records: Vec<SignedRecord>,
    /// The closest contacts that answered.
    pub closest: Vec<Contact>,
    /// Hops to the answer (1: a contact we already knew had it).
    pub hops: u32,
    /// Requests sent.
    pub messages: u32,
}

#[derive(Debug, Clone)]
/// What the DHT tells its driver.
pub enum DhtEvent {
    /// A lookup finished.
    LookupDone(LookupResult),
    /// A publish reached this many of the nodes closest to the record's keys.
    Published {
        /// The publish's id.
        id: u32,
        /// Nodes that took the record.
        stored_at: usize,
    },
}

/// Counters (what was refused, by reason).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Messages that did not parse.
    pub malformed: u64,
    /// Records refused (bad signature, expired, too large).
    pub bad_records: u64,
    /// Records older than the one held (replays).
    pub stale_records: u64,
    /// Stores refused (full, or not one of the closest).
    pub stores_refused: u64,
    /// Answers to no request of ours.
    pub unexpected_replies: u64,
    /// Requests that got no answer in time.
    pub timeouts: u64,
    /// Records held now.
    pub records_held: u64,
    /// Requests dropped over their contact's or the node's request rate.
    pub requests_refused: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CandState {
    New,
    Waiting,
    Answered,
    Failed,
}

struct Cand {
    contact: Contact,
    state: CandState,
    depth: u32,
}

enum Purpose {
    Find,
    Value,
    /// Peer exchange: one contact asked for what it knows of a key; its contacts are not
    /// followed.
    Exchange,
    Publish(Vec<SignedRecord>),
}

struct Lookup {
    target: Address,
    purpose: Purpose,
    cands: BTreeMap<[u8; ADDRESS_LEN], Cand>,
    in_flight: usize,
    messages: u32,
    records: Vec<SignedRecord>,
    found_at: Option<u32>,
}

struct Request {
    lookup: u32,
    peer: Address,
    deadline: Instant,
}

/// A Kademlia DHT node (sans-IO): routing table, held records, lookups in flight.
pub struct Dht {
    me: Contact,
    my_address: Address,
    config: DhtConfig,
    table: Table,
    /// Records by DHT key, each key's records by publisher.
    store: BTreeMap<Address, BTreeMap<Address, SignedRecord>>,
    lookups: BTreeMap<u32, Lookup>,
    requests: BTreeMap<u32, Request>,
    out: VecDeque<(Contact, Vec<u8>)>,
    events: VecDeque<DhtEvent>,
    next_id: u32,
    stats: DhtStats,
    /// Our own latest record (answered directly to lookups for us).
    own: Option<SignedRecord>,
    /// Verified records from our lookups and exchanges, by publisher (oldest dropped first).
    learned: BTreeMap<Address, SignedRecord>,
    learned_order: VecDeque<Address>,
    /// Request rate per contact, and the node's.
    per_contact: Buckets<crate::identity::PublicKey>,
    all_requests: Buckets<()>,
}

/// Whether `r` answers a lookup for `target`: the node's own record, or a record listing a
/// service stored at `target`.
fn answers(r: &SignedRecord, target: &Address) -> bool {
    r.record.key.address() == *target || r.record.services.iter().any(|s| service_address(s) == *target)
}

impl Dht {
    /// A DHT node for `me` with `config`.
    pub fn new(me: Contact, config: DhtConfig) -> Dht {
        let my_address = me.address();
        Dht {
            table: Table::new(my_address),
            me,
            my_address,
            store: BTreeMap::new(),
            lookups: BTreeMap::new(),
            requests: BTreeMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 1,
            stats: DhtStats::default(),
            own: None,
            learned: BTreeMap::new(),
            learned_order: VecDeque::new(),
            per_contact: Buckets::new(config.requests_per_s, config.request_burst, 4096),
            all_requests: Buckets::new(config.max_requests_per_s, config.max_requests_per_s, 1),
            config,
        }
    }

    /// Our own contact.
    pub fn me(&self) -> &Contact {
        &self.me
    }

    /// The routing table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Counters.
    pub fn stats(&self) -> DhtStats {
        let mut s = self.stats.clone();
        s.records_held = self.store.values().map(|m| m.len() as u64).sum();
        s
    }

    /// Approximate memory held: table and records.
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
            + self
                .store
                .values()
                .flat_map(|m| m.values())
                .chain(self.learned.values())
                .map(|r| {
                    std::mem::size_of::<SignedRecord>() + 64 + r.record.addrs.iter().map(|a| a.len()).sum::<usize>()
                })
                .sum::<usize>()
    }

    /// A contact from configuration or another source (bootstrap, PEX).
    pub fn add_contact(&mut self, c: Contact) {
        self.table.seen(&c);
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn send(&mut self, to: Contact, m: &Message) {
        self.stats.messages_out += 1;
        self.out.push_back((to, m.encode()));
    }

    /// Finds the contacts closest to `target` (joining: our own address).
    pub fn find_node(&mut self, now: Instant, target: Address) -> u32 {
        self.start(now, target, Purpose::Find)
    }

    /// Looks up records for `target`: a node's address, or [`service_address`] of a service.
    pub fn find_value(&mut self, now: Instant, target: Address) -> u32 {
        self.start(now, target, Purpose::Value)
    }

    /// Publishes our record at the nodes closest to our address and to each service it lists.
    pub fn publish(&mut self, now: Instant, record: SignedRecord) -> Vec<u32> {
        self.own = Some(record.clone());
        let mut targets = vec![record.record.key.address()];
        targets.extend(record.record.services.iter().map(service_address));
        targets.into_iter().map(|t| self.start(now, t, Purpose::Publish(vec![record.clone()]))).collect()
    }

    /// Peer exchange: asks `peer` (a node just found, e.g. one serving a service) for the
    /// records it holds or learned for `target`. Answers arrive as a [`DhtEvent::LookupDone`].
    pub fn exchange(&mut self, now: Instant, peer: Contact, target: Address) -> u32 {
        self.start_with(now, target, Purpose::Exchange, vec![peer])
    }

    /// Records this node learned from its lookups and exchanges (verified when learned).
    pub fn learned(&self) -> impl Iterator<Item = &SignedRecord> {
        self.learned.values()
    }

    fn learn(&mut self, records: &[SignedRecord]) {
        for r in records {
            let a = r.record.key.address();
            if a == self.my_address || self.config.max_learned == 0 {
                continue;
            }
            match self.learned.get(&a) {
                Some(old) if old.record.seq >= r.record.seq => continue,
                Some(_) => {}
                None => {
                    if self.learned.len() >= self.config.max_learned {
                        if let Some(oldest) = self.learned_order.pop_front() {
                            self.learned.remove(&oldest);
                        }
                    }
                    self.learned_order.push_back(a);
                }
            }
            self.learned.insert(a, r.clone());
        }
    }

    fn start(&mut self, now: Instant, target: Address, purpose: Purpose) -> u32 {
        let from = self.table.closest(&target, K);
        self.start_with(now, target, purpose, from)
    }

    fn start_with(&mut self, now: Instant, target: Address, purpose: Purpose, from: Vec<Contact>) -> u32 {
        let id = self.id();
        let cands = from
            .into_iter()
            .map(|c| (distance(&c.address(), &target), Cand { contact: c, state: CandState::New, depth: 1 }))
            .collect();
        self.lookups.insert(
            id,
            Lookup { target, purpose, cands, in_flight: 0, messages: 0, records: Vec::new(), found_at: None },
        );
        self.step(now, id);
        id
    }

    /// Sends what the lookup may send now, or finishes it.
    fn step(&mut self, now: Instant, id: u32) {
        let Some(l) = self.lookups.get_mut(&id) else { return };
        let done_early = l.found_at.is_some() && matches!(l.purpose, Purpose::Value);
        let mut to_send = Vec::new();
        if !done_early {
            let (alpha, max) = (self.config.alpha, self.config.max_queries as u32);
            let mut pending = false;
            for c in l.cands.values_mut().filter(|c| c.state != CandState::Failed).take(K) {
                match c.state {
                    CandState::New if l.in_flight < alpha && l.messages < max => {
                        c.state = CandState::Waiting;
                        l.in_flight += 1;
                        l.messages += 1;
                        to_send.push(c.contact.clone());
                    }
                    CandState::New | CandState::Waiting => pending = true,
                    _ => {}
                }
            }
            if pending || l.in_flight > 0 || !to_send.is_empty() {
                let (target, value) = (l.target, !matches!(l.purpose, Purpose::Find));
                for c in to_send {
                    let rid = self.id();
                    let m = if value {
                        Message::FindValue { id: rid, key: target }
                    } else {
                        Message::FindNode { id: rid, target }
                    };
                    self.requests.insert(
                        rid,
                        Request { lookup: id, peer: c.address(), deadline: now + self.config.request_timeout },
                    );
                    self.send(c, &m);
                }
                if self.lookups.get(&id).is_some_and(|l| l.in_flight > 0) {
                    return;
                }
            }
        }
        self.finish(id);
    }

    fn finish(&mut self, id: u32) {
        let Some(l) = self.lookups.remove(&id) else { return };
        self.requests.retain(|_, r| r.lookup != id);
        let closest: Vec<Contact> =
            l.cands.values().filter(|c| c.state == CandState::Answered).take(K).map(|c| c.contact.clone()).collect();
        let max_depth = l.cands.values().filter(|c| c.state == CandState::Answered).map(|c| c.depth).max().unwrap_or(0);
        match l.purpose {
            Purpose::Publish(records) => {
                for c in &closest {
                    for r in &records {
                        self.send(c.clone(), &Message::Store { record: r.clone() });
                    }
                }
                self.events.push_back(DhtEvent::Published { id, stored_at: closest.len() });
            }
            Purpose::Find | Purpose::Value | Purpose::Exchange => {
                self.learn(&l.records);
                self.events.push_back(DhtEvent::LookupDone(LookupResult {
                    id,
                    target: l.target,
                    records: l.records,
                    hops: l.found_at.unwrap_or(max_depth),
                    messages: l.messages,
                    closest,
                }))
            }
        }
    }

    /// A message from `from` (its key authenticated by the layer that carried it). `unix_now`:
    /// wall-clock seconds, for record expiry.
    pub fn handle(&mut self, now: Instant, unix_now: u64, from: &Contact, bytes: &[u8]) -> Result<(), RecordError> {
        self.stats.messages_in += 1;
        let m = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e);
            }
        };
        let request = matches!(m, Message::FindNode { .. } | Message::FindValue { .. } | Message::Store { .. });
        if request && !(self.per_contact.take(now, &from.key) && self.all_requests.take(now, &())) {
            self.stats.requests_refused += 1;
            return Err(RecordError::RateLimited);
        }
        match m {
            Message::FindNode { id, target } => {
                self.table.seen(from);
                let contacts = self.table.closest(&target, K);
                self.send(from.clone(), &Message::Nodes { id, contacts });
            }
            Message::FindValue { id, key } => {
                self.table.seen(from);
                let mut records: Vec<SignedRecord> = self
                    .store
                    .get(&key)
                    .map(|m| m.values().filter(|r| r.expires() > unix_now).take(message::MAX_VALUES).cloned().collect())
                    .unwrap_or_default();
                let own = self.own.iter();
                let learned = self.learned.values().filter(|r| answers(r, &key));
                for r in own.chain(learned).filter(|r| answers(r, &key) && r.expires() > unix_now) {
                    if records.len() >= message::MAX_VALUES {
                        break;
                    }
                    if !records.iter().any(|x| x.record.key == r.record.key) {
                        records.push(r.clone());
                    }
                }
                let contacts = self.table.closest(&key, K);
                self.send(from.clone(), &Message::Values { id, records, contacts });
            }
            Message::Store { record } => return self.store_record(unix_now, from, record),
            Message::Nodes { id, contacts } => self.on_reply(now, unix_now, from, id, Vec::new(), contacts),
            Message::Values { id, records, contacts } => self.on_reply(now, unix_now, from, id, records, contacts),
        }
        Ok(())
    }

    fn store_record(&mut self, unix_now: u64, from: &Contact, r: SignedRecord) -> Result<(), RecordError> {
        if r.record.key != from.key {
            // Only a node stores its own record: nobody can flood the DHT with others'.
            self.stats.stores_refused += 1;
            return Err(RecordError::BadSignature);
        }
        if let Err(e) = r.verify(unix_now) {
            self.stats.bad_records += 1;
            return Err(e);
        }
        self.table.seen(from);
        let publisher = r.record.key.address();
        let mut keys = vec![publisher];
        keys.extend(r.record.services.iter().map(service_address));
        let total: usize = self.store.values().map(BTreeMap::len).sum();
        for k in keys {
            let slot = self.store.entry(k).or_default();
            match slot.get(&publisher) {
                Some(old) if old.record.seq >= r.record.seq => {
                    self.stats.stale_records += 1;
                    return Err(RecordError::Stale);
                }
                Some(_) => {}
                None if slot.len() >= self.config.max_per_key || total >= self.config.max_records => {
                    self.stats.stores_refused += 1;
                    continue;
                }
                None => {}
            }
            slot.insert(publisher, r.clone());
        }
        Ok(())
    }

    fn on_reply(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: &Contact,
        rid: u32,
        records: Vec<SignedRecord>,
        contacts: Vec<Contact>,
    ) {
        let from_address = from.address();
        let Some(req) = self.requests.get(&rid).filter(|r| r.peer == from_address) else {
            self.stats.unexpected_replies += 1;
            return;
        };
        let lid = req.lookup;
        self.requests.remove(&rid);
        self.table.seen(from);
        let Some(l) = self.lookups.get_mut(&lid) else { return };
        l.in_flight = l.in_flight.saturating_sub(1);
        let d = distance(&from_address, &l.target);
        let depth = match l.cands.get_mut(&d) {
            Some(c) => {
                c.state = CandState::Answered;
                c.depth
            }
            None => return,
        };
        for r in records {
            match r.verify(unix_now) {
                Ok(()) if answers(&r, &l.target) => {
                    if !l.records.iter().any(|x| x.record.key == r.record.key) {
                        l.records.push(r);
                        l.found_at.get_or_insert(depth);
                    }
                }
                _ => self.stats.bad_records += 1,
            }
        }
        let follow = !matches!(l.purpose, Purpose::Exchange);
        for c in contacts.into_iter().take(K).filter(|_| follow) {
            let a = c.address();
            if a == self.my_address {
                continue;
            }
            l.cands.entry(distance(&a, &l.target)).or_insert(Cand {
                contact: c,
                state: CandState::New,
                depth: depth + 1,
            });
        }
        self.step(now, lid);
    }

    /// The next message to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(Contact, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// The next request deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.requests.values().map(|r| r.deadline).min()
    }

    /// Requests past their deadline fail (their contact counts a miss); expired records go.
    pub fn handle_timeout(&mut self, now: Instant, unix_now: u64) {
        let late: Vec<u32> = self.requests.iter().filter(|(_, r)| r.deadline <= now).map(|(id, _)| *id).collect();
        for rid in late {
            let Some(req) = self.requests.remove(&rid) else { continue };
            self.stats.timeouts += 1;
            self.table.failed(&req.peer);
            if let Some(l) = self.lookups.get_mut(&req.lookup) {
                l.in_flight = l.in_flight.saturating_sub(1);
                if let Some(c) = l.cands.get_mut(&distance(&req.peer, &l.target)) {
                    c.state = CandState::Failed;
                }
                self.step(now, req.lookup);
            }
        }
        for m in self.store.values_mut() {
            m.retain(|_, r| r.expires() > unix_now);
        }
        self.store.retain(|_, m| !m.is_empty());
        self.learned.retain(|_, r| r.expires() > unix_now);
        let learned = &self.learned;
        self.learned_order.retain(|a| learned.contains_key(a));
    }
}
