//! Route discovery on a running node: every node signs the list of its up links and gives it
//! to its neighbours (and everything it knows to a neighbour that just came up: peer
//! exchange); announcements new to a node are passed on to its other neighbours. The graph
//! route finding uses is rebuilt from what both ends of each link announce, plus the node's
//! own links and any `[[topology]]` from the configuration.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use skyroute_proto::dht::topology::{LinkAnnouncement, LinkReport, Topology};
use skyroute_proto::{Graph, LinkState, PublicKey, SecretKey, SessionId};

use super::{Driver, LINK_COST};

/// The channel announcements travel on.
pub(in crate::driver) const CHANNEL: u16 = 5;
/// How often a node re-announces its links (and how soon after a link change).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);
const ANNOUNCE_AFTER_CHANGE: Duration = Duration::from_millis(200);
/// How long an announcement is valid.
const ANNOUNCE_TTL: u32 = 60;
/// Announcements one message carries at most (a neighbour's first view of the network).
const MAX_PER_MESSAGE: usize = 256;

pub(in crate::driver) struct Discovery {
    /// Off: the graph is the node's own links and the configured topology (the default until
    /// discovery has its own carrier: today announcements ride one-route sessions to each
    /// neighbour, which share the neighbour's session slot with the applications').
    enabled: bool,
    secret: SecretKey,
    topology: Topology,
    /// Edges from the configuration, kept whatever is announced.
    configured: Vec<(PublicKey, PublicKey)>,
    /// What we have, by node: the latest announcement (to pass on and to give new neighbours).
    known: BTreeMap<PublicKey, LinkAnnouncement>,
    next_announce: Instant,
    /// Sessions to neighbours, for announcements.
    neighbours: BTreeMap<PublicKey, SessionId>,
}

pub(in crate::driver) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Discovery {
    pub fn new(enabled: bool, secret: SecretKey, configured: Vec<(PublicKey, PublicKey)>, now: Instant) -> Discovery {
        Discovery {
            enabled,
            secret,
            topology: Topology::new(),
            configured,
            known: BTreeMap::new(),
            next_announce: now + ANNOUNCE_AFTER_CHANGE,
            neighbours: BTreeMap::new(),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.enabled.then_some(self.next_announce)
    }
}

/// Encodes announcements: each with a u16 length.
fn encode(anns: &[&LinkAnnouncement]) -> Vec<u8> {
    let mut b = Vec::new();
    for a in anns.iter().take(MAX_PER_MESSAGE) {
        let e = a.encode();
        b.extend_from_slice(&(e.len() as u16).to_be_bytes());
        b.extend_from_slice(&e);
    }
    b
}

fn decode(mut b: &[u8]) -> Option<Vec<LinkAnnouncement>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 2 || out.len() >= MAX_PER_MESSAGE {
            return None;
        }
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        let body = b.get(2..2 + n)?;
        out.push(LinkAnnouncement::decode(body).ok()?);
        b = &b[2 + n..];
    }
    Some(out)
}

impl Driver {
    /// A link came up or went down: announce soon; a new neighbour gets everything we know.
    pub(super) fn discovery_link_changed(&mut self, now: Instant, peer: PublicKey, up: bool) {
        if !self.discovery.enabled {
            if up {
                self.host.graph_mut().add_edge(self.me, peer, LINK_COST);
            }
            return;
        }
        self.discovery.next_announce = self.discovery.next_announce.min(now + ANNOUNCE_AFTER_CHANGE);
        self.rebuild_graph();
        if !up {
            self.discovery.neighbours.remove(&peer);
            return;
        }
        let Ok(session) = self.session_with_routes(now, peer, Some(1)) else { return };
        self.discovery.neighbours.insert(peer, session);
        let all: Vec<&LinkAnnouncement> = self.discovery.known.values().collect();
        if !all.is_empty() {
            let m = encode(&all);
            self.send_on(session, CHANNEL, &m);
        }
    }

    /// Signs and sends our links when due.
    pub(super) fn discovery_tick(&mut self, now: Instant) {
        if !self.discovery.enabled || now < self.discovery.next_announce {
            return;
        }
        self.discovery.next_announce = now + ANNOUNCE_EVERY;
        let links: Vec<LinkReport> = self
            .host
            .node()
            .links()
            .iter()
            .filter(|l| l.state == LinkState::Up)
            .map(|l| LinkReport {
                peer: l.peer,
                rtt_ms: l.stats.rtt.map_or(LINK_COST as u16, |r| r.as_millis().clamp(1, 60_000) as u16),
                loss_permille: (l.lost * 1000).checked_div(l.acked + l.lost).unwrap_or(0) as u16,
            })
            .take(skyroute_proto::dht::topology::MAX_LINKS)
            .collect();
        // Sequence numbers from the wall clock in ms: a restarted node still counts upwards.
        let seq = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let Ok(a) = LinkAnnouncement::sign(&self.discovery.secret, seq, unix_now(), ANNOUNCE_TTL, links) else {
            return;
        };
        self.discovery_accept(now, a, None);
        self.discovery.topology.expire(unix_now());
        self.discovery.known.retain(|_, a| a.issued + a.ttl as u64 > unix_now());
    }

    /// Announcements from a neighbour.
    pub(super) fn on_discovery(&mut self, now: Instant, peer: PublicKey, payload: &[u8]) {
        if !self.discovery.enabled {
            self.count("discovery_off");
            return;
        }
        let Some(anns) = decode(payload) else {
            self.count("discovery_malformed");
            return;
        };
        for a in anns {
            self.discovery_accept(now, a, Some(peer));
        }
    }

    /// Takes an announcement new to us and passes it on to the other neighbours.
    fn discovery_accept(&mut self, _now: Instant, a: LinkAnnouncement, from: Option<PublicKey>) {
        match self.discovery.topology.announce(a.clone(), unix_now()) {
            Ok(()) => {}
            Err(skyroute_proto::dht::RecordError::Stale) => return,
            Err(_) => {
                self.count("discovery_rejected");
                return;
            }
        }
        let m = encode(&[&a]);
        self.discovery.known.insert(a.node, a);
        self.rebuild_graph();
        let to: Vec<SessionId> =
            self.discovery.neighbours.iter().filter(|(p, _)| Some(**p) != from).map(|(_, s)| *s).collect();
        for s in to {
            self.send_on(s, CHANNEL, &m);
        }
    }

    /// Route finding's graph: announced links, our own up links, configured edges.
    fn rebuild_graph(&mut self) {
        let mut g: Graph = self.discovery.topology.graph();
        for (a, b) in &self.discovery.configured {
            if g.cost(a, b).is_none() {
                g.add_edge(*a, *b, LINK_COST);
            }
        }
        for l in self.host.node().links().iter().filter(|l| l.state == LinkState::Up) {
            if g.cost(&self.me, &l.peer).is_none() {
                g.add_edge(self.me, l.peer, LINK_COST);
            }
        }
        for (k, guards) in &self.dht.required {
            g.set_guards(*k, guards.clone());
        }
        *self.host.graph_mut() = g;
    }

    pub(super) fn discovery_status(&self) -> (usize, usize) {
        (self.discovery.known.len(), self.host.graph().edge_count())
    }
}
