//! # skyroute-sim
//!
//! Deterministic network simulator: many nodes running the real protocol code in one process,
//! in virtual time. Wires have latency, bandwidth, loss, jitter (reordering), duplication and
//! down windows. One seed drives every random choice (node keys, node RNGs, impairments), so a
//! run is reproducible bit for bit; [`World::log_hash`] fingerprints everything that happened.
//!
//! Like quinn-proto's test `Pair`, but for many nodes: the world pops the earliest event (a
//! datagram arriving, a node timer, or a wire becoming free), feeds it to the node, then asks
//! the node for the next datagram of every link whose wire is free, and re-arms its timer.
//! A wire sends one datagram at a time at its bandwidth, like a radio or NIC that tells its
//! driver when it can take the next frame: queues live in the nodes' route buffers, where the
//! protocol schedules them (realtime first), not in the wire.

pub mod asymmetric;
pub mod car;
pub mod dht;
pub mod idle;
pub mod scale;
pub mod scenario;
pub mod trace;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use skyroute_proto::host::anchor::Anchor;
use skyroute_proto::{
    Event, Graph, Host, HostConfig, HostEvent, LinkId, Node, NodeConfig, PublicKey, RouteEvent, SecretKey,
    SessionConfig, SessionEvent,
};

use trace::{Trace, TraceQueue};

/// The wall clock the simulator's signed statements are dated by (virtual time added).
pub const SIM_UNIX_TIME: u64 = 1_800_000_000;

/// Properties of one wire between two nodes (the same both ways).
#[derive(Debug, Clone)]
pub struct WireSpec {
    pub latency: Duration,
    /// Bytes per second each way.
    pub bandwidth: u64,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Extra random delay in `0..jitter`, which reorders datagrams.
    pub jitter: Duration,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Intervals (from the start of the run) when the wire carries nothing.
    pub down: Vec<(Duration, Duration)>,
    /// Carries datagrams only from the higher-numbered node to the lower one (asymmetric).
    pub one_way: bool,
    /// Capacity from recorded traces (see [`trace`]), per direction: from the lower-numbered
    /// node, and from the higher. A traced direction puts each datagram in a bottleneck queue
    /// of `queue_packets` that drains only at the trace's delivery opportunities and drops at
    /// the tail; `bandwidth` is then how fast the sender hands datagrams to that queue.
    pub trace: [Option<Arc<Trace>>; 2],
    /// Depth of a traced direction's queue, in packets.
    pub queue_packets: usize,
}

impl Default for WireSpec {
    fn default() -> Self {
        WireSpec {
            latency: Duration::from_millis(5),
            bandwidth: 1_250_000,
            loss: 0.0,
            jitter: Duration::ZERO,
            duplicate: 0.0,
            down: Vec::new(),
            one_way: false,
            trace: [None, None],
            queue_packets: 100,
        }
    }
}

struct Wire {
    spec: WireSpec,
    /// Per direction (from the lower node index, from the higher): when the wire is free again.
    busy_until: [Instant; 2],
    /// Bytes put on the wire, per direction.
    bytes: [u64; 2],
    /// Bottleneck queues of traced directions.
    queues: [Option<TraceQueue>; 2],
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Deliver { to: usize, from: usize, payload: Vec<u8> },
    Timer { node: usize },
    WireFree { node: usize, link: LinkId },
}

/// Counters of what the wires did.
#[derive(Debug, Default, Clone)]
pub struct WireStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub dropped_down: u64,
    pub duplicated: u64,
    pub bytes: u64,
    /// Dropped at the tail of a traced direction's full queue.
    pub queue_drops: u64,
}

/// The application side of a node: what the world does with its host's events.
#[derive(Default)]
struct App {
    /// Whether the node's session events are handed out (see [`World::add_sessions`]).
    sessions: bool,
    session_events: VecDeque<SessionEvent>,
    /// Route data events still to withhold from the sessions, and those withheld.
    capture: usize,
    captured: Vec<Event>,
    /// Proxies the sessions this node accepts to another node.
    anchor: Option<Anchor>,
}

pub struct World {
    start: Instant,
    now: Instant,
    hosts: Vec<Host<usize>>,
    apps: Vec<App>,
    timers: Vec<Option<Instant>>,
    wires: BTreeMap<(usize, usize), Wire>,
    queue: BinaryHeap<Reverse<(Instant, u64, Pending)>>,
    /// Wake-ups already scheduled for (node, link) when its wire frees.
    wakes: BTreeMap<(usize, LinkId), Instant>,
    buf: Vec<u8>,
    seq: u64,
    rng: ChaCha20Rng,
    log: Sha256,
    pub wire_stats: WireStats,
    pub steps: u64,
    /// Timer events handled at the current instant (a guard against a node that never moves
    /// its deadline forward).
    same_instant_timers: u64,
    /// Node events not yet handed out.
    backlog: VecDeque<(usize, Event)>,
    /// Per node: datagrams and bytes it put on its wires.
    sent_by: Vec<(u64, u64)>,
    /// Per node: timer wakeups (one per distinct instant).
    wakeups: Vec<u64>,
    last_wake: Vec<Option<Instant>>,
}

impl World {
    pub fn new(seed: u64) -> Self {
        // The one clock read: a base instant. Only differences from it matter, so runs are
        // reproducible whatever its value.
        let start = Instant::now(); // test-only clock: the virtual-time origin (only differences from it matter)
        World {
            start,
            now: start,
            hosts: Vec::new(),
            apps: Vec::new(),
            timers: Vec::new(),
            wires: BTreeMap::new(),
            queue: BinaryHeap::new(),
            wakes: BTreeMap::new(),
            buf: Vec::with_capacity(2048),
            seq: 0,
            rng: ChaCha20Rng::seed_from_u64(seed),
            log: Sha256::new(),
            wire_stats: WireStats::default(),
            steps: 0,
            same_instant_timers: 0,
            backlog: Default::default(),
            sent_by: Vec::new(),
            wakeups: Vec::new(),
            last_wake: Vec::new(),
        }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// `config` with the simulated wall clock now (as a driver reads the real one): a node
    /// made or restarted later stamps its handshakes later.
    fn clocked(&self, mut config: NodeConfig) -> NodeConfig {
        config.unix_time_ns = u128::from(SIM_UNIX_TIME) * 1_000_000_000 + self.elapsed().as_nanos();
        config
    }

    /// Adds a node (a host with default session settings; see [`World::add_sessions`]).
    pub fn add_node(&mut self, config: NodeConfig) -> usize {
        let key = SecretKey::generate(&mut self.rng);
        let node_rng = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
        let config = HostConfig { node: self.clocked(config), session: SessionConfig::default() };
        self.hosts.push(Host::new(key, config, Box::new(node_rng)));
        self.apps.push(App::default());
        self.timers.push(None);
        self.sent_by.push((0, 0));
        self.wakeups.push(0);
        self.last_wake.push(None);
        self.hosts.len() - 1
    }

    /// Makes a node a session endpoint: its session settings, the topology it finds routes
    /// in, and its session events handed out by [`World::run_sessions_until`].
    pub fn add_sessions(&mut self, node: usize, config: SessionConfig, graph: Graph) {
        let h = &mut self.hosts[node];
        h.set_session_config(config);
        *h.graph_mut() = graph;
        self.apps[node].sessions = true;
    }

    /// Proxies the sessions `node` accepts to another node (see [`Anchor`]).
    pub fn set_anchor(&mut self, node: usize, anchor: Anchor) {
        self.apps[node].anchor = Some(anchor);
    }

    /// The anchor of `node`, if it has one.
    pub fn anchor(&self, node: usize) -> Option<&Anchor> {
        self.apps[node].anchor.as_ref()
    }

    /// Withholds the next `n` route data events of `node` from its sessions (see
    /// [`World::take_captured`]): lets a test replay, reroute or alter real session packets.
    pub fn capture_route_data(&mut self, node: usize, n: usize) {
        self.hosts[node].divert_route_data(n);
        self.apps[node].capture = n;
    }

    /// The route data events withheld so far (see [`World::capture_route_data`]).
    pub fn take_captured(&mut self, node: usize) -> Vec<Event> {
        std::mem::take(&mut self.apps[node].captured)
    }

    /// Crashes and restarts a node: same key, no state (links, routes, sessions all gone).
    pub fn restart(&mut self, node: usize) {
        let old = &self.hosts[node];
        let key = old.node().identity_copy();
        let node_config = old.node().config().clone();
        let config =
            HostConfig { node: self.clocked(node_config), session: self.hosts[node].sessions().config().clone() };
        let graph = self.hosts[node].graph().clone();
        let rng = ChaCha20Rng::seed_from_u64(self.rng.next_u64());
        let mut h = Host::new(key, config, Box::new(rng));
        *h.graph_mut() = graph;
        self.hosts[node] = h;
        self.timers[node] = None;
        let app = &mut self.apps[node];
        app.anchor = app.anchor.as_ref().map(|a| a.restarted());
        app.session_events.clear();
        self.wakes.retain(|(n, _), _| *n != node);
    }

    /// A node's host, to read (sessions, node, graph).
    pub fn host(&self, node: usize) -> &Host<usize> {
        &self.hosts[node]
    }

    /// Runs `f` on a node's host (an application action), then sends what it produced.
    pub fn act_host<R>(&mut self, node: usize, f: impl FnOnce(&mut Host<usize>, Instant) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.hosts[node], now);
        self.flush(node);
        r
    }

    pub fn key(&self, node: usize) -> PublicKey {
        self.hosts[node].public_key()
    }

    pub fn node(&self, i: usize) -> &Node<usize> {
        self.hosts[i].node()
    }

    pub fn nodes(&self) -> usize {
        self.hosts.len()
    }

    pub fn add_wire(&mut self, a: usize, b: usize, spec: WireSpec) {
        let key = (a.min(b), a.max(b));
        let queue = |t: &Option<Arc<Trace>>| t.clone().map(|t| TraceQueue::new(t, spec.queue_packets));
        let queues = [queue(&spec.trace[0]), queue(&spec.trace[1])];
        self.wires.insert(key, Wire { spec, busy_until: [self.now; 2], bytes: [0; 2], queues });
    }

    /// Changes a wire's properties from now on (e.g. to cut or restore it).
    pub fn wire_mut(&mut self, a: usize, b: usize) -> Option<&mut WireSpec> {
        self.wires.get_mut(&(a.min(b), a.max(b))).map(|w| &mut w.spec)
    }

    /// Node `a` dials node `b` over their wire.
    pub fn connect(&mut self, a: usize, b: usize) {
        let key = self.key(b);
        self.act(a, |n, now| {
            n.connect(now, key, b);
        });
    }

    /// Runs `f` on a node (an application action on links or routes), then sends what it
    /// produced.
    pub fn act<R>(&mut self, node: usize, f: impl FnOnce(&mut Node<usize>, Instant) -> R) -> R {
        self.act_host(node, |h, now| f(&mut h.node_mut(now), now))
    }

    fn push(&mut self, at: Instant, ev: Pending) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    /// Gives every free wire of a node its next datagram, re-arms the node's timer and takes
    /// its events.
    fn flush(&mut self, i: usize) {
        for link in self.hosts[i].node().link_ids() {
            self.pump(i, link);
        }
        let now = self.now;
        let next = self.hosts[i].poll_timeout();
        if next != self.timers[i] {
            self.timers[i] = next;
            if let Some(at) = next {
                self.push(at.max(now), Pending::Timer { node: i });
            }
        }
        while let Some(e) = self.hosts[i].poll_event() {
            self.log.update(format!("{:?} {i} {e:?}", self.now - self.start).as_bytes());
            let app = &mut self.apps[i];
            match e {
                HostEvent::Node(e @ Event::Route(RouteEvent::Data { .. })) if app.capture > 0 => {
                    app.capture -= 1;
                    app.captured.push(e);
                }
                HostEvent::Node(e) => self.backlog.push_back((i, e)),
                HostEvent::Session(e) if app.sessions => app.session_events.push_back(e),
                HostEvent::Session(_) => {}
            }
        }
    }

    /// Sends what a node sends on no link (cookie replies, answers to inits from a new
    /// address) at once, wire or not busy: they are rare and small.
    fn send_unlinked(&mut self, i: usize) {
        let mut buf = Vec::new();
        while let Some(to) = self.hosts[i].poll_unlinked(&mut buf) {
            self.transmit(i, to, &buf);
        }
    }

    /// Sends datagrams on one link while its wire is free; when busy, wakes up when it frees.
    fn pump(&mut self, i: usize, link: LinkId) {
        let now = self.now;
        loop {
            let Some(&to) = self.hosts[i].node().link_addr(link) else { return };
            let key = (i.min(to), i.max(to));
            let dir = usize::from(i > to);
            let busy = self.wires.get(&key).map(|w| w.busy_until[dir]);
            if let Some(free_at) = busy.filter(|b| *b > now) {
                if self.wakes.get(&(i, link)).is_none_or(|w| *w > free_at || *w < now) {
                    self.wakes.insert((i, link), free_at);
                    self.push(free_at, Pending::WireFree { node: i, link });
                }
                return;
            }
            let mut buf = std::mem::take(&mut self.buf);
            let sent = self.hosts[i].poll_transmit(now, Some(link), &mut buf);
            if sent.is_some() {
                self.transmit(i, to, &buf);
            }
            self.buf = buf;
            if sent.is_none() {
                return;
            }
        }
    }

    fn transmit(&mut self, from: usize, to: usize, payload: &[u8]) {
        let key = (from.min(to), from.max(to));
        let dir = usize::from(from > to);
        let now = self.now;
        let since = now - self.start;
        self.wire_stats.sent += 1;
        self.sent_by[from].0 += 1;
        self.sent_by[from].1 += payload.len() as u64;
        let Some(wire) = self.wires.get_mut(&key) else {
            self.wire_stats.dropped_down += 1;
            return;
        };
        let serialise = Duration::from_nanos(payload.len() as u64 * 1_000_000_000 / wire.spec.bandwidth.max(1));
        wire.busy_until[dir] = now + serialise;
        wire.bytes[dir] += payload.len() as u64;
        let mut arrive = now + serialise + wire.spec.latency;
        self.wire_stats.bytes += payload.len() as u64;
        if wire.spec.down.iter().any(|(a, b)| since >= *a && since < *b) || (wire.spec.one_way && dir == 0) {
            self.wire_stats.dropped_down += 1;
            return;
        }
        if let Some(q) = wire.queues[dir].as_mut() {
            match q.enqueue(since + serialise, payload.len()) {
                Some(leave) => arrive = (self.start + leave).max(now + serialise) + wire.spec.latency,
                None => {
                    self.wire_stats.queue_drops += 1;
                    return;
                }
            }
        }
        let spec = wire.spec.clone();
        if self.chance(spec.loss) {
            self.wire_stats.lost += 1;
            return;
        }
        let copies = if self.chance(spec.duplicate) { 2 } else { 1 };
        self.wire_stats.duplicated += copies - 1;
        for _ in 0..copies {
            let jitter = self.jitter(spec.jitter);
            self.push(arrive + jitter, Pending::Deliver { to, from, payload: payload.to_vec() });
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.next_u64() % max.as_nanos() as u64)
    }

    /// Processes the next event (its node events join the backlog). Returns `false` when
    /// nothing is left to do before `deadline`.
    fn step(&mut self, deadline: Instant) -> bool {
        let Some(Reverse((at, _, _))) = self.queue.peek() else { return false };
        if *at > deadline {
            return false;
        }
        let Some(Reverse((at, _, ev))) = self.queue.pop() else { return false };
        if at > self.now {
            self.same_instant_timers = 0;
        }
        self.now = self.now.max(at);
        self.steps += 1;
        let now = self.now;
        let node = match ev {
            Pending::Deliver { to, from, mut payload } => {
                self.wire_stats.delivered += 1;
                self.log.update((now - self.start).as_nanos().to_be_bytes());
                self.log.update([b'D', to as u8, from as u8]);
                self.log.update(&payload);
                self.hosts[to].handle_datagram(now, from, &mut payload);
                self.send_unlinked(to);
                to
            }
            Pending::Timer { node } => {
                self.same_instant_timers += 1;
                assert!(
                    self.same_instant_timers < 100_000,
                    "node {node} keeps a deadline in the past: a timer that never advances"
                );
                if self.timers[node].is_some_and(|t| t <= now) {
                    self.timers[node] = None;
                    self.note_wake(node);
                    self.hosts[node].handle_timeout(now);
                }
                node
            }
            Pending::WireFree { node, link } => {
                if self.wakes.get(&(node, link)) == Some(&at) {
                    self.wakes.remove(&(node, link));
                }
                node
            }
        };
        self.flush(node);
        true
    }

    /// Runs until `deadline` (virtual) or until `on_event` returns `false`. Every node event
    /// the sessions did not take is passed to `on_event`, which may act on the world.
    pub fn run_until(&mut self, deadline: Instant, mut on_event: impl FnMut(&mut World, usize, Event) -> bool) -> bool {
        loop {
            while let Some((node, ev)) = self.backlog.pop_front() {
                if !on_event(self, node, ev) {
                    // The rest wait for the next run.
                    return true;
                }
            }
            if !self.step(deadline) {
                break;
            }
        }
        self.now = self.now.max(deadline);
        false
    }

    /// Runs until `deadline` or until `on_event` returns `false`, handing out session events of
    /// every node with a session endpoint (node events are dropped).
    pub fn run_sessions_until(
        &mut self,
        deadline: Instant,
        mut on_event: impl FnMut(&mut World, usize, SessionEvent) -> bool,
    ) -> bool {
        loop {
            for i in 0..self.hosts.len() {
                while let Some(ev) = self.apps[i].session_events.pop_front() {
                    let now = self.now;
                    let ev = match self.apps[i].anchor.as_mut() {
                        Some(a) => {
                            let ev = a.handle(now, &mut self.hosts[i], ev);
                            self.flush(i);
                            ev
                        }
                        None => Some(ev),
                    };
                    if let Some(ev) = ev {
                        if !on_event(self, i, ev) {
                            return true;
                        }
                    }
                }
                if let Some(a) = self.apps[i].anchor.as_mut() {
                    a.flush(self.now, &mut self.hosts[i]);
                    self.flush(i);
                }
            }
            self.backlog.clear();
            if !self.step(deadline) {
                break;
            }
        }
        self.now = self.now.max(deadline);
        false
    }

    fn note_wake(&mut self, node: usize) {
        if self.last_wake[node] != Some(self.now) {
            self.last_wake[node] = Some(self.now);
            self.wakeups[node] += 1;
        }
    }

    /// Datagrams and bytes `node` has put on its wires so far.
    pub fn sent_by(&self, node: usize) -> (u64, u64) {
        self.sent_by[node]
    }

    /// Timer wakeups of `node` so far: expiries of its node or session timer, counted once
    /// per distinct instant (what would wake a phone's CPU).
    pub fn wakeups(&self, node: usize) -> u64 {
        self.wakeups[node]
    }

    /// Fingerprint of every datagram delivered and every event raised so far.
    pub fn log_hash(&self) -> String {
        hex::encode(self.log.clone().finalize())
    }

    /// Completed key rotations over all links (each counted once, not once per side).
    /// Route discovery as flooding leaves it: every node signs an announcement of its wires'
    /// far ends (RTT twice the wire's latency, its loss), and a topology takes all of them,
    /// checking each signature. The graph of what both ends announce is what route finding
    /// then uses (the flooding itself runs on real nodes: tests/real_nodes.rs).
    pub fn discovered(&self) -> skyroute_proto::dht::topology::Topology {
        use skyroute_proto::dht::topology::{LinkAnnouncement, LinkReport, Topology, MAX_LINKS};
        let unix = SIM_UNIX_TIME + self.elapsed().as_secs();
        let mut t = Topology::new();
        for (i, node) in self.hosts.iter().map(|h| h.node()).enumerate() {
            let links: Vec<LinkReport> = self
                .wires
                .iter()
                .filter(|((a, b), _)| *a == i || *b == i)
                .map(|((a, b), w)| LinkReport {
                    peer: self.key(if *a == i { *b } else { *a }),
                    rtt_ms: (2 * w.spec.latency.as_millis()).clamp(1, 60_000) as u16,
                    loss_permille: (w.spec.loss * 1000.0) as u16,
                })
                .take(MAX_LINKS)
                .collect();
            let signed = LinkAnnouncement::sign(&node.identity_copy(), 1, unix, 3600, links);
            // An announcement that does not sign or verify is left out (and its links with it).
            if let Ok(a) = signed {
                let _ = t.announce(a, unix);
            }
        }
        t
    }

    /// Bytes sent on the wire between `a` and `b`: from `a` to `b`, and back.
    pub fn wire_bytes(&self, a: usize, b: usize) -> (u64, u64) {
        let Some(w) = self.wires.get(&(a.min(b), a.max(b))) else { return (0, 0) };
        if a < b {
            (w.bytes[0], w.bytes[1])
        } else {
            (w.bytes[1], w.bytes[0])
        }
    }

    pub fn link_rekeys(&self) -> u64 {
        self.hosts.iter().flat_map(|h| h.node().links()).map(|l| l.stats.rekeys).sum::<u64>() / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A traced wire, kept full by its sender for a minute, delivers the trace's bytes.
    #[test]
    fn a_traced_wire_delivers_the_traces_rate() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/Verizon-LTE-short-60s.down");
        let trace = Arc::new(Trace::load(&path).expect("test trace"));
        let mut w = World::new(1);
        let (a, b) = (w.add_node(NodeConfig::default()), w.add_node(NodeConfig::default()));
        let spec = WireSpec {
            bandwidth: 100_000_000,
            latency: Duration::from_millis(20),
            trace: [Some(trace.clone()), None],
            queue_packets: 50,
            ..WireSpec::default()
        };
        w.add_wire(a, b, spec);
        let packet = [0u8; 1400];
        let start = w.now();
        let minute = Duration::from_secs(60);
        // The sender offers a datagram every 0.1 ms (14 MB/s, far above the trace).
        while w.now() - start < minute {
            w.transmit(a, b, &packet);
            let next = w.now() + Duration::from_micros(100);
            while w.step(next) {}
            w.now = next;
        }
        let got = w.wire_stats.delivered as f64 * packet.len() as f64;
        // What left in the last 20 ms is still on its way.
        let lost_in_flight = trace.count(59_980, 60_000) as f64 * 1500.0;
        let want = trace.count(0, 60_000) as f64 * 1500.0;
        let ratio = (got + lost_in_flight) / want;
        eprintln!("delivered / trace: {ratio:.5}");
        assert!((ratio - 1.0).abs() < 0.01, "delivered {got} bytes, the trace {want}: {ratio:.4}");
        assert!(w.wire_stats.queue_drops > 0, "a saturating sender fills the queue");
        // The other direction has no trace: the wire's bandwidth alone.
        assert!(w.wires.values().all(|x| x.queues[1].is_none()));
    }
}
