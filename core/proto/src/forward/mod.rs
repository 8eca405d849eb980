//! Store-and-forward (seed: "mesh routing: store and forward", "capacity utilization", "quality
//! of service"). Every hop buffers each route's messages, per direction and service class, until
//! the next hop acknowledges the link datagram that carried them, and retransmits lost datagrams'
//! messages itself (per hop, not end to end). Each hop grants its upstream credit, so a full
//! buffer stops the senders before it hop by hop back to the source, and nothing is dropped.
//!
//! Packets are filled at send time, per link: acks first, then reliable control frames, credit
//! updates, realtime messages and, with whatever room is left, bulk messages; routes of the same
//! class take turns. One datagram bundles messages of many routes.

pub mod ack;
pub mod flow;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::frame::Frame;
use crate::stats::Reject;
use crate::types::copies_for_even_chance;
use crate::types::LinkId;
use crate::types::RouteId;
pub use crate::types::{Class, Dir};
use ack::{AckFrame, AckReceiver, AckSender, Sent, Settled};
use flow::{Accept, BufPool, Flow};
pub use flow::{FlowStats, INITIAL_CREDIT_BYTES};

/// Names one flow: a route (by this node's id), a direction and a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The route, by this node's id for it.
    pub route: RouteId,
    /// The direction on the route.
    pub dir: Dir,
    /// The service class.
    pub class: Class,
}

/// Store-and-forward settings.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Bulk buffer per route and direction. The seed's example: 1024 KB.
    pub route_buffer_bytes: usize,
    /// Realtime buffer per route and direction (small: realtime traffic is light).
    pub realtime_buffer_bytes: usize,
    /// All route buffers of the node together never exceed this (routes beyond are refused).
    pub memory_budget_bytes: usize,
    /// Per-hop acks and retransmission. Off only for the end-to-end baseline experiment.
    pub hop_reliability: bool,
    /// Longest an ack is held hoping to bundle it.
    pub max_ack_delay: Duration,
    /// Ack at once after this many ack-eliciting datagrams. Each ack covers the last 256
    /// datagrams, so a lost ack costs little; fewer acks is less work on every hop.
    pub ack_every: u32,
    /// RTT assumed before the first sample.
    pub initial_rtt: Duration,
    /// Shortest retransmission timeout.
    pub min_rto: Duration,
    /// Longest retransmission timeout (the backoff's cap).
    pub max_rto: Duration,
    /// Most unacknowledged datagrams per link.
    pub max_in_flight: usize,
    /// Links keep about twice their measured bandwidth-delay product in flight (see
    /// [`ack::Window`]) instead of what their routes' credit allows: for links behind a
    /// drop-tail bottleneck (a cellular radio), which otherwise fill it until it drops. Off by
    /// default: where a link's acks come back over a slower path (an asymmetric link), its
    /// round trips grow with the ack queue and the window costs about a tenth of the
    /// goodput (`skyroute sim asymmetric`: 0.89 -> 0.79 at 5% loss).
    pub congestion_window: bool,
    /// Re-announce credit this often to an upstream that may be blocked (deadlock guard).
    pub credit_refresh: Duration,
    /// Copies of an unacked datagram's messages an otherwise idle link may send (0: none).
    /// Idle capacity turned into loss recovery: at the tail of a transfer over lossy hops no
    /// later datagram reveals a loss, and 3 copies take 8 x 50% from 0.445-0.452 to
    /// 0.449-0.454 over seeds 1-5.
    pub idle_probes: u8,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            route_buffer_bytes: 1024 * 1024,
            realtime_buffer_bytes: 128 * 1024,
            memory_budget_bytes: 512 * 1024 * 1024,
            hop_reliability: true,
            max_ack_delay: Duration::from_millis(2),
            ack_every: 4,
            initial_rtt: Duration::from_millis(100),
            min_rto: Duration::from_millis(25),
            max_rto: Duration::from_secs(4),
            max_in_flight: 8192,
            congestion_window: false,
            credit_refresh: Duration::from_millis(500),
            idle_probes: 3,
        }
    }
}

/// Most copies of one ack on a very lossy link.
pub const MAX_ACK_COPIES: u8 = 8;

/// Copies of each ack for one to get back with an even chance, the way back losing `loss` (as
/// the way here does): 1 up to 60% loss, 2 at 70%, 4 at 80%, 7 at 90%.
fn ack_copies(loss: f64) -> u8 {
    if loss <= 0.6 {
        return 1;
    }
    copies_for_even_chance(loss, u32::from(MAX_ACK_COPIES)) as u8
}

/// What a sent datagram carried.
#[derive(Debug, Clone)]
pub(crate) enum Ref {
    Msg(FlowKey, u64),
    Control(Vec<u8>),
    Credit(FlowKey),
}

struct LinkTx {
    rx: AckReceiver,
    tx: AckSender<Ref>,
    control: VecDeque<Vec<u8>>,
    credits: BTreeSet<FlowKey>,
    /// Acks sparingly: the way back is a slow return route (an asymmetric link).
    sparse_acks: bool,
    /// Copies of the last ack still to send, each in its own datagram (a very lossy link:
    /// otherwise the sender hears of a delivery only after many acks and sends it again).
    ack_repeats: u8,
    /// Flows with messages queued for this link, per class.
    active: [BTreeSet<FlowKey>; 2],
    cursor: [Option<FlowKey>; 2],
}

impl LinkTx {
    fn new(c: &ForwardConfig) -> Self {
        LinkTx {
            rx: AckReceiver::new(c.ack_every),
            tx: AckSender::new(c.initial_rtt, c.min_rto, c.max_rto),
            control: VecDeque::new(),
            credits: BTreeSet::new(),
            sparse_acks: false,
            ack_repeats: 0,
            active: [BTreeSet::new(), BTreeSet::new()],
            cursor: [None, None],
        }
    }
}

/// A message delivered in order to this node (the flow ends here).
#[derive(Debug)]
pub struct Delivered {
    /// The flow it arrived on.
    pub key: FlowKey,
    /// The message.
    pub data: Vec<u8>,
}

/// Result of filling one packet: what it carried, and whether the next hop must ack it.
pub(crate) struct Filled {
    refs: Vec<Ref>,
    /// The packet carries something the next hop acks.
    pub(crate) eliciting: bool,
}

/// A packet being filled: frames go into `buf` after `start`, at most `room` bytes.
struct Packet<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
    room: usize,
    filled: Filled,
}

impl Packet<'_> {
    fn free(&self) -> usize {
        self.room.saturating_sub(self.buf.len() - self.start)
    }

    /// Records something ack-worthy the packet carries.
    fn carried(&mut self, r: Ref) {
        self.filled.refs.push(r);
        self.filled.eliciting = true;
    }

    /// Adds one route message (new, resent or a probe copy) for the next hop's route `down_id`.
    fn message(&mut self, key: FlowKey, down_id: RouteId, offset: u64, data: &[u8]) {
        Frame::RouteData { route: down_id, class: key.class as u8, offset, payload: data }.encode(self.buf);
        self.carried(Ref::Msg(key, offset));
    }
}

/// Node-wide store-and-forward state.
pub struct Forwarder {
    config: ForwardConfig,
    flows: BTreeMap<FlowKey, Flow>,
    links: BTreeMap<LinkId, LinkTx>,
    reserved: usize,
    next_refresh: Option<Instant>,
    /// Local flows whose full buffer gained room (drained by the node as events).
    pub(crate) writable: Vec<FlowKey>,
    /// Message buffers and ref lists of settled datagrams, for reuse.
    pool: BufPool,
    ref_pool: Vec<Vec<Ref>>,
    /// Reused lists of what one ack settled.
    settled: Settled<Ref>,
}

/// Bytes a ROUTE_DATA frame adds to its payload.
pub const ROUTE_DATA_OVERHEAD: usize = crate::frame::ROUTE_DATA_OVERHEAD;
/// Ack spacing on links whose way back is slow (each ack covers the last 256 datagrams).
pub const SPARSE_ACK_EVERY: u32 = 32;
/// Longest an ack is held on a link whose way back is slow.
pub const SPARSE_ACK_DELAY: Duration = Duration::from_millis(10);
/// Credits larger than this are clamped (no buffer is bigger).
pub const MAX_CREDIT_WINDOW: u64 = 1 << 32;

impl Forwarder {
    /// A forwarder with `config` and no flows.
    pub fn new(config: ForwardConfig) -> Self {
        Forwarder {
            config,
            flows: BTreeMap::new(),
            links: BTreeMap::new(),
            reserved: 0,
            next_refresh: None,
            writable: Vec::new(),
            pool: BufPool::default(),
            ref_pool: Vec::new(),
            settled: Settled::default(),
        }
    }

    /// The store-and-forward settings.
    pub fn config(&self) -> &ForwardConfig {
        &self.config
    }

    /// Turns per-hop acks and retransmission on or off (off: the end-to-end baseline).
    pub fn set_hop_reliability(&mut self, on: bool) {
        self.config.hop_reliability = on;
    }

    fn link(&mut self, id: LinkId) -> &mut LinkTx {
        let c = &self.config;
        self.links.entry(id).or_insert_with(|| LinkTx::new(c))
    }

    fn capacity(&self, class: Class) -> usize {
        match class {
            Class::Realtime => self.config.realtime_buffer_bytes,
            _ => self.config.route_buffer_bytes,
        }
    }

    /// Bytes of buffer reserved by all routes.
    pub fn reserved_bytes(&self) -> usize {
        self.reserved
    }

    /// Bytes actually held in all buffers now.
    pub fn buffered_bytes(&self) -> usize {
        self.flows.values().map(|f| f.bytes).sum()
    }

    /// Bytes of buffer one route reserves (its four flows).
    pub fn route_reservation(&self) -> usize {
        2 * Class::ALL.iter().map(|c| self.capacity(*c)).sum::<usize>()
    }

    /// Reserves buffers for a route's four flows. False (nothing reserved) if over budget.
    pub(crate) fn add_route(&mut self, route: RouteId) -> bool {
        let need = self.route_reservation();
        if self.reserved + need > self.config.memory_budget_bytes {
            return false;
        }
        self.reserved += need;
        for dir in [Dir::Fwd, Dir::Back] {
            for class in Class::ALL {
                let cap = self.capacity(class);
                self.flows.insert(FlowKey { route, dir, class }, Flow::new(cap));
            }
        }
        true
    }

    /// Drops a route's flows and releases its buffers.
    pub(crate) fn remove_route(&mut self, route: RouteId) {
        for dir in [Dir::Fwd, Dir::Back] {
            for class in Class::ALL {
                let key = FlowKey { route, dir, class };
                if let Some(f) = self.flows.remove(&key) {
                    self.reserved -= f.capacity;
                    for id in [f.upstream, f.downstream].into_iter().flatten().map(|(l, _)| l) {
                        if let Some(l) = self.links.get_mut(&id) {
                            l.active[class as usize].remove(&key);
                            l.credits.remove(&key);
                        }
                    }
                }
            }
        }
    }

    /// Sets where a direction of a route comes from and goes to (None = this node).
    pub(crate) fn wire(
        &mut self,
        route: RouteId,
        dir: Dir,
        upstream: Option<(LinkId, RouteId)>,
        downstream: Option<(LinkId, RouteId)>,
    ) {
        for class in Class::ALL {
            let key = FlowKey { route, dir, class };
            let Some(f) = self.flows.get_mut(&key) else { continue };
            let announce = upstream.is_some() && f.upstream != upstream;
            f.upstream = upstream;
            if f.downstream != downstream {
                f.downstream = downstream;
                if let Some((l, limit)) = f.early_credit.take() {
                    if downstream.is_some_and(|(d, _)| d == l) {
                        f.send_limit = f.send_limit.max(limit);
                    }
                }
            }
            if let Some((l, _)) = downstream {
                // Everything waiting here goes the new way, messages held for delivery too.
                f.requeue();
                if f.has_queued() || !f.msgs.is_empty() {
                    self.link(l).active[class as usize].insert(key);
                }
            }
            if announce {
                if let Some((l, _)) = upstream {
                    // Tell the new upstream our real buffer size right away.
                    self.link(l).credits.insert(key);
                }
            }
        }
    }

    /// Queues a message produced at this node on a flow. Errors with the free room if full.
    pub(crate) fn push_local(&mut self, key: FlowKey, data: Vec<u8>) -> Result<(), usize> {
        let f = self.flows.get_mut(&key).ok_or(0usize)?;
        f.push_local(data)?;
        if let Some((l, _)) = f.downstream {
            self.link(l).active[key.class as usize].insert(key);
        }
        Ok(())
    }

    /// A local sender could not queue on `key`: report when a quarter of the buffer is free.
    pub(crate) fn mark_blocked(&mut self, key: FlowKey) {
        if let Some(f) = self.flows.get_mut(&key) {
            f.want_writable = true;
        }
    }

    /// Free room for locally produced bytes on a flow.
    pub fn room(&self, key: FlowKey) -> usize {
        self.flows.get(&key).map_or(0, |f| f.room())
    }

    /// Bytes a route's buffers have taken in so far, all directions and classes (a measure of
    /// activity: it changes whenever anything moves on the route).
    pub fn route_activity(&self, route: RouteId) -> u64 {
        [Dir::Fwd, Dir::Back]
            .iter()
            .flat_map(|dir| Class::ALL.map(|class| FlowKey { route, dir: *dir, class }))
            .filter_map(|k| self.flows.get(&k))
            .map(|f| f.stats.received_bytes)
            .sum()
    }

    /// Grants a route's upstreams at most `window` bytes beyond what was forwarded (`None`:
    /// the whole buffer again): a hop slows a route down without dropping anything.
    pub(crate) fn throttle_route(&mut self, route: RouteId, window: Option<usize>) {
        for dir in [Dir::Fwd, Dir::Back] {
            for class in Class::ALL {
                if let Some(f) = self.flows.get_mut(&FlowKey { route, dir, class }) {
                    f.throttle = window;
                }
            }
        }
    }

    /// Bytes held in one flow's buffer.
    pub fn buffered(&self, key: FlowKey) -> usize {
        self.flows.get(&key).map_or(0, |f| f.bytes)
    }

    /// Counters of one flow, if it exists.
    pub fn flow_stats(&self, key: FlowKey) -> Option<FlowStats> {
        self.flows.get(&key).map(|f| f.stats())
    }

    /// Queues a control frame for reliable delivery on a link.
    pub(crate) fn send_control(&mut self, link: LinkId, frame: &Frame<'_>) {
        let mut v = Vec::with_capacity(frame.encoded_len());
        frame.encode(&mut v);
        self.link(link).control.push_back(v);
    }

    /// A ROUTE_DATA frame arrived on `link` for our route `route`.
    pub(crate) fn on_data(
        &mut self,
        now: Instant,
        link: LinkId,
        route: RouteId,
        class: Class,
        offset: u64,
        payload: &[u8],
    ) -> Result<Option<Vec<Delivered>>, Reject> {
        let from_link = |f: &Flow| f.upstream.is_some_and(|(l, _)| l == link);
        let fwd = FlowKey { route, dir: Dir::Fwd, class };
        let back = FlowKey { route, dir: Dir::Back, class };
        // Fwd and Back of one route are neighbours in the map: one range walk finds either.
        let Some((&key, f)) =
            self.flows.range_mut(fwd.min(back)..=fwd.max(back)).find(|(k, f)| k.class == class && from_link(f))
        else {
            return Err(Reject::UnknownRoute);
        };
        if !self.config.hop_reliability && f.bytes + payload.len() > f.capacity {
            // Without per-hop reliability there is no credit: a full buffer drops (the baseline).
            return Err(Reject::QueueFull);
        }
        let mut delivered = Vec::new();
        match f.accept(offset, payload, &mut delivered, self.config.hop_reliability, &mut self.pool) {
            Accept::Stored => {}
            Accept::Duplicate => return Ok(None),
            Accept::OverCredit => return Err(Reject::OverCredit),
            Accept::Overlap => return Err(Reject::Malformed),
        }
        if self.next_refresh.is_none() && f.upstream_may_block() {
            // The upstream may run out of credit: the refresh timer guards it until it has
            // room again (and only then: an idle forwarder asks for no timer).
            self.next_refresh = Some(now + self.config.credit_refresh);
        }
        match f.downstream {
            Some((l, _)) => {
                if f.has_queued() {
                    self.link(l).active[class as usize].insert(key);
                }
                Ok(None)
            }
            None => {
                self.maybe_announce(key);
                Ok(Some(delivered.into_iter().map(|data| Delivered { key, data }).collect()))
            }
        }
    }

    /// Space opened in a flow's buffer: wake a blocked local sender, credit the upstream.
    fn on_freed(&mut self, key: FlowKey) {
        if let Some(f) = self.flows.get_mut(&key) {
            if f.want_writable && f.room() >= f.capacity / 4 {
                f.want_writable = false;
                self.writable.push(key);
            }
        }
        self.maybe_announce(key);
    }

    /// Queues a credit update upstream when enough space opened (or the upstream may be stuck).
    fn maybe_announce(&mut self, key: FlowKey) {
        let Some(f) = self.flows.get(&key) else { return };
        let Some((l, _)) = f.upstream else { return };
        let grown = f.limit() - f.stats.announced_limit;
        let possibly_blocked = f.upstream_may_block();
        if grown >= (f.capacity as u64 / 4).max(1) || (grown > 0 && possibly_blocked) {
            self.link(l).credits.insert(key);
        }
    }

    /// A MAX_DATA frame: the next hop grants `limit` for our route `route`.
    pub(crate) fn on_max_data(&mut self, link: LinkId, route: RouteId, class: Class, limit: u64) -> Result<(), Reject> {
        let keys = [Dir::Fwd, Dir::Back].map(|dir| FlowKey { route, dir, class });
        let Some(key) =
            keys.into_iter().find(|k| self.flows.get(k).is_some_and(|f| f.downstream.is_some_and(|(l, _)| l == link)))
        else {
            // Credit from a next hop whose setup answer has not arrived yet: keep it for when
            // that link becomes the flow's downstream.
            let early = keys.into_iter().find(|k| {
                self.flows.get(k).is_some_and(|f| f.downstream.is_none() && f.upstream.is_none_or(|(l, _)| l != link))
            });
            let f = early.and_then(|k| self.flows.get_mut(&k)).ok_or(Reject::UnknownRoute)?;
            f.early_credit = Some((link, limit.min(MAX_CREDIT_WINDOW)));
            return Ok(());
        };
        let Some(f) = self.flows.get_mut(&key) else { return Err(Reject::UnknownRoute) };
        // Never trust a credit larger than any buffer could be.
        let clamped = limit.min(f.sent_high().saturating_add(MAX_CREDIT_WINDOW));
        if clamped > f.send_limit {
            f.send_limit = clamped;
            if f.has_queued() {
                self.link(link).active[class as usize].insert(key);
            }
        }
        if clamped != limit {
            return Err(Reject::CreditTooLarge);
        }
        Ok(())
    }

    /// An ACK frame arrived on `link`. Acks that settle nothing (unknown, duplicated or
    /// reordered) are ignored and reported as `UnknownAck`.
    pub(crate) fn on_ack(&mut self, link: LinkId, ack: &AckFrame, now: Instant) -> Result<(), Reject> {
        if !self.config.hop_reliability {
            return Ok(());
        }
        let mut settled = std::mem::take(&mut self.settled);
        self.link(link).tx.on_ack_into(ack, now, &mut settled);
        let nothing = settled.acked.is_empty();
        for s in settled.acked.drain(..) {
            self.settle(link, s.refs, true);
        }
        for s in settled.lost.drain(..) {
            self.settle(link, s.refs, false);
        }
        self.settled = settled;
        if nothing {
            return Err(Reject::UnknownAck);
        }
        Ok(())
    }

    fn settle(&mut self, link: LinkId, mut refs: Vec<Ref>, acked: bool) {
        for r in refs.drain(..) {
            match r {
                Ref::Msg(key, offset) => {
                    let Some(f) = self.flows.get_mut(&key) else { continue };
                    if acked {
                        if let Some(buf) = f.on_acked(offset) {
                            self.pool.put(buf);
                            self.on_freed(key);
                        }
                    } else if f.on_lost(offset) {
                        self.link(link).active[key.class as usize].insert(key);
                    }
                }
                Ref::Control(frame) if !acked => self.link(link).control.push_front(frame),
                Ref::Credit(key) if !acked && self.flows.contains_key(&key) => {
                    self.link(link).credits.insert(key);
                }
                _ => {}
            }
        }
        if self.ref_pool.len() < 64 {
            self.ref_pool.push(refs);
        }
    }

    /// A datagram from `link` authenticated: note it for the next ack.
    pub(crate) fn on_datagram(&mut self, link: LinkId, counter: u64, eliciting: bool, now: Instant) {
        if self.config.hop_reliability {
            let d = self.config.max_ack_delay;
            let l = self.link(link);
            let d = if l.sparse_acks { SPARSE_ACK_DELAY.max(d) } else { d };
            l.rx.on_datagram(counter, eliciting, now, d);
        }
    }

    /// Acks on `link` every [`SPARSE_ACK_EVERY`] datagrams (and after [`SPARSE_ACK_DELAY`]),
    /// for a link whose way back is slow: an asymmetric link's return route.
    pub(crate) fn set_sparse_acks(&mut self, link: LinkId) {
        let l = self.link(link);
        if !l.sparse_acks {
            l.sparse_acks = true;
            l.rx.set_ack_every(SPARSE_ACK_EVERY);
        }
    }

    /// The link's session changed or it went down: in-flight datagrams are lost, acks restart.
    pub(crate) fn reset_link(&mut self, link: LinkId) {
        let Some(l) = self.links.get_mut(&link) else { return };
        l.rx = AckReceiver::new(if l.sparse_acks { SPARSE_ACK_EVERY } else { self.config.ack_every });
        l.ack_repeats = 0;
        let lost = l.tx.reset();
        for s in lost {
            self.settle(link, s.refs, false);
        }
    }

    /// Seeds a link's RTT estimate (from its handshake) so the first retransmission timer is
    /// not the conservative default.
    pub(crate) fn seed_rtt(&mut self, link: LinkId, rtt: Duration) {
        self.link(link).tx.seed_rtt(rtt);
    }

    /// Forgets a link entirely (its routes are gone).
    pub(crate) fn remove_link(&mut self, link: LinkId) {
        self.links.remove(&link);
    }

    /// Whether the link's congestion window (if the node keeps one) has room.
    fn window_open(&self, l: &LinkTx) -> bool {
        !self.config.congestion_window || l.tx.window_open(self.config.max_ack_delay)
    }

    /// Whether `link` has something to send now.
    pub(crate) fn wants_send(&self, link: LinkId, now: Instant) -> bool {
        let Some(l) = self.links.get(&link) else { return false };
        if l.rx.ack_due(now) || l.ack_repeats > 0 || !l.control.is_empty() || !l.credits.is_empty() {
            return true;
        }
        if l.tx.in_flight() >= self.config.max_in_flight {
            return false;
        }
        let unlimited = !self.config.hop_reliability;
        // A full congestion window holds new messages back, not probes of overdue ones.
        (self.window_open(l)
            && l.active.iter().flatten().any(|k| self.flows.get(k).is_some_and(|f| f.can_send(unlimited))))
            || l.tx.has_probe(now, l.tx.overdue_after(self.config.max_ack_delay), self.config.idle_probes)
    }

    /// Writes frames for one packet on `link` into `buf`, at most `room` bytes.
    pub(crate) fn fill(&mut self, link: LinkId, now: Instant, buf: &mut Vec<u8>, room: usize) -> Filled {
        let reliable = self.config.hop_reliability;
        let refs = self.ref_pool.pop().unwrap_or_default();
        let mut p = Packet { start: buf.len(), buf, room, filled: Filled { refs, eliciting: false } };
        let l = self.link(link);
        let mut copy = false;
        if l.rx.has_unacked() && p.free() >= ACK_FRAME_LEN {
            if let Some(ack) = l.rx.take_frame(now) {
                Frame::Ack(ack).encode(p.buf);
                l.ack_repeats = if l.sparse_acks { 0 } else { ack_copies(l.rx.loss_estimate()) - 1 };
            }
        } else if l.ack_repeats > 0 && p.free() >= ACK_FRAME_LEN {
            l.ack_repeats -= 1;
            if let Some(ack) = l.rx.frame(now) {
                Frame::Ack(ack).encode(p.buf);
                copy = true;
            }
        }
        while let Some(c) = l.control.front() {
            if c.len() > p.free() {
                break;
            }
            p.buf.extend_from_slice(c);
            if let Some(c) = l.control.pop_front() {
                p.carried(Ref::Control(c));
            }
        }
        let credits: Vec<FlowKey> = if l.credits.is_empty() { Vec::new() } else { l.credits.iter().copied().collect() };
        for key in credits {
            let frame = match self.flows.get(&key).and_then(|f| f.upstream.map(|(_, id)| (id, f.limit()))) {
                Some((up_id, limit)) => Frame::MaxData { route: up_id, class: key.class as u8, limit },
                None => {
                    self.link(link).credits.remove(&key);
                    continue;
                }
            };
            if frame.encoded_len() > p.free() {
                break;
            }
            frame.encode(p.buf);
            if let (Some(f), Frame::MaxData { limit, .. }) = (self.flows.get_mut(&key), frame) {
                f.stats.announced_limit = limit;
            }
            p.carried(Ref::Credit(key));
            self.link(link).credits.remove(&key);
        }
        let unlimited = !reliable;
        let max = self.config.max_in_flight;
        let open = self.links.get(&link).is_some_and(|l| self.window_open(l));
        if let Some(l) = self.links.get_mut(&link).filter(|l| l.tx.in_flight() < max && open) {
            for class in Class::ALL {
                Self::fill_class(l, &mut self.flows, class, unlimited, &mut p);
            }
        }
        if !p.filled.eliciting && reliable && !copy {
            self.fill_probe(link, now, &mut p);
        }
        let mut filled = p.filled;
        if !reliable {
            // No per-hop acks: what was sent is gone from the buffer.
            for r in filled.refs.drain(..) {
                if let Ref::Msg(key, offset) = r {
                    if let Some(buf) = self.flows.get_mut(&key).and_then(|f| f.on_acked(offset)) {
                        self.pool.put(buf);
                        self.on_freed(key);
                    }
                }
            }
        }
        filled
    }

    /// Round robin over the flows of `class` with messages for `link`, one message each per
    /// turn, until the packet is full or nothing more may be sent.
    fn fill_class(
        l: &mut LinkTx,
        flows: &mut BTreeMap<FlowKey, Flow>,
        class: Class,
        unlimited: bool,
        p: &mut Packet<'_>,
    ) {
        use std::ops::Bound::{Excluded, Unbounded};
        let ci = class as usize;
        // Flows since the last one that sent; a whole turn without progress ends the packet.
        let mut idle = 0;
        loop {
            if p.free() <= ROUTE_DATA_OVERHEAD {
                return;
            }
            let n = l.active[ci].len();
            if n == 0 || idle >= n {
                return;
            }
            let next = match l.cursor[ci] {
                Some(c) => l.active[ci].range((Excluded(c), Unbounded)).next().or_else(|| l.active[ci].iter().next()),
                None => l.active[ci].iter().next(),
            };
            let Some(&key) = next else { return };
            l.cursor[ci] = Some(key);
            let Some(f) = flows.get_mut(&key).filter(|f| f.downstream.is_some()) else {
                l.active[ci].remove(&key);
                continue;
            };
            let down_id = f.downstream.map_or(key.route, |(_, id)| id);
            let sent = f
                .next_to_send(p.free() - ROUTE_DATA_OVERHEAD, unlimited)
                .map(|(offset, data)| p.message(key, down_id, offset, data));
            let empty = !f.has_queued();
            if empty {
                l.active[ci].remove(&key);
            }
            if sent.is_some() {
                idle = 0;
            } else {
                idle += 1;
            }
        }
    }

    /// With nothing else to send, sends another copy of the messages of the oldest datagram
    /// whose ack is overdue (at most `idle_probes` copies each): idle capacity turned into
    /// earlier loss recovery, which matters most at the tail of a transfer, where no later
    /// datagram reveals a loss and the retransmission timer would be the only way out.
    fn fill_probe(&mut self, link: LinkId, now: Instant, p: &mut Packet<'_>) {
        let (max, delay) = (self.config.idle_probes, self.config.max_ack_delay);
        let l = self.link(link);
        let age = l.tx.overdue_after(delay);
        let Some(old) = l.tx.take_probe(now, age, max).map(|r| r.to_vec()) else { return };
        for r in old {
            let Ref::Msg(key, offset) = r else { continue };
            let free = p.free().saturating_sub(ROUTE_DATA_OVERHEAD);
            let Some(f) = self.flows.get_mut(&key) else { continue };
            let Some((_, down_id)) = f.downstream else { continue };
            if let Some(data) = f.probe(offset, free) {
                p.message(key, down_id, offset, data);
            }
        }
    }

    /// After a packet built by [`Forwarder::fill`] was sealed with `counter`.
    pub(crate) fn on_sent(&mut self, link: LinkId, counter: u64, filled: Filled, size: usize, now: Instant) {
        if !self.config.hop_reliability {
            return;
        }
        self.link(link)
            .tx
            .on_sent(counter, Sent { time: now, size, eliciting: filled.eliciting, probes: 0, refs: filled.refs });
    }

    /// The next deadline: ack delays, retransmission timers, credit refresh.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let links = self.links.values().flat_map(|l| [l.tx.deadline(), l.rx.deadline()]).flatten();
        links.chain(self.next_refresh).min()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            // An ack whose delay ran out goes in the link's next packet; the driver polls for
            // transmits after this (and again when a busy link frees).
            self.link(id).rx.expire(now);
            let expired = self.link(id).tx.deadline().is_some_and(|d| d <= now);
            if expired {
                let lost = self.link(id).tx.on_timeout(now);
                for s in lost {
                    self.settle(id, s.refs, false);
                }
            }
        }
        if self.next_refresh.is_some_and(|t| t <= now) {
            // Re-announce credit to upstreams that used all they had: a lost update can never
            // leave them waiting forever. The timer stays armed while any may be waiting.
            let stuck: Vec<(LinkId, FlowKey)> = self
                .flows
                .iter()
                .filter(|(_, f)| f.upstream_may_block())
                .filter_map(|(k, f)| f.upstream.map(|(l, _)| (l, *k)))
                .collect();
            self.next_refresh = (!stuck.is_empty()).then(|| now + self.config.credit_refresh);
            for (l, k) in stuck {
                self.link(l).credits.insert(k);
            }
        }
    }

    /// Round trip and in-flight datagrams of a link, for status.
    pub fn link_rtt(&self, link: LinkId) -> Option<Duration> {
        self.links.get(&link).and_then(|l| l.tx.rtt.srtt)
    }

    /// Messages in flight on `link`.
    pub fn in_flight(&self, link: LinkId) -> usize {
        self.links.get(&link).map_or(0, |l| l.tx.in_flight())
    }

    /// Datagrams of a link acknowledged and declared lost (each loss is retransmitted).
    pub fn link_loss(&self, link: LinkId) -> (u64, u64) {
        self.links.get(&link).map_or((0, 0), |l| (l.tx.acked_total, l.tx.lost_total))
    }

    /// Acks naming datagrams never sent (or already settled) on a link.
    pub fn unknown_acks(&self, link: LinkId) -> u64 {
        self.links.get(&link).map_or(0, |l| l.tx.unknown_acks)
    }
}

pub use crate::frame::ACK_FRAME_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(n: u32) -> RouteId {
        RouteId::new(n).unwrap()
    }

    /// A relay's forwarder for one route: upstream on link 1 (their id 7), downstream on link 2
    /// (their id 9).
    fn relay() -> (Forwarder, RouteId) {
        let mut f = Forwarder::new(ForwardConfig::default());
        let r = rid(5);
        assert!(f.add_route(r));
        f.wire(r, Dir::Fwd, Some((LinkId(1), rid(7))), Some((LinkId(2), rid(9))));
        f.wire(r, Dir::Back, Some((LinkId(2), rid(9))), Some((LinkId(1), rid(7))));
        (f, r)
    }

    fn ack(largest: u64) -> AckFrame {
        AckFrame { largest, delay_us: 0, bitmap: [0xff; 32] }
    }

    #[test]
    fn bad_acks_and_credits_are_ignored_and_reported() {
        let now = Instant::now(); // test-only clock
        let (mut f, r) = relay();
        let key = FlowKey { route: r, dir: Dir::Fwd, class: Class::Bulk };
        // An ack for datagrams never sent.
        assert_eq!(f.on_ack(LinkId(2), &ack(1_000_000), now), Err(Reject::UnknownAck));
        // Credit for a route we do not have, or from a link that is not the route's next hop.
        assert_eq!(f.on_max_data(LinkId(2), rid(99), Class::Bulk, 1 << 20), Err(Reject::UnknownRoute));
        // A credit larger than any buffer is clamped, never overflows.
        assert_eq!(f.on_max_data(LinkId(2), r, Class::Bulk, u64::MAX), Err(Reject::CreditTooLarge));
        let s = f.flow_stats(key).unwrap();
        assert_eq!(s.send_limit, MAX_CREDIT_WINDOW);
        // A smaller (stale, reordered) credit never lowers the limit.
        assert_eq!(f.on_max_data(LinkId(2), r, Class::Bulk, 10), Ok(()));
        assert_eq!(f.flow_stats(key).unwrap().send_limit, MAX_CREDIT_WINDOW);

        // Data from upstream, sent downstream, acked twice (duplicated ack) and once reordered.
        let mut delivered = None;
        for i in 0..4u64 {
            delivered = f.on_data(now, LinkId(1), r, Class::Bulk, i * 100, &[i as u8; 100]).unwrap();
        }
        assert!(delivered.is_none(), "a relay forwards, it does not deliver");
        let mut buf = Vec::new();
        let filled = f.fill(LinkId(2), now, &mut buf, 1400);
        assert_eq!(
            filled.refs.iter().filter(|r| matches!(r, Ref::Msg(..))).count(),
            4,
            "the four messages, bundled in one datagram"
        );
        f.on_sent(LinkId(2), 0, filled, buf.len(), now);
        let a = AckFrame { largest: 0, delay_us: 0, bitmap: [0; 32] };
        assert_eq!(f.on_ack(LinkId(2), &a, now), Ok(()));
        assert_eq!(f.on_ack(LinkId(2), &a, now), Err(Reject::UnknownAck), "duplicate ack");
        let s = f.flow_stats(key).unwrap();
        assert_eq!((s.acked_bytes, s.buffered), (400, 0), "acked once, freed once");
    }

    /// Packets sent on `link` until it has nothing more to send.
    fn acks_out(f: &mut Forwarder, link: LinkId, now: Instant) -> usize {
        let mut n = 0;
        while f.wants_send(link, now) && n < 100 {
            let mut buf = Vec::new();
            f.fill(link, now, &mut buf, 1400);
            n += 1;
        }
        n
    }

    #[test]
    fn on_a_very_lossy_link_each_ack_goes_out_in_copies() {
        let now = Instant::now(); // test-only clock
        let (mut f, _) = relay();
        // First the credit announcement to the new upstream; then every datagram arrives: one ack.
        acks_out(&mut f, LinkId(1), now);
        for c in 0..64 {
            f.on_datagram(LinkId(1), c, true, now);
        }
        assert_eq!(acks_out(&mut f, LinkId(1), now), 1);
        // One in ten arrives (90% loss here, and likely on the way back): copies for one to get
        // through with an even chance.
        let mut g = relay().0;
        acks_out(&mut g, LinkId(1), now);
        for c in 0..64 {
            g.on_datagram(LinkId(1), c * 10, true, now);
        }
        assert_eq!(acks_out(&mut g, LinkId(1), now), usize::from(ack_copies(0.9)));
        assert_eq!((ack_copies(0.5), ack_copies(0.7), ack_copies(0.9), ack_copies(1.0)), (1, 2, 7, 8));
    }

    #[test]
    fn upstream_that_ignores_credit_is_cut_off_and_memory_stays_bounded() {
        let now = Instant::now(); // test-only clock
        let (mut f, r) = relay();
        let cap = f.capacity(Class::Bulk) as u64;
        let mut over = 0;
        for i in 0..(2 * cap / 1000) {
            if matches!(f.on_data(now, LinkId(1), r, Class::Bulk, i * 1000, &[0; 1000]), Err(Reject::OverCredit)) {
                over += 1;
            }
        }
        let s = f.flow_stats(FlowKey { route: r, dir: Dir::Fwd, class: Class::Bulk }).unwrap();
        assert!(s.buffered as u64 <= cap && s.max_buffered as u64 <= cap);
        assert!(over > 0);
        assert!(f.buffered_bytes() <= f.reserved_bytes());
        // Data for an unknown route or from a link that is not the route's upstream.
        assert_eq!(f.on_data(now, LinkId(1), rid(77), Class::Bulk, 0, b"x").unwrap_err(), Reject::UnknownRoute);
        assert_eq!(f.on_data(now, LinkId(3), r, Class::Bulk, 0, b"x").unwrap_err(), Reject::UnknownRoute);
    }

    #[test]
    fn one_datagram_bundles_messages_of_several_routes_realtime_first() {
        let now = Instant::now(); // test-only clock
        let mut f = Forwarder::new(ForwardConfig::default());
        for n in [1, 2, 3] {
            assert!(f.add_route(rid(n)));
            f.wire(rid(n), Dir::Fwd, None, Some((LinkId(9), rid(100 + n))));
        }
        f.push_local(FlowKey { route: rid(1), dir: Dir::Fwd, class: Class::Bulk }, vec![1; 300]).unwrap();
        f.push_local(FlowKey { route: rid(2), dir: Dir::Fwd, class: Class::Bulk }, vec![2; 300]).unwrap();
        f.push_local(FlowKey { route: rid(3), dir: Dir::Fwd, class: Class::Realtime }, vec![3; 100]).unwrap();
        let mut buf = Vec::new();
        let filled = f.fill(LinkId(9), now, &mut buf, 1400);
        let routes: Vec<(RouteId, Class)> = filled
            .refs
            .iter()
            .filter_map(|r| match r {
                Ref::Msg(k, _) => Some((k.route, k.class)),
                _ => None,
            })
            .collect();
        assert_eq!(routes, vec![(rid(3), Class::Realtime), (rid(1), Class::Bulk), (rid(2), Class::Bulk)]);
    }

    #[test]
    fn node_budget_refuses_routes_beyond_it() {
        let cfg = ForwardConfig { memory_budget_bytes: 5 * 1024 * 1024, ..ForwardConfig::default() };
        let mut f = Forwarder::new(cfg);
        assert!(f.add_route(rid(1)));
        assert!(f.add_route(rid(2)));
        assert!(!f.add_route(rid(3)), "a third route would pass the 5 MiB budget");
        assert!(f.reserved_bytes() <= 5 * 1024 * 1024);
        f.remove_route(rid(1));
        assert!(f.add_route(rid(3)), "removing a route releases its buffers");
    }
}
