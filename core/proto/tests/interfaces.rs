//! Every radio at once, through the public `Host` API: a phone with two
//! interfaces (1 = WiFi, 2 = LTE) whose paths could each reach both relays (the routers behind
//! them reach each other). Links live on the interface they were made on, a neighbour reachable
//! over both has two links, a gone interface takes its links down at once, and a two-route
//! session leaves through both radios and does not stall when one goes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use skyroute_proto::{
    Class, Dir, DownReason, Endpoint, Event, Host, HostConfig, HostEvent, Interface, LinkId, LinkState, Node,
    NodeConfig, NodeMut, PathState, PublicKey, RouteEvent, SecretKey, SessionConfig, SessionEvent, SessionId,
};

const PHONE: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const SERVER: u8 = 3;
const WIFI: u8 = 1;
const LTE: u8 = 2;

/// An address as one node sees another: our interface, the peer, the peer's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct At {
    local: u8,
    node: u8,
    remote: u8,
}

impl Endpoint for At {
    fn interface(&self) -> Interface {
        Interface(self.local)
    }
}

struct World {
    now: Instant,
    hosts: Vec<Host<At>>,
    /// In flight: arrival time, receiver, from (as the receiver sees it), bytes.
    wire: VecDeque<(Instant, u8, At, Vec<u8>)>,
    /// The phone's interfaces that are up.
    up: BTreeSet<u8>,
    /// Packets for the phone's interface `k` arrive on `v` (return traffic that found its way
    /// round through the other path).
    divert: BTreeMap<u8, u8>,
    /// Datagrams the phone sent on each of its interfaces.
    sent_on: BTreeMap<u8, u64>,
    node_events: Vec<(u8, Instant, Event)>,
    session_events: Vec<(u8, Instant, SessionEvent)>,
}

/// One-way latency between two interfaces: the phone's WiFi is near R1, its LTE near R2; the
/// crossed ways are longer.
fn latency(a: u8, ai: u8, b: u8, bi: u8) -> Duration {
    let (p, pi, other) = if a == PHONE { (a, ai, b) } else { (b, bi, a) };
    let ms = match (p, pi, other) {
        (PHONE, WIFI, R1) | (PHONE, LTE, R2) => 10,
        (PHONE, _, _) => 25,
        _ => 5,
    };
    Duration::from_millis(ms)
}

impl World {
    fn new(seed: u64, cfg: SessionConfig) -> World {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let keys: Vec<SecretKey> = (0..4).map(|_| SecretKey::generate(&mut rng)).collect();
        let config = HostConfig { node: NodeConfig::default(), session: cfg };
        let pk: Vec<PublicKey> = keys.iter().map(|k| k.public_key()).collect();
        let hosts: Vec<Host<At>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let rng = ChaCha20Rng::seed_from_u64(seed + 1 + i as u64);
                let mut h = Host::new(k.clone(), config.clone(), Box::new(rng));
                for (a, b) in [(PHONE, R1), (PHONE, R2), (R1, SERVER), (R2, SERVER)] {
                    h.graph_mut().add_edge(pk[a as usize], pk[b as usize], 10);
                }
                h
            })
            .collect();
        World {
            now: Instant::now(),
            hosts,
            wire: VecDeque::new(),
            up: [WIFI, LTE].into(),
            divert: BTreeMap::new(),
            sent_on: BTreeMap::new(),
            node_events: Vec::new(),
            session_events: Vec::new(),
        }
    }

    fn key(&self, n: u8) -> PublicKey {
        self.hosts[n as usize].public_key()
    }

    /// The phone dials `relay` over `iface`; the relays dial the server.
    fn dial(&mut self, relay: u8, iface: u8) {
        let key = self.key(relay);
        let now = self.now;
        self.phone().connect(now, key, At { local: iface, node: relay, remote: 0 });
    }

    fn dial_servers(&mut self) {
        let server = self.key(SERVER);
        let now = self.now;
        for r in [R1, R2] {
            self.hosts[r as usize].node_mut(now).connect(now, server, At { local: 0, node: SERVER, remote: 0 });
        }
    }

    fn step(&mut self) {
        let now = self.now;
        let mut buf = Vec::new();
        for i in 0..self.hosts.len() {
            let n = i as u8;
            while let Some(at) = self.hosts[i].poll_transmit(now, None, &mut buf) {
                if n == PHONE {
                    *self.sent_on.entry(at.local).or_default() += 1;
                    // Interface 0 is the phone's unbound socket: the OS picks a radio.
                    if at.local != 0 && !self.up.contains(&at.local) {
                        continue;
                    }
                }
                let mut arrive_on = at.remote;
                if at.node == PHONE {
                    if at.remote != 0 && !self.up.contains(&at.remote) {
                        continue;
                    }
                    arrive_on = *self.divert.get(&at.remote).unwrap_or(&at.remote);
                }
                let when = now + latency(n, at.local, at.node, at.remote);
                let bytes = std::mem::take(&mut buf);
                self.wire.push_back((when, at.node, At { local: arrive_on, node: n, remote: at.local }, bytes));
            }
        }
        let mut later = VecDeque::new();
        while let Some((when, to, from, mut bytes)) = self.wire.pop_front() {
            if when <= now {
                self.hosts[to as usize].handle_datagram(now, from, &mut bytes);
            } else {
                later.push_back((when, to, from, bytes));
            }
        }
        self.wire = later;
        for i in 0..self.hosts.len() {
            if self.hosts[i].poll_timeout().is_some_and(|t| t <= now) {
                self.hosts[i].handle_timeout(now);
            }
            while let Some(ev) = self.hosts[i].poll_event() {
                match ev {
                    HostEvent::Node(ev) => self.node_events.push((i as u8, now, ev)),
                    HostEvent::Session(ev) => self.session_events.push((i as u8, now, ev)),
                }
            }
        }
    }

    /// Runs in 1 ms steps.
    fn run(&mut self, d: Duration) {
        let until = self.now + d;
        while self.now < until {
            self.step();
            self.now += Duration::from_millis(1);
        }
    }

    /// The phone's node, to act on (what it raises is handled when the handle goes).
    fn phone(&mut self) -> NodeMut<'_, At> {
        let now = self.now;
        self.hosts[PHONE as usize].node_mut(now)
    }

    fn node(&self, n: u8) -> &Node<At> {
        self.hosts[n as usize].node()
    }

    fn link_on(&self, peer: u8, iface: u8) -> LinkId {
        let key = self.key(peer);
        let phone = self.node(PHONE);
        phone.links_to(&key).into_iter().find(|l| phone.link_interface(*l) == Some(Interface(iface))).expect("link")
    }

    fn state(&self, link: LinkId) -> LinkState {
        self.node(PHONE).link(link).expect("link").state
    }
}

#[test]
fn a_neighbour_over_two_interfaces_has_two_links_that_stay_on_their_interface() {
    let mut w = World::new(1, SessionConfig::default());
    w.dial(R1, WIFI);
    w.dial(R1, LTE);
    w.run(Duration::from_millis(300));
    let (wifi, lte) = (w.link_on(R1, WIFI), w.link_on(R1, LTE));
    assert_ne!(wifi, lte);
    assert_eq!((w.state(wifi), w.state(lte)), (LinkState::Up, LinkState::Up));
    // The relay tells them apart too (by the slot in the handshake): two up links.
    let phone_key = w.key(PHONE);
    let relay = w.node(R1);
    let theirs = relay.links_to(&phone_key);
    assert_eq!(theirs.len(), 2);
    assert!(theirs.iter().all(|l| relay.link(*l).unwrap().state == LinkState::Up));

    // Return traffic for the WiFi link now comes in through LTE (the routers reach each
    // other): a route over the WiFi link keeps working, and the link stays on WiFi.
    w.divert.insert(WIFI, LTE);
    let now = w.now;
    let r1 = w.key(R1);
    let route = w.phone().open_route(now, Some(wifi), &[r1]).unwrap();
    w.run(Duration::from_millis(200));
    assert!(w.node(PHONE).route_ready(route));
    for _ in 0..20 {
        let now = w.now;
        w.phone().send(now, route, skyroute_proto::Class::Bulk, &[7; 1000]).unwrap();
        w.run(Duration::from_millis(10));
    }
    w.run(Duration::from_millis(300));
    let link = w.node(PHONE).link(wifi).unwrap();
    assert_eq!(link.addr.interface(), Interface(WIFI), "the WiFi link roamed onto {:?}", link.addr);
    let stats = w.node(PHONE).flow_stats(route, Dir::Fwd, Class::Bulk).unwrap();
    // A one-hop route is direct: each message is its kind byte and the data, no route seal.
    assert_eq!(stats.sent_bytes, 20 * 1000 + 20 * skyroute_proto::route::DIRECT_MSG_OVERHEAD as u64);
    let before = *w.sent_on.get(&LTE).unwrap_or(&0);
    w.run(Duration::from_millis(100));
    assert_eq!(w.sent_on.get(&LTE).copied().unwrap_or(0), before, "the idle LTE link sent nothing");
}

#[test]
fn a_gone_interface_takes_its_links_down_at_once_and_a_returning_one_is_up_within_a_handshake() {
    let mut w = World::new(2, SessionConfig::default());
    w.dial(R1, WIFI);
    w.dial(R2, LTE);
    w.run(Duration::from_millis(300));
    let (wifi, lte) = (w.link_on(R1, WIFI), w.link_on(R2, LTE));
    let now = w.now;
    let r1 = w.key(R1);
    let route = w.phone().open_route(now, Some(wifi), &[r1]).unwrap();
    w.run(Duration::from_millis(100));
    assert!(w.node(PHONE).route_ready(route));

    // WiFi goes: the link and the route over it are down in the same call, no timer.
    w.up.remove(&WIFI);
    let now = w.now;
    w.phone().interface_down(now, Interface(WIFI));
    let mut down = false;
    let mut failed = false;
    while let Some(ev) = w.hosts[PHONE as usize].poll_event() {
        let HostEvent::Node(ev) = ev else { continue };
        down |= matches!(ev, Event::LinkDown { link, reason: DownReason::InterfaceGone, .. } if link == wifi);
        failed |= matches!(ev, Event::Route(RouteEvent::Failed { route: r, .. }) if r == route);
    }
    assert!(down && failed, "link down {down}, route failed {failed}");
    assert_eq!(w.state(wifi), LinkState::Down);
    assert_eq!(w.state(lte), LinkState::Up);
    // Parked: it does not redial into a missing interface (a phone's radio stays asleep).
    let before = w.sent_on.get(&WIFI).copied().unwrap_or(0);
    w.run(Duration::from_secs(30));
    assert_eq!(w.sent_on.get(&WIFI).copied().unwrap_or(0), before);
    assert_eq!(w.state(lte), LinkState::Up);

    // WiFi is back: the handshake goes out at once; up within one round trip (20 ms here).
    w.up.insert(WIFI);
    let back = w.now;
    w.phone().interface_up(back, Interface(WIFI));
    let mut up_after = None;
    for _ in 0..200 {
        w.run(Duration::from_millis(1));
        if w.state(wifi) == LinkState::Up {
            up_after = Some(w.now - back);
            break;
        }
    }
    // One round trip (20 ms) plus the harness's 1 ms steps.
    let up_after = up_after.expect("the link came back");
    assert!(up_after <= Duration::from_millis(25), "up after {up_after:?}");
}

/// A two-route session from the phone to the server, with the phone dialling both relays
/// over both interfaces (four links).
fn session(cfg: SessionConfig, seed: u64) -> (World, SessionId, SessionId) {
    session_over(cfg, seed, &[(R1, WIFI), (R1, LTE), (R2, WIFI), (R2, LTE)])
}

/// A two-route session from the phone to the server once the phone dialled each (relay,
/// interface) of `dials`: the world, our session and the server's.
fn session_over(cfg: SessionConfig, seed: u64, dials: &[(u8, u8)]) -> (World, SessionId, SessionId) {
    let mut w = World::new(seed, cfg);
    for (r, i) in dials {
        w.dial(*r, *i);
    }
    w.dial_servers();
    w.run(Duration::from_millis(300));
    let server = w.key(SERVER);
    let now = w.now;
    let sid = w.hosts[PHONE as usize].connect(now, server, Some(2)).unwrap();
    w.run(Duration::from_millis(500));
    assert!(w.hosts[PHONE as usize].sessions().is_established(sid));
    let theirs = w
        .session_events
        .iter()
        .find_map(|(n, _, e)| match e {
            SessionEvent::Accepted { session, .. } if *n == SERVER => Some(*session),
            _ => None,
        })
        .expect("the server accepted");
    w.session_events.clear();
    (w, sid, theirs)
}

/// A stream as one side receives it: in order, intact, and the longest wait between pieces.
struct Received {
    got: usize,
    last: Option<Instant>,
    worst_gap: Duration,
}

impl Received {
    fn accept(&mut self, data: &[u8], at: Instant, offset: u64, piece: &[u8]) {
        assert_eq!(offset as usize, self.got);
        assert_eq!(piece, &data[self.got..self.got + piece.len()]);
        self.got += piece.len();
        if let Some(last) = self.last {
            self.worst_gap = self.worst_gap.max(at - last);
        }
        self.last = Some(at);
    }
}

/// The interfaces the session's live paths leave through.
fn radios(w: &World, sid: SessionId) -> Vec<u8> {
    let phone = w.node(PHONE);
    let sessions = w.hosts[PHONE as usize].sessions();
    let live: Vec<u32> = sessions.paths(sid).into_iter().filter(|p| p.1 == PathState::Live).map(|p| p.0).collect();
    let mut out: Vec<u8> = live
        .iter()
        .filter_map(|p| sessions.path_link(sid, *p))
        .filter_map(|l| phone.link_interface(l))
        .map(|i| i.0)
        .collect();
    out.sort();
    out
}

#[test]
fn a_two_route_session_uses_both_radios_and_does_not_stall_when_one_goes() {
    let (mut w, sid, theirs) = session(SessionConfig::default(), 3);
    assert_eq!(radios(&w, sid), vec![WIFI, LTE]);

    // Both ways at once (an upload and a download), paced at 2 MB/s each over 2.5 s, while
    // WiFi goes away (the driver reports it) and comes back, then LTE goes.
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (mut up_pos, mut down_pos) = (0, 0);
    let start = w.now;
    let new = || Received { got: 0, last: None, worst_gap: Duration::ZERO };
    let (mut up, mut down) = (new(), new());
    while (up.got < data.len() || down.got < data.len()) && w.now < start + Duration::from_secs(30) {
        let t = w.now - start;
        let now = w.now;
        if t == Duration::from_millis(300) {
            w.up.remove(&WIFI);
            w.phone().interface_down(now, Interface(WIFI));
        } else if t == Duration::from_millis(800) {
            w.up.insert(WIFI);
            w.phone().interface_up(now, Interface(WIFI));
        } else if t == Duration::from_millis(1400) {
            // WiFi is back: the session uses both radios again.
            assert_eq!(radios(&w, sid), vec![WIFI, LTE]);
        } else if t == Duration::from_millis(1500) {
            w.up.remove(&LTE);
            w.phone().interface_down(now, Interface(LTE));
        }
        let allowed = (t.as_millis() as usize * 2000).min(data.len());
        if up_pos < allowed {
            up_pos += w.hosts[PHONE as usize].stream_write(now, sid, &data[up_pos..allowed]).unwrap();
        }
        if down_pos < allowed {
            down_pos += w.hosts[SERVER as usize].stream_write(now, theirs, &data[down_pos..allowed]).unwrap();
        }
        w.run(Duration::from_millis(1));
        for (n, at, ev) in w.session_events.drain(..) {
            if let SessionEvent::Stream { offset, data: d, .. } = ev {
                match n {
                    SERVER => up.accept(&data, at, offset, &d),
                    PHONE => down.accept(&data, at, offset, &d),
                    _ => {}
                }
            }
        }
    }
    for (what, r) in [("upload", &up), ("download", &down)] {
        assert_eq!(r.got, data.len(), "{what} complete");
        assert!(r.last.unwrap() > start + Duration::from_millis(2000), "the {what} ended before LTE went away");
        assert!(r.worst_gap < Duration::from_millis(200), "{what}: a stall of {:?}", r.worst_gap);
    }
    // With LTE gone, both routes leave through WiFi.
    assert_eq!(radios(&w, sid), vec![WIFI, WIFI]);
}

/// Writes `data` on the phone's session as fast as it takes it, then lets it settle.
fn write_all(w: &mut World, sid: SessionId, data: &[u8]) {
    let mut pos = 0;
    let start = w.now;
    while pos < data.len() && w.now < start + Duration::from_secs(10) {
        let now = w.now;
        pos += w.hosts[PHONE as usize].stream_write(now, sid, &data[pos..]).unwrap();
        w.run(Duration::from_millis(1));
    }
    assert_eq!(pos, data.len(), "the session took everything");
    w.run(Duration::from_millis(500));
}

#[test]
fn bulk_stays_off_a_metered_radio_while_an_unmetered_one_works() {
    let cfg = SessionConfig { bulk_on_metered: false, ..SessionConfig::default() };
    let (mut w, sid, _) = session(cfg, 4);
    w.phone().set_metered(Interface(LTE), true);
    w.run(Duration::from_millis(300));
    write_all(&mut w, sid, &[5u8; 400_000]);
    let bulk_on = |w: &World, iface: u8| -> u64 {
        let phone = w.node(PHONE);
        let sessions = w.hosts[PHONE as usize].sessions();
        sessions
            .paths(sid)
            .into_iter()
            .filter(|p| sessions.path_link(sid, p.0).and_then(|l| phone.link_interface(l)) == Some(Interface(iface)))
            .filter_map(|p| sessions.path_route(sid, p.0))
            .filter_map(|r| phone.flow_stats(r, Dir::Fwd, Class::Bulk))
            .map(|f| f.sent_bytes)
            .sum()
    };
    assert!(bulk_on(&w, WIFI) >= 400_000, "bulk over WiFi: {}", bulk_on(&w, WIFI));
    assert_eq!(bulk_on(&w, LTE), 0, "bulk over metered LTE");
    // Without WiFi, bulk takes LTE rather than stopping.
    w.up.remove(&WIFI);
    let now = w.now;
    w.phone().interface_down(now, Interface(WIFI));
    write_all(&mut w, sid, &[6u8; 100_000]);
    assert!(bulk_on(&w, LTE) >= 100_000, "bulk over LTE once WiFi is gone: {}", bulk_on(&w, LTE));
}

/// A link on the phone's unbound socket (one it made before it knew its networks, or one a
/// neighbour made to it) is not a radio of its own: the session's two routes take WiFi and LTE.
#[test]
fn an_unbound_link_does_not_count_as_a_radio() {
    let (w, sid, _) = session_over(SessionConfig::default(), 5, &[(R1, 0), (R1, WIFI), (R2, LTE)]);
    assert_eq!(radios(&w, sid), vec![WIFI, LTE]);
}
