//! The whole stack as a state machine (in the style of firezone's `tests/`): random sequences
//! of what happens to a phone's session - stream writes, deadline datagrams, a relay's wires
//! cut and restored (on wires that lose up to 20% and reorder), a relay killed and restarted, the network changing, time passing (links
//! rotate their keys every second, so any wait rekeys), the session closed and reopened, the
//! peer restarting - run against five simulated nodes through the public `Host` API, checked
//! against a reference model of what the application must see:
//!
//! - stream bytes arrive intact, in order, exactly once per receiving session (a restarted peer
//!   resumes without a gap);
//! - every stream byte written is confirmed once the network heals;
//! - no deadline datagram arrives late or twice;
//! - no session fails (no outage here is longer than the session timeout);
//! - route buffers stay within the node's memory budget;
//! - counters never go backwards;
//! - nothing panics.
//!
//! proptest shrinks a failing sequence to a short one. `SKYROUTE_SM_CASES` sets the number of
//! cases (CI runs the default; `SKYROUTE_SM_CASES=500` or more locally).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use skyroute_proto::{ForwardConfig, Graph, NodeConfig, SessionConfig, SessionEvent, SessionId};
use skyroute_sim::{WireSpec, World};

const SRC: usize = 0;
const RELAYS: [usize; 3] = [1, 2, 3];
const DST: usize = 4;
/// Each node's route buffer budget (small, so the check means something).
const BUDGET: usize = 32 << 20;
/// Stream bytes the application keeps waiting to be written, at most.
const MAX_BACKLOG: u64 = 1 << 20;
/// The model's time step: writes are retried and invariants checked this often.
const SLICE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
enum Action {
    /// The application wants to write this many more stream bytes.
    Write(u32),
    /// A deadline datagram with this budget (ms).
    Datagram(u16),
    /// Both wires of a relay carry nothing for this long (ms), from now.
    Cut(usize, u32),
    /// A relay crashes and comes back at once with no state (it dials the destination again).
    KillRelay(usize),
    /// The phone's network changed (every link and path probed).
    NetworkChanged,
    /// Time passes (ms).
    Advance(u32),
    /// The application closes its session and opens a new one.
    Reopen,
    /// The destination crashes and comes back with no state.
    RestartPeer,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (1u32..300_000).prop_map(Action::Write),
        2 => (20u16..500).prop_map(Action::Datagram),
        2 => (0usize..3, 50u32..2_500).prop_map(|(r, ms)| Action::Cut(r, ms)),
        1 => (0usize..3).prop_map(Action::KillRelay),
        1 => Just(Action::NetworkChanged),
        4 => (1u32..4_000).prop_map(Action::Advance),
        1 => Just(Action::Reopen),
        1 => Just(Action::RestartPeer),
    ]
}

/// The stream's content: a function of the offset only, so any piece can be checked.
fn byte(offset: u64) -> u8 {
    (offset.wrapping_mul(2_654_435_761) >> 11) as u8
}

/// What the application has seen and must see.
#[derive(Default)]
struct Model {
    /// The phone's session now, and the stream bytes it took in it.
    sid: SessionId,
    written: u64,
    /// Bytes the application still wants to write.
    backlog: u64,
    /// Per receiving session at the destination: the next offset it must deliver.
    next_offset: BTreeMap<SessionId, u64>,
    /// The most any receiving session got (a restarted peer resumes at or below it).
    received_most: u64,
    peer_restarted: bool,
    /// Datagrams: the next sequence number, and those delivered.
    dgram_seq: u64,
    dgram_seen: BTreeSet<u64>,
    /// Counters seen last (per node; reset when the node restarts).
    counters: BTreeMap<usize, BTreeMap<String, u64>>,
    wire_counters: Vec<u64>,
    /// Cut time spent so far (bounded so no outage outlasts the session timeout).
    cut_ms: u64,
    failures: Vec<String>,
}

impl Model {
    fn on_event(&mut self, now: Duration, node: usize, ev: SessionEvent) {
        match ev {
            SessionEvent::Stream { session, offset, data } if node == DST => {
                let next = self.next_offset.entry(session).or_insert(u64::MAX);
                if *next == u64::MAX {
                    // A new receiving session: from the start, or (after the peer restarted)
                    // where its sender resumed, never beyond what was already delivered.
                    let ok = offset == 0 || (self.peer_restarted && offset <= self.received_most);
                    if !ok {
                        self.failures.push(format!("session {session} starts at {offset}"));
                    }
                } else if offset != *next {
                    self.failures.push(format!("session {session}: data at {offset}, expected {next}"));
                }
                if let Some(i) = data.iter().zip(offset..).position(|(b, o)| *b != byte(o)) {
                    self.failures.push(format!("session {session}: corrupt byte at {}", offset + i as u64));
                }
                *next = offset + data.len() as u64;
                self.received_most = self.received_most.max(*next);
            }
            SessionEvent::Datagram { data, .. } if node == DST => {
                let seq = u64::from_be_bytes(data[0..8].try_into().unwrap_or_default());
                let sent = Duration::from_nanos(u64::from_be_bytes(data[8..16].try_into().unwrap_or_default()));
                let budget = Duration::from_millis(u16::from_be_bytes([data[16], data[17]]) as u64);
                if now.saturating_sub(sent) > budget {
                    self.failures.push(format!("datagram {seq} late: {:?} > {budget:?}", now - sent));
                }
                if !self.dgram_seen.insert(seq) {
                    self.failures.push(format!("datagram {seq} delivered twice"));
                }
            }
            SessionEvent::Failed { session } => self.failures.push(format!("session {session} failed at node {node}")),
            _ => {}
        }
    }
}

struct Harness {
    w: World,
    m: Model,
}

impl Harness {
    fn new(seed: u64, loss: f64) -> Harness {
        let mut w = World::new(seed);
        let forward = ForwardConfig { memory_budget_bytes: BUDGET, ..ForwardConfig::default() };
        let nc = NodeConfig { forward, ..NodeConfig::default() };
        for _ in 0..5 {
            w.add_node(nc.clone());
        }
        let mut g = Graph::new();
        for (i, r) in RELAYS.iter().enumerate() {
            let latency = Duration::from_millis(5 + 7 * i as u64);
            let spec = WireSpec { latency, loss, jitter: Duration::from_millis(2), ..WireSpec::default() };
            w.add_wire(SRC, *r, spec.clone());
            w.add_wire(*r, DST, spec);
            w.connect(SRC, *r);
            w.connect(*r, DST);
            g.add_edge(w.key(SRC), w.key(*r), 5);
            g.add_edge(w.key(*r), w.key(DST), 5);
        }
        let deadline = w.now() + Duration::from_secs(1);
        w.run_until(deadline, |_, _, _| true);
        for n in [SRC, DST] {
            w.add_sessions(n, SessionConfig::default(), g.clone());
        }
        let mut h = Harness { w, m: Model::default() };
        h.open();
        h
    }

    fn open(&mut self) {
        let dest = self.w.key(DST);
        match self.w.act_host(SRC, |h, now| h.connect(now, dest, None)) {
            Ok(sid) => self.m.sid = sid,
            Err(e) => self.m.failures.push(format!("connect: {e}")),
        }
        self.m.written = 0;
        self.m.backlog = 0;
    }

    fn apply(&mut self, a: &Action) {
        match *a {
            Action::Write(n) => self.m.backlog = (self.m.backlog + n as u64).min(MAX_BACKLOG),
            Action::Datagram(budget) => {
                let mut d = vec![0u8; 120];
                d[0..8].copy_from_slice(&self.m.dgram_seq.to_be_bytes());
                d[8..16].copy_from_slice(&(self.w.elapsed().as_nanos() as u64).to_be_bytes());
                d[16..18].copy_from_slice(&budget.to_be_bytes());
                self.m.dgram_seq += 1;
                let sid = self.m.sid;
                let budget = Duration::from_millis(budget as u64);
                // Not established yet, or no path in time: dropped, which is allowed.
                let _ = self.w.act_host(SRC, |h, now| h.send_datagram(now, sid, &d, budget));
            }
            Action::Cut(r, ms) => {
                if self.m.cut_ms + ms as u64 <= 20_000 {
                    self.m.cut_ms += ms as u64;
                    let since = self.w.elapsed();
                    for (a, b) in [(SRC, RELAYS[r]), (RELAYS[r], DST)] {
                        if let Some(s) = self.w.wire_mut(a, b) {
                            s.down.push((since, since + Duration::from_millis(ms as u64)));
                        }
                    }
                }
            }
            Action::KillRelay(r) => {
                self.w.restart(RELAYS[r]);
                self.m.counters.remove(&RELAYS[r]);
                self.w.connect(RELAYS[r], DST);
            }
            Action::NetworkChanged => self.w.act_host(SRC, |h, now| h.network_changed(now)),
            Action::Advance(ms) => self.run(Duration::from_millis(ms as u64)),
            Action::Reopen => {
                let sid = self.m.sid;
                self.w.act_host(SRC, |h, now| h.close(now, sid));
                self.m.counters.remove(&SRC);
                self.open();
            }
            Action::RestartPeer => {
                self.w.restart(DST);
                self.m.counters.remove(&DST);
                self.m.peer_restarted = true;
            }
        }
        // Every action is followed by a little time, so events of one step are seen.
        self.run(SLICE);
    }

    /// Runs `d` of virtual time in slices: writes what the application wants, hands events to
    /// the model, checks the invariants after each slice.
    fn run(&mut self, d: Duration) {
        let end = self.w.now() + d;
        while self.w.now() < end {
            self.write();
            let slice = (self.w.now() + SLICE).min(end);
            let (w, m) = (&mut self.w, &mut self.m);
            let origin = w.now() - w.elapsed();
            w.run_sessions_until(slice, |w, node, ev| {
                m.on_event(w.now() - origin, node, ev);
                true
            });
            self.check();
        }
    }

    fn write(&mut self) {
        if self.m.backlog == 0 {
            return;
        }
        let (sid, from) = (self.m.sid, self.m.written);
        let n = self.m.backlog.min(64 << 10) as usize;
        let chunk: Vec<u8> = (from..from + n as u64).map(byte).collect();
        if let Ok(took) = self.w.act_host(SRC, |h, now| h.stream_write(now, sid, &chunk)) {
            self.m.written += took as u64;
            self.m.backlog -= took as u64;
        }
    }

    /// Memory within budget, counters monotone.
    fn check(&mut self) {
        for n in 0..self.w.nodes() {
            let (buffered, reserved) = self.w.node(n).buffered_bytes();
            if buffered > BUDGET || reserved > BUDGET {
                self.m.failures.push(format!("node {n}: {buffered} buffered, {reserved} reserved > {BUDGET}"));
            }
            let now = self.counters(n);
            if let Some(before) = self.m.counters.get(&n) {
                for (name, b) in before {
                    if now.get(name).is_some_and(|a| a < b) {
                        self.m.failures.push(format!("node {n}: {name} went back from {b} to {}", now[name]));
                    }
                }
            }
            self.m.counters.insert(n, now);
        }
        let ws = &self.w.wire_stats;
        let wire = vec![ws.sent, ws.delivered, ws.lost, ws.dropped_down, ws.bytes];
        if wire.iter().zip(&self.m.wire_counters).any(|(a, b)| a < b) {
            self.m.failures.push(format!("wire counters went back: {:?} -> {wire:?}", self.m.wire_counters));
        }
        self.m.wire_counters = wire;
    }

    /// A node's counters by name: refusals, each link's traffic (link ids are never reused),
    /// and at the source the session's.
    fn counters(&self, n: usize) -> BTreeMap<String, u64> {
        let h = self.w.host(n);
        let node = h.node();
        let mut c = BTreeMap::new();
        for (reason, v) in node.stats().rejected.iter() {
            c.insert(format!("rejected.{}", reason.name()), v);
        }
        let es = h.sessions().endpoint_stats();
        for (name, v) in [
            ("unknown_session", es.unknown_session),
            ("bad_handshake", es.bad_handshake),
            ("malformed", es.malformed),
            ("refused", es.refused),
        ] {
            c.insert(name.to_string(), v);
        }
        for l in node.links() {
            let s = &l.stats;
            for (name, v) in [
                ("tx_packets", s.tx_packets),
                ("rx_packets", s.rx_packets),
                ("tx_bytes", s.tx_bytes),
                ("rx_bytes", s.rx_bytes),
                ("rekeys", s.rekeys),
                ("handshakes", s.handshakes),
            ] {
                c.insert(format!("link{}.{name}", l.id.0), v);
            }
        }
        if n == SRC {
            if let Some(s) = h.sessions().stats(self.m.sid) {
                for (name, v) in [
                    ("stream_bytes_written", s.stream_bytes_written),
                    ("stream_bytes_confirmed", s.stream_bytes_confirmed),
                    ("packets_sent", s.packets_sent),
                    ("packets_received", s.packets_received),
                    ("symbols_sent", s.symbols_sent),
                    ("datagrams_sent", s.datagrams_sent),
                    ("rekeys", s.rekeys),
                    ("rejected_auth", s.rejected_auth),
                    ("rejected_replay", s.rejected_replay),
                ] {
                    c.insert(format!("session{}.{name}", self.m.sid), v);
                }
            }
        }
        c
    }

    /// The network heals: every byte written is confirmed within a minute.
    fn settle(&mut self) {
        for r in RELAYS {
            for (a, b) in [(SRC, r), (r, DST)] {
                if let Some(s) = self.w.wire_mut(a, b) {
                    s.down.clear();
                }
            }
        }
        let deadline = self.w.now() + Duration::from_secs(60);
        let debug = std::env::var_os("SKYROUTE_SM_DEBUG").is_some();
        while self.w.now() < deadline {
            self.run(Duration::from_millis(200));
            if debug {
                for n in [SRC, DST] {
                    let s = self.w.host(n).sessions();
                    for id in s.ids() {
                        eprintln!("{:?} node {n} session {id}: {:?}\n{:?}", self.w.elapsed(), s.paths(id), s.stats(id));
                        eprintln!("  rejected {:?} endpoint {:?}", self.w.node(n).stats().rejected, s.endpoint_stats());
                    }
                }
                for n in 0..5 {
                    let node = self.w.node(n);
                    for r in node.route_ids() {
                        for dir in [skyroute_proto::Dir::Fwd, skyroute_proto::Dir::Back] {
                            if let Some(f) = node.flow_stats(r, dir, skyroute_proto::Class::Bulk) {
                                eprintln!("  node {n} route {r} {dir:?} bulk {f:?}");
                            }
                        }
                    }
                }
            }
            let confirmed = self.w.host(SRC).sessions().stats(self.m.sid).map_or(0, |s| s.stream_bytes_confirmed);
            if self.m.backlog == 0 && confirmed == self.m.written {
                return;
            }
        }
        let st = self.w.host(SRC).sessions().stats(self.m.sid).cloned();
        self.m.failures.push(format!(
            "not confirmed after healing: written {}, backlog {}, stats {st:?}",
            self.m.written, self.m.backlog
        ));
    }
}

fn cases() -> u32 {
    std::env::var("SKYROUTE_SM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
        // A failure found is kept as a named test below, not in a file at the top of the repo.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_application_sees_what_the_model_says(
        seed in any::<u64>(),
        loss in prop_oneof![3 => Just(0.0), 1 => 0.0..0.2f64],
        actions in prop::collection::vec(action(), 1..24),
    ) {
        let mut h = Harness::new(seed, loss);
        for a in &actions {
            h.apply(a);
            prop_assert!(h.m.failures.is_empty(), "after {a:?}: {:?}", h.m.failures);
        }
        h.settle();
        prop_assert!(h.m.failures.is_empty(), "at the end: {:?}", h.m.failures);
    }
}

/// Runs one sequence and returns what the model found wrong.
fn run_sequence(seed: u64, loss: f64, actions: &[Action]) -> Vec<String> {
    let mut h = Harness::new(seed, loss);
    for a in actions {
        h.apply(a);
    }
    h.settle();
    h.m.failures
}

/// The first thing this test found: a datagram with a 20 ms budget, sent while two of three
/// routes were cut, was held in a hop's buffer and delivered 40 ms after it was sent, because
/// the receiver judged lateness by half its path RTT, which it had not measured yet. Packets
/// now carry the sender's clock, so the receiver sees the time a packet waited.
#[test]
fn a_datagram_held_behind_a_cut_is_not_delivered_late() {
    let actions =
        [Action::Cut(1, 50), Action::Write(31_601), Action::Write(1), Action::Cut(0, 50), Action::Datagram(20)];
    let failures = run_sequence(0, 0.0, &actions);
    assert!(failures.is_empty(), "{failures:?}");
}

/// The model is not blind: a receiver that got one byte wrong, a session that fails, and a
/// datagram that comes late are all reported.
#[test]
fn the_model_reports_what_it_must() {
    let mut m = Model::default();
    let at = Duration::from_millis(5);
    let mut data: Vec<u8> = (0..100).map(byte).collect();
    m.on_event(at, DST, SessionEvent::Stream { session: 7, offset: 0, data: data.clone() });
    assert!(m.failures.is_empty(), "{:?}", m.failures);
    data[3] ^= 1;
    m.on_event(at, DST, SessionEvent::Stream { session: 7, offset: 100, data: data.clone() });
    assert_eq!(m.failures.len(), 1, "a corrupt byte: {:?}", m.failures);
    m.on_event(at, DST, SessionEvent::Stream { session: 7, offset: 100, data: (100..110).map(byte).collect() });
    assert_eq!(m.failures.len(), 2, "a repeat: {:?}", m.failures);
    let mut d = vec![0u8; 20];
    d[16..18].copy_from_slice(&10u16.to_be_bytes());
    m.on_event(Duration::from_millis(11), DST, SessionEvent::Datagram { session: 7, data: d.clone() });
    assert_eq!(m.failures.len(), 3, "11 ms for a 10 ms budget: {:?}", m.failures);
    m.on_event(Duration::from_millis(1), DST, SessionEvent::Datagram { session: 7, data: d });
    assert_eq!(m.failures.len(), 4, "twice: {:?}", m.failures);
    m.on_event(at, SRC, SessionEvent::Failed { session: 1 });
    assert_eq!(m.failures.len(), 5);
}

/// The second find: a relay crashed, then two routes cut for two seconds while a write waited;
/// after the network healed the stream stayed stuck.
#[test]
fn a_stream_written_while_routes_are_cut_is_confirmed_once_they_heal() {
    let actions = [
        Action::KillRelay(1),
        Action::Write(1),
        Action::Write(1),
        Action::Datagram(20),
        Action::Cut(2, 50),
        Action::Write(21_489),
        Action::Cut(0, 2_004),
        Action::Cut(2, 1_846),
        Action::Advance(1_944),
    ];
    let failures = run_sequence(0, 0.0, &actions);
    assert!(failures.is_empty(), "{failures:?}");
}

/// The third find: on lossy wires, early in a session, a copy of a 20 ms datagram went out on
/// a 24 ms route whose delay neither end had measured yet, and the receiver, with nothing to
/// go on, took it as in time (26 ms after it was sent). Until a route is measured both ways
/// the receiver now bounds the delay by what must have happened before the packet left (its
/// handshake message, the peer's reports of our packets). The sender still copies datagrams
/// onto unmeasured routes: on the moving car those copies are what save frames when the old
/// routes die.
#[test]
fn an_early_datagram_on_an_unmeasured_route_is_not_delivered_late() {
    let actions = [Action::Write(1), Action::Write(1), Action::Write(1), Action::Write(18_958), Action::Datagram(20)];
    let failures = run_sequence(16_506_839_350_927_987_303, 0.131_296_382_990_408_22, &actions);
    assert!(failures.is_empty(), "{failures:?}");
}

/// Found by a local CI run (seed 14515333522211788496): a 28 ms datagram delivered 28.18 ms
/// after it was sent, after a relay's wires were cut for 1.2 s with the stream busy. The code
/// of the previous stops fails it too (checked at 1e8913f): the receiver's delay estimate
/// (half the path's base round trip plus the packet's queueing beyond the path's quickest
/// recent one) comes out 0.18 ms short here. Kept, ignored, until the estimate is fixed
/// (docs/limitations.md); `cargo test -p skyroute-sim --test state_machine -- --ignored`.
#[test]
#[ignore = "known: the receiver's delay estimate is 0.18 ms short after a cut (docs/limitations.md)"]
fn a_datagram_after_a_cut_is_not_delivered_late() {
    let actions = [
        Action::Advance(302),
        Action::Cut(0, 1173),
        Action::Write(134_856),
        Action::Advance(1074),
        Action::Write(20_177),
        Action::Datagram(28),
    ];
    let failures = run_sequence(14_515_333_522_211_788_496, 0.0, &actions);
    assert!(failures.is_empty(), "{failures:?}");
}
