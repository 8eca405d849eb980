//! Route discovery from signed link announcements: each node signs the list of its links
//! (neighbour, latency, loss); a link enters the graph only when both ends announce it, so no
//! node can invent links for others. Costs weigh latency, loss, a per-hop charge and the
//! transit price relays advertise in their records; sessions then take k node-disjoint routes
//! from the resulting [`Graph`]. Also: the nearest gateways (fewest hops first, the seed's
//! "the best routes have small depth"), and routes that end through a destination's guards.

use std::collections::BTreeMap;

use super::record::{check_time, Reader, RecordError, MAX_TTL_SECS, ROLE_GATEWAY};
use super::SignedRecord;
use crate::graph::Graph;
use crate::identity::{PublicKey, SecretKey, SIGNATURE_LEN};

/// Links one announcement lists at most.
pub const MAX_LINKS: usize = 64;
/// Cost added per hop (so a short route wins over a long one of equal latency).
pub const HOP_COST: u32 = 5;

/// One link as its node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkReport {
    /// The neighbour.
    pub peer: PublicKey,
    /// Smoothed round-trip time, ms.
    pub rtt_ms: u16,
    /// Loss, per mille.
    pub loss_permille: u16,
}

/// A node's signed list of its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAnnouncement {
    /// The announcing node (which signs).
    pub node: PublicKey,
    /// Higher replaces lower.
    pub seq: u64,
    /// Unix seconds when issued.
    pub issued: u64,
    /// Seconds it is valid after `issued`.
    pub ttl: u32,
    /// The node's links.
    pub links: Vec<LinkReport>,
    /// The node's signature.
    pub signature: [u8; SIGNATURE_LEN],
}

impl LinkAnnouncement {
    fn body(node: &PublicKey, seq: u64, issued: u64, ttl: u32, links: &[LinkReport]) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + links.len() * 37);
        b.extend_from_slice(b"skyroute links");
        b.extend_from_slice(&node.to_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&issued.to_be_bytes());
        b.extend_from_slice(&ttl.to_be_bytes());
        b.push(links.len() as u8);
        for l in links {
            b.extend_from_slice(&l.peer.to_bytes());
            b.extend_from_slice(&l.rtt_ms.to_be_bytes());
            b.extend_from_slice(&l.loss_permille.to_be_bytes());
        }
        b
    }

    /// Signs an announcement of `links` with the node's key.
    pub fn sign(
        secret: &SecretKey,
        seq: u64,
        issued: u64,
        ttl: u32,
        links: Vec<LinkReport>,
    ) -> Result<LinkAnnouncement, RecordError> {
        if links.len() > MAX_LINKS || ttl > MAX_TTL_SECS {
            return Err(RecordError::TooLarge);
        }
        let node = secret.public_key();
        let signature = secret.sign(&Self::body(&node, seq, issued, ttl, &links));
        Ok(LinkAnnouncement { node, seq, issued, ttl, links, signature })
    }

    /// The announcement's wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Self::body(&self.node, self.seq, self.issued, self.ttl, &self.links);
        b.extend_from_slice(&self.signature);
        b
    }

    /// Parses an announcement (not yet verified: see [`LinkAnnouncement::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<LinkAnnouncement, RecordError> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.take(14)? != b"skyroute links" {
            return Err(RecordError::Malformed);
        }
        let node = r.key()?;
        let seq = u64::from_be_bytes(r.array()?);
        let issued = u64::from_be_bytes(r.array()?);
        let ttl = u32::from_be_bytes(r.array()?);
        let n = r.take(1)?[0] as usize;
        if n > MAX_LINKS {
            return Err(RecordError::TooLarge);
        }
        let mut links = Vec::with_capacity(n);
        for _ in 0..n {
            let peer = r.key()?;
            links.push(LinkReport {
                peer,
                rtt_ms: u16::from_be_bytes(r.array()?),
                loss_permille: u16::from_be_bytes(r.array()?),
            });
        }
        let signature = r.array()?;
        if r.at != bytes.len() {
            return Err(RecordError::Malformed);
        }
        Ok(LinkAnnouncement { node, seq, issued, ttl, links, signature })
    }

    /// Checks the signature and the validity window at `unix_now`.
    pub fn verify(&self, unix_now: u64) -> Result<(), RecordError> {
        if self.links.len() > MAX_LINKS || self.ttl > MAX_TTL_SECS {
            return Err(RecordError::TooLarge);
        }
        check_time(self.issued, self.ttl, unix_now)?;
        let body = Self::body(&self.node, self.seq, self.issued, self.ttl, &self.links);
        if !self.node.verify(&body, &self.signature) {
            return Err(RecordError::BadSignature);
        }
        Ok(())
    }
}

/// The cost of crossing a link: latency, inflated by loss (each loss costs about a
/// retransmission round), plus the per-hop charge.
fn link_cost(rtt_ms: u16, loss_permille: u16) -> u32 {
    let rtt = rtt_ms.max(1) as u32;
    rtt + rtt * loss_permille.min(999) as u32 / (1000 - loss_permille.min(999) as u32) + HOP_COST
}

/// What this node knows of the network: announcements and the nodes' records.
#[derive(Default)]
pub struct Topology {
    links: BTreeMap<PublicKey, LinkAnnouncement>,
    records: BTreeMap<PublicKey, SignedRecord>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Topology {
        Topology::default()
    }

    /// Takes a verified announcement (newer than the one held).
    pub fn announce(&mut self, a: LinkAnnouncement, unix_now: u64) -> Result<(), RecordError> {
        a.verify(unix_now)?;
        if self.links.get(&a.node).is_some_and(|old| old.seq >= a.seq) {
            return Err(RecordError::Stale);
        }
        self.links.insert(a.node, a);
        Ok(())
    }

    /// Takes a node's verified record (roles and transit price).
    pub fn record(&mut self, r: SignedRecord, unix_now: u64) -> Result<(), RecordError> {
        r.verify(unix_now)?;
        if self.records.get(&r.record.key).is_some_and(|old| old.record.seq >= r.record.seq) {
            return Err(RecordError::Stale);
        }
        self.records.insert(r.record.key, r);
        Ok(())
    }

    /// Drops what expired.
    pub fn expire(&mut self, unix_now: u64) {
        self.links.retain(|_, a| a.issued + a.ttl as u64 > unix_now);
        self.records.retain(|_, r| r.expires() > unix_now);
    }

    fn price(&self, n: &PublicKey) -> u32 {
        self.records.get(n).map_or(0, |r| r.record.cost)
    }

    /// The graph of links both ends announce. A link's cost is the worse of the two ends'
    /// reports plus the far node's advertised transit price (so the cost of a route counts
    /// each relay's price once... and the destination's, which every route to it shares).
    pub fn graph(&self) -> Graph {
        let mut g = Graph::new();
        for (a, ann) in &self.links {
            for l in &ann.links {
                if l.peer <= *a {
                    continue;
                }
                let Some(back) = self.links.get(&l.peer).and_then(|b| b.links.iter().find(|x| x.peer == *a)) else {
                    continue;
                };
                let cost = link_cost(l.rtt_ms.max(back.rtt_ms), l.loss_permille.max(back.loss_permille));
                let price = (self.price(a) + self.price(&l.peer)) / 2;
                g.add_edge(*a, l.peer, cost + price);
            }
        }
        for (k, r) in &self.records {
            g.set_guards(*k, r.record.guards.clone());
        }
        g
    }

    /// Gateways reachable from `from`, fewest hops first (breadth-first), at most `n`.
    pub fn nearest_gateways(&self, from: &PublicKey, n: usize) -> Vec<(PublicKey, u32)> {
        let is_gateway = |k: &PublicKey| self.records.get(k).is_some_and(|r| r.record.roles & ROLE_GATEWAY != 0);
        self.graph().by_hops(from).into_iter().filter(|(k, _)| k != from && is_gateway(k)).take(n).collect()
    }
}
