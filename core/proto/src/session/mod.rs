//! End-to-end sessions over several routes, with RaptorQ fountain coding.
//!
//! A session is bound to the destination's public key (Noise IK with its static key, under
//! its own prologue, separate from link keys, with its own key ratchet) and is identified by
//! an index each end chooses: nothing about it depends on a route, link, address or
//! transport. The side that opened it keeps `k` node-disjoint routes under it (asking a
//! [`RouteFinder`]), probes them, declares a route dead when a probe goes unconfirmed for about
//! three RTTs, builds replacements in the background and retires routes whose links went away.
//! The application sees none of that: its stream and datagrams continue as long as some route
//! comes back within `session_timeout`.
//!
//! Stream data is cut into blocks, each encoded with RaptorQ ([`fec`]); symbols are spread over
//! the live paths by expected delivery time (RTT plus queued bytes over measured rate), so a
//! block decodes from whichever routes deliver. Redundancy adapts: each new block gets repair
//! symbols in proportion to the loss measured on the live paths (none on one clean path), and a
//! block still short after its symbols passed gets fresh repair symbols, never its source data
//! again. Deadline datagrams (small, realtime) are copied onto the best `realtime_copies`
//! paths that look well (three by default), and onto every path when fewer look well; the
//! receiver drops one that cannot be in time instead of delivering it late. An
//! [`anchor`](crate::host::anchor) on the backbone can hold a mobile node's session and proxy
//! it to the destination.
//!
//! [`Sessions`] is the endpoint. It is driven by a [`Host`](crate::host::Host), which owns it
//! next to the node: applications act on sessions through the host and read them here.

pub mod fec;
pub mod keys;
mod path;
mod state;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;

use crate::identity::{PublicKey, SecretKey};
use crate::link::{Interface, LinkId, RngRef};
use crate::node::{Event, Node};
use crate::noise::{self as handshake, SESSION_PROLOGUE};
use crate::route::{RouteEvent, RouteId};
use crate::stats::Reject;
use crate::wire::Packet;

pub use crate::graph::{Graph, RouteFinder};
pub use path::PathState;
use state::{Ctx, Handshake, Session};

pub use crate::types::SessionId;

/// How a session uses its routes. `Fountain` is skyroute's; the others are baselines the
/// simulator compares it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// k disjoint routes, RaptorQ symbols spread by capacity, adaptive repair.
    Fountain,
    /// One route, rebuilt when it breaks; lost source symbols are sent again.
    SingleRoute,
    /// Several routes; every packet on the lowest-RTT one; no coding.
    MinRtt,
    /// Every packet on every route.
    DuplicateAll,
    /// A model of Linux MPTCP's default behaviour, as a baseline: a Reno congestion window
    /// per route (sized by the route's stream acks), stream packets on the lowest-RTT route
    /// whose window has room (spilling over to the next when it is full), unacknowledged data
    /// reinjected onto the other routes after a retransmission timeout, no coding.
    MptcpLike,
}

#[derive(Debug, Clone)]
/// Session settings.
pub struct SessionConfig {
    /// How packets are spread over the routes.
    pub strategy: Strategy,
    /// Routes to keep (k).
    pub routes: usize,
    /// Symbol size in bytes (reduced to fit the route MTU: 1264 with the default link MTU).
    pub symbol_size: usize,
    /// Source symbols per full block (at most 64).
    pub block_symbols: usize,
    /// Stream bytes held for the peer (written, not yet confirmed decoded).
    pub send_buffer: usize,
    /// Blocks in flight at once (the receiver accepts up to twice this far ahead).
    pub max_blocks_in_flight: usize,
    /// Bulk bytes in flight per path.
    pub path_window: usize,
    /// Copies of each deadline datagram (on the best paths).
    pub realtime_copies: usize,
    /// Repair fraction added when only one path is live.
    pub single_path_margin: f64,
    /// Fail the session after this long without any live path.
    pub session_timeout: Duration,
    /// Initiator: handshake again after this long without hearing from the peer.
    pub rehandshake_after: Duration,
    /// Rotate the session keys after this long...
    pub rekey_after: Duration,
    /// ...or after this many packets, whichever comes first.
    pub rekey_packets: u64,
    /// Probe interval bounds (the interval follows the path's RTT).
    pub probe_min: Duration,
    /// Longest probe interval.
    pub probe_max: Duration,
    /// Shortest time a probe may go unconfirmed before its path is suspect.
    pub dead_floor: Duration,
    /// A route still being built after this long no longer holds back building another.
    pub build_patience: Duration,
    /// Wait between route searches that found too few routes (a quarter of it after any).
    pub find_retry: Duration,
    /// A suspect path we built is replaced after this long.
    pub retire_after: Duration,
    /// Longest an ack is held hoping to bundle it.
    pub ack_delay: Duration,
    /// Acknowledge after this many bulk packets (realtime ones at once).
    pub ack_every: u32,
    /// Blocks described per ACK (the lowest unfinished ones; later ones wait their turn).
    pub ack_blocks: usize,
    /// Accept sessions from any key (responder side).
    pub accept: bool,
    /// Most sessions held at once (new peers are refused beyond it, and counted).
    pub max_sessions: usize,
    /// Timer granularity while sessions are active.
    pub tick: Duration,
    /// A session that wrote, sent or received nothing for this long (and has nothing
    /// unconfirmed or due) is idle: it stops probing its paths and asks for no timer. The first
    /// write after that probes every path and spreads its first blocks over all of them until
    /// each has answered, so a path that died silently meanwhile costs no waiting.
    pub idle_after: Duration,
    /// Whether bulk may use routes whose first link is on a metered interface (cellular)
    /// while a route on an unmetered one is live. Realtime uses every route regardless.
    pub bulk_on_metered: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            strategy: Strategy::Fountain,
            routes: 3,
            symbol_size: 1280,
            block_symbols: 32,
            send_buffer: 4 << 20,
            max_blocks_in_flight: 64,
            path_window: 256 << 10,
            realtime_copies: 3,
            single_path_margin: 0.0,
            session_timeout: Duration::from_secs(30),
            rehandshake_after: Duration::from_secs(2),
            rekey_after: Duration::from_secs(10),
            rekey_packets: 1 << 20,
            probe_min: Duration::from_millis(20),
            probe_max: Duration::from_millis(200),
            dead_floor: Duration::from_millis(60),
            retire_after: Duration::from_secs(2),
            find_retry: Duration::from_millis(200),
            build_patience: Duration::from_millis(400),
            ack_delay: Duration::from_millis(5),
            ack_every: 16,
            ack_blocks: 8,
            accept: true,
            max_sessions: 1024,
            tick: Duration::from_millis(10),
            idle_after: Duration::from_secs(1),
            bulk_on_metered: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// What sessions tell the application.
pub enum SessionEvent {
    /// Our session reached the destination (initiator).
    Established {
        /// The session.
        session: SessionId,
        /// The destination.
        peer: PublicKey,
    },
    /// A peer opened a session to us (responder).
    Accepted {
        /// The session.
        session: SessionId,
        /// The initiator.
        peer: PublicKey,
    },
    /// Stream bytes, in order, starting at stream offset `offset`.
    Stream {
        /// The session.
        session: SessionId,
        /// Stream offset of the first byte.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A deadline datagram, in time.
    Datagram {
        /// The session.
        session: SessionId,
        /// The datagram.
        data: Vec<u8>,
    },
    /// A path (route) of the session came up.
    PathUp {
        /// The session.
        session: SessionId,
        /// The path's id in the session.
        path: u32,
    },
    /// A path of the session went down (the session goes on over the others).
    PathDown {
        /// The session.
        session: SessionId,
        /// The path's id in the session.
        path: u32,
    },
    /// The peer lost its session state and restarted its stream at `offset`.
    PeerRestarted {
        /// The session.
        session: SessionId,
        /// Where the peer's stream starts again.
        offset: u64,
    },
    /// No route for longer than the session timeout: the application sees the session fail.
    Failed {
        /// The session.
        session: SessionId,
    },
    /// The peer closed the session.
    Closed {
        /// The session.
        session: SessionId,
    },
}

/// Counters of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Stream bytes the application wrote.
    pub stream_bytes_written: u64,
    /// Stream bytes the peer confirmed decoded.
    pub stream_bytes_confirmed: u64,
    /// Stream bytes delivered to the application.
    pub stream_bytes_received: u64,
    /// Session packet bytes handed to routes (all paths, both directions' own sends).
    pub route_bytes_sent: u64,
    /// Session packets sent.
    pub packets_sent: u64,
    /// Session packets received and opened.
    pub packets_received: u64,
    /// RaptorQ symbols sent (source and repair).
    pub symbols_sent: u64,
    /// RaptorQ symbols received.
    pub symbols_received: u64,
    /// Repair symbols sent.
    pub repair_sent: u64,
    /// Of those, planned ahead (the loss margin).
    pub repair_planned: u64,
    /// Of those, sent because a block's ack showed missing symbols.
    pub repair_reactive: u64,
    /// Source symbols sent again.
    pub source_resent: u64,
    /// Blocks the receiver decoded.
    pub blocks_decoded: u64,
    /// Our blocks the peer confirmed decoded.
    pub blocks_confirmed: u64,
    /// Acks sent.
    pub acks_sent: u64,
    /// Deadline datagrams sent.
    pub datagrams_sent: u64,
    /// Deadline datagrams not sent (no path could meet the budget).
    pub datagrams_unsent: u64,
    /// Deadline datagrams delivered.
    pub datagrams_received: u64,
    /// Deadline datagrams that arrived after their budget (dropped).
    pub datagrams_late: u64,
    /// Copies of datagrams already delivered (dropped).
    pub datagrams_duplicate: u64,
    /// Paths opened.
    pub paths_opened: u64,
    /// Paths that failed.
    pub path_failures: u64,
    /// Times a path became suspect.
    pub path_suspects: u64,
    /// Suspect paths replaced.
    pub paths_retired: u64,
    /// Handshakes after the first (the peer went silent, or restarted).
    pub rehandshakes: u64,
    /// Key rotations.
    pub rekeys: u64,
    /// Symbols for blocks already decoded (late copies; not an error).
    pub stale_symbols: u64,
    /// Packets that did not authenticate.
    pub rejected_auth: u64,
    /// Packets replayed.
    pub rejected_replay: u64,
    /// Packets whose frames did not parse.
    pub rejected_malformed: u64,
    /// Packets on a path that is gone.
    pub rejected_stale_path: u64,
    /// Stream symbols re-queued for other paths after a retransmission timeout (mptcp_like).
    pub reinjected: u64,
    /// Retransmission timeouts of paths' stream data (mptcp_like).
    pub bulk_timeouts: u64,
    /// Frames beyond the receive window.
    pub rejected_over_limit: u64,
    /// Packets refused for another reason.
    pub rejected_unknown: u64,
}

/// Packets refused before they could be tied to a session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Packets for a session index we do not have.
    pub unknown_session: u64,
    /// Handshakes that did not check out.
    pub bad_handshake: u64,
    /// Inits for a session we have, not newer than the last one taken (replays): ignored.
    pub replayed_init: u64,
    /// Packets that did not parse.
    pub malformed: u64,
    /// Handshakes refused (session limit).
    pub refused: u64,
    /// Handshakes refused because the neighbour they came through holds its share of sessions.
    pub refused_share: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Why a session call failed.
pub enum SessionError {
    #[error("no such session")]
    /// No such session.
    Unknown,
    #[error("the session failed or was closed")]
    /// The session failed or was closed.
    Closed,
    #[error("a session to ourselves")]
    /// A session to our own key.
    SelfSession,
}

/// Every session of one node.
pub struct Sessions {
    identity: SecretKey,
    public: PublicKey,
    config: SessionConfig,
    sessions: BTreeMap<SessionId, Session>,
    by_peer_index: BTreeMap<(PublicKey, u32), SessionId>,
    by_route: BTreeMap<RouteId, (SessionId, u32)>,
    /// Sessions others opened with us, by the neighbour their first route came through
    /// (fair shares of `max_sessions`).
    by_neighbour: BTreeMap<PublicKey, usize>,
    events: VecDeque<SessionEvent>,
    stats: EndpointStats,
    rng: Box<dyn CryptoRngCore + Send>,
    next_tick: Option<Instant>,
}

impl Sessions {
    /// The sessions of a node with `identity`, drawing keys and indices from `rng`.
    pub fn new(identity: SecretKey, config: SessionConfig, rng: Box<dyn CryptoRngCore + Send>) -> Self {
        let public = identity.public_key();
        Sessions {
            identity,
            public,
            config,
            sessions: BTreeMap::new(),
            by_peer_index: BTreeMap::new(),
            by_route: BTreeMap::new(),
            by_neighbour: BTreeMap::new(),
            events: VecDeque::new(),
            stats: EndpointStats::default(),
            rng,
            next_tick: None,
        }
    }

    /// The session settings.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub(crate) fn set_config(&mut self, config: SessionConfig) {
        self.config = config;
    }

    /// Packets refused before they could be tied to a session.
    pub fn endpoint_stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Counters of session `id`.
    pub fn stats(&self, id: SessionId) -> Option<&SessionStats> {
        self.sessions.get(&id).map(|s| &s.stats)
    }

    /// Every session's id.
    pub fn ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    /// The peer of session `id`.
    pub fn peer(&self, id: SessionId) -> Option<PublicKey> {
        self.sessions.get(&id).map(|s| s.peer)
    }

    /// Paths of a session: (path id, state, smoothed RTT, hops known here).
    pub fn paths(&self, id: SessionId) -> Vec<(u32, PathState, Option<Duration>, Vec<PublicKey>)> {
        self.sessions
            .get(&id)
            .map(|s| s.paths.values().map(|p| (p.id, p.state, p.srtt(), p.hops.clone())).collect())
            .unwrap_or_default()
    }

    /// The link a path of ours leaves through (its interface is the radio it uses).
    pub fn path_link(&self, id: SessionId, path: u32) -> Option<LinkId> {
        self.sessions.get(&id)?.paths.get(&path)?.link
    }

    /// The route under a path.
    pub fn path_route(&self, id: SessionId, path: u32) -> Option<RouteId> {
        Some(self.sessions.get(&id)?.paths.get(&path)?.route)
    }

    /// Whether session `id` finished its handshake.
    pub fn is_established(&self, id: SessionId) -> bool {
        self.sessions.get(&id).is_some_and(|s| s.established())
    }

    pub(crate) fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    fn alloc_id(&mut self) -> SessionId {
        loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    fn ctx<'a, A>(
        now: Instant,
        node: &'a mut Node<A>,
        cfg: &'a SessionConfig,
        events: &'a mut VecDeque<SessionEvent>,
        by_route: &'a mut BTreeMap<RouteId, (SessionId, u32)>,
    ) -> Ctx<'a, A> {
        Ctx { now, node, cfg, events, by_route }
    }

    /// Opens a session to `dest`, keeping `routes` disjoint routes (1 to 8; `None`: the
    /// configured number); routes are built through `finder` and the handshake runs on the
    /// first one ready. Data written before [`SessionEvent::Established`] is held.
    pub(crate) fn connect<A: crate::link::Endpoint>(
        &mut self,
        now: Instant,
        node: &mut Node<A>,
        finder: &dyn RouteFinder,
        dest: PublicKey,
        routes: Option<usize>,
    ) -> Result<SessionId, SessionError> {
        if dest == self.public {
            return Err(SessionError::SelfSession);
        }
        let id = self.alloc_id();
        let ts = node.handshake_timestamp(now);
        let (state, packet) =
            handshake::initiate(SESSION_PROLOGUE, &mut RngRef(&mut *self.rng), &self.identity, &dest, id, 0, ts);
        let mut s = Session::new(
            id,
            dest,
            true,
            Handshake::Waiting { state: Box::new(state), packet, sent: now, since: now },
            now,
        );
        s.routes = routes.map(|r| r.clamp(1, 8));
        self.sessions.insert(id, s);
        self.maintain(now, node, finder, id);
        self.next_tick = Some(now);
        Ok(id)
    }

    /// Writes stream bytes; returns how many were taken (the rest: wait for room).
    pub(crate) fn stream_send<A: crate::link::Endpoint>(
        &mut self,
        now: Instant,
        node: &mut Node<A>,
        id: SessionId,
        data: &[u8],
    ) -> Result<usize, SessionError> {
        let s = self.sessions.get_mut(&id).ok_or(SessionError::Unknown)?;
        if s.failed {
            return Err(SessionError::Closed);
        }
        let mut ctx = Self::ctx(now, node, &self.config, &mut self.events, &mut self.by_route);
        s.wake(&mut ctx);
        let n = s.stream_write(&self.config, data);
        s.pump(&mut ctx);
        Ok(n)
    }

    /// Stream bytes the session can take now.
    pub fn stream_room(&self, id: SessionId) -> usize {
        self.sessions.get(&id).map(|s| s.stream_room(&self.config)).unwrap_or(0)
    }

    /// Stream bytes written and not yet confirmed by the peer.
    pub fn unconfirmed(&self, id: SessionId) -> usize {
        self.sessions.get(&id).map(|s| s.unconfirmed()).unwrap_or(0)
    }

    /// Sends a deadline datagram; it is dropped, not delivered late, if it cannot arrive within
    /// `budget`. Returns whether it went out on some path.
    pub(crate) fn send_datagram<A: crate::link::Endpoint>(
        &mut self,
        now: Instant,
        node: &mut Node<A>,
        id: SessionId,
        data: &[u8],
        budget: Duration,
    ) -> Result<bool, SessionError> {
        let s = self.sessions.get_mut(&id).ok_or(SessionError::Unknown)?;
        if s.failed {
            return Err(SessionError::Closed);
        }
        let mut ctx = Self::ctx(now, node, &self.config, &mut self.events, &mut self.by_route);
        s.wake(&mut ctx);
        Ok(s.send_datagram(&mut ctx, data, budget))
    }

    /// The host's network changed (with [`Node::network_changed`]): every session probes
    /// all its paths now, so within a round trip it knows which still work, and its next
    /// blocks go over all of them until each has answered.
    pub(crate) fn network_changed<A: crate::link::Endpoint>(&mut self, now: Instant, node: &mut Node<A>) {
        for s in self.sessions.values_mut() {
            let mut ctx = Self::ctx(now, node, &self.config, &mut self.events, &mut self.by_route);
            s.probe_all(&mut ctx);
        }
    }

    /// Packets the session sent and its rekeys over the 60 seconds up to `now`.
    pub fn last_minute(&self, id: SessionId, now: Instant) -> (u64, u64) {
        self.sessions.get(&id).map_or((0, 0), |s| s.recent.read(now))
    }

    /// Whether a session is idle: nothing to send, confirm or acknowledge, and no traffic for
    /// [`SessionConfig::idle_after`]; it sends nothing and asks for no timer.
    pub fn is_idle(&self, now: Instant, id: SessionId) -> bool {
        self.sessions.get(&id).is_some_and(|s| !s.active(now, &self.config) && !s.awaiting())
    }

    pub(crate) fn close<A: crate::link::Endpoint>(&mut self, now: Instant, node: &mut Node<A>, id: SessionId) {
        if let Some(mut s) = self.sessions.remove(&id) {
            let mut ctx = Self::ctx(now, node, &self.config, &mut self.events, &mut self.by_route);
            s.close(&mut ctx);
            self.by_peer_index.retain(|_, v| *v != id);
        }
    }

    /// Feeds a node event. Returns it back if it is not for sessions (link events are both).
    pub(crate) fn on_node_event<A: crate::link::Endpoint>(
        &mut self,
        now: Instant,
        node: &mut Node<A>,
        finder: &dyn RouteFinder,
        event: Event,
    ) -> Option<Event> {
        // Route data is the hot path: opened in place, handed back untouched if not a session's.
        if let Event::Route(RouteEvent::Data { route, class, mut data }) = event {
            return if self.handle_packet(now, node, route, &mut data) {
                None
            } else {
                Some(Event::Route(RouteEvent::Data { route, class, data }))
            };
        }
        let Event::Route(re) = &event else {
            // A link came or went: paths may be retired or built.
            let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
            for id in ids {
                self.maintain(now, node, finder, id);
            }
            return Some(event);
        };
        match re {
            RouteEvent::Ready { route } => {
                let Some(&(sid, path)) = self.by_route.get(route) else { return Some(event) };
                let s = self.sessions.get_mut(&sid)?;
                let mut ctx = Self::ctx(now, node, &self.config, &mut self.events, &mut self.by_route);
                if let Some(p) = s.paths.get_mut(&path) {
                    p.state = PathState::Live;
                    p.since = now;
                }
                ctx.events.push_back(SessionEvent::PathUp { session: sid, path });
                if s.established() {
                    // Registers the path at the peer and measures it.
                    s.on_timeout(&mut ctx);
                } else {
                    s.send_init(&mut ctx, path);
                }
                None
            }
            RouteEvent::Failed { route, .. } | RouteEvent::Closed { route } => {
                let Some(&(sid, path)) = self.by_route.get(route) else { return Some(event) };
                if let Some(s) = self.sessions.get_mut(&sid) {
                    let mut ctx = Self::ctx(now, node, &self.config, &mut self.events, &mut self.by_route);
                    s.route_gone(&mut ctx, path);
                    s.pump(&mut ctx);
                }
                self.by_route.remove(route);
                self.maintain(now, node, finder, sid);
                None
            }
            RouteEvent::Writable { route, .. } => {
                let Some(&(sid, path)) = self.by_route.get(route) else { return Some(event) };
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if let Some(p) = s.paths.get_mut(&path) {
                        p.blocked = false;
                    }
                    let mut ctx = Self::ctx(now, node, &self.config, &mut self.events, &mut self.by_route);
                    s.pump(&mut ctx);
                }
                None
            }
            RouteEvent::Delivered { route, .. } => {
                if self.by_route.contains_key(route) {
                    None
                } else {
                    Some(event)
                }
            }
            RouteEvent::Data { .. } => Some(event),
        }
    }

    /// A session packet arrived on `route`. Returns false if it is not one (then `data` is
    /// left as it was).
    fn handle_packet<A: crate::link::Endpoint>(
        &mut self,
        now: Instant,
        node: &mut Node<A>,
        route: RouteId,
        data: &mut [u8],
    ) -> bool {
        let ours = self.by_route.contains_key(&route);
        let packet = match Packet::parse(data) {
            Ok(p) => p,
            Err(_) => {
                if ours {
                    self.stats.malformed += 1;
                }
                return ours;
            }
        };
        match packet {
            Packet::HandshakeInit(init) => {
                if !self.config.accept {
                    self.stats.refused += 1;
                    return true;
                }
                self.on_init(now, node, route, init.sender_index, data.to_vec());
            }
            Packet::CookieReply(_) => {
                // Cookies are the link layer's; a route never carries one.
                if ours {
                    self.stats.malformed += 1;
                }
            }
            Packet::HandshakeResp(resp) => {
                let Some(s) = self.sessions.get_mut(&resp.receiver_index) else {
                    self.stats.unknown_session += 1;
                    return true;
                };
                let Handshake::Waiting { .. } = s.handshake else {
                    // A duplicate answer (the init went out on several paths).
                    return true;
                };
                let Handshake::Waiting { state, since, .. } = std::mem::replace(&mut s.handshake, Handshake::Done)
                else {
                    return true;
                };
                let initiator_state = state;
                match initiator_state.finish(&self.identity, &resp) {
                    Ok(keys) => {
                        let first = s.keys.is_none();
                        s.on_keys(
                            &self.config,
                            keys::SessionKeys::new(&keys, true, resp.sender_index, now),
                            now,
                            since,
                        );
                        if first {
                            self.events.push_back(SessionEvent::Established { session: s.id, peer: s.peer });
                        } else {
                            s.stats.rehandshakes += 1;
                        }
                        let mut ctx = Self::ctx(now, node, &self.config, &mut self.events, &mut self.by_route);
                        s.on_timeout(&mut ctx);
                    }
                    Err(_) => {
                        self.stats.bad_handshake += 1;
                        s.handshake = Handshake::Done;
                    }
                }
            }
            Packet::Data(h) => {
                let Some(s) = self.sessions.get_mut(&h.receiver_index) else {
                    self.stats.unknown_session += 1;
                    return true;
                };
                let mut ctx = Self::ctx(now, node, &self.config, &mut self.events, &mut self.by_route);
                s.on_data(&mut ctx, route, h.epoch, h.counter, data);
                if s.failed {
                    let id = s.id;
                    self.remove(id);
                }
            }
        }
        true
    }

    fn on_init<A: crate::link::Endpoint>(
        &mut self,
        now: Instant,
        node: &mut Node<A>,
        route: RouteId,
        sender_index: u32,
        raw: Vec<u8>,
    ) {
        // A copy of an init we answered (it went out on several paths): same answer, no crypto.
        let existing =
            self.sessions.values().find(|s| s.answered.as_ref().is_some_and(|(i, _)| *i == raw)).map(|s| s.id);
        if let Some(id) = existing {
            if let Some((_, resp)) = self.sessions.get(&id).and_then(|s| s.answered.clone()) {
                let _ = node.send(now, route, crate::forward::Class::Realtime, &resp);
            }
            return;
        }
        let Ok(Packet::HandshakeInit(init)) = Packet::parse(&raw) else { return };
        // Known (initiator, index): a re-handshake keeps the session; new: a fresh session.
        let id = self.alloc_id();
        let responded =
            match handshake::respond(SESSION_PROLOGUE, &mut RngRef(&mut *self.rng), &self.identity, &init, id) {
                Ok(r) => r,
                Err(_) => {
                    self.stats.bad_handshake += 1;
                    return;
                }
            };
        let key = (responded.initiator, sender_index);
        let neighbour = node.route_neighbour(route);
        let (sid, resp) = match self.by_peer_index.get(&key).copied().filter(|s| self.sessions.contains_key(s)) {
            Some(sid) if self.sessions.get(&sid).and_then(|s| s.init_ts).is_some_and(|t| responded.timestamp <= t) => {
                self.stats.replayed_init += 1;
                return;
            }
            Some(sid) => {
                // The response must name the session's index, not the fresh one: answer again.
                let again =
                    match handshake::respond(SESSION_PROLOGUE, &mut RngRef(&mut *self.rng), &self.identity, &init, sid)
                    {
                        Ok(r) => r,
                        Err(_) => return,
                    };
                let s = self.sessions.get_mut(&sid).expect("checked");
                s.fresh = false;
                s.stats.rehandshakes += 1;
                s.on_keys(&self.config, keys::SessionKeys::new(&again.keys, false, sender_index, now), now, now);
                s.answered = Some((raw, again.packet.clone()));
                s.init_ts = Some(responded.timestamp);
                (sid, again.packet)
            }
            None if self.sessions.len() >= self.config.max_sessions => {
                self.stats.refused += 1;
                return;
            }
            None if neighbour.is_some_and(|n| {
                let share = (self.config.max_sessions / (node.neighbour_count().max(1) + 1)).max(1);
                self.by_neighbour.get(&n).is_some_and(|held| *held >= share)
            }) =>
            {
                self.stats.refused_share += 1;
                if let Some(n) = neighbour {
                    node.count_refusal(&n, Reject::SessionShare);
                }
                return;
            }
            None => {
                let mut s = Session::new(id, responded.initiator, false, Handshake::Done, now);
                s.neighbour = neighbour;
                if let Some(n) = neighbour {
                    *self.by_neighbour.entry(n).or_default() += 1;
                }
                s.on_keys(&self.config, keys::SessionKeys::new(&responded.keys, false, sender_index, now), now, now);
                s.answered = Some((raw, responded.packet.clone()));
                s.init_ts = Some(responded.timestamp);
                self.sessions.insert(id, s);
                self.by_peer_index.insert(key, id);
                self.events.push_back(SessionEvent::Accepted { session: id, peer: responded.initiator });
                self.next_tick.get_or_insert(now);
                (id, responded.packet)
            }
        };
        let _ = sid;
        let _ = node.send(now, route, crate::forward::Class::Realtime, &resp);
    }

    fn remove(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.remove(&id) {
            for p in s.paths.values() {
                self.by_route.remove(&p.route);
            }
            if let Some(k) = s.neighbour {
                if let Some(n) = self.by_neighbour.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.by_neighbour.remove(&k);
                    }
                }
            }
        }
        self.by_peer_index.retain(|_, v| *v != id);
    }

    /// Keeps `k` routes under an initiator's session: retires dead ones, builds new ones.
    fn maintain<A: crate::link::Endpoint>(
        &mut self,
        now: Instant,
        node: &mut Node<A>,
        finder: &dyn RouteFinder,
        id: SessionId,
    ) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let cfg = &self.config;
        let active = s.active(now, cfg);
        let mut ctx = Ctx { now, node, cfg, events: &mut self.events, by_route: &mut self.by_route };
        // Session liveness (both sides): the clock runs only while the session has work. An
        // idle session whose routes were forgotten (relays drop routes idle for 30 minutes)
        // rebuilds them when it is used again, and has the whole timeout for it.
        if s.live_paths() > 0 || !active {
            s.no_path_since = None;
        } else if s.no_path_since.is_none() {
            s.no_path_since = Some(now);
        }
        if s.no_path_since.is_some_and(|t| now.saturating_duration_since(t) >= cfg.session_timeout) {
            ctx.events.push_back(SessionEvent::Failed { session: id });
            s.close(&mut ctx);
            self.remove(id);
            return;
        }
        if !s.initiator {
            return;
        }
        // Retire paths whose first link went away or that stayed suspect too long; note which
        // paths' interfaces are metered now.
        for p in s.paths.values_mut() {
            p.metered = p.link.is_some_and(|l| ctx.node.link_metered(l));
        }
        let retire: Vec<u32> = s
            .paths
            .values()
            .filter(|p| {
                let first_down = match p.link {
                    Some(l) => ctx.node.link(l).is_none_or(|l| l.state != crate::link::LinkState::Up),
                    None => p.hops.first().is_none_or(|h| {
                        ctx.node
                            .link_to(h)
                            .and_then(|l| ctx.node.link(l))
                            .is_none_or(|l| l.state != crate::link::LinkState::Up)
                    }),
                };
                let stale = p.state == PathState::Suspect && now.saturating_duration_since(p.since) >= cfg.retire_after;
                first_down || stale
            })
            .map(|p| p.id)
            .collect();
        for p in retire {
            s.retire_path(&mut ctx, p);
        }
        if !active {
            // Idle: nothing to send, so nothing to hear; routes are rebuilt and the peer
            // re-greeted when traffic resumes.
            return;
        }
        // Re-handshake if the peer has been silent (it may have restarted).
        if let Handshake::Waiting { sent, .. } = &mut s.handshake {
            if now.saturating_duration_since(*sent) >= Duration::from_millis(500) {
                *sent = now;
                s.send_init_all(&mut ctx);
            }
        } else if now.saturating_duration_since(s.last_recv) >= cfg.rehandshake_after
            && s.paths.values().any(|p| p.state != PathState::Building)
        {
            let ts = ctx.node.handshake_timestamp(now);
            let (state, packet) = handshake::initiate(
                SESSION_PROLOGUE,
                &mut RngRef(&mut *self.rng),
                &self.identity,
                &s.peer,
                s.id,
                0,
                ts,
            );
            s.handshake = Handshake::Waiting { state: Box::new(state), packet, sent: now, since: now };
            s.last_recv = now;
            s.send_init_all(&mut ctx);
        }
        // Build routes up to k.
        let want = match cfg.strategy {
            Strategy::SingleRoute => 1,
            _ => s.routes.unwrap_or(cfg.routes).max(1),
        };
        // A route still building after `build_patience` may be stuck behind a neighbour that
        // is gone: build another beside it. Only healthy paths count, and only they have to be
        // avoided (a suspect or stuck path's relays may well carry the replacement).
        let is_healthy = |p: &path::Path| match p.state {
            PathState::Live => true,
            PathState::Building => now.saturating_duration_since(p.since) < cfg.build_patience,
            PathState::Suspect => false,
        };
        let healthy = s.paths.values().filter(|p| is_healthy(p)).count();
        // A path moving to another radio: the old one retires once the new one is live.
        if let Some((old, new)) = s.rebalance {
            match s.paths.get(&new).map(|p| p.state) {
                Some(PathState::Live) => {
                    s.rebalance = None;
                    if s.paths.contains_key(&old) {
                        s.retire_path(&mut ctx, old);
                    }
                }
                Some(PathState::Building) if is_healthy(&s.paths[&new]) => {}
                _ => s.rebalance = None,
            }
        }
        if now < s.next_find {
            return;
        }
        // Up links, except those of this session's paths and of paths that went suspect a
        // moment ago (a neighbour that just went out of range still looks up until its link
        // times out).
        s.failed_first_links.retain(|_, t| now.saturating_duration_since(*t) < cfg.retire_after);
        let mut used: BTreeSet<LinkId> =
            s.paths.values().filter_map(|p| p.link).chain(s.failed_first_links.keys().copied()).collect();
        let firsts: Vec<(LinkId, PublicKey, Interface)> = ctx
            .node
            .links()
            .into_iter()
            .filter(|l| l.state == crate::link::LinkState::Up)
            .map(|l| (l.id, l.peer, l.addr.interface()))
            .collect();
        // Healthy paths per interface: the next route starts on the least used radio.
        let mut per_iface: BTreeMap<Interface, Vec<u32>> = firsts.iter().map(|f| (f.2, Vec::new())).collect();
        for p in s.paths.values().filter(|p| is_healthy(p)) {
            if let Some(i) = p.link.and_then(|l| ctx.node.link_interface(l)) {
                per_iface.entry(i).or_default().push(p.id);
            }
        }
        // All paths healthy but a radio unused while another carries two (it came back after
        // the session moved off it): move the slowest path of the busiest radio onto it.
        // The unbound "interface" is whatever the OS routes through, likely one of the bound
        // radios: never a radio of its own while bound ones are there.
        let bound_radios = per_iface.keys().any(|i| *i != Interface::UNBOUND);
        let mut moving = None;
        if healthy >= want {
            let spare = per_iface
                .iter()
                .find(|(i, ps)| ps.is_empty() && !(bound_radios && **i == Interface::UNBOUND))
                .map(|(i, _)| *i);
            let busiest = per_iface.values().filter(|ps| ps.len() >= 2).max_by_key(|ps| ps.len());
            let victim =
                busiest.and_then(|ps| ps.iter().copied().max_by_key(|p| s.paths[p].srtt().unwrap_or(Duration::MAX)));
            match (spare, victim) {
                (Some(spare), Some(victim)) => moving = Some((spare, victim)),
                _ => return,
            }
        }
        let mut avoid = BTreeSet::new();
        for p in s.paths.values().filter(|p| is_healthy(p) && Some(p.id) != moving.map(|m| m.1)) {
            for h in &p.hops {
                if *h != s.peer {
                    avoid.insert(*h);
                }
            }
        }
        // One route at a time, each node-disjoint from the others and, while there is a choice,
        // leaving through an interface no other path uses: with WiFi and LTE up, two routes
        // use both radios.
        let target = want.max(healthy + moving.is_some() as usize);
        let mut found = 0;
        while healthy + found < target {
            // Least used first; bound radios before the unbound socket.
            let mut ifaces: Vec<(usize, bool, Interface)> = match moving {
                Some((spare, _)) => vec![(0, false, spare)],
                None => per_iface.iter().map(|(i, ps)| (ps.len(), *i == Interface::UNBOUND, *i)).collect(),
            };
            ifaces.sort();
            let mut built = None;
            for (_, _, iface) in ifaces {
                let on_iface = |f: &&(LinkId, PublicKey, Interface)| f.2 == iface && !used.contains(&f.0);
                let starts: BTreeSet<PublicKey> = firsts.iter().filter(on_iface).map(|f| f.1).collect();
                if starts.is_empty() {
                    continue;
                }
                let Some(hops) = finder.find(&self.public, &s.peer, 1, &starts, &avoid).into_iter().next() else {
                    continue;
                };
                let Some(link) = firsts.iter().filter(on_iface).find(|f| Some(&f.1) == hops.first()).map(|f| f.0)
                else {
                    continue;
                };
                built = Some((iface, link, hops));
                break;
            }
            let Some((iface, link, hops)) = built else { break };
            found += 1;
            used.insert(link);
            for h in &hops {
                if *h != s.peer {
                    avoid.insert(*h);
                }
            }
            let Ok(route) = ctx.node.open_route(now, Some(link), &hops) else { continue };
            let pid = s.next_path;
            s.next_path += 1;
            per_iface.entry(iface).or_default().push(pid);
            let mut p = path::Path::new(pid, route, hops, PathState::Building, now);
            p.link = Some(link);
            p.metered = ctx.node.link_metered(link);
            s.paths.insert(pid, p);
            ctx.by_route.insert(route, (id, pid));
            s.stats.paths_opened += 1;
            if let Some((_, victim)) = moving {
                s.rebalance = Some((victim, pid));
            }
        }
        // Paced: a route that fails at once (a hop without a link) is not rebuilt in a loop.
        s.next_find = now + if healthy + found < target { cfg.find_retry } else { cfg.find_retry / 4 };
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.sessions.is_empty() {
            return None;
        }
        let tick = self.next_tick?;
        self.sessions.values().filter_map(|s| s.next_timeout(tick, &self.config)).min()
    }

    pub(crate) fn handle_timeout<A: crate::link::Endpoint>(
        &mut self,
        now: Instant,
        node: &mut Node<A>,
        finder: &dyn RouteFinder,
    ) {
        let tick_due = self.next_tick.is_some_and(|t| t <= now);
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                let mut ctx = Self::ctx(now, node, &self.config, &mut self.events, &mut self.by_route);
                s.on_timeout(&mut ctx);
            }
            if tick_due {
                self.maintain(now, node, finder, id);
            }
        }
        if tick_due {
            self.next_tick = if self.sessions.is_empty() { None } else { Some(now + self.config.tick) };
        }
    }
}
