//! Source routes (seed: "routing overview"). Each node keeps `route id -> (previous hop, next
//! hop)` where a hop is `(link, the neighbour's id for this route)`; ids are chosen locally and
//! at random by each node, so per-packet overhead is a constant 4-byte id whatever the length.
//!
//! Telescoping setup: the source joins the first hop with ROUTE_SETUP over their link, then asks
//! the current last hop, end-to-end encrypted to that hop, to EXTEND to the next one, and so on.
//! Each hop learns only its previous and next hop. The source keys every hop with a fresh
//! ephemeral ECDH against the hop's static key; the hop proves it with a key confirmation, so a
//! hop that lies about who it extended to is caught. Forwarding a data frame is one table lookup
//! between opening it on the ingress link and sealing it on the egress link.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;

use crate::crypto::replay::ReplayWindow;
use crate::crypto::{self, dh_static, hkdf, AeadKey, Ephemeral, TAG_LEN};
use crate::forward::{Class, Delivered, Dir, FlowKey, ForwardConfig, Forwarder};
use crate::frame::{Frame, PROOF_LEN};
use crate::identity::{PublicKey, SecretKey, PUBLIC_KEY_LEN};
use crate::stats::Reject;
pub use crate::types::RouteId;
use crate::types::{Buckets, LinkId, RngRef};

mod account;
pub use account::{AccountingConfig, AccountingStats};

/// Error codes carried in ROUTE_ERROR frames and EXTEND_FAILED messages.
pub mod code {
    /// The id in the frame is not a route of the sender (it echoes the id it was sent).
    pub const UNKNOWN_ROUTE: u8 = 1;
    /// A hop could not reach the next hop (no link, or the link went down).
    pub const HOP_UNREACHABLE: u8 = 2;
    /// A hop refused to join (route table full, policy).
    pub const REFUSED: u8 = 3;
    /// A hop's extension got no answer in time.
    pub const TIMEOUT: u8 = 4;
}

/// Why a route could not be built or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("a route needs at least one hop and no repeated or local hops")]
    /// Empty, repeated or local hops.
    InvalidHops,
    #[error("no link is up to the first hop")]
    /// No link to the first hop is up.
    NoLink,
    #[error("hop {hop} could not reach the next hop")]
    /// A hop could not reach the next one.
    HopUnreachable {
        /// Which hop (0: the first).
        hop: usize,
    },
    #[error("a hop refused the route")]
    /// A hop refused to join.
    Refused,
    #[error("route setup timed out after {joined} of {total} hops")]
    /// Setup did not finish in time.
    Timeout {
        /// Hops that joined.
        joined: usize,
        /// Hops of the route.
        total: usize,
    },
    #[error("a hop failed to prove its key")]
    /// A hop failed to prove its key.
    BadProof,
    #[error("route broken: a link on it went down or a hop forgot it")]
    /// A link of the route went down, or a hop forgot it.
    Broken,
    #[error("no such route")]
    /// No such route.
    UnknownRoute,
    #[error("route is still being set up")]
    /// Still being set up.
    NotReady,
    #[error("message of {len} bytes exceeds the route MTU of {max}")]
    /// A message over the route MTU.
    TooLarge {
        /// The message's length.
        len: usize,
        /// The route MTU.
        max: usize,
    },
    #[error("the link queue is full")]
    /// The route's buffer is full: wait for `Writable`.
    QueueFull,
    #[error("the node holds its maximum number of routes")]
    /// The node holds its maximum number of routes.
    TableFull,
}

/// Route table settings.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Whole telescoping setup must finish within this.
    pub setup_timeout: Duration,
    /// A relay forgets a route that carried nothing for this long.
    pub idle_timeout: Duration,
    /// Most routes (as source or relay) this node holds. A neighbour's share is a part of
    /// it (see [`Router`]'s fair shares).
    pub max_routes: usize,
    /// Route setups per second one neighbour may ask of this node (each costs an ECDH).
    pub setup_rate: u32,
    /// Route setups one neighbour may ask at once.
    pub setup_burst: u32,
    /// Paying hops, and being paid as one.
    pub accounting: AccountingConfig,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            setup_timeout: Duration::from_secs(10),
            // Idle sessions send nothing (a phone's radio sleeps), so their routes must outlive
            // long quiet spells: half an hour, bounded in memory by `max_routes` and the
            // forwarder's budget. A route whose link goes down is torn down at once anyway.
            idle_timeout: Duration::from_secs(30 * 60),
            max_routes: 65_536,
            setup_rate: 500,
            setup_burst: 500,
            accounting: AccountingConfig::default(),
        }
    }
}

// Kinds of end-to-end route messages (inside the hop-sealed payload of ROUTE_DATA).
const MSG_APP: u8 = 1;
const MSG_EXTEND: u8 = 2;
const MSG_EXTENDED: u8 = 3;
const MSG_EXTEND_FAILED: u8 = 4;
const MSG_DELIVERED: u8 = 5;
/// A piece of a virtual link's packet (the route carries a link: see `vlink`).
pub(crate) const MSG_LINK: u8 = 6;

/// The last hop confirms delivery to the source every this many bytes...
pub const DELIVERY_CONFIRM_BYTES: u64 = 64 * 1024;
/// ...or this long after the last unconfirmed delivery, whichever comes first.
pub const DELIVERY_CONFIRM_DELAY: Duration = Duration::from_millis(20);

/// Bytes a route message adds to application data: counter, tag, kind.
pub const ROUTE_MSG_OVERHEAD: usize = 8 + TAG_LEN + 1;

const HOP_SALT_LABEL: &[u8] = b"skyroute route hop v1";

/// Keys a source shares with one hop of one route.
struct HopKeys {
    fwd: AeadKey,
    back: AeadKey,
}

fn derive_hop(secret: &[u8; 32], e_pub: &[u8; PUBLIC_KEY_LEN], hop: &PublicKey) -> (HopKeys, [u8; PROOF_LEN]) {
    let salt = crypto::hash(&[HOP_SALT_LABEL]);
    let mut info = [0u8; 2 * PUBLIC_KEY_LEN];
    info[..PUBLIC_KEY_LEN].copy_from_slice(e_pub);
    info[PUBLIC_KEY_LEN..].copy_from_slice(&hop.to_bytes());
    let [fwd, back, proof_key] = hkdf::<3>(&salt, secret, &info);
    let mut proof = [0u8; PROOF_LEN];
    proof.copy_from_slice(&proof_key[..PROOF_LEN]);
    (HopKeys { fwd: AeadKey::new(&fwd), back: AeadKey::new(&back) }, proof)
}

/// Seals a route message. The counter (nonce) is `seq << 1 | class`, one sequence per class,
/// with one replay window per class at the receiver.
fn seal_msg(key: &AeadKey, seqs: &mut [u64; 2], class: Class, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ROUTE_MSG_OVERHEAD + body.len());
    let seq = &mut seqs[class as usize];
    let n = *seq << 1 | class as u64;
    *seq += 1;
    out.extend_from_slice(&n.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    let tag = key.seal(n, &[], &mut out[8..]);
    out.extend_from_slice(&tag);
    out
}

/// First byte of an unsealed message of a direct route: `DIRECT | kind`. A sealed message
/// starts with its counter, whose top bit is never set (`seq << 1 | class`, seq < 2^62).
const DIRECT: u8 = 0x80;

/// Bytes a direct route's message adds to application data: the kind.
pub const DIRECT_MSG_OVERHEAD: usize = 1;

/// The keys and counters of one end of a route, in the direction it sends.
enum Sealer<'a> {
    /// A route of more than one hop: messages sealed end to end with the hop keys.
    Sealed(&'a AeadKey, &'a mut [u64; 2]),
    /// A direct route (source and last hop are link neighbours): the link's encryption,
    /// integrity and replay protection already cover exactly these two nodes, so a message
    /// is its kind and body.
    Direct,
}

impl Sealer<'_> {
    fn seal(self, class: Class, kind: u8, body: &[u8]) -> Vec<u8> {
        match self {
            Sealer::Sealed(key, seqs) => seal_msg(key, seqs, class, kind, body),
            Sealer::Direct => {
                let mut out = Vec::with_capacity(DIRECT_MSG_OVERHEAD + body.len());
                out.push(DIRECT | kind);
                out.extend_from_slice(body);
                out
            }
        }
    }
}

/// Opens a message of a route that is `direct` or not; a message of the other form is
/// rejected (a sealed one fails its tag, an unsealed one on a sealed route is refused).
fn open_any(
    direct: bool,
    key: &AeadKey,
    replays: &mut [ReplayWindow; 2],
    payload: &[u8],
) -> Result<(u8, Vec<u8>), Reject> {
    if !direct {
        return open_msg(key, replays, payload);
    }
    match payload.split_first() {
        Some((&first, body)) if first & DIRECT != 0 => Ok((first & !DIRECT, body.to_vec())),
        _ => Err(Reject::BadRouteMessage),
    }
}

/// Opens a route message; one replay window per class (the classes' sequences advance at very
/// different rates, so one window would push the slow one out).
fn open_msg(key: &AeadKey, replays: &mut [ReplayWindow; 2], payload: &[u8]) -> Result<(u8, Vec<u8>), Reject> {
    if payload.len() < ROUTE_MSG_OVERHEAD {
        return Err(Reject::BadRouteMessage);
    }
    let n = u64::from_be_bytes(payload[..8].try_into().map_err(|_| Reject::BadRouteMessage)?);
    let replay = &mut replays[(n & 1) as usize];
    if !replay.check(n) {
        return Err(Reject::Replayed);
    }
    let mut buf = payload[8..].to_vec();
    let len = key.open(n, &[], &mut buf).map_err(|_| Reject::BadRouteMessage)?;
    replay.update(n);
    buf.truncate(len);
    let kind = buf.remove(0);
    Ok((kind, buf))
}

struct SourceHop {
    key: PublicKey,
    e_pub: [u8; PUBLIC_KEY_LEN],
    keys: HopKeys,
    proof: [u8; PROOF_LEN],
    fwd_seqs: [u64; 2],
    back_replay: [ReplayWindow; 2],
}

struct Origin {
    /// One hop: the route's messages go unsealed (see [`Sealer::Direct`]).
    direct: bool,
    first_link: LinkId,
    /// The first hop's id for this route, once it joined.
    next_id: Option<RouteId>,
    hops: Vec<SourceHop>,
    /// How many hops joined so far.
    joined: usize,
    deadline: Option<Instant>,
    pay: Option<account::Pay>,
}

impl Origin {
    fn ready(&self) -> bool {
        self.joined == self.hops.len()
    }

    /// How the source seals what it sends to hop `i`.
    fn sealer(&mut self, i: usize) -> Sealer<'_> {
        if self.direct {
            return Sealer::Direct;
        }
        let h = &mut self.hops[i];
        Sealer::Sealed(&h.keys.fwd, &mut h.fwd_seqs)
    }
}

struct Relay {
    /// Joined with ROUTE_SETUP_DIRECT: the previous hop is the source and we are the last
    /// hop for good (never extended); messages go unsealed.
    direct: bool,
    prev: (LinkId, RouteId),
    /// The neighbour on `prev`'s link: whose share of routes and buffers the route uses.
    neighbour: PublicKey,
    next: Option<(LinkId, RouteId)>,
    /// Waiting for the next hop to answer our ROUTE_SETUP.
    extending: Option<LinkId>,
    keys: HopKeys,
    back_seqs: [u64; 2],
    fwd_replay: [ReplayWindow; 2],
    last_active: Instant,
    /// Our key confirmation, to answer a retransmitted setup.
    proof: [u8; PROOF_LEN],
    /// As last hop: application bytes delivered, and last confirmed to the source, per class.
    delivered: [u64; 2],
    confirmed: [u64; 2],
    /// When the unconfirmed rest is confirmed anyway.
    confirm_at: Option<Instant>,
    /// Bytes the route's buffers had taken in at the last idle check.
    seen_activity: u64,
    charge: Option<account::Charge>,
    notes: account::NoteBudget,
}

impl Relay {
    /// How the last hop seals what it sends back to the source.
    fn sealer(&mut self) -> Sealer<'_> {
        if self.direct {
            Sealer::Direct
        } else {
            Sealer::Sealed(&self.keys.back, &mut self.back_seqs)
        }
    }
}

enum Entry {
    Origin(Origin),
    Relay(Relay),
}

/// What the router needs from the node's links and store-and-forward buffers.
pub(crate) trait Links {
    /// The up link to `peer`, if any.
    fn link_to(&self, peer: &PublicKey) -> Option<LinkId>;
    /// Whether `link` is up.
    fn is_up(&self, link: LinkId) -> bool;
    /// Queues a route control frame on `link` (delivered reliably, hop by hop).
    fn send(&mut self, link: LinkId, frame: &Frame<'_>) -> Result<(), RouteError>;
    /// The store-and-forward buffers.
    fn fwd(&mut self) -> &mut Forwarder;
    /// The neighbour at the other end of `link`.
    fn peer_of(&self, link: LinkId) -> Option<PublicKey>;
    /// Neighbours with an up link (a neighbour over two radios counts once).
    fn neighbours(&self) -> usize;
}

/// What happened to routes, for the node's event queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// Our route reached its last hop.
    Ready {
        /// The route.
        route: RouteId,
    },
    /// Our route could not be built or broke.
    Failed {
        /// The route.
        route: RouteId,
        /// Why.
        error: RouteError,
    },
    /// Application bytes arrived, in order per class, at an end of a route (source or last hop).
    Data {
        /// The route.
        route: RouteId,
        /// The class it came in.
        class: Class,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The last hop confirmed that `bytes` of `class` were delivered (cumulative).
    Delivered {
        /// The route.
        route: RouteId,
        /// The class.
        class: Class,
        /// Bytes delivered so far.
        bytes: u64,
    },
    /// A route buffer that refused a send (`QueueFull`) has room again.
    Writable {
        /// The route.
        route: RouteId,
        /// The class with room.
        class: Class,
    },
    /// A route ending here was closed by the source or broke.
    Closed {
        /// The route.
        route: RouteId,
    },
}

/// Route table and telescoping state of one node.
pub struct Router {
    config: RouteConfig,
    routes: BTreeMap<RouteId, Entry>,
    /// Relayed routes by the link and id they came in on (a retransmitted setup finds its
    /// route without a walk over the table).
    by_prev: BTreeMap<(LinkId, RouteId), RouteId>,
    /// Relayed routes held per neighbour (fair shares).
    held_by: BTreeMap<PublicKey, usize>,
    /// Route setup rate per neighbour.
    setups: Buckets<PublicKey>,
    pub(crate) events: std::collections::VecDeque<RouteEvent>,
    /// Virtual link messages that arrived at an end of a route, for the node (never events).
    pub(crate) link_data: std::collections::VecDeque<(RouteId, Vec<u8>)>,
    ledger: account::Ledger,
}

/// The flow a route's own messages (extend, confirmations) travel on.
fn ctl(route: RouteId, dir: Dir) -> FlowKey {
    FlowKey { route, dir, class: Class::Realtime }
}

impl Router {
    /// A route table with `config`.
    pub fn new(config: RouteConfig) -> Self {
        Router {
            setups: Buckets::new(config.setup_rate, config.setup_burst, 4096),
            config,
            routes: BTreeMap::new(),
            by_prev: BTreeMap::new(),
            held_by: BTreeMap::new(),
            events: Default::default(),
            link_data: Default::default(),
            ledger: Default::default(),
        }
    }

    /// Routes held.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no route is held.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    fn alloc_id(&self, rng: &mut dyn CryptoRngCore) -> RouteId {
        loop {
            if let Some(id) = RouteId::new(rng.next_u32()) {
                if !self.routes.contains_key(&id) {
                    return id;
                }
            }
        }
    }

    /// Whether `route` is one of ours and fully built.
    pub fn is_ready(&self, route: RouteId) -> bool {
        matches!(self.routes.get(&route), Some(Entry::Origin(o)) if o.ready())
    }

    /// Whether we are the source of `route`.
    pub(crate) fn is_origin(&self, route: RouteId) -> bool {
        matches!(self.routes.get(&route), Some(Entry::Origin(_)))
    }

    /// Every route id held here.
    pub fn ids(&self) -> Vec<RouteId> {
        self.routes.keys().copied().collect()
    }

    /// The hops a route of ours goes through.
    pub fn hops(&self, route: RouteId) -> Option<Vec<PublicKey>> {
        match self.routes.get(&route)? {
            Entry::Origin(o) => Some(o.hops.iter().map(|h| h.key).collect()),
            Entry::Relay(_) => None,
        }
    }

    /// Starts building a route through `hops` (the first must be a neighbour with an up link;
    /// `first`: that link, if the caller chose one of several to it).
    pub(crate) fn open(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        local: &PublicKey,
        links: &mut dyn Links,
        hops: &[PublicKey],
        first: Option<LinkId>,
    ) -> Result<RouteId, RouteError> {
        if hops.is_empty() || hops.contains(local) || (1..hops.len()).any(|i| hops[..i].contains(&hops[i])) {
            return Err(RouteError::InvalidHops);
        }
        if self.routes.len() >= self.config.max_routes {
            return Err(RouteError::TableFull);
        }
        let first_link = match first {
            Some(l) if links.is_up(l) => l,
            Some(_) => return Err(RouteError::NoLink),
            None => links.link_to(&hops[0]).ok_or(RouteError::NoLink)?,
        };
        let id = self.alloc_id(rng);
        if !links.fwd().add_route(id) {
            return Err(RouteError::TableFull);
        }
        let source_hops: Vec<SourceHop> = hops
            .iter()
            .map(|h| {
                let e = Ephemeral::generate(&mut RngRef(rng));
                let e_pub = e.public_bytes();
                let (keys, proof) = derive_hop(&e.dh(h), &e_pub, h);
                SourceHop { key: *h, e_pub, keys, proof, fwd_seqs: [0; 2], back_replay: Default::default() }
            })
            .collect();
        let e_pub = source_hops[0].e_pub;
        let pay = account::Pay::new(rng, &self.config.accounting, links.fwd().config(), hops.len());
        let direct = hops.len() == 1;
        if let Err(e) = links.send(first_link, &Frame::RouteSetup { route: id, ephemeral: &e_pub, direct }) {
            links.fwd().remove_route(id);
            return Err(e);
        }
        self.routes.insert(
            id,
            Entry::Origin(Origin {
                direct,
                first_link,
                next_id: None,
                hops: source_hops,
                joined: 0,
                deadline: Some(now + self.config.setup_timeout),
                pay,
            }),
        );
        Ok(id)
    }

    /// Largest application message a route carries, given the link plaintext capacity.
    pub fn mtu(link_plaintext: usize) -> usize {
        link_plaintext.saturating_sub(crate::frame::ROUTE_DATA_OVERHEAD + ROUTE_MSG_OVERHEAD)
    }

    /// The flow application bytes of `class` leave on, from this end of `route`.
    pub fn send_flow(&self, route: RouteId, class: Class) -> Option<FlowKey> {
        match self.routes.get(&route)? {
            Entry::Origin(o) if o.ready() => Some(FlowKey { route, dir: Dir::Fwd, class }),
            Entry::Relay(r) if r.next.is_none() => Some(FlowKey { route, dir: Dir::Back, class }),
            _ => None,
        }
    }

    /// Queues application bytes on a route: from the source to the last hop, or back.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        links: &mut dyn Links,
        route: RouteId,
        class: Class,
        data: &[u8],
        mtu: usize,
    ) -> Result<(), RouteError> {
        self.send_kind(now, links, route, class, MSG_APP, data, mtu)
    }

    /// Like `send`, with the message kind (`MSG_APP`, or `MSG_LINK` for a virtual link).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_kind(
        &mut self,
        now: Instant,
        links: &mut dyn Links,
        route: RouteId,
        class: Class,
        kind: u8,
        data: &[u8],
        mtu: usize,
    ) -> Result<(), RouteError> {
        if data.len() > mtu {
            return Err(RouteError::TooLarge { len: data.len(), max: mtu });
        }
        let needed = data.len() + ROUTE_MSG_OVERHEAD;
        let (key, msg) = match self.routes.get_mut(&route).ok_or(RouteError::UnknownRoute)? {
            Entry::Origin(o) => {
                if !o.ready() {
                    return Err(RouteError::NotReady);
                }
                let key = FlowKey { route, dir: Dir::Fwd, class };
                if links.fwd().room(key) < needed {
                    links.fwd().mark_blocked(key);
                    return Err(RouteError::QueueFull);
                }
                let last = o.hops.len() - 1;
                (key, o.sealer(last).seal(class, kind, data))
            }
            Entry::Relay(r) => {
                if r.next.is_some() {
                    return Err(RouteError::UnknownRoute);
                }
                let key = FlowKey { route, dir: Dir::Back, class };
                if links.fwd().room(key) < needed {
                    links.fwd().mark_blocked(key);
                    return Err(RouteError::QueueFull);
                }
                r.last_active = now;
                (key, r.sealer().seal(class, kind, data))
            }
        };
        links.fwd().push_local(key, msg).map_err(|_| RouteError::QueueFull)
    }

    /// Tears down a route we hold (as source or last hop).
    pub(crate) fn close(&mut self, links: &mut dyn Links, route: RouteId) -> Result<(), RouteError> {
        let entry = self.remove(links, route).ok_or(RouteError::UnknownRoute)?;
        Self::send_closes(links, &entry, None);
        Ok(())
    }

    fn remove(&mut self, links: &mut dyn Links, route: RouteId) -> Option<Entry> {
        let mut e = self.routes.remove(&route)?;
        links.fwd().remove_route(route);
        if let Entry::Relay(Relay { charge, prev, neighbour, .. }) = &mut e {
            if let Some(c) = charge.take() {
                self.ledger.retire(c);
            }
            self.by_prev.remove(prev);
            if let Some(n) = self.held_by.get_mut(neighbour) {
                *n -= 1;
                if *n == 0 {
                    self.held_by.remove(neighbour);
                }
            }
        }
        Some(e)
    }

    /// Routes relayed for `neighbour` now.
    pub fn held_by(&self, neighbour: &PublicKey) -> usize {
        self.held_by.get(neighbour).copied().unwrap_or(0)
    }

    /// The neighbour a route we relay or end came from.
    pub(crate) fn neighbour_of(&self, route: RouteId) -> Option<PublicKey> {
        match self.routes.get(&route)? {
            Entry::Relay(r) => Some(r.neighbour),
            Entry::Origin(_) => None,
        }
    }

    /// Whether `neighbour` may have one more route relayed: under its share of the route table
    /// and of the route buffers. The share is the whole divided by one more than the
    /// neighbours up, so however many routes some neighbours take, together they leave room
    /// for any other that holds less than its share.
    fn within_share(&self, links: &mut dyn Links, neighbour: &PublicKey) -> bool {
        let parts = links.neighbours().max(1) + 1;
        let fwd = links.fwd();
        let per_route = fwd.route_reservation().max(1);
        let by_bytes = fwd.config().memory_budget_bytes / parts / per_route;
        let share = (self.config.max_routes / parts).min(by_bytes).max(1);
        self.held_by(neighbour) < share
    }

    fn send_closes(links: &mut dyn Links, entry: &Entry, except: Option<LinkId>) {
        let targets: Vec<(LinkId, RouteId)> = match entry {
            Entry::Origin(o) => o.next_id.map(|n| (o.first_link, n)).into_iter().collect(),
            Entry::Relay(r) => [Some(r.prev), r.next].into_iter().flatten().collect(),
        };
        for (link, id) in targets {
            if Some(link) != except && links.is_up(link) {
                let _ = links.send(link, &Frame::RouteClose { route: id });
            }
        }
    }

    /// Handles a route control frame that arrived on `from`.
    pub(crate) fn on_frame(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        identity: &SecretKey,
        links: &mut dyn Links,
        from: LinkId,
        frame: &Frame<'_>,
    ) -> Result<(), Reject> {
        match *frame {
            Frame::RouteSetup { route, ephemeral, direct } => {
                // A retransmitted setup (its ack was lost): answer again, never join twice.
                let again = self.by_prev.get(&(from, route)).copied();
                if let Some((id, Entry::Relay(r))) = again.and_then(|id| Some((id, self.routes.get(&id)?))) {
                    let proof = r.proof;
                    let _ = links.send(from, &Frame::RouteSetupOk { route, hop_route: id, proof: &proof });
                    return Ok(());
                }
                let refuse = |links: &mut dyn Links, why: Reject| {
                    let _ = links.send(from, &Frame::RouteError { route, code: code::REFUSED });
                    Err(why)
                };
                let Some(neighbour) = links.peer_of(from) else { return Err(Reject::UnknownRoute) };
                if !self.setups.take(now, &neighbour) {
                    return refuse(links, Reject::RouteRate);
                }
                if !self.within_share(links, &neighbour) {
                    return refuse(links, Reject::RouteShare);
                }
                if self.routes.len() >= self.config.max_routes {
                    return refuse(links, Reject::TableFull);
                }
                let e = PublicKey::from_bytes(ephemeral).map_err(|_| Reject::Malformed)?;
                let id = self.alloc_id(rng);
                if !links.fwd().add_route(id) {
                    // No buffer space left in the node's budget.
                    return refuse(links, Reject::TableFull);
                }
                let (keys, proof) = derive_hop(&dh_static(identity, &e), ephemeral, &identity.public_key());
                self.routes.insert(
                    id,
                    Entry::Relay(Relay {
                        direct,
                        prev: (from, route),
                        neighbour,
                        next: None,
                        extending: None,
                        keys,
                        back_seqs: [0; 2],
                        fwd_replay: Default::default(),
                        last_active: now,
                        proof,
                        delivered: [0; 2],
                        confirmed: [0; 2],
                        confirm_at: None,
                        seen_activity: 0,
                        charge: account::Charge::new(now, rng, &self.config.accounting),
                        notes: Default::default(),
                    }),
                );
                self.by_prev.insert((from, route), id);
                *self.held_by.entry(neighbour).or_default() += 1;
                let fwd = links.fwd();
                fwd.wire(id, Dir::Fwd, Some((from, route)), None);
                fwd.wire(id, Dir::Back, None, Some((from, route)));
                let _ = links.send(from, &Frame::RouteSetupOk { route, hop_route: id, proof: &proof });
                Ok(())
            }
            Frame::RouteSetupOk { route, hop_route, proof } => match self.routes.get_mut(&route) {
                Some(Entry::Origin(o)) if o.joined == 0 && o.first_link == from => {
                    if !bool::from(o.hops[0].proof.ct_eq(proof)) {
                        self.fail(links, route, RouteError::BadProof);
                        return Err(Reject::BadRouteMessage);
                    }
                    o.next_id = Some(hop_route);
                    o.joined = 1;
                    let fwd = links.fwd();
                    fwd.wire(route, Dir::Fwd, None, Some((from, hop_route)));
                    fwd.wire(route, Dir::Back, Some((from, hop_route)), None);
                    self.advance(links, route);
                    Ok(())
                }
                Some(Entry::Relay(r)) if r.extending == Some(from) => {
                    r.extending = None;
                    r.next = Some((from, hop_route));
                    r.last_active = now;
                    let prev = r.prev;
                    let msg = seal_msg(&r.keys.back, &mut r.back_seqs, Class::Realtime, MSG_EXTENDED, &proof[..]);
                    let fwd = links.fwd();
                    fwd.wire(route, Dir::Fwd, Some(prev), Some((from, hop_route)));
                    fwd.wire(route, Dir::Back, Some((from, hop_route)), Some(prev));
                    let _ = fwd.push_local(ctl(route, Dir::Back), msg);
                    Ok(())
                }
                _ => Err(Reject::UnknownRoute),
            },
            Frame::RouteError { route, code } => {
                // UNKNOWN_ROUTE echoes the id the peer was sent, i.e. the peer's id: find ours.
                let local = if code == code::UNKNOWN_ROUTE { self.find_by_neighbour(from, route) } else { Some(route) };
                let Some(local) = local else { return Err(Reject::UnknownRoute) };
                if !self.touches(local, from) {
                    return Err(Reject::UnknownRoute);
                }
                let error = match code {
                    code::REFUSED => RouteError::Refused,
                    code::HOP_UNREACHABLE => {
                        let hop = match self.routes.get(&local) {
                            Some(Entry::Origin(o)) => o.joined,
                            _ => 0,
                        };
                        RouteError::HopUnreachable { hop }
                    }
                    _ => RouteError::Broken,
                };
                self.break_route(links, local, from, error);
                Ok(())
            }
            Frame::RouteClose { route } => {
                if !self.touches(route, from) {
                    return Err(Reject::UnknownRoute);
                }
                if let Some(entry) = self.remove(links, route) {
                    Self::send_closes(links, &entry, Some(from));
                    match entry {
                        Entry::Origin(_) => {
                            self.events.push_back(RouteEvent::Failed { route, error: RouteError::Broken })
                        }
                        Entry::Relay(r) if r.next.is_none() => self.events.push_back(RouteEvent::Closed { route }),
                        Entry::Relay(_) => {}
                    }
                }
                Ok(())
            }
            Frame::RouteNote { route, payload } => self.on_note(now, links, from, route, payload),
            _ => Err(Reject::UnknownType),
        }
    }

    /// A ROUTE_DATA frame for an id we do not have: tell the sender, so its side of the route
    /// breaks instead of blackholing.
    pub(crate) fn unknown_route(&mut self, links: &mut dyn Links, from: LinkId, route: RouteId) {
        if !self.routes.contains_key(&route) {
            let _ = links.send(from, &Frame::RouteError { route, code: code::UNKNOWN_ROUTE });
        }
    }

    /// Messages delivered in order to this end of a route by the store-and-forward layer.
    pub(crate) fn on_delivered(
        &mut self,
        now: Instant,
        links: &mut dyn Links,
        msgs: Vec<Delivered>,
    ) -> Result<(), Reject> {
        let mut result = Ok(());
        for d in msgs {
            if let Err(e) = self.on_message(now, links, d) {
                result = Err(e);
            }
        }
        result
    }

    fn on_message(&mut self, now: Instant, links: &mut dyn Links, d: Delivered) -> Result<(), Reject> {
        let route = d.key.route;
        let Some(entry) = self.routes.get_mut(&route) else { return Err(Reject::UnknownRoute) };
        match entry {
            Entry::Relay(r) => {
                if d.key.dir != Dir::Fwd || r.next.is_some() {
                    return Err(Reject::UnknownRoute);
                }
                r.last_active = now;
                let (kind, body) = open_any(r.direct, &r.keys.fwd, &mut r.fwd_replay, &d.data)?;
                if kind == MSG_APP {
                    let c = d.key.class as usize;
                    r.delivered[c] += body.len() as u64;
                    if r.delivered[c] - r.confirmed[c] >= DELIVERY_CONFIRM_BYTES {
                        Self::confirm(r, links, route);
                    } else if r.confirm_at.is_none() {
                        r.confirm_at = Some(now + DELIVERY_CONFIRM_DELAY);
                    }
                }
                self.on_terminal_msg(now, links, route, d.key.class, kind, body)
            }
            Entry::Origin(o) => {
                if d.key.dir != Dir::Back || o.joined == 0 {
                    return Err(Reject::UnknownRoute);
                }
                // Messages come from the current last hop (the one extending, while building).
                let h = &mut o.hops[o.joined - 1];
                let (kind, body) = open_any(o.direct, &h.keys.back, &mut h.back_replay, &d.data)?;
                match kind {
                    MSG_APP if o.ready() => {
                        self.events.push_back(RouteEvent::Data { route, class: d.key.class, data: body });
                        Ok(())
                    }
                    MSG_LINK if o.ready() => {
                        self.link_data.push_back((route, body));
                        Ok(())
                    }
                    MSG_DELIVERED if o.ready() && body.len() == 9 => {
                        let class = Class::from_u8(body[0]).ok_or(Reject::BadRouteMessage)?;
                        let bytes = u64::from_be_bytes(body[1..9].try_into().map_err(|_| Reject::BadRouteMessage)?);
                        self.events.push_back(RouteEvent::Delivered { route, class, bytes });
                        Ok(())
                    }
                    MSG_EXTENDED if !o.ready() => {
                        let expected = &o.hops[o.joined].proof;
                        if body.len() != PROOF_LEN || !bool::from(expected.ct_eq(&body[..])) {
                            self.fail(links, route, RouteError::BadProof);
                            return Err(Reject::BadRouteMessage);
                        }
                        o.joined += 1;
                        self.advance(links, route);
                        Ok(())
                    }
                    MSG_EXTEND_FAILED if !o.ready() => {
                        let hop = o.joined;
                        let error = match body.first() {
                            Some(&code::REFUSED) => RouteError::Refused,
                            _ => RouteError::HopUnreachable { hop },
                        };
                        self.fail(links, route, error);
                        Ok(())
                    }
                    _ => Err(Reject::BadRouteMessage),
                }
            }
        }
    }

    /// The seed: "C confirms to A that 512KB were delivered": tells the source how many bytes
    /// of each class arrived here (cumulative), for every class with news.
    fn confirm(r: &mut Relay, links: &mut dyn Links, route: RouteId) {
        r.confirm_at = None;
        for class in Class::ALL {
            let c = class as usize;
            if r.delivered[c] == r.confirmed[c] {
                continue;
            }
            r.confirmed[c] = r.delivered[c];
            let mut body = [0u8; 9];
            body[0] = c as u8;
            body[1..].copy_from_slice(&r.delivered[c].to_be_bytes());
            let msg = r.sealer().seal(Class::Realtime, MSG_DELIVERED, &body);
            let _ = links.fwd().push_local(ctl(route, Dir::Back), msg);
        }
    }

    /// Sends the source an EXTEND_FAILED from this (last) hop.
    fn extend_failed(r: &mut Relay, links: &mut dyn Links, route: RouteId, code: u8) {
        let msg = r.sealer().seal(Class::Realtime, MSG_EXTEND_FAILED, &[code]);
        let _ = links.fwd().push_local(ctl(route, Dir::Back), msg);
    }

    /// A message for us as the last hop of a route.
    fn on_terminal_msg(
        &mut self,
        now: Instant,
        links: &mut dyn Links,
        route: RouteId,
        class: Class,
        kind: u8,
        body: Vec<u8>,
    ) -> Result<(), Reject> {
        match kind {
            MSG_APP => {
                self.events.push_back(RouteEvent::Data { route, class, data: body });
                Ok(())
            }
            MSG_LINK => {
                self.link_data.push_back((route, body));
                Ok(())
            }
            MSG_EXTEND => {
                if body.len() != 2 * PUBLIC_KEY_LEN {
                    return Err(Reject::BadRouteMessage);
                }
                let Some(Entry::Relay(r)) = self.routes.get_mut(&route) else { return Err(Reject::UnknownRoute) };
                if r.direct {
                    // A direct route ends here: extending it would carry unsealed messages
                    // past the link that protects them.
                    return Err(Reject::BadRouteMessage);
                }
                let next = PublicKey::from_bytes(&body[..PUBLIC_KEY_LEN]).ok();
                let e: &[u8; PUBLIC_KEY_LEN] =
                    body[PUBLIC_KEY_LEN..].try_into().map_err(|_| Reject::BadRouteMessage)?;
                let link = next.and_then(|k| links.link_to(&k)).filter(|l| *l != r.prev.0);
                match link {
                    Some(link) if r.extending.is_none() => {
                        r.extending = Some(link);
                        r.last_active = now;
                        if links.send(link, &Frame::RouteSetup { route, ephemeral: e, direct: false }).is_err() {
                            r.extending = None;
                            Self::extend_failed(r, links, route, code::HOP_UNREACHABLE);
                        }
                    }
                    Some(_) => return Err(Reject::BadRouteMessage),
                    None => Self::extend_failed(r, links, route, code::HOP_UNREACHABLE),
                }
                Ok(())
            }
            _ => Err(Reject::BadRouteMessage),
        }
    }

    /// After a hop joined: extend to the next one, or report the route ready.
    fn advance(&mut self, links: &mut dyn Links, route: RouteId) {
        let Some(Entry::Origin(o)) = self.routes.get_mut(&route) else { return };
        if o.ready() {
            o.deadline = None;
            Self::announce_payer(o, links);
            self.events.push_back(RouteEvent::Ready { route });
            return;
        }
        let target = &o.hops[o.joined];
        let mut body = [0u8; 2 * PUBLIC_KEY_LEN];
        body[..PUBLIC_KEY_LEN].copy_from_slice(&target.key.to_bytes());
        body[PUBLIC_KEY_LEN..].copy_from_slice(&target.e_pub);
        let msg = o.sealer(o.joined - 1).seal(Class::Realtime, MSG_EXTEND, &body);
        if links.fwd().push_local(ctl(route, Dir::Fwd), msg).is_err() {
            self.fail(links, route, RouteError::QueueFull);
        }
    }

    /// Our route failed: report it and tear down what was built.
    fn fail(&mut self, links: &mut dyn Links, route: RouteId, error: RouteError) {
        if let Some(entry) = self.remove(links, route) {
            Self::send_closes(links, &entry, None);
            self.events.push_back(RouteEvent::Failed { route, error });
        }
    }

    /// A neighbour on `from` reported the route broken: pass it on towards the source.
    fn break_route(&mut self, links: &mut dyn Links, route: RouteId, from: LinkId, error: RouteError) {
        if let Some(Entry::Relay(r)) = self.routes.get_mut(&route) {
            if r.prev.0 != from && r.next.is_none() && r.extending == Some(from) {
                // Our extension was refused or failed: keep the route, tell the source.
                r.extending = None;
                let code = if error == RouteError::Refused { code::REFUSED } else { code::HOP_UNREACHABLE };
                Self::extend_failed(r, links, route, code);
                return;
            }
        }
        let Some(entry) = self.remove(links, route) else { return };
        match entry {
            Entry::Origin(_) => self.events.push_back(RouteEvent::Failed { route, error }),
            Entry::Relay(r) => {
                if r.prev.0 != from {
                    let code = match error {
                        RouteError::Refused => code::REFUSED,
                        _ => code::HOP_UNREACHABLE,
                    };
                    let _ = links.send(r.prev.0, &Frame::RouteError { route: r.prev.1, code });
                } else if let Some((l, id)) = r.next {
                    let _ = links.send(l, &Frame::RouteClose { route: id });
                }
                if r.next.is_none() {
                    self.events.push_back(RouteEvent::Closed { route });
                }
            }
        }
    }

    fn find_by_neighbour(&self, link: LinkId, their: RouteId) -> Option<RouteId> {
        self.routes.iter().find_map(|(id, e)| {
            let hit = match e {
                Entry::Origin(o) => o.first_link == link && o.next_id == Some(their),
                Entry::Relay(r) => r.prev == (link, their) || r.next == Some((link, their)),
            };
            hit.then_some(*id)
        })
    }

    /// Whether `link` is a neighbour of `route` (only they may close or fail it).
    fn touches(&self, route: RouteId, link: LinkId) -> bool {
        match self.routes.get(&route) {
            Some(Entry::Origin(o)) => o.first_link == link,
            Some(Entry::Relay(r)) => {
                r.prev.0 == link || r.next.is_some_and(|(l, _)| l == link) || r.extending == Some(link)
            }
            None => false,
        }
    }

    /// A link went down: every route through it breaks.
    pub(crate) fn on_link_down(&mut self, links: &mut dyn Links, link: LinkId) {
        let hit: Vec<RouteId> = self.routes.keys().filter(|id| self.touches(**id, link)).copied().collect();
        for route in hit {
            self.break_route(links, route, link, RouteError::HopUnreachable { hop: 0 });
        }
    }

    /// The route table's next deadline (setup timeouts), if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.routes
            .values()
            .filter_map(|e| match e {
                Entry::Origin(o) => o.deadline,
                Entry::Relay(r) => {
                    let idle = r.last_active + self.config.idle_timeout;
                    Some([r.confirm_at, Self::next_claim(r)].into_iter().flatten().fold(idle, Instant::min))
                }
            })
            .min()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, links: &mut dyn Links) {
        // Data moving through a relay keeps it alive; checked here rather than per message.
        for (route, e) in self.routes.iter_mut() {
            if let Entry::Relay(r) = e {
                if r.last_active + self.config.idle_timeout <= now {
                    let moved = links.fwd().route_activity(*route);
                    if moved != r.seen_activity {
                        r.seen_activity = moved;
                        r.last_active = now;
                    }
                }
            }
        }
        for (route, e) in self.routes.iter_mut() {
            if let Entry::Relay(r) = e {
                if r.confirm_at.is_some_and(|c| c <= now) {
                    Self::confirm(r, links, *route);
                }
            }
        }
        for route in self.claim_due(now, links) {
            if let Some(entry) = self.remove(links, route) {
                Self::send_closes(links, &entry, None);
            }
        }
        let expired: Vec<(RouteId, bool)> = self
            .routes
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Origin(o) => o.deadline.filter(|d| *d <= now).map(|_| (*id, true)),
                Entry::Relay(r) => (r.last_active + self.config.idle_timeout <= now).then_some((*id, false)),
            })
            .collect();
        for (route, origin) in expired {
            if origin {
                let (joined, total) = match self.routes.get(&route) {
                    Some(Entry::Origin(o)) => (o.joined, o.hops.len()),
                    _ => (0, 0),
                };
                self.fail(links, route, RouteError::Timeout { joined, total });
            } else if let Some(entry) = self.remove(links, route) {
                Self::send_closes(links, &entry, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> HopKeys {
        let hop = crate::identity::SecretKey::from_bytes(&[7; 32]).map(|s| s.public_key());
        let hop = hop.expect("a valid test key");
        derive_hop(&[9; 32], &[2; PUBLIC_KEY_LEN], &hop).0
    }

    #[test]
    fn a_direct_message_is_its_kind_and_body_and_each_form_is_refused_on_the_other_route() {
        let k = keys();
        let direct = Sealer::Direct.seal(Class::Bulk, MSG_APP, b"data");
        assert_eq!(direct.len(), DIRECT_MSG_OVERHEAD + 4);
        let mut replays: [ReplayWindow; 2] = Default::default();
        assert_eq!(open_any(true, &k.fwd, &mut replays, &direct), Ok((MSG_APP, b"data".to_vec())));
        // A relay on a sealed route cannot pass an unsealed message off as the source's.
        assert_eq!(open_any(false, &k.fwd, &mut replays, &direct), Err(Reject::BadRouteMessage));

        let mut seqs = [0u64; 2];
        let sealed = Sealer::Sealed(&k.fwd, &mut seqs).seal(Class::Bulk, MSG_APP, b"data");
        assert_eq!(sealed.len(), ROUTE_MSG_OVERHEAD + 4);
        assert_eq!(sealed[0] & DIRECT, 0, "a sealed message starts with its counter");
        assert_eq!(open_any(true, &k.fwd, &mut replays, &sealed), Err(Reject::BadRouteMessage));
        assert_eq!(open_any(false, &k.fwd, &mut replays, &sealed), Ok((MSG_APP, b"data".to_vec())));
        assert_eq!(open_any(true, &k.fwd, &mut replays, &[]), Err(Reject::BadRouteMessage));
    }
}
