//! The DHT on a running node (the seed's "finding peers"): the sans-IO [`Dht`] fed messages
//! that travel on channel 6 of one-route sessions over direct links. A message for a contact
//! the node has no link to dials the contact's address first and waits for the link. The node
//! joins through its neighbours, publishes its signed record (its advertised addresses, roles
//! and services) and republishes it before it expires. A lookup by key, address or service
//! answers with verified records; a service lookup then asks the first peer found for the
//! other peers of that service it knows (peer exchange).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skyroute_proto::dht::{self, service_address, service_key, Contact, Dht, DhtConfig, DhtEvent, Record};
use skyroute_proto::vpn::GATEWAY_SERVICE;
use skyroute_proto::{Address, LinkState, PublicKey, SecretKey, SessionId};
use tokio::sync::oneshot;

use super::discovery::unix_now;
use super::Driver;
use crate::control::{LookupReport, RecordView};
use crate::driver::{DhtOptions, LookupTarget, NodeError};
use crate::transport::Addr;

/// The channel DHT messages travel on.
pub(in crate::driver) const CHANNEL: u16 = 6;
/// How long our record is valid; it is republished at half of it.
const RECORD_TTL: u32 = 3600;
/// The first publish waits this long after the first neighbour (for more to come up).
const FIRST_PUBLISH_AFTER: Duration = Duration::from_millis(300);
/// Messages held for a contact whose link is still coming up, and contacts held.
const MAX_PENDING: usize = 16;
const MAX_PENDING_PEERS: usize = 256;
/// A contact that does not answer the dial within this is given up (and not redialled).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Guarded nodes whose guards we keep.
const MAX_GUARDED: usize = 4096;

struct Job {
    target: Address,
    service: bool,
    /// Dial the node found (a node lookup).
    connect: bool,
    /// Records from the lookup, while the peer exchange that follows it runs.
    found: Option<dht::LookupResult>,
    reply: Reply,
}

enum Reply {
    Lookup(oneshot::Sender<Result<LookupReport, NodeError>>),
    /// The gateway fewest hops away among those found.
    Nearest(oneshot::Sender<Result<PublicKey, NodeError>>),
}

pub(in crate::driver) struct DhtState {
    dht: Option<Dht>,
    secret: SecretKey,
    services: Vec<[u8; 32]>,
    advertise: Vec<String>,
    roles: u8,
    guards: Vec<PublicKey>,
    /// Guards other nodes' records name (route finding honours them).
    pub(super) required: BTreeMap<PublicKey, Vec<PublicKey>>,
    next_publish: Option<Instant>,
    /// Messages for contacts being dialled, since when, and whether the DHT made that link.
    pending: BTreeMap<PublicKey, (Instant, Vec<Vec<u8>>, bool)>,
    jobs: BTreeMap<u32, Job>,
    /// Sessions opened for DHT messages (applications open their own: a session's routes
    /// are chosen when it opens, and an application's must honour guards learned since).
    pub(super) sessions: BTreeMap<PublicKey, SessionId>,
}

impl DhtState {
    /// `listen`: the node's listen addresses, advertised when `advertise` names none (those
    /// on an unspecified IP are useless to others and left out).
    pub fn new(o: Option<&DhtOptions>, secret: SecretKey, listen: &[Addr], gateway: bool) -> DhtState {
        let me = secret.public_key();
        let advertise: Vec<String> = match o {
            // A guarded node's key is not tied to an address.
            Some(o) if !o.guards.is_empty() => Vec::new(),
            Some(o) if !o.advertise.is_empty() => o.advertise.iter().map(Addr::to_string).collect(),
            _ => listen.iter().filter(|a| !a.socket().ip().is_unspecified()).map(Addr::to_string).collect(),
        };
        let dht = o.map(|_| {
            let addr = advertise.first().cloned().unwrap_or_default();
            Dht::new(Contact { key: me, addr }, DhtConfig::default())
        });
        DhtState {
            dht,
            secret,
            services: o
                .map(|o| {
                    let gw = gateway.then(|| service_key(GATEWAY_SERVICE));
                    o.services.iter().map(|s| service_key(s)).chain(gw).take(dht::record::MAX_SERVICES).collect()
                })
                .unwrap_or_default(),
            advertise: advertise.into_iter().take(dht::record::MAX_ADDRS).collect(),
            roles: if gateway { dht::record::ROLE_GATEWAY } else { 0 },
            guards: o.map(|o| o.guards.clone()).unwrap_or_default(),
            required: BTreeMap::new(),
            next_publish: None,
            pending: BTreeMap::new(),
            jobs: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        let d = self.dht.as_ref()?;
        let dial = self.pending.values().map(|(t, _, _)| *t + DIAL_TIMEOUT).min();
        [d.poll_timeout(), self.next_publish, dial].into_iter().flatten().min()
    }

    /// Keys of nodes whose records this node learned.
    pub fn learned_keys(&self) -> Vec<PublicKey> {
        self.dht.iter().flat_map(|d| d.learned().map(|r| r.record.key)).collect()
    }
}

fn view(r: &dht::SignedRecord) -> RecordView {
    let r = &r.record;
    let roles = [
        (dht::record::ROLE_ANCHOR, "anchor"),
        (dht::record::ROLE_GATEWAY, "gateway"),
        (dht::record::ROLE_GUARD, "guard"),
    ]
    .into_iter()
    .filter(|(bit, _)| r.roles & bit != 0)
    .map(|(_, n)| n.to_string())
    .collect();
    RecordView {
        key: r.key.to_string(),
        address: r.key.address().to_string(),
        addrs: r.addrs.clone(),
        roles,
        cost: r.cost,
        services: r.services.len(),
        guards: r.guards.iter().map(|g| g.to_string()).collect(),
        expires: r.issued + r.ttl as u64,
    }
}

impl Driver {
    /// A neighbour is a contact; the first one starts our join and publish.
    pub(super) fn dht_link_changed(&mut self, now: Instant, peer: PublicKey, up: bool) {
        let addr = self.link_addr(&peer);
        let Some(d) = self.dht.dht.as_mut() else { return };
        if !up {
            self.dht.pending.remove(&peer);
            return;
        }
        if let Some(a) = addr {
            d.add_contact(Contact { key: peer, addr: a.to_string() });
        }
        if self.dht.next_publish.is_none() {
            self.dht.next_publish = Some(now + FIRST_PUBLISH_AFTER);
            let me = d.me().address();
            d.find_node(now, me);
        }
        if let Some((_, queued, _)) = self.dht.pending.remove(&peer) {
            for m in queued {
                self.dht_send(now, Contact { key: peer, addr: String::new() }, m);
            }
        }
    }

    fn link_addr(&self, peer: &PublicKey) -> Option<Addr> {
        self.host.node().links().into_iter().find(|l| l.peer == *peer && l.state == LinkState::Up).map(|l| l.addr)
    }

    /// Republishes our record when due and lets the DHT's requests time out.
    pub(super) fn dht_tick(&mut self, now: Instant) {
        let Some(d) = self.dht.dht.as_mut() else { return };
        d.handle_timeout(now, unix_now());
        // Contacts that never answered the dial: stop dialling them.
        let given_up: Vec<(PublicKey, bool)> = self
            .dht
            .pending
            .iter()
            .filter(|(_, (t, _, _))| *t + DIAL_TIMEOUT <= now)
            .map(|(k, (_, _, made))| (*k, *made))
            .collect();
        for (k, made) in given_up {
            self.dht.pending.remove(&k);
            // Only a link the DHT made (a configured peer keeps being dialled).
            if let Some(id) = self.host.node().link_to(&k).filter(|_| made && self.link_addr(&k).is_none()) {
                self.host.node_mut(now).close_link(now, id);
                self.count("dht_dial_failed");
            }
        }
        let Some(d) = self.dht.dht.as_mut() else { return };
        if self.dht.next_publish.is_some_and(|t| now >= t) {
            self.dht.next_publish = Some(now + Duration::from_secs(RECORD_TTL as u64 / 2));
            let record = Record {
                key: self.me,
                // Wall-clock ms: a restarted node's record still replaces its old one.
                seq: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                issued: unix_now(),
                ttl: RECORD_TTL,
                addrs: self.dht.advertise.clone(),
                roles: self.dht.roles,
                cost: 0,
                services: self.dht.services.clone(),
                guards: self.dht.guards.clone(),
            };
            match record.sign(&self.dht.secret) {
                Ok(r) => {
                    d.publish(now, r);
                }
                Err(e) => tracing::warn!(%e, "our DHT record does not fit; not published"),
            }
        }
    }

    /// Sends what the DHT has to send and answers finished lookups. Returns whether it did.
    pub(super) fn dht_pump(&mut self, now: Instant) -> bool {
        let mut moved = false;
        loop {
            let Some(d) = self.dht.dht.as_mut() else { return moved };
            if let Some((c, m)) = d.poll_transmit() {
                moved = true;
                self.dht_send(now, c, m);
                continue;
            }
            match d.poll_event() {
                Some(DhtEvent::LookupDone(r)) => {
                    moved = true;
                    self.dht_lookup_done(now, r);
                }
                Some(DhtEvent::Published { stored_at, .. }) => {
                    moved = true;
                    tracing::debug!(stored_at, "DHT record published");
                }
                None => return moved,
            }
        }
    }

    fn dht_send(&mut self, now: Instant, c: Contact, m: Vec<u8>) {
        if c.key == self.me {
            return;
        }
        if let Some(&s) = self.to_peer.get(&c.key).or(self.dht.sessions.get(&c.key)) {
            self.send_on(s, CHANNEL, &m);
            return;
        }
        if self.link_addr(&c.key).is_some() {
            let s = self.host.connect(now, c.key, Some(1));
            match s {
                Ok(s) => {
                    self.dht.sessions.insert(c.key, s);
                    self.conns.insert(s, crate::service::Conn::new(c.key));
                    self.send_on(s, CHANNEL, &m);
                }
                Err(_) => self.count("dht_unreachable"),
            }
            return;
        }
        // No link yet: dial the contact and hold the message until the link is up (if it never
        // comes, the DHT's request times out).
        let Ok(addr) = c.addr.parse::<Addr>() else {
            self.count("dht_bad_contact");
            return;
        };
        let p = &mut self.dht.pending;
        if !p.contains_key(&c.key) && p.len() >= MAX_PENDING_PEERS {
            self.count("dht_pending_full");
            return;
        }
        let made = self.host.node().link_to(&c.key).is_none();
        let p = &mut self.dht.pending;
        let (_, q, _) = p.entry(c.key).or_insert_with(|| (now, Vec::new(), made));
        if q.len() >= MAX_PENDING {
            self.count("dht_pending_full");
            return;
        }
        let first = q.is_empty();
        q.push(m);
        if first {
            self.dial(now, c.key, addr);
        }
    }

    /// A DHT message from a session peer. Its contact address is the direct link's.
    pub(super) fn on_dht(&mut self, now: Instant, peer: PublicKey, payload: &[u8]) {
        if self.dht.dht.is_none() {
            self.count("dht_off");
            return;
        }
        let Some(addr) = self.link_addr(&peer) else {
            self.count("dht_not_neighbour");
            return;
        };
        let Some(d) = self.dht.dht.as_mut() else { return };
        match d.handle(now, unix_now(), &Contact { key: peer, addr: addr.to_string() }, payload) {
            Ok(()) => {}
            Err(dht::RecordError::RateLimited) => {
                // Counted on the neighbour's link too: refusals by reason and neighbour.
                self.host.node_mut(now).count_refusal(&peer, skyroute_proto::Reject::DhtRate);
                self.count("dht_rate_limited");
            }
            Err(_) => self.count("dht_refused"),
        }
    }

    pub(super) fn dht_lookup(
        &mut self,
        now: Instant,
        target: LookupTarget,
        connect: bool,
        reply: oneshot::Sender<Result<LookupReport, NodeError>>,
    ) {
        let Some(d) = self.dht.dht.as_mut() else {
            let _ = reply.send(Err(NodeError::DhtOff));
            return;
        };
        let (address, service) = match &target {
            LookupTarget::Node(k) => (k.address(), false),
            LookupTarget::Address(a) => (*a, false),
            LookupTarget::Service(s) => (service_address(&service_key(s)), true),
        };
        let id = d.find_value(now, address);
        let job =
            Job { target: address, service, connect: connect && !service, found: None, reply: Reply::Lookup(reply) };
        self.dht.jobs.insert(id, job);
    }

    /// Finds the gateways of the DHT (they publish [`GATEWAY_SERVICE`]) and answers with the
    /// one fewest hops away in the graph route finding uses (the seed: the best routes to
    /// the clearnet have small depth), cheapest first among equals.
    pub(super) fn nearest_gateway(&mut self, now: Instant, reply: oneshot::Sender<Result<PublicKey, NodeError>>) {
        let Some(d) = self.dht.dht.as_mut() else {
            let _ = reply.send(Err(NodeError::DhtOff));
            return;
        };
        let target = service_address(&service_key(GATEWAY_SERVICE));
        let id = d.find_value(now, target);
        self.dht
            .jobs
            .insert(id, Job { target, service: true, connect: false, found: None, reply: Reply::Nearest(reply) });
    }

    fn rank_gateways(&self, records: &[dht::SignedRecord]) -> Result<PublicKey, NodeError> {
        let gateways: Vec<PublicKey> = records
            .iter()
            .filter(|r| r.record.roles & dht::record::ROLE_GATEWAY != 0 && r.record.key != self.me)
            .map(|r| r.record.key)
            .collect();
        if gateways.is_empty() {
            return Err(NodeError::NoGateway);
        }
        // Breadth-first from us: depth, then cost of the cheapest route.
        let depth: BTreeMap<PublicKey, u32> = self.host.graph().by_hops(&self.me).into_iter().collect();
        gateways
            .into_iter()
            .filter_map(|g| {
                Some((depth.get(&g).copied()?, self.host.graph().path_cost(&self.me, &g).unwrap_or(u64::MAX), g))
            })
            .min()
            .map(|(_, _, g)| g)
            .ok_or(NodeError::NoRouteToGateway)
    }

    fn dht_lookup_done(&mut self, now: Instant, r: dht::LookupResult) {
        // Routes to nodes that name guards go through them.
        for x in &r.records {
            let (k, g) = (x.record.key, x.record.guards.clone());
            self.host.graph_mut().set_guards(k, g.clone());
            if g.is_empty() {
                self.dht.required.remove(&k);
            } else if self.dht.required.len() < MAX_GUARDED || self.dht.required.contains_key(&k) {
                self.dht.required.insert(k, g);
            }
        }
        let Some(mut job) = self.dht.jobs.remove(&r.id) else { return };
        let Some(d) = self.dht.dht.as_mut() else { return };
        let exchange_with = match (&job.found, job.service) {
            (None, true) => r.records.iter().find(|x| x.record.key != self.me).cloned(),
            _ => None,
        };
        let mut exchanged = 0;
        let result = match job.found.take() {
            // The peer exchange after a service lookup: merge what the peer knew.
            Some(mut first) => {
                for x in r.records {
                    if !first.records.iter().any(|y| y.record.key == x.record.key) {
                        first.records.push(x);
                        exchanged += 1;
                    }
                }
                first.messages += r.messages;
                first
            }
            None => r,
        };
        if let Some(peer) =
            exchange_with.and_then(|x| Some(Contact { key: x.record.key, addr: x.record.addrs.first()?.clone() }))
        {
            let id = d.exchange(now, peer, job.target);
            job.found = Some(result);
            self.dht.jobs.insert(id, job);
            return;
        }
        // A node found by key: dial it (unless it is us or already a neighbour).
        let found = result.records.iter().find(|x| x.record.key.address() == job.target);
        if let Some(x) =
            found.filter(|x| job.connect && x.record.key != self.me && self.link_addr(&x.record.key).is_none())
        {
            if let Some(a) = x.record.addrs.iter().find_map(|a| a.parse::<Addr>().ok()) {
                self.dial(now, x.record.key, a);
            }
        }
        match job.reply {
            Reply::Lookup(reply) => {
                let _ = reply.send(Ok(LookupReport {
                    target: job.target.to_string(),
                    records: result.records.iter().map(view).collect(),
                    hops: result.hops,
                    messages: result.messages,
                    exchanged,
                }));
            }
            Reply::Nearest(reply) => {
                let _ = reply.send(self.rank_gateways(&result.records));
            }
        }
    }

    pub(super) fn dht_status(&self) -> Option<crate::control::DhtStatus> {
        let d = self.dht.dht.as_ref()?;
        let s = d.stats();
        Some(crate::control::DhtStatus {
            contacts: d.table().len(),
            records_held: s.records_held,
            learned: d.learned().count(),
            messages_in: s.messages_in,
            messages_out: s.messages_out,
            refused: s.malformed
                + s.bad_records
                + s.stale_records
                + s.stores_refused
                + s.unexpected_replies
                + s.requests_refused,
            timeouts: s.timeouts,
        })
    }
}
