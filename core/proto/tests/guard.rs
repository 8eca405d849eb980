//! Handshakes under attack, through the public `Node` API: cookies under load, rate limits,
//! half-open links, replayed inits, and no amplification towards an unauthenticated sender.
//!
//! Addresses: the victim is 0, an honest neighbour 1, the attacker 9 (what the victim sends
//! there is counted, never delivered anywhere unless the test echoes it).

use std::time::{Duration, Instant};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use skyroute_proto::link::cookie::{self, GuardConfig};
use skyroute_proto::wire::Packet;
use skyroute_proto::{
    noise, Class, Event, ForwardConfig, LinkState, Node, NodeConfig, Reject, RouteConfig, RouteError, RouteEvent,
    RouteId, SecretKey,
};

const ATTACKER: u8 = 9;

struct Net {
    now: Instant,
    /// 0: the victim, then its neighbours.
    nodes: Vec<Node<u8>>,
    /// Datagrams the victim sent the attacker.
    to_attacker: Vec<Vec<u8>>,
    events: Vec<Vec<Event>>,
}

impl Net {
    fn new(seed: u64, victim: NodeConfig) -> Net {
        Net::with_neighbours(seed, victim, 1)
    }

    fn with_neighbours(seed: u64, victim: NodeConfig, n: usize) -> Net {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut nodes =
            vec![Node::new(SecretKey::generate(&mut rng), victim, Box::new(ChaCha20Rng::seed_from_u64(seed + 1)))];
        for i in 0..n as u64 {
            let k = SecretKey::generate(&mut rng);
            nodes.push(Node::new(k, NodeConfig::default(), Box::new(ChaCha20Rng::seed_from_u64(seed + 2 + i))));
        }
        Net {
            now: Instant::now(), // test-only clock
            events: vec![Vec::new(); nodes.len()],
            nodes,
            to_attacker: Vec::new(),
        }
    }

    fn victim_key(&self) -> skyroute_proto::PublicKey {
        self.nodes[0].public_key()
    }

    /// Moves datagrams until quiet, then timers, until `d` has passed.
    fn drive_for(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let mut buf = Vec::new();
                while let Some(to) = self.nodes[i].poll_transmit(self.now, None, &mut buf) {
                    moved = true;
                    let now = self.now;
                    match self.nodes.get_mut(to as usize) {
                        Some(n) if to != ATTACKER => n.handle_datagram(now, i as u8, &mut buf.clone()),
                        _ => self.to_attacker.push(buf.clone()),
                    }
                }
                while let Some(e) = self.nodes[i].poll_event() {
                    self.events[i].push(e);
                }
            }
            if moved {
                continue;
            }
            match self.nodes.iter().filter_map(|n| n.poll_timeout()).min() {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in self.nodes.iter_mut() {
                        if n.poll_timeout().is_some_and(|d| d <= now) {
                            n.handle_timeout(now);
                        }
                    }
                }
                _ => {
                    self.now = until;
                    return;
                }
            }
        }
    }

    fn attack(&mut self, mut bytes: Vec<u8>) {
        let now = self.now;
        self.nodes[0].handle_datagram(now, ATTACKER, &mut bytes);
    }

    fn rejected(&self, r: Reject) -> u64 {
        self.nodes[0].links().iter().map(|l| l.stats.rejected.get(r)).sum::<u64>()
            + self.nodes[0].stats().rejected.get(r)
    }

    /// The honest neighbour dials the victim and opens a route to it.
    fn honest_link(&mut self) -> RouteId {
        self.dial(1);
        self.open(1).expect("a route")
    }

    /// Neighbour `i` dials the victim.
    fn dial(&mut self, i: usize) {
        let v = self.victim_key();
        let now = self.now;
        self.nodes[i].connect(now, v, 0);
        self.drive_for(Duration::from_millis(20));
    }

    /// Neighbour `i` opens a one-hop route to the victim: ready, or why not.
    fn open(&mut self, i: usize) -> Result<RouteId, RouteError> {
        let v = self.victim_key();
        let now = self.now;
        let r = self.nodes[i].open_route(now, None, &[v])?;
        self.drive_for(Duration::from_millis(20));
        let outcome = self.events[i].iter().find_map(|e| match e {
            Event::Route(RouteEvent::Ready { route }) if *route == r => Some(Ok(r)),
            Event::Route(RouteEvent::Failed { route, error }) if *route == r => Some(Err(error.clone())),
            _ => None,
        });
        outcome.expect("the route is ready or failed")
    }

    /// The honest neighbour sends `msg` on `r`; the victim's count of messages delivered is
    /// then `expect`.
    fn still_carries(&mut self, r: RouteId, msg: &[u8], expect: usize) {
        let now = self.now;
        self.nodes[1].send(now, r, Class::Bulk, msg).unwrap();
        self.drive_for(Duration::from_millis(10));
        assert_eq!(self.delivered_to_victim(), expect);
    }

    fn delivered_to_victim(&self) -> usize {
        self.events[0].iter().filter(|e| matches!(e, Event::Route(RouteEvent::Data { .. }))).count()
    }
}

/// The victim's settings with `guard`.
fn guarded(guard: GuardConfig) -> NodeConfig {
    NodeConfig { guard, ..NodeConfig::default() }
}

/// A valid init to `to` from a fresh key (what a flood of strangers sends).
fn fresh_init(rng: &mut ChaCha20Rng, to: &skyroute_proto::PublicKey, index: u32) -> Vec<u8> {
    let k = SecretKey::generate(rng);
    let (_, mut pkt) = noise::initiate(noise::LINK_PROLOGUE, rng, &k, to, index, 0, noise::timestamp(1));
    cookie::seal_macs(&mut pkt, to, None);
    pkt
}

#[test]
fn under_load_a_stranger_proves_its_address_then_connects() {
    let victim = guarded(GuardConfig { load_threshold: 0, ..GuardConfig::default() });
    let mut n = Net::new(1, victim);
    let r = n.honest_link();
    assert_eq!(n.nodes[1].links()[0].stats.cookies, 1, "one cookie reply, one init again");
    assert_eq!(n.rejected(Reject::Cookie), 1);
    assert_eq!((n.nodes[0].links()[0].state, n.nodes[1].links()[0].state), (LinkState::Up, LinkState::Up));
    n.still_carries(r, b"through", 1);
}

#[test]
fn a_flood_of_inits_costs_bounded_work_breaks_nothing_and_never_amplifies() {
    let mut n = Net::new(2, NodeConfig::default());
    let r = n.honest_link();
    let v = n.victim_key();
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let flood: Vec<Vec<u8>> = (0..400).map(|i| fresh_init(&mut rng, &v, 1000 + i)).collect();
    let mut sent_bytes = 0usize;
    // 400 inits in 200 ms (2,000 a second) while the honest link carries a message every 10 ms.
    for (i, init) in flood.iter().enumerate() {
        sent_bytes += init.len();
        n.attack(init.clone());
        if i % 20 == 0 {
            let now = n.now;
            n.nodes[1].send(now, r, Class::Bulk, &(i as u32).to_be_bytes()).unwrap();
            n.drive_for(Duration::from_millis(10));
        }
    }
    n.drive_for(Duration::from_millis(100));
    let got: usize = n.to_attacker.iter().map(Vec::len).sum();
    assert!(got <= sent_bytes, "amplification {got} / {sent_bytes}");
    let cookies = n.rejected(Reject::Cookie);
    let answered = n.to_attacker.iter().filter(|p| matches!(Packet::parse(p), Ok(Packet::HandshakeResp(_)))).count();
    // Past 64 a second the victim asks for cookies instead of doing the ECDH, and one host
    // gets 50 cookie replies at once and 50 a second: the rest cost an HMAC and nothing more.
    assert!(answered <= 70, "{answered} answered");
    assert!((50..=70).contains(&cookies), "{cookies} cookies");
    assert_eq!(answered as u64 + cookies + n.rejected(Reject::RateLimited), 400);
    // The honest link never went down and carried everything.
    assert!(!n.events[1].iter().any(|e| matches!(e, Event::LinkDown { .. })));
    assert_eq!(n.delivered_to_victim(), 20);

    // The attacker now echoes each cookie from its one address: its host's bucket admits 5 at
    // once and 20 a second; the rest are dropped without an ECDH.
    let replies: Vec<Vec<u8>> =
        n.to_attacker.iter().filter(|p| matches!(Packet::parse(p), Ok(Packet::CookieReply(_)))).cloned().collect();
    let before_limited = n.rejected(Reject::RateLimited);
    let mut echoed = 0;
    for reply in &replies {
        let Ok(Packet::CookieReply(cr)) = Packet::parse(reply) else { unreachable!() };
        let Some(init) = flood.iter().find(|i| i[4..8] == cr.receiver_index.to_be_bytes()) else { continue };
        let c = cookie::open_reply(&v, &cookie::mac1_of(init).unwrap(), &cr).expect("the cookie opens");
        let mut again = init.clone();
        cookie::seal_macs(&mut again, &v, Some(&c));
        n.attack(again);
        echoed += 1;
    }
    assert_eq!(echoed, cookies);
    let limited = n.rejected(Reject::RateLimited) - before_limited;
    assert!(limited >= echoed - 10, "{limited} of {echoed} echoed inits rate-limited");
}

#[test]
fn strangers_half_open_links_are_bounded() {
    let victim = guarded(GuardConfig { max_half_open: 8, ..GuardConfig::default() });
    let mut n = Net::new(3, victim);
    let r = n.honest_link();
    let v = n.victim_key();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    for i in 0..40 {
        n.attack(fresh_init(&mut rng, &v, 500 + i));
        n.drive_for(Duration::from_millis(50));
    }
    assert!(n.nodes[0].links().len() <= 9, "{} links", n.nodes[0].links().len());
    // One host keeps an eighth of the half-open links (1 of 8): each new one evicts its own.
    assert_eq!(n.rejected(Reject::HalfOpen), 39);
    assert_eq!(n.nodes[0].guard_stats().half_open_dropped, 39);
    n.still_carries(r, b"still here", 1);
}

#[test]
fn a_flood_of_valid_inits_from_one_host_evicts_only_its_own_half_open_links() {
    let victim = guarded(GuardConfig { max_half_open: 16, ..GuardConfig::default() });
    let mut n = Net::new(9, victim);
    let v = n.victim_key();
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    // A stranger at another address is half-way through its handshake...
    let k = SecretKey::generate(&mut rng);
    let (_, mut init) = noise::initiate(noise::LINK_PROLOGUE, &mut rng, &k, &v, 77, 0, noise::timestamp(1));
    cookie::seal_macs(&mut init, &v, None);
    let now = n.now;
    n.nodes[0].handle_datagram(now, 7, &mut init);
    // ...when one host sends valid inits from 100 fresh keys.
    for i in 0..100 {
        n.attack(fresh_init(&mut rng, &v, 900 + i));
        n.drive_for(Duration::from_millis(10));
    }
    let links = n.nodes[0].links();
    assert!(links.iter().any(|l| l.peer == k.public_key()), "the other host's half-open link is kept");
    assert_eq!(links.iter().filter(|l| l.addr == ATTACKER).count(), 2, "the flooding host keeps 16 / 8");
}

#[test]
fn a_replayed_init_neither_redirects_nor_resets_the_link() {
    let mut n = Net::new(4, NodeConfig::default());
    let v = n.victim_key();
    let now = n.now;
    n.nodes[1].connect(now, v, 0);
    let mut buf = Vec::new();
    let to = n.nodes[1].poll_transmit(now, None, &mut buf).unwrap();
    assert_eq!(to, 0);
    let init = buf.clone();
    n.nodes[0].handle_datagram(now, 1, &mut buf);
    n.drive_for(Duration::from_millis(20));
    let now = n.now;
    let r = n.nodes[1].open_route(now, None, &[v]).unwrap();
    n.drive_for(Duration::from_millis(20));
    let handshakes = n.nodes[0].links()[0].stats.handshakes;
    // The recorded init, replayed from elsewhere and from the neighbour's own address.
    n.attack(init.clone());
    n.nodes[0].handle_datagram(n.now, 1, &mut init.clone());
    n.drive_for(Duration::from_millis(50));
    assert_eq!(n.rejected(Reject::StaleInit), 2);
    assert!(n.to_attacker.is_empty(), "nothing for the replayer");
    let l = &n.nodes[0].links()[0];
    assert_eq!((l.addr, l.state, l.stats.handshakes), (1, LinkState::Up, handshakes));
    let now = n.now;
    n.nodes[1].send(now, r, Class::Bulk, b"unharmed").unwrap();
    n.drive_for(Duration::from_millis(10));
    assert!(n.events[0]
        .iter()
        .any(|e| matches!(e, Event::Route(RouteEvent::Ready { .. }) | Event::Route(RouteEvent::Data { .. }))));
    assert!(!n.events[1].iter().any(|e| matches!(e, Event::LinkDown { .. })));
}

#[test]
fn junk_and_misdirected_inits_cost_one_hmac_and_get_nothing() {
    let mut n = Net::new(5, NodeConfig::default());
    let r = n.honest_link();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let elsewhere = SecretKey::generate(&mut rng).public_key();
    for i in 0..200u32 {
        // For another node, and random bytes of an init's length with the right first byte.
        n.attack(fresh_init(&mut rng, &elsewhere, i));
        let mut junk = vec![0u8; skyroute_proto::wire::HANDSHAKE_INIT_LEN];
        rand_chacha::rand_core::RngCore::fill_bytes(&mut rng, &mut junk);
        junk[0] = 0x11;
        junk[2] = 0;
        junk[3] = 0;
        n.attack(junk);
    }
    n.drive_for(Duration::from_millis(10));
    assert_eq!(n.rejected(Reject::BadMac), 400);
    assert!(n.to_attacker.is_empty());
    assert_eq!(n.nodes[0].links().len(), 1);
    n.still_carries(r, b"fine", 1);
}

/// A neighbour that takes all it may of one resource, then every other neighbour sets up its
/// routes: `shares` neighbours' worth (the share is the whole over one more than the
/// neighbours up).
fn greedy_neighbour_leaves_others_their_share(victim: NodeConfig, share: usize) {
    let mut n = Net::with_neighbours(6, victim, 4);
    for i in 1..=4 {
        n.dial(i);
    }
    assert_eq!(n.nodes[0].neighbour_count(), 4);
    // Neighbour 1 takes all it may.
    let mut held = 0;
    while n.open(1).is_ok() {
        held += 1;
        assert!(held <= share, "neighbour 1 got more than its share");
    }
    assert_eq!(held, share);
    let greedy = n.nodes[1].public_key();
    assert_eq!(n.nodes[0].routes_held_by(&greedy), share);
    // It keeps trying: each try is refused and counted on its link, by reason.
    for _ in 0..5 {
        assert_eq!(n.open(1), Err(RouteError::Refused));
    }
    let l = n.nodes[0].links().into_iter().find(|l| l.peer == greedy).unwrap();
    assert_eq!(l.stats.rejected.get(Reject::RouteShare), 6);
    // Every other neighbour still gets its whole share.
    for i in 2..=4 {
        for _ in 0..share {
            n.open(i).expect("an honest neighbour's route");
        }
    }
}

#[test]
fn a_greedy_neighbour_leaves_every_other_its_share_of_routes() {
    let victim =
        NodeConfig { route: RouteConfig { max_routes: 50, ..RouteConfig::default() }, ..NodeConfig::default() };
    greedy_neighbour_leaves_others_their_share(victim, 10);
}

#[test]
fn a_greedy_neighbour_leaves_every_other_its_share_of_buffers() {
    let forward = ForwardConfig::default();
    let per_route = 2 * (forward.route_buffer_bytes + forward.realtime_buffer_bytes);
    let victim = NodeConfig {
        forward: ForwardConfig { memory_budget_bytes: 25 * per_route, ..forward },
        ..NodeConfig::default()
    };
    greedy_neighbour_leaves_others_their_share(victim, 5);
}

#[test]
fn route_setups_beyond_a_neighbours_rate_are_refused_and_counted() {
    let victim = NodeConfig {
        route: RouteConfig { setup_rate: 10, setup_burst: 3, ..RouteConfig::default() },
        ..NodeConfig::default()
    };
    let mut n = Net::with_neighbours(7, victim, 2);
    n.dial(1);
    n.dial(2);
    let v = n.victim_key();
    let now = n.now;
    let tries: Vec<RouteId> = (0..10).map(|_| n.nodes[1].open_route(now, None, &[v]).unwrap()).collect();
    n.drive_for(Duration::from_millis(20));
    let ready = n.events[1].iter().filter(|e| matches!(e, Event::Route(RouteEvent::Ready { .. }))).count();
    assert_eq!(ready, 3, "the burst");
    assert_eq!(tries.len(), 10);
    let l = n.nodes[0].links().into_iter().find(|l| l.peer == n.nodes[1].public_key()).unwrap();
    assert_eq!(l.stats.rejected.get(Reject::RouteRate), 7);
    // The other neighbour's rate is its own.
    n.open(2).expect("neighbour 2 is not limited by neighbour 1");
}

#[test]
fn an_existing_link_handshakes_again_without_a_cookie() {
    // Under load all the time: a stranger needs a cookie, the same peer's link, once up and
    // idle past its key's age, handshakes again from its address without one.
    let victim = guarded(GuardConfig { load_threshold: 0, ..GuardConfig::default() });
    let mut n = Net::new(8, victim);
    let r = n.honest_link();
    assert_eq!(n.nodes[1].links()[0].stats.cookies, 1);
    let handshakes = n.nodes[1].links()[0].stats.handshakes;
    // Idle past key_max_age (120 s) and past the cookie's life (110 s): the next write needs a
    // fresh handshake.
    n.drive_for(Duration::from_secs(130));
    let now = n.now;
    n.nodes[1].send(now, r, Class::Bulk, b"after idle").unwrap();
    n.drive_for(Duration::from_millis(50));
    let l = &n.nodes[1].links()[0];
    assert_eq!(l.stats.handshakes, handshakes + 1, "a new session");
    assert_eq!(l.stats.cookies, 1, "no second cookie");
    assert_eq!(n.delivered_to_victim(), 1);
}
