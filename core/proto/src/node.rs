//! The node: one identity, its links to neighbours, its route table and its store-and-forward
//! buffers, in the quinn-proto style. Drivers talk to the [`Host`](crate::host::Host) that owns
//! it next to the sessions; protocol tests drive a bare node:
//!
//! ```text
//! driver                          Node
//!   handle_datagram(now, from, bytes) ->
//!   handle_timeout(now)              ->
//!   <- poll_transmit(now, link, buf)  (destination, bytes in buf; until None)
//!   <- poll_event()        (link up/down, route ready/failed, route data, delivery)
//!   <- poll_timeout()      (arm one timer)
//! ```
//! Data flows one way through it: transport bytes -> link (open) -> forward (buffer, ack,
//! credit) -> route (deliver) -> events; and back: send -> route (seal end to end) -> forward
//! (queue) -> link (bundle, pad, seal) -> transmits.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::time::Instant;

use rand_core::CryptoRngCore;

use crate::forward::{Class, Dir, FlowKey, FlowStats, ForwardConfig, Forwarder};
use crate::frame::Frame;
use crate::identity::{Address, PublicKey, SecretKey, PUBLIC_KEY_LEN};
use crate::link::cookie::{Guard, GuardConfig, GuardStats, Verdict};
use crate::link::{DownReason, Link, LinkConfig, LinkEvent, LinkId, LinkState, RngRef};
use crate::noise::{self as handshake, Clock};
use crate::route::{RouteConfig, RouteError, RouteEvent, RouteId, Router};
use crate::stats::{LinkStats, Reject, RejectCounts};
use crate::vlink::{self, VLink};
use crate::wire::{Packet, DATA_HEADER_LEN};

/// The `by_peer` slot of virtual links (physical slots are 0..=255).
const VIRTUAL_SLOT: u16 = 256;

/// How long a link moved on purpose ignores packets from its old address.
const PIN_NEW_ADDRESS: std::time::Duration = std::time::Duration::from_secs(2);

/// Node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Link settings (every link).
    pub link: LinkConfig,
    /// Route table settings.
    pub route: RouteConfig,
    /// Store-and-forward settings.
    pub forward: ForwardConfig,
    /// Accept handshakes from peers we did not dial.
    pub accept_incoming: bool,
    /// Limits on handshake work (cookies under load, rate limits, half-open links).
    pub guard: GuardConfig,
    /// The wall clock when the node is made, in nanoseconds since the Unix epoch (the driver
    /// reads it; the protocol never does): handshake timestamps count on from it, so a
    /// restarted node's inits are newer than the ones it sent before.
    pub unix_time_ns: u128,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            link: LinkConfig::default(),
            route: RouteConfig::default(),
            forward: ForwardConfig::default(),
            accept_incoming: true,
            guard: GuardConfig::default(),
            unix_time_ns: 0,
        }
    }
}

/// Datagrams not sent on a link (cookie replies, answers to an init from a new address)
/// waiting at once; beyond, they are dropped.
const MAX_UNLINKED: usize = 256;

/// What happened, for the application and the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A link came up.
    LinkUp {
        /// The link.
        link: LinkId,
        /// The neighbour.
        peer: PublicKey,
    },
    /// A link went down.
    LinkDown {
        /// The link.
        link: LinkId,
        /// The neighbour.
        peer: PublicKey,
        /// Why.
        reason: DownReason,
    },
    /// Something happened to a route.
    Route(RouteEvent),
}

/// A snapshot of one link for status output.
#[derive(Debug, Clone)]
pub struct LinkInfo<A> {
    /// The node's id for the link.
    pub id: LinkId,
    /// The neighbour's key.
    pub peer: PublicKey,
    /// The neighbour's transport address now.
    pub addr: A,
    /// Where the link is in its life.
    pub state: LinkState,
    /// We dial this neighbour (and redial it when the link is down); false for a link the
    /// peer made.
    pub dialled: bool,
    /// The key epoch now (None before keys).
    pub epoch: Option<u8>,
    /// Datagrams sent and not yet acknowledged.
    pub in_flight: usize,
    /// Datagrams acknowledged, and declared lost (then retransmitted), since the link began.
    pub acked: u64,
    /// Datagrams declared lost (and retransmitted).
    pub lost: u64,
    /// The link's counters.
    pub stats: LinkStats,
}

/// Node-wide counters.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// Refused packets that could not be tied to a link (unknown source, unknown index).
    pub rejected: RejectCounts,
}

/// A mesh node: its links, routes and store-and-forward buffers, fed datagrams and timer
/// expiries (sans-IO; [`crate::host::Host`] adds sessions and route finding).
pub struct Node<A> {
    identity: SecretKey,
    public: PublicKey,
    config: NodeConfig,
    rng: Box<dyn CryptoRngCore + Send>,
    links: BTreeMap<LinkId, Link<A>>,
    /// Links by neighbour and slot (a neighbour reachable over two interfaces has two;
    /// a virtual link uses [`VIRTUAL_SLOT`]).
    by_peer: BTreeMap<(PublicKey, u16), LinkId>,
    by_index: BTreeMap<u32, LinkId>,
    by_addr: BTreeMap<A, LinkId>,
    next_link: u32,
    router: Router,
    fwd: Forwarder,
    events: VecDeque<Event>,
    stats: NodeStats,
    /// Round-robin position for fairness between links in `poll_transmit`.
    cursor: u32,
    /// Links moved on purpose (`connect` with a new address): until the time given, or until
    /// the peer answers there, packets still arriving at the old address do not move them back.
    pinned: BTreeMap<LinkId, Instant>,
    /// Virtual links (carried by a route), and their carriers' route ids.
    vlinks: BTreeMap<LinkId, VLink>,
    by_carrier: BTreeMap<RouteId, LinkId>,
    /// Carriers we opened that became ready (the link comes up at the next `now`).
    carriers_ready: Vec<RouteId>,
    /// Asymmetric links: our datagrams to these peers go over a route, not their address.
    return_routes: BTreeMap<PublicKey, RouteId>,
    /// Datagrams arriving on return routes that end here, being reassembled.
    returned: BTreeMap<RouteId, vlink::Reassembly>,
    /// Local interfaces the driver marked as metered.
    metered: std::collections::BTreeSet<crate::link::Interface>,
    /// Cookies, load and rate limits of handshakes.
    guard: Guard,
    /// Handshake timestamps (anchored at the first `now` the node sees).
    clock: Option<Clock>,
    /// Datagrams to send not on a link: cookie replies, answers to inits from new addresses.
    unlinked: VecDeque<(A, Vec<u8>)>,
    /// The link that answered an init, by the init's ephemeral key (a link's last one only).
    by_answered: BTreeMap<[u8; PUBLIC_KEY_LEN], LinkId>,
}

struct LinkTable<'a, A> {
    links: &'a BTreeMap<LinkId, Link<A>>,
    vlinks: &'a BTreeMap<LinkId, VLink>,
    by_peer: &'a BTreeMap<(PublicKey, u16), LinkId>,
    fwd: &'a mut Forwarder,
}

impl<A: Clone> crate::route::Links for LinkTable<'_, A> {
    fn link_to(&self, peer: &PublicKey) -> Option<LinkId> {
        best_link(self.links, self.vlinks, self.by_peer, self.fwd, peer)
    }
    fn is_up(&self, link: LinkId) -> bool {
        link_up(self.links, self.vlinks, link)
    }
    fn send(&mut self, link: LinkId, frame: &Frame<'_>) -> Result<(), RouteError> {
        if !self.is_up(link) {
            return Err(RouteError::Broken);
        }
        self.fwd.send_control(link, frame);
        Ok(())
    }
    fn fwd(&mut self) -> &mut Forwarder {
        self.fwd
    }
    fn peer_of(&self, link: LinkId) -> Option<PublicKey> {
        self.links.get(&link).map(|l| l.peer).or_else(|| self.vlinks.get(&link).map(|v| v.peer))
    }
    fn neighbours(&self) -> usize {
        up_neighbours(self.links, self.vlinks, self.by_peer)
    }
}

/// Neighbours with an up link, physical or virtual (a neighbour over two radios counts once).
fn up_neighbours<A: Clone>(
    links: &BTreeMap<LinkId, Link<A>>,
    vlinks: &BTreeMap<LinkId, VLink>,
    by_peer: &BTreeMap<(PublicKey, u16), LinkId>,
) -> usize {
    let mut last = None;
    let mut n = 0;
    // by_peer is sorted by key: a neighbour's links are next to each other.
    for ((peer, _), id) in by_peer {
        if last != Some(*peer) && link_up(links, vlinks, *id) {
            last = Some(*peer);
            n += 1;
        }
    }
    n
}

/// Every link to `peer`, physical (by slot) then virtual.
fn links_of<'a>(
    by_peer: &'a BTreeMap<(PublicKey, u16), LinkId>,
    peer: &PublicKey,
) -> impl Iterator<Item = LinkId> + 'a {
    by_peer.range((*peer, 0)..=(*peer, VIRTUAL_SLOT)).map(|(_, id)| *id)
}

/// The link a route to `peer` takes when the caller does not choose: an up physical link,
/// the one with the shortest round trip (then the lowest slot), else an up virtual link.
fn best_link<A: Clone>(
    links: &BTreeMap<LinkId, Link<A>>,
    vlinks: &BTreeMap<LinkId, VLink>,
    by_peer: &BTreeMap<(PublicKey, u16), LinkId>,
    fwd: &Forwarder,
    peer: &PublicKey,
) -> Option<LinkId> {
    links_of(by_peer, peer)
        .filter(|id| link_up(links, vlinks, *id))
        .min_by_key(|id| (vlinks.contains_key(id), fwd.link_rtt(*id).unwrap_or(std::time::Duration::MAX)))
}

/// Whether `id` is a link, physical or virtual, that is up.
fn link_up<A: Clone>(links: &BTreeMap<LinkId, Link<A>>, vlinks: &BTreeMap<LinkId, VLink>, id: LinkId) -> bool {
    links.get(&id).is_some_and(|l| l.is_up()) || vlinks.get(&id).is_some_and(|v| v.up)
}

/// Whether a received frame asks for a link ack.
fn eliciting(f: &Frame<'_>) -> bool {
    !matches!(f, Frame::Ack(_) | Frame::Ping | Frame::Rekey { .. } | Frame::RekeyAck { .. } | Frame::Close { .. })
}

/// Whether a frame is traffic (route messages, route control, credit) rather than the link's
/// own business (keepalive, probe, key rotation, close) or an ack of something: only traffic
/// makes a link rotate its key.
fn traffic(f: &Frame<'_>) -> bool {
    eliciting(f) && !matches!(f, Frame::Probe)
}

impl<A: crate::link::Endpoint> Node<A> {
    /// A node with `identity` and `config`, drawing keys and indices from `rng`.
    pub fn new(identity: SecretKey, config: NodeConfig, rng: Box<dyn CryptoRngCore + Send>) -> Self {
        let public = identity.public_key();
        let router = Router::new(config.route.clone());
        let fwd = Forwarder::new(config.forward.clone());
        let guard = Guard::new(config.guard.clone(), &public);
        Node {
            identity,
            public,
            config,
            rng,
            links: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            by_index: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            next_link: 1,
            router,
            fwd,
            events: VecDeque::new(),
            stats: NodeStats::default(),
            cursor: 0,
            pinned: BTreeMap::new(),
            vlinks: BTreeMap::new(),
            by_carrier: BTreeMap::new(),
            carriers_ready: Vec::new(),
            return_routes: BTreeMap::new(),
            returned: BTreeMap::new(),
            metered: Default::default(),
            guard,
            clock: None,
            unlinked: VecDeque::new(),
            by_answered: BTreeMap::new(),
        }
    }

    /// The node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// A copy of the node's secret key, for the session endpoint that runs next to it.
    pub fn identity_copy(&self) -> SecretKey {
        self.identity.clone()
    }

    /// The node's address (hash of its key).
    pub fn address(&self) -> Address {
        self.public.address()
    }

    /// The node's settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Node-wide counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Largest application message one route carries.
    pub fn route_mtu(&self) -> usize {
        Router::mtu(self.config.link.max_plaintext())
    }

    fn table(&mut self) -> (LinkTable<'_, A>, &mut Router, &mut dyn CryptoRngCore, &SecretKey) {
        (
            LinkTable { links: &self.links, vlinks: &self.vlinks, by_peer: &self.by_peer, fwd: &mut self.fwd },
            &mut self.router,
            &mut *self.rng,
            &self.identity,
        )
    }

    fn new_index(&mut self) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if i != 0 && !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    /// Where handshake timestamps come from: the configured wall clock at the first `now`.
    fn clock(&mut self, now: Instant) -> Clock {
        let unix = self.config.unix_time_ns;
        *self.clock.get_or_insert_with(|| Clock::new(unix, now))
    }

    /// The neighbour a route we relay or end came from (None for our own routes).
    pub(crate) fn route_neighbour(&self, route: RouteId) -> Option<PublicKey> {
        self.router.neighbour_of(route)
    }

    /// The handshake guard's counters, node-wide (cookies sent, rate limits, half-open links
    /// dropped; `rejected` splits the same refusals between the node and its links).
    pub fn guard_stats(&self) -> GuardStats {
        self.guard.stats
    }

    /// Neighbours with an up link (a neighbour over two radios, or a physical and a virtual
    /// link, counts once): what fair shares of routes, buffers and sessions divide by.
    pub fn neighbour_count(&self) -> usize {
        up_neighbours(&self.links, &self.vlinks, &self.by_peer)
    }

    /// Routes this node relays or ends for `neighbour` now (its share is bounded).
    pub fn routes_held_by(&self, neighbour: &PublicKey) -> usize {
        self.router.held_by(neighbour)
    }

    /// Counts a refusal of something `peer` asked (a session, a DHT request) on its links, so
    /// status shows refusals by reason and neighbour; on the node's counters if no link to it.
    pub fn count_refusal(&mut self, peer: &PublicKey, reason: Reject) {
        let id = links_of(&self.by_peer, peer).next();
        match id.and_then(|id| self.links.get_mut(&id)) {
            Some(l) => l.stats.rejected.add(reason),
            None => self.stats.rejected.add(reason),
        }
    }

    /// This node's handshake timestamp at `now` (link and session inits).
    pub(crate) fn handshake_timestamp(&mut self, now: Instant) -> handshake::Timestamp {
        self.clock(now).at(now)
    }

    fn add_link(&mut self, now: Instant, peer: PublicKey, addr: A, slot: u8, dial: bool) -> LinkId {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        let mut link = Link::new(id, peer, addr.clone(), slot, self.config.link.clone(), dial, now);
        link.set_clock(self.clock(now));
        self.links.insert(id, link);
        self.by_peer.insert((peer, slot as u16), id);
        self.by_addr.insert(addr, id);
        id
    }

    /// Dials a neighbour over the interface `addr` names: starts the handshake now and keeps
    /// the link up (redialling when it dies). Returns the existing link if there is one to
    /// that key on that interface; if that link is down it handshakes again at once (the way
    /// to say "this neighbour is reachable again"). Dialling the same key over another
    /// interface makes another link.
    pub fn connect(&mut self, now: Instant, peer: PublicKey, addr: A) -> LinkId {
        let slot = addr.interface().0;
        if let Some(&id) = self.by_peer.get(&(peer, slot as u16)) {
            if self.links.get(&id).is_some_and(|l| l.addr != addr) {
                self.pinned.insert(id, now + PIN_NEW_ADDRESS);
            }
            self.set_addr(id, addr);
            if let Some(l) = self.links.get_mut(&id) {
                l.dial_now(now);
            }
            return id;
        }
        let id = self.add_link(now, peer, addr, slot, true);
        let idx = self.new_index();
        self.by_index.insert(idx, id);
        if let Some(l) = self.links.get_mut(&id) {
            l.start_handshake(now, &mut *self.rng, &self.identity, idx);
        }
        id
    }

    /// The host's network changed (an interface came or went, WiFi <-> LTE): every link is
    /// probed now, and links that are down and dialled handshake again now, instead of
    /// waiting for their timers. Routes and sessions then see within a round trip which links
    /// still work.
    pub fn network_changed(&mut self, now: Instant) {
        for l in self.links.values_mut() {
            l.probe_now(now);
        }
    }

    /// The host's routes changed (a default route came back with DHCP): every dialled link
    /// that is not up handshakes now instead of at its next retry (its last attempt may have
    /// found no route). Up links are left alone: nothing is sent on them.
    pub fn redial(&mut self, now: Instant) {
        for l in self.links.values_mut().filter(|l| l.state() != LinkState::Up && l.dialled() && !l.parked()) {
            l.dial_now(now);
        }
    }

    /// A local interface went away (the driver saw it go): every link on it is down now,
    /// without waiting for dead-peer detection, and routes over them break at once; dialled
    /// links wait for [`Node::interface_up`] instead of redialling into nothing.
    pub fn interface_down(&mut self, now: Instant, iface: crate::link::Interface) {
        let ids: Vec<LinkId> =
            self.links.iter().filter(|(_, l)| l.addr.interface() == iface).map(|(id, _)| *id).collect();
        for id in ids {
            let ev = self.links.get_mut(&id).and_then(|l| l.park(now));
            self.after_link(id, ev);
        }
    }

    /// A local interface is (back) up: the dialled links parked on it handshake at once.
    /// New links over it come from [`Node::connect`] with an address on it.
    pub fn interface_up(&mut self, now: Instant, iface: crate::link::Interface) {
        for l in self.links.values_mut().filter(|l| l.addr.interface() == iface) {
            l.unpark(now);
        }
    }

    /// Marks a local interface as metered (cellular) or not; sessions with
    /// `bulk_on_metered = false` keep bulk off routes whose first link is on a metered one.
    pub fn set_metered(&mut self, iface: crate::link::Interface, metered: bool) {
        if metered {
            self.metered.insert(iface);
        } else {
            self.metered.remove(&iface);
        }
    }

    /// Whether a link lives on a metered interface.
    pub fn link_metered(&self, id: LinkId) -> bool {
        self.links.get(&id).is_some_and(|l| self.metered.contains(&l.addr.interface()))
    }

    /// The local interface a link lives on (virtual links: none).
    pub fn link_interface(&self, id: LinkId) -> Option<crate::link::Interface> {
        self.links.get(&id).map(|l| l.addr.interface())
    }

    /// An authenticated packet came from `from`: follow the peer there, unless we moved the
    /// link on purpose a moment ago and this is the old address still delivering.
    fn roam(&mut self, now: Instant, id: LinkId, from: A) {
        let Some(l) = self.links.get(&id) else { return };
        if l.addr == from {
            self.pinned.remove(&id);
        } else if l.addr.interface() != from.interface() {
            // Our side stays on the interface the link was made on: a packet that found its
            // way in through another one does not move the link there.
        } else if self.pinned.get(&id).is_some_and(|until| now < *until) {
            // Keep sending to the address we chose: the peer follows once it hears us there.
        } else {
            self.pinned.remove(&id);
            self.set_addr(id, from);
        }
    }

    fn set_addr(&mut self, id: LinkId, addr: A) {
        let Some(l) = self.links.get_mut(&id) else { return };
        if l.addr != addr {
            if self.by_addr.get(&l.addr) == Some(&id) {
                self.by_addr.remove(&l.addr);
            }
            l.addr = addr.clone();
            self.by_addr.insert(addr, id);
        }
    }

    /// Closes a link (tells the peer, breaks routes through it, stops redialling).
    pub fn close_link(&mut self, now: Instant, id: LinkId) {
        if let Some(carrier) = self.vlinks.get(&id).map(|v| v.carrier) {
            let _ = self.close_route(carrier);
            self.vlink_down(id, DownReason::Closed);
            self.drain_router();
            return;
        }
        let ev = self.links.get_mut(&id).and_then(|l| l.close(now));
        self.after_link(id, ev);
    }

    /// Turns per-hop acknowledgement and retransmission on or off (off only for the
    /// end-to-end baseline experiment).
    pub fn set_hop_reliability(&mut self, on: bool) {
        self.fwd.set_hop_reliability(on);
    }

    /// Feeds one received datagram. `data` is decrypted in place.
    pub fn handle_datagram(&mut self, now: Instant, from: A, data: &mut [u8]) {
        if let Err(reason) = self.handle_inner(now, Some(from.clone()), data) {
            self.count_reject(&from, reason);
        }
        self.vlink_work(now);
    }

    fn count_reject(&mut self, from: &A, reason: Reject) {
        match self.by_addr.get(from).and_then(|id| self.links.get_mut(id)) {
            Some(l) => l.stats.rejected.add(reason),
            None => self.stats.rejected.add(reason),
        }
    }

    /// `from`: where the datagram came from; `None` for one a return route brought (no
    /// roaming, and no handshake starts that way).
    fn handle_inner(&mut self, now: Instant, from: Option<A>, data: &mut [u8]) -> Result<(), Reject> {
        // A duplicate (or retransmission) of an init we answered: same answer, no new session
        // (a second one would orphan the first, which the initiator already uses).
        let is_init = data.len() == crate::wire::HANDSHAKE_INIT_LEN;
        if is_init {
            // Found by the init's ephemeral key, not by asking every link (a flood of inits
            // would cost a comparison per link each).
            let mut e = [0u8; PUBLIC_KEY_LEN];
            e.copy_from_slice(&data[8..8 + PUBLIC_KEY_LEN]);
            if let Some(l) = self.by_answered.get(&e).and_then(|id| self.links.get_mut(id)) {
                if l.answer_again(data) {
                    return Ok(());
                }
            }
        }
        let init_copy = if is_init { data.to_vec() } else { Vec::new() };
        let packet = Packet::parse(data).map_err(Reject::from)?;
        match packet {
            Packet::HandshakeInit(init) => {
                let Some(from) = from else { return Err(Reject::Handshake) };
                self.on_init(now, from, &init, &init_copy)
            }
            Packet::CookieReply(reply) => {
                let id = *self.by_index.get(&reply.receiver_index).ok_or(Reject::UnknownIndex)?;
                let link = self.links.get_mut(&id).ok_or(Reject::UnknownIndex)?;
                link.on_cookie_reply(now, &reply)
            }
            Packet::HandshakeResp(resp) => {
                let id = *self.by_index.get(&resp.receiver_index).ok_or(Reject::UnknownIndex)?;
                let link = self.links.get_mut(&id).ok_or(Reject::UnknownIndex)?;
                let ev = link.on_handshake_resp(now, &self.identity, &resp)?;
                if let Some(from) = from {
                    self.roam(now, id, from);
                }
                self.after_link(id, ev);
                Ok(())
            }
            Packet::Data(hdr) => {
                let id = *self.by_index.get(&hdr.receiver_index).ok_or(Reject::UnknownIndex)?;
                let link = self.links.get_mut(&id).ok_or(Reject::UnknownIndex)?;
                let (n, ev) = link.open(now, &hdr, data)?;
                // Authenticated and the newest from the peer: it may have moved (roaming);
                // follow it. A late packet still coming the old way does not move the link back.
                if let Some(from) = from.filter(|_| link.last_was_newest) {
                    self.roam(now, id, from);
                }
                self.after_link(id, ev);
                let (elicits, traffic) = self.handle_frames(now, id, &data[DATA_HEADER_LEN..DATA_HEADER_LEN + n]);
                if traffic {
                    if let Some(l) = self.links.get_mut(&id) {
                        l.note_traffic();
                    }
                }
                self.fwd.on_datagram(id, hdr.counter, elicits, now);
                Ok(())
            }
        }
    }

    /// A handshake init from `from`: `mac1` first (one HMAC), then the guard (under load a
    /// cookie reply instead, rate limits), then the ECDH; a replayed init (not newer than the
    /// last taken from that key on an up link) is refused. The answer goes where the init came
    /// from, but a link moves to a new address only once its peer speaks from there under the
    /// new keys (so a replayed init cannot redirect it).
    fn on_init(
        &mut self,
        now: Instant,
        from: A,
        init: &crate::wire::HandshakeInit<'_>,
        raw: &[u8],
    ) -> Result<(), Reject> {
        if !self.guard.mac1_ok(raw) {
            return Err(Reject::BadMac);
        }
        let (mut source, mut host) = (Vec::new(), Vec::new());
        from.write_source(&mut source);
        from.write_host(&mut host);
        let known = self.by_addr.get(&from).and_then(|id| self.links.get(id)).is_some_and(|l| l.is_up());
        match self.guard.check(now, &mut *self.rng, &source, &host, raw, known) {
            Verdict::Proceed => {}
            Verdict::Cookie(reply) => {
                self.push_unlinked(from, reply);
                return Err(Reject::Cookie);
            }
            Verdict::RateLimited => return Err(Reject::RateLimited),
        }
        let idx = self.new_index();
        let responded =
            handshake::respond(handshake::LINK_PROLOGUE, &mut RngRef(&mut *self.rng), &self.identity, init, idx)
                .map_err(|_| Reject::Handshake)?;
        let (peer, slot) = (responded.initiator, responded.slot);
        let existing = self.by_peer.get(&(peer, slot as u16)).copied();
        if let Some(l) = existing.and_then(|id| self.links.get_mut(&id)) {
            if !l.init_is_fresh(&responded.timestamp) {
                l.stale_init();
                return Err(Reject::StaleInit);
            }
        }
        let id = match existing {
            Some(id) => id,
            None if self.config.accept_incoming => {
                self.make_room_half_open(&host);
                self.add_link(now, peer, from.clone(), slot, false)
            }
            None => return Err(Reject::Handshake),
        };
        let Some(l) = self.links.get_mut(&id) else { return Err(Reject::Handshake) };
        let same_addr = l.addr == from;
        let before = l.answered_key();
        let accepted = l.on_handshake_init(now, &self.identity, raw, responded, idx);
        if accepted {
            if let Some(e) = before {
                self.by_answered.remove(&e);
            }
            self.by_answered.insert(*init.ephemeral, id);
            self.by_index.insert(idx, id);
            if same_addr {
                l.answer_in_copies();
            } else if let Some(answer) = l.take_urgent(now) {
                self.push_unlinked(from, answer);
            }
        }
        self.after_link(id, None);
        Ok(())
    }

    /// Links strangers' inits made that have not come up: a source host (`host`, as
    /// [`Endpoint::write_host`](crate::link::Endpoint::write_host) writes it) may keep an eighth
    /// of `max_half_open`, beyond which its own oldest is forgotten; beyond the limit in all,
    /// the oldest of anyone's. A flood of valid inits from one host so evicts only its own.
    fn make_room_half_open(&mut self, host: &[u8]) {
        let max = self.config.guard.max_half_open.max(1);
        let mut all = Vec::new();
        let mut mine = Vec::new();
        let mut buf = Vec::new();
        for l in self.links.values().filter(|l| !l.dialled() && !l.is_up() && l.stats.handshakes == 0) {
            all.push(l.id);
            buf.clear();
            l.addr.write_host(&mut buf);
            if buf == host {
                mine.push(l.id);
            }
        }
        let victim = if mine.len() >= (max / 8).max(1) {
            mine.first()
        } else if all.len() >= max {
            all.first()
        } else {
            None
        };
        if let Some(&oldest) = victim {
            self.forget_link(oldest);
            self.guard.stats.half_open_dropped += 1;
            self.stats.rejected.add(Reject::HalfOpen);
        }
    }

    /// Removes a link that never came up (no routes, no buffers) and every index naming it.
    fn forget_link(&mut self, id: LinkId) {
        let Some(l) = self.links.remove(&id) else { return };
        self.by_peer.remove(&(l.peer, l.slot as u16));
        if self.by_addr.get(&l.addr) == Some(&id) {
            self.by_addr.remove(&l.addr);
        }
        self.by_index.retain(|_, v| *v != id);
        if let Some(e) = l.answered_key() {
            self.by_answered.remove(&e);
        }
        self.pinned.remove(&id);
        self.fwd.remove_link(id);
    }

    fn push_unlinked(&mut self, to: A, packet: Vec<u8>) {
        if self.unlinked.len() < MAX_UNLINKED {
            self.unlinked.push_back((to, packet));
        } else {
            self.stats.rejected.add(Reject::QueueFull);
        }
    }

    /// The next datagram that goes out on no link (a cookie reply, the answer to an init from
    /// a new address): drivers that poll per link call this too. [`Node::poll_transmit`]
    /// with `None` includes it.
    #[must_use = "the datagram in `buf` must be sent to the returned address"]
    pub fn poll_unlinked(&mut self, buf: &mut Vec<u8>) -> Option<A> {
        let (to, p) = self.unlinked.pop_front()?;
        *buf = p;
        Some(to)
    }

    /// Handles the frames of one packet; returns whether any asks for an ack, and whether any
    /// is traffic (not link control).
    fn handle_frames(&mut self, now: Instant, id: LinkId, mut plain: &[u8]) -> (bool, bool) {
        let mut elicits = false;
        let mut traffic = false;
        loop {
            let frame = match Frame::decode(&mut plain) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    // Authenticated but malformed: the peer is buggy; drop the rest of the packet.
                    if let Some(l) = self.links.get_mut(&id) {
                        l.stats.rejected.add(e.into());
                    }
                    break;
                }
            };
            elicits |= eliciting(&frame);
            traffic |= self::traffic(&frame);
            let result = match frame {
                Frame::Ping | Frame::Probe | Frame::Rekey { .. } | Frame::RekeyAck { .. } | Frame::Close { .. } => {
                    let Some(l) = self.links.get_mut(&id) else { break };
                    match l.on_frame(now, &mut *self.rng, &frame) {
                        Ok(ev) => {
                            self.after_link(id, ev);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                Frame::Ack(ack) => {
                    let r = self.fwd.on_ack(id, &ack, now);
                    self.drain_router();
                    r
                }
                Frame::MaxData { route, class, limit } => match Class::from_u8(class) {
                    Some(class) => self.fwd.on_max_data(id, route, class, limit),
                    None => Err(Reject::Malformed),
                },
                Frame::RouteData { route, class, offset, payload } => {
                    self.on_route_data(now, id, route, class, offset, payload)
                }
                _ => {
                    let (mut table, router, rng, identity) = self.table();
                    let r = router.on_frame(now, rng, identity, &mut table, id, &frame);
                    self.drain_router();
                    r
                }
            };
            if let Err(reason) = result {
                if let Some(l) = self.links.get_mut(&id) {
                    l.stats.rejected.add(reason);
                }
            }
            if !self.link_is_up(id) {
                break;
            }
        }
        (elicits, traffic)
    }

    fn on_route_data(
        &mut self,
        now: Instant,
        id: LinkId,
        route: RouteId,
        class: u8,
        offset: u64,
        payload: &[u8],
    ) -> Result<(), Reject> {
        let class = Class::from_u8(class).ok_or(Reject::Malformed)?;
        match self.fwd.on_data(now, id, route, class, offset, payload) {
            Ok(delivered) => {
                let Some(msgs) = delivered else { return Ok(()) };
                let (mut table, router, _, _) = self.table();
                let r = router.on_delivered(now, &mut table, msgs);
                self.drain_router();
                self.take_link_data(now);
                r
            }
            Err(Reject::UnknownRoute) => {
                let (mut table, router, _, _) = self.table();
                router.unknown_route(&mut table, id, route);
                Err(Reject::UnknownRoute)
            }
            Err(e) => Err(e),
        }
    }

    fn drain_router(&mut self) {
        while let Some(ev) = self.router.events.pop_front() {
            if !self.carrier_event(&ev) {
                self.events.push_back(Event::Route(ev));
            }
        }
        for key in self.fwd.writable.drain(..) {
            // A carrier with room again: its virtual link is pumped at the next transmit.
            if !self.by_carrier.contains_key(&key.route) {
                self.events.push_back(Event::Route(RouteEvent::Writable { route: key.route, class: key.class }));
            }
        }
    }

    /// Bookkeeping after a link changed: index map, events, routes over a dead link.
    fn after_link(&mut self, id: LinkId, ev: Option<LinkEvent>) {
        let Some(l) = self.links.get_mut(&id) else { return };
        for idx in l.take_retired() {
            if self.by_index.get(&idx) == Some(&id) {
                self.by_index.remove(&idx);
            }
        }
        let peer = l.peer;
        let rtt = l.stats.rtt;
        match ev {
            Some(LinkEvent::Up) => {
                self.fwd.reset_link(id);
                if let Some(rtt) = rtt {
                    self.fwd.seed_rtt(id, rtt);
                }
                self.events.push_back(Event::LinkUp { link: id, peer });
            }
            Some(LinkEvent::Reset) => self.fwd.reset_link(id),
            Some(LinkEvent::Down(reason)) => {
                self.events.push_back(Event::LinkDown { link: id, peer, reason });
                let (mut table, router, _, _) = self.table();
                router.on_link_down(&mut table, id);
                self.fwd.reset_link(id);
                self.fwd.remove_link(id);
                self.drain_router();
            }
            None => {}
        }
    }

    /// The next datagram to send, written into `buf` (its allocation reused); returns where it
    /// goes, `None` when nothing is due now. `link: None` serves every link round robin;
    /// `Some(id)` only that link (for drivers that pace each link, e.g. by its wire or socket
    /// being free). Per link: handshake messages first, then link control, acks, route
    /// control, credit updates, realtime and bulk messages, bundled up to the MTU. Call until
    /// `None` after every other call.
    #[must_use = "the datagram in `buf` must be sent to the returned address"]
    pub fn poll_transmit(&mut self, now: Instant, link: Option<LinkId>, buf: &mut Vec<u8>) -> Option<A> {
        if let Some(id) = link {
            return self.poll_link(now, id, buf);
        }
        if let Some(to) = self.poll_unlinked(buf) {
            return Some(to);
        }
        let ids: Vec<LinkId> = self
            .links
            .range(LinkId(self.cursor)..)
            .chain(self.links.range(..LinkId(self.cursor)))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(dst) = self.poll_link(now, id, buf) {
                self.cursor = id.0 + 1;
                return Some(dst);
            }
        }
        None
    }

    /// The next datagram of one link.
    fn poll_link(&mut self, now: Instant, id: LinkId, buf: &mut Vec<u8>) -> Option<A> {
        self.vlink_work(now);
        self.pump_virtual(now);
        let returning = self.links.get(&id).and_then(|l| self.return_routes.get(&l.peer)).copied();
        if let Some(route) = returning.filter(|r| self.router.is_ready(*r)) {
            // An asymmetric link: what we send the peer goes over the return route.
            self.fwd.set_sparse_acks(id);
            for _ in 0..64 {
                if !self.carrier_has_room(route, Dir::Fwd) || self.next_datagram(now, id, buf).is_none() {
                    break;
                }
                self.send_pieces(now, route, vlink::RETURN_MORE, buf);
            }
            self.drain_router();
            return None;
        }
        self.next_datagram(now, id, buf)
    }

    /// The link's next datagram into `buf`.
    fn next_datagram(&mut self, now: Instant, id: LinkId, buf: &mut Vec<u8>) -> Option<A> {
        let l = self.links.get(&id)?;
        let wants = l.has_control() || self.fwd.wants_send(id, now);
        if wants && l.is_up() && l.key_expired(now) && !l.handshaking() {
            // Idle past the key's hard limit: a fresh handshake first; what waits goes out
            // under its keys (one round trip later, as WireGuard after REJECT_AFTER_TIME).
            let idx = self.new_index();
            self.by_index.insert(idx, id);
            let l = self.links.get_mut(&id)?;
            if !l.refresh_session(now, &mut *self.rng, &self.identity, idx) {
                self.by_index.remove(&idx);
            }
        }
        let l = self.links.get_mut(&id)?;
        if let Some(p) = l.take_urgent(now) {
            *buf = p;
            return Some(l.addr.clone());
        }
        if !wants {
            return None;
        }
        let room = l.begin_packet(now, buf)?;
        let filled = self.fwd.fill(id, now, buf, room);
        // Without per-hop acks (the end-to-end baseline) nothing answers traffic.
        let answered = filled.eliciting && self.fwd.config().hop_reliability;
        let counter = l.seal_packet(now, buf, filled.eliciting, answered)?;
        let dst = l.addr.clone();
        self.fwd.on_sent(id, counter, filled, buf.len(), now);
        if !self.fwd.writable.is_empty() {
            self.drain_router();
        }
        Some(dst)
    }

    /// The links of this node (for drivers that poll per link).
    pub fn link_ids(&self) -> Vec<LinkId> {
        self.links.keys().copied().collect()
    }

    /// Where a link's datagrams go.
    pub fn link_addr(&self, id: LinkId) -> Option<&A> {
        self.links.get(&id).map(|l| &l.addr)
    }

    /// The next event (links up and down, routes ready or failed, route data); call until
    /// `None` after every other call.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must be called next; `None`: no timer at all.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let keepalive = self.config.route.idle_timeout / 4;
        self.links
            .values()
            .filter_map(|l| l.poll_timeout())
            .chain(self.router.poll_timeout())
            .chain(self.fwd.poll_timeout())
            .chain(self.vlinks.values().filter(|v| v.source && v.up).filter_map(|v| Some(v.last_sent? + keepalive)))
            .min()
    }

    /// Runs every timer due at `now` (links, routes, buffers).
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            let (acked, lost) = self.fwd.link_loss(id);
            let Some(l) = self.links.get_mut(&id) else { continue };
            // What the acks say of the link's loss, for dead-peer detection.
            l.set_outcomes(acked, lost);
            if l.poll_timeout().is_some_and(|d| d <= now) {
                let by_index = &mut self.by_index;
                let mut alloc = |rng: &mut dyn CryptoRngCore| loop {
                    let i = rng.next_u32();
                    if i != 0 && !by_index.contains_key(&i) {
                        by_index.insert(i, id);
                        return i;
                    }
                };
                let ev = l.handle_timeout(now, &mut *self.rng, &self.identity, &mut alloc);
                self.after_link(id, ev);
            }
        }
        if self.router.poll_timeout().is_some_and(|d| d <= now) {
            let (mut table, router, _, _) = self.table();
            router.handle_timeout(now, &mut table);
            self.drain_router();
        }
        if self.fwd.poll_timeout().is_some_and(|d| d <= now) {
            self.fwd.handle_timeout(now);
            self.drain_router();
        }
        self.vlink_keepalive(now);
        self.vlink_work(now);
    }

    /// Starts building a source route through `hops` (telescoping). Watch for
    /// `RouteEvent::Ready` or `RouteEvent::Failed` with the returned id.
    ///
    /// `first`: the link the route leaves through, one of the links to `hops[0]` (e.g. the
    /// one on the cellular interface), and the route stays on it; `None`: the up link to it
    /// with the shortest round trip.
    pub fn open_route(
        &mut self,
        now: Instant,
        first: Option<LinkId>,
        hops: &[PublicKey],
    ) -> Result<RouteId, RouteError> {
        let public = self.public;
        if let Some(link) = first {
            if !self.links_to(hops.first().ok_or(RouteError::InvalidHops)?).contains(&link) {
                return Err(RouteError::NoLink);
            }
        }
        let (mut table, router, rng, _) = self.table();
        router.open(now, rng, &public, &mut table, hops, first)
    }

    /// Sends application bytes on a route (source to last hop, or back) in a service class.
    /// `QueueFull` means the route's buffer is full: wait for room ([`Node::send_room`]) —
    /// that is the backpressure.
    pub fn send(&mut self, now: Instant, route: RouteId, class: Class, data: &[u8]) -> Result<(), RouteError> {
        let mtu = self.route_mtu();
        let (mut table, router, _, _) = self.table();
        router.send(now, &mut table, route, class, data, mtu)
    }

    /// Application bytes that fit in a route's send buffer now (in messages of up to
    /// [`Node::route_mtu`]).
    pub fn send_room(&self, route: RouteId, class: Class) -> usize {
        let Some(key) = self.router.send_flow(route, class) else { return 0 };
        let room = self.fwd.room(key);
        let per_msg = self.route_mtu() + crate::route::ROUTE_MSG_OVERHEAD;
        (room / per_msg) * self.route_mtu() + (room % per_msg).saturating_sub(crate::route::ROUTE_MSG_OVERHEAD)
    }

    /// Closes a route held here (as source or last hop).
    pub fn close_route(&mut self, route: RouteId) -> Result<(), RouteError> {
        let (mut table, router, _, _) = self.table();
        router.close(&mut table, route)
    }

    /// Whether our route `route` reached its last hop.
    pub fn route_ready(&self, route: RouteId) -> bool {
        self.router.is_ready(route)
    }

    /// Payment counters: what this node earned as a hop and owes as a source.
    pub fn accounting(&self) -> crate::route::AccountingStats {
        self.router.accounting()
    }

    /// The pseudonymous key our route `route` pays its hops with (an escrow account authorises
    /// it), if the route pays.
    pub fn route_payer_key(&self, route: RouteId) -> Option<PublicKey> {
        self.router.payer_key(route)
    }

    /// The newest receipts of the routes this node charged, not handed out before, each signed
    /// by its route key over `message(receipt)` (the escrow's settle request).
    pub fn settlements(
        &mut self,
        message: &dyn Fn(&crate::accounting::Receipt) -> Vec<u8>,
    ) -> Vec<(crate::accounting::Receipt, [u8; crate::identity::SIGNATURE_LEN])> {
        self.router.settlements(message)
    }

    /// Number of entries in the route table (as source, relay or last hop).
    pub fn route_count(&self) -> usize {
        self.router.len()
    }

    /// The store-and-forward state of one direction and class of a route at this node.
    pub fn flow_stats(&self, route: RouteId, dir: Dir, class: Class) -> Option<FlowStats> {
        self.fwd.flow_stats(FlowKey { route, dir, class })
    }

    /// Every route id this node holds (as source, relay or last hop).
    pub fn route_ids(&self) -> Vec<RouteId> {
        self.router.ids()
    }

    /// Bytes held in all route buffers now, and reserved for them.
    pub fn buffered_bytes(&self) -> (usize, usize) {
        (self.fwd.buffered_bytes(), self.fwd.reserved_bytes())
    }

    /// The link a route to `peer` would take: the up one with the shortest round trip; if
    /// none is up, the first one there is (to read its state).
    pub fn link_to(&self, peer: &PublicKey) -> Option<LinkId> {
        best_link(&self.links, &self.vlinks, &self.by_peer, &self.fwd, peer)
            .or_else(|| links_of(&self.by_peer, peer).next())
    }

    /// Every link to `peer`: one per slot (interface), then a virtual one.
    pub fn links_to(&self, peer: &PublicKey) -> Vec<LinkId> {
        links_of(&self.by_peer, peer).collect()
    }

    /// A snapshot of link `id`.
    pub fn link(&self, id: LinkId) -> Option<LinkInfo<A>> {
        self.links.get(&id).map(|l| {
            let mut stats = l.stats.clone();
            if let Some(rtt) = self.fwd.link_rtt(id) {
                stats.rtt = Some(rtt);
            }
            let (acked, lost) = self.fwd.link_loss(id);
            LinkInfo {
                id,
                peer: l.peer,
                addr: l.addr.clone(),
                state: l.state(),
                dialled: l.dialled(),
                epoch: l.epoch(),
                in_flight: self.fwd.in_flight(id),
                acked,
                lost,
                stats,
            }
        })
    }

    /// Snapshots of every link.
    pub fn links(&self) -> Vec<LinkInfo<A>> {
        self.links.keys().filter_map(|id| self.link(*id)).collect()
    }
}

/// Virtual links: a route that carries a link between its ends (see [`crate::vlink`]).
impl<A: crate::link::Endpoint> Node<A> {
    /// Opens a virtual link to the last of `hops` over a route through them (at least two
    /// hops: a neighbour has a physical link). It comes up (`Event::LinkUp` with the returned
    /// id) when the route is ready; from then on routes can be built through it as through
    /// any neighbour, and the nodes in between hold only the carrier route's entry. It goes
    /// down (`Event::LinkDown`) when the carrier breaks, and closes with [`Node::close_link`].
    pub fn open_virtual_link(&mut self, now: Instant, hops: &[PublicKey]) -> Result<LinkId, RouteError> {
        let peer = *hops.last().ok_or(RouteError::InvalidHops)?;
        if hops.len() < 2 {
            return Err(RouteError::InvalidHops);
        }
        let carrier = self.open_route(now, None, hops)?;
        let id = LinkId(self.next_link);
        self.next_link += 1;
        self.vlinks.insert(
            id,
            VLink {
                peer,
                carrier,
                source: true,
                up: false,
                counter: 0,
                partial: vlink::Reassembly::new(vlink::MORE),
                last_sent: None,
            },
        );
        self.by_carrier.insert(carrier, id);
        Ok(id)
    }

    /// Whether `id` is one of our virtual links, and it is up.
    pub fn virtual_link_up(&self, id: LinkId) -> bool {
        self.vlinks.get(&id).is_some_and(|v| v.up)
    }

    /// The route carrying a virtual link.
    pub fn virtual_link_carrier(&self, id: LinkId) -> Option<RouteId> {
        self.vlinks.get(&id).map(|v| v.carrier)
    }

    fn link_is_up(&self, id: LinkId) -> bool {
        link_up(&self.links, &self.vlinks, id)
    }

    /// Queues one virtual link message (`MSG_LINK`) on a carrier.
    fn send_link_msg(&mut self, now: Instant, route: RouteId, class: Class, body: &[u8]) -> Result<(), RouteError> {
        let mtu = self.route_mtu();
        let (mut table, router, _, _) = self.table();
        router.send_kind(now, &mut table, route, class, crate::route::MSG_LINK, body, mtu)
    }

    /// Takes a route event about a carrier (the application never sees those). Returns
    /// whether it was one.
    fn carrier_event(&mut self, ev: &RouteEvent) -> bool {
        let route = match ev {
            RouteEvent::Ready { route }
            | RouteEvent::Failed { route, .. }
            | RouteEvent::Closed { route }
            | RouteEvent::Data { route, .. }
            | RouteEvent::Delivered { route, .. }
            | RouteEvent::Writable { route, .. } => *route,
        };
        if let RouteEvent::Closed { route } = ev {
            self.returned.remove(route);
        }
        let Some(&id) = self.by_carrier.get(&route) else { return false };
        match ev {
            RouteEvent::Ready { .. } => self.carriers_ready.push(route),
            RouteEvent::Failed { .. } => self.vlink_down(id, DownReason::Timeout),
            RouteEvent::Closed { .. } => self.vlink_down(id, DownReason::PeerClosed),
            _ => {}
        }
        true
    }

    /// A carrier we opened that carried nothing for a quarter of the relays' idle timeout gets
    /// a message that says nothing, so they keep it.
    fn vlink_keepalive(&mut self, now: Instant) {
        let every = self.config.route.idle_timeout / 4;
        let due: Vec<(LinkId, RouteId)> = self
            .vlinks
            .iter()
            .filter(|(_, v)| v.source && v.up && v.last_sent.is_some_and(|t| t + every <= now))
            .map(|(id, v)| (*id, v.carrier))
            .collect();
        for (id, carrier) in due {
            let _ = self.send_link_msg(now, carrier, Class::Realtime, &[vlink::KEEPALIVE]);
            if let Some(v) = self.vlinks.get_mut(&id) {
                v.last_sent = Some(now);
            }
        }
        self.drain_router();
    }

    /// Our carriers that became ready: introduce ourselves to the far end; the link is up.
    fn vlink_work(&mut self, now: Instant) {
        if self.carriers_ready.is_empty() {
            return;
        }
        for route in std::mem::take(&mut self.carriers_ready) {
            let Some(&id) = self.by_carrier.get(&route) else { continue };
            let Some(peer) = self.vlinks.get(&id).map(|v| v.peer) else { continue };
            let mut nonce = [0u8; 16];
            self.rng.fill_bytes(&mut nonce);
            let hello = vlink::hello(&self.identity, &peer, nonce);
            if self.send_link_msg(now, route, Class::Realtime, &hello).is_err() {
                let _ = self.close_route(route);
                self.vlink_down(id, DownReason::Timeout);
                continue;
            }
            self.vlink_up(id, peer);
            if let Some(v) = self.vlinks.get_mut(&id) {
                v.last_sent = Some(now);
            }
        }
        self.drain_router();
    }

    fn vlink_up(&mut self, id: LinkId, peer: PublicKey) {
        if let Some(v) = self.vlinks.get_mut(&id) {
            v.up = true;
        }
        // Routes prefer a physical link to the same peer (see `best_link`).
        self.by_peer.insert((peer, VIRTUAL_SLOT), id);
        self.fwd.reset_link(id);
        self.events.push_back(Event::LinkUp { link: id, peer });
    }

    fn vlink_down(&mut self, id: LinkId, reason: DownReason) {
        let Some(v) = self.vlinks.remove(&id) else { return };
        self.by_carrier.remove(&v.carrier);
        if self.by_peer.get(&(v.peer, VIRTUAL_SLOT)) == Some(&id) {
            self.by_peer.remove(&(v.peer, VIRTUAL_SLOT));
        }
        if v.up {
            self.events.push_back(Event::LinkDown { link: id, peer: v.peer, reason });
        }
        let (mut table, router, _, _) = self.table();
        router.on_link_down(&mut table, id);
        self.fwd.reset_link(id);
        self.fwd.remove_link(id);
    }

    /// Virtual link messages that arrived at an end of a carrier: a far end's introduction,
    /// or pieces of packets, whose frames are then handled as a physical link's.
    fn take_link_data(&mut self, now: Instant) {
        while let Some((route, body)) = self.router.link_data.pop_front() {
            if body == [vlink::KEEPALIVE] {
                continue;
            }
            if matches!(body.first(), Some(&vlink::RETURN_MORE | &vlink::RETURN_END)) {
                self.on_returned(now, route, &body);
                continue;
            }
            let Some(&id) = self.by_carrier.get(&route) else {
                let r = match vlink::check_hello(&body, &self.public) {
                    Ok(_) if !self.config.accept_incoming => Err(Reject::Handshake),
                    // Only the source opens a virtual link: a last hop cannot turn our own
                    // route into one.
                    Ok(_) if self.router.is_origin(route) => Err(Reject::BadRouteMessage),
                    r => r,
                };
                match r {
                    Ok(peer) => {
                        let id = LinkId(self.next_link);
                        self.next_link += 1;
                        let v = VLink {
                            peer,
                            carrier: route,
                            source: false,
                            up: false,
                            counter: 0,
                            partial: vlink::Reassembly::new(vlink::MORE),
                            last_sent: None,
                        };
                        self.vlinks.insert(id, v);
                        self.by_carrier.insert(route, id);
                        self.vlink_up(id, peer);
                    }
                    Err(e) => self.stats.rejected.add(e),
                }
                continue;
            };
            let Some(v) = self.vlinks.get_mut(&id) else { continue };
            match v.partial.take(&body) {
                Ok(Some(packet)) => {
                    let mut c = [0u8; 8];
                    c.copy_from_slice(&packet[..8]);
                    let (elicits, _) = self.handle_frames(now, id, &packet[8..]);
                    self.fwd.on_datagram(id, u64::from_be_bytes(c), elicits, now);
                }
                Ok(None) => {}
                Err(e) => self.stats.rejected.add(e),
            }
        }
    }

    /// A piece of a datagram a peer sent us over its return route: whole, it is handled like
    /// one from the network (found by its link index, authenticated by the link).
    fn on_returned(&mut self, now: Instant, route: RouteId, piece: &[u8]) {
        if !self.returned.contains_key(&route) && self.returned.len() >= self.config.route.max_routes {
            self.stats.rejected.add(Reject::QueueFull);
            return;
        }
        let r = self.returned.entry(route).or_insert_with(|| vlink::Reassembly::new(vlink::RETURN_MORE));
        match r.take(piece) {
            Ok(Some(mut datagram)) => {
                if let Err(e) = self.handle_inner(now, None, &mut datagram) {
                    self.stats.rejected.add(e);
                }
            }
            Ok(None) => {}
            Err(e) => self.stats.rejected.add(e),
        }
    }

    /// Moves what the forwarder has for each virtual link into its carrier, a packet at a
    /// time, while the carrier has little queued (so the virtual hop's RTT, and with it its
    /// retransmission timer, reflects the path and not a deep queue).
    fn pump_virtual(&mut self, now: Instant) {
        if self.vlinks.is_empty() {
            return;
        }
        let room = self.config.link.max_plaintext();
        let ids: Vec<LinkId> = self.vlinks.iter().filter(|(_, v)| v.up).map(|(id, _)| *id).collect();
        for id in ids {
            for _ in 0..64 {
                let Some(v) = self.vlinks.get(&id) else { break };
                let (carrier, counter) = (v.carrier, v.counter);
                let dir = if v.source { Dir::Fwd } else { Dir::Back };
                if !self.fwd.wants_send(id, now) || !self.carrier_has_room(carrier, dir) {
                    break;
                }
                let mut buf = Vec::with_capacity(8 + room);
                buf.extend_from_slice(&counter.to_be_bytes());
                let filled = self.fwd.fill(id, now, &mut buf, room);
                if buf.len() == 8 {
                    break;
                }
                self.send_pieces(now, carrier, vlink::MORE, &buf);
                self.fwd.on_sent(id, counter, filled, buf.len(), now);
                if let Some(v) = self.vlinks.get_mut(&id) {
                    v.counter += 1;
                    v.last_sent = Some(now);
                }
            }
        }
        self.drain_router();
    }

    /// Whether a carrier can take a whole packet now and has little queued (so what rides on
    /// it sees the path's RTT, not a deep queue's).
    fn carrier_has_room(&self, route: RouteId, dir: Dir) -> bool {
        const CARRIER_QUEUE: usize = 64 * 1024;
        let mtu = self.route_mtu();
        let packet = 8 + self.config.link.mtu.max(self.config.link.max_plaintext());
        let needed = packet + packet.div_ceil(mtu.saturating_sub(1).max(1)) * (crate::route::ROUTE_MSG_OVERHEAD + 1);
        let key = FlowKey { route, dir, class: Class::Bulk };
        self.fwd.buffered(key) <= CARRIER_QUEUE && self.fwd.room(key) >= needed
    }

    /// Sends a packet over a carrier in route messages (`more` tags all but the last piece).
    fn send_pieces(&mut self, now: Instant, route: RouteId, more: u8, packet: &[u8]) {
        let mut sent = true;
        for p in vlink::pieces(packet, self.route_mtu(), more) {
            sent &= self.send_link_msg(now, route, Class::Bulk, &p).is_ok();
        }
        if !sent {
            // Not after a room check; a lost packet, which the link above recovers from.
            self.stats.rejected.add(Reject::QueueFull);
        }
    }

    /// Makes a link asymmetric (seed: "asymmetric connectivity"): from now on everything this
    /// node sends to `peer` (handshake answers, acks, credit, route control and data) travels
    /// over `route`, a route this node opened that ends at `peer`, instead of to the peer's
    /// address, which only carries data from the peer to us. The peer needs no setting: it
    /// takes what arrives on the route as datagrams of its link to us (sealed by the link, so
    /// the route cannot forge them). `None` undoes it.
    pub fn set_return_route(&mut self, peer: PublicKey, route: Option<RouteId>) {
        match route {
            Some(r) => self.return_routes.insert(peer, r),
            None => self.return_routes.remove(&peer),
        };
    }
}
