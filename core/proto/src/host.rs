//! The host: one node, its session endpoint and its view of the topology, driven as one
//! sans-IO machine. Drivers (the tokio runtime, the simulator, the bindings, firmware) talk to
//! a [`Host`] and nothing else; the plumbing between the node and its sessions (every node
//! event offered to the sessions first, their timers chained, what one raises handled by the
//! other until nothing moves) lives here once.
//!
//! ```text
//! driver                                        Host
//!   handle_datagram(now, from, bytes)         ->   (a datagram arrived)
//!   handle_timeout(now)                       ->   (the deadline of poll_timeout passed)
//!   <- poll_transmit(now, link, &mut buf)          (until None, after every call above)
//!   <- poll_event()                                (until None: node and session events)
//!   <- poll_timeout()                              (arm one timer)
//! application
//!   connect / stream_write / send_datagram / close / network_changed
//!   node_mut(now) (links, routes), node(), sessions(), graph_mut()
//! ```
//!
//! Every verb that takes `now` processes what it caused before it returns: node events the
//! sessions take (route data of a session, a route becoming ready or failing) never reach the
//! application; the rest wait in [`Host::poll_event`]. After any verb, the driver sends what
//! [`Host::poll_transmit`] gives and re-arms its timer with [`Host::poll_timeout`].

pub mod anchor;

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::CryptoRngCore;

use crate::identity::{PublicKey, SecretKey};
use crate::link::{Endpoint, LinkId};
use crate::node::{Event, Node, NodeConfig};
use crate::route::{RouteEvent, RouteId};
use crate::session::{Graph, SessionConfig, SessionError, SessionEvent, SessionId, SessionStats, Sessions};

/// Settings of a host: its node and its session endpoint.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Links, routes and store-and-forward.
    pub node: NodeConfig,
    /// End-to-end sessions.
    pub session: SessionConfig,
}

/// What a host tells its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// A node event the sessions did not take: links up and down, and the events of routes
    /// the application opened itself (through [`Host::node_mut`]).
    Node(Event),
    /// A session event: established, accepted, stream bytes, datagrams, paths, failures.
    Session(SessionEvent),
}

/// One node with its sessions and route finder: the sans-IO object a driver talks to.
pub struct Host<A> {
    node: Node<A>,
    sessions: Sessions,
    graph: Graph,
    events: VecDeque<HostEvent>,
    /// Route data events still to hand to the application unread (see
    /// [`Host::divert_route_data`]).
    divert: usize,
}

impl<A: Endpoint> Host<A> {
    /// A host for `identity`. `rng` feeds the node; the sessions get a generator seeded from it.
    pub fn new(identity: SecretKey, config: HostConfig, mut rng: Box<dyn CryptoRngCore + Send>) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let sessions = Sessions::new(identity.clone(), config.session, Box::new(ChaCha20Rng::from_seed(seed)));
        Host {
            node: Node::new(identity, config.node, rng),
            sessions,
            graph: Graph::new(),
            events: VecDeque::new(),
            divert: 0,
        }
    }

    /// Our public key.
    pub fn public_key(&self) -> PublicKey {
        self.node.public_key()
    }

    // ---- the five sans-IO verbs -------------------------------------------------------------

    /// Call when a datagram arrives from `from` (the address the transport received it on).
    /// `data` is opened in place. Then drain [`Host::poll_transmit`] and [`Host::poll_event`].
    pub fn handle_datagram(&mut self, now: Instant, from: A, data: &mut [u8]) {
        self.node.handle_datagram(now, from, data);
        self.settle(now);
    }

    /// Call when the deadline [`Host::poll_timeout`] gave has passed (calling early is
    /// harmless: nothing that is not due runs). Then drain transmits and events.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        if self.sessions.poll_timeout().is_some_and(|t| t <= now) {
            self.sessions.handle_timeout(now, &mut self.node, &self.graph);
        }
        self.settle(now);
    }

    /// The next datagram to send, written into `buf` (its allocation reused); returns where it
    /// goes, or `None` when there is nothing more now. `link: None` serves every link round
    /// robin; `Some(id)` only that one (for drivers that pace each link, e.g. by its wire or
    /// socket being free). Call until `None` after every verb.
    #[must_use = "the datagram in `buf` must be sent to the returned address"]
    pub fn poll_transmit(&mut self, now: Instant, link: Option<LinkId>, buf: &mut Vec<u8>) -> Option<A> {
        let dst = self.node.poll_transmit(now, link, buf);
        // Sending may free room in a route (its writers are told at once).
        self.settle(now);
        dst
    }

    /// The next datagram that goes out on no link (a cookie reply, the answer to an init from
    /// a new address): drivers that poll per link call this after every verb too;
    /// [`Host::poll_transmit`] with `None` includes it.
    #[must_use = "the datagram in `buf` must be sent to the returned address"]
    pub fn poll_unlinked(&mut self, buf: &mut Vec<u8>) -> Option<A> {
        self.node.poll_unlinked(buf)
    }

    /// The next event for the application; call until `None` after every verb.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }

    /// When [`Host::handle_timeout`] must be called next; `None`: no timer at all (an idle
    /// host asks for none).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.node.poll_timeout(), self.sessions.poll_timeout()].into_iter().flatten().min()
    }

    // ---- sessions -----------------------------------------------------------------------------

    /// Opens a session to `dest`, keeping `routes` disjoint routes (1 to 8; `None`: the
    /// configured number). Routes are found in [`Host::graph`]; watch for
    /// [`SessionEvent::Established`]. Data written before then is held.
    pub fn connect(&mut self, now: Instant, dest: PublicKey, routes: Option<usize>) -> Result<SessionId, SessionError> {
        let r = self.sessions.connect(now, &mut self.node, &self.graph, dest, routes);
        self.settle(now);
        r
    }

    /// Writes stream bytes; returns how many were taken (the rest: wait for room, see
    /// [`Sessions::stream_room`]).
    #[must_use = "bytes not taken must be written again later"]
    pub fn stream_write(&mut self, now: Instant, id: SessionId, data: &[u8]) -> Result<usize, SessionError> {
        let r = self.sessions.stream_send(now, &mut self.node, id, data);
        self.settle(now);
        r
    }

    /// Sends a deadline datagram: dropped, never delivered late, if it cannot arrive within
    /// `budget`. Returns whether it went out on some path.
    pub fn send_datagram(
        &mut self,
        now: Instant,
        id: SessionId,
        data: &[u8],
        budget: Duration,
    ) -> Result<bool, SessionError> {
        let r = self.sessions.send_datagram(now, &mut self.node, id, data, budget);
        self.settle(now);
        r
    }

    /// Closes a session (the peer is told); unknown ids are ignored.
    pub fn close(&mut self, now: Instant, id: SessionId) {
        self.sessions.close(now, &mut self.node, id);
        self.settle(now);
    }

    /// The host's network changed (an interface came or went): every link and every session
    /// path is probed now, so within a round trip both know what still works.
    pub fn network_changed(&mut self, now: Instant) {
        self.node.network_changed(now);
        self.sessions.network_changed(now, &mut self.node);
        self.settle(now);
    }

    /// Replaces the session settings (sessions already open go on under the new ones).
    pub fn set_session_config(&mut self, config: SessionConfig) {
        self.sessions.set_config(config);
    }

    /// Counters of one session.
    pub fn session_stats(&self, id: SessionId) -> Option<&SessionStats> {
        self.sessions.stats(id)
    }

    /// The session endpoint, to read (ids, paths, stats, room).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    // ---- node and topology --------------------------------------------------------------------

    /// The node, to read (links, routes, counters).
    pub fn node(&self) -> &Node<A> {
        &self.node
    }

    /// The node, to act on links and routes (dial, close, open routes, send on them,
    /// interfaces up and down). What the calls raise is processed when the returned handle
    /// is dropped, as by any verb.
    pub fn node_mut(&mut self, now: Instant) -> NodeMut<'_, A> {
        NodeMut { host: self, now }
    }

    /// The topology routes are found in.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The topology, to change (discovery, configuration). Takes effect at the sessions' next
    /// tick.
    pub fn graph_mut(&mut self) -> &mut Graph {
        &mut self.graph
    }

    // ---- for tests that replay or alter session packets -----------------------------------

    /// Hands the next `n` route data events to the application as [`HostEvent::Node`]
    /// instead of to the sessions, so a test can replay, reroute or alter real session
    /// packets and give them back with [`Host::inject_route_data`].
    pub fn divert_route_data(&mut self, n: usize) {
        self.divert = n;
    }

    /// Offers route data to the sessions as if it had arrived on `route` (see
    /// [`Host::divert_route_data`]); data that is no session packet becomes a
    /// [`HostEvent::Node`] again.
    pub fn inject_route_data(&mut self, now: Instant, route: RouteId, data: Vec<u8>) {
        let class = crate::forward::Class::Realtime;
        self.offer(now, Event::Route(RouteEvent::Data { route, class, data }));
        self.settle(now);
    }

    /// Processes what the node raised until nothing moves: node events go to the sessions
    /// first (what they send raises more node events); the rest, and the sessions' own
    /// events, queue for the application in the order they happened.
    fn settle(&mut self, now: Instant) {
        while let Some(e) = self.node.poll_event() {
            if self.divert > 0 && matches!(e, Event::Route(RouteEvent::Data { .. })) {
                self.divert -= 1;
                self.events.push_back(HostEvent::Node(e));
                continue;
            }
            self.offer(now, e);
        }
        while let Some(e) = self.sessions.poll_event() {
            self.events.push_back(HostEvent::Session(e));
        }
    }

    fn offer(&mut self, now: Instant, e: Event) {
        if let Some(e) = self.sessions.on_node_event(now, &mut self.node, &self.graph, e) {
            self.events.push_back(HostEvent::Node(e));
        }
        while let Some(e) = self.sessions.poll_event() {
            self.events.push_back(HostEvent::Session(e));
        }
    }
}

/// The node of a [`Host`] lent to the application (see [`Host::node_mut`]); what its calls
/// raise is processed when it is dropped.
pub struct NodeMut<'a, A: Endpoint> {
    host: &'a mut Host<A>,
    now: Instant,
}

impl<A: Endpoint> Deref for NodeMut<'_, A> {
    type Target = Node<A>;
    fn deref(&self) -> &Node<A> {
        &self.host.node
    }
}

impl<A: Endpoint> DerefMut for NodeMut<'_, A> {
    fn deref_mut(&mut self) -> &mut Node<A> {
        &mut self.host.node
    }
}

impl<A: Endpoint> Drop for NodeMut<'_, A> {
    fn drop(&mut self) {
        self.host.settle(self.now);
    }
}
